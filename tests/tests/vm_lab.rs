//! `cargo xtask vm-lab` end to end, as a user on a host without OVS's kernel module runs it:
//! `vm-lab up` boots Debian's 6.12 in QEMU with the kernel-datapath lab and a monitor per node
//! inside and returns; a cross-node ping goes through the agent (`vm-lab run -- lab probe`);
//! node1's monitor API, read from the host through the forwarded port, shows that flow answered
//! with its tunnel leg (node2, VNI > 0) learned on OVS's `genev_sys_6081`; the agent refuses what
//! it must refuse; `vm-lab down` powers the VM off and leaves no QEMU behind.
//!
//! The independent truth for the ping is its own exit status in the VM; for the tunnel leg, the
//! lab's own account of node2 (`lab status -o json`, the node IP OVN uses as its encap).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use xtask::vmlab;

/// target/debug/xtask, beside this test's target directory (`cargo xtask test` built it).
fn xtask_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("xtask");
    assert!(bin.exists(), "{} not found: build it first (`cargo build -p xtask`)", bin.display());
    bin
}

fn xtask(args: &[&str]) -> Output {
    Command::new(xtask_bin()).args(args).output().expect("xtask")
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Three consecutive free ports on 127.0.0.1 (agent, node1, node2).
fn free_port_base() -> u16 {
    for _ in 0..50 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        if base < 60000 && (0..3).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no three free consecutive ports on 127.0.0.1");
}

/// `vm-lab down` on any way out, then the VM's process group killed if it is still there.
struct Down {
    name: String,
    state: PathBuf,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(xtask_bin()).args(["vm-lab", "down", "--name", &self.name]).output();
        if let Ok(bytes) = std::fs::read(self.state.join("vm.json"))
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(pid) = v["pid"].as_i64()
        {
            // SAFETY: the VM's own process group, started by vm-lab up.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn get_json(url: &str) -> Result<Value, String> {
    xtask::lab::monitors::get_json(url, Duration::from_secs(5)).map_err(|e| format!("{e:#}"))
}

#[test]
fn vm_lab_up_run_forwarded_api_and_down() {
    kovn_tests::require_root();
    let name = format!("vm{}", std::process::id() % 100_000);
    let base = free_port_base();
    let target = xtask_bin().parent().and_then(Path::parent).expect("target").to_path_buf();
    let state = target.join("vm-lab").join(&name);
    let _down = Down { name: name.clone(), state: state.clone() };
    let monitor = kovn_tests::monitor_bin().to_string_lossy().into_owned();
    let started = Instant::now();
    let up = xtask(&[
        "vm-lab",
        "up",
        "--name",
        &name,
        "--kernel",
        "6.12",
        "--port-base",
        &base.to_string(),
        "--bin",
        &monitor,
        "--",
        "--pods-per-node",
        "2",
    ]);
    let console = || std::fs::read_to_string(state.join("console.log")).unwrap_or_default();
    assert!(up.status.success(), "vm-lab up failed: {}\n--- console\n{}", text(&up), console());
    let node1 = format!("http://127.0.0.1:{}", base + 1);
    assert!(String::from_utf8_lossy(&up.stdout).contains(&node1), "{}", text(&up));
    eprintln!("[vm-lab] up in {:.0} s", started.elapsed().as_secs_f32());
    let vm: Value =
        serde_json::from_slice(&std::fs::read(state.join("vm.json")).expect("vm.json")).expect("json");
    let pid = vm["pid"].as_i64().expect("pid") as i32;

    // The lab's own account, through the agent.
    let status = xtask(&["vm-lab", "run", "--name", &name, "--", "lab", "status", "-o", "json"]);
    assert!(status.status.success(), "lab status in the VM: {}", text(&status));
    let lab: Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    let pods = lab["pods"].as_array().expect("pods");
    let pod = |node: &str| {
        pods.iter()
            .find(|p| p["node"] == node && p["name"].as_str().is_some_and(|n| n.starts_with("web")))
            .cloned()
    };
    let (a, b) = (pod("node1").expect("web pod on node1"), pod("node2").expect("web pod on node2"));
    let node2_ip = lab["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "node2"))
        .and_then(|n| n["ip"].as_str())
        .expect("node2's ip")
        .to_string();
    let (a_name, b_name) = (a["name"].as_str().expect("name"), b["name"].as_str().expect("name"));
    let (a_ip, b_ip) = (a["ip"].as_str().expect("ip"), b["ip"].as_str().expect("ip"));

    // A cross-node ping in the VM, answered (the probe's exit status).
    let ping =
        xtask(&["vm-lab", "run", "--name", &name, "--", "lab", "probe", "--from", a_name, "ping", b_name]);
    assert!(ping.status.success(), "ping {a_name} -> {b_name} in the VM: {}", text(&ping));

    // Node1's monitor, from the host: the flow, answered, with its tunnel leg on genev_sys_6081.
    let deadline = Instant::now() + Duration::from_secs(120);
    let check = || -> Result<(), String> {
        let body = get_json(&format!("{node1}/api/v1/flows"))?;
        let flows = body["flows"].as_array().cloned().unwrap_or_default();
        let f = flows
            .iter()
            .find(|f| f["protocol"] == "icmp" && f["src_ip"] == a_ip && f["dst_ip"] == b_ip)
            .ok_or_else(|| format!("no icmp flow {a_ip} -> {b_ip}: {flows:?}"))?;
        let t = &f["tunnel"];
        if t["remote_node"] != "node2"
            || t["remote_ip"] != node2_ip.as_str()
            || t["vni"].as_u64().unwrap_or(0) == 0
        {
            return Err(format!("tunnel leg {t}, want node2 {node2_ip} with a VNI: {f:#}"));
        }
        let on_genev = f["interfaces"].as_array().is_some_and(|i| {
            i.iter().any(|i| i["name"] == "genev_sys_6081" && i["packets"].as_u64().unwrap_or(0) > 0)
        });
        if !on_genev || f["state"] != "answered" || f["scenario"] != "pod_to_pod_cross_node" {
            return Err(format!("want answered, pod_to_pod_cross_node, on genev_sys_6081: {f:#}"));
        }
        Ok(())
    };
    loop {
        match check() {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("node1's monitor through {node1}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
    let health =
        get_json(&format!("http://127.0.0.1:{}/healthz", base + 2)).expect("node2's /healthz from the host");
    assert!(health.is_object(), "{health}");
    eprintln!("[vm-lab] cross-node flow {a_name} -> {b_name} with its tunnel leg, read from the host");

    // What the agent refuses: the VM's own lifecycle and anything but `lab`.
    for argv in [&["lab", "down"][..], &["soak", "--minutes", "1"][..]] {
        let mut args = vec!["vm-lab", "run", "--name", &name, "--"];
        args.extend_from_slice(argv);
        let o = xtask(&args);
        assert_eq!(o.status.code(), Some(2), "{argv:?} must be refused: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("error:"), "{argv:?}: {}", text(&o));
    }
    // A second `up` of the same name is refused while it runs.
    let again =
        xtask(&["vm-lab", "up", "--name", &name, "--port-base", &base.to_string(), "--bin", &monitor]);
    assert!(!again.status.success() && text(&again).contains("already up"), "{}", text(&again));

    let down = xtask(&["vm-lab", "down", "--name", &name]);
    assert!(down.status.success(), "vm-lab down: {}", text(&down));
    let gone = Instant::now() + Duration::from_secs(10);
    while vmlab::alive(pid) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!vmlab::alive(pid), "the VM (pid {pid}) still runs after vm-lab down");
    assert!(
        TcpListener::bind(("127.0.0.1", base + 1)).is_ok(),
        "QEMU's forward on {} is still open after vm-lab down",
        base + 1
    );
    eprintln!("[vm-lab] up, run, API from the host and down in {:.0} s", started.elapsed().as_secs_f32());
}
