//! A small OVSDB client (RFC 7047): JSON-RPC over a unix or TCP socket, the `monitor` method
//! for an initial snapshot plus change notifications, and `echo` answered so the server keeps
//! the session. kovn reads the node's Open_vSwitch database (Kube-OVN's pod interfaces) and,
//! optionally, the OVN southbound database this way: watching, never polling CLIs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("invalid OVSDB address {0:?}: expected unix:PATH or tcp:HOST:PORT")]
    Address(String),
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
}

impl std::str::FromStr for Address {
    type Err = OvsdbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:")
            && !p.is_empty()
        {
            return Ok(Self::Unix(p.into()));
        }
        if let Some(hp) = s.strip_prefix("tcp:")
            && let Some((host, port)) = hp.rsplit_once(':')
            && !host.is_empty()
            && port.parse::<u16>().is_ok()
        {
            return Ok(Self::Tcp(hp.to_string()));
        }
        Err(OvsdbError::Address(s.to_string()))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(hp) => write!(f, "tcp:{hp}"),
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

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(addr: &Address) -> Result<Box<dyn Stream>, OvsdbError> {
    let conn = |source| OvsdbError::Connect { addr: addr.to_string(), source };
    Ok(match addr {
        Address::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(conn)?),
        Address::Tcp(hp) => Box::new(tokio::net::TcpStream::connect(hp).await.map_err(conn)?),
    })
}

/// Splits complete JSON values off the front of `buf` (OVSDB frames are concatenated JSON
/// texts with no delimiter). Leaves an incomplete tail in `buf`.
pub fn drain_messages(buf: &mut Vec<u8>) -> Result<Vec<Value>, OvsdbError> {
    let mut out = Vec::new();
    let mut consumed = 0;
    {
        let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
        loop {
            match it.next() {
                Some(Ok(v)) => {
                    out.push(v);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(OvsdbError::Protocol(format!("bad JSON from server: {e}"))),
                None => break,
            }
        }
    }
    buf.drain(..consumed);
    Ok(out)
}

/// Monitors `tables` (table → columns) of `db` at `addr`, sending every snapshot and change to
/// `tx`. Returns when the session ends (the caller reconnects).
pub async fn monitor(
    addr: &Address,
    db: &str,
    tables: &[(&str, &[&str])],
    tx: &tokio::sync::mpsc::Sender<Updates>,
) -> Result<(), OvsdbError> {
    let mut s = connect(addr).await?;
    let requests: serde_json::Map<String, Value> =
        tables.iter().map(|(t, cols)| (t.to_string(), json!({ "columns": cols }))).collect();
    let req = json!({ "method": "monitor", "params": [db, "kovn", requests], "id": 1 });
    s.write_all(req.to_string().as_bytes()).await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(OvsdbError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        for msg in drain_messages(&mut buf)? {
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
        for bad in ["", "unix:", "tcp:host", "tcp::6642", "ssl:1.2.3.4:6642", "/run/db.sock"] {
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
}
