//! Scoring a model on a text: the loss of its predictions, token by token, as bits per byte
//! and perplexity (`rwkv-cli eval`, and `bench --text`).
//!
//! The tokens are fed through the sequence path in chunks with the state carried across
//! chunks. Every token after the first is scored: its negative log-probability given all the
//! tokens before it. Bits per byte divides the total bits by the bytes of the scored tokens,
//! so models with different tokenizers can be compared; perplexity is per token.

use crate::models::{Model, State};
use crate::tokenizer::Tokenizer;
use anyhow::Result;

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

/// Feeds `tokens` in chunks (state carried across) and scores every token after the first.
pub fn score_tokens(
    model: &dyn Model,
    tok: &dyn Tokenizer,
    tokens: &[u32],
    chunk: usize,
    mut progress: impl FnMut(usize),
) -> Result<Score> {
    score_tokens_until(model, tok, tokens, chunk, model.new_state(), |n| {
        progress(n);
        true
    })
}

/// [`score_tokens`] from a given start state (a state-tuned initial state, say), stopping after
/// the chunk for which `progress` (told how many tokens are done) returns false: the score of
/// the tokens so far (a Ctrl-C).
pub fn score_tokens_until(
    model: &dyn Model,
    tok: &dyn Tokenizer,
    tokens: &[u32],
    chunk: usize,
    mut state: State,
    mut progress: impl FnMut(usize) -> bool,
) -> Result<Score> {
    let vocab = model.config().vocab_size;
    let mut score = Score::default();
    for (c, piece) in tokens.chunks(chunk.max(1)).enumerate() {
        let start = c * chunk.max(1);
        let logits = model.forward_seq(piece, &mut state, true)?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            if let Some(&next) = tokens.get(start + i + 1) {
                crate::models::check_logits(row)?;
                score.add(row, next, tok);
            }
        }
        if !progress(start + piece.len()) {
            break;
        }
    }
    Ok(score)
}
