//! `lab.json`: the description of a running lab. `up` writes it, every other command (and the
//! privileged tests, and the demo) reads it instead of guessing names.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::net::Cidr;

/// Default lab name; also the default of `--name` everywhere.
pub const DEFAULT_NAME: &str = "kovn";
/// Parent of every lab's default state directory (`/run/kovn-lab/NAME`). `/run` is a tmpfs, so a
/// reboot cannot leave stale pidfiles pointing at unrelated processes.
pub const STATE_ROOT: &str = "/run/kovn-lab";
/// OpenFlow cookie of the flows the lab adds itself ("kovn" in ASCII), so they are easy to find
/// among ovn-controller's flows (whose cookies are logical-flow UUID prefixes).
pub const FAULT_COOKIE: u64 = 0x6b6f_766e;
/// Every pod's TCP echo server.
pub const TCP_ECHO_PORT: u16 = 8080;
/// Every pod's UDP echo server.
pub const UDP_ECHO_PORT: u16 = 5353;
/// Kube-OVN's names for the default VPC router and the default subnet's switch.
pub const ROUTER: &str = "ovn-cluster";
pub const DEFAULT_SUBNET: &str = "ovn-default";

/// Which OVS datapath the nodes' ovs-vswitchd use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// OVS's userspace (netdev) datapath: works on any kernel, no OVS module needed; the node
    /// IP sits on a netdev bridge `br-phy` owning the NIC and tunnels are pushed by OVS itself
    /// (no `genev_sys_6081`).
    #[default]
    Userspace,
    /// OVS's kernel datapath (`datapath_type=system`, the `openvswitch` and `geneve`/`vxlan`
    /// modules), as Kube-OVN nodes run it: OVS creates `genev_sys_6081`/`vxlan_sys_4789` per
    /// node netns and the node IP sits on the NIC itself. Needs a kernel with those modules
    /// (e.g. Debian's, in a VM: see README "The lab on the kernel datapath").
    Kernel,
}

impl Datapath {
    /// OVS's `datapath_type` for bridges (and `ovn-bridge-datapath-type`).
    pub fn ovs_type(self) -> &'static str {
        match self {
            Datapath::Userspace => "netdev",
            Datapath::Kernel => "system",
        }
    }
}

/// Overlay encapsulation between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    Geneve,
    Vxlan,
}

impl Tunnel {
    /// The UDP destination port of the encapsulated traffic on the underlay.
    pub fn udp_port(self) -> u16 {
        match self {
            Tunnel::Geneve => 6081,
            Tunnel::Vxlan => 4789,
        }
    }

    /// What Kube-OVN subtracts from the node MTU to get the pod MTU (its Geneve/VXLAN header
    /// length constants: 100 and 50 bytes).
    pub fn overhead(self) -> u32 {
        match self {
            Tunnel::Geneve => 100,
            Tunnel::Vxlan => 50,
        }
    }

    /// The value of `external_ids:ovn-encap-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tunnel::Geneve => "geneve",
            Tunnel::Vxlan => "vxlan",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `Starting` from the moment `up` writes its plan until every check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Ready,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lab {
    pub name: String,
    pub state_dir: PathBuf,
    pub phase: Phase,
    pub tunnel: Tunnel,
    /// OVS datapath of every node (absent in older files: userspace).
    #[serde(default)]
    pub datapath: Datapath,
    pub underlay: Underlay,
    pub central: Central,
    /// Logical router every subnet hangs off (Kube-OVN's default VPC router).
    pub router: String,
    pub subnets: Vec<Subnet>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Faults injected and not yet healed.
    pub faults: Vec<Fault>,
    /// kovn-monitors started by `lab monitors start`, one per node (absent in older files).
    #[serde(default)]
    pub monitors: Vec<MonitorInfo>,
}

/// A kovn-monitor running in a node's netns, as a DaemonSet pod would on a real node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub node: String,
    /// Its API, reachable from the root netns: `http://<node IP>:9474`.
    pub url: String,
    pub pid: i32,
    pub log: PathBuf,
    pub pidfile: PathBuf,
    /// The binary it runs (its file name is the process name checked before signalling).
    pub bin: PathBuf,
}

/// The network joining the nodes: a Linux bridge in the root netns with one veth per node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Underlay {
    pub cidr: Cidr,
    /// Linux bridge in the root netns.
    pub bridge: String,
    /// The bridge's own address, so the root netns reaches every node IP.
    pub host_ip: Ipv4Addr,
    pub mtu: u32,
}

/// OVN's central components: NB and SB ovsdb-servers and ovn-northd, on unix sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Central {
    pub dir: PathBuf,
    pub nb_sock: PathBuf,
    pub sb_sock: PathBuf,
    pub northd_ctl: PathBuf,
}

impl Central {
    /// `--db=` value for ovn-nbctl.
    pub fn nb_db(&self) -> String {
        format!("unix:{}", self.nb_sock.display())
    }

    /// `--db=` value for ovn-sbctl and ovn-trace.
    pub fn sb_db(&self) -> String {
        format!("unix:{}", self.sb_sock.display())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    pub name: String,
    pub cidr: Cidr,
    pub gateway: Ipv4Addr,
    pub logical_switch: String,
    /// The router port on this subnet (Kube-OVN: `<router>-<switch>`).
    pub router_port: String,
    pub router_port_mac: String,
    /// Namespaces bound to this subnet (Kube-OVN `spec.namespaces`); empty for the default
    /// subnet, which takes every other namespace.
    pub namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Also the OVN chassis name (`external_ids:system-id`) and chassis hostname.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The node's NIC inside its netns (a port of `tunnel_bridge`).
    pub underlay_iface: String,
    /// The other end of `underlay_iface`, in the root netns, enslaved to the underlay bridge.
    pub root_veth: String,
    /// OVS netdev bridge holding the node IP (userspace tunnelling needs the tunnel endpoint on
    /// an OVS bridge so OVS can route and resolve the outer header itself).
    pub tunnel_bridge: String,
    pub integration_bridge: String,
    /// OVS_RUNDIR (and OVN_RUNDIR) of this node's daemons.
    pub ovs_rundir: PathBuf,
    pub ovsdb_sock: PathBuf,
    pub vswitchd_ctl: PathBuf,
    /// ovn-controller 23.03 has no `--unixctl`; its socket is `<OVN_RUNDIR>/ovn-controller.<pid>.ctl`.
    pub ovn_controller_ctl: Option<PathBuf>,
    pub mtu: u32,
}

impl Node {
    /// `--db=` value for ovs-vsctl.
    pub fn ovsdb(&self) -> String {
        format!("unix:{}", self.ovsdb_sock.display())
    }

    /// ovs-ofctl target for br-int: its management socket in the node's rundir.
    pub fn br_int_mgmt(&self) -> String {
        format!("unix:{}", self.ovs_rundir.join(format!("{}.mgmt", self.integration_bridge)).display())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// The owning workload (a Deployment named like the pod without its ordinal).
    pub workload: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub gateway: Ipv4Addr,
    pub subnet: String,
    /// Host end of the pod's veth, in the node netns, a port of br-int (Kube-OVN: `<12 hex>_h`).
    pub host_veth: String,
    /// The pod end, inside the pod netns.
    pub iface: String,
    /// Logical switch port and OVS `external_ids:iface-id`: `<pod>.<namespace>`.
    pub iface_id: String,
    /// br-int OpenFlow port number, known once OVS added the port.
    pub ofport: Option<u32>,
    pub mtu: u32,
    pub tcp_port: u16,
    pub udp_port: u16,
}

impl Pod {
    /// `namespace/name`, as kubectl prints it.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
    pub backends: Vec<SocketAddrV4>,
    /// The OVN Load_Balancer holding the VIP (Kube-OVN: `cluster-tcp-loadbalancer`, ...).
    pub load_balancer: String,
}

impl Service {
    pub fn vip_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip, self.port)
    }
}

/// How `tunnel-cut` cuts the tunnel, each the way a real incident does it, so each should produce
/// its own finding in kovn-monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CutHow {
    /// Both nodes drop the encapsulated UDP to the other node (nftables `netdev` egress on each
    /// NIC, the one hook the userspace datapath's AF_PACKET traffic passes), both ways. Meant to
    /// be found as `tunnel_blocked_by_firewall`.
    DropUdp,
    /// The from-node's underlay NIC goes down (cuts it from every node). Meant to be found as
    /// `underlay_down`.
    Down,
    /// The to-node's host firewall drops the tunnel's incoming UDP from the from-node (nftables
    /// `inet` input chain in its netns), as a node firewall blocking Geneve does. Kernel datapath
    /// only: the userspace datapath's tunnel packets bypass the IP stack. Meant to be found as
    /// `tunnel_blocked_by_firewall`.
    Firewall,
    /// The underlay network between the two nodes drops their tunnel packets, both ways, on
    /// neither node (nftables `bridge` forward chain on the lab's underlay bridge in the root
    /// netns). Meant to be found as `lost_in_tunnel`.
    Path,
}

/// A fault as asked for; everything needed to undo it follows from it and the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum FaultSpec {
    /// nftables in the pod netns drops the pod's replies (SYN-ACK, echo-reply, UDP from its
    /// server port, anything from its TCP server port): requests arrive, nothing answers.
    ReplyDrop { pod: String },
    /// A high-priority OpenFlow drop on the node's br-int, table 0, for IPv4 packets to `dst`.
    OvsDrop { node: String, dst: Ipv4Addr },
    /// The pod's TCP server on `port` is stopped: SYNs get RST.
    NoListener { pod: String, port: u16 },
    /// The pod's MTU (both veth ends) raised to `mtu`, above what the overlay carries.
    Mtu { pod: String, mtu: u32 },
    /// Encapsulated traffic between two nodes cut.
    TunnelCut { from: String, to: String, how: CutHow },
    /// An OVN ACL on the pod's logical switch dropping `src` -> `dst`, named and tagged like a
    /// Kube-OVN NetworkPolicy ACL.
    AclDeny { src: String, dst: String },
}

impl FaultSpec {
    /// Whether both faults would install the same thing, so healing one would undo part of the
    /// other: tunnel cuts between the same two nodes (in either direction).
    pub fn conflicts_with(&self, other: &FaultSpec) -> bool {
        match (self, other) {
            (FaultSpec::TunnelCut { from: a, to: b, .. }, FaultSpec::TunnelCut { from: c, to: d, .. }) => {
                (a == c && b == d) || (a == d && b == c)
            }
            _ => self.id() == other.id(),
        }
    }

    /// Stable identifier used by `heal --fault`.
    pub fn id(&self) -> String {
        match self {
            FaultSpec::ReplyDrop { pod } => format!("reply-drop:{pod}"),
            FaultSpec::OvsDrop { node, dst } => format!("ovs-drop:{node}:{dst}"),
            FaultSpec::NoListener { pod, port } => format!("no-listener:{pod}:{port}"),
            FaultSpec::Mtu { pod, .. } => format!("mtu:{pod}"),
            FaultSpec::TunnelCut { from, to, .. } => format!("tunnel-cut:{from}:{to}"),
            FaultSpec::AclDeny { src, dst } => format!("acl-deny:{src}:{dst}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub id: String,
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// What was installed, in words (table, flow, ACL name...).
    pub detail: String,
    /// Seconds since the Unix epoch.
    pub injected_at: u64,
}

/// A long-running process the lab started and must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// `central`, a node name, or a pod's `namespace/name`.
    pub owner: String,
    pub role: &'static str,
    /// The executable's name as /proc/PID/comm shows it, checked before signalling a pid read
    /// from a pidfile.
    pub comm: &'static str,
    pub pidfile: PathBuf,
    pub log: PathBuf,
    /// Signal the whole process group (socat forks a child per connection).
    pub group: bool,
}

impl Lab {
    pub fn json_path(&self) -> PathBuf {
        self.state_dir.join("lab.json")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_dir.join(node)
    }

    pub fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.state_dir.join("pods").join(&pod.netns)
    }

    pub fn faults_dir(&self) -> PathBuf {
        self.state_dir.join("faults")
    }

    /// A pod by `name` or `namespace/name`.
    pub fn pod(&self, reference: &str) -> Result<&Pod> {
        let found = match reference.split_once('/') {
            Some((ns, name)) => self.pods.iter().find(|p| p.namespace == ns && p.name == name),
            None => self.pods.iter().find(|p| p.name == reference),
        };
        found.with_context(|| {
            let names: Vec<_> = self.pods.iter().map(Pod::qualified_name).collect();
            format!("lab {} has no pod {reference:?} (pods: {})", self.name, names.join(", "))
        })
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            let names: Vec<_> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!("lab {} has no node {name:?} (nodes: {})", self.name, names.join(", "))
        })
    }

    pub fn subnet(&self, name: &str) -> Result<&Subnet> {
        self.subnets
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("lab {} has no subnet {name:?}", self.name))
    }

    pub fn service(&self, name: &str, protocol: Protocol) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name && s.protocol == protocol)
    }

    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// Every long-running process of the lab, in the order `down` stops them (clients of a
    /// database before the database).
    pub fn daemons(&self) -> Vec<Daemon> {
        let mut out = Vec::new();
        for pod in &self.pods {
            let dir = self.pod_dir(pod);
            for (role, port) in [("tcp-echo", pod.tcp_port), ("udp-echo", pod.udp_port)] {
                out.push(Daemon {
                    owner: pod.qualified_name(),
                    role,
                    comm: "socat",
                    pidfile: dir.join(format!("{role}-{port}.pid")),
                    log: dir.join(format!("{role}-{port}.log")),
                    group: true,
                });
            }
        }
        for node in &self.nodes {
            let dir = self.node_dir(&node.name);
            for (role, comm) in [
                ("ovn-controller", "ovn-controller"),
                ("ovs-vswitchd", "ovs-vswitchd"),
                ("ovsdb-server", "ovsdb-server"),
            ] {
                out.push(Daemon {
                    owner: node.name.clone(),
                    role,
                    comm,
                    pidfile: dir.join(format!("{role}.pid")),
                    log: dir.join(format!("{role}.log")),
                    group: false,
                });
            }
        }
        let dir = &self.central.dir;
        for (role, comm) in [
            ("ovn-northd", "ovn-northd"),
            ("ovsdb-server-nb", "ovsdb-server"),
            ("ovsdb-server-sb", "ovsdb-server"),
        ] {
            out.push(Daemon {
                owner: "central".into(),
                role,
                comm,
                pidfile: dir.join(format!("{role}.pid")),
                log: dir.join(format!("{role}.log")),
                group: false,
            });
        }
        out
    }

    /// Writes lab.json atomically (a reader never sees half a file).
    pub fn save(&self) -> Result<()> {
        let path = self.json_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).context("cannot serialise the lab")?;
        fs::write(&tmp, format!("{text}\n")).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The state directory of a lab given its name or its state directory (anything with a `/`).
pub fn state_dir_of(name_or_state_dir: &str) -> PathBuf {
    if name_or_state_dir.contains('/') {
        PathBuf::from(name_or_state_dir)
    } else {
        Path::new(STATE_ROOT).join(name_or_state_dir)
    }
}

/// Reads a lab's description: `load("kovn")` or `load("/some/state/dir")`.
pub fn load(name_or_state_dir: &str) -> Result<Lab> {
    let dir = state_dir_of(name_or_state_dir);
    let path = dir.join("lab.json");
    if !path.exists() {
        bail!("no lab at {} (is it up? `cargo xtask lab up --name NAME`)", dir.display());
    }
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a lab description", path.display()))
}
