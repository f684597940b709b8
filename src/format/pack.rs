//! Packing a whole matrix into panels of any format (from a vector, consuming a vector, or
//! streamed in pieces) and unpacking it back, through the format's row of the table.

use super::{n_panels, Format};
use crate::kernels::{AlignedBuf, QuantBlock, NR, QK};

/// Packs `w` (out × in, row-major f32) into panels of `format`.
pub fn pack(w: &[f32], out_dim: usize, in_dim: usize, format: Format) -> AlignedBuf {
    let pb = format.panel_bytes(in_dim);
    let pack_panel = format.traits().pack_panel;
    let mut buf = AlignedBuf::zeroed(n_panels(out_dim) * pb);
    let dst = buf.bytes_mut();
    for (p, rows) in w[..out_dim * in_dim].chunks(NR * in_dim).enumerate() {
        pack_panel(rows, in_dim, &mut dst[p * pb..(p + 1) * pb]);
    }
    buf
}

/// As [`pack`], consuming `w` and giving its memory back as the panels are written (last
/// panel first, the source shortened every few MiB), so that the f32 source and the packed
/// copy are never both whole in memory.
pub fn pack_owned(mut w: Vec<f32>, out_dim: usize, in_dim: usize, format: Format) -> AlignedBuf {
    const RELEASE_BYTES: usize = 8 << 20;
    let pb = format.panel_bytes(in_dim);
    let pack_panel = format.traits().pack_panel;
    let n = n_panels(out_dim);
    let mut buf = AlignedBuf::zeroed(n * pb);
    let dst = buf.bytes_mut();
    w.truncate(out_dim * in_dim);
    let mut kept = w.len();
    for p in (0..n).rev() {
        let start = p * NR * in_dim;
        pack_panel(&w[start..], in_dim, &mut dst[p * pb..(p + 1) * pb]);
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
    let pack_panel = format.traits().pack_panel;
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
                pack_panel(head, in_dim, out);
            } else {
                pending.extend_from_slice(head);
                if pending.len() == panel_end - p * panel_values {
                    pack_panel(&pending, in_dim, out);
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

/// Random access to a matrix's values (row-major): `read(start, dst)` fills `dst` with values
/// `start .. start + dst.len()`. Called from several threads at once.
pub type ReadAt<'a> = &'a (dyn Fn(usize, &mut [f32]) -> anyhow::Result<()> + Sync);

thread_local! {
    /// Per-thread f32 rows of the panel being packed by [`pack_at`] (kept between matrices,
    /// so that its pages are faulted in once per thread, not once per panel).
    static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packs a matrix whose values `read` reaches in any order, on all threads (rayon's pool):
/// each panel's rows are converted into a per-thread buffer and packed into their place, so
/// no f32 copy of the whole is held and the result is byte for byte [`pack`]'s.
pub fn pack_at(
    out_dim: usize,
    in_dim: usize,
    format: Format,
    read: ReadAt<'_>,
) -> anyhow::Result<AlignedBuf> {
    let buf = AlignedBuf::zeroed(format.matrix_bytes(out_dim, in_dim));
    pack_at_in(buf, out_dim, in_dim, format, read)
}

/// As [`pack_at`], into `buf`: zero bytes of exactly the matrix's packed size (the weight
/// cache hands out a region of the file it is writing, so the panels are written once, into
/// the file's pages).
pub fn pack_at_in(
    mut buf: AlignedBuf,
    out_dim: usize,
    in_dim: usize,
    format: Format,
    read: ReadAt<'_>,
) -> anyhow::Result<AlignedBuf> {
    let pb = format.panel_bytes(in_dim);
    let pack_panel = format.traits().pack_panel;
    anyhow::ensure!(
        buf.len() == n_panels(out_dim) * pb,
        "buffer of {} bytes for a matrix packing to {}",
        buf.len(),
        n_panels(out_dim) * pb
    );
    if pb == 0 {
        return Ok(buf);
    }
    // A panel per piece; into the file where `buf` is a region of the weight cache's.
    buf.fill_pieces(
        pb,
        || (),
        |_, p, out| {
            let rows = NR.min(out_dim - p * NR);
            ROWS.with(|cell| {
                // Taken out of the slot, so a nested use on this thread finds it empty.
                let mut v = std::mem::take(&mut *cell.borrow_mut());
                v.resize(NR * in_dim, 0.0);
                let r = read(p * NR * in_dim, &mut v[..rows * in_dim]);
                if r.is_ok() {
                    pack_panel(&v[..rows * in_dim], in_dim, out);
                }
                *cell.borrow_mut() = v;
                r
            })
        },
    )?;
    Ok(buf)
}

/// Blocks of a row whose scales [`quantize_row`] computes before their values.
const GROUP: usize = 16;

/// Quantizes one row of a block-quantized panel: `scale` gives a whole block's scale and its
/// inverse, `values` the block's stored values for that inverse, `partial` the scale and
/// values of a row's last, partial block; `put(b, scale, values)` stores block `b`. The scales
/// of [`GROUP`] blocks are computed before their values, so that the blocks' serial chains (a
/// reduction, a rounding, a division) overlap.
#[inline(always)]
pub(super) fn quantize_row(
    row: &[f32],
    scale: impl Fn(&[f32; QK]) -> (half::bf16, f32),
    values: impl Fn(&[f32; QK], f32) -> [u8; QK],
    partial: impl Fn(&[f32]) -> (half::bf16, [u8; QK]),
    mut put: impl FnMut(usize, half::bf16, [u8; QK]),
) {
    let in_dim = row.len();
    let nb = in_dim.div_ceil(QK);
    let full = in_dim / QK;
    let mut scales = [(half::bf16::ZERO, 0.0f32); GROUP];
    for g0 in (0..nb).step_by(GROUP) {
        for (sc, w) in scales.iter_mut().zip(
            row[g0 * QK..]
                .chunks_exact(QK)
                .take(full.saturating_sub(g0)),
        ) {
            if let Some(w) = w.first_chunk::<QK>() {
                *sc = scale(w);
            }
        }
        for b in g0..(g0 + GROUP).min(nb) {
            let (d, q) = match row[b * QK..].first_chunk::<QK>() {
                Some(w) if b < full => {
                    let (d, id) = scales[b - g0];
                    (d, values(w, id))
                }
                _ => partial(&row[b * QK..((b + 1) * QK).min(in_dim)]),
            };
            put(b, d, q);
        }
    }
}

/// Defines a packer `fn NAME(rows: &[f32], in_dim: usize, dst: &mut [u8])` whose body is
/// compiled three times — for AVX-512, for AVX2 and for baseline x86-64 — and run at the
/// widest level the kernels use on this CPU, so that the compiler's vectorised loops run 16
/// or 8 lanes wide rather than 4. The results are the same bit for bit at every width: Rust
/// never fuses a multiply and an add, and every operation is exactly rounded.
macro_rules! wide_packer {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($rows:ident, $in_dim:ident, $dst:ident) $body:block) => {
        $(#[$meta])*
        $vis fn $name($rows: &[f32], $in_dim: usize, $dst: &mut [u8]) {
            #[inline(always)]
            fn body($rows: &[f32], $in_dim: usize, $dst: &mut [u8]) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
                unsafe fn avx512(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
                    body(rows, in_dim, dst)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2(rows: &[f32], in_dim: usize, dst: &mut [u8]) {
                    body(rows, in_dim, dst)
                }
                match $crate::kernels::isa() {
                    // SAFETY: the kernels' detection found these features on this CPU.
                    $crate::kernels::Isa::Avx512 => return unsafe { avx512($rows, $in_dim, $dst) },
                    // SAFETY: as above.
                    $crate::kernels::Isa::Avx2 => return unsafe { avx2($rows, $in_dim, $dst) },
                    $crate::kernels::Isa::Neon | $crate::kernels::Isa::Portable => {}
                }
            }
            body($rows, $in_dim, $dst)
        }
    };
}
pub(super) use wide_packer;

/// The weights a packed matrix stands for, unpacked to f32 (out × in), as the kernels see
/// them (after rounding or quantization): for tests and measurements of the error.
pub fn unpack(w: &AlignedBuf, out_dim: usize, in_dim: usize, format: Format) -> Vec<f32> {
    let unpack_panel = format.traits().unpack_panel;
    let mut out = vec![0.0f32; out_dim * in_dim];
    let mut panel = vec![0.0f32; in_dim * NR];
    for p in 0..n_panels(out_dim) {
        unpack_panel(w, p, in_dim, &mut panel);
        for j in 0..NR.min(out_dim - p * NR) {
            for i in 0..in_dim {
                out[(p * NR + j) * in_dim + i] = panel[i * NR + j];
            }
        }
    }
    out
}

/// Panel `p` of a block-quantized matrix (blocks `B`) unpacked to f32, input-major: each
/// weight `(q − offset) · scale`.
pub(super) fn unpack_blocks<B: QuantBlock>(
    w: &AlignedBuf,
    p: usize,
    in_dim: usize,
    dst: &mut [f32],
) {
    let nb = in_dim.div_ceil(QK);
    let pb = nb * B::BYTES;
    let panel = &w.bytes()[p * pb..(p + 1) * pb];
    let offset = 1 << B::OFFSET_SHIFT;
    for j in 0..NR {
        for b in 0..nb {
            let blk = &panel[b * B::BYTES..(b + 1) * B::BYTES];
            let d = B::scale(blk, j);
            for k in 0..QK.min(in_dim - b * QK) {
                let q = B::weight(blk, j, k) - offset;
                dst[(b * QK + k) * NR + j] = q as f32 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::quantize_block_q8_0;
    use crate::testing::pseudo;

    #[test]
    fn q8_0_error_is_at_most_half_a_step_per_weight() {
        for (out_dim, in_dim) in [(33, 70), (32, 64), (5, 3), (64, 768)] {
            let w = pseudo(out_dim * in_dim, 9);
            let buf = pack(&w, out_dim, in_dim, Format::Q8_0);
            let back = unpack(&buf, out_dim, in_dim, Format::Q8_0);
            for o in 0..out_dim {
                for b in 0..in_dim.div_ceil(QK) {
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
        for fmt in Format::ALL {
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
    fn parallel_packing_gives_the_same_panels_as_serial() {
        for fmt in Format::ALL {
            for (out_dim, in_dim) in [(70, 33), (1, 5), (32, 64), (3000, 700), (33, 4096)] {
                let w = pseudo(out_dim * in_dim, 12);
                let whole = pack(&w, out_dim, in_dim, fmt);
                let read = |start: usize, dst: &mut [f32]| -> anyhow::Result<()> {
                    dst.copy_from_slice(&w[start..start + dst.len()]);
                    Ok(())
                };
                let par = pack_at(out_dim, in_dim, fmt, &read).unwrap();
                assert!(whole.bytes() == par.bytes(), "{fmt:?} {out_dim}x{in_dim}");
            }
        }
        // A failing read is an error, not a panic or a partial matrix.
        let fail = |start: usize, _: &mut [f32]| -> anyhow::Result<()> {
            anyhow::ensure!(start < 64 * 10, "bad read at {start}");
            Ok(())
        };
        assert!(pack_at(100, 10, Format::Q8_0, &fail).is_err());
    }

    #[test]
    fn q4_0_error_is_at_most_a_step_per_weight() {
        for (out_dim, in_dim) in [(33, 70), (32, 64), (5, 3)] {
            let w = pseudo(out_dim * in_dim, 10);
            let buf = pack(&w, out_dim, in_dim, Format::Q4_0);
            let back = unpack(&buf, out_dim, in_dim, Format::Q4_0);
            for o in 0..out_dim {
                for b in 0..in_dim.div_ceil(QK) {
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
