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

pub(super) fn pack_panel(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
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

pub(super) fn gemv(w: &AlignedBuf, p0: usize, xq: &QuantizedRows, y: &mut [f32]) {
    let pb = xq.blocks * Q4_BLOCK_BYTES;
    kernels::gemv_q4_0(&w.bytes()[p0 * pb..], xq.blocks, xq, 0, y);
}
