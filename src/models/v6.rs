//! RWKV-6 ("Finch"): RWKV-5's matrix-valued state with data-dependent token shift and decay.
//!
//! The token shift of each projection is `x + (prev − x)·(maa_* + m_*)`, where the five
//! `m_*` (w, k, v, r, g) come from one shared LoRA (`time_maa_w1`, `time_maa_w2`); the decay is
//! `exp(−exp(time_decay + LoRA_decay(x_w)))` per channel and per token; the bonus `time_faaaa`
//! is used as is. The recurrence and output are RWKV-5.2's.

use super::ffn::ReceptanceFfn;
use super::wkv::{self, wkv5};
use super::{
    Config, Embedding, Head, LayerState, Model, State, TimeStateLayout, Version, VersionInfo,
    Weights,
};
use crate::kernels;
use crate::ops::{add_row, forward_all, group_norm, layer_norm, lerp, token_shift, Linear, Mat};
use anyhow::{bail, Result};

/// v6's row in the registry ([`super::VERSIONS`]).
pub const INFO: VersionInfo = VersionInfo {
    versions: &[Version::V6],
    identified_by: "v6 (blocks.0.att.time_maa_x)",
    detect: |ckpt| {
        Ok(ckpt
            .contains("blocks.0.att.time_maa_x")
            .then_some(Version::V6))
    },
    load: |w, _| Ok(Box::new(RwkvV6::load(w)?)),
    wkv_len: wkv::matrix_state_len,
    wkv_init: wkv::matrix_initial_state,
    // The official package transposes a `time_state` into v5/v6's key × value state.
    time_state: TimeStateLayout::Transposed,
    low_rank: &[
        ".att.time_maa_w1",
        ".att.time_maa_w2",
        ".att.time_decay_w1",
        ".att.time_decay_w2",
    ],
};

struct Layer {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    maa_x: Vec<f32>,
    /// Static mixes in the order w, k, v, r, g.
    maa: [Vec<f32>; 5],
    /// x → 5·D (tanh), then one D → C matrix per mix.
    maa_down: Linear,
    maa_up: Vec<Linear>,
    decay: Vec<f32>,
    decay_down: Linear,
    decay_up: Linear,
    bonus: Vec<f32>,
    receptance: Linear,
    key: Linear,
    value: Linear,
    gate: Linear,
    output: Linear,
    ln_x_w: Vec<f32>,
    ln_x_b: Vec<f32>,
    ffn: ReceptanceFfn,
}

pub struct RwkvV6 {
    cfg: Config,
    emb: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

impl RwkvV6 {
    pub fn load(w: &Weights) -> Result<Self> {
        let vocab = w.dim("emb.weight", 2, 0)?;
        let c = w.dim("emb.weight", 2, 1)?;
        let n_layer = super::count_layers(w.ckpt)?;
        let n_att = w.dim("blocks.0.att.key.weight", 2, 0)?;
        let (n_head, head_size) = {
            let s = w.shape("blocks.0.att.time_faaaa")?;
            if s.len() != 2 || s[0] * s[1] != n_att {
                bail!("tensor blocks.0.att.time_faaaa has shape {s:?}, expected (heads, head size) with heads × head size = {n_att}");
            }
            (s[0], s[1])
        };
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let b = w.pp(format!("blocks.{i}"));
            let att = b.pp("att");
            let lora5 = att.dim("time_maa_w1", 2, 1)?;
            if lora5 % 5 != 0 {
                bail!(
                    "tensor {}: its second dimension {lora5} is not 5 × rank",
                    att.path("time_maa_w1")
                );
            }
            let d = lora5 / 5;
            let up_all = att.tensor("time_maa_w2", &[5, d, c])?;
            let up_format = att.low_rank_format("time_maa_w2");
            let maa_up = up_all
                .chunks_exact(d * c)
                .map(|m| Linear::from_in_out(m.to_vec(), d, c, up_format))
                .collect::<Result<Vec<_>>>()?;
            let d2 = att.dim("time_decay_w1", 2, 1)?;
            let v = |n: &str| att.vector(n, c);
            layers.push(Layer {
                ln1_w: b.vector("ln1.weight", c)?,
                ln1_b: b.vector("ln1.bias", c)?,
                ln2_w: b.vector("ln2.weight", c)?,
                ln2_b: b.vector("ln2.bias", c)?,
                maa_x: v("time_maa_x")?,
                maa: [
                    v("time_maa_w")?,
                    v("time_maa_k")?,
                    v("time_maa_v")?,
                    v("time_maa_r")?,
                    v("time_maa_g")?,
                ],
                maa_down: att.lora("time_maa_w1", c, lora5)?,
                maa_up,
                decay: att.vector("time_decay", n_att)?,
                decay_down: att.lora("time_decay_w1", c, d2)?,
                decay_up: att.lora("time_decay_w2", d2, n_att)?,
                bonus: att.vector("time_faaaa", n_att)?,
                receptance: att.linear("receptance.weight", n_att, c)?,
                key: att.linear("key.weight", n_att, c)?,
                value: att.linear("value.weight", n_att, c)?,
                gate: att.linear("gate.weight", n_att, c)?,
                output: att.linear("output.weight", c, n_att)?,
                ln_x_w: att.vector("ln_x.weight", n_att)?,
                ln_x_b: att.vector("ln_x.bias", n_att)?,
                ffn: ReceptanceFfn::load(&b.pp("ffn"), c, true)?,
            });
        }
        let cfg = Config {
            version: Version::V6,
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
        // Data-dependent mixes: m = tanh(lerp(x, prev, maa_x) · W1), split in 5 × D.
        let m = l
            .maa_down
            .forward(&lerp(xx, &prev, &l.maa_x))?
            .apply(kernels::tanh);
        let d = l.maa_up[0].in_dim;
        let parts: Vec<Mat> = (0..l.maa_up.len())
            .map(|j| {
                let mut part = Mat::zeros(m.rows, d);
                for t in 0..m.rows {
                    part.row_mut(t)
                        .copy_from_slice(&m.row(t)[j * d..(j + 1) * d]);
                }
                part
            })
            .collect();
        // The five up-projections are independent: one call of the thread pool for a token.
        let ups: Vec<(&Linear, &Mat)> = l.maa_up.iter().zip(&parts).collect();
        let mut mixed = Vec::with_capacity(5);
        for (up, base) in forward_all(&ups)?.into_iter().zip(&l.maa) {
            let dyn_mix = add_row(up, base);
            // x + (prev − x)·(maa + m), the mix varying per token.
            let mut x = xx.clone();
            for t in 0..x.rows {
                let (p, mm) = (prev.row(t), dyn_mix.row(t));
                for ((o, pv), mv) in x.row_mut(t).iter_mut().zip(p).zip(mm) {
                    *o += (pv - *o) * mv;
                }
            }
            mixed.push(x);
        }
        let [xw, xk, xv, xr, xg]: [Mat; 5] = mixed
            .try_into()
            .map_err(|_| anyhow::anyhow!("v6: five mixes"))?;
        // r, k, v, g and the decay LoRA's first half: one call of the thread pool for a token.
        let [r, k, v, g, wd]: [Mat; 5] = forward_all(&[
            (&l.receptance, &xr),
            (&l.key, &xk),
            (&l.value, &xv),
            (&l.gate, &xg),
            (&l.decay_down, &xw),
        ])?
        .try_into()
        .expect("one output per product");
        let g = g.apply(kernels::silu);
        // w = exp(−exp(z)).
        let w = add_row(l.decay_up.forward(&wd.apply(kernels::tanh))?, &l.decay).apply(|z| {
            kernels::exp(z, 1.0);
            kernels::exp(z, -1.0);
        });
        let mut out = wkv5(&r, &k, &v, &w, &l.bonus, self.cfg.n_head, &mut s.wkv);
        group_norm(&mut out, self.cfg.n_head, &l.ln_x_w, &l.ln_x_b, 64e-5);
        l.output.forward(&out.hadamard(&g))
    }
}

impl Model for RwkvV6 {
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
