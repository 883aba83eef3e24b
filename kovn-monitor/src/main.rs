//! `kovn-monitor`: the node daemon (`run`) and the operator's CLI (`flows`, `alerts`, `top`,
//! `trace`).
//!
//! Size: the CLI's flags, one documented field each (the README lists the same flags); the
//! commands' work is in the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kovn_monitor::{client, daemon, kube, ovsdb};

/// The process's allocator. The daemon frees one snapshot of the flow table and builds the next
/// on every poll (tens of thousands of small objects a second); glibc's heap kept those holes in
/// the middle of its arenas and the resident size crept up by tens of MiB an hour even with
/// periodic `malloc_trim` (RELIABILITY.md, "Endurance"). jemalloc's size classes and its
/// time-based purging keep it flat. Its configuration is [`JEMALLOC_CONF`].
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string jemalloc reads at its initialisation (`malloc_conf`, see jemalloc(3)).
#[repr(transparent)]
struct MallocConf(*const u8);
// SAFETY: the pointer is to a `'static` immutable string; nothing writes through it.
unsafe impl Sync for MallocConf {}

/// jemalloc's options, read once before the first allocation (the `_rjem_` prefix is the one
/// tikv-jemalloc-sys builds with):
/// - `background_thread:true`: one thread returns unused pages to the kernel on time, not
///   only when some allocation happens to run the purge;
/// - `dirty_decay_ms:1000`: freed pages go back to the kernel after about a second (default
///   10 s), so a poll's buffers do not stay resident until the next ones;
/// - `narenas:2`: the daemon has a handful of threads; the default (4 per CPU) would give each
///   of a large node's cores its own arena of cached pages.
///
/// `MALLOC_CONF`-style overrides stay possible through the `_RJEM_MALLOC_CONF` environment
/// variable (read after this string, so it wins).
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,narenas:2".as_ptr().cast());

#[derive(Debug, Parser)]
#[command(
    name = "kovn-monitor",
    version,
    about = "Continuous network path monitor for Kube-OVN clusters (eBPF)",
    long_about = "Watches pod traffic with eBPF on the node's Kube-OVN pod interfaces, records \
                  request/reply pairs per flow, and serves what it sees over HTTP."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "KOVN_LOG_LEVEL")]
    log_level: log::LevelFilter,
    /// The bearer token sent to monitors (CLI, `top`, `trace`, and a daemon's questions to its
    /// peers): a file holding it, re-read for each client. Default: the pod's service account
    /// token when there is one, else the kubeconfig's current user's token, else none.
    #[arg(long, global = true, value_name = "PATH", env = "KOVN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificates (a PEM file) to check the certificates of monitors served over TLS
    /// (`https://` endpoints; a daemon with `--tls-cert-file` asks its peers over https), beside
    /// the system's roots.
    #[arg(long, global = true, value_name = "PATH", env = "KOVN_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon: attach to pod interfaces, keep the flow table, serve the API.
    Run(Box<RunArgs>),
    /// Print the flows a running daemon sees.
    Flows(FlowsArgs),
    /// Print the daemon's findings (firing and recently resolved) with verdicts.
    Alerts(AlertsArgs),
    /// The live flow view over one or more monitors (full screen; `--once` for scripts).
    Top(TopArgs),
    /// Drill into OVS and OVN for a flow, a finding or a packet: ofproto/trace, ovn-trace, both
    /// nodes of a cross-node flow, the deciding rule first.
    Trace(kovn_monitor::drilldown::cli::TraceCliArgs),
    /// Load every eBPF program on this kernel without attaching anything: per program whether
    /// the verifier accepts it and how many instructions it processed, and which hooks the
    /// kernel offers. Exits 1 when a classifier does not load.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The flow-table size to load with (as `run --flow-table-size`).
    #[arg(long, default_value_t = 65536)]
    flow_table_size: u32,
    /// A table for people or JSON for scripts (the kernel matrix).
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

fn check(args: CheckArgs) -> Result<()> {
    let report = kovn_monitor::capture::check(args.flow_table_size)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print!("{}", report.render()),
    }
    if !report.ok {
        let failed: Vec<&str> =
            report.programs.iter().filter(|p| p.kind == "classifier" && !p.loaded).map(|p| p.name).collect();
        bail!("the kernel refused {}", failed.join(", "));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct TopArgs {
    /// A monitor's API (repeatable; KOVN_ENDPOINT may list several, comma-separated).
    /// Default (without --lab or --kubernetes-selector either): the monitors of the lab when
    /// exactly one runs on this machine, else http://127.0.0.1:9474.
    #[arg(long = "endpoint", value_name = "URL", env = "KOVN_ENDPOINT", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Also show the monitors of this lab (`cargo xtask lab`), by name or state directory.
    #[arg(long, value_name = "NAME")]
    lab: Option<String>,
    /// Also show the monitors found through the Kubernetes API: running pods with these labels
    /// (e.g. app=kovn-monitor) in --kubernetes-namespace, on --monitor-port of their IP.
    #[arg(long, value_name = "LABELS")]
    kubernetes_selector: Option<String>,
    #[arg(long, value_name = "NS", default_value = "kube-system")]
    kubernetes_namespace: String,
    /// The port of the monitors found through the Kubernetes API.
    #[arg(long, default_value_t = 9474)]
    monitor_port: u16,
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// How often the monitors are asked.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Print one snapshot (sampled twice, --interval apart, for the rates) and exit.
    #[arg(long)]
    once: bool,
    /// The snapshot of --once (or when stdout is not a terminal): a table for people or JSON
    /// for scripts.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Show the last line of this file under the header, re-read every refresh (the demo's
    /// narration: what it injected, what was found, what it healed).
    #[arg(long, value_name = "PATH")]
    status_file: Option<std::path::PathBuf>,
}

async fn top(args: TopArgs) -> Result<()> {
    let mut endpoints = args.endpoint;
    if let Some(lab) = &args.lab {
        endpoints.extend(kovn_monitor::ui::lab_endpoints(lab)?);
    }
    if let Some(selector) = &args.kubernetes_selector {
        endpoints.extend(
            kovn_monitor::ui::kubernetes_endpoints(
                args.kubeconfig,
                &args.kubernetes_namespace,
                selector,
                args.monitor_port,
            )
            .await?,
        );
    }
    if endpoints.is_empty() {
        endpoints = kovn_monitor::ui::default_endpoints();
    }
    // The same monitor given twice (flag and lab) is asked once.
    let mut seen = std::collections::HashSet::new();
    endpoints.retain(|e| seen.insert(e.clone()));
    let output = match args.output {
        Output::Table => kovn_monitor::ui::OnceOutput::Table,
        Output::Json => kovn_monitor::ui::OnceOutput::Json,
    };
    kovn_monitor::ui::run(kovn_monitor::ui::TopOptions {
        endpoints,
        interval: args.interval,
        once: args.once,
        output,
        status_file: args.status_file,
    })
    .await
}

#[derive(Debug, clap::Args)]
struct AlertsArgs {
    /// The daemon's API.
    #[arg(long, default_value = "http://127.0.0.1:9474", env = "KOVN_ENDPOINT")]
    endpoint: String,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Only findings in this state.
    #[arg(long, value_parser = kovn_monitor::model::AlertState::NAMES)]
    state: Option<String>,
    /// Only findings of this kind.
    #[arg(long, value_parser = kovn_monitor::model::AlertKind::NAMES)]
    kind: Option<String>,
    /// Only findings with an end in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only findings with an end in this pod.
    #[arg(long)]
    pod: Option<String>,
}

async fn alerts(args: AlertsArgs) -> Result<()> {
    let query: Vec<(&str, String)> =
        [("state", args.state), ("kind", args.kind), ("namespace", args.namespace), ("pod", args.pod)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
    let resp = client::ApiClient::new(&args.endpoint)?.alerts(&query).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&resp.alerts)?),
        Output::Table => {
            print!("{}", client::render_alerts(&resp.alerts));
            eprintln!("{} findings on {} at {}", resp.count, resp.node, resp.time);
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address of the HTTP API (/healthz, /api/v1/flows, /metrics).
    #[arg(long, default_value = "127.0.0.1:9474", env = "KOVN_LISTEN")]
    listen: SocketAddr,
    /// Name pattern of pod host veths to attach to (glob; repeatable). Kube-OVN: `*_h`.
    #[arg(long = "pod-iface", value_name = "PATTERN", default_values_t = ["*_h".to_string()])]
    pod_iface: Vec<String>,
    /// An extra interface to attach to, by exact name (repeatable). Must exist at start.
    #[arg(long = "iface", value_name = "NAME")]
    iface: Vec<String>,
    /// The node's NIC that carries the overlay, by exact name (repeatable). Geneve (UDP 6081)
    /// and VXLAN (UDP 4789) on it are opened: each pod flow learns its remote node and VNI.
    #[arg(long = "underlay-iface", value_name = "NAME")]
    underlay_iface: Vec<String>,
    /// A metadata-mode tunnel device of OVS's kernel datapath, by exact name (repeatable;
    /// attached whenever it exists). Its frames are the inner ones; the remote node and VNI
    /// come from the tunnel key. `--tunnel-iface ''` attaches none.
    #[arg(long = "tunnel-iface", value_name = "NAME", default_values_t = ["genev_sys_6081".to_string(), "vxlan_sys_4789".to_string()])]
    tunnel_iface: Vec<String>,
    /// The path MTU of pod traffic: what the overlay carries. Larger pod packets that may not
    /// be fragmented (IPv4 DF, IPv6) are counted as oversized. Default: the first underlay
    /// interface's MTU minus Kube-OVN's Geneve overhead (100), or each pod veth's own MTU
    /// without an underlay interface.
    #[arg(long)]
    overlay_mtu: Option<u32>,
    /// How often the kernel's flow map is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// A flow with no packet for this long is over: removed from the kernel map.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    flow_idle_timeout: Duration,
    /// How long a flow that is over stays visible in the API.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    flow_retention: Duration,
    /// Capacity of the kernel flow map (entries; 1024..=16777216). New flows beyond it are
    /// counted as lost (kernel counter `map_full`), never evict live ones.
    #[arg(long, default_value_t = 65536)]
    flow_table_size: u32,
    /// New flows per second one pod may add to the kernel flow table (opened by it, or into it
    /// from off the node); beyond its budget they are counted per pod
    /// (`kovn_flows_refused_total`, a `flow_flood` finding) instead of recorded, so one pod
    /// cannot fill the table for the node. Default: table size / 8 / idle timeout (136/s for
    /// 65,536 entries and 60 s), one pod then holds at most ~1/8 of the table. 0: no budget.
    #[arg(long)]
    pod_new_flow_rate: Option<u32>,
    /// New flows one pod may open at once before the rate applies. Default: table size / 64.
    #[arg(long)]
    pod_new_flow_burst: Option<u32>,
    /// Label /metrics by pod (`src_pod`, `dst_pod`; the pod name stands in for an unknown
    /// workload): one series per pod pair, for small clusters and debugging only.
    #[arg(long)]
    metrics_pod_labels: bool,
    /// A /metrics label set that no flow or alert maps to any more is removed after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    metrics_series_ttl: Duration,
    /// This node's name (Kubernetes node name; the OVN chassis name). Default: the host name.
    #[arg(long, env = "KOVN_NODE_NAME")]
    node_name: Option<String>,
    /// The node's Open_vSwitch database, where Kube-OVN records each pod's identity
    /// (`unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT`; `none` to disable).
    #[arg(long, default_value = "unix:/var/run/openvswitch/db.sock", value_parser = parse_ovsdb)]
    ovsdb: OvsdbArg,
    /// A request (TCP SYN, ICMP echo, UDP request) unanswered this long is a finding.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    reply_timeout: Duration,
    /// A finding with no new failing request for this long resolves by itself (it also
    /// resolves as soon as the same pair is answered again).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    alert_resolve_after: Duration,
    /// How long resolved findings stay in the API.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    alert_retention: Duration,
    /// A UDP destination port where one-way traffic is expected (no finding for unanswered
    /// requests to it); repeatable.
    #[arg(long = "udp-oneway-port", value_name = "PORT")]
    udp_oneway_port: Vec<u16>,
    /// A `drops` finding needs at least this many kernel drops of one reason on one interface
    /// within --drop-window (1..).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    drop_burst: u64,
    /// The window --drop-burst counts in.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drop_window: Duration,
    /// A kernel drop reason that is normal here and never a finding (repeatable; still in
    /// /metrics and /api/v1/drops). `--drop-ignore-reason ''` ignores none.
    #[arg(long = "drop-ignore-reason", value_name = "REASON", default_values_t = kovn_monitor::detection::DEFAULT_DROP_IGNORE.map(String::from))]
    drop_ignore_reason: Vec<String>,
    /// A kernel drop record (flow, reason, place) with no new drop for this long is removed
    /// from the kernel map and from /api/v1/drops, so the map (sized --flow-table-size / 4)
    /// holds current drops and `drops_map_full` counts only real losses.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    drop_record_ttl: Duration,
    /// The pod MTU of the overlay (e.g. 1400 for Geneve on a 1500 underlay), used by the MTU
    /// black-hole detector. Default: judged from the sizes seen.
    #[arg(long)]
    pod_mtu: Option<u32>,
    /// Port of the other nodes' monitors, asked for their view of cross-node flows (default:
    /// the port of --listen).
    #[arg(long)]
    peer_port: Option<u16>,
    /// The OVN southbound database, to name pods of other nodes, chassis and service VIPs
    /// (`unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT` with --ovn-ssl-*). Off unless given.
    #[arg(long, value_parser = parse_ovsdb)]
    ovn_sb: Option<OvsdbArg>,
    /// The client private key (PEM) for `ssl:` OVSDB addresses (Kube-OVN with ENABLE_SSL
    /// mounts it as /var/run/tls/key).
    #[arg(long, value_name = "PATH")]
    ovn_ssl_key: Option<std::path::PathBuf>,
    /// The client certificate (PEM) for `ssl:` OVSDB addresses (/var/run/tls/cert).
    #[arg(long, value_name = "PATH")]
    ovn_ssl_cert: Option<std::path::PathBuf>,
    /// The CA (PEM) the OVSDB server's certificate must chain to (/var/run/tls/cacert); its
    /// name is not checked, as OVS does not.
    #[arg(long, value_name = "PATH")]
    ovn_ssl_ca: Option<std::path::PathBuf>,
    /// The Kubernetes API source (pod workloads, service names, node addresses, Kube-OVN
    /// subnets): `auto` uses the in-cluster service account or a kubeconfig when there is one,
    /// else stays off; `off` never talks to the API.
    #[arg(long, value_enum, default_value = "auto", env = "KOVN_KUBERNETES")]
    kubernetes: kube::KubeMode,
    /// Push the monitor's own findings to this Alertmanager (v2 API: `URL/api/v2/alerts`), for
    /// clusters that do not run the Prometheus rules. Off unless given.
    #[arg(long, value_name = "URL", value_parser = parse_alertmanager_url)]
    alertmanager_url: Option<reqwest::Url>,
    /// How often firing findings are re-sent to Alertmanager (they expire after four intervals
    /// without a re-send, e.g. when this monitor stops).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    alertmanager_resend_interval: Duration,
    /// A static inventory (YAML: nodes, pods, services, subnets; see README) instead of the
    /// Kubernetes API, for labs and hosts without one. Re-read when it changes.
    #[arg(long, value_name = "PATH", conflicts_with = "kubeconfig")]
    inventory_file: Option<std::path::PathBuf>,
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    #[command(flatten)]
    trace: kovn_monitor::drilldown::TraceArgs,
    /// Who may read the API: `none` (anyone who reaches --listen; labs), or `kubernetes`
    /// (a bearer token checked by TokenReview, each path authorised by SubjectAccessReview:
    /// verb `get`, `create` for /api/v1/trace; /healthz and /readyz stay open).
    #[arg(long, value_enum, default_value = "none", env = "KOVN_AUTH")]
    auth: kovn_monitor::auth::AuthMode,
    /// Serve the API over TLS with this PEM certificate chain (with --tls-private-key-file);
    /// both files are re-read when they change.
    #[arg(long, value_name = "PATH", requires = "tls_private_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert-file.
    #[arg(long, value_name = "PATH", requires = "tls_cert_file")]
    tls_private_key_file: Option<std::path::PathBuf>,
    /// API connections served at once (1..); more wait in the kernel's accept queue.
    #[arg(long, default_value_t = kovn_monitor::server::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// A request's headers must arrive within this; an idle keep-alive connection is closed
    /// after it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
}

fn parse_alertmanager_url(s: &str) -> Result<reqwest::Url, String> {
    kovn_monitor::alertmanager::alerts_url(s).map_err(|e| e.to_string())
}

#[derive(Clone, Debug)]
struct OvsdbArg(Option<ovsdb::Address>);

fn parse_ovsdb(s: &str) -> Result<OvsdbArg, String> {
    if s == "none" {
        return Ok(OvsdbArg(None));
    }
    s.parse().map(|a| OvsdbArg(Some(a))).map_err(|e: ovsdb::OvsdbError| e.to_string())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
struct FlowsArgs {
    /// The daemon's API.
    #[arg(long, default_value = "http://127.0.0.1:9474", env = "KOVN_ENDPOINT")]
    endpoint: String,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
    /// Only flows in this state.
    #[arg(long, value_parser = ["answered", "unanswered", "reset", "closed", "oneway"])]
    state: Option<String>,
    /// Only flows of this protocol.
    #[arg(long, value_parser = ["tcp", "udp", "sctp", "icmp", "icmpv6", "other"])]
    protocol: Option<String>,
    /// Only flows with this IP at either end.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// Only flows with an end in this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only flows with an end in this pod.
    #[arg(long)]
    pod: Option<String>,
    /// Only flows of this scenario (repeatable: any of them).
    #[arg(long, value_parser = kovn_monitor::model::Scenario::NAMES)]
    scenario: Vec<String>,
    /// At most this many flows (the most recently active first).
    #[arg(long)]
    limit: Option<usize>,
}

/// Kube-OVN's MTU allowance for Geneve: pods get the underlay MTU minus 100.
const GENEVE_OVERHEAD: u32 = 100;

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 500ms, 2s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

async fn flows(args: FlowsArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(s) = args.state {
        query.push(("state", s));
    }
    if let Some(p) = args.protocol {
        query.push(("protocol", p));
    }
    if let Some(ip) = args.ip {
        query.push(("ip", ip.to_string()));
    }
    if let Some(n) = args.limit {
        query.push(("limit", n.to_string()));
    }
    if !args.scenario.is_empty() {
        query.push(("scenario", args.scenario.join(",")));
    }
    for (k, v) in [("namespace", args.namespace), ("pod", args.pod)] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let resp = client::ApiClient::new(&args.endpoint)?.flows(&query, client::TIMEOUT).await?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&resp.flows)?),
        Output::Table => {
            print!("{}", client::render_table(&resp.flows));
            eprintln!("{} flows on {} at {}", resp.count, resp.node, resp.time);
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    if args.flow_retention < args.poll_interval {
        bail!("--flow-retention must be at least --poll-interval");
    }
    let nb: Option<ovsdb::Address> = args.trace.ovn_nb.as_deref().and_then(|a| a.parse().ok());
    let ssl_needed = [args.ovsdb.0.as_ref(), args.ovn_sb.as_ref().and_then(|a| a.0.as_ref()), nb.as_ref()]
        .into_iter()
        .flatten()
        .find(|a| matches!(a, ovsdb::Address::Ssl(_)));
    match (args.ovn_ssl_key, args.ovn_ssl_cert, args.ovn_ssl_ca) {
        (Some(key), Some(cert), Some(ca)) => ovsdb::set_ssl_files(&ovsdb::SslFiles { key, cert, ca })?,
        (None, None, None) => {
            if let Some(a) = ssl_needed {
                bail!("{a} needs --ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca");
            }
        }
        _ => bail!("--ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca go together"),
    }
    let tls = match (args.tls_cert_file, args.tls_private_key_file) {
        (Some(cert), Some(key)) => Some(kovn_monitor::server::TlsReloader::start(
            kovn_monitor::server::TlsFiles { cert, key },
            kovn_monitor::server::TLS_RELOAD_CHECK,
        )?),
        _ => None,
    };
    kovn_monitor::auth::set_peer_tls(tls.is_some());
    let reviewer = match args.auth {
        kovn_monitor::auth::AuthMode::None => None,
        kovn_monitor::auth::AuthMode::Kubernetes => Some(std::sync::Arc::new(
            kovn_monitor::auth::Reviewer::connect(args.kubeconfig.as_deref()).await?,
        )),
    };
    // One line naming what is missing, before eBPF's EPERM would (the image runs as root with
    // only these capabilities).
    let missing = kovn_monitor::health::missing_capabilities();
    if !missing.is_empty() {
        bail!(
            "missing capability {} (kovn-monitor run needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and before Linux 5.11 CAP_SYS_RESOURCE or an unlimited RLIMIT_MEMLOCK)",
            missing.join(", ")
        );
    }
    let server = kovn_monitor::server::ServerOptions {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
        tls,
        reviewer,
        probe: kovn_monitor::health::Probe::new(args.poll_interval),
    };
    daemon::run(daemon::RunConfig {
        server,
        listen: args.listen,
        detector: kovn_monitor::detection::DetectorConfig {
            reply_timeout: args.reply_timeout,
            resolve_after: args.alert_resolve_after,
            retention: args.alert_retention,
            udp_oneway_ports: args.udp_oneway_port,
            pod_mtu: args.pod_mtu,
            drop_burst: args.drop_burst,
            drop_window: args.drop_window,
            drop_ignore_reasons: args.drop_ignore_reason.into_iter().filter(|r| !r.is_empty()).collect(),
        },
        peer_port: args.peer_port.unwrap_or(args.listen.port()),
        pod_patterns: args.pod_iface,
        ifaces: args.iface,
        overlay_mtu: args.overlay_mtu.or_else(|| {
            let u = args.underlay_iface.first()?;
            let mtu: u32 =
                std::fs::read_to_string(format!("/sys/class/net/{u}/mtu")).ok()?.trim().parse().ok()?;
            Some(mtu.saturating_sub(GENEVE_OVERHEAD))
        }),
        underlay_ifaces: args.underlay_iface,
        tunnel_ifaces: args.tunnel_iface.into_iter().filter(|n| !n.is_empty()).collect(),
        poll_interval: args.poll_interval,
        drop_record_ttl: args.drop_record_ttl,
        flow_idle_timeout: args.flow_idle_timeout,
        flow_retention: args.flow_retention,
        flow_table_size: args.flow_table_size,
        flow_budget: {
            let auto =
                kovn_monitor::guard::FlowBudget::for_table(args.flow_table_size, args.flow_idle_timeout);
            kovn_monitor::guard::FlowBudget {
                per_sec: args.pod_new_flow_rate.unwrap_or(auto.per_sec),
                burst: args.pod_new_flow_burst.unwrap_or(auto.burst).max(1),
            }
        },
        metrics: kovn_monitor::export::MetricsConfig {
            pod_labels: args.metrics_pod_labels,
            series_ttl: args.metrics_series_ttl,
        },
        node_name: args.node_name.unwrap_or_else(hostname),
        ovsdb: args.ovsdb.0,
        ovn_sb: args.ovn_sb.and_then(|a| a.0),
        kubernetes: kube::KubeOptions { mode: args.kubernetes, kubeconfig: args.kubeconfig },
        trace: args.trace,
        inventory_file: args.inventory_file,
        alertmanager: args.alertmanager_url.map(|u| (u, args.alertmanager_resend_interval)),
    })
    .await
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(e.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand)
            {
                e.exit();
            }
            // One line, not clap's usage block: operators grep logs and scripts read stderr.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (see kovn-monitor --help)");
            std::process::exit(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    kovn_monitor::auth::set_token_file(cli.token_file);
    if let Err(e) = kovn_monitor::auth::set_ca_file(cli.ca_file.as_deref()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Flows(a) => flows(a).await,
            Command::Alerts(a) => alerts(a).await,
            Command::Top(a) => top(a).await,
            Command::Trace(a) => kovn_monitor::drilldown::cli::run(a).await,
            Command::Check(a) => check(a),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
