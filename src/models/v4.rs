//! RWKV-4 ("Dove"): a per-channel weighted average of values, kept in a numerically safe
//! form. For each channel, with decay `w = −exp(time_decay)` and bonus `u = time_first`:
//!
//! ```text
//! wkv_t = (Σ_{i<t} e^{(t−1−i)w + k_i} v_i + e^{u + k_t} v_t) / (same without v)
//! ```
//!
//! computed recurrently with numerator `aa`, denominator `bb` and a running maximum exponent
//! `pp` that keeps every `exp` ≤ 1 (`pp` starts at −1e30: a state of zeros is wrong); the
//! recurrence is [`super::wkv::wkv4`].

use super::ffn::{current_to_prev_mix, ReceptanceFfn};
use super::wkv::{self, wkv4};
use super::{
    Config, Embedding, Head, LayerState, Model, State, TimeStateLayout, Version, VersionInfo,
    Weights,
};
use crate::kernels;
use crate::ops::{forward_all, layer_norm, lerp, token_shift, Linear, Mat};
use anyhow::Result;

/// v4's row in the registry ([`super::VERSIONS`]).
pub const INFO: VersionInfo = VersionInfo {
    versions: &[Version::V4],
    identified_by: "v4 (blocks.0.att.time_mix_k)",
    detect: |ckpt| {
        let v4 =
            ckpt.contains("blocks.0.att.time_mix_k") && ckpt.contains("blocks.0.att.time_decay");
        Ok(v4.then_some(Version::V4))
    },
    load: |w, _| Ok(Box::new(RwkvV4::load(w)?)),
    wkv_len: wkv::wkv4_state_len,
    wkv_init: wkv::wkv4_initial_state,
    time_state: TimeStateLayout::Unsupported,
    low_rank: &[],
};

struct Layer {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    mix_k: Vec<f32>,
    mix_v: Vec<f32>,
    mix_r: Vec<f32>,
    /// `−exp(time_decay)`.
    decay: Vec<f32>,
    bonus: Vec<f32>,
    receptance: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    ffn: ReceptanceFfn,
}

pub struct RwkvV4 {
    cfg: Config,
    emb: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

impl RwkvV4 {
    pub fn load(w: &Weights) -> Result<Self> {
        let vocab = w.dim("emb.weight", 2, 0)?;
        let c = w.dim("emb.weight", 2, 1)?;
        let n_layer = super::count_layers(w.ckpt)?;
        let n_att = w.dim("blocks.0.att.key.weight", 2, 0)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let b = w.pp(format!("blocks.{i}"));
            let att = b.pp("att");
            let mix = |m: &str| -> Result<Vec<f32>> {
                Ok(current_to_prev_mix(
                    att.vector(&format!("time_mix_{m}"), c)?,
                ))
            };
            layers.push(Layer {
                ln1_w: b.vector("ln1.weight", c)?,
                ln1_b: b.vector("ln1.bias", c)?,
                ln2_w: b.vector("ln2.weight", c)?,
                ln2_b: b.vector("ln2.bias", c)?,
                mix_k: mix("k")?,
                mix_v: mix("v")?,
                mix_r: mix("r")?,
                decay: att
                    .vector("time_decay", n_att)?
                    .into_iter()
                    .map(|d| -d.exp())
                    .collect(),
                bonus: att.vector("time_first", n_att)?,
                receptance: att.linear("receptance.weight", n_att, c)?,
                key: att.linear("key.weight", n_att, c)?,
                value: att.linear("value.weight", n_att, c)?,
                output: att.linear("output.weight", c, n_att)?,
                ffn: ReceptanceFfn::load(&b.pp("ffn"), c, false)?,
            });
        }
        let cfg = Config {
            version: Version::V4,
            n_layer,
            n_embd: c,
            n_att,
            n_ffn: layers[0].ffn.n_ffn(),
            n_head: 1,
            head_size: 1,
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
        // r, k, v: one call of the thread pool for a token.
        let [r, k, v]: [Mat; 3] =
            forward_all(&[(&l.receptance, &xr), (&l.key, &xk), (&l.value, &xv)])?
                .try_into()
                .expect("one output per product");
        let out = wkv4(
            &r.apply(kernels::sigmoid),
            &k,
            &v,
            &l.decay,
            &l.bonus,
            &mut s.wkv,
        );
        l.output.forward(&out)
    }
}

impl Model for RwkvV4 {
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
