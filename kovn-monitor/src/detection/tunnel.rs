//! The tunnel: cross-node pairs failing towards one node while its other pairs work, and
//! either same-node traffic works or the requests were seen leaving this node (on the
//! underlay NIC or the tunnel device). Counted per remote node; one finding per node pair.
//! This node's firewall dropping the encapsulated packets to or from a node is the tunnel's
//! problem at once, for any number of pairs, with the cause as the verdict
//! (`tunnel_blocked_by_firewall`). The underlay NIC's own failure is `underlay`'s.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::{
    DropEvidence, Evidence, PairRound, PathDetector, Severity, Verdict, destination, through_tunnel, who,
};
use crate::flows::Flow;
use crate::model::{AlertKind, Direction, FlowDirection, Hop, IfaceKind, Scenario};

pub(super) struct Tunnel;

/// Per remote node: the failing destinations behind it and the answered flows towards it
/// during the failures.
#[derive(Default)]
pub(super) struct ByRemote(HashMap<String, (BTreeSet<String>, usize)>);

impl ByRemote {
    /// Counts this round's flows through the tunnel. `path` locates a flow (the backend's
    /// flow for a service connection, else itself).
    pub(super) fn count<'r, 'a: 'r>(
        rounds: impl Iterator<Item = &'r PairRound<'a>> + Clone,
        path: impl Fn(&'a Flow) -> &'a Flow,
    ) -> Self {
        // Only answers during the failures count against the tunnel: flows answered before it
        // broke are history.
        let failing_since = rounds.clone().flat_map(|r| r.failing.iter()).map(|f| f.first_seen).min();
        // Counted per destination, not per flow or pair: one client retrying (a new flow per
        // attempt), or several clients of one broken pod, are one destination, and one failing
        // destination is that destination's problem, not the tunnel's. A service whose backends
        // all run on the remote node stands for those backends.
        let mut by_remote: HashMap<String, (BTreeSet<String>, usize)> = HashMap::new();
        for round in rounds {
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
        Self(by_remote)
    }

    /// At least two destinations behind `node` fail and none answers.
    fn broken(&self, node: &str) -> bool {
        self.0.get(node).is_some_and(|(fail, ok)| fail.len() >= 2 && *ok == 0)
    }
}

/// Any same-node pod pair answered this round (the node's own datapath works).
pub(super) fn same_node_works<'r, 'a: 'r>(mut rounds: impl Iterator<Item = &'r PairRound<'a>>) -> bool {
    rounds.any(|r| r.answered.iter().any(|f| f.scenario == Scenario::PodToPodSameNode))
}

/// The request was seen leaving this node towards the other: on the underlay NIC (opened
/// Geneve/VXLAN) or the tunnel device, in the request's direction.
fn left_node(f: &Flow) -> bool {
    f.interfaces.iter().any(|i| {
        matches!(i.kind, IfaceKind::Underlay | IfaceKind::Tunnel)
            && i.direction == Direction::Egress
            && i.flow_direction == FlowDirection::Fwd
    })
}

/// A pair's failures are the tunnel's: all cross it, this node's own datapath is not the
/// suspect (same-node traffic works, or every failing request was seen leaving the node), and
/// the remote node they go to is broken for several destinations.
pub(super) fn is_tunnel<'a>(
    failing: &[&'a Flow],
    path: impl Fn(&'a Flow) -> &'a Flow + Copy,
    same_node_ok: bool,
    by_remote: &ByRemote,
) -> bool {
    failing.iter().all(|f| through_tunnel(path(f)))
        && (same_node_ok || failing.iter().all(|f| left_node(path(f))))
        && failing
            .iter()
            .filter_map(|f| path(f).tunnel.as_ref()?.remote_node.clone())
            .any(|n| by_remote.broken(&n))
}

/// A pair's failures are the node's firewall dropping the tunnel to their node: they all cross
/// the tunnel, and netfilter dropped encapsulated packets to or from one of their remote
/// tunnel endpoints within the drop window. The endpoint and the drops.
pub(super) fn firewalled<'a, 'f>(
    failing: &[&'a Flow],
    path: impl Fn(&'a Flow) -> &'a Flow,
    firewall: &'f HashMap<IpAddr, DropEvidence>,
) -> Option<(IpAddr, &'f DropEvidence)> {
    if failing.is_empty() || !failing.iter().all(|f| through_tunnel(path(f))) {
        return None;
    }
    failing.iter().find_map(|f| {
        let ip = path(f).tunnel.as_ref()?.remote_ip?;
        firewall.get(&ip).map(|d| (ip, d))
    })
}

/// The verdict of a tunnel finding whose cause is this node's firewall.
pub(super) fn firewall_verdict(node: &str, remote: &str, ip: IpAddr, d: &DropEvidence) -> Verdict {
    Verdict {
        hop: Hop::TunnelBlockedByFirewall,
        summary: format!(
            "the firewall on {node} drops the tunnel's packets to or from {remote} ({ip}): {} encapsulated packet(s) (UDP 6081 Geneve / 4789 VXLAN) dropped by netfilter on {} ({}) within the drop window; allow the tunnel's UDP port between the nodes",
            d.count, d.interface, d.location
        ),
        next_commands: vec![
            "nft list ruleset".to_string(),
            "iptables-save".to_string(),
            format!("tcpdump -nni {} udp and host {ip}", d.interface),
        ],
    }
}

impl PathDetector for Tunnel {
    const KIND: AlertKind = AlertKind::Tunnel;
    const SEVERITY: Severity = Severity::Critical;

    fn summary(src: &str, dst: &str, failing: &[&Flow], _evidence: &Evidence, _protocols: &[&str]) -> String {
        let mut p: Vec<String> = failing
            .iter()
            .map(|f| format!("{}>{}", who(f.src.as_ref(), f.src_ip), who(f.dst.as_ref(), f.dst_ip)))
            .collect();
        p.sort();
        p.dedup();
        format!("{src} -> {dst}: cross-node requests of {} pod pair(s) towards {dst} unanswered", p.len())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::*;

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

    /// Without same-node traffic to vouch for this node's datapath, requests seen leaving it
    /// on the underlay still make the tunnel the suspect; requests never seen leaving do not.
    #[test]
    fn requests_seen_leaving_stand_in_for_same_node_traffic() {
        let mut d = detector();
        let a = d.evaluate(&[cross("a", (2, 0, 0), "db-2"), cross("b", (2, 0, 0), "cache-2")], at(5));
        assert_eq!(a.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(), vec!["tunnel"], "{a:#?}");
        assert!(!d.own_verdict(&a[0].id), "the daemon judges it, asking the peer");
        let mut d = detector();
        let stuck = |id, dst| {
            let mut f = cross(id, (2, 0, 0), dst);
            f.interfaces.retain(|i| i.kind == "pod");
            f
        };
        let a = d.evaluate(&[stuck("a", "db-2"), stuck("b", "cache-2")], at(5));
        assert!(a.iter().all(|a| a.kind == "request_without_reply") && a.len() == 2, "{a:#?}");
    }

    /// This node's firewall dropping the encapsulated packets to the remote node: one tunnel
    /// finding with that cause, for a single pair too and without same-node traffic; the
    /// drops are its evidence, not a drops finding.
    #[test]
    fn the_nodes_firewall_on_the_tunnel_is_named() {
        let mut d = detector();
        d.observe_underlay(Vec::new(), vec!["172.31.250.11".parse().unwrap()], at(0));
        let mut outer = drop_rec("", "NETFILTER_DROP", "eth0", 40);
        (outer.protocol, outer.dst_port, outer.src_ip, outer.dst_ip) = (
            Some(Protocol::Udp),
            6081,
            Some("172.31.250.11".parse().unwrap()),
            Some("172.31.250.12".parse().unwrap()),
        );
        d.observe_drops(&[outer.clone()], |_| crate::model::IfaceKind::Underlay, at(5));
        let a = d.evaluate(&[cross("a", (2, 0, 0), "db-2")], at(5));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!((a[0].kind.as_str(), a[0].remote_node.as_deref()), ("tunnel", Some("node2")));
        let v = a[0].verdict.as_ref().expect("its own verdict");
        assert_eq!(v.hop, "tunnel_blocked_by_firewall");
        assert!(
            v.summary.contains("172.31.250.12") && v.summary.contains("40 encapsulated"),
            "{}",
            v.summary
        );
        assert!(d.own_verdict(&a[0].id));
        assert_eq!(a[0].evidence.drops[0].reason, "NETFILTER_DROP");
        // On the other node, whose firewall it is, the same drops raise nothing of their own:
        // the requesting node's monitor names them (it asks this one).
        let mut d2 = Detector::new("node2", DetectorConfig::default());
        d2.observe_underlay(Vec::new(), vec!["172.31.250.12".parse().unwrap()], at(0));
        d2.observe_drops(&[outer.clone()], |_| crate::model::IfaceKind::Underlay, at(5));
        assert!(d2.evaluate::<Flow>(&[], at(5)).is_empty());
        // Not knowing its own addresses, a monitor still reports the burst as drops.
        let mut d3 = Detector::new("node2", DetectorConfig::default());
        d3.observe_drops(&[outer], |_| crate::model::IfaceKind::Underlay, at(5));
        assert_eq!(d3.evaluate::<Flow>(&[], at(5))[0].kind, "drops");
    }
}
