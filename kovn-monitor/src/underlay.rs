//! The underlay NICs' own state (`--underlay-iface`): up, carrier and addresses, from the
//! same netlink events that follow the pod veths. A node whose underlay NIC is down, has no
//! carrier or lost its address reaches no other node through the tunnel; the detector names
//! that as the cause (`underlay_down`) instead of one finding per failing pod pair.
//!
//! Bounds: one entry per `--underlay-iface` name (the flags' count), each with the addresses
//! the kernel lists on that link (`MAX_ADDRESSES`, the rest ignored).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use time::OffsetDateTime;

use crate::interfaces::Link;
use crate::model::{UnderlayLink, UnderlayState};

/// Addresses kept per underlay NIC (a NIC has a handful; a hostile number is not kept).
const MAX_ADDRESSES: usize = 64;

#[derive(Debug)]
struct Nic {
    /// The current ifindex (None while the interface does not exist).
    index: Option<u32>,
    up: bool,
    carrier: bool,
    addresses: BTreeSet<IpAddr>,
    /// It had an address while watched: losing all of them is then a fault. (A NIC whose
    /// node address is on a bridge above it never has one, and that is how it is built.)
    had_address: bool,
    state: UnderlayState,
    since: OffsetDateTime,
}

/// Every underlay NIC's state, by name.
#[derive(Debug, Default)]
pub struct Underlay {
    nics: BTreeMap<String, Nic>,
}

impl Underlay {
    /// Watches these NICs (the `--underlay-iface` names); until netlink lists them they are
    /// `missing`.
    pub fn new(names: &[String], now: OffsetDateTime) -> Self {
        let nics = names
            .iter()
            .map(|n| {
                let nic = Nic {
                    index: None,
                    up: false,
                    carrier: false,
                    addresses: BTreeSet::new(),
                    had_address: false,
                    state: UnderlayState::Missing,
                    since: now,
                };
                (n.clone(), nic)
            })
            .collect();
        Self { nics }
    }

    /// Whether any underlay NIC is watched.
    pub fn is_empty(&self) -> bool {
        self.nics.is_empty()
    }

    /// A link is present or changed (RTM_NEWLINK or a dump).
    pub fn on_link(&mut self, link: &Link, now: OffsetDateTime) {
        // A watched ifindex renamed away from an underlay name: that NIC is gone.
        for (_, nic) in
            self.nics.iter_mut().filter(|(n, nic)| nic.index == Some(link.index) && **n != link.name)
        {
            nic.index = None;
            nic.addresses.clear();
        }
        if let Some(nic) = self.nics.get_mut(&link.name) {
            if nic.index != Some(link.index) {
                // A new interface under the name: its addresses come with the events (or the
                // dump that follows a relist).
                nic.addresses.clear();
            }
            nic.index = Some(link.index);
            nic.up = link.up;
            nic.carrier = link.carrier;
        }
        self.settle(now);
    }

    /// RTM_DELLINK.
    pub fn on_gone(&mut self, index: u32, now: OffsetDateTime) {
        for nic in self.nics.values_mut().filter(|n| n.index == Some(index)) {
            nic.index = None;
            nic.addresses.clear();
        }
        self.settle(now);
    }

    /// A full link list: NICs not in it are gone (their RTM_DELLINK lost in an overflow).
    pub fn on_listed(&mut self, present: &[u32], now: OffsetDateTime) {
        for nic in self.nics.values_mut() {
            if nic.index.is_some_and(|i| !present.contains(&i)) {
                nic.index = None;
                nic.addresses.clear();
            }
        }
        self.settle(now);
    }

    /// RTM_NEWADDR / RTM_DELADDR.
    pub fn on_address(&mut self, index: u32, addr: IpAddr, present: bool, now: OffsetDateTime) {
        for nic in self.nics.values_mut().filter(|n| n.index == Some(index)) {
            if !present {
                nic.addresses.remove(&addr);
            } else if nic.addresses.len() < MAX_ADDRESSES {
                nic.addresses.insert(addr);
            }
        }
        self.settle(now);
    }

    /// A full address dump: every NIC's addresses are exactly these.
    pub fn on_addresses(&mut self, all: &[(u32, IpAddr)], now: OffsetDateTime) {
        for nic in self.nics.values_mut() {
            nic.addresses = all
                .iter()
                .filter(|(i, _)| Some(*i) == nic.index)
                .map(|(_, a)| *a)
                .take(MAX_ADDRESSES)
                .collect();
        }
        self.settle(now);
    }

    /// Every NIC's state after a change; `since` moves only when the state does.
    fn settle(&mut self, now: OffsetDateTime) {
        for (name, nic) in self.nics.iter_mut() {
            nic.had_address |= nic.addresses.iter().any(|a| usable(*a));
            let state = if nic.index.is_none() {
                UnderlayState::Missing
            } else if !nic.up {
                UnderlayState::Down
            } else if !nic.carrier {
                UnderlayState::NoCarrier
            } else if nic.had_address && !nic.addresses.iter().any(|a| usable(*a)) {
                UnderlayState::NoAddress
            } else {
                UnderlayState::Up
            };
            if state != nic.state {
                log::warn!("underlay NIC {name}: {} (was {})", state.as_str(), nic.state.as_str());
                nic.state = state;
                nic.since = now;
            }
        }
    }

    /// The published view, one per NIC, by name.
    pub fn links(&self) -> Vec<UnderlayLink> {
        self.nics
            .iter()
            .map(|(name, n)| UnderlayLink {
                interface: name.clone(),
                state: n.state,
                up: n.up,
                carrier: n.carrier,
                addresses: n.addresses.iter().copied().collect(),
                since: n.since,
            })
            .collect()
    }

    /// Every address of the underlay NICs (the node's tunnel endpoints).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.nics.values().flat_map(|n| n.addresses.iter().copied()).collect()
    }
}

/// An address that can carry the tunnel: not link-local (IPv6 `fe80::/10` comes and goes
/// with the link and is never a node address).
fn usable(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).expect("a time")
    }

    fn link(index: u32, name: &str, up: bool, carrier: bool) -> Link {
        Link { index, name: name.into(), mtu: 1500, peer_nsid: None, up, carrier }
    }

    fn state(u: &Underlay) -> (UnderlayState, OffsetDateTime) {
        let l = &u.links()[0];
        (l.state, l.since)
    }

    #[test]
    fn link_flags_and_addresses_make_the_state() {
        let mut u = Underlay::new(&["eth0".into()], at(0));
        assert_eq!(state(&u), (UnderlayState::Missing, at(0)), "not listed yet");
        u.on_link(&link(2, "eth0", true, true), at(1));
        // No address yet: the node address may be on a bridge above the NIC, which is fine.
        assert_eq!(state(&u), (UnderlayState::Up, at(1)));
        u.on_addresses(&[(2, "172.31.0.2".parse().unwrap()), (3, "10.0.0.1".parse().unwrap())], at(2));
        assert_eq!(u.addresses(), vec!["172.31.0.2".parse::<IpAddr>().unwrap()], "only eth0's");
        u.on_link(&link(2, "eth0", false, false), at(3));
        assert_eq!(state(&u), (UnderlayState::Down, at(3)), "admin down wins over no carrier");
        u.on_link(&link(2, "eth0", true, false), at(4));
        assert_eq!(state(&u), (UnderlayState::NoCarrier, at(4)));
        u.on_link(&link(2, "eth0", true, true), at(5));
        assert_eq!(state(&u), (UnderlayState::Up, at(5)));
        // Losing its address after having had one is a fault; a link-local one does not count.
        u.on_address(2, "fe80::1".parse().unwrap(), true, at(6));
        u.on_address(2, "172.31.0.2".parse().unwrap(), false, at(7));
        assert_eq!(state(&u), (UnderlayState::NoAddress, at(7)));
        u.on_link(&link(2, "eth0", true, true), at(8));
        assert_eq!(state(&u), (UnderlayState::NoAddress, at(7)), "since moves only with the state");
        u.on_address(2, "172.31.0.2".parse().unwrap(), true, at(9));
        assert_eq!(state(&u), (UnderlayState::Up, at(9)));
        // Gone, by event or by a list without it; back under a new index.
        u.on_gone(2, at(10));
        assert_eq!(state(&u), (UnderlayState::Missing, at(10)));
        u.on_link(&link(7, "eth0", true, true), at(11));
        assert_eq!(state(&u), (UnderlayState::NoAddress, at(11)), "it had an address before");
        u.on_listed(&[1, 3], at(12));
        assert_eq!(state(&u), (UnderlayState::Missing, at(12)));
        // Other links' events change nothing; a renamed underlay NIC is gone.
        let mut u = Underlay::new(&["eth0".into()], at(0));
        u.on_link(&link(2, "eth0", true, true), at(1));
        u.on_link(&link(5, "veth9", false, false), at(2));
        assert_eq!(state(&u), (UnderlayState::Up, at(1)));
        u.on_link(&link(2, "eth0-old", true, true), at(3));
        assert_eq!(state(&u), (UnderlayState::Missing, at(3)));
    }

    #[test]
    fn addresses_are_bounded() {
        let mut u = Underlay::new(&["eth0".into()], at(0));
        u.on_link(&link(2, "eth0", true, true), at(1));
        for i in 0..200u32 {
            u.on_address(2, IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), true, at(2));
        }
        assert_eq!(u.links()[0].addresses.len(), MAX_ADDRESSES);
    }
}
