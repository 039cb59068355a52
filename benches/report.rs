//! Benchmark: `runner report` and `runner export` on large finished batches: wall time and peak
//! resident memory, to show that memory does not grow with the batch.
//!
//!     cargo bench --bench report                          # batches of 5,000 and 20,000 items
//!     cargo bench --bench report -- --items 50000 --runs 3
//!
//! For each size, a store is made directly (one transaction: items of a 3-var template and
//! plain prompts, every item done with one 512x512 image, a tenth `review`, a tenth `block` and
//! skipped, submit and finish events spread over ten hours) and every archived image is a hard
//! link to one of four real PNGs. Then, each in its own child process so that the peak RSS
//! (`VmHWM` of the whole process) is that step's alone:
//!
//! - `report (first)`: a fresh report folder, every thumbnail made;
//! - `report (again)`: the same folder, every thumbnail up to date;
//! - `export jsonl`, `export csv`: to a file.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it returns at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use runner::api::{Size, Version};
use runner::jobfile::{ArchivePolicy, Item, Origin};
use runner::report::{self, ReportOptions, export};
use runner::store;
use sha2::Digest;

const BATCH: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let step = args[i + 1].clone();
        let dir = PathBuf::from(&args[i + 2]);
        rt.block_on(child(&step, &dir));
        return;
    }
    let sizes: Vec<usize> = value(&args, "--items")
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("--items N,N"))
                .collect()
        })
        .unwrap_or_else(|| vec![5_000, 20_000]);
    let runs: usize = value(&args, "--runs").map_or(3, |v| v.parse().expect("--runs N"));
    println!("| items | step | median | min | max | peak RSS (max) | result |");
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let temp = tempfile::tempdir().expect("temp dir");
        let setup = Instant::now();
        rt.block_on(make_store(temp.path(), n));
        eprintln!(
            "{n} items: store and archive made in {:.1} s",
            setup.elapsed().as_secs_f64()
        );
        let steps: Vec<&str> = match value(&args, "--steps") {
            Some(s) => s.split(',').collect(),
            None => vec!["report-first", "report-again", "export-jsonl", "export-csv"],
        };
        for step in steps {
            let mut times = Vec::new();
            let mut peak = 0u64;
            let mut result = String::new();
            for _ in 0..runs {
                if step == "report-first" {
                    let _ = std::fs::remove_dir_all(temp.path().join("report"));
                }
                let out = Command::new(std::env::current_exe().expect("own path"))
                    .args(["--bench", "--child", step])
                    .arg(temp.path())
                    .output()
                    .expect("run child");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let mut parts = line.splitn(3, ' ');
                times.push(parts.next().unwrap_or("0").parse::<f64>().unwrap_or(0.0));
                peak = peak.max(parts.next().unwrap_or("0").parse().unwrap_or(0));
                result = parts.next().unwrap_or("").to_string();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "| {n} | {step} | {:.2} s | {:.2} s | {:.2} s | {:.1} MiB | {result} |",
                times[times.len() / 2],
                times[0],
                times[times.len() - 1],
                peak as f64 / 1024.0
            );
        }
    }
    println!("\n{runs} runs per step");
}

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)
}

/// One step in this process; prints `seconds peak_kib result`.
async fn child(step: &str, dir: &Path) {
    let store = store::open_read_only(&dir.join("runner.db"))
        .await
        .expect("store");
    let start = Instant::now();
    let result = match step {
        "report-first" | "report-again" => {
            let opts = ReportOptions {
                out: dir.join("report"),
                archive: dir.join("archive"),
                batch: None,
                thumb_side: 256,
                jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            };
            let s = report::generate(store.as_ref(), &opts)
                .await
                .expect("report");
            let b = &s.batches[0];
            let page = std::fs::metadata(&b.page).map(|m| m.len()).unwrap_or(0);
            format!(
                "{} cards, {} thumbnails made, {} unchanged, page {:.1} MiB",
                b.cards,
                b.thumbs_made,
                b.thumbs_unchanged,
                page as f64 / 1048576.0
            )
        }
        "export-jsonl" | "export-csv" => {
            let format = if step == "export-csv" {
                export::Format::Csv
            } else {
                export::Format::Jsonl
            };
            let path = dir.join(format!("{step}.out"));
            let mut out =
                std::io::BufWriter::new(std::fs::File::create(&path).expect("export file"));
            let n = export::write(store.as_ref(), None, format, false, &mut out)
                .await
                .expect("export");
            drop(out);
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            format!("{n} rows, {:.1} MiB", bytes as f64 / 1048576.0)
        }
        // Diagnostic: the report's query alone, drained without making anything.
        "cells" => {
            let pivots = BTreeMap::from([("{a}的{b}，{c}".to_string(), "c".to_string())]);
            let mut cells = store.report_cells(BATCH, &pivots);
            let mut n = 0;
            while let Some(c) = futures::StreamExt::next(&mut cells).await {
                c.expect("cell");
                n += 1;
            }
            format!("{n} cells")
        }
        other => panic!("unknown step {other}"),
    };
    println!(
        "{:.3} {} {result}",
        start.elapsed().as_secs_f64(),
        peak_rss_kib()
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

/// A 512x512 PNG: stripes of two colours.
fn png(seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 512, 512);
    enc.set_color(png::ColorType::Rgb);
    let mut w = enc.write_header().expect("header");
    let mut data = Vec::with_capacity(512 * 512 * 3);
    for y in 0..512u32 {
        for x in 0..512u32 {
            let on = ((x + y + u32::from(seed) * 7) / 16) % 2 == 0;
            data.extend(if on {
                [seed.wrapping_mul(60), 120, 200]
            } else {
                [30, seed.wrapping_mul(90), 60]
            });
        }
    }
    w.write_image_data(&data).expect("pixels");
    w.finish().expect("finish");
    out
}

/// A finished batch of `n` items: half a template `{a}的{b}，{c}` (pivoted in the report), half
/// plain prompts.
async fn make_store(dir: &Path, n: usize) {
    let db = dir.join("runner.db");
    let half = n / 2;
    let b_values = 10;
    let c_values = 5;
    let items: Vec<Item> = (0..n)
        .map(|i| {
            let templated = i < half;
            let (a, b, c) = (
                i / (b_values * c_values),
                (i / c_values) % b_values,
                i % c_values,
            );
            Item {
                key: format!("{:032x}", (i as u128 + 1) * 0x9E37_79B9_7F4A_7C15),
                batch: BATCH.into(),
                prompt: if templated {
                    format!("山{a}的水{b}，画{c}")
                } else {
                    format!("一只猫，编号{i}")
                },
                size: Size::new(512, 512),
                version: Version::V2,
                image_num: 1,
                variant: 0,
                tags: BTreeMap::from([("sku".to_string(), format!("S-{}", i % 97))]),
                vars: if templated {
                    BTreeMap::from([
                        ("a".to_string(), format!("山{a}")),
                        ("b".to_string(), format!("水{b}")),
                        ("c".to_string(), format!("画{c}")),
                    ])
                } else {
                    BTreeMap::new()
                },
                template: templated.then(|| "{a}的{b}，{c}".to_string()),
                line: i as u32,
                origin: Origin::JobFile,
            }
        })
        .collect();
    {
        let store = store::open(&db).await.expect("store");
        store
            .load_items(BATCH, ArchivePolicy::default(), "bench.yaml", &items)
            .await
            .expect("load");
        store.close().await;
    }
    // Four real images; every archived image is a hard link to one of them.
    let sources: Vec<(PathBuf, String, u64)> = (0..4u8)
        .map(|s| {
            let bytes = png(s + 1);
            let p = dir.join(format!("source-{s}.png"));
            std::fs::write(&p, &bytes).expect("source");
            (
                p,
                hex::encode(sha2::Sha256::digest(&bytes)),
                bytes.len() as u64,
            )
        })
        .collect();
    let pool = runner::store::pool_options()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&db))
        .await
        .expect("pool");
    let mut tx = pool.begin().await.expect("tx");
    let start_ms: i64 = 1_795_000_000_000;
    let span_ms = 10 * 3600 * 1000 / n.max(1) as i64;
    for (i, it) in items.iter().enumerate() {
        let at = start_ms + i as i64 * span_ms;
        let verdict = match i % 10 {
            3 => "review",
            7 => "block",
            _ => "pass",
        };
        let (src, sha, bytes) = &sources[i % sources.len()];
        let kept = verdict != "block";
        let rel = format!("images/{}/{}-0.png", &it.key[..2], it.key);
        if kept {
            let dest = dir.join("archive").join(BATCH).join(&rel);
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("dir");
            std::fs::hard_link(src, &dest).expect("link");
        }
        sqlx::query(
            "UPDATE items SET state = 'done', task_id = ?2, submitted_at = ?3, finished_at = ?4,
                 done_at = ?4, updated_at = ?4 WHERE key = ?1",
        )
        .bind(&it.key)
        .bind(format!("{}", 1_700_000_000_000_000_000u64 + i as u64))
        .bind(at)
        .bind(at + 20_000)
        .execute(&mut *tx)
        .await
        .expect("item");
        sqlx::query(
            "INSERT INTO images (item_key, idx, state, verdict, width, height, url_expires_at,
                 listed_at, path, sha256, bytes, archived_at, slack_ms)
             VALUES (?1, 0, ?2, ?3, 512, 512, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&it.key)
        .bind(if kept { "archived" } else { "skipped" })
        .bind(verdict)
        .bind(kept.then_some(at + 3_620_000))
        .bind(at + 20_000)
        .bind(kept.then_some(rel))
        .bind(kept.then_some(sha.clone()))
        .bind(kept.then_some(*bytes as i64))
        .bind(kept.then_some(at + 21_000))
        .bind(kept.then_some(3_599_000i64))
        .execute(&mut *tx)
        .await
        .expect("image");
        for (kind, t) in [("submitted", at), ("finished", at + 20_000)] {
            sqlx::query("INSERT INTO events (at, batch, item_key, kind) VALUES (?, ?, ?, ?)")
                .bind(t)
                .bind(BATCH)
                .bind(&it.key)
                .bind(kind)
                .execute(&mut *tx)
                .await
                .expect("event");
        }
    }
    tx.commit().await.expect("commit");
    pool.close().await;
}
