//! Requests read and checked into what the engine runs ([`parse_request`]: prompt or chat
//! messages, sampling, stops, streaming), and the OpenAI error objects every failure answers
//! with (logged, one line per request).

use super::App;
use axum::body::{Body, HttpBody};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use rwkv_cli::chat::{self, Think};
use rwkv_cli::sampler::SamplerConfig;
use rwkv_cli::serve::Outcome;
use rwkv_cli::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// An OpenAI error object with its status.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) kind: &'static str,
    pub(super) param: Option<String>,
    pub(super) code: Option<&'static str>,
}

impl ApiError {
    pub(super) fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub(super) fn response(&self) -> Response {
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
pub(super) fn log_line(path: &str, status: u16, usage: Option<&Outcome>, t0: Instant) {
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match usage {
        Some(u) => crate::errln!(
            "POST {path} {status} prompt_tokens={} cached_tokens={} completion_tokens={} finish={} {ms:.0}ms",
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            u.finish.name()
        ),
        None => crate::errln!("POST {path} {status} {ms:.0}ms"),
    }
}

pub(super) fn fail(path: &str, t0: Instant, e: ApiError) -> Response {
    log_line(path, e.status.as_u16(), None, t0);
    e.response()
}

/// The bytes of a request body: at most `limit` (a larger body gets 413, refused by its
/// Content-Length before any of it is read when it has one), each part arriving within
/// `timeout` of the one before (a stalled body gets 408). Either way the rest of the body is
/// not read, so the answer closes the connection.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: Some("request_too_large"),
        ..ApiError::bad(
            format!(
                "The request body is over {limit} bytes, the most this server reads ({}).",
                "64 per token of --max-prompt-tokens, at least 1 MiB"
            ),
            None,
        )
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut parts = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(timeout, parts.next()).await {
            Ok(None) => return Ok(out),
            Ok(Some(Ok(part))) if out.len() + part.len() > limit => return Err(too_large()),
            Ok(Some(Ok(part))) => out.extend_from_slice(&part),
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad(
                    format!("The request body could not be read: {e}."),
                    None,
                ))
            }
            Err(_) => {
                return Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    code: Some("request_timeout"),
                    ..ApiError::bad(
                        format!(
                            "The request body stopped arriving: nothing for {}s (--read-timeout).",
                            timeout.as_secs()
                        ),
                        None,
                    )
                })
            }
        }
    }
}

/// Which endpoint a request came through.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Completion,
    Chat,
}

impl Kind {
    pub(super) fn path(self) -> &'static str {
        match self {
            Kind::Completion => "/v1/completions",
            Kind::Chat => "/v1/chat/completions",
        }
    }
}

/// A validated request.
pub(super) struct Parsed {
    pub(super) tokens: Vec<u32>,
    pub(super) sampler: SamplerConfig,
    pub(super) max_tokens: usize,
    pub(super) stops: Vec<Vec<u8>>,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    /// Log-probabilities of every generated token, with this many top alternatives.
    pub(super) logprobs: Option<usize>,
    /// Choices: independent samples of the prompt.
    pub(super) n: usize,
    /// Completions' `echo`: the reply begins with the prompt (and its tokens' log-probabilities).
    pub(super) echo: bool,
}

/// The most alternatives `logprobs` (completions) and `top_logprobs` (chat) may ask for.
pub(super) const MAX_TOP_LOGPROBS: i64 = 20;

/// A count of top log-probabilities, `0..=MAX_TOP_LOGPROBS`.
fn top_count(o: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match opt_int(o, name)? {
        None => Ok(None),
        Some(n) if (0..=MAX_TOP_LOGPROBS.into()).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(ApiError::bad(
            format!("Invalid '{name}': {n} is out of range. Expected a value from 0 to {MAX_TOP_LOGPROBS}."),
            Some(name),
        )),
    }
}

/// `logprobs` as the endpoint takes it: completions `logprobs: N` (N alternatives); chat
/// `logprobs: true` with `top_logprobs: N` (0 without it).
fn logprobs(o: &Map<String, Value>, kind: Kind) -> Result<Option<usize>, ApiError> {
    match kind {
        Kind::Completion => match o.get("logprobs") {
            Some(Value::Bool(_)) => Err(type_error("logprobs", "an integer")),
            _ => top_count(o, "logprobs"),
        },
        Kind::Chat => {
            let top = top_count(o, "top_logprobs")?;
            match (opt_bool(o, "logprobs")?, top) {
                (true, top) => Ok(Some(top.unwrap_or(0))),
                (false, None) => Ok(None),
                (false, Some(_)) => Err(ApiError::bad(
                    "'top_logprobs' requires 'logprobs' to be true.",
                    Some("top_logprobs"),
                )),
            }
        }
    }
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

/// An integer field: any JSON integer from -2^63 to 2^64 - 1 (the callers say which are in
/// range); `null` counts as absent.
fn opt_int(o: &Map<String, Value>, name: &str) -> Result<Option<i128>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Ok(Some(i.into())),
            (None, Some(u)) => Ok(Some(u.into())),
            (None, None) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Err(ApiError::bad(
                format!(
                    "Invalid '{name}': {n} is out of range (an integer from {} to {}).",
                    i64::MIN,
                    u64::MAX
                ),
                Some(name),
            )),
            (None, None) => Err(type_error(name, "an integer")),
        },
        Some(_) => Err(type_error(name, "an integer")),
    }
}

/// `seed`: any integer of `opt_int`'s range; a negative one as its two's complement (as a
/// cast from i64 would give it), so every value names one of the sampler's u64 seeds.
fn opt_seed(o: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    Ok(opt_int(o, "seed")?.map(|s| match u64::try_from(s) {
        Ok(u) => u,
        Err(_) => s as i64 as u64,
    }))
}

/// Whether a field is present: `null` counts as absent, as everywhere in a request.
fn given<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

/// Fields that would change the answer but are not implemented: refused (400 naming the field)
/// rather than ignored. Their harmless values pass (`echo: false`, `best_of` 1 or `n`,
/// `tools: []`, `tool_choice: "none"`, `response_format: {"type": "text"}`), as does any
/// field not listed here (`user`, `metadata`, `store`, ...).
fn refuse_unsupported(o: &Map<String, Value>, n: usize, kind: Kind) -> Result<(), ApiError> {
    let unsupported = |name: &str, what: &str| {
        Err(ApiError::bad(
            format!("'{name}' is not supported by this server{what}."),
            Some(name),
        ))
    };
    if kind == Kind::Chat && opt_bool(o, "echo")? {
        return unsupported("echo", " for chat (completions take it)");
    }
    if let Some(b) = opt_int(o, "best_of")? {
        if b != 1 && b != n as i128 {
            return unsupported(
                "best_of",
                " (only 1 or `n`: every choice sampled is returned)",
            );
        }
    }
    if given(o, "suffix").is_some() {
        return unsupported(
            "suffix",
            " (no insertion: the model only continues the prompt)",
        );
    }
    for name in ["tools", "functions"] {
        match given(o, name) {
            None => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return unsupported(name, " (no tool or function calling)"),
        }
    }
    for name in ["tool_choice", "function_call"] {
        match given(o, name) {
            None => {}
            Some(Value::String(s)) if s == "none" => {}
            Some(_) => return unsupported(name, " (no tool or function calling; only \"none\")"),
        }
    }
    if let Some(v) = given(o, "response_format") {
        if v.get("type").and_then(Value::as_str) != Some("text") {
            return unsupported(
                "response_format",
                " (no JSON mode or schema; only {\"type\": \"text\"})",
            );
        }
    }
    Ok(())
}

/// OpenAI's most negative bias, which bans a token; any other bias from -100 to 100 is added
/// to its logit as `--logit-bias` adds it.
const BAN: f64 = -100.0;

/// `logit_bias`: `{"token id": bias}`, the ids below the model's vocabulary size `vocab`, the
/// biases from -100 to 100 (-100: the token is never sampled).
fn logit_bias(o: &Map<String, Value>, vocab: usize) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match given(o, "logit_bias") {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(type_error(
                "logit_bias",
                "an object mapping token ids to numbers",
            ))
        }
    };
    map.iter()
        .map(|(key, v)| {
            let id = key
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < vocab)
                .ok_or_else(|| {
                    ApiError::bad(
                        format!(
                            "Invalid key in 'logit_bias': '{key}' is not a token id of this model (0 to {}).",
                            vocab.saturating_sub(1)
                        ),
                        Some("logit_bias"),
                    )
                })?;
            let bias = v
                .as_f64()
                .filter(|b| (BAN..=-BAN).contains(b))
                .ok_or_else(|| {
                    ApiError::bad(
                        format!("Invalid value for 'logit_bias' token {key}: {v}. Expected a number from -100 to 100."),
                        Some("logit_bias"),
                    )
                })?;
            Ok((id, if bias == BAN { f32::NEG_INFINITY } else { bias as f32 }))
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .and_then(|bias| {
            if rwkv_cli::sampler::bans_every_token(&bias, vocab) {
                return Err(ApiError::bad(
                    "Invalid 'logit_bias': it bans every token of the vocabulary, leaving none to sample.".to_string(),
                    Some("logit_bias"),
                ));
            }
            Ok(bias)
        })
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

/// An assistant message's text after `Assistant:`: ` CONTENT\n\n` (`content` cleaned).
fn assistant_part(content: &[u8]) -> Vec<u8> {
    let mut part = b" ".to_vec();
    part.extend_from_slice(content);
    part.extend_from_slice(chat::END_OF_TURN);
    part
}

/// The text a follow-up request holds for a chat reply (its bytes, `\n\n` at the end): the
/// answer as the response showed it (leading whitespace left out, as UTF-8), as an assistant
/// message ([`rwkv_cli::serve::Job::follow_up`]).
pub(super) fn reply_as_resent(reply: &[u8]) -> Vec<u8> {
    let body = reply.strip_suffix(chat::END_OF_TURN).unwrap_or(reply);
    let mut answer = Vec::new();
    let _ = chat::ReplyView::new(Think::Off).push(body, &mut |p| {
        if let chat::Piece::Answer(b) = p {
            answer.extend_from_slice(b);
        }
        Ok(())
    });
    let text = String::from_utf8_lossy(&answer);
    assistant_part(&chat::clean_message(text.as_bytes()))
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
                parts.push(assistant_part(&cleaned));
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

pub(super) fn parse_request(app: &App, kind: Kind, body: &[u8]) -> Result<Parsed, ApiError> {
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
    let n = match opt_int(&o, "n")? {
        None => 1,
        Some(n) if n >= 1 && n <= app.max_batch as i128 => n as usize,
        Some(n) => {
            return Err(ApiError::bad(
                format!(
                    "Invalid 'n': {n}. Expected a value from 1 to {} (--max-batch: every choice decodes in a slot of its own).",
                    app.max_batch
                ),
                Some("n"),
            ))
        }
    };
    refuse_unsupported(&o, n, kind)?;
    let logprobs = logprobs(&o, kind)?;
    let chat = kind == Kind::Chat;
    let sampler = SamplerConfig {
        temperature: opt_f32(&o, "temperature", 1.0)?,
        top_p: opt_f32(&o, "top_p", if chat { 0.3 } else { 0.85 })?,
        // Not OpenAI's, but what vLLM's and llama.cpp's servers take (top_k -1 or 0: off).
        top_k: match opt_int(&o, "top_k")? {
            None => 0,
            Some(k) if k <= 0 => 0,
            Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
        },
        min_p: opt_f32(&o, "min_p", 0.0)?,
        presence_penalty: opt_f32(&o, "presence_penalty", if chat { 0.5 } else { 0.0 })?,
        frequency_penalty: opt_f32(&o, "frequency_penalty", if chat { 0.5 } else { 0.0 })?,
        logit_bias: logit_bias(&o, app.vocab)?,
        seed: opt_seed(&o)?.unwrap_or(42),
        ..SamplerConfig::default()
    };
    // The fields set above are the API's own (same names), so the one at fault is a parameter.
    if let Some((field, why)) = sampler.invalid_field() {
        return Err(ApiError::bad(format!("'{field}' {why}."), Some(field)));
    }
    let max_name = if chat && given(&o, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match opt_int(&o, max_name)? {
        // The endpoint's default (as `generate` and `chat`), within --max-completion-tokens.
        None => (if chat { 1000 } else { 16 }).min(app.max_completion_tokens),
        Some(n) if n < 0 => {
            return Err(ApiError::bad(
                format!("Invalid '{max_name}': integer below minimum value. Expected a value >= 0, but got {n} instead."),
                Some(max_name),
            ))
        }
        Some(n) if n > app.max_completion_tokens as i128 => {
            return Err(ApiError::bad(
                format!(
                    "Invalid '{max_name}': {n} is more than this server generates for one request ({}, --max-completion-tokens).",
                    app.max_completion_tokens
                ),
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
            let prompt = match given(&o, "prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) => match a.as_slice() {
                    [Value::String(s)] => s.clone(),
                    [] => {
                        return Err(ApiError::bad(
                            "'prompt' is an empty array: send the prompt as a string.",
                            Some("prompt"),
                        ))
                    }
                    [Value::Number(_), ..] | [Value::Array(_), ..] => {
                        return Err(ApiError::bad(
                            "Token-id prompts are not supported: send the prompt as a string.",
                            Some("prompt"),
                        ))
                    }
                    [_, _, ..] if a.iter().all(Value::is_string) => {
                        return Err(ApiError::bad(
                            format!(
                                "'prompt' holds {} prompts; this server takes one per request (send the others as requests of their own).",
                                a.len()
                            ),
                            Some("prompt"),
                        ))
                    }
                    _ => return Err(type_error("prompt", "a string (or an array of one string)")),
                },
                None => return Err(ApiError::bad("You must provide a prompt.", Some("prompt"))),
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
            given(&o, "messages")
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
        logprobs,
        n,
        echo: kind == Kind::Completion && opt_bool(&o, "echo")?,
    })
}
