//! The monitor's kernel maps seen from outside: which BPF maps and programs a process holds
//! (/proc/PID/fdinfo), and how many flows the kernel flow table really holds (the live slots of
//! `FLOW_SLOTS`, read through a read-only mmap of the same map, plus the entries of the `FLOWS`
//! hash map, counted with BPF_MAP_GET_NEXT_KEY). The map fds are borrowed with
//! pidfd_getfd(2) (Linux 5.6, root), so nothing depends on the daemon's own accounting.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail, ensure};
use kovn_ebpf_common::{FlowSlot, SLOT_LIVE};

use crate::cmd;

/// The names kovn-monitor gives its flow maps (kovn-monitor/src/capture.rs).
const FLOW_SLOTS_MAP: &str = "FLOW_SLOTS";
const FLOW_MAP: &str = "FLOWS";
/// BPF_MAP_GET_NEXT_KEY (include/uapi/linux/bpf.h).
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFd {
    pub fd: i32,
    pub id: u32,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: usize,
}

/// The BPF maps `pid` holds, from /proc/PID/fd and /proc/PID/fdinfo.
pub fn maps_of(pid: i32) -> Result<Vec<MapFd>> {
    let mut out = Vec::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { continue };
        let field = |name: &str| -> Option<usize> {
            info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
        };
        if let (Some(id), Some(key_size), Some(value_size), Some(max_entries)) =
            (field("map_id"), field("key_size"), field("value_size"), field("max_entries"))
        {
            out.push(MapFd { fd, id: id as u32, key_size, value_size, max_entries });
        }
    }
    Ok(out)
}

/// Map names by id (`bpftool map show id N`), remembered: ids are not reused while we run.
#[derive(Debug, Default)]
pub struct Names(HashMap<u32, String>);

impl Names {
    pub fn of(&mut self, id: u32) -> Result<String> {
        if let Some(n) = self.0.get(&id) {
            return Ok(n.clone());
        }
        let out = cmd::stdout("bpftool", &["-j", "map", "show", "id", &id.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("bpftool map show: not JSON")?;
        let name = v["name"].as_str().unwrap_or_default().to_string();
        self.0.insert(id, name.clone());
        Ok(name)
    }
}

/// A duplicate of `pid`'s descriptor `fd` in this process.
fn borrow_fd(pid: i32, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; the results are checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    ensure!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: pidfd is a descriptor we own from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    ensure!(got >= 0, "pidfd_getfd({pid}, {fd}): {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// Live slots of a FLOW_SLOTS array (BPF_F_MMAPABLE), read through a read-only shared mapping.
fn live_slots(pid: i32, map: &MapFd) -> Result<u64> {
    ensure!(
        map.value_size == size_of::<FlowSlot>(),
        "FLOW_SLOTS values are {} bytes, this xtask knows {}-byte slots (rebuild it)",
        map.value_size,
        size_of::<FlowSlot>()
    );
    let fd = borrow_fd(pid, map.fd)?;
    // Array elements are laid out 8-byte aligned.
    let stride = map.value_size.div_ceil(8) * 8;
    let len = stride * map.max_entries;
    // SAFETY: a shared read-only mapping of the map's memory; unmapped below.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if ptr == libc::MAP_FAILED {
        bail!("mmap of FLOW_SLOTS: {}", std::io::Error::last_os_error());
    }
    let offset = std::mem::offset_of!(FlowSlot, state);
    let mut live = 0;
    for i in 0..map.max_entries {
        // SAFETY: inside the mapping; the kernel changes the word concurrently (volatile read
        // of an aligned u64: offset and stride are multiples of 8).
        let state =
            unsafe { std::ptr::read_volatile(ptr.cast::<u8>().add(i * stride + offset).cast::<u64>()) };
        if state == SLOT_LIVE {
            live += 1;
        }
    }
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(ptr, len) };
    Ok(live)
}

#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// Entries of a hash map, walked with BPF_MAP_GET_NEXT_KEY (bounded: a walk that restarts
/// because the daemon deleted the key it stood on stops at twice the map size).
fn hash_entries(pid: i32, map: &MapFd) -> Result<u64> {
    let fd = borrow_fd(pid, map.fd)?;
    let mut key = vec![0u8; map.key_size];
    let mut next = vec![0u8; map.key_size];
    let mut count = 0u64;
    let mut first = true;
    while count <= 2 * map.max_entries as u64 {
        let attr = NextKeyAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: attr points at buffers of the map's key size that live across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                std::ptr::from_ref(&attr),
                size_of::<NextKeyAttr>(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            bail!("BPF_MAP_GET_NEXT_KEY on FLOWS: {e}");
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(count)
}

/// Flows in `pid`'s kernel flow table: live FLOW_SLOTS slots plus FLOWS entries.
pub fn kernel_flows(pid: i32, names: &mut Names) -> Result<u64> {
    let mut total = 0;
    let mut seen = 0;
    for m in maps_of(pid)? {
        match names.of(m.id)?.as_str() {
            FLOW_SLOTS_MAP => total += live_slots(pid, &m)?,
            FLOW_MAP => total += hash_entries(pid, &m)?,
            _ => continue,
        }
        seen += 1;
    }
    ensure!(seen > 0, "no FLOWS/FLOW_SLOTS map held by pid {pid}");
    Ok(total)
}

/// Whether a BPF program (`prog`) or map (`map`) with this id still exists.
pub fn exists(kind: &str, id: u32) -> bool {
    cmd::output("bpftool", &[kind, "show", "id", &id.to_string()]).is_ok_and(|o| o.status.success())
}
