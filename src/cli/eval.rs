//! `rwkv-cli eval --text FILE`: bits per byte and perplexity of a model over a text (`--text -`
//! reads it from stdin).
//!
//! The text is tokenized, then scored by [`rwkv_cli::eval::score_tokens_until`]: every token after
//! the first, given all the tokens before it, through the sequence path in chunks.

use super::model_args::{InitStateArgs, Loaded, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use rwkv_cli::eval::score_tokens_until;
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
    #[arg(long, allow_negative_numbers = true, value_parser = super::count)]
    pub max_tokens: Option<usize>,
    /// Tokens per chunk of the sequence path.
    #[arg(long, allow_negative_numbers = true, value_parser = super::count, default_value_t = models::DEFAULT_CHUNK)]
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
    let model_json = loaded.json();
    // The model holds its weights: the checkpoint is closed before the run.
    let Loaded {
        model,
        format: dtype,
        ..
    } = loaded;
    let mut tokens = tok.encode(&text)?;
    let all_tokens = tokens.len();
    if let Some(m) = args.max_tokens {
        tokens.truncate(m);
    }
    if tokens.len() < 2 {
        rwkv_cli::usage_bail!("--text must hold at least two tokens to score");
    }
    let bar = super::token_progress_bar(tokens.len());
    let t = std::time::Instant::now();
    // Ctrl-C: the score of the chunks done so far, then exit 130.
    super::catch_interrupt();
    let start = args.init.start(model.as_ref())?;
    let mut score = score_tokens_until(
        model.as_ref(),
        tok.as_ref(),
        &tokens,
        args.chunk,
        start,
        |n| {
            bar.set_position(n as u64);
            !super::interrupted()
        },
    )?;
    let interrupted = super::interrupted();
    // The tokens' bytes are the text's own (every tokenizer round-trips bytes) except for the
    // 13 bytes UTF-8 never uses, which the 20B vocabulary spells as U+FFFD: count the file's.
    if !interrupted && tokens.len() == all_tokens {
        let decoded = tok.decode(&tokens).len();
        score.bytes = (score.bytes + text.len()).saturating_sub(decoded);
    }
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        crate::outln!(
            "{}",
            serde_json::json!({
                "model": model_json,
                "tokenizer": tok.name(),
                "tokens": tokens.len(),
                "scored_tokens": score.tokens,
                "scored_bytes": score.bytes,
                "text_bytes": text.len(),
                "interrupted": interrupted,
                "bits_per_byte": score.bits_per_byte(),
                "perplexity": score.perplexity(),
                "seconds": secs,
            })
        )?;
    } else {
        let done = if interrupted {
            format!(
                "interrupted after {} of {} tokens: ",
                score.tokens + 1,
                tokens.len()
            )
        } else {
            String::new()
        };
        crate::outln!(
            "{done}{} tokens ({} bytes scored of {}): {:.4} bits per byte, perplexity {:.3} per token ({} tokenizer, {}, {:.1} s)",
            tokens.len(),
            score.bytes,
            text.len(),
            score.bits_per_byte(),
            score.perplexity(),
            tok.name(),
            dtype.name(),
            secs
        )?;
    }
    if interrupted {
        // Like a shell: 128 + SIGINT.
        std::process::exit(130);
    }
    Ok(())
}
