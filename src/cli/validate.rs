//! `runner validate FILE...`: checks job files and reports every problem at once.

use std::io::Write;
use std::path::PathBuf;

use super::Exit;
use crate::jobfile::{self, LoadOptions};

/// Arguments of `runner validate`.
///
/// Prints every warning and error to stderr as `FILE:LINE:COL: error: MESSAGE`; when every file
/// is valid, prints one summary line to stdout and exits 0, otherwise exits 2.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Job files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Treat characters outside Chinese, digits, whitespace and everyday punctuation as errors
    /// instead of warnings.
    #[arg(long)]
    pub strict: bool,
}

/// Runs `runner validate`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let opts = LoadOptions {
        strict: args.strict,
    };
    let mut stderr = std::io::stderr().lock();
    let (mut items, mut images, mut warnings, mut errors, mut invalid) = (0u64, 0u64, 0, 0, 0);
    for path in &args.files {
        match jobfile::load(path, &opts) {
            Ok(job) => {
                for w in &job.warnings {
                    writeln!(stderr, "{w}")?;
                }
                warnings += job.warnings.len();
                items += job.items.len() as u64;
                images += job.images();
            }
            Err(e) => {
                for d in &e.diagnostics {
                    writeln!(stderr, "{d}")?;
                }
                warnings += e.warning_count();
                errors += e.error_count();
                invalid += 1;
            }
        }
    }
    let files = args.files.len();
    if invalid > 0 {
        writeln!(
            stderr,
            "invalid: {invalid} of {} ({}, {})",
            plural(files as u64, "file"),
            plural(errors as u64, "error"),
            plural(warnings as u64, "warning")
        )?;
        return Ok(Exit::Invalid);
    }
    let warned = if warnings > 0 {
        format!(" ({})", plural(warnings as u64, "warning"))
    } else {
        String::new()
    };
    writeln!(
        std::io::stdout().lock(),
        "ok: {}, {}, {}{warned}",
        plural(files as u64, "file"),
        plural(items, "item"),
        plural(images, "image")
    )?;
    Ok(Exit::Done)
}

/// `1 file`, `2 files`.
pub(crate) fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
