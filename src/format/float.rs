//! The float formats f32, bf16 and f16: packing into panels (see
//! [`crate::kernels::layout`]), unpacking, their matrix–vector kernels, their table rows.

use super::RowCodec;
use crate::kernels::{self, bf16_lane_position, AlignedBuf, NR};
use half::{bf16, f16};

pub(super) fn pack_f32(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
    for (j, row) in rows.chunks_exact(in_dim).enumerate() {
        for (i, v) in row.iter().enumerate() {
            let at = 4 * (i * NR + j);
            dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

pub(super) fn pack_bf16(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
    for (j, row) in rows.chunks_exact(in_dim).enumerate() {
        let lane = bf16_lane_position(j);
        for (i, v) in row.iter().enumerate() {
            let at = 2 * (i * NR + lane);
            dst[at..at + 2].copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
        }
    }
}

pub(super) fn pack_f16(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
    for (j, row) in rows.chunks_exact(in_dim).enumerate() {
        for (i, v) in row.iter().enumerate() {
            let at = 2 * (i * NR + j);
            dst[at..at + 2].copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
        }
    }
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
