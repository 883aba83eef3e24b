//! `GET /api/v1/trace`: its query (a flow or alert id, or the packet's fields, validated
//! into a [`Packet`]) and the axum handler, with a bounded queue (more get `429`).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::tracer::{TRACE_QUEUE, Tracer};
use super::{Packet, Proto, TraceError, TunnelIn, valid_mac};

/// Query of `GET /api/v1/trace`: a flow or alert id, or the packet's fields. The `tun_*`,
/// `*_mac` and `ct` fields are what one monitor sends another for the remote half.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    pub flow: Option<String>,
    pub alert: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub proto: Option<String>,
    pub sport: Option<String>,
    pub dport: Option<String>,
    pub size: Option<String>,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    /// `new|est`
    pub ct: Option<String>,
    pub tun_src: Option<String>,
    pub tun_dst: Option<String>,
    pub tun_id: Option<String>,
    pub tun_opt: Option<String>,
}

#[expect(
    clippy::map_err_ignore,
    reason = "the message names the field and the value; AddrParseError only says the syntax is invalid"
)]
pub(super) fn parse_ip(what: &str, v: &str) -> Result<IpAddr, TraceError> {
    v.parse().map_err(|_| TraceError::BadInput(format!("{what}: {v:?} is not an IP address")))
}

#[expect(
    clippy::map_err_ignore,
    reason = "the message names the field, the value and the range; T::Err need not be Display"
)]
pub(super) fn num_of<T: std::str::FromStr>(what: &str, v: &str, range: &str) -> Result<T, TraceError> {
    v.parse().map_err(|_| TraceError::BadInput(format!("{what}: {v:?} is not a number ({range})")))
}

impl TraceQuery {
    /// The packet and tunnel fields given explicitly (not `flow`/`alert`).
    pub fn packet(&self) -> Result<(Packet, Option<TunnelIn>), TraceError> {
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| TraceError::BadInput(format!("{what} is required (or flow=ID / alert=ID)")))
        };
        let src = parse_ip("src", &need(&self.src, "src")?)?;
        let dst = parse_ip("dst", &need(&self.dst, "dst")?)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(TraceError::BadInput("src and dst must be of the same IP family".into()));
        }
        let proto = Proto::parse(self.proto.as_deref().unwrap_or("tcp"))?;
        let sport: u16 = match &self.sport {
            Some(s) => num_of("sport", s, "0-65535")?,
            None => 40000,
        };
        let dport: u16 = match (&self.dport, proto) {
            (Some(s), _) => num_of("dport", s, "0-65535")?,
            (None, Proto::Icmp) => 0,
            (None, _) => return Err(TraceError::BadInput("dport is required for tcp and udp".into())),
        };
        let size = match &self.size {
            Some(s) => {
                let n: u32 = num_of("size", s, "28-65535")?;
                if !(28..=65535).contains(&n) {
                    return Err(TraceError::BadInput(format!("size: {n} is outside 28-65535")));
                }
                Some(n)
            }
            None => None,
        };
        for (what, m) in [("src_mac", &self.src_mac), ("dst_mac", &self.dst_mac)] {
            if let Some(m) = m
                && !valid_mac(m)
            {
                return Err(TraceError::BadInput(format!("{what}: {m:?} is not a MAC address")));
            }
        }
        let established = match self.ct.as_deref() {
            None | Some("new") => false,
            Some("est") => true,
            Some(c) => return Err(TraceError::BadInput(format!("ct: {c:?} (new, est)"))),
        };
        let tunnel = match (&self.tun_src, &self.tun_dst, &self.tun_id) {
            (None, None, None) => None,
            (Some(s), Some(d), Some(id)) => {
                let vni = u32::from_str_radix(id.trim_start_matches("0x"), 16)
                    .ok()
                    .filter(|v| *v < 1 << 24)
                    .ok_or_else(|| TraceError::BadInput(format!("tun_id: {id:?} is not a 24-bit hex VNI")))?;
                let option = match &self.tun_opt {
                    Some(o) => {
                        let v = o.trim_start_matches("0x");
                        if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(TraceError::BadInput(format!("tun_opt: {o:?} is not hex")));
                        }
                        Some(format!("0x{v}"))
                    }
                    None => None,
                };
                Some(TunnelIn { src: parse_ip("tun_src", s)?, dst: parse_ip("tun_dst", d)?, vni, option })
            }
            _ => return Err(TraceError::BadInput("tun_src, tun_dst and tun_id go together".into())),
        };
        Ok((
            Packet {
                src,
                dst,
                proto,
                sport: if proto == Proto::Icmp { 0 } else { sport },
                dport,
                src_mac: self.src_mac.clone(),
                dst_mac: self.dst_mac.clone(),
                established,
                size,
            },
            tunnel,
        ))
    }
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

impl TraceError {
    fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::BadInput(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed(_) => StatusCode::BAD_GATEWAY,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

fn error_response(e: TraceError) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (e.status(), axum::Json(ApiError { error: e.to_string() })).into_response()
}

/// `GET /api/v1/trace?flow=ID | alert=ID | src=&dst=[&proto=&sport=&dport=&size=]`.
async fn trace_handler(
    axum::extract::State(t): axum::extract::State<Arc<Tracer>>,
    query: Result<axum::extract::Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !t.cfg.api_enabled {
        return error_response(TraceError::NotFound(
            "the trace API is off on this monitor (start it with --enable-trace-api)".into(),
        ));
    }
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => return error_response(TraceError::BadInput(e.body_text())),
    };
    let Ok(_slot) = t.queue.try_acquire() else {
        // A trace takes up to a few command timeouts: ask to come back after one.
        let after = t.cfg.timeout.as_secs().max(1).to_string();
        let mut r = error_response(TraceError::Busy(format!(
            "{TRACE_QUEUE} traces already running or waiting on this node; retry after {after}s"
        )));
        if let Ok(v) = axum::http::HeaderValue::from_str(&after) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    };
    match t.trace(&q).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => error_response(e),
    }
}

/// The trace route, with the tracer as its state (merged into the API's router).
pub fn router(t: Arc<Tracer>) -> axum::Router {
    axum::Router::new().route("/api/v1/trace", axum::routing::get(trace_handler)).with_state(t)
}
