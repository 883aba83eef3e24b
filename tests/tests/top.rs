//! `kovn-monitor top` against the lab, as root: the real binary in a real terminal (a private
//! tmux server), keys sent with `send-keys`, the screen read back with `capture-pane`; and
//! `--once` for scripts.
//!
//! One lab, `tp<pid>`, serves the whole file (not `kt…`: lab.rs removes other processes' `kt`
//! labs as stale). The first test brings it up with its monitors; `t9_down` takes it down; an
//! `atexit` handler removes it when only some tests ran or the process panicked outside a test;
//! `tp<pid>` labs of test processes that are gone are removed first. Faults heal in a drop
//! guard. Every wait is a bounded poll that panics with the screen it last saw.

use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use kovn_tests::lab_fixture::{HealOnDrop, SharedLab};
use kovn_tests::monitor_bin;
use serde_json::Value;
use xtask::lab::{self, DownOutcome, FaultSpec, Lab, Pod, monitor_url, monitors, probe};

/// The file's lab, `tp<pid>` (see kovn_tests::lab_fixture).
static LAB: SharedLab = SharedLab::new("tp");

fn fixture() -> (MutexGuard<'static, ()>, Lab) {
    LAB.get()
}

/// A client pod on node1 and a server pod on node2: their flows cross the tunnel.
fn cross_pair(lab: &Lab) -> (Pod, Pod) {
    let a = lab.pods_on("node1").next().expect("a pod on node1").clone();
    let b = lab.pods_on("node2").next().expect("a pod on node2").clone();
    (a, b)
}

fn tcp_probes(lab: &Lab, from: &Pod, to: &Pod, n: usize, expect_ok: bool) {
    for _ in 0..n {
        let r = probe::tcp_echo(lab, &from.qualified_name(), SocketAddrV4::new(to.ip, to.tcp_port))
            .unwrap_or_else(|e| panic!("probe {} -> {}: {e:#}", from.name, to.name));
        assert_eq!(r.ok, expect_ok, "probe {} -> {}: {}", from.name, to.name, r.detail);
    }
}

fn top_args(lab: &Lab) -> Vec<String> {
    vec!["top".into(), "--lab".into(), lab.name.clone()]
}

#[test]
fn t1_once_prints_one_snapshot_for_scripts() {
    let (_serial, lab) = fixture();
    let (a, b) = cross_pair(&lab);
    tcp_probes(&lab, &a, &b, 2, true);
    std::thread::sleep(Duration::from_millis(1500));

    let out = Command::new(monitor_bin())
        .args(top_args(&lab))
        .args(["--once", "-o", "json"])
        .output()
        .expect("run top --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "top --once -o json: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(doc["totals"]["nodes_connected"], 2, "{doc:#}");
    let flows = doc["flows"].as_array().expect("flows");
    let row = flows
        .iter()
        .find(|f| f["src"] == a.qualified_name() && f["dst"] == b.qualified_name() && f["protocol"] == "tcp")
        .unwrap_or_else(|| panic!("no {} -> {} tcp row: {doc:#}", a.name, b.name));
    assert_eq!(row["scenario"], "pod_to_pod_cross_node", "{row:#}");
    assert_eq!(row["nodes"], serde_json::json!(["node1", "node2"]), "seen on both nodes: {row:#}");
    assert!(row["packets_fwd"].as_u64().unwrap_or(0) > 0 && row["broken"] == false, "{row:#}");

    // Piped (not a terminal): a table without escape sequences, with or without --once.
    for args in [vec!["--once", "-o", "table"], vec![]] {
        let out = Command::new(monitor_bin()).args(top_args(&lab)).args(&args).output().expect("run top");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "top {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("nodes 2/2 connected"), "top {args:?}:\n{text}");
        assert!(!text.contains('\x1b'), "no escape sequences when piped:\n{text}");
        assert!(
            text.lines().any(|l| l.contains(&a.qualified_name()) && l.contains(&b.qualified_name())),
            "top {args:?}: no row {} -> {}:\n{text}",
            a.name,
            b.name
        );
    }
    let out = Command::new(monitor_bin())
        .args(["top", "--endpoint", "http://127.0.0.1:9", "--once", "--interval", "100ms"])
        .output()
        .expect("run top");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.starts_with("error: no monitor answered"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
}

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    /// The socket file, removed on drop with the server.
    socket_path: Option<String>,
}

const PROMPT: &str = "tp-shell$ ";

impl Tmux {
    fn new(width: u16, height: u16) -> Self {
        let mut t = Self { socket: format!("kovn-top-test-{}", std::process::id()), socket_path: None };
        let (w, h) = (width.to_string(), height.to_string());
        let prompt = format!("PS1={PROMPT}");
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w,
            "-y",
            &h,
            "-e",
            &prompt,
            "-e",
            "TERM=xterm-256color",
            "--",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        t.socket_path = Some(t.run(&["display-message", "-p", "#{socket_path}"]).trim().to_string());
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types text literally (no key names), then nothing else.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "top", "-l", text]);
    }

    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "top", key]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// With the escape sequences (colours).
    fn screen_escaped(&self) -> String {
        self.run(&["capture-pane", "-p", "-e", "-t", "top"])
    }

    fn alternate_on(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"]).trim() == "1"
    }

    /// Polls the screen until `ok` holds on a settled screen: two captures 150 ms apart that
    /// are the same. One capture can land in the middle of a redraw (the top half of the new
    /// frame over the bottom of the last: the flaky "SRC descending" of t2, whose rows were
    /// sorted on every refresh); panics with the last screen after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                std::thread::sleep(Duration::from_millis(150));
                if self.screen() == s {
                    return s;
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the binary from the shell (arguments single-quoted: they are ours, but quoting
    /// keeps any character literal).
    fn start(&self, env: &[(&str, &str)], bin: &std::path::Path, args: &[String]) {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
        line.push(quote(&bin.to_string_lossy()));
        line.extend(args.iter().map(|a| quote(a)));
        self.type_text(&line.join(" "));
        self.key("Enter");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The pids of `comm` whose command line contains `needle`.
fn pids_of(comm: &str, needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Its terminal going away (the tmux server killed, no `q`) ends the view: it used to spin at
/// 60-90% CPU inside crossterm's reader and then ignore SIGTERM. No lab needed.
#[test]
fn t0_top_exits_when_its_terminal_hangs_up() {
    // An endpoint nobody else uses, to find this very process.
    let endpoint = format!("http://127.0.0.1:{}", 1 + std::process::id() % 60000);
    let tmux = Tmux::new(120, 30);
    tmux.wait("the shell prompt", Duration::from_secs(5), |s| s.contains(PROMPT.trim_end()));
    tmux.start(&[], &monitor_bin(), &["top".into(), "--endpoint".into(), endpoint.clone()]);
    tmux.wait("the view", Duration::from_secs(10), |s| s.contains("disconnected"));
    let pids = pids_of("kovn-monitor", &endpoint);
    assert_eq!(pids.len(), 1, "one top process: {pids:?}");
    drop(tmux);
    let gone = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
    };
    let t = Instant::now();
    while !gone(pids[0]) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = !gone(pids[0]);
    if left {
        // SAFETY: SIGKILL to the process this test started, so it does not outlive the test.
        unsafe { libc::kill(pids[0], libc::SIGKILL) };
    }
    assert!(!left, "top still runs 5 s after its terminal hung up");
}

/// The table's lines: between the column titles and the footer (or the detail pane).
fn table_rows(screen: &str) -> Vec<String> {
    screen
        .lines()
        .skip_while(|l| !(l.contains("SRC") && l.contains("DST")))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("q quit") && !l.contains(" detail "))
        .map(str::to_string)
        .collect()
}

/// A row's mark (`!` broken, `?` suspect, space) and its SRC cell.
fn mark(row: &str) -> char {
    row.chars().nth(2).unwrap_or(' ')
}

fn src_cell(row: &str) -> String {
    row.chars().skip(4).take(30).collect::<String>().trim().to_string()
}

/// Whether an SGR sequence in `s` sets a colour (30-38, 40-48, 90-97, 100-107).
fn has_colour(s: &str) -> bool {
    s.split("\x1b[").skip(1).any(|seq| {
        let Some(end) = seq.find('m') else { return false };
        seq[..end].split(';').any(|p| {
            matches!(p.parse::<u32>(), Ok(n) if (30..=38).contains(&n) || (40..=48).contains(&n) || (90..=97).contains(&n) || (100..=107).contains(&n))
        })
    })
}

/// The firing finding's verdict hop for the pair, from either node's API.
fn finding_hop(lab: &Lab, a: &Pod, b: &Pod) -> Option<String> {
    ["node1", "node2"].iter().find_map(|node| {
        let url = format!("{}/api/v1/alerts", monitor_url(lab, node));
        let v = monitors::get_json(&url, Duration::from_secs(5)).ok()?;
        v["alerts"].as_array()?.iter().find_map(|al| {
            (al["state"] == "firing"
                && al["src"]["pod"] == a.name.as_str()
                && al["dst"]["pod"] == b.name.as_str())
            .then(|| al["verdict"]["hop"].as_str().map(str::to_string))
            .flatten()
        })
    })
}

#[test]
fn t2_live_view_in_a_terminal() {
    let (_serial, mut lab) = fixture();
    let (a, b) = cross_pair(&lab);
    let (an, bn) = (a.qualified_name(), b.qualified_name());
    tcp_probes(&lab, &a, &b, 2, true);
    let tmux = Tmux::new(200, 50);
    tmux.wait("the shell prompt", Duration::from_secs(5), |s| s.contains(PROMPT.trim_end()));
    let mut args = top_args(&lab);
    // A monitor that is not there: shown disconnected, retried, the others unaffected.
    args.extend(["--endpoint".into(), "http://127.0.0.1:9".into()]);
    let bin = monitor_bin();
    let started = Instant::now();
    tmux.start(&[], &bin, &args);
    let pair_row = |s: &str, m: char| {
        table_rows(s).into_iter().find(|r| r.contains(&an) && r.contains(&bn) && mark(r) == m)
    };
    let s = tmux.wait("the cross-node flow with pod names", Duration::from_secs(10), |s| {
        pair_row(s, ' ').is_some() && s.contains("nodes 2/3 connected")
    });
    // Two refreshes (1 s each) and the process start.
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}:\n{s}", started.elapsed());
    assert!(tmux.alternate_on(), "the view uses the alternate screen");
    assert!(s.contains("http://127.0.0.1:9 disconnected, retrying"), "{s}");

    // A fault: the server's replies are dropped. The flow turns broken with its verdict.
    let _heal = HealOnDrop(lab.clone());
    lab.inject(FaultSpec::ReplyDrop { pod: b.name.clone() }).unwrap_or_else(|e| panic!("{e:#}"));
    tcp_probes(&lab, &a, &b, 2, false);
    let s = tmux.wait("the broken flow", Duration::from_secs(20), |s| pair_row(s, '!').is_some());
    let hop = finding_hop(&lab, &a, &b).unwrap_or_else(|| panic!("no firing finding for {an} -> {bn}"));
    let row = pair_row(&s, '!').expect("broken row");
    assert!(row.contains(&hop), "the row shows the verdict hop {hop:?}: {row}\n{s}");
    assert!(s.lines().next().is_some_and(|l| !l.contains("broken 0,")), "the header counts it: {s}");
    let escaped = tmux.screen_escaped();
    let broken_line = escaped.lines().find(|l| l.contains(&an) && l.contains('!')).expect("escaped row");
    assert!(has_colour(broken_line), "broken rows are coloured: {broken_line:?}");

    // Sorting: by SRC, both ways; the screen follows.
    tmux.key("1");
    let desc = tmux.wait("sort by SRC desc", Duration::from_secs(5), |s| s.contains("sort SRC desc"));
    let srcs = |s: &str| table_rows(s).iter().map(|r| src_cell(r)).collect::<Vec<_>>();
    let d = srcs(&desc);
    assert!(d.windows(2).all(|w| w[0] >= w[1]), "SRC descending: {d:?}\n{desc}");
    tmux.key("r");
    let asc = tmux.wait("sort by SRC asc", Duration::from_secs(5), |s| s.contains("sort SRC asc"));
    let u = srcs(&asc);
    assert!(u.windows(2).all(|w| w[0] <= w[1]), "SRC ascending: {u:?}\n{asc}");
    assert_ne!(d.first(), u.first(), "reversing changes the first row:\n{desc}\n{asc}");

    // Filtering: typed, applied as typed, kept with Enter.
    let all_rows = table_rows(&asc).len();
    tmux.key("/");
    tmux.type_text(&format!("pod:{}", b.name));
    tmux.key("Enter");
    let filtered = tmux
        .wait("the pod filter", Duration::from_secs(5), |s| s.contains(&format!("filter pod:{}", b.name)));
    let rows = table_rows(&filtered);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.contains(&b.name)),
        "only {}'s flows:\n{filtered}",
        b.name
    );
    assert!(rows.len() < all_rows, "the filter hides rows ({} of {all_rows}):\n{filtered}", rows.len());
    tmux.key("c");
    tmux.wait("the filter cleared", Duration::from_secs(5), |s| s.contains("filter -"));

    // Only broken flows.
    tmux.key("b");
    let only = tmux.wait("broken only", Duration::from_secs(5), |s| s.contains("ONLY MARKED (! ?)"));
    let rows = table_rows(&only);
    assert!(rows.iter().all(|r| matches!(mark(r), '!' | '?')), "{only}");
    assert!(rows.iter().any(|r| mark(r) == '!'), "{only}");
    tmux.key("b");

    // The detail pane of the broken flow: every field, the tunnel leg, the drill-down.
    tmux.key("/");
    tmux.type_text("state:broken");
    tmux.key("Enter");
    tmux.wait("the broken filter", Duration::from_secs(5), |s| {
        s.contains("filter state:broken") && table_rows(s).first().is_some_and(|r| mark(r) == '!')
    });
    tmux.key("Enter");
    let detail = tmux.wait("the drill-down in the detail pane", Duration::from_secs(20), |s| {
        s.contains("drill-down unavailable:")
            || s.contains("drill-down: ") && !s.contains("drill-down: fetching")
    });
    for want in ["seen on node1", "observed at:", "tunnel leg: remote node", "finding ", &hop] {
        assert!(detail.contains(want), "detail pane lacks {want:?}:\n{detail}");
    }
    // Each Escape is waited out: an ESC and the next key in one read would be Alt+key.
    tmux.key("Escape");
    tmux.wait("the detail pane closed", Duration::from_secs(5), |s| !s.contains(" detail ("));
    tmux.key("c");

    // Help lists every key.
    tmux.key("?");
    let help = tmux.wait("the help screen", Duration::from_secs(5), |s| s.contains("kovn-monitor top: keys"));
    for (k, _) in kovn_monitor::ui::app::KEYS {
        assert!(help.contains(k), "help lacks {k:?}:\n{help}");
    }
    tmux.key("Escape");
    tmux.wait("the help closed", Duration::from_secs(5), |s| !s.contains("kovn-monitor top: keys"));

    // A narrow terminal: columns go, rows stay one line each (a wrapped row has no SRC).
    tmux.run(&["resize-window", "-t", "top", "-x", "100", "-y", "50"]);
    let narrow = tmux.wait("the narrow table", Duration::from_secs(5), |s| {
        s.lines().any(|l| l.contains("SRC") && l.contains("DST") && !l.contains("SCENARIO"))
    });
    let rows = table_rows(&narrow);
    assert!(!rows.is_empty() && rows.iter().all(|r| !src_cell(r).is_empty()), "{narrow}");
    assert!(narrow.lines().all(|l| l.chars().count() <= 100), "{narrow}");
    tmux.run(&["resize-window", "-t", "top", "-x", "200", "-y", "50"]);

    // q: exits 0, the shell is back, the terminal out of raw mode and the alternate screen.
    tmux.key("q");
    tmux.wait("the prompt after q", Duration::from_secs(5), |s| s.trim_end().ends_with(PROMPT.trim_end()));
    assert!(!tmux.alternate_on(), "the alternate screen is left");
    tmux.type_text("echo top-exit=$?; stty -a | grep -o -- '-*icanon' | head -1");
    tmux.key("Enter");
    let after = tmux.wait("the exit status and the tty mode", Duration::from_secs(5), |s| {
        s.contains("top-exit=") && s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(after.contains("top-exit=0"), "{after}");
    assert!(after.lines().any(|l| l.trim() == "icanon"), "canonical mode is back (no raw mode):\n{after}");

    // NO_COLOR: the same broken row, no colour at all.
    tmux.type_text("clear");
    tmux.key("Enter");
    tmux.start(&[("NO_COLOR", "1")], &bin, &top_args(&lab));
    tmux.wait("the broken flow without colour", Duration::from_secs(10), |s| pair_row(s, '!').is_some());
    let escaped = tmux.screen_escaped();
    assert!(!has_colour(&escaped), "NO_COLOR: no colour:\n{escaped:?}");

    // SIGTERM (another exit path): the terminal is restored all the same.
    let shell: i32 =
        tmux.run(&["display-message", "-p", "-t", "top", "#{pane_pid}"]).trim().parse().expect("pane pid");
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).expect("children");
    let top: i32 = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "kovn-monitor")
        })
        .unwrap_or_else(|| panic!("no kovn-monitor among the shell's children {children:?}"));
    // SAFETY: kill(2) on the pid of the process this test started in its own terminal.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0, "kill {top}");
    tmux.wait("the prompt after SIGTERM", Duration::from_secs(5), |s| {
        s.trim_end().ends_with(PROMPT.trim_end())
    });
    assert!(!tmux.alternate_on(), "the alternate screen is left after SIGTERM");
    tmux.type_text("stty -a | grep -o -- '-*icanon' | head -1");
    tmux.key("Enter");
    let after = tmux.wait("the tty mode after SIGTERM", Duration::from_secs(5), |s| {
        s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(after.lines().any(|l| l.trim() == "icanon"), "canonical mode after SIGTERM:\n{after}");
}

#[test]
fn t9_down() {
    let (_serial, lab) = fixture();
    match lab::down(&lab.name).unwrap_or_else(|e| panic!("{e:#}")) {
        DownOutcome::Removed { .. } => {}
        DownOutcome::NothingUp { .. } => panic!("lab {} was already gone", lab.name),
    }
}
