//! `cargo xtask image`: the kovn-monitor OCI image, built from Debian packages (no image
//! registry needed): mmdebstrap makes the root filesystem (with the drill-down's OVS/OVN
//! tools), umoci makes it an OCI layer, the kovn-monitor binary goes in a second layer, and
//! the OCI layout is written as an archive (`oci-archive:`, what skopeo and podman load).
//!
//! Incremental: the Debian layer is cached under `target/image/cache`, keyed by suite, mirror
//! and package list; a rebuild after a code change only adds the binary's layer.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The image's repository, as the manifests in deploy/kubernetes name it.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/kovn/kovn-monitor";
/// Debian suite of the base.
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// ovs-appctl, ovs-ofctl (openvswitch-common); ovn-trace, ovn-sbctl, ovn-nbctl (ovn-common);
/// the system's CA certificates (ca-certificates: the Kubernetes client's TLS loads them, and
/// fails to start without any, even where the service account's own CA is what is used).
pub const PACKAGES: [&str; 3] = ["openvswitch-common", "ovn-common", "ca-certificates"];
const EXCLUDES: [&str; 4] =
    ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"];
/// Where the binary goes in the image.
pub const BINARY_PATH: &str = "/usr/local/bin/kovn-monitor";

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The kovn-monitor binary to put in the image (default: a release build of this tree).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Where to write the OCI archive (default: target/image/kovn-monitor-VERSION.oci.tar).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    pub archive: PathBuf,
    /// The OCI layout the archive holds (unpack it with `umoci unpack --image LAYOUT:TAG`).
    pub layout: PathBuf,
    pub tag: String,
    /// `sha256:...` of the image manifest.
    pub digest: String,
    pub size: u64,
}

/// FNV-1a: a cache key stable across Rust versions (std's hasher is not).
fn fnv(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

fn git_revision(root: &Path) -> String {
    cmd::stdout("git", &["-C", &root.display().to_string(), "rev-parse", "HEAD"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The Debian layer as an OCI layout with tag `base`, built once per key.
fn base_layout(cache: &Path) -> Result<PathBuf> {
    let mut key_parts = vec![SUITE, MIRROR];
    key_parts.extend(PACKAGES);
    key_parts.extend(EXCLUDES);
    let key = fnv(&key_parts);
    let layout = cache.join(format!("base-{key}"));
    if layout.join("index.json").exists() {
        eprintln!("image: Debian layer cached ({})", layout.display());
        return Ok(layout);
    }
    std::fs::create_dir_all(cache)?;
    let rootfs = cache.join(format!("rootfs-{key}.tar"));
    // Only a regular file is a finished root filesystem (an interrupted or older build may
    // have left something else under that name).
    if rootfs.is_dir() {
        std::fs::remove_dir_all(&rootfs)?;
    }
    if !rootfs.is_file() {
        eprintln!("image: mmdebstrap {SUITE} with {} (a few minutes, once)", PACKAGES.join(", "));
        // The format is given, not left to mmdebstrap's guess from the name's extension (a
        // name ending in `.tmp` made it write a directory).
        let tmp = cache.join(format!("rootfs-{key}.tmp.tar"));
        for stale in [&tmp, &cache.join(format!("rootfs-{key}.tar.tmp"))] {
            if stale.is_dir() {
                std::fs::remove_dir_all(stale)?;
            } else if stale.exists() {
                std::fs::remove_file(stale)?;
            }
        }
        let mut args = vec![
            "--variant=essential".to_string(),
            "--format=tar".to_string(),
            format!("--include={}", PACKAGES.join(",")),
        ];
        args.extend(EXCLUDES.iter().map(|e| format!("--dpkgopt=path-exclude={e}")));
        args.extend([SUITE.into(), tmp.display().to_string(), MIRROR.into()]);
        cmd::run("mmdebstrap", &args)?;
        std::fs::rename(&tmp, &rootfs)?;
    }
    let tmp = cache.join(format!("base-{key}.tmp"));
    let bundle = cache.join(format!("bundle-{key}.tmp"));
    for d in [&tmp, &bundle] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    let t = tmp.display().to_string();
    let b = bundle.display().to_string();
    cmd::run("umoci", &["init", "--layout", &t])?;
    cmd::run("umoci", &["new", "--image", &format!("{t}:base")])?;
    cmd::run("umoci", &["unpack", "--image", &format!("{t}:base"), &b])?;
    cmd::run("tar", &["-xf", &rootfs.display().to_string(), "-C", &format!("{b}/rootfs")])?;
    cmd::run("umoci", &["repack", "--image", &format!("{t}:base"), &b])?;
    std::fs::remove_dir_all(&bundle)?;
    std::fs::rename(&tmp, &layout)?;
    Ok(layout)
}

/// Builds the image from `binary`; writes the archive under `target_dir/image`.
pub fn build(root: &Path, target_dir: &Path, binary: &Path, output: Option<PathBuf>) -> Result<Built> {
    if !binary.exists() {
        bail!("no kovn-monitor binary at {}", binary.display());
    }
    let version = env!("CARGO_PKG_VERSION");
    let revision = git_revision(root);
    let dir = target_dir.join("image");
    let base = base_layout(&dir.join("cache"))?;
    let layout = dir.join("layout");
    if layout.exists() {
        std::fs::remove_dir_all(&layout)?;
    }
    cmd::run("cp", &["-a", &base.display().to_string(), &layout.display().to_string()])?;
    let l = layout.display().to_string();
    let tag = version.to_string();
    cmd::run(
        "umoci",
        &["insert", "--image", &format!("{l}:base"), &binary.display().to_string(), BINARY_PATH],
    )?;
    let labels = [
        ("org.opencontainers.image.title", "kovn-monitor".to_string()),
        ("org.opencontainers.image.version", version.to_string()),
        ("org.opencontainers.image.revision", revision),
        ("org.opencontainers.image.url", format!("{IMAGE_REPOSITORY}:{version}")),
        ("org.opencontainers.image.base.name", format!("debian:{SUITE} ({})", PACKAGES.join(", "))),
    ];
    let mut args: Vec<String> = [
        "config",
        "--image",
        &format!("{l}:base"),
        "--tag",
        &tag,
        "--config.entrypoint",
        BINARY_PATH,
        "--config.cmd",
        "run",
        // Root with only the capabilities the runtime grants (see README, "Deploy on a
        // cluster"): file capabilities do not survive allowPrivilegeEscalation: false.
        "--config.user",
        "0:0",
        "--config.workingdir",
        "/",
        "--config.env",
        "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "--history.created_by",
        "cargo xtask image",
    ]
    .map(String::from)
    .to_vec();
    for (k, v) in &labels {
        args.extend(["--config.label".into(), format!("{k}={v}")]);
        args.extend(["--manifest.annotation".into(), format!("{k}={v}")]);
    }
    cmd::run("umoci", &args)?;
    cmd::run("umoci", &["rm", "--image", &format!("{l}:base")])?;
    cmd::run("umoci", &["gc", "--layout", &l])?;
    let archive = output.unwrap_or_else(|| dir.join(format!("kovn-monitor-{version}.oci.tar")));
    if let Some(p) = archive.parent() {
        std::fs::create_dir_all(p)?;
    }
    cmd::run("tar", &["--sort=name", "-C", &l, "-cf", &archive.display().to_string(), "."])?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)
        .context("the layout's index.json")?;
    let digest = index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag))
        .and_then(|m| m["digest"].as_str())
        .context("no manifest for the tag in index.json")?
        .to_string();
    let size = std::fs::metadata(&archive)?.len();
    Ok(Built { archive, layout, tag, digest, size })
}
