//! The kernel-datapath lab in a VM that stays up (`cargo xtask vm-lab up|run|status|down`).
//!
//! `up` boots a Debian kernel in QEMU over the host's root filesystem (virtme-ng, as the kernel
//! matrix does), and inside it runs `lab up --datapath kernel` and one kovn-monitor per node:
//! OVS's kernel datapath with its own `genev_sys_6081` per node, as on a Kube-OVN node. The host
//! reaches it through QEMU user-mode port forwards bound to 127.0.0.1 only:
//! - `127.0.0.1:<port base + K>`: node K's monitor API (a relay in the VM's root namespace to
//!   `http://<node K's IP>:9474`), so `kovn-monitor top|flows|alerts --endpoint ...`, a browser
//!   and Prometheus work from the host as against any node;
//! - `127.0.0.1:<port base>`: an agent that runs one `cargo xtask lab ...` command in the VM per
//!   connection and streams its output back (`vm-lab run -- lab fault ...`). The command is an
//!   argument vector (JSON), executed without a shell; only `lab` commands are taken, and not
//!   `lab up`/`lab down` (the VM's lifecycle is `vm-lab up`/`down`).
//!
//! Guest parameters travel as a JSON file in the VM's writable directory, never through the
//! shell string virtme-ng runs. Bounds: one agent command at a time; at most
//! [`MAX_RELAYS_PER_NODE`] relayed connections per node, each closed after [`RELAY_IDLE`]
//! without traffic; one request line of at most [`MAX_REQUEST`] bytes, read within
//! [`REQUEST_WAIT`]; a client that stops reading the output for [`OUTPUT_WAIT`] has its command
//! killed.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use serde::{Deserialize, Serialize};

use crate::kernels;
use crate::lab::{self, DEFAULT_NAME, Datapath, UpArgs, UpOptions};

/// Default first host port: the agent; node K's monitor is on this plus K.
pub const DEFAULT_PORT_BASE: u16 = 19470;

/// Relayed connections per node at once; more are closed at once (logged in the console).
pub const MAX_RELAYS_PER_NODE: usize = 64;

/// A relayed connection with no byte either way for this long is closed.
pub const RELAY_IDLE: Duration = Duration::from_secs(300);

/// The longest request line the agent reads.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// How long the agent waits for a request line once connected.
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// How long one write of a command's output may block on a client that does not read.
pub const OUTPUT_WAIT: Duration = Duration::from_secs(60);

/// The guest NIC's MAC (QEMU's user network; the guest finds its NIC by it) and the address
/// QEMU's `hostfwd` forwards to when no guest address is given.
const VM_MAC: &str = "52:54:00:6b:76:01";
const VM_ADDR: &str = "10.0.2.15/24";

/// Ends the agent's answer: a NUL (never in a command's text output), then the exit code.
const EXIT_MARK: u8 = 0;

/// What `vm-lab up` writes for the guest (`guest.json`) and keeps for `run`/`down` (`vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestConfig {
    pub name: String,
    pub monitor: PathBuf,
    pub port_base: u16,
    pub timeout_scale: u32,
    /// `lab up` arguments, parsed again inside the VM (checked on the host first).
    pub up_args: Vec<String>,
}

/// The running VM, as `vm-lab up` left it (`target/vm-lab/NAME/vm.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub name: String,
    pub kernel: String,
    /// vng's process id, also its process group (QEMU is in it).
    pub pid: i32,
    pub port_base: u16,
}

/// What the guest reports when the lab and the monitors are up (`ready.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub kernel: String,
    pub lab: String,
    pub lab_up_seconds: f64,
    pub monitors_seconds: f64,
    pub monitors: Vec<ReadyMonitor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyMonitor {
    pub node: String,
    /// Inside the VM (`http://<node ip>:9474`).
    pub vm_url: String,
    /// On the host (`http://127.0.0.1:<port>`).
    pub host_url: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum VmLabCommand {
    /// Boot the kernel, build the lab on OVS's kernel datapath inside, start a monitor per node,
    /// forward their APIs and the agent to 127.0.0.1, and return (the VM keeps running).
    Up(VmUpArgs),
    /// Run one `cargo xtask lab ...` command inside the VM (e.g. `-- lab fault ovs-drop --pod
    /// web-2`), its output streamed here; exits with its exit code.
    Run {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// The command: `lab` and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// The VM's kernel, ports and monitors, and whether it runs.
    Status {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
    /// `lab down` inside, then the VM powers off (killed if it has not within a minute).
    Down {
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct VmUpArgs {
    /// Lab name (as `lab up --name`); also names the VM's state directory.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// `6.1`, `6.12` or `5.10` (the newest Debian image of that line in /boot), or a kernel
    /// image path.
    #[arg(long, default_value = "6.12")]
    pub kernel: String,
    /// The agent's host port; node K's monitor API is on this plus K (127.0.0.1 only).
    #[arg(long, default_value_t = DEFAULT_PORT_BASE)]
    pub port_base: u16,
    #[command(flatten)]
    pub vm: kernels::VmOptions,
    /// Use this kovn-monitor binary instead of building this tree's (tests, CI).
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// `lab up` options (e.g. `-- --nodes 3 --pods-per-node 2 --tunnel vxlan`); `--datapath`
    /// is always `kernel`, `--name` is this command's.
    #[arg(last = true)]
    pub up_args: Vec<String>,
}

/// `lab up`'s options alone, to parse `up_args`.
#[derive(Debug, clap::Parser)]
#[command(name = "lab up", no_binary_name = true)]
struct UpCli {
    #[command(flatten)]
    up: UpArgs,
}

/// `up_args` as `lab up` options for lab `name` on the kernel datapath.
fn up_options(name: &str, up_args: &[String]) -> Result<UpOptions> {
    for a in up_args {
        ensure!(
            !(a == "--name" || a.starts_with("--name=") || a == "--datapath" || a.starts_with("--datapath=")),
            "{a}: give the lab's name as `vm-lab up --name`; the VM's lab is always on the kernel datapath"
        );
    }
    let cli = UpCli::try_parse_from(up_args).map_err(|e| anyhow::anyhow!("lab up options: {e}"))?;
    let mut opts = UpOptions::from(cli.up);
    opts.name = name.to_string();
    opts.datapath = Datapath::Kernel;
    lab::validate_name(&opts.name)?;
    ensure!((1..=99).contains(&opts.nodes), "--nodes {} is not within 1..=99", opts.nodes);
    Ok(opts)
}

fn state_path(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// The process exists and is not a zombie (a container's PID 1 may never reap what it inherits).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')'.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_none_or(|s| s != 'Z')
}

fn load_state(root: &Path, name: &str) -> Result<VmState> {
    lab::validate_name(name)?;
    let path = state_path(root, name).join("vm.json");
    let bytes = fs::read(&path).with_context(|| {
        format!("no VM lab {name:?} ({} missing): start it with `cargo xtask vm-lab up`", path.display())
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Host side of `up`: boots the VM detached and waits for the guest's `ready.json`.
pub fn up(args: &VmUpArgs, monitor: &Path, xtask: &Path, root: &Path) -> Result<()> {
    let opts = up_options(&args.name, &args.up_args)?;
    let last_port = u32::from(args.port_base) + opts.nodes;
    ensure!(
        args.port_base >= 1024 && last_port <= 65535,
        "--port-base {} leaves no room for {} nodes",
        args.port_base,
        opts.nodes
    );
    let dir = state_path(root, &args.name);
    if let Ok(vm) = load_state(root, &args.name)
        && alive(vm.pid)
    {
        bail!(
            "VM lab {:?} is already up (pid {}): `cargo xtask vm-lab down --name {}` first",
            args.name,
            vm.pid,
            args.name
        );
    }
    for port in args.port_base..=last_port as u16 {
        TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("host port 127.0.0.1:{port} is in use: pick other ports with --port-base")
        })?;
    }
    let image = kernels::kernel_image(&args.kernel)?;
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = GuestConfig {
        name: args.name.clone(),
        monitor: fs::canonicalize(monitor)
            .with_context(|| format!("no kovn-monitor at {}", monitor.display()))?,
        port_base: args.port_base,
        timeout_scale: args.vm.timeout_scale,
        up_args: args.up_args.clone(),
    };
    let config_path = dir.join("guest.json");
    fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let mut forwards = format!("user,id=kovnvm,hostfwd=tcp:127.0.0.1:{0}-:{0}", args.port_base);
    for k in 1..=opts.nodes {
        let port = u32::from(args.port_base) + k;
        forwards.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{port}"));
    }
    let qemu = vec![
        "-netdev".to_string(),
        forwards,
        "-device".to_string(),
        format!("virtio-net-pci,netdev=kovnvm,mac={VM_MAC}"),
    ];
    let guest = [
        xtask.to_string_lossy().into_owned(),
        "vm-lab-guest".to_string(),
        "--config".to_string(),
        config_path.to_string_lossy().into_owned(),
    ];
    let mut cmd = kernels::vng_command(&image, &args.vm, &dir, &qemu, &guest)?;
    let console = fs::File::create(dir.join("console.log"))?;
    let started = Instant::now();
    cmd.stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);
    // Its own session (so its own process group, id = its pid): a terminal closing after `up`
    // returned does not reach it, and `down` kills the whole group, QEMU included.
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting virtme-ng")?;
    let pid = child.id() as i32;
    let kernel = image.file_name().map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_string());
    let state = VmState {
        name: args.name.clone(),
        kernel: kernel.unwrap_or_default(),
        pid,
        port_base: args.port_base,
    };
    fs::write(dir.join("vm.json"), serde_json::to_vec_pretty(&state)?)?;
    println!(
        "vm-lab {}: booting {} (QEMU {}, pid {pid}); console: {}",
        args.name,
        state.kernel,
        if args.vm.kvm { "KVM" } else { "TCG" },
        dir.join("console.log").display()
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    // Boot, lab up and monitors took 77-86 s under TCG here; the bound is generous.
    let bound = Duration::from_secs(60) * args.vm.timeout_scale + Duration::from_secs(120);
    let failure = loop {
        if let Ok(bytes) = fs::read(dir.join("ready.json"))
            && let Ok(ready) = serde_json::from_slice::<Ready>(&bytes)
        {
            print_ready(&state, &ready, started.elapsed());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            break format!("the VM stopped ({status}) before the lab was up: {}", guest_failure(&dir));
        }
        if interrupted.load(Ordering::SeqCst) {
            break "interrupted: the VM was stopped".to_string();
        }
        if started.elapsed() > bound {
            break format!(
                "the lab was not up within {} s: the VM was stopped; {}",
                bound.as_secs(),
                guest_failure(&dir)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // SAFETY: the VM's own process group (its session, setsid above); QEMU is in it.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    let _ = fs::remove_file(dir.join("vm.json"));
    bail!("{failure}")
}

/// The guest's own error (`error.txt`), else the console's last lines.
fn guest_failure(dir: &Path) -> String {
    if let Ok(e) = fs::read_to_string(dir.join("error.txt")) {
        return format!("the guest said: {}", e.trim());
    }
    let console = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    format!("console (last lines):\n{}", tail.join("\n"))
}

fn print_ready(state: &VmState, ready: &Ready, took: Duration) {
    println!(
        "vm-lab {}: lab {:?} up on OVS's kernel datapath in Linux {} after {:.0} s (lab up {:.0} s, monitors {:.0} s)",
        state.name,
        ready.lab,
        ready.kernel,
        took.as_secs_f64(),
        ready.lab_up_seconds,
        ready.monitors_seconds
    );
    let mut endpoints = Vec::new();
    for m in &ready.monitors {
        println!("  {:<8} monitor {}  (in the VM: {})", m.node, m.host_url, m.vm_url);
        endpoints.push(format!("--endpoint {}", m.host_url));
    }
    println!("  commands in the VM: cargo xtask vm-lab run --name {} -- lab status", state.name);
    println!("  live view:          kovn-monitor top {}", endpoints.join(" "));
    println!("  stop:               cargo xtask vm-lab down --name {}", state.name);
}

/// `status`: the state, whether the VM runs, and what the guest reported.
pub fn status(root: &Path, name: &str) -> Result<()> {
    let state = load_state(root, name)?;
    let running = alive(state.pid);
    println!(
        "vm-lab {}: Linux {}, pid {} {}, agent 127.0.0.1:{}",
        state.name,
        state.kernel,
        state.pid,
        if running { "running" } else { "NOT running" },
        state.port_base
    );
    let dir = state_path(root, name);
    match fs::read(dir.join("ready.json")).ok().and_then(|b| serde_json::from_slice::<Ready>(&b).ok()) {
        Some(ready) => {
            for m in &ready.monitors {
                println!("  {:<8} monitor {}  (in the VM: {})", m.node, m.host_url, m.vm_url);
            }
        }
        None => println!("  not ready yet (or failed: {})", guest_failure(&dir)),
    }
    Ok(())
}

/// `run`: sends `argv` to the agent and copies its output here; returns the command's exit code.
pub fn run(root: &Path, name: &str, argv: &[String]) -> Result<i32> {
    run_to(root, name, argv, &mut std::io::stdout().lock())
}

/// [`run`] with the command's output written to `out`.
fn run_to(root: &Path, name: &str, argv: &[String], out: &mut impl std::io::Write) -> Result<i32> {
    let state = load_state(root, name)?;
    ensure!(
        alive(state.pid),
        "VM lab {name:?} is not running (pid {} gone): `cargo xtask vm-lab up`",
        state.pid
    );
    let mut stream = connect(state.port_base)?;
    let request = serde_json::json!({ "argv": argv });
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut buf = [0u8; 8192];
    let mut trailer: Option<Vec<u8>> = None;
    loop {
        let n = stream.read(&mut buf).context("reading the agent's answer")?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        match (&mut trailer, chunk.iter().position(|&b| b == EXIT_MARK)) {
            (Some(t), _) => t.extend_from_slice(chunk),
            (None, Some(i)) => {
                out.write_all(&chunk[..i])?;
                trailer = Some(chunk[i + 1..].to_vec());
            }
            (None, None) => out.write_all(chunk)?,
        }
        out.flush()?;
    }
    let trailer =
        trailer.context("the agent closed the connection without an exit code (did the VM stop?)")?;
    let text = String::from_utf8_lossy(&trailer);
    text.trim().parse::<i32>().with_context(|| format!("the agent's exit code {text:?}"))
}

fn connect(port: u16) -> Result<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| {
        format!("cannot reach the VM's agent on {addr} (still booting? `cargo xtask vm-lab status`)")
    })
}

/// `down`: `lab down` inside and the VM off; killed when it has not stopped within a minute.
pub fn down(root: &Path, name: &str) -> Result<()> {
    let state = load_state(root, name)?;
    if alive(state.pid) {
        match connect(state.port_base) {
            Ok(mut s) => {
                let _ = s.write_all(b"{\"down\":true}\n");
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                // The output before the exit mark; the code after it is the agent's.
                print!("{}", answer.split(char::from(EXIT_MARK)).next().unwrap_or_default());
            }
            Err(e) => eprintln!("{e:#}: stopping the VM"),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive(state.pid) && Instant::now() < deadline {
            // vng's child: reaped by init once this task is not its parent.
            std::thread::sleep(Duration::from_millis(300));
            let mut status = 0;
            // SAFETY: non-blocking wait on a pid; fails harmlessly when it is not our child.
            unsafe { libc::waitpid(state.pid, &mut status, libc::WNOHANG) };
        }
        if alive(state.pid) {
            // SAFETY: the VM's own process group (vng started it with process_group(0)).
            unsafe { libc::kill(-state.pid, libc::SIGKILL) };
            println!("vm-lab {name}: the VM did not power off within 60 s: killed");
        }
    }
    let _ = fs::remove_file(state_path(root, name).join("vm.json"));
    println!("vm-lab {name}: down");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Guest side
// ---------------------------------------------------------------------------------------------

#[derive(Debug, clap::Args)]
pub struct GuestArgs {
    /// `guest.json` written by `vm-lab up`.
    #[arg(long)]
    pub config: PathBuf,
}

/// Inside the VM: the NIC, the lab, the monitors, the relays, then the agent until `down`.
/// Any failure is written to `error.txt` beside the config, for the host to print.
pub fn guest(args: &GuestArgs) -> Result<()> {
    println!("{}", kernels::GUEST_START);
    let dir = args.config.parent().map(Path::to_path_buf).unwrap_or_default();
    let result = guest_inner(args, &dir);
    if let Err(e) = &result {
        let _ = fs::write(dir.join("error.txt"), format!("{e:#}\n"));
    }
    result
}

fn guest_inner(args: &GuestArgs, dir: &Path) -> Result<()> {
    let config: GuestConfig = serde_json::from_slice(&fs::read(&args.config)?).context("guest.json")?;
    let opts = up_options(&config.name, &config.up_args)?;
    // SAFETY: set before any thread of this process starts; the lab and its children read it.
    unsafe { std::env::set_var("KOVN_TEST_TIMEOUT_SCALE", config.timeout_scale.to_string()) };
    kernels::mount_tracefs();
    let nic = nic_by_mac(VM_MAC)?;
    for argv in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "replace", VM_ADDR, "dev", &nic],
        vec!["link", "set", &nic, "up"],
    ] {
        let s = Command::new("ip").args(&argv).status().context("ip")?;
        ensure!(s.success(), "ip {} failed", argv.join(" "));
    }
    let t = Instant::now();
    let lab = lab::up(&opts)?.into_lab();
    let lab_up = t.elapsed();
    let t = Instant::now();
    let mut started = lab::monitors::start(&lab, &config.monitor)?;
    let monitors_took = t.elapsed();
    started.sort_by_key(|m| lab.nodes.iter().position(|n| n.name == m.node));
    let mut ready = Ready {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        lab: lab.name.clone(),
        lab_up_seconds: lab_up.as_secs_f64(),
        monitors_seconds: monitors_took.as_secs_f64(),
        monitors: Vec::new(),
    };
    for m in &started {
        let k = lab.nodes.iter().position(|n| n.name == m.node).context("a monitor of no node")? as u16 + 1;
        let port = config.port_base + k;
        let target: SocketAddr =
            m.url.trim_start_matches("http://").parse().with_context(|| format!("monitor URL {}", m.url))?;
        let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("relay port {port}"))?;
        std::thread::spawn(move || relay(listener, target));
        ready.monitors.push(ReadyMonitor {
            node: m.node.clone(),
            vm_url: m.url.clone(),
            host_url: format!("http://127.0.0.1:{port}"),
        });
    }
    let agent = TcpListener::bind(("0.0.0.0", config.port_base)).context("agent port")?;
    let tmp = dir.join("ready.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&ready)?)?;
    fs::rename(&tmp, dir.join("ready.json"))?;
    eprintln!("vm-lab guest: ready: {}", serde_json::to_string(&ready)?);
    serve_agent(&agent, &lab.name)
}

/// The interface with `mac` (QEMU's user-network NIC).
fn nic_by_mac(mac: &str) -> Result<String> {
    for entry in fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let address = fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac) {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no network interface with MAC {mac} in the VM (QEMU's -device virtio-net-pci missing?)")
}

/// Relays each connection on `listener` to `target`, at most [`MAX_RELAYS_PER_NODE`] at once.
fn relay(listener: TcpListener, target: SocketAddr) {
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        if live.load(Ordering::SeqCst) >= MAX_RELAYS_PER_NODE {
            eprintln!("vm-lab guest: relay to {target}: {MAX_RELAYS_PER_NODE} connections open, one refused");
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            eprintln!("vm-lab guest: relay: {target} does not answer");
            continue;
        };
        live.fetch_add(1, Ordering::SeqCst);
        let live = live.clone();
        std::thread::spawn(move || {
            let _ = pipe_both(client, server);
            live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies both ways until both sides closed (or one idles past [`RELAY_IDLE`]).
fn pipe_both(a: TcpStream, b: TcpStream) -> std::io::Result<()> {
    for s in [&a, &b] {
        s.set_read_timeout(Some(RELAY_IDLE))?;
    }
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let up = std::thread::spawn(move || copy_then_close(a2, b2));
    copy_then_close(b, a);
    let _ = up.join();
    Ok(())
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    down: bool,
}

/// Why a command is not taken, or None.
fn refused(argv: &[String]) -> Option<String> {
    match argv.first().map(String::as_str) {
        Some("lab") => match argv.get(1).map(String::as_str) {
            Some("up" | "down") => {
                Some("the VM's lab is brought up and down by `vm-lab up`/`vm-lab down`".to_string())
            }
            _ => None,
        },
        Some(other) => Some(format!("{other:?}: the VM's agent runs `lab` commands only")),
        None => Some("an empty command".to_string()),
    }
}

/// One connection at a time: a request line, the command's output, the exit mark and code.
fn serve_agent(listener: &TcpListener, lab_name: &str) -> Result<()> {
    let exe = std::env::current_exe().context("this task's executable")?;
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        // A client that sends no request, or stops reading the output, cannot hold the agent:
        // the read gives up after REQUEST_WAIT, a blocked write after OUTPUT_WAIT (the command
        // is then killed).
        if stream.set_read_timeout(Some(REQUEST_WAIT)).is_err()
            || stream.set_write_timeout(Some(OUTPUT_WAIT)).is_err()
        {
            continue;
        }
        let mut line = String::new();
        if BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line).is_err() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = answer(&mut stream, &format!("error: a request the agent cannot read: {e}\n"), 2);
                continue;
            }
        };
        if request.down {
            let (text, code) = match lab::down(lab_name) {
                Ok(lab::DownOutcome::Removed { name }) => (format!("lab {name} removed\n"), 0),
                Ok(lab::DownOutcome::NothingUp { name }) => (format!("lab {name} was not up\n"), 0),
                Err(e) => (format!("error: lab down: {e:#}\n"), 1),
            };
            let _ = answer(&mut stream, &text, code);
            return Ok(());
        }
        if let Some(why) = refused(&request.argv) {
            let _ = answer(&mut stream, &format!("error: {why}\n"), 2);
            continue;
        }
        let code = run_streamed(&exe, &request.argv, lab_name, &stream);
        let _ = stream.write_all(&[EXIT_MARK]);
        let _ = stream.write_all(format!("{code}\n").as_bytes());
    }
    Ok(())
}

fn answer(stream: &mut TcpStream, text: &str, code: i32) -> std::io::Result<()> {
    stream.write_all(text.as_bytes())?;
    stream.write_all(&[EXIT_MARK])?;
    stream.write_all(format!("{code}\n").as_bytes())
}

/// Runs `exe argv` (`KOVN_LAB`: the VM's lab, the default `--name`) with stdout and stderr into
/// `stream`; a client that goes away kills it.
fn run_streamed(exe: &Path, argv: &[String], lab_name: &str, stream: &TcpStream) -> i32 {
    let Ok(out) = stream.try_clone() else { return 1 };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(_) => return 1,
    };
    let Ok(writer2) = writer.try_clone() else { return 1 };
    let child = Command::new(exe)
        .args(argv)
        .env("KOVN_LAB", lab_name)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = (&out).write_all(format!("error: cannot start {}: {e}\n", exe.display()).as_bytes());
            return 1;
        }
    };
    let pid = child.id() as i32;
    let mut reader = reader;
    let mut out = out;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // The output never holds the exit mark: a NUL from the command is dropped.
                let chunk: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != EXIT_MARK).collect();
                if out.write_all(&chunk).is_err() {
                    // SAFETY: the command's own process group (process_group(0) above).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    break;
                }
            }
        }
    }
    child.wait().ok().and_then(|s| s.code()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn up_options_are_lab_ups_on_the_kernel_datapath() {
        let o =
            up_options("vm", &words("--nodes 3 --pods-per-node 2 --tunnel vxlan")).expect("valid options");
        assert_eq!((o.name.as_str(), o.nodes, o.pods_per_node), ("vm", 3, 2));
        assert_eq!(o.datapath, Datapath::Kernel);
        assert_eq!(o.tunnel, lab::Tunnel::Vxlan);
        let e = up_options("vm", &words("--datapath userspace")).expect_err("datapath is fixed");
        assert!(format!("{e:#}").contains("kernel datapath"), "{e:#}");
        let e = up_options("vm", &words("--name other")).expect_err("the name is vm-lab's");
        assert!(format!("{e:#}").contains("--name"), "{e:#}");
        let e = up_options("vm", &words("--nodes x")).expect_err("not a number");
        assert!(format!("{e:#}").contains("lab up options"), "{e:#}");
        up_options("Bad Name", &[]).expect_err("lab names are checked");
    }

    #[test]
    fn the_agent_takes_lab_commands_only() {
        assert_eq!(refused(&words("lab fault ovs-drop --pod web-2")), None);
        assert_eq!(refused(&words("lab status")), None);
        assert!(refused(&words("lab down")).is_some());
        assert!(refused(&words("lab up --nodes 9")).is_some());
        assert!(refused(&words("soak --minutes 9")).is_some());
        assert!(refused(&[]).is_some());
    }

    #[test]
    fn run_reads_output_and_exit_code_through_a_real_socket() {
        // An agent stand-in on a real socket: the client's framing must split output and code.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("request");
            let req: Request = serde_json::from_str(&line).expect("json");
            answer(&mut s, &format!("ran {}\n", req.argv.join(" ")), 3).expect("answer");
        });
        let root = tempfile_dir();
        let state =
            VmState { name: "t".into(), kernel: "k".into(), pid: std::process::id() as i32, port_base: port };
        fs::create_dir_all(root.join("t")).expect("dir");
        fs::write(root.join("t/vm.json"), serde_json::to_vec(&state).expect("json")).expect("write");
        let mut out = Vec::new();
        let code = run_to(&root, "t", &words("lab status"), &mut out).expect("run");
        assert_eq!((code, String::from_utf8_lossy(&out).as_ref()), (3, "ran lab status\n"));
        server.join().expect("server");
        let _ = fs::remove_dir_all(&root);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kovn-vmlab-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
