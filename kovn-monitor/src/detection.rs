//! The collector's judgement: findings about broken paths, as alert objects with evidence and
//! a verdict on where packets stop. Detectors run over the flow table after every poll.

use serde::{Deserialize, Serialize};

use crate::inventory::{Endpoint, EndpointKind};
pub use crate::model::{AlertKind, AlertState};
use crate::model::{Direction as HookDirection, FlowDirection, FlowState, IfaceKind, Protocol, Scenario};

/// One finding. Its `id` is stable for the same kind, pair, destination port and protocol,
/// so a problem that persists is one alert, not a flood.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    /// `request_without_reply|connection_refused|mtu|tunnel|drops|flow_flood`
    pub kind: AlertKind,
    /// `firing|resolved`
    pub state: AlertState,
    /// `critical|warning|info`
    pub severity: String,
    pub node: String,
    pub scenario: Scenario,
    /// The protocols of the finding's flows, e.g. `tcp` or `tcp,udp`.
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
    /// For requests to a service VIP: the service and the backend its load balancer chose for
    /// them (when this node saw the post-DNAT packets), whose path the verdict follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<ServiceBackend>,
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
    /// The OVS/OVN drill-down run when it fired (`kovn-monitor trace --alert ID` for details).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drilldown: Option<crate::drilldown::AlertDrillDown>,
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
    /// Kernel drops (skb:kfree_skb) of the finding's flows within the drop window: by reason
    /// and interface. For `drops` findings, the burst itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DropEvidence>,
}

/// The backend a service flow was load-balanced to: OVN's load balancer rewrites the VIP
/// inside OVS (conntrack DNAT), so the kernel shows the same source address and port towards
/// the backend's address and port (on the tunnel device or underlay NIC for a backend on
/// another node, on the backend's veth for one on this node).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceBackend {
    /// `namespace/name` of the service (or the load balancer's `vip -> backends`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// The backend pod (namespace, pod, node), when the inventory knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Endpoint>,
    /// The post-DNAT flow's id (the same on every node: ask the backend's node about it).
    pub flow: String,
}

/// Packets the kernel dropped, by reason and where.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropEvidence {
    /// The kernel's `skb_drop_reason` name, e.g. `NETFILTER_DROP`.
    pub reason: String,
    pub interface: String,
    /// `pod|tunnel|underlay|host`
    pub location: IfaceKind,
    /// Drops within the window.
    pub count: u64,
}

/// Where packets stop, and what to run next (the seeds' diagnosis commands).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// `never_left_source|lost_in_tunnel|lost_before_destination_pod|no_reply_from_destination|
    /// refused_by_destination|no_backends|dropped_in_source_pod|dropped_in_destination_pod|
    /// dropped_at_<location>|unknown`
    pub hop: String,
    pub summary: String,
    pub next_commands: Vec<String>,
}

/// Thresholds of the detectors (flags of `kovn-monitor run`).
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// A request unanswered this long is a finding (TCP SYN, echo, UDP request).
    pub reply_timeout: std::time::Duration,
    /// A firing finding with no new failing request for this long resolves by itself.
    pub resolve_after: std::time::Duration,
    /// Resolved findings stay visible this long.
    pub retention: std::time::Duration,
    /// UDP destination ports where one-way traffic is expected (syslog, statsd, ...).
    pub udp_oneway_ports: Vec<u16>,
    /// The path MTU of pod traffic (the pod veths' MTU): requests larger than the answered
    /// ones and above this fraction of it point at an MTU black hole.
    pub pod_mtu: Option<u32>,
    /// A drops finding needs at least this many kernel drops of one reason at one interface
    /// within `drop_window`.
    pub drop_burst: u64,
    pub drop_window: std::time::Duration,
    /// Drop reasons that are normal operation, never a finding (still counted in metrics).
    pub drop_ignore_reasons: Vec<String>,
}

/// `OTHERHOST`: a frame for another MAC reaching a port in promiscuous mode (every bridge
/// port; OVS's userspace datapath reads over AF_PACKET and leaves each frame to the stack,
/// which frees it with this reason). Normal, and the most frequent drop on such nodes.
pub const DEFAULT_DROP_IGNORE: [&str; 1] = ["OTHERHOST"];

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            reply_timeout: std::time::Duration::from_secs(3),
            resolve_after: std::time::Duration::from_secs(30),
            retention: std::time::Duration::from_secs(600),
            udp_oneway_ports: Vec::new(),
            pod_mtu: None,
            drop_burst: 10,
            drop_window: std::time::Duration::from_secs(10),
            drop_ignore_reasons: DEFAULT_DROP_IGNORE.iter().map(|r| r.to_string()).collect(),
        }
    }
}

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use crate::flows::Flow;

use crate::model::{parse_rfc3339 as parse_time, rfc3339};

/// A stable name for one end: `ns/pod`, or the IP.
fn who(e: Option<&Endpoint>, ip: std::net::IpAddr) -> String {
    match e {
        Some(Endpoint { namespace: Some(ns), pod: Some(p), .. }) => format!("{ns}/{p}"),
        _ => ip.to_string(),
    }
}

fn alert_id(kind: AlertKind, src: &str, dst: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.as_str().bytes().chain([0]).chain(src.bytes()).chain([0]).chain(dst.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Is this node the one that reports on `f`? The initiator's node does (it sees the request
/// leave); for initiators that are not pods of any node, the destination's node does. So a
/// cluster of monitors raises each finding once.
fn reported_here(f: &Flow, node: &str) -> bool {
    let src_node = f.src.as_ref().and_then(|e| e.node.as_deref());
    let dst_node = f.dst.as_ref().and_then(|e| e.node.as_deref());
    match src_node {
        Some(n) => n == node,
        None => dst_node.is_none_or(|n| n == node),
    }
}

/// Does this flow cross the overlay tunnel to another node: a cross-node pod pair, or a service
/// whose backends all run on one other node (the inventory then names that node).
fn through_tunnel(f: &Flow) -> bool {
    match f.scenario {
        Scenario::PodToPodCrossNode => true,
        Scenario::PodToService => f.tunnel.as_ref().is_some_and(|t| t.remote_node.is_some()),
        _ => false,
    }
}

/// What a request is for: the destination pod, or a service's backends.
fn destination(f: &Flow) -> String {
    match &f.dst {
        Some(Endpoint { kind, backends, .. }) if *kind == EndpointKind::Service && !backends.is_empty() => {
            backends.join(",")
        }
        d => who(d.as_ref(), f.dst_ip),
    }
}

/// The service a flow is addressed to (its VIP), if any.
fn service_of(f: &Flow) -> Option<&Endpoint> {
    f.dst.as_ref().filter(|d| d.kind == EndpointKind::Service)
}

/// For every flow to a service VIP, the post-DNAT flow of the same connection seen on this
/// node: same protocol, source address and port, towards one of the service's backends (by
/// the pod name the inventory gives both). Keyed by the VIP flow's id. A connection has one
/// backend (conntrack keeps its choice), so the first match is it.
fn backend_flows<'a>(flows: &[&'a Flow]) -> HashMap<&'a str, &'a Flow> {
    let mut by_source: HashMap<(std::net::IpAddr, u16, Protocol), Vec<&Flow>> = HashMap::new();
    for f in flows
        .iter()
        .filter(|f| service_of(f).is_none() && f.dst.as_ref().is_some_and(|d| d.kind == EndpointKind::Pod))
    {
        by_source.entry((f.src_ip, f.src_port, f.protocol)).or_default().push(f);
    }
    let mut out = HashMap::new();
    for f in flows {
        let Some(svc) = service_of(f) else { continue };
        let Some(candidates) = by_source.get(&(f.src_ip, f.src_port, f.protocol)) else { continue };
        // The two are one connection's packets before and after OVS: they start together. An
        // older or newer flow from the same source port (ports are reused) is another one.
        let start = Some(f.first_seen);
        let together = |b: &Flow| matches!((start, Some(b.first_seen)), (Some(x), Some(y)) if (x - y).abs() <= time::Duration::seconds(2));
        if let Some(b) =
            candidates.iter().find(|b| together(b) && svc.backends.contains(&who(b.dst.as_ref(), b.dst_ip)))
        {
            out.insert(f.id.as_str(), *b);
        }
    }
    out
}

/// The backend view of a service flow `f` whose post-DNAT flow is `b`.
fn service_backend(f: &Flow, b: &Flow) -> ServiceBackend {
    ServiceBackend {
        service: service_of(f).and_then(|s| s.service.clone()),
        ip: b.dst_ip,
        port: b.dst_port,
        pod: b.dst.clone(),
        flow: b.id.clone(),
    }
}

/// The destination a pair is keyed by: the service and, once known, its chosen backend (so
/// connections to a healthy backend of the same service neither hide nor heal a failing one).
fn pair_dst(dst: Option<&Endpoint>, dst_ip: std::net::IpAddr, backend: Option<&ServiceBackend>) -> String {
    let d = who(dst, dst_ip);
    match backend {
        Some(b) => format!("{d}>{}", who(b.pod.as_ref(), b.ip)),
        None => d,
    }
}

/// One pair's failing and answered flows in this round.
#[derive(Default)]
struct PairRound<'a> {
    failing: Vec<&'a Flow>,
    answered: Vec<&'a Flow>,
    refused: Vec<&'a Flow>,
}

struct Tracked {
    alert: Alert,
    last_failure: OffsetDateTime,
}

/// One poll's rise of one kernel drop record.
struct DropDelta {
    at: OffsetDateTime,
    reason: String,
    interface: String,
    location: IfaceKind,
    flow_id: String,
    src_ip: Option<std::net::IpAddr>,
    dst_ip: Option<std::net::IpAddr>,
    protocol: Option<Protocol>,
    dst_port: u16,
    count: u64,
}

/// The detectors' state across polls: findings by id.
pub struct Detector {
    cfg: DetectorConfig,
    node: String,
    tracked: BTreeMap<String, Tracked>,
    /// Last count of each kernel drop record: (flow id, reason, ifindex).
    drop_counts: HashMap<(String, String, u32), u64>,
    /// Drop rises within the drop window, oldest first.
    drop_window: std::collections::VecDeque<DropDelta>,
}

impl Detector {
    pub fn new(node: &str, cfg: DetectorConfig) -> Self {
        Self {
            cfg,
            node: node.to_string(),
            tracked: BTreeMap::new(),
            drop_counts: HashMap::new(),
            drop_window: Default::default(),
        }
    }

    /// Takes this poll's kernel drop records (cumulative counts) before `evaluate`.
    /// `location_of` names the kind of an interface (`pod|tunnel|underlay|host`).
    pub fn observe_drops(
        &mut self,
        drops: &[crate::drops::DropRecord],
        location_of: impl Fn(&str) -> IfaceKind,
        now: OffsetDateTime,
    ) {
        let mut next = HashMap::with_capacity(drops.len());
        for d in drops {
            let key = (d.flow_id.clone(), d.reason.clone(), d.ifindex);
            let rise = match self.drop_counts.get(&key) {
                Some(&last) if d.count >= last => d.count - last,
                // New record (or recreated): its whole count is new. The first poll after start
                // counts everything the kernel recorded since the programs were loaded.
                _ => d.count,
            };
            next.insert(key, d.count);
            if rise == 0 || self.cfg.drop_ignore_reasons.contains(&d.reason) || d.is_routine() {
                continue;
            }
            self.drop_window.push_back(DropDelta {
                at: now,
                reason: d.reason.clone(),
                interface: d.interface.clone(),
                location: location_of(&d.interface),
                flow_id: d.flow_id.clone(),
                src_ip: d.src_ip,
                dst_ip: d.dst_ip,
                protocol: d.protocol,
                dst_port: d.dst_port,
                count: rise,
            });
        }
        self.drop_counts = next;
        let window = time::Duration::try_from(self.cfg.drop_window).unwrap_or(time::Duration::seconds(10));
        while self.drop_window.front().is_some_and(|d| now - d.at > window) {
            self.drop_window.pop_front();
        }
    }

    /// Bursts of drops: attached as evidence to the path findings whose flows they hit, else
    /// raised as `drops` findings of their own (one per reason and interface).
    fn evaluate_drops(&mut self, flows: &[&Flow], seen_now: &mut Vec<String>, now: OffsetDateTime) {
        let by_id: HashMap<&str, &Flow> = flows.iter().map(|f| (f.id.as_str(), *f)).collect();
        // What each firing path finding covers: its flows, and for tunnel findings the remote
        // tunnel endpoints (drops of encapsulated packets carry the outer addresses).
        let covers: Vec<(String, Vec<String>, Vec<std::net::IpAddr>)> = self
            .tracked
            .iter()
            .filter(|(id, t)| t.alert.kind != AlertKind::Drops && seen_now.contains(id))
            .map(|(id, t)| {
                let remotes = if t.alert.kind == AlertKind::Tunnel {
                    t.alert
                        .flows
                        .iter()
                        .filter_map(|f| by_id.get(f.as_str())?.tunnel.as_ref()?.remote_ip)
                        .collect()
                } else {
                    Vec::new()
                };
                (id.clone(), t.alert.flows.clone(), remotes)
            })
            .collect();
        // Drops a firing finding explains become its evidence (any number of them); the rest
        // are grouped by (reason, interface): (location, drops, drops per flow id).
        type Sites = BTreeMap<(String, String), (IfaceKind, u64, BTreeMap<String, u64>)>;
        let mut sites: Sites = BTreeMap::new();
        let mut explained: BTreeMap<(String, String, String, IfaceKind), u64> = BTreeMap::new();
        for d in &self.drop_window {
            let encapsulated = d.protocol == Some(Protocol::Udp) && matches!(d.dst_port, 6081 | 4789);
            let owner = covers.iter().find(|(_, fl, remotes)| {
                (!d.flow_id.is_empty() && fl.contains(&d.flow_id))
                    || (encapsulated && [d.src_ip, d.dst_ip].iter().flatten().any(|ip| remotes.contains(ip)))
            });
            if let Some((id, _, _)) = owner {
                *explained
                    .entry((id.clone(), d.reason.clone(), d.interface.clone(), d.location))
                    .or_default() += d.count;
                continue;
            }
            let e = sites
                .entry((d.reason.clone(), d.interface.clone()))
                .or_insert_with(|| (d.location, 0, BTreeMap::new()));
            e.1 += d.count;
            *e.2.entry(d.flow_id.clone()).or_default() += d.count;
        }
        for ((id, reason, interface, location), count) in explained {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.alert.evidence.drops.push(DropEvidence { reason, interface, location, count });
            }
        }
        for ((reason, interface), (location, total, per_flow)) in sites {
            if total < self.cfg.drop_burst {
                continue;
            }
            let evidence =
                DropEvidence { reason: reason.clone(), interface: interface.clone(), location, count: total };
            let (top_flow, _) =
                per_flow.iter().max_by_key(|(_, n)| **n).map(|(f, n)| (f.clone(), *n)).unwrap_or_default();
            let flow = by_id.get(top_flow.as_str()).copied();
            let record = self.drop_window.iter().rev().find(|d| d.flow_id == top_flow && d.reason == reason);
            let unspecified = std::net::IpAddr::from([0, 0, 0, 0]);
            let src_ip = flow.map(|f| f.src_ip).or(record.and_then(|r| r.src_ip)).unwrap_or(unspecified);
            let dst_ip = flow.map(|f| f.dst_ip).or(record.and_then(|r| r.dst_ip)).unwrap_or(unspecified);
            let id = alert_id(AlertKind::Drops, &reason, &interface);
            let window = self.cfg.drop_window;
            let what = flow.map_or_else(
                || format!("{src_ip} -> {dst_ip}"),
                |f| format!("{} -> {}", who(f.src.as_ref(), f.src_ip), who(f.dst.as_ref(), f.dst_ip)),
            );
            let summary = format!(
                "{total} packet(s) dropped by the kernel on {interface} ({location}) with reason {reason} within {}s; most from {what}",
                window.as_secs()
            );
            let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
                alert: Alert {
                    id: id.clone(),
                    kind: AlertKind::Drops,
                    state: AlertState::Firing,
                    severity: "warning".into(),
                    node: String::new(),
                    scenario: Scenario::Unknown,
                    protocol: String::new(),
                    src_ip,
                    dst_ip,
                    dst_port: None,
                    src: None,
                    dst: None,
                    remote_node: None,
                    backend: None,
                    first_seen: rfc3339(now),
                    last_seen: String::new(),
                    resolved_at: None,
                    summary: String::new(),
                    evidence: Evidence::default(),
                    verdict: None,
                    flows: Vec::new(),
                    drilldown: None,
                },
                last_failure: now,
            });
            let a = &mut entry.alert;
            if a.state != AlertState::Firing {
                a.state = AlertState::Firing;
                a.resolved_at = None;
                a.first_seen = rfc3339(now);
            }
            a.node = self.node.clone();
            if let Some(f) = flow {
                a.scenario = f.scenario;
                a.protocol = f.protocol.as_str().to_string();
                a.src = f.src.clone();
                a.dst = f.dst.clone();
                a.dst_port = (!f.protocol.is_icmp()).then_some(f.dst_port);
                a.remote_node = f.tunnel.as_ref().and_then(|t| t.remote_node.clone());
            }
            a.src_ip = src_ip;
            a.dst_ip = dst_ip;
            a.last_seen = rfc3339(now);
            a.summary = summary;
            a.evidence = Evidence { drops: vec![evidence], ..Default::default() };
            a.flows = per_flow.keys().filter(|f| !f.is_empty()).cloned().collect();
            a.verdict = Some(drop_verdict(&reason, &interface, location, &self.node));
            entry.last_failure = now;
            seen_now.push(id);
        }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Runs every detector over the current flows; returns the findings (firing first).
    /// (The poll's flows are `Arc<Flow>`s, tests' plain `Flow`s.)
    pub fn evaluate<'a, F: std::borrow::Borrow<Flow>>(
        &mut self,
        flows: &'a [F],
        now: OffsetDateTime,
    ) -> Vec<Alert> {
        let flows: Vec<&'a Flow> = flows.iter().map(std::borrow::Borrow::borrow).collect();
        let flows = flows.as_slice();
        let timeout = time::Duration::try_from(self.cfg.reply_timeout).unwrap_or(time::Duration::seconds(3));
        let mut pairs: HashMap<(String, String), PairRound> = HashMap::new();
        // Pod traffic only: the node's own connections on its NIC (API server, SSH, scrapes)
        // are not what kovn watches over.
        let is_pod = |e: &Option<Endpoint>| e.as_ref().is_some_and(|e| e.kind == EndpointKind::Pod);
        // Service connections are judged by the client's view (the VIP flow on its veth) and
        // located by their post-DNAT flow, which is part of them, not a pair of its own.
        let backend_of = backend_flows(flows);
        let post_dnat: std::collections::HashSet<&str> = backend_of.values().map(|b| b.id.as_str()).collect();
        // What locates a flow: the backend's flow for a service connection, else itself.
        fn on_path<'a>(backend_of: &HashMap<&str, &'a Flow>, f: &'a Flow) -> &'a Flow {
            backend_of.get(f.id.as_str()).copied().unwrap_or(f)
        }
        let path = |f: &'a Flow| on_path(&backend_of, f);
        for f in flows.iter().filter(|f| reported_here(f, &self.node) && (is_pod(&f.src) || is_pod(&f.dst))) {
            if f.protocol == Protocol::Udp && self.cfg.udp_oneway_ports.contains(&f.dst_port) {
                continue;
            }
            if post_dnat.contains(f.id.as_str()) {
                continue;
            }
            let backend = backend_of.get(f.id.as_str()).map(|b| service_backend(f, b));
            let key = (who(f.src.as_ref(), f.src_ip), pair_dst(f.dst.as_ref(), f.dst_ip, backend.as_ref()));
            let round = pairs.entry(key).or_default();
            if f.state == FlowState::Reset && f.replies == 0 && f.rst_rev > 0 {
                round.refused.push(f);
            } else if f.requests_unanswered > 0
                && f.replies == 0
                && f.packets_rev == 0
                && Some(f.first_seen).is_some_and(|t| now - t >= timeout)
            {
                round.failing.push(f);
            } else if f.replies > 0 || f.packets_rev > 0 {
                round.answered.push(f);
                // Failures whose backend was not seen are judged per service: any backend
                // answering later makes them history, as for one pod.
                if backend.is_some() {
                    let service_pair = (who(f.src.as_ref(), f.src_ip), who(f.dst.as_ref(), f.dst_ip));
                    pairs.entry(service_pair).or_default().answered.push(f);
                }
            }
        }
        // A failure followed by an answered exchange of the same pair, with packets at least
        // about as large, is history: the path works again for such packets (this also
        // absorbs replies missed while attaching). Smaller answered packets do not count: that
        // is the MTU black hole.
        let avg = |f: &Flow| f.bytes_fwd.checked_div(f.packets_fwd).unwrap_or(0);
        for round in pairs.values_mut() {
            let answered: Vec<(OffsetDateTime, u64)> =
                round.answered.iter().filter_map(|f| Some((Some(f.first_seen)?, avg(f)))).collect();
            let current = |f: &&Flow| {
                let (Some(last), size) = (Some(f.last_seen), avg(f)) else { return true };
                !answered.iter().any(|(start, ok_size)| *start > last && ok_size * 5 >= size * 4)
            };
            round.failing.retain(current);
            round.refused.retain(current);
        }
        // Cross-node pairs failing towards a node while its other pairs and same-node traffic
        // work point at the tunnel: counted per remote node.
        // Only answers during the failures count against the tunnel: flows answered before it
        // broke are history.
        let failing_since = pairs.values().flat_map(|r| r.failing.iter()).map(|f| f.first_seen).min();
        // Counted per destination, not per flow or pair: one client retrying (a new flow per
        // attempt), or several clients of one broken pod, are one destination, and one failing
        // destination is that destination's problem, not the tunnel's. A service whose backends
        // all run on the remote node stands for those backends.
        let mut by_remote: HashMap<String, (std::collections::BTreeSet<String>, usize)> = HashMap::new();
        for round in pairs.values() {
            let concurrent =
                |f: &&&Flow| failing_since.is_some_and(|since| Some(f.last_seen).is_some_and(|t| t >= since));
            for f in round.failing.iter().map(|f| path(f)).filter(|f| through_tunnel(f)) {
                if let Some(n) = f.tunnel.as_ref().and_then(|t| t.remote_node.clone()) {
                    by_remote.entry(n).or_default().0.insert(destination(f));
                }
            }
            for f in round.answered.iter().filter(concurrent).map(|f| path(f)).filter(|f| through_tunnel(f)) {
                if let Some(n) = f.tunnel.as_ref().and_then(|t| t.remote_node.clone()) {
                    by_remote.entry(n).or_default().1 += 1;
                }
            }
        }
        let same_node_ok =
            pairs.values().any(|r| r.answered.iter().any(|f| f.scenario == Scenario::PodToPodSameNode));
        let mut seen_now = Vec::new();
        // Tunnel findings are per node pair: every pod pair failing towards that node is one
        // problem of the tunnel, raised once below.
        let mut tunnel_failing: BTreeMap<String, Vec<&Flow>> = BTreeMap::new();
        for ((src, dst), round) in &pairs {
            if !round.refused.is_empty() {
                let id =
                    self.raise(AlertKind::ConnectionRefused, src, dst, &round.refused, &round.answered, now);
                self.name_backend(&id, dst, &round.refused, &backend_of);
                seen_now.push(id);
            }
            if round.failing.is_empty() {
                continue;
            }
            let mtu_hole = self.mtu_black_hole(&round.failing, &round.answered);
            let kind = if mtu_hole.is_some() {
                AlertKind::Mtu
            } else if round.failing.iter().all(|f| through_tunnel(path(f)))
                && same_node_ok
                && round
                    .failing
                    .iter()
                    .filter_map(|f| path(f).tunnel.as_ref()?.remote_node.clone())
                    .any(|n| by_remote.get(&n).is_some_and(|(fail, ok)| fail.len() >= 2 && *ok == 0))
            {
                AlertKind::Tunnel
            } else {
                AlertKind::RequestWithoutReply
            };
            if kind == AlertKind::Tunnel {
                self.supersede(src, dst, AlertKind::Tunnel);
                for f in &round.failing {
                    if let Some(n) = path(f).tunnel.as_ref().and_then(|t| t.remote_node.clone()) {
                        tunnel_failing.entry(n).or_default().push(f);
                    }
                }
                continue;
            }
            let id = self.raise(kind, src, dst, &round.failing, &round.answered, now);
            self.name_backend(&id, dst, &round.failing, &backend_of);
            self.supersede(src, dst, kind);
            if let (Some((big, mtu)), Some(t)) = (mtu_hole, self.tracked.get_mut(&id)) {
                t.alert.evidence.max_request_bytes = Some(big);
                t.alert.evidence.path_mtu = mtu;
            }
            seen_now.push(id);
        }
        let local = self.node.clone();
        for (remote, failing) in &tunnel_failing {
            seen_now.push(self.raise(AlertKind::Tunnel, &local, remote, failing, &[], now));
        }
        for id in &seen_now {
            if let Some(t) = self.tracked.get_mut(id) {
                t.alert.evidence.drops.clear();
            }
        }
        self.evaluate_drops(flows, &mut seen_now, now);
        // A pair that works again resolves its findings; quiet ones resolve after a while.
        let resolve_after =
            time::Duration::try_from(self.cfg.resolve_after).unwrap_or(time::Duration::seconds(30));
        for (id, t) in self.tracked.iter_mut() {
            if t.alert.state != AlertState::Firing || seen_now.contains(id) {
                continue;
            }
            // Drops have no answer that heals them: only quiet does.
            let healed = t.alert.kind != AlertKind::Drops
                && pairs
                    .get(&(t.alert_src(), t.alert_dst()))
                    .is_some_and(|r| !r.answered.is_empty() && r.failing.is_empty());
            if healed || now - t.last_failure >= resolve_after {
                t.alert.state = AlertState::Resolved;
                t.alert.resolved_at = Some(rfc3339(now));
            }
        }
        let retention = time::Duration::try_from(self.cfg.retention).unwrap_or(time::Duration::minutes(10));
        self.tracked.retain(|_, t| {
            t.alert.state == AlertState::Firing
                || t.alert.resolved_at.as_deref().and_then(parse_time).is_none_or(|r| now - r < retention)
        });
        let mut out: Vec<Alert> = self.tracked.values().map(|t| t.alert.clone()).collect();
        out.sort_by(|a, b| {
            (a.state != AlertState::Firing)
                .cmp(&(b.state != AlertState::Firing))
                .then(b.last_seen.cmp(&a.last_seen))
        });
        out
    }

    /// Large requests unanswered while smaller ones of the same pair are answered: the MTU
    /// black hole of the seeds (big packets die in the overlay, small ones pass).
    fn mtu_black_hole(&self, failing: &[&Flow], answered: &[&Flow]) -> Option<(u64, Option<u32>)> {
        // The kernel saw it directly: packets too big for the path, or an ICMP "too big".
        if let Some(m) = failing.iter().filter_map(|f| f.mtu.as_ref()).max_by_key(|m| m.oversized_max_bytes) {
            return Some((u64::from(m.oversized_max_bytes), m.reported_mtu.or(self.cfg.pod_mtu)));
        }
        let avg = |f: &Flow| f.bytes_fwd.checked_div(f.packets_fwd).unwrap_or(0);
        let biggest_failing = failing.iter().map(|f| avg(f)).max()?;
        let biggest_answered = answered.iter().map(|f| avg(f)).max()?;
        let threshold = self.cfg.pod_mtu.map_or(1200, |m| u64::from(m) * 3 / 4);
        (biggest_failing >= threshold && biggest_failing > biggest_answered * 2)
            .then_some((biggest_failing, self.cfg.pod_mtu))
    }

    fn raise(
        &mut self,
        kind: AlertKind,
        src: &str,
        dst: &str,
        failing: &[&Flow],
        answered: &[&Flow],
        now: OffsetDateTime,
    ) -> String {
        let id = alert_id(kind, src, dst);
        let first = failing[0];
        let evidence = Evidence {
            requests: failing.iter().map(|f| u64::from(f.requests)).sum(),
            requests_unanswered: failing.iter().map(|f| u64::from(f.requests_unanswered)).sum(),
            replies: failing.iter().map(|f| u64::from(f.replies)).sum(),
            rst: (kind == AlertKind::ConnectionRefused)
                .then(|| failing.iter().map(|f| u64::from(f.rst_rev)).sum()),
            max_request_bytes: None,
            path_mtu: None,
            answered_flows: Some(answered.len() as u64),
            drops: Vec::new(),
            seen_at: {
                let mut v: Vec<String> = failing
                    .iter()
                    .flat_map(|f| f.interfaces.iter())
                    .map(|i| format!("{}/{} ({})", i.name, i.direction, i.flow_direction))
                    .collect();
                v.sort();
                v.dedup();
                v
            },
        };
        let protocols: Vec<&str> = {
            let mut p: Vec<&str> = failing.iter().map(|f| f.protocol.as_str()).collect();
            p.sort();
            p.dedup();
            p
        };
        let summary = match kind {
            AlertKind::ConnectionRefused => {
                format!("{src} -> {dst}:{}: connection refused (RST)", first.dst_port)
            }
            AlertKind::Mtu => {
                format!("{src} -> {dst}: large packets get no reply while small ones do (MTU black hole)")
            }
            AlertKind::Tunnel => format!(
                "{src} -> {dst}: cross-node requests of {} pod pair(s) towards {dst} unanswered while same-node traffic works",
                {
                    let mut p: Vec<String> = failing
                        .iter()
                        .map(|f| {
                            format!("{}>{}", who(f.src.as_ref(), f.src_ip), who(f.dst.as_ref(), f.dst_ip))
                        })
                        .collect();
                    p.sort();
                    p.dedup();
                    p.len()
                }
            ),
            _ => format!(
                "{src} -> {dst}: {} request(s) without reply ({})",
                evidence.requests_unanswered,
                protocols.join(", ")
            ),
        };
        let first_seen = failing.iter().map(|f| f.first_seen).min().map(rfc3339).unwrap_or_default();
        let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
            alert: Alert {
                id: id.clone(),
                kind,
                state: AlertState::Firing,
                severity: if kind == AlertKind::ConnectionRefused { "warning" } else { "critical" }.into(),
                node: String::new(),
                scenario: first.scenario,
                protocol: String::new(),
                src_ip: first.src_ip,
                dst_ip: first.dst_ip,
                dst_port: None,
                src: first.src.clone(),
                dst: first.dst.clone(),
                remote_node: None,
                backend: None,
                first_seen: first_seen.clone(),
                last_seen: String::new(),
                resolved_at: None,
                summary: String::new(),
                evidence: Evidence::default(),
                verdict: None,
                drilldown: None,
                flows: Vec::new(),
            },
            last_failure: now,
        });
        let a = &mut entry.alert;
        if a.state != AlertState::Firing {
            // The same problem again: a new episode of the same alert.
            a.state = AlertState::Firing;
            a.resolved_at = None;
            a.first_seen = first_seen;
            a.verdict = None;
        }
        a.node = self.node.clone();
        a.protocol = protocols.join(",");
        a.dst_port = (!first.protocol.is_icmp()).then_some(first.dst_port);
        a.remote_node = first.tunnel.as_ref().and_then(|t| t.remote_node.clone());
        a.last_seen = failing.iter().map(|f| f.last_seen).max().map(rfc3339).unwrap_or_default();
        a.summary = summary;
        a.evidence = evidence;
        a.flows = failing.iter().map(|f| f.id.clone()).collect();
        entry.last_failure = now;
        id
    }

    /// A service connection's finding: names the backend (pair key `dst`), and carries the
    /// post-DNAT flows (their drops are evidence too). Other findings have no backend.
    fn name_backend(&mut self, id: &str, dst: &str, flows: &[&Flow], backend_of: &HashMap<&str, &Flow>) {
        let Some(t) = self.tracked.get_mut(id) else { return };
        let Some((first, b)) = flows.first().and_then(|f| Some((*f, *backend_of.get(f.id.as_str())?))) else {
            t.alert.backend = None;
            return;
        };
        let backend = service_backend(first, b);
        t.alert.summary = t.alert.summary.replacen(
            &format!("-> {dst}:"),
            &format!(
                "-> service {} via backend {}:",
                backend.service.as_deref().unwrap_or("?"),
                who(backend.pod.as_ref(), backend.ip)
            ),
            1,
        );
        t.alert.backend = Some(backend);
        t.alert.flows.extend(flows.iter().filter_map(|f| Some(backend_of.get(f.id.as_str())?.id.clone())));
    }

    /// A pair's failure seen as one kind earlier (e.g. before the small answered pings or the
    /// second failing pair arrived) and now understood as `kind`: the earlier finding was the
    /// same problem, so it goes rather than fire twice.
    fn supersede(&mut self, src: &str, dst: &str, kind: AlertKind) {
        for k in [AlertKind::RequestWithoutReply, AlertKind::Mtu] {
            if k != kind {
                let id = alert_id(k, src, dst);
                if self.tracked.get(&id).is_some_and(|t| t.alert.state == AlertState::Firing) {
                    self.tracked.remove(&id);
                }
            }
        }
    }

    /// Sets the verdict of a finding (computed by `verdict`, possibly with the peer's view).
    pub fn set_verdict(&mut self, id: &str, v: Verdict) {
        if let Some(t) = self.tracked.get_mut(id) {
            t.alert.verdict = Some(v);
        }
    }
}

impl Tracked {
    fn alert_src(&self) -> String {
        who(self.alert.src.as_ref(), self.alert.src_ip)
    }
    fn alert_dst(&self) -> String {
        pair_dst(self.alert.dst.as_ref(), self.alert.dst_ip, self.alert.backend.as_ref())
    }
}

/// Where a drop burst happens and what to look at, by the kernel's reason.
fn drop_verdict(reason: &str, interface: &str, location: IfaceKind, node: &str) -> Verdict {
    let why = match reason {
        "NETFILTER_DROP" => {
            "a netfilter rule (iptables/nftables: the node's firewall, kube-proxy or a NetworkPolicy implemented there)"
        }
        "OPENVSWITCH_DROP_ACTION" | "OVS_DROP_ACTION" => {
            "an OpenFlow drop action in OVS (flow tables, ACL/NetworkPolicy)"
        }
        r if r.starts_with("OVS_DROP") || r.starts_with("OPENVSWITCH") => "the OVS kernel datapath",
        "PKT_TOO_BIG" | "PKT_TOO_SMALL" => "packet size (MTU)",
        "NO_SOCKET" | "SOCKET_FILTER" | "TCP_INVALID_SEQUENCE" | "TCP_OLD_DATA" => {
            "the local stack (no listener, or stale TCP)"
        }
        "QDISC_DROP" | "FULL_RING" | "CPU_BACKLOG" | "TC_DROP" => "queueing or a tc program on the interface",
        "IP_RPFILTER" | "IP_INADDRERRORS" | "IP_INNOROUTES" | "IP_NOPROTO" => {
            "routing on the node (rp_filter, no route, bad address)"
        }
        _ => "the kernel on this node",
    };
    let mut next_commands =
        vec![format!("ip -s link show {interface}"), format!("tcpdump -c 20 -nei {interface}")];
    match reason {
        "NETFILTER_DROP" => next_commands.insert(0, "nft list ruleset".to_string()),
        r if r.contains("OVS") || r.contains("OPENVSWITCH") => {
            next_commands.insert(0, "ovs-appctl dpctl/dump-flows -m".to_string());
            next_commands.insert(1, "ovs-ofctl dump-flows br-int | grep -i drop".to_string());
        }
        _ => {}
    }
    Verdict {
        hop: format!("dropped_at_{location}"),
        summary: format!(
            "the kernel on {node} drops packets on {interface} ({location}) with reason {reason}: {why}"
        ),
        next_commands,
    }
}

/// How to phrase the next commands on this node: where OVN's southbound is, how to reach
/// br-int, and whether the monitor runs in a named network namespace (the lab).
#[derive(Clone, Debug, Default)]
pub struct CommandContext {
    /// `ovn-trace --db=...` argument, when the southbound is known.
    pub ovn_sb: Option<String>,
    /// The OpenFlow target of br-int: `br-int`, or `unix:<rundir>/br-int.mgmt`.
    pub br_int: String,
    /// `ip netns exec <name>` prefix when this monitor runs in a named namespace.
    pub netns: Option<String>,
    /// The logical switch pods sit on (Kube-OVN's default subnet: `ovn-default`).
    pub logical_switch: String,
}

/// What the destination's node saw of the same flow (from its monitor's API).
#[derive(Clone, Debug)]
pub enum PeerView {
    /// The peer answered: the flow as it saw it, if it saw it at all.
    Seen(Option<Box<Flow>>),
    /// The peer's monitor could not be asked (with why).
    Unreachable(String),
}

/// Per-endpoint facts the commands need (from the inventory).
#[derive(Clone, Debug, Default)]
pub struct EndpointFacts {
    pub mac: Option<String>,
    pub host_iface: Option<String>,
}

fn seen(f: &Flow, kind: IfaceKind, direction: HookDirection, flow_direction: FlowDirection) -> bool {
    f.interfaces
        .iter()
        .any(|i| i.kind == kind && i.direction == direction && i.flow_direction == flow_direction)
}

fn iface_of(
    f: &Flow,
    kind: IfaceKind,
    direction: HookDirection,
    flow_direction: FlowDirection,
) -> Option<&str> {
    f.interfaces
        .iter()
        .find(|i| i.kind == kind && i.direction == direction && i.flow_direction == flow_direction)
        .map(|i| i.name.as_str())
}

fn l4_match(f: &Flow) -> String {
    match f.protocol {
        Protocol::Tcp => format!(" && tcp && tcp.dst == {}", f.dst_port),
        Protocol::Udp => format!(" && udp && udp.dst == {}", f.dst_port),
        Protocol::Icmp => " && icmp4 && icmp4.type == 8".into(),
        _ => String::new(),
    }
}

/// The seeds' next steps for this flow: ovn-trace with the observed packet, the br-int flows
/// for the destination, tcpdump on the named veth, the policies.
pub fn next_commands(
    a: &Alert,
    f: &Flow,
    ctx: &CommandContext,
    src: &EndpointFacts,
    dst: &EndpointFacts,
) -> Vec<String> {
    let prefix = ctx.netns.as_ref().map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    let mut cmds = Vec::new();
    if let (Some(Endpoint { namespace: Some(ns), pod: Some(pod), .. }), true) = (&a.src, f.src_ip.is_ipv4()) {
        let mut m = format!("inport == \"{pod}.{ns}\"");
        if let Some(mac) = &src.mac {
            m.push_str(&format!(" && eth.src == {mac}"));
        }
        if let Some(mac) = &dst.mac {
            m.push_str(&format!(" && eth.dst == {mac}"));
        }
        m.push_str(&format!(
            " && ip4.src == {} && ip4.dst == {} && ip.ttl == 64{}",
            f.src_ip,
            f.dst_ip,
            l4_match(f)
        ));
        let db = ctx.ovn_sb.as_ref().map(|d| format!(" --db={d}")).unwrap_or_default();
        cmds.push(format!("ovn-trace{db} {} '{m}'", ctx.logical_switch));
        let port = if f.protocol == Protocol::Icmp { String::new() } else { format!(" {}", f.dst_port) };
        cmds.push(format!("kubectl ko trace {ns}/{pod} {} {}{port}", f.dst_ip, f.protocol));
    }
    cmds.push(format!("{prefix}ovs-ofctl dump-flows {} ip,nw_dst={}", ctx.br_int, f.dst_ip));
    let veth = dst.host_iface.clone().or_else(|| src.host_iface.clone());
    if let Some(v) = veth {
        cmds.push(format!("{prefix}tcpdump -nn -i {v} host {} and host {}", f.src_ip, f.dst_ip));
    }
    if let Some(Endpoint { namespace: Some(ns), .. }) = &a.dst {
        cmds.push(format!("kubectl get networkpolicy -n {ns}"));
    }
    cmds
}

/// Where the requests of a finding stop, from this node's observation points and, for
/// cross-node flows, what the destination's node saw.
/// `underlay_watched`: this node watches its NIC as the underlay, so a cross-node request
/// that was never seen leaving through it never left the node.
/// For a service connection whose backend is known (`a.backend`), `f` is the post-DNAT flow
/// (towards the backend) and `peer` the backend node's view of it: the backend's path is
/// judged exactly like a pod-to-pod one.
pub fn verdict(a: &Alert, f: &Flow, peer: Option<&PeerView>, underlay_watched: bool) -> (String, String) {
    let src = who(a.src.as_ref(), a.src_ip);
    let dst = match (&a.backend, a.dst.as_ref().filter(|d| d.kind == EndpointKind::Service)) {
        (Some(b), _) => format!(
            "{} (backend of service {})",
            who(b.pod.as_ref(), b.ip),
            b.service.as_deref().unwrap_or("?")
        ),
        (None, Some(svc)) => format!("service {}", svc.service.as_deref().unwrap_or("?")),
        _ => who(a.dst.as_ref(), a.dst_ip),
    };
    let node = &a.node;
    let remote =
        f.tunnel.as_ref().and_then(|t| t.remote_node.clone()).unwrap_or_else(|| "the other node".into());
    let hop = |h: &str, s: String| (h.to_string(), s);
    match a.kind {
        AlertKind::ConnectionRefused => {
            return hop(
                "refused_by_destination",
                format!(
                    "{dst} answered port {} with a TCP reset: nothing listens there, or a firewall rejects",
                    f.dst_port
                ),
            );
        }
        AlertKind::Mtu => {
            let mtu = a.evidence.path_mtu.map(|m| format!(" ({m})")).unwrap_or_default();
            return hop(
                "lost_in_tunnel",
                format!(
                    "packets of {} bytes from {src} get no answer while smaller ones do: larger than the overlay path MTU{mtu}; compare the pod MTU with the underlay MTU minus the tunnel overhead (Geneve 100)",
                    a.evidence.max_request_bytes.unwrap_or_default()
                ),
            );
        }
        _ => {}
    }
    if let Some(svc) = a.dst.as_ref().filter(|d| d.kind == EndpointKind::Service && d.backends.is_empty()) {
        return hop(
            "no_backends",
            format!(
                "{src} sends to service {} ({}:{}), which has no backends: no ready endpoints (EndpointSlices) or an empty OVN load balancer",
                svc.service.as_deref().unwrap_or("?"),
                a.dst_ip,
                f.dst_port
            ),
        );
    }
    if a.backend.is_none() && a.dst.as_ref().is_some_and(|d| d.kind == EndpointKind::Service) {
        // The load balancer's choice shows on the wire (underlay) for a backend on another
        // node and on the backend's veth for one here: with the underlay watched, neither
        // means the request died in this node's br-int, at or after the load balancer (an
        // ACL/NetworkPolicy evaluated here on the DNATed packet, a flow-table drop). Which
        // backend conntrack chose is then not visible to the kernel hooks.
        if underlay_watched && seen(f, IfaceKind::Pod, HookDirection::Ingress, FlowDirection::Fwd) {
            return hop(
                "never_left_source",
                format!(
                    "the request from {src} to {dst} ({}:{}) never left {node}: no packet towards any of its backends went out on the wire or reached a backend's veth here; dropped in OVS br-int on {node} at or after the load balancer (ACL/NetworkPolicy, flow tables); the chosen backend is in OVS's conntrack (ovs-appctl dpctl/dump-conntrack)",
                    a.dst_ip, f.dst_port
                ),
            );
        }
        return hop(
            "unknown",
            format!(
                "the request left {src} for {dst} ({}:{}) on {node}; no reply came back, and no packet towards one of its backends was seen on {node}: dropped before or in the load balancer (OVS br-int), or the backend is on this node and the request never reached its veth",
                a.dst_ip, f.dst_port
            ),
        );
    }
    let delivered_here = seen(f, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd);
    if f.scenario != Scenario::PodToPodCrossNode {
        return if delivered_here {
            let v =
                iface_of(f, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd).unwrap_or("its veth");
            hop(
                "no_reply_from_destination",
                format!(
                    "the request reached {dst} ({v} on {node}); no reply came back: {dst} itself (application, firewall) or its policy"
                ),
            )
        } else if f
            .dst
            .as_ref()
            .is_some_and(|d| d.kind == EndpointKind::Pod && d.node.as_deref() == Some(node.as_str()))
        {
            hop(
                "lost_before_destination_pod",
                format!(
                    "the request left {src} but never reached {dst}'s veth on {node}: dropped in OVS br-int on {node} (ACL/NetworkPolicy, flow tables)"
                ),
            )
        } else {
            hop("unknown", format!("the request left {src} on {node}; no reply came back"))
        };
    }
    if underlay_watched && !seen(f, IfaceKind::Underlay, HookDirection::Egress, FlowDirection::Fwd) {
        return hop(
            "never_left_source",
            format!(
                "the request from {src} never left {node} for {remote}: dropped on {node} before the wire, in OVS br-int (ACL/NetworkPolicy, flow tables) or by the node's own firewall on its NIC"
            ),
        );
    }
    let left = if underlay_watched {
        format!("left {node} in the tunnel to {remote}")
    } else {
        format!("left {src} on {node}")
    };
    match peer {
        Some(PeerView::Seen(Some(pf))) => {
            if pf.packets_rev > 0 {
                hop(
                    "lost_in_tunnel",
                    format!(
                        "the request {left} and {dst} on {remote} replied, but the reply never came back: loss between {remote} and {node} (tunnel, underlay)"
                    ),
                )
            } else if seen(pf, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd) {
                hop(
                    "no_reply_from_destination",
                    format!(
                        "the request {left} and reached {dst} on {remote}; no reply: {dst} itself (application, firewall) or its policy"
                    ),
                )
            } else {
                hop(
                    "lost_before_destination_pod",
                    format!(
                        "the request {left} and arrived on {remote}, but was not delivered to {dst}: dropped in OVS br-int on {remote} (ACL/NetworkPolicy, flow tables)"
                    ),
                )
            }
        }
        Some(PeerView::Seen(None)) => hop(
            "lost_in_tunnel",
            format!(
                "the request {left}; it never arrived on {remote}: loss in the underlay or tunnel between {node} and {remote}"
            ),
        ),
        Some(PeerView::Unreachable(why)) => hop(
            "unknown",
            format!(
                "the request {left}; {remote}'s monitor could not be asked ({why}): check the tunnel and {dst} there"
            ),
        ),
        None => hop("unknown", format!("the request {left}; no reply came back")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn at(secs: i64) -> OffsetDateTime {
        parse_time(T0).expect("valid") + time::Duration::seconds(secs)
    }

    fn pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
        json!({"kind": "pod", "namespace": ns, "pod": name, "node": node})
    }

    /// A flow as the API shows it; `fwd`/`rev` packets, requests/replies, scenario, ends.
    #[expect(clippy::too_many_arguments, reason = "a test helper: one flow from its fields, positionally")]
    fn flow(
        id: &str,
        proto: &str,
        dport: u16,
        (req, rep, rev): (u32, u32, u64),
        scenario: &str,
        src: serde_json::Value,
        dst: serde_json::Value,
        ifaces: serde_json::Value,
    ) -> Flow {
        serde_json::from_value(json!({
            "id": id, "src_ip": "10.16.0.2", "dst_ip": "10.16.0.5", "src_port": 40000, "dst_port": dport,
            "protocol": proto, "ip_proto": 6, "packets_fwd": req.max(1), "bytes_fwd": 60 * u64::from(req.max(1)),
            "packets_rev": rev, "bytes_rev": 60 * rev, "first_seen": T0, "last_seen": T0,
            "state": if rep > 0 { "answered" } else { "unanswered" }, "requests": req, "replies": rep,
            "requests_unanswered": if rep > 0 { 0 } else { req }, "rst_fwd": 0, "rst_rev": 0,
            "tcp_flags_fwd": "SYN", "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false,
            "interfaces": ifaces, "scenario": scenario, "src": src, "dst": dst,
            "tunnel": if scenario == "pod_to_pod_cross_node" { json!({"remote_node": "node2", "remote_ip": "172.31.250.12"}) } else { json!(null) }
        }))
        .expect("valid flow")
    }

    fn iface(kind: &str, dir: &str, fdir: &str) -> serde_json::Value {
        json!({"name": format!("{kind}-{dir}"), "ifindex": 3, "direction": dir, "kind": kind, "flow_direction": fdir, "packets": 1})
    }

    fn cross(id: &str, (req, rep, rev): (u32, u32, u64), dst: &str) -> Flow {
        flow(
            id,
            "tcp",
            8080,
            (req, rep, rev),
            "pod_to_pod_cross_node",
            pod("default", "web-1", "node1"),
            pod("shop", dst, "node2"),
            json!([iface("pod", "ingress", "fwd"), iface("underlay", "egress", "fwd")]),
        )
    }

    fn same(id: &str, (req, rep, rev): (u32, u32, u64), dst: &str, delivered: bool) -> Flow {
        let mut i = vec![iface("pod", "ingress", "fwd")];
        if delivered {
            i.push(iface("pod", "egress", "fwd"));
        }
        flow(
            id,
            "tcp",
            8080,
            (req, rep, rev),
            "pod_to_pod_same_node",
            pod("default", "web-1", "node1"),
            pod("shop", dst, "node1"),
            json!(i),
        )
    }

    use crate::drops::test_record as drop_rec;

    fn pod_location(iface: &str) -> IfaceKind {
        if iface.ends_with("_h") { IfaceKind::Pod } else { IfaceKind::Host }
    }

    #[test]
    fn icmp_without_a_ping_socket_is_routine_tcp_without_a_socket_is_not() {
        let mut d = detector();
        let answered = same("a", (1, 1, 3), "db-1", true);
        let icmp = |id: &str, count| crate::drops::DropRecord {
            protocol: Some(Protocol::Icmp),
            ip_proto: 1,
            src_port: 0,
            dst_port: 0,
            ..drop_rec(id, "NO_SOCKET", "abc_h", count)
        };
        let icmp6 = |id: &str, count| crate::drops::DropRecord { ip_proto: 58, ..icmp(id, count) };
        d.observe_drops(&[icmp("i", 0), icmp6("j", 0)], pod_location, at(1));
        d.evaluate(std::slice::from_ref(&answered), at(1));
        // Every raw-socket ping's reply: hundreds of them are no finding.
        d.observe_drops(&[icmp("i", 400), icmp6("j", 400)], pod_location, at(3));
        let alerts = d.evaluate(std::slice::from_ref(&answered), at(3));
        assert!(alerts.is_empty(), "echo replies freed by ping_rcv raised: {alerts:#?}");
        // The same reason on TCP (segments for no socket) still is one.
        d.observe_drops(
            &[icmp("i", 400), icmp6("j", 400), drop_rec("a", "NO_SOCKET", "abc_h", 50)],
            pod_location,
            at(5),
        );
        let alerts = d.evaluate(std::slice::from_ref(&answered), at(5));
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].evidence.drops[0].reason, "NO_SOCKET");
    }

    #[test]
    fn drop_bursts_raise_one_finding_per_reason_and_interface() {
        let mut d = detector();
        let answered = same("a", (1, 1, 3), "db-1", true);
        // Counts since load: the first poll's records are all new.
        d.observe_drops(&[drop_rec("a", "NETFILTER_DROP", "abc_h", 4)], pod_location, at(1));
        assert!(d.evaluate(std::slice::from_ref(&answered), at(1)).is_empty(), "4 < burst of 10");
        d.observe_drops(
            &[
                drop_rec("a", "NETFILTER_DROP", "abc_h", 12),
                // Ignored by default: frames for other MACs on promiscuous ports.
                drop_rec("a", "OTHERHOST", "abc_h", 500),
            ],
            pod_location,
            at(3),
        );
        let alerts = d.evaluate(std::slice::from_ref(&answered), at(3));
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!((a.kind, a.state), (AlertKind::Drops, AlertState::Firing));
        assert_eq!(a.evidence.drops.len(), 1);
        let e = &a.evidence.drops[0];
        assert_eq!(
            (e.reason.as_str(), e.interface.as_str(), e.location.as_str(), e.count),
            ("NETFILTER_DROP", "abc_h", "pod", 12)
        );
        assert_eq!(a.flows, vec!["a".to_string()]);
        assert_eq!(a.scenario, "pod_to_pod_same_node");
        let v = a.verdict.as_ref().expect("verdict");
        assert_eq!(v.hop, "dropped_at_pod");
        assert!(v.summary.contains("netfilter"), "{}", v.summary);
        assert_eq!(v.next_commands[0], "nft list ruleset");
        // More of the same keeps one finding; quiet resolves it after resolve_after (30 s).
        d.observe_drops(&[drop_rec("a", "NETFILTER_DROP", "abc_h", 30)], pod_location, at(5));
        assert_eq!(d.evaluate(std::slice::from_ref(&answered), at(5)).len(), 1);
        d.observe_drops(&[drop_rec("a", "NETFILTER_DROP", "abc_h", 30)], pod_location, at(20));
        let still = d.evaluate(std::slice::from_ref(&answered), at(20));
        assert_eq!(still[0].state, "firing", "answered traffic does not heal drops");
        d.observe_drops(&[drop_rec("a", "NETFILTER_DROP", "abc_h", 30)], pod_location, at(40));
        assert_eq!(d.evaluate(std::slice::from_ref(&answered), at(40))[0].state, "resolved");
    }

    #[test]
    fn drops_of_a_failing_pair_are_evidence_not_a_second_finding() {
        let mut d = detector();
        let failing = same("a", (3, 0, 0), "db-1", false);
        d.observe_drops(&[drop_rec("a", "NETFILTER_DROP", "abc_h", 15)], pod_location, at(5));
        let alerts = d.evaluate(std::slice::from_ref(&failing), at(5));
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].kind, AlertKind::RequestWithoutReply);
        assert_eq!(alerts[0].evidence.drops[0].reason, "NETFILTER_DROP");
        assert_eq!(alerts[0].evidence.drops[0].count, 15);
        // Drops spread below the burst in the window never fire; outside the window they age out.
        let mut d = Detector::new("node1", DetectorConfig { drop_burst: 5, ..Default::default() });
        d.observe_drops(&[drop_rec("", "NO_SOCKET", "eth0", 3)], pod_location, at(0));
        d.observe_drops(&[drop_rec("", "NO_SOCKET", "eth0", 6)], pod_location, at(20));
        assert!(d.evaluate::<Flow>(&[], at(20)).is_empty(), "3 + 3 in two windows");
        d.observe_drops(&[drop_rec("", "NO_SOCKET", "eth0", 8)], pod_location, at(25));
        let a = d.evaluate::<Flow>(&[], at(25));
        assert_eq!(a.len(), 1, "3 + 2 within 10 s");
        assert_eq!((a[0].src_ip.to_string(), a[0].flows.len()), ("10.16.0.2".to_string(), 0));
        assert_eq!(a[0].verdict.as_ref().unwrap().hop, "dropped_at_host");
    }

    fn detector() -> Detector {
        Detector::new("node1", DetectorConfig::default())
    }

    #[test]
    fn unanswered_requests_fire_after_the_timeout_once_per_pair() {
        let mut d = detector();
        let flows = vec![cross("a", (3, 0, 0), "db-2"), cross("b", (2, 0, 0), "db-2")];
        assert!(d.evaluate(&flows, at(1)).is_empty(), "younger than the 3 s reply timeout");
        let alerts = d.evaluate(&flows, at(4));
        assert_eq!(alerts.len(), 1, "one finding for the pair, not one per flow: {alerts:#?}");
        let a = &alerts[0];
        assert_eq!(
            (a.kind.as_str(), a.state.as_str(), a.scenario.as_str()),
            ("request_without_reply", "firing", "pod_to_pod_cross_node")
        );
        assert_eq!((a.evidence.requests_unanswered, a.flows.len()), (5, 2));
        assert_eq!(a.summary, "default/web-1 -> shop/db-2: 5 request(s) without reply (tcp)");
        let again = d.evaluate(&flows, at(6));
        assert_eq!(
            (again.len(), again[0].id.as_str()),
            (1, a.id.as_str()),
            "the same finding, not a new one"
        );
    }

    #[test]
    fn findings_resolve_when_the_pair_works_again() {
        let mut d = detector();
        d.evaluate(&[same("a", (2, 0, 0), "db-1", false)], at(5));
        let healed = d.evaluate(&[same("b", (1, 1, 3), "db-1", true)], at(8));
        assert_eq!(healed[0].state, "resolved");
        assert!(healed[0].resolved_at.is_some());
        // Quiet findings resolve after resolve_after (30 s) too.
        let mut d = detector();
        d.evaluate(&[same("a", (2, 0, 0), "db-1", false)], at(5));
        assert_eq!(d.evaluate::<Flow>(&[], at(20))[0].state, "firing");
        assert_eq!(d.evaluate::<Flow>(&[], at(40))[0].state, "resolved");
        assert!(d.evaluate::<Flow>(&[], at(40 + 601)).is_empty(), "dropped after the retention time");
    }

    #[test]
    fn stale_failures_and_non_pod_traffic_are_not_findings() {
        let mut d = detector();
        let mut old = same("old", (1, 0, 0), "db-1", true);
        old.last_seen = crate::model::parse_rfc3339("2026-01-01T00:00:01Z").expect("time");
        let mut newer = same("new", (1, 1, 4), "db-1", true);
        newer.first_seen = crate::model::parse_rfc3339("2026-01-01T00:00:02Z").expect("time");
        assert!(d.evaluate(&[old.clone(), newer.clone()], at(10)).is_empty(), "the pair works again");
        let mut big = old.clone();
        big.bytes_fwd = 1500;
        assert_eq!(d.evaluate(&[big, newer], at(10)).len(), 1, "small answers do not excuse big failures");
        let mut node_traffic = old;
        node_traffic.src = Some(serde_json::from_value(json!({"kind": "external"})).expect("endpoint"));
        node_traffic.dst =
            Some(serde_json::from_value(json!({"kind": "node", "node": "node1"})).expect("endpoint"));
        assert!(detector().evaluate(&[node_traffic], at(10)).is_empty());
    }

    #[test]
    fn only_the_initiators_node_reports() {
        let mut d = Detector::new("node2", DetectorConfig::default());
        assert!(d.evaluate(&[cross("a", (3, 0, 0), "db-2")], at(10)).is_empty());
    }

    #[test]
    fn refused_connections_are_their_own_kind() {
        let mut d = detector();
        let mut f = same("a", (1, 0, 1), "db-1", true);
        f.state = "reset".into();
        f.rst_rev = 1;
        f.requests_unanswered = 0;
        let a = d.evaluate(&[f.clone()], at(1));
        assert_eq!(
            (a.len(), a[0].kind.as_str(), a[0].severity.as_str()),
            (1, "connection_refused", "warning")
        );
        let (hop, _) = verdict(&a[0], &f, None, true);
        assert_eq!(hop, "refused_by_destination");
    }

    #[test]
    fn big_unanswered_small_answered_is_an_mtu_black_hole() {
        let mut d = Detector::new("node1", DetectorConfig { pod_mtu: Some(1400), ..Default::default() });
        let mut big = cross("big", (3, 0, 0), "db-2");
        big.protocol = "icmp".into();
        big.bytes_fwd = 3 * 1500;
        let mut small = cross("small", (3, 3, 3), "db-2");
        small.protocol = "icmp".into();
        let a = d.evaluate(&[big, small], at(5));
        assert_eq!(a[0].kind, "mtu");
        assert_eq!((a[0].evidence.max_request_bytes, a[0].evidence.path_mtu), (Some(1500), Some(1400)));
    }

    #[test]
    fn cross_node_failing_towards_one_node_while_same_node_works_is_the_tunnel() {
        let mut d = detector();
        let flows = vec![
            cross("a", (2, 0, 0), "db-2"),
            cross("b", (2, 0, 0), "cache-2"),
            same("c", (1, 1, 2), "db-1", true),
        ];
        let a = d.evaluate(&flows, at(5));
        let kinds: Vec<&str> = a.iter().filter(|a| a.state == "firing").map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, vec!["tunnel"], "one finding per node pair: {a:#?}");
        assert_eq!(a[0].remote_node.as_deref(), Some("node2"));
        assert_eq!(a[0].flows.len(), 2);
        assert!(a[0].evidence.drops.is_empty());
        // The node's firewall drops the encapsulated packets: outer addresses, yet evidence of
        // the tunnel finding (any count), not a drops finding of its own.
        let mut outer = drop_rec("outer", "NETFILTER_DROP", "eth0", 3);
        (outer.protocol, outer.dst_port, outer.dst_ip) =
            (Some(Protocol::Udp), 6081, Some("172.31.250.12".parse().unwrap()));
        d.observe_drops(&[outer], pod_location, at(6));
        let a = d.evaluate(&flows, at(6));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!(
            a[0].evidence.drops,
            vec![DropEvidence {
                reason: "NETFILTER_DROP".into(),
                interface: "eth0".into(),
                location: "host".into(),
                count: 3
            }]
        );
        assert!(
            a[0].summary.starts_with("node1 -> node2: cross-node requests of 2 pod pair(s)"),
            "{}",
            a[0].summary
        );
        // The same pair first judged alone, then with a second failing pair: one finding.
        let mut d = detector();
        let first = d.evaluate(&[cross("a", (2, 0, 0), "db-2"), same("c", (1, 1, 2), "db-1", true)], at(5));
        assert_eq!(first[0].kind, "request_without_reply");
        let later = d.evaluate(&flows, at(6));
        assert_eq!(later.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(), vec!["tunnel"], "{later:#?}");
        // One pair retrying (a new flow per attempt) is still one pair, not the tunnel.
        let mut d = detector();
        let retries = [
            cross("r1", (2, 0, 0), "db-2"),
            cross("r2", (2, 0, 0), "db-2"),
            cross("r3", (2, 0, 0), "db-2"),
            same("c", (1, 1, 2), "db-1", true),
        ];
        let a = d.evaluate(&retries, at(5));
        assert_eq!(
            a.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
            vec!["request_without_reply"],
            "{a:#?}"
        );
        assert_eq!(a[0].flows.len(), 3);
        // Two clients of one broken pod on node2: that pod's problem, not the tunnel's.
        let mut d = detector();
        let mut other_client = cross("o1", (2, 0, 0), "db-2");
        other_client.src =
            Some(serde_json::from_value(pod("default", "cache-1", "node1")).expect("endpoint"));
        other_client.src_ip = "10.16.0.9".parse().unwrap();
        let a = d.evaluate(
            &[cross("r1", (2, 0, 0), "db-2"), other_client, same("c", (1, 1, 2), "db-1", true)],
            at(5),
        );
        assert!(a.iter().all(|a| a.kind == "request_without_reply"), "{a:#?}");
        // A service whose only backend is on node2 counts as that backend: with another pod
        // of node2 failing too, it is the tunnel, in one finding.
        let mut d = detector();
        let mut svc = flow(
            "s1",
            "tcp",
            80,
            (2, 0, 0),
            "pod_to_service",
            pod("default", "web-1", "node1"),
            json!({"kind": "service", "service": "shop/db", "backends": ["shop/db-2"]}),
            json!([iface("pod", "ingress", "fwd")]),
        );
        svc.dst_ip = "10.96.0.11".parse().unwrap();
        svc.tunnel =
            Some(crate::inventory::TunnelPeer { remote_node: Some("node2".into()), ..Default::default() });
        let a = d.evaluate(
            &[svc.clone(), cross("b", (2, 0, 0), "cache-2"), same("c", (1, 1, 2), "db-1", true)],
            at(5),
        );
        let firing: Vec<&str> = a.iter().filter(|a| a.state == "firing").map(|a| a.kind.as_str()).collect();
        assert_eq!(firing, vec!["tunnel"], "{a:#?}");
        assert_eq!(a[0].flows.len(), 2, "the service flow is part of it: {a:#?}");
        // The same service flow with its backend's own pod failing: one destination.
        let mut d = detector();
        let a = d.evaluate(&[svc, cross("b", (2, 0, 0), "db-2"), same("c", (1, 1, 2), "db-1", true)], at(5));
        assert!(a.iter().all(|a| a.kind == "request_without_reply"), "{a:#?}");
        // One failing pair alone is not enough to blame the tunnel.
        let mut d = detector();
        let a = d.evaluate(&[cross("a", (2, 0, 0), "db-2"), same("c", (1, 1, 2), "db-1", true)], at(5));
        assert_eq!(a[0].kind, "request_without_reply");
    }

    /// A connection to the VIP of `shop/db` (backends db-1 on node1, db-2 on node2) from
    /// web-1, source port `sport`, and its post-DNAT flow towards `backend` when seen.
    fn via_service(sport: u16, (req, rep, rev): (u32, u32, u64), backend: Option<&str>) -> Vec<Flow> {
        let svc = json!({"kind": "service", "namespace": "shop", "service": "shop/db",
            "backends": ["shop/db-1", "shop/db-2"]});
        let mut vip = flow(
            &format!("vip{sport}"),
            "tcp",
            80,
            (req, rep, rev),
            "pod_to_service",
            pod("default", "web-1", "node1"),
            svc,
            json!([iface("pod", "ingress", "fwd")]),
        );
        vip.dst_ip = "10.96.0.11".parse().unwrap();
        vip.src_port = sport;
        let mut out = vec![vip];
        if let Some(b) = backend {
            let mut post = if b == "db-2" {
                cross("x", (req, rep, rev), b)
            } else {
                same("x", (req, rep, rev), b, true)
            };
            post.id = format!("post{sport}");
            post.src_port = sport;
            post.dst_ip = if b == "db-2" { "10.16.0.6" } else { "10.16.0.3" }.parse().unwrap();
            out.push(post);
        }
        out
    }

    #[test]
    fn service_flows_follow_their_backend() {
        let mut d = detector();
        // Two connections failing through db-2, one answered by db-1: one finding, for the
        // backend db-2, not hidden by db-1 answering and no second (pod-to-pod) finding.
        let mut flows = via_service(40001, (2, 0, 0), Some("db-2"));
        flows.extend(via_service(40002, (2, 0, 0), Some("db-2")));
        flows.extend(via_service(40003, (1, 1, 3), Some("db-1")));
        let a = d.evaluate(&flows, at(5));
        let firing: Vec<&Alert> = a.iter().filter(|a| a.state == "firing").collect();
        assert_eq!(firing.len(), 1, "{a:#?}");
        let a = firing[0].clone();
        assert_eq!((a.kind.as_str(), a.scenario.as_str()), ("request_without_reply", "pod_to_service"));
        let b = a.backend.clone().expect("backend named");
        assert_eq!(
            (b.service.as_deref(), b.pod.as_ref().and_then(|p| p.pod.as_deref()), b.ip.to_string(), b.port),
            (Some("shop/db"), Some("db-2"), "10.16.0.6".to_string(), 8080)
        );
        assert_eq!(b.flow, "post40001");
        assert_eq!(a.flows, vec!["vip40001", "vip40002", "post40001", "post40002"], "{a:#?}");
        assert_eq!(
            a.summary,
            "default/web-1 -> service shop/db via backend shop/db-2: 4 request(s) without reply (tcp)"
        );
        // The verdict follows the post-DNAT flow: it left for node2, which saw it arrive
        // but not reach db-2's veth.
        let post = flows.iter().find(|f| f.id == "post40001").unwrap();
        let mut at_peer = post.clone();
        at_peer.interfaces =
            vec![serde_json::from_value(iface("underlay", "ingress", "fwd")).expect("iface")];
        let (hop, summary) = verdict(&a, post, Some(&PeerView::Seen(Some(Box::new(at_peer)))), true);
        assert_eq!(hop, "lost_before_destination_pod");
        assert!(summary.contains("shop/db-2 (backend of service shop/db)"), "{summary}");
        let (hop, _) = verdict(&a, post, Some(&PeerView::Seen(None)), true);
        assert_eq!(hop, "lost_in_tunnel");
        // db-2 answers again: resolved.
        let healed = via_service(40004, (1, 1, 3), Some("db-2"));
        let r = d.evaluate(&healed, at(8));
        assert_eq!(r.iter().find(|x| x.id == a.id).map(|x| x.state.as_str()), Some("resolved"), "{r:#?}");
        // No post-DNAT flow seen: the service is named, the hop is not guessed.
        let mut d = detector();
        let lone = via_service(40005, (2, 0, 0), None);
        let a = d.evaluate(&lone, at(5)).remove(0);
        assert!(a.backend.is_none());
        let (hop, summary) = verdict(&a, &lone[0], None, false);
        assert_eq!(hop, "unknown");
        assert!(summary.contains("service shop/db"), "{summary}");
        // ... unless the underlay is watched: then it never left the node.
        assert_eq!(verdict(&a, &lone[0], None, true).0, "never_left_source");
        // A VIP with no backends says so.
        let mut empty = lone[0].clone();
        empty.dst.as_mut().unwrap().backends.clear();
        let a = detector().evaluate(std::slice::from_ref(&empty), at(5)).remove(0);
        assert_eq!(verdict(&a, &empty, None, true).0, "no_backends");
    }

    #[test]
    fn one_way_udp_ports_are_not_findings() {
        let mut d =
            Detector::new("node1", DetectorConfig { udp_oneway_ports: vec![514], ..Default::default() });
        let mut f = same("a", (9, 0, 0), "db-1", true);
        f.protocol = "udp".into();
        f.dst_port = 514;
        assert!(d.evaluate(&[f], at(10)).is_empty());
    }

    #[test]
    fn verdicts_name_the_hop() {
        let mut d = detector();
        let delivered = same("a", (2, 0, 0), "db-1", true);
        let a = d.evaluate(std::slice::from_ref(&delivered), at(5)).remove(0);
        assert_eq!(verdict(&a, &delivered, None, true).0, "no_reply_from_destination");
        let lost = same("b", (2, 0, 0), "db-1", false);
        assert_eq!(verdict(&a, &lost, None, true).0, "lost_before_destination_pod");

        let x = cross("x", (2, 0, 0), "db-2");
        let a = d
            .evaluate(std::slice::from_ref(&x), at(5))
            .into_iter()
            .find(|a| a.scenario == "pod_to_pod_cross_node")
            .expect("cross");
        let mut stuck = x.clone();
        stuck.interfaces.retain(|i| i.kind == "pod");
        stuck.interfaces.push(serde_json::from_value(iface("underlay", "ingress", "rev")).expect("iface"));
        assert_eq!(verdict(&a, &stuck, None, true).0, "never_left_source");
        let (hop, summary) = verdict(&a, &x, Some(&PeerView::Seen(None)), true);
        assert_eq!(hop, "lost_in_tunnel");
        assert!(summary.contains("never arrived on node2"), "{summary}");
        let mut at_peer = x.clone();
        at_peer.interfaces =
            vec![serde_json::from_value(iface("underlay", "ingress", "fwd")).expect("iface")];
        assert_eq!(
            verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer.clone())))), true).0,
            "lost_before_destination_pod"
        );
        at_peer.interfaces.push(serde_json::from_value(iface("pod", "egress", "fwd")).expect("iface"));
        assert_eq!(
            verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer.clone())))), true).0,
            "no_reply_from_destination"
        );
        at_peer.packets_rev = 2;
        assert_eq!(verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer)))), true).0, "lost_in_tunnel");
        assert_eq!(verdict(&a, &x, Some(&PeerView::Unreachable("timeout".into())), true).0, "unknown");
    }

    #[test]
    fn next_commands_carry_the_observed_packet() {
        let mut d = detector();
        let f = cross("x", (2, 0, 0), "db-2");
        let a = d.evaluate(std::slice::from_ref(&f), at(5)).remove(0);
        let ctx = CommandContext {
            ovn_sb: Some("unix:/run/kovn-lab/kovn/central/sb.sock".into()),
            br_int: "unix:/run/kovn-lab/kovn/node1/br-int.mgmt".into(),
            netns: Some("kovn-node1".into()),
            logical_switch: "ovn-default".into(),
        };
        let src = EndpointFacts {
            mac: Some("0a:00:00:00:00:01".into()),
            host_iface: Some("abc000000001_h".into()),
        };
        let cmds = next_commands(&a, &f, &ctx, &src, &EndpointFacts::default());
        assert_eq!(
            cmds[0],
            "ovn-trace --db=unix:/run/kovn-lab/kovn/central/sb.sock ovn-default 'inport == \"web-1.default\" && eth.src == 0a:00:00:00:00:01 && ip4.src == 10.16.0.2 && ip4.dst == 10.16.0.5 && ip.ttl == 64 && tcp && tcp.dst == 8080'"
        );
        assert_eq!(cmds[1], "kubectl ko trace default/web-1 10.16.0.5 tcp 8080");
        assert_eq!(
            cmds[2],
            "ip netns exec kovn-node1 ovs-ofctl dump-flows unix:/run/kovn-lab/kovn/node1/br-int.mgmt ip,nw_dst=10.16.0.5"
        );
        assert!(
            cmds[3].starts_with("ip netns exec kovn-node1 tcpdump -nn -i abc000000001_h host 10.16.0.2"),
            "{cmds:?}"
        );
        assert_eq!(cmds[4], "kubectl get networkpolicy -n shop");
    }
}
