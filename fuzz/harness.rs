//! The fuzz targets' bodies: one function per target, taking the fuzzer's bytes.
//!
//! Shared by the cargo-fuzz targets (`fuzz_targets/*.rs`, nightly) and by
//! `tests/bad_input.rs`, which replays the seed corpus through them on stable. Each function
//! must return normally for every input: errors are fine, panics are bugs. The asserts here are
//! the targets' oracles.

use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::models::{self, Config, LoadOptions, Version};
use rwkv_cli::state_file;
use rwkv_cli::tokenizer::{NeoxTokenizer, Tokenizer, WorldTokenizer};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and `corpus/` folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("pth", pth),
    ("load_model", load_model),
    ("world_tokenizer", world_tokenizer),
    ("state_file", state_file),
    ("gguf", gguf),
    ("neox_tokenizer", neox_tokenizer),
    ("hub_reference", hub_reference),
];

/// Reads every tensor and the fingerprint of an opened checkpoint.
fn exercise(c: &Checkpoint) {
    for (name, meta) in c.tensors() {
        let whole = c.read_f32(name);
        if let Ok(v) = &whole {
            assert_eq!(
                v.len(),
                meta.numel(),
                "{name}: read_f32 returns numel values"
            );
        }
        // The same values in runs of 7, in order.
        let mut runs = Vec::new();
        let chunked = c.read_f32_chunks(name, 7, |at, v| {
            assert_eq!(at, runs.len(), "{name}: runs arrive in order");
            assert!(v.len() <= 7);
            runs.extend_from_slice(v);
            Ok(())
        });
        if let (Ok(v), Ok(())) = (&whole, &chunked) {
            let same = v.len() == runs.len()
                && v.iter().zip(&runs).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name}: read_f32_chunks agrees with read_f32");
        }
    }
    let _ = c.fingerprint();
    let _ = c.stored_dtype();
    let _ = c.n_elements();
}

/// The safetensors reader (and the format detection in front of it).
pub fn safetensors(data: &[u8]) {
    if let Ok(c) = Checkpoint::from_bytes(data.to_vec(), "fuzz.safetensors") {
        exercise(&c);
    }
}

/// The GGUF reader: the container (every tensor of a readable type decoded), then the file as
/// a checkpoint (llama.cpp's rwkv7 layout mapped to BlinkDL names) and every tensor read.
pub fn gguf(data: &[u8]) {
    use rwkv_cli::checkpoint::gguf;
    if let Ok(g) = gguf::parse(data) {
        for t in &g.tensors {
            let bytes = &data[t.start..t.start + t.len];
            let mut out = vec![0.0f32; t.numel().min(1 << 20)];
            if out.len() == t.numel() && t.ty.readable() {
                t.ty.decode(bytes, &mut out)
                    .expect("a checked tensor decodes");
            }
        }
        let _ = g.summary();
    }
    if let Ok(c) = Checkpoint::from_bytes(data.to_vec(), "fuzz.gguf") {
        exercise(&c);
    }
}

/// The `.pth` reader. The first byte picks what the rest is: even, a whole archive; odd, a
/// `data.pkl` that [`wrap_pickle`] puts in an archive with a few storages, so that mutations
/// reach the pickle machine and the tensor checks instead of dying in the zip parser.
pub fn pth(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        wrap_pickle(rest)
    };
    if let Ok(c) = Checkpoint::from_bytes(bytes, "fuzz.pth") {
        exercise(&c);
    }
}

/// A stored zip archive in `torch.save`'s layout: `a/data.pkl` (the given bytes),
/// `a/byteorder`, and storages `a/data/0` … `a/data/7`, 256 bytes each.
pub fn wrap_pickle(pkl: &[u8]) -> Vec<u8> {
    let storage: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(37)).collect();
    let mut files: Vec<(String, &[u8])> = vec![
        ("a/data.pkl".into(), pkl),
        ("a/byteorder".into(), b"little"),
    ];
    for k in 0..8 {
        files.push((format!("a/data/{k}"), &storage));
    }
    zip_stored(&files)
}

/// CRC-32 as zip computes it (bit by bit: short inputs only).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip archive of stored (uncompressed) entries.
pub fn zip_stored(files: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let size = (data.len() as u32).to_le_bytes();
        let name_len = (name.len() as u16).to_le_bytes();
        let crc = crc32(data).to_le_bytes();
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        out.extend_from_slice(&crc);
        out.extend_from_slice(&size);
        out.extend_from_slice(&size);
        out.extend_from_slice(&name_len);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00");
        central.extend_from_slice(&[0; 4]); // time, date
        central.extend_from_slice(&crc);
        central.extend_from_slice(&size);
        central.extend_from_slice(&size);
        central.extend_from_slice(&name_len);
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let count = (files.len() as u16).to_le_bytes();
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    out.extend_from_slice(&count);
    out.extend_from_slice(&count);
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// Version detection and model loading from either format, then one sequence call and one
/// recurrent step on whatever loaded.
pub fn load_model(data: &[u8]) {
    let Ok(c) = Checkpoint::from_bytes(data.to_vec(), "fuzz.model") else {
        return;
    };
    let _ = models::detect_version(&c);
    let _ = models::count_layers(&c);
    // `info`'s check-only path accepts exactly what loading accepts, with the same config.
    let inspected = models::inspect(&c);
    let Ok(m) = models::load_checkpoint(&c, LoadOptions::default()) else {
        assert!(inspected.is_err(), "inspect accepted what load refuses");
        return;
    };
    let cfg = m.config().clone();
    assert_eq!(
        inspected.ok().as_ref(),
        Some(&cfg),
        "inspect and load disagree"
    );
    let mut state = m.new_state();
    assert_eq!(state.size_bytes(), cfg.state_bytes());
    if let Ok(logits) = m.forward_seq(&[0, 1], &mut state, false) {
        assert_eq!(logits.len(), cfg.vocab_size);
    }
    if let Ok(logits) = m.step(0, &mut state) {
        assert_eq!(logits.len(), cfg.vocab_size);
    }
}

/// The World tokenizer: any bytes encode, and decode back to themselves; any ids decode.
pub fn world_tokenizer(data: &[u8]) {
    let t = WorldTokenizer::new().expect("the embedded vocabulary parses");
    let ids = t.encode(data).expect("every byte string encodes");
    assert_eq!(t.decode(&ids), data, "decode(encode(x)) == x");
    let ids: Vec<u32> = data
        .chunks(4)
        .map(|c| {
            let mut a = [0u8; 4];
            a[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(a)
        })
        .collect();
    let bytes = t.decode(&ids);
    let one_by_one: Vec<u8> = ids.iter().flat_map(|&id| t.token_bytes(id)).collect();
    assert_eq!(bytes, one_by_one);
}

/// The model the state-file target decodes for (the same as `state_file`'s unit tests).
pub fn state_config() -> Config {
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

/// The fingerprint the state-file seeds carry.
pub const STATE_FINGERPRINT: u64 = 42;

/// The state-file reader, on the bytes as they are and with their checksum repaired (so that
/// mutations get past the checksum to the header and payload checks).
pub fn state_file(data: &[u8]) {
    let cfg = state_config();
    if let Ok(s) = state_file::decode(data, &cfg, STATE_FINGERPRINT) {
        assert_eq!(s.logits.len(), cfg.vocab_size);
    }
    if data.len() >= 8 {
        let (body, _) = data.split_at(data.len() - 8);
        let mut fixed = body.to_vec();
        let sum = rwkv_cli::fnv::fnv1a(body, rwkv_cli::fnv::FNV_OFFSET);
        fixed.extend_from_slice(&sum.to_le_bytes());
        if let Ok(s) = state_file::decode(&fixed, &cfg, STATE_FINGERPRINT) {
            assert_eq!(s.logits.len(), cfg.vocab_size);
            assert_eq!(s.state.size_bytes(), cfg.state_bytes());
        }
    }
}

/// The GPT-NeoX 20B tokenizer: any bytes encode and decode back to themselves, except the 13
/// byte values UTF-8 never uses (no token: U+FFFD) and literal special tokens (the token).
pub fn neox_tokenizer(data: &[u8]) {
    let t = NeoxTokenizer::new().expect("the embedded tokenizer parses");
    let ids = t.encode(data).expect("every byte string encodes");
    let unspellable = data.iter().any(|&b| matches!(b, 0xc0 | 0xc1 | 0xf5..=0xff));
    let special = |s: &[u8]| data.windows(s.len()).any(|w| w == s);
    if !unspellable && !special(b"<|endoftext|>") && !special(b"<|padding|>") {
        assert_eq!(t.decode(&ids), data, "decode(encode(x)) == x");
    }
    assert!(ids.iter().all(|&id| (id as usize) < t.vocab_size()));
}

/// `--model` parsing: whatever is accepted as a Hub file names a path inside its repo's cache
/// folder (relative, no `..`), and never a host other than the Hub's.
pub fn hub_reference(data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Some(f)) = rwkv_cli::hub::HubFile::parse(spec) else {
        return;
    };
    let cache = std::path::Path::new("/cache");
    let dir = f.repo_dir(cache);
    assert_eq!(dir.parent(), Some(cache), "{spec:?}: {dir:?}");
    for part in [&f.file, &f.revision] {
        assert!(
            !part.is_empty() && !part.starts_with('/') && !part.contains('\\'),
            "{spec:?}"
        );
        assert!(
            part.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "{spec:?}"
        );
    }
    assert_eq!(f.repo.matches('/').count(), 1, "{spec:?}");
    let scheme = spec.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if scheme.is_some() && scheme.as_deref() != Some("hf") {
        let host = spec
            .split_once("://")
            .unwrap()
            .1
            .split(['/', '?', '#'])
            .next()
            .unwrap();
        let h = host.to_ascii_lowercase();
        assert!(
            ["huggingface.co", "www.huggingface.co", "hf.co"].contains(&h.as_str())
                || h == rwkv_cli::hub::endpoint()
                    .split_once("://")
                    .map_or("", |x| x.1)
                    .to_ascii_lowercase(),
            "{spec:?} accepted from another host"
        );
    }
}
