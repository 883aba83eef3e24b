//! Test fixtures shared by the detectors' tests: flows as the API shows them, pods,
//! interfaces, kernel drop records.

use serde_json::json;

use super::*;
use crate::model::IfaceKind;

pub(crate) const T0: &str = "2026-01-01T00:00:00Z";

pub(crate) fn at(secs: i64) -> OffsetDateTime {
    crate::model::parse_rfc3339(T0).expect("valid") + time::Duration::seconds(secs)
}

pub(crate) fn pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
    json!({"kind": "pod", "namespace": ns, "pod": name, "node": node})
}

/// A flow as the API shows it; `fwd`/`rev` packets, requests/replies, scenario, ends.
#[expect(clippy::too_many_arguments, reason = "a test helper: one flow from its fields, positionally")]
pub(crate) fn flow(
    id: &str,
    proto: &str,
    dport: u16,
    (req, rep, rev): (u32, u32, u64),
    scenario: &str,
    src: serde_json::Value,
    dst: serde_json::Value,
    ifaces: serde_json::Value,
) -> Flow {
    serde_json::from_value(json!({
        "id": id, "src_ip": "10.16.0.2", "dst_ip": "10.16.0.5", "src_port": 40000, "dst_port": dport,
        "protocol": proto, "ip_proto": 6, "packets_fwd": req.max(1), "bytes_fwd": 60 * u64::from(req.max(1)),
        "packets_rev": rev, "bytes_rev": 60 * rev, "first_seen": T0, "last_seen": T0,
        "state": if rep > 0 { "answered" } else { "unanswered" }, "requests": req, "replies": rep,
        "requests_unanswered": if rep > 0 { 0 } else { req }, "rst_fwd": 0, "rst_rev": 0,
        "tcp_flags_fwd": "SYN", "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false,
        "interfaces": ifaces, "scenario": scenario, "src": src, "dst": dst,
        "tunnel": if scenario == "pod_to_pod_cross_node" { json!({"remote_node": "node2", "remote_ip": "172.31.250.12"}) } else { json!(null) }
    }))
    .expect("valid flow")
}

pub(crate) fn iface(kind: &str, dir: &str, fdir: &str) -> serde_json::Value {
    json!({"name": format!("{kind}-{dir}"), "ifindex": 3, "direction": dir, "kind": kind, "flow_direction": fdir, "packets": 1})
}

pub(crate) fn cross(id: &str, (req, rep, rev): (u32, u32, u64), dst: &str) -> Flow {
    flow(
        id,
        "tcp",
        8080,
        (req, rep, rev),
        "pod_to_pod_cross_node",
        pod("default", "web-1", "node1"),
        pod("shop", dst, "node2"),
        json!([iface("pod", "ingress", "fwd"), iface("underlay", "egress", "fwd")]),
    )
}

pub(crate) fn same(id: &str, (req, rep, rev): (u32, u32, u64), dst: &str, delivered: bool) -> Flow {
    let mut i = vec![iface("pod", "ingress", "fwd")];
    if delivered {
        i.push(iface("pod", "egress", "fwd"));
    }
    flow(
        id,
        "tcp",
        8080,
        (req, rep, rev),
        "pod_to_pod_same_node",
        pod("default", "web-1", "node1"),
        pod("shop", dst, "node1"),
        json!(i),
    )
}

pub(crate) use crate::drops::test_record as drop_rec;

pub(crate) fn pod_location(iface: &str) -> IfaceKind {
    if iface.ends_with("_h") { IfaceKind::Pod } else { IfaceKind::Host }
}

pub(crate) fn detector() -> Detector {
    Detector::new("node1", DetectorConfig::default())
}

/// A connection to the VIP of `shop/db` (backends db-1 on node1, db-2 on node2) from
/// web-1, source port `sport`, and its post-DNAT flow towards `backend` when seen.
pub(crate) fn via_service(sport: u16, (req, rep, rev): (u32, u32, u64), backend: Option<&str>) -> Vec<Flow> {
    let svc = json!({"kind": "service", "namespace": "shop", "service": "shop/db",
        "backends": ["shop/db-1", "shop/db-2"]});
    let mut vip = flow(
        &format!("vip{sport}"),
        "tcp",
        80,
        (req, rep, rev),
        "pod_to_service",
        pod("default", "web-1", "node1"),
        svc,
        json!([iface("pod", "ingress", "fwd")]),
    );
    vip.dst_ip = "10.96.0.11".parse().unwrap();
    vip.src_port = sport;
    let mut out = vec![vip];
    if let Some(b) = backend {
        let mut post =
            if b == "db-2" { cross("x", (req, rep, rev), b) } else { same("x", (req, rep, rev), b, true) };
        post.id = format!("post{sport}");
        post.src_port = sport;
        post.dst_ip = if b == "db-2" { "10.16.0.6" } else { "10.16.0.3" }.parse().unwrap();
        out.push(post);
    }
    out
}
