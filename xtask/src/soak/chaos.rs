//! The soak's disturbances around the monitors (not in the pods): a real Alertmanager stopped
//! and started, a node's OVSDB server stopped and started, slow HTTP clients held against every
//! monitor's API, and the watch that every finding a fault raised resolves after the heal.
//!
//! Each records what it did and saw ([`AmRestart`], [`OvsdbRestart`], [`FaultWatch`]); the
//! verdict on those records is [`super::judge::chaos_failures`] (pure, unit-tested).
//!
//! Size: the soak's disturbances (Alertmanager, OVSDB, slow clients, veth churn, faults), one
//! function each.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::load::Ctx;
use crate::lab::monitors::{self, get_json};
use crate::lab::{self, sys};

/// How long Alertmanager stays stopped at each restart.
pub const AM_DOWN: Duration = Duration::from_secs(20);
/// The monitors' `--alertmanager-resend-interval` in the soak: a finding firing when
/// Alertmanager comes back must be there within two of these plus [`AM_SLACK`].
pub const AM_RESEND: Duration = Duration::from_secs(10);
pub const AM_SLACK: Duration = Duration::from_secs(10);
/// How long a node's OVSDB server stays stopped at each restart.
pub const OVSDB_DOWN: Duration = Duration::from_secs(10);
/// After the OVSDB server is back, the monitor must name the node's pods again within this.
pub const INVENTORY_WITHIN: Duration = Duration::from_secs(30);
/// A slow client that sends bytes sends one every this often (a request header of ~60 bytes
/// would take minutes: the server's `--header-timeout` closes it first, and it reconnects).
const TRICKLE_EVERY: Duration = Duration::from_secs(2);

/// Counters of the slow clients, for the report.
#[derive(Debug, Default, Serialize)]
pub struct SlowCounts {
    /// Connections open now and the most open at once (over all monitors).
    pub held: AtomicU64,
    pub held_max: AtomicU64,
    /// Connections the server closed (header/idle timeout), each then opened again.
    pub closed_by_server: AtomicU64,
    /// Connects that failed or timed out (a full accept queue shows here).
    pub connect_failures: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// A finding as `/api/v1/alerts` lists it: the node that reported it, its id and kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FindingRef {
    pub node: String,
    pub id: String,
    pub kind: String,
}

impl std::fmt::Display for FindingRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} on {}", self.kind, self.id, self.node)
    }
}

/// One stop and start of Alertmanager.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AmRestart {
    pub down_at_s: f64,
    pub up_at_s: f64,
    /// Findings firing on the monitors when it was back.
    pub firing: Vec<FindingRef>,
    /// Of those, the ones not in its `GET /api/v2/alerts` within the bound and still firing on
    /// their monitor then.
    pub missing: Vec<FindingRef>,
    /// Seconds after `up_at_s` until every firing finding was there.
    pub delivered_after_s: Option<f64>,
    /// The restart itself failed (not a kovn failure, but the run then says less).
    pub error: Option<String>,
}

/// One stop and start of a node's OVSDB server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OvsdbRestart {
    pub node: String,
    pub down_at_s: f64,
    pub up_at_s: f64,
    /// The node's lab pods (`namespace/name`) `/api/v1/pods` named while the server was down
    /// (the monitor keeps its last view, and the lab also gives it a static inventory file).
    pub pods_named_while_down: Option<usize>,
    /// `/readyz` said ready while the server was down (it says `inventory not synced: ovsdb`
    /// from the monitor's reconnection until its new snapshot).
    pub ready_while_down: Option<bool>,
    /// Seconds after `up_at_s` until `/readyz` was ready again: the OVSDB source re-synced.
    pub ready_after_s: Option<f64>,
    /// Seconds after `up_at_s` until `/api/v1/pods` named every pod of the node again.
    pub inventory_back_after_s: Option<f64>,
    /// Pods still not named at the bound.
    pub missing_pods: Vec<String>,
    /// ovs-vswitchd kept its pid through the restart (only the db server was restarted).
    pub vswitchd_kept: bool,
    pub error: Option<String>,
}

/// The findings one fault raised and whether they resolved after its heal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultWatch {
    pub fault: String,
    pub injected_at_s: f64,
    pub healed_at_s: f64,
    /// Findings firing during the fault that were not firing just before it.
    pub fired: Vec<FindingRef>,
    /// Of those, the ones still firing `--resolve-within` after the heal.
    pub unresolved: Vec<FindingRef>,
    /// Seconds after the heal until none of them was firing.
    pub resolved_after_s: Option<f64>,
    /// The bound counted from here (s since the start): the heal, or the end of an OVSDB
    /// restart after it (see [`OVSDB_OUTAGE`]).
    pub bound_from_s: f64,
}

/// Everything the disturbances recorded.
#[derive(Debug, Default, Serialize)]
pub struct ChaosRecord {
    pub alertmanager_url: Option<String>,
    pub am_restarts: Vec<AmRestart>,
    pub ovsdb_restarts: Vec<OvsdbRestart>,
    pub faults: Vec<FaultWatch>,
    pub slow_clients_per_monitor: u32,
    pub slow: SlowCounts,
}

pub type Shared = Arc<Mutex<ChaosRecord>>;

/// `f` on a thread of its own inside the node's network namespace `netns`. The soak reads the
/// monitors from there (the node IP is local: no lab network in between): with a node's OVSDB
/// server stopped, the root netns cannot reach the node's IP at all (measured: ping and TCP to
/// it fail until ovsdb-server is back; the lab's path goes through OVS's br-phy), which says
/// nothing about the monitor.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let netns = netns.to_string();
    thread::spawn(move || {
        super::load::enter_netns(&netns)?;
        f()
    })
    .join()
    .unwrap_or_else(|_| bail!("a reader thread panicked"))
}

/// `GET url` (JSON) from inside `netns`.
pub fn get_json_in(netns: &str, url: &str, timeout: Duration) -> Result<Value> {
    let url = url.to_string();
    in_netns(netns, move || get_json(&url, timeout))
}

/// Alertmanager's and the OVSDB server's restarts take turns: while a node's OVSDB server is
/// down its monitor cannot reach Alertmanager either (the lab's path, see [`in_netns`]), which
/// would make a late delivery the lab's doing.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// While a node's OVSDB server is down its IP is unreachable through OVS (see [`in_netns`]) and
/// its pods' requests may fail, and findings that fired during a fault may be fed again by them. The
/// resolution bound therefore counts from the later of the heal and the OVSDB server's return.
/// (down now, when it was last back)
static OVSDB_OUTAGE: Mutex<(bool, Option<Instant>)> = Mutex::new((false, None));

fn set_ovsdb_down(down: bool) {
    let mut o = OVSDB_OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
    o.0 = down;
    if !down {
        o.1 = Some(Instant::now());
    }
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// The firing findings of `/api/v1/alerts` (its `alerts` array), by node, id and kind.
pub fn firing(node: &str, v: &Value) -> BTreeSet<FindingRef> {
    v["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| {
            Some(FindingRef {
                node: node.to_string(),
                id: a["id"].as_str()?.to_string(),
                kind: a["kind"].as_str().unwrap_or("?").to_string(),
            })
        })
        .collect()
}

/// Of `expected`, the findings Alertmanager's `GET /api/v2/alerts` answer `v` does not hold (as
/// pushed by kovn-monitor: labels `node` and `alert_id`), in any state.
pub fn missing_in_alertmanager(expected: &[FindingRef], v: &Value) -> Vec<FindingRef> {
    let have: BTreeSet<(&str, &str)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["labels"]["node"].as_str()?, a["labels"]["alert_id"].as_str()?)))
        .collect();
    expected.iter().filter(|f| !have.contains(&(f.node.as_str(), f.id.as_str()))).cloned().collect()
}

/// Of `expected` (`namespace/name`), the pods `/api/v1/pods` answer `v` does not name.
pub fn pods_missing(expected: &[String], v: &Value) -> Vec<String> {
    let have: BTreeSet<String> = v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some(format!("{}/{}", p["namespace"].as_str()?, p["name"].as_str()?)))
        .collect();
    expected.iter().filter(|p| !have.contains(*p)).cloned().collect()
}

/// Every monitor's firing findings, and whether every monitor answered (one that did not adds
/// nothing; its health is the sampler's to judge, but no conclusion is drawn from its silence).
fn firing_everywhere(ctx: &Ctx) -> (BTreeSet<FindingRef>, bool) {
    let mut out = BTreeSet::new();
    let mut all = true;
    for n in &ctx.lab.nodes {
        let url = format!("{}/api/v1/alerts?state=firing", monitors::monitor_url(&ctx.lab, &n.name));
        match get_json_in(&n.netns, &url, Duration::from_secs(3)) {
            Ok(v) => out.extend(firing(&n.name, &v)),
            Err(_) => all = false,
        }
    }
    (out, all)
}

// ---------------------------------------------------------------- Alertmanager

/// Debian's `prometheus-alertmanager`, as tests/tests/alerting.rs runs it, on a fixed address so
/// that a restart comes back where the monitors push.
pub struct Alertmanager {
    pub url: String,
    listen: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Alertmanager {
    /// Starts it on `ip` (the lab's underlay host address, which every node reaches), its
    /// config, data and log in `dir`.
    pub fn start(ip: Ipv4Addr, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Nothing to notify: the soak reads Alertmanager's own API.
        std::fs::write(
            dir.join("alertmanager.yml"),
            "route:\n  receiver: none\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: none\n",
        )?;
        let port = TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).context("a free port")?.port();
        let listen = format!("{ip}:{port}");
        let mut am = Self { url: format!("http://{listen}"), listen, dir, child: None };
        am.spawn()?;
        Ok(am)
    }

    fn spawn(&mut self) -> Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("alertmanager.log"))?;
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", self.dir.join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", self.dir.join("data").display()))
            .arg(format!("--web.listen-address={}", self.listen))
            // A single instance: no gossip port.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("prometheus-alertmanager (installed by scripts/setup.sh)")?;
        self.child = Some(child);
        let ready = sys::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            get_json(&format!("{}/api/v2/status", self.url), Duration::from_secs(2)).is_ok()
        });
        if !ready {
            self.stop();
            bail!("alertmanager on {} did not answer within 30 s (log: {})", self.url, self.dir.display());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s; reaped.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            set_ovsdb_down(true);
            if !sys::terminate(pid, false, Duration::from_secs(5)) {
                set_ovsdb_down(false);
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    fn alerts(&self) -> Result<Value> {
        get_json(&format!("{}/api/v2/alerts", self.url), Duration::from_secs(3))
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every `every` (then at the next fault's injection, when faults run, so findings fire while
/// it is down), Alertmanager is stopped for [`AM_DOWN`] and started again; then the findings
/// firing on the monitors must reach it.
pub fn alertmanager_restarts(
    ctx: &Ctx,
    am: Arc<Mutex<Alertmanager>>,
    every: Duration,
    align_with_faults: bool,
    start: Instant,
    record: Shared,
) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        while ctx.sleep(every) {
            if align_with_faults {
                let seen = ctx.counts.faults_injected.load(Ordering::Relaxed);
                while ctx.counts.faults_injected.load(Ordering::Relaxed) == seen {
                    if !ctx.sleep(Duration::from_millis(200)) {
                        return;
                    }
                }
            }
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
            let mut r = AmRestart { down_at_s: secs(start), ..AmRestart::default() };
            am.lock().unwrap_or_else(|p| p.into_inner()).stop();
            // Not interruptible: a stopped soak still starts it again (the record must end up).
            thread::sleep(AM_DOWN);
            let spawned = am.lock().unwrap_or_else(|p| p.into_inner()).spawn();
            r.up_at_s = secs(start);
            if let Err(e) = spawned {
                r.error = Some(format!("{e:#}"));
                record.lock().unwrap_or_else(|p| p.into_inner()).am_restarts.push(r);
                return;
            }
            let up = Instant::now();
            r.firing = firing_everywhere(&ctx).0.into_iter().collect();
            let bound = AM_RESEND * 2 + AM_SLACK;
            let mut missing = r.firing.clone();
            while !missing.is_empty() && up.elapsed() < bound {
                thread::sleep(Duration::from_secs(1));
                let answer = am.lock().unwrap_or_else(|p| p.into_inner()).alerts();
                if let Ok(v) = answer {
                    missing = missing_in_alertmanager(&missing, &v);
                }
            }
            if missing.is_empty() {
                r.delivered_after_s = Some(up.elapsed().as_secs_f64());
            } else {
                // One that resolved meanwhile is no longer firing: nothing to deliver as firing.
                // (When a monitor does not answer, all of its findings count as still firing.)
                let (now, all) = firing_everywhere(&ctx);
                r.missing = missing.into_iter().filter(|f| !all || now.contains(f)).collect();
            }
            record.lock().unwrap_or_else(|p| p.into_inner()).am_restarts.push(r);
        }
    })
}

// ---------------------------------------------------------------- OVSDB server

/// Every `every`, the first node's ovsdb-server (Open_vSwitch) gets SIGTERM, stays down for
/// [`OVSDB_DOWN`], and is started again exactly as `lab up` started it; ovs-vswitchd and
/// ovn-controller reconnect by themselves. Then the node's monitor must name its pods again.
pub fn ovsdb_restarts(ctx: &Ctx, every: Duration, start: Instant, record: Shared) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        let Some(node) = ctx.lab.nodes.first().cloned() else { return };
        let url = monitors::monitor_url(&ctx.lab, &node.name);
        let pods: Vec<String> = ctx
            .lab
            .pods
            .iter()
            .filter(|p| p.node == node.name)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let pidfile = node.ovs_rundir.join("ovsdb-server.pid");
        let vswitchd_pidfile = node.ovs_rundir.join("ovs-vswitchd.pid");
        while ctx.sleep(every) {
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
            let mut r =
                OvsdbRestart { node: node.name.clone(), down_at_s: secs(start), ..OvsdbRestart::default() };
            let vswitchd = sys::live_pid(&vswitchd_pidfile, "ovs-vswitchd");
            let Some(pid) = sys::live_pid(&pidfile, "ovsdb-server") else {
                r.error = Some(format!("no ovsdb-server running ({})", pidfile.display()));
                record.lock().unwrap_or_else(|p| p.into_inner()).ovsdb_restarts.push(r);
                return;
            };
            if !sys::terminate(pid, false, Duration::from_secs(5)) {
                r.error = Some(format!("ovsdb-server {pid} did not stop on SIGTERM"));
                record.lock().unwrap_or_else(|p| p.into_inner()).ovsdb_restarts.push(r);
                return;
            }
            // Not interruptible: the lab must get its db server back whatever happens.
            thread::sleep(OVSDB_DOWN / 2);
            r.pods_named_while_down =
                get_json_in(&node.netns, &format!("{url}/api/v1/pods"), Duration::from_secs(3))
                    .ok()
                    .map(|v| pods.len() - pods_missing(&pods, &v).len());
            r.ready_while_down =
                Some(get_json_in(&node.netns, &format!("{url}/readyz"), Duration::from_secs(3)).is_ok());
            thread::sleep(OVSDB_DOWN / 2);
            let started = lab::start_node_ovsdb(&node);
            set_ovsdb_down(false);
            r.up_at_s = secs(start);
            if let Err(e) = started {
                r.error = Some(format!("starting ovsdb-server again: {e:#}"));
                record.lock().unwrap_or_else(|p| p.into_inner()).ovsdb_restarts.push(r);
                return;
            }
            let up = Instant::now();
            let mut missing = pods.clone();
            while up.elapsed() < INVENTORY_WITHIN {
                // Ready again (a 200 from /readyz) means the monitor reconnected and re-synced.
                if r.ready_after_s.is_none()
                    && get_json_in(&node.netns, &format!("{url}/readyz"), Duration::from_secs(3)).is_ok()
                {
                    r.ready_after_s = Some(up.elapsed().as_secs_f64());
                }
                if r.ready_after_s.is_some()
                    && let Ok(v) =
                        get_json_in(&node.netns, &format!("{url}/api/v1/pods"), Duration::from_secs(3))
                {
                    missing = pods_missing(&pods, &v);
                    if missing.is_empty() {
                        r.inventory_back_after_s = Some(up.elapsed().as_secs_f64());
                        break;
                    }
                }
                thread::sleep(Duration::from_millis(500));
            }
            r.missing_pods = missing;
            r.vswitchd_kept =
                vswitchd.is_some() && sys::live_pid(&vswitchd_pidfile, "ovs-vswitchd") == vswitchd;
            record.lock().unwrap_or_else(|p| p.into_inner()).ovsdb_restarts.push(r);
        }
    })
}

// ---------------------------------------------------------------- slow clients

struct Slow {
    stream: Option<TcpStream>,
    /// Sends a byte of a never-finished request now and then, or nothing at all.
    trickle: bool,
    sent: usize,
    next: Instant,
}

/// The header a trickling client sends a byte at a time (never the blank line that ends it).
const SLOW_HEADER: &[u8] =
    b"GET /api/v1/flows HTTP/1.1\r\nHost: soak\r\nUser-Agent: kovn-soak-slow-client\r\nX-Slow: ";

/// `n` connections to every monitor's API (from its node's namespace), half of them sending nothing, half a header byte
/// every [`TRICKLE_EVERY`]; one the server closes is opened again at once. One thread per
/// monitor, non-blocking sockets: `n` fds each, no thread per connection.
pub fn slow_clients(ctx: &Ctx, n: u32, record: Shared) -> Vec<JoinHandle<()>> {
    let mut out = Vec::new();
    for node in &ctx.lab.nodes {
        let Ok(addr) =
            monitors::monitor_url(&ctx.lab, &node.name).trim_start_matches("http://").parse::<SocketAddr>()
        else {
            ctx.counts.error(format!("slow clients: no address for {}'s monitor", node.name));
            continue;
        };
        let ctx = ctx.clone();
        let record = record.clone();
        let netns = node.netns.clone();
        out.push(thread::spawn(move || {
            // From the node's namespace, as the sampler (see [`in_netns`]).
            if let Err(e) = super::load::enter_netns(&netns) {
                ctx.counts.error(format!("slow clients: {e:#}"));
                return;
            }
            let now = Instant::now();
            let mut conns: Vec<Slow> = (0..n)
                .map(|i| Slow {
                    stream: None,
                    trickle: i % 2 == 1,
                    sent: 0,
                    // Spread over the trickle period.
                    next: now + TRICKLE_EVERY.mul_f64(f64::from(i) / f64::from(n.max(1))),
                })
                .collect();
            let counts = |f: &dyn Fn(&SlowCounts)| f(&record.lock().unwrap_or_else(|p| p.into_inner()).slow);
            while ctx.sleep(Duration::from_millis(100)) {
                for c in &mut conns {
                    if c.stream.is_none() {
                        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                            Ok(s) if s.set_nonblocking(true).is_ok() => {
                                c.stream = Some(s);
                                c.sent = 0;
                                counts(&|s| {
                                    let held = s.held.fetch_add(1, Ordering::Relaxed) + 1;
                                    s.held_max.fetch_max(held, Ordering::Relaxed);
                                });
                            }
                            _ => counts(&|s| {
                                s.connect_failures.fetch_add(1, Ordering::Relaxed);
                            }),
                        }
                        continue;
                    }
                    let Some(s) = c.stream.as_mut() else { continue };
                    // EOF or an error: the server closed it.
                    let mut buf = [0u8; 512];
                    let closed = match s.read(&mut buf) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != ErrorKind::WouldBlock,
                    };
                    let closed = closed || {
                        if c.trickle && Instant::now() >= c.next {
                            c.next += TRICKLE_EVERY;
                            let byte = [SLOW_HEADER.get(c.sent).copied().unwrap_or(b'x')];
                            c.sent += 1;
                            match s.write(&byte) {
                                Ok(n) => {
                                    counts(&|s| {
                                        s.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                                    });
                                    false
                                }
                                Err(e) => e.kind() != ErrorKind::WouldBlock,
                            }
                        } else {
                            false
                        }
                    };
                    if closed {
                        c.stream = None;
                        counts(&|s| {
                            s.held.fetch_sub(1, Ordering::Relaxed);
                            s.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                }
            }
            let open = conns.iter().filter(|c| c.stream.is_some()).count() as u64;
            counts(&|s| {
                s.held.fetch_sub(open, Ordering::Relaxed);
            });
        }));
    }
    out
}

// ---------------------------------------------------------------- resolution

/// A fault the fault thread injected and healed, with the findings it saw firing meanwhile.
pub struct Healed {
    pub watch: FaultWatch,
    pub healed: Instant,
}

/// Firing findings during a fault: those not firing at `baseline` (just before the injection).
pub fn new_findings(baseline: &BTreeSet<FindingRef>, seen: &BTreeSet<FindingRef>) -> Vec<FindingRef> {
    seen.difference(baseline).cloned().collect()
}

/// Samples the monitors' firing findings while a fault is held (every 2 s for `hold`).
pub fn watch_fault(ctx: &Ctx, hold: Duration) -> BTreeSet<FindingRef> {
    let end = Instant::now() + hold;
    let mut seen = BTreeSet::new();
    while Instant::now() < end && !ctx.stopped() {
        seen.extend(firing_everywhere(ctx).0);
        let left = end.saturating_duration_since(Instant::now());
        thread::sleep(left.min(Duration::from_secs(2)));
    }
    seen.extend(firing_everywhere(ctx).0);
    seen
}

/// Pairs with [`watch_fault`]: the baseline before an injection.
pub fn baseline(ctx: &Ctx) -> BTreeSet<FindingRef> {
    firing_everywhere(ctx).0
}

/// Takes healed faults and watches their findings until they stop firing or `within` after the
/// heal. Keeps going after the soak stops until the last heal's bound (the monitors run until
/// this thread ends); ends when the sender is dropped.
pub fn resolver(ctx: &Ctx, rx: Receiver<Healed>, within: Duration, record: Shared) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        for Healed { mut watch, healed } in rx {
            let mut still: Vec<FindingRef> = watch.fired.clone();
            let heal_s = watch.healed_at_s;
            loop {
                let (down, back) = *OVSDB_OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
                let from = back.filter(|b| *b > healed).unwrap_or(healed);
                watch.bound_from_s = heal_s + from.duration_since(healed).as_secs_f64();
                // Resolved only on the word of every monitor.
                let (now, all) = firing_everywhere(&ctx);
                if all {
                    still.retain(|f| now.contains(f));
                }
                if still.is_empty() {
                    watch.resolved_after_s = Some(healed.elapsed().as_secs_f64());
                    break;
                }
                if !down && from.elapsed() >= within {
                    break;
                }
                thread::sleep(Duration::from_secs(2));
            }
            watch.unresolved = still;
            record.lock().unwrap_or_else(|p| p.into_inner()).faults.push(watch);
        }
    })
}

pub type HealedTx = Sender<Healed>;
