//! The HTTP API's query strings, as any client on the network sends them: `GET /api/v1/flows`
//! and `/api/v1/alerts` through the real router (axum's `Query` extractor, the filters'
//! validation, matching against a snapshot with flows), and `/api/v1/trace`'s query through the
//! same deserialiser into `TraceQuery` and the drill-down's resolution of it (`flow=`, `alert=`
//! or the packet's fields). Anything but 200 or 400 (a 500, a panic) is a failure.
#![no_main]

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kovn_monitor::api::{Shared, Snapshot, router};
use kovn_monitor::drilldown::{TraceConfig, TraceQuery, Tracer};
use kovn_monitor::flows::Flow;
use kovn_monitor::inventory::Inventory;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct World {
    rt: tokio::runtime::Runtime,
    api: axum::Router,
    tracer: Tracer,
}

fn flow(id: &str, scenario: &str, state: &str, proto: &str) -> Flow {
    serde_json::from_value(serde_json::json!({
        "id": id, "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3", "src_port": 40000, "dst_port": 80,
        "protocol": proto, "ip_proto": 6, "packets_fwd": 1, "bytes_fwd": 60, "packets_rev": 0,
        "bytes_rev": 0, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:01Z", "state": state, "requests": 1,
        "replies": 0, "requests_unanswered": 1, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "SYN",
        "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false, "interfaces": [],
        "scenario": scenario,
        "src": {"kind": "pod", "namespace": "default", "pod": "web-1"},
        "dst": {"kind": "pod", "namespace": "shop", "pod": "db-2"}
    }))
    .expect("a valid flow")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let snap = Snapshot {
            node: "node1".into(),
            flows: vec![
                Arc::new(flow("1", "pod_to_pod_cross_node", "unanswered", "tcp")),
                Arc::new(flow("2", "pod_to_service", "answered", "udp")),
            ],
            ..Default::default()
        };
        let shared = Shared::new(snap);
        let cfg = TraceConfig {
            ovs_rundir: "/nonexistent".into(),
            bridge: "br-int".into(),
            ovn_sb: None,
            ovn_nb: None,
            timeout: Duration::from_secs(1),
            peer_port: 9,
            api_enabled: true,
        };
        let inv = Arc::new(RwLock::new(Inventory::new("node1")));
        World {
            rt: tokio::runtime::Builder::new_current_thread().build().expect("runtime"),
            api: router(shared.clone()),
            tracer: Tracer::new(cfg, "node1", shared, inv),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, q)) = data.split_first() else { return };
    let Ok(q) = std::str::from_utf8(q) else { return };
    let w = world();
    match which % 3 {
        0 | 1 => {
            let path = if which % 3 == 0 { "/api/v1/flows" } else { "/api/v1/alerts" };
            // What hyper would refuse before routing never reaches the API.
            let Ok(req) = Request::get(format!("{path}?{q}")).body(Body::empty()) else { return };
            let resp = w.rt.block_on(w.api.clone().oneshot(req)).expect("the router is infallible");
            let s = resp.status();
            assert!(s == StatusCode::OK || s == StatusCode::BAD_REQUEST, "{path}?{q}: {s}");
        }
        _ => {
            if let Ok(tq) = serde_urlencoded::from_str::<TraceQuery>(q) {
                let _ = w.tracer.resolve(&tq);
            }
        }
    }
});
