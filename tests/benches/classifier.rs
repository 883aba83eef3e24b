//! Per-packet cost of the classifier under BPF_PROG_TEST_RUN, beside the empty classifier in
//! the same run, reported as ratios (absolute nanoseconds on a shared VM are noise).
//! Needs root: `sudo cargo bench -p kovn-tests --bench classifier` or `./x bench`.
//!
//! Cases: a packet of an existing flow (IPv4 and IPv6), and a packet that creates a new flow.
//! The first two use one test run with `repeat` iterations; a new flow needs a distinct packet
//! per run, so it is measured as many single runs, against single runs of the empty program.

use std::time::Duration;

use aya::{TestRun as _, TestRunOptions};
use kovn_monitor::capture::Capture;
use kovn_tests::frames::*;

const REPEAT: u32 = 2_000_000;
const NEW_FLOWS: u16 = 50_000;

/// One round: empty, existing IPv4, existing IPv6 (repeat runs), empty and new flow (single runs).
type Round = (Duration, Duration, Duration, Duration, Duration);

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

fn main() {
    kovn_tests::require_root();
    let size = std::env::var("KOVN_BENCH_TABLE").ok().and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let mut cap = Capture::load(size).expect("load");
    cap.load_program("kovn_noop").expect("load the empty classifier");
    // 64-byte frames: Ethernet + IPv4 + TCP ACK with 10 bytes of payload.
    let v4 = cat(&[&eth(&[], ETH_IPV4), &ipv4(A4, B4, 6, 0, 0, &tcp(40000, 80, TCP_ACK, &[0; 10]))]);
    let v6 = cat(&[&eth(&[], ETH_IPV6), &ipv6(A6, B6, 6, &tcp(40000, 80, TCP_ACK, &[0; 10]))]);
    const OBSERVER: &str = "kovn_pod_ingress";
    // The underlay NIC: the same inner packet in Geneve (8 bytes of options, as OVN sends)
    // between two node IPs, opened to the inner flow; and a plain node-to-node packet.
    let geneve4 = outer4([172, 18, 0, 2], [172, 18, 0, 3], 6081, &geneve(7, 2, &v4));
    let plain4 = cat(&[
        &eth(&[], ETH_IPV4),
        &ipv4([172, 18, 0, 2], [172, 18, 0, 3], 6, 0, 0, &tcp(40001, 22, TCP_ACK, &[0; 10])),
    ]);
    const UNDERLAY: &str = "kovn_underlay_ingress";
    // Create the flows first so the measured runs update them in place.
    per_run(&mut cap, OBSERVER, &v4, 1);
    per_run(&mut cap, OBSERVER, &v6, 1);
    per_run(&mut cap, UNDERLAY, &geneve4, 1);
    per_run(&mut cap, UNDERLAY, &plain4, 1);
    let underlay = |cap: &mut Capture| {
        let empty = per_run(cap, "kovn_noop", &v4, REPEAT);
        let g = per_run(cap, UNDERLAY, &geneve4, REPEAT);
        let p = per_run(cap, UNDERLAY, &plain4, REPEAT);
        (ns(g) / ns(empty), ns(p) / ns(empty))
    };

    println!("kovn classifier, BPF_PROG_TEST_RUN, repeat {REPEAT} (kernel {})", kernel());
    let mut rows = Vec::new();
    // KOVN_BENCH_QUICK=1: only the existing-flow cases, one round (for quick comparisons).
    let quick = std::env::var_os("KOVN_BENCH_QUICK").is_some();
    for round in 0..3 {
        let empty = per_run(&mut cap, "kovn_noop", &v4, REPEAT);
        let existing4 = per_run(&mut cap, OBSERVER, &v4, REPEAT);
        let existing6 = per_run(&mut cap, OBSERVER, &v6, REPEAT);
        if quick {
            let (g, p) = underlay(&mut cap);
            println!(
                "quick: empty {:.1} ns, existing IPv4 {:.2}x, IPv6 {:.2}x; underlay Geneve {g:.2}x, underlay plain {p:.2}x",
                ns(empty),
                ns(existing4) / ns(empty),
                ns(existing6) / ns(empty)
            );
            return;
        }
        let frames: Vec<Vec<u8>> = (0..NEW_FLOWS)
            .map(|i| {
                let sport = 1024 + i;
                let src = [10, 17, (round as u8) + 1, (i % 250) as u8];
                cat(&[&eth(&[], ETH_IPV4), &ipv4(src, B4, 6, 0, 0, &tcp(sport, 80, TCP_SYN, &[0; 10]))])
            })
            .collect();
        let empty_single = single_runs(&mut cap, "kovn_noop", &frames);
        let new_flow = single_runs(&mut cap, OBSERVER, &frames);
        rows.push((empty, existing4, existing6, empty_single, new_flow));
        println!(
            "round {round}: empty {:.1} ns | existing IPv4 {:.1} ns ({:.2}x) | existing IPv6 {:.1} ns ({:.2}x) | \
             new flow {:.1} ns vs empty {:.1} ns single-run ({:.2}x)",
            ns(empty),
            ns(existing4),
            ns(existing4) / ns(empty),
            ns(existing6),
            ns(existing6) / ns(empty),
            ns(new_flow),
            ns(empty_single),
            ns(new_flow) / ns(empty_single),
        );
    }
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("median ratios to the empty classifier:");
    println!("  existing flow, IPv4: {:.2}x", median(&|r| ns(r.1) / ns(r.0)));
    println!("  existing flow, IPv6: {:.2}x", median(&|r| ns(r.2) / ns(r.0)));
    println!("  new flow (IPv4 SYN): {:.2}x", median(&|r| ns(r.4) / ns(r.3)));
    let mut u: Vec<(f64, f64)> = (0..3).map(|_| underlay(&mut cap)).collect();
    u.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("  underlay, Geneve-encapsulated existing flow: {:.2}x", u[1].0);
    u.sort_by(|a, b| a.1.total_cmp(&b.1));
    println!("  underlay, plain existing flow: {:.2}x", u[1].1);
    drop(cap);
    iperf3();
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
    for _ in 0..3 {
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
    println!("iperf3 over a veth pair, median of 3 alternating runs of 4 s:");
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
