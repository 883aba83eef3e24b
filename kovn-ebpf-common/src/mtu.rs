//! MTU signals: oversized packets and ICMP "too big" messages of a flow, and the path MTU
//! the programs compare packets with.

/// MTU signals of a flow: packets too big for the path they were about to take, and ICMP
/// "fragmentation needed" / ICMPv6 "packet too big" messages about it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MtuInfo {
    /// Packets larger than the path MTU of the interface that saw them, that could not be
    /// fragmented on the way (IPv4 with DF, or IPv6). For GSO packets the segment size counts.
    pub oversized_packets: u32,
    /// The largest such packet (L3 bytes; for GSO, the largest segment).
    pub oversized_max_len: u32,
    /// ICMP fragmentation-needed / ICMPv6 packet-too-big messages about this flow.
    pub too_big_msgs: u32,
    /// The MTU the last such message reported.
    pub reported_mtu: u32,
}

/// `PATH_MTU_MIN[0]`: the smallest path MTU of the watched interfaces (0: no check). Packets
/// not larger than it skip the per-interface lookup in `IFACE_MTU` (ifindex -> path MTU).
pub const PATH_MTU_MIN_IDX: u32 = 0;

// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for MtuInfo {}

assert_layout!(MtuInfo {
    size: 16,
    align: 4,
    oversized_packets: 0,
    oversized_max_len: 4,
    too_big_msgs: 8,
    reported_mtu: 12
});
