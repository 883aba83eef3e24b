//! Connection refused: a TCP connection the destination answered with a reset and nothing
//! else (nothing listens on the port, or a firewall rejects).

use super::{Evidence, PathDetector, Severity};
use crate::flows::Flow;
use crate::model::{AlertKind, FlowState};

pub(super) struct Refused;

/// A connection reset by the destination before any reply.
pub(super) fn is_refused(f: &Flow) -> bool {
    f.state == FlowState::Reset && f.replies == 0 && f.rst_rev > 0
}

impl PathDetector for Refused {
    const KIND: AlertKind = AlertKind::ConnectionRefused;
    const SEVERITY: Severity = Severity::Warning;

    fn summary(src: &str, dst: &str, failing: &[&Flow], _evidence: &Evidence, _protocols: &[&str]) -> String {
        format!("{src} -> {dst}:{}: connection refused (RST)", failing[0].dst_port)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;

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
}
