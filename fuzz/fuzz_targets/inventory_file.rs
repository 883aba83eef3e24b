//! The static inventory file (`--inventory-file`, kovn-monitor/src/inventory_file.rs): YAML an
//! operator writes, re-read whenever it changes, so a bad edit must be an error, never a panic
//! or a hang.
#![no_main]

use kovn_monitor::inventory_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = inventory_file::parse(std::path::Path::new("fuzz.yaml"), text);
});
