//! TEMPORARY (helper A's worktree only): `per_head` and `wkv7` moved verbatim out of
//! `ops.rs` so that this branch compiles; helper B's `models/wkv.rs` replaces this file.

use crate::ops::{par_chunks_mut, Mat};

thread_local! {
    /// Per-thread transposed copy of one head's RWKV-7 state.
    static WKV_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A raw pointer to the heads' states, which several threads write, one head each.
struct StatePtr(*mut f32);
// SAFETY: only used by `per_head`, whose tasks write disjoint head blocks of a slice that is
// borrowed mutably for the whole call.
unsafe impl Send for StatePtr {}
// SAFETY: as above.
unsafe impl Sync for StatePtr {}

/// Runs a per-head recurrence with the heads in parallel.
///
/// `state` holds `n_head` blocks of `n × n`; `f(h, state_h, out_h)` steps head `h` through all
/// `t_count` tokens, writing its outputs to `out_h` (`t_count × n`). Returns the outputs
/// assembled as a `t_count × (n_head · n)` matrix.
pub fn per_head<F>(state: &mut [f32], n_head: usize, n: usize, t_count: usize, f: F) -> Mat
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let mut per_head = vec![0.0f32; n_head * t_count * n];
    let st = StatePtr(state.as_mut_ptr());
    let st = &st;
    assert!(state.len() >= n_head * n * n);
    par_chunks_mut(&mut per_head, t_count * n, false, |h, out_h| {
        // SAFETY: head h's state block `h·n² .. (h+1)·n²` lies within `state` (asserted
        // above); each head index is run exactly once, so the blocks are disjoint, and `state`
        // stays mutably borrowed until `par_chunks_mut` returns.
        let s = unsafe { std::slice::from_raw_parts_mut(st.0.add(h * n * n), n * n) };
        f(h, s, out_h)
    });
    let mut out = Mat::zeros(t_count, n_head * n);
    for h in 0..n_head {
        for t in 0..t_count {
            out.row_mut(t)[h * n..(h + 1) * n]
                .copy_from_slice(&per_head[(h * t_count + t) * n..(h * t_count + t + 1) * n]);
        }
    }
    out
}

/// The RWKV-7 recurrence ("generalised delta rule") over a chunk, heads in parallel.
///
/// `state` holds `n_head` blocks of `n × n` in the official layout (row i = value channel,
/// column j = key channel); `r, w, k, v, kk, a` are `t × (n_head·n)`: receptance, decay,
/// key, value, the normalised removal key κ̂ and the in-context learning rate. Per head and
/// token, with `sa = S·κ̂`:
///
/// ```text
/// S ← S·diag(w) − sa·(κ̂ ⊙ a)ᵀ + v·kᵀ        out = S·r
/// ```
///
/// Each head's state is transposed into a per-thread buffer for the chunk, so that the
/// kernel ([`crate::kernels::wkv7_token`]) runs on whole 16-lane vectors with no horizontal
/// sums, and transposed back at the end.
#[allow(clippy::too_many_arguments)]
pub fn wkv7(
    state: &mut [f32],
    n_head: usize,
    n: usize,
    r: &Mat,
    w: &Mat,
    k: &Mat,
    v: &Mat,
    kk: &Mat,
    a: &Mat,
) -> Mat {
    let t_count = r.rows;
    per_head(state, n_head, n, t_count, |h, st, out_h| {
        WKV_T.with(|buf| {
            let mut s_t = buf.borrow_mut();
            s_t.resize(n * n, 0.0);
            for i in 0..n {
                for j in 0..n {
                    s_t[j * n + i] = st[i * n + j];
                }
            }
            let hs = h * n..(h + 1) * n;
            for t in 0..t_count {
                crate::kernels::wkv7_token(
                    &mut s_t,
                    n,
                    &r.row(t)[hs.clone()],
                    &w.row(t)[hs.clone()],
                    &k.row(t)[hs.clone()],
                    &v.row(t)[hs.clone()],
                    &kk.row(t)[hs.clone()],
                    &a.row(t)[hs.clone()],
                    &mut out_h[t * n..(t + 1) * n],
                );
            }
            for i in 0..n {
                for j in 0..n {
                    st[i * n + j] = s_t[j * n + i];
                }
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn wkv7_matches_the_row_by_row_recurrence() {
        for (n_head, n, t_count) in [(2, 16, 5), (3, 64, 7), (1, 8, 3)] {
            let c = n_head * n;
            let m = |seed| Mat::from_vec(t_count, c, pseudo(t_count * c, seed));
            let (r, k, v, kk) = (m(1), m(2), m(3), m(4));
            let w = m(5).map(|x| 0.6 + 0.7 * x.abs());
            let a = m(6).map(|x| 0.5 + x);
            let init = pseudo(n_head * n * n, 7);
            let mut s1 = init.clone();
            let out = wkv7(&mut s1, n_head, n, &r, &w, &k, &v, &kk, &a);
            // The official formulation, one state row (value channel) at a time.
            let mut s2 = init;
            let mut expect = Mat::zeros(t_count, c);
            for h in 0..n_head {
                let st = &mut s2[h * n * n..(h + 1) * n * n];
                let hs = h * n..(h + 1) * n;
                for t in 0..t_count {
                    let (rh, wh, kh) = (
                        &r.row(t)[hs.clone()],
                        &w.row(t)[hs.clone()],
                        &k.row(t)[hs.clone()],
                    );
                    let (vh, kkh, ah) = (
                        &v.row(t)[hs.clone()],
                        &kk.row(t)[hs.clone()],
                        &a.row(t)[hs.clone()],
                    );
                    for i in 0..n {
                        let row = &mut st[i * n..(i + 1) * n];
                        let sa: f32 = -(0..n).map(|j| row[j] * kkh[j]).sum::<f32>();
                        for j in 0..n {
                            row[j] = row[j] * wh[j] + sa * kkh[j] * ah[j] + vh[i] * kh[j];
                        }
                        expect.row_mut(t)[h * n + i] = (0..n).map(|j| row[j] * rh[j]).sum();
                    }
                }
            }
            for (x, y) in out.data.iter().zip(&expect.data) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
            for (x, y) in s1.iter().zip(&s2) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "state {x} vs {y}");
            }
        }
    }
}
