//! RWKV models: the [`Model`] trait and its [`State`], and one file per version.
//!
//! - `v4.rs` … `v7.rs`: each version's model, readable top to bottom, with its registry row;
//! - `registry.rs`: the list of versions' rows ([`VERSIONS`]: a new version is one file and
//!   one row, see [`VersionInfo`]), detection and loading;
//! - [`wkv`]: every WKV recurrence (v4; v5/v6; v7's driver of the SIMD kernel);
//! - `ffn.rs`: the channel-mix block of v4–v6; `embedding.rs`: [`Embedding`] and [`Head`];
//! - `weights.rs`: [`Weights`], shape-checked tensor access with scoped names;
//! - [`init_state`]: state-tuned initial states (RWKV-PEFT "state tuning" files), read into a
//!   [`State`] in each version's layout.
//!
//! Every version runs a prompt through the *sequence* path ([`Model::forward_seq`]: the
//! projections, LoRAs and FFN as batched matmuls over all tokens, with only the WKV
//! recurrence stepped per token) and generates with the *recurrent* path ([`Model::step`]:
//! one token, state in, state out). The [`State`] is a plain value whose size does not
//! depend on how many tokens it has seen.

mod embedding;
mod ffn;
pub mod init_state;
mod registry;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;
mod weights;
pub mod wkv;

pub use embedding::{Embedding, Head};
pub use registry::{
    detect_version, inspect, load, load_checkpoint, load_checkpoint_cached, VERSIONS,
};
pub use weights::{held_format, Weights};

use crate::checkpoint::Checkpoint;
use crate::format::Format;
use anyhow::{bail, Result};

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
    /// v7 with DeepEmbed (BlinkDL's `rwkv7a-*` files; the official package runs them with
    /// `RWKV_DE_VERSION=1`): each layer's FFN is scaled per token by a small matrix looked up
    /// in a per-layer embedding table (`blocks.N.ffn.s_emb.weight`, `s_emb_x`, `s0`–`s2`).
    V7DeepEmbed,
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
            Version::V7DeepEmbed => "v7 DeepEmbed",
        }
    }

    /// The registry row of the file that runs this version.
    pub fn info(self) -> &'static VersionInfo {
        registry::VERSIONS
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

/// One generation's row in the registry ([`VERSIONS`]): how to recognise, load and size it.
/// Each version file defines its own (`v7::INFO`).
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
    /// Floats in one layer's WKV state ([`LayerState::wkv`]).
    pub wkv_len: fn(&Config) -> usize,
    /// One layer's WKV state before any token.
    pub wkv_init: fn(&Config) -> Vec<f32>,
    /// How a state-tuned `time_state` tensor becomes this version's WKV state
    /// ([`init_state`]).
    pub time_state: TimeStateLayout,
    /// The name endings of the low-rank (LoRA) matrices it keeps in its format's low-rank
    /// format ([`crate::format::Traits::low_rank`]); every other tensor but the `.weight`
    /// matrices is kept in f32. For the weight traffic `bench` reports.
    pub low_rank: &'static [&'static str],
}

/// How a version takes a state-tuned initial state: a `blocks.N.att.time_state` tensor of
/// shape `[heads, head size, head size]`, stored (value channel, key channel) per head by
/// every trainer and loader (see [`init_state`] for the sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeStateLayout {
    /// No matrix state to tune (v4).
    Unsupported,
    /// The WKV state is `H × N(value) × N(key)` as the file's: used as stored (v7).
    AsStored,
    /// The WKV state is `H × N(key) × N(value)`: each head's matrix is transposed (v5, v6).
    Transposed,
}

/// Shapes of a model, all inferred from its tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: Version,
    pub n_layer: usize,
    /// Width of the residual stream (C).
    pub n_embd: usize,
    /// Width of the attention (time-mix) projections; equals `n_embd` in every official model.
    pub n_att: usize,
    pub n_ffn: usize,
    /// Heads (v5–v7; 1 for v4).
    pub n_head: usize,
    /// Head size (v5–v7; 1 for v4).
    pub head_size: usize,
    pub vocab_size: usize,
    /// Number of weights in the checkpoint.
    pub n_params: u64,
}

impl Config {
    /// Bytes of the recurrent state, per the layout of [`State`].
    pub fn state_bytes(&self) -> usize {
        self.state_floats_per_layer() * self.n_layer * 4
    }

    fn state_floats_per_layer(&self) -> usize {
        2 * self.n_embd + (self.version.info().wkv_len)(self)
    }

    /// What a softmax transformer of the same depth and width would cache for `context`
    /// tokens: keys and values, per layer, `bytes_per_element` each (the CLI compares the
    /// state with [`KV_BYTES_PER_ELEMENT`]).
    pub fn kv_cache_bytes(&self, context: usize, bytes_per_element: usize) -> u64 {
        2 * self.n_layer as u64 * self.n_embd as u64 * context as u64 * bytes_per_element as u64
    }
}

/// Bytes per element of the transformer KV cache the state is compared with in the CLI's
/// statistics: f32, the precision the RWKV state is kept in, whatever the weights' format.
pub const KV_BYTES_PER_ELEMENT: usize = 4;

/// One layer's recurrent state.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerState {
    /// The previous token's normalised input to the time-mix block (token shift).
    pub att_shift: Vec<f32>,
    /// The WKV state: v4 `[aa | bb | pp]` (3 × C); v5/v6 `H × N(key) × N(value)`;
    /// v7 `H × N(value) × N(key)` — each in the official implementation's layout.
    pub wkv: Vec<f32>,
    /// The previous token's normalised input to the channel-mix block.
    pub ffn_shift: Vec<f32>,
}

/// The whole recurrent state: fixed size, whatever the context length.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub layers: Vec<LayerState>,
}

impl State {
    /// The state before any token.
    pub fn new(cfg: &Config) -> Self {
        let wkv_init = (cfg.version.info().wkv_init)(cfg);
        Self {
            layers: (0..cfg.n_layer)
                .map(|_| LayerState {
                    att_shift: vec![0.0; cfg.n_embd],
                    wkv: wkv_init.clone(),
                    ffn_shift: vec![0.0; cfg.n_embd],
                })
                .collect(),
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.att_shift.len() + l.wkv.len() + l.ffn_shift.len()) * 4)
            .sum()
    }
}

/// One RWKV model, whatever its version.
pub trait Model: Send + Sync {
    fn config(&self) -> &Config;

    /// The state before any token.
    fn new_state(&self) -> State {
        State::new(self.config())
    }

    /// Recurrent path: feeds one token, updates `state`, returns the next-token logits.
    /// With a single row, every matrix product takes the matrix–vector kernels.
    fn step(&self, token: u32, state: &mut State) -> Result<Vec<f32>> {
        self.forward_seq(&[token], state, false)
    }

    /// Sequence path: feeds `tokens` (non-empty) at once. Returns the logits after the last
    /// token (`vocab` values), or after every token (`tokens.len() × vocab`) if `all_logits`.
    fn forward_seq(&self, tokens: &[u32], state: &mut State, all_logits: bool) -> Result<Vec<f32>>;

    /// Recurrent path for B independent sequences at once: `tokens[b]` is fed to `states[b]`;
    /// returns the B next-token logits, one row of `vocab` values per sequence. A version may
    /// run the projections as one matrix product over the B rows (the weights are read once
    /// for all of them); this default steps each sequence on its own.
    fn step_batch(&self, tokens: &[u32], states: &mut [&mut State]) -> Result<Vec<f32>> {
        check_batch(tokens, states)?;
        let mut out = Vec::with_capacity(tokens.len() * self.config().vocab_size);
        for (&t, s) in tokens.iter().zip(states.iter_mut()) {
            out.extend(self.step(t, s)?);
        }
        Ok(out)
    }
}

/// Checks a row of next-token logits before anything samples or scores it: a NaN or +∞ (or no
/// finite value at all) means the weights or the state hold non-finite numbers, and sampling
/// would emit garbage (NUL bytes) and scoring print `inf`. −∞ alone is a masked token, fine.
pub fn check_logits(logits: &[f32]) -> Result<()> {
    let bad = |v: &f32| v.is_nan() || *v == f32::INFINITY;
    if !logits.iter().any(bad) && logits.iter().any(|v| v.is_finite()) {
        return Ok(());
    }
    let nan = logits.iter().filter(|v| v.is_nan()).count();
    let inf = logits.iter().filter(|v| v.is_infinite()).count();
    bail!(
        "the model computed non-finite logits ({nan} NaN and {inf} infinite of {}): its weights or the state it started from hold NaN or infinity (`rwkv-cli info --check MODEL` scans the weights)",
        logits.len()
    )
}

/// The default chunk length of the sequence path: bounds the activations' memory.
pub const DEFAULT_CHUNK: usize = 256;

/// Feeds a prompt of any length through the sequence path in chunks; returns the logits after
/// its last token. An empty prompt returns `None`.
pub fn prefill(
    model: &dyn Model,
    tokens: &[u32],
    state: &mut State,
    chunk: usize,
) -> Result<Option<Vec<f32>>> {
    let mut last = None;
    for c in tokens.chunks(chunk.max(1)) {
        last = Some(model.forward_seq(c, state, false)?);
    }
    Ok(last)
}

/// Options for loading a model.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// The dtype of the weight matrices during compute.
    pub dtype: Format,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: Format::F32 }
    }
}

/// Counts the layers: `blocks.N.*` for consecutive N from 0, all present.
pub fn count_layers(ckpt: &Checkpoint) -> Result<usize> {
    let mut max = None;
    for name in ckpt.tensors().keys() {
        if let Some(rest) = name.strip_prefix("blocks.") {
            let n: usize = rest
                .split('.')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("tensor {name}: cannot read its layer number"))?;
            max = Some(max.map_or(n, |m: usize| m.max(n)));
        }
    }
    let n = max
        .map(|m| m + 1)
        .ok_or_else(|| anyhow::anyhow!("checkpoint has no blocks.* tensors"))?;
    if n > 4096 {
        bail!("checkpoint claims {n} layers; refusing an implausible layout");
    }
    Ok(n)
}

/// Checks a call's arguments against the model before running it.
/// A batched step's arguments: one token per state.
pub(crate) fn check_batch(tokens: &[u32], states: &[&mut State]) -> Result<()> {
    if tokens.len() != states.len() {
        bail!(
            "step_batch: {} tokens for {} states",
            tokens.len(),
            states.len()
        );
    }
    Ok(())
}

pub(crate) fn check_call(cfg: &Config, tokens: &[u32], state: &State) -> Result<()> {
    if tokens.is_empty() {
        bail!("no tokens to process");
    }
    let wkv = cfg.state_floats_per_layer() - 2 * cfg.n_embd;
    let same = state.layers.len() == cfg.n_layer
        && state.layers.iter().all(|l| {
            l.att_shift.len() == cfg.n_embd && l.wkv.len() == wkv && l.ffn_shift.len() == cfg.n_embd
        });
    if !same {
        bail!("the state does not match this model's shape");
    }
    Ok(())
}
