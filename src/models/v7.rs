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
//!
//! **DeepEmbed** ([`Version::V7DeepEmbed`], BlinkDL's `rwkv7a-*` checkpoints): the channel mix
//! of every layer is scaled per token by a matrix looked up in an embedding table of its own.
//! With `x` the block's normalised input, `x₀` the token's normalised embedding (the model's
//! input) and `E = s_emb[token] + s_emb_x·x₀` viewed as an r × r matrix (r = 32 in the
//! published files):
//!
//! ```text
//! k ← relu(W_k·lerp(x, x_prev))² ⊙ (s2ᵀ·(Eᵀ·(s1ᵀ·x)) + s0)        out = W_v·k
//! ```
//!
//! as `RWKV_x070_CMix_one` / `_seq` in the `rwkv` package (0.8.32, `RWKV_DE_VERSION=1`) and
//! RWKV-LM's `RWKV-v7/rwkv_v7a_demo.py`. The official code folds `s_emb_x` into the table at
//! load (`s_emb += ln0(emb) @ s_emb_xᵀ`, a vocab × C × r² product per layer); here it is
//! applied per token instead (an r² × C product per layer and token, about 7% of a 0.1B
//! model's work), which keeps loading as fast as for any other model.
//!
//! **DEA** (`rwkv7b-*`: DeepEmbed plus "DeepEmbedAttention", tensors `blocks.N.qkv.*`) is
//! refused with a clear message: its only reference is a demo (RWKV-LM's `rwkv_v7b_demo.py`,
//! sequence mode only, state layout written for 12 layers), the official package does not run
//! it, and its attention keeps a key/value cache that grows with the context, which the
//! fixed-size [`State`] of this crate cannot hold.

use super::wkv::{self, wkv7};
use super::{
    Config, Embedding, Head, LayerState, Model, State, TimeStateLayout, Version, VersionInfo,
    Weights,
};
use crate::checkpoint::Checkpoint;
use crate::kernels::{exp, sigmoid, tanh};
use crate::ops::{
    add_row, for_rows, forward_all, group_norm, layer_norm, lerp, token_shift, Linear, Mat,
    RowTable,
};
use anyhow::{bail, Result};

/// v7's row in the registry ([`super::VERSIONS`]).
pub const INFO: VersionInfo = VersionInfo {
    versions: &[Version::V7, Version::V7DeepEmbed],
    identified_by: "v7 (blocks.0.att.r_k)",
    detect,
    load: |w, version| Ok(Box::new(RwkvV7::load(w, version)?)),
    wkv_len: wkv::matrix_state_len,
    wkv_init: wkv::matrix_initial_state,
    // RWKV-PEFT trains, and RWKV-Runner loads, v7 states in the package's value × key layout.
    time_state: TimeStateLayout::AsStored,
    low_rank: &[
        ".att.w1", ".att.w2", ".att.a1", ".att.a2", ".att.v1", ".att.v2", ".att.g1", ".att.g2",
        ".ffn.s1", ".ffn.s2",
    ],
};

/// v7 has `r_k` (or `w0`, `x_r`); DeepEmbed adds `ffn.s_emb`; DEA (`qkv.*`) is refused.
fn detect(ckpt: &Checkpoint) -> Result<Option<Version>> {
    let has = |n: &str| ckpt.contains(n);
    if !(has("blocks.0.att.r_k") || has("blocks.0.att.w0") || has("blocks.0.att.x_r")) {
        return Ok(None);
    }
    if has("blocks.0.qkv.qq.weight") || has("blocks.0.qkv.k_emb.weight") {
        bail!(
            "{} is an RWKV-7 DEA checkpoint (rwkv7b: DeepEmbed with DeepEmbedAttention, blocks.N.qkv.*), which is not supported: its attention keeps a cache that grows with the context, and the official rwkv package does not run it",
            ckpt.path.display()
        );
    }
    Ok(Some(if has("blocks.0.ffn.s_emb.weight") {
        Version::V7DeepEmbed
    } else {
        Version::V7
    }))
}

/// One layer's DeepEmbed weights (see the module documentation).
struct DeepEmbed {
    /// `s_emb.weight`: per token, an r × r matrix (vocab × r²), in the compute dtype.
    table: RowTable,
    /// `s_emb_x.weight` (r², C): the part of each token's matrix made from its normalised
    /// embedding, in the compute dtype.
    from_emb: Linear,
    /// `s1` (C, r) and `s2` (r, F), used as `x @ W` and kept as the LoRAs are (the format's
    /// low-rank format).
    s1: Linear,
    s2: Linear,
    /// `s0` (F): the scale's offset.
    s0: Vec<f32>,
    /// r: the side of each token's matrix.
    rank: usize,
}

impl DeepEmbed {
    /// The weights of the scope `blocks.N.ffn`.
    fn load(ffn: &Weights, vocab: usize, c: usize, n_ffn: usize) -> Result<Self> {
        let rank = ffn.dim("s1", 2, 1)?;
        let s_emb = ffn.shape("s_emb.weight")?;
        if s_emb.len() != 2 || s_emb[1] != rank * rank {
            bail!(
                "tensor {} has shape {s_emb:?}, expected ({vocab}, {}): one {rank} × {rank} matrix per token, {rank} being the width of {}",
                ffn.path("s_emb.weight"),
                rank * rank,
                ffn.path("s1")
            );
        }
        Ok(Self {
            table: ffn.table("s_emb.weight", vocab, rank * rank)?,
            from_emb: ffn.linear("s_emb_x.weight", rank * rank, c)?,
            s1: ffn.lora("s1", c, rank)?,
            s2: ffn.lora("s2", rank, n_ffn)?,
            s0: ffn.vector("s0", n_ffn)?,
            rank,
        })
    }

    /// The per-token scale of the FFN's hidden activations: `s2ᵀ·(Eᵀ·(s1ᵀ·x)) + s0` for every
    /// row of `xx` (the block's normalised input), `x0` holding the tokens' normalised
    /// embeddings. Returns tokens × F.
    fn scale(&self, xx: &Mat, tokens: &[u32], x0: &Mat) -> Result<Mat> {
        let r = self.rank;
        let mut e = self.from_emb.forward(x0)?;
        let a = self.s1.forward(xx)?;
        let mut b = Mat::zeros(xx.rows, r);
        let mut row = vec![0.0f32; r * r];
        for (t, &tok) in tokens.iter().enumerate() {
            self.table.row_into(tok as usize, &mut row);
            let et = e.row_mut(t);
            for (x, y) in et.iter_mut().zip(&row) {
                *x += y;
            }
            // (1 × r) · (r × r), the matrix stored row-major.
            let (at, bt) = (a.row(t), b.row_mut(t));
            for (ai, ei) in at.iter().zip(et.chunks_exact(r)) {
                for (o, m) in bt.iter_mut().zip(ei) {
                    *o += ai * m;
                }
            }
        }
        Ok(add_row(self.s2.forward(&b)?, &self.s0))
    }
}

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
    /// DeepEmbed's weights (only in [`Version::V7DeepEmbed`] models).
    deep_embed: Option<DeepEmbed>,
}

pub struct RwkvV7 {
    cfg: Config,
    emb: Embedding,
    layers: Vec<Layer>,
    head: Head,
}

impl RwkvV7 {
    /// Loads a v7 model; `version` is [`Version::V7`] or [`Version::V7DeepEmbed`].
    pub fn load(w: &Weights, version: Version) -> Result<Self> {
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
                deep_embed: match version {
                    Version::V7DeepEmbed => Some(DeepEmbed::load(&ffn, vocab, c, n_ffn)?),
                    _ => None,
                },
            });
        }
        let cfg = Config {
            version,
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

    /// The time-mix block: `xx` is the block's normalised input (consecutive tokens of one
    /// sequence); returns its output.
    fn time_mix(
        &self,
        l: &Layer,
        xx: &Mat,
        s: &mut LayerState,
        v_first: &mut Option<Mat>,
    ) -> Result<Mat> {
        let (h_count, n) = (self.cfg.n_head, self.cfg.head_size);
        let prev = token_shift(xx, &mut s.att_shift);
        // The recurrence: heads in parallel, each stepping through the tokens.
        self.time_mix_with(l, xx, &prev, v_first, |r, w, k, v, kk, a| {
            wkv7(&mut s.wkv, h_count, n, r, w, k, v, kk, a)
        })
    }

    /// The time mix from its inputs `xx` and their token-shifted rows `prev`; `recurrence`
    /// runs the WKV step over (r, w, k, v, κ̂, a) on the right state(s) and returns its rows.
    #[allow(clippy::type_complexity)]
    fn time_mix_with(
        &self,
        l: &Layer,
        xx: &Mat,
        prev: &Mat,
        v_first: &mut Option<Mat>,
        recurrence: impl FnOnce(&Mat, &Mat, &Mat, &Mat, &Mat, &Mat) -> Mat,
    ) -> Result<Mat> {
        let (h_count, n) = (self.cfg.n_head, self.cfg.head_size);
        let [xr, xk, xv, xw, xa, xg] =
            [&l.x_r, &l.x_k, &l.x_v, &l.x_w, &l.x_a, &l.x_g].map(|m| lerp(xx, prev, m));
        // The projections and the LoRAs' first halves read the same inputs, then the second
        // halves read those: two groups of independent products (for one token, two calls of
        // the thread pool rather than eleven).
        let v_lora = l.v_mix.as_ref().map(|(_, lora)| lora);
        let mut first = vec![
            (&l.receptance, &xr),
            (&l.key, &xk),
            (&l.value, &xv),
            (&l.w_lora.down, &xw),
            (&l.a_lora.down, &xa),
            (&l.g_lora.down, &xg),
        ];
        first.extend(v_lora.map(|lora| (&lora.down, &xv)));
        let mut first = forward_all(&first)?.into_iter();
        let mut next = || first.next().expect("one output per product");
        let (r, mut k, mut v) = (next(), next(), next());
        let (wd, ad, gd) = (next().apply(tanh), next(), next().apply(sigmoid));
        let vd = v_lora.map(|_| next());
        let mut second = vec![
            (&l.w_lora.up, &wd),
            (&l.a_lora.up, &ad),
            (&l.g_lora.up, &gd),
        ];
        second.extend(v_lora.zip(vd.as_ref()).map(|(lora, vd)| (&lora.up, vd)));
        let mut second = forward_all(&second)?.into_iter();
        let mut next = || second.next().expect("one output per product");
        // Decay: w = exp(-e^-0.5 · σ(w0 + LoRA(x))), in (e^{-0.607}, 1).
        let w = add_row(next(), &l.w0).apply(|z| {
            sigmoid(z);
            exp(z, -0.606_531);
        });
        let a = add_row(next(), &l.a0).apply(sigmoid);
        let g = next();
        let v_up = v_lora.map(|_| next());

        // κ̂ = normalize(k ⊙ k_k) per head; then k ← k ⊙ (1 + (a − 1) ⊙ k_a).
        // Row by row (rows in parallel when large, as the other elementwise passes).
        let mut kk = k.clone();
        let c = k.cols;
        for_rows(&mut kk.data, c, |_, row| {
            for (x, m) in row.iter_mut().zip(&l.k_k) {
                *x *= m;
            }
            for h in row.chunks_mut(n) {
                let norm = h.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                h.iter_mut().for_each(|x| *x /= norm);
            }
        });
        for_rows(&mut k.data, c, |t, kr| {
            for ((x, av), ka) in kr.iter_mut().zip(a.row(t)).zip(&l.k_a) {
                *x *= 1.0 + (av - 1.0) * ka;
            }
        });

        // Value residual: layer 0 keeps its value for the others.
        match (&l.v_mix, v_first.as_ref()) {
            (None, _) => *v_first = Some(v.clone()),
            (Some((v0, _)), Some(vf)) => {
                let gate = add_row(v_up.expect("v_mix has a LoRA"), v0).apply(sigmoid);
                let c = v.cols;
                for_rows(&mut v.data, c, |t, row| {
                    for ((x, f), gt) in row.iter_mut().zip(vf.row(t)).zip(gate.row(t)) {
                        *x += (f - *x) * gt;
                    }
                });
            }
            (Some(_), None) => anyhow::bail!("v7: layer 0 must run before the value residual"),
        }

        let mut out = recurrence(&r, &w, &k, &v, &kk, &a);

        group_norm(&mut out, h_count, &l.ln_x_w, &l.ln_x_b, 64e-5);
        // Bonus: + (Σ_head r ⊙ k ⊙ r_k) · v.
        let c = out.cols;
        for_rows(&mut out.data, c, |t, ot| {
            let (rt, kt, vt) = (r.row(t), k.row(t), v.row(t));
            for h in 0..h_count {
                let hs = h * n..(h + 1) * n;
                let bonus: f32 = hs.clone().map(|j| rt[j] * kt[j] * l.r_k[j]).sum();
                for j in hs {
                    ot[j] += bonus * vt[j];
                }
            }
        });
        l.output.forward(&out.hadamard(&g))
    }

    /// The channel-mix block (squared-ReLU FFN, no receptance in v7). DeepEmbed models scale
    /// its hidden activations per token, from `tokens` and their normalised embeddings `x0`.
    fn channel_mix(
        &self,
        l: &Layer,
        xx: &Mat,
        s: &mut LayerState,
        tokens: &[u32],
        x0: Option<&Mat>,
    ) -> Result<Mat> {
        let prev = token_shift(xx, &mut s.ffn_shift);
        self.channel_mix_with(l, xx, &prev, tokens, x0)
    }

    /// The channel mix from its inputs `xx` and their token-shifted rows `prev`. DeepEmbed's
    /// scale is per row (its token and normalised embedding), so a batch's rows take it as a
    /// sequence's would.
    fn channel_mix_with(
        &self,
        l: &Layer,
        xx: &Mat,
        prev: &Mat,
        tokens: &[u32],
        x0: Option<&Mat>,
    ) -> Result<Mat> {
        let mut k = l.ffn_key.forward(&lerp(xx, prev, &l.ffn_x_k))?.map(|z| {
            let r = z.max(0.0);
            r * r
        });
        if let (Some(de), Some(x0)) = (&l.deep_embed, x0) {
            k = k.hadamard(&de.scale(xx, tokens, x0)?);
        }
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
        // DeepEmbed reads the tokens' normalised embeddings again in every layer.
        let x0 = (self.cfg.version == Version::V7DeepEmbed).then(|| x.clone());
        let mut v_first = None;
        for (l, s) in self.layers.iter().zip(state.layers.iter_mut()) {
            let xx = layer_norm(&x, &l.ln1_w, &l.ln1_b);
            x.add_assign(&self.time_mix(l, &xx, s, &mut v_first)?);
            let xx = layer_norm(&x, &l.ln2_w, &l.ln2_b);
            x.add_assign(&self.channel_mix(l, &xx, s, tokens, x0.as_ref())?);
        }
        self.head.logits(&x, all_logits)
    }

    /// One token for each of B independent sequences: the projections, LoRAs, FFN and head
    /// run once over the B rows (one read of the weights); token shift and recurrence on each
    /// row's own state (`RwkvV7::time_mix_batch`, `RwkvV7::channel_mix_batch`).
    fn step_batch(&self, tokens: &[u32], states: &mut [&mut State]) -> Result<Vec<f32>> {
        super::check_batch(tokens, states)?;
        if tokens.len() == 1 {
            return self.step(tokens[0], states[0]);
        }
        for (t, s) in tokens.iter().zip(states.iter()) {
            super::check_call(&self.cfg, std::slice::from_ref(t), s)?;
        }
        let mut x = self.emb.lookup(tokens)?;
        let x0 = (self.cfg.version == Version::V7DeepEmbed).then(|| x.clone());
        let mut v_first = None;
        for (i, l) in self.layers.iter().enumerate() {
            let mut ls: Vec<&mut LayerState> =
                states.iter_mut().map(|s| &mut s.layers[i]).collect();
            let xx = layer_norm(&x, &l.ln1_w, &l.ln1_b);
            x.add_assign(&self.time_mix_batch(l, &xx, &mut ls, &mut v_first)?);
            let xx = layer_norm(&x, &l.ln2_w, &l.ln2_b);
            x.add_assign(&self.channel_mix_batch(l, &xx, &mut ls, tokens, x0.as_ref())?);
        }
        self.head.logits(&x, true)
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
        // The recurrence: each row on its own sequence's state, all (row, head) pairs at once.
        self.time_mix_with(l, xx, &prev, v_first, |r, w, k, v, kk, a| {
            let mut wkvs: Vec<&mut [f32]> =
                states.iter_mut().map(|s| s.wkv.as_mut_slice()).collect();
            wkv::wkv7_rows(&mut wkvs, h_count, n, [r, w, k, v, kk, a])
        })
    }

    /// [`RwkvV7::channel_mix`] for a batch (rows as in [`RwkvV7::time_mix_batch`]).
    fn channel_mix_batch(
        &self,
        l: &Layer,
        xx: &Mat,
        states: &mut [&mut LayerState],
        tokens: &[u32],
        x0: Option<&Mat>,
    ) -> Result<Mat> {
        let prev = {
            let mut prevs: Vec<&mut [f32]> = states
                .iter_mut()
                .map(|s| s.ffn_shift.as_mut_slice())
                .collect();
            token_shift_rows(xx, &mut prevs)
        };
        self.channel_mix_with(l, xx, &prev, tokens, x0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors checkpoint of 1-element f32 tensors with these names.
    fn names(names: &[&str]) -> Checkpoint {
        let entries: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    r#""{n}":{{"dtype":"F32","shape":[1],"data_offsets":[{},{}]}}"#,
                    4 * i,
                    4 * i + 4
                )
            })
            .collect();
        let header = format!("{{{}}}", entries.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, 4 * names.len()));
        Checkpoint::from_bytes(bytes, "m.pth").unwrap()
    }

    #[test]
    fn deep_embed_is_told_from_its_tensors_and_dea_is_refused() {
        let v7 = ["emb.weight", "blocks.0.att.r_k"];
        assert_eq!(detect(&names(&v7)).unwrap(), Some(Version::V7));
        let de = [&v7[..], &["blocks.0.ffn.s_emb.weight"]].concat();
        assert_eq!(detect(&names(&de)).unwrap(), Some(Version::V7DeepEmbed));
        let dea = [&de[..], &["blocks.0.qkv.qq.weight"]].concat();
        assert_eq!(
            detect(&names(&dea)).unwrap_err().to_string(),
            "m.pth is an RWKV-7 DEA checkpoint (rwkv7b: DeepEmbed with DeepEmbedAttention, blocks.N.qkv.*), which is not supported: its attention keeps a cache that grows with the context, and the official rwkv package does not run it"
        );
        assert_eq!(detect(&names(&["emb.weight"])).unwrap(), None);
    }
}
