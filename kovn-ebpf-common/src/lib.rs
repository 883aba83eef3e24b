//! Types shared by the kovn eBPF programs and the kovn-monitor daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so the kernel and userspace agree on
//! the layout byte for byte, and `no_std` so the eBPF crate can use it.
#![no_std]

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

/// Tunnel encapsulations kovn decodes.
pub const TUN_NONE: u8 = 0;
pub const TUN_GENEVE: u8 = 1;
pub const TUN_VXLAN: u8 = 2;
/// Learnt from the tunnel key on a metadata-mode tunnel device (`genev_sys_6081`,
/// `vxlan_sys_4789`): the encapsulation is the device's (userspace knows its link kind).
pub const TUN_DEVICE: u8 = 3;

/// The tunnel leg of a cross-node flow, learnt on the underlay NIC (outer headers) or on the
/// tunnel device (the tunnel key): which node is at the other end, on which VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelInfo {
    /// The other node's tunnel endpoint (outer destination when sending, outer source when
    /// receiving), in the same encoding as flow addresses.
    pub remote: [u32; 4],
    pub vni: u32,
    /// Largest outer packet seen (L3 length: outer IP header to the end).
    pub outer_max_len: u32,
    /// Outer packets of this flow seen on the underlay.
    pub packets: u32,
    /// `TUN_GENEVE`, `TUN_VXLAN` or `TUN_DEVICE`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

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

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 272 && core::mem::align_of::<FlowSlot>() == 8);
const _: () =
    assert!(core::mem::offset_of!(FlowSlot, state) == 40 && core::mem::offset_of!(FlowSlot, stats) == 48);

/// `PATH_MTU_MIN[0]`: the smallest path MTU of the watched interfaces (0: no check). Packets
/// not larger than it skip the per-interface lookup in `IFACE_MTU` (ifindex -> path MTU).
pub const PATH_MTU_MIN_IDX: u32 = 0;

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
/// Bound of the guarded pods (slots and overflow together), like [`DROP_POD_NETNS_MAX`].
pub const POD_GUARD_MAX: u32 = 4096;
/// Pod address -> host veth ifindex, for the new-flow budget at hooks that do not know the
/// pod by their interface (tunnel, underlay, the destination pod's veth).
pub const POD_ADDR_MAP: &str = "POD_ADDRS";
pub const POD_ADDR_MAX: u32 = POD_GUARD_MAX * POD_GUARD_ADDRS as u32;

const _: () = assert!(core::mem::size_of::<PodGuard>() == 16 + 16 * POD_GUARD_ADDRS + 24);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::ObsPoint {}
    unsafe impl aya::Pod for super::TunnelInfo {}
    unsafe impl aya::Pod for super::MtuInfo {}
    unsafe impl aya::Pod for super::FlowSlot {}
    unsafe impl aya::Pod for super::PodGuard {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<ObsPoint>(), 16);
        // 10 u64 (80) + 4 u32 (16) + 8 u8 + u16 + 6 pad (16) = 112, then the points
        assert_eq!(core::mem::size_of::<TunnelInfo>(), 32);
        assert_eq!(core::mem::size_of::<MtuInfo>(), 16);
        assert_eq!(core::mem::size_of::<FlowStats>(), 112 + MAX_OBS * 16 + 32 + 16);
    }

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

// ==== Drops with the kernel's reason (skb:kfree_skb) — owned by the drops feature ====
// Kernel side: kovn-ebpf/src/drops.rs; userspace: kovn-monitor/src/drops.rs.

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

#[cfg(feature = "user")]
mod drops_user {
    // SAFETY: plain-old-data, repr(C), no implicit padding (the flow key + 5 × u32; 3 × u64).
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::DropStats {}
    // SAFETY: plain-old-data, repr(C), 3 × u32.
    unsafe impl aya::Pod for super::PodNetnsSlot {}
}

const _: () = assert!(
    core::mem::size_of::<DropKey>() == core::mem::size_of::<FlowKey>() + 20
        && core::mem::size_of::<DropStats>() == 24
);
// ==== end of drops section ====
