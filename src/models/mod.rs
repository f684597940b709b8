//! RWKV models: version detection, the [`Model`] trait, and one module per version.
//!
//! Every version runs a prompt through the *sequence* path ([`Model::forward_seq`]: the
//! projections, LoRAs and FFN as batched matmuls over all tokens, with only the WKV
//! recurrence stepped per token) and generates with the *recurrent* path ([`Model::step`]:
//! one token, state in, state out). The [`State`] is a plain value whose size does not
//! depend on how many tokens it has seen.

mod shared;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;
mod weights;
pub mod wkv;

pub use weights::Weights;

use crate::checkpoint::Checkpoint;
use crate::format::Format;
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
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
        let wkv = match self.version {
            Version::V4 => 3 * self.n_att,
            _ => self.n_head * self.head_size * self.head_size,
        };
        2 * self.n_embd + wkv
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
        let wkv_init = match cfg.version {
            // aa = bb = 0; pp (the running maximum exponent) starts very negative.
            Version::V4 => {
                let mut v = vec![0.0; 3 * cfg.n_att];
                v[2 * cfg.n_att..].fill(-1e30);
                v
            }
            _ => vec![0.0; cfg.n_head * cfg.head_size * cfg.head_size],
        };
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

/// Tells the version from tensor names and shapes.
pub fn detect_version(ckpt: &Checkpoint) -> Result<Version> {
    let has = |n: &str| ckpt.contains(n);
    if !has("emb.weight") {
        bail!(
            "{} is not an RWKV checkpoint: tensor emb.weight is missing",
            ckpt.path.display()
        );
    }
    if has("blocks.0.att.r_k") || has("blocks.0.att.w0") || has("blocks.0.att.x_r") {
        return Ok(Version::V7);
    }
    if has("blocks.0.att.time_maa_x") {
        return Ok(Version::V6);
    }
    if has("blocks.0.att.ln_x.weight") {
        if !has("blocks.0.att.gate.weight") {
            return Ok(Version::V5_0);
        }
        let decay = ckpt.meta("blocks.0.att.time_decay").ok_or_else(|| {
            anyhow::anyhow!("RWKV v5 layout without tensor blocks.0.att.time_decay")
        })?;
        let per_channel = decay.shape.iter().filter(|&&d| d > 1).count() > 1;
        return Ok(if per_channel {
            Version::V5_2
        } else {
            Version::V5_1
        });
    }
    if has("blocks.0.att.time_mix_k") && has("blocks.0.att.time_decay") {
        return Ok(Version::V4);
    }
    bail!(
        "unknown RWKV layout in {}: no tensor identifies v4 (blocks.0.att.time_mix_k), v5 (blocks.0.att.ln_x.weight), v6 (blocks.0.att.time_maa_x) or v7 (blocks.0.att.r_k)",
        ckpt.path.display()
    )
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

/// Opens a checkpoint file and loads the model it holds, whatever its version.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Box<dyn Model>> {
    let ckpt = Checkpoint::open(path)?;
    load_checkpoint(&ckpt, opts)
}

/// Loads the model held by an opened checkpoint.
pub fn load_checkpoint(ckpt: &Checkpoint, opts: LoadOptions) -> Result<Box<dyn Model>> {
    let version = detect_version(ckpt)?;
    let w = Weights::new(ckpt, opts.dtype);
    Ok(match version {
        Version::V4 => Box::new(v4::RwkvV4::load(&w)?),
        Version::V5_0 | Version::V5_1 | Version::V5_2 => Box::new(v5::RwkvV5::load(&w, version)?),
        Version::V6 => Box::new(v6::RwkvV6::load(&w)?),
        Version::V7 => Box::new(v7::RwkvV7::load(&w)?),
    })
}

/// The configuration of the model a checkpoint holds, checked as loading checks it (every
/// tensor present with its shape and a float type, `.pth` CRCs) but without converting the
/// weights: fast and small even for a multi-gigabyte file. For `rwkv-cli info`.
pub fn inspect(ckpt: &Checkpoint) -> Result<Config> {
    let version = detect_version(ckpt)?;
    let w = Weights::shapes_only(ckpt);
    // The stand-in model is dropped here: only its configuration leaves.
    Ok(match version {
        Version::V4 => v4::RwkvV4::load(&w)?.config().clone(),
        Version::V5_0 | Version::V5_1 | Version::V5_2 => {
            v5::RwkvV5::load(&w, version)?.config().clone()
        }
        Version::V6 => v6::RwkvV6::load(&w)?.config().clone(),
        Version::V7 => v7::RwkvV7::load(&w)?.config().clone(),
    })
}

/// Embedding lookup, `ln_out` and the head: the parts every version shares.
pub struct Embedding {
    /// `vocab × C`, in the compute dtype (the `blocks.0.ln0` norm is applied on lookup).
    table: crate::ops::RowTable,
    ln0_w: Vec<f32>,
    ln0_b: Vec<f32>,
    pub n_embd: usize,
    pub vocab_size: usize,
}

impl Embedding {
    pub fn load(w: &Weights, vocab: usize, c: usize) -> Result<Self> {
        Ok(Self {
            table: w.table("emb.weight", vocab, c)?,
            ln0_w: w.vector("blocks.0.ln0.weight", c)?,
            ln0_b: w.vector("blocks.0.ln0.bias", c)?,
            n_embd: c,
            vocab_size: vocab,
        })
    }

    /// Rows of the normalised embedding for `tokens`.
    pub fn lookup(&self, tokens: &[u32]) -> Result<crate::ops::Mat> {
        let c = self.n_embd;
        let mut x = crate::ops::Mat::zeros(tokens.len(), c);
        for (t, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= self.vocab_size {
                bail!(
                    "token id {tok} is out of range for a vocabulary of {}",
                    self.vocab_size
                );
            }
            let row = x.row_mut(t);
            self.table.row_into(tok, row);
            crate::ops::layer_norm_row(row, &self.ln0_w, &self.ln0_b, 1e-5);
        }
        Ok(x)
    }
}

/// The final norm and the output projection.
pub struct Head {
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    head: crate::ops::Linear,
}

impl Head {
    pub fn load(w: &Weights, vocab: usize, c: usize) -> Result<Self> {
        Ok(Self {
            ln_w: w.vector("ln_out.weight", c)?,
            ln_b: w.vector("ln_out.bias", c)?,
            head: w.linear("head.weight", vocab, c)?,
        })
    }

    /// Logits for the last row of `x`, or for every row.
    pub fn logits(&self, x: &crate::ops::Mat, all: bool) -> Result<Vec<f32>> {
        let x = if all {
            x.clone()
        } else {
            crate::ops::Mat::from_vec(1, x.cols, x.last_row().to_vec())
        };
        let x = crate::ops::layer_norm(&x, &self.ln_w, &self.ln_b);
        Ok(self.head.forward(&x)?.data)
    }
}

/// Checks a call's arguments against the model before running it.
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
