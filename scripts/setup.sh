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
LLVM_MAJOR=22

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

mount_fs() {
  # The drop tracepoint needs tracefs; bpftool and BTF need sysfs (always there).
  if [ ! -d /sys/kernel/tracing/events ] && [ "$(id -u)" -eq 0 ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
  fi
}

case "${1:-all}" in
  all) install_apt; install_rust; install_bpf_linker; mount_fs ;;
  apt) install_apt ;;
  rust) install_rust; install_bpf_linker ;;
  *) log "usage: setup.sh [all|apt|rust]"; exit 2 ;;
esac
