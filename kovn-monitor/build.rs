//! Builds the eBPF object (kovn-ebpf, target bpfel-unknown-none) and puts it in OUT_DIR, from
//! where src/capture.rs embeds it once (`include_bytes_aligned!`).
//!
//! This is aya-build 0.2.1's `build_ebpf` (same command, flags, toolchain pinning, target
//! directory and artifact copy) with one difference: the inner cargo's output is not forwarded
//! as `cargo::warning` lines. aya-build turns every line of it (`Compiling core ...`) into a
//! `warning: kovn-monitor@0.1.0: ...` line, hundreds on a fresh machine, which buried the real
//! progress of `./x demo`. Here it goes to this script's stderr, which cargo shows when the
//! build fails (and with `cargo build -vv`); a compiler warning in the eBPF crate still becomes
//! one `cargo::warning` line, and `KOVN_EBPF_BUILD_VERBOSE=1` forwards everything as before.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message, Target};

/// The nightly that builds the eBPF crate: its LLVM must not be newer than bpf-linker's
/// (LLVM 22, Debian llvm-22-dev). Keep in step with scripts/setup.sh (EBPF_TOOLCHAIN).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-15";
/// Set to 1 to see the eBPF build's output as cargo warnings even when it succeeds.
const VERBOSE_ENV: &str = "KOVN_EBPF_BUILD_VERBOSE";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed={VERBOSE_ENV}");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo::warning=AYA_BUILD_SKIP is set; skipping the eBPF build");
        return Ok(());
    }
    let verbose = env::var_os(VERBOSE_ENV).is_some_and(|v| v == "1");
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "kovn-ebpf")
        .ok_or_else(|| anyhow!("kovn-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for manifest"))?;
    git_revision();
    // The build-dependency on kovn-ebpf's library covers its dependencies; this covers its
    // binaries (as aya-build does).
    println!("cargo::rerun-if-changed={root}");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian={other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") { "riscv64".to_string() } else { arch };

    // `rustup run <nightly> cargo`: the pinned toolchain whatever the host's is. The nightly
    // has unstable features, so core is built from source for the BPF target.
    let mut cmd = Command::new("rustup");
    cmd.args(["run", EBPF_TOOLCHAIN, "cargo", "build", "--package", ebpf.name.as_str()])
        .args(["--bins", "--message-format=json", "--release", "--target", target])
        .args(["-Z", "build-std=core", "--features", ""]);
    let mut rustflags = OsString::new();
    for (i, flag) in
        [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
            .iter()
            .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The host build's compiler must not leak into the nightly's.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(key);
    }
    // Not OUT_DIR itself: cargo would lock itself (rust-lang/cargo#6412), and a target dir
    // named like the binary would collide with the copy below.
    let target_dir = out_dir.join("aya-build").join("target").join(ebpf.name.as_str());
    cmd.arg("--target-dir").arg(&target_dir);

    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?} (is rustup installed? scripts/setup.sh)"))?;
    let stderr = BufReader::new(child.stderr.take().context("stderr")?);
    // The inner cargo's progress and errors: to our stderr (shown by cargo on failure and with
    // -vv), or as warnings when asked for.
    let stderr = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if verbose {
                println!("cargo::warning={line}");
            } else {
                eprintln!("{line}");
            }
        }
    });
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().context("stdout")?)) {
        match message.context("the eBPF build's cargo printed invalid JSON")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(exe),
                target: Target { name, .. },
                ..
            }) => {
                executables.push((name, exe.into_std_path_buf()));
            }
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                let rendered = message.rendered.unwrap_or_default();
                // A warning or error in the eBPF code is worth one line even on success; the
                // whole message goes to stderr.
                if verbose {
                    for line in rendered.lines() {
                        println!("cargo::warning={line}");
                    }
                } else {
                    if let Some(first) = rendered.lines().next() {
                        println!("cargo::warning=kovn-ebpf: {first}");
                    }
                    eprintln!("{rendered}");
                }
            }
            Message::TextLine(line) => {
                if verbose {
                    println!("cargo::warning={line}");
                } else {
                    eprintln!("{line}");
                }
            }
            _ => {}
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {cmd:?}"))?;
    let _ = stderr.join();
    if !status.success() {
        bail!("the eBPF build failed ({status}): {cmd:?}; its output is above");
    }
    for (name, binary) in executables {
        let dst = out_dir.join(name);
        fs::copy(&binary, &dst)
            .with_context(|| format!("copying {} to {}", binary.display(), dst.display()))?;
    }
    Ok(())
}

/// KOVN_GIT_REVISION for `kovn_build_info` and the image labels: the environment's (an image
/// build from a tarball), else `git rev-parse HEAD`, else `unknown`.
fn git_revision() {
    println!("cargo:rerun-if-env-changed=KOVN_GIT_REVISION");
    let rev = env::var("KOVN_GIT_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !rev.is_empty()).then_some(rev)
    });
    // HEAD moves with every commit: rebuild then (the worktree's own HEAD file, or the main one's).
    if let Ok(out) = Command::new("git").args(["rev-parse", "--git-dir"]).output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    println!("cargo:rustc-env=KOVN_GIT_REVISION={}", rev.unwrap_or_else(|| "unknown".into()));
}
