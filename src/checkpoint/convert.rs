//! Stored element types, their conversion to f32, and [`TensorReader`]: random access to one
//! plainly stored tensor, read range by range with `pread` (or from memory) and converted.

use anyhow::{bail, Result};

/// Random access to one plainly stored tensor of a [`Checkpoint`](super::Checkpoint) (see
/// [`Checkpoint::reader`](super::Checkpoint::reader)): any range of its values converted to f32 into a caller's buffer,
/// without allocating, from several threads at once.
pub struct TensorReader<'a> {
    /// The tensor's stored bytes (reached through `file` when there is one).
    pub(super) bytes: &'a [u8],
    pub(super) dtype: StoredDType,
    /// Offset of `bytes` in the file.
    pub(super) base: usize,
    /// The open file, read with `pread` rather than through the map (see
    /// [`TensorReader::read_into`]); `None` for a checkpoint held in memory.
    pub(super) file: Option<&'a std::fs::File>,
}

thread_local! {
    /// Per-thread stored bytes of the range being read by [`TensorReader::read_into`] or
    /// [`file_crc32`] (kept between calls, so that its pages are faulted in once per thread,
    /// unless larger than [`KEEP`]).
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest buffer a thread keeps in [`STORED`] between reads (a 32-row range of a wide
/// f32 matrix, a CRC piece); a larger one (a whole tensor) is freed after its read.
const KEEP: usize = 2 << 20;

/// Runs `f` on this thread's [`STORED`] buffer resized to `len` bytes.
fn with_stored<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    STORED.with(|cell| {
        // Taken out of the slot, so a nested use on this thread finds it empty.
        let mut buf = std::mem::take(&mut *cell.borrow_mut());
        buf.resize(len, 0);
        let r = f(&mut buf);
        if buf.capacity() <= KEEP {
            *cell.borrow_mut() = buf;
        }
        r
    })
}

impl TensorReader<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size_in_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Converts values `start .. start + dst.len()` (row-major) into `dst`. From a file, the
    /// range's bytes are read with `pread` into a per-thread buffer and converted from there:
    /// the file's pages are never mapped, so a load neither holds the file resident beside the
    /// converted weights nor pays for mapping each range and unmapping it again (populating
    /// then `MADV_DONTNEED`: a page-table walk, and a TLB shootdown that interrupts every other
    /// thread of the process, per range — 15% of a 1.5B model's first load, and the copy out
    /// of the page cache costs less).
    pub fn read_into(&self, start: usize, dst: &mut [f32]) -> Result<()> {
        let es = self.dtype.size_in_bytes();
        let Some(src) = start
            .checked_add(dst.len())
            .and_then(|end| Some((start.checked_mul(es)?, end.checked_mul(es)?)))
            .and_then(|(a, b)| self.bytes.get(a..b))
        else {
            bail!(
                "values {start}..+{} lie outside a tensor of {}",
                dst.len(),
                self.len()
            );
        };
        let Some(file) = self.file.filter(|_| cfg!(unix)) else {
            convert_into(src, self.dtype, dst);
            return Ok(());
        };
        with_stored(src.len(), |buf| {
            read_exact_at(file, buf, (self.base + start * es) as u64)
                .map(|()| convert_into(buf, self.dtype, dst))
                .map_err(|e| anyhow::anyhow!("cannot read the checkpoint: {e}"))
        })
    }
}

/// The CRC-32 of `len` bytes of `file` from `start`, read with `pread` in 1 MiB pieces on all
/// threads (each piece's CRC combined in order): a `.pth` storage is checked without mapping
/// its pages, at the speed of copying them out of the page cache.
pub(super) fn file_crc32(file: &std::fs::File, start: usize, len: usize) -> std::io::Result<u32> {
    use rayon::prelude::*;
    const PIECE: usize = 1 << 20;
    let pieces = (0..len.div_ceil(PIECE))
        .into_par_iter()
        .map(|i| {
            with_stored(PIECE.min(len - i * PIECE), |buf| {
                read_exact_at(file, buf, (start + i * PIECE) as u64).map(|()| {
                    let mut h = crc32fast::Hasher::new();
                    h.update(buf);
                    h
                })
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut all = crc32fast::Hasher::new();
    for h in &pieces {
        all.combine(h);
    }
    Ok(all.finalize())
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Elsewhere the values are converted from the map (see [`TensorReader::read_into`]).
#[cfg(not(unix))]
fn read_exact_at(_file: &std::fs::File, _buf: &mut [u8], _offset: u64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The element types a checkpoint may store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    F64,
    /// A block-quantized GGUF type (Q8_0, Q4_0, Q4_K, …), decoded to f32 when read.
    Quantized,
    Other,
}

impl StoredDType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
            StoredDType::F64 => 8,
            StoredDType::Quantized | StoredDType::Other => 0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            StoredDType::F32 => "f32",
            StoredDType::F16 => "f16",
            StoredDType::BF16 => "bf16",
            StoredDType::F64 => "f64",
            StoredDType::Quantized => "quantized",
            StoredDType::Other => "other",
        }
    }
}

/// Converts little-endian stored values to f32 into `dst` (as long as `bytes` holds values),
/// in loops the compiler vectorises.
pub(super) fn convert_into(bytes: &[u8], dtype: StoredDType, dst: &mut [f32]) {
    match dtype {
        StoredDType::F32 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        StoredDType::BF16 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                // bf16 is the top half of an f32: exact, as `half::bf16::to_f32`.
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        StoredDType::F16 => {
            let mut tmp = [half::f16::ZERO; 256];
            for (o, c) in dst.chunks_mut(256).zip(bytes.chunks(512)) {
                let t = &mut tmp[..o.len()];
                for (v, b) in t.iter_mut().zip(c.chunks_exact(2)) {
                    *v = half::f16::from_le_bytes([b[0], b[1]]);
                }
                // half's slice conversion uses the F16C instructions where the CPU has them.
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&*t, o);
            }
        }
        StoredDType::F64 => {
            for (o, c) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
        StoredDType::Quantized | StoredDType::Other => {}
    }
}

/// Converts one stored element (exactly its bytes) to f32.
pub(super) fn element_to_f32(c: &[u8], dtype: StoredDType) -> f32 {
    match (dtype, c) {
        (StoredDType::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
        (StoredDType::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
        (StoredDType::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
        (StoredDType::F64, &[a, b, c, d, e, f, g, h]) => {
            f64::from_le_bytes([a, b, c, d, e, f, g, h]) as f32
        }
        _ => f32::NAN,
    }
}

/// Drops the resident pages of a tensor we have converted, so the file's pages and the
/// converted copy are not both resident for the whole load.
pub(super) fn release_pages(mmap: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.div_ceil(PAGE) * PAGE;
    let last = (end / PAGE) * PAGE;
    if last > first {
        // SAFETY: the mapping is a read-only, private, file-backed map that is never written:
        // dropping its pages only means that the next read of them (through a slice still
        // borrowed from it, too) faults them in again from the file, with the same contents.
        unsafe {
            let _ = mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                first,
                last - first,
            );
        }
    }
}
