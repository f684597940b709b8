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

use super::wkv::{self, wkv7};
use super::{Config, Embedding, Head, LayerState, Model, State, Version, VersionInfo, Weights};
use crate::ops::{add_row, group_norm, layer_norm, lerp, sigmoid, token_shift, Linear, Mat};
use anyhow::Result;

/// v7's row in the registry ([`super::VERSIONS`]).
pub const INFO: VersionInfo = VersionInfo {
    versions: &[Version::V7],
    identified_by: "v7 (blocks.0.att.r_k)",
    detect: |ckpt| {
        let has = |n: &str| ckpt.contains(n);
        let v7 = has("blocks.0.att.r_k") || has("blocks.0.att.w0") || has("blocks.0.att.x_r");
        Ok(v7.then_some(Version::V7))
    },
    load: |w, _| Ok(Box::new(RwkvV7::load(w)?)),
    wkv_len: wkv::matrix_state_len,
    wkv_init: wkv::matrix_initial_state,
};

struct Lora {
    down: Linear,
    up: Linear,
}

impl Lora {
    /// The pair `down`, `up` (e.g. `w1`, `w2`) of the scope `att`.
    fn load(att: &Weights, down: &str, up: &str, c: usize) -> Result<Self> {
        let rank = att.dim(down, 2, 1)?;
        Ok(Self {
            down: att.lora(down, c, rank)?,
            up: att.lora(up, rank, c)?,
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
            let b = w.pp(format!("blocks.{i}"));
            let (att, ffn) = (b.pp("att"), b.pp("ffn"));
            let v_mix = if i == 0 {
                None
            } else {
                Some((att.vector("v0", c)?, Lora::load(&att, "v1", "v2", c)?))
            };
            layers.push(Layer {
                ln1_w: b.vector("ln1.weight", c)?,
                ln1_b: b.vector("ln1.bias", c)?,
                ln2_w: b.vector("ln2.weight", c)?,
                ln2_b: b.vector("ln2.bias", c)?,
                x_r: att.vector("x_r", c)?,
                x_w: att.vector("x_w", c)?,
                x_k: att.vector("x_k", c)?,
                x_v: att.vector("x_v", c)?,
                x_a: att.vector("x_a", c)?,
                x_g: att.vector("x_g", c)?,
                w0: att.vector("w0", c)?,
                w_lora: Lora::load(&att, "w1", "w2", c)?,
                a0: att.vector("a0", c)?,
                a_lora: Lora::load(&att, "a1", "a2", c)?,
                v_mix,
                g_lora: Lora::load(&att, "g1", "g2", c)?,
                k_k: att.vector("k_k", c)?,
                k_a: att.vector("k_a", c)?,
                r_k: att.vector("r_k", c)?,
                receptance: att.linear("receptance.weight", c, c)?,
                key: att.linear("key.weight", c, c)?,
                value: att.linear("value.weight", c, c)?,
                output: att.linear("output.weight", c, c)?,
                ln_x_w: att.vector("ln_x.weight", c)?,
                ln_x_b: att.vector("ln_x.bias", c)?,
                ffn_x_k: ffn.vector("x_k", c)?,
                ffn_key: ffn.linear("key.weight", n_ffn, c)?,
                ffn_value: ffn.linear("value.weight", c, n_ffn)?,
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
        let mut out = wkv7(&mut s.wkv, h_count, n, &r, &w, &k, &v, &kk, &a);

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

    fn step_batch(&self, tokens: &[u32], states: &mut [&mut State]) -> Result<Vec<f32>> {
        self.step_batch_v7(tokens, states)
    }
}

/// Token shift for a batch of independent sequences: row `b` is one token of sequence `b`,
/// whose previous token's input is `prevs[b]`; each `prevs[b]` becomes its row.
fn token_shift_rows(xx: &Mat, prevs: &mut [&mut [f32]]) -> Mat {
    let mut out = Mat::zeros(xx.rows, xx.cols);
    for (b, prev) in prevs.iter_mut().enumerate() {
        out.row_mut(b).copy_from_slice(prev);
        prev.copy_from_slice(xx.row(b));
    }
    out
}

/// Row `t` of `m` as a one-row matrix.
fn row_mat(m: &Mat, t: usize) -> Mat {
    Mat::from_vec(1, m.cols, m.row(t).to_vec())
}

impl RwkvV7 {
    /// [`RwkvV7::time_mix`] for a batch: row `b` of `xx` is one token of the sequence whose
    /// layer state is `states[b]`. The projections and LoRAs run once over all rows (one read
    /// of the weights); the token shift and the WKV recurrence use each row's own state.
    fn time_mix_batch(
        &self,
        l: &Layer,
        xx: &Mat,
        states: &mut [&mut LayerState],
        v_first: &mut Option<Mat>,
    ) -> Result<Mat> {
        let (h_count, n) = (self.cfg.n_head, self.cfg.head_size);
        let prev = {
            let mut prevs: Vec<&mut [f32]> = states
                .iter_mut()
                .map(|s| s.att_shift.as_mut_slice())
                .collect();
            token_shift_rows(xx, &mut prevs)
        };
        let r = l.receptance.forward(&lerp(xx, &prev, &l.x_r))?;
        let mut k = l.key.forward(&lerp(xx, &prev, &l.x_k))?;
        let xv = lerp(xx, &prev, &l.x_v);
        let mut v = l.value.forward(&xv)?;
        let w = add_row(l.w_lora.apply(&lerp(xx, &prev, &l.x_w), f32::tanh)?, &l.w0)
            .map(|z| (-0.606_531_f32 * sigmoid(z)).exp());
        let a = add_row(l.a_lora.apply(&lerp(xx, &prev, &l.x_a), |z| z)?, &l.a0).map(sigmoid);
        let g = l.g_lora.apply(&lerp(xx, &prev, &l.x_g), sigmoid)?;

        let b_count = xx.rows;
        let mut kk = k.clone();
        for t in 0..b_count {
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

        // The recurrence: each row on its own sequence's state.
        let mut out = Mat::zeros(b_count, xx.cols);
        for (t, s) in states.iter_mut().enumerate() {
            let o = wkv7(
                &mut s.wkv,
                h_count,
                n,
                &row_mat(&r, t),
                &row_mat(&w, t),
                &row_mat(&k, t),
                &row_mat(&v, t),
                &row_mat(&kk, t),
                &row_mat(&a, t),
            );
            out.row_mut(t).copy_from_slice(&o.data);
        }

        group_norm(&mut out, h_count, &l.ln_x_w, &l.ln_x_b, 64e-5);
        for t in 0..b_count {
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

    /// [`RwkvV7::channel_mix`] for a batch (rows as in [`RwkvV7::time_mix_batch`]).
    fn channel_mix_batch(
        &self,
        l: &Layer,
        xx: &Mat,
        states: &mut [&mut LayerState],
    ) -> Result<Mat> {
        let prev = {
            let mut prevs: Vec<&mut [f32]> = states
                .iter_mut()
                .map(|s| s.ffn_shift.as_mut_slice())
                .collect();
            token_shift_rows(xx, &mut prevs)
        };
        let k = l.ffn_key.forward(&lerp(xx, &prev, &l.ffn_x_k))?.map(|z| {
            let r = z.max(0.0);
            r * r
        });
        l.ffn_value.forward(&k)
    }

    /// One token for each of B independent sequences: see [`Model::step_batch`].
    pub fn step_batch_v7(&self, tokens: &[u32], states: &mut [&mut State]) -> Result<Vec<f32>> {
        if tokens.len() != states.len() {
            anyhow::bail!(
                "step_batch: {} tokens for {} states",
                tokens.len(),
                states.len()
            );
        }
        if tokens.len() == 1 {
            return self.step(tokens[0], states[0]);
        }
        for (t, s) in tokens.iter().zip(states.iter()) {
            super::check_call(&self.cfg, std::slice::from_ref(t), s)?;
        }
        let mut x = self.emb.lookup(tokens)?;
        let mut v_first = None;
        for (i, l) in self.layers.iter().enumerate() {
            let mut ls: Vec<&mut LayerState> =
                states.iter_mut().map(|s| &mut s.layers[i]).collect();
            let xx = layer_norm(&x, &l.ln1_w, &l.ln1_b);
            x.add_assign(&self.time_mix_batch(l, &xx, &mut ls, &mut v_first)?);
            let xx = layer_norm(&x, &l.ln2_w, &l.ln2_b);
            x.add_assign(&self.channel_mix_batch(l, &xx, &mut ls)?);
        }
        self.head.logits(&x, true)
    }
}
