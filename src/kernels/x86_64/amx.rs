//! The bf16 matrix–matrix kernel on AMX tiles (Intel Xeon 4th generation and later): the
//! prefill path's bf16 products where the CPU has the tiles and Linux lets the process use
//! them, in place of the `vdpbf16ps` kernel (which still does what the tiles cannot: row
//! counts below 16 and lengths that are not a multiple of 32).
//!
//! A tile register holds up to 16 rows of 64 bytes. `tdpbf16ps C, A, B` adds to each f32 of
//! C (16 rows × 16 outputs) the products of a row of A (16 rows × 32 bf16 activations) with a
//! column of B (16 rows, one per pair of inputs, × 16 outputs, each 32-bit lane the bf16
//! weights of inputs 2q and 2q + 1 of one output): 8,192 multiply–adds per instruction. One
//! call covers one panel (32 outputs) for all rows: the panel is first recombined from its
//! packed layout (see `kernels::layout`: pairs of outputs per lane) into that B layout in a
//! per-thread buffer (k × 64 bytes, in L2), then each block of 32 rows accumulates in four C
//! tiles (2 × 16 rows, 2 × 16 outputs) from two A tiles (read straight from the rounded
//! activations, whose row stride the caller chose) and two B tiles per 32 inputs.
//!
//! The tile instructions are written with `asm!` (Rust's AMX intrinsics are not stable), through
//! the [`Tiles`] trait, so that the same kernel also runs on an emulation of the instructions
//! (`Emulated`, in the tests): the data movement is then checked on any machine, and the real
//! instructions against the emulation where the CPU has them. Before first use the process
//! asks Linux for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); a CPU or kernel that
//! refuses, or a first product that disagrees with the `vdpbf16ps` kernel, leaves the tiles
//! unused. `RWKV_NO_AMX` turns them off.

use super::super::by_row_tiles;
use super::super::layout::NR;
use super::{gemm_bf16_avx512bf16, BF16_TILE_ROWS};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// The tile configuration (`ldtilecfg`'s 64-byte operand), palette 1.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of each tile.
    colsb: [u16; 16],
    /// Rows of each tile.
    rows: [u8; 16],
}

/// Tiles 0–3: C (accumulators), 4–5: A (activations), 6–7: B (weights); each 16 × 64 bytes.
const CONFIG: TileConfig = {
    let mut c = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    let mut t = 0;
    while t < 8 {
        c.colsb[t] = 64;
        c.rows[t] = 16;
        t += 1;
    }
    c
};

/// The tile instructions the kernel uses; `T`, `C`, `A`, `B` name tile registers 0–7.
///
/// # Safety
/// Every method runs (or emulates) one instruction on the pointers given: loads read `rows`
/// rows of 64 bytes at `stride`, stores write as many.
pub(super) trait Tiles {
    unsafe fn configure(&mut self, c: &TileConfig);
    unsafe fn zero<const T: u8>(&mut self);
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize);
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize);
    /// `C += A · B` (`tdpbf16ps`).
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    unsafe fn release(&mut self);
}

/// The CPU's tiles.
pub(super) struct Amx;

/// `asm!` for tile register `$t` (a const), one arm per register the kernel names.
macro_rules! per_tile {
    ($t:expr, $($n:pat => $body:expr),*) => {
        match $t {
            $($n => $body,)*
            _ => unreachable!("tile register"),
        }
    };
}

impl Tiles for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self, c: &TileConfig) {
        asm!("ldtilecfg [{0}]", in(reg) c as *const TileConfig, options(nostack, readonly));
    }
    #[inline(always)]
    unsafe fn zero<const T: u8>(&mut self) {
        per_tile!(T,
            0 => asm!("tilezero tmm0", options(nostack, nomem)),
            1 => asm!("tilezero tmm1", options(nostack, nomem)),
            2 => asm!("tilezero tmm2", options(nostack, nomem)),
            3 => asm!("tilezero tmm3", options(nostack, nomem)))
    }
    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, p: *const u8, s: usize) {
        per_tile!(T,
            4 => asm!("tileloadd tmm4, [{0} + {1}*1]", in(reg) p, in(reg) s, options(nostack, readonly)),
            5 => asm!("tileloadd tmm5, [{0} + {1}*1]", in(reg) p, in(reg) s, options(nostack, readonly)),
            6 => asm!("tileloadd tmm6, [{0} + {1}*1]", in(reg) p, in(reg) s, options(nostack, readonly)),
            7 => asm!("tileloadd tmm7, [{0} + {1}*1]", in(reg) p, in(reg) s, options(nostack, readonly)))
    }
    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, s: usize) {
        per_tile!(T,
            0 => asm!("tilestored [{0} + {1}*1], tmm0", in(reg) p, in(reg) s, options(nostack)),
            1 => asm!("tilestored [{0} + {1}*1], tmm1", in(reg) p, in(reg) s, options(nostack)),
            2 => asm!("tilestored [{0} + {1}*1], tmm2", in(reg) p, in(reg) s, options(nostack)),
            3 => asm!("tilestored [{0} + {1}*1], tmm3", in(reg) p, in(reg) s, options(nostack)))
    }
    #[inline(always)]
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        per_tile!((C, A, B),
            (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
            (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
            (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
            (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)))
    }
    #[inline(always)]
    unsafe fn release(&mut self) {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Bytes of one row of the recombined panel: one pair of inputs × 32 outputs.
const B_ROW: usize = 4 * NR;

/// A 64-byte line of the recombined panel (aligned, so that each tile row is one line); read
/// through pointers by the tile loads.
#[derive(Clone, Copy)]
#[repr(align(64))]
#[allow(dead_code)]
pub(super) struct Line([u32; 16]);

thread_local! {
    /// Per-thread recombined panel.
    static PANEL: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Recombines a packed bf16 panel of `k` (even) inputs into the B layout: row q (inputs 2q,
/// 2q + 1) is 32 lanes, lane j = output j's weight of input 2q (low half) and 2q + 1 (high).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn recombine_avx512(panel: *const u16, k: usize, out: &mut [Line]) {
    const HIGH: u32 = 0xAAAA_AAAA;
    assert!(k.is_multiple_of(2) && out.len() >= k);
    for q in 0..k / 2 {
        let e = _mm512_loadu_si512(panel.add(2 * q * NR) as *const _);
        let o = _mm512_loadu_si512(panel.add((2 * q + 1) * NR) as *const _);
        let lo = _mm512_mask_blend_epi16(HIGH, e, _mm512_slli_epi32(o, 16));
        let hi = _mm512_mask_blend_epi16(HIGH, _mm512_srli_epi32(e, 16), o);
        _mm512_store_si512(out.as_mut_ptr().add(2 * q) as *mut _, lo);
        _mm512_store_si512(out.as_mut_ptr().add(2 * q + 1) as *mut _, hi);
    }
}

/// The tile kernel on a recombined panel: `y[r·ldy + j] = Σ_i x[r·ldx + i] · w(i, j)` for
/// `r < rows` (a multiple of 16), `j < n_valid`.
///
/// # Safety
/// `x` readable for `rows` rows of `k` (a multiple of 32) bf16 values at stride `ldx`; `panel`
/// for `k` lines (`k / 2` rows of [`B_ROW`] bytes); `y` writable at `r·ldy + j` for those
/// `r`, `j`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn panel_tiles<T: Tiles>(
    t: &mut T,
    x: *const u16,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: *const Line,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    debug_assert!(rows.is_multiple_of(16) && k.is_multiple_of(32));
    let (xs, ys) = (2 * ldx, 4 * ldy);
    let b = panel as *const u8;
    // Outputs of a partial panel go through this buffer (32 rows × 32 outputs).
    let mut part = [0f32; 32 * NR];
    t.configure(&CONFIG);
    let mut r = 0;
    while r < rows {
        let two = rows - r >= 32;
        t.zero::<0>();
        t.zero::<1>();
        if two {
            t.zero::<2>();
            t.zero::<3>();
        }
        let xr = x.add(r * ldx) as *const u8;
        for kb in 0..k / 32 {
            // 32 inputs: 64 bytes of each activation row, 16 rows of the recombined panel.
            let bk = b.add(kb * 16 * B_ROW);
            t.load::<6>(bk, B_ROW);
            t.load::<7>(bk.add(64), B_ROW);
            t.load::<4>(xr.add(kb * 64), xs);
            t.dot::<0, 4, 6>();
            t.dot::<1, 4, 7>();
            if two {
                t.load::<5>(xr.add(16 * xs + kb * 64), xs);
                t.dot::<2, 5, 6>();
                t.dot::<3, 5, 7>();
            }
        }
        let n = if two { 32 } else { 16 };
        let yr = y.add(r * ldy);
        if n_valid == NR {
            let o = yr as *mut u8;
            t.store::<0>(o, ys);
            t.store::<1>(o.add(64), ys);
            if two {
                t.store::<2>(o.add(16 * ys), ys);
                t.store::<3>(o.add(16 * ys + 64), ys);
            }
        } else {
            let o = part.as_mut_ptr() as *mut u8;
            let s = 4 * NR;
            t.store::<0>(o, s);
            t.store::<1>(o.add(64), s);
            if two {
                t.store::<2>(o.add(16 * s), s);
                t.store::<3>(o.add(16 * s + 64), s);
            }
            for i in 0..n {
                std::ptr::copy_nonoverlapping(part.as_ptr().add(i * NR), yr.add(i * ldy), n_valid);
            }
        }
        r += n;
    }
    t.release();
}

/// The table's bf16 matrix–matrix entry where the tiles are usable (same contract as
/// `gemm_bf16_avx512bf16`, for any number of rows): blocks of 16 rows on the tiles when `k` is
/// a multiple of 32, the rest on the `vdpbf16ps` kernel. The two sum in different orders, so a
/// row's result may differ in the last bits with its place in the call (a prompt's chunk,
/// a batch of streams), as it does between any two kernels.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_bf16_amx(
    rows: usize,
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    gemm_bf16_tiles(&mut Amx, rows, x, ldx, k, w, y, ldy, n_valid)
}

/// [`gemm_bf16_amx`] on the tiles `t`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bf16_tiles<T: Tiles>(
    t: &mut T,
    rows: usize,
    x: *const u16,
    ldx: usize,
    k: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let tiled = if k.is_multiple_of(32) && k > 0 {
        rows / 16 * 16
    } else {
        0
    };
    if tiled > 0 {
        PANEL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < k {
                p.resize(k, Line([0; 16]));
            }
            recombine_avx512(w, k, &mut p);
            panel_tiles(t, x, ldx, tiled, k, p.as_ptr(), y, ldy, n_valid);
        });
    }
    let (r, rest) = (tiled, rows - tiled);
    let (xr, yr) = (x.add(r * ldx), y.add(r * ldy));
    by_row_tiles(
        gemm_bf16_avx512bf16,
        BF16_TILE_ROWS,
        xr,
        ldx,
        rest,
        k,
        w,
        yr,
        ldy,
        n_valid,
    );
}

/// Whether this CPU has AMX tiles with bf16 products, Linux gives this process their state,
/// and a first product agrees with the `vdpbf16ps` kernel (asked once; `RWKV_NO_AMX` says no).
/// Only called where AVX-512 BF16 is in use.
pub(super) fn usable() -> bool {
    if std::env::var_os("RWKV_NO_AMX").is_some() || !cpu_has_tiles() || !request_tile_state() {
        return false;
    }
    // SAFETY: the CPU has AVX-512 BF16 (the caller's condition) and AMX with the state granted.
    unsafe { agrees_with_vdpbf16ps(&mut Amx) }
}

/// CPUID: AMX-TILE and AMX-BF16 (leaf 7), palette 1 of 8 tiles of 16 rows × 64 bytes (leaf
/// 0x1D), and the OS saving the tile state (XCR0 bits 17 and 18).
#[allow(unused_unsafe)]
fn cpu_has_tiles() -> bool {
    // SAFETY: CPUID exists on every x86-64 CPU; leaves above the maximum return zeros.
    let max = unsafe { __cpuid(0) }.eax;
    if max < 0x1D {
        return false;
    }
    let l7 = unsafe { __cpuid_count(7, 0) };
    if l7.edx & (1 << 24) == 0 || l7.edx & (1 << 22) == 0 {
        return false;
    }
    let osxsave = unsafe { __cpuid(1) }.ecx & (1 << 27) != 0;
    // SAFETY: XGETBV exists where the OS set OSXSAVE.
    if !osxsave || unsafe { xcr0() } & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    let p = unsafe { __cpuid_count(0x1D, 1) };
    let (bytes_per_row, names, max_rows) = (p.ebx & 0xFFFF, p.ebx >> 16, p.ecx & 0xFFFF);
    bytes_per_row >= 64 && names >= 8 && max_rows >= 16
}

#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

/// Asks Linux for the tile data state (off by default for every process since 5.16).
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Asks Linux for the tile data state (off by default for every process since 5.16).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these codes reads or writes only the u64 it is given.
    unsafe {
        if libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) != 0
        {
            return false;
        }
        let mut granted: u64 = 0;
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_PERM,
            &mut granted as *mut u64,
        ) == 0
            && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// Products on the tiles and on the `vdpbf16ps` kernel, equal bit for bit: 53 rows (a block of
/// 32, one of 16, and 5 left to `vdpbf16ps`) of 96 inputs, once into a partial panel (27 outputs, through the kernel's
/// buffer) with the activations packed at stride k, once into a whole panel (stored straight
/// into a wider output) with activations at a longer stride.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn agrees_with_vdpbf16ps<T: Tiles>(t: &mut T) -> bool {
    let (rows, k) = (53, 96);
    let bf = |v: f32| (v.to_bits() >> 16) as u16;
    let w: Vec<u16> = (0..k * NR)
        .map(|i| bf(((i * 53 % 89) as f32 - 44.0) / 64.0))
        .collect();
    [(k, NR, 27), (k + 32, NR + 8, NR)]
        .into_iter()
        .all(|(ldx, ldy, n_valid)| {
            let x: Vec<u16> = (0..rows * ldx)
                .map(|i| bf(((i * 37 % 101) as f32 - 50.0) / 32.0))
                .collect();
            let mut tiles = vec![0f32; rows * ldy];
            let mut dots = vec![0f32; rows * ldy];
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            gemm_bf16_tiles(t, rows, xp, ldx, k, wp, tiles.as_mut_ptr(), ldy, n_valid);
            let yp = dots.as_mut_ptr();
            by_row_tiles(
                gemm_bf16_avx512bf16,
                BF16_TILE_ROWS,
                xp,
                ldx,
                rows,
                k,
                wp,
                yp,
                ldy,
                n_valid,
            );
            // Every product is a multiple of 2^-11 and every sum below 2^7 in magnitude: exact
            // in f32 in any order, so the two kernels must agree bit for bit.
            tiles
                .iter()
                .zip(&dots)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        })
}

/// The tile instructions in plain Rust, as the Intel SDM describes them: rows and bytes per
/// row from the configuration; `tdpbf16ps` sums, per output and per instruction, the products
/// of the even inputs and those of the odd inputs in two f32 chains from zero (each step a
/// fused multiply–add: the bf16 products are exact in f32, so a product then an add rounds
/// the same), adds the two chains, then adds that to the accumulator; inputs below the normal
/// range read as zero, every result below it flushed to zero, rounding to nearest even.
#[cfg(test)]
pub(super) struct Emulated {
    config: TileConfig,
    regs: [[u8; 1024]; 8],
}

#[cfg(test)]
impl Emulated {
    pub(super) fn new() -> Self {
        Self {
            config: CONFIG,
            regs: [[0; 1024]; 8],
        }
    }
    fn shape(&self, t: u8) -> (usize, usize) {
        (
            self.config.rows[t as usize] as usize,
            self.config.colsb[t as usize] as usize,
        )
    }
    fn f32_at(&self, t: u8, i: usize) -> f32 {
        let b = &self.regs[t as usize][4 * i..4 * i + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn bf16_at(&self, t: u8, i: usize) -> f32 {
        let b = &self.regs[t as usize][2 * i..2 * i + 2];
        let v = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
        flush(v)
    }
}

/// Zero for a value below the normal range (keeping its sign), else the value.
#[cfg(test)]
pub(super) fn flush(v: f32) -> f32 {
    if v != 0.0 && v.abs() < f32::MIN_POSITIVE {
        0.0f32.copysign(v)
    } else {
        v
    }
}

#[cfg(test)]
impl Tiles for Emulated {
    unsafe fn configure(&mut self, c: &TileConfig) {
        self.config = *c;
        self.regs = [[0; 1024]; 8];
    }
    unsafe fn zero<const T: u8>(&mut self) {
        self.regs[T as usize] = [0; 1024];
    }
    unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        self.regs[T as usize] = [0; 1024];
        for r in 0..rows {
            let src = std::slice::from_raw_parts(p.add(r * stride), colsb);
            self.regs[T as usize][r * 64..r * 64 + colsb].copy_from_slice(src);
        }
    }
    unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(p.add(r * stride), colsb);
            dst.copy_from_slice(&self.regs[T as usize][r * 64..r * 64 + colsb]);
        }
    }
    unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (m_rows, c_colsb) = self.shape(C);
        let (_, a_colsb) = self.shape(A);
        for m in 0..m_rows {
            for n in 0..c_colsb / 4 {
                let (mut even, mut odd) = (0f32, 0f32);
                for q in 0..a_colsb / 4 {
                    let a = |i| self.bf16_at(A, m * 32 + 2 * q + i);
                    let b = |i| self.bf16_at(B, q * 32 + 2 * n + i);
                    even = flush(even + a(0) * b(0));
                    odd = flush(odd + a(1) * b(1));
                }
                let c = flush(self.f32_at(C, m * 16 + n) + flush(even + odd));
                self.regs[C as usize][4 * (m * 16 + n)..4 * (m * 16 + n) + 4]
                    .copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    unsafe fn release(&mut self) {
        self.regs = [[0; 1024]; 8];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::layout::bf16_lane_position;

    /// Pseudo-random bf16 values over a wide range of magnitudes and both signs, with some
    /// zeros and some below the normal range (which the instructions read as zero).
    fn values(n: usize, seed: u64) -> Vec<u16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (s >> 33) as u32;
                match r % 16 {
                    0 => 0,
                    1 => (r >> 8) as u16 & 0x807F,
                    _ => ((r >> 8) as u16 & 0x807F) | ((112 + (r >> 4) % 32) << 7) as u16,
                }
            })
            .collect()
    }

    /// A packed bf16 panel (see `kernels::layout`) of `w` (32 outputs × k, output-major).
    fn pack(w: &[u16], k: usize) -> Vec<u16> {
        let mut p = vec![0u16; k * NR];
        for j in 0..NR {
            for i in 0..k {
                p[i * NR + bf16_lane_position(j)] = w[j * k + i];
            }
        }
        p
    }

    /// The B layout from the weights directly: row q, lane j = (w[j][2q], w[j][2q + 1]).
    fn recombined(w: &[u16], k: usize) -> Vec<Line> {
        let mut out = vec![Line([0; 16]); k];
        for q in 0..k / 2 {
            for j in 0..NR {
                let lane = w[j * k + 2 * q] as u32 | (w[j * k + 2 * q + 1] as u32) << 16;
                out[2 * q + j / 16].0[j % 16] = lane;
            }
        }
        out
    }

    fn bf(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    /// The kernel on the emulated instructions gives, bit for bit, the sums the instructions
    /// define (see `Emulated`): per 32 inputs, the even and the odd products in two f32
    /// chains, their sum added to the output's; values below the normal range as zero. Blocks of 32 and 16 rows, a row
    /// stride past k, whole and partial panels; the outputs past `n_valid` and past the rows
    /// are left as they were.
    #[test]
    fn the_tile_kernel_sums_as_the_tile_instructions_do() {
        let (rows, k, ldx, ldy) = (48, 96, 96 + 40, 40);
        let x = values(rows * ldx, 1);
        let w = values(NR * k, 2);
        let panel = recombined(&w, k);
        for n_valid in [NR, 27, 16, 5] {
            let mut y = vec![f32::NAN; (rows + 1) * ldy];
            // SAFETY: x has `rows` rows of k values at stride ldx; the panel k lines; y
            // `rows` rows of ldy ≥ 32 values (and one more, which must stay untouched).
            unsafe {
                panel_tiles(
                    &mut Emulated::new(),
                    x.as_ptr(),
                    ldx,
                    rows,
                    k,
                    panel.as_ptr(),
                    y.as_mut_ptr(),
                    ldy,
                    n_valid,
                )
            };
            for r in 0..rows + 1 {
                for j in 0..ldy {
                    let got = y[r * ldy + j];
                    if r == rows || j >= n_valid {
                        assert!(got.is_nan(), "n_valid {n_valid}: ({r}, {j}) was written");
                        continue;
                    }
                    // Per instruction (32 inputs): even and odd products in two chains.
                    let mut c = 0f32;
                    for block in 0..k / 32 {
                        let (mut even, mut odd) = (0f32, 0f32);
                        for i in (block * 32..block * 32 + 32).step_by(2) {
                            let p = |i: usize| flush(bf(x[r * ldx + i])) * flush(bf(w[j * k + i]));
                            even = flush(even + p(i));
                            odd = flush(odd + p(i + 1));
                        }
                        c = flush(c + flush(even + odd));
                    }
                    assert_eq!(
                        got.to_bits(),
                        c.to_bits(),
                        "n_valid {n_valid}: ({r}, {j}): {got} vs {c}"
                    );
                }
            }
        }
    }

    /// The AVX-512 recombination of a packed panel is the B layout of its weights.
    #[test]
    fn a_packed_panel_recombines_into_the_tiles_layout() {
        if !is_x86_feature_detected!("avx512bw") {
            println!("note: no AVX-512 here: the panel recombination is not tested");
            return;
        }
        let k = 70;
        let w = values(NR * k, 3);
        let mut out = vec![Line([7; 16]); k];
        // SAFETY: AVX-512 F/BW are present (checked above); the panel holds k × 32 values and
        // `out` k lines.
        unsafe { recombine_avx512(pack(&w, k).as_ptr(), k, &mut out) };
        let want = recombined(&w, k);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert_eq!(a.0, b.0, "line {i}");
        }
    }

    /// The first-use check passes on the emulated tiles (its sums are exact in any order), and
    /// fails when the tiles' results are wrong.
    #[test]
    fn the_first_use_check_tells_right_tiles_from_wrong_ones() {
        if !crate::kernels::has_bf16_dot() {
            println!("note: no AVX-512 BF16 here: the first-use check of the tiles is not run");
            return;
        }
        /// Emulated tiles whose products drop the last pair of inputs of every tile.
        struct Wrong(Emulated);
        impl Tiles for Wrong {
            unsafe fn configure(&mut self, c: &TileConfig) {
                self.0.configure(c)
            }
            unsafe fn zero<const T: u8>(&mut self) {
                self.0.zero::<T>()
            }
            unsafe fn load<const T: u8>(&mut self, p: *const u8, stride: usize) {
                self.0.load::<T>(p, stride);
                if T >= 6 {
                    self.0.regs[T as usize][15 * 64..].fill(0);
                }
            }
            unsafe fn store<const T: u8>(&mut self, p: *mut u8, stride: usize) {
                self.0.store::<T>(p, stride)
            }
            unsafe fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
                self.0.dot::<C, A, B>()
            }
            unsafe fn release(&mut self) {
                self.0.release()
            }
        }
        // SAFETY: the CPU has AVX-512 BF16 (checked above); the tiles are emulated.
        unsafe {
            assert!(agrees_with_vdpbf16ps(&mut Emulated::new()));
            assert!(!agrees_with_vdpbf16ps(&mut Wrong(Emulated::new())));
        }
    }

    /// Where the tiles are in use, the table's kernel (tiles plus `vdpbf16ps` for the rows
    /// left over) agrees with the emulation on its rows: equal where the hardware sums in
    /// the documented order, and in any case within one f32 rounding per input of Σ|products|.
    /// Skipped, with a note, elsewhere.
    #[test]
    fn the_tiles_agree_with_their_emulation() {
        if !crate::kernels::has_amx() {
            println!(
                "note: no usable AMX tiles here (or RWKV_NO_AMX is set): the tiles are not run"
            );
            return;
        }
        let (rows, k, ldx, ldy) = (53, 128, 128 + 8, 32);
        let x = values(rows * ldx, 4);
        let w = values(NR * k, 5);
        let packed = pack(&w, k);
        let mut real = vec![f32::NAN; rows * ldy];
        let mut emulated = vec![f32::NAN; rows * ldy];
        // SAFETY: has_amx() held, so the CPU has AVX-512 BF16 and the tiles with their state
        // granted; the buffers are as the kernels' contracts say.
        unsafe {
            gemm_bf16_amx(
                rows,
                x.as_ptr(),
                ldx,
                k,
                packed.as_ptr(),
                real.as_mut_ptr(),
                ldy,
                NR,
            );
            let panel = recombined(&w, k);
            panel_tiles(
                &mut Emulated::new(),
                x.as_ptr(),
                ldx,
                48,
                k,
                panel.as_ptr(),
                emulated.as_mut_ptr(),
                ldy,
                NR,
            );
        }
        let mut same = 0;
        for r in 0..48 {
            for j in 0..NR {
                let (a, b) = (real[r * ldy + j], emulated[r * ldy + j]);
                let mag: f32 = (0..k)
                    .map(|i| (flush(bf(x[r * ldx + i])) * flush(bf(w[j * k + i]))).abs())
                    .sum();
                let tol = k as f32 * f32::EPSILON * mag;
                assert!(
                    (a - b).abs() <= tol,
                    "({r}, {j}): tiles {a} vs emulated {b} (±{tol:e})"
                );
                same += (a.to_bits() == b.to_bits()) as usize;
            }
        }
        println!(
            "AMX: {same} of {} outputs bit-identical to the emulation",
            48 * NR
        );
        assert!(
            real[48 * ldy..].iter().all(|v| v.is_finite()),
            "rows past the tiles not written"
        );
    }
}
