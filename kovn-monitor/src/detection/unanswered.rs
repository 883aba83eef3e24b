//! Requests without reply: a request (TCP SYN, ICMP echo, UDP request) unanswered past the
//! reply timeout, with no packet back at all. The default kind of a failing pair that no more
//! specific detector (MTU, tunnel) explains.

use time::OffsetDateTime;

use super::{Evidence, PairRound, PathDetector, Severity};
use crate::flows::Flow;
use crate::model::AlertKind;

pub(super) struct Unanswered;

/// Requests unanswered for at least `timeout`, with no reply and no packet back.
pub(super) fn is_failing(f: &Flow, now: OffsetDateTime, timeout: time::Duration) -> bool {
    f.requests_unanswered > 0
        && f.replies == 0
        && f.packets_rev == 0
        && Some(f.first_seen).is_some_and(|t| now - t >= timeout)
}

/// Anything came back: the pair's path works (for packets of this size).
pub(super) fn is_answered(f: &Flow) -> bool {
    f.replies > 0 || f.packets_rev > 0
}

/// The mean size of a flow's requests (L3 bytes per forward packet).
pub(super) fn avg_request(f: &Flow) -> u64 {
    f.bytes_fwd.checked_div(f.packets_fwd).unwrap_or(0)
}

/// A failure followed by an answered exchange of the same pair, with packets at least about
/// as large, is history: the path works again for such packets (this also absorbs replies
/// missed while attaching). Smaller answered packets do not count: that is the MTU black hole.
pub(super) fn forget_healed(round: &mut PairRound) {
    let answered: Vec<(OffsetDateTime, u64)> =
        round.answered.iter().filter_map(|f| Some((Some(f.first_seen)?, avg_request(f)))).collect();
    let current = |f: &&Flow| {
        let (Some(last), size) = (Some(f.last_seen), avg_request(f)) else { return true };
        !answered.iter().any(|(start, ok_size)| *start > last && ok_size * 5 >= size * 4)
    };
    round.failing.retain(current);
    round.refused.retain(current);
}

impl PathDetector for Unanswered {
    const KIND: AlertKind = AlertKind::RequestWithoutReply;
    const SEVERITY: Severity = Severity::Critical;

    fn summary(src: &str, dst: &str, _failing: &[&Flow], evidence: &Evidence, protocols: &[&str]) -> String {
        format!(
            "{src} -> {dst}: {} request(s) without reply ({})",
            evidence.requests_unanswered,
            protocols.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::*;

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
    fn one_way_udp_ports_are_not_findings() {
        let mut d =
            Detector::new("node1", DetectorConfig { udp_oneway_ports: vec![514], ..Default::default() });
        let mut f = same("a", (9, 0, 0), "db-1", true);
        f.protocol = "udp".into();
        f.dst_port = 514;
        assert!(d.evaluate(&[f], at(10)).is_empty());
    }
}
