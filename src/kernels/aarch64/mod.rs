//! The AArch64 kernels (NEON, with the `sdot` int8 dot product where the CPU has it: Apple
//! M1 and later, Neoverse N1 / Graviton 2 and later, Cortex-A76 and later).
//!
//! NEON is part of every AArch64 CPU, so the level is always there; `dotprod` is detected at
//! run time and plays the part of x86's VNNI (`RWKV_NO_VNNI` turns it off). The kernels read
//! the panel layouts of `super::layout` as the x86 ones do, four outputs per 128-bit register:
//! - `gemv_f32`, `gemv_bf16`, `gemv_f16` stream 32-output panels into eight accumulators (bf16
//!   widened by a shift or a mask of its interleaved pairs, f16 by `fcvtl`);
//! - `q8_0_tile`, `q4_0_tile`: the int8 products, through `sdot` (four i8 × i8 products per
//!   32-bit lane, the operand shape of the blocks' `[g][j][i: 4]` layout) or, without it,
//!   `smull` and pairwise adds; both give the integer sums of the x86 kernels and the same
//!   epilogue, so the same values;
//! - the f32 matrix–matrix product (3 rows × 32 outputs), the activation quantizer;
//! - with FEAT_BF16, the bf16 matrix–matrix product through `bfdot` (`bf16.rs`: two exact
//!   bf16 products per lane, as AVX-512 BF16's `vdpbf16ps`), `RWKV_NO_BF16` turning it off;
//! - f16 to f32 (`fcvtl`) and f32 to bf16 (round to nearest even) conversions;
//! - the WKV-7 token kernels (both state layouts, `wkv.rs`) and the activations (exp, sigmoid,
//!   tanh, SiLU, `activation.rs`).
//!
//! `sdot` and `bfdot` are written as inline assembly: their intrinsics (`vdotq_s32`,
//! `vbfdotq_f32`) are not stable in Rust.
//!
//! Tested (against the portable kernels, at both levels) by running the test suite for
//! `aarch64-unknown-linux-gnu` under `qemu-aarch64`; see the README ("Other CPUs").

use super::layout::{NR, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
use super::{Isa, Kernels, QRows};
use std::arch::aarch64::*;

mod activation;
mod bf16;
mod wkv;
use wkv::{wkv7_token_neon, wkv7_token_rows_neon};

/// Puts the AArch64 kernels of level `isa` into the table (`dotprod`: the int8 dot products;
/// `bf16`: the bf16 dot products).
pub(super) fn install(k: &mut Kernels, isa: Isa, dotprod: bool, bf16: bool) {
    if isa != Isa::Neon {
        return;
    }
    k.f16_to_f32 = f16_to_f32_neon;
    k.f32_to_bf16 = bf16::f32_to_bf16_neon;
    if bf16 {
        k.gemm_bf16 = Some(bf16::gemm_bf16_bfdot);
        k.gemm_bf16_rows = bf16::GEMM_BF16_ROWS;
    }
    k.dot_f32 = dot_f32_neon;
    k.sum_f32 = sum_f32_neon;
    k.gemv_f32 = gemv_f32_neon;
    k.gemv_bf16 = gemv_bf16_neon;
    k.gemv_f16 = gemv_f16_neon;
    k.quantize_block_q8 = quantize_block_q8_neon;
    k.wkv7_token_x16 = Some(wkv7_token_neon);
    k.wkv7_rows_x16 = Some(wkv7_token_rows_neon);
    k.gemm_f32 = gemm_f32_neon;
    k.gemm_f32_rows = GEMM_ROWS;
    k.exp = activation::exp_neon;
    k.sigmoid = activation::sigmoid_neon;
    k.tanh = activation::tanh_neon;
    k.silu = activation::silu_neon;
    k.q_tile_rows = Q_TILE_ROWS;
    if dotprod {
        k.q8_0_tile = q8_tile_sdot;
        k.q4_0_tile = q4_tile_sdot;
    } else {
        k.q8_0_tile = q8_tile_neon;
        k.q4_0_tile = q4_tile_neon;
    }
}

// Every kernel here reads only within the bounds its safe caller asserted (panels of
// k × 32 weights, k inputs) and writes only the outputs it was given.

#[target_feature(enable = "neon")]
unsafe fn dot_f32_neon(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (u, s) in acc.iter_mut().enumerate() {
            *s = vfmaq_f32(
                *s,
                vld1q_f32(pa.add(i + 4 * u)),
                vld1q_f32(pb.add(i + 4 * u)),
            );
        }
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn sum_f32_neon(v: &[f32]) -> f32 {
    let (n, p) = (v.len(), v.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (u, s) in acc.iter_mut().enumerate() {
            *s = vaddq_f32(*s, vld1q_f32(p.add(i + 4 * u)));
        }
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < n {
        s += *p.add(i);
        i += 1;
    }
    s
}

/// The matrix–vector product over one panel: `row(i)` gives input i's 32 weights as eight
/// 4-lane vectors in output order; two inputs at a time into two sets of accumulators.
#[inline(always)]
unsafe fn gemv_with(
    k: usize,
    x: *const f32,
    y: *mut f32,
    n: usize,
    row: impl Fn(usize) -> [float32x4_t; 8],
) {
    let mut a = [[vdupq_n_f32(0.0); 8]; 2];
    let mut i = 0;
    while i + 2 <= k {
        for (u, acc) in a.iter_mut().enumerate() {
            let xi = *x.add(i + u);
            let w = row(i + u);
            for (s, w) in acc.iter_mut().zip(w) {
                *s = vfmaq_n_f32(*s, w, xi);
            }
        }
        i += 2;
    }
    if i < k {
        let xi = *x.add(i);
        for (s, w) in a[0].iter_mut().zip(row(i)) {
            *s = vfmaq_n_f32(*s, w, xi);
        }
    }
    let acc: [float32x4_t; 8] = std::array::from_fn(|c| vaddq_f32(a[0][c], a[1][c]));
    store_chunks(y, 0, n, &acc);
}

#[target_feature(enable = "neon")]
unsafe fn gemv_f32_neon(w: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR);
            std::array::from_fn(|c| vld1q_f32(r.add(4 * c)))
        });
    }
}

/// bf16 panels: a row's sixteen 32-bit lanes hold outputs `l` (low half) and `16 + l` (high
/// half); shifting the low half up or masking it off widens them exactly.
#[target_feature(enable = "neon")]
unsafe fn gemv_bf16_neon(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    let hi = vdupq_n_u32(0xFFFF_0000);
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR) as *const u32;
            let v: [uint32x4_t; 4] = std::array::from_fn(|q| vld1q_u32(r.add(4 * q)));
            std::array::from_fn(|c| {
                vreinterpretq_f32_u32(if c < 4 {
                    vshlq_n_u32::<16>(v[c])
                } else {
                    vandq_u32(v[c - 4], hi)
                })
            })
        });
    }
}

/// Four f16 values widened to f32 (`fcvtl`, exact). The instruction is part of every
/// AArch64 CPU's Advanced SIMD, but its Rust intrinsic (`vcvt_f32_f16`) asks for FEAT_FP16,
/// which cores such as the Cortex-A72 lack: written as inline assembly instead.
#[inline(always)]
unsafe fn widen_f16(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only instruction of the base Advanced SIMD set.
    std::arch::asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = lateout(vreg) out,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

/// f16 values widened to f32 (`fcvtl`), four at a time.
#[target_feature(enable = "neon")]
unsafe fn f16_to_f32_neon(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(d.add(i), widen_f16(vld1_u16(s.add(i))));
        i += 4;
    }
    while i < n {
        *d.add(i) = half::f16::from_bits(*s.add(i)).to_f32();
        i += 1;
    }
}

/// f16 panels (output order), widened four at a time.
#[target_feature(enable = "neon")]
unsafe fn gemv_f16_neon(w: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let (w, x) = (w.as_ptr(), x.as_ptr());
    let n_out = y.len();
    for p in 0..n_out.div_ceil(NR) {
        let wp = w.add(p * k * NR);
        gemv_with(k, x, y.as_mut_ptr().add(p * NR), n_out - p * NR, |i| {
            let r = wp.add(i * NR);
            std::array::from_fn(|c| widen_f16(vld1_u16(r.add(4 * c))))
        });
    }
}

/// Rows per call of the f32 matrix–matrix micro-kernel: 3 × 8 accumulators, a weight vector
/// and the three activations fit the 32 registers.
const GEMM_ROWS: usize = 3;

/// The f32 micro-kernel: `R` rows × 32 outputs in 8R registers; per input, each of the
/// panel row's eight vectors is loaded once and serves every row.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile_f32<const R: usize>(
    x: *const f32,
    ldx: usize,
    k: usize,
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mut a = [[vdupq_n_f32(0.0); 8]; R];
    for i in 0..k {
        let b: [f32; R] = std::array::from_fn(|r| *x.add(r * ldx + i));
        let row = w.add(i * NR);
        for c in 0..8 {
            let wc = vld1q_f32(row.add(4 * c));
            for r in 0..R {
                a[r][c] = vfmaq_n_f32(a[r][c], wc, b[r]);
            }
        }
    }
    for r in 0..R {
        store_chunks(y.add(r * ldy), 0, n_valid, &a[r]);
    }
}

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32_neon(
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
        1 => tile_f32::<1>(x, ldx, k, w, y, ldy, n_valid),
        2 => tile_f32::<2>(x, ldx, k, w, y, ldy, n_valid),
        3 => tile_f32::<3>(x, ldx, k, w, y, ldy, n_valid),
        _ => unreachable!("tile rows"),
    }
}

/// Quantizes 32 activations as `super::portable::quantize_block_q8` (bit for bit, quiet NaNs
/// and infinities included: `fcvtns` rounds to nearest, ties to even, as the portable code; a
/// signalling NaN, which no arithmetic produces, may be passed over in another order).
#[target_feature(enable = "neon")]
unsafe fn quantize_block_q8_neon(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let p = x.as_ptr();
    let v: [float32x4_t; 8] = std::array::from_fn(|u| vld1q_f32(p.add(4 * u)));
    // `fmaxnm` passes over NaNs, as the portable code's `f32::max` does.
    let m = v
        .iter()
        .fold(vdupq_n_f32(0.0), |m, v| vmaxnmq_f32(m, vabsq_f32(*v)));
    let amax = vmaxnmvq_f32(m);
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    // The rest is held to ±127 first, as the portable code's clamp; a NaN product (NaN input,
    // or 0 · ∞ when `amax` is tiny) stays a NaN through `fmax`/`fmin` and converts to 0, as
    // the portable code's `as i32`.
    let qi: [int32x4_t; 8] = std::array::from_fn(|u| {
        let p = vmulq_n_f32(v[u], id);
        vcvtnq_s32_f32(vminq_f32(
            vmaxq_f32(p, vdupq_n_f32(-127.0)),
            vdupq_n_f32(127.0),
        ))
    });
    let narrow = |a: usize| {
        let lo = vcombine_s16(vqmovn_s32(qi[a]), vqmovn_s32(qi[a + 1]));
        let hi = vcombine_s16(vqmovn_s32(qi[a + 2]), vqmovn_s32(qi[a + 3]));
        vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi))
    };
    vst1q_s8(q.as_mut_ptr(), narrow(0));
    vst1q_s8(q.as_mut_ptr().add(16), narrow(4));
    let s = qi.iter().fold(vdupq_n_s32(0), |s, v| vaddq_s32(s, *v));
    (amax / 127.0, vaddvq_s32(s))
}

/// `acc + Σ a·b` over each lane's four i8 pairs (`sdot`).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: called only from functions compiled for (and run on CPUs with) `dotprod`; a
    // register-only instruction.
    std::arch::asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `sdot` without the instruction: `smull` (i8 × i8 into i16), pairwise adds into each lane's
/// four products. Each i16 pair sum is at most 2 · 128 · 127 < 2¹⁵, so nothing overflows.
#[inline(always)]
unsafe fn sdot_widening(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(acc, vpaddq_s16(lo, hi))
}

#[inline(always)]
unsafe fn dot4<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        sdot(acc, a, b)
    } else {
        sdot_widening(acc, a, b)
    }
}

/// Four activations of row `r` at input `k` of block `b`, in every 32-bit lane.
#[inline(always)]
unsafe fn x4(x: &QRows, r: usize, b: usize, k: usize) -> int8x16_t {
    vreinterpretq_s8_s32(vdupq_n_s32(std::ptr::read_unaligned(
        x.q.add(r * x.ldq + b * QK + k) as *const i32,
    )))
}

/// The bf16 block scales of outputs `4c..4c + 4` as f32 (see `layout::bf16_lane_position`).
#[inline(always)]
unsafe fn chunk_scales(scales: *const u8, c: usize) -> float32x4_t {
    let v = vld1q_u32(scales.add(16 * (c % 4)) as *const u32);
    vreinterpretq_f32_u32(if c < 4 {
        vshlq_n_u32::<16>(v)
    } else {
        vandq_u32(v, vdupq_n_u32(0xFFFF_0000))
    })
}

/// The block epilogue of the x86 kernels (the same operations): `acc + f32(isum) · (d · dx)`.
#[inline(always)]
unsafe fn epilogue(acc: &mut float32x4_t, isum: int32x4_t, d: float32x4_t, dx: f32) {
    *acc = vfmaq_f32(*acc, vcvtq_f32_s32(isum), vmulq_n_f32(d, dx));
}

/// Stores the 4-lane accumulators of output chunks `c0..c0 + C` of a panel (outputs `4·c0..`),
/// of which outputs below `n_valid` are real: the whole panel (`c0` = 0, `C` = 8) or the chunks
/// of one integer tile pass.
#[inline(always)]
unsafe fn store_chunks<const C: usize>(
    y: *mut f32,
    c0: usize,
    n_valid: usize,
    acc: &[float32x4_t; C],
) {
    for (c, a) in acc.iter().enumerate() {
        let j = 4 * (c0 + c);
        if j + 4 <= n_valid {
            vst1q_f32(y.add(j), *a);
        } else if j < n_valid {
            let mut tmp = [0.0f32; 4];
            vst1q_f32(tmp.as_mut_ptr(), *a);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), y.add(j), n_valid - j);
        }
    }
}

/// The Q8_0 micro-kernel: `R` rows × the `C` 4-output chunks from `c0`. The stored bytes
/// (`q + 128`) become the signed weights by flipping their top bit, so the sums are the signed
/// ones, with no storage offset to remove.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_q8<const R: usize, const C: usize, const DOT: bool>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
    c0: usize,
) {
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_f32(0.0); C]; R];
    for b in 0..blocks {
        let blk = panel.add(b * Q8_BLOCK_BYTES);
        let mut isum = [[vdupq_n_s32(0); C]; R];
        for g in 0..QK / 4 {
            let xv: [int8x16_t; R] = std::array::from_fn(|r| x4(x, r, b, 4 * g));
            for c in 0..C {
                let at = blk.add(g * 4 * NR + 16 * (c0 + c));
                let w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(at), flip));
                for r in 0..R {
                    isum[r][c] = dot4::<DOT>(isum[r][c], w, xv[r]);
                }
            }
        }
        let scales = blk.add(QK * NR);
        for c in 0..C {
            let d = chunk_scales(scales, c0 + c);
            for r in 0..R {
                epilogue(&mut acc[r][c], isum[r][c], d, *x.d.add(r * x.ldb + b));
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        store_chunks(y.add(r * ldy), c0, n_valid, a);
    }
}

/// The Q4_0 micro-kernel: the nibbles (0..=15) as signed bytes against the activations, the
/// storage offset (8) removed per block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_q4<const R: usize, const C: usize, const DOT: bool>(
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
    c0: usize,
) {
    let nib = vdupq_n_u8(0x0F);
    let mut acc = [[vdupq_n_f32(0.0); C]; R];
    for b in 0..blocks {
        let blk = panel.add(b * Q4_BLOCK_BYTES);
        let mut isum = [[vdupq_n_s32(0); C]; R];
        for g in 0..QK / 8 {
            let xl: [int8x16_t; R] = std::array::from_fn(|r| x4(x, r, b, 4 * g));
            let xh: [int8x16_t; R] = std::array::from_fn(|r| x4(x, r, b, 16 + 4 * g));
            for c in 0..C {
                let v = vld1q_u8(blk.add(g * 4 * NR + 16 * (c0 + c)));
                let lo = vreinterpretq_s8_u8(vandq_u8(v, nib));
                let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                for r in 0..R {
                    isum[r][c] = dot4::<DOT>(dot4::<DOT>(isum[r][c], lo, xl[r]), hi, xh[r]);
                }
            }
        }
        let scales = blk.add(QK * NR / 2);
        for c in 0..C {
            let d = chunk_scales(scales, c0 + c);
            for r in 0..R {
                let off = vdupq_n_s32(*x.sum.add(r * x.ldb + b) << 3);
                let i = vsubq_s32(isum[r][c], off);
                epilogue(&mut acc[r][c], i, d, *x.d.add(r * x.ldb + b));
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        store_chunks(y.add(r * ldy), c0, n_valid, a);
    }
}

/// Rows per call of the integer tiles.
const Q_TILE_ROWS: usize = 4;

/// A table entry over a tile: one row takes all eight chunks in one pass over the panel (the
/// matrix–vector product streams it once); several rows two chunks at a time, each weight
/// load serving every row.
macro_rules! tile_entry {
    ($name:ident, $tile:ident, $dot:literal, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(
            x: &QRows,
            panel: *const u8,
            blocks: usize,
            y: *mut f32,
            ldy: usize,
            n_valid: usize,
        ) {
            if x.rows == 1 {
                return $tile::<1, 8, $dot>(x, panel, blocks, y, ldy, n_valid, 0);
            }
            for c0 in (0..8).step_by(2) {
                match x.rows {
                    2 => $tile::<2, 2, $dot>(x, panel, blocks, y, ldy, n_valid, c0),
                    3 => $tile::<3, 2, $dot>(x, panel, blocks, y, ldy, n_valid, c0),
                    4 => $tile::<4, 2, $dot>(x, panel, blocks, y, ldy, n_valid, c0),
                    _ => unreachable!("no kernel for this size"),
                }
            }
        }
    };
}
tile_entry!(q8_tile_neon, tile_q8, false, "neon");
tile_entry!(q4_tile_neon, tile_q4, false, "neon");
tile_entry!(q8_tile_sdot, tile_q8, true, "neon,dotprod");
tile_entry!(q4_tile_sdot, tile_q4, true, "neon,dotprod");
