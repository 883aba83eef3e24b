//! The lab: Kube-OVN-like nodes in network namespaces (placeholder; being written).

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Show what runs.
    Status,
}

pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Status => Ok(()),
    }
}
