//! Per-packet cost of the classifier under BPF_PROG_TEST_RUN, beside the empty classifier in
//! the same run, reported as ratios (absolute nanoseconds on a shared VM are noise).
//! Needs root: `sudo cargo bench -p kovn-tests --bench classifier` or `./x bench`.
//!
//! Cases: a packet of an existing flow (IPv4 and IPv6), and a packet that creates a new flow.
//! The first two use one test run with `repeat` iterations; a new flow needs a distinct packet
//! per run, so it is measured as many single runs, against single runs of the empty program.

use std::time::Duration;

use aya::{TestRun as _, TestRunOptions};
use kovn_monitor::capture::{Capture, FlowTableKind};
use kovn_tests::frames::*;

const REPEAT: u32 = 2_000_000;
const NEW_FLOWS: u16 = 50_000;
const ROUNDS: usize = 7;

fn per_run(cap: &mut Capture, prog: &'static str, frame: &[u8], repeat: u32) -> Duration {
    cap.program_mut(prog)
        .expect("program")
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
        .expect("test run")
        .duration
}

/// Average of single runs over distinct frames (each one a new flow for the observer).
fn single_runs(cap: &mut Capture, prog: &'static str, frames: &[Vec<u8>]) -> Duration {
    let total: Duration = frames.iter().map(|f| per_run(cap, prog, f, 1)).sum();
    total / frames.len() as u32
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Median and spread of one ratio over the rounds.
fn summary(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.2}x (min {:.2}x, max {:.2}x, {} rounds)", v[v.len() / 2], v[0], v[v.len() - 1], v.len())
}

const OBSERVER: &str = "kovn_pod_ingress";
const UNDERLAY: &str = "kovn_underlay_ingress";

/// The flow-table variants compared in the same run (BENCHMARKS.md), with or without the pod
/// guard: a guard for the test runs' interface (lo, ifindex 1) holding the frames' source
/// addresses, so every packet passes the source check, and a new-flow budget too large to
/// refuse anything in the run, so new flows take the budget's admit path; without, no guard
/// and no budget (the verifier drops the budget code; the source check is one array lookup
/// that finds no guard).
const VARIANTS: [(FlowTableKind, bool, &str); 3] = [
    (FlowTableKind::Slots, true, "slots + hash fallback, pod guard"),
    (FlowTableKind::Slots, false, "slots + hash fallback, no guard"),
    (FlowTableKind::Hash, true, "hash only, pod guard"),
];

/// A budget that admits every new flow of the run (1 ns apart, a burst of 10^9).
const BENCH_BUDGET: kovn_monitor::guard::FlowBudget =
    kovn_monitor::guard::FlowBudget { per_sec: 1_000_000_000, burst: 1_000_000_000 };

fn main() {
    kovn_tests::require_root();
    let size = std::env::var("KOVN_BENCH_TABLE").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let mut caps: Vec<Capture> = VARIANTS
        .iter()
        .map(|&(kind, guard, _)| {
            let budget = if guard { BENCH_BUDGET } else { kovn_monitor::guard::FlowBudget::OFF };
            let mut cap = Capture::load_full(size, kind, budget).expect("load");
            if guard {
                let addrs = vec![std::net::IpAddr::from(A4), std::net::IpAddr::from(A6)];
                cap.sync_guards(&std::iter::once((1u32, addrs)).collect()).expect("pod guard for lo");
            }
            cap
        })
        .collect();
    caps[0].load_program("kovn_noop").expect("load the empty classifier");
    // 64-byte frames: Ethernet + IPv4 + TCP ACK with 10 bytes of payload.
    let v4 = cat(&[&eth(&[], ETH_IPV4), &ipv4(A4, B4, 6, 0, 0, &tcp(40000, 80, TCP_ACK, &[0; 10]))]);
    let v6 = cat(&[&eth(&[], ETH_IPV6), &ipv6(A6, B6, 6, &tcp(40000, 80, TCP_ACK, &[0; 10]))]);
    // The underlay NIC: the same inner packet in Geneve (8 bytes of options, as OVN sends)
    // between two node IPs, opened to the inner flow.
    let geneve4 = outer4([172, 18, 0, 2], [172, 18, 0, 3], 6081, &geneve(7, 2, &v4));
    // Create the flows first so the measured runs update them in place.
    for cap in &mut caps {
        per_run(cap, OBSERVER, &v4, 1);
        per_run(cap, OBSERVER, &v6, 1);
        per_run(cap, UNDERLAY, &geneve4, 1);
        let kind = cap.flow_table_kind();
        let t = cap.read_flow_table().expect("table");
        println!("{kind:?}: {} flows in slots, {} in the hash map", t.slots.len(), t.hash.len());
    }
    println!("kovn classifier, BPF_PROG_TEST_RUN, repeat {REPEAT} (kernel {})", kernel());
    // KOVN_BENCH_QUICK=1: only the existing-flow cases, one round (for quick comparisons).
    let quick = std::env::var_os("KOVN_BENCH_QUICK").is_some();
    let rounds = if quick { 1 } else { ROUNDS };
    // ratios[variant] = (IPv4, IPv6, Geneve, new flow) per round
    let mut ratios: Vec<[Vec<f64>; 4]> = VARIANTS.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        let frames: Vec<Vec<u8>> = (0..NEW_FLOWS)
            .map(|i| {
                let sport = 1024 + i;
                // From the guarded pod's address (A4) to distinct destinations.
                let dst = [10, 17, (round as u8) + 1, (i % 250) as u8];
                cat(&[&eth(&[], ETH_IPV4), &ipv4(A4, dst, 6, 0, 0, &tcp(sport, 80, TCP_SYN, &[0; 10]))])
            })
            .collect();
        let mut line = format!("round {round}:");
        // Alternate the order of the variants between rounds; the empty classifier is measured
        // before each variant's runs.
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1, 2] } else { vec![2, 1, 0] };
        for &vi in &order {
            let empty = ns(per_run(&mut caps[0], "kovn_noop", &v4, REPEAT));
            let cap = &mut caps[vi];
            let r4 = ns(per_run(cap, OBSERVER, &v4, REPEAT)) / empty;
            let r6 = ns(per_run(cap, OBSERVER, &v6, REPEAT)) / empty;
            let rg = ns(per_run(cap, UNDERLAY, &geneve4, REPEAT)) / empty;
            let rn = if quick {
                f64::NAN
            } else {
                let empty_single = ns(single_runs(&mut caps[0], "kovn_noop", &frames));
                ns(single_runs(&mut caps[vi], OBSERVER, &frames)) / empty_single
            };
            for (i, r) in [r4, r6, rg, rn].into_iter().enumerate() {
                ratios[vi][i].push(r);
            }
            line += &format!(
                " | {}: empty {empty:.1} ns, IPv4 {r4:.2}x, IPv6 {r6:.2}x, Geneve {rg:.2}x, new {rn:.2}x",
                VARIANTS[vi].2
            );
        }
        println!("{line}");
    }
    println!("ratios to the empty classifier (kovn_noop) in the same run, median of the rounds:");
    for (vi, (_, _, name)) in VARIANTS.iter().enumerate() {
        println!("  [{name}]");
        println!("    existing flow, IPv4 (goal <= 2.5x): {}", summary(&ratios[vi][0]));
        println!("    existing flow, IPv6 (goal <= 2.5x): {}", summary(&ratios[vi][1]));
        println!(
            "    underlay, Geneve-encapsulated existing flow (goal <= 3.0x): {}",
            summary(&ratios[vi][2])
        );
        if !quick {
            println!("    new flow, IPv4 SYN, single runs (goal <= 4x): {}", summary(&ratios[vi][3]));
        }
    }
    for cap in &caps {
        let c = cap.counters().expect("counters");
        let lost: u64 = c.values().sum();
        println!(
            "  {:?}: kernel counters {c:?}{}",
            cap.flow_table_kind(),
            if lost == 0 { "" } else { " (not all recorded)" }
        );
    }
    drop(caps);
    if quick {
        return;
    }
    kfree_skb_cost();
    iperf3();
}

/// The kfree_skb program's own cost per call from the kernel's BPF statistics
/// (`kernel.bpf_stats_enabled`): drops in another namespace (UDP to a closed port), which the
/// program filters out first, as it does for every drop outside the monitor's namespace.
fn kfree_skb_cost() {
    use kovn_tests::{Pair, in_netns};
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    if std::fs::write(stats, "1").is_err() {
        println!("kfree_skb: cannot enable {stats}: not measured");
        return;
    }
    let cap = Capture::load(65536).expect("load");
    if !cap.drop_hook().available {
        println!("kfree_skb: the drop hook is unavailable here: {:?}", cap.drop_hook().why);
        let _ = std::fs::write(stats, before.trim());
        return;
    }
    let (t0, c0) = cap.program_run_stats(kovn_monitor::drops::DROP_PROGRAM).unwrap_or_default();
    let pair = Pair::new(98);
    let dst = format!("{}:9", pair.b_ip);
    in_netns(&pair.a.name, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..20_000 {
            let _ = sock.send_to(&[0u8; 32], &dst);
        }
    })
    .join()
    .expect("sender");
    std::thread::sleep(Duration::from_millis(200));
    let (t1, c1) = cap.program_run_stats(kovn_monitor::drops::DROP_PROGRAM).unwrap_or_default();
    let _ = std::fs::write(stats, before.trim());
    let calls = c1.saturating_sub(c0);
    if calls == 0 {
        println!("kfree_skb: no calls recorded");
        return;
    }
    let per = (t1.saturating_sub(t0)).as_nanos() as f64 / calls as f64;
    println!(
        "kfree_skb program, drops outside the monitor's namespace (goal <= 100 ns): {per:.1} ns per call over {calls} calls (bpf_stats)"
    );
}

/// iperf3 over a veth pair between two namespaces, without and with kovn attached to the
/// client's veth (ingress and egress), alternating runs; ratios of the medians.
fn iperf3() {
    use kovn_monitor::interfaces::IfaceKind;
    use kovn_tests::{Pair, in_netns};

    let pair = Pair::new(99);
    let run_client = |args: &[&str]| -> f64 {
        let mut srv = pair.b.command("iperf3", &["-s", "-1"]);
        let mut srv = srv.stdout(std::process::Stdio::null()).spawn().expect("iperf3 -s");
        std::thread::sleep(Duration::from_millis(300));
        let mut full = vec!["-c", pair.b_ip.as_str(), "-J", "-t", "4"];
        full.extend_from_slice(args);
        let out = pair.a.try_run("iperf3", &full);
        let _ = srv.wait();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
        let end = &v["end"];
        if args.contains(&"-u") {
            end["sum"]["packets"].as_f64().unwrap_or(0.0) / end["sum"]["seconds"].as_f64().unwrap_or(1.0)
        } else {
            end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
        }
    };
    let a_if = pair.a_if.clone();
    let a_ns = pair.a.name.clone();
    // kovn attached from inside the client's namespace, kept alive while `attached` is set.
    let attach = move || {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let a_if = a_if.clone();
        let h = in_netns(&a_ns, move || {
            let mut cap = Capture::load(65536).expect("load");
            let idx = nix_ifindex(&a_if);
            cap.attach(idx, &a_if, IfaceKind::Pod, 1500).expect("attach");
            ready_tx.send(()).expect("ready");
            let _ = rx.recv();
            drop(cap);
        });
        ready_rx.recv().expect("attached");
        (tx, h)
    };
    let mut tcp = (Vec::new(), Vec::new());
    let mut udp = (Vec::new(), Vec::new());
    for _ in 0..6 {
        tcp.0.push(run_client(&[]));
        udp.0.push(run_client(&["-u", "-b", "0", "-l", "64"]));
        let (stop, h) = attach();
        tcp.1.push(run_client(&[]));
        udp.1.push(run_client(&["-u", "-b", "0", "-l", "64"]));
        let _ = stop.send(());
        h.join().expect("detach");
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t0, t1, u0, u1) = (med(&mut tcp.0), med(&mut tcp.1), med(&mut udp.0), med(&mut udp.1));
    println!(
        "iperf3 over a veth pair, median of 6 alternating runs of 4 s (goals: TCP >= 98%, UDP 64-byte >= 95% of without):"
    );
    println!("  TCP: {t0:.2} Gbit/s without kovn, {t1:.2} Gbit/s with ({:.1}%)", (t1 / t0 - 1.0) * 100.0);
    println!("  UDP 64-byte: {:.0} pps without, {:.0} pps with ({:.1}%)", u0, u1, (u1 / u0 - 1.0) * 100.0);
}

fn nix_ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
