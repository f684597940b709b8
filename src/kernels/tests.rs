use super::*;

fn data(n: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let b = (0..n)
        .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
        .collect();
    (a, b)
}

#[test]
fn every_kernel_matches_the_plain_sum_at_every_length() {
    for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 768, 3072] {
        let (a, b) = data(n);
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let tol = 1e-4 * (1.0 + exact.abs());
        assert!((dot_f32(&a, &b) as f64 - exact).abs() < tol, "f32 n={n}");
        // The portable fallback agrees too.
        assert!((portable::dot_f32(&a, &b) as f64 - exact).abs() < tol);
    }
}

#[test]
fn activation_quantization_matches_the_portable_code() {
    for seed in 0..20u32 {
        let x: Vec<f32> = (0..QK)
            .map(|i| {
                (((i as u32 * 2654435761u32) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 37.0
                    - 13.0
            })
            .collect();
        let (mut q1, mut q2) = ([0i8; QK], [0i8; QK]);
        let a = quantize_block_q8(&x, &mut q1);
        let b = portable::quantize_block_q8(&x, &mut q2);
        assert_eq!(a, b);
        assert_eq!(q1, q2);
    }
    let mut q = [1i8; QK];
    assert_eq!(quantize_block_q8(&[0.0; QK], &mut q), (0.0, 0));
    assert!(q.iter().all(|&v| v == 0));
}

#[test]
fn small_rounding_matches_round_ties_even() {
    for i in -100_000..100_000 {
        let v = i as f32 * 0.00731 + 0.5 * (i % 3) as f32;
        assert_eq!(round_small(v), v.round_ties_even(), "{v}");
    }
    for v in [
        0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.49, -0.0, 3e6, -3e6,
    ] {
        assert_eq!(round_small(v), v.round_ties_even(), "{v}");
    }
    assert!(round_small(f32::NAN).is_nan());
}

/// The levels below the detected one that this CPU also runs (the detected one first).
/// Value `i` of a pseudo-random sequence `seed` for the matrix–matrix kernels' tests: more
/// than 8 significant bits, mixed signs and magnitudes.
fn val(i: usize, seed: usize) -> f32 {
    let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 100_003;
    (h as f32 / 100_003.0 - 0.47) * (1.0 + (i % 7) as f32 * 0.37)
}

/// Where output `j` sits in a row of an `h` panel (see `layout`), and the exact value of a
/// stored weight: what the widening kernels undo.
fn half_lane(h: Half, j: usize) -> usize {
    match h {
        Half::Bf16 => bf16_lane_position(j),
        Half::F16 => j,
    }
}

fn half_value(h: Half, b: u16) -> f32 {
    match h {
        Half::Bf16 => f32::from_bits((b as u32) << 16),
        Half::F16 => half::f16::from_bits(b).to_f32(),
    }
}

fn levels() -> Vec<Level> {
    let top = detect_level();
    let level = |isa, vnni, bf16| Level { isa, vnni, bf16 };
    let mut v = Vec::new();
    match top.isa {
        Isa::Avx512 | Isa::Avx2 => {
            if top.isa == Isa::Avx512 {
                if top.vnni || top.bf16 {
                    v.push(top);
                }
                v.push(level(Isa::Avx512, false, false));
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avxvnni") {
                v.push(level(Isa::Avx2, true, false));
            }
            v.push(level(Isa::Avx2, false, false));
        }
        Isa::Neon => {
            if top.vnni {
                v.push(top);
            }
            v.push(level(Isa::Neon, false, false));
        }
        Isa::Portable => {}
    }
    v
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}: {x} vs {y}"
        );
    }
}

#[test]
fn every_level_this_cpu_runs_agrees_with_the_portable_kernels() {
    let p = Kernels::build(Level::PORTABLE);
    let (k, n_out) = (70, 45);
    let (w, x) = data(2 * k * NR);
    let x = &x[..6 * k];
    let bf: Vec<u16> = w
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_bits())
        .collect();
    let hf: Vec<u16> = w
        .iter()
        .map(|v| half::f16::from_f32(*v).to_bits())
        .collect();
    // Quantized panels: any weight byte is valid; the scales differ from one output and block
    // to the next (1/64 to 13/64, exact in bf16), so a scale read for the wrong output shows.
    let blocks = k.div_ceil(QK);
    let mut qp: Vec<u8> = (0..blocks * Q8_BLOCK_BYTES)
        .map(|i| (i * 89 % 251) as u8)
        .collect();
    let mut q4 = qp[..blocks * Q4_BLOCK_BYTES].to_vec();
    for (panel, block_bytes) in [(&mut qp, Q8_BLOCK_BYTES), (&mut q4, Q4_BLOCK_BYTES)] {
        for (b, blk) in panel.chunks_exact_mut(block_bytes).enumerate() {
            for (t, s) in blk[block_bytes - 2 * NR..].chunks_exact_mut(2).enumerate() {
                let v = (1 + (t + 5 * b) % 13) as f32 / 64.0;
                s.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        }
    }
    let mut xq = QuantizedRows::default();
    xq.quantize(x, 6, k);
    for level in levels() {
        let t = Kernels::build(level);
        let at = format!("{level:?}");
        // SAFETY: `levels` lists only levels this CPU runs; every call below stays within
        // the buffers (2 panels of k inputs; 3 rows of k activations; outputs n_out wide).
        unsafe {
            let (a, b) = ((t.dot_f32)(&w, &w), (p.dot_f32)(&w, &w));
            close(&[a], &[b], &format!("dot {at}"));
            for n in [w.len(), 45, 7, 0] {
                let (a, b) = ((t.sum_f32)(&w[..n]), (p.sum_f32)(&w[..n]));
                close(&[a], &[b], &format!("sum of {n} {at}"));
            }
            for (name, tf, pf) in [
                ("bf16", t.gemv_bf16, p.gemv_bf16),
                ("f16", t.gemv_f16, p.gemv_f16),
            ] {
                let src = if name == "bf16" { &bf } else { &hf };
                let (mut y1, mut y2) = (vec![0.0; n_out], vec![0.0; n_out]);
                tf(src, k, x, &mut y1);
                pf(src, k, x, &mut y2);
                close(&y1, &y2, &format!("gemv {name} {at}"));
            }
            let (mut y1, mut y2) = (vec![0.0; n_out], vec![0.0; n_out]);
            (t.gemv_f32)(&w, k, x, &mut y1);
            (p.gemv_f32)(&w, k, x, &mut y2);
            close(&y1, &y2, &format!("gemv f32 {at}"));
            let (mut h1, mut h2) = (vec![0.0; hf.len()], vec![0.0; hf.len()]);
            (t.f16_to_f32)(&hf, &mut h1);
            (p.f16_to_f32)(&hf, &mut h2);
            assert_eq!(h1, h2, "f16 widening {at}");
            // The odd values at the front (where a SIMD kernel's full vectors take them) and
            // at the end (its tail).
            let odd = [
                f32::NAN,
                -f32::NAN,
                f32::INFINITY,
                1e-40,
                f32::from_bits(0x3F80_8000),
                f32::from_bits(0x3F81_8000),
                -f32::from_bits(0x3F80_8001),
                f32::from_bits(0x7F7F_FFFF),
            ];
            let v: Vec<f32> = odd.iter().chain(&w).chain(&odd).copied().collect();
            let (mut b1, mut b2) = (vec![0u16; v.len()], vec![1u16; v.len()]);
            (t.f32_to_bf16)(&v, &mut b1);
            (p.f32_to_bf16)(&v, &mut b2);
            assert_eq!(b1, b2, "bf16 rounding {at}");
            for rows in 1..=t.gemm_f32_rows.min(6) {
                let (mut y1, mut y2) = (vec![0.0; rows * NR], vec![0.0; rows * NR]);
                (t.gemm_f32)(rows, x.as_ptr(), k, k, w.as_ptr(), y1.as_mut_ptr(), NR, 30);
                (p.gemm_f32)(rows, x.as_ptr(), k, k, w.as_ptr(), y2.as_mut_ptr(), NR, 30);
                close(&y1, &y2, &format!("gemm f32 {rows} rows {at}"));
            }
            // The widening matrix–matrix kernels: exactly this level's f32 kernel on the
            // widened panel, at every tile row count.
            for (h, wide, src) in [
                (Half::Bf16, t.gemm_bf16_wide, &bf),
                (Half::F16, t.gemm_f16_wide, &hf),
            ] {
                let Some(wide) = wide else { continue };
                // The panel in output order, each weight widened.
                let widened: Vec<f32> = (0..src.len())
                    .map(|at| half_value(h, src[at - at % NR + half_lane(h, at % NR)]))
                    .collect();
                for rows in 1..=t.gemm_f32_rows {
                    let (mut y1, mut y2) = (vec![0.0; rows * NR], vec![0.0; rows * NR]);
                    let (xp, y1p, y2p) = (x.as_ptr(), y1.as_mut_ptr(), y2.as_mut_ptr());
                    wide(rows, xp, k, k, src.as_ptr(), y1p, NR, 30);
                    (t.gemm_f32)(rows, xp, k, k, widened.as_ptr(), y2p, NR, 30);
                    assert_eq!(y1, y2, "gemm {h:?} widened, {rows} rows {at}");
                }
            }
            // The activation quantizer, bit for bit, on the data and on degenerate blocks:
            // ties (amax 127: the scale is 1), a largest magnitude so small that 127 / amax
            // overflows, subnormals, a NaN, an infinity.
            let odd: Vec<Vec<f32>> = vec![
                vec![0.0; QK],
                (1..QK).map(|i| i as f32 - 15.5).chain([127.0]).collect(),
                (0..QK).map(|i| (i as f32 - 16.0) * 1e-39).collect(),
                (0..QK).map(|i| (i as f32 - 16.0) * 1e-45).collect(),
                (0..QK)
                    .map(|i| if i == 5 { f32::NAN } else { i as f32 - 9.0 })
                    .collect(),
                (0..QK)
                    .map(|i| if i == 7 { f32::NEG_INFINITY } else { i as f32 })
                    .collect(),
            ];
            for xb in x.chunks_exact(QK).chain(odd.iter().map(|b| &b[..])) {
                let (mut q1, mut q2) = ([0i8; QK], [0i8; QK]);
                let (a, b) = (
                    (t.quantize_block_q8)(xb, &mut q1),
                    (p.quantize_block_q8)(xb, &mut q2),
                );
                assert_eq!(
                    (a.0.to_bits(), a.1, q1),
                    (b.0.to_bits(), b.1, q2),
                    "{at}: {xb:?}"
                );
            }
            // Every row count a tile takes (the table's `q_tile_rows` at most), each against
            // the portable tile.
            for m in 1..=t.q_tile_rows {
                let rows = QRows {
                    q: xq.q.as_ptr(),
                    ldq: blocks * QK,
                    d: xq.d.as_ptr(),
                    sum: xq.sum.as_ptr(),
                    ldb: blocks,
                    rows: m,
                };
                for (name, tf, pf, panel) in [
                    ("q8_0", t.q8_0_tile, p.q8_0_tile, &qp),
                    ("q4_0", t.q4_0_tile, p.q4_0_tile, &q4),
                ] {
                    for nv in [1, 8, 9, 29, 32] {
                        let (mut y1, mut y2) = (vec![0.0; m * NR], vec![0.0; m * NR]);
                        tf(&rows, panel.as_ptr(), blocks, y1.as_mut_ptr(), NR, nv);
                        pf(&rows, panel.as_ptr(), blocks, y2.as_mut_ptr(), NR, nv);
                        close(&y1, &y2, &format!("{name} tile of {m} rows, {nv} out {at}"));
                        // Outputs past `n_valid` are left alone.
                        assert!(y1.chunks(NR).all(|r| r[nv..].iter().all(|v| *v == 0.0)));
                        // One row (the matrix–vector product, which the SIMD tiles
                        // special-case) gives exactly the first row of the m-row product:
                        // the integer sums and their epilogue are the same.
                        let one = QRows { rows: 1, ..rows };
                        let mut y3 = vec![0.0; NR];
                        tf(&one, panel.as_ptr(), blocks, y3.as_mut_ptr(), NR, nv);
                        assert_eq!(y3[..nv], y1[..nv], "{name} one-row tile {at}");
                    }
                }
            }
            // Each WKV kernel against its portable twin, both layouts, at head sizes from the
            // smallest the kernels take to the largest.
            let wkv_kernels: [(&str, _, wkv::PortableFn, &[usize]); 2] = [
                (
                    "wkv7",
                    t.wkv7_token_x16,
                    wkv::wkv7_token_portable,
                    &[16, 64, 128],
                ),
                (
                    "wkv7 rows",
                    t.wkv7_rows_x16,
                    wkv::wkv7_token_rows_portable,
                    &[16, 64, 128],
                ),
            ];
            for (name, simd, portable, sizes) in wkv_kernels {
                let Some(f) = simd else { continue };
                for &n in sizes {
                    let (s0, v) = data(n * n);
                    let (mut s1, mut s2) = (s0.clone(), s0);
                    let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
                    let vs: Vec<&[f32]> = (0..6).map(|i| &v[i * n..(i + 1) * n]).collect();
                    f(
                        &mut s1, n, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], &mut o1,
                    );
                    portable(
                        &mut s2, n, vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], &mut o2,
                    );
                    close(&o1, &o2, &format!("{name} out {n} {at}"));
                    close(&s1, &s2, &format!("{name} state {n} {at}"));
                }
            }
        }
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    let mut specials = vec![
        0.0f32,
        -0.0,
        1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        // Ties: halfway between two bf16 values, to the even one.
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0xBF80_8000),
    ];
    specials.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
    for v in specials {
        let want = half::bf16::from_f32(v).to_bits();
        let got = bf16_bits(v);
        if v.is_nan() {
            assert!(half::bf16::from_bits(got).is_nan(), "{v}");
        } else {
            assert_eq!(got, want, "{v} ({:#x})", v.to_bits());
        }
    }
    assert_eq!(bf16_bits(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(bf16_bits(f32::from_bits(0x3F81_8000)), 0x3F82);
}

/// The widening matrix–matrix kernels (bf16 and f16 panels) give, bit for bit, what the f32
/// kernel gives on the same panel widened first (the same products and sums in the same order):
/// rows past a whole tile, odd k, outputs not a multiple of 32. Skipped, with a note, where
/// there is none.
#[test]
fn the_widening_gemms_are_the_f32_gemm_on_the_widened_panel() {
    let mr = kernels().gemm_f32_rows;
    for h in [Half::Bf16, Half::F16] {
        if !has_wide_gemm(h) {
            println!("note: no widening {h:?} matrix-matrix kernel here: not tested");
            continue;
        }
        // A weight's bits in the panel.
        let bits = |v: f32| match h {
            Half::Bf16 => bf16_bits(v),
            Half::F16 => half::f16::from_f32(v).to_bits(),
        };
        for (rows, k, n_out) in [
            (1, 1, 1usize),
            (mr, 31, 33),
            (mr + 1, 33, 45),
            (2 * mr + 5, 70, 64),
        ] {
            let n_panels = n_out.div_ceil(NR);
            let mut panels = vec![0u16; n_panels * k * NR];
            let mut widened = vec![0f32; n_panels * k * NR];
            for o in 0..n_out {
                let (p, j) = (o / NR, o % NR);
                for i in 0..k {
                    let b = bits(val(o * k + i, 1));
                    panels[(p * k + i) * NR + half_lane(h, j)] = b;
                    widened[(p * k + i) * NR + j] = half_value(h, b);
                }
            }
            let x: Vec<f32> = (0..rows * k).map(|i| val(i, 2)).collect();
            let (mut got, mut want) = (vec![f32::NAN; rows * n_out], vec![f32::NAN; rows * n_out]);
            for p in 0..n_panels {
                let n_valid = (n_out - p * NR).min(NR);
                // SAFETY: the kernel exists (checked above); `x` has `rows` rows of k; each
                // panel has k × 32 values; each call writes its panel's columns of `rows` rows
                // of n_out.
                unsafe {
                    gemm_panel_wide(
                        h,
                        x.as_ptr(),
                        k,
                        rows,
                        k,
                        panels[p * k * NR..].as_ptr(),
                        got.as_mut_ptr().add(p * NR),
                        n_out,
                        n_valid,
                    );
                    gemm_panel_f32(
                        x.as_ptr(),
                        k,
                        rows,
                        k,
                        widened[p * k * NR..].as_ptr(),
                        want.as_mut_ptr().add(p * NR),
                        n_out,
                        n_valid,
                    );
                }
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{h:?} rows={rows} k={k} out={n_out} at {i}: {g} vs {w}"
                );
            }
        }
    }
}

/// The bf16 dot-product kernel against a scalar reference of the same rounding: the
/// activations rounded to bf16, every product exact (a product of two bf16 values fits an
/// f64 exactly), summed exactly; the kernel sums in f32, so it may differ by k rounding
/// errors of at most 2^-24 of the running sum (round to nearest; 2^-23 for AArch64's `bfdot`,
/// which rounds to odd), bounded by k · 2^-24 · Σ|products| (k · 2^-23 · …). Shapes:
/// rows past a whole tile, odd k and k not a multiple of 32, outputs not a multiple of 32 (and
/// on AMX the tiles' shapes). Skipped, with a note, where the CPU lacks AVX-512 BF16.
#[test]
fn bf16_dot_kernel_matches_a_reference_of_the_same_rounding() {
    if !has_bf16_dot() {
        println!(
            "note: no bf16 dot products here (AVX-512 BF16, AArch64 FEAT_BF16) or RWKV_NO_BF16 is set: the bf16 dot-product kernel is not tested"
        );
        return;
    }
    // Rows past the `vdpbf16ps` kernel's tile of 12 and, on AMX, blocks of 32 and 16 rows
    // with k a multiple of 32 (the tiles) and their leftover rows.
    for (rows, k, n_out) in [
        (1, 1, 1usize),
        (3, 2, 32),
        (12, 31, 33),
        (13, 33, 45),
        (29, 70, 64),
        (7, 67, 17),
        (5, 300, 95),
        (53, 64, 45),
        (32, 96, 32),
        (16, 32, 17),
    ] {
        let n_panels = n_out.div_ceil(NR);
        // The weights (out × k), rounded to bf16, packed into panels as the formats do.
        let w: Vec<u16> = (0..n_out * k).map(|i| bf16_bits(val(i, 1))).collect();
        let mut panels = vec![0u16; n_panels * k * NR];
        for o in 0..n_out {
            let (p, j) = (o / NR, o % NR);
            for i in 0..k {
                panels[(p * k + i) * NR + bf16_lane_position(j)] = w[o * k + i];
            }
        }
        let x: Vec<f32> = (0..rows * k).map(|i| val(i, 2)).collect();
        let ld = k.next_multiple_of(2) + 2;
        let mut xb = vec![1u16; rows * ld];
        round_rows_to_bf16(&x, k, ld, &mut xb);
        let mut y = vec![f32::NAN; rows * n_out];
        for p in 0..n_panels {
            // SAFETY: this CPU has the bf16 dot products (checked above); `xb` has `rows` rows at
            // stride `ld` > k, zero past k; the panel has k × 32 values; the output has
            // `rows` rows of n_out, and this call writes its panel's columns only.
            unsafe {
                gemm_panel_bf16(
                    xb.as_ptr(),
                    ld,
                    rows,
                    k,
                    panels[p * k * NR..].as_ptr(),
                    y.as_mut_ptr().add(p * NR),
                    n_out,
                    (n_out - p * NR).min(NR),
                )
            }
        }
        let bf = |h: u16| f32::from_bits((h as u32) << 16) as f64;
        let unit = 2f64.powi(if cfg!(target_arch = "aarch64") {
            -23
        } else {
            -24
        });
        let mut worst_unrounded = 0.0f64;
        for r in 0..rows {
            for o in 0..n_out {
                let (mut exact, mut mag, mut unrounded) = (0.0f64, 0.0f64, 0.0f64);
                for i in 0..k {
                    let p = bf(w[o * k + i]) * bf(bf16_bits(x[r * k + i]));
                    exact += p;
                    mag += p.abs();
                    unrounded += bf(w[o * k + i]) * x[r * k + i] as f64;
                }
                let got = y[r * n_out + o] as f64;
                let tol = k as f64 * unit * mag + 1e-30;
                assert!(
                    (got - exact).abs() <= tol,
                    "rows={rows} k={k} out={n_out} at ({r}, {o}): {got} vs {exact} (±{tol:e})"
                );
                worst_unrounded = worst_unrounded.max((exact - unrounded).abs() / tol);
            }
        }
        // The tolerance is tight enough to tell rounded activations from unrounded ones.
        if k >= 31 {
            assert!(
                worst_unrounded > 1.0,
                "k={k}: rounding the activations moved no sum past the tolerance"
            );
        }
    }
}

/// Distance in units in the last place between two f32 of the same sign (the ordered bit
/// patterns), 0 for two NaNs; `u32::MAX` when only one is a NaN or their signs differ.
fn ulps(a: f32, b: f32) -> u32 {
    if a.is_nan() || b.is_nan() {
        return if a.is_nan() && b.is_nan() {
            0
        } else {
            u32::MAX
        };
    }
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.abs().to_bits().abs_diff(b.abs().to_bits())
}

/// Inputs for the activations: a sweep over their whole range (past both ends of the
/// exponential's), the tanh kernel's switch at 0.625, and the special values.
fn activation_inputs() -> Vec<f32> {
    let mut v: Vec<f32> = (0..24_000).map(|i| -120.0 + i as f32 * 0.01).collect();
    let edges = [
        0.625f32, 88.72, 88.73, 89.0, 103.9, 104.0, 104.5, 87.3, 87.4,
    ];
    for e in edges {
        for d in -3..=3 {
            let x = f32::from_bits((e.to_bits() as i32 + d) as u32);
            v.extend([x, -x]);
        }
    }
    v.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-40,
        -1e-40,
        1e-7,
        -3e-5,
        1e30,
        -1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    v
}

#[test]
fn activations_are_within_three_units_in_the_last_place_at_every_level() {
    let x = activation_inputs();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut all = levels();
    all.push(Level::PORTABLE);
    for level in all {
        let t = Kernels::build(level);
        // (name, the kernel on a copy of `x`, the exact value of an input in f64)
        type Exact = Box<dyn Fn(f32) -> f64>;
        let cases: Vec<(&str, Vec<f32>, Exact)> = {
            let run = |f: &dyn Fn(&mut [f32])| {
                let mut y = x.clone();
                f(&mut y);
                y
            };
            // SAFETY (every call): `levels` lists only levels this CPU runs; the kernels
            // read and write the slice they are given.
            let s = -0.606_531_f32;
            vec![
                (
                    "exp",
                    run(&|v| unsafe { (t.exp)(v, 1.0) }),
                    Box::new(|x: f32| (x as f64).exp()),
                ),
                (
                    "exp scaled",
                    run(&|v| unsafe { (t.exp)(v, s) }),
                    // The kernel's argument is the f32 product.
                    Box::new(move |x: f32| ((s * x) as f64).exp()),
                ),
                (
                    "sigmoid",
                    run(&|v| unsafe { (t.sigmoid)(v) }),
                    Box::new(move |x: f32| sig(x as f64)),
                ),
                (
                    "tanh",
                    run(&|v| unsafe { (t.tanh)(v) }),
                    Box::new(|x: f32| (x as f64).tanh()),
                ),
                (
                    "silu",
                    run(&|v| unsafe { (t.silu)(v) }),
                    Box::new(move |x: f32| x as f64 * sig(x as f64)),
                ),
            ]
        };
        for (name, got, exact) in cases {
            let mut worst = (0, 0.0f32);
            for (&xi, &yi) in x.iter().zip(&got) {
                let want = exact(xi) as f32;
                // Signed zeros keep their sign (exp and sigmoid give no zeros of either sign
                // from a zero).
                if xi == 0.0 && name != "exp" && name != "exp scaled" && name != "sigmoid" {
                    assert_eq!(
                        yi.is_sign_negative(),
                        xi.is_sign_negative(),
                        "{name} at {level:?}: the sign of {xi}"
                    );
                }
                // SiLU of -inf is -inf · 0, a NaN in f32 as in the formula.
                let want = if name == "silu" && xi == f32::NEG_INFINITY {
                    f32::NAN
                } else {
                    want
                };
                // Near zero, an absolute error under 10^-36: the formulas' own underflow
                // (σ(-92) is 1 / (1 + ∞) in f32, with the standard library's exp too).
                let d = if (yi - want).abs() < 1e-36 {
                    0
                } else {
                    ulps(yi, want)
                };
                assert!(
                    d <= 3,
                    "{name} at {level:?}: x = {xi:e} gives {yi:e}, exactly {want:e} ({d} ulps)"
                );
                if d > worst.0 {
                    worst = (d, xi);
                }
            }
            eprintln!(
                "{name} {level:?}: at most {} ulps (x = {:e})",
                worst.0, worst.1
            );
        }
    }
}

#[test]
fn an_activation_does_not_depend_on_the_place_of_a_value_in_its_slice() {
    let mut all = levels();
    all.push(Level::PORTABLE);
    let x: Vec<f32> = (0..64).map(|i| val(i, 3) * 9.0).collect();
    for level in all {
        let t = Kernels::build(level);
        type Kernel<'a> = &'a dyn Fn(&mut [f32]);
        let kernels: [(&str, Kernel); 4] = [
            // SAFETY (each): a level this CPU runs; the kernel writes the slice it is given.
            ("exp", &|v| unsafe { (t.exp)(v, -0.5) }),
            ("sigmoid", &|v| unsafe { (t.sigmoid)(v) }),
            ("tanh", &|v| unsafe { (t.tanh)(v) }),
            ("silu", &|v| unsafe { (t.silu)(v) }),
        ];
        for (name, f) in kernels {
            let alone: Vec<f32> = x
                .iter()
                .map(|&v| {
                    let mut one = [v];
                    f(&mut one);
                    one[0]
                })
                .collect();
            // Every length and start, and nothing written outside the slice.
            for start in [0, 1, 5] {
                for len in 0..=40 {
                    let mut y = x.clone();
                    f(&mut y[start..start + len]);
                    for (i, (&yi, (&xi, &ai))) in y.iter().zip(x.iter().zip(&alone)).enumerate() {
                        let inside = (start..start + len).contains(&i);
                        let want = if inside { ai } else { xi };
                        assert_eq!(
                            yi.to_bits(),
                            want.to_bits(),
                            "{name} {level:?}: value {i} of a slice {start}..{}",
                            start + len
                        );
                    }
                }
            }
        }
    }
}
