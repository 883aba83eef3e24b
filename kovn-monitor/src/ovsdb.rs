//! A small OVSDB client (RFC 7047): JSON-RPC over a unix or TCP socket, the `monitor` method
//! for an initial snapshot plus change notifications, and `echo` answered so the server keeps
//! the session. kovn reads the node's Open_vSwitch database (Kube-OVN's pod interfaces) and,
//! optionally, the OVN southbound database this way: watching, never polling CLIs.
//!
//! Size: one protocol (RFC 7047 JSON-RPC, `monitor` and its updates); a quarter of it is tests.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("invalid OVSDB address {0:?}: expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT")]
    Address(String),
    #[error("{0}")]
    Tls(String),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("OVSDB session: {0}")]
    Io(#[from] std::io::Error),
    #[error("OVSDB protocol: {0}")]
    Protocol(String),
    #[error("OVSDB server closed the session")]
    Closed,
}

/// Where an OVSDB server listens, as OVS tools spell it (`unix:/run/openvswitch/db.sock`,
/// `tcp:10.0.0.1:6642`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(std::path::PathBuf),
    Tcp(String),
    /// TLS with the client key, certificate and CA of [`set_ssl_files`] (Kube-OVN's
    /// ENABLE_SSL).
    Ssl(String),
}

impl std::str::FromStr for Address {
    type Err = OvsdbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:")
            && !p.is_empty()
        {
            return Ok(Self::Unix(p.into()));
        }
        let tcp: fn(String) -> Self = Self::Tcp;
        for (prefix, make) in [("tcp:", tcp), ("ssl:", Self::Ssl)] {
            if let Some(hp) = s.strip_prefix(prefix)
                && let Some((host, port)) = hp.rsplit_once(':')
                && !host.is_empty()
                && port.parse::<u16>().is_ok()
            {
                return Ok(make(hp.to_string()));
            }
        }
        Err(OvsdbError::Address(s.to_string()))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(hp) => write!(f, "tcp:{hp}"),
            Self::Ssl(hp) => write!(f, "ssl:{hp}"),
        }
    }
}

/// A row as the monitor reports it: column name to JSON value (OVSDB encoding).
pub type Row = serde_json::Map<String, Value>;

/// A change to one table: rows by UUID, `None` when deleted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TableUpdate {
    pub rows: BTreeMap<String, Option<Row>>,
}

pub type Updates = BTreeMap<String, TableUpdate>;

/// Parses `<table-updates>` (RFC 7047 §4.1.6): {table: {uuid: {"old":..., "new":...}}}.
pub fn parse_updates(v: &Value) -> Result<Updates, OvsdbError> {
    let tables =
        v.as_object().ok_or_else(|| OvsdbError::Protocol(format!("table-updates not an object: {v}")))?;
    let mut out = Updates::new();
    for (table, rows) in tables {
        let rows =
            rows.as_object().ok_or_else(|| OvsdbError::Protocol(format!("rows of {table} not an object")))?;
        let mut tu = TableUpdate::default();
        for (uuid, change) in rows {
            let new = change.get("new").and_then(Value::as_object).cloned();
            tu.rows.insert(uuid.clone(), new);
        }
        out.insert(table.clone(), tu);
    }
    Ok(out)
}

/// An OVSDB map column (`["map", [[k, v], ...]]`) as string pairs.
pub fn map_column(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Array(a)) = v
        && a.first().and_then(Value::as_str) == Some("map")
        && let Some(Value::Array(pairs)) = a.get(1)
    {
        for p in pairs {
            if let Value::Array(kv) = p
                && let (Some(k), Some(v)) = (kv.first(), kv.get(1))
            {
                out.insert(atom_string(k), atom_string(v));
            }
        }
    }
    out
}

/// An OVSDB set column (`["set", [...]]` or a bare atom) as strings.
pub fn set_column(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) if a.first().and_then(Value::as_str) == Some("set") => a
            .get(1)
            .and_then(Value::as_array)
            .map(|items| items.iter().map(atom_string).collect())
            .unwrap_or_default(),
        Some(Value::Array(a)) if a.first().and_then(Value::as_str) == Some("uuid") => {
            vec![atom_string(&Value::Array(a.clone()))]
        }
        Some(v) => vec![atom_string(v)],
        None => vec![],
    }
}

/// One atom as a string: strings as they are, `["uuid", "x"]` as `x`, numbers as text.
pub fn atom_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 2 && (a[0] == "uuid" || a[0] == "named-uuid") => {
            a[1].as_str().unwrap_or_default().to_string()
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// The client key, certificate and CA for `ssl:` addresses (`--ovn-ssl-key`, `--ovn-ssl-cert`,
/// `--ovn-ssl-ca`: the files Kube-OVN mounts from its `kube-ovn-tls` secret).
#[derive(Clone, Debug)]
pub struct SslFiles {
    pub key: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

static SSL: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
static SSL_FILES: std::sync::OnceLock<SslFiles> = std::sync::OnceLock::new();

/// Loads the files for `ssl:` connections (once, at start): an error names the file.
pub fn set_ssl_files(files: &SslFiles) -> Result<(), OvsdbError> {
    let config = ssl_config(files)?;
    let _ = SSL.set(config);
    let _ = SSL_FILES.set(files.clone());
    Ok(())
}

/// The options OVS's own clients (`ovn-trace`, `ovn-sbctl`, `ovn-nbctl`) need to reach `db`:
/// for an `ssl:` address the files of [`set_ssl_files`] (`--private-key`, `--certificate`,
/// `--ca-cert`), else none.
pub fn ssl_args(db: &str) -> Vec<String> {
    match SSL_FILES.get() {
        Some(f) if db.starts_with("ssl:") => vec![
            format!("--private-key={}", f.key.display()),
            format!("--certificate={}", f.cert.display()),
            format!("--ca-cert={}", f.ca.display()),
        ],
        _ => Vec::new(),
    }
}

/// Like OVS itself, the server's certificate must chain to the CA; its name is not checked
/// (OVN's certificates name a role or a host id, not the address it is reached at).
#[derive(Debug)]
struct CaOnly(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn ssl_config(files: &SslFiles) -> Result<std::sync::Arc<rustls::ClientConfig>, OvsdbError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |path: &std::path::Path, what: &str| -> Result<Vec<CertificateDer<'static>>, OvsdbError> {
        let c: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| OvsdbError::Tls(format!("cannot read OVN SSL {what} {}: {e}", path.display())))?;
        if c.is_empty() {
            return Err(OvsdbError::Tls(format!("no PEM certificate in OVN SSL {what} {}", path.display())));
        }
        Ok(c)
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&files.ca, "CA")? {
        roots.add(c).map_err(|e| OvsdbError::Tls(format!("OVN SSL CA {}: {e}", files.ca.display())))?;
    }
    let chain = certs(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| OvsdbError::Tls(format!("cannot read OVN SSL key {}: {e}", files.key.display())))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| OvsdbError::Tls(format!("OVN SSL CA {}: {e}", files.ca.display())))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OvsdbError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(CaOnly(verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            OvsdbError::Tls(format!(
                "OVN SSL certificate {} and key {}: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    Ok(std::sync::Arc::new(config))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How long connecting (and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[expect(
    clippy::map_err_ignore,
    reason = "tokio's Elapsed carries nothing; the timeout becomes an io::Error of kind TimedOut"
)]
async fn connect(addr: &Address) -> Result<Box<dyn Stream>, OvsdbError> {
    let conn = |source| OvsdbError::Connect { addr: addr.to_string(), source };
    let work = async {
        Ok::<Box<dyn Stream>, OvsdbError>(match addr {
            Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(conn)?),
            Address::Tcp(hp) => Box::new(tokio::net::TcpStream::connect(hp).await.map_err(conn)?),
            Address::Ssl(hp) => {
                let config = SSL.get().cloned().ok_or_else(|| {
                    OvsdbError::Tls(format!("{addr} needs --ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca"))
                })?;
                let tcp = tokio::net::TcpStream::connect(hp).await.map_err(conn)?;
                let host = hp.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(hp);
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| OvsdbError::Tls(format!("{addr}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| OvsdbError::Tls(format!("TLS with {addr}: {e}")))?;
                Box::new(tls)
            }
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| conn(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")))?
}

/// The largest JSON-RPC message accepted (a big cluster's southbound snapshot is tens of MiB).
pub const MESSAGE_MAX: usize = 256 << 20;

/// Splits the byte stream into JSON texts in linear time: each byte is scanned once (depth
/// and string state carry over between chunks) and a message is parsed only once complete.
/// (Before, the whole buffer was re-parsed for every chunk: quadratic in a big snapshot.)
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Bytes scanned in total (for the linear-time test).
    pub bytes_scanned: u64,
}

impl Framer {
    /// Adds `chunk`; returns the complete messages it finished.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Value>, OvsdbError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = self.scanned;
        self.bytes_scanned += (self.buf.len() - i) as u64;
        while i < self.buf.len() {
            let b = self.buf[i];
            i += 1;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let v: Value = serde_json::from_slice(&self.buf[start..i])
                            .map_err(|e| OvsdbError::Protocol(format!("bad JSON from server: {e}")))?;
                        out.push(v);
                        start = i;
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => start = i,
                _ if self.depth == 0 => {
                    return Err(OvsdbError::Protocol(format!(
                        "bad JSON from server: unexpected {:?} between messages",
                        b as char
                    )));
                }
                _ => {}
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MESSAGE_MAX {
            return Err(OvsdbError::Protocol(format!("message larger than {MESSAGE_MAX} bytes")));
        }
        Ok(out)
    }
}

/// Splits complete JSON values off the front of `buf` (OVSDB frames are concatenated JSON
/// texts with no delimiter). Leaves an incomplete tail in `buf`. One-shot form of [`Framer`].
pub fn drain_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, OvsdbError> {
    let mut f = Framer::default();
    let out = f.push(buf)?;
    *buf = std::mem::take(&mut f.buf);
    Ok(out)
}

/// With nothing from the server for this long, the client sends an echo; with still nothing
/// after as long again, the session is dead (a half-open TCP connection) and is reconnected.
pub const INACTIVITY_PROBE: Duration = Duration::from_secs(30);

/// Monitors `tables` (table → columns) of `db` at `addr`, sending every snapshot and change to
/// `tx`. Returns when the session ends (the caller reconnects).
pub async fn monitor(
    addr: &Address,
    db: &str,
    tables: &[(&str, &[&str])],
    tx: &tokio::sync::mpsc::Sender<Updates>,
) -> Result<(), OvsdbError> {
    monitor_with_probe(addr, db, tables, tx, INACTIVITY_PROBE).await
}

/// [`monitor`] with its inactivity probe interval.
pub async fn monitor_with_probe(
    addr: &Address,
    db: &str,
    tables: &[(&str, &[&str])],
    tx: &tokio::sync::mpsc::Sender<Updates>,
    probe: Duration,
) -> Result<(), OvsdbError> {
    let mut s = connect(addr).await?;
    let requests: serde_json::Map<String, Value> =
        tables.iter().map(|(t, cols)| (t.to_string(), json!({ "columns": cols }))).collect();
    let req = json!({ "method": "monitor", "params": [db, "kovn", requests], "id": 1 });
    s.write_all(req.to_string().as_bytes()).await?;
    let mut framer = Framer::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut echo_sent = false;
    loop {
        let n = match tokio::time::timeout(probe, s.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) if !echo_sent => {
                let echo = json!({ "method": "echo", "params": ["kovn-probe"], "id": "kovn-probe" });
                s.write_all(echo.to_string().as_bytes()).await?;
                echo_sent = true;
                continue;
            }
            Err(_) => {
                return Err(OvsdbError::Protocol(format!(
                    "inactivity probe: no answer to an echo within {:.1}s",
                    probe.as_secs_f64()
                )));
            }
        };
        if n == 0 {
            return Err(OvsdbError::Closed);
        }
        // Anything from the server proves the session alive.
        echo_sent = false;
        for msg in framer.push(&chunk[..n])? {
            match msg.get("method").and_then(Value::as_str) {
                Some("echo") => {
                    let reply = json!({ "result": msg["params"], "error": null, "id": msg["id"] });
                    s.write_all(reply.to_string().as_bytes()).await?;
                }
                Some("update") => {
                    let updates = parse_updates(&msg["params"][1])?;
                    if tx.send(updates).await.is_err() {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None if msg["id"] == 1 => {
                    if !msg["error"].is_null() {
                        return Err(OvsdbError::Protocol(format!("monitor {db}: {}", msg["error"])));
                    }
                    if tx.send(parse_updates(&msg["result"])?).await.is_err() {
                        return Ok(());
                    }
                }
                None => {}
            }
        }
    }
}

/// [`monitor`] forever: reconnects with backoff, logs the first failure and recoveries once.
pub async fn watch(
    addr: Address,
    db: &'static str,
    tables: &'static [(&'static str, &'static [&'static str])],
    tx: tokio::sync::mpsc::Sender<Updates>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut failing = false;
    loop {
        // A fresh snapshot follows every (re)connection: tell the consumer to drop old rows.
        let reset: Updates =
            tables.iter().map(|(t, _)| (format!("{RESET_PREFIX}{t}"), TableUpdate::default())).collect();
        if tx.send(reset).await.is_err() {
            return;
        }
        match monitor(&addr, db, tables, &tx).await {
            Ok(()) => return,
            Err(e) => {
                if !failing {
                    log::warn!("OVSDB {db} at {addr}: {e}; retrying");
                    failing = true;
                } else {
                    log::debug!("OVSDB {db} at {addr}: {e}");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A pseudo-table name in [`Updates`] meaning "forget every row of this table" (reconnect).
pub const RESET_PREFIX: &str = "!reset:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_ovs_tools() {
        assert_eq!(
            "unix:/run/openvswitch/db.sock".parse::<Address>().ok(),
            Some(Address::Unix("/run/openvswitch/db.sock".into()))
        );
        assert_eq!("tcp:10.0.0.1:6642".parse::<Address>().ok(), Some(Address::Tcp("10.0.0.1:6642".into())));
        assert_eq!("ssl:10.0.0.1:6642".parse::<Address>().ok(), Some(Address::Ssl("10.0.0.1:6642".into())));
        for bad in ["", "unix:", "tcp:host", "tcp::6642", "ssl:1.2.3.4", "pssl:6642", "/run/db.sock"] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn concatenated_json_is_split_and_tails_kept() {
        let mut buf = br#"{"id":1,"result":{}}{"method":"echo","params":[],"id":"e"}{"meth"#.to_vec();
        let msgs = drain_messages(&mut buf).expect("valid");
        assert_eq!(msgs.len(), 2);
        assert_eq!(buf, br#"{"meth"#);
        buf.extend_from_slice(br#"od":"update","params":["kovn",{}],"id":null}"#);
        assert_eq!(drain_messages(&mut buf).expect("valid").len(), 1);
        assert!(buf.is_empty());
        let mut bad = b"}{".to_vec();
        assert!(drain_messages(&mut bad).is_err());
    }

    #[test]
    fn columns_decode_ovsdb_types() {
        let row = json!({
            "external_ids": ["map", [["iface-id", "web-1.default"], ["pod_name", "web-1"]]],
            "ofport": 3,
            "mac": ["set", ["0a:00:00:00:00:01 10.16.0.2", "x"]],
            "single": "0a:00 10.16.0.3",
            "chassis": ["uuid", "abc"]
        });
        let m = map_column(row.get("external_ids"));
        assert_eq!(m.get("iface-id").map(String::as_str), Some("web-1.default"));
        assert_eq!(set_column(row.get("mac")).len(), 2);
        assert_eq!(set_column(row.get("single")), vec!["0a:00 10.16.0.3".to_string()]);
        assert_eq!(set_column(row.get("chassis")), vec!["abc".to_string()]);
        assert_eq!(atom_string(&row["ofport"]), "3");
        assert!(map_column(row.get("ofport")).is_empty());
    }

    #[test]
    fn updates_mark_deleted_rows() {
        let u = parse_updates(
            &json!({"Interface": {"u1": {"new": {"name": "a"}}, "u2": {"old": {"name": "b"}}}}),
        )
        .expect("valid");
        let t = &u["Interface"];
        assert!(t.rows["u1"].is_some());
        assert!(t.rows["u2"].is_none());
        assert!(parse_updates(&json!([1])).is_err());
    }

    /// Every byte is scanned once however the stream is chunked (before: the whole buffer was
    /// re-parsed per chunk, so a 10 MiB snapshot in 64 KiB reads cost ~160 parses of it).
    #[test]
    fn framing_is_linear_and_survives_any_split() {
        let row = r#"{"name":"a\"}{[","external_ids":["map",[["k","v\\"]]]}"#;
        let rows: Vec<String> = (0..40_000).map(|i| format!(r#""u{i}":{{"new":{row}}}"#)).collect();
        let big = format!(r#"{{"id":1,"result":{{"Interface":{{{}}}}},"error":null}}"#, rows.join(","));
        let stream = format!("{big} \n{{\"method\":\"echo\",\"params\":[],\"id\":\"e\"}}{big}");
        let mut f = Framer::default();
        let mut msgs = Vec::new();
        for chunk in stream.as_bytes().chunks(64 * 1024) {
            msgs.extend(f.push(chunk).expect("valid"));
        }
        assert_eq!(msgs.len(), 3);
        assert_eq!(f.bytes_scanned, stream.len() as u64, "each byte scanned once");
        assert_eq!(msgs[0]["result"]["Interface"]["u7"]["new"]["name"], "a\"}{[");
        // One byte at a time: strings, escapes and nesting carry over between pushes.
        let mut f = Framer::default();
        let small = r#"{"a":"}\"{","b":[1,{"c":"\\"}]}[2]"#;
        let mut n = 0;
        for b in small.as_bytes() {
            n += f.push(std::slice::from_ref(b)).expect("valid").len();
        }
        assert_eq!(n, 2);
        assert!(Framer::default().push(b"x{}").is_err(), "garbage between messages");
    }

    /// A tiny OVSDB server: answers the monitor request with an empty snapshot, then answers
    /// echoes only if `answer_echo`.
    async fn fake_server(answer_echo: bool) -> Address {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut f = Framer::default();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                for m in f.push(&buf[..n]).expect("client JSON") {
                    let reply = match m["method"].as_str() {
                        Some("monitor") => json!({"id": m["id"], "result": {}, "error": null}),
                        Some("echo") if answer_echo => {
                            json!({"id": m["id"], "result": m["params"], "error": null})
                        }
                        _ => continue,
                    };
                    let _ = s.write_all(reply.to_string().as_bytes()).await;
                }
            }
        });
        Address::Tcp(addr.to_string())
    }

    /// A server that stops answering (a half-open connection) ends the session after an echo
    /// goes unanswered; one that answers keeps it. Before, the monitor waited for ever.
    #[tokio::test]
    async fn the_inactivity_probe_ends_a_silent_session() {
        let probe = Duration::from_millis(200);
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let silent = fake_server(false).await;
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            monitor_with_probe(&silent, "Open_vSwitch", &[("Interface", &["name"])], &tx, probe),
        )
        .await
        .expect("the probe ends it");
        let e = r.expect_err("dead session");
        assert!(e.to_string().contains("inactivity probe"), "{e}");
        assert!(t.elapsed() >= probe * 2, "only after an unanswered echo: {:?}", t.elapsed());
        assert!(rx.recv().await.is_some(), "the snapshot came first");

        let alive = fake_server(true).await;
        let r = tokio::time::timeout(
            probe * 6,
            monitor_with_probe(&alive, "Open_vSwitch", &[("Interface", &["name"])], &tx, probe),
        )
        .await;
        assert!(r.is_err(), "an answering server keeps the session: {r:?}");
    }

    #[tokio::test]
    async fn ssl_without_files_is_one_clear_error() {
        let e = connect(&"ssl:127.0.0.1:1".parse().expect("addr")).await.err().expect("no files");
        if SSL.get().is_none() {
            assert!(e.to_string().contains("needs --ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca"), "{e}");
        }
        let missing = SslFiles {
            key: "/nonexistent/k".into(),
            cert: "/nonexistent/c".into(),
            ca: "/nonexistent/ca".into(),
        };
        let e = ssl_config(&missing).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read OVN SSL CA /nonexistent/ca"), "{e}");
    }
}
