//! The client's side of the API: one [`ApiClient`] per monitor (the CLI's `flows` and
//! `alerts`, `top`, the daemon's questions to its peers), with the response types the server
//! serialises ([`crate::api`]), and the CLI's text renderings.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

pub use crate::api::{AlertsResponse, DropsResponse, FlowsResponse};
use crate::flows::Flow;
use crate::inventory::Endpoint;

/// One monitor's API: the HTTP client (the token and `--ca-file` trust of
/// [`crate::auth::client`]) and the base URL. Cloning shares the connection pool: `top` keeps
/// one per monitor, so its requests every second reuse a connection instead of adding a new
/// flow to the table it shows.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

/// What one request may take unless the caller says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(10);

impl ApiClient {
    /// A client of the monitor at `endpoint` (`http://HOST:PORT`), checked before anything is
    /// sent.
    pub fn new(endpoint: &str) -> Result<Self> {
        Ok(Self { http: crate::auth::client(), base: endpoint_url(endpoint, "/")? })
    }

    /// The monitor of another node at `ip:port`, in the scheme the cluster's monitors serve
    /// ([`crate::auth::peer_scheme`]).
    pub fn peer(ip: std::net::IpAddr, port: u16) -> Result<Self> {
        let base = format!("{}://{}/", crate::auth::peer_scheme(), std::net::SocketAddr::new(ip, port));
        Ok(Self { http: crate::auth::client(), base: reqwest::Url::parse(&base).context("peer address")? })
    }

    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// GET `path` as JSON within `timeout`; a non-2xx answer is an error with its body.
    pub async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<T> {
        let url = self.url(path)?;
        let (status, body) = self.get_text(path, query, timeout).await?;
        if !status.is_success() {
            bail!("{url}: {status}: {}", body.trim());
        }
        serde_json::from_str(&body).with_context(|| format!("{url}: unexpected response"))
    }

    /// The URL of `path` on this monitor.
    pub fn url(&self, path: &str) -> Result<reqwest::Url> {
        self.base.join(path).with_context(|| format!("invalid path {path:?}"))
    }

    /// GET `path` and hand back the status and body as they are, for callers that read an
    /// error answer themselves (the trace API's `{"error": ...}` and its `429`).
    pub async fn get_text(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(reqwest::StatusCode, String)> {
        let url = self.url(path)?;
        let resp = self.http.get(url).query(query).timeout(timeout).send().await.with_context(|| {
            format!("cannot reach kovn-monitor at {}", self.base.as_str().trim_end_matches('/'))
        })?;
        let status = resp.status();
        let body = resp.text().await.context("reading the response")?;
        Ok((status, body))
    }

    /// `GET /api/v1/trace` with `query`: the status and body (see [`Self::get_text`]).
    pub async fn trace(
        &self,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<(reqwest::StatusCode, String)> {
        self.get_text("/api/v1/trace", query, timeout).await
    }

    pub async fn flows(&self, query: &[(&str, String)], timeout: Duration) -> Result<FlowsResponse> {
        self.get("/api/v1/flows", query, timeout).await
    }

    pub async fn alerts(&self, query: &[(&str, String)]) -> Result<AlertsResponse> {
        self.get("/api/v1/alerts", query, TIMEOUT).await
    }

    pub async fn drops(&self) -> Result<DropsResponse> {
        self.drops_within(TIMEOUT).await
    }

    pub async fn drops_within(&self, timeout: Duration) -> Result<DropsResponse> {
        self.get("/api/v1/drops", &[], timeout).await
    }

    pub async fn health(&self) -> Result<crate::api::Health> {
        self.get("/healthz", &[], TIMEOUT).await
    }
}

/// An API error answer's message: its `error` field, else the body (trimmed).
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Checks an endpoint is an http URL with a host, before anything is sent.
pub fn endpoint_url(endpoint: &str, path: &str) -> Result<reqwest::Url> {
    let base = reqwest::Url::parse(endpoint).with_context(|| format!("invalid endpoint {endpoint:?}"))?;
    if base.scheme() != "http" || base.host().is_none() {
        bail!("invalid endpoint {endpoint:?}: expected http://HOST:PORT");
    }
    base.join(path).with_context(|| format!("invalid endpoint {endpoint:?}"))
}

/// Findings for people: one line each, then for firing ones the verdict and next commands.
pub fn render_alerts(alerts: &[crate::detection::Alert]) -> String {
    let mut out = String::new();
    for a in alerts {
        out.push_str(&format!(
            "{:<8} {:<22} {:<22} {}  [{}, since {}] id={}\n",
            a.state.as_str().to_uppercase(),
            a.kind,
            a.scenario,
            a.summary,
            a.node,
            crate::model::rfc3339(a.first_seen),
            a.id
        ));
        if a.state == crate::model::AlertState::Firing
            && let Some(v) = &a.verdict
        {
            out.push_str(&format!("         where: {} ({})\n", v.summary, v.hop));
            if let Some(d) = a.drilldown.as_ref().filter(|d| !d.verdict.is_empty()) {
                out.push_str(&format!(
                    "         trace: {} (kovn-monitor trace --alert {})\n",
                    d.verdict, a.id
                ));
            }
            for c in &v.next_commands {
                out.push_str(&format!("         next:  {c}\n"));
            }
        }
    }
    out
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b}B") } else { format!("{v:.1}{}", UNITS[u]) }
}

/// `namespace/pod:port` when the pod is known, else `ip:port` (no port for ICMP and others).
fn endpoint(
    ip: std::net::IpAddr,
    port: u16,
    proto: crate::model::Protocol,
    who: Option<&Endpoint>,
) -> String {
    let host = match who {
        Some(Endpoint { namespace: Some(ns), pod: Some(pod), .. }) => format!("{ns}/{pod}"),
        _ if ip.is_ipv6() => format!("[{ip}]"),
        _ => ip.to_string(),
    };
    if proto.is_icmp() || proto == crate::model::Protocol::Other { host } else { format!("{host}:{port}") }
}

/// A plain table of flows, one per line, widest columns sized to content.
pub fn render_table(flows: &[Flow]) -> String {
    let header = [
        "SRC",
        "DST",
        "PROTO",
        "SCENARIO",
        "STATE",
        "PKTS FWD/REV",
        "BYTES FWD/REV",
        "RTT",
        "UNANS",
        "INTERFACES",
    ];
    let rows: Vec<[String; 10]> = flows
        .iter()
        .map(|f| {
            let mut ifaces: Vec<String> = f
                .interfaces
                .iter()
                .map(|i| {
                    format!(
                        "{}/{}",
                        i.name,
                        if i.direction == crate::model::Direction::Ingress { "in" } else { "out" }
                    )
                })
                .collect();
            ifaces.dedup();
            [
                endpoint(f.src_ip, f.src_port, f.protocol, f.src.as_ref()),
                endpoint(f.dst_ip, f.dst_port, f.protocol, f.dst.as_ref()),
                f.protocol.to_string(),
                f.scenario.to_string(),
                f.state.to_string(),
                format!("{}/{}", f.packets_fwd, f.packets_rev),
                format!("{}/{}", human_bytes(f.bytes_fwd), human_bytes(f.bytes_rev)),
                f.rtt_us.map(|r| format!("{:.3}ms", r as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                f.requests_unanswered.to_string(),
                ifaces.join(","),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(endpoint_url("http://127.0.0.1:9474", "/api/v1/flows").is_ok());
        assert!(endpoint_url("127.0.0.1:9474", "/x").is_err());
        assert!(endpoint_url("file:///etc/passwd", "/x").is_err());
        assert!(endpoint_url("http://", "/x").is_err());
    }

    #[test]
    fn table_has_a_row_per_flow() {
        let f: Flow = serde_json::from_value(serde_json::json!({
            "id": "0011223344556677", "src_ip": "10.16.0.2", "dst_ip": "10.16.0.3",
            "src_port": 40000, "dst_port": 8080, "protocol": "tcp", "ip_proto": 6,
            "packets_fwd": 5, "bytes_fwd": 2048, "packets_rev": 4, "bytes_rev": 300,
            "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:01Z",
            "state": "answered", "rtt_us": 250, "requests": 1, "replies": 1,
            "requests_unanswered": 0, "rst_fwd": 0, "rst_rev": 0, "tcp_flags_fwd": "SYN|ACK",
            "tcp_flags_rev": "SYN|ACK", "initiator_guessed": false, "fragment": false,
            "interfaces": [{"name": "abc_h", "ifindex": 3, "direction": "ingress", "kind": "pod",
                            "flow_direction": "fwd", "packets": 5}]
        }))
        .expect("valid flow json");
        let t = render_table(&[f]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("SRC") && lines[0].contains("SCENARIO"), "{t}");
        assert!(lines[1].contains("unknown"), "no inventory, no scenario: {t}");
        assert!(lines[1].contains("10.16.0.2:40000") && lines[1].contains("10.16.0.3:8080"), "{t}");
        assert!(
            lines[1].contains("2.0KiB/300B") && lines[1].contains("0.250ms") && lines[1].contains("abc_h/in"),
            "{t}"
        );
    }
}
