//! The trace report's one-line verdict: the rule that decided, in words. It stays beside the
//! tracer (not in `detection::verdict`): it reads the trace report and the tracer's facts, and
//! moving it would make detection depend on the drill-down's types.

use super::tracer::Facts;
use super::*;

fn port_words(ports: &[OvsPort], ofport: u32, remote_node: Option<&str>) -> String {
    match ports.iter().find(|x| x.ofport == ofport) {
        Some(OvsPort { pod: Some(pod), name, .. }) => format!("pod {pod}'s port {name}"),
        Some(OvsPort { remote_ip: Some(ip), name, .. }) => {
            format!("tunnel port {name} towards {}", remote_node.map_or(ip.to_string(), str::to_string))
        }
        Some(x) => format!("port {} ({})", x.name, ofport),
        None => format!("OpenFlow port {ofport}"),
    }
}

pub(super) fn describe_outcome(o: &Outcome, facts: &Facts) -> String {
    match o {
        Outcome::Drop => "drop".into(),
        Outcome::Output { ofport: Some(n), .. } => {
            format!("output to {}", port_words(&facts.ports, *n, facts.remote_node.as_deref()))
        }
        Outcome::Output { datapath_port, .. } => format!("output to datapath port {datapath_port}"),
        Outcome::TunnelPush { remote_ip, vni, .. } => {
            let ip = remote_ip.map_or("?".to_string(), |i| i.to_string());
            let node = facts.remote_node.clone().unwrap_or_else(|| ip.clone());
            match vni {
                Some(v) => format!("tunnel push towards {node} ({ip}, VNI {v})"),
                None => format!("tunnel push towards {node} ({ip})"),
            }
        }
        Outcome::Other { actions } if actions.is_empty() => "no datapath actions".into(),
        Outcome::Other { actions } => format!("datapath actions {actions}"),
    }
}

/// `ACL 'name' of NetworkPolicy ns/name`, or the logical stage, for a logical flow.
fn lflow_words(lf: &LogicalFlow) -> String {
    match &lf.acl {
        Some(acl) => {
            let name = acl.name.clone().unwrap_or_else(|| acl.uuid.chars().take(8).collect());
            match &acl.network_policy {
                Some(np) => format!("ACL '{name}' of NetworkPolicy {np}"),
                None => format!("ACL '{name}' ({} {} priority {})", acl.direction, acl.action, acl.priority),
            }
        }
        None if lf.stage.contains("_acl") => {
            format!("OVN ACL stage {} (priority {}, match {})", lf.stage, lf.priority, lf.matches)
        }
        None => format!("OVN stage {}", lf.stage),
    }
}

/// This node's half in words, without the node name.
fn half(r: &TraceReport) -> String {
    if let Some(d) = &r.deciding_rule {
        let mut s = if d.no_match {
            format!("dropped by table {} (no rule matched)", d.table)
        } else {
            format!(
                "dropped by table {}, priority {}, cookie {}",
                d.table,
                d.priority.map_or("?".into(), |p| p.to_string()),
                d.cookie.as_deref().unwrap_or("0")
            )
        };
        match &d.logical_flow {
            Some(lf) => s.push_str(&format!(", {}", lflow_words(lf))),
            None if !d.no_match => s.push_str(&format!(
                " (rule {} actions={}; not an OVN logical flow)",
                d.matches,
                d.actions.join(",")
            )),
            None => {}
        }
        return s;
    }
    r.result.replace("output to ", "delivered to ")
}

pub(super) fn verdict(r: &TraceReport, facts: &Facts) -> String {
    let node = &r.node;
    let ofp = r.ofproto_trace.as_ref().map(|t| &t.outcome);
    if let Some(m) = &r.mtu
        && !m.fits
    {
        let to = facts.remote_node.clone().unwrap_or_else(|| "the other node".into());
        return format!(
            "MTU: a {}-byte packet would be sent to the tunnel towards {to} at {} bytes ({} of encapsulation), \
             underlay MTU {} ({} on {node})",
            m.packet_bytes, m.outer_bytes, m.tunnel_header_bytes, m.underlay_mtu, m.underlay_iface
        );
    }
    let mut v = match ofp {
        Some(Outcome::TunnelPush { .. }) if r.tunnel_in.is_none() => {
            let mut s = format!("{} on {node}", r.result.replacen("tunnel push", "output to tunnel", 1));
            match (&r.remote, &r.remote_error) {
                (Some(rem), _) => s.push_str(&format!(", then on {} {}", rem.node, half(rem))),
                (None, Some(e)) => s.push_str(&format!("; the destination node's half is unknown: {e}")),
                (None, None) => {}
            }
            s
        }
        // OVS 3.1's ofproto/trace does not follow a `hash(...)` recirculation (OVN's load
        // balancer select groups with dp_hash): say so instead of naming a result.
        Some(Outcome::Other { actions }) if actions.contains("recirc(") => {
            let mut s = format!(
                "the OVS trace on {node} stops at {actions} (a recirculation ofproto/trace does not follow, \
                 e.g. a load-balancer group)"
            );
            if let Some(OvnTrace { outcome: OvnOutcome::Output { port }, .. }) = &r.ovn_trace {
                s.push_str(&format!("; ovn-trace: output to {port}"));
            }
            s
        }
        _ => format!("{} on {node}", half(r)),
    };
    // The logical view, when it names an ACL drop that OpenFlow's verdict does not.
    if let Some(OvnTrace { outcome: OvnOutcome::Drop { stage }, .. }) = &r.ovn_trace
        && !v.contains("ACL '")
    {
        match r.ovn_acls.iter().find(|lf| lf.uuid.starts_with(&stage.uuid)) {
            Some(lf) => v.push_str(&format!("; ovn-trace: dropped by {}", lflow_words(lf))),
            None => v.push_str(&format!(
                "; ovn-trace: dropped in {} (priority {}, {})",
                stage.name, stage.priority, stage.matches
            )),
        }
    }
    v
}
