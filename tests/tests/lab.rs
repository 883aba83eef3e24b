//! The lab end to end, as root: a real Kube-OVN-like cluster of two nodes (OVS netdev datapath,
//! OVN, Geneve) with a kovn-monitor per node, healthy traffic, the OVN/OVS tracing tools, and
//! every fault kind, each observed independently of kovn (the probe's own outcome, nftables or
//! OpenFlow counters, tcpdump, OVS logs, ovn-trace) and then in what the monitors report.
//!
//! One lab, `kt<pid>`, serves the whole file: the first test brings it up and starts the
//! monitors (`fixture`), the tests run one at a time (`cargo xtask test` passes
//! `--test-threads=1`; a mutex serialises them anyway), and `t09_down_leaves_nothing`, last in
//! name order, takes it down and checks nothing is left. The lab is removed whatever happens:
//!
//! - a failing test does not stop the others, and the final test still runs;
//! - when only some tests run (a name filter) or the process ends early through a panic outside
//!   a test, an `atexit` handler runs `lab down` (registered before `up`, a no-op when the lab
//!   is already gone);
//! - a process killed outright (SIGKILL, a CI timeout) runs nothing, so the fixture first
//!   removes every `kt<pid>` lab whose test process no longer exists.
//!
//! Each fault test heals in a drop guard, so a failed assertion does not leave its fault behind
//! for the next test. Every probe uses its own source port (TCP) or echo identifier (ICMP), so
//! flows of different cases never mix. Timings go straight to stderr (not captured).

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use kovn_tests::capture_in;
use kovn_tests::lab_fixture::{HealOnDrop, SharedLab};
use kovn_tests::pod_probe::{self, Outcome};
use serde_json::Value;
use xtask::lab::{
    self, CutHow, DownOutcome, FAULT_COOKIE, FaultSpec, Lab, Pod, TCP_ECHO_PORT, TrafficOptions, monitor_url,
    monitors, ovs, traffic,
};

/// One poll of the monitors (1 s) and some slack: flows read after this include what was sent.
const SETTLE: Duration = Duration::from_millis(1500);

/// Progress and timings, written to stderr directly so they show even when tests pass (the
/// harness only captures `print!`/`eprint!`).
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "[lab-test] {}", format!($($arg)*));
    }};
}

/// The file's lab, `kt<pid>` (see kovn_tests::lab_fixture).
static LAB: SharedLab = SharedLab::new("kt");

fn fixture() -> (MutexGuard<'static, ()>, Lab) {
    LAB.get()
}

fn node_of<'a>(lab: &'a Lab, pod: &Pod) -> &'a lab::Node {
    lab.node(&pod.node).expect("pod's node")
}

/// The pods the fault tests use: `a` and `c` on node1, `b` on node2.
fn pods(lab: &Lab) -> (Pod, Pod, Pod) {
    let on1: Vec<&Pod> = lab.pods_on("node1").collect();
    let b = lab.pods_on("node2").next().expect("a pod on node2").clone();
    (on1[0].clone(), b, on1[1].clone())
}

/// The monitor's findings on `node` (`GET /api/v1/alerts`).
fn alerts(lab: &Lab, node: &str) -> Vec<Value> {
    let url = format!("{}/api/v1/alerts", monitor_url(lab, node));
    let v = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    v["alerts"].as_array().cloned().unwrap_or_default()
}

fn names_pair(a: &Value, src: &Pod, dst: &Pod) -> bool {
    a["src"]["pod"] == src.name.as_str() && a["dst"]["pod"] == dst.name.as_str()
}

/// Waits (up to 12 s: the 3 s reply timeout, a poll, the verdict) for exactly one firing
/// finding of `kind` on `node` for the pair, with the verdict `hop`; returns it.
fn expect_finding(lab: &Lab, node: &str, kind: &str, src: &Pod, dst: &Pod, hop: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let all = alerts(lab, node);
        let firing: Vec<&Value> = all.iter().filter(|a| a["state"] == "firing").collect();
        let mine: Vec<&&Value> =
            firing.iter().filter(|a| a["kind"] == kind && names_pair(a, src, dst)).collect();
        if mine.len() == 1 && mine[0]["verdict"]["hop"] == hop {
            let a = (*mine[0]).clone();
            assert!(
                firing.iter().all(|f| f["id"] == a["id"]),
                "exactly one finding for one fault, got {}: {all:#?}",
                firing.len()
            );
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no single firing {kind} finding {}->{} with verdict {hop} on {node}: {all:#?}",
            src.name,
            dst.name
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for the finding `id` to be resolved on `node` (the healed pair is answered again).
fn expect_resolved(lab: &Lab, node: &str, id: &Value) {
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let all = alerts(lab, node);
        if all.iter().any(|a| &a["id"] == id && a["state"] == "resolved") {
            assert!(all.iter().all(|a| a["state"] != "firing"), "nothing fires once healed: {all:#?}");
            return;
        }
        assert!(Instant::now() < deadline, "finding {id} not resolved on {node}: {all:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The monitor's flows on `node` (`GET /api/v1/flows`).
fn flows(lab: &Lab, node: &str) -> Vec<Value> {
    let url = format!("{}/api/v1/flows", monitor_url(lab, node));
    let body = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(body["node"], node, "the monitor at {url} names its node: {body}");
    body["flows"].as_array().unwrap_or_else(|| panic!("no flows array from {url}: {body}")).clone()
}

/// The flow `src:sport -> dst` of `protocol` (ICMP: sport is the echo identifier).
fn find<'a>(
    flows: &'a [Value],
    protocol: &str,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
) -> Option<&'a Value> {
    flows.iter().find(|f| {
        f["protocol"] == protocol
            && f["src_ip"] == src.to_string()
            && f["dst_ip"] == dst.to_string()
            && f["src_port"] == sport
    })
}

/// Every flow between two addresses, either way, pretty-printed for assertion messages.
fn between(flows: &[Value], x: Ipv4Addr, y: Ipv4Addr) -> String {
    let (x, y) = (x.to_string(), y.to_string());
    let sel: Vec<&Value> = flows
        .iter()
        .filter(|f| (f["src_ip"] == x && f["dst_ip"] == y) || (f["src_ip"] == y && f["dst_ip"] == x))
        .collect();
    serde_json::to_string_pretty(&sel).expect("JSON")
}

fn u64_of(f: &Value, field: &str) -> u64 {
    f[field].as_u64().unwrap_or_else(|| panic!("no {field} in {f}"))
}

/// Packets the flow saw on interface `iface` in flow direction `dir` (`fwd`/`rev`).
fn iface_packets(f: &Value, iface: &str, dir: &str) -> u64 {
    f["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["name"] == iface && i["flow_direction"] == dir)
                .filter_map(|i| i["packets"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// A completed request/response conversation: answered, or answered and then closed with FINs.
fn assert_answered(f: &Value, what: &str) {
    let state = f["state"].as_str().unwrap_or("");
    assert!(
        matches!(state, "answered" | "closed")
            && u64_of(f, "replies") >= 1
            && u64_of(f, "requests_unanswered") == 0
            && u64_of(f, "packets_rev") > 0,
        "{what}: expected an answered flow, got {}",
        serde_json::to_string_pretty(f).expect("JSON")
    );
}

fn assert_unanswered(f: &Value, what: &str) {
    assert!(
        f["state"] == "unanswered" && u64_of(f, "requests_unanswered") >= 1 && u64_of(f, "packets_rev") == 0,
        "{what}: expected an unanswered flow, got {}",
        serde_json::to_string_pretty(f).expect("JSON")
    );
}

/// How long a TCP connect from a pod may take on this kernel.
const CONNECT_SECS: f32 = 1.5;

/// The lab's TCP echo (see `kovn_tests::pod_probe::tcp`).
fn tcp(from: &Pod, dst: SocketAddrV4, sport: u16) -> Outcome {
    pod_probe::tcp(from, dst, sport, CONNECT_SECS)
}

/// One ping from `from` with echo identifier `id`, payload `size`, DF when `df`.
fn ping(from: &Pod, dst: Ipv4Addr, id: u16, size: u32, df: bool) -> Outcome {
    let (id, size, dst) = (id.to_string(), size.to_string(), dst.to_string());
    let mut args =
        vec!["netns", "exec", &from.netns, "ping", "-n", "-c", "1", "-W", "1", "-e", &id, "-s", &size];
    if df {
        args.extend(["-M", "do"]);
    }
    args.push(&dst);
    let out = Command::new("ip").args(&args).output().expect("ping");
    Outcome {
        ok: out.status.success(),
        detail: format!(
            "ping {} -> {dst} id {id} -s {size}{}: {}\n{}{}",
            from.name,
            if df { " -M do" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `counter packets N` values of the rules matching `needle` in an nftables listing.
fn nft_counter(listing: &str, needle: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split("counter packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `ovn-trace --minimal` of a TCP SYN from `src` to `dst`:8080 on `src`'s logical switch.
fn ovn_trace(lab: &Lab, src: &Pod, dst: &Pod, sport: u16) -> String {
    let ls = &lab.subnet(&src.subnet).expect("subnet").logical_switch;
    let flow = format!(
        "inport == \"{}\" && eth.src == {} && eth.dst == {} && ip4.src == {} && ip4.dst == {} && \
         ip.ttl == 64 && tcp && tcp.src == {sport} && tcp.dst == {}",
        src.iface_id, src.mac, dst.mac, src.ip, dst.ip, dst.tcp_port
    );
    run("ovn-trace", &[&format!("--db={}", lab.central.sb_db()), "--minimal", ls, &flow])
}

/// `ovs-appctl ofproto/trace br-int` on `src`'s node of a TCP SYN from `src` to `dst`:8080.
fn ofproto_trace(lab: &Lab, src: &Pod, dst: &Pod) -> String {
    let node = node_of(lab, src);
    let flow = format!(
        "in_port={},tcp,dl_src={},dl_dst={},nw_src={},nw_dst={},nw_ttl=64,tp_src=40999,tp_dst={},tcp_flags=syn",
        src.ofport.expect("ofport recorded"),
        src.mac,
        dst.mac,
        src.ip,
        dst.ip,
        dst.tcp_port
    );
    ovs::appctl(&node.vswitchd_ctl, &["ofproto/trace", &node.integration_bridge, &flow])
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The datapath actions after the last recirculation (conntrack makes the trace resume).
fn final_actions(trace: &str) -> &str {
    trace.lines().rfind(|l| l.starts_with("Datapath actions:")).unwrap_or("")
}

/// Whether a process runs (zombies waiting for their parent to reap them do not).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn inject(lab: &mut Lab, spec: FaultSpec) {
    let t = Instant::now();
    let f = lab.inject(spec).unwrap_or_else(|e| panic!("{e:#}"));
    note!("injected {} in {:.1}s: {}", f.id, t.elapsed().as_secs_f32(), f.detail);
}

fn heal(lab: &mut Lab) {
    let healed = lab.heal(None).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(healed.len(), 1, "one fault healed: {healed:?}");
}

fn addr(p: &Pod) -> SocketAddrV4 {
    SocketAddrV4::new(p.ip, p.tcp_port)
}

#[test]
fn t01_healthy_mix_seen_on_both_nodes() {
    let (_serial, lab) = fixture();
    let t = Instant::now();
    let opts = TrafficOptions { duration: Duration::from_secs(3), seed: 1 };
    let report = traffic::run(&lab, &opts, |_| {}).expect("traffic");
    assert!(
        report.all_ok(),
        "healthy traffic failed: {}",
        serde_json::to_string_pretty(&report).expect("JSON")
    );
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));

    // A cross-node TCP pair of the mix, client on node1: each connection is on both nodes,
    // seen on the client's veth on node1 and on the server's veth on node2, answered on both.
    let plan = traffic::plan(&lab, opts.seed);
    let pair = |scenario: traffic::Scenario| {
        let item = plan
            .items
            .iter()
            .find(|i| {
                i.label == "tcp-echo"
                    && i.scenario == scenario
                    && lab.pod(&i.from).expect("pod").node == "node1"
            })
            .unwrap_or_else(|| panic!("no {scenario:?} tcp-echo from node1 in {plan:?}"));
        (lab.pod(&item.from).expect("pod").clone(), lab.pod(&item.to).expect("pod").clone())
    };
    let (a, b) = pair(traffic::Scenario::PodToPodCrossNode);
    let conns: Vec<&Value> = f1
        .iter()
        .filter(|f| {
            f["protocol"] == "tcp"
                && f["src_ip"] == a.ip.to_string()
                && f["dst_ip"] == b.ip.to_string()
                && f["dst_port"] == TCP_ECHO_PORT
        })
        .collect();
    assert!(
        conns.len() >= report.rounds as usize,
        "{} -> {}: expected one flow per round ({}) on node1: {}",
        a.name,
        b.name,
        report.rounds,
        between(&f1, a.ip, b.ip)
    );
    for f in conns {
        let sport = u64_of(f, "src_port") as u16;
        let what = format!("{}:{sport} -> {}:8080", a.name, b.name);
        assert_answered(f, &format!("{what} on node1"));
        assert!(iface_packets(f, &a.host_veth, "fwd") > 0, "{what}: not on {} (node1): {f}", a.host_veth);
        let on2 = find(&f2, "tcp", a.ip, sport, b.ip)
            .unwrap_or_else(|| panic!("{what}: missing on node2: {}", between(&f2, a.ip, b.ip)));
        assert_answered(on2, &format!("{what} on node2"));
        assert!(iface_packets(on2, &b.host_veth, "fwd") > 0, "{what}: not on {} (node2): {on2}", b.host_veth);
    }

    // A same-node pair: on its node only.
    let (c, d) = pair(traffic::Scenario::PodToPodSameNode);
    let local = f1.iter().find(|f| {
        f["protocol"] == "tcp" && f["src_ip"] == c.ip.to_string() && f["dst_ip"] == d.ip.to_string()
    });
    assert_answered(
        local
            .unwrap_or_else(|| panic!("{} -> {} not on node1: {}", c.name, d.name, between(&f1, c.ip, d.ip))),
        "same-node",
    );
    assert_eq!(between(&f2, c.ip, d.ip), "[]", "same-node {} -> {} must not appear on node2", c.name, d.name);

    // Packet and byte counts against tcpdump on the client's veth, for one fresh connection.
    let sport = 40100;
    let cap = capture_in(&node_of(&lab, &a).netns, &a.host_veth, &format!("tcp and port {sport}"));
    let probe = tcp(&a, addr(&b), sport);
    let packets = cap.finish();
    assert!(probe.ok, "{}", probe.detail);
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));
    let f = find(&f1, "tcp", a.ip, sport, b.ip)
        .unwrap_or_else(|| panic!("no flow: {}", between(&f1, a.ip, b.ip)));
    let a_ip = std::net::IpAddr::V4(a.ip);
    let fwd: Vec<_> = packets.iter().filter(|p| p.src == a_ip && p.sport == sport).collect();
    let rev: Vec<_> = packets.iter().filter(|p| p.dst == a_ip && p.dport == sport).collect();
    let bytes = |ps: &[&kovn_tests::pcap::Packet]| ps.iter().map(|p| p.l3_len()).sum::<u64>();
    let counts =
        (u64_of(f, "packets_fwd"), u64_of(f, "packets_rev"), u64_of(f, "bytes_fwd"), u64_of(f, "bytes_rev"));
    assert_eq!(
        counts,
        (fwd.len() as u64, rev.len() as u64, bytes(&fwd), bytes(&rev)),
        "kovn (packets fwd/rev, bytes fwd/rev) vs tcpdump on {}: flow {f}",
        a.host_veth
    );
    assert_eq!(
        (iface_packets(f, &a.host_veth, "fwd"), iface_packets(f, &a.host_veth, "rev")),
        (fwd.len() as u64, rev.len() as u64),
        "per-interface counts on {} vs tcpdump: {f}",
        a.host_veth
    );
    let on2 = find(&f2, "tcp", a.ip, sport, b.ip)
        .unwrap_or_else(|| panic!("no flow on node2: {}", between(&f2, a.ip, b.ip)));
    assert_eq!(
        (u64_of(on2, "packets_fwd"), u64_of(on2, "packets_rev")),
        (fwd.len() as u64, rev.len() as u64),
        "node2 saw every packet node1 saw: {on2}"
    );
    // The tunnel leg, from the outer headers on each node's NIC: the other node's IP and the
    // VNI, which OVN takes from the logical switch's datapath tunnel key (asked of OVN itself).
    let ls = &lab.subnet(&b.subnet).expect("subnet").logical_switch;
    let key = run(
        "ovn-sbctl",
        &[
            &format!("--db={}", lab.central.sb_db()),
            "--bare",
            "--columns=tunnel_key",
            "find",
            "Datapath_Binding",
            &format!("external_ids:name={ls}"),
        ],
    );
    let vni: u64 = key.trim().parse().unwrap_or_else(|_| panic!("tunnel key of {ls}: {key:?}"));
    let encap = format!("{:?}", lab.tunnel).to_lowercase();
    for (flow, local, remote) in [(f, &a.node, &b.node), (on2, &b.node, &a.node)] {
        let t = &flow["tunnel"];
        let remote_ip = lab.node(remote).expect("node").ip.to_string();
        assert_eq!(
            (t["remote_ip"].as_str(), t["remote_node"].as_str(), t["vni"].as_u64(), t["encap"].as_str()),
            (Some(remote_ip.as_str()), Some(remote.as_str()), Some(vni), Some(encap.as_str())),
            "the tunnel leg on {local}: {flow:#}"
        );
        // Every packet of the flow crossed the NIC encapsulated, once each way.
        assert_eq!(
            t["outer_packets"].as_u64(),
            Some(u64_of(flow, "packets_fwd") + u64_of(flow, "packets_rev")),
            "outer packets on {local}: {flow:#}"
        );
    }
    note!(
        "t01 healthy mix: {} rounds, {} items, in {:.1}s",
        report.rounds,
        report.items.len(),
        t.elapsed().as_secs_f32()
    );
}

#[test]
fn t02_ovn_trace_and_ofproto_trace() {
    let (_serial, lab) = fixture();
    let t = Instant::now();
    let (a, b, c) = pods(&lab);
    for dst in [&b, &c] {
        let trace = ovn_trace(&lab, &a, dst, 40200);
        let want = format!("output(\"{}\");", dst.iface_id);
        assert!(trace.contains(&want), "ovn-trace {} -> {}: no {want} in:\n{trace}", a.name, dst.name);
    }
    let cross = ofproto_trace(&lab, &a, &b);
    let actions = final_actions(&cross);
    let remote = node_of(&lab, &b).ip.to_string();
    assert!(
        actions.contains("tnl_push")
            && actions.contains("geneve")
            && actions.contains(&format!("dst={remote}")),
        "ofproto/trace {} -> {} (cross-node) should encapsulate to {remote}:\n{cross}",
        a.name,
        b.name
    );
    let local = ofproto_trace(&lab, &a, &c);
    let actions = final_actions(&local);
    assert!(
        !actions.contains("tnl_push") && !actions.trim_end().ends_with("drop"),
        "ofproto/trace {} -> {} (same node) should deliver locally:\n{local}",
        a.name,
        c.name
    );
    note!("t02 traces in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t03_fault_reply_drop() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    inject(&mut lab, FaultSpec::ReplyDrop { pod: b.name.clone() });
    let _heal = HealOnDrop(lab.clone());
    let probe = tcp(&a, addr(&b), 41001);
    assert!(!probe.ok, "replies are dropped, yet: {}", probe.detail);
    // Independently of kovn: the server's SYN-ACKs hit the fault's nftables counter.
    let listing =
        run("ip", &["netns", "exec", &b.netns, "nft", "list", "table", "inet", "kovn_fault_reply_drop"]);
    assert!(nft_counter(&listing, "syn,ack") > 0, "no SYN-ACK dropped:\n{listing}\n{}", probe.detail);
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));
    let on1 = find(&f1, "tcp", a.ip, 41001, b.ip)
        .unwrap_or_else(|| panic!("not on node1: {}", between(&f1, a.ip, b.ip)));
    assert_unanswered(on1, "requester's node");
    let on2 = find(&f2, "tcp", a.ip, 41001, b.ip)
        .unwrap_or_else(|| panic!("not on node2: {}", between(&f2, a.ip, b.ip)));
    assert!(
        u64_of(on2, "packets_fwd") > 0
            && u64_of(on2, "packets_rev") == 0
            && iface_packets(on2, &b.host_veth, "fwd") > 0,
        "the requests reach {} on node2, nothing comes back: {on2}",
        b.host_veth
    );
    // node2's monitor sees the SYN-ACKs die inside b's namespace (kfree_skb, NETFILTER_DROP)
    // and node1's verdict takes it from there: the pod and its own firewall are named.
    let finding =
        expect_finding(&lab, "node1", "request_without_reply", &a, &b, "dropped_in_destination_pod");
    let summary = finding["verdict"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!(
            "its reply was dropped inside the destination pod {}/{} by its firewall (NETFILTER_DROP",
            b.namespace, b.name
        )),
        "{finding:#}"
    );
    assert_eq!(
        finding["verdict"]["next_commands"][0],
        format!("ip netns exec {} nft list ruleset", b.netns),
        "{finding:#}"
    );
    heal(&mut lab);
    let probe = tcp(&a, addr(&b), 41002);
    assert!(probe.ok, "healed: {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "tcp", a.ip, 41002, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip))),
        "healed",
    );
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t03 reply-drop in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t04_fault_ovs_drop() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    let node1 = node_of(&lab, &a).clone();
    inject(&mut lab, FaultSpec::OvsDrop { node: node1.name.clone(), dst: b.ip });
    let _heal = HealOnDrop(lab.clone());
    let probe = tcp(&a, addr(&b), 41011);
    assert!(!probe.ok, "br-int drops it, yet: {}", probe.detail);
    // Independently: the drop flow's own OpenFlow counter.
    let dump =
        ovs::ofctl(&node1, "dump-flows", &[format!("cookie={FAULT_COOKIE:#x}/-1")]).expect("dump-flows");
    let n_packets: u64 = dump
        .split("n_packets=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n_packets > 0, "the drop flow matched nothing:\n{dump}");
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));
    let on1 = find(&f1, "tcp", a.ip, 41011, b.ip)
        .unwrap_or_else(|| panic!("not on node1: {}", between(&f1, a.ip, b.ip)));
    assert_unanswered(on1, "requester's node");
    assert!(
        find(&f2, "tcp", a.ip, 41011, b.ip).is_none(),
        "dropped on node1, node2 must see nothing of it: {}",
        between(&f2, a.ip, b.ip)
    );
    let finding = expect_finding(&lab, "node1", "request_without_reply", &a, &b, "never_left_source");
    heal(&mut lab);
    let probe = tcp(&a, addr(&b), 41012);
    assert!(probe.ok, "healed: {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "tcp", a.ip, 41012, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip))),
        "healed",
    );
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t04 ovs-drop in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t05_fault_no_listener() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    inject(&mut lab, FaultSpec::NoListener { pod: b.name.clone(), port: b.tcp_port });
    let _heal = HealOnDrop(lab.clone());
    let probe = tcp(&a, addr(&b), 41021);
    // Independently: the client itself was refused (it got an RST).
    assert!(!probe.ok && probe.detail.contains("Connection refused"), "expected a refusal: {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    let on1 = find(&f1, "tcp", a.ip, 41021, b.ip)
        .unwrap_or_else(|| panic!("not on node1: {}", between(&f1, a.ip, b.ip)));
    assert!(on1["state"] == "reset" && u64_of(on1, "rst_rev") >= 1, "expected reset: {on1}");
    let finding = expect_finding(&lab, "node1", "connection_refused", &a, &b, "refused_by_destination");
    heal(&mut lab);
    let probe = tcp(&a, addr(&b), 41022);
    assert!(probe.ok, "healed: {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "tcp", a.ip, 41022, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip))),
        "healed",
    );
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t05 no-listener in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t06_fault_mtu() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    let node1 = node_of(&lab, &a).clone();
    inject(&mut lab, FaultSpec::Mtu { pod: a.name.clone(), mtu: 1500 });
    let _heal = HealOnDrop(lab.clone());
    let (big_id, small_id) = (4201, 4202);
    let big = ping(&a, b.ip, big_id, 1472, true);
    assert!(!big.ok, "a 1500-byte DF packet cannot cross a 1500-byte underlay with Geneve: {}", big.detail);
    let small = ping(&a, b.ip, small_id, 56, true);
    assert!(small.ok, "small packets still pass: {}", small.detail);
    // Independently: OVS could not send the encapsulated frame on the node's NIC.
    let vswitchd_log = std::fs::read_to_string(node1.ovs_rundir.join("ovs-vswitchd.log")).unwrap_or_default();
    assert!(
        vswitchd_log.contains("Message too long"),
        "ovs-vswitchd on node1 should log the oversized send; log tail:\n{}",
        monitors::log_tail(&node1.ovs_rundir.join("ovs-vswitchd.log"))
    );
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));
    let big_flow =
        find(&f1, "icmp", a.ip, big_id, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip)));
    assert_unanswered(big_flow, "large DF ping on node1");
    // The kernel's own evidence: each big DF request was larger than the overlay's path MTU
    // (underlay 1500 minus Geneve's 100) on the pod's veth.
    assert!(
        big_flow["mtu"]["oversized_packets"].as_u64().unwrap_or(0) >= 1
            && big_flow["mtu"]["oversized_max_bytes"].as_u64().unwrap_or(0) == 1500,
        "oversized DF packets counted against the 1400-byte path MTU: {big_flow}"
    );
    let small_flow =
        find(&f1, "icmp", a.ip, small_id, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip)));
    assert_answered(small_flow, "small ping on node1");
    // When the monitor watches the NIC as the underlay, the small ping left through it and the
    // big one never did: it left the pod and died inside the node.
    let nic = &node1.underlay_iface;
    if iface_packets(small_flow, nic, "fwd") > 0 {
        assert_eq!(iface_packets(big_flow, nic, "fwd"), 0, "the big ping never left {nic}: {big_flow}");
    }
    assert!(
        find(&f2, "icmp", a.ip, big_id, b.ip).is_none(),
        "node2 never sees the big ping: {}",
        between(&f2, a.ip, b.ip)
    );
    let finding = expect_finding(&lab, "node1", "mtu", &a, &b, "lost_in_tunnel");
    assert!(
        finding["evidence"]["max_request_bytes"].as_u64().unwrap_or(0) >= 1500,
        "the big request's size is the evidence: {finding:#}"
    );
    heal(&mut lab);
    let max = ping(&a, b.ip, 4203, a.mtu - 28, true);
    assert!(max.ok, "healed: the largest DF ping of the pod MTU passes: {}", max.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "icmp", a.ip, 4203, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip))),
        "healed",
    );
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t06 mtu in {:.1}s", t.elapsed().as_secs_f32());
}

/// The monitor's findings on `node`, asked from inside the node's namespace (its own address
/// answers there even while its NIC is down and the root namespace cannot reach it).
fn alerts_from_inside(lab: &Lab, node: &lab::Node) -> Vec<Value> {
    let url = format!("{}/api/v1/alerts", monitor_url(lab, &node.name));
    let v = kovn_tests::in_netns(&node.netns, move || monitors::get_json(&url, Duration::from_secs(5)))
        .join()
        .expect("the in-namespace request")
        .unwrap_or_else(|e| panic!("GET alerts inside {}: {e:#}", node.netns));
    v["alerts"].as_array().cloned().unwrap_or_default()
}

/// The tunnel between node1 and node2 cut each way a real incident cuts it, while two pods of
/// node1 talk to two pods of node2 and no same-node traffic runs: node1's monitor raises
/// exactly one firing finding, kind `tunnel`, whose verdict is the cause (the node's own
/// firewall, a loss on the wire between the nodes, the NIC down); node2's raises nothing;
/// healed, it resolves. Each cut is checked independently first (the probes' own outcome,
/// the rule's nftables counter, the link's state from `ip`).
#[test]
fn t07_fault_tunnel_cut() {
    let (_serial, mut lab) = fixture();
    let (a, b, c) = pods(&lab);
    let node1 = node_of(&lab, &a).clone();
    let node2 = node_of(&lab, &b).clone();
    let b2 = lab.pods_on(&node2.name).find(|p| p.name != b.name).expect("a second pod on node2").clone();
    let cases = [
        (CutHow::DropUdp, "tunnel_blocked_by_firewall", 41100),
        (CutHow::Path, "lost_in_tunnel", 41110),
        (CutHow::Down, "underlay_down", 41120),
    ];
    for (how, hop, port) in cases {
        let t = Instant::now();
        inject(&mut lab, FaultSpec::TunnelCut { from: node1.name.clone(), to: node2.name.clone(), how });
        let _heal = HealOnDrop(lab.clone());
        let cross = tcp(&a, addr(&b), port);
        let cross2 = tcp(&c, addr(&b2), port + 1);
        assert!(
            !cross.ok && !cross2.ok,
            "{how:?}: the tunnel is cut, yet: {} / {}",
            cross.detail,
            cross2.detail
        );
        // Independently: the cut itself.
        match how {
            CutHow::DropUdp => {
                let table = format!("kovn_fault_tunnel_cut_{}", node2.name);
                let listing =
                    run("ip", &["netns", "exec", &node1.netns, "nft", "list", "table", "netdev", &table]);
                assert!(nft_counter(&listing, "udp dport") > 0, "no Geneve packet dropped:\n{listing}");
            }
            CutHow::Path => {
                let tables = run("nft", &["list", "tables", "bridge"]);
                let table = tables
                    .lines()
                    .filter_map(|l| l.strip_prefix("table bridge "))
                    .find(|t| t.contains(&lab.name))
                    .unwrap_or_else(|| panic!("no bridge table of {} in the root netns:\n{tables}", lab.name))
                    .to_string();
                let listing = run("nft", &["list", "table", "bridge", &table]);
                assert!(
                    nft_counter(&listing, "udp dport") > 0,
                    "no Geneve packet dropped on the wire:\n{listing}"
                );
            }
            _ => {
                let link = run("ip", &["-n", &node1.netns, "-o", "link", "show", &node1.underlay_iface]);
                assert!(link.contains("state DOWN"), "{link}");
            }
        }
        // One finding on node1 with the cause; asked from inside node1 (its NIC may be down).
        let deadline = Instant::now() + Duration::from_secs(15);
        let finding = loop {
            let all = alerts_from_inside(&lab, &node1);
            let firing: Vec<&Value> = all.iter().filter(|a| a["state"] == "firing").collect();
            // Both pairs in it (the second request fails a little after the first).
            let pairs = |a: &Value| a["flows"].as_array().map_or(0, Vec::len);
            if firing.len() == 1
                && firing[0]["kind"] == "tunnel"
                && firing[0]["verdict"]["hop"] == hop
                && pairs(firing[0]) >= 2
            {
                break firing[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{how:?}: no single tunnel finding with verdict {hop} and both pairs: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        if how == CutHow::Down {
            assert!(
                finding["verdict"]["summary"].as_str().is_some_and(|s| s.contains(&node1.underlay_iface)),
                "the NIC is named: {finding:#}"
            );
        } else {
            assert_eq!(finding["remote_node"], node2.name.as_str(), "{finding:#}");
        }
        let on2: Vec<Value> =
            alerts(&lab, &node2.name).into_iter().filter(|a| a["state"] == "firing").collect();
        assert!(on2.is_empty(), "{how:?}: node2 raises nothing of its own: {on2:#?}");
        heal(&mut lab);
        let probe = tcp(&a, addr(&b), port + 2);
        let probe2 = tcp(&c, addr(&b2), port + 3);
        assert!(probe.ok && probe2.ok, "{how:?} healed: {} / {}", probe.detail, probe2.detail);
        std::thread::sleep(SETTLE);
        expect_resolved(&lab, &node1.name, &finding["id"]);
        note!("t07 tunnel-cut {how:?} in {:.1}s", t.elapsed().as_secs_f32());
    }
}

#[test]
fn t08_fault_acl_deny() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    inject(&mut lab, FaultSpec::AclDeny { src: a.name.clone(), dst: b.name.clone() });
    let _heal = HealOnDrop(lab.clone());
    let probe = tcp(&a, addr(&b), 41041);
    assert!(!probe.ok, "the ACL drops it, yet: {}", probe.detail);
    // Independently: OVN's own trace of that packet no longer reaches the server's port.
    let trace = ovn_trace(&lab, &a, &b, 41041);
    assert!(!trace.contains(&format!("output(\"{}\")", b.iface_id)), "ovn-trace still delivers:\n{trace}");
    std::thread::sleep(SETTLE);
    let (f1, f2) = (flows(&lab, "node1"), flows(&lab, "node2"));
    let on1 = find(&f1, "tcp", a.ip, 41041, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip)));
    assert_unanswered(on1, "requester's node");
    let delivered = find(&f2, "tcp", a.ip, 41041, b.ip).map_or(0, |f| iface_packets(f, &b.host_veth, "fwd"));
    assert_eq!(delivered, 0, "nothing reaches {}: {}", b.host_veth, between(&f2, a.ip, b.ip));
    let finding =
        expect_finding(&lab, "node1", "request_without_reply", &a, &b, "lost_before_destination_pod");
    heal(&mut lab);
    let probe = tcp(&a, addr(&b), 41042);
    assert!(probe.ok, "healed: {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "tcp", a.ip, 41042, b.ip).unwrap_or_else(|| panic!("{}", between(&f1, a.ip, b.ip))),
        "healed",
    );
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t08 acl-deny in {:.1}s", t.elapsed().as_secs_f32());
}

/// A fault on the service `shop/db`'s backend on node2, seen from a client on node1 through
/// the VIP: exactly one firing finding of the pod-to-service connection, naming the service
/// and the backend, with the verdict `hop` (what the same fault pod to pod gives); resolved
/// once healed and the backend answers again.
/// `named`: whether the kernel shows the backend (the post-DNAT packets left the client's node
/// or reached the backend); an ACL OVN evaluates on the client's node after the load balancer
/// drops them before either, and then only OVS's conntrack knows the backend: the finding's
/// drill-down reads it there and names it.
fn service_fault(
    spec: impl FnOnce(&Pod, &Pod) -> FaultSpec,
    hop: &str,
    named: bool,
    first_port: u16,
    what: &str,
) {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let svc = lab.service("db", lab::Protocol::Tcp).expect("service shop/db").clone();
    let vip = svc.vip_addr();
    let backend = svc
        .backends
        .iter()
        .find_map(|b| lab.pods.iter().find(|p| p.ip == *b.ip() && p.node == "node2"))
        .expect("a backend of shop/db on node2")
        .clone();
    let client = lab.pods_on("node1").find(|p| p.workload != "db").expect("a client on node1").clone();
    // Findings of earlier tests may still be firing (t08b does not wait for its resolution),
    // and their unanswered flows would join this one in a per-node-pair tunnel finding: wait
    // until node1's monitor has none firing (they resolve 30 s after their traffic stops).
    let quiet_by = Instant::now() + Duration::from_secs(120);
    loop {
        let firing: Vec<String> = alerts(&lab, "node1")
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| format!("{} {}", a["kind"], a["summary"]))
            .collect();
        if firing.is_empty() {
            break;
        }
        assert!(Instant::now() < quiet_by, "earlier findings still firing on node1 after 120 s: {firing:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Only findings raised after this fault count. Both times are node1's monitor's clock.
    let url = format!("{}/api/v1/alerts", monitor_url(&lab, "node1"));
    let before = monitors::get_json(&url, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"))["time"]
        .as_str()
        .expect("time")
        .to_string();
    inject(&mut lab, spec(&client, &backend));
    let _heal = HealOnDrop(lab.clone());
    let (sport, probe) = pod_probe::connect_via(&lab, &client, vip, &backend, first_port, CONNECT_SECS);
    assert!(!probe.ok, "{what} on {}, yet: {}", backend.name, probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    let on1 = find(&f1, "tcp", client.ip, sport, *vip.ip())
        .unwrap_or_else(|| panic!("not on node1: {}", between(&f1, client.ip, *vip.ip())));
    assert_unanswered(on1, "the client's connection to the VIP");
    // Independently of the verdict: whether the DNATed request reached node2 at all.
    let f2 = flows(&lab, "node2");
    let at_node2 = find(&f2, "tcp", client.ip, sport, backend.ip).is_some();
    assert_eq!(at_node2, named, "post-DNAT flow on node2: {}", between(&f2, client.ip, backend.ip));
    // The finding within 12 s; a drill-down (at most one every 10 s) may take longer.
    let deadline = Instant::now() + Duration::from_secs(if named { 12 } else { 30 });
    let finding = loop {
        let all = alerts(&lab, "node1");
        let firing: Vec<&Value> = all
            .iter()
            .filter(|a| {
                a["state"] == "firing" && a["first_seen"].as_str().is_some_and(|t| t > before.as_str())
            })
            .collect();
        if let [a] = firing.as_slice()
            && a["kind"] == "request_without_reply"
            && a["verdict"]["hop"] == hop
        {
            assert_eq!(a["scenario"], "pod_to_service", "{a:#}");
            assert_eq!(a["src"]["pod"], client.name.as_str(), "{a:#}");
            assert_eq!(a["dst"]["service"], "shop/db", "{a:#}");
            let summary = a["verdict"]["summary"].as_str().unwrap_or_default();
            if named {
                assert_eq!(a["backend"]["service"], "shop/db", "{a:#}");
                assert_eq!(a["backend"]["pod"]["pod"], backend.name.as_str(), "{a:#}");
                assert_eq!(a["backend"]["ip"], backend.ip.to_string(), "{a:#}");
                assert!(summary.contains(&format!("{}/{}", backend.namespace, backend.name)), "{a:#}");
            } else {
                assert!(summary.contains("service shop/db"), "{a:#}");
                // No post-DNAT packet was seen: the drill-down names the backend from OVS's
                // conntrack (it runs in the background, after the finding fires).
                if a["backend"]["ip"] != backend.ip.to_string() {
                    assert!(Instant::now() < deadline, "the backend not named from conntrack: {a:#}");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                assert_eq!(a["backend"]["pod"]["pod"], backend.name.as_str(), "{a:#}");
                assert!(
                    summary.contains(&format!(
                        "OVS conntrack shows the load balancer chose backend {}/{}",
                        backend.namespace, backend.name
                    )),
                    "{a:#}"
                );
                // The drill-down followed the packet past the load balancer's group (which
                // ofproto/trace does not) to that backend, and names what drops it there.
                let drill = a["drilldown"]["verdict"].as_str().unwrap_or_default();
                note!("drill-down: {drill}");
                assert!(
                    drill.contains(&format!(
                        "past the load balancer, to backend {}/{}",
                        backend.namespace, backend.name
                    )),
                    "{a:#}"
                );
                if what == "acl-deny" {
                    let acl = lab::acl_name(&client, &backend);
                    assert!(drill.contains(&acl), "the drill-down names the ACL {acl}: {a:#}");
                }
            }
            break (*a).clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single firing request_without_reply finding {} -> svc/db ({}) with verdict {hop}: {all:#?}",
            client.name,
            backend.name
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    heal(&mut lab);
    // OVN may take a moment to remove the fault's flows (an ACL goes through northd and
    // ovn-controller): a few tries, each balanced to the same backend.
    let mut tries = 0;
    let (sport, probe) = loop {
        let (sport, probe) =
            pod_probe::connect_via(&lab, &client, vip, &backend, first_port + 50 + tries * 40, CONNECT_SECS);
        tries += 1;
        if probe.ok || tries == 5 {
            break (sport, probe);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(probe.ok, "healed ({tries} tries): {}", probe.detail);
    std::thread::sleep(SETTLE);
    let f1 = flows(&lab, "node1");
    assert_answered(
        find(&f1, "tcp", client.ip, sport, *vip.ip())
            .unwrap_or_else(|| panic!("{}", between(&f1, client.ip, *vip.ip()))),
        "healed",
    );
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let all = alerts(&lab, "node1");
        if all.iter().any(|a| a["id"] == finding["id"] && a["state"] == "resolved") {
            let new: Vec<&Value> = all
                .iter()
                .filter(|a| {
                    a["state"] == "firing" && a["first_seen"].as_str().is_some_and(|t| t > before.as_str())
                })
                .collect();
            assert!(new.is_empty(), "nothing of this fault fires once healed: {new:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "finding {} not resolved: {all:#?}", finding["id"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    note!("{what} behind the VIP in {:.1}s", t.elapsed().as_secs_f32());
}

#[test]
fn t08c_service_backend_ovs_drop() {
    service_fault(
        |_, backend| FaultSpec::OvsDrop { node: backend.node.clone(), dst: backend.ip },
        "lost_before_destination_pod",
        true,
        42100,
        "ovs-drop",
    );
}

#[test]
fn t08d_service_backend_reply_drop() {
    service_fault(
        |_, backend| FaultSpec::ReplyDrop { pod: backend.name.clone() },
        "dropped_in_destination_pod",
        true,
        42400,
        "reply-drop",
    );
}

#[test]
fn t08e_service_backend_acl_deny() {
    service_fault(
        |client, backend| FaultSpec::AclDeny { src: client.name.clone(), dst: backend.name.clone() },
        // Unlike pod to pod (dropped on the backend's node, t08): OVN drops the load-balanced
        // packet on the client's node, and node2 sees nothing (asserted above).
        "never_left_source",
        false,
        42700,
        "acl-deny",
    );
}

/// The verdict's next commands run as printed, pasted into a root shell on the machine (the
/// lab's nodes are namespaces, so node-local commands carry `ip netns exec`): each exits 0
/// and shows what it is for. `kubectl` ones need a cluster and are only checked for their
/// shape; `tcpdump` runs until stopped, so it is given 3 s to start listening on the veth.
#[test]
fn t08b_next_commands_run_as_printed() {
    let (_serial, mut lab) = fixture();
    let t = Instant::now();
    let (a, b, _) = pods(&lab);
    inject(&mut lab, FaultSpec::ReplyDrop { pod: b.name.clone() });
    let _heal = HealOnDrop(lab.clone());
    let probe = tcp(&a, addr(&b), 41051);
    assert!(!probe.ok, "replies are dropped, yet: {}", probe.detail);
    let finding =
        expect_finding(&lab, "node1", "request_without_reply", &a, &b, "dropped_in_destination_pod");
    let cmds: Vec<String> = finding["verdict"]["next_commands"]
        .as_array()
        .unwrap_or_else(|| panic!("no next commands: {finding:#}"))
        .iter()
        .map(|c| c.as_str().expect("a command line").to_string())
        .collect();
    let mut ran = 0;
    for cmd in &cmds {
        if cmd.starts_with("kubectl ") {
            assert!(cmd.contains(&a.name) || cmd.contains(&b.namespace), "names the pods: {cmd}");
            continue;
        }
        // As a person would: the printed line to a shell (test code, not the product).
        let out = Command::new("timeout")
            .args(["3", "sh", "-c", cmd])
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if cmd.contains("tcpdump") {
            assert!(text.contains("listening on"), "{cmd}: did not start: {text}");
        } else {
            assert!(out.status.success(), "{cmd}: {}\n{text}", out.status);
            if cmd.contains("ovn-trace") {
                assert!(
                    text.contains(&b.iface_id),
                    "ovn-trace of the observed packet reaches {}: {text}",
                    b.iface_id
                );
            }
            if cmd.contains("dump-flows") {
                assert!(text.contains(&b.ip.to_string()), "the flows for {}: {text}", b.ip);
            }
        }
        ran += 1;
    }
    assert!(ran >= 3, "ovn-trace, ovs-ofctl and tcpdump at least: {cmds:#?}");
    heal(&mut lab);
    // Answered again, so the finding resolves here and leaves nothing to the next tests.
    let probe = tcp(&a, addr(&b), 41052);
    assert!(probe.ok, "healed: {}", probe.detail);
    expect_resolved(&lab, "node1", &finding["id"]);
    note!("t08b {} next commands ran as printed in {:.1}s", ran, t.elapsed().as_secs_f32());
}

/// Last in name order: takes the shared lab down and checks nothing of it is left.
#[test]
fn t09_down_leaves_nothing() {
    let (_serial, lab) = fixture();
    let t = Instant::now();
    let mut pids: Vec<(String, i32)> = lab::health(&lab)
        .into_iter()
        .filter_map(|(d, pid)| pid.map(|p| (format!("{} {}", d.owner, d.role), p)))
        .collect();
    pids.extend(
        monitors::running(&lab)
            .into_iter()
            .filter_map(|(m, pid)| pid.map(|p| (format!("{} kovn-monitor", m.node), p))),
    );
    assert!(pids.iter().any(|(what, _)| what.ends_with("kovn-monitor")), "monitors ran: {pids:?}");
    assert!(matches!(lab::down(&lab.name), Ok(DownOutcome::Removed { .. })), "lab down");
    let netns = run("ip", &["netns", "list"]);
    let left_ns: Vec<&str> = netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| lab::is_lab_netns(&lab.name, n))
        .collect();
    assert!(left_ns.is_empty(), "namespaces left: {left_ns:?}");
    let links = run("ip", &["-o", "link", "show"]);
    let left_links: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
        .filter(|n| lab::is_lab_link(&lab.name, n))
        .collect();
    assert!(left_links.is_empty(), "links left: {left_links:?}");
    let alive: Vec<&(String, i32)> = pids.iter().filter(|(_, p)| is_running(*p)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    // Not even exited-but-unreaped: `ps` and `pgrep` list those (zombies) too, and `down` used
    // to return while they did.
    let listed: Vec<String> = pids
        .iter()
        .filter_map(|(what, p)| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some(format!(
                "{what} pid {p}: {}",
                stat.split(") ").nth(1).unwrap_or("").chars().take(1).collect::<String>()
            ))
        })
        .collect();
    assert!(listed.is_empty(), "processes still listed right after down: {listed:?}");
    // Nothing anywhere still refers to the lab's files (ovs/ovn/socat/kovn-monitor command lines).
    let dir = lab.state_dir.to_string_lossy().into_owned();
    let mut referring = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !is_running(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&format!("{dir}/")) {
            referring.push(format!("{pid}: {cmdline}"));
        }
    }
    assert!(referring.is_empty(), "processes still using {dir}: {referring:#?}");
    assert!(!lab.state_dir.exists(), "{dir} left");
    note!("t09 down in {:.1}s", t.elapsed().as_secs_f32());
}
