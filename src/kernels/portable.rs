//! The portable kernels: plain Rust over fixed-width arrays (which the compiler vectorises
//! for the baseline instruction set). They fill the dispatch table first ([`KERNELS`]); an
//! ISA's file then replaces the entries it has faster code for. They are also the reference
//! the SIMD kernels are tested against.

use super::layout::{bf16_lane_position, Q4_0Block, Q8_0Block, QuantBlock, NR, QK};
use super::{Isa, Kernels, QRows};

/// The table with every entry portable.
pub(super) const KERNELS: Kernels = Kernels {
    isa: Isa::Portable,
    vnni: false,
    dot_f32,
    sum_f32,
    gemv_f32,
    gemv_bf16,
    gemv_f16,
    f16_to_f32,
    f32_to_bf16,
    gemm_f32,
    gemm_f32_rows: 4,
    gemm_bf16_wide: None,
    gemm_f16_wide: None,
    gemm_bf16: None,
    gemm_bf16_rows: 0,
    amx: false,
    quantize_block_q8,
    q8_0_tile: q_tile::<Q8_0Block>,
    q4_0_tile: q_tile::<Q4_0Block>,
    q_tile_rows: 4,
    wkv7_token_x16: None,
    wkv7_rows_x16: None,
    exp,
    sigmoid,
    tanh,
    silu,
};

const L: usize = 16;

// The activations: the standard library's functions, one value at a time.

pub fn exp(v: &mut [f32], s: f32) {
    v.iter_mut().for_each(|x| *x = (s * *x).exp());
}

pub fn sigmoid(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
}

pub fn tanh(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.tanh());
}

pub fn silu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x *= 1.0 / (1.0 + (-*x).exp()));
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Sum of every value of `v`, with 16 independent accumulators.
pub fn sum_f32(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let c = v.chunks_exact(16);
    let r: f32 = c.remainder().iter().sum();
    for x in c {
        for (a, b) in acc.iter_mut().zip(x) {
            *a += b;
        }
    }
    acc.iter().sum::<f32>() + r
}

/// Matrix–vector product with weights read through `w(panel, input, output)`.
fn gemv(k: usize, x: &[f32], y: &mut [f32], w: impl Fn(usize, usize, usize) -> f32) {
    for (p, yp) in y.chunks_mut(NR).enumerate() {
        let mut acc = [0.0f32; NR];
        for (i, xi) in x[..k].iter().enumerate() {
            for (j, a) in acc.iter_mut().enumerate() {
                *a += w(p, i, j) * xi;
            }
        }
        yp.copy_from_slice(&acc[..yp.len()]);
    }
}

pub fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = super::bf16_bits(*s);
    }
}

pub fn gemv_f32(panels: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    gemv(k, x, y, |p, i, j| panels[(p * k + i) * NR + j])
}

pub fn gemv_bf16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    gemv(k, x, y, |p, i, j| {
        let h = panels[(p * k + i) * NR + bf16_lane_position(j)];
        f32::from_bits((h as u32) << 16)
    })
}

pub fn gemv_f16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    gemv(k, x, y, |p, i, j| {
        half::f16::from_bits(panels[(p * k + i) * NR + j]).to_f32()
    })
}

pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

/// `v` rounded to the nearest integer, ties to even (as `f32::round_ties_even`, which
/// compiles to a library call on baseline x86-64), exact for `|v| < 2²²`: adding and
/// subtracting 1.5·2²³ leaves no fraction bits, and the default rounding mode is to nearest,
/// ties to even. Larger values (and NaN) come out as large values (NaN), which callers clamp.
#[inline]
pub fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let mut s = 0;
    for (o, v) in q.iter_mut().zip(x) {
        let r = round_small(v * id).clamp(-127.0, 127.0) as i32;
        *o = r as i8;
        s += r;
    }
    (amax / 127.0, s)
}

/// # Safety
/// As `super::gemm_panel_f32` for `rows` rows.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32(
    rows: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    panel: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    for r in 0..rows {
        let mut acc = [0.0f32; NR];
        for i in 0..k {
            let xi = *x.add(r * ldx + i);
            for (j, a) in acc.iter_mut().enumerate() {
                *a += *panel.add(i * NR + j) * xi;
            }
        }
        for (j, a) in acc.iter().enumerate().take(n_valid) {
            *y.add(r * ldy + j) = *a;
        }
    }
}

/// The integer product of `x.rows` rows against one panel of `B` blocks, in plain integer
/// code (the integer sums are those of the VNNI kernels).
///
/// # Safety
/// As `super::QTileFn`.
pub unsafe fn q_tile<B: QuantBlock>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let bb = B::BYTES;
    let blocks_all = std::slice::from_raw_parts(panel, blocks * bb);
    for r in 0..x.rows {
        let mut acc = [0.0f32; NR];
        for (b, blk) in blocks_all.chunks_exact(bb).enumerate() {
            let xq = std::slice::from_raw_parts(x.q.add(r * x.ldq + b * QK), QK);
            let dx = *x.d.add(r * x.ldb + b);
            let c = *x.sum.add(r * x.ldb + b) << B::OFFSET_SHIFT;
            for (j, a) in acc.iter_mut().enumerate() {
                let mut s = 0i32;
                for (k, xv) in xq.iter().enumerate() {
                    s += B::weight(blk, j, k) * *xv as i32;
                }
                *a += (s - c) as f32 * (B::scale(blk, j) * dx);
            }
        }
        for (j, a) in acc.iter().enumerate().take(n_valid) {
            *y.add(r * ldy + j) = *a;
        }
    }
}
