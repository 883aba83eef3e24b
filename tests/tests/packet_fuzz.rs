//! The packet fuzzer: random and mutated frames through every classifier of the eBPF object
//! under BPF_PROG_TEST_RUN, in both flow-table layouts (slots: the programs with
//! compare-and-swap; hash only: their `_nocas` twins) and the empty `kovn_noop`.
//!
//! Seeds are real captures (tests/fixtures/packet_fuzz/*.pcap, tcpdump in the lab: pod veths,
//! the underlay NIC with Geneve, IPv6) and the hand-built frames of every parse path
//! (`kovn_tests::frames`). Each frame is a seed mutated (bit flips, interesting bytes, length
//! fields, truncation, extension, insertions, VLAN wrapping, splicing of two seeds) or random
//! bytes behind a random Ethernet header. For every run it asserts:
//! - the verdict is pass (TC_ACT_UNSPEC = TCX_NEXT, -1) and the packet comes out unchanged;
//! - the counters are consistent: each run is accounted exactly once, either as one more
//!   packet at an observation point of some flow or as one kernel counter (a parse error,
//!   `map_full`, `obs_overflow`, ...), and no counter ever goes backwards;
//! - every flow's per-direction totals never exceed what its observation points saw.
//!
//! Bounded by default (`KOVN_PACKET_FUZZ_ITERATIONS` frames, default 600: a few seconds);
//! `KOVN_PACKET_FUZZ_SEED` picks the RNG seed (printed, so a failure can be replayed).
//! A frame the kernel's test runner itself refuses (shorter than an Ethernet header, or IP
//! ethertype with a short IP header) is counted and skipped: it never reaches a program.

use std::collections::BTreeMap;
use std::path::Path;

use aya::{TestRun as _, TestRunOptions};
use kovn_ebpf_common::{FlowKey, FlowStats};
use kovn_monitor::capture::{ALL_PROGRAMS, Capture, FlowTableKind};
use kovn_tests::frames::*;
use kovn_tests::require_root;

const ITER_ENV: &str = "KOVN_PACKET_FUZZ_ITERATIONS";
const SEED_ENV: &str = "KOVN_PACKET_FUZZ_SEED";
const DEFAULT_ITERATIONS: u64 = 600;
const DEFAULT_SEED: u64 = 0x6b6f_766e_6675_7a7a;
/// Frames longer than this are cut (the test runner's limit is about a page; MTU-sized is enough).
const FRAME_MAX: usize = 1600;
/// Flows are removed after this many frames, so the table never fills by accident (a full
/// table is its own test in classifier.rs) and reading it stays cheap.
const CLEAR_EVERY: u64 = 32;

/// splitmix64: a tiny seeded RNG, reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// The seed corpus: the lab's captures and a hand-built frame for every parse path.
fn seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/packet_fuzz");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    for f in &files {
        out.extend(kovn_tests::pcap::records(f).into_iter().map(|(frame, _)| frame));
    }
    let captured = out.len();
    let e4 = eth(&[], ETH_IPV4);
    let e6 = eth(&[], ETH_IPV6);
    let tcp_syn = tcp(40000, 80, TCP_SYN, &[]);
    out.extend([
        tcp4(A4, B4, 40000, 80, TCP_SYN),
        tcp4(B4, A4, 80, 40000, TCP_SYN | TCP_ACK | TCP_RST),
        cat(&[&e4, &ipv4(A4, B4, 17, 3, 0, &udp(5353, 53, b"query"))]),
        cat(&[&e4, &ipv4(A4, B4, 17, 0, 0x2000, &udp(7000, 7001, &[0; 32]))]),
        cat(&[&e4, &ipv4(A4, B4, 17, 0, 0x0005, &[0; 24])]),
        cat(&[&e4, &ipv4(A4, B4, 1, 0, 0, &icmp_echo(8, 7, 1))]),
        cat(&[&e4, &ipv4(A4, B4, 132, 0, 0, &sctp(5000, 5001, 1))]),
        cat(&[&eth(&[(ETH_8021AD, 200), (ETH_8021Q, 100)], ETH_IPV4), &ipv4(A4, B4, 6, 0, 0, &tcp_syn)]),
        cat(&[&e6, &ipv6(A6, B6, 6, &tcp_syn)]),
        cat(&[&e6, &ipv6(A6, B6, 58, &icmp_echo(128, 9, 1))]),
        cat(&[
            &e6,
            &ipv6(
                A6,
                B6,
                0,
                &cat(&[&ipv6_opt_hdr(60), &ipv6_opt_hdr(44), &ipv6_frag_hdr(6, 0, true), &tcp_syn]),
            ),
        ]),
        outer4(NODE1, NODE2, 6081, &geneve(1, 2, &tcp4(A4, B4, 40000, 80, TCP_SYN))),
        outer4(NODE1, NODE2, 4789, &vxlan(0x1234, &tcp4(A4, B4, 40000, 80, TCP_SYN))),
        cat(&[&eth(&[], ETH_ARP), &[0u8; 28]]),
    ]);
    eprintln!("packet fuzz: {captured} captured frames from {} pcap files, {} seeds", files.len(), out.len());
    assert!(captured > 0, "no captured frames in {}", dir.display());
    out
}

const INTERESTING: [u8; 12] = [0x00, 0x01, 0x05, 0x06, 0x0f, 0x11, 0x3a, 0x45, 0x60, 0x7f, 0x80, 0xff];
/// Offsets of header fields that steer the parser: ethertypes (plain and behind tags), the IP
/// version/IHL, lengths, fragment field and protocol, and the UDP ports of tunnels.
const FIELDS: [usize; 16] = [12, 13, 14, 16, 17, 18, 20, 21, 23, 16 + 4, 18 + 6, 20, 34, 36, 38, 54];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], base: &[u8]) -> Vec<u8> {
    let mut f = base.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(10) {
            0 => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    f[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if !f.is_empty() {
                    let i = rng.below(f.len());
                    f[i] = *rng.pick(&INTERESTING);
                }
            }
            2 => {
                let i = *rng.pick(&FIELDS);
                if i < f.len() {
                    f[i] = rng.byte();
                }
            }
            3 => {
                let keep = rng.below(f.len() + 1);
                f.truncate(keep);
            }
            4 => {
                for _ in 0..rng.below(64) {
                    f.push(rng.byte());
                }
            }
            5 => {
                let at = rng.below(f.len() + 1);
                let n = rng.below(16) + 1;
                let bytes: Vec<u8> = std::iter::repeat_with(|| rng.byte()).take(n).collect();
                f.splice(at..at, bytes);
            }
            6 => {
                if !f.is_empty() {
                    let at = rng.below(f.len());
                    let n = rng.below(f.len() - at) + 1;
                    f.drain(at..at + n.min(16));
                }
            }
            7 => {
                // Wrap in a VLAN tag: the test runner lets short IP behind a tag through.
                if f.len() >= 14 {
                    let tpid = if rng.below(2) == 0 { ETH_8021Q } else { ETH_8021AD };
                    let tag = [(tpid >> 8) as u8, tpid as u8, 0, rng.byte()];
                    f.splice(12..12, tag);
                }
            }
            8 => {
                // Splice: this frame's head, another seed's tail.
                let other = rng.pick(seeds);
                let cut = rng.below(f.len() + 1);
                let from = rng.below(other.len() + 1);
                f.truncate(cut);
                f.extend_from_slice(&other[from..]);
            }
            _ => {
                // A 16-bit field set to an extreme (lengths, offsets).
                let i = *rng.pick(&FIELDS);
                if i + 1 < f.len() {
                    let v: u16 = *rng.pick(&[0, 1, 0x3fff, 0x8000, 0xffff, f.len() as u16]);
                    f[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    f.truncate(FRAME_MAX);
    f
}

fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let ethertype: u16 = *rng.pick(&[ETH_IPV4, ETH_IPV6, ETH_8021Q, ETH_8021AD, ETH_ARP, 0x88cc, 0x0000]);
    let mut f = eth(&[], ethertype);
    let n = rng.below(200);
    f.extend(std::iter::repeat_with(|| rng.byte()).take(n));
    if f.len() > 14 && rng.below(2) == 0 {
        // An IP version nibble that matches the ethertype half the time.
        f[14] = if ethertype == ETH_IPV6 { 0x60 } else { 0x45 };
    }
    if rng.below(8) == 0 {
        f.truncate(rng.below(20));
    }
    f
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the kernel's test runner refuses before any program runs.
fn refused_by_runner(f: &[u8]) -> bool {
    if f.len() < 14 {
        return true;
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    (et == ETH_IPV4 && f.len() < 14 + 20) || (et == ETH_IPV6 && f.len() < 14 + 40)
}

/// Totals the accounting invariant is checked on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    /// Packets at observation points, over all flows.
    obs_packets: u64,
    /// Every kernel counter summed.
    counters: u64,
}

struct Rig {
    cap: Capture,
    layout: FlowTableKind,
    counters: BTreeMap<&'static str, u64>,
}

impl Rig {
    fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        self.cap.read_flows().expect("read the flow table")
    }

    fn totals(&mut self, ctx: &str) -> Totals {
        let c = self.cap.counters().expect("counters");
        for (name, &v) in &c {
            let before = self.counters.get(name).copied().unwrap_or(0);
            assert!(v >= before, "{ctx}: counter {name} went backwards ({before} -> {v})");
        }
        self.counters = c;
        let mut obs_packets = 0;
        for (k, s) in self.flows() {
            let mut seen = [0u64; 2];
            for o in s.obs.iter().filter(|o| o.ifindex != 0) {
                seen[usize::from(o.dir & 1)] += o.packets;
                obs_packets += o.packets;
            }
            for (d, (&counted, &observed)) in s.packets.iter().zip(&seen).enumerate() {
                assert!(
                    counted <= observed,
                    "{ctx}: flow {k:?} counts {counted} packets in direction {d} but its observation points saw {observed}"
                );
            }
        }
        Totals { obs_packets, counters: self.counters.values().sum() }
    }

    fn clear(&mut self) {
        let keys: Vec<FlowKey> = self.flows().into_iter().map(|(k, _)| k).collect();
        self.cap.remove_flows(&keys).expect("remove flows");
    }

    /// Runs one frame through one program: pass verdict, unchanged packet. Returns false when
    /// the test runner refused the frame.
    fn run(&mut self, prog: &'static str, frame: &[u8], ctx: &str) -> bool {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.cap.program_mut(prog).expect("program").test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        });
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                assert!(
                    refused_by_runner(frame),
                    "{ctx}: BPF_PROG_TEST_RUN of {prog} ({:?}) failed on a frame it should run: {e:?}\nframe {}",
                    self.layout,
                    hex(frame)
                );
                return false;
            }
        };
        assert_eq!(
            r.return_value as i32,
            -1,
            "{ctx}: {prog} ({:?}) must return TC_ACT_UNSPEC/TCX_NEXT\nframe {}",
            self.layout,
            hex(frame)
        );
        assert_eq!(
            &out[..r.data_size_out as usize],
            frame,
            "{ctx}: {prog} ({:?}) altered the packet\nframe {}",
            self.layout,
            hex(frame)
        );
        true
    }
}

#[test]
fn random_and_mutated_frames_pass_unchanged_through_every_classifier_with_consistent_counters() {
    require_root();
    let iterations: u64 = std::env::var(ITER_ENV)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{ITER_ENV}={v:?} is not a number")))
        .unwrap_or(DEFAULT_ITERATIONS);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .map(|v| {
            let v = v.trim_start_matches("0x");
            u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("{SEED_ENV}={v:?} is not a hex number"))
        })
        .unwrap_or(DEFAULT_SEED);
    eprintln!("packet fuzz: {iterations} frames, seed {seed:#x} ({SEED_ENV}, {ITER_ENV})");
    let seeds = seeds();

    let mut rigs: Vec<Rig> = [FlowTableKind::Slots, FlowTableKind::Hash]
        .into_iter()
        .map(|layout| {
            let mut cap = Capture::load_with(4096, layout)
                .unwrap_or_else(|e| panic!("load the eBPF object ({layout:?}): {e}"));
            assert!(cap.hooks_unavailable().is_empty(), "programs refused: {:?}", cap.hooks_unavailable());
            cap.load_program("kovn_noop").expect("load kovn_noop");
            Rig { cap, layout, counters: BTreeMap::new() }
        })
        .collect();
    let (slots_layout, _) = rigs[0].cap.flow_table_kind();
    assert_eq!(slots_layout, FlowTableKind::Slots, "this kernel should have the slot layout (>= 5.12)");

    let mut rng = Rng(seed);
    let started = std::time::Instant::now();
    let (mut runs, mut refused, mut recorded_frames) = (0u64, 0u64, 0u64);
    for i in 0..iterations {
        let frame = match rng.below(8) {
            0 => random_frame(&mut rng),
            1 => rng.pick(&seeds).clone(),
            _ => {
                let base = rng.pick(&seeds).clone();
                mutate(&mut rng, &seeds, &base)
            }
        };
        for rig in &mut rigs {
            if i % CLEAR_EVERY == 0 {
                rig.clear();
            }
            let mut before = rig.totals("before the frame");
            let mut recorded = false;
            for prog in ALL_PROGRAMS.into_iter().chain(["kovn_noop"]) {
                let ctx = format!("frame {i} (seed {seed:#x}), {prog} ({:?})", rig.layout);
                if !rig.run(prog, &frame, &ctx) {
                    refused += 1;
                    continue;
                }
                runs += 1;
                let after = rig.totals(&ctx);
                let accounted = (after.obs_packets - before.obs_packets) + (after.counters - before.counters);
                let want = u64::from(prog != "kovn_noop");
                assert_eq!(
                    accounted,
                    want,
                    "{ctx}: one run must be accounted exactly once (an observation point or a counter): \
                     {before:?} -> {after:?}, counters {:?}\nframe {}",
                    rig.counters,
                    hex(&frame)
                );
                recorded |= after.obs_packets > before.obs_packets;
                before = after;
            }
            recorded_frames += u64::from(recorded);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "packet fuzz: {iterations} frames, {runs} program runs ({refused} refused by the test runner), \
         {recorded_frames} recorded as flows, in {elapsed:.1?}; counters {:?} / {:?}",
        rigs[0].counters, rigs[1].counters
    );
    assert!(runs > 0 && recorded_frames > 0, "the fuzzer never reached the flow table");
    // Sanity: frames are both recorded and refused as malformed, i.e. the mutations reach
    // the parser's error paths.
    assert!(
        rigs.iter().all(|r| r.counters.values().sum::<u64>() > 0),
        "no frame hit a parse error counter: the mutations do not reach the error paths"
    );
}
