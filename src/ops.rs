//! The small linear-algebra toolkit the models are written in.
//!
//! Activations are plain row-major [`Mat`]s of f32 (T tokens × width). Weight matrices are
//! [`Linear`]s packed once at load into panels of 32 output rows, in the chosen format (f32,
//! bf16, f16, or the block-quantized Q8_0 / Q4_0 of [`crate::quant`]): one or two tokens go
//! through our matrix–vector kernels (the decode path, bound by memory bandwidth), a batch
//! through our register-tiled matrix–matrix kernels (the prefill path, bound by arithmetic),
//! both SIMD ([`crate::kernels`]) and multi-threaded on a small fork–join [`pool`]. The
//! RWKV-7 recurrence has a kernel of its own ([`wkv7`]). Everything else is plain Rust.

use anyhow::{bail, Result};
use candle_core::DType;

/// A row-major matrix of activations: `rows` tokens × `cols` channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self { rows, cols, data }
    }
    pub fn row(&self, t: usize) -> &[f32] {
        &self.data[t * self.cols..(t + 1) * self.cols]
    }
    pub fn row_mut(&mut self, t: usize) -> &mut [f32] {
        &mut self.data[t * self.cols..(t + 1) * self.cols]
    }
    pub fn last_row(&self) -> &[f32] {
        self.row(self.rows - 1)
    }
    /// `self += other`, elementwise.
    pub fn add_assign(&mut self, other: &Mat) {
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
    }
    /// Applies `f` to every element.
    pub fn map(mut self, f: impl Fn(f32) -> f32) -> Mat {
        for a in self.data.iter_mut() {
            *a = f(*a);
        }
        self
    }
    /// Elementwise product.
    pub fn hadamard(mut self, other: &Mat) -> Mat {
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a *= b;
        }
        self
    }
}

/// The format weight matrices are kept in for compute (activations are always f32):
/// a float dtype, or a block-quantized format built at load time ([`crate::quant`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDType {
    F32,
    F16,
    BF16,
    /// 8-bit blocks of 32 weights with one bf16 scale each (8.5 bits per weight).
    Q8_0,
    /// 4-bit blocks of 32 weights with one bf16 scale each (4.5 bits per weight).
    Q4_0,
}

impl ComputeDType {
    /// candle's dtype of the same width (`U8` for the 8-bit format).
    pub fn candle(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::F16 => DType::F16,
            ComputeDType::BF16 => DType::BF16,
            ComputeDType::Q8_0 | ComputeDType::Q4_0 => DType::U8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ComputeDType::F32 => "f32",
            ComputeDType::F16 => "f16",
            ComputeDType::BF16 => "bf16",
            ComputeDType::Q8_0 => "q8_0",
            ComputeDType::Q4_0 => "q4_0",
        }
    }
    /// Bytes per element, rounded to whole bytes (1 for the quantized formats).
    pub fn size_in_bytes(self) -> usize {
        match self {
            ComputeDType::F32 => 4,
            ComputeDType::F16 | ComputeDType::BF16 => 2,
            ComputeDType::Q8_0 | ComputeDType::Q4_0 => 1,
        }
    }
    /// Bits per weight in memory, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            ComputeDType::F32 => 32.0,
            ComputeDType::F16 | ComputeDType::BF16 => 16.0,
            ComputeDType::Q8_0 => 8.5,
            ComputeDType::Q4_0 => 4.5,
        }
    }
    pub fn is_quantized(self) -> bool {
        matches!(self, ComputeDType::Q8_0 | ComputeDType::Q4_0)
    }
    /// The packed layout weights of this dtype are kept in.
    pub fn format(self) -> quant::Format {
        match self {
            ComputeDType::F32 => quant::Format::F32,
            ComputeDType::BF16 => quant::Format::BF16,
            ComputeDType::F16 => quant::Format::F16,
            ComputeDType::Q8_0 => quant::Format::Q8_0,
            ComputeDType::Q4_0 => quant::Format::Q4_0,
        }
    }
}

impl std::str::FromStr for ComputeDType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(ComputeDType::F32),
            "f16" | "fp16" | "float16" => Ok(ComputeDType::F16),
            "bf16" | "bfloat16" => Ok(ComputeDType::BF16),
            "q8_0" | "q8" => Ok(ComputeDType::Q8_0),
            "q4_0" | "q4" => Ok(ComputeDType::Q4_0),
            other => bail!("unknown dtype '{other}' (expected f32, f16, bf16, q8_0 or q4_0)"),
        }
    }
}

/// The weight format of a command line's `--dtype` and `--quant`: the quantized format when
/// one is given (it must be one), else the dtype.
pub fn effective_dtype(dtype: ComputeDType, quant: Option<ComputeDType>) -> Result<ComputeDType> {
    match quant {
        None => Ok(dtype),
        Some(q) if q.is_quantized() => Ok(q),
        Some(q) => bail!(
            "--quant {} is not a quantized format (expected q8_0 or q4_0; use --dtype for f32, f16, bf16)",
            q.name()
        ),
    }
}

/// A weight matrix `W` of shape (out, in), applied as `y = x · Wᵀ`.
///
/// The weights are packed once, at construction, into panels of 32 output rows in the chosen
/// format (see [`crate::kernels`]); every product reads them in that form. One or two token
/// rows go through the matrix–vector kernels (the decode path, bound by memory bandwidth);
/// more rows through a register-tiled matrix–matrix kernel that keeps a panel in cache while
/// it runs over all rows (16-bit panels are widened to f32 once per panel and call, in a
/// per-thread buffer; Q8_0 and Q4_0 multiply in 8-bit integers). Both are multi-threaded over
/// panels.
pub struct Linear {
    pub out_dim: usize,
    pub in_dim: usize,
    dtype: ComputeDType,
    w: AlignedBuf,
}

/// Rows of a batch at or below this count use the matrix–vector kernel.
const GEMV_MAX_ROWS: usize = 2;

/// Products that read fewer weight bytes than this run on the calling thread: handing work
/// to the pool costs more than it saves.
const SERIAL_BYTES: usize = 96 * 1024;

/// Products with fewer multiply–adds than this run on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// A raw pointer to an output matrix that several threads write, each its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

impl OutPtr {
    /// The pointer `offset` elements on (a method, so that closures capture the whole
    /// `OutPtr`, which is `Sync`, rather than its raw-pointer field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
// SAFETY: the pointer is only dereferenced inside `Linear::forward`, where each thread
// writes a disjoint set of columns of the output while the owning `Mat` is borrowed mutably
// by that call and outlives every thread's work.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread f32 copy of one 16-bit panel, for the matrix–matrix kernel.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread transposed copy of one head's RWKV-7 state.
    static WKV_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread copy of a matrix–matrix product's input at a padded row stride.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread quantized activations, for the Q8_0 and Q4_0 kernels.
    static QROWS: std::cell::RefCell<QuantizedRows> = std::cell::RefCell::new(QuantizedRows::default());
}

/// This thread's activation-quantization buffer, taken out of its slot so that a nested
/// product on the same thread (work stealing) finds the slot empty rather than borrowed.
fn take_qrows() -> QuantizedRows {
    QROWS.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

fn put_qrows(xq: QuantizedRows) {
    QROWS.with(|q| *q.borrow_mut() = xq);
}

/// This thread's buffer for inputs copied to a padded row stride (taken out, as above).
fn take_padded() -> Vec<f32> {
    PADDED.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

fn put_padded(v: Vec<f32>) {
    PADDED.with(|q| *q.borrow_mut() = v);
}

impl Linear {
    /// A stand-in with the shape of an `out_dim × in_dim` matrix and no weights, for
    /// inspecting a checkpoint without converting it (`Weights::shapes_only`). Any product
    /// with it fails the kernels' bounds assertions: it must never run.
    pub fn unloaded(out_dim: usize, in_dim: usize) -> Self {
        Self {
            out_dim,
            in_dim,
            dtype: ComputeDType::F32,
            w: AlignedBuf::zeroed(0),
        }
    }

    /// Builds from f32 values laid out (out, in), converting to `dtype`.
    pub fn new(
        values: Vec<f32>,
        out_dim: usize,
        in_dim: usize,
        dtype: ComputeDType,
    ) -> Result<Self> {
        Self::check(values.len(), out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            dtype,
            w: quant::pack_owned(values, out_dim, in_dim, dtype.format()),
        })
    }

    fn check(len: usize, out_dim: usize, in_dim: usize) -> Result<()> {
        if len != out_dim * in_dim {
            bail!("weight has {len} values, expected {out_dim}×{in_dim}");
        }
        if out_dim == 0 || in_dim == 0 {
            bail!("weight has an empty dimension ({out_dim}×{in_dim})");
        }
        Ok(())
    }

    /// As [`Linear::new`], from borrowed values.
    pub fn from_f32(
        values: &[f32],
        out_dim: usize,
        in_dim: usize,
        dtype: ComputeDType,
    ) -> Result<Self> {
        Self::check(values.len(), out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            dtype,
            w: quant::pack(values, out_dim, in_dim, dtype.format()),
        })
    }

    /// Builds from values (out, in) delivered in pieces by `read` (see
    /// [`quant::pack_streamed`]), converting each panel as soon as its rows are in: for
    /// loading large matrices without an f32 copy of the whole.
    pub fn from_streamed(
        out_dim: usize,
        in_dim: usize,
        dtype: ComputeDType,
        read: impl FnOnce(&mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
    ) -> Result<Self> {
        Self::check(out_dim * in_dim, out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            dtype,
            w: quant::pack_streamed(out_dim, in_dim, dtype.format(), read)?,
        })
    }

    /// Builds from values laid out (in, out) — the convention of RWKV's LoRA matrices,
    /// which are used as `x @ W` — by transposing once at load.
    pub fn from_in_out(
        values: Vec<f32>,
        in_dim: usize,
        out_dim: usize,
        dtype: ComputeDType,
    ) -> Result<Self> {
        if values.len() != out_dim * in_dim {
            bail!(
                "weight has {} values, expected {in_dim}×{out_dim}",
                values.len()
            );
        }
        let mut t = vec![0.0f32; values.len()];
        for i in 0..in_dim {
            for o in 0..out_dim {
                t[o * in_dim + i] = values[i * out_dim + o];
            }
        }
        Self::new(t, out_dim, in_dim, dtype)
    }

    pub fn n_params(&self) -> usize {
        self.out_dim * self.in_dim
    }

    /// candle's dtype of the same width as the stored weights (`U8` for the quantized ones).
    pub fn dtype(&self) -> DType {
        self.dtype.candle()
    }

    /// The format the weights are kept in.
    pub fn compute_dtype(&self) -> ComputeDType {
        self.dtype
    }

    /// Bytes of weights one product reads (the packed matrix, scales and padding included).
    pub fn weight_bytes(&self) -> usize {
        self.w.len()
    }

    /// The weights as f32 (out × in), as the kernels see them (after rounding or
    /// quantization): for tests and error measurements.
    pub fn to_f32(&self) -> Vec<f32> {
        let (o_n, i_n) = (self.out_dim, self.in_dim);
        if let Some(kind) = self.dtype.format().quant_kind() {
            return quant::unpack_quant(kind, &self.w, o_n, i_n);
        }
        let mut out = vec![0.0f32; o_n * i_n];
        let mut panel = vec![0.0f32; i_n * NR];
        for p in 0..o_n.div_ceil(NR) {
            let f = self.f32_panel(p, &mut panel);
            for j in 0..NR.min(o_n - p * NR) {
                for i in 0..i_n {
                    out[(p * NR + j) * i_n + i] = f[i * NR + j];
                }
            }
        }
        out
    }

    /// Panel `p` as f32: borrowed for f32 weights, widened into `buf` for 16-bit ones.
    fn f32_panel<'a>(&'a self, p: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let len = self.in_dim * NR;
        let r = p * len..(p + 1) * len;
        match self.dtype {
            ComputeDType::F32 => &self.w.f32s()[r],
            ComputeDType::BF16 => {
                buf.resize(len, 0.0);
                bf16_panel_to_f32(&self.w.u16s()[r], buf);
                buf
            }
            ComputeDType::F16 => {
                buf.resize(len, 0.0);
                f16_panel_to_f32(&self.w.u16s()[r], buf);
                buf
            }
            ComputeDType::Q8_0 | ComputeDType::Q4_0 => {
                unreachable!("quantized panels are not widened")
            }
        }
    }

    /// `x · Wᵀ` for every row of `x`.
    pub fn forward(&self, x: &Mat) -> Result<Mat> {
        if x.cols != self.in_dim {
            bail!(
                "linear: input has {} columns, expected {}",
                x.cols,
                self.in_dim
            );
        }
        let mut out = Mat::zeros(x.rows, self.out_dim);
        if x.rows <= GEMV_MAX_ROWS {
            for t in 0..x.rows {
                self.gemv(x.row(t), out.row_mut(t));
            }
            return Ok(out);
        }
        self.gemm(x, &mut out);
        Ok(out)
    }

    /// The matrix–matrix product into `out` (x.rows × out_dim), parallel over panels.
    fn gemm(&self, x: &Mat, out: &mut Mat) {
        let (rows, k, n_out) = (x.rows, self.in_dim, self.out_dim);
        let n_panels = n_out.div_ceil(NR);
        let y = OutPtr(out.data.as_mut_ptr());
        let serial = rows * k * n_out < SERIAL_MACS;
        if let Some(kind) = self.dtype.format().quant_kind() {
            let nb = quant::q8_blocks(k);
            let pb = nb * kind.block_bytes();
            let mut xq = take_qrows();
            xq.quantize(&x.data, rows, k);
            {
                let xq = &xq;
                let run = |p: usize| {
                    let panel = &self.w.bytes()[p * pb..(p + 1) * pb];
                    // SAFETY: `panel` holds the `nb` blocks of panel p; `xq` holds `rows` rows
                    // of `nb` blocks; the output has `rows` rows of `n_out` columns, of which
                    // this call writes columns p·32 .. p·32 + n_valid only — no other panel's.
                    unsafe {
                        gemm_panel_q(
                            kind,
                            xq,
                            panel.as_ptr(),
                            y.at(p * NR),
                            n_out,
                            (n_out - p * NR).min(NR),
                        )
                    }
                };
                for_panels(n_panels, serial, run);
            }
            put_qrows(xq);
            return;
        }
        // Rows whose stride is a multiple of 4 KiB all fall in the same L1 set, and the
        // kernel reads 12 of them at once: give such inputs a padded stride.
        let mut padded = Vec::new();
        let (xs, ldx) = if (k * 4) % 4096 == 0 {
            padded = take_padded();
            let ld = k + 16;
            padded.clear();
            padded.resize(rows * ld, 0.0);
            for (d, s) in padded.chunks_exact_mut(ld).zip(x.data.chunks_exact(k)) {
                d[..k].copy_from_slice(s);
            }
            (&padded[..], ld)
        } else {
            (&x.data[..], k)
        };
        let run = |p: usize| {
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                let panel = self.f32_panel(p, &mut buf);
                // SAFETY: `xs` has `rows` rows of `k` values at stride `ldx`; `panel` has
                // k × 32 values; the output has `rows` rows of `n_out` columns, of which this
                // call writes columns p·32 .. p·32 + n_valid only — no other panel's.
                unsafe {
                    gemm_panel_f32(
                        xs.as_ptr(),
                        ldx,
                        rows,
                        k,
                        panel.as_ptr(),
                        y.at(p * NR),
                        n_out,
                        (n_out - p * NR).min(NR),
                    )
                }
            })
        };
        for_panels(n_panels, serial, run);
        if !padded.is_empty() {
            put_padded(padded);
        }
    }

    /// One vector: `out[o] = Σ_i W[o,i] · x[i]`, panels of W split across threads.
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        assert!(x.len() >= self.in_dim && out.len() >= self.out_dim);
        let out = &mut out[..self.out_dim];
        let k = self.in_dim;
        let serial = self.w.len() < SERIAL_BYTES;
        // Panels per task: about four tasks per thread, for balance when a core is busy.
        let n_panels = self.out_dim.div_ceil(NR);
        let per = n_panels.div_ceil(4 * pool::threads()).max(1);
        let chunk = per * NR;
        match self.dtype {
            ComputeDType::F32 => {
                let w = self.w.f32s();
                par_chunks_mut(out, chunk, serial, |c, o| {
                    gemv_f32(&w[c * per * k * NR..], k, x, o);
                });
            }
            ComputeDType::BF16 => {
                let w = self.w.u16s();
                par_chunks_mut(out, chunk, serial, |c, o| {
                    gemv_bf16(&w[c * per * k * NR..], k, x, o);
                });
            }
            ComputeDType::F16 => {
                let w = self.w.u16s();
                par_chunks_mut(out, chunk, serial, |c, o| {
                    gemv_f16(&w[c * per * k * NR..], k, x, o);
                });
            }
            ComputeDType::Q8_0 | ComputeDType::Q4_0 => {
                let kind = match self.dtype {
                    ComputeDType::Q4_0 => QuantKind::Q4_0,
                    _ => QuantKind::Q8_0,
                };
                let nb = quant::q8_blocks(k);
                let mut xq = take_qrows();
                xq.quantize(&x[..k], 1, k);
                let w = self.w.bytes();
                par_chunks_mut(out, chunk, serial, |c, o| {
                    gemv_q(kind, &w[c * per * nb * kind.block_bytes()..], nb, &xq, 0, o);
                });
                put_qrows(xq);
            }
        }
    }
}

/// A table of rows read one at a time (an embedding), kept in a weight format: f32, 16-bit,
/// or Q8_0 (blocks of 32 with a bf16 scale, as the matrices; also for Q4_0 models, whose
/// embedding would lose too much at 4 bits). A lookup widens one row to f32.
pub struct RowTable {
    pub rows: usize,
    pub cols: usize,
    data: RowData,
}

enum RowData {
    F32(Vec<f32>),
    BF16(Vec<half::bf16>),
    F16(Vec<half::f16>),
    /// Quantized values (rows × blocks·32) and one scale per block.
    Q8 {
        q: Vec<i8>,
        d: Vec<half::bf16>,
    },
}

impl RowTable {
    /// A stand-in with the shape of a `rows × cols` table and no values, as
    /// [`Linear::unloaded`]; a lookup in it panics.
    pub fn unloaded(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: RowData::F32(Vec::new()),
        }
    }

    /// Builds from values (rows × cols, row-major) delivered in runs by `read`, as
    /// [`Linear::from_streamed`]: converted as they come, never held whole in f32.
    pub fn from_streamed(
        rows: usize,
        cols: usize,
        dtype: ComputeDType,
        read: impl FnOnce(&mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
    ) -> Result<Self> {
        let total = rows * cols;
        let nb = quant::q8_blocks(cols);
        let mut data = match dtype {
            ComputeDType::F32 => RowData::F32(Vec::with_capacity(total)),
            ComputeDType::BF16 => RowData::BF16(Vec::with_capacity(total)),
            ComputeDType::F16 => RowData::F16(Vec::with_capacity(total)),
            ComputeDType::Q8_0 | ComputeDType::Q4_0 => RowData::Q8 {
                q: Vec::with_capacity(rows * nb * quant::QK),
                d: Vec::with_capacity(rows * nb),
            },
        };
        let mut row = Vec::with_capacity(cols);
        let mut next = 0usize;
        read(&mut |start: usize, values: &[f32]| -> Result<()> {
            if start != next || start + values.len() > total {
                bail!("table delivered out of order at {start} of {total}");
            }
            next += values.len();
            match &mut data {
                RowData::F32(v) => v.extend_from_slice(values),
                RowData::BF16(v) => v.extend(values.iter().map(|&x| half::bf16::from_f32(x))),
                RowData::F16(v) => v.extend(values.iter().map(|&x| half::f16::from_f32(x))),
                RowData::Q8 { q, d } => {
                    for &x in values {
                        row.push(x);
                        if row.len() == cols {
                            for b in row.chunks(quant::QK) {
                                let (s, qs) = quant::quantize_block_q8_0(b);
                                d.push(s);
                                q.extend_from_slice(&qs);
                            }
                            row.clear();
                        }
                    }
                }
            }
            Ok(())
        })?;
        if next != total {
            bail!("table delivered {next} of {total} values");
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `r` widened to f32 into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let out = &mut out[..c];
        match &self.data {
            RowData::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            RowData::BF16(v) => {
                for (o, x) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = x.to_f32();
                }
            }
            RowData::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = x.to_f32();
                }
            }
            RowData::Q8 { q, d } => {
                let nb = quant::q8_blocks(c);
                for (b, o) in out.chunks_mut(quant::QK).enumerate() {
                    let s = d[r * nb + b].to_f32();
                    let qs = &q[(r * nb + b) * quant::QK..];
                    for (x, v) in o.iter_mut().zip(qs) {
                        *x = *v as f32 * s;
                    }
                }
            }
        }
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        match &self.data {
            RowData::F32(v) => v.len() * 4,
            RowData::BF16(v) => v.len() * 2,
            RowData::F16(v) => v.len() * 2,
            RowData::Q8 { q, d } => q.len() + d.len() * 2,
        }
    }
}

/// Runs `f(p)` for every panel, on the pool unless `serial`.
fn for_panels(n_panels: usize, serial: bool, f: impl Fn(usize) + Sync) {
    if serial {
        (0..n_panels).for_each(f);
    } else {
        pool::run(n_panels, &f);
    }
}

/// A raw pointer to the start of a slice whose chunks several threads write, one each.
struct ChunkPtr<T>(*mut T);
// SAFETY: only used by `par_chunks_mut`, whose tasks write disjoint chunks of a slice that is
// borrowed mutably for the whole call.
unsafe impl<T: Send> Send for ChunkPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ChunkPtr<T> {}

/// `f(index, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), on the
/// pool unless `serial`.
pub fn par_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    serial: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let n = data.len().div_ceil(chunk);
    if serial || n <= 1 {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let len = data.len();
    let base = ChunkPtr(data.as_mut_ptr());
    let base = &base;
    pool::run(n, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: `start..end` lies within `data` (i < n = ⌈len / chunk⌉), each index `i` is
        // run exactly once, so the chunks handed out are disjoint, and `data` stays mutably
        // borrowed until `pool::run` returns, after every task has finished.
        let c = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(i, c);
    });
}

pub use crate::kernels::dot_f32 as dot;
use crate::kernels::{
    bf16_panel_to_f32, f16_panel_to_f32, gemm_panel_f32, gemm_panel_q, gemv_bf16, gemv_f16,
    gemv_f32, gemv_q, AlignedBuf, QuantKind, QuantizedRows, NR,
};
use crate::quant;

/// Runs a per-head recurrence with the heads in parallel.
///
/// `state` holds `n_head` blocks of `n × n`; `f(h, state_h, out_h)` steps head `h` through all
/// `t_count` tokens, writing its outputs to `out_h` (`t_count × n`). Returns the outputs
/// assembled as a `t_count × (n_head · n)` matrix.
pub fn per_head<F>(state: &mut [f32], n_head: usize, n: usize, t_count: usize, f: F) -> Mat
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let mut per_head = vec![0.0f32; n_head * t_count * n];
    let st = ChunkPtr(state.as_mut_ptr());
    let st = &st;
    assert!(state.len() >= n_head * n * n);
    par_chunks_mut(&mut per_head, t_count * n, false, |h, out_h| {
        // SAFETY: head h's state block `h·n² .. (h+1)·n²` lies within `state` (asserted
        // above); each head index is run exactly once, so the blocks are disjoint, and `state`
        // stays mutably borrowed until `par_chunks_mut` returns.
        let s = unsafe { std::slice::from_raw_parts_mut(st.0.add(h * n * n), n * n) };
        f(h, s, out_h)
    });
    let mut out = Mat::zeros(t_count, n_head * n);
    for h in 0..n_head {
        for t in 0..t_count {
            out.row_mut(t)[h * n..(h + 1) * n]
                .copy_from_slice(&per_head[(h * t_count + t) * n..(h * t_count + t + 1) * n]);
        }
    }
    out
}

/// The RWKV-7 recurrence ("generalised delta rule") over a chunk, heads in parallel.
///
/// `state` holds `n_head` blocks of `n × n` in the official layout (row i = value channel,
/// column j = key channel); `r, w, k, v, kk, a` are `t × (n_head·n)`: receptance, decay,
/// key, value, the normalised removal key κ̂ and the in-context learning rate. Per head and
/// token, with `sa = S·κ̂`:
///
/// ```text
/// S ← S·diag(w) − sa·(κ̂ ⊙ a)ᵀ + v·kᵀ        out = S·r
/// ```
///
/// Each head's state is transposed into a per-thread buffer for the chunk, so that the
/// kernel ([`crate::kernels::wkv7_token`]) runs on whole 16-lane vectors with no horizontal
/// sums, and transposed back at the end.
#[allow(clippy::too_many_arguments)]
pub fn wkv7(
    state: &mut [f32],
    n_head: usize,
    n: usize,
    r: &Mat,
    w: &Mat,
    k: &Mat,
    v: &Mat,
    kk: &Mat,
    a: &Mat,
) -> Mat {
    let t_count = r.rows;
    per_head(state, n_head, n, t_count, |h, st, out_h| {
        WKV_T.with(|buf| {
            let mut s_t = buf.borrow_mut();
            s_t.resize(n * n, 0.0);
            for i in 0..n {
                for j in 0..n {
                    s_t[j * n + i] = st[i * n + j];
                }
            }
            let hs = h * n..(h + 1) * n;
            for t in 0..t_count {
                crate::kernels::wkv7_token(
                    &mut s_t,
                    n,
                    &r.row(t)[hs.clone()],
                    &w.row(t)[hs.clone()],
                    &k.row(t)[hs.clone()],
                    &v.row(t)[hs.clone()],
                    &kk.row(t)[hs.clone()],
                    &a.row(t)[hs.clone()],
                    &mut out_h[t * n..(t + 1) * n],
                );
            }
            for i in 0..n {
                for j in 0..n {
                    st[i * n + j] = s_t[j * n + i];
                }
            }
        })
    })
}

/// Elementwise work on more values than this is spread over the pool, by rows.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Rows per task for row-parallel elementwise work on `x`, or `None` to run serially.
fn row_tasks(rows: usize, cols: usize) -> Option<usize> {
    (rows > 1 && rows * cols >= PARALLEL_ELEMENTS).then(|| rows.div_ceil(4 * pool::threads()))
}

/// `f(row)` for every row of `data` (`cols` long each), in parallel for large matrices.
fn for_rows(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / cols.max(1);
    match row_tasks(rows, cols) {
        Some(per) => par_chunks_mut(data, per * cols, false, |c, block| {
            for (i, row) in block.chunks_exact_mut(cols).enumerate() {
                f(c * per + i, row);
            }
        }),
        None => {
            for (i, row) in data.chunks_exact_mut(cols.max(1)).enumerate() {
                f(i, row);
            }
        }
    }
}

/// LayerNorm over each row (eps 1e-5, as torch's default used by RWKV).
pub fn layer_norm(x: &Mat, weight: &[f32], bias: &[f32]) -> Mat {
    let mut out = x.clone();
    for_rows(&mut out.data, x.cols, |_, row| {
        layer_norm_row(row, weight, bias, 1e-5)
    });
    out
}

/// `Σ x` with 16 independent partial sums (vectorisable, unlike a plain running sum).
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Normalises one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm_row(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum16(x, |v| v) / n;
    let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// GroupNorm with `groups` equal groups per row (RWKV's `ln_x`, one group per head).
pub fn group_norm(x: &mut Mat, groups: usize, weight: &[f32], bias: &[f32], eps: f32) {
    let g = x.cols / groups;
    let cols = x.cols;
    for_rows(&mut x.data, cols, |_, row| {
        for h in 0..groups {
            let r = h * g..(h + 1) * g;
            layer_norm_row(&mut row[r.clone()], &weight[r.clone()], &bias[r], eps);
        }
    });
}

/// The previous token's row for each row of `x`: row 0 comes from `prev` (the state),
/// row t from `x[t-1]`. Afterwards `prev` holds the last row of `x`.
pub fn token_shift(x: &Mat, prev: &mut [f32]) -> Mat {
    let c = x.cols;
    let mut out = Mat::zeros(x.rows, c);
    out.row_mut(0).copy_from_slice(prev);
    out.data[c..].copy_from_slice(&x.data[..(x.rows - 1) * c]);
    prev.copy_from_slice(x.last_row());
    out
}

/// `x + (prev - x) * mix` per channel (RWKV's token-shift interpolation in its v6/v7 form;
/// v4/v5's `x*mix + prev*(1-mix)` is the same with `mix` replaced by `1 - mix`).
pub fn lerp(x: &Mat, prev: &Mat, mix: &[f32]) -> Mat {
    let mut out = x.clone();
    for_rows(&mut out.data, x.cols, |t, row| {
        for ((o, pv), m) in row.iter_mut().zip(prev.row(t)).zip(mix) {
            *o += (pv - *o) * m;
        }
    });
    out
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x · sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// Adds a per-channel vector to every row.
pub fn add_row(mut x: Mat, v: &[f32]) -> Mat {
    for t in 0..x.rows {
        for (a, b) in x.row_mut(t).iter_mut().zip(v) {
            *a += b;
        }
    }
    x
}

/// A small fork–join pool for the products and recurrences of one token or one chunk.
///
/// The decode path makes about fifteen parallel calls per layer, each a few tens of
/// microseconds long, from the main thread. Handing each to rayon from outside its pool costs
/// a mutex, a condition variable and a wake-up per call (a third of the decode time in the
/// profiles here). Here the calling thread takes part in the work, tasks are claimed from one
/// atomic word, and idle workers wait for the next call for a short while (long enough to
/// bridge the gap between two calls of a token) before they park: first spinning, then
/// yielding their core between checks — on a machine shared with other processes (Linux
/// shares CPU time between sessions, whatever their nice values) a spinning worker would take
/// time from its own caller. A guard runs calls serially for a while when workers keep the
/// caller waiting (they were descheduled with work in hand).
pub mod pool {
    use std::cell::Cell;
    use std::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
    };
    use std::sync::{Mutex, OnceLock};
    use std::thread::Thread;
    use std::time::{Duration, Instant};

    /// Waiting for workers this much longer than the caller's own share took is a strike;
    /// `STRIKES` in a row bench the pool for `BENCHED_CALLS` calls.
    const STRAGGLER_SLACK: Duration = Duration::from_micros(200);
    const STRIKES: u32 = 3;
    const BENCHED_CALLS: u32 = 4096;
    /// Busy-wait rounds before an idle worker starts yielding its core between checks.
    const PURE_SPINS: u32 = 4096;
    /// How long an idle worker spins before it parks.
    const SPIN: Duration = Duration::from_micros(500);
    /// Tasks per call at most (the task index has 20 bits of the state word).
    const MAX_TASKS: usize = (1 << 20) - 1;

    /// The state word: generation (24 bits) | task count (20 bits) | next task (20 bits).
    fn pack(gen: u64, n: usize, next: usize) -> u64 {
        (gen << 40) | ((n as u64) << 20) | next as u64
    }
    fn unpack(s: u64) -> (u64, usize, usize) {
        (
            s >> 40,
            ((s >> 20) & 0xF_FFFF) as usize,
            (s & 0xF_FFFF) as usize,
        )
    }

    /// The job of the current generation, on the stack of the thread that posted it.
    struct Job<'a> {
        f: &'a (dyn Fn(usize) + Sync),
    }

    struct Pool {
        state: AtomicU64,
        job: AtomicPtr<()>,
        done: AtomicUsize,
        panicked: AtomicBool,
        sleeping: Vec<AtomicBool>,
        /// Handles to unpark the workers (set once they are started).
        threads: OnceLock<Vec<Thread>>,
        /// One job at a time; a second caller runs its tasks itself.
        post: Mutex<()>,
        /// Consecutive calls that waited on a straggler, and calls left to run serially.
        strikes: AtomicU32,
        benched: AtomicU32,
    }

    thread_local! {
        /// Set on pool workers and on a thread while it runs a job: nested calls run serially.
        static INSIDE: Cell<bool> = const { Cell::new(false) };
    }

    fn pool() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            // As many threads as the rayon pool (`--threads`), the caller being one of them.
            let n = rayon::current_num_threads().max(1) - 1;
            let p: &'static Pool = Box::leak(Box::new(Pool {
                state: AtomicU64::new(0),
                job: AtomicPtr::new(std::ptr::null_mut()),
                done: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
                threads: OnceLock::new(),
                post: Mutex::new(()),
                strikes: AtomicU32::new(0),
                benched: AtomicU32::new(0),
            }));
            let threads = (0..n)
                .map_while(|i| {
                    std::thread::Builder::new()
                        .name(format!("rwkv-worker-{i}"))
                        .spawn(move || worker(p, i))
                        .ok()
                        .map(|h| h.thread().clone())
                })
                .collect::<Vec<_>>();
            let _ = p.threads.set(threads);
            p
        })
    }

    fn worker(p: &'static Pool, me: usize) {
        INSIDE.with(|c| c.set(true));
        let mut seen = 0u64;
        loop {
            let start = Instant::now();
            let mut spins = 0u32;
            loop {
                let (gen, _, _) = unpack(p.state.load(Acquire));
                if gen != seen {
                    seen = gen;
                    break;
                }
                spins += 1;
                if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                    p.sleeping[me].store(true, SeqCst);
                    if unpack(p.state.load(SeqCst)).0 == seen {
                        std::thread::park();
                    }
                    p.sleeping[me].store(false, SeqCst);
                    continue;
                }
                if spins > PURE_SPINS {
                    // Give the core to a runnable thread of ours (or anyone's) if there is one.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            run_tasks(p, seen);
        }
    }

    /// Claims and runs tasks of generation `gen` until none is left.
    fn run_tasks(p: &Pool, gen: u64) {
        loop {
            let s = p.state.load(Acquire);
            let (g, n, next) = unpack(s);
            if g != gen || next >= n {
                return;
            }
            if p.state
                .compare_exchange_weak(s, s + 1, AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            // SAFETY: the claim succeeded, so generation `gen` is still current and task
            // `next` of it not yet done: its poster is still waiting in `run` (it returns only
            // once `done` counts every task), so the `Job` on its stack is alive.
            let job = unsafe { &*(p.job.load(Acquire) as *const Job) };
            let f = job.f;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next))).is_err() {
                p.panicked.store(true, Release);
            }
            p.done.fetch_add(1, AcqRel);
        }
    }

    /// Threads that run a job: the workers and the caller.
    pub fn threads() -> usize {
        pool().sleeping.len() + 1
    }

    /// Runs `f(i)` for every `i < n`, spread over the pool's threads and the caller.
    pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
        let serial = || (0..n).for_each(f);
        if n <= 1 || n > MAX_TASKS || INSIDE.with(|c| c.get()) {
            return serial();
        }
        let p = pool();
        let threads = match p.threads.get() {
            Some(t) if !t.is_empty() => t,
            _ => return serial(),
        };
        // Straggler guard: while the pool is benched (see below), run serially.
        if p.benched
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
            .is_ok()
        {
            return serial();
        }
        let _posting = match p.post.try_lock() {
            Ok(g) => g,
            // A task panicked while this lock was held; the pool itself is intact.
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return serial(),
        };
        let started = Instant::now();
        let job = Job { f };
        p.done.store(0, Relaxed);
        p.panicked.store(false, Relaxed);
        p.job.store(&job as *const Job as *mut (), Release);
        let gen = ((unpack(p.state.load(Relaxed)).0 + 1) & 0xFF_FFFF).max(1);
        p.state.store(pack(gen, n, 0), SeqCst);
        for (s, th) in p.sleeping.iter().zip(threads) {
            if s.load(SeqCst) {
                th.unpark();
            }
        }
        INSIDE.with(|c| c.set(true));
        run_tasks(p, gen);
        INSIDE.with(|c| c.set(false));
        let own = started.elapsed();
        let mut spins = 0u32;
        while p.done.load(Acquire) < n {
            spins += 1;
            if spins > 1 << 14 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // A worker that claimed a task and was then descheduled (another process wanting the
        // core) keeps the caller waiting for a whole time slice. When waiting takes longer than
        // the work itself several calls in a row, the cores are not ours: run serially for a
        // while (each call is then as fast as on one thread), then try again.
        let waited = started.elapsed() - own;
        if waited > 2 * own + STRAGGLER_SLACK {
            if p.strikes.fetch_add(1, Relaxed) + 1 >= STRIKES {
                p.strikes.store(0, Relaxed);
                p.benched.store(BENCHED_CALLS, Relaxed);
            }
        } else {
            p.strikes.store(0, Relaxed);
        }
        if p.panicked.load(Acquire) {
            panic!("a worker thread panicked in a parallel kernel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &Mat, w: &[f32], out_dim: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.rows * out_dim];
        for t in 0..x.rows {
            for o in 0..out_dim {
                y[t * out_dim + o] = (0..x.cols).map(|i| x.row(t)[i] * w[o * x.cols + i]).sum();
            }
        }
        y
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn gemv_and_gemm_match_naive_product() {
        let (inp, out) = (70, 45);
        let w = pseudo(inp * out, 1);
        let lin = Linear::new(w.clone(), out, inp, ComputeDType::F32).unwrap();
        for rows in [1, 2, 3, 9] {
            let x = Mat::from_vec(rows, inp, pseudo(rows * inp, rows as u32 + 7));
            let y = lin.forward(&x).unwrap();
            let r = naive(&x, &w, out);
            for (a, b) in y.data.iter().zip(&r) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b} at rows={rows}");
            }
        }
    }

    #[test]
    fn every_format_matches_the_naive_product_of_its_own_weights() {
        let formats = [
            ComputeDType::F32,
            ComputeDType::BF16,
            ComputeDType::F16,
            ComputeDType::Q8_0,
            ComputeDType::Q4_0,
        ];
        for (inp, out) in [(70, 45), (32, 32), (768, 33), (5, 100), (100, 1), (64, 96)] {
            let w = pseudo(inp * out, (inp * 31 + out) as u32);
            for dt in formats {
                let lin = Linear::new(w.clone(), out, inp, dt).unwrap();
                let wq = lin.to_f32();
                assert_eq!(wq.len(), w.len());
                for rows in [1, 2, 3, 7, 12, 13, 30] {
                    let x = Mat::from_vec(rows, inp, pseudo(rows * inp, rows as u32 + 7));
                    let y = lin.forward(&x).unwrap();
                    let r = naive(&x, &wq, out);
                    for t in 0..rows {
                        for o in 0..out {
                            let (a, b) = (y.data[t * out + o], r[t * out + o]);
                            // Q8_0 also rounds the activations to 8 bits per block of 32.
                            let mag: f32 = (0..inp)
                                .map(|i| (x.row(t)[i] * wq[o * inp + i]).abs())
                                .sum();
                            // Each activation moves by at most half a step: max|x| / 254.
                            let xmax = x.row(t).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            let wsum: f32 = (0..inp).map(|i| wq[o * inp + i].abs()).sum();
                            let tol = if dt.is_quantized() {
                                wsum * xmax / 254.0 + 1e-5
                            } else {
                                1e-5 * (1.0 + mag)
                            };
                            assert!(
                                (a - b).abs() <= tol,
                                "{dt:?} {out}x{inp} rows={rows} t={t} o={o}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_tables_give_back_their_rows_in_every_format() {
        let (rows, cols) = (9, 70);
        let w = pseudo(rows * cols, 12);
        for (dt, tol) in [
            (ComputeDType::F32, 0.0),
            (ComputeDType::BF16, 1.0 / 256.0),
            (ComputeDType::F16, 1.0 / 2048.0),
            (ComputeDType::Q8_0, 1.0 / 127.0),
            (ComputeDType::Q4_0, 1.0 / 127.0),
        ] {
            let t = RowTable::from_streamed(rows, cols, dt, |sink| {
                for (i, c) in w.chunks(13).enumerate() {
                    sink(i * 13, c)?;
                }
                Ok(())
            })
            .unwrap();
            let mut out = vec![0.0; cols];
            for r in 0..rows {
                t.row_into(r, &mut out);
                for (a, b) in out.iter().zip(&w[r * cols..]) {
                    // 0.5 is the largest magnitude of the values.
                    assert!((a - b).abs() <= tol * 0.5 + 1e-7, "{dt:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn wkv7_matches_the_row_by_row_recurrence() {
        for (n_head, n, t_count) in [(2, 16, 5), (3, 64, 7), (1, 8, 3)] {
            let c = n_head * n;
            let m = |seed| Mat::from_vec(t_count, c, pseudo(t_count * c, seed));
            let (r, k, v, kk) = (m(1), m(2), m(3), m(4));
            let w = m(5).map(|x| 0.6 + 0.7 * x.abs());
            let a = m(6).map(|x| 0.5 + x);
            let init = pseudo(n_head * n * n, 7);
            let mut s1 = init.clone();
            let out = wkv7(&mut s1, n_head, n, &r, &w, &k, &v, &kk, &a);
            // The official formulation, one state row (value channel) at a time.
            let mut s2 = init;
            let mut expect = Mat::zeros(t_count, c);
            for h in 0..n_head {
                let st = &mut s2[h * n * n..(h + 1) * n * n];
                let hs = h * n..(h + 1) * n;
                for t in 0..t_count {
                    let (rh, wh, kh) = (
                        &r.row(t)[hs.clone()],
                        &w.row(t)[hs.clone()],
                        &k.row(t)[hs.clone()],
                    );
                    let (vh, kkh, ah) = (
                        &v.row(t)[hs.clone()],
                        &kk.row(t)[hs.clone()],
                        &a.row(t)[hs.clone()],
                    );
                    for i in 0..n {
                        let row = &mut st[i * n..(i + 1) * n];
                        let sa: f32 = -(0..n).map(|j| row[j] * kkh[j]).sum::<f32>();
                        for j in 0..n {
                            row[j] = row[j] * wh[j] + sa * kkh[j] * ah[j] + vh[i] * kh[j];
                        }
                        expect.row_mut(t)[h * n + i] = (0..n).map(|j| row[j] * rh[j]).sum();
                    }
                }
            }
            for (x, y) in out.data.iter().zip(&expect.data) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
            for (x, y) in s1.iter().zip(&s2) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "state {x} vs {y}");
            }
        }
    }

    #[test]
    fn weight_bytes_reflect_the_format() {
        let w = pseudo(64 * 64, 5);
        let b = |dt| Linear::new(w.clone(), 64, 64, dt).unwrap().weight_bytes();
        assert_eq!(b(ComputeDType::F32), 64 * 64 * 4);
        assert_eq!(b(ComputeDType::BF16), 64 * 64 * 2);
        assert_eq!(b(ComputeDType::F16), 64 * 64 * 2);
        assert_eq!(b(ComputeDType::Q8_0), 64 * 64 * 17 / 16);
        assert_eq!(b(ComputeDType::Q4_0), 64 * 64 * 9 / 16);
    }

    #[test]
    fn half_precision_weights_are_close_to_f32() {
        let (inp, out) = (64, 33);
        let w = pseudo(inp * out, 3);
        let x = Mat::from_vec(3, inp, pseudo(3 * inp, 4));
        let r = naive(&x, &w, out);
        for dt in [ComputeDType::F16, ComputeDType::BF16] {
            let lin = Linear::new(w.clone(), out, inp, dt).unwrap();
            for rows in [1, 3] {
                let xr = Mat::from_vec(rows, inp, x.data[..rows * inp].to_vec());
                let y = lin.forward(&xr).unwrap();
                for (a, b) in y.data.iter().zip(&r) {
                    assert!((a - b).abs() < 2e-2, "{dt:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn lora_transpose_is_applied_as_x_times_w() {
        // W stored (in=2, out=3) used as x @ W.
        let w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let lin = Linear::from_in_out(w, 2, 3, ComputeDType::F32).unwrap();
        let y = lin.forward(&Mat::from_vec(1, 2, vec![1.0, 10.0])).unwrap();
        assert_eq!(y.data, vec![41.0, 52.0, 63.0]);
    }

    #[test]
    fn token_shift_uses_state_then_previous_rows() {
        let x = Mat::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut prev = vec![9.0, 9.0];
        let s = token_shift(&x, &mut prev);
        assert_eq!(s.data, vec![9.0, 9.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(prev, vec![5.0, 6.0]);
    }

    #[test]
    fn group_norm_normalises_each_group() {
        let mut x = Mat::from_vec(1, 4, vec![1.0, 3.0, 10.0, 20.0]);
        group_norm(&mut x, 2, &[1.0; 4], &[0.0; 4], 0.0);
        for v in &x.data {
            assert!((v.abs() - 1.0).abs() < 1e-5);
        }
    }
}
