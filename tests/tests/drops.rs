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
