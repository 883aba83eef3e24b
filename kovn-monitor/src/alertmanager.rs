//! Pushes the collector's own findings to Alertmanager (`--alertmanager-url`), for users who
//! do not run the Prometheus rules: the Alertmanager v2 API (`POST /api/v2/alerts`), the way
//! Prometheus itself sends: firing alerts are re-sent every `resend` with `endsAt` a few
//! intervals ahead (so they expire by themselves if this monitor dies), and a resolved finding
//! is sent once with `endsAt` = when it resolved.
//!
//! Runs in its own task fed through a watch channel: a slow or absent Alertmanager never
//! delays a poll, and only the newest findings are ever sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::detection::{Alert, AlertKind, AlertState};
use crate::inventory::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "invalid --alertmanager-url {0:?}: an http(s) URL of Alertmanager (e.g. http://alertmanager:9093)"
    )]
    Url(String),
    #[error("Alertmanager at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("Alertmanager at {url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// The Alertmanager API endpoint for alerts under a base URL (a path prefix is kept).
#[expect(
    clippy::map_err_ignore,
    reason = "the error names the flag, the value and the form expected; the parser's own word adds nothing"
)]
pub fn alerts_url(base: &str) -> Result<reqwest::Url, PushError> {
    let url = reqwest::Url::parse(base).map_err(|_| PushError::Url(base.into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some() {
        return Err(PushError::Url(base.into()));
    }
    let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
    let mut u = url;
    u.set_path(&path);
    Ok(u)
}

/// One alert in the v2 API's `postableAlerts` form.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Postable {
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// The alert names, shared with the Prometheus rules in deploy/ so routes match either way.
pub fn alertname(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::RequestWithoutReply => "KovnRequestWithoutReply",
        AlertKind::ConnectionRefused => "KovnConnectionRefused",
        AlertKind::Mtu => "KovnMtuBlackHole",
        AlertKind::Tunnel => "KovnTunnelFailing",
        AlertKind::Drops => "KovnPacketDrops",
        AlertKind::FlowFlood => "KovnFinding",
    }
}

fn end_labels(prefix: &str, e: Option<&Endpoint>, out: &mut std::collections::BTreeMap<String, String>) {
    let Some(e) = e else { return };
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.insert(format!("{prefix}_{k}"), v.clone());
        }
    };
    put("namespace", e.namespace.as_ref());
    put("pod", e.pod.as_ref());
    put("workload", e.workload.as_ref());
    put("service", e.service.as_ref());
    put("node", e.node.as_ref());
}

/// The postable form of a finding. `endpoint` is this monitor's API (generator URL and the
/// drill-down commands); `ends_at` is when Alertmanager should consider it over.
pub fn postable(a: &Alert, endpoint: &str, ends_at: &str) -> Postable {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("alertname".into(), alertname(a.kind).into());
    labels.insert("severity".into(), a.severity.as_str().to_string());
    labels.insert("kind".into(), a.kind.as_str().into());
    labels.insert("scenario".into(), a.scenario.as_str().into());
    labels.insert("node".into(), a.node.clone());
    labels.insert("alert_id".into(), a.id.clone());
    labels.insert("source".into(), "kovn-monitor".into());
    end_labels("src", a.src.as_ref(), &mut labels);
    end_labels("dst", a.dst.as_ref(), &mut labels);
    if a.src.as_ref().and_then(|e| e.pod.as_ref()).is_none() {
        labels.insert("src_ip".into(), a.src_ip.to_string());
    }
    if a.dst.as_ref().and_then(|e| e.pod.as_ref()).is_none() {
        labels.insert("dst_ip".into(), a.dst_ip.to_string());
    }
    if let Some(n) = &a.remote_node {
        labels.insert("remote_node".into(), n.clone());
    }
    labels.retain(|_, v| !v.is_empty());
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert("summary".into(), a.summary.clone());
    if let Some(v) = &a.verdict {
        annotations.insert("description".into(), v.summary.clone());
        annotations.insert("hop".into(), v.hop.as_str().to_string());
        if !v.next_commands.is_empty() {
            annotations.insert("next_commands".into(), v.next_commands.join("\n"));
        }
    }
    // The backend a service connection was load-balanced to (not a label: it is not part of
    // the finding's identity in Alertmanager, the alert id is).
    if let Some(b) = &a.backend {
        let pod = match &b.pod {
            Some(Endpoint { namespace: Some(ns), pod: Some(p), .. }) => {
                format!("{ns}/{p} ")
            }
            _ => String::new(),
        };
        annotations.insert(
            "backend".into(),
            format!(
                "{pod}{} of service {}",
                std::net::SocketAddr::new(b.ip, b.port),
                b.service.as_deref().unwrap_or("?")
            ),
        );
    }
    annotations.insert(
        "drilldown".into(),
        format!("kovn-monitor alerts --endpoint {endpoint} --kind {}   (alert id {})", a.kind, a.id),
    );
    // The OVS/OVN drill-down run when the finding fired (drilldown module): its verdict line.
    if let Some(d) = a.drilldown.as_ref().filter(|d| !d.verdict.is_empty()) {
        annotations.insert(
            "trace".into(),
            format!("{}   (kovn-monitor trace --endpoint {endpoint} --alert {})", d.verdict, a.id),
        );
    }
    Postable {
        labels,
        annotations,
        starts_at: rfc3339(a.first_seen),
        ends_at: ends_at.to_string(),
        generator_url: format!("{}/api/v1/alerts?kind={}", endpoint.trim_end_matches('/'), a.kind),
    }
}

/// What was last sent of each finding, to send only what is due.
#[derive(Default)]
pub struct Sender {
    sent: HashMap<String, (AlertState, Instant)>,
}

impl Sender {
    /// The findings due now: new or changed state, firing ones every `resend`, resolved ones
    /// once. `now` is RFC 3339 for `endsAt` arithmetic done by the caller.
    pub fn due(&mut self, alerts: &[Alert], resend: Duration, at: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        for a in alerts {
            let last = self.sent.get(&a.id);
            let due = match (a.state, last) {
                (_, None) => a.state == AlertState::Firing,
                (AlertState::Firing, Some((state, t))) => {
                    *state != AlertState::Firing || at.duration_since(*t) >= resend
                }
                (AlertState::Resolved, Some((state, _))) => *state == AlertState::Firing,
            };
            if due {
                self.sent.insert(a.id.clone(), (a.state, at));
                out.push(a.clone());
            }
        }
        // Findings that left the API (retention) need nothing more.
        self.sent.retain(|id, _| alerts.iter().any(|a| &a.id == id));
        out
    }
}

use crate::model::rfc3339;

async fn post(client: &reqwest::Client, url: &reqwest::Url, batch: &[Postable]) -> Result<(), PushError> {
    let resp = client
        .post(url.clone())
        .json(batch)
        .send()
        .await
        .map_err(|source| PushError::Http { url: url.to_string(), source })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(PushError::Status { url: url.to_string(), status: status.as_u16(), body });
    }
    Ok(())
}

/// Sends what is due whenever the findings change, and at least every `resend`.
pub async fn run(url: reqwest::Url, endpoint: String, resend: Duration, mut rx: watch::Receiver<Vec<Alert>>) {
    // Alertmanager is not a kovn monitor: no API token or kovn CA (client::ApiClient's), its own
    // client.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut sender = Sender::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(resend.min(Duration::from_secs(5)));
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let alerts = rx.borrow_and_update().clone();
        let due = sender.due(&alerts, resend, Instant::now());
        if due.is_empty() {
            continue;
        }
        // Firing: valid for four resend intervals, like Prometheus; resolved: over since then.
        let ahead = time::Duration::try_from(resend * 4).unwrap_or(time::Duration::minutes(4));
        let now = time::OffsetDateTime::now_utc();
        let batch: Vec<Postable> = due
            .iter()
            .map(|a| {
                let ends = match (a.state, &a.resolved_at) {
                    (AlertState::Resolved, Some(r)) => rfc3339(*r),
                    (AlertState::Resolved, None) => rfc3339(now),
                    _ => rfc3339(now + ahead),
                };
                postable(a, &endpoint, &ends)
            })
            .collect();
        match post(&client, &url, &batch).await {
            Ok(()) => {
                if failing {
                    log::info!("Alertmanager at {url} reachable again");
                }
                failing = false;
                log::debug!("sent {} alert(s) to {url}", batch.len());
            }
            Err(e) => {
                if !failing {
                    log::warn!("{e}; retrying every {}s", resend.as_secs().max(1));
                }
                failing = true;
                // Not sent: forget them so they are due again on the next tick.
                for a in &due {
                    sender.sent.remove(&a.id);
                    if a.state == AlertState::Resolved {
                        sender.sent.insert(a.id.clone(), (AlertState::Firing, Instant::now()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::{Evidence, Verdict};

    fn t(s: &str) -> time::OffsetDateTime {
        crate::model::parse_rfc3339(s).expect("an RFC 3339 time")
    }

    fn alert(id: &str, state: &str) -> Alert {
        let pod = |ns: &str, p: &str, w: &str| Endpoint {
            kind: "pod".into(),
            namespace: Some(ns.into()),
            pod: Some(p.into()),
            workload: Some(w.into()),
            node: Some("node1".into()),
            service: None,
            backends: Vec::new(),
        };
        Alert {
            id: id.into(),
            kind: "request_without_reply".into(),
            state: state.into(),
            severity: "critical".into(),
            node: "node1".into(),
            scenario: "pod_to_pod_cross_node".into(),
            protocol: "tcp".into(),
            src_ip: "10.16.0.2".parse().unwrap(),
            dst_ip: "10.16.0.5".parse().unwrap(),
            dst_port: Some(8080),
            src: Some(pod("default", "web-1", "Deployment/web")),
            dst: Some(Endpoint { node: Some("node2".into()), ..pod("shop", "db-0", "StatefulSet/db") }),
            remote_node: Some("node2".into()),
            backend: None,
            first_seen: t("2026-01-01T00:00:00Z"),
            last_seen: t("2026-01-01T00:00:05Z"),
            resolved_at: (state == "resolved").then(|| t("2026-01-01T00:01:00Z")),
            summary: "default/web-1 -> shop/db-0: 3 request(s) without reply (tcp)".into(),
            evidence: Evidence::default(),
            verdict: Some(Verdict {
                hop: "lost_in_tunnel".into(),
                summary: "the request left node1 in the tunnel to node2 and never arrived".into(),
                next_commands: vec![
                    "ovs-ofctl dump-flows br-int".into(),
                    "tcpdump -ni eth0 udp port 6081".into(),
                ],
            }),
            flows: vec!["f1".into()],
            drilldown: None,
        }
    }

    #[test]
    fn urls_are_validated_and_keep_a_prefix() {
        assert_eq!(alerts_url("http://am:9093").unwrap().as_str(), "http://am:9093/api/v2/alerts");
        assert_eq!(alerts_url("https://x/am/").unwrap().as_str(), "https://x/am/api/v2/alerts");
        for bad in ["am:9093", "ftp://am", "http://", "http://am/?q=1", ""] {
            assert!(alerts_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_postable_names_the_pod_pair_scenario_and_verdict() {
        let p = postable(&alert("a1", "firing"), "http://172.31.250.11:9474", "2026-01-01T00:05:00Z");
        let l = |k: &str| p.labels.get(k).map(String::as_str);
        assert_eq!(l("alertname"), Some("KovnRequestWithoutReply"));
        assert_eq!(l("src_pod"), Some("web-1"));
        assert_eq!(l("dst_namespace"), Some("shop"));
        assert_eq!(l("dst_workload"), Some("StatefulSet/db"));
        assert_eq!(l("scenario"), Some("pod_to_pod_cross_node"));
        assert_eq!(l("remote_node"), Some("node2"));
        assert_eq!(l("alert_id"), Some("a1"));
        assert_eq!(l("src_ip"), None, "pods are named, not addressed");
        assert!(p.annotations["description"].contains("tunnel to node2"));
        assert_eq!(p.annotations["next_commands"].lines().count(), 2);
        assert!(p.annotations["drilldown"].contains("--endpoint http://172.31.250.11:9474"));
        assert!(!p.annotations.contains_key("trace"), "no drill-down ran yet");
        let mut traced = alert("a1", "firing");
        traced.drilldown = Some(crate::model::AlertDrillDown {
            verdict: "dropped by table 0, priority 65535, cookie 0x6b6f766e on node1".into(),
            ..Default::default()
        });
        let p2 = postable(&traced, "http://172.31.250.11:9474", "2026-01-01T00:05:00Z");
        assert!(
            p2.annotations["trace"].starts_with("dropped by table 0, priority 65535"),
            "{:?}",
            p2.annotations
        );
        assert!(p2.annotations["trace"].ends_with("--alert a1)"));
        let json = serde_json::to_value([&p]).unwrap();
        assert_eq!(json[0]["startsAt"], "2026-01-01T00:00:00Z");
        assert_eq!(json[0]["endsAt"], "2026-01-01T00:05:00Z");
        assert_eq!(
            json[0]["generatorURL"],
            "http://172.31.250.11:9474/api/v1/alerts?kind=request_without_reply"
        );
    }

    #[test]
    fn firing_is_resent_resolved_is_sent_once() {
        let mut s = Sender::default();
        let t0 = Instant::now();
        let resend = Duration::from_secs(30);
        assert!(
            s.due(&[alert("a1", "resolved")], resend, t0).is_empty(),
            "never fired here: nothing to resolve"
        );
        assert_eq!(s.due(&[alert("a1", "firing")], resend, t0).len(), 1);
        assert!(s.due(&[alert("a1", "firing")], resend, t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(s.due(&[alert("a1", "firing")], resend, t0 + Duration::from_secs(31)).len(), 1);
        let r = s.due(&[alert("a1", "resolved")], resend, t0 + Duration::from_secs(40));
        assert_eq!(r[0].state, "resolved");
        assert!(s.due(&[alert("a1", "resolved")], resend, t0 + Duration::from_secs(100)).is_empty());
        // Firing again: a new episode is sent at once.
        assert_eq!(s.due(&[alert("a1", "firing")], resend, t0 + Duration::from_secs(101)).len(), 1);
    }
}
