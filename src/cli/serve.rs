//! `rwkv-cli serve`: an OpenAI-compatible HTTP server (tokio + axum) in front of the serving
//! engine ([`rwkv_cli::serve`]: one model worker, continuous batching, prefix-state cache).
//!
//! Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (messages in the G1 format of `rwkv-cli chat`). Responses carry
//! `usage` with `prompt_tokens_details.cached_tokens`; `stream: true` answers with server-sent
//! events ending in `data: [DONE]`. Errors are OpenAI error objects. One line per request on
//! stderr. SIGINT/SIGTERM: stop accepting, finish the requests in flight, exit 0.

use super::model_args::{InitStateArgs, ModelArgs};
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use rwkv_cli::chat::{self, ReplyView, Think};
use rwkv_cli::sampler::SamplerConfig;
use rwkv_cli::serve::{Engine, EngineOptions, Event, Finish, Job, Outcome, SubmitError};
use rwkv_cli::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const AFTER_HELP: &str = "\
The server speaks the OpenAI API: point a client's base URL at http://HOST:PORT/v1.
Defaults when a request leaves them out: completions sample as `generate` does (temperature 1,
top_p 0.85, no penalties, max_tokens 16, seed 42); chat completions as `chat` does (temperature
1, top_p 0.3, presence and frequency penalty 0.5, max_tokens 1000, seed 42). With the same
settings a reply is the text `generate` or `chat` would write. Chat messages are rendered in
the G1 format (System:/User:/Assistant:, `\\n\\n` ends a turn); the last message must be the
user's.

After each request the state at the end of its prompt (and of its reply) is kept, up to
--state-cache bytes (least recently used first out); a request that begins with a kept prefix
reads only the rest (usage.prompt_tokens_details.cached_tokens). --api-key (or
RWKV_CLI_API_KEY) requires `Authorization: Bearer KEY` on every endpoint but /health.

Examples:
  rwkv-cli serve -m rwkv7-g1-0.4b --quant q8_0          http://127.0.0.1:8000/v1
  rwkv-cli serve --port 0 --max-batch 4 --state-cache 1GiB
  RWKV_CLI_API_KEY=secret rwkv-cli serve -m M.pth --host 0.0.0.0 --port 8080

Environment: RWKV_CLI_API_KEY (the API key); RWKV_CLI_CACHE or XDG_CACHE_HOME (where the
embedded model is unpacked); HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE (Hub
models); RWKV_NO_AVX512, RWKV_NO_VNNI, RWKV_NO_SIMD (force slower kernels).

Exit status: 0 success (also after SIGINT or SIGTERM, once the requests in flight are done),
1 failure (one line on stderr), 2 usage error.";

#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub init: InitStateArgs,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (default: $RWKV_CLI_API_KEY, if set).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Requests decoded together at most (one batched step of the model for all of them).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Memory for cached prefix states, e.g. 512MiB, 2GiB, 0 (none).
    #[arg(long, default_value = "512MiB")]
    pub state_cache: String,
    /// Requests waiting for a free slot at most; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Longest prompt accepted, in tokens; longer ones get 400.
    #[arg(long, default_value_t = 32768)]
    pub max_prompt_tokens: usize,
    /// Prompt tokens read per request and step (longer prompts are read over several steps,
    /// between the decode steps of the others).
    #[arg(long, default_value_t = rwkv_cli::models::DEFAULT_CHUNK)]
    pub chunk: usize,
}

/// `512MiB`, `2GiB`, `100MB`, `4096`: bytes.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("cannot read the size '{s}' (e.g. 512MiB, 2GiB, 0)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => anyhow::bail!(
            "cannot read the size '{s}': unknown unit '{unit}' (B, KiB, MiB, GiB, KB, MB, GB)"
        ),
    };
    Ok((n * mult) as usize)
}

struct App {
    engine: Engine,
    tok: Arc<dyn Tokenizer>,
    model_id: String,
    api_key: Option<String>,
    max_prompt_tokens: usize,
    created: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI error object with its status.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    fn response(&self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// One line per request on stderr.
fn log_line(path: &str, status: u16, usage: Option<&Outcome>, t0: Instant) {
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match usage {
        Some(u) => crate::errln!(
            "POST {path} {status} prompt_tokens={} cached_tokens={} completion_tokens={} finish={} {ms:.0}ms",
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            u.finish.name()
        ),
        None => crate::errln!("{path} {status} {ms:.0}ms"),
    }
}

fn fail(path: &str, t0: Instant, e: ApiError) -> Response {
    log_line(&format!("POST {path}"), e.status.as_u16(), None, t0);
    e.response()
}

/// Which endpoint a request came through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Completion => "/v1/completions",
            Kind::Chat => "/v1/chat/completions",
        }
    }
}

/// A validated request.
struct Parsed {
    tokens: Vec<u32>,
    sampler: SamplerConfig,
    max_tokens: usize,
    stops: Vec<Vec<u8>>,
    stream: bool,
    include_usage: bool,
}

fn type_error(name: &str, what: &str) -> ApiError {
    ApiError::bad(
        format!("Invalid type for '{name}': expected {what}."),
        Some(name),
    )
}

fn opt_f32(o: &Map<String, Value>, name: &str, default: f32) -> Result<f32, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN) as f32),
        Some(_) => Err(type_error(name, "a number")),
    }
}

fn opt_bool(o: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(type_error(name, "a boolean")),
    }
}

fn opt_int(o: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| type_error(name, "an integer")),
        Some(_) => Err(type_error(name, "an integer")),
    }
}

/// The text of a message's `content`: a string, or an array of `{"type": "text", "text"}`.
fn content_text(v: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    _ => {
                        return Err(ApiError::bad(
                            "Only text content parts ({\"type\": \"text\", \"text\": ...}) are supported.",
                            Some(param),
                        ))
                    }
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => Err(type_error(param, "a string or an array of text parts")),
    }
}

/// The G1 conversation text of `messages`, tokenized part by part as `chat` reads it, ending
/// with the assistant's prefix.
fn chat_tokens(tok: &dyn Tokenizer, messages: &Value) -> Result<Vec<u32>, ApiError> {
    let Value::Array(list) = messages else {
        return Err(type_error("messages", "an array"));
    };
    if list.is_empty() {
        return Err(ApiError::bad(
            "'messages' must contain at least one message.",
            Some("messages"),
        ));
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages.[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| type_error(&format!("{param}.role"), "a string"))?;
        let text = content_text(m.get("content"), &format!("{param}.content"))?;
        let cleaned = chat::clean_message(text.as_bytes());
        match role {
            "system" | "developer" => {
                if !cleaned.is_empty() {
                    parts.push(chat::system_part(&cleaned));
                }
            }
            "user" => {
                if cleaned.is_empty() {
                    return Err(ApiError::bad(
                        format!("'{param}.content' is empty."),
                        Some(&param),
                    ));
                }
                parts.push(chat::user_part(&cleaned));
            }
            "assistant" => {
                parts.push(Think::Off.assistant_prefix().to_vec());
                let mut reply = b" ".to_vec();
                reply.extend_from_slice(&cleaned);
                reply.extend_from_slice(chat::END_OF_TURN);
                parts.push(reply);
            }
            other => {
                return Err(ApiError::bad(
                    format!("Invalid value for '{param}.role': '{other}' (expected system, developer, user or assistant)."),
                    Some(&format!("{param}.role")),
                ))
            }
        }
    }
    if list
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        != Some("user")
    {
        return Err(ApiError::bad(
            "The last message must be the user's.",
            Some("messages"),
        ));
    }
    parts.push(Think::Off.assistant_prefix().to_vec());
    let mut tokens = Vec::new();
    for p in &parts {
        tokens.extend(
            tok.encode(p)
                .map_err(|e| ApiError::bad(format!("{e:#}"), None))?,
        );
    }
    Ok(tokens)
}

fn parse_request(app: &App, kind: Kind, body: &[u8]) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            format!("We could not parse the JSON body of your request: {e}."),
            None,
        )
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::bad(
            "The request body must be a JSON object.",
            None,
        ));
    };
    match o.get("model") {
        Some(Value::String(m)) if *m == app.model_id => {}
        Some(Value::String(m)) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "The model `{m}` does not exist (this server runs `{}`).",
                    app.model_id
                ),
                kind: "invalid_request_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
            })
        }
        None | Some(Value::Null) => {
            return Err(ApiError::bad(
                "You must provide a model parameter.",
                Some("model"),
            ))
        }
        Some(_) => return Err(type_error("model", "a string")),
    }
    if let Some(n) = opt_int(&o, "n")? {
        if n != 1 {
            return Err(ApiError::bad("Only n = 1 is supported.", Some("n")));
        }
    }
    match o.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(ApiError::bad(
                "logprobs are not supported.",
                Some("logprobs"),
            ))
        }
    }
    let chat = kind == Kind::Chat;
    let sampler = SamplerConfig {
        temperature: opt_f32(&o, "temperature", 1.0)?,
        top_p: opt_f32(&o, "top_p", if chat { 0.3 } else { 0.85 })?,
        top_k: 0,
        presence_penalty: opt_f32(&o, "presence_penalty", if chat { 0.5 } else { 0.0 })?,
        frequency_penalty: opt_f32(&o, "frequency_penalty", if chat { 0.5 } else { 0.0 })?,
        seed: opt_int(&o, "seed")?.map_or(42, |s| s as u64),
        ..SamplerConfig::default()
    };
    if let Err(e) = sampler.validate() {
        let msg = format!("{e:#}").replace("--", "").replace('-', "_");
        return Err(ApiError::bad(msg, None));
    }
    let max_name = if chat && o.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match opt_int(&o, max_name)? {
        None => {
            if chat {
                1000
            } else {
                16
            }
        }
        Some(n) if n < 0 => {
            return Err(ApiError::bad(
                format!("Invalid '{max_name}': integer below minimum value. Expected a value >= 0, but got {n} instead."),
                Some(max_name),
            ))
        }
        Some(n) => n as usize,
    };
    let stops = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error("stop", "a string or an array of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(type_error("stop", "a string or an array of strings")),
    };
    let stops = stops
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(String::into_bytes)
        .collect();
    let stream = opt_bool(&o, "stream")?;
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?,
        Some(_) => return Err(type_error("stream_options", "an object")),
    };
    let tokens = match kind {
        Kind::Completion => {
            let prompt = match o.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                    a[0].as_str().unwrap_or_default().to_string()
                }
                None | Some(Value::Null) => {
                    return Err(ApiError::bad("You must provide a prompt.", Some("prompt")))
                }
                Some(_) => return Err(type_error("prompt", "a string")),
            };
            let mut t = app
                .tok
                .encode(prompt.as_bytes())
                .map_err(|e| ApiError::bad(format!("{e:#}"), Some("prompt")))?;
            if t.is_empty() {
                // As `generate` does: an empty prompt starts a new document.
                t.push(app.tok.eot_token().unwrap_or(0));
            }
            t
        }
        Kind::Chat => chat_tokens(
            app.tok.as_ref(),
            o.get("messages")
                .ok_or_else(|| ApiError::bad("You must provide messages.", Some("messages")))?,
        )?,
    };
    if tokens.len() > app.max_prompt_tokens {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad(
                format!(
                    "The prompt has {} tokens; this server accepts at most {} (--max-prompt-tokens).",
                    tokens.len(),
                    app.max_prompt_tokens
                ),
                Some(if chat { "messages" } else { "prompt" }),
            )
        });
    }
    Ok(Parsed {
        tokens,
        sampler,
        max_tokens,
        stops,
        stream,
        include_usage,
    })
}

/// Turns raw bytes into text as they come: valid UTF-8 goes out, an incomplete character at
/// the end waits, invalid bytes become U+FFFD (as `String::from_utf8_lossy` of the whole).
#[derive(Default)]
struct Utf8Stream {
    buf: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.buf.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.buf) {
                Ok(s) => {
                    out.push_str(s);
                    self.buf.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    match e.error_len() {
                        None => {
                            out.push_str(std::str::from_utf8(&self.buf[..good]).expect("valid"));
                            self.buf.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push_str(&String::from_utf8_lossy(&self.buf[..good + bad]));
                            self.buf.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        s
    }
}

/// What a reply shows: completions the text as is; chat the answer, as `chat` prints it.
struct Shown {
    view: Option<ReplyView>,
    utf8: Utf8Stream,
}

impl Shown {
    fn new(kind: Kind) -> Self {
        Shown {
            view: (kind == Kind::Chat).then(|| ReplyView::new(Think::Off)),
            utf8: Utf8Stream::default(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> String {
        match &mut self.view {
            None => self.utf8.push(bytes),
            Some(view) => {
                let mut answer = Vec::new();
                let _ = view.push(bytes, &mut |p| {
                    if let chat::Piece::Answer(b) = p {
                        answer.extend_from_slice(b);
                    }
                    Ok(())
                });
                self.utf8.push(&answer)
            }
        }
    }
}

fn usage_json(u: &Outcome) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

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

async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    handle(app, Kind::Completion, body).await
}

async fn chat_completions(State(app): State<Arc<App>>, body: Bytes) -> Response {
    handle(app, Kind::Chat, body).await
}

async fn handle(app: Arc<App>, kind: Kind, body: Bytes) -> Response {
    let t0 = Instant::now();
    let path = kind.path();
    let p = match parse_request(&app, kind, &body) {
        Ok(p) => p,
        Err(e) => return fail(path, t0, e),
    };
    let (tx, rx) = unbounded_channel();
    let job = Job {
        tokens: p.tokens,
        sampler: p.sampler,
        max_tokens: p.max_tokens,
        stops: p.stops,
        chat: kind == Kind::Chat,
        sink: Box::new(move |e| tx.send(e).is_ok()),
    };
    match app.engine.submit(job) {
        Ok(()) => {}
        Err(SubmitError::QueueFull) => return fail(
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
        ),
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
        stream_response(app, kind, id, rx, p.include_usage, t0)
    } else {
        whole_response(app, kind, id, rx, t0).await
    }
}

async fn whole_response(
    app: Arc<App>,
    kind: Kind,
    id: String,
    mut rx: UnboundedReceiver<Event>,
    t0: Instant,
) -> Response {
    let path = kind.path();
    let mut shown = Shown::new(kind);
    let mut text = String::new();
    let outcome = loop {
        match rx.recv().await {
            Some(Event::Text(b)) => text.push_str(&shown.push(&b)),
            Some(Event::Done(o)) => break o,
            Some(Event::Failed(msg)) => {
                return fail(
                    path,
                    t0,
                    ApiError {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message: msg,
                        kind: "server_error",
                        param: None,
                        code: None,
                    },
                )
            }
            None => {
                return fail(
                    path,
                    t0,
                    ApiError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: "The request was dropped by the model worker.".into(),
                        kind: "server_error",
                        param: None,
                        code: None,
                    },
                )
            }
        }
    };
    text.push_str(&shown.utf8.finish());
    let choice = match kind {
        Kind::Completion => json!({
            "text": text, "index": 0, "logprobs": null, "finish_reason": outcome.finish.name(),
        }),
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": outcome.finish.name(),
        }),
    };
    let object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion",
    };
    let body = json!({
        "id": id,
        "object": object,
        "created": now_secs(),
        "model": app.model_id,
        "choices": [choice],
        "usage": usage_json(&outcome),
    });
    log_line(path, 200, Some(&outcome), t0);
    (StatusCode::OK, Json(body)).into_response()
}

/// Logs a stream that ended without its `Done` (the client went away).
struct StreamLog {
    path: &'static str,
    t0: Instant,
    done: bool,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if !self.done {
            crate::errln!(
                "POST {} 200 stream closed by the client {:.0}ms",
                self.path,
                self.t0.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

struct StreamState {
    app: Arc<App>,
    kind: Kind,
    id: String,
    created: u64,
    rx: UnboundedReceiver<Event>,
    shown: Shown,
    include_usage: bool,
    /// Events still to send before reading the next engine event.
    out: std::collections::VecDeque<SseEvent>,
    finished: bool,
    log: StreamLog,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<Finish>) -> SseEvent {
        let choice = match self.kind {
            Kind::Completion => json!({
                "text": delta, "index": 0, "logprobs": null,
                "finish_reason": finish.map(Finish::name),
            }),
            Kind::Chat => json!({
                "index": 0, "delta": delta, "logprobs": null,
                "finish_reason": finish.map(Finish::name),
            }),
        };
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        let v = json!({
            "id": self.id, "object": object, "created": self.created,
            "model": self.app.model_id, "choices": [choice],
        });
        SseEvent::default().data(v.to_string())
    }

    fn text_chunk(&self, text: String) -> SseEvent {
        match self.kind {
            Kind::Completion => self.chunk(Value::String(text), None),
            Kind::Chat => self.chunk(json!({"content": text}), None),
        }
    }
}

fn stream_response(
    app: Arc<App>,
    kind: Kind,
    id: String,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    t0: Instant,
) -> Response {
    let mut st = StreamState {
        app,
        kind,
        id,
        created: now_secs(),
        rx,
        shown: Shown::new(kind),
        include_usage,
        out: Default::default(),
        finished: false,
        log: StreamLog {
            path: kind.path(),
            t0,
            done: false,
        },
    };
    if kind == Kind::Chat {
        let first = st.chunk(json!({"role": "assistant", "content": ""}), None);
        st.out.push_back(first);
    }
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(b)) => {
                    let t = st.shown.push(&b);
                    if !t.is_empty() {
                        let c = st.text_chunk(t);
                        st.out.push_back(c);
                    }
                }
                Some(Event::Done(o)) => {
                    let rest = st.shown.utf8.finish();
                    if !rest.is_empty() {
                        let c = st.text_chunk(rest);
                        st.out.push_back(c);
                    }
                    let empty = match st.kind {
                        Kind::Completion => Value::String(String::new()),
                        Kind::Chat => json!({}),
                    };
                    let last = st.chunk(empty, Some(o.finish));
                    st.out.push_back(last);
                    if st.include_usage {
                        let object = match st.kind {
                            Kind::Completion => "text_completion",
                            Kind::Chat => "chat.completion.chunk",
                        };
                        let v = json!({
                            "id": st.id, "object": object, "created": st.created,
                            "model": st.app.model_id, "choices": [], "usage": usage_json(&o),
                        });
                        st.out.push_back(SseEvent::default().data(v.to_string()));
                    }
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.finished = true;
                    st.log.done = true;
                    log_line(st.kind.path(), 200, Some(&o), st.log.t0);
                }
                Some(Event::Failed(msg)) => {
                    let v = json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}});
                    st.out.push_back(SseEvent::default().data(v.to_string()));
                    st.finished = true;
                    st.log.done = true;
                    log_line(st.kind.path(), 500, None, st.log.t0);
                }
                None => {
                    st.finished = true;
                }
            }
        }
    });
    Sse::new(stream).into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
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

async fn list_models(State(app): State<Arc<App>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{"id": app.model_id, "object": "model", "created": app.created, "owned_by": "rwkv-cli"}],
    }))
    .into_response()
}

async fn not_found(req: Request) -> Response {
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

/// Checks `Authorization: Bearer KEY` in constant time (when a key is set).
async fn auth(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &app.api_key {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    crate::errln!("shutting down: finishing the requests in flight");
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 {
        rwkv_cli::usage_bail!("--max-batch must be at least 1");
    }
    if args.chunk == 0 {
        rwkv_cli::usage_bail!("--chunk must be at least 1");
    }
    if args.max_prompt_tokens == 0 {
        rwkv_cli::usage_bail!("--max-prompt-tokens must be at least 1");
    }
    let cache_bytes = match parse_size(&args.state_cache) {
        Ok(n) => n,
        Err(e) => rwkv_cli::usage_bail!("--state-cache: {e:#}"),
    };
    let api_key = match args.api_key.clone() {
        Some(k) => Some(k),
        None => std::env::var("RWKV_CLI_API_KEY").ok(),
    };
    if api_key.as_deref() == Some("") {
        rwkv_cli::usage_bail!("the API key (--api-key or RWKV_CLI_API_KEY) must not be empty");
    }
    args.model.format()?;
    let (loaded, tok) = args.model.load()?;
    let model_id = match &args.model.model {
        Some(_) => loaded
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rwkv".into()),
        None => "rwkv-cli-default".to_string(),
    };
    let state_bytes = loaded.config.state_bytes();
    let model: Arc<dyn rwkv_cli::models::Model> = Arc::from(loaded.model);
    // One start state for every request (so that cached prefixes stay valid).
    let initial_state = match &args.init.init_state {
        Some(_) => Some(args.init.start(model.as_ref())?),
        None => None,
    };
    let tok: Arc<dyn Tokenizer> = Arc::from(tok);
    drop(loaded.checkpoint);
    let engine = Engine::start(
        model,
        tok.clone(),
        EngineOptions {
            max_batch: args.max_batch,
            cache_bytes,
            max_queue: args.max_queue,
            prefill_chunk: args.chunk,
            initial_state,
        },
    );
    let app = Arc::new(App {
        engine,
        tok,
        model_id,
        api_key,
        max_prompt_tokens: args.max_prompt_tokens,
        created: now_secs(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        let v1 = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(app.clone(), auth));
        let router = Router::new()
            .route("/health", get(health))
            .merge(v1)
            .with_state(app.clone());
        crate::errln!(
            "serving {} (state {} per request, cache {}, batch {}) — listening on http://{addr}",
            app.model_id,
            rwkv_cli::stats::human_bytes(state_bytes as u64),
            rwkv_cli::stats::human_bytes(cache_bytes as u64),
            args.max_batch
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn utf8_stream_waits_for_whole_characters() {
        let mut u = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(u.push(&[b'a', e[0]]), "a");
        assert_eq!(u.push(&[e[1], 0xff, b'b']), "é\u{fffd}b");
        assert_eq!(u.push(&[0xc3]), "");
        assert_eq!(u.finish(), "\u{fffd}");
    }
}
