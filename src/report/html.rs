//! HTML pieces of the report: escaping, the inline style and filter script (pinned by hashes in
//! the page's Content-Security-Policy), the time-line chart and placeholders as inline SVG.
//!
//! Every text from the store (prompts, tags, vars, templates, error messages) is user input and
//! goes through [`esc`]; attribute values are always double-quoted.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::{Column, TimelineBin};
use crate::api::Size;

/// Text escaped for HTML content and double- or single-quoted attribute values.
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

/// Escapes `s` for HTML (see [`Esc`]).
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// What [`url_path`] leaves as it is: RFC 3986's unreserved characters and the `/` between
/// segments.
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes a relative path for an `href` or `src`, keeping `/` between segments.
pub fn url_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_KEEP).to_string()
}

/// Standard base64 with padding (for CSP hashes).
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The page style. Verdict classes: `v-pass`, `v-review`, `v-block`, `v-failed`, `v-waiting`;
/// `body.hide-X` hides the cards of class `v-X`.
pub const STYLE: &str = r#"
:root { --pass: #1a7f37; --review: #b35900; --block: #c62828; --failed: #6e3b9e; --waiting: #5b6770;
  --line: #d8dee4; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Zen Hei", sans-serif;
  margin: 0 auto; padding: 0 1.5rem 3rem; max-width: 1800px; color: #1f2328; background: #f6f8fa; }
header { padding: 1rem 0 .5rem; border-bottom: 1px solid var(--line); }
h1 { margin: .2rem 0; font-size: 1.6rem; } h2 { font-size: 1.2rem; margin: 1.6rem 0 .4rem; }
h1 code, h2 code { font-size: .95em; }
.muted, .dim { color: var(--muted); }
a { color: #0969da; }
table { border-collapse: collapse; }
.totals { display: flex; flex-wrap: wrap; gap: 1rem 2.5rem; align-items: flex-start; }
.totals table td, .totals table th { padding: .1rem .6rem .1rem 0; text-align: left; }
.totals table td.n { text-align: right; font-variant-numeric: tabular-nums; }
.runs td, .runs th, .batches td, .batches th { padding: .2rem .8rem .2rem 0; text-align: left; border-bottom: 1px solid var(--line); }
.batches td.n { text-align: right; font-variant-numeric: tabular-nums; }
.chart { background: #fff; border: 1px solid var(--line); padding: .5rem; }
.chart svg.bars { display: block; max-width: 100%; height: 140px; }
.axis { font-size: 12px; color: var(--muted); }
.key { display: inline-block; width: .8em; height: .8em; vertical-align: -.05em; }
.key.s { background: #0969da; } .key.f { background: #1a7f37; } .key.x { background: #c62828; }
nav.filter { position: sticky; top: 0; z-index: 2; background: #f6f8fa; padding: .5rem 0;
  border-bottom: 1px solid var(--line); display: flex; flex-wrap: wrap; gap: .4rem 1rem; align-items: center; }
nav.filter label { cursor: pointer; user-select: none; }
nav.filter button { font: inherit; padding: .1rem .5rem; cursor: pointer; }
.group { margin-top: 1.2rem; }
.group h2 { margin-bottom: .2rem; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: .3rem; vertical-align: top; }
table.grid thead th { background: #eaeef2; position: sticky; top: 2.6rem; z-index: 1; }
table.grid tbody th { background: #fff; text-align: left; font-weight: 600; max-width: 16rem; }
table.grid td { background: #fff; }
.cards, .flow { display: flex; flex-wrap: wrap; gap: .6rem; }
.card { margin: 0; width: 212px; background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.card img, .card svg.ph { display: block; max-width: 200px; max-height: 200px; width: auto; height: auto; margin: 0 auto; }
.card figcaption { margin-top: 4px; font-size: 12px; overflow-wrap: anywhere; }
.card .prompt { font-size: 13px; margin: 2px 0; }
.badge { display: inline-block; color: #fff; border-radius: 3px; padding: 0 .4em; font-weight: 600; font-size: 11px; text-transform: uppercase; }
.b-pass { background: var(--pass); } .b-review { background: var(--review); } .b-block { background: var(--block); }
.b-failed { background: var(--failed); } .b-waiting { background: var(--waiting); }
.tag { display: inline-block; background: #eaeef2; border-radius: 3px; padding: 0 .35em; margin: 1px 2px 0 0; }
.reason { color: var(--block); }
.v-review { border-color: var(--review); } .v-block { border-color: var(--block); } .v-failed { border-color: var(--failed); }
.hide-pass .v-pass, .hide-review .v-review, .hide-block .v-block, .hide-failed .v-failed, .hide-waiting .v-waiting { display: none; }
.empty { color: var(--muted); }
"#;

/// The verdict filter: a checkbox per class toggles `hide-X` on the body; "only" buttons check
/// one; the counts and the number shown are filled in from the page itself.
pub const SCRIPT: &str = r#"
(function () {
  var body = document.body;
  var boxes = Array.prototype.slice.call(document.querySelectorAll('nav.filter input[data-verdict]'));
  var counts = {};
  boxes.forEach(function (b) {
    var v = b.getAttribute('data-verdict');
    counts[v] = document.getElementsByClassName('v-' + v).length;
    var out = document.getElementById('count-' + v);
    if (out) { out.textContent = String(counts[v]); }
  });
  function apply() {
    var shown = 0;
    boxes.forEach(function (b) {
      var v = b.getAttribute('data-verdict');
      body.classList.toggle('hide-' + v, !b.checked);
      if (b.checked) { shown += counts[v]; }
    });
    var out = document.getElementById('shown');
    if (out) { out.textContent = String(shown); }
  }
  boxes.forEach(function (b) { b.addEventListener('change', apply); });
  Array.prototype.forEach.call(document.querySelectorAll('nav.filter button[data-only]'), function (btn) {
    btn.addEventListener('click', function () {
      var only = btn.getAttribute('data-only');
      boxes.forEach(function (b) { b.checked = only === 'all' || b.getAttribute('data-verdict') === only; });
      apply();
    });
  });
  apply();
})();
"#;

/// The filter's classes, in display order, with their labels.
pub const FILTER_CLASSES: [(&str, &str); 5] = [
    ("pass", "pass"),
    ("review", "review"),
    ("block", "block"),
    ("failed", "failed"),
    ("waiting", "not done yet"),
];

/// The Content-Security-Policy of every page: nothing from the network, images from beside the
/// page, and only the page's own style and script (by hash).
pub fn content_security_policy() -> String {
    let hash = |s: &str| b64(&Sha256::digest(s.as_bytes()));
    format!(
        "default-src 'none'; img-src 'self'; style-src 'sha256-{}'; script-src 'sha256-{}'; base-uri 'none'; form-action 'none'",
        hash(STYLE),
        hash(SCRIPT)
    )
}

/// The start of a page, up to and including `<body>`.
pub fn page_head(out: &mut String, title: &str) {
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"zh-CN\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        esc(&content_security_policy()),
        esc(title)
    );
}

/// The end of a page, with the filter script when the page has a filter.
pub fn page_tail(out: &mut String, with_script: bool) {
    if with_script {
        let _ = writeln!(out, "<script>{SCRIPT}</script>");
    }
    out.push_str("</body>\n</html>\n");
}

/// A column heading: the size always, the version, `×n` for several images per submit, and the
/// variant when the group has more than one.
pub fn column_label(col: &Column, several_variants: bool) -> String {
    let mut s = format!("{} · {}", col.size, col.version);
    if col.image_num > 1 {
        let _ = write!(s, " · ×{}", col.image_num);
    }
    if several_variants {
        let _ = write!(s, " · variant {}", col.variant);
    }
    s
}

/// A placeholder in the shape of the thumbnail it stands for, with one word on it.
pub fn placeholder_svg(size: Size, class: &str, word: &str) -> String {
    let (w, h) = (size.width.max(1), size.height.max(1));
    let font = (w.min(h) / 7).clamp(10, 40);
    format!(
        "<svg class=\"ph\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{word}\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#eef1f4\" stroke=\"{stroke}\" stroke-width=\"4\" stroke-dasharray=\"12 8\"/>\
         <text x=\"{x}\" y=\"{y}\" font-size=\"{font}\" text-anchor=\"middle\" dominant-baseline=\"middle\" fill=\"{stroke}\" font-family=\"sans-serif\">{word}</text></svg>",
        x = w / 2,
        y = h / 2,
        stroke = class_color(class),
        word = esc(word),
    )
}

fn class_color(class: &str) -> &'static str {
    match class {
        "pass" => "#1a7f37",
        "review" => "#b35900",
        "block" => "#c62828",
        "failed" => "#6e3b9e",
        _ => "#5b6770",
    }
}

/// Bins of a time line: per minute, or wider when the span has more than `max_bins` minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    /// Minutes per bin.
    pub minutes_per_bin: i64,
    /// Start of the first bin, Unix ms.
    pub start_ms: i64,
    /// Every bin from the first to the last, empty ones included.
    pub bins: Vec<TimelineBin>,
}

/// Spreads per-minute counts over a continuous axis, widening the bins (1, 2, 5, 10, 15, 30
/// minutes, 1, 2, 3, 6, 12 hours, days) until there are at most `max_bins`.
pub fn timeline(minutes: &[TimelineBin], max_bins: usize) -> Option<Timeline> {
    let first = minutes.iter().map(|m| m.minute_ms).min()?;
    let last = minutes.iter().map(|m| m.minute_ms).max()?;
    let max_bins = max_bins.max(1) as i64;
    // Bins are aligned to multiples of their width, so count them from the aligned start.
    let count = |per: i64| {
        let bin_ms = per * 60_000;
        (last - first.div_euclid(bin_ms) * bin_ms) / bin_ms + 1
    };
    let widths = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];
    let per = widths
        .iter()
        .copied()
        .find(|w| count(*w) <= max_bins)
        .unwrap_or_else(|| {
            let mut days = ((last - first) / 60_000 / 1440 / max_bins).max(1);
            while count(days * 1440) > max_bins {
                days += 1;
            }
            days * 1440
        });
    let bin_ms = per * 60_000;
    let start = first.div_euclid(bin_ms) * bin_ms;
    let n = count(per) as usize;
    let mut bins: Vec<TimelineBin> = (0..n)
        .map(|i| TimelineBin {
            minute_ms: start + i as i64 * bin_ms,
            ..TimelineBin::default()
        })
        .collect();
    for m in minutes {
        let b = &mut bins[((m.minute_ms - start) / bin_ms) as usize];
        b.submitted += m.submitted;
        b.finished += m.finished;
        b.failed += m.failed;
    }
    Some(Timeline {
        minutes_per_bin: per,
        start_ms: start,
        bins,
    })
}

/// The time line as an inline SVG bar chart: per bin a blue bar of submits and a green bar of
/// finishes with the failures stacked on it in red; each bin has a tooltip.
pub fn timeline_svg(t: &Timeline, label: impl Fn(i64) -> String) -> String {
    const BIN_W: u32 = 10;
    const H: u32 = 120;
    let max = t
        .bins
        .iter()
        .map(|b| b.submitted.max(b.finished + b.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let width = BIN_W * t.bins.len() as u32;
    let scale = |v: u32| -> u32 { (u64::from(v) * u64::from(H) / u64::from(max)) as u32 };
    let mut s = format!(
        "<svg class=\"bars\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {H}\" width=\"{}\" height=\"140\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"submitted and finished per {} min\">",
        // At most 24 px per bin, so a run of a few minutes does not make wall-wide bars.
        24 * t.bins.len(),
        t.minutes_per_bin
    );
    for (i, b) in t.bins.iter().enumerate() {
        let x = i as u32 * BIN_W;
        let _ = write!(
            s,
            "<g><title>{}: {} submitted, {} finished, {} failed</title>",
            esc(&label(b.minute_ms)),
            b.submitted,
            b.finished,
            b.failed
        );
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"4\" height=\"{}\" fill=\"#0969da\"/>",
            x + 1,
            H - scale(b.submitted),
            scale(b.submitted)
        );
        let fin = scale(b.finished);
        let failed = scale(b.failed);
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"4\" height=\"{fin}\" fill=\"#1a7f37\"/>",
            x + 5,
            H - fin
        );
        if b.failed > 0 {
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"4\" height=\"{failed}\" fill=\"#c62828\"/>",
                x + 5,
                H.saturating_sub(fin + failed)
            );
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Version;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("一只猫，在草原").to_string(), "一只猫，在草原");
        assert_eq!(esc("").to_string(), "");
        assert_eq!(esc("&amp;").to_string(), "&amp;amp;");
        assert_eq!(
            esc("a\"><img src=x onerror=1>").to_string(),
            "a&quot;&gt;&lt;img src=x onerror=1&gt;"
        );
    }

    #[test]
    fn url_paths_are_percent_encoded_by_byte() {
        assert_eq!(
            url_path("../archive/b/images/ab/k-0.png"),
            "../archive/b/images/ab/k-0.png"
        );
        assert_eq!(
            url_path("my dir/猫#1?.png"),
            "my%20dir/%E7%8C%AB%231%3F.png"
        );
    }

    #[test]
    fn the_policy_pins_the_inline_style_and_script() {
        let csp = content_security_policy();
        assert!(
            csp.starts_with("default-src 'none'; img-src 'self';"),
            "{csp}"
        );
        let script = b64(&Sha256::digest(SCRIPT.as_bytes()));
        assert!(
            csp.contains(&format!("script-src 'sha256-{script}'")),
            "{csp}"
        );
        let mut page = String::new();
        page_head(&mut page, "t<1>");
        page_tail(&mut page, true);
        assert!(page.contains("<title>t&lt;1&gt;</title>"));
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
    }

    #[test]
    fn columns_say_what_differs() {
        let c = Column {
            size: Size::new(1280, 720),
            version: Version::V1,
            image_num: 2,
            variant: 1,
        };
        assert_eq!(column_label(&c, true), "1280x720 · v1 · ×2 · variant 1");
        let c = Column { image_num: 1, ..c };
        assert_eq!(column_label(&c, false), "1280x720 · v1");
    }

    fn bin(minute: i64, submitted: u32, finished: u32) -> TimelineBin {
        TimelineBin {
            minute_ms: minute * 60_000,
            submitted,
            finished,
            failed: 0,
        }
    }

    #[test]
    fn the_time_line_is_continuous_and_widens_for_long_spans() {
        assert!(timeline(&[], 10).is_none());
        let t = timeline(&[bin(100, 3, 0), bin(103, 1, 4)], 10).unwrap();
        assert_eq!(t.minutes_per_bin, 1);
        assert_eq!(t.bins.len(), 4);
        assert_eq!(t.bins[1], bin(101, 0, 0));
        assert_eq!(t.bins[3], bin(103, 1, 4));
        // 30 minutes into at most 10 bins: 5 minutes each, aligned.
        let t = timeline(&[bin(100, 1, 0), bin(129, 0, 1), bin(104, 2, 2)], 10).unwrap();
        assert_eq!(t.minutes_per_bin, 5);
        assert_eq!(t.start_ms, 100 * 60_000);
        assert_eq!(t.bins.len(), 6);
        assert_eq!((t.bins[0].submitted, t.bins[0].finished), (3, 2));
        assert_eq!(t.bins[5].finished, 1);
        let total: u32 = t.bins.iter().map(|b| b.submitted).sum();
        assert_eq!(total, 3);
        // Years of minutes still give at most max_bins bins.
        let t = timeline(&[bin(0, 1, 1), bin(2_000_000, 1, 1)], 500).unwrap();
        assert!(t.bins.len() <= 500, "{}", t.bins.len());
    }

    #[test]
    fn the_chart_has_a_bar_per_series_and_bin() {
        let t = timeline(&[bin(0, 4, 0), bin(1, 2, 4)], 100).unwrap();
        let svg = timeline_svg(&t, |ms| format!("<{ms}>"));
        assert_eq!(svg.matches("fill=\"#0969da\"").count(), 2);
        assert_eq!(svg.matches("fill=\"#1a7f37\"").count(), 2);
        assert!(svg.contains("<title>&lt;0&gt;: 4 submitted, 0 finished, 0 failed</title>"));
        // The tallest bar fills the height.
        assert!(
            svg.contains("y=\"0\" width=\"4\" height=\"120\" fill=\"#0969da\""),
            "{svg}"
        );
    }
}
