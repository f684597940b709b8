//! RWKV-7 ("Goose", x070): the generalised delta rule.
//!
//! Per head (N × N state `S`, rows indexed by value channel, columns by key channel):
//!
//! ```text
//! S ← S·diag(w) + (S·(−κ̂))·(κ̂ ⊙ a)ᵀ + v·kᵀ        out = S·r
//! ```
//!
//! with a data-dependent decay `w = exp(−e^{−0.5}·σ(w0 + LoRA_w(x)))`, in-context learning rate
//! `a = σ(a0 + LoRA_a(x))`, normalised removal key `κ̂ = normalize(k ⊙ k_k)`, the key
//! `k ⊙ (1 + (a − 1) ⊙ k_a)`, and (layers ≥ 1) the value mixed with layer 0's value
//! ("value residual"). Equations as in BlinkDL's RWKV-LM `RWKV-v7` and the `rwkv` package.

use super::{Config, Embedding, Head, LayerState, Model, State, Version, Weights};
use crate::ops::{add_row, group_norm, layer_norm, lerp, sigmoid, token_shift, Linear, Mat};
use anyhow::Result;

struct Lora {
    down: Linear,
    up: Linear,
}

impl Lora {
    fn load(w: &Weights, p: &str, a: &str, b: &str, c: usize) -> Result<Self> {
        let rank = w.dim(&format!("{p}{a}"), 2, 1)?;
        Ok(Self {
            down: w.lora(&format!("{p}{a}"), c, rank)?,
            up: w.lora(&format!("{p}{b}"), rank, c)?,
        })
    }
    /// `up(f(down(x)))`.
    fn apply(&self, x: &Mat, f: impl Fn(f32) -> f32) -> Result<Mat> {
        self.up.forward(&self.down.forward(x)?.map(f))
    }
}

struct Layer {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    x_r: Vec<f32>,
    x_w: Vec<f32>,
    x_k: Vec<f32>,
    x_v: Vec<f32>,
    x_a: Vec<f32>,
    x_g: Vec<f32>,
    w0: Vec<f32>,
    w_lora: Lora,
    a0: Vec<f32>,
    a_lora: Lora,
    /// Value-residual gate; absent in layer 0, whose value *is* the residual.
    v_mix: Option<(Vec<f32>, Lora)>,
    g_lora: Lora,
    k_k: Vec<f32>,
    k_a: Vec<f32>,
    r_k: Vec<f32>,
    receptance: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    ln_x_w: Vec<f32>,
    ln_x_b: Vec<f32>,
    ffn_x_k: Vec<f32>,
    ffn_key: Linear,
    ffn_value: Linear,
}

pub struct RwkvV7 {
    cfg: Config,
    emb: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

impl RwkvV7 {
    pub fn load(w: &Weights) -> Result<Self> {
        let vocab = w.dim("emb.weight", 2, 0)?;
        let c = w.dim("emb.weight", 2, 1)?;
        let n_layer = super::count_layers(w.ckpt)?;
        let (n_head, head_size) = {
            let s = w.shape("blocks.0.att.r_k")?;
            if s.len() != 2 || s[0] * s[1] != c {
                anyhow::bail!("tensor blocks.0.att.r_k has shape {s:?}, expected (heads, head size) with heads × head size = {c}");
            }
            (s[0], s[1])
        };
        let n_ffn = w.dim("blocks.0.ffn.key.weight", 2, 0)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blocks.{i}.");
            let a = format!("blocks.{i}.att.");
            let f = format!("blocks.{i}.ffn.");
            let v_mix = if i == 0 {
                None
            } else {
                Some((
                    w.vector(&format!("{a}v0"), c)?,
                    Lora::load(w, &a, "v1", "v2", c)?,
                ))
            };
            layers.push(Layer {
                ln1_w: w.vector(&format!("{p}ln1.weight"), c)?,
                ln1_b: w.vector(&format!("{p}ln1.bias"), c)?,
                ln2_w: w.vector(&format!("{p}ln2.weight"), c)?,
                ln2_b: w.vector(&format!("{p}ln2.bias"), c)?,
                x_r: w.vector(&format!("{a}x_r"), c)?,
                x_w: w.vector(&format!("{a}x_w"), c)?,
                x_k: w.vector(&format!("{a}x_k"), c)?,
                x_v: w.vector(&format!("{a}x_v"), c)?,
                x_a: w.vector(&format!("{a}x_a"), c)?,
                x_g: w.vector(&format!("{a}x_g"), c)?,
                w0: w.vector(&format!("{a}w0"), c)?,
                w_lora: Lora::load(w, &a, "w1", "w2", c)?,
                a0: w.vector(&format!("{a}a0"), c)?,
                a_lora: Lora::load(w, &a, "a1", "a2", c)?,
                v_mix,
                g_lora: Lora::load(w, &a, "g1", "g2", c)?,
                k_k: w.vector(&format!("{a}k_k"), c)?,
                k_a: w.vector(&format!("{a}k_a"), c)?,
                r_k: w.vector(&format!("{a}r_k"), c)?,
                receptance: w.linear(&format!("{a}receptance.weight"), c, c)?,
                key: w.linear(&format!("{a}key.weight"), c, c)?,
                value: w.linear(&format!("{a}value.weight"), c, c)?,
                output: w.linear(&format!("{a}output.weight"), c, c)?,
                ln_x_w: w.vector(&format!("{a}ln_x.weight"), c)?,
                ln_x_b: w.vector(&format!("{a}ln_x.bias"), c)?,
                ffn_x_k: w.vector(&format!("{f}x_k"), c)?,
                ffn_key: w.linear(&format!("{f}key.weight"), n_ffn, c)?,
                ffn_value: w.linear(&format!("{f}value.weight"), c, n_ffn)?,
            });
        }
        let cfg = Config {
            version: Version::V7,
            n_layer,
            n_embd: c,
            n_att: c,
            n_ffn,
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

    /// The time-mix block: `xx` is the block's normalised input; returns its output.
    fn time_mix(
        &self,
        l: &Layer,
        xx: &Mat,
        s: &mut LayerState,
        v_first: &mut Option<Mat>,
    ) -> Result<Mat> {
        let (h_count, n) = (self.cfg.n_head, self.cfg.head_size);
        let prev = token_shift(xx, &mut s.att_shift);
        let r = l.receptance.forward(&lerp(xx, &prev, &l.x_r))?;
        let mut k = l.key.forward(&lerp(xx, &prev, &l.x_k))?;
        let xv = lerp(xx, &prev, &l.x_v);
        let mut v = l.value.forward(&xv)?;
        // Decay: w = exp(-e^-0.5 · σ(w0 + LoRA(x))), in (e^{-0.607}, 1).
        let w = add_row(l.w_lora.apply(&lerp(xx, &prev, &l.x_w), f32::tanh)?, &l.w0)
            .map(|z| (-0.606_531_f32 * sigmoid(z)).exp());
        let a = add_row(l.a_lora.apply(&lerp(xx, &prev, &l.x_a), |z| z)?, &l.a0).map(sigmoid);
        let g = l.g_lora.apply(&lerp(xx, &prev, &l.x_g), sigmoid)?;

        // κ̂ = normalize(k ⊙ k_k) per head; then k ← k ⊙ (1 + (a − 1) ⊙ k_a).
        let t_count = xx.rows;
        let mut kk = k.clone();
        for t in 0..t_count {
            let row = kk.row_mut(t);
            for (x, m) in row.iter_mut().zip(&l.k_k) {
                *x *= m;
            }
            for h in row.chunks_mut(n) {
                let norm = h.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                h.iter_mut().for_each(|x| *x /= norm);
            }
            let (kr, ar) = (k.row_mut(t), a.row(t));
            for ((x, av), ka) in kr.iter_mut().zip(ar).zip(&l.k_a) {
                *x *= 1.0 + (av - 1.0) * ka;
            }
        }

        // Value residual: layer 0 keeps its value for the others.
        match (&l.v_mix, v_first.as_ref()) {
            (None, _) => *v_first = Some(v.clone()),
            (Some((v0, lora)), Some(vf)) => {
                let gate = add_row(lora.apply(&xv, |z| z)?, v0).map(sigmoid);
                for ((x, f), gt) in v.data.iter_mut().zip(&vf.data).zip(&gate.data) {
                    *x += (f - *x) * gt;
                }
            }
            (Some(_), None) => anyhow::bail!("v7: layer 0 must run before the value residual"),
        }

        // The recurrence: heads in parallel, each stepping through the tokens.
        let mut out = super::wkv::wkv7(&mut s.wkv, h_count, n, &r, &w, &k, &v, &kk, &a);

        group_norm(&mut out, h_count, &l.ln_x_w, &l.ln_x_b, 64e-5);
        // Bonus: + (Σ_head r ⊙ k ⊙ r_k) · v.
        for t in 0..t_count {
            let (rt, kt, vt) = (r.row(t), k.row(t), v.row(t));
            let ot = out.row_mut(t);
            for h in 0..h_count {
                let hs = h * n..(h + 1) * n;
                let bonus: f32 = hs.clone().map(|j| rt[j] * kt[j] * l.r_k[j]).sum();
                for j in hs {
                    ot[j] += bonus * vt[j];
                }
            }
        }
        l.output.forward(&out.hadamard(&g))
    }

    /// The channel-mix block (squared-ReLU FFN, no receptance in v7).
    fn channel_mix(&self, l: &Layer, xx: &Mat, s: &mut LayerState) -> Result<Mat> {
        let prev = token_shift(xx, &mut s.ffn_shift);
        let k = l.ffn_key.forward(&lerp(xx, &prev, &l.ffn_x_k))?.map(|z| {
            let r = z.max(0.0);
            r * r
        });
        l.ffn_value.forward(&k)
    }
}

impl Model for RwkvV7 {
    fn config(&self) -> &Config {
        &self.cfg
    }

    fn forward_seq(&self, tokens: &[u32], state: &mut State, all_logits: bool) -> Result<Vec<f32>> {
        super::check_call(&self.cfg, tokens, state)?;
        let mut x = self.emb.lookup(tokens)?;
        let mut v_first = None;
        for (l, s) in self.layers.iter().zip(state.layers.iter_mut()) {
            let xx = layer_norm(&x, &l.ln1_w, &l.ln1_b);
            x.add_assign(&self.time_mix(l, &xx, s, &mut v_first)?);
            let xx = layer_norm(&x, &l.ln2_w, &l.ln2_b);
            x.add_assign(&self.channel_mix(l, &xx, s)?);
        }
        self.head.logits(&x, all_logits)
    }
}
