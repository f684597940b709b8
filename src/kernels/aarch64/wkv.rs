//! The WKV-7 recurrence for one token of one head, NEON: on the transposed state
//! ([`wkv7_token_neon`]) and on the official layout ([`wkv7_token_rows_neon`]); the portable
//! twins and their contract (head sizes a multiple of 16, up to 128) are in
//! `super::super::wkv`.

use std::arch::aarch64::*;

/// The WKV-7 token on the transposed state (see `super::wkv::wkv7_token`), in strips of
/// sixteen value channels (four vectors), each strip's columns independent of the others'.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn wkv7_token_neon(
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
        let mut sa = [vdupq_n_f32(0.0); 4];
        for (j, kkj) in kk[..n].iter().enumerate() {
            let row = st.add(j * n + i0);
            for (m, s) in sa.iter_mut().enumerate() {
                *s = vfmaq_n_f32(*s, vld1q_f32(row.add(4 * m)), *kkj);
            }
        }
        let vv: [float32x4_t; 4] = std::array::from_fn(|m| vld1q_f32(v.as_ptr().add(i0 + 4 * m)));
        let mut acc = [vdupq_n_f32(0.0); 4];
        for j in 0..n {
            let bj = -kk[j] * a[j];
            let row = st.add(j * n + i0);
            for m in 0..4 {
                let p = row.add(4 * m);
                let x = vfmaq_n_f32(
                    vfmaq_n_f32(vmulq_n_f32(vv[m], k[j]), sa[m], bj),
                    vld1q_f32(p),
                    w[j],
                );
                vst1q_f32(p, x);
                acc[m] = vfmaq_n_f32(acc[m], x, r[j]);
            }
        }
        for (m, x) in acc.iter().enumerate() {
            vst1q_f32(o.as_mut_ptr().add(i0 + 4 * m), *x);
        }
    }
}

/// The WKV-7 token on the state in the official layout (see `super::wkv::wkv7_token_rows`):
/// each row read once for `sa_i`, then updated and summed into `o_i`.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn wkv7_token_rows_neon(
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
        let mut acc = [vdupq_n_f32(0.0); 4];
        for m in (0..n).step_by(16) {
            for (u, s) in acc.iter_mut().enumerate() {
                let at = m + 4 * u;
                *s = vfmaq_f32(*s, vld1q_f32(row.add(at)), vld1q_f32(kk.add(at)));
            }
        }
        let sa = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        let vi = v[i];
        let mut out = [vdupq_n_f32(0.0); 4];
        for m in (0..n).step_by(16) {
            for (u, s) in out.iter_mut().enumerate() {
                let at = m + 4 * u;
                let p = row.add(at);
                let x = vfmaq_f32(
                    vfmaq_n_f32(
                        vmulq_n_f32(vld1q_f32(k.add(at)), vi),
                        vld1q_f32(b.add(at)),
                        sa,
                    ),
                    vld1q_f32(p),
                    vld1q_f32(w.add(at)),
                );
                vst1q_f32(p, x);
                *s = vfmaq_f32(*s, x, vld1q_f32(r.add(at)));
            }
        }
        *oi = vaddvq_f32(vaddq_f32(
            vaddq_f32(out[0], out[1]),
            vaddq_f32(out[2], out[3]),
        ));
    }
}
