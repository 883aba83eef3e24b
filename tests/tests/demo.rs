//! `cargo xtask demo` as a user sees it, as root: the real xtask binary in a real terminal (a
//! private tmux server). It must land in `kovn-monitor top`, inject its fault by itself, show
//! the fault's flow marked broken (`!`) with the story in the status line, and leave nothing
//! behind when the user quits with `q`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kovn_tests::monitor_bin;

/// `target/<profile>/xtask`, next to kovn-monitor (`./x test` runs through it, so it is built).
fn xtask_bin() -> PathBuf {
    let bin = monitor_bin().with_file_name("xtask");
    assert!(bin.exists(), "{} not found: build it first (`cargo build -p xtask`)", bin.display());
    bin
}

/// A tmux server of our own; on drop it is killed and the demo's lab removed (also when the
/// test fails half-way).
struct Session {
    socket: String,
    lab: String,
}

impl Session {
    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "demo"])
    }

    /// Polls until `ok` holds on two captures in a row (a settled screen, not one read in the
    /// middle of a redraw); panics with the last screen after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                std::thread::sleep(Duration::from_millis(150));
                let again = self.screen();
                if ok(&again) {
                    return again;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").status();
        let _ = xtask::lab::down(&self.lab);
    }
}

fn lab_netns(lab: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| xtask::lab::is_lab_netns(lab, n))
        .map(str::to_string)
        .collect()
}

#[test]
fn t1_the_demo_lands_in_top_with_the_fault_marked_broken() {
    let t = Instant::now();
    let lab = format!("dm{}", std::process::id());
    let s = Session { socket: format!("kovn-demo-test-{}", std::process::id()), lab: lab.clone() };
    s.tmux(&[
        "new-session",
        "-d",
        "-s",
        "demo",
        "-x",
        "220",
        "-y",
        "50",
        "-e",
        "TERM=xterm-256color",
        "-e",
        "PS1=demo-test$ ",
        "--",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    let line = format!(
        "'{}' demo --name {lab} --faults reply-drop --fault-after 5 --bin '{}'",
        xtask_bin().display(),
        monitor_bin().display()
    );
    s.tmux(&["send-keys", "-t", "demo", "-l", &line]);
    s.tmux(&["send-keys", "-t", "demo", "Enter"]);
    // The lab, the monitors (up to a minute on a busy machine), then the view.
    let screen = s.wait("kovn-monitor top", Duration::from_secs(180), |s| {
        s.contains("kovn top") && s.contains("ready:")
    });
    assert_eq!(s.tmux(&["display-message", "-p", "-t", "demo", "#{alternate_on}"]).trim(), "1", "{screen}");
    // The rotation's reply-drop: the first pod of node1 -> the first pod of node2.
    let state = xtask::lab::load(&lab).expect("the demo's lab");
    let client = state.pods_on("node1").next().expect("pod on node1").qualified_name();
    let server = state.pods.iter().find(|p| p.node != "node1").expect("pod on node2").qualified_name();
    let broken = s.wait("the fault's flow marked broken", Duration::from_secs(60), |s| {
        s.lines().any(|l| l.chars().nth(2) == Some('!') && l.contains(&client) && l.contains(&server))
    });
    assert!(broken.lines().any(|l| l.contains("s] ")), "the story's status line is shown:\n{broken}");
    let finding = s.wait("the finding in the status line", Duration::from_secs(60), |s| {
        s.contains("finding (") || s.contains("drill-down:") || s.contains("alert pushed")
    });
    assert!(finding.contains(&client), "the status line names the pair:\n{finding}");
    // q quits the view; the demo heals, stops the monitors and removes its lab.
    s.tmux(&["send-keys", "-t", "demo", "q"]);
    let done =
        s.wait("the demo's clean-up", Duration::from_secs(90), |s| s.contains(&format!("lab {lab} removed")));
    assert!(done.contains("the story so far"), "the transcript is printed after top:\n{done}");
    assert!(lab_netns(&lab).is_empty(), "namespaces left: {:?}", lab_netns(&lab));
    assert!(!std::path::Path::new("/run/kovn-lab").join(&lab).exists(), "state dir left");
    eprintln!("demo test in {:.1}s", t.elapsed().as_secs_f32());
}
