//! The job-file parser, fuzzed with proptest: mutations of every job file in the repository
//! (byte flips, YAML-significant tokens spliced in, deletions, duplications, truncations,
//! repeated lines) and generated documents built from the language's own keys and values.
//! No input may panic; every answer is either a valid job whose items keep the language's rules,
//! or diagnostics with at least one error, each with a position.
//!
//! The normal suite runs 2,000 cases. The long run (see RELIABILITY.md):
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --release --test reliability_fuzz -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use runner::api::MAX_PROMPT_CHARS;
use runner::jobfile::{self, LoadOptions, item_key};

/// Every job file and prompts file in the repository: the seeds of the mutations.
fn seeds() -> &'static [(String, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut out = Vec::new();
        for dir in ["tests/jobfiles/good", "tests/jobfiles/bad", "jobs"] {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .expect("seed folder")
                .map(|e| e.expect("entry").path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "txt")
                })
                .collect();
            entries.sort();
            for p in entries {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&p).expect("seed")));
            }
        }
        assert!(out.len() > 40, "seed corpus found: {}", out.len());
        out
    })
}

/// Tokens that mean something to YAML or to the job-file language.
const TOKENS: &[&str] = &[
    ": ",
    "- ",
    "-",
    ":",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "&b [*a, *a, *a]",
    "!!str ",
    "!!int ",
    "!!binary ",
    "!custom ",
    "? ",
    "|",
    "|-\n",
    ">",
    "\"",
    "'",
    "#",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "\r\n",
    "\r",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "%TAG ! tag:x:\n",
    "<<: *a\n",
    "~",
    "null",
    "true",
    "no",
    "1e999",
    "-1",
    "0",
    "0x10",
    "0o7",
    ".inf",
    "-.nan",
    "1_000",
    "99999999999999999999999999",
    "4294967296",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\\",
    "猫",
    "\u{3000}",
    "\u{202e}",
    "\u{feff}",
    "\u{0}",
    "😀",
    "{animal}",
    "{",
    "}}",
    "{{",
    "{a}{b}",
    "batch: ",
    "batch: x\n",
    "prompts:\n",
    "prompts: []\n",
    "prompt: ",
    "template: ",
    "vars: ",
    "vars: {a: [1, 2]}\n",
    "prompts_file: ",
    "prompts_file: catalog-prompts.txt\n",
    "sizes: ",
    "sizes: [512x512]\n",
    "repeat: ",
    "repeat: 1000\n",
    "max_items: 1000000\n",
    "image_num: ",
    "image_num: 8\n",
    "version: v1\n",
    "version: ",
    "archive: {review: skip, block: keep}\n",
    "tags: ",
    "tags: {a: b}\n",
    "model: ",
    "1024x1024",
    "512X512",
    "3840×2160",
    "x",
    "*",
    "{width: 512, height: 512}",
    "{width: -1, height: 1e9}",
];

/// One edit of a document.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the byte at a position.
    Flip(Index, u8),
    /// Insert a token at a position.
    Insert(Index, &'static str),
    /// Delete up to `n` bytes from a position.
    Delete(Index, usize),
    /// Copy up to `n` bytes from one position to another.
    Duplicate(Index, usize, Index),
    /// Cut everything after a position.
    Truncate(Index),
    /// Repeat the line at a position `n` times.
    RepeatLine(Index, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        4 => (any::<Index>(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Edit::Insert(i, t)),
        2 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        2 => (any::<Index>(), 1usize..256, any::<Index>())
            .prop_map(|(a, n, b)| Edit::Duplicate(a, n, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), 1usize..200).prop_map(|(i, n)| Edit::RepeatLine(i, n)),
    ]
}

fn apply(doc: &mut Vec<u8>, e: &Edit) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
    match e {
        Edit::Flip(i, b) if !doc.is_empty() => {
            let p = i.index(doc.len());
            doc[p] = *b;
        }
        Edit::Flip(..) => doc.push(b'x'),
        Edit::Insert(i, t) => {
            let p = at(i, doc.len());
            doc.splice(p..p, t.bytes());
        }
        Edit::Delete(i, n) => {
            let p = at(i, doc.len()).min(doc.len());
            let end = (p + n).min(doc.len());
            doc.drain(p..end);
        }
        Edit::Duplicate(a, n, b) => {
            let p = at(a, doc.len()).min(doc.len());
            let end = (p + n).min(doc.len());
            let piece = doc[p..end].to_vec();
            let q = at(b, doc.len());
            doc.splice(q..q, piece);
        }
        Edit::Truncate(i) => {
            let p = at(i, doc.len()).min(doc.len());
            doc.truncate(p);
        }
        Edit::RepeatLine(i, n) => {
            let p = at(i, doc.len()).min(doc.len());
            let start = doc[..p]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |x| x + 1);
            let end = doc[p..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(doc.len(), |x| p + x + 1);
            let mut line = doc[start..end].to_vec();
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let copies: Vec<u8> = line.repeat(*n);
            doc.splice(end..end, copies);
        }
    }
}

/// A seed mutated by one edit (often), a few, or up to 8.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop_oneof![
        3 => prop::collection::vec(edit(), 1..2),
        2 => prop::collection::vec(edit(), 1..4),
        1 => prop::collection::vec(edit(), 1..9),
    ];
    (any::<Index>(), edits).prop_map(|(i, edits)| {
        let seeds = seeds();
        let mut doc = seeds[i.index(seeds.len())].1.clone();
        for e in &edits {
            apply(&mut doc, e);
        }
        doc
    })
}

/// A document built from the language's keys and plausible (and implausible) values.
fn generated() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        prop::sample::select(vec![
            "v1",
            "v2",
            "512x512",
            "1024x1024",
            "640x360",
            "keep",
            "skip",
            "猫",
            "一只猫",
            "{a}在{b}",
            "ernie-vilg-v2",
            "1",
            "8",
            "0",
            "-3",
            "1000000",
            "true",
            "null",
            "~",
            "\"\"",
            "''",
            "x",
            "2048x2048",
        ])
        .prop_map(str::to_string),
        "[a-z0-9_-]{0,70}",
        "\\PC{0,40}",
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let key = prop::sample::select(vec![
        "batch",
        "model",
        "version",
        "image_num",
        "sizes",
        "repeat",
        "tags",
        "max_items",
        "archive",
        "review",
        "block",
        "prompts_file",
        "prompts",
        "prompt",
        "template",
        "vars",
        "width",
        "height",
        "a",
        "b",
        "unknown_key",
    ]);
    let leaf = prop_oneof![
        scalar.clone().prop_map(serde_json::Value::String),
        any::<i32>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
    ];
    let tree = leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key.clone().prop_map(str::to_string), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    (tree, any::<bool>()).prop_map(|(t, block)| {
        // JSON is YAML; the block style goes through serde's YAML-ish rendering by hand.
        if block {
            let mut s = String::new();
            to_block(&t, 0, &mut s);
            s.into_bytes()
        } else {
            serde_json::to_vec(&t).unwrap_or_default()
        }
    })
}

/// A job file built the way people write them, from the language's keys with values that are
/// mostly valid (each choice has a small chance of a wrong value): it reaches expansion,
/// templates, keys and duplicates, not just the parser.
fn structured() -> impl Strategy<Value = Vec<u8>> {
    let q = |s: String| serde_json::to_string(&s).unwrap_or_default();
    let size = prop_oneof![
        12 => prop::sample::select(vec!["512x512", "640x360", "360x640", "1024x1024", "1280x720"]),
        2 => prop::sample::select(vec!["2048x2048", "2560x1440", "3840x2160", "1024X1024", "512×512"]),
        1 => prop::sample::select(vec!["100x100", "512x", "x", "0x0", "99999999999x1"]),
    ];
    let sizes = prop::collection::vec(size, 1..4).prop_map(|v| format!("[{}]", v.join(", ")));
    let prompt = prop_oneof![
        12 => "[一二三四五六七八九十猫狗山水花鸟春夏秋冬 ，。、！？]{1,40}",
        1 => "[a-zA-Z #@/.]{1,30}",
        1 => "\\PC{0,60}",
        1 => "[猫]{195,205}",
        1 => "[ \t\u{3000}]{0,3}",
    ];
    let image_num = prop_oneof![9 => 1u32..9, 1 => 0u32..20];
    let repeat = prop_oneof![9 => 1u32..4, 1 => Just(0u32)];
    let version = prop::sample::select(vec!["v2", "v2", "v2", "v1", "v3"]);
    let tags =
        prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9./ ]{0,8}", 0..3).prop_map(move |m| {
            let parts: Vec<String> = m
                .into_iter()
                .map(|(k, v)| format!("{}: {}", q(k), q(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        });
    let settings = (
        prop::option::of(sizes.clone()),
        prop::option::of(image_num.clone()),
        prop::option::of(repeat),
        prop::option::weighted(0.3, version),
        prop::option::of(tags),
    )
        .prop_map(|(sizes, n, repeat, version, tags)| {
            let mut out = Vec::new();
            if let Some(s) = sizes {
                out.push(format!("sizes: {s}"));
            }
            if let Some(n) = n {
                out.push(format!("image_num: {n}"));
            }
            if let Some(r) = repeat {
                out.push(format!("repeat: {r}"));
            }
            if let Some(v) = version {
                out.push(format!("version: {v}"));
            }
            if let Some(t) = tags {
                out.push(format!("tags: {t}"));
            }
            out
        });
    let plain = prompt.clone().prop_map(q);
    let with_settings = (prompt.clone(), settings.clone()).prop_map(move |(p, mut s)| {
        s.insert(0, format!("prompt: {}", q(p)));
        format!("{{{}}}", s.join(", "))
    });
    // Vars first, the template made of them; sometimes spoiled by a stray brace or an unknown
    // placeholder.
    let template = (
        prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "动物", "地点", "c_d"]),
            prop::collection::vec("[一二三猫狗]{0,3}", 1..4),
            1..3,
        ),
        "[在和的]{0,2}",
        prop::option::weighted(
            0.15,
            prop::sample::select(vec!["}", "{", "{unknown}", "{{", "}}", "{}"]),
        ),
        settings,
    )
        .prop_map(move |(vars, glue, spoil, mut s)| {
            let mut text: String = vars
                .keys()
                .map(|k| format!("{{{k}}}"))
                .collect::<Vec<_>>()
                .join(&glue);
            if let Some(x) = spoil {
                text.push_str(x);
            }
            let vars: Vec<String> = vars
                .into_iter()
                .map(|(k, vs)| {
                    let vs: Vec<String> = vs.into_iter().map(&q).collect();
                    format!("{}: [{}]", q(k.to_string()), vs.join(", "))
                })
                .collect();
            s.insert(0, format!("template: {}", q(text)));
            s.insert(1, format!("vars: {{{}}}", vars.join(", ")));
            format!("{{{}}}", s.join(", "))
        });
    let entry = prop_oneof![3 => plain, 2 => with_settings, 2 => template];
    let batch = prop_oneof![19 => "[a-z0-9][a-z0-9_-]{0,20}", 1 => "\\PC{0,10}"];
    (
        batch,
        prop::option::of(sizes),
        prop::option::of(image_num),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["10", "1", "0", "1000000", "2000000", "50"]),
        ),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["{review: skip}", "{block: keep}", "{review: maybe}"]),
        ),
        prop_oneof![19 => prop::collection::vec(entry.clone(), 1..8), 1 => prop::collection::vec(entry, 0..1)],
    )
        .prop_map(move |(batch, sizes, n, max, archive, entries)| {
            let mut out = format!("batch: {}\n", q(batch));
            if let Some(s) = sizes {
                out.push_str(&format!("sizes: {s}\n"));
            }
            if let Some(n) = n {
                out.push_str(&format!("image_num: {n}\n"));
            }
            if let Some(m) = max {
                out.push_str(&format!("max_items: {m}\n"));
            }
            if let Some(a) = archive {
                out.push_str(&format!("archive: {a}\n"));
            }
            out.push_str("prompts:\n");
            for e in entries {
                out.push_str(&format!("  - {e}\n"));
            }
            out.into_bytes()
        })
}

/// Renders a JSON value as block-style YAML (plain scalars where they are plain).
fn to_block(v: &serde_json::Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{k}:"));
                match v {
                    serde_json::Value::Object(x) if !x.is_empty() => {
                        out.push('\n');
                        to_block(v, indent + 2, out);
                    }
                    serde_json::Value::Array(x) if !x.is_empty() => {
                        out.push('\n');
                        to_block(v, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&plain(v));
                        out.push('\n');
                    }
                }
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for v in a {
                out.push_str(&format!("{pad}- "));
                match v {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        out.push('\n');
                        to_block(v, indent + 2, out);
                    }
                    _ => {
                        out.push_str(&plain(v));
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&plain(other));
            out.push('\n');
        }
    }
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Loads `doc` as a job file and checks the answer: `Ok(true)` for a valid job, `Ok(false)` for
/// a refused one, `Err` describing a broken rule.
fn check(dir: &Path, doc: &[u8], strict: bool) -> Result<bool, String> {
    let path = dir.join("job.yaml");
    std::fs::write(&path, doc).map_err(|e| e.to_string())?;
    match jobfile::load(&path, &LoadOptions { strict }) {
        Ok(job) => {
            if !runner::archive::is_safe_batch(&job.batch) {
                return Err(format!("unsafe batch name {:?} accepted", job.batch));
            }
            if job.items.is_empty() {
                return Err("a valid job without items".into());
            }
            let mut keys = std::collections::HashSet::new();
            for it in &job.items {
                let chars = it.prompt.chars().count();
                if chars == 0 || chars > MAX_PROMPT_CHARS {
                    return Err(format!("prompt of {chars} characters accepted"));
                }
                if it.prompt.trim() != it.prompt {
                    return Err(format!("untrimmed prompt {:?}", it.prompt));
                }
                if !it.version.allows(it.size) {
                    return Err(format!("{} accepted for {}", it.size, it.version));
                }
                if !(1..=8).contains(&it.image_num) {
                    return Err(format!("image_num {} accepted", it.image_num));
                }
                if it.batch != job.batch {
                    return Err("an item of another batch".into());
                }
                let key = item_key(
                    &it.batch,
                    &it.prompt,
                    it.size,
                    it.version,
                    it.image_num,
                    it.variant,
                );
                if it.key != key {
                    return Err(format!("key {} is not the item's key {key}", it.key));
                }
                if !keys.insert(it.key.clone()) {
                    return Err(format!("duplicate key {}", it.key));
                }
            }
            for w in &job.warnings {
                if w.is_error() {
                    return Err(format!("an error among the warnings: {w}"));
                }
            }
            Ok(true)
        }
        Err(e) => {
            if e.error_count() == 0 {
                return Err(format!("refused without an error: {e}"));
            }
            for d in &e.diagnostics {
                if d.line == 0 || d.col == 0 || d.message.is_empty() {
                    return Err(format!("diagnostic without a position or message: {d:?}"));
                }
                let _ = d.to_string();
            }
            Ok(false)
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}

fn fuzz(name: &str, strategy: impl Strategy<Value = Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    // Prompts files the seeds name, so `prompts_file` sometimes resolves.
    for (n, bytes) in seeds().iter().filter(|(n, _)| n.ends_with(".txt")) {
        std::fs::write(dir.path().join(n), bytes).unwrap();
    }
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let valid = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&(strategy, any::<bool>()), |(doc, strict)| {
        let ok = check(dir.path(), &doc, strict).map_err(TestCaseError::fail)?;
        valid.fetch_add(u64::from(ok), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    let valid = valid.into_inner();
    eprintln!(
        "{name}: {n} cases in {:.1}s ({:.0} µs per case), {valid} valid jobs, {} refused with diagnostics",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() * 1e6 / f64::from(n.max(1)),
        u64::from(n) - valid
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn mutated_job_files_never_panic_and_keep_the_rules() {
    fuzz("mutated", mutated());
}

#[test]
fn generated_job_files_never_panic_and_keep_the_rules() {
    fuzz("generated", generated());
}

#[test]
fn structured_job_files_never_panic_and_keep_the_rules() {
    fuzz("structured", structured());
}

/// Whether a seed comes from the corpus of invalid job files.
fn is_bad(name: &str) -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    root.join("tests/jobfiles/bad").join(name).exists()
}

#[test]
fn every_seed_loads_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in seeds() {
        if name.ends_with(".txt") {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds().iter().filter(|(n, _)| !n.ends_with(".txt")) {
        // The good corpus loads; the bad one is refused (some only under --strict).
        let bad = is_bad(name);
        let valid = check(dir.path(), bytes, bad).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(valid, !bad, "{name}");
    }
}
