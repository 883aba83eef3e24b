//! The built image (`cargo xtask image`) run the way the DaemonSet runs it: an OCI bundle under
//! runc (Debian's package) as root with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (no new
//! privileges), a read-only root, in a node's network namespace (here a namespace with a veth
//! pair, as a lab node's). It sees the flows of real traffic; with one capability less it
//! exits with one line naming it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kovn_tests::{Pair, echo_servers, find_flow, in_netns, monitor_bin, sh};

/// The DaemonSet's capabilities (deploy/kubernetes/base/daemonset.yaml).
const CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];

struct Container {
    id: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["kill", &self.id, "KILL"]).output();
        let _ = Command::new("runc").args(["delete", "--force", &self.id]).output();
    }
}

/// The bundle's config.json as the DaemonSet would run the image.
fn configure(bundle: &Path, netns: &str, args: &[&str], caps: &[&str]) {
    let path = bundle.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
    let mut argv = vec![xtask::image::BINARY_PATH];
    argv.extend_from_slice(args);
    c["process"]["args"] = serde_json::json!(argv);
    c["process"]["terminal"] = serde_json::json!(false);
    c["process"]["noNewPrivileges"] = serde_json::json!(true);
    c["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0});
    c["process"]["capabilities"] = serde_json::json!({
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []
    });
    c["root"]["readonly"] = serde_json::json!(true);
    let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
    namespaces.retain(|n| n["type"] != "network");
    namespaces.push(serde_json::json!({"type": "network", "path": format!("/var/run/netns/{netns}")}));
    // The DaemonSet's hostPath mounts.
    let mounts = c["mounts"].as_array_mut().expect("mounts");
    for p in ["/sys/kernel/btf", "/sys/kernel/tracing"] {
        mounts.push(
            serde_json::json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro"]}),
        );
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&c).expect("JSON")).expect("write config.json");
}

fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Option<String> {
    let path = path.to_string();
    in_netns(ns, move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    })
    .join()
    .ok()
    .flatten()
}

#[test]
fn the_image_runs_under_runc_with_only_the_daemonsets_capabilities() {
    kovn_tests::require_root();
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let work = tempfile::tempdir().expect("tempdir");
    // The image as `./x image` builds it, with this build's binary (the Debian layer is cached).
    let built = xtask::image::build(
        &root,
        &root.join("target"),
        &monitor_bin(),
        Some(work.path().join("kovn.oci.tar")),
    )
    .expect("cargo xtask image");
    let build_time = started.elapsed();
    // From the archive, as a registry client would get it.
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    sh("tar", &["-xf", built.archive.to_str().expect("utf-8"), "-C", layout.to_str().expect("utf-8")]);
    let bundle = work.path().join("bundle");
    sh(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{}", layout.display(), built.tag),
            bundle.to_str().expect("utf-8"),
        ],
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config")).expect("JSON");
    assert_eq!(
        cfg["annotations"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "labels carried into the bundle: {}",
        cfg["annotations"]
    );
    for tool in ["ovs-appctl", "ovs-ofctl", "ovn-trace", "ovn-sbctl", "ovn-nbctl"] {
        assert!(bundle.join("rootfs/usr/bin").join(tool).exists(), "{tool} in the image");
    }

    let pair = Pair::new(77);
    let port = 19474;
    let listen: SocketAddr = format!("{}:{port}", pair.a_ip).parse().expect("addr");
    let args = [
        "run",
        "--listen",
        &listen.to_string(),
        "--iface",
        &pair.a_if,
        "--ovsdb",
        "none",
        "--kubernetes",
        "off",
        "--tunnel-iface",
        "",
        "--node-name",
        "node1",
        "--poll-interval",
        "200ms",
    ];

    // One capability less: one line naming it, exit status 1.
    configure(&bundle, &pair.a.name, &args, &CAPS[..2]);
    let id = kovn_tests::unique("kovn-runc-");
    let _guard = Container { id: id.clone() };
    let out = Command::new("runc")
        .args(["run", "--bundle", bundle.to_str().expect("utf-8"), &id])
        .stdin(Stdio::null())
        .output()
        .expect("runc");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("error: missing capability CAP_PERFMON"), "{err}");
    drop(_guard);

    // Exactly the DaemonSet's capabilities, read-only root: it attaches and sees the traffic.
    configure(&bundle, &pair.a.name, &args, &CAPS);
    let id = kovn_tests::unique("kovn-runc-");
    let guard = Container { id: id.clone() };
    let log = work.path().join("runc.log");
    let mut child = Command::new("runc")
        .args(["run", "--bundle", bundle.to_str().expect("utf-8"), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("runc");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            panic!("the container exited ({s}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        if http_get(&pair.a.name, listen, "/readyz").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready in 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = echo_servers(&pair.b.name, &pair.b_ip, 18080, 18081);
    let dst: SocketAddr = format!("{}:18080", pair.b_ip).parse().expect("addr");
    in_netns(&pair.a.name, move || {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        c.write_all(b"hello").expect("send");
        let mut got = [0u8; 5];
        c.read_exact(&mut got).expect("echo");
    })
    .join()
    .expect("client");
    std::thread::sleep(Duration::from_millis(800));
    let body = http_get(&pair.a.name, listen, "/api/v1/flows").expect("/api/v1/flows");
    let resp: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let flows = resp["flows"].as_array().expect("flows");
    let f = find_flow(flows, &pair.a_ip, &pair.b_ip, "tcp", Some(18080))
        .unwrap_or_else(|| panic!("the flow in {body}"));
    // Handshake, data and echo both ways; the echo server may have closed it already.
    assert!(f["state"] == "answered" || f["state"] == "closed", "{f}");
    assert!(f["packets_fwd"].as_u64() >= Some(3) && f["packets_rev"].as_u64() >= Some(2), "{f}");
    let health: serde_json::Value =
        serde_json::from_str(&http_get(&pair.a.name, listen, "/healthz").expect("healthz")).expect("JSON");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(guard);
    let _ = child.wait();
    eprintln!(
        "image {} {} ({:.1} MiB): built in {:.1}s, whole test {:.1}s; kfree_skb hook: {}",
        built.tag,
        built.digest,
        built.size as f64 / (1 << 20) as f64,
        build_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        health["hooks"]["kfree_skb"]
    );
}
