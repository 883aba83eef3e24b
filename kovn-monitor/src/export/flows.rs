//! Flow metrics: per-pair packets, bytes, requests and RTTs, per-tunnel packets, the broken
//! paths of firing findings; counters advance by the deltas of each flow since the last poll.

use std::borrow::Cow;

use super::*;

/// What the exporter remembers of one flow: its last cumulative values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    pub(super) requests: u64,
    /// The most unanswered requests seen: `requests_unanswered` goes down when a reply arrives
    /// (UDP counts every request before the first reply), and a counter cannot, so only rises
    /// above this high-water mark are added.
    pub(super) unanswered_max: u64,
    pub(super) rtt_us: Option<u64>,
    pub(super) oversized: u64,
    pub(super) too_big: u64,
    /// The kernel's first-seen time of this incarnation.
    pub(super) first_seen_mono_ns: u64,
}

impl Seen {
    fn of(f: &Flow) -> Self {
        Self {
            first_seen_mono_ns: f.first_seen_mono_ns,
            packets: [f.packets_fwd, f.packets_rev],
            bytes: [f.bytes_fwd, f.bytes_rev],
            requests: u64::from(f.requests),
            unanswered_max: u64::from(f.requests_unanswered),
            rtt_us: f.rtt_us,
            oversized: f.mtu.as_ref().map_or(0, |m| u64::from(m.oversized_packets)),
            too_big: f.mtu.as_ref().map_or(0, |m| u64::from(m.too_big_messages)),
        }
    }
}

/// What the exporter keeps of one flow between polls.
#[derive(Debug)]
pub(super) struct FlowMemo {
    /// The flow as last counted.
    flow: Arc<Flow>,
    seen: Seen,
    /// The last poll that had it.
    poll: u64,
}

/// What one poll adds for one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    pub(super) requests: u64,
    pub(super) unanswered: u64,
    /// A new RTT measurement to observe (first seen, changed, or a new incarnation).
    pub(super) rtt_us: Option<u64>,
    pub(super) oversized: u64,
    pub(super) too_big: u64,
}

impl Delta {
    fn add(&mut self, o: &Delta) {
        for i in 0..2 {
            self.packets[i] += o.packets[i];
            self.bytes[i] += o.bytes[i];
        }
        self.requests += o.requests;
        self.unanswered += o.unanswered;
        self.oversized += o.oversized;
        self.too_big += o.too_big;
    }
}

/// The delta of a flow against what was last seen of it, and what to remember now.
pub(super) fn delta(prev: Option<&Seen>, cur: &Seen) -> (Delta, Seen) {
    // A new incarnation (the kernel entry was removed and the 5-tuple came back: same id, new
    // flow) has a new first-seen time; packets, bytes and requests only grow within one, so
    // any of them going down says so too. Counting by the counts alone missed a flow that came
    // back with the same counts (short flows under slot reuse: found by the scrape test).
    let new_incarnation = prev.is_none_or(|p| {
        cur.first_seen_mono_ns != p.first_seen_mono_ns
            || cur.packets[0] < p.packets[0]
            || cur.packets[1] < p.packets[1]
            || cur.bytes[0] < p.bytes[0]
            || cur.bytes[1] < p.bytes[1]
            || cur.requests < p.requests
    });
    match prev {
        Some(p) if !new_incarnation => {
            let d = Delta {
                packets: [cur.packets[0] - p.packets[0], cur.packets[1] - p.packets[1]],
                bytes: [cur.bytes[0] - p.bytes[0], cur.bytes[1] - p.bytes[1]],
                requests: cur.requests - p.requests,
                unanswered: cur.unanswered_max.saturating_sub(p.unanswered_max),
                rtt_us: cur.rtt_us.filter(|_| cur.rtt_us != p.rtt_us),
                oversized: cur.oversized.saturating_sub(p.oversized),
                too_big: cur.too_big.saturating_sub(p.too_big),
            };
            (d, Seen { unanswered_max: p.unanswered_max.max(cur.unanswered_max), ..*cur })
        }
        _ => {
            let d = Delta {
                packets: cur.packets,
                bytes: cur.bytes,
                requests: cur.requests,
                unanswered: cur.unanswered_max,
                rtt_us: cur.rtt_us,
                oversized: cur.oversized,
                too_big: cur.too_big,
            };
            (d, *cur)
        }
    }
}

/// The bounded identity of one end: `(namespace, workload, pod)`.
pub(super) fn endpoint_labels(e: Option<&Endpoint>, pod_labels: bool) -> (&str, &str, &str) {
    let Some(e) = e else { return ("", "unknown", "") };
    match e.kind {
        EndpointKind::Pod => {
            let pod = e.pod.as_deref().unwrap_or("");
            // No guessing a workload from a pod name (`-<hash>` suffixes are not reliable):
            // the pod name stands in only when pod-level series were asked for.
            let workload = match (&e.workload, pod_labels) {
                (Some(w), _) => w.as_str(),
                (None, true) if !pod.is_empty() => pod,
                _ => "unknown",
            };
            (e.namespace.as_deref().unwrap_or(""), workload, if pod_labels { pod } else { "" })
        }
        EndpointKind::Service => ("", "service", ""),
        EndpointKind::Node => ("", "node", ""),
        EndpointKind::External => ("", "external", ""),
        EndpointKind::Unknown => ("", "unknown", ""),
    }
}

/// The label set shared by the flow and request families (without `direction`). Borrowed
/// from the snapshot while aggregating; owned only once per distinct pair.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pair<S> {
    scenario: S,
    protocol: S,
    src_namespace: S,
    src_workload: S,
    dst_namespace: S,
    dst_workload: S,
    src_pod: S,
    dst_pod: S,
}

pub(super) type PairKey = Pair<String>;

impl<'a> Pair<&'a str> {
    fn of(f: &'a Flow, pod_labels: bool) -> Self {
        let (src_namespace, src_workload, src_pod) = endpoint_labels(f.src.as_ref(), pod_labels);
        let (dst_namespace, dst_workload, dst_pod) = endpoint_labels(f.dst.as_ref(), pod_labels);
        Pair {
            scenario: f.scenario.as_str(),
            protocol: f.protocol.as_str(),
            src_namespace,
            src_workload,
            dst_namespace,
            dst_workload,
            src_pod,
            dst_pod,
        }
    }

    fn owned(&self) -> PairKey {
        Pair {
            scenario: self.scenario.to_string(),
            protocol: self.protocol.to_string(),
            src_namespace: self.src_namespace.to_string(),
            src_workload: self.src_workload.to_string(),
            dst_namespace: self.dst_namespace.to_string(),
            dst_workload: self.dst_workload.to_string(),
            src_pod: self.src_pod.to_string(),
            dst_pod: self.dst_pod.to_string(),
        }
    }
}

impl PairKey {
    pub(super) fn labels(&self, direction: Option<&'static str>, pod_labels: bool) -> Labels {
        let mut l = Vec::with_capacity(9);
        if let Some(d) = direction {
            l.push(("direction", d.to_string()));
        }
        l.extend([
            ("scenario", self.scenario.clone()),
            ("protocol", self.protocol.clone()),
            ("src_namespace", self.src_namespace.clone()),
            ("src_workload", self.src_workload.clone()),
            ("dst_namespace", self.dst_namespace.clone()),
            ("dst_workload", self.dst_workload.clone()),
        ]);
        if pod_labels {
            l.push(("src_pod", self.src_pod.clone()));
            l.push(("dst_pod", self.dst_pod.clone()));
        }
        l
    }
}

pub(super) const DIRECTIONS: [&str; 2] = ["request", "reply"];

pub(super) fn rtt_labels(scenario: &str, protocol: &str) -> Labels {
    vec![("scenario", scenario.to_string()), ("protocol", protocol.to_string())]
}

pub(super) fn tunnel_labels(remote: &str, direction: Option<&'static str>) -> Labels {
    let mut l = vec![("remote_node", remote.to_string())];
    if let Some(d) = direction {
        l.push(("direction", d.to_string()));
    }
    l
}

/// Where a flow enters this node's view: `pod` when a pod veth saw it, else the kind of the
/// first interface that did (`tunnel`, `underlay`, `host`).
pub(super) fn flow_location(f: &Flow) -> &'static str {
    let kinds = || f.interfaces.iter().map(|i| i.kind);
    if kinds().any(|k| k == IfaceKind::Pod) {
        return IfaceKind::Pod.as_str();
    }
    match kinds().next() {
        Some(k @ (IfaceKind::Tunnel | IfaceKind::Underlay)) => k.as_str(),
        _ => IfaceKind::Host.as_str(),
    }
}

/// `(namespace, workload)` of the end an MTU or drop signal is about: the sender of the flow
/// when it is a pod, else the other end.
pub(super) fn pod_end(f: &Flow, pod_labels: bool) -> (&str, &str) {
    let (sn, sw, _) = endpoint_labels(f.src.as_ref(), pod_labels);
    if f.src.as_ref().is_some_and(|e| e.kind == EndpointKind::Pod) {
        return (sn, sw);
    }
    let (dn, dw, _) = endpoint_labels(f.dst.as_ref(), pod_labels);
    if f.dst.as_ref().is_some_and(|e| e.kind == EndpointKind::Pod) { (dn, dw) } else { (sn, sw) }
}

/// `(kind, scenario, src_namespace, src_workload, dst_namespace, dst_workload)` of an alert.
pub(super) type PathKey = [String; 6];

pub(super) fn path_labels(k: &PathKey) -> Labels {
    ["kind", "scenario", "src_namespace", "src_workload", "dst_namespace", "dst_workload"]
        .into_iter()
        .zip(k.iter().cloned())
        .collect()
}

impl Exporter {
    pub(super) fn update_flows(&mut self, flows: &[Arc<Flow>], now: Instant) {
        let pod_labels = self.cfg.pod_labels;
        let mut pairs: foldhash::HashMap<Pair<&str>, Delta> = foldhash::HashMap::default();
        let mut rtts: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        let mut tunnels: HashMap<Cow<'_, str>, Delta> = HashMap::new();
        let mut mtu: HashMap<[&str; 3], (u64, u64)> = HashMap::new();
        self.polls += 1;
        let poll = self.polls;
        for f in flows {
            let d = match self.flows.get_mut(f.id.as_str()) {
                // The very flow of the last poll (the flow table reuses unchanged flows).
                Some(memo) if Arc::ptr_eq(&memo.flow, f) => {
                    memo.poll = poll;
                    Delta::default()
                }
                Some(memo) => {
                    let (d, seen) = delta(Some(&memo.seen), &Seen::of(f));
                    *memo = FlowMemo { flow: f.clone(), seen, poll };
                    d
                }
                None => {
                    let (d, seen) = delta(None, &Seen::of(f));
                    self.flows.insert(f.id.clone(), FlowMemo { flow: f.clone(), seen, poll });
                    d
                }
            };
            if f.mtu.is_some() {
                let (ns, wl) = pod_end(f, pod_labels);
                let e = mtu.entry([flow_location(f), ns, wl]).or_default();
                e.0 += d.oversized;
                e.1 += d.too_big;
            }
            let pair = Pair::of(f, pod_labels);
            // Every flow's pair is entered, with a zero delta too: it keeps the series alive.
            pairs.entry(pair.clone()).or_default().add(&d);
            if let Some(us) = d.rtt_us {
                rtts.entry((pair.scenario, pair.protocol)).or_default().push(us as f64 * 1e-6);
            }
            if let Some(t) = &f.tunnel {
                // The node name when the inventory knows it, else the tunnel endpoint IP:
                // both are one per node.
                let remote = match (&t.remote_node, &t.remote_ip) {
                    (Some(n), _) => Cow::Borrowed(n.as_str()),
                    (None, Some(ip)) => Cow::Owned(ip.to_string()),
                    (None, None) => Cow::Borrowed("unknown"),
                };
                tunnels.entry(remote).or_default().add(&d);
            }
        }
        // Flows absent from this snapshot are dropped from `self.flows` here: their last
        // values are already counted, and a later flow with the same id starts from zero.
        self.flows.retain(|_, memo| memo.poll == poll);
        crate::headroom::keep_headroom(&mut self.flows);

        let m = &self.metrics;
        for (pair, d) in pairs {
            let key = pair.owned();
            for (i, dir) in DIRECTIONS.into_iter().enumerate() {
                let l = key.labels(Some(dir), pod_labels);
                m.flow_packets.get_or_create(&l).inc_by(d.packets[i]);
                m.flow_bytes.get_or_create(&l).inc_by(d.bytes[i]);
            }
            let l = key.labels(None, pod_labels);
            m.requests.get_or_create(&l).inc_by(d.requests);
            m.requests_unanswered.get_or_create(&l).inc_by(d.unanswered);
            self.pairs.insert(key, now);
        }
        for ((scenario, protocol), values) in rtts {
            let h = m.rtt.get_or_create(&rtt_labels(scenario, protocol));
            for v in values {
                h.observe(v);
            }
            self.rtts.insert((scenario.to_string(), protocol.to_string()), now);
        }
        for (remote, d) in tunnels {
            for (i, dir) in DIRECTIONS.into_iter().enumerate() {
                m.tunnel_packets.get_or_create(&tunnel_labels(&remote, Some(dir))).inc_by(d.packets[i]);
            }
            m.tunnel_unanswered.get_or_create(&tunnel_labels(&remote, None)).inc_by(d.unanswered);
            self.tunnels.insert(remote.into_owned(), now);
        }
        for (site, (oversized, too_big)) in mtu {
            let key: SiteKey = site.iter().map(|s| s.to_string()).collect();
            let l = site_labels(&key);
            m.oversized.get_or_create(&l).inc_by(oversized);
            m.frag_needed.get_or_create(&l).inc_by(too_big);
            self.sites.insert((SiteFamily::Mtu, key), now);
        }
    }

    pub(super) fn update_paths(&mut self, snap: &Snapshot, now: Instant) {
        let mut firing: HashSet<PathKey> = HashSet::new();
        for a in snap.alerts.iter().filter(|a| a.state == AlertState::Firing) {
            // Pod names never label this gauge: alerts are per workload pair.
            let (sn, sw, _) = endpoint_labels(a.src.as_ref(), false);
            let (dn, dw, _) = endpoint_labels(a.dst.as_ref(), false);
            firing.insert([a.kind.as_str(), a.scenario.as_str(), sn, sw, dn, dw].map(str::to_string));
        }
        // A pair that stopped firing reads 0 (not absent) until its TTL runs out, so a
        // dashboard shows the recovery. Firing pairs are never set to 0 in between: a scrape
        // may run while this poll updates.
        for k in self.paths.keys().filter(|k| !firing.contains(*k)) {
            self.metrics.path_broken.get_or_create(&path_labels(k)).set(0);
        }
        for k in firing {
            self.metrics.path_broken.get_or_create(&path_labels(&k)).set(1);
            self.paths.insert(k, now);
        }
    }
}
