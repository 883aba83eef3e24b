//! `lab traffic`: a bounded, repeatable (seeded) mix of pod-to-pod and pod-to-service traffic,
//! each item labelled with the scenario a monitor should classify it as.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::model::{Lab, Pod, Protocol};
use super::probe::{self, Probe};
use super::sys::{self, in_netns};

/// Bytes of the large TCP transfer (hundreds of full-size segments each way).
pub const BULK_BYTES: usize = 256 * 1024;
const ITEM_TIMEOUT: Duration = Duration::from_secs(2);
const LONG_INTERVAL: Duration = Duration::from_millis(500);
const ROUND_PERIOD: Duration = Duration::from_secs(1);

/// The path class a monitor should attribute the traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    PodToPodSameNode,
    PodToPodCrossNode,
    PodToService,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::PodToPodSameNode => "pod_to_pod_same_node",
            Scenario::PodToPodCrossNode => "pod_to_pod_cross_node",
            Scenario::PodToService => "pod_to_service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficItem {
    /// What kind of traffic: tcp-echo, udp-echo, ping, ping-df-max, tcp-bulk, service-tcp, ...
    pub label: String,
    /// Client pod, `namespace/name`.
    pub from: String,
    /// Server pod `namespace/name`, or `svc:namespace/name`.
    pub to: String,
    pub scenario: Scenario,
    pub probe: Probe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongItem {
    pub from: String,
    pub to: String,
    pub scenario: Scenario,
    pub dst: SocketAddrV4,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPlan {
    pub seed: u64,
    pub items: Vec<TrafficItem>,
    pub long: Option<LongItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemReport {
    #[serde(flatten)]
    pub item: TrafficItem,
    pub attempts: u32,
    pub ok: u32,
    /// Attempts whose probe and its one retry both failed.
    pub failed: u32,
    /// Attempts that passed on the retry: a UDP or ICMP probe is one datagram that no transport
    /// retransmits, so one loss is retried once at once, as a resolver or a pinger would.
    #[serde(default)]
    pub retried: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LongReport {
    #[serde(flatten)]
    pub item: LongItem,
    pub sent: u32,
    pub echoed: u32,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficReport {
    pub seed: u64,
    pub rounds: u32,
    pub elapsed_ms: u64,
    pub items: Vec<ItemReport>,
    pub long: Option<LongReport>,
}

impl TrafficReport {
    /// True when every attempt of every item (and the long connection) succeeded.
    pub fn all_ok(&self) -> bool {
        self.items.iter().all(|i| i.failed == 0) && self.long.as_ref().is_none_or(|l| l.ok)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficOptions {
    /// Rounds of short items start until this much time passed (at least one round runs);
    /// the long connection lasts this long.
    pub duration: Duration,
    pub seed: u64,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        Self { duration: Duration::from_secs(10), seed: 1 }
    }
}

/// SplitMix64: tiny, deterministic, good enough to pick peers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = (self.next_u64() % items.len() as u64) as usize;
        items.get(i)
    }
}

fn pod_items(client: &Pod, server: &Pod, scenario: Scenario) -> Vec<TrafficItem> {
    let item = |label: &str, probe: Probe| TrafficItem {
        label: label.into(),
        from: client.qualified_name(),
        to: server.qualified_name(),
        scenario,
        probe,
    };
    vec![
        item("tcp-echo", Probe::TcpEcho { dst: SocketAddrV4::new(server.ip, server.tcp_port), bytes: 64 }),
        item("udp-echo", Probe::UdpEcho { dst: SocketAddrV4::new(server.ip, server.udp_port) }),
        item("ping", Probe::Ping { dst: server.ip, size: None, dont_fragment: false }),
    ]
}

/// Large packets: the biggest DF ping the pod MTU allows (MTU - 20 IP - 8 ICMP) and a bulk TCP
/// echo (full-size segments).
fn large_items(client: &Pod, server: &Pod, scenario: Scenario) -> Vec<TrafficItem> {
    let item = |label: &str, probe: Probe| TrafficItem {
        label: label.into(),
        from: client.qualified_name(),
        to: server.qualified_name(),
        scenario,
        probe,
    };
    vec![
        item(
            "ping-df-max",
            Probe::Ping { dst: server.ip, size: Some(client.mtu.min(server.mtu) - 28), dont_fragment: true },
        ),
        item(
            "tcp-bulk",
            Probe::TcpEcho { dst: SocketAddrV4::new(server.ip, server.tcp_port), bytes: BULK_BYTES },
        ),
    ]
}

/// The mix for `seed`: every pod talks to one random same-node peer and one random cross-node
/// peer (TCP, UDP, ping); one same-node and one cross-node pair also send large packets; a random
/// pod uses each service; one cross-node pair (same-node if there is one node) keeps a TCP
/// connection open for the whole run.
pub fn plan(lab: &Lab, seed: u64) -> TrafficPlan {
    let mut rng = Rng::new(seed);
    let mut items = Vec::new();
    let mut same_pairs = Vec::new();
    let mut cross_pairs = Vec::new();
    for client in &lab.pods {
        let same: Vec<&Pod> =
            lab.pods.iter().filter(|p| p.node == client.node && p.name != client.name).collect();
        let cross: Vec<&Pod> = lab.pods.iter().filter(|p| p.node != client.node).collect();
        if let Some(server) = rng.pick(&same) {
            items.extend(pod_items(client, server, Scenario::PodToPodSameNode));
            same_pairs.push((client, *server));
        }
        if let Some(server) = rng.pick(&cross) {
            items.extend(pod_items(client, server, Scenario::PodToPodCrossNode));
            cross_pairs.push((client, *server));
        }
    }
    if let Some((c, s)) = rng.pick(&same_pairs) {
        items.extend(large_items(c, s, Scenario::PodToPodSameNode));
    }
    if let Some((c, s)) = rng.pick(&cross_pairs) {
        items.extend(large_items(c, s, Scenario::PodToPodCrossNode));
    }
    let pods: Vec<&Pod> = lab.pods.iter().collect();
    for svc in &lab.services {
        let Some(client) = rng.pick(&pods) else {
            continue;
        };
        let probe = match svc.protocol {
            Protocol::Tcp => Probe::TcpEcho { dst: svc.vip_addr(), bytes: 64 },
            Protocol::Udp => Probe::UdpEcho { dst: svc.vip_addr() },
        };
        items.push(TrafficItem {
            label: format!("service-{}", svc.protocol.as_str()),
            from: client.qualified_name(),
            to: format!("svc:{}/{}", svc.namespace, svc.name),
            scenario: Scenario::PodToService,
            probe,
        });
    }
    let long = rng
        .pick(&cross_pairs)
        .map(|p| (p, Scenario::PodToPodCrossNode))
        .or_else(|| rng.pick(&same_pairs).map(|p| (p, Scenario::PodToPodSameNode)))
        .map(|((c, s), scenario)| LongItem {
            from: c.qualified_name(),
            to: s.qualified_name(),
            scenario,
            dst: SocketAddrV4::new(s.ip, s.tcp_port),
        });
    TrafficPlan { seed, items, long }
}

/// Runs the plan for `opts.seed`: rounds of the short items until `opts.duration` passed, the
/// long connection alongside. `on_plan` sees the plan before anything is sent (the CLI prints it).
pub fn run(lab: &Lab, opts: &TrafficOptions, on_plan: impl FnOnce(&TrafficPlan)) -> Result<TrafficReport> {
    let plan = plan(lab, opts.seed);
    on_plan(&plan);
    let start = Instant::now();
    let long = plan.long.clone().map(|item| {
        let lab = lab.clone();
        let duration = opts.duration;
        thread::spawn(move || long_connection(&lab, item, duration, LONG_INTERVAL))
    });
    let mut reports: Vec<ItemReport> = plan
        .items
        .iter()
        .map(|item| ItemReport {
            item: item.clone(),
            attempts: 0,
            ok: 0,
            failed: 0,
            retried: 0,
            last_error: None,
        })
        .collect();
    let mut rounds = 0;
    while rounds == 0 || start.elapsed() < opts.duration {
        // At most one round per ROUND_PERIOD: a steady, countable rate rather than a flood.
        let next_round = start + ROUND_PERIOD * rounds;
        thread::sleep(next_round.saturating_duration_since(Instant::now()));
        if rounds > 0 && start.elapsed() >= opts.duration {
            break;
        }
        rounds += 1;
        for r in &mut reports {
            let timeout = match &r.item.probe {
                Probe::TcpEcho { bytes, .. } if *bytes > 1024 => ITEM_TIMEOUT * 4,
                _ => ITEM_TIMEOUT,
            };
            let mut result = probe::run(lab, &r.item.from, &r.item.probe, timeout)?;
            r.attempts += 1;
            if !result.ok && r.item.probe.is_datagram() {
                let first = result.detail;
                result = probe::run(lab, &r.item.from, &r.item.probe, timeout)?;
                if result.ok {
                    r.retried += 1;
                    r.last_error = Some(first);
                }
            }
            if result.ok {
                r.ok += 1;
            } else {
                r.failed += 1;
                r.last_error = Some(result.detail);
            }
        }
    }
    let long = match long {
        Some(handle) => Some(handle.join().map_err(|payload| {
            // A panic's payload is its message (a String, or a &str for a literal one).
            let why = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            anyhow::anyhow!("long connection thread panicked: {why}")
        })??),
        None => None,
    };
    Ok(TrafficReport {
        seed: opts.seed,
        rounds,
        elapsed_ms: start.elapsed().as_millis() as u64,
        items: reports,
        long,
    })
}

/// One TCP connection kept open for `duration`, a line every `interval`, each echo awaited.
pub fn long_connection(
    lab: &Lab,
    item: LongItem,
    duration: Duration,
    interval: Duration,
) -> Result<LongReport> {
    let pod = lab.pod(&item.from)?;
    let args =
        in_netns(&pod.netns, "socat", &["-t", "2", "-", &format!("TCP4:{},connect-timeout=2", item.dst)]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("cannot start the long connection's socat")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let (mut sent, mut echoed) = (0u32, 0u32);
    let mut detail = String::new();
    while start.elapsed() < duration {
        let line = format!("kovn-long {} {sent}", item.from);
        if writeln!(stdin, "{line}").and_then(|()| stdin.flush()).is_err() {
            detail = format!("connection closed after {sent} lines");
            break;
        }
        sent += 1;
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(got) if got == line => echoed += 1,
            Ok(got) => detail = format!("unexpected echo {got:?}"),
            Err(_) => {
                detail = format!("no echo for line {sent}");
                break;
            }
        }
        thread::sleep(interval);
    }
    // Closing stdin makes socat half-close; the echo server then closes too: a clean FIN
    // exchange. Only a client still running after that is killed.
    drop(stdin);
    let finished = sys::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !finished {
        // SAFETY: kill only sends a signal, to the process group we created.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    }
    let _ = child.wait();
    let _ = reader.join();
    let ok = sent > 0 && echoed == sent;
    if ok {
        detail =
            format!("{echoed} lines echoed over {:.1}s on one connection", start.elapsed().as_secs_f32());
    }
    Ok(LongReport { item, sent, echoed, ok, detail })
}
