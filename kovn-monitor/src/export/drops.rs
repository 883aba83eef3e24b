//! Kernel drop metrics (`kovn_drops_total`) and the MTU hooks' (oversized, fragmentation
//! needed), labelled by site.

use super::*;

/// `(location, namespace, workload)` of the drop, oversize and frag-needed families (+ `reason`
/// for drops, in front).
/// Which families a site's label set belongs to (for the series TTL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum SiteFamily {
    /// `kovn_drops_total`.
    Drops,
    /// `kovn_oversized_packets_total` and `kovn_frag_needed_total`.
    Mtu,
}

pub(super) type SiteKey = Vec<String>;

pub(super) fn site_labels(k: &SiteKey) -> Labels {
    let names: &[&'static str] = if k.len() == 5 {
        &["reason", "location", "protocol", "namespace", "workload"]
    } else {
        &["location", "namespace", "workload"]
    };
    names.iter().copied().zip(k.iter().cloned()).collect()
}

impl Exporter {
    /// `kovn_drops_total` from the kernel's drop records: per record the rise of its count
    /// (a record that went down or is new was recreated: all of it is new).
    pub(super) fn update_drops(&mut self, snap: &Snapshot, now: Instant) {
        let pod_labels = self.cfg.pod_labels;
        let kinds: HashMap<&str, IfaceKind> =
            snap.health.attached_interfaces.iter().map(|a| (a.name.as_str(), a.kind)).collect();
        let flows: HashMap<&str, &Flow> = snap.flows.iter().map(|f| (f.id.as_str(), &**f)).collect();
        let mut next = HashMap::with_capacity(snap.drops.len());
        let mut sums: HashMap<[&str; 5], u64> = HashMap::new();
        for d in &snap.drops {
            let key = (d.flow_id.clone(), d.reason.clone(), d.ifindex);
            let added = match self.drops.get(&key) {
                Some(&last) if d.count >= last => d.count - last,
                _ => d.count,
            };
            next.insert(key, d.count);
            // The interface the skb was on when it died, as kovn knows it; anything else
            // (a bridge port, loopback, no device) is the host.
            let location = match kinds.get(d.interface.as_str()) {
                Some(k @ (IfaceKind::Pod | IfaceKind::Tunnel | IfaceKind::Underlay)) => k.as_str(),
                _ => IfaceKind::Host.as_str(),
            };
            let (ns, wl) = flows.get(d.flow_id.as_str()).map_or(("", "unknown"), |f| pod_end(f, pod_labels));
            // The protocol (a known set) tells a reason's ordinary cases from its faults, e.g.
            // `NO_SOCKET` on ICMP is every raw-socket ping's reply (`DropRecord::is_routine`).
            let protocol = d.protocol.unwrap_or(crate::model::Protocol::Other).as_str();
            *sums.entry([d.reason.as_str(), location, protocol, ns, wl]).or_default() += added;
        }
        self.drops = next;
        for (site, n) in sums {
            let key: SiteKey = site.iter().map(|s| s.to_string()).collect();
            self.metrics.drops.get_or_create(&site_labels(&key)).inc_by(n);
            self.sites.insert((SiteFamily::Drops, key), now);
        }
    }
}
