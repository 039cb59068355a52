//! Reading the API's answers: envelopes, task ids, download statuses, URL expiry.

use super::ClientError;
use crate::api::{Envelope, SubmitData};

/// Reads an answer of submit or query (`what`) that came with HTTP `status`: its `data`, or the
/// error it carries, classified.
pub fn read_answer<T: serde::de::DeserializeOwned>(
    what: &'static str,
    status: u16,
    bytes: &[u8],
) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        // Some gateways put an API error in a non-200 answer; prefer it when it parses.
        if let Ok(Envelope::<serde_json::Value> {
            error_code: Some(code),
            error_msg,
            ..
        }) = serde_json::from_slice(bytes)
        {
            return Err(ClientError::Api {
                code,
                msg: error_msg.unwrap_or_default(),
                detail: None,
            });
        }
        return Err(ClientError::Status { status, what });
    }
    let envelope: Envelope<T> =
        serde_json::from_slice(bytes).map_err(|e| ClientError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if let Some(code) = envelope.error_code.filter(|c| *c != 0) {
        return Err(ClientError::Api {
            code,
            msg: envelope.error_msg.unwrap_or_default(),
            detail: envelope.error_detail.map(|d| d.to_string()),
        });
    }
    envelope.data.ok_or_else(|| ClientError::Malformed {
        what,
        detail: "neither data nor error_code".into(),
    })
}

/// A submit answer's data, refused when its task id is empty (no task to poll).
pub fn check_task_id(data: SubmitData) -> Result<SubmitData, ClientError> {
    if data.task_id.is_empty() || data.task_id == "0" {
        return Err(ClientError::Malformed {
            what: "submit",
            detail: "empty task id".into(),
        });
    }
    Ok(data)
}

/// What the HTTP status of an image download says: expired (403, 410), a redirect the policy did
/// not follow (to another scheme, or one too many), another failure, or go on.
pub fn check_download_status(status: u16) -> Result<(), ClientError> {
    match status {
        403 | 410 => Err(ClientError::Expired { status }),
        300..=399 => Err(ClientError::BadUrl),
        200..=299 => Ok(()),
        _ => Err(ClientError::Status {
            status,
            what: "image download",
        }),
    }
}

/// When a signed image URL stops working, read from its signature when it carries one
/// (`expires=UNIX`, or BCE's `authorization=bce-auth-v1/AK/TIMESTAMP/SECONDS/...`), else
/// `fallback_ms` from `now_ms`.
pub fn url_expiry(url: &str, now_ms: i64, fallback_ms: i64) -> i64 {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return now_ms + fallback_ms;
    };
    for (k, v) in parsed.query_pairs() {
        if (k == "expires" || k == "Expires")
            && let Ok(secs) = v.parse::<i64>()
        {
            return secs * 1000;
        }
        if k == "authorization" {
            let parts: Vec<&str> = v.split('/').collect();
            if parts.len() >= 4
                && parts[0] == "bce-auth-v1"
                && let (Ok(ts), Ok(secs)) = (
                    chrono::DateTime::parse_from_rfc3339(parts[2]),
                    parts[3].parse::<i64>(),
                )
            {
                return ts.timestamp_millis() + secs * 1000;
            }
        }
    }
    now_ms + fallback_ms
}
