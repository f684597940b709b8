//! `rwkv-cli serve`: an OpenAI-compatible HTTP server (tokio + axum) in front of the serving
//! engine ([`rwkv_cli::serve`]: one model worker, continuous batching, prefix-state cache).
//!
//! Endpoints: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (messages in the G1 format of `rwkv-cli chat`). Responses carry
//! `usage` with `prompt_tokens_details.cached_tokens`; `stream: true` answers with server-sent
//! events ending in `data: [DONE]`; `logprobs`, `logit_bias` and `n` as OpenAI's. Errors are
//! OpenAI error objects. One line per request on stderr. SIGINT/SIGTERM: stop accepting, finish
//! the requests in flight (for at most `--shutdown-timeout`), exit 0; a second signal exits at
//! once.
//!
//! This module holds the flags and the wiring (`run`); [`api`] reads requests into engine jobs
//! and writes OpenAI error objects, [`reply`] turns the engine's events into whole responses or
//! server-sent events, [`routes`] has the axum handlers and the API-key check, and [`listen`]
//! the connections (read timeouts) and the shutdown.

mod api;
mod listen;
mod reply;
mod routes;

use super::model_args::{InitStateArgs, ModelArgs};
use anyhow::{Context, Result};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use routes::{
    auth, chat_completions, completions, get_model, health, list_models, method_not_allowed,
    not_found,
};
use rwkv_cli::serve::{Engine, EngineOptions};
use rwkv_cli::tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const AFTER_HELP: &str = "\
The server speaks the OpenAI API: point a client's base URL at http://HOST:PORT/v1.
Defaults when a request leaves them out: completions sample as `generate` does (temperature 1,
top_p 0.85, no penalties, max_tokens 16, seed 42); chat completions as `chat` does (temperature
1, top_p 0.3, presence and frequency penalty 0.5, max_tokens 1000, seed 42). With the same
settings a reply is the text `generate` or `chat` would write. Chat messages are rendered in
the G1 format (System:/User:/Assistant:, `\\n\\n` ends a turn); the last message must be the
user's.
`logprobs` (completions: an integer N; chat: true, with top_logprobs N; N up to 20) gives each
generated token's log-probability under the model's distribution, as `generate --logprobs`
does. `n` (up to --max-batch) samples the prompt n times: it is read once, and choice i samples
as a request with seed + i would. `logit_bias` ({\"token id\": bias}, biases -100 to 100) adds
to the logits as --logit-bias does; -100 bans the token. `top_k` and `min_p` (not OpenAI's; as
vLLM's and llama.cpp's servers take them) act as --top-k and --min-p. Completions' `echo`
begins the answer with the prompt and, with `logprobs`, its tokens' log-probabilities (the
first null), as `eval` scores them. Fields that would change the answer but are not
implemented (chat's echo, best_of other than 1 or n, suffix, tools, tool_choice, functions,
function_call, response_format other than text) get 400; other unknown fields are ignored.

After each request the state at the end of its prompt (and of its reply) is kept, up to
--state-cache bytes (least recently used first out); a request that begins with a kept prefix
reads only the rest (usage.prompt_tokens_details.cached_tokens). --api-key (or
RWKV_CLI_API_KEY) requires `Authorization: Bearer KEY` on every endpoint but /health.

A client gets --read-timeout to send a request's headers (also the most an idle connection
stays open) and at most that long between two parts of its body (then 408); a body may be
64 bytes per token of --max-prompt-tokens, at least 1 MiB (then 413). SIGINT or SIGTERM stops
accepting connections and lets the requests in flight finish, for at most --shutdown-timeout
(then their connections are closed); a second SIGINT or SIGTERM exits at once.

Examples:
  rwkv-cli serve -m rwkv7-g1-0.4b --quant q8_0          http://127.0.0.1:8000/v1
  rwkv-cli serve --port 0 --max-batch 4 --state-cache 1GiB
  RWKV_CLI_API_KEY=secret rwkv-cli serve -m M.pth --host 0.0.0.0 --port 8080

Environment: RWKV_CLI_API_KEY (the API key); RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded
model and the weight cache); RWKV_CLI_WEIGHT_CACHE_MAX; HF_HOME, HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT, HF_HUB_OFFLINE (Hub models); RWKV_NO_AVX512, RWKV_NO_VNNI, RWKV_NO_BF16,
RWKV_NO_AMX, RWKV_NO_SIMD (force slower kernels).

Exit status: 0 success (also after SIGINT or SIGTERM, once the requests in flight are done or
--shutdown-timeout has passed), 1 failure (one line on stderr), 2 usage error, 130 (143) a
second SIGINT (SIGTERM) during the shutdown.";

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
    /// Longest prompt accepted, in tokens; longer ones get 400. Request bodies may be 64 bytes
    /// per token of it (at least 1 MiB); larger ones get 413.
    #[arg(long, default_value_t = 32768)]
    pub max_prompt_tokens: usize,
    /// Most tokens one request may ask to generate (max_tokens); more get 400, so that no
    /// client holds a slot indefinitely. A request without max_tokens gets the endpoint's
    /// default (16, chat 1000) or this, the smaller.
    #[arg(long, default_value_t = 32768)]
    pub max_completion_tokens: usize,
    /// Seconds a client may take to send a request's headers (and an idle connection stays
    /// open), and may pause within its body (then 408); then its connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub read_timeout: u64,
    /// Let web pages from ORIGIN (e.g. http://localhost:3000; `*`: any) call the API from a
    /// browser (CORS headers, preflight requests answered); repeat for several. Default: none.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,
    /// Seconds the requests in flight get to finish after SIGINT or SIGTERM; then the server
    /// exits anyway.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Prompt tokens read per request and step (longer prompts are read over several steps,
    /// between the decode steps of the others).
    #[arg(long, default_value_t = rwkv_cli::models::DEFAULT_CHUNK)]
    pub chunk: usize,
}

struct App {
    engine: Engine,
    tok: Arc<dyn Tokenizer>,
    model_id: String,
    api_key: Option<String>,
    max_prompt_tokens: usize,
    max_completion_tokens: usize,
    /// `--max-batch`: the most choices (`n`) one request may ask for.
    max_batch: usize,
    /// The model's vocabulary size (token ids of `logit_bias` are below it).
    vocab: usize,
    /// The largest request body read ([`body_limit`]).
    max_body_bytes: usize,
    /// `--read-timeout`: the longest pause within a request body.
    read_timeout: Duration,
    created: u64,
}

/// The largest request body read: 64 bytes per prompt token (a token's text, escaped as JSON
/// may escape it, with room for the rest of the request), at least 1 MiB.
fn body_limit(max_prompt_tokens: usize) -> usize {
    max_prompt_tokens.saturating_mul(64).max(1 << 20)
}

/// The CORS layer of `--cors-origin` (none without it): the origins given (or any, for `*`),
/// GET and POST, the headers a browser client sends (`Authorization`, `Content-Type`).
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>> {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let mut list = Vec::new();
        for o in origins {
            let ok = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.ends_with('/')
                && !o.contains(char::is_whitespace);
            match HeaderValue::from_str(o) {
                Ok(v) if ok => list.push(v),
                _ => rwkv_cli::usage_bail!(
                    "--cors-origin {o:?}: expected an origin such as http://localhost:3000 (scheme, host, port; no path), or *"
                ),
            }
        }
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    let cors = cors_layer(&args.cors_origin)?;
    if !(1..=86400).contains(&args.read_timeout) {
        rwkv_cli::usage_bail!("--read-timeout must be from 1 to 86400 (seconds)");
    }
    let cache_bytes = match super::parse_size(&args.state_cache).map(|b| b as usize) {
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
    let vocab = loaded.config.vocab_size;
    let model: Arc<dyn rwkv_cli::models::Model> = Arc::from(loaded.model);
    // One start state for every request (so that cached prefixes stay valid).
    let initial_state = args.init.load(model.as_ref())?;
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
        max_completion_tokens: args.max_completion_tokens,
        max_batch: args.max_batch,
        vocab,
        max_body_bytes: body_limit(args.max_prompt_tokens),
        read_timeout: Duration::from_secs(args.read_timeout),
        created: now_secs(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let finished = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        let v1 = Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/models/{id}", get(get_model))
            .route("/v1/completions", post(completions))
            .route("/v1/chat/completions", post(chat_completions))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(app.clone(), auth));
        let mut router = Router::new()
            .route("/health", get(health))
            .method_not_allowed_fallback(method_not_allowed)
            .merge(v1)
            .with_state(app.clone());
        if let Some(cors) = &cors {
            // Outermost: a preflight is answered before the API key is asked for.
            router = router.layer(cors.clone());
        }
        crate::errln!(
            "serving {} (state {} per request, cache {}, batch {}) — listening on http://{addr}",
            app.model_id,
            rwkv_cli::stats::human_bytes(state_bytes as u64),
            rwkv_cli::stats::human_bytes(cache_bytes as u64),
            args.max_batch
        );
        listen::serve(
            listener,
            router,
            Duration::from_secs(args.read_timeout),
            Duration::from_secs(args.shutdown_timeout),
        )
        .await
    })?;
    if finished {
        rt.shutdown_timeout(Duration::from_secs(1));
    } else {
        // Connections still open past --shutdown-timeout are dropped in the background, and
        // the process ends without waiting for the engine to notice.
        rt.shutdown_background();
    }
    Ok(())
}
