//! Temporary stand-in with the public types of the job-file module; replaced when the job-file
//! language lands.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::{Size, Version};

/// Whether images of a verdict are kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Download and archive the bytes.
    Keep,
    /// Record the verdict only.
    Skip,
}

impl Keep {
    /// The job-file spelling.
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

/// What to keep of images with a review or block verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivePolicy {
    /// Images with verdict review.
    pub review: Keep,
    /// Images with verdict block.
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

/// Where an item was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// In the job file's `prompts`.
    JobFile,
    /// A line of its `prompts_file`.
    PromptsFile,
}

/// One item: one submit.
#[derive(Debug, Clone)]
pub struct Item {
    /// Stable key.
    pub key: String,
    /// Batch name.
    pub batch: String,
    /// Prompt.
    pub prompt: String,
    /// Size.
    pub size: Size,
    /// Version.
    pub version: Version,
    /// Images per submit.
    pub image_num: u8,
    /// Variant.
    pub variant: u32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// Template.
    pub template: Option<String>,
    /// Source line.
    pub line: u32,
    /// Job file or prompts file.
    pub origin: Origin,
}

/// A loaded job file.
#[derive(Debug, Clone)]
pub struct JobFile {
    /// Path.
    pub path: PathBuf,
    /// Batch.
    pub batch: String,
    /// Policy.
    pub archive: ArchivePolicy,
    /// Items.
    pub items: Vec<Item>,
}
