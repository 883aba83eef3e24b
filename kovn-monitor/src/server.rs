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
    shutdown: impl Future<Output = ()> + Send + 'static,
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn opts(
        max_connections: usize,
        header_timeout: Duration,
        tls: Option<Arc<TlsReloader>>,
    ) -> ServerOptions {
        ServerOptions {
            max_connections,
            header_timeout,
            tls,
            reviewer: None,
            probe: crate::health::Probe::new(Duration::from_secs(1)),
        }
    }

    async fn start(
        o: ServerOptions,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>)
    {
        let app = axum::Router::new().route("/x", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(async move {
            serve(listener, app, &o, async move {
                let _ = rx.await;
            })
            .await
        });
        (addr, tx, h)
    }

    /// Reads until the server closes the connection; returns how long that took.
    async fn until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
                Ok(Ok(_)) => continue,
                Err(_) => panic!("connection still open after {limit:?}"),
            }
        }
    }

    /// A client that sends half a request and stops (slowloris), and one that stays idle after
    /// its request: both are closed after the header timeout; with axum::serve neither was.
    #[tokio::test]
    async fn slow_and_idle_clients_are_closed_after_the_header_timeout() {
        let (addr, _stop, _) = start(opts(8, Duration::from_millis(500), None)).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").await.expect("write");
        let took = until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(400), "closed too early: {took:?}");

        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "answered first");
        until_closed(&mut idle, Duration::from_secs(5)).await;
    }

    /// At the limit, another client is not served until a connection ends.
    #[tokio::test]
    async fn connections_beyond_the_limit_wait() {
        let (addr, _stop, _) = start(opts(2, Duration::from_millis(1500), None)).await;
        let _a = tokio::net::TcpStream::connect(addr).await.expect("a");
        let _b = tokio::net::TcpStream::connect(addr).await.expect("b");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("c");
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Served only once the idle two were closed by the header timeout.
        assert!(t.elapsed() >= Duration::from_millis(1200), "served at once: {:?}", t.elapsed());
    }

    /// Idle clients do not hold up shutdown.
    #[tokio::test]
    async fn shutdown_is_not_held_by_idle_clients() {
        let (addr, stop, h) = start(opts(8, Duration::from_secs(60), None)).await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let _ = idle.read(&mut buf).await.expect("read");
        let t = Instant::now();
        stop.send(()).expect("stop");
        tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), h)
            .await
            .expect("stopped")
            .expect("join")
            .expect("ok");
        assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
    }

    /// A CA (`ca.crt`, made once per directory) and a server certificate for 127.0.0.1 that it
    /// signs, made with openssl.
    fn make_cert(dir: &std::path::Path, name: &str) -> TlsFiles {
        let run = |args: &[&str]| {
            let out =
                std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
        if !dir.join("ca.crt").exists() {
            run(&[
                &["req", "-x509"][..],
                &ec,
                &["-subj", "/CN=kovn-test-ca", "-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat());
        }
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        run(&[
            &["req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key"][..],
            &ec,
            &["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1"],
            &["-addext", "basicConstraints=critical,CA:FALSE", "-keyout", &key, "-out", &crt],
        ]
        .concat());
        TlsFiles { cert: dir.join(crt), key: dir.join(key) }
    }

    /// GET /x over TLS trusting `ca`; returns the body and the server certificate's DER.
    async fn tls_get(addr: std::net::SocketAddr, ca: &std::path::Path) -> Result<(String, Vec<u8>), String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(c.expect("cert")).expect("add");
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut s = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let der =
            s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        Ok((String::from_utf8_lossy(&out).into_owned(), der))
    }

    #[tokio::test]
    async fn tls_serves_and_reloads_a_renewed_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = make_cert(dir.path(), "first");
        let live = TlsFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key") };
        std::fs::copy(&first.cert, &live.cert).expect("cp");
        std::fs::copy(&first.key, &live.key).expect("cp");
        let reloader = TlsReloader::start(live.clone(), Duration::from_millis(100)).expect("loads");
        let (addr, _stop, _) = start(opts(8, Duration::from_secs(5), Some(reloader))).await;
        let ca = dir.path().join("ca.crt");
        let (body, der1) = tls_get(addr, &ca).await.expect("TLS with the first certificate");
        assert!(body.starts_with("HTTP/1.1 200") && body.ends_with("ok"), "{body}");

        // Renewal: new files in place; new connections get the new certificate.
        let second = make_cert(dir.path(), "second");
        std::fs::copy(&second.key, &live.key).expect("cp");
        std::fs::copy(&second.cert, &live.cert).expect("cp");
        let t = Instant::now();
        loop {
            if let Ok((_, der)) = tls_get(addr, &ca).await
                && der != der1
            {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "not reloaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, der2) = tls_get(addr, &ca).await.expect("TLS with the second certificate");
        assert_ne!(der1, der2, "new connections get the renewed certificate");
        // A plain-text client gets no answer.
        let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
        plain.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let n = plain.read(&mut buf).await.unwrap_or(0);
        assert!(!String::from_utf8_lossy(&buf[..n]).contains("200"));
    }

    #[tokio::test]
    async fn the_cli_client_reaches_a_tls_monitor_with_its_ca_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = make_cert(dir.path(), "monitor");
        let reloader = TlsReloader::start(files, Duration::from_secs(60)).expect("loads");
        let (addr, _stop, _) = start(opts(8, Duration::from_secs(5), Some(reloader))).await;
        let url = format!("https://{addr}/x");
        // What `--ca-file` gives every client (CLI, top, peers, drill-down).
        let cas = crate::auth::read_ca_file(&dir.path().join("ca.crt")).expect("the CA file");
        let client = crate::auth::trusting(reqwest::Client::builder(), &cas).build().expect("client");
        let r = client.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url} trusting the CA: {e:?}"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "ok");
        // Without it the system's roots do not know the monitor's CA: refused, not ignored.
        let err = reqwest::Client::new().get(&url).send().await.expect_err("an unknown CA is refused");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        // Bad --ca-file: one clear line each.
        let missing = crate::auth::read_ca_file(&dir.path().join("nope.pem")).expect_err("missing");
        assert!(missing.starts_with("cannot read --ca-file ") && missing.contains("nope.pem"), "{missing}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").expect("write");
        let empty = crate::auth::read_ca_file(&dir.path().join("empty.pem")).expect_err("no certificate");
        assert!(empty.contains("no certificate in it"), "{empty}");
    }

    #[test]
    fn unreadable_tls_files_are_one_clear_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = TlsFiles { cert: dir.path().join("nope.crt"), key: dir.path().join("nope.key") };
        let e = load_tls(&missing).expect_err("missing").to_string();
        assert!(
            e.starts_with("cannot read TLS certificate") && e.contains("nope.crt") && !e.contains('\n'),
            "{e}"
        );
        let good = make_cert(dir.path(), "good");
        std::fs::write(dir.path().join("garbage.key"), "not a key\n").expect("write");
        let e = load_tls(&TlsFiles { cert: good.cert.clone(), key: dir.path().join("garbage.key") })
            .expect_err("bad key")
            .to_string();
        assert!(e.starts_with("cannot read TLS private key"), "{e}");
        let other = make_cert(dir.path(), "other");
        let e = load_tls(&TlsFiles { cert: good.cert, key: other.key }).expect_err("mismatch").to_string();
        assert!(e.contains("do not make a server configuration"), "{e}");
    }
}
