//! `runner sim` (placeholder until the simulator issue lands).

use super::Exit;

/// Arguments of `runner sim`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `runner sim`.
pub async fn run(_args: Args) -> anyhow::Result<Exit> {
    anyhow::bail!("not implemented yet")
}
