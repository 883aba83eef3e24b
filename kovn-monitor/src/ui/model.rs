//! The view model of `kovn-monitor top`: what the monitors answered, turned into rows, rates,
//! totals and the columns that fit. Pure (no terminal, no network, no clock) so every rule the
//! screen follows is unit-tested here.
//!
//! Size: the view model (rows, columns, filters, sort, merge of several monitors); 28% of it is
//! tests.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::detection::Alert;
use crate::drops::DropRecord;
use crate::flows::{Flow, FlowAlert};
use crate::inventory::Endpoint;
use crate::model::{AlertState, FlowState, Protocol, Scenario};

/// One monitor's answer to one refresh.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    pub endpoint: String,
    pub node: String,
    /// RFC 3339 time of the daemon's poll the flows come from (rates are per daemon time, so a
    /// refresh that lands between two polls changes nothing).
    pub time: String,
    pub flows: Vec<Flow>,
    pub alerts: Vec<Alert>,
    pub drops: Vec<DropRecord>,
    /// `status` of `/healthz`.
    pub health: String,
}

/// What is known about one monitor: its last answer, or why it did not answer.
#[derive(Clone, Debug)]
pub struct Source {
    pub endpoint: String,
    pub snapshot: Option<NodeSnapshot>,
    /// The last error; the source is disconnected while it is set (the snapshot is dropped).
    pub error: Option<String>,
}

impl Source {
    pub fn new(endpoint: &str) -> Self {
        Self { endpoint: endpoint.to_string(), snapshot: None, error: None }
    }

    pub fn connected(&self) -> bool {
        self.error.is_none() && self.snapshot.is_some()
    }

    /// Records one fetch: an answer replaces the snapshot, a failure drops it (stale flows of a
    /// monitor that is gone would look live).
    pub fn update(&mut self, result: Result<NodeSnapshot, String>) {
        match result {
            Ok(s) => {
                self.snapshot = Some(s);
                self.error = None;
            }
            Err(e) => {
                self.snapshot = None;
                self.error = Some(e);
            }
        }
    }

    /// The node name if it answered once, else the endpoint.
    pub fn label(&self) -> String {
        self.snapshot.as_ref().map(|s| s.node.clone()).unwrap_or_else(|| self.endpoint.clone())
    }
}

/// Packets/s and bytes/s of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub pps_fwd: f64,
    pub pps_rev: f64,
    pub bps_fwd: f64,
    pub bps_rev: f64,
}

#[derive(Clone, Debug)]
struct RateSample {
    at: f64,
    counters: [u64; 4],
    rates: Option<Rates>,
    generation: u64,
}

/// Rates from the differences of a flow's counters between two daemon polls.
#[derive(Debug, Default)]
pub struct RateTracker {
    samples: HashMap<String, RateSample>,
    generation: u64,
}

impl RateTracker {
    /// Starts a refresh: keys not updated until [`RateTracker::finish`] are forgotten.
    pub fn begin(&mut self) {
        self.generation += 1;
    }

    pub fn finish(&mut self) {
        let g = self.generation;
        self.samples.retain(|_, s| s.generation == g);
    }

    /// The rates of `key` with counters `[packets_fwd, packets_rev, bytes_fwd, bytes_rev]` at
    /// daemon time `at` (seconds). None until two polls were seen; the same poll seen again
    /// keeps the previous rates; counters going backwards (a new flow with the same id after
    /// the old one expired) start over.
    pub fn update(&mut self, key: &str, at: f64, counters: [u64; 4]) -> Option<Rates> {
        let generation = self.generation;
        let Some(prev) = self.samples.get_mut(key) else {
            self.samples.insert(key.to_string(), RateSample { at, counters, rates: None, generation });
            return None;
        };
        prev.generation = generation;
        if at <= prev.at {
            return prev.rates;
        }
        if counters.iter().zip(prev.counters).any(|(now, before)| *now < before) {
            *prev = RateSample { at, counters, rates: None, generation };
            return None;
        }
        let dt = at - prev.at;
        let d = |i: usize| (counters[i] - prev.counters[i]) as f64 / dt;
        let rates = Rates { pps_fwd: d(0), pps_rev: d(1), bps_fwd: d(2), bps_rev: d(3) };
        *prev = RateSample { at, counters, rates: Some(rates), generation };
        Some(rates)
    }
}

/// One node's view of a flow (the same flow id is seen by both nodes of a cross-node flow).
#[derive(Clone, Debug, Serialize)]
pub struct Observation {
    pub node: String,
    pub endpoint: String,
    pub flow: Flow,
}

/// One line of the flow table: a flow merged over the nodes that see it.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub nodes: Vec<String>,
    pub src: String,
    pub dst: String,
    pub scenario: Scenario,
    pub protocol: Protocol,
    pub src_port: u16,
    pub dst_port: u16,
    /// The most broken of the nodes' states.
    pub state: FlowState,
    pub packets_fwd: u64,
    pub packets_rev: u64,
    pub bytes_fwd: u64,
    pub bytes_rev: u64,
    /// Per second, the highest of the nodes' (None until two polls were seen).
    pub rates: Option<Rates>,
    /// The longest of the nodes' (the client's side includes the whole path).
    pub rtt_us: Option<u64>,
    pub requests_unanswered: u64,
    pub drops: u64,
    pub oversized: u64,
    pub alert: Option<FlowAlert>,
    pub broken: bool,
    pub suspect: bool,
    #[serde(skip)]
    pub observations: Vec<Observation>,
}

/// `namespace/pod` when known, else the IP.
pub fn who(e: Option<&Endpoint>, ip: std::net::IpAddr) -> String {
    match e {
        Some(Endpoint { namespace: Some(ns), pod: Some(pod), .. }) => format!("{ns}/{pod}"),
        _ => ip.to_string(),
    }
}

fn state_rank(s: FlowState) -> u8 {
    match s {
        FlowState::Unanswered => 4,
        FlowState::Reset => 3,
        FlowState::Oneway => 2,
        FlowState::Answered => 1,
        FlowState::Closed => 0,
    }
}

/// A flow is broken when a firing finding names it: the daemon's detectors wait out the
/// reply timeout and tell a refusal from a normal reset, so a SYN caught between two polls or
/// a connection closed by RST is not an outage.
pub fn is_broken(alert: Option<&FlowAlert>) -> bool {
    alert.is_some()
}

/// Unanswered, or refused (reset by the responder before any answer), without a finding
/// (yet): worth a look, not yet judged broken. A connection reset after it was answered is how
/// many programs close; it is not suspect.
pub fn is_suspect(f: &Flow) -> bool {
    f.alert.is_none()
        && (f.state == FlowState::Unanswered
            || (f.state == FlowState::Reset && f.replies == 0 && f.rst_rev > 0))
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = crate::model::parse_rfc3339(rfc3339)?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// The rows of all connected sources, one per flow id, rates updated from the counters.
pub fn build_rows(sources: &[Source], rates: &mut RateTracker) -> Vec<Row> {
    rates.begin();
    let mut by_id: BTreeMap<String, Row> = BTreeMap::new();
    for snap in sources.iter().filter_map(|s| s.snapshot.as_ref()) {
        let at = unix_seconds(&snap.time);
        for f in &snap.flows {
            let counters = [f.packets_fwd, f.packets_rev, f.bytes_fwd, f.bytes_rev];
            let r = at.and_then(|at| rates.update(&format!("{}/{}", snap.endpoint, f.id), at, counters));
            let obs =
                Observation { node: snap.node.clone(), endpoint: snap.endpoint.clone(), flow: f.clone() };
            let drops: u64 = f.drops.iter().map(|d| d.count).sum();
            let oversized = f.mtu.as_ref().map_or(0, |m| u64::from(m.oversized_packets));
            match by_id.get_mut(&f.id) {
                None => {
                    by_id.insert(
                        f.id.clone(),
                        Row {
                            id: f.id.clone(),
                            nodes: vec![snap.node.clone()],
                            src: who(f.src.as_ref(), f.src_ip),
                            dst: who(f.dst.as_ref(), f.dst_ip),
                            scenario: f.scenario,
                            protocol: f.protocol,
                            src_port: f.src_port,
                            dst_port: f.dst_port,
                            state: f.state,
                            packets_fwd: f.packets_fwd,
                            packets_rev: f.packets_rev,
                            bytes_fwd: f.bytes_fwd,
                            bytes_rev: f.bytes_rev,
                            rates: r,
                            rtt_us: f.rtt_us,
                            requests_unanswered: u64::from(f.requests_unanswered),
                            drops,
                            oversized,
                            alert: f.alert.clone(),
                            broken: false,
                            suspect: false,
                            observations: vec![obs],
                        },
                    );
                }
                Some(row) => merge(row, f, r, drops, oversized, obs),
            }
        }
    }
    rates.finish();
    let mut rows: Vec<Row> = by_id.into_values().collect();
    for r in &mut rows {
        r.broken = is_broken(r.alert.as_ref());
        r.suspect = !r.broken && r.observations.iter().any(|o| is_suspect(&o.flow));
    }
    rows
}

/// Another node's view of the same flow: the worst state, the most packets, the longest RTT;
/// names from whichever node knows them (the remote pod may only be known on its own node).
fn merge(row: &mut Row, f: &Flow, r: Option<Rates>, drops: u64, oversized: u64, obs: Observation) {
    row.nodes.push(obs.node.clone());
    if state_rank(f.state) > state_rank(row.state) {
        row.state = f.state;
    }
    row.packets_fwd = row.packets_fwd.max(f.packets_fwd);
    row.packets_rev = row.packets_rev.max(f.packets_rev);
    row.bytes_fwd = row.bytes_fwd.max(f.bytes_fwd);
    row.bytes_rev = row.bytes_rev.max(f.bytes_rev);
    row.rates = match (row.rates, r) {
        (Some(a), Some(b)) => Some(Rates {
            pps_fwd: a.pps_fwd.max(b.pps_fwd),
            pps_rev: a.pps_rev.max(b.pps_rev),
            bps_fwd: a.bps_fwd.max(b.bps_fwd),
            bps_rev: a.bps_rev.max(b.bps_rev),
        }),
        (a, b) => a.or(b),
    };
    row.rtt_us = row.rtt_us.max(f.rtt_us);
    row.requests_unanswered = row.requests_unanswered.max(u64::from(f.requests_unanswered));
    // Drops happen at one place: the nodes see different drops, so they add up.
    row.drops += drops;
    row.oversized = row.oversized.max(oversized);
    if row.alert.is_none() {
        row.alert = f.alert.clone();
    }
    if row.src.parse::<std::net::IpAddr>().is_ok() {
        row.src = who(f.src.as_ref(), f.src_ip);
    }
    if row.dst.parse::<std::net::IpAddr>().is_ok() {
        row.dst = who(f.dst.as_ref(), f.dst_ip);
    }
    row.observations.push(obs);
}

/// The columns of the flow table, in screen order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Column {
    Src,
    Dst,
    Proto,
    Scenario,
    State,
    Pps,
    Bps,
    Rtt,
    Drops,
    Oversized,
    Nodes,
    Verdict,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Src,
        Column::Dst,
        Column::Proto,
        Column::Scenario,
        Column::State,
        Column::Pps,
        Column::Bps,
        Column::Rtt,
        Column::Drops,
        Column::Oversized,
        Column::Nodes,
        Column::Verdict,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Src => "SRC",
            Column::Dst => "DST",
            Column::Proto => "PROTO PORTS",
            Column::Scenario => "SCENARIO",
            Column::State => "STATE",
            Column::Pps => "PKT/S FWD/REV",
            Column::Bps => "BYTES/S FWD/REV",
            Column::Rtt => "RTT",
            Column::Drops => "DROPS",
            Column::Oversized => "OVERSZ",
            Column::Nodes => "NODES",
            Column::Verdict => "VERDICT",
        }
    }

    /// Width on screen; the verdict's is its least and it takes what is left.
    pub fn width(self) -> u16 {
        match self {
            Column::Src | Column::Dst => 30,
            Column::Proto => 15,
            Column::Scenario => 21,
            Column::State => 10,
            Column::Pps => 13,
            Column::Bps => 15,
            Column::Rtt => 8,
            Column::Drops => 5,
            Column::Oversized => 6,
            Column::Nodes => 13,
            Column::Verdict => 32,
        }
    }

    /// Which columns stay when the terminal is narrow: lower first. The two ends and whether
    /// the flow works matter most; the rest is detail.
    fn keep_rank(self) -> u8 {
        match self {
            Column::Src | Column::Dst => 0,
            Column::State => 1,
            Column::Verdict => 2,
            Column::Proto => 3,
            Column::Bps => 4,
            Column::Pps => 5,
            Column::Rtt => 6,
            Column::Drops => 7,
            Column::Scenario => 8,
            Column::Oversized => 9,
            Column::Nodes => 10,
        }
    }

    /// The cell text (no truncation; the renderer cuts to the width).
    pub fn cell(self, r: &Row) -> String {
        match self {
            Column::Src => r.src.clone(),
            Column::Dst => r.dst.clone(),
            // ICMP's "port" is the echo id; other protocols have none.
            Column::Proto => match r.protocol {
                Protocol::Icmp | Protocol::Icmpv6 => format!("{} id {}", r.protocol, r.src_port),
                Protocol::Other => r.protocol.to_string(),
                p => format!("{p} {}>{}", r.src_port, r.dst_port),
            },
            Column::Scenario => r.scenario.to_string(),
            Column::State => r.state.to_string(),
            Column::Pps => r
                .rates
                .map(|x| format!("{}/{}", human_rate(x.pps_fwd), human_rate(x.pps_rev)))
                .unwrap_or_else(|| "-".into()),
            Column::Bps => r
                .rates
                .map(|x| format!("{}/{}", human_bytes_rate(x.bps_fwd), human_bytes_rate(x.bps_rev)))
                .unwrap_or_else(|| "-".into()),
            Column::Rtt => r.rtt_us.map(human_rtt).unwrap_or_else(|| "-".into()),
            Column::Drops => r.drops.to_string(),
            Column::Oversized => r.oversized.to_string(),
            Column::Nodes => r.nodes.join(","),
            Column::Verdict => verdict_text(r),
        }
    }
}

/// `hop: summary` of the flow's finding; for a broken flow without one yet, why it looks
/// broken.
pub fn verdict_text(r: &Row) -> String {
    match &r.alert {
        Some(FlowAlert { hop: Some(h), verdict: Some(v), .. }) => format!("{h}: {v}"),
        Some(FlowAlert { hop: Some(h), .. }) => h.to_string(),
        Some(FlowAlert { verdict: Some(v), .. }) => v.clone(),
        Some(a) => a.kind.to_string(),
        None if r.suspect && r.requests_unanswered > 0 => {
            format!("{} unanswered, no finding (yet)", r.requests_unanswered)
        }
        None if r.suspect => format!("{}, no finding (yet)", r.state),
        None => String::new(),
    }
}

fn human_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub fn human_bytes_rate(v: f64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let (mut v, mut u) = (v, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

fn human_rtt(us: u64) -> String {
    if us >= 10_000 { format!("{}ms", us / 1000) } else { format!("{:.2}ms", us as f64 / 1000.0) }
}

/// The columns that fit `width` cells (one space between columns, 2 for the broken marker),
/// in screen order, the least needed dropped first.
pub fn visible_columns(width: u16) -> Vec<Column> {
    let mut by_rank = Column::ALL.to_vec();
    by_rank.sort_by_key(|c| c.keep_rank());
    let mut used: u16 = 2;
    let mut keep = BTreeSet::new();
    for c in by_rank {
        let need = c.width() + 1;
        // The two ends always show, cut if they must.
        if used + need <= width || c.keep_rank() == 0 {
            used += need;
            keep.insert(c);
        }
    }
    keep.into_iter().collect()
}

/// Sort order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub descending: bool,
}

impl Default for Sort {
    /// Broken flows first, then the busiest.
    fn default() -> Self {
        Self { column: Column::State, descending: true }
    }
}

fn total_bps(r: &Row) -> f64 {
    r.rates.map_or(0.0, |x| x.bps_fwd + x.bps_rev)
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

fn compare(a: &Row, b: &Row, c: Column) -> Ordering {
    match c {
        Column::Src => a.src.cmp(&b.src),
        Column::Dst => a.dst.cmp(&b.dst).then(a.dst_port.cmp(&b.dst_port)),
        // By name, as shown.
        Column::Proto => a.protocol.as_str().cmp(b.protocol.as_str()).then(a.dst_port.cmp(&b.dst_port)),
        Column::Scenario => a.scenario.as_str().cmp(b.scenario.as_str()),
        Column::State => a
            .broken
            .cmp(&b.broken)
            .then(a.suspect.cmp(&b.suspect))
            .then(state_rank(a.state).cmp(&state_rank(b.state))),
        Column::Pps => cmp_f64(
            a.rates.map_or(0.0, |x| x.pps_fwd + x.pps_rev),
            b.rates.map_or(0.0, |x| x.pps_fwd + x.pps_rev),
        ),
        Column::Bps => cmp_f64(total_bps(a), total_bps(b)),
        Column::Rtt => a.rtt_us.cmp(&b.rtt_us),
        Column::Drops => a.drops.cmp(&b.drops),
        Column::Oversized => a.oversized.cmp(&b.oversized),
        Column::Nodes => a.nodes.cmp(&b.nodes),
        Column::Verdict => verdict_text(a).cmp(&verdict_text(b)),
    }
}

/// Sorts by the column; ties by traffic (busiest first), then by id so rows do not jump.
pub fn sort_rows(rows: &mut [Row], sort: Sort) {
    rows.sort_by(|a, b| {
        let primary = compare(a, b, sort.column);
        let primary = if sort.descending { primary.reverse() } else { primary };
        primary.then_with(|| cmp_f64(total_bps(b), total_bps(a))).then_with(|| a.id.cmp(&b.id))
    });
}

/// The typed filter: words separated by spaces, all must match. `ns:`, `pod:`, `scenario:`,
/// `state:` (exact, or `state:broken`, `state:suspect`), `proto:` and `node:` look at one field (substring,
/// either end for ns and pod); a bare word at the ends, scenario, state, protocol and verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<(Option<FilterField>, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterField {
    Namespace,
    Pod,
    Scenario,
    State,
    Proto,
    Node,
}

pub const FILTER_FIELDS: [&str; 6] = ["ns", "pod", "scenario", "state", "proto", "node"];

impl Filter {
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .map(|w| {
                let w = w.to_lowercase();
                let field = |k: &str| match k {
                    "ns" | "namespace" => Some(FilterField::Namespace),
                    "pod" => Some(FilterField::Pod),
                    "scenario" => Some(FilterField::Scenario),
                    "state" => Some(FilterField::State),
                    "proto" | "protocol" => Some(FilterField::Proto),
                    "node" => Some(FilterField::Node),
                    _ => None,
                };
                match w.split_once(':') {
                    Some((k, v)) if field(k).is_some() => (field(k), v.to_string()),
                    _ => (None, w),
                }
            })
            .collect();
        Self { terms }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, r: &Row) -> bool {
        self.terms.iter().all(|(field, v)| {
            let has = |s: &str| s.to_lowercase().contains(v.as_str());
            let ends = || r.observations.iter().flat_map(|o| [o.flow.src.as_ref(), o.flow.dst.as_ref()]);
            match field {
                Some(FilterField::Namespace) => {
                    ends().any(|e| e.and_then(|e| e.namespace.as_deref()).is_some_and(has))
                }
                Some(FilterField::Pod) => ends().any(|e| e.and_then(|e| e.pod.as_deref()).is_some_and(has)),
                Some(FilterField::Scenario) => has(r.scenario.as_str()),
                Some(FilterField::State) if v == "broken" => r.broken,
                Some(FilterField::State) if v == "suspect" => r.suspect,
                // Exact: `answered` must not match `unanswered`.
                Some(FilterField::State) => v.parse() == Ok(r.state),
                Some(FilterField::Proto) => has(r.protocol.as_str()),
                Some(FilterField::Node) => r.nodes.iter().any(|n| has(n)),
                None => {
                    has(&r.src)
                        || has(&r.dst)
                        || has(r.scenario.as_str())
                        || has(r.state.as_str())
                        || has(r.protocol.as_str())
                        || has(&verdict_text(r))
                }
            }
        })
    }
}

/// The header's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub flows: usize,
    pub shown: usize,
    pub broken: usize,
    pub suspect: usize,
    pub unanswered_requests: u64,
    pub drops: u64,
    /// The most frequent drop reasons (at most 3), summed over nodes.
    pub top_drop_reasons: Vec<(String, u64)>,
    /// Firing findings, one per id over all nodes.
    pub firing_alerts: usize,
    pub nodes_connected: usize,
    pub nodes_total: usize,
    /// Per monitor: its node (or endpoint) and `healthz` status or `disconnected`.
    pub health: Vec<(String, String)>,
}

pub fn totals(sources: &[Source], rows: &[Row], shown: usize) -> Totals {
    let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
    let mut firing = BTreeSet::new();
    for s in sources.iter().filter_map(|s| s.snapshot.as_ref()) {
        for d in &s.drops {
            *reasons.entry(&d.reason).or_default() += d.count;
        }
        firing.extend(s.alerts.iter().filter(|a| a.state == AlertState::Firing).map(|a| a.id.as_str()));
    }
    let drops = reasons.values().sum();
    let mut top: Vec<(String, u64)> = reasons.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(3);
    Totals {
        flows: rows.len(),
        shown,
        broken: rows.iter().filter(|r| r.broken).count(),
        suspect: rows.iter().filter(|r| r.suspect).count(),
        unanswered_requests: rows.iter().map(|r| r.requests_unanswered).sum(),
        drops,
        top_drop_reasons: top,
        firing_alerts: firing.len(),
        nodes_connected: sources.iter().filter(|s| s.connected()).count(),
        nodes_total: sources.len(),
        health: sources
            .iter()
            .map(|s| {
                let status = match (&s.snapshot, &s.error) {
                    (Some(snap), None) => snap.health.clone(),
                    _ => "disconnected".to_string(),
                };
                (s.label(), status)
            })
            .collect(),
    }
}

/// Rows after the filter and the broken-only switch (broken or suspect), sorted.
pub fn visible_rows(rows: &[Row], filter: &Filter, broken_only: bool, sort: Sort) -> Vec<Row> {
    let mut out: Vec<Row> = rows
        .iter()
        .filter(|r| (!broken_only || r.broken || r.suspect) && filter.matches(r))
        .cloned()
        .collect();
    sort_rows(&mut out, sort);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: &str, src_pod: &str, dst_pod: &str, state: &str, pkts: u64, bytes: u64) -> Flow {
        serde_json::from_value(serde_json::json!({
            "id": id, "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3", "src_port": 40000,
            "dst_port": 8080, "protocol": "tcp", "ip_proto": 6, "packets_fwd": pkts,
            "bytes_fwd": bytes, "packets_rev": pkts / 2, "bytes_rev": bytes / 2,
            "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": state, "requests": 1,
            "replies": u32::from(state == "answered"),
            "requests_unanswered": u32::from(state == "unanswered"), "rst_fwd": 0, "rst_rev": 0,
            "tcp_flags_fwd": "SYN", "tcp_flags_rev": "", "initiator_guessed": false,
            "fragment": false, "interfaces": [], "scenario": "pod_to_pod_cross_node",
            "src": {"kind": "pod", "namespace": "shop", "pod": src_pod},
            "dst": {"kind": "pod", "namespace": "db", "pod": dst_pod}
        }))
        .expect("valid flow")
    }

    fn source(endpoint: &str, node: &str, time: &str, flows: Vec<Flow>) -> Source {
        let mut s = Source::new(endpoint);
        s.update(Ok(NodeSnapshot {
            endpoint: endpoint.into(),
            node: node.into(),
            time: time.into(),
            flows,
            alerts: vec![],
            drops: vec![],
            health: "ok".into(),
        }));
        s
    }

    #[test]
    fn rates_come_from_counter_deltas_over_daemon_time() {
        let mut t = RateTracker::default();
        t.begin();
        assert_eq!(t.update("a", 10.0, [10, 5, 1000, 500]), None, "one sample has no rate");
        t.finish();
        t.begin();
        let r = t.update("a", 12.0, [30, 9, 3000, 900]).expect("two samples");
        assert_eq!(r, Rates { pps_fwd: 10.0, pps_rev: 2.0, bps_fwd: 1000.0, bps_rev: 200.0 });
        // The same daemon poll fetched again: the rates stay, not zero.
        assert_eq!(t.update("a", 12.0, [30, 9, 3000, 900]), Some(r));
        // Counters going backwards: a new flow under the same id starts over.
        assert_eq!(t.update("a", 13.0, [1, 0, 60, 0]), None);
        assert!(t.update("a", 14.0, [3, 0, 180, 0]).is_some_and(|r| r.pps_fwd == 2.0));
        t.finish();
        // A key not seen during a refresh is forgotten.
        t.begin();
        t.finish();
        t.begin();
        assert_eq!(t.update("a", 15.0, [5, 0, 300, 0]), None);
    }

    #[test]
    fn rows_merge_nodes_and_take_the_worst_state() {
        let mut client = flow("f1", "web-1", "db-0", "unanswered", 3, 180);
        client.src_ip = "10.16.0.9".parse().expect("ip");
        let mut server = flow("f1", "web-1", "db-0", "answered", 3, 180);
        server.src = None; // the server's node may not know the remote pod
        server.rtt_us = Some(900);
        let sources = vec![
            source("http://a", "node1", "2026-01-01T00:00:00Z", vec![client]),
            source(
                "http://b",
                "node2",
                "2026-01-01T00:00:00Z",
                vec![server, flow("f2", "x", "y", "answered", 1, 1)],
            ),
        ];
        let rows = build_rows(&sources, &mut RateTracker::default());
        assert_eq!(rows.len(), 2);
        let r = rows.iter().find(|r| r.id == "f1").expect("f1");
        assert_eq!(r.nodes, ["node1", "node2"]);
        assert_eq!(r.state, "unanswered");
        assert!(r.suspect && !r.broken, "unanswered without a finding: suspect, not broken");
        assert_eq!((r.src.as_str(), r.dst.as_str()), ("shop/web-1", "db/db-0"));
        assert_eq!(r.rtt_us, Some(900));
        assert_eq!(r.observations.len(), 2);
        assert!(!rows.iter().find(|r| r.id == "f2").expect("f2").broken);
    }

    #[test]
    fn rates_are_per_node_across_refreshes() {
        let mut t = RateTracker::default();
        let s1 = vec![source(
            "http://a",
            "n1",
            "2026-01-01T00:00:00Z",
            vec![flow("f", "a", "b", "answered", 10, 1000)],
        )];
        assert!(build_rows(&s1, &mut t)[0].rates.is_none());
        let s2 = vec![source(
            "http://a",
            "n1",
            "2026-01-01T00:00:02Z",
            vec![flow("f", "a", "b", "answered", 30, 5000)],
        )];
        let rows = build_rows(&s2, &mut t);
        let r = rows[0].rates.expect("rates after two polls");
        assert_eq!((r.pps_fwd, r.bps_fwd, r.bps_rev), (10.0, 2000.0, 1000.0));
        assert_eq!(Column::Bps.cell(&rows[0]), "2.0K/1000B");
    }

    #[test]
    fn alerts_mark_rows_broken_with_the_hop_verdict() {
        let mut f = flow("f", "a", "b", "answered", 1, 1);
        f.alert = Some(FlowAlert {
            id: "al".into(),
            kind: "tunnel".into(),
            hop: Some("lost_in_tunnel".into()),
            verdict: Some("replies leave node2 but never reach node1".into()),
        });
        let rows = build_rows(
            &[source("http://a", "n", "2026-01-01T00:00:00Z", vec![f])],
            &mut RateTracker::default(),
        );
        assert!(rows[0].broken);
        assert_eq!(
            Column::Verdict.cell(&rows[0]),
            "lost_in_tunnel: replies leave node2 but never reach node1"
        );
        let healthy = build_rows(
            &[source("http://a", "n", "2026-01-01T00:00:00Z", vec![flow("g", "a", "b", "closed", 1, 1)])],
            &mut RateTracker::default(),
        );
        assert!(!healthy[0].broken && !healthy[0].suspect && Column::Verdict.cell(&healthy[0]).is_empty());
        let mut refused = flow("h", "a", "b", "reset", 1, 1);
        refused.rst_rev = 1;
        let mut closed_by_rst = refused.clone();
        closed_by_rst.id = "i".into();
        closed_by_rst.replies = 1;
        let rows = build_rows(
            &[source("http://a", "n", "2026-01-01T00:00:00Z", vec![refused, closed_by_rst])],
            &mut RateTracker::default(),
        );
        assert!(rows[0].suspect && !rows[0].broken, "refused without a finding");
        assert_eq!(Column::Verdict.cell(&rows[0]), "reset, no finding (yet)");
        assert!(!rows[1].suspect, "reset after an answer: a way to close");
    }

    fn rows_of(flows: Vec<Flow>) -> Vec<Row> {
        build_rows(&[source("http://a", "n", "2026-01-01T00:00:00Z", flows)], &mut RateTracker::default())
    }

    #[test]
    fn sorting_by_any_column_both_ways() {
        let mut rows = rows_of(vec![
            flow("1", "b-pod", "z", "answered", 1, 10),
            flow("2", "a-pod", "y", "unanswered", 1, 10),
            flow("3", "c-pod", "x", "closed", 1, 10),
        ]);
        rows[0].rates = Some(Rates { bps_fwd: 50.0, ..Rates::default() });
        rows[2].rates = Some(Rates { bps_fwd: 500.0, ..Rates::default() });
        let order = |rows: &[Row]| rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join("");
        sort_rows(&mut rows, Sort::default());
        assert_eq!(order(&rows), "213", "broken first, then the busiest");
        sort_rows(&mut rows, Sort { column: Column::Src, descending: false });
        assert_eq!(order(&rows), "213");
        sort_rows(&mut rows, Sort { column: Column::Dst, descending: false });
        assert_eq!(order(&rows), "321");
        sort_rows(&mut rows, Sort { column: Column::Bps, descending: true });
        assert_eq!(order(&rows), "312");
        sort_rows(&mut rows, Sort { column: Column::Bps, descending: false });
        assert_eq!(order(&rows), "213", "no rate sorts as zero");
        for c in Column::ALL {
            sort_rows(&mut rows, Sort { column: c, descending: false });
            assert_eq!(rows.len(), 3, "{c:?}");
        }
    }

    #[test]
    fn filters_by_field_and_free_text() {
        let mut other = flow("2", "api-1", "cache-0", "answered", 1, 1);
        other.scenario = "pod_to_service".into();
        other.dst = Some(Endpoint {
            kind: "pod".into(),
            namespace: Some("infra".into()),
            pod: Some("cache-0".into()),
            ..Endpoint::default()
        });
        let rows = rows_of(vec![flow("1", "web-1", "db-0", "unanswered", 1, 1), other]);
        let ids = |text: &str| {
            let f = Filter::parse(text);
            rows.iter().filter(|r| f.matches(r)).map(|r| r.id.as_str()).collect::<Vec<_>>().join(",")
        };
        assert_eq!(ids(""), "1,2");
        assert_eq!(ids("ns:infra"), "2");
        assert_eq!(ids("ns:shop"), "1,2", "either end");
        assert_eq!(ids("pod:web"), "1");
        assert_eq!(ids("scenario:service"), "2");
        assert_eq!(ids("state:broken"), "", "unanswered without a finding is not broken");
        assert_eq!(ids("state:suspect"), "1");
        assert_eq!(ids("state:answered"), "2");
        assert_eq!(ids("proto:udp"), "");
        assert_eq!(ids("node:n"), "1,2");
        assert_eq!(ids("CACHE"), "2", "free text, any case");
        assert_eq!(ids("pod:web ns:infra"), "", "all words must match");
        assert!(Filter::parse("  ").is_empty());
        assert_eq!(
            visible_rows(&rows, &Filter::default(), true, Sort::default()).len(),
            1,
            "marked (broken or suspect) only"
        );
    }

    #[test]
    fn narrow_terminals_drop_columns_not_wrap() {
        let all: u16 = 2 + Column::ALL.iter().map(|c| c.width() + 1).sum::<u16>();
        assert_eq!(visible_columns(all), Column::ALL.to_vec());
        assert_eq!(visible_columns(all - 1).len(), Column::ALL.len() - 1);
        assert!(!visible_columns(all - 1).contains(&Column::Nodes), "the least needed goes first");
        let narrow = visible_columns(80);
        assert_eq!(narrow, vec![Column::Src, Column::Dst, Column::State]);
        let used: u16 = 2 + narrow.iter().map(|c| c.width() + 1).sum::<u16>();
        assert!(used <= 80);
        let wider = visible_columns(124);
        assert!(wider.contains(&Column::Verdict) && wider.contains(&Column::Proto), "{wider:?}");
        assert!(!wider.contains(&Column::Scenario));
        // Too narrow for anything but the ends: they still show (cut by the renderer).
        assert_eq!(visible_columns(20), vec![Column::Src, Column::Dst]);
    }

    #[test]
    fn totals_count_nodes_alerts_and_drop_reasons() {
        let mut a =
            source("http://a", "n1", "2026-01-01T00:00:00Z", vec![flow("1", "a", "b", "unanswered", 1, 1)]);
        let drop = |reason: &str, count: u64| DropRecord {
            flow_id: String::new(),
            src_ip: None,
            dst_ip: None,
            src_port: 0,
            dst_port: 0,
            protocol: Some(Protocol::Tcp),
            ip_proto: 6,
            reason: reason.into(),
            reason_code: 0,
            location: crate::drops::DropLocation::Node,
            interface: "x".into(),
            ifindex: 1,
            pod: None,
            netns_inode: None,
            netns: None,
            direction: None,
            count,
            bytes: 0,
            last_seen: time::OffsetDateTime::UNIX_EPOCH,
            kernel_function: None,
        };
        if let Some(s) = a.snapshot.as_mut() {
            s.drops = vec![drop("NETFILTER_DROP", 5), drop("NO_SOCKET", 1), drop("NETFILTER_DROP", 2)];
        }
        let mut b = Source::new("http://b");
        b.update(Err("connection refused".into()));
        let sources = vec![a, b];
        let rows = build_rows(&sources, &mut RateTracker::default());
        let t = totals(&sources, &rows, 1);
        assert_eq!((t.flows, t.broken, t.suspect, t.unanswered_requests, t.drops), (1, 0, 1, 1, 8));
        assert_eq!(t.top_drop_reasons[0], ("NETFILTER_DROP".to_string(), 7));
        assert_eq!((t.nodes_connected, t.nodes_total), (1, 2));
        assert_eq!(t.health[1], ("http://b".to_string(), "disconnected".to_string()));
    }
}
