use super::*;
use crate::testing::pseudo;

fn naive(x: &Mat, w: &[f32], out_dim: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.rows * out_dim];
    for t in 0..x.rows {
        for o in 0..out_dim {
            y[t * out_dim + o] = (0..x.cols).map(|i| x.row(t)[i] * w[o * x.cols + i]).sum();
        }
    }
    y
}

#[test]
fn gemv_and_gemm_match_naive_product() {
    let (inp, out) = (70, 45);
    let w = pseudo(inp * out, 1);
    let lin = Linear::new(w.clone(), out, inp, Format::F32).unwrap();
    for rows in [1, 2, 3, 9] {
        let x = Mat::from_vec(rows, inp, pseudo(rows * inp, rows as u32 + 7));
        let y = lin.forward(&x).unwrap();
        let r = naive(&x, &w, out);
        for (a, b) in y.data.iter().zip(&r) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b} at rows={rows}");
        }
    }
}

#[test]
fn every_format_matches_the_naive_product_of_its_own_weights() {
    let formats = [
        Format::F32,
        Format::BF16,
        Format::F16,
        Format::Q8_0,
        Format::Q4_0,
    ];
    for (inp, out) in [(70, 45), (32, 32), (768, 33), (5, 100), (100, 1), (64, 96)] {
        let w = pseudo(inp * out, (inp * 31 + out) as u32);
        for dt in formats {
            let lin = Linear::new(w.clone(), out, inp, dt).unwrap();
            let wq = lin.to_f32();
            assert_eq!(wq.len(), w.len());
            for rows in [1, 2, 3, 7, 12, 13, 30] {
                let x = Mat::from_vec(rows, inp, pseudo(rows * inp, rows as u32 + 7));
                let y = lin.forward(&x).unwrap();
                // The bf16 dot-product kernel (prefill, where the CPU has it) multiplies
                // activations rounded to bf16.
                let bf16_dot = dt == Format::BF16
                    && rows > dt.traits().gemv_max_rows
                    && kernels::has_bf16_dot();
                let xr = if bf16_dot {
                    let v = x.data.iter().map(|v| half::bf16::from_f32(*v).to_f32());
                    Mat::from_vec(rows, inp, v.collect())
                } else {
                    x.clone()
                };
                let r = naive(&xr, &wq, out);
                for t in 0..rows {
                    for o in 0..out {
                        let (a, b) = (y.data[t * out + o], r[t * out + o]);
                        // Q8_0 also rounds the activations to 8 bits per block of 32.
                        let mag: f32 = (0..inp)
                            .map(|i| (x.row(t)[i] * wq[o * inp + i]).abs())
                            .sum();
                        // Each activation moves by at most half a step: max|x| / 254.
                        let xmax = x.row(t).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let wsum: f32 = (0..inp).map(|i| wq[o * inp + i].abs()).sum();
                        let tol = if dt.is_quantized() {
                            wsum * xmax / 254.0 + 1e-5
                        } else {
                            1e-5 * (1.0 + mag)
                        };
                        assert!(
                            (a - b).abs() <= tol,
                            "{dt:?} {out}x{inp} rows={rows} t={t} o={o}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn loading_on_all_threads_gives_the_same_bytes_as_streaming() {
    for fmt in Format::ALL {
        for (rows, cols) in [(200, 70), (1, 5), (64, 32), (129, 768)] {
            let w = pseudo(rows * cols, 13);
            let read = |at: usize, dst: &mut [f32]| -> Result<()> {
                dst.copy_from_slice(&w[at..at + dst.len()]);
                Ok(())
            };
            let stream = |sink: &mut dyn FnMut(usize, &[f32]) -> Result<()>| {
                for (i, c) in w.chunks(100).enumerate() {
                    sink(i * 100, c)?;
                }
                Ok(())
            };
            let a = RowTable::from_values(rows, cols, fmt, &read).unwrap();
            let b = RowTable::from_streamed(rows, cols, fmt, stream).unwrap();
            assert!(
                a.encoded().bytes() == b.encoded().bytes(),
                "table {fmt:?} {rows}x{cols}"
            );
            let a = Linear::from_values(rows, cols, fmt, &read).unwrap();
            let b = Linear::from_streamed(rows, cols, fmt, stream).unwrap();
            assert!(a.w.bytes() == b.w.bytes(), "matrix {fmt:?} {rows}x{cols}");
        }
    }
    // A failed read is the constructor's error.
    let fail = |_: usize, _: &mut [f32]| -> Result<()> { anyhow::bail!("unreadable") };
    assert!(RowTable::from_values(300, 8, Format::F32, &fail).is_err());
    assert!(Linear::from_values(300, 8, Format::F32, &fail).is_err());
}

#[test]
fn row_tables_give_back_their_rows_in_every_format() {
    let (rows, cols) = (9, 70);
    let w = pseudo(rows * cols, 12);
    for (dt, tol) in [
        (Format::F32, 0.0),
        (Format::BF16, 1.0 / 256.0),
        (Format::F16, 1.0 / 2048.0),
        (Format::Q8_0, 1.0 / 127.0),
        (Format::Q4_0, 1.0 / 127.0),
    ] {
        let t = RowTable::from_streamed(rows, cols, dt, |sink| {
            for (i, c) in w.chunks(13).enumerate() {
                sink(i * 13, c)?;
            }
            Ok(())
        })
        .unwrap();
        let mut out = vec![0.0; cols];
        for r in 0..rows {
            t.row_into(r, &mut out);
            for (a, b) in out.iter().zip(&w[r * cols..]) {
                // 0.5 is the largest magnitude of the values.
                assert!((a - b).abs() <= tol * 0.5 + 1e-7, "{dt:?}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn weight_bytes_reflect_the_format() {
    let w = pseudo(64 * 64, 5);
    let b = |dt| Linear::new(w.clone(), 64, 64, dt).unwrap().weight_bytes();
    assert_eq!(b(Format::F32), 64 * 64 * 4);
    assert_eq!(b(Format::BF16), 64 * 64 * 2);
    assert_eq!(b(Format::F16), 64 * 64 * 2);
    assert_eq!(b(Format::Q8_0), 64 * 64 * 17 / 16);
    assert_eq!(b(Format::Q4_0), 64 * 64 * 9 / 16);
}

#[test]
fn half_precision_weights_are_close_to_f32() {
    let (inp, out) = (64, 33);
    let w = pseudo(inp * out, 3);
    let x = Mat::from_vec(3, inp, pseudo(3 * inp, 4));
    let r = naive(&x, &w, out);
    for dt in [Format::F16, Format::BF16] {
        let lin = Linear::new(w.clone(), out, inp, dt).unwrap();
        for rows in [1, 3] {
            let xr = Mat::from_vec(rows, inp, x.data[..rows * inp].to_vec());
            let y = lin.forward(&xr).unwrap();
            for (a, b) in y.data.iter().zip(&r) {
                assert!((a - b).abs() < 2e-2, "{dt:?}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn lora_transpose_is_applied_as_x_times_w() {
    // W stored (in=2, out=3) used as x @ W.
    let w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let lin = Linear::from_in_out(w, 2, 3, Format::F32).unwrap();
    let y = lin.forward(&Mat::from_vec(1, 2, vec![1.0, 10.0])).unwrap();
    assert_eq!(y.data, vec![41.0, 52.0, 63.0]);
}

/// Independent products in one call give what each gives alone, bit for bit: one-row inputs
/// (one pool call over all their tasks) in every format, large matrices split into tasks and
/// small ones whole, with inputs of different lengths; and inputs of several rows (each
/// product on its own). A wrong input width is refused.
#[test]
fn products_in_one_call_equal_each_product_alone() {
    // The first and the last are split into several tasks whatever the thread count (the
    // last into a prime number of panels, so that its last task is short); the fourth runs
    // as one task (below the size that runs serially).
    let shapes = [
        (768, 700),
        (64, 768),
        (768, 64),
        (70, 45),
        (300, 33),
        (2048, 23 * 32 - 5),
    ];
    let formats = [
        Format::Q4_0,
        Format::BF16,
        Format::F32,
        Format::Q8_0,
        Format::F16,
        Format::Q8_0,
    ];
    let linears: Vec<Linear> = shapes
        .iter()
        .zip(formats.iter().cycle())
        .enumerate()
        .map(|(i, (&(inp, out), &f))| {
            Linear::new(pseudo(inp * out, 40 + i as u32), out, inp, f).unwrap()
        })
        .collect();
    assert!(linears[5].weight_bytes() >= 4 * GEMV_TASK_BYTES);
    assert!(linears[0].weight_bytes() >= SERIAL_BYTES && linears[3].weight_bytes() < SERIAL_BYTES);
    for rows in [1, 3] {
        let xs: Vec<Mat> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(inp, _))| Mat::from_vec(rows, inp, pseudo(rows * inp, 90 + i as u32)))
            .collect();
        let pairs: Vec<(&Linear, &Mat)> = linears.iter().zip(&xs).collect();
        let together = forward_all(&pairs).unwrap();
        assert_eq!(together.len(), pairs.len());
        for (i, ((w, x), y)) in pairs.iter().zip(&together).enumerate() {
            let alone = w.forward(x).unwrap();
            assert_eq!((y.rows, y.cols), (alone.rows, alone.cols));
            let same = y
                .data
                .iter()
                .zip(&alone.data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "rows {rows}, product {i} ({:?}) differs", w.format());
        }
    }
    let x = Mat::from_vec(1, 69, pseudo(69, 3));
    let err = forward_all(&[(&linears[3], &x), (&linears[4], &x)]).unwrap_err();
    assert_eq!(err.to_string(), "linear: input has 69 columns, expected 70");
}
