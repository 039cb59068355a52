//! Expansion: each entry × its template values × its sizes × its variants, in file order; the
//! count is checked against `max_items` before anything is built; duplicates collapse to one.

use std::collections::{BTreeMap, HashMap};

use super::diag::{Diags, Pos};
use super::key::item_key;
use super::model::{Entry, EntryText, Settings, Var};
use super::template::Segment;
use super::{DEFAULT_MAX_ITEMS, HARD_MAX_ITEMS, Item, Origin, diag::FileId, text};
use crate::api::{self, Size, Version};

/// The size used when neither the entry nor the top level names one.
pub const DEFAULT_SIZE: Size = Size::new(1024, 1024);

/// An entry with its settings resolved against the top level.
struct Resolved<'a> {
    entry: &'a Entry,
    version: Version,
    sizes: Vec<Size>,
    image_num: u8,
    repeat: u32,
    tags: BTreeMap<String, String>,
}

impl Resolved<'_> {
    /// Items this entry expands to (saturating: it is compared with a limit, never allocated).
    fn count(&self) -> u64 {
        let combos = match &self.entry.text {
            EntryText::Prompt(_) => 1,
            EntryText::Template(t) => t
                .vars
                .iter()
                .fold(1u64, |n, v| n.saturating_mul(v.values.len() as u64)),
        };
        combos
            .saturating_mul(self.sizes.len() as u64)
            .saturating_mul(u64::from(self.repeat))
    }
}

/// What the checks before expansion found about the whole job.
pub(crate) struct Limits {
    /// `max_items` and where it was written.
    pub max_items: Option<(u64, Pos)>,
    /// Where to report a job that is too large when `max_items` was not written.
    pub count_pos: Pos,
}

/// Expands the entries to items (when `build`; otherwise only checks sizes against versions).
/// Reports sizes the version does not allow, a job over
/// `max_items` (counted first, so a huge product is refused without being built), prompts that
/// templates make too long or empty, and duplicates (a warning; the first one is kept).
pub(crate) fn expand(
    batch: &str,
    defaults: &Settings,
    entries: &[Entry],
    limits: &Limits,
    build: bool,
    diags: &mut Diags,
) -> Vec<Item> {
    // Every entry's sizes are checked; only valid entries are counted and built.
    let resolved: Vec<Resolved<'_>> = entries
        .iter()
        .filter_map(|e| resolve(e, defaults, diags))
        .filter(|r| r.entry.valid)
        .collect();
    if !build {
        return Vec::new();
    }
    let total = resolved
        .iter()
        .fold(0u64, |n, r| n.saturating_add(r.count()));
    let max = limits.max_items.map_or(DEFAULT_MAX_ITEMS, |m| m.0);
    if total > max {
        let at = limits.max_items.map_or(limits.count_pos, |m| m.1);
        let shown = if total == u64::MAX {
            "more than 18446744073709551614".to_owned()
        } else {
            total.to_string()
        };
        let hint = if total <= HARD_MAX_ITEMS {
            format!(
                "check the vars, sizes and `repeat`; if you mean it, raise the limit: `max_items: {total}`"
            )
        } else {
            format!(
                "a job file may expand to at most {HARD_MAX_ITEMS} items; split the batch into several files"
            )
        };
        diags.error(
            at,
            format!("the job expands to {shown} items, over `max_items` ({max})"),
            Some(hint),
        );
        return Vec::new();
    }
    let mut items = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut seen: HashMap<String, Pos> = HashMap::with_capacity(items.capacity());
    for r in &resolved {
        expand_entry(batch, r, &mut items, &mut seen, diags);
    }
    items
}

/// Resolves an entry's settings and checks its sizes against its version.
fn resolve<'a>(entry: &'a Entry, defaults: &Settings, diags: &mut Diags) -> Option<Resolved<'a>> {
    let own = entry.settings();
    let (version, version_pos, version_own) = match (own.version, defaults.version) {
        (Some((v, p)), _) => (v, Some(p), true),
        (None, Some((v, p))) => (v, Some(p), false),
        (None, None) => (Version::default(), None, false),
    };
    let (sizes, sizes_own): (Vec<(Size, Option<Pos>)>, bool) = match (&own.sizes, &defaults.sizes) {
        (Some(s), _) => (s.iter().map(|&(z, p)| (z, Some(p))).collect(), true),
        (None, Some(s)) => (s.iter().map(|&(z, p)| (z, Some(p))).collect(), false),
        (None, None) => (vec![(DEFAULT_SIZE, None)], false),
    };
    let mut ok = true;
    for &(size, size_pos) in &sizes {
        if version.allows(size) {
            continue;
        }
        // Point at what this entry wrote: its own size, else its own version, else the
        // top-level size (reported once however many entries share it).
        let (at, message) = if sizes_own || !version_own {
            (
                size_pos.unwrap_or(entry.pos),
                format!("size {size} is not allowed for {version}"),
            )
        } else {
            (
                version_pos.unwrap_or(entry.pos),
                format!("size {size} (from the top-level `sizes`) is not allowed for {version}"),
            )
        };
        let allowed: Vec<String> = version.sizes().iter().map(|s| s.to_string()).collect();
        let mut hint = format!("{version} allows {}", allowed.join(", "));
        if version == Version::V1 && Version::V2.allows(size) {
            hint.push_str(&format!("; v2 also allows {size}"));
        }
        diags.error(at, message, Some(hint));
        ok = false;
    }
    if !ok {
        return None;
    }
    let mut tags = defaults.tags.clone();
    tags.extend(own.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(Resolved {
        entry,
        version,
        sizes: sizes.into_iter().map(|(s, _)| s).collect(),
        image_num: own.image_num.or(defaults.image_num).unwrap_or(1),
        repeat: own.repeat.or(defaults.repeat).unwrap_or(1),
        tags,
    })
}

/// Duplicates found in one entry, grouped by the entry of the first occurrence.
#[derive(Default)]
struct Dups(Vec<(Pos, u64)>);

impl Dups {
    fn add(&mut self, first: Pos) {
        match self.0.iter_mut().find(|(p, _)| *p == first) {
            Some((_, n)) => *n += 1,
            None => self.0.push((first, 1)),
        }
    }
}

/// Prompts of one template that are too long, for one summary error.
#[derive(Default)]
struct TooLong {
    count: u64,
    longest: usize,
    example: String,
}

fn expand_entry(
    batch: &str,
    r: &Resolved<'_>,
    items: &mut Vec<Item>,
    seen: &mut HashMap<String, Pos>,
    diags: &mut Diags,
) {
    let entry = r.entry;
    let origin = match entry.pos.file {
        FileId::Job => Origin::JobFile,
        FileId::Prompts => Origin::PromptsFile,
    };
    let mut dups = Dups::default();
    let mut push = |prompt: &str, vars: &BTreeMap<String, String>, template: Option<&str>| {
        for &size in &r.sizes {
            for variant in 0..r.repeat {
                let key = item_key(batch, prompt, size, r.version, r.image_num, variant);
                if let Some(first) = seen.get(&key) {
                    dups.add(*first);
                    continue;
                }
                seen.insert(key.clone(), entry.pos);
                items.push(Item {
                    key,
                    batch: batch.to_owned(),
                    prompt: prompt.to_owned(),
                    size,
                    version: r.version,
                    image_num: r.image_num,
                    variant,
                    tags: r.tags.clone(),
                    vars: vars.clone(),
                    template: template.map(str::to_owned),
                    line: entry.pos.line,
                    origin,
                });
            }
        }
    };
    match &entry.text {
        EntryText::Prompt(p) => push(p, &BTreeMap::new(), None),
        EntryText::Template(t) => {
            let (source, segments, vars) = (&t.source, &t.segments, &t.vars);
            let mut too_long = TooLong::default();
            let mut empty: Option<String> = None;
            let mut made = 0u64;
            for_each_combination(segments, vars, |prompt, chosen| {
                made += 1;
                let prompt = text::normalize(prompt);
                if prompt.is_empty() {
                    empty.get_or_insert_with(|| describe(chosen));
                    return;
                }
                let len = text::char_len(prompt);
                if len > api::MAX_PROMPT_CHARS {
                    too_long.count += 1;
                    if len > too_long.longest {
                        too_long.longest = len;
                        too_long.example = describe(chosen);
                    }
                    return;
                }
                push(prompt, chosen, Some(source));
            });
            if let Some(example) = empty {
                diags.error(
                    entry.pos,
                    format!("the template makes an empty prompt (with {example})"),
                    None,
                );
            }
            if too_long.count > 0 {
                diags.error(
                    entry.pos,
                    format!(
                        "prompts this template makes are too long: {} of {made} over the API's limit of {} characters (the longest has {}, with {})",
                        too_long.count,
                        api::MAX_PROMPT_CHARS,
                        too_long.longest,
                        too_long.example
                    ),
                    Some("shorten the template or the var values (characters count, not bytes)".into()),
                );
            }
        }
    }
    for (first, n) in dups.0 {
        let (message, hint) = if first == entry.pos {
            (
                format!(
                    "{} within this entry (repeated var values or sizes); each is kept once",
                    if n == 1 {
                        "1 duplicate item".to_owned()
                    } else {
                        format!("{n} duplicate items")
                    }
                ),
                "remove the repeated values; for more images of one prompt use `repeat` or `image_num`",
            )
        } else if n == 1 {
            (
                format!(
                    "duplicate item: same prompt, size, version, image_num and variant as the entry at {}; it is kept once",
                    diags.refer(first, entry.pos.file)
                ),
                "for more images of one prompt use `repeat` or `image_num`",
            )
        } else {
            (
                format!(
                    "{n} duplicate items: same prompts, sizes, version, image_num and variants as the entry at {}; each is kept once",
                    diags.refer(first, entry.pos.file)
                ),
                "for more images of one prompt use `repeat` or `image_num`",
            )
        };
        diags.warning(entry.pos, message, Some(hint.to_owned()));
    }
}

/// Calls `f` with every filled-in template and its chosen values: the Cartesian product of the
/// vars in the order written, the first var outermost, the last changing fastest.
fn for_each_combination(
    segments: &[Segment],
    vars: &[Var],
    mut f: impl FnMut(&str, &BTreeMap<String, String>),
) {
    // Which var each placeholder takes its value from.
    let slots: Vec<Option<usize>> = segments
        .iter()
        .map(|s| match s {
            Segment::Literal(_) => None,
            Segment::Placeholder(name) => vars.iter().position(|v| &v.name == name),
        })
        .collect();
    let mut index = vec![0usize; vars.len()];
    let mut prompt = String::new();
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        prompt.clear();
        for (segment, slot) in segments.iter().zip(&slots) {
            match (segment, slot) {
                (Segment::Literal(t), _) => prompt.push_str(t),
                (Segment::Placeholder(_), Some(v)) => prompt.push_str(&vars[*v].values[index[*v]]),
                // Validation makes sure every placeholder has a var.
                (Segment::Placeholder(_), None) => {}
            }
        }
        chosen.clear();
        for (var, &i) in vars.iter().zip(&index) {
            chosen.insert(var.name.clone(), var.values[i].clone());
        }
        f(&prompt, &chosen);
        // Odometer step: the last var turns fastest.
        let mut k = vars.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            index[k] += 1;
            if index[k] < vars[k].values.len() {
                break;
            }
            index[k] = 0;
        }
    }
}

/// `animal=猫, place=草原`; long values cut to 12 characters.
fn describe(chosen: &BTreeMap<String, String>) -> String {
    chosen
        .iter()
        .map(|(k, v)| {
            if v.chars().count() > 12 {
                format!("{k}={}…", v.chars().take(12).collect::<String>())
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::template;
    use super::*;

    fn var(name: &str, values: &[&str]) -> Var {
        Var {
            name: name.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn product_runs_first_var_outermost() {
        let segments = template::parse("{animal}在{place}奔跑").unwrap();
        let vars = [
            var("animal", &["猫", "狗"]),
            var("place", &["草原", "海边"]),
        ];
        let mut out = Vec::new();
        for_each_combination(&segments, &vars, |p, chosen| {
            out.push((p.to_owned(), describe(chosen)));
        });
        assert_eq!(
            out,
            [
                (
                    "猫在草原奔跑".to_owned(),
                    "animal=猫, place=草原".to_owned()
                ),
                ("猫在海边奔跑".into(), "animal=猫, place=海边".into()),
                ("狗在草原奔跑".into(), "animal=狗, place=草原".into()),
                ("狗在海边奔跑".into(), "animal=狗, place=海边".into()),
            ]
        );
    }

    #[test]
    fn a_template_without_vars_makes_one_prompt() {
        let segments = template::parse("静物").unwrap();
        let mut out = Vec::new();
        for_each_combination(&segments, &[], |p, _| out.push(p.to_owned()));
        assert_eq!(out, ["静物"]);
    }
}
