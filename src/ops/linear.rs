//! [`Linear`], a weight matrix packed in a [`Format`], and [`RowTable`], an embedding. Both
//! consult the format's row of the traits table ([`crate::format`]) for how to pack, unpack
//! and multiply; neither matches on a format.

use super::pool::{self, for_panels, par_chunks_mut};
use super::Mat;
use crate::format::{self, Format, Kernel};
use crate::kernels::{self, gemm_panel_f32, AlignedBuf, QuantizedRows, NR};
use anyhow::{bail, Result};

/// A weight matrix `W` of shape (out, in), applied as `y = x · Wᵀ`.
///
/// The weights are packed once, at construction, into panels of 32 output rows in the chosen
/// format (see [`crate::kernels::layout`]); every product reads them in that form. Up to the
/// format's `gemv_max_rows` token rows (see [`crate::format::Traits`]) go through the
/// matrix–vector kernels (the decode path, bound by memory bandwidth); more rows through a register-tiled matrix–matrix kernel that keeps a panel in
/// cache while it runs over all rows (bf16 panels are read as they are by the bf16
/// dot-product kernel where the CPU has one, the activations rounded to bf16 once per call;
/// otherwise 16-bit panels are widened to f32 once per panel and call, in a per-thread
/// buffer; Q8_0 and Q4_0 multiply in 8-bit integers). Both are multi-threaded over panels.
pub struct Linear {
    pub out_dim: usize,
    pub in_dim: usize,
    format: Format,
    w: AlignedBuf,
}

/// Products that read fewer weight bytes than this run on the calling thread: handing work
/// to the pool costs more than it saves.
const SERIAL_BYTES: usize = 96 * 1024;

/// A matrix–vector product is split into tasks of at least this many bytes of weights.
const GEMV_TASK_BYTES: usize = 256 * 1024;

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
// SAFETY: the pointer is only dereferenced inside `Linear::forward` and `forward_all`, where
// each thread writes a disjoint set of columns of an output while the owning `Mat` is borrowed
// mutably by (or owned by) that call and outlives every thread's work.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread f32 copy of one 16-bit panel, for the matrix–matrix kernel.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread copy of a matrix–matrix product's input at a padded row stride.
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread activations rounded to bf16, for the bf16 dot-product kernel.
    static BF16_ROWS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread quantized activations, for the Q8_0 and Q4_0 kernels.
    static QROWS: std::cell::RefCell<QuantizedRows> = std::cell::RefCell::new(QuantizedRows::default());
    /// Per-thread quantized inputs of [`forward_all`].
    static QROWS_ALL: std::cell::RefCell<Vec<QuantizedRows>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's activation-quantization buffer, taken out of its slot so that a nested
/// product on the same thread (work stealing) finds the slot empty rather than borrowed.
fn take_qrows() -> QuantizedRows {
    QROWS.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

fn put_qrows(xq: QuantizedRows) {
    QROWS.with(|q| *q.borrow_mut() = xq);
}

/// This thread's quantized inputs of [`forward_all`], one per product (taken out, as above).
fn take_qrows_all() -> Vec<QuantizedRows> {
    QROWS_ALL.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

fn put_qrows_all(xqs: Vec<QuantizedRows>) {
    QROWS_ALL.with(|q| *q.borrow_mut() = xqs);
}

/// This thread's buffer for activations rounded to bf16 (taken out, as above).
fn take_bf16_rows() -> Vec<u16> {
    BF16_ROWS.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

fn put_bf16_rows(v: Vec<u16>) {
    BF16_ROWS.with(|q| *q.borrow_mut() = v);
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
            format: Format::F32,
            w: AlignedBuf::zeroed(0),
        }
    }

    /// Builds from f32 values laid out (out, in), converting to `format`.
    pub fn new(values: Vec<f32>, out_dim: usize, in_dim: usize, format: Format) -> Result<Self> {
        Self::check(values.len(), out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            format,
            w: format::pack_owned(values, out_dim, in_dim, format),
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
    pub fn from_f32(values: &[f32], out_dim: usize, in_dim: usize, format: Format) -> Result<Self> {
        Self::check(values.len(), out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            format,
            w: format::pack(values, out_dim, in_dim, format),
        })
    }

    /// Builds from values (out, in) delivered in pieces by `read` (see
    /// [`format::pack_streamed`]), converting each panel as soon as its rows are in: for
    /// loading large matrices without an f32 copy of the whole.
    pub fn from_streamed(
        out_dim: usize,
        in_dim: usize,
        format: Format,
        read: impl FnOnce(&mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
    ) -> Result<Self> {
        Self::check(out_dim * in_dim, out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            format,
            w: format::pack_streamed(out_dim, in_dim, format, read)?,
        })
    }

    /// Builds from values (out, in) that `read` reaches in any order (a memory-mapped
    /// checkpoint), packing the panels on all threads (see [`format::pack_at`]): the same
    /// bytes as [`Linear::from_streamed`], without an f32 copy of the whole.
    pub fn from_values(
        out_dim: usize,
        in_dim: usize,
        format: Format,
        read: format::ReadAt<'_>,
    ) -> Result<Self> {
        let w = AlignedBuf::zeroed(format.matrix_bytes(out_dim, in_dim));
        Self::from_values_in(w, out_dim, in_dim, format, read)
    }

    /// As [`Linear::from_values`], packed into `w`: zero bytes of exactly the packed size (a
    /// region of the weight cache file being written, so the panels are written once).
    pub fn from_values_in(
        w: AlignedBuf,
        out_dim: usize,
        in_dim: usize,
        format: Format,
        read: format::ReadAt<'_>,
    ) -> Result<Self> {
        Self::check(out_dim * in_dim, out_dim, in_dim)?;
        Ok(Self {
            out_dim,
            in_dim,
            format,
            w: format::pack_at_in(w, out_dim, in_dim, format, read)?,
        })
    }

    /// Builds from values laid out (in, out) — the convention of RWKV's LoRA matrices,
    /// which are used as `x @ W` — by transposing once at load.
    pub fn from_in_out(
        values: Vec<f32>,
        in_dim: usize,
        out_dim: usize,
        format: Format,
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
        Self::new(t, out_dim, in_dim, format)
    }

    /// Builds from panels already packed in `format` (as [`Linear::packed`] gives them: the
    /// weight cache's), which must be exactly the size such a matrix packs to.
    pub fn from_packed(
        out_dim: usize,
        in_dim: usize,
        format: Format,
        w: AlignedBuf,
    ) -> Result<Self> {
        Self::check(out_dim * in_dim, out_dim, in_dim)?;
        if w.len() != format.matrix_bytes(out_dim, in_dim) {
            bail!(
                "packed weight has {} bytes, expected {} for {out_dim}×{in_dim} in {}",
                w.len(),
                format.matrix_bytes(out_dim, in_dim),
                format.name()
            );
        }
        Ok(Self {
            out_dim,
            in_dim,
            format,
            w,
        })
    }

    /// The packed panels, as the kernels read them.
    pub fn packed(&self) -> &AlignedBuf {
        &self.w
    }

    pub fn n_params(&self) -> usize {
        self.out_dim * self.in_dim
    }

    /// The format the weights are kept in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes of weights one product reads (the packed matrix, scales and padding included).
    pub fn weight_bytes(&self) -> usize {
        self.w.len()
    }

    /// The weights as f32 (out × in), as the kernels see them (after rounding or
    /// quantization): for tests and error measurements.
    pub fn to_f32(&self) -> Vec<f32> {
        format::unpack(&self.w, self.out_dim, self.in_dim, self.format)
    }

    /// `x · Wᵀ` for every row of `x`.
    pub fn forward(&self, x: &Mat) -> Result<Mat> {
        self.check_input(x)?;
        let mut out = Mat::zeros(x.rows, self.out_dim);
        if x.rows <= self.format.traits().gemv_max_rows {
            for t in 0..x.rows {
                self.gemv(x.row(t), out.row_mut(t));
            }
            return Ok(out);
        }
        self.gemm(x, &mut out);
        Ok(out)
    }

    fn check_input(&self, x: &Mat) -> Result<()> {
        if x.cols != self.in_dim {
            bail!(
                "linear: input has {} columns, expected {}",
                x.cols,
                self.in_dim
            );
        }
        Ok(())
    }

    /// The matrix–matrix product into `out` (x.rows × out_dim), parallel over panels.
    fn gemm(&self, x: &Mat, out: &mut Mat) {
        let (rows, k, n_out) = (x.rows, self.in_dim, self.out_dim);
        let n_panels = n_out.div_ceil(NR);
        let y = OutPtr(out.data.as_mut_ptr());
        let serial = rows * k * n_out < SERIAL_MACS;
        let traits = self.format.traits();
        let (in_place, wide) = match traits.kernel {
            Kernel::Int8 { gemm_panel, .. } => {
                let pb = self.format.panel_bytes(k);
                let mut xq = take_qrows();
                xq.quantize(&x.data, rows, k);
                {
                    let xq = &xq;
                    let run = |p: usize| {
                        let panel = &self.w.bytes()[p * pb..(p + 1) * pb];
                        // SAFETY: `panel` holds the blocks of panel p in this format, as
                        // `gemm_panel` reads them; `xq` holds `rows` rows of as many blocks; the
                        // output has `rows` rows of `n_out` columns, of which this call writes
                        // columns p·32 .. p·32 + n_valid only — no other panel's.
                        unsafe {
                            gemm_panel(
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
            Kernel::Float { bf16_dot: true, .. } if kernels::has_bf16_dot() => {
                self.gemm_bf16_dot(x, y, serial);
                return;
            }
            Kernel::Float { in_place, wide, .. } => {
                (in_place, wide.filter(|&h| kernels::has_wide_gemm(h)))
            }
        };
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
        let len = k * NR;
        let run = |p: usize| {
            if let Some(h) = wide {
                // SAFETY: as below, with the 16-bit panel p as packed (k × 32 values) and the
                // widening kernel for its kind present (checked with `wide`).
                return unsafe {
                    kernels::gemm_panel_wide(
                        h,
                        xs.as_ptr(),
                        ldx,
                        rows,
                        k,
                        self.w.u16s()[p * len..(p + 1) * len].as_ptr(),
                        y.at(p * NR),
                        n_out,
                        (n_out - p * NR).min(NR),
                    )
                };
            }
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                // Panel p as f32: borrowed for f32 weights, widened into `buf` for the others.
                let panel = if in_place {
                    &self.w.f32s()[p * len..(p + 1) * len]
                } else {
                    buf.resize(len, 0.0);
                    (traits.unpack_panel)(&self.w, p, k, &mut buf);
                    &buf[..]
                };
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

    /// The matrix–matrix product of bf16 panels with the bf16 dot-product kernel: the input
    /// rounded to bf16 once (at a row stride that is even and, as for f32 inputs, not a
    /// multiple of 4 KiB), then every panel as packed against all its rows.
    fn gemm_bf16_dot(&self, x: &Mat, y: OutPtr, serial: bool) {
        let (rows, k, n_out) = (x.rows, self.in_dim, self.out_dim);
        let mut ld = k.next_multiple_of(2);
        if (ld * 2) % 4096 == 0 {
            ld += 32;
        }
        let mut xb = take_bf16_rows();
        xb.resize(rows * ld, 0);
        // Rounded on every thread, in blocks of rows.
        let per = rows.div_ceil(4 * pool::threads()).max(1);
        par_chunks_mut(&mut xb[..rows * ld], per * ld, serial, |c, o| {
            kernels::round_rows_to_bf16(&x.data[c * per * k..], k, ld, o)
        });
        let len = k * NR;
        {
            let xb = &xb;
            let run = |p: usize| {
                let panel = &self.w.u16s()[p * len..(p + 1) * len];
                // SAFETY: `kernels::has_bf16_dot()` held above; `xb` has `rows` rows of `k`
                // rounded values at the even stride `ld` > k (zero past k); `panel` is panel p,
                // k × 32 bf16 values as packed; the output has `rows` rows of `n_out` columns,
                // of which this call writes columns p·32 .. p·32 + n_valid only.
                unsafe {
                    kernels::gemm_panel_bf16(
                        xb.as_ptr(),
                        ld,
                        rows,
                        k,
                        panel.as_ptr(),
                        y.at(p * NR),
                        n_out,
                        (n_out - p * NR).min(NR),
                    )
                }
            };
            for_panels(n_out.div_ceil(NR), serial, run);
        }
        put_bf16_rows(xb);
    }

    /// One vector: `out[o] = Σ_i W[o,i] · x[i]`, panels of W split across threads.
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        assert!(x.len() >= self.in_dim && out.len() >= self.out_dim);
        let out = &mut out[..self.out_dim];
        let per = self.gemv_panels_per_task();
        let mut xq = take_qrows();
        self.prepare_gemv_input(x, &mut xq);
        par_chunks_mut(out, per * NR, false, |c, o| {
            self.gemv_panels(c * per, x, &xq, o)
        });
        put_qrows(xq);
    }

    /// Panels per task of a matrix–vector product: up to four tasks per thread, for balance
    /// when a core is busy, but no more than one per `GEMV_TASK_BYTES` of weights (at least one
    /// per thread): each task costs a claim and a completion, two transfers of a shared cache
    /// line, which for a small matrix cost about what its weights take to read. A matrix of
    /// fewer than `SERIAL_BYTES` is one task (handing it to the pool costs more than it saves).
    fn gemv_panels_per_task(&self) -> usize {
        let n_panels = self.out_dim.div_ceil(NR);
        if self.w.len() < SERIAL_BYTES {
            return n_panels.max(1);
        }
        let threads = pool::threads();
        let tasks = (self.w.len() / GEMV_TASK_BYTES).clamp(threads, 4 * threads);
        n_panels.div_ceil(tasks).max(1)
    }

    /// Quantizes the input `x` of a matrix–vector product into `xq` for the 8-bit formats
    /// (once per product; float formats read `x` itself).
    fn prepare_gemv_input(&self, x: &[f32], xq: &mut QuantizedRows) {
        if let Kernel::Int8 { .. } = self.format.traits().kernel {
            xq.quantize(&x[..self.in_dim], 1, self.in_dim);
        }
    }

    /// The outputs of panels `p0 ..` (as many as `out` holds) of the product with `x` (its
    /// quantized form `xq`, from [`Linear::prepare_gemv_input`], for the 8-bit formats).
    fn gemv_panels(&self, p0: usize, x: &[f32], xq: &QuantizedRows, out: &mut [f32]) {
        match self.format.traits().kernel {
            Kernel::Float { gemv, .. } => gemv(&self.w, p0, self.in_dim, x, out),
            Kernel::Int8 { gemv, .. } => gemv(&self.w, p0, xq, out),
        }
    }
}

/// `x · Wᵀ` for every pair `(W, x)` of `products`, as [`Linear::forward`] gives each, with
/// the same results bit for bit.
///
/// When every input is one row (a decoded token), all the matrix–vector products run as one
/// call of the pool, their tasks claimed in turn (so list the large products first): the
/// independent products of a layer (RWKV-7's r, k, v and its LoRAs' first halves) then cost
/// one hand-off to the workers and one wait for the last of them instead of one each. For
/// more rows, each product runs as [`Linear::forward`] (a matrix–matrix product already fills
/// the threads).
pub fn forward_all(products: &[(&Linear, &Mat)]) -> Result<Vec<Mat>> {
    if products.len() < 2 || products.iter().any(|(_, x)| x.rows != 1) {
        return products.iter().map(|(w, x)| w.forward(x)).collect();
    }
    for (w, x) in products {
        w.check_input(x)?;
    }
    // Per product: panels per task (as `Linear::gemv` splits it), and its first task.
    let per: Vec<usize> = products
        .iter()
        .map(|(w, _)| w.gemv_panels_per_task())
        .collect();
    let mut first = Vec::with_capacity(products.len() + 1);
    first.push(0);
    for ((w, _), p) in products.iter().zip(&per) {
        first.push(first.last().unwrap() + w.out_dim.div_ceil(NR).div_ceil(*p));
    }
    let n_tasks = *first.last().unwrap();
    // The inputs of the 8-bit products, quantized once each.
    let mut xqs = take_qrows_all();
    if xqs.len() < products.len() {
        xqs.resize_with(products.len(), QuantizedRows::default);
    }
    for ((w, x), xq) in products.iter().zip(xqs.iter_mut()) {
        w.prepare_gemv_input(x.row(0), xq);
    }
    let mut outs: Vec<Mat> = products
        .iter()
        .map(|(w, _)| Mat::zeros(1, w.out_dim))
        .collect();
    let ptrs: Vec<OutPtr> = outs
        .iter_mut()
        .map(|o| OutPtr(o.data.as_mut_ptr()))
        .collect();
    let run = |t: usize| {
        // The product whose tasks include t, and t's place among them.
        let i = first.partition_point(|&f| f <= t) - 1;
        let ((w, x), p) = (products[i], per[i]);
        let start = (t - first[i]) * p * NR;
        let end = (start + p * NR).min(w.out_dim);
        // SAFETY: `start..end` lies within output i (`start` < out_dim, as task t - first[i]
        // < ⌈panels / p⌉); each task runs once and the tasks of one product cover disjoint
        // ranges of its output, which `outs` holds, unborrowed, until every task is done.
        let o = unsafe { std::slice::from_raw_parts_mut(ptrs[i].at(start), end - start) };
        w.gemv_panels(start / NR, x.row(0), &xqs[i], o);
    };
    let bytes: usize = products.iter().map(|(w, _)| w.w.len()).sum();
    if bytes < SERIAL_BYTES {
        (0..n_tasks).for_each(run);
    } else {
        pool::run(n_tasks, &run);
    }
    put_qrows_all(xqs);
    Ok(outs)
}

/// A table of rows read one at a time (an embedding), kept in a weight format's row encoding
/// (its [`format::RowCodec`]): f32, 16-bit, or Q8_0 (blocks of 32 with a bf16 scale, as the
/// matrices; also for Q4_0 models, whose embedding would lose too much at 4 bits). A lookup
/// widens one row to f32.
pub struct RowTable {
    pub rows: usize,
    pub cols: usize,
    codec: &'static format::RowCodec,
    /// The encoded rows, `codec.row_bytes(cols)` bytes each: in huge-page memory of its own,
    /// or a read-only piece of the weight cache's mapping (as a [`Linear`]'s panels).
    data: AlignedBuf,
}

impl RowTable {
    /// A stand-in with the shape of a `rows × cols` table and no values, as
    /// [`Linear::unloaded`]; a lookup in it panics.
    pub fn unloaded(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            codec: &Format::F32.traits().rows,
            data: AlignedBuf::zeroed(0),
        }
    }

    /// Builds from rows already encoded in `format` (as [`RowTable::encoded`] gives them: the
    /// weight cache's), which must be exactly `rows` rows long.
    pub fn from_encoded(
        rows: usize,
        cols: usize,
        format: Format,
        data: AlignedBuf,
    ) -> Result<Self> {
        let codec = &format.traits().rows;
        if rows == 0 || cols == 0 || data.len() != rows * codec.row_bytes(cols) {
            bail!(
                "table of {} bytes is not {rows} rows of {cols} values in {}",
                data.len(),
                format.name()
            );
        }
        Ok(Self {
            rows,
            cols,
            codec,
            data,
        })
    }

    /// The encoded rows, `rows` × the format's row size (as [`Linear::packed`]).
    pub fn encoded(&self) -> &AlignedBuf {
        &self.data
    }

    /// Builds from values (rows × cols, row-major) delivered in runs by `read`, as
    /// [`Linear::from_streamed`]: converted as they come, never held whole in f32.
    pub fn from_streamed(
        rows: usize,
        cols: usize,
        format: Format,
        read: impl FnOnce(&mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()>,
    ) -> Result<Self> {
        let total = rows * cols;
        let codec = &format.traits().rows;
        let rb = codec.row_bytes(cols);
        let mut data = AlignedBuf::zeroed(rows * rb);
        let out = data.bytes_mut();
        let mut row = Vec::with_capacity(cols);
        let mut enc = Vec::with_capacity(rb);
        let mut done = 0usize;
        let mut next = 0usize;
        read(&mut |start: usize, mut values: &[f32]| -> Result<()> {
            if start != next || start + values.len() > total {
                bail!("table delivered out of order at {start} of {total}");
            }
            next += values.len();
            while !values.is_empty() {
                let take = values.len().min(cols - row.len());
                row.extend_from_slice(&values[..take]);
                values = &values[take..];
                if row.len() == cols {
                    enc.clear();
                    (codec.encode)(&row, &mut enc);
                    out[done * rb..(done + 1) * rb].copy_from_slice(&enc);
                    done += 1;
                    row.clear();
                }
            }
            Ok(())
        })?;
        if next != total {
            bail!("table delivered {next} of {total} values");
        }
        Ok(Self {
            rows,
            cols,
            codec,
            data,
        })
    }

    /// Builds from values (rows × cols, row-major) that `read` reaches in any order, as
    /// [`Linear::from_values`]: blocks of rows converted and encoded on all threads, each
    /// into its place; the same bytes as [`RowTable::from_streamed`].
    pub fn from_values(
        rows: usize,
        cols: usize,
        format: Format,
        read: format::ReadAt<'_>,
    ) -> Result<Self> {
        let data = AlignedBuf::zeroed(rows * format.traits().rows.row_bytes(cols));
        Self::from_values_in(data, rows, cols, format, read)
    }

    /// As [`RowTable::from_values`], into `data`: exactly `rows` encoded rows of zero bytes
    /// (a region of the weight cache file being written).
    pub fn from_values_in(
        mut data: AlignedBuf,
        rows: usize,
        cols: usize,
        format: Format,
        read: format::ReadAt<'_>,
    ) -> Result<Self> {
        const BLOCK_ROWS: usize = 64;
        let codec = &format.traits().rows;
        let rb = codec.row_bytes(cols);
        if data.len() != rows * rb {
            bail!(
                "buffer of {} bytes for a table of {rows} rows of {rb} bytes",
                data.len()
            );
        }
        if rb > 0 {
            // Blocks of rows; into the file where `data` is a region of the weight cache's.
            data.fill_pieces(
                BLOCK_ROWS * rb,
                || (Vec::new(), Vec::with_capacity(rb)),
                |(values, enc): &mut (Vec<f32>, Vec<u8>), b, out| -> Result<()> {
                    let n = out.len() / rb;
                    values.resize(n * cols, 0.0);
                    read(b * BLOCK_ROWS * cols, values)?;
                    for (row, dst) in values.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
                        enc.clear();
                        (codec.encode)(row, enc);
                        dst.copy_from_slice(enc);
                    }
                    Ok(())
                },
            )?;
        }
        Ok(Self {
            rows,
            cols,
            codec,
            data,
        })
    }

    /// Row `r` widened to f32 into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let rb = self.codec.row_bytes(self.cols);
        (self.codec.decode)(
            &self.data.bytes()[r * rb..(r + 1) * rb],
            &mut out[..self.cols],
        );
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
#[path = "linear_tests.rs"]
mod tests;
