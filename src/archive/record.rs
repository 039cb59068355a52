//! What the archive writes about each image: the sidecar beside it and its manifest line.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::{Verdict, Version};

/// State of an image. Stored by the store as its spelling; written in every manifest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Known (URL, verdict, expiry), not yet in the archive.
    Listed,
    /// In the archive, verified.
    Archived,
    /// Not kept by the batch's verdict policy; the verdict is recorded.
    Skipped,
    /// Its URL died and could not be refreshed.
    Lost,
}

impl ImageState {
    /// Every state.
    pub const ALL: [ImageState; 4] = [
        ImageState::Listed,
        ImageState::Archived,
        ImageState::Skipped,
        ImageState::Lost,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Listed => "listed",
            ImageState::Archived => "archived",
            ImageState::Skipped => "skipped",
            ImageState::Lost => "lost",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<ImageState> {
        ImageState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Everything the archive writes about an image (sidecar and manifest line).
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    /// Path relative to the batch folder; `None` when skipped or lost.
    pub path: Option<String>,
    /// Hex SHA-256 of the bytes.
    pub sha256: Option<String>,
    /// Size of the file.
    pub bytes: Option<i64>,
    /// Image state.
    pub state: ImageState,
    /// Moderation verdict.
    pub verdict: Verdict,
    /// Prompt of the item.
    pub prompt: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Model version.
    pub version: Version,
    /// Images per submit of the item.
    pub image_num: u8,
    /// Variant of the item.
    pub variant: u32,
    /// Position within the task.
    pub index: u32,
    /// Item key.
    pub item_key: String,
    /// Task id.
    pub task_id: String,
    /// Batch name.
    pub batch: String,
    /// Tags of the item.
    pub tags: BTreeMap<String, String>,
    /// Template variables of the item.
    pub vars: BTreeMap<String, String>,
    /// When the URL expired or expires, Unix ms.
    pub url_expires_at: Option<i64>,
    /// When the task was submitted, Unix ms.
    pub submitted_at: Option<i64>,
    /// When the task was seen final, Unix ms.
    pub finished_at: Option<i64>,
    /// When the image was archived, Unix ms.
    pub archived_at: Option<i64>,
}
