//! `ovn-trace` output (kovn-monitor/src/drilldown/ovntrace.rs): logical flows, ACL names and
//! matches come from the OVN northbound, i.e. from whoever creates network policies.
#![no_main]

use kovn_monitor::drilldown::ovntrace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let t = ovntrace::parse(text);
    for s in &t.stages {
        let _ = (s.is_acl(), s.drops());
    }
    let _ = t.acls().count();
});
