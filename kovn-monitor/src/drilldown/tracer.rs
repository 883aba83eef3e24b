//! The tracer: one drill-down of a packet through this node's br-int (`ofproto/trace` from the
//! pod's OpenFlow port), OVN's logical pipelines (`ovn-trace`), the br-int rules for the
//! destination, and for cross-node flows the destination node's half (asked of its monitor).
//!
//! Size: the steps of one trace (ofproto/trace, ovn-trace, dump-flows, logical flows and ACLs, the
//! peer's half) fill one report from one set of facts; split further they would pass both around.

use super::command::shown;
use super::http::num_of;
use super::verdict::{describe_outcome, verdict};
use super::*;

/// The drill-down: configuration and the daemon's state it reads.
pub struct Tracer {
    pub(super) cfg: TraceConfig,
    node: String,
    shared: Shared,
    inventory: Arc<RwLock<Inventory>>,
    /// One drill-down at a time per node: OVS answers traces on its main thread.
    busy: tokio::sync::Semaphore,
    /// API requests running or waiting for `busy`: at most [`TRACE_QUEUE`], more get `429`.
    pub(super) queue: tokio::sync::Semaphore,
}

/// `/api/v1/trace` requests in the queue (the one running included); more get `429` with
/// `Retry-After`.
pub const TRACE_QUEUE: usize = 4;

/// What the inventory says for one trace (read under the lock, used after it).
pub(super) struct Facts {
    pub(super) ports: Vec<OvsPort>,
    pub(super) src_pod: Option<crate::inventory::PodInfo>,
    pub(super) dst_pod: Option<crate::inventory::PodInfo>,
    pub(super) gateway_mac: Option<String>,
    pub(super) remote_node: Option<String>,
    /// The integration bridge has an Interface row in the node's OVSDB.
    pub(super) bridge_known: bool,
}

impl Tracer {
    pub fn new(cfg: TraceConfig, node: &str, shared: Shared, inventory: Arc<RwLock<Inventory>>) -> Self {
        Self {
            cfg,
            node: node.to_string(),
            shared,
            inventory,
            busy: tokio::sync::Semaphore::new(1),
            queue: tokio::sync::Semaphore::new(TRACE_QUEUE),
        }
    }

    pub fn config(&self) -> &TraceConfig {
        &self.cfg
    }

    /// Resolves `flow=`/`alert=` from the current snapshot, or the explicit fields.
    pub fn resolve(&self, q: &TraceQuery) -> Result<(Packet, Option<TunnelIn>, Option<String>), TraceError> {
        let snap = self.shared.current();
        let size = match &q.size {
            Some(s) => Some(num_of("size", s, "28-65535")?),
            None => None,
        };
        if (q.flow.is_some() || q.alert.is_some())
            && [&q.src, &q.dst, &q.proto, &q.sport, &q.dport].iter().any(|v| v.is_some())
        {
            return Err(TraceError::BadInput(
                "flow/alert and src/dst/proto/sport/dport exclude each other".into(),
            ));
        }
        match (&q.flow, &q.alert) {
            (Some(_), Some(_)) => Err(TraceError::BadInput("give flow or alert, not both".into())),
            (Some(id), None) => {
                let f = snap
                    .flows
                    .iter()
                    .find(|f| &f.id == id)
                    .ok_or_else(|| TraceError::NotFound(format!("no flow {id:?} on {}", snap.node)))?;
                let mut p = packet_of_flow(f)?;
                p.size = size.or(p.size);
                Ok((p, None, Some(id.clone())))
            }
            (None, Some(id)) => {
                let a = snap
                    .alerts
                    .iter()
                    .find(|a| &a.id == id)
                    .ok_or_else(|| TraceError::NotFound(format!("no alert {id:?} on {}", snap.node)))?;
                let (mut p, flow_id) = packet_of_alert(a, &snap.flows)?;
                p.size = size.or(p.size);
                Ok((p, None, flow_id))
            }
            (None, None) => {
                let (p, t) = q.packet()?;
                Ok((p, t, None))
            }
        }
    }

    fn facts(&self, p: &Packet, remote_ip: Option<IpAddr>) -> Facts {
        let inv = self.inventory.read().unwrap_or_else(|e| e.into_inner());
        Facts {
            ports: inv.ovs_ports(),
            src_pod: inv.pod(p.src).cloned(),
            dst_pod: inv.pod(p.dst).cloned(),
            gateway_mac: inv.gateway_mac(p.src),
            remote_node: remote_ip.and_then(|ip| inv.node_of_ip(ip).map(str::to_string)),
            bridge_known: inv.has_interface(&self.cfg.bridge),
        }
    }

    fn underlay_mtu(&self, via: Option<&str>) -> Option<(String, u32)> {
        let snap = self.shared.current();
        if let Some(u) =
            snap.health.attached_interfaces.iter().find(|i| i.kind == crate::model::IfaceKind::Underlay)
        {
            return Some((u.name.clone(), u.mtu));
        }
        let via = via.filter(|v| valid_name(v))?;
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{via}/mtu")).ok()?.trim().parse().ok()?;
        Some((via.to_string(), mtu))
    }

    /// ovs-vswitchd's control socket in the run directory: `ovs-vswitchd.<pid>.ctl` as OVS
    /// names it (from its pidfile), or `ovs-vswitchd.ctl` when started with `--unixctl`.
    fn vswitchd_ctl(&self) -> Result<PathBuf, TraceError> {
        let dir = &self.cfg.ovs_rundir;
        let plain = dir.join("ovs-vswitchd.ctl");
        if plain.exists() {
            return Ok(plain);
        }
        let pid = std::fs::read_to_string(dir.join("ovs-vswitchd.pid")).ok();
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<u32>().ok()) {
            let p = dir.join(format!("ovs-vswitchd.{pid}.ctl"));
            if p.exists() {
                return Ok(p);
            }
        }
        Err(TraceError::Unavailable(format!(
            "no ovs-vswitchd control socket in {} (is OVS running here? set --ovs-rundir)",
            dir.display()
        )))
    }

    /// The backend OVN's load balancer chose for the service connection `p` (client → VIP),
    /// from the datapath's conntrack (`ovs-appctl dpctl/dump-conntrack`); None when no entry
    /// of it was DNATed (no longer tracked, or dropped before the load balancer).
    pub async fn conntrack_backend(&self, p: &Packet) -> Result<Option<(IpAddr, u16)>, TraceError> {
        let proto = match p.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            _ => return Ok(None),
        };
        let ctl = self.vswitchd_ctl()?;
        let args = vec![
            format!("--timeout={}", self.cfg.timeout.as_secs().max(1)),
            "-t".to_string(),
            ctl.display().to_string(),
            "dpctl/dump-conntrack".to_string(),
        ];
        let dump = run_command("ovs-appctl", &args, self.cfg.timeout).await?;
        Ok(conntrack::chosen_backend(&dump, proto, p.src, p.sport, p.dst, p.dport))
    }

    /// The pod behind an address, as the inventory knows it.
    pub fn endpoint_of(&self, ip: IpAddr) -> Option<crate::inventory::Endpoint> {
        let inv = self.inventory.read().unwrap_or_else(|e| e.into_inner());
        inv.pod(ip).map(|_| inv.endpoint(ip, 0, 0))
    }

    /// The whole drill-down for one packet on this node (and, through the tunnel, the next).
    pub async fn trace(&self, q: &TraceQuery) -> Result<TraceReport, TraceError> {
        let (p, tunnel_in, flow_id) = self.resolve(q)?;
        let mut report = self.trace_packet(p, tunnel_in, flow_id).await?;
        // OVS and OVN pass the packet, yet a finding says it fails: the cause is outside the
        // flow tables (the pod's own firewall, no listener, the underlay). The monitor's
        // verdict from what it saw on the wire names it; the trace clears OVS/OVN.
        if let Some(observed) = self.observed_verdict(&report) {
            report.verdict = format!("{observed}; OVS/OVN pass this packet: {}", report.verdict);
        }
        Ok(report)
    }

    /// The verdict of a firing finding about the traced flow, when the trace found no drop.
    fn observed_verdict(&self, r: &TraceReport) -> Option<String> {
        let dropped = r.deciding_rule.is_some()
            || r.mtu.as_ref().is_some_and(|m| !m.fits)
            || r.verdict.contains("dropped");
        if dropped {
            return None;
        }
        let id = r.flow_id.as_ref()?;
        let snap = self.shared.current();
        let a = snap.alerts.iter().find(|a| a.state == AlertState::Firing && a.flows.contains(id))?;
        let v = a.verdict.as_ref()?;
        Some(format!("{} ({}, {})", v.summary, a.kind, v.hop))
    }

    /// The drill-down of one packet (from the source pod's port, or from the tunnel).
    pub async fn trace_packet(
        &self,
        mut p: Packet,
        tunnel_in: Option<TunnelIn>,
        flow_id: Option<String>,
    ) -> Result<TraceReport, TraceError> {
        let shutting_down = |_| TraceError::Unavailable("shutting down".into());
        let permit = self.busy.acquire().await.map_err(shutting_down)?;
        let timeout = self.cfg.timeout;
        let secs = format!("--timeout={}", timeout.as_secs().max(1));
        let mut facts = self.facts(&p, tunnel_in.as_ref().map(|t| t.src));
        let mut report = TraceReport {
            node: self.node.clone(),
            flow_id,
            tunnel_in: tunnel_in.clone(),
            ..Default::default()
        };
        // Where the packet enters br-int: the source pod's port, or the tunnel from its node.
        let in_port = match &tunnel_in {
            Some(t) => facts
                .ports
                .iter()
                .find(|x| x.remote_ip == Some(t.src) && matches!(x.kind.as_str(), "geneve" | "vxlan" | "stt"))
                .cloned()
                .ok_or_else(|| {
                    TraceError::NotFound(format!("no tunnel port towards {} on {}", t.src, self.node))
                })?,
            None => {
                let iface = facts.src_pod.as_ref().and_then(|x| x.host_iface.clone()).ok_or_else(|| {
                    TraceError::BadInput(format!(
                        "{} is not a pod of this node ({}): run the trace on its node's monitor",
                        p.src, self.node
                    ))
                })?;
                facts.ports.iter().find(|x| x.name == iface).cloned().ok_or_else(|| {
                    TraceError::NotFound(format!("{iface} has no OpenFlow port on {}", self.cfg.bridge))
                })?
            }
        };
        report.in_port = Some(in_port.clone());
        if !facts.bridge_known {
            return Err(TraceError::Unavailable(format!(
                "bridge {} is not in this node's OVSDB (set --integration-bridge)",
                self.cfg.bridge
            )));
        }
        if p.src_mac.is_none() {
            p.src_mac = facts.src_pod.as_ref().and_then(|x| x.mac.clone());
        }
        if p.dst_mac.is_none() {
            // Same subnet: the pod's MAC; else the gateway's (the logical router port).
            p.dst_mac = facts.dst_pod.as_ref().and_then(|x| x.mac.clone()).or(facts.gateway_mac.clone());
        }
        let (Some(src_mac), Some(dst_mac)) = (p.src_mac.clone(), p.dst_mac.clone()) else {
            return Err(TraceError::NotFound(format!(
                "the MACs of {} and {} are unknown (not in OVSDB or the OVN southbound)",
                p.src, p.dst
            )));
        };
        if !valid_mac(&src_mac) || !valid_mac(&dst_mac) {
            return Err(TraceError::Failed(format!(
                "unusable MACs {src_mac:?}, {dst_mac:?} in the inventory"
            )));
        }

        // 1. ofproto/trace on br-int.
        let ctl = self.vswitchd_ctl()?;
        let ct = if p.established { "trk,est" } else { "trk,new" };
        let mut args = vec![secs.clone(), "-t".into(), ctl.display().to_string(), "ofproto/trace".into()];
        // One per recirculation (source zone, destination zone); extra ones are unused.
        for _ in 0..3 {
            args.extend(["--ct-next".to_string(), ct.to_string()]);
        }
        args.push(self.cfg.bridge.clone());
        args.push(ofproto_flow(&p, in_port.ofport, &src_mac, &dst_mac, tunnel_in.as_ref()));
        report.commands.push(shown("ovs-appctl", &args));
        let text = run_command("ovs-appctl", &args, timeout).await?;
        let trace = ofproto::parse(&text);
        if trace.passes.is_empty() {
            return Err(TraceError::Failed(format!(
                "ofproto/trace gave no table walk: {}",
                text.lines().next().unwrap_or("")
            )));
        }

        if let Outcome::TunnelPush { remote_ip: Some(ip), .. } = &trace.outcome {
            let inv = self.inventory.read().unwrap_or_else(|e| e.into_inner());
            facts.remote_node = inv.node_of_ip(*ip).map(str::to_string);
        }

        // 2. The rule that decided a drop, named through OVN when its cookie is a logical flow.
        if trace.outcome == Outcome::Drop
            && let Some(s) = trace.deciding_step()
        {
            let logical_flow = match s.cookie.as_deref().and_then(lflow_prefix) {
                Some(prefix) => self.logical_flow(&prefix, &mut report.commands).await,
                None => None,
            };
            report.deciding_rule = Some(DecidingRule {
                bridge: s.bridge.clone(),
                table: s.table,
                priority: s.priority,
                cookie: s.cookie.clone(),
                matches: s.matches.clone(),
                actions: s.actions.clone(),
                no_match: s.no_match,
                logical_flow,
            });
        }
        report.result = describe_outcome(&trace.outcome, &facts);

        // 3. ovn-trace of the same packet from the source pod's logical port.
        if tunnel_in.is_none()
            && let Some(sb) = &self.cfg.ovn_sb
            && let Some(src_pod) = &facts.src_pod
        {
            let mut args = vec![format!("--db={sb}")];
            args.extend(crate::ovsdb::ssl_args(sb));
            for _ in 0..2 {
                args.push(format!("--ct={ct}"));
            }
            args.push(ovn_microflow(
                &p,
                &format!("{}.{}", src_pod.name, src_pod.namespace),
                &src_mac,
                &dst_mac,
            ));
            report.commands.push(shown("ovn-trace", &args));
            match run_command("ovn-trace", &args, timeout).await {
                Ok(text) => {
                    let t = ovntrace::parse(&text);
                    for s in t.acls().filter(|s| valid_hex_id(&s.uuid)).cloned() {
                        if let Some(lf) = self.logical_flow(&s.uuid, &mut report.commands).await {
                            report.ovn_acls.push(lf);
                        }
                    }
                    report.ovn_trace = Some(t);
                }
                Err(e) => report.ovn_trace_error = Some(e.to_string()),
            }
        }

        // 4. The other half: the destination node traces the packet from its tunnel port. Not
        // holding this node's permit meanwhile: two nodes tracing towards each other at once
        // must not wait on each other.
        drop(permit);
        if let (
            Outcome::TunnelPush {
                remote_ip: Some(rip),
                local_ip: Some(lip),
                vni: Some(vni),
                geneve_option,
                ..
            },
            None,
        ) = (&trace.outcome, &tunnel_in)
        {
            match self.trace_on_peer(&p, *rip, *lip, *vni, geneve_option.as_deref()).await {
                Ok(r) => report.remote = Some(Box::new(r)),
                Err(e) => report.remote_error = Some(e),
            }
        }

        // 5. MTU: the packet plus the tunnel header against the underlay's MTU.
        if let (Outcome::TunnelPush { header_bytes: Some(h), via, .. }, Some(size)) = (&trace.outcome, p.size)
            && let Some((iface, mtu)) = self.underlay_mtu(via.as_deref())
        {
            // OVS's header size includes the outer Ethernet header (14), the inner frame adds its
            // own: outer L3 = inner L3 + header.
            let outer = size + h;
            report.mtu = Some(MtuCheck {
                packet_bytes: size,
                tunnel_header_bytes: *h,
                outer_bytes: outer,
                underlay_mtu: mtu,
                underlay_iface: iface,
                fits: outer <= mtu,
            });
        }

        // 6. br-int rules that mention the destination, counted twice a second apart.
        if tunnel_in.is_none() {
            let _permit = self.busy.acquire().await.map_err(shutting_down)?;
            match self.hit_flows(&p, &secs, &mut report.commands).await {
                Ok(f) => report.flows = f,
                Err(e) => report.flows_error = Some(e.to_string()),
            }
        }
        report.ofproto_trace = Some(trace);
        report.packet = Some(p);
        report.verdict = verdict(&report, &facts);
        Ok(report)
    }

    async fn hit_flows(
        &self,
        p: &Packet,
        secs: &str,
        commands: &mut Vec<String>,
    ) -> Result<Vec<OpenFlow>, TraceError> {
        let mgmt = self.cfg.ovs_rundir.join(format!("{}.mgmt", self.cfg.bridge));
        let target = if mgmt.exists() { format!("unix:{}", mgmt.display()) } else { self.cfg.bridge.clone() };
        let args = vec![secs.to_string(), "dump-flows".into(), target];
        commands.push(format!("{} (twice, 1s apart)", shown("ovs-ofctl", &args)));
        let first = dumpflows::parse(&run_command("ovs-ofctl", &args, self.cfg.timeout).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = dumpflows::parse(&run_command("ovs-ofctl", &args, self.cfg.timeout).await?);
        let needle = p.dst.to_string();
        let before: Vec<OpenFlow> = dumpflows::mentioning(&first, &needle).into_iter().cloned().collect();
        let after: Vec<OpenFlow> = dumpflows::mentioning(&second, &needle).into_iter().cloned().collect();
        let mut out = dumpflows::diff(&before, after);
        out.truncate(40);
        Ok(out)
    }

    /// The southbound logical flow with this uuid prefix and, for an ACL stage, the ACL.
    async fn logical_flow(&self, prefix: &str, commands: &mut Vec<String>) -> Option<LogicalFlow> {
        let sb = self.cfg.ovn_sb.as_ref()?;
        if !valid_hex_id(prefix) {
            return None;
        }
        let mut args = crate::ovsdb::ssl_args(sb);
        args.extend([
            format!("--db={sb}"),
            format!("--timeout={}", self.cfg.timeout.as_secs().max(1)),
            "--format=json".into(),
            "--columns=_uuid,external_ids,pipeline,table_id,priority,match".into(),
            "list".into(),
            "Logical_Flow".into(),
            prefix.to_string(),
        ]);
        commands.push(shown("ovn-sbctl", &args));
        // No such row (a rule OVN did not make) is an error exit: no logical flow.
        let text = run_command("ovn-sbctl", &args, self.cfg.timeout).await.ok()?;
        let row = first_row(&text)?;
        let ids = json_map(row.get("external_ids"));
        let mut lf = LogicalFlow {
            uuid: json_uuid(row.get("_uuid")),
            stage: ids.get("stage-name").cloned().unwrap_or_default(),
            pipeline: row.get("pipeline").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            table: row.get("table_id").and_then(|v| v.as_i64()).unwrap_or_default(),
            priority: row.get("priority").and_then(|v| v.as_i64()).unwrap_or_default(),
            matches: row.get("match").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            stage_hint: ids.get("stage-hint").cloned(),
            acl: None,
        };
        if lf.stage.contains("_acl")
            && !lf.stage.contains("hint")
            && let (Some(nb), Some(hint)) = (&self.cfg.ovn_nb, lf.stage_hint.clone())
            && valid_hex_id(&hint)
        {
            let mut args = crate::ovsdb::ssl_args(nb);
            args.extend([
                format!("--db={nb}"),
                format!("--timeout={}", self.cfg.timeout.as_secs().max(1)),
                "--format=json".into(),
                "--columns=_uuid,name,external_ids,priority,direction,action,match".into(),
                "list".into(),
                "ACL".into(),
                hint,
            ]);
            commands.push(shown("ovn-nbctl", &args));
            if let Ok(text) = run_command("ovn-nbctl", &args, self.cfg.timeout).await
                && let Some(row) = first_row(&text)
            {
                let ids = json_map(row.get("external_ids"));
                let name = match row.get("name") {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                };
                // Kube-OVN: `policy=<ns>/<name>` and kube-ovn.io/policy-{namespace,name}.
                let network_policy = ids.get("policy").cloned().or_else(|| {
                    Some(format!(
                        "{}/{}",
                        ids.get("kube-ovn.io/policy-namespace")?,
                        ids.get("kube-ovn.io/policy-name")?
                    ))
                });
                lf.acl = Some(AclInfo {
                    uuid: json_uuid(row.get("_uuid")),
                    name,
                    priority: row.get("priority").and_then(|v| v.as_i64()).unwrap_or_default(),
                    direction: row.get("direction").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    action: row.get("action").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    matches: row.get("match").and_then(|v| v.as_str()).unwrap_or_default().into(),
                    network_policy,
                    external_ids: ids,
                });
            }
        }
        Some(lf)
    }

    async fn trace_on_peer(
        &self,
        p: &Packet,
        remote: IpAddr,
        local: IpAddr,
        vni: u32,
        option: Option<&str>,
    ) -> Result<TraceReport, String> {
        let api = crate::client::ApiClient::peer(remote, self.cfg.peer_port).map_err(|e| format!("{e:#}"))?;
        let url = api.url("/api/v1/trace").map_err(|e| format!("{e:#}"))?;
        let mut q: Vec<(&str, String)> = vec![
            ("src", p.src.to_string()),
            ("dst", p.dst.to_string()),
            ("proto", p.proto.as_str().into()),
            ("sport", p.sport.to_string()),
            ("dport", p.dport.to_string()),
            ("ct", if p.established { "est" } else { "new" }.into()),
            ("tun_src", local.to_string()),
            ("tun_dst", remote.to_string()),
            ("tun_id", format!("{vni:#x}")),
        ];
        for (k, v) in
            [("src_mac", &p.src_mac), ("dst_mac", &p.dst_mac), ("tun_opt", &option.map(str::to_string))]
        {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        let (status, body) =
            api.trace(&q, self.cfg.timeout * 3).await.map_err(|e| format!("{url}: {e:#}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", crate::client::error_message(&body)));
        }
        serde_json::from_str(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }
}

/// The packet of a flow kovn saw: its 5-tuple, TCP state (answered: established) and, when
/// it had oversized packets, their size.
pub fn packet_of_flow(f: &crate::flows::Flow) -> Result<Packet, TraceError> {
    #[expect(clippy::map_err_ignore, reason = "the message names the flow, its protocol and the ones traced")]
    let proto = Proto::parse(f.protocol.as_str()).map_err(|_| {
        TraceError::BadInput(format!("flow {} is {}: only tcp, udp and icmp trace", f.id, f.protocol))
    })?;
    Ok(Packet {
        src: f.src_ip,
        dst: f.dst_ip,
        proto,
        sport: if proto == Proto::Icmp { 0 } else { f.src_port },
        dport: if proto == Proto::Icmp { 0 } else { f.dst_port },
        src_mac: None,
        dst_mac: None,
        // Answered (or answered and closed with FINs): the connection was established.
        established: proto == Proto::Tcp
            && matches!(f.state, crate::model::FlowState::Answered | crate::model::FlowState::Closed),
        size: f.mtu.as_ref().map(|m| m.oversized_max_bytes).filter(|b| *b > 0),
    })
}

/// The packet of a finding: its first flow still in `flows`, else its own pair; the largest
/// request of an MTU finding as the size.
pub fn packet_of_alert(
    a: &crate::model::Alert,
    flows: &[Arc<crate::flows::Flow>],
) -> Result<(Packet, Option<String>), TraceError> {
    let size = a.evidence.max_request_bytes.map(|b| b.min(65535) as u32);
    if let Some(f) = a.flows.iter().find_map(|id| flows.iter().find(|f| &f.id == id)) {
        let mut p = packet_of_flow(f)?;
        p.size = p.size.or(size);
        return Ok((p, Some(f.id.clone())));
    }
    // The flows behind it expired: trace the finding's own pair.
    let proto = Proto::parse(&a.protocol)?;
    Ok((
        Packet {
            src: a.src_ip,
            dst: a.dst_ip,
            proto,
            sport: if proto == Proto::Icmp { 0 } else { 40000 },
            dport: if proto == Proto::Icmp { 0 } else { a.dst_port.unwrap_or(0) },
            src_mac: None,
            dst_mac: None,
            established: false,
            size,
        },
        None,
    ))
}

/// The logical flow uuid prefix behind an OpenFlow cookie: ovn-controller (OVN 23.03) sets the
/// cookie to the first 32 bits of the logical flow's uuid, which OVS prints without leading
/// zeros (`0xba6db16` for `0ba6db16-...`). Larger cookies are not OVN's.
pub(super) fn lflow_prefix(cookie: &str) -> Option<String> {
    let v = u64::from_str_radix(cookie.trim_start_matches("0x"), 16).ok()?;
    (v != 0 && v <= u64::from(u32::MAX)).then(|| format!("{v:08x}"))
}

/// `ovn-sbctl --format=json list`: `{"headings": [...], "data": [[...]]}` -> first row by heading.
pub(super) fn first_row(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let heads = v.get("headings")?.as_array()?;
    let row = v.get("data")?.as_array()?.first()?.as_array()?;
    Some(heads.iter().filter_map(|h| h.as_str().map(str::to_string)).zip(row.iter().cloned()).collect())
}

pub(super) fn json_map(v: Option<&serde_json::Value>) -> std::collections::BTreeMap<String, String> {
    crate::ovsdb::map_column(v)
}

pub(super) fn json_uuid(v: Option<&serde_json::Value>) -> String {
    v.map(crate::ovsdb::atom_string).unwrap_or_default()
}

/// The `ofproto/trace` flow: the real in_port, L2/L3/L4 fields, and for the remote half the
/// tunnel metadata OVN's Geneve carries (OVN 23.03: `tun_metadata0` = ingress << 16 | egress
/// port keys, VNI = datapath key).
pub fn ofproto_flow(p: &Packet, in_port: u32, src_mac: &str, dst_mac: &str, t: Option<&TunnelIn>) -> String {
    let mut f = format!("in_port={in_port}");
    if let Some(t) = t {
        let (s, d) = if t.src.is_ipv4() { ("tun_src", "tun_dst") } else { ("tun_ipv6_src", "tun_ipv6_dst") };
        f.push_str(&format!(",tun_id={:#x},{s}={},{d}={}", t.vni, t.src, t.dst));
        if let Some(o) = &t.option {
            f.push_str(&format!(",tun_metadata0={o}"));
        }
    }
    let v6 = p.src.is_ipv6();
    let proto = match (p.proto, v6) {
        (Proto::Tcp, false) => "tcp",
        (Proto::Udp, false) => "udp",
        (Proto::Icmp, false) => "icmp",
        (Proto::Tcp, true) => "tcp6",
        (Proto::Udp, true) => "udp6",
        (Proto::Icmp, true) => "icmp6",
    };
    let (s, d) = if v6 { ("ipv6_src", "ipv6_dst") } else { ("nw_src", "nw_dst") };
    f.push_str(&format!(",{proto},dl_src={src_mac},dl_dst={dst_mac},{s}={},{d}={},nw_ttl=64", p.src, p.dst));
    match (p.proto, v6) {
        (Proto::Icmp, false) => f.push_str(",icmp_type=8,icmp_code=0"),
        (Proto::Icmp, true) => f.push_str(",icmpv6_type=128,icmpv6_code=0"),
        (Proto::Tcp, _) => f.push_str(&format!(
            ",tp_src={},tp_dst={},tcp_flags={}",
            p.sport,
            p.dport,
            if p.established { "ack" } else { "syn" }
        )),
        // OVS 3.1 maps `tp_src` to the TCP field only ("prerequisites not met" with udp).
        (Proto::Udp, _) => f.push_str(&format!(",udp_src={},udp_dst={}", p.sport, p.dport)),
    }
    f
}

/// The `ovn-trace` microflow of the same packet from the pod's logical switch port.
pub fn ovn_microflow(p: &Packet, inport: &str, src_mac: &str, dst_mac: &str) -> String {
    let (ip, icmp) = if p.src.is_ipv4() { ("ip4", "icmp4") } else { ("ip6", "icmp6") };
    // `ip.ttl` is OVN's field for the IPv4 TTL and the IPv6 hop limit alike.
    let ttl = "ip.ttl == 64";
    let l4 = match p.proto {
        Proto::Tcp => format!("tcp && tcp.src == {} && tcp.dst == {}", p.sport, p.dport),
        Proto::Udp => format!("udp && udp.src == {} && udp.dst == {}", p.sport, p.dport),
        Proto::Icmp if p.src.is_ipv4() => format!("{icmp} && {icmp}.type == 8"),
        Proto::Icmp => format!("{icmp} && {icmp}.type == 128"),
    };
    format!(
        "inport == \"{inport}\" && eth.src == {src_mac} && eth.dst == {dst_mac} && {ip}.src == {} && {ip}.dst == {} && {ttl} && {l4}",
        p.src, p.dst
    )
}
