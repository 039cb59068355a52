//! The job-file language: the YAML model, validation against the API's limits (every problem at
//! once, each with `file:line:col`), expansion to items, and item keys.
//!
//! # Layout
//!
//! - `source`: reading files (size cap, UTF-8 with the position of a bad byte, prompts-file lines).
//! - `yaml`: the only module that knows the YAML parser; gives a tree of positioned nodes, under a
//!   budget that refuses alias bombs and oversized documents.
//! - `validate`: checks the tree key by key into a `model::Spec`, recording every problem.
//! - `template`: `{name}` placeholders.
//! - `text`: prompt length and the everyday character set.
//! - `expand`: counts, then builds the items; duplicates collapse.
//! - [`key`](item_key): the stable item key.
//! - [`plan`]: totals and time estimates for `runner plan`.
//!
//! The language itself is documented in the README (`## Job files`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::api::{Size, Verdict, Version};

mod diag;
mod expand;
mod key;
mod model;
pub mod plan;
mod source;
mod template;
#[cfg(test)]
mod tests;
mod text;
mod validate;
mod yaml;

pub use diag::{Diagnostic, JobFileError, Severity};
pub use key::item_key;

use diag::{Diags, Pos};
use model::Entry;

/// `max_items` when the job file does not set it.
pub const DEFAULT_MAX_ITEMS: u64 = 10_000;
/// The highest `max_items` may be raised to.
pub const HARD_MAX_ITEMS: u64 = 1_000_000;
/// Largest job file or prompts file read (64 MiB); larger ones are refused before reading.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How to load a job file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Characters outside Chinese, digits, whitespace and everyday punctuation are errors, not
    /// warnings.
    pub strict: bool,
}

/// A valid job file, expanded.
#[derive(Debug, Clone)]
pub struct JobFile {
    /// The path it was loaded from, as given.
    pub path: PathBuf,
    /// The batch name (`[a-z0-9][a-z0-9_-]{0,63}`; it names folders on disk).
    pub batch: String,
    /// What to keep of images by moderation verdict.
    pub archive: ArchivePolicy,
    /// Every item, in file order, duplicates collapsed.
    pub items: Vec<Item>,
    /// Warnings (the job file is usable despite them).
    pub warnings: Vec<Diagnostic>,
}

impl JobFile {
    /// Images the batch makes: the sum of `image_num` over the items.
    pub fn images(&self) -> u64 {
        self.items.iter().map(|i| u64::from(i.image_num)).sum()
    }
}

/// Whether to keep the bytes of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keep {
    /// Archive the image.
    Keep,
    /// Record the verdict, do not keep the bytes.
    Skip,
}

impl Keep {
    /// The job-file spelling (`keep`, `skip`).
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Keep => "keep",
            Keep::Skip => "skip",
        }
    }

    /// Parses the job-file spelling.
    pub fn parse(s: &str) -> Option<Keep> {
        match s {
            "keep" => Some(Keep::Keep),
            "skip" => Some(Keep::Skip),
            _ => None,
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to keep of images the moderation flagged. Images that pass are always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchivePolicy {
    /// Images with verdict `review` (suspected violation); default keep.
    pub review: Keep,
    /// Images with verdict `block` (violation); default skip: the verdict is recorded, the
    /// bytes are not kept.
    pub block: Keep,
}

impl Default for ArchivePolicy {
    fn default() -> Self {
        ArchivePolicy {
            review: Keep::Keep,
            block: Keep::Skip,
        }
    }
}

impl ArchivePolicy {
    /// Whether to keep the bytes of an image with this verdict.
    pub fn keeps(&self, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Pass => true,
            Verdict::Review => self.review == Keep::Keep,
            Verdict::Block => self.block == Keep::Keep,
        }
    }
}

/// Where an item was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// In the job file's `prompts`.
    JobFile,
    /// A line of its `prompts_file`.
    PromptsFile,
}

/// One item: one submit of one prompt at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// [`item_key`] of the fields below: 32 lowercase hex digits.
    pub key: String,
    /// The batch.
    pub batch: String,
    /// The prompt as submitted (trimmed; templates filled in).
    pub prompt: String,
    /// Width and height.
    pub size: Size,
    /// Model version.
    pub version: Version,
    /// Images in this submit, 1 to 8.
    pub image_num: u8,
    /// Variant number, 0 to `repeat - 1`.
    pub variant: u32,
    /// Tags for the archive's metadata: top-level tags merged with the entry's (entry wins).
    pub tags: BTreeMap<String, String>,
    /// The template variables of this item (empty for plain prompts), for reports.
    pub vars: BTreeMap<String, String>,
    /// The template this item was made from.
    pub template: Option<String>,
    /// The line the entry starts on, in the file `origin` names.
    pub line: u32,
    /// The job file or its prompts file.
    pub origin: Origin,
}

/// Loads, validates and expands a job file.
///
/// Every problem is reported at once, sorted by position; warnings come back in
/// [`JobFile::warnings`] when there is no error, and with the errors otherwise.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<JobFile, JobFileError> {
    let mut diags = Diags::new(path);
    let Some(spec) = read_spec(path, opts, &mut diags) else {
        return Err(JobFileError {
            diagnostics: diags.finish(),
        });
    };
    // Where to report the job as a whole: its prompts.
    let prompts_pos = spec
        .prompts_pos
        .or(spec.prompts_file.as_ref().map(|f| f.1))
        .unwrap_or(Pos::START);
    let limits = expand::Limits {
        max_items: spec.max_items,
        count_pos: prompts_pos,
    };
    let batch = spec.batch.clone().unwrap_or_default();
    // An invalid default would show up again in every entry that uses it.
    let items = if spec.sizes_checkable {
        let build = spec.defaults_valid;
        expand::expand(
            &batch,
            &spec.defaults,
            &spec.entries,
            &limits,
            build,
            &mut diags,
        )
    } else {
        Vec::new()
    };
    if items.is_empty() && !diags.has_errors() {
        diags.error(
            prompts_pos,
            "the job file has no prompts",
            Some("add entries to `prompts:`, or lines to the prompts file".into()),
        );
    }
    if diags.has_errors() {
        return Err(JobFileError {
            diagnostics: diags.finish(),
        });
    }
    Ok(JobFile {
        path: path.to_path_buf(),
        batch,
        archive: ArchivePolicy {
            review: spec.archive_review.unwrap_or(Keep::Keep),
            block: spec.archive_block.unwrap_or(Keep::Skip),
        },
        items,
        warnings: diags.finish(),
    })
}

/// Reads and checks the job file and its prompts file; `None` when nothing more can be checked.
fn read_spec(path: &Path, opts: &LoadOptions, diags: &mut Diags) -> Option<model::Spec> {
    let text = match source::read_text(path) {
        Ok(text) => text,
        Err(e) => {
            let (line, col) = e.position();
            let (message, hint) = e.describe("the job file");
            diags.error(Pos::job(line, col), message, hint);
            return None;
        }
    };
    let empty_hint =
        || Some("a job file needs at least `batch:` and `prompts:`; see jobs/catalog.yaml".into());
    if text.trim().is_empty() {
        diags.error(Pos::START, "the job file is empty", empty_hint());
        return None;
    }
    let root = match yaml::parse(&text) {
        Ok(root) => root,
        Err(e) => {
            let budget_hint = e.over_budget.then(|| {
                format!(
                    "job files are limited to {} YAML nodes, {} levels of nesting and {} nodes repeated through aliases (`*name`)",
                    yaml::MAX_NODES,
                    yaml::MAX_DEPTH,
                    yaml::MAX_ALIAS_REPLAY
                )
            });
            let message = if e.over_budget {
                format!("refused by the parser budget: {}", e.message)
            } else {
                format!("YAML: {}", e.message)
            };
            diags.error(Pos::job(e.line, e.col), message, e.hint.or(budget_hint));
            return None;
        }
    };
    drop(text);
    if root.value == yaml::Value::Null {
        diags.error(
            Pos::START,
            "the job file has nothing but comments",
            empty_hint(),
        );
        return None;
    }
    // The tree is handed over: prompts move into the entries instead of being copied.
    let mut spec = validate::check_document(root, diags, opts.strict);
    if let Some((name, at)) = spec.prompts_file.clone() {
        let full = path.parent().unwrap_or(Path::new("")).join(&name);
        diags.set_prompts_path(full.clone());
        read_prompts_file(&full, &name, at, opts, diags, &mut spec.entries);
    }
    Some(spec)
}

/// Adds the prompts of the prompts file as entries with the top-level settings.
fn read_prompts_file(
    full: &Path,
    name: &str,
    at: Pos,
    opts: &LoadOptions,
    diags: &mut Diags,
    entries: &mut Vec<Entry>,
) {
    let text = match source::read_text(full) {
        Ok(text) => text,
        Err(source::ReadError::NotFound) => {
            diags.error(
                at,
                format!("prompts file `{name}` not found"),
                Some(format!(
                    "the path is relative to the job file: looked for {}",
                    full.display()
                )),
            );
            return;
        }
        Err(e @ source::ReadError::Io(_)) => {
            let (message, hint) = e.describe(&format!("prompts file `{name}`"));
            diags.error(at, message, hint);
            return;
        }
        Err(e) => {
            let (line, col) = e.position();
            let (message, hint) = e.describe("the prompts file");
            diags.error(
                Pos {
                    file: diag::FileId::Prompts,
                    line,
                    col,
                },
                message,
                hint,
            );
            return;
        }
    };
    let mut lines = 0usize;
    for (line, raw) in source::prompt_lines(&text) {
        lines += 1;
        let at = Pos::prompts_line(line);
        if let Some(prompt) = validate::check_prompt(diags, opts.strict, raw, at) {
            entries.push(Entry::plain(at, prompt));
        }
    }
    if lines == 0 {
        diags.warning(
            at,
            format!("prompts file `{name}` has no prompts"),
            Some("one prompt per line; blank lines and lines starting with `#` are skipped".into()),
        );
    }
}
