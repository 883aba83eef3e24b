//! Single probes from inside a pod: TCP connect + echo, UDP echo, ping. Each is one client
//! process run with `ip netns exec <pod netns> ...`, bounded in time, judged on what came back.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::model::{Lab, Pod};
use super::sys::{Bounded, Expect, in_netns, run_bounded};

/// Default bound of one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// Connect, send `bytes` (a line when small), read them back, close.
    TcpEcho { dst: SocketAddrV4, bytes: usize },
    /// One datagram to a UDP echo server, wait for it to come back.
    UdpEcho { dst: SocketAddrV4 },
    /// One ICMP echo; `size` is ping's -s (payload bytes), `dont_fragment` ping's -M do.
    Ping { dst: Ipv4Addr, size: Option<u32>, dont_fragment: bool },
}

impl Probe {
    /// A single datagram (UDP echo, ping): nothing retransmits it when it is lost.
    pub fn is_datagram(&self) -> bool {
        matches!(self, Probe::UdpEcho { .. } | Probe::Ping { .. })
    }

    /// Short description, e.g. `tcp 10.16.0.3:8080 (64 B)`.
    pub fn describe(&self) -> String {
        match self {
            Probe::TcpEcho { dst, bytes } => format!("tcp {dst} ({bytes} B)"),
            Probe::UdpEcho { dst } => format!("udp {dst}"),
            Probe::Ping { dst, size, dont_fragment } => format!(
                "ping {dst}{}{}",
                size.map(|s| format!(" -s {s}")).unwrap_or_default(),
                if *dont_fragment { " -M do" } else { "" }
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// Why it failed (the client's error, "timed out", "echo mismatch"...) or what it got.
    pub detail: String,
    pub elapsed_ms: u64,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A payload of `bytes` bytes, ending in a newline, unique per call (a stale echo from an
/// earlier probe cannot pass for this one's).
fn payload(from: &str, bytes: usize) -> Vec<u8> {
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let head = format!("kovn-probe {from} {} {n}\n", std::process::id());
    let mut data: Vec<u8> = head.bytes().collect();
    let filler = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut i = 0;
    while data.len() < bytes {
        data.push(if data.len() + 1 == bytes { b'\n' } else { filler[i % filler.len()] });
        i += 1;
    }
    data
}

/// The client command of a probe: program, arguments, stdin. `secs` bounds the client itself.
fn client(pod: &Pod, probe: &Probe, secs: &str) -> (&'static str, Vec<String>, Option<Vec<u8>>) {
    let s = |v: &str| v.to_string();
    match probe {
        Probe::TcpEcho { dst, bytes } => (
            "socat",
            // -t: after sending everything, wait this long for the rest of the echo.
            vec![s("-t"), s(secs), s("-"), format!("TCP4:{dst},connect-timeout={secs}")],
            Some(payload(&pod.name, *bytes)),
        ),
        Probe::UdpEcho { dst } => {
            ("socat", vec![s("-t"), s(secs), s("-"), format!("UDP4:{dst}")], Some(payload(&pod.name, 0)))
        }
        Probe::Ping { dst, size, dont_fragment } => {
            let mut a = vec![s("-n"), s("-c"), s("1"), s("-W"), s(secs)];
            if let Some(size) = size {
                a.extend([s("-s"), size.to_string()]);
            }
            if *dont_fragment {
                a.extend([s("-M"), s("do")]);
            }
            a.push(dst.to_string());
            ("ping", a, None)
        }
    }
}

/// Runs `probe` from pod `from` (name or namespace/name), bounded by `timeout`.
pub fn run(lab: &Lab, from: &str, probe: &Probe, timeout: Duration) -> Result<ProbeResult> {
    let pod = lab.pod(from)?;
    let (program, args, input) = client(pod, probe, &timeout.as_secs().max(1).to_string());
    let sent = input.clone().unwrap_or_default();
    let expect = match probe {
        Probe::UdpEcho { .. } => Expect::PrefixThenStop(&sent),
        Probe::TcpEcho { .. } => Expect::Prefix(&sent),
        Probe::Ping { .. } => Expect::Nothing,
    };
    // The client's own timeouts come first; this is the backstop.
    let backstop = timeout + Duration::from_secs(1);
    let out = run_bounded("ip", &in_netns(&pod.netns, program, &args), input, backstop, expect)?;
    let ok = match probe {
        Probe::Ping { .. } => out.success(),
        _ => out.matched,
    };
    Ok(ProbeResult {
        ok,
        detail: detail(probe, &out, ok, sent.len()),
        elapsed_ms: out.elapsed.as_millis() as u64,
    })
}

/// One line saying what came back (or why nothing did).
fn detail(probe: &Probe, out: &Bounded, ok: bool, sent: usize) -> String {
    let is_ping = matches!(probe, Probe::Ping { .. });
    if ok && is_ping {
        last_line(&out.stdout_text(), "rtt")
    } else if ok {
        format!("echo of {sent} B received")
    } else if out.timed_out {
        "timed out".into()
    } else if !out.stderr_text().is_empty() {
        last_line(&out.stderr_text(), "")
    } else if is_ping {
        last_line(&out.stdout_text(), "packet loss")
    } else {
        format!("no echo ({} of {sent} B back)", out.stdout.len())
    }
}

/// The last line containing `needle` (or the last line at all), for a one-line detail.
fn last_line(text: &str, needle: &str) -> String {
    text.lines()
        .rev()
        .find(|l| l.contains(needle))
        .or_else(|| text.lines().last())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// TCP connect, send a line, read the echo, close.
pub fn tcp_echo(lab: &Lab, from: &str, dst: SocketAddrV4) -> Result<ProbeResult> {
    run(lab, from, &Probe::TcpEcho { dst, bytes: 64 }, PROBE_TIMEOUT)
}

/// TCP echo of `bytes` bytes (large: many full-size segments).
pub fn tcp_transfer(lab: &Lab, from: &str, dst: SocketAddrV4, bytes: usize) -> Result<ProbeResult> {
    run(lab, from, &Probe::TcpEcho { dst, bytes }, PROBE_TIMEOUT + Duration::from_secs(5))
}

/// One UDP datagram to an echo server and its echo back.
pub fn udp_echo(lab: &Lab, from: &str, dst: SocketAddrV4) -> Result<ProbeResult> {
    run(lab, from, &Probe::UdpEcho { dst }, PROBE_TIMEOUT)
}

/// One ping; `size` is the ICMP payload (ping -s), `dont_fragment` sets DF (ping -M do).
pub fn ping(
    lab: &Lab,
    from: &str,
    dst: Ipv4Addr,
    size: Option<u32>,
    dont_fragment: bool,
) -> Result<ProbeResult> {
    let probe = Probe::Ping { dst, size, dont_fragment };
    run(lab, from, &probe, Duration::from_secs(2))
}
