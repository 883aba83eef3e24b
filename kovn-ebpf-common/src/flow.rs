//! Flows: the canonical key, the per-flow record the classifiers update in place, its
//! observation points, and the direct-mapped slot table's entry.

#[cfg(doc)]
use crate::CNT_OBS_OVERFLOW;
use crate::{MtuInfo, TunnelInfo};

/// One flow, both directions: the key is *canonical* (the smaller endpoint first) so a packet
/// and its reply hit the same entry with a single hash lookup; [`FlowStats::initiator`] says
/// which endpoint started the conversation.
///
/// Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
/// Ports are in host order. For ICMP/ICMPv6 echo the identifier stands in for the port of the
/// side that sent the request (the other port is 0), so each `ping` session is its own flow.
/// Non-first IP fragments carry no ports (both 0) and set [`FLOW_F_FRAGMENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_a: [u32; 4],
    pub addr_b: [u32; 4],
    pub port_a: u16,
    pub port_b: u16,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, others as seen).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Which side of a canonical key sent a packet.
pub const SIDE_A: u8 = 0;
pub const SIDE_B: u8 = 1;

/// Direction relative to the initiator: forward is initiator → responder.
pub const DIR_FWD: usize = 0;
pub const DIR_REV: usize = 1;

impl FlowKey {
    /// Builds the canonical key for a packet `src:sport → dst:dport` and tells which side
    /// (`SIDE_A`/`SIDE_B`) the sender is. The order compares the address words as stored and
    /// then the ports: any total order works as long as both directions agree.
    #[inline(always)]
    pub fn canonical(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, proto: u8) -> (Self, u8) {
        let src_first = {
            let mut order = 0i8; // -1: src < dst, 1: src > dst
            let mut i = 0;
            while i < 4 {
                if order == 0 {
                    if src[i] < dst[i] {
                        order = -1;
                    } else if src[i] > dst[i] {
                        order = 1;
                    }
                }
                i += 1;
            }
            if order == 0 { sport <= dport } else { order < 0 }
        };
        if src_first {
            let key = Self { addr_a: src, addr_b: dst, port_a: sport, port_b: dport, proto, _pad: [0; 3] };
            (key, SIDE_A)
        } else {
            let key = Self { addr_a: dst, addr_b: src, port_a: dport, port_b: sport, proto, _pad: [0; 3] };
            (key, SIDE_B)
        }
    }
}

/// An IPv4 address (network order bytes) as the IPv4-mapped words of a [`FlowKey`].
#[inline(always)]
pub fn ipv4_mapped(octets: [u8; 4]) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(octets)]
}

/// An IPv6 address (network order bytes) as the words of a [`FlowKey`].
#[inline(always)]
pub fn ipv6_words(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The address words back to 16 network-order bytes.
#[inline(always)]
pub fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// How many (interface, hook) observation points one flow remembers. A pod flow on one node
/// crosses at most: source pod veth, tunnel/underlay out, underlay/tunnel in, destination pod
/// veth; the rest are counted in [`ObsPoint`] overflow ([`CNT_OBS_OVERFLOW`]).
pub const MAX_OBS: usize = 4;

/// Hook bits of an observation point: direction of the tc hook, and what the interface is.
pub const HOOK_INGRESS: u8 = 0;
pub const HOOK_EGRESS: u8 = 1;
pub const HOOK_KIND_SHIFT: u8 = 1;
pub const KIND_POD: u8 = 0;
pub const KIND_TUNNEL: u8 = 1;
pub const KIND_UNDERLAY: u8 = 2;
pub const KIND_HOST: u8 = 3;

/// Where one direction of a flow was seen: an attached interface and hook, with a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObsPoint {
    /// Interface index in the monitor's network namespace; 0 = empty slot.
    pub ifindex: u32,
    /// `HOOK_INGRESS`/`HOOK_EGRESS` | kind << `HOOK_KIND_SHIFT`.
    pub hook: u8,
    /// `DIR_FWD` or `DIR_REV` (as u8).
    pub dir: u8,
    pub _pad: [u8; 2],
    pub packets: u64,
}

/// Flow flags.
pub const FLOW_F_FRAGMENT: u8 = 1 << 0;
/// The initiator was guessed (mid-stream TCP, UDP from a well-known port), not seen opening.
pub const FLOW_F_INITIATOR_GUESSED: u8 = 1 << 1;

/// Request/reply kinds: what counts as the request and the answer for this flow's protocol.
pub const RR_NONE: u8 = 0;
/// TCP: SYN answered by SYN-ACK.
pub const RR_TCP: u8 = 1;
/// ICMP/ICMPv6 echo request answered by echo reply (same identifier).
pub const RR_ECHO: u8 = 2;
/// UDP: the first packet answered by the first packet back.
pub const RR_UDP: u8 = 3;
/// SCTP: INIT answered by INIT-ACK.
pub const RR_SCTP: u8 = 4;

/// Per-flow state, updated in place by the classifiers.
///
/// Counters are updated with atomic adds (several CPUs see both directions of a flow); the
/// request/reply fields change only on rare packets (SYN, SYN-ACK, echo) and are plain stores.
/// Times are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Packets and bytes per direction ([`DIR_FWD`], [`DIR_REV`]), counted once per node
    /// (at the first observation point of that direction). Bytes are L3 lengths: the frame
    /// length minus the Ethernet header and VLAN tags.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// First request (SYN / echo request / UDP packet) and first answer timestamps.
    pub req_first_ns: u64,
    pub reply_first_ns: u64,
    /// Last echo request time and sequence, to match the echo reply for an RTT sample.
    pub echo_req_ns: u64,
    /// Latest round-trip sample in ns (SYN→SYN-ACK, echo→reply, UDP first→first back).
    pub rtt_ns: u64,
    /// Requests seen (SYNs incl. retransmits / echo requests / UDP packets before the first
    /// reply) and answers seen (SYN-ACKs / echo replies / 1 once UDP was answered).
    pub requests: u32,
    pub replies: u32,
    /// TCP RSTs per direction.
    pub rst: [u32; 2],
    /// OR of the TCP flags seen per direction (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10
    /// URG 0x20 ECE 0x40 CWR 0x80).
    pub tcp_flags: [u8; 2],
    /// `SIDE_A` or `SIDE_B` of the key: who started the conversation.
    pub initiator: u8,
    /// `RR_*`: what request/reply pairing applies.
    pub rr_kind: u8,
    /// `FLOW_F_*`.
    pub flags: u8,
    /// Index+1 into `obs` of the point that counts each direction's totals (0: none yet).
    pub owner: [u8; 2],
    pub _pad0: u8,
    pub echo_seq: u16,
    pub _pad1: [u8; 6],
    pub obs: [ObsPoint; MAX_OBS],
    pub tunnel: TunnelInfo,
    pub mtu: MtuInfo,
}

/// One slot of the direct-mapped flow table (`FLOW_SLOTS`, a `BPF_F_MMAPABLE` array): the flow's
/// full key, the slot's state and the flow's record. A flow lives in the slot its key hashes to
/// ([`slot_index`]) or, when that slot holds another flow, in the `FLOWS` hash map, for its whole
/// life: every counter has exactly one place, which userspace reads (merged by key) and frees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    /// `SLOT_FREE`, `SLOT_BUSY` (being filled by a program or freed by userspace) or
    /// `SLOT_LIVE`. Changed only with compare-and-swap / exchange (Linux >= 5.12).
    pub state: u64,
    pub stats: FlowStats,
}

pub const SLOT_FREE: u64 = 0;
pub const SLOT_BUSY: u64 = 1;
pub const SLOT_LIVE: u64 = 2;

/// The slot of `key` in a table of `mask + 1` slots (a power of two). A multiply-xorshift over
/// the key's five 64-bit words: a few cycles in the program, the same result in userspace.
#[inline(always)]
pub fn slot_index(key: &FlowKey, mask: u32) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let w = |a: u32, b: u32| u64::from(a) | (u64::from(b) << 32);
    let mut h = w(key.addr_a[0], key.addr_a[1]).wrapping_mul(K);
    h = (h ^ w(key.addr_a[2], key.addr_a[3])).wrapping_mul(K);
    h = (h ^ w(key.addr_b[0], key.addr_b[1])).wrapping_mul(K);
    h = (h ^ w(key.addr_b[2], key.addr_b[3])).wrapping_mul(K);
    h = (h ^ w(u32::from(key.port_a) | (u32::from(key.port_b) << 16), u32::from(key.proto))).wrapping_mul(K);
    ((h >> 32) as u32 ^ h as u32) & mask
}

// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ObsPoint {}
// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowStats {}
// SAFETY: plain old data: `repr(C)`, no implicit padding (asserted below), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowSlot {}

assert_layout!(FlowKey {
    size: 40,
    align: 4,
    addr_a: 0,
    addr_b: 16,
    port_a: 32,
    port_b: 34,
    proto: 36,
    _pad: 37
});
assert_layout!(ObsPoint { size: 16, align: 8, ifindex: 0, hook: 4, dir: 5, _pad: 6, packets: 8 });
assert_layout!(FlowStats {
    size: 112 + MAX_OBS * 16 + 32 + 16,
    align: 8,
    first_seen_ns: 0,
    last_seen_ns: 8,
    packets: 16,
    bytes: 32,
    req_first_ns: 48,
    reply_first_ns: 56,
    echo_req_ns: 64,
    rtt_ns: 72,
    requests: 80,
    replies: 84,
    rst: 88,
    tcp_flags: 96,
    initiator: 98,
    rr_kind: 99,
    flags: 100,
    owner: 101,
    _pad0: 103,
    echo_seq: 104,
    _pad1: 106,
    obs: 112,
    tunnel: 112 + MAX_OBS * 16,
    mtu: 112 + MAX_OBS * 16 + 32,
});
// `state` is an aligned u64 for the programs' compare-and-swap.
assert_layout!(FlowSlot { size: 272, align: 8, key: 0, state: 40, stats: 48 });

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn both_directions_share_one_key() {
        let a = ipv4_mapped([10, 16, 0, 2]);
        let b = ipv4_mapped([10, 16, 0, 3]);
        let (k1, s1) = FlowKey::canonical(a, b, 40000, 80, 6);
        let (k2, s2) = FlowKey::canonical(b, a, 80, 40000, 6);
        assert_eq!(k1, k2);
        assert_ne!(s1, s2);
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = ipv4_mapped([127, 0, 0, 1]);
        let (k1, s1) = FlowKey::canonical(a, a, 5000, 80, 17);
        let (k2, s2) = FlowKey::canonical(a, a, 80, 5000, 17);
        assert_eq!(k1, k2);
        assert_ne!(s1, s2);
        assert_eq!(k1.port_a, 80);
    }

    #[test]
    fn words_round_trip() {
        let o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(words_to_bytes(ipv6_words(o)), o);
        let m = words_to_bytes(ipv4_mapped([10, 1, 2, 3]));
        assert_eq!(&m[10..], &[0xff, 0xff, 10, 1, 2, 3]);
    }
}
