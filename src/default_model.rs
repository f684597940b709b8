//! The default model, embedded in the binary: a small RWKV-7 trained by this project
//! (`scripts/train_default_model.py`, see `models/DEFAULT_MODEL.md`), used when `--model` is
//! not given, so that `rwkv-cli generate --prompt ...` works offline on a fresh machine.
//!
//! The weights are compiled in with `include_bytes!`. To load them through the same
//! memory-mapped path as every other checkpoint, they are written once to a cache file named by
//! their hash (atomically: a temporary file, then a rename) and reused from there once its
//! bytes are found equal to the embedded ones (a damaged or edited cache file is rewritten).
//! The cache is `$RWKV_CLI_CACHE`, `$XDG_CACHE_HOME/rwkv-cli` or `~/.cache/rwkv-cli`; when it
//! cannot be written or none is set (no `HOME`), a per-user `rwkv-cli-<uid>` (mode 0700) in the
//! temporary directory, never a directory shared by all users.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// The embedded weights (safetensors, official x070 layout).
pub static WEIGHTS: &[u8] = include_bytes!("../models/default.safetensors");

/// What `--model` is called when it is not given, in messages and in `info`.
pub const NAME: &str = "default (embedded)";

/// `$RWKV_CLI_CACHE`, else `$XDG_CACHE_HOME/rwkv-cli`, else `~/.cache/rwkv-cli`; with none of
/// these variables set, the per-user [`private_temp_dir`].
pub fn cache_dir() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(d) = nonempty("RWKV_CLI_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("rwkv-cli"));
    }
    if let Some(h) = nonempty("HOME") {
        return Some(PathBuf::from(h).join(".cache").join("rwkv-cli"));
    }
    private_temp_dir().ok()
}

/// `rwkv-cli-<uid>` in the system's temporary directory, created with mode 0700, and used only
/// when it is a directory of this user that no one else can write (so another user can
/// neither replace the file nor block it by creating the directory first).
#[cfg(unix)]
pub fn private_temp_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let d = std::env::temp_dir().join(format!("rwkv-cli-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&d);
    let m =
        std::fs::symlink_metadata(&d).with_context(|| format!("cannot create {}", d.display()))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is not a private directory of this user (owner, type or permissions): remove it, or set RWKV_CLI_CACHE or HOME",
            d.display()
        );
    }
    Ok(d)
}

/// On systems without Unix users: `rwkv-cli` in the (per-user) temporary directory.
#[cfg(not(unix))]
pub fn private_temp_dir() -> Result<PathBuf> {
    Ok(std::env::temp_dir().join("rwkv-cli"))
}

/// The path of the embedded model's file, writing it on first use.
pub fn path() -> Result<PathBuf> {
    let hash = crate::fnv::fnv1a(WEIGHTS, crate::fnv::FNV_OFFSET);
    let name = format!("default-{hash:016x}.safetensors");
    let fallback = private_temp_dir();
    let dirs = cache_dir()
        .into_iter()
        .chain(fallback.as_ref().ok().cloned());
    let mut last_err = fallback.err();
    for dir in dirs {
        let p = dir.join(&name);
        // Compared byte for byte (8 MiB, a few milliseconds): the name alone proves nothing
        // about what a file in a user-writable directory holds now.
        let intact = std::fs::metadata(&p).is_ok_and(|m| m.len() == WEIGHTS.len() as u64)
            && std::fs::read(&p).is_ok_and(|b| b == WEIGHTS);
        if intact {
            return Ok(p);
        }
        // A missing file is created without replacing one another process put there
        // meanwhile (ten first runs at once keep one file, whose identity the weight cache's
        // key holds); a damaged one is replaced.
        let written = std::fs::create_dir_all(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|_| match std::fs::symlink_metadata(&p) {
                Err(_) => match crate::output_file::write_new(&p, WEIGHTS)? {
                    true => Ok(()),
                    false if std::fs::read(&p).is_ok_and(|b| b == WEIGHTS) => Ok(()),
                    false => crate::output_file::write_atomic(&p, WEIGHTS),
                },
                Ok(_) => crate::output_file::write_atomic(&p, WEIGHTS),
            });
        match written {
            Ok(()) => return Ok(p),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no cache directory")))
        .context("cannot write the embedded default model to a cache directory")
}
