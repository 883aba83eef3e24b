//! `GET /metrics`: the daemon's snapshot as Prometheus metrics (OpenMetrics text, base units).
//!
//! The flow table holds *cumulative* counters per flow, and flows leave the table when they
//! expire. Prometheus counters must never go backwards, so the exporter does not sum the table:
//! it remembers what it last saw of each flow (by flow id) and adds only the **deltas** to the
//! aggregate counters. A flow that disappears contributes nothing more (its last values are
//! already in the aggregates); a flow whose counters went down under the same id is a new
//! incarnation of the 5-tuple, and its values are added from zero.
//!
//! Labels are bounded: workloads, never pods (unless `--metrics-pod-labels`), never IPs or
//! ports. A label set no flow maps to any more is dropped after `--metrics-series-ttl`, so the
//! series count follows the traffic instead of growing for ever.
//!
//! Coming with the kernel drop and MTU hooks (kept out until the kernel reports them):
//! `kovn_drops_total{reason, scenario, …}` (from `skb:kfree_skb`), `kovn_oversized_packets_total`
//! and `kovn_frag_needed_total` (packets larger than the path MTU, ICMP fragmentation-needed /
//! packet-too-big seen). They take the same pair labels as `kovn_requests_total`, and their
//! hooks show up in `kovn_hook_available` (see [`hook_of_program`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::api::Snapshot;
use crate::flows::Flow;
use crate::inventory::Endpoint;
use crate::model::{AlertState, EndpointKind, IfaceKind};

/// The content type of `/metrics` (what `prometheus_client::encoding::text` writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request RTT buckets (seconds): a same-node veth round trip is tens of µs, cross-node through
/// a Geneve tunnel hundreds of µs, a service through a slow backend up to seconds.
pub const RTT_BUCKETS: [f64; 16] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5,
    5.0,
];

/// Poll duration buckets (seconds): a poll reads the whole kernel map, so it grows with the table.
pub const POLL_BUCKETS: [f64; 13] =
    [1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0];

/// Interface kinds and hooks always exported (at 0 when absent), so a dashboard can tell
/// "not attached" from "not scraped".
const IFACE_KINDS: [&str; 4] = ["pod", "host", "underlay", "tunnel"];
/// Every hook `kovn_hook_available` reports, so a missing one reads 0 rather than absent.
const HOOKS: [&str; 6] =
    ["tc_pod", "tc_host", "tc_underlay", "tc_tunnel", "kfree_skb", "ovs_vport_mtu_kprobe"];
/// Kernel counters that count what was seen, not what was lost: not in `kovn_kernel_records_lost`.
const NOT_LOSSES: [&str; 1] = ["drops_in_netns"];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// How the exporter labels and ages series (`kovn-monitor run --metrics-*`).
#[derive(Clone, Copy, Debug)]
pub struct MetricsConfig {
    /// Adds `src_pod`/`dst_pod` labels and uses the pod name when the workload is unknown:
    /// one series per pod pair, so only for small clusters or debugging.
    pub pod_labels: bool,
    /// A label set no flow (or alert) maps to any more is removed after this long.
    pub series_ttl: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { pod_labels: false, series_ttl: Duration::from_secs(300) }
    }
}

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

/// The constructor as the family's type names it (a fn pointer, not the fn item).
const RTT_HISTOGRAM: fn() -> Histogram = rtt_histogram;

/// The registry and its metric families. Shared with the HTTP handler: encoding needs only
/// `&self` (families lock internally), so a scrape never waits for the poller's bookkeeping.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    flow_packets: Family<Labels, Counter>,
    flow_bytes: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    requests_unanswered: Family<Labels, Counter>,
    rtt: HistogramFamily,
    tunnel_packets: Family<Labels, Counter>,
    tunnel_unanswered: Family<Labels, Counter>,
    path_broken: Family<Labels, Gauge>,
    attached: Family<Labels, Gauge>,
    table_entries: Gauge,
    table_capacity: Gauge,
    kernel_lost: Family<Labels, Counter>,
    poll_duration: Histogram,
    hook_available: Family<Labels, Gauge>,
    drops: Family<Labels, Counter>,
    oversized: Family<Labels, Counter>,
    frag_needed: Family<Labels, Counter>,
    flows_refused: Family<Labels, Counter>,
    spoofed: Family<Labels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            flow_packets: Family::default(),
            flow_bytes: Family::default(),
            requests: Family::default(),
            requests_unanswered: Family::default(),
            rtt: Family::new_with_constructor(RTT_HISTOGRAM),
            tunnel_packets: Family::default(),
            tunnel_unanswered: Family::default(),
            path_broken: Family::default(),
            attached: Family::default(),
            table_entries: Gauge::default(),
            table_capacity: Gauge::default(),
            kernel_lost: Family::default(),
            poll_duration: Histogram::new(POLL_BUCKETS),
            hook_available: Family::default(),
            drops: Family::default(),
            oversized: Family::default(),
            frag_needed: Family::default(),
            flows_refused: Family::default(),
            spoofed: Family::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters, `_info` to info metrics and the unit
        // to names registered with one: the names below are the stems.
        registry.register(
            "kovn_flow_packets",
            "Packets of flows seen on this node, by direction (request: initiator to responder)",
            m.flow_packets.clone(),
        );
        registry.register_with_unit(
            "kovn_flow",
            "L3 bytes of flows seen on this node, by direction (request: initiator to responder)",
            Unit::Bytes,
            m.flow_bytes.clone(),
        );
        registry.register(
            "kovn_requests",
            "Requests seen (TCP SYNs incl. retransmits, echo requests, UDP packets before the first reply)",
            m.requests.clone(),
        );
        registry.register(
            "kovn_requests_unanswered",
            "Requests that had no answer when a poll saw them (retransmitted SYNs, lost echoes, unanswered UDP)",
            m.requests_unanswered.clone(),
        );
        registry.register_with_unit(
            "kovn_request_rtt",
            "Request to reply time of flows, one observation per new measurement",
            Unit::Seconds,
            m.rtt.clone(),
        );
        registry.register(
            "kovn_tunnel_packets",
            "Packets of cross-node flows, by remote node and direction (request: initiator to responder)",
            m.tunnel_packets.clone(),
        );
        registry.register(
            "kovn_tunnel_requests_unanswered",
            "Unanswered requests of cross-node flows, by remote node",
            m.tunnel_unanswered.clone(),
        );
        registry.register(
            "kovn_path_broken",
            "1 while a firing alert exists for this pair and kind, 0 after it resolved (until the series TTL)",
            m.path_broken.clone(),
        );
        registry.register(
            "kovn_build",
            "The kovn-monitor build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("revision", env!("KOVN_GIT_REVISION").to_string()),
            ]),
        );
        registry.register(
            "kovn_flows_refused",
            "Packets of new flows not recorded, by reason (source_budget: the pod's new-flow budget was spent) and the pod's namespace and workload",
            m.flows_refused.clone(),
        );
        registry.register(
            "kovn_spoofed_packets",
            "Packets a pod sent on its veth from a source address not its own (not recorded), by the pod's namespace and workload",
            m.spoofed.clone(),
        );
        registry.register(
            "kovn_attached_interfaces",
            "Interfaces kovn's programs are attached to, by kind",
            m.attached.clone(),
        );
        registry.register(
            "kovn_flow_table_entries",
            "Flows in the kernel flow table after the last poll (live flows; the API also keeps expired ones for --flow-retention)",
            m.table_entries.clone(),
        );
        registry.register(
            "kovn_flow_table_capacity",
            "Flows the kernel flow table can hold at once (slots plus hash map, or the hash map alone)",
            m.table_capacity.clone(),
        );
        registry.register(
            "kovn_kernel_records_lost",
            "What the kernel side could not record, by reason (map_full, parse_truncated, ...)",
            m.kernel_lost.clone(),
        );
        registry.register_with_unit(
            "kovn_poll_duration",
            "Time to read the kernel flow map and build the snapshot",
            Unit::Seconds,
            m.poll_duration.clone(),
        );
        registry.register(
            "kovn_hook_available",
            "1 for each kernel hook kovn runs (tc_pod, tc_host, tc_underlay, tc_tunnel, kfree_skb, ovs_vport_mtu_kprobe)",
            m.hook_available.clone(),
        );
        registry.register(
            "kovn_drops",
            "Packets the kernel dropped (skb:kfree_skb), by the kernel's reason, where (pod|tunnel|underlay|host) and the pod end's workload",
            m.drops.clone(),
        );
        registry.register(
            "kovn_oversized_packets",
            "Packets larger than the path MTU that may not be fragmented (IPv4 DF, IPv6), by where the flow enters this node and the sender's workload",
            m.oversized.clone(),
        );
        registry.register(
            "kovn_icmp_frag_needed",
            "ICMP fragmentation-needed / ICMPv6 packet-too-big messages about flows seen here, by location and the flow's source workload",
            m.frag_needed.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text of every metric, ending with `# EOF`.
    pub fn encode(&self) -> Result<String, ExportError> {
        let mut out = String::with_capacity(64 * 1024);
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What the exporter remembers of one flow: its last cumulative values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    packets: [u64; 2],
    bytes: [u64; 2],
    requests: u64,
    /// The most unanswered requests seen: `requests_unanswered` goes down when a reply arrives
    /// (UDP counts every request before the first reply), and a counter cannot, so only rises
    /// above this high-water mark are added.
    unanswered_max: u64,
    rtt_us: Option<u64>,
    oversized: u64,
    too_big: u64,
    /// The kernel's first-seen time of this incarnation.
    first_seen_mono_ns: u64,
}

impl Seen {
    fn of(f: &Flow) -> Self {
        Self {
            first_seen_mono_ns: f.first_seen_mono_ns,
            packets: [f.packets_fwd, f.packets_rev],
            bytes: [f.bytes_fwd, f.bytes_rev],
            requests: u64::from(f.requests),
            unanswered_max: u64::from(f.requests_unanswered),
            rtt_us: f.rtt_us,
            oversized: f.mtu.as_ref().map_or(0, |m| u64::from(m.oversized_packets)),
            too_big: f.mtu.as_ref().map_or(0, |m| u64::from(m.too_big_messages)),
        }
    }
}

/// What one poll adds for one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Delta {
    packets: [u64; 2],
    bytes: [u64; 2],
    requests: u64,
    unanswered: u64,
    /// A new RTT measurement to observe (first seen, changed, or a new incarnation).
    rtt_us: Option<u64>,
    oversized: u64,
    too_big: u64,
}

impl Delta {
    fn add(&mut self, o: &Delta) {
        for i in 0..2 {
            self.packets[i] += o.packets[i];
            self.bytes[i] += o.bytes[i];
        }
        self.requests += o.requests;
        self.unanswered += o.unanswered;
        self.oversized += o.oversized;
        self.too_big += o.too_big;
    }
}

/// The delta of a flow against what was last seen of it, and what to remember now.
fn delta(prev: Option<&Seen>, cur: &Seen) -> (Delta, Seen) {
    // A new incarnation (the kernel entry was removed and the 5-tuple came back: same id, new
    // flow) has a new first-seen time; packets, bytes and requests only grow within one, so
    // any of them going down says so too. Counting by the counts alone missed a flow that came
    // back with the same counts (short flows under slot reuse: found by the scrape test).
    let new_incarnation = prev.is_none_or(|p| {
        cur.first_seen_mono_ns != p.first_seen_mono_ns
            || cur.packets[0] < p.packets[0]
            || cur.packets[1] < p.packets[1]
            || cur.bytes[0] < p.bytes[0]
            || cur.bytes[1] < p.bytes[1]
            || cur.requests < p.requests
    });
    match prev {
        Some(p) if !new_incarnation => {
            let d = Delta {
                packets: [cur.packets[0] - p.packets[0], cur.packets[1] - p.packets[1]],
                bytes: [cur.bytes[0] - p.bytes[0], cur.bytes[1] - p.bytes[1]],
                requests: cur.requests - p.requests,
                unanswered: cur.unanswered_max.saturating_sub(p.unanswered_max),
                rtt_us: cur.rtt_us.filter(|_| cur.rtt_us != p.rtt_us),
                oversized: cur.oversized.saturating_sub(p.oversized),
                too_big: cur.too_big.saturating_sub(p.too_big),
            };
            (d, Seen { unanswered_max: p.unanswered_max.max(cur.unanswered_max), ..*cur })
        }
        _ => {
            let d = Delta {
                packets: cur.packets,
                bytes: cur.bytes,
                requests: cur.requests,
                unanswered: cur.unanswered_max,
                rtt_us: cur.rtt_us,
                oversized: cur.oversized,
                too_big: cur.too_big,
            };
            (d, *cur)
        }
    }
}

/// The bounded identity of one end: `(namespace, workload, pod)`.
fn endpoint_labels(e: Option<&Endpoint>, pod_labels: bool) -> (&str, &str, &str) {
    let Some(e) = e else { return ("", "unknown", "") };
    match e.kind {
        EndpointKind::Pod => {
            let pod = e.pod.as_deref().unwrap_or("");
            // No guessing a workload from a pod name (`-<hash>` suffixes are not reliable):
            // the pod name stands in only when pod-level series were asked for.
            let workload = match (&e.workload, pod_labels) {
                (Some(w), _) => w.as_str(),
                (None, true) if !pod.is_empty() => pod,
                _ => "unknown",
            };
            (e.namespace.as_deref().unwrap_or(""), workload, if pod_labels { pod } else { "" })
        }
        EndpointKind::Service => ("", "service", ""),
        EndpointKind::Node => ("", "node", ""),
        EndpointKind::External => ("", "external", ""),
        EndpointKind::Unknown => ("", "unknown", ""),
    }
}

/// The label set shared by the flow and request families (without `direction`). Borrowed
/// from the snapshot while aggregating; owned only once per distinct pair.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct Pair<S> {
    scenario: S,
    protocol: S,
    src_namespace: S,
    src_workload: S,
    dst_namespace: S,
    dst_workload: S,
    src_pod: S,
    dst_pod: S,
}

type PairKey = Pair<String>;

impl<'a> Pair<&'a str> {
    fn of(f: &'a Flow, pod_labels: bool) -> Self {
        let (src_namespace, src_workload, src_pod) = endpoint_labels(f.src.as_ref(), pod_labels);
        let (dst_namespace, dst_workload, dst_pod) = endpoint_labels(f.dst.as_ref(), pod_labels);
        Pair {
            scenario: f.scenario.as_str(),
            protocol: f.protocol.as_str(),
            src_namespace,
            src_workload,
            dst_namespace,
            dst_workload,
            src_pod,
            dst_pod,
        }
    }

    fn owned(&self) -> PairKey {
        Pair {
            scenario: self.scenario.to_string(),
            protocol: self.protocol.to_string(),
            src_namespace: self.src_namespace.to_string(),
            src_workload: self.src_workload.to_string(),
            dst_namespace: self.dst_namespace.to_string(),
            dst_workload: self.dst_workload.to_string(),
            src_pod: self.src_pod.to_string(),
            dst_pod: self.dst_pod.to_string(),
        }
    }
}

impl PairKey {
    fn labels(&self, direction: Option<&'static str>, pod_labels: bool) -> Labels {
        let mut l = Vec::with_capacity(9);
        if let Some(d) = direction {
            l.push(("direction", d.to_string()));
        }
        l.extend([
            ("scenario", self.scenario.clone()),
            ("protocol", self.protocol.clone()),
            ("src_namespace", self.src_namespace.clone()),
            ("src_workload", self.src_workload.clone()),
            ("dst_namespace", self.dst_namespace.clone()),
            ("dst_workload", self.dst_workload.clone()),
        ]);
        if pod_labels {
            l.push(("src_pod", self.src_pod.clone()));
            l.push(("dst_pod", self.dst_pod.clone()));
        }
        l
    }
}

const DIRECTIONS: [&str; 2] = ["request", "reply"];

fn rtt_labels(scenario: &str, protocol: &str) -> Labels {
    vec![("scenario", scenario.to_string()), ("protocol", protocol.to_string())]
}

fn tunnel_labels(remote: &str, direction: Option<&'static str>) -> Labels {
    let mut l = vec![("remote_node", remote.to_string())];
    if let Some(d) = direction {
        l.push(("direction", d.to_string()));
    }
    l
}

/// `(location, namespace, workload)` of the drop, oversize and frag-needed families (+ `reason`
/// for drops, in front).
type SiteKey = Vec<String>;

fn site_labels(k: &SiteKey) -> Labels {
    let names: &[&'static str] = if k.len() == 5 {
        &["reason", "location", "protocol", "namespace", "workload"]
    } else {
        &["location", "namespace", "workload"]
    };
    names.iter().copied().zip(k.iter().cloned()).collect()
}

/// Where a flow enters this node's view: `pod` when a pod veth saw it, else the kind of the
/// first interface that did (`tunnel`, `underlay`, `host`).
fn flow_location(f: &Flow) -> &'static str {
    let kinds = || f.interfaces.iter().map(|i| i.kind);
    if kinds().any(|k| k == IfaceKind::Pod) {
        return IfaceKind::Pod.as_str();
    }
    match kinds().next() {
        Some(k @ (IfaceKind::Tunnel | IfaceKind::Underlay)) => k.as_str(),
        _ => IfaceKind::Host.as_str(),
    }
}

/// `(namespace, workload)` of the end an MTU or drop signal is about: the sender of the flow
/// when it is a pod, else the other end.
fn pod_end(f: &Flow, pod_labels: bool) -> (&str, &str) {
    let (sn, sw, _) = endpoint_labels(f.src.as_ref(), pod_labels);
    if f.src.as_ref().is_some_and(|e| e.kind == EndpointKind::Pod) {
        return (sn, sw);
    }
    let (dn, dw, _) = endpoint_labels(f.dst.as_ref(), pod_labels);
    if f.dst.as_ref().is_some_and(|e| e.kind == EndpointKind::Pod) { (dn, dw) } else { (sn, sw) }
}

/// `(kind, scenario, src_namespace, src_workload, dst_namespace, dst_workload)` of an alert.
type PathKey = [String; 6];

fn path_labels(k: &PathKey) -> Labels {
    ["kind", "scenario", "src_namespace", "src_workload", "dst_namespace", "dst_workload"]
        .into_iter()
        .zip(k.iter().cloned())
        .collect()
}

/// The tc hook a program implements: `kovn_pod_ingress` → `tc_pod`. Other programs (the
/// `skb:kfree_skb` tracepoint) report through `Health::hooks` instead.
pub fn hook_of_program(name: &str) -> Option<String> {
    let (kind, dir) = name.strip_prefix("kovn_")?.rsplit_once('_')?;
    matches!(dir, "ingress" | "egress").then(|| format!("tc_{kind}"))
}

/// Keeps the metrics in step with the daemon's snapshots. Owned by the poller (`&mut`); the
/// HTTP side holds [`Exporter::metrics`].
#[derive(Debug)]
pub struct Exporter {
    cfg: MetricsConfig,
    metrics: Arc<Metrics>,
    /// Last values of each flow of the previous snapshot, by flow id.
    flows: HashMap<String, Seen>,
    /// When each label set last had a flow (or a firing alert), for the series TTL.
    pairs: HashMap<PairKey, Instant>,
    rtts: HashMap<(String, String), Instant>,
    tunnels: HashMap<String, Instant>,
    paths: HashMap<PathKey, Instant>,
    /// Label sets of the drop / oversize / frag-needed families, for the series TTL.
    sites: HashMap<(&'static str, SiteKey), Instant>,
    /// Last cumulative count of each kernel drop record: (flow id, reason, ifindex).
    drops: HashMap<(String, String, u32), u64>,
    /// Last cumulative kernel counters, by reason.
    kernel: BTreeMap<String, u64>,
    /// Last (refused, spoofed) of each guarded pod, by host veth ifindex (bounded by
    /// `POD_GUARD_MAX`), and when each (namespace, workload) last had a guarded pod.
    guards: HashMap<u32, (u64, u64)>,
    guard_series: HashMap<(String, String), Instant>,
}

impl Exporter {
    pub fn new(cfg: MetricsConfig) -> Self {
        let metrics = Arc::new(Metrics::new());
        // Series that exist from the start: build and hook state before the first poll.
        for k in IFACE_KINDS {
            metrics.attached.get_or_create(&vec![("kind", k.to_string())]).set(0);
        }
        for h in HOOKS {
            metrics.hook_available.get_or_create(&vec![("hook", h.to_string())]).set(0);
        }
        Self {
            cfg,
            metrics,
            flows: HashMap::new(),
            pairs: HashMap::new(),
            rtts: HashMap::new(),
            tunnels: HashMap::new(),
            paths: HashMap::new(),
            sites: HashMap::new(),
            drops: HashMap::new(),
            kernel: BTreeMap::new(),
            guards: HashMap::new(),
            guard_series: HashMap::new(),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Flows the exporter is tracking (those of the last snapshot).
    pub fn tracked_flows(&self) -> usize {
        self.flows.len()
    }

    /// Applies one snapshot: called once after every poll, with the poll's monotonic time.
    pub fn update(&mut self, snap: &Snapshot, now: Instant) {
        self.update_flows(&snap.flows, now);
        self.update_drops(snap, now);
        self.update_paths(snap, now);
        self.update_health(snap);
        self.expire(now);
    }

    /// Applies one poll's per-pod guard counts (`kovn_flows_refused_total`,
    /// `kovn_spoofed_packets_total`): the deltas since the last poll, per pod workload.
    pub fn update_guards(&mut self, pods: &[crate::guard::PodGuardReport], now: Instant) {
        let m = &self.metrics;
        let mut next = HashMap::with_capacity(pods.len());
        for p in pods {
            let workload = match (&p.workload, self.cfg.pod_labels) {
                (Some(w), _) => w.clone(),
                (None, true) if p.pod.is_some() => p.pod.clone().unwrap_or_default(),
                _ => "unknown".to_string(),
            };
            let key = (p.namespace.clone().unwrap_or_default(), workload);
            let (lr, ls) = self.guards.get(&p.ifindex).copied().unwrap_or((0, 0));
            // A smaller value: the guard was rewritten (veth re-created); all of it is new.
            let d = |cur: u64, last: u64| if cur >= last { cur - last } else { cur };
            let (dr, ds) = (d(p.refused, lr), d(p.spoofed, ls));
            next.insert(p.ifindex, (p.refused, p.spoofed));
            let labels = |extra: Option<(&'static str, &str)>| {
                let mut l: Labels = extra.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                l.push(("namespace", key.0.clone()));
                l.push(("workload", key.1.clone()));
                l
            };
            m.flows_refused.get_or_create(&labels(Some(("reason", "source_budget")))).inc_by(dr);
            m.spoofed.get_or_create(&labels(None)).inc_by(ds);
            self.guard_series.insert(key, now);
        }
        self.guards = next;
    }

    fn update_flows(&mut self, flows: &[Flow], now: Instant) {
        let pod_labels = self.cfg.pod_labels;
        let mut pairs: HashMap<Pair<&str>, Delta> = HashMap::new();
        let mut rtts: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        let mut tunnels: HashMap<Cow<'_, str>, Delta> = HashMap::new();
        let mut mtu: HashMap<[&str; 3], (u64, u64)> = HashMap::new();
        let mut next = HashMap::with_capacity(flows.len());
        for f in flows {
            let cur = Seen::of(f);
            let (d, seen) = delta(self.flows.get(&f.id), &cur);
            next.insert(f.id.clone(), seen);
            if f.mtu.is_some() {
                let (ns, wl) = pod_end(f, pod_labels);
                let e = mtu.entry([flow_location(f), ns, wl]).or_default();
                e.0 += d.oversized;
                e.1 += d.too_big;
            }
            let pair = Pair::of(f, pod_labels);
            // Every flow's pair is entered, with a zero delta too: it keeps the series alive.
            pairs.entry(pair.clone()).or_default().add(&d);
            if let Some(us) = d.rtt_us {
                rtts.entry((pair.scenario, pair.protocol)).or_default().push(us as f64 * 1e-6);
            }
            if let Some(t) = &f.tunnel {
                // The node name when the inventory knows it, else the tunnel endpoint IP:
                // both are one per node.
                let remote = match (&t.remote_node, &t.remote_ip) {
                    (Some(n), _) => Cow::Borrowed(n.as_str()),
                    (None, Some(ip)) => Cow::Owned(ip.to_string()),
                    (None, None) => Cow::Borrowed("unknown"),
                };
                tunnels.entry(remote).or_default().add(&d);
            }
        }
        // Flows absent from this snapshot are dropped from `self.flows` here: their last
        // values are already counted, and a later flow with the same id starts from zero.
        self.flows = next;

        let m = &self.metrics;
        for (pair, d) in pairs {
            let key = pair.owned();
            for (i, dir) in DIRECTIONS.into_iter().enumerate() {
                let l = key.labels(Some(dir), pod_labels);
                m.flow_packets.get_or_create(&l).inc_by(d.packets[i]);
                m.flow_bytes.get_or_create(&l).inc_by(d.bytes[i]);
            }
            let l = key.labels(None, pod_labels);
            m.requests.get_or_create(&l).inc_by(d.requests);
            m.requests_unanswered.get_or_create(&l).inc_by(d.unanswered);
            self.pairs.insert(key, now);
        }
        for ((scenario, protocol), values) in rtts {
            let h = m.rtt.get_or_create(&rtt_labels(scenario, protocol));
            for v in values {
                h.observe(v);
            }
            self.rtts.insert((scenario.to_string(), protocol.to_string()), now);
        }
        for (remote, d) in tunnels {
            for (i, dir) in DIRECTIONS.into_iter().enumerate() {
                m.tunnel_packets.get_or_create(&tunnel_labels(&remote, Some(dir))).inc_by(d.packets[i]);
            }
            m.tunnel_unanswered.get_or_create(&tunnel_labels(&remote, None)).inc_by(d.unanswered);
            self.tunnels.insert(remote.into_owned(), now);
        }
        for (site, (oversized, too_big)) in mtu {
            let key: SiteKey = site.iter().map(|s| s.to_string()).collect();
            let l = site_labels(&key);
            m.oversized.get_or_create(&l).inc_by(oversized);
            m.frag_needed.get_or_create(&l).inc_by(too_big);
            self.sites.insert(("mtu", key), now);
        }
    }

    /// `kovn_drops_total` from the kernel's drop records: per record the rise of its count
    /// (a record that went down or is new was recreated: all of it is new).
    fn update_drops(&mut self, snap: &Snapshot, now: Instant) {
        let pod_labels = self.cfg.pod_labels;
        let kinds: HashMap<&str, &str> =
            snap.health.attached_interfaces.iter().map(|a| (a.name.as_str(), a.kind.as_str())).collect();
        let flows: HashMap<&str, &Flow> = snap.flows.iter().map(|f| (f.id.as_str(), f)).collect();
        let mut next = HashMap::with_capacity(snap.drops.len());
        let mut sums: HashMap<[&str; 5], u64> = HashMap::new();
        for d in &snap.drops {
            let key = (d.flow_id.clone(), d.reason.clone(), d.ifindex);
            let added = match self.drops.get(&key) {
                Some(&last) if d.count >= last => d.count - last,
                _ => d.count,
            };
            next.insert(key, d.count);
            // The interface the skb was on when it died, as kovn knows it; anything else
            // (a bridge port, loopback, no device) is the host.
            let location = match kinds.get(d.interface.as_str()) {
                Some(&"pod") => "pod",
                Some(&"tunnel") => "tunnel",
                Some(&"underlay") => "underlay",
                _ => "host",
            };
            let (ns, wl) = flows.get(d.flow_id.as_str()).map_or(("", "unknown"), |f| pod_end(f, pod_labels));
            // The protocol (a known set) tells a reason's ordinary cases from its faults, e.g.
            // `NO_SOCKET` on ICMP is every raw-socket ping's reply (`DropRecord::is_routine`).
            let protocol = d.protocol.unwrap_or(crate::model::Protocol::Other).as_str();
            *sums.entry([d.reason.as_str(), location, protocol, ns, wl]).or_default() += added;
        }
        self.drops = next;
        for (site, n) in sums {
            let key: SiteKey = site.iter().map(|s| s.to_string()).collect();
            self.metrics.drops.get_or_create(&site_labels(&key)).inc_by(n);
            self.sites.insert(("drops", key), now);
        }
    }

    fn update_paths(&mut self, snap: &Snapshot, now: Instant) {
        let mut firing: HashSet<PathKey> = HashSet::new();
        for a in snap.alerts.iter().filter(|a| a.state == AlertState::Firing) {
            // Pod names never label this gauge: alerts are per workload pair.
            let (sn, sw, _) = endpoint_labels(a.src.as_ref(), false);
            let (dn, dw, _) = endpoint_labels(a.dst.as_ref(), false);
            firing.insert([a.kind.as_str(), a.scenario.as_str(), sn, sw, dn, dw].map(str::to_string));
        }
        // A pair that stopped firing reads 0 (not absent) until its TTL runs out, so a
        // dashboard shows the recovery. Firing pairs are never set to 0 in between: a scrape
        // may run while this poll updates.
        for k in self.paths.keys().filter(|k| !firing.contains(*k)) {
            self.metrics.path_broken.get_or_create(&path_labels(k)).set(0);
        }
        for k in firing {
            self.metrics.path_broken.get_or_create(&path_labels(&k)).set(1);
            self.paths.insert(k, now);
        }
    }

    fn update_health(&mut self, snap: &Snapshot) {
        let m = &self.metrics;
        let h = &snap.health;
        let mut by_kind: BTreeMap<&str, i64> = IFACE_KINDS.iter().map(|k| (*k, 0)).collect();
        for a in &h.attached_interfaces {
            *by_kind.entry(a.kind.as_str()).or_default() += 1;
        }
        for (kind, n) in by_kind {
            m.attached.get_or_create(&vec![("kind", kind.to_string())]).set(n);
        }
        m.table_entries.set(i64::try_from(h.flow_table_entries).unwrap_or(i64::MAX));
        m.table_capacity.set(i64::from(h.flow_table_capacity));
        for (reason, &v) in h.kernel_counters.iter().filter(|(r, _)| !NOT_LOSSES.contains(&r.as_str())) {
            let last = self.kernel.insert(reason.clone(), v);
            // Cumulative since the programs were loaded; a smaller value can only mean the map
            // was recreated, and then everything in it is new.
            let d = match last {
                Some(l) if v >= l => v - l,
                _ => v,
            };
            m.kernel_lost.get_or_create(&vec![("reason", reason.clone())]).inc_by(d);
        }
        m.poll_duration.observe(h.poll_duration_ms / 1e3);
        let mut hooks: BTreeMap<String, i64> = HOOKS.iter().map(|h| (h.to_string(), 0)).collect();
        for p in &h.programs {
            if let Some(hook) = hook_of_program(&p.name) {
                hooks.insert(hook, 1);
            }
        }
        // Hooks that are not tc programs report themselves in /healthz.
        for (hook, &up) in &h.hooks {
            hooks.insert(hook.clone(), i64::from(up));
        }
        for (hook, v) in hooks {
            m.hook_available.get_or_create(&vec![("hook", hook)]).set(v);
        }
    }

    /// Removes the series of label sets nothing has mapped to for `series_ttl`.
    fn expire(&mut self, now: Instant) {
        let ttl = self.cfg.series_ttl;
        let stale = |t: &Instant| now.saturating_duration_since(*t) > ttl;
        let (m, pod_labels) = (&self.metrics, self.cfg.pod_labels);
        self.pairs.retain(|k, t| {
            if !stale(t) {
                return true;
            }
            for dir in DIRECTIONS {
                let l = k.labels(Some(dir), pod_labels);
                m.flow_packets.remove(&l);
                m.flow_bytes.remove(&l);
            }
            let l = k.labels(None, pod_labels);
            m.requests.remove(&l);
            m.requests_unanswered.remove(&l);
            false
        });
        self.rtts.retain(|(s, p), t| {
            if !stale(t) {
                return true;
            }
            m.rtt.remove(&rtt_labels(s, p));
            false
        });
        self.tunnels.retain(|r, t| {
            if !stale(t) {
                return true;
            }
            for dir in DIRECTIONS {
                m.tunnel_packets.remove(&tunnel_labels(r, Some(dir)));
            }
            m.tunnel_unanswered.remove(&tunnel_labels(r, None));
            false
        });
        self.paths.retain(|k, t| {
            if !stale(t) {
                return true;
            }
            m.path_broken.remove(&path_labels(k));
            false
        });
        self.guard_series.retain(|(ns, wl), t| {
            if !stale(t) {
                return true;
            }
            m.flows_refused.remove(&vec![
                ("reason", "source_budget".to_string()),
                ("namespace", ns.clone()),
                ("workload", wl.clone()),
            ]);
            m.spoofed.remove(&vec![("namespace", ns.clone()), ("workload", wl.clone())]);
            false
        });
        self.sites.retain(|(family, k), t| {
            if !stale(t) {
                return true;
            }
            let l = site_labels(k);
            if *family == "drops" {
                m.drops.remove(&l);
            } else {
                m.oversized.remove(&l);
                m.frag_needed.remove(&l);
            }
            false
        });
    }
}

/// The Prometheus text format (0.0.4), for scrapers that do not ask for OpenMetrics (curl,
/// `promtool check metrics`, older Prometheus). It differs only in naming counter and info
/// families with their sample suffix and in having no `# UNIT` and `# EOF` lines: only those are
/// translated; names, labels, escaping, buckets and values go as they are.
pub fn to_prometheus_text(om: &str) -> String {
    let lines: Vec<&str> = om.lines().collect();
    let mut renames: HashMap<&str, (String, &str)> = HashMap::new();
    for l in &lines {
        if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            match kind {
                "counter" => renames.insert(name, (format!("{name}_total"), "counter")),
                "info" => renames.insert(name, (format!("{name}_info"), "gauge")),
                _ => None,
            };
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in lines {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            let (new, kind) = renames.get(name)?;
            let tail = if *p == "# TYPE " { *kind } else { tail };
            Some(format!("{p}{new} {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// The content type of [`to_prometheus_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
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
        Snapshot { node: "node1".into(), flows, ..Default::default() }
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
                attached_interfaces: vec![
                    iface("a_h", "pod"),
                    iface("b_h", "pod"),
                    iface("eth0", "underlay"),
                ],
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
        s.flows = vec![web_db("a", [1, 0], [60, 0])];
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
        s.health.hooks =
            [("kfree_skb".to_string(), true), ("ovs_vport_mtu_kprobe".to_string(), false)].into();
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
        s.flows = vec![f, odd, big];
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
            serde_json::from_str(include_str!("../../deploy/grafana/kovn-dashboard.json"))
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
        let rules = include_str!("../../deploy/prometheus/kovn-rules.yml");
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
                panic!(
                    "cannot run {promtool:?} ({e}): install it (apt-get install prometheus) or set PROMTOOL"
                )
            });
        let input = to_prometheus_text(&text(&everything()));
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let report =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}\n{input}");
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_openmetrics() {
        let e = everything();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(axum::serve(listener, crate::api::metrics_router(e.metrics())).into_future());
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
}
