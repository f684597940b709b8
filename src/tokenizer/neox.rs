//! The GPT-NeoX 20B tokenizer used by the RWKV-4 Pile models.
//!
//! Encoding runs the HF `tokenizers` crate on the embedded `20B_tokenizer.json` (byte-level BPE,
//! NFC normalisation) over each run of valid UTF-8. Every byte string round-trips exactly:
//! bytes that are not UTF-8 are mapped through the byte-level table to their single-byte
//! tokens, and a run whose tokens would not decode to the same
//! bytes (text that NFC changes) is encoded without the
//! normaliser, or byte by byte as a last resort. The only exception: the 13 bytes that never
//! occur in UTF-8 (0xC0, 0xC1, 0xF5..=0xFF) have no token in this vocabulary and become U+FFFD;
//! and a literal `<|endoftext|>` or `<|padding|>` is that special token, as in the reference.
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
    /// The same without NFC normalisation.
    raw: tokenizers::Tokenizer,
    /// The single-byte token of every byte (`None` for the 13 bytes UTF-8 never uses).
    byte_ids: [Option<u32>; 256],
    /// U+FFFD's tokens, for those 13 bytes.
    replacement: Vec<u32>,
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

impl NeoxTokenizer {
    /// Encodes valid UTF-8 so that its tokens decode to exactly its bytes.
    fn encode_str(&self, s: &str, ids: &mut Vec<u32>) -> anyhow::Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        for t in [&self.inner.tokenizer, &self.inner.raw] {
            let e = t
                .encode_fast(s, false)
                .map_err(|e| anyhow::anyhow!("20B tokenizer: {e}"))?;
            if self.spelled(e.get_ids()) == s.as_bytes() {
                ids.extend_from_slice(e.get_ids());
                return Ok(());
            }
        }
        for b in s.bytes() {
            self.push_byte(b, ids);
        }
        Ok(())
    }

    /// The text `ids` were encoded from: their bytes, special tokens spelled out (a literal
    /// `<|endoftext|>` in a prompt is that token, as in the reference tokenizer).
    fn spelled(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            match self.token_slice(id) {
                [] => {
                    if let Some(t) = self.inner.tokenizer.id_to_token(id) {
                        out.extend_from_slice(t.as_bytes());
                    }
                }
                b => out.extend_from_slice(b),
            }
        }
        out
    }

    /// One byte's token; U+FFFD's for a byte UTF-8 never uses (the vocabulary lacks those).
    fn push_byte(&self, b: u8, ids: &mut Vec<u32>) {
        match self.inner.byte_ids[b as usize] {
            Some(id) => ids.push(id),
            None => ids.extend_from_slice(&self.inner.replacement),
        }
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
        // The 13 bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..=0xFF) have no token in
        // this vocabulary: they become U+FFFD's tokens (`None` here).
        let mut byte_ids = [None; 256];
        for (c, &b) in unicode_to_byte.iter().enumerate() {
            if let (Ok(b), Some(ch)) = (u8::try_from(b), char::from_u32(c as u32)) {
                byte_ids[b as usize] = tokenizer.token_to_id(&ch.to_string());
            }
        }
        let replacement = tokenizer
            .encode_fast("\u{fffd}", false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("encoding U+FFFD")?
            .get_ids()
            .to_vec();
        let mut raw = tokenizer.clone();
        let _ = raw.with_normalizer(None::<tokenizers::NormalizerWrapper>);
        Ok(Inner {
            tokenizer,
            raw,
            byte_ids,
            replacement,
            bytes,
        })
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
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.encode_str(s, &mut ids)?;
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let bad = e.error_len().unwrap_or(rest.len() - valid);
                    let s = std::str::from_utf8(&rest[..valid]).expect("checked");
                    self.encode_str(s, &mut ids)?;
                    for &b in &rest[valid..valid + bad] {
                        self.push_byte(b, &mut ids);
                    }
                    rest = &rest[valid + bad..];
                }
            }
        }
        Ok(ids)
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
    fn every_byte_string_round_trips_exactly() {
        let t = NeoxTokenizer::new().unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"Hello, world!".to_vec(),
            vec![0xe2, b'a', 0xc3, b' ', 0x80, 0x80, b'z', 0xf0, 0x9f],
            "e\u{301} caf\u{e9} \u{4e2d}\u{6587}".as_bytes().to_vec(),
            (0..=0xbfu8).chain(0xc2..=0xf4).collect(),
        ];
        for c in cases {
            let ids = t.encode(&c).unwrap();
            assert_eq!(t.decode(&ids), c, "{c:?} -> {ids:?}");
            let total: usize = ids.iter().map(|&i| t.token_bytes(i).len()).sum();
            assert_eq!(total, c.len());
        }
        // The bytes UTF-8 never uses have no token: U+FFFD stands for each.
        let ids = t.encode(&[b'a', 0xff, b'b']).unwrap();
        assert_eq!(t.decode(&ids), "a\u{fffd}b".as_bytes());
        // A literal special token is the token (it decodes to nothing).
        assert_eq!(t.encode(b"a<|endoftext|>").unwrap().last(), Some(&0));
        // Valid text still gets the usual merges.
        assert_eq!(t.encode(b"Hello world").unwrap().len(), 2);
    }

    #[test]
    fn byte_level_tokens() {
        let map = unicode_to_byte_map();
        assert_eq!(byte_level_to_bytes("Ġworld", &map), b" world");
        assert_eq!(byte_level_to_bytes("ä¸Ń", &map), "中".as_bytes());
        assert_eq!(byte_level_to_bytes("  ", &map), b"  ");
    }
}
