//! The checked job file before expansion: what `validate` makes of the YAML tree, and what
//! `expand` turns into items. Only values that passed their checks get here.

use std::collections::BTreeMap;

use super::diag::Pos;
use super::template::Segment;
use crate::api::{Size, Version};

/// Settings that a prompt entry may set and otherwise takes from the top level. `None`: not
/// given at this level.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// Model version, with where it was written.
    pub version: Option<(Version, Pos)>,
    /// Sizes, each with where it was written.
    pub sizes: Option<Vec<(Size, Pos)>>,
    /// Images per submit.
    pub image_num: Option<u8>,
    /// Variants: each its own submit.
    pub repeat: Option<u32>,
    /// Tags for the archive's metadata (entry tags are merged over top-level ones).
    pub tags: BTreeMap<String, String>,
}

/// What an entry asks for.
#[derive(Debug, Clone)]
pub(crate) enum EntryText {
    /// One prompt, already trimmed.
    Prompt(String),
    /// A template and the values of its placeholders (boxed: most entries are plain prompts,
    /// and a 1,000,000-entry job should not pay for the largest variant in each).
    Template(Box<Template>),
}

/// A checked template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The template as written.
    pub source: String,
    /// The template split into text and placeholders.
    pub segments: Vec<Segment>,
    /// The vars in the order written; the product runs with the first one outermost.
    pub vars: Vec<Var>,
}

/// One template variable.
#[derive(Debug, Clone)]
pub(crate) struct Var {
    /// The placeholder name.
    pub name: String,
    /// Its values, in order.
    pub values: Vec<String>,
}

/// One entry of `prompts` (or one line of the prompts file).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Where the entry starts.
    pub pos: Pos,
    /// False when one of its settings was invalid: its sizes are still checked against its
    /// version, but it is not expanded.
    pub valid: bool,
    /// The prompt or template.
    pub text: EntryText,
    /// The entry's own settings; `None` for a plain prompt, which has none (boxed for the same
    /// reason as templates).
    pub settings: Option<Box<Settings>>,
}

/// The settings of an entry that sets nothing.
static NO_SETTINGS: Settings = Settings {
    version: None,
    sizes: None,
    image_num: None,
    repeat: None,
    tags: BTreeMap::new(),
};

impl Entry {
    /// A plain prompt with no settings of its own.
    pub fn plain(pos: Pos, prompt: String) -> Entry {
        Entry {
            pos,
            valid: true,
            text: EntryText::Prompt(prompt),
            settings: None,
        }
    }

    /// The entry's own settings.
    pub fn settings(&self) -> &Settings {
        self.settings.as_deref().unwrap_or(&NO_SETTINGS)
    }
}

/// A job file after its keys and values were checked.
#[derive(Debug, Default)]
pub(crate) struct Spec {
    /// The batch name, when present and valid.
    pub batch: Option<String>,
    /// Top-level settings, the defaults of every entry.
    pub defaults: Settings,
    /// False when a top-level setting was invalid: then nothing is expanded, to avoid reporting
    /// the same mistake again for every entry.
    pub defaults_valid: bool,
    /// False when the top-level version or every top-level size was invalid: then sizes are not
    /// checked against versions either.
    pub sizes_checkable: bool,
    /// `archive.review`, when given.
    pub archive_review: Option<super::Keep>,
    /// `archive.block`, when given.
    pub archive_block: Option<super::Keep>,
    /// `max_items` and where it was written.
    pub max_items: Option<(u64, Pos)>,
    /// Where `prompts:` was written.
    pub prompts_pos: Option<Pos>,
    /// `prompts_file` as written, and where.
    pub prompts_file: Option<(String, Pos)>,
    /// The entries whose prompt or template is valid, in file order.
    pub entries: Vec<Entry>,
}
