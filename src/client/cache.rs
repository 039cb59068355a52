//! Where fetched access tokens are kept between runs: a small trait the store implements, so
//! the client depends on no store.

use std::fmt;

use futures::future::BoxFuture;

/// Where fetched access tokens are kept between runs, tied to the base URL and a fingerprint of
/// the API key they were fetched with (the store implements it; the secret key is never kept).
pub trait TokenCache: Send + Sync + fmt::Debug {
    /// The cached token and its expiry (Unix ms), when it is valid until at least `valid_until`.
    fn cached<'a>(
        &'a self,
        base_url: &'a str,
        client_id: &'a str,
        valid_until: i64,
    ) -> BoxFuture<'a, Result<Option<(String, i64)>, CacheError>>;
    /// Keeps a token (replacing the one kept before).
    fn save<'a>(
        &'a self,
        base_url: &'a str,
        client_id: &'a str,
        token: &'a str,
        expires_at: i64,
    ) -> BoxFuture<'a, Result<(), CacheError>>;
    /// Forgets the kept token (the API called it invalid or expired).
    fn clear(&self) -> BoxFuture<'_, Result<(), CacheError>>;
}

/// A token cache that could not be read or written, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CacheError(pub String);
