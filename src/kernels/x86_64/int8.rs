//! The integer kernels: activations quantized to 8 bits per block, and the VNNI
//! (`vpdpbusd`) matrix tiles of the q8_0 and q4_0 formats, one row (decode) to six.

use super::super::layout::{NR, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
use super::super::QRows;
use super::{prefetch_ahead, store_chunks_256, store_rows};
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block_q8_avx512(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let v0 = _mm512_loadu_ps(x.as_ptr());
    let v1 = _mm512_loadu_ps(x.as_ptr().add(16));
    // `max` returns its second operand when either is a NaN: NaNs are passed over, as the
    // portable code's `f32::max` does.
    let m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps());
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v1), m));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let s = _mm512_set1_ps(id);
    // A NaN product (NaN input, or 0 · ∞ when `amax` is tiny) becomes 0 and the rest is held
    // to ±127, as the portable code's conversion and clamp; then round to nearest, ties to
    // even (the default rounding mode).
    let to_int = |v: __m512| {
        let p = _mm512_mul_ps(v, s);
        let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p);
        let p = _mm512_min_ps(
            _mm512_max_ps(p, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        _mm512_cvtps_epi32(p)
    };
    let (q0, q1) = (to_int(v0), to_int(v1));
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

// ---------------------------------------------------------------------------------------
// 256 bits: the same tiles, 8 outputs per register. With AVX-VNNI (the VEX form of
// `vpdpbusd`: Intel's client cores since Alder Lake, AMD's since Zen 5) as the 512-bit ones;
// on plain AVX2 through `vpmaddubsw` (u8 × i8 pairs summed into i16) and `vpmaddwd` against
// ones (i16 pairs into i32). Every CPU of the AVX2 level runs one of the two, and so do
// AVX-512 CPUs without AVX-512 VNNI.

/// Quantizes 32 activations as `super::super::portable::quantize_block_q8` (bit for bit, quiet
/// NaNs and infinities included: the conversion rounds to nearest, ties to even, as the
/// portable code).
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_block_q8_avx2(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let p = x.as_ptr();
    let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    // `max` returns its second operand when either is a NaN: NaNs are passed over, as the
    // portable code's `f32::max` does.
    let m = v.iter().fold(_mm256_setzero_ps(), |m, v| {
        _mm256_max_ps(_mm256_and_ps(*v, abs), m)
    });
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let s = _mm256_set1_ps(id);
    // A NaN product becomes 0 and the rest is held to ±127 (as in the AVX-512 quantizer).
    let [q0, q1, q2, q3] = v.map(|v| {
        let p = _mm256_mul_ps(v, s);
        let p = _mm256_and_ps(p, _mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
        let p = _mm256_min_ps(
            _mm256_max_ps(p, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvtps_epi32(p)
    });
    // Packing works within 128-bit halves: the dwords come out as a0 b0 c0 d0 | a1 b1 c1 d1
    // (each four values of q0..q3); the permutation puts them back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
    let s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    (amax / 127.0, _mm_cvtsi128_si32(s))
}

/// Four activations of row `r` at input `k` of block `b`, as one broadcast 32-bit lane.
#[inline(always)]
unsafe fn x4_256(x: &QRows, r: usize, b: usize, k: usize) -> __m256i {
    _mm256_set1_epi32(std::ptr::read_unaligned(
        x.q.add(r * x.ldq + b * QK + k) as *const i32
    ))
}

/// The 8 bf16 block scales of output chunk `c` (outputs 8c..8c+8) as f32: chunks 0 and 1 are
/// the low halves of the scale row's first sixteen 32-bit lanes, chunks 2 and 3 their high
/// halves (see `layout::bf16_lane_position`).
#[inline(always)]
unsafe fn chunk_scales(scales: *const u8, c: usize) -> __m256 {
    let v = _mm256_loadu_si256(scales.add(32 * (c % 2)) as *const __m256i);
    _mm256_castsi256_ps(if c < 2 {
        _mm256_slli_epi32(v, 16)
    } else {
        _mm256_and_si256(v, _mm256_set1_epi32(-65536))
    })
}

/// The AVX2 block epilogue: row `r`'s integer sums of chunk `c` (already free of the weights'
/// offset), converted and scaled by weight scale × activation scale into its accumulator —
/// the operations of the VNNI epilogue, so both give the same values.
#[inline(always)]
unsafe fn q_block_epilogue_256(isum: __m256i, d: __m256, dx: f32, acc: &mut __m256) {
    let f = _mm256_cvtepi32_ps(isum);
    *acc = _mm256_fmadd_ps(f, _mm256_mul_ps(d, _mm256_set1_ps(dx)), *acc);
}

/// The Q8_0 micro-kernel on 256 bits: `R` rows × the `C` output chunks from `c0` (8 outputs
/// each). With `VNNI`, `vpdpbusd` on the stored (offset) bytes, the offset removed per block as
/// in the 512-bit kernel. Without, `vpmaddubsw` multiplies unsigned by signed bytes and
/// saturates its pair sums at 16 bits, so the weights go in as magnitudes and the activations
/// take their signs (`|w| · sign(w)·x`): |w| ≤ 128 (the stored byte 0 is −128) and |x| ≤ 127
/// keep each pair below 2¹⁵ and every product exact, and the sums are the signed ones. Both
/// give the same integers, hence the same values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// Indexing [row][chunk] by both loop counters reads as the tile does.
#[allow(clippy::needless_range_loop)]
unsafe fn tile_q8_256<const R: usize, const C: usize, const VNNI: bool>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
    c0: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..blocks {
        let blk = panel.add(b * Q8_BLOCK_BYTES);
        let mut isum = [[_mm256_setzero_si256(); C]; R];
        for g in 0..QK / 4 {
            let xv: [__m256i; R] = std::array::from_fn(|r| x4_256(x, r, b, 4 * g));
            for c in 0..C {
                let at = blk.add(g * 4 * NR + 32 * (c0 + c)) as *const __m256i;
                let stored = _mm256_loadu_si256(at);
                if VNNI {
                    for r in 0..R {
                        isum[r][c] = _mm256_dpbusd_avx_epi32(isum[r][c], stored, xv[r]);
                    }
                    continue;
                }
                let w = _mm256_xor_si256(stored, flip);
                let mag = _mm256_abs_epi8(w);
                for r in 0..R {
                    let p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(xv[r], w));
                    isum[r][c] = _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(p, ones));
                }
            }
        }
        let scales = blk.add(QK * NR);
        for c in 0..C {
            let d = chunk_scales(scales, c0 + c);
            for r in 0..R {
                let mut i = isum[r][c];
                if VNNI {
                    let off = _mm256_set1_epi32(*x.sum.add(r * x.ldb + b) << 7);
                    i = _mm256_sub_epi32(i, off);
                }
                q_block_epilogue_256(i, d, *x.d.add(r * x.ldb + b), &mut acc[r][c]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        store_chunks_256(y.add(r * ldy), c0, n_valid, a);
    }
}

/// The Q4_0 micro-kernel on 256 bits: as Q8_0, the nibbles (0..=15, unsigned) going straight
/// into `vpdpbusd` or `vpmaddubsw` against the signed activations. Without VNNI, a block's
/// eight pair sums per lane (low and high nibbles of four groups) stay within 16 bits
/// (8 · 2 · 15 · 127 = 30,480), so they are added as i16 and widened once per block. The
/// storage offset (8) is removed per block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// Indexing [row][chunk] by both loop counters reads as the tile does.
#[allow(clippy::needless_range_loop)]
unsafe fn tile_q4_256<const R: usize, const C: usize, const VNNI: bool>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
    c0: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let nib = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for b in 0..blocks {
        let blk = panel.add(b * Q4_BLOCK_BYTES);
        // i16 pair sums (plain AVX2) or i32 sums (VNNI).
        let mut part = [[_mm256_setzero_si256(); C]; R];
        for g in 0..QK / 8 {
            let xl: [__m256i; R] = std::array::from_fn(|r| x4_256(x, r, b, 4 * g));
            let xh: [__m256i; R] = std::array::from_fn(|r| x4_256(x, r, b, 16 + 4 * g));
            for c in 0..C {
                let at = blk.add(g * 4 * NR + 32 * (c0 + c)) as *const __m256i;
                let v = _mm256_loadu_si256(at);
                let lo = _mm256_and_si256(v, nib);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                for r in 0..R {
                    part[r][c] = if VNNI {
                        let i = _mm256_dpbusd_avx_epi32(part[r][c], lo, xl[r]);
                        _mm256_dpbusd_avx_epi32(i, hi, xh[r])
                    } else {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, xl[r]),
                            _mm256_maddubs_epi16(hi, xh[r]),
                        );
                        _mm256_add_epi16(part[r][c], p)
                    };
                }
            }
        }
        let scales = blk.add(QK * NR / 2);
        for c in 0..C {
            let d = chunk_scales(scales, c0 + c);
            for r in 0..R {
                let i = if VNNI {
                    part[r][c]
                } else {
                    _mm256_madd_epi16(part[r][c], ones)
                };
                let off = _mm256_set1_epi32(*x.sum.add(r * x.ldb + b) << 3);
                let i = _mm256_sub_epi32(i, off);
                q_block_epilogue_256(i, d, *x.d.add(r * x.ldb + b), &mut acc[r][c]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        store_chunks_256(y.add(r * ldy), c0, n_valid, a);
    }
}

/// Rows per call of the 256-bit integer tiles.
pub const Q_TILE_ROWS_256: usize = 4;

/// A table entry over a 256-bit tile: one row takes all four chunks in one pass over the panel
/// (the matrix–vector product streams it once); several rows one chunk at a time, each weight
/// load serving every row.
macro_rules! tile_256 {
    ($name:ident, $tile:ident, $vnni:literal, $features:literal) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name(
            x: &QRows,
            panel: *const u8,
            blocks: usize,
            y: *mut f32,
            ldy: usize,
            n_valid: usize,
        ) {
            if x.rows == 1 {
                return $tile::<1, 4, $vnni>(x, panel, blocks, y, ldy, n_valid, 0);
            }
            for c0 in 0..4 {
                match x.rows {
                    2 => $tile::<2, 1, $vnni>(x, panel, blocks, y, ldy, n_valid, c0),
                    3 => $tile::<3, 1, $vnni>(x, panel, blocks, y, ldy, n_valid, c0),
                    4 => $tile::<4, 1, $vnni>(x, panel, blocks, y, ldy, n_valid, c0),
                    _ => unreachable!("no kernel for this size"),
                }
            }
        }
    };
}
tile_256!(q8_tile_avx2, tile_q8_256, false, "avx2,fma");
tile_256!(q4_tile_avx2, tile_q4_256, false, "avx2,fma");
tile_256!(q8_tile_avxvnni, tile_q8_256, true, "avx2,fma,avxvnni");
tile_256!(q4_tile_avxvnni, tile_q4_256, true, "avx2,fma,avxvnni");
