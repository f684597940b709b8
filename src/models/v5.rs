//! RWKV-5 ("Eagle"): multi-head matrix-valued state with a fixed decay.
//!
//! Per head, state `S` (N × N, key channel × value channel):
//! `out = r·(diag(u)·kᵀv + S)`, `S ← kᵀv + diag(w)·S`, then GroupNorm per head (`ln_x`).
//! Three published variants, told apart by their tensors:
//! - v5.0: no gate; decay and bonus per head (`time_first`, used as `exp(time_first)`);
//! - v5.1: adds the SiLU gate (`gate.weight`, `time_mix_g`); decay per head;
//! - v5.2: decay and bonus per channel (`time_decay`, `time_faaaa`: H × N).
//!
//! The bonus is `exp(time_first)` when stored as `time_first`, and used as is when stored as
//! `time_faaaa` (the official package's rule). Decay is `exp(−exp(time_decay))`.

use super::ffn::{current_to_prev_mix, ReceptanceFfn};
use super::wkv::{self, wkv5};
use super::{
    Config, Embedding, Head, LayerState, Model, State, TimeStateLayout, Version, VersionInfo,
    Weights,
};
use crate::checkpoint::Checkpoint;
use crate::kernels;
use crate::ops::{forward_all, group_norm, layer_norm, lerp, token_shift, Linear, Mat};
use anyhow::{bail, Result};

/// v5's row in the registry ([`super::VERSIONS`]): v5.0, v5.1 and v5.2.
pub const INFO: VersionInfo = VersionInfo {
    versions: &[Version::V5_0, Version::V5_1, Version::V5_2],
    identified_by: "v5 (blocks.0.att.ln_x.weight)",
    detect,
    load: |w, version| Ok(Box::new(RwkvV5::load(w, version)?)),
    wkv_len: wkv::matrix_state_len,
    wkv_init: wkv::matrix_initial_state,
    // The official package transposes a `time_state` into v5/v6's key × value state.
    time_state: TimeStateLayout::Transposed,
    low_rank: &[],
};

/// v5 has `ln_x`; v5.0 no gate; v5.2 a per-channel decay (v5.1 a per-head one).
fn detect(ckpt: &Checkpoint) -> Result<Option<Version>> {
    let has = |n: &str| ckpt.contains(n);
    if !has("blocks.0.att.ln_x.weight") {
        return Ok(None);
    }
    if !has("blocks.0.att.gate.weight") {
        return Ok(Some(Version::V5_0));
    }
    let decay = ckpt
        .meta("blocks.0.att.time_decay")
        .ok_or_else(|| anyhow::anyhow!("RWKV v5 layout without tensor blocks.0.att.time_decay"))?;
    let per_channel = decay.shape.iter().filter(|&&d| d > 1).count() > 1;
    Ok(Some(if per_channel {
        Version::V5_2
    } else {
        Version::V5_1
    }))
}

struct Layer {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    mix_k: Vec<f32>,
    mix_v: Vec<f32>,
    mix_r: Vec<f32>,
    /// Per channel (decay and bonus of each key channel).
    decay: Mat,
    bonus: Vec<f32>,
    receptance: Linear,
    key: Linear,
    value: Linear,
    /// v5.1 and v5.2: the SiLU output gate and its mix.
    gate: Option<(Vec<f32>, Linear)>,
    output: Linear,
    ln_x_w: Vec<f32>,
    ln_x_b: Vec<f32>,
    ffn: ReceptanceFfn,
}

pub struct RwkvV5 {
    cfg: Config,
    emb: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

/// Reads `name` and expands per-head values (H) to per-channel (H·N); per-channel values
/// pass through.
fn per_channel(att: &Weights, name: &str, n_head: usize, head_size: usize) -> Result<Vec<f32>> {
    let v = att.vector_any(name)?;
    if v.len() == n_head * head_size {
        Ok(v)
    } else if v.len() == n_head {
        Ok(v.iter()
            .flat_map(|&x| std::iter::repeat_n(x, head_size))
            .collect())
    } else {
        bail!(
            "tensor {} has {} values, expected {n_head} (per head) or {} (per channel)",
            att.path(name),
            v.len(),
            n_head * head_size
        )
    }
}

impl RwkvV5 {
    pub fn load(w: &Weights, version: Version) -> Result<Self> {
        let vocab = w.dim("emb.weight", 2, 0)?;
        let c = w.dim("emb.weight", 2, 1)?;
        let n_layer = super::count_layers(w.ckpt)?;
        let n_att = w.dim("blocks.0.att.key.weight", 2, 0)?;
        let n_head = w.shape("blocks.0.att.time_decay")?[0];
        if n_head == 0 || n_att % n_head != 0 {
            bail!("tensor blocks.0.att.time_decay: {n_head} heads do not divide the width {n_att}");
        }
        let head_size = n_att / n_head;
        let gated = version != Version::V5_0;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let b = w.pp(format!("blocks.{i}"));
            let att = b.pp("att");
            let decay = per_channel(&att, "time_decay", n_head, head_size)?;
            let decay = decay.into_iter().map(|d| (-d.exp()).exp()).collect();
            let bonus = if att.has("time_faaaa") {
                per_channel(&att, "time_faaaa", n_head, head_size)?
            } else {
                let raw = per_channel(&att, "time_first", n_head, head_size)?;
                raw.into_iter().map(f32::exp).collect()
            };
            let mix = |m: &str| -> Result<Vec<f32>> {
                Ok(current_to_prev_mix(
                    att.vector(&format!("time_mix_{m}"), c)?,
                ))
            };
            let gate = if gated {
                Some((mix("g")?, att.linear("gate.weight", n_att, c)?))
            } else {
                None
            };
            layers.push(Layer {
                ln1_w: b.vector("ln1.weight", c)?,
                ln1_b: b.vector("ln1.bias", c)?,
                ln2_w: b.vector("ln2.weight", c)?,
                ln2_b: b.vector("ln2.bias", c)?,
                mix_k: mix("k")?,
                mix_v: mix("v")?,
                mix_r: mix("r")?,
                decay: Mat::from_vec(1, n_att, decay),
                bonus,
                receptance: att.linear("receptance.weight", n_att, c)?,
                key: att.linear("key.weight", n_att, c)?,
                value: att.linear("value.weight", n_att, c)?,
                gate,
                output: att.linear("output.weight", c, n_att)?,
                ln_x_w: att.vector("ln_x.weight", n_att)?,
                ln_x_b: att.vector("ln_x.bias", n_att)?,
                ffn: ReceptanceFfn::load(&b.pp("ffn"), c, false)?,
            });
        }
        let cfg = Config {
            version,
            n_layer,
            n_embd: c,
            n_att,
            n_ffn: layers[0].ffn.n_ffn(),
            n_head,
            head_size,
            vocab_size: vocab,
            n_params: w.ckpt.n_elements(),
        };
        Ok(Self {
            emb: Embedding::load(w, vocab, c)?,
            head: Head::load(w, vocab, c)?,
            layers,
            cfg,
        })
    }

    fn time_mix(&self, l: &Layer, xx: &Mat, s: &mut LayerState) -> Result<Mat> {
        let prev = token_shift(xx, &mut s.att_shift);
        let [xr, xk, xv] = [&l.mix_r, &l.mix_k, &l.mix_v].map(|m| lerp(xx, &prev, m));
        let xg = l.gate.as_ref().map(|(mix_g, _)| lerp(xx, &prev, mix_g));
        // r, k, v (and the gate): one call of the thread pool for a token.
        let mut products = vec![(&l.receptance, &xr), (&l.key, &xk), (&l.value, &xv)];
        products.extend(
            l.gate
                .as_ref()
                .zip(xg.as_ref())
                .map(|((_, gate), xg)| (gate, xg)),
        );
        let mut outs = forward_all(&products)?.into_iter();
        let mut next = || outs.next().expect("one output per product");
        let (r, k, v) = (next(), next(), next());
        let g = l.gate.as_ref().map(|_| next().apply(kernels::silu));
        let mut out = wkv5(&r, &k, &v, &l.decay, &l.bonus, self.cfg.n_head, &mut s.wkv);
        group_norm(&mut out, self.cfg.n_head, &l.ln_x_w, &l.ln_x_b, 64e-5);
        if let Some(g) = g {
            out = out.hadamard(&g);
        }
        l.output.forward(&out)
    }
}

impl Model for RwkvV5 {
    fn config(&self) -> &Config {
        &self.cfg
    }

    fn forward_seq(&self, tokens: &[u32], state: &mut State, all_logits: bool) -> Result<Vec<f32>> {
        super::check_call(&self.cfg, tokens, state)?;
        let mut x = self.emb.lookup(tokens)?;
        for (l, s) in self.layers.iter().zip(state.layers.iter_mut()) {
            let xx = layer_norm(&x, &l.ln1_w, &l.ln1_b);
            x.add_assign(&self.time_mix(l, &xx, s)?);
            let xx = layer_norm(&x, &l.ln2_w, &l.ln2_b);
            x.add_assign(&l.ffn.forward(&xx, s)?);
        }
        self.head.logits(&x, all_logits)
    }
}
