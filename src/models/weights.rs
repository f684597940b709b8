//! Typed access to a checkpoint's tensors while building a model: every read checks the
//! tensor's shape and names the tensor at fault when it is wrong.
//!
//! Names are scoped as with candle's `VarBuilder::pp`: `w.pp("blocks.3").pp("att")` reads
//! `key.weight` as `blocks.3.att.key.weight`, and every message names the full tensor name.

use crate::checkpoint::{Checkpoint, StoredDType};
use crate::format::Format;
use crate::kernels::AlignedBuf;
use crate::ops::{Linear, RowTable};
use crate::weight_cache::Session;
use anyhow::{bail, Context, Result};

pub struct Weights<'a> {
    pub ckpt: &'a Checkpoint,
    pub dtype: Format,
    /// Check names, shapes, types and (`.pth`) CRCs only: matrices and the embedding are not
    /// converted, and come back as shape-only stand-ins that cannot run (see [`Weights::shapes_only`]).
    check_only: bool,
    /// The scope: the names asked for are read as `{prefix}{name}` (empty, or ending in a dot).
    prefix: String,
    /// The weight cache: what it holds is served from its mapping, and what is converted is
    /// recorded into it (see [`crate::weight_cache`]).
    cache: Option<&'a Session>,
}

/// The format tensor `name` of `ckpt` is kept in, in a model whose matrices are in `format`:
/// `format` itself, except that an f32 model keeps a tensor stored as bf16 in
/// [`Format::BF16Exact`] and one stored as f16 in [`Format::F16Exact`] — half the bytes, and
/// the same products and sums as f32 (each weight widened exactly and multiplied by the f32
/// activations, in f32's order, with f32's choice of kernel by row count). A 1.5B model from
/// an official (bf16) checkpoint then reads 3 GB per token instead of 6 and first starts with
/// half the memory to fill. Not for GGUF files (see [`Checkpoint::exact_type`]).
pub fn held_format(ckpt: &Checkpoint, format: Format, name: &str) -> Format {
    match (format, ckpt.exact_type(name)) {
        (Format::F32, Some(StoredDType::BF16)) => Format::BF16Exact,
        (Format::F32, Some(StoredDType::F16)) => Format::F16Exact,
        _ => format,
    }
}

/// Drops size-1 dimensions (RWKV stores per-channel vectors as (1, 1, C)).
fn squeezed(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

impl<'a> Weights<'a> {
    pub fn new(ckpt: &'a Checkpoint, dtype: Format) -> Self {
        Self {
            ckpt,
            dtype,
            check_only: false,
            prefix: String::new(),
            cache: None,
        }
    }

    /// As [`Weights::new`], serving from and recording into the weight cache `cache`.
    pub fn cached(ckpt: &'a Checkpoint, dtype: Format, cache: &'a Session) -> Self {
        Self {
            cache: Some(cache),
            ..Self::new(ckpt, dtype)
        }
    }

    /// Checks a checkpoint the way loading does, without converting its large tensors:
    /// every tensor a model needs must exist with the right shape and a float type, and its
    /// data must pass the archive's CRC; small vectors are read as usual. What a version's
    /// `load` builds from this holds [`Linear::unloaded`] / [`RowTable::unloaded`] stand-ins,
    /// so it is only good for its `Config` (see `models::inspect`).
    pub fn shapes_only(ckpt: &'a Checkpoint) -> Self {
        Self {
            ckpt,
            dtype: Format::F32,
            check_only: true,
            prefix: String::new(),
            cache: None,
        }
    }

    /// The same weights with names scoped under `scope` (candle's `VarBuilder::pp`):
    /// `w.pp("blocks.0").pp("att").vector("x_r", c)` reads `blocks.0.att.x_r`.
    pub fn pp(&self, scope: impl std::fmt::Display) -> Weights<'a> {
        Weights {
            ckpt: self.ckpt,
            dtype: self.dtype,
            check_only: self.check_only,
            prefix: format!("{}{scope}.", self.prefix),
            cache: self.cache,
        }
    }

    /// The format tensor `name` (full name) is kept in when the model's matrices are in
    /// `format`: see [`held_format`].
    fn held(&self, format: Format, name: &str) -> Format {
        held_format(self.ckpt, format, name)
    }

    /// The format the low-rank matrix `name` (in this scope) is kept in: the model format's
    /// `low_rank` format, held as [`held_format`] says.
    pub fn low_rank_format(&self, name: &str) -> Format {
        self.held(self.dtype.traits().low_rank, &self.path(name))
    }

    /// The full name of tensor `name` in this scope, as the checkpoint (and messages) name it.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The stored shape of a tensor that must exist and hold floating-point values.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.shape_at(&self.path(name))
    }

    /// [`Weights::shape`] of the tensor whose full name is `name`.
    fn shape_at(&self, name: &str) -> Result<Vec<usize>> {
        let meta = self
            .ckpt
            .meta(name)
            .with_context(|| format!("tensor {name} is missing"))?;
        if meta.dtype == StoredDType::Other {
            bail!(
                "tensor {name} is stored as {}; RWKV weights must be f32, f16, bf16 or f64",
                self.ckpt
                    .stored_type_name(name)
                    .unwrap_or("a non-float type")
            );
        }
        Ok(meta.shape.clone())
    }

    pub fn has(&self, name: &str) -> bool {
        self.ckpt.contains(&self.path(name))
    }

    /// A tensor whose shape must be `shape` (size-1 dimensions ignored), as f32.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let name = &self.path(name);
        self.check_shape_at(name, shape)?;
        self.f32_at(name)
    }

    /// That tensor `name` (full name) exists, holds floats and has shape `shape` (size-1
    /// dimensions ignored).
    fn check_shape_at(&self, name: &str, shape: &[usize]) -> Result<()> {
        let got = self.shape_at(name)?;
        if squeezed(&got) != squeezed(shape) {
            bail!("tensor {name} has shape {got:?}, expected {shape:?}");
        }
        Ok(())
    }

    /// The values of tensor `name` (full name) as f32: from the weight cache when it holds
    /// them, else read (and recorded into the cache being written).
    fn f32_at(&self, name: &str) -> Result<Vec<f32>> {
        let key = format!("f32:{name}");
        if let Some(v) = self.cache.and_then(|c| c.f32s(&key)) {
            return Ok(v);
        }
        let v = self.ckpt.read_f32(name)?;
        if let Some(c) = self.cache {
            c.put_f32s(&key, &v);
        }
        Ok(v)
    }

    /// A per-channel vector of `n` values, whatever singleton dimensions it is stored with.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let name = &self.path(name);
        let got = self.shape_at(name)?;
        if got.iter().product::<usize>() != n {
            bail!("tensor {name} has shape {got:?}, expected {n} values");
        }
        self.f32_at(name)
    }

    /// A tensor of any shape, flattened (for values whose layout varies between releases).
    pub fn vector_any(&self, name: &str) -> Result<Vec<f32>> {
        let name = &self.path(name);
        if !self.ckpt.contains(name) {
            // The checkpoint's own message.
            return self.ckpt.read_f32(name);
        }
        self.f32_at(name)
    }

    /// A projection stored (out, in), kept in the compute dtype: converted from the file in
    /// runs of 32 rows straight into the packed format, never whole in f32.
    pub fn linear(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let name = &self.path(name);
        self.check_shape_at(name, &[out_dim, in_dim])?;
        if self.check_only {
            self.ckpt.verify_data(name)?;
            return Ok(Linear::unloaded(out_dim, in_dim));
        }
        let format = self.held(self.dtype, name);
        let bytes = format.matrix_bytes(out_dim, in_dim);
        self.through_cache(
            format!("linear:{name}"),
            [out_dim, in_dim],
            format,
            |c, key| c.linear(key, out_dim, in_dim, format),
            |dst| {
                match self.ckpt.reader(name)? {
                    // Stored plainly: panels converted on all threads, straight from the file
                    // (into the cache file being written, when there is one).
                    Some(r) => {
                        Linear::from_values_in(dst(bytes), out_dim, in_dim, format, &|at, out| {
                            r.read_into(at, out)
                        })
                    }
                    None => Linear::from_streamed(out_dim, in_dim, format, |sink| {
                        self.ckpt.read_f32_chunks(name, 32 * in_dim, sink)
                    }),
                }
                .with_context(|| format!("tensor {name}"))
            },
            Linear::packed,
        )
    }

    /// What `build` makes, or the weight cache's copy of it under `key` (`hit` looks it up);
    /// what is built is recorded into a cache file being written (`packed`: its packed form).
    /// `build` packs into `dst(len)`: a region of that file (see [`Session::reserve`]), or
    /// zeroed memory of its own when no file is being written.
    fn through_cache<T>(
        &self,
        key: String,
        dims: [usize; 2],
        format: Format,
        hit: impl FnOnce(&Session, &str) -> Option<T>,
        build: impl FnOnce(&dyn Fn(usize) -> AlignedBuf) -> Result<T>,
        packed: impl FnOnce(&T) -> &AlignedBuf,
    ) -> Result<T> {
        if let Some(t) = self.cache.and_then(|c| hit(c, &key)) {
            return Ok(t);
        }
        let t = build(&|len| {
            self.cache
                .and_then(|c| c.reserve(len))
                .unwrap_or_else(|| AlignedBuf::zeroed(len))
        })?;
        if let Some(c) = self.cache {
            c.put_packed(&key, dims, format, packed(&t));
        }
        Ok(t)
    }

    /// A table of `rows` rows read one at a time (the embedding), kept in the compute dtype,
    /// converted from the file in runs without an f32 copy of the whole.
    pub fn table(&self, name: &str, rows: usize, cols: usize) -> Result<RowTable> {
        let name = &self.path(name);
        self.check_shape_at(name, &[rows, cols])?;
        if self.check_only {
            self.ckpt.verify_data(name)?;
            return Ok(RowTable::unloaded(rows, cols));
        }
        let format = self.held(self.dtype, name);
        self.through_cache(
            format!("table:{name}"),
            [rows, cols],
            format,
            |c, key| c.table(key, rows, cols, format),
            |dst| {
                match self.ckpt.reader(name)? {
                    Some(r) => RowTable::from_values_in(
                        dst(rows * format.traits().rows.row_bytes(cols)),
                        rows,
                        cols,
                        format,
                        &|at, out| r.read_into(at, out),
                    ),
                    None => RowTable::from_streamed(rows, cols, format, |sink| {
                        self.ckpt.read_f32_chunks(name, 256 * cols, sink)
                    }),
                }
                .with_context(|| format!("tensor {name}"))
            },
            RowTable::encoded,
        )
    }

    /// A LoRA matrix stored (in, out) and used as `x @ W`; kept in the compute format's
    /// float format for low-rank matrices (`Traits::low_rank`: f32, f16 or bf16).
    pub fn lora(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let format = self.low_rank_format(name);
        let name = &self.path(name);
        self.through_cache(
            format!("lora:{name}"),
            [out_dim, in_dim],
            format,
            |c, key| c.linear(key, out_dim, in_dim, format),
            |dst| {
                self.check_shape_at(name, &[in_dim, out_dim])?;
                let v = self.ckpt.read_f32(name)?;
                // The packer reads (out, in) rows: gathered from the (in, out) values panel by
                // panel, on all threads, without a transposed copy of the whole.
                let read = &|at: usize, out: &mut [f32]| {
                    for (j, d) in out.iter_mut().enumerate() {
                        let (o, i) = ((at + j) / in_dim, (at + j) % in_dim);
                        *d = v[i * out_dim + o];
                    }
                    Ok(())
                };
                let buf = dst(format.matrix_bytes(out_dim, in_dim));
                Linear::from_values_in(buf, out_dim, in_dim, format, read)
                    .with_context(|| format!("tensor {name}"))
            },
            Linear::packed,
        )
    }

    /// The size of dimension `dim` of a tensor that must have rank `rank`.
    pub fn dim(&self, name: &str, rank: usize, dim: usize) -> Result<usize> {
        let name = &self.path(name);
        let s = self.shape_at(name)?;
        if s.len() != rank {
            bail!("tensor {name} has shape {s:?}, expected {rank} dimensions");
        }
        if s[dim] == 0 {
            bail!("tensor {name} has an empty dimension: {s:?}");
        }
        Ok(s[dim])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weight_cache::{Session, Settings, Status};
    use serde_json::{json, Value};

    /// A safetensors file holding f32 tensors (name, rows, cols), values from `pseudo`.
    fn safetensors(path: &std::path::Path, tensors: &[(&str, usize, usize)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (i, &(name, rows, cols)) in tensors.iter().enumerate() {
            let start = data.len();
            for v in crate::testing::pseudo(rows * cols, i as u32 + 1) {
                data.extend_from_slice(&v.to_le_bytes());
            }
            header.insert(
                name.into(),
                json!({"dtype": "F32", "shape": [rows, cols], "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_lora_is_kept_transposed_in_the_low_rank_format_of_each_compute_format() {
        let dir = std::env::temp_dir().join(format!("rwkv-wc-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.safetensors");
        // Stored (in, out) = (96, 40), as the checkpoints store a LoRA's down matrix.
        safetensors(&model, &[("w1", 96, 40)]);
        let ckpt = Checkpoint::open(&model).unwrap();
        let stored = crate::testing::pseudo(96 * 40, 1);
        for (dtype, kept) in [
            (Format::F32, Format::F32),
            (Format::F16, Format::F16),
            (Format::BF16, Format::BF16),
            (Format::Q8_0, Format::BF16),
            (Format::Q4_0, Format::BF16),
        ] {
            let l = Weights::new(&ckpt, dtype).lora("w1", 96, 40).unwrap();
            assert_eq!(l.format(), kept, "{dtype:?}");
            assert_eq!(l.weight_bytes(), kept.matrix_bytes(40, 96));
            // (out, in) = the stored values transposed, each rounded as the kept format does
            // (bf16: round to nearest even; f16: the `half` crate's conversion).
            let got = l.to_f32();
            for o in 0..40 {
                for i in 0..96 {
                    let v = stored[i * 40 + o];
                    let want = match kept {
                        Format::F32 => v,
                        Format::F16 => half::f16::from_f32(v).to_f32(),
                        _ => half::bf16::from_f32(v).to_f32(),
                    };
                    assert_eq!(got[o * 96 + i], want, "{dtype:?} ({o}, {i})");
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_first_load_packs_large_tensors_into_the_file_and_a_second_maps_them() {
        let dir = std::env::temp_dir().join(format!("rwkv-wc-reserve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.safetensors");
        // A 4 MiB matrix and a 2 MiB table (packed into file regions), a small matrix (staged).
        safetensors(
            &model,
            &[("w", 1000, 1024), ("e", 1024, 512), ("s", 64, 64)],
        );
        let ckpt = Checkpoint::open(&model).unwrap();
        let settings = Settings {
            dir: Some(dir.join("weights")),
            max_bytes: 1 << 30,
        };
        let plain = Weights::new(&ckpt, Format::F32);
        let want = (
            plain.linear("w", 1000, 1024).unwrap(),
            plain.table("e", 1024, 512).unwrap(),
            plain.linear("s", 64, 64).unwrap(),
        );

        let session = Session::open(&settings, &ckpt, Format::F32);
        assert!(session.recording());
        let w = Weights::cached(&ckpt, Format::F32, &session);
        let got = (
            w.linear("w", 1000, 1024).unwrap(),
            w.table("e", 1024, 512).unwrap(),
            w.linear("s", 64, 64).unwrap(),
        );
        // The large ones live in the file, sealed; the small one in memory of its own.
        for buf in [got.0.packed(), got.1.encoded()] {
            let (map, _) = buf.file_map().expect("packed into the file");
            assert!(!map.is_writable(), "sealed after packing");
            assert_eq!(map.file_offset() % 4096, 0);
        }
        assert!(!got.2.packed().is_mapped());
        let report = session.finish();
        assert_eq!(report.status, Status::Written, "{:?}", report.warnings);
        assert_eq!(got.0.packed().bytes(), want.0.packed().bytes());
        assert_eq!(got.1.encoded().bytes(), want.1.encoded().bytes());
        assert_eq!(got.2.packed().bytes(), want.2.packed().bytes());

        // A second load maps the file, checks it and serves the same bytes.
        let session = Session::open(&settings, &ckpt, Format::F32);
        assert!(!session.recording());
        let w = Weights::cached(&ckpt, Format::F32, &session);
        let hit = (
            w.linear("w", 1000, 1024).unwrap(),
            w.table("e", 1024, 512).unwrap(),
            w.linear("s", 64, 64).unwrap(),
        );
        assert_eq!(session.finish().status, Status::Hit);
        assert_eq!(hit.0.packed().bytes(), want.0.packed().bytes());
        assert_eq!(hit.1.encoded().bytes(), want.1.encoded().bytes());
        assert_eq!(hit.2.packed().bytes(), want.2.packed().bytes());
        drop((got, hit));

        // Over the limit: the region is refused, the run goes on with memory of its own.
        let small = Settings {
            dir: Some(dir.join("small")),
            max_bytes: 3 << 20,
        };
        let session = Session::open(&small, &ckpt, Format::F32);
        let w = Weights::cached(&ckpt, Format::F32, &session);
        let l = w.linear("w", 1000, 1024).unwrap();
        assert!(!l.packed().is_mapped());
        assert_eq!(l.packed().bytes(), want.0.packed().bytes());
        let report = session.finish();
        assert_eq!(report.status, Status::NotWritten);
        assert!(
            report.warnings[0].contains("limit"),
            "{:?}",
            report.warnings
        );
        let left: Vec<_> = std::fs::read_dir(dir.join("small")).unwrap().collect();
        assert!(
            left.is_empty(),
            "no file and no temporary file left: {left:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
