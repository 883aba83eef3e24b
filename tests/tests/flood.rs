//! Flow-table pressure and spoofing (issue #14, items 2 and 3), with the real programs on real
//! veths: a node namespace with a bridge and three Kube-OVN-named pod veths, named through an
//! inventory file (`host_iface`), and a fast sender of new flows (raw frames on the pod's
//! `eth0`, a new UDP source port per frame). The kernel's own interface counters and tcpdump
//! are the independent truth.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kovn_tests::{Capture, Daemon, Netns, in_netns};

/// A host veth name as Kube-OVN makes them: 12 hex digits (unique per test) and `_h`.
fn kube_ovn_veth() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:08x}{:04x}_h", std::process::id(), (n + 0x100) & 0xffff)
}

/// A MAC nobody has: frames to it are unknown unicast on the bridge.
const NOBODY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xff, 0x01];

struct Pod {
    ns: Netns,
    veth: String,
    ip: [u8; 4],
    mac: [u8; 6],
}

impl Pod {
    fn ip_str(&self) -> String {
        std::net::Ipv4Addr::from(self.ip).to_string()
    }
}

/// The node (the daemon's namespace, bridge `br0`) and its pods `flood`, `client`, `server`
/// (10.236.<o>.2, .3, .4).
struct PodNode {
    node: Netns,
    pods: Vec<Pod>,
    inventory: tempfile::NamedTempFile,
    octet: u8,
}

impl PodNode {
    fn new(octet: u8) -> Self {
        let node = Netns::new("ktf");
        node.run("ip", &["link", "add", "br0", "type", "bridge"]);
        node.run("ip", &["link", "set", "br0", "up"]);
        let _ = node.try_run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        let mut pods = Vec::new();
        let mut yaml = String::from("pods:\n");
        for (i, name) in ["flood", "client", "server"].into_iter().enumerate() {
            let ns = Netns::new("ktp");
            let _ = ns.try_run("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            let _ = ns.try_run("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
            let veth = kube_ovn_veth();
            let ip = [10, 236, octet, 2 + i as u8];
            let mac = [0x02, 0, 0, octet, 0, 2 + i as u8];
            let mac_s = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            node.run(
                "ip",
                &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "address", &mac_s],
            );
            node.run("ip", &["link", "set", "eth0", "netns", &ns.name]);
            node.run("ip", &["link", "set", &veth, "master", "br0", "up"]);
            let ip_s = std::net::Ipv4Addr::from(ip).to_string();
            ns.run("ip", &["addr", "add", &format!("{ip_s}/24"), "dev", "eth0"]);
            ns.run("ip", &["link", "set", "eth0", "up"]);
            // The silent addresses the tests send to: resolved, so frames leave the pod.
            for host in [99, 200] {
                ns.run(
                    "ip",
                    &[
                        "neigh",
                        "replace",
                        &format!("10.236.{octet}.{host}"),
                        "lladdr",
                        "02:00:00:00:ff:01",
                        "dev",
                        "eth0",
                    ],
                );
            }
            yaml.push_str(&format!(
                "  - {{namespace: default, name: {name}, node: kt-node, ips: [{ip_s}], workload: Deployment/{name}, host_iface: {veth}}}\n"
            ));
            pods.push(Pod { ns, veth, ip, mac });
        }
        let mut inventory = tempfile::NamedTempFile::new().expect("inventory file");
        use std::io::Write as _;
        inventory.write_all(yaml.as_bytes()).expect("write inventory");
        Self { node, pods, inventory, octet }
    }

    fn daemon(&self, port: u16, extra: &[&str]) -> Daemon {
        let inv = self.inventory.path().to_str().expect("utf-8 path").to_string();
        let mut args = vec!["--node-name", "kt-node", "--inventory-file", &inv, "--reply-timeout", "1s"];
        args.extend_from_slice(extra);
        Daemon::start(&self.node, port, &args, 3)
    }

    fn silent(&self, host: u8) -> [u8; 4] {
        [10, 236, self.octet, host]
    }
}

/// A UDP/IPv4 frame from `pod` (its MAC, source `src`) to `dst` behind [`NOBODY_MAC`].
fn udp_frame(pod_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = NOBODY_MAC.to_vec();
    f.extend_from_slice(&pod_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend(kovn_tests::frames::ipv4(
        src,
        dst,
        17,
        0,
        0x4000,
        &kovn_tests::frames::udp(sport, dport, b"kovn"),
    ));
    f
}

/// Sends frames built by `frame(i)` on the pod's `eth0` through an AF_PACKET socket, as fast
/// as it goes, for `secs` (or `count` frames); returns how many the kernel took.
fn blast(
    ns: &str,
    secs: Duration,
    count: u64,
    frame: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    in_netns(ns, move || {
        // SAFETY: plain socket calls with valid arguments; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex != 0, "eth0 in the pod");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < count && (!sent.is_multiple_of(256) || started.elapsed() < secs) {
                let f = frame(sent);
                let rc = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const sll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                if rc > 0 {
                    sent += 1;
                }
            }
            libc::close(fd);
            sent
        }
    })
}

/// The kernel's own count of packets a pod's `eth0` sent.
fn tx_packets(pod: &Pod) -> u64 {
    let out = pod.ns.run("cat", &["/sys/class/net/eth0/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|e| panic!("tx_packets: {e}"))
}

fn kernel_counter(d: &Daemon, name: &str) -> u64 {
    d.health().and_then(|h| h["kernel_counters"][name].as_u64()).unwrap_or(0)
}

fn alerts(d: &Daemon) -> Vec<serde_json::Value> {
    d.get("/api/v1/alerts").and_then(|a| a["alerts"].as_array().cloned()).unwrap_or_default()
}

/// A TCP connect from `pod` to a silent address in the background: SYN and retransmits, never
/// an answer (a real request without reply).
fn silent_connect(pod: &Pod, dst: [u8; 4]) -> std::thread::JoinHandle<()> {
    let dst = SocketAddr::from((dst, 8080));
    in_netns(&pod.ns.name, move || {
        let _ = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(6));
    })
}

fn flood_secs() -> Duration {
    Duration::from_secs(std::env::var("KOVN_FLOOD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20))
}

/// One pod floods new flows; another pod's unanswered connection on the same node must still
/// be seen (flow, `request_without_reply`), and the flood is reported as a `flow_flood` finding
/// and metrics naming the flooding pod. First without the budget (`--pod-new-flow-rate 0`):
/// the table fills and the other pod's flow is lost (`map_full`), which is what the budget
/// is for.
#[test]
fn a_flooding_pod_does_not_blind_the_node() {
    let n = PodNode::new(41);
    let (flood, client) = (&n.pods[0], &n.pods[1]);
    let flood_ip = flood.ip;
    let flood_mac = flood.mac;
    let target = n.silent(200);
    let silent = n.silent(99);
    let frame = move |i: u64| {
        // A new source port per frame (an LCG over 1024..65535): one new flow each.
        let sport = 1024
            + ((i.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(3_037_000_493) >> 40) % 64_511) as u16;
        let dport = 9 + (i / 64_511 % 1000) as u16;
        udp_frame(flood_mac, flood_ip, target, sport, dport)
    };

    // --- Without the budget: the node is blind to the client.
    let d = n.daemon(19501, &["--flow-table-size", "4096", "--pod-new-flow-rate", "0"]);
    let blaster = blast(&flood.ns.name, Duration::from_secs(4), u64::MAX, frame);
    std::thread::sleep(Duration::from_secs(2));
    silent_connect(client, silent).join().expect("client");
    let _ = blaster.join().expect("flood");
    d.settle();
    let flows = d.flows();
    let lost = kernel_counter(&d, "map_full");
    assert!(lost > 0, "without a budget the flood fills the table: {:#}", d.health().unwrap_or_default());
    assert!(
        !flows.iter().any(|f| f["src_ip"] == client.ip_str()),
        "without a budget the client's flow should have been lost (map_full {lost})"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");

    // --- With the default budget (table 4096: 8 new flows/s per pod, burst 64).
    let d = n.daemon(19502, &["--flow-table-size", "4096"]);
    let tx0 = tx_packets(flood);
    let secs = flood_secs();
    let started = Instant::now();
    let blaster = blast(&flood.ns.name, secs, u64::MAX, frame);
    std::thread::sleep(secs / 3);
    let conn = silent_connect(client, silent);
    // Findings are judged while the flood goes on.
    let deadline = Instant::now() + secs;
    let (mut rwr, mut flood_alert) = (None, None);
    while Instant::now() < deadline && (rwr.is_none() || flood_alert.is_none()) {
        for a in alerts(&d) {
            if a["state"] != "firing" {
                continue;
            }
            if a["kind"] == "request_without_reply" && a["src_ip"] == client.ip_str() {
                rwr = Some(a.clone());
            }
            if a["kind"] == "flow_flood" {
                flood_alert = Some(a.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let during = started.elapsed();
    let sent = blaster.join().expect("flood");
    let elapsed = started.elapsed();
    conn.join().expect("client");
    let tx = tx_packets(flood) - tx0;
    let rate = tx as f64 / elapsed.as_secs_f64();
    eprintln!(
        "flood: {sent} frames sent by the test ({tx} by the kernel's count on eth0) in {:.1} s = {rate:.0} new flows/s; findings checked for {:.1} s",
        elapsed.as_secs_f64(),
        during.as_secs_f64()
    );
    assert!(tx >= sent, "the kernel counted {tx} frames, the sender {sent}");
    d.settle();
    let health = d.health().expect("health");
    let flows = d.flows();
    let rwr = rwr.unwrap_or_else(|| {
        panic!(
            "no request_without_reply for the client during the flood: {:#?}\nflows of the client: {:#?}\nhealth: {health:#}",
            alerts(&d),
            flows.iter().filter(|f| f["src_ip"] == client.ip_str()).collect::<Vec<_>>()
        )
    });
    assert_eq!(rwr["src"]["pod"], "client", "{rwr:#}");
    let fa = flood_alert.unwrap_or_else(|| panic!("no flow_flood finding: {:#?}", alerts(&d)));
    assert_eq!(
        (fa["src"]["namespace"].as_str(), fa["src"]["pod"].as_str()),
        (Some("default"), Some("flood")),
        "{fa:#}"
    );
    assert_eq!(kernel_counter(&d, "map_full"), 0, "the table never filled: {health:#}");
    let refused = kernel_counter(&d, "source_budget");
    let flood_flows: Vec<_> =
        flows.iter().filter(|f| f["src_ip"] == std::net::Ipv4Addr::from(flood_ip).to_string()).collect();
    let recorded = flood_flows.len() as u64;
    let recorded_pkts: u64 = flood_flows.iter().filter_map(|f| f["packets_fwd"].as_u64()).sum();
    // Every frame the flood sent was either counted in one of the budget's flows (a source
    // port can repeat) or refused, at least once (the other pods' veths see the frames too:
    // unknown unicast).
    assert!(
        refused + recorded_pkts >= tx,
        "refused {refused} + packets of recorded flows {recorded_pkts} < sent {tx}"
    );
    // The budget: burst 64 + 8/s (a little more for races between CPUs).
    let budget = 64 + 8 * (elapsed.as_secs() + 3);
    assert!(recorded <= budget + 16, "{recorded} flood flows recorded, budget {budget}");
    let m = d.metric_sum(
        "kovn_flows_refused_total",
        &[("reason", "source_budget"), ("namespace", "default"), ("workload", "Deployment/flood")],
    );
    assert!(
        m as u64 >= tx - recorded_pkts,
        "kovn_flows_refused_total {m} for the flooding pod, {tx} sent, {recorded_pkts} in recorded flows"
    );
    assert_eq!(
        d.metric_sum("kovn_flows_refused_total", &[("workload", "Deployment/client")]),
        0.0,
        "the client was never over its budget"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// A pod sending with another pod's source address: counted as spoofed on the sending pod
/// (as many as tcpdump saw), recorded as no flow, no finding names the other pod; the pod's
/// own traffic is still recorded.
#[test]
fn spoofed_sources_are_counted_on_the_pod_and_name_nobody() {
    let n = PodNode::new(42);
    // No unknown-unicast flooding: the forged frames stay on the client's veth.
    for p in &n.pods {
        n.node.run("bridge", &["link", "set", "dev", &p.veth, "flood", "off"]);
    }
    let (client, server) = (&n.pods[1], &n.pods[2]);
    let d = n.daemon(19503, &[]);
    let cap = Capture::start(&n.node, &client.veth);
    std::thread::sleep(Duration::from_secs(1));
    let (mac, forged, own) = (client.mac, server.ip, client.ip);
    let target = n.silent(200);
    let sent = blast(&client.ns.name, Duration::from_secs(30), 50, move |i| {
        // Paced: tcpdump keeps every frame.
        std::thread::sleep(Duration::from_millis(5));
        udp_frame(mac, forged, target, 40_000 + i as u16, 53)
    })
    .join()
    .expect("forged");
    assert_eq!(sent, 50);
    // The client's own traffic on the same veth.
    let own_sent =
        blast(&client.ns.name, Duration::from_secs(30), 3, move |_| udp_frame(mac, own, target, 41_000, 53))
            .join()
            .expect("own");
    let pkts = cap.finish();
    d.settle();
    let server_ip: std::net::IpAddr = server.ip_str().parse().expect("ip");
    let seen_forged = pkts.iter().filter(|p| p.src == server_ip).count() as u64;
    assert_eq!(seen_forged, 50, "tcpdump saw the forged frames on the client's veth");
    assert_eq!(kernel_counter(&d, "spoofed"), seen_forged, "{:#}", d.health().unwrap_or_default());
    assert_eq!(
        d.metric_sum(
            "kovn_spoofed_packets_total",
            &[("namespace", "default"), ("workload", "Deployment/client")]
        ),
        seen_forged as f64
    );
    assert_eq!(d.metric_sum("kovn_spoofed_packets_total", &[("workload", "Deployment/server")]), 0.0);
    let flows = d.flows();
    let named_server: Vec<_> =
        flows.iter().filter(|f| f["src_ip"] == server.ip_str() || f["dst_ip"] == server.ip_str()).collect();
    assert!(named_server.is_empty(), "flows naming the server from forged frames: {named_server:#?}");
    let own = flows
        .iter()
        .find(|f| f["src_ip"] == client.ip_str() && f["src_port"] == 41_000)
        .unwrap_or_else(|| panic!("the client's own flow is recorded: {flows:#?}"));
    assert_eq!(own["packets_fwd"], own_sent, "{own:#}");
    std::thread::sleep(Duration::from_secs(2));
    let named: Vec<_> = alerts(&d)
        .into_iter()
        .filter(|a| a["src"]["pod"] == "server" || a["dst"]["pod"] == "server")
        .collect();
    assert!(named.is_empty(), "findings naming the server: {named:#?}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// One `/metrics` scrape from inside the daemon's namespace (curl, as Prometheus would).
fn scrape(ns: &str, port: u16) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cumulative samples of a scrape, by series (name and labels): counters and histograms'
/// `_bucket`, `_count` and `_sum` (RTTs are never negative), as the `# TYPE` lines declare them.
fn cumulative_series(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut kinds = std::collections::HashMap::new();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            if let Some((family, kind)) = decl.split_once(' ') {
                kinds.insert(family.to_string(), kind.trim().to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
        let name = series.split('{').next().unwrap_or(series);
        // prometheus-client names a counter's family with its `_total`, a histogram's without
        // the `_bucket`/`_count`/`_sum` of its samples.
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|f| kinds.contains_key(*f))
            .unwrap_or(name);
        if matches!(kinds.get(family).map(String::as_str), Some("counter" | "histogram")) {
            let v: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
            out.insert(series.to_string(), v);
        }
    }
    out
}

/// Issue #15's acceptance: Prometheus never sees a counter go backwards while the daemon runs,
/// through kernel slot reuse and collisions. A small table (1,024 slots and a 1,024-entry hash
/// map for the flows whose slot is taken), a 1 s idle timeout and no new-flow budget; rounds of
/// 3,000 short UDP flows (two packets each) from one pod, alternating between two port ranges
/// with pauses past the idle timeout: each round collides in the slots, overflows the hash map
/// (`map_full`), expires, and the next fills the freed slots with other flows or with new
/// incarnations of the same 5-tuples (the same flow ids, counters starting over in the kernel).
/// `/metrics` is scraped every 100 ms throughout; every counter and histogram series must be
/// non-decreasing from one scrape to the next and never vanish. The only reset the exporter
/// documents is a label set removed after `--metrics-series-ttl`, here 10 min, longer than the
/// test. Independent truth for the reuse: more packets were recorded over the test than the
/// table can hold at once, and no more than the pod's `eth0` sent.
///
/// The metrics also add up to what the kernel recorded: every packet sent but those the full
/// table turned away (`map_full`). Before the exporter told incarnations apart by the kernel's
/// first-seen time, a 5-tuple back with the same counts added nothing (8,040 packets in the
/// metrics of 24,120 recorded).
#[test]
fn metrics_never_go_backwards_through_slot_reuse_and_collisions() {
    let n = PodNode::new(43);
    let flood = &n.pods[0];
    let (flood_ip, flood_mac, target) = (flood.ip, flood.mac, n.silent(200));
    let port = 19504;
    let d = n.daemon(
        port,
        &[
            "--flow-table-size",
            "1024",
            "--pod-new-flow-rate",
            "0",
            "--flow-idle-timeout",
            "1s",
            "--metrics-series-ttl",
            "10m",
        ],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (ns, stop) = (d.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(text) = scrape(&ns, port) {
                    scrapes.push((Instant::now(), cumulative_series(&text)));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            scrapes
        })
    };
    let tx_before = tx_packets(flood);
    const FLOWS: u64 = 3000;
    const ROUNDS: u64 = 6;
    let mut sent = 0;
    for round in 0..ROUNDS {
        let base = if round % 2 == 0 { 10_000 } else { 20_000 };
        // Each source port twice, in two passes: every flow gets a second packet.
        sent += blast(&flood.ns.name, Duration::from_secs(30), 2 * FLOWS, move |i| {
            udp_frame(flood_mac, flood_ip, target, base + (i % FLOWS) as u16, 53)
        })
        .join()
        .expect("blast");
        // Past the idle timeout and a poll: the round's flows expire and free their slots.
        std::thread::sleep(Duration::from_millis(1800));
    }
    d.settle();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper");
    let tx = tx_packets(flood) - tx_before;
    assert_eq!(sent, 2 * FLOWS * ROUNDS, "frames the kernel took");
    assert!(scrapes.len() >= 50, "only {} scrapes succeeded:\n{}", scrapes.len(), d.log_text());

    // The table overflowed (collisions filled the hash map) and was reused.
    let health = d.health().unwrap_or_default();
    let lost = health["kernel_counters"]["map_full"].as_u64().unwrap_or(0);
    assert!(lost > 0, "the collisions overflow the hash map: {health:#}");
    let recorded = d.metric_sum("kovn_flow_packets_total", &[]);
    assert_eq!(
        recorded as u64,
        sent - lost,
        "the metrics count every packet the kernel recorded: {sent} sent, {lost} turned away (map_full)"
    );
    assert!(
        recorded > 2.0 * 2048.0 && recorded <= tx as f64,
        "packets recorded over the test ({recorded}) exceed what 2,048 two-packet flows hold at once \
         (slots were reused) and are no more than the pod sent ({tx})"
    );

    // Every series, scrape after scrape: never down, never gone.
    let last = &scrapes[scrapes.len() - 1].1;
    for family in ["kovn_flow_packets_total{", "kovn_requests_total{", "kovn_kernel_records_lost_total{"] {
        assert!(
            last.keys().any(|s| s.starts_with(family)),
            "no {family}..}} series in the scrape: {last:#?}"
        );
    }
    eprintln!(
        "{} scrapes of {} cumulative series; {recorded} packets recorded of {tx} sent; map_full {lost}",
        scrapes.len(),
        last.len()
    );
    let started = scrapes[0].0;
    let mut violations = Vec::new();
    for pair in scrapes.windows(2) {
        let ((_, before), (at, after)) = (&pair[0], &pair[1]);
        for (series, &was) in before {
            match after.get(series) {
                Some(&now) if now < was => violations.push(format!(
                    "{:.1}s: {series} went backwards: {was} -> {now}",
                    at.duration_since(started).as_secs_f64()
                )),
                Some(_) => {}
                None => violations.push(format!(
                    "{:.1}s: {series} vanished (was {was})",
                    at.duration_since(started).as_secs_f64()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} violations over {} scrapes, first ones:\n{}",
        violations.len(),
        scrapes.len(),
        violations.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}
