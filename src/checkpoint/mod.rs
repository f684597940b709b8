//! Reading checkpoint files: safetensors, PyTorch `.pth` zip archives and llama.cpp's GGUF,
//! all memory-mapped.
//!
//! A [`Checkpoint`] lists its tensors (name, shape, stored dtype) without reading their data,
//! and hands out one tensor at a time converted to `f32` ([`Checkpoint::read_f32`]). Nothing is
//! converted on disk: BlinkDL's `.pth` files are read as they are published.
//!
//! Both formats are parsed by this module's own code, written to survive hostile files: every
//! offset, length and shape is checked (with overflow-checked arithmetic) against the file's
//! size before it is used, so a damaged or malicious file gives an error naming the problem —
//! never a panic, a huge allocation or a hang.
//! - safetensors (`safetensors.rs`): 8-byte header length, JSON header, data. Each tensor's
//!   byte range must lie in the data area, match its shape and dtype exactly, and not overlap
//!   another tensor's.
//! - `.pth` (`pth.rs`): the zip central directory (`zip.rs`: stored entries only, as
//!   `torch.save` writes them) and `data.pkl` run by a small bounded pickle machine
//!   (`pickle.rs`) that knows the handful of opcodes and callables of a state dict and executes
//!   nothing. Each tensor's view (offset, shape, strides) must lie inside its storage entry.
//! - GGUF (`gguf.rs`: the container — counts, strings, dimensions, alignment and every tensor's
//!   byte range checked, ranges not overlapping; `gguf_rwkv7.rs`: llama.cpp's `rwkv7` and
//!   `rwkv6` layouts mapped back to BlinkDL's names and shapes, the fused token-shift mixes
//!   split, the LoRAs transposed back, `r_k` reshaped, layer 0's dummy `v0/v1/v2` dropped,
//!   rwkv6's rescaled matrices multiplied back, the World vocabulary checked). Tensors of F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K are decoded to f32
//!   when read; the model's `--dtype`/`--quant` then applies as for any checkpoint (a Q8_0 or
//!   Q4_0 tensor read into our Q8_0 or Q4_0 keeps ggml's integers: only its f16 block scale is
//!   rounded to our bf16).
//!
//! Stored element types and their conversion to f32 live in `convert.rs`, with
//! [`TensorReader`] (any range of one tensor, on several threads at once); reading a tensor's
//! values through them, and a `.pth` storage's CRC check, in `read.rs`.
//!
//! Memory: the file is memory-mapped for its header and index (a `.pth` file's pages are given
//! back once parsed, `MADV_DONTNEED`); plainly stored tensors are read with `pread`, range by
//! range into a small per-thread buffer, and converted from there ([`TensorReader`]), so a load
//! never holds the file and the converted weights at once. GGUF tensors and strided `.pth`
//! views are read through the map, their pages given back once converted.

mod convert;
pub mod gguf;
pub mod gguf_rwkv7;
mod pickle;
mod pth;
mod read;
mod safetensors;
mod zip;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use convert::release_pages;
pub use convert::{StoredDType, TensorReader};

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

    /// Bytes per stored element, for the float types a [`TensorReader`] converts.
    fn elem_size_known(&self) -> Option<usize> {
        Some(self.dtype.size_in_bytes()).filter(|&s| s > 0)
    }
}

/// The container format of a checkpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Pth,
    /// llama.cpp's GGUF (architectures rwkv7 and rwkv6), mapped back to BlinkDL's names.
    Gguf,
}

/// A GGUF file's container and, for each BlinkDL tensor name, where it comes from.
struct GgufView {
    file: gguf::Gguf,
    sources: BTreeMap<String, gguf_rwkv7::Source>,
}

/// The bytes of the checkpoint: the mapped file, or a buffer (for tests and fuzzing).
enum Data {
    /// The map, and the open file (plainly stored tensors are read from it with `pread`).
    Mapped(memmap2::Mmap, std::fs::File),
    Owned(Vec<u8>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Mapped(m, _) => m,
            Data::Owned(v) => v,
        }
    }
}

/// Where one tensor's elements are, all checked against the file when it was opened.
#[derive(Clone, Debug)]
struct Place {
    /// Byte offset in the file of element 0 of the tensor's storage.
    base: usize,
    /// Bytes per stored element (0 for sub-byte types, which are never read).
    elem_size: usize,
    /// The stored element type, as the file names it (for messages).
    type_name: String,
    /// First element of the view and its strides, in elements; `None` when the tensor is the
    /// whole storage range in row-major order.
    view: Option<(usize, Vec<usize>)>,
    /// `.pth`: index of the tensor's storage entry in [`Checkpoint::storages`], whose CRC is
    /// checked on first read.
    storage: Option<usize>,
}

/// A `.pth` storage entry, checked against its CRC-32 the first time a tensor reads it.
struct StorageEntry {
    name: String,
    entry: zip::Entry,
    verified: AtomicBool,
}

/// An opened checkpoint: tensor metadata plus a way to read each tensor.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub file_size: u64,
    tensors: BTreeMap<String, TensorMeta>,
    places: BTreeMap<String, Place>,
    storages: Vec<StorageEntry>,
    gguf: Option<GgufView>,
    data: Data,
}

impl Checkpoint {
    /// Opens a checkpoint, telling the format from the file's first bytes.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if meta.len() == 0 {
            bail!("{} is empty, not a checkpoint", path.display());
        }
        // SAFETY: the map is read-only and private to this process, and every access goes
        // through bounds-checked slices of it, with ranges checked against its length when the
        // checkpoint is parsed. Like every mmap-based loader we rely on the file not being
        // truncated by another process while it is open (that would raise SIGBUS, not read
        // out of bounds). mmap is needed: it lets a multi-gigabyte model load without holding
        // the file and the converted weights in memory at once.
        let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Self::parse(path, Data::Mapped(mmap, file))
    }

    /// Parses a checkpoint held in memory (`name` stands for its path in messages). The same
    /// parser as [`Checkpoint::open`]; meant for tests and fuzzing.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self> {
        Self::parse(Path::new(name), Data::Owned(bytes))
    }

    fn parse(path: &Path, data: Data) -> Result<Self> {
        let b = data.bytes();
        if b.is_empty() {
            bail!("{} is empty, not a checkpoint", path.display());
        }
        if b.len() < 8 {
            bail!(
                "{} is too short to be a checkpoint ({} bytes)",
                path.display(),
                b.len()
            );
        }
        if gguf::is_gguf(b) {
            return Self::parse_gguf(path, data);
        }
        // The magic of `crate::state_file` (repeated: that module builds on this one).
        if b.starts_with(b"RWKVSTATE\0") {
            bail!(
                "{} is a state saved by rwkv-cli (--state-out), not a checkpoint: resume it with --state-in, with the model it was saved from",
                path.display()
            );
        }
        let parsed = if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
            pth::parse(b).map(|(t, s)| (Format::Pth, t, s))
        } else if b[0] == 0x80 && (2..=5).contains(&b[1]) {
            bail!(
                "{} is a legacy (pre-zip) torch.save pickle; re-save it with torch 1.6 or later, or convert it to safetensors",
                path.display()
            );
        } else {
            safetensors::parse(b).map(|t| (Format::Safetensors, t, Vec::new()))
        };
        let named_pth = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("pth"));
        let (format, entries, storages) = parsed.with_context(|| match format_guess(b) {
            Format::Pth => format!("cannot read .pth archive {}", path.display()),
            // Content decides the format, but a name ending in .pth says what was meant.
            Format::Safetensors if named_pth => format!(
                "{} is not a zip archive as .pth files are, and reading it as safetensors fails",
                path.display()
            ),
            Format::Safetensors | Format::Gguf => {
                format!("cannot read {} as safetensors", path.display())
            }
        })?;
        if entries.is_empty() {
            bail!(
                "{} holds no tensors (not an RWKV checkpoint)",
                path.display()
            );
        }
        if let (Format::Pth, Data::Mapped(m, _)) = (format, &data) {
            // The zip's local headers, read at every storage, mapped a page (or a whole 2 MiB
            // folio) of the file each: ~240 MB of a 1.5B `.pth` stayed resident. Given back.
            release_pages(m, 0, m.len());
        }
        let mut tensors = BTreeMap::new();
        let mut places = BTreeMap::new();
        for (name, meta, place) in entries {
            tensors.insert(name.clone(), meta);
            places.insert(name, place);
        }
        Ok(Self {
            path: path.to_owned(),
            format,
            file_size: b.len() as u64,
            tensors,
            places,
            storages: storages
                .into_iter()
                .map(|(name, entry)| StorageEntry {
                    name,
                    entry,
                    verified: AtomicBool::new(false),
                })
                .collect(),
            gguf: None,
            data,
        })
    }

    /// A GGUF file: the container checked, its rwkv7 tensors mapped to BlinkDL names.
    fn parse_gguf(path: &Path, data: Data) -> Result<Self> {
        let b = data.bytes();
        let what = || format!("cannot read GGUF file {}", path.display());
        let file = gguf::parse(b).with_context(what)?;
        let mapped = gguf_rwkv7::map(&file).with_context(what)?;
        if mapped.is_empty() {
            bail!(
                "{} holds no tensors (not an RWKV checkpoint)",
                path.display()
            );
        }
        let mut tensors = BTreeMap::new();
        let mut places = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (name, meta, src) in mapped {
            let t = &file.tensors[src.tensor];
            places.insert(
                name.clone(),
                Place {
                    base: t.start,
                    elem_size: 0,
                    type_name: t.ty.name.to_string(),
                    view: None,
                    storage: None,
                },
            );
            if tensors.insert(name.clone(), meta).is_some() {
                bail!("{}: two GGUF tensors map to {name}", path.display());
            }
            sources.insert(name, src);
        }
        Ok(Self {
            path: path.to_owned(),
            format: Format::Gguf,
            file_size: b.len() as u64,
            tensors,
            places,
            storages: Vec::new(),
            gguf: Some(GgufView { file, sources }),
            data,
        })
    }

    /// The GGUF container, when the checkpoint is a GGUF file (for `info`).
    pub fn gguf(&self) -> Option<&gguf::Gguf> {
        self.gguf.as_ref().map(|g| &g.file)
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

    /// The element type of a tensor as the file names it (`F32`, `I64`,
    /// `torch.BFloat16Storage`, …), for messages.
    pub fn stored_type_name(&self, name: &str) -> Option<&str> {
        self.places.get(name).map(|p| p.type_name.as_str())
    }

    /// The dtype most of the weights are stored in (by element count).
    pub fn stored_dtype(&self) -> StoredDType {
        let mut counts: BTreeMap<StoredDType, u64> = BTreeMap::new();
        for m in self.tensors.values() {
            *counts.entry(m.dtype).or_default() += m.numel() as u64;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or(StoredDType::F32)
    }

    /// The stored type of tensor `name` when every value it reads as is exactly a value of
    /// that type (f32, f16 or bf16, as safetensors and `.pth` files store them); `None` for
    /// other types and for GGUF tensors (which may be transformed when read: rescaled,
    /// split, dequantized).
    pub fn exact_type(&self, name: &str) -> Option<StoredDType> {
        if self.gguf.is_some() {
            return None;
        }
        let t = self.tensors.get(name)?.dtype;
        matches!(t, StoredDType::F32 | StoredDType::F16 | StoredDType::BF16).then_some(t)
    }

    /// Total number of stored elements.
    pub fn n_elements(&self) -> u64 {
        self.tensors.values().map(|m| m.numel() as u64).sum()
    }

    /// A fingerprint of the weights: every tensor's name, shape and dtype, and the values of
    /// the small tensors (norms, mixes, decays). Two checkpoints of the same shape but
    /// different training have different fingerprints.
    pub fn fingerprint(&self) -> Result<u64> {
        use crate::fnv::{fnv1a, FNV_OFFSET};
        let mut h = FNV_OFFSET;
        for (name, m) in &self.tensors {
            h = fnv1a(name.as_bytes(), h);
            h = fnv1a(format!("{:?}{}", m.shape, m.dtype.name()).as_bytes(), h);
            if m.numel() <= 65536 && m.dtype != StoredDType::Other {
                for v in self.read_f32(name)? {
                    h = fnv1a(&v.to_le_bytes(), h);
                }
            }
        }
        Ok(h)
    }
}

/// Which format a file looks like, for the context of an error.
fn format_guess(b: &[u8]) -> Format {
    if b.starts_with(b"PK") {
        Format::Pth
    } else {
        Format::Safetensors
    }
}

type Entries = Vec<(String, TensorMeta, Place)>;

/// Element count of `shape`, or an error if it (or the product of its non-zero dimensions,
/// which later shape arithmetic may form) overflows.
fn checked_numel(name: &str, shape: &[usize]) -> Result<usize> {
    let nonzero = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d.max(1)));
    if nonzero.is_none() {
        bail!("tensor {name}: shape {shape:?} is too large");
    }
    Ok(shape.iter().product())
}

#[cfg(test)]
mod tests {
    use super::pth::is_row_major;
    use super::*;

    /// A safetensors file from (name, dtype, shape, data_offsets) entries and a data area.
    fn st(entries: &[(&str, &str, &[usize], [usize; 2])], data: &[u8]) -> Vec<u8> {
        let mut h = serde_json::Map::new();
        for (name, dtype, shape, off) in entries {
            h.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": off}),
            );
        }
        let h = serde_json::Value::Object(h).to_string();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn err(bytes: Vec<u8>) -> String {
        match Checkpoint::from_bytes(bytes, "t") {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn safetensors_reads_and_validates() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = Checkpoint::from_bytes(st(&[("a", "F32", &[2, 2], [0, 16])], &data), "t").unwrap();
        assert_eq!(c.read_f32("a").unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(c.format, Format::Safetensors);
        let e = err(st(&[("a", "F32", &[2, 2], [0, 20])], &data));
        assert!(e.contains("outside the data area"), "{e}");
        let e = err(st(&[("a", "F32", &[3, 2], [0, 16])], &data));
        assert!(e.contains("needs 24 bytes"), "{e}");
        let e = err(st(
            &[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [4, 12])],
            &data,
        ));
        assert!(e.contains("overlap"), "{e}");
        let e = err(st(&[("a", "F32", &[1 << 40, 1 << 40], [0, 16])], &data));
        assert!(e.contains("too large"), "{e}");
        let e = err(st(&[("a", "Q7", &[4], [0, 16])], &data));
        assert!(e.contains("unknown dtype"), "{e}");
        let c = Checkpoint::from_bytes(st(&[("a", "I64", &[2], [0, 16])], &data), "t").unwrap();
        let e = format!("{:#}", c.read_f32("a").unwrap_err());
        assert!(e.contains("stored as I64"), "{e}");
    }

    #[test]
    fn readers_convert_any_range_as_read_f32_does() {
        let vals: Vec<f32> = (0..40).map(|i| (i as f32 - 17.5) * 0.37).collect();
        let mut data = Vec::new();
        data.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        data.extend(
            vals.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
        );
        data.extend(
            vals.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        );
        data.extend(vals.iter().flat_map(|v| (*v as f64).to_le_bytes()));
        let c = Checkpoint::from_bytes(
            st(
                &[
                    ("a", "F32", &[4, 10], [0, 160]),
                    ("b", "F16", &[4, 10], [160, 240]),
                    ("c", "BF16", &[40], [240, 320]),
                    ("d", "F64", &[40], [320, 640]),
                ],
                &data,
            ),
            "t",
        )
        .unwrap();
        for name in ["a", "b", "c", "d"] {
            let whole = c.read_f32(name).unwrap();
            let r = c.reader(name).unwrap().expect("plainly stored");
            assert_eq!(r.len(), 40);
            for (start, len) in [(0, 40), (3, 7), (39, 1), (10, 0)] {
                let mut got = vec![f32::NAN; len];
                r.read_into(start, &mut got).unwrap();
                assert_eq!(got, whole[start..start + len], "{name} {start}+{len}");
            }
            assert!(r.read_into(35, &mut [0.0; 6]).is_err());
            assert!(r.read_into(usize::MAX, &mut [0.0; 2]).is_err());
        }
        assert!(c.reader("missing").is_err());
    }

    /// Resident bytes of this process's mapping that contains `addr` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn mapping_rss(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("Rss:") {
                    return kb
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .unwrap()
                        << 10;
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn a_file_is_read_in_ranges_without_mapping_its_pages() {
        // 8 MiB of bf16 after a small f32 tensor, so the big one starts inside a page.
        let (rows, cols) = (2048, 2048);
        let big: Vec<half::bf16> = (0..rows * cols)
            .map(|i| half::bf16::from_f32(((i * 7919) % 1999) as f32 * 0.01 - 10.0))
            .collect();
        let mut data: Vec<u8> = [0.5f32, -2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        data.extend(big.iter().flat_map(|v| v.to_le_bytes()));
        let n = data.len();
        let path = std::env::temp_dir().join(format!(
            "rwkv-ckpt-pread-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(
            &path,
            st(
                &[
                    ("small", "F32", &[3], [0, 12]),
                    ("big", "BF16", &[rows, cols], [12, n]),
                ],
                &data,
            ),
        )
        .unwrap();
        let c = Checkpoint::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.read_f32("small").unwrap(), [0.5, -2.0, 3.0]);
        let r = c.reader("big").unwrap().expect("plainly stored");
        let mut got = vec![f32::NAN; 32 * cols];
        for start in (0..rows * cols).step_by(got.len()) {
            r.read_into(start, &mut got).unwrap();
            for (j, v) in got.iter().enumerate() {
                assert_eq!(*v, big[start + j].to_f32(), "value {}", start + j);
            }
        }
        // An odd range, and ranges outside the tensor.
        let mut odd = vec![0.0; 3];
        r.read_into(rows * cols - 3, &mut odd).unwrap();
        assert_eq!(
            odd,
            [
                big[rows * cols - 3].to_f32(),
                big[rows * cols - 2].to_f32(),
                big[rows * cols - 1].to_f32()
            ]
        );
        assert!(r.read_into(rows * cols - 2, &mut [0.0; 3]).is_err());
        assert!(r.read_into(usize::MAX, &mut [0.0; 2]).is_err());
        // Every value was read, yet the map holds no more than the header's and the small
        // tensor's pages (a whole 2 MiB folio when the page cache keeps the file in huge
        // ones): the file was not left resident beside what was converted.
        #[cfg(target_os = "linux")]
        {
            let rss = mapping_rss(c.data.bytes().as_ptr() as usize);
            assert!(
                rss <= 2 << 20,
                "{rss} bytes of the 8 MiB checkpoint resident"
            );
        }
    }

    /// A `.pth` archive is parsed, its CRCs checked and every tensor read without leaving the
    /// file's pages mapped (the zip's local headers are read at every storage).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_pth_file_is_read_without_leaving_its_pages_mapped() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v7.pth");
        let c = Checkpoint::open(&path).unwrap();
        let at = c.data.bytes().as_ptr() as usize;
        // At most the file's last page, which is partly past its end and never given back.
        assert!(
            mapping_rss(at) <= 4096,
            "{} bytes resident after opening",
            mapping_rss(at)
        );
        let names: Vec<String> = c.tensors().keys().cloned().collect();
        for name in &names {
            assert!(!c.read_f32(name).unwrap().is_empty(), "{name}");
        }
        let rss = mapping_rss(at);
        assert!(
            rss <= 4096,
            "{rss} bytes resident after reading every tensor"
        );
    }

    #[test]
    fn a_file_range_crc_in_pieces_is_the_crc_of_the_range() {
        // Over 8 MiB pieces, from an odd offset to an odd end.
        let data: Vec<u8> = (0..(20usize << 20) + 123)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let path = std::env::temp_dir().join(format!("rwkv-ckpt-crc-{}.bin", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for (start, len) in [(5, data.len() - 5), (0, 8 << 20), (4097, 100), (3, 0)] {
            assert_eq!(
                convert::file_crc32(&f, start, len).unwrap(),
                zip::crc32(&data[start..start + len]),
                "{start}+{len}"
            );
        }
        assert!(convert::file_crc32(&f, data.len() - 10, 11).is_err());
    }

    #[test]
    fn every_truncation_of_a_safetensors_file_is_an_error() {
        let data = vec![0u8; 24];
        let f = st(
            &[
                ("a", "F32", &[2, 2], [0, 16]),
                ("b", "BF16", &[4], [16, 24]),
            ],
            &data,
        );
        for n in 0..f.len() {
            assert!(Checkpoint::from_bytes(f[..n].to_vec(), "t").is_err(), "{n}");
        }
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        // A 2×3 storage read as its 3×2 transpose (strides 1, 3), from offset 0.
        let mut c = Checkpoint::from_bytes(
            st(
                &[("a", "F32", &[6], [0, 24])],
                &[0f32, 1., 2., 3., 4., 5.]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            "t",
        )
        .unwrap();
        let p = c.places.get_mut("a").unwrap();
        p.view = Some((0, vec![1, 3]));
        c.tensors.get_mut("a").unwrap().shape = vec![3, 2];
        assert_eq!(c.read_f32("a").unwrap(), [0., 3., 1., 4., 2., 5.]);
        // A strided view has no random-access reader: it is read in order.
        assert!(c.reader("a").unwrap().is_none());
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[1, 3], &[7, 1]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
    }
}
