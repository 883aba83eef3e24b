//! The kernel matrix (`cargo xtask test-kernels`): the same test groups on Debian's Linux 5.10,
//! 6.1 and 6.12 booted in QEMU over the host's root filesystem (virtme-ng), and on the host
//! kernel directly.
//!
//! Inside each VM (or on the host) the hidden `kernel-guest` task of this same binary runs the
//! groups one after another, each as a child process with a bounded wait, and writes
//! `results.json` plus one log per group into a directory the VM can write (`--rwdir`). The
//! host reads those back and prints one table. A group that fails never stops the others; a
//! kernel that does not boot is one row with the reason.
//!
//! Nothing is left behind: each VM runs in its own process group, killed (QEMU included) on
//! timeout, on Ctrl-C/SIGTERM and on every other exit; namespaces and tmpfs mounts of the tests
//! live inside the VM's kernel and die with it.
//!
//! Size: one VM runner (kernel packages, virtme-ng, KVM fallback) and the matrix's test groups of
//! one shape.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// The guest prints this line first thing, so the host can time the boot.
pub(crate) const GUEST_START: &str = "KOVN-GUEST-START";

/// Where setup.sh installs virtme-ng when no `vng` of the pinned version is on PATH.
const VNG_VENV: &str = "/opt/kovn/virtme-ng/bin/vng";

/// The name of the kill -9 test in tests/tests/daemon.rs (its own group in the table).
const KILL9_TEST: &str = "one_set_of_hooks_after_kill_9_and_restart";

/// The inner test of tests/tests/kernel_datapath.rs (the `lab` group): the lab on OVS's kernel
/// datapath, run where the kernel has the modules (in the VM).
const LAB_TEST: &str = "inner_kernel_datapath_lab";

/// Its healthy-mix test (the `mix` group).
const MIX_TEST: &str = "inner_kernel_datapath_mix";

/// A test group of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// `kovn-monitor check -o json`: every program through the verifier, instructions processed.
    Verifier,
    /// tests/tests/classifier.rs: every classifier under BPF_PROG_TEST_RUN.
    Classifier,
    /// tests/tests/daemon.rs (attach, follow veths, detach, ...), without the kill -9 test.
    Daemon,
    /// `kill -9` then restart: exactly one set of kovn hooks per interface.
    Kill9,
    /// tests/tests/kernel_datapath.rs's inner test: a two-node `lab up --datapath kernel`
    /// (OVS's kernel datapath, `genev_sys_6081` per node, the service-VIP check) with a monitor
    /// per node and a cross-node flow's tunnel leg learned on `genev_sys_6081`. Needs the
    /// `openvswitch` and `geneve` modules: VMs only (the host's kernel has neither).
    Lab,
    /// tests/tests/kernel_datapath.rs's healthy mix: the same lab with three pods per node and
    /// `lab traffic`'s mix (same node, cross node, service VIPs) for `--mix-minutes`; no finding
    /// may be raised. Long: only when asked for (`6.12:mix`), never by default or in CI.
    Mix,
}

impl Group {
    pub const ALL: [Group; 5] = [Group::Verifier, Group::Classifier, Group::Daemon, Group::Kill9, Group::Lab];

    /// Whether the group runs on the host's kernel by default (`lab` needs OVS's kernel module,
    /// which the host kernel has not; asked for explicitly, `host:lab` fails with that error).
    fn on_host_by_default(self) -> bool {
        !matches!(self, Group::Lab | Group::Mix)
    }

    /// Wall-clock time a group runs on top of its scaled budget (the mix's minutes).
    fn extra(self, mix_minutes: u32) -> Duration {
        match self {
            Group::Mix => Duration::from_secs(60 * u64::from(mix_minutes)),
            _ => Duration::ZERO,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Group::Verifier => "verifier",
            Group::Classifier => "classifier",
            Group::Daemon => "daemon",
            Group::Kill9 => "kill9",
            Group::Lab => "lab",
            Group::Mix => "mix",
        }
    }

    /// The bound on one group's run at timeout scale 1 (multiplied by `--timeout-scale`).
    fn budget(self) -> Duration {
        Duration::from_secs(match self {
            Group::Verifier => 120,
            Group::Classifier => 240,
            Group::Daemon => 240,
            Group::Kill9 => 90,
            // lab up (~1 min on the host), monitors, a ping, the flows polled.
            Group::Lab => 180,
            // lab up and monitors (~2 min on the host) plus the mix; minutes are added.
            Group::Mix => 240,
        })
    }
}

/// How each VM runs (the kernel matrix's and `vm-lab`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct VmOptions {
    /// Memory of each VM.
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// vCPUs of each VM.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Try KVM (`/dev/kvm`) instead of software emulation (TCG, the default: KVM hangs or
    /// aborts on some hosts).
    #[arg(long)]
    pub kvm: bool,
    /// How much longer than on the host a VM may take for every bounded wait (QEMU's TCG is
    /// 5-10x slower): multiplies the lab's and the tests' own polls (`KOVN_TEST_TIMEOUT_SCALE`)
    /// and the matrix's group budgets.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout_scale: u32,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self { memory: "2G".into(), cpus: 2, kvm: false, timeout_scale: 10 }
    }
}

#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Kernels to test: `5.10`, `6.1`, `6.12` (the newest Debian image of that line in /boot),
    /// `host` (this machine's kernel, no VM) or a path to a kernel image, each optionally
    /// followed by `:GROUP+GROUP` to run only those groups there (e.g. `6.12:verifier+kill9`).
    /// Repeat or separate with commas.
    #[arg(long = "kernel", value_delimiter = ',', default_values_t = ["5.10".to_string(), "6.1".to_string(), "6.12".to_string(), "host".to_string()])]
    pub kernels: Vec<String>,
    /// Test groups to run (default: all).
    #[arg(long = "group", value_delimiter = ',', value_enum)]
    pub groups: Vec<Group>,
    #[command(flatten)]
    pub vm: VmOptions,
    /// How long the `mix` group runs its healthy traffic, in minutes.
    #[arg(long, default_value_t = 10)]
    pub mix_minutes: u32,
}

impl Default for KernelsArgs {
    fn default() -> Self {
        Self {
            kernels: ["5.10", "6.1", "6.12", "host"].map(str::to_string).to_vec(),
            groups: Vec::new(),
            vm: VmOptions::default(),
            mix_minutes: 10,
        }
    }
}

/// The hidden task run inside each VM (and on the host for `host`).
#[derive(Debug, clap::Args)]
pub struct GuestArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub monitor: PathBuf,
    #[arg(long)]
    pub classifier: PathBuf,
    #[arg(long)]
    pub daemon: PathBuf,
    /// tests/tests/kernel_datapath.rs's executable (the `lab` group).
    #[arg(long)]
    pub kernel_datapath: PathBuf,
    #[arg(long)]
    pub workdir: PathBuf,
    #[arg(long = "group", value_delimiter = ',', value_enum)]
    pub groups: Vec<Group>,
    #[arg(long, default_value_t = 1)]
    pub timeout_scale: u32,
    #[arg(long, default_value_t = 10)]
    pub mix_minutes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Killed at its bound.
    Timeout,
    /// Could not run (a missing piece, reported in `summary`).
    Error,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Timeout => "TIMEOUT",
            Status::Error => "ERROR",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupResult {
    pub group: Group,
    pub status: Status,
    pub seconds: f64,
    /// One line: test counts, or why it failed.
    pub summary: String,
    /// Failing tests, rejected programs with the verifier's last lines.
    pub details: Vec<String>,
}

/// One program through this kernel's verifier (from `kovn-monitor check -o json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramResult {
    pub name: String,
    pub loaded: bool,
    pub verified_insns: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestResults {
    pub kernel: String,
    /// `tcx` or `clsact`, as seen by the kill -9 test (or `check`).
    pub attach_mode: Option<String>,
    pub groups: Vec<GroupResult>,
    pub programs: Vec<ProgramResult>,
}

/// One kernel's row on the host.
struct Row {
    label: String,
    boot: Option<Duration>,
    results: Option<GuestResults>,
    /// Why there are no results (did not boot, timed out, interrupted).
    error: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

/// Paths built by the caller (main.rs): the monitor binary and the two test executables.
pub struct Built {
    pub monitor: PathBuf,
    pub classifier: PathBuf,
    pub daemon: PathBuf,
    pub kernel_datapath: PathBuf,
    pub workdir: PathBuf,
    pub out_root: PathBuf,
}

/// A kernel to boot, or the host's.
enum Target {
    Host,
    Image { label: String, image: PathBuf },
}

/// Resolves `5.10`/`6.1`/`6.12`/`host`/a path, failing with what to install.
fn resolve(kernel: &str) -> Result<Target> {
    let line_glob = |prefix: &str, suffix: &str| -> Option<PathBuf> {
        let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/boot")
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let rest = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                // Version-sort on the numbers in the middle (ABI or patch level).
                let key = rest.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
                Some((key, PathBuf::from("/boot").join(name)))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, p)| p)
    };
    let (image, package) = match kernel {
        "host" => return Ok(Target::Host),
        "5.10" => (line_glob("vmlinuz-5.10.0-", "-amd64"), "linux-image-5.10.0-*-amd64 (Debian bullseye)"),
        "6.1" => (line_glob("vmlinuz-6.1.0-", "-amd64"), "linux-image-6.1.0-*-amd64"),
        "6.12" => (line_glob("vmlinuz-6.12.", "+deb12-amd64"), "linux-image-6.12.*+deb12-amd64"),
        path => {
            let p = PathBuf::from(path);
            if !p.is_file() {
                bail!("kernel image {path} not found (give 5.10, 6.1, 6.12, host or a kernel image path)");
            }
            let label = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(Target::Image { label, image: p });
        }
    };
    let image = image.with_context(|| {
        format!("no Linux {kernel} image in /boot: install {package} (`bash scripts/setup.sh vm` does)")
    })?;
    let label = image.file_name().map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_string());
    Ok(Target::Image { label: label.unwrap_or_default(), image })
}

/// `KERNEL` or `KERNEL:GROUP+GROUP...` (that kernel runs only those groups).
fn split_spec(spec: &str) -> Result<(&str, Option<Vec<Group>>)> {
    let Some((kernel, list)) = spec.split_once(':') else { return Ok((spec, None)) };
    let groups = list
        .split('+')
        .map(|g| {
            <Group as clap::ValueEnum>::from_str(g, true).map_err(|e| {
                anyhow::anyhow!(
                    "unknown test group {g:?} in {spec:?} ({e}; verifier, classifier, daemon, kill9, lab, mix)"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((kernel, Some(groups)))
}

/// The `vng` to use: on PATH, or where setup.sh puts it.
fn find_vng() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("vng")).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from(VNG_VENV)).filter(|p| p.is_file()))
}

fn have_on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Checks what the VMs need before building anything: one error naming what to install.
pub fn preflight(args: &KernelsArgs) -> Result<()> {
    let targets: Vec<Target> =
        args.kernels.iter().map(|k| resolve(split_spec(k)?.0)).collect::<Result<_>>()?;
    if targets.iter().any(|t| matches!(t, Target::Image { .. })) {
        check_vm_tools()?;
    }
    Ok(())
}

/// QEMU, virtme-ng and busybox (its initramfs): one error naming the first one missing.
fn check_vm_tools() -> Result<()> {
    if !have_on_path("qemu-system-x86_64") {
        bail!(
            "QEMU not found (qemu-system-x86_64): install qemu-system-x86 (`bash scripts/setup.sh vm` does)"
        );
    }
    if find_vng().is_none() {
        bail!(
            "virtme-ng (vng) not found: install virtme-ng==1.42 with pip (`bash scripts/setup.sh vm` does)"
        );
    }
    if !have_on_path("busybox") {
        bail!("busybox not found (virtme-ng builds its initramfs with it): install busybox-static");
    }
    Ok(())
}

/// Runs the matrix; returns whether every group on every kernel passed.
pub fn run(args: &KernelsArgs, built: &Built, xtask: &Path) -> Result<bool> {
    let all_groups = if args.groups.is_empty() { Group::ALL.to_vec() } else { args.groups.clone() };
    let mut targets = Vec::new();
    for spec in &args.kernels {
        let (kernel, groups) = split_spec(spec)?;
        let target = resolve(kernel)?;
        let groups = groups.unwrap_or_else(|| {
            let mut g = all_groups.clone();
            // Every group by default, but on the host only those its kernel can run.
            if args.groups.is_empty() && matches!(target, Target::Host) {
                g.retain(|g| g.on_host_by_default());
            }
            g
        });
        targets.push((kernel.to_string(), target, groups));
    }
    // The table's columns: every group asked of any kernel, in the usual order.
    let mut groups: Vec<Group> = targets.iter().flat_map(|t| t.2.iter().copied()).collect();
    groups.sort();
    groups.dedup();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Ctrl-C and SIGTERM: stop the running VM (its whole process group) and report.
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut rows = Vec::new();
    for (asked, target, these) in targets {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let (label, out) = match &target {
            Target::Host => {
                let rel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
                (format!("{} (host)", rel.trim()), built.out_root.join("host"))
            }
            Target::Image { label, .. } => (label.clone(), built.out_root.join(asked.replace('/', "_"))),
        };
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let guest = guest_argv(
            xtask,
            built,
            &out,
            &these,
            if matches!(target, Target::Host) { 1 } else { args.vm.timeout_scale },
            args.mix_minutes,
        );
        let budget: Duration = these.iter().map(|g| g.budget()).sum::<Duration>() * args.vm.timeout_scale
            + these.iter().map(|g| g.extra(args.mix_minutes)).sum::<Duration>()
            + Duration::from_secs(300);
        eprintln!(
            "kernel matrix: {label}: {} ...",
            these.iter().map(|g| g.name()).collect::<Vec<_>>().join(", ")
        );
        let mut cmd = match &target {
            Target::Host => {
                let mut c = Command::new(&guest[0]);
                c.args(&guest[1..]);
                c
            }
            Target::Image { image, .. } => vng_command(image, &args.vm, &out, &[], &guest)?,
        };
        let mut row = run_one(&mut cmd, label, &out, budget, &interrupted);
        if matches!(target, Target::Host) {
            row.boot = None; // no VM: nothing booted
        }
        print_progress(&row, &groups);
        rows.push(row);
    }
    let table = render(&rows, &groups);
    println!("{table}");
    let _ = fs::write(built.out_root.join("summary.txt"), &table);
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted: the running VM was stopped; results above are partial");
    }
    Ok(rows.iter().all(|r| {
        r.error.is_none()
            && r.results.as_ref().is_some_and(|g| g.groups.iter().all(|g| g.status == Status::Pass))
    }))
}

fn guest_argv(
    xtask: &Path,
    built: &Built,
    out: &Path,
    groups: &[Group],
    scale: u32,
    mix_minutes: u32,
) -> Vec<String> {
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let mut v = vec![
        p(xtask),
        "kernel-guest".into(),
        "--out".into(),
        p(out),
        "--monitor".into(),
        p(&built.monitor),
        "--classifier".into(),
        p(&built.classifier),
        "--daemon".into(),
        p(&built.daemon),
        "--kernel-datapath".into(),
        p(&built.kernel_datapath),
        "--workdir".into(),
        p(&built.workdir),
        "--timeout-scale".into(),
        scale.to_string(),
        "--mix-minutes".into(),
        mix_minutes.to_string(),
    ];
    for g in groups {
        v.push("--group".into());
        v.push(g.name().into());
    }
    v
}

/// A Debian kernel image for a VM (`5.10`, `6.1`, `6.12` or a path), after checking that QEMU,
/// virtme-ng and busybox are there: one error naming what to install.
pub(crate) fn kernel_image(kernel: &str) -> Result<PathBuf> {
    match resolve(kernel)? {
        Target::Image { image, .. } => {
            check_vm_tools()?;
            Ok(image)
        }
        Target::Host => bail!("the host's kernel has no OVS module: give 6.1, 6.12, 5.10 or a kernel image"),
    }
}

/// `vng ... --exec "<guest argv>"`. vng takes the command as one shell string: every word is
/// a path this task built or a fixed word, single-quoted; a path with a quote is refused.
/// `qemu_opts` are passed to QEMU as they are (one `--qemu-opts` per word).
pub(crate) fn vng_command(
    image: &Path,
    vm: &VmOptions,
    rwdir: &Path,
    qemu_opts: &[String],
    guest: &[String],
) -> Result<Command> {
    let vng = find_vng().context("virtme-ng (vng) not found: `bash scripts/setup.sh vm`")?;
    let mut words = Vec::with_capacity(guest.len());
    for w in guest {
        if w.contains('\'') {
            bail!("path {w} contains a quote; cannot pass it to the VM");
        }
        words.push(format!("'{w}'"));
    }
    let mut c = Command::new(&vng);
    // vng starts its companions (`virtme-run`, ...) by name, and they sit beside it: in
    // setup.sh's venv, whose bin directory is not on PATH (on a fresh machine every VM failed
    // with "virtme-run: not found").
    if let Some(dir) = vng.parent() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
        c.env("PATH", std::env::join_paths(dirs).context("PATH for vng")?);
    }
    if !vm.kvm {
        c.arg("--disable-kvm");
    }
    c.arg("--run")
        .arg(image)
        .args(["--memory", &vm.memory, "--cpus", &vm.cpus.to_string()])
        .arg("--rwdir")
        .arg(rwdir);
    for o in qemu_opts {
        c.arg(format!("--qemu-opts={o}"));
    }
    c.arg("--exec").arg(words.join(" "));
    Ok(c)
}

/// Runs one kernel's guest (a VM or the host run) in its own process group, bounded by
/// `budget`, streaming its console to `out/console.log`; kills the group on any way out.
fn run_one(cmd: &mut Command, label: String, out: &Path, budget: Duration, interrupted: &AtomicBool) -> Row {
    let started = Instant::now();
    let mut row = Row { label, boot: None, results: None, error: None };
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            row.error = Some(format!("cannot start {cmd:?}: {e}"));
            return row;
        }
    };
    let group = KillGroup(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let console = fs::File::create(out.join("console.log")).ok();
    let readers = spawn_console_readers(&mut child, console, tx);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if interrupted.load(Ordering::SeqCst) {
            row.error = Some("interrupted".into());
            break None;
        }
        if started.elapsed() > budget {
            row.error = Some(format!("no result within its bound of {} s: stopped", budget.as_secs()));
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(group); // kills whatever of the group is left (QEMU under vng), then reaps.
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    if let Ok(t) = rx.try_recv() {
        row.boot = Some(t.duration_since(started));
    }
    match fs::read(out.join("results.json")).map(|b| serde_json::from_slice::<GuestResults>(&b)) {
        Ok(Ok(r)) => row.results = Some(r),
        _ if row.error.is_some() => {}
        _ => {
            let tail = fs::read_to_string(out.join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
            row.error = Some(format!(
                "no results (exit {}): the kernel did not boot or the guest failed; console: {}",
                status.map_or("?".into(), |s| s.to_string()),
                tail.join(" | ")
            ));
        }
    }
    row
}

/// Kills a process group when dropped.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: signalling a process group this task created (process_group(0) above).
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

fn spawn_console_readers(
    child: &mut Child,
    console: Option<fs::File>,
    tx: std::sync::mpsc::Sender<Instant>,
) -> Vec<std::thread::JoinHandle<()>> {
    let console = console.map(|f| Arc::new(std::sync::Mutex::new(f)));
    let mut handles = Vec::new();
    let stdout = child.stdout.take().map(|s| -> Box<dyn std::io::Read + Send> { Box::new(s) });
    let stderr = child.stderr.take().map(|s| -> Box<dyn std::io::Read + Send> { Box::new(s) });
    for (stream, tx) in [(stdout, Some(tx)), (stderr, None)] {
        let Some(stream) = stream else { continue };
        let console = console.clone();
        handles.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if line.contains(GUEST_START)
                    && let Some(tx) = &tx
                {
                    let _ = tx.send(Instant::now());
                }
                if let Some(c) = &console
                    && let Ok(mut f) = c.lock()
                {
                    let _ = writeln!(f, "{line}");
                }
            }
        }));
    }
    handles
}

fn secs(d: f64) -> String {
    format!("{d:.0}s")
}

fn print_progress(row: &Row, groups: &[Group]) {
    eprintln!("{}", render(std::slice::from_ref(row), groups));
}

/// The table: kernel × group → pass/fail and time, attach mode, boot time; then per program
/// the verifier's processed instructions; then the details of every failure.
fn render(rows: &[Row], groups: &[Group]) -> String {
    let mut t = String::new();
    let mut header = vec!["kernel".to_string(), "attach".into(), "boot".into()];
    header.extend(groups.iter().map(|g| g.name().to_string()));
    let mut lines = vec![header];
    for r in rows {
        let kernel = r.results.as_ref().map(|g| g.kernel.clone()).filter(|k| !k.is_empty());
        let mut l = vec![
            r.label.clone(),
            r.results.as_ref().and_then(|g| g.attach_mode.clone()).unwrap_or_else(|| "-".into()),
            r.boot.map_or("-".into(), |b| secs(b.as_secs_f64())),
        ];
        let _ = kernel;
        for g in groups {
            let cell = r
                .results
                .as_ref()
                .and_then(|res| res.groups.iter().find(|x| x.group == *g))
                .map_or("-".into(), |x| format!("{} {}", x.status.word(), secs(x.seconds)));
            l.push(cell);
        }
        lines.push(l);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        t.push_str(cells.join("  ").trim_end());
        t.push('\n');
    }
    // Verifier: processed instructions per program and kernel.
    let mut programs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let with_programs: Vec<&Row> =
        rows.iter().filter(|r| r.results.as_ref().is_some_and(|g| !g.programs.is_empty())).collect();
    for (i, r) in with_programs.iter().enumerate() {
        for p in &r.results.as_ref().expect("filtered").programs {
            let cell = match (p.loaded, p.verified_insns) {
                (true, Some(n)) => n.to_string(),
                (true, None) => "loaded".into(),
                (false, Some(n)) => format!("REJECTED ({n})"),
                (false, None) => "REJECTED".into(),
            };
            let v = programs.entry(p.name.clone()).or_insert_with(|| vec!["-".into(); with_programs.len()]);
            v[i] = cell;
        }
    }
    if !programs.is_empty() {
        t.push_str("\nverifier: instructions processed per program (limit 1000000)\n");
        let mut lines = vec![
            std::iter::once("program".to_string())
                .chain(with_programs.iter().map(|r| r.label.clone()))
                .collect::<Vec<_>>(),
        ];
        for (name, cells) in programs {
            lines.push(std::iter::once(name).chain(cells).collect());
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
            .collect();
        for l in &lines {
            let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            t.push_str(cells.join("  ").trim_end());
            t.push('\n');
        }
    }
    let mut details = String::new();
    for r in rows {
        if let Some(e) = &r.error {
            details.push_str(&format!("{}: {e}\n", r.label));
        }
        for g in r.results.iter().flat_map(|g| &g.groups).filter(|g| g.status != Status::Pass) {
            details.push_str(&format!(
                "{} / {}: {} — {}\n",
                r.label,
                g.group.name(),
                g.status.word(),
                g.summary
            ));
            for d in &g.details {
                details.push_str(&format!("    {d}\n"));
            }
        }
    }
    if !details.is_empty() {
        t.push_str("\nfailures:\n");
        t.push_str(&details);
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Guest side (inside the VM, or on the host for `host`)
// ---------------------------------------------------------------------------------------------

pub fn guest(args: &GuestArgs) -> Result<()> {
    println!("{GUEST_START}");
    let _ = std::io::stdout().flush();
    fs::create_dir_all(&args.out)?;
    mount_tracefs();
    let mut results = GuestResults {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        ..GuestResults::default()
    };
    let groups = if args.groups.is_empty() { Group::ALL.to_vec() } else { args.groups.clone() };
    for g in groups {
        eprintln!("kernel-guest: {} ...", g.name());
        let r = run_group(g, args, &mut results);
        eprintln!("kernel-guest: {} {} in {:.0} s: {}", g.name(), r.status.word(), r.seconds, r.summary);
        results.groups.push(r);
        // Written after every group: a VM killed at its bound still reports what finished.
        fs::write(args.out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}

/// The drop tracepoint needs tracefs (virtme-ng mounts it; a bare host may not have).
pub(crate) fn mount_tracefs() {
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let _ = Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]).status();
    }
}

/// A child's outcome: exit success, timed out, and its combined output.
struct Ran {
    success: bool,
    timed_out: bool,
    stdout: String,
    log: String,
    seconds: f64,
}

fn run_bounded(mut cmd: Command, log_path: &Path, stdout_path: &Path, budget: Duration) -> Result<Ran> {
    let started = Instant::now();
    let log = fs::File::create(log_path)?;
    let out = fs::File::create(stdout_path)?;
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(log).process_group(0).spawn()?;
    let guard = KillGroup(child.id() as i32);
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > budget {
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(guard);
    let status = status.or_else(|| child.wait().ok());
    Ok(Ran {
        success: !timed_out && status.is_some_and(|s| s.success()),
        timed_out,
        stdout: fs::read_to_string(stdout_path).unwrap_or_default(),
        log: fs::read_to_string(log_path).unwrap_or_default(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_group(g: Group, args: &GuestArgs, results: &mut GuestResults) -> GroupResult {
    let budget = g.budget() * args.timeout_scale + g.extra(args.mix_minutes);
    let log = args.out.join(format!("{}.log", g.name()));
    let stdout = args.out.join(format!("{}.out", g.name()));
    let mut cmd;
    match g {
        Group::Verifier => {
            cmd = Command::new(&args.monitor);
            cmd.args(["check", "-o", "json"]);
        }
        Group::Classifier => {
            cmd = Command::new(&args.classifier);
            cmd.arg("--test-threads=1");
        }
        Group::Daemon => {
            cmd = Command::new(&args.daemon);
            cmd.args(["--test-threads=1", "--skip", KILL9_TEST]);
        }
        Group::Kill9 => {
            cmd = Command::new(&args.daemon);
            cmd.args(["--test-threads=1", "--exact", KILL9_TEST, "--nocapture"]);
        }
        Group::Lab => {
            cmd = Command::new(&args.kernel_datapath);
            cmd.args(["--ignored", "--exact", LAB_TEST, "--nocapture", "--test-threads=1"]);
        }
        Group::Mix => {
            cmd = Command::new(&args.kernel_datapath);
            cmd.args(["--ignored", "--exact", MIX_TEST, "--nocapture", "--test-threads=1"]);
            cmd.env("KOVN_MIX_MINUTES", args.mix_minutes.to_string());
        }
    }
    cmd.current_dir(&args.workdir).env("KOVN_TEST_TIMEOUT_SCALE", args.timeout_scale.to_string());
    let ran = match run_bounded(cmd, &log, &stdout, budget) {
        Ok(r) => r,
        Err(e) => {
            return GroupResult {
                group: g,
                status: Status::Error,
                seconds: 0.0,
                summary: format!("cannot run: {e:#}"),
                details: vec![],
            };
        }
    };
    let mut r = GroupResult {
        group: g,
        status: if ran.timed_out {
            Status::Timeout
        } else if ran.success {
            Status::Pass
        } else {
            Status::Fail
        },
        seconds: ran.seconds,
        summary: String::new(),
        details: vec![],
    };
    if ran.timed_out {
        r.summary = format!("stopped at its bound of {} s", budget.as_secs());
    }
    match g {
        Group::Verifier => verifier_result(&ran, &mut r, results),
        _ => {
            let text = format!("{}\n{}", ran.stdout, ran.log);
            libtest_result(&text, &mut r);
            if g == Group::Kill9
                && let Some(mode) = text.lines().find_map(|l| l.strip_prefix("attach mode: "))
            {
                results.attach_mode = Some(mode.trim().to_string());
            }
        }
    }
    r
}

/// `kovn-monitor check -o json`: per program loaded or not, instructions processed, and for a
/// rejected program the verifier's last lines.
fn verifier_result(ran: &Ran, r: &mut GroupResult, results: &mut GuestResults) {
    if ran.log.contains("unrecognized subcommand") {
        r.status = Status::Error;
        r.summary = "this kovn-monitor has no `check` subcommand".into();
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&ran.stdout) else {
        if r.summary.is_empty() {
            r.summary = format!("no JSON from `kovn-monitor check`: {}", last_lines(&ran.log, 3).join(" | "));
        }
        if r.status == Status::Pass {
            r.status = Status::Fail;
        }
        return;
    };
    if results.attach_mode.is_none() {
        results.attach_mode = v["attach_mode"].as_str().map(str::to_string);
    }
    let mut rejected = 0;
    let mut total = 0;
    for p in v["programs"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let loaded = p["loaded"].as_bool().unwrap_or(false);
        total += 1;
        if !loaded {
            rejected += 1;
            r.details.push(format!(
                "{} rejected on {}: {}",
                name,
                results.kernel,
                p["error"].as_str().unwrap_or("no error text")
            ));
            for l in p["verifier_tail"].as_array().into_iter().flatten() {
                r.details.push(format!("    | {}", l.as_str().unwrap_or("")));
            }
        }
        results.programs.push(ProgramResult { name, loaded, verified_insns: p["verified_insns"].as_u64() });
    }
    // Every program must load here (the tracepoint too: a kernel without it is not in the
    // matrix); `check` itself exits non-zero only for the classifiers.
    if rejected > 0 && r.status == Status::Pass {
        r.status = Status::Fail;
    }
    if r.summary.is_empty() {
        r.summary = format!("{} of {total} programs loaded", total - rejected);
    }
}

/// libtest's output: "test result: ok. 12 passed; 0 failed; ..." and the failing tests.
fn libtest_result(text: &str, r: &mut GroupResult) {
    let summary = text.lines().rev().find(|l| l.starts_with("test result:"));
    for l in text.lines() {
        if let Some(name) = l.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED")) {
            r.details.push(format!("{name} failed"));
        }
    }
    for l in text.lines().filter(|l| l.contains("panicked at")).take(5) {
        r.details.push(l.trim().to_string());
    }
    if let Some(s) = summary {
        if r.summary.is_empty() {
            r.summary = s.trim_start_matches("test result: ").to_string();
        }
        if !s.contains("ok.") && r.status == Status::Pass {
            r.status = Status::Fail;
        }
    } else if r.summary.is_empty() {
        r.summary = format!("no test summary: {}", last_lines(text, 3).join(" | "));
        if r.status == Status::Pass {
            r.status = Status::Fail;
        }
    }
}

fn last_lines(text: &str, n: usize) -> Vec<String> {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_and_failures_are_read() {
        let mut r = GroupResult {
            group: Group::Daemon,
            status: Status::Fail,
            seconds: 1.0,
            summary: String::new(),
            details: vec![],
        };
        libtest_result(
            "test a ... ok\ntest b ... FAILED\nthread 'b' panicked at x.rs:1:2:\ntest result: FAILED. 1 passed; 1 failed; 0 ignored\n",
            &mut r,
        );
        assert_eq!(r.summary, "FAILED. 1 passed; 1 failed; 0 ignored");
        assert_eq!(r.details[0], "b failed");
        let mut ok = GroupResult {
            group: Group::Daemon,
            status: Status::Pass,
            seconds: 1.0,
            summary: String::new(),
            details: vec![],
        };
        libtest_result("garbage\n", &mut ok);
        assert_eq!(ok.status, Status::Fail, "no summary line is a failure: {ok:?}");
    }

    #[test]
    fn a_rejected_program_is_named_with_the_verifiers_last_lines() {
        let ran = Ran {
            success: false,
            timed_out: false,
            stdout: r#"{"attach_mode":"clsact","programs":[
                {"name":"kovn_pod_ingress","loaded":false,"verified_insns":1000001,"error":"Argument list too long","verifier_tail":["BPF program is too large. Processed 1000001 insn"]},
                {"name":"kovn_pod_egress","loaded":true,"verified_insns":12345}]}"#
                .into(),
            log: String::new(),
            seconds: 1.0,
        };
        let mut res = GuestResults { kernel: "6.1.0-50-amd64".into(), ..Default::default() };
        let mut r = GroupResult {
            group: Group::Verifier,
            status: Status::Fail,
            seconds: 1.0,
            summary: String::new(),
            details: vec![],
        };
        verifier_result(&ran, &mut r, &mut res);
        assert_eq!(r.summary, "1 of 2 programs loaded");
        assert!(
            r.details[0].starts_with("kovn_pod_ingress rejected on 6.1.0-50-amd64: Argument list too long"),
            "{r:?}"
        );
        assert!(r.details[1].contains("Processed 1000001"), "{r:?}");
        assert_eq!(res.attach_mode.as_deref(), Some("clsact"));
        assert_eq!(res.programs[1].verified_insns, Some(12345));
    }

    #[test]
    fn kernel_specs_with_groups() {
        assert_eq!(split_spec("6.1").expect("plain").0, "6.1");
        let (k, g) = split_spec("6.12:verifier+kill9").expect("with groups");
        assert_eq!((k, g), ("6.12", Some(vec![Group::Verifier, Group::Kill9])));
        let (_, g) = split_spec("6.1:verifier+kill9+lab").expect("with the lab");
        assert_eq!(g, Some(vec![Group::Verifier, Group::Kill9, Group::Lab]));
        assert!(!Group::Lab.on_host_by_default(), "the host kernel has no OVS module");
        let (_, g) = split_spec("6.12:mix").expect("the healthy mix");
        assert_eq!(g, Some(vec![Group::Mix]));
        assert!(!Group::ALL.contains(&Group::Mix), "the mix runs only when asked for");
        assert_eq!(Group::Mix.extra(3), Duration::from_secs(180), "its minutes on top of its bound");
        assert_eq!(Group::Lab.extra(3), Duration::ZERO);
        assert!(split_spec("6.12:bogus").is_err());
    }

    #[test]
    fn a_missing_kernel_line_names_the_package() {
        // 4.19 is no line this task knows: a path that does not exist.
        let e = resolve("/nonexistent/vmlinuz").err().expect("error");
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
