//! Reading a tensor's values: whole ([`Checkpoint::read_f32`]), in runs
//! ([`Checkpoint::read_f32_chunks`]) or any range at a time ([`Checkpoint::reader`]), with a
//! `.pth` storage's CRC-32 checked on first read ([`Checkpoint::verify_data`]). Every offset
//! was checked against the file when it was opened (`mod.rs` and the format parsers).

use anyhow::{bail, Context, Result};
use std::sync::atomic::Ordering;

use super::convert::{self, element_to_f32, release_pages};
use super::{gguf_rwkv7, Checkpoint, Data, GgufView, Place, StoredDType, TensorMeta, TensorReader};

impl Checkpoint {
    /// Checks a tensor's data without converting it: for `.pth`, the CRC of the storage
    /// entry it lies in (safetensors and GGUF carry no checksum; their ranges are checked at
    /// open, and a GGUF type that cannot be read is reported as not a float type before this).
    pub fn verify_data(&self, name: &str) -> Result<()> {
        let Some(place) = self.places.get(name) else {
            bail!("tensor {name} is missing from {}", self.path.display());
        };
        self.verify_storage(name, place)
    }

    /// Checks, once, the CRC of the `.pth` storage entry a tensor lies in: from a file, read
    /// with `pread` on all threads ([`convert::file_crc32`]), never mapped, so that a load
    /// neither keeps the file resident nor pays for mapping it.
    fn verify_storage(&self, name: &str, place: &Place) -> Result<()> {
        if let Some(s) = place.storage.and_then(|i| self.storages.get(i)) {
            if !s.verified.load(Ordering::Relaxed) {
                let r = match &self.data {
                    Data::Mapped(_, f) if cfg!(unix) => {
                        convert::file_crc32(f, s.entry.start, s.entry.len)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", s.name))
                            .and_then(|crc| s.entry.check(crc, &s.name))
                    }
                    _ => s.entry.verify(self.data.bytes(), &s.name),
                };
                r.with_context(|| format!("tensor {name}"))?;
                s.verified.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Random access to a tensor's values, converted to f32 straight into the caller's
    /// buffers, from any number of threads at once ([`TensorReader::read_into`]) — for
    /// tensors stored plainly (row-major, contiguous, f32/f16/bf16/f64). `None` for strided
    /// `.pth` views and GGUF tensors: read those with [`Checkpoint::read_f32_chunks`]. A
    /// `.pth` storage's CRC is checked here, before any value is handed out.
    pub fn reader(&self, name: &str) -> Result<Option<TensorReader<'_>>> {
        if self.gguf.is_some() {
            return Ok(None);
        }
        let (Some(meta), Some(place)) = (self.tensors.get(name), self.places.get(name)) else {
            bail!("tensor {name} is missing from {}", self.path.display());
        };
        if place.view.is_some() || meta.elem_size_known().is_none() {
            return Ok(None);
        }
        self.verify_storage(name, place)?;
        self.plain_reader(name, meta, place).map(Some)
    }

    /// The reader of a tensor stored whole in row-major order at `place`: from a file, read
    /// with `pread` (see [`TensorReader::read_into`]).
    fn plain_reader(
        &self,
        name: &str,
        meta: &TensorMeta,
        place: &Place,
    ) -> Result<TensorReader<'_>> {
        // Checked at open: base + n × es lies inside the file.
        let Some(bytes) = self
            .data
            .bytes()
            .get(place.base..place.base + meta.numel() * place.elem_size)
        else {
            bail!("tensor {name}: its data lie outside the file");
        };
        Ok(TensorReader {
            bytes,
            dtype: meta.dtype,
            base: place.base,
            file: match &self.data {
                Data::Mapped(_, f) => Some(f),
                Data::Owned(_) => None,
            },
        })
    }

    /// Reads one tensor like [`Checkpoint::read_f32`], in runs of at most `chunk` elements
    /// (row-major order), each handed to `f` with the index of its first element — so that a
    /// large matrix can be converted straight to its compute format without an f32 copy of
    /// the whole (a GGUF tensor's file pages are released once converted; plain tensors are
    /// read with `pread`). Strided views are read whole, then handed out in runs.
    pub fn read_f32_chunks(
        &self,
        name: &str,
        chunk: usize,
        mut f: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let chunk = chunk.max(1);
        if let Some(g) = &self.gguf {
            let Some(src) = g.sources.get(name) else {
                bail!("tensor {name} is missing from {}", self.path.display());
            };
            gguf_rwkv7::read_chunks(&g.file, src, self.data.bytes(), chunk, f)
                .with_context(|| format!("tensor {name}"))?;
            if let (Data::Mapped(m, _), Some(t)) = (&self.data, g.file.tensors.get(src.tensor)) {
                release_pages(m, t.start, t.start + t.len);
            }
            return Ok(());
        }
        let Some(r) = self.reader(name)? else {
            // A strided view (or a type no reader converts): read whole, handed out in runs.
            let v = self.read_f32(name)?;
            for (i, c) in v.chunks(chunk).enumerate() {
                f(i * chunk, c)?;
            }
            return Ok(());
        };
        // In order through the tensor's reader, with one buffer for every run.
        let n = r.len();
        let mut run = vec![0.0f32; chunk.min(n)];
        for start in (0..n).step_by(chunk) {
            let run = &mut run[..chunk.min(n - start)];
            r.read_into(start, run)?;
            f(start, run)?;
        }
        Ok(())
    }

    /// Reads one tensor, converted to f32, in row-major order.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let Some(g) = &self.gguf {
            return self.read_gguf(g, name);
        }
        let (Some(meta), Some(place)) = (self.tensors.get(name), self.places.get(name)) else {
            bail!("tensor {name} is missing from {}", self.path.display());
        };
        if meta.dtype == StoredDType::Other {
            bail!(
                "tensor {name} is stored as {}; RWKV weights must be f32, f16, bf16 or f64",
                place.type_name
            );
        }
        let b = self.data.bytes();
        self.verify_storage(name, place)?;
        let es = place.elem_size;
        let n = meta.numel();
        let out = match &place.view {
            None => {
                // Through the tensor's reader: from a file, read with `pread`, its pages never
                // mapped (touching a page of a file the page cache keeps in 2 MiB folios maps
                // the whole folio: hundreds of small tensors kept ~240 MB of a 1.5B `.pth`
                // resident).
                let mut out = vec![0.0f32; n];
                self.plain_reader(name, meta, place)?
                    .read_into(0, &mut out)
                    .with_context(|| format!("tensor {name}"))?;
                out
            }
            Some((offset, stride)) => {
                // A strided view: gather element by element (checked at open: every index
                // lies inside the storage).
                let mut out = Vec::with_capacity(n);
                let mut idx = vec![0usize; meta.shape.len()];
                let mut at = *offset;
                for _ in 0..n {
                    let p = place.base + at * es;
                    let Some(e) = b.get(p..p + es) else {
                        bail!("tensor {name}: an element lies outside the file");
                    };
                    out.push(element_to_f32(e, meta.dtype));
                    // Advance the multi-index, last dimension fastest.
                    for d in (0..idx.len()).rev() {
                        idx[d] += 1;
                        at += stride[d];
                        if idx[d] < meta.shape[d] {
                            break;
                        }
                        at -= stride[d] * idx[d];
                        idx[d] = 0;
                    }
                }
                out
            }
        };
        Ok(out)
    }

    /// Reads a tensor of a GGUF file (decoded, and taken out of its GGUF tensor).
    fn read_gguf(&self, g: &GgufView, name: &str) -> Result<Vec<f32>> {
        let Some(src) = g.sources.get(name) else {
            bail!("tensor {name} is missing from {}", self.path.display());
        };
        let out = gguf_rwkv7::read(&g.file, src, self.data.bytes())
            .with_context(|| format!("tensor {name}"))?;
        if let (Data::Mapped(m, _), Some(t)) = (&self.data, g.file.tensors.get(src.tensor)) {
            release_pages(m, t.start, t.start + t.len);
        }
        Ok(out)
    }
}
