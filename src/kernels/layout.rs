//! Packed weight panels: the layout every weight matrix is kept in, which the packers of
//! [`crate::format`] write and every kernel reads.
//!
//! A weight matrix W (out × in) is cut into panels of NR = 32 consecutive output rows. Within a
//! panel the weights are stored input-major: for each input k, the 32 weights `W[p·32 + j][k]`
//! (j = 0..32) lie next to each other, so one 64- or 128-byte load gives the weights of one input
//! for 32 outputs. A matrix–vector product streams each panel once (32 outputs accumulated in
//! two 16-lane registers, no horizontal sums); a matrix–matrix product keeps one panel in cache
//! and runs a register-tiled micro-kernel over blocks of token rows against it. Rows past `out`
//! in the last panel are zero.
//!
//! Layouts of one input row of a panel (`k` fixed), by format:
//! - f32: 32 × f32, output order.
//! - bf16: 32 × u16, interleaved: u16 number 2i is output i, number 2i+1 is output 16+i, so a
//!   64-byte load read as sixteen 32-bit lanes gives outputs 0..16 in the low halves (shift left
//!   16 to widen) and outputs 16..32 in the high halves (mask the low half off). The bf16
//!   dot-product kernel (`vdpbf16ps`, which wants two inputs of one output per 32-bit lane)
//!   recombines the rows of inputs 2q and 2q + 1 in registers: their low halves give outputs
//!   0..16, their high halves outputs 16..32.
//! - f16: 32 × u16, output order (the hardware widens 16 at a time).
//! - Q8_0: see [`Q8_BLOCK_BYTES`]: quantized per block of QK = 32 inputs.
//! - Q4_0: see [`Q4_BLOCK_BYTES`]: as Q8_0, two weights to a byte.

/// Output rows per panel.
pub const NR: usize = 32;
/// Inputs per quantization block.
pub const QK: usize = 32;
/// Bytes of one Q8_0 block of a panel (32 outputs × 32 inputs): first 1,024 weight bytes laid
/// out `[g: 8][j: 32][i: 4]` — output j's weights for inputs 4g..4g+4, each stored offset
/// binary (`q + 128`, q in −127..=127) — then the 32 block scales as bf16, interleaved as in a
/// bf16 panel row. Four consecutive inputs of one output share a 32-bit lane, which is the
/// operand shape of the AVX-512 VNNI instruction `vpdpbusd`.
pub const Q8_BLOCK_BYTES: usize = QK * NR + 2 * NR;

/// Bytes of one Q4_0 block of a panel (32 outputs × 32 inputs): first 512 bytes of 4-bit
/// weights laid out `[g: 4][j: 32][i: 4]` — the low nibble of byte (g, j, i) is output j's
/// weight for input 4g + i, the high nibble its weight for input 16 + 4g + i, each stored
/// offset binary (`q + 8`, q in −8..=7) — then the 32 block scales as bf16, interleaved as
/// in a bf16 panel row. Masking or shifting a 64-byte load gives the `vpdpbusd` operand of
/// four inputs for 16 outputs, as in Q8_0.
pub const Q4_BLOCK_BYTES: usize = QK * NR / 2 + 2 * NR;

/// Position within a bf16 panel row (or Q8_0 scale row) of output `j` (0..32).
#[inline]
pub fn bf16_lane_position(j: usize) -> usize {
    if j < 16 {
        2 * j
    } else {
        2 * (j - 16) + 1
    }
}

/// The block layout of a block-quantized format, as the integer kernels read it: one block is
/// 32 outputs × [`QK`] inputs of unsigned (offset binary) weights, then 32 bf16 scales.
pub trait QuantBlock {
    /// Bytes of one block of a panel.
    const BYTES: usize;
    /// The weights' storage offset (128 for bytes, 8 for nibbles), as a shift.
    const OFFSET_SHIFT: u32;
    /// The unsigned (offset) weight of output `j`, input `k` (< 32) in block `blk`.
    fn weight(blk: &[u8], j: usize, k: usize) -> i32;
    /// The bf16 scale of output `j` in block `blk`.
    #[inline]
    fn scale(blk: &[u8], j: usize) -> f32 {
        let at = Self::BYTES - 2 * NR + 2 * bf16_lane_position(j);
        f32::from_bits((u16::from_le_bytes([blk[at], blk[at + 1]]) as u32) << 16)
    }
}

/// The Q8_0 block ([`Q8_BLOCK_BYTES`]).
pub struct Q8_0Block;

impl QuantBlock for Q8_0Block {
    const BYTES: usize = Q8_BLOCK_BYTES;
    const OFFSET_SHIFT: u32 = 7;
    #[inline]
    fn weight(blk: &[u8], j: usize, k: usize) -> i32 {
        blk[(k / 4) * 4 * NR + j * 4 + k % 4] as i32
    }
}

/// The Q4_0 block ([`Q4_BLOCK_BYTES`]).
pub struct Q4_0Block;

impl QuantBlock for Q4_0Block {
    const BYTES: usize = Q4_BLOCK_BYTES;
    const OFFSET_SHIFT: u32 = 3;
    #[inline]
    fn weight(blk: &[u8], j: usize, k: usize) -> i32 {
        let kk = k % 16;
        let byte = blk[(kk / 4) * 4 * NR + j * 4 + kk % 4];
        (if k < 16 { byte & 15 } else { byte >> 4 }) as i32
    }
}
