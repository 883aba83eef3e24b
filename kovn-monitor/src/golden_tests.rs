//! The published formats, byte for byte: `/api/v1/flows`, `/api/v1/alerts`, `/api/v1/drops`,
//! `/api/v1/pods`, `/metrics` (OpenMetrics and Prometheus text) and the CLI's renderings of
//! `flows` and `alerts` (`-o json` and the tables), from one fixed input built the way the
//! daemon builds it: kernel flow records through `Flow::from_kernel` and the inventory, drop
//! records, the detectors, the verdicts and the flow-to-alert links.
//!
//! The outputs are compared with the files in `kovn-monitor/tests/golden/`: any change of a
//! field name, value spelling, order or metric label fails this test. After an intended
//! change, `KOVN_BLESS=1 cargo test -p kovn-monitor golden` rewrites them (review the diff).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kovn_ebpf_common::{
    FlowKey, FlowStats, HOOK_EGRESS, HOOK_INGRESS, HOOK_KIND_SHIFT, KIND_POD, KIND_TUNNEL, KIND_UNDERLAY,
    MtuInfo, ObsPoint, RR_TCP, RR_UDP, TUN_GENEVE, TunnelInfo, ipv4_mapped,
};
use serde_json::json;
use tower::ServiceExt as _;

use crate::api::{AttachedInterface, Health, ProgramInfo, Snapshot};
use crate::detection::{CommandContext, Detector, DetectorConfig, EndpointFacts, PeerView, Verdict};
use crate::drops::{DropDirection, DropLocation, DropRecord};
use crate::flows::{Clock, Flow, IfaceNames};
use crate::inventory::Inventory;
use crate::model::{AlertKind, AlertState, IfaceKind, Scenario};

/// 2026-01-01T00:00:00Z at monotonic 0.
const EPOCH_NS: i128 = 1_767_225_600 * 1_000_000_000;
const SEC: u64 = 1_000_000_000;

fn at(mono_ns: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(EPOCH_NS + i128::from(mono_ns)).expect("valid time")
}

/// node1 runs web-1 and cache-1, node2 runs db-2; a service VIP 10.96.0.10:80 → db-2:8080.
fn inventory() -> Inventory {
    let mut inv = Inventory::new("node1");
    inv.apply(
        crate::ovsdb::parse_updates(&json!({
            "Interface": {
                "i1": {"new": {"name": "abc000000001_h", "type": "", "ofport": 3, "options": ["map", []],
                    "external_ids": ["map", [["iface-id", "web-1.default"], ["pod_name", "web-1"],
                        ["pod_namespace", "default"], ["ip", "10.16.0.2"], ["vendor", "kube-ovn"]]]}},
                "i2": {"new": {"name": "abc000000003_h", "type": "", "ofport": 4, "options": ["map", []],
                    "external_ids": ["map", [["iface-id", "cache-1.default"], ["pod_name", "cache-1"],
                        ["pod_namespace", "default"], ["ip", "10.16.0.3"], ["vendor", "kube-ovn"]]]}},
                "t1": {"new": {"name": "ovn-node2-0", "type": "geneve", "ofport": 1,
                    "options": ["map", [["remote_ip", "172.31.250.12"]]],
                    "external_ids": ["map", [["ovn-chassis-id", "node2@172.31.250.12"]]]}}
            },
            "Open_vSwitch": {"o": {"new": {"external_ids": ["map", [["ovn-encap-ip", "172.31.250.11"]]]}}},
            "Chassis": {"c2": {"new": {"name": "node2", "hostname": "node2"}}},
            "Port_Binding": {
                "p1": {"new": {"logical_port": "web-1.default", "mac": "0a:00:00:00:00:01 10.16.0.2", "chassis": ["set", []], "type": ""}},
                "p3": {"new": {"logical_port": "cache-1.default", "mac": "0a:00:00:00:00:03 10.16.0.3", "chassis": ["set", []], "type": ""}},
                "p2": {"new": {"logical_port": "db-2.shop", "mac": ["set", ["0a:00:00:00:00:05 10.16.0.5"]], "chassis": ["uuid", "c2"], "type": ""}}
            },
            "Load_Balancer": {"l": {"new": {"name": "cluster-tcp-loadbalancer", "protocol": ["set", []],
                "vips": ["map", [["10.96.0.10:80", "10.16.0.5:8080"]]]}}}
        }))
        .expect("valid updates"),
    );
    inv
}

const WEB: [u8; 4] = [10, 16, 0, 2];
const CACHE: [u8; 4] = [10, 16, 0, 3];
const DB: [u8; 4] = [10, 16, 0, 5];
const VIP: [u8; 4] = [10, 96, 0, 10];
const DNS: [u8; 4] = [8, 8, 8, 8];
const BLACKHOLE: [u8; 4] = [1, 1, 1, 1];

const WEB_VETH: u32 = 11;
const CACHE_VETH: u32 = 12;
const TUNNEL: u32 = 20;
const UNDERLAY: u32 = 2;

fn names() -> IfaceNames {
    [
        (WEB_VETH, "abc000000001_h"),
        (CACHE_VETH, "abc000000003_h"),
        (TUNNEL, "genev_sys_6081"),
        (UNDERLAY, "eth0"),
    ]
    .into_iter()
    .map(|(i, n)| (i, n.to_string()))
    .collect()
}

fn obs(ifindex: u32, egress: bool, kind: u8, rev: bool, packets: u64) -> ObsPoint {
    let hook = if egress { HOOK_EGRESS } else { HOOK_INGRESS } | (kind << HOOK_KIND_SHIFT);
    ObsPoint { ifindex, hook, dir: u8::from(rev), _pad: [0; 2], packets }
}

/// One kernel record from `src:sport` (the initiator) to `dst:dport`.
struct Rec {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    stats: FlowStats,
}

impl Rec {
    fn key(&self) -> (FlowKey, FlowStats) {
        let (key, side) = FlowKey::canonical(
            ipv4_mapped(self.src),
            ipv4_mapped(self.dst),
            self.sport,
            self.dport,
            self.proto,
        );
        (key, FlowStats { initiator: side, ..self.stats })
    }

    fn flow(&self, inv: &Inventory, clock: &Clock) -> Flow {
        let (key, stats) = self.key();
        let mut f = Flow::from_kernel(&key, &stats, clock, &names());
        f.annotate(inv);
        f
    }
}

fn with_obs(mut s: FlowStats, points: &[ObsPoint]) -> FlowStats {
    for (slot, p) in s.obs.iter_mut().zip(points) {
        *slot = *p;
    }
    s
}

/// A TCP connection opened at `first` (s), last packet at `last`, `req` SYNs, `rep` SYN-ACKs.
fn tcp(first: f64, last: f64, req: u32, rep: u32, bytes: [u64; 2], packets: [u64; 2]) -> FlowStats {
    FlowStats {
        first_seen_ns: (first * 1e9) as u64,
        last_seen_ns: (last * 1e9) as u64,
        packets,
        bytes,
        requests: req,
        replies: rep,
        rr_kind: RR_TCP,
        tcp_flags: [0x02 | if rep > 0 { 0x18 } else { 0 }, if rep > 0 { 0x12 | 0x08 } else { 0 }],
        rtt_ns: if rep > 0 { 412_345 } else { 0 },
        ..Default::default()
    }
}

/// The records of the current poll (at monotonic 20 s).
fn records() -> Vec<Rec> {
    vec![
        // Same node, answered: web-1 → cache-1:6379.
        Rec {
            src: WEB,
            dst: CACHE,
            sport: 40000,
            dport: 6379,
            proto: 6,
            stats: with_obs(
                tcp(1.25, 19.5, 1, 1, [1200, 3400], [12, 10]),
                &[
                    obs(WEB_VETH, false, KIND_POD, false, 12),
                    obs(CACHE_VETH, true, KIND_POD, false, 12),
                    obs(CACHE_VETH, false, KIND_POD, true, 10),
                    obs(WEB_VETH, true, KIND_POD, true, 10),
                ],
            ),
        },
        // Same node, big requests unanswered, small ones answered above: the MTU signal.
        Rec {
            src: WEB,
            dst: CACHE,
            sport: 40003,
            dport: 6379,
            proto: 6,
            stats: FlowStats {
                mtu: MtuInfo {
                    oversized_packets: 3,
                    oversized_max_len: 1460,
                    too_big_msgs: 1,
                    reported_mtu: 1400,
                },
                ..with_obs(
                    tcp(3.0, 4.5, 3, 0, [4380, 0], [3, 0]),
                    &[obs(WEB_VETH, false, KIND_POD, false, 3)],
                )
            },
        },
        // Cross node, unanswered, seen leaving through the tunnel: web-1 → db-2:8080.
        Rec {
            src: WEB,
            dst: DB,
            sport: 40001,
            dport: 8080,
            proto: 6,
            stats: FlowStats {
                tunnel: TunnelInfo {
                    remote: ipv4_mapped([172, 31, 250, 12]),
                    vni: 7,
                    outer_max_len: 110,
                    packets: 4,
                    kind: TUN_GENEVE,
                    _pad: [0; 3],
                },
                ..with_obs(
                    tcp(2.0, 9.0, 4, 0, [240, 0], [4, 0]),
                    &[
                        obs(WEB_VETH, false, KIND_POD, false, 4),
                        obs(TUNNEL, true, KIND_TUNNEL, false, 4),
                        obs(UNDERLAY, true, KIND_UNDERLAY, false, 4),
                    ],
                )
            },
        },
        // A service: web-1 → VIP:80, unanswered, and its post-DNAT flow → db-2:8080.
        Rec {
            src: WEB,
            dst: VIP,
            sport: 40002,
            dport: 80,
            proto: 6,
            stats: with_obs(
                tcp(5.0, 11.0, 3, 0, [180, 0], [3, 0]),
                &[obs(WEB_VETH, false, KIND_POD, false, 3)],
            ),
        },
        Rec {
            src: WEB,
            dst: DB,
            sport: 40002,
            dport: 8080,
            proto: 6,
            stats: with_obs(
                tcp(5.0, 11.0, 3, 0, [180, 0], [3, 0]),
                &[obs(TUNNEL, true, KIND_TUNNEL, false, 3)],
            ),
        },
        // External, answered UDP: web-1 → 8.8.8.8:53.
        Rec {
            src: WEB,
            dst: DNS,
            sport: 53000,
            dport: 53,
            proto: 17,
            stats: with_obs(
                FlowStats {
                    first_seen_ns: 12 * SEC,
                    last_seen_ns: 12 * SEC + 3_000_000,
                    packets: [1, 1],
                    bytes: [60, 120],
                    requests: 1,
                    replies: 1,
                    rr_kind: RR_UDP,
                    rtt_ns: 2_999_999,
                    ..Default::default()
                },
                &[obs(WEB_VETH, false, KIND_POD, false, 1), obs(UNDERLAY, true, KIND_UNDERLAY, false, 1)],
            ),
        },
    ]
}

/// The earlier poll's record that fired and then went quiet (resolved in the current poll).
fn earlier() -> Rec {
    Rec {
        src: WEB,
        dst: BLACKHOLE,
        sport: 41000,
        dport: 443,
        proto: 6,
        stats: with_obs(tcp(0.5, 0.5, 1, 0, [60, 0], [1, 0]), &[obs(WEB_VETH, false, KIND_POD, false, 1)]),
    }
}

fn drop_record(f: &Flow, reason: &str, location: DropLocation, iface: (&str, u32), count: u64) -> DropRecord {
    DropRecord {
        flow_id: f.id.clone(),
        src_ip: Some(f.src_ip),
        dst_ip: Some(f.dst_ip),
        src_port: f.src_port,
        dst_port: f.dst_port,
        protocol: Some(f.protocol),
        ip_proto: f.ip_proto,
        reason: reason.into(),
        reason_code: 6,
        location,
        interface: iface.0.into(),
        ifindex: iface.1,
        pod: (location == DropLocation::Pod).then(|| "default/cache-1".to_string()),
        netns_inode: (location == DropLocation::Pod).then_some(4_026_532_999),
        netns: None,
        direction: Some(DropDirection::Request),
        count,
        bytes: count * 60,
        last_seen: Clock::fixed(0, EPOCH_NS).time(19 * SEC),
        kernel_function: None,
    }
}

/// The snapshot the daemon would publish after the poll at monotonic 20 s.
fn snapshot() -> Snapshot {
    let inv = inventory();
    let clock = Clock::fixed(20 * SEC, EPOCH_NS);
    let mut detector = Detector::new(
        "node1",
        DetectorConfig { pod_mtu: Some(1400), resolve_after: Duration::from_secs(10), ..Default::default() },
    );
    let location = |iface: &str| if iface.ends_with("_h") { IfaceKind::Pod } else { IfaceKind::Host };

    // The earlier poll: one finding fires, then goes quiet for longer than resolve_after.
    let old = vec![earlier().flow(&inv, &Clock::fixed(5 * SEC, EPOCH_NS))];
    detector.observe_drops(&[], location, at(5 * SEC));
    let fired = detector.evaluate(&old, at(5 * SEC));
    assert_eq!(fired.len(), 1, "the earlier finding fires: {fired:#?}");

    // The current poll through the flow table, as Daemon::poll reads it.
    let mut table = crate::flows::FlowTable::new(Duration::from_secs(60), Duration::from_secs(60));
    for (i, n) in names() {
        table.set_iface_name(i, &n);
    }
    table.merge(records().iter().map(Rec::key).collect(), 20 * SEC);
    let mut flows = table.snapshot(&clock, &inv);
    let by_port = |p: u16| flows.iter().find(|f| f.src_port == p).expect("flow").clone();
    let (mtu_flow, cross, dns) = (by_port(40003), by_port(40001), by_port(53000));
    let mut drops = vec![
        drop_record(&cross, "NETFILTER_DROP", DropLocation::Node, ("genev_sys_6081", TUNNEL), 12),
        drop_record(&mtu_flow, "NETFILTER_DROP", DropLocation::Pod, ("abc000000003_h", CACHE_VETH), 3),
        // Drops no path finding explains: a `drops` finding of their own.
        drop_record(&dns, "IP_INADDRERRORS", DropLocation::Node, ("eth0", UNDERLAY), 15),
    ];
    crate::drops::name_pods(&mut drops, &flows, "node1", |veth| {
        (veth == "abc000000003_h").then(|| "default/cache-1".to_string())
    });
    let mut per_flow = crate::drops::by_flow(&drops);
    for f in &mut flows {
        if let Some(d) = per_flow.remove(&f.id) {
            Arc::make_mut(f).drops = d;
        }
    }
    detector.observe_drops(&drops, location, at(20 * SEC));
    let mut alerts = detector.evaluate(&flows, at(20 * SEC));

    // Verdicts as Daemon::attach_verdicts gives them (the peer saw nothing of the flow).
    let ctx = CommandContext {
        br_int: "br-int".into(),
        logical_switch: "ovn-default".into(),
        ..Default::default()
    };
    for a in alerts.iter_mut().filter(|a| a.state == AlertState::Firing && a.kind != AlertKind::Drops) {
        let vip_flow =
            flows.iter().find(|f| Some(&f.id) == a.flows.first()).unwrap_or_else(|| panic!("flow of {a:#?}"));
        let f = a.backend.as_ref().and_then(|b| flows.iter().find(|f| f.id == b.flow)).unwrap_or(vip_flow);
        let peer = (f.scenario == Scenario::PodToPodCrossNode).then_some(PeerView::Seen(None));
        let (hop, summary) = crate::detection::verdict(a, f, peer.as_ref(), true);
        let facts = |ip| {
            inv.pod(ip)
                .map(|p| EndpointFacts { mac: p.mac.clone(), host_iface: p.host_iface.clone() })
                .unwrap_or_default()
        };
        let mut v = Verdict {
            hop,
            summary,
            next_commands: crate::detection::next_commands(
                a,
                vip_flow,
                &ctx,
                &facts(f.src_ip),
                &facts(f.dst_ip),
            ),
        };
        if let Some(pv) = crate::drops::pod_drop_verdict(f, None) {
            v.hop = pv.hop;
            v.summary = pv.summary;
            v.next_commands.splice(0..0, pv.next_commands);
        }
        a.verdict = Some(v);
    }

    let health = Health {
        status: "ok".into(),
        version: "golden".into(),
        attached_interfaces: vec![
            AttachedInterface {
                name: "abc000000001_h".into(),
                ifindex: WEB_VETH,
                kind: "pod".into(),
                mtu: 1400,
            },
            AttachedInterface {
                name: "genev_sys_6081".into(),
                ifindex: TUNNEL,
                kind: "tunnel".into(),
                mtu: 65000,
            },
            AttachedInterface { name: "eth0".into(), ifindex: UNDERLAY, kind: "underlay".into(), mtu: 1500 },
        ],
        programs: vec![ProgramInfo { name: "kovn_tc_ingress".into(), id: 41 }],
        flow_table_entries: 6,
        flow_table_capacity: 65536,
        kernel_counters: [("map_full".to_string(), 2), ("parse_truncated".to_string(), 0)].into(),
        poll_duration_ms: 1.5,
        hooks: [("kfree_skb".to_string(), true), ("ovs_vport_mtu_kprobe".to_string(), false)].into(),
        hooks_unavailable: [("ovs_vport_mtu_kprobe".to_string(), "no kprobe program".to_string())].into(),
        heap: Some(crate::model::HeapStats { allocated_bytes: 52_428_800, resident_bytes: 62_914_560 }),
        underlay: vec![crate::model::UnderlayLink {
            interface: "eth0".into(),
            state: crate::model::UnderlayState::Up,
            up: true,
            carrier: true,
            addresses: vec!["172.31.250.11".parse().expect("an address")],
            since: at(0),
        }],
    };
    let mut snap = Snapshot {
        node: "node1".into(),
        time: clock.wall_now(),
        flows,
        pods: inv.pods().into_iter().cloned().collect(),
        alerts,
        health,
        drops,
    };
    crate::daemon::link_flows_to_alerts(&mut snap);
    snap
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `got` with the golden file `name` (or rewrites it under `KOVN_BLESS=1`).
fn check(name: &str, got: &str, failures: &mut Vec<String>) {
    let path = golden_dir().join(name);
    if std::env::var_os("KOVN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).expect("golden dir");
        std::fs::write(&path, got).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (KOVN_BLESS=1 writes it)", path.display()));
    if want != got {
        let line = want.lines().zip(got.lines()).position(|(a, b)| a != b).unwrap_or(0);
        failures.push(format!(
            "{name} differs from {} at line {}:\n  want: {}\n  got:  {}",
            path.display(),
            line + 1,
            want.lines().nth(line).unwrap_or("<end>"),
            got.lines().nth(line).unwrap_or("<end>")
        ));
    }
}

async fn get(app: axum::Router, uri: &str, accept: Option<&str>) -> (String, String) {
    let mut req = axum::http::Request::get(uri);
    if let Some(a) = accept {
        req = req.header(axum::http::header::ACCEPT, a);
    }
    let resp = app.oneshot(req.body(axum::body::Body::empty()).expect("request")).await.expect("response");
    assert_eq!(resp.status(), axum::http::StatusCode::OK, "{uri}");
    let ctype = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.expect("body");
    (ctype, String::from_utf8(body.to_vec()).expect("utf-8 body"))
}

/// The exposition with each family's series in a fixed order: prometheus-client keeps series
/// in a hash map, so their order changes from run to run (what Prometheus ignores). Family
/// order, names, labels, label order and values stay as encoded; the samples of one series (a
/// histogram's sum, count and buckets) keep their order.
fn canonical_metrics(text: &str) -> String {
    // The build's commit changes with every commit: not a format.
    let text: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("revision=\"") {
            Some((before, after)) if line.starts_with("kovn_build_info{") => {
                let rest = after.split_once('"').map_or("", |(_, r)| r);
                format!("{before}revision=\"REVISION\"{rest}")
            }
            _ => line.to_string(),
        })
        .collect();
    let mut out = String::new();
    let mut block: Vec<(String, Vec<&str>)> = Vec::new();
    let flush = |block: &mut Vec<(String, Vec<&str>)>, out: &mut String| {
        block.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, lines) in block.drain(..) {
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    };
    for line in text.iter().map(String::as_str) {
        if line.starts_with('#') {
            flush(&mut block, &mut out);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // The series: labels without `le`, and the family (the name without its suffix).
        let labels = line.rsplit_once(' ').map_or(line, |(l, _)| l);
        let (name, labels) = labels.split_once('{').unwrap_or((labels, ""));
        let family = ["_bucket", "_sum", "_count", "_total", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let series: Vec<&str> =
            labels.trim_end_matches('}').split(',').filter(|l| !l.starts_with("le=")).collect();
        let key = format!("{family}{{{}}}", series.join(","));
        match block.iter_mut().find(|(k, _)| *k == key) {
            Some((_, lines)) => lines.push(line),
            None => block.push((key, vec![line])),
        }
    }
    flush(&mut block, &mut out);
    out
}

/// JSON bodies end without a newline; the files have one for editors and diffs.
fn nl(s: &str) -> String {
    format!("{s}\n")
}

#[tokio::test]
async fn published_formats_match_the_golden_files() {
    let snap = snapshot();
    let kinds: Vec<(&str, &str)> = snap.alerts.iter().map(|a| (a.kind.as_str(), a.state.as_str())).collect();
    for want in [
        ("request_without_reply", "firing"),
        ("mtu", "firing"),
        ("drops", "firing"),
        ("request_without_reply", "resolved"),
    ] {
        assert!(kinds.contains(&want), "the input must raise {want:?}: got {kinds:?}");
    }
    let mut exporter = crate::export::Exporter::new(crate::export::MetricsConfig::default());
    exporter.update(&snap, std::time::Instant::now());
    let shared = crate::model::Published::new(snap);
    let api = crate::api::router(shared.clone());
    let metrics = crate::api::metrics_router(exporter.metrics());
    let mut failures = Vec::new();

    let (_, flows) = get(api.clone(), "/api/v1/flows", None).await;
    check("flows.json", &nl(&flows), &mut failures);
    let (_, alerts) = get(api.clone(), "/api/v1/alerts", None).await;
    check("alerts.json", &nl(&alerts), &mut failures);
    let (_, drops) = get(api.clone(), "/api/v1/drops", None).await;
    check("drops.json", &nl(&drops), &mut failures);
    let (_, pods) = get(api.clone(), "/api/v1/pods", None).await;
    check("pods.json", &nl(&pods), &mut failures);
    let (ctype, om) = get(metrics.clone(), "/metrics", Some("application/openmetrics-text")).await;
    check(
        "metrics.openmetrics",
        &format!("# Content-Type: {ctype}\n{}", canonical_metrics(&om)),
        &mut failures,
    );
    let (ctype, text) = get(metrics, "/metrics", None).await;
    check("metrics.txt", &format!("# Content-Type: {ctype}\n{}", canonical_metrics(&text)), &mut failures);

    // The CLI reads the same bodies back (`kovn-monitor alerts|flows`, main.rs).
    let a: crate::client::AlertsResponse = serde_json::from_str(&alerts).expect("alerts response");
    check("cli_alerts.json", &nl(&serde_json::to_string_pretty(&a.alerts).expect("json")), &mut failures);
    check("cli_alerts.txt", &crate::client::render_alerts(&a.alerts), &mut failures);
    let f: crate::client::FlowsResponse = serde_json::from_str(&flows).expect("flows response");
    check("cli_flows.json", &nl(&serde_json::to_string_pretty(&f.flows).expect("json")), &mut failures);
    check("cli_flows.txt", &crate::client::render_table(&f.flows), &mut failures);

    assert!(failures.is_empty(), "published formats changed:\n{}", failures.join("\n"));
}
