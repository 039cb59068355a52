//! Pipeline benchmark: the release `runner` binary, run as a child process against an
//! in-process simulator, in five scenarios (see BENCHMARKS.md, section "Pipeline").
//!
//!     cargo build --release --bin runner            # the binary measured (cargo bench builds it too)
//!     cargo bench --bench pipeline -- --all
//!     cargo bench --bench pipeline -- --scenario utilization [--runs 3]
//!     cargo bench --bench pipeline -- --scenario defaults --items 40
//!     cargo bench --bench pipeline -- --scenario peer [--workload defaults --items 40]
//!     cargo bench --bench pipeline -- --scenario overhead --items 20000 --runs 3
//!     cargo bench --bench pipeline -- --scenario scale --sizes 1000,10000,100000
//!
//! Scenarios:
//!
//! - `utilization`: limits submit 5/s, query 10/s, 4 slots, generation 1–2 s, 200 one-image items.
//! - `defaults`: the real account's limits (1/s, 2/s, 2 slots), generation 5–15 s, 40 items.
//! - `peer`: the `utilization` workload (or `--workload defaults`) run by the runner and by
//!   `benches/peer/peer.py` (erniebot 0.5.x, asyncio), each against a fresh simulator with the same
//!   configuration and seed, in the same harness run.
//! - `overhead`: every limit off, generation 0 ms, 20,000 one-image 512x512 items.
//! - `scale`: the same at 1,000, 10,000 and 100,000 items.
//!
//! How each figure is taken:
//!
//! - The runner runs under `/usr/bin/time -f '%e %U %S %M'` (GNU time: the runner process's own
//!   wall time, user and system CPU seconds and peak RSS in KiB, from `wait4`). Its stderr is read
//!   line by line as it comes; the load time is when the line `FILE: N items (N new, ...)` arrives,
//!   counted from the spawn (process start, job-file load and the store's insert of the items).
//! - Ideal time = the sum of the simulator's drawn generation times (`TaskRecord::gen_ms`) / slots.
//!   Utilization = ideal / span, where the span runs from the first submit to the last archive
//!   (`submitted_at` and `archived_at` of the batch's manifest lines, the runner's clock); also
//!   ideal / the whole process's wall time.
//! - Detection lag = `first_download_ms - finished_ms` per task (the simulator's clock).
//! - Queries per task = the simulator's query count / its accepted tasks.
//! - The simulator's CPU time is the harness process's own (from `/proc/self/stat`, at 100 ticks
//!   per second) over the run: it shares the machine's cores with the runner.
//!
//! Items of the `overhead` and `scale` job files are one prompt with `repeat: N` (N variants,
//! each its own item and task): the simulator renders that prompt's image once and serves every
//! later download from its cache, so its rendering does not bound the runner. The prompt is the
//! one of 64 candidates with the smallest 512x512 image, to keep 100,000 durable image writes
//! within the disk's room; its size is printed.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it returns at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use runner::sim::{SimConfig, SimHandle, TaskRecord, spawn};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// The scenarios, in the order `--all` runs them.
const SCENARIOS: &[&str] = &["utilization", "defaults", "peer", "overhead", "scale"];

/// The batch every generated job file names.
const BATCH: &str = "bench";

/// Options from the command line.
#[derive(Debug, Clone)]
struct Options {
    /// Scenarios to run.
    scenarios: Vec<String>,
    /// Repetitions of each scenario; figures are medians over them.
    runs: usize,
    /// Item count, overriding the scenario's default.
    items: Option<usize>,
    /// Item counts of the `scale` scenario.
    sizes: Vec<usize>,
    /// Which workload the `peer` scenario runs: `utilization` or `defaults`.
    workload: String,
    /// The runner binary.
    runner: PathBuf,
    /// The Python interpreter of the peer.
    python: String,
    /// Hard bound of one child process, seconds; past it the child's process group is killed.
    timeout: Duration,
    /// Extra arguments passed to every `runner submit` (for experiments).
    runner_args: Vec<String>,
    /// Leave the temp dirs (stores, archives) in place and print where.
    keep: bool,
}

fn options(args: &[String]) -> Options {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut scenarios: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--scenario")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    if args.iter().any(|a| a == "--all") || scenarios.is_empty() {
        scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    for s in &scenarios {
        assert!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s}; one of {SCENARIOS:?}"
        );
    }
    let runner_args = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--runner-arg")
        .filter_map(|(i, _)| args.get(i + 1).cloned())
        .collect();
    Options {
        scenarios,
        runs: value("--runs").and_then(|v| v.parse().ok()).unwrap_or(1),
        items: value("--items").and_then(|v| v.parse().ok()),
        sizes: value("--sizes")
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000, 10_000, 100_000]),
        workload: value("--workload").unwrap_or_else(|| "utilization".into()),
        runner: value("--runner")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_runner"))),
        python: value("--python").unwrap_or_else(|| "python3".into()),
        timeout: Duration::from_secs(
            value("--timeout")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3600),
        ),
        runner_args,
        keep: args.iter().any(|a| a == "--keep"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let opts = options(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "runner: {}\nmachine: {} cores, load average {}",
        opts.runner.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut failed = false;
    for scenario in &opts.scenarios {
        println!("\n## {scenario}");
        let ok = runtime.block_on(async {
            match scenario.as_str() {
                "utilization" => repeat_paced(&opts, Paced::utilization(&opts)).await,
                "defaults" => repeat_paced(&opts, Paced::defaults(&opts)).await,
                "peer" => peer(&opts).await,
                "overhead" => overhead(&opts).await,
                "scale" => scale(&opts).await,
                _ => unreachable!("checked in options"),
            }
        });
        failed |= !ok;
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        eprintln!("some runs did not finish every item: their figures are not valid");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Named figures of one run, in print order.
#[derive(Debug, Default, Clone)]
struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    fn put(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value));
    }

    fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// Prints the figures of every run as a table: the median, then each run.
fn print_table(runs: &[Figures]) {
    let Some(first) = runs.first() else {
        return;
    };
    println!("\n| figure | median | runs |");
    println!("|---|---|---|");
    for (name, _) in &first.0 {
        let mut values: Vec<f64> = runs.iter().map(|r| r.get(name)).collect();
        let each = values
            .iter()
            .map(|v| fmt(*v))
            .collect::<Vec<_>>()
            .join(" · ");
        println!("| {name} | {} | {each} |", fmt(median(&mut values)));
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn median(values: &mut [f64]) -> f64 {
    let mut values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile by nearest rank (q in 0..=1).
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * q).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

// ---------------------------------------------------------------------------------------------
// Job files

/// Chinese words to build distinct prompts from.
const WORDS: &[&str] = &[
    "猫", "狗", "鸟", "鱼", "马", "牛", "羊", "兔", "鹿", "熊", "山", "水", "花", "树", "云", "雨",
    "雪", "风", "月", "星",
];

/// A distinct, valid prompt for `i`.
fn prompt(i: usize) -> String {
    let (a, b, c) = (i % 20, (i / 20) % 20, (i / 400) % 20);
    format!(
        "一幅水墨画，{}与{}在{}下，编号{i}",
        WORDS[a], WORDS[b], WORDS[c]
    )
}

/// A job of `n` distinct one-image 512x512 prompts (a prompts file beside it, which the peer
/// reads too). Returns (job file, prompts file).
fn distinct_job(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let prompts = dir.join("prompts.txt");
    let mut text = String::with_capacity(n * 48);
    for i in 0..n {
        text.push_str(&prompt(i));
        text.push('\n');
    }
    std::fs::write(&prompts, text).expect("write prompts");
    let job = dir.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "batch: {BATCH}\nmax_items: {}\nsizes: [512x512]\nimage_num: 1\nprompts_file: prompts.txt\n",
            n.max(1)
        ),
    )
    .expect("write job");
    (job, prompts)
}

/// A job of `n` one-image 512x512 items: one prompt, `repeat: n`.
fn repeat_job(dir: &Path, n: usize, prompt: &str) -> PathBuf {
    let job = dir.join("job.yaml");
    std::fs::write(
        &job,
        format!(
            "batch: {BATCH}\nmax_items: {}\nsizes: [512x512]\nimage_num: 1\nrepeat: {n}\nprompts: [\"{prompt}\"]\n",
            n.max(1)
        ),
    )
    .expect("write job");
    job
}

/// The candidate prompt with the smallest 512x512 image, and that image's size in bytes.
fn small_prompt() -> (String, usize) {
    (0..64)
        .map(|i| {
            let p = format!("基准图{i}");
            let size = runner::sim::png::render_png(&p, 512, 512, 0)
                .expect("render")
                .len();
            (p, size)
        })
        .min_by_key(|(_, size)| *size)
        .expect("64 candidates")
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// What one child process did.
#[derive(Debug, Default)]
struct ChildRun {
    /// Exit code (None: killed).
    exit: Option<i32>,
    /// Wall time from spawn to exit, measured here.
    wall_s: f64,
    /// Wall, user and system seconds and peak RSS (KiB) as GNU time reports them.
    time: Option<(f64, f64, f64, f64)>,
    /// When the load line arrived on stderr, seconds since the spawn.
    load_s: Option<f64>,
    /// Stdout.
    stdout: String,
    /// The last stderr lines.
    stderr_tail: Vec<String>,
    /// CPU seconds of this (the simulator's) process meanwhile.
    harness_cpu_s: f64,
}

impl ChildRun {
    fn cpu_s(&self) -> f64 {
        self.time.map_or(f64::NAN, |(_, u, s, _)| u + s)
    }

    fn rss_mib(&self) -> f64 {
        self.time.map_or(f64::NAN, |(_, _, _, kib)| kib / 1024.0)
    }

    /// The last JSON object printed on stdout.
    fn json(&self) -> Value {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null)
    }
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks per second).
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Runs `program args` under `/usr/bin/time`, reading its output as it comes.
async fn run_timed(
    opts: &Options,
    dir: &Path,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> ChildRun {
    let time_file = dir.join("time.txt");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(&time_file)
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("EB_ACCESS_TOKEN")
        .env_remove("RUNNER_SUBMIT_QPS")
        .env_remove("RUNNER_QUERY_QPS")
        .env_remove("RUNNER_CONCURRENCY")
        .env_remove("RUNNER_DB")
        .env_remove("RUNNER_ARCHIVE")
        .env_remove("RUNNER_BASE_URL")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let cpu_before = own_cpu_s();
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start /usr/bin/time");
    let pgid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let mut stdout = child.stdout.take().expect("stdout");
    let read_err = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut load_s = None;
        let mut tail: Vec<String> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if load_s.is_none() && line.contains(" items (") && line.contains(" new, ") {
                load_s = Some(started.elapsed().as_secs_f64());
            }
            if tail.len() == 40 {
                tail.remove(0);
            }
            tail.push(line);
        }
        (load_s, tail)
    });
    let read_out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let status = match tokio::time::timeout(opts.timeout, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            eprintln!(
                "timed out after {:?}: killing the child's process group",
                opts.timeout
            );
            if let Some(pgid) = pgid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .status();
            }
            child.wait().await.ok()
        }
    };
    let wall_s = started.elapsed().as_secs_f64();
    let (load_s, stderr_tail) = read_err.await.unwrap_or_default();
    let stdout = read_out.await.unwrap_or_default();
    let time = std::fs::read_to_string(&time_file).ok().and_then(|t| {
        let last = t.lines().last()?.to_owned();
        let v: Vec<f64> = last
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 4).then(|| (v[0], v[1], v[2], v[3]))
    });
    ChildRun {
        exit: status.and_then(|s| s.code()),
        wall_s,
        time,
        load_s,
        stdout,
        stderr_tail,
        harness_cpu_s: own_cpu_s() - cpu_before,
    }
}

/// The limits passed to the runner.
#[derive(Debug, Clone, Copy)]
struct RunnerLimits {
    submit_qps: f64,
    query_qps: f64,
    concurrency: u32,
    downloads: usize,
}

/// Runs `runner submit JOB` against `sim` with its own store and archive in `dir`.
async fn run_runner(
    opts: &Options,
    dir: &Path,
    job: &Path,
    sim: &SimHandle,
    limits: RunnerLimits,
) -> ChildRun {
    let mut args: Vec<String> = vec![
        "submit".into(),
        job.display().to_string(),
        "--db".into(),
        dir.join("runner.db").display().to_string(),
        "--archive".into(),
        dir.join("archive").display().to_string(),
        "--base-url".into(),
        sim.base_url(),
        "--submit-qps".into(),
        limits.submit_qps.to_string(),
        "--query-qps".into(),
        limits.query_qps.to_string(),
        "--concurrency".into(),
        limits.concurrency.to_string(),
        "--downloads".into(),
        limits.downloads.to_string(),
        "--json".into(),
    ];
    args.extend(opts.runner_args.iter().cloned());
    let run = run_timed(
        opts,
        dir,
        &opts.runner,
        &args,
        &[("EB_AK", "sim-ak".into()), ("EB_SK", "sim-sk".into())],
    )
    .await;
    if run.exit != Some(0) {
        eprintln!(
            "runner exited with {:?}; last stderr lines:\n{}",
            run.exit,
            run.stderr_tail.join("\n")
        );
    }
    run
}

/// Whether the run archived every one of `images`; says why not.
fn check_done(run: &ChildRun, images: usize) -> bool {
    let j = run.json();
    let archived = j["archived"].as_u64().unwrap_or(0) as usize;
    let ok = run.exit == Some(0) && archived == images;
    if !ok {
        eprintln!(
            "INVALID RUN: exit {:?}, {archived} of {images} images archived",
            run.exit
        );
    }
    ok
}

/// A temp dir for one run, kept with `--keep`.
fn run_dir(opts: &Options, name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("bench-{name}-"))
        .tempdir()
        .expect("temp dir");
    if opts.keep {
        println!("keeping {}", dir.path().display());
    }
    dir
}

fn finish_dir(opts: &Options, dir: tempfile::TempDir) {
    if opts.keep {
        let _ = dir.keep();
    }
}

// ---------------------------------------------------------------------------------------------
// Utilization and defaults

/// A rate-limited scenario: the simulator's limits, the runner's flags, the workload.
#[derive(Debug, Clone)]
struct Paced {
    name: &'static str,
    sim: SimConfig,
    limits: RunnerLimits,
    items: usize,
}

impl Paced {
    fn utilization(opts: &Options) -> Paced {
        Paced {
            name: "utilization",
            sim: SimConfig {
                gen_ms: (1_000, 2_000),
                submit_qps: Some(5.0),
                query_qps: Some(10.0),
                concurrency: Some(4),
                seed: 1,
                ..SimConfig::default()
            },
            limits: RunnerLimits {
                submit_qps: 5.0,
                query_qps: 10.0,
                concurrency: 4,
                downloads: 4,
            },
            items: opts.items.unwrap_or(200),
        }
    }

    fn defaults(opts: &Options) -> Paced {
        Paced {
            name: "defaults",
            sim: SimConfig {
                seed: 1,
                ..SimConfig::default()
            },
            limits: RunnerLimits {
                submit_qps: 1.0,
                query_qps: 2.0,
                concurrency: 2,
                downloads: 4,
            },
            items: opts.items.unwrap_or(40),
        }
    }
}

/// Figures the simulator's records give about one run: ideal time, lag, queries per task.
fn sim_figures(f: &mut Figures, tasks: &[TaskRecord], queries: u64, slots: u32) -> f64 {
    let ideal_s = tasks.iter().map(|t| t.gen_ms as f64).sum::<f64>() / 1000.0 / f64::from(slots);
    let mut lags: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some(t.first_download_ms? as f64 - t.finished_ms? as f64))
        .collect();
    f.put("ideal s (sum of generation / slots)", ideal_s);
    f.put(
        "queries per task",
        queries as f64 / tasks.len().max(1) as f64,
    );
    f.put("detection lag median ms", quantile(&mut lags, 0.5));
    f.put("detection lag p95 ms", quantile(&mut lags, 0.95));
    f.put(
        "detection lag max ms",
        lags.iter().copied().fold(f64::NAN, f64::max),
    );
    // Where an idle slot's time goes (one-image tasks): the k-th task to finish frees the slot
    // that the (k + slots)-th submit fills. Noticing = finish to the query that sees it.
    let mut finishes: Vec<u64> = tasks.iter().filter_map(|t| t.finished_ms).collect();
    let mut submits: Vec<u64> = tasks.iter().map(|t| t.submitted_ms).collect();
    finishes.sort_unstable();
    submits.sort_unstable();
    let mut refills: Vec<f64> = finishes
        .iter()
        .zip(submits.iter().skip(slots as usize))
        .map(|(done, next)| *next as f64 - *done as f64)
        .collect();
    let mut noticed: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some(t.first_final_query_ms? as f64 - t.finished_ms? as f64))
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    f.put(
        "slot refill (finish to next submit) mean ms",
        mean(&refills),
    );
    f.put("slot refill median ms", quantile(&mut refills, 0.5));
    f.put("noticed (finish to final query) mean ms", mean(&noticed));
    f.put("noticed median ms", quantile(&mut noticed, 0.5));
    ideal_s
}

/// First submit to last archive, seconds, from the manifest's `submitted_at` and `archived_at`.
fn manifest_span_s(archive: &Path) -> f64 {
    let text =
        std::fs::read_to_string(archive.join(BATCH).join("manifest.jsonl")).unwrap_or_default();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(s) = v["submitted_at"].as_i64() {
            first = first.min(s);
        }
        if let Some(a) = v["archived_at"].as_i64() {
            last = last.max(a);
        }
    }
    if first == i64::MAX || last == i64::MIN {
        f64::NAN
    } else {
        (last - first) as f64 / 1000.0
    }
}

async fn repeat_paced(opts: &Options, scenario: Paced) -> bool {
    println!(
        "{}: {} one-image 512x512 items; limits submit {}/s, query {}/s, {} slots; generation {}–{} ms; seed {}",
        scenario.name,
        scenario.items,
        scenario.limits.submit_qps,
        scenario.limits.query_qps,
        scenario.limits.concurrency,
        scenario.sim.gen_ms.0,
        scenario.sim.gen_ms.1,
        scenario.sim.seed
    );
    let mut all = Vec::new();
    let mut ok = true;
    for run in 0..opts.runs {
        let (f, good) = paced_once(opts, &scenario).await;
        println!("run {run}: {f:?}");
        ok &= good;
        all.push(f);
    }
    print_table(&all);
    ok
}

/// One run of the runner on a paced scenario.
async fn paced_once(opts: &Options, scenario: &Paced) -> (Figures, bool) {
    let dir = run_dir(opts, scenario.name);
    let (job, _) = distinct_job(dir.path(), scenario.items);
    let sim = spawn(scenario.sim.clone())
        .await
        .expect("spawn the simulator");
    let run = run_runner(opts, dir.path(), &job, &sim, scenario.limits).await;
    let ok = check_done(&run, scenario.items);
    let tasks = sim.tasks();
    let stats = sim.stats();
    sim.shutdown().await;
    let mut f = Figures::default();
    let ideal = sim_figures(&mut f, &tasks, stats.queries, scenario.limits.concurrency);
    let span = manifest_span_s(&dir.path().join("archive"));
    f.put("span s (first submit to last archive)", span);
    f.put("process wall s", run.wall_s);
    f.put("utilization (ideal / span)", ideal / span);
    f.put("utilization (ideal / process wall)", ideal / run.wall_s);
    f.put("submits refused (18)", stats.error_count(18) as f64);
    f.put("submits refused (15)", stats.error_count(15) as f64);
    f.put(
        "max images in generation",
        f64::from(stats.max_in_generation),
    );
    f.put("runner CPU s", run.cpu_s());
    f.put("runner peak RSS MiB", run.rss_mib());
    finish_dir(opts, dir);
    (f, ok)
}

// ---------------------------------------------------------------------------------------------
// Peer

async fn peer(opts: &Options) -> bool {
    let scenario = if opts.workload == "defaults" {
        Paced::defaults(opts)
    } else {
        Paced::utilization(opts)
    };
    println!(
        "peer: workload {} ({} items); the runner first, then benches/peer/peer.py, each against a fresh simulator (same configuration, seed {})",
        scenario.name, scenario.items, scenario.sim.seed
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/peer.py");
    let mut all = Vec::new();
    let mut ok = true;
    for run in 0..opts.runs {
        let (mut f, good) = paced_once(opts, &scenario).await;
        ok &= good;
        let runner_wall = f.get("process wall s");

        let dir = run_dir(opts, "peer");
        let (_, prompts) = distinct_job(dir.path(), scenario.items);
        let sim = spawn(scenario.sim.clone())
            .await
            .expect("spawn the simulator");
        let args = vec![
            script.display().to_string(),
            "--base-url".into(),
            sim.base_url(),
            "--prompts".into(),
            prompts.display().to_string(),
            "--concurrency".into(),
            scenario.limits.concurrency.to_string(),
            "--out".into(),
            dir.path().join("images").display().to_string(),
        ];
        let p = run_timed(opts, dir.path(), Path::new(&opts.python), &args, &[]).await;
        let tasks = sim.tasks();
        let stats = sim.stats();
        sim.shutdown().await;
        let report = p.json();
        if p.exit == Some(77) {
            println!("peer skipped: {}", p.stdout.trim());
            return ok;
        }
        let images = report["images"].as_u64().unwrap_or(0) as usize;
        if p.exit != Some(0) || images != scenario.items {
            eprintln!(
                "INVALID PEER RUN: exit {:?}, {images} of {} images; stderr:\n{}",
                p.exit,
                scenario.items,
                p.stderr_tail.join("\n")
            );
            ok = false;
        }
        let mut pf = Figures::default();
        let ideal = sim_figures(&mut pf, &tasks, stats.queries, scenario.limits.concurrency);
        f.put("peer process wall s", p.wall_s);
        f.put(
            "peer span s (first submit to last download written)",
            report["span_s"].as_f64().unwrap_or(f64::NAN),
        );
        f.put("peer utilization (ideal / process wall)", ideal / p.wall_s);
        f.put("peer queries per task", pf.get("queries per task"));
        f.put(
            "peer detection lag median ms",
            pf.get("detection lag median ms"),
        );
        f.put("peer detection lag p95 ms", pf.get("detection lag p95 ms"));
        f.put(
            "peer SDK retries (refusals 18 + 15)",
            (stats.error_count(18) + stats.error_count(15)) as f64,
        );
        f.put("peer CPU s", p.cpu_s());
        f.put("peer peak RSS MiB", p.rss_mib());
        f.put("wall ratio peer / runner", p.wall_s / runner_wall);
        println!("run {run}: {f:?}");
        all.push(f);
        finish_dir(opts, dir);
    }
    print_table(&all);
    ok
}

// ---------------------------------------------------------------------------------------------
// Overhead and scale

/// Every limit off, generation 0 ms.
fn unlimited_sim() -> SimConfig {
    SimConfig {
        gen_ms: (0, 0),
        seed: 1,
        ..SimConfig::unlimited()
    }
}

const NO_LIMITS: RunnerLimits = RunnerLimits {
    submit_qps: 0.0,
    query_qps: 0.0,
    concurrency: 100_000,
    downloads: 32,
};

/// One unlimited run of `n` items.
async fn unlimited_once(opts: &Options, name: &str, n: usize, prompt: &str) -> (Figures, bool) {
    let dir = run_dir(opts, name);
    let job = repeat_job(dir.path(), n, prompt);
    let sim = spawn(unlimited_sim()).await.expect("spawn the simulator");
    let run = run_runner(opts, dir.path(), &job, &sim, NO_LIMITS).await;
    let ok = check_done(&run, n);
    let stats = sim.stats();
    let tasks = sim.tasks();
    sim.shutdown().await;
    // How far the downloads trail the submits: a growing backlog shows as a growing latency.
    let mut latency: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some((t.first_download_ms? - t.submitted_ms) as f64 / 1000.0))
        .collect();
    let mut f = Figures::default();
    let load = run.load_s.unwrap_or(f64::NAN);
    f.put("items", n as f64);
    f.put("load s", load);
    f.put("run s (wall - load)", run.wall_s - load);
    f.put("process wall s", run.wall_s);
    f.put("items/s end to end", n as f64 / run.wall_s);
    f.put("runner CPU s (user+sys)", run.cpu_s());
    f.put("runner user s", run.time.map_or(f64::NAN, |(_, u, _, _)| u));
    f.put("runner sys s", run.time.map_or(f64::NAN, |(_, _, s, _)| s));
    f.put(
        "runner CPU s per 1,000 items",
        run.cpu_s() / n as f64 * 1000.0,
    );
    f.put("runner peak RSS MiB", run.rss_mib());
    f.put("simulator CPU s", run.harness_cpu_s);
    f.put(
        "queries per task",
        stats.queries as f64 / stats.submits.max(1) as f64,
    );
    f.put("submit to download median s", quantile(&mut latency, 0.5));
    f.put("submit to download max s", quantile(&mut latency, 1.0));
    finish_dir(opts, dir);
    (f, ok)
}

async fn overhead(opts: &Options) -> bool {
    let n = opts.items.unwrap_or(20_000);
    let (prompt, bytes) = small_prompt();
    println!(
        "overhead: {n} one-image 512x512 items (one prompt `{prompt}`, repeat {n}; image {bytes} bytes), every limit off, generation 0 ms, --concurrency 100000 --downloads 32, durable writes"
    );
    let mut all = Vec::new();
    let mut ok = true;
    for run in 0..opts.runs {
        let (f, good) = unlimited_once(opts, "overhead", n, &prompt).await;
        println!("run {run}: {f:?}");
        ok &= good;
        all.push(f);
    }
    print_table(&all);
    ok
}

async fn scale(opts: &Options) -> bool {
    let (prompt, bytes) = small_prompt();
    println!(
        "scale: {:?} items as in overhead (one prompt `{prompt}`, image {bytes} bytes)",
        opts.sizes
    );
    let mut rows = Vec::new();
    let mut ok = true;
    for &n in &opts.sizes {
        let mut runs = Vec::new();
        for _ in 0..opts.runs {
            let (f, good) = unlimited_once(opts, "scale", n, &prompt).await;
            println!("{n} items: {f:?}");
            ok &= good;
            runs.push(f);
        }
        let med = |name: &str| median(&mut runs.iter().map(|r| r.get(name)).collect::<Vec<_>>());
        rows.push((
            n,
            med("load s"),
            med("run s (wall - load)"),
            med("items/s end to end"),
            med("runner peak RSS MiB"),
            med("runner CPU s (user+sys)"),
            med("simulator CPU s"),
        ));
    }
    println!(
        "\n| items | load s | run s | items/s | peak RSS MiB | runner CPU s | simulator CPU s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, load, run, rate, rss, cpu, sim_cpu) in rows {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} |",
            fmt(load),
            fmt(run),
            fmt(rate),
            fmt(rss),
            fmt(cpu),
            fmt(sim_cpu)
        );
    }
    ok
}
