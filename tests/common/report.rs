//! Helpers for the report, export and metrics tests: a job with templates, sizes, variants,
//! a banned prompt and hostile tags; reading attributes out of the HTML; an RFC 4180 reader.
#![allow(dead_code)]

use std::path::Path;

use runner::sim::SimConfig;

/// The simulator of these tests: quick, with every verdict and a banned word.
pub fn gallery_sim() -> SimConfig {
    SimConfig {
        gen_ms: (30, 120),
        submit_qps: Some(50.0),
        query_qps: Some(100.0),
        concurrency: Some(16),
        review_rate: 0.3,
        block_rate: 0.3,
        banned: vec!["暴力".into()],
        seed: 23,
        ..SimConfig::default()
    }
}

/// A job of 21 items and 23 requested images: a plain prompt, a prompt of two sizes and two
/// images with a comma and quotes in it, a 3x3 template (pivoted in the report), a template
/// over two sizes and two variants, and a prompt the simulator refuses (banned word). Every
/// image carries a tag that is an HTML injection attempt.
pub const GALLERY_JOB: &str = r#"batch: gallery
sizes: [512x512]
tags: {campaign: "<script>alert(1)</script>", owner: "a&b"}
prompts:
  - 一只可爱的大猫咪
  - prompt: '猫说"你好", 然后走了'
    sizes: [512x512, 640x360]
    image_num: 2
  - template: "{animal}在{place}奔跑"
    vars: {animal: [猫, 狗, 兔], place: [草原, 海边, 雪地]}
  - template: "{style}的山"
    vars: {style: [水墨, 油画]}
    sizes: [512x512, 360x640]
    repeat: 2
  - 暴力的场面
"#;

/// Items of [`GALLERY_JOB`].
pub const GALLERY_ITEMS: usize = 1 + 2 + 9 + 8 + 1;
/// Images requested by [`GALLERY_JOB`].
pub const GALLERY_IMAGES: usize = 1 + 4 + 9 + 8 + 1;

/// Every value of attribute `name` in `html`, in order (`name="..."`, double quotes only: the
/// report writes no other kind).
pub fn attr_values(html: &str, name: &str) -> Vec<String> {
    let needle = format!(" {name}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        let end = after.find('"').expect("closing quote");
        out.push(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

/// What loads from outside the report folder: any `src` or `href` that names a scheme or a
/// host, any stylesheet link, external script or CSS import.
pub fn network_resources(html: &str) -> Vec<String> {
    let mut found: Vec<String> = attr_values(html, "src")
        .into_iter()
        .chain(attr_values(html, "href"))
        .filter(|v| v.contains(':') || v.starts_with("//"))
        .collect();
    for bad in [
        "<link",
        "<script src",
        "@import",
        "url(",
        "<iframe",
        "<object",
        "<embed",
    ] {
        if html.contains(bad) {
            found.push(bad.to_string());
        }
    }
    found
}

/// Width and height of a PNG, after checking that it decodes completely.
pub fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG decodes");
    (info.width, info.height)
}

/// An RFC 4180 reader: fields, quoted fields with doubled quotes and line breaks, CRLF records.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "quote inside an unquoted field");
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\n') => panic!("bare line feed outside quotes"),
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quote");
    assert!(
        field.is_empty() && record.is_empty(),
        "last record without CRLF"
    );
    records
}
