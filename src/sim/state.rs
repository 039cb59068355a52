//! The simulated account: access tokens, tasks and their timelines, the rate, concurrency and
//! quota limits, and the signed image URLs. HTTP and faults live in [`routes`](super::routes);
//! everything here answers with a status and a JSON body.
//!
//! One mutex guards the whole account. Every request holds it for a few map look-ups and no I/O:
//! task state is never advanced by a background job but computed from the clock when asked,
//! and the only ordered structure (tasks in generation by finishing time) is a heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// The tokio clock (the system clock outside tests): a test on paused time drives generations,
// rate windows, quota days and URL expiry with it.
use tokio::time::Instant;

use axum::http::StatusCode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::config::SimConfig;
use super::png::PngCache;
use super::stats::{ItemSubmits, RateWindow, Stats, TaskRecord};
use crate::api::{self, Size, TaskStatus, Verdict, Version, code};

/// Smallest task id handed out: 19 digits, far above 2^53.
const TASK_ID_BASE: u64 = 1_700_000_000_000_000_000;
/// Ids of consecutive tasks are this far apart, with a random offset below it: unique, not dense.
const TASK_ID_STRIDE: u64 = 1_000_003;
/// Error `3` of Baidu's platform, for unknown API methods.
pub(crate) const UNSUPPORTED_METHOD: i64 = 3;
/// Error `100`: a parameter (here: `access_token`) is missing.
const INVALID_PARAMETER: i64 = 100;

/// A JSON answer: HTTP status and body.
#[derive(Debug, Clone)]
pub(crate) struct JsonAnswer {
    /// HTTP status (200 for every API error, as the real API).
    pub(crate) status: StatusCode,
    /// The body.
    pub(crate) body: Value,
}

/// Which endpoint a request reached, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/oauth/2.0/token`.
    Token,
    /// `txt2imgv2`.
    Submit,
    /// `getImgv2`.
    Query,
    /// An image URL.
    Image,
}

/// What a valid image URL points at.
#[derive(Debug, Clone)]
pub(crate) struct ImageRef {
    /// The task's numeric id.
    pub(crate) task_id: u64,
    /// The prompt (the image is a function of it).
    pub(crate) prompt: String,
    /// The size.
    pub(crate) size: Size,
    /// The image's index in the task.
    pub(crate) index: u32,
}

/// How a task ends, decided when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    /// Sub-task error 201 at the end of generation.
    ModelFailure,
    /// Sub-task error 501 at the end of the INIT phase.
    Censored,
    /// Error 216303 once the task timeout elapses.
    Timeout,
}

#[derive(Debug)]
struct Task {
    id: u64,
    id_str: String,
    prompt: String,
    size: Size,
    version: Version,
    image_num: u32,
    submitted: Instant,
    generation: Duration,
    /// When each sub-task finishes, from the submit; the largest is `generation`.
    sub_done: Vec<Duration>,
    outcome: Outcome,
    /// When the task is final, from the submit.
    final_after: Duration,
    verdicts: Vec<Verdict>,
    first_final_query: Option<Instant>,
    first_download: Option<Instant>,
    queries: u64,
}

/// A sub-task's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SubState {
    status: TaskStatus,
    progress: f64,
    error_code: i64,
}

impl Task {
    /// The INIT phase ends at this fraction of the generation time, WAIT at the next.
    const INIT_END: f64 = 0.10;
    const WAIT_END: f64 = 0.25;

    fn sub_state(&self, index: usize, elapsed: Duration) -> SubState {
        let running = |status, progress| SubState {
            status,
            progress,
            error_code: 0,
        };
        let init_end = self.generation.mul_f64(Task::INIT_END);
        let wait_end = self.generation.mul_f64(Task::WAIT_END);
        if self.outcome == Outcome::Censored {
            return if elapsed >= self.final_after {
                SubState {
                    status: TaskStatus::Failed,
                    progress: 1.0,
                    error_code: api::SUB_ERR_CENSORED,
                }
            } else {
                running(TaskStatus::Init, 0.0)
            };
        }
        let done = self.sub_done[index];
        if elapsed < init_end {
            return running(TaskStatus::Init, 0.0);
        }
        if elapsed < wait_end {
            return running(TaskStatus::Wait, 0.0);
        }
        if elapsed < done || self.outcome == Outcome::Timeout {
            let span = done.saturating_sub(wait_end).as_secs_f64();
            let p = if span > 0.0 {
                (elapsed.saturating_sub(wait_end).as_secs_f64() / span).min(0.99)
            } else {
                0.99
            };
            return running(TaskStatus::Running, p);
        }
        match self.outcome {
            Outcome::ModelFailure => SubState {
                status: TaskStatus::Failed,
                progress: 1.0,
                error_code: api::SUB_ERR_MODEL,
            },
            _ => running(TaskStatus::Success, 1.0),
        }
    }

    fn status_at(&self, elapsed: Duration) -> TaskStatus {
        if elapsed >= self.final_after {
            return match self.outcome {
                Outcome::Success => TaskStatus::Success,
                _ => TaskStatus::Failed,
            };
        }
        let subs: Vec<SubState> = (0..self.sub_done.len())
            .map(|i| self.sub_state(i, elapsed))
            .collect();
        aggregate_status(&subs)
    }

    fn error_code(&self) -> Option<i64> {
        match self.outcome {
            Outcome::Success => None,
            Outcome::ModelFailure => Some(api::SUB_ERR_MODEL),
            Outcome::Censored => Some(api::SUB_ERR_CENSORED),
            Outcome::Timeout => Some(code::TASK_TIMEOUT),
        }
    }
}

fn aggregate_status(subs: &[SubState]) -> TaskStatus {
    if subs.iter().all(|s| s.status.is_final()) {
        if subs.iter().all(|s| s.status == TaskStatus::Success) {
            TaskStatus::Success
        } else {
            TaskStatus::Failed
        }
    } else if subs
        .iter()
        .any(|s| s.status == TaskStatus::Running || s.status.is_final())
    {
        TaskStatus::Running
    } else if subs.iter().any(|s| s.status == TaskStatus::Wait) {
        TaskStatus::Wait
    } else {
        TaskStatus::Init
    }
}

/// A valid submit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubmitSpec {
    pub(crate) prompt: String,
    pub(crate) size: Size,
    pub(crate) version: Version,
    pub(crate) image_num: u32,
    /// The submit's own `task_time_out`, seconds.
    pub(crate) task_time_out: Option<u64>,
}

/// An API error: code and message.
type ApiError = (i64, String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemKey {
    prompt: String,
    size: Size,
    version: Version,
    image_num: u32,
}

#[derive(Debug)]
struct State {
    /// Token to its expiry.
    tokens: HashMap<String, Instant>,
    tasks: HashMap<u64, Task>,
    /// Task ids in submission order.
    order: Vec<u64>,
    /// Unfinished tasks by finishing time.
    generating: BinaryHeap<Reverse<(Instant, u64)>>,
    in_generation: u32,
    quota_day: u64,
    quota_used: u64,
    submit_limit: Option<(RateWindow, usize)>,
    query_limit: Option<(RateWindow, usize)>,
    submits_seen: RateWindow,
    queries_seen: RateWindow,
    per_item: HashMap<ItemKey, u64>,
    /// The error burst going on: its code and the calls it still answers.
    burst: Option<(i64, u32)>,
    /// Decides when bursts start and with which code (its own stream, so bursts never shift
    /// the other random decisions).
    burst_rng: ChaCha8Rng,
    /// Counters; the derived fields are filled in by [`Sim::stats`].
    stats: Stats,
}

/// The simulated account.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    start: Instant,
    start_unix_ms: u64,
    sign_key: [u8; 32],
    state: Mutex<State>,
    pub(crate) png: PngCache,
    log_seq: AtomicU64,
}

/// A well-mixed 64-bit function of `x` (SplitMix64's finaliser), for ids and cheap choices.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The quota day of a moment: windows of `window` from the start, or else the calendar day in
/// Asia/Shanghai of `unix_ms`.
pub(crate) fn quota_day(unix_ms: u64, since_start: Duration, window: Option<Duration>) -> u64 {
    match window {
        Some(w) => (since_start.as_nanos() / w.as_nanos().max(1)) as u64,
        None => api::quota_day(unix_ms as i64) as u64,
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        _ => None,
    }
}

/// Validates a submit body, in the order the fields are documented. Missing required fields
/// answer 282003, a prompt over 200 characters 282004, every other bad value 216100.
pub(crate) fn validate_submit(body: &[u8]) -> Result<SubmitSpec, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        (
            code::PARAM_FORMAT,
            "request body is not valid JSON".to_owned(),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err((
            code::PARAM_FORMAT,
            "request body must be a JSON object".to_owned(),
        ));
    };
    let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let missing: Vec<&str> = ["prompt", "width", "height"]
        .into_iter()
        .filter(|k| !present(k) || obj[*k].as_str().is_some_and(|s| s.trim().is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err((
            code::PARAM_FORMAT,
            format!("missing parameters: {}", missing.join(", ")),
        ));
    }
    let bad = |msg: String| (code::PARAM, msg);
    let prompt = obj["prompt"]
        .as_str()
        .ok_or_else(|| bad("prompt must be a string".into()))?;
    if prompt.chars().count() > api::MAX_PROMPT_CHARS {
        return Err((
            code::SENSITIVE,
            format!(
                "prompt is too long: {} characters, at most {}",
                prompt.chars().count(),
                api::MAX_PROMPT_CHARS
            ),
        ));
    }
    let dimension = |k: &str| {
        integer(&obj[k])
            .filter(|v| *v > 0 && *v <= u32::MAX as i64)
            .map(|v| v as u32)
            .ok_or_else(|| bad(format!("{k} must be a positive integer")))
    };
    let size = Size::new(dimension("width")?, dimension("height")?);
    let version = match obj.get("version") {
        None | Some(Value::Null) => Version::V2,
        Some(v) => v
            .as_str()
            .and_then(Version::parse)
            .ok_or_else(|| bad(format!("version must be \"v1\" or \"v2\", got {v}")))?,
    };
    if !version.allows(size) {
        return Err(bad(format!(
            "size {size} is not supported by {version} (supported: {})",
            version
                .sizes()
                .iter()
                .map(Size::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let image_num = match obj.get("image_num") {
        None | Some(Value::Null) => 1,
        Some(v) => integer(v)
            .filter(|n| (1..=api::MAX_IMAGE_NUM as i64).contains(n))
            .ok_or_else(|| bad(format!("image_num must be 1 to 8, got {v}")))?
            as u32,
    };
    let task_time_out = match obj.get("task_time_out") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            integer(v)
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("task_time_out must be a positive integer, got {v}")))?
                as u64,
        ),
    };
    if let Some(v) = obj.get("text_check").filter(|v| !v.is_null())
        && !matches!(integer(v), Some(0 | 1))
    {
        return Err(bad(format!("text_check must be 0 or 1, got {v}")));
    }
    if let Some(v) = obj.get("text_content").filter(|v| !v.is_null())
        && !v
            .as_str()
            .is_some_and(|s| (1..=50).contains(&s.chars().count()))
    {
        return Err(bad("text_content must be 1 to 50 characters".into()));
    }
    if ["image", "url", "pdf_file"].into_iter().any(present) {
        if !present("change_degree") {
            return Err((
                code::PARAM_FORMAT,
                "missing parameters: change_degree (required with a reference image)".into(),
            ));
        }
        if !integer(&obj["change_degree"]).is_some_and(|d| (1..=10).contains(&d)) {
            return Err(bad("change_degree must be 1 to 10".into()));
        }
    }
    Ok(SubmitSpec {
        prompt: prompt.to_owned(),
        size,
        version,
        image_num,
        task_time_out,
    })
}

fn progress_value(p: f64, is_final: bool) -> Value {
    if is_final {
        json!(1)
    } else if p <= 0.0 {
        json!(0)
    } else {
        json!(((p * 1000.0).floor() / 1000.0).min(0.999))
    }
}

impl Sim {
    /// A fresh account with `config`, its clock starting now.
    pub(crate) fn new(config: SimConfig) -> Sim {
        let start = Instant::now();
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let sign_key: [u8; 32] = Sha256::new()
            .chain_update(b"runner-sim-url-key")
            .chain_update(config.seed.to_le_bytes())
            .finalize()
            .into();
        let state = State {
            tokens: HashMap::new(),
            tasks: HashMap::new(),
            order: Vec::new(),
            generating: BinaryHeap::new(),
            in_generation: 0,
            quota_day: quota_day(start_unix_ms, Duration::ZERO, config.quota_window),
            quota_used: 0,
            submit_limit: config.submit_qps.map(RateWindow::for_qps),
            query_limit: config.query_qps.map(RateWindow::for_qps),
            submits_seen: RateWindow::new(Duration::from_secs(1)),
            queries_seen: RateWindow::new(Duration::from_secs(1)),
            per_item: HashMap::new(),
            burst: None,
            burst_rng: ChaCha8Rng::seed_from_u64(mix64(config.seed ^ 0x6275_7273_7473)),
            stats: Stats::default(),
        };
        Sim {
            png: PngCache::new(config.png_cache_bytes),
            config,
            start,
            start_unix_ms,
            sign_key,
            state: Mutex::new(state),
            log_seq: AtomicU64::new(0),
        }
    }

    /// Makes every token issued so far expire now: later calls with them answer 111, as when a
    /// token dies before its advertised `expires_in` (keys rotated, clocks apart).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        for expiry in st.tokens.values_mut() {
            *expiry = (*expiry).min(now);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update keeps the state consistent between statements, so a panic elsewhere
        // while holding the lock leaves nothing half-done worth refusing to serve.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ms_since_start(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }

    fn unix_ms(&self, t: Instant) -> u64 {
        self.start_unix_ms + self.ms_since_start(t)
    }

    /// A `log_id`, a number in some answers and a string in others (both occur in reality).
    fn log_id(&self) -> Value {
        let n = self.log_seq.fetch_add(1, Ordering::Relaxed);
        let x = mix64(self.config.seed ^ mix64(n));
        let id = 1_000_000_000_000_000 + x % 9_000_000_000_000_000;
        if x >> 63 == 1 {
            json!(id.to_string())
        } else {
            json!(id)
        }
    }

    fn api_error(&self, st: &mut State, code: i64, msg: impl Into<String>) -> JsonAnswer {
        *st.stats.errors.entry(code.to_string()).or_default() += 1;
        JsonAnswer {
            status: StatusCode::OK,
            body: json!({"error_code": code, "error_msg": msg.into(), "log_id": self.log_id()}),
        }
    }

    /// Counts a request of `endpoint` (before any fault or check, so every request counts).
    pub(crate) fn note_request(&self, endpoint: Endpoint) {
        let now = Instant::now();
        let mut st = self.lock();
        match endpoint {
            Endpoint::Token => st.stats.token_requests += 1,
            Endpoint::Submit => {
                st.stats.submit_requests += 1;
                let rate = st.submits_seen.record(now) as u32;
                st.stats.max_submit_rate = st.stats.max_submit_rate.max(rate);
            }
            Endpoint::Query => {
                st.stats.queries += 1;
                let rate = st.queries_seen.record(now) as u32;
                st.stats.max_query_rate = st.stats.max_query_rate.max(rate);
            }
            Endpoint::Image => st.stats.download_requests += 1,
        }
    }

    /// Counts an injected fault.
    pub(crate) fn note_fault(&self, kind: &str) {
        *self.lock().stats.faults.entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts a response status.
    pub(crate) fn note_status(&self, status: StatusCode) {
        *self
            .lock()
            .stats
            .http_status
            .entry(status.as_u16().to_string())
            .or_default() += 1;
    }

    /// Counts an API error sent outside the account logic (an unknown method).
    pub(crate) fn unsupported_method(&self) -> JsonAnswer {
        let mut st = self.lock();
        self.api_error(&mut st, UNSUPPORTED_METHOD, "Unsupported openapi method")
    }

    /// The token endpoint: OAuth client credentials.
    pub(crate) fn token(&self, params: &HashMap<String, String>) -> JsonAnswer {
        let now = Instant::now();
        let mut st = self.lock();
        let oauth_error = |st: &mut State, status, error: &str, description: &str| {
            *st.stats.errors.entry(error.to_owned()).or_default() += 1;
            JsonAnswer {
                status,
                body: json!({"error": error, "error_description": description}),
            }
        };
        if params.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return oauth_error(
                &mut st,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported",
            );
        }
        if params.get("client_id") != Some(&self.config.ak) {
            return oauth_error(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client id",
            );
        }
        if params.get("client_secret") != Some(&self.config.sk) {
            return oauth_error(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        st.stats.tokens_issued += 1;
        let n = st.stats.tokens_issued;
        let digest = Sha256::new()
            .chain_update(self.sign_key)
            .chain_update(b"token")
            .chain_update(n.to_le_bytes())
            .finalize();
        let ttl = self
            .config
            .token_expires_in
            .unwrap_or(self.config.token_ttl)
            .as_secs();
        let token = format!(
            "24.{}.{ttl}.{}.282335-{}",
            hex::encode(&digest[..16]),
            self.unix_ms(now) / 1000,
            10_000_000 + n
        );
        st.tokens.insert(token.clone(), now + self.config.token_ttl);
        JsonAnswer {
            status: StatusCode::OK,
            body: json!({
                "refresh_token": format!("25.{}.315360000.{}.282335-{}", hex::encode(&digest[16..]), self.unix_ms(now) / 1000, 10_000_000 + n),
                "expires_in": ttl,
                "session_key": "9mzdDZXu3dENdFZQurfg0Vz8slgSgvvOAUebNFzyzcpQ5EnzAgaHqEMI1cndY4oOzRaYFY",
                "access_token": token,
                "scope": "public brain_all_scope wenxinworkshop_mgr brain_ernievilg_txt2img",
                "session_secret": hex::encode(&digest[..8]),
            }),
        }
    }

    /// Checks the `access_token` query parameter: missing 100, unknown 110, expired 111.
    fn check_token(
        &self,
        st: &mut State,
        token: Option<&str>,
        now: Instant,
    ) -> Result<(), JsonAnswer> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(self.api_error(st, INVALID_PARAMETER, "Invalid parameter"));
        };
        match st.tokens.get(token) {
            None => Err(self.api_error(
                st,
                code::TOKEN_INVALID,
                "Access token invalid or no longer valid",
            )),
            Some(expiry) if now >= *expiry => {
                Err(self.api_error(st, code::TOKEN_EXPIRED, "Access token expired"))
            }
            Some(_) => Ok(()),
        }
    }

    /// The answer of an injected error burst this call meets, if any. Every submit and query
    /// draws from the burst generator, whether or not a burst starts, so the same call sequence
    /// meets the same bursts.
    fn burst(&self, st: &mut State, endpoint: Endpoint) -> Option<JsonAnswer> {
        // The account's slots and daily quota only concern submits.
        let applies = |code: i64| {
            endpoint == Endpoint::Submit || !matches!(code, code::CONCURRENCY | code::DAILY_QUOTA)
        };
        let rate = self.config.burst_rate;
        if rate <= 0.0 || self.config.burst_len == 0 {
            return None;
        }
        let (u, pick) = (st.burst_rng.random::<f64>(), st.burst_rng.random::<u64>());
        if st.burst.is_none() && u < rate {
            let codes: Vec<i64> = self
                .config
                .burst_codes
                .iter()
                .copied()
                .filter(|c| applies(*c))
                .collect();
            if !codes.is_empty() {
                let code = codes[(pick % codes.len() as u64) as usize];
                st.burst = Some((code, self.config.burst_len));
            }
        }
        let (code, left) = st.burst.filter(|(c, _)| applies(*c))?;
        st.burst = (left > 1).then_some((code, left - 1));
        let msg = match code {
            code::CONCURRENCY => "Open api concurrency limit reached",
            code::DAILY_QUOTA => "Open api daily request limit reached",
            code::QPS | code::QPS_OLD => "Open api qps request limit reached",
            _ => "injected error burst",
        };
        Some(self.api_error(st, code, msg))
    }

    /// Moves tasks that have reached their final state out of the images in generation.
    fn release_finished(&self, st: &mut State, now: Instant) {
        while let Some(Reverse((at, id))) = st.generating.peek().copied() {
            if at > now {
                break;
            }
            st.generating.pop();
            let Some(task) = st.tasks.get(&id) else {
                continue;
            };
            let (n, outcome, error) = (task.image_num, task.outcome, task.error_code());
            st.in_generation = st.in_generation.saturating_sub(n);
            match outcome {
                Outcome::Success => st.stats.images_generated += n as u64,
                Outcome::Timeout => st.stats.tasks_failed += 1,
                Outcome::ModelFailure | Outcome::Censored => {
                    st.stats.tasks_failed += 1;
                    if let Some(code) = error {
                        *st.stats
                            .sub_task_errors
                            .entry(code.to_string())
                            .or_default() += n as u64;
                    }
                }
            }
        }
    }

    fn banned_words(&self, prompt: &str) -> Vec<String> {
        let lower = prompt.to_lowercase();
        self.config
            .banned
            .iter()
            .filter(|w| !w.is_empty() && lower.contains(&w.to_lowercase()))
            .cloned()
            .collect()
    }

    /// What every API call meets first, in the real API's order: the token (100/110/111), an
    /// error burst if one is running, then the endpoint's rate limit (18). A call refused for
    /// its token does not count against the rate; one that passes the rate check does.
    fn admit(
        &self,
        st: &mut State,
        token: Option<&str>,
        now: Instant,
        endpoint: Endpoint,
    ) -> Result<(), JsonAnswer> {
        self.check_token(st, token, now)?;
        if let Some(answer) = self.burst(st, endpoint) {
            return Err(answer);
        }
        let limit = match endpoint {
            Endpoint::Submit => st.submit_limit.as_mut(),
            Endpoint::Query => st.query_limit.as_mut(),
            Endpoint::Token | Endpoint::Image => None,
        };
        if let Some((window, cap)) = limit
            && !window.try_admit(now, *cap)
        {
            return Err(self.api_error(st, code::QPS, "Open api qps request limit reached"));
        }
        Ok(())
    }

    /// The submit endpoint. Checks in this order: token (100/110/111), rate (18), parameters
    /// (282003/282004/216100), censorship when `banned_at_submit` (282004), daily quota (17),
    /// concurrency (15). Only a submit that passes all of them creates a task.
    pub(crate) fn submit(&self, token: Option<&str>, body: &[u8]) -> JsonAnswer {
        let now = Instant::now();
        let mut st = self.lock();
        if let Err(answer) = self.admit(&mut st, token, now, Endpoint::Submit) {
            return answer;
        }
        let spec = match validate_submit(body) {
            Ok(spec) => spec,
            Err((code, msg)) => return self.api_error(&mut st, code, msg),
        };
        let banned = self.banned_words(&spec.prompt);
        if self.config.banned_at_submit && !banned.is_empty() {
            let mut answer =
                self.api_error(&mut st, code::SENSITIVE, "prompt contains sensitive words");
            answer.body["error_detail"] =
                json!([{"msg": "prompt contains sensitive words", "words": banned}]);
            return answer;
        }
        self.release_finished(&mut st, now);
        let day = quota_day(
            self.unix_ms(now),
            now.saturating_duration_since(self.start),
            self.config.quota_window,
        );
        if day != st.quota_day {
            st.quota_day = day;
            st.quota_used = 0;
        }
        let n = spec.image_num;
        if let Some(quota) = self.config.daily_quota
            && st.quota_used + n as u64 > quota
        {
            return self.api_error(
                &mut st,
                code::DAILY_QUOTA,
                "Open api daily request limit reached",
            );
        }
        if let Some(limit) = self.config.concurrency
            && st.in_generation + n > limit
        {
            return self.api_error(
                &mut st,
                code::CONCURRENCY,
                "Open api concurrency limit reached",
            );
        }
        let task = self.new_task(&st, spec, !banned.is_empty(), now);
        let (id, id_str, final_at) = (
            task.id,
            task.id_str.clone(),
            task.submitted + task.final_after,
        );
        st.quota_used += n as u64;
        st.in_generation += n;
        st.stats.max_in_generation = st.stats.max_in_generation.max(st.in_generation);
        st.stats.submits += 1;
        let key = ItemKey {
            prompt: task.prompt.clone(),
            size: task.size,
            version: task.version,
            image_num: n,
        };
        *st.per_item.entry(key).or_default() += 1;
        st.generating.push(Reverse((final_at, id)));
        st.order.push(id);
        st.tasks.insert(id, task);
        // A task that is final at once (zero generation time) is released at once.
        self.release_finished(&mut st, now);
        JsonAnswer {
            status: StatusCode::OK,
            body: json!({"log_id": self.log_id(), "data": {"primary_task_id": id, "task_id": id_str}}),
        }
    }

    /// Draws everything about a new task from a generator seeded by (seed, submit number), in a
    /// fixed order, so the same seed and submit sequence give the same tasks.
    fn new_task(&self, st: &State, spec: SubmitSpec, censored: bool, now: Instant) -> Task {
        let seq = st.order.len() as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(mix64(self.config.seed ^ 0x7461_736b) ^ mix64(seq));
        let (min, max) = self.config.gen_ms;
        let generation = Duration::from_millis(rng.random_range(min..=max));
        let n = spec.image_num as usize;
        let sub_done: Vec<Duration> = (0..n)
            .map(|i| {
                let spread: f64 = rng.random();
                if i + 1 == n {
                    generation
                } else {
                    generation.mul_f64(0.85 + 0.15 * spread)
                }
            })
            .collect();
        let verdicts: Vec<Verdict> = (0..n)
            .map(|_| {
                let u: f64 = rng.random();
                if u < self.config.block_rate {
                    Verdict::Block
                } else if u < self.config.block_rate + self.config.review_rate {
                    Verdict::Review
                } else {
                    Verdict::Pass
                }
            })
            .collect();
        let model_fails = rng.random::<f64>() < self.config.fail_rate;
        let id = TASK_ID_BASE + seq * TASK_ID_STRIDE + rng.random_range(0..TASK_ID_STRIDE);
        let timeout = match spec.task_time_out {
            Some(secs) => self.config.task_timeout.min(Duration::from_secs(secs)),
            None => self.config.task_timeout,
        };
        let (outcome, final_after) = if censored {
            (Outcome::Censored, generation.mul_f64(Task::INIT_END))
        } else if generation > timeout {
            (Outcome::Timeout, timeout)
        } else if model_fails {
            (Outcome::ModelFailure, generation)
        } else {
            (Outcome::Success, generation)
        };
        Task {
            id,
            id_str: id.to_string(),
            prompt: spec.prompt,
            size: spec.size,
            version: spec.version,
            image_num: spec.image_num,
            submitted: now,
            generation,
            sub_done,
            outcome,
            final_after,
            verdicts,
            first_final_query: None,
            first_download: None,
            queries: 0,
        }
    }

    /// The query endpoint. Checks token, then rate, then the `task_id`. `host` is where image
    /// URLs point; `delivered` says whether the answer will reach the client (a fault may lose
    /// it), so that [`TaskRecord::first_final_query_ms`] only counts answers that arrived.
    pub(crate) fn query(
        &self,
        token: Option<&str>,
        body: &[u8],
        host: &str,
        delivered: bool,
    ) -> JsonAnswer {
        let now = Instant::now();
        let mut st = self.lock();
        if let Err(answer) = self.admit(&mut st, token, now, Endpoint::Query) {
            return answer;
        }
        let id = match parse_task_id(body) {
            Ok(id) => id,
            Err((code, msg)) => return self.api_error(&mut st, code, msg),
        };
        let Some(task) = st.tasks.get_mut(&id) else {
            return self.api_error(&mut st, code::PARAM, format!("task_id {id} does not exist"));
        };
        task.queries += 1;
        let elapsed = now.saturating_duration_since(task.submitted);
        let is_final = elapsed >= task.final_after;
        if is_final && delivered && task.first_final_query.is_none() {
            task.first_final_query = Some(now);
        }
        if is_final && task.outcome == Outcome::Timeout {
            return self.api_error(
                &mut st,
                code::TASK_TIMEOUT,
                "task timeout: the task waited too long and was cancelled",
            );
        }
        let issued = self.unix_ms(now);
        // Two answers in the same millisecond still sign different URLs.
        let serial = task.queries;
        // Whole seconds, rounded up: the URL lives at least url_ttl.
        let announced = self.config.url_announced_ttl.unwrap_or(self.config.url_ttl);
        let expires = (issued + announced.as_millis() as u64).div_ceil(1000);
        let subs: Vec<SubState> = (0..task.sub_done.len())
            .map(|i| task.sub_state(i, elapsed))
            .collect();
        let status = if is_final {
            task.status_at(elapsed)
        } else {
            aggregate_status(&subs)
        };
        let sub_list: Vec<Value> = subs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let images = if s.status == TaskStatus::Success {
                    let path = format!("/img/{}/{i}.png", task.id);
                    let sign = self.sign(&path, issued, serial, expires);
                    vec![json!({
                        "img_url": format!("http://{host}{path}?issued={issued}&serial={serial}&expires={expires}&sign={sign}"),
                        "width": task.size.width,
                        "height": task.size.height,
                        "img_approve_conclusion": task.verdicts[i].as_str(),
                    })]
                } else {
                    Vec::new()
                };
                json!({
                    "sub_task_status": s.status,
                    "sub_task_progress": progress_value(s.progress, s.status.is_final()),
                    "sub_task_error_code": s.error_code,
                    "final_image_list": images,
                })
            })
            .collect();
        let mean = subs.iter().map(|s| s.progress).sum::<f64>() / subs.len().max(1) as f64;
        // The id comes back as a number, a string, or (seen in a real SUCCESS answer) 0.
        let shape = mix64(task.id ^ task.queries) % 10;
        let task_id = match shape {
            0..=5 => json!(task.id),
            6..=8 => json!(task.id_str),
            _ if status == TaskStatus::Success => json!(0),
            _ => json!(task.id),
        };
        JsonAnswer {
            status: StatusCode::OK,
            body: json!({
                "log_id": self.log_id(),
                "data": {
                    "task_id": task_id,
                    "task_status": status,
                    "task_progress": progress_value(mean, status.is_final()),
                    "sub_task_result_list": sub_list,
                }
            }),
        }
    }

    fn sign(&self, path: &str, issued: u64, serial: u64, expires: u64) -> String {
        let digest = Sha256::new()
            .chain_update(self.sign_key)
            .chain_update(path.as_bytes())
            .chain_update(b"|")
            .chain_update(issued.to_string().as_bytes())
            .chain_update(b"|")
            .chain_update(serial.to_string().as_bytes())
            .chain_update(b"|")
            .chain_update(expires.to_string().as_bytes())
            .finalize();
        hex::encode(&digest[..16])
    }

    /// Checks an image URL: its signature (else 403), its expiry (else 403), and that it names
    /// a finished image (else 404).
    pub(crate) fn image(
        &self,
        task: &str,
        file: &str,
        params: &HashMap<String, String>,
    ) -> Result<ImageRef, JsonAnswer> {
        let now = Instant::now();
        let mut st = self.lock();
        let denied = |message: &str| JsonAnswer {
            status: StatusCode::FORBIDDEN,
            body: json!({"code": "AccessDenied", "message": message, "requestId": format!("{:032x}", mix64(now.elapsed().as_nanos() as u64))}),
        };
        let path = format!("/img/{task}/{file}");
        let num = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
        let (Some(issued), Some(serial), Some(expires), Some(sign)) = (
            num("issued"),
            num("serial"),
            num("expires"),
            params.get("sign"),
        ) else {
            st.stats.bad_signature_hits += 1;
            return Err(denied("Missing signature"));
        };
        if *sign != self.sign(&path, issued, serial, expires) {
            st.stats.bad_signature_hits += 1;
            return Err(denied("The request signature does not match"));
        }
        // A URL that announces more than it has dies after its real lifetime.
        let dead = self.config.url_announced_ttl.is_some()
            && self.unix_ms(now) >= issued.saturating_add(self.config.url_ttl.as_millis() as u64);
        if self.unix_ms(now) >= expires * 1000 || dead {
            st.stats.expired_url_hits += 1;
            return Err(denied("Request has expired"));
        }
        let not_found = || JsonAnswer {
            status: StatusCode::NOT_FOUND,
            body: json!({"code": "NoSuchKey", "message": "The specified key does not exist."}),
        };
        let (Ok(id), Some(Ok(index))) = (
            task.parse::<u64>(),
            file.strip_suffix(".png").map(str::parse::<u32>),
        ) else {
            return Err(not_found());
        };
        let Some(t) = st.tasks.get(&id) else {
            return Err(not_found());
        };
        let elapsed = now.saturating_duration_since(t.submitted);
        if index >= t.image_num
            || t.sub_state(index as usize, elapsed).status != TaskStatus::Success
        {
            return Err(not_found());
        }
        Ok(ImageRef {
            task_id: id,
            prompt: t.prompt.clone(),
            size: t.size,
            index,
        })
    }

    /// Records a whole image download of `task_id`.
    pub(crate) fn note_download(&self, task_id: u64) {
        let now = Instant::now();
        let mut st = self.lock();
        st.stats.downloads += 1;
        if let Some(t) = st.tasks.get_mut(&task_id) {
            t.first_download.get_or_insert(now);
        }
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        let now = Instant::now();
        let (png_hits, png_misses) = self.png.counts();
        let mut st = self.lock();
        self.release_finished(&mut st, now);
        let mut stats = st.stats.clone();
        stats.uptime_ms = self.ms_since_start(now);
        stats.in_generation = st.in_generation;
        let day = quota_day(
            self.unix_ms(now),
            now.saturating_duration_since(self.start),
            self.config.quota_window,
        );
        stats.quota_used = if day == st.quota_day {
            st.quota_used
        } else {
            0
        };
        stats.png_cache_hits = png_hits;
        stats.png_cache_misses = png_misses;
        let mut items: Vec<ItemSubmits> = st
            .per_item
            .iter()
            .map(|(k, count)| ItemSubmits {
                prompt: k.prompt.clone(),
                width: k.size.width,
                height: k.size.height,
                version: k.version.as_str().to_owned(),
                image_num: k.image_num,
                count: *count,
            })
            .collect();
        items.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| {
                (&a.prompt, a.width, a.height, &a.version, a.image_num).cmp(&(
                    &b.prompt,
                    b.width,
                    b.height,
                    &b.version,
                    b.image_num,
                ))
            })
        });
        stats.submits_per_item = items;
        stats
    }

    /// Every accepted task, in submission order.
    pub(crate) fn tasks(&self) -> Vec<TaskRecord> {
        let now = Instant::now();
        let st = self.lock();
        st.order
            .iter()
            .filter_map(|id| st.tasks.get(id))
            .map(|t| {
                let elapsed = now.saturating_duration_since(t.submitted);
                let is_final = elapsed >= t.final_after;
                TaskRecord {
                    task_id: t.id_str.clone(),
                    prompt: t.prompt.clone(),
                    width: t.size.width,
                    height: t.size.height,
                    version: t.version.as_str().to_owned(),
                    image_num: t.image_num,
                    submitted_ms: self.ms_since_start(t.submitted),
                    finished_ms: is_final.then(|| self.ms_since_start(t.submitted + t.final_after)),
                    first_final_query_ms: t.first_final_query.map(|q| self.ms_since_start(q)),
                    first_download_ms: t.first_download.map(|d| self.ms_since_start(d)),
                    status: t.status_at(elapsed),
                    error_code: if is_final { t.error_code() } else { None },
                    verdicts: t.verdicts.clone(),
                    gen_ms: t.generation.as_millis() as u64,
                }
            })
            .collect()
    }
}

/// Reads `task_id` (a string or a number) from a query body: missing 282003, malformed 216100.
fn parse_task_id(body: &[u8]) -> Result<u64, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        (
            code::PARAM_FORMAT,
            "request body is not valid JSON".to_owned(),
        )
    })?;
    let id = match value.get("task_id") {
        None | Some(Value::Null) => {
            return Err((code::PARAM_FORMAT, "missing parameters: task_id".into()));
        }
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    };
    id.ok_or_else(|| {
        (
            code::PARAM,
            "task_id must be an integer or a string of digits".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: Value) -> Result<SubmitSpec, ApiError> {
        validate_submit(body.to_string().as_bytes())
    }

    /// The form of a token request with the simulator's default credentials.
    fn token_params() -> HashMap<String, String> {
        [
            ("grant_type", "client_credentials"),
            ("client_id", "sim-ak"),
            ("client_secret", "sim-sk"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn code_of(body: Value) -> i64 {
        spec(body).unwrap_err().0
    }

    #[test]
    fn a_full_valid_submit_parses() {
        let s = spec(json!({"prompt":"猫","width":1280,"height":720,"version":"v1","image_num":8,"task_time_out":60,"text_check":1,"text_content":"wm"})).unwrap();
        assert_eq!(s.size, Size::new(1280, 720));
        assert_eq!(s.version, Version::V1);
        assert_eq!(s.image_num, 8);
        assert_eq!(s.task_time_out, Some(60));
        let d = spec(json!({"prompt":"猫","width":512,"height":512})).unwrap();
        assert_eq!((d.version, d.image_num), (Version::V2, 1));
    }

    #[test]
    fn submit_parameter_errors_use_the_documented_codes() {
        assert_eq!(
            code_of(json!({"width":512,"height":512})),
            code::PARAM_FORMAT
        );
        assert_eq!(
            code_of(json!({"prompt":"  ","width":512,"height":512})),
            code::PARAM_FORMAT
        );
        assert_eq!(
            code_of(json!({"prompt":"a","height":512})),
            code::PARAM_FORMAT
        );
        assert_eq!(code_of(json!([1, 2])), code::PARAM_FORMAT);
        assert_eq!(
            validate_submit(b"{not json").unwrap_err().0,
            code::PARAM_FORMAT
        );
        let long: String = "长".repeat(201);
        assert_eq!(
            code_of(json!({"prompt":long,"width":512,"height":512})),
            code::SENSITIVE
        );
        let max: String = "长".repeat(200);
        assert!(spec(json!({"prompt":max,"width":512,"height":512})).is_ok());
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"version":"v1"})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":500,"height":500})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":"512","height":512})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"version":"v3"})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"image_num":0})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"image_num":9})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"image_num":1.5})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":7,"width":512,"height":512})),
            code::PARAM
        );
        assert_eq!(
            code_of(json!({"prompt":"a","width":512,"height":512,"url":"http://x/y.png"})),
            code::PARAM_FORMAT
        );
        assert_eq!(
            code_of(
                json!({"prompt":"a","width":512,"height":512,"url":"http://x/y.png","change_degree":11})
            ),
            code::PARAM
        );
        assert!(spec(json!({"prompt":"a","width":512,"height":512,"url":"http://x/y.png","change_degree":5})).is_ok());
    }

    #[test]
    fn query_task_id_accepts_string_or_number() {
        assert_eq!(
            parse_task_id(br#"{"task_id":"1700000000000000123"}"#),
            Ok(1_700_000_000_000_000_123)
        );
        assert_eq!(
            parse_task_id(br#"{"task_id":1700000000000000123}"#),
            Ok(1_700_000_000_000_000_123)
        );
        assert_eq!(parse_task_id(b"{}").unwrap_err().0, code::PARAM_FORMAT);
        assert_eq!(
            parse_task_id(br#"{"task_id":"abc"}"#).unwrap_err().0,
            code::PARAM
        );
    }

    #[test]
    fn quota_day_is_the_shanghai_calendar_day_or_a_window() {
        // 2026-11-20T15:59:59.999Z is 23:59:59.999 in Shanghai; one ms later is the next day.
        let before = 1_795_190_399_999u64;
        assert_eq!(
            quota_day(before + 1, Duration::ZERO, None),
            quota_day(before, Duration::ZERO, None) + 1
        );
        // 16:00 UTC is midnight in Shanghai, not 00:00 UTC.
        let utc_midnight = 1_795_132_800_000u64; // 2026-11-20T00:00:00Z
        assert_eq!(
            quota_day(utc_midnight - 1, Duration::ZERO, None),
            quota_day(utc_midnight, Duration::ZERO, None)
        );
        let w = Some(Duration::from_millis(500));
        assert_eq!(quota_day(0, Duration::from_millis(499), w), 0);
        assert_eq!(quota_day(0, Duration::from_millis(500), w), 1);
    }

    #[test]
    fn timeline_goes_init_wait_running_success_with_float_progress() {
        let sim = Sim::new(SimConfig {
            gen_ms: (1000, 1000),
            ..SimConfig::unlimited()
        });
        let st = sim.lock();
        let spec = SubmitSpec {
            prompt: "p".into(),
            size: Size::new(512, 512),
            version: Version::V2,
            image_num: 3,
            task_time_out: None,
        };
        let task = sim.new_task(&st, spec, false, Instant::now());
        let at = |ms| task.status_at(Duration::from_millis(ms));
        assert_eq!(at(0), TaskStatus::Init);
        assert_eq!(at(150), TaskStatus::Wait);
        assert_eq!(at(600), TaskStatus::Running);
        assert_eq!(at(1000), TaskStatus::Success);
        let p = task.sub_state(2, Duration::from_millis(600)).progress;
        assert!(p > 0.0 && p < 1.0, "{p}");
        assert_eq!(task.sub_done.len(), 3);
        assert!(
            task.sub_done
                .iter()
                .all(|d| *d <= Duration::from_millis(1000))
        );
    }

    #[test]
    fn timeouts_and_censorship_decide_the_outcome() {
        let sim = Sim::new(SimConfig {
            gen_ms: (2000, 2000),
            task_timeout: Duration::from_secs(1),
            banned: vec!["Bad".into()],
            ..SimConfig::unlimited()
        });
        let st = sim.lock();
        let spec = |p: &str| SubmitSpec {
            prompt: p.into(),
            size: Size::new(512, 512),
            version: Version::V2,
            image_num: 1,
            task_time_out: None,
        };
        let t = sim.new_task(&st, spec("fine"), false, Instant::now());
        assert_eq!(
            (t.outcome, t.final_after),
            (Outcome::Timeout, Duration::from_secs(1))
        );
        assert_eq!(t.status_at(Duration::from_millis(999)), TaskStatus::Running);
        assert_eq!(t.status_at(Duration::from_secs(5)), TaskStatus::Failed);
        assert_eq!(sim.banned_words("so bad"), vec!["Bad".to_owned()]);
        let c = sim.new_task(&st, spec("so bad"), true, Instant::now());
        assert_eq!(c.outcome, Outcome::Censored);
        assert_eq!(
            c.sub_state(0, Duration::from_millis(200)).error_code,
            api::SUB_ERR_CENSORED
        );
    }
    #[test]
    fn error_bursts_answer_their_code_for_burst_len_calls_and_spare_queries_of_submit_codes() {
        let sim = Sim::new(SimConfig {
            burst_rate: 1.0,
            burst_codes: vec![code::DAILY_QUOTA],
            burst_len: 2,
            ..SimConfig::unlimited()
        });
        let mut st = sim.lock();
        // A daily-quota burst never meets a query, so queries start none and pass.
        assert!(sim.burst(&mut st, Endpoint::Query).is_none());
        let first = sim.burst(&mut st, Endpoint::Submit).expect("burst starts");
        assert_eq!(first.body["error_code"], code::DAILY_QUOTA);
        assert!(sim.burst(&mut st, Endpoint::Query).is_none());
        let second = sim.burst(&mut st, Endpoint::Submit).expect("burst goes on");
        assert_eq!(second.body["error_code"], code::DAILY_QUOTA);
        assert_eq!(st.stats.errors.get("17"), Some(&2));
        // With rate 1 the next call starts the next burst.
        assert!(sim.burst(&mut st, Endpoint::Submit).is_some());
        drop(st);

        let rates = Sim::new(SimConfig {
            burst_rate: 0.2,
            burst_codes: vec![code::QPS_OLD, code::QPS],
            burst_len: 3,
            seed: 9,
            ..SimConfig::unlimited()
        });
        let mut st = rates.lock();
        let answers: Vec<Option<i64>> = (0..300)
            .map(|i| {
                let endpoint = if i % 2 == 0 {
                    Endpoint::Submit
                } else {
                    Endpoint::Query
                };
                rates
                    .burst(&mut st, endpoint)
                    .map(|a| a.body["error_code"].as_i64().unwrap())
            })
            .collect();
        let hits = answers.iter().flatten().count();
        assert!((60..=240).contains(&hits), "{hits} burst answers of 300");
        assert!(answers.iter().flatten().all(|c| *c == 13 || *c == 18));
        // Bursts come in runs of the configured length.
        let runs: Vec<usize> = answers
            .split(Option::is_none)
            .map(<[Option<i64>]>::len)
            .filter(|n| *n > 0)
            .collect();
        assert!(runs.iter().all(|n| n % 3 == 0), "{runs:?}");
        let off = Sim::new(SimConfig::unlimited());
        let mut st = off.lock();
        assert!((0..100).all(|_| off.burst(&mut st, Endpoint::Submit).is_none()));
    }
    #[test]
    fn a_token_can_announce_a_longer_life_than_it_has() {
        let sim = Sim::new(SimConfig {
            token_ttl: Duration::from_secs(1),
            token_expires_in: Some(Duration::from_secs(2_592_000)),
            ..SimConfig::unlimited()
        });
        let answer = sim.token(&token_params());
        assert_eq!(answer.body["expires_in"], 2_592_000);
        let token = answer.body["access_token"].as_str().unwrap().to_owned();
        let mut st = sim.lock();
        let now = Instant::now();
        assert!(sim.check_token(&mut st, Some(&token), now).is_ok());
        // It dies after the real lifetime, whatever it announced.
        let late = sim.check_token(&mut st, Some(&token), now + Duration::from_secs(2));
        assert_eq!(late.unwrap_err().body["error_code"], code::TOKEN_EXPIRED);
    }
    #[test]
    fn a_url_can_announce_a_longer_life_than_it_has() {
        let sim = Sim::new(SimConfig {
            gen_ms: (0, 0),
            url_ttl: Duration::from_millis(50),
            url_announced_ttl: Some(Duration::from_secs(3600)),
            ..SimConfig::unlimited()
        });
        let token = sim.token(&token_params()).body["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let submitted = sim.submit(Some(&token), br#"{"prompt":"p","width":512,"height":512}"#);
        let id = submitted.body["data"]["task_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = format!(r#"{{"task_id":"{id}"}}"#);
        let answer = sim.query(Some(&token), body.as_bytes(), "h", true);
        let url = answer.body["data"]["sub_task_result_list"][0]["final_image_list"][0]["img_url"]
            .as_str()
            .unwrap()
            .to_owned();
        let (path, query) = url.trim_start_matches("http://h").split_once('?').unwrap();
        let q = crate::sim::routes::parse_form(query);
        let expires: u64 = q["expires"].parse().unwrap();
        let issued: u64 = q["issued"].parse().unwrap();
        assert!(expires * 1000 >= issued + 3_600_000, "announces an hour");
        let file = path.rsplit('/').next().unwrap();
        assert!(sim.image(&id, file, &q).is_ok(), "valid at first");
        // Dies after its real 50 ms, long before its `expires`.
        let start = Instant::now();
        loop {
            match sim.image(&id, file, &q) {
                Err(denied) => {
                    assert_eq!(denied.status, StatusCode::FORBIDDEN);
                    break;
                }
                Ok(_) => assert!(start.elapsed() < Duration::from_secs(10), "never died"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sim.stats().expired_url_hits, 1);
    }
}
