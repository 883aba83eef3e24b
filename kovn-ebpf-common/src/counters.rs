//! What the classifiers could not record, counted per CPU in `COUNTERS`.

#[cfg(doc)]
use crate::PodGuard;

/// Indices of the kernel-side counters array (`COUNTERS`, per CPU): what could not be recorded.
pub const CNT_MAP_FULL: u32 = 0;
pub const CNT_PARSE_TRUNCATED: u32 = 1;
pub const CNT_PARSE_BAD_IHL: u32 = 2;
pub const CNT_PARSE_IPV6_EXT: u32 = 3;
pub const CNT_NON_IP: u32 = 4;
pub const CNT_OBS_OVERFLOW: u32 = 5;
pub const CNT_PULL_FAILED: u32 = 6;
/// A UDP packet to the Geneve/VXLAN port whose tunnel header is not one kovn can decode.
pub const CNT_TUNNEL_BAD: u32 = 7;
/// A new flow's slot stayed busy (another CPU filling it, or userspace freeing it) past the
/// bounded wait: the packet is not recorded, rather than recorded in a second place.
pub const CNT_SLOT_BUSY: u32 = 8;
/// A packet that would have opened a new flow for a pod over its new-flow budget
/// ([`PodGuard`]): not recorded, counted on the pod ([`PodGuard::refused`]) and here.
pub const CNT_SOURCE_BUDGET: u32 = 9;
/// A packet on a pod veth, sent by the pod, whose source is not one of the pod's addresses
/// ([`PodGuard::addrs`]): not recorded, counted on the pod ([`PodGuard::spoofed`]) and here.
pub const CNT_SPOOFED: u32 = 10;
pub const CNT_MAX: u32 = 11;

/// Names of the counters above, for logs and metrics (index = counter).
pub const COUNTER_NAMES: [&str; CNT_MAX as usize] = [
    "map_full",
    "parse_truncated",
    "parse_bad_ihl",
    "parse_ipv6_ext",
    "non_ip",
    "obs_overflow",
    "pull_failed",
    "tunnel_bad",
    "slot_busy",
    "source_budget",
    "spoofed",
];
