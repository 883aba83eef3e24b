//! `cargo xtask demo`: the README's main command, unattended. Brings the lab up, starts one
//! kovn-monitor per node (as a DaemonSet would, pushing its alerts to a small Alertmanager
//! stand-in of the demo's own), runs the traffic mix over and over, and tells the product's
//! story: healthy traffic with pod names; then, every cycle, a fault it injects itself (a
//! rotation through reply-drop, an OpenFlow drop on the destination node, an OVN ACL deny and
//! the MTU fault), the finding with its hop and summary, the drill-down's first line, the alert
//! the monitor pushed, the heal and the finding resolving. Each step is one plain line.
//!
//! On a terminal the user lands in `kovn-monitor top` (the story in its status line,
//! `--status-file`); otherwise (piped, CI) the story goes to stdout with a table snapshot
//! every `--refresh`. Ctrl-C (or `q` in top, or `--duration`) heals, stops the monitors and
//! removes the lab, unless `--keep`.
//!
//! Size: the demo's one unattended script (lab, monitors, traffic, the fault cycle, the story it
//! prints).

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::Value;

use crate::lab::{self, FaultSpec, Lab, Pod, Probe, UpOptions, UpOutcome, monitors};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Lab name (namespaces NAME-node1, ...).
    #[arg(long, default_value = "kovn")]
    pub name: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seconds between table snapshots when stdout is not a terminal.
    #[arg(long, default_value_t = 15)]
    pub refresh: u64,
    /// Flows shown per table snapshot (broken ones sort first).
    #[arg(long, default_value_t = 12)]
    pub rows: usize,
    /// Seconds of healthy traffic before the first fault (and between faults).
    #[arg(long, default_value_t = 20)]
    pub fault_after: u64,
    /// The faults of the rotation, in order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = DemoFault::ALL)]
    pub faults: Vec<DemoFault>,
    /// The table snapshots even on a terminal, instead of `kovn-monitor top`.
    #[arg(long)]
    pub no_top: bool,
    /// Use this kovn-monitor binary instead of building this tree's (tests, CI).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Show the eBPF build's output even when it succeeds.
    #[arg(short, long)]
    pub verbose: bool,
    /// Leave the lab and the monitors running on exit (then: `cargo xtask lab down`).
    #[arg(long)]
    pub keep: bool,
}

/// The faults the demo injects, one per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoFault {
    /// nftables in the server pod drops its replies.
    ReplyDrop,
    /// An OpenFlow drop rule on the destination node's br-int.
    OvsDrop,
    /// An OVN ACL tagged like a NetworkPolicy denies the pair.
    AclDeny,
    /// The client pod's MTU above what the overlay carries.
    Mtu,
}

impl DemoFault {
    pub const ALL: [DemoFault; 4] =
        [DemoFault::ReplyDrop, DemoFault::OvsDrop, DemoFault::AclDeny, DemoFault::Mtu];
}

/// How long the story waits for each thing the monitors should show before it says it did not.
const WAIT_FINDING: Duration = Duration::from_secs(40);
const WAIT_DRILLDOWN: Duration = Duration::from_secs(30);
const WAIT_ALERT: Duration = Duration::from_secs(15);
const WAIT_RESOLVED: Duration = Duration::from_secs(45);
/// How long a fault stays after its alert was shown, so it can be looked at in `top`.
const HOLD: Duration = Duration::from_secs(10);
/// The canary probes of the current step run this often.
const CANARY_EVERY: Duration = Duration::from_secs(1);
/// Alerts the Alertmanager stand-in keeps (the oldest go first).
const SINK_KEEP: usize = 256;
/// Bytes of one request the Alertmanager stand-in reads at most.
const SINK_MAX_REQUEST: usize = 1 << 20;

pub fn run(args: &DemoArgs, monitor_bin: &Path) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let top = std::io::stdout().is_terminal() && !args.no_top;
    println!("==> bringing up the lab {:?} (OVS + OVN + Geneve in network namespaces)", args.name);
    let opts = UpOptions { name: args.name.clone(), ..UpOptions::default() };
    let t = Instant::now();
    let lab = match lab::up(&opts)? {
        UpOutcome::Started(lab) => lab,
        UpOutcome::AlreadyRunning(lab) => {
            println!("    (it was already running; using it)");
            lab
        }
    };
    println!(
        "    {} nodes, {} pods, {} services in {:.1}s",
        lab.nodes.len(),
        lab.pods.len(),
        lab.services.len(),
        t.elapsed().as_secs_f32()
    );
    let story = Arc::new(Story::new(top.then(|| lab.state_dir.join("demo-status"))));
    let result = show(args, &lab, monitor_bin, &stop, &story, top);
    stop.store(true, Ordering::SeqCst);
    if top {
        // The view is gone: what it showed in its status line, for the record.
        println!("==> the story so far:");
        for line in story.transcript() {
            println!("    {line}");
        }
    }
    if let Err(e) = &result {
        eprintln!("demo: {e:#}");
    }
    if args.keep {
        println!(
            "==> leaving the lab and monitors running (--keep); `cargo xtask lab down --name {}` removes them",
            args.name
        );
        return result;
    }
    println!("==> cleaning up: healing, stopping the monitors, removing the lab");
    let mut current = lab::load(&lab.state_dir.to_string_lossy()).unwrap_or_else(|_| lab.clone());
    if !current.faults.is_empty()
        && let Err(e) = current.heal(None)
    {
        eprintln!("    healing: {e:#}");
    }
    if let Err(e) = monitors::stop(&lab) {
        eprintln!("    stopping monitors: {e:#}");
    }
    lab::down(&lab.name).context("lab down")?;
    println!("==> lab {} removed", lab.name);
    result
}

/// The narration: one plain line per step, with the seconds since "ready". Printed, or (under
/// `top`) appended to the file top shows the last line of; kept for the transcript.
struct Story {
    file: Option<PathBuf>,
    start: Mutex<Option<Instant>>,
    lines: Mutex<Vec<String>>,
}

impl Story {
    fn new(file: Option<PathBuf>) -> Self {
        Self { file, start: Mutex::new(None), lines: Mutex::new(Vec::new()) }
    }

    fn ready(&self) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn say(&self, what: &str) {
        let at = self.start.lock().unwrap_or_else(|e| e.into_inner()).map(|s| s.elapsed().as_secs());
        let line = match at {
            Some(s) => format!("[{s:>4}s] {what}"),
            None => format!("==> {what}"),
        };
        match &self.file {
            Some(path) => {
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "{line}"));
                if let Err(e) = appended {
                    eprintln!("demo: cannot write {}: {e}", path.display());
                }
            }
            None => println!("{line}"),
        }
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn transcript(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One step of the rotation: the fault, in words, and the pair whose traffic it breaks.
struct Step {
    fault: FaultSpec,
    what: String,
    client: Pod,
    server: Pod,
    /// What the canary sends from the client while the step runs.
    probes: Vec<Probe>,
    /// The finding kind that names this fault best (others of the pair are accepted too).
    kind: &'static str,
}

/// The rotation: reply-drop, an OpenFlow drop on the destination node, an OVN ACL deny, the
/// MTU fault. Each on its own cross-node pair, so one step's resolved finding is not the next's.
fn rotation(lab: &Lab, faults: &[DemoFault]) -> Result<Vec<Step>> {
    let first = lab.nodes.first().context("the lab has no node")?.name.clone();
    let clients: Vec<Pod> = lab.pods_on(&first).cloned().collect();
    let servers: Vec<Pod> = lab.pods.iter().filter(|p| p.node != first).cloned().collect();
    anyhow::ensure!(
        !clients.is_empty() && !servers.is_empty(),
        "the demo needs pods on two nodes (lab up --nodes 2)"
    );
    let pick = |v: &[Pod], i: usize| v[i % v.len()].clone();
    let tcp = |p: &Pod| Probe::TcpEcho { dst: SocketAddrV4::new(p.ip, p.tcp_port), bytes: 64 };
    let mut steps = Vec::new();
    let (c, s) = (pick(&clients, 0), pick(&servers, 0));
    steps.push(Step {
        fault: FaultSpec::ReplyDrop { pod: s.name.clone() },
        what: format!(
            "reply-drop: nftables in {} drops its replies (SYN-ACKs, echo replies, UDP answers)",
            s.qualified_name()
        ),
        probes: vec![tcp(&s)],
        client: c,
        server: s,
        kind: "request_without_reply",
    });
    let (c, s) = (pick(&clients, 1), pick(&servers, 1));
    steps.push(Step {
        fault: FaultSpec::OvsDrop { node: s.node.clone(), dst: s.ip },
        what: format!(
            "ovs-drop: an OpenFlow drop rule on {}'s br-int (table 0) for {} ({})",
            s.node,
            s.ip,
            s.qualified_name()
        ),
        probes: vec![tcp(&s)],
        client: c,
        server: s,
        kind: "request_without_reply",
    });
    let (c, s) = (pick(&clients, 2), pick(&servers, 2));
    steps.push(Step {
        fault: FaultSpec::AclDeny { src: c.name.clone(), dst: s.name.clone() },
        what: format!(
            "acl-deny: an OVN ACL like a NetworkPolicy ({}) drops {} -> {}",
            lab::acl_name(&c, &s),
            c.qualified_name(),
            s.qualified_name()
        ),
        probes: vec![tcp(&s)],
        client: c,
        server: s,
        kind: "request_without_reply",
    });
    let (c, s) = (pick(&clients, 0), pick(&servers, 2));
    let mtu = lab.underlay.mtu;
    steps.push(Step {
        fault: FaultSpec::Mtu { pod: c.name.clone(), mtu },
        what: format!(
            "mtu: {}'s MTU raised to {mtu}, above the {} the overlay carries; full-size packets to {} die",
            c.qualified_name(),
            c.mtu,
            s.qualified_name()
        ),
        probes: vec![
            Probe::Ping { dst: s.ip, size: None, dont_fragment: true },
            Probe::Ping { dst: s.ip, size: Some(mtu - 28), dont_fragment: true },
        ],
        client: c,
        server: s,
        kind: "mtu",
    });
    // In the order asked for; the pairs stay those of the full rotation.
    let order = [DemoFault::ReplyDrop, DemoFault::OvsDrop, DemoFault::AclDeny, DemoFault::Mtu];
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let chosen: Vec<Step> = faults
        .iter()
        .filter_map(|f| order.iter().position(|o| o == f))
        .filter_map(|i| steps[i].take())
        .collect();
    anyhow::ensure!(!chosen.is_empty(), "no fault to inject (--faults)");
    Ok(chosen)
}

fn show(
    args: &DemoArgs,
    lab: &Lab,
    monitor_bin: &Path,
    stop: &Arc<AtomicBool>,
    story: &Arc<Story>,
    top: bool,
) -> Result<()> {
    let sink = AlertSink::start(lab.underlay.host_ip, stop.clone())?;
    println!("==> starting one kovn-monitor per node (alerts pushed to the demo's Alertmanager stand-in)");
    let extra = ["--alertmanager-url".to_string(), sink.url.clone()];
    monitors::start_with(lab, monitor_bin, &extra)?;
    let urls: Vec<String> = lab.nodes.iter().map(|n| monitors::monitor_url(lab, &n.name)).collect();
    let steps = rotation(lab, &args.faults)?;
    let canary: Canary = Arc::new(Mutex::new(None));
    let mut threads = vec![traffic_thread(lab, stop), canary_thread(lab, stop, &canary)];
    let bin = monitor_bin.to_str().context("monitor path is not UTF-8")?.to_string();
    story.ready();
    story.say(&format!(
        "ready: {} nodes, {} pods, traffic mix running; a monitor per node at {}; first fault in {}s",
        lab.nodes.len(),
        lab.pods.len(),
        urls.join(" "),
        args.fault_after
    ));
    {
        let (lab, stop, canary, sink) = (lab.clone(), stop.clone(), canary, sink.alerts);
        let (urls, bin, pause) = (urls, bin.clone(), Duration::from_secs(args.fault_after));
        let story = story.clone();
        threads.push(std::thread::spawn(move || {
            let mut lab = lab;
            let ctx = Ctx { urls: &urls, stop: &stop, story: &story, sink: &sink, bin: &bin };
            for (i, step) in steps.iter().cycle().enumerate() {
                *canary.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((step.client.qualified_name(), step.probes.clone()));
                if !ctx.sleep(pause) {
                    break;
                }
                if let Err(e) = ctx.step(&mut lab, step, i + 1) {
                    ctx.story.say(&format!("step failed: {e:#}"));
                }
                *canary.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }));
    }
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs(s));
    let result = if top {
        run_top(lab, &bin, story, stop, deadline)
    } else {
        snapshots(args, lab, &bin, stop, deadline);
        Ok(())
    };
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    result
}

/// The live view until the user quits it (q, Ctrl-C), the demo is stopped, or `--duration`.
fn run_top(lab: &Lab, bin: &str, story: &Story, stop: &AtomicBool, deadline: Option<Instant>) -> Result<()> {
    let status = story.file.clone().context("no status file")?;
    let mut child: Child = Command::new(bin)
        .args(["top", "--lab", &lab.name, "--status-file"])
        .arg(&status)
        .spawn()
        .with_context(|| format!("cannot run {bin} top"))?;
    loop {
        if let Some(st) = child.try_wait()? {
            anyhow::ensure!(st.success(), "kovn-monitor top ended: {st}");
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
            // SAFETY: a signal to our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Not a terminal: a snapshot of `kovn-monitor top` (broken flows first) every `--refresh`.
fn snapshots(args: &DemoArgs, lab: &Lab, bin: &str, stop: &AtomicBool, deadline: Option<Instant>) {
    let mut next = Instant::now() + Duration::from_secs(3);
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if Instant::now() >= next {
            next = Instant::now() + Duration::from_secs(args.refresh.max(1));
            let out = Command::new(bin)
                .args(["top", "--once", "-o", "table", "--lab", &lab.name])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    print!("{}", cut_table(&String::from_utf8_lossy(&o.stdout), args.rows))
                }
                Ok(o) => println!("(top: {})", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => println!("(top: {e})"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The header and the first `rows` rows of `top --once -o table`, and how many were left out.
fn cut_table(table: &str, rows: usize) -> String {
    let lines: Vec<&str> = table.lines().collect();
    let title = lines.iter().position(|l| l.contains("SRC") && l.contains("DST")).unwrap_or(0);
    let body = &lines[(title + 1).min(lines.len())..];
    let mut out = String::from("\n");
    for l in &lines[..(title + 1).min(lines.len())] {
        out.push_str(l);
        out.push('\n');
    }
    for l in body.iter().take(rows) {
        out.push_str(l);
        out.push('\n');
    }
    if body.len() > rows {
        out.push_str(&format!(
            "  ... {} more flows (kovn-monitor top --lab NAME shows them all)\n",
            body.len() - rows
        ));
    }
    out
}

/// The current step's client pod and what it sends (None between steps).
type Canary = Arc<Mutex<Option<(String, Vec<Probe>)>>>;

/// The traffic mix, over and over, with a new seed each round (new peers).
fn traffic_thread(lab: &Lab, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (lab, stop) = (lab.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut seed = 1;
        while !stop.load(Ordering::SeqCst) {
            let opts = lab::TrafficOptions { duration: Duration::from_secs(8), seed };
            // Failures during a fault are the point; only a mix that cannot run is worth a line.
            if let Err(e) = lab::traffic::run(&lab, &opts, |_| {}) {
                if !stop.load(Ordering::SeqCst) {
                    eprintln!("traffic: {e:#}");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            seed += 1;
        }
    })
}

/// The current step's probes from its client, every second: its flows exist before the fault,
/// fail during it, and are answered again after the heal (which resolves the finding).
fn canary_thread(lab: &Lab, stop: &Arc<AtomicBool>, canary: &Canary) -> std::thread::JoinHandle<()> {
    let (lab, stop, canary) = (lab.clone(), stop.clone(), canary.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let current = canary.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some((from, probes)) = current {
                for p in &probes {
                    let _ = lab::probe::run(&lab, &from, p, Duration::from_secs(1));
                }
            }
            std::thread::sleep(CANARY_EVERY.saturating_sub(started.elapsed()));
        }
    })
}

struct Ctx<'a> {
    urls: &'a [String],
    stop: &'a AtomicBool,
    story: &'a Story,
    sink: &'a Mutex<Vec<Value>>,
    bin: &'a str,
}

impl Ctx<'_> {
    /// Sleeps unless stopped; false when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        !self.stop.load(Ordering::SeqCst)
    }

    /// Polls `f` every half second until it gives something, the time is up, or the demo stops.
    fn wait_for<T>(&self, within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let until = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() >= until || !self.sleep(Duration::from_millis(500)) {
                return None;
            }
        }
    }

    /// Every monitor's findings.
    fn alerts(&self) -> Vec<Value> {
        self.urls
            .iter()
            .filter_map(|u| monitors::get_json(&format!("{u}/api/v1/alerts"), Duration::from_secs(3)).ok())
            .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn step(&self, lab: &mut Lab, step: &Step, n: usize) -> Result<()> {
        let (src, dst) = (step.client.qualified_name(), step.server.qualified_name());
        let of_pair = |a: &Value| {
            a["src"]["pod"] == step.client.name.as_str() && a["dst"]["pod"] == step.server.name.as_str()
        };
        let fault = lab.inject(step.fault.clone())?;
        let injected = Instant::now();
        self.story.say(&format!("fault {n} injected: {}", step.what));
        // The finding for the pair: the step's own kind (a reply-drop is a request without reply
        // on the client's node, whose drill-down follows the request) when it comes within half
        // the wait; another kind for the pair (the server node's drops finding) only after that.
        let finding = self.wait_for(WAIT_FINDING, || {
            let firing: Vec<Value> =
                self.alerts().into_iter().filter(|a| a["state"] == "firing" && of_pair(a)).collect();
            let own = firing.iter().find(|a| a["kind"] == step.kind);
            let other = (injected.elapsed() >= WAIT_FINDING / 2).then(|| firing.first()).flatten();
            own.or(other).cloned()
        });
        let Some(finding) = finding else {
            if !self.stop.load(Ordering::SeqCst) {
                self.story.say(&format!("no finding for {src} -> {dst} within {}s", WAIT_FINDING.as_secs()));
            }
            return self.heal(lab, &fault.id);
        };
        let id = finding["id"].as_str().unwrap_or_default().to_string();
        self.story.say(&format!(
            "finding ({}s after the fault) on {}: {} {src} -> {dst} ({}{}), hop {}: {}",
            injected.elapsed().as_secs(),
            finding["node"].as_str().unwrap_or("?"),
            finding["kind"].as_str().unwrap_or("?"),
            finding["protocol"].as_str().unwrap_or("?"),
            finding["dst_port"].as_u64().map(|p| format!(" {p}")).unwrap_or_default(),
            finding["verdict"]["hop"].as_str().unwrap_or("?"),
            finding["verdict"]["summary"].as_str().or(finding["summary"].as_str()).unwrap_or("")
        ));
        // The drill-down the monitor ran when it fired (else the CLI, as a user would).
        let drill = self.wait_for(WAIT_DRILLDOWN, || {
            self.alerts().into_iter().find(|a| a["id"] == id.as_str()).and_then(|a| {
                let d = &a["drilldown"];
                match (d["verdict"].as_str().filter(|v| !v.is_empty()), d["error"].as_str()) {
                    (Some(v), _) => Some(v.to_string()),
                    (None, Some(e)) => Some(format!("(failed: {e})")),
                    _ => None,
                }
            })
        });
        let drill = drill.or_else(|| self.trace_cli(&finding, &id));
        match drill {
            Some(line) => self.story.say(&format!("drill-down: {line}")),
            None => self.story.say("drill-down: none yet"),
        }
        let sent = self.wait_for(WAIT_ALERT, || {
            self.sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .find(|a| a["labels"]["alert_id"] == id.as_str())
                .cloned()
        });
        match sent {
            Some(a) => self.story.say(&format!("alert pushed to Alertmanager: {}", describe_postable(&a))),
            None => self.story.say("no alert pushed to Alertmanager yet"),
        }
        if !self.sleep(HOLD) {
            return self.heal(lab, &fault.id);
        }
        self.heal(lab, &fault.id)?;
        let healed = Instant::now();
        let resolved = self.wait_for(WAIT_RESOLVED, || {
            self.alerts().into_iter().find(|a| a["id"] == id.as_str() && a["state"] == "resolved")
        });
        match resolved {
            Some(_) => self.story.say(&format!(
                "resolved {}s after the heal: {} {src} -> {dst}",
                healed.elapsed().as_secs(),
                finding["kind"].as_str().unwrap_or("?")
            )),
            None if !self.stop.load(Ordering::SeqCst) => self
                .story
                .say(&format!("still firing {}s after the heal: {src} -> {dst}", WAIT_RESOLVED.as_secs())),
            None => {}
        }
        Ok(())
    }

    fn heal(&self, lab: &mut Lab, id: &str) -> Result<()> {
        lab.heal(Some(id))?;
        self.story.say(&format!("healed {id}"));
        Ok(())
    }

    /// `kovn-monitor trace --alert ID` against the finding's node: its first line.
    fn trace_cli(&self, finding: &Value, id: &str) -> Option<String> {
        let node = finding["node"].as_str()?;
        let url = self.urls.iter().find(|u| {
            monitors::get_json(&format!("{u}/healthz"), Duration::from_secs(2)).is_ok()
                && monitors::get_json(&format!("{u}/api/v1/alerts"), Duration::from_secs(2))
                    .is_ok_and(|v| v["node"] == node)
        })?;
        let out = Command::new(self.bin)
            .args(["trace", "--endpoint", url, "--alert", id])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string)
    }
}

/// One line of an Alertmanager v2 postable alert: name, the labels that matter, the summary.
fn describe_postable(a: &Value) -> String {
    let l = &a["labels"];
    let get = |k: &str| l[k].as_str().unwrap_or("").to_string();
    let end = |p: &str| {
        let (ns, pod) = (get(&format!("{p}_namespace")), get(&format!("{p}_pod")));
        if pod.is_empty() { get(&format!("{p}_ip")) } else { format!("{ns}/{pod}") }
    };
    let summary = a["annotations"]["summary"].as_str().unwrap_or("");
    // The summary names the pair already, as a rule.
    let pair = format!("{} -> {}", end("src"), end("dst"));
    let pair = if summary.contains(&pair) { String::new() } else { format!(" {pair}") };
    format!("{} severity={} node={}{pair}: {summary}", get("alertname"), get("severity"), get("node"))
}

/// A minimal Alertmanager stand-in: accepts `POST /api/v2/alerts` on the lab's root-netns
/// address (the monitors reach it over the underlay), answers 200, keeps the last
/// [`SINK_KEEP`] alerts. Bounded: one request at a time, at most [`SINK_MAX_REQUEST`] bytes,
/// a 2 s read timeout.
struct AlertSink {
    url: String,
    alerts: Arc<Mutex<Vec<Value>>>,
}

impl AlertSink {
    fn start(ip: Ipv4Addr, stop: Arc<AtomicBool>) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0)).with_context(|| format!("cannot listen on {ip}"))?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let kept = alerts.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(Value::Array(got)) = serve_one(conn) {
                            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                            kept.extend(got);
                            let excess = kept.len().saturating_sub(SINK_KEEP);
                            kept.drain(..excess);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Ok(Self { url, alerts })
    }
}

/// Reads one HTTP request (headers, Content-Length body), answers 200, returns the JSON body.
fn serve_one(mut conn: TcpStream) -> Option<Value> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let body_at = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() + n > SINK_MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(SINK_MAX_REQUEST);
    while buf.len() < body_at + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&buf[body_at..(body_at + len).min(buf.len())]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_cut_to_the_rows_asked_for() {
        let table = "flows 3\nnodes 2/2\n\n  SRC DST\n! a b\n  c d\n  x9 y9\n";
        let cut = cut_table(table, 2);
        assert!(cut.contains("! a b\n  c d\n") && !cut.contains("x9 y9"), "{cut}");
        assert!(cut.contains("1 more flows"), "{cut}");
        assert!(!cut_table(table, 5).contains("more flows"));
    }

    #[test]
    fn postable_alerts_are_one_line() {
        let a = serde_json::json!({"labels": {"alertname": "KovnRequestWithoutReply", "severity": "critical",
            "node": "node1", "src_namespace": "default", "src_pod": "web-1", "dst_ip": "10.96.0.10"},
            "annotations": {"summary": "3 requests unanswered"}});
        assert_eq!(
            describe_postable(&a),
            "KovnRequestWithoutReply severity=critical node=node1 default/web-1 -> 10.96.0.10: 3 requests unanswered"
        );
        let mut b = a;
        b["annotations"]["summary"] = "default/web-1 -> 10.96.0.10: 3 unanswered".into();
        assert_eq!(
            describe_postable(&b),
            "KovnRequestWithoutReply severity=critical node=node1: default/web-1 -> 10.96.0.10: 3 unanswered"
        );
    }

    #[test]
    fn the_alertmanager_stand_in_keeps_what_is_posted() {
        let stop = Arc::new(AtomicBool::new(false));
        let sink = AlertSink::start(Ipv4Addr::LOCALHOST, stop.clone()).expect("sink");
        let addr = sink.url.trim_start_matches("http://").to_string();
        let body = r#"[{"labels": {"alert_id": "x1"}}]"#;
        let mut c = TcpStream::connect(&addr).expect("connect");
        write!(c, "POST /api/v2/alerts HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .expect("write");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let t = Instant::now();
        while sink.alerts.lock().expect("lock").is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sink.alerts.lock().expect("lock")[0]["labels"]["alert_id"], "x1");
        stop.store(true, Ordering::SeqCst);
    }
}
