//! `cargo xtask <task>`: orchestration around cargo (setup, lab, demo, tests, benchmarks).
//! It never replaces cargo: builds and tests are plain cargo invocations.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "kovn developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (Debian packages, Rust toolchains, bpf-linker).
    Setup,
    /// Build and drive the lab of network namespaces.
    #[command(subcommand)]
    Lab(xtask::lab::LabCommand),
    /// The demo: the lab, a kovn-monitor per node, traffic, and what the monitors see.
    Demo(xtask::demo::DemoArgs),
    /// The classifier benchmark (BPF_PROG_TEST_RUN; needs root). See BENCHMARKS.md.
    Bench,
    /// The kovn-monitor OCI image from Debian packages (mmdebstrap, umoci): writes an OCI
    /// archive under target/image and prints its digest.
    Image(xtask::image::ImageArgs),
    /// Formatting, no import cycles between kovn-monitor's modules, and clippy (warnings are
    /// errors), as CI runs them.
    Lint,
    /// The kernel matrix: the verifier, classifier, daemon, kill -9 and kernel-datapath lab test
    /// groups on Debian's Linux 5.10, 6.1 and 6.12 in QEMU VMs and on the host kernel (no lab
    /// there: no OVS module); prints a table (needs root).
    TestKernels(xtask::kernels::KernelsArgs),
    /// The kernel-datapath lab in a QEMU VM that stays up (Debian's kernel, OVS's kernel
    /// datapath, a monitor per node), its monitors' APIs and a command agent forwarded to
    /// 127.0.0.1 (needs root). See README, `cargo xtask vm-lab`.
    #[command(subcommand)]
    VmLab(xtask::vmlab::VmLabCommand),
    /// Inside the vm-lab VM: the lab, the monitors, the relays and the agent (internal).
    #[command(hide = true)]
    VmLabGuest(xtask::vmlab::GuestArgs),
    /// Inside a kernel-matrix VM: run the groups and write results.json (internal).
    #[command(hide = true)]
    KernelGuest(xtask::kernels::GuestArgs),
    /// The endurance run: its own lab, churning load for --minutes, the monitors sampled from
    /// outside; a report under target/soak/ and a failure on a crash, an unhealthy monitor,
    /// growth or a counter going back (needs root). See README, `cargo xtask soak`.
    Soak(xtask::soak::SoakArgs),
    /// Run every test: unprivileged unit tests, then the privileged kernel and lab tests, then
    /// the kernel matrix on the kernels in `--kernels`.
    Test {
        /// Only the unprivileged tests.
        #[arg(long)]
        unprivileged_only: bool,
        /// The kernel matrix's kernels after the privileged tests (comma-separated; `none` to
        /// skip it). See `test-kernels`.
        #[arg(long, default_value = "host,6.1:verifier+kill9+lab,6.12:verifier+lab,5.10:verifier")]
        kernels: String,
        /// Seconds each cargo-fuzz target (fuzz/) runs after the unit tests; 0 skips them.
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = dispatch(Cli::parse().task) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(task: Task) -> Result<()> {
    match task {
        Task::Setup => run(Command::new("bash").arg(workspace_root().join("scripts/setup.sh"))),
        Task::Lab(cmd) => xtask::lab::run(cmd),
        Task::Demo(args) => {
            require_root("the demo")?;
            if let Some(bin) = &args.bin {
                return xtask::demo::run(&args, bin);
            }
            println!(
                "==> building kovn-monitor and its eBPF programs (the first build takes a few minutes; \
                 the eBPF build's own output shows only if it fails, or with -v)"
            );
            if args.verbose {
                // SAFETY: set before any thread is started.
                unsafe { std::env::set_var("KOVN_EBPF_BUILD_VERBOSE", "1") };
            }
            let bin = build_monitor()?;
            xtask::demo::run(&args, &bin)
        }
        Task::Bench => {
            require_root("the benchmark")?;
            let mut bench = cargo();
            bench.args(["bench", "--package", "kovn-tests", "--bench", "classifier"]);
            run(&mut bench)
        }
        Task::Lint => lint(),
        Task::Image(args) => image(args),
        Task::TestKernels(args) => {
            if !test_kernels(&args)? {
                bail!("the kernel matrix has failures (table above)");
            }
            Ok(())
        }
        Task::Soak(args) => {
            require_root("the soak")?;
            let bin = match &args.bin {
                Some(b) => b.clone(),
                None if args.release => {
                    let mut build = cargo();
                    build.args(["build", "--release", "--package", "kovn-monitor", "--bins"]);
                    run(&mut build)?;
                    target_dir().join("release").join("kovn-monitor")
                }
                None => build_monitor()?,
            };
            let report = xtask::soak::run(&args, &bin, &target_dir().join("soak"))?;
            if report.interrupted {
                bail!("the soak was interrupted");
            }
            if !report.passed {
                bail!("the soak failed (report above)");
            }
            let aborted = report.ovs_aborted();
            if !aborted.is_empty() {
                bail!(
                    "the soak is inconclusive: OVS's userspace datapath aborted on {} (the known OVS 3.1 \
                     conntrack bug, not kovn); kovn was judged until then",
                    aborted.join(", ")
                );
            }
            Ok(())
        }
        Task::KernelGuest(args) => xtask::kernels::guest(&args),
        Task::VmLabGuest(args) => xtask::vmlab::guest(&args),
        Task::VmLab(cmd) => vm_lab(cmd),
        Task::Test { unprivileged_only, kernels, fuzz_seconds, args } => {
            test(unprivileged_only, &kernels, fuzz_seconds, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it loads eBPF programs and makes network namespaces): run it with sudo");
    }
    Ok(())
}

/// Builds the kovn-monitor binary of this tree and returns its path.
fn build_monitor() -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--package", "kovn-monitor", "--bins"]);
    run(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("debug").join("kovn-monitor"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn image(args: xtask::image::ImageArgs) -> Result<()> {
    require_root("building the image (mmdebstrap, umoci unpack)")?;
    let binary = match args.binary {
        Some(b) => b,
        None => {
            let mut build = cargo();
            build.args(["build", "--release", "--package", "kovn-monitor", "--bins"]);
            run(&mut build)?;
            target_dir().join("release").join("kovn-monitor")
        }
    };
    let b = xtask::image::build(&workspace_root(), &target_dir(), &binary, args.output)?;
    println!(
        "{}:{} {} ({:.1} MiB) -> {}",
        xtask::image::IMAGE_REPOSITORY,
        b.tag,
        b.digest,
        b.size as f64 / (1 << 20) as f64,
        b.archive.display()
    );
    Ok(())
}

fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(&mut fmt)?;
    // No import cycles between kovn-monitor's modules (xtask::modgraph).
    xtask::modgraph::check(&workspace_root().join("kovn-monitor/src"))?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--exclude", "kovn-ebpf", "--all-targets", "--", "-D", "warnings"]);
    run(&mut clippy)?;
    // The eBPF crate builds only with the pinned nightly for the BPF target.
    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(workspace_root().join("kovn-ebpf")).args([
        "run",
        EBPF_TOOLCHAIN,
        "cargo",
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    run(&mut ebpf)
}

/// Keep in step with scripts/setup.sh and kovn-monitor/build.rs.
/// The prefix of tests/tests/kernel_datapath.rs's VM tests (one per kernel).
const KERNEL_DATAPATH_VM_TESTS: &str = "cross_node_flow_learns_its_tunnel_leg_on_genev_sys_6081";

const EBPF_TOOLCHAIN: &str = "nightly-2026-07-15";

/// The cargo-fuzz targets of fuzz/ (its own workspace, built with the pinned nightly).
const FUZZ_TARGETS: [&str; 6] =
    ["ovsdb_framing", "ofproto_trace", "ovn_trace", "dump_flows", "inventory_file", "api_query"];

/// Runs each cargo-fuzz target for `seconds` from its committed seed corpus (fuzz/corpus/T).
/// `cargo fuzz build` once, then the built libFuzzer binaries directly (one cargo invocation,
/// not one per target). What libFuzzer adds goes to a scratch corpus under fuzz/target, so the
/// repository's stays as committed. A crash, a panic or an input slower than 10 s fails the run
/// and leaves the input in fuzz/artifacts/T/ (`cargo fuzz run T <file>` replays it). Without
/// sanitizers: the code is safe Rust, and the time goes to executions (debug assertions and
/// overflow checks stay on).
fn fuzz(seconds: u64) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    let dir = workspace_root().join("fuzz");
    let mut build = Command::new("rustup");
    build.current_dir(&dir).args(["run", EBPF_TOOLCHAIN, "cargo", "fuzz", "build", "--sanitizer", "none"]);
    build.arg("--debug-assertions");
    run(&mut build)?;
    // cargo-fuzz builds for the host triple.
    let bin_dir =
        dir.join("target").join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH)).join("release");
    for target in FUZZ_TARGETS {
        let scratch = dir.join("target").join("scratch-corpus").join(target);
        let artifacts = dir.join("artifacts").join(target);
        for d in [&scratch, &artifacts] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let mut c = Command::new(bin_dir.join(target));
        c.current_dir(&dir)
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .arg(&scratch)
            .arg(dir.join("corpus").join(target));
        run(&mut c)
            .with_context(|| format!("fuzz target {target}: its input is in {}", artifacts.display()))?;
    }
    Ok(())
}

/// `vm-lab`: the VM's state lives under target/vm-lab/NAME.
fn vm_lab(cmd: xtask::vmlab::VmLabCommand) -> Result<()> {
    use xtask::vmlab::{self, VmLabCommand};
    let root = target_dir().join("vm-lab");
    match cmd {
        VmLabCommand::Up(args) => {
            require_root("the VM lab")?;
            let monitor = match &args.bin {
                Some(bin) => bin.clone(),
                None => build_monitor()?,
            };
            let xtask_bin = std::env::current_exe().context("this task's executable")?;
            vmlab::up(&args, &monitor, &xtask_bin, &root)
        }
        VmLabCommand::Run { name, argv } => {
            let code = vmlab::run(&root, &name, &argv)?;
            std::process::exit(code)
        }
        VmLabCommand::Status { name } => vmlab::status(&root, &name),
        VmLabCommand::Down { name } => vmlab::down(&root, &name),
    }
}

/// Builds what the matrix runs (the monitor, the classifier and daemon test executables) and
/// runs it; returns whether everything passed.
fn test_kernels(args: &xtask::kernels::KernelsArgs) -> Result<bool> {
    require_root("the kernel matrix")?;
    // Missing QEMU/vng/kernel images: one clear error before any build.
    xtask::kernels::preflight(args)?;
    let monitor = build_monitor()?;
    let mut build = cargo();
    build.args([
        "test",
        "--package",
        "kovn-tests",
        "--no-run",
        "--message-format=json",
        "--test",
        "classifier",
        "--test",
        "daemon",
        "--test",
        "kernel_datapath",
    ]);
    let out = build.stderr(std::process::Stdio::inherit()).output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed");
    }
    let mut exes = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            exes.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let exe = |n: &str| exes.get(n).cloned().with_context(|| format!("cargo built no test executable {n}"));
    let target = monitor.parent().and_then(|d| d.parent()).expect("target/debug/kovn-monitor").to_path_buf();
    let built = xtask::kernels::Built {
        monitor,
        classifier: exe("classifier")?,
        daemon: exe("daemon")?,
        kernel_datapath: exe("kernel_datapath")?,
        workdir: workspace_root().join("tests"),
        out_root: target.join("kernel-matrix"),
    };
    let xtask_bin = std::env::current_exe().context("this task's executable")?;
    xtask::kernels::run(args, &built, &xtask_bin)
}

/// `./x test`'s last privileged step: a soak of a minute and a half with every disturbance
/// (README, "Soak": the thresholds of a short run). A child process: the soak installs its own
/// Ctrl-C handler and exits non-zero on any failure.
fn short_soak() -> Result<()> {
    let name = format!("ci{}", std::process::id() % 100_000);
    let mut soak = Command::new(std::env::current_exe().context("the xtask binary")?);
    soak.args(["soak", "--minutes", "1.5", "--name", &name])
        .args(["--fault-every", "30", "--fault-hold", "10", "--resolve-within", "60"])
        .args(["--alertmanager-restart-every", "30", "--ovsdb-restart-every", "40"])
        .args(["--sample-every", "3", "--udp-flows-per-second", "50"])
        // A light flow load: the debug build keeps its 1 s tick at ~3,800 flows (none missed
        // here, longest poll 0.65 s) but not at ~8,500 (12-24 % missed). Growth is not judged on
        // a run this short (the tables are still filling), the debug build's RSS is bounded
        // generously, and a tenth of the polls may miss the tick on a busy CI machine.
        .args(["--rss-max", "1024", "--rss-slope-limit", "1000000", "--polls-over-tick-fraction", "0.1"]);
    run(&mut soak)
}

fn test(unprivileged_only: bool, kernels: &str, fuzz_seconds: u64, args: &[String]) -> Result<()> {
    // Unit tests: no privileges, every crate but the privileged test crate.
    let mut unit = cargo();
    // kovn-ebpf builds only for the BPF target (nightly); its code is tested under
    // BPF_PROG_TEST_RUN by the privileged tests.
    unit.args(["test", "--workspace", "--exclude", "kovn-tests", "--exclude", "kovn-ebpf", "--"]).args(args);
    run(&mut unit)?;
    // A test-name filter asks for those tests only.
    if args.is_empty() {
        fuzz(fuzz_seconds)?;
    }
    if unprivileged_only {
        return Ok(());
    }
    require_root("the privileged tests")?;
    // The privileged tests run the kovn-monitor binary; build it first so they test this tree.
    build_monitor()?;
    // One at a time: they share the kernel (tc hooks, namespaces, the lab).
    let mut privileged = cargo();
    // The kernel-datapath VM tests boot a VM each: the kernel matrix below runs the same inner
    // test as its `lab` group (one VM per kernel, shared with the other groups).
    privileged
        .args([
            "test",
            "--package",
            "kovn-tests",
            "--",
            "--test-threads=1",
            "--skip",
            KERNEL_DATAPATH_VM_TESTS,
        ])
        .args(args);
    run(&mut privileged)?;
    if !args.is_empty() {
        return Ok(());
    }
    short_soak()?;
    if kernels == "none" {
        return Ok(());
    }
    // The kernel matrix (VMs with Debian's kernels; see `test-kernels`).
    let matrix = xtask::kernels::KernelsArgs {
        kernels: kernels.split(',').map(str::to_string).collect(),
        ..xtask::kernels::KernelsArgs::default()
    };
    if !test_kernels(&matrix)? {
        bail!("the kernel matrix has failures (table above)");
    }
    Ok(())
}
