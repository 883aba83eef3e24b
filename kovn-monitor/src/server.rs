//! The API's accept loop: a connection limit, a header-read timeout that also closes idle
//! keep-alive connections, optional TLS (rustls, reloaded when the files change), and a
//! bounded graceful shutdown. axum::serve has none of these (no timer: hyper's header-read
//! timeout is off there), so slow or idle clients were held for ever and held up shutdown.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

/// Defaults of `--max-connections` and `--header-timeout`.
pub const MAX_CONNECTIONS: u32 = 256;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the TLS files are checked for changes.
pub const TLS_RELOAD_CHECK: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the API is served (`--max-connections`, `--header-timeout`, `--tls-*`, `--auth`).
#[derive(Clone)]
pub struct ServerOptions {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle keep-alive connection is
    /// closed after it.
    pub header_timeout: Duration,
    /// `--tls-cert-file`/`--tls-private-key-file`, loaded (and followed) at start.
    pub tls: Option<Arc<TlsReloader>>,
    /// `--auth kubernetes`: the token reviewer (None: `--auth none`).
    pub reviewer: Option<Arc<crate::auth::Reviewer>>,
    /// The liveness/readiness state the daemon's loops report to.
    pub probe: Arc<crate::health::Probe>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.reviewer.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {error}")]
    Cert { path: PathBuf, error: String },
    #[error("cannot read TLS private key {path}: {error}")]
    Key { path: PathBuf, error: String },
    #[error("TLS certificate {cert} and key {key} do not make a server configuration: {error}")]
    Config { cert: PathBuf, key: PathBuf, error: String },
}

/// Loads the certificate chain and key into a rustls server configuration.
pub fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: files.cert.clone(), error: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: files.cert.clone(), error: "no PEM certificate in it".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.clone(), error: e.to_string() })?;
    let config_err = |e: rustls::Error| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        error: e.to_string(),
    };
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(config_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn mtimes(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

/// The current TLS configuration; a task replaces it when the files change (a cert-manager
/// renewal, a rotated Secret). A change that does not load keeps the old one (logged).
pub struct TlsReloader {
    current: RwLock<TlsAcceptor>,
}

impl TlsReloader {
    pub fn start(files: TlsFiles, check: Duration) -> Result<Arc<Self>, TlsError> {
        let me = Arc::new(Self { current: RwLock::new(TlsAcceptor::from(load_tls(&files)?)) });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut seen = mtimes(&files);
            loop {
                tokio::time::sleep(check).await;
                let Some(me) = weak.upgrade() else { return };
                let now = mtimes(&files);
                if now == seen {
                    continue;
                }
                seen = now;
                match load_tls(&files) {
                    Ok(c) => {
                        *me.current.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(c);
                        log::info!("TLS: reloaded {}", files.cert.display());
                    }
                    Err(e) => log::warn!("TLS: {e}; keeping the previous certificate"),
                }
            }
        });
        Ok(me)
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn serve_conn<I>(
    io: I,
    app: axum::Router,
    header_timeout: Duration,
    graceful: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    let conn = graceful.watch(conn);
    if let Err(e) = conn.await {
        log::debug!("API connection: {e}");
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; requests in flight then get
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    opts: &ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let header_timeout = opts.header_timeout;
    tokio::pin!(shutdown);
    loop {
        // At the limit, stop accepting: further clients wait in the kernel's queue.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: say so, back off, go on.
                    log::warn!("API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = opts.tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_conn(stream, app, header_timeout, watcher).await,
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_conn(s, app, header_timeout, watcher).await,
                    Ok(Err(e)) => log::debug!("API TLS handshake: {e}"),
                    Err(_) => log::debug!("API TLS handshake: timed out"),
                },
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
