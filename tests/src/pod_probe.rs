//! Clients run in a lab pod's namespace, shared by the lab tests on both datapaths: a TCP echo
//! with a fixed source port (so its flow is known), and connections to a service VIP until
//! OVN's load balancer picks a given backend, read from OVS's conntrack (independently of kovn).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

use xtask::lab::{self, Lab, Pod};

/// What a client run in a pod did.
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

/// A TCP echo from `from` to `dst` with source port `sport`, by socat in the pod's netns,
/// connecting within `connect_secs` (emulated kernels need more): ok when the line comes back.
pub fn tcp(from: &Pod, dst: SocketAddrV4, sport: u16, connect_secs: f32) -> Outcome {
    let line = format!("kovn lab test {} {sport}\n", from.name);
    let target = format!("TCP4:{dst},connect-timeout={connect_secs},sourceport={sport},reuseaddr");
    // The whole client: connecting, sending, and waiting `-t` for the echo, with room to spare.
    let bound = format!("{}", (connect_secs * 3.0).ceil() + 1.0);
    let mut child = Command::new("timeout")
        .args([&bound, "ip", "netns", "exec", &from.netns, "socat", "-t", "1", "-", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socat");
    let _ = child.stdin.take().expect("stdin").write_all(line.as_bytes());
    let out = child.wait_with_output().expect("socat output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Outcome {
        ok: stdout == line,
        detail: format!(
            "socat {}:{sport} -> {dst}: {}, echoed {stdout:?}, stderr {:?}",
            from.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// The backend OVS's conntrack on `node` chose for the connection `client:sport -> vip` (the
/// load balancer's DNAT entry: its reply side names the backend), independently of kovn.
pub fn conntrack_backend(
    node: &lab::Node,
    client: Ipv4Addr,
    sport: u16,
    vip: SocketAddrV4,
) -> Option<Ipv4Addr> {
    let dump =
        lab::ovs::appctl(&node.vswitchd_ctl, &["dpctl/dump-conntrack"]).unwrap_or_else(|e| panic!("{e:#}"));
    let orig = format!("orig=(src={client},dst={},sport={sport},dport={}),", vip.ip(), vip.port());
    let line = dump.lines().find(|l| l.contains(&orig))?;
    line.split("reply=(src=").nth(1)?.split(',').next()?.parse().ok()
}

/// Connects from `client` to the service VIP with source ports from `first` on until OVN's
/// load balancer picks `backend` (by hash of the connection: the port decides, per conntrack);
/// returns that source port and its outcome. Connections it balanced to other backends are
/// left as they are (a healthy backend answers them; they are not what the fault is about).
pub fn connect_via(
    lab: &Lab,
    client: &Pod,
    vip: SocketAddrV4,
    backend: &Pod,
    first: u16,
    connect_secs: f32,
) -> (u16, Outcome) {
    let node = lab.node(&client.node).unwrap_or_else(|e| panic!("{e:#}"));
    let mut elsewhere = Vec::new();
    for sport in first..first + 40 {
        let outcome = tcp(client, vip, sport, connect_secs);
        match conntrack_backend(node, client.ip, sport, vip) {
            Some(ip) if ip == backend.ip => return (sport, outcome),
            other => elsewhere.push(format!("{sport}: {other:?} ok={}", outcome.ok)),
        }
    }
    panic!("40 connections to {vip}, none balanced to {} ({}): {elsewhere:?}", backend.name, backend.ip);
}
