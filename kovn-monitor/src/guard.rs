//! Pod guards, userspace side: the per-pod new-flow budget and source-address check the
//! programs apply (see `kovn_ebpf_common::PodGuard` and kovn-ebpf's `guard` module), kept in
//! step with this node's pods, and what they report: per-pod refused and spoofed counts, as
//! metrics and as `flow_flood` findings naming the pod.
//!
//! Bounds: at most [`POD_GUARD_MAX`] pods (4,096 slots plus an overflow hash map of the same
//! bound), [`POD_GUARD_ADDRS`] addresses each (more are logged and left out of the check);
//! the findings tracker holds one entry per guarded pod and drops resolved ones after the
//! retention time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
};
use kovn_ebpf_common::{
    POD_ADDR_MAP, POD_GUARD_ADDRS, POD_GUARD_MAX, POD_GUARD_OVERFLOW_MAP, POD_GUARD_SLOT_COUNT,
    POD_GUARD_SLOT_MAP, PodGuard, ipv4_mapped, ipv6_words,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::detection::{Alert, Evidence};
use crate::inventory::Endpoint;
use crate::inventory::EndpointKind;
use crate::model::{AlertKind, AlertState, Scenario};

/// The per-pod new-flow budget (`--pod-new-flow-rate`, `--pod-new-flow-burst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FlowBudget {
    /// New flows per second one pod may open (or receive from elsewhere); 0: no budget.
    pub per_sec: u32,
    /// New flows one pod may open at once before the rate applies.
    pub burst: u32,
}

impl FlowBudget {
    pub const OFF: Self = Self { per_sec: 0, burst: 0 };

    /// The default for a flow table: one pod alone can hold at most an eighth of the kernel
    /// table (rate × idle timeout + burst <= table / 8 + table / 64), so a flood from one pod
    /// leaves room for everybody else's flows.
    pub fn for_table(table_size: u32, idle_timeout: Duration) -> Self {
        let idle = idle_timeout.as_secs().max(1);
        let per_sec = (u64::from(table_size) / 8 / idle).clamp(1, u64::from(u32::MAX)) as u32;
        Self { per_sec, burst: (table_size / 64).clamp(16, 65_536) }
    }

    /// The programs' constants: (nanoseconds per new flow, how far ahead it may be spent).
    pub fn gcra_ns(&self) -> (u64, u64) {
        if self.per_sec == 0 {
            return (0, 0);
        }
        let cost = 1_000_000_000 / u64::from(self.per_sec);
        (cost.max(1), cost.max(1) * u64::from(self.burst.saturating_sub(1)))
    }
}

fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => ipv6_words(v6.octets()),
    }
}

/// Where a pod's guard lives: its slot, or the overflow map.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placed {
    addrs: Vec<IpAddr>,
    in_slot: bool,
}

/// The guards written to the kernel maps, by host veth ifindex.
#[derive(Debug, Default)]
pub struct GuardMaps {
    placed: BTreeMap<u32, Placed>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("eBPF map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: MapError },
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> GuardError {
    move |source| GuardError::Map { name, source }
}

/// One guarded pod's counts since its guard was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounts {
    pub ifindex: u32,
    pub refused: u64,
    pub spoofed: u64,
}

impl GuardMaps {
    pub fn len(&self) -> usize {
        self.placed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// Brings the kernel maps in line with `want` (host veth ifindex → the pod's addresses,
    /// empty when unknown). A pod's budget state and counters survive address changes; a pod
    /// beyond [`POD_GUARD_MAX`] is logged and left unguarded.
    pub fn sync(&mut self, ebpf: &mut Ebpf, want: &BTreeMap<u32, Vec<IpAddr>>) -> Result<(), GuardError> {
        let gone: Vec<u32> = self.placed.keys().filter(|i| !want.contains_key(i)).copied().collect();
        for ifindex in gone {
            self.remove(ebpf, ifindex)?;
        }
        for (&ifindex, addrs) in want {
            let mut addrs = addrs.clone();
            addrs.sort();
            addrs.dedup();
            if addrs.len() > POD_GUARD_ADDRS {
                log::warn!(
                    "ifindex {ifindex}: the pod has {} addresses; the spoofing check knows the first {POD_GUARD_ADDRS}",
                    addrs.len()
                );
                addrs.truncate(POD_GUARD_ADDRS);
            }
            match self.placed.get(&ifindex) {
                Some(p) if p.addrs == addrs => continue,
                Some(_) => self.readdress(ebpf, ifindex, &addrs)?,
                None if self.placed.len() >= POD_GUARD_MAX as usize => {
                    log::warn!(
                        "ifindex {ifindex}: {POD_GUARD_MAX} pods are guarded already (the bound): no new-flow budget or spoofing check for it"
                    );
                    continue;
                }
                None => self.add(ebpf, ifindex, &addrs)?,
            }
        }
        Ok(())
    }

    fn slots(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, PodGuard>, GuardError> {
        let map = ebpf.map_mut(POD_GUARD_SLOT_MAP).ok_or(GuardError::MissingMap(POD_GUARD_SLOT_MAP))?;
        Array::try_from(map).map_err(map_err(POD_GUARD_SLOT_MAP))
    }

    fn overflow(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, u32, PodGuard>, GuardError> {
        let map =
            ebpf.map_mut(POD_GUARD_OVERFLOW_MAP).ok_or(GuardError::MissingMap(POD_GUARD_OVERFLOW_MAP))?;
        BpfHashMap::try_from(map).map_err(map_err(POD_GUARD_OVERFLOW_MAP))
    }

    fn set_addrs(ebpf: &mut Ebpf, ifindex: u32, old: &[IpAddr], new: &[IpAddr]) -> Result<(), GuardError> {
        let map = ebpf.map_mut(POD_ADDR_MAP).ok_or(GuardError::MissingMap(POD_ADDR_MAP))?;
        let mut m: BpfHashMap<&mut MapData, [u32; 4], u32> =
            BpfHashMap::try_from(map).map_err(map_err(POD_ADDR_MAP))?;
        for ip in old.iter().filter(|ip| !new.contains(ip)) {
            let k = addr_words(*ip);
            // Only our own entry: another pod may have taken the address since.
            if m.get(&k, 0).is_ok_and(|i| i == ifindex) {
                m.remove(&k).map_err(map_err(POD_ADDR_MAP))?;
            }
        }
        for ip in new {
            m.insert(&addr_words(*ip), &ifindex, 0).map_err(map_err(POD_ADDR_MAP))?;
        }
        Ok(())
    }

    fn fill(g: &mut PodGuard, ifindex: u32, addrs: &[IpAddr]) {
        g.ifindex = ifindex;
        g.naddrs = addrs.len() as u32;
        g.addrs = [[0; 4]; POD_GUARD_ADDRS];
        for (slot, ip) in g.addrs.iter_mut().zip(addrs) {
            *slot = addr_words(*ip);
        }
    }

    fn add(&mut self, ebpf: &mut Ebpf, ifindex: u32, addrs: &[IpAddr]) -> Result<(), GuardError> {
        let idx = ifindex % POD_GUARD_SLOT_COUNT;
        let mut slots = Self::slots(ebpf)?;
        let mut head = slots.get(&idx, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        let in_slot = head.ifindex == 0;
        let mut g = PodGuard::default();
        Self::fill(&mut g, ifindex, addrs);
        if in_slot {
            g.overflow = head.overflow;
            slots.set(idx, &g, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        } else {
            // Into the hash map first, then the slot says there is more to look up.
            Self::overflow(ebpf)?.insert(&ifindex, &g, 0).map_err(map_err(POD_GUARD_OVERFLOW_MAP))?;
            head.overflow += 1;
            let mut slots = Self::slots(ebpf)?;
            // Re-read: only the owner's fields matter, the programs change tat/counters meanwhile.
            let mut cur = slots.get(&idx, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
            cur.overflow = head.overflow;
            slots.set(idx, &cur, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        }
        Self::set_addrs(ebpf, ifindex, &[], addrs)?;
        self.placed.insert(ifindex, Placed { addrs: addrs.to_vec(), in_slot });
        Ok(())
    }

    fn readdress(&mut self, ebpf: &mut Ebpf, ifindex: u32, addrs: &[IpAddr]) -> Result<(), GuardError> {
        let Some(p) = self.placed.get(&ifindex).cloned() else { return Ok(()) };
        if p.in_slot {
            let idx = ifindex % POD_GUARD_SLOT_COUNT;
            let mut slots = Self::slots(ebpf)?;
            let mut g = slots.get(&idx, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
            let overflow = g.overflow;
            Self::fill(&mut g, ifindex, addrs);
            g.overflow = overflow;
            slots.set(idx, &g, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        } else {
            let mut m = Self::overflow(ebpf)?;
            let mut g = m.get(&ifindex, 0).map_err(map_err(POD_GUARD_OVERFLOW_MAP))?;
            Self::fill(&mut g, ifindex, addrs);
            m.insert(&ifindex, &g, 0).map_err(map_err(POD_GUARD_OVERFLOW_MAP))?;
        }
        Self::set_addrs(ebpf, ifindex, &p.addrs, addrs)?;
        self.placed.insert(ifindex, Placed { addrs: addrs.to_vec(), in_slot: p.in_slot });
        Ok(())
    }

    fn remove(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Result<(), GuardError> {
        let Some(p) = self.placed.remove(&ifindex) else { return Ok(()) };
        let idx = ifindex % POD_GUARD_SLOT_COUNT;
        let mut slots = Self::slots(ebpf)?;
        let mut head = slots.get(&idx, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        if p.in_slot {
            // The slot keeps its overflow count: the others stay in the hash map.
            head = PodGuard { overflow: head.overflow, ..PodGuard::default() };
        } else {
            head.overflow = head.overflow.saturating_sub(1);
        }
        slots.set(idx, &head, 0).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        if !p.in_slot {
            match Self::overflow(ebpf)?.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(POD_GUARD_OVERFLOW_MAP)(e)),
            }
        }
        Self::set_addrs(ebpf, ifindex, &p.addrs, &[])
    }

    /// Every guarded pod's counts (one lookup each).
    pub fn read(&self, ebpf: &Ebpf) -> Result<Vec<GuardCounts>, GuardError> {
        let map = ebpf.map(POD_GUARD_SLOT_MAP).ok_or(GuardError::MissingMap(POD_GUARD_SLOT_MAP))?;
        let slots: Array<&MapData, PodGuard> = Array::try_from(map).map_err(map_err(POD_GUARD_SLOT_MAP))?;
        let map = ebpf.map(POD_GUARD_OVERFLOW_MAP).ok_or(GuardError::MissingMap(POD_GUARD_OVERFLOW_MAP))?;
        let over: BpfHashMap<&MapData, u32, PodGuard> =
            BpfHashMap::try_from(map).map_err(map_err(POD_GUARD_OVERFLOW_MAP))?;
        let mut out = Vec::with_capacity(self.placed.len());
        for (&ifindex, p) in &self.placed {
            let g = if p.in_slot {
                slots.get(&(ifindex % POD_GUARD_SLOT_COUNT), 0).map_err(map_err(POD_GUARD_SLOT_MAP))?
            } else {
                over.get(&ifindex, 0).map_err(map_err(POD_GUARD_OVERFLOW_MAP))?
            };
            if g.ifindex == ifindex {
                out.push(GuardCounts { ifindex, refused: g.refused, spoofed: g.spoofed });
            }
        }
        Ok(out)
    }
}

/// One pod's guard counts as the API and metrics show them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodGuardReport {
    /// The pod's host veth.
    pub interface: String,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Packets that would have opened a new flow over the pod's budget (not recorded).
    pub refused: u64,
    /// Packets the pod sent from a source not its own (not recorded).
    pub spoofed: u64,
}

/// `flow_flood` findings: a pod whose new flows were refused in the last poll fires; it
/// resolves after `resolve_after` without refusals and is forgotten after `retention`.
#[derive(Debug)]
pub struct FloodDetector {
    node: String,
    resolve_after: Duration,
    retention: Duration,
    /// By host veth name: the finding, the last refused total and when it last grew.
    tracked: HashMap<String, (Alert, u64, OffsetDateTime)>,
}

impl FloodDetector {
    pub fn new(node: &str, resolve_after: Duration, retention: Duration) -> Self {
        Self { node: node.to_string(), resolve_after, retention, tracked: HashMap::new() }
    }

    /// Takes this poll's per-pod counts; returns every finding (firing and recently resolved).
    pub fn evaluate(&mut self, pods: &[PodGuardReport], now: OffsetDateTime) -> Vec<Alert> {
        for p in pods {
            let who = match (&p.namespace, &p.pod) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => p.interface.clone(),
            };
            let entry = self.tracked.get_mut(&p.interface);
            let last = entry.as_ref().map_or(0, |e| e.1);
            // A counter that went down: the guard was rewritten (the daemon restarted or the
            // veth came back); everything in it is new.
            let grew = if p.refused >= last { p.refused - last } else { p.refused };
            if let Some(e) = entry {
                e.1 = p.refused;
            }
            if grew == 0 {
                continue;
            }
            let unspecified = IpAddr::from([0, 0, 0, 0]);
            let e = self.tracked.entry(p.interface.clone()).or_insert_with(|| {
                let alert = Alert {
                    id: flood_id(&p.interface),
                    kind: AlertKind::FlowFlood,
                    state: AlertState::Firing,
                    severity: crate::model::Severity::Warning,
                    node: String::new(),
                    scenario: Scenario::Unknown,
                    protocol: String::new(),
                    src_ip: unspecified,
                    dst_ip: unspecified,
                    dst_port: None,
                    src: None,
                    dst: None,
                    remote_node: None,
                    backend: None,
                    first_seen: now,
                    last_seen: now,
                    resolved_at: None,
                    summary: String::new(),
                    evidence: Evidence::default(),
                    verdict: None,
                    flows: Vec::new(),
                    drilldown: None,
                };
                (alert, p.refused, now)
            });
            e.1 = p.refused;
            e.2 = now;
            let a = &mut e.0;
            if a.state != AlertState::Firing {
                a.state = AlertState::Firing;
                a.resolved_at = None;
                a.first_seen = now;
            }
            a.node = self.node.clone();
            a.src = Some(Endpoint {
                kind: EndpointKind::Pod,
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                node: Some(self.node.clone()),
                workload: p.workload.clone(),
                ..Endpoint::default()
            });
            a.last_seen = now;
            a.evidence =
                Evidence { seen_at: vec![format!("{}/ingress", p.interface)], ..Evidence::default() };
            a.evidence.requests = p.refused;
            a.summary = format!(
                "{who} opens new flows faster than its budget: {grew} packet(s) of new flows not recorded since the last poll ({} in all); the rest of the node is still watched",
                p.refused
            );
        }
        let resolve_after =
            time::Duration::try_from(self.resolve_after).unwrap_or(time::Duration::seconds(60));
        let retention = time::Duration::try_from(self.retention).unwrap_or(time::Duration::minutes(15));
        self.tracked.retain(|_, (a, _, last)| {
            a.state == AlertState::Firing || now - *last < retention + resolve_after
        });
        for (a, _, last) in self.tracked.values_mut() {
            if a.state == AlertState::Firing && now - *last >= resolve_after {
                a.state = AlertState::Resolved;
                a.resolved_at = Some(now);
            }
        }
        let mut out: Vec<Alert> = self.tracked.values().map(|(a, _, _)| a.clone()).collect();
        out.sort_by(|a, b| {
            (a.state != AlertState::Firing, &a.id).cmp(&(b.state != AlertState::Firing, &b.id))
        });
        out
    }
}

fn flood_id(iface: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in AlertKind::FlowFlood.as_str().bytes().chain([0]).chain(iface.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budget_keeps_one_pod_to_an_eighth_of_the_table() {
        let b = FlowBudget::for_table(65536, Duration::from_secs(60));
        assert_eq!((b.per_sec, b.burst), (136, 1024));
        assert!(u64::from(b.per_sec) * 60 + u64::from(b.burst) <= 65536 / 8 + 65536 / 64);
        let (cost, tau) = b.gcra_ns();
        assert_eq!(cost, 1_000_000_000 / 136);
        assert_eq!(tau, cost * 1023);
        assert_eq!(FlowBudget::OFF.gcra_ns(), (0, 0));
    }

    #[test]
    fn flood_fires_while_refusals_grow_then_resolves() {
        let mut d = FloodDetector::new("n1", Duration::from_secs(10), Duration::from_secs(60));
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20000);
        let pod = |refused| PodGuardReport {
            interface: "abc_h".into(),
            ifindex: 7,
            namespace: Some("default".into()),
            pod: Some("flood".into()),
            workload: Some("Deployment/flood".into()),
            refused,
            spoofed: 0,
        };
        assert!(d.evaluate(&[pod(0)], t0).is_empty(), "no refusals, no finding");
        let a = d.evaluate(&[pod(500)], t0 + time::Duration::seconds(1));
        assert_eq!(a.len(), 1, "{a:#?}");
        assert_eq!((a[0].kind, a[0].state), (AlertKind::FlowFlood, AlertState::Firing));
        let src = a[0].src.as_ref().expect("names the pod");
        assert_eq!((src.namespace.as_deref(), src.pod.as_deref()), (Some("default"), Some("flood")));
        assert!(a[0].summary.contains("default/flood"), "{}", a[0].summary);
        // No more growth: still firing until resolve_after, then resolved.
        let a = d.evaluate(&[pod(500)], t0 + time::Duration::seconds(5));
        assert_eq!(a[0].state, "firing");
        let a = d.evaluate(&[pod(500)], t0 + time::Duration::seconds(12));
        assert_eq!(a[0].state, "resolved", "{a:#?}");
        // Forgotten after the retention.
        assert!(d.evaluate(&[pod(500)], t0 + time::Duration::seconds(200)).is_empty());
    }

    #[test]
    fn addresses_are_encoded_like_flow_keys() {
        let w = addr_words("10.16.0.2".parse().expect("ip"));
        assert_eq!(w, ipv4_mapped([10, 16, 0, 2]));
    }
}
