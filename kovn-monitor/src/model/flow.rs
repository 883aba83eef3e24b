//! A flow as the API, the metrics and `top` show it: the kernel's record of one 5-tuple
//! (`flows::Flow::from_kernel`), oriented from its initiator, with both ends named by the
//! inventory (`Flow::annotate`), its drops, and its link to a finding.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{AlertKind, Direction as HookDirection, FlowDirection, FlowState, IfaceKind, Protocol, Scenario};
use super::{Endpoint, TunnelPeer};

/// A flow as the API shows it. `fwd` is initiator → responder, `rev` the answer direction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    /// Stable identifier of the flow (hash of its 5-tuple), for `--flow ID` and the API.
    pub id: String,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// `tcp|udp|sctp|icmp|icmpv6|other`
    pub protocol: Protocol,
    /// IP protocol number (useful when `protocol` is `other`).
    pub ip_proto: u8,
    pub packets_fwd: u64,
    pub bytes_fwd: u64,
    pub packets_rev: u64,
    pub bytes_rev: u64,
    /// RFC 3339 on the wire.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// The kernel's monotonic first-seen time: it changes when the 5-tuple comes back after
    /// its entry was removed (a new incarnation, same id). Local only: not on the wire.
    #[serde(skip)]
    pub first_seen_mono_ns: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// `answered|unanswered|reset|closed|oneway`
    pub state: FlowState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Requests seen (TCP SYNs incl. retransmits, echo requests, UDP packets before the first
    /// reply) and answers (SYN-ACKs, echo replies, 1 once UDP was answered).
    pub requests: u32,
    pub replies: u32,
    pub requests_unanswered: u32,
    pub rst_fwd: u32,
    pub rst_rev: u32,
    /// TCP flags seen per direction, e.g. `SYN|ACK|FIN`.
    pub tcp_flags_fwd: String,
    pub tcp_flags_rev: String,
    /// True when the initiator was guessed (the opening packet was not seen).
    pub initiator_guessed: bool,
    /// True for a flow of non-first IP fragments (no ports).
    pub fragment: bool,
    pub interfaces: Vec<FlowInterface>,
    /// `pod_to_pod_same_node|pod_to_pod_cross_node|pod_to_service|pod_to_node|node_to_pod|
    /// pod_to_external|unknown`, from the inventory.
    #[serde(default)]
    pub scenario: Scenario,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Endpoint>,
    /// For cross-node flows: the other node and its tunnel endpoint IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelPeer>,
    /// MTU signals: packets too big for the path, ICMP "too big" messages about this flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<FlowMtu>,
    /// The firing finding this flow is evidence of, with its verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<FlowAlert>,
    /// Drops of this flow with the kernel's reason (kfree_skb), summed over interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<super::FlowDrop>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowMtu {
    /// Packets larger than the path MTU where they were seen, that may not be fragmented
    /// (IPv4 with DF, IPv6); a GSO packet counts by its segment size.
    pub oversized_packets: u32,
    /// The largest of them (L3 bytes).
    pub oversized_max_bytes: u32,
    /// ICMP fragmentation-needed / ICMPv6 packet-too-big messages quoting this flow.
    pub too_big_messages: u32,
    /// The MTU the last such message reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_mtu: Option<u32>,
}

/// A flow's link to a finding (`GET /api/v1/alerts` has the whole finding).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowAlert {
    pub id: String,
    pub kind: AlertKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop: Option<super::Hop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

/// Where a flow was seen: interface, tc hook direction, and which flow direction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowInterface {
    pub name: String,
    pub ifindex: u32,
    /// tc hook: `ingress|egress`
    pub direction: HookDirection,
    /// `pod|tunnel|underlay|host`
    pub kind: IfaceKind,
    /// Which direction of the flow this hook saw: `fwd|rev`
    pub flow_direction: FlowDirection,
    pub packets: u64,
}
