//! The version registry: which RWKV generations exist, how each is recognised, loaded and
//! laid out in the state. Everything the crate needs to know about a generation is its file's
//! row ([`VersionInfo`], defined as `INFO` in `v4.rs` … `v7.rs`); [`VERSIONS`] lists the rows,
//! and detection, loading, inspection and the state's shape consult it.
//!
//! To add a version: write `vN.rs` (its model, its `INFO` row, its WKV recurrence in
//! `wkv.rs` if it has a new one), add its variant to [`Version`] and its row to [`VERSIONS`].

use super::{v4, v5, v6, v7, Config, LoadOptions, Model, Weights};
use crate::checkpoint::Checkpoint;
use anyhow::{bail, Result};
use std::path::Path;

/// The RWKV architecture generations this crate runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V4,
    /// v5.0: no gate, per-head decay, bonus `time_first` used as `exp(time_first)`.
    V5_0,
    /// v5.1: gate, per-head decay.
    V5_1,
    /// v5.2: gate, per-channel decay, per-channel bonus `time_faaaa`.
    V5_2,
    /// v6 ("Finch"): data-dependent token shift and decay (LoRAs).
    V6,
    /// v7 ("Goose", x070): generalised delta rule with in-context learning rate.
    V7,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V4 => "v4",
            Version::V5_0 => "v5.0",
            Version::V5_1 => "v5.1",
            Version::V5_2 => "v5.2",
            Version::V6 => "v6",
            Version::V7 => "v7",
        }
    }

    /// The registry row of the file that runs this version.
    pub fn info(self) -> &'static VersionInfo {
        VERSIONS
            .iter()
            .find(|i| i.versions.contains(&self))
            .expect("every version has a row in VERSIONS")
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One generation's row: how to recognise, load and size it.
pub struct VersionInfo {
    /// The versions its file runs (v5's runs three variants).
    pub versions: &'static [Version],
    /// The tensor that identifies it, as the "unknown layout" message lists it:
    /// `v7 (blocks.0.att.r_k)`.
    pub identified_by: &'static str,
    /// Tells the version from the tensor names and shapes of a checkpoint (one that has
    /// `emb.weight`): `Ok(None)` when it is not this generation.
    pub detect: fn(&Checkpoint) -> Result<Option<Version>>,
    /// Builds the model from its weights (or, with [`Weights::shapes_only`], a stand-in whose
    /// only use is its [`Config`]).
    pub load: fn(&Weights, Version) -> Result<Box<dyn Model>>,
    /// Floats in one layer's WKV state ([`super::LayerState::wkv`]).
    pub wkv_len: fn(&Config) -> usize,
    /// One layer's WKV state before any token.
    pub wkv_init: fn(&Config) -> Vec<f32>,
}

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
        for v in [V4, V5_0, V5_1, V5_2, V6, V7] {
            let rows = VERSIONS.iter().filter(|i| i.versions.contains(&v)).count();
            assert_eq!(rows, 1, "{v}");
            assert!(v
                .info()
                .identified_by
                .starts_with(v.name().split('.').next().unwrap()));
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
