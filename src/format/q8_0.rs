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

pub(super) fn pack_panel(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
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
