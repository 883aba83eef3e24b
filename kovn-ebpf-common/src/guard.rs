//! The pod guard: each pod's addresses (spoofing check) and new-flow budget.

/// What the programs know of one pod of this node, by its host veth's ifindex (written by the
/// daemon from the inventory; the kernel updates only `tat`, `refused` and `spoofed` in place):
/// its addresses, to count packets the pod sends from another source as spoofed, and its
/// new-flow budget, so one pod opening flows fast cannot fill the flow table for the node.
///
/// The budget is a GCRA (virtual scheduling) token bucket: a new flow of the pod is admitted
/// when `tat - now <= FLOW_BUDGET_TAU_NS` and then moves `tat` on by `FLOW_BUDGET_COST_NS`
/// (1 s / rate): one u64 in place, no division, no timer. Updates from several CPUs race
/// (plain stores): at worst a few more flows than the budget get in, never fewer.
///
/// Found in one step on the packet path: slot `ifindex % POD_GUARD_SLOT_COUNT` of the array
/// [`POD_GUARD_SLOT_MAP`] (inlined by the verifier); a pod whose slot holds another ifindex is
/// in the hash map [`POD_GUARD_OVERFLOW_MAP`], looked up only when the slot says it has
/// `overflow` entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodGuard {
    /// The host veth's ifindex (0: the slot is free).
    pub ifindex: u32,
    /// How many of `addrs` are set (0: addresses unknown, no spoofing check).
    pub naddrs: u32,
    /// How many other pods fall on this slot (they are in [`POD_GUARD_OVERFLOW_MAP`]).
    pub overflow: u32,
    pub _pad: u32,
    /// The pod's addresses, encoded like flow addresses (IPv4-mapped).
    pub addrs: [[u32; 4]; POD_GUARD_ADDRS],
    /// GCRA theoretical arrival time (CLOCK_MONOTONIC ns) of the pod's next new flow.
    pub tat: u64,
    /// Packets not recorded because they would have opened a new flow over the budget.
    pub refused: u64,
    /// Packets the pod sent from an address not its own (not recorded).
    pub spoofed: u64,
}

/// Addresses per pod the spoofing check knows (dual stack with a spare of each family).
pub const POD_GUARD_ADDRS: usize = 4;
pub const POD_GUARD_SLOT_MAP: &str = "POD_GUARD_SLOTS";
/// Slots of [`POD_GUARD_SLOT_MAP`] (a power of two).
pub const POD_GUARD_SLOT_COUNT: u32 = 4096;
pub const POD_GUARD_OVERFLOW_MAP: &str = "POD_GUARD_OVERFLOW";
/// Bound of the guarded pods (slots and overflow together), like [`DROP_POD_NETNS_MAX`](crate::DROP_POD_NETNS_MAX).
pub const POD_GUARD_MAX: u32 = 4096;
/// Pod address -> host veth ifindex, for the new-flow budget at hooks that do not know the
/// pod by their interface (tunnel, underlay, the destination pod's veth).
pub const POD_ADDR_MAP: &str = "POD_ADDRS";
pub const POD_ADDR_MAX: u32 = POD_GUARD_MAX * POD_GUARD_ADDRS as u32;

// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodGuard {}

assert_layout!(PodGuard {
    size: 16 + 16 * POD_GUARD_ADDRS + 24,
    align: 8,
    ifindex: 0,
    naddrs: 4,
    overflow: 8,
    _pad: 12,
    addrs: 16,
    tat: 16 + 16 * POD_GUARD_ADDRS,
    refused: 24 + 16 * POD_GUARD_ADDRS,
    spoofed: 32 + 16 * POD_GUARD_ADDRS,
});
