//! The version registry: the list of RWKV generations this crate runs, and the functions that
//! consult it. Everything the crate needs to know about a generation is its file's row
//! ([`VersionInfo`], defined as `INFO` in `v4.rs` … `v7.rs`); [`VERSIONS`] lists the rows,
//! and detection, loading, inspection and the state's shape ([`Version::info`]) consult it.
//!
//! To add a version: write `vN.rs` (its model and its `INFO` row; its WKV recurrence goes to
//! `wkv.rs`), add its variant to [`Version`] (with its name) and its row to [`VERSIONS`].

use super::{v4, v5, v6, v7, Config, LoadOptions, Model, Version, VersionInfo, Weights};
use crate::checkpoint::Checkpoint;
use crate::weight_cache;
use anyhow::{bail, Result};
use std::path::Path;

/// Every generation, newest first: detection takes the first row that recognises a
/// checkpoint, and newer layouts keep tensors of older ones (v6 and v7 have v5's `ln_x`, v5
/// has v4's `time_mix_k` and `time_decay`).
pub const VERSIONS: &[&VersionInfo] = &[&v7::INFO, &v6::INFO, &v5::INFO, &v4::INFO];

/// Tells the version from tensor names and shapes.
pub fn detect_version(ckpt: &Checkpoint) -> Result<Version> {
    if !ckpt.contains("emb.weight") {
        bail!(
            "{} is not an RWKV checkpoint: tensor emb.weight is missing",
            ckpt.path.display()
        );
    }
    for info in VERSIONS {
        if let Some(version) = (info.detect)(ckpt)? {
            return Ok(version);
        }
    }
    // Oldest first: "v4 (…), v5 (…), v6 (…) or v7 (…)".
    let names: Vec<&str> = VERSIONS.iter().rev().map(|i| i.identified_by).collect();
    let (last, rest) = names.split_last().expect("VERSIONS is not empty");
    bail!(
        "unknown RWKV layout in {}: no tensor identifies {} or {last}",
        ckpt.path.display(),
        rest.join(", ")
    )
}

/// Opens a checkpoint file and loads the model it holds, whatever its version.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Box<dyn Model>> {
    let ckpt = Checkpoint::open(path)?;
    load_checkpoint(&ckpt, opts)
}

/// Loads the model held by an opened checkpoint.
pub fn load_checkpoint(ckpt: &Checkpoint, opts: LoadOptions) -> Result<Box<dyn Model>> {
    let version = detect_version(ckpt)?;
    (version.info().load)(&Weights::new(ckpt, opts.dtype), version)
}

/// [`load_checkpoint`] through the weight cache (see [`crate::weight_cache`]): served from a
/// valid cache file when there is one, else converted and the file written. The report says
/// which, and carries the warnings to show (a stale or damaged file rebuilt, a file that could
/// not be written); a cache problem never fails the load.
pub fn load_checkpoint_cached(
    ckpt: &Checkpoint,
    opts: LoadOptions,
    cache: &weight_cache::Settings,
) -> Result<(Box<dyn Model>, weight_cache::Report)> {
    let version = detect_version(ckpt)?;
    let session = weight_cache::Session::open(cache, ckpt, opts.dtype);
    let model = (version.info().load)(&Weights::cached(ckpt, opts.dtype, &session), version)?;
    Ok((model, session.finish()))
}

/// The configuration of the model a checkpoint holds, checked as loading checks it (every
/// tensor present with its shape and a float type, `.pth` CRCs) but without converting the
/// weights: fast and small even for a multi-gigabyte file. For `rwkv-cli info`.
pub fn inspect(ckpt: &Checkpoint) -> Result<Config> {
    let version = detect_version(ckpt)?;
    // The stand-in model is dropped here: only its configuration leaves.
    let model = (version.info().load)(&Weights::shapes_only(ckpt), version)?;
    Ok(model.config().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_exactly_one_row() {
        use Version::*;
        for v in [V4, V5_0, V5_1, V5_2, V6, V7, V7DeepEmbed] {
            let rows = VERSIONS.iter().filter(|i| i.versions.contains(&v)).count();
            assert_eq!(rows, 1, "{v}");
            assert!(v
                .info()
                .identified_by
                .starts_with(v.name().split(['.', ' ']).next().unwrap()));
        }
    }

    #[test]
    fn an_unknown_layout_names_every_version_s_tensor() {
        let header = r#"{"emb.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let ckpt = Checkpoint::from_bytes(bytes, "x.safetensors").unwrap();
        assert_eq!(
            detect_version(&ckpt).unwrap_err().to_string(),
            "unknown RWKV layout in x.safetensors: no tensor identifies v4 (blocks.0.att.time_mix_k), v5 (blocks.0.att.ln_x.weight), v6 (blocks.0.att.time_maa_x) or v7 (blocks.0.att.r_k)"
        );
    }
}
