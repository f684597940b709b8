//! Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs"): with the feature
//! map `φ(x) = elu(x) + 1`, causal attention becomes
//!
//! ```text
//! S_t = S_{t−1} + φ(k_t) v_tᵀ      z_t = z_{t−1} + φ(k_t)      o_t = S_tᵀ φ(q_t) / (z_t · φ(q_t) + ε)
//! ```
//!
//! per head: a `head_size × head_size` state `S` and a normaliser `z`, whatever the context.
//! Decode runs that recurrence ([`recurrent`]); prefill runs the equivalent chunked form
//! ([`chunked`]): within a block of tokens, the causal `φ(Q)φ(K)ᵀ` products (a small matrix
//! product), plus the contribution of the state carried in from earlier blocks, then the
//! state is advanced by the whole block at once.

use crate::ops::{dot, Mat};
use rayon::prelude::*;

/// Added to the normaliser, as in the paper's implementation.
pub const EPS: f32 = 1e-6;
/// Tokens per block of the chunked form.
pub const BLOCK: usize = 64;

/// One layer's state: per head `S` (`[head][key feature][value channel]`) and `z`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadsState {
    pub s: Vec<f32>,
    pub z: Vec<f32>,
}

/// The whole model's state: fixed size.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearState {
    pub n_head: usize,
    pub head_size: usize,
    /// Tokens seen.
    pub len: usize,
    pub layers: Vec<HeadsState>,
}

impl LinearState {
    pub fn new(n_layer: usize, n_head: usize, head_size: usize) -> Self {
        let d = head_size;
        Self {
            n_head,
            head_size,
            len: 0,
            layers: (0..n_layer)
                .map(|_| HeadsState {
                    s: vec![0.0; n_head * d * d],
                    z: vec![0.0; n_head * d],
                })
                .collect(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| ((l.s.len() + l.z.len()) * 4) as u64)
            .sum()
    }
}

/// `elu(x) + 1`: positive, so the normaliser never vanishes.
#[inline]
pub fn feature(x: f32) -> f32 {
    if x > 0.0 {
        x + 1.0
    } else {
        x.exp()
    }
}

/// One layer's attention for a chunk: `qkv` is `t × 3C` (queries, keys, values). One token
/// takes the recurrent form, more the chunked form.
pub fn attend(qkv: &Mat, st: &mut LinearState, layer: usize) -> Mat {
    let (nh, d) = (st.n_head, st.head_size);
    let c = nh * d;
    let split = |from: usize| {
        let mut m = Mat::zeros(qkv.rows, c);
        for t in 0..qkv.rows {
            m.row_mut(t).copy_from_slice(&qkv.row(t)[from..from + c]);
        }
        m
    };
    let (q, k, v) = (split(0), split(c), split(2 * c));
    let hs = &mut st.layers[layer];
    if qkv.rows == 1 {
        recurrent(&q, &k, &v, hs, nh)
    } else {
        chunked(&q, &k, &v, hs, nh, BLOCK)
    }
}

/// Gathers head `h` of every row of `m` (`t × C`) into `t × d`, optionally through `φ`.
fn head_rows(m: &Mat, h: usize, d: usize, phi: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.rows * d);
    for t in 0..m.rows {
        let r = &m.row(t)[h * d..(h + 1) * d];
        if phi {
            out.extend(r.iter().map(|&x| feature(x)));
        } else {
            out.extend_from_slice(r);
        }
    }
    out
}

/// Scatters per-head outputs (`[head][t][d]`) into `t × C`.
fn merge_heads(o: &[f32], t: usize, nh: usize, d: usize) -> Mat {
    let mut out = Mat::zeros(t, nh * d);
    for h in 0..nh {
        for ti in 0..t {
            out.row_mut(ti)[h * d..(h + 1) * d].copy_from_slice(&o[(h * t + ti) * d..][..d]);
        }
    }
    out
}

/// The recurrence, one token at a time (heads in parallel). `q`, `k`, `v` are `t × C` before
/// the feature map; returns `t × C`.
pub fn recurrent(q: &Mat, k: &Mat, v: &Mat, st: &mut HeadsState, n_head: usize) -> Mat {
    let t = q.rows;
    let d = q.cols / n_head;
    let mut o = vec![0.0f32; n_head * t * d];
    st.s.par_chunks_mut(d * d)
        .zip(st.z.par_chunks_mut(d))
        .zip(o.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(h, ((s, z), oh))| {
            let (fq, fk, vv) = (
                head_rows(q, h, d, true),
                head_rows(k, h, d, true),
                head_rows(v, h, d, false),
            );
            for ti in 0..t {
                let (qt, kt, vt) = (
                    &fq[ti * d..(ti + 1) * d],
                    &fk[ti * d..(ti + 1) * d],
                    &vv[ti * d..(ti + 1) * d],
                );
                for (i, &a) in kt.iter().enumerate() {
                    for (x, &y) in s[i * d..(i + 1) * d].iter_mut().zip(vt) {
                        *x += a * y;
                    }
                    z[i] += a;
                }
                let out = &mut oh[ti * d..(ti + 1) * d];
                out.fill(0.0);
                for (i, &a) in qt.iter().enumerate() {
                    for (x, &y) in out.iter_mut().zip(&s[i * d..(i + 1) * d]) {
                        *x += a * y;
                    }
                }
                let inv = 1.0 / (dot(qt, z) + EPS);
                for x in out.iter_mut() {
                    *x *= inv;
                }
            }
        });
    merge_heads(&o, t, n_head, d)
}

/// The chunked form over blocks of `block` tokens (heads in parallel); same inputs and result
/// as [`recurrent`].
pub fn chunked(q: &Mat, k: &Mat, v: &Mat, st: &mut HeadsState, n_head: usize, block: usize) -> Mat {
    let t = q.rows;
    let d = q.cols / n_head;
    let block = block.max(1);
    let mut o = vec![0.0f32; n_head * t * d];
    st.s.par_chunks_mut(d * d)
        .zip(st.z.par_chunks_mut(d))
        .zip(o.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(h, ((s, z), oh))| {
            let (fq, fk, vv) = (
                head_rows(q, h, d, true),
                head_rows(k, h, d, true),
                head_rows(v, h, d, false),
            );
            let mut den = vec![0.0f32; block];
            for b0 in (0..t).step_by(block) {
                let n = block.min(t - b0);
                let (qb, kb, vb) = (
                    &fq[b0 * d..(b0 + n) * d],
                    &fk[b0 * d..(b0 + n) * d],
                    &vv[b0 * d..(b0 + n) * d],
                );
                let ob = &mut oh[b0 * d..(b0 + n) * d];
                for r in 0..n {
                    let qr = &qb[r * d..(r + 1) * d];
                    let out = &mut ob[r * d..(r + 1) * d];
                    // What the earlier blocks left in the state.
                    for (i, &a) in qr.iter().enumerate() {
                        for (x, &y) in out.iter_mut().zip(&s[i * d..(i + 1) * d]) {
                            *x += a * y;
                        }
                    }
                    den[r] = dot(qr, z);
                    // This block, causally.
                    for j in 0..=r {
                        let a = dot(qr, &kb[j * d..(j + 1) * d]);
                        for (x, &y) in out.iter_mut().zip(&vb[j * d..(j + 1) * d]) {
                            *x += a * y;
                        }
                        den[r] += a;
                    }
                }
                for r in 0..n {
                    let inv = 1.0 / (den[r] + EPS);
                    for x in &mut ob[r * d..(r + 1) * d] {
                        *x *= inv;
                    }
                }
                // Advance the state by the whole block.
                for j in 0..n {
                    let (kj, vj) = (&kb[j * d..(j + 1) * d], &vb[j * d..(j + 1) * d]);
                    for (i, &a) in kj.iter().enumerate() {
                        for (x, &y) in s[i * d..(i + 1) * d].iter_mut().zip(vj) {
                            *x += a * y;
                        }
                        z[i] += a;
                    }
                }
            }
        });
    merge_heads(&o, t, n_head, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baselines::random_values;

    #[test]
    fn feature_map_is_positive_and_continuous() {
        assert_eq!(feature(0.0), 1.0);
        assert!((feature(1e-6) - feature(-1e-6)).abs() < 1e-5);
        assert!(feature(-50.0) > 0.0);
        assert_eq!(feature(2.0), 3.0);
    }

    #[test]
    fn one_token_matches_the_definition() {
        // With one token, o = v (the only value, weight φ(q)·φ(k) / (φ(q)·φ(k) + ε)).
        let (nh, d) = (2, 4);
        let q = Mat::from_vec(1, nh * d, random_values(nh * d, 1.0, 1));
        let k = Mat::from_vec(1, nh * d, random_values(nh * d, 1.0, 2));
        let v = Mat::from_vec(1, nh * d, random_values(nh * d, 1.0, 3));
        let mut st = LinearState::new(1, nh, d).layers.remove(0);
        let o = recurrent(&q, &k, &v, &mut st, nh);
        for (a, b) in o.data.iter().zip(&v.data) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
