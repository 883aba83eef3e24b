//! The lab on OVS's **kernel** datapath (`datapath_type=system`), as Kube-OVN nodes run it, in a
//! QEMU VM booting Debian's kernel (this machine's kernel has no OVS module and no Geneve).
//!
//! The outer test boots the VM (virtme-ng over the host's root filesystem, TCG) and runs the
//! inner test of this same binary there; the inner one brings up a two-node lab with
//! `--datapath kernel`, a kovn-monitor per node (`--tunnel-iface genev_sys_6081`, the default),
//! pings across nodes and checks the flow's tunnel leg as learned on OVS's own
//! `genev_sys_6081`: the remote node and the VNI, which must equal OVN's Datapath_Binding
//! tunnel_key of the logical switch (asked of OVN, not of kovn). Everything the inner test
//! makes lives in the VM's kernel and dies with it.
//!
//! The kernel matrix runs the same inner test as its `lab` group
//! (`cargo xtask test-kernels --kernel 6.12:lab,6.1:lab`); `./x test` runs it there, not here.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        UpOptions { datapath: Datapath::Kernel, nodes: 2, pods_per_node: 1, ..UpOptions::named(&name) };
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
    lab::down(&name).expect("lab down");
}
