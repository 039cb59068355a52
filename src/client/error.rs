//! Errors of the client layer, classified by the API's error table.

use super::CacheError;
use crate::api::ErrorClass;

/// Errors of the client layer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error code (HTTP 200).
    #[error("API error {code}: {msg}")]
    Api {
        /// The error code.
        code: i64,
        /// The error message.
        msg: String,
        /// Censorship details, when given.
        detail: Option<String>,
    },
    /// No access token could be had (the request for one failed); nothing else was sent.
    #[error("cannot get an access token: {0}")]
    TokenFetch(Box<ClientError>),
    /// The token endpoint refused the keys.
    #[error("the token endpoint refused the credentials: {error}: {description}")]
    Auth {
        /// For example `invalid_client`.
        error: String,
        /// For example `unknown client id`.
        description: String,
    },
    /// An HTTP status other than success.
    #[error("HTTP {status} from {what}")]
    Status {
        /// The status code.
        status: u16,
        /// Which request.
        what: &'static str,
    },
    /// The request failed on the way (connect, timeout, dropped connection, cut-off body).
    #[error("{what} failed: {source}")]
    Transport {
        /// Which request.
        what: &'static str,
        /// The transport error, stripped of its URL.
        source: reqwest::Error,
    },
    /// The answer does not follow the API's schema.
    #[error("malformed answer from {what}: {detail}")]
    Malformed {
        /// Which request.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The image URL has expired (HTTP 403/410).
    #[error("the image URL has expired (HTTP {status})")]
    Expired {
        /// The status code.
        status: u16,
    },
    /// The image is larger than allowed.
    #[error("the image is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The image URL is not http(s).
    #[error("refusing to download from a non-http(s) URL")]
    BadUrl,
    /// The token cache could not be read or written.
    #[error("token cache: {0}")]
    TokenCache(#[from] CacheError),
}

impl ClientError {
    /// What the caller should do, by the API's error table.
    pub fn class(&self) -> ErrorClass {
        match self {
            ClientError::Api { code, .. } => ErrorClass::of(*code),
            ClientError::TokenFetch(inner) => inner.class(),
            ClientError::Auth { .. } | ClientError::BadUrl => ErrorClass::Fatal,
            ClientError::Status { status: 429, .. } => ErrorClass::Rate,
            ClientError::Status { .. } => ErrorClass::Transient,
            ClientError::Transport { .. } | ClientError::Malformed { .. } => ErrorClass::Transient,
            ClientError::Expired { .. } => ErrorClass::Transient,
            ClientError::TooLarge { .. } => ErrorClass::Permanent,
            ClientError::TokenCache(_) => ErrorClass::Fatal,
        }
    }

    /// The API error code, if the API gave one.
    pub fn code(&self) -> Option<i64> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a submit that failed this way may still have created its task: no well-formed
    /// answer came back, so the API may have processed the request.
    pub fn is_ambiguous(&self) -> bool {
        matches!(
            self,
            ClientError::Transport { .. }
                | ClientError::Malformed { .. }
                | ClientError::Status { .. }
        )
    }

    /// Whether the image URL is dead and a fresh one must be queried.
    pub fn is_expired(&self) -> bool {
        matches!(self, ClientError::Expired { .. })
    }
}
