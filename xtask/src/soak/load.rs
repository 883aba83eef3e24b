//! The soak's load: short-lived UDP and TCP flows from inside the pods (threads that entered the
//! pod's network namespace with setns(2), so thousands of flows per second cost no process
//! each), UDP echo responders in the pods, the lab's own probe mix, faults injected and healed,
//! pod-like veths added and removed, and (optionally) the monitors killed and restarted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde::Serialize;

use crate::cmd;
use crate::lab::traffic::{self, Rng, Scenario};
use crate::lab::{self, CutHow, FaultSpec, Lab, probe};

/// UDP ports of the soak's echo responders in every pod (the lab's own UDP echo forks a socat
/// per datagram source, far too slow for thousands of flows per second).
pub const UDP_PORT_BASE: u16 = 20000;
pub const UDP_PORTS: u16 = 4;
/// How long a client socket stays open for its echoes before it is closed (a closed port would
/// answer the late echo with ICMP port unreachable: another flow).
const SOCKET_LINGER: Duration = Duration::from_secs(2);
/// Prefix of the soak's churn veths: `5a0c` + 8 hex digits + `_h` (the pod veth pattern `*_h`,
/// so the monitors attach to them); peers `5a0c<8 hex>_p`.
const VETH_PREFIX: &str = "5a0c";

/// What the load did, for the report.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub udp_flows_sent: AtomicU64,
    pub udp_echoes: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub tcp_failures: AtomicU64,
    pub probes_ok: AtomicU64,
    pub probes_failed: AtomicU64,
    pub faults_injected: AtomicU64,
    pub faults_healed: AtomicU64,
    pub veths_added: AtomicU64,
    pub veths_removed: AtomicU64,
    pub monitor_kills: AtomicU64,
    /// Errors of the load itself (not of kovn), the last few kept.
    #[serde(skip)]
    pub errors: Mutex<VecDeque<String>>,
}

impl Counts {
    pub fn error(&self, what: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= 20 {
            e.pop_front();
        }
        e.push_back(what);
    }
}

/// Enters the network namespace `/run/netns/<netns>` on this thread only.
pub(crate) fn enter_netns(netns: &str) -> Result<()> {
    let path = format!("/run/netns/{netns}");
    let f = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a descriptor we hold; it changes only the calling thread's namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(r == 0, "setns({path}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Shared by the load's threads.
#[derive(Clone)]
pub struct Ctx {
    pub lab: Lab,
    pub stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
}

impl Ctx {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when the soak stops; false when it stopped.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }
}

/// UDP echo responders, one thread per port per pod.
pub fn udp_responders(ctx: &Ctx) -> Vec<JoinHandle<()>> {
    let mut out = Vec::new();
    for pod in &ctx.lab.pods {
        for port in UDP_PORT_BASE..UDP_PORT_BASE + UDP_PORTS {
            let (ctx, netns, ip) = (ctx.clone(), pod.netns.clone(), pod.ip);
            out.push(thread::spawn(move || {
                if let Err(e) = responder(&ctx, &netns, SocketAddrV4::new(ip, port)) {
                    ctx.counts.error(format!("UDP responder {netns} {port}: {e:#}"));
                }
            }));
        }
    }
    out
}

fn responder(ctx: &Ctx, netns: &str, addr: SocketAddrV4) -> Result<()> {
    enter_netns(netns)?;
    let sock = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 2048];
    while !ctx.stopped() {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

/// New flows from every pod: each pod opens `udp_per_s / pods` new UDP flows per second (a new
/// socket, so a new source port, sending one datagram to each of a few (pod, port) destinations
/// and reading the echoes) and `tcp_per_s / pods` short TCP echo connections to the lab's
/// echo servers.
pub fn flow_churn(ctx: &Ctx, udp_per_s: u32, tcp_per_s: u32, seed: u64) -> Vec<JoinHandle<()>> {
    let pods = ctx.lab.pods.len().max(1) as f64;
    let mut rng = Rng::new(seed);
    ctx.lab
        .pods
        .iter()
        .map(|client| {
            // Destinations: up to 4 other pods (same and other nodes), every responder port.
            let others: Vec<Ipv4Addr> =
                ctx.lab.pods.iter().filter(|p| p.name != client.name).map(|p| p.ip).collect();
            let mut dsts = Vec::new();
            for _ in 0..others.len().min(4) {
                if let Some(ip) = rng.pick(&others)
                    && !dsts.iter().any(|d: &SocketAddrV4| d.ip() == ip)
                {
                    for port in UDP_PORT_BASE..UDP_PORT_BASE + UDP_PORTS {
                        dsts.push(SocketAddrV4::new(*ip, port));
                    }
                }
            }
            let tcp_dst: Vec<SocketAddrV4> = ctx
                .lab
                .pods
                .iter()
                .filter(|p| p.name != client.name)
                .map(|p| SocketAddrV4::new(p.ip, p.tcp_port))
                .collect();
            let (ctx, netns) = (ctx.clone(), client.netns.clone());
            let udp_rate = f64::from(udp_per_s) / pods;
            let tcp_rate = f64::from(tcp_per_s) / pods;
            thread::spawn(move || {
                if let Err(e) = churn(&ctx, &netns, &dsts, &tcp_dst, udp_rate, tcp_rate) {
                    ctx.counts.error(format!("flow churn from {netns}: {e:#}"));
                }
            })
        })
        .collect()
}

fn churn(
    ctx: &Ctx,
    netns: &str,
    dsts: &[SocketAddrV4],
    tcp_dsts: &[SocketAddrV4],
    udp_rate: f64,
    tcp_rate: f64,
) -> Result<()> {
    enter_netns(netns)?;
    let start = Instant::now();
    let (mut udp_done, mut tcp_done) = (0f64, 0f64);
    let mut open: VecDeque<(Instant, UdpSocket)> = VecDeque::new();
    let mut buf = [0u8; 256];
    let mut tcp_i = 0usize;
    while !ctx.stopped() {
        let elapsed = start.elapsed().as_secs_f64();
        // UDP: a socket per len(dsts) flows, as many as the rate asks for by now.
        while !dsts.is_empty() && udp_done + dsts.len() as f64 <= udp_rate * elapsed {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_nonblocking(true)?;
            for d in dsts {
                if sock.send_to(b"kovn-soak", d).is_ok() {
                    ctx.counts.udp_flows_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            udp_done += dsts.len() as f64;
            open.push_back((Instant::now(), sock));
        }
        // Echoes back; sockets past their linger time closed.
        for (_, s) in &open {
            while s.recv_from(&mut buf).is_ok() {
                ctx.counts.udp_echoes.fetch_add(1, Ordering::Relaxed);
            }
        }
        while open.front().is_some_and(|(t, _)| t.elapsed() > SOCKET_LINGER) {
            open.pop_front();
        }
        if tcp_rate > 0.0 && tcp_done < tcp_rate * elapsed && !tcp_dsts.is_empty() {
            tcp_done += 1.0;
            tcp_i = (tcp_i + 1) % tcp_dsts.len();
            let ok = tcp_echo(tcp_dsts[tcp_i]).is_ok();
            let c = if ok { &ctx.counts.tcp_connections } else { &ctx.counts.tcp_failures };
            c.fetch_add(1, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn tcp_echo(dst: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&dst.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"kovn-soak\n")?;
    let mut got = [0u8; 10];
    s.read_exact(&mut got)?;
    ensure!(&got == b"kovn-soak\n", "echo mismatch");
    Ok(())
}

/// The lab's probe mix (`lab traffic`'s plan, a new seed every pass: TCP, UDP, ping, large
/// packets, same- and cross-node), without service traffic unless `services`.
pub fn probe_mix(ctx: &Ctx, services: bool) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        let mut seed = 1;
        while !ctx.stopped() {
            let plan = traffic::plan(&ctx.lab, seed);
            seed += 1;
            for item in plan.items.iter().filter(|i| services || i.scenario != Scenario::PodToService) {
                if ctx.stopped() {
                    break;
                }
                match probe::run(&ctx.lab, &item.from, &item.probe, Duration::from_secs(2)) {
                    Ok(r) if r.ok => ctx.counts.probes_ok.fetch_add(1, Ordering::Relaxed),
                    _ => ctx.counts.probes_failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            ctx.sleep(Duration::from_millis(500));
        }
    })
}

/// The faults the soak rotates through (each healed before the next).
fn fault_rotation(lab: &Lab) -> Vec<FaultSpec> {
    let mut out = Vec::new();
    let pods = &lab.pods;
    if let (Some(a), Some(b)) = (pods.first(), pods.last()) {
        out.push(FaultSpec::ReplyDrop { pod: b.name.clone() });
        out.push(FaultSpec::NoListener { pod: b.name.clone(), port: lab::TCP_ECHO_PORT });
        out.push(FaultSpec::AclDeny { src: a.name.clone(), dst: b.name.clone() });
        out.push(FaultSpec::OvsDrop { node: a.node.clone(), dst: b.ip });
    }
    if let (Some(a), Some(b)) = (lab.nodes.first(), lab.nodes.get(1)) {
        out.push(FaultSpec::TunnelCut { from: a.name.clone(), to: b.name.clone(), how: CutHow::DropUdp });
    }
    out
}

/// Every `every`, the next fault of the rotation for `hold`, then healed; none injected that
/// would still be held at `end`. With `healed`, the findings that fired while it was held (and
/// not before it) go there after the heal, for the resolution watch ([`super::chaos::resolver`]).
pub fn faults(
    ctx: &Ctx,
    every: Duration,
    hold: Duration,
    end: Instant,
    start: Instant,
    healed: Option<super::chaos::HealedTx>,
) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        let mut lab = ctx.lab.clone();
        let rotation = fault_rotation(&lab);
        let mut i = 0;
        while !rotation.is_empty() && ctx.sleep(every.saturating_sub(hold)) {
            if Instant::now() + hold > end {
                break;
            }
            let spec = rotation[i % rotation.len()].clone();
            i += 1;
            let name = format!("{spec:?}");
            let before = healed.as_ref().map(|_| super::chaos::baseline(&ctx));
            let injected_at_s = start.elapsed().as_secs_f64();
            match lab.inject(spec) {
                Ok(f) => {
                    ctx.counts.faults_injected.fetch_add(1, Ordering::Relaxed);
                    let seen = match &before {
                        Some(_) => super::chaos::watch_fault(&ctx, hold),
                        None => {
                            ctx.sleep(hold);
                            Default::default()
                        }
                    };
                    match lab.heal(Some(&f.id)) {
                        Ok(_) => {
                            ctx.counts.faults_healed.fetch_add(1, Ordering::Relaxed);
                            if let (Some(tx), Some(before)) = (&healed, &before) {
                                let watch = super::chaos::FaultWatch {
                                    fault: name,
                                    injected_at_s,
                                    healed_at_s: start.elapsed().as_secs_f64(),
                                    fired: super::chaos::new_findings(before, &seen),
                                    ..Default::default()
                                };
                                let _ = tx.send(super::chaos::Healed { watch, healed: Instant::now() });
                            }
                        }
                        Err(e) => ctx.counts.error(format!("heal {}: {e:#}", f.id)),
                    }
                }
                Err(e) => ctx.counts.error(format!("inject: {e:#}")),
            }
        }
    })
}

/// Pod-like veths (`5a0c<8 hex>_h`) added to the nodes' namespaces and removed again:
/// `per_minute` additions (and as many removals), each living about 10 s. They are not OVS
/// ports; the monitors attach to them (pattern `*_h`) and must let them go.
pub fn veth_churn(ctx: &Ctx, per_minute: u32) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        if per_minute == 0 {
            return;
        }
        let period = Duration::from_secs_f64(60.0 / f64::from(per_minute));
        let mut live: VecDeque<(Instant, String, String)> = VecDeque::new();
        let mut n: u32 = 0;
        let nodes: Vec<String> = ctx.lab.nodes.iter().map(|n| n.netns.clone()).collect();
        while ctx.sleep(period) && !nodes.is_empty() {
            n = n.wrapping_add(1);
            let netns = nodes[n as usize % nodes.len()].clone();
            let (host, peer) = (format!("{VETH_PREFIX}{n:08x}_h"), format!("{VETH_PREFIX}{n:08x}_p"));
            let add =
                cmd::run("ip", &["-n", &netns, "link", "add", &host, "type", "veth", "peer", "name", &peer])
                    .and_then(|_| cmd::run("ip", &["-n", &netns, "link", "set", &host, "up"]));
            match add {
                Ok(_) => {
                    ctx.counts.veths_added.fetch_add(1, Ordering::Relaxed);
                    live.push_back((Instant::now(), netns, host));
                }
                Err(e) => ctx.counts.error(format!("veth add: {e:#}")),
            }
            while live.front().is_some_and(|(t, _, _)| t.elapsed() > Duration::from_secs(10)) {
                if let Some((_, netns, host)) = live.pop_front() {
                    remove_veth(&ctx, &netns, &host);
                }
            }
        }
        for (_, netns, host) in live {
            remove_veth(&ctx, &netns, &host);
        }
    })
}

fn remove_veth(ctx: &Ctx, netns: &str, host: &str) {
    match cmd::run("ip", &["-n", netns, "link", "del", host]) {
        Ok(_) => ctx.counts.veths_removed.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            ctx.counts.error(format!("veth del: {e:#}"));
            0
        }
    };
}

/// The soak's churn veths still present in the lab's node namespaces (a leak if any remain
/// after the load stopped).
pub fn leftover_veths(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    for node in &lab.nodes {
        let text = cmd::stdout("ip", &["-n", &node.netns, "-o", "link", "show"]).unwrap_or_default();
        for l in text.lines() {
            if let Some(name) = l.split(": ").nth(1)
                && name.starts_with(VETH_PREFIX)
            {
                out.push(format!("{}/{}", node.name, name.split('@').next().unwrap_or(name)));
            }
        }
    }
    out
}

/// Planned restarts of each node's monitor (`--kill-every`): SIGKILL, then `lab monitors
/// start` brings the missing one back. `killed[i]` gets the pids killed on node i.
pub fn killer(
    ctx: &Ctx,
    every: Duration,
    bin: PathBuf,
    run_args: Vec<String>,
    killed: Arc<Mutex<Vec<Vec<i32>>>>,
) -> JoinHandle<()> {
    let ctx = ctx.clone();
    thread::spawn(move || {
        let mut i = 0;
        while ctx.sleep(every) {
            let Ok(current) = lab::load(&ctx.lab.state_dir.to_string_lossy()) else { continue };
            let Some(node) = current.nodes.get(i % current.nodes.len().max(1)).map(|n| n.name.clone()) else {
                continue;
            };
            let idx = i % current.nodes.len();
            i += 1;
            let Some(pid) = current.monitors.iter().find(|m| m.node == node).and_then(lab::monitors::alive)
            else {
                continue;
            };
            // Recorded before the kill: a sample that sees the process gone must know why.
            if let Some(k) = killed.lock().unwrap_or_else(|p| p.into_inner()).get_mut(idx) {
                k.push(pid);
            }
            // SAFETY: kill sends a signal to the monitor's pid, checked against its comm above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            ctx.counts.monitor_kills.fetch_add(1, Ordering::Relaxed);
            let gone = lab::sys::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                !lab::sys::is_alive(pid)
            });
            if !gone {
                ctx.counts.error(format!("monitor pid {pid} survived SIGKILL"));
                continue;
            }
            if let Err(e) = lab::monitors::start_with(&current, &bin, &run_args) {
                ctx.counts.error(format!("restarting the monitor of {node}: {e:#}"));
            }
        }
    })
}
