//! The API client: the only module that speaks HTTP to the API.
//!
//! It fetches the access token with `EB_AK`/`EB_SK` (kept between runs through a [`TokenCache`],
//! which the store implements; refreshed once when the API answers 100/110/111) or uses a preset
//! `EB_ACCESS_TOKEN`; submits, queries and downloads with a timeout on every request; and
//! classifies every failure. The access token is carried in the URL's query, so every error is
//! stripped of its URL before it can reach a message or a log line; the secret key is never
//! written anywhere.
//!
//! - [`Api`]: what the scheduler asks of the API; [`Client`] speaks it over HTTP.
//! - `secret`: [`Credentials`] and [`Secret`]. `cache`: [`TokenCache`]. `error`: [`ClientError`].
//! - `buf`: [`ImageBuf`], a download laid out for direct writes. `answer`: reading answers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod answer;
mod buf;
mod cache;
mod error;
mod secret;

pub use answer::{check_download_status, check_task_id, read_answer, url_expiry};
pub use buf::{Downloaded, IMAGE_BUF_ALIGN, ImageBuf};
pub use cache::{CacheError, TokenCache};
pub use error::ClientError;
pub use secret::{Credentials, Secret};

use futures::StreamExt;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::api::now_ms;
use crate::api::{
    self, ErrorClass, OAuthError, QueryData, QueryRequest, SubmitData, SubmitRequest, TokenAnswer,
};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://aip.baidubce.com`.
    pub base_url: String,
    /// Timeout of each API request.
    pub request_timeout: Duration,
    /// Timeout of each image download.
    pub download_timeout: Duration,
    /// Largest image accepted, in bytes.
    pub max_image_bytes: u64,
}

impl ClientConfig {
    /// Defaults for `base_url`.
    pub fn new(base_url: impl Into<String>) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            request_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(120),
            max_image_bytes: 64 << 20,
        }
    }
}

/// The API client. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Client {
    /// API requests: small answers, many connections (one per request in flight).
    http: reqwest::Client,
    /// Image downloads, on connections of their own: hyper grows a connection's read buffer to
    /// about 400 KB while it carries an image and keeps it for the connection's life, so sharing
    /// one pool would let every API connection end up holding such a buffer.
    images: reqwest::Client,
    config: ClientConfig,
    credentials: Credentials,
    cache: Option<Arc<dyn TokenCache>>,
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A token is refreshed this long before it expires, or a tenth of its life if that is shorter.
const TOKEN_MARGIN_MS: i64 = 5 * 60 * 1000;

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: i64,
    /// When this token stops being used: its expiry less the margin.
    use_until: i64,
}

impl CachedToken {
    fn new(token: Secret, fetched_at: i64, expires_at: i64) -> CachedToken {
        let margin = TOKEN_MARGIN_MS.min((expires_at - fetched_at).max(0) / 10);
        CachedToken {
            token,
            expires_at,
            use_until: expires_at - margin,
        }
    }
}

impl Client {
    /// A client for `config`, keeping fetched tokens in `cache` when given.
    pub fn new(
        config: ClientConfig,
        credentials: Credentials,
        cache: Option<Arc<dyn TokenCache>>,
    ) -> Result<Client, ClientError> {
        let loopback = is_loopback(&config.base_url);
        let http = http_client(loopback)?;
        let images = http_client(loopback)?;
        let token = match &credentials {
            Credentials::Token(t) => Some(CachedToken {
                token: t.clone(),
                expires_at: i64::MAX,
                use_until: i64::MAX,
            }),
            Credentials::Keys { .. } => None,
        };
        Ok(Client {
            http,
            images,
            config,
            credentials,
            cache,
            token: Mutex::new(token),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    /// A fingerprint of the API key (the cache row is tied to it without storing the key).
    fn client_fingerprint(&self) -> String {
        match &self.credentials {
            Credentials::Keys { ak, .. } => hex::encode(&Sha256::digest(ak.as_bytes())[..8]),
            Credentials::Token(_) => String::new(),
        }
    }

    /// The access token: from memory, the token cache, or the token endpoint.
    async fn access_token(&self) -> Result<Secret, ClientError> {
        let mut guard = self.token.lock().await;
        let now = now_ms();
        if let Some(t) = guard.as_ref().filter(|t| t.use_until > now) {
            return Ok(t.token.clone());
        }
        let Credentials::Keys { ak, sk } = &self.credentials else {
            // A preset token never expires in our books; the API decides.
            return guard
                .as_ref()
                .map(|t| t.token.clone())
                .ok_or(ClientError::Auth {
                    error: "no_token".into(),
                    description: "no access token".into(),
                });
        };
        let fingerprint = self.client_fingerprint();
        if let Some(cache) = &self.cache
            && let Some((token, expires_at)) = cache
                .cached(&self.config.base_url, &fingerprint, now)
                .await?
        {
            let t = CachedToken::new(Secret::new(token), now, expires_at);
            if t.use_until > now {
                *guard = Some(t.clone());
                return Ok(t.token);
            }
        }
        let t = self.fetch_token(ak, sk).await?;
        if let Some(cache) = &self.cache {
            cache
                .save(
                    &self.config.base_url,
                    &fingerprint,
                    t.token.expose(),
                    t.expires_at,
                )
                .await?;
        }
        *guard = Some(t.clone());
        Ok(t.token)
    }

    #[tracing::instrument(skip_all)]
    async fn fetch_token(&self, ak: &str, sk: &Secret) -> Result<CachedToken, ClientError> {
        const WHAT: &str = "token request";
        let url = format!("{}{}", self.config.base_url, api::TOKEN_PATH);
        let resp = self
            .http
            .post(url)
            .query(&[
                ("grant_type", "client_credentials"),
                ("client_id", ak),
                ("client_secret", sk.expose()),
            ])
            .timeout(self.config.request_timeout)
            .send()
            .await
            .map_err(|e| transport(WHAT, e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| transport(WHAT, e))?;
        if !status.is_success() {
            if let Ok(err) = serde_json::from_slice::<OAuthError>(&body) {
                return Err(ClientError::Auth {
                    error: err.error,
                    description: err.error_description,
                });
            }
            return Err(ClientError::Status {
                status: status.as_u16(),
                what: WHAT,
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
                what: WHAT,
                detail: e.to_string(),
            })?;
        tracing::debug!(expires_in = answer.expires_in, "fetched an access token");
        let now = now_ms();
        Ok(CachedToken::new(
            Secret::new(answer.access_token),
            now,
            now.saturating_add((answer.expires_in as i64).saturating_mul(1000)),
        ))
    }

    /// Forgets `failed` (when it is still the current token) so the next call fetches a new one.
    async fn invalidate(&self, failed: &Secret) -> Result<(), ClientError> {
        if matches!(self.credentials, Credentials::Token(_)) {
            return Ok(());
        }
        let mut guard = self.token.lock().await;
        if guard.as_ref().is_some_and(|t| &t.token == failed) {
            *guard = None;
            if let Some(cache) = &self.cache {
                cache.clear().await?;
            }
        }
        Ok(())
    }

    /// Posts `body` to an API path, refreshing the token once on 100/110/111.
    async fn call<B, T>(&self, path: &str, what: &'static str, body: &B) -> Result<T, ClientError>
    where
        B: serde::Serialize,
        T: serde::de::DeserializeOwned,
    {
        let mut refreshed = false;
        loop {
            let token = self.access_token().await.map_err(|e| match e {
                e @ (ClientError::Auth { .. } | ClientError::TokenCache(_)) => e,
                e => ClientError::TokenFetch(Box::new(e)),
            })?;
            match self.call_once(path, what, body, &token).await {
                Err(e)
                    if e.class() == ErrorClass::Token
                        && !refreshed
                        && matches!(self.credentials, Credentials::Keys { .. }) =>
                {
                    tracing::info!(code = e.code(), "access token refused; fetching a new one");
                    self.invalidate(&token).await?;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    async fn call_once<B, T>(
        &self,
        path: &str,
        what: &'static str,
        body: &B,
        token: &Secret,
    ) -> Result<T, ClientError>
    where
        B: serde::Serialize,
        T: serde::de::DeserializeOwned,
    {
        let url = format!("{}{}", self.config.base_url, path);
        let resp = self
            .http
            .post(url)
            .query(&[("access_token", token.expose())])
            .json(body)
            .timeout(self.config.request_timeout)
            .send()
            .await
            .map_err(|e| transport(what, e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| transport(what, e))?;
        read_answer(what, status, &bytes)
    }

    /// Submits one task; returns its id.
    #[tracing::instrument(skip_all, fields(width = req.width, height = req.height, image_num = req.image_num))]
    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitData, ClientError> {
        check_task_id(self.call(api::SUBMIT_PATH, "submit", req).await?)
    }

    /// Queries one task.
    #[tracing::instrument(skip_all, fields(task_id = %task_id))]
    pub async fn query(&self, task_id: &str) -> Result<QueryData, ClientError> {
        self.call(
            api::QUERY_PATH,
            "query",
            &QueryRequest {
                task_id: task_id.to_string(),
            },
        )
        .await
    }

    /// Downloads an image into memory, hashing it on the way; bounded in size (the body is
    /// refused as soon as it passes the limit) and time, http(s) only. The caller verifies the
    /// bytes and writes them.
    #[tracing::instrument(skip_all)]
    pub async fn download(&self, url: &str) -> Result<Downloaded, ClientError> {
        const WHAT: &str = "image download";
        let parsed = reqwest::Url::parse(url).map_err(|_| ClientError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl);
        }
        let resp = self
            .images
            .get(parsed)
            .timeout(self.config.download_timeout)
            .send()
            .await
            .map_err(|e| transport(WHAT, e))?;
        check_download_status(resp.status().as_u16())?;
        let limit = self.config.max_image_bytes;
        let expected = resp.content_length();
        if expected.is_some_and(|n| n > limit) {
            return Err(ClientError::TooLarge { limit });
        }
        let mut body = ImageBuf::with_capacity(expected.unwrap_or(0).min(limit) as usize);
        let mut hasher = Sha256::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport(WHAT, e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(ClientError::TooLarge { limit });
            }
            hasher.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        if let Some(n) = expected.filter(|n| *n != body.len() as u64) {
            return Err(ClientError::Malformed {
                what: WHAT,
                detail: format!("expected {n} bytes, got {}", body.len()),
            });
        }
        Ok(Downloaded {
            sha256: hex::encode(hasher.finalize()),
            body,
        })
    }
}

/// The API as the scheduler uses it: one submit, one query, one image download. [`Client`] speaks
/// it over HTTP; tests may drive the scheduler over another transport.
pub trait Api: Send + Sync + fmt::Debug {
    /// Submits one task; returns its id.
    fn submit<'a>(
        &'a self,
        req: &'a SubmitRequest,
    ) -> BoxFuture<'a, Result<SubmitData, ClientError>>;
    /// Queries one task.
    fn query<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<QueryData, ClientError>>;
    /// Downloads an image into memory, hashed.
    fn download<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Downloaded, ClientError>>;
}

impl Api for Client {
    fn submit<'a>(
        &'a self,
        req: &'a SubmitRequest,
    ) -> BoxFuture<'a, Result<SubmitData, ClientError>> {
        Box::pin(Client::submit(self, req))
    }

    fn query<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<QueryData, ClientError>> {
        Box::pin(Client::query(self, task_id))
    }

    fn download<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Downloaded, ClientError>> {
        Box::pin(Client::download(self, url))
    }
}

/// An HTTP client with the runner's settings; `loopback` for a simulator on this machine.
fn http_client(loopback: bool) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder();
    if loopback {
        // A simulator on this machine: an inherited HTTP(S)_PROXY must not capture it.
        builder = builder.no_proxy();
    }
    builder
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        // Redirects only to http(s), at most 5; any other is answered as the 3xx it is.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if matches!(attempt.url().scheme(), "http" | "https") && attempt.previous().len() <= 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Transport {
            what: "client set-up",
            source: e.without_url(),
        })
}

fn is_loopback(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A transport error without its URL (which carries the access token).
fn transport(what: &'static str, e: reqwest::Error) -> ClientError {
    ClientError::Transport {
        what,
        source: e.without_url(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_buffer_starts_on_a_block_boundary_until_it_outgrows_its_capacity() {
        for n in [0, 1, 4095, 4096, 4097, 239_237] {
            let mut b = ImageBuf::with_capacity(n);
            let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            b.extend_from_slice(&bytes);
            assert_eq!(b.as_slice(), &bytes[..]);
            assert_eq!(
                b.as_slice().as_ptr() as usize % IMAGE_BUF_ALIGN,
                0,
                "{n} bytes"
            );
            assert_eq!(
                b.aligned_len(),
                n / IMAGE_BUF_ALIGN * IMAGE_BUF_ALIGN,
                "{n} bytes"
            );
        }
        // Grown past its capacity, it moves: the bytes stay right, and direct I/O is used only
        // if the new start happens to be aligned.
        let mut b = ImageBuf::with_capacity(10);
        let bytes = vec![7u8; 3 * IMAGE_BUF_ALIGN + 5];
        b.extend_from_slice(&bytes);
        assert_eq!(b.as_slice(), &bytes[..]);
        let aligned = (b.as_slice().as_ptr() as usize).is_multiple_of(IMAGE_BUF_ALIGN);
        assert_eq!(
            b.aligned_len(),
            if aligned { 3 * IMAGE_BUF_ALIGN } else { 0 }
        );
        let v = ImageBuf::from(vec![1, 2, 3]);
        assert_eq!((v.len(), v.as_slice()), (3, &[1u8, 2, 3][..]));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("24.abcdef");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{s:?}").contains("abcdef"));
        let c = Credentials::Keys {
            ak: "ak".into(),
            sk: Secret::new("topsecret"),
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn url_expiry_reads_signatures() {
        assert_eq!(
            url_expiry("http://h/x.png?expires=1700000000&sign=ab", 0, 5),
            1_700_000_000_000
        );
        let bce = "http://b.bcebos.com/x.png?authorization=bce-auth-v1%2Fak%2F2023-01-01T00%3A00%3A00Z%2F1800%2Fhost%2Fsig";
        assert_eq!(
            url_expiry(bce, 0, 5),
            chrono::DateTime::parse_from_rfc3339("2023-01-01T00:30:00Z")
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(url_expiry("http://h/x.png", 1000, 5), 1005);
        assert_eq!(url_expiry("not a url", 1000, 5), 1005);
    }

    #[test]
    fn short_lived_tokens_are_used_for_most_of_their_life() {
        let t = CachedToken::new(Secret::new("t"), 1_000, 1_700);
        assert_eq!(t.use_until, 1_630);
        let long = CachedToken::new(Secret::new("t"), 0, 30 * 86_400_000);
        assert_eq!(long.use_until, 30 * 86_400_000 - TOKEN_MARGIN_MS);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("http://127.0.0.1:8787"));
        assert!(is_loopback("http://localhost:1"));
        assert!(is_loopback("http://[::1]:1"));
        assert!(!is_loopback("https://aip.baidubce.com"));
    }

    #[test]
    fn ambiguity_and_classes() {
        let e = ClientError::Api {
            code: 17,
            msg: "quota".into(),
            detail: None,
        };
        assert_eq!(e.class(), ErrorClass::Quota);
        assert!(!e.is_ambiguous());
        let m = ClientError::Malformed {
            what: "submit",
            detail: "eof".into(),
        };
        assert!(m.is_ambiguous());
        assert_eq!(m.class(), ErrorClass::Transient);
        assert!(ClientError::Expired { status: 403 }.is_expired());
        // A failed token request happens before the submit is sent: never ambiguous.
        let t = ClientError::TokenFetch(Box::new(m));
        assert!(!t.is_ambiguous());
        assert_eq!(t.class(), ErrorClass::Transient);
    }
}
