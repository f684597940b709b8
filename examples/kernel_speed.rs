//! Speed of single kernels on one thread, outside any model: the figures the kernel comments
//! and the README quote ("a kernel-only loop"). Not a test; run it on a quiet machine:
//!
//!   cargo run --release --example kernel_speed -- gemm-bf16 2048 12    # k inputs, rows
//!   cargo run --release --example kernel_speed -- gemv-q4_0 2048 2048  # k inputs, panels
//!
//! Kernels: `gemm-bf16` (the `vdpbf16ps` matrix–matrix kernel on one panel, G multiply–adds
//! per second), `gemv-f32`, `gemv-bf16`, `gemv-q8_0`, `gemv-q4_0` (matrix–vector products
//! over `panels` panels of 32 outputs, GB/s of weights read) and `sum` (the bandwidth probe's
//! streaming sum over a buffer of the q8_0 matrix's size). Weights live in huge pages
//! (`AlignedBuf`), as a model's do.

use rwkv_cli::kernels::{self, AlignedBuf, QuantizedRows, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES};
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(default)
}

/// Runs `f` `iters` times, three passes; prints each pass's rate of `work` units per second.
fn time(name: &str, unit: &str, work: f64, iters: usize, mut f: impl FnMut()) {
    for pass in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name} pass {pass}: {:.1} {unit}",
            work * iters as f64 / s / 1e9
        );
    }
}

fn main() {
    let kind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gemm-bf16".into());
    let k = arg(2, 2048);
    if kind == "gemm-bf16" {
        assert!(kernels::has_bf16_dot(), "this CPU has no bf16 dot products");
        let rows = arg(3, 12);
        let ld = k + 32;
        let x: Vec<u16> = (0..rows * ld).map(|i| 0x3f80 + (i % 7) as u16).collect();
        let panels = 4;
        let w: Vec<u16> = (0..k * 32 * panels)
            .map(|i| 0x3f00 + (i % 13) as u16)
            .collect();
        let mut y = vec![0f32; rows * 32 * panels];
        let macs = (panels * rows * k * 32) as f64;
        time(
            &kind,
            "G multiply-adds/s",
            macs,
            (4e9 / macs) as usize + 1,
            || {
                for p in 0..panels {
                    // SAFETY: x holds `rows` rows of `k` values at stride `ld`; w holds `panels`
                    // panels of k × 32 values; y has `rows` rows of 32 × panels outputs, of which
                    // this call writes columns p·32..p·32 + 32.
                    unsafe {
                        kernels::gemm_panel_bf16(
                            x.as_ptr(),
                            ld,
                            rows,
                            k,
                            w.as_ptr().add(p * k * 32),
                            y.as_mut_ptr().add(p * 32),
                            32 * panels,
                            32,
                        )
                    }
                }
            },
        );
        std::hint::black_box(&y);
        return;
    }
    let panels = arg(3, 2048);
    assert!(k.is_multiple_of(32), "k (inputs) must be a multiple of 32");
    let blocks = k / 32;
    let bytes = match kind.as_str() {
        "gemv-f32" => panels * k * 32 * 4,
        "gemv-bf16" => panels * k * 32 * 2,
        "gemv-q4_0" => panels * blocks * Q4_BLOCK_BYTES,
        "gemv-q8_0" | "sum" => panels * blocks * Q8_BLOCK_BYTES,
        _ => panic!("unknown kernel {kind}"),
    };
    let mut w = AlignedBuf::zeroed(bytes);
    for (i, b) in w.bytes_mut().iter_mut().enumerate() {
        // Every byte 0x30..0x40: read as f32 or bf16, normal numbers between 2^-31 and 1.
        *b = 0x30 + (i * 7 % 16) as u8;
    }
    let x: Vec<f32> = (0..k).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
    let mut xq = QuantizedRows::default();
    xq.quantize(&x, 1, k);
    let mut y = vec![0f32; panels * 32];
    let iters = (20e9 / bytes as f64) as usize + 3;
    time(&kind, "GB/s", bytes as f64, iters, || match kind.as_str() {
        "gemv-f32" => kernels::gemv_f32(w.f32s(), k, &x, &mut y),
        "gemv-bf16" => kernels::gemv_bf16(w.u16s(), k, &x, &mut y),
        "gemv-q4_0" => kernels::gemv_q4_0(w.bytes(), blocks, &xq, 0, &mut y),
        "gemv-q8_0" => kernels::gemv_q8_0(w.bytes(), blocks, &xq, 0, &mut y),
        _ => y[0] += kernels::bandwidth::sum_f32(w.f32s()),
    });
    std::hint::black_box(&y);
}
