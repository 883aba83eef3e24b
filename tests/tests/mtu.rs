//! MTU signals from real traffic: a client namespace behind a router whose far link has a
//! smaller MTU. `ping -M do` with packets above that MTU: the monitor (watching the client's
//! interface as a pod interface whose path MTU is the far link's, as Kube-OVN's overlay MTU is
//! for pods) counts them as oversized, and the router's ICMP "fragmentation needed" is credited
//! to the ping's flow with the MTU it reports. The kernel's own path-MTU cache (`ip route get`)
//! is the independent truth for the reported MTU.

use std::time::{Duration, Instant};

use kovn_tests::{Daemon, Netns, sh, unique};

const FAR_MTU: u32 = 1300;

struct Routed {
    client: Netns,
    router: Netns,
    server: Netns,
    client_if: String,
    server_ip: String,
}

fn routed() -> Routed {
    let (client, router, server) = (Netns::new("kmc"), Netns::new("kmr"), Netns::new("kms"));
    let (c, r1, r2, s) = (unique("kmc"), unique("kmr"), unique("kmq"), unique("kms"));
    sh("ip", &["link", "add", &c, "type", "veth", "peer", "name", &r1]);
    sh("ip", &["link", "add", &r2, "type", "veth", "peer", "name", &s]);
    for (ifname, ns) in [(&c, &client), (&r1, &router), (&r2, &router), (&s, &server)] {
        sh("ip", &["link", "set", ifname, "netns", &ns.name]);
    }
    let mtu = FAR_MTU.to_string();
    for (ns, ifname, addr, mtu) in [
        (&client, &c, "10.243.1.2/24", "1500"),
        (&router, &r1, "10.243.1.1/24", "1500"),
        (&router, &r2, "10.243.2.1/24", mtu.as_str()),
        (&server, &s, "10.243.2.2/24", mtu.as_str()),
    ] {
        ns.run("ip", &["addr", "add", addr, "dev", ifname]);
        ns.run("ip", &["link", "set", ifname, "mtu", mtu, "up"]);
        let _ = ns.try_run("sysctl", &["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]);
    }
    client.run("ip", &["route", "add", "default", "via", "10.243.1.1"]);
    server.run("ip", &["route", "add", "default", "via", "10.243.2.1"]);
    router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    Routed { client, router, server, client_if: c, server_ip: "10.243.2.2".into() }
}

fn ping(ns: &Netns, dst: &str, size: u32, count: u32) -> bool {
    ns.try_run(
        "ping",
        &["-n", "-M", "do", "-c", &count.to_string(), "-i", "0.2", "-W", "1", "-s", &size.to_string(), dst],
    )
    .status
    .success()
}

#[test]
fn oversized_df_packets_and_frag_needed_are_counted_on_the_flow() {
    let net = routed();
    assert!(ping(&net.client, &net.server_ip, 56, 1), "the routed path works");
    // The client's interface watched as a pod interface whose path MTU is the far link's.
    let overlay = FAR_MTU.to_string();
    let d = Daemon::start(
        &net.client,
        9483,
        &["--pod-iface", &net.client_if, "--overlay-mtu", &overlay, "--ovsdb", "none", "--kubernetes", "off"],
        1,
    );
    // 1400 bytes of payload: 1428-byte IP packets with DF, above 1300.
    assert!(!ping(&net.client, &net.server_ip, 1400, 3), "DF packets above the far MTU cannot pass");
    assert!(ping(&net.client, &net.server_ip, 1200, 2), "packets below it still do");
    // Independently of kovn: the client's kernel learnt the path MTU from the router's ICMP.
    let route = net.client.run("ip", &["route", "get", &net.server_ip]);
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(route.contains(&format!("mtu {FAR_MTU}")), "the kernel's PMTU cache: {route}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let big = loop {
        let flows = d.flows();
        let big = flows.iter().find(|f| {
            f["protocol"] == "icmp"
                && f["dst_ip"] == net.server_ip.as_str()
                && f["mtu"]["too_big_messages"].as_u64() >= Some(1)
        });
        if let Some(f) = big {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no flow with an ICMP too-big in 10 s: {flows:#?}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let m = &big["mtu"];
    assert!(m["oversized_packets"].as_u64() >= Some(1), "oversized DF packets counted: {big:#}");
    assert_eq!(m["oversized_max_bytes"], 1428, "the largest, in L3 bytes: {big:#}");
    assert_eq!(m["reported_mtu"], FAR_MTU, "the router's frag-needed MTU: {big:#}");
    assert_eq!(big["state"], "unanswered", "{big:#}");
    // The answered small pings carry no MTU signal.
    let flows = d.flows();
    let small = flows
        .iter()
        .filter(|f| {
            f["protocol"] == "icmp" && f["dst_ip"] == net.server_ip.as_str() && f["state"] == "answered"
        })
        .collect::<Vec<_>>();
    assert!(
        !small.is_empty() && small.iter().all(|f| f.get("mtu").is_none_or(|m| m.is_null())),
        "{small:#?}"
    );
    let _ = (&net.router, &net.server);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}
