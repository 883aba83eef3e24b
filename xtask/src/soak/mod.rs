//! `cargo xtask soak`: an endurance run of kovn-monitor in its own lab.
//!
//! It brings up a lab (`soak` by default) with a monitor per node, then for `--minutes` runs a
//! churning load ([`load`]): thousands of short UDP flows and short TCP connections from every
//! pod, the lab's probe mix, a fault injected and healed every minute, pod-like veths added and
//! removed, and optionally the monitors killed (SIGKILL) and restarted. Every `--sample-every`
//! it reads each monitor from the outside ([`sample`]): /proc (RSS, fds, threads, CPU), the pid
//! (restarts), `/healthz`, `/metrics` (poll histogram, table entries, every counter) and the
//! kernel flow maps themselves ([`kmaps`]). At the end it judges the samples ([`judge`]), checks
//! that nothing of the monitors stayed in the kernel (their programs and maps by id) and that
//! the churn left no veth, writes `target/soak/<lab>-<unix time>/report.{txt,json}`, removes the
//! lab (also on Ctrl-C or an error) and fails on any failure.
//!
//! OVS: Debian's OVS 3.1 userspace datapath aborts after a minute or two of churning traffic on
//! logical switches with load balancers (`conntrack.c: assertion conn->conn_type ==
//! CT_CONN_TYPE_DEFAULT failed`), with or without traffic to the VIPs. Unless
//! `--with-services`, the soak therefore detaches the load balancers from the switches (no
//! conntrack in the path, see [`without_load_balancers`]) and sends no service traffic; an
//! abort found in a node's ovs-vswitchd.log is reported as that OVS bug, apart from kovn's
//! verdict (the run is then inconclusive).
//!
//! Size: the run's flags (each documented) and its main loop; the load, the disturbances and
//! the judgement are in `load`, `chaos` and `judge`.

pub mod chaos;
pub mod judge;
pub mod kmaps;
pub mod load;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;

use crate::lab::monitors::{self, get_text};
use crate::lab::{self, Lab, UpOptions};
pub use judge::{Failure, Figures, Limits, Sample};

/// The line OVS 3.1's userspace conntrack logs when it aborts on load-balancer traffic.
pub const OVS_CT_ABORT: &str = "conn->conn_type == CT_CONN_TYPE_DEFAULT";

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long the load runs, in minutes (fractions allowed: 0.5).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// The lab's name (it must not be up yet; it is removed at the end).
    #[arg(long, default_value = "soak")]
    pub name: String,
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    #[arg(long, default_value_t = 3)]
    pub pods_per_node: u32,
    /// Seconds between two samples of every monitor.
    #[arg(long, default_value_t = 5)]
    pub sample_every: u64,
    /// New UDP flows per second over all pods (a new source port each, a datagram to each of a
    /// few pod:port destinations, echoed). The default stays under the monitors' default
    /// per-pod new-flow budget (136/s); live flows ≈ this × --flow-idle-timeout (60 s).
    #[arg(long, default_value_t = 400)]
    pub udp_flows_per_second: u32,
    /// Short TCP echo connections per second over all pods (the lab's socat echo servers).
    #[arg(long, default_value_t = 10)]
    pub tcp_connections_per_second: u32,
    /// Pod-like veths (`5a0c<8 hex>_h`) added per minute in the nodes' namespaces (each removed
    /// about 10 s later); 0: none.
    #[arg(long, default_value_t = 200)]
    pub veth_churn_per_minute: u32,
    /// Seconds between faults (reply-drop, no-listener, acl-deny, ovs-drop, tunnel-cut in
    /// turn); 0: none.
    #[arg(long, default_value_t = 60)]
    pub fault_every: u64,
    /// Seconds each fault stays before it is healed.
    #[arg(long, default_value_t = 20)]
    pub fault_hold: u64,
    /// Seconds between SIGKILLs of a monitor (node by node), each restarted at once; 0: none.
    /// Planned restarts are not failures; counters may reset across them.
    #[arg(long, default_value_t = 0)]
    pub kill_every: u64,
    /// Seconds between stops of the soak's Alertmanager (each for 20 s, starting at the next
    /// fault's injection, so findings fire while it is down), which the monitors push to; then
    /// the findings firing must reach it again. 0: no Alertmanager.
    #[arg(long, default_value_t = 150)]
    pub alertmanager_restart_every: u64,
    /// Seconds between stops of the first node's OVSDB server (each for 10 s); then its monitor
    /// must name the node's pods again within 30 s. 0: off.
    #[arg(long, default_value_t = 180)]
    pub ovsdb_restart_every: u64,
    /// Slow HTTP clients held against each monitor's API (half send nothing, half a header byte
    /// every 2 s); 0: none.
    #[arg(long, default_value_t = 200)]
    pub slow_clients: u32,
    /// Every finding that fired during a fault must be resolved (or gone) this many seconds
    /// after the heal; 0: not checked.
    #[arg(long, default_value_t = 90)]
    pub resolve_within: u64,
    /// Include the lab's service (OVN load-balancer) probes. Off by default: OVS 3.1's
    /// userspace datapath aborts on them after a minute or two (see README, `cargo xtask soak`).
    #[arg(long)]
    pub with_services: bool,
    /// Fail when the heap's live bytes (`/healthz` `heap.allocated_bytes`; RSS when the monitor
    /// does not report them) grow faster than this after warm-up (MiB per hour, least squares)...
    #[arg(long, default_value_t = 16.0)]
    pub rss_slope_limit: f64,
    /// ...and the fitted growth over the judged part exceeds this (MiB).
    #[arg(long, default_value_t = 2.0)]
    pub rss_noise: f64,
    /// Fail when RSS ever exceeds this (MiB).
    #[arg(long, default_value_t = 256.0)]
    pub rss_max: f64,
    /// The share of polls that may take longer than the poll interval (0: none may).
    #[arg(long, default_value_t = 0.0)]
    pub polls_over_tick_fraction: f64,
    /// Fail when open fds grow by more than this after warm-up.
    #[arg(long, default_value_t = 16)]
    pub fd_growth_limit: u64,
    /// Fraction of the run that is warm-up (tables fill, ageing starts): resources are judged
    /// from there on.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_fraction: f64,
    /// Leave the lab up at the end (for a look; `cargo xtask lab down --name NAME` removes it).
    #[arg(long)]
    pub keep_lab: bool,
    /// The kovn-monitor binary [default: built from this workspace, debug unless --release].
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Build and soak the release binary (what the image ships: figures that match production).
    #[arg(long)]
    pub release: bool,
    /// Extra `kovn-monitor run` arguments after `--` (e.g. `-- --flow-table-size 262144
    /// --pod-new-flow-rate 0` to hold 100k flows).
    #[arg(last = true, value_name = "RUN-ARGS")]
    pub run_args: Vec<String>,
}

impl SoakArgs {
    fn limits(&self) -> Limits {
        Limits {
            rss_slope_mib_per_h: self.rss_slope_limit,
            rss_noise_mib: self.rss_noise,
            rss_max_mib: self.rss_max,
            fd_growth: self.fd_growth_limit,
            warmup_fraction: self.warmup_fraction,
            tick_ms: monitors::POLL_INTERVAL.as_secs_f64() * 1e3,
            polls_over_tick_fraction: self.polls_over_tick_fraction,
            ..Limits::default()
        }
    }
}

/// One node's part of the report.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub figures: Figures,
    pub failures: Vec<Failure>,
    /// `kovn_flow_table_entries` against the kernel maps' own count, at the sample where they
    /// differed most, and at the last sample.
    pub table_vs_kernel: Option<TableCheck>,
    pub table_vs_kernel_last: Option<TableCheck>,
    /// BPF programs and maps of this node's monitors still in the kernel after they stopped.
    pub leaked_programs: Vec<u32>,
    pub leaked_maps: Vec<u32>,
    /// The OVS abort (see the module docs), when ovs-vswitchd logged it: not a kovn failure.
    pub ovs_abort: Option<String>,
    /// When it happened, in seconds since the load started.
    pub ovs_abort_at_s: Option<f64>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub t_s: f64,
    pub metric: u64,
    pub kernel: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub lab: String,
    pub minutes: f64,
    pub args: String,
    pub limits: Limits,
    #[serde(serialize_with = "counts")]
    pub load: Arc<load::Counts>,
    pub load_errors: Vec<String>,
    pub leftover_veths: Vec<String>,
    pub nodes: Vec<NodeReport>,
    /// What the disturbances did and saw (Alertmanager, OVSDB, slow clients, faults' findings).
    pub chaos: chaos::ChaosRecord,
    pub chaos_failures: Vec<Failure>,
    /// No kovn failure (an OVS abort is not one, but makes the run inconclusive).
    pub passed: bool,
    pub interrupted: bool,
}

impl Report {
    /// Nodes whose OVS aborted (the known OVS 3.1 bug): the run says less than asked.
    pub fn ovs_aborted(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.ovs_abort.is_some()).map(|n| n.node.as_str()).collect()
    }
}

fn counts<S: serde::Serializer>(c: &Arc<load::Counts>, s: S) -> Result<S::Ok, S::Error> {
    Serialize::serialize(c.as_ref(), s)
}

/// Removes the lab when dropped (the soak's way out on success, error and panic alike).
struct LabGuard {
    name: String,
    keep: bool,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "==> lab {} left up (--keep-lab): cargo xtask lab down --name {}",
                self.name, self.name
            );
            return;
        }
        match lab::down(&self.name) {
            Ok(_) => eprintln!("==> lab {} removed", self.name),
            Err(e) => eprintln!("==> removing lab {} failed: {e:#}", self.name),
        }
    }
}

/// Runs the soak; `bin` is the kovn-monitor to test, `out_root` where reports go
/// (`target/soak`). Returns the report; the caller fails when it did not pass.
pub fn run(args: &SoakArgs, bin: &Path, out_root: &Path) -> Result<Report> {
    lab::sys::require_root()?;
    if args.minutes <= 0.0 || args.minutes > 24.0 * 60.0 {
        bail!("--minutes must be in (0, 1440]");
    }
    if lab::load(&args.name).is_ok() {
        bail!(
            "lab {0} is already up: the soak makes its own (cargo xtask lab down --name {0}, or --name)",
            args.name
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            eprintln!("\n==> interrupted: stopping the load, then removing the lab");
            stop.store(true, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let opts =
        UpOptions { nodes: args.nodes, pods_per_node: args.pods_per_node, ..UpOptions::named(&args.name) };
    eprintln!("==> lab {} up ({} nodes, {} pods per node)", args.name, args.nodes, args.pods_per_node);
    let _guard = LabGuard { name: args.name.clone(), keep: args.keep_lab };
    let lab = lab::up(&opts)?.into_lab();
    let mut run_args = args.run_args.clone();
    // Declared after the lab's guard: stopped before the lab goes.
    let am = if args.alertmanager_restart_every > 0 {
        let am = chaos::Alertmanager::start(lab.underlay.host_ip, lab.state_dir.join("soak-alertmanager"))?;
        eprintln!("==> alertmanager on {}", am.url);
        run_args.extend([
            "--alertmanager-url".to_string(),
            am.url.clone(),
            "--alertmanager-resend-interval".to_string(),
            format!("{}s", chaos::AM_RESEND.as_secs()),
        ]);
        Some(Arc::new(Mutex::new(am)))
    } else {
        None
    };
    monitors::start_with(&lab, bin, &run_args)?;
    let lab = lab::load(&lab.state_dir.to_string_lossy())?;
    if !args.with_services {
        without_load_balancers(&lab)?;
    }
    let report = soak(args, &lab, bin, &run_args, am, &stop)?;
    let dir = out_root.join(format!(
        "{}-{}",
        args.name,
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = render(&report);
    fs::write(dir.join("report.txt"), &text)?;
    let mut json = serde_json::to_string_pretty(&report)?;
    json.push('\n');
    fs::write(dir.join("report.json"), json)?;
    print!("{text}");
    println!("report: {}", dir.display());
    Ok(report)
}

fn soak(
    args: &SoakArgs,
    lab: &Lab,
    bin: &Path,
    run_args: &[String],
    am: Option<Arc<Mutex<chaos::Alertmanager>>>,
    stop: &Arc<AtomicBool>,
) -> Result<Report> {
    let counts = Arc::new(load::Counts::default());
    let ctx = load::Ctx { lab: lab.clone(), stop: stop.clone(), counts: counts.clone() };
    let killed: Arc<Mutex<Vec<Vec<i32>>>> = Arc::new(Mutex::new(vec![Vec::new(); lab.nodes.len()]));
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    eprintln!(
        "==> load for {:.1} min: {} UDP flows/s, {} TCP connections/s, probe mix{}, veth churn {}/min, \
         a fault every {}s{}",
        args.minutes,
        args.udp_flows_per_second,
        args.tcp_connections_per_second,
        if args.with_services { " with services" } else { " (no services)" },
        args.veth_churn_per_minute,
        args.fault_every,
        if args.kill_every > 0 {
            format!(", a monitor killed every {}s", args.kill_every)
        } else {
            String::new()
        }
    );
    let record: chaos::Shared = Arc::new(Mutex::new(chaos::ChaosRecord {
        alertmanager_url: am.as_ref().map(|a| a.lock().unwrap_or_else(|p| p.into_inner()).url.clone()),
        slow_clients_per_monitor: args.slow_clients,
        ..chaos::ChaosRecord::default()
    }));
    let start = Instant::now();
    let mut threads = load::udp_responders(&ctx);
    // Let the responders bind before the first datagrams.
    std::thread::sleep(Duration::from_millis(300));
    threads.extend(load::flow_churn(&ctx, args.udp_flows_per_second, args.tcp_connections_per_second, 7));
    threads.push(load::probe_mix(&ctx, args.with_services));
    threads.push(load::veth_churn(&ctx, args.veth_churn_per_minute));
    let (healed_tx, healed_rx) = std::sync::mpsc::channel();
    let resolver = (args.fault_every > 0 && args.resolve_within > 0)
        .then(|| chaos::resolver(&ctx, healed_rx, Duration::from_secs(args.resolve_within), record.clone()));
    if args.fault_every > 0 {
        threads.push(load::faults(
            &ctx,
            Duration::from_secs(args.fault_every),
            Duration::from_secs(args.fault_hold.min(args.fault_every)),
            start + duration,
            start,
            resolver.is_some().then(|| healed_tx.clone()),
        ));
    }
    // The fault thread holds the only sender left: the resolver ends after its last heal.
    drop(healed_tx);
    if let Some(am) = &am {
        threads.push(chaos::alertmanager_restarts(
            &ctx,
            am.clone(),
            Duration::from_secs(args.alertmanager_restart_every),
            args.fault_every > 0,
            start,
            record.clone(),
        ));
    }
    if args.ovsdb_restart_every > 0 {
        threads.push(chaos::ovsdb_restarts(
            &ctx,
            Duration::from_secs(args.ovsdb_restart_every),
            start,
            record.clone(),
        ));
    }
    if args.slow_clients > 0 {
        threads.extend(chaos::slow_clients(&ctx, args.slow_clients, record.clone()));
    }
    if args.kill_every > 0 {
        threads.push(load::killer(
            &ctx,
            Duration::from_secs(args.kill_every),
            bin.to_path_buf(),
            run_args.to_vec(),
            killed.clone(),
        ));
    }
    let start_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut samplers: Vec<Sampler> = lab.nodes.iter().map(|n| Sampler::new(lab, &n.name)).collect();
    let every = Duration::from_secs(args.sample_every.max(1));
    let mut next = start;
    let mut last_print = start;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < duration {
        if Instant::now() >= next {
            next += every;
            for s in &mut samplers {
                s.sample(start);
            }
            if last_print.elapsed() >= Duration::from_secs(30) || samplers[0].samples.len() == 1 {
                last_print = Instant::now();
                eprintln!("{}", progress(start, &samplers, &counts));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupted = stop.load(Ordering::SeqCst);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    eprintln!("==> load stopping");
    for t in threads {
        let _ = t.join();
    }
    if let Some(r) = resolver {
        eprintln!("==> waiting for the last fault's findings to resolve (at most {}s)", args.resolve_within);
        let _ = r.join();
    }
    // What the monitors held in the kernel, then stop them and check it is gone.
    let mut held: Vec<(Vec<u32>, Vec<u32>)> = samplers.iter().map(Sampler::kernel_objects).collect();
    let current = lab::load(&lab.state_dir.to_string_lossy())?;
    let mut heal_lab = current.clone();
    if let Err(e) = heal_lab.heal(None) {
        counts.error(format!("final heal: {e:#}"));
    }
    monitors::stop(&current)?;
    let leftover_veths = load::leftover_veths(lab);
    lab::sys::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        held.iter().all(|(p, m)| {
            p.iter().all(|&id| !kmaps::exists("prog", id)) && m.iter().all(|&id| !kmaps::exists("map", id))
        })
    });
    let limits = args.limits();
    let killed = killed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut nodes = Vec::new();
    for (i, (s, (progs, maps))) in samplers.into_iter().zip(held.iter_mut()).enumerate() {
        let abort = ovs_abort(&lab.node_dir(&s.node).join("ovs-vswitchd.log"));
        // After OVS died the node's IP (on OVS's br-phy) and its pods are gone: the monitor is
        // judged up to then only.
        let abort_t = abort.as_ref().and_then(|(_, unix)| *unix).map(|u| u - start_unix);
        let judged: Vec<Sample> =
            s.samples.iter().filter(|x| abort_t.is_none_or(|a| x.t_s < a - 1.0)).cloned().collect();
        let (figures, failures) =
            judge::judge(&judged, killed.get(i).map_or(&[][..], Vec::as_slice), elapsed, &limits);
        let pairs: Vec<TableCheck> = judged
            .iter()
            .filter_map(|x| {
                Some(TableCheck { t_s: x.t_s, metric: x.table_entries?, kernel: x.kernel_flows? })
            })
            .collect();
        nodes.push(NodeReport {
            ovs_abort: abort.map(|(line, _)| line),
            ovs_abort_at_s: abort_t,
            node: s.node,
            figures,
            failures,
            table_vs_kernel_last: pairs.last().cloned(),
            table_vs_kernel: pairs.into_iter().max_by_key(|c| c.metric.abs_diff(c.kernel)),
            leaked_programs: progs.iter().copied().filter(|&id| kmaps::exists("prog", id)).collect(),
            leaked_maps: maps.iter().copied().filter(|&id| kmaps::exists("map", id)).collect(),
            samples: s.samples,
        });
    }
    let load_errors: Vec<String> =
        counts.errors.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    let chaos = std::mem::take(&mut *record.lock().unwrap_or_else(|p| p.into_inner()));
    let chaos_failures = judge::chaos_failures(
        &chaos.am_restarts,
        &chaos.ovsdb_restarts,
        &chaos.faults,
        (chaos::AM_RESEND * 2 + chaos::AM_SLACK).as_secs_f64(),
        chaos::INVENTORY_WITHIN.as_secs_f64(),
        args.resolve_within as f64,
    );
    let passed = !interrupted
        && chaos_failures.is_empty()
        && leftover_veths.is_empty()
        && nodes
            .iter()
            .all(|n| n.failures.is_empty() && n.leaked_programs.is_empty() && n.leaked_maps.is_empty());
    Ok(Report {
        lab: lab.name.clone(),
        minutes: elapsed / 60.0,
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        limits,
        load: counts,
        load_errors,
        leftover_veths,
        nodes,
        chaos,
        chaos_failures,
        passed,
        interrupted,
    })
}

/// Takes OVS's userspace conntrack out of the pod path: the load balancers leave the logical
/// switches (`ovn-nbctl ls-lb-del`; they stay defined, so the monitors still name the VIPs), and
/// the conntrack entries of `lab up`'s service checks are flushed. With a load balancer on a
/// switch, OVN sends all of its IP traffic through conntrack, and OVS 3.1's userspace conntrack
/// aborts under churn (measured here: 45-130 s into the soak's load, even without service
/// traffic); without one, and without allow-related ACLs (the lab has none), OVN uses no
/// conntrack at all.
fn without_load_balancers(lab: &Lab) -> Result<()> {
    for s in &lab.subnets {
        lab::ovs::nbctl(lab, &["ls-lb-del", &s.logical_switch])
            .with_context(|| format!("detaching the load balancers from {}", s.logical_switch))?;
    }
    lab::ovs::nbctl(lab, &["--wait=hv", "sync"])?;
    for node in &lab.nodes {
        lab::ovs::appctl(&node.vswitchd_ctl, &["dpctl/flush-conntrack"])
            .with_context(|| format!("flushing the conntrack of {}'s ovs-vswitchd", node.name))?;
    }
    Ok(())
}

/// The OVS conntrack abort line of a node's ovs-vswitchd log, if it is there, with its time
/// (OVS log lines start with `2026-12-03T07:21:32.021Z|`).
fn ovs_abort(log: &Path) -> Option<(String, Option<f64>)> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains(OVS_CT_ABORT))?.trim().to_string();
    let at = line.split('|').next().and_then(judge::parse_utc);
    Some((line, at))
}

/// Reads one node's monitor from the outside.
struct Sampler {
    node: String,
    url: String,
    info: Option<lab::MonitorInfo>,
    state_dir: PathBuf,
    names: kmaps::Names,
    samples: Vec<Sample>,
    /// Program ids from /healthz and map ids from /proc, per pid: what must be gone at the end.
    programs: BTreeMap<u32, ()>,
    maps: BTreeMap<u32, ()>,
    netns: String,
    /// The node's pod veths at the previous sample.
    prev_veths: Option<BTreeSet<String>>,
}

impl Sampler {
    fn new(lab: &Lab, node: &str) -> Self {
        Self {
            node: node.to_string(),
            url: monitors::monitor_url(lab, node),
            info: lab.monitors.iter().find(|m| m.node == node).cloned(),
            state_dir: lab.state_dir.clone(),
            names: kmaps::Names::default(),
            samples: Vec::new(),
            programs: BTreeMap::new(),
            maps: BTreeMap::new(),
            netns: lab.node(node).map(|n| n.netns.clone()).unwrap_or_default(),
            prev_veths: None,
        }
    }

    fn pid(&mut self) -> Option<i32> {
        if let Some(pid) = self.info.as_ref().and_then(monitors::alive) {
            return Some(pid);
        }
        // Restarted by the harness: lab.json has the new record.
        let lab = lab::load(&self.state_dir.to_string_lossy()).ok()?;
        self.info = lab.monitors.iter().find(|m| m.node == self.node).cloned();
        self.info.as_ref().and_then(monitors::alive)
    }

    fn sample(&mut self, start: Instant) {
        let mut s = Sample { t_s: start.elapsed().as_secs_f64(), ..Sample::default() };
        s.pid = self.pid();
        let before = pod_veths(&self.netns);
        if let Some(pid) = s.pid {
            read_proc(pid, &mut s);
            let asked = Instant::now();
            // From inside the node's namespace (see chaos::in_netns for why).
            let health =
                chaos::get_json_in(&self.netns, &format!("{}/healthz", self.url), Duration::from_secs(3));
            s.healthz_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
            match health {
                Ok(h) if h["status"] == "ok" => {
                    s.healthz_ok = true;
                    let attached: BTreeSet<String> = h["attached_interfaces"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["name"].as_str())
                        .filter(|n| n.ends_with("_h"))
                        .map(str::to_string)
                        .collect();
                    // Listed before and after /healthz was read, and at the previous sample:
                    // must be attached. Gone at the previous sample and now: must not be.
                    let after = pod_veths(&self.netns);
                    if let Some(prev) = &self.prev_veths {
                        s.veths_missed = before
                            .iter()
                            .filter(|v| prev.contains(*v) && after.contains(*v) && !attached.contains(*v))
                            .count() as u64;
                        s.veths_stale = attached
                            .iter()
                            .filter(|v| !prev.contains(*v) && !before.contains(*v) && !after.contains(*v))
                            .count() as u64;
                    }
                    s.last_poll_ms = h["poll_duration_ms"].as_f64();
                    s.heap_allocated_kib = h["heap"]["allocated_bytes"].as_u64().map(|b| b / 1024);
                    for p in h["programs"].as_array().into_iter().flatten() {
                        if let Some(id) = p["id"].as_u64() {
                            self.programs.insert(id as u32, ());
                        }
                    }
                }
                Ok(h) => s.healthz_error = Some(format!("status {}", h["status"])),
                Err(e) => s.healthz_error = Some(format!("{e:#}")),
            }
            let asked = Instant::now();
            let url = format!("{}/metrics", self.url);
            let metrics = chaos::in_netns(&self.netns, move || get_text(&url, Duration::from_secs(5)));
            s.metrics_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
            if let Err(e) = &metrics {
                s.metrics_error = Some(format!("{e:#}"));
            }
            if let Ok(text) = metrics {
                s.table_entries = judge::gauge(&text, "kovn_flow_table_entries").map(|v| v as u64);
                s.table_capacity = judge::gauge(&text, "kovn_flow_table_capacity").map(|v| v as u64);
                s.counters = judge::parse_counters(&text);
                if let Some((polls, over, sum)) =
                    judge::polls_over(&s.counters, monitors::POLL_INTERVAL.as_secs_f64())
                {
                    (s.polls, s.polls_over_tick, s.poll_sum_s) = (Some(polls), Some(over), Some(sum));
                }
            }
            s.kernel_flows = kmaps::kernel_flows(pid, &mut self.names).ok();
            if let Ok(maps) = kmaps::maps_of(pid) {
                for m in maps {
                    self.maps.insert(m.id, ());
                }
            }
        }
        self.prev_veths = Some(before);
        self.samples.push(s);
    }

    fn kernel_objects(&self) -> (Vec<u32>, Vec<u32>) {
        (self.programs.keys().copied().collect(), self.maps.keys().copied().collect())
    }
}

/// The pod veths (`*_h`) in a node's namespace.
fn pod_veths(netns: &str) -> BTreeSet<String> {
    let text = crate::cmd::stdout("ip", &["-n", netns, "-o", "link", "show"]).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.ends_with("_h"))
        .map(str::to_string)
        .collect()
}

fn read_proc(pid: i32, s: &mut Sample) {
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        s.rss_kib = field("VmRSS:");
        s.threads = field("Threads:");
    }
    s.fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    s.api_conn_fds = api_conn_fds(pid);
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces): state is the first, utime
        // and stime the 12th and 13th.
        let rest: Vec<&str> =
            stat.rsplit_once(") ").map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        s.cpu_s = (ticks(11) + ticks(12)) / hz;
    }
}

/// The process's fds that are established TCP connections of its API port (accepted ones:
/// local port [`monitors::MONITOR_PORT`]), from /proc/PID/net/tcp{,6} (its netns) and the
/// `socket:[inode]` links of /proc/PID/fd.
fn api_conn_fds(pid: i32) -> u64 {
    let mut inodes = BTreeSet::new();
    for f in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // local_address is ADDR:PORT in hex, st 01 is ESTABLISHED, inode the 10th column.
            let port =
                cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(monitors::MONITOR_PORT)
                && cols.get(3) == Some(&"01")
                && let Some(inode) = cols.get(9)
            {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| {
        d.flatten()
            .filter(|e| fs::read_link(e.path()).is_ok_and(|l| inodes.contains(l.to_string_lossy().as_ref())))
            .count() as u64
    })
}

fn progress(start: Instant, samplers: &[Sampler], counts: &load::Counts) -> String {
    let mut line = format!("[{:>6.0}s]", start.elapsed().as_secs_f64());
    for s in samplers {
        if let Some(x) = s.samples.last() {
            let _ = write!(
                line,
                " {}: rss {:.1} MiB fds {} flows {}/{} kernel {} poll {:.1} ms{} |",
                s.node,
                x.rss_kib as f64 / 1024.0,
                x.fds,
                x.table_entries.unwrap_or(0),
                x.table_capacity.unwrap_or(0),
                x.kernel_flows.map_or("?".into(), |k| k.to_string()),
                x.last_poll_ms.unwrap_or(0.0),
                if x.healthz_ok { "" } else { " UNHEALTHY" }
            );
        }
    }
    let _ = write!(
        line,
        " udp {} sent {} echoed, tcp {}, faults {}, veths +{}",
        counts.udp_flows_sent.load(Ordering::Relaxed),
        counts.udp_echoes.load(Ordering::Relaxed),
        counts.tcp_connections.load(Ordering::Relaxed),
        counts.faults_injected.load(Ordering::Relaxed),
        counts.veths_added.load(Ordering::Relaxed)
    );
    line
}

/// The report as a table, then the verdict.
pub fn render(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "soak of lab {} for {:.1} min ({})", r.lab, r.minutes, r.args);
    let c = &r.load;
    let _ = writeln!(
        t,
        "load: {} UDP flows sent ({} echoed), {} TCP connections ({} failed), {} probes ok / {} failed, \
         {} faults injected / {} healed, {} veths added / {} removed, {} monitor kills",
        c.udp_flows_sent.load(Ordering::Relaxed),
        c.udp_echoes.load(Ordering::Relaxed),
        c.tcp_connections.load(Ordering::Relaxed),
        c.tcp_failures.load(Ordering::Relaxed),
        c.probes_ok.load(Ordering::Relaxed),
        c.probes_failed.load(Ordering::Relaxed),
        c.faults_injected.load(Ordering::Relaxed),
        c.faults_healed.load(Ordering::Relaxed),
        c.veths_added.load(Ordering::Relaxed),
        c.veths_removed.load(Ordering::Relaxed),
        c.monitor_kills.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        t,
        "{:<7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>7} {:>6} {:>8} {:>9} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8}",
        "node",
        "rss0",
        "rssWarm",
        "rssEnd",
        "rssMax",
        "MiB/h",
        "fds",
        "thr",
        "cpu%",
        "cpu s",
        "polls",
        "poll ms",
        "over",
        "cpu/poll",
        "tableMax",
        "kernMax",
        "restarts"
    );
    for n in &r.nodes {
        let f = &n.figures;
        let _ = writeln!(
            t,
            "{:<7} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>9.2} {:>9} {:>7} {:>6.1} {:>8.1} {:>9} {:>7.2} {:>7} {:>9.2} {:>9} {:>8} {:>8}",
            n.node,
            f.rss_start_mib,
            f.rss_warm_mib,
            f.rss_end_mib,
            f.rss_max_mib,
            f.rss_slope_mib_per_h,
            format!("{}->{}", f.fds_start, f.fds_end),
            format!("{}->{}", f.threads_start, f.threads_end),
            f.cpu_percent,
            f.cpu_s,
            f.polls,
            f.poll_mean_ms,
            f.polls_over_tick,
            f.cpu_per_poll_ms,
            f.table_entries_max,
            f.kernel_flows_max,
            format!("{}+{}", f.restarts_planned, f.restarts_unplanned),
        );
    }
    for n in &r.nodes {
        let f = &n.figures;
        if let (Some(w), Some(e), Some(sl)) = (f.heap_warm_mib, f.heap_end_mib, f.heap_slope_mib_per_h) {
            let _ = writeln!(
                t,
                "{}: heap live bytes (jemalloc allocated) {w:.1} -> {e:.1} MiB over the judged part, \
                 {sl:.2} MiB/h (the leak judge); RSS {:.2} MiB/h",
                n.node, f.rss_slope_mib_per_h
            );
        }
    }
    for n in &r.nodes {
        if let (Some(c), Some(l)) = (&n.table_vs_kernel, &n.table_vs_kernel_last) {
            let _ = writeln!(
                t,
                "{}: kovn_flow_table_entries vs flows in the kernel maps: {} vs {} at the end ({:.0}s), \
                 {} vs {} at {:.0}s (largest difference); capacity {}, longest sampled poll {:.1} ms",
                n.node,
                l.metric,
                l.kernel,
                l.t_s,
                c.metric,
                c.kernel,
                c.t_s,
                n.figures.table_capacity,
                n.figures.max_last_poll_ms
            );
        }
        if n.figures.veth_samples_behind > 0 {
            let _ = writeln!(
                t,
                "{}: pod veths not followed in {} of {} samples (up to {} present but not attached, {} gone but \
                 still attached)",
                n.node,
                n.figures.veth_samples_behind,
                n.figures.samples,
                n.figures.veths_missed_max,
                n.figures.veths_stale_max
            );
        }
        if let Some(a) = &n.ovs_abort {
            let _ = writeln!(
                t,
                "{}: OVS BUG, not kovn: ovs-vswitchd aborted at {}: {a}; this node was judged up to then",
                n.node,
                n.ovs_abort_at_s.map_or("?".into(), |s| format!("{s:.0}s"))
            );
        }
        for f in &n.failures {
            let _ = writeln!(t, "FAIL {}: {f}", n.node);
        }
        if !n.leaked_programs.is_empty() || !n.leaked_maps.is_empty() {
            let _ = writeln!(
                t,
                "FAIL {}: left in the kernel after stop: programs {:?}, maps {:?}",
                n.node, n.leaked_programs, n.leaked_maps
            );
        }
    }
    let ch = &r.chaos;
    let _ = writeln!(
        t,
        "alertmanager restarts: {} ({} findings firing when it came back, delivered within {}); \
         OVSDB restarts: {} (ready again within {}, pods named within {}); faults watched: {} ({} findings fired, all \
         resolved within {}); slow clients: {} per monitor, {} held at most, {} closed by the server, \
         {} connect failures",
        ch.am_restarts.len(),
        ch.am_restarts.iter().map(|a| a.firing.len()).sum::<usize>(),
        // A restart whose findings all resolved before they reached it has nothing delivered
        // and nothing missing: not a delay to report.
        max_s(
            ch.am_restarts
                .iter()
                .filter(|a| a.delivered_after_s.is_some() || !a.missing.is_empty())
                .map(|a| a.delivered_after_s)
        ),
        ch.ovsdb_restarts.len(),
        max_s(ch.ovsdb_restarts.iter().map(|o| o.ready_after_s)),
        max_s(ch.ovsdb_restarts.iter().map(|o| o.inventory_back_after_s)),
        ch.faults.len(),
        ch.faults.iter().map(|f| f.fired.len()).sum::<usize>(),
        max_s(ch.faults.iter().map(|f| f.resolved_after_s)),
        ch.slow_clients_per_monitor,
        ch.slow.held_max.load(Ordering::Relaxed),
        ch.slow.closed_by_server.load(Ordering::Relaxed),
        ch.slow.connect_failures.load(Ordering::Relaxed),
    );
    for n in &r.nodes {
        let f = &n.figures;
        if f.samples > 0 {
            let _ = writeln!(
                t,
                "{}: slowest sampled answer: /healthz {:.0} ms, /metrics {:.0} ms",
                n.node,
                n.samples.iter().filter_map(|x| x.healthz_ms).fold(0.0, f64::max),
                n.samples.iter().filter_map(|x| x.metrics_ms).fold(0.0, f64::max),
            );
        }
    }
    for f in &r.chaos_failures {
        let _ = writeln!(t, "FAIL {f}");
    }
    if !r.leftover_veths.is_empty() {
        let _ = writeln!(t, "FAIL churn veths left: {:?}", r.leftover_veths);
    }
    for e in &r.load_errors {
        let _ = writeln!(t, "load error (not a kovn failure): {e}");
    }
    let verdict = if r.interrupted {
        "SOAK INTERRUPTED"
    } else if !r.passed {
        "SOAK FAILED"
    } else if !r.ovs_aborted().is_empty() {
        "SOAK INCONCLUSIVE: no kovn failure, but OVS aborted (its known userspace conntrack bug) on some nodes"
    } else {
        "SOAK PASSED"
    };
    let _ = writeln!(t, "{verdict}");
    t
}

/// The largest of some durations, `12.3s`, `-` when there were none, `NOT ALL` when one is
/// missing (it did not happen within its bound).
fn max_s(v: impl Iterator<Item = Option<f64>>) -> String {
    let v: Vec<Option<f64>> = v.collect();
    if v.is_empty() {
        "-".into()
    } else if v.iter().any(Option::is_none) {
        "NOT ALL".into()
    } else {
        format!("{:.1}s", v.into_iter().flatten().fold(0.0, f64::max))
    }
}
