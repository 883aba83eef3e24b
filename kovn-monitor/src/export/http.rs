//! `GET /metrics`: OpenMetrics when the scraper asks for it, else the Prometheus text format.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{CONTENT_TYPE, Metrics};

/// The Prometheus text format (0.0.4), for scrapers that do not ask for OpenMetrics (curl,
/// `promtool check metrics`, older Prometheus). It differs only in naming counter and info
/// families with their sample suffix and in having no `# UNIT` and `# EOF` lines: only those are
/// translated; names, labels, escaping, buckets and values go as they are.
pub fn to_prometheus_text(om: &str) -> String {
    let lines: Vec<&str> = om.lines().collect();
    let mut renames: HashMap<&str, (String, &str)> = HashMap::new();
    for l in &lines {
        if let Some((name, kind)) = l.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            match kind {
                "counter" => renames.insert(name, (format!("{name}_total"), "counter")),
                "info" => renames.insert(name, (format!("{name}_info"), "gauge")),
                _ => None,
            };
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in lines {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            let (new, kind) = renames.get(name)?;
            let tail = if *p == "# TYPE " { *kind } else { tail };
            Some(format!("{p}{new} {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// The content type of [`to_prometheus_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: encoded per scrape from the live families (no copy of the snapshot).
/// OpenMetrics when the scraper asks for it (Prometheus does), the Prometheus text format
/// otherwise (curl, promtool, older scrapers), as the Go client's promhttp negotiates.
async fn metrics(State(m): State<Arc<Metrics>>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match m.encode() {
        Ok(text) if openmetrics => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], to_prometheus_text(&text))
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/metrics` has its own state (the exporter's registry), so it is a router of its own.
pub fn metrics_router(m: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(m)
}
