//! The lab on OVS's **kernel** datapath (`datapath_type=system`), as Kube-OVN nodes run it, in a
//! QEMU VM booting Debian's kernel (this machine's kernel has no OVS module and no Geneve).
//!
//! The outer test boots the VM (virtme-ng over the host's root filesystem, TCG) and runs the
//! inner test of this same binary there; the inner one brings up a two-node lab with
//! `--datapath kernel`, a kovn-monitor per node (`--tunnel-iface genev_sys_6081`, the default),
//! pings across nodes and checks the flow's tunnel leg as learned on OVS's own
//! `genev_sys_6081`: the remote node and the VNI, which must equal OVN's Datapath_Binding
//! tunnel_key of the logical switch (asked of OVN, not of kovn). Then, with two pairs failing
//! at once, node2's host firewall on the tunnel (`tunnel-cut --how firewall`), a cut wire and
//! node1's NIC down must each be named as the cause in one finding; an OpenFlow drop on node2
//! is judged with OVS's own drop reason where the kernel names it (>= 6.4); and the three
//! backend faults behind the service VIP are judged on the backend's path with the backend
//! named. Everything the inner test makes lives in the VM's kernel and dies with it.
//!
//! The kernel matrix runs the same inner test as its `lab` group
//! (`cargo xtask test-kernels --kernel 6.12:lab,6.1:lab`); `./x test` runs it there, not here.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kovn_tests::pod_probe;
use serde_json::Value;
use xtask::lab::{self, Datapath, Lab, UpOptions, monitors};

const INNER: &str = "inner_kernel_datapath_lab";
/// Emulated kernels are 5-10x slower: every bounded wait inside the VM is stretched this much.
const VM_TIMEOUT_SCALE: u32 = 10;
/// The bound on the whole VM run (boot, lab up, monitors, checks) under TCG.
const VM_BOUND: Duration = Duration::from_secs(1500);

/// The newest Debian kernel image of a line in /boot (`vmlinuz-<prefix>*<suffix>`).
fn kernel_image(prefix: &str, suffix: &str) -> PathBuf {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
        .expect("/boot")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let key = rest.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            Some((key, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("no /boot/{prefix}*{suffix}: install the Debian kernel package (`bash scripts/setup.sh vm`)")
    })
}

fn vng() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("vng")).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/opt/kovn/virtme-ng/bin/vng")).filter(|p| p.is_file())).unwrap_or_else(
        || panic!("virtme-ng (vng) not found: install qemu-system-x86, busybox-static and virtme-ng==1.42 (`bash scripts/setup.sh vm`)"),
    )
}

/// Boots `image` and runs the inner test in it; panics with the VM's console on failure.
fn in_vm(image: PathBuf) {
    kovn_tests::require_root();
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_str().expect("utf-8 path");
    assert!(!exe.contains('\''), "{exe}: a quote in the path");
    // vng takes the command as one shell string: only this binary's path and fixed words.
    let script = format!(
        "export KOVN_TEST_TIMEOUT_SCALE={VM_TIMEOUT_SCALE}; '{exe}' --ignored --exact {INNER} --nocapture --test-threads=1"
    );
    let started = Instant::now();
    let mut child = Command::new(vng())
        .args(["--disable-kvm", "--memory", "2G", "--cpus", "2", "--run"])
        .arg(&image)
        .args(["--exec", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn vng");
    let pgid = child.id() as i32;
    // The console, read on threads so a chatty VM never blocks on a full pipe.
    let read = |s: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || std::io::read_to_string(s).unwrap_or_default())
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if started.elapsed() > VM_BOUND {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // QEMU and vng, whatever happened.
    // SAFETY: signalling the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    eprintln!("[kernel-datapath] {} in {:.0} s", image.display(), started.elapsed().as_secs_f32());
    let passed = out.contains(&format!("test {INNER} ... ok")) && out.contains("test result: ok. 1 passed");
    assert!(
        status.is_some() && passed,
        "inner test in the VM ({}) {}:\n--- stdout\n{out}\n--- stderr\n{err}",
        image.display(),
        if status.is_none() { "exceeded its bound" } else { "failed" }
    );
}

#[test]
fn cross_node_flow_learns_its_tunnel_leg_on_genev_sys_6081_linux_6_12() {
    in_vm(kernel_image("vmlinuz-6.12.", "+deb12-amd64"));
}

#[test]
fn cross_node_flow_learns_its_tunnel_leg_on_genev_sys_6081_linux_6_1() {
    in_vm(kernel_image("vmlinuz-6.1.0-", "-amd64"));
}

fn sh(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&kovn_tests::sh(program, args).stdout).into_owned()
}

fn flows(lab: &Lab, node: &str) -> Vec<Value> {
    let m = lab.monitors.iter().find(|m| m.node == node).expect("monitor of node");
    let body = monitors::get_json(&format!("{}/api/v1/flows", m.url), Duration::from_secs(5)).expect("flows");
    body["flows"].as_array().cloned().unwrap_or_default()
}

#[test]
#[ignore = "runs inside the VM that the tests above boot (needs the openvswitch and geneve modules)"]
fn inner_kernel_datapath_lab() {
    kovn_tests::require_root();
    let name = format!("kd{}", std::process::id() % 100_000);
    kovn_tests::lab_fixture::remove_at_exit(&name);
    let t = Instant::now();
    let opts =
        UpOptions { datapath: Datapath::Kernel, nodes: 2, pods_per_node: 2, ..UpOptions::named(&name) };
    let lab = lab::up(&opts).expect("lab up --datapath kernel").into_lab();
    eprintln!("[kernel-datapath] lab up in {:.0} s", t.elapsed().as_secs_f32());
    // OVS made its own Geneve vport device in each node netns, on the kernel datapath.
    for node in &lab.nodes {
        let link = sh("ip", &["-n", &node.netns, "-d", "link", "show", "genev_sys_6081"]);
        assert!(link.contains("geneve") && link.contains("external"), "{}: {link}", node.name);
        let dp = sh("ip", &["-n", &node.netns, "link", "show", "ovs-system"]);
        assert!(dp.contains("ovs-system"), "{}: no kernel datapath: {dp}", node.name);
    }
    let t = Instant::now();
    monitors::start(&lab, &kovn_tests::monitor_bin()).expect("monitors");
    eprintln!("[kernel-datapath] monitors ready in {:.0} s", t.elapsed().as_secs_f32());
    let lab = lab::load(&name).expect("lab.json");
    let a = lab.pods.iter().find(|p| p.node == "node1").expect("pod on node1").clone();
    let b =
        lab.pods.iter().find(|p| p.node == "node2" && p.subnet == a.subnet).expect("pod on node2").clone();
    // A cross-node ping, answered (ping's own exit status is the independent truth).
    let ping = Command::new("ip")
        .args(["netns", "exec", &a.netns, "ping", "-c", "5", "-i", "0.3", "-W", "5"])
        .arg(b.ip.to_string())
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "{} -> {} across nodes: {}",
        a.name,
        b.name,
        String::from_utf8_lossy(&ping.stdout)
    );
    // The VNI: OVN's tunnel key of the logical switch's datapath.
    let ls = &lab.subnet(&a.subnet).expect("subnet").logical_switch;
    let key = sh(
        "ovn-sbctl",
        &[
            &format!("--db={}", lab.central.sb_db()),
            "--bare",
            "--columns=tunnel_key",
            "find",
            "Datapath_Binding",
            &format!("external_ids:name={ls}"),
        ],
    );
    let vni: u64 = key.trim().parse().unwrap_or_else(|_| panic!("tunnel key of {ls}: {key:?}"));
    // Bounded poll: the monitors publish what they read each poll.
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    let check = |node: &str, remote: &str| -> Result<(), String> {
        let fs = flows(&lab, node);
        let f = fs
            .iter()
            .find(|f| {
                f["protocol"] == "icmp" && f["src_ip"] == a.ip.to_string() && f["dst_ip"] == b.ip.to_string()
            })
            .ok_or_else(|| format!("no icmp flow {} -> {} on {node}: {fs:?}", a.ip, b.ip))?;
        let t = &f["tunnel"];
        let remote_ip = lab.node(remote).expect("node").ip.to_string();
        let got = (t["remote_ip"].as_str(), t["remote_node"].as_str(), t["vni"].as_u64());
        if got != (Some(remote_ip.as_str()), Some(remote), Some(vni)) {
            return Err(format!("tunnel leg on {node}: {got:?}, want ({remote_ip}, {remote}, {vni}): {f:#}"));
        }
        let on_genev = f["interfaces"].as_array().is_some_and(|i| {
            i.iter().any(|i| i["name"] == "genev_sys_6081" && i["packets"].as_u64().unwrap_or(0) > 0)
        });
        if !on_genev {
            return Err(format!("flow not seen on genev_sys_6081 of {node}: {f:#}"));
        }
        // The API's field is `state` (answered/unanswered/refused/...).
        if f["state"] != "answered" {
            return Err(format!("flow not answered on {node}: {f:#}"));
        }
        Ok(())
    };
    loop {
        match check("node1", "node2").and_then(|()| check("node2", "node1")) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
    eprintln!(
        "[kernel-datapath] cross-node flow {} -> {} with its tunnel leg (VNI {vni}) on genev_sys_6081 of both nodes",
        a.name, b.name
    );
    // The tunnel faults with two pairs failing at once (each pod of node1 to one of node2), as
    // an incident hits every pair: one finding per node (pair) must hold them both.
    let a2 =
        lab.pods.iter().find(|p| p.node == "node1" && p.name != a.name).expect("second pod on node1").clone();
    let b2 =
        lab.pods.iter().find(|p| p.node == "node2" && p.name != b.name).expect("second pod on node2").clone();
    let pairs = [(a.clone(), b.clone()), (a2.clone(), b2)];
    let lab = firewall_blocks_the_tunnel(lab, &pairs);
    let lab = cut_is_named(lab, &pairs, lab::CutHow::Path, "lost_in_tunnel");
    let lab = cut_is_named(lab, &pairs, lab::CutHow::Down, "underlay_down");
    let lab = ovs_drop_named(lab, &a, &b);
    let lab = mtu_same_node_named(lab, &a, &a2);
    // The three backend faults behind the service VIP (OVN's load balancer in OVS's kernel
    // datapath, conntrack DNAT), each judged on the backend's path with the backend named.
    let lab = vip_fault_named(lab, VipFault::OvsDrop, "lost_before_destination_pod", 43100);
    let lab = vip_fault_named(lab, VipFault::ReplyDrop, "dropped_in_destination_pod", 43400);
    vip_fault_named(lab, VipFault::AclDeny, "never_left_source", 43700);
    lab::down(&name).expect("lab down");
}

/// node1's findings, asked from inside its namespace (its address answers there even while
/// its NIC is down).
fn alerts_inside(lab: &Lab, node: &str) -> Vec<Value> {
    let m = lab.monitors.iter().find(|m| m.node == node).expect("monitor of node");
    let netns = lab.node(node).expect("node").netns.clone();
    let url = format!("{}/api/v1/alerts", m.url);
    let body = kovn_tests::in_netns(&netns, move || monitors::get_json(&url, Duration::from_secs(5)))
        .join()
        .expect("in-namespace request")
        .expect("alerts");
    body["alerts"].as_array().cloned().unwrap_or_default()
}

/// Pings every pair at once (`count` echoes each, 0.5 s apart, 2 s to answer): per pair, whether
/// every echo was answered, and what ping printed.
fn ping_pairs(pairs: &[(lab::Pod, lab::Pod)], count: &str) -> Vec<(bool, String)> {
    #[expect(clippy::needless_collect, reason = "every ping starts before the first is waited for")]
    let children: Vec<_> = pairs
        .iter()
        .map(|(a, b)| {
            Command::new("ip")
                .args(["netns", "exec", &a.netns, "ping", "-c", count, "-i", "0.5", "-W", "2"])
                .arg(b.ip.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ping")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("ping");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .collect()
}

/// node1's flows, asked from inside its namespace (as `alerts_inside`).
fn flows_inside(lab: &Lab, node: &str) -> Vec<Value> {
    let m = lab.monitors.iter().find(|m| m.node == node).expect("monitor of node");
    let netns = lab.node(node).expect("node").netns.clone();
    let url = format!("{}/api/v1/flows", m.url);
    let body = kovn_tests::in_netns(&netns, move || monitors::get_json(&url, Duration::from_secs(5)))
        .join()
        .expect("in-namespace request")
        .expect("flows");
    body["flows"].as_array().cloned().unwrap_or_default()
}

/// Heals the lab's fault and waits until every pair pings again and `finding` is resolved on
/// node1 (asked from inside its namespace, which answers also while its NIC is down).
fn heal_until_resolved(lab: &mut Lab, pairs: &[(lab::Pod, lab::Pod)], finding: &Value, what: &str) {
    lab.heal(None).expect("heal");
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    loop {
        let healed = ping_pairs(pairs, "2").iter().all(|(ok, _)| *ok);
        let all = alerts_inside(lab, "node1");
        if healed && all.iter().any(|x| x["id"] == finding["id"] && x["state"] == "resolved") {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: not resolved after heal (ping ok: {healed}): {all:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How many of `pairs` the finding holds: a pair is in it when one of its flow ids is a flow
/// of that pair in node1's flow table (each ping run is a flow of its own: its echo id).
fn pairs_in(lab: &Lab, finding: &Value, pairs: &[(lab::Pod, lab::Pod)]) -> usize {
    let ids: Vec<&str> =
        finding["flows"].as_array().map_or(Vec::new(), |f| f.iter().filter_map(Value::as_str).collect());
    let table = flows_inside(lab, "node1");
    pairs
        .iter()
        .filter(|(a, b)| {
            table.iter().any(|f| {
                f["id"].as_str().is_some_and(|id| ids.contains(&id))
                    && f["src_ip"] == a.ip.to_string()
                    && f["dst_ip"] == b.ip.to_string()
            })
        })
        .count()
}

/// The tunnel cut `how` (the wire between the nodes, or node1's NIC down) while every pair (a pod
/// of node1 to a pod of node2) pings: node1's monitor raises exactly one firing finding whose
/// verdict is `hop` and which holds every pair, node2's none of its own; healed, it resolves.
fn cut_is_named(mut lab: Lab, pairs: &[(lab::Pod, lab::Pod)], how: lab::CutHow, hop: &str) -> Lab {
    let t = Instant::now();
    lab.inject(lab::FaultSpec::TunnelCut { from: "node1".into(), to: "node2".into(), how })
        .unwrap_or_else(|e| panic!("tunnel-cut --how {how:?}: {e:#}"));
    for (ok, out) in ping_pairs(pairs, "3") {
        assert!(!ok, "{how:?}: the tunnel is cut, yet: {out}");
    }
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    let finding = loop {
        let _ = ping_pairs(pairs, "1");
        let all = alerts_inside(&lab, "node1");
        let firing: Vec<&Value> = all.iter().filter(|x| x["state"] == "firing").collect();
        if firing.len() == 1
            && firing[0]["verdict"]["hop"] == hop
            && pairs_in(&lab, firing[0], pairs) == pairs.len()
        {
            break firing[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{how:?}: no single finding with verdict {hop} holding all {} pairs: {all:#?}",
            pairs.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    if how != lab::CutHow::Down {
        let on2: Vec<Value> = alerts(&lab, "node2").into_iter().filter(|x| x["state"] == "firing").collect();
        assert!(on2.is_empty(), "{how:?}: node2 raises nothing of its own: {on2:#?}");
    }
    heal_until_resolved(&mut lab, pairs, &finding, &format!("{how:?}"));
    eprintln!(
        "[kernel-datapath] tunnel cut {how:?} named {hop} on node1 holding all {} pairs ({} flows), resolved in {:.0} s",
        pairs.len(),
        finding["flows"].as_array().map_or(0, Vec::len),
        t.elapsed().as_secs_f32()
    );
    lab
}

fn alerts(lab: &Lab, node: &str) -> Vec<Value> {
    let m = lab.monitors.iter().find(|m| m.node == node).expect("monitor of node");
    let body =
        monitors::get_json(&format!("{}/api/v1/alerts", m.url), Duration::from_secs(5)).expect("alerts");
    body["alerts"].as_array().cloned().unwrap_or_default()
}

/// node2's host firewall drops the Geneve packets from node1 (nftables input, as a node
/// firewall blocking UDP 6081 does) while every pair pings: node1's monitor raises exactly one
/// firing finding, for the node pair and holding every pair, whose verdict names node2's
/// firewall (it reads node2's drops); node2's raises nothing; healed, it resolves. The pings'
/// own outcome and the rule's counter are the truth.
fn firewall_blocks_the_tunnel(mut lab: Lab, pairs: &[(lab::Pod, lab::Pod)]) -> Lab {
    let t = Instant::now();
    lab.inject(lab::FaultSpec::TunnelCut {
        from: "node1".into(),
        to: "node2".into(),
        how: lab::CutHow::Firewall,
    })
    .expect("tunnel-cut --how firewall");
    for (ok, out) in ping_pairs(pairs, "4") {
        assert!(!ok, "the tunnel is blocked, yet: {out}");
    }
    let node2 = lab.node("node2").expect("node2").clone();
    let rules = sh("ip", &["netns", "exec", &node2.netns, "nft", "list", "ruleset"]);
    assert!(
        rules.lines().any(|l| l.contains("udp dport") && !l.contains("counter packets 0 ")),
        "node2's rule dropped nothing:\n{rules}"
    );
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    let finding = loop {
        // Keep the requests failing while the monitors judge them.
        let _ = ping_pairs(pairs, "1");
        let all = alerts(&lab, "node1");
        let firing: Vec<&Value> = all.iter().filter(|x| x["state"] == "firing").collect();
        if firing.len() == 1
            && firing[0]["verdict"]["hop"] == "tunnel_blocked_by_firewall"
            && pairs_in(&lab, firing[0], pairs) == pairs.len()
        {
            break firing[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single finding blaming node2's firewall holding all {} pairs: {all:#?}",
            pairs.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        finding["verdict"]["summary"].as_str().is_some_and(|s| s.contains("firewall on node2")),
        "{finding:#}"
    );
    let on2: Vec<Value> = alerts(&lab, "node2").into_iter().filter(|x| x["state"] == "firing").collect();
    assert!(on2.is_empty(), "node2 raises nothing of its own: {on2:#?}");
    heal_until_resolved(&mut lab, pairs, &finding, "firewall");
    eprintln!(
        "[kernel-datapath] node2's firewall on the tunnel named on node1 holding all {} pairs ({} flows), resolved in {:.0} s",
        pairs.len(),
        finding["flows"].as_array().map_or(0, Vec::len),
        t.elapsed().as_secs_f32()
    );
    lab
}

/// The running kernel's (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut n = release.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok());
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// An OpenFlow drop on node2's br-int for b's address (`fault ovs-drop`) while a pings b: OVS's
/// kernel datapath drops the requests arriving from the tunnel. OVS's own datapath flow for b
/// (`dpctl/dump-flows`: `actions:drop`, packets > 0) is the independent truth. Linux >= 6.4
/// names these drops (`OVS_DROP_*`, the OVS subsystem's reasons): node2's `/api/v1/drops` holds
/// them for the flow and node1's one finding, `lost_before_destination_pod`, ends with the
/// reason. Older kernels free them as consumed (nothing to record): there the verdict alone is
/// checked, and no `OVS_DROP_*` record may appear. Healed, the finding resolves.
fn ovs_drop_named(mut lab: Lab, a: &lab::Pod, b: &lab::Pod) -> Lab {
    let t = Instant::now();
    let named = kernel_version() >= (6, 4);
    lab.inject(lab::FaultSpec::OvsDrop { node: "node2".into(), dst: b.ip }).expect("ovs-drop");
    let pair = [(a.clone(), b.clone())];
    for (ok, out) in ping_pairs(&pair, "3") {
        assert!(!ok, "the OpenFlow drop is in place, yet: {out}");
    }
    let node2 = lab.node("node2").expect("node2").clone();
    let dp = lab::ovs::appctl(&node2.vswitchd_ctl, &["dpctl/dump-flows"]).expect("dpctl/dump-flows");
    let dst = format!("dst={}", b.ip);
    let dropped: u64 = dp
        .lines()
        .filter(|l| l.contains(&dst) && l.trim_end().ends_with("actions:drop"))
        .filter_map(|l| l.split("packets:").nth(1)?.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "no datapath drop flow for {} hit on node2:\n{dp}", b.ip);
    let node2_drops = || -> Vec<Value> {
        let m = lab.monitors.iter().find(|m| m.node == "node2").expect("monitor of node2");
        let body =
            monitors::get_json(&format!("{}/api/v1/drops", m.url), Duration::from_secs(5)).expect("drops");
        body["drops"].as_array().cloned().unwrap_or_default()
    };
    let ovs_drop = |d: &&Value| d["reason"].as_str().is_some_and(|r| r.starts_with("OVS_DROP_"));
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    let (finding, record) = loop {
        let _ = ping_pairs(&pair, "1");
        let all = alerts(&lab, "node1");
        let firing: Vec<&Value> = all.iter().filter(|x| x["state"] == "firing").collect();
        let drops = node2_drops();
        let record = drops
            .iter()
            .filter(ovs_drop)
            .find(|d| d["src_ip"] == a.ip.to_string() && d["dst_ip"] == b.ip.to_string())
            .cloned();
        let judged = firing.len() == 1
            && firing[0]["kind"] == "request_without_reply"
            && firing[0]["verdict"]["hop"] == "lost_before_destination_pod";
        let summary = firing.first().and_then(|f| f["verdict"]["summary"].as_str()).unwrap_or("");
        if judged && (!named || (record.is_some() && summary.contains("OVS_DROP_"))) {
            break (firing[0].clone(), record);
        }
        assert!(
            Instant::now() < deadline,
            "no single finding lost_before_destination_pod{}: {all:#?}\n--- node2's drops\n{drops:#?}",
            if named { " naming OVS's drop reason" } else { "" }
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    if named {
        let r = record.expect("checked above");
        assert!(r["count"].as_u64().unwrap_or(0) > 0 && r["location"] == "node", "{r:#}");
    } else {
        let drops = node2_drops();
        let any: Vec<&Value> = drops.iter().filter(ovs_drop).collect();
        assert!(any.is_empty(), "Linux < 6.4 has no OVS drop reasons, yet: {any:#?}");
    }
    heal_until_resolved(&mut lab, &pair, &finding, "ovs-drop");
    eprintln!(
        "[kernel-datapath] ovs-drop on node2 ({dropped} packets dropped by the datapath flow) judged lost_before_destination_pod on node1{} and resolved in {:.0} s",
        if named {
            format!(
                " naming {}",
                finding["verdict"]["summary"].as_str().and_then(|s| s.split("reason ").last()).unwrap_or("?")
            )
        } else {
            " (no OVS drop reasons before Linux 6.4)".to_string()
        },
        t.elapsed().as_secs_f32()
    );
    lab
}

/// A DF ping from `a` to `b` on the same node (`size` bytes of payload, `count` echoes): whether
/// every echo was answered, and what ping printed.
fn df_ping(a: &lab::Pod, b: &lab::Pod, size: u32, count: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &a.netns, "ping", "-M", "do", "-s", &size.to_string()])
        .args(["-c", count, "-i", "0.5", "-W", "2"])
        .arg(b.ip.to_string())
        .output()
        .expect("ping");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// The seeds' MTU mismatch on one node (`fault mtu`: pod `a`'s eth0 and host veth at 1500, the
/// overlay's pods at 1400) while `a` sends full-size DF pings to `b` on the same node: OVS's
/// kernel datapath drops each at `b`'s port (`ovs_vport_send`; the kernel's own log line
/// "dropped over-mtu packet" is the independent truth), small pings still pass. node1 raises
/// exactly one firing `mtu` finding for the pair, `pod_to_pod_same_node`, hop
/// `lost_before_destination_pod`, whose verdict says OVS's kernel datapath freed them, with the
/// function (the monitor runs as root here, so it reads kernel addresses; the drop in
/// `ovs_vport_send` is a tail call, so the site named is in its caller, in the openvswitch
/// module), as does its drop record. Healed, it resolves.
fn mtu_same_node_named(mut lab: Lab, a: &lab::Pod, b: &lab::Pod) -> Lab {
    let t = Instant::now();
    lab.inject(lab::FaultSpec::Mtu { pod: a.name.clone(), mtu: 1500 }).expect("mtu fault");
    let big = 1500 - 28;
    let (ok, out) = df_ping(a, b, big, "3");
    assert!(!ok, "a 1500-byte DF ping into a 1400-byte port passed: {out}");
    let (ok, out) = df_ping(a, b, 56, "2");
    assert!(ok, "small pings still pass: {out}");
    let dmesg = sh("dmesg", &[]);
    assert!(
        dmesg.contains(&format!("{}: dropped over-mtu packet", b.host_veth)),
        "OVS's kernel datapath should log the drop at {}'s port; dmesg tail:\n{}",
        b.name,
        dmesg.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    let in_ovs = |d: &Value| d["kernel_function"].as_str().is_some_and(|f| f.ends_with(" [openvswitch]"));
    let node1_drops = || -> Value {
        let m = lab.monitors.iter().find(|m| m.node == "node1").expect("monitor of node1");
        monitors::get_json(&format!("{}/api/v1/drops", m.url), Duration::from_secs(5)).expect("drops")
    };
    let deadline = Instant::now() + Duration::from_secs(30) * kovn_tests::timeout_scale();
    let finding = loop {
        let _ = df_ping(a, b, big, "1");
        let all = alerts(&lab, "node1");
        let firing: Vec<&Value> = all.iter().filter(|x| x["state"] == "firing").collect();
        let summary = firing.first().and_then(|f| f["verdict"]["summary"].as_str()).unwrap_or("");
        if firing.len() == 1
            && firing[0]["kind"] == "mtu"
            && firing[0]["scenario"] == "pod_to_pod_same_node"
            && firing[0]["verdict"]["hop"] == "lost_before_destination_pod"
            && summary.contains("OVS's kernel datapath on node1 dropped")
            && summary.contains(" [openvswitch]; a packet larger than its output port's MTU")
        {
            break firing[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single mtu finding lost_before_destination_pod naming OVS's datapath: {all:#?}\n--- node1's drops\n{:#}\n--- kptr_restrict {}",
            node1_drops(),
            std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").unwrap_or_default().trim()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(
        (finding["src_ip"].as_str(), finding["dst_ip"].as_str()),
        (Some(a.ip.to_string().as_str()), Some(b.ip.to_string().as_str())),
        "{finding:#}"
    );
    let drops = node1_drops();
    let record = drops["drops"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| in_ovs(d) && d["src_ip"] == a.ip.to_string() && d["dst_ip"] == b.ip.to_string())
        .unwrap_or_else(|| panic!("no drop record freed in OVS's datapath for the pair: {drops:#}"));
    let function = record["kernel_function"].as_str().unwrap_or_default().to_string();
    heal_until_resolved(&mut lab, &[(a.clone(), b.clone())], &finding, "mtu");
    let (ok, out) = df_ping(a, b, a.mtu - 28, "2");
    assert!(ok, "healed: the largest DF ping of the pod MTU passes: {out}");
    eprintln!(
        "[kernel-datapath] mtu on {} to {} on the same node judged lost_before_destination_pod, freed in {function}, resolved in {:.0} s",
        a.name,
        b.name,
        t.elapsed().as_secs_f32()
    );
    lab
}

/// How long a TCP connect may take under TCG.
const VM_CONNECT_SECS: f32 = 2.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VipFault {
    /// An OpenFlow drop on the backend's node for the backend's address.
    OvsDrop,
    /// The backend's own firewall drops its replies.
    ReplyDrop,
    /// An OVN ACL (a NetworkPolicy) denies the client to the backend: OVN drops the DNATed
    /// packet on the client's node, so only OVS's conntrack knows the backend (the drill-down
    /// names it from there).
    AclDeny,
}

/// A fault on the backend on node2 of the service `shop/db` while a client on node1 connects to
/// the VIP (source ports tried until conntrack shows that backend chosen): node1 raises exactly
/// one firing `request_without_reply` finding, `pod_to_service`, naming the service and the
/// backend, with the verdict `hop`; on Linux >= 6.4 the OpenFlow drop's finding also names
/// OVS's drop reason. Healed (the same backend answering again), it resolves.
fn vip_fault_named(mut lab: Lab, fault: VipFault, hop: &str, first_port: u16) -> Lab {
    let t = Instant::now();
    let svc = lab.service("db", lab::Protocol::Tcp).expect("service shop/db").clone();
    let vip = svc.vip_addr();
    let backend = svc
        .backends
        .iter()
        .find_map(|b| lab.pods.iter().find(|p| p.ip == *b.ip() && p.node == "node2"))
        .expect("a backend of shop/db on node2")
        .clone();
    let client =
        lab.pods.iter().find(|p| p.node == "node1" && p.workload != "db").expect("a client on node1").clone();
    let url =
        format!("{}/api/v1/alerts", lab.monitors.iter().find(|m| m.node == "node1").expect("monitor").url);
    let before = monitors::get_json(&url, Duration::from_secs(5)).expect("alerts")["time"]
        .as_str()
        .expect("time")
        .to_string();
    let spec = match fault {
        VipFault::OvsDrop => lab::FaultSpec::OvsDrop { node: backend.node.clone(), dst: backend.ip },
        VipFault::ReplyDrop => lab::FaultSpec::ReplyDrop { pod: backend.name.clone() },
        VipFault::AclDeny => lab::FaultSpec::AclDeny { src: client.name.clone(), dst: backend.name.clone() },
    };
    lab.inject(spec).unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
    let (sport, probe) = pod_probe::connect_via(&lab, &client, vip, &backend, first_port, VM_CONNECT_SECS);
    let ok = probe.ok;
    assert!(!ok, "{fault:?} on {}, yet port {sport} was answered", backend.name);
    let new_firing = |all: &[Value]| -> Vec<Value> {
        all.iter()
            .filter(|a| {
                a["state"] == "firing" && a["first_seen"].as_str().is_some_and(|t| t > before.as_str())
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(40) * kovn_tests::timeout_scale();
    let finding = loop {
        let all = alerts(&lab, "node1");
        let firing = new_firing(&all);
        if let [a] = firing.as_slice()
            && a["kind"] == "request_without_reply"
            && a["verdict"]["hop"] == hop
            && a["scenario"] == "pod_to_service"
            && a["dst"]["service"] == "shop/db"
            && a["backend"]["pod"]["pod"] == backend.name.as_str()
            && (fault != VipFault::OvsDrop
                || kernel_version() < (6, 4)
                || a["verdict"]["summary"].as_str().is_some_and(|s| s.contains("OVS_DROP_")))
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}: no single firing finding {} -> svc shop/db (backend {}) with verdict {hop}: {all:#?}",
            client.name,
            backend.name
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(finding["src"]["pod"], client.name.as_str(), "{finding:#}");
    lab.heal(None).expect("heal");
    // OVN may take a moment to remove an ACL (northd, ovn-controller): a few tries, each
    // balanced to the same backend.
    let mut tries = 0;
    loop {
        let (_, probe) = pod_probe::connect_via(
            &lab,
            &client,
            vip,
            &backend,
            first_port + 50 + tries * 40,
            VM_CONNECT_SECS,
        );
        let ok = probe.ok;
        tries += 1;
        if ok {
            break;
        }
        assert!(tries < 5, "{fault:?} healed, yet {} does not answer through the VIP", backend.name);
        std::thread::sleep(Duration::from_secs(1));
    }
    let deadline = Instant::now() + Duration::from_secs(40) * kovn_tests::timeout_scale();
    loop {
        let all = alerts(&lab, "node1");
        if all.iter().any(|x| x["id"] == finding["id"] && x["state"] == "resolved") {
            let left = new_firing(&all);
            assert!(left.is_empty(), "{fault:?}: nothing of this fault fires once healed: {left:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "{fault:?}: not resolved after heal: {all:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "[kernel-datapath] {fault:?} on backend {} of shop/db judged {hop} on node1 with the backend named ({}) and resolved in {:.0} s",
        backend.name,
        finding["verdict"]["summary"].as_str().unwrap_or_default(),
        t.elapsed().as_secs_f32()
    );
    lab
}

/// The healthy mix on the kernel datapath, as an operator would leave it running: a two-node
/// lab with three pods per node (so same-node, cross-node and service-VIP traffic), a monitor
/// per node, and `lab traffic`'s seeded mix round after round for `KOVN_MIX_MINUTES` (default
/// 10). Every round must pass on its own terms (the probes' outcomes are the truth), and the
/// monitors must raise nothing at all: no finding, firing or resolved, on either node (so
/// nothing reaches Alertmanager either). Run by the kernel matrix's `mix` group, not by CI.
#[test]
#[ignore = "runs inside a VM booted by the kernel matrix's mix group (needs the openvswitch and geneve modules)"]
fn inner_kernel_datapath_mix() {
    kovn_tests::require_root();
    let minutes: u64 = std::env::var("KOVN_MIX_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(10);
    let name = format!("km{}", std::process::id() % 100_000);
    kovn_tests::lab_fixture::remove_at_exit(&name);
    let t = Instant::now();
    let opts =
        UpOptions { datapath: Datapath::Kernel, nodes: 2, pods_per_node: 3, ..UpOptions::named(&name) };
    let lab = lab::up(&opts).expect("lab up --datapath kernel").into_lab();
    eprintln!("[kernel-mix] lab up in {:.0} s", t.elapsed().as_secs_f32());
    monitors::start(&lab, &kovn_tests::monitor_bin()).expect("monitors");
    let lab = lab::load(&name).expect("lab.json");
    let t = Instant::now();
    let (mut rounds, mut items, mut retried, mut seed) = (0u32, 0usize, 0u32, 1u64);
    while t.elapsed() < Duration::from_secs(60 * minutes) {
        let opts = lab::TrafficOptions { duration: Duration::from_secs(30), seed };
        let report = lab::traffic::run(&lab, &opts, |_| {}).expect("traffic");
        let failed: Vec<String> =
            report.items.iter().filter(|i| i.failed > 0).map(|i| format!("{i:?}")).collect();
        // OVS's own account of upcalls it lost (`dpctl/show`: `lookups: hit missed lost`) and
        // the monitors' findings, printed with a failed round: a lost upcall drops the packet.
        let datapaths = || -> String {
            lab.nodes
                .iter()
                .map(|n| {
                    let show = lab::ovs::appctl(&n.vswitchd_ctl, &["dpctl/show"])
                        .unwrap_or_else(|e| format!("{e:#}"));
                    let lookups =
                        show.lines().find(|l| l.contains("lookups")).unwrap_or("?").trim().to_string();
                    format!("{}: {lookups}", n.name)
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            report.all_ok(),
            "healthy traffic failed (seed {seed}): {failed:#?} {:?}\n--- OVS datapaths\n{}\n--- findings\nnode1: {:#?}\nnode2: {:#?}",
            report.long,
            datapaths(),
            alerts(&lab, "node1"),
            alerts(&lab, "node2")
        );
        rounds += report.rounds;
        items += report.items.len();
        retried += report.items.iter().map(|i| i.retried).sum::<u32>();
        seed += 1;
        for node in ["node1", "node2"] {
            let all = alerts(&lab, node);
            if !all.is_empty() {
                // The kernel's own words about it (e.g. OVS's "dropped over-mtu packet").
                let dmesg = sh("dmesg", &[]);
                let tail: Vec<&str> = dmesg.lines().rev().take(25).collect();
                let links = sh("ip", &["-n", &lab.node(node).expect("node").netns, "-o", "link"]);
                panic!(
                    "a healthy mix raised findings on {node} after {:.0} s: {all:#?}\n--- dmesg (last lines, newest first)\n{}\n--- links\n{links}\n--- OVS datapaths\n{}",
                    t.elapsed().as_secs_f32(),
                    tail.join("\n"),
                    datapaths()
                );
            }
        }
    }
    eprintln!(
        "[kernel-mix] {minutes} min of healthy mix ({rounds} rounds, {items} items, seeds 1..{}, {retried} UDP/ping probe(s) passed on their retry): no finding on either node",
        seed - 1
    );
    lab::down(&name).expect("lab down");
}
