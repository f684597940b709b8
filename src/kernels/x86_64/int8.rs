//! The integer kernels: activations quantized to 8 bits per block, and the VNNI
//! (`vpdpbusd`) matrix tiles of the q8_0 and q4_0 formats, one row (decode) to six.

use super::super::layout::{NR, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
use super::super::QRows;
use super::{prefetch_ahead, store_rows};
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block_q8_avx512(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let v0 = _mm512_loadu_ps(x.as_ptr());
    let v1 = _mm512_loadu_ps(x.as_ptr().add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let s = _mm512_set1_ps(id);
    // Round to nearest, ties to even (the default rounding mode), as the portable code.
    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, s));
    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, s));
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(
        q.as_mut_ptr().add(16) as *mut __m128i,
        _mm512_cvtsepi32_epi8(q1),
    );
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    (amax / 127.0, sum)
}

/// The block epilogue shared by the quantized micro-kernels: each row's integer sums,
/// corrected for the weights' storage offset, converted and scaled by weight scale ×
/// activation scale into the f32 accumulators.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q_block_epilogue<const R: usize>(
    x: &QRows,
    b: usize,
    shift: u32,
    scales: *const u8,
    i0: &[__m512i; R],
    i1: &[__m512i; R],
    a0: &mut [__m512; R],
    a1: &mut [__m512; R],
) {
    let sv = _mm512_loadu_si512(scales as *const _);
    let d0 = _mm512_castsi512_ps(_mm512_slli_epi32(sv, 16));
    let d1 = _mm512_castsi512_ps(_mm512_and_si512(sv, _mm512_set1_epi32(-65536)));
    for r in 0..R {
        let c = _mm512_set1_epi32(*x.sum.add(r * x.ldb + b) << shift);
        let s = _mm512_set1_ps(*x.d.add(r * x.ldb + b));
        let f0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(i0[r], c));
        let f1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(i1[r], c));
        a0[r] = _mm512_fmadd_ps(f0, _mm512_mul_ps(d0, s), a0[r]);
        a1[r] = _mm512_fmadd_ps(f1, _mm512_mul_ps(d1, s), a1[r]);
    }
}

/// Four activations of row `r` at input `k` of block `b`, as one broadcast 32-bit lane.
#[inline(always)]
unsafe fn x4(x: &QRows, r: usize, b: usize, k: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(
        x.q.add(r * x.ldq + b * QK + k) as *const i32
    ))
}

/// The Q8_0 micro-kernel with VNNI: `R` rows × 32 outputs. Per block, `vpdpbusd` sums
/// four u8 × i8 products per lane into int32, for 16 outputs per instruction.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q8_vnni<const R: usize>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        let blk = panel.add(b * Q8_BLOCK_BYTES);
        let mut i0 = [_mm512_setzero_si512(); R];
        let mut i1 = [_mm512_setzero_si512(); R];
        for g in 0..QK / 4 {
            let w0 = _mm512_loadu_si512(blk.add(g * 4 * NR) as *const _);
            let w1 = _mm512_loadu_si512(blk.add(g * 4 * NR + 64) as *const _);
            for r in 0..R {
                let xv = x4(x, r, b, 4 * g);
                i0[r] = _mm512_dpbusd_epi32(i0[r], w0, xv);
                i1[r] = _mm512_dpbusd_epi32(i1[r], w1, xv);
            }
        }
        q_block_epilogue(x, b, 7, blk.add(QK * NR), &i0, &i1, &mut a0, &mut a1);
    }
    store_rows(y, ldy, n_valid, &a0, &a1);
}

/// The Q4_0 micro-kernel with VNNI: as Q8_0, each 64-byte load giving two operands (low
/// nibbles: inputs 4g..4g+4; high nibbles: inputs 16+4g..16+4g+4) for 16 outputs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_q4_vnni<const R: usize>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let nib = _mm512_set1_epi8(0x0F);
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    for b in 0..blocks {
        let blk = panel.add(b * Q4_BLOCK_BYTES);
        if R == 1 {
            prefetch_ahead::<Q4_BLOCK_BYTES>(blk);
        }
        let mut i0 = [_mm512_setzero_si512(); R];
        let mut i1 = [_mm512_setzero_si512(); R];
        if R == 1 {
            // One row (the matrix–vector product): the high nibbles are used in place, as
            // 16 × their value (`v & 0xF0`, one operation instead of a shift and a mask),
            // into accumulators of their own, divided by 16 (exactly: an arithmetic shift of
            // a multiple of 16) once per block.
            let hib = _mm512_set1_epi8(0xF0u8 as i8);
            let (mut j0, mut j1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for g in 0..QK / 8 {
                let v0 = _mm512_loadu_si512(blk.add(g * 4 * NR) as *const _);
                let v1 = _mm512_loadu_si512(blk.add(g * 4 * NR + 64) as *const _);
                let (xl, xh) = (x4(x, 0, b, 4 * g), x4(x, 0, b, 16 + 4 * g));
                i0[0] = _mm512_dpbusd_epi32(i0[0], _mm512_and_si512(v0, nib), xl);
                j0 = _mm512_dpbusd_epi32(j0, _mm512_and_si512(v0, hib), xh);
                i1[0] = _mm512_dpbusd_epi32(i1[0], _mm512_and_si512(v1, nib), xl);
                j1 = _mm512_dpbusd_epi32(j1, _mm512_and_si512(v1, hib), xh);
            }
            i0[0] = _mm512_add_epi32(i0[0], _mm512_srai_epi32(j0, 4));
            i1[0] = _mm512_add_epi32(i1[0], _mm512_srai_epi32(j1, 4));
            q_block_epilogue(x, b, 3, blk.add(QK * NR / 2), &i0, &i1, &mut a0, &mut a1);
            continue;
        }
        for g in 0..QK / 8 {
            let v0 = _mm512_loadu_si512(blk.add(g * 4 * NR) as *const _);
            let v1 = _mm512_loadu_si512(blk.add(g * 4 * NR + 64) as *const _);
            let (l0, h0) = (
                _mm512_and_si512(v0, nib),
                _mm512_and_si512(_mm512_srli_epi16(v0, 4), nib),
            );
            let (l1, h1) = (
                _mm512_and_si512(v1, nib),
                _mm512_and_si512(_mm512_srli_epi16(v1, 4), nib),
            );
            for r in 0..R {
                let (xl, xh) = (x4(x, r, b, 4 * g), x4(x, r, b, 16 + 4 * g));
                i0[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(i0[r], l0, xl), h0, xh);
                i1[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(i1[r], l1, xl), h1, xh);
            }
        }
        q_block_epilogue(x, b, 3, blk.add(QK * NR / 2), &i0, &i1, &mut a0, &mut a1);
    }
    store_rows(y, ldy, n_valid, &a0, &a1);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q8_tile_vnni(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    by_rows!(x.rows, tile_q8_vnni(x, panel, blocks, y, ldy, n_valid), 1 2 3 4 5 6)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn q4_tile_vnni(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    by_rows!(x.rows, tile_q4_vnni(x, panel, blocks, y, ldy, n_valid), 1 2 3 4 5 6)
}
