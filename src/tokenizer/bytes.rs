//! The byte tokenizer: 256 tokens, token id = byte value.

use super::Tokenizer;

/// One token per byte. Has no end-of-text token; ids above 255 decode to nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesTokenizer;

impl Tokenizer for BytesTokenizer {
    fn encode(&self, text: &[u8]) -> anyhow::Result<Vec<u32>> {
        Ok(text.iter().map(|&b| u32::from(b)).collect())
    }

    fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        u8::try_from(id).map(|b| vec![b]).unwrap_or_default()
    }

    fn vocab_size(&self) -> usize {
        256
    }

    fn name(&self) -> &'static str {
        "bytes"
    }

    fn eot_token(&self) -> Option<u32> {
        None
    }
}
