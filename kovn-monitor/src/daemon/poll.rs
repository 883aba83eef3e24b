//! One poll of the daemon, stage by stage. Each stage is a function with typed input and
//! output; `Daemon::poll` runs them in order, top to bottom:
//!
//! 1. [`Daemon::read_kernel`]: the kernel's flow map merged into the flow table (idle flows
//!    removed from the kernel), its counters, the drop map (aged).
//! 2. [`Daemon::build_flows`]: the table as flows, oriented and annotated by the inventory;
//!    unchanged flows are the previous poll's `Arc`s.
//! 3. [`Daemon::join_drops`]: drop records oriented like their flow, their pod named, and
//!    attached to the flows.
//! 4. [`Daemon::detect`]: the detectors (and the pod guards' flood detector) → findings.
//! 5. [`Daemon::verdicts`]: where each firing finding's packets stop, from this node's flows
//!    and the peer node's answers (asked in the background: see `peers`).
//! 6. [`Daemon::publish`]: the drill-down, flows linked to their findings, the metrics, the
//!    Alertmanager feed, and the snapshot every reader sees.
//!
//! The poll never awaits: nothing in it waits on the network.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kovn_ebpf_common::{DropKey, DropStats};

use super::Daemon;
use super::peers::Question;
use crate::api::{AttachedInterface, Health, Snapshot};
use crate::detection::{self, Alert, EndpointFacts, PeerView, Verdict};
use crate::drops::DropRecord;
use crate::flows::{Clock, Flow, FlowAlert};
use crate::interfaces;
use crate::model::{AlertKind, AlertState, IfaceKind, Scenario};

/// How long a verdict stands before the peer is asked again.
const VERDICT_REFRESH: Duration = Duration::from_secs(10);

/// Stage 1's output.
pub(super) struct KernelRead {
    /// Flows in the kernel's table after this read (read minus the idle ones removed).
    kernel_fill: usize,
    /// What the kernel side could not record, by reason (flow and drop programs).
    counters: BTreeMap<String, u64>,
    /// The drop map's records (shown this once even when aged out now).
    drops: Vec<(DropKey, DropStats)>,
}

impl Daemon {
    pub(super) fn poll(&mut self) {
        let started = Instant::now();
        let clock = Clock::now();
        let kernel = self.read_kernel(&clock);
        let (mut flows, pods) = self.build_flows(&clock);
        let drops = self.join_drops(&kernel.drops, &clock, &mut flows);
        let mut alerts = self.detect(&flows, &drops);
        self.verdicts(&mut alerts, &flows);
        let snap = Snapshot {
            node: self.cfg.node_name.clone(),
            time: clock.wall_now(),
            flows,
            pods,
            alerts,
            health: self.health(kernel),
            drops,
        };
        self.publish(snap, started);
    }

    /// Stage 1: the kernel's maps.
    fn read_kernel(&mut self, clock: &Clock) -> KernelRead {
        match self.capture.read_flows() {
            Ok(kernel) => {
                let read = kernel.len();
                let idle = self.table.merge(kernel, clock.mono_now_ns());
                self.kernel_fill = read;
                if !idle.is_empty() {
                    match self.capture.remove_flows(&idle) {
                        Ok(removed) => self.kernel_fill = read.saturating_sub(removed),
                        Err(e) => log::warn!("expiring idle flows: {e}"),
                    }
                }
                self.table.prune(clock.mono_now_ns());
            }
            Err(e) => log::warn!("reading the flow map: {e}"),
        }
        let mut counters = self.capture.counters().unwrap_or_default();
        counters.extend(self.capture.drop_counters());
        let drops = if self.capture.drop_hook().available {
            self.capture.read_drops().unwrap_or_else(|e| {
                log::warn!("reading the drop map: {e}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        // Idle records leave the kernel map (they are still shown this once).
        if let Err(e) = self.capture.age_drops(&drops, clock.mono_now_ns(), self.cfg.drop_record_ttl) {
            log::warn!("ageing the drop map: {e}");
        }
        KernelRead {
            kernel_fill: self.kernel_fill,
            counters: counters.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            drops,
        }
    }

    /// Stage 2: the flow table as annotated flows (most recently active first), and the pods
    /// the inventory knows.
    fn build_flows(&mut self, clock: &Clock) -> (Vec<Arc<Flow>>, Vec<crate::inventory::PodInfo>) {
        let inventory = self.inventory.read().unwrap_or_else(|p| p.into_inner());
        let flows = self.table.snapshot(clock, &inventory);
        let pods = inventory.pods().into_iter().cloned().collect();
        (flows, pods)
    }

    /// Stage 3: drops oriented like their flow, their pod named, attached to the flow by id.
    /// A flow with drops is a copy of the table's flow with its drops; the copy is kept for
    /// the next poll and reused while the flow and its drops are the same.
    fn join_drops(
        &mut self,
        entries: &[(DropKey, DropStats)],
        clock: &Clock,
        flows: &mut [Arc<Flow>],
    ) -> Vec<DropRecord> {
        if entries.is_empty() {
            self.with_drops.clear();
            return Vec::new();
        }
        // A subsystem's reasons (OVS's) come from its module's BTF, which may load after us.
        self.capture.drop_hook_mut().learn_reasons(entries);
        // Which kernel function freed them, where `/proc/kallsyms` shows it.
        self.capture.drop_hook_mut().learn_sites(entries);
        let table = &self.table;
        let mut drops =
            crate::drops::records(entries, self.capture.drop_hook(), clock, |key| table.initiator_of(key));
        {
            let inv = self.inventory.read().unwrap_or_else(|p| p.into_inner());
            let by_veth: HashMap<&str, String> = inv
                .pods()
                .into_iter()
                .filter_map(|p| Some((p.host_iface.as_deref()?, format!("{}/{}", p.namespace, p.name))))
                .collect();
            crate::drops::name_pods(&mut drops, flows, &self.cfg.node_name, |veth| {
                by_veth.get(veth).cloned()
            });
        }
        let mut per_flow = crate::drops::by_flow(&drops);
        let mut kept = HashMap::with_capacity(per_flow.len());
        for f in flows.iter_mut() {
            let Some(d) = per_flow.remove(&f.id) else { continue };
            let decorated = match self.with_drops.remove(&f.id) {
                Some((plain, decorated)) if Arc::ptr_eq(&plain, f) && decorated.drops == d => decorated,
                _ => {
                    let mut copy = Flow::clone(f);
                    copy.drops = d;
                    Arc::new(copy)
                }
            };
            let plain = std::mem::replace(f, decorated.clone());
            kept.insert(f.id.clone(), (plain, decorated));
        }
        self.with_drops = kept;
        drops
    }

    /// Stage 4: the detectors' findings (request without reply, refused, MTU, tunnel, drops,
    /// and the pod guards' floods).
    fn detect(&mut self, flows: &[Arc<Flow>], drops: &[DropRecord]) -> Vec<Alert> {
        let now = time::OffsetDateTime::now_utc();
        let kinds: HashMap<&str, IfaceKind> =
            self.capture.attachments().values().map(|a| (a.name.as_str(), a.kind.into())).collect();
        self.detector.observe_drops(drops, |iface| kinds.get(iface).copied().unwrap_or(IfaceKind::Host), now);
        self.detector.observe_underlay(self.underlay.links(), self.underlay.addresses(), now);
        let mut alerts = self.detector.evaluate(flows, now);
        let guards = self.pod_guards();
        alerts.extend(self.flood.evaluate(&guards, now));
        self.exporter.update_guards(&guards, Instant::now());
        alerts
    }

    /// Keeps the pod guards in step with the attached pod veths and the inventory (a veth's
    /// pod, by the host interface OVSDB or the inventory file names, gives the addresses; a
    /// veth of no known pod gets the budget without the spoofing check) and reads their counts.
    fn pod_guards(&mut self) -> Vec<crate::guard::PodGuardReport> {
        let inv = self.inventory.read().unwrap_or_else(|p| p.into_inner());
        let by_veth: HashMap<&str, &crate::inventory::PodInfo> =
            inv.pods().into_iter().filter_map(|p| Some((p.host_iface.as_deref()?, p))).collect();
        let mut want = BTreeMap::new();
        let mut names = HashMap::new();
        for (&ifindex, a) in self.capture.attachments() {
            if a.kind != interfaces::IfaceKind::Pod {
                continue;
            }
            let pod = by_veth.get(a.name.as_str()).copied();
            want.insert(ifindex, pod.map(|p| p.ips.clone()).unwrap_or_default());
            names.insert(ifindex, (a.name.clone(), pod.cloned()));
        }
        drop(inv);
        if let Err(e) = self.capture.sync_guards(&want) {
            log::warn!("pod guards: {e}");
        }
        let counts = self.capture.read_guards().unwrap_or_else(|e| {
            log::warn!("reading the pod guards: {e}");
            Vec::new()
        });
        counts
            .into_iter()
            .filter_map(|c| {
                let (interface, pod) = names.remove(&c.ifindex)?;
                Some(crate::guard::PodGuardReport {
                    interface,
                    ifindex: c.ifindex,
                    namespace: pod.as_ref().map(|p| p.namespace.clone()),
                    pod: pod.as_ref().map(|p| p.name.clone()),
                    workload: pod.and_then(|p| p.workload),
                    refused: c.refused,
                    spoofed: c.spoofed,
                })
            })
            .collect()
    }

    /// Stage 5: verdicts for firing findings, refreshed at most every `VERDICT_REFRESH` each.
    /// For cross-node flows the destination's monitor is asked what it saw of the same flow
    /// (same id on every node); the question goes to the background task and the verdict is
    /// made when its answer is here (a later tick), so this stage never waits.
    fn verdicts(&mut self, alerts: &mut [Alert], flows: &[Arc<Flow>]) {
        for a in self.peers.answers() {
            self.peer_answers.insert(a.alert, a.view);
        }
        let by_id: HashMap<&str, &Arc<Flow>> = flows.iter().map(|f| (f.id.as_str(), f)).collect();
        let underlay = self.capture.attachments().values().any(|x| x.kind == interfaces::IfaceKind::Underlay);
        for a in alerts.iter_mut().filter(|a| a.state == AlertState::Firing) {
            if a.kind == AlertKind::Drops {
                self.drops_verdict(a, &by_id);
                continue;
            }
            if self.detector.own_verdict(&a.id) {
                // The detector knows the cause (the underlay NIC's state, this node's firewall
                // dropping the tunnel): only our namespace's prefix is added to its commands.
                self.prefix_commands(a);
                continue;
            }
            let answered = self.peer_answers.contains_key(&a.id);
            let fresh = self.verdict_at.get(&a.id).is_some_and(|t| t.elapsed() < VERDICT_REFRESH);
            if fresh && a.verdict.is_some() && !answered {
                continue;
            }
            let Some(vip_flow) = a.flows.first().and_then(|id| by_id.get(id.as_str()).copied()) else {
                continue;
            };
            // A service connection with a known backend: its post-DNAT flow is what is
            // followed (and asked about on the backend's node), like a pod-to-pod flow.
            let f = a.backend.as_ref().and_then(|b| by_id.get(b.flow.as_str()).copied()).unwrap_or(vip_flow);
            let peer = match (f.scenario, f.tunnel.as_ref().and_then(|t| t.remote_ip)) {
                (Scenario::PodToPodCrossNode, Some(ip)) => match self.peer_answers.remove(&a.id) {
                    Some(view) => Some(view),
                    None => {
                        self.peers.ask(Question {
                            alert: a.id.clone(),
                            ip,
                            flow: f.clone(),
                            also: a.flows.clone(),
                            local: self.underlay.addresses(),
                        });
                        continue;
                    }
                },
                (Scenario::PodToPodCrossNode, None) => {
                    Some(PeerView::Unreachable("its address is unknown".into()))
                }
                _ => None,
            };
            let (hop, summary) = detection::verdict(a, f, peer.as_ref(), underlay);
            let (src, dst) = {
                let inv = self.inventory.read().unwrap_or_else(|p| p.into_inner());
                let facts = |ip| {
                    inv.pod(ip)
                        .map(|p| EndpointFacts { mac: p.mac.clone(), host_iface: p.host_iface.clone() })
                        .unwrap_or_default()
                };
                (facts(f.src_ip), facts(f.dst_ip))
            };
            let mut v = Verdict {
                hop,
                summary,
                // Commands trace the client's own packet (to the VIP: ovn-trace follows the
                // load balancer), then the backend's.
                next_commands: detection::next_commands(a, vip_flow, &self.commands, &src, &dst),
            };
            // The kernel's own reason inside a pod (here or on the peer node) is more precise
            // than where packets were last seen.
            let peer_flow = match &peer {
                Some(PeerView::Seen(Some(p))) => Some(p.as_ref()),
                _ => None,
            };
            if let Some(pv) = crate::drops::pod_drop_verdict(f, peer_flow) {
                v.hop = pv.hop;
                v.summary = pv.summary;
                v.next_commands.splice(0..0, pv.next_commands);
            }
            self.detector.set_verdict(&a.id, v.clone());
            a.verdict = Some(v);
            // "It never arrived" may only mean the peer has not polled since: asked again next
            // tick instead of kept for the refresh interval.
            if !matches!(peer, Some(PeerView::Seen(None))) {
                self.verdict_at.insert(a.id.clone(), Instant::now());
            }
        }
        let firing = |id: &String| alerts.iter().any(|a| &a.id == id);
        self.verdict_at.retain(|id, _| firing(id));
        self.peer_answers.retain(|id, _| firing(id));
    }

    /// A drops finding: the detector names the drop site itself; the namespace prefix of its
    /// commands is ours, and drops inside a pod are named by the pod's own reason.
    fn drops_verdict(&self, a: &mut Alert, by_id: &HashMap<&str, &Arc<Flow>>) {
        self.prefix_commands(a);
        let flow = a.flows.first().and_then(|id| by_id.get(id.as_str()).copied());
        if let (Some(pv), Some(v)) =
            (flow.and_then(|f| crate::drops::pod_drop_verdict(f, None)), a.verdict.as_mut())
        {
            v.hop = pv.hop;
            v.summary = pv.summary;
            v.next_commands.splice(0..0, pv.next_commands);
        }
    }

    /// Commands of a verdict the detector made run in this monitor's network namespace (the
    /// lab's), like the ones the daemon phrases.
    fn prefix_commands(&self, a: &mut Alert) {
        if let (Some(ns), Some(v)) = (&self.commands.netns, a.verdict.as_mut()) {
            for c in &mut v.next_commands {
                *c = format!("ip netns exec {ns} {c}");
            }
        }
    }

    /// The health part of the snapshot (the poll's duration is set when it is published).
    fn health(&self, kernel: KernelRead) -> Health {
        Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attached_interfaces: self
                .capture
                .attachments()
                .iter()
                .map(|(i, a)| AttachedInterface {
                    name: a.name.clone(),
                    ifindex: *i,
                    kind: a.kind.into(),
                    mtu: a.mtu,
                })
                .collect(),
            programs: self.capture.programs().into_iter().map(Into::into).collect(),
            flow_table_entries: kernel.kernel_fill,
            flow_table_capacity: self.capture.capacity(),
            kernel_counters: kernel.counters,
            poll_duration_ms: 0.0,
            hooks: [
                ("kfree_skb".to_string(), self.capture.drop_hook().available),
                // No kprobe program exists yet; see README (HTTP API, /healthz).
                ("ovs_vport_mtu_kprobe".to_string(), false),
            ]
            .into(),
            hooks_unavailable: self
                .capture
                .drop_hook()
                .why
                .iter()
                .map(|w| ("kfree_skb".to_string(), w.clone()))
                .chain([("ovs_vport_mtu_kprobe".to_string(), self.ovs_kprobe_why.clone())])
                // Optional classifiers the kernel refused (the interfaces they watch are not
                // attached; see capture::program_required).
                .chain(self.capture.hooks_unavailable().iter().map(|(p, w)| (p.to_string(), w.clone())))
                .collect(),
            // As the previous poll left it (this one has only just begun).
            heap: crate::heap::stats(),
            underlay: self.underlay.links(),
        }
    }

    /// Stage 6: the drill-down, the flows' links to their findings, the metrics, the
    /// Alertmanager feed, then the snapshot itself.
    fn publish(&mut self, mut snap: Snapshot, started: Instant) {
        if let Some(d) = &mut self.drill {
            d.update(&mut snap.alerts, &snap.flows);
        }
        link_flows_to_alerts(&mut snap);
        snap.health.poll_duration_ms = started.elapsed().as_secs_f64() * 1e3;
        // Counters take this poll's deltas before the snapshot is published.
        self.exporter.update(&snap, Instant::now());
        if let Some(tx) = &self.alerts_tx {
            tx.send_replace(snap.alerts.clone());
        }
        self.shared.publish(snap);
        self.cfg.server.probe.polled(self.capture.programs().len());
    }
}

/// Marks the flows behind each firing finding with its id, kind and verdict (copying only
/// those flows).
pub(crate) fn link_flows_to_alerts(snap: &mut Snapshot) {
    let mut by_flow = HashMap::new();
    for a in snap.alerts.iter().filter(|a| a.state == AlertState::Firing) {
        for id in &a.flows {
            by_flow.insert(
                id.as_str(),
                FlowAlert {
                    id: a.id.clone(),
                    kind: a.kind,
                    hop: a.verdict.as_ref().map(|v| v.hop),
                    verdict: a.verdict.as_ref().map(|v| v.summary.clone()),
                },
            );
        }
    }
    for f in &mut snap.flows {
        let link = by_flow.remove(f.id.as_str());
        if f.alert != link {
            Arc::make_mut(f).alert = link;
        }
    }
}
