//! The WKV-7 token kernel: one token of the RWKV-7 recurrence for one head. Its driver over
//! heads and tokens (the state transposes, the threads) lives with the models
//! (`crate::models::wkv`); the AVX-512 version is in the x86-64 file.

use super::kernels;

/// One token of the RWKV-7 recurrence for one head, on the state held **transposed**:
/// `st[j·n + i]` is `S[i][j]` (value channel i, key channel j). With
/// `sa_i = Σ_j S_ij·kk_j`:
///
/// ```text
/// S_ij ← S_ij·w_j − sa_i·(kk_j·a_j) + v_i·k_j        o_i = Σ_j S_ij·r_j  (new S)
/// ```
///
/// In the transposed layout both sums are vectors over `i` built from broadcasts, so the
/// kernel needs no horizontal sums; the whole state (16 KiB at n = 64) stays in L1.
#[allow(clippy::too_many_arguments)]
pub fn wkv7_token(
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    let simd = kernels().wkv7_token_x16;
    checked(simd, wkv7_token_portable, st, n, r, w, k, v, kk, a, o)
}

/// A plain-Rust WKV token kernel (the signature of [`super::Wkv7Fn`], safe).
pub(super) type PortableFn =
    fn(&mut [f32], usize, &[f32], &[f32], &[f32], &[f32], &[f32], &[f32], &mut [f32]);

/// Runs one token through `simd` (where the CPU has it and the head size suits it) or
/// `portable`, after checking every slice against the head size `n`: what makes the SIMD
/// kernels' unchecked accesses sound.
#[allow(clippy::too_many_arguments)]
fn checked(
    simd: Option<super::Wkv7Fn>,
    portable: PortableFn,
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    assert!(st.len() >= n * n);
    for s in [r, w, k, v, kk, a] {
        assert!(s.len() >= n);
    }
    assert!(o.len() >= n);
    if let Some(simd) = simd {
        if n.is_multiple_of(16) && n <= 128 {
            // SAFETY: the table holds only kernels the CPU supports (see `super::Kernels`);
            // the asserts above bound every access (the state n × n, the vectors n long), and
            // n is a multiple of 16 up to 128, as the kernel requires.
            unsafe { simd(st, n, r, w, k, v, kk, a, o) };
            return;
        }
    }
    portable(st, n, r, w, k, v, kk, a, o)
}

/// [`wkv7_token`] in plain Rust, for any head size.
#[allow(clippy::too_many_arguments)]
pub(super) fn wkv7_token_portable(
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    let mut sa = vec![0.0f32; n];
    for (row, kj) in st.chunks_exact(n).zip(kk).take(n) {
        for (s, x) in sa.iter_mut().zip(row) {
            *s += x * kj;
        }
    }
    o[..n].fill(0.0);
    for (j, row) in st.chunks_exact_mut(n).enumerate().take(n) {
        let (wj, bj, kj, rj) = (w[j], -kk[j] * a[j], k[j], r[j]);
        for i in 0..n {
            let x = row[i] * wj + sa[i] * bj + v[i] * kj;
            row[i] = x;
            o[i] += x * rj;
        }
    }
}

/// [`wkv7_token`] on the state in the official layout, `st[i·n + j] = S[i][j]`: for a single
/// token, where transposing the state into [`wkv7_token`]'s layout and back would cost more
/// than the step itself. Each row is read and written once; `sa_i` and `o_i` are sums along
/// the row (in another order than [`wkv7_token`]'s, so the two agree to rounding).
#[allow(clippy::too_many_arguments)]
pub fn wkv7_token_rows(
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    let simd = kernels().wkv7_rows_x16;
    checked(simd, wkv7_token_rows_portable, st, n, r, w, k, v, kk, a, o)
}

/// [`wkv7_token_rows`] in plain Rust, for any head size.
#[allow(clippy::too_many_arguments)]
pub(super) fn wkv7_token_rows_portable(
    st: &mut [f32],
    n: usize,
    r: &[f32],
    w: &[f32],
    k: &[f32],
    v: &[f32],
    kk: &[f32],
    a: &[f32],
    o: &mut [f32],
) {
    for (i, row) in st.chunks_exact_mut(n).enumerate().take(n) {
        let sa: f32 = row.iter().zip(kk).map(|(x, kj)| x * kj).sum();
        let mut out = 0.0f32;
        for j in 0..n {
            let x = row[j] * w[j] + sa * (-kk[j] * a[j]) + v[i] * k[j];
            row[j] = x;
            out += x * r[j];
        }
        o[i] = out;
    }
}
