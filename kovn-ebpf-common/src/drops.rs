//! Drops with the kernel's reason (skb:kfree_skb). Kernel side: kovn-ebpf/src/drops.rs;
//! userspace: kovn-monitor/src/drops.rs.

use crate::FlowKey;
#[cfg(doc)]
use crate::{SIDE_A, SIDE_B};

/// One drop record: the flow (canonical key, zero for non-IP packets), the kernel's
/// `enum skb_drop_reason` value, the device the skb was on (an ifindex of its own network
/// namespace), which namespace that was and which way the dropped packet went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub flow: FlowKey,
    pub reason: u32,
    pub ifindex: u32,
    /// 0: the monitor's own network namespace (the node's); otherwise the inode of a pod's
    /// network namespace (one of [`DROP_POD_NETNS`]'s keys).
    pub netns: u32,
    /// For drops inside a pod: the ifindex of the pod's host-side veth (the value of its
    /// [`DROP_POD_NETNS`] entry), which names the pod in the monitor's namespace. 0 otherwise.
    pub pod_ifindex: u32,
    /// [`SIDE_A`] when the dropped packet was sent by the key's `addr_a:port_a`, else [`SIDE_B`].
    pub sender: u32,
}

/// Drops of one [`DropKey`], updated in place with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    pub count: u64,
    /// `bpf_ktime_get_ns()` of the latest drop.
    pub last_ns: u64,
    /// Sum of `skb->len` at the drop point.
    pub bytes: u64,
    /// The tracepoint's `location` for the latest drop: the code address that freed the skb
    /// (the caller of `kfree_skb`/`kfree_skb_reason`, or of `sk_skb_reason_drop` since 6.11),
    /// which userspace names from `/proc/kallsyms`. Never shown as an address.
    pub location: u64,
}

/// The network namespaces of this node's pods, kept by userspace from the pods' veths; drops
/// there are recorded as well as the node's own. A namespace is found in one step on the path
/// every kfree_skb call takes: slot `inode % DROP_POD_NETNS_SLOT_COUNT` of the array
/// [`DROP_POD_NETNS_SLOT_MAP`] holds one namespace; the others whose inode falls on an occupied
/// slot (rare: namespace inodes are allocated densely) are in the hash map [`DROP_POD_NETNS`]
/// (inode → host veth ifindex), looked up only when the slot says it has such `overflow`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodNetnsSlot {
    /// The namespace's inode (0: the slot is free).
    pub inode: u32,
    /// The ifindex of the pod's host-side veth in the monitor's namespace.
    pub host_ifindex: u32,
    /// How many other watched namespaces fall on this slot (they are in [`DROP_POD_NETNS`]).
    pub overflow: u32,
}

pub const DROP_POD_NETNS_SLOT_MAP: &str = "DROP_POD_NETNS_SLOTS";
/// Slots of [`DROP_POD_NETNS_SLOT_MAP`] (a power of two).
pub const DROP_POD_NETNS_SLOT_COUNT: u32 = 4096;
pub const DROP_POD_NETNS: &str = "DROP_POD_NETNS";
/// Bound of the watched namespaces (slots and overflow together): kubelet's default is 110
/// pods per node and its documented maximum 250 to 500; a pod veth beyond this is logged and
/// its drops are not watched.
pub const DROP_POD_NETNS_MAX: u32 = 4096;

/// Indices of `DROP_COUNTERS` (per CPU).
pub const DCNT_MAP_FULL: u32 = 0;
/// kfree_skb calls that passed the netns filter (drops in the monitor's netns).
pub const DCNT_IN_NETNS: u32 = 1;
/// Reads of the skb or its headers that failed.
pub const DCNT_READ_FAILED: u32 = 2;
/// kfree_skb calls in a pod's network namespace (recorded).
pub const DCNT_IN_POD_NETNS: u32 = 3;
/// kfree_skb calls in any other namespace (neither the node's nor one of its pods'): skipped.
pub const DCNT_SKIPPED_NETNS: u32 = 4;
pub const DCNT_MAX: u32 = 5;
pub const DROP_COUNTER_NAMES: [&str; DCNT_MAX as usize] =
    ["drops_map_full", "drops_in_netns", "drops_read_failed", "drops_in_pod_netns", "drops_skipped_netns"];

// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropKey {}
// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DropStats {}
// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodNetnsSlot {}

assert_layout!(DropKey {
    size: 60,
    align: 4,
    flow: 0,
    reason: 40,
    ifindex: 44,
    netns: 48,
    pod_ifindex: 52,
    sender: 56
});
assert_layout!(DropStats { size: 32, align: 8, count: 0, last_ns: 8, bytes: 16, location: 24 });
assert_layout!(PodNetnsSlot { size: 12, align: 4, inode: 0, host_ifindex: 4, overflow: 8 });
