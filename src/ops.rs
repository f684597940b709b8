//! The small linear-algebra toolkit the models are written in.
//!
//! Activations are plain row-major [`Mat`]s of f32 (T tokens × width). Weight matrices are
//! [`Linear`]s stored as candle tensors in the compute dtype: a batch of tokens goes through
//! candle's multi-threaded gemm, a single token through our own multi-threaded
//! matrix–vector kernel (candle's is single-threaded). Everything elementwise is plain Rust.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

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

/// The dtype weight matrices are kept in for compute (activations are always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeDType {
    F32,
    F16,
    BF16,
}

impl ComputeDType {
    pub fn candle(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::F16 => DType::F16,
            ComputeDType::BF16 => DType::BF16,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ComputeDType::F32 => "f32",
            ComputeDType::F16 => "f16",
            ComputeDType::BF16 => "bf16",
        }
    }
    pub fn size_in_bytes(self) -> usize {
        match self {
            ComputeDType::F32 => 4,
            _ => 2,
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
            other => bail!("unknown dtype '{other}' (expected f32, f16 or bf16)"),
        }
    }
}

/// A weight matrix `W` of shape (out, in), applied as `y = x · Wᵀ`.
pub struct Linear {
    pub out_dim: usize,
    pub in_dim: usize,
    w: Tensor,
}

/// Rows of a batch at or below this count use the matrix–vector kernel.
const GEMV_MAX_ROWS: usize = 2;

impl Linear {
    /// Builds from f32 values laid out (out, in), converting to `dtype`.
    pub fn new(
        values: Vec<f32>,
        out_dim: usize,
        in_dim: usize,
        dtype: ComputeDType,
    ) -> Result<Self> {
        if values.len() != out_dim * in_dim {
            bail!(
                "weight has {} values, expected {out_dim}×{in_dim}",
                values.len()
            );
        }
        let w = Tensor::from_vec(values, (out_dim, in_dim), &Device::Cpu)?;
        let w = if dtype == ComputeDType::F32 {
            w
        } else {
            w.to_dtype(dtype.candle())?
        };
        Ok(Self { out_dim, in_dim, w })
    }

    /// Builds from values laid out (in, out) — the convention of RWKV's LoRA matrices,
    /// which are used as `x @ W` — by transposing once at load.
    pub fn from_in_out(
        values: Vec<f32>,
        in_dim: usize,
        out_dim: usize,
        dtype: ComputeDType,
    ) -> Result<Self> {
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

    pub fn dtype(&self) -> DType {
        self.w.dtype()
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
        if x.rows <= GEMV_MAX_ROWS {
            let mut out = Mat::zeros(x.rows, self.out_dim);
            for t in 0..x.rows {
                self.gemv(x.row(t), out.row_mut(t));
            }
            return Ok(out);
        }
        let xt = Tensor::from_slice(&x.data, (x.rows, x.cols), &Device::Cpu)?;
        let xt = if self.w.dtype() == DType::F32 {
            xt
        } else {
            xt.to_dtype(self.w.dtype())?
        };
        let y = xt.matmul(&self.w.t()?)?.to_dtype(DType::F32)?;
        let data = y.flatten_all()?.to_vec1::<f32>()?;
        Ok(Mat::from_vec(x.rows, self.out_dim, data))
    }

    /// One vector: `out[o] = Σ_i W[o,i] · x[i]`, rows of W split across threads.
    pub fn gemv(&self, x: &[f32], out: &mut [f32]) {
        let (storage, layout) = self.w.storage_and_layout();
        let cpu = match &*storage {
            candle_core::Storage::Cpu(cpu) => cpu,
            _ => unreachable!("weights live on the CPU"),
        };
        let start = layout.start_offset();
        let n = self.in_dim;
        const ROWS_PER_TASK: usize = 32;
        match cpu {
            candle_core::CpuStorage::F32(w) => {
                let w = &w[start..start + self.out_dim * n];
                out.par_chunks_mut(ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(c, o)| {
                        for (j, y) in o.iter_mut().enumerate() {
                            let r = c * ROWS_PER_TASK + j;
                            *y = dot(&w[r * n..(r + 1) * n], x);
                        }
                    });
            }
            candle_core::CpuStorage::F16(w) => {
                let w = &w[start..start + self.out_dim * n];
                out.par_chunks_mut(ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(c, o)| {
                        for (j, y) in o.iter_mut().enumerate() {
                            let r = c * ROWS_PER_TASK + j;
                            *y = dot_f16(&w[r * n..(r + 1) * n], x);
                        }
                    });
            }
            candle_core::CpuStorage::BF16(w) => {
                let w = &w[start..start + self.out_dim * n];
                out.par_chunks_mut(ROWS_PER_TASK)
                    .enumerate()
                    .for_each(|(c, o)| {
                        for (j, y) in o.iter_mut().enumerate() {
                            let r = c * ROWS_PER_TASK + j;
                            *y = dot_bf16(&w[r * n..(r + 1) * n], x);
                        }
                    });
            }
            _ => unreachable!("weights are f32, f16 or bf16"),
        }
    }
}

pub use crate::kernels::dot_f32 as dot;
use crate::kernels::{dot_bf16, dot_f16};

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
    state
        .par_chunks_mut(n * n)
        .zip(per_head.par_chunks_mut(t_count * n))
        .enumerate()
        .for_each(|(h, (st, out_h))| f(h, st, out_h));
    let mut out = Mat::zeros(t_count, n_head * n);
    for h in 0..n_head {
        for t in 0..t_count {
            out.row_mut(t)[h * n..(h + 1) * n]
                .copy_from_slice(&per_head[(h * t_count + t) * n..(h * t_count + t + 1) * n]);
        }
    }
    out
}

/// LayerNorm over each row (eps 1e-5, as torch's default used by RWKV).
pub fn layer_norm(x: &Mat, weight: &[f32], bias: &[f32]) -> Mat {
    let mut out = x.clone();
    for t in 0..x.rows {
        layer_norm_row(out.row_mut(t), weight, bias, 1e-5);
    }
    out
}

/// Normalises one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm_row(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// GroupNorm with `groups` equal groups per row (RWKV's `ln_x`, one group per head).
pub fn group_norm(x: &mut Mat, groups: usize, weight: &[f32], bias: &[f32], eps: f32) {
    let g = x.cols / groups;
    for t in 0..x.rows {
        let row = x.row_mut(t);
        for h in 0..groups {
            let r = h * g..(h + 1) * g;
            layer_norm_row(&mut row[r.clone()], &weight[r.clone()], &bias[r], eps);
        }
    }
}

/// The previous token's row for each row of `x`: row 0 comes from `prev` (the state),
/// row t from `x[t-1]`. Afterwards `prev` holds the last row of `x`.
pub fn token_shift(x: &Mat, prev: &mut [f32]) -> Mat {
    let mut out = Mat::zeros(x.rows, x.cols);
    out.row_mut(0).copy_from_slice(prev);
    for t in 1..x.rows {
        let src = x.row(t - 1).to_vec();
        out.row_mut(t).copy_from_slice(&src);
    }
    prev.copy_from_slice(x.last_row());
    out
}

/// `x + (prev - x) * mix` per channel (RWKV's token-shift interpolation in its v6/v7 form;
/// v4/v5's `x*mix + prev*(1-mix)` is the same with `mix` replaced by `1 - mix`).
pub fn lerp(x: &Mat, prev: &Mat, mix: &[f32]) -> Mat {
    let mut out = x.clone();
    for t in 0..x.rows {
        let p = prev.row(t);
        for ((o, pv), m) in out.row_mut(t).iter_mut().zip(p).zip(mix) {
            *o += (pv - *o) * m;
        }
    }
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
