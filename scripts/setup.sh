#!/usr/bin/env bash
# kovn's one setup step. Run by both README commands (through ./x) and by .ci/run.
# Installs what a fresh Debian machine of the project's kind lacks, and does nothing when
# everything is already there. Versions are pinned here and in rust-toolchain.toml; see
# docs/toolchain.md for why this combination (rustc's LLVM must not be newer than
# bpf-linker's LLVM, aya 0.16 needs rustc >= 1.98).
set -euo pipefail

HOST_TOOLCHAIN=1.99.0
EBPF_TOOLCHAIN=nightly-2026-07-15
BPF_LINKER_VERSION=0.13.0
# `./x test` runs the parsers' fuzz targets (fuzz/) briefly with cargo-fuzz on EBPF_TOOLCHAIN.
CARGO_FUZZ_VERSION=0.13.2
LLVM_MAJOR=22
VIRTME_NG_VERSION=1.42
# Where setup puts virtme-ng when no vng of that version is on PATH (a venv: no system pip).
VIRTME_NG_VENV=/opt/kovn/virtme-ng

# Debian packages: LLVM for bpf-linker; the lab's OVS/OVN; the tools the tests compare against.
APT_PACKAGES=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev
  iproute2 curl nftables tcpdump iperf3 ethtool iputils-ping netcat-openbsd socat bpftool tmux
  openvswitch-switch ovn-central ovn-host
  prometheus prometheus-alertmanager
  mmdebstrap umoci runc
)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_missing() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  printf '%s\n' "${missing[@]}"
}

install_apt() {
  mapfile -t missing < <(apt_missing | sed '/^$/d')
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # The packaged services must not start on install: the lab starts its own instances.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's postinst scripts may still have started daemons (no systemd here, sysvinit
  # scripts). Stop them: the lab runs its own per-node instances.
  for svc in openvswitch-switch ovn-central ovn-host prometheus prometheus-alertmanager \
             prometheus-node-exporter; do
    [ -x "/etc/init.d/$svc" ] && as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  done
}

install_rust() {
  command -v rustup >/dev/null || { log "rustup is required (the machine's Rust comes with it)"; exit 1; }
  if ! rustup toolchain list | grep -q "^${HOST_TOOLCHAIN}-"; then
    log "installing Rust ${HOST_TOOLCHAIN}"
    rustup toolchain install "$HOST_TOOLCHAIN" --profile minimal --component clippy,rustfmt
  else
    for c in clippy rustfmt; do
      rustup component list --toolchain "$HOST_TOOLCHAIN" --installed | grep -q "^$c" ||
        rustup component add "$c" --toolchain "$HOST_TOOLCHAIN"
    done
  fi
  if ! rustup toolchain list | grep -q "^${EBPF_TOOLCHAIN}-"; then
    log "installing Rust ${EBPF_TOOLCHAIN} (eBPF target, build-std)"
    rustup toolchain install "$EBPF_TOOLCHAIN" --profile minimal --component rust-src,clippy
  else
    for c in rust-src clippy; do
      rustup component list --toolchain "$EBPF_TOOLCHAIN" --installed | grep -q "^$c" ||
        rustup component add "$c" --toolchain "$EBPF_TOOLCHAIN"
    done
  fi
}

install_bpf_linker() {
  if command -v bpf-linker >/dev/null &&
     bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    return 0
  fi
  log "building bpf-linker ${BPF_LINKER_VERSION} against LLVM ${LLVM_MAJOR}"
  PATH="/usr/lib/llvm-${LLVM_MAJOR}/bin:$PATH" \
    cargo "+${HOST_TOOLCHAIN}" install bpf-linker --locked --version "$BPF_LINKER_VERSION" \
      --no-default-features --features "llvm-${LLVM_MAJOR}"
}

install_cargo_fuzz() {
  if command -v cargo-fuzz >/dev/null &&
     cargo-fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    return 0
  fi
  log "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo "+${HOST_TOOLCHAIN}" install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
}

# The kernel matrix and the kernel-datapath lab (`cargo xtask test-kernels`, `lab up
# --datapath kernel`) boot Debian kernels in QEMU over the host's root filesystem with
# virtme-ng. vng needs busybox for its initramfs and QEMU; the kernels are Debian's own
# packages: the newest ABI of 6.1 (bookworm), 6.12 (bookworm's backport line) and 5.10
# (bullseye, added with a low pin priority so it never upgrades anything else).
VM_APT_PACKAGES=(qemu-system-x86 busybox-static)

newest_package() {
  # The newest package whose whole name matches the extended regex $1, by version sort.
  apt-cache search --names-only "$1" | awk '{print $1}' | grep -E "$1" | sort -V | tail -n 1
}

install_vm() {
  local missing=() p
  for p in "${VM_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # A kernel line counts as present when any image of it is in /boot (its modules come along).
  local -A kernel_re=(
    [6.1]='^linux-image-6\.1\.0-[0-9]+-amd64$'
    [6.12]='^linux-image-6\.12\.[0-9]+\+deb12-amd64$'
    [5.10]='^linux-image-5\.10\.0-[0-9]+-amd64$'
  )
  local -A kernel_glob=(
    [6.1]='/boot/vmlinuz-6.1.0-*-amd64'
    [6.12]='/boot/vmlinuz-6.12.*+deb12-amd64'
    [5.10]='/boot/vmlinuz-5.10.0-*-amd64'
  )
  local want_kernels=() k
  for k in 6.1 6.12 5.10; do
    # shellcheck disable=SC2086 # the glob must expand
    compgen -G "${kernel_glob[$k]}" >/dev/null || want_kernels+=("$k")
  done
  if [ "${#missing[@]}" -gt 0 ] || [ "${#want_kernels[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${want_kernels[*]} " == *" 5.10 "* ]] && [ ! -e /etc/apt/sources.list.d/kovn-bullseye.sources ]; then
      log "adding Debian bullseye (for linux-image-5.10.0-*-amd64) at pin priority 100"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        as_root tee /etc/apt/sources.list.d/kovn-bullseye.sources >/dev/null
      printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' |
        as_root tee /etc/apt/preferences.d/kovn-bullseye >/dev/null
    fi
    as_root apt-get update -qq
    for k in "${want_kernels[@]}"; do
      p=$(newest_package "${kernel_re[$k]}")
      [ -n "$p" ] || { log "no Debian package matches ${kernel_re[$k]} (Linux $k)"; exit 1; }
      missing+=("$p")
    done
    log "installing for the VMs: ${missing[*]}"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v vng >/dev/null || ! vng --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION"; then
    if ! "$VIRTME_NG_VENV/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION"; then
      log "installing virtme-ng ${VIRTME_NG_VERSION} in ${VIRTME_NG_VENV}"
      as_root python3 -m venv "$VIRTME_NG_VENV"
      as_root "$VIRTME_NG_VENV/bin/pip" install -q "virtme-ng==${VIRTME_NG_VERSION}"
    fi
  fi
}

mount_fs() {
  # The drop tracepoint needs tracefs; bpftool and BTF need sysfs (always there).
  if [ ! -d /sys/kernel/tracing/events ] && [ "$(id -u)" -eq 0 ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
  fi
}

case "${1:-all}" in
  all) install_apt; install_vm; install_rust; install_bpf_linker; install_cargo_fuzz; mount_fs ;;
  apt) install_apt ;;
  vm) install_vm ;;
  rust) install_rust; install_bpf_linker; install_cargo_fuzz ;;
  *) log "usage: setup.sh [all|apt|vm|rust]"; exit 2 ;;
esac
