//! `runner validate` and `runner plan` as a user runs them: exit codes, the summary line, the
//! plan's totals and estimate, its JSON, and the example job file.

#[path = "common/jobfile.rs"]
mod common;

use std::path::Path;

use common::{runner, texts};
use runner::jobfile::{self, LoadOptions};

const CATALOG: &str = "jobs/catalog.yaml";

#[test]
fn the_example_catalog_is_valid_and_small_enough_for_the_demo() {
    let out = runner(&["validate", CATALOG]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "ok: 1 file, 43 items, 51 images\n");
    assert_eq!(stderr, "");
}

#[test]
fn the_example_catalog_uses_every_feature() {
    let path = common::root().join(CATALOG);
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "batch:",
        "model:",
        "version:",
        "image_num:",
        "sizes:",
        "repeat:",
        "max_items:",
        "tags:",
        "archive:",
        "review:",
        "block:",
        "prompts_file:",
        "prompts:",
        "prompt:",
        "template:",
        "vars:",
        "{width:",
    ] {
        assert!(text.contains(key), "jobs/catalog.yaml does not use `{key}`");
    }
    let job = jobfile::load(&path, &LoadOptions::default()).unwrap();
    let images = job.images();
    assert!(
        (30..=60).contains(&job.items.len()),
        "{} items",
        job.items.len()
    );
    assert!(images < 80, "{images} images");
    assert!(
        job.items
            .iter()
            .any(|i| i.origin == jobfile::Origin::PromptsFile)
    );
    assert!(job.items.iter().any(|i| i.template.is_some()));
    assert!(job.items.iter().any(|i| i.variant > 0));
    assert!(
        job.items
            .iter()
            .any(|i| i.version == runner::api::Version::V1)
    );
    assert!(job.items.iter().any(|i| i.image_num > 1));
}

#[test]
fn validate_sums_up_several_files_on_one_line() {
    let out = runner(&[
        "validate",
        CATALOG,
        "tests/jobfiles/good/minimal.yaml",
        "tests/jobfiles/good/latin.yaml",
    ]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout, "ok: 3 files, 49 items, 57 images (4 warnings)\n");
    assert_eq!(
        stderr.lines().filter(|l| l.contains(": warning: ")).count(),
        4
    );
}

#[test]
fn validate_exits_2_when_any_file_is_invalid_or_missing() {
    let out = runner(&[
        "validate",
        CATALOG,
        "tests/jobfiles/bad/model.yaml",
        "tests/jobfiles/no-such.yaml",
    ]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "tests/jobfiles/bad/model.yaml:3:8: error: model `ernie-vilg-v3` is not supported\n  \
         hint: the only model is `ernie-vilg-v2`; write `model: ernie-vilg-v2` or leave `model` out\n\
         tests/jobfiles/no-such.yaml:1:1: error: the job file does not exist\n\
         invalid: 2 of 3 files (2 errors, 0 warnings)\n"
    );
}

#[test]
fn strict_turns_character_warnings_into_errors() {
    let lenient = runner(&["validate", "tests/jobfiles/good/latin.yaml"]);
    assert_eq!(lenient.status.code(), Some(0));
    let strict = runner(&["validate", "--strict", "tests/jobfiles/good/latin.yaml"]);
    let (stdout, stderr) = texts(&strict);
    assert_eq!(strict.status.code(), Some(2));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.lines().filter(|l| l.contains(": error: ")).count(),
        4
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(runner(&["validate"]).status.code(), Some(2));
    assert_eq!(runner(&["plan"]).status.code(), Some(2));
    let out = runner(&["plan", CATALOG, "--concurrency", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(texts(&out).1.contains("--concurrency must be at least 1"));
    assert_eq!(
        runner(&["plan", CATALOG, "--mean-gen-secs", "0"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn plan_prints_items_totals_and_the_estimate() {
    let out = runner(&["plan", CATALOG, "--daily-quota", "20"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rows = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(rows, 20, "{stdout}");
    for line in [
        "   … 23 more (--all shows every item)",
        "items:  43",
        "images: 51",
        "  size 512x512    26 items, 26 images",
        "  size 1280x720   3 items, 6 images",
        "  version v1     6 items, 12 images",
        "  version v2     37 items, 39 images",
        "estimate: 8m 30s = max(generation 51 images × 20 s / 2 slots = 510 s, submits 43 items / 1 per s = 43 s)",
        "quota: 3 days at 20 images per day",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    let all = texts(&runner(&["plan", CATALOG, "--all"])).0;
    let rows = all
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(rows, 43);
    assert!(!all.contains("more (--all"));
    assert!(!all.contains("quota:"));
}

#[test]
fn plan_json_has_totals_estimate_and_every_item() {
    let out = runner(&[
        "plan",
        CATALOG,
        "--json",
        "--concurrency",
        "4",
        "--mean-gen-secs",
        "1",
        "--submit-qps",
        "0.5",
        "--daily-quota",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"], 43);
    assert_eq!(v["images"], 51);
    assert_eq!(v["batch"], "spring-catalog");
    assert_eq!(v["by_size"]["512x512"]["images"], 26);
    assert_eq!(v["by_size"]["640x360"]["items"], 9);
    assert_eq!(v["by_version"]["v1"]["images"], 12);
    // Submits bound this one: 43 items at 0.5/s = 86 s; generation 51 × 1 / 4 = 12.75 s.
    assert_eq!(v["generation_secs"], 12.75);
    assert_eq!(v["submit_secs"], 86.0);
    assert_eq!(v["estimate_secs"], 86.0);
    assert_eq!(v["quota_days"], 2);
    let list = v["item_list"].as_array().unwrap();
    assert_eq!(list.len(), 43);
    let job = jobfile::load(&common::root().join(CATALOG), &LoadOptions::default()).unwrap();
    for (json, item) in list.iter().zip(&job.items) {
        assert_eq!(json["key"], item.key.as_str());
        assert_eq!(json["prompt"], item.prompt.as_str());
        assert_eq!(json["size"], item.size.to_string());
        assert_eq!(json["version"], item.version.as_str());
        assert_eq!(json["image_num"], item.image_num);
        assert_eq!(json["variant"], item.variant);
        assert!(json["tags"]["campaign"].is_string());
    }
    // Without a quota there are no quota days.
    let v: serde_json::Value =
        serde_json::from_slice(&runner(&["plan", CATALOG, "--json"]).stdout).unwrap();
    assert!(v["quota_days"].is_null());
    assert_eq!(v["estimate_secs"], 510.0);
}

#[test]
fn plan_of_an_invalid_file_exits_2_with_the_diagnostics() {
    let out = runner(&["plan", "tests/jobfiles/bad/image-num.yaml", "--json"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(
            "tests/jobfiles/bad/image-num.yaml:3:12: error: `image_num` must be from 1 to 8, found 0\n"
        ),
        "{stderr}"
    );
}

#[test]
fn reformatted_job_files_give_the_same_keys() {
    let load = |name: &str| {
        let path = common::root().join(Path::new("tests/jobfiles/good").join(name));
        let job = jobfile::load(&path, &LoadOptions::default()).unwrap();
        job.items.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    let a = load("reformatted-a.yaml");
    assert_eq!(a.len(), 14);
    assert_eq!(a, load("reformatted-b.yaml"));
    assert_eq!(a, load("reformatted-a.yaml"));
}

#[test]
fn an_oversized_job_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(jobfile::MAX_FILE_BYTES + 1)
        .unwrap();
    let big = big.to_str().unwrap();
    let out = runner(&["validate", big]);
    let (_, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr.lines().next().unwrap(),
        format!(
            "{big}:1:1: error: the job file is 67108865 bytes, over the limit of 67108864 bytes (64 MiB)"
        )
    );
}
