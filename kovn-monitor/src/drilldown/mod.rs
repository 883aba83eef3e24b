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
mod command;
pub mod conntrack;
pub mod dumpflows;
mod http;
pub mod ofproto;
mod on_alert;
pub mod ovntrace;
mod tracer;
mod verdict;

pub use command::{COMMAND_OUTPUT_MAX, run_command, run_command_bounded};
pub use http::{TraceQuery, router};
pub use on_alert::OnAlert;
pub use tracer::{TRACE_QUEUE, Tracer, ofproto_flow, ovn_microflow, packet_of_alert, packet_of_flow};

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
