//! The daemon's HTTP API (axum): `/api/v1/flows`, `/api/v1/pods`, `/api/v1/drops` and `/metrics`
//! (`/api/v1/trace` is the drill-down's router, `/healthz` and `/readyz` the health module's,
//! merged in by `serve`, which also puts the `--auth` check in front of all but the probes).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::flows::Flow;
use crate::inventory::PodInfo;
use crate::model::{AlertKind, AlertState, FlowState, Protocol, Scenario};

pub use crate::model::snapshot::{AttachedInterface, Health, ProgramInfo, Snapshot};

/// The newest snapshot as the handlers read it (see `model::Published`).
pub type Shared = crate::model::Published;

/// Query filters of `GET /api/v1/flows`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub state: Option<String>,
    pub protocol: Option<String>,
    /// Matches either endpoint's IP.
    pub ip: Option<std::net::IpAddr>,
    /// Matches either endpoint's namespace.
    pub namespace: Option<String>,
    /// Matches either endpoint's pod name (with `namespace`, in that namespace).
    pub pod: Option<String>,
    /// One scenario, or several separated by commas.
    pub scenario: Option<String>,
    pub limit: Option<usize>,
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(ApiError { error: msg })).into_response()
}

/// A comma-separated list of names, each parsed (the first unknown one is the error).
fn parse_list<T: std::str::FromStr>(list: &str) -> Result<Vec<T>, &str> {
    list.split(',').map(|s| s.parse().map_err(|_unknown_name| s)).collect()
}

/// `FlowQuery`, checked: the names parsed into the model's enums.
#[derive(Debug, Default)]
pub struct FlowFilter {
    pub state: Option<FlowState>,
    pub protocol: Option<Protocol>,
    pub ip: Option<std::net::IpAddr>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub scenarios: Option<Vec<Scenario>>,
    pub limit: Option<usize>,
}

impl FlowQuery {
    /// The filter, or why the query is refused (naming the valid values).
    pub fn filter(self) -> Result<FlowFilter, String> {
        let state =
            match &self.state {
                Some(s) => Some(s.parse().map_err(|_unknown_name| {
                    format!("unknown state {s:?} (one of {})", FlowState::names())
                })?),
                None => None,
            };
        let protocol = match &self.protocol {
            Some(p) => Some(
                p.parse()
                    .map_err(|_unknown_name| format!("unknown protocol {p:?} ({})", Protocol::names()))?,
            ),
            None => None,
        };
        let scenarios = match &self.scenario {
            Some(list) => Some(
                parse_list(list)
                    .map_err(|sc| format!("unknown scenario {sc:?} (one of {})", Scenario::names()))?,
            ),
            None => None,
        };
        Ok(FlowFilter {
            state,
            protocol,
            ip: self.ip,
            namespace: self.namespace,
            pod: self.pod,
            scenarios,
            limit: self.limit,
        })
    }
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        self.state.is_none_or(|s| f.state == s)
            && self.protocol.is_none_or(|p| f.protocol == p)
            && self.ip.is_none_or(|ip| f.src_ip == ip || f.dst_ip == ip)
            && self.scenarios.as_ref().is_none_or(|list| list.contains(&f.scenario))
            && either_end(&self.namespace, &self.pod, &f.src, &f.dst)
    }
}

/// The namespace/pod filters: either end matches both (a pod filter alone: any namespace).
fn either_end(
    namespace: &Option<String>,
    pod: &Option<String>,
    src: &Option<crate::inventory::Endpoint>,
    dst: &Option<crate::inventory::Endpoint>,
) -> bool {
    [src, dst].into_iter().any(|e| {
        let e = e.as_ref();
        namespace.as_ref().is_none_or(|ns| e.and_then(|e| e.namespace.as_ref()) == Some(ns))
            && pod.as_ref().is_none_or(|p| e.and_then(|e| e.pod.as_ref()) == Some(p))
    })
}

/// The body of `GET /api/v1/flows`: borrowed from the snapshot when served
/// (`FlowsResponse<&str, &Flow>`), owned when a client reads it (the defaults).
#[derive(Debug, Serialize, Deserialize)]
pub struct FlowsResponse<S = String, F = Flow> {
    pub node: S,
    pub time: S,
    pub count: usize,
    pub flows: Vec<F>,
}

async fn flows(
    State(shared): State<Shared>,
    query: Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let q = match q.filter() {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let snap = shared.current();
    let flows: Vec<&Flow> = snap
        .flows
        .iter()
        .map(AsRef::as_ref)
        .filter(|f| q.matches(f))
        .take(q.limit.unwrap_or(usize::MAX))
        .collect();
    Json(FlowsResponse::<&str, &Flow> {
        node: &snap.node,
        time: &crate::model::rfc3339(snap.time),
        count: flows.len(),
        flows,
    })
    .into_response()
}

/// Query filters of `GET /api/v1/alerts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// `firing|resolved`
    pub state: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub scenario: Option<String>,
}

/// `AlertQuery`, checked.
#[derive(Debug, Default)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub kind: Option<AlertKind>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub scenario: Option<Scenario>,
}

impl AlertQuery {
    /// The filter, or why the query is refused (naming the valid values).
    pub fn filter(self) -> Result<AlertFilter, String> {
        let state = match &self.state {
            Some(s) => Some(
                s.parse()
                    .map_err(|_unknown_name| format!("unknown state {s:?} ({})", AlertState::names()))?,
            ),
            None => None,
        };
        let kind = match &self.kind {
            Some(k) => Some(
                k.parse()
                    .map_err(|_unknown_name| format!("unknown kind {k:?} (one of {})", AlertKind::names()))?,
            ),
            None => None,
        };
        let scenario = match &self.scenario {
            Some(sc) => Some(sc.parse().map_err(|_unknown_name| {
                format!("unknown scenario {sc:?} (one of {})", Scenario::names())
            })?),
            None => None,
        };
        Ok(AlertFilter { state, kind, namespace: self.namespace, pod: self.pod, scenario })
    }
}

impl AlertFilter {
    pub fn matches(&self, a: &crate::detection::Alert) -> bool {
        self.state.is_none_or(|s| a.state == s)
            && self.kind.is_none_or(|k| a.kind == k)
            && self.scenario.is_none_or(|s| a.scenario == s)
            && either_end(&self.namespace, &self.pod, &a.src, &a.dst)
    }
}

/// The body of `GET /api/v1/alerts` (borrowed when served, owned when read).
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertsResponse<S = String, A = crate::detection::Alert> {
    pub node: S,
    pub time: S,
    pub count: usize,
    pub alerts: Vec<A>,
}

async fn alerts(
    State(shared): State<Shared>,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(e.body_text()),
    };
    let q = match q.filter() {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let snap = shared.current();
    let alerts: Vec<_> = snap.alerts.iter().filter(|a| q.matches(a)).collect();
    Json(AlertsResponse::<&str, &crate::detection::Alert> {
        node: &snap.node,
        time: &crate::model::rfc3339(snap.time),
        count: alerts.len(),
        alerts,
    })
    .into_response()
}

#[derive(Serialize)]
struct PodsResponse<'a> {
    node: &'a str,
    count: usize,
    pods: &'a [PodInfo],
}

async fn pods(State(shared): State<Shared>) -> Response {
    let snap = shared.current();
    Json(PodsResponse { node: &snap.node, count: snap.pods.len(), pods: &snap.pods }).into_response()
}

/// The body of `GET /api/v1/drops` (borrowed when served, owned when read).
#[derive(Debug, Serialize, Deserialize)]
pub struct DropsResponse<S = String, D = crate::drops::DropRecord> {
    pub node: S,
    pub time: S,
    pub count: usize,
    pub drops: Vec<D>,
}

/// `GET /api/v1/drops`: drops with the kernel's reason, by flow, reason and interface.
async fn drops(State(shared): State<Shared>) -> Response {
    let snap = shared.current();
    Json(DropsResponse::<&str, &crate::drops::DropRecord> {
        node: &snap.node,
        time: &crate::model::rfc3339(snap.time),
        count: snap.drops.len(),
        drops: snap.drops.iter().collect(),
    })
    .into_response()
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/pods", get(pods))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/drops", get(drops))
        .with_state(shared)
}

/// `/metrics` is the exporter's (`export::http`); re-exported at its old path.
pub use crate::export::metrics_router;

/// Serves until `shutdown` resolves (limits, TLS and auth from `opts`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    metrics: Arc<crate::export::Metrics>,
    extra: Router,
    opts: crate::server::ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = crate::auth::protect(
        router(shared.clone()).merge(metrics_router(metrics)).merge(extra),
        opts.reviewer.clone(),
    )
    .merge(crate::health::router(opts.probe.clone(), shared));
    crate::server::serve(listener, app, &opts, shutdown).await
}

pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(scenario: &str, ns: &str, pod: &str) -> Flow {
        serde_json::from_value(serde_json::json!({
            "id": "1", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3", "src_port": 1, "dst_port": 80,
            "protocol": "tcp", "ip_proto": 6, "packets_fwd": 1, "bytes_fwd": 60, "packets_rev": 0,
            "bytes_rev": 0, "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "state": "unanswered", "requests": 1,
            "replies": 0, "requests_unanswered": 1, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "SYN",
            "tcp_flags_rev": "", "initiator_guessed": false, "fragment": false, "interfaces": [],
            "scenario": scenario,
            "src": {"kind": "pod", "namespace": "default", "pod": "web-1"},
            "dst": {"kind": "pod", "namespace": ns, "pod": pod}
        }))
        .expect("valid flow")
    }

    /// Parses `a=b&c=d` into the query struct through serde, as axum's Query does.
    fn query(q: &str) -> FlowQuery {
        let map: serde_json::Map<String, serde_json::Value> = q
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).expect("query")
    }

    #[test]
    fn filters_match_either_end_and_scenario_lists() {
        let f = flow("pod_to_pod_cross_node", "shop", "db-2");
        assert!(query("").filter().expect("").matches(&f));
        assert!(query("namespace=shop").filter().expect("namespace=shop").matches(&f));
        assert!(
            query("namespace=default&pod=web-1").filter().expect("namespace=default&pod=web-1").matches(&f)
        );
        assert!(
            !query("namespace=shop&pod=web-1").filter().expect("namespace=shop&pod=web-1").matches(&f),
            "both must hold on the same end"
        );
        assert!(query("pod=db-2").filter().expect("pod=db-2").matches(&f));
        assert!(
            query("scenario=pod_to_service,pod_to_pod_cross_node")
                .filter()
                .expect("scenario=pod_to_service,pod_to_pod_cross_node")
                .matches(&f)
        );
        assert!(!query("scenario=pod_to_service").filter().expect("scenario=pod_to_service").matches(&f));
        assert!(
            query("state=unanswered").filter().expect("state=unanswered").matches(&f)
                && !query("state=answered").filter().expect("state=answered").matches(&f)
        );
    }

    #[test]
    fn bad_filters_are_refused_with_the_valid_values() {
        for (q, want) in [
            ("state=broken", "unknown state"),
            ("protocol=quic", "unknown protocol"),
            ("scenario=pod_to_pod_cross_node,nope", "unknown scenario \"nope\""),
        ] {
            let e = query(q).filter().expect_err(q);
            assert!(e.contains(want), "{q}: {e}");
        }
        assert!(query("protocol=other&state=oneway").filter().is_ok());
    }
}
