//! Tokenizers for RWKV models.
//!
//! Three tokenizers sit behind the [`Tokenizer`] trait:
//! - [`world::WorldTokenizer`]: the RWKV World vocabulary (65529 tokens, greedy longest match
//!   over bytes), used by RWKV-4 World, v5, v6 and v7 models. The vocabulary is embedded.
//! - [`neox::NeoxTokenizer`]: the GPT-NeoX 20B byte-level BPE used by the RWKV-4 Pile models,
//!   run through the `tokenizers` crate on the embedded `20B_tokenizer.json`.
//! - [`bytes::BytesTokenizer`]: one token per byte (vocabulary 256).
//!
//! All tokenizers work on raw bytes. Decoding returns bytes, which are not valid UTF-8 when a
//! token sequence stops in the middle of a character; streaming callers should write
//! [`Tokenizer::token_bytes`] straight to the output rather than decoding single tokens to `str`.

use std::fmt;
use std::str::FromStr;

pub mod bytes;
pub mod neox;
pub mod world;

pub use bytes::BytesTokenizer;
pub use neox::NeoxTokenizer;
pub use world::WorldTokenizer;

/// A tokenizer: text bytes to token ids and back.
pub trait Tokenizer: Send + Sync {
    /// Encodes arbitrary bytes (invalid UTF-8 included) to token ids.
    fn encode(&self, text: &[u8]) -> anyhow::Result<Vec<u32>>;

    /// Decodes ids to raw bytes: the concatenation of [`Tokenizer::token_bytes`] of each id.
    /// The result may be invalid UTF-8 when the ids stop mid-character. Never panics: ids
    /// outside the vocabulary and end-of-text/special tokens produce no bytes.
    fn decode(&self, ids: &[u32]) -> Vec<u8>;

    /// The raw bytes of one token (empty for special tokens and unknown ids). For streaming,
    /// write these bytes as they come; never decode a single token to `str`.
    fn token_bytes(&self, id: u32) -> Vec<u8>;

    /// Number of token ids (largest id + 1). Model vocabularies may be padded beyond this.
    fn vocab_size(&self) -> usize;

    /// Short name, the same as the [`TokenizerKind`] display name.
    fn name(&self) -> &'static str;

    /// The end-of-text token id, if the vocabulary has one.
    fn eot_token(&self) -> Option<u32>;
}

/// Which tokenizer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// RWKV World vocabulary (`rwkv_vocab_v20230424`).
    World,
    /// GPT-NeoX 20B tokenizer (RWKV-4 Pile models).
    Neox20B,
    /// One token per byte.
    Bytes,
}

impl TokenizerKind {
    /// The canonical name, as accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn as_str(self) -> &'static str {
        match self {
            TokenizerKind::World => "world",
            TokenizerKind::Neox20B => "20b",
            TokenizerKind::Bytes => "bytes",
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenizerKind {
    type Err = anyhow::Error;

    /// Accepts `world`, `20b` (alias `neox`) and `bytes`, ignoring ASCII case.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "world" => Ok(TokenizerKind::World),
            "20b" | "neox" => Ok(TokenizerKind::Neox20B),
            "bytes" => Ok(TokenizerKind::Bytes),
            _ => anyhow::bail!("unknown tokenizer '{s}' (valid: world, 20b (alias neox), bytes)"),
        }
    }
}

/// Guesses the tokenizer from a model's vocabulary size (its embedding rows).
///
/// 65529..=65536 → World, 50254..=50304 (50277 and padded variants) → 20B, 256 → bytes.
pub fn kind_for_vocab(vocab_size: usize) -> anyhow::Result<TokenizerKind> {
    match vocab_size {
        65529..=65536 => Ok(TokenizerKind::World),
        50254..=50304 => Ok(TokenizerKind::Neox20B),
        256 => Ok(TokenizerKind::Bytes),
        _ => anyhow::bail!(
            "cannot infer the tokenizer from vocabulary size {vocab_size}; pass --tokenizer world|20b|bytes"
        ),
    }
}

/// The tokenizer for a model of `model_vocab` entries: `requested` (`--tokenizer`) or the one
/// its vocabulary size implies. A tokenizer whose ids go past the model's vocabulary (the World
/// tokenizer on a byte-level model, say) is refused before any text is tokenized.
pub fn for_model(
    requested: Option<TokenizerKind>,
    model_vocab: usize,
) -> anyhow::Result<Box<dyn Tokenizer>> {
    let kind = match requested {
        Some(k) => k,
        None => kind_for_vocab(model_vocab)?,
    };
    let tok = load(kind)?;
    // Smaller than the model's vocabulary beyond its padding (models pad theirs to a multiple
    // of 64): the model's other tokens could never be written out.
    if tok.vocab_size() < model_vocab.saturating_sub(63) {
        let hint = match kind_for_vocab(model_vocab) {
            Ok(k) => format!(
                "its vocabulary is the {k} tokenizer's: drop --tokenizer or pass --tokenizer {k}"
            ),
            Err(_) => "pass the tokenizer the model was trained with".to_string(),
        };
        anyhow::bail!(
            "the {} tokenizer has {} tokens but the model {}: tokens past {} could not be written out; {hint}",
            tok.name(),
            tok.vocab_size(),
            model_vocab,
            tok.vocab_size() - 1
        );
    }
    if tok.vocab_size() > model_vocab {
        anyhow::bail!(
            "the {} tokenizer has {} tokens but the model only {}",
            tok.name(),
            tok.vocab_size(),
            model_vocab
        );
    }
    Ok(tok)
}

/// Loads a tokenizer. The World and 20B tables are built once per process and shared.
pub fn load(kind: TokenizerKind) -> anyhow::Result<Box<dyn Tokenizer>> {
    Ok(match kind {
        TokenizerKind::World => Box::new(WorldTokenizer::new()?),
        TokenizerKind::Neox20B => Box::new(NeoxTokenizer::new()?),
        TokenizerKind::Bytes => Box::new(BytesTokenizer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokenizer_must_cover_the_models_vocabulary_up_to_its_padding() {
        let e = for_model(Some(TokenizerKind::Bytes), 65536)
            .err()
            .expect("bytes on a 65536-token model")
            .to_string();
        assert!(
            e.contains("bytes tokenizer has 256 tokens but the model 65536"),
            "{e}"
        );
        assert!(e.contains("--tokenizer world"), "{e}");
        assert!(for_model(Some(TokenizerKind::Neox20B), 65536).is_err());
        // Padded vocabularies are fine.
        assert!(for_model(Some(TokenizerKind::World), 65536).is_ok());
        assert!(for_model(None, 50304).is_ok());
        assert!(for_model(Some(TokenizerKind::Bytes), 256).is_ok());
        assert!(for_model(Some(TokenizerKind::Bytes), 300).is_ok());
    }
}
