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
    let package =
        aya_build::Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}
