//! Checks the YAML tree of a job file key by key and value by value, recording every problem
//! (not only the first), and keeps what is valid as a [`Spec`].

use std::collections::BTreeMap;

use super::diag::{Diags, Pos, Severity};
use super::model::{Entry, EntryText, Settings, Spec, Template, Var};
use super::template::{self, Segment};
use super::text;
use super::yaml::{Node, Value};
use super::{HARD_MAX_ITEMS, Keep};
use crate::api::{self, Size, Version};

/// Keys allowed at the top level.
pub const TOP_KEYS: &[&str] = &[
    "batch",
    "version",
    "model",
    "image_num",
    "sizes",
    "repeat",
    "tags",
    "max_items",
    "archive",
    "prompts_file",
    "prompts",
];

/// Keys allowed in a prompt entry.
pub const ENTRY_KEYS: &[&str] = &[
    "prompt",
    "template",
    "vars",
    "sizes",
    "image_num",
    "version",
    "repeat",
    "tags",
];

/// Keys allowed under `archive`.
pub const ARCHIVE_KEYS: &[&str] = &["review", "block"];

/// Keys allowed in a `{width, height}` size.
pub const SIZE_KEYS: &[&str] = &["width", "height"];

/// Longest batch name (it names folders on disk).
pub const MAX_BATCH_LEN: usize = 64;

/// Checks a whole job file.
pub(crate) fn check_document(root: Node, diags: &mut Diags, strict: bool) -> Spec {
    let mut c = Checker { diags, strict };
    c.document(root)
}

/// Checks one prompt (from the YAML or a prompts-file line) and returns it trimmed, or `None`
/// when it cannot be submitted.
pub(crate) fn check_prompt(diags: &mut Diags, strict: bool, raw: &str, at: Pos) -> Option<String> {
    Checker { diags, strict }
        .prompt_ok(raw, at)
        .then(|| text::normalize(raw).to_owned())
}

struct Checker<'d> {
    diags: &'d mut Diags,
    strict: bool,
}

/// `Err(())`: the value was invalid and an error was recorded.
type Checked<T> = Result<T, ()>;

impl Checker<'_> {
    fn error(&mut self, at: Pos, message: impl Into<String>, hint: Option<String>) {
        self.diags.error(at, message, hint);
    }

    fn document(&mut self, root: Node) -> Spec {
        let mut spec = Spec {
            defaults_valid: true,
            sizes_checkable: true,
            ..Spec::default()
        };
        let at = pos(&root);
        let found = kind(&root);
        let Value::Map(entries) = root.value else {
            self.error(
                at,
                format!(
                    "a job file is a mapping of keys like `batch:` and `prompts:`, found {found}"
                ),
                None,
            );
            return spec;
        };
        let mut saw_batch = false;
        let mut saw_prompts = false;
        for (k, v) in entries {
            let Some(key) = self.key(&k) else { continue };
            if key == "prompts" {
                spec.prompts_pos = Some(pos(&k));
                saw_prompts = true;
                // Entries are checked in file order with the other keys; their settings are
                // resolved against the defaults only when expanding.
                spec.entries = self.prompts(v);
                continue;
            }
            let (k, v) = (&k, &v);
            let ok = match key {
                "batch" => {
                    saw_batch = true;
                    self.batch(v).map(|b| spec.batch = Some(b))
                }
                "version" => self.version(v).map(|x| spec.defaults.version = Some(x)),
                "model" => self.model(v),
                "image_num" => self.image_num(v).map(|n| spec.defaults.image_num = Some(n)),
                "sizes" => self.sizes(v).map(|s| spec.defaults.sizes = Some(s)),
                "repeat" => self.repeat(v).map(|r| spec.defaults.repeat = Some(r)),
                "tags" => self.tags(v).map(|t| spec.defaults.tags = t),
                "max_items" => self
                    .max_items(v)
                    .map(|m| spec.max_items = Some((m, pos(v)))),
                "archive" => self.archive(v, &mut spec),
                "prompts_file" => self
                    .prompts_file(v)
                    .map(|f| spec.prompts_file = Some((f, pos(v)))),
                other => {
                    self.unknown_key(k, other, TOP_KEYS, ENTRY_KEYS, "only inside a prompt entry");
                    Ok(())
                }
            };
            // Invalid prompts are reported where they are; an invalid default would be reported
            // again for every entry that uses it, so nothing is expanded then.
            let is_default = matches!(
                key,
                "version" | "image_num" | "sizes" | "repeat" | "tags" | "max_items"
            );
            if ok.is_err() && is_default {
                spec.defaults_valid = false;
            }
            if ok.is_err()
                && (key == "version" || (key == "sizes" && spec.defaults.sizes.is_none()))
            {
                spec.sizes_checkable = false;
            }
        }
        if !saw_batch {
            self.error(
                Pos::START,
                "missing `batch`: every job file names its batch",
                Some("add a line like `batch: spring-catalog` (it names folders on disk)".into()),
            );
        }
        if !saw_prompts && spec.prompts_file.is_none() {
            self.error(
                Pos::START,
                "no prompts: the job file has neither `prompts` nor `prompts_file`",
                Some("add a list `prompts:` or a file of prompts `prompts_file: more.txt`".into()),
            );
        }
        spec
    }

    /// The text of a mapping key, or `None` (with an error) when it is not text.
    fn key<'n>(&mut self, k: &'n Node) -> Option<&'n str> {
        match &k.value {
            Value::Str(s) => Some(s),
            _ => {
                self.error(
                    pos(k),
                    format!("keys must be text, found {}", kind(k)),
                    None,
                );
                None
            }
        }
    }

    /// Reports an unknown key, with "did you mean" by edit distance; a key that belongs at the
    /// other level says so.
    fn unknown_key(
        &mut self,
        k: &Node,
        key: &str,
        known: &[&str],
        elsewhere: &[&str],
        elsewhere_says: &str,
    ) {
        let hint = if let Some(best) = suggest(key, known) {
            format!("did you mean `{best}`?")
        } else if elsewhere.contains(&key) {
            format!("`{key}` is allowed {elsewhere_says}")
        } else {
            format!("known keys here: {}", known.join(", "))
        };
        self.error(pos(k), format!("unknown key `{key}`"), Some(hint));
    }

    fn batch(&mut self, v: &Node) -> Checked<String> {
        let name = self.string(v, "batch", None)?;
        if is_batch_name(name) {
            return Ok(name.to_owned());
        }
        let slug = slug(name);
        let example = if is_batch_name(&slug) {
            slug
        } else {
            "spring-catalog".to_owned()
        };
        self.error(
            pos(v),
            format!(
                "bad batch name `{name}`: use 1 to {MAX_BATCH_LEN} of a-z, 0-9, `_` and `-`, starting with a letter or digit"
            ),
            Some(format!("the name is used for folders on disk; for example `{example}`")),
        );
        Err(())
    }

    fn version(&mut self, v: &Node) -> Checked<(Version, Pos)> {
        let hint = Some("write `version: v1` or `version: v2` (the default)".to_owned());
        let s = self.string(v, "version", hint.clone())?;
        if let Some(version) = Version::parse(s) {
            return Ok((version, pos(v)));
        }
        let hint = match Version::parse(&s.to_ascii_lowercase()) {
            Some(version) => Some(format!("write `{version}` in lower case")),
            None => hint,
        };
        self.error(
            pos(v),
            format!("unknown version `{s}`: the API has v1 and v2"),
            hint,
        );
        Err(())
    }

    fn model(&mut self, v: &Node) -> Checked<()> {
        let hint = Some(format!(
            "the only model is `{}`; write `model: {}` or leave `model` out",
            api::MODEL,
            api::MODEL
        ));
        let s = self.string(v, "model", hint.clone())?;
        if s == api::MODEL {
            return Ok(());
        }
        self.error(pos(v), format!("model `{s}` is not supported"), hint);
        Err(())
    }

    fn image_num(&mut self, v: &Node) -> Checked<u8> {
        let n = self.integer(
            v,
            "image_num",
            1,
            i128::from(api::MAX_IMAGE_NUM),
            "the API makes 1 to 8 images per submit; use `repeat` for more",
        )?;
        u8::try_from(n).map_err(|_| ())
    }

    fn repeat(&mut self, v: &Node) -> Checked<u32> {
        let n = self.integer(
            v,
            "repeat",
            1,
            HARD_MAX_ITEMS as i128,
            "`repeat: N` makes N variants of a prompt, each its own submit",
        )?;
        u32::try_from(n).map_err(|_| ())
    }

    fn max_items(&mut self, v: &Node) -> Checked<u64> {
        let n = self.integer(
            v,
            "max_items",
            1,
            HARD_MAX_ITEMS as i128,
            "split larger batches into several job files",
        )?;
        u64::try_from(n).map_err(|_| ())
    }

    fn sizes(&mut self, v: &Node) -> Checked<Vec<(Size, Pos)>> {
        let Value::Seq(list) = &v.value else {
            let hint = match &v.value {
                Value::Str(s) if Size::parse(s).is_some() => {
                    format!("write a list: `sizes: [{s}]`")
                }
                _ => "write a list like `sizes: [1024x1024, 512x512]`".to_owned(),
            };
            self.error(
                pos(v),
                format!("`sizes` must be a list of sizes, found {}", kind(v)),
                Some(hint),
            );
            return Err(());
        };
        if list.is_empty() {
            self.error(
                pos(v),
                "`sizes` is empty",
                Some("list at least one size, like `[1024x1024]`".into()),
            );
            return Err(());
        }
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for item in list {
            match self.size(item) {
                Ok(size) => out.push((size, pos(item))),
                Err(()) => ok = false,
            }
        }
        // The valid sizes are still checked against the version, so that one bad size does not
        // hide another problem; the error already recorded fails the load.
        if ok || !out.is_empty() {
            Ok(out)
        } else {
            Err(())
        }
    }

    fn size(&mut self, v: &Node) -> Checked<Size> {
        let hint = Some(
            "write WIDTHxHEIGHT like `1024x1024`, or `{width: 1024, height: 1024}`".to_owned(),
        );
        match &v.value {
            Value::Str(s) => match Size::parse(s) {
                Some(size) => Ok(size),
                None => {
                    self.error(pos(v), format!("`{s}` is not a size"), hint);
                    Err(())
                }
            },
            Value::Map(entries) => {
                let (mut width, mut height) = (None, None);
                let mut ok = true;
                for (k, val) in entries {
                    let Some(key) = self.key(k) else {
                        ok = false;
                        continue;
                    };
                    let slot = match key {
                        "width" => &mut width,
                        "height" => &mut height,
                        other => {
                            self.unknown_key(k, other, SIZE_KEYS, &[], "");
                            ok = false;
                            continue;
                        }
                    };
                    match self.integer(val, key, 1, i128::from(u32::MAX), "sizes are in pixels") {
                        Ok(n) => *slot = u32::try_from(n).ok(),
                        Err(()) => ok = false,
                    }
                }
                for (name, value) in [("width", width), ("height", height)] {
                    if value.is_none() && ok {
                        self.error(pos(v), format!("size without `{name}`"), hint.clone());
                        ok = false;
                    }
                }
                match (ok, width, height) {
                    (true, Some(w), Some(h)) => Ok(Size::new(w, h)),
                    _ => Err(()),
                }
            }
            _ => {
                self.error(
                    pos(v),
                    format!("a size must be text like `1024x1024`, found {}", kind(v)),
                    hint,
                );
                Err(())
            }
        }
    }

    fn tags(&mut self, v: &Node) -> Checked<BTreeMap<String, String>> {
        let Value::Map(entries) = &v.value else {
            self.error(
                pos(v),
                format!(
                    "`tags` must be a mapping like `{{sku: A-1}}`, found {}",
                    kind(v)
                ),
                None,
            );
            return Err(());
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, val) in entries {
            let Some(key) = self.key(k) else {
                ok = false;
                continue;
            };
            if key.trim().is_empty() {
                self.error(pos(k), "empty tag name", None);
                ok = false;
                continue;
            }
            let value = match &val.value {
                Value::Str(s) => s.clone(),
                Value::Int(n) => n.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    self.error(
                        pos(val),
                        format!("tag `{key}` must be text, found {}", kind(val)),
                        None,
                    );
                    ok = false;
                    continue;
                }
            };
            out.insert(key.to_owned(), value);
        }
        if ok { Ok(out) } else { Err(()) }
    }

    fn archive(&mut self, v: &Node, spec: &mut Spec) -> Checked<()> {
        let Value::Map(entries) = &v.value else {
            self.error(
                pos(v),
                format!(
                    "`archive` must be a mapping like `{{review: keep, block: skip}}`, found {}",
                    kind(v)
                ),
                None,
            );
            return Err(());
        };
        let mut ok = true;
        for (k, val) in entries {
            let Some(key) = self.key(k) else {
                ok = false;
                continue;
            };
            if !ARCHIVE_KEYS.contains(&key) {
                let hint = if key == "pass" {
                    "images that pass moderation are always kept".to_owned()
                } else if let Some(best) = suggest(key, ARCHIVE_KEYS) {
                    format!("did you mean `{best}`?")
                } else {
                    "known keys here: review, block".to_owned()
                };
                self.error(pos(k), format!("unknown key `{key}`"), Some(hint));
                ok = false;
                continue;
            }
            let hint = Some("write `keep` or `skip`".to_owned());
            let Ok(s) = self.string(val, &format!("archive.{key}"), hint.clone()) else {
                ok = false;
                continue;
            };
            match Keep::parse(s) {
                Some(keep) if key == "review" => spec.archive_review = Some(keep),
                Some(keep) => spec.archive_block = Some(keep),
                None => {
                    self.error(
                        pos(val),
                        format!("`archive.{key}` must be keep or skip, found `{s}`"),
                        hint,
                    );
                    ok = false;
                }
            }
        }
        if ok { Ok(()) } else { Err(()) }
    }

    fn prompts_file(&mut self, v: &Node) -> Checked<String> {
        let s = self.string(v, "prompts_file", None)?;
        if s.trim().is_empty() {
            self.error(
                pos(v),
                "`prompts_file` is empty",
                Some("name a file of prompts, one per line, relative to the job file".into()),
            );
            return Err(());
        }
        Ok(s.to_owned())
    }

    /// The entries of `prompts`; plain prompts move out of the tree instead of being copied.
    fn prompts(&mut self, v: Node) -> Vec<Entry> {
        let at = pos(&v);
        let found = kind(&v);
        let Value::Seq(list) = v.value else {
            let hint = matches!(v.value, Value::Str(_)).then(|| {
                "write a list: `prompts: [一只猫]`, or one `- prompt` per line".to_owned()
            });
            self.error(at, format!("`prompts` must be a list, found {found}"), hint);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            let at = pos(&item);
            if let Value::Str(s) = item.value {
                out.extend(self.prompt_owned(s, at).map(|p| Entry::plain(at, p)));
                continue;
            }
            let item = &item;
            let entry = match &item.value {
                Value::Map(_) => self.entry(item),
                Value::Null => {
                    self.error(pos(item), "empty prompt entry", None);
                    None
                }
                _ => {
                    let hint = quote_hint(item);
                    self.error(
                        pos(item),
                        format!(
                            "a prompt entry must be text or a mapping with `prompt` or `template`, found {}",
                            kind(item)
                        ),
                        hint,
                    );
                    None
                }
            };
            out.extend(entry);
        }
        out
    }

    /// A prompt entry written as a mapping.
    fn entry(&mut self, node: &Node) -> Option<Entry> {
        let Value::Map(pairs) = &node.value else {
            return None;
        };
        let mut ok = true;
        let mut version_failed = false;
        let mut settings = Settings::default();
        let mut prompt: Option<(&Node, &str)> = None;
        let mut template: Option<(&Node, &str)> = None;
        let mut vars: Option<(&Node, &Node)> = None;
        for (k, v) in pairs {
            let Some(key) = self.key(k) else {
                ok = false;
                continue;
            };
            let checked = match key {
                "prompt" => self
                    .string(v, "prompt", quote_hint(v))
                    .map(|s| prompt = Some((v, s))),
                "template" => self
                    .string(v, "template", quote_hint(v))
                    .map(|s| template = Some((v, s))),
                "vars" => {
                    vars = Some((k, v));
                    Ok(())
                }
                "sizes" => self.sizes(v).map(|s| settings.sizes = Some(s)),
                "image_num" => self.image_num(v).map(|n| settings.image_num = Some(n)),
                "version" => {
                    let checked = self.version(v).map(|x| settings.version = Some(x));
                    version_failed = checked.is_err();
                    checked
                }
                "repeat" => self.repeat(v).map(|r| settings.repeat = Some(r)),
                "tags" => self.tags(v).map(|t| settings.tags = t),
                other => {
                    self.unknown_key(k, other, ENTRY_KEYS, TOP_KEYS, "only at the top level");
                    Err(())
                }
            };
            ok &= checked.is_ok();
        }
        let text = match (prompt, template) {
            (Some(_), Some((t, _))) => {
                self.error(
                    pos(t),
                    "an entry has either `prompt` or `template`, not both",
                    None,
                );
                None
            }
            (None, None) => {
                if ok {
                    self.error(
                        pos(node),
                        "this entry has neither `prompt` nor `template`",
                        None,
                    );
                }
                None
            }
            (Some((p, s)), None) => {
                if let Some((vk, _)) = vars {
                    let hint = s
                        .contains('{')
                        .then(|| "did you mean `template:` instead of `prompt:`?".to_owned());
                    self.error(pos(vk), "`vars` only fill a `template`", hint);
                    return None;
                }
                self.prompt(s, pos(p)).map(EntryText::Prompt)
            }
            (None, Some((t, s))) => self.template(t, s, vars),
        };
        // With its own version unknown, its sizes cannot be checked either.
        match text {
            Some(text) if !version_failed => Some(Entry {
                pos: pos(node),
                valid: ok,
                text,
                settings: Some(Box::new(settings)),
            }),
            _ => None,
        }
    }

    /// Checks a template against its vars.
    fn template(
        &mut self,
        t: &Node,
        source: &str,
        vars: Option<(&Node, &Node)>,
    ) -> Option<EntryText> {
        let at = pos(t);
        let segments = match template::parse(source) {
            Ok(segments) => segments,
            Err(e) => {
                let (message, hint) = e.describe();
                self.error(at, message, Some(hint));
                return None;
            }
        };
        let mut ok = true;
        let mut vars_out: Vec<Var> = Vec::new();
        // Every var named, valid values or not, so one mistake is not reported twice.
        let mut declared: Vec<(&str, Pos)> = Vec::new();
        let mut vars_broken = false;
        if let Some((_, vv)) = vars {
            match &vv.value {
                Value::Map(pairs) => {
                    for (k, v) in pairs {
                        let Some(name) = self.key(k) else {
                            ok = false;
                            continue;
                        };
                        if !template::is_name(name) {
                            self.error(
                                pos(k),
                                format!("bad var name `{name}`"),
                                Some("a var name has no spaces or braces".into()),
                            );
                            ok = false;
                            continue;
                        }
                        declared.push((name, pos(k)));
                        match self.var_values(name, v) {
                            Some(values) => vars_out.push(Var {
                                name: name.to_owned(),
                                values,
                            }),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    self.error(
                        pos(vv),
                        format!(
                            "`vars` must be a mapping like `{{animal: [猫, 狗]}}`, found {}",
                            kind(vv)
                        ),
                        None,
                    );
                    ok = false;
                    vars_broken = true;
                }
            }
        }
        // Every placeholder needs values, every var needs a placeholder.
        let mut placeholders: Vec<&str> = Vec::new();
        for s in &segments {
            if let Segment::Placeholder(name) = s
                && !placeholders.contains(&name.as_str())
            {
                placeholders.push(name);
            }
        }
        let names: Vec<&str> = declared.iter().map(|d| d.0).collect();
        for name in &placeholders {
            if !names.contains(name) && !vars_broken {
                let hint = match suggest(name, &names) {
                    Some(best) => format!("did you mean `{{{best}}}`?"),
                    None => format!("add its values: `vars: {{{name}: [...]}}`"),
                };
                self.error(
                    at,
                    format!("placeholder `{{{name}}}` has no values in `vars`"),
                    Some(hint),
                );
                ok = false;
            }
        }
        for (name, at_key) in &declared {
            if !placeholders.contains(name) {
                let hint = match suggest(name, &placeholders) {
                    Some(best) => format!("the template has `{{{best}}}`; rename one of them"),
                    None => format!("use `{{{name}}}` in the template, or remove the var"),
                };
                self.error(
                    *at_key,
                    format!("var `{name}` is not used in the template"),
                    Some(hint),
                );
                ok = false;
            }
        }
        let literal = template::literal_text(&segments);
        self.chars(&literal, at, "template");
        if segments.iter().all(|s| matches!(s, Segment::Literal(_)))
            && text::normalize(&literal).is_empty()
        {
            self.error(at, "template is empty", None);
            ok = false;
        }
        ok.then(|| {
            EntryText::Template(Box::new(Template {
                source: source.to_owned(),
                segments,
                vars: vars_out,
            }))
        })
    }

    /// The values of one var: a non-empty list of text (numbers are taken as written).
    fn var_values(&mut self, name: &str, v: &Node) -> Option<Vec<String>> {
        let Value::Seq(list) = &v.value else {
            let hint = matches!(v.value, Value::Str(_) | Value::Int(_))
                .then(|| format!("write a list, even of one value: `{name}: [...]`"));
            self.error(
                pos(v),
                format!("var `{name}` must be a list of values, found {}", kind(v)),
                hint,
            );
            return None;
        };
        if list.is_empty() {
            self.error(
                pos(v),
                format!("var `{name}` has no values"),
                Some("a template with an empty var expands to nothing".into()),
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for item in list {
            match &item.value {
                Value::Str(s) => {
                    self.chars(s, pos(item), "var value");
                    out.push(s.clone());
                }
                Value::Int(n) => out.push(n.to_string()),
                _ => {
                    self.error(
                        pos(item),
                        format!("values of var `{name}` must be text, found {}", kind(item)),
                        quote_hint(item),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// Checks one prompt; returns it trimmed unless it is empty or too long.
    fn prompt(&mut self, raw: &str, at: Pos) -> Option<String> {
        self.prompt_ok(raw, at)
            .then(|| text::normalize(raw).to_owned())
    }

    /// [`Self::prompt`] for a prompt the caller owns: kept as is when already trimmed.
    fn prompt_owned(&mut self, raw: String, at: Pos) -> Option<String> {
        if !self.prompt_ok(&raw, at) {
            return None;
        }
        let trimmed = text::normalize(&raw);
        if trimmed.len() == raw.len() {
            Some(raw)
        } else {
            Some(trimmed.to_owned())
        }
    }

    /// Checks one prompt: false when it is empty or too long.
    fn prompt_ok(&mut self, raw: &str, at: Pos) -> bool {
        let p = text::normalize(raw);
        if p.is_empty() {
            self.error(at, "prompt is empty", None);
            return false;
        }
        let len = text::char_len(p);
        if len > api::MAX_PROMPT_CHARS {
            self.error(
                at,
                format!(
                    "prompt is {len} characters long, over the API's limit of {}",
                    api::MAX_PROMPT_CHARS
                ),
                Some(format!(
                    "shorten it by {} (characters count, not bytes)",
                    plural(len - api::MAX_PROMPT_CHARS, "character")
                )),
            );
            return false;
        }
        self.chars(p, at, "prompt");
        true
    }

    /// Warns (errs with `--strict`) about characters outside the everyday set.
    fn chars(&mut self, text: &str, at: Pos, what: &str) {
        report_chars(self.diags, self.strict, text, at, what);
    }

    fn string<'n>(&mut self, v: &'n Node, what: &str, hint: Option<String>) -> Checked<&'n str> {
        match &v.value {
            Value::Str(s) => Ok(s),
            _ => {
                self.error(
                    pos(v),
                    format!("`{what}` must be text, found {}", kind(v)),
                    hint,
                );
                Err(())
            }
        }
    }

    fn integer(&mut self, v: &Node, what: &str, lo: i128, hi: i128, why: &str) -> Checked<i128> {
        match &v.value {
            Value::Int(n) if (lo..=hi).contains(n) => Ok(*n),
            Value::Int(n) => {
                self.error(
                    pos(v),
                    format!("`{what}` must be from {lo} to {hi}, found {n}"),
                    Some(why.to_owned()),
                );
                Err(())
            }
            _ => {
                let hint = match &v.value {
                    Value::Str(s) if s.trim().parse::<i128>().is_ok() => Some(format!(
                        "write the number without quotes: `{what}: {}`",
                        s.trim()
                    )),
                    _ => None,
                };
                self.error(
                    pos(v),
                    format!(
                        "`{what}` must be a whole number from {lo} to {hi}, found {}",
                        kind(v)
                    ),
                    hint,
                );
                Err(())
            }
        }
    }
}

/// Warns (errs with `strict`) about characters outside the everyday set in `text`.
pub(crate) fn report_chars(diags: &mut Diags, strict: bool, text: &str, at: Pos, what: &str) {
    let Some(found) = text::unusual_chars(text) else {
        return;
    };
    let (severity, hint) = if strict {
        (
            Severity::Error,
            "the API documents Chinese and everyday punctuation only (an error with --strict)",
        )
    } else {
        (
            Severity::Warning,
            "the API documents Chinese and everyday punctuation only; --strict makes this an error",
        )
    };
    diags.push(
        severity,
        at,
        format!("{what} has {found}"),
        Some(hint.to_owned()),
    );
}

/// `1 character`, `2 characters`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn quote_hint(v: &Node) -> Option<String> {
    matches!(v.value, Value::Int(_) | Value::Float(_) | Value::Bool(_))
        .then(|| "quote text that looks like a number or true/false: \"2024\"".to_owned())
}

fn pos(n: &Node) -> Pos {
    Pos::job(n.line, n.col)
}

/// How a value is named in messages.
fn kind(n: &Node) -> &'static str {
    match n.value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Int(_) => "a number",
        Value::Float(_) => "a decimal number",
        Value::Str(_) => "text",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a mapping",
    }
}

/// Whether `name` is a valid batch name: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn is_batch_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_BATCH_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// A batch name made from `name`: lower case, other characters as `-`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    out.chars()
        .take(MAX_BATCH_LEN)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// The closest candidate by edit distance (ignoring case), if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = word.chars().count().div_ceil(3);
    let limit = limit.clamp(1, 3);
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&word, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_follow_the_pattern() {
        for ok in ["a", "spring-catalog", "0x", "a_b-c", &"a".repeat(64)] {
            assert!(is_batch_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "spring catalog",
            "猫",
            "a/b",
            "a.b",
            &"a".repeat(65),
        ] {
            assert!(!is_batch_name(bad), "{bad}");
        }
    }

    #[test]
    fn slugs_make_valid_batch_names() {
        assert_eq!(slug("Spring Catalog!"), "spring-catalog");
        assert_eq!(slug("--x--"), "x");
        assert_eq!(slug("猫"), "");
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(suggest("imag_num", TOP_KEYS), Some("image_num"));
        assert_eq!(suggest("img_num", TOP_KEYS), Some("image_num"));
        assert_eq!(suggest("size", TOP_KEYS), Some("sizes"));
        assert_eq!(suggest("Prompts", TOP_KEYS), Some("prompts"));
        assert_eq!(suggest("promt", ENTRY_KEYS), Some("prompt"));
        assert_eq!(suggest("colour", TOP_KEYS), None);
        assert_eq!(suggest("x", TOP_KEYS), None);
    }

    #[test]
    fn levenshtein_counts_characters_not_bytes() {
        assert_eq!(strsim::levenshtein("kitten", "sitting"), 3);
        assert_eq!(strsim::levenshtein("猫狗", "猫"), 1);
        assert_eq!(strsim::levenshtein("", "ab"), 2);
    }
}
