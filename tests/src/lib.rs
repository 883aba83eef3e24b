//! Helpers for kovn's privileged tests: network namespaces and veth pairs that clean up after
//! themselves, commands run inside a namespace, tcpdump captures read back with an independent
//! parser (etherparse), crafted frames for BPF_PROG_TEST_RUN, and the daemon as a process.
//!
//! Every privileged test needs root: it fails (never skips silently) without it.

pub mod frames;
pub mod lab_fixture;
pub mod pcap;
pub mod pod_probe;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Panics with a clear message when not root: these tests load eBPF and make namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged test: run as root (cargo xtask test does; plain `cargo test -p kovn-tests` needs sudo)"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A unique short name for this test process (interface names are at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}{}", std::process::id() % 10000, N.fetch_add(1, Ordering::Relaxed))
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        require_root();
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// `ip netns exec NS program args...` as a Command (not run yet).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args).stdin(Stdio::null());
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs and returns the output whatever the exit status.
    pub fn try_run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair with addresses: `a` 10.x.y.1/24, `b` 10.x.y.2/24.
pub struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a_ip: String,
    pub b_ip: String,
}

impl Pair {
    pub fn new(subnet_octet: u8) -> Self {
        let a = Netns::new("kta");
        let b = Netns::new("ktb");
        let a_if = unique("kva");
        let b_if = unique("kvb");
        sh("ip", &["link", "add", &a_if, "type", "veth", "peer", "name", &b_if]);
        sh("ip", &["link", "set", &a_if, "netns", &a.name]);
        sh("ip", &["link", "set", &b_if, "netns", &b.name]);
        let a_ip = format!("10.231.{subnet_octet}.1");
        let b_ip = format!("10.231.{subnet_octet}.2");
        sh("ip", &["-n", &a.name, "addr", "add", &format!("{a_ip}/24"), "dev", &a_if]);
        sh("ip", &["-n", &b.name, "addr", "add", &format!("{b_ip}/24"), "dev", &b_if]);
        sh("ip", &["-n", &a.name, "link", "set", &a_if, "up"]);
        sh("ip", &["-n", &b.name, "link", "set", &b_if, "up"]);
        // No IPv6 router solicitations or DAD noise in the captures.
        for (ns, ifname) in [(&a, &a_if), (&b, &b_if)] {
            let _ = ns.try_run("sysctl", &["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]);
        }
        Self { a, b, a_if, b_if, a_ip, b_ip }
    }
}

/// The kovn-monitor binary of this build (cargo xtask test builds it before the tests).
pub fn monitor_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/kovn-monitor
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("kovn-monitor");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p kovn-monitor`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A `kovn-monitor run` in a namespace, stopped with SIGINT on drop.
pub struct Daemon {
    pub child: Child,
    pub ns: String,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon in `ns` with `args` after `run`, on 127.0.0.1:`port`, and waits for
    /// its API (and for `wait_attached` interfaces to be attached).
    pub fn start(ns: &Netns, port: u16, args: &[&str], wait_attached: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kovn-monitor.log");
        let listen = format!("127.0.0.1:{port}");
        let bin = monitor_bin();
        let mut full = vec!["run", "--listen", &listen, "--poll-interval", "200ms"];
        full.extend_from_slice(args);
        let child = ns
            .command(bin.to_str().expect("utf-8 path"), &full)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn kovn-monitor");
        let mut d = Self { child, ns: ns.name.clone(), port, log, _dir: dir };
        // Loading and verifying the programs takes seconds, and much longer on a machine
        // loaded by parallel builds.
        let deadline = Instant::now() + Duration::from_secs(60) * timeout_scale();
        loop {
            if let Some(status) = d.child.try_wait().expect("wait") {
                panic!("kovn-monitor exited early ({status}):\n{}", d.log_text());
            }
            if let Some(h) = d.health()
                && h["attached_interfaces"].as_array().is_some_and(|a| a.len() >= wait_attached)
                && h["programs"].as_array().is_some_and(|p| !p.is_empty())
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "kovn-monitor not ready in {} s:\n{}",
                60 * timeout_scale(),
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the API from inside the daemon's namespace with curl (an independent
    /// HTTP client; the CLI's own client is tested through `flows`).
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn health(&self) -> Option<serde_json::Value> {
        self.get("/healthz")
    }

    /// The sum of a metric's samples in a `/metrics` scrape whose labels include `labels`.
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/metrics", self.port))
            .output()
            .expect("curl /metrics");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The flows via the CLI (`kovn-monitor flows -o json`), as the operator would get them.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        let bin = monitor_bin();
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&bin)
            .args(["flows", "-o", "json", "--endpoint", &endpoint])
            .output()
            .expect("run kovn-monitor flows");
        assert!(out.status.success(), "flows failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("flows JSON")
    }

    /// Waits for one more poll so the API reflects everything sent so far.
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(700));
    }

    /// SIGINT and wait; returns the exit status and the log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with(libc::SIGINT)
    }

    /// `signal` and wait; returns the exit status and the log.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let status = self.interrupt(signal);
        (status, self.log_text())
    }

    fn interrupt(&mut self, signal: i32) -> std::process::ExitStatus {
        // `ip netns exec` execs the program: the child pid is the daemon's.
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt(libc::SIGINT);
        }
    }
}

/// tcpdump writing a pcap of one interface in a namespace, until stopped.
pub struct Capture {
    child: Child,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// tcpdump on `iface` of a namespace of this crate, every packet.
    pub fn start(ns: &Netns, iface: &str) -> Self {
        capture_in(&ns.name, iface, "")
    }

    /// Stops tcpdump (SIGINT flushes the file) and parses what it wrote.
    pub fn finish(mut self) -> Vec<pcap::Packet> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        pcap::read(&self.path)
    }
}

/// Finds a flow in the daemon's JSON by its 5-tuple (initiator first).
pub fn find_flow<'a>(
    flows: &'a [serde_json::Value],
    src: &str,
    dst: &str,
    proto: &str,
    dport: Option<u16>,
) -> Option<&'a serde_json::Value> {
    flows.iter().find(|f| {
        f["src_ip"] == src
            && f["dst_ip"] == dst
            && f["protocol"] == proto
            && dport.is_none_or(|p| f["dst_port"] == p)
    })
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns only affects the
/// calling thread), so tests use real sockets in the namespace with full control of ports.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A TCP echo server (one thread, sequential connections) and a UDP echo server in `ns`,
/// running until the process ends or `stop` is set.
pub fn echo_servers(
    ns: &str,
    ip: &str,
    tcp_port: u16,
    udp_port: u16,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::io::{Read as _, Write as _};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tcp_addr, udp_addr) = (format!("{ip}:{tcp_port}"), format!("{ip}:{udp_port}"));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    let r = ready_tx.clone();
    in_netns(ns, move || {
        let l = std::net::TcpListener::bind(&tcp_addr).expect("bind tcp");
        l.set_nonblocking(true).expect("nonblocking");
        r.send(()).expect("ready");
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).expect("blocking");
                    c.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let s = stop.clone();
    in_netns(ns, move || {
        let u = std::net::UdpSocket::bind(&udp_addr).expect("bind udp");
        u.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        }
    });
    for _ in 0..2 {
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("echo servers ready");
    }
    stop
}

/// tcpdump on `iface` inside an existing namespace this crate does not own (a lab node, say),
/// keeping only packets matching the capture `filter` (tcpdump syntax, "" for all); stop it and
/// read the packets with [`Capture::finish`].
pub fn capture_in(netns: &str, iface: &str, filter: &str) -> Capture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("capture.pcap");
    let mut args = vec!["netns", "exec", netns, "tcpdump", "-i", iface, "-w"];
    args.extend([path.to_str().expect("utf-8"), "-U", "-n", "-s", "0", "--immediate-mode"]);
    args.extend(filter.split_whitespace());
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&buf).contains("listening on") {
        use std::io::Read as _;
        assert!(Instant::now() < deadline, "tcpdump in {netns} did not start");
        match stderr.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => panic!("tcpdump in {netns} ended: {}", String::from_utf8_lossy(&buf)),
        }
    }
    std::thread::spawn(move || {
        use std::io::Read as _;
        let _ = stderr.read_to_end(&mut Vec::new());
    });
    Capture { child, path, _dir: dir }
}

/// One kovn program hooked to an interface, as the kernel reports it (not as kovn does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hooked {
    /// "tcx" or "clsact".
    pub mode: &'static str,
    /// "ingress" or "egress".
    pub direction: &'static str,
    pub prog_id: u64,
}

/// Every kovn program hooked to `iface` in `ns`: cls_bpf filters named `kovn_*` under clsact
/// (from `tc -j filter show`), and tcx links to any of `tcx_progs` (id, name) (from `bpftool
/// link`; bpftool 7.1 names neither the interface nor the direction of a tcx link, so only the
/// programs of a known process can be matched there, direction by program name; tcx links
/// die with their process anyway).
pub fn kovn_hooks(ns: &Netns, iface: &str, tcx_progs: &[(u64, String)]) -> Vec<Hooked> {
    let mut hooks = Vec::new();
    for direction in ["ingress", "egress"] {
        let out = ns.try_run("tc", &["-j", "filter", "show", "dev", iface, direction]);
        // No clsact qdisc (the tcx path): tc prints nothing or an error, no filters either way.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        for f in v.as_array().into_iter().flatten() {
            let opts = &f["options"];
            if opts["bpf_name"].as_str().is_some_and(|n| n.starts_with("kovn_")) {
                let prog_id = opts["prog"]["id"].as_u64().expect("cls_bpf filter with a program id");
                hooks.push(Hooked { mode: "clsact", direction, prog_id });
            }
        }
    }
    let out = ns.run("bpftool", &["-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    for l in v.as_array().into_iter().flatten() {
        let prog_id = l["prog_id"].as_u64().unwrap_or(0);
        if let Some((_, name)) = tcx_progs.iter().find(|(id, _)| *id == prog_id) {
            let direction = if name.contains("egress") { "egress" } else { "ingress" };
            hooks.push(Hooked { mode: "tcx", direction, prog_id });
        }
    }
    hooks
}

/// How much longer than on bare metal bounded waits may take: `KOVN_TEST_TIMEOUT_SCALE`
/// (an integer, default 1). The kernel matrix sets it for kernels emulated under QEMU/TCG,
/// where everything runs 5-10x slower. Only deadlines of polls scale; nothing asserts a time.
pub fn timeout_scale() -> u32 {
    std::env::var("KOVN_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}
