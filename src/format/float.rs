//! The float formats f32, bf16 and f16: packing into panels (see
//! [`crate::kernels::layout`]), unpacking, their matrix–vector kernels, their table rows.

use super::RowCodec;
use crate::kernels::{self, bf16_lane_position, AlignedBuf, NR};
use half::{bf16, f16};

/// Inputs per step of the packers' transposes: the `STEP × 32` output values of a step stay
/// in the L1 cache while the 32 rows are read `STEP` values at a time.
const STEP: usize = 16;

/// Writes `dst` (a panel of 32 lanes of `W` bytes per input) from `rows`: lane `lane(j)` of
/// input `i` gets `enc(rows[j][i])`, blocked by [`STEP`] inputs.
#[inline(always)]
fn transpose<const W: usize>(
    rows: &[f32],
    in_dim: usize,
    dst: &mut [u8],
    lane: impl Fn(usize) -> usize,
    enc: impl Fn(f32) -> [u8; W],
) {
    let n = rows.len() / in_dim;
    for (s, out) in dst[..in_dim * NR * W].chunks_mut(STEP * NR * W).enumerate() {
        let i0 = s * STEP;
        let i1 = (i0 + STEP).min(in_dim);
        for (j, row) in rows.chunks_exact(in_dim).take(n).enumerate() {
            let l = lane(j);
            for (o, v) in out.chunks_exact_mut(NR * W).zip(&row[i0..i1]) {
                o[l * W..l * W + W].copy_from_slice(&enc(*v));
            }
        }
    }
}

super::pack::wide_packer! {
pub(super) fn pack_f32(rows, in_dim, dst) {
    transpose::<4>(rows, in_dim, dst, |j| j, |v| v.to_le_bytes());
}
}

/// `half::bf16::from_f32(v).to_bits()` without branches (so that it vectorises): round to
/// nearest even, and a NaN keeps its top bits with the quiet bit set.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let up = ((x & 0x8000 != 0) & (x & 0x1_7FFF != 0)) as u32;
    let rounded = ((x >> 16) + up) as u16;
    let nan = ((x >> 16) | 0x40) as u16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }
}

super::pack::wide_packer! {
pub(super) fn pack_bf16(rows, in_dim, dst) {
    transpose::<2>(rows, in_dim, dst, bf16_lane_position, |v| {
        bf16_bits(v).to_le_bytes()
    });
}
}

pub(super) fn pack_f16(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
    transpose::<2>(
        rows,
        in_dim,
        dst,
        |j| j,
        |v| f16::from_f32(v).to_bits().to_le_bytes(),
    );
}

pub(super) fn unpack_f32(w: &AlignedBuf, p: usize, in_dim: usize, dst: &mut [f32]) {
    let len = in_dim * NR;
    dst.copy_from_slice(&w.f32s()[p * len..(p + 1) * len]);
}

pub(super) fn unpack_bf16(w: &AlignedBuf, p: usize, in_dim: usize, dst: &mut [f32]) {
    let len = in_dim * NR;
    kernels::bf16_panel_to_f32(&w.u16s()[p * len..(p + 1) * len], dst);
}

pub(super) fn unpack_f16(w: &AlignedBuf, p: usize, in_dim: usize, dst: &mut [f32]) {
    let len = in_dim * NR;
    kernels::f16_panel_to_f32(&w.u16s()[p * len..(p + 1) * len], dst);
}

pub(super) fn gemv_f32(w: &AlignedBuf, p0: usize, k: usize, x: &[f32], y: &mut [f32]) {
    kernels::gemv_f32(&w.f32s()[p0 * k * NR..], k, x, y);
}

pub(super) fn gemv_bf16(w: &AlignedBuf, p0: usize, k: usize, x: &[f32], y: &mut [f32]) {
    kernels::gemv_bf16(&w.u16s()[p0 * k * NR..], k, x, y);
}

pub(super) fn gemv_f16(w: &AlignedBuf, p0: usize, k: usize, x: &[f32], y: &mut [f32]) {
    kernels::gemv_f16(&w.u16s()[p0 * k * NR..], k, x, y);
}

/// Table rows of f32 values.
pub(super) const F32_ROWS: RowCodec = RowCodec {
    block_values: 1,
    block_bytes: 4,
    encode: |row, out| {
        for v in row {
            out.extend_from_slice(&v.to_le_bytes());
        }
    },
    decode: |bytes, out| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    },
};

/// Table rows of bf16 values.
pub(super) const BF16_ROWS: RowCodec = RowCodec {
    block_values: 1,
    block_bytes: 2,
    encode: |row, out| {
        for v in row {
            out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
        }
    },
    decode: |bytes, out| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        }
    },
};

/// Table rows of f16 values.
pub(super) const F16_ROWS: RowCodec = RowCodec {
    block_values: 1,
    block_bytes: 2,
    encode: |row, out| {
        for v in row {
            out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
        }
    },
    decode: |bytes, out| {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        }
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pseudo;

    #[test]
    fn bf16_rounding_is_halfs() {
        let mut x = 0x9E37_79B9u32;
        let specials = [
            0u32,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0001,
            0xFF80_0001,
            0x7F7F_FFFF,
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x0000_8000,
            0x0001_8000,
            0x7F7F_8000,
        ];
        for i in 0..200_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let bits = if (i as usize) < specials.len() {
                specials[i as usize]
            } else {
                x
            };
            let v = f32::from_bits(bits);
            assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits(), "{bits:#x}");
        }
    }

    #[test]
    fn the_blocked_packers_match_the_element_by_element_ones() {
        type Packer = fn(&[f32], usize, &mut [u8]);
        type Case = (Packer, usize, fn(usize) -> usize, fn(f32) -> Vec<u8>);
        let cases: [Case; 3] = [
            (pack_f32, 4, |j| j, |v| v.to_le_bytes().to_vec()),
            (pack_bf16, 2, bf16_lane_position, |v| {
                bf16::from_f32(v).to_bits().to_le_bytes().to_vec()
            }),
            (
                pack_f16,
                2,
                |j| j,
                |v| f16::from_f32(v).to_bits().to_le_bytes().to_vec(),
            ),
        ];
        for (pack, w, lane, enc) in cases {
            for (rows, in_dim) in [(32, 70), (5, 16), (1, 3), (32, 768), (17, 33)] {
                let v = pseudo(rows * in_dim, 3);
                let mut got = vec![0u8; in_dim * NR * w];
                pack(&v, in_dim, &mut got);
                let mut want = vec![0u8; in_dim * NR * w];
                for j in 0..rows {
                    for i in 0..in_dim {
                        let at = w * (i * NR + lane(j));
                        want[at..at + w].copy_from_slice(&enc(v[j * in_dim + i]));
                    }
                }
                assert!(got == want, "{rows}x{in_dim} ({w} bytes)");
            }
        }
    }
}
