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
    // Create the flows first so the measured runs update them in place.
    per_run(&mut cap, OBSERVER, &v4, 1);
    per_run(&mut cap, OBSERVER, &v6, 1);

    println!("kovn classifier, BPF_PROG_TEST_RUN, repeat {REPEAT} (kernel {})", kernel());
    let mut rows = Vec::new();
    // KOVN_BENCH_QUICK=1: only the existing-flow cases, one round (for quick comparisons).
    let quick = std::env::var_os("KOVN_BENCH_QUICK").is_some();
    for round in 0..3 {
        let empty = per_run(&mut cap, "kovn_noop", &v4, REPEAT);
        let existing4 = per_run(&mut cap, OBSERVER, &v4, REPEAT);
        let existing6 = per_run(&mut cap, OBSERVER, &v6, REPEAT);
        if quick {
            println!(
                "quick: empty {:.1} ns, existing IPv4 {:.2}x, IPv6 {:.2}x",
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
    let median = |f: &dyn Fn(&(Duration, Duration, Duration, Duration, Duration)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("median ratios to the empty classifier:");
    println!("  existing flow, IPv4: {:.2}x", median(&|r| ns(r.1) / ns(r.0)));
    println!("  existing flow, IPv6: {:.2}x", median(&|r| ns(r.2) / ns(r.0)));
    println!("  new flow (IPv4 SYN): {:.2}x", median(&|r| ns(r.4) / ns(r.3)));
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
