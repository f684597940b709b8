//! The place for the AArch64 kernels (NEON; SVE where it pays). Empty for now: every entry of
//! the table stays portable on ARM.
//!
//! A NEON kernel goes here as an `#[target_feature(enable = "neon")] unsafe fn` with the
//! signature of its table entry (see `super::Kernels` and the x86-64 file for the model:
//! `gemv_f32`, `gemv_bf16`, `gemv_f16` stream 32-output panels; `q8_0_tile`, `q4_0_tile` are
//! the int8 products, for which `sdot`/`udot` play the part of VNNI's `vpdpbusd`), and a line
//! in [`install`] puts it in the table. Add an `Isa` variant when the first one lands, and its
//! detection to `detect_level` (in `mod.rs`), so that `isa()` reports it and `install` can
//! tell the levels apart.

use super::{Isa, Kernels};

/// Puts the AArch64 kernels of level `isa` into the table (none yet: the portable ones stay).
pub(super) fn install(_k: &mut Kernels, _isa: Isa) {}
