//! The WKV-7 recurrence for one token of one head, AVX-512 and AVX2: on the transposed state
//! ([`wkv7_token_avx512`], [`wkv7_token_avx2`]) and on the official layout
//! ([`wkv7_token_rows_avx512`], [`wkv7_token_rows_avx2`]); the portable twins and their
//! contract (head sizes a multiple of 16, up to 128) are in `super::super::wkv`.

use super::hsum256;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wkv7_token_512<const M: usize>(
    st: *mut f32,
    r: *const f32,
    w: *const f32,
    k: *const f32,
    v: *const f32,
    kk: *const f32,
    a: *const f32,
    o: *mut f32,
) {
    let n = 16 * M;
    let mut sa = [_mm512_setzero_ps(); M];
    for j in 0..n {
        let c = _mm512_set1_ps(*kk.add(j));
        let row = st.add(j * n);
        for (m, s) in sa.iter_mut().enumerate() {
            *s = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16 * m)), c, *s);
        }
    }
    let mut vv = [_mm512_setzero_ps(); M];
    for (m, x) in vv.iter_mut().enumerate() {
        *x = _mm512_loadu_ps(v.add(16 * m));
    }
    let mut acc = [_mm512_setzero_ps(); M];
    for j in 0..n {
        let wj = _mm512_set1_ps(*w.add(j));
        let bj = _mm512_set1_ps(-*kk.add(j) * *a.add(j));
        let kj = _mm512_set1_ps(*k.add(j));
        let rj = _mm512_set1_ps(*r.add(j));
        let row = st.add(j * n);
        for m in 0..M {
            let p = row.add(16 * m);
            let x = _mm512_fmadd_ps(
                _mm512_loadu_ps(p),
                wj,
                _mm512_fmadd_ps(sa[m], bj, _mm512_mul_ps(vv[m], kj)),
            );
            _mm512_storeu_ps(p, x);
            acc[m] = _mm512_fmadd_ps(x, rj, acc[m]);
        }
    }
    for (m, x) in acc.iter().enumerate() {
        _mm512_storeu_ps(o.add(16 * m), *x);
    }
}

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn wkv7_token_avx512(
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
    let (s, r, w, k, v, kk, a, o) = (
        st.as_mut_ptr(),
        r.as_ptr(),
        w.as_ptr(),
        k.as_ptr(),
        v.as_ptr(),
        kk.as_ptr(),
        a.as_ptr(),
        o.as_mut_ptr(),
    );
    by_rows!(n / 16, wkv7_token_512(s, r, w, k, v, kk, a, o), 1 2 3 4 5 6 7 8)
}

/// One token of one head on the state in the official layout (row i = value channel):
/// every row is read once, its `sa_i` and `o_i` summed across its `M` vectors and reduced
/// horizontally, and written back once.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn wkv7_rows_512<const M: usize>(
    st: *mut f32,
    r: *const f32,
    w: *const f32,
    k: *const f32,
    v: *const f32,
    kk: *const f32,
    a: *const f32,
    o: *mut f32,
) {
    let n = 16 * M;
    let ld =
        |p: *const f32| std::array::from_fn::<__m512, M, _>(|m| _mm512_loadu_ps(p.add(16 * m)));
    let (rv, wv, kv, kkv) = (ld(r), ld(w), ld(k), ld(kk));
    let av = ld(a);
    // b_j = −kk_j·a_j, as the transposed kernel computes it.
    let bv: [__m512; M] =
        std::array::from_fn(|m| _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), kkv[m]), av[m]));
    for i in 0..n {
        let row = st.add(i * n);
        let s: [__m512; M] = ld(row);
        let mut acc = _mm512_mul_ps(s[0], kkv[0]);
        for m in 1..M {
            acc = _mm512_fmadd_ps(s[m], kkv[m], acc);
        }
        let sa = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
        let vi = _mm512_set1_ps(*v.add(i));
        let mut out = _mm512_setzero_ps();
        for m in 0..M {
            let x = _mm512_fmadd_ps(
                s[m],
                wv[m],
                _mm512_fmadd_ps(sa, bv[m], _mm512_mul_ps(vi, kv[m])),
            );
            _mm512_storeu_ps(row.add(16 * m), x);
            out = _mm512_fmadd_ps(x, rv[m], out);
        }
        *o.add(i) = _mm512_reduce_add_ps(out);
    }
}

/// [`wkv7_token_avx512`] on the state in the official layout (see
/// `super::super::wkv::wkv7_token_rows`).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn wkv7_token_rows_avx512(
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
    let (s, r, w, k, v, kk, a, o) = (
        st.as_mut_ptr(),
        r.as_ptr(),
        w.as_ptr(),
        k.as_ptr(),
        v.as_ptr(),
        kk.as_ptr(),
        a.as_ptr(),
        o.as_mut_ptr(),
    );
    by_rows!(n / 16, wkv7_rows_512(s, r, w, k, v, kk, a, o), 1 2 3 4 5 6 7 8)
}

// AVX2: sixteen of a head's channels at a time (two 8-lane vectors), so that a strip's
// accumulators fit the sixteen registers whatever the head size.

/// [`wkv7_token_avx512`] on AVX2: the transposed state in strips of sixteen value channels
/// `i` (each strip's columns are independent of the others'), with the same operations per
/// value as the AVX-512 kernel.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn wkv7_token_avx2(
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
    let st = st.as_mut_ptr();
    for i0 in (0..n).step_by(16) {
        let mut sa = [_mm256_setzero_ps(); 2];
        for (j, kkj) in kk[..n].iter().enumerate() {
            let c = _mm256_set1_ps(*kkj);
            let row = st.add(j * n + i0);
            for (m, s) in sa.iter_mut().enumerate() {
                *s = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8 * m)), c, *s);
            }
        }
        let vv = [0, 8].map(|m| _mm256_loadu_ps(v.as_ptr().add(i0 + m)));
        let mut acc = [_mm256_setzero_ps(); 2];
        for j in 0..n {
            let wj = _mm256_set1_ps(w[j]);
            let bj = _mm256_set1_ps(-kk[j] * a[j]);
            let kj = _mm256_set1_ps(k[j]);
            let rj = _mm256_set1_ps(r[j]);
            let row = st.add(j * n + i0);
            for m in 0..2 {
                let p = row.add(8 * m);
                let x = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p),
                    wj,
                    _mm256_fmadd_ps(sa[m], bj, _mm256_mul_ps(vv[m], kj)),
                );
                _mm256_storeu_ps(p, x);
                acc[m] = _mm256_fmadd_ps(x, rj, acc[m]);
            }
        }
        for (m, x) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.as_mut_ptr().add(i0 + 8 * m), *x);
        }
    }
}

/// [`wkv7_token_rows_avx512`] on AVX2: each row of the state read once for `sa_i` (two
/// accumulators), then updated and summed into `o_i`; the vectors are read from memory (L1)
/// rather than held in registers, which sixteen could not do at a head size of 64.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn wkv7_token_rows_avx2(
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
    // b_j = −kk_j·a_j, as the transposed kernel computes it.
    let mut b = [0.0f32; 128];
    for ((bj, kkj), aj) in b.iter_mut().zip(&kk[..n]).zip(&a[..n]) {
        *bj = -kkj * aj;
    }
    let (r, w, k, kk, b) = (r.as_ptr(), w.as_ptr(), k.as_ptr(), kk.as_ptr(), b.as_ptr());
    let st = st.as_mut_ptr();
    for (i, oi) in o[..n].iter_mut().enumerate() {
        let row = st.add(i * n);
        let mut acc = [_mm256_setzero_ps(); 2];
        for m in (0..n).step_by(16) {
            for (u, s) in acc.iter_mut().enumerate() {
                let at = m + 8 * u;
                *s = _mm256_fmadd_ps(
                    _mm256_loadu_ps(row.add(at)),
                    _mm256_loadu_ps(kk.add(at)),
                    *s,
                );
            }
        }
        let sa = _mm256_set1_ps(hsum256(_mm256_add_ps(acc[0], acc[1])));
        let vi = _mm256_set1_ps(v[i]);
        let mut out = [_mm256_setzero_ps(); 2];
        for m in (0..n).step_by(16) {
            for (u, s) in out.iter_mut().enumerate() {
                let at = m + 8 * u;
                let p = row.add(at);
                let x = _mm256_fmadd_ps(
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(w.add(at)),
                    _mm256_fmadd_ps(
                        sa,
                        _mm256_loadu_ps(b.add(at)),
                        _mm256_mul_ps(vi, _mm256_loadu_ps(k.add(at))),
                    ),
                );
                _mm256_storeu_ps(p, x);
                *s = _mm256_fmadd_ps(x, _mm256_loadu_ps(r.add(at)), *s);
            }
        }
        *oi = hsum256(_mm256_add_ps(out[0], out[1]));
    }
}
