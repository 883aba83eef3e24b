//! `ovs-appctl ofproto/trace` output (kovn-monitor/src/drilldown/ofproto.rs): the text of a
//! local command, but built from flows and names that come from the cluster.
#![no_main]

use kovn_monitor::drilldown::ofproto;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let t = ofproto::parse(text);
    let _ = t.deciding_step();
    for pass in &t.passes {
        let _ = ofproto::split_actions(&pass.datapath_actions);
        for step in &pass.steps {
            for a in &step.actions {
                let _ = ofproto::split_actions(a);
            }
        }
    }
    let _ = ofproto::split_actions(text);
});
