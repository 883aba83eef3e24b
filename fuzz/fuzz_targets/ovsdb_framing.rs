//! OVSDB JSON-RPC framing and update parsing (kovn-monitor/src/ovsdb.rs) on bytes as a server
//! (or a man in the middle) could send them. The stream is cut into chunks of sizes taken from
//! the input, as reads from the socket would; whatever the cut, the messages framed must be
//! the ones a single read frames. Every message then goes through the update parser and the
//! column helpers the inventory uses.
#![no_main]

use kovn_monitor::ovsdb::{Framer, atom_string, drain_messages, map_column, parse_updates, set_column};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn use_message(v: &Value) {
    let _ = parse_updates(v);
    // A monitor reply's result, or an `update` notification's params[1].
    for updates in [v.get("result"), v.get("params").and_then(|p| p.get(1))].into_iter().flatten() {
        if let Ok(tables) = parse_updates(updates) {
            for t in tables.values() {
                for row in t.rows.values().flatten() {
                    for col in row.values() {
                        let _ = map_column(Some(col));
                        let _ = set_column(Some(col));
                        let _ = atom_string(col);
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let mut whole = stream.to_vec();
    let one_read = drain_messages(&mut whole);

    let step = usize::from(cut % 64) + 1;
    let mut f = Framer::default();
    let mut chunked = Vec::new();
    let mut failed = false;
    for chunk in stream.chunks(step) {
        match f.push(chunk) {
            Ok(msgs) => chunked.extend(msgs),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let (Ok(msgs), false) = (&one_read, failed) {
        assert_eq!(msgs, &chunked, "framing depends on how the stream was cut (chunks of {step})");
    }
    for v in one_read.iter().flatten().chain(&chunked) {
        use_message(v);
    }
});
