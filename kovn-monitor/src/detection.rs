//! The collector's judgement: findings about broken paths, as alert objects with evidence and
//! a verdict on where packets stop. Detectors run over the flow table after every poll.

use serde::{Deserialize, Serialize};

use crate::inventory::Endpoint;

/// Alert kinds.
pub const KIND_REQUEST_WITHOUT_REPLY: &str = "request_without_reply";
pub const KIND_CONNECTION_REFUSED: &str = "connection_refused";
pub const KIND_MTU: &str = "mtu";
pub const KIND_TUNNEL: &str = "tunnel";
pub const KIND_DROPS: &str = "drops";

/// One finding. Its `id` is stable for the same kind, pair, destination port and protocol,
/// so a problem that persists is one alert, not a flood.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    /// `request_without_reply|connection_refused|mtu|tunnel|drops`
    pub kind: String,
    /// `firing|resolved`
    pub state: String,
    /// `critical|warning|info`
    pub severity: String,
    pub node: String,
    pub scenario: String,
    pub protocol: String,
    pub src_ip: std::net::IpAddr,
    pub dst_ip: std::net::IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<Endpoint>,
    /// For tunnel findings: the remote node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
    /// RFC 3339.
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    pub summary: String,
    pub evidence: Evidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Flow ids behind this finding (for `trace --flow`).
    pub flows: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    pub requests: u64,
    pub requests_unanswered: u64,
    pub replies: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rst: Option<u64>,
    /// The largest request seen (L3 bytes) and the MTU it crossed, for MTU findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    /// Answered flows of the same pair (for the MTU black hole and tunnel findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_flows: Option<u64>,
    /// Where this node saw the requests: interface names and hooks.
    pub seen_at: Vec<String>,
}

/// Where packets stop, and what to run next (the seeds' diagnosis commands).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// `never_left_source|lost_in_tunnel|lost_before_destination_pod|no_reply_from_destination|
    /// refused_by_destination|unknown`
    pub hop: String,
    pub summary: String,
    pub next_commands: Vec<String>,
}
