//! The daemon's own health as metrics: attached interfaces, hooks, the flow table's fill,
//! kernel-side losses, poll durations, and the per-pod guard counters.

use super::*;

/// The tc hook a program implements: `kovn_pod_ingress` → `tc_pod`. Other programs (the
/// `skb:kfree_skb` tracepoint) report through `Health::hooks` instead.
pub fn hook_of_program(name: &str) -> Option<String> {
    let (kind, dir) = name.strip_prefix("kovn_")?.rsplit_once('_')?;
    dir.parse::<crate::model::Direction>().is_ok().then(|| format!("tc_{kind}"))
}

impl Exporter {
    /// Applies one poll's per-pod guard counts (`kovn_flows_refused_total`,
    /// `kovn_spoofed_packets_total`): the deltas since the last poll, per pod workload.
    pub fn update_guards(&mut self, pods: &[crate::guard::PodGuardReport], now: Instant) {
        let m = &self.metrics;
        let mut next = HashMap::with_capacity(pods.len());
        for p in pods {
            let workload = match (&p.workload, self.cfg.pod_labels) {
                (Some(w), _) => w.clone(),
                (None, true) if p.pod.is_some() => p.pod.clone().unwrap_or_default(),
                _ => "unknown".to_string(),
            };
            let key = (p.namespace.clone().unwrap_or_default(), workload);
            let (lr, ls) = self.guards.get(&p.ifindex).copied().unwrap_or((0, 0));
            // A smaller value: the guard was rewritten (veth re-created); all of it is new.
            let d = |cur: u64, last: u64| if cur >= last { cur - last } else { cur };
            let (dr, ds) = (d(p.refused, lr), d(p.spoofed, ls));
            next.insert(p.ifindex, (p.refused, p.spoofed));
            let labels = |extra: Option<(&'static str, &str)>| {
                let mut l: Labels = extra.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                l.push(("namespace", key.0.clone()));
                l.push(("workload", key.1.clone()));
                l
            };
            m.flows_refused.get_or_create(&labels(Some(("reason", "source_budget")))).inc_by(dr);
            m.spoofed.get_or_create(&labels(None)).inc_by(ds);
            self.guard_series.insert(key, now);
        }
        self.guards = next;
    }

    pub(super) fn update_health(&mut self, snap: &Snapshot) {
        let m = &self.metrics;
        let h = &snap.health;
        let mut by_kind: BTreeMap<&str, i64> = IFACE_KINDS.iter().map(|k| (*k, 0)).collect();
        for a in &h.attached_interfaces {
            *by_kind.entry(a.kind.as_str()).or_default() += 1;
        }
        for (kind, n) in by_kind {
            m.attached.get_or_create(&vec![("kind", kind.to_string())]).set(n);
        }
        m.table_entries.set(i64::try_from(h.flow_table_entries).unwrap_or(i64::MAX));
        m.table_capacity.set(i64::from(h.flow_table_capacity));
        for (reason, &v) in h.kernel_counters.iter().filter(|(r, _)| !NOT_LOSSES.contains(&r.as_str())) {
            let last = self.kernel.insert(reason.clone(), v);
            // Cumulative since the programs were loaded; a smaller value can only mean the map
            // was recreated, and then everything in it is new.
            let d = match last {
                Some(l) if v >= l => v - l,
                _ => v,
            };
            m.kernel_lost.get_or_create(&vec![("reason", reason.clone())]).inc_by(d);
        }
        m.poll_duration.observe(h.poll_duration_ms / 1e3);
        if let Some(heap) = h.heap {
            for (kind, v) in [("allocated", heap.allocated_bytes), ("resident", heap.resident_bytes)] {
                m.heap
                    .get_or_create(&vec![("kind", kind.to_string())])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        // One series per --underlay-iface (the flags bound it), kept while the NIC is missing.
        for u in &h.underlay {
            m.underlay_up
                .get_or_create(&vec![("interface", u.interface.clone())])
                .set(i64::from(u.state == crate::model::UnderlayState::Up));
        }
        let mut hooks: BTreeMap<String, i64> = HOOKS.iter().map(|h| (h.to_string(), 0)).collect();
        for p in &h.programs {
            if let Some(hook) = hook_of_program(&p.name) {
                hooks.insert(hook, 1);
            }
        }
        // Hooks that are not tc programs report themselves in /healthz.
        for (hook, &up) in &h.hooks {
            hooks.insert(hook.clone(), i64::from(up));
        }
        for (hook, v) in hooks {
            m.hook_available.get_or_create(&vec![("hook", hook)]).set(v);
        }
    }
}
