//! The metric families (names, help, units, buckets) in one registry, encoded per scrape.

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::{ExportError, POLL_BUCKETS, RTT_BUCKETS};

pub(super) type Labels = Vec<(&'static str, String)>;
pub(super) type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub(super) fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

/// The constructor as the family's type names it (a fn pointer, not the fn item).
pub(super) const RTT_HISTOGRAM: fn() -> Histogram = rtt_histogram;

/// The registry and its metric families. Shared with the HTTP handler: encoding needs only
/// `&self` (families lock internally), so a scrape never waits for the poller's bookkeeping.
#[derive(Debug)]
pub struct Metrics {
    pub(super) registry: Registry,
    pub(super) flow_packets: Family<Labels, Counter>,
    pub(super) flow_bytes: Family<Labels, Counter>,
    pub(super) requests: Family<Labels, Counter>,
    pub(super) requests_unanswered: Family<Labels, Counter>,
    pub(super) rtt: HistogramFamily,
    pub(super) tunnel_packets: Family<Labels, Counter>,
    pub(super) tunnel_unanswered: Family<Labels, Counter>,
    pub(super) path_broken: Family<Labels, Gauge>,
    pub(super) attached: Family<Labels, Gauge>,
    pub(super) table_entries: Gauge,
    pub(super) table_capacity: Gauge,
    pub(super) kernel_lost: Family<Labels, Counter>,
    pub(super) poll_duration: Histogram,
    pub(super) hook_available: Family<Labels, Gauge>,
    pub(super) heap: Family<Labels, Gauge>,
    pub(super) underlay_up: Family<Labels, Gauge>,
    pub(super) drops: Family<Labels, Counter>,
    pub(super) oversized: Family<Labels, Counter>,
    pub(super) frag_needed: Family<Labels, Counter>,
    pub(super) flows_refused: Family<Labels, Counter>,
    pub(super) spoofed: Family<Labels, Counter>,
}

impl Metrics {
    pub(super) fn new() -> Self {
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
            heap: Family::default(),
            underlay_up: Family::default(),
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
        registry.register_with_unit(
            "kovn_heap",
            "Memory the daemon's allocator holds, by kind: allocated (its live objects; grows with a leak) and resident (the pages kept for them; grows with fragmentation)",
            Unit::Bytes,
            m.heap.clone(),
        );
        registry.register(
            "kovn_underlay_up",
            "1 while the underlay NIC (--underlay-iface) is up with carrier and its address, else 0 (down, no_carrier, no_address, missing: the node reaches no other node through the tunnel)",
            m.underlay_up.clone(),
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
