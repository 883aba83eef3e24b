//! The OVS/OVN drill-down (`kovn-monitor trace`, `GET /api/v1/trace`, drill-down on alert):
//! the packet a flow actually carried, traced through this node's br-int with
//! `ovs-appctl ofproto/trace` from the pod's real OpenFlow port, through OVN's logical
//! pipelines with `ovn-trace`, and for cross-node flows on the destination node (through its
//! monitor) from the tunnel port; plus the br-int rules that mention the destination, read twice
//! so rules being hit stand out. The result starts with a one-line verdict naming the rule that
//! decided.
//!
//! Safety: only the read-only commands below run, each with an argument list (never a shell)
//! and a timeout; every value in them is parsed (IP addresses, ports, protocol from a fixed set,
//! MACs, hex ids) or comes from this node's OVSDB (OpenFlow ports) and the run flags (bridge,
//! sockets).
//!
//! - `ovs-appctl -t <ovs-vswitchd ctl> ofproto/trace [--ct-next F]... <bridge> <flow>`
//! - `ovn-trace --db=<sb> [--ct=F]... <microflow>`
//! - `ovs-ofctl dump-flows unix:<rundir>/<bridge>.mgmt` (twice)
//! - `ovn-sbctl --db=<sb> list Logical_Flow <uuid prefix>`, `ovn-nbctl --db=<nb> list ACL <uuid prefix>`

pub mod cli;
pub mod dumpflows;
pub mod ofproto;
pub mod ovntrace;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Shared;
use crate::inventory::{Inventory, OvsPort};
use crate::model::AlertState;
use dumpflows::OpenFlow;
use ofproto::{OfprotoTrace, Outcome};
use ovntrace::{OvnOutcome, OvnTrace};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Bad input (HTTP 400).
    #[error("{0}")]
    BadInput(String),
    /// Disabled, or no such flow/alert (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// OVS/OVN tools or sockets missing (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// A command failed or timed out (HTTP 502).
    #[error("{0}")]
    Failed(String),
    /// The trace queue is full (HTTP 429 with Retry-After).
    #[error("{0}")]
    Busy(String),
}

/// Where this node's OVS and OVN are, and what the drill-down may do (run flags).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// OVS run directory: ovs-vswitchd's control socket and the bridges' `.mgmt` sockets.
    pub ovs_rundir: PathBuf,
    /// The integration bridge (`br-int`).
    pub bridge: String,
    /// `ovn-trace --db=` (the southbound), when known.
    pub ovn_sb: Option<String>,
    /// The northbound, to name the ACL (and NetworkPolicy) behind a logical flow.
    pub ovn_nb: Option<String>,
    /// Per command.
    pub timeout: Duration,
    /// The other nodes' monitors (for the remote half).
    pub peer_port: u16,
    /// `GET /api/v1/trace` answers (else 404).
    pub api_enabled: bool,
}

/// Interface and bridge names: what OVS and Linux accept, nothing a command could misread.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn valid_hex_id(s: &str) -> bool {
    (4..=36).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Self, TraceError> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" | "icmpv6" => Ok(Self::Icmp),
            _ => Err(TraceError::BadInput(format!("unknown protocol {s:?} (tcp, udp, icmp)"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// The packet to trace: what kovn saw of the flow.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<String>,
    /// TCP connection state seen: an answered flow is traced as established, else as new.
    pub established: bool,
    /// The largest request seen (L3 bytes), for the MTU verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

/// The Geneve/VXLAN header the source node pushed: where the remote half starts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TunnelIn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub vni: u32,
    /// OVN's tun_metadata0 (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub option: Option<String>,
}

/// Query of `GET /api/v1/trace`: a flow or alert id, or the packet's fields. The `tun_*`,
/// `*_mac` and `ct` fields are what one monitor sends another for the remote half.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    pub flow: Option<String>,
    pub alert: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub proto: Option<String>,
    pub sport: Option<String>,
    pub dport: Option<String>,
    pub size: Option<String>,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    /// `new|est`
    pub ct: Option<String>,
    pub tun_src: Option<String>,
    pub tun_dst: Option<String>,
    pub tun_id: Option<String>,
    pub tun_opt: Option<String>,
}

#[expect(
    clippy::map_err_ignore,
    reason = "the message names the field and the value; AddrParseError only says the syntax is invalid"
)]
fn ip_of(what: &str, v: &str) -> Result<IpAddr, TraceError> {
    v.parse().map_err(|_| TraceError::BadInput(format!("{what}: {v:?} is not an IP address")))
}

#[expect(
    clippy::map_err_ignore,
    reason = "the message names the field, the value and the range; T::Err need not be Display"
)]
fn num_of<T: std::str::FromStr>(what: &str, v: &str, range: &str) -> Result<T, TraceError> {
    v.parse().map_err(|_| TraceError::BadInput(format!("{what}: {v:?} is not a number ({range})")))
}

impl TraceQuery {
    /// The packet and tunnel fields given explicitly (not `flow`/`alert`).
    pub fn packet(&self) -> Result<(Packet, Option<TunnelIn>), TraceError> {
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| TraceError::BadInput(format!("{what} is required (or flow=ID / alert=ID)")))
        };
        let src = ip_of("src", &need(&self.src, "src")?)?;
        let dst = ip_of("dst", &need(&self.dst, "dst")?)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(TraceError::BadInput("src and dst must be of the same IP family".into()));
        }
        let proto = Proto::parse(self.proto.as_deref().unwrap_or("tcp"))?;
        let sport: u16 = match &self.sport {
            Some(s) => num_of("sport", s, "0-65535")?,
            None => 40000,
        };
        let dport: u16 = match (&self.dport, proto) {
            (Some(s), _) => num_of("dport", s, "0-65535")?,
            (None, Proto::Icmp) => 0,
            (None, _) => return Err(TraceError::BadInput("dport is required for tcp and udp".into())),
        };
        let size = match &self.size {
            Some(s) => {
                let n: u32 = num_of("size", s, "28-65535")?;
                if !(28..=65535).contains(&n) {
                    return Err(TraceError::BadInput(format!("size: {n} is outside 28-65535")));
                }
                Some(n)
            }
            None => None,
        };
        for (what, m) in [("src_mac", &self.src_mac), ("dst_mac", &self.dst_mac)] {
            if let Some(m) = m
                && !valid_mac(m)
            {
                return Err(TraceError::BadInput(format!("{what}: {m:?} is not a MAC address")));
            }
        }
        let established = match self.ct.as_deref() {
            None | Some("new") => false,
            Some("est") => true,
            Some(c) => return Err(TraceError::BadInput(format!("ct: {c:?} (new, est)"))),
        };
        let tunnel = match (&self.tun_src, &self.tun_dst, &self.tun_id) {
            (None, None, None) => None,
            (Some(s), Some(d), Some(id)) => {
                let vni = u32::from_str_radix(id.trim_start_matches("0x"), 16)
                    .ok()
                    .filter(|v| *v < 1 << 24)
                    .ok_or_else(|| TraceError::BadInput(format!("tun_id: {id:?} is not a 24-bit hex VNI")))?;
                let option = match &self.tun_opt {
                    Some(o) => {
                        let v = o.trim_start_matches("0x");
                        if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(TraceError::BadInput(format!("tun_opt: {o:?} is not hex")));
                        }
                        Some(format!("0x{v}"))
                    }
                    None => None,
                };
                Some(TunnelIn { src: ip_of("tun_src", s)?, dst: ip_of("tun_dst", d)?, vni, option })
            }
            _ => return Err(TraceError::BadInput("tun_src, tun_dst and tun_id go together".into())),
        };
        Ok((
            Packet {
                src,
                dst,
                proto,
                sport: if proto == Proto::Icmp { 0 } else { sport },
                dport,
                src_mac: self.src_mac.clone(),
                dst_mac: self.dst_mac.clone(),
                established,
                size,
            },
            tunnel,
        ))
    }
}

/// The ACL (from the northbound) behind a logical flow, and the NetworkPolicy Kube-OVN made it
/// for (its external_ids).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AclInfo {
    pub uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub priority: i64,
    pub direction: String,
    pub action: String,
    #[serde(rename = "match")]
    pub matches: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    pub external_ids: std::collections::BTreeMap<String, String>,
}

/// The logical flow (southbound) an OpenFlow rule or ovn-trace stage comes from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LogicalFlow {
    pub uuid: String,
    pub stage: String,
    pub pipeline: String,
    pub table: i64,
    pub priority: i64,
    #[serde(rename = "match")]
    pub matches: String,
    /// NB uuid prefix of what made it (an ACL for ACL stages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acl: Option<AclInfo>,
}

/// The OpenFlow rule that decided (a drop).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DecidingRule {
    pub bridge: String,
    pub table: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(rename = "match")]
    pub matches: String,
    pub actions: Vec<String>,
    pub no_match: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_flow: Option<LogicalFlow>,
}

/// What one node's drill-down found. `verdict` first: one line naming the cause.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TraceReport {
    pub verdict: String,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<Packet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_in: Option<TunnelIn>,
    /// The OpenFlow port the trace starts at, and what it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_port: Option<OvsPort>,
    /// Final datapath action, in words (`output to pod ns/name's port X`, `tunnel to node2`).
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deciding_rule: Option<DecidingRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ofproto_trace: Option<OfprotoTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovn_trace: Option<OvnTrace>,
    /// The logical flows (with ACL) of the ACL stages ovn-trace went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ovn_acls: Vec<LogicalFlow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovn_trace_error: Option<String>,
    /// The destination node's half, for cross-node flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<Box<TraceReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_error: Option<String>,
    /// br-int rules mentioning the destination, with packets counted between two reads.
    #[serde(default)]
    pub flows: Vec<OpenFlow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<MtuCheck>,
    /// The commands that ran, as argument lists joined for reading.
    pub commands: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MtuCheck {
    pub packet_bytes: u32,
    pub tunnel_header_bytes: u32,
    pub outer_bytes: u32,
    pub underlay_mtu: u32,
    pub underlay_iface: String,
    pub fits: bool,
}

/// The most stdout a command may give (a `dump-flows` of a big br-int is a few MiB): more is
/// an error, and what is read is bounded to it (the rest is read and discarded).
pub const COMMAND_OUTPUT_MAX: usize = 16 << 20;
/// The most stderr kept (only its first line is shown).
const COMMAND_STDERR_MAX: usize = 64 << 10;

/// Reads `r` to its end, keeping at most `limit` bytes; true when there was more.
async fn read_bounded(
    r: Option<impl tokio::io::AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt as _;
    let Some(mut r) = r else { return Ok((Vec::new(), false)) };
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut over = false;
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, over));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
        over |= n > room;
    }
}

/// Runs one read-only command: argument list, no shell, stdin closed, killed at `timeout`,
/// stdout bounded by [`COMMAND_OUTPUT_MAX`].
pub async fn run_command(program: &str, args: &[String], timeout: Duration) -> Result<String, TraceError> {
    run_command_bounded(program, args, timeout, COMMAND_OUTPUT_MAX).await
}

pub async fn run_command_bounded(
    program: &str,
    args: &[String],
    timeout: Duration,
    limit: usize,
) -> Result<String, TraceError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TraceError::Unavailable(format!(
                "{program} not found in PATH (install the OVS/OVN client tools: openvswitch-common, ovn-common)"
            )));
        }
        Err(e) => return Err(TraceError::Failed(format!("{program}: {e}"))),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (out, err) = tokio::join!(read_bounded(stdout, limit), read_bounded(stderr, COMMAND_STDERR_MAX));
        Ok::<_, std::io::Error>((out?, err?, child.wait().await?))
    };
    let ((out, over), (err, _), status) = match tokio::time::timeout(timeout, work).await {
        Err(_) => return Err(TraceError::Failed(format!("{program} timed out after {timeout:?}"))),
        Ok(Err(e)) => return Err(TraceError::Failed(format!("{program}: {e}"))),
        Ok(Ok(r)) => r,
    };
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(TraceError::Failed(format!("{program} failed ({status}): {first}")));
    }
    if over {
        return Err(TraceError::Failed(format!("{program}: output larger than {limit} bytes")));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn shown(program: &str, args: &[String]) -> String {
    std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

/// The drill-down: configuration and the daemon's state it reads.
pub struct Tracer {
    cfg: TraceConfig,
    node: String,
    shared: Shared,
    inventory: Arc<RwLock<Inventory>>,
    /// One drill-down at a time per node: OVS answers traces on its main thread.
    busy: tokio::sync::Semaphore,
    /// API requests running or waiting for `busy`: at most [`TRACE_QUEUE`], more get `429`.
    queue: tokio::sync::Semaphore,
}

/// `/api/v1/trace` requests in the queue (the one running included); more get `429` with
/// `Retry-After`.
pub const TRACE_QUEUE: usize = 4;

/// What the inventory says for one trace (read under the lock, used after it).
struct Facts {
    ports: Vec<OvsPort>,
    src_pod: Option<crate::inventory::PodInfo>,
    dst_pod: Option<crate::inventory::PodInfo>,
    gateway_mac: Option<String>,
    remote_node: Option<String>,
    /// The integration bridge has an Interface row in the node's OVSDB.
    bridge_known: bool,
}

impl Tracer {
    pub fn new(cfg: TraceConfig, node: &str, shared: Shared, inventory: Arc<RwLock<Inventory>>) -> Self {
        Self {
            cfg,
            node: node.to_string(),
            shared,
            inventory,
            busy: tokio::sync::Semaphore::new(1),
            queue: tokio::sync::Semaphore::new(TRACE_QUEUE),
        }
    }

    pub fn config(&self) -> &TraceConfig {
        &self.cfg
    }

    /// Resolves `flow=`/`alert=` from the current snapshot, or the explicit fields.
    pub fn resolve(&self, q: &TraceQuery) -> Result<(Packet, Option<TunnelIn>, Option<String>), TraceError> {
        let snap = self.shared.read().unwrap_or_else(|p| p.into_inner());
        let size = match &q.size {
            Some(s) => Some(num_of("size", s, "28-65535")?),
            None => None,
        };
        if (q.flow.is_some() || q.alert.is_some())
            && [&q.src, &q.dst, &q.proto, &q.sport, &q.dport].iter().any(|v| v.is_some())
        {
            return Err(TraceError::BadInput(
                "flow/alert and src/dst/proto/sport/dport exclude each other".into(),
            ));
        }
        match (&q.flow, &q.alert) {
            (Some(_), Some(_)) => Err(TraceError::BadInput("give flow or alert, not both".into())),
            (Some(id), None) => {
                let f = snap
                    .flows
                    .iter()
                    .find(|f| &f.id == id)
                    .ok_or_else(|| TraceError::NotFound(format!("no flow {id:?} on {}", snap.node)))?;
                let mut p = packet_of_flow(f)?;
                p.size = size.or(p.size);
                Ok((p, None, Some(id.clone())))
            }
            (None, Some(id)) => {
                let a = snap
                    .alerts
                    .iter()
                    .find(|a| &a.id == id)
                    .ok_or_else(|| TraceError::NotFound(format!("no alert {id:?} on {}", snap.node)))?;
                let (mut p, flow_id) = packet_of_alert(a, &snap.flows)?;
                p.size = size.or(p.size);
                Ok((p, None, flow_id))
            }
            (None, None) => {
                let (p, t) = q.packet()?;
                Ok((p, t, None))
            }
        }
    }

    fn facts(&self, p: &Packet, remote_ip: Option<IpAddr>) -> Facts {
        let inv = self.inventory.read().unwrap_or_else(|e| e.into_inner());
        Facts {
            ports: inv.ovs_ports(),
            src_pod: inv.pod(p.src).cloned(),
            dst_pod: inv.pod(p.dst).cloned(),
            gateway_mac: inv.gateway_mac(p.src),
            remote_node: remote_ip.and_then(|ip| inv.node_of_ip(ip).map(str::to_string)),
            bridge_known: inv.has_interface(&self.cfg.bridge),
        }
    }

    fn underlay_mtu(&self, via: Option<&str>) -> Option<(String, u32)> {
        let snap = self.shared.read().unwrap_or_else(|p| p.into_inner());
        if let Some(u) =
            snap.health.attached_interfaces.iter().find(|i| i.kind == crate::model::IfaceKind::Underlay)
        {
            return Some((u.name.clone(), u.mtu));
        }
        let via = via.filter(|v| valid_name(v))?;
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{via}/mtu")).ok()?.trim().parse().ok()?;
        Some((via.to_string(), mtu))
    }

    /// ovs-vswitchd's control socket in the run directory: `ovs-vswitchd.<pid>.ctl` as OVS
    /// names it (from its pidfile), or `ovs-vswitchd.ctl` when started with `--unixctl`.
    fn vswitchd_ctl(&self) -> Result<PathBuf, TraceError> {
        let dir = &self.cfg.ovs_rundir;
        let plain = dir.join("ovs-vswitchd.ctl");
        if plain.exists() {
            return Ok(plain);
        }
        let pid = std::fs::read_to_string(dir.join("ovs-vswitchd.pid")).ok();
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<u32>().ok()) {
            let p = dir.join(format!("ovs-vswitchd.{pid}.ctl"));
            if p.exists() {
                return Ok(p);
            }
        }
        Err(TraceError::Unavailable(format!(
            "no ovs-vswitchd control socket in {} (is OVS running here? set --ovs-rundir)",
            dir.display()
        )))
    }

    /// The whole drill-down for one packet on this node (and, through the tunnel, the next).
    pub async fn trace(&self, q: &TraceQuery) -> Result<TraceReport, TraceError> {
        let (p, tunnel_in, flow_id) = self.resolve(q)?;
        let mut report = self.trace_packet(p, tunnel_in, flow_id).await?;
        // OVS and OVN pass the packet, yet a finding says it fails: the cause is outside the
        // flow tables (the pod's own firewall, no listener, the underlay). The monitor's
        // verdict from what it saw on the wire names it; the trace clears OVS/OVN.
        if let Some(observed) = self.observed_verdict(&report) {
            report.verdict = format!("{observed}; OVS/OVN pass this packet: {}", report.verdict);
        }
        Ok(report)
    }

    /// The verdict of a firing finding about the traced flow, when the trace found no drop.
    fn observed_verdict(&self, r: &TraceReport) -> Option<String> {
        let dropped = r.deciding_rule.is_some()
            || r.mtu.as_ref().is_some_and(|m| !m.fits)
            || r.verdict.contains("dropped");
        if dropped {
            return None;
        }
        let id = r.flow_id.as_ref()?;
        let snap = self.shared.read().unwrap_or_else(|p| p.into_inner());
        let a = snap.alerts.iter().find(|a| a.state == AlertState::Firing && a.flows.contains(id))?;
        let v = a.verdict.as_ref()?;
        Some(format!("{} ({}, {})", v.summary, a.kind, v.hop))
    }

    /// The drill-down of one packet (from the source pod's port, or from the tunnel).
    pub async fn trace_packet(
        &self,
        mut p: Packet,
        tunnel_in: Option<TunnelIn>,
        flow_id: Option<String>,
    ) -> Result<TraceReport, TraceError> {
        let shutting_down = |_| TraceError::Unavailable("shutting down".into());
        let permit = self.busy.acquire().await.map_err(shutting_down)?;
        let timeout = self.cfg.timeout;
        let secs = format!("--timeout={}", timeout.as_secs().max(1));
        let mut facts = self.facts(&p, tunnel_in.as_ref().map(|t| t.src));
        let mut report = TraceReport {
            node: self.node.clone(),
            flow_id,
            tunnel_in: tunnel_in.clone(),
            ..Default::default()
        };
        // Where the packet enters br-int: the source pod's port, or the tunnel from its node.
        let in_port = match &tunnel_in {
            Some(t) => facts
                .ports
                .iter()
                .find(|x| x.remote_ip == Some(t.src) && matches!(x.kind.as_str(), "geneve" | "vxlan" | "stt"))
                .cloned()
                .ok_or_else(|| {
                    TraceError::NotFound(format!("no tunnel port towards {} on {}", t.src, self.node))
                })?,
            None => {
                let iface = facts.src_pod.as_ref().and_then(|x| x.host_iface.clone()).ok_or_else(|| {
                    TraceError::BadInput(format!(
                        "{} is not a pod of this node ({}): run the trace on its node's monitor",
                        p.src, self.node
                    ))
                })?;
                facts.ports.iter().find(|x| x.name == iface).cloned().ok_or_else(|| {
                    TraceError::NotFound(format!("{iface} has no OpenFlow port on {}", self.cfg.bridge))
                })?
            }
        };
        report.in_port = Some(in_port.clone());
        if !facts.bridge_known {
            return Err(TraceError::Unavailable(format!(
                "bridge {} is not in this node's OVSDB (set --integration-bridge)",
                self.cfg.bridge
            )));
        }
        if p.src_mac.is_none() {
            p.src_mac = facts.src_pod.as_ref().and_then(|x| x.mac.clone());
        }
        if p.dst_mac.is_none() {
            // Same subnet: the pod's MAC; else the gateway's (the logical router port).
            p.dst_mac = facts.dst_pod.as_ref().and_then(|x| x.mac.clone()).or(facts.gateway_mac.clone());
        }
        let (Some(src_mac), Some(dst_mac)) = (p.src_mac.clone(), p.dst_mac.clone()) else {
            return Err(TraceError::NotFound(format!(
                "the MACs of {} and {} are unknown (not in OVSDB or the OVN southbound)",
                p.src, p.dst
            )));
        };
        if !valid_mac(&src_mac) || !valid_mac(&dst_mac) {
            return Err(TraceError::Failed(format!(
                "unusable MACs {src_mac:?}, {dst_mac:?} in the inventory"
            )));
        }

        // 1. ofproto/trace on br-int.
        let ctl = self.vswitchd_ctl()?;
        let ct = if p.established { "trk,est" } else { "trk,new" };
        let mut args = vec![secs.clone(), "-t".into(), ctl.display().to_string(), "ofproto/trace".into()];
        // One per recirculation (source zone, destination zone); extra ones are unused.
        for _ in 0..3 {
            args.extend(["--ct-next".to_string(), ct.to_string()]);
        }
        args.push(self.cfg.bridge.clone());
        args.push(ofproto_flow(&p, in_port.ofport, &src_mac, &dst_mac, tunnel_in.as_ref()));
        report.commands.push(shown("ovs-appctl", &args));
        let text = run_command("ovs-appctl", &args, timeout).await?;
        let trace = ofproto::parse(&text);
        if trace.passes.is_empty() {
            return Err(TraceError::Failed(format!(
                "ofproto/trace gave no table walk: {}",
                text.lines().next().unwrap_or("")
            )));
        }

        if let Outcome::TunnelPush { remote_ip: Some(ip), .. } = &trace.outcome {
            let inv = self.inventory.read().unwrap_or_else(|e| e.into_inner());
            facts.remote_node = inv.node_of_ip(*ip).map(str::to_string);
        }

        // 2. The rule that decided a drop, named through OVN when its cookie is a logical flow.
        if trace.outcome == Outcome::Drop
            && let Some(s) = trace.deciding_step()
        {
            let logical_flow = match s.cookie.as_deref().and_then(lflow_prefix) {
                Some(prefix) => self.logical_flow(&prefix, &mut report.commands).await,
                None => None,
            };
            report.deciding_rule = Some(DecidingRule {
                bridge: s.bridge.clone(),
                table: s.table,
                priority: s.priority,
                cookie: s.cookie.clone(),
                matches: s.matches.clone(),
                actions: s.actions.clone(),
                no_match: s.no_match,
                logical_flow,
            });
        }
        report.result = describe_outcome(&trace.outcome, &facts);

        // 3. ovn-trace of the same packet from the source pod's logical port.
        if tunnel_in.is_none()
            && let Some(sb) = &self.cfg.ovn_sb
            && let Some(src_pod) = &facts.src_pod
        {
            let mut args = vec![format!("--db={sb}")];
            args.extend(crate::ovsdb::ssl_args(sb));
            for _ in 0..2 {
                args.push(format!("--ct={ct}"));
            }
            args.push(ovn_microflow(
                &p,
                &format!("{}.{}", src_pod.name, src_pod.namespace),
                &src_mac,
                &dst_mac,
            ));
            report.commands.push(shown("ovn-trace", &args));
            match run_command("ovn-trace", &args, timeout).await {
                Ok(text) => {
                    let t = ovntrace::parse(&text);
                    for s in t.acls().filter(|s| valid_hex_id(&s.uuid)).cloned() {
                        if let Some(lf) = self.logical_flow(&s.uuid, &mut report.commands).await {
                            report.ovn_acls.push(lf);
                        }
                    }
                    report.ovn_trace = Some(t);
                }
                Err(e) => report.ovn_trace_error = Some(e.to_string()),
            }
        }

        // 4. The other half: the destination node traces the packet from its tunnel port. Not
        // holding this node's permit meanwhile: two nodes tracing towards each other at once
        // must not wait on each other.
        drop(permit);
        if let (
            Outcome::TunnelPush {
                remote_ip: Some(rip),
                local_ip: Some(lip),
                vni: Some(vni),
                geneve_option,
                ..
            },
            None,
        ) = (&trace.outcome, &tunnel_in)
        {
            match self.ask_peer(&p, *rip, *lip, *vni, geneve_option.as_deref()).await {
                Ok(r) => report.remote = Some(Box::new(r)),
                Err(e) => report.remote_error = Some(e),
            }
        }

        // 5. MTU: the packet plus the tunnel header against the underlay's MTU.
        if let (Outcome::TunnelPush { header_bytes: Some(h), via, .. }, Some(size)) = (&trace.outcome, p.size)
            && let Some((iface, mtu)) = self.underlay_mtu(via.as_deref())
        {
            // OVS's header size includes the outer Ethernet header (14), the inner frame adds its
            // own: outer L3 = inner L3 + header.
            let outer = size + h;
            report.mtu = Some(MtuCheck {
                packet_bytes: size,
                tunnel_header_bytes: *h,
                outer_bytes: outer,
                underlay_mtu: mtu,
                underlay_iface: iface,
                fits: outer <= mtu,
            });
        }

        // 6. br-int rules that mention the destination, counted twice a second apart.
        if tunnel_in.is_none() {
            let _permit = self.busy.acquire().await.map_err(shutting_down)?;
            match self.hit_flows(&p, &secs, &mut report.commands).await {
                Ok(f) => report.flows = f,
                Err(e) => report.flows_error = Some(e.to_string()),
            }
        }
        report.ofproto_trace = Some(trace);
        report.packet = Some(p);
        report.verdict = verdict(&report, &facts);
        Ok(report)
    }

    async fn hit_flows(
        &self,
        p: &Packet,
        secs: &str,
        commands: &mut Vec<String>,
    ) -> Result<Vec<OpenFlow>, TraceError> {
        let mgmt = self.cfg.ovs_rundir.join(format!("{}.mgmt", self.cfg.bridge));
        let target = if mgmt.exists() { format!("unix:{}", mgmt.display()) } else { self.cfg.bridge.clone() };
        let args = vec![secs.to_string(), "dump-flows".into(), target];
        commands.push(format!("{} (twice, 1s apart)", shown("ovs-ofctl", &args)));
        let first = dumpflows::parse(&run_command("ovs-ofctl", &args, self.cfg.timeout).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = dumpflows::parse(&run_command("ovs-ofctl", &args, self.cfg.timeout).await?);
        let needle = p.dst.to_string();
        let before: Vec<OpenFlow> = dumpflows::mentioning(&first, &needle).into_iter().cloned().collect();
        let after: Vec<OpenFlow> = dumpflows::mentioning(&second, &needle).into_iter().cloned().collect();
        let mut out = dumpflows::diff(&before, after);
        out.truncate(40);
        Ok(out)
    }

    /// The southbound logical flow with this uuid prefix and, for an ACL stage, the ACL.
    async fn logical_flow(&self, prefix: &str, commands: &mut Vec<String>) -> Option<LogicalFlow> {
        let sb = self.cfg.ovn_sb.as_ref()?;
        if !valid_hex_id(prefix) {
            return None;
        }
        let mut args = crate::ovsdb::ssl_args(sb);
        args.extend([
            format!("--db={sb}"),
            format!("--timeout={}", self.cfg.timeout.as_secs().max(1)),
            "--format=json".into(),
            "--columns=_uuid,external_ids,pipeline,table_id,priority,match".into(),
            "list".into(),
            "Logical_Flow".into(),
            prefix.to_string(),
        ]);
        commands.push(shown("ovn-sbctl", &args));
        // No such row (a rule OVN did not make) is an error exit: no logical flow.
        let text = run_command("ovn-sbctl", &args, self.cfg.timeout).await.ok()?;
        let row = first_row(&text)?;
        let ids = json_map(row.get("external_ids"));
        let mut lf = LogicalFlow {
            uuid: json_uuid(row.get("_uuid")),
            stage: ids.get("stage-name").cloned().unwrap_or_default(),
            pipeline: row.get("pipeline").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            table: row.get("table_id").and_then(|v| v.as_i64()).unwrap_or_default(),
            priority: row.get("priority").and_then(|v| v.as_i64()).unwrap_or_default(),
            matches: row.get("match").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            stage_hint: ids.get("stage-hint").cloned(),
            acl: None,
        };
        if lf.stage.contains("_acl")
            && !lf.stage.contains("hint")
            && let (Some(nb), Some(hint)) = (&self.cfg.ovn_nb, lf.stage_hint.clone())
            && valid_hex_id(&hint)
        {
            let mut args = crate::ovsdb::ssl_args(nb);
            args.extend([
                format!("--db={nb}"),
                format!("--timeout={}", self.cfg.timeout.as_secs().max(1)),
                "--format=json".into(),
                "--columns=_uuid,name,external_ids,priority,direction,action,match".into(),
                "list".into(),
                "ACL".into(),
                hint,
            ]);
            commands.push(shown("ovn-nbctl", &args));
            if let Ok(text) = run_command("ovn-nbctl", &args, self.cfg.timeout).await
                && let Some(row) = first_row(&text)
            {
                let ids = json_map(row.get("external_ids"));
                let name = match row.get("name") {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                };
                // Kube-OVN: `policy=<ns>/<name>` and kube-ovn.io/policy-{namespace,name}.
                let network_policy = ids.get("policy").cloned().or_else(|| {
                    Some(format!(
                        "{}/{}",
                        ids.get("kube-ovn.io/policy-namespace")?,
                        ids.get("kube-ovn.io/policy-name")?
                    ))
                });
                lf.acl = Some(AclInfo {
                    uuid: json_uuid(row.get("_uuid")),
                    name,
                    priority: row.get("priority").and_then(|v| v.as_i64()).unwrap_or_default(),
                    direction: row.get("direction").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    action: row.get("action").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    matches: row.get("match").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    network_policy,
                    external_ids: ids,
                });
            }
        }
        Some(lf)
    }

    async fn ask_peer(
        &self,
        p: &Packet,
        remote: IpAddr,
        local: IpAddr,
        vni: u32,
        option: Option<&str>,
    ) -> Result<TraceReport, String> {
        let url = format!(
            "{}://{}/api/v1/trace",
            crate::auth::peer_scheme(),
            std::net::SocketAddr::new(remote, self.cfg.peer_port)
        );
        let mut q: Vec<(&str, String)> = vec![
            ("src", p.src.to_string()),
            ("dst", p.dst.to_string()),
            ("proto", p.proto.as_str().into()),
            ("sport", p.sport.to_string()),
            ("dport", p.dport.to_string()),
            ("ct", if p.established { "est" } else { "new" }.into()),
            ("tun_src", local.to_string()),
            ("tun_dst", remote.to_string()),
            ("tun_id", format!("{vni:#x}")),
        ];
        for (k, v) in
            [("src_mac", &p.src_mac), ("dst_mac", &p.dst_mac), ("tun_opt", &option.map(str::to_string))]
        {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        let resp = crate::auth::client()
            .get(&url)
            .query(&q)
            .timeout(self.cfg.timeout * 3)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(format!("{url}: {status}: {}", msg.trim()));
        }
        serde_json::from_str(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }
}

/// The packet of a flow kovn saw: its 5-tuple, TCP state (answered: established) and, when
/// it had oversized packets, their size.
pub fn packet_of_flow(f: &crate::flows::Flow) -> Result<Packet, TraceError> {
    #[expect(clippy::map_err_ignore, reason = "the message names the flow, its protocol and the ones traced")]
    let proto = Proto::parse(f.protocol.as_str()).map_err(|_| {
        TraceError::BadInput(format!("flow {} is {}: only tcp, udp and icmp trace", f.id, f.protocol))
    })?;
    Ok(Packet {
        src: f.src_ip,
        dst: f.dst_ip,
        proto,
        sport: if proto == Proto::Icmp { 0 } else { f.src_port },
        dport: if proto == Proto::Icmp { 0 } else { f.dst_port },
        src_mac: None,
        dst_mac: None,
        // Answered (or answered and closed with FINs): the connection was established.
        established: proto == Proto::Tcp && matches!(f.state.as_str(), "answered" | "closed"),
        size: f.mtu.as_ref().map(|m| m.oversized_max_bytes).filter(|b| *b > 0),
    })
}

/// The packet of a finding: its first flow still in `flows`, else its own pair; the largest
/// request of an MTU finding as the size.
pub fn packet_of_alert(
    a: &crate::detection::Alert,
    flows: &[crate::flows::Flow],
) -> Result<(Packet, Option<String>), TraceError> {
    let size = a.evidence.max_request_bytes.map(|b| b.min(65535) as u32);
    if let Some(f) = a.flows.iter().find_map(|id| flows.iter().find(|f| &f.id == id)) {
        let mut p = packet_of_flow(f)?;
        p.size = p.size.or(size);
        return Ok((p, Some(f.id.clone())));
    }
    // The flows behind it expired: trace the finding's own pair.
    let proto = Proto::parse(&a.protocol)?;
    Ok((
        Packet {
            src: a.src_ip,
            dst: a.dst_ip,
            proto,
            sport: if proto == Proto::Icmp { 0 } else { 40000 },
            dport: if proto == Proto::Icmp { 0 } else { a.dst_port.unwrap_or(0) },
            src_mac: None,
            dst_mac: None,
            established: false,
            size,
        },
        None,
    ))
}

/// The logical flow uuid prefix behind an OpenFlow cookie: ovn-controller (OVN 23.03) sets the
/// cookie to the first 32 bits of the logical flow's uuid, which OVS prints without leading
/// zeros (`0xba6db16` for `0ba6db16-...`). Larger cookies are not OVN's.
fn lflow_prefix(cookie: &str) -> Option<String> {
    let v = u64::from_str_radix(cookie.trim_start_matches("0x"), 16).ok()?;
    (v != 0 && v <= u64::from(u32::MAX)).then(|| format!("{v:08x}"))
}

/// `ovn-sbctl --format=json list`: `{"headings": [...], "data": [[...]]}` -> first row by heading.
fn first_row(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let heads = v.get("headings")?.as_array()?;
    let row = v.get("data")?.as_array()?.first()?.as_array()?;
    Some(heads.iter().filter_map(|h| h.as_str().map(str::to_string)).zip(row.iter().cloned()).collect())
}

fn json_map(v: Option<&serde_json::Value>) -> std::collections::BTreeMap<String, String> {
    crate::ovsdb::map_column(v)
}

fn json_uuid(v: Option<&serde_json::Value>) -> String {
    v.map(crate::ovsdb::atom_string).unwrap_or_default()
}

/// The `ofproto/trace` flow: the real in_port, L2/L3/L4 fields, and for the remote half the
/// tunnel metadata OVN's Geneve carries (OVN 23.03: `tun_metadata0` = ingress << 16 | egress
/// port keys, VNI = datapath key).
pub fn ofproto_flow(p: &Packet, in_port: u32, src_mac: &str, dst_mac: &str, t: Option<&TunnelIn>) -> String {
    let mut f = format!("in_port={in_port}");
    if let Some(t) = t {
        let (s, d) = if t.src.is_ipv4() { ("tun_src", "tun_dst") } else { ("tun_ipv6_src", "tun_ipv6_dst") };
        f.push_str(&format!(",tun_id={:#x},{s}={},{d}={}", t.vni, t.src, t.dst));
        if let Some(o) = &t.option {
            f.push_str(&format!(",tun_metadata0={o}"));
        }
    }
    let v6 = p.src.is_ipv6();
    let proto = match (p.proto, v6) {
        (Proto::Tcp, false) => "tcp",
        (Proto::Udp, false) => "udp",
        (Proto::Icmp, false) => "icmp",
        (Proto::Tcp, true) => "tcp6",
        (Proto::Udp, true) => "udp6",
        (Proto::Icmp, true) => "icmp6",
    };
    let (s, d) = if v6 { ("ipv6_src", "ipv6_dst") } else { ("nw_src", "nw_dst") };
    f.push_str(&format!(",{proto},dl_src={src_mac},dl_dst={dst_mac},{s}={},{d}={},nw_ttl=64", p.src, p.dst));
    match (p.proto, v6) {
        (Proto::Icmp, false) => f.push_str(",icmp_type=8,icmp_code=0"),
        (Proto::Icmp, true) => f.push_str(",icmpv6_type=128,icmpv6_code=0"),
        (Proto::Tcp, _) => f.push_str(&format!(
            ",tp_src={},tp_dst={},tcp_flags={}",
            p.sport,
            p.dport,
            if p.established { "ack" } else { "syn" }
        )),
        // OVS 3.1 maps `tp_src` to the TCP field only ("prerequisites not met" with udp).
        (Proto::Udp, _) => f.push_str(&format!(",udp_src={},udp_dst={}", p.sport, p.dport)),
    }
    f
}

/// The `ovn-trace` microflow of the same packet from the pod's logical switch port.
pub fn ovn_microflow(p: &Packet, inport: &str, src_mac: &str, dst_mac: &str) -> String {
    let (ip, icmp) = if p.src.is_ipv4() { ("ip4", "icmp4") } else { ("ip6", "icmp6") };
    // `ip.ttl` is OVN's field for the IPv4 TTL and the IPv6 hop limit alike.
    let ttl = "ip.ttl == 64";
    let l4 = match p.proto {
        Proto::Tcp => format!("tcp && tcp.src == {} && tcp.dst == {}", p.sport, p.dport),
        Proto::Udp => format!("udp && udp.src == {} && udp.dst == {}", p.sport, p.dport),
        Proto::Icmp if p.src.is_ipv4() => format!("{icmp} && {icmp}.type == 8"),
        Proto::Icmp => format!("{icmp} && {icmp}.type == 128"),
    };
    format!(
        "inport == \"{inport}\" && eth.src == {src_mac} && eth.dst == {dst_mac} && {ip}.src == {} && {ip}.dst == {} && {ttl} && {l4}",
        p.src, p.dst
    )
}

fn port_words(ports: &[OvsPort], ofport: u32, remote_node: Option<&str>) -> String {
    match ports.iter().find(|x| x.ofport == ofport) {
        Some(OvsPort { pod: Some(pod), name, .. }) => format!("pod {pod}'s port {name}"),
        Some(OvsPort { remote_ip: Some(ip), name, .. }) => {
            format!("tunnel port {name} towards {}", remote_node.map_or(ip.to_string(), str::to_string))
        }
        Some(x) => format!("port {} ({})", x.name, ofport),
        None => format!("OpenFlow port {ofport}"),
    }
}

fn describe_outcome(o: &Outcome, facts: &Facts) -> String {
    match o {
        Outcome::Drop => "drop".into(),
        Outcome::Output { ofport: Some(n), .. } => {
            format!("output to {}", port_words(&facts.ports, *n, facts.remote_node.as_deref()))
        }
        Outcome::Output { datapath_port, .. } => format!("output to datapath port {datapath_port}"),
        Outcome::TunnelPush { remote_ip, vni, .. } => {
            let ip = remote_ip.map_or("?".to_string(), |i| i.to_string());
            let node = facts.remote_node.clone().unwrap_or_else(|| ip.clone());
            match vni {
                Some(v) => format!("tunnel push towards {node} ({ip}, VNI {v})"),
                None => format!("tunnel push towards {node} ({ip})"),
            }
        }
        Outcome::Other { actions } if actions.is_empty() => "no datapath actions".into(),
        Outcome::Other { actions } => format!("datapath actions {actions}"),
    }
}

/// `ACL 'name' of NetworkPolicy ns/name`, or the logical stage, for a logical flow.
fn lflow_words(lf: &LogicalFlow) -> String {
    match &lf.acl {
        Some(acl) => {
            let name = acl.name.clone().unwrap_or_else(|| acl.uuid.chars().take(8).collect());
            match &acl.network_policy {
                Some(np) => format!("ACL '{name}' of NetworkPolicy {np}"),
                None => format!("ACL '{name}' ({} {} priority {})", acl.direction, acl.action, acl.priority),
            }
        }
        None if lf.stage.contains("_acl") => {
            format!("OVN ACL stage {} (priority {}, match {})", lf.stage, lf.priority, lf.matches)
        }
        None => format!("OVN stage {}", lf.stage),
    }
}

/// This node's half in words, without the node name.
fn half(r: &TraceReport) -> String {
    if let Some(d) = &r.deciding_rule {
        let mut s = if d.no_match {
            format!("dropped by table {} (no rule matched)", d.table)
        } else {
            format!(
                "dropped by table {}, priority {}, cookie {}",
                d.table,
                d.priority.map_or("?".into(), |p| p.to_string()),
                d.cookie.as_deref().unwrap_or("0")
            )
        };
        match &d.logical_flow {
            Some(lf) => s.push_str(&format!(", {}", lflow_words(lf))),
            None if !d.no_match => s.push_str(&format!(
                " (rule {} actions={}; not an OVN logical flow)",
                d.matches,
                d.actions.join(",")
            )),
            None => {}
        }
        return s;
    }
    r.result.replace("output to ", "delivered to ")
}

fn verdict(r: &TraceReport, facts: &Facts) -> String {
    let node = &r.node;
    let ofp = r.ofproto_trace.as_ref().map(|t| &t.outcome);
    if let Some(m) = &r.mtu
        && !m.fits
    {
        let to = facts.remote_node.clone().unwrap_or_else(|| "the other node".into());
        return format!(
            "MTU: a {}-byte packet would be sent to the tunnel towards {to} at {} bytes ({} of encapsulation), \
             underlay MTU {} ({} on {node})",
            m.packet_bytes, m.outer_bytes, m.tunnel_header_bytes, m.underlay_mtu, m.underlay_iface
        );
    }
    let mut v = match ofp {
        Some(Outcome::TunnelPush { .. }) if r.tunnel_in.is_none() => {
            let mut s = format!("{} on {node}", r.result.replacen("tunnel push", "output to tunnel", 1));
            match (&r.remote, &r.remote_error) {
                (Some(rem), _) => s.push_str(&format!(", then on {} {}", rem.node, half(rem))),
                (None, Some(e)) => s.push_str(&format!("; the destination node's half is unknown: {e}")),
                (None, None) => {}
            }
            s
        }
        // OVS 3.1's ofproto/trace does not follow a `hash(...)` recirculation (OVN's load
        // balancer select groups with dp_hash): say so instead of naming a result.
        Some(Outcome::Other { actions }) if actions.contains("recirc(") => {
            let mut s = format!(
                "the OVS trace on {node} stops at {actions} (a recirculation ofproto/trace does not follow, \
                 e.g. a load-balancer group)"
            );
            if let Some(OvnTrace { outcome: OvnOutcome::Output { port }, .. }) = &r.ovn_trace {
                s.push_str(&format!("; ovn-trace: output to {port}"));
            }
            s
        }
        _ => format!("{} on {node}", half(r)),
    };
    // The logical view, when it names an ACL drop that OpenFlow's verdict does not.
    if let Some(OvnTrace { outcome: OvnOutcome::Drop { stage }, .. }) = &r.ovn_trace
        && !v.contains("ACL '")
    {
        match r.ovn_acls.iter().find(|lf| lf.uuid.starts_with(&stage.uuid)) {
            Some(lf) => v.push_str(&format!("; ovn-trace: dropped by {}", lflow_words(lf))),
            None => v.push_str(&format!(
                "; ovn-trace: dropped in {} (priority {}, {})",
                stage.name, stage.priority, stage.matches
            )),
        }
    }
    v
}

#[cfg(test)]
mod tests;

/// Run flags of the drill-down (`kovn-monitor run`).
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// OVS run directory: ovs-vswitchd's control socket (`ovs-vswitchd.<pid>.ctl` or
    /// `ovs-vswitchd.ctl`) and the bridges' `<bridge>.mgmt` sockets, for `trace`.
    #[arg(long, value_name = "DIR", default_value = "/var/run/openvswitch", env = "OVS_RUNDIR")]
    pub ovs_rundir: PathBuf,
    /// The integration bridge the pods are on.
    #[arg(long, value_name = "NAME", default_value = "br-int", value_parser = parse_bridge)]
    pub integration_bridge: String,
    /// The OVN northbound database (`unix:PATH` or `tcp:HOST:PORT`), read by `trace` to name
    /// the ACL and NetworkPolicy behind a logical flow. Off unless given.
    #[arg(long, value_name = "ADDR", value_parser = parse_db)]
    pub ovn_nb: Option<String>,
    /// Serve `GET /api/v1/trace` (runs read-only OVS/OVN commands on request; off by default).
    /// `kovn-monitor trace` and the other nodes' monitors (the remote half) need it.
    #[arg(long)]
    pub enable_trace_api: bool,
    /// Do not run the drill-down when a finding fires (it runs once per finding, one at a
    /// time, at most one every 10 s).
    #[arg(long)]
    pub no_trace_on_alert: bool,
    /// Time limit of each OVS/OVN command of the drill-down.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub trace_timeout: Duration,
}

fn parse_bridge(s: &str) -> Result<String, String> {
    if valid_name(s) { Ok(s.to_string()) } else { Err(format!("invalid bridge name {s:?}")) }
}

fn parse_db(s: &str) -> Result<String, String> {
    s.parse::<crate::ovsdb::Address>().map(|a| a.to_string()).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 5s)"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(60) {
        return Err("must be between 1s and 60s".into());
    }
    Ok(d)
}

impl TraceArgs {
    pub fn config(&self, ovn_sb: Option<String>, peer_port: u16) -> TraceConfig {
        TraceConfig {
            ovs_rundir: self.ovs_rundir.clone(),
            bridge: self.integration_bridge.clone(),
            ovn_sb,
            ovn_nb: self.ovn_nb.clone(),
            timeout: self.trace_timeout,
            peer_port,
            api_enabled: self.enable_trace_api,
        }
    }
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

impl TraceError {
    fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::BadInput(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed(_) => StatusCode::BAD_GATEWAY,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

fn error_response(e: TraceError) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (e.status(), axum::Json(ApiError { error: e.to_string() })).into_response()
}

/// `GET /api/v1/trace?flow=ID | alert=ID | src=&dst=[&proto=&sport=&dport=&size=]`.
async fn trace_handler(
    axum::extract::State(t): axum::extract::State<Arc<Tracer>>,
    query: Result<axum::extract::Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !t.cfg.api_enabled {
        return error_response(TraceError::NotFound(
            "the trace API is off on this monitor (start it with --enable-trace-api)".into(),
        ));
    }
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return error_response(TraceError::BadInput(e.body_text())),
    };
    let Ok(_slot) = t.queue.try_acquire() else {
        // A trace takes up to a few command timeouts: ask to come back after one.
        let after = t.cfg.timeout.as_secs().max(1).to_string();
        let mut r = error_response(TraceError::Busy(format!(
            "{TRACE_QUEUE} traces already running or waiting on this node; retry after {after}s"
        )));
        if let Ok(v) = axum::http::HeaderValue::from_str(&after) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    };
    match t.trace(&q).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => error_response(e),
    }
}

/// The trace route, with the tracer as its state (merged into the API's router).
pub fn router(t: Arc<Tracer>) -> axum::Router {
    axum::Router::new().route("/api/v1/trace", axum::routing::get(trace_handler)).with_state(t)
}

/// A finding's episode: its id and when it (last) started firing. A finding that resolves
/// and fires again keeps its id but is a new episode, with a new drill-down.
type Episode = (String, time::OffsetDateTime);

/// Runs the drill-down once per firing episode of a finding, one at a time and at most one
/// every `MIN_GAP`, in the background; results are kept by episode.
pub struct OnAlert {
    tracer: Arc<Tracer>,
    done: Arc<std::sync::Mutex<std::collections::HashMap<Episode, crate::model::AlertDrillDown>>>,
    started: std::collections::HashSet<Episode>,
    last: Option<std::time::Instant>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

const MIN_GAP: Duration = Duration::from_secs(10);

impl OnAlert {
    pub fn new(tracer: Arc<Tracer>) -> Self {
        Self {
            tracer,
            done: Default::default(),
            started: Default::default(),
            last: None,
            running: Default::default(),
        }
    }

    /// Starts at most one new drill-down for a firing finding of `alerts`, attaches the ones
    /// done, and forgets findings that are gone.
    pub fn update(&mut self, alerts: &mut [crate::detection::Alert], flows: &[crate::flows::Flow]) {
        use std::sync::atomic::Ordering;
        let ready = !self.running.load(Ordering::Acquire) && self.last.is_none_or(|t| t.elapsed() >= MIN_GAP);
        let episode = |a: &crate::detection::Alert| (a.id.clone(), a.first_seen);
        if ready
            && let Some(a) =
                alerts.iter().find(|a| a.state == AlertState::Firing && !self.started.contains(&episode(a)))
        {
            self.started.insert(episode(a));
            self.last = Some(std::time::Instant::now());
            self.running.store(true, Ordering::Release);
            // The finding is new in this poll (not yet published): trace from it directly.
            let packet = packet_of_alert(a, flows);
            let (tracer, done, running, id, key) =
                (self.tracer.clone(), self.done.clone(), self.running.clone(), a.id.clone(), episode(a));
            tokio::spawn(async move {
                let r = match packet {
                    Ok((p, flow_id)) => tracer.trace_packet(p, None, flow_id).await,
                    Err(e) => Err(e),
                };
                let now = crate::model::rfc3339(time::OffsetDateTime::now_utc());
                let d = match r {
                    Ok(r) => crate::model::AlertDrillDown { verdict: r.verdict, time: now, error: None },
                    Err(e) => crate::model::AlertDrillDown {
                        verdict: String::new(),
                        time: now,
                        error: Some(e.to_string()),
                    },
                };
                log::info!("drill-down of {id}: {}", d.error.as_deref().unwrap_or(&d.verdict));
                done.lock().unwrap_or_else(|p| p.into_inner()).insert(key, d);
                running.store(false, Ordering::Release);
            });
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        for a in alerts.iter_mut() {
            a.drilldown = done.get(&episode(a)).cloned();
        }
        done.retain(|k, _| alerts.iter().any(|a| &episode(a) == k));
        self.started.retain(|k| alerts.iter().any(|a| &episode(a) == k));
    }
}
