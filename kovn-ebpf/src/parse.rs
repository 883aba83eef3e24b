//! Packet parsing with direct packet access: Ethernet, up to two VLAN tags (802.1Q/802.1ad),
//! IPv4 (IHL honoured, fragments), IPv6 (extension headers walked, bounded), TCP, UDP, SCTP,
//! ICMP, ICMPv6. Every read is bounds-checked against `data_end`; a short or malformed packet
//! yields a counter index (`CNT_*`) instead of a flow, and the packet still passes.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_TUNINFO_IPV6, bpf_tunnel_key},
    helpers::bpf_skb_get_tunnel_key,
    programs::TcContext,
};

/// `-EPROTO` from a helper.
const EPROTO: i64 = -71;
use kovn_ebpf_common::{
    CNT_NON_IP, CNT_PARSE_BAD_IHL, CNT_PARSE_IPV6_EXT, CNT_PARSE_TRUNCATED, CNT_PULL_FAILED, CNT_TUNNEL_BAD,
    TUN_DEVICE, TUN_GENEVE, TUN_VXLAN, ipv4_mapped, ipv6_words,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked to reach the transport header (RFC 8200 §4.1 order).
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
/// How many extension headers we follow before giving up (a chain longer than this is either
/// malicious or a loop; counted as `CNT_PARSE_IPV6_EXT`).
const MAX_IPV6_EXT: usize = 6;

/// Bytes we want in the linear area to parse headers without helper calls: a pod packet's
/// headers, and on the underlay the outer headers, a Geneve header with options and the inner
/// headers.
pub const PULL_LEN: usize = 128;
pub const PULL_LEN_UNDERLAY: usize = 256;
/// No header we parse starts past this offset; also bounds offsets for the verifier. Geneve
/// options alone may take 252 bytes.
const MAX_HDR_OFF: usize = 480;

/// IANA ports of the tunnels OVN uses (Kube-OVN: Geneve by default, VXLAN optional).
const GENEVE_PORT: u16 = 6081;
const VXLAN_PORT: u16 = 4789;
/// Geneve protocol type of an Ethernet payload (Transparent Ethernet Bridging).
const ETH_P_TEB: u16 = 0x6558;

/// TCP flag bits (byte 13 of the TCP header).
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What a packet means for request/reply pairing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    None,
    TcpSyn,
    TcpSynAck,
    TcpRst,
    EchoRequest,
    EchoReply,
    SctpInit,
    SctpInitAck,
    /// ICMP fragmentation needed / ICMPv6 packet too big: `too_big` names the original flow.
    TooBig,
}

/// The original packet quoted in an ICMP "too big" message, and the MTU it reports.
#[derive(Clone, Copy)]
pub struct TooBig {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub mtu: u32,
}

pub struct Packet {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub fragment: bool,
    pub signal: Signal,
    pub echo_seq: u16,
    /// Frame length minus the link-layer header: what the flow's byte counters add up.
    pub l3_len: u32,
    /// Offset of the transport header (0 for a non-first fragment).
    pub l4_off: usize,
    /// The packet may not be fragmented on the way: IPv4 with DF, or IPv6.
    pub no_frag: bool,
    /// IP + transport header bytes (TCP with options, UDP): with `gso_size`, a segment's size.
    pub hdrs_len: u32,
    pub too_big: Option<TooBig>,
}

impl Packet {
    /// Nothing parsed yet, `l3_len` bytes from the IP header on.
    #[inline(always)]
    const fn empty(l3_len: u32) -> Self {
        Self {
            src: [0; 4],
            dst: [0; 4],
            sport: 0,
            dport: 0,
            proto: 0,
            tcp_flags: 0,
            fragment: false,
            signal: Signal::None,
            echo_seq: 0,
            l3_len,
            l4_off: 0,
            no_frag: false,
            hdrs_len: 0,
            too_big: None,
        }
    }
}

/// The outer side of an encapsulated packet seen on the underlay.
pub struct Tunnel {
    /// The other node: outer destination when sending, outer source when receiving.
    pub remote: [u32; 4],
    pub vni: u32,
    pub outer_len: u32,
    pub kind: u8,
}

/// The per-CPU work area (a map value, see `WORK` in main.rs): the parsed packet, the tunnel
/// leg, a new flow's record before insertion, and a slot for [`opaque`].
///
/// Why a map value and not the stack: the verifier tracks every value on the stack and in
/// registers, so each way through the parser (VLAN tags, IPv6 extension headers, transport
/// protocols, ICMP quotes) reaches the flow update with a state of its own, and older verifiers
/// (Linux 6.1's prunes far less than 6.18's) walk the whole update once per parse path, past the
/// 1M-instruction limit. Map memory is not tracked: what the flow update reads back is an
/// unknown scalar, so the states of all parse paths are equal where the parser returns and the
/// update is verified once, not once per path.
pub struct Work {
    pub pkt: Packet,
    pub tunnel: Tunnel,
    pub fresh: kovn_ebpf_common::FlowStats,
    /// The slot [`opaque`] goes through.
    pub tmp: u64,
}

/// `v`, forgotten by the verifier (written to and read back from map memory): an offset whose
/// range depends on the path taken (how many VLAN tags or extension headers) becomes one
/// unknown value that the next bound check limits again, so the paths converge. A store and a
/// load to the same L1 line per call.
#[inline(always)]
pub fn opaque(slot: &mut u64, v: usize) -> usize {
    // SAFETY: a plain u64 inside this CPU's map value.
    unsafe {
        core::ptr::write_volatile(slot, v as u64);
        core::ptr::read_volatile(slot) as usize
    }
}

/// The `N` header bytes at `off`, bounds-checked. Every field of a header is read through the
/// one reference this returns: reading through separately computed pointers lets LLVM
/// re-derive the address after the check, which the verifier then rejects.
#[inline(always)]
fn hdr<const N: usize>(ctx: &TcContext, off: usize) -> Result<&[u8; N], u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_HDR_OFF || start + off + N > end {
        return Err(CNT_PARSE_TRUNCATED);
    }
    // SAFETY: [start + off, start + off + N) lies inside the packet's linear data.
    Ok(unsafe { &*((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    u16::from_be_bytes([b0, b1])
}

/// Makes sure the first headers are in the linear area. Non-linear heads are rare at tc
/// (GRO and the local stack keep headers linear), so this helper call is almost never made.
#[inline(always)]
pub fn ensure_linear(ctx: &TcContext, pull_len: usize) {
    let len = ctx.len() as usize;
    let linear = ctx.data_end() - ctx.data();
    if linear < len && linear < pull_len {
        let want = if len < pull_len { len } else { pull_len };
        if ctx.pull_data(want as u32).is_err() {
            crate::count(CNT_PULL_FAILED);
        }
    }
}

/// Parses the frame whose Ethernet header starts at `l2` into `w.pkt`. Returns 0, or a
/// counter index (`CNT_*`) + 1 for a packet that is not recorded.
///
/// A BPF-to-BPF call (`inline(never)`): the verifier walks the parser's paths here once per call
/// site, and what it leaves behind (in `w`, map memory) is untracked, so the caller continues
/// from one state whatever path the parser took.
#[inline(never)]
pub fn parse_frame(ctx: &TcContext, l2: usize, w: &mut Work) -> u32 {
    match parse_at(ctx, l2, w) {
        Ok(()) => 0,
        Err(c) => c + 1,
    }
}

#[inline(always)]
fn parse_at(ctx: &TcContext, l2: usize, w: &mut Work) -> Result<(), u32> {
    let mut off = l2 + EthHdr::LEN;
    let eth = hdr::<14>(ctx, l2)?;
    let mut proto = be16(eth[12], eth[13]);
    // Up to two tags (QinQ). A hardware-accelerated tag is in skb->vlan_tci, not in the data.
    let mut tags = 0;
    while tags < 2 && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        let tag = hdr::<4>(ctx, off)?;
        proto = be16(tag[2], tag[3]);
        off += 4;
        tags += 1;
    }
    // Zero, one or two tags: one state from here on.
    let off = opaque(&mut w.tmp, off);
    if off > MAX_HDR_OFF {
        return Err(CNT_PARSE_TRUNCATED);
    }
    let l3_len = (ctx.len() as usize).saturating_sub(off) as u32;
    w.pkt = Packet::empty(l3_len);
    let l4 = match proto {
        ETH_P_IP => parse_ipv4(ctx, off, &mut w.pkt)?,
        ETH_P_IPV6 => parse_ipv6(ctx, off, &mut w.pkt, &mut w.tmp)?,
        _ => return Err(CNT_NON_IP),
    };
    if let Some(l4) = l4 {
        // IHL or extension headers: one state again.
        let l4 = opaque(&mut w.tmp, l4);
        if l4 > MAX_HDR_OFF || l4 < off {
            return Err(CNT_PARSE_TRUNCATED);
        }
        w.pkt.l4_off = l4;
        w.pkt.hdrs_len = (l4 - off) as u32;
        parse_l4(ctx, l4, &mut w.pkt, &mut w.tmp)?;
    }
    Ok(())
}

/// Parses a packet on the underlay NIC into `w`. Geneve (UDP 6081, options honoured) and VXLAN
/// (UDP 4789) are opened: `w.pkt` is the inner flow, `w.tunnel` the outer side, and the return
/// value's bit [`UNDERLAY_TUNNEL`] is set. Any other packet (node to node, to the API server,
/// ...) is a flow of its own. Otherwise as [`parse_frame`].
#[inline(never)]
pub fn parse_underlay(ctx: &TcContext, egress: bool, w: &mut Work) -> u32 {
    let rc = parse_frame(ctx, 0, w);
    if rc != 0 {
        return rc;
    }
    let outer = &w.pkt;
    if outer.proto != IPPROTO_UDP
        || outer.fragment
        || (outer.dport != GENEVE_PORT && outer.dport != VXLAN_PORT)
    {
        return 0;
    }
    let payload = outer.l4_off + UdpHdr::LEN;
    let decoded = if outer.dport == GENEVE_PORT {
        // RFC 8926: Ver(2) OptLen(6, in 4-byte words) | O C Rsvd | Protocol Type | VNI(24) Rsvd
        match hdr::<8>(ctx, payload) {
            Ok(g) if g[0] >> 6 == 0 && be16(g[2], g[3]) == ETH_P_TEB => {
                let opts = ((g[0] & 0x3f) as usize) * 4;
                Some((TUN_GENEVE, u32::from_be_bytes([0, g[4], g[5], g[6]]), payload + 8 + opts))
            }
            _ => None,
        }
    } else {
        // RFC 7348: Flags (I = 0x08) | Reserved(24) | VNI(24) | Reserved(8)
        match hdr::<8>(ctx, payload) {
            Ok(v) if v[0] & 0x08 != 0 => {
                Some((TUN_VXLAN, u32::from_be_bytes([0, v[4], v[5], v[6]]), payload + 8))
            }
            _ => None,
        }
    };
    let Some((kind, vni, inner_l2)) = decoded else {
        return CNT_TUNNEL_BAD + 1;
    };
    w.tunnel =
        Tunnel { remote: if egress { outer.dst } else { outer.src }, vni, outer_len: outer.l3_len, kind };
    // Where the inner frame starts depends on the outer path and the options: forgotten, then
    // bounded, so the inner parse is walked once.
    let inner_l2 = opaque(&mut w.tmp, inner_l2);
    if inner_l2 > MAX_HDR_OFF {
        return CNT_PARSE_TRUNCATED + 1;
    }
    // parse_frame counts the inner packet's own L3 length, as the pod veths do.
    match parse_frame(ctx, inner_l2, w) {
        0 => UNDERLAY_TUNNEL,
        rc => rc,
    }
}

/// Set in [`parse_underlay`]'s result when the packet was a tunnel's (no counter index has it).
pub const UNDERLAY_TUNNEL: u32 = 1 << 16;

/// 1 when `struct bpf_tunnel_key` has `local_ipv4/6` (Linux >= 5.19), set by the loader. A
/// read-only global: the verifier sees the constant, so each kernel gets the one helper size it
/// accepts and no per-packet retry.
#[unsafe(no_mangle)]
static TUNNEL_KEY_LOCAL: u8 = 1;

/// The tunnel leg of a packet on a metadata-mode tunnel device (OVS's `genev_sys_6081` /
/// `vxlan_sys_4789`, a `vxlan external` device): the packet itself is the inner frame, and the
/// remote endpoint and VNI are in the skb's tunnel metadata (set by OVS's `set_tunnel` or an
/// lwtunnel route when sending, by the device when receiving). None when the skb carries no
/// tunnel metadata (e.g. ARP generated by the device itself).
#[inline(always)]
pub fn device_tunnel(ctx: &TcContext, egress: bool) -> Option<Tunnel> {
    // filter.c bpf_skb_get_tunnel_key: `remote_*` is the tunnel info's *source*, `local_*` its
    // *destination*. Received packets carry (src = remote node, dst = us); sent ones carry
    // (dst = remote node), so a sent packet's remote node is in `local_*`, which older kernels
    // do not have: there the device records received legs only.
    // SAFETY: reading a read-only global.
    let local = unsafe { core::ptr::read_volatile(&TUNNEL_KEY_LOCAL) } != 0;
    if egress && !local {
        return None;
    }
    const FULL: u32 = size_of::<bpf_tunnel_key>() as u32;
    const OLD: u32 = core::mem::offset_of!(bpf_tunnel_key, __bindgen_anon_3) as u32;
    let size = if local { FULL } else { OLD };
    // SAFETY: an all-zero bpf_tunnel_key is valid (integers and unions of integers).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: `key` is a writable bpf_tunnel_key of at least `size` bytes.
    let get = |key: &mut bpf_tunnel_key, flags: u64| unsafe { bpf_skb_get_tunnel_key(skb, key, size, flags) };
    // IPv4 first: one call for IPv4 tunnels and for skbs without metadata (-EINVAL); only
    // -EPROTO (the tunnel's family is not the one asked) sends IPv6 tunnels to a second call.
    let mut v6 = false;
    let mut rc = get(&mut key, 0);
    if rc == EPROTO {
        v6 = true;
        rc = get(&mut key, BPF_F_TUNINFO_IPV6 as u64);
    }
    if rc != 0 {
        return None;
    }
    // SAFETY: the union members read are those of the family the kernel filled. IPv4 comes in
    // host order, IPv6 as the address bytes.
    let remote = unsafe {
        match (v6, egress) {
            (false, true) => ipv4_mapped(key.__bindgen_anon_3.local_ipv4.to_be_bytes()),
            (false, false) => ipv4_mapped(key.__bindgen_anon_1.remote_ipv4.to_be_bytes()),
            (true, true) => key.__bindgen_anon_3.local_ipv6,
            (true, false) => key.__bindgen_anon_1.remote_ipv6,
        }
    };
    Some(Tunnel { remote, vni: key.tunnel_id, outer_len: 0, kind: TUN_DEVICE })
}

/// Returns the transport header offset, or None for a non-first fragment (no ports in it).
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, pkt: &mut Packet) -> Result<Option<usize>, u32> {
    let ip = hdr::<{ Ipv4Hdr::LEN }>(ctx, off)?;
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(CNT_PARSE_BAD_IHL);
    }
    pkt.src = ipv4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    pkt.dst = ipv4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    pkt.proto = ip[9];
    pkt.no_frag = ip[6] & 0x40 != 0;
    if be16(ip[6], ip[7]) & 0x1fff != 0 {
        // A non-first fragment: no transport header, counted without ports.
        pkt.fragment = true;
        return Ok(None);
    }
    Ok(Some(off + ihl))
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, pkt: &mut Packet, tmp: &mut u64) -> Result<Option<usize>, u32> {
    let ip = hdr::<{ Ipv6Hdr::LEN }>(ctx, off)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    pkt.src = ipv6_words(src);
    pkt.dst = ipv6_words(dst);
    // Routers never fragment IPv6: anything too big for a hop is dropped (RFC 8200 §5).
    pkt.no_frag = true;
    let mut next = ip[6];
    let mut off = off + Ipv6Hdr::LEN;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext = hdr::<2>(ctx, off)?;
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let ext = hdr::<2>(ctx, off)?;
                next = ext[0];
                off += (ext[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let frag = hdr::<8>(ctx, off)?;
                next = frag[0];
                off += 8;
                if be16(frag[2], frag[3]) & 0xfff8 != 0 {
                    pkt.proto = next;
                    pkt.fragment = true;
                    return Ok(None);
                }
            }
            _ => {
                pkt.proto = next;
                return Ok(Some(off));
            }
        }
        // Each kind of header moves the offset differently: forgotten, then bounded, so the
        // walk has one state per step instead of one per sequence of header kinds.
        off = opaque(tmp, off);
        if off > MAX_HDR_OFF {
            return Err(CNT_PARSE_TRUNCATED);
        }
        i += 1;
    }
    Err(CNT_PARSE_IPV6_EXT)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, pkt: &mut Packet, tmp: &mut u64) -> Result<(), u32> {
    match pkt.proto {
        IPPROTO_TCP => {
            let tcp = hdr::<{ TcpHdr::LEN }>(ctx, off)?;
            pkt.sport = be16(tcp[0], tcp[1]);
            pkt.dport = be16(tcp[2], tcp[3]);
            let flags = tcp[13];
            pkt.tcp_flags = flags;
            pkt.hdrs_len += u32::from(tcp[12] >> 4) * 4;
            pkt.signal = if flags & TCP_RST != 0 {
                Signal::TcpRst
            } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
                Signal::TcpSyn
            } else if flags & TCP_SYN != 0 {
                Signal::TcpSynAck
            } else {
                Signal::None
            };
        }
        IPPROTO_UDP => {
            let udp = hdr::<{ UdpHdr::LEN }>(ctx, off)?;
            pkt.sport = be16(udp[0], udp[1]);
            pkt.dport = be16(udp[2], udp[3]);
            pkt.hdrs_len += UdpHdr::LEN as u32;
        }
        IPPROTO_SCTP => {
            // Common header (12 bytes) then the first chunk's type: INIT=1, INIT ACK=2
            // (RFC 9260).
            let sctp = hdr::<13>(ctx, off)?;
            pkt.sport = be16(sctp[0], sctp[1]);
            pkt.dport = be16(sctp[2], sctp[3]);
            pkt.signal = match sctp[12] {
                1 => Signal::SctpInit,
                2 => Signal::SctpInitAck,
                _ => Signal::None,
            };
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = hdr::<8>(ctx, off)?;
            let ty = icmp[0];
            let v4 = pkt.proto == IPPROTO_ICMP;
            // RFC 1191: type 3 code 4 carries the next-hop MTU in bytes 6-7; RFC 4443: type 2
            // carries it in bytes 4-7. Both quote the original IP header and 8 bytes after.
            if (v4 && ty == 3 && icmp[1] == 4) || (!v4 && ty == 2) {
                let mtu = if v4 {
                    u32::from(be16(icmp[6], icmp[7]))
                } else {
                    u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]])
                };
                pkt.too_big = quoted(ctx, off + 8, v4, mtu, tmp);
                if pkt.too_big.is_some() {
                    pkt.signal = Signal::TooBig;
                }
                return Ok(());
            }
            let (req, rep) = if v4 { (8, 0) } else { (128, 129) };
            if ty == req || ty == rep {
                let id = be16(icmp[4], icmp[5]);
                pkt.echo_seq = be16(icmp[6], icmp[7]);
                // The identifier stands in for the requester's port (see FlowKey).
                if ty == req {
                    pkt.sport = id;
                    pkt.signal = Signal::EchoRequest;
                } else {
                    pkt.dport = id;
                    pkt.signal = Signal::EchoReply;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The original packet an ICMP error quotes: its addresses and, for TCP/UDP/SCTP, its ports
/// (for an echo request, its identifier).
#[inline(always)]
fn quoted(ctx: &TcContext, off: usize, v4: bool, mtu: u32, tmp: &mut u64) -> Option<TooBig> {
    let mut inner = Packet::empty(0);
    let l4 = if v4 {
        parse_ipv4(ctx, off, &mut inner).ok()?
    } else {
        parse_ipv6(ctx, off, &mut inner, tmp).ok()?
    };
    if let Some(l4) = l4 {
        let l4 = opaque(tmp, l4);
        if matches!(inner.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
            let ports = hdr::<4>(ctx, l4).ok()?;
            inner.sport = be16(ports[0], ports[1]);
            inner.dport = be16(ports[2], ports[3]);
        } else if matches!(inner.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            // A quoted echo request (`ping -M do`, the seeds' MTU check): its identifier is the
            // flow's requester port, as for the echo itself (see FlowKey).
            let icmp = hdr::<6>(ctx, l4).ok()?;
            let req = if inner.proto == IPPROTO_ICMP { 8 } else { 128 };
            if icmp[0] == req {
                inner.sport = be16(icmp[4], icmp[5]);
            }
        }
    }
    Some(TooBig {
        src: inner.src,
        dst: inner.dst,
        sport: inner.sport,
        dport: inner.dport,
        proto: inner.proto,
        mtu,
    })
}

/// The GSO segment size of the skb (0 when not GSO). `__sk_buff.gso_size` exists since
/// Linux 5.7.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: the context pointer of a tc program is a valid __sk_buff.
    unsafe { (*skb).gso_size }
}

/// The interface the skb is on (for tc: the device whose hook runs the program).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    let skb = ctx.as_ptr() as *const __sk_buff;
    // SAFETY: the context pointer of a tc program is a valid __sk_buff.
    unsafe { (*skb).ifindex }
}
