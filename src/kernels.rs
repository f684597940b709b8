//! The SIMD kernels: an f32 dot product (for the baselines); matrix–vector products over
//! packed weight panels (the decode path, where every weight is read once per token and memory
//! bandwidth sets the speed); register-tiled matrix–matrix products (the prefill path, bound by
//! arithmetic); int8 products for the quantized formats; the RWKV-7 recurrence; a
//! memory-bandwidth probe.
//!
//! Each kernel has an AVX-512 version (with VNNI for the integer ones) and an AVX2+FMA or
//! portable one, chosen at run time (`RWKV_NO_AVX512`, `RWKV_NO_VNNI` and `RWKV_NO_SIMD` force
//! the lower levels, for testing). 16-bit and quantized weights are widened in registers, so
//! they stay small in memory.

/// Which instruction set the kernels use on this machine (detected once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var_os("RWKV_NO_SIMD").is_some() {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("RWKV_NO_AVX512").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// `Σ a[i]·b[i]` over f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match isa() {
        // SAFETY: the CPU supports the target features (checked by `isa`), and both slices
        // have length `n`, which is all the kernel reads.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
        // SAFETY: as above, for AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
        _ => portable::dot_f32(a, b),
    }
}

mod portable {
    const L: usize = 16;

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
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

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

    // Every kernel below reads a[i] and b[i] for i < a.len() only (the callers pass slices of
    // equal length), with unaligned loads.

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
}

// ---------------------------------------------------------------------------------------------
// Packed weight panels: the layout every weight matrix is kept in, and the kernels over it.
//
// A weight matrix W (out × in) is cut into panels of NR = 32 consecutive output rows. Within a
// panel the weights are stored input-major: for each input k, the 32 weights W[p·32 + j][k]
// (j = 0..32) lie next to each other, so one 64- or 128-byte load gives the weights of one input
// for 32 outputs. A matrix–vector product streams each panel once (32 outputs accumulated in
// two 16-lane registers, no horizontal sums); a matrix–matrix product keeps one panel in cache
// and runs a register-tiled micro-kernel over blocks of token rows against it. Rows past `out`
// in the last panel are zero.
//
// Layouts of one input row of a panel (`k` fixed), by format:
// - f32: 32 × f32, output order.
// - bf16: 32 × u16, interleaved: u16 number 2i is output i, number 2i+1 is output 16+i, so a
//   64-byte load read as sixteen 32-bit lanes gives outputs 0..16 in the low halves (shift left
//   16 to widen) and outputs 16..32 in the high halves (mask the low half off).
// - f16: 32 × u16, output order (the hardware widens 16 at a time).
// - Q8_0: see `Q8_BLOCK_BYTES`: quantized per block of QK = 32 inputs.
// ---------------------------------------------------------------------------------------------

/// Output rows per panel.
pub const NR: usize = 32;
/// Inputs per quantization block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block of a panel (32 outputs × 32 inputs): first 1,024 weight bytes laid
/// out `[g: 8][j: 32][i: 4]` — output j's weights for inputs 4g..4g+4, each stored offset
/// binary (`q + 128`, q in −127..=127) — then the 32 block scales as bf16, interleaved as in a
/// bf16 panel row. Four consecutive inputs of one output share a 32-bit lane, which is the
/// operand shape of the AVX-512 VNNI instruction `vpdpbusd`.
pub const Q8_BLOCK_BYTES: usize = QK * NR + 2 * NR;

/// Bytes of one Q4_0 block of a panel (32 outputs × 32 inputs): first 512 bytes of 4-bit
/// weights laid out `[g: 4][j: 32][i: 4]` — the low nibble of byte (g, j, i) is output j's
/// weight for input 4g + i, the high nibble its weight for input 16 + 4g + i, each stored
/// offset binary (`q + 8`, q in −8..=7) — then the 32 block scales as bf16, interleaved as
/// in a bf16 panel row. Masking or shifting a 64-byte load gives the `vpdpbusd` operand of
/// four inputs for 16 outputs, as in Q8_0.
pub const Q4_BLOCK_BYTES: usize = QK * NR / 2 + 2 * NR;

/// The block-quantized weight formats the integer kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    Q8_0,
    Q4_0,
}

impl QuantKind {
    /// Bytes of one block of a panel.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8_0 => Q8_BLOCK_BYTES,
            QuantKind::Q4_0 => Q4_BLOCK_BYTES,
        }
    }
    /// The weights' storage offset (128 for bytes, 8 for nibbles), as a shift.
    fn offset_shift(self) -> u32 {
        match self {
            QuantKind::Q8_0 => 7,
            QuantKind::Q4_0 => 3,
        }
    }
}

/// Whether the int8 dot-product instructions (AVX-512 VNNI) are used (detected once;
/// `RWKV_NO_VNNI` turns them off, as `RWKV_NO_AVX512` turns off AVX-512).
pub fn has_vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512
                && std::env::var_os("RWKV_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// One cache line; the unit of small [`AlignedBuf`]s.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A zero-initialised byte buffer aligned to 64 bytes, viewed as f32, u16 or bytes.
///
/// Buffers live in anonymous memory maps ("arenas") backed by transparent huge pages where
/// the kernel allows: streaming a weight matrix through 4 KiB pages costs a TLB miss every
/// 4 KiB and stops the hardware prefetcher at every page boundary (measured here: 20 GB/s
/// through small pages, 33 GB/s through huge ones). Buffers of 16 MiB and more get an arena
/// of their own; smaller ones are laid back to back in shared 64 MiB arenas, so that no matrix
/// ends in a partly used page of its own. Maps are zero until written and cost resident
/// memory only as they are filled; an arena is unmapped when its last buffer is dropped.
pub struct AlignedBuf {
    store: Store,
    len: usize,
}

enum Store {
    Heap(Vec<Line>),
    Arena {
        arena: std::sync::Arc<Arena>,
        offset: usize,
    },
}

/// One anonymous mapping, aligned to 2 MiB, handed out in disjoint pieces.
struct Arena {
    /// Keeps the mapping alive; its memory is reached only through `base`.
    _map: memmap2::MmapMut,
    base: *mut u8,
    cap: usize,
}

// SAFETY: the arena's memory is only reached through `AlignedBuf`s, each owning a disjoint
// range of it (handed out once, under the `CURRENT` lock), and reading it through `&self`,
// writing through `&mut self` — the same rules as a `Vec<u8>` per buffer.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    fn new(bytes: usize) -> Option<Self> {
        let cap = bytes.next_multiple_of(HUGE_PAGE);
        let mut map = memmap2::MmapMut::map_anon(cap + HUGE_PAGE).ok()?;
        let addr = map.as_ptr() as usize;
        let offset = addr.next_multiple_of(HUGE_PAGE) - addr;
        // A refusal (no THP on this kernel) changes only speed.
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, cap);
        // SAFETY: `offset < HUGE_PAGE`, and the map is `cap + HUGE_PAGE` bytes long.
        let base = unsafe { map.as_mut_ptr().add(offset) };
        Some(Self {
            _map: map,
            base,
            cap,
        })
    }
}

const HUGE_PAGE: usize = 2 << 20;
/// Size of a shared arena, and the size from which a buffer gets an arena of its own.
const ARENA_BYTES: usize = 64 << 20;
const OWN_ARENA_FROM: usize = 16 << 20;

/// The shared arena being filled, and how much of it is handed out.
static CURRENT: std::sync::Mutex<Option<(std::sync::Arc<Arena>, usize)>> =
    std::sync::Mutex::new(None);

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let placed = if len == 0 {
            None
        } else if len >= OWN_ARENA_FROM {
            Arena::new(len).map(|a| (std::sync::Arc::new(a), 0))
        } else {
            let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            let fits = matches!(&*cur, Some((a, used)) if used + len <= a.cap);
            if !fits {
                *cur = Arena::new(ARENA_BYTES).map(|a| (std::sync::Arc::new(a), 0));
            }
            cur.as_mut().map(|(a, used)| {
                let offset = *used;
                *used = (offset + len).next_multiple_of(64);
                (a.clone(), offset)
            })
        };
        let store = match placed {
            Some((arena, offset)) => Store::Arena { arena, offset },
            None => Store::Heap(vec![Line([0; 64]); len.div_ceil(64)]),
        };
        Self { store, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ptr(&self) -> *const u8 {
        match &self.store {
            Store::Heap(v) => v.as_ptr() as *const u8,
            // SAFETY: `offset + len ≤ cap`: the range was handed out inside the arena.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
        }
    }

    fn ptr_mut(&mut self) -> *mut u8 {
        match &mut self.store {
            Store::Heap(v) => v.as_mut_ptr() as *mut u8,
            // SAFETY: as in `ptr`.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr()` starts `len` initialised bytes (zeroed at creation: a `Line` vector
        // or an anonymous map) that only `self` reaches, borrowed for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        // SAFETY: as in `bytes`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut(), len) }
    }

    pub fn f32s(&self) -> &[f32] {
        // SAFETY: the start is 64-byte aligned (more than f32 needs), every bit pattern is a
        // valid f32, and `len / 4` whole f32s lie within the `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr() as *const f32, self.len / 4) }
    }

    pub fn f32s_mut(&mut self) -> &mut [f32] {
        let len = self.len;
        // SAFETY: as in `f32s`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut() as *mut f32, len / 4) }
    }

    pub fn u16s(&self) -> &[u16] {
        // SAFETY: aligned for u16, every bit pattern valid, `len / 2` u16s within `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr() as *const u16, self.len / 2) }
    }

    pub fn u16s_mut(&mut self) -> &mut [u16] {
        let len = self.len;
        // SAFETY: as in `u16s`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut() as *mut u16, len / 2) }
    }
}

/// Sum of every value of `v` (a pure streaming read: one load per 64 bytes, four
/// independent accumulators), for measuring memory bandwidth.
pub fn sum_f32(v: &[f32]) -> f32 {
    match isa() {
        // SAFETY: AVX-512F present (checked by `isa`); reads stay within `v`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86p::sum_f32_avx512(v) },
        _ => {
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
    }
}

/// Measured memory bandwidth, bytes per second.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    /// Reading a buffer much larger than the caches, on every pool thread (best pass).
    pub read: f64,
    /// Copying between two such buffers, counting the bytes read and written (best pass).
    pub copy: f64,
    pub bytes: usize,
    pub threads: usize,
}

/// Measures the memory bandwidth with a short STREAM-style test: a read (sum) over `bytes`
/// and a copy of `bytes / 2` into a second buffer, each split across the rayon pool's
/// threads, `passes` times; the best pass of each is kept. The buffers are laid out like the
/// weight matrices (huge pages where the kernel allows), so the figure is the ceiling the
/// matrix–vector kernels of the decode path can reach.
pub fn measure_bandwidth(bytes: usize, passes: usize) -> Bandwidth {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let mut a = AlignedBuf::zeroed(bytes);
    // Touch every page first (and give the values something to add).
    a.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(1.0));
    let part = (a.f32s().len() / threads).max(1).next_multiple_of(16);
    let mut read = 0.0f64;
    let mut sink = 0.0f32;
    for _ in 0..passes.max(1) {
        let t = std::time::Instant::now();
        let s: f32 = a.f32s().par_chunks(part).map(sum_f32).sum();
        let dt = t.elapsed().as_secs_f64();
        sink += s;
        read = read.max(bytes as f64 / dt.max(1e-9));
    }
    std::hint::black_box(sink);
    drop(a);
    let half = bytes / 2;
    let mut src = AlignedBuf::zeroed(half);
    let mut dst = AlignedBuf::zeroed(half);
    src.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(2.0));
    dst.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(0.0));
    let part = (src.f32s().len() / threads).max(1);
    let mut copy = 0.0f64;
    for _ in 0..passes.max(1) {
        let t = std::time::Instant::now();
        dst.f32s_mut()
            .par_chunks_mut(part)
            .zip(src.f32s().par_chunks(part))
            .for_each(|(d, s)| d.copy_from_slice(s));
        let dt = t.elapsed().as_secs_f64();
        copy = copy.max(2.0 * half as f64 / dt.max(1e-9));
    }
    std::hint::black_box(dst.f32s()[0]);
    Bandwidth {
        read,
        copy,
        bytes,
        threads,
    }
}

/// Position within a bf16 panel row (or Q8_0 scale row) of output `j` (0..32).
#[inline]
pub fn bf16_lane_position(j: usize) -> usize {
    if j < 16 {
        2 * j
    } else {
        2 * (j - 16) + 1
    }
}

/// Output-column masks for a panel whose first `n` (≤ 32) outputs are real.
#[inline]
fn panel_masks(n: usize) -> (u16, u16) {
    let m = |c: usize| ((1u32 << c.min(16)) - 1) as u16;
    (m(n), m(n.saturating_sub(16)))
}

/// `y[j] = Σ_i W[j][i]·x[i]` for the f32 panels in `panels` (`k` inputs each), writing the
/// first `y.len()` outputs (at most 32 per panel).
pub fn gemv_f32(panels: &[f32], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    match isa() {
        // SAFETY: AVX-512F is present (checked by `isa`); the asserts above bound every read
        // (n_panels panels of k × 32 weights, k inputs), and writes go to y[..y.len()] only.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86p::gemv_f32_avx512(panels.as_ptr(), k, x.as_ptr(), y) },
        // SAFETY: AVX2 and FMA present; bounds as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86p::gemv_f32_avx2(panels.as_ptr(), k, x.as_ptr(), y) },
        _ => portable_p::gemv(k, x, y, |p, i, j| panels[(p * k + i) * NR + j]),
    }
}

/// As [`gemv_f32`] for bf16 panels (interleaved rows, see the layout notes above).
pub fn gemv_bf16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    match isa() {
        // SAFETY: AVX-512F present; reads bounded by the assert; writes within y.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86p::gemv_bf16_avx512(panels.as_ptr(), k, x.as_ptr(), y) },
        // SAFETY: AVX2 and FMA present; as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86p::gemv_bf16_avx2(panels.as_ptr(), k, x.as_ptr(), y) },
        _ => portable_p::gemv(k, x, y, |p, i, j| {
            let h = panels[(p * k + i) * NR + bf16_lane_position(j)];
            f32::from_bits((h as u32) << 16)
        }),
    }
}

/// As [`gemv_f32`] for f16 panels.
pub fn gemv_f16(panels: &[u16], k: usize, x: &[f32], y: &mut [f32]) {
    let n_panels = y.len().div_ceil(NR);
    assert!(panels.len() >= n_panels * k * NR && x.len() >= k);
    match isa() {
        // SAFETY: AVX-512F present; reads bounded by the assert; writes within y.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86p::gemv_f16_avx512(panels.as_ptr(), k, x.as_ptr(), y) },
        // SAFETY: AVX2, FMA and F16C present; as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86p::gemv_f16_avx2(panels.as_ptr(), k, x.as_ptr(), y) },
        _ => portable_p::gemv(k, x, y, |p, i, j| {
            half::f16::from_bits(panels[(p * k + i) * NR + j]).to_f32()
        }),
    }
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
    match isa() {
        // SAFETY: F16C is part of both x86 levels (`isa` checks it for AVX2; every AVX-512
        // CPU has it); reads and writes stay within the two equal-length slices.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 => unsafe { x86p::f16_to_f32_f16c(src, dst) },
        _ => {
            for (s, d) in src.iter().zip(dst.iter_mut()) {
                *d = half::f16::from_bits(*s).to_f32();
            }
        }
    }
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
                let (d, s) = quantize_block_q8(src, q);
                self.d[at] = d;
                self.sum[at] = s;
            }
        }
    }
}

/// Quantizes 32 activations: returns the scale and Σ q. `q = round_ties_even(x · 127 / amax)`.
#[inline]
pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    debug_assert!(x.len() == QK && q.len() == QK);
    match isa() {
        // SAFETY: AVX-512F/BW present (checked by `isa`); x and q hold 32 elements each.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86p::quantize_block_q8_avx512(x, q) },
        _ => portable_p::quantize_block_q8(x, q),
    }
}

/// `y[j] = Σ_i W[j][i]·x[i]` over quantized panels of `kind` (`blocks` blocks each) with the
/// activations quantized in `xq` (row `row`), writing the first `y.len()` outputs.
pub fn gemv_q(
    kind: QuantKind,
    panels: &[u8],
    blocks: usize,
    xq: &QuantizedRows,
    row: usize,
    y: &mut [f32],
) {
    let n_panels = y.len().div_ceil(NR);
    let pb = blocks * kind.block_bytes();
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
        // SAFETY: `panel` holds `blocks` blocks, q/d/sum hold one row of `blocks` blocks, and
        // the destination is the 1..=32 outputs of `yp`, written at no other index.
        unsafe {
            q_tile(
                kind,
                &rows,
                panel.as_ptr(),
                blocks,
                yp.as_mut_ptr(),
                0,
                yp.len(),
            )
        };
    }
}

/// One token of the RWKV-7 recurrence for one head, on the state held **transposed**:
/// `st[j·n + i]` is S[i][j] (value channel i, key channel j). With
/// `sa_i = Σ_j S_ij·kk_j`:
///
/// ```text
/// S_ij ← S_ij·w_j − sa_i·(kk_j·a_j) + v_i·k_j        o_i = Σ_j S_ij·r_j  (new S)
/// ```
///
/// In the transposed layout both sums are vectors over `i` built from broadcasts, so the
/// kernel needs no horizontal sums; the whole state (16 KiB at n = 64) stays in L1.
#[allow(clippy::too_many_arguments)]
pub fn wkv7_token(
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    assert!(st.len() >= n * n);
    for s in [r, w, k, v, kk, a] {
        assert!(s.len() >= n);
    }
    assert!(o.len() >= n);
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 && n.is_multiple_of(16) && n <= 128 {
        // SAFETY: AVX-512F present (checked by `isa`); the asserts above bound every access
        // (the state n × n, the vectors n long).
        unsafe { x86p::wkv7_token_avx512(st, n, r, w, k, v, kk, a, o) };
        return;
    }
    let mut sa = vec![0.0f32; n];
    for (row, kj) in st.chunks_exact(n).zip(kk).take(n) {
        for (s, x) in sa.iter_mut().zip(row) {
            *s += x * kj;
        }
    }
    o[..n].fill(0.0);
    for (j, row) in st.chunks_exact_mut(n).enumerate().take(n) {
        let (wj, bj, kj, rj) = (w[j], -kk[j] * a[j], k[j], r[j]);
        for i in 0..n {
            let x = row[i] * wj + sa[i] * bj + v[i] * kj;
            row[i] = x;
            o[i] += x * rj;
        }
    }
}

/// Rows per micro-tile of the f32 matrix–matrix kernel.
fn f32_tile_rows() -> usize {
    match isa() {
        Isa::Avx512 => 12,
        Isa::Avx2 => 3,
        Isa::Portable => 4,
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
    let mr = f32_tile_rows();
    let mut r = 0;
    while r < rows {
        let m = (rows - r).min(mr);
        let (xr, yr) = (x.add(r * ldx), y.add(r * ldy));
        match isa() {
            // SAFETY: AVX-512F present; the caller's contract covers rows r..r+m.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86p::gemm_f32_avx512(m, xr, ldx, k, panel, yr, ldy, n_valid),
            // SAFETY: AVX2 and FMA present; as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86p::gemm_f32_avx2(m, xr, ldx, k, panel, yr, ldy, n_valid),
            _ => portable_p::gemm_f32(m, xr, ldx, k, panel, yr, ldy, n_valid),
        }
        r += m;
    }
}

/// One quantized panel of a matrix product over all rows of `xq`: `y[r·ldy + j]` for
/// `r < xq.rows` and `j < n_valid`.
///
/// # Safety
/// `panel` must hold `xq.blocks` blocks of `kind`; `y` as in [`gemm_panel_f32`].
pub unsafe fn gemm_panel_q(
    kind: QuantKind,
    xq: &QuantizedRows,
    panel: *const u8,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    let mr = if has_vnni() { 6 } else { 4 };
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
        q_tile(kind, &rows, panel, nb, y.add(r * ldy), ldy, n_valid);
        r += m;
    }
}

/// Up to six rows of quantized activations, as raw pointers for the tile kernels: row `r`'s
/// values at `q + r·ldq`, its block scales and sums at `d + r·ldb`, `sum + r·ldb`.
struct QRows {
    q: *const i8,
    ldq: usize,
    d: *const f32,
    sum: *const i32,
    ldb: usize,
    rows: usize,
}

/// `x.rows` (≤ 6) rows of quantized activations against one quantized panel.
///
/// # Safety
/// `x` readable for its rows of `blocks · 32` values, `blocks` scales and sums; `panel` for
/// `blocks` blocks of `kind`; `y` as in [`gemm_panel_f32`].
unsafe fn q_tile(
    kind: QuantKind,
    x: &QRows,
    panel: *const u8,
    blocks: usize,
    y: *mut f32,
    ldy: usize,
    n_valid: usize,
) {
    if has_vnni() {
        #[cfg(target_arch = "x86_64")]
        {
            match kind {
                QuantKind::Q8_0 => x86p::q8_tile_vnni(x, panel, blocks, y, ldy, n_valid),
                QuantKind::Q4_0 => x86p::q4_tile_vnni(x, panel, blocks, y, ldy, n_valid),
            }
            return;
        }
    }
    portable_p::q_tile(kind, x, panel, blocks, y, ldy, n_valid);
}

/// The unsigned (offset) weight of output `j`, input `k` (< 32) in a quantized block.
#[inline]
pub fn quant_weight(kind: QuantKind, blk: &[u8], j: usize, k: usize) -> i32 {
    match kind {
        QuantKind::Q8_0 => blk[(k / 4) * 4 * NR + j * 4 + k % 4] as i32,
        QuantKind::Q4_0 => {
            let kk = k % 16;
            let byte = blk[(kk / 4) * 4 * NR + j * 4 + kk % 4];
            (if k < 16 { byte & 15 } else { byte >> 4 }) as i32
        }
    }
}

/// The bf16 scale of output `j` in a quantized block.
#[inline]
pub fn quant_scale(kind: QuantKind, blk: &[u8], j: usize) -> f32 {
    let at = kind.block_bytes() - 2 * NR + 2 * bf16_lane_position(j);
    f32::from_bits((u16::from_le_bytes([blk[at], blk[at + 1]]) as u32) << 16)
}

mod portable_p {
    use super::{quant_scale, quant_weight, QRows, QuantKind, NR, QK};

    /// Matrix–vector product with weights read through `w(panel, input, output)`.
    pub fn gemv(k: usize, x: &[f32], y: &mut [f32], w: impl Fn(usize, usize, usize) -> f32) {
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

    pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut s = 0;
        for (o, v) in q.iter_mut().zip(x) {
            let r = crate::quant::round_small(v * id).clamp(-127.0, 127.0) as i32;
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

    /// # Safety
    /// As `super::q_tile`.
    pub unsafe fn q_tile(
        kind: QuantKind,
        x: &QRows,
        panel: *const u8,
        blocks: usize,
        y: *mut f32,
        ldy: usize,
        n_valid: usize,
    ) {
        let bb = kind.block_bytes();
        let blocks_all = std::slice::from_raw_parts(panel, blocks * bb);
        for r in 0..x.rows {
            let mut acc = [0.0f32; NR];
            for (b, blk) in blocks_all.chunks_exact(bb).enumerate() {
                let xq = std::slice::from_raw_parts(x.q.add(r * x.ldq + b * QK), QK);
                let dx = *x.d.add(r * x.ldb + b);
                let c = *x.sum.add(r * x.ldb + b) << kind.offset_shift();
                for (j, a) in acc.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for (k, xv) in xq.iter().enumerate() {
                        s += quant_weight(kind, blk, j, k) * *xv as i32;
                    }
                    *a += (s - c) as f32 * (quant_scale(kind, blk, j) * dx);
                }
            }
            for (j, a) in acc.iter().enumerate().take(n_valid) {
                *y.add(r * ldy + j) = *a;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86p {
    use super::{panel_masks, QRows, NR, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK};
    use half::f16;
    use std::arch::x86_64::*;

    // Every kernel here reads only within the bounds its safe caller asserted (panels of
    // k × 32 weights, k inputs) and writes only the outputs it was given.

    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn wkv7_token_512<const M: usize>(
        st: *mut f32,
        r: *const f32,
        w: *const f32,
        k: *const f32,
        v: *const f32,
        kk: *const f32,
        a: *const f32,
        o: *mut f32,
    ) {
        let n = 16 * M;
        let mut sa = [_mm512_setzero_ps(); M];
        for j in 0..n {
            let c = _mm512_set1_ps(*kk.add(j));
            let row = st.add(j * n);
            for (m, s) in sa.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16 * m)), c, *s);
            }
        }
        let mut vv = [_mm512_setzero_ps(); M];
        for (m, x) in vv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(v.add(16 * m));
        }
        let mut acc = [_mm512_setzero_ps(); M];
        for j in 0..n {
            let wj = _mm512_set1_ps(*w.add(j));
            let bj = _mm512_set1_ps(-*kk.add(j) * *a.add(j));
            let kj = _mm512_set1_ps(*k.add(j));
            let rj = _mm512_set1_ps(*r.add(j));
            let row = st.add(j * n);
            for m in 0..M {
                let p = row.add(16 * m);
                let x = _mm512_fmadd_ps(
                    _mm512_loadu_ps(p),
                    wj,
                    _mm512_fmadd_ps(sa[m], bj, _mm512_mul_ps(vv[m], kj)),
                );
                _mm512_storeu_ps(p, x);
                acc[m] = _mm512_fmadd_ps(x, rj, acc[m]);
            }
        }
        for (m, x) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.add(16 * m), *x);
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn wkv7_token_avx512(
        st: &mut [f32],
        n: usize,
        r: &[f32],
        w: &[f32],
        k: &[f32],
        v: &[f32],
        kk: &[f32],
        a: &[f32],
        o: &mut [f32],
    ) {
        let (s, r, w, k, v, kk, a, o) = (
            st.as_mut_ptr(),
            r.as_ptr(),
            w.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            kk.as_ptr(),
            a.as_ptr(),
            o.as_mut_ptr(),
        );
        macro_rules! go {
            ($($m:literal)*) => {
                match n / 16 {
                    $($m => wkv7_token_512::<$m>(s, r, w, k, v, kk, a, o),)*
                    _ => unreachable!("head size"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
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

    #[target_feature(enable = "avx512f")]
    unsafe fn store_panel_512(y: *mut f32, n: usize, lo: __m512, hi: __m512) {
        let (m0, m1) = panel_masks(n);
        _mm512_mask_storeu_ps(y, m0, lo);
        _mm512_mask_storeu_ps(y.add(16), m1, hi);
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemv_f32_avx512(w: *const f32, k: usize, x: *const f32, y: &mut [f32]) {
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
    pub unsafe fn gemv_bf16_avx512(w: *const u16, k: usize, x: *const f32, y: &mut [f32]) {
        let n_out = y.len();
        for p in 0..n_out.div_ceil(NR) {
            let wp = w.add(p * k * NR);
            let mut a = [_mm512_setzero_ps(); 8];
            let mut i = 0;
            while i + 4 <= k {
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
    pub unsafe fn gemv_f16_avx512(w: *const u16, k: usize, x: *const f32, y: &mut [f32]) {
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

    /// Stores four 8-lane accumulators (outputs 0..8, 8..16, 16..24, 24..32) of which the first
    /// `n` outputs are real.
    #[target_feature(enable = "avx2")]
    unsafe fn store_panel_256(y: *mut f32, n: usize, acc: [__m256; 4]) {
        if n >= NR {
            for (q, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(y.add(8 * q), *a);
            }
        } else {
            let mut tmp = [0.0f32; NR];
            for (q, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * q), *a);
            }
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), y, n);
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
        store_panel_256(y, n, acc);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemv_f32_avx2(w: *const f32, k: usize, x: *const f32, y: &mut [f32]) {
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
    pub unsafe fn gemv_bf16_avx2(w: *const u16, k: usize, x: *const f32, y: &mut [f32]) {
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
    pub unsafe fn gemv_f16_avx2(w: *const u16, k: usize, x: *const f32, y: &mut [f32]) {
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

    /// The f32 micro-kernel: `R` rows × 32 outputs, accumulated in 2R registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_f32_512<const R: usize>(
        x: *const f32,
        ldx: usize,
        k: usize,
        w: *const f32,
        y: *mut f32,
        ldy: usize,
        n_valid: usize,
    ) {
        let mut a0 = [_mm512_setzero_ps(); R];
        let mut a1 = [_mm512_setzero_ps(); R];
        for i in 0..k {
            let w0 = _mm512_loadu_ps(w.add(i * NR));
            let w1 = _mm512_loadu_ps(w.add(i * NR + 16));
            for r in 0..R {
                let b = _mm512_set1_ps(*x.add(r * ldx + i));
                a0[r] = _mm512_fmadd_ps(w0, b, a0[r]);
                a1[r] = _mm512_fmadd_ps(w1, b, a1[r]);
            }
        }
        let (m0, m1) = panel_masks(n_valid);
        for r in 0..R {
            _mm512_mask_storeu_ps(y.add(r * ldy), m0, a0[r]);
            _mm512_mask_storeu_ps(y.add(r * ldy + 16), m1, a1[r]);
        }
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
        macro_rules! go {
            ($($r:literal)*) => {
                match rows {
                    $($r => tile_f32_512::<$r>(x, ldx, k, w, y, ldy, n_valid),)*
                    _ => unreachable!("tile rows"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12)
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
            store_panel_256(y.add(r * ldy), n_valid, a[r]);
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

    /// Stores the `R` rows of 32 outputs, of which the first `n_valid` are real.
    #[inline(always)]
    unsafe fn store_rows<const R: usize>(
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
            let mut i0 = [_mm512_setzero_si512(); R];
            let mut i1 = [_mm512_setzero_si512(); R];
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
        macro_rules! go {
            ($($r:literal)*) => {
                match x.rows {
                    $($r => tile_q8_vnni::<$r>(x, panel, blocks, y, ldy, n_valid),)*
                    _ => unreachable!("tile rows"),
                }
            };
        }
        go!(1 2 3 4 5 6)
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
        macro_rules! go {
            ($($r:literal)*) => {
                match x.rows {
                    $($r => tile_q4_vnni::<$r>(x, panel, blocks, y, ldy, n_valid),)*
                    _ => unreachable!("tile rows"),
                }
            };
        }
        go!(1 2 3 4 5 6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let b = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
            .collect();
        (a, b)
    }

    #[test]
    fn every_kernel_matches_the_plain_sum_at_every_length() {
        for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 768, 3072] {
            let (a, b) = data(n);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-4 * (1.0 + exact.abs());
            assert!((dot_f32(&a, &b) as f64 - exact).abs() < tol, "f32 n={n}");
            // The portable fallback agrees too.
            assert!((portable::dot_f32(&a, &b) as f64 - exact).abs() < tol);
        }
    }

    #[test]
    fn activation_quantization_matches_the_portable_code() {
        for seed in 0..20u32 {
            let x: Vec<f32> = (0..QK)
                .map(|i| {
                    (((i as u32 * 2654435761u32) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 37.0
                        - 13.0
                })
                .collect();
            let (mut q1, mut q2) = ([0i8; QK], [0i8; QK]);
            let a = quantize_block_q8(&x, &mut q1);
            let b = portable_p::quantize_block_q8(&x, &mut q2);
            assert_eq!(a, b);
            assert_eq!(q1, q2);
        }
        let mut q = [1i8; QK];
        assert_eq!(quantize_block_q8(&[0.0; QK], &mut q), (0.0, 0));
        assert!(q.iter().all(|&v| v == 0));
    }

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(1000);
        assert_eq!(b.bytes().as_ptr() as usize % 64, 0);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.f32s().len(), 250);
        assert!(b.bytes().iter().all(|&v| v == 0));
    }
}
