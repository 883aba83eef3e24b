//! The drill-down (`kovn-monitor trace`, `GET /api/v1/trace`, drill-down on alert) in the lab,
//! as root: each injected fault is traced the way a user would (the CLI, straight from a
//! finding's id where there is one) and the first line must name the cause; the cause is checked
//! against OVS's and OVN's own view (the drop flow's OpenFlow counter, the ACL row in the
//! northbound, the tunnel port's remote IP in the node's OVSDB, ovs-vswitchd's log).
//!
//! One lab, `trt<pid>`, serves the file (not `kt*`: lab.rs removes those it believes stale). The
//! tests run one at a time (a mutex, and `--test-threads=1`); `t9_down` takes the lab down last
//! and an `atexit` handler removes it when only some tests ran or a panic ended the process.
//! Labs `trt<pid>` whose test process is gone are removed first.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use kovn_tests::lab_fixture::{HealOnDrop, SharedLab};
use kovn_tests::monitor_bin;
use serde_json::Value;
use xtask::lab::{
    self, ACL_DENY_PRIORITY, DownOutcome, FAULT_COOKIE, FaultSpec, Lab, OVS_DROP_PRIORITY, Pod, acl_name,
    monitor_url, monitors, ovs,
};

macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "[trace-test] {}", format!($($arg)*));
    }};
}

/// The file's lab, `trt<pid>` (see kovn_tests::lab_fixture).
static LAB: SharedLab = SharedLab::new("trt");

fn fixture() -> (MutexGuard<'static, ()>, Lab) {
    LAB.get()
}

/// Two pods on node1 (a, c) and one on node2 (b).
fn pods(lab: &Lab) -> (Pod, Pod, Pod) {
    let on1: Vec<&Pod> = lab.pods_on("node1").collect();
    let b = lab.pods_on("node2").next().expect("a pod on node2").clone();
    (on1[0].clone(), b, on1[1].clone())
}

/// `kovn-monitor trace ARGS` against node1's monitor: (exit ok, stdout, stderr).
fn cli(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    let endpoint = monitor_url(lab, "node1");
    let out = Command::new(monitor_bin())
        .args(["trace", "--endpoint", &endpoint])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kovn-monitor trace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET /api/v1/trace?query` on node1: (status, body).
fn api(lab: &Lab, query: &str) -> (u16, Value) {
    let url = format!("{}/api/v1/trace?{query}", monitor_url(lab, "node1"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        (status, body)
    })
}

fn tcp_ok(from: &Pod, dst: SocketAddrV4, sport: u16) -> bool {
    let target = format!("TCP4:{dst},connect-timeout=1.5,sourceport={sport},reuseaddr");
    let line = format!("trace test {sport}\n");
    let mut child = Command::new("timeout")
        .args(["5", "ip", "netns", "exec", &from.netns, "socat", "-t", "1", "-", &target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn socat");
    let _ = child.stdin.take().expect("stdin").write_all(line.as_bytes());
    let out = child.wait_with_output().expect("socat");
    String::from_utf8_lossy(&out.stdout) == line
}

fn ping_ok(from: &Pod, dst: Ipv4Addr, id: u16, size: u32) -> bool {
    let (id, size, dst) = (id.to_string(), size.to_string(), dst.to_string());
    Command::new("ip")
        .args(["netns", "exec", &from.netns, "ping", "-n", "-c", "1", "-W", "1", "-e", &id, "-s", &size])
        .args(["-M", "do", &dst])
        .output()
        .expect("ping")
        .status
        .success()
}

/// Waits (bounded) for one firing finding of `kind` for src -> dst on node1.
fn firing(lab: &Lab, kind: &str, src: &Pod, dst: &Pod) -> Value {
    let url = format!("{}/api/v1/alerts", monitor_url(lab, "node1"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
        let all = v["alerts"].as_array().cloned().unwrap_or_default();
        if let Some(a) = all.iter().find(|a| {
            a["state"] == "firing"
                && a["kind"] == kind
                && a["src"]["pod"] == src.name.as_str()
                && a["dst"]["pod"] == dst.name.as_str()
        }) {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "no firing {kind} finding {} -> {}: {all:#?}", src.name, dst.name);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (bounded) until no finding for src -> dst fires on node1.
fn resolved(lab: &Lab, src: &Pod, dst: &Pod) {
    let url = format!("{}/api/v1/alerts", monitor_url(lab, "node1"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
        let all = v["alerts"].as_array().cloned().unwrap_or_default();
        if !all.iter().any(|a| {
            a["state"] == "firing"
                && a["src"]["pod"] == src.name.as_str()
                && a["dst"]["pod"] == dst.name.as_str()
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "still firing for {} -> {}: {all:#?}", src.name, dst.name);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the drill-down the monitor ran when `id` fired.
fn drilldown_of(lab: &Lab, id: &Value) -> Value {
    let url = format!("{}/api/v1/alerts", monitor_url(lab, "node1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
        let all = v["alerts"].as_array().cloned().unwrap_or_default();
        if let Some(d) = all.iter().find(|a| &a["id"] == id).map(|a| a["drilldown"].clone())
            && !d.is_null()
        {
            return d;
        }
        assert!(Instant::now() < deadline, "no drill-down attached to {id}: {all:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn t1_healthy_cross_node_shows_both_halves() {
    let (_serial, lab) = fixture();
    let t = Instant::now();
    let (a, b, c) = pods(&lab);
    let node2 = lab.node(&b.node).expect("node2").clone();
    assert!(tcp_ok(&a, SocketAddrV4::new(b.ip, b.tcp_port), 42001), "healthy lab: {} -> {}", a.name, b.name);
    let (status, r) =
        api(&lab, &format!("src={}&dst={}&proto=tcp&sport=42001&dport={}", a.ip, b.ip, b.tcp_port));
    assert_eq!(status, 200, "{r:#}");
    let verdict = r["verdict"].as_str().expect("verdict");
    assert!(!verdict.contains('\n'), "one line: {verdict}");
    // Independently: the tunnel port node1's OVSDB has towards node2's address.
    let tunnel_ports = ovs::vsctl(
        lab.node("node1").expect("node1"),
        &["--bare", "--columns=name", "find", "Interface", &format!("options:remote_ip=\"{}\"", node2.ip)],
    )
    .expect("vsctl");
    assert!(!ovs::bare_values(&tunnel_ports).is_empty(), "node1 has a tunnel to {}", node2.ip);
    assert_eq!(r["ofproto_trace"]["outcome"]["kind"], "tunnel_push", "{r:#}");
    assert_eq!(r["ofproto_trace"]["outcome"]["remote_ip"], node2.ip.to_string(), "{r:#}");
    let want = format!("output to tunnel towards {} ({}", node2.name, node2.ip);
    assert!(verdict.starts_with(&want), "{verdict}\nwant: {want}");
    let remote = &r["remote"];
    assert_eq!(remote["node"], node2.name.as_str(), "{r:#}");
    let node1_ip = lab.node("node1").expect("node1").ip.to_string();
    assert!(
        remote["in_port"]["kind"] == "geneve" && remote["in_port"]["remote_ip"] == node1_ip.as_str(),
        "the remote half starts at node2's tunnel port from node1: {remote:#}"
    );
    let delivered =
        format!("then on {} delivered to pod {}/{}'s port {}", node2.name, b.namespace, b.name, b.host_veth);
    assert!(verdict.ends_with(&delivered), "{verdict}\nwant: ...{delivered}");
    assert_eq!(r["ovn_trace"]["outcome"]["port"], b.iface_id.as_str(), "ovn-trace delivers: {r:#}");
    // Same node: delivered straight to the pod's port, no tunnel.
    let (status, r) = api(&lab, &format!("src={}&dst={}&proto=tcp&dport={}", a.ip, c.ip, c.tcp_port));
    assert_eq!(status, 200, "{r:#}");
    let want = format!("delivered to pod {}/{}'s port {} on node1", c.namespace, c.name, c.host_veth);
    assert_eq!(r["verdict"], want.as_str(), "{r:#}");
    assert!(r["remote"].is_null());
    note!("t1 in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t2_ovs_drop_flow_is_the_deciding_rule() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    let node1 = lab.node(&a.node).expect("node1").clone();
    lab.inject(FaultSpec::OvsDrop { node: node1.name.clone(), dst: b.ip }).expect("inject ovs-drop");
    let _heal = HealOnDrop(lab.clone());
    assert!(!tcp_ok(&a, SocketAddrV4::new(b.ip, b.tcp_port), 42011), "br-int drops it");
    // Independently: OVS counted packets on the fault's own flow.
    let dump =
        ovs::ofctl(&node1, "dump-flows", &[format!("cookie={FAULT_COOKIE:#x}/-1")]).expect("dump-flows");
    assert!(!dump.contains("n_packets=0,"), "the drop flow matched: {dump}");
    let sport = "42011".to_string();
    let dport = b.tcp_port.to_string();
    let (ok, out, err) = cli(
        &lab,
        &["--src", &a.ip.to_string(), "--dst", &b.ip.to_string(), "--sport", &sport, "--dport", &dport],
    );
    assert!(ok, "trace failed: {err}");
    let first = out.lines().next().unwrap_or("");
    let want = format!("dropped by table 0, priority {OVS_DROP_PRIORITY}, cookie {FAULT_COOKIE:#x}");
    assert!(first.starts_with(&want), "first line: {first}\nwant: {want}\n{out}");
    assert!(first.contains("not an OVN logical flow"), "{first}");
    let (_, r) = api(&lab, &format!("src={}&dst={}&dport={}", a.ip, b.ip, b.tcp_port));
    let rule = &r["deciding_rule"];
    assert_eq!(
        (rule["table"].as_u64(), rule["priority"].as_u64()),
        (Some(0), Some(OVS_DROP_PRIORITY as u64)),
        "{r:#}"
    );
    assert_eq!(rule["cookie"], format!("{FAULT_COOKIE:#x}").as_str());
    assert!(
        r["flows"]
            .as_array()
            .expect("flows")
            .iter()
            .any(|f| f["cookie"] == format!("{FAULT_COOKIE:#x}").as_str()
                && f["n_packets"].as_u64().unwrap_or(0) > 0),
        "dump-flows shows the drop flow with its packets: {:#}",
        r["flows"]
    );
    // Healed and answered again: the finding resolves, so the next fault is a new episode.
    lab.heal(None).expect("heal");
    assert!(tcp_ok(&a, SocketAddrV4::new(b.ip, b.tcp_port), 42012), "healed");
    resolved(&lab, &a, &b);
    note!("t2 in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t3_acl_deny_is_named_from_the_alert() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    lab.inject(FaultSpec::AclDeny { src: a.name.clone(), dst: b.name.clone() }).expect("inject acl-deny");
    let _heal = HealOnDrop(lab.clone());
    assert!(!tcp_ok(&a, SocketAddrV4::new(b.ip, b.tcp_port), 42021), "the ACL drops it");
    let name = acl_name(&a, &b);
    // Independently: the ACL row in the northbound.
    let row =
        ovs::nbctl(&lab, &["--bare", "--columns=priority,action", "find", "ACL", &format!("name={name}")])
            .expect("nbctl");
    assert_eq!(ovs::bare_values(&row), [ACL_DENY_PRIORITY.to_string(), "drop".to_string()], "{row}");
    let finding = firing(&lab, "request_without_reply", &a, &b);
    let id = finding["id"].as_str().expect("id").to_string();
    // As a user would: the id straight from `kovn-monitor alerts`.
    let endpoint = monitor_url(&lab, "node1");
    let alerts =
        Command::new(monitor_bin()).args(["alerts", "--endpoint", &endpoint]).output().expect("alerts");
    assert!(String::from_utf8_lossy(&alerts.stdout).contains(&format!("id={id}")));
    let (ok, out, err) = cli(&lab, &["--alert", &id]);
    assert!(ok, "trace --alert failed: {err}");
    let first = out.lines().next().unwrap_or("");
    let policy = format!("ACL '{name}' of NetworkPolicy {}/{name}", b.namespace);
    assert!(first.contains(&policy), "first line: {first}\nwant: {policy}\n{out}");
    assert!(
        first.starts_with("output to tunnel towards node2")
            && first.contains("then on node2 dropped by table"),
        "{first}"
    );
    let (_, r) = api(&lab, &format!("alert={id}"));
    let acl = &r["remote"]["deciding_rule"]["logical_flow"]["acl"];
    assert_eq!(acl["priority"].as_u64(), Some(ACL_DENY_PRIORITY as u64), "{r:#}");
    assert_eq!(acl["direction"], "to-lport");
    // OVN puts ACL logical flows 1000 above the ACL's priority.
    assert_eq!(
        r["remote"]["deciding_rule"]["priority"].as_u64(),
        Some(ACL_DENY_PRIORITY as u64 + 1000),
        "{:#}",
        r["remote"]["deciding_rule"]
    );
    // The drill-down the monitor ran itself when the finding fired.
    let d = drilldown_of(&lab, &finding["id"]);
    assert!(d["verdict"].as_str().unwrap_or("").contains(&policy), "drill-down on alert: {d:#}");
    note!("t3 in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t4_mtu_fault_is_an_mtu_verdict() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    let node1 = lab.node(&a.node).expect("node1").clone();
    lab.inject(FaultSpec::Mtu { pod: a.name.clone(), mtu: 1500 }).expect("inject mtu");
    let _heal = HealOnDrop(lab.clone());
    assert!(ping_ok(&a, b.ip, 4301, 56), "small packets pass");
    assert!(!ping_ok(&a, b.ip, 4302, 1472), "1500-byte DF packets cannot cross");
    // Independently: ovs-vswitchd could not send the encapsulated frame.
    let log = std::fs::read_to_string(node1.ovs_rundir.join("ovs-vswitchd.log")).unwrap_or_default();
    assert!(log.contains("Message too long"), "ovs-vswitchd logged the oversized send");
    let finding = firing(&lab, "mtu", &a, &b);
    let id = finding["id"].as_str().expect("id").to_string();
    let (ok, out, err) = cli(&lab, &["--alert", &id]);
    assert!(ok, "trace --alert failed: {err}");
    let first = out.lines().next().unwrap_or("");
    // Independently: the MTU of node1's NIC, read in its netns.
    let mtu_file = format!("/sys/class/net/{}/mtu", node1.underlay_iface);
    let cat =
        Command::new("ip").args(["netns", "exec", &node1.netns, "cat", &mtu_file]).output().expect("cat");
    let underlay_mtu = String::from_utf8_lossy(&cat.stdout).trim().to_string();
    assert!(!underlay_mtu.is_empty(), "{mtu_file} in {}", node1.netns);
    assert!(
        first.starts_with("MTU: a 1500-byte packet would be sent to the tunnel towards node2 at "),
        "{first}\n{out}"
    );
    assert!(first.contains(&format!("underlay MTU {underlay_mtu}")), "{first}");
    let (_, r) = api(&lab, &format!("alert={id}"));
    let m = &r["mtu"];
    assert!(
        m["fits"] == false && m["outer_bytes"].as_u64() > m["underlay_mtu"].as_u64(),
        "the encapsulated packet exceeds the underlay: {m:#}"
    );
    note!("t4 in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t5_bad_arguments_get_one_line_errors() {
    let (_serial, lab) = fixture();
    let (a, b, _) = pods(&lab);
    let (src, dst) = (a.ip.to_string(), b.ip.to_string());
    for args in [
        vec!["--src", "10.16.0.300", "--dst", &dst, "--dport", "80"],
        vec!["--src", &src, "--dst", &dst, "--proto", "sctp", "--dport", "80"],
        vec!["--src", &src, "--dst", &dst],
        vec!["--src", &src, "--dst", &dst, "--dport", "99999"],
        vec!["--alert", "x", "--src", &src, "--dst", &dst],
        vec!["--flow", "no-such-flow"],
        vec!["--src", &dst, "--dst", &src, "--dport", "80"],
        vec![],
    ] {
        let (ok, out, err) = cli(&lab, &args);
        assert!(!ok && out.is_empty(), "{args:?} should fail: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got:\n{err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    for (q, status) in [
        ("src=a&dst=b&dport=1", 400),
        ("src=10.16.0.2&dst=10.16.0.5&dport=1&cmd=x", 400),
        ("flow=none", 404),
        (format!("src={dst}&dst={src}&dport=80").as_str(), 400),
    ] {
        let (s, body) = api(&lab, q);
        assert_eq!(s, status, "{q}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{q}: {body}");
    }
}

#[test]
fn t9_down() {
    let (_serial, lab) = fixture();
    assert!(matches!(lab::down(&lab.name), Ok(DownOutcome::Removed { .. })), "lab down");
    assert!(!lab.state_dir.exists(), "{} left", lab.state_dir.display());
}
