//! Verdicts: where the packets of a finding stop, and what to run next there. All verdict
//! logic of the detectors lives here: the path verdict ([`verdict`], from this node's
//! observation points and the peer's view), drop bursts' ([`drop_verdict`]) and the commands
//! ([`next_commands`]). Drops inside a pod are named by `crate::drops::pod_drop_verdict`,
//! which the daemon applies on top (it needs the peer's flow).

use crate::flows::Flow;
use crate::inventory::{Endpoint, EndpointKind};
use crate::model::{
    AlertKind, Direction as HookDirection, DropDirection, DropLocation, FlowDirection, IfaceKind, Protocol,
    Scenario,
};

use super::{Alert, Verdict, who};
use crate::model::{Hop, PeerView};

/// Where a drop burst happens and what to look at, by the kernel's reason.
pub(super) fn drop_verdict(reason: &str, interface: &str, location: IfaceKind, node: &str) -> Verdict {
    let why = match reason {
        "NETFILTER_DROP" => {
            "a netfilter rule (iptables/nftables: the node's firewall, kube-proxy or a NetworkPolicy implemented there)"
        }
        // OVS's own reasons (`enum ovs_drop_reason`, Linux >= 6.4).
        r if r.starts_with("OVS_DROP_") => ovs_drop_cause(r),
        "PKT_TOO_BIG" | "PKT_TOO_SMALL" => "packet size (MTU)",
        "NO_SOCKET" | "SOCKET_FILTER" | "TCP_INVALID_SEQUENCE" | "TCP_OLD_DATA" => {
            "the local stack (no listener, or stale TCP)"
        }
        "QDISC_DROP" | "FULL_RING" | "CPU_BACKLOG" | "TC_DROP" => "queueing or a tc program on the interface",
        "IP_RPFILTER" | "IP_INADDRERRORS" | "IP_INNOROUTES" | "IP_NOPROTO" => {
            "routing on the node (rp_filter, no route, bad address)"
        }
        _ => "the kernel on this node",
    };
    let mut next_commands =
        vec![format!("ip -s link show {interface}"), format!("tcpdump -c 20 -nei {interface}")];
    match reason {
        "NETFILTER_DROP" => next_commands.insert(0, "nft list ruleset".to_string()),
        r if r.starts_with("OVS_DROP_") => {
            next_commands.insert(0, "ovs-appctl dpctl/dump-flows -m".to_string());
            next_commands.insert(1, "ovs-ofctl dump-flows br-int | grep -i drop".to_string());
        }
        _ => {}
    }
    Verdict {
        hop: Hop::dropped_at(location),
        summary: format!(
            "the kernel on {node} drops packets on {interface} ({location}) with reason {reason}: {why}"
        ),
        next_commands,
    }
}

/// How to phrase the next commands on this node: where OVN's southbound is, how to reach
/// br-int, and whether the monitor runs in a named network namespace (the lab).
#[derive(Clone, Debug, Default)]
pub struct CommandContext {
    /// `ovn-trace --db=...` argument, when the southbound is known.
    pub ovn_sb: Option<String>,
    /// The OpenFlow target of br-int: `br-int`, or `unix:<rundir>/br-int.mgmt`.
    pub br_int: String,
    /// `ip netns exec <name>` prefix when this monitor runs in a named namespace.
    pub netns: Option<String>,
    /// The logical switch pods sit on (Kube-OVN's default subnet: `ovn-default`).
    pub logical_switch: String,
}

/// Per-endpoint facts the commands need (from the inventory).
#[derive(Clone, Debug, Default)]
pub struct EndpointFacts {
    pub mac: Option<String>,
    pub host_iface: Option<String>,
}

fn seen(f: &Flow, kind: IfaceKind, direction: HookDirection, flow_direction: FlowDirection) -> bool {
    f.interfaces
        .iter()
        .any(|i| i.kind == kind && i.direction == direction && i.flow_direction == flow_direction)
}

fn iface_of(
    f: &Flow,
    kind: IfaceKind,
    direction: HookDirection,
    flow_direction: FlowDirection,
) -> Option<&str> {
    f.interfaces
        .iter()
        .find(|i| i.kind == kind && i.direction == direction && i.flow_direction == flow_direction)
        .map(|i| i.name.as_str())
}

/// What an `OVS_DROP_*` reason (the OVS kernel datapath's own drop reasons, Linux >= 6.4:
/// `net/openvswitch/drop.h`) says about the cause.
fn ovs_drop_cause(reason: &str) -> &'static str {
    match reason {
        "OVS_DROP_LAST_ACTION" => {
            "the datapath flow ended without output: an OpenFlow drop, an ACL/NetworkPolicy or no matching flow"
        }
        "OVS_DROP_EXPLICIT" | "OVS_DROP_EXPLICIT_WITH_ERROR" => {
            "an explicit drop action: an OpenFlow drop or an ACL/NetworkPolicy"
        }
        "OVS_DROP_ACTION_ERROR" => "an action failed",
        "OVS_DROP_METER" => "a meter: a QoS rate limit on the port",
        "OVS_DROP_RECURSION_LIMIT" | "OVS_DROP_DEFERRED_LIMIT" => {
            "too many recirculations or deferred actions"
        }
        "OVS_DROP_FRAG_L2_TOO_LONG" | "OVS_DROP_FRAG_INVALID_PROTO" => "fragmentation on output",
        "OVS_DROP_CONNTRACK" => "conntrack refused it (invalid state, zone limit)",
        "OVS_DROP_IP_TTL" => "its TTL ran out",
        _ => "the OVS kernel datapath",
    }
}

/// The OVS kernel datapath's drops of this flow's requests on `node`, as a clause to end a
/// verdict with (empty when there are none): `; OVS's kernel datapath on node2 dropped 3 of
/// them with reason OVS_DROP_LAST_ACTION (...)`. Only kernels >= 6.4 name these drops (older
/// ones free the packet as consumed, so nothing is recorded there); the reason with most
/// packets is named.
fn ovs_dropped(f: &Flow, node: &str) -> String {
    let top = f
        .drops
        .iter()
        .filter(|d| {
            d.reason.starts_with("OVS_DROP")
                && d.location == DropLocation::Node
                && d.direction != Some(DropDirection::Reply)
        })
        .max_by_key(|d| d.count);
    match top {
        Some(d) => format!(
            "; OVS's kernel datapath on {node} dropped {} of them with reason {} ({})",
            d.count,
            d.reason,
            ovs_drop_cause(&d.reason)
        ),
        None => String::new(),
    }
}

/// Where the kernel freed this flow's big packets (named by the function that freed them, which
/// needs the monitor to read kernel addresses), as a clause for an MTU verdict. In OVS's kernel
/// datapath that is an output port smaller than the packet (`ovs_vport_send`, which logs
/// "dropped over-mtu packet"; its drop is a tail call, so the site is its caller's).
fn mtu_drop_site(f: &Flow, node: &str) -> String {
    let top = f
        .drops
        .iter()
        .filter(|d| d.kernel_function.is_some() && d.direction != Some(DropDirection::Reply))
        .max_by_key(|d| d.count);
    let Some(d) = top else { return String::new() };
    let func = d.kernel_function.as_deref().unwrap_or_default();
    if d.in_ovs_datapath() {
        format!(
            "; OVS's kernel datapath on {node} dropped {} of them (freed in {func}; a packet larger than its output port's MTU is logged by the kernel as 'dropped over-mtu packet')",
            d.count
        )
    } else {
        format!("; the kernel on {node} freed {} of them in {func}", d.count)
    }
}

fn l4_match(f: &Flow) -> String {
    match f.protocol {
        Protocol::Tcp => format!(" && tcp && tcp.dst == {}", f.dst_port),
        Protocol::Udp => format!(" && udp && udp.dst == {}", f.dst_port),
        Protocol::Icmp => " && icmp4 && icmp4.type == 8".into(),
        _ => String::new(),
    }
}

/// The seeds' next steps for this flow: ovn-trace with the observed packet, the br-int flows
/// for the destination, tcpdump on the named veth, the policies.
pub fn next_commands(
    a: &Alert,
    f: &Flow,
    ctx: &CommandContext,
    src: &EndpointFacts,
    dst: &EndpointFacts,
) -> Vec<String> {
    let prefix = ctx.netns.as_ref().map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    let mut cmds = Vec::new();
    if let (Some(Endpoint { namespace: Some(ns), pod: Some(pod), .. }), true) = (&a.src, f.src_ip.is_ipv4()) {
        let mut m = format!("inport == \"{pod}.{ns}\"");
        if let Some(mac) = &src.mac {
            m.push_str(&format!(" && eth.src == {mac}"));
        }
        if let Some(mac) = &dst.mac {
            m.push_str(&format!(" && eth.dst == {mac}"));
        }
        m.push_str(&format!(
            " && ip4.src == {} && ip4.dst == {} && ip.ttl == 64{}",
            f.src_ip,
            f.dst_ip,
            l4_match(f)
        ));
        let db = ctx.ovn_sb.as_ref().map(|d| format!(" --db={d}")).unwrap_or_default();
        cmds.push(format!("ovn-trace{db} {} '{m}'", ctx.logical_switch));
        let port = if f.protocol == Protocol::Icmp { String::new() } else { format!(" {}", f.dst_port) };
        cmds.push(format!("kubectl ko trace {ns}/{pod} {} {}{port}", f.dst_ip, f.protocol));
    }
    cmds.push(format!("{prefix}ovs-ofctl dump-flows {} ip,nw_dst={}", ctx.br_int, f.dst_ip));
    let veth = dst.host_iface.clone().or_else(|| src.host_iface.clone());
    if let Some(v) = veth {
        cmds.push(format!("{prefix}tcpdump -nn -i {v} host {} and host {}", f.src_ip, f.dst_ip));
    }
    if let Some(Endpoint { namespace: Some(ns), .. }) = &a.dst {
        cmds.push(format!("kubectl get networkpolicy -n {ns}"));
    }
    cmds
}

/// Where the requests of a finding stop, from this node's observation points and, for
/// cross-node flows, what the destination's node saw.
/// `underlay_watched`: this node watches its NIC as the underlay, so a cross-node request
/// that was never seen leaving through it never left the node.
/// For a service connection whose backend is known (`a.backend`), `f` is the post-DNAT flow
/// (towards the backend) and `peer` the backend node's view of it: the backend's path is
/// judged exactly like a pod-to-pod one.
pub fn verdict(a: &Alert, f: &Flow, peer: Option<&PeerView>, underlay_watched: bool) -> (Hop, String) {
    let src = who(a.src.as_ref(), a.src_ip);
    let dst = match (&a.backend, a.dst.as_ref().filter(|d| d.kind == EndpointKind::Service)) {
        (Some(b), _) => format!(
            "{} (backend of service {})",
            who(b.pod.as_ref(), b.ip),
            b.service.as_deref().unwrap_or("?")
        ),
        (None, Some(svc)) => format!("service {}", svc.service.as_deref().unwrap_or("?")),
        _ => who(a.dst.as_ref(), a.dst_ip),
    };
    let node = &a.node;
    let remote =
        f.tunnel.as_ref().and_then(|t| t.remote_node.clone()).unwrap_or_else(|| "the other node".into());
    let hop = |h: Hop, s: String| (h, s);
    match a.kind {
        AlertKind::ConnectionRefused => {
            return hop(
                Hop::RefusedByDestination,
                format!(
                    "{dst} answered port {} with a TCP reset: nothing listens there, or a firewall rejects",
                    f.dst_port
                ),
            );
        }
        AlertKind::Mtu if a.scenario == Scenario::PodToPodSameNode => {
            // No tunnel between them: the packet dies where it would enter the destination's
            // port, whose MTU is smaller than the sender's (the seeds' 1400 vs 1500).
            return hop(
                Hop::LostBeforeDestinationPod,
                format!(
                    "packets of {} bytes from {src} to {dst} on the same node get no answer while smaller ones do: larger than {dst}'s MTU; compare the two pods' MTUs (eth0 inside each pod, and its host veth){}",
                    a.evidence.max_request_bytes.unwrap_or_default(),
                    mtu_drop_site(f, node)
                ),
            );
        }
        AlertKind::Mtu => {
            let mtu = a.evidence.path_mtu.map(|m| format!(" ({m})")).unwrap_or_default();
            return hop(
                Hop::LostInTunnel,
                format!(
                    "packets of {} bytes from {src} get no answer while smaller ones do: larger than the overlay path MTU{mtu}; compare the pod MTU with the underlay MTU minus the tunnel overhead (Geneve 100){}",
                    a.evidence.max_request_bytes.unwrap_or_default(),
                    mtu_drop_site(f, node)
                ),
            );
        }
        _ => {}
    }
    if let Some(svc) = a.dst.as_ref().filter(|d| d.kind == EndpointKind::Service && d.backends.is_empty()) {
        return hop(
            Hop::NoBackends,
            format!(
                "{src} sends to service {} ({}:{}), which has no backends: no ready endpoints (EndpointSlices) or an empty OVN load balancer",
                svc.service.as_deref().unwrap_or("?"),
                a.dst_ip,
                f.dst_port
            ),
        );
    }
    if a.backend.is_none() && a.dst.as_ref().is_some_and(|d| d.kind == EndpointKind::Service) {
        // The load balancer's choice shows on the wire (underlay) for a backend on another
        // node and on the backend's veth for one here: with the underlay watched, neither
        // means the request died in this node's br-int, at or after the load balancer (an
        // ACL/NetworkPolicy evaluated here on the DNATed packet, a flow-table drop). Which
        // backend conntrack chose is then not visible to the kernel hooks.
        if underlay_watched && seen(f, IfaceKind::Pod, HookDirection::Ingress, FlowDirection::Fwd) {
            return hop(
                Hop::NeverLeftSource,
                format!(
                    "the request from {src} to {dst} ({}:{}) never left {node}: no packet towards any of its backends went out on the wire or reached a backend's veth here; dropped in OVS br-int on {node} at or after the load balancer (ACL/NetworkPolicy, flow tables); {}{}",
                    a.dst_ip,
                    f.dst_port,
                    crate::model::CONNTRACK_BACKEND_HINT,
                    ovs_dropped(f, node)
                ),
            );
        }
        return hop(
            Hop::Unknown,
            format!(
                "the request left {src} for {dst} ({}:{}) on {node}; no reply came back, and no packet towards one of its backends was seen on {node}: dropped before or in the load balancer (OVS br-int), or the backend is on this node and the request never reached its veth",
                a.dst_ip, f.dst_port
            ),
        );
    }
    let delivered_here = seen(f, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd);
    if f.scenario != Scenario::PodToPodCrossNode {
        return if delivered_here {
            let v =
                iface_of(f, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd).unwrap_or("its veth");
            hop(
                Hop::NoReplyFromDestination,
                format!(
                    "the request reached {dst} ({v} on {node}); no reply came back: {dst} itself (application, firewall) or its policy"
                ),
            )
        } else if f
            .dst
            .as_ref()
            .is_some_and(|d| d.kind == EndpointKind::Pod && d.node.as_deref() == Some(node.as_str()))
        {
            hop(
                Hop::LostBeforeDestinationPod,
                format!(
                    "the request left {src} but never reached {dst}'s veth on {node}: dropped in OVS br-int on {node} (ACL/NetworkPolicy, flow tables){}",
                    ovs_dropped(f, node)
                ),
            )
        } else {
            hop(Hop::Unknown, format!("the request left {src} on {node}; no reply came back"))
        };
    }
    if underlay_watched && !seen(f, IfaceKind::Underlay, HookDirection::Egress, FlowDirection::Fwd) {
        return hop(
            Hop::NeverLeftSource,
            format!(
                "the request from {src} never left {node} for {remote}: dropped on {node} before the wire, in OVS br-int (ACL/NetworkPolicy, flow tables) or by the node's own firewall on its NIC{}",
                ovs_dropped(f, node)
            ),
        );
    }
    let left = if underlay_watched {
        format!("left {node} in the tunnel to {remote}")
    } else {
        format!("left {src} on {node}")
    };
    match peer {
        Some(PeerView::Seen(Some(pf))) => {
            if pf.packets_rev > 0 {
                hop(
                    Hop::LostInTunnel,
                    format!(
                        "the request {left} and {dst} on {remote} replied, but the reply never came back: loss between {remote} and {node} (tunnel, underlay)"
                    ),
                )
            } else if seen(pf, IfaceKind::Pod, HookDirection::Egress, FlowDirection::Fwd) {
                hop(
                    Hop::NoReplyFromDestination,
                    format!(
                        "the request {left} and reached {dst} on {remote}; no reply: {dst} itself (application, firewall) or its policy"
                    ),
                )
            } else {
                hop(
                    Hop::LostBeforeDestinationPod,
                    format!(
                        "the request {left} and arrived on {remote}, but was not delivered to {dst}: dropped in OVS br-int on {remote} (ACL/NetworkPolicy, flow tables){}",
                        ovs_dropped(pf, &remote)
                    ),
                )
            }
        }
        Some(PeerView::Firewalled(d)) => hop(
            Hop::TunnelBlockedByFirewall,
            format!(
                "the request {left}; it was not delivered on {remote}: the firewall on {remote} drops the tunnel's packets from {node} ({} encapsulated packet(s) dropped by netfilter on {}); allow the tunnel's UDP port (Geneve 6081, VXLAN 4789) between the nodes",
                d.count, d.interface
            ),
        ),
        Some(PeerView::Seen(None)) => hop(
            Hop::LostInTunnel,
            format!(
                "the request {left}; it never arrived on {remote}: loss in the underlay or tunnel between {node} and {remote}"
            ),
        ),
        Some(PeerView::Unreachable(why)) => hop(
            Hop::Unknown,
            format!(
                "the request {left}; {remote}'s monitor could not be asked ({why}): check the tunnel and {dst} there"
            ),
        ),
        None => hop(Hop::Unknown, format!("the request {left}; no reply came back")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn verdicts_name_the_hop() {
        let mut d = detector();
        let delivered = same("a", (2, 0, 0), "db-1", true);
        let a = d.evaluate(std::slice::from_ref(&delivered), at(5)).remove(0);
        assert_eq!(verdict(&a, &delivered, None, true).0, "no_reply_from_destination");
        let lost = same("b", (2, 0, 0), "db-1", false);
        assert_eq!(verdict(&a, &lost, None, true).0, "lost_before_destination_pod");

        let x = cross("x", (2, 0, 0), "db-2");
        let a = d
            .evaluate(std::slice::from_ref(&x), at(5))
            .into_iter()
            .find(|a| a.scenario == "pod_to_pod_cross_node")
            .expect("cross");
        let mut stuck = x.clone();
        stuck.interfaces.retain(|i| i.kind == "pod");
        stuck.interfaces.push(serde_json::from_value(iface("underlay", "ingress", "rev")).expect("iface"));
        assert_eq!(verdict(&a, &stuck, None, true).0, "never_left_source");
        let (hop, summary) = verdict(&a, &x, Some(&PeerView::Seen(None)), true);
        assert_eq!(hop, "lost_in_tunnel");
        assert!(summary.contains("never arrived on node2"), "{summary}");
        let mut at_peer = x.clone();
        at_peer.interfaces =
            vec![serde_json::from_value(iface("underlay", "ingress", "fwd")).expect("iface")];
        assert_eq!(
            verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer.clone())))), true).0,
            "lost_before_destination_pod"
        );
        at_peer.interfaces.push(serde_json::from_value(iface("pod", "egress", "fwd")).expect("iface"));
        assert_eq!(
            verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer.clone())))), true).0,
            "no_reply_from_destination"
        );
        at_peer.packets_rev = 2;
        assert_eq!(verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer)))), true).0, "lost_in_tunnel");
        assert_eq!(verdict(&a, &x, Some(&PeerView::Unreachable("timeout".into())), true).0, "unknown");
        // The peer never saw it and its firewall drops our tunnel packets: that is the cause.
        let fw = crate::model::DropEvidence {
            reason: "NETFILTER_DROP".into(),
            interface: "eth0".into(),
            location: IfaceKind::Unknown,
            count: 9,
        };
        let (hop, summary) = verdict(&a, &x, Some(&PeerView::Firewalled(fw)), true);
        assert_eq!(hop, "tunnel_blocked_by_firewall");
        assert!(summary.contains("the firewall on node2") && summary.contains("9 encapsulated"), "{summary}");
    }

    /// The OVS kernel datapath's own drop reason (Linux >= 6.4) on the peer's flow, or on this
    /// node's, ends the verdict; a reply's drops or another reason do not.
    #[test]
    fn ovs_kernel_datapath_drops_are_named_in_the_verdict() {
        let mut d = detector();
        let x = cross("x", (3, 0, 0), "db-2");
        let a = d
            .evaluate(std::slice::from_ref(&x), at(5))
            .into_iter()
            .find(|a| a.scenario == "pod_to_pod_cross_node")
            .expect("cross");
        let drop = |reason: &str, direction: &str, count: u64| -> crate::model::FlowDrop {
            serde_json::from_value(
                serde_json::json!({"reason": reason, "count": count, "direction": direction}),
            )
            .expect("flow drop")
        };
        let mut at_peer = x.clone();
        at_peer.interfaces =
            vec![serde_json::from_value(iface("underlay", "ingress", "fwd")).expect("iface")];
        at_peer.drops = vec![drop("NO_SOCKET", "request", 9), drop("OVS_DROP_LAST_ACTION", "request", 3)];
        let (hop, summary) = verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer.clone())))), true);
        assert_eq!(hop, "lost_before_destination_pod");
        assert!(
            summary.ends_with(
                "OVS's kernel datapath on node2 dropped 3 of them with reason OVS_DROP_LAST_ACTION (the datapath flow ended without output: an OpenFlow drop, an ACL/NetworkPolicy or no matching flow)"
            ),
            "{summary}"
        );
        at_peer.drops = vec![drop("OVS_DROP_METER", "reply", 4)];
        let (_, summary) = verdict(&a, &x, Some(&PeerView::Seen(Some(Box::new(at_peer)))), true);
        assert!(!summary.contains("OVS_DROP"), "a reply's drops are not the request's: {summary}");
        // This node's own datapath dropped the request before the wire.
        let mut stuck = x.clone();
        stuck.interfaces.retain(|i| i.kind == "pod");
        stuck.drops = vec![drop("OVS_DROP_METER", "both", 5)];
        let (hop, summary) = verdict(&a, &stuck, None, true);
        assert_eq!(hop, "never_left_source");
        assert!(
            summary
                .contains("on node1 dropped 5 of them with reason OVS_DROP_METER (a meter: a QoS rate limit"),
            "{summary}"
        );
    }

    /// An MTU finding whose big packets the kernel freed in a function the monitor could name
    /// says where (OVS's datapath by its module); without a name (no `CAP_SYSLOG`) the verdict
    /// is as before.
    #[test]
    fn the_mtu_verdict_names_where_the_kernel_freed_the_big_packets() {
        use super::super::{Detector, DetectorConfig};
        let mut d = Detector::new("node1", DetectorConfig { pod_mtu: Some(1400), ..Default::default() });
        let mut big = cross("big", (3, 0, 0), "db-2");
        big.protocol = "icmp".into();
        big.bytes_fwd = 3 * 1500;
        let mut small = cross("small", (3, 3, 3), "db-2");
        small.protocol = "icmp".into();
        let a = d.evaluate(&[big.clone(), small], at(5)).into_iter().find(|a| a.kind == "mtu").expect("mtu");
        let (hop, plain) = verdict(&a, &big, None, true);
        assert_eq!(hop, "lost_in_tunnel");
        assert!(!plain.contains("freed"), "{plain}");
        let drop = |function: Option<&str>, count: u64| -> crate::model::FlowDrop {
            serde_json::from_value(serde_json::json!({
                "reason": "NOT_SPECIFIED", "count": count, "kernel_function": function
            }))
            .expect("flow drop")
        };
        big.drops =
            vec![drop(Some("do_execute_actions+0x2a1 [openvswitch]"), 7), drop(Some("ip_rcv_core+0x20"), 3)];
        let (_, summary) = verdict(&a, &big, None, true);
        assert!(
            summary.ends_with(
                "; OVS's kernel datapath on node1 dropped 7 of them (freed in do_execute_actions+0x2a1 [openvswitch]; a packet larger than its output port's MTU is logged by the kernel as 'dropped over-mtu packet')"
            ),
            "{summary}"
        );
        big.drops = vec![drop(Some("ip_fragment+0x1c"), 2)];
        assert!(
            verdict(&a, &big, None, true)
                .1
                .ends_with("; the kernel on node1 freed 2 of them in ip_fragment+0x1c")
        );
        big.drops = vec![drop(None, 3)];
        assert_eq!(verdict(&a, &big, None, true).1, plain, "no function, no claim");
    }

    #[test]
    fn next_commands_carry_the_observed_packet() {
        let mut d = detector();
        let f = cross("x", (2, 0, 0), "db-2");
        let a = d.evaluate(std::slice::from_ref(&f), at(5)).remove(0);
        let ctx = CommandContext {
            ovn_sb: Some("unix:/run/kovn-lab/kovn/central/sb.sock".into()),
            br_int: "unix:/run/kovn-lab/kovn/node1/br-int.mgmt".into(),
            netns: Some("kovn-node1".into()),
            logical_switch: "ovn-default".into(),
        };
        let src = EndpointFacts {
            mac: Some("0a:00:00:00:00:01".into()),
            host_iface: Some("abc000000001_h".into()),
        };
        let cmds = next_commands(&a, &f, &ctx, &src, &EndpointFacts::default());
        assert_eq!(
            cmds[0],
            "ovn-trace --db=unix:/run/kovn-lab/kovn/central/sb.sock ovn-default 'inport == \"web-1.default\" && eth.src == 0a:00:00:00:00:01 && ip4.src == 10.16.0.2 && ip4.dst == 10.16.0.5 && ip.ttl == 64 && tcp && tcp.dst == 8080'"
        );
        assert_eq!(cmds[1], "kubectl ko trace default/web-1 10.16.0.5 tcp 8080");
        assert_eq!(
            cmds[2],
            "ip netns exec kovn-node1 ovs-ofctl dump-flows unix:/run/kovn-lab/kovn/node1/br-int.mgmt ip,nw_dst=10.16.0.5"
        );
        assert!(
            cmds[3].starts_with("ip netns exec kovn-node1 tcpdump -nn -i abc000000001_h host 10.16.0.2"),
            "{cmds:?}"
        );
        assert_eq!(cmds[4], "kubectl get networkpolicy -n shop");
    }
}
