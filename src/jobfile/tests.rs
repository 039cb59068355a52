//! Rule-by-rule tests of [`load`]: each writes a job file into a temp dir and checks the items
//! or the exact diagnostics (`LINE:COL: severity: message`).

use std::path::PathBuf;

use super::*;
use crate::api::{Size, Verdict, Version};

/// A temp dir holding `job.yaml` (and whatever else a test writes).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn load(&self, yaml: &str) -> Result<JobFile, JobFileError> {
        self.load_with(yaml, false)
    }

    fn load_with(&self, yaml: &str, strict: bool) -> Result<JobFile, JobFileError> {
        let path = self.write("job.yaml", yaml);
        load(&path, &LoadOptions { strict })
    }
}

fn ok(yaml: &str) -> JobFile {
    match Fixture::new().load(yaml) {
        Ok(job) => job,
        Err(e) => panic!("expected a valid job file, got:\n{e}"),
    }
}

/// The diagnostics of an invalid job file as `LINE:COL: severity: message`.
fn problems(yaml: &str) -> Vec<String> {
    problems_in(&Fixture::new(), yaml, false)
}

fn problems_in(f: &Fixture, yaml: &str, strict: bool) -> Vec<String> {
    match f.load_with(yaml, strict) {
        Ok(job) => panic!("expected errors, got {} items", job.items.len()),
        Err(e) => e.diagnostics.iter().map(short).collect(),
    }
}

fn short(d: &Diagnostic) -> String {
    format!("{}:{}: {}: {}", d.line, d.col, d.severity, d.message)
}

fn warnings(job: &JobFile) -> Vec<String> {
    job.warnings.iter().map(short).collect()
}

fn keys(job: &JobFile) -> Vec<&str> {
    job.items.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn defaults_apply_when_nothing_is_said() {
    let job = ok("batch: b\nprompts: [一只猫]\n");
    assert_eq!(job.batch, "b");
    assert_eq!(job.archive, ArchivePolicy::default());
    assert_eq!(job.archive.review, Keep::Keep);
    assert_eq!(job.archive.block, Keep::Skip);
    let item = &job.items[0];
    assert_eq!(job.items.len(), 1);
    assert_eq!(item.prompt, "一只猫");
    assert_eq!(item.size, Size::new(1024, 1024));
    assert_eq!(item.version, Version::V2);
    assert_eq!((item.image_num, item.variant), (1, 0));
    assert_eq!(item.template, None);
    assert!(item.tags.is_empty() && item.vars.is_empty());
    assert_eq!((item.line, item.origin), (2, Origin::JobFile));
    assert_eq!(
        item.key,
        item_key("b", "一只猫", Size::new(1024, 1024), Version::V2, 1, 0)
    );
}

#[test]
fn entries_expand_in_file_order_with_their_settings() {
    let job = ok(r#"
batch: spring
sizes: [512x512]
tags: {campaign: c1, owner: me}
archive: {review: skip, block: keep}
prompts:
  - 一只猫
  - prompt: 水墨山水画
    sizes: [1280x720, {width: 720, height: 1280}]
    image_num: 2
    version: v1
    repeat: 3
    tags: {sku: A-1, campaign: c2}
  - template: "{animal}在{place}奔跑"
    vars: {animal: [猫, 狗], place: [草原, 海边]}
"#);
    assert_eq!(
        job.archive,
        ArchivePolicy {
            review: Keep::Skip,
            block: Keep::Keep
        }
    );
    assert!(!job.archive.keeps(Verdict::Review));
    assert!(job.archive.keeps(Verdict::Block));
    assert!(job.archive.keeps(Verdict::Pass));
    let summary: Vec<String> = job
        .items
        .iter()
        .map(|i| {
            format!(
                "{} {} {} n{} v{} L{}",
                i.prompt, i.size, i.version, i.image_num, i.variant, i.line
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "一只猫 512x512 v2 n1 v0 L7",
            "水墨山水画 1280x720 v1 n2 v0 L8",
            "水墨山水画 1280x720 v1 n2 v1 L8",
            "水墨山水画 1280x720 v1 n2 v2 L8",
            "水墨山水画 720x1280 v1 n2 v0 L8",
            "水墨山水画 720x1280 v1 n2 v1 L8",
            "水墨山水画 720x1280 v1 n2 v2 L8",
            "猫在草原奔跑 512x512 v2 n1 v0 L14",
            "猫在海边奔跑 512x512 v2 n1 v0 L14",
            "狗在草原奔跑 512x512 v2 n1 v0 L14",
            "狗在海边奔跑 512x512 v2 n1 v0 L14",
        ]
    );
    // Entry tags are merged over the top-level ones.
    let tags: Vec<(&str, &str)> = job.items[1]
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, [("campaign", "c2"), ("owner", "me"), ("sku", "A-1")]);
    assert_eq!(job.items[0].tags.len(), 2);
    // Template items carry their template and values.
    let t = &job.items[8];
    assert_eq!(t.template.as_deref(), Some("{animal}在{place}奔跑"));
    assert_eq!(t.vars.get("animal").map(String::as_str), Some("猫"));
    assert_eq!(t.vars.get("place").map(String::as_str), Some("海边"));
    assert_eq!(job.images(), 1 + 6 * 2 + 4);
}

#[test]
fn top_level_repeat_image_num_version_apply_to_every_entry() {
    let job = ok("batch: b\nversion: v1\nimage_num: 3\nrepeat: 2\nprompts: [猫, 狗]\n");
    assert_eq!(job.items.len(), 4);
    assert!(
        job.items
            .iter()
            .all(|i| i.version == Version::V1 && i.image_num == 3)
    );
    let variants: Vec<u32> = job.items.iter().map(|i| i.variant).collect();
    assert_eq!(variants, [0, 1, 0, 1]);
}

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let f = Fixture::new();
    let path = f.write(
        "job.yaml",
        "batch: b\nimag_num: 2\ncolour: red\nprompts:\n  - promt: 猫\n    max_items: 3\n",
    );
    let e = load(&path, &LoadOptions::default()).unwrap_err();
    let got: Vec<(String, Option<String>)> = e
        .diagnostics
        .iter()
        .map(|d| (short(d), d.hint.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "2:1: error: unknown key `imag_num`".to_owned(),
                Some("did you mean `image_num`?".to_owned())
            ),
            (
                "3:1: error: unknown key `colour`".into(),
                Some("known keys here: batch, version, model, image_num, sizes, repeat, tags, max_items, archive, prompts_file, prompts".into())
            ),
            (
                "5:5: error: unknown key `promt`".into(),
                Some("did you mean `prompt`?".into())
            ),
            (
                "6:5: error: unknown key `max_items`".into(),
                Some("`max_items` is allowed only at the top level".into())
            ),
        ]
    );
}

#[test]
fn wrong_types_are_reported_with_what_was_found() {
    assert_eq!(
        problems("batch: 12\nimage_num: \"2\"\nsizes: 512x512\nprompts: 猫\n"),
        [
            "1:8: error: `batch` must be text, found a number",
            "2:12: error: `image_num` must be a whole number from 1 to 8, found text",
            "3:8: error: `sizes` must be a list of sizes, found text",
            "4:10: error: `prompts` must be a list, found text",
        ]
    );
}

#[test]
fn batch_is_required_and_must_name_a_folder() {
    assert_eq!(
        problems("prompts: [猫]\n"),
        ["1:1: error: missing `batch`: every job file names its batch"]
    );
    assert_eq!(
        problems("batch: Spring/Catalog\nprompts: [猫]\n"),
        [
            "1:8: error: bad batch name `Spring/Catalog`: use 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit"
        ]
    );
    let long = "a".repeat(65);
    assert_eq!(
        problems(&format!("batch: {long}\nprompts: [猫]\n")).len(),
        1
    );
    ok(&format!("batch: {}\nprompts: [猫]\n", "a".repeat(64)));
}

#[test]
fn sizes_must_be_in_the_version_table() {
    assert_eq!(
        problems("batch: b\nversion: v1\nsizes: [512x512, 1024x1024]\nprompts: [猫]\n"),
        ["3:9: error: size 512x512 is not allowed for v1"]
    );
    assert_eq!(
        problems("batch: b\nsizes: [640x360]\nprompts:\n  - prompt: 猫\n    version: v1\n"),
        ["5:14: error: size 640x360 (from the top-level `sizes`) is not allowed for v1"]
    );
    assert_eq!(
        problems("batch: b\nprompts:\n  - prompt: 猫\n    sizes: [3840x2160]\n    version: v1\n"),
        ["4:13: error: size 3840x2160 is not allowed for v1"]
    );
    // Every size of both tables passes in its own version.
    for (version, sizes) in [("v1", crate::api::V1_SIZES), ("v2", crate::api::V2_SIZES)] {
        let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        let job = ok(&format!(
            "batch: b\nversion: {version}\nsizes: [{}]\nprompts: [猫]\n",
            list.join(", ")
        ));
        assert_eq!(job.items.len(), sizes.len());
    }
}

#[test]
fn prompts_are_1_to_200_characters_not_bytes() {
    let p200 = "猫".repeat(200);
    let job = ok(&format!("batch: b\nprompts: [{p200}]\n"));
    assert_eq!(job.items[0].prompt.chars().count(), 200);
    assert_eq!(job.items[0].prompt.len(), 600);
    let p201 = "猫".repeat(201);
    assert_eq!(
        problems(&format!("batch: b\nprompts:\n  - {p201}\n  - \"  \"\n")),
        [
            "3:5: error: prompt is 201 characters long, over the API's limit of 200",
            "4:5: error: prompt is empty",
        ]
    );
}

#[test]
fn prompts_are_trimmed() {
    let job = ok("batch: b\nprompts: [\"\u{3000} 一只猫 \"]\n");
    assert_eq!(job.items[0].prompt, "一只猫");
}

#[test]
fn image_num_is_1_to_8() {
    assert_eq!(ok("batch: b\nimage_num: 8\nprompts: [猫]\n").images(), 8);
    assert_eq!(
        problems("batch: b\nimage_num: 0\nprompts:\n  - prompt: 猫\n    image_num: 9\n"),
        [
            "2:12: error: `image_num` must be from 1 to 8, found 0",
            "5:16: error: `image_num` must be from 1 to 8, found 9",
        ]
    );
}

#[test]
fn model_is_only_ernie_vilg_v2() {
    ok("batch: b\nmodel: ernie-vilg-v2\nprompts: [猫]\n");
    assert_eq!(
        problems("batch: b\nmodel: dall-e\nprompts: [猫]\n"),
        ["2:8: error: model `dall-e` is not supported"]
    );
}

#[test]
fn placeholders_need_vars_and_vars_need_placeholders() {
    assert_eq!(
        problems(
            "batch: b\nprompts:\n  - template: \"{animal}在{place}\"\n    vars:\n      animal: [猫]\n      colour: [红]\n"
        ),
        [
            "3:15: error: placeholder `{place}` has no values in `vars`",
            "6:7: error: var `colour` is not used in the template",
        ]
    );
    assert_eq!(
        problems("batch: b\nprompts:\n  - template: \"{animal}\"\n"),
        ["3:15: error: placeholder `{animal}` has no values in `vars`"]
    );
}

#[test]
fn expansions_over_max_items_are_refused_before_they_are_built() {
    // Exactly the default limit passes.
    let values: Vec<String> = (0..100).map(|i| format!("\"{i}号\"")).collect();
    let list = values.join(", ");
    let job = ok(&format!(
        "batch: b\nprompts:\n  - template: \"{{a}}和{{b}}\"\n    vars: {{a: [{list}], b: [{list}]}}\n"
    ));
    assert_eq!(job.items.len(), 10_000);
    // One more is refused, at the prompts key when max_items is not written.
    assert_eq!(
        problems(&format!(
            "batch: b\nrepeat: 2\nprompts:\n  - template: \"{{a}}和{{b}}\"\n    vars: {{a: [{list}], b: [{list}]}}\n"
        )),
        ["3:1: error: the job expands to 20000 items, over `max_items` (10000)"]
    );
    // Raised, it passes.
    let job = ok(&format!(
        "batch: b\nmax_items: 20000\nrepeat: 2\nprompts:\n  - template: \"{{a}}和{{b}}\"\n    vars: {{a: [{list}], b: [{list}]}}\n"
    ));
    assert_eq!(job.items.len(), 20_000);
    // 100^3 x 1,000,000 variants x 11 sizes would not fit in memory: it is counted, not built.
    let e = problems(&format!(
        "batch: b\nmax_items: 1000\nsizes: [512x512, 640x360, 360x640, 1024x1024, 1280x720, 720x1280, 2048x2048, 2560x1440, 1440x2560, 3840x2160, 2160x3840]\nprompts:\n  - template: \"{{a}}{{b}}{{c}}\"\n    repeat: 1000000\n    vars: {{a: [{list}], b: [{list}], c: [{list}]}}\n"
    ));
    assert_eq!(
        e,
        ["2:12: error: the job expands to 11000000000000 items, over `max_items` (1000)"]
    );
}

#[test]
fn duplicates_warn_and_collapse_to_one() {
    let job = ok(
        "batch: b\nprompts:\n  - 一只猫\n  - prompt: 一只猫\n    tags: {x: y}\n  - template: \"一只{a}\"\n    vars: {a: [猫, 狗, 狗]}\n",
    );
    let prompts: Vec<&str> = job.items.iter().map(|i| i.prompt.as_str()).collect();
    assert_eq!(prompts, ["一只猫", "一只狗"]);
    // The first one is kept, with its tags.
    assert!(job.items[0].tags.is_empty());
    assert_eq!(
        warnings(&job),
        [
            "4:5: warning: duplicate item: same prompt, size, version, image_num and variant as the entry at line 3; it is kept once",
            "6:5: warning: duplicate item: same prompt, size, version, image_num and variant as the entry at line 3; it is kept once",
            "6:5: warning: 1 duplicate item within this entry (repeated var values or sizes); each is kept once",
        ]
    );
    // A different image_num, size or variant is a different item.
    let job = ok("batch: b\nprompts:\n  - 一只猫\n  - prompt: 一只猫\n    image_num: 2\n");
    assert_eq!(job.items.len(), 2);
    assert!(job.warnings.is_empty());
}

#[test]
fn latin_letters_and_symbols_warn_and_strict_makes_them_errors() {
    let yaml = "batch: b\nprompts:\n  - 一只cat\n  - 猫#话题\n  - 你好，世界。“引号”（括号）《书》…… 2024, ok?\n";
    let job = ok(yaml);
    assert_eq!(
        warnings(&job),
        [
            "3:5: warning: prompt has Latin letters (`cat`)",
            "4:5: warning: prompt has symbols (`#`)",
            "5:5: warning: prompt has Latin letters (`ok`)",
        ]
    );
    assert_eq!(
        problems_in(&Fixture::new(), yaml, true),
        [
            "3:5: error: prompt has Latin letters (`cat`)",
            "4:5: error: prompt has symbols (`#`)",
            "5:5: error: prompt has Latin letters (`ok`)",
        ]
    );
}

#[test]
fn non_utf8_empty_and_comment_only_files_are_refused() {
    let f = Fixture::new();
    // GBK for 一只: the first two bytes happen to form a UTF-8 character, the third cannot.
    let path = f.write(
        "job.yaml",
        b"batch: b\nprompts:\n  - \xD2\xBB\xD6\xBB\xBF\xC9\n",
    );
    let e = load(&path, &LoadOptions::default()).unwrap_err();
    assert_eq!(
        e.diagnostics.iter().map(short).collect::<Vec<_>>(),
        ["3:7: error: the job file is not valid UTF-8 (byte 0xBF)"]
    );
    assert_eq!(problems(""), ["1:1: error: the job file is empty"]);
    assert_eq!(problems(" \n\n"), ["1:1: error: the job file is empty"]);
    assert_eq!(
        problems("# batch: b\n"),
        ["1:1: error: the job file has nothing but comments"]
    );
    let missing = f.dir.path().join("none.yaml");
    let e = load(&missing, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.diagnostics[0].message, "the job file does not exist");
}

#[test]
fn prompts_file_lines_become_items_and_its_problems_point_into_it() {
    let f = Fixture::new();
    f.write(
        "more.txt",
        "# comment\n\n一只猫\r\n  # indented comment\n 一只狗 \ncat\n",
    );
    let job = f
        .load("batch: b\nimage_num: 2\nprompts_file: more.txt\n")
        .unwrap();
    let got: Vec<(String, u32, Origin, u8)> = job
        .items
        .iter()
        .map(|i| (i.prompt.clone(), i.line, i.origin, i.image_num))
        .collect();
    assert_eq!(
        got,
        [
            ("一只猫".to_owned(), 3, Origin::PromptsFile, 2),
            ("一只狗".to_owned(), 5, Origin::PromptsFile, 2),
            ("cat".to_owned(), 6, Origin::PromptsFile, 2),
        ]
    );
    let w = &job.warnings[0];
    assert_eq!(w.file, f.dir.path().join("more.txt"));
    assert_eq!((w.line, w.col), (6, 1));

    f.write("long.txt", format!("猫\n{}\n", "长".repeat(201)));
    let e = f.load("batch: b\nprompts_file: long.txt\n").unwrap_err();
    assert_eq!(e.diagnostics[0].file, f.dir.path().join("long.txt"));
    assert_eq!(
        short(&e.diagnostics[0]),
        "2:1: error: prompt is 201 characters long, over the API's limit of 200"
    );
}

#[test]
fn a_missing_prompts_file_is_reported_at_its_key() {
    let f = Fixture::new();
    let e = f.load("batch: b\nprompts_file: more.txt\n").unwrap_err();
    assert_eq!(
        e.diagnostics.iter().map(short).collect::<Vec<_>>(),
        ["2:15: error: prompts file `more.txt` not found"]
    );
    assert_eq!(e.diagnostics[0].file, f.dir.path().join("job.yaml"));
    let hint = e.diagnostics[0].hint.clone().unwrap();
    assert!(hint.ends_with("more.txt"), "{hint}");
}

#[test]
fn a_non_utf8_prompts_file_is_reported_in_it() {
    let f = Fixture::new();
    f.write("more.txt", b"\xE7\x8C\xAB\n\xC3\xA8\xC3\n");
    let e = f.load("batch: b\nprompts_file: more.txt\n").unwrap_err();
    assert_eq!(
        e.diagnostics.iter().map(short).collect::<Vec<_>>(),
        ["2:2: error: the prompts file is not valid UTF-8 (byte 0xC3)"]
    );
    assert_eq!(e.diagnostics[0].file, f.dir.path().join("more.txt"));
}

#[test]
fn alias_bombs_are_refused_by_the_parser_budget() {
    let mut yaml = String::from("batch: b\na: &a [猫, 猫, 猫, 猫, 猫, 猫, 猫, 猫, 猫, 猫]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(", ");
        yaml.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    yaml.push_str("prompts: *i\n");
    let e = problems(&yaml);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("error: refused by the parser budget"),
        "{e:?}"
    );
}

#[test]
fn oversized_documents_are_refused_by_size_or_by_the_parser_budget() {
    let f = Fixture::new();
    // Over the byte cap: refused from the file's size, before reading (the file is sparse).
    let big = f.dir.path().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let e = load(&big, &LoadOptions::default()).unwrap_err();
    assert_eq!(
        short(&e.diagnostics[0]),
        format!(
            "1:1: error: the job file is {} bytes, over the limit of {MAX_FILE_BYTES} bytes (64 MiB)",
            MAX_FILE_BYTES + 1
        )
    );
    // Under the byte cap but over the node budget.
    let yaml = format!("batch: b\nprompts: [{}]\n", "猫,".repeat(yaml::MAX_NODES));
    let e = problems_in(&f, &yaml, false);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("2:"), "{e:?}");
    assert!(
        e[0].contains("error: refused by the parser budget"),
        "{e:?}"
    );
}

#[test]
fn keys_are_stable_across_loads_and_reformatting_and_ignore_tags() {
    let a = ok(
        "batch: k\nsizes: [512x512, 640x360]\nprompts:\n  - 一只猫\n  - prompt: 水墨画\n    repeat: 2\n    tags: {sku: A}\n  - template: \"{x}在{y}\"\n    vars: {x: [猫, 狗], y: [海边]}\n",
    );
    let again = ok(
        "batch: k\nsizes: [512x512, 640x360]\nprompts:\n  - 一只猫\n  - prompt: 水墨画\n    repeat: 2\n    tags: {sku: A}\n  - template: \"{x}在{y}\"\n    vars: {x: [猫, 狗], y: [海边]}\n",
    );
    assert_eq!(keys(&a), keys(&again));
    let reformatted = ok(r#"# the same job, written differently
prompts:
  - "一只猫"
  - tags:
      sku: B
    repeat: 2
    prompt: '水墨画'
  - vars:
      x:
        - 猫
        - "狗"
      y: [海边]
    template: '{x}在{y}'
sizes:
  - {width: 512, height: 512}
  - 640X360
version: v2
image_num: 1
batch: "k"
"#);
    assert_eq!(keys(&a), keys(&reformatted));
    assert_eq!(a.items.len(), 2 + 4 + 4);
}

#[test]
fn every_problem_comes_at_once_sorted_by_position() {
    let got = problems(
        "batch: Bad Name\nimage_num: 9\nprompts:\n  - \"\"\n  - prompt: 猫\n    sizes: [big]\nmodel: x\n",
    );
    assert_eq!(
        got,
        [
            "1:8: error: bad batch name `Bad Name`: use 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit",
            "2:12: error: `image_num` must be from 1 to 8, found 9",
            "4:5: error: prompt is empty",
            "6:13: error: `big` is not a size",
            "7:8: error: model `x` is not supported",
        ]
    );
}

#[test]
fn job_file_error_displays_every_diagnostic() {
    let f = Fixture::new();
    let e = f.load("batch: B\nprompts: [\"\"]\n").unwrap_err();
    assert_eq!((e.error_count(), e.warning_count()), (2, 0));
    let text = e.to_string();
    let job = f.dir.path().join("job.yaml");
    let job = job.display();
    assert!(
        text.starts_with(&format!("{job}:1:8: error: bad batch name `B`")),
        "{text}"
    );
    assert!(
        text.contains(&format!("\n{job}:2:11: error: prompt is empty")),
        "{text}"
    );
}

#[test]
fn keep_parses_its_spelling() {
    for k in [Keep::Keep, Keep::Skip] {
        assert_eq!(Keep::parse(k.as_str()), Some(k));
    }
    assert_eq!(Keep::parse("drop"), None);
}
