//! The bf16 matrix–matrix kernel of AArch64 CPUs with FEAT_BF16 (Neoverse V1 / Graviton 3 and
//! later, Apple M2 and later, Cortex-A510/A710 and later): `bfdot` sums two bf16 × bf16
//! products per 32-bit lane into f32, as AVX-512 BF16's `vdpbf16ps` does on x86, reading the
//! packed bf16 panels as they are. And the rounding of the activations to bf16 it takes.
//!
//! `bfdot` is written as inline assembly: its intrinsic (`vbfdotq_f32`) is not stable in Rust.
//! Without FEAT_EBF16's extended mode (off by default) the instruction adds with round-to-odd
//! rather than to nearest, and flushes subnormals: each of its two additions per lane may be
//! one unit in the last place off where `vdpbf16ps` is half of one. The products themselves
//! are exact, as there.

use super::store_chunks;
use crate::kernels::layout::NR;
use std::arch::aarch64::*;

/// Rows per call of the bf16 micro-kernel: 3 × 8 accumulators, a pair of panel rows and
/// their two recombinations, and the three activation pairs fit the 32 registers.
pub(super) const GEMM_BF16_ROWS: usize = 3;

/// `acc + w[2l]·x[0] + w[2l+1]·x[1]` in each lane l (`bfdot`, `x` a broadcast pair).
#[inline(always)]
unsafe fn bfdot(acc: float32x4_t, w: uint16x8_t, x: uint16x8_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY: called only from functions compiled for (and run on CPUs with) `bf16`; a
    // register-only instruction.
    std::arch::asm!(
        "bfdot {acc:v}.4s, {w:v}.8h, {x:v}.8h",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        x = in(vreg) x,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `R` rows × 32 outputs over bf16 activations: per pair of inputs (2q, 2q + 1), the two panel
/// rows are recombined into one lane per output holding both of its weights — `trn1` of the
/// rows' interleaved 16-bit elements gives outputs 0..16 (the even positions), `trn2` outputs
/// 16..32 (the odd ones) — and each row's activation pair is broadcast to every lane.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile_bf16_dot<const R: usize>(
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); 8]; R];
    let mut i = 0;
    while i < k {
        let xv: [uint16x8_t; R] = std::array::from_fn(|r| {
            let pair = std::ptr::read_unaligned(x.add(r * ldx + i) as *const u32);
            vreinterpretq_u16_u32(vdupq_n_u32(pair))
        });
        let (e, o) = (w.add(i * NR), w.add((i + 1) * NR));
        for c in 0..4 {
            let a = vld1q_u16(e.add(8 * c));
            // The last input of an odd k pairs with zero weights (and the zero activation
            // past it).
            let b = if i + 1 < k {
                vld1q_u16(o.add(8 * c))
            } else {
                vdupq_n_u16(0)
            };
            let (lo, hi) = (vtrn1q_u16(a, b), vtrn2q_u16(a, b));
            for r in 0..R {
                acc[r][c] = bfdot(acc[r][c], lo, xv[r]);
                acc[r][4 + c] = bfdot(acc[r][4 + c], hi, xv[r]);
            }
        }
        i += 2;
    }
    for (r, a) in acc.iter().enumerate() {
        store_chunks(y.add(r * ldy), 0, n_valid, a);
    }
}

/// The table's bf16 dot-product matrix–matrix kernel (see `super::super::GemmBf16Fn`).
#[target_feature(enable = "neon,bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_bf16_bfdot(
    rows: usize,
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    match rows {
        1 => tile_bf16_dot::<1>(x, ldx, k, w, y, ldy, n_valid),
        2 => tile_bf16_dot::<2>(x, ldx, k, w, y, ldy, n_valid),
        3 => tile_bf16_dot::<3>(x, ldx, k, w, y, ldy, n_valid),
        _ => unreachable!("tile rows"),
    }
}

/// f32 to bf16 bits, round to nearest even, a NaN kept a quiet NaN: `super::super::bf16_bits`
/// on every value, four at a time (integer arithmetic, so no FPCR mode enters).
#[target_feature(enable = "neon")]
pub(super) unsafe fn f32_to_bf16_neon(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let bias = vdupq_n_u32(0x7FFF);
    let one = vdupq_n_u32(1);
    let quiet = vdup_n_u16(0x40);
    let mut i = 0;
    while i + 4 <= n {
        let v = vld1q_f32(s.add(i));
        let b = vreinterpretq_u32_f32(v);
        let lsb = vandq_u32(vshrq_n_u32::<16>(b), one);
        let rounded = vshrn_n_u32::<16>(vaddq_u32(b, vaddq_u32(bias, lsb)));
        let nan = vorr_u16(vshrn_n_u32::<16>(b), quiet);
        // Lanes equal to themselves are not NaN.
        let ordered = vmovn_u32(vceqq_f32(v, v));
        vst1_u16(d.add(i), vbsl_u16(ordered, rounded, nan));
        i += 4;
    }
    while i < n {
        *d.add(i) = crate::kernels::bf16_bits(*s.add(i));
        i += 1;
    }
}
