//! Scrape cost of `GET /metrics` with 10,000 and 100,000 synthetic flows: the exporter's
//! per-poll update, the encoding, and a real HTTP scrape over loopback. Prints times, response
//! sizes and series counts (`cargo bench -p kovn-monitor --bench metrics`).
//!
//! The synthetic node: 1,000 pods of 200 workloads in 20 namespaces over 10 nodes; each
//! workload talks to 5 others (TCP, every 10th flow UDP), every 20th flow goes to a service and
//! every 50th outside the cluster. Cross-node flows carry their remote node.

use std::time::{Duration, Instant};

use kovn_monitor::api::{Health, Snapshot};
use kovn_monitor::export::{Exporter, MetricsConfig};
use kovn_monitor::flows::Flow;
use kovn_monitor::inventory::{Endpoint, TunnelPeer};
use kovn_monitor::model::{EndpointKind, FlowState, Protocol, Scenario};

const PODS: usize = 1000;
const WORKLOADS: usize = 200;
const NODES: usize = 10;

fn pod_endpoint(pod: usize) -> Endpoint {
    let workload = pod % WORKLOADS;
    Endpoint {
        kind: EndpointKind::Pod,
        namespace: Some(format!("ns{}", workload % 20)),
        pod: Some(format!("wl{workload}-{pod}")),
        workload: Some(format!("wl{workload}")),
        node: Some(format!("node{}", pod % NODES)),
        service: None,
        backends: Vec::new(),
    }
}

fn other(kind: EndpointKind) -> Endpoint {
    Endpoint { kind, ..Default::default() }
}

fn flow(base: &Flow, i: usize, grown: u64) -> Flow {
    let src_pod = i % PODS;
    let src_wl = src_pod % WORKLOADS;
    let dst_wl = (src_wl * 7 + (i / PODS % 5) * 13 + 1) % WORKLOADS;
    let dst_pod = dst_wl + WORKLOADS * (i / 7 % (PODS / WORKLOADS));
    let (dst, scenario, tunnel) = if i.is_multiple_of(50) {
        (other(EndpointKind::External), Scenario::PodToExternal, None)
    } else if i.is_multiple_of(20) {
        (other(EndpointKind::Service), Scenario::PodToService, None)
    } else if src_pod % NODES == dst_pod % NODES {
        (pod_endpoint(dst_pod), Scenario::PodToPodSameNode, None)
    } else {
        let peer = TunnelPeer { remote_node: Some(format!("node{}", dst_pod % NODES)), ..Default::default() };
        (pod_endpoint(dst_pod), Scenario::PodToPodCrossNode, Some(peer))
    };
    let udp = i.is_multiple_of(10);
    Flow {
        id: format!("{i:016x}"),
        src_port: 30000 + (i % 30000) as u16,
        dst_port: if udp { 53 } else { 8080 },
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        ip_proto: if udp { 17 } else { 6 },
        packets_fwd: 10 + grown,
        bytes_fwd: 1500 + 100 * grown,
        packets_rev: 8 + grown,
        bytes_rev: 9000 + 100 * grown,
        state: FlowState::Answered,
        rtt_us: Some(50 + (i % 2000) as u64 + grown),
        requests: 1,
        replies: 1,
        scenario,
        src: Some(pod_endpoint(src_pod)),
        dst: Some(dst),
        tunnel,
        ..base.clone()
    }
}

fn snapshot(n: usize, grown: u64) -> Snapshot {
    // From an empty kernel record: the bench sets only the fields the exporter reads.
    let base = Flow::from_kernel(
        &kovn_ebpf_common::FlowKey::default(),
        &kovn_ebpf_common::FlowStats::default(),
        &kovn_monitor::flows::Clock::fixed(0, 0),
        &kovn_monitor::flows::IfaceNames::new(),
    );
    Snapshot {
        node: "node0".into(),
        flows: (0..n).map(|i| std::sync::Arc::new(flow(&base, i, grown))).collect(),
        health: Health { flow_table_entries: n, flow_table_capacity: 1 << 20, ..Default::default() },
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn http_scrape(url: &str, client: &reqwest::Client) -> (Duration, usize) {
    let t = Instant::now();
    let body = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("GET /metrics")
        .bytes()
        .await
        .expect("body");
    (t.elapsed(), body.len())
}

fn main() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!(
        "| flows | labels | update (new flows) | update (all grew) | encode | HTTP scrape | size | series |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in [10_000, 100_000] {
        for pod_labels in [false, true] {
            let mut e = Exporter::new(MetricsConfig { pod_labels, ..Default::default() });
            let first = snapshot(n, 0);
            let grown = snapshot(n, 3);
            let t0 = Instant::now();
            let t = Instant::now();
            e.update(&first, t0);
            let update_new = t.elapsed();
            let t = Instant::now();
            e.update(&grown, t0);
            let update_grew = t.elapsed();
            let m = e.metrics();
            let mut encodes = Vec::new();
            let mut text = String::new();
            for _ in 0..5 {
                let t = Instant::now();
                text = m.encode().expect("encode");
                encodes.push(t.elapsed());
            }
            let series = text.lines().filter(|l| !l.starts_with('#')).count();
            let (scrape, size) = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                let app = kovn_monitor::api::metrics_router(m.clone());
                let server = tokio::spawn(async move { axum::serve(listener, app).await });
                let client = reqwest::Client::new();
                let url = format!("http://{addr}/metrics");
                let mut times = Vec::new();
                let mut size = 0;
                for _ in 0..5 {
                    let (d, s) = http_scrape(&url, &client).await;
                    times.push(d);
                    size = s;
                }
                server.abort();
                (median(times), size)
            });
            println!(
                "| {n} | {} | {} | {} | {} | {} | {} KiB | {series} |",
                if pod_labels { "pods" } else { "workloads" },
                ms(update_new),
                ms(update_grew),
                ms(median(encodes)),
                ms(scrape),
                size / 1024,
            );
        }
    }
}
