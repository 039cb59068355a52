//! Wire types of the ERNIE-ViLG v2 ("yinian") API, shared by the [`client`](crate::client) and the
//! [`sim`](crate::sim) so the two cannot drift apart.
//!
//! See `shared/api/yinian-v2.md`. Where the public sources disagree (numbers that arrive as strings,
//! progress as float or int, ids above 2^53) these types accept every form seen.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Path of the OAuth token endpoint.
pub const TOKEN_PATH: &str = "/oauth/2.0/token";
/// Path of the submit endpoint.
pub const SUBMIT_PATH: &str = "/rpc/2.0/ernievilg/v1/txt2imgv2";
/// Path of the query endpoint.
pub const QUERY_PATH: &str = "/rpc/2.0/ernievilg/v1/getImgv2";
/// The only model name the API accepts for this endpoint family.
pub const MODEL: &str = "ernie-vilg-v2";
/// Longest prompt the API accepts, in characters (not bytes).
pub const MAX_PROMPT_CHARS: usize = 200;
/// Largest `image_num` the API accepts.
pub const MAX_IMAGE_NUM: u8 = 8;

/// Model version of a submit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The older model, fewer sizes.
    V1,
    /// The current model (the API's default).
    #[default]
    V2,
}

impl Version {
    /// The wire spelling (`"v1"`, `"v2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }

    /// The sizes this version accepts.
    pub fn sizes(self) -> &'static [Size] {
        match self {
            Version::V1 => V1_SIZES,
            Version::V2 => V2_SIZES,
        }
    }

    /// Whether this version accepts `size`.
    pub fn allows(self, size: Size) -> bool {
        self.sizes().contains(&size)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image size, width by height, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Size {
    /// A size of `width` by `height`.
    pub const fn new(width: u32, height: u32) -> Size {
        Size { width, height }
    }

    /// Parses `"WxH"` (also `"W×H"`, `"W*H"`, case-insensitive `X`).
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        let (w, h) = s
            .split_once(['x', 'X', '×', '*'])
            .map(|(w, h)| (w.trim(), h.trim()))?;
        Some(Size::new(w.parse().ok()?, h.parse().ok()?))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Sizes accepted by v1.
pub const V1_SIZES: &[Size] = &[
    Size::new(1024, 1024),
    Size::new(1280, 720),
    Size::new(720, 1280),
    Size::new(2048, 2048),
    Size::new(2560, 1440),
    Size::new(1440, 2560),
];

/// Sizes accepted by v2 (3840x2160 and 2160x3840 were added in 2025).
pub const V2_SIZES: &[Size] = &[
    Size::new(512, 512),
    Size::new(640, 360),
    Size::new(360, 640),
    Size::new(1024, 1024),
    Size::new(1280, 720),
    Size::new(720, 1280),
    Size::new(2048, 2048),
    Size::new(2560, 1440),
    Size::new(1440, 2560),
    Size::new(3840, 2160),
    Size::new(2160, 3840),
];

/// Answer of the token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAnswer {
    /// The access token (a secret: never log it).
    pub access_token: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// Present in real answers; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Present in real answers; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Present in real answers; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    /// Present in real answers; unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret: Option<String>,
}

/// Error answer of the token endpoint (HTTP 401 for bad keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthError {
    /// For example `invalid_client`.
    pub error: String,
    /// For example `unknown client id`.
    #[serde(default)]
    pub error_description: String,
}

/// Body of a submit (txt2imgv2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The text prompt, at most 200 characters.
    pub prompt: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `"v1"` or `"v2"`; the API defaults to v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// 1 to 8; the API defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_num: Option<u32>,
    /// Optional server-side task timeout, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_time_out: Option<u32>,
    /// Optional prompt censorship switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_check: Option<u32>,
}

/// `data` of a successful submit answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitData {
    /// The task id, as a string (it exceeds 2^53).
    #[serde(deserialize_with = "de_id")]
    pub task_id: String,
    /// The same id as a number; kept as u64, never through a float.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_task_id: Option<u64>,
}

/// Body of a query (getImgv2). The API accepts the id as a string or a number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    /// The task id from the submit answer.
    #[serde(deserialize_with = "de_id")]
    pub task_id: String,
}

/// Status of a task or a sub-task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskStatus {
    /// Accepted, not yet queued.
    Init,
    /// Queued.
    Wait,
    /// Generating.
    Running,
    /// Failed; see `sub_task_error_code`.
    Failed,
    /// Done (the only billed state).
    Success,
}

impl TaskStatus {
    /// Whether the status is final.
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Failed | TaskStatus::Success)
    }
}

/// `data` of a query answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryData {
    /// Seen as a number, a string, and `0` in a real SUCCESS answer; informational only.
    #[serde(default, deserialize_with = "de_opt_id")]
    pub task_id: Option<String>,
    /// Overall status.
    pub task_status: TaskStatus,
    /// Overall progress in [0, 1] (documented as 0 or 1, seen as floats).
    #[serde(default, deserialize_with = "de_f64")]
    pub task_progress: f64,
    /// One entry per sub-task (one image each, inferred: accept any split).
    #[serde(default)]
    pub sub_task_result_list: Vec<SubTask>,
}

/// One sub-task of a query answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubTask {
    /// Sub-task status.
    pub sub_task_status: TaskStatus,
    /// Progress in [0, 1].
    #[serde(default, deserialize_with = "de_f64")]
    pub sub_task_progress: f64,
    /// 0 ok, 501 prompt blocked by censorship, 201 the model failed.
    #[serde(default)]
    pub sub_task_error_code: i64,
    /// The finished images.
    #[serde(default)]
    pub final_image_list: Vec<FinalImage>,
}

/// One finished image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalImage {
    /// Signed download URL; expires (documented: one hour).
    pub img_url: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Moderation verdict.
    pub img_approve_conclusion: Verdict,
}

/// Moderation verdict of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No problem found.
    Pass,
    /// Suspected violation.
    Review,
    /// Violation.
    Block,
}

impl Verdict {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Review => "review",
            Verdict::Block => "block",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "pass" => Some(Verdict::Pass),
            "review" => Some(Verdict::Review),
            "block" => Some(Verdict::Block),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unix time in milliseconds, from the local clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix ms as RFC 3339 in UTC with milliseconds (`2026-11-21T08:00:00.000Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The API's daily quota counts days from midnight in Asia/Shanghai (UTC+8, no daylight saving).
const QUOTA_DAY_OFFSET_MS: i64 = 8 * 3_600_000;
/// Length of a quota day.
pub const QUOTA_DAY_MS: i64 = 86_400_000;

/// The number of the quota day (days since 1970-01-01 in Asia/Shanghai) that `unix_ms` falls in.
pub fn quota_day(unix_ms: i64) -> i64 {
    (unix_ms + QUOTA_DAY_OFFSET_MS).div_euclid(QUOTA_DAY_MS)
}

/// Unix ms of the start of the quota day that `unix_ms` falls in: the API's daily quota counts
/// images submitted since then.
pub fn quota_day_start(unix_ms: i64) -> i64 {
    quota_day(unix_ms) * QUOTA_DAY_MS - QUOTA_DAY_OFFSET_MS
}

/// Unix ms of the next quota reset after `unix_ms` (the next midnight in Asia/Shanghai).
pub fn next_quota_reset(unix_ms: i64) -> i64 {
    quota_day_start(unix_ms) + QUOTA_DAY_MS
}

/// Sub-task error code: prompt blocked by censorship.
pub const SUB_ERR_CENSORED: i64 = 501;
/// Sub-task error code: the model failed to generate.
pub const SUB_ERR_MODEL: i64 = 201;

/// Every answer of submit and query: either `data` or an error, both with a `log_id`.
///
/// Errors arrive with HTTP 200. `log_id` is a number in some answers and a string in others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Request id, for support tickets.
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_id: Option<String>,
    /// Present on success.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// Present on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Present on error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
    /// Censorship details: a list of `{msg, words}` or (older) one object with `word`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<serde_json::Value>,
}

/// What a client should do about an API error code (the table in `yinian-v2.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Internal or temporary failure: retry with backoff.
    Transient,
    /// This account's QPS is over the limit: slow down, retry.
    Rate,
    /// This account's images in generation are over the limit: wait for a task to finish.
    Concurrency,
    /// Daily quota used up: park submits until the reset.
    Quota,
    /// The access token is invalid or expired: refresh once, retry.
    Token,
    /// Bad request for this task: fatal for the task, never retried.
    Permanent,
    /// The task timed out on the server: it failed; it may be resubmitted.
    Timeout,
    /// Account-level refusal (no permission, total quota gone): fatal for the batch.
    Fatal,
}

impl ErrorClass {
    /// Classifies an API error code. Unknown codes count as transient: a retry with backoff is the
    /// cautious answer to something the table does not know.
    pub fn of(code: i64) -> ErrorClass {
        match code {
            1 | 2 | 4 | 500 | 282000 | 216630 => ErrorClass::Transient,
            13 | 18 | 216401 => ErrorClass::Rate,
            15 => ErrorClass::Concurrency,
            17 => ErrorClass::Quota,
            100 | 110 | 111 => ErrorClass::Token,
            216100 | 282003 | 282004 | 216201 => ErrorClass::Permanent,
            216303 => ErrorClass::Timeout,
            6 | 19 | 282352 => ErrorClass::Fatal,
            _ => ErrorClass::Transient,
        }
    }

    /// The stable spelling used in the store, `status` and `retry --class`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Rate => "rate",
            ErrorClass::Concurrency => "concurrency",
            ErrorClass::Quota => "quota",
            ErrorClass::Token => "token",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Well-known error codes, for the simulator and for tests.
pub mod code {
    /// Internal error.
    pub const INTERNAL: i64 = 282000;
    /// Open api request limit reached (QPS).
    pub const QPS: i64 = 18;
    /// Open api QPS limit reached (older code).
    pub const QPS_OLD: i64 = 13;
    /// Concurrency limit reached.
    pub const CONCURRENCY: i64 = 15;
    /// Daily request limit reached.
    pub const DAILY_QUOTA: i64 = 17;
    /// Invalid access token.
    pub const TOKEN_INVALID: i64 = 110;
    /// Access token expired.
    pub const TOKEN_EXPIRED: i64 = 111;
    /// Invalid parameter.
    pub const PARAM: i64 = 216100;
    /// Missing or malformed parameter.
    pub const PARAM_FORMAT: i64 = 282003;
    /// Sensitive words in the prompt / input too long.
    pub const SENSITIVE: i64 = 282004;
    /// Task timed out on the server.
    pub const TASK_TIMEOUT: i64 = 216303;
}

fn de_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_opt_id(d)?.ok_or_else(|| serde::de::Error::custom("missing id"))
}

/// Accepts an id as a JSON string or an integer (u64 or i64, never through a float).
fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        U(u64),
        I(i64),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        None => None,
        Some(Id::S(s)) => Some(s),
        Some(Id::U(u)) => Some(u.to_string()),
        Some(Id::I(i)) => Some(i.to_string()),
    })
}

/// Accepts progress as a number (int or float) or a numeric string; null counts as 0.
fn de_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }
    match Option::<Num>::deserialize(d)? {
        None => Ok(0.0),
        Some(Num::F(f)) => Ok(f),
        Some(Num::S(s)) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_survives_beyond_2_pow_53() {
        let a: Envelope<SubmitData> = serde_json::from_str(
            r#"{"log_id":1745,"data":{"primary_task_id":1659384536691865192,"task_id":"1659384536691865192"}}"#,
        )
        .unwrap();
        let d = a.data.unwrap();
        assert_eq!(d.task_id, "1659384536691865192");
        assert_eq!(d.primary_task_id, Some(1659384536691865192));
        assert_eq!(a.log_id.as_deref(), Some("1745"));
    }

    #[test]
    fn query_request_accepts_string_or_number() {
        let a: QueryRequest = serde_json::from_str(r#"{"task_id":1659384536691865192}"#).unwrap();
        let b: QueryRequest = serde_json::from_str(r#"{"task_id":"1659384536691865192"}"#).unwrap();
        assert_eq!(a.task_id, b.task_id);
    }

    #[test]
    fn query_answer_from_the_sdk_docs_parses() {
        let a: Envelope<QueryData> = serde_json::from_str(
            r#"{"data":{"task_id":1659384536691865192,"task_status":"SUCCESS","task_progress":1,
            "sub_task_result_list":[{"sub_task_status":"SUCCESS","sub_task_progress":1,"sub_task_error_code":0,
            "final_image_list":[{"img_url":"http://x/y.png?s","width":512,"height":512,"img_approve_conclusion":"pass"}]}]},
            "log_id":"99"}"#,
        )
        .unwrap();
        let d = a.data.unwrap();
        assert_eq!(d.task_status, TaskStatus::Success);
        assert_eq!(d.task_progress, 1.0);
        assert_eq!(
            d.sub_task_result_list[0].final_image_list[0].img_approve_conclusion,
            Verdict::Pass
        );
        let b: Envelope<QueryData> = serde_json::from_str(
            r#"{"data":{"task_id":0,"task_status":"RUNNING","task_progress":0.35,"sub_task_result_list":[]}}"#,
        )
        .unwrap();
        assert!((b.data.unwrap().task_progress - 0.35).abs() < 1e-9);
    }

    #[test]
    fn error_answer_parses_and_classifies() {
        let a: Envelope<SubmitData> = serde_json::from_str(
            r#"{"error_code":17,"error_msg":"Open api daily request limit reached","log_id":"7"}"#,
        )
        .unwrap();
        assert!(a.data.is_none());
        assert_eq!(ErrorClass::of(a.error_code.unwrap()), ErrorClass::Quota);
        assert_eq!(ErrorClass::of(18), ErrorClass::Rate);
        assert_eq!(ErrorClass::of(13), ErrorClass::Rate);
        assert_eq!(ErrorClass::of(15), ErrorClass::Concurrency);
        assert_eq!(ErrorClass::of(111), ErrorClass::Token);
        assert_eq!(ErrorClass::of(282004), ErrorClass::Permanent);
        assert_eq!(ErrorClass::of(216303), ErrorClass::Timeout);
        assert_eq!(ErrorClass::of(19), ErrorClass::Fatal);
        assert_eq!(ErrorClass::of(282000), ErrorClass::Transient);
    }

    #[test]
    fn quota_days_run_from_midnight_in_shanghai() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        // 2026-11-21 15:59:59 UTC is 23:59:59 in Shanghai; the day turns at 16:00:00 UTC.
        let before = at("2026-11-21T15:59:59Z");
        let midnight = at("2026-11-21T16:00:00Z");
        assert_eq!(next_quota_reset(before), midnight);
        assert_eq!(next_quota_reset(midnight), midnight + QUOTA_DAY_MS);
        assert_eq!(quota_day_start(before), midnight - QUOTA_DAY_MS);
        assert_eq!(quota_day_start(midnight), midnight);
        assert_eq!(quota_day(midnight), quota_day(before) + 1);
        // Before 1970 too (div_euclid, not truncation).
        assert_eq!(quota_day_start(-1), at("1969-12-31T16:00:00Z"));
    }

    #[test]
    fn sizes_follow_the_version_tables() {
        assert!(Version::V2.allows(Size::new(512, 512)));
        assert!(!Version::V1.allows(Size::new(512, 512)));
        assert!(Version::V1.allows(Size::new(2560, 1440)));
        assert_eq!(Size::parse("1280x720"), Some(Size::new(1280, 720)));
        assert_eq!(Size::parse(" 720 X 1280 "), Some(Size::new(720, 1280)));
        assert_eq!(Size::parse("big"), None);
    }
}
