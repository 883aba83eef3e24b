//! `kovn-monitor trace`: asks a node's monitor (`GET /api/v1/trace`) to drill into OVS and OVN
//! for a flow, a finding, or a packet given by hand, and prints the verdict first.

use anyhow::{Context as _, Result, bail};

use super::{Proto, TraceReport};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct TraceCliArgs {
    /// The API of the monitor on the source pod's node.
    #[arg(long, default_value = "http://127.0.0.1:9474", env = "KOVN_ENDPOINT")]
    pub endpoint: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Source IP (a pod of that node).
    #[arg(long, requires = "dst")]
    pub src: Option<std::net::IpAddr>,
    /// Destination IP.
    #[arg(long, requires = "src")]
    pub dst: Option<std::net::IpAddr>,
    /// Protocol.
    #[arg(long, value_parser = ["tcp", "udp", "icmp"], requires = "src")]
    pub proto: Option<String>,
    /// Source port (default 40000).
    #[arg(long, requires = "src")]
    pub sport: Option<u16>,
    /// Destination port (required for tcp and udp).
    #[arg(long, requires = "src")]
    pub dport: Option<u16>,
    /// Packet size (L3 bytes) for the MTU check; default: the largest request seen.
    #[arg(long, value_parser = clap::value_parser!(u32).range(28..=65535))]
    pub size: Option<u32>,
    /// A finding's id (from `kovn-monitor alerts`): trace its flow.
    #[arg(long, conflicts_with_all = ["src", "flow"])]
    pub alert: Option<String>,
    /// A flow's id (from `kovn-monitor flows -o json` or the API).
    #[arg(long, conflicts_with_all = ["src", "alert"])]
    pub flow: Option<String>,
}

pub async fn run(args: TraceCliArgs) -> Result<()> {
    if args.src.is_none() && args.alert.is_none() && args.flow.is_none() {
        bail!(
            "say what to trace: --src IP --dst IP [--proto P --sport N --dport N], --alert ID or --flow ID"
        );
    }
    if let (Some(s), Some(d)) = (args.src, args.dst)
        && s.is_ipv4() != d.is_ipv4()
    {
        bail!("--src and --dst must be of the same IP family");
    }
    let proto = args.proto.as_deref().map(Proto::parse).transpose()?;
    if args.src.is_some() && args.dport.is_none() && proto != Some(Proto::Icmp) {
        bail!("--dport is needed for tcp and udp (or --proto icmp)");
    }
    let mut q: Vec<(&str, String)> = Vec::new();
    let opt = [
        ("src", args.src.map(|v| v.to_string())),
        ("dst", args.dst.map(|v| v.to_string())),
        ("proto", args.proto.clone()),
        ("sport", args.sport.map(|v| v.to_string())),
        ("dport", args.dport.map(|v| v.to_string())),
        ("size", args.size.map(|v| v.to_string())),
        ("alert", args.alert.clone()),
        ("flow", args.flow.clone()),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let api = crate::client::ApiClient::new(&args.endpoint)?;
    let url = api.url("/api/v1/trace")?;
    // A trace runs up to a few command timeouts here and on the peer.
    let (status, body) = api.trace(&q, std::time::Duration::from_secs(90)).await?;
    if !status.is_success() {
        let msg = crate::client::error_message(&body);
        bail!("{} ({})", msg.lines().next().unwrap_or(""), status.as_u16());
    }
    let report: TraceReport =
        serde_json::from_str(&body).with_context(|| format!("{url}: unexpected response"))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", render(&report)),
    }
    Ok(())
}

/// The verdict on the first line, then each node's half.
pub fn render(r: &TraceReport) -> String {
    let mut out = format!("{}\n", r.verdict);
    render_half(r, "", &mut out);
    if let Some(rem) = &r.remote {
        out.push_str(&format!("\n== destination node {} (from the tunnel) ==\n", rem.node));
        render_half(rem, "", &mut out);
    }
    out
}

fn render_half(r: &TraceReport, ind: &str, out: &mut String) {
    let mut line = |s: String| {
        out.push_str(ind);
        out.push_str(&s);
        out.push('\n');
    };
    if let Some(p) = &r.packet {
        let ports =
            if p.proto == Proto::Icmp { String::new() } else { format!(" {} -> {}", p.sport, p.dport) };
        line(format!(
            "packet:   {} {} -> {}{ports} ({}){}",
            p.proto.as_str(),
            p.src,
            p.dst,
            if p.established { "established" } else { "new" },
            p.size.map(|s| format!(", {s} bytes")).unwrap_or_default()
        ));
    }
    if let Some(port) = &r.in_port {
        let what = port.pod.clone().map(|p| format!("pod {p}")).unwrap_or_else(|| port.kind.clone());
        line(format!("in_port:  {} ({}, {what}) on {}", port.ofport, port.name, r.node));
    }
    line(format!("result:   {}", r.result));
    if let Some(d) = &r.deciding_rule {
        line(format!(
            "rule:     {} table {} priority {} cookie {} match {} actions {}",
            d.bridge,
            d.table,
            d.priority.map_or("-".into(), |p| p.to_string()),
            d.cookie.as_deref().unwrap_or("-"),
            if d.matches.is_empty() { "(any)" } else { &d.matches },
            d.actions.join(",")
        ));
        if let Some(lf) = &d.logical_flow {
            line(format!(
                "logical:  {} {} priority {} match {}",
                lf.pipeline, lf.stage, lf.priority, lf.matches
            ));
            if let Some(acl) = &lf.acl {
                line(format!(
                    "acl:      '{}' {} {} priority {} match {}{}",
                    acl.name.as_deref().unwrap_or("-"),
                    acl.direction,
                    acl.action,
                    acl.priority,
                    acl.matches,
                    acl.network_policy.as_ref().map(|n| format!(" (NetworkPolicy {n})")).unwrap_or_default()
                ));
            }
        }
    }
    if let Some(m) = &r.mtu {
        line(format!(
            "mtu:      {} + {} tunnel header = {} bytes on {} (MTU {}): {}",
            m.packet_bytes,
            m.tunnel_header_bytes,
            m.outer_bytes,
            m.underlay_iface,
            m.underlay_mtu,
            if m.fits { "fits" } else { "too big" }
        ));
    }
    if let Some(t) = &r.ofproto_trace {
        for (i, pass) in t.passes.iter().enumerate() {
            let tables: Vec<String> =
                pass.steps.iter().filter(|s| s.top_level).map(|s| s.table.to_string()).collect();
            line(format!(
                "ofproto:  pass {}: tables {} -> {}",
                i + 1,
                tables.join(" "),
                pass.datapath_actions
            ));
        }
    }
    if let Some(t) = &r.ovn_trace {
        let o = match &t.outcome {
            super::OvnOutcome::Output { port } => format!("output to {port}"),
            super::OvnOutcome::Drop { stage } => {
                format!(
                    "dropped in {} (table {}, priority {}, {})",
                    stage.name, stage.table, stage.priority, stage.matches
                )
            }
            super::OvnOutcome::Unknown => "no outcome".into(),
        };
        line(format!("ovn-trace: {o}"));
        for s in t.acls() {
            line(format!(
                "  acl stage {} priority {}: {} -> {}",
                s.name,
                s.priority,
                s.matches,
                s.actions.join(" ")
            ));
        }
        for lf in &r.ovn_acls {
            if let Some(acl) = &lf.acl {
                line(format!(
                    "  = ACL '{}' {}",
                    acl.name.as_deref().unwrap_or("-"),
                    acl.network_policy.as_ref().map(|n| format!("of NetworkPolicy {n}")).unwrap_or_default()
                ));
            }
        }
    }
    if let Some(e) = &r.ovn_trace_error {
        line(format!("ovn-trace: {e}"));
    }
    if let Some(e) = &r.remote_error {
        line(format!("remote:   {e}"));
    }
    if !r.flows.is_empty() {
        line(format!(
            "br-int rules mentioning {} (packets in the last second first):",
            r.packet.as_ref().map_or(String::new(), |p| p.dst.to_string())
        ));
        for f in r.flows.iter().take(15) {
            line(format!(
                "  {:>5} +{:<4} table={} priority={} cookie={} {} actions={}",
                f.n_packets, f.delta_packets, f.table, f.priority, f.cookie, f.matches, f.actions
            ));
        }
    }
    if let Some(e) = &r.flows_error {
        line(format!("dump-flows: {e}"));
    }
    for c in &r.commands {
        line(format!("ran:      {c}"));
    }
}
