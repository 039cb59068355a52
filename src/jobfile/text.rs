//! Prompt text rules: length in characters, and the characters the API documents.
//!
//! The SDK documents prompts as "Chinese and everyday punctuation only, no English, no special
//! symbols"; the current API page also allows English. So anything else is a warning (an error
//! with `--strict`), never a silent change of the prompt.

/// ASCII punctuation allowed without a warning.
pub const ASCII_PUNCTUATION: &str = ",.;:?!'\"()-";

/// Chinese (full-width) punctuation allowed without a warning.
pub const CHINESE_PUNCTUATION: &str = "，。、；：？！“”‘’（）《》〈〉【】「」『』—…·～";

/// Whether `c` may appear in a prompt without a warning: CJK ideographs, digits, whitespace and
/// everyday punctuation (see the README's character table).
pub fn is_everyday(c: char) -> bool {
    is_cjk_ideograph(c)
        || c.is_ascii_digit()
        || ('０'..='９').contains(&c)
        || c.is_whitespace()
        || ASCII_PUNCTUATION.contains(c)
        || CHINESE_PUNCTUATION.contains(c)
}

/// CJK ideographs: the unified block and its extensions, compatibility ideographs, and 〇.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c,
        '\u{4E00}'..='\u{9FFF}'
        | '\u{3400}'..='\u{4DBF}'
        | '\u{20000}'..='\u{2FA1F}'
        | '\u{30000}'..='\u{323AF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{3007}')
}

/// Latin letters, including full-width and accented ones.
fn is_latin_letter(c: char) -> bool {
    c.is_ascii_alphabetic()
        || ('Ａ'..='Ｚ').contains(&c)
        || ('ａ'..='ｚ').contains(&c)
        || (('\u{00C0}'..='\u{024F}').contains(&c) && c.is_alphabetic())
}

/// Most runs of unusual characters quoted in one message, per kind.
const MAX_SHOWN: usize = 5;

/// Describes the characters of `text` outside the everyday set, for a warning; `None` when
/// there are none. They are shown as the runs they form (`city`, `at`, `night`), each once, in
/// order of appearance: runs of Latin letters, and runs of other characters ("symbols").
pub fn unusual_chars(text: &str) -> Option<String> {
    let mut latin: Vec<String> = Vec::new();
    let mut symbols: Vec<String> = Vec::new();
    // The run being read, and whether it is of Latin letters.
    let mut run = String::new();
    let mut run_is_latin = false;
    let mut flush = |run: &mut String, is_latin: bool| {
        if run.is_empty() {
            return;
        }
        let list = if is_latin { &mut latin } else { &mut symbols };
        if !list.contains(run) {
            list.push(run.clone());
        }
        run.clear();
    };
    for c in text.chars() {
        if is_everyday(c) {
            flush(&mut run, run_is_latin);
            continue;
        }
        let is_latin = is_latin_letter(c);
        if is_latin != run_is_latin {
            flush(&mut run, run_is_latin);
            run_is_latin = is_latin;
        }
        run.push(c);
    }
    flush(&mut run, run_is_latin);
    let mut parts = Vec::new();
    if !latin.is_empty() {
        parts.push(format!("Latin letters ({})", show(&latin)));
    }
    if !symbols.is_empty() {
        parts.push(format!("symbols ({})", show(&symbols)));
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// Shows runs between backticks, invisible characters as `<U+XXXX>`.
fn show(runs: &[String]) -> String {
    let mut shown: Vec<String> = runs
        .iter()
        .take(MAX_SHOWN)
        .map(|run| {
            let mut out = String::from("`");
            for c in run.chars() {
                if c.is_control() || c == '`' || is_invisible(c) {
                    out.push_str(&format!("<U+{:04X}>", u32::from(c)));
                } else {
                    out.push(c);
                }
            }
            out.push('`');
            out
        })
        .collect();
    if runs.len() > MAX_SHOWN {
        shown.push("…".to_owned());
    }
    shown.join(", ")
}

/// Format characters that print as nothing (zero-width space and joiners, BOM, direction marks).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// The prompt as submitted: surrounding whitespace (including the ideographic space) removed.
pub fn normalize(prompt: &str) -> &str {
    prompt.trim()
}

/// Length in characters (Unicode scalar values), which is how the API counts.
pub fn char_len(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_digits_whitespace_and_everyday_punctuation_pass() {
        for ok in [
            "一只可爱的大猫咪",
            "水墨山水画，远山、近水；“秋天”（油画）《春》【夏】……",
            "2024年 第３版\u{3000}〇",
            "你好, 世界. 真的? 是! 'a-b' \"c\" (d)"
                .replace(['a', 'b', 'c', 'd'], "")
                .as_str(),
            "𠀀𪜀",
        ] {
            assert_eq!(unusual_chars(ok), None, "{ok}");
        }
    }

    #[test]
    fn latin_letters_and_symbols_are_named_once_each_in_order() {
        assert_eq!(
            unusual_chars("猫cat在#草原@奔跑#a"),
            Some("Latin letters (`cat`, `a`) and symbols (`#`, `@`)".into())
        );
        assert_eq!(
            unusual_chars("city at night"),
            Some("Latin letters (`city`, `at`, `night`)".into())
        );
        assert_eq!(
            unusual_chars("ＡＩ绘画，é"),
            Some("Latin letters (`ＡＩ`, `é`)".into())
        );
        assert_eq!(
            unusual_chars("猫\u{200B}狗"),
            Some("symbols (`<U+200B>`)".into())
        );
        assert_eq!(unusual_chars("猫😀"), Some("symbols (`😀`)".into()));
        assert_eq!(
            unusual_chars("C++编程"),
            Some("Latin letters (`C`) and symbols (`++`)".into())
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let s = unusual_chars("a b c d e f g").unwrap();
        assert_eq!(s, "Latin letters (`a`, `b`, `c`, `d`, `e`, …)");
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(char_len("猫咪"), 2);
        assert_eq!("猫咪".len(), 6);
        assert_eq!(normalize("\u{3000} 猫 \n"), "猫");
    }
}
