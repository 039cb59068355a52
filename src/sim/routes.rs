//! HTTP: the axum router, request parsing, and the faults that hit answers on their way out.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use super::config::FaultKind;
use super::faults::{Fault, Faults, Target};
use super::state::{Endpoint, JsonAnswer, Sim};
use crate::api;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) sim: Arc<Sim>,
    faults: Faults,
    /// The address served, for image URLs when a request has no Host header.
    local_addr: SocketAddr,
}

type Shared = State<Arc<Ctx>>;

/// The simulator's routes over `sim`.
pub(crate) fn router(sim: Arc<Sim>, local_addr: SocketAddr) -> Router {
    let faults = Faults::new(sim.config.fault_rate, sim.config.faults, sim.config.seed);
    let ctx = Arc::new(Ctx {
        sim,
        faults,
        local_addr,
    });
    Router::new()
        .route(api::TOKEN_PATH, get(token).post(token))
        .route(api::SUBMIT_PATH, axum::routing::post(submit))
        .route(api::QUERY_PATH, axum::routing::post(query))
        .route("/img/{task}/{file}", get(image))
        .route("/__sim/stats", get(stats))
        .route("/__sim/tasks", get(tasks))
        .fallback(fallback)
        .with_state(ctx)
}

/// Decodes `application/x-www-form-urlencoded` (also a URL's query string). Never fails: bad
/// escapes are kept as they are.
pub(crate) fn parse_form(s: &str) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn json_body(answer: &JsonAnswer) -> Vec<u8> {
    // Serialising a Value cannot fail; an empty object is the harmless fallback.
    serde_json::to_vec(&answer.body).unwrap_or_else(|_| b"{}".to_vec())
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A body that fails, so the server aborts the connection mid-answer: at once, or after sending
/// `prefix`.
fn aborting_body(prefix: Option<Bytes>) -> Body {
    let stream = futures::stream::unfold((prefix, false), |(prefix, done)| async move {
        if done {
            return None;
        }
        if let Some(p) = prefix {
            return Some((Ok(p), (None, false)));
        }
        // Give the server a chance to flush what it has (the head and any prefix) first, so the
        // client sees an answer that breaks off rather than none at all.
        tokio::task::yield_now().await;
        let abort = io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        );
        Some((Err(abort), (None, true)))
    });
    Body::from_stream(stream)
}

impl Ctx {
    /// The fault for this request, counted.
    fn fault(&self, target: Target) -> Option<Fault> {
        let fault = self.faults.decide(target);
        if let Some(f) = fault {
            self.sim.note_fault(f.kind.as_str());
        }
        fault
    }

    /// The answer of a fault that strikes before processing (500, 502), if it is one.
    fn early_fault(&self, fault: Option<Fault>) -> Option<Response> {
        let (status, body) = match fault?.kind {
            FaultKind::Http500 => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            FaultKind::Http502 => (
                StatusCode::BAD_GATEWAY,
                "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
            ),
            _ => return None,
        };
        self.sim.note_status(status);
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        Some(response)
    }

    /// Sends a JSON answer through the fault that strikes after processing, if any.
    async fn deliver_json(&self, answer: JsonAnswer, fault: Option<Fault>) -> Response {
        let body = json_body(&answer);
        match fault.map(|f| (f.kind, f.detail)) {
            Some((FaultKind::Drop, _)) => json_response(answer.status, aborting_body(None)),
            Some((FaultKind::Json, detail)) => {
                // Any strict prefix of a JSON object is malformed JSON.
                let cut = 1 + (detail as usize % (body.len().max(2) - 1));
                self.sim.note_status(answer.status);
                json_response(answer.status, body[..cut.min(body.len() - 1)].to_vec())
            }
            Some((FaultKind::Slow, _)) => {
                tokio::time::sleep(Duration::from_millis(self.sim.config.slow_ms)).await;
                self.sim.note_status(answer.status);
                json_response(answer.status, body)
            }
            _ => {
                self.sim.note_status(answer.status);
                json_response(answer.status, body)
            }
        }
    }

    fn host(&self, headers: &HeaderMap) -> String {
        headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| self.local_addr.to_string())
    }
}

async fn token(State(ctx): Shared, RawQuery(query): RawQuery, body: Bytes) -> Response {
    ctx.sim.note_request(Endpoint::Token);
    let fault = ctx.fault(Target::Api);
    if let Some(response) = ctx.early_fault(fault) {
        return response;
    }
    let mut params = parse_form(query.as_deref().unwrap_or(""));
    // A POST may carry the credentials as a form body instead.
    if let Ok(form) = std::str::from_utf8(&body) {
        for (k, v) in parse_form(form.trim()) {
            params.entry(k).or_insert(v);
        }
    }
    let answer = ctx.sim.token(&params);
    ctx.deliver_json(answer, fault).await
}

async fn submit(State(ctx): Shared, RawQuery(query): RawQuery, body: Bytes) -> Response {
    ctx.sim.note_request(Endpoint::Submit);
    let fault = ctx.fault(Target::Api);
    if let Some(response) = ctx.early_fault(fault) {
        return response;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let answer = ctx
        .sim
        .submit(params.get("access_token").map(String::as_str), &body);
    ctx.deliver_json(answer, fault).await
}

async fn query(
    State(ctx): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    ctx.sim.note_request(Endpoint::Query);
    let fault = ctx.fault(Target::Api);
    if let Some(response) = ctx.early_fault(fault) {
        return response;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let delivered = !matches!(
        fault.map(|f| f.kind),
        Some(FaultKind::Drop | FaultKind::Json)
    );
    let answer = ctx.sim.query(
        params.get("access_token").map(String::as_str),
        &body,
        &ctx.host(&headers),
        delivered,
    );
    ctx.deliver_json(answer, fault).await
}

async fn image(
    State(ctx): Shared,
    Path((task, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    ctx.sim.note_request(Endpoint::Image);
    let fault = ctx.fault(Target::Image);
    if let Some(response) = ctx.early_fault(fault) {
        return response;
    }
    let params = parse_form(query.as_deref().unwrap_or(""));
    let image = match ctx.sim.image(&task, &file, &params) {
        Ok(image) => image,
        Err(answer) => return ctx.deliver_json(answer, fault).await,
    };
    let png = match ctx
        .sim
        .png
        .get(
            &image.prompt,
            image.size.width,
            image.size.height,
            image.index,
        )
        .await
    {
        Ok(png) => png,
        Err(e) => {
            tracing::error!(error = %e, "cannot render an image");
            ctx.sim.note_status(StatusCode::INTERNAL_SERVER_ERROR);
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let png_response = |body: Body| {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("image/png"));
        r
    };
    match fault.map(|f| (f.kind, f.detail)) {
        Some((FaultKind::Drop, _)) => png_response(aborting_body(None)),
        Some((FaultKind::Truncate, detail)) => {
            ctx.sim.note_status(StatusCode::OK);
            // Keep 10% to 90% of the bytes.
            let cut =
                (png.len() * (10 + (detail >> 1) as usize % 81) / 100).clamp(1, png.len() - 1);
            if detail & 1 == 0 {
                png_response(Body::from(png.slice(..cut)))
            } else {
                let mut r = png_response(aborting_body(Some(png.slice(..cut))));
                r.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(png.len()));
                r
            }
        }
        other => {
            if matches!(other, Some((FaultKind::Slow, _))) {
                tokio::time::sleep(Duration::from_millis(ctx.sim.config.slow_ms)).await;
            }
            ctx.sim.note_status(StatusCode::OK);
            ctx.sim.note_download(image.task_id);
            png_response(Body::from(png))
        }
    }
}

async fn stats(State(ctx): Shared) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&ctx.sim.stats()).unwrap_or_default(),
    )
}

async fn tasks(State(ctx): Shared) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&ctx.sim.tasks()).unwrap_or_default(),
    )
}

/// Unknown API methods answer error 3 as the real platform does; anything else is a plain 404.
async fn fallback(State(ctx): Shared, uri: Uri) -> Response {
    if uri.path().starts_with("/rpc/") {
        let answer = ctx.sim.unsupported_method();
        ctx.sim.note_status(answer.status);
        json_response(answer.status, json_body(&answer))
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_escapes_and_plus() {
        let p = parse_form(
            "grant_type=client_credentials&client_id=a%2Bb&client_secret=x+y&flag&bad=%zz",
        );
        assert_eq!(p["grant_type"], "client_credentials");
        assert_eq!(p["client_id"], "a+b");
        assert_eq!(p["client_secret"], "x y");
        assert_eq!(p["flag"], "");
        assert_eq!(p["bad"], "%zz");
        assert_eq!(parse_form("k=%E7%8C%AB")["k"], "猫");
        assert_eq!(parse_form("k=%4")["k"], "%4");
    }
}
