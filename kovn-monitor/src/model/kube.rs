//! The plain records the Kubernetes watchers (`crate::kube`) produce and the inventory keeps:
//! shared by both so that neither depends on the other's internals.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A pod as the inventory needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubePod {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// Empty for host-network pods (their IP is the node's) and finished pods (their IP is
    /// free for reuse): neither may claim an address.
    pub ips: Vec<IpAddr>,
    /// `Kind/name` of the owning workload (`Deployment/web`, `StatefulSet/db`, `Pod/x`).
    pub workload: String,
    /// The pod's host-side veth on its node, when the source knows it (the inventory file;
    /// the API does not: OVSDB names it for this node's pods).
    pub host_iface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub internal_ips: Vec<IpAddr>,
}

/// A port of a service or an EndpointSlice: number and IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    pub port: u16,
    pub proto: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeService {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (dual-stack), without `None` (headless).
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortProto>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeEndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// Addresses of the endpoints that are ready (or not known not to be).
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortProto>,
}

/// A Kube-OVN subnet (`subnets.kubeovn.io`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubnetInfo {
    pub name: String,
    /// `spec.cidrBlock`, split: dual-stack subnets list one CIDR per family.
    pub cidr_blocks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// `overlay` (Geneve/VXLAN between nodes) or `underlay` (a VLAN on the physical network).
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Underlay subnet whose gateway is an OVN logical router, not the physical one.
    pub logical_gateway: bool,
}

/// One change to one kind of object. `Reset` replaces the whole set: it follows each (re-)list,
/// so objects deleted while the watch was down (e.g. after 410 Gone) disappear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T> {
    Reset(Vec<T>),
    Apply(T),
    Delete(T),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeUpdate {
    Pod(Change<KubePod>),
    Node(Change<KubeNode>),
    Service(Change<KubeService>),
    EndpointSlice(Change<KubeEndpointSlice>),
    Subnet(Change<SubnetInfo>),
}

/// What the API said so far, keyed by `namespace/name` (or `name` for cluster-scoped objects).
#[derive(Clone, Debug, Default)]
pub struct KubeSnapshot {
    pub pods: BTreeMap<String, KubePod>,
    pub nodes: BTreeMap<String, KubeNode>,
    pub services: BTreeMap<String, KubeService>,
    pub endpoint_slices: BTreeMap<String, KubeEndpointSlice>,
    pub subnets: BTreeMap<String, SubnetInfo>,
}
