//! Findings as published (`GET /api/v1/alerts`, Alertmanager, `kovn-monitor alerts`): the
//! alert, its evidence, its verdict (the hop where packets stop) and its drill-down.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Flow;
use super::{AlertKind, AlertState, Endpoint, IfaceKind, Scenario, UnknownName};

names! {
    /// How urgent a finding is (the Alertmanager `severity` label).
    #[derive(Default)]
    pub enum Severity {
        /// The path is broken.
        #[default]
        Critical => "critical",
        /// Packets are lost or refused, the path may still mostly work.
        Warning => "warning",
        Info => "info",
    }
}

names! {
    /// Where a finding's packets stop (a verdict's `hop`).
    #[derive(Default)]
    pub enum Hop {
        /// Never seen leaving the source's node (dropped in its br-int or by its firewall).
        NeverLeftSource => "never_left_source",
        /// Between the nodes: the tunnel or the underlay (also the MTU black hole).
        LostInTunnel => "lost_in_tunnel",
        /// This node's underlay NIC is down, has no carrier or lost its address: nothing
        /// crosses the tunnel to or from any other node.
        UnderlayDown => "underlay_down",
        /// A node's firewall (netfilter) drops the encapsulated tunnel packets (Geneve UDP 6081,
        /// VXLAN UDP 4789) between the two nodes.
        TunnelBlockedByFirewall => "tunnel_blocked_by_firewall",
        /// Arrived on the destination's node, not delivered to the pod's veth.
        LostBeforeDestinationPod => "lost_before_destination_pod",
        /// Delivered to the destination pod, which did not answer.
        NoReplyFromDestination => "no_reply_from_destination",
        /// The destination answered with a TCP reset.
        RefusedByDestination => "refused_by_destination",
        /// A service VIP without backends.
        NoBackends => "no_backends",
        /// The kernel dropped them inside the source pod's network namespace.
        DroppedInSourcePod => "dropped_in_source_pod",
        /// The kernel dropped them inside the destination pod's network namespace.
        DroppedInDestinationPod => "dropped_in_destination_pod",
        /// A drop burst on a pod veth (`dropped_at_<location>`, by [`IfaceKind`]).
        DroppedAtPod => "dropped_at_pod",
        DroppedAtTunnel => "dropped_at_tunnel",
        DroppedAtUnderlay => "dropped_at_underlay",
        DroppedAtHost => "dropped_at_host",
        DroppedAtUnknown => "dropped_at_unknown",
        #[default]
        Unknown => "unknown",
    }
}

impl Hop {
    /// A drop burst's hop: where the interface is.
    pub fn dropped_at(location: IfaceKind) -> Self {
        match location {
            IfaceKind::Pod => Self::DroppedAtPod,
            IfaceKind::Tunnel => Self::DroppedAtTunnel,
            IfaceKind::Underlay => Self::DroppedAtUnderlay,
            IfaceKind::Host => Self::DroppedAtHost,
            IfaceKind::Unknown => Self::DroppedAtUnknown,
        }
    }
}

/// One finding. Its `id` is stable for the same kind, pair, destination port and protocol,
/// so a problem that persists is one alert, not a flood.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    /// `request_without_reply|connection_refused|mtu|tunnel|drops|flow_flood`
    pub kind: AlertKind,
    /// `firing|resolved`
    pub state: AlertState,
    /// `critical|warning|info`
    pub severity: Severity,
    pub node: String,
    pub scenario: Scenario,
    /// The protocols of the finding's flows, e.g. `tcp` or `tcp,udp`.
    pub protocol: String,
    pub src_ip: std::net::IpAddr,
    pub dst_ip: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<Endpoint>,
    /// For tunnel findings: the remote node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
    /// For requests to a service VIP: the service and the backend its load balancer chose for
    /// them (when this node saw the post-DNAT packets), whose path the verdict follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ServiceBackend>,
    /// RFC 3339 on the wire ([`super::rfc3339_serde`]).
    #[serde(with = "super::rfc3339_serde")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "super::rfc3339_serde")]
    pub last_seen: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "super::rfc3339_serde::option")]
    pub resolved_at: Option<OffsetDateTime>,
    pub summary: String,
    pub evidence: Evidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Flow ids behind this finding (for `trace --flow`).
    pub flows: Vec<String>,
    /// The OVS/OVN drill-down run when it fired (`kovn-monitor trace --alert ID` for details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drilldown: Option<AlertDrillDown>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub requests: u64,
    pub requests_unanswered: u64,
    pub replies: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rst: Option<u64>,
    /// The largest request seen (L3 bytes) and the MTU it crossed, for MTU findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    /// Answered flows of the same pair (for the MTU black hole and tunnel findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_flows: Option<u64>,
    /// Where this node saw the requests: interface names and hooks.
    pub seen_at: Vec<String>,
    /// Kernel drops (skb:kfree_skb) of the finding's flows within the drop window: by reason
    /// and interface. For `drops` findings, the burst itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DropEvidence>,
}

/// The backend a service flow was load-balanced to: OVN's load balancer rewrites the VIP
/// inside OVS (conntrack DNAT), so the kernel shows the same source address and port towards
/// the backend's address and port (on the tunnel device or underlay NIC for a backend on
/// another node, on the backend's veth for one on this node).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceBackend {
    /// `namespace/name` of the service (or the load balancer's `vip -> backends`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// The backend pod (namespace, pod, node), when the inventory knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Endpoint>,
    /// The post-DNAT flow's id (the same on every node: ask the backend's node about it).
    pub flow: String,
}

/// Packets the kernel dropped, by reason and where.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropEvidence {
    /// The kernel's `skb_drop_reason` name, e.g. `NETFILTER_DROP`.
    pub reason: String,
    pub interface: String,
    /// `pod|tunnel|underlay|host`
    pub location: IfaceKind,
    /// Drops within the window.
    pub count: u64,
}

/// Where packets stop, and what to run next (the seeds' diagnosis commands).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub hop: Hop,
    pub summary: String,
    pub next_commands: Vec<String>,
}

/// What the destination's node saw of the same flow (from its monitor's API).
#[derive(Clone, Debug)]
pub enum PeerView {
    /// The peer answered: the flow as it saw it, if it saw it at all.
    Seen(Option<Box<Flow>>),
    /// The peer never saw the flow, and its firewall drops the tunnel packets from this node
    /// (netfilter drops of UDP to the tunnel port, from one of this node's addresses).
    Firewalled(DropEvidence),
    /// The peer's monitor could not be asked (with why).
    Unreachable(String),
}

/// The drill-down attached to a finding when it fired.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AlertDrillDown {
    /// The trace's verdict line (empty when it failed).
    pub verdict: String,
    /// RFC 3339.
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a service connection whose backend the kernel hooks did not see: the backend OVN's
    /// load balancer chose, from OVS's conntrack (`dpctl/dump-conntrack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ServiceBackend>,
}

/// What a service verdict says when the request died in the source node's br-int at or after
/// the load balancer and the kernel hooks cannot tell the backend: the drill-down replaces it
/// with the backend OVS's conntrack names, when it finds one.
pub const CONNTRACK_BACKEND_HINT: &str =
    "the chosen backend is in OVS's conntrack (ovs-appctl dpctl/dump-conntrack)";
