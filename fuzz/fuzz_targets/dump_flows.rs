//! `ovs-ofctl dump-flows` output (kovn-monitor/src/drilldown/dumpflows.rs), and the diff of
//! two dumps the drill-down takes around a trace. The input is split in two at the first
//! form feed (before, after).
#![no_main]

use kovn_monitor::drilldown::dumpflows;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (before, after) = text.split_once('\x0c').unwrap_or((text, text));
    let b = dumpflows::parse(before);
    let a = dumpflows::parse(after);
    for line in text.lines() {
        let _ = dumpflows::parse_line(line);
    }
    let changed = dumpflows::diff(&b, a);
    if let Some(f) = changed.first() {
        let _ = dumpflows::mentioning(&changed, &f.matches);
    }
    let _ = dumpflows::mentioning(&b, "reg15");
});
