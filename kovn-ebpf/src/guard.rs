//! Pod guards: the new-flow budget that keeps one pod from filling the flow table for the
//! whole node, and the source-address check that keeps a pod from forging other workloads'
//! addresses into flows. The daemon fills the maps from the inventory (see
//! `kovn_ebpf_common::PodGuard`); the programs only update a pod's budget and counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use kovn_ebpf_common::{
    CNT_SOURCE_BUDGET, CNT_SPOOFED, FlowKey, POD_ADDR_MAX, POD_GUARD_ADDRS, POD_GUARD_MAX,
    POD_GUARD_SLOT_COUNT, PodGuard, SIDE_A,
};

use crate::{add, count};

#[map]
static POD_GUARD_SLOTS: Array<PodGuard> = Array::with_max_entries(POD_GUARD_SLOT_COUNT, 0);

#[map]
static POD_GUARD_OVERFLOW: HashMap<u32, PodGuard> = HashMap::with_max_entries(POD_GUARD_MAX, 0);

#[map]
static POD_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(POD_ADDR_MAX, 0);

/// Nanoseconds between two new flows of one pod at its budget's rate (1 s / rate), set by the
/// loader; 0 turns the budget off.
#[unsafe(no_mangle)]
static FLOW_BUDGET_COST_NS: u64 = 0;

/// How far ahead of now a pod's budget may be spent: (burst - 1) × cost.
#[unsafe(no_mangle)]
static FLOW_BUDGET_TAU_NS: u64 = 0;

/// The guard of the pod behind host veth `ifindex`, if the daemon knows one.
#[inline(always)]
pub fn guard_of(ifindex: u32) -> Option<*mut PodGuard> {
    let slot = POD_GUARD_SLOTS.get_ptr_mut(ifindex & (POD_GUARD_SLOT_COUNT - 1))?;
    // SAFETY: a pointer into an array map value; the identifying fields are written by the
    // daemon only.
    unsafe {
        if (*slot).ifindex == ifindex {
            return Some(slot);
        }
        if (*slot).overflow == 0 {
            return None;
        }
    }
    POD_GUARD_OVERFLOW.get_ptr_mut(&ifindex)
}

/// For a packet the pod behind `ifindex` sent: whether its source is not the pod's. Counted on
/// the pod when so. Unknown pods, pods without known addresses, IPv6 link-local and
/// unspecified sources (neighbour discovery, DAD) and IPv4 0.0.0.0 (DHCP) pass.
#[inline(always)]
pub fn spoofed(ifindex: u32, src: &[u32; 4]) -> bool {
    let Some(g) = guard_of(ifindex) else { return false };
    // SAFETY: a pointer into a map value (see guard_of).
    let g = unsafe { &mut *g };
    let n = g.naddrs as usize;
    if n == 0 {
        return false;
    }
    let mut i = 0;
    while i < POD_GUARD_ADDRS {
        if i < n && g.addrs[i] == *src {
            return false;
        }
        i += 1;
    }
    // fe80::/10 and :: ; ::ffff:0.0.0.0.
    let w0 = u32::from_be(src[0]);
    if w0 & 0xffc0_0000 == 0xfe80_0000 || (src[0] == 0 && src[1] == 0 && src[3] == 0) {
        return false;
    }
    add(&mut g.spoofed, 1);
    count(CNT_SPOOFED);
    true
}

/// Whether a new flow may be recorded. It is charged to the pod of this node that sent it:
/// the pod behind `pod_ifindex` when the packet comes from a pod veth (its source was
/// checked), else the pod whose address sent it. New flows *into* a local pod (from another
/// node or the outside) are never charged to it, so a busy server is not throttled by its
/// clients; they are only refused while that pod is over its budget, which keeps the replies
/// to a flooding pod's refused flows from being recorded as new flows elsewhere on the path.
/// Flows of no local pod pass.
#[inline(always)]
pub fn admit(key: &FlowKey, sender: u8, pod_ifindex: Option<u32>, now: u64) -> bool {
    // SAFETY: read-only globals.
    let cost = unsafe { core::ptr::read_volatile(&FLOW_BUDGET_COST_NS) };
    if cost == 0 {
        return true;
    }
    let (g, charge) = match pod_ifindex {
        Some(i) => (guard_of(i), true),
        None => {
            let (from, to) =
                if sender == SIDE_A { (&key.addr_a, &key.addr_b) } else { (&key.addr_b, &key.addr_a) };
            // SAFETY: plain u32 values of a map the daemon writes.
            match unsafe { POD_ADDRS.get(from) } {
                Some(&i) => (guard_of(i), true),
                // SAFETY: as above.
                None => match unsafe { POD_ADDRS.get(to) } {
                    Some(&i) => (guard_of(i), false),
                    None => (None, false),
                },
            }
        }
    };
    let Some(g) = g else { return true };
    // SAFETY: a pointer into a map value; `tat` races between CPUs benignly (see PodGuard).
    let g = unsafe { &mut *g };
    // SAFETY: a read-only global.
    let tau = unsafe { core::ptr::read_volatile(&FLOW_BUDGET_TAU_NS) };
    let tat = if g.tat > now { g.tat } else { now };
    if tat - now > tau {
        add(&mut g.refused, 1);
        count(CNT_SOURCE_BUDGET);
        return false;
    }
    if charge {
        g.tat = tat + cost;
    }
    true
}
