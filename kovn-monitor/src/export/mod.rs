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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flows::Flow;
use crate::inventory::Endpoint;
use crate::model::Snapshot;
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

mod drops;
mod flows;
mod health;
mod http;
mod registry;
#[cfg(test)]
mod tests;

use drops::{SiteFamily, SiteKey, site_labels};
use flows::{DIRECTIONS, FlowMemo, PairKey, PathKey, path_labels, pod_end, rtt_labels, tunnel_labels};
pub use health::hook_of_program;
pub use http::{TEXT_CONTENT_TYPE, metrics_router, to_prometheus_text};
use registry::Labels;
pub use registry::Metrics;

/// Keeps the metrics in step with the daemon's snapshots. Owned by the poller (`&mut`); the
/// HTTP side holds [`Exporter::metrics`].
#[derive(Debug)]
pub struct Exporter {
    cfg: MetricsConfig,
    metrics: Arc<Metrics>,
    /// Last values of each flow of the previous snapshot, by flow id, with the flow they
    /// were taken from (a flow that is the same `Arc` again has not changed: nothing to add).
    flows: foldhash::HashMap<String, FlowMemo>,
    /// Polls seen (marks the flows of the current one in `flows`).
    polls: u64,
    /// When each label set last had a flow (or a firing alert), for the series TTL.
    pairs: HashMap<PairKey, Instant>,
    rtts: HashMap<(String, String), Instant>,
    tunnels: HashMap<String, Instant>,
    paths: HashMap<PathKey, Instant>,
    /// Label sets of the drop / oversize / frag-needed families, for the series TTL.
    sites: HashMap<(SiteFamily, SiteKey), Instant>,
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
            flows: foldhash::HashMap::default(),
            polls: 0,
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
            if *family == SiteFamily::Drops {
                m.drops.remove(&l);
            } else {
                m.oversized.remove(&l);
                m.frag_needed.remove(&l);
            }
            false
        });
    }
}
