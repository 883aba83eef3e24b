//! The collector's judgement: findings about broken paths, as alert objects with evidence and
//! a verdict on where packets stop. Detectors run over the flow table after every poll.
//!
//! [`Detector::evaluate`] groups this node's pod flows by pair (source, destination) and asks
//! each path detector in turn, most specific first: [`refused`] (a reset), [`mtu`] (big
//! requests die, small ones pass), [`tunnel`] (several destinations behind one node fail while
//! same-node traffic works), else [`unanswered`]. [`drops`] turns kernel drop bursts into
//! evidence or findings of their own. [`verdict`] says where a finding's packets stop.
//!
//! Size: the orchestration every detector shares (`evaluate`, `raise`, the pair helpers); an eighth
//! of it is tests.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use crate::flows::Flow;
use crate::inventory::{Endpoint, EndpointKind};
pub use crate::model::{AlertKind, AlertState};
use crate::model::{Protocol, Scenario};

mod drops;
#[cfg(test)]
mod fixtures;
mod mtu;
mod refused;
mod tunnel;
mod unanswered;
mod underlay;
pub mod verdict;

pub use verdict::{CommandContext, EndpointFacts, next_commands, verdict};

/// The published finding types, at their old paths.
pub use crate::model::{Alert, DropEvidence, Evidence, Hop, PeerView, ServiceBackend, Severity, Verdict};

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

/// The small interface each path detector implements: the kind of finding it raises, its
/// severity and how the finding reads. Which flows it claims is its module's own function
/// (`refused::is_refused`, `mtu::black_hole`, `tunnel::is_tunnel`, `unanswered::is_failing`).
trait PathDetector {
    /// The kind `evaluate` raises for it (and `describe` dispatches on).
    const KIND: AlertKind;
    const SEVERITY: Severity;
    /// The finding's one-line summary, `src -> dst: ...`.
    fn summary(src: &str, dst: &str, failing: &[&Flow], evidence: &Evidence, protocols: &[&str]) -> String;
}

/// The severity and summary of a path finding of `kind`, from its detector.
fn describe(
    kind: AlertKind,
    src: &str,
    dst: &str,
    failing: &[&Flow],
    evidence: &Evidence,
    protocols: &[&str],
) -> (Severity, String) {
    fn by<D: PathDetector>(
        src: &str,
        dst: &str,
        failing: &[&Flow],
        evidence: &Evidence,
        protocols: &[&str],
    ) -> (Severity, String) {
        (D::SEVERITY, D::summary(src, dst, failing, evidence, protocols))
    }
    match kind {
        AlertKind::ConnectionRefused => by::<refused::Refused>(src, dst, failing, evidence, protocols),
        AlertKind::Mtu => by::<mtu::Mtu>(src, dst, failing, evidence, protocols),
        AlertKind::Tunnel => by::<tunnel::Tunnel>(src, dst, failing, evidence, protocols),
        // Drops and floods are raised by their own detectors (`drops`, `guard`), never here.
        AlertKind::RequestWithoutReply | AlertKind::Drops | AlertKind::FlowFlood => {
            by::<unanswered::Unanswered>(src, dst, failing, evidence, protocols)
        }
    }
}

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
    /// The detector set the verdict itself (it knows the cause: the underlay NIC's state, the
    /// node's firewall dropping the tunnel); the daemon keeps it.
    own_verdict: bool,
}

/// The detectors' state across polls: findings by id.
pub struct Detector {
    cfg: DetectorConfig,
    node: String,
    tracked: BTreeMap<String, Tracked>,
    /// Last count of each kernel drop record: (flow id, reason, ifindex).
    drop_counts: HashMap<(String, String, u32), u64>,
    /// Drop rises within the drop window, oldest first.
    drop_window: std::collections::VecDeque<drops::DropDelta>,
    /// The underlay NIC's last failure (`underlay`).
    underlay: Option<underlay::Episode>,
    /// This node's tunnel endpoint addresses (its underlay NICs'), as last known.
    local_ips: Vec<std::net::IpAddr>,
}

impl Detector {
    pub fn new(node: &str, cfg: DetectorConfig) -> Self {
        Self {
            cfg,
            node: node.to_string(),
            tracked: BTreeMap::new(),
            drop_counts: HashMap::new(),
            drop_window: Default::default(),
            underlay: None,
            local_ips: Vec::new(),
        }
    }

    /// Whether the detector set this finding's verdict itself (the daemon then keeps it).
    pub fn own_verdict(&self, id: &str) -> bool {
        self.tracked.get(id).is_some_and(|t| t.own_verdict)
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
        // Failing cross-node requests while this node's underlay NIC is down are that
        // finding's evidence, not pairs of their own.
        let mut absorbed: Vec<&Flow> = Vec::new();
        for f in flows.iter().filter(|f| reported_here(f, &self.node) && (is_pod(&f.src) || is_pod(&f.dst))) {
            if f.protocol == Protocol::Udp && self.cfg.udp_oneway_ports.contains(&f.dst_port) {
                continue;
            }
            if post_dnat.contains(f.id.as_str()) {
                continue;
            }
            if unanswered::is_failing(f, now, timeout) && self.explained_by_underlay(path(f), timeout) {
                absorbed.push(f);
                continue;
            }
            let backend = backend_of.get(f.id.as_str()).map(|b| service_backend(f, b));
            let key = (who(f.src.as_ref(), f.src_ip), pair_dst(f.dst.as_ref(), f.dst_ip, backend.as_ref()));
            let round = pairs.entry(key).or_default();
            if refused::is_refused(f) {
                round.refused.push(f);
            } else if unanswered::is_failing(f, now, timeout) {
                round.failing.push(f);
            } else if unanswered::is_answered(f) {
                round.answered.push(f);
                // Failures whose backend was not seen are judged per service: any backend
                // answering later makes them history, as for one pod.
                if backend.is_some() {
                    let service_pair = (who(f.src.as_ref(), f.src_ip), who(f.dst.as_ref(), f.dst_ip));
                    pairs.entry(service_pair).or_default().answered.push(f);
                }
            }
        }
        for round in pairs.values_mut() {
            unanswered::forget_healed(round);
        }
        // Cross-node pairs failing towards a node while its other pairs and same-node traffic
        // work point at the tunnel: counted per remote node. The node's firewall dropping the
        // encapsulated packets to or from a node names the cause at once, for any pair.
        let by_remote = tunnel::ByRemote::count(pairs.values(), path);
        let same_node_ok = tunnel::same_node_works(pairs.values());
        let firewall = self.tunnel_firewall();
        let mut seen_now = Vec::new();
        // Tunnel findings are per node pair: every pod pair failing towards that node is one
        // problem of the tunnel, raised once below.
        let mut tunnel_failing: BTreeMap<String, Vec<&Flow>> = BTreeMap::new();
        for ((src, dst), round) in &pairs {
            if !round.refused.is_empty() {
                let id = self.raise(refused::Refused::KIND, src, dst, &round.refused, &round.answered, now);
                self.name_backend(&id, dst, &round.refused, &backend_of);
                seen_now.push(id);
            }
            if round.failing.is_empty() {
                continue;
            }
            let mtu_hole = mtu::black_hole(&self.cfg, &round.failing, &round.answered);
            let kind = if mtu_hole.is_some() {
                mtu::Mtu::KIND
            } else if tunnel::is_tunnel(&round.failing, path, same_node_ok, &by_remote)
                || tunnel::firewalled(&round.failing, path, &firewall).is_some()
            {
                tunnel::Tunnel::KIND
            } else {
                unanswered::Unanswered::KIND
            };
            if kind == tunnel::Tunnel::KIND {
                self.supersede(src, dst, tunnel::Tunnel::KIND);
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
            let id = self.raise(tunnel::Tunnel::KIND, &local, remote, failing, &[], now);
            let blocked = tunnel::firewalled(failing, path, &firewall);
            if let Some(t) = self.tracked.get_mut(&id) {
                t.own_verdict = blocked.is_some();
                if let Some((ip, drops)) = blocked {
                    t.alert.verdict = Some(tunnel::firewall_verdict(&local, remote, ip, drops));
                } else if t.alert.verdict.as_ref().is_some_and(|v| v.hop == Hop::TunnelBlockedByFirewall) {
                    // The drops stopped but the pairs still fail: the daemon judges it afresh.
                    t.alert.verdict = None;
                }
            }
            seen_now.push(id);
        }
        self.evaluate_underlay(&absorbed, &mut seen_now, now, timeout);
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
                t.alert.resolved_at = Some(now);
            }
        }
        let retention = time::Duration::try_from(self.cfg.retention).unwrap_or(time::Duration::minutes(10));
        self.tracked.retain(|_, t| {
            t.alert.state == AlertState::Firing || t.alert.resolved_at.is_none_or(|r| now - r < retention)
        });
        let mut out: Vec<Alert> = self.tracked.values().map(|t| t.alert.clone()).collect();
        out.sort_by(|a, b| {
            (a.state != AlertState::Firing)
                .cmp(&(b.state != AlertState::Firing))
                .then(b.last_seen.cmp(&a.last_seen))
        });
        out
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
        let (severity, summary) = describe(kind, src, dst, failing, &evidence, &protocols);
        // Flow times are RFC 3339 text (the flow table's); a flow without one counts as now.
        let first_seen = failing.iter().map(|f| f.first_seen).min().unwrap_or(now);
        let last_seen = failing.iter().map(|f| f.last_seen).max().unwrap_or(now);
        let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
            alert: Alert {
                id: id.clone(),
                kind,
                state: AlertState::Firing,
                severity,
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
                first_seen,
                last_seen,
                resolved_at: None,
                summary: String::new(),
                evidence: Evidence::default(),
                verdict: None,
                drilldown: None,
                flows: Vec::new(),
            },
            last_failure: now,
            own_verdict: false,
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
        a.last_seen = last_seen;
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

#[cfg(test)]
mod tests {

    use super::fixtures::*;
    use super::*;

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
    fn only_the_initiators_node_reports() {
        let mut d = Detector::new("node2", DetectorConfig::default());
        assert!(d.evaluate(&[cross("a", (3, 0, 0), "db-2")], at(10)).is_empty());
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
}
