//! Reading checkpoint files: safetensors (memory-mapped) and PyTorch `.pth` zip archives.
//!
//! A [`Checkpoint`] lists its tensors (name, shape, stored dtype) without reading their data,
//! and hands out one tensor at a time converted to `f32` ([`Checkpoint::read_f32`]) or to the
//! compute dtype the caller asks for. Nothing is converted on disk: BlinkDL's `.pth` files are
//! read as they are published.
//!
//! Memory: the safetensors file is memory-mapped; after each tensor is converted, its pages are
//! released (`MADV_DONTNEED`), so a load never holds the file and the converted weights at once.
//! `.pth` archives are read entry by entry through a zip reader.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a checkpoint says about one tensor, before reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    pub dtype: StoredDType,
}

impl TensorMeta {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The element types a checkpoint may store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    F64,
    Other,
}

impl StoredDType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
            StoredDType::F64 => 8,
            StoredDType::Other => 0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            StoredDType::F32 => "f32",
            StoredDType::F16 => "f16",
            StoredDType::BF16 => "bf16",
            StoredDType::F64 => "f64",
            StoredDType::Other => "other",
        }
    }
}

/// The container format of a checkpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Pth,
}

enum Source {
    Safetensors {
        mmap: memmap2::Mmap,
        /// name -> (byte range of the data inside the file)
        ranges: BTreeMap<String, (usize, usize)>,
    },
    Pth(candle_core::pickle::PthTensors),
}

/// An opened checkpoint: tensor metadata plus a way to read each tensor.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub file_size: u64,
    tensors: BTreeMap<String, TensorMeta>,
    source: Source,
}

impl Checkpoint {
    /// Opens a checkpoint, telling the format from the file's first bytes.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let file_size = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if file_size == 0 {
            bail!("{} is empty, not a checkpoint", path.display());
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = &file;
            let n = f.read(&mut magic)?;
            if n < 4 {
                bail!("{} is too short to be a checkpoint", path.display());
            }
        }
        if &magic == b"PK\x03\x04" {
            drop(file);
            Self::open_pth(path, file_size)
        } else {
            Self::open_safetensors(path, file, file_size)
        }
    }

    fn open_safetensors(path: &Path, file: std::fs::File, file_size: u64) -> Result<Self> {
        // SAFETY: the map is read-only and private to this process; like every mmap-based
        // loader we rely on the file not being truncated while it is open. Every access below
        // goes through bounds-checked slices of ranges that safetensors validated.
        let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| {
                anyhow::anyhow!(
                    "{} is neither a safetensors file nor a .pth archive ({e})",
                    path.display()
                )
            })?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let mut ranges = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let dtype = match info.dtype {
                safetensors::Dtype::F32 => StoredDType::F32,
                safetensors::Dtype::F16 => StoredDType::F16,
                safetensors::Dtype::BF16 => StoredDType::BF16,
                safetensors::Dtype::F64 => StoredDType::F64,
                _ => StoredDType::Other,
            };
            let (start, end) = info.data_offsets;
            let (start, end) = (data_start + start, data_start + end);
            if end > mmap.len() || start > end {
                bail!(
                    "tensor {name}: data offsets point past the end of {}",
                    path.display()
                );
            }
            tensors.insert(
                name.clone(),
                TensorMeta {
                    shape: info.shape.clone(),
                    dtype,
                },
            );
            ranges.insert(name.clone(), (start, end));
        }
        Ok(Self {
            path: path.to_owned(),
            format: Format::Safetensors,
            file_size,
            tensors,
            source: Source::Safetensors { mmap, ranges },
        })
    }

    fn open_pth(path: &Path, file_size: u64) -> Result<Self> {
        let pth = candle_core::pickle::PthTensors::new(path, None)
            .map_err(|e| anyhow::anyhow!("cannot read .pth archive {}: {e}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, info) in pth.tensor_infos() {
            let dtype = match info.dtype {
                DType::F32 => StoredDType::F32,
                DType::F16 => StoredDType::F16,
                DType::BF16 => StoredDType::BF16,
                DType::F64 => StoredDType::F64,
                _ => StoredDType::Other,
            };
            tensors.insert(
                name.clone(),
                TensorMeta {
                    shape: info.layout.dims().to_vec(),
                    dtype,
                },
            );
        }
        if tensors.is_empty() {
            bail!(
                "{} holds no tensors (not an RWKV checkpoint)",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_owned(),
            format: Format::Pth,
            file_size,
            tensors,
            source: Source::Pth(pth),
        })
    }

    /// All tensor names with their metadata, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        &self.tensors
    }

    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The dtype most of the weights are stored in (by element count).
    pub fn stored_dtype(&self) -> StoredDType {
        let mut counts: BTreeMap<StoredDType, usize> = BTreeMap::new();
        for m in self.tensors.values() {
            *counts.entry(m.dtype).or_default() += m.numel();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(StoredDType::F32)
    }

    /// Total number of stored elements.
    pub fn n_elements(&self) -> u64 {
        self.tensors.values().map(|m| m.numel() as u64).sum()
    }

    /// A fingerprint of the weights: every tensor's name, shape and dtype, and the values of
    /// the small tensors (norms, mixes, decays). Two checkpoints of the same shape but
    /// different training have different fingerprints.
    pub fn fingerprint(&self) -> Result<u64> {
        use crate::state_file::{fnv1a, FNV_OFFSET};
        let mut h = FNV_OFFSET;
        for (name, m) in &self.tensors {
            h = fnv1a(name.as_bytes(), h);
            h = fnv1a(format!("{:?}{}", m.shape, m.dtype.name()).as_bytes(), h);
            if m.numel() <= 65536 {
                for v in self.read_f32(name)? {
                    h = fnv1a(&v.to_le_bytes(), h);
                }
            }
        }
        Ok(h)
    }

    /// Reads one tensor, converted to f32, in row-major order.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let meta = self
            .tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing from {}", self.path.display()))?;
        match &self.source {
            Source::Safetensors { mmap, ranges } => {
                let (start, end) = ranges[name];
                let bytes = &mmap[start..end];
                let expect = meta.numel() * meta.dtype.size_in_bytes();
                if meta.dtype == StoredDType::Other || bytes.len() != expect {
                    bail!(
                        "tensor {name}: unsupported dtype or {} bytes for shape {:?}",
                        bytes.len(),
                        meta.shape
                    );
                }
                let out = bytes_to_f32(bytes, meta.dtype);
                release_pages(mmap, start, end);
                Ok(out)
            }
            Source::Pth(pth) => {
                let t = pth
                    .get(name)
                    .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?
                    .with_context(|| format!("tensor {name} is missing"))?;
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
                if v.len() != meta.numel() {
                    bail!(
                        "tensor {name}: read {} values, expected {}",
                        v.len(),
                        meta.numel()
                    );
                }
                Ok(v)
            }
        }
    }
}

/// Converts little-endian stored values to f32.
fn bytes_to_f32(bytes: &[u8], dtype: StoredDType) -> Vec<f32> {
    match dtype {
        StoredDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StoredDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StoredDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        StoredDType::Other => Vec::new(),
    }
}

/// Drops the resident pages of a tensor we have converted, so the file's pages and the
/// converted copy are not both resident for the whole load.
fn release_pages(mmap: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.div_ceil(PAGE) * PAGE;
    let last = (end / PAGE) * PAGE;
    if last > first {
        // SAFETY: the mapping is a read-only, file-backed map: dropping its pages only means
        // they are read again from the file on the next access; no data can be lost, and no
        // slice borrowed from this range outlives this call (the caller has copied it).
        unsafe {
            let _ = mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                first,
                last - first,
            );
        }
    }
}
