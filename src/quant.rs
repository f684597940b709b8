//! Weight formats of the big matrices, built once at load time from f32 values: packing into
//! the panel layout of [`crate::kernels`] (f32, bf16, f16) and 8-bit quantization (Q8_0).
//!
//! **Q8_0**: each weight row is cut into blocks of 32 inputs; a block keeps one scale
//! `d = max|w| / 127` (stored as bf16) and 32 signed bytes `q = round(w / d)`, so `w ≈ q·d`
//! with an error of at most `d/2` per weight — 8.5 bits per weight. The matrix–vector and
//! matrix–matrix kernels quantize the activations the same way (per block of 32, scale kept in
//! f32) and multiply bytes by bytes into 32-bit integer sums (AVX-512 VNNI `vpdpbusd` where
//! the CPU has it, plain integer code otherwise — the integer sums are identical), then scale
//! each block's sum by the two scales.
//!
//! **Q4_0**: the same blocks with 4-bit values, `q = round(w / d)` in −8..=7 where
//! `d = −m / 8` for the block's weight `m` of largest magnitude (ggml's Q4_0 rule), stored two
//! to a byte with a bf16 scale — 4.5 bits per weight; same kernels, the nibbles unpacked in
//! registers.

pub use crate::kernels::QK;
use crate::kernels::{
    bf16_lane_position, quant_scale, quant_weight, AlignedBuf, QuantKind, NR, Q4_BLOCK_BYTES,
    Q8_BLOCK_BYTES,
};
use half::{bf16, f16};

/// Panels needed for `out_dim` outputs.
pub fn n_panels(out_dim: usize) -> usize {
    out_dim.div_ceil(NR)
}

/// A packed weight format: its size, and how one panel is written from f32 rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    BF16,
    F16,
    Q8_0,
    Q4_0,
}

impl Format {
    /// Bytes of one panel of `in_dim` inputs.
    pub fn panel_bytes(self, in_dim: usize) -> usize {
        match self {
            Format::F32 => in_dim * NR * 4,
            Format::BF16 | Format::F16 => in_dim * NR * 2,
            Format::Q8_0 => q8_blocks(in_dim) * Q8_BLOCK_BYTES,
            Format::Q4_0 => q8_blocks(in_dim) * Q4_BLOCK_BYTES,
        }
    }

    /// Writes panel `dst` (zeroed, `panel_bytes` long) from `rows` (1..=32 rows of `in_dim`).
    fn pack_panel(self, rows: &[f32], in_dim: usize, dst: &mut [u8]) {
        match self {
            Format::F32 => {
                for (j, row) in rows.chunks_exact(in_dim).enumerate() {
                    for (i, v) in row.iter().enumerate() {
                        let at = 4 * (i * NR + j);
                        dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            Format::BF16 => {
                for (j, row) in rows.chunks_exact(in_dim).enumerate() {
                    let lane = bf16_lane_position(j);
                    for (i, v) in row.iter().enumerate() {
                        let at = 2 * (i * NR + lane);
                        dst[at..at + 2]
                            .copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }
            }
            Format::F16 => {
                for (j, row) in rows.chunks_exact(in_dim).enumerate() {
                    for (i, v) in row.iter().enumerate() {
                        let at = 2 * (i * NR + j);
                        dst[at..at + 2].copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                    }
                }
            }
            Format::Q8_0 => {
                let nb = q8_blocks(in_dim);
                for (j, row) in rows.chunks_exact(in_dim).enumerate() {
                    for b in 0..nb {
                        let (d, q) = quantize_block_q8_0(&row[b * QK..((b + 1) * QK).min(in_dim)]);
                        let blk = &mut dst[b * Q8_BLOCK_BYTES..(b + 1) * Q8_BLOCK_BYTES];
                        for (k, v) in q.iter().enumerate() {
                            blk[(k / 4) * 4 * NR + j * 4 + k % 4] = (*v as i16 + 128) as u8;
                        }
                        let s = QK * NR + 2 * bf16_lane_position(j);
                        blk[s..s + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                    }
                }
            }
            Format::Q4_0 => {
                let nb = q8_blocks(in_dim);
                for (j, row) in rows.chunks_exact(in_dim).enumerate() {
                    for b in 0..nb {
                        let (d, q) = quantize_block_q4_0(&row[b * QK..((b + 1) * QK).min(in_dim)]);
                        let blk = &mut dst[b * Q4_BLOCK_BYTES..(b + 1) * Q4_BLOCK_BYTES];
                        for (k, v) in q.iter().enumerate() {
                            let kk = k % 16;
                            let at = (kk / 4) * 4 * NR + j * 4 + kk % 4;
                            blk[at] |= if k < 16 { *v } else { *v << 4 };
                        }
                        let s = QK * NR / 2 + 2 * bf16_lane_position(j);
                        blk[s..s + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                    }
                }
            }
        }
    }

    /// The integer kernels' name for a quantized format.
    pub fn quant_kind(self) -> Option<QuantKind> {
        match self {
            Format::Q8_0 => Some(QuantKind::Q8_0),
            Format::Q4_0 => Some(QuantKind::Q4_0),
            _ => None,
        }
    }
}

/// Packs `w` (out × in, row-major f32) into panels of `format`.
pub fn pack(w: &[f32], out_dim: usize, in_dim: usize, format: Format) -> AlignedBuf {
    let pb = format.panel_bytes(in_dim);
    let mut buf = AlignedBuf::zeroed(n_panels(out_dim) * pb);
    let dst = buf.bytes_mut();
    for (p, rows) in w[..out_dim * in_dim].chunks(NR * in_dim).enumerate() {
        format.pack_panel(rows, in_dim, &mut dst[p * pb..(p + 1) * pb]);
    }
    buf
}

/// As [`pack`], consuming `w` and giving its memory back as the panels are written (last
/// panel first, the source shortened every few MiB), so that the f32 source and the packed
/// copy are never both whole in memory.
pub fn pack_owned(mut w: Vec<f32>, out_dim: usize, in_dim: usize, format: Format) -> AlignedBuf {
    const RELEASE_BYTES: usize = 8 << 20;
    let pb = format.panel_bytes(in_dim);
    let n = n_panels(out_dim);
    let mut buf = AlignedBuf::zeroed(n * pb);
    let dst = buf.bytes_mut();
    w.truncate(out_dim * in_dim);
    let mut kept = w.len();
    for p in (0..n).rev() {
        let start = p * NR * in_dim;
        format.pack_panel(&w[start..], in_dim, &mut dst[p * pb..(p + 1) * pb]);
        w.truncate(start);
        if (kept - start) * 4 >= RELEASE_BYTES {
            w.shrink_to_fit();
            kept = start;
        }
    }
    buf
}

/// Packs a matrix delivered in pieces: `read` is handed a sink, which it calls with each run
/// of values (row-major, `start` = index of the run's first value) until the whole matrix has
/// been delivered. Panels are written as soon as their rows are complete, so no f32 copy of
/// the whole matrix is ever held.
pub fn pack_streamed(
    out_dim: usize,
    in_dim: usize,
    format: Format,
    read: impl FnOnce(&mut dyn FnMut(usize, &[f32]) -> anyhow::Result<()>) -> anyhow::Result<()>,
) -> anyhow::Result<AlignedBuf> {
    let pb = format.panel_bytes(in_dim);
    let panel_values = NR * in_dim;
    let total = out_dim * in_dim;
    let mut buf = AlignedBuf::zeroed(n_panels(out_dim) * pb);
    let dst = buf.bytes_mut();
    // Rows of the panel being filled, when a run ends inside it.
    let mut pending: Vec<f32> = Vec::new();
    let mut next = 0usize;
    let mut sink = |start: usize, mut values: &[f32]| -> anyhow::Result<()> {
        if start != next || start + values.len() > total {
            anyhow::bail!(
                "matrix delivered out of order: {} values at {start}, expected {next} of {total}",
                values.len()
            );
        }
        next += values.len();
        let mut at = start;
        while !values.is_empty() {
            let p = at / panel_values;
            let panel_end = ((p + 1) * panel_values).min(total);
            let take = values.len().min(panel_end - at);
            let (head, rest) = values.split_at(take);
            let out = &mut dst[p * pb..(p + 1) * pb];
            if pending.is_empty() && at == p * panel_values && take == panel_end - at {
                format.pack_panel(head, in_dim, out);
            } else {
                pending.extend_from_slice(head);
                if pending.len() == panel_end - p * panel_values {
                    format.pack_panel(&pending, in_dim, out);
                    pending.clear();
                }
            }
            at += take;
            values = rest;
        }
        Ok(())
    };
    read(&mut sink)?;
    if next != total {
        anyhow::bail!("matrix delivered {next} of {total} values");
    }
    Ok(buf)
}

/// Quantization blocks per row of `in_dim` inputs (the last one padded with zeros).
pub fn q8_blocks(in_dim: usize) -> usize {
    in_dim.div_ceil(QK)
}

/// `v` rounded to the nearest integer, ties to even (as `f32::round_ties_even`, which
/// compiles to a library call on baseline x86-64), exact for `|v| < 2²²`: adding and
/// subtracting 1.5·2²³ leaves no fraction bits, and the default rounding mode is to nearest,
/// ties to even. Larger values (and NaN) come out as large values (NaN), which callers clamp.
#[inline]
pub fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// Quantizes one block of up to 32 weights (missing ones are zero): the bf16 scale and the
/// 32 quantized values.
pub fn quantize_block_q8_0(w: &[f32]) -> (bf16, [i8; QK]) {
    let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = bf16::from_f32(amax / 127.0);
    let df = d.to_f32();
    let id = if df > 0.0 && df.is_finite() {
        1.0 / df
    } else {
        0.0
    };
    let mut q = [0i8; QK];
    for (o, v) in q.iter_mut().zip(w) {
        *o = round_small(v * id).clamp(-127.0, 127.0) as i8;
    }
    (d, q)
}

/// Quantizes one block of up to 32 weights to 4 bits (missing ones are zero): the bf16 scale
/// and the 32 values stored offset binary (`q + 8`, 0..=15). As ggml's Q4_0, the scale maps
/// the weight of largest magnitude to −8, so that the whole range −8..=7 is used.
pub fn quantize_block_q4_0(w: &[f32]) -> (bf16, [u8; QK]) {
    let m = w
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = bf16::from_f32(m / -8.0);
    let df = d.to_f32();
    let id = if df != 0.0 && df.is_finite() {
        1.0 / df
    } else {
        0.0
    };
    let mut q = [8u8; QK];
    for (o, v) in q.iter_mut().zip(w) {
        *o = (round_small(v * id) + 8.0).clamp(0.0, 15.0) as u8;
    }
    (d, q)
}

/// Quantizes `w` (out × in, row-major) to Q8_0 panels.
pub fn pack_q8_0(w: &[f32], out_dim: usize, in_dim: usize) -> AlignedBuf {
    pack(w, out_dim, in_dim, Format::Q8_0)
}

/// The weights a quantized matrix stands for, unpacked to f32 (out × in): for tests and
/// measurements of the quantization error.
pub fn unpack_quant(kind: QuantKind, buf: &AlignedBuf, out_dim: usize, in_dim: usize) -> Vec<f32> {
    let nb = q8_blocks(in_dim);
    let bb = kind.block_bytes();
    let offset = match kind {
        QuantKind::Q8_0 => 128,
        QuantKind::Q4_0 => 8,
    };
    let src = buf.bytes();
    let mut w = vec![0.0f32; out_dim * in_dim];
    for o in 0..out_dim {
        let (p, j) = (o / NR, o % NR);
        for b in 0..nb {
            let blk = &src[(p * nb + b) * bb..(p * nb + b + 1) * bb];
            let d = quant_scale(kind, blk, j);
            for k in 0..QK.min(in_dim - b * QK) {
                let q = quant_weight(kind, blk, j, k) - offset;
                w[o * in_dim + b * QK + k] = q as f32 * d;
            }
        }
    }
    w
}

/// [`unpack_quant`] for Q8_0.
pub fn unpack_q8_0(buf: &AlignedBuf, out_dim: usize, in_dim: usize) -> Vec<f32> {
    unpack_quant(QuantKind::Q8_0, buf, out_dim, in_dim)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn q8_0_error_is_at_most_half_a_step_per_weight() {
        for (out_dim, in_dim) in [(33, 70), (32, 64), (5, 3), (64, 768)] {
            let w = pseudo(out_dim * in_dim, 9);
            let buf = pack_q8_0(&w, out_dim, in_dim);
            let back = unpack_q8_0(&buf, out_dim, in_dim);
            for o in 0..out_dim {
                for b in 0..q8_blocks(in_dim) {
                    let r = o * in_dim + b * QK..o * in_dim + ((b + 1) * QK).min(in_dim);
                    let amax = w[r.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    // Scale step amax/127, rounded to bf16 (relative error ≤ 2⁻⁸).
                    let step = amax / 127.0 * (1.0 + 1.0 / 256.0);
                    for i in r {
                        assert!(
                            (w[i] - back[i]).abs() <= 0.5 * step + 1e-7,
                            "{} vs {} (step {step})",
                            w[i],
                            back[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_from_an_owned_vector_gives_the_same_panels() {
        for fmt in [
            Format::F32,
            Format::BF16,
            Format::F16,
            Format::Q8_0,
            Format::Q4_0,
        ] {
            for (out_dim, in_dim) in [(33, 70), (64, 32), (1, 5), (3000, 700)] {
                let w = pseudo(out_dim * in_dim, 4);
                let a = pack(&w, out_dim, in_dim, fmt);
                let b = pack_owned(w, out_dim, in_dim, fmt);
                assert!(a.bytes() == b.bytes(), "{fmt:?} {out_dim}x{in_dim}");
            }
        }
    }

    #[test]
    fn streamed_packing_gives_the_same_panels_whatever_the_pieces() {
        for fmt in [Format::F32, Format::BF16, Format::Q8_0, Format::Q4_0] {
            let (out_dim, in_dim) = (70, 33);
            let w = pseudo(out_dim * in_dim, 8);
            let whole = pack(&w, out_dim, in_dim, fmt);
            for piece in [1, 7, 33, 32 * 33, 1000, out_dim * in_dim] {
                let b = pack_streamed(out_dim, in_dim, fmt, |sink| {
                    for (i, c) in w.chunks(piece).enumerate() {
                        sink(i * piece, c)?;
                    }
                    Ok(())
                })
                .unwrap();
                assert!(whole.bytes() == b.bytes(), "{fmt:?} pieces of {piece}");
            }
            // Short or out-of-order deliveries are errors.
            assert!(pack_streamed(out_dim, in_dim, fmt, |sink| sink(0, &w[..10])).is_err());
            assert!(pack_streamed(out_dim, in_dim, fmt, |sink| sink(5, &w[..10])).is_err());
        }
    }

    #[test]
    fn small_rounding_matches_round_ties_even() {
        for i in -100_000..100_000 {
            let v = i as f32 * 0.00731 + 0.5 * (i % 3) as f32;
            assert_eq!(round_small(v), v.round_ties_even(), "{v}");
        }
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.49, -0.0, 3e6, -3e6,
        ] {
            assert_eq!(round_small(v), v.round_ties_even(), "{v}");
        }
        assert!(round_small(f32::NAN).is_nan());
    }

    #[test]
    fn q4_0_error_is_at_most_a_step_per_weight() {
        for (out_dim, in_dim) in [(33, 70), (32, 64), (5, 3)] {
            let w = pseudo(out_dim * in_dim, 10);
            let buf = pack(&w, out_dim, in_dim, Format::Q4_0);
            let back = unpack_quant(QuantKind::Q4_0, &buf, out_dim, in_dim);
            for o in 0..out_dim {
                for b in 0..q8_blocks(in_dim) {
                    let r = o * in_dim + b * QK..o * in_dim + ((b + 1) * QK).min(in_dim);
                    let amax = w[r.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let step = amax / 8.0;
                    for i in r {
                        // Half a step, or about a whole one at the clamped +8 end (the
                        // largest weight of the other sign than the block's extreme).
                        let tol = 1.1 * step + 1e-7;
                        assert!((w[i] - back[i]).abs() <= tol, "{} vs {}", w[i], back[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let (d, q) = quantize_block_q8_0(&[0.0; 32]);
        assert_eq!(d.to_f32(), 0.0);
        assert!(q.iter().all(|&v| v == 0));
    }
}
