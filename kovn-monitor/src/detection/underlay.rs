//! The node's underlay NIC down: administratively down, no carrier, its address gone or the
//! interface gone (`crate::underlay` follows it through netlink). Nothing then crosses the
//! tunnel to or from any other node, so this is one finding for the node (kind `tunnel`,
//! verdict `underlay_down`) that names the NIC and its state, with every cross-node request of
//! this node that failed meanwhile as its evidence: those pairs raise nothing of their own,
//! whether or not same-node traffic is seen at the moment.
//!
//! An episode runs from the NIC's failure to its recovery. Requests that began before the
//! recovery and are still unanswered stay explained by it afterwards (a UDP or ICMP request
//! lost while the NIC was down is never answered), so the heal raises nothing new.

use std::net::IpAddr;

use time::OffsetDateTime;

use super::{Alert, Detector, Evidence, Severity, Tracked, Verdict, alert_id, through_tunnel};
use crate::flows::Flow;
use crate::model::{AlertKind, AlertState, Hop, Scenario, UnderlayLink, UnderlayState};

/// One failure of the underlay: since when, and when it ended.
#[derive(Clone, Debug)]
pub(super) struct Episode {
    since: OffsetDateTime,
    healed: Option<OffsetDateTime>,
    /// The NICs that failed, as last seen failing.
    broken: Vec<UnderlayLink>,
}

/// The pair key of the underlay finding (one per node).
const UNDERLAY_KEY: &str = "underlay";

impl Detector {
    /// Takes the underlay NICs' state and this node's tunnel addresses before `evaluate`.
    pub fn observe_underlay(&mut self, links: Vec<UnderlayLink>, local: Vec<IpAddr>, now: OffsetDateTime) {
        if !local.is_empty() {
            self.local_ips = local;
        }
        let broken: Vec<UnderlayLink> = links.into_iter().filter(|l| l.state != UnderlayState::Up).collect();
        match (&mut self.underlay, broken.is_empty()) {
            (Some(e), false) if e.healed.is_none() => e.broken = broken,
            (_, false) => {
                let since = broken.iter().map(|l| l.since).min().unwrap_or(now);
                self.underlay = Some(Episode { since, healed: None, broken });
            }
            (Some(e), true) if e.healed.is_none() => e.healed = Some(now),
            (_, true) => {}
        }
    }

    /// Whether a failing request of this node is the underlay's: it crosses the tunnel, and
    /// was still being sent while the NIC was down or began before it came back.
    pub(super) fn explained_by_underlay(&self, f: &Flow, timeout: time::Duration) -> bool {
        let Some(e) = &self.underlay else { return false };
        through_tunnel(f) && f.last_seen >= e.since - timeout && e.healed.is_none_or(|h| f.first_seen <= h)
    }

    /// Raises the node's underlay finding while the NIC has been down for the reply timeout,
    /// with `absorbed` (the failing cross-node requests it explains) as its flows; resolves it
    /// when the NIC is back.
    pub(super) fn evaluate_underlay(
        &mut self,
        absorbed: &[&Flow],
        seen_now: &mut Vec<String>,
        now: OffsetDateTime,
        timeout: time::Duration,
    ) {
        let id = alert_id(AlertKind::Tunnel, &self.node, UNDERLAY_KEY);
        let Some(e) = self.underlay.clone() else { return };
        if let Some(healed) = e.healed {
            if let Some(t) = self.tracked.get_mut(&id).filter(|t| t.alert.state == AlertState::Firing) {
                t.alert.state = AlertState::Resolved;
                t.alert.resolved_at = Some(healed);
            }
            return;
        }
        if now - e.since < timeout {
            return;
        }
        // Findings raised about the same failure before the NIC's state was judged (a tunnel
        // finding towards one node, a pair's) go: this is their cause.
        let node = self.node.clone();
        let absorbed_ids: std::collections::HashSet<&str> = absorbed.iter().map(|f| f.id.as_str()).collect();
        self.tracked.retain(|k, t| {
            *k == id
                || t.alert.state != AlertState::Firing
                || !matches!(t.alert.kind, AlertKind::Tunnel | AlertKind::RequestWithoutReply)
                || !t.alert.flows.iter().any(|f| absorbed_ids.contains(f.as_str()))
        });
        let nics: Vec<String> =
            e.broken.iter().map(|l| format!("{} ({})", l.interface, l.state.as_str())).collect();
        let mut pairs: Vec<(String, String)> =
            absorbed.iter().map(|f| (super::who(f.src.as_ref(), f.src_ip), super::destination(f))).collect();
        pairs.sort();
        pairs.dedup();
        let mut remotes: Vec<String> =
            absorbed.iter().filter_map(|f| f.tunnel.as_ref()?.remote_node.clone()).collect();
        remotes.sort();
        remotes.dedup();
        let summary = format!(
            "{node}: underlay NIC {} since {}: no tunnel to or from any other node; {} cross-node pod pair(s) failing{}",
            nics.join(", "),
            e.since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            pairs.len(),
            if remotes.is_empty() { String::new() } else { format!(" (towards {})", remotes.join(", ")) }
        );
        let verdict = underlay_verdict(&node, &e.broken);
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let src_ip = self.local_ips.first().copied().unwrap_or(unspecified);
        let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
            alert: Alert {
                id: id.clone(),
                kind: AlertKind::Tunnel,
                state: AlertState::Firing,
                severity: Severity::Critical,
                node: node.clone(),
                scenario: Scenario::PodToPodCrossNode,
                protocol: String::new(),
                src_ip,
                dst_ip: unspecified,
                dst_port: None,
                src: None,
                dst: None,
                remote_node: None,
                backend: None,
                first_seen: e.since,
                last_seen: now,
                resolved_at: None,
                summary: String::new(),
                evidence: Evidence::default(),
                verdict: None,
                drilldown: None,
                flows: Vec::new(),
            },
            last_failure: now,
            own_verdict: true,
        });
        let a = &mut entry.alert;
        if a.state != AlertState::Firing {
            a.state = AlertState::Firing;
            a.resolved_at = None;
            a.first_seen = e.since;
        }
        let mut protocols: Vec<&str> = absorbed.iter().map(|f| f.protocol.as_str()).collect();
        protocols.sort();
        protocols.dedup();
        a.protocol = protocols.join(",");
        a.last_seen = now;
        a.summary = summary;
        a.evidence = Evidence {
            requests: absorbed.iter().map(|f| u64::from(f.requests)).sum(),
            requests_unanswered: absorbed.iter().map(|f| u64::from(f.requests_unanswered)).sum(),
            replies: absorbed.iter().map(|f| u64::from(f.replies)).sum(),
            answered_flows: Some(0),
            ..Default::default()
        };
        a.flows = absorbed.iter().map(|f| f.id.clone()).collect();
        a.verdict = Some(verdict);
        entry.last_failure = now;
        seen_now.push(id);
    }
}

/// Where packets stop when the underlay NIC is down, and what to check.
fn underlay_verdict(node: &str, broken: &[UnderlayLink]) -> Verdict {
    let what = |l: &UnderlayLink| match l.state {
        UnderlayState::Down => format!("{} is administratively down", l.interface),
        UnderlayState::NoCarrier => {
            format!("{} has no carrier (cable, switch port, or its peer is down)", l.interface)
        }
        UnderlayState::NoAddress => format!("{} lost its address", l.interface),
        UnderlayState::Missing => format!("{} is gone", l.interface),
        UnderlayState::Up => format!("{} is up", l.interface),
    };
    let mut next_commands = Vec::new();
    for l in broken.iter().filter(|l| l.state != UnderlayState::Missing) {
        next_commands.push(format!("ip -s link show dev {}", l.interface));
        next_commands.push(format!("ip addr show dev {}", l.interface));
        next_commands.push(format!("ethtool {}", l.interface));
    }
    next_commands.push("ip link show".to_string());
    Verdict {
        hop: Hop::UnderlayDown,
        summary: format!(
            "the underlay NIC of {node} is not carrying the tunnel: {}; every cross-node request from or to {node}'s pods is lost there",
            broken.iter().map(what).collect::<Vec<_>>().join("; ")
        ),
        next_commands,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;
    use crate::model::{UnderlayLink, UnderlayState};

    fn nic(state: UnderlayState, since: i64) -> Vec<UnderlayLink> {
        vec![UnderlayLink {
            interface: "eth0".into(),
            state,
            up: state != UnderlayState::Down,
            carrier: !matches!(state, UnderlayState::Down | UnderlayState::NoCarrier),
            addresses: vec!["172.31.250.11".parse().expect("ip")],
            since: at(since),
        }]
    }

    fn firing(a: &[Alert]) -> Vec<&Alert> {
        a.iter().filter(|a| a.state == AlertState::Firing).collect()
    }

    /// The NIC down while two pods talk to two pods on another node, no same-node traffic:
    /// one finding for the node with the cause, the pairs folded in; resolved when the NIC is
    /// back, and the requests lost meanwhile raise nothing afterwards.
    #[test]
    fn a_down_nic_is_one_finding_for_the_node_with_the_pairs_folded_in() {
        let local = vec!["172.31.250.11".parse().expect("ip")];
        let flows = [cross("a", (2, 0, 0), "db-2"), cross("b", (3, 0, 0), "cache-2")];
        for state in
            [UnderlayState::Down, UnderlayState::NoCarrier, UnderlayState::NoAddress, UnderlayState::Missing]
        {
            let mut d = detector();
            d.observe_underlay(nic(UnderlayState::Up, 0), local.clone(), at(0));
            d.observe_underlay(nic(state, 1), Vec::new(), at(2));
            assert!(firing(&d.evaluate(&flows, at(2))).is_empty(), "too early to judge");
            d.observe_underlay(nic(state, 1), Vec::new(), at(5));
            let a = d.evaluate(&flows, at(5));
            let f = firing(&a);
            assert_eq!(f.len(), 1, "{state:?}: one finding for the node: {a:#?}");
            assert_eq!((f[0].kind, f[0].scenario), (AlertKind::Tunnel, Scenario::PodToPodCrossNode));
            let v = f[0].verdict.as_ref().expect("its own verdict");
            assert_eq!(v.hop, Hop::UnderlayDown);
            assert!(v.summary.contains("eth0"), "{}", v.summary);
            assert_eq!(f[0].flows, vec!["a".to_string(), "b".to_string()]);
            assert_eq!(f[0].src_ip.to_string(), "172.31.250.11", "the node's tunnel address, kept");
            assert!(d.own_verdict(&f[0].id), "the daemon keeps the cause");
            assert!(f[0].summary.contains("2 cross-node pod pair(s)"), "{}", f[0].summary);
            let id = f[0].id.clone();
            // Back up: resolved at once; the old unanswered requests are its history.
            d.observe_underlay(nic(UnderlayState::Up, 8), Vec::new(), at(8));
            let a = d.evaluate(&flows, at(8));
            assert!(firing(&a).is_empty(), "{a:#?}");
            assert_eq!(
                a.iter().find(|a| a.id == id).map(|a| (a.state, a.resolved_at)),
                Some((AlertState::Resolved, Some(at(8))))
            );
            assert!(firing(&d.evaluate(&flows, at(40))).is_empty());
            // A request failing after the recovery is a finding of its own again.
            let mut late = cross("c", (2, 0, 0), "db-2");
            (late.first_seen, late.last_seen) = (at(50), at(50));
            let a = d.evaluate(&[late], at(55));
            assert_eq!(
                firing(&a).iter().map(|a| a.kind).collect::<Vec<_>>(),
                vec![AlertKind::RequestWithoutReply]
            );
        }
    }

    /// A pair's finding raised before the NIC's state was judged goes when the underlay
    /// finding comes: one finding, not two, for one cause. Same-node traffic stays judged.
    #[test]
    fn earlier_pair_findings_are_superseded_and_same_node_ones_kept() {
        let mut d = detector();
        d.observe_underlay(nic(UnderlayState::Up, 0), Vec::new(), at(0));
        let a = d.evaluate(&[cross("a", (2, 0, 0), "db-2")], at(4));
        assert_eq!(firing(&a)[0].kind, AlertKind::RequestWithoutReply);
        d.observe_underlay(nic(UnderlayState::Down, 1), Vec::new(), at(5));
        let flows = [cross("a", (2, 0, 0), "db-2"), same("s", (2, 0, 0), "db-1", false)];
        let a = d.evaluate(&flows, at(5));
        let mut kinds: Vec<(AlertKind, Option<Hop>)> =
            firing(&a).iter().map(|a| (a.kind, a.verdict.as_ref().map(|v| v.hop))).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![(AlertKind::RequestWithoutReply, None), (AlertKind::Tunnel, Some(Hop::UnderlayDown))],
            "{a:#?}"
        );
    }
}
