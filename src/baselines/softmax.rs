//! Causal multi-head softmax attention: a preallocated KV cache, rotary positions and a tiled
//! kernel.
//!
//! The kernel is the online-softmax ("flash") formulation: for a block of queries it walks the
//! keys a block at a time, keeping per query the running maximum score, the running sum of
//! exponentials and the running weighted sum of values, rescaling them when the maximum grows.
//! No `N × N` score matrix is ever materialised (one `64`-wide row of scores at a time), the
//! work is split across threads by head and query block, and the inner loops are written over
//! fixed-width arrays so that they vectorise (on x86-64 they are compiled a second and third
//! time, with AVX2 and FMA and with AVX-512, picked by the kernels' one detection of the
//! instruction set). Prefill and decode use the same kernel; decode is one query per head,
//! reading each cached key and value once.
//!
//! Keys are cached transposed in blocks of [`KEY_BLOCK`] positions (`[head][block][channel]
//! [position in block]`), so that a query's scores against a block are a sum of vectors;
//! values are cached row by row (`[head][position][channel]`).

use crate::ops::Mat;
use rayon::prelude::*;

/// Keys per tile; also the block of the transposed key cache.
pub const KEY_BLOCK: usize = 64;
/// Queries per task of the kernel.
pub const QUERY_BLOCK: usize = 32;

/// Keys and values of every token so far, for every layer, allocated once.
pub struct KvCache {
    pub n_layer: usize,
    pub n_head: usize,
    pub head_size: usize,
    /// Tokens it can hold.
    pub capacity: usize,
    /// Tokens it holds.
    pub len: usize,
    /// Positions allocated per head: `capacity` rounded up to whole key blocks.
    stride: usize,
    /// Per layer: `[head][block][channel][position in block]`.
    k: Vec<Vec<f32>>,
    /// Per layer: `[head][position][channel]`.
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Allocates room for `capacity` tokens. The memory is zeroed lazily by the system, so the
    /// resident size grows as tokens are written.
    pub fn new(n_layer: usize, n_head: usize, head_size: usize, capacity: usize) -> Self {
        let stride = capacity.div_ceil(KEY_BLOCK).max(1) * KEY_BLOCK;
        let per_layer = n_head * stride * head_size;
        Self {
            n_layer,
            n_head,
            head_size,
            capacity,
            len: 0,
            stride,
            k: (0..n_layer).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..n_layer).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// Bytes of the keys and values of the tokens held.
    pub fn bytes_used(&self) -> u64 {
        2 * (self.n_layer * self.len * self.n_head * self.head_size * 4) as u64
    }

    /// Bytes allocated.
    pub fn bytes_allocated(&self) -> u64 {
        2 * (self.n_layer * self.stride * self.n_head * self.head_size * 4) as u64
    }

    /// Stores one head's key and value of the token at `pos`.
    fn write(&mut self, layer: usize, head: usize, pos: usize, key: &[f32], value: &[f32]) {
        let (d, s) = (self.head_size, self.stride);
        let base = head * s * d;
        let kb = base + (pos / KEY_BLOCK) * KEY_BLOCK * d + pos % KEY_BLOCK;
        let k = &mut self.k[layer];
        for (c, &x) in key.iter().enumerate() {
            k[kb + c * KEY_BLOCK] = x;
        }
        self.v[layer][base + pos * d..base + (pos + 1) * d].copy_from_slice(value);
    }
}

/// Rotary position embedding (rotate-half form, base 10000) for a run of positions.
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Angles for positions `pos0 .. pos0 + t` and heads of `head_size` channels.
    pub fn new(pos0: usize, t: usize, head_size: usize) -> Self {
        let half = head_size / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|i| 10000f64.powf(-((2 * i) as f64) / head_size as f64))
            .collect();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in pos0..pos0 + t {
            for &freq in &freqs {
                let (s, c) = (p as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates one head's vector for the `t`-th position of the table.
    pub fn rotate(&self, t: usize, x: &mut [f32]) {
        let h = self.half;
        let (cos, sin) = (&self.cos[t * h..(t + 1) * h], &self.sin[t * h..(t + 1) * h]);
        let (a, b) = x.split_at_mut(h);
        for i in 0..h {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// One layer's attention for a chunk of `t` tokens at positions `pos0..pos0+t`: `qkv` is the
/// output of the fused projection (`t × 3C`: queries, keys, values). Rotates queries and keys,
/// appends keys and values to the cache, and returns the attention output (`t × C`).
pub fn attend(qkv: &Mat, cache: &mut KvCache, layer: usize, pos0: usize, rope: &RopeTable) -> Mat {
    let (nh, d) = (cache.n_head, cache.head_size);
    let (c, t) = (nh * d, qkv.rows);
    let scale = 1.0 / (d as f32).sqrt();
    let mut q = vec![0.0f32; nh * t * d];
    let mut key = vec![0.0f32; d];
    for ti in 0..t {
        let row = qkv.row(ti);
        for h in 0..nh {
            let qh = &mut q[(h * t + ti) * d..(h * t + ti + 1) * d];
            qh.copy_from_slice(&row[h * d..(h + 1) * d]);
            rope.rotate(ti, qh);
            for x in qh.iter_mut() {
                *x *= scale;
            }
            key.copy_from_slice(&row[c + h * d..c + (h + 1) * d]);
            rope.rotate(ti, &mut key);
            let value = &row[2 * c + h * d..2 * c + (h + 1) * d];
            cache.write(layer, h, pos0 + ti, &key, value);
        }
    }
    let o = attention(&q, t, pos0, cache, layer);
    let mut out = Mat::zeros(t, c);
    for h in 0..nh {
        for ti in 0..t {
            out.row_mut(ti)[h * d..(h + 1) * d].copy_from_slice(&o[(h * t + ti) * d..][..d]);
        }
    }
    out
}

/// The tiled kernel: `q` holds `t` queries per head (`[head][query][channel]`, already scaled
/// and rotated) at positions `pos0..pos0+t`, whose keys and values are already in `cache`.
/// Returns the outputs in the same layout.
pub fn attention(q: &[f32], t: usize, pos0: usize, cache: &KvCache, layer: usize) -> Vec<f32> {
    let (nh, d, s) = (cache.n_head, cache.head_size, cache.stride);
    assert!(pos0 + t <= s, "queries beyond the cache");
    assert_eq!(q.len(), nh * t * d);
    let (kl, vl) = (&cache.k[layer], &cache.v[layer]);
    let mut out = vec![0.0f32; nh * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each(|(h, oh)| {
        let kt = &kl[h * s * d..(h + 1) * s * d];
        let v = &vl[h * s * d..(h + 1) * s * d];
        let qh = &q[h * t * d..(h + 1) * t * d];
        oh.par_chunks_mut(QUERY_BLOCK * d)
            .enumerate()
            .for_each(|(b, ob)| {
                let i0 = b * QUERY_BLOCK;
                let bq = ob.len() / d;
                tile(&qh[i0 * d..(i0 + bq) * d], pos0 + i0, kt, v, d, ob);
            });
    });
    out
}

/// Causal attention of the last `t` of `n_keys` positions over all of them, for tests and
/// tools: `q` is `[head][query][channel]` (not yet scaled), `k` and `v` are
/// `[head][position][channel]`. Runs the tiled kernel through a one-layer cache.
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    head_size: usize,
    t: usize,
    n_keys: usize,
) -> Vec<f32> {
    let d = head_size;
    let mut cache = KvCache::new(1, n_head, d, n_keys);
    for h in 0..n_head {
        for p in 0..n_keys {
            let r = (h * n_keys + p) * d..(h * n_keys + p + 1) * d;
            cache.write(0, h, p, &k[r.clone()], &v[r]);
        }
    }
    cache.len = n_keys;
    let scale = 1.0 / (d as f32).sqrt();
    let qs: Vec<f32> = q.iter().map(|x| x * scale).collect();
    attention(&qs, t, n_keys - t, &cache, 0)
}

/// The textbook computation, for tests: the full score matrix per head, then softmax, then
/// the weighted sum. Same layouts as [`causal_attention`].
pub fn causal_attention_naive(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    head_size: usize,
    t: usize,
    n_keys: usize,
) -> Vec<f32> {
    let d = head_size;
    let pos0 = n_keys - t;
    let mut out = vec![0.0f32; n_head * t * d];
    for h in 0..n_head {
        let mut scores = vec![vec![f32::NEG_INFINITY; n_keys]; t];
        for (i, row) in scores.iter_mut().enumerate() {
            let qi = &q[(h * t + i) * d..(h * t + i + 1) * d];
            for (j, s) in row.iter_mut().enumerate().take(pos0 + i + 1) {
                let kj = &k[(h * n_keys + j) * d..(h * n_keys + j + 1) * d];
                let dot: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                *s = (dot / (d as f64).sqrt()) as f32;
            }
        }
        for (i, row) in scores.iter().enumerate() {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f64> = row.iter().map(|&s| ((s - max) as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            for c in 0..d {
                let mut acc = 0.0f64;
                for (j, wj) in w.iter().enumerate() {
                    acc += wj * v[(h * n_keys + j) * d + c] as f64;
                }
                out[(h * t + i) * d + c] = (acc / total) as f32;
            }
        }
    }
    out
}

/// One head, one block of queries; picks the copy for the instruction set the kernels use
/// ([`crate::kernels::isa`], detected once).
fn tile(q: &[f32], qpos0: usize, kt: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match crate::kernels::isa() {
        // SAFETY: the CPU supports the features this copy was compiled for (the AVX-512 level
        // is detected with AVX2 and FMA).
        crate::kernels::Isa::Avx512 => return unsafe { tile_avx512(q, qpos0, kt, v, d, out) },
        // SAFETY: as above, for AVX2 and FMA.
        crate::kernels::Isa::Avx2 => return unsafe { tile_avx2_fma(q, qpos0, kt, v, d, out) },
        crate::kernels::Isa::Neon | crate::kernels::Isa::Portable => {}
    }
    tile_generic::<false>(q, qpos0, kt, v, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(q: &[f32], qpos0: usize, kt: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
    tile_generic::<true>(q, qpos0, kt, v, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_fma(q: &[f32], qpos0: usize, kt: &[f32], v: &[f32], d: usize, out: &mut [f32]) {
    tile_generic::<true>(q, qpos0, kt, v, d, out)
}

/// `a · b + c`, fused when the copy is compiled with FMA (otherwise `mul_add` would be a
/// slow library call).
#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The online-softmax loop for queries `qpos0..qpos0+bq` of one head (`q`: `bq × d`, scaled).
#[inline(always)]
fn tile_generic<const FMA: bool>(
    q: &[f32],
    qpos0: usize,
    kt: &[f32],
    v: &[f32],
    d: usize,
    out: &mut [f32],
) {
    const KB: usize = KEY_BLOCK;
    let bq = q.len() / d;
    let mut m = [f32::NEG_INFINITY; QUERY_BLOCK];
    let mut l = [0.0f32; QUERY_BLOCK];
    out.fill(0.0);
    let n_keys = qpos0 + bq;
    let mut s = [0.0f32; KB];
    for blk in 0..n_keys.div_ceil(KB) {
        let k0 = blk * KB;
        let ktb = &kt[k0 * d..(k0 + KB) * d];
        for i in 0..bq {
            let qpos = qpos0 + i;
            if k0 > qpos {
                continue;
            }
            let valid = (qpos + 1 - k0).min(KB);
            scores::<FMA>(&q[i * d..(i + 1) * d], ktb, &mut s);
            for x in &mut s[valid..] {
                *x = f32::NEG_INFINITY;
            }
            let m_new = max_of(&s).max(m[i]);
            let alpha = if m[i] == f32::NEG_INFINITY {
                0.0
            } else {
                (m[i] - m_new).exp()
            };
            let sum = exp_shifted(&mut s, m_new);
            l[i] = l[i] * alpha + sum;
            m[i] = m_new;
            let oi = &mut out[i * d..(i + 1) * d];
            if alpha != 1.0 {
                for o in oi.iter_mut() {
                    *o *= alpha;
                }
            }
            accumulate::<FMA>(oi, &s[..valid], &v[k0 * d..(k0 + valid) * d]);
        }
    }
    for i in 0..bq {
        let inv = 1.0 / l[i];
        for o in &mut out[i * d..(i + 1) * d] {
            *o *= inv;
        }
    }
}

/// `s[j] = q · key_j` for the `KEY_BLOCK` keys of a transposed block (`d × KEY_BLOCK`):
/// `KEY_BLOCK` accumulators, one broadcast query element per channel.
#[inline(always)]
fn scores<const FMA: bool>(q: &[f32], ktb: &[f32], s: &mut [f32; KEY_BLOCK]) {
    let mut acc = [0.0f32; KEY_BLOCK];
    for (&qc, row) in q.iter().zip(ktb.chunks_exact(KEY_BLOCK)) {
        let row: &[f32; KEY_BLOCK] = row.try_into().unwrap();
        for j in 0..KEY_BLOCK {
            acc[j] = fmadd::<FMA>(qc, row[j], acc[j]);
        }
    }
    *s = acc;
}

/// `o += Σ_j p[j] · v_j` (`v`: rows of `o.len()` values), 64 channels at a time in
/// register accumulators.
#[inline(always)]
fn accumulate<const FMA: bool>(o: &mut [f32], p: &[f32], v: &[f32]) {
    const W: usize = 64;
    let d = o.len();
    for (ci, oc) in o.chunks_mut(W).enumerate() {
        let c0 = ci * W;
        if oc.len() == W {
            let mut acc = [0.0f32; W];
            for (j, &pj) in p.iter().enumerate() {
                let row: &[f32; W] = v[j * d + c0..j * d + c0 + W].try_into().unwrap();
                for u in 0..W {
                    acc[u] = fmadd::<FMA>(pj, row[u], acc[u]);
                }
            }
            for (a, x) in oc.iter_mut().zip(acc) {
                *a += x;
            }
        } else {
            let w = oc.len();
            for (j, &pj) in p.iter().enumerate() {
                let row = &v[j * d + c0..j * d + c0 + w];
                for (a, &x) in oc.iter_mut().zip(row) {
                    *a = fmadd::<FMA>(pj, x, *a);
                }
            }
        }
    }
}

/// Maximum of a block of scores, eight lanes at a time.
#[inline(always)]
fn max_of(s: &[f32; KEY_BLOCK]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in s.chunks_exact(8) {
        for u in 0..8 {
            lanes[u] = if c[u] > lanes[u] { c[u] } else { lanes[u] };
        }
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// `s[j] = exp(s[j] - m)` (0 for −∞) and their sum.
#[inline(always)]
fn exp_shifted(s: &mut [f32; KEY_BLOCK], m: f32) -> f32 {
    for x in s.iter_mut() {
        *x = exp_approx(*x - m);
    }
    let mut lanes = [0.0f32; 8];
    for c in s.chunks_exact(8) {
        for u in 0..8 {
            lanes[u] += c[u];
        }
    }
    lanes.iter().sum()
}

/// `e^x` for `x ≤ 0`, branch-free so that it vectorises: `x = n·ln2 + r` with `|r| ≤ ln2/2`,
/// `e^r` by its Taylor polynomial to degree 7 (relative error below 1e-7), `2^n` built in the
/// exponent bits. Inputs below −87 (and −∞) give 0.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to an integer, which lands in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let xc = if x < -87.0 { -87.0 } else { x };
    let t = xc * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let k = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baselines::random_values;

    #[test]
    fn exp_approx_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (a, b) = (exp_approx(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert!((exp_approx(0.0) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn generic_and_dispatched_kernels_agree_with_the_reference() {
        let (nh, d, n) = (2, 24, 150);
        let q = random_values(nh * n * d, 1.0, 1);
        let k = random_values(nh * n * d, 1.0, 2);
        let v = random_values(nh * n * d, 1.0, 3);
        let want = causal_attention_naive(&q, &k, &v, nh, d, n, n);
        let got = causal_attention(&q, &k, &v, nh, d, n, n);
        // The portable copy, called directly.
        let mut cache = KvCache::new(1, nh, d, n);
        for h in 0..nh {
            for p in 0..n {
                let r = (h * n + p) * d..(h * n + p + 1) * d;
                cache.write(0, h, p, &k[r.clone()], &v[r]);
            }
        }
        let scale = 1.0 / (d as f32).sqrt();
        let mut portable = vec![0.0; nh * n * d];
        for h in 0..nh {
            let qs: Vec<f32> = q[h * n * d..(h + 1) * n * d]
                .iter()
                .map(|x| x * scale)
                .collect();
            for (b, ob) in portable[h * n * d..(h + 1) * n * d]
                .chunks_mut(QUERY_BLOCK * d)
                .enumerate()
            {
                let i0 = b * QUERY_BLOCK;
                let bq = ob.len() / d;
                let s = cache.stride;
                tile_generic::<false>(
                    &qs[i0 * d..(i0 + bq) * d],
                    i0,
                    &cache.k[0][h * s * d..(h + 1) * s * d],
                    &cache.v[0][h * s * d..(h + 1) * s * d],
                    d,
                    ob,
                );
            }
        }
        for (name, out) in [("dispatched", &got), ("portable", &portable)] {
            let diff = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{name}: max abs diff {diff}");
        }
    }

    #[test]
    fn rope_preserves_norms_and_relative_positions() {
        let a = random_values(16, 1.0, 5);
        let b = random_values(16, 1.0, 6);
        let dot_at = |pa: usize, pb: usize| {
            let (mut x, mut y) = (a.clone(), b.clone());
            RopeTable::new(pa, 1, 16).rotate(0, &mut x);
            RopeTable::new(pb, 1, 16).rotate(0, &mut y);
            (x.iter().zip(&y).map(|(p, q)| p * q).sum::<f32>(), x)
        };
        let (d1, x) = dot_at(3, 10);
        let (d2, _) = dot_at(103, 110);
        assert!((d1 - d2).abs() < 1e-4, "{d1} vs {d2}");
        let n0: f32 = a.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-4);
    }
}
