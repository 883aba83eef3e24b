//! Reversible faults. Each is applied with the tool a real incident would involve (nftables in a
//! namespace, an OpenFlow rule, an OVN ACL, a dead server, a wrong MTU, a cut underlay), recorded
//! in lab.json, and undone from its record alone by `heal`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};

use super::model::{CutHow, Datapath, FAULT_COOKIE, Fault, FaultSpec, Lab, Node, Pod, Protocol, load};
use super::ovs::{bare_values, nbctl, ofctl, transaction};
use super::sys::{self, StateLock, run_in};
use super::up;
use crate::cmd;

/// nftables table (in the pod netns) of `reply-drop`.
const REPLY_DROP_TABLE: &str = "kovn_fault_reply_drop";
/// Priority of `acl-deny` ACLs: above Kube-OVN's NetworkPolicy allow (2001) and default-drop
/// (2000) ACLs, so it wins whatever else is configured.
pub const ACL_DENY_PRIORITY: u32 = 2002;
/// Priority of `ovs-drop` flows: OpenFlow's highest, above every ovn-controller flow in table 0.
pub const OVS_DROP_PRIORITY: u32 = 65535;

impl Lab {
    /// Injects `spec`, records it in lab.json and returns the record. Refuses a fault that is
    /// already injected (same id) rather than stacking it.
    pub fn inject(&mut self, spec: FaultSpec) -> Result<Fault> {
        sys::require_root()?;
        let _lock = StateLock::acquire(&self.state_dir)?;
        let mut lab = load(&self.state_dir.to_string_lossy())?;
        let id = spec.id();
        if let Some(other) = lab.faults.iter().find(|f| f.id == id || f.spec.conflicts_with(&spec)) {
            bail!("{} is already injected and overlaps {id} (heal it first)", other.id);
        }
        let detail = apply(&lab, &spec).with_context(|| format!("cannot inject {id}"))?;
        let fault = Fault {
            id,
            spec,
            detail,
            injected_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        lab.faults.push(fault.clone());
        lab.save()?;
        *self = lab;
        Ok(fault)
    }

    /// Heals fault `id`, or every fault when `None`; returns what was healed. A fault whose undo
    /// fails stays recorded and the error is returned after trying the others.
    pub fn heal(&mut self, id: Option<&str>) -> Result<Vec<Fault>> {
        sys::require_root()?;
        let _lock = StateLock::acquire(&self.state_dir)?;
        let mut lab = load(&self.state_dir.to_string_lossy())?;
        if let Some(id) = id {
            ensure!(
                lab.faults.iter().any(|f| f.id == id),
                "no fault {id} injected (injected: {})",
                lab.faults.iter().map(|f| f.id.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let (chosen, kept): (Vec<Fault>, Vec<Fault>) =
            lab.faults.drain(..).partition(|f| id.is_none_or(|id| f.id == id));
        lab.faults = kept;
        let mut healed = Vec::new();
        let mut errors = Vec::new();
        // Newest first: undo in the reverse order of injection.
        for fault in chosen.into_iter().rev() {
            match revert(&lab, &fault.spec) {
                Ok(()) => healed.push(fault),
                Err(e) => {
                    errors.push(format!("{}: {e:#}", fault.id));
                    lab.faults.push(fault);
                }
            }
        }
        lab.save()?;
        *self = lab;
        if !errors.is_empty() {
            bail!("could not heal: {}", errors.join("; "));
        }
        Ok(healed)
    }
}

/// Applies a fault; returns what was installed, in words.
fn apply(lab: &Lab, spec: &FaultSpec) -> Result<String> {
    match spec {
        FaultSpec::ReplyDrop { pod } => reply_drop(lab, lab.pod(pod)?),
        FaultSpec::OvsDrop { node, dst } => {
            let node = lab.node(node)?;
            let flow = format!(
                "cookie={FAULT_COOKIE:#x},table=0,priority={OVS_DROP_PRIORITY},ip,nw_dst={dst},actions=drop"
            );
            ofctl(node, "add-flow", &[&flow])?;
            Ok(format!("{} br-int: {flow}", node.name))
        }
        FaultSpec::NoListener { pod, port } => {
            let pod = lab.pod(pod)?;
            ensure!(*port == pod.tcp_port, "{} only runs a TCP server on {}", pod.name, pod.tcp_port);
            stop_tcp_server(lab, pod)?;
            Ok(format!("{} TCP echo server on {port} stopped", pod.qualified_name()))
        }
        FaultSpec::Mtu { pod, mtu } => {
            let pod = lab.pod(pod)?;
            ensure!(
                (576..=9000).contains(mtu) && *mtu != pod.mtu,
                "--mtu must be 576..=9000 and differ from the pod's {}",
                pod.mtu
            );
            set_pod_mtu(lab, pod, *mtu)?;
            Ok(format!(
                "{} eth0 and {} MTU {} (overlay carries {})",
                pod.qualified_name(),
                pod.host_veth,
                mtu,
                pod.mtu
            ))
        }
        FaultSpec::TunnelCut { from, to, how } => tunnel_cut(lab, from, to, *how),
        FaultSpec::AclDeny { src, dst } => acl_deny(lab, lab.pod(src)?, lab.pod(dst)?),
    }
}

fn revert(lab: &Lab, spec: &FaultSpec) -> Result<()> {
    match spec {
        FaultSpec::ReplyDrop { pod } => {
            let pod = lab.pod(pod)?;
            run_in(&pod.netns, "nft", &["delete", "table", "inet", REPLY_DROP_TABLE])?;
        }
        FaultSpec::OvsDrop { node, dst } => {
            let node = lab.node(node)?;
            let m = format!("cookie={FAULT_COOKIE:#x}/-1,table=0,ip,nw_dst={dst}");
            ofctl(node, "del-flows", &[&m])?;
        }
        FaultSpec::NoListener { pod, .. } => {
            up::start_server(lab, lab.pod(pod)?, Protocol::Tcp)?;
        }
        FaultSpec::Mtu { pod, .. } => {
            let pod = lab.pod(pod)?;
            set_pod_mtu(lab, pod, pod.mtu)?;
        }
        FaultSpec::TunnelCut { from, to, how } => heal_tunnel_cut(lab, from, to, *how)?,
        FaultSpec::AclDeny { src, dst } => {
            let (src, dst) = (lab.pod(src)?, lab.pod(dst)?);
            let name = acl_name(src, dst);
            let ls = &lab.subnet(&dst.subnet)?.logical_switch;
            let uuids = bare_values(&nbctl(
                lab,
                &["--bare", "--columns=_uuid", "find", "acl", &format!("name=\"{name}\"")],
            )?);
            for uuid in uuids {
                // ACLs are not root rows: removing the switch's reference deletes the ACL.
                nbctl(lab, &["remove", "logical_switch", ls, "acls", &uuid])?;
            }
            nbctl(lab, &["--wait=hv", "sync"])?;
        }
    }
    Ok(())
}

fn fault_file(lab: &Lab, id: &str, ext: &str) -> Result<std::path::PathBuf> {
    let dir = lab.faults_dir();
    sys::mkdir(&dir)?;
    let safe: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    Ok(dir.join(format!("{safe}.{ext}")))
}

/// Loads an nftables ruleset file inside `netns`, or in the root netns when `None` (files rather
/// than a pipe: they stay in the state dir for whoever debugs the fault).
fn nft_load(netns: Option<&str>, path: &Path, ruleset: &str) -> Result<()> {
    fs::write(path, ruleset).with_context(|| format!("cannot write {}", path.display()))?;
    let args = [std::ffi::OsStr::new("-f"), path.as_os_str()];
    match netns {
        Some(netns) => run_in(netns, "nft", &args)?,
        None => cmd::run("nft", &args)?,
    };
    Ok(())
}

/// Drops, on the pod's output hook, whatever would answer a request: SYN-ACKs (any port),
/// anything from its TCP server port, ICMP echo replies, datagrams from its UDP server port.
/// Every rule counts, so `nft list table inet kovn_fault_reply_drop` shows the drops.
fn reply_drop(lab: &Lab, pod: &Pod) -> Result<String> {
    let ruleset = format!(
        "table inet {REPLY_DROP_TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\ttcp flags & (syn | ack) == syn | ack counter drop\n\
         \t\ttcp sport {tcp} counter drop\n\
         \t\ticmp type echo-reply counter drop\n\
         \t\tudp sport {udp} counter drop\n\
         \t}}\n\
         }}\n",
        tcp = pod.tcp_port,
        udp = pod.udp_port,
    );
    let path = fault_file(lab, &format!("reply-drop:{}", pod.name), "nft")?;
    nft_load(Some(&pod.netns), &path, &ruleset)?;
    Ok(format!("nftables table inet {REPLY_DROP_TABLE} in netns {} ({})", pod.netns, path.display()))
}

fn stop_tcp_server(lab: &Lab, pod: &Pod) -> Result<()> {
    let daemon = lab
        .daemons()
        .into_iter()
        .find(|d| d.owner == pod.qualified_name() && d.role == "tcp-echo")
        .context("no TCP server daemon")?;
    let pid = sys::live_pid(&daemon.pidfile, daemon.comm)
        .with_context(|| format!("the TCP server of {} is not running", pod.name))?;
    ensure!(
        sys::terminate(pid, daemon.group, Duration::from_secs(2)),
        "TCP server {pid} of {} did not stop",
        pod.name
    );
    Ok(())
}

/// Sets the MTU of both ends of the pod's veth (a real misconfigured pod has both wrong; only
/// raising the pod end would make the host veth drop the big frames, a different failure).
fn set_pod_mtu(lab: &Lab, pod: &Pod, mtu: u32) -> Result<()> {
    let node = lab.node(&pod.node)?;
    // Growing: host end first; shrinking: pod end first (never a moment where the pod sends
    // frames its peer refuses).
    let raising = mtu > current_mtu(&pod.netns, &pod.iface)?;
    let mtu = mtu.to_string();
    let host = ["-n", &node.netns, "link", "set", &pod.host_veth, "mtu", &mtu];
    let inner = ["-n", &pod.netns, "link", "set", &pod.iface, "mtu", &mtu];
    let order = if raising { [host, inner] } else { [inner, host] };
    for args in order {
        cmd::run("ip", &args)?;
    }
    Ok(())
}

fn current_mtu(netns: &str, iface: &str) -> Result<u32> {
    let out = cmd::stdout("ip", &["-n", netns, "-o", "link", "show", iface])?;
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU in {out:?}"))
}

fn tunnel_table(to: &str) -> String {
    format!("kovn_fault_tunnel_cut_{to}")
}

/// `s` as a piece of an nftables identifier (letters, digits, underscores): anything else, such
/// as `-`, becomes `_`.
fn nft_ident(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// `inet` table of `tunnel-cut --how firewall`, in the to-node's netns: one per from-node.
pub(super) fn tunnel_firewall_table(from: &str) -> String {
    format!("kovn_fault_tunnel_fw_{}", nft_ident(from))
}

/// What every `bridge` table of `tunnel-cut --how path` of lab `lab` starts with. The root netns
/// is shared by every lab, so the name carries the lab's; `lab down` deletes whatever starts
/// with it. Lab names are letters and digits (`validate_name`), so no lab's prefix is another's.
pub(super) fn tunnel_path_prefix(lab: &str) -> String {
    format!("kovn_fault_tunnel_path_{}_", nft_ident(lab))
}

/// `bridge` table of `tunnel-cut --how path` between two nodes of lab `lab`, in the root netns.
pub(super) fn tunnel_path_table(lab: &str, from: &str, to: &str) -> String {
    format!("{}{}_{}", tunnel_path_prefix(lab), nft_ident(from), nft_ident(to))
}

/// The to-node's host firewall: its input hook drops the tunnel's UDP from the from-node.
pub(super) fn tunnel_firewall_ruleset(table: &str, from_ip: Ipv4Addr, port: u16) -> String {
    format!(
        "table inet {table} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip saddr {from_ip} udp dport {port} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The underlay between two nodes: the root netns's bridge family forward hook drops the
/// tunnel's UDP between them, both ways, as the underlay bridge forwards it. Each rule also
/// matches the port the sender's frames enter by (its NIC's root end), so nothing but this
/// lab's bridge is touched. (Not `meta ibrname`: it needs CONFIG_NFT_BRIDGE_META, which some
/// kernels lack.)
pub(super) fn tunnel_path_ruleset(table: &str, a: &Node, b: &Node, port: u16) -> String {
    let rule = |from: &Node, to: &Node| {
        format!(
            "iifname \"{}\" ip saddr {} ip daddr {} udp dport {port} counter drop",
            from.root_veth, from.ip, to.ip
        )
    };
    format!(
        "table bridge {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\t{}\n\
         \t\t{}\n\
         \t}}\n\
         }}\n",
        rule(a, b),
        rule(b, a)
    )
}

/// Whether `how` can cut a tunnel on `datapath`. A host firewall's input hook only sees tunnel
/// packets the node's IP stack receives: with the kernel datapath the `genev_sys_6081` UDP
/// socket does; OVS's userspace datapath reads them off the NIC with AF_PACKET instead.
pub(super) fn check_cut_supported(how: CutHow, datapath: Datapath) -> Result<()> {
    if how == CutHow::Firewall && datapath == Datapath::Userspace {
        bail!(
            "--how firewall needs the kernel datapath (`lab up --datapath kernel`): this lab runs \
             OVS's userspace datapath, which sends and receives tunnel packets through AF_PACKET \
             sockets on the NIC, bypassing the node's IP stack, so a host firewall's input chain \
             never sees them; use --how drop-udp (drops them at the NICs' egress) instead"
        );
    }
    Ok(())
}

/// Whether network namespace `netns` exists (`ip netns add` names it under /run/netns).
fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

/// Cuts the overlay between two nodes.
///
/// `drop-udp`: with userspace tunnelling OVS sends and receives the encapsulated packets on the
/// NIC through AF_PACKET sockets, bypassing the node's IP stack, so the `inet` family never sees
/// them; and packet sockets receive a copy before any ingress hook could drop it. What does see
/// them is the `netdev` egress hook of the NIC. So each node's NIC egress drops UDP to the tunnel
/// port of the other node: the from-node for from->to, the to-node for to->from.
///
/// `firewall`: the to-node's `inet` input chain drops UDP to the tunnel port from the from-node,
/// one direction, as a node firewall blocking Geneve does (kernel datapath only, see
/// [`check_cut_supported`]).
///
/// `path`: neither node; the root netns's `bridge` forward chain drops the tunnel's UDP between
/// the two node IPs both ways, as a broken underlay network would.
fn tunnel_cut(lab: &Lab, from: &str, to: &str, how: CutHow) -> Result<String> {
    let (a, b) = (lab.node(from)?, lab.node(to)?);
    ensure!(a.name != b.name, "--from and --to must differ");
    check_cut_supported(how, lab.datapath)?;
    match how {
        CutHow::DropUdp => drop_tunnel_udp(lab, a, b).inspect_err(|_| {
            // Half a cut must not stay behind unrecorded.
            let _ = heal_tunnel_cut(lab, from, to, how);
        }),
        CutHow::Down => {
            cmd::run("ip", &["-n", &a.netns, "link", "set", &a.underlay_iface, "down"])?;
            Ok(format!("{} {} down (cuts {} from every node)", a.netns, a.underlay_iface, a.name))
        }
        // One `nft -f` each: atomic, nothing half-installed to undo on failure.
        CutHow::Firewall => {
            let port = lab.tunnel.udp_port();
            let table = tunnel_firewall_table(&a.name);
            let path = fault_file(lab, &format!("tunnel-cut:{}:{}:firewall", a.name, b.name), "nft")?;
            nft_load(Some(&b.netns), &path, &tunnel_firewall_ruleset(&table, a.ip, port))?;
            Ok(format!("{} inet {table}: input drops UDP {port} from {} ({})", b.netns, a.ip, path.display()))
        }
        CutHow::Path => {
            let port = lab.tunnel.udp_port();
            let bridge = &lab.underlay.bridge;
            let table = tunnel_path_table(&lab.name, &a.name, &b.name);
            let path = fault_file(lab, &format!("tunnel-cut:{}:{}:path", a.name, b.name), "nft")?;
            nft_load(None, &path, &tunnel_path_ruleset(&table, a, b, port))?;
            Ok(format!(
                "root netns bridge {table}: {bridge} forward drops UDP {port} between {} and {} ({})",
                a.ip,
                b.ip,
                path.display()
            ))
        }
    }
}

fn drop_tunnel_udp(lab: &Lab, a: &Node, b: &Node) -> Result<String> {
    let port = lab.tunnel.udp_port();
    let mut installed = Vec::new();
    for (here, there) in [(a, b), (b, a)] {
        let table = tunnel_table(&there.name);
        let ruleset = format!(
            "table netdev {table} {{\n\
             \tchain egress {{\n\
             \t\ttype filter hook egress device \"{nic}\" priority 0; policy accept;\n\
             \t\tip daddr {dst} udp dport {port} counter drop\n\
             \t}}\n\
             }}\n",
            nic = here.underlay_iface,
            dst = there.ip,
        );
        let id = format!("tunnel-cut:{}:{}:{}", a.name, b.name, here.name);
        let path = fault_file(lab, &id, "nft")?;
        nft_load(Some(&here.netns), &path, &ruleset)?;
        installed
            .push(format!("{} netdev {table} (egress {} to {})", here.netns, here.underlay_iface, there.ip));
    }
    Ok(format!("UDP {port} dropped: {}", installed.join("; ")))
}

fn heal_tunnel_cut(lab: &Lab, from: &str, to: &str, how: CutHow) -> Result<()> {
    let (a, b) = (lab.node(from)?, lab.node(to)?);
    match how {
        CutHow::DropUdp => {
            // Both sides, even if one fails, then report.
            #[expect(
                clippy::needless_collect,
                reason = "collecting into a Result would stop at the first failure"
            )]
            let results: Vec<Result<_>> = [(a, b), (b, a)]
                .into_iter()
                .map(|(here, there)| {
                    let table = tunnel_table(&there.name);
                    run_in(&here.netns, "nft", &["delete", "table", "netdev", &table])
                })
                .collect();
            results.into_iter().collect::<Result<Vec<_>>>()?;
        }
        CutHow::Down => {
            cmd::run("ip", &["-n", &a.netns, "link", "set", &a.underlay_iface, "up"])?;
        }
        CutHow::Firewall => {
            let table = tunnel_firewall_table(&a.name);
            if let Err(e) = run_in(&b.netns, "nft", &["delete", "table", "inet", &table]) {
                // A node netns that is gone took its tables with it; otherwise it is an error.
                if netns_exists(&b.netns) {
                    return Err(e);
                }
            }
        }
        CutHow::Path => {
            let table = tunnel_path_table(&lab.name, &a.name, &b.name);
            cmd::run("nft", &["delete", "table", "bridge", &table])?;
        }
    }
    Ok(())
}

/// `np-deny-<src>-to-<dst>`: the ACL name and the NetworkPolicy it pretends to come from.
pub fn acl_name(src: &Pod, dst: &Pod) -> String {
    format!("np-deny-{}-to-{}", src.name, dst.name)
}

/// A to-lport drop ACL for src -> dst on the destination's logical switch, tagged like a
/// Kube-OVN NetworkPolicy ACL: named, `vendor=kube-ovn`, and external_ids naming the policy
/// (`policy=<ns>/<name>` plus Kube-OVN's kube-ovn.io/policy-* keys). Waits until every chassis
/// installed it (`--wait=hv`).
fn acl_deny(lab: &Lab, src: &Pod, dst: &Pod) -> Result<String> {
    ensure!(src.name != dst.name, "--src and --dst must differ");
    let name = acl_name(src, dst);
    let ls = &lab.subnet(&dst.subnet)?.logical_switch;
    let policy = format!("{}/{name}", dst.namespace);
    let matcher = format!("ip4.src == {} && ip4.dst == {}", src.ip, dst.ip);
    // OVSDB map syntax; keys with `/` and `.` must be quoted.
    let external_ids = [
        ("vendor", "kube-ovn"),
        ("parent", ls.as_str()),
        ("policy", policy.as_str()),
        ("kube-ovn.io/policy-kind", "NetworkPolicy"),
        ("kube-ovn.io/policy-namespace", dst.namespace.as_str()),
        ("kube-ovn.io/policy-name", name.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("\"{k}\"=\"{v}\""))
    .collect::<Vec<_>>()
    .join(",");
    let columns = [
        "direction=to-lport".to_string(),
        format!("priority={ACL_DENY_PRIORITY}"),
        format!("match=\"{matcher}\""),
        "action=drop".into(),
        format!("name=\"{name}\""),
        format!("external_ids={{{external_ids}}}"),
    ];
    let mut create = vec!["--id=@acl", "create", "acl"];
    create.extend(columns.iter().map(String::as_str));
    let mut args = vec!["--wait=hv".to_string()];
    args.extend(transaction(&[&create, &["add", "logical_switch", ls, "acls", "@acl"]]));
    nbctl(lab, &args)?;
    Ok(format!("ACL {name} on {ls}: to-lport {ACL_DENY_PRIORITY} '{matcher}' drop (NetworkPolicy {policy})"))
}
