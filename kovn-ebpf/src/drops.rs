//! Drops with the kernel's reason: a BTF tracepoint on `kfree_skb` (args: skb, location,
//! reason[, rx_sk]) that records each drop in the monitor's network namespace and in the
//! namespaces of this node's pods (`DROP_POD_NETNS`, kept by userspace from the pods' veths)
//! by flow, reason, interface, namespace and direction, with the code address of the latest.
//!
//! It runs for every skb the kernel frees with kfree_skb, in every namespace, so the first
//! thing it does is the netns filter (three kernel reads, and one hash lookup when the
//! namespace is not the monitor's own); anything else is counted as skipped and left. Structure offsets come from the
//! running kernel's BTF, resolved by userspace and passed as read-only globals: the verifier
//! sees them as constants. Nothing is hard-coded here.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use kovn_ebpf_common::{
    DCNT_IN_NETNS, DCNT_IN_POD_NETNS, DCNT_MAP_FULL, DCNT_MAX, DCNT_READ_FAILED, DCNT_SKIPPED_NETNS,
    DROP_POD_NETNS_MAX, DROP_POD_NETNS_SLOT_COUNT, DropKey, DropStats, FlowKey, PodNetnsSlot, ipv4_mapped,
};

/// Offsets (bytes) from the running kernel's BTF, set by the loader.
#[unsafe(no_mangle)]
static SKB_DEV_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_HEAD_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_TRANSPORT_HEADER_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_PROTOCOL_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_LEN_OFF: u32 = 0;
#[unsafe(no_mangle)]
static DEV_IFINDEX_OFF: u32 = 0;
/// `net_device.nd_net.net`.
#[unsafe(no_mangle)]
static DEV_NET_OFF: u32 = 0;
/// `sk_buff.sk` and `sock.__sk_common.skc_net.net`: the namespace of a locally sent skb that
/// has no device yet (dropped at the OUTPUT hook, e.g. a pod's firewall dropping its replies).
#[unsafe(no_mangle)]
static SKB_SK_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SK_NET_OFF: u32 = 0;
/// `SKB_DROP_REASON_NETFILTER_DROP` on this kernel (0: none): the only reason recorded for an
/// skb without a device (the others there are socket teardown, e.g. QUEUE_PURGE).
#[unsafe(no_mangle)]
static REASON_NETFILTER_DROP: u32 = 0;
/// `net.ns.inum`.
#[unsafe(no_mangle)]
static NET_INUM_OFF: u32 = 0;
/// The monitor's own network namespace inode (`stat -L /proc/self/ns/net`).
#[unsafe(no_mangle)]
static NETNS_INUM: u32 = 0;
/// 1 when the tracepoint has the `reason` argument (Linux >= 5.17).
#[unsafe(no_mangle)]
static DROPS_HAS_REASON: u8 = 0;

/// Drops by (flow, reason, interface). Sized by the loader.
#[map]
static DROPS: HashMap<DropKey, DropStats> = HashMap::with_max_entries(4096, 0);

/// Pod network namespaces whose drops are recorded, by `inode % DROP_POD_NETNS_SLOT_COUNT` (an array
/// lookup the verifier inlines: the early exit stays a few loads). Written by userspace only.
#[map]
static DROP_POD_NETNS_SLOTS: Array<PodNetnsSlot> = Array::with_max_entries(DROP_POD_NETNS_SLOT_COUNT, 0);

/// The watched namespaces whose slot is taken by another: inode → the pod's host veth ifindex.
#[map]
static DROP_POD_NETNS: HashMap<u32, u32> = HashMap::with_max_entries(DROP_POD_NETNS_MAX, 0);

#[map]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DCNT_MAX, 0);

const BPF_NOEXIST: u64 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// `skb->network_header`/`transport_header` when unset (`(typeof(...))~0U`).
const HDR_UNSET: u16 = 0xffff;

#[inline(always)]
fn g32(v: &u32) -> u64 {
    // SAFETY: a read-only global.
    u64::from(unsafe { core::ptr::read_volatile(v) })
}

#[inline(always)]
fn dcount(idx: u32) {
    if let Some(c) = DROP_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// A copy of kernel memory at any address through `bpf_probe_read_kernel`; None when it
/// faults (the helper's error code says no more than that here: the packet's headers are
/// simply not recorded).
#[inline(always)]
fn rd<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address (a fault returns an error) and
    // copies into a fresh `T`; callers read only plain integers and byte arrays, valid for
    // every bit pattern.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// A direct load through a BTF-typed kernel pointer (the skb argument and what its members
/// point to): the verifier checks the constant offset against the kernel's BTF and turns the
/// load into a fault-safe one (PROBE_MEM: a fault reads zero), without the cost of a helper
/// call on the path every kfree_skb takes. `bpf_probe_read_kernel` ([`rd`]) would make it safe
/// for any address, at a helper call per load.
///
/// # Safety
/// `addr` must be a BTF-typed kernel pointer the verifier tracks (the tracepoint's `skb`, or a
/// pointer member loaded from one with `ld`) plus an offset the verifier sees as a constant
/// (one of the loader's read-only offsets above) of a member of type `T` in the pointee's BTF
/// type. The verifier refuses the program for any other address: a wrong use fails at load
/// time, not at run time.
#[inline(always)]
unsafe fn ld<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller's (a verifier-checked PROBE_MEM load, see above).
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kovn_kfree_skb(ctx: BtfTracePointContext) -> i32 {
    if try_kfree_skb(&ctx).is_err() {
        dcount(DCNT_READ_FAILED);
    }
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let skb: u64 = ctx.arg(0);
    // Netns filter first: skb->dev->nd_net.net->ns.inum, or skb->sk's namespace for a locally
    // sent skb without a device; an skb with neither has no namespace to tell: skipped.
    // SAFETY: `skb` is the tracepoint's BTF pointer, the offset `sk_buff.dev`'s (as below:
    // each `ld` names the BTF pointer and the member).
    let dev: u64 = unsafe { ld(skb + g32(&SKB_DEV_OFF)) };
    let net: u64 = if dev != 0 {
        // SAFETY: `dev` is `sk_buff.dev` (a BTF pointer), the offset `net_device.nd_net.net`'s.
        unsafe { ld(dev + g32(&DEV_NET_OFF)) }
    } else {
        // No device yet: a locally sent packet, whose socket tells the namespace. Recorded
        // only when a firewall dropped it, and only inside pods (below).
        // SAFETY: `skb` as above, the offset `sk_buff.sk`'s.
        let sk: u64 = unsafe { ld(skb + g32(&SKB_SK_OFF)) };
        let nf = g32(&REASON_NETFILTER_DROP);
        // SAFETY: a read-only global, as below.
        let has_reason = unsafe { core::ptr::read_volatile(&DROPS_HAS_REASON) } != 0;
        if sk == 0 || nf == 0 || !has_reason || ctx.arg::<u64>(2) as u32 as u64 != nf {
            0
        } else {
            // SAFETY: `sk` is `sk_buff.sk` (a BTF pointer), the offset `sock.__sk_common.skc_net.net`'s.
            unsafe { ld(sk + g32(&SK_NET_OFF)) }
        }
    };
    if net == 0 {
        dcount(DCNT_SKIPPED_NETNS);
        return Ok(());
    }
    // SAFETY: `net` is a `struct net` BTF pointer loaded above, the offset `net.ns.inum`'s.
    let inum: u32 = unsafe { ld(net + g32(&NET_INUM_OFF)) };
    let (netns, pod_ifindex) = if u64::from(inum) == g32(&NETNS_INUM) {
        if dev == 0 {
            // The node's own sockets (the monitor's among them): not what kovn watches.
            dcount(DCNT_SKIPPED_NETNS);
            return Ok(());
        }
        dcount(DCNT_IN_NETNS);
        (0, 0)
    } else {
        match pod_netns(inum) {
            Some(host_ifindex) => {
                dcount(DCNT_IN_POD_NETNS);
                (inum, host_ifindex)
            }
            None => {
                dcount(DCNT_SKIPPED_NETNS);
                return Ok(());
            }
        }
    };
    // SAFETY: a read-only global; the verifier drops the branch not taken, so a kernel
    // without the argument never sees the access to it.
    let reason: u32 = if unsafe { core::ptr::read_volatile(&DROPS_HAS_REASON) } != 0 {
        ctx.arg::<u64>(2) as u32
    } else {
        0
    };
    let ifindex: u32 = if dev == 0 {
        0
    } else {
        // SAFETY: `dev` as above, the offset `net_device.ifindex`'s.
        unsafe { ld(dev + g32(&DEV_IFINDEX_OFF)) }
    };
    // SAFETY: `skb` as above, the offset `sk_buff.len`'s.
    let len: u32 = unsafe { ld(skb + g32(&SKB_LEN_OFF)) };
    // No readable IP header (non-IP, or a read that faulted): recorded without a flow.
    let (flow, sender) = flow_of(skb).unwrap_or_default();
    let key = DropKey { flow, reason, ifindex, netns, pod_ifindex, sender: u32::from(sender) };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = match DROPS.get_ptr_mut(&key) {
        Some(s) => s,
        None => {
            let fresh = DropStats { count: 0, last_ns: now, bytes: 0, location: 0 };
            if DROPS.insert(&key, &fresh, BPF_NOEXIST).is_err() && DROPS.get_ptr(&key).is_none() {
                dcount(DCNT_MAP_FULL);
                return Ok(());
            }
            match DROPS.get_ptr_mut(&key) {
                Some(s) => s,
                None => {
                    dcount(DCNT_MAP_FULL);
                    return Ok(());
                }
            }
        }
    };
    // SAFETY: a pointer into a hash map value, valid for this run; counters use atomic adds.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*stats).count, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut (*stats).bytes, u64::from(len));
        (*stats).last_ns = now;
        // Where the kernel freed it (the tracepoint's second argument on every kernel since
        // the tracepoint exists): which function dropped is what a reason like NOT_SPECIFIED
        // does not say.
        (*stats).location = ctx.arg::<u64>(1);
    }
    Ok(())
}

/// The host veth ifindex of the pod whose network namespace is `inum`, if it is watched.
#[inline(always)]
fn pod_netns(inum: u32) -> Option<u32> {
    let slot = DROP_POD_NETNS_SLOTS.get(inum & (DROP_POD_NETNS_SLOT_COUNT - 1))?;
    if slot.inode == inum && inum != 0 {
        return Some(slot.host_ifindex);
    }
    if slot.overflow == 0 {
        return None;
    }
    // SAFETY: a plain lookup; the value is copied out at once.
    unsafe { DROP_POD_NETNS.get(&inum) }.copied()
}

/// The canonical 5-tuple from the skb's headers (skb->head + network_header/transport_header)
/// and which side of it sent the packet.
#[inline(always)]
fn flow_of(skb: u64) -> Option<(FlowKey, u8)> {
    let proto_be: u16 = rd(skb + g32(&SKB_PROTOCOL_OFF))?;
    let proto = u16::from_be(proto_be);
    let head: u64 = rd(skb + g32(&SKB_HEAD_OFF))?;
    let nh: u16 = rd(skb + g32(&SKB_NETWORK_HEADER_OFF))?;
    if head == 0 || nh == HDR_UNSET {
        return None;
    }
    let th: u16 = rd(skb + g32(&SKB_TRANSPORT_HEADER_OFF))?;
    let l3 = head + u64::from(nh);
    let (src, dst, l4proto, l4) = if proto == ETH_P_IP {
        // version/ihl, tos, tot_len, id, frag_off, ttl, protocol, csum, saddr, daddr
        let h: [u8; 20] = rd(l3)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let ihl = u64::from(h[0] & 0x0f) * 4;
        let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        let src = ipv4_mapped([h[12], h[13], h[14], h[15]]);
        let dst = ipv4_mapped([h[16], h[17], h[18], h[19]]);
        // Non-first fragments carry no ports.
        let l4 = if frag != 0 { 0 } else { l3 + ihl };
        (src, dst, h[9], l4)
    } else if proto == ETH_P_IPV6 {
        let h: [u32; 10] = rd(l3)?;
        let first = h[1].to_ne_bytes();
        let next = first[2];
        let src = [h[2], h[3], h[4], h[5]];
        let dst = [h[6], h[7], h[8], h[9]];
        // Extension headers: the kernel's transport_header, when set past the IPv6 header.
        let l4 =
            if next == IPPROTO_TCP || next == IPPROTO_UDP || next == IPPROTO_SCTP || next == IPPROTO_ICMPV6 {
                l3 + 40
            } else if th != HDR_UNSET && th > nh + 40 {
                head + u64::from(th)
            } else {
                0
            };
        (src, dst, next, l4)
    } else {
        return None;
    };
    let (mut sport, mut dport) = (0u16, 0u16);
    if l4 != 0 && (l4proto == IPPROTO_TCP || l4proto == IPPROTO_UDP || l4proto == IPPROTO_SCTP) {
        let p: [u8; 4] = rd(l4)?;
        sport = u16::from_be_bytes([p[0], p[1]]);
        dport = u16::from_be_bytes([p[2], p[3]]);
    } else if l4 != 0 && (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6) {
        // Echo request/reply (RFC 792, RFC 4443): the identifier stands in for the requester's
        // port, as in the classifier's key (parse.rs), so a dropped ping joins its flow. Other
        // ICMP messages keep ports 0; a header that cannot be read keeps the addresses.
        if let Some(p) = rd::<[u8; 6]>(l4) {
            let id = u16::from_be_bytes([p[4], p[5]]);
            let (req, rep) = if l4proto == IPPROTO_ICMP { (8, 0) } else { (128, 129) };
            if p[0] == req {
                sport = id;
            } else if p[0] == rep {
                dport = id;
            }
        }
    }
    Some(FlowKey::canonical(src, dst, sport, dport, l4proto))
}
