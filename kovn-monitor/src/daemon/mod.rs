//! `kovn-monitor run`: attach to the node's pod interfaces as they come and go, poll the
//! kernel's flow map, keep the flow table, serve the API; detach everything on SIGINT/SIGTERM.

mod peers;
mod poll;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::sync::{mpsc, watch};

#[cfg(test)]
pub(crate) use self::poll::link_flows_to_alerts;
use crate::api::{self, Shared, Snapshot};
use crate::capture::{Capture, CaptureError};
use crate::detection::{self, CommandContext, Detector, DetectorConfig, PeerView};
use crate::flows::FlowTable;
use crate::interfaces::{self, LinkEvent, Selector};
use crate::inventory::{self, Inventory};
use crate::{kube as kube_source, ovsdb};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub listen: SocketAddr,
    /// Thresholds of the detectors.
    pub detector: DetectorConfig,
    /// Port of the other nodes' monitors (their API), asked for verdicts on cross-node flows.
    pub peer_port: u16,
    pub pod_patterns: Vec<String>,
    pub ifaces: Vec<String>,
    pub underlay_ifaces: Vec<String>,
    /// Tunnel devices of OVS's kernel datapath, by exact name (attached whenever they exist).
    pub tunnel_ifaces: Vec<String>,
    /// The path MTU of pod traffic (the overlay's); None: each pod veth's own MTU.
    pub overlay_mtu: Option<u32>,
    pub poll_interval: Duration,
    /// Drop records idle this long leave the kernel map (`--drop-record-ttl`).
    pub drop_record_ttl: Duration,
    pub flow_idle_timeout: Duration,
    pub flow_retention: Duration,
    pub flow_table_size: u32,
    /// The per-pod new-flow budget (`--pod-new-flow-rate`, `--pod-new-flow-burst`).
    pub flow_budget: crate::guard::FlowBudget,
    /// `/metrics` labelling and series TTL (`--metrics-pod-labels`, `--metrics-series-ttl`).
    pub metrics: crate::export::MetricsConfig,
    pub node_name: String,
    /// The node's Open_vSwitch database (pod identity as Kube-OVN writes it).
    pub ovsdb: Option<ovsdb::Address>,
    /// The OVN southbound database (pods of other nodes, chassis, load balancers).
    pub ovn_sb: Option<ovsdb::Address>,
    /// The Kubernetes API source (workloads, services, nodes, subnets): `--kubernetes`,
    /// `--kubeconfig`.
    pub kubernetes: kube_source::KubeOptions,
    /// The OVS/OVN drill-down (`--ovs-rundir`, `--enable-trace-api`, ...).
    pub trace: crate::drilldown::TraceArgs,
    /// A static inventory file (`--inventory-file`): stands in for the Kubernetes API.
    pub inventory_file: Option<std::path::PathBuf>,
    /// Push findings to this Alertmanager (its v2 alerts endpoint), re-sent every interval.
    pub alertmanager: Option<(reqwest::Url, Duration)>,
    /// How the API is served: limits, TLS, `--auth`, and the health probe the loops report to.
    pub server: crate::server::ServerOptions,
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn explain_load_error(e: CaptureError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow::anyhow!("{text} (loading eBPF programs needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON)")
    } else {
        anyhow::Error::new(e)
    }
}

struct Daemon {
    cfg: RunConfig,
    selector: Selector,
    capture: Capture,
    table: FlowTable,
    shared: Shared,
    inventory: Arc<RwLock<Inventory>>,
    exporter: crate::export::Exporter,
    detector: Detector,
    /// When each firing finding last got its verdict.
    verdict_at: std::collections::HashMap<String, Instant>,
    /// Questions to the peer nodes' monitors, asked in the background.
    peers: peers::Peers,
    /// Peer answers not used by a verdict yet, by finding id.
    peer_answers: std::collections::HashMap<String, PeerView>,
    commands: CommandContext,
    /// Drill-down on alert (None with --no-trace-on-alert).
    drill: Option<crate::drilldown::OnAlert>,
    /// Why the OVS over-MTU kprobe does not run (checked once at start).
    ovs_kprobe_why: String,
    /// The findings for the Alertmanager pusher (`--alertmanager-url`), when on.
    alerts_tx: Option<watch::Sender<Vec<detection::Alert>>>,
    /// The pod veths whose peer's network namespace the drop program watches: host veth
    /// ifindex → netns inode (bounded like the kernel map, `DROP_POD_NETNS_MAX`).
    pod_netns: std::collections::BTreeMap<u32, u32>,
    netns: crate::netns::NetnsResolver,
    /// `flow_flood` findings from the pod guards' refused counts.
    flood: crate::guard::FloodDetector,
    /// Flows in the kernel's table after the last poll (read, minus the idle ones removed):
    /// what `flow_table_entries` reports. The userspace table also keeps expired flows for
    /// `--flow-retention`, about twice as many.
    kernel_fill: usize,
    /// Flows with drops as the last poll published them, by id: (the table's flow, the copy
    /// with its drops). Bounded by the drop map's records.
    with_drops: std::collections::HashMap<String, (Arc<crate::flows::Flow>, Arc<crate::flows::Flow>)>,
    /// The underlay NICs' link state and addresses (`--underlay-iface`), from netlink.
    underlay: crate::underlay::Underlay,
}

impl Daemon {
    fn on_link(&mut self, ev: LinkEvent) {
        let now = time::OffsetDateTime::now_utc();
        match ev {
            LinkEvent::Address { index, addr, present } => {
                self.underlay.on_address(index, addr, present, now)
            }
            LinkEvent::Addresses(all) => self.underlay.on_addresses(&all, now),
            LinkEvent::Present(link) => {
                self.underlay.on_link(&link, now);
                let kind = self.selector.classify(&link.name);
                self.follow_pod_netns(&link, kind);
                let Some(kind) = kind else {
                    // A watched index renamed to something we do not watch.
                    if self.capture.attachments().contains_key(&link.index) {
                        self.capture.detach(link.index);
                        log::info!("detached from {} (renamed)", link.name);
                    }
                    return;
                };
                let known = self.capture.attachments().get(&link.index).map(|a| (a.name.clone(), a.kind));
                if known.as_ref().is_some_and(|(n, k)| *n == link.name && *k == kind) {
                    // RTM_NEWLINK also reports state changes: only the MTU may matter.
                    let _ = self.capture.attach(link.index, &link.name, kind, link.mtu);
                    self.set_path_mtu(link.index, kind, link.mtu);
                    return;
                }
                self.table.set_iface_name(link.index, &link.name);
                match self.capture.attach(link.index, &link.name, kind, link.mtu) {
                    Ok(()) => {
                        self.set_path_mtu(link.index, kind, link.mtu);
                        log::info!("attached to {} (ifindex {}, {})", link.name, link.index, kind.as_str())
                    }
                    Err(e) => log::warn!("cannot attach to {}: {e}", link.name),
                }
            }
            LinkEvent::Gone(index) => {
                self.underlay.on_gone(index, now);
                self.unwatch_pod_netns(index);
                self.table.iface_gone(index);
                if let Some(a) = self.capture.detach(index) {
                    log::info!("{} is gone; detached", a.name);
                }
            }
            LinkEvent::Listed(present) => {
                self.underlay.on_listed(&present, now);
                // A full list: whatever we hold that is not in it went while events were lost.
                let present: std::collections::HashSet<u32> = present.into_iter().collect();
                let gone: Vec<u32> = self
                    .capture
                    .attachments()
                    .keys()
                    .chain(self.pod_netns.keys())
                    .copied()
                    .filter(|i| !present.contains(i))
                    .collect();
                for index in gone {
                    self.unwatch_pod_netns(index);
                    self.table.iface_gone(index);
                    if let Some(a) = self.capture.detach(index) {
                        log::info!("{} is gone (found by listing the links again); detached", a.name);
                    }
                }
            }
        }
    }

    /// Keeps the drop program's set of pod namespaces in step with the pod veths: a pod
    /// veth's peer namespace (`IFLA_LINK_NETNSID`, resolved to its inode) is watched while the
    /// veth exists; CNI moves the peer after creating the pair, which arrives as a change.
    fn follow_pod_netns(&mut self, link: &interfaces::Link, kind: Option<interfaces::IfaceKind>) {
        if !self.capture.drop_hook().available {
            return;
        }
        let inode = match (kind, link.peer_nsid) {
            (Some(interfaces::IfaceKind::Pod), Some(nsid)) => match self.netns.inode_of(nsid) {
                Ok(Some(inode)) => Some(inode),
                Ok(None) => {
                    log::warn!(
                        "{}: its pod's network namespace (nsid {nsid}) is not among those this monitor can open (/run/netns, /proc/*/ns/net): drops inside that pod are not seen",
                        link.name
                    );
                    None
                }
                Err(e) => {
                    log::warn!("{}: resolving its pod's network namespace: {e}", link.name);
                    None
                }
            },
            _ => None,
        };
        if self.pod_netns.get(&link.index).copied() == inode {
            return;
        }
        self.unwatch_pod_netns(link.index);
        let Some(inode) = inode else { return };
        if self.pod_netns.len() >= kovn_ebpf_common::DROP_POD_NETNS_MAX as usize {
            log::warn!(
                "{}: {} pod namespaces are watched already (the bound): drops inside this pod are not seen",
                link.name,
                kovn_ebpf_common::DROP_POD_NETNS_MAX
            );
            return;
        }
        self.pod_netns.insert(link.index, inode);
        match self.capture.sync_pod_netns(&self.watched_netns(), inode) {
            Ok(()) => {
                log::info!("drops inside the pod behind {} (netns inode {inode}) are watched", link.name)
            }
            Err(e) => {
                self.pod_netns.remove(&link.index);
                log::warn!("{}: watching its pod's network namespace: {e}", link.name)
            }
        }
    }

    /// The watched pod namespaces: inode → host veth ifindex (the lowest of a pod's veths).
    fn watched_netns(&self) -> std::collections::BTreeMap<u32, u32> {
        let mut out = std::collections::BTreeMap::new();
        for (&ifindex, &inode) in &self.pod_netns {
            out.entry(inode).or_insert(ifindex);
        }
        out
    }

    fn unwatch_pod_netns(&mut self, index: u32) {
        if let Some(inode) = self.pod_netns.remove(&index)
            && let Err(e) = self.capture.sync_pod_netns(&self.watched_netns(), inode)
        {
            log::warn!("netns inode {inode}: {e}");
        }
    }

    /// Pod veths must fit the overlay's path MTU (what the tunnel carries); other interfaces
    /// their own MTU.
    fn set_path_mtu(&mut self, ifindex: u32, kind: interfaces::IfaceKind, mtu: u32) {
        let path = match kind {
            interfaces::IfaceKind::Pod => self.cfg.overlay_mtu.unwrap_or(mtu),
            _ => mtu,
        };
        if let Err(e) = self.capture.set_path_mtu(ifindex, path) {
            log::warn!("path MTU of ifindex {ifindex}: {e}");
        }
    }
}

/// The name of the network namespace this process runs in, if it is one of `ip netns`'s
/// (the lab): commands for operators must then run inside it.
fn netns_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    std::fs::read_dir("/var/run/netns")
        .ok()?
        .flatten()
        .find_map(|e| (e.metadata().ok()?.ino() == me).then(|| e.file_name().to_string_lossy().into_owned()))
}

/// How to phrase commands for this node's OVS/OVN (see `CommandContext`).
fn command_context(cfg: &RunConfig) -> CommandContext {
    let br_int = match &cfg.ovsdb {
        Some(ovsdb::Address::Unix(p))
            if p != std::path::Path::new("/var/run/openvswitch/db.sock")
                && p != std::path::Path::new("/run/openvswitch/db.sock") =>
        {
            p.parent().map(|d| format!("unix:{}/br-int.mgmt", d.display())).unwrap_or_else(|| "br-int".into())
        }
        _ => "br-int".into(),
    };
    CommandContext {
        ovn_sb: cfg.ovn_sb.as_ref().map(|a| a.to_string()),
        br_int,
        netns: netns_name(),
        logical_switch: "ovn-default".into(),
    }
}

/// Watches the configured OVSDB sources and applies their changes to the inventory.
fn spawn_inventory(cfg: &RunConfig, inventory: Arc<RwLock<Inventory>>) {
    let (tx, mut rx) = mpsc::channel::<ovsdb::Updates>(64);
    let probe = cfg.server.probe.clone();
    if let Some(addr) = cfg.ovsdb.clone() {
        let tx = crate::health::follow_source(&probe, "ovsdb", tx.clone());
        tokio::spawn(ovsdb::watch(addr, "Open_vSwitch", inventory::OVS_TABLES, tx));
    }
    if let Some(addr) = cfg.ovn_sb.clone() {
        let tx = crate::health::follow_source(&probe, "ovn_sb", tx.clone());
        tokio::spawn(ovsdb::watch(addr, "OVN_Southbound", inventory::SB_TABLES, tx));
    }
    drop(tx);
    tokio::spawn(async move {
        while let Some(u) = rx.recv().await {
            inventory.write().unwrap_or_else(|p| p.into_inner()).apply(u);
        }
    });
}

async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return tokio::signal::ctrl_c().await.map(|_| "SIGINT").unwrap_or("SIGINT"),
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

pub async fn run(cfg: RunConfig) -> Result<()> {
    let selector = Selector::new(&cfg.pod_patterns, &cfg.ifaces, &cfg.underlay_ifaces, &cfg.tunnel_ifaces)?;
    for name in selector.explicit() {
        if ifindex_of(name).is_none() {
            bail!("unknown interface {name:?} (not in this network namespace)");
        }
    }
    let capture =
        Capture::load_full(cfg.flow_table_size, crate::capture::FlowTableKind::Slots, cfg.flow_budget)
            .map_err(explain_load_error)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let shared = Shared::new(Snapshot { node: cfg.node_name.clone(), ..Default::default() });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let exporter = crate::export::Exporter::new(cfg.metrics);
    let inventory = Arc::new(RwLock::new(Inventory::new(&cfg.node_name)));
    let tracer = Arc::new(crate::drilldown::Tracer::new(
        cfg.trace.config(cfg.ovn_sb.as_ref().map(|a| a.to_string()), cfg.peer_port),
        &cfg.node_name,
        shared.clone(),
        inventory.clone(),
    ));
    let trace_routes = crate::drilldown::router(tracer.clone());
    let server = tokio::spawn(api::serve(
        listener,
        shared.clone(),
        exporter.metrics(),
        trace_routes,
        cfg.server.clone(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let (link_tx, mut link_rx) = mpsc::channel(1024);
    let watcher = tokio::spawn(interfaces::watch(link_tx, interfaces::RELIST_EVERY));
    log::info!(
        "kovn-monitor {} on node {}: API on http://{}, pod interfaces {:?}, extra {:?}, underlay {:?}",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name,
        cfg.listen,
        cfg.pod_patterns,
        cfg.ifaces,
        cfg.underlay_ifaces
    );
    spawn_inventory(&cfg, inventory.clone());
    // Kubernetes API source: off when there is no API to talk to; only an explicit
    // --kubeconfig that cannot be used stops the daemon.
    if let Some(path) = &cfg.inventory_file {
        // Checked now so a typo stops the daemon with the reason; later edits are followed.
        crate::inventory_file::load(path)?;
        log::info!("inventory file {}: stands in for the Kubernetes API (source off)", path.display());
        tokio::spawn(crate::inventory_file::follow(path.clone(), inventory.clone(), Duration::from_secs(2)));
    } else if let Some(client) = kube_source::connect(&cfg.kubernetes).await? {
        tokio::spawn(kube_source::feed(client, inventory.clone()));
    }
    let table = FlowTable::new(cfg.flow_idle_timeout, cfg.flow_retention);
    let mut d = Daemon {
        cfg: cfg.clone(),
        selector,
        capture,
        table,
        shared,
        inventory: inventory.clone(),
        exporter,
        detector: Detector::new(&cfg.node_name, cfg.detector.clone()),
        verdict_at: std::collections::HashMap::new(),
        peers: peers::Peers::spawn(cfg.peer_port),
        peer_answers: std::collections::HashMap::new(),
        commands: command_context(&cfg),
        drill: (!cfg.trace.no_trace_on_alert).then(|| crate::drilldown::OnAlert::new(tracer)),
        alerts_tx: None,
        ovs_kprobe_why: crate::capture::ovs_vport_kprobe_unavailable(),
        pod_netns: std::collections::BTreeMap::new(),
        netns: crate::netns::NetnsResolver::default(),
        flood: crate::guard::FloodDetector::new(
            &cfg.node_name,
            cfg.detector.resolve_after,
            cfg.detector.retention,
        ),
        kernel_fill: 0,
        with_drops: std::collections::HashMap::new(),
        underlay: crate::underlay::Underlay::new(&cfg.underlay_ifaces, time::OffsetDateTime::now_utc()),
    };
    log::info!("OVS over-MTU kprobe unavailable: {}", d.ovs_kprobe_why);
    if let Some((url, resend)) = cfg.alertmanager.clone() {
        let (tx, rx) = watch::channel(Vec::new());
        // The API as other machines reach it: the node's name when listening on all addresses.
        let scheme = crate::auth::peer_scheme();
        let endpoint = if cfg.listen.ip().is_unspecified() {
            format!("{scheme}://{}:{}", cfg.node_name, cfg.listen.port())
        } else {
            format!("{scheme}://{}", cfg.listen)
        };
        log::info!("pushing findings to {url} every {}s while firing", resend.as_secs());
        tokio::spawn(crate::alertmanager::run(url, endpoint, resend, rx));
        d.alerts_tx = Some(tx);
    }
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let result = loop {
        // Interface events first: a pod veth is attached (or let go) before the next poll, however
        // long polls take on a busy node.
        tokio::select! {
            biased;
            sig = &mut signal => {
                log::info!("{sig}: detaching and exiting");
                break Ok(());
            }
            ev = link_rx.recv() => match ev {
                Some(ev) => d.on_link(ev),
                None => break Err(anyhow::anyhow!("interface watcher stopped: {:?}", watcher.await)),
            },
            _ = tick.tick() => d.poll(),
        }
    };
    d.capture.detach_all();
    drop(d);
    let _ = stop_tx.send(true);
    let _ = server.await;
    result
}
