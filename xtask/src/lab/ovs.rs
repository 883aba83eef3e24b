//! The OVS and OVN command-line clients, pointed at one lab's sockets (never the system's default
//! /var/run/openvswitch ones).

use std::ffi::OsStr;

use anyhow::Result;

use super::model::{Lab, Node};
use crate::cmd;

/// Seconds any ovs/ovn client may wait for its database or daemon before failing.
const CLIENT_TIMEOUT: &str = "--timeout=20";

fn with_prefix<S: AsRef<OsStr>>(prefix: &[String], args: &[S]) -> Vec<String> {
    prefix.iter().cloned().chain(args.iter().map(|a| a.as_ref().to_string_lossy().into_owned())).collect()
}

/// `ovn-nbctl --db=unix:<lab nb.sock> args...`, returning stdout.
pub fn nbctl<S: AsRef<OsStr>>(lab: &Lab, args: &[S]) -> Result<String> {
    let prefix = [format!("--db={}", lab.central.nb_db()), CLIENT_TIMEOUT.into()];
    cmd::stdout("ovn-nbctl", &with_prefix(&prefix, args))
}

/// `ovn-sbctl --db=unix:<lab sb.sock> args...`, returning stdout.
pub fn sbctl<S: AsRef<OsStr>>(lab: &Lab, args: &[S]) -> Result<String> {
    let prefix = [format!("--db={}", lab.central.sb_db()), CLIENT_TIMEOUT.into()];
    cmd::stdout("ovn-sbctl", &with_prefix(&prefix, args))
}

/// `ovs-vsctl --db=unix:<node db.sock> args...`. Without `--no-wait` it returns once
/// ovs-vswitchd applied the change (bridges and ports exist).
pub fn vsctl<S: AsRef<OsStr>>(node: &Node, args: &[S]) -> Result<String> {
    let prefix = [format!("--db={}", node.ovsdb()), CLIENT_TIMEOUT.into()];
    cmd::stdout("ovs-vsctl", &with_prefix(&prefix, args))
}

/// `ovs-ofctl <subcommand> unix:<node>/br-int.mgmt args...`.
pub fn ofctl<S: AsRef<OsStr>>(node: &Node, subcommand: &str, args: &[S]) -> Result<String> {
    let prefix = [CLIENT_TIMEOUT.to_string(), subcommand.into(), node.br_int_mgmt()];
    cmd::stdout("ovs-ofctl", &with_prefix(&prefix, args))
}

/// `ovs-appctl -t <control socket> args...`.
pub fn appctl<S: AsRef<OsStr>>(ctl: &std::path::Path, args: &[S]) -> Result<String> {
    let prefix = [CLIENT_TIMEOUT.to_string(), "-t".into(), ctl.display().to_string()];
    cmd::stdout("ovs-appctl", &with_prefix(&prefix, args))
}

/// One ovs-vsctl/ovn-nbctl invocation running several commands in a single database
/// transaction: `[["add-br", "x"], ["set", ...]]` -> `-- add-br x -- set ...`.
pub fn transaction(commands: &[&[&str]]) -> Vec<String> {
    commands.iter().flat_map(|c| std::iter::once("--").chain(c.iter().copied())).map(str::to_string).collect()
}

/// Splits `--bare` output (one value per line, blank lines between records) into values.
pub fn bare_values(out: &str) -> Vec<String> {
    out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}
