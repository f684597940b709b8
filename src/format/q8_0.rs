//! Q8_0: blocks of 32 weights, one bf16 scale and 32 signed bytes each (see the module notes
//! of [`crate::format`] and the block layout, [`crate::kernels::Q8_BLOCK_BYTES`]).

use super::RowCodec;
use crate::kernels::{
    self, bf16_lane_position, round_small, AlignedBuf, QuantizedRows, NR, Q8_BLOCK_BYTES, QK,
};
use half::bf16;

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

/// The largest `|v|` of a block (+0 for an all-zero block; NaNs never win, as with `f32::max`),
/// in eight independent lanes so that the compiler vectorises it. Maximum is exact, so the
/// order does not change the result.
#[inline(always)]
pub(super) fn max_abs(w: &[f32; QK]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for c in w.chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    lanes.iter().fold(0.0f32, |m, &a| if a > m { a } else { m })
}

/// The low byte of `x`, an integer-valued float in −128..=255 (or NaN, which gives 0), as
/// `x as i32 as u8` — by adding 1.5·2²³, which leaves the integer in the low mantissa bits,
/// so that no float-to-integer conversion (which the compiler keeps scalar) is needed.
#[inline(always)]
pub(super) fn small_int_bits(x: f32) -> u8 {
    let x = if x.is_nan() { 0.0 } else { x };
    (x + 12_582_912.0).to_bits() as u8
}

/// The scale of a whole block as [`quantize_block_q8_0`] computes it, and its inverse (0 when
/// the scale is 0 or not finite), written so that the compiler vectorises it.
#[inline(always)]
fn full_block_scale(w: &[f32; QK]) -> (bf16, f32) {
    let d = bf16::from_f32(max_abs(w) / 127.0);
    let df = d.to_f32();
    let id = if df > 0.0 && df.is_finite() {
        1.0 / df
    } else {
        0.0
    };
    (d, id)
}

/// The values of a whole block for the inverse scale `id`, as [`quantize_block_q8_0`]
/// computes them, stored offset binary (`q + 128`).
#[inline(always)]
fn full_block_values(w: &[f32; QK], id: f32) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (o, v) in q.iter_mut().zip(w) {
        *o = small_int_bits(round_small(v * id).clamp(-127.0, 127.0)) ^ 0x80;
    }
    q
}

super::pack::wide_packer! {
pub(super) fn pack_panel(rows, in_dim, dst) {
    for (j, row) in rows.chunks_exact(in_dim).enumerate() {
        let s = QK * NR + 2 * bf16_lane_position(j);
        let put = |b: usize, d: bf16, q: [u8; QK]| {
            let blk = &mut dst[b * Q8_BLOCK_BYTES..(b + 1) * Q8_BLOCK_BYTES];
            // Bytes (g, j, 0..4): inputs 4g..4g + 4.
            for (g, four) in q.chunks_exact(4).enumerate() {
                let at = g * 4 * NR + j * 4;
                blk[at..at + 4].copy_from_slice(four);
            }
            blk[s..s + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        };
        let partial = |w: &[f32]| {
            let (d, q) = quantize_block_q8_0(w);
            (d, q.map(|v| (v as u8) ^ 0x80))
        };
        super::pack::quantize_row(row, full_block_scale, full_block_values, partial, put);
    }
}
}

pub(super) fn gemv(w: &AlignedBuf, p0: usize, xq: &QuantizedRows, y: &mut [f32]) {
    let pb = xq.blocks * Q8_BLOCK_BYTES;
    kernels::gemv_q8_0(&w.bytes()[p0 * pb..], xq.blocks, xq, 0, y);
}

/// Table rows in Q8_0: per block of 32 values, the 32 quantized values then the bf16 scale.
pub(super) const ROWS: RowCodec = RowCodec {
    block_values: QK,
    block_bytes: QK + 2,
    encode: |row, out| {
        for b in row.chunks(QK) {
            let (s, qs) = quantize_block_q8_0(b);
            out.extend(qs.iter().map(|&q| q as u8));
            out.extend_from_slice(&s.to_bits().to_le_bytes());
        }
    },
    decode: |bytes, out| {
        for (o, blk) in out.chunks_mut(QK).zip(bytes.chunks_exact(QK + 2)) {
            let s = bf16::from_bits(u16::from_le_bytes([blk[QK], blk[QK + 1]])).to_f32();
            for (x, v) in o.iter_mut().zip(&blk[..QK]) {
                *x = *v as i8 as f32 * s;
            }
        }
    },
};

#[cfg(test)]
mod tests {
    use super::super::q4_0::tests::awkward_rows;
    use super::*;

    /// The packer as first written: the reference the fast one must match byte for byte.
    fn pack_panel_reference(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
        let nb = in_dim.div_ceil(QK);
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

    #[test]
    fn small_int_bits_is_a_conversion() {
        for i in -128..=255 {
            assert_eq!(small_int_bits(i as f32), i as u8, "{i}");
        }
        assert_eq!(small_int_bits(f32::NAN), 0);
        assert_eq!(small_int_bits(-0.0), 0);
    }

    #[test]
    fn the_fast_packer_matches_the_reference_byte_for_byte() {
        for in_dim in [32, 64, 70, 5, 768] {
            for rows in [1, 7, 32] {
                let w = awkward_rows(in_dim, rows);
                let pb = in_dim.div_ceil(QK) * Q8_BLOCK_BYTES;
                let (mut a, mut b) = (vec![0u8; pb], vec![0u8; pb]);
                pack_panel(&w, in_dim, &mut a);
                pack_panel_reference(&w, in_dim, &mut b);
                assert!(a == b, "{rows}x{in_dim}");
            }
        }
    }
}
