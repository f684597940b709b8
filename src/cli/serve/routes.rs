//! The axum handlers: the two generation endpoints (a request read, checked, queued on the
//! engine, answered whole or streamed), `/health`, `/v1/models` and `/v1/models/{id}`, unknown
//! URLs, and the API-key check.

use super::api::{fail, parse_request, read_body, ApiError, Kind};
use super::reply::{stream_response, whole_response};
use super::{now_secs, App};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rwkv_cli::serve::{Job, ResentFn, SubmitError};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::unbounded_channel;

fn request_id(kind: Kind) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    format!(
        "{prefix}-{:x}{:06x}",
        now_secs(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) async fn completions(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, Kind::Completion, req.into_body()).await
}

pub(super) async fn chat_completions(State(app): State<Arc<App>>, req: Request) -> Response {
    handle(app, Kind::Chat, req.into_body()).await
}

async fn handle(app: Arc<App>, kind: Kind, body: Body) -> Response {
    let t0 = Instant::now();
    let path = kind.path();
    let body = match read_body(body, app.max_body_bytes, app.read_timeout).await {
        Ok(b) => b,
        Err(e) => {
            // The rest of the body is still on its way (or never comes): no next request.
            let mut r = fail(path, t0, e);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let p = match parse_request(&app, kind, &body) {
        Ok(p) => p,
        Err(e) => return fail(path, t0, e),
    };
    let (tx, rx) = unbounded_channel();
    let logprobs_asked = p.logprobs.is_some();
    let job = Job {
        tokens: p.tokens,
        sampler: p.sampler,
        max_tokens: p.max_tokens,
        stops: p.stops,
        chat: kind == Kind::Chat,
        logprobs: p.logprobs,
        n: p.n,
        follow_up: (kind == Kind::Chat).then_some(super::api::reply_as_resent as ResentFn),
        echo: p.echo,
        sink: Arc::new(move |choice, e| tx.send((choice, e)).is_ok()),
    };
    match app.engine.submit(job) {
        Ok(()) => {}
        Err(SubmitError::QueueFull) => {
            let mut r = fail(
                path,
                t0,
                ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message:
                        "The server is busy: too many requests are waiting (--max-queue). Retry later."
                            .into(),
                    kind: "rate_limit_error",
                    param: None,
                    code: Some("rate_limit_exceeded"),
                },
            );
            // Clients (the `openai` package among them) wait this long before retrying.
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(SubmitError::Stopped) => {
            return fail(
                path,
                t0,
                ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "The model worker has stopped.".into(),
                    kind: "server_error",
                    param: None,
                    code: None,
                },
            )
        }
    }
    let id = request_id(kind);
    if p.stream {
        stream_response(app, kind, id, rx, p.n, p.include_usage, logprobs_asked, t0)
    } else {
        whole_response(app, kind, id, rx, p.n, logprobs_asked, t0).await
    }
}

pub(super) async fn health(State(app): State<Arc<App>>) -> Response {
    let s = app.engine.stats();
    Json(json!({
        "status": "ok",
        "model": app.model_id,
        "queued": s.queued,
        "active": s.active,
        "cache_entries": s.cache_entries,
        "cache_bytes": s.cache_bytes,
    }))
    .into_response()
}

fn model_object(app: &App) -> serde_json::Value {
    json!({"id": app.model_id, "object": "model", "created": app.created, "owned_by": "rwkv-cli"})
}

pub(super) async fn list_models(State(app): State<Arc<App>>) -> Response {
    Json(json!({"object": "list", "data": [model_object(&app)]})).into_response()
}

/// `GET /v1/models/{id}`: the model object of the model served, 404 for any other id.
pub(super) async fn get_model(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Response {
    // The id percent-decoded; one that is not UTF-8 names no model either.
    let id = match id {
        Ok(Path(id)) if id == app.model_id => return Json(model_object(&app)).into_response(),
        Ok(Path(id)) => id,
        Err(_) => uri.path().trim_start_matches("/v1/models/").to_string(),
    };
    crate::errln!("GET {} 404", uri.path());
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "The model `{id}` does not exist (this server runs `{}`).",
            app.model_id
        ),
        kind: "invalid_request_error",
        param: Some("model".into()),
        code: Some("model_not_found"),
    }
    .response()
}

pub(super) async fn not_found(req: Request) -> Response {
    let e = ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!(
            "Unknown request URL: {} {}.",
            req.method(),
            req.uri().path()
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    };
    crate::errln!("{} {} 404", req.method(), req.uri().path());
    e.response()
}

/// A known path asked with the wrong method: 405 with an OpenAI error object and a log line.
pub(super) async fn method_not_allowed(req: Request) -> Response {
    let e = ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} is not allowed on {}.", req.method(), req.uri().path()),
        kind: "invalid_request_error",
        param: None,
        code: Some("method_not_allowed"),
    };
    crate::errln!("{} {} 405", req.method(), req.uri().path());
    e.response()
}

/// Checks `Authorization: Bearer KEY` in constant time (when a key is set).
pub(super) async fn auth(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &app.api_key {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .unwrap_or(b"");
        if !bool::from(given.ct_eq(key.as_bytes())) {
            crate::errln!("{} {} 401", req.method(), req.uri().path());
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "Incorrect or missing API key: send `Authorization: Bearer KEY`.".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .response();
        }
    }
    next.run(req).await
}

/// The credentials of `Authorization: Bearer TOKEN`: the scheme in any case, then one or more
/// spaces (RFC 7235); `None` for another scheme.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}
