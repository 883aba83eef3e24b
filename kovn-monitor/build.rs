//! Builds the eBPF object (kovn-ebpf, target bpfel-unknown-none) with aya-build and puts it
//! in OUT_DIR, from where src/capture.rs embeds it once (`include_bytes_aligned!`).

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The nightly that builds the eBPF crate: its LLVM must not be newer than bpf-linker's
/// (LLVM 22, Debian llvm-22-dev). Keep in step with scripts/setup.sh (EBPF_TOOLCHAIN).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-15";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "kovn-ebpf")
        .ok_or_else(|| anyhow!("kovn-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for manifest"))?;
    git_revision();
    let package =
        aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// KOVN_GIT_REVISION for `kovn_build_info` and the image labels: the environment's (an image
/// build from a tarball), else `git rev-parse HEAD`, else `unknown`.
fn git_revision() {
    println!("cargo:rerun-if-env-changed=KOVN_GIT_REVISION");
    let rev = std::env::var("KOVN_GIT_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()?;
        let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !rev.is_empty()).then_some(rev)
    });
    // HEAD moves with every commit: rebuild then (the worktree's own HEAD file, or the main one's).
    if let Ok(out) = std::process::Command::new("git").args(["rev-parse", "--git-dir"]).output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    println!("cargo:rustc-env=KOVN_GIT_REVISION={}", rev.unwrap_or_else(|| "unknown".into()));
}
