//! Kernel drops (`skb:kfree_skb`): bursts of drops attached as evidence to the path findings
//! whose flows they hit, else raised as `drops` findings of their own (one per reason and
//! interface).

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::{Alert, Detector, DropEvidence, Evidence, Severity, Tracked, alert_id, who};
use crate::flows::Flow;
use crate::model::{AlertKind, AlertState, IfaceKind, Protocol, Scenario};

/// The severity of a drops finding: packets are lost, but the path may still mostly work.
const SEVERITY: Severity = Severity::Warning;

/// The kernel's reason for a packet a netfilter rule dropped.
pub(super) const NETFILTER_DROP: &str = "NETFILTER_DROP";

/// A drop of an encapsulated packet: UDP to the Geneve (6081) or VXLAN (4789) port.
fn encapsulated(d: &DropDelta) -> bool {
    d.protocol == Some(Protocol::Udp) && crate::model::is_tunnel_port(d.dst_port)
}

/// One poll's rise of one kernel drop record.
pub(super) struct DropDelta {
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
    /// The kernel function that freed the latest of them, when named.
    kernel_function: Option<String>,
}

impl Detector {
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
                kernel_function: d.kernel_function.clone(),
            });
        }
        self.drop_counts = next;
        let window = time::Duration::try_from(self.cfg.drop_window).unwrap_or(time::Duration::seconds(10));
        while self.drop_window.front().is_some_and(|d| now - d.at > window) {
            self.drop_window.pop_front();
        }
    }

    /// Netfilter drops of encapsulated tunnel packets (UDP to the Geneve or VXLAN port) within
    /// the drop window, by the address at the other end (not one of this node's): the node's
    /// firewall blocks the tunnel to or from that node.
    pub(super) fn tunnel_firewall(&self) -> HashMap<std::net::IpAddr, DropEvidence> {
        let mut out: HashMap<std::net::IpAddr, DropEvidence> = HashMap::new();
        for d in self.drop_window.iter().filter(|d| d.reason == NETFILTER_DROP && encapsulated(d)) {
            for ip in [d.src_ip, d.dst_ip].into_iter().flatten().filter(|ip| !self.local_ips.contains(ip)) {
                let e = out.entry(ip).or_insert_with(|| DropEvidence {
                    reason: d.reason.clone(),
                    interface: d.interface.clone(),
                    location: d.location,
                    count: 0,
                });
                e.count += d.count;
            }
        }
        out
    }

    /// Bursts of drops: attached as evidence to the path findings whose flows they hit, else
    /// raised as `drops` findings of their own (one per reason and interface).
    pub(super) fn evaluate_drops(
        &mut self,
        flows: &[&Flow],
        seen_now: &mut Vec<String>,
        now: OffsetDateTime,
    ) {
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
        type Sites = BTreeMap<(String, String), (IfaceKind, u64, BTreeMap<String, u64>, Option<String>)>;
        let mut sites: Sites = BTreeMap::new();
        let mut explained: BTreeMap<(String, String, String, IfaceKind), u64> = BTreeMap::new();
        for d in &self.drop_window {
            let encapsulated = encapsulated(d);
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
            // This node's firewall dropping tunnel packets to or from another node is that
            // tunnel's problem: the requesting node's monitor raises it (it asks this one and
            // names this firewall), once per node pair, not as drops here too.
            if encapsulated
                && d.reason == NETFILTER_DROP
                && !self.local_ips.is_empty()
                && [d.src_ip, d.dst_ip].iter().flatten().any(|ip| !self.local_ips.contains(ip))
            {
                continue;
            }
            let e = sites
                .entry((d.reason.clone(), d.interface.clone()))
                .or_insert_with(|| (d.location, 0, BTreeMap::new(), None));
            e.1 += d.count;
            *e.2.entry(d.flow_id.clone()).or_default() += d.count;
            // The window is in time order: the latest named function wins.
            if d.kernel_function.is_some() {
                e.3.clone_from(&d.kernel_function);
            }
        }
        for ((id, reason, interface, location), count) in explained {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.alert.evidence.drops.push(DropEvidence { reason, interface, location, count });
            }
        }
        for ((reason, interface), (location, total, per_flow, function)) in sites {
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
            let freed = function.map(|f| format!(", freed in {f}")).unwrap_or_default();
            let summary = format!(
                "{total} packet(s) dropped by the kernel on {interface} ({location}) with reason {reason} within {}s{freed}; most from {what}",
                window.as_secs()
            );
            let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
                alert: Alert {
                    id: id.clone(),
                    kind: AlertKind::Drops,
                    state: AlertState::Firing,
                    severity: SEVERITY,
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
                    first_seen: now,
                    last_seen: now,
                    resolved_at: None,
                    summary: String::new(),
                    evidence: Evidence::default(),
                    verdict: None,
                    flows: Vec::new(),
                    drilldown: None,
                },
                last_failure: now,
                own_verdict: true,
            });
            let a = &mut entry.alert;
            if a.state != AlertState::Firing {
                a.state = AlertState::Firing;
                a.resolved_at = None;
                a.first_seen = now;
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
            a.last_seen = now;
            a.summary = summary;
            a.evidence = Evidence { drops: vec![evidence], ..Default::default() };
            a.flows = per_flow.keys().filter(|f| !f.is_empty()).cloned().collect();
            a.verdict = Some(super::verdict::drop_verdict(&reason, &interface, location, &self.node));
            entry.last_failure = now;
            seen_now.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::DetectorConfig;
    use super::super::fixtures::*;
    use super::*;

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
        assert!(!a[0].summary.contains("freed in"), "no function named: {}", a[0].summary);
    }

    /// A burst names the kernel function that freed its latest packet, when the monitor could
    /// name it (a reason like NOT_SPECIFIED says nothing else).
    #[test]
    fn a_burst_names_the_function_that_freed_it() {
        let mut d = detector();
        let rec = |count, f: &str| crate::drops::DropRecord {
            kernel_function: Some(f.to_string()),
            ..drop_rec("", "NOT_SPECIFIED", "genev_sys_6081", count)
        };
        d.observe_drops(&[rec(4, "ovs_dp_process_packet+0x1a [openvswitch]")], pod_location, at(1));
        d.observe_drops(&[rec(12, "do_execute_actions+0x2a1 [openvswitch]")], pod_location, at(2));
        let a = d.evaluate::<Flow>(&[], at(2));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert!(
            a[0].summary.contains(
                "with reason NOT_SPECIFIED within 10s, freed in do_execute_actions+0x2a1 [openvswitch];"
            ),
            "{}",
            a[0].summary
        );
    }
}
