//! The OVSDB inventory source against a real `ovsdb-server` (Debian's openvswitch-switch)
//! holding Kube-OVN-style rows, written with `ovs-vsctl` the way kube-ovn-cni does: the
//! monitor names pods from Interface `external_ids`, follows pods that come and go, and picks up
//! a restarted server. No root needed: the server runs on a socket in a temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kovn_monitor::inventory::{self, Inventory};
use kovn_monitor::ovsdb;

struct Server {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(dir: tempfile::TempDir) -> Self {
        let db = dir.path().join("conf.db");
        if !db.exists() {
            let schema = [
                "/usr/share/openvswitch/vswitch.ovsschema",
                "/usr/share/openvswitch/vswitch.ovsschema.gz",
            ]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("vswitch.ovsschema (Debian package openvswitch-common, installed by scripts/setup.sh)");
            run("ovsdb-tool", &["create", db.to_str().unwrap(), schema]);
        }
        let sock = dir.path().join("db.sock");
        let child = Command::new("ovsdb-server")
            .args([
                db.to_str().unwrap(),
                &format!("--remote=punix:{}", sock.display()),
                &format!("--unixctl={}", dir.path().join("ovsdb.ctl").display()),
                "--no-chdir",
                &format!("--log-file={}", dir.path().join("ovsdb.log").display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server (Debian package openvswitch-switch)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ovsdb-server did not create {}", sock.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = Self { child, sock, dir };
        s.vsctl(&["init"]);
        s
    }

    fn vsctl(&self, args: &[&str]) {
        let db = format!("--db=unix:{}", self.sock.display());
        let mut full = vec![db.as_str(), "--no-wait", "--timeout=5"];
        full.extend(args.iter().copied().filter(|a| *a != "--no-wait"));
        run("ovs-vsctl", &full);
    }

    /// Stops the server and starts it again on the same database (an OVS restart).
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let fresh = Self::start(dir);
        // Swap the fresh server in; the old (dead) child handle goes with `fresh`'s drop.
        let mut fresh = fresh;
        std::mem::swap(&mut self.child, &mut fresh.child);
        std::mem::swap(&mut self.dir, &mut fresh.dir);
        self.sock = fresh.sock.clone();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod port as kube-ovn-cni adds it: host veth `<12 hex>_h` on br-int, with the pod's identity
/// in the Interface's external_ids.
fn add_pod(s: &Server, veth: &str, ns: &str, pod: &str, ip: &str, mac: &str) {
    s.vsctl(&[
        "add-port",
        "br-int",
        veth,
        "--",
        "set",
        "interface",
        veth,
        &format!("external_ids:iface-id={pod}.{ns}"),
        &format!("external_ids:pod_name={pod}"),
        &format!("external_ids:pod_namespace={ns}"),
        &format!("external_ids:ip={ip}"),
        &format!("external_ids:attached-mac={mac}"),
        "external_ids:vendor=kube-ovn",
        &format!("external_ids:pod_netns=/var/run/netns/cni-{pod}"),
    ]);
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Waits until `check` holds on the inventory (the watcher applies updates asynchronously).
fn eventually(inv: &Arc<RwLock<Inventory>>, what: &str, check: impl Fn(&Inventory) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check(&inv.read().unwrap()) {
            return;
        }
        let pods: Vec<String> = inv.read().unwrap().pods().iter().map(|p| format!("{p:?}")).collect();
        assert!(Instant::now() < deadline, "{what}: not reached in 10 s; pods: {pods:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pods_from_a_real_ovsdb_server_are_named_and_followed() {
    let s = Server::start(tempfile::tempdir().expect("tempdir"));
    s.vsctl(&["add-br", "br-int"]);
    s.vsctl(&[
        "set",
        "open_vswitch",
        ".",
        "external_ids:ovn-encap-ip=172.18.0.2",
        "external_ids:system-id=node1",
    ]);
    add_pod(&s, "0a1b2c3d4e5f_h", "default", "web-7d9f8-abcde", "10.16.0.12", "00:00:00:aa:bb:01");
    // Dual stack: Kube-OVN writes both addresses comma-separated.
    add_pod(&s, "1a1b2c3d4e5f_h", "shop", "db-0", "10.16.0.13,fd00:10:16::d", "00:00:00:aa:bb:02");
    // Not a pod: a tunnel port and a patch port carry no pod identity.
    s.vsctl(&[
        "add-port",
        "br-int",
        "ovn-node2-0",
        "--",
        "set",
        "interface",
        "ovn-node2-0",
        "type=geneve",
        "options:remote_ip=172.18.0.3",
        "options:key=flow",
    ]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let inv = Arc::new(RwLock::new(Inventory::new("node1")));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ovsdb::Updates>(64);
    let addr: ovsdb::Address = format!("unix:{}", s.sock.display()).parse().expect("address");
    let feeder = inv.clone();
    let handle = std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::spawn(ovsdb::watch(addr, "Open_vSwitch", inventory::OVS_TABLES, tx));
            while let Some(u) = rx.recv().await {
                feeder.write().unwrap().apply(u);
            }
        })
    });

    eventually(&inv, "both pods named", |i| {
        i.pod(ip("10.16.0.12")).is_some() && i.pod(ip("fd00:10:16::d")).is_some()
    });
    {
        let i = inv.read().unwrap();
        let web = i.pod(ip("10.16.0.12")).unwrap();
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("default", "web-7d9f8-abcde"));
        assert_eq!(web.host_iface.as_deref(), Some("0a1b2c3d4e5f_h"));
        assert_eq!(web.mac.as_deref(), Some("00:00:00:aa:bb:01"));
        assert_eq!(web.node.as_deref(), Some("node1"));
        assert_eq!(i.pod(ip("10.16.0.13")).unwrap().name, "db-0", "both addresses of a dual-stack pod");
        assert_eq!(i.pods().len(), 2, "the tunnel port is not a pod");
        let e = i.endpoint(ip("10.16.0.13"), 5432, 6);
        assert_eq!((e.kind.as_str(), e.namespace.as_deref()), ("pod", Some("shop")));
    }

    // A pod deleted (port removed) and one created are followed without polling any CLI.
    s.vsctl(&["del-port", "br-int", "0a1b2c3d4e5f_h"]);
    add_pod(&s, "2a1b2c3d4e5f_h", "default", "cache-0", "10.16.0.14", "00:00:00:aa:bb:03");
    eventually(&inv, "web gone, cache named", |i| {
        i.pod(ip("10.16.0.12")).is_none() && i.pod(ip("10.16.0.14")).is_some_and(|p| p.name == "cache-0")
    });
    // An address change in place (kube-ovn-cni rewriting external_ids).
    s.vsctl(&["set", "interface", "2a1b2c3d4e5f_h", "external_ids:ip=10.16.0.15"]);
    eventually(&inv, "cache moved", |i| {
        i.pod(ip("10.16.0.14")).is_none() && i.pod(ip("10.16.0.15")).is_some()
    });

    // The server restarts (an OVS upgrade): the watcher reconnects and re-reads everything.
    let mut s = s;
    s.restart();
    add_pod(&s, "3a1b2c3d4e5f_h", "default", "api-0", "10.16.0.16", "00:00:00:aa:bb:04");
    eventually(&inv, "after the restart", |i| {
        i.pod(ip("10.16.0.16")).is_some()
            && i.pod(ip("10.16.0.15")).is_some()
            && i.pod(ip("10.16.0.13")).is_some()
    });
    drop(s);
    drop(handle);
}

/// A CA and certificates signed by it (openssl), as `ovs-pki` or Kube-OVN's secret would hold.
fn make_pki(dir: &Path, ca: &str, names: &[&str]) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
    let openssl = |args: Vec<&str>| {
        let out = Command::new("openssl").args(&args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let (ca_crt, ca_key, ca_subj) = (format!("{ca}.crt"), format!("{ca}.key"), format!("/CN={ca}"));
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend(["-subj", &ca_subj, "-keyout", &ca_key, "-out", &ca_crt]);
    openssl(a);
    for n in names {
        let (crt, key, subj) = (format!("{n}.crt"), format!("{n}.key"), format!("/CN={n}"));
        let mut a = vec!["req", "-x509", "-CA", &ca_crt, "-CAkey", &ca_key];
        a.extend(ec);
        a.extend([
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key,
            "-out",
            &crt,
        ]);
        openssl(a);
    }
}

/// `ssl:HOST:PORT` against a real ovsdb-server listening with `pssl:` and client certificates
/// required (as Kube-OVN's ENABLE_SSL sets it up): the pods are named over TLS; without the
/// files, one clear line.
#[test]
fn pods_over_ssl_from_a_real_ovsdb_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_pki(d, "ca", &["server", "client"]);
    let db = d.join("conf.db");
    let schema = "/usr/share/openvswitch/vswitch.ovsschema";
    assert!(Path::new(schema).exists(), "schema {schema}");
    run("ovsdb-tool", &["create", db.to_str().unwrap(), schema]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let sock = d.join("db.sock");
    let p = |n: &str| d.join(n).display().to_string();
    let child = Command::new("ovsdb-server")
        .arg(&db)
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--remote=pssl:{port}:127.0.0.1"))
        .arg(format!("--private-key={}", p("server.key")))
        .arg(format!("--certificate={}", p("server.crt")))
        .arg(format!("--ca-cert={}", p("ca.crt")))
        .arg(format!("--unixctl={}", p("ovsdb.ctl")))
        .arg("--no-chdir")
        .arg(format!("--log-file={}", p("ovsdb.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ovsdb-server");
    let s = Server { child, sock: sock.clone(), dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "ovsdb-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.vsctl(&["init"]);
    s.vsctl(&["add-br", "br-int"]);
    add_pod(&s, "0a1b2c3d4e5f_h", "default", "web-0", "10.16.0.12", "00:00:00:aa:bb:01");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let addr: ovsdb::Address = format!("ssl:127.0.0.1:{port}").parse().expect("address");
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ovsdb::Updates>(64);
        // Before the files are set: one clear error.
        let e =
            ovsdb::monitor(&addr, "Open_vSwitch", inventory::OVS_TABLES, &tx).await.expect_err("no files");
        assert!(e.to_string().contains("needs --ovn-ssl-key"), "{e}");
        ovsdb::set_ssl_files(&ovsdb::SslFiles {
            key: s.dir.path().join("client.key"),
            cert: s.dir.path().join("client.crt"),
            ca: s.dir.path().join("ca.crt"),
        })
        .expect("files load");
        let a = addr.clone();
        let session =
            tokio::spawn(async move { ovsdb::monitor(&a, "Open_vSwitch", inventory::OVS_TABLES, &tx).await });
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("snapshot in time")
            .expect("snapshot");
        let mut inv = Inventory::new("node1");
        inv.apply(first);
        let web = inv.pod(ip("10.16.0.12")).expect("named over TLS");
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("default", "web-0"));
        session.abort();
    });
    // The daemon refuses an ssl: address without the files at start, in one line.
    let out = Command::new(env!("CARGO_BIN_EXE_kovn-monitor"))
        .args(["run", "--ovsdb", &format!("ssl:127.0.0.1:{port}"), "--listen", "127.0.0.1:0"])
        .output()
        .expect("kovn-monitor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.trim()
            == format!("error: ssl:127.0.0.1:{port} needs --ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca"),
        "{err}"
    );
    // The drill-down's OVN clients over SSL: a northbound with `pssl:` (the same PKI), read by
    // `ovn-nbctl` with the options kovn adds for an `ssl:` address; without them refused.
    let q = |n: &str| s.dir.path().join(n).display().to_string();
    let nb_db = s.dir.path().join("nb.db");
    run("ovsdb-tool", &["create", nb_db.to_str().unwrap(), "/usr/share/ovn/ovn-nb.ovsschema"]);
    let nb_port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let nb_sock = s.dir.path().join("nb.sock");
    let nb = Command::new("ovsdb-server")
        .arg(&nb_db)
        .arg(format!("--remote=punix:{}", nb_sock.display()))
        .arg(format!("--remote=pssl:{nb_port}:127.0.0.1"))
        .arg(format!("--private-key={}", q("server.key")))
        .arg(format!("--certificate={}", q("server.crt")))
        .arg(format!("--ca-cert={}", q("ca.crt")))
        .arg(format!("--unixctl={}", q("nb.ctl")))
        .arg("--no-chdir")
        .arg(format!("--log-file={}", q("nb.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ovsdb-server (NB)");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _nb = Kill(nb);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nb_sock.exists() || std::net::TcpStream::connect(("127.0.0.1", nb_port)).is_err() {
        assert!(Instant::now() < deadline, "the NB ovsdb-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let unix = format!("--db=unix:{}", nb_sock.display());
    run("ovn-nbctl", &[&unix, "ls-add", "ovn-default"]);
    run(
        "ovn-nbctl",
        &[&unix, "--name=np.deny-db", "acl-add", "ovn-default", "to-lport", "2002", "ip4", "drop"],
    );
    let ssl_db = format!("ssl:127.0.0.1:{nb_port}");
    let nbctl = |extra: &[String]| {
        Command::new("ovn-nbctl")
            .args(extra)
            .args([
                &format!("--db={ssl_db}"),
                "--timeout=5",
                "--format=json",
                "--columns=name",
                "list",
                "ACL",
            ])
            .output()
            .expect("ovn-nbctl")
    };
    let out = nbctl(&ovsdb::ssl_args(&ssl_db));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("np.deny-db"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!nbctl(&[]).status.success(), "ovn-nbctl without the files reached an SSL northbound");
    assert!(ovsdb::ssl_args("unix:/run/ovn/ovnnb_db.sock").is_empty(), "no SSL options for other addresses");
    // And the daemon refuses `--ovn-nb ssl:` without the files, in one line.
    let out = Command::new(env!("CARGO_BIN_EXE_kovn-monitor"))
        .args(["run", "--ovsdb", "none", "--ovn-nb", &ssl_db, "--listen", "127.0.0.1:0"])
        .output()
        .expect("kovn-monitor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!("error: {ssl_db} needs --ovn-ssl-key, --ovn-ssl-cert and --ovn-ssl-ca"),
        "{err}"
    );
    drop(s);
}
