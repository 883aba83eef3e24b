//! `lab monitors`: one kovn-monitor per node, as the DaemonSet would run it on a real cluster.
//!
//! Each runs inside its node's netns (so it sees that node's pod veths and NIC, and nothing
//! else), reads that node's OVSDB and the lab's OVN southbound DB, and serves its API on the
//! node IP, which the root netns reaches through the underlay bridge:
//!
//! ```text
//! ip netns exec NAME-nodeK kovn-monitor run --listen <node IP>:9474 --node-name nodeK \
//!     --ovsdb unix:<node db.sock> --ovn-sb unix:<central sb.sock> --poll-interval 1s \
//!     --underlay-iface eth0 --ovs-rundir <node dir> --integration-bridge br-int \
//!     --ovn-nb unix:<central nb.sock> --enable-trace-api
//! ```
//!
//! They are recorded in lab.json (`monitors`), shown by `lab status`, and stopped by `lab down`
//! before anything else (SIGINT, so they detach from the interfaces cleanly).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::model::{Lab, Node, load};
use super::sys::{self, StateLock};
use super::up;
use crate::cmd;

pub use super::model::MonitorInfo;

/// The port of every monitor's API (kovn-monitor's default port).
pub const MONITOR_PORT: u16 = 9474;
/// How often the monitors read their kernel flow maps: tests wait a little more than this.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long `start` waits for a monitor to answer `/healthz` with every interface attached.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits after SIGINT before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 25;

/// The API of the monitor of `node` (by name): `http://<node IP>:9474`.
///
/// # Panics
/// If the lab has no such node (a programming error: node names come from the lab).
pub fn monitor_url(lab: &Lab, node: &str) -> String {
    let node = lab.node(node).unwrap_or_else(|e| panic!("{e:#}"));
    url_of(node)
}

fn url_of(node: &Node) -> String {
    format!("http://{}:{MONITOR_PORT}", node.ip)
}

fn pidfile_of(lab: &Lab, node: &str) -> PathBuf {
    lab.node_dir(node).join("kovn-monitor.pid")
}

fn log_of(lab: &Lab, node: &str) -> PathBuf {
    lab.node_dir(node).join("kovn-monitor.log")
}

/// The process name (/proc/PID/comm) of a program: its file name, cut to 15 bytes.
fn comm_of(bin: &Path) -> String {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut comm = String::new();
    for c in name.chars() {
        if comm.len() + c.len_utf8() > 15 {
            break;
        }
        comm.push(c);
    }
    comm
}

/// The pid of a recorded monitor if it still runs.
pub fn alive(m: &MonitorInfo) -> Option<i32> {
    sys::live_pid(&m.pidfile, &comm_of(&m.bin))
}

/// The recorded monitors, each with its pid when it runs.
pub fn running(lab: &Lab) -> Vec<(MonitorInfo, Option<i32>)> {
    lab.monitors.iter().map(|m| (m.clone(), alive(m))).collect()
}

/// `<target dir>/debug/kovn-monitor` of the workspace this xtask binary was built in
/// (`target/debug/xtask`, or `target/debug/deps/...` for a test binary).
pub fn default_bin() -> PathBuf {
    let fallback = PathBuf::from("target/debug/kovn-monitor");
    let Ok(exe) = std::env::current_exe() else {
        return fallback;
    };
    let Some(mut dir) = exe.parent() else {
        return fallback;
    };
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    match dir.parent() {
        Some(target) => target.join("debug").join("kovn-monitor"),
        None => fallback,
    }
}

/// Starts a monitor in every node that has none running (see the module docs) and waits until
/// each answers `/healthz` with all of its node's pod veths and NIC attached. Monitors already
/// running are left alone; when all are, this says so and changes nothing. On failure every
/// monitor this call started is stopped again and the error carries the log tail.
pub fn start(lab: &Lab, bin: &Path) -> Result<Vec<MonitorInfo>> {
    start_with(lab, bin, &[])
}

/// [`start`] with extra `kovn-monitor run` arguments after the lab's own (e.g.
/// `--alertmanager-url ...`, `--metrics-pod-labels`).
pub fn start_with(lab: &Lab, bin: &Path, extra: &[String]) -> Result<Vec<MonitorInfo>> {
    sys::require_root()?;
    let bin = fs::canonicalize(bin).with_context(|| {
        format!("no kovn-monitor binary at {} (build it: cargo build -p kovn-monitor)", bin.display())
    })?;
    ensure!(bin.is_file(), "{} is not a file", bin.display());
    let _lock = StateLock::acquire(&lab.state_dir)?;
    let mut current = load(&lab.state_dir.to_string_lossy())?;
    let kept: Vec<MonitorInfo> = current.monitors.iter().filter(|m| alive(m).is_some()).cloned().collect();
    let missing: Vec<Node> =
        current.nodes.iter().filter(|n| !kept.iter().any(|m| m.node == n.name)).cloned().collect();
    if missing.is_empty() {
        let pids: Vec<String> = kept.iter().map(|m| format!("{} pid {}", m.node, m.pid)).collect();
        eprintln!("monitors of lab {} already running ({}); left unchanged", current.name, pids.join(", "));
        return Ok(kept);
    }
    let underlay_flag = underlay_flag(&bin);
    let mut extra = extra.to_vec();
    let help = cmd::output(&bin.to_string_lossy(), &["run", "--help"]).map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&help).contains("--inventory-file")
        && !extra.iter().any(|a| a == "--inventory-file")
    {
        extra.extend([
            "--inventory-file".to_string(),
            write_inventory(&current)?.to_string_lossy().into_owned(),
        ]);
    }
    let extra = extra.as_slice();
    let started_at = Instant::now();
    let mut started = Vec::new();
    let result = (|| -> Result<()> {
        for node in &missing {
            started.push(spawn(&current, node, &bin, underlay_flag, extra)?);
        }
        wait_ready(&current, &started, started_at)
    })();
    if let Err(e) = result {
        let pids: Vec<i32> = started.iter().map(|m| m.pid).collect();
        sys::stop_all(&pids, libc::SIGINT, STOP_GRACE);
        return Err(e);
    }
    let mut all = kept;
    all.extend(started);
    all.sort_by_key(|m| current.nodes.iter().position(|n| n.name == m.node));
    current.monitors = all.clone();
    current.save()?;
    Ok(all)
}

/// The lab's static inventory for its monitors (`--inventory-file`): what a Kubernetes API
/// would tell them on a real cluster (workloads, services and their endpoints, nodes, subnets),
/// written next to lab.json. JSON is YAML.
pub fn write_inventory(lab: &Lab) -> Result<PathBuf> {
    let pods: Vec<Value> = lab
        .pods
        .iter()
        .map(|p| {
            serde_json::json!({"namespace": p.namespace, "name": p.name, "node": p.node, "ips": [p.ip],
                "workload": format!("Deployment/{}", p.workload)})
        })
        .collect();
    let services: Vec<Value> = lab
        .services
        .iter()
        .map(|s| {
            serde_json::json!({"namespace": s.namespace, "name": s.name, "cluster_ips": [s.vip],
                "ports": [format!("{}/{}", s.port, s.protocol.as_str())],
                "endpoints": s.backends.iter().map(|b| b.ip().to_string()).collect::<Vec<_>>()})
        })
        .collect();
    let doc = serde_json::json!({
        "nodes": lab.nodes.iter().map(|n| serde_json::json!({"name": n.name, "ips": [n.ip]})).collect::<Vec<_>>(),
        "pods": pods,
        "services": services,
        "subnets": lab.subnets.iter().map(|s| serde_json::json!({"name": s.name, "cidr": s.cidr.to_string(),
            "gateway": s.gateway, "mode": "overlay"})).collect::<Vec<_>>(),
    });
    let path = lab.state_dir.join("inventory.yaml");
    fs::write(&path, format!("{}\n", serde_json::to_string_pretty(&doc)?))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `--underlay-iface` (Geneve/VXLAN on the NIC opened to the pod flow inside) when the binary
/// has it, else `--iface` (the NIC watched as a plain host interface).
fn underlay_flag(bin: &Path) -> &'static str {
    let help = cmd::output(&bin.to_string_lossy(), &["run", "--help"]).map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&help).contains("--underlay-iface") { "--underlay-iface" } else { "--iface" }
}

/// The drill-down's flags (`kovn-monitor trace`): this node's OVS run directory, its
/// integration bridge, the lab's northbound (to name ACLs) and the trace API, which the CLI
/// and the other node's monitor use. None for a binary that predates them.
fn trace_flags(lab: &Lab, node: &Node, bin: &Path) -> Vec<String> {
    let help = cmd::output(&bin.to_string_lossy(), &["run", "--help"]).map(|o| o.stdout).unwrap_or_default();
    if !String::from_utf8_lossy(&help).contains("--enable-trace-api") {
        return Vec::new();
    }
    vec![
        "--ovs-rundir".into(),
        node.ovs_rundir.display().to_string(),
        "--integration-bridge".into(),
        node.integration_bridge.clone(),
        "--ovn-nb".into(),
        lab.central.nb_db(),
        "--enable-trace-api".into(),
    ]
}

fn spawn(lab: &Lab, node: &Node, bin: &Path, underlay_flag: &str, extra: &[String]) -> Result<MonitorInfo> {
    // OVS re-enables checksum offload on the root end of the node's NIC when it takes the NIC;
    // without this, labs made before `up` reasserted it could not reach the API (see `up`).
    up::root_veth_checksums(node)?;
    let (pidfile, log) = (pidfile_of(lab, &node.name), log_of(lab, &node.name));
    // A monitor left by an interrupted `start` (pidfile written, lab.json not) holds the port.
    if let Some(pid) = sys::live_pid(&pidfile, &comm_of(bin)) {
        sys::stop_all(&[pid], libc::SIGINT, STOP_GRACE);
    }
    // A fresh log per start, so the tail shown on failure is this run's.
    let _ = fs::remove_file(&log);
    let args: Vec<String> = [
        "run",
        "--listen",
        &format!("{}:{MONITOR_PORT}", node.ip),
        "--node-name",
        &node.name,
        "--ovsdb",
        &node.ovsdb(),
        "--ovn-sb",
        &lab.central.sb_db(),
        "--poll-interval",
        &format!("{}ms", POLL_INTERVAL.as_millis()),
        underlay_flag,
        &node.underlay_iface,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(trace_flags(lab, node, bin))
    .chain(extra.iter().cloned())
    .collect();
    let pid = sys::spawn_detached(Some(&node.netns), &bin.to_string_lossy(), &args, &log, &pidfile)?;
    Ok(MonitorInfo {
        node: node.name.clone(),
        url: url_of(node),
        pid: pid as i32,
        log,
        pidfile,
        bin: bin.to_path_buf(),
    })
}

/// Waits until every monitor's `/healthz` lists its node's pod veths and NIC as attached and
/// its programs as loaded.
fn wait_ready(lab: &Lab, monitors: &[MonitorInfo], started_at: Instant) -> Result<()> {
    let mut pending: Vec<(&MonitorInfo, Vec<String>, String)> = monitors
        .iter()
        .map(|m| {
            let node = lab.node(&m.node)?;
            let mut want: Vec<String> = lab.pods_on(&m.node).map(|p| p.host_veth.clone()).collect();
            want.push(node.underlay_iface.clone());
            Ok((m, want, "no answer yet".to_string()))
        })
        .collect::<Result<_>>()?;
    let deadline = started_at + sys::scaled(READY_TIMEOUT);
    loop {
        let mut still = Vec::new();
        for (m, want, _) in pending {
            if !sys::is_alive(m.pid) {
                bail!(
                    "kovn-monitor on {} (pid {}) exited; {}:\n{}",
                    m.node,
                    m.pid,
                    m.log.display(),
                    log_tail(&m.log)
                );
            }
            match check_health(m, &want) {
                Ok(n) => eprintln!(
                    "[{:>5.1}s] kovn-monitor on {} ready: {} pid {}, {n} interfaces attached",
                    started_at.elapsed().as_secs_f32(),
                    m.node,
                    m.url,
                    m.pid
                ),
                Err(e) => still.push((m, want, format!("{e:#}"))),
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (m, _, last) = &pending[0];
            bail!(
                "kovn-monitor on {} (pid {}) not ready after {:?} ({last}); {}:\n{}",
                m.node,
                m.pid,
                sys::scaled(READY_TIMEOUT),
                m.log.display(),
                log_tail(&m.log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ok(number of attached interfaces) when `/healthz` shows `want` attached and programs loaded.
fn check_health(m: &MonitorInfo, want: &[String]) -> Result<usize> {
    let health = get_json(&format!("{}/healthz", m.url), Duration::from_secs(1))?;
    let attached: Vec<&str> = health["attached_interfaces"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&String> = want.iter().filter(|w| !attached.contains(&w.as_str())).collect();
    ensure!(missing.is_empty(), "not attached yet: {missing:?} (attached: {attached:?})");
    ensure!(health["programs"].as_array().is_some_and(|p| !p.is_empty()), "no eBPF programs loaded yet");
    Ok(attached.len())
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Stops the lab's monitors (SIGINT, SIGKILL after 10 s) and forgets them in lab.json.
pub fn stop(lab: &Lab) -> Result<()> {
    sys::require_root()?;
    let _lock = StateLock::acquire(&lab.state_dir)?;
    let mut current = load(&lab.state_dir.to_string_lossy())?;
    let survivors = stop_processes(&current);
    current.monitors.clear();
    current.save()?;
    ensure!(survivors.is_empty(), "kovn-monitor processes {survivors:?} survived SIGKILL");
    Ok(())
}

/// Stops every monitor process of the lab, recorded or only known by its pidfile; returns the
/// pids that would not die. No lock, no lab.json update: `down` uses it on its way out.
pub(crate) fn stop_processes(lab: &Lab) -> Vec<i32> {
    let mut pids = Vec::new();
    for node in &lab.nodes {
        let recorded = lab.monitors.iter().find(|m| m.node == node.name);
        let pid =
            recorded.and_then(alive).or_else(|| sys::live_pid(&pidfile_of(lab, &node.name), "kovn-monitor"));
        if let Some(pid) = pid
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    let survivors = sys::stop_all(&pids, libc::SIGINT, STOP_GRACE);
    for node in &lab.nodes {
        let _ = fs::remove_file(pidfile_of(lab, &node.name));
    }
    survivors
}

/// GET an `http://HOST:PORT/PATH` URL and parse the JSON body: a minimal HTTP/1.1 client on std
/// (`Connection: close`; Content-Length or chunked bodies), enough for the monitors' API.
pub fn get_json(url: &str, timeout: Duration) -> Result<Value> {
    let body = get(url, timeout)?;
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: the answer is not JSON"))
}

/// `GET url` (plain http), the body as text when the status is 200.
pub fn get_text(url: &str, timeout: Duration) -> Result<String> {
    Ok(String::from_utf8_lossy(&get(url, timeout)?).into_owned())
}

fn get(url: &str, timeout: Duration) -> Result<Vec<u8>> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: bad address"))?
        .next()
        .with_context(|| format!("{url}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("GET {url}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json, text/plain, */*\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("GET {url}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("GET {url}: reading the answer"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {url}: no end of headers in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked")) {
        body = dechunk(&body).with_context(|| format!("GET {url}: bad chunked body"))?;
    }
    let status = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?").to_string();
    ensure!(status == "200", "GET {url}: HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    Ok(body)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").context("no chunk size line")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size, "chunk of {size} bytes cut short");
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        let body = b"4\r\n{\"a\"\r\n5;ext=1\r\n: 1}\n\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"{\"a\": 1}\n");
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"10\r\nshort\r\n").is_err());
    }

    #[test]
    fn process_names_are_cut_like_the_kernel_does() {
        assert_eq!(comm_of(Path::new("/t/debug/kovn-monitor")), "kovn-monitor");
        assert_eq!(comm_of(Path::new("/t/kovn-monitor-experimental")), "kovn-monitor-ex");
    }

    #[test]
    fn default_binary_is_in_the_debug_target_dir() {
        let bin = default_bin();
        assert!(bin.ends_with("debug/kovn-monitor"), "{}", bin.display());
    }
}
