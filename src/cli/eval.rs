//! `rwkv-cli eval --text FILE`: bits per byte and perplexity of a model over a text (`--text -`
//! reads it from stdin).
//!
//! The text is tokenized, then scored by [`rwkv_cli::eval::score_tokens`]: every token after
//! the first, given all the tokens before it, through the sequence path in chunks.

use super::model_args::{InitStateArgs, Loaded, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use rwkv_cli::eval::score_tokens_from;
use rwkv_cli::models;
use std::io::Read;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub init: InitStateArgs,
    /// The text to score: a file, or `-` to read it from stdin.
    #[arg(long)]
    pub text: std::ffi::OsString,
    /// Score at most this many tokens (from the start of the text).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens per chunk of the sequence path.
    #[arg(long, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
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

pub fn run(args: EvalArgs) -> Result<()> {
    if args.chunk == 0 {
        rwkv_cli::usage_bail!("--chunk must be at least 1");
    }
    // The flags' own errors before the text is read.
    args.model.format()?;
    let text = read_text(&args.text)?;
    let (loaded, tok) = args.model.load()?;
    // The model holds its weights: the checkpoint is closed before the run.
    let Loaded {
        path,
        model,
        config: cfg,
        format: dtype,
        ..
    } = loaded;
    let mut tokens = tok.encode(&text)?;
    if let Some(m) = args.max_tokens {
        tokens.truncate(m);
    }
    if tokens.len() < 2 {
        rwkv_cli::usage_bail!("--text must hold at least two tokens to score");
    }
    let bar = super::token_progress_bar(tokens.len());
    let t = std::time::Instant::now();
    let start = args.init.start(model.as_ref())?;
    let score = score_tokens_from(
        model.as_ref(),
        tok.as_ref(),
        &tokens,
        args.chunk,
        start,
        |n| bar.set_position(n as u64),
    )?;
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        crate::outln!(
            "{}",
            serde_json::json!({
                "model": super::model_args::model_json(&path, &cfg, dtype),
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
