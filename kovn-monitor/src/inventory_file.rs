//! The static inventory source (`--inventory-file`): a YAML file naming nodes, pods, services
//! and subnets, for labs and hosts without a Kubernetes API. It stands in for the API source
//! (same model: [`KubeUpdate`]s), is re-read when it changes, and a file that does not parse
//! keeps the last good content (with a warning), so an edit in progress never blanks names.
//!
//! ```yaml
//! nodes:
//!   - {name: node1, ips: [172.31.250.11]}
//! pods:
//!   - {namespace: default, name: web-1, node: node1, ips: [10.16.0.2], workload: Deployment/web}
//! services:
//!   - {namespace: default, name: web, cluster_ips: [10.96.0.10], ports: ["8080/tcp"], endpoints: [10.16.0.2]}
//! subnets:
//!   - {name: ovn-default, cidr: 10.16.0.0/16, gateway: 10.16.0.1, mode: overlay}
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::inventory::Inventory;
use crate::kube::{
    Change, KubeEndpointSlice, KubeNode, KubePod, KubeService, KubeUpdate, PortProto, SubnetInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read inventory file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("inventory file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("inventory file {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    pods: Vec<Pod>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    subnets: Vec<Subnet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    name: String,
    /// InternalIPs; the first is also taken as the node's tunnel endpoint when OVSDB does not
    /// say otherwise.
    #[serde(default)]
    ips: Vec<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pod {
    namespace: String,
    name: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    ips: Vec<IpAddr>,
    /// `Kind/name` of the owner, as the API source reports it (`Deployment/web`).
    #[serde(default)]
    workload: Option<String>,
    /// The pod's host-side veth on its node (what OVSDB says for Kube-OVN pods): names the
    /// pod behind the interface (the new-flow budget and spoofing check, drops in the pod).
    #[serde(default)]
    host_iface: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    namespace: String,
    name: String,
    cluster_ips: Vec<IpAddr>,
    /// `PORT` (TCP) or `PORT/tcp|udp|sctp`.
    #[serde(default)]
    ports: Vec<PortSpec>,
    /// Backend addresses.
    #[serde(default)]
    endpoints: Vec<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Number(u16),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subnet {
    name: String,
    /// One CIDR, or `v4,v6` for dual stack, as Kube-OVN's `spec.cidrBlock`.
    cidr: String,
    #[serde(default)]
    gateway: Option<String>,
    /// `overlay` (default) or `underlay`.
    #[serde(default)]
    mode: Option<String>,
}

#[expect(
    clippy::map_err_ignore,
    reason = "the message names the port as written; ParseIntError adds only empty/invalid digit/too large"
)]
fn port_of(p: &PortSpec) -> Result<PortProto, String> {
    let (port, proto) = match p {
        PortSpec::Number(n) => (*n, 6),
        PortSpec::Text(t) => {
            let (num, proto) = t.split_once('/').unwrap_or((t.as_str(), "tcp"));
            let proto = match proto.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                other => return Err(format!("port {t:?}: unknown protocol {other:?} (tcp, udp, sctp)")),
            };
            (num.trim().parse().map_err(|_| format!("port {t:?}: not a port number"))?, proto)
        }
    };
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(PortProto { port, proto })
}

/// Parses the file's text into the updates that replace everything the source said before.
pub fn parse(path: &Path, text: &str) -> Result<Vec<KubeUpdate>, FileError> {
    let f: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| FileError::Parse { path: path.to_path_buf(), message: e.to_string() })?
    };
    let invalid = |what: String| FileError::Invalid { path: path.to_path_buf(), what };
    let nodes = f.nodes.into_iter().map(|n| KubeNode { name: n.name, internal_ips: n.ips }).collect();
    let pods = f
        .pods
        .into_iter()
        .map(|p| KubePod {
            workload: p.workload.unwrap_or_else(|| format!("Pod/{}", p.name)),
            namespace: p.namespace,
            name: p.name,
            node: p.node,
            ips: p.ips,
            host_iface: p.host_iface,
        })
        .collect();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for s in f.services {
        let ports = s
            .ports
            .iter()
            .map(port_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("service {}/{}: {e}", s.namespace, s.name)))?;
        if !s.endpoints.is_empty() {
            slices.push(KubeEndpointSlice {
                namespace: s.namespace.clone(),
                name: format!("{}-file", s.name),
                service: Some(s.name.clone()),
                addresses: s.endpoints,
                ports: ports.clone(),
            });
        }
        services.push(KubeService {
            namespace: s.namespace,
            name: s.name,
            cluster_ips: s.cluster_ips,
            ports,
        });
    }
    let mut subnets = Vec::new();
    for s in f.subnets {
        let cidr_blocks: Vec<String> = s.cidr.split(',').map(|c| c.trim().to_string()).collect();
        for c in &cidr_blocks {
            let ok = c.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128)
            });
            if !ok {
                return Err(invalid(format!("subnet {}: {c:?} is not a CIDR", s.name)));
            }
        }
        let mode = s.mode.unwrap_or_else(|| "overlay".into());
        if mode != "overlay" && mode != "underlay" {
            return Err(invalid(format!("subnet {}: mode {mode:?} (overlay or underlay)", s.name)));
        }
        subnets.push(SubnetInfo {
            name: s.name,
            cidr_blocks,
            gateway: s.gateway,
            mode,
            ..Default::default()
        });
    }
    Ok(vec![
        KubeUpdate::Node(Change::Reset(nodes)),
        KubeUpdate::Pod(Change::Reset(pods)),
        KubeUpdate::Service(Change::Reset(services)),
        KubeUpdate::EndpointSlice(Change::Reset(slices)),
        KubeUpdate::Subnet(Change::Reset(subnets)),
    ])
}

/// Reads and parses the file once (the daemon refuses to start on an unreadable file).
pub fn load(path: &Path) -> Result<Vec<KubeUpdate>, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| FileError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Applies the file now and again whenever its modification time changes (checked every
/// `every`). Runs until the process ends.
#[expect(
    clippy::infinite_loop,
    reason = "a task that runs until the process ends; async fn cannot return `!`"
)]
pub async fn follow(path: PathBuf, inventory: Arc<RwLock<Inventory>>, every: Duration) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = None;
    loop {
        let now = mtime(&path);
        if now != seen {
            seen = now;
            match load(&path) {
                Ok(updates) => {
                    inventory.write().unwrap_or_else(|p| p.into_inner()).apply_kube(updates);
                    log::info!("inventory file {} applied", path.display());
                }
                Err(e) => log::warn!("{e}; keeping the last good content"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
nodes:
  - {name: node1, ips: [172.31.250.11]}
  - name: node2
    ips: [172.31.250.12]
pods:
  - {namespace: default, name: web-1, node: node1, ips: [10.16.0.2], workload: Deployment/web}
  - {namespace: shop, name: db-0, node: node2, ips: [10.16.0.5]}
services:
  - namespace: shop
    name: db
    cluster_ips: [10.96.0.11]
    ports: [5432, "53/udp"]
    endpoints: [10.16.0.5]
subnets:
  - {name: ovn-default, cidr: "10.16.0.0/16,fd00:10:16::/64", gateway: 10.16.0.1}
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_file_names_pods_services_nodes_and_scenarios() {
        let mut inv = Inventory::new("node1");
        inv.apply_kube(parse(Path::new("lab.yaml"), LAB).expect("valid file"));
        let web = inv.endpoint(ip("10.16.0.2"), 40000, 6);
        let db = inv.endpoint(ip("10.16.0.5"), 5432, 6);
        assert_eq!((web.pod.as_deref(), web.workload.as_deref()), (Some("web-1"), Some("Deployment/web")));
        assert_eq!(db.node.as_deref(), Some("node2"));
        assert_eq!(db.workload.as_deref(), Some("Pod/db-0"), "no owner given: the pod itself");
        assert_eq!(inv.scenario(&web, &db), "pod_to_pod_cross_node");
        let svc = inv.endpoint(ip("10.96.0.11"), 5432, 6);
        assert_eq!(svc.service.as_deref(), Some("shop/db"));
        assert_eq!(inv.scenario(&web, &svc), "pod_to_service");
        assert_eq!(inv.endpoint(ip("10.96.0.11"), 53, 17).kind, "service");
        assert_eq!(inv.endpoint(ip("10.96.0.11"), 53, 6).kind, "external", "53 is UDP only");
        assert!(!inv.service_backends("shop/db").is_empty());
        assert_eq!(svc.backends, vec!["shop/db-0".to_string()], "backends named as pods");
        // Its only backend runs on node2: flows to it cross the tunnel to node2.
        let peer = inv.service_tunnel_peer(ip("10.96.0.11"), 5432, 6).expect("one remote backend node");
        assert_eq!((peer.remote_node.as_deref(), peer.remote_ip), (Some("node2"), Some(ip("172.31.250.12"))));
        assert!(inv.service_tunnel_peer(ip("10.96.0.11"), 9999, 6).is_none(), "not a service port");
        assert_eq!(inv.node_of_ip(ip("172.31.250.12")), Some("node2"));
        assert_eq!(inv.subnets()[0].cidr_blocks.len(), 2);
        // A new version of the file replaces the old one: db-0 is gone.
        inv.apply_kube(parse(Path::new("lab.yaml"), "pods: []").expect("valid"));
        assert!(inv.pod(ip("10.16.0.5")).is_none());
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let p = Path::new("inv.yaml");
        for (text, want) in [
            ("pods: [{namespace: a}]", "name"),
            ("nodez: []", "nodez"),
            ("pods: [{namespace: a, name: b, ips: [10.0.0.300]}]", "inv.yaml"),
            ("services: [{namespace: a, name: b, cluster_ips: [10.96.0.1], ports: [\"80/icmp\"]}]", "icmp"),
            (
                "services: [{namespace: a, name: b, cluster_ips: [10.96.0.1], ports: [\"http\"]}]",
                "not a port",
            ),
            ("subnets: [{name: s, cidr: 10.16.0.0}]", "not a CIDR"),
            ("subnets: [{name: s, cidr: 10.16.0.0/16, mode: vlan}]", "overlay or underlay"),
            (": :", "inv.yaml"),
        ] {
            let e = parse(p, text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
            assert!(!e.contains('\n') || e.starts_with("inventory file"), "{e}");
        }
        assert!(parse(p, "").is_ok(), "an empty file is an empty inventory");
        let missing = load(Path::new("/nonexistent/inv.yaml")).expect_err("missing").to_string();
        assert!(missing.starts_with("cannot read inventory file /nonexistent/inv.yaml"), "{missing}");
    }
}
