//! Which network namespace is behind a pod veth's peer.
//!
//! rtnetlink reports a veth's peer namespace as an *nsid* (`IFLA_LINK_NETNSID`), a number local
//! to the monitor's own namespace; the drop program knows namespaces by inode
//! (`net->ns.inum`). The kernel offers no way from an nsid to a namespace, only the reverse
//! (`RTM_GETNSID` with a namespace file descriptor), so [`NetnsResolver`] asks it for the
//! namespaces it can open: the named ones (`/run/netns/*`, where CNI runtimes and `ip netns`
//! put them) and every process's (`/proc/<pid>/ns/net`, which needs the host's PID namespace in a
//! container). A scan happens only for an nsid it does not know yet; a known one is checked
//! again through its path before use, since nsids are reused after a namespace goes.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Directories of named network namespaces (`ip netns`, containerd/CRI-O's `cni-*`).
const NAMED_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];
/// At most this many `/proc` entries are looked at per scan (the bound of one scan's work).
const MAX_PROC_SCAN: usize = 65_536;

const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const NLMSG_ERROR: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("RTM_GETNSID: {0}")]
    Query(std::io::Error),
    #[error("RTM_GETNSID: unexpected answer ({0})")]
    Answer(&'static str),
}

/// A route netlink socket for `RTM_GETNSID` questions (synchronous: one request, one answer).
struct NsidSocket(OwnedFd);

impl NsidSocket {
    fn open() -> Result<Self, NetnsError> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
        };
        if fd < 0 {
            return Err(NetnsError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The nsid the monitor's namespace has for the namespace open as `ns_fd` (None: none
    /// assigned, i.e. no link of ours points into it).
    fn nsid_of(&self, ns_fd: i32, seq: u32) -> Result<Option<i32>, NetnsError> {
        // nlmsghdr (16) + rtgenmsg (1, padded to 4) + nlattr NETNSA_FD (4 + 4).
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&28u32.to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETNSID.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req[16] = libc::AF_UNSPEC as u8;
        req[20..22].copy_from_slice(&8u16.to_ne_bytes());
        req[22..24].copy_from_slice(&NETNSA_FD.to_ne_bytes());
        req[24..28].copy_from_slice(&(ns_fd as u32).to_ne_bytes());
        // SAFETY: sending a buffer we own to the kernel (destination pid 0 by default).
        let sent = unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(NetnsError::Query(std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 512];
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(NetnsError::Query(std::io::Error::last_os_error()));
        }
        parse_nsid_answer(&buf[..n as usize])
    }
}

/// The nsid of an `RTM_NEWNSID` answer (None for `NETNSA_NSID_NOT_ASSIGNED`, -1).
fn parse_nsid_answer(b: &[u8]) -> Result<Option<i32>, NetnsError> {
    let u16_at = |at: usize| b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |at: usize| b.get(at..at + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
    let len = u32_at(0).ok_or(NetnsError::Answer("short"))? as usize;
    let ty = u16_at(4).ok_or(NetnsError::Answer("short"))?;
    if ty == NLMSG_ERROR {
        let code = u32_at(16).ok_or(NetnsError::Answer("short error"))? as i32;
        return Err(NetnsError::Query(std::io::Error::from_raw_os_error(-code)));
    }
    if ty != RTM_NEWNSID || len > b.len() {
        return Err(NetnsError::Answer("not RTM_NEWNSID"));
    }
    let mut at = 20;
    while at + 4 <= len {
        let alen = usize::from(u16_at(at).unwrap_or(0));
        let aty = u16_at(at + 2).unwrap_or(0) & 0x3fff;
        if alen < 4 {
            break;
        }
        if aty == NETNSA_NSID && alen >= 8 {
            let id = u32_at(at + 4).ok_or(NetnsError::Answer("short attribute"))? as i32;
            return Ok((id >= 0).then_some(id));
        }
        at += (alen + 3) & !3;
    }
    Err(NetnsError::Answer("no NETNSA_NSID"))
}

/// nsid → network namespace inode, learnt by asking the kernel about the namespaces it can
/// open. Holds one entry per namespace seen with an nsid (bounded by the namespaces of the
/// host); rebuilt on each scan.
#[derive(Default)]
pub struct NetnsResolver {
    known: HashMap<i32, (u32, PathBuf)>,
    seq: u32,
    /// Scans done (for the log and tests).
    pub scans: u64,
}

impl NetnsResolver {
    /// The inode of the namespace with `nsid`, scanning when it is not known (or its path no
    /// longer leads to it). None when no namespace the monitor can open has it.
    pub fn inode_of(&mut self, nsid: i32) -> Result<Option<u32>, NetnsError> {
        let sock = NsidSocket::open()?;
        if let Some((inode, path)) = self.known.get(&nsid).cloned()
            && self.check(&sock, &path, inode) == Some(nsid)
        {
            return Ok(Some(inode));
        }
        self.scan(&sock)?;
        Ok(self.known.get(&nsid).map(|(i, _)| *i))
    }

    /// The nsid of the namespace at `path` if it is still the one with `inode`.
    fn check(&mut self, sock: &NsidSocket, path: &Path, inode: u32) -> Option<i32> {
        let f = std::fs::File::open(path).ok()?;
        if f.metadata().ok()?.ino() != u64::from(inode) {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        sock.nsid_of(f.as_raw_fd(), self.seq).ok().flatten()
    }

    fn scan(&mut self, sock: &NsidSocket) -> Result<(), NetnsError> {
        self.scans += 1;
        self.known.clear();
        let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
        let mut tried = std::collections::HashSet::new();
        tried.insert(own);
        let named =
            NAMED_DIRS.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten().map(|e| e.path());
        let procs = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .take(MAX_PROC_SCAN)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|c| c.is_ascii_digit())))
            .map(|e| e.path().join("ns/net"));
        for path in named.chain(procs) {
            // stat follows the nsfs link: the namespace's inode, without opening it.
            let Ok(ino) = std::fs::metadata(&path).map(|m| m.ino()) else { continue };
            if !tried.insert(ino) {
                continue;
            }
            let Ok(inode) = u32::try_from(ino) else { continue };
            let Ok(f) = std::fs::File::open(&path) else { continue };
            self.seq = self.seq.wrapping_add(1);
            match sock.nsid_of(f.as_raw_fd(), self.seq) {
                Ok(Some(nsid)) => {
                    self.known.insert(nsid, (inode, path));
                }
                Ok(None) => {}
                // A process that went away in between, a namespace we may not enter: skip it.
                Err(e) => log::debug!("nsid of {}: {e}", path.display()),
            }
        }
        Ok(())
    }
}

/// The name under `/run/netns` of the namespace with `inode`, if it has one (the lab's, and
/// the commands an operator runs there: `ip netns exec <name> ...`).
pub fn name_of_inode(inode: u32) -> Option<String> {
    NAMED_DIRS.iter().filter_map(|d| std::fs::read_dir(d).ok()).flatten().flatten().find_map(|e| {
        (std::fs::metadata(e.path()).ok()?.ino() == u64::from(inode))
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        // RTM_NEWNSID, NETNSA_NSID = 7.
        let mut b = vec![0u8; 28];
        b[0..4].copy_from_slice(&28u32.to_ne_bytes());
        b[4..6].copy_from_slice(&RTM_NEWNSID.to_ne_bytes());
        b[20..22].copy_from_slice(&8u16.to_ne_bytes());
        b[22..24].copy_from_slice(&NETNSA_NSID.to_ne_bytes());
        b[24..28].copy_from_slice(&7i32.to_ne_bytes());
        assert_eq!(parse_nsid_answer(&b).unwrap(), Some(7));
        b[24..28].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse_nsid_answer(&b).unwrap(), None);
        // An error answer carries -errno.
        let mut e = vec![0u8; 36];
        e[0..4].copy_from_slice(&36u32.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::EBADF).to_ne_bytes());
        assert!(matches!(parse_nsid_answer(&e), Err(NetnsError::Query(_))));
        assert!(parse_nsid_answer(&[1, 2]).is_err());
    }
}
