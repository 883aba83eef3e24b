//! kovn's in-kernel observers.
//!
//! tc classifiers (attached through tcx on Linux >= 6.6, clsact/cls_bpf before) that parse each
//! packet down to its 5-tuple and update one flow record in place. They never drop, delay or
//! change a packet: every path returns `TC_ACT_UNSPEC`, which is also `TCX_NEXT`, so the packet
//! continues to the next program and to the stack exactly as if kovn were not there.
//!
//! Per packet: one optional `bpf_skb_pull_data` (only when the headers are not in the linear
//! area, which is rare), one hash lookup, a handful of atomic adds. No ring buffer, no logging.
//!
//! Size: every hook's program shares the packet walk, the flow-record update and the maps of
//! one object (the verifier sees one program per hook); the per-area code is in modules beside it.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in its target spec, so core's Atomic*::fetch_add is
// not offered; the intrinsic lowers to BPF_ATOMIC | BPF_ADD (XADD), which every kernel with
// eBPF supports when the result is unused.
#![feature(core_intrinsics)]
// Compare-and-swap and exchange are written as BPF assembly: rustc's LLVM emits the atomic
// instructions' bitcode in a form the bpf-linker's LLVM refuses ("Invalid record").
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "core_intrinsics: atomic_xadd, see above")]
#![expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "aya's #[classifier] expands to `pub extern \"C\" fn(ctx: *mut __sk_buff)`; the kernel is \
              the only caller and always passes a valid context"
)]

mod drops;
mod guard;
mod parse;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use kovn_ebpf_common::{
    CNT_MAP_FULL, CNT_MAX, CNT_OBS_OVERFLOW, CNT_SLOT_BUSY, DIR_FWD, DIR_REV, FLOW_F_FRAGMENT,
    FLOW_F_INITIATOR_GUESSED, FlowKey, FlowSlot, FlowStats, HOOK_EGRESS, HOOK_INGRESS, HOOK_KIND_SHIFT,
    KIND_HOST, KIND_POD, KIND_TUNNEL, KIND_UNDERLAY, MAX_OBS, ObsPoint, RR_ECHO, RR_NONE, RR_SCTP, RR_TCP,
    RR_UDP, SIDE_A, SIDE_B, SLOT_BUSY, SLOT_FREE, SLOT_LIVE, TUN_DEVICE, TUN_NONE,
};
use parse::{Packet, Signal, Tunnel, Work};

/// `TC_ACT_UNSPEC`: for cls_bpf "continue with the next filter", for tcx `TCX_NEXT`.
const TC_ACT_UNSPEC: i32 = -1;

/// Map flags for `bpf_map_update_elem`: create only.
const BPF_NOEXIST: u64 = 1;

/// The flow table. Its size is set by the loader (`--flow-table-size`); this is the default.
/// A plain (preallocated) hash rather than an LRU: when it is full, new flows are *counted*
/// as lost (`CNT_MAP_FULL`) instead of silently evicting live ones, and userspace expires idle
/// flows itself.
#[map]
static FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(65536, 0);

/// The direct-mapped flow table: most flows live here, found by one array index computed from
/// their key (the verifier inlines the array lookup: no helper call, no hash-bucket walk), the
/// full key compared. A flow whose slot holds another flow lives in `FLOWS` for its whole life.
/// Sized by the loader (a power of two); `BPF_F_MMAPABLE` so userspace reads it without a
/// syscall per entry.
#[map]
static FLOW_SLOTS: Array<FlowSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE` (Linux >= 5.5).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Slot count minus one, set by the loader; 0 turns the slot table off (every flow in `FLOWS`):
/// on kernels without BPF_ATOMIC compare-and-swap (Linux < 5.12; the verifier then never sees
/// the instruction) and for the benchmarks' hash-only variant.
#[unsafe(no_mangle)]
static FLOW_SLOTS_MASK: u32 = 0;

/// The path MTU of each watched interface (ifindex -> bytes), written by the loader: the
/// interface MTU, or for pod veths the overlay's (underlay MTU minus the tunnel overhead).
#[map]
static IFACE_MTU: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// `[0]`: the smallest path MTU in `IFACE_MTU` (0 = none). An inlined array read: packets not
/// larger than it, i.e. nearly all of them, never pay the per-interface lookup.
#[map]
static PATH_MTU_MIN: Array<u32> = Array::with_max_entries(1, 0);

/// 1 when the kernel has `bpf_ktime_get_coarse_ns` (Linux >= 5.11), set by the loader. The
/// verifier sees the constant (read-only global) and drops the branch not taken, so older
/// kernels never see the unknown helper.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u8 = 1;

/// Activity time (first/last seen): CLOCK_MONOTONIC at jiffy resolution is plenty to expire
/// idle flows and is several times cheaper per packet than the precise clock on VMs with
/// retpolines. Round trips use the precise clock, read only on request/reply packets.
#[inline(always)]
fn activity_now() -> u64 {
    // SAFETY: reading a read-only global; the helpers have no preconditions.
    unsafe {
        if core::ptr::read_volatile(&COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// One work area per CPU: the parsed packet and a new flow's record before insertion (a
/// FlowStats on the stack would take half of the 512 bytes eBPF programs get). Why the parse
/// results live in map memory rather than on the stack: see `parse::Work`.
#[map]
static WORK: PerCpuArray<Work> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's work area. tc programs do not nest on one CPU (softirq or BH-disabled context).
#[inline(always)]
fn work() -> Option<&'static mut Work> {
    // SAFETY: this CPU's slot, used only while this program runs on it.
    WORK.get_ptr_mut(0).map(|w| unsafe { &mut *w })
}

/// What the programs could not record (see `CNT_*`), per CPU so counting never contends.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_MAX, 0);

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

// Every observer comes twice: with the flow slots, and `*_nocas` without them for kernels before
// 5.12. The slots need BPF_ATOMIC compare-and-swap/exchange, and Linux 5.10 refuses those
// instructions even in code a read-only constant makes dead ("BPF_STX uses reserved fields",
// checked before verification), so the loader picks the variant (`SLOTS` is a const generic:
// the `_nocas` programs do not contain the instructions at all).
macro_rules! observer {
    ($name:ident, $nocas:ident, $hook:expr) => {
        #[classifier]
        pub fn $name(ctx: TcContext) -> i32 {
            let _ = try_observe::<true>(&ctx, $hook);
            TC_ACT_UNSPEC
        }
        #[classifier]
        pub fn $nocas(ctx: TcContext) -> i32 {
            let _ = try_observe::<false>(&ctx, $hook);
            TC_ACT_UNSPEC
        }
    };
}

observer!(kovn_pod_ingress, kovn_pod_ingress_nocas, HOOK_INGRESS | (KIND_POD << HOOK_KIND_SHIFT));
observer!(kovn_pod_egress, kovn_pod_egress_nocas, HOOK_EGRESS | (KIND_POD << HOOK_KIND_SHIFT));
observer!(kovn_host_ingress, kovn_host_ingress_nocas, HOOK_INGRESS | (KIND_HOST << HOOK_KIND_SHIFT));
observer!(kovn_host_egress, kovn_host_egress_nocas, HOOK_EGRESS | (KIND_HOST << HOOK_KIND_SHIFT));

macro_rules! underlay_observer {
    ($name:ident, $nocas:ident, $hook:expr, $egress:expr) => {
        #[classifier]
        pub fn $name(ctx: TcContext) -> i32 {
            let _ = try_observe_underlay::<true>(&ctx, $hook, $egress);
            TC_ACT_UNSPEC
        }
        #[classifier]
        pub fn $nocas(ctx: TcContext) -> i32 {
            let _ = try_observe_underlay::<false>(&ctx, $hook, $egress);
            TC_ACT_UNSPEC
        }
    };
}

// The node's NIC: Geneve/VXLAN packets are opened and counted as the pod flow they carry.
underlay_observer!(
    kovn_underlay_ingress,
    kovn_underlay_ingress_nocas,
    HOOK_INGRESS | (KIND_UNDERLAY << HOOK_KIND_SHIFT),
    false
);
underlay_observer!(
    kovn_underlay_egress,
    kovn_underlay_egress_nocas,
    HOOK_EGRESS | (KIND_UNDERLAY << HOOK_KIND_SHIFT),
    true
);

#[inline(always)]
fn try_observe_underlay<const SLOTS: bool>(ctx: &TcContext, hook: u8, egress: bool) -> Result<(), ()> {
    let w = work().ok_or(())?;
    parse::ensure_linear(ctx, parse::PULL_LEN_UNDERLAY);
    let rc = parse::parse_underlay(ctx, egress, w);
    if rc != 0 && rc != parse::UNDERLAY_TUNNEL {
        count(rc - 1);
        return Err(());
    }
    let tunnel = rc == parse::UNDERLAY_TUNNEL;
    let ifindex = parse::ifindex(ctx);
    // On the underlay the outer packet is what must fit the NIC; the tunnel's outer IP
    // header is sent with DF by OVS (and IPv6 never fragments).
    let over = if tunnel {
        oversized(ctx, &w.pkt, ifindex, w.tunnel.outer_len)
    } else if w.pkt.no_frag {
        oversized(ctx, &w.pkt, ifindex, w.pkt.l3_len)
    } else {
        0
    };
    record::<SLOTS>(w, ifindex, hook, tunnel, over);
    Ok(())
}

macro_rules! tunnel_observer {
    ($name:ident, $nocas:ident, $hook:expr, $egress:expr) => {
        #[classifier]
        pub fn $name(ctx: TcContext) -> i32 {
            let _ = try_observe_tunnel::<true>(&ctx, $hook, $egress);
            TC_ACT_UNSPEC
        }
        #[classifier]
        pub fn $nocas(ctx: TcContext) -> i32 {
            let _ = try_observe_tunnel::<false>(&ctx, $hook, $egress);
            TC_ACT_UNSPEC
        }
    };
}

// The tunnel device of OVS's kernel datapath (`genev_sys_6081`, `vxlan_sys_4789`): the frame is
// the inner one, the tunnel key says which node is at the other end.
tunnel_observer!(
    kovn_tunnel_ingress,
    kovn_tunnel_ingress_nocas,
    HOOK_INGRESS | (KIND_TUNNEL << HOOK_KIND_SHIFT),
    false
);
tunnel_observer!(
    kovn_tunnel_egress,
    kovn_tunnel_egress_nocas,
    HOOK_EGRESS | (KIND_TUNNEL << HOOK_KIND_SHIFT),
    true
);

#[inline(always)]
fn try_observe_tunnel<const SLOTS: bool>(ctx: &TcContext, hook: u8, egress: bool) -> Result<(), ()> {
    let w = work().ok_or(())?;
    parse::ensure_linear(ctx, parse::PULL_LEN);
    let rc = parse::parse_frame(ctx, 0, w);
    if rc != 0 {
        count(rc - 1);
        return Err(());
    }
    let tunnel = match parse::device_tunnel(ctx, egress) {
        Some(t) => {
            w.tunnel = t;
            true
        }
        None => false,
    };
    // No MTU check here: these devices have a 65000-byte MTU in OVS; what must fit is judged on
    // the pod veth (overlay MTU) and on the underlay NIC (the outer packet).
    record::<SLOTS>(w, parse::ifindex(ctx), hook, tunnel, 0);
    Ok(())
}

/// The empty classifier: the benchmarks' baseline, measured in the same run as the observers
/// (BENCHMARKS.md). Never attached by the daemon.
#[classifier]
pub fn kovn_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_observe<const SLOTS: bool>(ctx: &TcContext, hook: u8) -> Result<(), ()> {
    let w = work().ok_or(())?;
    parse::ensure_linear(ctx, parse::PULL_LEN);
    let rc = parse::parse_frame(ctx, 0, w);
    if rc != 0 {
        count(rc - 1);
        return Err(());
    }
    let ifindex = parse::ifindex(ctx);
    // What a pod sends (ingress of its host veth) must come from the pod's own addresses: a
    // forged source is counted on the pod and recorded nowhere, so it never names another
    // workload. `hook` is a constant here: other programs do not contain the check.
    if hook == POD_INGRESS && guard::spoofed(ifindex, &w.pkt.src) {
        return Ok(());
    }
    let over = if w.pkt.no_frag { oversized(ctx, &w.pkt, ifindex, w.pkt.l3_len) } else { 0 };
    record::<SLOTS>(w, ifindex, hook, false, over);
    if w.pkt.too_big.is_some() {
        record_too_big(w);
    }
    Ok(())
}

/// The hook of a pod veth that sees what the pod sends.
const POD_INGRESS: u8 = HOOK_INGRESS | (KIND_POD << HOOK_KIND_SHIFT);

/// Which side started the conversation, judged from the first packet kovn sees of it.
/// Returns the side and whether it is a guess (the opening packet was not seen).
#[inline(always)]
fn initiator_of(pkt: &Packet, sender: u8) -> (u8, bool) {
    let receiver = sender ^ 1;
    match pkt.signal {
        Signal::TcpSyn | Signal::EchoRequest | Signal::SctpInit => (sender, false),
        Signal::TcpSynAck | Signal::EchoReply | Signal::SctpInitAck => (receiver, false),
        _ => {
            if pkt.sport == pkt.dport
                || pkt.proto == parse::IPPROTO_ICMP
                || pkt.proto == parse::IPPROTO_ICMPV6
            {
                (sender, false)
            } else if pkt.proto == parse::IPPROTO_UDP {
                // UDP: the first packet seen is the request, unless it comes *from* a
                // well-known port to an ephemeral one (a reply whose request we missed).
                if pkt.sport < 1024 && pkt.dport >= 1024 { (receiver, true) } else { (sender, false) }
            } else if pkt.sport > pkt.dport {
                // Mid-stream TCP/SCTP: the ephemeral (higher) port is the client's.
                (sender, true)
            } else {
                (receiver, true)
            }
        }
    }
}

#[inline(always)]
fn rr_kind(proto: u8) -> u8 {
    match proto {
        parse::IPPROTO_TCP => RR_TCP,
        parse::IPPROTO_UDP => RR_UDP,
        parse::IPPROTO_ICMP | parse::IPPROTO_ICMPV6 => RR_ECHO,
        parse::IPPROTO_SCTP => RR_SCTP,
        _ => RR_NONE,
    }
}

/// The packet's size on the wire when it exceeds the path MTU of `ifindex`, else 0. `l3_len`
/// is what must fit (the outer length on the underlay). A GSO super-packet is judged by one
/// segment: gso_size plus the headers every segment carries. Nearly every packet stops at the
/// first test (no segment is longer than its super-packet), before any other read.
#[inline(always)]
fn oversized(ctx: &TcContext, pkt: &Packet, ifindex: u32, l3_len: u32) -> u32 {
    let min = PATH_MTU_MIN.get(0).copied().unwrap_or(0);
    if min == 0 || l3_len <= min {
        return 0;
    }
    let gso = parse::gso_size(ctx);
    let size = if gso == 0 { l3_len } else { gso + pkt.hdrs_len + (l3_len - pkt.l3_len) };
    if size <= min {
        return 0;
    }
    // SAFETY: a plain u32 value of a map the loader writes only.
    match unsafe { IFACE_MTU.get(&ifindex) } {
        Some(&mtu) if mtu != 0 && size > mtu => size,
        _ => 0,
    }
}

/// An ICMP "too big" message: credited to the flow it quotes, if this node has it.
#[inline(never)]
fn record_too_big(w: &Work) {
    let Some(tb) = &w.pkt.too_big else { return };
    let (key, _) = FlowKey::canonical(tb.src, tb.dst, tb.sport, tb.dport, tb.proto);
    if let (Some(s), _) = existing_record(&key) {
        // SAFETY: a pointer into a preallocated map value; rare packets, plain stores.
        let m = unsafe { &mut (*s).mtu };
        m.too_big_msgs += 1;
        m.reported_mtu = tb.mtu;
    }
}

/// Updates (or creates) the packet's flow record. A BPF-to-BPF call: reached with one verifier
/// state whatever way the parser took (see `parse::Work`).
#[inline(never)]
fn record<const SLOTS: bool>(w: &mut Work, ifindex: u32, hook: u8, tunnel: bool, oversize: u32) {
    let p = &w.pkt;
    let (key, sender) = FlowKey::canonical(p.src, p.dst, p.sport, p.dport, p.proto);
    let now = activity_now();
    let pod = (hook == POD_INGRESS).then_some(ifindex);
    let Some(stats) = flow_record::<SLOTS>(w, &key, sender, now, pod) else { return };
    let pkt = &w.pkt;
    // SAFETY: a pointer into a slot or a preallocated hash map value, valid for this run.
    // Concurrent writers are other CPUs on the same flow: counters use atomic adds, the rest
    // are single stores whose races are benign (a timestamp or a flag bit seen a packet late).
    let s = unsafe { &mut *stats };
    let dir = if sender == s.initiator { DIR_FWD } else { DIR_REV };
    s.last_seen_ns = now;
    let owner = observe_point(s, ifindex, hook, dir, pkt.l3_len);
    if tunnel {
        record_tunnel(s, &w.tunnel);
    }
    if oversize != 0 {
        s.mtu.oversized_packets += 1;
        if oversize > s.mtu.oversized_max_len {
            s.mtu.oversized_max_len = oversize;
        }
    }
    if !owner {
        // Another hook of this node counts this direction: the packet was counted there.
        return;
    }
    if pkt.tcp_flags != 0 {
        let seen = s.tcp_flags[dir & 1];
        if seen | pkt.tcp_flags != seen {
            s.tcp_flags[dir & 1] = seen | pkt.tcp_flags;
        }
    }
    if pkt.signal != Signal::None || s.rr_kind == RR_UDP {
        request_reply(s, pkt, dir);
    }
}

/// The record of an existing flow (its slot, else its `FLOWS` entry), and the slot its key maps
/// to (null when the slot table is off).
#[inline(always)]
fn existing_record(key: &FlowKey) -> (Option<*mut FlowStats>, *mut FlowSlot) {
    // SAFETY: a read-only global.
    let mask = unsafe { core::ptr::read_volatile(&FLOW_SLOTS_MASK) };
    let mut slot: *mut FlowSlot = core::ptr::null_mut();
    if mask != 0
        && let Some(p) = FLOW_SLOTS.get_ptr_mut(kovn_ebpf_common::slot_index(key, mask))
    {
        slot = p;
        // SAFETY: a pointer into an array map value. A LIVE state read before the key means
        // the key was complete when published (the exchange that published it is a full
        // barrier).
        unsafe {
            if core::ptr::read_volatile(&(*p).state) == SLOT_LIVE && (*p).key == *key {
                return (Some(&raw mut (*p).stats), slot);
            }
        }
    }
    (FLOWS.get_ptr_mut(key), slot)
}

/// The flow's record: its slot, its `FLOWS` entry, or a new one (in the free slot of its key,
/// else in `FLOWS`). None when it cannot be recorded (counted). `pod`: the host veth of the
/// pod that sent the packet, when seen there.
#[inline(always)]
fn flow_record<const SLOTS: bool>(
    w: &mut Work,
    key: &FlowKey,
    sender: u8,
    now: u64,
    pod: Option<u32>,
) -> Option<*mut FlowStats> {
    let (found, slot) = existing_record(key);
    if found.is_some() {
        return found;
    }
    // A new flow: within the budget of the pod it belongs to (counted when not).
    if !guard::admit(key, sender, pod, now) {
        return None;
    }
    // A new flow (or one another CPU is creating right now).
    if SLOTS && !slot.is_null() {
        // SAFETY: as above.
        match unsafe { claim_slot(slot, key, w, sender, now) } {
            Claim::Mine(s) => return Some(s),
            Claim::Busy => {
                count(CNT_SLOT_BUSY);
                return None;
            }
            Claim::Taken => {}
        }
    }
    new_record(&mut w.fresh, &w.pkt, sender, now);
    // Another CPU may have created it meanwhile (EEXIST): fine, use theirs.
    if FLOWS.insert(key, &w.fresh, BPF_NOEXIST).is_err() && FLOWS.get_ptr(key).is_none() {
        count(CNT_MAP_FULL);
        return None;
    }
    match FLOWS.get_ptr_mut(key) {
        Some(s) => Some(s),
        None => {
            // Deleted by userspace expiry between insert and lookup: not worth a retry.
            count(CNT_MAP_FULL);
            None
        }
    }
}

enum Claim {
    /// The flow's slot (claimed here, or filled with this flow by another CPU meanwhile).
    Mine(*mut FlowStats),
    /// The slot holds another flow: the flow goes to `FLOWS`.
    Taken,
    /// Still being filled or freed after the bounded wait.
    Busy,
}

/// How many times a program re-reads a slot another CPU is filling (a few hundred
/// instructions at most; the filler does not block).
const CLAIM_WAIT: u32 = 16;

/// Claims a free slot for a new flow with compare-and-swap, fills it and publishes it. A CPU that
/// loses the race waits (bounded) for the winner: if the winner filled it with this same flow,
/// the flow is counted there, never in a second place.
///
/// # Safety
/// `slot` points into `FLOW_SLOTS`.
#[inline(always)]
unsafe fn claim_slot(slot: *mut FlowSlot, key: &FlowKey, w: &Work, sender: u8, now: u64) -> Claim {
    // SAFETY: the caller's; the state is an aligned u64 (layout asserted in kovn-ebpf-common).
    unsafe {
        let state = &raw mut (*slot).state;
        let seen = cmpxchg(state, SLOT_FREE, SLOT_BUSY);
        if seen == SLOT_FREE {
            (*slot).key = *key;
            new_record(&mut (*slot).stats, &w.pkt, sender, now);
            // Publish: an exchange is a full barrier, the key and record are visible first.
            xchg(state, SLOT_LIVE);
            return Claim::Mine(&mut (*slot).stats);
        }
        let mut st = seen;
        let mut i = 0;
        while st == SLOT_BUSY && i < CLAIM_WAIT {
            st = core::ptr::read_volatile(state);
            i += 1;
        }
        if st == SLOT_BUSY {
            Claim::Busy
        } else if st == SLOT_LIVE && (*slot).key == *key {
            Claim::Mine(&mut (*slot).stats)
        } else {
            Claim::Taken
        }
    }
}

/// BPF_ATOMIC | BPF_CMPXCHG (Linux >= 5.12): stores `new` at `p` if it holds `old`; returns what
/// it held. Fully ordered.
///
/// # Safety
/// `p` is an aligned u64 in map memory.
#[inline(always)]
unsafe fn cmpxchg(p: *mut u64, old: u64, new: u64) -> u64 {
    let prev: u64;
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") old => prev,
            options(nostack),
        );
    }
    prev
}

/// BPF_ATOMIC | BPF_XCHG (Linux >= 5.12): stores `v` at `p`, fully ordered.
///
/// # Safety
/// `p` is an aligned u64 in map memory.
#[inline(always)]
unsafe fn xchg(p: *mut u64, v: u64) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "{v} = xchg_64({p} + 0, {v})",
            p = in(reg) p,
            v = inout(reg) v => _,
            options(nostack),
        );
    }
}

/// A new flow's record: zero counters, first seen now, the initiator judged from this packet.
#[inline(always)]
fn new_record(fresh: &mut FlowStats, pkt: &Packet, sender: u8, now: u64) {
    let (initiator, guessed) = initiator_of(pkt, sender);
    let mut flags = 0;
    if guessed {
        flags |= FLOW_F_INITIATOR_GUESSED;
    }
    if pkt.fragment {
        flags |= FLOW_F_FRAGMENT;
    }
    // SAFETY: FlowStats is plain old data; all zeros is its empty value.
    unsafe { core::ptr::write_bytes(core::ptr::from_mut(fresh), 0, 1) };
    fresh.first_seen_ns = now;
    fresh.initiator = initiator;
    fresh.rr_kind = if pkt.fragment { RR_NONE } else { rr_kind(pkt.proto) };
    fresh.flags = flags;
}

/// Counts the packet at its observation point and, if that point owns this direction (it was
/// the first to see it on this node), in the flow totals: a packet crossing two attached
/// interfaces of one node is counted once. Returns whether this point owns the direction.
#[inline(always)]
fn observe_point(s: &mut FlowStats, ifindex: u32, hook: u8, dir: usize, l3_len: u32) -> bool {
    let dir8 = dir as u8;
    let mut slot = MAX_OBS;
    let mut i = 0;
    while i < MAX_OBS {
        let o: &ObsPoint = &s.obs[i];
        if o.ifindex == ifindex && o.hook == hook && o.dir == dir8 {
            slot = i;
            break;
        }
        if o.ifindex == 0 {
            s.obs[i] = ObsPoint { ifindex, hook, dir: dir8, _pad: [0; 2], packets: 0 };
            slot = i;
            break;
        }
        i += 1;
    }
    if slot >= MAX_OBS {
        count(CNT_OBS_OVERFLOW);
        return false;
    }
    add(&mut s.obs[slot].packets, 1);
    let d = dir & 1;
    let me = slot as u8 + 1;
    if s.owner[d] == 0 {
        s.owner[d] = me;
    }
    if s.owner[d] != me {
        return false;
    }
    add(&mut s.packets[d], 1);
    add(&mut s.bytes[d], u64::from(l3_len));
    true
}

/// The tunnel leg: written only when it changes (same cache line as the counters anyway). The
/// wire's view (outer headers on the underlay) is richer than a tunnel key (it has the outer
/// size and the encapsulation), so a key does not overwrite it when both hooks see the flow.
#[inline(always)]
fn record_tunnel(s: &mut FlowStats, t: &Tunnel) {
    let ti = &mut s.tunnel;
    let from_key = t.kind == TUN_DEVICE;
    if from_key && ti.kind != TUN_NONE && ti.kind != TUN_DEVICE {
        return;
    }
    if ti.remote != t.remote || ti.vni != t.vni || ti.kind != t.kind {
        ti.remote = t.remote;
        ti.vni = t.vni;
        ti.kind = t.kind;
    }
    if from_key {
        return;
    }
    if t.outer_len > ti.outer_max_len {
        ti.outer_max_len = t.outer_len;
    }
    // SAFETY: an aligned u32 inside a map value.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut ti.packets, 1) };
}

#[inline(always)]
fn add(counter: &mut u64, v: u64) {
    // SAFETY: `counter` is an aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[inline(always)]
fn request_reply(s: &mut FlowStats, pkt: &Packet, dir: usize) {
    match pkt.signal {
        Signal::TcpSyn | Signal::EchoRequest | Signal::SctpInit if dir == DIR_FWD => {
            let now = precise_now();
            s.requests += 1;
            if s.req_first_ns == 0 {
                s.req_first_ns = now;
            }
            if pkt.signal == Signal::EchoRequest {
                s.echo_req_ns = now;
                s.echo_seq = pkt.echo_seq;
            }
        }
        Signal::TcpSynAck | Signal::SctpInitAck if dir == DIR_REV => {
            let now = precise_now();
            if s.replies == 0 && s.req_first_ns != 0 {
                s.reply_first_ns = now;
                s.rtt_ns = now - s.req_first_ns;
            }
            s.replies += 1;
        }
        Signal::EchoReply if dir == DIR_REV => {
            let now = precise_now();
            if s.reply_first_ns == 0 {
                s.reply_first_ns = now;
            }
            if s.echo_req_ns != 0 && pkt.echo_seq == s.echo_seq {
                s.rtt_ns = now - s.echo_req_ns;
            }
            s.replies += 1;
        }
        Signal::TcpRst => {
            let d = dir & 1;
            s.rst[d] += 1;
        }
        Signal::None if s.rr_kind == RR_UDP && s.replies == 0 => {
            if dir == DIR_FWD {
                s.requests += 1;
                if s.req_first_ns == 0 {
                    s.req_first_ns = precise_now();
                }
            } else {
                let now = precise_now();
                s.replies = 1;
                s.reply_first_ns = now;
                if s.req_first_ns != 0 {
                    s.rtt_ns = now - s.req_first_ns;
                }
            }
        }
        _ => {}
    }
}

// Keeps the side constants referenced for readers: SIDE_A/SIDE_B are what `sender` holds.
const _: () = assert!(SIDE_A == 0 && SIDE_B == 1);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic: the verifier rejects a program with a path that reaches here
    // (a loop it cannot bound). As in aya-template, a plain loop rather than
    // `unreachable_unchecked`: should a panic path survive optimisation, the failure is the
    // verifier's clear refusal at load time, not undefined behaviour the optimiser may exploit.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
