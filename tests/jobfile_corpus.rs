//! The corpus of job files: every file in `tests/jobfiles/bad/` must make `runner validate` exit
//! 2 with exactly the stderr in its `.expected` file; every file in `tests/jobfiles/good/` must
//! exit 0 with exactly the warnings in its `.expected` file (none when there is no such file).
//!
//! A fixture may ask for arguments on its first line: `# args: --strict`. After a deliberate
//! change of messages, `RUNNER_BLESS=1 cargo test --test jobfile_corpus` rewrites the
//! `.expected` files; review the diff before committing it.

#[path = "common/jobfile.rs"]
mod common;

use std::path::Path;

use common::{diff, fixture_args, fixtures, root, runner, texts};

fn check_dir(dir: &str, want_exit: i32) -> (usize, Vec<String>) {
    let bless = std::env::var_os("RUNNER_BLESS").is_some();
    let files = fixtures(dir, "yaml");
    let mut failures = Vec::new();
    for file in &files {
        let mut args: Vec<String> = vec!["validate".into()];
        args.extend(fixture_args(Path::new(file)));
        args.push(file.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = runner(&argv);
        let (stdout, stderr) = texts(&out);
        let expected_path = root().join(file.replace(".yaml", ".expected"));
        if bless && (want_exit != 0 || !stderr.is_empty()) {
            std::fs::write(&expected_path, &stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if out.status.code() != Some(want_exit) {
            failures.push(format!(
                "{file}: exit {:?}, want {want_exit}\n{stderr}",
                out.status.code()
            ));
            continue;
        }
        if want_exit == 0 && !stdout.starts_with("ok: 1 file, ") {
            failures.push(format!("{file}: stdout {stdout:?}"));
        }
        if want_exit != 0 && !stdout.is_empty() {
            failures.push(format!("{file}: unexpected stdout {stdout:?}"));
        }
        if stderr != expected {
            failures.push(format!(
                "{file}: stderr differs from {}:\n{}",
                expected_path.display(),
                diff(&expected, &stderr)
            ));
        }
    }
    (files.len(), failures)
}

#[test]
fn bad_job_files_report_exactly_the_expected_problems() {
    let (n, failures) = check_dir("tests/jobfiles/bad", 2);
    assert!(n >= 30, "only {n} bad fixtures found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_job_files_pass_with_exactly_the_expected_warnings() {
    let (n, failures) = check_dir("tests/jobfiles/good", 0);
    assert!(n >= 5, "only {n} good fixtures found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_bad_fixture_has_its_expected_stderr() {
    for file in fixtures("tests/jobfiles/bad", "yaml") {
        let expected = root().join(file.replace(".yaml", ".expected"));
        let text = std::fs::read_to_string(&expected)
            .unwrap_or_else(|_| panic!("{} is missing", expected.display()));
        assert!(
            text.lines().any(|l| l.contains(": error: ")),
            "{} holds no error",
            expected.display()
        );
    }
    for file in fixtures("tests/jobfiles/bad", "expected") {
        assert!(
            root().join(file.replace(".expected", ".yaml")).exists(),
            "{file} has no job file"
        );
    }
}
