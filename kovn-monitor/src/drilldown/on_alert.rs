//! The drill-down run when a finding fires: once per firing episode, one at a time, at most one
//! every `MIN_GAP`, in the background.

use std::sync::Arc;
use std::time::Duration;

use super::tracer::{Tracer, packet_of_alert};
use crate::model::AlertState;

/// A finding's episode: its id and when it (last) started firing. A finding that resolves
/// and fires again keeps its id but is a new episode, with a new drill-down.
type Episode = (String, time::OffsetDateTime);

/// Runs the drill-down once per firing episode of a finding, one at a time and at most one
/// every `MIN_GAP`, in the background; results are kept by episode.
pub struct OnAlert {
    tracer: Arc<Tracer>,
    done: Arc<std::sync::Mutex<std::collections::HashMap<Episode, crate::model::AlertDrillDown>>>,
    pub(super) started: std::collections::HashSet<Episode>,
    last: Option<std::time::Instant>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

const MIN_GAP: Duration = Duration::from_secs(10);

impl OnAlert {
    pub fn new(tracer: Arc<Tracer>) -> Self {
        Self {
            tracer,
            done: Default::default(),
            started: Default::default(),
            last: None,
            running: Default::default(),
        }
    }

    /// Starts at most one new drill-down for a firing finding of `alerts`, attaches the ones
    /// done, and forgets findings that are gone.
    pub fn update(&mut self, alerts: &mut [crate::model::Alert], flows: &[Arc<crate::flows::Flow>]) {
        use std::sync::atomic::Ordering;
        let ready = !self.running.load(Ordering::Acquire) && self.last.is_none_or(|t| t.elapsed() >= MIN_GAP);
        let episode = |a: &crate::model::Alert| (a.id.clone(), a.first_seen);
        if ready
            && let Some(a) =
                alerts.iter().find(|a| a.state == AlertState::Firing && !self.started.contains(&episode(a)))
        {
            self.started.insert(episode(a));
            self.last = Some(std::time::Instant::now());
            self.running.store(true, Ordering::Release);
            // The finding is new in this poll (not yet published): trace from it directly.
            let packet = packet_of_alert(a, flows);
            // A service connection whose backend no hook saw: OVS's conntrack knows it.
            let service = a
                .dst
                .as_ref()
                .filter(|d| d.kind == crate::inventory::EndpointKind::Service && a.backend.is_none())
                .map(|d| d.service.clone());
            let (tracer, done, running, id, key) =
                (self.tracer.clone(), self.done.clone(), self.running.clone(), a.id.clone(), episode(a));
            tokio::spawn(async move {
                let (r, backend) = match packet {
                    Ok((p, flow_id)) => {
                        let backend = match &service {
                            Some(svc) => match tracer.conntrack_backend(&p).await {
                                Ok(b) => b.map(|(ip, port)| crate::model::ServiceBackend {
                                    service: svc.clone(),
                                    ip,
                                    port,
                                    pod: tracer.endpoint_of(ip),
                                    flow: String::new(),
                                }),
                                Err(e) => {
                                    log::info!("drill-down of {id}: conntrack not read: {e}");
                                    None
                                }
                            },
                            None => None,
                        };
                        let r = tracer.trace_packet(p.clone(), None, flow_id).await;
                        (past_the_load_balancer(&tracer, r, &p, backend.as_ref()).await, backend)
                    }
                    Err(e) => (Err(e), None),
                };
                let now = crate::model::rfc3339(time::OffsetDateTime::now_utc());
                let d = match r {
                    Ok(r) => {
                        crate::model::AlertDrillDown { verdict: r.verdict, time: now, error: None, backend }
                    }
                    Err(e) => crate::model::AlertDrillDown {
                        verdict: String::new(),
                        time: now,
                        error: Some(e.to_string()),
                        backend,
                    },
                };
                log::info!("drill-down of {id}: {}", d.error.as_deref().unwrap_or(&d.verdict));
                done.lock().unwrap_or_else(|p| p.into_inner()).insert(key, d);
                running.store(false, Ordering::Release);
            });
        }
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        for a in alerts.iter_mut() {
            a.drilldown = done.get(&episode(a)).cloned();
            name_conntrack_backend(a);
        }
        done.retain(|k, _| alerts.iter().any(|a| &episode(a) == k));
        self.started.retain(|k| alerts.iter().any(|a| &episode(a) == k));
    }
}

/// OVS 3.1's ofproto/trace stops at the load balancer's select group (`hash(...)`,
/// `recirc(...)`: a dp_hash recirculation it does not follow). With the backend conntrack
/// chose, the trace goes on past it: the same packet DNATed to that backend (what the load
/// balancer sends on), through the rest of this node's pipeline and, across the tunnel, the
/// backend node's. Its verdict is appended to the first one.
async fn past_the_load_balancer(
    tracer: &Tracer,
    r: Result<super::TraceReport, super::TraceError>,
    p: &super::Packet,
    backend: Option<&crate::model::ServiceBackend>,
) -> Result<super::TraceReport, super::TraceError> {
    let Some(b) = backend else { return r };
    let mut r = r?;
    if !stops_at_recirculation(&r) {
        return Ok(r);
    }
    let mut dnat = p.clone();
    (dnat.dst, dnat.dport, dnat.dst_mac) = (b.ip, b.port, None);
    let who = backend_name(b);
    match tracer.trace_packet(dnat, None, None).await {
        Ok(after) => {
            r.verdict = format!(
                "{}; past the load balancer, to backend {who} ({}:{}): {}",
                r.verdict, b.ip, b.port, after.verdict
            );
            r.commands.extend(after.commands);
        }
        Err(e) => {
            r.verdict = format!("{}; past the load balancer, to backend {who}: not traced ({e})", r.verdict)
        }
    }
    Ok(r)
}

/// The OVS trace ended at a recirculation it does not follow (a load-balancer group).
fn stops_at_recirculation(r: &super::TraceReport) -> bool {
    matches!(
        r.ofproto_trace.as_ref().map(|t| &t.outcome),
        Some(super::ofproto::Outcome::Other { actions }) if actions.contains("recirc(")
    )
}

fn backend_name(b: &crate::model::ServiceBackend) -> String {
    match &b.pod {
        Some(crate::inventory::Endpoint { namespace: Some(ns), pod: Some(p), .. }) => format!("{ns}/{p}"),
        _ => b.ip.to_string(),
    }
}

/// A service finding whose backend only OVS's conntrack knew: the backend is named in the
/// alert and its verdict (the pairing keeps the detector's own view).
fn name_conntrack_backend(a: &mut crate::model::Alert) {
    let Some(b) = a.drilldown.as_ref().and_then(|d| d.backend.clone()) else { return };
    if a.backend.is_some() {
        return;
    }
    let who = backend_name(&b);
    if let Some(v) = a.verdict.as_mut() {
        let found =
            format!("OVS conntrack shows the load balancer chose backend {who} ({}:{})", b.ip, b.port);
        // The verdict's pointer to conntrack gives way to what conntrack said.
        if v.summary.contains(crate::model::CONNTRACK_BACKEND_HINT) {
            v.summary = v.summary.replacen(crate::model::CONNTRACK_BACKEND_HINT, &found, 1);
        } else {
            v.summary.push_str(&format!("; {found}"));
        }
    }
    a.backend = Some(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conntrack backend is named once, in the alert and at the end of its verdict; a
    /// backend the detector saw is kept.
    #[test]
    fn the_conntrack_backend_is_named_unless_one_is_known() {
        let backend = crate::model::ServiceBackend {
            service: Some("shop/db".into()),
            ip: "10.16.0.6".parse().expect("ip"),
            port: 8080,
            pod: serde_json::from_value(
                serde_json::json!({"kind": "pod", "namespace": "shop", "pod": "db-2", "node": "node2"}),
            )
            .ok(),
            flow: String::new(),
        };
        let mut a: crate::model::Alert = serde_json::from_value(serde_json::json!({
            "id": "a1", "kind": "request_without_reply", "state": "firing", "severity": "critical",
            "node": "node1", "scenario": "pod_to_service", "protocol": "tcp",
            "src_ip": "10.16.0.2", "dst_ip": "10.96.0.11", "first_seen": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-01T00:00:00Z", "summary": "s", "flows": [],
            "evidence": {"requests": 1, "requests_unanswered": 1, "replies": 0, "seen_at": []},
            "verdict": {"hop": "never_left_source", "summary": "never left node1", "next_commands": []}
        }))
        .expect("an alert");
        name_conntrack_backend(&mut a);
        assert!(a.backend.is_none(), "no drill-down yet");
        a.drilldown =
            Some(crate::model::AlertDrillDown { backend: Some(backend.clone()), ..Default::default() });
        name_conntrack_backend(&mut a);
        assert_eq!(a.backend.as_ref().map(|b| b.ip), Some(backend.ip));
        let summary = &a.verdict.as_ref().expect("verdict").summary;
        assert!(
            summary.ends_with(
                "; OVS conntrack shows the load balancer chose backend shop/db-2 (10.16.0.6:8080)"
            ),
            "{summary}"
        );
        name_conntrack_backend(&mut a);
        assert_eq!(a.verdict.as_ref().expect("verdict").summary.matches("conntrack").count(), 1);

        // A verdict that points at conntrack gets conntrack's answer in that place.
        a.backend = None;
        a.verdict.as_mut().expect("verdict").summary =
            format!("never left node1; {}; dropped by OVS", crate::model::CONNTRACK_BACKEND_HINT);
        name_conntrack_backend(&mut a);
        assert_eq!(
            a.verdict.as_ref().expect("verdict").summary,
            "never left node1; OVS conntrack shows the load balancer chose backend shop/db-2 (10.16.0.6:8080); dropped by OVS"
        );
    }
}
