//! The tunnel-device path: a kernel VXLAN device in metadata mode (`external`, as OVS's kernel
//! datapath creates `vxlan_sys_4789` / `genev_sys_6081`), with lightweight-tunnel routes
//! (`encap ip id VNI dst REMOTE`) setting the tunnel key the way OVS's `set_tunnel` does. The
//! monitor must learn the remote endpoint and VNI from the key on the tunnel device, and from
//! the outer headers on the underlay veth, and both must agree with the routes and with
//! tcpdump's count of outer packets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kovn_tests::{Daemon, Netns, Pair, capture_in, echo_servers, find_flow, in_netns};

const VNI: u32 = 4242;
const DEV: &str = "vxlan_sys_4789";

/// Both ends of the pair get a metadata-mode VXLAN device with an overlay address, a route
/// to the other's overlay address that encapsulates with VNI towards the other's underlay
/// address, and a static neighbour (ARP cannot cross a metadata-mode device without a key).
fn overlay(p: &Pair, octet: u8) -> (String, String) {
    let ov = |n: u8| format!("10.232.{octet}.{n}");
    let ends = [(&p.a, ov(1), ov(2), &p.b_ip), (&p.b, ov(2), ov(1), &p.a_ip)];
    for (ns, _, _, _) in &ends {
        ns.run("ip", &["link", "add", DEV, "type", "vxlan", "external", "dstport", "4789"]);
        ns.run("ip", &["link", "set", DEV, "up"]);
        let _ = ns.try_run("sysctl", &["-qw", &format!("net.ipv6.conf.{DEV}.disable_ipv6=1")]);
    }
    let mac = |ns: &Netns| {
        let out = ns.run("cat", &[&format!("/sys/class/net/{DEV}/address")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let macs = [mac(&p.b), mac(&p.a)];
    for ((ns, local, remote, remote_ul), remote_mac) in ends.iter().zip(macs) {
        ns.run("ip", &["addr", "add", &format!("{local}/32"), "dev", DEV]);
        let vni = VNI.to_string();
        ns.run(
            "ip",
            &[
                "route",
                "add",
                &format!("{remote}/32"),
                "encap",
                "ip",
                "id",
                &vni,
                "dst",
                remote_ul,
                "dev",
                DEV,
            ],
        );
        ns.run("ip", &["neigh", "add", remote, "lladdr", &remote_mac, "dev", DEV, "nud", "permanent"]);
    }
    (ov(1), ov(2))
}

fn wait_flow(d: &Daemon, what: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = d.flows();
        if what(&flows) {
            return flows;
        }
        assert!(Instant::now() < deadline, "flow not seen in 10 s: {flows:#?}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tunnel_key_names_the_remote_endpoint_and_vni() {
    let p = Pair::new(61);
    let (a_ov, b_ov) = overlay(&p, 61);
    let ping = p.a.try_run("ping", &["-c", "1", "-W", "2", &b_ov]);
    assert!(ping.status.success(), "the overlay must work before kovn watches it: {ping:?}");
    let stop = echo_servers(&p.b.name, &b_ov, 7300, 7301);
    // Default --tunnel-iface covers vxlan_sys_4789: only the underlay is named.
    let d = Daemon::start(
        &p.a,
        9481,
        &["--ovsdb", "none", "--kubernetes", "off", "--underlay-iface", &p.a_if],
        2,
    );
    let health = d.health().expect("health");
    let kinds: Vec<(String, String)> = health["attached_interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| (i["name"].as_str().unwrap_or("").to_string(), i["kind"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(kinds.contains(&(DEV.to_string(), "tunnel".to_string())), "{kinds:?}");

    let cap = capture_in(&p.a.name, &p.a_if, "udp port 4789");
    let ping = p.a.try_run("ping", &["-c", "4", "-i", "0.2", "-W", "2", &b_ov]);
    assert!(ping.status.success(), "{ping:?}");
    let dst: SocketAddr = format!("{b_ov}:7300").parse().expect("addr");
    in_netns(&p.a.name, move || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        c.write_all(b"over the tunnel").expect("send");
        let mut buf = [0u8; 15];
        c.read_exact(&mut buf).expect("echo");
    })
    .join()
    .expect("tcp client");
    let outer = cap.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let flows = wait_flow(&d, |f| {
        find_flow(f, &a_ov, &b_ov, "icmp", None).is_some_and(|f| f["packets_rev"] == 4)
            && find_flow(f, &a_ov, &b_ov, "tcp", Some(7300)).is_some_and(|f| f["state"] == "closed")
    });
    for (proto, port) in [("icmp", None), ("tcp", Some(7300))] {
        let f = find_flow(&flows, &a_ov, &b_ov, proto, port).expect("flow");
        let t = &f["tunnel"];
        assert_eq!(t["remote_ip"], p.b_ip.as_str(), "remote endpoint from the key and the wire: {f:#}");
        assert_eq!(t["vni"], VNI, "{f:#}");
        assert_eq!(t["encap"], "vxlan", "{f:#}");
        // Seen leaving and entering the tunnel device, then on the underlay: each direction
        // counted once (at the tunnel device, the first hook of this node to see it).
        let points: Vec<(String, String, String)> = f["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .map(|i| {
                let s = |k: &str| i[k].as_str().unwrap_or("").to_string();
                (s("kind"), s("direction"), s("flow_direction"))
            })
            .collect();
        for want in [("tunnel", "egress", "fwd"), ("tunnel", "ingress", "rev"), ("underlay", "egress", "fwd")]
        {
            let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
            assert!(points.contains(&want), "{want:?} missing from {points:?}");
        }
    }
    // tcpdump's VXLAN packets on the underlay are exactly the two flows' packets both ways
    // (nothing else crosses this pair's underlay).
    let both: u64 = ["icmp", "tcp"]
        .iter()
        .map(|p_| {
            let f = find_flow(&flows, &a_ov, &b_ov, p_, None).expect("flow");
            f["packets_fwd"].as_u64().unwrap() + f["packets_rev"].as_u64().unwrap()
        })
        .sum();
    let outer_count = outer.iter().filter(|o| o.dport == 4789).count() as u64;
    assert_eq!(outer_count, both, "tcpdump's VXLAN packets vs the flows' packets");
    let outer_seen: u64 = ["icmp", "tcp"]
        .iter()
        .map(|p_| {
            find_flow(&flows, &a_ov, &b_ov, p_, None).unwrap()["tunnel"]["outer_packets"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(outer_seen, outer_count, "outer packets are the underlay's, counted once");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn tunnel_device_alone_still_learns_the_remote_node() {
    // Kube-OVN with the kernel datapath and no --underlay-iface: only the tunnel device.
    let p = Pair::new(62);
    let (a_ov, b_ov) = overlay(&p, 62);
    let d = Daemon::start(&p.a, 9482, &["--ovsdb", "none", "--kubernetes", "off"], 1);
    let ping = p.a.try_run("ping", &["-c", "3", "-i", "0.2", "-W", "2", &b_ov]);
    assert!(ping.status.success(), "{ping:?}");
    let flows =
        wait_flow(&d, |f| find_flow(f, &a_ov, &b_ov, "icmp", None).is_some_and(|f| f["packets_rev"] == 3));
    let f = find_flow(&flows, &a_ov, &b_ov, "icmp", None).expect("flow");
    assert_eq!(f["tunnel"]["remote_ip"], p.b_ip.as_str(), "{f:#}");
    assert_eq!(f["tunnel"]["vni"], VNI, "{f:#}");
    assert_eq!(f["tunnel"]["encap"], "vxlan", "named after the device: {f:#}");
    assert!(f["tunnel"].get("outer_packets").is_none(), "no outer headers without the underlay: {f:#}");
    assert_eq!((f["packets_fwd"].as_u64(), f["state"].as_str()), (Some(3), Some("answered")), "{f:#}");
    let _ = d.stop();
}
