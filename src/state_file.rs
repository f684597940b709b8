//! Saving and resuming the recurrent state.
//!
//! A long document processed once can be saved and resumed in milliseconds: the state has the
//! same size whatever the document's length. File layout (all little-endian):
//!
//! ```text
//! magic "RWKVSTATE\0" (10 bytes) | format version u32 | header length u32 | header (JSON)
//! | payload: per layer att_shift, wkv, ffn_shift as f32 | next-token logits as f32
//! | FNV-1a 64 checksum of everything before it (u64)
//! ```
//!
//! The header names the model (version, shapes and a fingerprint of its weights), the dtype and
//! how many tokens the state has seen. Loading checks all of it, so a state is never applied to
//! another model, and a truncated or damaged file is refused. A regular file is written to a
//! temporary file in its directory (that of the file a symbolic link points to, the link
//! staying a link) and renamed over it, so an interrupted write never destroys the previous
//! state; an existing FIFO or device is written in place (see
//! [`output_file::write`](crate::output_file::write)).

use crate::fnv::{fnv1a, FNV_OFFSET};
use crate::models::{Config, LayerState, State};
use anyhow::{bail, Context, Result};
use std::path::Path;

const MAGIC: &[u8; 10] = b"RWKVSTATE\0";
const FORMAT_VERSION: u32 = 1;
/// Refuse headers larger than this (a damaged length field must not allocate gigabytes).
const MAX_HEADER: usize = 1 << 20;
/// Refuse token counts beyond this: counting on from it can never wrap a u64.
const MAX_TOKENS: u64 = 1 << 53;

/// What a state file says about where its state came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedState {
    pub state: State,
    /// Next-token logits after the last token the state has seen.
    pub logits: Vec<f32>,
    /// Tokens the state has seen.
    pub tokens: u64,
}

fn header_json(cfg: &Config, fingerprint: u64, tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "model_version": cfg.version.name(),
        "layers": cfg.n_layer,
        "width": cfg.n_embd,
        "att_width": cfg.n_att,
        "heads": cfg.n_head,
        "head_size": cfg.head_size,
        "vocab": cfg.vocab_size,
        "fingerprint": format!("{fingerprint:016x}"),
        "dtype": "f32",
        "tokens": tokens,
    })
}

/// Serialises a state for `cfg`, whose weights have `fingerprint`.
pub fn encode(cfg: &Config, fingerprint: u64, saved: &SavedState) -> Vec<u8> {
    let header = header_json(cfg, fingerprint, saved.tokens).to_string();
    let mut out =
        Vec::with_capacity(cfg.state_bytes() + saved.logits.len() * 4 + header.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for l in &saved.state.layers {
        for v in l.att_shift.iter().chain(&l.wkv).chain(&l.ffn_shift) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for v in &saved.logits {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let sum = fnv1a(&out, FNV_OFFSET);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Parses and checks a state file's bytes against the model it is meant for.
pub fn decode(bytes: &[u8], cfg: &Config, fingerprint: u64) -> Result<SavedState> {
    if bytes.is_empty() {
        bail!("state file is empty");
    }
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        bail!("not an rwkv-cli state file (bad magic)");
    }
    if bytes.len() < MAGIC.len() + 16 {
        bail!(
            "state file is truncated ({} bytes, shorter than its header)",
            bytes.len()
        );
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
    if fnv1a(body, FNV_OFFSET) != sum {
        bail!("state file is damaged or truncated (checksum mismatch)");
    }
    let mut pos = MAGIC.len();
    let read_u32 = |pos: &mut usize| -> Result<u32> {
        let b = body
            .get(*pos..*pos + 4)
            .context("state file is truncated")?;
        *pos += 4;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let version = read_u32(&mut pos)?;
    if version != FORMAT_VERSION {
        bail!("state file format {version} is not supported (expected {FORMAT_VERSION})");
    }
    let hlen = read_u32(&mut pos)? as usize;
    if hlen > MAX_HEADER {
        bail!("state file header is implausibly large ({hlen} bytes)");
    }
    let header = body
        .get(pos..pos + hlen)
        .context("state file is truncated")?;
    pos += hlen;
    let header: serde_json::Value =
        serde_json::from_slice(header).context("state file header is not valid JSON")?;
    let tokens = header["tokens"]
        .as_u64()
        .context("state file header has no token count")?;
    if tokens > MAX_TOKENS {
        bail!("state file header says the state has seen {tokens} tokens, which is implausible (more than 2^53): damaged or forged");
    }
    let expected = header_json(cfg, fingerprint, tokens);
    for key in [
        "model_version",
        "layers",
        "width",
        "att_width",
        "heads",
        "head_size",
        "vocab",
    ] {
        if header[key] != expected[key] {
            bail!(
                "state file is for another model: {key} is {} in the file but {} in this model",
                header[key],
                expected[key]
            );
        }
    }
    if header["fingerprint"] != expected["fingerprint"] {
        bail!("state file is for another model: its weights' fingerprint differs (same shape, different weights)");
    }
    if header["dtype"] != "f32" {
        bail!("state file dtype {} is not supported", header["dtype"]);
    }
    let mut floats = body[pos..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
    if !(body.len() - pos).is_multiple_of(4) {
        bail!("state file payload is not a whole number of f32 values");
    }
    let mut state = State::new(cfg);
    for l in state.layers.iter_mut() {
        let LayerState {
            att_shift,
            wkv,
            ffn_shift,
        } = l;
        for v in att_shift
            .iter_mut()
            .chain(wkv.iter_mut())
            .chain(ffn_shift.iter_mut())
        {
            *v = floats.next().context("state file is truncated")?;
        }
    }
    let logits: Vec<f32> = floats.collect();
    let finite = |v: &f32| v.is_finite() || *v == f32::NEG_INFINITY;
    if !state.layers.iter().all(|l| {
        l.att_shift.iter().all(|v| v.is_finite())
            && l.wkv.iter().all(|v| v.is_finite())
            && l.ffn_shift.iter().all(|v| v.is_finite())
    }) || !logits.iter().all(finite)
    {
        bail!("state file holds NaN or infinite values: the run that saved it went wrong, it cannot be resumed");
    }
    if logits.len() != cfg.vocab_size {
        bail!(
            "state file holds {} logits, expected {} for this model",
            logits.len(),
            cfg.vocab_size
        );
    }
    Ok(SavedState {
        state,
        logits,
        tokens,
    })
}

/// Writes a state file: atomically for a regular file, through a symbolic link to its target,
/// in place for a FIFO or a device.
pub fn save(path: &Path, cfg: &Config, fingerprint: u64, saved: &SavedState) -> Result<()> {
    crate::output_file::write(path, &encode(cfg, fingerprint, saved))
}

/// Reads and checks a state file.
pub fn load(path: &Path, cfg: &Config, fingerprint: u64) -> Result<SavedState> {
    use std::io::Read;
    // No state of this model is longer than this: a longer file (or an endless one such as
    // /dev/zero) is refused after reading that much, not read to the end.
    let most = (cfg.state_bytes() + cfg.vocab_size * 4 + MAGIC.len() + 16 + MAX_HEADER) as u64;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(most + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read state file {}", path.display()))?;
    if bytes.len() as u64 > most {
        bail!(
            "{}: not a state of this model (longer than its state, logits and header could be)",
            path.display()
        );
    }
    decode(&bytes, cfg, fingerprint).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Version;

    fn cfg() -> Config {
        Config {
            version: Version::V7,
            n_layer: 2,
            n_embd: 8,
            n_att: 8,
            n_ffn: 32,
            n_head: 2,
            head_size: 4,
            vocab_size: 5,
            n_params: 0,
        }
    }

    fn sample() -> SavedState {
        let mut state = State::new(&cfg());
        for (i, l) in state.layers.iter_mut().enumerate() {
            l.wkv
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = (i * 100 + j) as f32 * 0.5);
            l.att_shift[3] = -1.25;
        }
        SavedState {
            state,
            logits: vec![0.1, 0.2, 0.3, 0.4, 0.5],
            tokens: 1234,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&cfg(), 42, &sample());
        assert_eq!(decode(&bytes, &cfg(), 42).unwrap(), sample());
    }

    #[test]
    fn another_model_is_refused() {
        let bytes = encode(&cfg(), 42, &sample());
        let e = decode(&bytes, &cfg(), 43).unwrap_err().to_string();
        assert!(e.contains("another model"), "{e}");
        let mut other = cfg();
        other.n_embd = 16;
        other.n_att = 16;
        let e = decode(&bytes, &other, 42).unwrap_err().to_string();
        assert!(e.contains("width"), "{e}");
    }

    #[test]
    fn short_files_say_truncated_and_absurd_counts_are_refused() {
        let bytes = encode(&cfg(), 42, &sample());
        for n in [3, 10, 20] {
            let e = decode(&bytes[..n], &cfg(), 42).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{n}: {e}");
        }
        assert!(decode(b"", &cfg(), 42)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(
            decode(b"PK\x03\x04 and more bytes than a header", &cfg(), 42)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        let mut s = sample();
        s.tokens = u64::MAX - 3;
        let e = decode(&encode(&cfg(), 42, &s), &cfg(), 42)
            .unwrap_err()
            .to_string();
        assert!(e.contains("implausible"), "{e}");
        let mut s = sample();
        s.state.layers[1].wkv[2] = f32::NAN;
        let e = decode(&encode(&cfg(), 42, &s), &cfg(), 42)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&cfg(), 42, &sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &cfg(), 42).is_err(), "truncated at {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b, &cfg(), 42).is_err(), "flip at {i}");
        }
    }
}
