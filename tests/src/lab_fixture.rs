//! One lab per test binary, shared by its tests, removed whatever happens.
//!
//! - The first test that asks brings the lab up and starts a monitor per node; the tests then
//!   run one at a time (a mutex serialises them even without `--test-threads=1`).
//! - When only some tests run (a name filter) or the process ends through a panic outside a
//!   test, an `atexit` handler runs `lab down` for every lab this process registered (a no-op
//!   when a test already took it down).
//! - A process killed outright (SIGKILL, a CI timeout) runs nothing, so before `up` every lab
//!   of the same prefix whose test process is gone is removed. A lab is `<prefix><pid>`, and
//!   its process is alive when that pid still runs the same test binary (same `comm` stem:
//!   `lab-<hash>`, `top-<hash>`, ...), so test binaries of other files never remove each
//!   other's labs.

use std::io::Write as _;
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::Instant;

use xtask::lab::{self, DownOutcome, Lab, UpOptions, monitors};

fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[lab-fixture] {msg}");
}

/// The labs to take down at process exit.
static AT_EXIT: Mutex<Vec<String>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

extern "C" fn down_registered() {
    // Never unwinds into libc.
    let _ = std::panic::catch_unwind(|| {
        let names = AT_EXIT.lock().map(|n| n.clone()).unwrap_or_default();
        for name in names {
            match lab::down(&name) {
                Ok(DownOutcome::Removed { .. }) => note(&format!("lab {name} removed at exit")),
                Ok(DownOutcome::NothingUp { .. }) => {}
                Err(e) => note(&format!("removing lab {name} at exit failed: {e:#}")),
            }
        }
    });
}

/// Takes `name` down when this process exits (registered before `up`).
pub fn remove_at_exit(name: &str) {
    REGISTER.call_once(|| {
        // SAFETY: registers a plain extern "C" function without arguments.
        assert_eq!(unsafe { libc::atexit(down_registered) }, 0, "atexit failed");
    });
    AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_string());
}

/// The `comm` of a process up to its last `-` (test binaries are `<file>-<hash>`).
fn comm_stem(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let comm = comm.trim();
    Some(comm.rsplit_once('-').map_or(comm, |(stem, _)| stem).to_string())
}

/// Removes the `<prefix><pid>` labs (state directories and namespaces) whose test process is
/// gone, and any named after this very pid (a reused pid: it cannot be ours yet).
pub fn remove_stale(prefix: &str) {
    let mut names: Vec<String> = std::fs::read_dir(lab::STATE_ROOT)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let netns = std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout);
    for line in String::from_utf8_lossy(&netns.unwrap_or_default()).lines() {
        if let Some((name, _)) = line.split_whitespace().next().unwrap_or("").split_once('-') {
            names.push(name.to_string());
        }
    }
    names.sort();
    names.dedup();
    let me = std::process::id();
    let stem = comm_stem(me);
    for name in names {
        let Some(pid) = name.strip_prefix(prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        // A killed test process may linger as a zombie until reaped: its comm still reads.
        if pid == me || comm_stem(pid) != stem {
            match lab::down(&name) {
                Ok(DownOutcome::Removed { .. }) => note(&format!("removed stale lab {name}")),
                Ok(DownOutcome::NothingUp { .. }) => {}
                Err(e) => note(&format!("could not remove stale lab {name}: {e:#}")),
            }
        }
    }
}

/// The lab of one test binary: `SharedLab::new("kt")` in a `static`, `.get()` in each test.
pub struct SharedLab {
    prefix: &'static str,
    lab: OnceLock<Result<Lab, String>>,
    serial: Mutex<()>,
}

impl SharedLab {
    pub const fn new(prefix: &'static str) -> Self {
        Self { prefix, lab: OnceLock::new(), serial: Mutex::new(()) }
    }

    /// `<prefix><pid>`.
    pub fn name(&self) -> String {
        format!("{}{}", self.prefix, std::process::id())
    }

    /// The lab (up, monitors running) and the lock that serialises the tests using it. A test
    /// that failed while holding the lock poisons it; the next tests still run.
    pub fn get(&'static self) -> (MutexGuard<'static, ()>, Lab) {
        let guard = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let lab = self.lab.get_or_init(|| self.setup().map_err(|e| format!("{e:#}"))).clone();
        (guard, lab.unwrap_or_else(|e| panic!("lab setup failed: {e}")))
    }

    fn setup(&self) -> anyhow::Result<Lab> {
        crate::require_root();
        remove_stale(self.prefix);
        let name = self.name();
        remove_at_exit(&name);
        let t = Instant::now();
        let lab = lab::up(&UpOptions::named(&name))?.into_lab();
        note(&format!("lab {name} up in {:.1}s", t.elapsed().as_secs_f32()));
        let t = Instant::now();
        let started = monitors::start(&lab, &crate::monitor_bin())?;
        let urls: Vec<String> =
            started.iter().map(|m| format!("{} {} pid {}", m.node, m.url, m.pid)).collect();
        note(&format!("monitors ready in {:.1}s: {}", t.elapsed().as_secs_f32(), urls.join(", ")));
        lab::load(&name)
    }
}

/// Heals every fault of the lab when dropped, so a failed assertion leaves no fault behind for
/// the next test.
pub struct HealOnDrop(pub Lab);

impl Drop for HealOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.heal(None) {
            note(&format!("healing after the test failed: {e:#}"));
        }
    }
}
