//! Who may read the API (`--auth`), and the token the CLI, `top` and peer monitors send.
//!
//! `--auth kubernetes` follows the convention of kube-rbac-proxy, Prometheus Operator and
//! controller-runtime: every request carries `Authorization: Bearer TOKEN`; the token is
//! checked with a TokenReview (authentication.k8s.io/v1) and the caller authorised with a
//! SubjectAccessReview (authorization.k8s.io/v1) on the request's non-resource URL path with
//! verb `get`, except `/api/v1/trace`, which runs commands on the node and needs verb `create`.
//! No token or a malformed header: `401`; a token the API does not accept: `401`; a caller
//! without the permission: `403`; the API server unreachable: `503` (not cached).
//! `/healthz` and `/readyz` stay open: the kubelet's probes carry no token.
//!
//! Decisions are cached per (token, path, verb): allowed for [`ALLOW_TTL`], refused for
//! [`DENY_TTL`], at most [`CACHE_MAX`] entries (expired ones dropped first, then the oldest).
//!
//! Size: the server side (tokens, TokenReview, the middleware) and the client side of one scheme;
//! 40% of it is tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

/// `--auth`: who may read the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Anyone who reaches the port (labs, or a node whose port no one else reaches).
    #[default]
    None,
    /// Bearer tokens checked by the Kubernetes API (TokenReview + SubjectAccessReview).
    Kubernetes,
}

/// How long an allowed decision is reused.
pub const ALLOW_TTL: Duration = Duration::from_secs(30);
/// How long a refusal (401/403) is reused: short, so a new RoleBinding takes effect soon.
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// At most this many cached decisions.
pub const CACHE_MAX: usize = 1024;
/// The longest token accepted (Kubernetes service account JWTs are ~1 KiB).
const TOKEN_MAX: usize = 16 * 1024;

/// Paths anyone may read: the kubelet's probes carry no token.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The verb a request needs on its path.
pub fn verb_for(path: &str) -> &'static str {
    if path == "/api/v1/trace" { "create" } else { "get" }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        user: String,
    },
    /// 401: no identity.
    Unauthenticated(String),
    /// 403: an identity without the permission.
    Forbidden(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("malformed Authorization header (expected `Bearer TOKEN`)")]
    Malformed,
    #[error("no bearer token (Authorization: Bearer TOKEN)")]
    Missing,
    #[error("cannot ask the Kubernetes API: {0}")]
    Api(String),
    #[error("--auth kubernetes needs the Kubernetes API (in-cluster service account or a kubeconfig): {0}")]
    Config(String),
}

/// (token, path, verb).
type CacheKey = (String, String, &'static str);

/// The reviewer: a Kubernetes client and the decision cache.
pub struct Reviewer {
    client: kube::Client,
    cache: Mutex<HashMap<CacheKey, (Decision, Instant)>>,
}

impl Reviewer {
    /// A reviewer talking to the API of `kubeconfig`, or the inferred one (in-cluster service
    /// account, KUBECONFIG, ~/.kube/config). `--auth kubernetes` without any: an error.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, AuthError> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| AuthError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| AuthError::Config(e.to_string()))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| AuthError::Config(e.to_string()))?;
        Ok(Self::new(client))
    }

    pub fn new(client: kube::Client) -> Self {
        Self { client, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, key: &CacheKey) -> Option<Decision> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|(_, until)| *until > Instant::now()).map(|(d, _)| d.clone())
    }

    fn remember(&self, key: CacheKey, d: Decision) {
        let ttl = if matches!(d, Decision::Allowed { .. }) { ALLOW_TTL } else { DENY_TTL };
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
        }
        if cache.len() >= CACHE_MAX
            && let Some(oldest) = cache.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(key, (d, now + ttl));
    }

    /// Number of cached decisions (for tests and the bound).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The decision for `token` on `path`: cached, or a TokenReview then a SubjectAccessReview.
    pub async fn review(&self, token: &str, path: &str) -> Result<Decision, AuthError> {
        let verb = verb_for(path);
        let key = (token.to_string(), path.to_string(), verb);
        if let Some(d) = self.cached(&key) {
            return Ok(d);
        }
        let d = self.ask(token, path, verb).await?;
        self.remember(key, d.clone());
        Ok(d)
    }

    async fn ask(&self, token: &str, path: &str, verb: &str) -> Result<Decision, AuthError> {
        let pp = kube::api::PostParams::default();
        let tr = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..Default::default()
        };
        let tr = kube::Api::<TokenReview>::all(self.client.clone())
            .create(&pp, &tr)
            .await
            .map_err(|e| AuthError::Api(format!("TokenReview: {e}")))?;
        let status = tr.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "token not accepted".into());
            return Ok(Decision::Unauthenticated(format!("invalid bearer token: {why}")));
        }
        let user = status.user.unwrap_or_default();
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some(verb.to_string()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let sar = kube::Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&pp, &sar)
            .await
            .map_err(|e| AuthError::Api(format!("SubjectAccessReview: {e}")))?;
        let status = sar.status.unwrap_or_default();
        if status.allowed {
            Ok(Decision::Allowed { user: name })
        } else {
            let reason =
                status.reason.filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default();
            Ok(Decision::Forbidden(format!("{name:?} may not {verb} {path}{reason}")))
        }
    }
}

/// The bearer token of an Authorization header value.
pub fn bearer(value: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let v = value.ok_or(AuthError::Missing)?;
    #[expect(
        clippy::map_err_ignore,
        reason = "the only cause is a byte outside visible ASCII: a malformed header, told no more"
    )]
    let s = v.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = s.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > TOKEN_MAX
        || token.contains(char::is_whitespace)
    {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

fn refuse(status: StatusCode, msg: String) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({ "error": msg }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The middleware: lets a request through only with a token allowed on its path.
pub async fn layer(State(reviewer): State<Arc<Reviewer>>, req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if OPEN_PATHS.contains(&path.as_str()) {
        return next.run(req).await;
    }
    let token = match bearer(req.headers().get(header::AUTHORIZATION)) {
        Ok(t) => t.to_string(),
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    match reviewer.review(&token, &path).await {
        Ok(Decision::Allowed { user }) => {
            log::debug!("{user} may {} {path}", verb_for(&path));
            next.run(req).await
        }
        Ok(Decision::Unauthenticated(m)) => refuse(StatusCode::UNAUTHORIZED, m),
        Ok(Decision::Forbidden(m)) => refuse(StatusCode::FORBIDDEN, m),
        Err(e) => {
            log::warn!("{e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// Wraps `app` with the check (no-op for `--auth none`).
pub fn protect(app: axum::Router, reviewer: Option<Arc<Reviewer>>) -> axum::Router {
    match reviewer {
        Some(r) => app.layer(axum::middleware::from_fn_with_state(r, layer)),
        None => app,
    }
}

// ---------------------------------------------------------------------------------------------
// The token callers send.

/// Where the service account's token is mounted in a pod.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

static TOKEN_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// `--token-file`: the token every request to a monitor carries (set once at start).
pub fn set_token_file(path: Option<PathBuf>) {
    let _ = TOKEN_FILE.set(path);
}

fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() || t.contains(char::is_whitespace) {
        return Err(format!("token file {} holds no single token", path.display()));
    }
    Ok(t)
}

/// The kubeconfig's current user's static token, if it has one (exec plugins and client
/// certificates are not bearer tokens: use --token-file then).
fn kubeconfig_token() -> Option<String> {
    let kc = kube::config::Kubeconfig::read().ok()?;
    let ctx = kc.current_context.as_ref()?;
    let user = kc.contexts.iter().find(|c| &c.name == ctx)?.context.as_ref()?.user.clone()?;
    let auth = kc.auth_infos.iter().find(|a| a.name == user)?.auth_info.as_ref()?;
    // The token is a secrecy::SecretString that kube does not re-export; its serde form is
    // the text.
    let json = serde_json::to_value(auth).ok()?;
    if let Some(t) = json.get("token").and_then(|t| t.as_str()) {
        return Some(t.to_string());
    }
    auth.token_file.as_deref().and_then(|p| read_token(Path::new(p)).ok())
}

/// The token to send: `--token-file` (re-read each time: projected tokens rotate), else the
/// service account's, else the kubeconfig's; none when there is none.
pub fn client_token() -> Result<Option<String>, String> {
    if let Some(Some(path)) = TOKEN_FILE.get() {
        return read_token(path).map(Some);
    }
    if Path::new(SERVICE_ACCOUNT_TOKEN).exists() {
        return read_token(Path::new(SERVICE_ACCOUNT_TOKEN)).map(Some);
    }
    Ok(kubeconfig_token())
}

static CA_FILE: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();
static PEER_TLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--ca-file`: the CA certificates (PEM) that monitors' serving certificates are checked
/// against, beside the system's roots. Read once at start: an unreadable file or one without a
/// certificate is an error.
pub fn set_ca_file(path: Option<&Path>) -> Result<(), String> {
    let certs = match path {
        None => Vec::new(),
        Some(p) => read_ca_file(p)?,
    };
    let _ = CA_FILE.set(certs);
    Ok(())
}

/// The certificates of a PEM file given as `--ca-file`.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("--ca-file {}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--ca-file {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// Whether this daemon's peers serve TLS: monitors of one DaemonSet share their settings, so a
/// daemon serving TLS asks its peers over `https`.
pub fn set_peer_tls(on: bool) {
    PEER_TLS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `https` or `http`: the scheme of a peer monitor's URL (see [`set_peer_tls`]).
pub fn peer_scheme() -> &'static str {
    if PEER_TLS.load(std::sync::atomic::Ordering::Relaxed) { "https" } else { "http" }
}

/// An HTTP client that sends the caller's token (see [`client_token`]) with every request.
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap_or_default()
}

/// [`client`]'s builder, for callers that add their own settings.
pub fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = header::HeaderMap::new();
    match client_token() {
        Ok(Some(t)) => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        Ok(None) => {}
        Err(e) => log::warn!("{e}; sending no token"),
    }
    trusting(reqwest::Client::builder().default_headers(headers), CA_FILE.get().map_or(&[], Vec::as_slice))
}

/// `builder` trusting `cas` beside the system's roots.
pub fn trusting(mut builder: reqwest::ClientBuilder, cas: &[reqwest::Certificate]) -> reqwest::ClientBuilder {
    for c in cas {
        builder = builder.add_root_certificate(c.clone());
    }
    builder
}

#[cfg(test)]
mod tests {
    //! `--auth kubernetes` against an in-process Kubernetes API server that speaks the real
    //! protocol (POST of TokenReview / SubjectAccessReview objects, JSON answers as the API
    //! server gives them) with prepared answers: the kube client, the middleware and the
    //! server's accept loop are the daemon's own.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::{get, post};
    use serde_json::{Value, json};

    use super::*;

    const READER: &str = "reader-token";
    const TRACER: &str = "tracer-token";
    const NOBODY: &str = "nobody-token";

    #[derive(Default)]
    struct FakeApi {
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
    }

    /// What an API server answers to a TokenReview, in its JSON form.
    async fn token_review(
        State(api): State<Arc<FakeApi>>,
        axum::Json(req): axum::Json<Value>,
    ) -> axum::Json<Value> {
        api.token_reviews.fetch_add(1, Ordering::SeqCst);
        assert_eq!(req["apiVersion"], "authentication.k8s.io/v1", "{req}");
        assert_eq!(req["kind"], "TokenReview", "{req}");
        let token = req["spec"]["token"].as_str().unwrap_or_default();
        let user = match token {
            READER => Some("system:serviceaccount:monitoring:prometheus-k8s"),
            TRACER => Some("jane@example.com"),
            NOBODY => Some("system:serviceaccount:default:default"),
            _ => None,
        };
        axum::Json(match user {
            Some(u) => json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": {"token": token},
                "status": {"authenticated": true,
                           "user": {"username": u, "uid": "5e7b1c6a-4d0e-4f51-9d8e-0c2f0e6b7a11",
                                    "groups": ["system:serviceaccounts", "system:authenticated"]},
                           "audiences": ["https://kubernetes.default.svc.cluster.local"]}
            }),
            None => json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": {"token": token},
                "status": {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
            }),
        })
    }

    /// What an API server answers to a SubjectAccessReview on a non-resource URL (RBAC).
    async fn access_review(
        State(api): State<Arc<FakeApi>>,
        axum::Json(req): axum::Json<Value>,
    ) -> axum::Json<Value> {
        api.access_reviews.fetch_add(1, Ordering::SeqCst);
        assert_eq!(req["kind"], "SubjectAccessReview", "{req}");
        let spec = &req["spec"];
        let user = spec["user"].as_str().unwrap_or_default();
        let (path, verb) = (
            spec["nonResourceAttributes"]["path"].as_str().unwrap_or_default(),
            spec["nonResourceAttributes"]["verb"].as_str().unwrap_or_default(),
        );
        assert!(spec["groups"].as_array().is_some_and(|g| !g.is_empty()), "groups passed on: {req}");
        let allowed = match user {
            "system:serviceaccount:monitoring:prometheus-k8s" => verb == "get",
            "jane@example.com" => true,
            _ => false,
        };
        let mut status = json!({"allowed": allowed});
        if allowed {
            status["reason"] = json!("RBAC: allowed by ClusterRoleBinding \"kovn-monitor-reader\"");
        } else {
            status["reason"] = json!("");
        }
        axum::Json(json!({
            "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"nonResourceAttributes": {"path": path, "verb": verb}, "user": user,
                     "groups": spec["groups"], "uid": spec["uid"]},
            "status": status
        }))
    }

    async fn serve_api(api: Arc<FakeApi>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(access_review))
            .with_state(api);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A monitor with `--auth kubernetes` against the API at `api`.
    async fn serve_monitor(api: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Reviewer>) {
        let client = kube::Client::try_from(kube::Config::new(format!("http://{api}").parse().expect("url")))
            .expect("client");
        let reviewer = Arc::new(Reviewer::new(client));
        let app = axum::Router::new()
            .route("/api/v1/flows", get(|| async { "flows" }))
            .route("/api/v1/trace", get(|| async { "trace" }))
            .route("/metrics", get(|| async { "metrics" }));
        let app = protect(app, Some(reviewer.clone())).merge(crate::health::router(
            crate::health::Probe::new(Duration::from_secs(1)),
            Default::default(),
        ));
        let opts = crate::server::ServerOptions {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            tls: None,
            reviewer: Some(reviewer.clone()),
            probe: crate::health::Probe::new(Duration::from_secs(1)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { crate::server::serve(listener, app, &opts, std::future::pending()).await });
        (addr, reviewer)
    }

    async fn call(
        addr: std::net::SocketAddr,
        path: &str,
        auth: Option<&str>,
    ) -> (u16, String, Option<String>) {
        let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.expect("request");
        let www = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(String::from);
        (r.status().as_u16(), r.text().await.expect("body"), www)
    }

    #[tokio::test]
    async fn tokens_are_reviewed_and_paths_authorised() {
        let api = Arc::new(FakeApi::default());
        let (addr, reviewer) = serve_monitor(serve_api(api.clone()).await).await;

        let (code, body, www) = call(addr, "/api/v1/flows", None).await;
        assert_eq!((code, www.as_deref()), (401, Some("Bearer")), "{body}");
        assert!(body.contains("no bearer token"), "{body}");
        for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer"] {
            let (code, body, _) = call(addr, "/api/v1/flows", Some(bad)).await;
            assert_eq!(code, 401, "{bad}: {body}");
            assert!(body.contains("malformed Authorization header"), "{bad}: {body}");
        }
        assert_eq!(api.token_reviews.load(Ordering::SeqCst), 0, "malformed headers never reach the API");

        let (code, body, _) = call(addr, "/api/v1/flows", Some("Bearer forged")).await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("invalid bearer token"), "{body}");

        let (code, body, _) = call(addr, "/api/v1/flows", Some(&format!("Bearer {READER}"))).await;
        assert_eq!((code, body.as_str()), (200, "flows"));
        let (code, body, _) = call(addr, "/metrics", Some(&format!("Bearer {READER}"))).await;
        assert_eq!((code, body.as_str()), (200, "metrics"));
        // The reader may `get` but the trace needs `create`.
        let (code, body, _) = call(addr, "/api/v1/trace", Some(&format!("Bearer {READER}"))).await;
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("may not create /api/v1/trace"), "{body}");
        let (code, body, _) = call(addr, "/api/v1/trace", Some(&format!("Bearer {TRACER}"))).await;
        assert_eq!((code, body.as_str()), (200, "trace"));
        let (code, body, _) = call(addr, "/api/v1/flows", Some(&format!("Bearer {NOBODY}"))).await;
        assert_eq!(code, 403, "an identity without the permission: {body}");
        // The probes stay open.
        let (code, body, _) = call(addr, "/healthz", None).await;
        assert_eq!(code, 200, "{body}");

        // Decisions are cached: the same token and path again asks the API nothing.
        let (tr, sar) = (api.token_reviews.load(Ordering::SeqCst), api.access_reviews.load(Ordering::SeqCst));
        for _ in 0..3 {
            assert_eq!(call(addr, "/api/v1/flows", Some(&format!("Bearer {READER}"))).await.0, 200);
            assert_eq!(call(addr, "/api/v1/flows", Some(&format!("Bearer {NOBODY}"))).await.0, 403);
        }
        assert_eq!(api.token_reviews.load(Ordering::SeqCst), tr);
        assert_eq!(api.access_reviews.load(Ordering::SeqCst), sar);
        assert!(reviewer.cache_len() <= CACHE_MAX);
    }

    #[tokio::test]
    async fn an_unreachable_api_is_503_and_not_cached() {
        // A port nothing listens on.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let (addr, reviewer) = serve_monitor(dead).await;
        let (code, body, _) = call(addr, "/api/v1/flows", Some(&format!("Bearer {READER}"))).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("cannot ask the Kubernetes API"), "{body}");
        assert_eq!(reviewer.cache_len(), 0);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let api = Arc::new(FakeApi::default());
        let (_, reviewer) = serve_monitor(serve_api(api).await).await;
        for i in 0..CACHE_MAX + 10 {
            reviewer.remember(
                (format!("t{i}"), "/api/v1/flows".into(), "get"),
                Decision::Forbidden(String::new()),
            );
        }
        assert_eq!(reviewer.cache_len(), CACHE_MAX);
    }

    #[test]
    fn bearer_headers() {
        let h = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(bearer(Some(&h("Bearer abc"))).expect("ok"), "abc");
        assert_eq!(bearer(Some(&h("bearer abc"))).expect("ok"), "abc");
        assert!(matches!(bearer(None), Err(AuthError::Missing)));
        for bad in ["Bearer ", "Token abc", "Bearerabc", "Bearer a\tb"] {
            assert!(matches!(bearer(Some(&h(bad))), Err(AuthError::Malformed)), "{bad}");
        }
        let long = format!("Bearer {}", "a".repeat(TOKEN_MAX + 1));
        assert!(matches!(bearer(Some(&h(&long))), Err(AuthError::Malformed)));
    }

    #[test]
    fn trace_needs_its_own_verb() {
        assert_eq!(verb_for("/api/v1/trace"), "create");
        assert_eq!(verb_for("/api/v1/flows"), "get");
        assert_eq!(verb_for("/metrics"), "get");
    }

    /// `--token-file`: the client sends the file's token; an unreadable file is one line.
    #[tokio::test]
    async fn clients_send_the_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{READER}\n")).expect("write");
        set_token_file(Some(path.clone()));
        let seen = Arc::new(Mutex::new(None::<String>));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/x",
            get(move |h: axum::http::HeaderMap| async move {
                *s.lock().expect("lock") =
                    h.get("authorization").and_then(|v| v.to_str().ok()).map(String::from);
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        client().get(format!("http://{addr}/x")).send().await.expect("send");
        assert_eq!(seen.lock().expect("lock").as_deref(), Some(format!("Bearer {READER}").as_str()));
        std::fs::remove_file(&path).expect("rm");
        let e = client_token().expect_err("gone");
        assert!(e.starts_with("cannot read token file") && !e.contains('\n'), "{e}");
    }
}
