//! `runner plan FILE`: the expanded items of a job file, totals, and how long the batch takes.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::validate::plural;
use super::{Exit, ExitError};
use crate::jobfile::plan::{Estimate, Limits, Totals};
use crate::jobfile::{self, Item, JobFile, LoadOptions};

/// Arguments of `runner plan`.
///
/// The estimate is max(images × mean_gen_secs / concurrency, items / submit_qps): generation is
/// bounded by the concurrency slots, starting work by the submit rate; the batch takes at least
/// the larger, and about that when the slots are kept busy.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Images in generation at once (the account's concurrency slots).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub concurrency: u32,
    /// Mean seconds to generate one image.
    #[arg(long, default_value_t = 20.0, value_name = "S")]
    pub mean_gen_secs: f64,
    /// Submits per second the account allows.
    #[arg(long, default_value_t = 1.0, value_name = "QPS")]
    pub submit_qps: f64,
    /// Images per day the account may make; prints how many days of quota the batch needs.
    #[arg(long, value_name = "N")]
    pub daily_quota: Option<u64>,
    /// Show every item (the table shows the first `--limit`).
    #[arg(long)]
    pub all: bool,
    /// How many items the table shows.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Treat characters outside Chinese, digits, whitespace and everyday punctuation as errors.
    #[arg(long)]
    pub strict: bool,
}

/// Runs `runner plan`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    if args.concurrency == 0 {
        return Err(ExitError::new(Exit::Invalid, "--concurrency must be at least 1").into());
    }
    if !(args.mean_gen_secs.is_finite() && args.mean_gen_secs > 0.0) {
        return Err(ExitError::new(Exit::Invalid, "--mean-gen-secs must be above 0").into());
    }
    if !(args.submit_qps.is_finite() && args.submit_qps > 0.0) {
        return Err(ExitError::new(Exit::Invalid, "--submit-qps must be above 0").into());
    }
    if args.daily_quota == Some(0) {
        return Err(ExitError::new(Exit::Invalid, "--daily-quota must be at least 1").into());
    }
    let opts = LoadOptions {
        strict: args.strict,
    };
    let mut stderr = std::io::stderr().lock();
    let job = match jobfile::load(&args.file, &opts) {
        Ok(job) => job,
        Err(e) => {
            for d in &e.diagnostics {
                writeln!(stderr, "{d}")?;
            }
            return Ok(Exit::Invalid);
        }
    };
    for w in &job.warnings {
        writeln!(stderr, "{w}")?;
    }
    let limits = Limits {
        concurrency: args.concurrency,
        mean_gen_secs: args.mean_gen_secs,
        submit_qps: args.submit_qps,
        daily_quota: args.daily_quota,
    };
    let totals = Totals::of(&job.items);
    let estimate = Estimate::new(&totals, &limits);
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = to_json(&job, &totals, &limits, &estimate);
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        let shown = if args.all {
            job.items.len()
        } else {
            args.limit
        };
        write_table(&mut out, &job, shown)?;
        write_totals(&mut out, &totals, &limits, &estimate)?;
    }
    Ok(Exit::Done)
}

fn write_table(out: &mut impl Write, job: &JobFile, shown: usize) -> std::io::Result<()> {
    writeln!(
        out,
        "batch {} ({}), archive: review {}, block {}",
        job.batch,
        job.path.display(),
        job.archive.review,
        job.archive.block
    )?;
    writeln!(
        out,
        "{:>6}  {:<12}  {:<3}  {:<9}  {:>2}  {:>4}  prompt [tags]",
        "#", "key", "ver", "size", "n", "var"
    )?;
    for (i, item) in job.items.iter().take(shown).enumerate() {
        let tags = if item.tags.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = item.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("  [{}]", list.join(", "))
        };
        writeln!(
            out,
            "{:>6}  {:<12}  {:<3}  {:<9}  {:>2}  {:>4}  {}{tags}",
            i + 1,
            item.key.get(..12).unwrap_or(&item.key),
            item.version.as_str(),
            item.size.to_string(),
            item.image_num,
            item.variant,
            item.prompt
        )?;
    }
    if shown < job.items.len() {
        writeln!(
            out,
            "   … {} more (--all shows every item)",
            job.items.len() - shown
        )?;
    }
    writeln!(out)
}

fn write_totals(
    out: &mut impl Write,
    totals: &Totals,
    limits: &Limits,
    estimate: &Estimate,
) -> std::io::Result<()> {
    writeln!(out, "items:  {}", totals.items)?;
    writeln!(out, "images: {}", totals.images)?;
    for (size, c) in &totals.by_size {
        writeln!(
            out,
            "  size {:<9}  {}, {}",
            size.to_string(),
            plural(c.items, "item"),
            plural(c.images, "image")
        )?;
    }
    for (version, c) in &totals.by_version {
        writeln!(
            out,
            "  version {:<6} {}, {}",
            version.as_str(),
            plural(c.items, "item"),
            plural(c.images, "image")
        )?;
    }
    writeln!(
        out,
        "estimate: {} = max(generation {} images × {} s / {} slots = {:.0} s, submits {} items / {} per s = {:.0} s)",
        duration(estimate.estimate_secs),
        totals.images,
        limits.mean_gen_secs,
        limits.concurrency,
        estimate.generation_secs,
        totals.items,
        limits.submit_qps,
        estimate.submit_secs
    )?;
    if let (Some(days), Some(quota)) = (estimate.quota_days, limits.daily_quota) {
        writeln!(
            out,
            "quota: {} at {quota} images per day",
            plural(days, "day")
        )?;
    }
    Ok(())
}

/// Whole seconds, humanly: `12m 40s`.
fn duration(secs: f64) -> String {
    let whole = secs.ceil().clamp(0.0, 1e15) as u64;
    humantime::format_duration(std::time::Duration::from_secs(whole)).to_string()
}

fn to_json(
    job: &JobFile,
    totals: &Totals,
    limits: &Limits,
    estimate: &Estimate,
) -> serde_json::Value {
    let by_size: serde_json::Map<String, serde_json::Value> = totals
        .by_size
        .iter()
        .map(|(s, c)| (s.to_string(), json!({"items": c.items, "images": c.images})))
        .collect();
    let by_version: serde_json::Map<String, serde_json::Value> = totals
        .by_version
        .iter()
        .map(|(v, c)| {
            (
                v.as_str().to_owned(),
                json!({"items": c.items, "images": c.images}),
            )
        })
        .collect();
    json!({
        "file": job.path.display().to_string(),
        "batch": job.batch,
        "archive": {"review": job.archive.review.as_str(), "block": job.archive.block.as_str()},
        "items": totals.items,
        "images": totals.images,
        "by_size": by_size,
        "by_version": by_version,
        "limits": {
            "concurrency": limits.concurrency,
            "mean_gen_secs": limits.mean_gen_secs,
            "submit_qps": limits.submit_qps,
            "daily_quota": limits.daily_quota,
        },
        "generation_secs": estimate.generation_secs,
        "submit_secs": estimate.submit_secs,
        "estimate_secs": estimate.estimate_secs,
        "quota_days": estimate.quota_days,
        "warnings": job.warnings.len(),
        "item_list": job.items.iter().map(item_json).collect::<Vec<_>>(),
    })
}

fn item_json(item: &Item) -> serde_json::Value {
    json!({
        "key": item.key,
        "prompt": item.prompt,
        "size": item.size.to_string(),
        "width": item.size.width,
        "height": item.size.height,
        "version": item.version.as_str(),
        "image_num": item.image_num,
        "variant": item.variant,
        "tags": item.tags,
        "vars": item.vars,
        "template": item.template,
        "line": item.line,
    })
}
