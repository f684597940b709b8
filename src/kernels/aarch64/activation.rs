//! The activations of the models' elementwise work, four values at a time (NEON): `e^(s·x)`,
//! the sigmoid, tanh and SiLU, by the algorithms and constants of
//! `super::super::activation_constants` (as the x86 kernels). `2^n` is applied as two normal
//! factors `2^⌊n/2⌋ · 2^(n−⌊n/2⌋)` for every `n` of the clamped range (−150..=128): the first
//! product is exact, the second rounds once, to infinity above the largest finite value and
//! gradually below the smallest normal one.
//!
//! The tail of a slice (its last `len % 4` values) goes through the same vector code from a
//! copy, so a value's result never depends on where in a slice it is.

use super::super::activation_constants::*;
use std::arch::aarch64::*;

/// `e^x` on four lanes; a NaN stays a NaN (`fmax`/`fmin` return a NaN operand).
#[inline(always)]
unsafe fn exp_4(x: float32x4_t) -> float32x4_t {
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_MIN)), vdupq_n_f32(EXP_MAX));
    let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(EXP_P[0]);
    for c in &EXP_P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let e = vfmaq_f32(r, p, vmulq_f32(r, r));
    let e = vaddq_f32(e, vdupq_n_f32(1.0));
    let ni = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(ni);
    let n2 = vsubq_s32(ni, n1);
    let pow2 =
        |m: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(m, vdupq_n_s32(127))));
    vmulq_f32(vmulq_f32(e, pow2(n1)), pow2(n2))
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
unsafe fn sigmoid_4(x: float32x4_t) -> float32x4_t {
    let one = vdupq_n_f32(1.0);
    vdivq_f32(one, vaddq_f32(one, exp_4(vnegq_f32(x))))
}

/// `tanh x`: `tanh |x|` — the odd polynomial for small `|x|`, else `1 − 2 / (e^{2|x|} + 1)` —
/// with `x`'s sign (so `tanh(−0) = −0`, as the standard library's).
#[inline(always)]
unsafe fn tanh_4(x: float32x4_t) -> float32x4_t {
    let a = vabsq_f32(x);
    let z = vmulq_f32(a, a);
    let mut p = vdupq_n_f32(TANH_P[0]);
    for c in &TANH_P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, z);
    }
    let small = vfmaq_f32(a, vmulq_f32(p, z), a);
    let one = vdupq_n_f32(1.0);
    let e = exp_4(vaddq_f32(a, a));
    let big = vsubq_f32(one, vdivq_f32(vdupq_n_f32(2.0), vaddq_f32(e, one)));
    let t = vbslq_f32(vcltq_f32(a, vdupq_n_f32(TANH_SMALL)), small, big);
    let sign = vdupq_n_u32(0x8000_0000);
    vreinterpretq_f32_u32(vorrq_u32(
        vreinterpretq_u32_f32(t),
        vandq_u32(vreinterpretq_u32_f32(x), sign),
    ))
}

/// Applies `f` to every value of `v` in place, four at a time; the tail through a copy.
#[inline(always)]
unsafe fn each_4(v: &mut [f32], f: impl Fn(float32x4_t) -> float32x4_t) {
    let mut chunks = v.chunks_exact_mut(4);
    for c in &mut chunks {
        vst1q_f32(c.as_mut_ptr(), f(vld1q_f32(c.as_ptr())));
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut t = [0.0f32; 4];
        t[..tail.len()].copy_from_slice(tail);
        vst1q_f32(t.as_mut_ptr(), f(vld1q_f32(t.as_ptr())));
        tail.copy_from_slice(&t[..tail.len()]);
    }
}

/// `v ← e^(s·v)`, every value.
#[target_feature(enable = "neon")]
pub(super) unsafe fn exp_neon(v: &mut [f32], s: f32) {
    each_4(v, |x| exp_4(vmulq_n_f32(x, s)))
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn sigmoid_neon(v: &mut [f32]) {
    each_4(v, |x| sigmoid_4(x))
}

#[target_feature(enable = "neon")]
pub(super) unsafe fn tanh_neon(v: &mut [f32]) {
    each_4(v, |x| tanh_4(x))
}

/// `x · σ(x)`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn silu_neon(v: &mut [f32]) {
    each_4(v, |x| vmulq_f32(x, sigmoid_4(x)))
}
