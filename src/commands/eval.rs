//! `rwkv-cli eval --text FILE`: bits per byte and perplexity of a model over a text (`--text -`
//! reads it from stdin).
//!
//! The text is tokenized, then fed through the sequence path in chunks with the state carried
//! across chunks. Every token after the first is scored: its negative log-probability given
//! all the tokens before it. Bits per byte divides the total bits by the bytes of the scored
//! tokens, so models with different tokenizers can be compared; perplexity is per token.

use crate::format::Format;
use crate::models::{self, LoadOptions, Model};
use crate::tokenizer::{self, Tokenizer, TokenizerKind};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Read;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint: a file (.pth or .safetensors), a catalogue alias (see `rwkv-cli models`) or
    /// owner/repo:file.pth[@revision] on the Hugging Face Hub. Default: the embedded model.
    #[arg(long, short)]
    pub model: Option<String>,
    /// The text to score: a file, or `-` to read it from stdin.
    #[arg(long)]
    pub text: std::ffi::OsString,
    /// Score at most this many tokens (from the start of the text).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens per chunk of the sequence path.
    #[arg(long, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Compute dtype of the weight matrices: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Format,
    /// Quantize the weight matrices at load time: q8_0 or q4_0 (instead of --dtype).
    #[arg(long, conflicts_with = "dtype")]
    pub quant: Option<Format>,
    /// Tokenizer (default: chosen from the vocabulary size): world, 20b, bytes.
    #[arg(long)]
    pub tokenizer: Option<TokenizerKind>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Accumulates the loss of a model's predictions.
#[derive(Clone, Debug, Default)]
pub struct Score {
    /// Σ −ln p over scored tokens.
    pub nats: f64,
    pub tokens: usize,
    pub bytes: usize,
}

impl Score {
    /// Scores `next` under `logits` (one row of next-token logits).
    pub fn add(&mut self, logits: &[f32], next: u32, tok: &dyn Tokenizer) {
        self.nats -= crate::sampler::log_softmax_at(logits, next);
        self.tokens += 1;
        self.bytes += tok.token_bytes(next).len();
    }
    pub fn bits_per_byte(&self) -> f64 {
        self.nats / std::f64::consts::LN_2 / self.bytes.max(1) as f64
    }
    pub fn perplexity(&self) -> f64 {
        (self.nats / self.tokens.max(1) as f64).exp()
    }
}

/// Reads `--text`: a file, or stdin for `-`.
fn read_text(arg: &std::ffi::OsStr) -> Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read --text - (stdin)")?;
        return Ok(buf);
    }
    std::fs::read(arg).with_context(|| format!("cannot read --text {}", arg.to_string_lossy()))
}

/// Feeds `tokens` in chunks (state carried across) and scores every token after the first.
pub fn score_tokens(
    model: &dyn Model,
    tok: &dyn Tokenizer,
    tokens: &[u32],
    chunk: usize,
    mut progress: impl FnMut(usize),
) -> Result<Score> {
    let vocab = model.config().vocab_size;
    let mut state = model.new_state();
    let mut score = Score::default();
    for (c, piece) in tokens.chunks(chunk.max(1)).enumerate() {
        let start = c * chunk.max(1);
        let logits = model.forward_seq(piece, &mut state, true)?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&next) = tokens.get(start + i + 1) {
                score.add(row, next, tok);
            }
        }
        progress(start + piece.len());
    }
    Ok(score)
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.chunk == 0 {
        crate::usage_bail!("--chunk must be at least 1");
    }
    let dtype = super::effective_dtype(args.dtype, args.quant)
        .map_err(|e| crate::commands::UsageError(format!("{e:#}")))?;
    let text = read_text(&args.text)?;
    let path = super::resolve_model(args.model.as_deref())?;
    let model = models::load(&path, LoadOptions { dtype })?;
    let cfg = model.config().clone();
    let tok = tokenizer::for_model(args.tokenizer, cfg.vocab_size)?;
    let mut tokens = tok.encode(&text)?;
    if let Some(m) = args.max_tokens {
        tokens.truncate(m);
    }
    if tokens.len() < 2 {
        crate::usage_bail!("--text must hold at least two tokens to score");
    }
    let bar = super::token_progress_bar(tokens.len());
    let t = std::time::Instant::now();
    let score = score_tokens(model.as_ref(), tok.as_ref(), &tokens, args.chunk, |n| {
        bar.set_position(n as u64)
    })?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        crate::outln!(
            "{}",
            serde_json::json!({
                "model": super::model_json(&path, &cfg, dtype),
                "tokenizer": tok.name(),
                "tokens": tokens.len(),
                "scored_tokens": score.tokens,
                "scored_bytes": score.bytes,
                "bits_per_byte": score.bits_per_byte(),
                "perplexity": score.perplexity(),
                "seconds": secs,
            })
        )?;
    } else {
        crate::outln!(
            "{} tokens ({} bytes scored): {:.4} bits per byte, perplexity {:.3} per token ({} tokenizer, {}, {:.1} s)",
            tokens.len(),
            score.bytes,
            score.bits_per_byte(),
            score.perplexity(),
            tok.name(),
            dtype.name(),
            secs
        )?;
    }
    Ok(())
}
