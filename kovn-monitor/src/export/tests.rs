//! The exporter's tests: metric families, deltas, label bounds, series expiry, the text
//! formats, a real scrape.
//!
//! Size: only tests (one per metric family, delta, bound and format), beside the code they test.

#[test]
fn a_flow_back_with_the_same_counts_is_a_new_incarnation() {
    let first =
        Seen { packets: [2, 0], bytes: [120, 0], requests: 1, first_seen_mono_ns: 10, ..Seen::default() };
    let (d, seen) = delta(None, &first);
    assert_eq!(d.packets, [2, 0], "first sight counts whole");
    // The same incarnation read again: nothing new.
    let (d, seen) = delta(Some(&seen), &first);
    assert_eq!(d.packets, [0, 0], "same incarnation: {d:?}");
    // Removed when idle and back with exactly the same counts: counted again.
    let back = Seen { first_seen_mono_ns: 2_000_000_010, ..first };
    let (d, _) = delta(Some(&seen), &back);
    assert_eq!((d.packets, d.bytes, d.requests), ([2, 0], [120, 0], 1), "new incarnation: {d:?}");
}

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::flows::{Seen, delta};
use super::*;
use crate::api::{AttachedInterface, Health, ProgramInfo};
use crate::detection::{Alert, Evidence};
use crate::inventory::TunnelPeer;

fn pod(ns: &str, name: &str, workload: Option<&str>) -> Endpoint {
    Endpoint {
        kind: "pod".into(),
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        workload: workload.map(str::to_string),
        node: None,
        service: None,
        backends: Vec::new(),
    }
}

fn other(kind: &str) -> Endpoint {
    Endpoint { kind: kind.into(), ..Default::default() }
}

fn flow(id: &str, src: Endpoint, dst: Endpoint) -> Flow {
    // From an empty kernel record, so fields added to `Flow` later need no change here.
    let base = Flow::from_kernel(
        &kovn_ebpf_common::FlowKey::default(),
        &kovn_ebpf_common::FlowStats::default(),
        &crate::flows::Clock::fixed(0, 0),
        &crate::flows::IfaceNames::new(),
    );
    Flow {
        id: id.into(),
        protocol: "tcp".into(),
        ip_proto: 6,
        scenario: "pod_to_pod_same_node".into(),
        src: Some(src),
        dst: Some(dst),
        ..base
    }
}

/// web → db in `shop`, both with known workloads.
fn web_db(id: &str, packets: [u64; 2], bytes: [u64; 2]) -> Flow {
    let mut f = flow(id, pod("shop", "web-1", Some("web")), pod("shop", "db-0", Some("db")));
    [f.packets_fwd, f.packets_rev] = packets;
    [f.bytes_fwd, f.bytes_rev] = bytes;
    f
}

fn snap(flows: Vec<Flow>) -> Snapshot {
    Snapshot { node: "node1".into(), flows: flows.into_iter().map(Arc::new).collect(), ..Default::default() }
}

fn exporter() -> Exporter {
    Exporter::new(MetricsConfig::default())
}

fn text(e: &Exporter) -> String {
    e.metrics().encode().unwrap()
}

/// The value of the sample `name{labels}` in the exposition, if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let prefix = if l.is_empty() { format!("{name} ") } else { format!("{name}{{{}}} ", l.join(",")) };
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

const WEB_DB: [(&str, &str); 6] = [
    ("scenario", "pod_to_pod_same_node"),
    ("protocol", "tcp"),
    ("src_namespace", "shop"),
    ("src_workload", "web"),
    ("dst_namespace", "shop"),
    ("dst_workload", "db"),
];

fn with_dir(dir: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut l = vec![("direction", dir)];
    l.extend(WEB_DB);
    l
}

fn packets(t: &str, dir: &'static str) -> Option<f64> {
    sample(t, "kovn_flow_packets_total", &with_dir(dir))
}

#[test]
fn counters_add_deltas_of_cumulative_flows() {
    let mut e = exporter();
    let t0 = Instant::now();
    e.update(&snap(vec![web_db("a", [10, 5], [1000, 500])]), t0);
    let t = text(&e);
    assert_eq!(packets(&t, "request"), Some(10.0));
    assert_eq!(packets(&t, "reply"), Some(5.0));
    assert_eq!(sample(&t, "kovn_flow_bytes_total", &with_dir("reply")), Some(500.0));
    // The same flow grew, a second flow of the same pair appeared: one series, summed.
    e.update(&snap(vec![web_db("a", [15, 7], [1500, 700]), web_db("b", [1, 1], [60, 60])]), t0);
    let t = text(&e);
    assert_eq!(packets(&t, "request"), Some(16.0));
    assert_eq!(packets(&t, "reply"), Some(8.0));
    assert_eq!(sample(&t, "kovn_flow_bytes_total", &with_dir("request")), Some(1560.0));
    // Unchanged flows add nothing.
    e.update(&snap(vec![web_db("a", [15, 7], [1500, 700]), web_db("b", [1, 1], [60, 60])]), t0);
    assert_eq!(packets(&text(&e), "request"), Some(16.0));
    assert_eq!(e.tracked_flows(), 2);
}

/// The flow table hands the same `Arc` again for a flow that did not change: it adds nothing
/// and keeps its series alive; the next version of it adds only its growth.
#[test]
fn a_flow_handed_again_unchanged_adds_nothing() {
    let mut e = exporter();
    let t0 = Instant::now();
    let a = Arc::new(web_db("a", [10, 5], [1000, 500]));
    let with =
        |f: &Arc<Flow>| Snapshot { node: "node1".into(), flows: vec![f.clone()], ..Default::default() };
    e.update(&with(&a), t0);
    e.update(&with(&a), t0);
    e.update(&with(&a), t0);
    assert_eq!(packets(&text(&e), "request"), Some(10.0), "the same flow three times is counted once");
    let grown = Arc::new(web_db("a", [12, 6], [1200, 600]));
    e.update(&with(&grown), t0);
    assert_eq!(packets(&text(&e), "request"), Some(12.0));
    assert_eq!(packets(&text(&e), "reply"), Some(6.0));
    assert_eq!(e.tracked_flows(), 1);
}

#[test]
fn expired_flows_never_make_counters_go_back() {
    let mut e = exporter();
    let t0 = Instant::now();
    e.update(&snap(vec![web_db("a", [10, 5], [1000, 500]), web_db("b", [4, 4], [400, 400])]), t0);
    // `b` expired out of the table: the aggregate keeps what it counted.
    e.update(&snap(vec![web_db("a", [11, 5], [1100, 500])]), t0);
    let t = text(&e);
    assert_eq!(packets(&t, "request"), Some(15.0));
    assert_eq!(packets(&t, "reply"), Some(9.0));
    assert_eq!(e.tracked_flows(), 1);
    // The 5-tuple of `b` comes back as a new flow: its values are new traffic.
    e.update(&snap(vec![web_db("a", [11, 5], [1100, 500]), web_db("b", [2, 1], [200, 100])]), t0);
    let t = text(&e);
    assert_eq!(packets(&t, "request"), Some(17.0));
    assert_eq!(packets(&t, "reply"), Some(10.0));
}

#[test]
fn a_reset_flow_adds_its_new_values() {
    let mut e = exporter();
    let t0 = Instant::now();
    e.update(&snap(vec![web_db("a", [10, 5], [1000, 500])]), t0);
    // Same id, smaller values between two polls: a new incarnation of the 5-tuple.
    e.update(&snap(vec![web_db("a", [3, 1], [300, 100])]), t0);
    let t = text(&e);
    assert_eq!(packets(&t, "request"), Some(13.0));
    assert_eq!(packets(&t, "reply"), Some(6.0));
    assert_eq!(sample(&t, "kovn_flow_bytes_total", &with_dir("request")), Some(1300.0));
    // And it goes on from there by deltas.
    e.update(&snap(vec![web_db("a", [4, 2], [400, 200])]), t0);
    assert_eq!(packets(&text(&e), "request"), Some(14.0));
}

#[test]
fn unanswered_requests_only_rise() {
    let mut e = exporter();
    let t0 = Instant::now();
    let mut f = web_db("a", [3, 0], [180, 0]);
    (f.requests, f.replies, f.requests_unanswered) = (3, 0, 3);
    e.update(&snap(vec![f.clone()]), t0);
    // A SYN-ACK came: 2 of 3 SYNs stay unanswered; the counter keeps the 3 it saw.
    (f.packets_rev, f.replies, f.requests_unanswered) = (1, 1, 2);
    e.update(&snap(vec![f.clone()]), t0);
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_requests_total", &WEB_DB), Some(3.0));
    assert_eq!(sample(&t, "kovn_requests_unanswered_total", &WEB_DB), Some(3.0));
    // More requests unanswered than ever before: only the rise above 3 is added.
    (f.packets_fwd, f.requests, f.requests_unanswered) = (6, 6, 5);
    e.update(&snap(vec![f]), t0);
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_requests_total", &WEB_DB), Some(6.0));
    assert_eq!(sample(&t, "kovn_requests_unanswered_total", &WEB_DB), Some(5.0));
}

#[test]
fn rtt_is_observed_once_per_measurement() {
    let mut e = exporter();
    let t0 = Instant::now();
    let rtt = [("scenario", "pod_to_pod_same_node"), ("protocol", "tcp")];
    let mut f = web_db("a", [1, 1], [60, 60]);
    f.rtt_us = Some(120);
    for _ in 0..3 {
        e.update(&snap(vec![f.clone()]), t0);
    }
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_request_rtt_seconds_count", &rtt), Some(1.0));
    let mut le = rtt.to_vec();
    le.insert(0, ("le", "0.00025"));
    assert_eq!(sample(&t, "kovn_request_rtt_seconds_bucket", &le), Some(1.0));
    le[0] = ("le", "0.0001");
    assert_eq!(sample(&t, "kovn_request_rtt_seconds_bucket", &le), Some(0.0));
    // A new measurement of the same flow, and a second flow with one.
    f.rtt_us = Some(3000);
    let mut g = web_db("b", [1, 1], [60, 60]);
    g.rtt_us = Some(80);
    e.update(&snap(vec![f, g]), t0);
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_request_rtt_seconds_count", &rtt), Some(3.0));
    let sum = sample(&t, "kovn_request_rtt_seconds_sum", &rtt).unwrap();
    assert!((sum - 0.0032).abs() < 1e-9, "{sum}");
}

#[test]
fn labels_are_bounded_to_workloads() {
    let mut e = exporter();
    let t0 = Instant::now();
    let flows = vec![
        web_db("a", [1, 0], [60, 0]),
        flow("b", pod("shop", "web-2", Some("web")), pod("shop", "db-1", Some("db"))),
        // No workload known: not guessed from the pod name.
        flow("c", pod("shop", "job-x7k2p", None), other("external")),
        flow("d", pod("shop", "web-3", Some("web")), other("service")),
        // Names outside the label sets cannot occur (enums): the catch-all values remain.
        Flow {
            scenario: crate::model::Scenario::Unknown,
            protocol: crate::model::Protocol::Other,
            ip_proto: 47,
            ..flow("e", other("node"), other("unknown"))
        },
    ];
    e.update(&snap(flows), t0);
    let t = text(&e);
    let series = |name: &str| t.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(series("kovn_requests_total{"), 4, "{t}");
    assert!(!t.contains("web-2") && !t.contains("job-x7k2p") && !t.contains("src_pod"), "{t}");
    let unknown = [
        ("scenario", "pod_to_pod_same_node"),
        ("protocol", "tcp"),
        ("src_namespace", "shop"),
        ("src_workload", "unknown"),
        ("dst_namespace", ""),
        ("dst_workload", "external"),
    ];
    assert_eq!(sample(&t, "kovn_requests_total", &unknown), Some(0.0));
    let bounded = [
        ("scenario", "unknown"),
        ("protocol", "other"),
        ("src_namespace", ""),
        ("src_workload", "node"),
        ("dst_namespace", ""),
        ("dst_workload", "unknown"),
    ];
    assert_eq!(sample(&t, "kovn_requests_total", &bounded), Some(0.0));
}

#[test]
fn pod_labels_only_when_asked_for() {
    let mut e = Exporter::new(MetricsConfig { pod_labels: true, ..Default::default() });
    let f = flow("c", pod("shop", "job-x7k2p", None), pod("shop", "db-0", Some("db")));
    e.update(&snap(vec![f]), Instant::now());
    let t = text(&e);
    let labels = [
        ("scenario", "pod_to_pod_same_node"),
        ("protocol", "tcp"),
        ("src_namespace", "shop"),
        ("src_workload", "job-x7k2p"),
        ("dst_namespace", "shop"),
        ("dst_workload", "db"),
        ("src_pod", "job-x7k2p"),
        ("dst_pod", "db-0"),
    ];
    assert_eq!(sample(&t, "kovn_requests_total", &labels), Some(0.0), "{t}");
}

#[test]
fn vanished_series_are_dropped_after_the_ttl() {
    let ttl = Duration::from_secs(300);
    let mut e = Exporter::new(MetricsConfig { series_ttl: ttl, ..Default::default() });
    let t0 = Instant::now();
    let mut f = flow("t", pod("shop", "web-1", Some("web")), pod("shop", "db-0", Some("db")));
    f.scenario = "pod_to_pod_cross_node".into();
    f.tunnel = Some(TunnelPeer { remote_node: Some("node2".into()), ..Default::default() });
    f.rtt_us = Some(400);
    (f.packets_fwd, f.packets_rev) = (4, 2);
    e.update(&snap(vec![f]), t0);
    let t = text(&e);
    let tunnel = [("remote_node", "node2"), ("direction", "request")];
    assert_eq!(sample(&t, "kovn_tunnel_packets_total", &tunnel), Some(4.0));
    // The flow is gone; within the TTL its series stay, unchanged.
    e.update(&snap(vec![]), t0 + Duration::from_secs(200));
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_tunnel_packets_total", &tunnel), Some(4.0));
    assert_eq!(t.lines().filter(|l| l.starts_with("kovn_flow_packets_total{")).count(), 2);
    // Past the TTL: removed from every family.
    e.update(&snap(vec![]), t0 + Duration::from_secs(301));
    let t = text(&e);
    for name in [
        "kovn_flow_packets_total{",
        "kovn_flow_bytes_total{",
        "kovn_requests_total{",
        "kovn_requests_unanswered_total{",
        "kovn_request_rtt_seconds_count{",
        "kovn_tunnel_packets_total{",
        "kovn_tunnel_requests_unanswered_total{",
    ] {
        assert!(!t.contains(name), "{name} left in\n{t}");
    }
    // A flow that keeps the pair alive resets the clock.
    let mut e = Exporter::new(MetricsConfig { series_ttl: ttl, ..Default::default() });
    for s in 0..10 {
        e.update(&snap(vec![web_db("a", [1, 1], [60, 60])]), t0 + Duration::from_secs(100 * s));
    }
    assert_eq!(packets(&text(&e), "request"), Some(1.0));
}

fn alert(kind: &str, state: &str) -> Alert {
    Alert {
        id: "x".into(),
        kind: kind.into(),
        state: state.into(),
        severity: "critical".into(),
        node: "node1".into(),
        scenario: "pod_to_pod_same_node".into(),
        protocol: "tcp".into(),
        src_ip: "10.16.0.2".parse().unwrap(),
        dst_ip: "10.16.0.3".parse().unwrap(),
        dst_port: Some(80),
        src: Some(pod("shop", "web-1", Some("web"))),
        dst: Some(pod("shop", "db-0", Some("db"))),
        remote_node: None,
        backend: None,
        first_seen: time::OffsetDateTime::UNIX_EPOCH,
        last_seen: time::OffsetDateTime::UNIX_EPOCH,
        resolved_at: None,
        summary: String::new(),
        evidence: Evidence::default(),
        verdict: None,
        flows: Vec::new(),
        drilldown: None,
    }
}

#[test]
fn path_broken_follows_firing_alerts() {
    let mut e = exporter();
    let t0 = Instant::now();
    let mut l = vec![("kind", "request_without_reply")];
    l.extend(WEB_DB.iter().filter(|(k, _)| *k != "protocol"));
    let mut s = snap(vec![]);
    s.alerts = vec![alert("request_without_reply", "firing"), alert("request_without_reply", "firing")];
    e.update(&s, t0);
    assert_eq!(sample(&text(&e), "kovn_path_broken", &l), Some(1.0));
    // Resolved: 0 until the TTL, then gone.
    s.alerts = vec![alert("request_without_reply", "resolved")];
    e.update(&s, t0 + Duration::from_secs(10));
    assert_eq!(sample(&text(&e), "kovn_path_broken", &l), Some(0.0));
    e.update(&s, t0 + Duration::from_secs(400));
    assert_eq!(sample(&text(&e), "kovn_path_broken", &l), None);
    // A resolved alert alone never creates the series.
    let mut e = exporter();
    e.update(&s, t0);
    assert!(!text(&e).contains("kovn_path_broken{"));
}

fn health_snap(lost: u64) -> Snapshot {
    let iface = |name: &str, kind: &str| AttachedInterface {
        name: name.into(),
        ifindex: 1,
        kind: kind.into(),
        mtu: 1400,
    };
    Snapshot {
        health: Health {
            status: "ok".into(),
            version: "0.1.0".into(),
            attached_interfaces: vec![iface("a_h", "pod"), iface("b_h", "pod"), iface("eth0", "underlay")],
            programs: ["kovn_pod_ingress", "kovn_pod_egress", "kovn_underlay_ingress"]
                .into_iter()
                .map(|n| ProgramInfo { name: n.into(), id: 1 })
                .collect(),
            flow_table_entries: 12,
            flow_table_capacity: 65536,
            kernel_counters: std::iter::once(("map_full".to_string(), lost)).collect(),
            poll_duration_ms: 3.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn self_metrics_follow_health() {
    let mut e = exporter();
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "tc_pod")]), Some(0.0));
    let t0 = Instant::now();
    e.update(&health_snap(5), t0);
    e.update(&health_snap(7), t0);
    let t = text(&e);
    let version = env!("CARGO_PKG_VERSION");
    let revision = env!("KOVN_GIT_REVISION");
    assert_eq!(sample(&t, "kovn_build_info", &[("version", version), ("revision", revision)]), Some(1.0));
    assert_eq!(sample(&t, "kovn_attached_interfaces", &[("kind", "pod")]), Some(2.0));
    assert_eq!(sample(&t, "kovn_attached_interfaces", &[("kind", "host")]), Some(0.0));
    assert_eq!(sample(&t, "kovn_attached_interfaces", &[("kind", "underlay")]), Some(1.0));
    assert_eq!(sample(&t, "kovn_flow_table_entries", &[]), Some(12.0));
    assert_eq!(sample(&t, "kovn_flow_table_capacity", &[]), Some(65536.0));
    // Cumulative kernel counters are exported as they are, not summed per poll.
    assert_eq!(sample(&t, "kovn_kernel_records_lost_total", &[("reason", "map_full")]), Some(7.0));
    assert_eq!(sample(&t, "kovn_poll_duration_seconds_count", &[]), Some(2.0));
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "tc_pod")]), Some(1.0));
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "tc_host")]), Some(0.0));
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "tc_underlay")]), Some(1.0));
    // The allocator's figures only once `/healthz` has them.
    assert_eq!(sample(&t, "kovn_heap_bytes", &[("kind", "allocated")]), None);
    let mut s = health_snap(7);
    s.health.heap = Some(crate::model::HeapStats { allocated_bytes: 1 << 20, resident_bytes: 3 << 20 });
    e.update(&s, t0);
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_heap_bytes", &[("kind", "allocated")]), Some(1048576.0));
    assert_eq!(sample(&t, "kovn_heap_bytes", &[("kind", "resident")]), Some(3145728.0));
    // The underlay NIC's state, one series per NIC.
    assert_eq!(sample(&t, "kovn_underlay_up", &[("interface", "eth0")]), None);
    let nic = |state| crate::model::UnderlayLink {
        interface: "eth0".into(),
        state,
        up: true,
        carrier: true,
        addresses: Vec::new(),
        since: time::OffsetDateTime::UNIX_EPOCH,
    };
    s.health.underlay = vec![nic(crate::model::UnderlayState::Up)];
    e.update(&s, t0);
    assert_eq!(sample(&text(&e), "kovn_underlay_up", &[("interface", "eth0")]), Some(1.0));
    s.health.underlay = vec![nic(crate::model::UnderlayState::NoCarrier)];
    e.update(&s, t0);
    assert_eq!(sample(&text(&e), "kovn_underlay_up", &[("interface", "eth0")]), Some(0.0));
}

use crate::drops::test_record as drop_record;

fn with_mtu(mut f: Flow, oversized: u32, too_big: u32, iface_kind: &str) -> Flow {
    f.mtu = Some(crate::flows::FlowMtu {
        oversized_packets: oversized,
        oversized_max_bytes: 1472,
        too_big_messages: too_big,
        reported_mtu: None,
    });
    f.interfaces = vec![crate::flows::FlowInterface {
        name: "x".into(),
        ifindex: 1,
        direction: "ingress".into(),
        kind: iface_kind.into(),
        flow_direction: "fwd".into(),
        packets: 1,
    }];
    f
}

#[test]
fn drops_by_reason_location_and_workload() {
    let mut e = exporter();
    let t0 = Instant::now();
    let mut s = health_snap(0);
    s.flows = vec![web_db("a", [1, 0], [60, 0]).into()];
    s.drops = vec![
        drop_record("a", "NETFILTER_DROP", "a_h", 3),
        drop_record("a", "NETFILTER_DROP", "eth0", 2),
        drop_record("", "NOT_SPECIFIED", "lo", 4),
    ];
    e.update(&s, t0);
    let nf_pod = [
        ("reason", "NETFILTER_DROP"),
        ("location", "pod"),
        ("protocol", "tcp"),
        ("namespace", "shop"),
        ("workload", "web"),
    ];
    let nf_ul = [
        ("reason", "NETFILTER_DROP"),
        ("location", "underlay"),
        ("protocol", "tcp"),
        ("namespace", "shop"),
        ("workload", "web"),
    ];
    let other = [
        ("reason", "NOT_SPECIFIED"),
        ("location", "host"),
        ("protocol", "tcp"),
        ("namespace", ""),
        ("workload", "unknown"),
    ];
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_drops_total", &nf_pod), Some(3.0), "{t}");
    assert_eq!(sample(&t, "kovn_drops_total", &nf_ul), Some(2.0), "{t}");
    assert_eq!(sample(&t, "kovn_drops_total", &other), Some(4.0), "{t}");
    // Cumulative records add their rise; a record that fell was recreated (all new).
    s.drops[0].count = 10;
    s.drops[2].count = 1;
    e.update(&s, t0 + Duration::from_secs(1));
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_drops_total", &nf_pod), Some(10.0), "{t}");
    assert_eq!(sample(&t, "kovn_drops_total", &other), Some(5.0), "{t}");
    // Gone after the series TTL without drops.
    s.drops.clear();
    e.update(&s, t0 + Duration::from_secs(400));
    assert!(!text(&e).contains("kovn_drops_total{"), "{}", text(&e));
}

#[test]
fn oversized_and_frag_needed_by_location_and_sender() {
    let mut e = exporter();
    let t0 = Instant::now();
    e.update(&snap(vec![with_mtu(web_db("a", [1, 0], [60, 0]), 2, 1, "pod")]), t0);
    e.update(
        &snap(vec![
            with_mtu(web_db("a", [2, 0], [60, 0]), 5, 1, "pod"),
            with_mtu(web_db("b", [2, 0], [60, 0]), 7, 0, "underlay"),
        ]),
        t0,
    );
    let t = text(&e);
    let pod = [("location", "pod"), ("namespace", "shop"), ("workload", "web")];
    let ul = [("location", "underlay"), ("namespace", "shop"), ("workload", "web")];
    assert_eq!(sample(&t, "kovn_oversized_packets_total", &pod), Some(5.0), "{t}");
    assert_eq!(sample(&t, "kovn_icmp_frag_needed_total", &pod), Some(1.0), "{t}");
    assert_eq!(sample(&t, "kovn_oversized_packets_total", &ul), Some(7.0), "{t}");
    assert_eq!(sample(&t, "kovn_icmp_frag_needed_total", &ul), Some(0.0), "{t}");
    // Flows without MTU signals make no series.
    let mut e = exporter();
    e.update(&snap(vec![web_db("a", [1, 0], [60, 0])]), t0);
    assert!(!text(&e).contains("kovn_oversized_packets_total{"));
}

#[test]
fn non_tc_hooks_and_seen_counters() {
    let mut e = exporter();
    let mut s = health_snap(0);
    s.health.hooks = [("kfree_skb".to_string(), true), ("ovs_vport_mtu_kprobe".to_string(), false)].into();
    s.health.kernel_counters.insert("drops_in_netns".into(), 99);
    e.update(&s, Instant::now());
    let t = text(&e);
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "kfree_skb")]), Some(1.0));
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "ovs_vport_mtu_kprobe")]), Some(0.0));
    assert_eq!(sample(&t, "kovn_hook_available", &[("hook", "tc_tunnel")]), Some(0.0));
    // What the drop hook saw is not a loss.
    assert!(!t.contains("reason=\"drops_in_netns\""), "{t}");
    assert_eq!(hook_of_program("kovn_kfree_skb"), None);
    assert_eq!(hook_of_program("kovn_tunnel_egress").as_deref(), Some("tc_tunnel"));
}

/// A snapshot with every kind of series, for the format checks.
fn everything() -> Exporter {
    let mut e = Exporter::new(MetricsConfig { pod_labels: true, ..Default::default() });
    let mut s = health_snap(3);
    let mut f = web_db("a", [3, 2], [180, 120]);
    f.rtt_us = Some(250);
    f.tunnel = Some(TunnelPeer { remote_ip: Some("172.18.0.3".parse().unwrap()), ..Default::default() });
    // Label values that need escaping in the text format.
    let odd = flow("b", pod("ns", "we\"ird\\pod\nx", None), other("external"));
    let big = with_mtu(web_db("c", [1, 0], [1500, 0]), 1, 1, "pod");
    s.drops = vec![drop_record("a", "NETFILTER_DROP", "a_h", 1)];
    s.flows = vec![f.into(), odd.into(), big.into()];
    s.alerts = vec![alert("mtu", "firing")];
    e.update(&s, Instant::now());
    e
}

/// Every `kovn_*` name the shipped dashboard and alert rules query is one this exporter
/// writes (sample names: `_total`, `_bucket`, `_info`, ...), so a renamed metric cannot
/// silently blank a panel or disarm an alert.
#[test]
fn deploy_queries_use_only_exported_metrics() {
    let exposition = text(&everything());
    let exported: HashSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let names = |q: &str| -> Vec<String> {
        let mut out = Vec::new();
        let b = q.as_bytes();
        let mut i = 0;
        while let Some(off) = q[i..].find("kovn_") {
            let start = i + off;
            let boundary = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            if boundary {
                out.push(q[start..end].to_string());
            }
            i = end;
        }
        out
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/kovn-dashboard.json"))
            .expect("dashboard JSON");
    let mut queries = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition" | "query", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut queries);
    let panels = dashboard["panels"].as_array().expect("panels").len();
    assert!(queries.len() >= panels, "{} queries for {panels} panels", queries.len());
    let rules = include_str!("../../../deploy/prometheus/kovn-rules.yml");
    let mut used = HashSet::new();
    for (file, q) in
        queries.iter().map(|q| ("kovn-dashboard.json", q.as_str())).chain([("kovn-rules.yml", rules)])
    {
        for n in names(q) {
            assert!(exported.contains(n.as_str()), "{file} queries {n}, which /metrics does not export");
            used.insert(n);
        }
    }
    // And the dashboard covers what the issue asks it to show.
    for family in [
        "kovn_path_broken",
        "kovn_requests_unanswered_total",
        "kovn_request_rtt_seconds_bucket",
        "kovn_drops_total",
        "kovn_oversized_packets_total",
        "kovn_icmp_frag_needed_total",
        "kovn_tunnel_packets_total",
        "kovn_flow_table_entries",
        "kovn_hook_available",
    ] {
        assert!(used.contains(family), "nothing in deploy/ shows {family}");
    }
}

#[test]
fn output_is_openmetrics() {
    let t = text(&everything());
    assert!(t.ends_with("# EOF\n"), "{t}");
    assert_eq!(t.matches("# EOF").count(), 1);
    // Every sample belongs to the family declared above it, with the OpenMetrics suffixes.
    let mut family: Option<(String, String)> = None;
    for line in t.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            family = Some((name.into(), kind.into()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name, kind) = family.as_ref().expect("a sample before any TYPE");
        let sample_name = line.split(['{', ' ']).next().unwrap();
        let allowed: Vec<String> = match kind.as_str() {
            "counter" => vec![format!("{name}_total")],
            "info" => vec![format!("{name}_info")],
            "histogram" => ["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")).to_vec(),
            _ => vec![name.clone()],
        };
        assert!(allowed.contains(&sample_name.to_string()), "{line} in {name} ({kind})");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    for name in [
        "kovn_flow_packets_total",
        "kovn_flow_bytes_total",
        "kovn_requests_total",
        "kovn_requests_unanswered_total",
        "kovn_request_rtt_seconds_bucket",
        "kovn_tunnel_packets_total",
        "kovn_tunnel_requests_unanswered_total",
        "kovn_path_broken",
        "kovn_build_info",
        "kovn_attached_interfaces",
        "kovn_flow_table_entries",
        "kovn_flow_table_capacity",
        "kovn_kernel_records_lost_total",
        "kovn_poll_duration_seconds_bucket",
        "kovn_hook_available",
    ] {
        assert!(
            t.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "{name}"
        );
    }
    assert!(t.contains("remote_node=\"172.18.0.3\""), "{t}");
    assert!(t.contains(r#"src_pod="we\"ird\\pod\nx""#), "{t}");
}

#[test]
fn promtool_accepts_the_output() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {promtool:?} ({e}): install it (apt-get install prometheus) or set PROMTOOL")
        });
    let input = to_prometheus_text(&text(&everything()));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}\n{input}");
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let e = everything();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, metrics_router(e.metrics())).into_future());
    // Prometheus asks for OpenMetrics first (its default scrape Accept header).
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .header("accept", prometheus_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(ct, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let body = resp.text().await.unwrap();
    assert!(body.contains("kovn_flow_packets_total{") && body.ends_with("# EOF\n"), "{body}");
    // Anyone else (curl, promtool) gets the classic text format.
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.unwrap();
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(ct, TEXT_CONTENT_TYPE);
    let body = resp.text().await.unwrap();
    assert!(body.contains("# TYPE kovn_build_info gauge") && !body.contains("# EOF"), "{body}");
    server.abort();
}

#[test]
fn hooks_are_named_from_programs() {
    assert_eq!(hook_of_program("kovn_pod_ingress").as_deref(), Some("tc_pod"));
    assert_eq!(hook_of_program("kovn_underlay_egress").as_deref(), Some("tc_underlay"));
    assert_eq!(hook_of_program("something"), None);
}
