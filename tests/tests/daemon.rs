//! `kovn-monitor run` on real interfaces in their own namespaces, with real traffic, compared
//! with tcpdump on the same interface (parsed by etherparse, not by kovn).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kovn_tests::{Capture, Daemon, Netns, Pair, echo_servers, find_flow, in_netns, monitor_bin, pcap, sh};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A TCP exchange from `ns` to `dst`: connect, send `rounds` messages, read echoes, close.
/// Returns the client's source port.
fn tcp_exchange(ns: &str, dst: SocketAddr, rounds: usize, size: usize) -> u16 {
    in_netns(ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let port = c.local_addr().expect("local").port();
        let msg = vec![b'k'; size];
        for _ in 0..rounds {
            c.write_all(&msg).expect("send");
            let mut got = vec![0u8; size];
            c.read_exact(&mut got).expect("echo");
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        port
    })
    .join()
    .expect("tcp client")
}

fn udp_exchange(ns: &str, dst: SocketAddr, rounds: usize) -> u16 {
    in_netns(ns, move || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        for i in 0..rounds {
            u.send_to(format!("req {i}").as_bytes(), dst).expect("send");
            let mut buf = [0u8; 64];
            u.recv_from(&mut buf).expect("udp echo");
        }
        u.local_addr().expect("local").port()
    })
    .join()
    .expect("udp client")
}

fn num(f: &serde_json::Value, field: &str) -> u64 {
    f[field].as_u64().unwrap_or_else(|| panic!("no {field} in {f}"))
}

fn assert_matches_capture(f: &serde_json::Value, fwd: (u64, u64), rev: (u64, u64)) {
    assert_eq!(
        (num(f, "packets_fwd"), num(f, "bytes_fwd"), num(f, "packets_rev"), num(f, "bytes_rev")),
        (fwd.0, fwd.1, rev.0, rev.1),
        "kovn vs tcpdump (packets, L3 bytes) fwd then rev, for {f:#}"
    );
}

/// A Kube-OVN-style host veth name (`<12 hex>_h`) unique to this test run.
fn kube_ovn_veth_name(seed: u32) -> String {
    format!("{:012x}_h", (u64::from(std::process::id()) << 16) ^ u64::from(seed) ^ 0xabc0_0000_0000)
}

#[test]
fn flows_match_tcpdump_per_flow_and_direction() {
    let pair = Pair::new(11);
    // Rename A's veth the way Kube-OVN names pod veths, so the default `*_h` pattern picks it.
    let veth = kube_ovn_veth_name(1);
    pair.a.run("ip", &["link", "set", &pair.a_if, "down"]);
    pair.a.run("ip", &["link", "set", &pair.a_if, "name", &veth]);
    pair.a.run("ip", &["link", "set", &veth, "up"]);
    let stop = echo_servers(&pair.b.name, &pair.b_ip, 8080, 5353);
    let daemon = Daemon::start(&pair.a, 19474, &[], 1);
    let health = daemon.health().expect("health");
    assert_eq!(health["attached_interfaces"][0]["name"], veth.as_str());
    assert_eq!(health["attached_interfaces"][0]["kind"], "pod");

    let cap = Capture::start(&pair.a, &veth);
    let server: SocketAddr = format!("{}:8080", pair.b_ip).parse().expect("addr");
    let ports: Vec<u16> = [(1, 10), (5, 1000), (3, 20000)]
        .iter()
        .map(|&(r, s)| tcp_exchange(&pair.a.name, server, r, s))
        .collect();
    let udp_port = udp_exchange(&pair.a.name, format!("{}:5353", pair.b_ip).parse().expect("addr"), 4);
    pair.a.run("ping", &["-c", "3", "-i", "0.2", "-W", "1", &pair.b_ip]);
    let pkts = cap.finish();
    daemon.settle();
    let flows = daemon.flows();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (a, b) = (ip(&pair.a_ip), ip(&pair.b_ip));
    for port in ports {
        let f = flows
            .iter()
            .find(|f| f["src_port"] == port && f["dst_port"] == 8080 && f["protocol"] == "tcp")
            .unwrap_or_else(|| panic!("no flow for tcp port {port} in {flows:#?}"));
        assert_eq!(
            (f["src_ip"].as_str(), f["dst_ip"].as_str()),
            (Some(pair.a_ip.as_str()), Some(pair.b_ip.as_str()))
        );
        assert_matches_capture(
            f,
            pcap::count(&pkts, a, b, "tcp", port, 8080),
            pcap::count(&pkts, b, a, "tcp", 8080, port),
        );
        assert_eq!(f["state"], "closed", "{f:#}");
        assert!(num(f, "rtt_us") > 0, "handshake RTT measured: {f:#}");
        assert_eq!(num(f, "requests_unanswered"), 0);
        assert_eq!(f["interfaces"][0]["name"], veth.as_str());
    }
    let f = flows.iter().find(|f| f["src_port"] == udp_port && f["protocol"] == "udp").expect("udp flow");
    assert_matches_capture(
        f,
        pcap::count(&pkts, a, b, "udp", udp_port, 5353),
        pcap::count(&pkts, b, a, "udp", 5353, udp_port),
    );
    assert_eq!(f["state"], "answered");
    let f = find_flow(&flows, &pair.a_ip, &pair.b_ip, "icmp", None).expect("icmp flow");
    let id = num(f, "src_port") as u16;
    assert_matches_capture(
        f,
        pcap::count_echo(&pkts, a, b, id, true),
        pcap::count_echo(&pkts, b, a, id, false),
    );
    assert_eq!((num(f, "requests"), num(f, "replies")), (3, 3));
    assert_eq!(f["state"], "answered");
    let (status, log) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {log}");
}

#[test]
fn dropped_replies_show_up_as_unanswered() {
    let pair = Pair::new(12);
    let stop = echo_servers(&pair.b.name, &pair.b_ip, 8080, 5353);
    // In the target: SYNs to 9999 vanish (no RST, no SYN-ACK), echo replies never leave,
    // and UDP to 5353 is answered by nobody.
    let rules = "table inet kovn_test {
        chain input { type filter hook input priority 0; tcp dport 9999 drop; udp dport 5353 drop; }
        chain output { type filter hook output priority 0; icmp type echo-reply drop; }
    }";
    let rules_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(rules_file.path(), rules).expect("write rules");
    pair.b.run("nft", &["-f", rules_file.path().to_str().expect("utf-8")]);
    let daemon = Daemon::start(&pair.a, 19475, &["--iface", &pair.a_if], 1);
    let cap = Capture::start(&pair.a, &pair.a_if);

    let dst: SocketAddr = format!("{}:9999", pair.b_ip).parse().expect("addr");
    let syn_port = in_netns(&pair.a.name, move || {
        let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(2500));
        assert!(s.is_err(), "the SYN must go unanswered");
        // The kernel picked a source port; find it from the capture instead.
    });
    syn_port.join().expect("client");
    let ping = pair.a.try_run("ping", &["-c", "3", "-i", "0.3", "-W", "1", &pair.b_ip]);
    assert!(!ping.status.success(), "ping must fail: replies are dropped");
    let u = udp_exchange_unanswered(&pair.a.name, format!("{}:5353", pair.b_ip).parse().expect("addr"));
    let pkts = cap.finish();
    daemon.settle();
    let flows = daemon.flows();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (a, b) = (ip(&pair.a_ip), ip(&pair.b_ip));
    let tcp = find_flow(&flows, &pair.a_ip, &pair.b_ip, "tcp", Some(9999)).expect("tcp flow to 9999");
    assert_eq!(tcp["state"], "unanswered", "{tcp:#}");
    let syns = pcap::count(&pkts, a, b, "tcp", num(tcp, "src_port") as u16, 9999).0;
    assert!(syns >= 2, "the client retransmitted its SYN ({syns} seen by tcpdump)");
    assert_eq!(num(tcp, "requests_unanswered"), syns, "every SYN tcpdump saw is unanswered: {tcp:#}");
    assert_eq!(num(tcp, "packets_rev"), 0);

    let icmp = find_flow(&flows, &pair.a_ip, &pair.b_ip, "icmp", None).expect("icmp flow");
    assert_eq!(icmp["state"], "unanswered", "{icmp:#}");
    assert_eq!((num(icmp, "requests"), num(icmp, "requests_unanswered")), (3, 3));
    let udp = flows.iter().find(|f| f["src_port"] == u && f["protocol"] == "udp").expect("udp flow");
    assert_eq!(udp["state"], "unanswered", "{udp:#}");
    assert_eq!(num(udp, "requests_unanswered"), 2);
}

fn udp_exchange_unanswered(ns: &str, dst: SocketAddr) -> u16 {
    in_netns(ns, move || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        for _ in 0..2 {
            u.send_to(b"anyone?", dst).expect("send");
            let mut buf = [0u8; 16];
            assert!(u.recv_from(&mut buf).is_err(), "no answer expected");
        }
        u.local_addr().expect("local").port()
    })
    .join()
    .expect("udp client")
}

#[test]
fn interfaces_are_followed_as_they_come_and_go() {
    let ns = Netns::new("ktf");
    let daemon = Daemon::start(&ns, 19476, &["--iface", "lo"], 1);
    let veth = kube_ovn_veth_name(2);
    let peer = kovn_tests::unique("kpp");
    ns.run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    let attached = |d: &Daemon| -> Vec<String> {
        d.health().expect("health")["attached_interfaces"]
            .as_array()
            .expect("array")
            .iter()
            .map(|i| i["name"].as_str().expect("name").to_string())
            .collect()
    };
    let wait_for = |want: bool| {
        for _ in 0..50 {
            if attached(&daemon).contains(&veth) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{veth} attached={} expected {want}; log:\n{}", !want, daemon.log_text());
    };
    wait_for(true);
    assert!(attached(&daemon).contains(&"lo".to_string()));
    ns.run("ip", &["link", "del", &veth]);
    wait_for(false);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!("attached to {veth}")) && log.contains(&format!("{veth} is gone")),
        "{log}"
    );
}

#[test]
fn nothing_of_kovn_stays_in_the_kernel_after_sigterm() {
    let pair = Pair::new(13);
    let daemon = Daemon::start(&pair.a, 19477, &["--iface", &pair.a_if], 1);
    let health = daemon.health().expect("health");
    let prog_ids: Vec<String> = health["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| p["id"].as_u64().expect("id").to_string())
        .collect();
    assert_eq!(prog_ids.len(), kovn_monitor::capture::ALL_PROGRAMS.len());
    let mut map_ids = Vec::new();
    for id in &prog_ids {
        let out = sh("bpftool", &["-j", "prog", "show", "id", id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
        for m in v["map_ids"].as_array().expect("map_ids") {
            map_ids.push(m.as_u64().expect("map id").to_string());
        }
    }
    assert!(!map_ids.is_empty());
    // The tcx links (or, before Linux 6.6, cls_bpf filters) that hold the programs.
    let ids = program_ids(&daemon);
    let hooked = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &ids);
    assert_eq!(hooked.len(), 2, "ingress and egress hooks on {}: {hooked:?}", pair.a_if);

    // SIGTERM, as Kubernetes stops a DaemonSet pod.
    let (status, log) = daemon.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("SIGTERM: detaching"), "{log}");
    for id in &prog_ids {
        let out =
            std::process::Command::new("bpftool").args(["prog", "show", "id", id]).output().expect("bpftool");
        assert!(!out.status.success(), "program {id} still loaded");
    }
    for id in &map_ids {
        // Maps are freed asynchronously after their last reference goes.
        let mut gone = false;
        for _ in 0..50 {
            let out = std::process::Command::new("bpftool")
                .args(["map", "show", "id", id])
                .output()
                .expect("bpftool");
            if !out.status.success() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(gone, "map {id} still in the kernel");
    }
    let left = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &ids);
    assert!(left.is_empty(), "hooks left behind: {left:?}");
}

/// The programs of a running daemon, (id, name), from its /healthz.
fn program_ids(d: &Daemon) -> Vec<(u64, String)> {
    d.health().expect("health")["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| (p["id"].as_u64().expect("id"), p["name"].as_str().expect("name").to_string()))
        .collect()
}

/// `kill -9` gives the daemon no chance to detach. With tcx (Linux >= 6.6) its links die with
/// it; with clsact + cls_bpf (before 6.6) its filters stay on the interface, and a restart
/// must replace them instead of stacking a second set (which would count every packet twice).
/// The truth is the kernel's own list (tc / bpftool), checked per hook.
#[test]
fn one_set_of_hooks_after_kill_9_and_restart() {
    let pair = Pair::new(14);
    let first = Daemon::start(&pair.a, 19478, &["--iface", &pair.a_if], 1);
    let first_ids = program_ids(&first);
    let before = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &first_ids);
    assert_eq!(before.len(), 2, "one ingress and one egress hook: {before:?}");
    let (_, log) = first.stop_with(libc::SIGKILL);
    let after_kill = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &first_ids);
    let mode = before[0].mode;
    if mode == "tcx" {
        assert!(after_kill.is_empty(), "tcx links outlived their process: {after_kill:?}\n{log}");
    } else {
        // What this test is about: the leftovers are there...
        assert_eq!(after_kill, before, "cls_bpf filters after kill -9");
    }
    let second = Daemon::start(&pair.a, 19478, &["--iface", &pair.a_if], 1);
    let second_ids = program_ids(&second);
    let now = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &second_ids);
    // ...and after the restart exactly one hook per direction, all of the new process.
    for direction in ["ingress", "egress"] {
        let on: Vec<_> = now.iter().filter(|h| h.direction == direction).collect();
        assert_eq!(on.len(), 1, "{direction} on {} ({mode}): {now:?}\n{}", pair.a_if, second.log_text());
        assert!(
            second_ids.iter().any(|(id, _)| *id == on[0].prog_id),
            "{direction}: not the new daemon's program: {now:?}"
        );
        assert_eq!(on[0].mode, mode);
    }
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    let left = kovn_tests::kovn_hooks(&pair.a, &pair.a_if, &second_ids);
    assert!(left.is_empty(), "hooks left after a clean stop: {left:?}");
    eprintln!("attach mode: {mode}");
}

#[test]
fn bad_arguments_get_one_line_errors() {
    let ns = Netns::new("kte");
    let bin = monitor_bin();
    let bin = bin.to_str().expect("utf-8");
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--bogus"], "unexpected argument '--bogus'"),
        (&["run", "--iface", "nosuch0"], "unknown interface \"nosuch0\""),
        (&["run", "--iface", "bad/name"], "invalid interface name"),
        (&["run", "--pod-iface", "["], "invalid interface pattern"),
        (&["run", "--poll-interval", "0s"], "greater than zero"),
        (&["run", "--flow-table-size", "12", "--listen", "127.0.0.1:19478"], "out of range"),
        (&["flows", "-o", "yaml"], "invalid value 'yaml'"),
        (&["flows", "--endpoint", "not a url"], "invalid endpoint"),
        (&["flows", "--endpoint", "http://127.0.0.1:1"], "cannot reach kovn-monitor"),
    ];
    for (args, want) in cases {
        let out = ns.try_run(bin, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line expected, got:\n{err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
    }
    let help = ns.try_run(bin, &["--help"]);
    assert!(help.status.success());
    for word in ["run", "flows"] {
        assert!(String::from_utf8_lossy(&help.stdout).contains(word));
    }
}
