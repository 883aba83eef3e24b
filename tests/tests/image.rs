//! The built image (`cargo xtask image`) run the way the DaemonSet runs it: an OCI bundle under
//! runc (Debian's package) as root with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (no new
//! privileges), a read-only root, in a node's network namespace (here a namespace with a veth
//! pair, as a lab node's), with `--auth kubernetes`. It sees the flows of real traffic and
//! serves them to a caller with a valid token (`200`), not without one (`401`) nor to a token
//! whose user lacks the permission (`403`); with one capability less it exits with one line
//! naming it.
//!
//! No kube-apiserver can run here: the TokenReview and SubjectAccessReview answers come from an
//! in-process server speaking the API server's HTTP/JSON protocol with recorded objects, reached
//! through a kubeconfig mounted read-only into the container (in a cluster the service account's
//! in-cluster config is used instead).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
fn configure(bundle: &Path, netns: &str, args: &[&str], caps: &[&str], files: &[(&Path, &str)]) {
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
    // Files the pod gets from a Secret or ConfigMap, read-only.
    for (source, destination) in files {
        mounts.push(serde_json::json!({
            "destination": destination, "type": "bind", "source": source, "options": ["bind", "ro"]
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&c).expect("JSON")).expect("write config.json");
}

/// `GET path` from inside `ns`, with `Authorization: Bearer token` when given: the status and
/// the body, or `None` when nothing answers.
fn http_call(ns: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let path = path.to_string();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
    .join()
    .ok()
    .flatten()
}

fn http_get(ns: &str, addr: SocketAddr, path: &str, token: &str) -> Option<String> {
    http_call(ns, addr, path, Some(token)).and_then(|(status, body)| (status == 200).then_some(body))
}

/// Prometheus's service account: RBAC lets it `get` the monitor's non-resource URLs.
const READER: &str = "reader-token";
/// An authenticated service account without that permission.
const NOBODY: &str = "nobody-token";

/// The in-process Kubernetes API server: TokenReview and SubjectAccessReview over HTTP/1.1 with
/// the API server's JSON objects, listening in `ns` on `ip`. Counts the reviews it answered.
struct FakeApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    token_reviews: Arc<AtomicUsize>,
    access_reviews: Arc<AtomicUsize>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl FakeApi {
    fn start(ns: &str, ip: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let token_reviews = Arc::new(AtomicUsize::new(0));
        let access_reviews = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (st, tr, ar) = (stop.clone(), token_reviews.clone(), access_reviews.clone());
        let bind: SocketAddr = format!("{ip}:0").parse().expect("addr");
        // Threads spawned from the namespace's thread stay in it.
        let _listener = in_netns(ns, move || {
            let listener = std::net::TcpListener::bind(bind).expect("bind the fake API server");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (tr, ar) = (tr.clone(), ar.clone());
                        std::thread::spawn(move || serve_api_connection(conn, &tr, &ar));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(5)).expect("the fake API server listens");
        Self { addr, stop, token_reviews, access_reviews }
    }

    /// A kubeconfig pointing at it (plain HTTP, no credentials of its own: the reviews are
    /// what is under test, not the monitor's own authentication to the API server).
    fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: kovn\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n\
             \x20   user: kovn\ncurrent-context: fake\n",
            self.addr
        )
    }
}

/// One keep-alive connection of the fake API server: requests until the client closes.
fn serve_api_connection(
    conn: std::net::TcpStream,
    token_reviews: &AtomicUsize,
    access_reviews: &AtomicUsize,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // The client adds query parameters (e.g. `?`): the path is what is routed.
        let target = line.split(' ').nth(1).unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let answer = match path.as_str() {
            "/apis/authentication.k8s.io/v1/tokenreviews" => {
                token_reviews.fetch_add(1, Ordering::SeqCst);
                token_review(&req)
            }
            "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
                access_reviews.fetch_add(1, Ordering::SeqCst);
                access_review(&req)
            }
            _ => serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404}),
        };
        let status = if answer["kind"] == "Status" { "404 Not Found" } else { "201 Created" };
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(text.as_bytes())).is_err() {
            return;
        }
    }
}

/// What an API server answers to a TokenReview.
fn token_review(req: &serde_json::Value) -> serde_json::Value {
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let user = match token {
        READER => Some("system:serviceaccount:monitoring:prometheus-k8s"),
        NOBODY => Some("system:serviceaccount:default:default"),
        _ => None,
    };
    match user {
        Some(u) => serde_json::json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": token},
            "status": {"authenticated": true,
                       "user": {"username": u, "uid": "0c8a6a0e-8f4b-4a43-9d57-6f3e7a0f2b10",
                                "groups": ["system:serviceaccounts", "system:authenticated"]},
                       "audiences": ["https://kubernetes.default.svc.cluster.local"]}
        }),
        None => serde_json::json!({
            "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"token": token},
            "status": {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        }),
    }
}

/// What an API server answers to a SubjectAccessReview on a non-resource URL: the
/// ClusterRole of deploy/kubernetes (`get` on the monitor's paths) bound to Prometheus only.
fn access_review(req: &serde_json::Value) -> serde_json::Value {
    let spec = &req["spec"];
    let allowed = spec["user"] == "system:serviceaccount:monitoring:prometheus-k8s"
        && spec["nonResourceAttributes"]["verb"] == "get";
    serde_json::json!({
        "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": if allowed {
            serde_json::json!({"allowed": true,
                               "reason": "RBAC: allowed by ClusterRoleBinding \"kovn-monitor-reader\""})
        } else {
            serde_json::json!({"allowed": false})
        }
    })
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
    let api = FakeApi::start(&pair.a.name, &pair.a_ip);
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("write the kubeconfig");
    let files = [(kubeconfig.as_path(), "/etc/kovn/kubeconfig")];
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
        "--auth",
        "kubernetes",
        "--kubeconfig",
        "/etc/kovn/kubeconfig",
    ];

    // One capability less: one line naming it, exit status 1.
    configure(&bundle, &pair.a.name, &args, &CAPS[..2], &files);
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
    configure(&bundle, &pair.a.name, &args, &CAPS, &files);
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
        // The probes are open, as the kubelet calls them without a token.
        if http_call(&pair.a.name, listen, "/readyz", None).is_some_and(|(status, _)| status == 200) {
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
    // No token: 401; a token whose user RBAC does not allow: 403; both asked of the API server.
    let (status, body) = http_call(&pair.a.name, listen, "/api/v1/flows", None).expect("an answer");
    assert_eq!(status, 401, "without a token: {body}");
    let (status, body) = http_call(&pair.a.name, listen, "/api/v1/flows", Some("forged")).expect("an answer");
    assert_eq!(status, 401, "with a token the API server does not know: {body}");
    let (status, body) = http_call(&pair.a.name, listen, "/api/v1/flows", Some(NOBODY)).expect("an answer");
    assert_eq!(status, 403, "with a token lacking the permission: {body}");
    let (status, body) = http_call(&pair.a.name, listen, "/metrics", Some(NOBODY)).expect("an answer");
    assert_eq!(status, 403, "/metrics with a token lacking the permission: {body}");
    let reviews = (api.token_reviews.load(Ordering::SeqCst), api.access_reviews.load(Ordering::SeqCst));
    assert!(reviews.0 >= 2 && reviews.1 >= 1, "the monitor asked the API server: {reviews:?}");
    // A valid token with the permission: the flows.
    let body =
        http_get(&pair.a.name, listen, "/api/v1/flows", READER).expect("/api/v1/flows with a valid token");
    let resp: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let flows = resp["flows"].as_array().expect("flows");
    let f = find_flow(flows, &pair.a_ip, &pair.b_ip, "tcp", Some(18080))
        .unwrap_or_else(|| panic!("the flow in {body}"));
    let health: serde_json::Value =
        serde_json::from_str(&http_get(&pair.a.name, listen, "/healthz", READER).expect("healthz"))
            .expect("JSON");
    // Handshake, data and echo both ways; the echo server may have closed it already. (CI saw
    // this once with only the ingress side counted: the hooks and the log say why next time.)
    let context = || {
        format!(
            "{f}\n--- every flow\n{body}\n--- /healthz\n{health:#}\n--- log\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    assert!(f["state"] == "answered" || f["state"] == "closed", "{}", context());
    assert!(f["packets_fwd"].as_u64() >= Some(3) && f["packets_rev"].as_u64() >= Some(2), "{}", context());
    stop.store(true, Ordering::Relaxed);
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
