//! Pieces that several RWKV versions share exactly.

use super::{LayerState, Weights};
use crate::ops::{lerp, sigmoid, token_shift, Linear, Mat};
use anyhow::Result;

/// The channel-mix (FFN) block of v4, v5 and v6: `σ(R·xr) ⊙ V·relu(K·xk)²`.
pub struct ReceptanceFfn {
    /// Token-shift mixes in the `x + (prev − x)·mix` form.
    mix_k: Vec<f32>,
    mix_r: Vec<f32>,
    key: Linear,
    receptance: Linear,
    value: Linear,
}

impl ReceptanceFfn {
    /// `prefix` is `blocks.N.ffn.`. v4/v5 store `time_mix_*` (weight of the current token);
    /// v6 stores `time_maa_*` (weight of the previous token).
    pub fn load(w: &Weights, prefix: &str, c: usize, v6_style: bool) -> Result<Self> {
        let n_ffn = w.dim(&format!("{prefix}key.weight"), 2, 0)?;
        let mix = |name: &str| -> Result<Vec<f32>> {
            if v6_style {
                w.vector(&format!("{prefix}time_maa_{name}"), c)
            } else {
                Ok(current_to_prev_mix(
                    w.vector(&format!("{prefix}time_mix_{name}"), c)?,
                ))
            }
        };
        Ok(Self {
            mix_k: mix("k")?,
            mix_r: mix("r")?,
            key: w.linear(&format!("{prefix}key.weight"), n_ffn, c)?,
            receptance: w.linear(&format!("{prefix}receptance.weight"), c, c)?,
            value: w.linear(&format!("{prefix}value.weight"), c, n_ffn)?,
        })
    }

    pub fn n_ffn(&self) -> usize {
        self.key.out_dim
    }

    /// `xx` is the block's normalised input.
    pub fn forward(&self, xx: &Mat, s: &mut LayerState) -> Result<Mat> {
        let prev = token_shift(xx, &mut s.ffn_shift);
        let r = self
            .receptance
            .forward(&lerp(xx, &prev, &self.mix_r))?
            .map(sigmoid);
        let k = self.key.forward(&lerp(xx, &prev, &self.mix_k))?.map(|z| {
            let z = z.max(0.0);
            z * z
        });
        Ok(self.value.forward(&k)?.hadamard(&r))
    }
}

/// v4/v5 mix `x·m + prev·(1 − m)` rewritten as `x + (prev − x)·(1 − m)`.
pub fn current_to_prev_mix(m: Vec<f32>) -> Vec<f32> {
    m.into_iter().map(|v| 1.0 - v).collect()
}

/// The v5/v6 WKV recurrence over `r, k, v` (T × H·N) with per-key-channel decay `w`
/// (one row per token, or a single row shared by all tokens) and bonus `u` (H·N).
/// The state per head is `S[i][j]`, `i` the key channel and `j` the value channel:
///
/// ```text
/// out_j = Σ_i r_i · (u_i·k_i·v_j + S_ij)        S_ij ← k_i·v_j + w_i·S_ij
/// ```
pub fn wkv5(
    r: &Mat,
    k: &Mat,
    v: &Mat,
    w: &Mat,
    u: &[f32],
    n_head: usize,
    state: &mut [f32],
) -> Mat {
    let n = r.cols / n_head;
    super::wkv::per_head(state, n_head, n, r.rows, |h, s, out_h| {
        let hs = h * n..(h + 1) * n;
        let u = &u[hs.clone()];
        for t in 0..r.rows {
            let (rt, kt, vt) = (
                &r.row(t)[hs.clone()],
                &k.row(t)[hs.clone()],
                &v.row(t)[hs.clone()],
            );
            let wt = &w.row(if w.rows == 1 { 0 } else { t })[hs.clone()];
            let o = &mut out_h[t * n..(t + 1) * n];
            for (i, row) in s.chunks_exact_mut(n).enumerate() {
                let (ri, ki, wi, ui) = (rt[i], kt[i], wt[i], u[i]);
                for ((x, o), vj) in row.iter_mut().zip(o.iter_mut()).zip(vt) {
                    let kv = ki * vj;
                    *o += ri * (ui * kv + *x);
                    *x = kv + wi * *x;
                }
            }
        }
    })
}
