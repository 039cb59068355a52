//! `runner plan` (placeholder until the job-file issue lands).

use super::Exit;

/// Arguments of `runner plan`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `runner plan`.
pub fn run(_args: Args) -> anyhow::Result<Exit> {
    anyhow::bail!("not implemented yet")
}
