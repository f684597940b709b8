//! The SIMD kernels: an f32 dot product (for the baselines); matrix–vector products over
//! packed weight panels (the decode path, where every weight is read once per token and memory
//! bandwidth sets the speed); register-tiled matrix–matrix products (the prefill path, bound by
//! arithmetic); int8 products for the quantized formats; the RWKV-7 recurrence ([`wkv`]); a
//! memory-bandwidth probe ([`bandwidth`]); the aligned, huge-page buffers weights live in
//! ([`buf`]). The panel layout they all read is in [`layout`].
//!
//! Each kernel has a portable version (`portable.rs`) and, per instruction set, faster ones in
//! a file of their own: `x86_64/` (AVX-512, with VNNI for the integer products and BF16 for the
//! bf16 ones; AMX tiles for bf16 matrix–matrix products, `x86_64/amx.rs`; AVX2 + FMA, with
//! AVX-VNNI for the integer products where the CPU has it; F16C) and
//! `aarch64/` (NEON, with `sdot` for the integer products and `bfdot` for the bf16 ones). The
//! instruction set is detected **once**, and the kernels for it are put in one table of function pointers (`Kernels`); every entry
//! point below asserts its bounds and calls through that table, once per panel or per call,
//! never per element. `RWKV_NO_AVX512`, `RWKV_NO_VNNI`, `RWKV_NO_BF16`, `RWKV_NO_AMX` and
//! `RWKV_NO_SIMD` force the lower levels, for testing. 16-bit and quantized weights are widened
//! in registers, so they stay small in memory.
//!
//! bf16 weights have a second matrix–matrix kernel where the CPU has a bf16 dot-product
//! instruction (AVX-512 BF16's `vdpbf16ps`, AArch64 FEAT_BF16's `bfdot`; detected at run
//! time): the activations are rounded to bf16 once per product ([`round_rows_to_bf16`], round
//! to nearest even) and each instruction sums two exact bf16 × bf16 products per lane into
//! f32, reading the packed panels as they are — twice the multiply–adds of an f32 FMA per
//! instruction, and no f32 copy of the panel.
//! Only the matrix–matrix product (prefill) uses it: the matrix–vector product (decode) keeps
//! f32 activations.
//!
//! To add an instruction set: a file beside `x86_64/` with its kernels and an `install`
//! that puts them in the table, a line in `Kernels::detect`, and a variant of [`Isa`].

pub mod bandwidth;
pub mod buf;
pub mod layout;
mod portable;
pub mod wkv;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod activation_constants;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use bandwidth::{measure_bandwidth, sum_f32, Bandwidth};
pub use buf::{AlignedBuf, FileMap};
pub use layout::{
    bf16_lane_position, Q4_0Block, Q8_0Block, QuantBlock, NR, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK,
};
pub use portable::round_small;
pub use wkv::{wkv7_token, wkv7_token_rows};

/// Which instruction set the kernels use on this machine (detected once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    /// AArch64's Advanced SIMD (every AArch64 CPU has it).
    Neon,
    Portable,
}

/// The instruction set the kernels use (detected once, with the table).
pub fn isa() -> Isa {
    kernels().isa
}

/// Whether the int8 dot-product instructions (AVX-512 VNNI, or AVX-VNNI at the AVX2 level)
/// are used (detected once; `RWKV_NO_VNNI` turns them off, as `RWKV_NO_AVX512` turns off
/// AVX-512).
pub fn has_vnni() -> bool {
    kernels().vnni
}

/// Whether bf16 matrix–matrix products run on AMX tiles (Intel; detected once, with the
/// tile state granted by Linux and a first product checked; `RWKV_NO_AMX` turns them off).
pub fn has_amx() -> bool {
    kernels().amx
}

/// Whether bf16 matrix–matrix products use the bf16 dot-product kernel ([`gemm_panel_bf16`]:
/// AVX-512 BF16 or AArch64 FEAT_BF16, detected once; `RWKV_NO_BF16` turns it off). Where it is off they widen the
/// panels to f32 and keep the activations in f32.
pub fn has_bf16_dot() -> bool {
    kernels().gemm_bf16.is_some()
}

type DotFn = unsafe fn(&[f32], &[f32]) -> f32;
type SumFn = unsafe fn(&[f32]) -> f32;
type GemvFn<T> = unsafe fn(&[T], usize, &[f32], &mut [f32]);
type WidenFn = unsafe fn(&[u16], &mut [f32]);
type NarrowFn = unsafe fn(&[f32], &mut [u16]);
type GemmF32Fn = TileFn<f32, f32>;
/// As [`GemmF32Fn`] with one bf16 or f16 panel as packed (see [`layout`]), widened in
/// registers.
type GemmWideFn = TileFn<f32, u16>;
/// As [`GemmF32Fn`] over bf16 activations (row stride in u16, even, rows padded with a zero to
/// an even length) and one bf16 panel as packed (see [`layout`]).
type GemmBf16Fn = TileFn<u16, u16>;
type QuantizeFn = unsafe fn(&[f32], &mut [i8]) -> (f32, i32);
/// `x.rows` rows of quantized activations against one quantized panel of `blocks` blocks.
///
/// # Safety
/// `x` readable for its rows of `blocks · 32` values, `blocks` scales and sums; `panel` for
/// `blocks` blocks of the tile's format; `y` as in [`gemm_panel_f32`]; `x.rows` at most the
/// table's `q_tile_rows`.
type QTileFn = unsafe fn(&QRows, *const u8, usize, *mut f32, usize, usize);
/// An activation applied to every value of a slice in place.
type ActFn = unsafe fn(&mut [f32]);
/// `v ← e^(s·v)` on every value of a slice.
type ExpFn = unsafe fn(&mut [f32], f32);
pub(super) type Wkv7Fn =
    unsafe fn(&mut [f32], usize, &[f32], &[f32], &[f32], &[f32], &[f32], &[f32], &mut [f32]);

/// The kernels of this machine, one function per operation, chosen once.
///
/// Every entry is an `unsafe fn` for two reasons: the SIMD ones may only run on a CPU that has
/// their target features — which holds by construction, since `Kernels::detect` installs
/// only those the CPU reported — and the raw-pointer ones read and write where their callers
/// say. The safe entry points of this module check the bounds and then call through the table.
struct Kernels {
    isa: Isa,
    vnni: bool,
    dot_f32: DotFn,
    sum_f32: SumFn,
    gemv_f32: GemvFn<f32>,
    gemv_bf16: GemvFn<u16>,
    gemv_f16: GemvFn<u16>,
    f16_to_f32: WidenFn,
    /// f32 to bf16 bits, round to nearest even ([`bf16_bits`] on every value).
    f32_to_bf16: NarrowFn,
    gemm_f32: GemmF32Fn,
    /// Rows per micro-tile of `gemm_f32` (at most this many per call).
    gemm_f32_rows: usize,
    /// `gemm_f32` on bf16 (f16) panels as packed, widening each row in registers: the same
    /// sums as `gemm_f32` on the widened panel, with its tile rows (`None`: callers widen the
    /// panel first).
    gemm_bf16_wide: Option<GemmWideFn>,
    gemm_f16_wide: Option<GemmWideFn>,
    /// The bf16 dot-product matrix–matrix kernel (`None`: bf16 panels are widened to f32
    /// and go through `gemm_f32`).
    gemm_bf16: Option<GemmBf16Fn>,
    /// Rows per micro-tile of `gemm_bf16` (unbounded for the AMX kernel).
    gemm_bf16_rows: usize,
    /// Whether `gemm_bf16` runs on AMX tiles.
    amx: bool,
    quantize_block_q8: QuantizeFn,
    q8_0_tile: QTileFn,
    q4_0_tile: QTileFn,
    /// Rows per call of the quantized tiles.
    q_tile_rows: usize,
    /// A WKV-7 kernel for head sizes that are a multiple of 16, up to 128 (`None`: the
    /// portable code runs for every head size).
    wkv7_token_x16: Option<Wkv7Fn>,
    /// The same on the state in the official layout (see [`wkv7_token_rows`]).
    wkv7_rows_x16: Option<Wkv7Fn>,
    /// The activations ([`exp`], [`sigmoid`], [`tanh`], [`silu`]).
    exp: ExpFn,
    sigmoid: ActFn,
    tanh: ActFn,
    silu: ActFn,
}

impl Kernels {
    /// Detects the instruction set and builds its table (once: see [`kernels`]).
    fn detect() -> Self {
        let level = if std::env::var_os("RWKV_NO_SIMD").is_some() {
            Level::PORTABLE
        } else {
            detect_level()
        };
        Self::build(level)
    }

    /// The table of a level: the portable kernels, then those of its instruction set (and
    /// VNNI, BF16) over them. Calling through it is sound only on a CPU that has that level.
    fn build(level: Level) -> Self {
        let Level { isa, vnni, bf16 } = level;
        #[allow(unused_mut)]
        let mut k = Kernels {
            isa,
            vnni,
            ..portable::KERNELS
        };
        #[cfg(target_arch = "x86_64")]
        x86_64::install(&mut k, isa, vnni, bf16);
        #[cfg(target_arch = "aarch64")]
        aarch64::install(&mut k, isa, vnni, bf16);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = bf16;
        k
    }
}

/// What the kernels of a table may use: an instruction set and two AVX-512 extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Level {
    isa: Isa,
    /// The int8 dot products at the instruction set's width: AVX-512 VNNI at the AVX-512
    /// level, AVX-VNNI at the AVX2 level (`vpdpbusd` both), `dotprod` at the NEON level
    /// (`sdot`).
    vnni: bool,
    /// The bf16 dot products: AVX-512 BF16 (`vdpbf16ps`), FEAT_BF16 on AArch64 (`bfdot`).
    bf16: bool,
}

impl Level {
    const PORTABLE: Level = Level {
        isa: Isa::Portable,
        vnni: false,
        bf16: false,
    };
}

/// The best level this CPU runs (`RWKV_NO_AVX512`, `RWKV_NO_VNNI` and `RWKV_NO_BF16` lower it).
#[cfg(target_arch = "x86_64")]
fn detect_level() -> Level {
    // The AVX-512 level also runs AVX2, FMA and F16C code (every AVX-512 CPU has them).
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let isa = if std::env::var_os("RWKV_NO_AVX512").is_none()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && avx2
    {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Portable
    };
    let vnni = std::env::var_os("RWKV_NO_VNNI").is_none()
        && match isa {
            Isa::Avx512 => is_x86_feature_detected!("avx512vnni"),
            Isa::Avx2 => is_x86_feature_detected!("avxvnni"),
            Isa::Neon | Isa::Portable => false,
        };
    let bf16 = isa == Isa::Avx512
        && std::env::var_os("RWKV_NO_BF16").is_none()
        && is_x86_feature_detected!("avx512bf16");
    Level { isa, vnni, bf16 }
}

/// The best level this CPU runs: NEON, with `sdot` where the CPU has the int8 dot products
/// (`RWKV_NO_VNNI` turns them off) and `bfdot` where it has the bf16 ones (FEAT_BF16;
/// `RWKV_NO_BF16` turns them off).
#[cfg(target_arch = "aarch64")]
fn detect_level() -> Level {
    Level {
        isa: Isa::Neon,
        vnni: std::env::var_os("RWKV_NO_VNNI").is_none()
            && std::arch::is_aarch64_feature_detected!("dotprod"),
        bf16: std::env::var_os("RWKV_NO_BF16").is_none()
            && std::arch::is_aarch64_feature_detected!("bf16"),
    }
}

/// The best level this CPU runs: portable code only, on this architecture (for now).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect_level() -> Level {
    Level::PORTABLE
}

/// The table of this machine's kernels (built on first use).
fn kernels() -> &'static Kernels {
    static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    KERNELS.get_or_init(Kernels::detect)
}

/// `Σ a[i]·b[i]` over f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    // SAFETY: the table holds only kernels the CPU supports (see `Kernels`), and both slices
    // have length `n`, which is all the kernel reads.
    unsafe { (kernels().dot_f32)(a, b) }
}

/// `y[j] = Σ_i W[j][i]·x[i]` for the f32 panels in `panels` (`k` inputs each), writing the
/// first `y.len()` outputs (at most 32 per panel).
pub fn gemv_f32(panels: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    // SAFETY: the table holds only kernels the CPU supports; the assert above bounds every
    // read (n_panels panels of k × 32 weights, k inputs), and writes go to y[..y.len()] only.
    unsafe { (kernels().gemv_f32)(panels, k, x, y) }
}

/// As [`gemv_f32`] for bf16 panels (interleaved rows, see [`layout`]).
pub fn gemv_bf16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    // SAFETY: as in `gemv_f32`.
    unsafe { (kernels().gemv_bf16)(panels, k, x, y) }
}

/// As [`gemv_f32`] for f16 panels.
pub fn gemv_f16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    // SAFETY: as in `gemv_f32`.
    unsafe { (kernels().gemv_f16)(panels, k, x, y) }
}

/// Widens one bf16 panel (`k` rows of 32, interleaved) to f32 in output order.
pub fn bf16_panel_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (s, d) in src.chunks_exact(NR).zip(dst.chunks_exact_mut(NR)) {
        for i in 0..16 {
            d[i] = f32::from_bits((s[2 * i] as u32) << 16);
            d[16 + i] = f32::from_bits((s[2 * i + 1] as u32) << 16);
        }
    }
}

/// Widens one f16 panel to f32.
pub fn f16_panel_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY: the table holds only kernels the CPU supports; reads and writes stay within the
    // two equal-length slices.
    unsafe { (kernels().f16_to_f32)(src, dst) }
}

/// Rows of activations quantized to 8 bits per block of [`QK`] values, for the Q8_0 and Q4_0
/// kernels: `x ≈ q · d` per block, q in −127..=127, and `sum = Σ q` per block (the weights
/// are stored offset binary; `offset · sum` removes the offset from an integer dot product).
#[derive(Default)]
pub struct QuantizedRows {
    pub rows: usize,
    /// Blocks per row (the row length padded to a multiple of QK, over QK).
    pub blocks: usize,
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `rows` rows of `x` (each `k` long; padded with zeros to whole blocks).
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        let blocks = k.div_ceil(QK);
        self.rows = rows;
        self.blocks = blocks;
        self.q.clear();
        self.q.resize(rows * blocks * QK, 0);
        self.d.clear();
        self.d.resize(rows * blocks, 0.0);
        self.sum.clear();
        self.sum.resize(rows * blocks, 0);
        let quantize_block = kernels().quantize_block_q8;
        let mut pad = [0.0f32; QK];
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for b in 0..blocks {
                let src = if (b + 1) * QK <= k {
                    &xr[b * QK..(b + 1) * QK]
                } else {
                    pad.fill(0.0);
                    pad[..k - b * QK].copy_from_slice(&xr[b * QK..]);
                    &pad[..]
                };
                let at = r * blocks + b;
                let q = &mut self.q[at * QK..(at + 1) * QK];
                // SAFETY: the table holds only kernels the CPU supports; `src` and `q` are
                // QK = 32 values long, all the kernel reads and writes.
                let (d, s) = unsafe { quantize_block(src, q) };
                self.d[at] = d;
                self.sum[at] = s;
            }
        }
    }
}

/// Quantizes 32 activations: returns the scale and Σ q. `q = round_ties_even(x · 127 / amax)`.
pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert!(x.len() == QK && q.len() == QK);
    // SAFETY: the table holds only kernels the CPU supports; x and q hold 32 elements each.
    unsafe { (kernels().quantize_block_q8)(x, q) }
}

/// `y[j] = Σ_i W[j][i]·x[i]` over Q8_0 panels (`blocks` blocks each) with the activations
/// quantized in `xq` (row `row`), writing the first `y.len()` outputs.
pub fn gemv_q8_0(panels: &[u8], blocks: usize, xq: &QuantizedRows, row: usize, y: &mut [f32]) {
    gemv_q(
        Q8_BLOCK_BYTES,
        kernels().q8_0_tile,
        panels,
        blocks,
        xq,
        row,
        y,
    )
}

/// As [`gemv_q8_0`] over Q4_0 panels.
pub fn gemv_q4_0(panels: &[u8], blocks: usize, xq: &QuantizedRows, row: usize, y: &mut [f32]) {
    gemv_q(
        Q4_BLOCK_BYTES,
        kernels().q4_0_tile,
        panels,
        blocks,
        xq,
        row,
        y,
    )
}

/// The quantized matrix–vector product with `tile`, a table kernel over blocks of
/// `block_bytes`.
fn gemv_q(
    block_bytes: usize,
    tile: QTileFn,
    panels: &[u8],
    blocks: usize,
    xq: &QuantizedRows,
    row: usize,
    y: &mut [f32],
) {
    let n_panels = y.len().div_ceil(NR);
    let pb = blocks * block_bytes;
    assert!(panels.len() >= n_panels * pb);
    assert!(xq.blocks == blocks && row < xq.rows);
    let (q, d, sum) = (
        &xq.q[row * blocks * QK..(row + 1) * blocks * QK],
        &xq.d[row * blocks..(row + 1) * blocks],
        &xq.sum[row * blocks..(row + 1) * blocks],
    );
    for (p, yp) in y.chunks_mut(NR).enumerate() {
        let panel = &panels[p * pb..(p + 1) * pb];
        let rows = QRows {
            q: q.as_ptr(),
            ldq: 0,
            d: d.as_ptr(),
            sum: sum.as_ptr(),
            ldb: 0,
            rows: 1,
        };
        // SAFETY: `tile` is a table kernel (supported by the CPU) over blocks of
        // `block_bytes`; `panel` holds `blocks` such blocks, q/d/sum hold one row of `blocks`
        // blocks, and the destination is the 1..=32 outputs of `yp`, written at no other index.
        unsafe { tile(&rows, panel.as_ptr(), blocks, yp.as_mut_ptr(), 0, yp.len()) };
    }
}

/// One panel of a matrix product: `y[r·ldy + j] = Σ_i x[r·ldx + i] · panel[i·32 + j]` for
/// `r < rows` and `j < n_valid` (≤ 32).
///
/// # Safety
/// `x` must be readable for `rows` rows of `k` values at stride `ldx`; `panel` for `k · 32`
/// values; `y` writable at `r·ldy + j` for those `r` and `j`, and no other thread may access
/// those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_panel_f32(
    x: *const f32,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: *const f32,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let kn = kernels();
    // SAFETY: the table holds only kernels the CPU supports, with their tile rows; the
    // caller's contract covers every row.
    by_row_tiles(
        kn.gemm_f32,
        kn.gemm_f32_rows,
        x,
        ldx,
        rows,
        k,
        panel,
        y,
        ldy,
        n_valid,
    );
}

/// A table's matrix–matrix kernel over activations of type `X` and a panel of type `W`:
/// `(rows, x, ldx, k, panel, y, ldy, n_valid)` for at most its tile rows.
type TileFn<X, W> = unsafe fn(usize, *const X, usize, usize, *const W, *mut f32, usize, usize);

/// Runs `f` over consecutive blocks of at most `mr` rows that cover `0 .. rows`: one call per
/// micro-tile of rows, the entry points' shared loop.
///
/// # Safety
/// `f` must be a kernel of this CPU's table taking at most `mr` rows; the arguments as the
/// entry point calling this says.
#[allow(clippy::too_many_arguments)]
unsafe fn by_row_tiles<X, W>(
    f: TileFn<X, W>,
    mr: usize,
    x: *const X,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: *const W,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mut r = 0;
    while r < rows {
        let m = (rows - r).min(mr);
        f(
            m,
            x.add(r * ldx),
            ldx,
            k,
            panel,
            y.add(r * ldy),
            ldy,
            n_valid,
        );
        r += m;
    }
}

/// A 16-bit float panel kind whose panels a widening matrix–matrix kernel reads as packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Bf16,
    F16,
}

fn wide_kernel(h: Half) -> Option<GemmWideFn> {
    let kn = kernels();
    match h {
        Half::Bf16 => kn.gemm_bf16_wide,
        Half::F16 => kn.gemm_f16_wide,
    }
}

/// Whether [`gemm_panel_wide`] has a kernel here for `h` panels (AVX-512; elsewhere such panels
/// are widened to f32 first and go through [`gemm_panel_f32`], with the same results).
pub fn has_wide_gemm(h: Half) -> bool {
    wide_kernel(h).is_some()
}

/// [`gemm_panel_f32`] on one bf16 or f16 panel as packed (see [`layout`]), each weight widened
/// to f32 in registers (exactly): the same products and sums, in the same order, as
/// `gemm_panel_f32` on the panel widened first (bit for bit), without writing it anywhere.
///
/// # Safety
/// [`has_wide_gemm`] must hold for `h` (it panics otherwise); `x` and `y` as in
/// [`gemm_panel_f32`]; `panel` readable for `k · 32` values of `h`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_panel_wide(
    h: Half,
    x: *const f32,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let f = wide_kernel(h).expect("no widening matrix-matrix kernel for these panels");
    // SAFETY: the kernel is in the table, so the CPU runs it, with the tile rows of
    // `gemm_f32` (installed with it); the caller's contract covers every row.
    by_row_tiles(
        f,
        kernels().gemm_f32_rows,
        x,
        ldx,
        rows,
        k,
        panel,
        y,
        ldy,
        n_valid,
    );
}

/// `v ← e^(s·v)`, every value (within 3 units in the last place of the exact value with the
/// AVX-512, AVX2 and NEON kernels; the standard library's `exp` at the portable level). The
/// activations here are the models' elementwise work: a value's result does not depend on its
/// place in the slice.
pub fn exp(v: &mut [f32], s: f32) {
    // SAFETY: the table holds kernels this CPU runs; each reads and writes `v` only.
    unsafe { (kernels().exp)(v, s) }
}

/// `v ← 1 / (1 + e^-v)`, every value (as [`exp`]).
pub fn sigmoid(v: &mut [f32]) {
    // SAFETY: as in `exp`.
    unsafe { (kernels().sigmoid)(v) }
}

/// `v ← tanh v`, every value (as [`exp`]).
pub fn tanh(v: &mut [f32]) {
    // SAFETY: as in `exp`.
    unsafe { (kernels().tanh)(v) }
}

/// `v ← v · σ(v)` (SiLU), every value (as [`exp`]).
pub fn silu(v: &mut [f32]) {
    // SAFETY: as in `exp`.
    unsafe { (kernels().silu)(v) }
}

/// Rounds rows of `x` (each `k` long) to bf16, round to nearest even (a NaN stays a NaN), into
/// `out`, `out.len() / ld` rows at row stride `ld` (even, more than `k` when `k` is odd): the
/// activations of [`gemm_panel_bf16`]. The values past `k` in each row are set to zero.
pub fn round_rows_to_bf16(x: &[f32], k: usize, ld: usize, out: &mut [u16]) {
    let rows = out.len() / ld.max(1);
    assert!(x.len() >= rows * k && ld.is_multiple_of(2) && ld >= k.next_multiple_of(2));
    let f = kernels().f32_to_bf16;
    for (r, d) in out.chunks_exact_mut(ld).enumerate() {
        // SAFETY: the table holds only kernels the CPU supports; source and destination are
        // `k` values long.
        unsafe { f(&x[r * k..(r + 1) * k], &mut d[..k]) };
        d[k..].fill(0);
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as bits; a NaN stays a (quiet) NaN.
#[inline]
pub fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        ((b >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// One bf16 panel of a matrix product with the bf16 dot-product kernel:
/// `y[r·ldy + j] = Σ_i x[r·ldx + i] · panel(i, j)` for `r < rows` and `j < n_valid` (≤ 32),
/// the activations `x` already rounded to bf16 ([`round_rows_to_bf16`]), each pair of products
/// exact and summed in f32.
///
/// # Safety
/// [`has_bf16_dot`] must hold (it panics otherwise); `x` must be readable for `rows` rows of
/// `k` rounded up to even values at stride `ldx` (even), the value past an odd `k` zero;
/// `panel` for `k · 32` values (one bf16 panel as packed); `y` as in [`gemm_panel_f32`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_panel_bf16(
    x: *const u16,
    ldx: usize,
    rows: usize,
    k: usize,
    panel: *const u16,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let kn = kernels();
    let f = kn
        .gemm_bf16
        .expect("the bf16 dot-product kernel is not available");
    // SAFETY: the kernel is in the table, so the CPU runs it, with its tile rows; the
    // caller's contract covers every row.
    by_row_tiles(
        f,
        kn.gemm_bf16_rows,
        x,
        ldx,
        rows,
        k,
        panel,
        y,
        ldy,
        n_valid,
    );
}

/// One Q8_0 panel of a matrix product over all rows of `xq`: `y[r·ldy + j]` for
/// `r < xq.rows` and `j < n_valid`.
///
/// # Safety
/// `panel` must hold `xq.blocks` Q8_0 blocks; `y` as in [`gemm_panel_f32`].
pub unsafe fn gemm_panel_q8_0(
    xq: &QuantizedRows,
    panel: *const u8,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    gemm_panel_q(kernels().q8_0_tile, xq, panel, y, ldy, n_valid)
}

/// As [`gemm_panel_q8_0`] for a Q4_0 panel.
///
/// # Safety
/// `panel` must hold `xq.blocks` Q4_0 blocks; `y` as in [`gemm_panel_f32`].
pub unsafe fn gemm_panel_q4_0(
    xq: &QuantizedRows,
    panel: *const u8,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    gemm_panel_q(kernels().q4_0_tile, xq, panel, y, ldy, n_valid)
}

/// # Safety
/// `tile` is a table kernel whose blocks `panel` holds `xq.blocks` of; `y` as in
/// [`gemm_panel_f32`].
unsafe fn gemm_panel_q(
    tile: QTileFn,
    xq: &QuantizedRows,
    panel: *const u8,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mr = kernels().q_tile_rows;
    let nb = xq.blocks;
    let mut r = 0;
    while r < xq.rows {
        let m = (xq.rows - r).min(mr);
        let rows = QRows {
            q: xq.q.as_ptr().add(r * nb * QK),
            ldq: nb * QK,
            d: xq.d.as_ptr().add(r * nb),
            sum: xq.sum.as_ptr().add(r * nb),
            ldb: nb,
            rows: m,
        };
        // SAFETY: the caller's contract, for rows r..r+m (at most the tile rows) of `xq`.
        tile(&rows, panel, nb, y.add(r * ldy), ldy, n_valid);
        r += m;
    }
}

/// Up to six rows of quantized activations, as raw pointers for the tile kernels: row `r`'s
/// values at `q + r·ldq`, its block scales and sums at `d + r·ldb`, `sum + r·ldb`. The values
/// are in −127..=127 (the quantizers clamp; −128 never occurs), which the tiles without a
/// dot-product instruction rely on to keep their 16-bit pair sums exact.
struct QRows {
    q: *const i8,
    ldq: usize,
    d: *const f32,
    sum: *const i32,
    ldb: usize,
    rows: usize,
}

#[cfg(test)]
mod tests;
