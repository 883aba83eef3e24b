//! Which interfaces to watch, and following them as they come and go (rtnetlink).
//!
//! Kube-OVN creates a pod's host-side veth as `<first 12 hex of the sandbox id>_h` and deletes
//! it with the pod, so the set of interfaces changes all the time; a monitor that only attaches
//! at start-up would miss every pod created after it.

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use rtnetlink::{MulticastGroup, new_multicast_connection};
use tokio::sync::mpsc;

/// What an interface is to kovn; decides which programs are attached and how its flows count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfaceKind {
    /// A pod's host-side veth (`*_h`).
    Pod,
    /// Any other interface named with `--iface`.
    Host,
    /// The node's NIC carrying the overlay (`--underlay-iface`): Geneve/VXLAN is opened.
    Underlay,
    /// A metadata-mode tunnel device of OVS's kernel datapath (`genev_sys_6081`,
    /// `vxlan_sys_4789`; `--tunnel-iface`): inner frames, remote node and VNI from the tunnel key.
    Tunnel,
}

impl From<IfaceKind> for crate::model::IfaceKind {
    fn from(k: IfaceKind) -> Self {
        match k {
            IfaceKind::Pod => Self::Pod,
            IfaceKind::Host => Self::Host,
            IfaceKind::Underlay => Self::Underlay,
            IfaceKind::Tunnel => Self::Tunnel,
        }
    }
}

impl IfaceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Host => "host",
            Self::Underlay => "underlay",
            Self::Tunnel => "tunnel",
        }
    }
}

/// The rules that pick interfaces: name patterns for pod veths plus explicit names.
#[derive(Clone, Debug)]
pub struct Selector {
    pod_patterns: Vec<glob::Pattern>,
    explicit: Vec<String>,
    underlay: Vec<String>,
    tunnel: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("invalid interface pattern {pattern:?}: {source}")]
    Pattern { pattern: String, source: glob::PatternError },
    #[error("invalid interface name {0:?} (1 to 15 characters, no '/', ':' or whitespace)")]
    Name(String),
}

/// Linux interface names: at most IFNAMSIZ-1 = 15 bytes, no '/', no whitespace, not "." or "..".
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl Selector {
    pub fn new(
        pod_patterns: &[String],
        explicit: &[String],
        underlay: &[String],
        tunnel: &[String],
    ) -> Result<Self, SelectorError> {
        let pod_patterns = pod_patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|source| SelectorError::Pattern { pattern: p.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        if let Some(bad) = explicit.iter().chain(underlay).chain(tunnel).find(|n| !valid_ifname(n)) {
            return Err(SelectorError::Name(bad.clone()));
        }
        Ok(Self {
            pod_patterns,
            explicit: explicit.to_vec(),
            underlay: underlay.to_vec(),
            tunnel: tunnel.to_vec(),
        })
    }

    /// The kind of an interface if kovn should watch it. Explicit names win over patterns only
    /// when they do not also look like pod veths (then they are pods).
    pub fn classify(&self, name: &str) -> Option<IfaceKind> {
        if self.underlay.iter().any(|n| n == name) {
            Some(IfaceKind::Underlay)
        } else if self.tunnel.iter().any(|n| n == name) {
            Some(IfaceKind::Tunnel)
        } else if self.pod_patterns.iter().any(|p| p.matches(name)) {
            Some(IfaceKind::Pod)
        } else if self.explicit.iter().any(|n| n == name) {
            Some(IfaceKind::Host)
        } else {
            None
        }
    }

    /// Interfaces named exactly (`--iface`, `--underlay-iface`): they must exist at start.
    /// Tunnel devices need not: OVS creates them with the first tunnel port, Kube-OVN when the
    /// second node joins.
    pub fn explicit(&self) -> impl Iterator<Item = &String> {
        self.explicit.iter().chain(&self.underlay)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// `IFLA_LINK_NETNSID`: the nsid of the namespace a veth's peer is in, when not ours (a
    /// pod veth's: the pod's network namespace, see `crate::netns`).
    pub peer_nsid: Option<i32>,
    /// Administratively up (`IFF_UP` in the RTM_NEWLINK header).
    pub up: bool,
    /// Carrier (`IFF_LOWER_UP`): a cable, or a veth whose peer is up.
    pub carrier: bool,
}

#[derive(Debug)]
pub enum LinkEvent {
    /// A link exists (from a dump or RTM_NEWLINK, which also reports changes).
    Present(Link),
    /// RTM_DELLINK: the link is gone (deleted or moved to another namespace).
    Gone(u32),
    /// A full dump ended: these are every link there is now (after the `Present` of each).
    /// Anything else the receiver holds is gone, its RTM_DELLINK possibly lost in an overflow.
    Listed(Vec<u32>),
    /// RTM_NEWADDR / RTM_DELADDR: an address added to or removed from a link.
    Address { index: u32, addr: std::net::IpAddr, present: bool },
    /// A full address dump (after `Listed`): every (link, address) there is now.
    Addresses(Vec<(u32, std::net::IpAddr)>),
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mtu = 0;
    let mut peer_nsid = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkNetNsId(id) => peer_nsid = Some(*id),
            _ => {}
        }
    }
    Some(Link {
        index: msg.header.index,
        name: name?,
        mtu,
        peer_nsid,
        up: msg.header.flags.contains(LinkFlags::Up),
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
    })
}

/// The address of an RTM_NEWADDR/RTM_DELADDR: `IFA_LOCAL` (the interface's own address on
/// point-to-point links), else `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<(u32, std::net::IpAddr)> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some((msg.header.index, *a)),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    Some((msg.header.index, address?))
}

/// How often the link list is dumped again although no overflow was reported (an overflow
/// the socket did not report, a bug anywhere on the way): `kovn-monitor run` uses 5 minutes.
pub const RELIST_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Subscribes to link and address events first, then dumps the current links and addresses,
/// so no link that appears in between is missed (a duplicate `Present` is harmless: attaching
/// is idempotent). Address events are few (a node's addresses rarely change); the daemon keeps
/// them for the underlay NICs only.
/// The subscription's socket buffer can overflow when links come and go faster than they are
/// read (the kernel then drops events and reports ENOBUFS, an `Overrun`): the links are dumped
/// again then, and every `relist_every` in any case; each dump ends with [`LinkEvent::Listed`].
/// Runs until the receiver is dropped.
pub async fn watch(tx: mpsc::Sender<LinkEvent>, relist_every: std::time::Duration) -> std::io::Result<()> {
    let (conn, handle, mut messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    tokio::spawn(conn);
    let mut relist = tokio::time::interval(relist_every);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relist.reset();
    let mut overruns = 0u64;
    if !dump(&handle, &tx).await? {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            m = messages.next() => match m {
                Some((msg, _)) => match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                        link_of(&m).map(LinkEvent::Present)
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                        Some(LinkEvent::Gone(m.header.index))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                        address_of(&m).map(|(index, addr)| LinkEvent::Address { index, addr, present: true })
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                        address_of(&m).map(|(index, addr)| LinkEvent::Address { index, addr, present: false })
                    }
                    NetlinkPayload::Overrun(_) => {
                        overruns += 1;
                        log::warn!(
                            "link events were lost (netlink buffer overflow #{overruns}): listing the links again"
                        );
                        if !dump(&handle, &tx).await? {
                            return Ok(());
                        }
                        relist.reset();
                        None
                    }
                    _ => None,
                },
                None => return Err(std::io::Error::other("netlink link subscription ended")),
            },
            _ = relist.tick() => {
                if !dump(&handle, &tx).await? {
                    return Ok(());
                }
                None
            }
        };
        if let Some(e) = event
            && tx.send(e).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Dumps every link as `Present`, then `Listed`, then every address as `Addresses`. False
/// when the receiver is gone.
async fn dump(handle: &rtnetlink::Handle, tx: &mpsc::Sender<LinkEvent>) -> std::io::Result<bool> {
    let mut links = handle.link().get().execute();
    let mut seen = Vec::new();
    loop {
        match links.try_next().await {
            Ok(Some(msg)) => {
                if let Some(link) = link_of(&msg) {
                    seen.push(link.index);
                    if tx.send(LinkEvent::Present(link)).await.is_err() {
                        return Ok(false);
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return Err(std::io::Error::other(format!("link dump failed: {e}"))),
        }
    }
    if tx.send(LinkEvent::Listed(seen)).await.is_err() {
        return Ok(false);
    }
    let mut addresses = handle.address().get().execute();
    let mut all = Vec::new();
    loop {
        match addresses.try_next().await {
            Ok(Some(msg)) => all.extend(address_of(&msg)),
            Ok(None) => break,
            Err(e) => return Err(std::io::Error::other(format!("address dump failed: {e}"))),
        }
    }
    Ok(tx.send(LinkEvent::Addresses(all)).await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel() -> Selector {
        Selector::new(&["*_h".into()], &["eth0".into()], &["ens3".into()], &["genev_sys_6081".into()])
            .expect("valid selector")
    }

    #[test]
    fn kube_ovn_veths_are_pods() {
        assert_eq!(sel().classify("a1b2c3d4e5f6_h"), Some(IfaceKind::Pod));
        assert_eq!(sel().classify("eth0"), Some(IfaceKind::Host));
        assert_eq!(sel().classify("ens3"), Some(IfaceKind::Underlay));
        assert_eq!(sel().classify("genev_sys_6081"), Some(IfaceKind::Tunnel));
        assert_eq!(sel().classify("lo"), None);
        assert_eq!(sel().classify("a1b2c3d4e5f6_c"), None);
    }

    #[test]
    fn bad_names_and_patterns_are_rejected() {
        assert!(matches!(Selector::new(&["[".into()], &[], &[], &[]), Err(SelectorError::Pattern { .. })));
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", ".."] {
            assert!(
                matches!(Selector::new(&[], &[bad.into()], &[], &[]), Err(SelectorError::Name(_)))
                    && matches!(Selector::new(&[], &[], &[bad.into()], &[]), Err(SelectorError::Name(_)))
                    && matches!(Selector::new(&[], &[], &[], &[bad.into()]), Err(SelectorError::Name(_))),
                "{bad:?} should be rejected"
            );
        }
    }
}
