//! `lab down`: stops every process, deletes every namespace, link, root-netns nftables table and
//! file a lab made. Works from lab.json when there is one and from the naming rules when there is
//! not (an `up` that died half-way), so it can always be re-run.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use super::faults::tunnel_path_prefix;
use super::model::{Lab, STATE_ROOT, load, state_dir_of};
use super::monitors;
use super::plan::validate_name;
use super::sys;
use crate::cmd;

const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, PartialEq, Eq)]
pub enum DownOutcome {
    Removed {
        name: String,
    },
    /// Nothing of that lab existed.
    NothingUp {
        name: String,
    },
}

/// Whether `netns` is one of lab `name`'s namespaces: `NAME-nodeK` or `NAME-nK-pJ`.
pub fn is_lab_netns(name: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(k) = rest.strip_prefix("node") {
        return digits(k);
    }
    rest.strip_prefix('n').and_then(|r| r.split_once("-p")).is_some_and(|(k, j)| digits(k) && digits(j))
}

/// Whether `link` is one of lab `name`'s root-netns links: the bridge `NAME-ul` or a node
/// veth end `NAME-uK`.
pub fn is_lab_link(name: &str, link: &str) -> bool {
    link.strip_prefix(name)
        .and_then(|r| r.strip_prefix("-u"))
        .is_some_and(|r| r == "l" || (!r.is_empty() && r.bytes().all(|b| b.is_ascii_digit())))
}

/// Whether `table` (a `bridge` table of the root netns) is one of lab `name`'s: a `tunnel-cut
/// --how path` fault's. The faults in a node's netns go with the netns; these do not.
pub(super) fn is_lab_table(name: &str, table: &str) -> bool {
    table.starts_with(&tunnel_path_prefix(name))
}

/// Names of the root netns's `bridge` tables (`nft list tables bridge`: `table bridge NAME`).
pub(super) fn parse_nft_tables(listing: &str, family: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["table", f, name] if f == family => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

fn lab_tables(name: &str) -> Vec<String> {
    let listing = cmd::stdout("nft", &["list", "tables", "bridge"]).unwrap_or_default();
    parse_nft_tables(&listing, "bridge").into_iter().filter(|t| is_lab_table(name, t)).collect()
}

/// Deletes them; a failure does not stop the teardown (`verify_gone` reports what is left).
fn remove_tables(name: &str) {
    for table in lab_tables(name) {
        if let Err(e) = cmd::run("nft", &["delete", "table", "bridge", &table]) {
            eprintln!("cannot delete nftables table bridge {table}: {e:#}");
        }
    }
}

fn netns_list() -> Vec<String> {
    cmd::stdout("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn root_links() -> Vec<String> {
    cmd::stdout("ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

fn lab_netns(name: &str) -> Vec<String> {
    netns_list().into_iter().filter(|n| is_lab_netns(name, n)).collect()
}

fn lab_links(name: &str) -> Vec<String> {
    root_links().into_iter().filter(|l| is_lab_link(name, l)).collect()
}

/// Fails if namespaces, links or root-netns nftables tables of lab `name` exist although no
/// lab.json describes them.
pub fn refuse_leftovers(name: &str) -> Result<()> {
    let (ns, links, tables) = (lab_netns(name), lab_links(name), lab_tables(name));
    if !ns.is_empty() || !links.is_empty() || !tables.is_empty() {
        bail!(
            "leftovers of a lab named {name} exist (namespaces: {}; links: {}; nftables: {}); \
             run `cargo xtask lab down --name {name}` first",
            ns.join(" "),
            links.join(" "),
            tables.join(" ")
        );
    }
    Ok(())
}

/// Whether `dir` is a lab's state directory, which `down` may empty and whose referencing
/// processes it may kill: it holds a lab.json, or it is a default `/run/kovn-lab/NAME`. Anything
/// else (a mistyped `--state-dir /home`) is never touched.
pub fn is_lab_state_dir(dir: &Path) -> bool {
    dir.join("lab.json").exists()
        || (dir.parent() == Some(Path::new(STATE_ROOT))
            && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| validate_name(n).is_ok()))
}

/// Brings down the lab named `name_or_state_dir` (or whose state directory that is).
pub fn down(name_or_state_dir: &str) -> Result<DownOutcome> {
    sys::require_root()?;
    if !name_or_state_dir.contains('/') {
        validate_name(name_or_state_dir)?;
    }
    let dir = state_dir_of(name_or_state_dir);
    // A custom --state-dir is reachable through the /run/kovn-lab/NAME symlink.
    let real_dir = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    if real_dir.exists() && !is_lab_state_dir(&real_dir) {
        bail!("{} is not a lab state directory (no lab.json); not touching it", real_dir.display());
    }
    let lab = load(&real_dir.to_string_lossy()).ok();
    let name = match &lab {
        Some(lab) => lab.name.clone(),
        None => dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let nothing = !dir.exists()
        && dir.symlink_metadata().is_err()
        && lab_netns(&name).is_empty()
        && lab_links(&name).is_empty()
        && lab_tables(&name).is_empty()
        && sys::pids_referencing(&real_dir).is_empty();
    if nothing {
        return Ok(DownOutcome::NothingUp { name });
    }
    teardown(&name, &real_dir, lab.as_ref())?;
    Ok(DownOutcome::Removed { name })
}

/// Removes everything of lab `name`: root-netns nftables tables its faults left (by name, whether
/// or not lab.json records the fault), processes (pidfiles, namespaces, anything still pointing
/// at `state_dir`), namespaces, root links, files. Verifies nothing is left.
pub fn teardown(name: &str, state_dir: &Path, lab: Option<&Lab>) -> Result<()> {
    validate_name(name)?;
    // First: the only lab state outside its namespaces and links that nothing else removes.
    remove_tables(name);
    let ours = lab_pids(name, state_dir, lab);
    if let Some(lab) = lab {
        // Monitors first, with SIGINT, so they detach from the interfaces while those exist.
        let survivors = monitors::stop_processes(lab);
        if !survivors.is_empty() {
            eprintln!("kovn-monitor processes {survivors:?} would not stop; the netns removal ends them");
        }
        for d in lab.daemons() {
            if let Some(pid) = sys::live_pid(&d.pidfile, d.comm) {
                sys::terminate(pid, d.group, GRACE);
            }
        }
    }
    let owned = is_lab_state_dir(state_dir);
    if owned {
        for pidfile in pidfiles_under(state_dir) {
            if let Some(pid) = sys::read_pidfile(&pidfile)
                && sys::comm(pid).is_some_and(|c| sys::is_lab_program(&c))
            {
                sys::terminate(pid, false, GRACE);
            }
        }
    }
    for ns in lab_netns(name) {
        for pid in sys::netns_pids(&ns) {
            sys::terminate(pid, false, GRACE);
        }
        cmd::run("ip", &["netns", "del", &ns])?;
    }
    if owned {
        // Daemons whose pidfile is gone but whose sockets or OVS_RUNDIR are in the state dir.
        for pid in sys::pids_referencing(state_dir) {
            sys::terminate(pid, false, GRACE);
        }
    }
    remove_links(name)?;
    if owned {
        remove_files(name, state_dir)?;
    }
    verify_gone(name, state_dir)?;
    wait_reaped(&ours);
    Ok(())
}

/// Every process of the lab before it is torn down: daemons and monitors by pidfile, whatever
/// runs in its namespaces, lab programs pointing at its state directory.
fn lab_pids(name: &str, state_dir: &Path, lab: Option<&Lab>) -> Vec<i32> {
    let mut pids: Vec<i32> = Vec::new();
    if let Some(lab) = lab {
        pids.extend(lab.daemons().iter().filter_map(|d| sys::live_pid(&d.pidfile, d.comm)));
        pids.extend(monitors::running(lab).into_iter().filter_map(|(_, pid)| pid));
    }
    if is_lab_state_dir(state_dir) {
        pids.extend(
            pidfiles_under(state_dir)
                .iter()
                .filter_map(|p| sys::read_pidfile(p))
                .filter(|&pid| sys::is_alive(pid) && sys::comm(pid).is_some_and(|c| sys::is_lab_program(&c))),
        );
        pids.extend(sys::pids_referencing(state_dir));
    }
    for ns in lab_netns(name) {
        pids.extend(sys::netns_pids(&ns));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// How long `down` waits for the lab's exited processes to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Waits until every one of `pids` is gone from /proc, not only dead: the daemons are
/// daemonised, so whoever is PID 1 reaps them, and until it does `ps` and `pgrep` still list
/// them (as zombies). Without this, `lab down` said "removed" while `pgrep ovs-vswitchd`
/// still found them for 1-2 s. A PID 1 that never reaps is reported, not waited for forever.
fn wait_reaped(pids: &[i32]) {
    let present = |pid: &i32| Path::new(&format!("/proc/{pid}")).exists();
    if !sys::wait_until(REAP_WAIT, Duration::from_millis(20), || !pids.iter().any(present)) {
        let left: Vec<i32> = pids.iter().copied().filter(present).collect();
        eprintln!(
            "note: processes {left:?} of the lab have exited but PID 1 has not reaped them after {REAP_WAIT:?}"
        );
    }
}

fn pidfiles_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pid") {
                found.push(p);
            }
        }
    }
    found
}

fn remove_links(name: &str) -> Result<()> {
    // A node veth's root end disappears with its peer's namespace, asynchronously.
    sys::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab_links(name).iter().all(|l| l.ends_with("-ul"))
    });
    for link in lab_links(name) {
        cmd::run("ip", &["link", "del", &link])?;
    }
    Ok(())
}

fn remove_files(name: &str, state_dir: &Path) -> Result<()> {
    if state_dir.exists() {
        fs::remove_dir_all(state_dir)?;
    }
    let default = Path::new(STATE_ROOT).join(name);
    if default.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&default)?;
    }
    Ok(())
}

fn verify_gone(name: &str, state_dir: &Path) -> Result<()> {
    let gone = sys::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab_netns(name).is_empty()
            && lab_links(name).is_empty()
            && lab_tables(name).is_empty()
            && sys::pids_referencing(state_dir).is_empty()
    });
    if !gone {
        bail!(
            "lab {name} not fully removed: namespaces [{}], links [{}], nftables [{}], processes {:?}",
            lab_netns(name).join(" "),
            lab_links(name).join(" "),
            lab_tables(name).join(" "),
            sys::pids_referencing(state_dir)
        );
    }
    Ok(())
}
