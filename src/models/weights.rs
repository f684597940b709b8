//! Typed access to a checkpoint's tensors while building a model: every read checks the
//! tensor's shape and names the tensor at fault when it is wrong.
//!
//! Names are scoped as with candle's `VarBuilder::pp`: `w.pp("blocks.3").pp("att")` reads
//! `key.weight` as `blocks.3.att.key.weight`, and every message names the full tensor name.

use crate::checkpoint::{Checkpoint, StoredDType};
use crate::format::Format;
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
        self.through_cache(
            format!("linear:{name}"),
            [out_dim, in_dim],
            self.dtype,
            |c, key| c.linear(key, out_dim, in_dim, self.dtype),
            || {
                match self.ckpt.reader(name)? {
                    // Stored plainly: panels converted on all threads, straight from the map.
                    Some(r) => Linear::from_values(out_dim, in_dim, self.dtype, &|at, dst| {
                        r.read_into(at, dst)
                    }),
                    None => Linear::from_streamed(out_dim, in_dim, self.dtype, |sink| {
                        self.ckpt.read_f32_chunks(name, 32 * in_dim, sink)
                    }),
                }
                .with_context(|| format!("tensor {name}"))
            },
            |l| l.packed().bytes(),
        )
    }

    /// What `build` makes, or the weight cache's copy of it under `key` (`hit` looks it up);
    /// what is built is recorded into a cache file being written (`bytes`: its packed form).
    fn through_cache<T>(
        &self,
        key: String,
        dims: [usize; 2],
        format: Format,
        hit: impl FnOnce(&Session, &str) -> Option<T>,
        build: impl FnOnce() -> Result<T>,
        bytes: impl FnOnce(&T) -> &[u8],
    ) -> Result<T> {
        if let Some(t) = self.cache.and_then(|c| hit(c, &key)) {
            return Ok(t);
        }
        let t = build()?;
        if let Some(c) = self.cache {
            c.put(&key, dims, format, bytes(&t));
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
        self.through_cache(
            format!("table:{name}"),
            [rows, cols],
            self.dtype,
            |c, key| c.table(key, rows, cols, self.dtype),
            || {
                match self.ckpt.reader(name)? {
                    Some(r) => RowTable::from_values(rows, cols, self.dtype, &|at, dst| {
                        r.read_into(at, dst)
                    }),
                    None => RowTable::from_streamed(rows, cols, self.dtype, |sink| {
                        self.ckpt.read_f32_chunks(name, 256 * cols, sink)
                    }),
                }
                .with_context(|| format!("tensor {name}"))
            },
            |t| t.encoded(),
        )
    }

    /// A LoRA matrix stored (in, out) and used as `x @ W`; kept in f32 (they are small).
    pub fn lora(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let name = &self.path(name);
        self.through_cache(
            format!("lora:{name}"),
            [out_dim, in_dim],
            Format::F32,
            |c, key| c.linear(key, out_dim, in_dim, Format::F32),
            || {
                self.check_shape_at(name, &[in_dim, out_dim])?;
                let v = self.ckpt.read_f32(name)?;
                Linear::from_in_out(v, in_dim, out_dim, Format::F32)
                    .with_context(|| format!("tensor {name}"))
            },
            |l| l.packed().bytes(),
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
