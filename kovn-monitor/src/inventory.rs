//! Who is behind an address: pods, nodes and service VIPs, merged from the node's own
//! Open_vSwitch database (Kube-OVN writes each pod's identity into its Interface row) and,
//! optionally, the OVN southbound database (pods of every node, chassis and their tunnel
//! IPs, load-balancer VIPs). Flows are annotated from it with endpoints and a scenario.
//!
//! Size: one index merged from four sources under one lock (OVSDB, OVN southbound, Kubernetes, a
//! file); a sixth of it is tests.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::model::EndpointKind;
use crate::model::Scenario;
use crate::model::kube::{KubeSnapshot, KubeUpdate, PortProto, SubnetInfo};
use crate::ovsdb::{RESET_PREFIX, Row, Updates, atom_string, map_column, set_column};

/// Tables and columns read from the node's Open_vSwitch database.
pub const OVS_TABLES: &[(&str, &[&str])] = &[
    ("Interface", &["name", "external_ids", "type", "options", "ofport"]),
    ("Open_vSwitch", &["external_ids"]),
];

/// Tables and columns read from the OVN southbound database.
pub const SB_TABLES: &[(&str, &[&str])] = &[
    ("Port_Binding", &["logical_port", "mac", "chassis", "type"]),
    ("Chassis", &["name", "hostname"]),
    ("Encap", &["chassis_name", "ip", "type"]),
    ("Load_Balancer", &["name", "vips", "protocol"]),
];

pub use crate::model::{PodInfo, PodSource};

/// A port of this node's OVS (see [`Inventory::ovs_ports`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OvsPort {
    pub name: String,
    pub ofport: u32,
    /// OVS interface type: `""` (a veth), `geneve`, `internal`, ...
    pub kind: String,
    /// `namespace/pod` for Kube-OVN pod ports.
    pub pod: Option<String>,
    /// For tunnel ports: the other end.
    pub remote_ip: Option<IpAddr>,
}

/// Whether `ip` is inside `net` (`10.16.0.1/16`; IPv4 and IPv6).
fn in_network(ip: IpAddr, net: &str) -> bool {
    let Some((addr, len)) = net.split_once('/') else { return false };
    let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u32>()) else { return false };
    match (ip, addr) {
        (IpAddr::V4(a), IpAddr::V4(b)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

pub use crate::model::{Endpoint, TunnelPeer};

#[derive(Debug, Default)]
pub struct Inventory {
    local_node: String,
    tables: BTreeMap<String, BTreeMap<String, Row>>,
    pods_by_ip: HashMap<IpAddr, PodInfo>,
    node_by_ip: HashMap<IpAddr, String>,
    encap_ip_of: HashMap<String, IpAddr>,
    /// Tunnel endpoint (OVN encap IP) -> node.
    node_of_encap: HashMap<IpAddr, String>,
    /// Service VIPs (ClusterIP or OVN load-balancer VIP, port, IP protocol), resolved once per
    /// inventory change rather than per flow and poll.
    services: HashMap<(IpAddr, u16, u8), ServiceEntry>,
    // --- Kubernetes API source (kube.rs): what the API said.
    kube: KubeSnapshot,
    /// Bumped whenever what the inventory answers may have changed (see `generation`).
    generation: u64,
}

/// A service as flows to its VIP see it.
#[derive(Debug, PartialEq)]
struct ServiceEntry {
    endpoint: Endpoint,
    /// The node every backend runs on, when they all run on one.
    backend_node: Option<String>,
}

fn split_mac_ips(entry: &str) -> (Option<String>, Vec<IpAddr>) {
    let mut parts = entry.split_whitespace();
    let mac = parts.next().map(str::to_string);
    let ips = parts.filter_map(|p| p.split('/').next()?.parse().ok()).collect();
    (mac, ips)
}

/// `pod.namespace` (Kube-OVN's logical switch port name; a provider suffix may follow for
/// attachment networks, which kovn does not watch). Namespaces are DNS labels (no dots), pod
/// names may contain dots: split at the last dot.
fn pod_of_port(port: &str) -> Option<(String, String)> {
    let (pod, ns) = port.rsplit_once('.')?;
    (!pod.is_empty() && !ns.is_empty()).then(|| (ns.to_string(), pod.to_string()))
}

fn parse_vip(vip: &str) -> Option<(IpAddr, u16)> {
    // "10.96.0.10:80" or "[fd00::10]:80"
    let sa: std::net::SocketAddr = vip.parse().ok()?;
    Some((sa.ip(), sa.port()))
}

impl Inventory {
    pub fn new(local_node: &str) -> Self {
        Self { local_node: local_node.to_string(), ..Default::default() }
    }

    /// Changes whenever an answer of the inventory (endpoint, scenario, tunnel peer) may have:
    /// flows annotated at an older generation are annotated again.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn local_node(&self) -> &str {
        &self.local_node
    }

    /// Applies a batch from a monitor and rebuilds the indexes (small tables: a node has
    /// hundreds of pods, a cluster thousands of port bindings).
    pub fn apply(&mut self, updates: Updates) {
        for (table, tu) in updates {
            if let Some(t) = table.strip_prefix(RESET_PREFIX) {
                self.tables.remove(t);
                continue;
            }
            let rows = self.tables.entry(table).or_default();
            for (uuid, row) in tu.rows {
                match row {
                    // Monitors send changed columns only; merge into what we have.
                    Some(new) => rows.entry(uuid).or_default().extend(new),
                    None => {
                        rows.remove(&uuid);
                    }
                }
            }
        }
        self.rebuild();
    }

    fn rows(&self, table: &str) -> impl Iterator<Item = &Row> {
        self.tables.get(table).into_iter().flat_map(|t| t.values())
    }

    fn rebuild(&mut self) {
        let mut pods = HashMap::new();
        let mut node_by_ip = HashMap::new();
        let mut encap_ip_of = HashMap::new();
        let chassis: HashMap<String, String> = self
            .tables
            .get("Chassis")
            .into_iter()
            .flat_map(|t| t.iter())
            .filter_map(|(uuid, r)| Some((uuid.clone(), r.get("name").map(atom_string)?)))
            .collect();
        for r in self.rows("Encap") {
            if let (Some(name), Some(ip)) = (
                r.get("chassis_name").map(atom_string),
                r.get("ip").and_then(|v| atom_string(v).parse().ok()),
            ) {
                node_by_ip.insert(ip, name.clone());
                encap_ip_of.insert(name, ip);
            }
        }
        // Remote (and local) pods from the southbound: VIF port bindings bound to a chassis.
        for r in self.rows("Port_Binding") {
            let ty = r.get("type").map(atom_string).unwrap_or_default();
            if !ty.is_empty() {
                continue;
            }
            let Some((namespace, name)) =
                r.get("logical_port").map(atom_string).as_deref().and_then(pod_of_port)
            else {
                continue;
            };
            let node = set_column(r.get("chassis")).first().and_then(|u| chassis.get(u).cloned());
            for entry in set_column(r.get("mac")) {
                let (mac, ips) = split_mac_ips(&entry);
                let info = PodInfo {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    node: node.clone(),
                    ips: ips.clone(),
                    host_iface: None,
                    mac,
                    workload: None,
                    source: PodSource::OvnSb,
                };
                for ip in ips {
                    pods.insert(ip, info.clone());
                }
            }
        }
        // This node's own database wins for its pods: it names the host veth.
        for r in self.rows("Interface") {
            let ids = map_column(r.get("external_ids"));
            let (Some(name), Some(namespace)) = (ids.get("pod_name"), ids.get("pod_namespace")) else {
                continue;
            };
            let ips: Vec<IpAddr> = ids
                .get("ip")
                .map(|s| s.split(',').filter_map(|p| p.trim().split('/').next()?.parse().ok()).collect())
                .unwrap_or_default();
            let info = PodInfo {
                namespace: namespace.clone(),
                name: name.clone(),
                node: Some(self.local_node.clone()),
                ips: ips.clone(),
                host_iface: r.get("name").map(atom_string),
                // Kube-OVN writes `attached-mac` only with some CNI versions; OVN's port
                // binding always has the MAC, so keep that one when OVSDB has none.
                mac: ids
                    .get("attached-mac")
                    .cloned()
                    .or_else(|| ips.iter().find_map(|ip| pods.get(ip).and_then(|p: &PodInfo| p.mac.clone()))),
                workload: None,
                source: PodSource::Ovsdb,
            };
            for ip in ips {
                pods.insert(ip, info.clone());
            }
        }
        // Tunnel ports OVN made towards other chassis: remote_ip -> chassis name.
        for r in self.rows("Interface") {
            let ty = r.get("type").map(atom_string).unwrap_or_default();
            if ty != "geneve" && ty != "vxlan" && ty != "stt" {
                continue;
            }
            let opts = map_column(r.get("options"));
            let ids = map_column(r.get("external_ids"));
            if let (Some(ip), Some(chassis)) =
                (opts.get("remote_ip").and_then(|s| s.parse().ok()), ids.get("ovn-chassis-id"))
            {
                // OVN writes "<chassis>@<encap ip>" on newer releases.
                let name = chassis.split('@').next().unwrap_or(chassis).to_string();
                node_by_ip.entry(ip).or_insert_with(|| name.clone());
                encap_ip_of.entry(name).or_insert(ip);
            }
        }
        for r in self.rows("Open_vSwitch") {
            let ids = map_column(r.get("external_ids"));
            if let Some(ip) = ids.get("ovn-encap-ip").and_then(|s| s.parse().ok()) {
                node_by_ip.insert(ip, self.local_node.clone());
                encap_ip_of.insert(self.local_node.clone(), ip);
            }
        }
        self.merge_kube(&mut pods, &mut node_by_ip, &mut encap_ip_of);
        let before = (
            std::mem::replace(&mut self.pods_by_ip, pods),
            std::mem::replace(&mut self.node_by_ip, node_by_ip),
            std::mem::take(&mut self.node_of_encap),
        );
        self.node_of_encap = encap_ip_of.iter().map(|(n, ip)| (*ip, n.clone())).collect();
        let encap_before = std::mem::replace(&mut self.encap_ip_of, encap_ip_of);
        let services = self.service_index();
        let services_before = std::mem::replace(&mut self.services, services);
        // OVSDB sends every change of the tables it monitors (e.g. a chassis' nb_cfg): only
        // one that changes an answer makes the flow table re-annotate its flows.
        if before.0 != self.pods_by_ip
            || before.1 != self.node_by_ip
            || before.2 != self.node_of_encap
            || encap_before != self.encap_ip_of
            || services_before != self.services
        {
            self.generation += 1;
        }
    }

    /// Every service VIP: OVN's load balancers (which name only the VIP), then the API's
    /// services over them (names and EndpointSlice backends).
    fn service_index(&self) -> HashMap<(IpAddr, u16, u8), ServiceEntry> {
        let mut out = HashMap::new();
        for r in self.rows("Load_Balancer") {
            let proto =
                crate::model::Protocol::service_port_number(r.get("protocol").map(atom_string).as_deref());
            for (vip, backends) in map_column(r.get("vips")) {
                let Some((ip, port)) = parse_vip(&vip) else { continue };
                // "backend:port,backend:port" as OVN's Load_Balancer lists them.
                let ips = backends.split(',').filter_map(|b| parse_vip(b.trim()).map(|(ip, _)| ip));
                let endpoint = Endpoint {
                    kind: EndpointKind::Service,
                    service: Some(format!("{vip} -> {backends}")),
                    ..Default::default()
                };
                out.insert((ip, port, proto), self.service_entry(endpoint, ips));
            }
        }
        for s in self.kube.services.values() {
            let service = format!("{}/{}", s.namespace, s.name);
            let backends: Vec<IpAddr> =
                self.kube.service_backends(&service).into_iter().map(|(ip, _)| ip).collect();
            for ip in &s.cluster_ips {
                for p in &s.ports {
                    let endpoint = Endpoint {
                        kind: EndpointKind::Service,
                        namespace: Some(s.namespace.clone()),
                        service: Some(service.clone()),
                        ..Default::default()
                    };
                    out.insert(
                        (*ip, p.port, p.proto),
                        self.service_entry(endpoint, backends.iter().copied()),
                    );
                }
            }
        }
        out
    }

    fn service_entry(
        &self,
        mut endpoint: Endpoint,
        backend_ips: impl Iterator<Item = IpAddr>,
    ) -> ServiceEntry {
        let pods: Vec<(String, Option<&String>)> = backend_ips
            .map(|ip| match self.pods_by_ip.get(&ip) {
                Some(p) => (format!("{}/{}", p.namespace, p.name), p.node.as_ref()),
                None => (ip.to_string(), None),
            })
            .collect();
        let backend_node = match pods.first() {
            Some((_, Some(first))) if pods.iter().all(|(_, n)| *n == Some(*first)) => Some((*first).clone()),
            _ => None,
        };
        endpoint.backends = pods.into_iter().map(|(name, _)| name).collect();
        endpoint.backends.sort();
        endpoint.backends.dedup();
        ServiceEntry { endpoint, backend_node }
    }

    pub fn pods(&self) -> Vec<&PodInfo> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out: Vec<&PodInfo> =
            self.pods_by_ip.values().filter(|p| seen.insert((p.namespace.clone(), p.name.clone()))).collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    pub fn pod(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods_by_ip.get(&ip)
    }

    /// OVS ports of this node's bridges (from its OVSDB `Interface` rows), for the drill-down:
    /// every port name and OpenFlow port number the trace uses comes from here.
    pub fn ovs_ports(&self) -> Vec<OvsPort> {
        let mut out: Vec<OvsPort> = self
            .rows("Interface")
            .filter_map(|r| {
                let name = r.get("name").map(atom_string)?;
                let ofport = match r.get("ofport") {
                    Some(serde_json::Value::Number(n)) => n.as_i64(),
                    v => set_column(v).first().and_then(|s| s.parse().ok()),
                }
                .filter(|p| (1..0xff00).contains(p))? as u32;
                let ids = map_column(r.get("external_ids"));
                let opts = map_column(r.get("options"));
                Some(OvsPort {
                    name,
                    ofport,
                    kind: r.get("type").map(atom_string).unwrap_or_default(),
                    pod: ids.get("pod_namespace").zip(ids.get("pod_name")).map(|(n, p)| format!("{n}/{p}")),
                    remote_ip: opts.get("remote_ip").and_then(|s| s.parse().ok()),
                })
            })
            .collect();
        out.sort_by_key(|p| p.ofport);
        out
    }

    /// Whether this node's OVSDB has an Interface of this name (a bridge's own internal port).
    pub fn has_interface(&self, name: &str) -> bool {
        self.rows("Interface").any(|r| r.get("name").map(atom_string).is_some_and(|n| n == name))
    }

    /// The MAC of the logical router port whose network holds `ip` (the pod's gateway), from
    /// the southbound's patch port bindings: `"00:00:00:aa:bb:cc 10.16.0.1/16"`.
    pub fn gateway_mac(&self, ip: IpAddr) -> Option<String> {
        self.rows("Port_Binding")
            .filter(|r| r.get("type").map(atom_string).is_some_and(|t| t == "patch" || t == "l3gateway"))
            .flat_map(|r| set_column(r.get("mac")))
            .find_map(|entry| {
                let mut parts = entry.split_whitespace();
                let mac = parts.next()?.to_string();
                parts.any(|net| in_network(ip, net)).then_some(mac)
            })
    }

    pub fn node_of_ip(&self, ip: IpAddr) -> Option<&str> {
        self.node_by_ip.get(&ip).map(String::as_str)
    }

    /// The endpoint behind `ip` (and, for a service VIP, `port`/`proto`).
    pub fn endpoint(&self, ip: IpAddr, port: u16, proto: u8) -> Endpoint {
        if let Some(p) = self.pods_by_ip.get(&ip) {
            return Endpoint {
                kind: EndpointKind::Pod,
                namespace: Some(p.namespace.clone()),
                pod: Some(p.name.clone()),
                workload: p.workload.clone(),
                node: p.node.clone(),
                service: None,
                backends: Vec::new(),
            };
        }
        if let Some(svc) = self.services.get(&(ip, port, proto)) {
            return svc.endpoint.clone();
        }
        if let Some(n) = self.node_by_ip.get(&ip) {
            return Endpoint { kind: EndpointKind::Node, node: Some(n.clone()), ..Default::default() };
        }
        if self.pods_by_ip.is_empty() {
            return Endpoint { kind: EndpointKind::Unknown, ..Default::default() };
        }
        Endpoint { kind: EndpointKind::External, ..Default::default() }
    }

    // --- Kubernetes API source (kube.rs) ---

    /// Applies a batch of changes from the Kubernetes watchers and rebuilds the indexes once.
    pub fn apply_kube(&mut self, updates: impl IntoIterator<Item = KubeUpdate>) {
        for u in updates {
            self.kube.apply(u);
        }
        // What the API said also answers directly (subnets, node addresses): always a change.
        self.generation += 1;
        self.rebuild();
    }

    /// Kube-OVN subnets, by name.
    pub fn subnets(&self) -> Vec<&SubnetInfo> {
        self.kube.subnets.values().collect()
    }

    /// Ready backends of the service `ns/name` (from its EndpointSlices).
    pub fn service_backends(&self, service: &str) -> Vec<(IpAddr, Vec<PortProto>)> {
        self.kube.service_backends(service)
    }

    /// Overlays the API's view on the OVSDB one: workloads for every pod it knows, its node
    /// names (they are Kubernetes node names, as `--node-name` is), pods OVN does not know
    /// (yet), node addresses. This node's OVSDB stays authoritative for its own pods.
    fn merge_kube(
        &self,
        pods: &mut HashMap<IpAddr, PodInfo>,
        node_by_ip: &mut HashMap<IpAddr, String>,
        encap_ip_of: &mut HashMap<String, IpAddr>,
    ) {
        for kp in self.kube.pods.values() {
            for ip in &kp.ips {
                let info = pods.entry(*ip).or_insert_with(|| PodInfo {
                    namespace: kp.namespace.clone(),
                    name: kp.name.clone(),
                    node: None,
                    ips: kp.ips.clone(),
                    host_iface: kp.host_iface.clone(),
                    mac: None,
                    workload: None,
                    source: PodSource::Kubernetes,
                });
                // An address OVN still has for another pod: OVN's binding is what carries
                // traffic, so it keeps the address (the API catches up or OVN does).
                if info.namespace != kp.namespace || info.name != kp.name {
                    continue;
                }
                info.workload = Some(kp.workload.clone());
                if info.host_iface.is_none() {
                    info.host_iface = kp.host_iface.clone();
                }
                if info.source != PodSource::Ovsdb && kp.node.is_some() {
                    info.node = kp.node.clone();
                }
            }
        }
        for node in self.kube.nodes.values() {
            for ip in &node.internal_ips {
                node_by_ip.insert(*ip, node.name.clone());
                // Nodes usually tunnel from their InternalIP: a fallback for tunnel_peer.
                encap_ip_of.entry(node.name.clone()).or_insert(*ip);
            }
        }
    }

    /// The scenario of the seeds' categories for a flow between these endpoints.
    pub fn scenario(&self, src: &Endpoint, dst: &Endpoint) -> Scenario {
        use EndpointKind as K;
        match (src.kind, dst.kind) {
            (K::Pod, K::Pod) if src.node.is_some() && src.node == dst.node => Scenario::PodToPodSameNode,
            (K::Pod, K::Pod) if src.node.is_some() && dst.node.is_some() => Scenario::PodToPodCrossNode,
            (K::Pod, K::Service) => Scenario::PodToService,
            (K::Pod, K::Node) => Scenario::PodToNode,
            (K::Node, K::Pod) => Scenario::NodeToPod,
            (K::Pod, K::External) => Scenario::PodToExternal,
            _ => Scenario::Unknown,
        }
    }

    /// For a flow to a service whose backends all run on one other node: that node and its
    /// tunnel endpoint (OVN load-balances before the tunnel, so the flow crosses it to that node).
    pub fn service_tunnel_peer(&self, vip: IpAddr, port: u16, proto: u8) -> Option<TunnelPeer> {
        let node = self.services.get(&(vip, port, proto))?.backend_node.as_ref()?;
        if *node == self.local_node {
            return None;
        }
        Some(TunnelPeer {
            remote_ip: self.encap_ip_of.get(node).copied(),
            remote_node: Some(node.clone()),
            ..Default::default()
        })
    }

    /// The node whose tunnel endpoint (OVN encap IP) this is.
    pub fn node_of_encap_ip(&self, ip: IpAddr) -> Option<String> {
        self.node_of_encap.get(&ip).cloned()
    }

    /// For a cross-node flow: the other node and its tunnel endpoint.
    pub fn tunnel_peer(&self, src: &Endpoint, dst: &Endpoint) -> Option<TunnelPeer> {
        let remote =
            [src, dst].into_iter().filter_map(|e| e.node.as_deref()).find(|n| *n != self.local_node)?;
        Some(TunnelPeer {
            remote_node: Some(remote.to_string()),
            remote_ip: self.encap_ip_of.get(remote).copied(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ovsdb::parse_updates;

    fn lab_inventory() -> Inventory {
        let mut inv = Inventory::new("node1");
        inv.apply(
            parse_updates(&json!({
                "Interface": {
                    "i1": {"new": {"name": "abc000000001_h", "type": "", "ofport": 3, "options": ["map", []],
                        "external_ids": ["map", [["iface-id", "web-1.default"], ["pod_name", "web-1"],
                            ["pod_namespace", "default"], ["ip", "10.16.0.2"], ["vendor", "kube-ovn"]]]}},
                    "t1": {"new": {"name": "ovn-node2-0", "type": "geneve", "ofport": 1,
                        "options": ["map", [["remote_ip", "172.31.250.12"]]],
                        "external_ids": ["map", [["ovn-chassis-id", "node2@172.31.250.12"]]]}}
                },
                "Open_vSwitch": {"o": {"new": {"external_ids": ["map", [["ovn-encap-ip", "172.31.250.11"]]]}}},
                "Chassis": {"c2": {"new": {"name": "node2", "hostname": "node2"}}},
                "Port_Binding": {
                    "p1": {"new": {"logical_port": "web-1.default", "mac": "0a:00:00:00:00:01 10.16.0.2", "chassis": ["set", []], "type": ""}},
                    "p2": {"new": {"logical_port": "db-2.shop", "mac": ["set", ["0a:00:00:00:00:05 10.16.0.5"]], "chassis": ["uuid", "c2"], "type": ""}},
                    "p3": {"new": {"logical_port": "ovn-default-ovn-cluster", "mac": "router", "chassis": ["set", []], "type": "patch"}}
                },
                "Load_Balancer": {"l": {"new": {"name": "cluster-tcp-loadbalancer", "protocol": ["set", []],
                    "vips": ["map", [["10.96.0.10:80", "10.16.0.2:8080,10.16.0.5:8080"]]]}}}
            }))
            .expect("valid updates"),
        );
        inv
    }

    #[test]
    fn local_pods_come_from_ovsdb_remote_from_the_southbound() {
        let inv = lab_inventory();
        let web = inv.pod("10.16.0.2".parse().expect("ip")).expect("web-1");
        assert_eq!(
            (web.name.as_str(), web.node.as_deref(), web.source.as_str()),
            ("web-1", Some("node1"), "ovsdb")
        );
        assert_eq!(web.host_iface.as_deref(), Some("abc000000001_h"));
        let db = inv.pod("10.16.0.5".parse().expect("ip")).expect("db-2");
        assert_eq!((db.namespace.as_str(), db.node.as_deref()), ("shop", Some("node2")));
        assert_eq!(inv.pods().len(), 2, "the router port is not a pod");
    }

    #[test]
    fn scenarios_follow_the_seeds_categories() {
        let inv = lab_inventory();
        let ep = |ip: &str, port| inv.endpoint(ip.parse().expect("ip"), port, 6);
        let web = ep("10.16.0.2", 40000);
        let db = ep("10.16.0.5", 8080);
        assert_eq!(inv.scenario(&web, &db), Scenario::PodToPodCrossNode);
        assert_eq!(inv.scenario(&web, &web), Scenario::PodToPodSameNode);
        let svc = ep("10.96.0.10", 80);
        assert_eq!((svc.kind, inv.scenario(&web, &svc)), (EndpointKind::Service, Scenario::PodToService));
        assert_eq!(inv.scenario(&web, &ep("10.96.0.10", 81)), Scenario::PodToExternal, "not a VIP port");
        let node2 = ep("172.31.250.12", 22);
        assert_eq!((node2.node.as_deref(), inv.scenario(&web, &node2)), (Some("node2"), Scenario::PodToNode));
        assert_eq!(inv.scenario(&node2, &web), Scenario::NodeToPod);
        assert_eq!(inv.scenario(&web, &ep("8.8.8.8", 53)), Scenario::PodToExternal);
        let peer = inv.tunnel_peer(&web, &db).expect("cross-node");
        assert_eq!(
            (peer.remote_node.as_deref(), peer.remote_ip),
            (Some("node2"), Some("172.31.250.12".parse().expect("ip")))
        );
        assert!(inv.tunnel_peer(&web, &web).is_none());
    }

    #[test]
    fn deletions_and_reconnects_forget_rows() {
        let mut inv = lab_inventory();
        inv.apply(parse_updates(&json!({"Interface": {"i1": {"old": {}}}})).expect("valid"));
        let web = inv.pod("10.16.0.2".parse().expect("ip")).expect("still known from the southbound");
        assert_eq!(web.source, "ovn-sb");
        let mut reset = Updates::new();
        reset.insert(format!("{RESET_PREFIX}Port_Binding"), Default::default());
        inv.apply(reset);
        assert!(inv.pod("10.16.0.2".parse().expect("ip")).is_none());
        assert_eq!(
            inv.endpoint("10.16.0.9".parse().expect("ip"), 1, 6).kind,
            EndpointKind::Unknown,
            "no pods known at all"
        );
    }

    #[test]
    fn port_names_split_at_the_last_dot() {
        assert_eq!(pod_of_port("web-1.default"), Some(("default".into(), "web-1".into())));
        assert_eq!(pod_of_port("a.b.c.ns"), Some(("ns".into(), "a.b.c".into())));
        assert_eq!(pod_of_port("nodot"), None);
        assert_eq!(pod_of_port(".ns"), None);
    }
}
