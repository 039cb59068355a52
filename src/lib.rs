//! `runner`: a batch job runner for the ERNIE-ViLG (文心一格) text-to-image API.
//!
//! # Layout
//!
//! - [`cli`]: clap subcommands, one `Args` + `run` each; exit codes; progress display.
//! - [`jobfile`]: the YAML job-file model, validation against the API's limits (with
//!   `file:line:col`), expansion to items, item keys.
//! - [`api`]: wire types shared by the client and the simulator: requests, answers, error codes
//!   and their classes; the local clock and quota-day arithmetic.
//! - [`client`]: HTTP to the API: token, submit, query, download; redaction of secrets.
//! - [`scheduler`]: a run: the submit, poll and fetch loops under the account's limits, and the
//!   store-and-archive maintenance of `verify` and the manifests.
//! - [`store`]: batches, items, images, events and runs; the SQLite backend and its typed writes.
//! - [`archive`]: the [`archive::Archive`] interface and its folder implementation; PNG
//!   verification; atomic writes.
//! - [`report`]: seeing a batch: the HTML gallery with thumbnails, exports, Prometheus metrics.
//! - [`sim`]: the simulator: an axum router and `serve(listener, config, shutdown)`, with the real
//!   limits, faults and expiring URLs.
//!
//! See `DESIGN.md` for the state machine and invariants.

pub mod api;
pub mod archive;
pub mod cli;
pub mod client;
pub mod jobfile;
pub mod report;
pub mod scheduler;
pub mod sim;
pub mod store;
