//! The elementwise and per-row operations of the models: layer and group normalisation, the
//! token shift and its interpolation, activations.

use super::pool::for_rows;
use super::Mat;

/// LayerNorm over each row (eps 1e-5, as torch's default used by RWKV).
pub fn layer_norm(x: &Mat, weight: &[f32], bias: &[f32]) -> Mat {
    let mut out = x.clone();
    for_rows(&mut out.data, x.cols, |_, row| {
        layer_norm_row(row, weight, bias, 1e-5)
    });
    out
}

/// `Σ x` with 16 independent partial sums (vectorisable, unlike a plain running sum).
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Normalises one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm_row(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum16(x, |v| v) / n;
    let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// GroupNorm with `groups` equal groups per row (RWKV's `ln_x`, one group per head).
pub fn group_norm(x: &mut Mat, groups: usize, weight: &[f32], bias: &[f32], eps: f32) {
    let g = x.cols / groups;
    let cols = x.cols;
    for_rows(&mut x.data, cols, |_, row| {
        for h in 0..groups {
            let r = h * g..(h + 1) * g;
            layer_norm_row(&mut row[r.clone()], &weight[r.clone()], &bias[r], eps);
        }
    });
}

/// The previous token's row for each row of `x`: row 0 comes from `prev` (the state),
/// row t from `x[t-1]`. Afterwards `prev` holds the last row of `x`.
pub fn token_shift(x: &Mat, prev: &mut [f32]) -> Mat {
    let c = x.cols;
    let mut out = Mat::zeros(x.rows, c);
    out.row_mut(0).copy_from_slice(prev);
    out.data[c..].copy_from_slice(&x.data[..(x.rows - 1) * c]);
    prev.copy_from_slice(x.last_row());
    out
}

/// `x + (prev - x) * mix` per channel (RWKV's token-shift interpolation in its v6/v7 form;
/// v4/v5's `x*mix + prev*(1-mix)` is the same with `mix` replaced by `1 - mix`).
pub fn lerp(x: &Mat, prev: &Mat, mix: &[f32]) -> Mat {
    let mut out = x.clone();
    for_rows(&mut out.data, x.cols, |t, row| {
        for ((o, pv), m) in row.iter_mut().zip(prev.row(t)).zip(mix) {
            *o += (pv - *o) * m;
        }
    });
    out
}

/// Adds a per-channel vector to every row.
pub fn add_row(mut x: Mat, v: &[f32]) -> Mat {
    let cols = x.cols;
    for_rows(&mut x.data, cols, |_, row| {
        for (a, b) in row.iter_mut().zip(v) {
            *a += b;
        }
    });
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shift_uses_state_then_previous_rows() {
        let x = Mat::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut prev = vec![9.0, 9.0];
        let s = token_shift(&x, &mut prev);
        assert_eq!(s.data, vec![9.0, 9.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(prev, vec![5.0, 6.0]);
    }

    #[test]
    fn group_norm_normalises_each_group() {
        let mut x = Mat::from_vec(1, 4, vec![1.0, 3.0, 10.0, 20.0]);
        group_norm(&mut x, 2, &[1.0; 4], &[0.0; 4], 0.0);
        for v in &x.data {
            assert!((v.abs() - 1.0).abs() < 1e-5);
        }
    }
}
