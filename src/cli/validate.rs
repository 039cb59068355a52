//! `runner validate` (placeholder until the job-file issue lands).

use super::Exit;

/// Arguments of `runner validate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `runner validate`.
pub fn run(_args: Args) -> anyhow::Result<Exit> {
    anyhow::bail!("not implemented yet")
}
