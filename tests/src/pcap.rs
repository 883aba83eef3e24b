//! Reading tcpdump's pcap files with a parser independent of kovn's (etherparse): the truth
//! the daemon's counts are compared with. The classic pcap container is read here directly:
//! a GSO frame on a veth is longer than the snap length, which pcap-file refuses.

use std::net::IpAddr;
use std::path::Path;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// One captured frame, reduced to what a flow comparison needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `tcp|udp|icmp|icmpv6|other`
    pub proto: &'static str,
    pub sport: u16,
    pub dport: u16,
    /// ICMP echo identifier and whether this is a request (for echo packets).
    pub echo: Option<(u16, bool)>,
    /// Original frame length on the wire (not the snap length).
    pub frame_len: u32,
    /// Length of the link-layer header (Ethernet + VLAN tags).
    pub l2_len: u32,
}

impl Packet {
    /// L3 length: kovn's byte definition.
    pub fn l3_len(&self) -> u64 {
        u64::from(self.frame_len - self.l2_len)
    }
}

/// The records of a classic pcap file (tcpdump -w): a 24-byte global header, then per packet a
/// 16-byte record header (ts_sec, ts_usec, incl_len, orig_len) and incl_len bytes. Each record
/// as (captured bytes, original length); Ethernet link type only.
pub fn records(path: &Path) -> Vec<(Vec<u8>, u32)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(data.len() >= 24, "{} is not a pcap file", path.display());
    let magic = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes"));
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => panic!("{}: bad pcap magic {magic:#x}", path.display()),
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = data[o..o + 4].try_into().expect("4 bytes");
        if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    assert_eq!(u32_at(20), 1, "{}: link type must be Ethernet", path.display());
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(off + 8) as usize;
        let orig = u32_at(off + 12);
        let start = off + 16;
        let end = (start + incl).min(data.len());
        out.push((data[start..end].to_vec(), orig));
        off = start + incl;
    }
    out
}

/// The packets of a pcap file (see [`records`]), parsed; non-IP frames are left out.
pub fn read(path: &Path) -> Vec<Packet> {
    records(path).iter().filter_map(|(frame, orig)| parse(frame, *orig)).collect()
}

fn parse(data: &[u8], orig_len: u32) -> Option<Packet> {
    let sliced = SlicedPacket::from_ethernet(data).ok()?;
    let (src, dst, l3_start): (IpAddr, IpAddr, usize) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
            v4.header().slice().as_ptr() as usize - data.as_ptr() as usize,
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.header().slice().as_ptr() as usize - data.as_ptr() as usize,
        ),
        _ => return None,
    };
    let (proto, sport, dport, echo) = match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => ("tcp", t.source_port(), t.destination_port(), None),
        Some(TransportSlice::Udp(u)) => ("udp", u.source_port(), u.destination_port(), None),
        Some(TransportSlice::Icmpv4(i)) => {
            use etherparse::Icmpv4Type::*;
            let echo = match i.icmp_type() {
                EchoRequest(e) => Some((e.id, true)),
                EchoReply(e) => Some((e.id, false)),
                _ => None,
            };
            ("icmp", 0, 0, echo)
        }
        Some(TransportSlice::Icmpv6(i)) => {
            use etherparse::Icmpv6Type::*;
            let echo = match i.icmp_type() {
                EchoRequest(e) => Some((e.id, true)),
                EchoReply(e) => Some((e.id, false)),
                _ => None,
            };
            ("icmpv6", 0, 0, echo)
        }
        _ => ("other", 0, 0, None),
    };
    Some(Packet { src, dst, proto, sport, dport, echo, frame_len: orig_len, l2_len: l3_start as u32 })
}

/// Packets and L3 bytes of one direction of a flow: `src:sport -> dst:dport`.
pub fn count(pkts: &[Packet], src: IpAddr, dst: IpAddr, proto: &str, sport: u16, dport: u16) -> (u64, u64) {
    pkts.iter()
        .filter(|p| p.src == src && p.dst == dst && p.proto == proto && p.sport == sport && p.dport == dport)
        .fold((0, 0), |(n, b), p| (n + 1, b + p.l3_len()))
}

/// Packets and L3 bytes of one direction of an echo session with identifier `id`.
pub fn count_echo(pkts: &[Packet], src: IpAddr, dst: IpAddr, id: u16, request: bool) -> (u64, u64) {
    pkts.iter()
        .filter(|p| p.src == src && p.dst == dst && p.echo == Some((id, request)))
        .fold((0, 0), |(n, b), p| (n + 1, b + p.l3_len()))
}
