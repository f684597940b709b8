//! The channel-mix (FFN) block that v4, v5 and v6 share exactly (v7's, without receptance,
//! is in `v7.rs`).

use super::{LayerState, Weights};
use crate::kernels;
use crate::ops::{forward_all, lerp, token_shift, Linear, Mat};
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
    /// `ffn` is scoped at `blocks.N.ffn`. v4/v5 store `time_mix_*` (weight of the current
    /// token); v6 stores `time_maa_*` (weight of the previous token).
    pub fn load(ffn: &Weights, c: usize, v6_style: bool) -> Result<Self> {
        let n_ffn = ffn.dim("key.weight", 2, 0)?;
        let mix = |name: &str| -> Result<Vec<f32>> {
            if v6_style {
                ffn.vector(&format!("time_maa_{name}"), c)
            } else {
                Ok(current_to_prev_mix(
                    ffn.vector(&format!("time_mix_{name}"), c)?,
                ))
            }
        };
        Ok(Self {
            mix_k: mix("k")?,
            mix_r: mix("r")?,
            key: ffn.linear("key.weight", n_ffn, c)?,
            receptance: ffn.linear("receptance.weight", c, c)?,
            value: ffn.linear("value.weight", c, n_ffn)?,
        })
    }

    pub fn n_ffn(&self) -> usize {
        self.key.out_dim
    }

    /// `xx` is the block's normalised input.
    pub fn forward(&self, xx: &Mat, s: &mut LayerState) -> Result<Mat> {
        let prev = token_shift(xx, &mut s.ffn_shift);
        let (xk, xr) = (lerp(xx, &prev, &self.mix_k), lerp(xx, &prev, &self.mix_r));
        // Key and receptance are independent: one call of the thread pool for a token.
        let [k, r]: [Mat; 2] = forward_all(&[(&self.key, &xk), (&self.receptance, &xr)])?
            .try_into()
            .expect("one output per product");
        let k = k.map(|z| {
            let z = z.max(0.0);
            z * z
        });
        Ok(self.value.forward(&k)?.hadamard(&r.apply(kernels::sigmoid)))
    }
}

/// v4/v5 mix `x·m + prev·(1 − m)` rewritten as `x + (prev − x)·(1 − m)`.
pub fn current_to_prev_mix(m: Vec<f32>) -> Vec<f32> {
    m.into_iter().map(|v| 1.0 - v).collect()
}
