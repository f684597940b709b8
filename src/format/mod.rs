//! The weight formats: what the big matrices (and the embedding) are kept in for compute.
//! Activations are always f32.
//!
//! A [`Format`] is one of f32, f16, bf16, or the block-quantized Q8_0 and Q4_0 (built at load
//! time from f32 values) — and bf16-exact and f16-exact, the way an f32 model holds a matrix
//! stored in bf16 or f16 (half the bytes, f32's products and sums; see
//! [`crate::models::held_format`]). Everything the rest of the code needs to know about a format is in
//! one row of one table, its [`Traits`] ([`Format::traits`]), in the spirit of ggml's type
//! traits: its name, bits per weight, block size and panel bytes; how a panel of it is packed
//! from f32 and unpacked back; which kernels multiply by it; how an embedding table keeps its
//! rows. `Linear` and `RowTable` (in [`crate::ops`]) consult the table and never match on a
//! format. The panel layout itself, which the kernels read, is described in
//! [`crate::kernels::layout`].
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
//!
//! To add a format: a variant of [`Format`], its row in the table below, a file with its
//! packing (and, for a new block layout, its kernels in [`crate::kernels`]).

mod float;
mod pack;
mod q4_0;
mod q8_0;

pub use pack::{pack, pack_at, pack_at_in, pack_owned, pack_streamed, unpack, ReadAt};
pub use q4_0::quantize_block_q4_0;
pub use q8_0::quantize_block_q8_0;

use crate::kernels::{AlignedBuf, Half, QuantizedRows, NR, QK};
use anyhow::{bail, Result};

/// The format weight matrices are kept in for compute (activations are always f32):
/// a float type, or a block-quantized format built at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    F16,
    BF16,
    /// 8-bit blocks of 32 weights with one bf16 scale each (8.5 bits per weight).
    Q8_0,
    /// 4-bit blocks of 32 weights with one bf16 scale each (4.5 bits per weight).
    Q4_0,
    /// Not a format of its own: how an f32 model holds a matrix whose stored values are all
    /// bf16 (an official checkpoint's), in half the bytes and without loss — bf16 panels, every
    /// product in f32 as [`Format::F32`]'s (the weights widened exactly, never the activations
    /// rounded). Chosen at load time per tensor; never named on the command line.
    BF16Exact,
    /// The same for a matrix stored in f16: f16 panels, every product as [`Format::F32`]'s.
    F16Exact,
}

/// Everything about one format, as one row of the table.
pub struct Traits {
    /// The format this row describes (the table is in the order of the variants).
    pub format: Format,
    /// Its name on the command line and in reports.
    pub name: &'static str,
    /// Other spellings [`Format::from_str`](std::str::FromStr) accepts.
    pub aliases: &'static [&'static str],
    /// Bits per weight in memory, scales included.
    pub bits_per_weight: f64,
    /// Whether it is block-quantized (the formats `--quant` takes).
    pub quantized: bool,
    /// Inputs per block of a panel: the unit packing writes (1 for the float formats,
    /// [`QK`] for the block-quantized ones; a row's last block is padded with zeros).
    pub block_inputs: usize,
    /// Bytes of one block of a panel: 32 outputs × `block_inputs` inputs, scales included.
    pub block_bytes: usize,
    /// Writes one panel (zeroed, [`Format::panel_bytes`] long) from 1..=32 rows of `in_dim`
    /// values (the rows of a panel's outputs, row-major).
    pub pack_panel: fn(rows: &[f32], in_dim: usize, dst: &mut [u8]),
    /// Reads panel `p` of a packed matrix of `in_dim` inputs back to f32 as the kernels see
    /// it (after rounding or quantization): `in_dim × 32`, input-major, in output order.
    pub unpack_panel: fn(w: &AlignedBuf, p: usize, in_dim: usize, dst: &mut [f32]),
    /// The kernels that multiply by its panels.
    pub kernel: Kernel,
    /// Products of at most this many rows take the matrix–vector kernel once per row; more
    /// rows take the matrix–matrix kernel, which reads the weights once for all of them.
    /// Measured (`scripts/bench_serve.py`, 2 streams, 0.1B shape, AMD Zen 4): f32 and q8_0
    /// gain from the matrix–matrix kernel at 2 rows (107 → 153 and 324 → 391 tok/s), bf16,
    /// whose panels it widens to f32 first, loses half (186 → 79) and q4_0 a little
    /// (443 → 402): 1 for f32 and q8_0, 2 for the others.
    pub gemv_max_rows: usize,
    /// How an embedding table keeps rows of it.
    pub rows: RowCodec,
    /// The float format a model in this format keeps its low-rank (LoRA) matrices in: the
    /// format itself for the float formats, bf16 for the quantized ones (a LoRA's few
    /// thousand weights per output feed the decay and the gates, whose exponentials would
    /// magnify block-quantization error). As f32 they were 13% of a q4_0 1.5B decode step's
    /// weight bytes and 21% of a 0.1B one; as bf16 they read half that.
    pub low_rank: Format,
    /// `Some(f)`: a holding of format `f`'s matrices rather than a format to choose (see
    /// [`Format::BF16Exact`]): not parsed from a name.
    pub holds: Option<Format>,
}

/// Which kernel family multiplies by a format's panels, and its entry points for the format.
#[derive(Clone, Copy)]
pub enum Kernel {
    /// Float weights against f32 activations: the matrix–vector product reads the panels as
    /// they are; the matrix–matrix product runs on f32 panels — read in place when the
    /// panels are f32 (`in_place`); for 16-bit panels (`wide`) widened row by row in registers
    /// where the CPU has that kernel ([`crate::kernels::has_wide_gemm`], the same sums); else
    /// widened with `unpack_panel`, one panel at a time — or, for bf16
    /// panels that may use them (`bf16_dot`) where the CPU has bf16 dot products
    /// ([`crate::kernels::has_bf16_dot`]), on the panels as they are, with the activations
    /// rounded to bf16 for that product.
    Float {
        gemv: FloatGemv,
        in_place: bool,
        wide: Option<Half>,
        bf16_dot: bool,
    },
    /// Block-quantized weights against activations quantized to 8 bits per block of 32
    /// ([`QuantizedRows`]), multiplied in integers.
    Int8 {
        gemv: Int8Gemv,
        gemm_panel: Int8GemmPanel,
    },
}

/// `y = W·x` over the panels `p0..` of `w` (`k` inputs each), writing the first `y.len()`
/// outputs.
pub type FloatGemv = fn(w: &AlignedBuf, p0: usize, k: usize, x: &[f32], y: &mut [f32]);
/// As [`FloatGemv`] with row 0 of the quantized activations `xq`.
pub type Int8Gemv = fn(w: &AlignedBuf, p0: usize, xq: &QuantizedRows, y: &mut [f32]);
/// One panel against every row of `xq`: `crate::kernels::gemm_panel_q8_0` and its kind.
///
/// # Safety
/// As `crate::kernels::gemm_panel_q8_0`, for the format's blocks.
pub type Int8GemmPanel =
    unsafe fn(xq: &QuantizedRows, panel: *const u8, y: *mut f32, ldy: usize, n_valid: usize);

/// How an embedding table (`crate::ops::RowTable`) keeps its rows: each row is encoded on its
/// own into `row_bytes(cols)` bytes and decoded back to f32 on lookup.
pub struct RowCodec {
    /// Values per block of a row (the last one padded), and the bytes of a block.
    pub block_values: usize,
    pub block_bytes: usize,
    /// Appends one row's bytes to `out`.
    pub encode: fn(row: &[f32], out: &mut Vec<u8>),
    /// Decodes one row's bytes into `out` (`cols` long).
    pub decode: fn(bytes: &[u8], out: &mut [f32]),
}

impl RowCodec {
    /// Bytes of one encoded row of `cols` values.
    pub fn row_bytes(&self, cols: usize) -> usize {
        cols.div_ceil(self.block_values) * self.block_bytes
    }
}

/// f16's row of the table (also the base of f16-exact's).
const F16_TRAITS: Traits = Traits {
    format: Format::F16,
    name: "f16",
    aliases: &["fp16", "float16"],
    bits_per_weight: 16.0,
    quantized: false,
    block_inputs: 1,
    block_bytes: 2 * NR,
    pack_panel: float::pack_f16,
    unpack_panel: float::unpack_f16,
    kernel: Kernel::Float {
        gemv: float::gemv_f16,
        in_place: false,
        wide: Some(Half::F16),
        bf16_dot: false,
    },
    rows: float::F16_ROWS,
    gemv_max_rows: 2,
    low_rank: Format::F16,
    holds: None,
};

/// bf16's row of the table (also the base of bf16-exact's).
const BF16_TRAITS: Traits = Traits {
    format: Format::BF16,
    name: "bf16",
    aliases: &["bfloat16"],
    bits_per_weight: 16.0,
    quantized: false,
    block_inputs: 1,
    block_bytes: 2 * NR,
    pack_panel: float::pack_bf16,
    unpack_panel: float::unpack_bf16,
    kernel: Kernel::Float {
        gemv: float::gemv_bf16,
        in_place: false,
        wide: Some(Half::Bf16),
        bf16_dot: true,
    },
    rows: float::BF16_ROWS,
    gemv_max_rows: 2,
    low_rank: Format::BF16,
    holds: None,
};

/// The table: one row per format, in the order of the variants.
const TRAITS: [Traits; 7] = [
    Traits {
        format: Format::F32,
        name: "f32",
        aliases: &["fp32", "float32"],
        bits_per_weight: 32.0,
        quantized: false,
        block_inputs: 1,
        block_bytes: 4 * NR,
        pack_panel: float::pack_f32,
        unpack_panel: float::unpack_f32,
        kernel: Kernel::Float {
            gemv: float::gemv_f32,
            in_place: true,
            wide: None,
            bf16_dot: false,
        },
        rows: float::F32_ROWS,
        gemv_max_rows: 1,
        low_rank: Format::F32,
        holds: None,
    },
    F16_TRAITS,
    BF16_TRAITS,
    Traits {
        format: Format::Q8_0,
        name: "q8_0",
        aliases: &["q8"],
        bits_per_weight: 8.5,
        quantized: true,
        block_inputs: QK,
        block_bytes: crate::kernels::Q8_BLOCK_BYTES,
        pack_panel: q8_0::pack_panel,
        unpack_panel: pack::unpack_blocks::<crate::kernels::Q8_0Block>,
        kernel: Kernel::Int8 {
            gemv: q8_0::gemv,
            gemm_panel: crate::kernels::gemm_panel_q8_0,
        },
        rows: q8_0::ROWS,
        gemv_max_rows: 1,
        low_rank: Format::BF16,
        holds: None,
    },
    Traits {
        format: Format::Q4_0,
        name: "q4_0",
        aliases: &["q4"],
        bits_per_weight: 4.5,
        quantized: true,
        block_inputs: QK,
        block_bytes: crate::kernels::Q4_BLOCK_BYTES,
        pack_panel: q4_0::pack_panel,
        unpack_panel: pack::unpack_blocks::<crate::kernels::Q4_0Block>,
        kernel: Kernel::Int8 {
            gemv: q4_0::gemv,
            gemm_panel: crate::kernels::gemm_panel_q4_0,
        },
        // An embedding at 4 bits would lose too much: Q4_0 models keep theirs in Q8_0.
        rows: q8_0::ROWS,
        gemv_max_rows: 2,
        low_rank: Format::BF16,
        holds: None,
    },
    // bf16's panels, rows and matrix–vector kernel (which widens each weight and multiplies
    // by the f32 activations: the products and sums of f32's kernel, in its order), and the
    // matrix–matrix product on the panels widened to f32 (in registers where the CPU has that
    // kernel: f32's sums again), never bf16 dot products.
    Traits {
        format: Format::BF16Exact,
        name: "bf16-exact",
        aliases: &[],
        kernel: Kernel::Float {
            gemv: float::gemv_bf16,
            in_place: false,
            wide: Some(Half::Bf16),
            bf16_dot: false,
        },
        // As f32's: two rows take the matrix–matrix kernel (whose sums are f32's there too;
        // the matrix–vector kernel sums in another order).
        gemv_max_rows: 1,
        low_rank: Format::BF16Exact,
        holds: Some(Format::F32),
        ..BF16_TRAITS
    },
    // f16's panels, rows and kernels (each weight widened: f32's products and sums), with
    // f32's row limit.
    Traits {
        format: Format::F16Exact,
        name: "f16-exact",
        aliases: &[],
        gemv_max_rows: 1,
        low_rank: Format::F16Exact,
        holds: Some(Format::F32),
        ..F16_TRAITS
    },
];

impl Format {
    /// Every format, in the order of the table.
    pub const ALL: [Format; 7] = [
        Format::F32,
        Format::F16,
        Format::BF16,
        Format::Q8_0,
        Format::Q4_0,
        Format::BF16Exact,
        Format::F16Exact,
    ];

    /// Its row of the traits table.
    #[inline]
    pub fn traits(self) -> &'static Traits {
        &TRAITS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    /// Bits per weight in memory, scales included.
    pub fn bits_per_weight(self) -> f64 {
        self.traits().bits_per_weight
    }

    pub fn is_quantized(self) -> bool {
        self.traits().quantized
    }

    /// Bytes of one panel (32 outputs) of `in_dim` inputs.
    pub fn panel_bytes(self, in_dim: usize) -> usize {
        let t = self.traits();
        in_dim.div_ceil(t.block_inputs) * t.block_bytes
    }

    /// Bytes of a packed `out_dim × in_dim` matrix (padding and scales included).
    pub fn matrix_bytes(self, out_dim: usize, in_dim: usize) -> usize {
        n_panels(out_dim) * self.panel_bytes(in_dim)
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        let named = || TRAITS.iter().filter(|t| t.holds.is_none());
        for t in named() {
            if t.name == s || t.aliases.contains(&s.as_str()) {
                return Ok(t.format);
            }
        }
        let names: Vec<&str> = named().map(|t| t.name).collect();
        let (last, rest) = names.split_last().expect("formats");
        bail!(
            "unknown dtype '{s}' (expected {} or {last})",
            rest.join(", ")
        )
    }
}

/// Panels needed for `out_dim` outputs.
pub fn n_panels(out_dim: usize) -> usize {
    out_dim.div_ceil(NR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_variants() {
        for (i, f) in Format::ALL.into_iter().enumerate() {
            assert_eq!(TRAITS[i].format, f);
            assert_eq!(f.traits().format, f);
        }
    }

    #[test]
    fn names_and_spellings_parse_as_before() {
        for (s, f) in [
            ("f32", Format::F32),
            ("FP32", Format::F32),
            ("float32", Format::F32),
            ("f16", Format::F16),
            ("fp16", Format::F16),
            ("float16", Format::F16),
            ("bf16", Format::BF16),
            ("BFloat16", Format::BF16),
            ("q8_0", Format::Q8_0),
            ("q8", Format::Q8_0),
            ("q4_0", Format::Q4_0),
            ("Q4", Format::Q4_0),
        ] {
            assert_eq!(s.parse::<Format>().unwrap(), f, "{s}");
        }
        for f in Format::ALL {
            match f.traits().holds {
                None => assert_eq!(f.name().parse::<Format>().unwrap(), f),
                Some(_) => assert!(f.name().parse::<Format>().is_err(), "{f:?}"),
            }
        }
        assert_eq!(
            "Int8".parse::<Format>().unwrap_err().to_string(),
            "unknown dtype 'int8' (expected f32, f16, bf16, q8_0 or q4_0)"
        );
    }

    #[test]
    fn sizes_are_those_of_the_layout() {
        let b = |f: Format| f.panel_bytes(64);
        assert_eq!(b(Format::F32), 64 * NR * 4);
        assert_eq!(b(Format::BF16), 64 * NR * 2);
        assert_eq!(b(Format::F16), 64 * NR * 2);
        assert_eq!(b(Format::Q8_0), 2 * crate::kernels::Q8_BLOCK_BYTES);
        assert_eq!(b(Format::Q4_0), 2 * crate::kernels::Q4_BLOCK_BYTES);
        assert_eq!(
            Format::Q8_0.panel_bytes(33),
            2 * crate::kernels::Q8_BLOCK_BYTES
        );
        assert_eq!(Format::F32.matrix_bytes(33, 10), 2 * 10 * NR * 4);
        for f in Format::ALL {
            let bits = (8 * f.panel_bytes(64)) as f64 / (64 * NR) as f64;
            assert_eq!(bits, f.bits_per_weight(), "{f:?}");
        }
    }
}
