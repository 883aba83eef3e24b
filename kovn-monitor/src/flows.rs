//! The userspace flow table: kernel records turned into initiator-oriented flows with a
//! request/reply state, kept while active, expired when idle.
//!
//! Size: the kernel-record → `Flow` conversion and the table that caches its results belong
//! together (the cache's freshness rules follow what the conversion reads); about 40% of it is
//! tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::inventory::{Inventory, TunnelPeer};
pub use crate::model::flow::{Flow, FlowAlert, FlowInterface, FlowMtu};
pub use crate::model::{
    AlertKind, Direction as HookDirection, FlowDirection, FlowState, IfaceKind, Protocol, Scenario,
};
use kovn_ebpf_common::{
    DIR_FWD, DIR_REV, FLOW_F_FRAGMENT, FLOW_F_INITIATOR_GUESSED, FlowKey, FlowStats, HOOK_EGRESS,
    HOOK_KIND_SHIFT, KIND_HOST, KIND_POD, KIND_TUNNEL, KIND_UNDERLAY, RR_ECHO, RR_NONE, RR_SCTP, RR_TCP,
    RR_UDP, SIDE_A, TUN_DEVICE, TUN_GENEVE, TUN_VXLAN, TunnelInfo, words_to_bytes,
};

/// The tunnel leg the kernel saw. `tunnel_dev` is the name of the tunnel device the flow
/// crossed, which names the encapsulation of a leg learnt from a tunnel key.
fn tunnel_of(t: &TunnelInfo, tunnel_dev: Option<&str>) -> Option<TunnelPeer> {
    let encap = match t.kind {
        TUN_GENEVE => Some("geneve"),
        TUN_VXLAN => Some("vxlan"),
        TUN_DEVICE => tunnel_dev.and_then(encap_of_device),
        _ => return None,
    };
    Some(TunnelPeer {
        remote_node: None,
        remote_ip: Some(ip_of(t.remote)),
        encap: encap.map(Into::into),
        vni: Some(t.vni),
        // The tunnel device sees the inner frame only: outer sizes come from the underlay NIC.
        outer_max_bytes: (t.kind != TUN_DEVICE).then_some(t.outer_max_len),
        outer_packets: (t.kind != TUN_DEVICE).then_some(t.packets),
    })
}

/// OVS's kernel datapath names its metadata-mode tunnel devices `genev_sys_<port>`,
/// `vxlan_sys_<port>` (and `stt_sys_<port>`).
pub fn encap_of_device(name: &str) -> Option<&'static str> {
    if name.starts_with("genev") {
        Some("geneve")
    } else if name.starts_with("vxlan") {
        Some("vxlan")
    } else if name.starts_with("stt") {
        Some("stt")
    } else {
        None
    }
}

/// The offset between CLOCK_REALTIME and CLOCK_MONOTONIC (what `bpf_ktime_get_ns` counts).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_mono_ns: i128,
    mono_now_ns: u64,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self { realtime_minus_mono_ns: real - mono, mono_now_ns: mono as u64 }
    }

    /// For tests: a fixed clock.
    pub fn fixed(mono_now_ns: u64, realtime_minus_mono_ns: i128) -> Self {
        Self { realtime_minus_mono_ns, mono_now_ns }
    }

    pub fn mono_now_ns(&self) -> u64 {
        self.mono_now_ns
    }

    /// The wall-clock time of a kernel timestamp (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub fn time(&self, mono_ns: u64) -> time::OffsetDateTime {
        let ns = i128::from(mono_ns) + self.realtime_minus_mono_ns;
        time::OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// The wall-clock time of this reading of the clocks.
    pub fn wall_now(&self) -> time::OffsetDateTime {
        self.time(self.mono_now_ns)
    }

    /// [`Clock::time`] as the wire spells it.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        crate::model::rfc3339(self.time(mono_ns))
    }
}

/// Names of interfaces by index, remembered after they go so old flows keep their names.
pub type IfaceNames = HashMap<u32, String>;

pub fn flow_id(key: &FlowKey) -> String {
    // FNV-1a 64 over the key's fields: stable across restarts and nodes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for b in words_to_bytes(key.addr_a).into_iter().chain(words_to_bytes(key.addr_b)) {
        eat(b);
    }
    for b in key.port_a.to_be_bytes().into_iter().chain(key.port_b.to_be_bytes()) {
        eat(b);
    }
    eat(key.proto);
    format!("{h:016x}")
}

pub fn ip_of(words: [u32; 4]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(words_to_bytes(words));
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn tcp_flags_str(f: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES.iter().enumerate().filter(|(i, _)| f & (1 << i) != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
}

const TCP_FIN: u8 = 0x01;

/// Requests that got no answer: retransmitted SYNs and lost echoes count; a SYN refused with
/// an RST was answered (by a refusal).
pub fn requests_unanswered(s: &FlowStats) -> u32 {
    match s.rr_kind {
        RR_UDP => {
            if s.replies == 0 {
                s.requests
            } else {
                0
            }
        }
        RR_TCP | RR_SCTP if s.replies == 0 && s.rst[DIR_REV] > 0 => s.requests.saturating_sub(1),
        RR_TCP | RR_SCTP | RR_ECHO => s.requests.saturating_sub(s.replies),
        _ => 0,
    }
}

pub fn state(s: &FlowStats) -> FlowState {
    if s.rst[DIR_FWD] > 0 || s.rst[DIR_REV] > 0 {
        FlowState::Reset
    } else if s.rr_kind == RR_TCP
        && s.tcp_flags[DIR_FWD] & TCP_FIN != 0
        && s.tcp_flags[DIR_REV] & TCP_FIN != 0
    {
        FlowState::Closed
    } else if s.rr_kind != RR_NONE && s.requests > 0 {
        if s.replies > 0 { FlowState::Answered } else { FlowState::Unanswered }
    } else if s.packets[DIR_REV] > 0 {
        FlowState::Answered
    } else {
        FlowState::Oneway
    }
}

fn hook_kind(hook: u8) -> IfaceKind {
    match hook >> HOOK_KIND_SHIFT {
        KIND_POD => IfaceKind::Pod,
        KIND_TUNNEL => IfaceKind::Tunnel,
        KIND_UNDERLAY => IfaceKind::Underlay,
        KIND_HOST => IfaceKind::Host,
        _ => IfaceKind::Unknown,
    }
}

impl Flow {
    pub fn from_kernel(key: &FlowKey, s: &FlowStats, clock: &Clock, names: &IfaceNames) -> Self {
        let (src, dst, sport, dport) = if s.initiator == SIDE_A {
            (key.addr_a, key.addr_b, key.port_a, key.port_b)
        } else {
            (key.addr_b, key.addr_a, key.port_b, key.port_a)
        };
        let interfaces = s
            .obs
            .iter()
            .filter(|o| o.ifindex != 0)
            .map(|o| FlowInterface {
                name: names.get(&o.ifindex).cloned().unwrap_or_else(|| format!("if{}", o.ifindex)),
                ifindex: o.ifindex,
                direction: if o.hook & 1 == HOOK_EGRESS {
                    HookDirection::Egress
                } else {
                    HookDirection::Ingress
                },
                kind: hook_kind(o.hook),
                flow_direction: if usize::from(o.dir) == DIR_FWD {
                    FlowDirection::Fwd
                } else {
                    FlowDirection::Rev
                },
                packets: o.packets,
            })
            .collect::<Vec<FlowInterface>>();
        let tunnel_dev = interfaces.iter().find(|i| i.kind == IfaceKind::Tunnel).map(|i| i.name.as_str());
        let tunnel = tunnel_of(&s.tunnel, tunnel_dev);
        Flow {
            id: flow_id(key),
            src_ip: ip_of(src),
            dst_ip: ip_of(dst),
            src_port: sport,
            dst_port: dport,
            protocol: Protocol::from_number(key.proto),
            ip_proto: key.proto,
            packets_fwd: s.packets[DIR_FWD],
            bytes_fwd: s.bytes[DIR_FWD],
            packets_rev: s.packets[DIR_REV],
            bytes_rev: s.bytes[DIR_REV],
            first_seen: clock.time(s.first_seen_ns),
            first_seen_mono_ns: s.first_seen_ns,
            last_seen: clock.time(s.last_seen_ns),
            state: state(s),
            rtt_us: (s.rtt_ns > 0).then(|| s.rtt_ns.div_ceil(1000)),
            requests: s.requests,
            replies: s.replies,
            requests_unanswered: requests_unanswered(s),
            rst_fwd: s.rst[DIR_FWD],
            rst_rev: s.rst[DIR_REV],
            tcp_flags_fwd: tcp_flags_str(s.tcp_flags[DIR_FWD]),
            tcp_flags_rev: tcp_flags_str(s.tcp_flags[DIR_REV]),
            initiator_guessed: s.flags & FLOW_F_INITIATOR_GUESSED != 0,
            fragment: s.flags & FLOW_F_FRAGMENT != 0,
            interfaces,
            scenario: Scenario::Unknown,
            src: None,
            dst: None,
            tunnel,
            mtu: (s.mtu.oversized_packets > 0 || s.mtu.too_big_msgs > 0).then(|| FlowMtu {
                oversized_packets: s.mtu.oversized_packets,
                oversized_max_bytes: s.mtu.oversized_max_len,
                too_big_messages: s.mtu.too_big_msgs,
                reported_mtu: (s.mtu.too_big_msgs > 0).then_some(s.mtu.reported_mtu),
            }),
            alert: None,
            drops: Vec::new(),
        }
    }

    /// Names both ends and the scenario from the inventory.
    pub fn annotate(&mut self, inv: &Inventory) {
        let src = inv.endpoint(self.src_ip, self.src_port, self.ip_proto);
        let dst = inv.endpoint(self.dst_ip, self.dst_port, self.ip_proto);
        self.scenario = inv.scenario(&src, &dst);
        // What the kernel saw on the wire (remote endpoint, VNI, outer sizes) wins; the inventory
        // names the node behind the endpoint, or stands in when no tunnel hook saw the flow.
        let expected = match self.scenario {
            Scenario::PodToPodCrossNode => inv.tunnel_peer(&src, &dst),
            Scenario::PodToService => inv.service_tunnel_peer(self.dst_ip, self.dst_port, self.ip_proto),
            _ => None,
        };
        self.tunnel = match (self.tunnel.take(), expected) {
            (Some(mut seen), expected) => {
                seen.remote_node = seen
                    .remote_ip
                    .and_then(|ip| inv.node_of_encap_ip(ip))
                    .or_else(|| expected.and_then(|e| e.remote_node));
                Some(seen)
            }
            (None, expected) => expected,
        };
        self.src = Some(src);
        self.dst = Some(dst);
    }
}

struct Entry {
    stats: FlowStats,
    /// The kernel entry was removed (idle); kept here until the retention time passes.
    expired: bool,
    /// The flow as last built from `stats` and annotated, with when it was built: reused
    /// while neither the kernel's record, nor the names of its own interfaces, nor the
    /// inventory's answers changed (most of a busy table is idle or expired flows).
    built: Option<(Arc<Flow>, Generations)>,
}

/// When a flow was built: the table's name epoch and the inventory's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Generations {
    names: u64,
    inventory: u64,
}

/// The kernel records as userspace keeps them: one entry per 5-tuple, merged from each read
/// of the kernel map, with the flow built from it cached (see `Entry::built`). Bounded by the
/// kernel table's capacity plus the flows expired within `retention`.
pub struct FlowTable {
    entries: foldhash::HashMap<FlowKey, Entry>,
    names: IfaceNames,
    /// Bumped when an interface's name changes (built flows carry the names).
    names_epoch: u64,
    /// The epoch at which each interface's name last changed: a flow seen on it and built
    /// before is built again. Pod veths come and go all day; one new veth must not rebuild
    /// every flow of the node.
    name_changed: HashMap<u32, u64>,
    /// Interfaces that are gone: their names are kept while a flow of the table was seen on
    /// them, then forgotten (`prune`), so the names stay bounded by the live interfaces plus
    /// those of retained flows however many veths come and go.
    gone: std::collections::HashSet<u32>,
    /// A kernel entry idle this long is removed from the map (its flow is over).
    pub idle_timeout: Duration,
    /// An expired flow stays visible in the API this long after its last packet.
    pub retention: Duration,
}

impl FlowTable {
    pub fn new(idle_timeout: Duration, retention: Duration) -> Self {
        Self {
            entries: foldhash::HashMap::default(),
            names: IfaceNames::new(),
            names_epoch: 0,
            name_changed: HashMap::new(),
            gone: std::collections::HashSet::new(),
            idle_timeout,
            retention,
        }
    }

    pub fn set_iface_name(&mut self, ifindex: u32, name: &str) {
        // An index can come back (a new link): it is live again.
        self.gone.remove(&ifindex);
        if self.names.get(&ifindex).map(String::as_str) != Some(name) {
            self.names.insert(ifindex, name.to_string());
            self.names_epoch += 1;
            self.name_changed.insert(ifindex, self.names_epoch);
        }
    }

    /// The interface is gone: its name is forgotten once no flow of the table was seen on it.
    pub fn iface_gone(&mut self, ifindex: u32) {
        if self.names.contains_key(&ifindex) {
            self.gone.insert(ifindex);
        }
    }

    /// Interface names known (live interfaces, and gone ones that flows still name).
    pub fn names_len(&self) -> usize {
        self.names.len()
    }

    /// Which side of the key opened the flow (`SIDE_A`/`SIDE_B`), if the table has it.
    pub fn initiator_of(&self, key: &FlowKey) -> Option<u8> {
        self.entries.get(key).map(|e| e.stats.initiator)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Merges a read of the kernel map. Returns the keys idle past `idle_timeout`, which the
    /// caller removes from the kernel.
    pub fn merge(&mut self, kernel: Vec<(FlowKey, FlowStats)>, now_mono_ns: u64) -> Vec<FlowKey> {
        let idle_ns = self.idle_timeout.as_nanos() as u64;
        let mut idle = Vec::new();
        for (key, stats) in kernel {
            let is_idle = now_mono_ns.saturating_sub(stats.last_seen_ns) > idle_ns;
            if is_idle {
                idle.push(key);
            }
            match self.entries.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    if e.stats != stats {
                        e.stats = stats;
                        e.built = None;
                    }
                    e.expired = is_idle;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Entry { stats, expired: is_idle, built: None });
                }
            }
        }
        idle
    }

    /// Drops expired flows older than the retention time. Flows still in the kernel are kept.
    pub fn prune(&mut self, now_mono_ns: u64) -> usize {
        let keep_ns = self.retention.as_nanos() as u64;
        let before = self.entries.len();
        self.entries.retain(|_, e| !e.expired || now_mono_ns.saturating_sub(e.stats.last_seen_ns) <= keep_ns);
        if !self.gone.is_empty() {
            let seen: std::collections::HashSet<u32> =
                self.entries.values().flat_map(|e| e.stats.obs.iter().map(|o| o.ifindex)).collect();
            let (names, changed) = (&mut self.names, &mut self.name_changed);
            self.gone.retain(|i| {
                let keep = seen.contains(i);
                if !keep {
                    names.remove(i);
                    changed.remove(i);
                }
                keep
            });
        }
        // Room for the churn, and a flood's memory given back.
        crate::headroom::keep_headroom(&mut self.entries);
        before - self.entries.len()
    }

    /// Every flow, annotated with endpoints and scenario, most recently active first. Flows
    /// whose record, interface names and inventory did not change since the last call are the
    /// same `Arc` as then (no work, no allocation).
    pub fn snapshot(&mut self, clock: &Clock, inv: &Inventory) -> Vec<Arc<Flow>> {
        let now = Generations { names: self.names_epoch, inventory: inv.generation() };
        let name_changed = &self.name_changed;
        let fresh = |e: &Entry, at: &Generations| {
            at.inventory == now.inventory
                && (at.names == now.names
                    || e.stats.obs.iter().all(|o| {
                        o.ifindex == 0
                            || name_changed.get(&o.ifindex).is_none_or(|&changed| changed <= at.names)
                    }))
        };
        let mut order: Vec<(u64, &FlowKey, &mut Entry)> =
            self.entries.iter_mut().map(|(k, e)| (e.stats.last_seen_ns, k, e)).collect();
        // By the kernel's timestamp, newest first; the key breaks ties (a stable order).
        order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        order
            .into_iter()
            .map(|(_, k, e)| match &e.built {
                Some((flow, at)) if fresh(e, at) => flow.clone(),
                _ => {
                    let mut f = Flow::from_kernel(k, &e.stats, clock, &self.names);
                    f.annotate(inv);
                    let f = Arc::new(f);
                    e.built = Some((f.clone(), now));
                    f
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use kovn_ebpf_common::{ObsPoint, ipv4_mapped};

    use super::*;

    fn key(sport: u16, dport: u16, proto: u8) -> (FlowKey, u8) {
        FlowKey::canonical(ipv4_mapped([10, 16, 0, 2]), ipv4_mapped([10, 16, 0, 3]), sport, dport, proto)
    }

    fn tcp_stats(initiator: u8) -> FlowStats {
        FlowStats {
            rr_kind: RR_TCP,
            initiator,
            first_seen_ns: 1_000,
            last_seen_ns: 2_000,
            ..Default::default()
        }
    }

    #[test]
    fn flow_is_oriented_from_the_initiator() {
        // The client 10.16.0.3:40000 talks to 10.16.0.2:80: the canonical key puts .2 first.
        let (k, client_side) =
            FlowKey::canonical(ipv4_mapped([10, 16, 0, 3]), ipv4_mapped([10, 16, 0, 2]), 40000, 80, 6);
        assert_eq!(client_side, 1, "the client is side B of this key");
        let mut s = tcp_stats(client_side);
        s.packets = [3, 2];
        s.bytes = [180, 120];
        let f = Flow::from_kernel(&k, &s, &Clock::fixed(0, 0), &IfaceNames::new());
        assert_eq!(f.src_ip.to_string(), "10.16.0.3");
        assert_eq!(f.dst_ip.to_string(), "10.16.0.2");
        assert_eq!((f.src_port, f.dst_port), (40000, 80));
        assert_eq!((f.packets_fwd, f.packets_rev, f.bytes_fwd, f.bytes_rev), (3, 2, 180, 120));
        assert_eq!(f.protocol, Protocol::Tcp);
    }

    #[test]
    fn states_follow_request_and_reply() {
        let mut s = tcp_stats(0);
        s.requests = 3; // two retransmissions
        assert_eq!(state(&s), FlowState::Unanswered);
        assert_eq!(requests_unanswered(&s), 3);
        s.replies = 1;
        assert_eq!(state(&s), FlowState::Answered);
        assert_eq!(requests_unanswered(&s), 2);
        s.tcp_flags = [0x11, 0x11];
        assert_eq!(state(&s), FlowState::Closed);
        s.rst[DIR_REV] = 1;
        assert_eq!(state(&s), FlowState::Reset);

        let mut refused = tcp_stats(0);
        refused.requests = 1;
        refused.rst[DIR_REV] = 1;
        assert_eq!(state(&refused), FlowState::Reset);
        assert_eq!(requests_unanswered(&refused), 0, "a refusal is an answer");

        let udp = FlowStats { rr_kind: RR_UDP, requests: 4, ..Default::default() };
        assert_eq!((state(&udp), requests_unanswered(&udp)), (FlowState::Unanswered, 4));
        let other = FlowStats { rr_kind: RR_NONE, packets: [5, 0], ..Default::default() };
        assert_eq!(state(&other), FlowState::Oneway);
    }

    #[test]
    fn times_and_interfaces_are_rendered() {
        let (k, side) = key(1234, 53, 17);
        let mut s = FlowStats { rr_kind: RR_UDP, initiator: side, rtt_ns: 1_500, ..Default::default() };
        s.first_seen_ns = 5_000_000_000;
        s.last_seen_ns = 6_000_000_000;
        s.obs[0] = ObsPoint { ifindex: 7, hook: 0, dir: 0, _pad: [0; 2], packets: 4 };
        s.obs[1] = ObsPoint { ifindex: 9, hook: 1 | (KIND_HOST << 1), dir: 1, _pad: [0; 2], packets: 2 };
        let mut names = IfaceNames::new();
        names.insert(7, "abcdef012345_h".into());
        // Monotonic 5 s == 2026-01-01T00:00:05Z.
        let clock = Clock::fixed(0, 1_767_225_600i128 * 1_000_000_000);
        let f = Flow::from_kernel(&k, &s, &clock, &names);
        assert_eq!(crate::model::rfc3339(f.first_seen), "2026-01-01T00:00:05Z");
        assert_eq!(crate::model::rfc3339(f.last_seen), "2026-01-01T00:00:06Z");
        assert_eq!(f.rtt_us, Some(2));
        assert_eq!(f.interfaces.len(), 2);
        assert_eq!(f.interfaces[0].name, "abcdef012345_h");
        assert_eq!(
            (f.interfaces[0].direction, f.interfaces[0].kind),
            (HookDirection::Ingress, IfaceKind::Pod)
        );
        assert_eq!(f.interfaces[1].name, "if9");
        assert_eq!(
            (f.interfaces[1].direction, f.interfaces[1].flow_direction),
            (HookDirection::Egress, FlowDirection::Rev)
        );
    }

    #[test]
    fn idle_flows_expire_then_are_dropped_after_retention() {
        let mut t = FlowTable::new(Duration::from_secs(10), Duration::from_secs(30));
        let (k, side) = key(1, 2, 6);
        let s = FlowStats { last_seen_ns: 1_000_000_000, initiator: side, ..Default::default() };
        assert!(t.merge(vec![(k, s)], 5_000_000_000).is_empty());
        assert_eq!(t.merge(vec![(k, s)], 12_000_000_000), vec![k]);
        assert_eq!(t.prune(20_000_000_000), 0, "kept during retention");
        assert_eq!(t.prune(32_000_000_000), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn snapshot_is_most_recent_first() {
        let mut t = FlowTable::new(Duration::from_secs(60), Duration::from_secs(60));
        let flows: Vec<(FlowKey, FlowStats)> = [(1u16, 900_000_000u64), (2, 1_000_000_000), (3, 950_000_001)]
            .into_iter()
            .map(|(port, last)| (key(port, 80, 6).0, FlowStats { last_seen_ns: last, ..Default::default() }))
            .collect();
        t.merge(flows, 1_000_000_000);
        let inv = Inventory::new("node1");
        let order: Vec<u16> = t.snapshot(&Clock::fixed(0, 0), &inv).iter().map(|f| f.src_port).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    /// A flow whose record, interface names and inventory did not change is not built again
    /// (the same allocation); any of the three changing builds it anew.
    #[test]
    fn unchanged_flows_are_reused_and_changed_ones_rebuilt() {
        let mut t = FlowTable::new(Duration::from_secs(60), Duration::from_secs(60));
        let (ka, side_a) = key(1, 80, 6);
        let (kb, side_b) = key(2, 80, 6);
        let rec = |side, packets: u64| FlowStats {
            initiator: side,
            last_seen_ns: 1_000_000_000 + packets,
            packets: [packets, 0],
            ..Default::default()
        };
        let clock = Clock::fixed(0, 0);
        let mut inv = Inventory::new("node1");
        t.merge(vec![(ka, rec(side_a, 1)), (kb, rec(side_b, 1))], 1_000_000_000);
        let first = t.snapshot(&clock, &inv);
        let by_port = |v: &[Arc<Flow>], port: u16| {
            v.iter()
                .find(|f| f.src_port == port)
                .cloned()
                .unwrap_or_else(|| panic!("no flow from port {port}"))
        };

        // b gets a packet; a does not.
        t.merge(vec![(ka, rec(side_a, 1)), (kb, rec(side_b, 2))], 1_000_000_000);
        let second = t.snapshot(&clock, &inv);
        assert!(Arc::ptr_eq(&by_port(&first, 1), &by_port(&second, 1)), "a unchanged: reused");
        assert!(!Arc::ptr_eq(&by_port(&first, 2), &by_port(&second, 2)), "b changed: rebuilt");
        assert_eq!(by_port(&second, 2).packets_fwd, 2);

        // A new interface name: the flows seen on that interface are built again (they carry
        // its name), the others are not.
        let mut on_7 = rec(side_b, 2);
        on_7.obs[0] = ObsPoint { ifindex: 7, hook: 0, dir: 0, _pad: [0; 2], packets: 2 };
        t.merge(vec![(ka, rec(side_a, 1)), (kb, on_7)], 1_000_000_000);
        let before = t.snapshot(&clock, &inv);
        assert_eq!(by_port(&before, 2).interfaces[0].name, "if7");
        t.set_iface_name(7, "abcdef012345_h");
        let third = t.snapshot(&clock, &inv);
        assert!(Arc::ptr_eq(&by_port(&before, 1), &by_port(&third, 1)), "not on ifindex 7: reused");
        assert!(!Arc::ptr_eq(&by_port(&before, 2), &by_port(&third, 2)), "on ifindex 7: rebuilt");
        assert_eq!(by_port(&third, 2).interfaces[0].name, "abcdef012345_h");
        t.set_iface_name(7, "abcdef012345_h");
        let fourth = t.snapshot(&clock, &inv);
        assert!(Arc::ptr_eq(&by_port(&third, 2), &by_port(&fourth, 2)), "the same name again: reused");

        // The inventory learns a pod: flows are annotated again.
        let before = inv.generation();
        inv.apply_kube(std::iter::empty());
        assert_ne!(inv.generation(), before, "a change of the Kubernetes view bumps the generation");
        let fifth = t.snapshot(&clock, &inv);
        assert!(!Arc::ptr_eq(&by_port(&fourth, 1), &by_port(&fifth, 1)), "inventory changed: re-annotated");
    }

    /// Veths come and go all day: the names of gone ones are forgotten once no flow of the
    /// table was seen on them.
    #[test]
    fn names_of_gone_interfaces_are_forgotten_with_their_flows() {
        let mut t = FlowTable::new(Duration::from_secs(10), Duration::from_secs(30));
        for i in 100..200 {
            t.set_iface_name(i, &format!("{i:012x}_h"));
        }
        let (k, side) = key(1, 2, 6);
        let mut s = FlowStats { last_seen_ns: 1_000_000_000, initiator: side, ..Default::default() };
        s.obs[0] = ObsPoint { ifindex: 150, hook: 0, dir: 0, _pad: [0; 2], packets: 1 };
        t.merge(vec![(k, s)], 1_000_000_000);
        for i in 100..200 {
            t.iface_gone(i);
        }
        t.prune(2_000_000_000);
        assert_eq!(t.names_len(), 1, "only the name a flow was seen on is kept");
        let flows = t.snapshot(&Clock::fixed(0, 0), &Inventory::new("node1"));
        assert_eq!(flows[0].interfaces[0].name, "000000000096_h");
        // The flow expires and is pruned after retention: its interface's name goes with it.
        t.merge(vec![(k, s)], 12_000_000_000);
        t.prune(32_000_000_000);
        assert!(t.is_empty());
        assert_eq!(t.names_len(), 0, "every gone interface forgotten");
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let (a, _) = key(1, 2, 6);
        let (b, _) = key(1, 3, 6);
        assert_eq!(flow_id(&a), flow_id(&a));
        assert_ne!(flow_id(&a), flow_id(&b));
        assert_eq!(flow_id(&a).len(), 16);
    }

    #[test]
    fn ipv6_addresses_stay_ipv6() {
        let w = kovn_ebpf_common::ipv6_words([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(ip_of(w).to_string(), "fd00::1");
        assert_eq!(ip_of(ipv4_mapped([1, 2, 3, 4])).to_string(), "1.2.3.4");
    }
}
