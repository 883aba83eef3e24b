//! Kernel functions by code address, from `/proc/kallsyms`: which function freed a dropped
//! packet (the `kfree_skb` tracepoint's `location`). A reason such as `NOT_SPECIFIED` says
//! nothing; `ovs_vport_send+0x1c5 [openvswitch]` says where to look, as dropwatch and pwru show
//! it.
//!
//! Addresses never leave the monitor (KASLR): only `name+0xoffset [module]` is published. The
//! kernel shows real addresses in `/proc/kallsyms` only to a reader with `CAP_SYSLOG` (or with
//! `kernel.kptr_restrict=0` and `perf_event_paranoid <= 1`); without it every address reads as
//! zero and drops carry no function (logged once).
//!
//! Bounds: at most [`MAX_CACHED`] addresses remembered (then the cache starts again), at most
//! [`MAX_PER_SCAN`] resolved per scan, one scan of the file per [`SCAN_EVERY`] at most while
//! an address is new ([`HIDDEN_RETRY`] while the file hides addresses). The file itself is
//! streamed, never held.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

/// The kernel's symbol table.
pub const KALLSYMS: &str = "/proc/kallsyms";
/// Addresses remembered (a node's drop sites are a few dozen call sites).
pub const MAX_CACHED: usize = 4096;
/// Addresses resolved by one scan (the scan compares each line with each of them).
pub const MAX_PER_SCAN: usize = 64;
/// How often the file is read again while an address is new (a scan reads ~200,000 lines,
/// tens of milliseconds; an address once looked up is remembered, named or not).
pub const SCAN_EVERY: Duration = Duration::from_secs(10);
/// How often a file that hid every address (or could not be read) is tried again.
pub const HIDDEN_RETRY: Duration = Duration::from_secs(600);
/// A call site further than this past the nearest symbol is not taken for inside it (a gap in
/// the table, e.g. an address in a module loaded after the scan).
const MAX_OFFSET: u64 = 1 << 20;

/// Names code addresses; see the module's documentation.
#[derive(Debug)]
pub struct KernelSymbols {
    path: std::path::PathBuf,
    /// address → `name+0xoff [module]`, None when the table has no function for it.
    names: HashMap<u64, Option<String>>,
    /// No scan before this.
    next_scan: Option<Instant>,
    /// The table showed only zero addresses (no `CAP_SYSLOG`): logged once.
    hidden_logged: bool,
}

impl Default for KernelSymbols {
    fn default() -> Self {
        Self::new(KALLSYMS)
    }
}

impl KernelSymbols {
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self { path: path.into(), names: HashMap::new(), next_scan: None, hidden_logged: false }
    }

    /// The function at `addr`, when a scan has named it.
    pub fn name(&self, addr: u64) -> Option<&str> {
        self.names.get(&addr)?.as_deref()
    }

    /// Names the addresses among `addrs` not seen before: one scan of the table, at most every
    /// [`SCAN_EVERY`] ([`HIDDEN_RETRY`] after the table hid its addresses). Zero addresses are
    /// ignored.
    pub fn learn(&mut self, addrs: impl IntoIterator<Item = u64>) {
        let mut wanted: Vec<u64> =
            addrs.into_iter().filter(|a| *a != 0 && !self.names.contains_key(a)).collect();
        let now = Instant::now();
        if wanted.is_empty() || self.next_scan.is_some_and(|t| now < t) {
            return;
        }
        wanted.sort_unstable();
        wanted.dedup();
        wanted.truncate(MAX_PER_SCAN);
        self.next_scan = Some(now + HIDDEN_RETRY);
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) => {
                if !self.hidden_logged {
                    log::info!(
                        "drop sites: {} unreadable ({e}): drops carry no kernel function",
                        self.path.display()
                    );
                    self.hidden_logged = true;
                }
                return;
            }
        };
        let found = match resolve(std::io::BufReader::new(file), &wanted) {
            Ok(Some(found)) => found,
            Ok(None) => {
                if !self.hidden_logged {
                    log::info!(
                        "drop sites: {} shows no addresses to this process (CAP_SYSLOG, kernel.kptr_restrict): drops carry no kernel function",
                        self.path.display()
                    );
                    self.hidden_logged = true;
                }
                return;
            }
            Err(e) => {
                log::warn!("drop sites: reading {}: {e}", self.path.display());
                return;
            }
        };
        self.next_scan = Some(now + SCAN_EVERY);
        if self.names.len() + wanted.len() > MAX_CACHED {
            self.names.clear();
        }
        for (a, name) in wanted.into_iter().zip(found) {
            self.names.insert(a, name);
        }
    }
}

/// For each of `wanted` (sorted), the text symbol at or below it in a kallsyms listing
/// (`<hex address> <type> <name>[\t[module]]`), as `name+0xoff [module]`. `Ok(None)` when
/// every address in the listing is zero (hidden from this reader).
pub fn resolve(listing: impl BufRead, wanted: &[u64]) -> std::io::Result<Option<Vec<Option<String>>>> {
    // Per wanted address: the highest symbol start at or below it, its name and module.
    let mut best: Vec<Option<(u64, String, Option<String>)>> = vec![None; wanted.len()];
    let mut any_address = false;
    for line in listing.lines() {
        let line = line?;
        let mut parts = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        if addr == 0 {
            continue;
        }
        any_address = true;
        // Code only (t/T): data symbols in between would shadow the function.
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let module = parts.next().map(|m| m.trim_matches(|c| c == '[' || c == ']')).filter(|m| !m.is_empty());
        for (i, w) in wanted.iter().enumerate().skip(wanted.partition_point(|w| *w < addr)) {
            if *w - addr > MAX_OFFSET {
                break;
            }
            if best[i].as_ref().is_none_or(|(b, _, _)| addr > *b) {
                best[i] = Some((addr, name.to_string(), module.map(str::to_string)));
            }
        }
    }
    if !any_address {
        return Ok(None);
    }
    Ok(Some(
        wanted
            .iter()
            .zip(best)
            .map(|(w, b)| {
                b.map(|(start, name, module)| match module {
                    Some(m) => format!("{name}+{:#x} [{m}]", w - start),
                    None => format!("{name}+{:#x}", w - start),
                })
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 T kfree_skb_reason
ffffffff81001200 t __kfree_skb
ffffffff81002000 D some_data
ffffffff81003000 T nf_hook_slow
ffffffffc0100000 t ovs_vport_send\t[openvswitch]
ffffffffc0100400 t ovs_vport_receive\t[openvswitch]
";

    #[test]
    fn call_sites_are_named_by_the_function_below_them() {
        let wanted = [0xffffffff81001234, 0xffffffff81003042, 0xffffffffc01001c5, 0xffffffffc0100500];
        let got = resolve(LISTING.as_bytes(), &wanted).expect("read").expect("addresses shown");
        assert_eq!(
            got,
            vec![
                Some("__kfree_skb+0x34".to_string()),
                // Data symbols do not shadow the function.
                Some("nf_hook_slow+0x42".to_string()),
                Some("ovs_vport_send+0x1c5 [openvswitch]".to_string()),
                Some("ovs_vport_receive+0x100 [openvswitch]".to_string()),
            ],
            "resolved from\n{LISTING}"
        );
    }

    #[test]
    fn addresses_below_every_symbol_or_far_past_one_have_no_name() {
        let wanted = [0xffffffff80000000, 0xffffffff81003000 + MAX_OFFSET + 1];
        let got = resolve(LISTING.as_bytes(), &wanted).expect("read").expect("addresses shown");
        assert_eq!(got, vec![None, None]);
    }

    #[test]
    fn a_listing_with_hidden_addresses_says_so() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 t ovs_vport_send\t[openvswitch]\n";
        assert_eq!(resolve(hidden.as_bytes(), &[0xffffffff81000010]).expect("read"), None);
    }

    /// The cache: one scan names what it can; a later call within [`SCAN_EVERY`] does not read
    /// the file again (a new address stays unnamed until then).
    #[test]
    fn one_scan_per_period_and_names_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kallsyms");
        std::fs::write(&path, LISTING).expect("write");
        let mut k = KernelSymbols::new(&path);
        k.learn([0xffffffff81003010, 0]);
        assert_eq!(k.name(0xffffffff81003010), Some("nf_hook_slow+0x10"));
        std::fs::write(&path, "ffffffff81003000 T other\n").expect("rewrite");
        k.learn([0xffffffff81001010]);
        assert_eq!(k.name(0xffffffff81001010), None, "no second scan within the period");
        assert_eq!(k.name(0xffffffff81003010), Some("nf_hook_slow+0x10"));
    }
}
