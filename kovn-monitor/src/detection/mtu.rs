//! The MTU black hole of the seeds: large requests of a pair unanswered while smaller ones are
//! answered (big packets die in the overlay, small ones pass), or the kernel saw packets too
//! big for the path directly.

use super::unanswered::avg_request;
use super::{DetectorConfig, Evidence, PathDetector, Severity};
use crate::flows::Flow;
use crate::model::AlertKind;

pub(super) struct Mtu;

/// The largest failing request and the path MTU, when the pair's failures are an MTU black hole.
pub(super) fn black_hole(
    cfg: &DetectorConfig,
    failing: &[&Flow],
    answered: &[&Flow],
) -> Option<(u64, Option<u32>)> {
    // The kernel saw it directly: packets too big for the path, or an ICMP "too big".
    if let Some(m) = failing.iter().filter_map(|f| f.mtu.as_ref()).max_by_key(|m| m.oversized_max_bytes) {
        return Some((u64::from(m.oversized_max_bytes), m.reported_mtu.or(cfg.pod_mtu)));
    }
    let biggest_failing = failing.iter().map(|f| avg_request(f)).max()?;
    let biggest_answered = answered.iter().map(|f| avg_request(f)).max()?;
    let threshold = cfg.pod_mtu.map_or(1200, |m| u64::from(m) * 3 / 4);
    (biggest_failing >= threshold && biggest_failing > biggest_answered * 2)
        .then_some((biggest_failing, cfg.pod_mtu))
}

impl PathDetector for Mtu {
    const KIND: AlertKind = AlertKind::Mtu;
    const SEVERITY: Severity = Severity::Critical;

    fn summary(
        src: &str,
        dst: &str,
        _failing: &[&Flow],
        _evidence: &Evidence,
        _protocols: &[&str],
    ) -> String {
        format!("{src} -> {dst}: large packets get no reply while small ones do (MTU black hole)")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;

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
}
