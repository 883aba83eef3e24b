//! A flow's kernel drops as the flow JSON shows them (`drops: [...]`), where and which way.
//! Also `DropRecord`, one line of `GET /api/v1/drops` (`drops::records` makes them from the kernel map).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Protocol;

/// Where the kernel dropped a packet.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DropLocation {
    /// In the node's network namespace (the monitor's), on `interface`.
    #[default]
    Node,
    /// Inside the network namespace of one of this node's pods (its firewall, its sockets);
    /// `interface` is the pod's host-side veth.
    Pod,
}

impl DropLocation {
    pub fn is_node(&self) -> bool {
        *self == Self::Node
    }
}

/// Which way the dropped packets went, relative to their flow (its initiator is `src`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DropDirection {
    /// From the flow's source to its destination.
    Request,
    /// From the destination back to the source.
    Reply,
    /// Both ways.
    Both,
}

impl DropDirection {
    pub(crate) fn merge(self, other: Self) -> Self {
        if self == other { self } else { Self::Both }
    }
}

/// A flow's drops, in the flow JSON (`drops: [{reason, count, ...}]`): what a peer monitor
/// also returns for its view of a cross-node flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowDrop {
    pub reason: String,
    pub count: u64,
    /// `pod` when the drops happened inside a pod's own namespace (absent: the node's).
    #[serde(default, skip_serializing_if = "DropLocation::is_node")]
    pub location: DropLocation,
    /// The pod they happened in (`namespace/name`), for `location: pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's host veth, for `location: pod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The pod's namespace name under `/run/netns`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DropDirection>,
    /// The kernel function that freed the latest of them (see `DropRecord::kernel_function`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_function: Option<String>,
}

impl FlowDrop {
    /// Freed by a function of OVS's kernel datapath (the `openvswitch` module).
    pub fn in_ovs_datapath(&self) -> bool {
        self.kernel_function.as_deref().is_some_and(|f| f.ends_with(" [openvswitch]"))
    }

    /// One line for `top`'s detail pane: `NETFILTER_DROP 3` or, inside a pod,
    /// `NETFILTER_DROP 3 inside pod default/web (request)`.
    pub fn describe(&self) -> String {
        if self.location != DropLocation::Pod {
            return format!("{} {}", self.reason, self.count);
        }
        let pod = self.pod.as_deref().or(self.interface.as_deref()).unwrap_or("?");
        let dir = match self.direction {
            Some(DropDirection::Request) => " (request)",
            Some(DropDirection::Reply) => " (reply)",
            Some(DropDirection::Both) => " (both ways)",
            None => "",
        };
        format!("{} {} inside pod {pod}{dir}", self.reason, self.count)
    }
}

/// One line of `GET /api/v1/drops`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DropRecord {
    /// The flow's id (as in `/api/v1/flows`); empty for non-IP drops.
    pub flow_id: String,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: u16,
    pub dst_port: u16,
    /// `tcp|udp|sctp|icmp|icmpv6|other`, or `non_ip`.
    #[serde(with = "crate::model::protocol_or_non_ip")]
    pub protocol: Option<Protocol>,
    pub ip_proto: u8,
    /// The kernel's `enum skb_drop_reason` name without `SKB_DROP_REASON_`, e.g. `NETFILTER_DROP`.
    pub reason: String,
    pub reason_code: u32,
    /// `node`: in the node's namespace, on `interface`; `pod`: inside the pod's own namespace
    /// (`interface` is then the pod's host veth).
    #[serde(default)]
    pub location: DropLocation,
    pub interface: String,
    pub ifindex: u32,
    /// For `location: pod`: the pod (`namespace/name`) when the inventory knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// For `location: pod`: the inode of the pod's network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_inode: Option<u32>,
    /// For `location: pod`: the namespace's name under `/run/netns`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Which way the dropped packets went relative to `src`/`dst` (as the flow is oriented;
    /// without a flow, the lower port is taken for the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DropDirection>,
    pub count: u64,
    pub bytes: u64,
    /// RFC 3339 on the wire.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: time::OffsetDateTime,
    /// The kernel function that freed the latest of these packets, `name+0xoffset [module]`
    /// (the `kfree_skb` tracepoint's location named from `/proc/kallsyms`); absent when the
    /// monitor cannot read kernel addresses (no `CAP_SYSLOG`) or has not named it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_function: Option<String>,
}

impl DropRecord {
    /// Drops that are the kernel's normal way of finishing with a packet, whatever the node:
    /// never a finding (still in `/metrics` and `/api/v1/drops`).
    ///
    /// ICMP and ICMPv6 with `NO_SOCKET`: an echo reply goes to every raw socket first
    /// (`raw_local_deliver`, `ping` and most probes use one), then to `ping_rcv`, which looks
    /// for a datagram ICMP socket (`net.ipv4.ping_group_range`) and, finding none, frees the
    /// skb with `SKB_DROP_REASON_NO_SOCKET` (Linux 6.0+, net/ipv4/ping.c). Every answered
    /// raw-socket ping thus shows one such drop inside the pinging pod.
    pub fn is_routine(&self) -> bool {
        self.reason == "NO_SOCKET" && matches!(self.ip_proto, 1 | 58)
    }
}

/// The UDP destination ports of the overlay's encapsulated packets: Geneve (RFC 8926, 6081)
/// and VXLAN (RFC 7348, 4789).
pub fn is_tunnel_port(port: u16) -> bool {
    matches!(port, 6081 | 4789)
}
