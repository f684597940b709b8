//! The GPT-NeoX 20B tokenizer used by the RWKV-4 Pile models.
//!
//! Encoding runs the HF `tokenizers` crate on the embedded `20B_tokenizer.json` (byte-level BPE,
//! NFC normalisation). Input bytes that are not valid UTF-8 are encoded through their lossy
//! UTF-8 conversion (each bad sequence becomes U+FFFD).
//!
//! Decoding does not go through the crate: every id is mapped once to its raw bytes by undoing
//! the GPT-2 byte-to-unicode mapping of byte-level BPE, so a character split over several
//! tokens streams correctly. Special tokens (`<|endoftext|>` = 0, `<|padding|>` = 1) decode to
//! nothing, as with `skip_special_tokens`; ids outside the vocabulary decode to nothing.

use std::sync::{Arc, OnceLock};

use anyhow::Context;

use super::Tokenizer;

/// The embedded HF tokenizer file (from BlinkDL/ChatRWKV).
const TOKENIZER_JSON: &[u8] = include_bytes!("../../models/20B_tokenizer.json");

/// Built on first use and shared.
static EMBEDDED: OnceLock<Result<Arc<Inner>, String>> = OnceLock::new();

struct Inner {
    tokenizer: tokenizers::Tokenizer,
    /// Raw bytes of every id; empty for special tokens.
    bytes: Vec<Vec<u8>>,
}

/// The GPT-NeoX 20B tokenizer. Cloning is cheap (the tables are shared).
#[derive(Clone)]
pub struct NeoxTokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NeoxTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeoxTokenizer")
            .field("vocab_size", &self.inner.bytes.len())
            .finish()
    }
}

impl NeoxTokenizer {
    /// The tokenizer for the embedded `20B_tokenizer.json`, built on the first call.
    pub fn new() -> anyhow::Result<Self> {
        let inner = EMBEDDED
            .get_or_init(|| {
                Inner::from_json(TOKENIZER_JSON)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!("embedded 20B tokenizer: {e}"))?;
        Ok(NeoxTokenizer { inner })
    }

    /// The bytes of one token without copying; empty for special tokens and unknown ids.
    pub fn token_slice(&self, id: u32) -> &[u8] {
        self.inner
            .bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

impl Inner {
    fn from_json(json: &[u8]) -> anyhow::Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("parsing 20B_tokenizer.json")?;
        let unicode_to_byte = unicode_to_byte_map();
        let added = tokenizer.get_added_tokens_decoder();
        let n = tokenizer.get_vocab_size(true);
        let mut bytes = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let raw = match added.get(&id) {
                Some(t) if t.special => Vec::new(),
                // Added tokens (runs of spaces) hold plain text.
                Some(t) => t.content.as_bytes().to_vec(),
                None => {
                    let s = tokenizer
                        .id_to_token(id)
                        .with_context(|| format!("20B tokenizer has no token for id {id}"))?;
                    byte_level_to_bytes(&s, &unicode_to_byte)
                }
            };
            bytes.push(raw);
        }
        Ok(Inner { tokenizer, bytes })
    }
}

/// The inverse of GPT-2's byte-to-unicode map: `map[c]` for `c < 512` is the byte that char
/// `c` stands for, or -1. Printable bytes (`!`..=`~`, 0xA1..=0xAC, 0xAE..=0xFF) stand for
/// themselves; the other 68 bytes, in increasing order, are shifted to U+0100, U+0101, ...
fn unicode_to_byte_map() -> [i16; 512] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut map = [-1i16; 512];
    let mut next = 256usize;
    for b in 0..=255u8 {
        if printable(b) {
            map[b as usize] = i16::from(b);
        } else {
            map[next] = i16::from(b);
            next += 1;
        }
    }
    map
}

/// Raw bytes of a byte-level token string. Like the crate's `ByteLevel` decoder, a token
/// with a char outside the map is taken as plain text.
fn byte_level_to_bytes(token: &str, map: &[i16; 512]) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token
        .chars()
        .map(|c| map.get(c as usize).and_then(|&b| u8::try_from(b).ok()))
        .collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

impl Tokenizer for NeoxTokenizer {
    fn encode(&self, text: &[u8]) -> anyhow::Result<Vec<u32>> {
        let text = String::from_utf8_lossy(text);
        let encoding = self
            .inner
            .tokenizer
            .encode_fast(text.as_ref(), false)
            .map_err(|e| anyhow::anyhow!("20B tokenizer: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.token_slice(id));
        }
        out
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_slice(id).to_vec()
    }

    /// 50277 (50254 BPE tokens and 23 added ones).
    fn vocab_size(&self) -> usize {
        self.inner.bytes.len()
    }

    fn name(&self) -> &'static str {
        "20b"
    }

    fn eot_token(&self) -> Option<u32> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let map = unicode_to_byte_map();
        let mut seen = [false; 256];
        for &b in map.iter().filter(|&&b| b >= 0) {
            assert!(!seen[b as usize]);
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(map['Ġ' as usize], 0x20);
        assert_eq!(map['Ċ' as usize], 0x0a);
        assert_eq!(map['A' as usize], 0x41);
        assert_eq!(map[' ' as usize], -1);
    }

    #[test]
    fn byte_level_tokens() {
        let map = unicode_to_byte_map();
        assert_eq!(byte_level_to_bytes("Ġworld", &map), b" world");
        assert_eq!(byte_level_to_bytes("ä¸Ń", &map), "中".as_bytes());
        assert_eq!(byte_level_to_bytes("  ", &map), b"  ");
    }
}
