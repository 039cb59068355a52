//! The simulator: a wire-faithful ERNIE-ViLG v2 server for tests, benchmarks and dry runs.
//!
//! It speaks the endpoints of `shared/api/yinian-v2.md` with the wire types of [`crate::api`]:
//! the OAuth token endpoint, `txt2imgv2`, `getImgv2`, and signed, expiring image URLs that
//! answer real PNGs. It enforces the account's limits the way the real API does (HTTP 200 with
//! an `error_code`), fails tasks and injects transport faults at configured rates, and counts
//! everything in [`Stats`] so tests can prove what a client did.
//!
//! # Layout
//!
//! - [`config`]: [`SimConfig`] and the reusable clap flags [`SimArgs`].
//! - `state`: the simulated account (tokens, tasks, limits, quota, URL signing).
//! - `routes`: the axum router; where faults hit the answers.
//! - `faults`: seeded fault decisions.
//! - [`png`]: deterministic images and their cache.
//! - [`stats`]: [`Stats`] and [`TaskRecord`].
//!
//! # Order of checks
//!
//! An API call is checked for its token (missing 100, unknown 110, expired 111), then its rate
//! (18), then its parameters (282003 missing, 282004 too long or censored, 216100 invalid);
//! a submit then for the daily quota (17) and the concurrency (15). A request refused by the
//! token check does not count against the rate limit; one that passes the rate check does, even
//! if its parameters are then refused.
//! An injected error burst (`burst_rate`, `burst_codes`, `burst_len`) answers right after the
//! token check, before the rate check.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use runner::sim::{SimConfig, spawn};
//! let sim = spawn(SimConfig { gen_ms: (50, 100), ..SimConfig::default() }).await?;
//! println!("token endpoint: {}/oauth/2.0/token", sim.base_url());
//! let stats = sim.stats();
//! assert_eq!(stats.max_submits_per_item(), 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod config;
mod faults;
pub mod png;
mod routes;
mod state;
pub mod stats;

pub use config::{ConfigError, FaultKind, FaultKinds, GenRange, SimArgs, SimConfig};
pub use stats::{ItemSubmits, Stats, TaskRecord};

use state::Sim;

/// A simulator without a socket: its router answers requests in this process, so a test can drive
/// the scheduler through it on tokio's paused clock.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct InProcess {
    /// The simulator's routes, answering as over HTTP.
    pub(crate) router: axum::Router,
    sim: Arc<Sim>,
}

#[cfg(test)]
impl InProcess {
    /// A simulator of `config`, its image URLs naming 127.0.0.1:9 (never dialled).
    pub(crate) fn new(config: SimConfig) -> InProcess {
        let sim = Arc::new(Sim::new(config));
        let router = routes::router(sim.clone(), SocketAddr::from(([127, 0, 0, 1], 9)));
        InProcess { router, sim }
    }

    /// The simulator's counters.
    pub(crate) fn stats(&self) -> Stats {
        self.sim.stats()
    }
}

/// Serves the simulator on `listener` until `shutdown` resolves, then finishes the answers in
/// flight and returns. Fails at once if `config` does not [validate](SimConfig::validate).
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    serve_sim(listener, Arc::new(Sim::new(config)), shutdown).await
}

async fn serve_sim(
    listener: TcpListener,
    sim: Arc<Sim>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local_addr = listener.local_addr()?;
    let app = routes::router(sim, local_addr);
    // Small answers on keep-alive connections: Nagle's algorithm would only add latency.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Starts a simulator on `127.0.0.1` with a free port, serving on a background task. The
/// returned handle knows the address and reads the counters in-process.
pub async fn spawn(config: SimConfig) -> io::Result<SimHandle> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::new(config));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_sim(listener, sim.clone(), async move {
        // A dropped handle stops the server too.
        let _ = stopped.await;
    }));
    Ok(SimHandle {
        addr,
        sim,
        stop,
        task,
    })
}

/// A simulator running on a background task (see [`spawn`]). Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    sim: Arc<Sim>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the base of the token endpoint and of the API paths.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration served.
    pub fn config(&self) -> &SimConfig {
        &self.sim.config
    }

    /// A snapshot of the counters (the same as `GET /__sim/stats`).
    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// Every accepted task, in submission order (the same as `GET /__sim/tasks`).
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.sim.tasks()
    }

    /// Expires every token issued so far (see [`state::Sim::expire_tokens`]).
    pub fn expire_tokens(&self) {
        self.sim.expire_tokens();
    }

    /// Stops accepting connections, lets answers in flight finish, and waits for the server.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "simulator stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "simulator task failed"),
        }
    }
}
