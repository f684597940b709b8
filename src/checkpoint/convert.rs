//! Stored element types, their conversion to f32, and [`TensorReader`]: random access to one
//! plainly stored tensor, converted range by range straight from the memory map.

use anyhow::{bail, Result};

/// Random access to one plainly stored tensor of a [`Checkpoint`] (see
/// [`Checkpoint::reader`]): any range of its values converted to f32 into a caller's buffer,
/// without allocating, from several threads at once.
pub struct TensorReader<'a> {
    /// The tensor's stored bytes.
    pub(super) bytes: &'a [u8],
    pub(super) dtype: StoredDType,
    /// Offset of `bytes` in the file (to release its pages).
    pub(super) base: usize,
    pub(super) map: Option<&'a memmap2::Mmap>,
}

impl Drop for TensorReader<'_> {
    /// Gives back every page of the tensor still mapped: ranges read on several threads at
    /// once leave a few behind where they meet (see [`TensorReader::read_into`]), and they
    /// must not add up over a whole model.
    fn drop(&mut self) {
        if let Some(m) = self.map {
            let end = (self.base + self.bytes.len())
                .next_multiple_of(4096)
                .min(m.len());
            release_pages(m, self.base & !4095, end);
        }
    }
}

impl TensorReader<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size_in_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Converts values `start .. start + dst.len()` (row-major) into `dst`, then gives back
    /// the file pages they were read from (`MADV_DONTNEED`), so that a load does not keep the
    /// file resident beside the converted weights. As [`Checkpoint::read_f32_chunks`], from
    /// the page the range starts in (shared with the range before, read already when ranges
    /// come in order) to the last page it fills: dropping the page it ends in would have the
    /// next range's first fault map the kernel's fault-around window back in behind it, pages
    /// nobody releases again (measured: +120 MB of file pages resident at 0.1B). A page a
    /// neighbouring range on another thread still reads is read again from the page cache,
    /// never lost.
    pub fn read_into(&self, start: usize, dst: &mut [f32]) -> Result<()> {
        let es = self.dtype.size_in_bytes();
        let Some(src) = start
            .checked_add(dst.len())
            .and_then(|end| self.bytes.get(start * es..end * es))
        else {
            bail!(
                "values {start}..+{} lie outside a tensor of {}",
                dst.len(),
                self.len()
            );
        };
        if let Some(m) = self.map {
            // Map the range's pages in one call rather than a fault per 64 KiB (a refusal,
            // on kernels before 5.14, changes only speed).
            let from = (self.base + start * es) & !4095;
            let _ = m.advise_range(
                memmap2::Advice::PopulateRead,
                from,
                self.base + start * es + src.len() - from,
            );
        }
        convert_into(src, self.dtype, dst);
        if let Some(m) = self.map {
            let from = self.base + start * es;
            release_pages(m, from & !4095, from + src.len());
        }
        Ok(())
    }
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

/// Converts little-endian stored values to f32.
pub(super) fn bytes_to_f32(bytes: &[u8], dtype: StoredDType) -> Vec<f32> {
    let n = match dtype.size_in_bytes() {
        0 => 0,
        es => bytes.len() / es,
    };
    let mut out = vec![0.0f32; n];
    convert_into(bytes, dtype, &mut out);
    out
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
