//! Replies: the engine's events for one request turned into the whole JSON response, or into
//! server-sent events ending in `data: [DONE]` (what a reply shows, decoded as UTF-8 as it comes).

use super::api::{fail, log_line, ApiError, Kind};
use super::{now_secs, App};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rwkv_cli::chat::{self, ReplyView, Think};
use rwkv_cli::serve::{Event, Finish, Outcome, TokenLogprobs};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

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

/// A log-probability as JSON: OpenAI's -9999 for a token without probability (JSON has no
/// -inf), `null` for the echoed prompt's first token, which nothing predicts (NaN).
fn logprob_json(lp: f64) -> Value {
    if lp.is_nan() {
        return Value::Null;
    }
    json!(if lp.is_finite() { lp } else { -9999.0 })
}

/// The text of an echoed prompt's tokens.
fn prompt_bytes(scored: &[TokenLogprobs]) -> Vec<u8> {
    scored
        .iter()
        .flat_map(|t| t.bytes.iter().copied())
        .collect()
}

/// The generated tokens' log-probabilities as a reply carries them: completions in OpenAI's
/// legacy form (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}, `text_offset`:
/// where each token's text starts, in characters of the text of all tokens), chat as
/// `content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`. Streaming
/// replies take the tokens gathered since their last chunk.
struct Logprobs {
    kind: Kind,
    pending: Vec<TokenLogprobs>,
    /// Characters of all tokens' text so far (completions' `text_offset`).
    chars: usize,
    utf8: Utf8Stream,
}

impl Logprobs {
    fn new(kind: Kind) -> Self {
        Logprobs {
            kind,
            pending: Vec::new(),
            chars: 0,
            utf8: Utf8Stream::default(),
        }
    }

    /// The gathered tokens as a `logprobs` value (`null` when the request asked for none:
    /// `asked` false), and forgets them.
    fn take(&mut self, asked: bool) -> Value {
        if !asked {
            return Value::Null;
        }
        let tokens = std::mem::take(&mut self.pending);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.kind {
            Kind::Completion => {
                let mut offsets = Vec::with_capacity(tokens.len());
                for t in &tokens {
                    offsets.push(self.chars);
                    self.chars += self.utf8.push(&t.bytes).chars().count();
                }
                json!({
                    "tokens": tokens.iter().map(|t| text(&t.bytes)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| logprob_json(t.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|t| {
                        if t.logprob.is_nan() {
                            return Value::Null; // the echoed prompt's first token
                        }
                        Value::Object(t.top.iter().map(|(_, b, lp)| (text(b), logprob_json(*lp))).collect())
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
            Kind::Chat => {
                let entry = |b: &[u8], lp: f64| json!({"token": text(b), "logprob": logprob_json(lp), "bytes": b});
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = entry(&t.bytes, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|(_, b, lp)| entry(b, *lp)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
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

/// What a request's choices used together: the prompt (read once) and every choice's tokens;
/// the finish reason is the first choice's (for the log line).
fn total(outcomes: &[Outcome]) -> Outcome {
    Outcome {
        completion_tokens: outcomes.iter().map(|o| o.completion_tokens).sum(),
        ..outcomes[0].clone()
    }
}

/// One choice of a reply as it comes in.
struct Choice {
    shown: Shown,
    text: String,
    logprobs: Logprobs,
    outcome: Option<Outcome>,
}

impl Choice {
    fn new(kind: Kind) -> Self {
        Choice {
            shown: Shown::new(kind),
            text: String::new(),
            logprobs: Logprobs::new(kind),
            outcome: None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn whole_response(
    app: Arc<App>,
    kind: Kind,
    id: String,
    mut rx: UnboundedReceiver<(usize, Event)>,
    n: usize,
    logprobs_asked: bool,
    t0: Instant,
) -> Response {
    let path = kind.path();
    // Dropped with this future when the client goes away before the answer (every return
    // below logs its own line).
    let mut gone = StreamLog {
        path,
        t0,
        done: false,
        what: "closed by the client before the answer",
    };
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::new(kind)).collect();
    let mut done = 0;
    while done < n {
        let (i, event) = match rx.recv().await {
            Some((i, e)) if i < n => (i, e),
            Some(_) | None => {
                gone.done = true;
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
                );
            }
        };
        let c = &mut choices[i];
        match event {
            Event::Text(b) => {
                let t = c.shown.push(&b);
                c.text.push_str(&t);
            }
            Event::Token(t) => c.logprobs.pending.push(t),
            Event::Prompt(scored) => {
                let t = c.shown.push(&prompt_bytes(&scored));
                c.text.push_str(&t);
                if logprobs_asked {
                    c.logprobs.pending.extend(scored);
                }
            }
            Event::Done(o) => {
                c.outcome = Some(o);
                done += 1;
            }
            Event::Failed(msg) => {
                gone.done = true;
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
                );
            }
        }
    }
    let mut outcomes = Vec::with_capacity(n);
    let mut list = Vec::with_capacity(n);
    for (index, mut c) in choices.into_iter().enumerate() {
        let outcome = c.outcome.take().expect("every choice is done");
        let text = c.text + &c.shown.utf8.finish();
        let logprobs = c.logprobs.take(logprobs_asked);
        list.push(match kind {
            Kind::Completion => json!({
                "text": text, "index": index, "logprobs": logprobs,
                "finish_reason": outcome.finish.name(),
            }),
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": outcome.finish.name(),
            }),
        });
        outcomes.push(outcome);
    }
    let outcome = total(&outcomes);
    let object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion",
    };
    let body = json!({
        "id": id,
        "object": object,
        "created": now_secs(),
        "model": app.model_id,
        "choices": list,
        "usage": usage_json(&outcome),
    });
    gone.done = true;
    log_line(path, 200, Some(&outcome), t0);
    (StatusCode::OK, Json(body)).into_response()
}

/// Logs a request whose answer was never finished because the client went away: a stream
/// ended without its `Done`, or a whole answer whose connection closed while it was made.
struct StreamLog {
    path: &'static str,
    t0: Instant,
    done: bool,
    /// What the line says (after the path).
    what: &'static str,
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if !self.done {
            crate::errln!(
                "POST {} {} {:.0}ms",
                self.path,
                self.what,
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
    rx: UnboundedReceiver<(usize, Event)>,
    choices: Vec<Choice>,
    /// Choices finished so far.
    done: usize,
    include_usage: bool,
    logprobs_asked: bool,
    /// Events still to send before reading the next engine event.
    out: std::collections::VecDeque<SseEvent>,
    finished: bool,
    log: StreamLog,
}

impl StreamState {
    /// A chunk of choice `index`; it carries the log-probabilities of that choice's tokens
    /// gathered since its last chunk (`with_logprobs`; chat's first chunk, the role, has none).
    fn chunk(
        &mut self,
        index: usize,
        delta: Value,
        finish: Option<Finish>,
        with_logprobs: bool,
    ) -> SseEvent {
        let asked = self.logprobs_asked && with_logprobs;
        let logprobs = self.choices[index].logprobs.take(asked);
        let choice = match self.kind {
            Kind::Completion => json!({
                "text": delta, "index": index, "logprobs": logprobs,
                "finish_reason": finish.map(Finish::name),
            }),
            Kind::Chat => json!({
                "index": index, "delta": delta, "logprobs": logprobs,
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

    fn text_chunk(&mut self, index: usize, text: String) -> SseEvent {
        match self.kind {
            Kind::Completion => self.chunk(index, Value::String(text), None, true),
            Kind::Chat => self.chunk(index, json!({"content": text}), None, true),
        }
    }

    /// Choice `index` is done: the rest of its text, its last chunk; after the last choice,
    /// the usage (when asked) and `[DONE]`.
    fn choice_done(&mut self, index: usize, o: Outcome) {
        let rest = self.choices[index].shown.utf8.finish();
        if !rest.is_empty() {
            let c = self.text_chunk(index, rest);
            self.out.push_back(c);
        }
        let empty = match self.kind {
            Kind::Completion => Value::String(String::new()),
            Kind::Chat => json!({}),
        };
        let last = self.chunk(index, empty, Some(o.finish), true);
        self.out.push_back(last);
        self.choices[index].outcome = Some(o);
        self.done += 1;
        if self.done < self.choices.len() {
            return;
        }
        let outcomes: Vec<Outcome> = self
            .choices
            .iter_mut()
            .filter_map(|c| c.outcome.take())
            .collect();
        let o = total(&outcomes);
        if self.include_usage {
            let object = match self.kind {
                Kind::Completion => "text_completion",
                Kind::Chat => "chat.completion.chunk",
            };
            let v = json!({
                "id": self.id, "object": object, "created": self.created,
                "model": self.app.model_id, "choices": [], "usage": usage_json(&o),
            });
            self.out.push_back(SseEvent::default().data(v.to_string()));
        }
        self.out.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
        self.log.done = true;
        log_line(self.kind.path(), 200, Some(&o), self.log.t0);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn stream_response(
    app: Arc<App>,
    kind: Kind,
    id: String,
    rx: UnboundedReceiver<(usize, Event)>,
    n: usize,
    include_usage: bool,
    logprobs_asked: bool,
    t0: Instant,
) -> Response {
    let mut st = StreamState {
        app,
        kind,
        id,
        created: now_secs(),
        rx,
        choices: (0..n).map(|_| Choice::new(kind)).collect(),
        done: 0,
        include_usage,
        logprobs_asked,
        out: Default::default(),
        finished: false,
        log: StreamLog {
            path: kind.path(),
            t0,
            done: false,
            what: "200 stream closed by the client",
        },
    };
    if kind == Kind::Chat {
        for i in 0..n {
            let first = st.chunk(i, json!({"role": "assistant", "content": ""}), None, false);
            st.out.push_back(first);
        }
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
                Some((i, _)) if i >= st.choices.len() => st.finished = true,
                Some((i, Event::Token(t))) => st.choices[i].logprobs.pending.push(t),
                Some((i, Event::Prompt(scored))) => {
                    let t = st.choices[i].shown.push(&prompt_bytes(&scored));
                    if st.logprobs_asked {
                        st.choices[i].logprobs.pending.extend(scored);
                    }
                    let c = st.text_chunk(i, t);
                    st.out.push_back(c);
                }
                Some((i, Event::Text(b))) => {
                    let t = st.choices[i].shown.push(&b);
                    if !t.is_empty() {
                        let c = st.text_chunk(i, t);
                        st.out.push_back(c);
                    }
                }
                Some((i, Event::Done(o))) => st.choice_done(i, o),
                Some((_, Event::Failed(msg))) => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
