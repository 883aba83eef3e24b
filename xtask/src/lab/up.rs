//! `lab up`: nodes as network namespaces each running its own ovsdb-server, ovs-vswitchd
//! (userspace/netdev datapath) and ovn-controller; one OVN central; pods bound to the
//! `ovn-default` logical switch the way Kube-OVN's CNI binds them.
//!
//! Size: one lab's bring-up in order (per node: OVSDB, vswitchd, OVN controller, pods, tunnel),
//! each step a function.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::down;
use super::model::{Datapath, Lab, Node, Phase, Pod, Protocol, STATE_ROOT, load};
use super::net::Cidr;
use super::ovs::{nbctl, sbctl, transaction, vsctl};
use super::plan::{UpOptions, choose_underlay, plan, validate_name};
use super::probe;
use super::sys::{self, run_env, run_in, spawn_detached};
use crate::cmd;

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// How long `up` waits for OVN to bind ports and for the first packets to pass.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// What `up` found or did.
#[derive(Debug)]
pub enum UpOutcome {
    Started(Lab),
    /// A lab of that name was already up; it was left untouched.
    AlreadyRunning(Lab),
}

impl UpOutcome {
    pub fn lab(&self) -> &Lab {
        match self {
            UpOutcome::Started(lab) | UpOutcome::AlreadyRunning(lab) => lab,
        }
    }

    pub fn into_lab(self) -> Lab {
        match self {
            UpOutcome::Started(lab) | UpOutcome::AlreadyRunning(lab) => lab,
        }
    }
}

/// Brings a lab up (see the module docs), or reports the one already running. On failure it
/// removes whatever it created before returning the error.
pub fn up(opts: &UpOptions) -> Result<UpOutcome> {
    sys::require_root()?;
    validate_name(&opts.name)?;
    let state_dir = opts.state_dir();
    if let Some(outcome) = existing(&state_dir)? {
        return Ok(outcome);
    }
    let underlay = match opts.underlay_cidr {
        Some(cidr) => {
            if let Some(used) = root_routes()?.iter().find(|r| r.overlaps(&cidr)) {
                bail!("underlay {cidr} overlaps {used}, already routed in the root netns");
            }
            cidr
        }
        None => choose_underlay(&root_routes()?)?,
    };
    let mut lab = plan(opts, underlay)?;
    down::refuse_leftovers(&lab.name)?;
    refuse_foreign_dir(&state_dir)?;
    let _lock = sys::StateLock::acquire(&state_dir)?;
    // Another `up` may have finished while we planned.
    if let Some(outcome) = existing(&state_dir)? {
        return Ok(outcome);
    }
    link_state_dir(&lab)?;
    lab.save()?;
    match build(&mut lab) {
        Ok(()) => {
            lab.phase = Phase::Ready;
            lab.save()?;
            Ok(UpOutcome::Started(lab))
        }
        Err(e) => {
            eprintln!("lab up failed: {e:#}\nremoving what it created...");
            if let Err(cleanup) = down::teardown(&lab.name, &lab.state_dir, Some(&lab)) {
                eprintln!("clean-up after the failure also failed: {cleanup:#}");
            }
            Err(e)
        }
    }
}

fn existing(state_dir: &Path) -> Result<Option<UpOutcome>> {
    if !state_dir.join("lab.json").exists() {
        return Ok(None);
    }
    let lab = load(&state_dir.to_string_lossy())?;
    if lab.phase != Phase::Ready {
        bail!(
            "lab {} at {} did not finish starting; run `cargo xtask lab down --name {}` first",
            lab.name,
            state_dir.display(),
            lab.name
        );
    }
    Ok(Some(UpOutcome::AlreadyRunning(lab)))
}

/// `down` empties the state directory, so `up` only takes one that is empty or absent.
fn refuse_foreign_dir(state_dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(state_dir) else {
        return Ok(());
    };
    let other: Vec<_> = entries.flatten().map(|e| e.file_name()).filter(|n| n != "lock").collect();
    ensure!(
        other.is_empty(),
        "state directory {} is not empty ({other:?}); give an empty or new directory",
        state_dir.display()
    );
    Ok(())
}

/// IPv4 prefixes routed in the root netns's main table (to pick an unused underlay).
fn root_routes() -> Result<Vec<Cidr>> {
    let out = cmd::stdout("ip", &["-4", "route", "show", "table", "main"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|dst| match dst.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(_) => dst.parse().ok().and_then(|ip| Cidr::new(ip, 32).ok()),
        })
        .collect())
}

/// A lab with a custom `--state-dir` stays reachable by name: /run/kovn-lab/NAME -> the dir.
fn link_state_dir(lab: &Lab) -> Result<()> {
    let default = Path::new(STATE_ROOT).join(&lab.name);
    if default == lab.state_dir {
        return Ok(());
    }
    sys::mkdir(STATE_ROOT)?;
    if default.symlink_metadata().is_ok() {
        bail!("{} exists: another lab is named {}", default.display(), lab.name);
    }
    std::os::unix::fs::symlink(&lab.state_dir, &default)
        .with_context(|| format!("cannot link {}", default.display()))
}

fn build(lab: &mut Lab) -> Result<()> {
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f32());
    if lab.datapath == Datapath::Kernel {
        step("kernel modules: openvswitch, the tunnel's");
        load_kernel_datapath_modules(lab)?;
    }
    step("OVN central (NB, SB, northd)");
    start_central(lab)?;
    step("underlay bridge");
    create_underlay(lab)?;
    for node in &lab.nodes {
        step(&format!("{}: netns, ovsdb-server, ovs-vswitchd, ovn-controller", node.name));
        create_node(lab, node)?;
    }
    step("logical switch, router, load balancers");
    create_logical_network(lab)?;
    wait_for_chassis(lab)?;
    for pod in &lab.pods {
        step(&format!("pod {} on {}", pod.qualified_name(), pod.node));
        create_pod(lab, pod)?;
        start_servers(lab, pod)?;
    }
    step("waiting for OVN to bind every port");
    wait_for_bindings(lab)?;
    record_runtime(lab)?;
    step("checking connectivity");
    check_connectivity(lab)?;
    step("ready");
    Ok(())
}

/// OVS's kernel datapath and the tunnel vport's device need their modules; a kernel without
/// them (e.g. one built without CONFIG_OPENVSWITCH) is one clear error.
fn load_kernel_datapath_modules(lab: &Lab) -> Result<()> {
    let tunnel = match lab.tunnel {
        super::model::Tunnel::Geneve => "geneve",
        super::model::Tunnel::Vxlan => "vxlan",
    };
    for module in ["openvswitch", tunnel] {
        if Path::new("/sys/module").join(module).exists() {
            continue;
        }
        cmd::run("modprobe", &[module]).with_context(|| {
            format!("--datapath kernel needs the {module} kernel module (this kernel has none: use a VM with a Debian kernel, see README)")
        })?;
    }
    Ok(())
}

fn ovs_env(dir: &Path) -> [(&'static str, &Path); 2] {
    // Every OVS/OVN daemon puts its default sockets and pidfiles in its rundir: one per node.
    [("OVS_RUNDIR", dir), ("OVN_RUNDIR", dir)]
}

fn daemon_flags(dir: &Path, role: &str) -> Vec<String> {
    vec![
        "--detach".into(),
        "--no-chdir".into(),
        format!("--pidfile={}", dir.join(format!("{role}.pid")).display()),
        format!("--log-file={}", dir.join(format!("{role}.log")).display()),
    ]
}

fn start_central(lab: &Lab) -> Result<()> {
    let c = &lab.central;
    sys::mkdir(&c.dir)?;
    for (role, schema, sock) in
        [("ovsdb-server-nb", NB_SCHEMA, &c.nb_sock), ("ovsdb-server-sb", SB_SCHEMA, &c.sb_sock)]
    {
        let db = c.dir.join(format!("{role}.db"));
        cmd::run("ovsdb-tool", &[Path::new("create"), &db, Path::new(schema)])?;
        let mut args = daemon_flags(&c.dir, role);
        args.extend([
            format!("--remote=punix:{}", sock.display()),
            format!("--unixctl={}", c.dir.join(format!("{role}.ctl")).display()),
            db.display().to_string(),
        ]);
        run_env("ovsdb-server", &args, &ovs_env(&c.dir))?;
    }
    let mut args = daemon_flags(&c.dir, "ovn-northd");
    args.extend([
        format!("--ovnnb-db={}", c.nb_db()),
        format!("--ovnsb-db={}", c.sb_db()),
        format!("--unixctl={}", c.northd_ctl.display()),
    ]);
    run_env("ovn-northd", &args, &ovs_env(&c.dir))?;
    Ok(())
}

/// IPv6 off: nothing here uses it, and router solicitations and MLD reports would be noise in
/// every capture and in the monitors' counters.
fn disable_ipv6_in(netns: &str) -> Result<()> {
    run_in(
        netns,
        "sysctl",
        &["-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
    )
    .map(drop)
}

fn disable_ipv6_on_root_link(link: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
    // IPv6 may be off in the kernel altogether: then there is nothing to disable.
    if Path::new(&path).exists() {
        fs::write(&path, "1").with_context(|| format!("cannot write {path}"))?;
    }
    Ok(())
}

fn create_underlay(lab: &Lab) -> Result<()> {
    let u = &lab.underlay;
    cmd::run("ip", &["link", "add", &u.bridge, "type", "bridge"])?;
    disable_ipv6_on_root_link(&u.bridge)?;
    let addr = format!("{}/{}", u.host_ip, u.cidr.prefix());
    cmd::run("ip", &["addr", "add", &addr, "dev", &u.bridge])?;
    cmd::run("ip", &["link", "set", &u.bridge, "up"])?;
    Ok(())
}

fn create_node(lab: &Lab, node: &Node) -> Result<()> {
    let ns = &node.netns;
    let mtu = node.mtu.to_string();
    cmd::run("ip", &["netns", "add", ns])?;
    disable_ipv6_in(ns)?;
    cmd::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    // The node's NIC: a veth whose root end is a port of the underlay bridge.
    cmd::run(
        "ip",
        &[
            "link",
            "add",
            &node.root_veth,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &node.underlay_iface,
            "netns",
            ns,
            "mtu",
            &mtu,
        ],
    )?;
    disable_ipv6_on_root_link(&node.root_veth)?;
    cmd::run("ip", &["link", "set", &node.root_veth, "master", &lab.underlay.bridge, "up"])?;
    cmd::run("ip", &["-n", ns, "link", "set", &node.underlay_iface, "up"])?;
    start_node_ovs(node)?;
    create_node_bridges(lab, node)?;
    // After OVS took the NIC: adding it to br-phy changes the NIC's offloads, and the kernel
    // then recomputes the veth peer's features, re-enabling what an earlier ethtool disabled.
    root_veth_checksums(node)?;
    start_ovn_controller(node)
}

/// The root netns reaches node IPs (the monitors' APIs, Prometheus scrapes) through the node's
/// br-phy, i.e. through OVS's userspace datapath, which does not complete partial (offloaded)
/// TCP/UDP checksums: TCP from the root netns would silently die there (the node's kernel
/// counts it in TcpInCsumErrors). So the root end of the node's NIC computes them itself.
pub fn root_veth_checksums(node: &Node) -> Result<()> {
    cmd::run("ethtool", &["-K", &node.root_veth, "tx", "off"])?;
    Ok(())
}

/// A node's ovsdb-server (Open_vSwitch) on its existing `conf.db`: at `lab up`, and again when
/// the soak restarts it (`--ovsdb-restart-every`), the same way both times.
pub fn start_node_ovsdb(node: &Node) -> Result<()> {
    let dir = &node.ovs_rundir;
    let mut args = daemon_flags(dir, "ovsdb-server");
    args.extend([
        format!("--remote=punix:{}", node.ovsdb_sock.display()),
        format!("--unixctl={}", dir.join("ovsdb-server.ctl").display()),
        dir.join("conf.db").display().to_string(),
    ]);
    // `ip netns exec` keeps our environment, so OVS_RUNDIR reaches the daemon.
    run_env("ip", &sys::in_netns(&node.netns, "ovsdb-server", &args), &ovs_env(dir))?;
    Ok(())
}

fn start_node_ovs(node: &Node) -> Result<()> {
    let dir = &node.ovs_rundir;
    sys::mkdir(dir)?;
    let db = dir.join("conf.db");
    cmd::run("ovsdb-tool", &[Path::new("create"), &db, Path::new(VSWITCH_SCHEMA)])?;
    start_node_ovsdb(node)?;
    vsctl(node, &["--no-wait", "init"])?;
    // ovs-vswitchd runs inside the node netns: its netdev ports (AF_PACKET sockets) and the tap
    // devices of its bridges belong there.
    let mut args = vec![node.ovsdb()];
    args.extend(daemon_flags(dir, "ovs-vswitchd"));
    // Debian 12's OVS 3.1 userspace datapath aborts in its conntrack after a minute or two of
    // mixed traffic through an OVN load balancer (`conntrack.c: assertion conn->conn_type ==
    // CT_CONN_TYPE_DEFAULT failed in conn_update_state()`), which took the whole node off the
    // network for the rest of a demo or a test. OVS's own monitor process restarts it after
    // such a crash (SIGABRT, SIGSEGV, ...; not after SIGTERM): ovn-controller re-installs its
    // flows and the node is back within seconds, and the crash stays in ovs-vswitchd.log.
    args.push("--monitor".into());
    args.push(format!("--unixctl={}", node.vswitchd_ctl.display()));
    run_env("ip", &sys::in_netns(&node.netns, "ovs-vswitchd", &args), &ovs_env(dir))?;
    Ok(())
}

fn create_node_bridges(lab: &Lab, node: &Node) -> Result<()> {
    let (phy, int, nic) = (&node.tunnel_bridge, &node.integration_bridge, &node.underlay_iface);
    let ip = node.ip.to_string();
    let ids = [
        format!("external-ids:system-id={}", node.name),
        format!("external-ids:hostname={}", node.name),
        format!("external-ids:ovn-remote={}", lab.central.sb_db()),
        format!("external-ids:ovn-encap-type={}", lab.tunnel.as_str()),
        format!("external-ids:ovn-encap-ip={ip}"),
        // Makes ovn-controller create br-int ports and tunnels for this datapath.
        format!("external-ids:ovn-bridge-datapath-type={}", lab.datapath.ovs_type()),
    ];
    let mut open_vswitch = vec!["set", "open_vswitch", "."];
    open_vswitch.extend(ids.iter().map(String::as_str));
    let addr = format!("{ip}/{}", lab.underlay.cidr.prefix());
    if lab.datapath == Datapath::Kernel {
        // The kernel datapath, as on a Kube-OVN node: br-int only, the node IP on the NIC
        // itself; the kernel routes the outer packets that OVS's tunnel vport
        // (genev_sys_6081, made by OVS with the first tunnel port) sends.
        let dp = format!("datapath_type={}", lab.datapath.ovs_type());
        vsctl(
            node,
            &transaction(&[
                &["add-br", int],
                &["set", "bridge", int, &dp, "fail-mode=secure"],
                &["set", "bridge", int, "other-config:disable-in-band=true"],
                &open_vswitch,
            ]),
        )?;
        cmd::run("ip", &["-n", &node.netns, "addr", "add", &addr, "dev", nic])?;
        let _ = phy;
        return Ok(());
    }
    vsctl(
        node,
        &transaction(&[
            &["add-br", phy],
            &["set", "bridge", phy, "datapath_type=netdev"],
            &["add-port", phy, nic],
            // fail-mode secure: only ovn-controller's flows forward anything (as on a real node).
            &["add-br", int],
            &["set", "bridge", int, "datapath_type=netdev", "fail-mode=secure"],
            &["set", "bridge", int, "other-config:disable-in-band=true"],
            &open_vswitch,
        ]),
    )?;
    // Userspace tunnelling: the tunnel endpoint IP sits on the netdev bridge owning the NIC; OVS
    // learns the route and neighbours from it and pushes the outer header itself.
    cmd::run("ip", &["-n", &node.netns, "addr", "add", &addr, "dev", phy])?;
    cmd::run("ip", &["-n", &node.netns, "link", "set", phy, "up"])?;
    Ok(())
}

fn start_ovn_controller(node: &Node) -> Result<()> {
    let dir = &node.ovs_rundir;
    let mut args = vec![node.ovsdb()];
    args.extend(daemon_flags(dir, "ovn-controller"));
    // No --unixctl in 23.03: OVN_RUNDIR (set by ovs_env) places its control socket.
    run_env("ip", &sys::in_netns(&node.netns, "ovn-controller", &args), &ovs_env(dir))?;
    Ok(())
}

fn create_logical_network(lab: &Lab) -> Result<()> {
    let mut args: Vec<String> = Vec::new();
    let mut add = |a: &[&str]| {
        args.push("--".into());
        args.extend(a.iter().map(|s| s.to_string()));
    };
    add(&["lr-add", &lab.router]);
    add(&["set", "logical_router", &lab.router, "external_ids:vendor=kube-ovn"]);
    for s in &lab.subnets {
        let (ls, lrp) = (&s.logical_switch, &s.router_port);
        let lsp = format!("{ls}-{}", lab.router);
        let network = format!("{}/{}", s.gateway, s.cidr.prefix());
        add(&["ls-add", ls]);
        add(&["set", "logical_switch", ls, "external_ids:vendor=kube-ovn"]);
        add(&["lrp-add", &lab.router, lrp, &s.router_port_mac, &network]);
        add(&["lsp-add", ls, &lsp]);
        add(&["lsp-set-type", &lsp, "router"]);
        add(&["lsp-set-addresses", &lsp, "router"]);
        add(&["lsp-set-options", &lsp, &format!("router-port={lrp}")]);
    }
    nbctl(lab, &args)?;
    create_load_balancers(lab)
}

/// Kube-OVN style ClusterIPs: one OVN load balancer per protocol holding every VIP, attached to
/// the pods' logical switch (the DNAT happens in the client's switch pipeline).
fn create_load_balancers(lab: &Lab) -> Result<()> {
    let mut attached = Vec::new();
    for svc in &lab.services {
        let backends: Vec<String> = svc.backends.iter().map(SocketAddrV4::to_string).collect();
        nbctl(
            lab,
            &[
                "lb-add",
                &svc.load_balancer,
                &svc.vip_addr().to_string(),
                &backends.join(","),
                svc.protocol.as_str(),
            ],
        )?;
        if !attached.contains(&svc.load_balancer) {
            attached.push(svc.load_balancer.clone());
        }
    }
    for lb in attached {
        for s in &lab.subnets {
            nbctl(lab, &["ls-lb-add", &s.logical_switch, &lb])?;
        }
    }
    Ok(())
}

fn wait_for_chassis(lab: &Lab) -> Result<()> {
    sys::retry("every node's chassis registered", sys::scaled(READY_TIMEOUT), POLL, || {
        let names = super::ovs::bare_values(&sbctl(lab, &["--bare", "--columns=name", "list", "chassis"])?);
        let missing: Vec<_> =
            lab.nodes.iter().filter(|n| !names.contains(&n.name)).map(|n| n.name.as_str()).collect();
        ensure!(missing.is_empty(), "chassis not registered: {}", missing.join(", "));
        Ok(())
    })
}

fn create_pod(lab: &Lab, pod: &Pod) -> Result<()> {
    let node = lab.node(&pod.node)?;
    let ns = &pod.netns;
    let mtu = pod.mtu.to_string();
    cmd::run("ip", &["netns", "add", ns])?;
    disable_ipv6_in(ns)?;
    // Both veth ends are created in their namespaces directly, so nothing ever collides with an
    // interface name of the root netns.
    cmd::run(
        "ip",
        &[
            "link",
            "add",
            &pod.host_veth,
            "netns",
            &node.netns,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &pod.iface,
            "netns",
            ns,
            "mtu",
            &mtu,
            "address",
            &pod.mac,
        ],
    )?;
    let addr = format!("{}/{}", pod.ip, lab.subnet(&pod.subnet)?.cidr.prefix());
    let gw = pod.gateway.to_string();
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["link", "set", &pod.iface, "up"],
        vec!["addr", "add", &addr, "dev", &pod.iface],
        vec!["route", "add", "default", "via", &gw],
    ] {
        let mut full = vec!["-n", ns.as_str()];
        full.extend(args);
        cmd::run("ip", &full)?;
    }
    // The userspace datapath's conntrack validates L4 checksums, and a veth leaves them partial
    // (offloaded): with checksum offload on, TCP/UDP through any OVN ACL or load balancer would
    // be dropped silently at br-int while ICMP passes.
    run_in(ns, "ethtool", &["-K", &pod.iface, "tx", "off"])?;
    cmd::run("ip", &["-n", &node.netns, "link", "set", &pod.host_veth, "up"])?;
    bind_port(lab, node, pod)
}

/// Binds the pod like Kube-OVN's CNI: the OVS Interface carries `iface-id` (the logical switch
/// port, which ovn-controller claims for this chassis) and the pod's identity in external_ids.
fn bind_port(lab: &Lab, node: &Node, pod: &Pod) -> Result<()> {
    let hv = &pod.host_veth;
    let iface_ids = [
        format!("external_ids:iface-id={}", pod.iface_id),
        format!("external_ids:pod_name={}", pod.name),
        format!("external_ids:pod_namespace={}", pod.namespace),
        format!("external_ids:ip={}", pod.ip),
        format!("external_ids:pod_netns={}", pod.netns),
        "external_ids:vendor=kube-ovn".into(),
    ];
    let mut set_iface = vec!["set", "interface", hv];
    set_iface.extend(iface_ids.iter().map(String::as_str));
    vsctl(node, &transaction(&[&["add-port", &node.integration_bridge, hv], &set_iface]))?;

    let ls = &lab.subnet(&pod.subnet)?.logical_switch;
    let lsp = &pod.iface_id;
    let addresses = format!("{} {}", pod.mac, pod.ip);
    let lsp_ids = [
        format!("external_ids:pod={}", pod.qualified_name()),
        format!("external_ids:ls={ls}"),
        "external_ids:vendor=kube-ovn".into(),
    ];
    let mut set_lsp = vec!["set", "logical_switch_port", lsp];
    set_lsp.extend(lsp_ids.iter().map(String::as_str));
    nbctl(lab, &transaction(&[&["lsp-add", ls, lsp], &["lsp-set-addresses", lsp, &addresses], &set_lsp]))?;
    Ok(())
}

/// Starts the pod's echo servers (TCP and UDP) and waits until they listen.
pub fn start_servers(lab: &Lab, pod: &Pod) -> Result<()> {
    start_server(lab, pod, Protocol::Tcp)?;
    start_server(lab, pod, Protocol::Udp)
}

/// Starts one echo server of the pod (also used to heal `no-listener`).
pub fn start_server(lab: &Lab, pod: &Pod, protocol: Protocol) -> Result<()> {
    let dir = lab.pod_dir(pod);
    sys::mkdir(&dir)?;
    let (role, port, args) = match protocol {
        Protocol::Tcp => (
            "tcp-echo",
            pod.tcp_port,
            vec![format!("TCP4-LISTEN:{},fork,reuseaddr,backlog=128", pod.tcp_port), "EXEC:cat".into()],
        ),
        Protocol::Udp => (
            "udp-echo",
            pod.udp_port,
            // One child per datagram source; -T2 ends it after 2 s without traffic.
            vec!["-T2".into(), format!("UDP4-RECVFROM:{},fork", pod.udp_port), "EXEC:cat".into()],
        ),
    };
    let pidfile = dir.join(format!("{role}-{port}.pid"));
    let log = dir.join(format!("{role}-{port}.log"));
    let pid = spawn_detached(Some(&pod.netns), "socat", &args, &log, &pidfile)?;
    let listening = sys::wait_until(sys::scaled(Duration::from_secs(5)), Duration::from_millis(10), || {
        is_listening(pid as i32, protocol, port)
    });
    ensure!(
        listening,
        "{role} on {} did not start listening on {port} (see {})",
        pod.qualified_name(),
        log.display()
    );
    Ok(())
}

/// Whether `pid`'s network namespace has a socket bound to `port` (LISTEN for TCP). Reads
/// /proc/PID/net/*, which shows the sockets of the netns the process lives in.
fn is_listening(pid: i32, protocol: Protocol, port: u16) -> bool {
    let table = fs::read_to_string(format!("/proc/{pid}/net/{}", protocol.as_str())).unwrap_or_default();
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && (protocol == Protocol::Udp || f[3] == "0A")
    })
}

fn wait_for_bindings(lab: &Lab) -> Result<()> {
    // Returns once every chassis processed the NB changes so far (ports claimed, flows in).
    nbctl(lab, &["--wait=hv", "sync"])?;
    sys::retry("every pod port bound to its node's chassis", sys::scaled(READY_TIMEOUT), POLL, || {
        let bound = port_bindings(lab)?;
        for pod in &lab.pods {
            let chassis = bound.get(&pod.iface_id).and_then(|c| c.as_deref());
            ensure!(
                chassis == Some(pod.node.as_str()),
                "port {} is bound to {chassis:?}, expected {}",
                pod.iface_id,
                pod.node
            );
        }
        Ok(())
    })
}

/// Logical port -> name of the chassis it is bound to (None: unbound), from the SB database.
pub fn port_bindings(lab: &Lab) -> Result<HashMap<String, Option<String>>> {
    let chassis = json_rows(&sbctl(lab, &["--format=json", "--columns=_uuid,name", "list", "chassis"])?)?;
    let names: HashMap<String, String> =
        chassis.iter().filter_map(|r| Some((uuid_of(&r[0])?, r[1].as_str()?.to_string()))).collect();
    let bindings = json_rows(&sbctl(
        lab,
        &["--format=json", "--columns=logical_port,chassis", "list", "port_binding"],
    )?)?;
    Ok(bindings
        .iter()
        .filter_map(|r| {
            let port = r[0].as_str()?.to_string();
            let chassis = uuid_of(&r[1]).and_then(|u| names.get(&u).cloned());
            Some((port, chassis))
        })
        .collect())
}

/// Rows of `--format=json` ovsdb client output.
fn json_rows(text: &str) -> Result<Vec<Vec<Value>>> {
    let v: Value = serde_json::from_str(text).context("unexpected ovn-sbctl JSON")?;
    let rows = v["data"].as_array().context("no data in ovn-sbctl JSON")?;
    Ok(rows.iter().filter_map(|r| r.as_array().cloned()).collect())
}

/// The UUID in an OVSDB JSON value `["uuid", "..."]` (an empty set `["set", []]` has none).
fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array()?.as_slice() {
        [tag, uuid] if tag == "uuid" => uuid.as_str().map(str::to_string),
        _ => None,
    }
}

/// Fills in what only exists at run time: br-int ofports, ovn-controller control sockets.
fn record_runtime(lab: &mut Lab) -> Result<()> {
    let mut ofports = HashMap::new();
    for pod in &lab.pods {
        let node = lab.node(&pod.node)?;
        let port = sys::retry("ofport assigned", sys::scaled(Duration::from_secs(10)), POLL, || {
            let out = vsctl(node, &["get", "interface", &pod.host_veth, "ofport"])?;
            let n: i64 = out.trim().parse().context("ofport is not a number")?;
            ensure!(n > 0, "no ofport yet for {}", pod.host_veth);
            u32::try_from(n).context("ofport out of range")
        })?;
        ofports.insert(pod.name.clone(), port);
    }
    for pod in &mut lab.pods {
        pod.ofport = ofports.get(&pod.name).copied();
    }
    for node in &mut lab.nodes {
        let pidfile = node.ovs_rundir.join("ovn-controller.pid");
        let pid = sys::read_pidfile(&pidfile).with_context(|| format!("no pid in {}", pidfile.display()))?;
        let ctl = node.ovs_rundir.join(format!("ovn-controller.{pid}.ctl"));
        ensure!(ctl.exists(), "ovn-controller control socket {} missing", ctl.display());
        node.ovn_controller_ctl = Some(ctl);
    }
    lab.save()
}

/// Same-node and cross-node pings from the first pod, and one connection to each TCP service:
/// `up` returns only once the datapath really forwards.
fn check_connectivity(lab: &Lab) -> Result<()> {
    let first = &lab.pods[0];
    let targets: Vec<&Pod> =
        lab.nodes.iter().filter_map(|n| lab.pods_on(&n.name).find(|p| p.name != first.name)).collect();
    for target in targets {
        sys::retry(
            &format!("ping {} -> {}", first.name, target.name),
            sys::scaled(READY_TIMEOUT),
            POLL,
            || {
                // The very first packet towards a node is usually lost while OVS resolves the
                // remote tunnel endpoint's MAC (userspace tunnelling ARPs on demand): retry soon.
                let ping = probe::Probe::Ping { dst: target.ip, size: None, dont_fragment: false };
                let r = probe::run(lab, &first.name, &ping, sys::scaled(Duration::from_secs(1)))?;
                ensure!(r.ok, "{}", r.detail);
                Ok(())
            },
        )?;
    }
    for svc in lab.services.iter().filter(|s| s.protocol == Protocol::Tcp) {
        sys::retry(
            &format!("{} -> service {}/{} {}", first.name, svc.namespace, svc.name, svc.vip_addr()),
            sys::scaled(READY_TIMEOUT),
            POLL,
            || {
                // Each attempt's own bound scales like the pings' above: under QEMU/TCG on a
                // loaded machine, starting socat in the pod netns, the handshake through OVN's
                // load balancer and the echo can take longer than the probe's 3 s, and an
                // attempt cut short is retried with the same bound, so it would never pass.
                let echo = probe::Probe::TcpEcho { dst: svc.vip_addr(), bytes: 64 };
                let r = probe::run(lab, &first.name, &echo, sys::scaled(probe::PROBE_TIMEOUT))?;
                ensure!(r.ok, "{}", r.detail);
                Ok(())
            },
        )?;
    }
    Ok(())
}
