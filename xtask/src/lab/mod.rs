//! The lab: Kube-OVN-like nodes in network namespaces on one machine.
//!
//! Each node is a netns with its own ovsdb-server, ovs-vswitchd (userspace/netdev datapath) and
//! ovn-controller; one OVN central (NB, SB, northd) serves them; nodes talk Geneve (or VXLAN) over
//! an underlay bridge in the root netns; pods are namespaces bound to the `ovn-default` logical
//! switch the way Kube-OVN's CNI binds them. `lab.json` in the state directory describes it all.
//!
//! The CLI (`cargo xtask lab ...`) and the privileged tests use the same functions:
//!
//! - [`up`] / [`down`] / [`load`]: bring a lab up (idempotent), remove it, read its [`Lab`].
//! - [`Lab::inject`] / [`Lab::heal`]: faults ([`FaultSpec`]), recorded in lab.json.
//! - [`probe::tcp_echo`], [`probe::tcp_transfer`], [`probe::udp_echo`], [`probe::ping`],
//!   [`probe::run`]: one bounded probe from a pod, judged on the answer ([`ProbeResult`]).
//! - [`traffic::run`] / [`traffic::plan`]: the seeded mix of `lab traffic`.
//! - [`healthy`], [`port_bindings`], [`ovs`]: state checks and the OVS/OVN clients on the lab's
//!   sockets.
//! - [`monitors::start`] / [`monitors::stop`]: a kovn-monitor per node, as the DaemonSet would
//!   run it, its API on `http://<node IP>:9474` ([`monitors::monitor_url`]).
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use xtask::lab::{self, FaultSpec, UpOptions};
//!
//! let mut lab = lab::up(&UpOptions::named("t1"))?.into_lab();
//! let web2 = lab.pod("web-2")?.clone();
//! let fault = lab.inject(FaultSpec::ReplyDrop { pod: web2.name.clone() })?;
//! let r = lab::probe::tcp_echo(&lab, "web-1", SocketAddrV4::new(web2.ip, web2.tcp_port))?;
//! assert!(!r.ok, "replies are dropped: {}", r.detail);
//! lab.heal(Some(&fault.id))?;
//! lab::down("t1")?;
//! # anyhow::Ok(())
//! ```

mod down;
mod faults;
mod model;
pub mod monitors;
mod net;
pub mod ovs;
mod plan;
pub mod probe;
mod status;
pub(crate) mod sys;
pub mod traffic;
mod up;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

pub use down::{DownOutcome, down, is_lab_link, is_lab_netns, is_lab_state_dir};
pub use faults::{ACL_DENY_PRIORITY, OVS_DROP_PRIORITY, acl_name};
pub use model::{
    Central, CutHow, DEFAULT_NAME, Daemon, Datapath, FAULT_COOKIE, Fault, FaultSpec, Lab, MonitorInfo, Node,
    Phase, Pod, Protocol, STATE_ROOT, Service, Subnet, TCP_ECHO_PORT, Tunnel, UDP_ECHO_PORT, Underlay, load,
    state_dir_of,
};
pub use monitors::monitor_url;
pub use net::Cidr;
pub use plan::{SHOP_SUBNET, UpOptions, host_veth_name, plan, pod_mac, validate_name};
pub use probe::{Probe, ProbeResult};
pub use status::{health, healthy};
pub use traffic::{Scenario, TrafficOptions, TrafficReport};
pub use up::start_node_ovsdb;
pub use up::{UpOutcome, port_bindings, up};

/// Which lab a command is about.
#[derive(Debug, Clone, Args)]
pub struct LabRef {
    /// Lab name (namespaces NAME-node1, NAME-n1-p1, ...; bridge NAME-ul). `KOVN_LAB` sets the
    /// default (`vm-lab run` sets it to the VM's lab).
    #[arg(long, env = "KOVN_LAB", default_value = DEFAULT_NAME)]
    pub name: String,
    /// The lab's state directory, if `up` was given a custom one (default /run/kovn-lab/NAME).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl LabRef {
    /// What `load` and `down` take: the state directory when given, else the name.
    pub fn target(&self) -> String {
        match &self.state_dir {
            Some(dir) => dir.display().to_string(),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Lab name: 1-10 lowercase letters/digits, starting with a letter (default: `KOVN_LAB`,
    /// else `kovn`).
    #[arg(long, env = "KOVN_LAB", default_value = DEFAULT_NAME)]
    pub name: String,
    /// Nodes (1-99): namespaces NAME-node1...
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Pods per node (1-50), spread over workloads web, db, cache, api in namespaces default/shop.
    #[arg(long, default_value_t = 3)]
    pub pods_per_node: u32,
    /// Overlay between nodes (pod MTU: underlay MTU - 100 for Geneve, - 50 for VXLAN).
    #[arg(long, value_enum, default_value_t = Tunnel::Geneve)]
    pub tunnel: Tunnel,
    /// OVS datapath: `userspace` (netdev, any kernel) or `kernel` (`datapath_type=system`,
    /// needs the `openvswitch` and `geneve`/`vxlan` modules: OVS then makes `genev_sys_6081`
    /// per node, as on a Kube-OVN node).
    #[arg(long, value_enum, default_value_t = Datapath::Userspace)]
    pub datapath: Datapath,
    /// Underlay prefix (at least a /24). Default: the first of 172.31.250.0/24, 172.31.249.0/24,
    /// ... not routed in the root netns yet.
    #[arg(long)]
    pub underlay_cidr: Option<Cidr>,
    /// MTU of the nodes' NICs; pods get this minus Kube-OVN's tunnel overhead (Geneve 100,
    /// VXLAN 50).
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
    /// The default subnet (logical switch ovn-default).
    #[arg(long, default_value = "10.16.0.0/16")]
    pub pod_cidr: Cidr,
    /// Put namespace `shop` on a second subnet (logical switch `shop`, same router), e.g.
    /// 10.17.0.0/16; traffic between the namespaces is then routed by ovn-cluster.
    #[arg(long)]
    pub shop_cidr: Option<Cidr>,
    /// Service VIPs come from here (web: .10, db: .11).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Cidr,
    /// Default /run/kovn-lab/NAME.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl From<UpArgs> for UpOptions {
    fn from(a: UpArgs) -> Self {
        UpOptions {
            name: a.name,
            nodes: a.nodes,
            pods_per_node: a.pods_per_node,
            tunnel: a.tunnel,
            datapath: a.datapath,
            underlay_cidr: a.underlay_cidr,
            underlay_mtu: a.underlay_mtu,
            pod_cidr: a.pod_cidr,
            shop_cidr: a.shop_cidr,
            service_cidr: a.service_cidr,
            state_dir: a.state_dir,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// nftables in the pod's netns drops its replies (SYN-ACK, echo-reply, UDP from 5353).
    ReplyDrop {
        /// Pod name or namespace/name.
        #[arg(long)]
        pod: String,
    },
    /// OpenFlow drop on the node's br-int (table 0, cookie 0x6b6f766e) for IPv4 to --dst.
    OvsDrop {
        /// Node whose br-int gets the flow (node1, node2...).
        #[arg(long)]
        node: String,
        /// Destination IPv4 to drop (e.g. a pod IP).
        #[arg(long)]
        dst: Ipv4Addr,
    },
    /// Stop the pod's TCP server: connections get RST.
    NoListener {
        /// Pod name or namespace/name.
        #[arg(long)]
        pod: String,
        /// The server port (only the TCP echo server on 8080 exists).
        #[arg(long, default_value_t = TCP_ECHO_PORT)]
        port: u16,
    },
    /// Raise the pod's MTU above what the overlay carries (big DF packets across nodes die).
    Mtu {
        /// Pod name or namespace/name.
        #[arg(long)]
        pod: String,
        /// New MTU of both ends of the pod's veth.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
    },
    /// Cut the tunnel between two nodes.
    TunnelCut {
        /// Node name.
        #[arg(long)]
        from: String,
        /// Node name.
        #[arg(long)]
        to: String,
        /// drop-udp: each node's NIC egress drops the tunnel's UDP to the other (both ways; found
        /// as tunnel_blocked_by_firewall). down: --from's underlay NIC goes down (underlay_down).
        /// firewall: --to's host firewall (nftables inet input) drops the tunnel's UDP from
        /// --from (tunnel_blocked_by_firewall; kernel datapath only). path: the underlay bridge
        /// between the nodes drops their tunnel packets both ways, on neither node
        /// (lost_in_tunnel).
        #[arg(long, value_enum, default_value_t = CutHow::DropUdp)]
        how: CutHow,
    },
    /// OVN ACL (to-lport, priority 2002, drop) for --src -> --dst, like a NetworkPolicy.
    AclDeny {
        /// Client pod (name or namespace/name).
        #[arg(long)]
        src: String,
        /// Server pod; the ACL goes on its logical switch.
        #[arg(long)]
        dst: String,
    },
}

impl FaultCommand {
    fn spec(self, lab: &Lab) -> Result<FaultSpec> {
        // Pods are recorded by name (unique in a lab) whichever way they were given.
        let pod = |r: &str| lab.pod(r).map(|p| p.name.clone());
        Ok(match self {
            FaultCommand::ReplyDrop { pod: p } => FaultSpec::ReplyDrop { pod: pod(&p)? },
            FaultCommand::OvsDrop { node, dst } => FaultSpec::OvsDrop { node, dst },
            FaultCommand::NoListener { pod: p, port } => FaultSpec::NoListener { pod: pod(&p)?, port },
            FaultCommand::Mtu { pod: p, mtu } => FaultSpec::Mtu { pod: pod(&p)?, mtu },
            FaultCommand::TunnelCut { from, to, how } => FaultSpec::TunnelCut { from, to, how },
            FaultCommand::AclDeny { src, dst } => FaultSpec::AclDeny { src: pod(&src)?, dst: pod(&dst)? },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeKind {
    Tcp,
    Udp,
    Ping,
}

#[derive(Debug, Subcommand)]
pub enum MonitorsCommand {
    /// Start a kovn-monitor in every node's netns (as the DaemonSet would), API on
    /// http://<node IP>:9474, and wait until each has attached to its pods and NIC.
    Start {
        #[command(flatten)]
        lab: LabRef,
        /// The kovn-monitor binary [default: target/debug/kovn-monitor of this workspace].
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Extra `kovn-monitor run` arguments, after `--` (e.g. `-- --metrics-pod-labels`).
        #[arg(last = true, value_name = "RUN-ARGS")]
        run_args: Vec<String>,
    },
    /// Stop the monitors (SIGINT, so they detach; SIGKILL after 10 s).
    Stop {
        #[command(flatten)]
        lab: LabRef,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab (nodes, OVN, pods, services) and wait until traffic flows.
    Up(UpArgs),
    /// Remove every process, namespace, link and file of the lab.
    Down {
        #[command(flatten)]
        lab: LabRef,
    },
    /// kovn-monitors, one per node.
    Monitors {
        #[command(subcommand)]
        command: MonitorsCommand,
    },
    /// Show nodes, pods, services, processes, monitors and injected faults.
    Status {
        #[command(flatten)]
        lab: LabRef,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Inject a fault (recorded in lab.json; undo with `heal`).
    Fault {
        #[command(flatten)]
        lab: LabRef,
        #[command(subcommand)]
        fault: FaultCommand,
    },
    /// Undo every injected fault, or one.
    Heal {
        #[command(flatten)]
        lab: LabRef,
        /// Fault id as `status` shows it (e.g. reply-drop:web-2).
        #[arg(long)]
        fault: Option<String>,
    },
    /// Run a bounded, seeded mix of traffic between pods and services; report per item.
    Traffic {
        #[command(flatten)]
        lab: LabRef,
        /// Seconds: rounds of short connections start until then; the long connection lasts it.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seeds the choice of peers: the same seed gives the same mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One probe from a pod: TARGET is a pod (name or ns/name), svc/NAME, or IPv4 with an optional :PORT.
    Probe {
        #[command(flatten)]
        lab: LabRef,
        /// Client pod (name or namespace/name).
        #[arg(long)]
        from: String,
        #[arg(value_enum)]
        kind: ProbeKind,
        /// A pod, svc/NAME, or IPv4 with an optional :PORT (default ports: tcp 8080, udp 5353).
        target: String,
        /// ping: ICMP payload bytes (-s); tcp: bytes to echo.
        #[arg(long)]
        size: Option<u32>,
        /// ping: set Don't Fragment (-M do).
        #[arg(long)]
        df: bool,
    },
}

pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up(args) => cmd_up(args.into()),
        LabCommand::Down { lab } => match down(&lab.target())? {
            DownOutcome::Removed { name } => {
                println!("lab {name} removed");
                Ok(())
            }
            DownOutcome::NothingUp { name } => {
                println!("lab {name} is not up; nothing to do");
                Ok(())
            }
        },
        LabCommand::Monitors { command } => cmd_monitors(command),
        LabCommand::Status { lab, output } => {
            let lab = load(&lab.target())?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lab)?),
                Output::Text => print!("{}", status::render(&lab)),
            }
            Ok(())
        }
        LabCommand::Fault { lab, fault } => {
            let mut lab = load(&lab.target())?;
            let spec = fault.spec(&lab)?;
            let f = lab.inject(spec)?;
            println!("injected {}: {}", f.id, f.detail);
            Ok(())
        }
        LabCommand::Heal { lab, fault } => {
            let mut lab = load(&lab.target())?;
            let healed = lab.heal(fault.as_deref())?;
            if healed.is_empty() {
                println!("no faults to heal");
            }
            for f in healed {
                println!("healed {}", f.id);
            }
            Ok(())
        }
        LabCommand::Traffic { lab, duration, seed, output } => {
            cmd_traffic(&load(&lab.target())?, Duration::from_secs(duration), seed, output)
        }
        LabCommand::Probe { lab, from, kind, target, size, df } => {
            cmd_probe(&load(&lab.target())?, &from, kind, &target, size, df)
        }
    }
}

fn cmd_monitors(command: MonitorsCommand) -> Result<()> {
    match command {
        MonitorsCommand::Start { lab, bin, run_args } => {
            let lab = load(&lab.target())?;
            let bin = bin.unwrap_or_else(monitors::default_bin);
            let started = monitors::start_with(&lab, &bin, &run_args)?;
            println!("kovn-monitors of lab {}:", lab.name);
            for m in &started {
                println!("  {:<7} {:<28} pid {:<8} log {}", m.node, m.url, m.pid, m.log.display());
            }
            if let Some(m) = started.first() {
                println!("try: {} flows --endpoint {}", m.bin.display(), m.url);
            }
        }
        MonitorsCommand::Stop { lab } => {
            let lab = load(&lab.target())?;
            let alive: Vec<String> = monitors::running(&lab)
                .into_iter()
                .filter_map(|(m, pid)| pid.map(|p| format!("{} (pid {p})", m.node)))
                .collect();
            monitors::stop(&lab)?;
            if alive.is_empty() {
                println!("no kovn-monitor of lab {} was running", lab.name);
            } else {
                println!("stopped the kovn-monitors of lab {}: {}", lab.name, alive.join(", "));
            }
        }
    }
    Ok(())
}

fn cmd_up(opts: UpOptions) -> Result<()> {
    let started = std::time::Instant::now();
    match up(&opts)? {
        UpOutcome::AlreadyRunning(lab) => {
            println!(
                "lab {} is already up ({}); left unchanged",
                lab.name,
                if healthy(&lab) { "all processes running" } else { "SOME PROCESSES DEAD: see `lab status`" }
            );
        }
        UpOutcome::Started(lab) => {
            print!("{}", status::render(&lab));
            println!(
                "lab {} up in {:.1}s; description in {}",
                lab.name,
                started.elapsed().as_secs_f32(),
                lab.json_path().display()
            );
        }
    }
    Ok(())
}

fn cmd_traffic(lab: &Lab, duration: Duration, seed: u64, output: Output) -> Result<()> {
    let opts = TrafficOptions { duration, seed };
    let text = output == Output::Text;
    let report = traffic::run(lab, &opts, |plan| {
        if !text {
            return;
        }
        println!("traffic plan (seed {}):", plan.seed);
        for i in &plan.items {
            println!(
                "  {:<12} {:<18} -> {:<18} {:<22} {}",
                i.label,
                i.from,
                i.to,
                i.scenario.as_str(),
                i.probe.describe()
            );
        }
        if let Some(l) = &plan.long {
            println!(
                "  {:<12} {:<18} -> {:<18} {:<22} tcp {} (one connection)",
                "tcp-long",
                l.from,
                l.to,
                l.scenario.as_str(),
                l.dst
            );
        }
        println!("running for {}s...", duration.as_secs());
    })?;
    if !text {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("results ({} rounds in {:.1}s):", report.rounds, report.elapsed_ms as f32 / 1000.0);
        for r in &report.items {
            let verdict = if r.failed == 0 { "ok" } else { "FAILED" };
            println!(
                "  {:<6} {:>3}/{:<3} {:<12} {:<18} -> {:<18} {:<22}{}",
                verdict,
                r.ok,
                r.attempts,
                r.item.label,
                r.item.from,
                r.item.to,
                r.item.scenario.as_str(),
                match (&r.last_error, r.retried) {
                    (Some(e), 0) => format!(" last error: {e}"),
                    (Some(e), n) => format!(" {n} passed on the retry; last error: {e}"),
                    (None, _) => String::new(),
                }
            );
        }
        if let Some(l) = &report.long {
            println!(
                "  {:<6} {:>3}/{:<3} {:<12} {:<18} -> {:<18} {:<22} {}",
                if l.ok { "ok" } else { "FAILED" },
                l.echoed,
                l.sent,
                "tcp-long",
                l.item.from,
                l.item.to,
                l.item.scenario.as_str(),
                l.detail
            );
        }
    }
    if !report.all_ok() {
        bail!("some traffic failed");
    }
    Ok(())
}

/// Resolves a probe target: a pod, `svc/NAME` (or `svc/NS/NAME`), or an IPv4 address with an
/// optional port. Returns the address and the port when the target implies one.
fn resolve_target(lab: &Lab, target: &str, kind: ProbeKind) -> Result<(Ipv4Addr, Option<u16>)> {
    if let Ok(addr) = target.parse::<SocketAddrV4>() {
        return Ok((*addr.ip(), Some(addr.port())));
    }
    if let Ok(ip) = target.parse::<Ipv4Addr>() {
        return Ok((ip, None));
    }
    if let Some(svc) = target.strip_prefix("svc/") {
        let name = svc.rsplit('/').next().unwrap_or(svc);
        let protocol = match kind {
            ProbeKind::Udp => Protocol::Udp,
            _ => Protocol::Tcp,
        };
        let s = lab
            .service(name, protocol)
            .with_context(|| format!("no {} service {name}", protocol.as_str()))?;
        return Ok((s.vip, Some(s.port)));
    }
    let pod = lab.pod(target)?;
    let port = match kind {
        ProbeKind::Tcp => Some(pod.tcp_port),
        ProbeKind::Udp => Some(pod.udp_port),
        ProbeKind::Ping => None,
    };
    Ok((pod.ip, port))
}

fn cmd_probe(
    lab: &Lab,
    from: &str,
    kind: ProbeKind,
    target: &str,
    size: Option<u32>,
    df: bool,
) -> Result<()> {
    let (ip, port) = resolve_target(lab, target, kind)?;
    let port_or = |default: u16| SocketAddrV4::new(ip, port.unwrap_or(default));
    let probe = match kind {
        ProbeKind::Tcp => {
            Probe::TcpEcho { dst: port_or(TCP_ECHO_PORT), bytes: size.map_or(64, |s| s as usize) }
        }
        ProbeKind::Udp => Probe::UdpEcho { dst: port_or(UDP_ECHO_PORT) },
        ProbeKind::Ping => Probe::Ping { dst: ip, size, dont_fragment: df },
    };
    let r = probe::run(lab, from, &probe, probe::PROBE_TIMEOUT)?;
    println!(
        "{} {} -> {}: {} in {} ms ({})",
        if r.ok { "ok" } else { "FAILED" },
        from,
        probe.describe(),
        if r.ok { "answered" } else { "no answer" },
        r.elapsed_ms,
        r.detail
    );
    if !r.ok {
        bail!("probe failed");
    }
    Ok(())
}
