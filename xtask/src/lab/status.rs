//! `lab status`: what the lab is and whether its processes run.

use std::fmt::Write as _;

use super::model::{Daemon, Lab};
use super::{monitors, sys};

/// Each daemon of the lab with its pid when it runs.
pub fn health(lab: &Lab) -> Vec<(Daemon, Option<i32>)> {
    lab.daemons()
        .into_iter()
        .map(|d| {
            let pid = sys::live_pid(&d.pidfile, d.comm);
            (d, pid)
        })
        .collect()
}

/// True when every daemon runs.
pub fn healthy(lab: &Lab) -> bool {
    health(lab).iter().all(|(_, pid)| pid.is_some())
}

fn state(pid: Option<i32>) -> String {
    pid.map_or_else(|| "DEAD".to_string(), |p| format!("pid {p}"))
}

/// The human-readable status report.
pub fn render(lab: &Lab) -> String {
    let health = health(lab);
    let daemons_of = |owner: &str| -> String {
        health
            .iter()
            .filter(|(d, _)| d.owner == owner)
            .map(|(d, pid)| format!("{} {}", d.role, state(*pid)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let dead = health.iter().filter(|(_, p)| p.is_none()).count();
    let mons = monitors::running(lab);
    let dead_mons = mons.iter().filter(|(_, p)| p.is_none()).count();
    let _ = writeln!(
        out,
        "lab {} ({:?}{}{}): {} tunnel, underlay {} on bridge {} (root netns {}), MTU {}",
        lab.name,
        lab.phase,
        if dead > 0 { format!(", {dead} processes DEAD") } else { String::new() },
        if dead_mons > 0 { format!(", {dead_mons} monitors DEAD") } else { String::new() },
        lab.tunnel.as_str(),
        lab.underlay.cidr,
        lab.underlay.bridge,
        lab.underlay.host_ip,
        lab.underlay.mtu
    );
    let _ = writeln!(out, "state: {}", lab.state_dir.display());
    let _ = writeln!(
        out,
        "central: nb {}  sb {}\n  {}",
        lab.central.nb_db(),
        lab.central.sb_db(),
        daemons_of("central")
    );
    let _ = writeln!(out, "nodes:");
    for n in &lab.nodes {
        let _ = writeln!(
            out,
            "  {:<7} {:<15} netns {:<14} vswitchd {}\n          {}",
            n.name,
            n.ip,
            n.netns,
            n.vswitchd_ctl.display(),
            daemons_of(&n.name)
        );
    }
    let _ = writeln!(out, "pods:");
    let _ = writeln!(
        out,
        "  {:<18} {:<8} {:<6} {:<11} {:<17} {:<14} {:>6} {:>5}  servers",
        "POD", "WORKLOAD", "NODE", "IP", "MAC", "HOST VETH", "OFPORT", "MTU"
    );
    for p in &lab.pods {
        let _ = writeln!(
            out,
            "  {:<18} {:<8} {:<6} {:<11} {:<17} {:<14} {:>6} {:>5}  {}",
            p.qualified_name(),
            p.workload,
            p.node,
            p.ip,
            p.mac,
            p.host_veth,
            p.ofport.map_or("-".into(), |o| o.to_string()),
            p.mtu,
            daemons_of(&p.qualified_name())
        );
    }
    let _ = writeln!(out, "services:");
    for s in &lab.services {
        let backends: Vec<String> = s.backends.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {}/{} {}/{} -> {} ({})",
            s.namespace,
            s.name,
            s.vip_addr(),
            s.protocol.as_str(),
            backends.join(", "),
            s.load_balancer
        );
    }
    if mons.is_empty() {
        let _ = writeln!(out, "monitors: none (cargo xtask lab monitors start --name {})", lab.name);
    } else {
        let _ = writeln!(out, "monitors:");
        for (m, pid) in &mons {
            let state = pid.map_or_else(|| format!("DEAD (was pid {})", m.pid), |p| format!("pid {p}"));
            let _ = writeln!(out, "  {:<7} {:<28} {:<21} log {}", m.node, m.url, state, m.log.display());
        }
    }
    if lab.faults.is_empty() {
        let _ = writeln!(out, "faults: none");
    } else {
        let _ = writeln!(out, "faults:");
        for f in &lab.faults {
            let _ = writeln!(out, "  {}  {}", f.id, f.detail);
        }
    }
    out
}
