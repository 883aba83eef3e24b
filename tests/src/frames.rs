//! Hand-built frames for BPF_PROG_TEST_RUN: well-formed ones for every parse path and
//! deliberately broken ones (bad IHL, short headers, extension-header chains).
//! Checksums are not filled in: the classifier does not verify them, and the kernel's test
//! runner does not either.

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_8021Q: u16 = 0x8100;
pub const ETH_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet header with `tags` VLAN tags (each: TPID, TCI) before `ethertype`.
pub fn eth(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// IPv4 header (`opt_words` 32-bit words of NOP options) + payload. `frag` is the raw
/// flags/fragment-offset field.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, opt_words: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let ihl = 5 + opt_words;
    let total = u16::from(ihl) * 4 + payload.len() as u16;
    let mut h = vec![0x40 | ihl, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4)); // NOP options
    h.extend_from_slice(payload);
    h
}

/// IPv6 header with `next` as the first next-header value, followed by `rest` (extension
/// headers and the transport header, already chained by the caller).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(rest);
    h
}

/// A generic 8-octet IPv6 option header (hop-by-hop, routing, destination): next + PadN.
pub fn ipv6_opt_hdr(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// IPv6 fragment header; `offset` in 8-octet units, `more` the M flag.
pub fn ipv6_frag_hdr(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1]);
    h
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// SCTP common header + one chunk header of `chunk_type`.
pub fn sctp(sport: u16, dport: u16, chunk_type: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    h.extend_from_slice(&[chunk_type, 0, 0, 20]);
    h.extend_from_slice(&[0; 16]);
    h
}

/// ICMP or ICMPv6 echo: `ty` 8/0 (ICMP) or 128/129 (ICMPv6).
pub fn icmp_echo(ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&[0xab; 16]);
    h
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub const A4: [u8; 4] = [10, 16, 0, 2];
pub const B4: [u8; 4] = [10, 16, 0, 3];
pub const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

/// An Ethernet + IPv4 + TCP frame.
pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    cat(&[&eth(&[], ETH_IPV4), &ipv4(src, dst, 6, 0, 0, &tcp(sport, dport, flags, &[]))])
}

/// A Geneve header (RFC 8926) with `opt_words` 4-byte words of options, carrying an Ethernet
/// frame. OVN puts one 8-byte option (class 0x0102) in every packet.
pub fn geneve(vni: u32, opt_words: u8, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![opt_words & 0x3f, 0];
    h.extend_from_slice(&0x6558u16.to_be_bytes());
    h.extend_from_slice(&vni.to_be_bytes()[1..]);
    h.push(0);
    for i in 0..opt_words {
        // option class 0x0102, type 0x80, length 1 word, then data
        if i % 2 == 0 {
            h.extend_from_slice(&[0x01, 0x02, 0x80, 0x01]);
        } else {
            h.extend_from_slice(&[0, 0, 0, 7]);
        }
    }
    h.extend_from_slice(inner);
    h
}

/// A VXLAN header (RFC 7348) carrying an Ethernet frame.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut h = vec![0x08, 0, 0, 0];
    h.extend_from_slice(&vni.to_be_bytes()[1..]);
    h.push(0);
    h.extend_from_slice(inner);
    h
}

pub const NODE1: [u8; 4] = [172, 31, 250, 11];
pub const NODE2: [u8; 4] = [172, 31, 250, 12];

/// Outer Ethernet + IPv4 + UDP to `dport` around `payload` (a tunnel header and inner frame).
pub fn outer4(src: [u8; 4], dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    cat(&[&eth(&[], ETH_IPV4), &ipv4(src, dst, 17, 0, 0, &udp(49152, dport, payload))])
}
