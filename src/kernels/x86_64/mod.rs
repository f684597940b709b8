//! The x86-64 kernels: AVX-512 (with VNNI for the integer products and BF16 for the bf16
//! matrix–matrix product), AVX2 + FMA, F16C.
//!
//! [`install`] puts the ones the CPU runs into the dispatch table (see `super::Kernels`);
//! nothing else calls them. Each is compiled for its target features with
//! `#[target_feature]`, so it must only run where `super::Isa` detection found them — which
//! is what the table guarantees. The integer (q8_0/q4_0, VNNI) kernels are in `int8.rs`, the
//! WKV-7 recurrence in `wkv.rs`, the activations (exp, sigmoid, tanh, SiLU) in `activation.rs`
//! and the AMX tiles in `amx.rs`.

use super::layout::NR;
use super::{Isa, Kernels, QTileFn};
use half::f16;
use std::arch::x86_64::*;

/// Calls `$f::<N>(args)` for the `N` among the listed literals that equals `$n`: the
/// micro-kernels are generic over their row count (registers), the callers pass it at run time.
macro_rules! by_rows {
    ($n:expr, $f:ident $args:tt, $($r:literal)*) => {
        match $n {
            $($r => $f::<$r> $args,)*
            _ => unreachable!("no kernel for this size"),
        }
    };
    // A kernel with a const parameter of its own before the rows.
    ($n:expr, $f:ident::<$g:tt> $args:tt, $($r:literal)*) => {
        match $n {
            $($r => $f::<$g, $r> $args,)*
            _ => unreachable!("no kernel for this size"),
        }
    };
}

mod activation;
mod amx;
mod int8;
mod wkv;
use int8::{
    q4_tile_avx2, q4_tile_avxvnni, q4_tile_vnni, q8_tile_avx2, q8_tile_avxvnni, q8_tile_vnni,
    quantize_block_q8_avx2, quantize_block_q8_avx512, Q_TILE_ROWS_256,
};
use wkv::{wkv7_token_avx2, wkv7_token_avx512, wkv7_token_rows_avx2, wkv7_token_rows_avx512};

/// Replaces the portable entries of `k` with the kernels of `isa` (and the VNNI integer
/// kernels of its width when `vnni`, the bf16 dot-product kernel when `bf16`).
pub(super) fn install(k: &mut Kernels, isa: Isa, vnni: bool, bf16: bool) {
    match isa {
        Isa::Avx512 => {
            k.dot_f32 = dot_f32_avx512;
            k.sum_f32 = sum_f32_avx512;
            k.gemv_f32 = gemv_f32_avx512;
            k.gemv_bf16 = gemv_bf16_avx512;
            k.gemv_f16 = gemv_f16_avx512;
            // F16C is part of both x86 levels (the detection checks it).
            k.f16_to_f32 = f16_to_f32_f16c;
            k.f32_to_bf16 = f32_to_bf16_avx512;
            k.gemm_f32 = gemm_f32_avx512;
            k.gemm_f32_rows = 12;
            k.gemm_bf16_wide = Some(gemm_wide_avx512::<PANEL_BF16>);
            k.gemm_f16_wide = Some(gemm_wide_avx512::<PANEL_F16>);
            k.quantize_block_q8 = quantize_block_q8_avx512;
            k.wkv7_token_x16 = Some(wkv7_token_avx512);
            k.wkv7_rows_x16 = Some(wkv7_token_rows_avx512);
            k.exp = activation::exp_avx512;
            k.sigmoid = activation::sigmoid_avx512;
            k.tanh = activation::tanh_avx512;
            k.silu = activation::silu_avx512;
        }
        Isa::Avx2 => {
            k.dot_f32 = dot_f32_avx2;
            k.gemv_f32 = gemv_f32_avx2;
            k.gemv_bf16 = gemv_bf16_avx2;
            k.gemv_f16 = gemv_f16_avx2;
            k.f16_to_f32 = f16_to_f32_f16c;
            k.gemm_f32 = gemm_f32_avx2;
            k.gemm_f32_rows = 3;
            k.quantize_block_q8 = quantize_block_q8_avx2;
            k.sum_f32 = sum_f32_avx2;
            k.wkv7_token_x16 = Some(wkv7_token_avx2);
            k.wkv7_rows_x16 = Some(wkv7_token_rows_avx2);
            k.exp = activation::exp_avx2;
            k.sigmoid = activation::sigmoid_avx2;
            k.tanh = activation::tanh_avx2;
            k.silu = activation::silu_avx2;
        }
        Isa::Neon | Isa::Portable => {}
    }
    // The int8 tiles: VNNI at the ISA's width, else the 256-bit ones through `vpmaddubsw`
    // (which AVX-512 CPUs without VNNI run too).
    let int8: Option<(QTileFn, QTileFn, usize)> = match (isa, vnni) {
        (Isa::Avx512, true) => Some((q8_tile_vnni, q4_tile_vnni, 6)),
        (Isa::Avx2, true) => Some((q8_tile_avxvnni, q4_tile_avxvnni, Q_TILE_ROWS_256)),
        (Isa::Avx512 | Isa::Avx2, false) => Some((q8_tile_avx2, q4_tile_avx2, Q_TILE_ROWS_256)),
        (Isa::Neon | Isa::Portable, _) => None,
    };
    if let Some((q8, q4, rows)) = int8 {
        k.q8_0_tile = q8;
        k.q4_0_tile = q4;
        k.q_tile_rows = rows;
    }
    if bf16 {
        k.gemm_bf16 = Some(gemm_bf16_avx512bf16);
        k.gemm_bf16_rows = BF16_TILE_ROWS;
        // AMX tiles, where usable, take whole panels (all rows in one call).
        if isa == Isa::Avx512 && amx::usable() {
            k.gemm_bf16 = Some(amx::gemm_bf16_amx);
            k.gemm_bf16_rows = usize::MAX;
            k.amx = true;
        }
    }
}

/// Output-column masks for a panel whose first `n` (≤ 32) outputs are real.
#[inline]
fn panel_masks(n: usize) -> (u16, u16) {
    let m = |c: usize| ((1u32 << c.min(16)) - 1) as u16;
    (m(n), m(n.saturating_sub(16)))
}

// Every kernel here reads only within the bounds its safe caller asserted (panels of
// k × 32 weights, k inputs) and writes only the outputs it was given; those reading two
// slices `a[i]`, `b[i]` read i < a.len() only (the callers pass slices of equal length),
// with unaligned loads.

/// Horizontal sum of 8 lanes.
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx512f")]
pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            acc1,
        );
        i += 32;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    let mut s = hsum256(_mm256_add_ps(acc0, acc1));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}
#[target_feature(enable = "avx512f")]
pub unsafe fn sum_f32_avx512(v: &[f32]) -> f32 {
    let (n, p) = (v.len(), v.as_ptr());
    let mut a = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (u, acc) in a.iter_mut().enumerate() {
            *acc = _mm512_add_ps(*acc, _mm512_loadu_ps(p.add(i + 16 * u)));
        }
        i += 64;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(a[0], a[1]),
        _mm512_add_ps(a[2], a[3]),
    ));
    while i < n {
        s += *p.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2")]
pub unsafe fn sum_f32_avx2(v: &[f32]) -> f32 {
    let (n, p) = (v.len(), v.as_ptr());
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_add_ps(*acc, _mm256_loadu_ps(p.add(i + 8 * u)));
        }
        i += 32;
    }
    let mut s = hsum256(_mm256_add_ps(
        _mm256_add_ps(a[0], a[1]),
        _mm256_add_ps(a[2], a[3]),
    ));
    while i < n {
        s += *p.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx512f")]
unsafe fn store_panel_512(y: *mut f32, n: usize, lo: __m512, hi: __m512) {
    let (m0, m1) = panel_masks(n);
    _mm512_mask_storeu_ps(y, m0, lo);
    _mm512_mask_storeu_ps(y.add(16), m1, hi);
}

/// How far ahead of the weights being multiplied the AVX-512 matrix–vector kernels prefetch
/// (bf16, f16, and q4_0's one-row VNNI tile; the AVX2 kernels have no hints).
const PREFETCH_AHEAD: usize = 8192;

/// Prefetches the `BYTES` bytes (a whole number of cache lines) `PREFETCH_AHEAD` bytes past
/// `at`, one hint per line. A hint never faults, so it may point past the weights' end.
///
/// A decode step streams each matrix once, and one core keeps only so many reads in flight
/// on its own while it computes. Measured on this project's Zen 5, a 1.5B decode step on one
/// thread, weights in anonymous huge pages (`bench --threads 1 --no-weight-cache`), A/B
/// interleaved in one run, two pairs each: bf16 75.2 → 72.2 ms, f16 79.8 → 72.8 and q4_0
/// 24.0 → 23.2 ms with these hints; q8_0 lost (37.7 → 40.3: its blocks carry twice the bytes
/// per instruction of q4_0's, so the out-of-order window already reaches far enough) and f32
/// gained nothing in a kernel-only test (`examples/kernel_speed.rs`): those two have none. In
/// that test, 4 KiB ahead did less than 8, 12–24 KiB less again, hints to L2 only less.
/// (Comparing builds through the weight cache misleads: each build's file sits in the page
/// cache in folios of its own history.)
#[inline(always)]
pub(super) unsafe fn prefetch_ahead<const BYTES: usize>(at: *const u8) {
    let ahead = at.wrapping_add(PREFETCH_AHEAD);
    for l in 0..BYTES / 64 {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l) as *const i8);
    }
}

#[target_feature(enable = "avx512f")]
pub unsafe fn gemv_f32_avx512(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        let mut a = [_mm512_setzero_ps(); 8];
        let mut i = 0;
        while i + 4 <= k {
            for u in 0..4 {
                let xb = _mm512_set1_ps(*x.add(i + u));
                let row = wp.add((i + u) * NR);
                a[2 * u] = _mm512_fmadd_ps(_mm512_loadu_ps(row), xb, a[2 * u]);
                a[2 * u + 1] = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16)), xb, a[2 * u + 1]);
            }
            i += 4;
        }
        while i < k {
            let xb = _mm512_set1_ps(*x.add(i));
            let row = wp.add(i * NR);
            a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(row), xb, a[0]);
            a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16)), xb, a[1]);
            i += 1;
        }
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[4], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[3]), _mm512_add_ps(a[5], a[7]));
        store_panel_512(y.as_mut_ptr().add(p * NR), n_out - p * NR, lo, hi);
    }
}

/// The two halves of a bf16 panel row (64 bytes at `row`), widened: outputs 0..16, 16..32.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_row_512(row: *const u16) -> (__m512, __m512) {
    let v = _mm512_loadu_si512(row as *const _);
    let lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    let hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536)));
    (lo, hi)
}

#[target_feature(enable = "avx512f")]
pub unsafe fn gemv_bf16_avx512(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        let mut a = [_mm512_setzero_ps(); 8];
        let mut i = 0;
        while i + 4 <= k {
            prefetch_ahead::<{ 4 * NR * 2 }>(wp.add(i * NR) as *const u8);
            for u in 0..4 {
                let xb = _mm512_set1_ps(*x.add(i + u));
                let (lo, hi) = bf16_row_512(wp.add((i + u) * NR));
                a[2 * u] = _mm512_fmadd_ps(lo, xb, a[2 * u]);
                a[2 * u + 1] = _mm512_fmadd_ps(hi, xb, a[2 * u + 1]);
            }
            i += 4;
        }
        while i < k {
            let xb = _mm512_set1_ps(*x.add(i));
            let (lo, hi) = bf16_row_512(wp.add(i * NR));
            a[0] = _mm512_fmadd_ps(lo, xb, a[0]);
            a[1] = _mm512_fmadd_ps(hi, xb, a[1]);
            i += 1;
        }
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[4], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[3]), _mm512_add_ps(a[5], a[7]));
        store_panel_512(y.as_mut_ptr().add(p * NR), n_out - p * NR, lo, hi);
    }
}

#[target_feature(enable = "avx512f")]
pub unsafe fn gemv_f16_avx512(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        let mut a = [_mm512_setzero_ps(); 8];
        let mut i = 0;
        let row = |i: usize| {
            let r = wp.add(i * NR);
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(r as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(r.add(16) as *const __m256i)),
            )
        };
        while i + 4 <= k {
            prefetch_ahead::<{ 4 * NR * 2 }>(wp.add(i * NR) as *const u8);
            for u in 0..4 {
                let xb = _mm512_set1_ps(*x.add(i + u));
                let (lo, hi) = row(i + u);
                a[2 * u] = _mm512_fmadd_ps(lo, xb, a[2 * u]);
                a[2 * u + 1] = _mm512_fmadd_ps(hi, xb, a[2 * u + 1]);
            }
            i += 4;
        }
        while i < k {
            let xb = _mm512_set1_ps(*x.add(i));
            let (lo, hi) = row(i);
            a[0] = _mm512_fmadd_ps(lo, xb, a[0]);
            a[1] = _mm512_fmadd_ps(hi, xb, a[1]);
            i += 1;
        }
        let lo = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[4], a[6]));
        let hi = _mm512_add_ps(_mm512_add_ps(a[1], a[3]), _mm512_add_ps(a[5], a[7]));
        store_panel_512(y.as_mut_ptr().add(p * NR), n_out - p * NR, lo, hi);
    }
}

/// Stores the 8-lane accumulators of output chunks `c0..c0 + C` of a panel (outputs
/// `8·c0..`), of which outputs below `n_valid` are real: the whole panel (`c0` = 0, `C` = 4) or
/// the chunks of one integer tile pass.
#[inline(always)]
pub(super) unsafe fn store_chunks_256<const C: usize>(
    y: *mut f32,
    c0: usize,
    n_valid: usize,
    acc: &[__m256; C],
) {
    for (c, a) in acc.iter().enumerate() {
        let j = 8 * (c0 + c);
        if j + 8 <= n_valid {
            _mm256_storeu_ps(y.add(j), *a);
        } else if j < n_valid {
            let mut tmp = [0.0f32; 8];
            _mm256_storeu_ps(tmp.as_mut_ptr(), *a);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), y.add(j), n_valid - j);
        }
    }
}

/// Generic AVX2 panel product: `row(i)` gives input i's 32 weights as four 8-lane vectors
/// in output order.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2_with(
    k: usize,
    x: *const f32,
    y: *mut f32,
    n: usize,
    row: impl Fn(usize) -> [__m256; 4],
) {
    let mut a = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i + 2 <= k {
        for u in 0..2 {
            let xb = _mm256_set1_ps(*x.add(i + u));
            let w = row(i + u);
            for q in 0..4 {
                a[4 * u + q] = _mm256_fmadd_ps(w[q], xb, a[4 * u + q]);
            }
        }
        i += 2;
    }
    if i < k {
        let xb = _mm256_set1_ps(*x.add(i));
        let w = row(i);
        for q in 0..4 {
            a[q] = _mm256_fmadd_ps(w[q], xb, a[q]);
        }
    }
    let acc = [
        _mm256_add_ps(a[0], a[4]),
        _mm256_add_ps(a[1], a[5]),
        _mm256_add_ps(a[2], a[6]),
        _mm256_add_ps(a[3], a[7]),
    ];
    store_chunks_256(y, 0, n, &acc);
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv_f32_avx2(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_avx2_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR);
            [
                _mm256_loadu_ps(r),
                _mm256_loadu_ps(r.add(8)),
                _mm256_loadu_ps(r.add(16)),
                _mm256_loadu_ps(r.add(24)),
            ]
        });
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemv_bf16_avx2(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    let mask = _mm256_set1_epi32(-65536);
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_avx2_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR);
            // Lanes 0..8 of the first 32 bytes hold outputs 0..8 (low) and 16..24 (high);
            // of the second, outputs 8..16 and 24..32.
            let v0 = _mm256_loadu_si256(r as *const __m256i);
            let v1 = _mm256_loadu_si256(r.add(16) as *const __m256i);
            [
                _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)),
                _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)),
                _mm256_castsi256_ps(_mm256_and_si256(v0, mask)),
                _mm256_castsi256_ps(_mm256_and_si256(v1, mask)),
            ]
        });
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv_f16_avx2(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_avx2_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR);
            let h = |o: usize| _mm256_cvtph_ps(_mm_loadu_si128(r.add(o) as *const __m128i));
            [h(0), h(8), h(16), h(24)]
        });
    }
}

#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        i += 8;
    }
    while i < n {
        dst[i] = f16::from_bits(src[i]).to_f32();
        i += 1;
    }
}

/// f32 to bf16 bits, round to nearest even, NaN kept a (quiet) NaN: the integer arithmetic of
/// `super::bf16_bits`, sixteen values at a time (not `vcvtneps2bf16`, which flushes
/// denormals to zero).
#[target_feature(enable = "avx512f")]
pub unsafe fn f32_to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (one, bias, quiet) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7FFF),
        _mm512_set1_epi32(0x40),
    );
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let b = _mm512_castps_si512(v);
        let hi = _mm512_srli_epi32(b, 16);
        let odd = _mm512_and_si512(hi, one);
        let r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(bias, odd)), 16);
        let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        let r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, quiet));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            _mm512_cvtepi32_epi16(r),
        );
        i += 16;
    }
    while i < n {
        dst[i] = super::bf16_bits(src[i]);
        i += 1;
    }
}

/// Panel kinds of the f32 micro-kernel [`tile_512`]: f32 panels, or bf16 and f16 panels as
/// packed, widened in registers.
const PANEL_F32: u8 = 0;
const PANEL_BF16: u8 = 1;
const PANEL_F16: u8 = 2;

/// The f32 micro-kernel: `R` rows × 32 outputs, accumulated in 2R registers, over a panel of
/// kind `KIND` at `w`. A bf16 or f16 panel's rows are widened in registers (exactly: bf16 is
/// the top half of an f32, f16 converts without rounding), so its products and sums are, in
/// the same order, those of an f32 panel of the same values, and no widened copy is written.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_512<const KIND: u8, const R: usize>(
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const u8,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let row_bytes = NR * if KIND == PANEL_F32 { 4 } else { 2 };
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    for i in 0..k {
        let row = w.add(i * row_bytes);
        let (w0, w1) = match KIND {
            PANEL_F32 => {
                let row = row as *const f32;
                (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)))
            }
            PANEL_BF16 => bf16_row_512(row as *const u16),
            _ => (
                _mm512_cvtph_ps(_mm256_loadu_si256(row as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32) as *const __m256i)),
            ),
        };
        for r in 0..R {
            let b = _mm512_set1_ps(*x.add(r * ldx + i));
            a0[r] = _mm512_fmadd_ps(w0, b, a0[r]);
            a1[r] = _mm512_fmadd_ps(w1, b, a1[r]);
        }
    }
    store_rows(y, ldy, n_valid, &a0, &a1);
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32_avx512(
    rows: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let w = w as *const u8;
    by_rows!(rows, tile_512::<PANEL_F32>(x, ldx, k, w, y, ldy, n_valid), 1 2 3 4 5 6 7 8 9 10 11 12)
}

/// The widening matrix–matrix kernel on bf16 (`KIND` = [`PANEL_BF16`]) or f16 panels.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_wide_avx512<const KIND: u8>(
    rows: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let w = w as *const u8;
    by_rows!(rows, tile_512::<KIND>(x, ldx, k, w, y, ldy, n_valid), 1 2 3 4 5 6 7 8 9 10 11 12)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile_f32_256<const R: usize>(
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mut a = [[_mm256_setzero_ps(); 4]; R];
    for i in 0..k {
        let mut b = [_mm256_setzero_ps(); R];
        for r in 0..R {
            b[r] = _mm256_set1_ps(*x.add(r * ldx + i));
        }
        for q in 0..4 {
            let wq = _mm256_loadu_ps(w.add(i * NR + 8 * q));
            for r in 0..R {
                a[r][q] = _mm256_fmadd_ps(wq, b[r], a[r][q]);
            }
        }
    }
    for r in 0..R {
        store_chunks_256(y.add(r * ldy), 0, n_valid, &a[r]);
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32_avx2(
    rows: usize,
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    match rows {
        1 => tile_f32_256::<1>(x, ldx, k, w, y, ldy, n_valid),
        2 => tile_f32_256::<2>(x, ldx, k, w, y, ldy, n_valid),
        3 => tile_f32_256::<3>(x, ldx, k, w, y, ldy, n_valid),
        _ => unreachable!("tile rows"),
    }
}

/// Stores the `R` rows of 32 outputs, of which the first `n_valid` are real.
#[inline(always)]
pub(super) unsafe fn store_rows<const R: usize>(
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
    a0: &[__m512; R],
    a1: &[__m512; R],
) {
    let (m0, m1) = panel_masks(n_valid);
    for r in 0..R {
        _mm512_mask_storeu_ps(y.add(r * ldy), m0, a0[r]);
        _mm512_mask_storeu_ps(y.add(r * ldy + 16), m1, a1[r]);
    }
}

/// Rows per call of the bf16 dot-product micro-kernel.
const BF16_TILE_ROWS: usize = 12;

/// A 512-bit integer vector as 32 bf16 values (the same bits).
#[inline(always)]
fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes of plain data; every bit pattern is valid for both.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// The bf16 dot-product micro-kernel: `R` rows × 32 outputs, accumulated in 2R registers.
///
/// A packed bf16 panel row (input i) holds, in 32-bit lane l, output l's weight (low half) and
/// output 16 + l's (high half). `vdpbf16ps` wants the weights of two consecutive inputs of one
/// output in a lane, so the rows of inputs 2q and 2q + 1 are recombined in registers: low
/// halves of both → outputs 0..16, high halves → outputs 16..32. Against each, the row's two
/// activations broadcast as one 32-bit lane: per lane `acc += w[2q]·x[2q] + w[2q+1]·x[2q+1]`,
/// products exact, sums in f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16_dot<const R: usize>(
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    // Odd 16-bit elements: the high half of each 32-bit lane.
    const HIGH: u32 = 0xAAAA_AAAA;
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    let mut i = 0;
    while i < k {
        let e = _mm512_loadu_si512(w.add(i * NR) as *const _);
        // The last input of an odd k pairs with zero weights (and the zero activation past it).
        let o = if i + 1 < k {
            _mm512_loadu_si512(w.add((i + 1) * NR) as *const _)
        } else {
            _mm512_setzero_si512()
        };
        let w0 = as_bh(_mm512_mask_blend_epi16(HIGH, e, _mm512_slli_epi32(o, 16)));
        let w1 = as_bh(_mm512_mask_blend_epi16(HIGH, _mm512_srli_epi32(e, 16), o));
        for r in 0..R {
            let xv = as_bh(_mm512_set1_epi32(std::ptr::read_unaligned(
                x.add(r * ldx + i) as *const i32,
            )));
            a0[r] = _mm512_dpbf16_ps(a0[r], w0, xv);
            a1[r] = _mm512_dpbf16_ps(a1[r], w1, xv);
        }
        i += 2;
    }
    store_rows(y, ldy, n_valid, &a0, &a1);
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16_avx512bf16(
    rows: usize,
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    by_rows!(rows, tile_bf16_dot(x, ldx, k, w, y, ldy, n_valid), 1 2 3 4 5 6 7 8 9 10 11 12)
}
