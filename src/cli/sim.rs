//! `runner sim`: serve the simulator until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use super::{Exit, ExitError};
use crate::sim::{self, SimArgs};

/// Arguments of `runner sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (the line on stdout says which).
    #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
    pub addr: SocketAddr,
    /// What to simulate (boxed: the flags are many, and every command shares one enum).
    #[command(flatten)]
    pub sim: Box<SimArgs>,
}

/// Runs `runner sim`: prints `listening on http://ADDR` on stdout, then serves until
/// interrupted.
pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let config = args.sim.to_config();
    config
        .validate()
        .map_err(|e| ExitError::new(Exit::Invalid, e.to_string()))?;
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    sim::serve(listener, config, shutdown_signal())
        .await
        .context("the simulator failed")?;
    Ok(Exit::Done)
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
