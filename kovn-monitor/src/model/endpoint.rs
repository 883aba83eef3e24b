//! The ends of a flow and the tunnel it crosses, as the API shows them (from the inventory).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{EndpointKind, UnknownName};

/// One end of a flow, as the API shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// `pod|service|node|external|unknown`
    pub kind: EndpointKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For a service VIP: the load balancer's `ip:port` and backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// For a service VIP: its backend pods (`namespace/pod`, or the address when no pod is
    /// known), from the EndpointSlices or OVN's load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
}

/// The tunnel a cross-node flow crosses on this node: from the kernel when the underlay NIC
/// (or tunnel device) is watched, else from the inventory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelPeer {
    /// The other node (by its tunnel endpoint IP, or the remote pod's node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<IpAddr>,
    /// `geneve|vxlan`, the VNI, the largest outer packet (L3 bytes) and how many outer packets
    /// this node saw: only when observed on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_max_bytes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_packets: Option<u32>,
}

/// A pod the inventory knows (`GET /api/v1/pods`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    /// The pod's host-side veth, for pods of this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_iface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `Kind/name` of the owning workload, from the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `ovsdb` (this node), `ovn-sb` or `kubernetes` (known from the API only).
    pub source: PodSource,
}

names! {
    /// Where the inventory learnt of a pod.
    pub enum PodSource {
        /// This node's Open_vSwitch database (Kube-OVN's `iface-id` on the pod's port).
        Ovsdb => "ovsdb",
        /// The OVN southbound database (a pod of another node).
        OvnSb => "ovn-sb",
        /// The Kubernetes API only.
        Kubernetes => "kubernetes",
    }
}
