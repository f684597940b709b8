//! The activations of the models' elementwise work, sixteen values at a time (AVX-512) or
//! eight (AVX2):
//! `e^(s·x)`, the sigmoid, tanh and SiLU. RWKV-7 takes four exponentials per channel per layer
//! and token (its decay is `exp(-e^-0.5 · σ(z))`, its in-context learning rate and value gate
//! sigmoids), which glibc's scalar `expf` computed one value at a time: 3% of a 1.5B bf16
//! prefill on this project's Zen 5.
//!
//! Written here, not taken from a crate: the SIMD math crates choose their instruction set when
//! compiled (`wide` would give SSE2 in our one portable binary) or need a nightly compiler
//! (`sleef`'s `portable_simd`); these run under the table's run-time detection like every
//! other kernel.
//!
//! The algorithms and their constants are in `super::super::activation_constants` (shared with
//! the AArch64 kernels); here `2^n` is applied by `vscalefps` (AVX-512), which also gives
//! infinity past the largest finite value and gradual underflow below the smallest normal one,
//! or as two normal factors (AVX2, below).
//!
//! The tail of a slice (its last `len % 16` values) goes through the same vector code with a
//! masked load and store, so a value's result never depends on where in a slice it is: a
//! row computed alone (decode) and within a block of rows (prefill) agree bit for bit.

use super::super::activation_constants::*;
use std::arch::x86_64::*;

/// `e^x` on sixteen lanes; a NaN stays a NaN.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp_512(x: __m512) -> __m512 {
    // `min`/`max` return their second operand when either is a NaN: `x` goes second.
    let x = _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x);
    let x = _mm512_min_ps(_mm512_set1_ps(EXP_MAX), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let e = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    let e = _mm512_add_ps(e, _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e, n)
}

/// `1 / (1 + e^-x)`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sigmoid_512(x: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let e = exp_512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_div_ps(one, _mm512_add_ps(one, e))
}

/// `tanh x`: `tanh |x|` — the odd polynomial for small `|x|`, else `1 − 2 / (e^{2|x|} + 1)` —
/// with `x`'s sign (so `tanh(−0) = −0`, as the standard library's).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tanh_512(x: __m512) -> __m512 {
    let sign = _mm512_set1_epi32(i32::MIN);
    let xi = _mm512_castps_si512(x);
    let a = _mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
    let z = _mm512_mul_ps(a, a);
    let mut p = _mm512_set1_ps(TANH_P[0]);
    for c in &TANH_P[1..] {
        p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(*c));
    }
    let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), a, a);
    let one = _mm512_set1_ps(1.0);
    let e = exp_512(_mm512_add_ps(a, a));
    let big = _mm512_sub_ps(
        one,
        _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)),
    );
    let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(TANH_SMALL));
    let t = _mm512_mask_blend_ps(is_small, big, small);
    _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(t),
        _mm512_and_si512(xi, sign),
    ))
}

/// Applies `f` to every value of `v` in place, sixteen at a time; the tail through a mask.
#[inline(always)]
unsafe fn each_512(v: &mut [f32], f: impl Fn(__m512) -> __m512) {
    let (n, p) = (v.len(), v.as_mut_ptr());
    let mut i = 0;
    while i + 16 <= n {
        _mm512_storeu_ps(p.add(i), f(_mm512_loadu_ps(p.add(i))));
        i += 16;
    }
    if i < n {
        let m: __mmask16 = (1u16 << (n - i)) - 1;
        let x = _mm512_maskz_loadu_ps(m, p.add(i));
        _mm512_mask_storeu_ps(p.add(i), m, f(x));
    }
}

/// `v ← e^(s·v)`, every value.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_avx512(v: &mut [f32], s: f32) {
    let s = _mm512_set1_ps(s);
    each_512(v, |x| exp_512(_mm512_mul_ps(x, s)))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn sigmoid_avx512(v: &mut [f32]) {
    each_512(v, |x| sigmoid_512(x))
}

#[target_feature(enable = "avx512f")]
pub unsafe fn tanh_avx512(v: &mut [f32]) {
    each_512(v, |x| tanh_512(x))
}

/// `x · σ(x)`.
#[target_feature(enable = "avx512f")]
pub unsafe fn silu_avx512(v: &mut [f32]) {
    each_512(v, |x| _mm512_mul_ps(x, sigmoid_512(x)))
}

// AVX2: the same functions eight values at a time. Without `vscalefps`, `2^n` is applied as
// two factors `2^⌊n/2⌋ · 2^(n−⌊n/2⌋)`, each a normal number built from its exponent bits, for
// every `n` of the clamped range (−150..=128): the first product is exact, the second rounds
// once, to infinity above the largest finite value and gradually below the smallest normal
// one, as `vscalefps` does.

/// `e^x` on eight lanes; a NaN stays a NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_256(x: __m256) -> __m256 {
    // `min`/`max` return their second operand when either is a NaN: `x` goes second.
    let x = _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x);
    let x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let e = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    let e = _mm256_add_ps(e, _mm256_set1_ps(1.0));
    let ni = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32(ni, 1);
    let n2 = _mm256_sub_epi32(ni, n1);
    let pow2 = |m: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(m, _mm256_set1_epi32(127)),
            23,
        ))
    };
    _mm256_mul_ps(_mm256_mul_ps(e, pow2(n1)), pow2(n2))
}

/// `1 / (1 + e^-x)`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_256(x: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let e = exp_256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_div_ps(one, _mm256_add_ps(one, e))
}

/// `tanh x`, as [`tanh_512`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_256(x: __m256) -> __m256 {
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let a = _mm256_andnot_ps(sign, x);
    let z = _mm256_mul_ps(a, a);
    let mut p = _mm256_set1_ps(TANH_P[0]);
    for c in &TANH_P[1..] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
    }
    let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), a, a);
    let one = _mm256_set1_ps(1.0);
    let e = exp_256(_mm256_add_ps(a, a));
    let big = _mm256_sub_ps(
        one,
        _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
    );
    let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, _mm256_set1_ps(TANH_SMALL));
    let t = _mm256_blendv_ps(big, small, is_small);
    _mm256_or_ps(t, _mm256_and_ps(x, sign))
}

/// Applies `f` to every value of `v` in place, eight at a time; the tail through a mask.
#[inline(always)]
unsafe fn each_256(v: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let (n, p) = (v.len(), v.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(p.add(i), f(_mm256_loadu_ps(p.add(i))));
        i += 8;
    }
    if i < n {
        let m = _mm256_cmpgt_epi32(
            _mm256_set1_epi32((n - i) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let x = _mm256_maskload_ps(p.add(i), m);
        _mm256_maskstore_ps(p.add(i), m, f(x));
    }
}

/// `v ← e^(s·v)`, every value.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_avx2(v: &mut [f32], s: f32) {
    let s = _mm256_set1_ps(s);
    each_256(v, |x| exp_256(_mm256_mul_ps(x, s)))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn sigmoid_avx2(v: &mut [f32]) {
    each_256(v, |x| sigmoid_256(x))
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn tanh_avx2(v: &mut [f32]) {
    each_256(v, |x| tanh_256(x))
}

/// `x · σ(x)`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_avx2(v: &mut [f32]) {
    each_256(v, |x| _mm256_mul_ps(x, sigmoid_256(x)))
}
