//! What the simulator simulates: limits, timings, rates of bad outcomes, faults. [`SimConfig`] is
//! the library's view; [`SimArgs`] is the same as clap flags, reusable by any command that starts
//! a simulator.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Every knob of the simulator. [`SimConfig::default`] is the real API as documented for one
/// account; [`SimConfig::unlimited`] switches every limit off (for benchmarks).
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The access key (`client_id`) the token endpoint accepts.
    pub ak: String,
    /// The secret key (`client_secret`) the token endpoint accepts.
    pub sk: String,
    /// How long an access token lives; after it, API calls with it answer error 111.
    pub token_ttl: Duration,
    /// The lifetime the token endpoint announces (`expires_in`); `None` announces `token_ttl`.
    /// Announcing more than `token_ttl` makes tokens die before the client expects, as a revoked
    /// token or a skewed clock does: error 111 in the middle of a run.
    pub token_expires_in: Option<Duration>,
    /// Generation time of a task in milliseconds, drawn uniformly from `min..=max`.
    pub gen_ms: (u64, u64),
    /// Accepted submits per second; `None` = no limit. Over it: error 18.
    pub submit_qps: Option<f64>,
    /// Accepted queries per second; `None` = no limit. Over it: error 18.
    pub query_qps: Option<f64>,
    /// Images in generation at once (sum of `image_num` over unfinished tasks); `None` = no limit.
    /// A submit that would exceed it: error 15.
    pub concurrency: Option<u32>,
    /// Images that may be submitted per quota day; `None` = no quota. Over it: error 17.
    pub daily_quota: Option<u64>,
    /// Length of a quota day counted from the simulator's start; `None` = calendar days in
    /// Asia/Shanghai (UTC+8), as the real API.
    pub quota_window: Option<Duration>,
    /// How long a signed image URL stays valid; after it, GET answers 403.
    pub url_ttl: Duration,
    /// The lifetime image URLs announce in their `expires=`; `None` announces `url_ttl`.
    /// Announcing more makes URLs die before their signature says (as a skewed clock does):
    /// HTTP 403 on URLs the client believes valid.
    pub url_announced_ttl: Option<Duration>,
    /// Probability that an image's moderation verdict is `review`.
    pub review_rate: f64,
    /// Probability that an image's moderation verdict is `block`.
    pub block_rate: f64,
    /// Probability that a task fails in the model (sub-task error 201).
    pub fail_rate: f64,
    /// Words that make the prompt censorship fail (sub-task error 501, or 282004 at submit).
    /// Matched case-insensitively as substrings.
    pub banned: Vec<String>,
    /// Refuse banned prompts at submit (error 282004 with `error_detail`) instead of failing the
    /// task's sub-tasks with 501.
    pub banned_at_submit: bool,
    /// A task whose generation would take longer than this fails when it elapses; queries then
    /// answer error 216303. A submit's own `task_time_out` (seconds) can shorten it.
    pub task_timeout: Duration,
    /// Probability that a request (API call or image download) meets a fault.
    pub fault_rate: f64,
    /// Which kinds of fault may be chosen.
    pub faults: FaultKinds,
    /// How long a `slow` fault delays its answer, in milliseconds.
    pub slow_ms: u64,
    /// Probability that a submit or query starts a burst of error answers (HTTP 200 with an
    /// `error_code`, as the real limits answer), for clients that must ride out 13/15/17/18.
    pub burst_rate: f64,
    /// The codes a burst answers with, one chosen per burst among those that apply to the call
    /// that starts it: 15 (concurrency) and 17 (daily quota) only meet submits.
    pub burst_codes: Vec<i64>,
    /// How many calls in a row a burst answers with its error, the one that starts it included.
    pub burst_len: u32,
    /// Seed of every random decision (generation times, verdicts, failures, faults, ids).
    pub seed: u64,
    /// Upper bound of the encoded-PNG cache, in bytes.
    pub png_cache_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            ak: "sim-ak".to_owned(),
            sk: "sim-sk".to_owned(),
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            token_expires_in: None,
            gen_ms: (5_000, 15_000),
            submit_qps: Some(1.0),
            query_qps: Some(2.0),
            concurrency: Some(2),
            daily_quota: None,
            quota_window: None,
            url_ttl: Duration::from_secs(3600),
            url_announced_ttl: None,
            review_rate: 0.0,
            block_rate: 0.0,
            fail_rate: 0.0,
            banned: Vec::new(),
            banned_at_submit: false,
            task_timeout: Duration::from_secs(15 * 60),
            fault_rate: 0.0,
            faults: FaultKinds::all(),
            slow_ms: 2_000,
            burst_rate: 0.0,
            burst_codes: vec![13, 15, 17, 18],
            burst_len: 3,
            seed: 0,
            png_cache_bytes: 256 << 20,
        }
    }
}

impl SimConfig {
    /// The defaults with every limit switched off: no rate limits, no concurrency limit, no
    /// quota. Timings, rates and faults stay as in [`SimConfig::default`].
    pub fn unlimited() -> SimConfig {
        SimConfig {
            submit_qps: None,
            query_qps: None,
            concurrency: None,
            daily_quota: None,
            ..SimConfig::default()
        }
    }

    /// Checks that the values make sense together (rates are probabilities, ranges are ordered).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, rate) in [
            ("review-rate", self.review_rate),
            ("block-rate", self.block_rate),
            ("fail-rate", self.fail_rate),
            ("fault-rate", self.fault_rate),
            ("burst-rate", self.burst_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::Rate { name, rate });
            }
        }
        if self.review_rate + self.block_rate > 1.0 {
            return Err(ConfigError::VerdictRates);
        }
        if self.gen_ms.0 > self.gen_ms.1 {
            return Err(ConfigError::GenRange(self.gen_ms.0, self.gen_ms.1));
        }
        for (name, qps) in [
            ("submit-qps", self.submit_qps),
            ("query-qps", self.query_qps),
        ] {
            if let Some(q) = qps
                && !(q.is_finite() && q > 0.0)
            {
                return Err(ConfigError::Qps { name, qps: q });
            }
        }
        if self.quota_window.is_some_and(|w| w.is_zero()) {
            return Err(ConfigError::QuotaWindow);
        }
        if self.burst_rate > 0.0 && (self.burst_len == 0 || self.burst_codes.is_empty()) {
            return Err(ConfigError::Burst);
        }
        Ok(())
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A probability outside [0, 1].
    #[error("--{name} must be between 0 and 1, got {rate}")]
    Rate {
        /// The flag's name.
        name: &'static str,
        /// The value given.
        rate: f64,
    },
    /// Review and block rates together exceed 1.
    #[error("--review-rate plus --block-rate must not exceed 1")]
    VerdictRates,
    /// `--gen-ms` with MIN above MAX.
    #[error("--gen-ms {0}..{1}: MIN must not exceed MAX")]
    GenRange(u64, u64),
    /// A rate limit that is not a positive number.
    #[error("--{name} must be positive (or 0 for no limit), got {qps}")]
    Qps {
        /// The flag's name.
        name: &'static str,
        /// The value given.
        qps: f64,
    },
    /// A zero-length quota window.
    #[error("--quota-window must be longer than zero")]
    QuotaWindow,
    /// Error bursts switched on without codes or length.
    #[error("--burst-rate needs at least one --burst-codes code and a --burst-len of 1 or more")]
    Burst,
}

/// One kind of fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// HTTP 500 before any processing.
    Http500,
    /// HTTP 502 (gateway page) before any processing.
    Http502,
    /// The request is processed, then the connection is dropped before the answer arrives.
    Drop,
    /// The request is processed, then the answer is held back for `slow_ms`.
    Slow,
    /// The request is processed, then the answer is cut short: malformed JSON with HTTP 200.
    Json,
    /// An image download answers fewer bytes than the PNG has.
    Truncate,
}

impl FaultKind {
    /// Every kind, in a fixed order (the order matters for reproducible choices).
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Http500,
        FaultKind::Http502,
        FaultKind::Drop,
        FaultKind::Slow,
        FaultKind::Json,
        FaultKind::Truncate,
    ];

    /// The spelling used by `--faults` and in [`Stats::faults`](super::Stats::faults).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Http500 => "500",
            FaultKind::Http502 => "502",
            FaultKind::Drop => "drop",
            FaultKind::Slow => "slow",
            FaultKind::Json => "json",
            FaultKind::Truncate => "truncate",
        }
    }

    /// Parses one spelling of [`FaultKind::as_str`].
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of fault kinds `--fault-rate` may choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultKinds {
    bits: u8,
}

impl FaultKinds {
    /// Every kind.
    pub fn all() -> FaultKinds {
        FaultKinds::from_kinds(FaultKind::ALL)
    }

    /// No kind (faults off whatever the rate).
    pub fn none() -> FaultKinds {
        FaultKinds { bits: 0 }
    }

    /// Exactly the given kinds.
    pub fn from_kinds(kinds: impl IntoIterator<Item = FaultKind>) -> FaultKinds {
        let mut set = FaultKinds::none();
        for k in kinds {
            set.bits |= 1 << k as u8;
        }
        set
    }

    /// Whether `kind` is enabled.
    pub fn contains(self, kind: FaultKind) -> bool {
        self.bits & (1 << kind as u8) != 0
    }

    /// The enabled kinds, in [`FaultKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl Default for FaultKinds {
    fn default() -> FaultKinds {
        FaultKinds::all()
    }
}

impl FromStr for FaultKinds {
    type Err = String;

    /// Parses `500,502,drop,slow,json,truncate`, or `all`, or `none`.
    fn from_str(s: &str) -> Result<FaultKinds, String> {
        match s.trim() {
            "all" => return Ok(FaultKinds::all()),
            "none" | "" => return Ok(FaultKinds::none()),
            _ => {}
        }
        let mut kinds = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            kinds.push(FaultKind::parse(part).ok_or_else(|| {
                format!("unknown fault kind {part:?} (known: 500, 502, drop, slow, json, truncate)")
            })?);
        }
        Ok(FaultKinds::from_kinds(kinds))
    }
}

impl fmt::Display for FaultKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(FaultKind::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// A `--gen-ms` value: `MIN..MAX` (inclusive) or one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenRange(pub u64, pub u64);

impl FromStr for GenRange {
    type Err = String;

    fn from_str(s: &str) -> Result<GenRange, String> {
        let parse = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("expected MIN..MAX in milliseconds, got {s:?}"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (parse(a)?, parse(b.trim_start_matches('='))?),
            None => {
                let v = parse(s)?;
                (v, v)
            }
        };
        if min > max {
            return Err(format!("MIN must not exceed MAX in {s:?}"));
        }
        Ok(GenRange(min, max))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected e.g. 30d, 1h, 500ms)"))
}

/// The simulator's flags, shared by `runner sim` and any command that starts a simulator
/// in-process. Every flag left out keeps the real API's value (or, with `--unlimited`, no limit).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SimArgs {
    /// Start from no limits at all (no rate limits, concurrency or quota); other flags still apply.
    #[arg(long)]
    pub unlimited: bool,
    /// Access key the token endpoint accepts [default: sim-ak].
    #[arg(long, value_name = "AK")]
    pub ak: Option<String>,
    /// Secret key the token endpoint accepts [default: sim-sk].
    #[arg(long, value_name = "SK")]
    pub sk: Option<String>,
    /// Lifetime of an access token, then error 111 [default: 30d].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Token lifetime announced as `expires_in`, when it should differ from --token-ttl (longer:
    /// tokens die early, error 111 mid-run) [default: the --token-ttl].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub token_expires_in: Option<Duration>,
    /// Generation time of a task in milliseconds, MIN..MAX or one value [default: 5000..15000].
    #[arg(long, value_name = "MIN..MAX")]
    pub gen_ms: Option<GenRange>,
    /// Accepted submits per second, 0 = no limit [default: 1].
    #[arg(long, value_name = "QPS")]
    pub submit_qps: Option<f64>,
    /// Accepted queries per second, 0 = no limit [default: 2].
    #[arg(long, value_name = "QPS")]
    pub query_qps: Option<f64>,
    /// Images in generation at once, 0 = no limit [default: 2].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Images per quota day, 0 = no quota [default: 0].
    #[arg(long, value_name = "N")]
    pub daily_quota: Option<u64>,
    /// Quota days of this length from the start, instead of calendar days in Asia/Shanghai.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub quota_window: Option<Duration>,
    /// Validity of a signed image URL, then HTTP 403 [default: 1h].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub url_ttl: Option<Duration>,
    /// Lifetime image URLs announce in `expires=`, when it should differ from --url-ttl (longer:
    /// URLs die early, HTTP 403 on URLs that look valid) [default: the --url-ttl].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub url_announced_ttl: Option<Duration>,
    /// Probability of the verdict `review` per image [default: 0].
    #[arg(long, value_name = "P")]
    pub review_rate: Option<f64>,
    /// Probability of the verdict `block` per image [default: 0].
    #[arg(long, value_name = "P")]
    pub block_rate: Option<f64>,
    /// Probability that a task fails in the model, sub-task error 201 [default: 0].
    #[arg(long, value_name = "P")]
    pub fail_rate: Option<f64>,
    /// A word that fails prompt censorship (sub-task error 501); repeat or separate by commas.
    #[arg(long, value_name = "WORD", value_delimiter = ',')]
    pub banned: Vec<String>,
    /// Refuse banned prompts at submit with error 282004 instead of failing the task with 501.
    #[arg(long)]
    pub banned_at_submit: bool,
    /// A task whose generation takes longer fails with error 216303 [default: 15m].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub task_timeout: Option<Duration>,
    /// Probability that a request meets a fault [default: 0].
    #[arg(long, value_name = "P")]
    pub fault_rate: Option<f64>,
    /// Fault kinds to choose from: 500,502,drop,slow,json,truncate, or all, or none [default: all].
    #[arg(long, value_name = "KINDS")]
    pub faults: Option<FaultKinds>,
    /// Delay of a `slow` fault in milliseconds [default: 2000].
    #[arg(long, value_name = "MS")]
    pub slow_ms: Option<u64>,
    /// Probability that a submit or query starts a burst of error answers [default: 0].
    #[arg(long, value_name = "P")]
    pub burst_rate: Option<f64>,
    /// Error codes of the bursts; 15 and 17 only meet submits [default: 13,15,17,18].
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    pub burst_codes: Vec<i64>,
    /// Calls in a row a burst answers with its error [default: 3].
    #[arg(long, value_name = "N")]
    pub burst_len: Option<u32>,
    /// Seed of every random decision; the same seed and request sequence give the same answers
    /// [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Upper bound of the encoded-PNG cache in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub png_cache_mb: Option<usize>,
}

impl SimArgs {
    /// The configuration these flags describe.
    pub fn to_config(&self) -> SimConfig {
        let mut c = if self.unlimited {
            SimConfig::unlimited()
        } else {
            SimConfig::default()
        };
        let positive = |q: f64| (q > 0.0).then_some(q);
        if let Some(ak) = &self.ak {
            c.ak = ak.clone();
        }
        if let Some(sk) = &self.sk {
            c.sk = sk.clone();
        }
        if let Some(d) = self.token_ttl {
            c.token_ttl = d;
        }
        if self.token_expires_in.is_some() {
            c.token_expires_in = self.token_expires_in;
        }
        if let Some(GenRange(min, max)) = self.gen_ms {
            c.gen_ms = (min, max);
        }
        if let Some(q) = self.submit_qps {
            c.submit_qps = positive(q);
        }
        if let Some(q) = self.query_qps {
            c.query_qps = positive(q);
        }
        if let Some(n) = self.concurrency {
            c.concurrency = (n > 0).then_some(n);
        }
        if let Some(n) = self.daily_quota {
            c.daily_quota = (n > 0).then_some(n);
        }
        if self.quota_window.is_some() {
            c.quota_window = self.quota_window;
        }
        if let Some(d) = self.url_ttl {
            c.url_ttl = d;
        }
        if self.url_announced_ttl.is_some() {
            c.url_announced_ttl = self.url_announced_ttl;
        }
        if let Some(p) = self.review_rate {
            c.review_rate = p;
        }
        if let Some(p) = self.block_rate {
            c.block_rate = p;
        }
        if let Some(p) = self.fail_rate {
            c.fail_rate = p;
        }
        if !self.banned.is_empty() {
            c.banned = self
                .banned
                .iter()
                .map(|w| w.trim().to_owned())
                .filter(|w| !w.is_empty())
                .collect();
        }
        c.banned_at_submit |= self.banned_at_submit;
        if let Some(d) = self.task_timeout {
            c.task_timeout = d;
        }
        if let Some(p) = self.fault_rate {
            c.fault_rate = p;
        }
        if let Some(k) = self.faults {
            c.faults = k;
        }
        if let Some(ms) = self.slow_ms {
            c.slow_ms = ms;
        }
        if let Some(p) = self.burst_rate {
            c.burst_rate = p;
        }
        if !self.burst_codes.is_empty() {
            c.burst_codes = self.burst_codes.clone();
        }
        if let Some(n) = self.burst_len {
            c.burst_len = n;
        }
        if let Some(s) = self.seed {
            c.seed = s;
        }
        if let Some(mb) = self.png_cache_mb {
            c.png_cache_bytes = mb.saturating_mul(1 << 20);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn config(args: &[&str]) -> SimConfig {
        let mut all = vec!["sim"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().sim.to_config()
    }

    #[test]
    fn defaults_are_the_real_api() {
        let c = config(&[]);
        assert_eq!(c, SimConfig::default());
        assert_eq!(c.submit_qps, Some(1.0));
        assert_eq!(c.query_qps, Some(2.0));
        assert_eq!(c.concurrency, Some(2));
        assert_eq!(c.daily_quota, None);
        assert_eq!(c.url_ttl, Duration::from_secs(3600));
        assert_eq!(c.token_ttl, Duration::from_secs(2_592_000));
        assert_eq!(c.task_timeout, Duration::from_secs(900));
        assert_eq!(c.gen_ms, (5000, 15000));
        assert_eq!(c.seed, 0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = config(&[
            "--ak=a",
            "--sk=b",
            "--token-ttl=2s",
            "--token-expires-in=30d",
            "--gen-ms=10..20",
            "--submit-qps=0",
            "--query-qps=5",
            "--concurrency=0",
            "--daily-quota=10",
            "--quota-window=1m",
            "--url-ttl=30s",
            "--url-announced-ttl=1h",
            "--review-rate=0.1",
            "--block-rate=0.2",
            "--fail-rate=0.3",
            "--banned=foo,bar",
            "--banned=baz",
            "--banned-at-submit",
            "--task-timeout=5s",
            "--fault-rate=0.5",
            "--faults=500,drop",
            "--slow-ms=7",
            "--burst-rate=0.25",
            "--burst-codes=13,17",
            "--burst-len=4",
            "--seed=42",
            "--png-cache-mb=3",
        ]);
        assert_eq!((c.ak.as_str(), c.sk.as_str()), ("a", "b"));
        assert_eq!(c.token_ttl, Duration::from_secs(2));
        assert_eq!(c.token_expires_in, Some(Duration::from_secs(2_592_000)));
        assert_eq!(c.gen_ms, (10, 20));
        assert_eq!(c.submit_qps, None);
        assert_eq!(c.query_qps, Some(5.0));
        assert_eq!(c.concurrency, None);
        assert_eq!(c.daily_quota, Some(10));
        assert_eq!(c.quota_window, Some(Duration::from_secs(60)));
        assert_eq!(c.url_ttl, Duration::from_secs(30));
        assert_eq!(c.url_announced_ttl, Some(Duration::from_secs(3600)));
        assert_eq!((c.review_rate, c.block_rate, c.fail_rate), (0.1, 0.2, 0.3));
        assert_eq!(c.banned, vec!["foo", "bar", "baz"]);
        assert!(c.banned_at_submit);
        assert_eq!(c.task_timeout, Duration::from_secs(5));
        assert_eq!(c.fault_rate, 0.5);
        assert_eq!(
            c.faults,
            FaultKinds::from_kinds([FaultKind::Http500, FaultKind::Drop])
        );
        assert_eq!(c.slow_ms, 7);
        assert_eq!(c.burst_rate, 0.25);
        assert_eq!(c.burst_codes, vec![13, 17]);
        assert_eq!(c.burst_len, 4);
        assert_eq!(c.seed, 42);
        assert_eq!(c.png_cache_bytes, 3 << 20);
    }

    #[test]
    fn unlimited_switches_limits_off_but_keeps_other_flags() {
        let c = config(&["--unlimited", "--gen-ms=5"]);
        assert_eq!(c.submit_qps, None);
        assert_eq!(c.query_qps, None);
        assert_eq!(c.concurrency, None);
        assert_eq!(c.gen_ms, (5, 5));
        let c = config(&["--unlimited", "--query-qps=3"]);
        assert_eq!(c.query_qps, Some(3.0));
    }

    #[test]
    fn gen_range_and_fault_kinds_parse() {
        assert_eq!("1..2".parse(), Ok(GenRange(1, 2)));
        assert_eq!("1..=2".parse(), Ok(GenRange(1, 2)));
        assert_eq!("7".parse(), Ok(GenRange(7, 7)));
        assert!("3..1".parse::<GenRange>().is_err());
        assert!("x".parse::<GenRange>().is_err());
        assert_eq!("all".parse(), Ok(FaultKinds::all()));
        assert_eq!("none".parse(), Ok(FaultKinds::none()));
        let k: FaultKinds = "truncate, json".parse().unwrap();
        assert_eq!(
            k.iter().collect::<Vec<_>>(),
            vec![FaultKind::Json, FaultKind::Truncate]
        );
        assert_eq!(k.to_string(), "json,truncate");
        assert!("600".parse::<FaultKinds>().is_err());
    }

    #[test]
    fn validate_refuses_nonsense() {
        let bad_rate = SimConfig {
            fault_rate: 1.5,
            ..SimConfig::default()
        };
        assert!(matches!(bad_rate.validate(), Err(ConfigError::Rate { .. })));
        let bad_verdicts = SimConfig {
            review_rate: 0.6,
            block_rate: 0.6,
            ..SimConfig::default()
        };
        assert_eq!(bad_verdicts.validate(), Err(ConfigError::VerdictRates));
        let bad_qps = SimConfig {
            submit_qps: Some(-1.0),
            ..SimConfig::default()
        };
        assert!(matches!(bad_qps.validate(), Err(ConfigError::Qps { .. })));
        let bad_burst = SimConfig {
            burst_rate: 0.1,
            burst_codes: Vec::new(),
            ..SimConfig::default()
        };
        assert_eq!(bad_burst.validate(), Err(ConfigError::Burst));
    }
}
