//! Which backend OVN's load balancer chose for a connection, from OVS's own conntrack
//! (`ovs-appctl dpctl/dump-conntrack`, the datapath's table: the kernel's on the kernel
//! datapath, ovs-vswitchd's on the userspace one). OVN load-balances with `ct(nat(dst=...))`:
//! the entry's original direction is client → VIP, its reply direction backend → client. When
//! a service connection dies on the client's node before any packet towards the backend shows
//! on a kovn hook (an ACL on the DNATed packet, a flow-table drop after the load balancer),
//! this is the only place that knows the backend.

use std::net::IpAddr;

/// One side of a conntrack entry: addresses and ports (ICMP: the echo id as both ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A conntrack entry as `dpctl/dump-conntrack` prints it:
/// `tcp,orig=(src=A,dst=B,sport=P,dport=Q),reply=(src=C,dst=D,sport=R,dport=S),zone=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: String,
    pub orig: Tuple,
    pub reply: Tuple,
}

/// The tuple inside `key=(...)` of `line`.
fn tuple(line: &str, key: &str) -> Option<Tuple> {
    let start = line.find(&format!("{key}=("))? + key.len() + 2;
    let body = &line[start..start + line[start..].find(')')?];
    let (mut src, mut dst, mut sport, mut dport, mut id) = (None, None, None, None, None);
    for kv in body.split(',') {
        let (k, v) = kv.split_once('=')?;
        match k {
            "src" => src = v.parse().ok(),
            "dst" => dst = v.parse().ok(),
            "sport" => sport = v.parse().ok(),
            "dport" => dport = v.parse().ok(),
            "id" => id = v.parse().ok(),
            _ => {}
        }
    }
    Some(Tuple { src: src?, dst: dst?, sport: sport.or(id)?, dport: dport.or(id)? })
}

/// Parses one line of the dump; None for anything else (headers, malformed lines).
pub fn parse_entry(line: &str) -> Option<Entry> {
    let proto = line.split(',').next()?.trim();
    if proto.is_empty() || !proto.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(Entry { proto: proto.to_string(), orig: tuple(line, "orig")?, reply: tuple(line, "reply")? })
}

/// The backend (address, port) of the connection `client:sport -> vip:vport` of `proto`
/// (`tcp`, `udp`): the reply side's source of an entry whose original side is that connection
/// and whose reply does not come from the VIP (it was DNATed). Entries of the same connection
/// in other zones (OVN tracks it once per logical switch port) agree; the first is taken.
pub fn chosen_backend(
    dump: &str,
    proto: &str,
    client: IpAddr,
    sport: u16,
    vip: IpAddr,
    vport: u16,
) -> Option<(IpAddr, u16)> {
    dump.lines().filter_map(parse_entry).find_map(|e| {
        let o = e.orig;
        (e.proto == proto
            && o.src == client
            && o.sport == sport
            && o.dst == vip
            && o.dport == vport
            && e.reply.src != vip)
            .then_some((e.reply.src, e.reply.sport))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As OVS 3.1 prints it (`ovs-appctl dpctl/dump-conntrack`), userspace and kernel datapath.
    const DUMP: &str = "\
tcp,orig=(src=10.16.0.2,dst=10.96.0.11,sport=41021,dport=80),reply=(src=10.96.0.11,dst=10.16.0.2,sport=80,dport=41021),zone=5,mark=2,protoinfo=(state=SYN_SENT)
tcp,orig=(src=10.16.0.2,dst=10.96.0.11,sport=41021,dport=80),reply=(src=10.16.0.6,dst=10.16.0.2,sport=8080,dport=41021),zone=7,mark=2,labels=0x2,protoinfo=(state=SYN_SENT)
udp,orig=(src=10.16.0.3,dst=10.96.0.11,sport=5000,dport=53),reply=(src=10.16.0.7,dst=10.16.0.3,sport=5353,dport=5000),zone=7
icmp,orig=(src=10.16.0.2,dst=10.16.0.5,id=4203,type=8,code=0),reply=(src=10.16.0.5,dst=10.16.0.2,id=4203,type=0,code=0),zone=5
tcp,orig=(src=fd00::2,dst=fd00:96::11,sport=41022,dport=80),reply=(src=fd00::6,dst=fd00::2,sport=8080,dport=41022),zone=7
garbage line
tcp,orig=(src=10.16.0.2,dst=nonsense,sport=1,dport=2),reply=(src=10.16.0.6,dst=10.16.0.2,sport=8080,dport=1)
";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_dnat_entry_names_the_backend() {
        assert_eq!(
            chosen_backend(DUMP, "tcp", ip("10.16.0.2"), 41021, ip("10.96.0.11"), 80),
            Some((ip("10.16.0.6"), 8080)),
            "the zone without NAT is skipped"
        );
        assert_eq!(
            chosen_backend(DUMP, "udp", ip("10.16.0.3"), 5000, ip("10.96.0.11"), 53),
            Some((ip("10.16.0.7"), 5353))
        );
        assert_eq!(
            chosen_backend(DUMP, "tcp", ip("fd00::2"), 41022, ip("fd00:96::11"), 80),
            Some((ip("fd00::6"), 8080))
        );
        assert_eq!(
            chosen_backend(DUMP, "tcp", ip("10.16.0.2"), 41099, ip("10.96.0.11"), 80),
            None,
            "another port"
        );
        assert_eq!(
            chosen_backend(DUMP, "udp", ip("10.16.0.2"), 41021, ip("10.96.0.11"), 80),
            None,
            "another protocol"
        );
        assert_eq!(chosen_backend("", "tcp", ip("10.16.0.2"), 41021, ip("10.96.0.11"), 80), None);
    }

    #[test]
    fn entries_parse_and_bad_lines_do_not() {
        let lines: Vec<&str> = DUMP.lines().collect();
        let icmp = parse_entry(lines[3]).expect("icmp entry");
        assert_eq!((icmp.proto.as_str(), icmp.orig.sport, icmp.reply.dport), ("icmp", 4203, 4203));
        assert!(parse_entry(lines[5]).is_none());
        assert!(parse_entry(lines[6]).is_none(), "a bad address");
        for bad in [
            "",
            ",",
            "tcp,orig=(src=1.2.3.4",
            "tcp,orig=(),reply=()",
            "t c p,orig=(src=1.1.1.1,dst=1.1.1.1,sport=1,dport=1),reply=(src=1.1.1.1,dst=1.1.1.1,sport=1,dport=1)",
        ] {
            assert!(parse_entry(bad).is_none(), "{bad:?}");
        }
    }
}
