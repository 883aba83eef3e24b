//! Processes and commands: detached daemons with pidfiles, liveness, termination, commands bounded
//! in time, and the lab's state lock. Everything runs with argument lists, never a shell.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Fails unless running as root (namespaces, OVS and nftables need it).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (it creates network namespaces and runs OVS/OVN)");
    }
    Ok(())
}

/// `mkdir -p` with the path in the error.
pub fn mkdir(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    fs::create_dir_all(path).with_context(|| format!("cannot create directory {}", path.display()))
}

/// `ip netns exec NS program args...` as an argument list.
pub fn in_netns<S: AsRef<OsStr>>(netns: &str, program: &str, args: &[S]) -> Vec<String> {
    let mut v = vec!["netns".to_string(), "exec".into(), netns.into(), program.into()];
    v.extend(args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()));
    v
}

/// Runs `program args...` inside `netns`, failing on a non-zero exit.
pub fn run_in<S: AsRef<OsStr>>(netns: &str, program: &str, args: &[S]) -> Result<Output> {
    cmd::run("ip", &in_netns(netns, program, args))
}

/// Runs a command with extra environment variables (OVS_RUNDIR...), failing on non-zero exit.
pub fn run_env<S: AsRef<OsStr>>(program: &str, args: &[S], env: &[(&str, &Path)]) -> Result<Output> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            cmd::display_args(args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Starts a long-running program (optionally inside `netns`) detached from us: its own process
/// group (a Ctrl-C on the terminal does not reach it), stdin from /dev/null, stdout and stderr
/// appended to `log`. Writes its pid to `pidfile` and returns it. `ip netns exec` execs the
/// program in place, so the pid is the program's own.
pub fn spawn_detached(
    netns: Option<&str>,
    program: &str,
    args: &[String],
    log: &Path,
    pidfile: &Path,
) -> Result<u32> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    command.args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let child = command.spawn().with_context(|| format!("cannot start {program} {}", args.join(" ")))?;
    let pid = child.id();
    // The Child handle is dropped without waiting; `is_alive` reaps it if it dies while we run.
    fs::write(pidfile, format!("{pid}\n")).with_context(|| format!("cannot write {}", pidfile.display()))?;
    Ok(pid)
}

pub fn read_pidfile(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reaps `pid` if it is a dead child of ours (daemons started by a long-lived test process).
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only inspects; it fails with ECHILD for non-children.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// True while `pid` runs (zombies count as dead).
pub fn is_alive(pid: i32) -> bool {
    reap(pid);
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The executable name of `pid` (/proc/PID/comm), if it exists.
pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// The pid in `pidfile` if that process is alive and is `expected_comm` (a stale pidfile must
/// never make us signal an unrelated process).
pub fn live_pid(pidfile: &Path, expected_comm: &str) -> Option<i32> {
    let pid = read_pidfile(pidfile)?;
    (is_alive(pid) && comm(pid).as_deref() == Some(expected_comm)).then_some(pid)
}

fn signal(pid: i32, group: bool, sig: i32) {
    let target = if group { -pid } else { pid };
    // SAFETY: kill only sends a signal; errors (ESRCH) are expected and ignored.
    unsafe { libc::kill(target, sig) };
}

/// SIGTERM, then SIGKILL after `grace`; true once the process is gone.
pub fn terminate(pid: i32, group: bool, grace: Duration) -> bool {
    signal(pid, group, libc::SIGTERM);
    if wait_until(grace, Duration::from_millis(20), || !is_alive(pid)) {
        if group {
            // Forked children (socat's per-connection processes) may outlive the leader briefly.
            signal(pid, true, libc::SIGKILL);
        }
        return true;
    }
    signal(pid, group, libc::SIGKILL);
    wait_until(Duration::from_secs(2), Duration::from_millis(20), || !is_alive(pid))
}

/// Sends `sig` to every pid, waits up to `grace` for all of them to exit, SIGKILLs the rest.
/// Returns the pids still alive after that (normally none).
pub fn stop_all(pids: &[i32], sig: i32, grace: Duration) -> Vec<i32> {
    for &pid in pids {
        signal(pid, false, sig);
    }
    if wait_until(grace, Duration::from_millis(20), || pids.iter().all(|&p| !is_alive(p))) {
        return Vec::new();
    }
    for &pid in pids.iter().filter(|&&p| is_alive(p)) {
        signal(pid, false, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(2), Duration::from_millis(20), || pids.iter().all(|&p| !is_alive(p)));
    pids.iter().copied().filter(|&p| is_alive(p)).collect()
}

/// Polls `check` every `every` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Like `wait_until` for checks that can fail; returns the last error on timeout.
pub fn retry<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: still failing after {timeout:?}")));
            }
            Err(_) => thread::sleep(every),
        }
    }
}

/// Pids of every process inside network namespace `netns` (`ip netns pids`).
pub fn netns_pids(netns: &str) -> Vec<i32> {
    cmd::output("ip", &["netns", "pids", netns])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
        })
        .unwrap_or_default()
}

/// The programs a lab runs. Only these are ever signalled on the strength of a pidfile or a path
/// in their command line (never, say, the `cargo xtask lab down --state-dir DIR` that asked).
pub fn is_lab_program(comm: &str) -> bool {
    matches!(
        comm,
        "ovsdb-server" | "ovs-vswitchd" | "ovn-controller" | "ovn-northd" | "socat" | "kovn-monitor"
    )
}

/// Lab programs whose command line or OVS_RUNDIR/OVN_RUNDIR lies inside `dir`: leftovers of a
/// lab whose pidfiles are gone.
pub fn pids_referencing(dir: &Path) -> Vec<i32> {
    let dir = dir.to_string_lossy();
    let inside = |s: &str| s == dir || s.starts_with(&format!("{dir}/"));
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && comm(pid).is_some_and(|c| is_lab_program(&c)))
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy).any(|a| {
                // `--pidfile=/dir/x.pid`, `punix:/dir/db.sock`, `/dir/conf.db`...
                let value = a.split_once('=').map_or(&*a, |(_, v)| v);
                [&*a, value].into_iter().any(|s| inside(strip_socket_scheme(s)))
            });
            let env = environ.split(|b| *b == 0).map(String::from_utf8_lossy).any(|kv| {
                ["OVS_RUNDIR=", "OVN_RUNDIR="].iter().any(|k| kv.strip_prefix(k).is_some_and(inside))
            });
            args || env
        })
        .collect()
}

fn strip_socket_scheme(s: &str) -> &str {
    s.strip_prefix("punix:").or_else(|| s.strip_prefix("unix:")).unwrap_or(s)
}

/// What a bounded command did.
#[derive(Debug, Clone)]
pub struct Bounded {
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Killed because the deadline passed.
    pub timed_out: bool,
    /// Stdout began with the expected bytes.
    pub matched: bool,
    pub elapsed: Duration,
}

impl Bounded {
    pub fn success(&self) -> bool {
        self.matched || self.status.is_some_and(|s| s.success())
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

fn drain(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().expect("reader lock").extend_from_slice(&buf[..n]);
        }
    })
}

/// What a bounded command's stdout is expected to start with.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// Nothing: the exit status decides.
    Nothing,
    /// Let the command finish by itself (a TCP client closing its connection cleanly, so the
    /// peer sees a FIN, not the RST a killed socket with unread data sends), then compare.
    Prefix(&'a [u8]),
    /// Stop the command as soon as stdout starts with these bytes (a UDP client never sees an
    /// end of stream to finish on).
    PrefixThenStop(&'a [u8]),
}

impl Expect<'_> {
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Expect::Nothing => None,
            Expect::Prefix(b) | Expect::PrefixThenStop(b) => Some(b),
        }
    }
}

/// Runs `program args...` for at most `timeout` (then kills its process group), feeding `input`
/// on stdin and closing it; `expect` says what stdout should start with (reported as `matched`).
pub fn run_bounded(
    program: &str,
    args: &[String],
    input: Option<Vec<u8>>,
    timeout: Duration,
    expect: Expect<'_>,
) -> Result<Bounded> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {program} {}", args.join(" ")))?;
    let writer = match (input, child.stdin.take()) {
        (Some(data), Some(mut stdin)) => Some(thread::spawn(move || {
            // A peer that stops reading makes this fail; the result shows up as a failed probe.
            let _ = stdin.write_all(&data);
        })),
        _ => None,
    };
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        drain(child.stdout.take().expect("piped"), Arc::clone(&stdout)),
        drain(child.stderr.take().expect("piped"), Arc::clone(&stderr)),
    ];
    let deadline = start + timeout;
    let (mut timed_out, mut matched) = (false, false);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if let Expect::PrefixThenStop(want) = expect {
            matched = stdout.lock().expect("reader lock").starts_with(want);
        }
        if !matched && Instant::now() >= deadline {
            timed_out = true;
        }
        if matched || timed_out {
            signal(child.id() as i32, true, libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    for r in readers {
        let _ = r.join();
    }
    if let Some(w) = writer {
        let _ = w.join();
    }
    let take = |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().expect("reader lock"));
    let stdout = take(&stdout);
    // The command may have finished (echo complete, connection closed) between two polls.
    let matched = matched || expect.bytes().is_some_and(|want| stdout.starts_with(want));
    Ok(Bounded { status, stdout, stderr: take(&stderr), timed_out, matched, elapsed: start.elapsed() })
}

/// An exclusive lock on a lab's state directory, held while a command changes the lab (two
/// concurrent `fault` commands must not lose each other's lab.json update).
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<Self> {
        fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}

/// `d` times `KOVN_TEST_TIMEOUT_SCALE` (an integer >= 1, default 1): the lab's bounded waits
/// stretched for kernels emulated under QEMU/TCG (5-10x slower), as the kernel matrix and the
/// kernel-datapath VM test set it. Only deadlines scale; nothing asserts a time.
pub fn scaled(d: Duration) -> Duration {
    let n: u32 = std::env::var("KOVN_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1);
    d * n
}
