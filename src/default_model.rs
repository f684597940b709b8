//! The default model, embedded in the binary: a small RWKV-7 trained by this project
//! (`scripts/train_default_model.py`, see `models/DEFAULT_MODEL.md`), used when `--model` is
//! not given, so that `rwkv-cli generate --prompt ...` works offline on a fresh machine.
//!
//! The weights are compiled in with `include_bytes!`. To load them through the same
//! memory-mapped path as every other checkpoint, they are written once to a cache file named by
//! their hash (atomically: a temporary file, then a rename) and reused from there once its
//! bytes are found equal to the embedded ones (a damaged or edited cache file is rewritten).

use anyhow::{Context, Result};
use std::path::PathBuf;

/// The embedded weights (safetensors, official x070 layout).
pub static WEIGHTS: &[u8] = include_bytes!("../models/default.safetensors");

/// What `--model` is called when it is not given, in messages and in `info`.
pub const NAME: &str = "default (embedded)";

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RWKV_CLI_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("rwkv-cli");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("rwkv-cli");
    }
    std::env::temp_dir().join("rwkv-cli")
}

/// The path of the embedded model's file, writing it on first use.
pub fn path() -> Result<PathBuf> {
    let hash = crate::fnv::fnv1a(WEIGHTS, crate::fnv::FNV_OFFSET);
    let name = format!("default-{hash:016x}.safetensors");
    let mut last_err = None;
    for dir in [cache_dir(), std::env::temp_dir().join("rwkv-cli")] {
        let p = dir.join(&name);
        // Compared byte for byte (8 MiB, a few milliseconds): the name alone proves nothing
        // about what a file in a user-writable directory holds now.
        let intact = std::fs::metadata(&p).is_ok_and(|m| m.len() == WEIGHTS.len() as u64)
            && std::fs::read(&p).is_ok_and(|b| b == WEIGHTS);
        if intact {
            return Ok(p);
        }
        let written = std::fs::create_dir_all(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|_| crate::output_file::write_atomic(&p, WEIGHTS));
        match written {
            Ok(()) => return Ok(p),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no cache directory")))
        .context("cannot write the embedded default model to a cache directory")
}
