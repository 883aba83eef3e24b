//! `kovn-monitor run`: attach to the node's pod interfaces as they come and go, poll the
//! kernel's flow map, keep the flow table, serve the API; detach everything on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::sync::{mpsc, watch};

use crate::api::{self, AttachedInterface, Health, ProgramInfo, Shared, Snapshot};
use crate::capture::{Capture, CaptureError};
use crate::flows::{Clock, FlowTable};
use crate::interfaces::{self, LinkEvent, Selector};
use crate::inventory::{self, Inventory};
use crate::ovsdb;

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub listen: SocketAddr,
    pub pod_patterns: Vec<String>,
    pub ifaces: Vec<String>,
    pub underlay_ifaces: Vec<String>,
    pub poll_interval: Duration,
    pub flow_idle_timeout: Duration,
    pub flow_retention: Duration,
    pub flow_table_size: u32,
    pub node_name: String,
    /// The node's Open_vSwitch database (pod identity as Kube-OVN writes it).
    pub ovsdb: Option<ovsdb::Address>,
    /// The OVN southbound database (pods of other nodes, chassis, load balancers).
    pub ovn_sb: Option<ovsdb::Address>,
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
}

impl Daemon {
    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Present(link) => {
                let Some(kind) = self.selector.classify(&link.name) else {
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
                    return;
                }
                self.table.set_iface_name(link.index, &link.name);
                match self.capture.attach(link.index, &link.name, kind, link.mtu) {
                    Ok(()) => {
                        log::info!("attached to {} (ifindex {}, {})", link.name, link.index, kind.as_str())
                    }
                    Err(e) => log::warn!("cannot attach to {}: {e}", link.name),
                }
            }
            LinkEvent::Gone(index) => {
                if let Some(a) = self.capture.detach(index) {
                    log::info!("{} is gone; detached", a.name);
                }
            }
        }
    }

    fn poll(&mut self) {
        let started = Instant::now();
        let clock = Clock::now();
        match self.capture.read_flows() {
            Ok(kernel) => {
                let idle = self.table.merge(kernel, clock.mono_now_ns());
                if !idle.is_empty()
                    && let Err(e) = self.capture.remove_flows(&idle)
                {
                    log::warn!("expiring idle flows: {e}");
                }
                self.table.prune(clock.mono_now_ns());
            }
            Err(e) => log::warn!("reading the flow map: {e}"),
        }
        let counters = self.capture.counters().unwrap_or_default();
        let health = Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attached_interfaces: self
                .capture
                .attachments()
                .iter()
                .map(|(i, a)| AttachedInterface {
                    name: a.name.clone(),
                    ifindex: *i,
                    kind: a.kind.as_str().into(),
                    mtu: a.mtu,
                })
                .collect(),
            programs: self.capture.programs().into_iter().map(ProgramInfo::from).collect(),
            flow_table_entries: self.table.len(),
            flow_table_capacity: self.capture.table_size(),
            kernel_counters: counters.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            poll_duration_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        let inventory = self.inventory.read().unwrap_or_else(|p| p.into_inner());
        let snap = Snapshot {
            node: self.cfg.node_name.clone(),
            time: clock.rfc3339(clock.mono_now_ns()),
            flows: self.table.snapshot(&clock, &inventory),
            pods: inventory.pods().into_iter().cloned().collect(),
            alerts: Vec::new(),
            health,
        };
        drop(inventory);
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }
}

/// Watches the configured OVSDB sources and applies their changes to the inventory.
fn spawn_inventory(cfg: &RunConfig, inventory: Arc<RwLock<Inventory>>) {
    let (tx, mut rx) = mpsc::channel::<ovsdb::Updates>(64);
    if let Some(addr) = cfg.ovsdb.clone() {
        tokio::spawn(ovsdb::watch(addr, "Open_vSwitch", inventory::OVS_TABLES, tx.clone()));
    }
    if let Some(addr) = cfg.ovn_sb.clone() {
        tokio::spawn(ovsdb::watch(addr, "OVN_Southbound", inventory::SB_TABLES, tx.clone()));
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
    let selector = Selector::new(&cfg.pod_patterns, &cfg.ifaces, &cfg.underlay_ifaces)?;
    for name in selector.explicit() {
        if ifindex_of(name).is_none() {
            bail!("unknown interface {name:?} (not in this network namespace)");
        }
    }
    let capture = Capture::load(cfg.flow_table_size).map_err(explain_load_error)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let shared: Shared =
        Arc::new(RwLock::new(Snapshot { node: cfg.node_name.clone(), ..Default::default() }));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(api::serve(listener, shared.clone(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let (link_tx, mut link_rx) = mpsc::channel(1024);
    let watcher = tokio::spawn(interfaces::watch(link_tx));
    log::info!(
        "kovn-monitor {} on node {}: API on http://{}, pod interfaces {:?}, extra {:?}, underlay {:?}",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name,
        cfg.listen,
        cfg.pod_patterns,
        cfg.ifaces,
        cfg.underlay_ifaces
    );
    let inventory = Arc::new(RwLock::new(Inventory::new(&cfg.node_name)));
    spawn_inventory(&cfg, inventory.clone());
    let table = FlowTable::new(cfg.flow_idle_timeout, cfg.flow_retention);
    let mut d = Daemon { cfg: cfg.clone(), selector, capture, table, shared, inventory: inventory.clone() };
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let result = loop {
        tokio::select! {
            ev = link_rx.recv() => match ev {
                Some(ev) => d.on_link(ev),
                None => break Err(anyhow::anyhow!("interface watcher stopped: {:?}", watcher.await)),
            },
            _ = tick.tick() => d.poll(),
            sig = &mut signal => {
                log::info!("{sig}: detaching and exiting");
                break Ok(());
            }
        }
    };
    d.capture.detach_all();
    drop(d);
    let _ = stop_tx.send(true);
    let _ = server.await;
    result
}
