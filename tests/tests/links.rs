//! The link watch (rtnetlink) keeps up when its socket overflows: link events arrive faster
//! than they are read, the kernel drops some and reports ENOBUFS, and the watch lists the links
//! again, so the set of links it reports ends equal to `ip link` (the independent truth).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kovn_monitor::interfaces::{LinkEvent, watch};
use kovn_monitor::model::UnderlayState;
use kovn_monitor::underlay::Underlay;
use kovn_tests::{Netns, in_netns};

/// The links as the events tell them: index → name (Present adds, Gone removes, Listed keeps
/// only what it lists). Also how many `Listed` there were.
#[derive(Default)]
struct View {
    links: BTreeMap<u32, String>,
    listings: usize,
}

impl View {
    fn apply(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Present(l) => {
                self.links.insert(l.index, l.name);
            }
            LinkEvent::Gone(i) => {
                self.links.remove(&i);
            }
            LinkEvent::Listed(present) => {
                self.links.retain(|i, _| present.contains(i));
                self.listings += 1;
            }
            // Addresses are the underlay test's (below).
            LinkEvent::Address { .. } | LinkEvent::Addresses(_) => {}
        }
    }

    fn dummies(&self) -> usize {
        self.links.values().filter(|n| n.starts_with("kdum")).count()
    }
}

fn ip_batch(ns: &Netns, lines: impl Iterator<Item = String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("batch");
    std::fs::write(&path, format!("{}\n", lines.collect::<Vec<_>>().join("\n"))).expect("batch file");
    ns.run("ip", &["-batch", path.to_str().expect("utf-8 path")]);
}

fn dummy_count(ns: &Netns) -> usize {
    let out = ns.run("ip", &["-o", "link", "show", "type", "veth"]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn link_events_lost_in_a_socket_overflow_are_recovered_by_listing_again() {
    // veth pairs (this kernel may have no dummy driver): 2 * PAIRS links.
    const PAIRS: usize = 800;
    const N: usize = 2 * PAIRS;
    let ns = Netns::new("ktl");
    let (go_tx, go_rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, usize, usize)>();
    let _watcher = in_netns(&ns.name, move || {
        // A current-thread runtime that runs only while this thread reads events: between
        // the reads nothing drains the netlink socket, as when the daemon is busy.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut view = View::default();
        rt.block_on(async {
            tokio::spawn(watch(tx, Duration::from_secs(3600)));
            while view.listings == 0 {
                view.apply(rx.recv().await.expect("first listing"));
            }
        });
        while let Ok(phase) = go_rx.recv() {
            // The links changed while nobody read: now read until quiet.
            rt.block_on(async {
                while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
                    view.apply(ev);
                }
            });
            let _ = phase;
            done_tx.send((view.dummies(), view.listings, view.links.len())).expect("report");
        }
    });
    // Many links at once, the watch not reading: more events than the socket buffer holds.
    ip_batch(&ns, (0..PAIRS).map(|i| format!("link add kdum{i}a type veth peer name kdum{i}b")));
    assert_eq!(dummy_count(&ns), N, "ip link");
    go_tx.send("added").expect("go");
    let (seen, listings, _) = done_rx.recv_timeout(Duration::from_secs(120)).expect("watch report");
    assert_eq!(seen, N, "links the watch reports after the adds (listings: {listings})");
    assert!(
        listings >= 2,
        "the overflow should have caused a second listing ({listings}); buffer not overrun?"
    );

    let started = Instant::now();
    ip_batch(&ns, (0..PAIRS).map(|i| format!("link del kdum{i}a")));
    assert_eq!(dummy_count(&ns), 0, "ip link");
    go_tx.send("deleted").expect("go");
    let (seen, listings2, _) = done_rx.recv_timeout(Duration::from_secs(120)).expect("watch report");
    assert_eq!(
        seen,
        0,
        "links the watch still reports after the deletes (listings: {listings2}, {:?})",
        started.elapsed()
    );
    drop(go_tx);
}

/// The underlay NIC's state as the watch's events make it, against what `ip` did to the link:
/// admin down, no carrier (its veth peer down), its address removed, and gone.
#[test]
fn the_underlay_state_follows_the_link_and_its_addresses() {
    let ns = Netns::new("ktu");
    ns.run("ip", &["link", "add", "name", "kul0", "type", "veth", "peer", "name", "kul1"]);
    ns.run("ip", &["addr", "add", "172.30.9.1/24", "dev", "kul0"]);
    ns.run("ip", &["link", "set", "kul1", "up"]);
    ns.run("ip", &["link", "set", "kul0", "up"]);
    let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
    let (state_tx, state_rx) = std::sync::mpsc::channel::<(UnderlayState, Vec<String>)>();
    let _watcher = in_netns(&ns.name, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let now = time::OffsetDateTime::now_utc;
        let mut u = Underlay::new(&["kul0".to_string()], now());
        rt.block_on(async {
            tokio::spawn(watch(tx, Duration::from_secs(3600)));
            // Each step: read the events until quiet, report the state.
            while step_rx.recv().is_ok() {
                while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await {
                    match ev {
                        LinkEvent::Present(l) => u.on_link(&l, now()),
                        LinkEvent::Gone(i) => u.on_gone(i, now()),
                        LinkEvent::Listed(p) => u.on_listed(&p, now()),
                        LinkEvent::Address { index, addr, present } => {
                            u.on_address(index, addr, present, now())
                        }
                        LinkEvent::Addresses(all) => u.on_addresses(&all, now()),
                    }
                }
                let l = &u.links()[0];
                let report = (l.state, l.addresses.iter().map(ToString::to_string).collect());
                if state_tx.send(report).is_err() {
                    break;
                }
            }
        });
    });
    let step = |what: &str, cmd: Option<&[&str]>| {
        if let Some(args) = cmd {
            ns.run("ip", args);
        }
        step_tx.send(()).expect("step");
        let got = state_rx.recv_timeout(Duration::from_secs(30)).expect("the watch reports");
        let link = String::from_utf8_lossy(&ns.run("ip", &["-o", "addr", "show"]).stdout).into_owned();
        (got, format!("{what}: ip says {link}"))
    };
    let ((state, addrs), ctx) = step("listed", None);
    assert_eq!(state, UnderlayState::Up, "{ctx}");
    assert!(addrs.contains(&"172.30.9.1".to_string()), "{addrs:?} {ctx}");
    let ((state, _), ctx) = step("admin down", Some(&["link", "set", "kul0", "down"]));
    assert_eq!(state, UnderlayState::Down, "{ctx}");
    let ((state, _), ctx) = step("back up", Some(&["link", "set", "kul0", "up"]));
    assert_eq!(state, UnderlayState::Up, "{ctx}");
    let ((state, _), ctx) = step("peer down", Some(&["link", "set", "kul1", "down"]));
    assert_eq!(state, UnderlayState::NoCarrier, "{ctx}");
    let ((state, _), ctx) = step("peer up", Some(&["link", "set", "kul1", "up"]));
    assert_eq!(state, UnderlayState::Up, "{ctx}");
    let ((state, addrs), ctx) =
        step("address removed", Some(&["addr", "del", "172.30.9.1/24", "dev", "kul0"]));
    assert_eq!(state, UnderlayState::NoAddress, "{ctx}");
    assert!(addrs.iter().all(|a| a.starts_with("fe80")), "only a link-local address may stay: {addrs:?}");
    let ((state, _), ctx) = step("address back", Some(&["addr", "add", "172.30.9.1/24", "dev", "kul0"]));
    assert_eq!(state, UnderlayState::Up, "{ctx}");
    let ((state, addrs), _) = step("deleted", Some(&["link", "del", "kul0"]));
    assert_eq!((state, addrs.len()), (UnderlayState::Missing, 0));
    drop(step_tx);
}
