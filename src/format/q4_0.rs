//! Q4_0: blocks of 32 weights, one bf16 scale and 32 4-bit values each (see the module notes
//! of [`crate::format`] and the block layout, [`crate::kernels::Q4_BLOCK_BYTES`]).

use crate::kernels::{
    self, bf16_lane_position, round_small, AlignedBuf, QuantizedRows, NR, Q4_BLOCK_BYTES, QK,
};
use half::bf16;

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

/// The scale of a whole block as [`quantize_block_q4_0`] computes it, and its inverse (0 when
/// the scale is 0 or not finite), written so that the compiler vectorises it.
#[inline(always)]
fn full_block_scale(w: &[f32; QK]) -> (bf16, f32) {
    let amax = super::q8_0::max_abs(w);
    // The weight of largest magnitude, the first one if several tie (NaNs never win, and an
    // all-zero block gives +0), as the fold in `quantize_block_q4_0`; its index by a minimum
    // over the lanes rather than a search (whose exit, at a random place, the branch
    // predictor misses once per block).
    let first = w
        .iter()
        .enumerate()
        .map(|(i, v)| if v.abs() == amax { i as u32 } else { QK as u32 })
        .fold(QK as u32, u32::min) as usize;
    let m = if amax > 0.0 {
        w.get(first).copied().unwrap_or(0.0)
    } else {
        0.0
    };
    let d = bf16::from_f32(m / -8.0);
    let df = d.to_f32();
    let id = if df != 0.0 && df.is_finite() {
        1.0 / df
    } else {
        0.0
    };
    (d, id)
}

/// The 4-bit values of a whole block for the inverse scale `id`, as
/// [`quantize_block_q4_0`] computes them (selects, no float-to-integer conversion).
#[inline(always)]
fn full_block_values(w: &[f32; QK], id: f32) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (o, v) in q.iter_mut().zip(w) {
        *o = super::q8_0::small_int_bits((round_small(v * id) + 8.0).clamp(0.0, 15.0));
    }
    q
}

super::pack::wide_packer! {
pub(super) fn pack_panel(rows, in_dim, dst) {
    for (j, row) in rows.chunks_exact(in_dim).enumerate() {
        let s = QK * NR / 2 + 2 * bf16_lane_position(j);
        let put = |b: usize, d: bf16, q: [u8; QK]| {
            let blk = &mut dst[b * Q4_BLOCK_BYTES..(b + 1) * Q4_BLOCK_BYTES];
            // Byte (g, j, i): input 4g + i in the low nibble, 16 + 4g + i in the high one
            // (four bytes at once: nibbles shifted by 4 stay within their byte).
            for g in 0..4 {
                let at = g * 4 * NR + j * 4;
                let lo = u32::from_le_bytes([q[4 * g], q[4 * g + 1], q[4 * g + 2], q[4 * g + 3]]);
                let hi = u32::from_le_bytes([
                    q[16 + 4 * g],
                    q[17 + 4 * g],
                    q[18 + 4 * g],
                    q[19 + 4 * g],
                ]);
                blk[at..at + 4].copy_from_slice(&(lo | hi << 4).to_le_bytes());
            }
            blk[s..s + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        };
        super::pack::quantize_row(
            row,
            full_block_scale,
            full_block_values,
            quantize_block_q4_0,
            put,
        );
    }
}
}

pub(super) fn gemv(w: &AlignedBuf, p0: usize, xq: &QuantizedRows, y: &mut [f32]) {
    let pb = xq.blocks * Q4_BLOCK_BYTES;
    kernels::gemv_q4_0(&w.bytes()[p0 * pb..], xq.blocks, xq, 0, y);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::testing::pseudo;

    /// The packer as first written (one block at a time through `quantize_block_q4_0`, nibbles
    /// or-ed in): the reference the fast one must match byte for byte.
    fn pack_panel_reference(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
        let nb = in_dim.div_ceil(QK);
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

    /// Blocks that probe the edges: ties of magnitude of both signs, zeros of both signs,
    /// exact halves, NaN and infinities, tiny and huge values.
    pub(in crate::format) fn awkward_rows(in_dim: usize, rows: usize) -> Vec<f32> {
        let mut w = pseudo(in_dim * rows, 21);
        let specials = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            1.5,
            -2.5,
            7.0,
            -8.0,
            1e-30,
            -1e30,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0,
            -3.0,
            0.25,
        ];
        for (r, row) in w.chunks_mut(in_dim).enumerate() {
            match r % 6 {
                0 => row.iter_mut().for_each(|v| *v = 0.0),
                1 => row
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = specials[(i * 7 + r) % specials.len()]),
                2 => row.iter_mut().enumerate().for_each(|(i, v)| {
                    *v = if i % 2 == 0 { 4.0 } else { -4.0 } * (1 + i % 3) as f32 / 3.0
                }),
                3 => row.iter_mut().for_each(|v| *v *= 1e-3),
                _ => {}
            }
        }
        w
    }

    #[test]
    fn the_fast_packer_matches_the_reference_byte_for_byte() {
        for in_dim in [32, 64, 70, 5, 768] {
            for rows in [1, 7, 32] {
                let w = awkward_rows(in_dim, rows);
                let pb = in_dim.div_ceil(QK) * Q4_BLOCK_BYTES;
                let (mut a, mut b) = (vec![0u8; pb], vec![0u8; pb]);
                pack_panel(&w, in_dim, &mut a);
                pack_panel_reference(&w, in_dim, &mut b);
                assert!(a == b, "{rows}x{in_dim}");
            }
        }
    }
}
