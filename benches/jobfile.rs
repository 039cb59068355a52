//! Benchmark: load and validate 100,000-item job files (three shapes), median wall time and peak
//! resident memory.
//!
//!     cargo bench --bench jobfile                       # 7 runs per case
//!     cargo bench --bench jobfile -- --runs 11 --keep /tmp/jobfiles
//!
//! `--keep DIR` also leaves the generated files there, for
//! `/usr/bin/time -v target/release/runner validate DIR/template.yaml`.
//!
//! Each case runs in its own child process, so the peak RSS (`VmHWM` from /proc/self/status,
//! the whole process: binary, runtime and the loaded job) belongs to that case alone. Without
//! `--bench` (as under `cargo test --all-targets`) it returns at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use runner::jobfile::{self, LoadOptions};

/// Items in every generated job file.
const ITEMS: usize = 100_000;

/// The three shapes of a 100,000-item job file.
const CASES: &[(&str, &str)] = &[
    ("template", "one template, vars 100 × 100 × 10"),
    ("prompts-file", "100,000 lines in a prompts_file"),
    ("inline", "100,000 plain prompts in the YAML"),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]), arg(&args, "--runs").unwrap_or(7));
        return;
    }
    let runs = arg(&args, "--runs").unwrap_or(7);
    let kept = args
        .iter()
        .position(|a| a == "--keep")
        .map(|i| PathBuf::from(&args[i + 1]));
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("create dir");
    generate(&dir);
    println!("| case | file | items | median | min | max | peak RSS |");
    println!("|---|---|---|---|---|---|---|");
    for (name, what) in CASES {
        let file = dir.join(format!("{name}.yaml"));
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["--bench", "--child"])
            .arg(&file)
            .args(["--runs", &runs.to_string()])
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        println!("| {what} | {name}.yaml | {}", line.trim());
    }
    println!(
        "\n{runs} runs per case; files in {}",
        if kept.is_some() {
            dir.display().to_string()
        } else {
            "a temp dir".into()
        }
    );
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

/// Loads one job file `runs` times; prints items, median, min, max and the peak RSS.
fn child(file: &Path, runs: usize) {
    let mut times = Vec::with_capacity(runs);
    let mut items = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let job = jobfile::load(file, &LoadOptions::default()).expect("valid job file");
        items = job.items.len();
        drop(job);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak_kib = peak_rss_kib();
    println!(
        "{items} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB |",
        median * 1e3,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        peak_kib as f64 / 1024.0
    );
}

/// Peak resident set size of this process, KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Chinese words to build distinct prompts from.
const WORDS: &[&str] = &[
    "猫", "狗", "鸟", "鱼", "马", "牛", "羊", "兔", "鹿", "熊", "山", "水", "花", "树", "云", "雨",
    "雪", "风", "月", "星",
];

/// A distinct, valid prompt for `i` (about 20 characters).
fn prompt(i: usize) -> String {
    let (a, b, c) = (i % 20, (i / 20) % 20, (i / 400) % 20);
    format!(
        "一幅水墨画，{}与{}在{}下，编号{i}",
        WORDS[a], WORDS[b], WORDS[c]
    )
}

fn generate(dir: &Path) {
    // Template: 100 × 100 × 10 = 100,000 combinations.
    let list = |n: usize, tag: &str| {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let template = format!(
        "batch: bench-template\nmax_items: {ITEMS}\nsizes: [512x512]\nprompts:\n  - template: \"{{a}}的{{b}}在{{c}}\"\n    vars:\n      a: [{}]\n      b: [{}]\n      c: [{}]\n",
        list(100, "猫"),
        list(100, "山"),
        list(10, "园"),
    );
    std::fs::write(dir.join("template.yaml"), template).expect("write");

    let mut lines = String::with_capacity(ITEMS * 48);
    lines.push_str("# 100,000 prompts\n");
    for i in 0..ITEMS {
        lines.push_str(&prompt(i));
        lines.push('\n');
    }
    std::fs::write(dir.join("prompts.txt"), &lines).expect("write");
    std::fs::write(
        dir.join("prompts-file.yaml"),
        format!("batch: bench-prompts-file\nmax_items: {ITEMS}\nsizes: [512x512]\nprompts_file: prompts.txt\n"),
    )
    .expect("write");

    let mut inline =
        format!("batch: bench-inline\nmax_items: {ITEMS}\nsizes: [512x512]\nprompts:\n");
    for i in 0..ITEMS {
        inline.push_str("  - ");
        inline.push_str(&prompt(i));
        inline.push('\n');
    }
    std::fs::write(dir.join("inline.yaml"), inline).expect("write");
}
