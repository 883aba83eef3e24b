//! Drops with the kernel's reason (the kfree_skb tracepoint): an nftables rule drops TCP to a
//! port in the daemon's namespace and `/api/v1/drops` (and the flow) shows NETFILTER_DROP for
//! that 5-tuple, once per SYN the client sent (the nft rule's own counter is the reference);
//! a drop in another namespace of the same kernel is not reported.

use std::net::SocketAddr;
use std::time::Duration;

use kovn_tests::{Daemon, Netns, Pair, in_netns};

/// A TCP connect from `ns` to `dst` that times out (its SYNs are dropped). Returns the
/// client's source port.
fn syn_until_timeout(ns: &str, dst: SocketAddr, secs: u64) -> u16 {
    in_netns(ns, move || {
        let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(secs));
        assert!(s.is_err(), "the connection to {dst} should have been dropped");
        0
    })
    .join()
    .expect("tcp client")
}

/// `nft` rule in `ns`: drop TCP to `port` on input, counted. Returns the table's name.
fn nft_drop(ns: &Netns, port: u16) -> String {
    let table = format!("kovn_drop_{port}");
    let port = port.to_string();
    ns.run("nft", &["add", "table", "inet", &table]);
    ns.run("nft", &["add", "chain", "inet", &table, "input", "{ type filter hook input priority 0; }"]);
    ns.run("nft", &["add", "rule", "inet", &table, "input", "tcp", "dport", &port, "counter", "drop"]);
    table
}

fn nft_packets(ns: &Netns, table: &str) -> u64 {
    let out = ns.run("nft", &["-j", "list", "table", "inet", table]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

fn drops_for(d: &Daemon, port: u16) -> Vec<serde_json::Value> {
    let all = d.get("/api/v1/drops").expect("GET /api/v1/drops");
    all["drops"].as_array().expect("drops list").iter().filter(|r| r["dst_port"] == port).cloned().collect()
}

#[test]
fn netfilter_drops_are_reported_with_their_reason_and_only_in_our_netns() {
    let pair = Pair::new(61);
    let daemon = Daemon::start(&pair.b, 19481, &["--iface", &pair.b_if], 1);
    let health = daemon.health().expect("health");
    if health["hooks"]["kfree_skb"] != true {
        panic!("kfree_skb hook unavailable here: {health:#}\n{}", daemon.log_text());
    }
    assert_eq!(health["hooks"]["ovs_vport_mtu_kprobe"], false);

    // Drop in the daemon's namespace (b): SYNs from a to b:9091.
    let table = nft_drop(&pair.b, 9091);
    // Drop in another namespace (a): SYNs from b to a:9092; the daemon must not see these.
    let other = nft_drop(&pair.a, 9092);
    let dst: SocketAddr = format!("{}:9091", pair.b_ip).parse().expect("addr");
    let other_dst: SocketAddr = format!("{}:9092", pair.a_ip).parse().expect("addr");
    let a = pair.a.name.clone();
    let b = pair.b.name.clone();
    let t1 = std::thread::spawn(move || syn_until_timeout(&a, dst, 4));
    let t2 = std::thread::spawn(move || syn_until_timeout(&b, other_dst, 4));
    t1.join().expect("client a");
    t2.join().expect("client b");
    let syns = nft_packets(&pair.b, &table);
    let other_syns = nft_packets(&pair.a, &other);
    assert!(syns >= 2 && other_syns >= 2, "SYN retransmits expected: {syns} {other_syns}");
    daemon.settle();
    daemon.settle();

    let ours = drops_for(&daemon, 9091);
    assert_eq!(ours.len(), 1, "one record (flow, reason, interface): {ours:#?}");
    let r = &ours[0];
    assert_eq!(r["reason"], "NETFILTER_DROP", "{r:#}");
    assert_eq!(r["src_ip"], pair.a_ip.as_str());
    assert_eq!(r["dst_ip"], pair.b_ip.as_str());
    assert_eq!(r["protocol"], "tcp");
    assert_eq!(r["interface"], pair.b_if.as_str());
    assert_eq!(r["count"].as_u64(), Some(syns), "kovn vs the nft rule's counter: {r:#}");
    // Where the kernel freed them, named from /proc/kallsyms (the test runs as root): netfilter's
    // verdict loop (`nf_hook_slow` frees an NF_DROP verdict with `kfree_skb_reason`), or, on
    // kernels where nf_tables drops in place with its own reason (`NF_DROP_REASON`, measured on
    // 6.18), `nft_do_chain`.
    let function = r["kernel_function"].as_str().unwrap_or_default();
    assert!(
        function.starts_with("nf_hook_slow+0x") || function.starts_with("nft_do_chain+0x"),
        "the freeing function: {r:#}"
    );

    // The flow carries the same drops.
    let flows = daemon.get("/api/v1/flows").expect("flows");
    let flow = flows["flows"]
        .as_array()
        .expect("flows list")
        .iter()
        .find(|f| f["id"] == r["flow_id"])
        .unwrap_or_else(|| panic!("flow {} not in {flows:#}", r["flow_id"]));
    assert_eq!(flow["drops"][0]["reason"], "NETFILTER_DROP", "{flow:#}");
    assert_eq!(flow["drops"][0]["count"].as_u64(), Some(syns));

    // The drops in namespace a are not ours.
    assert!(drops_for(&daemon, 9092).is_empty(), "netns filter: {:#?}", drops_for(&daemon, 9092));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("drop monitoring unavailable"), "{log}");
}

/// Pings dropped by a netfilter rule in the daemon's namespace: the drop record carries the
/// ping's echo identifier where a port would be (as the classifier's flow key does), so it joins
/// the ping's own flow, with the rule's own counter as its count.
#[test]
fn dropped_pings_join_their_icmp_flow() {
    let pair = Pair::new(64);
    let daemon = Daemon::start(&pair.b, 19488, &["--iface", &pair.b_if], 1);
    let table = "kovn_drop_icmp";
    pair.b.run("nft", &["add", "table", "inet", table]);
    pair.b.run("nft", &["add", "chain", "inet", table, "input", "{ type filter hook input priority 0; }"]);
    pair.b.run(
        "nft",
        &["add", "rule", "inet", table, "input", "icmp", "type", "echo-request", "counter", "drop"],
    );
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &pair.a.name, "ping", "-c", "3", "-i", "0.3", "-W", "1", &pair.b_ip])
        .output()
        .expect("ping");
    assert!(!ping.status.success(), "the pings are dropped: {}", String::from_utf8_lossy(&ping.stdout));
    let dropped = nft_packets(&pair.b, table);
    assert!(dropped >= 3, "the rule's counter: {dropped}");
    daemon.settle();
    daemon.settle();
    let flows = daemon.get("/api/v1/flows").expect("flows");
    let pings: Vec<&serde_json::Value> = flows["flows"]
        .as_array()
        .expect("flows list")
        .iter()
        .filter(|f| {
            f["protocol"] == "icmp" && f["src_ip"] == pair.a_ip.as_str() && f["dst_ip"] == pair.b_ip.as_str()
        })
        .collect();
    assert_eq!(pings.len(), 1, "one ping flow: {flows:#}");
    let flow = pings[0];
    assert_eq!(flow["drops"][0]["reason"], "NETFILTER_DROP", "the drops joined the ping's flow: {flow:#}");
    assert_eq!(flow["drops"][0]["count"].as_u64(), Some(dropped), "kovn vs the nft rule's counter: {flow:#}");
    let drops = daemon.get("/api/v1/drops").expect("drops");
    let record = drops["drops"]
        .as_array()
        .expect("drops list")
        .iter()
        .find(|r| r["protocol"] == "icmp")
        .unwrap_or_else(|| panic!("no icmp drop record: {drops:#}"));
    assert_eq!(record["flow_id"], flow["id"], "{record:#}");
    assert_eq!(record["direction"], "request", "{record:#}");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Drops inside pods: a node namespace with a bridge and Kube-OVN-named host veths
// (`<12hex>_h`) whose peers are `eth0` in the pods' own namespaces.

/// A node (the daemon's namespace) with two pods on a bridge: `client` (10.235.<o>.2) and
/// `server` (10.235.<o>.3), named through an inventory file.
struct PodNode {
    node: Netns,
    client: Netns,
    server: Netns,
    client_veth: String,
    server_veth: String,
    client_ip: String,
    server_ip: String,
    inventory: tempfile::NamedTempFile,
}

/// A host veth name as Kube-OVN makes them: 12 hex digits (unique per test) and `_h`.
fn kube_ovn_veth() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:08x}{:04x}_h", std::process::id(), n & 0xffff)
}

impl PodNode {
    fn new(octet: u8) -> Self {
        let node = Netns::new("ktn");
        let client = Netns::new("ktc");
        let server = Netns::new("kts");
        node.run("ip", &["link", "add", "br0", "type", "bridge"]);
        node.run("ip", &["link", "set", "br0", "up"]);
        let client_ip = format!("10.235.{octet}.2");
        let server_ip = format!("10.235.{octet}.3");
        let mut veths = Vec::new();
        for (pod, ip) in [(&client, &client_ip), (&server, &server_ip)] {
            let veth = kube_ovn_veth();
            // Like a CNI: the pair in the node, then the peer moved into the pod.
            node.run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0"]);
            node.run("ip", &["link", "set", "eth0", "netns", &pod.name]);
            node.run("ip", &["link", "set", &veth, "master", "br0", "up"]);
            pod.run("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            pod.run("ip", &["link", "set", "eth0", "up"]);
            let _ = pod.try_run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            veths.push(veth);
        }
        let _ = node.try_run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        let mut inventory = tempfile::NamedTempFile::new().expect("inventory file");
        use std::io::Write as _;
        write!(
            inventory,
            "pods:\n  - {{namespace: default, name: client, node: kt-node, ips: [{client_ip}]}}\n  - {{namespace: shop, name: web, node: kt-node, ips: [{server_ip}]}}\n"
        )
        .expect("write inventory");
        let server_veth = veths.pop().expect("server veth");
        let client_veth = veths.pop().expect("client veth");
        Self { node, client, server, client_veth, server_veth, client_ip, server_ip, inventory }
    }

    fn daemon(&self, port: u16, extra: &[&str]) -> Daemon {
        let inv = self.inventory.path().to_str().expect("utf-8 path").to_string();
        let mut args = vec!["--node-name", "kt-node", "--inventory-file", &inv, "--reply-timeout", "1s"];
        args.extend_from_slice(extra);
        let d = Daemon::start(&self.node, port, &args, 2);
        let h = d.health().expect("health");
        assert_eq!(h["hooks"]["kfree_skb"], true, "kfree_skb hook unavailable: {h:#}\n{}", d.log_text());
        // Both pods' namespaces are watched once their veths are attached.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while d.log_text().matches("are watched").count() < 2 {
            assert!(std::time::Instant::now() < deadline, "pod namespaces not watched:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }
}

/// `/proc/net/snmp`'s `Udp:` counter `name` inside `ns` (the kernel's own count).
fn udp_snmp(ns: &Netns, name: &str) -> u64 {
    let out = ns.run("cat", &["/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().expect("Udp header"), udp.next().expect("Udp values"));
    let i =
        names.split_whitespace().position(|n| n == name).unwrap_or_else(|| panic!("no {name} in {names}"));
    values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{values}"))
}

/// `count` UDP datagrams of `size` bytes from one socket in `ns` to `dst`; returns its port.
fn udp_burst(ns: &str, dst: SocketAddr, count: usize, size: usize) -> u16 {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..count {
            s.send_to(&vec![0x5a; size], dst).expect("send");
            std::thread::sleep(Duration::from_micros(200));
        }
        s.local_addr().expect("addr").port()
    })
    .join()
    .expect("udp client")
}

fn pod_drops(d: &Daemon, reason: &str, dst_port: u16) -> Vec<serde_json::Value> {
    drops_for(d, dst_port).into_iter().filter(|r| r["reason"] == reason && r["location"] == "pod").collect()
}

/// The one `location: pod` record of `reason` to `dst_port`, once its count reaches `want`.
fn wait_pod_drop(d: &Daemon, reason: &str, dst_port: u16, want: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = pod_drops(d, reason, dst_port);
        if r.len() == 1 && r[0]["count"].as_u64() >= Some(want) {
            return r[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {reason} record with {want} drops to port {dst_port}: {r:#?}\nall: {:#}\n{}",
            d.get("/api/v1/drops").unwrap_or_default(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn firing_alert_for(d: &Daemon, flow_id: &serde_json::Value) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = d.get("/api/v1/alerts").unwrap_or_default();
        let hit = alerts["alerts"].as_array().into_iter().flatten().find(|a| {
            a["state"] == "firing"
                && a["flows"].as_array().is_some_and(|f| f.contains(flow_id))
                && a["verdict"]["hop"].as_str().is_some_and(|h| h.ends_with("_pod"))
        });
        if let Some(a) = hit {
            return a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finding with a pod verdict for {flow_id}: {alerts:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn firewall_inside_the_destination_pod_is_named_with_the_pod_and_its_counter() {
    let n = PodNode::new(11);
    let d = n.daemon(19482, &[]);
    let table = nft_drop(&n.server, 4444);
    let dst: SocketAddr = format!("{}:4444", n.server_ip).parse().expect("addr");
    syn_until_timeout(&n.client.name, dst, 4);
    let syns = nft_packets(&n.server, &table);
    assert!(syns >= 2, "SYN retransmits expected, nft counted {syns}");
    let r = wait_pod_drop(&d, "NETFILTER_DROP", 4444, syns);
    assert_eq!(r["count"].as_u64(), Some(syns), "kovn vs the nft rule inside the pod: {r:#}");
    assert_eq!(r["pod"], "shop/web", "{r:#}");
    assert_eq!(r["interface"], n.server_veth.as_str(), "{r:#}");
    assert_eq!(r["netns"], n.server.name.as_str(), "{r:#}");
    assert_eq!(r["direction"], "request", "{r:#}");
    assert_eq!(
        (r["src_ip"].as_str(), r["dst_ip"].as_str()),
        (Some(n.client_ip.as_str()), Some(n.server_ip.as_str()))
    );

    // On the flow (same id as the veths' view of it).
    let flows = d.get("/api/v1/flows").expect("flows");
    let flow = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["id"] == r["flow_id"])
        .unwrap_or_else(|| panic!("flow {} not in {flows:#}", r["flow_id"]))
        .clone();
    assert!(flow["interfaces"].as_array().is_some_and(|i| !i.is_empty()), "the veths saw it: {flow:#}");
    let fd = &flow["drops"][0];
    assert_eq!(
        (fd["reason"].as_str(), fd["location"].as_str(), fd["pod"].as_str()),
        (Some("NETFILTER_DROP"), Some("pod"), Some("shop/web")),
        "{flow:#}"
    );
    assert_eq!(fd["count"].as_u64(), Some(syns));

    // The finding's verdict names the pod, the reason and the pod's own ruleset.
    let a = firing_alert_for(&d, &r["flow_id"]);
    let v = &a["verdict"];
    assert_eq!(v["hop"], "dropped_in_destination_pod", "{a:#}");
    let summary = v["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("dropped inside the destination pod shop/web by its firewall (NETFILTER_DROP"),
        "{summary}"
    );
    assert_eq!(v["next_commands"][0], format!("ip netns exec {} nft list ruleset", n.server.name), "{a:#}");

    // In /metrics with location="pod".
    let m = d.metric_sum("kovn_drops_total", &[("reason", "NETFILTER_DROP"), ("location", "pod")]);
    assert_eq!(m, syns as f64, "kovn_drops_total{{location=\"pod\"}}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn replies_dropped_by_the_source_pods_firewall_are_named_on_the_source_side() {
    let n = PodNode::new(12);
    // The SYN-ACKs pass the veths (the flow looks answered): the drops finding carries it.
    let d = n.daemon(19483, &["--drop-burst", "2"]);
    // A listener in the server pod; the client pod's own firewall drops its SYN-ACKs.
    let listener_ns = n.server.name.clone();
    let ip = n.server_ip.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let _server = in_netns(&listener_ns, move || {
        let l = std::net::TcpListener::bind(format!("{ip}:4445")).expect("listen");
        ready_tx.send(()).expect("ready");
        let _ = l.set_nonblocking(false);
        std::thread::sleep(Duration::from_secs(8));
    });
    ready_rx.recv().expect("listener");
    let table = "kovn_drop_reply";
    n.client.run("nft", &["add", "table", "inet", table]);
    n.client.run("nft", &["add", "chain", "inet", table, "input", "{ type filter hook input priority 0; }"]);
    n.client.run("nft", &["add", "rule", "inet", table, "input", "tcp", "sport", "4445", "counter", "drop"]);
    let dst: SocketAddr = format!("{}:4445", n.server_ip).parse().expect("addr");
    syn_until_timeout(&n.client.name, dst, 4);
    let dropped = nft_packets(&n.client, table);
    assert!(dropped >= 2, "SYN-ACKs dropped: {dropped}");
    let r = wait_pod_drop(&d, "NETFILTER_DROP", 4445, dropped);
    assert_eq!(r["count"].as_u64(), Some(dropped), "{r:#}");
    assert_eq!(
        (r["pod"].as_str(), r["direction"].as_str()),
        (Some("default/client"), Some("reply")),
        "{r:#}"
    );
    assert_eq!(r["interface"], n.client_veth.as_str(), "{r:#}");
    let a = firing_alert_for(&d, &r["flow_id"]);
    let summary = a["verdict"]["summary"].as_str().unwrap_or_default();
    assert_eq!(a["verdict"]["hop"], "dropped_in_source_pod", "{a:#}");
    assert!(
        summary.contains("dropped inside the source pod default/client by its firewall (NETFILTER_DROP"),
        "{summary}"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn udp_to_a_closed_port_in_a_pod_is_no_socket_as_many_as_udp_noports() {
    let n = PodNode::new(13);
    let d = n.daemon(19484, &[]);
    let before = udp_snmp(&n.server, "NoPorts");
    let dst: SocketAddr = format!("{}:5555", n.server_ip).parse().expect("addr");
    udp_burst(&n.client.name, dst, 25, 64);
    std::thread::sleep(Duration::from_millis(300));
    let noports = udp_snmp(&n.server, "NoPorts") - before;
    assert_eq!(noports, 25, "the kernel's own count");
    let r = wait_pod_drop(&d, "NO_SOCKET", 5555, noports);
    assert_eq!(r["count"].as_u64(), Some(noports), "kovn vs Udp: NoPorts in the pod: {r:#}");
    assert_eq!(r["pod"], "shop/web", "{r:#}");
    let a = firing_alert_for(&d, &r["flow_id"]);
    let summary = a["verdict"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("nothing listens on udp port 5555 in the destination pod shop/web"),
        "{summary}"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_full_receive_buffer_in_a_pod_is_socket_rcvbuff_as_many_as_rcvbuferrors() {
    let n = PodNode::new(14);
    let d = n.daemon(19485, &[]);
    // A reader with a small SO_RCVBUF that sleeps: most datagrams find the buffer full.
    let ip = n.server_ip.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = in_netns(&n.server.name, move || {
        use std::os::fd::AsRawFd as _;
        let s = std::net::UdpSocket::bind(format!("{ip}:6666")).expect("bind");
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on our own socket with a c_int option.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_ref(&size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF");
        ready_tx.send(()).expect("ready");
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 2048];
        let mut read = 0;
        while s.recv(&mut buf).is_ok() {
            read += 1;
        }
        read
    });
    ready_rx.recv().expect("reader ready");
    let before = udp_snmp(&n.server, "RcvbufErrors");
    let dst: SocketAddr = format!("{}:6666", n.server_ip).parse().expect("addr");
    udp_burst(&n.client.name, dst, 100, 1000);
    std::thread::sleep(Duration::from_millis(300));
    let errors = udp_snmp(&n.server, "RcvbufErrors") - before;
    done_tx.send(()).expect("reader");
    let read = reader.join().expect("reader");
    assert!(errors >= 50 && read > 0, "the buffer should overflow: {errors} errors, {read} read");
    let r = wait_pod_drop(&d, "SOCKET_RCVBUFF", 6666, errors);
    assert_eq!(r["count"].as_u64(), Some(errors), "kovn vs Udp: RcvbufErrors in the pod: {r:#}");
    assert_eq!(r["pod"], "shop/web", "{r:#}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn drops_in_a_namespace_of_no_pod_are_skipped_and_counted() {
    let n = PodNode::new(15);
    let d = n.daemon(19486, &[]);
    let skipped = |d: &Daemon| d.health().expect("health")["kernel_counters"]["drops_skipped_netns"].as_u64();
    let before = skipped(&d).expect("drops_skipped_netns counter");
    // A namespace pair that is neither the node's nor one of its pods'.
    let foreign = Pair::new(62);
    let table = nft_drop(&foreign.b, 4446);
    let dst: SocketAddr = format!("{}:4446", foreign.b_ip).parse().expect("addr");
    syn_until_timeout(&foreign.a.name, dst, 3);
    let dropped = nft_packets(&foreign.b, &table);
    assert!(dropped >= 2, "{dropped}");
    d.settle();
    d.settle();
    assert!(drops_for(&d, 4446).is_empty(), "recorded: {:#?}", drops_for(&d, 4446));
    let after = skipped(&d).expect("counter");
    assert!(after - before >= dropped, "skipped rose by {} for {dropped} foreign drops", after - before);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn idle_drop_records_age_out_so_the_map_never_stays_full() {
    // The drop map holds --flow-table-size / 4 = 1024 records; two rounds of 900 distinct
    // flows dropped fit only if the first round's records leave once idle.
    let pair = Pair::new(63);
    let daemon = Daemon::start(
        &pair.b,
        19487,
        &["--iface", &pair.b_if, "--flow-table-size", "4096", "--drop-record-ttl", "1s"],
        1,
    );
    let counters = |d: &Daemon| d.health().expect("health")["kernel_counters"].clone();
    let dst: SocketAddr = format!("{}:5556", pair.b_ip).parse().expect("addr");
    let round = |_: u32| {
        in_netns(&pair.a.name, move || {
            // One socket per datagram: a distinct source port, a distinct flow, a record each.
            for _ in 0..900 {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                s.send_to(b"x", dst).expect("send");
            }
        })
        .join()
        .expect("client");
    };
    let before = udp_snmp(&pair.b, "NoPorts");
    round(1);
    std::thread::sleep(Duration::from_secs(3));
    round(2);
    daemon.settle();
    let noports = udp_snmp(&pair.b, "NoPorts") - before;
    assert_eq!(noports, 1800);
    let c = counters(&daemon);
    assert_eq!(c["drops_map_full"].as_u64(), Some(0), "drops found no room: {c:#}");
    let recorded: u64 = drops_for(&daemon, 5556).iter().filter_map(|r| r["count"].as_u64()).sum();
    assert_eq!(recorded, 900, "the second round's records (the first aged out)");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}
