//! Every WKV recurrence, the heart of each RWKV version: the part that carries the recurrent
//! state from token to token, stepped per token while the projections around it run as
//! batched matrix products. One function per state form, with the layout of the state it
//! keeps ([`super::LayerState::wkv`]):
//!
//! - [`wkv4`] (v4): per channel, a numerically safe weighted average: `[aa | bb | pp]`, 3 × C;
//! - [`wkv5`] (v5, v6): per head, a matrix state `H × N(key) × N(value)` with a decay;
//! - [`wkv7`] (v7): per head, the generalised delta rule, state `H × N(value) × N(key)`, on the
//!   SIMD kernel [`crate::kernels::wkv7_token`].
//!
//! [`per_head`] runs the matrix-state recurrences with the heads in parallel.

use super::Config;
use crate::kernels::{wkv7_token, wkv7_token_rows};
use crate::ops::pool::items_per_thread;
use crate::ops::{par_chunks2_mut, Mat};

/// Floats in one layer's v4 state: `[aa | bb | pp]`, each `n_att` wide.
pub fn wkv4_state_len(cfg: &Config) -> usize {
    3 * cfg.n_att
}

/// One layer's v4 state before any token: `aa = bb = 0` and `pp` (the running maximum
/// exponent) very negative — a state of zeros would be wrong.
pub fn wkv4_initial_state(cfg: &Config) -> Vec<f32> {
    let c = cfg.n_att;
    let mut v = vec![0.0; 3 * c];
    v[2 * c..].fill(-1e30);
    v
}

/// Floats in one layer's matrix state (v5–v7): `n_head` blocks of `head_size²`.
pub fn matrix_state_len(cfg: &Config) -> usize {
    cfg.n_head * cfg.head_size * cfg.head_size
}

/// One layer's matrix state (v5–v7) before any token: zeros.
pub fn matrix_initial_state(cfg: &Config) -> Vec<f32> {
    vec![0.0; matrix_state_len(cfg)]
}

/// The RWKV-4 recurrence over `r` (receptance, after its sigmoid), `k`, `v` (T × C), with
/// `decay` = `−exp(time_decay)` and `bonus` = `time_first` per channel; returns `r ⊙ wkv`.
/// `state` is `[aa | bb | pp]`: numerator, denominator and the running maximum exponent that
/// keeps every `exp` ≤ 1:
///
/// ```text
/// wkv_t = (Σ_{i<t} e^{(t−1−i)w + k_i} v_i + e^{u + k_t} v_t) / (same without v)
/// ```
pub fn wkv4(r: &Mat, k: &Mat, v: &Mat, decay: &[f32], bonus: &[f32], state: &mut [f32]) -> Mat {
    let c = r.cols;
    let (aa, rest) = state.split_at_mut(c);
    let (bb, pp) = rest.split_at_mut(c);
    let mut out = Mat::zeros(r.rows, c);
    for t in 0..r.rows {
        let (kt, vt, rt) = (k.row(t), v.row(t), r.row(t));
        let ot = out.row_mut(t);
        for j in 0..c {
            let (kj, vj) = (kt[j], vt[j]);
            // Output: include the current token with the bonus u.
            let ww = bonus[j] + kj;
            let p = pp[j].max(ww);
            let (e1, e2) = ((pp[j] - p).exp(), (ww - p).exp());
            ot[j] = rt[j] * (e1 * aa[j] + e2 * vj) / (e1 * bb[j] + e2);
            // State: decay the past, add the current token.
            let ww = decay[j] + pp[j];
            let p = ww.max(kj);
            let (e1, e2) = ((ww - p).exp(), (kj - p).exp());
            aa[j] = e1 * aa[j] + e2 * vj;
            bb[j] = e1 * bb[j] + e2;
            pp[j] = p;
        }
    }
    out
}

/// The v5/v6 WKV recurrence over `r, k, v` (T × H·N) with per-key-channel decay `w`
/// (one row per token, or a single row shared by all tokens) and bonus `u` (H·N).
/// The state per head is `S[i][j]`, `i` the key channel and `j` the value channel:
///
/// ```text
/// out_j = Σ_i r_i · (u_i·k_i·v_j + S_ij)        S_ij ← k_i·v_j + w_i·S_ij
/// ```
pub fn wkv5(
    r: &Mat,
    k: &Mat,
    v: &Mat,
    w: &Mat,
    u: &[f32],
    n_head: usize,
    state: &mut [f32],
) -> Mat {
    let n = r.cols / n_head;
    per_head(state, n_head, n, r.rows, |h, s, out_h| {
        let hs = h * n..(h + 1) * n;
        let u = &u[hs.clone()];
        for t in 0..r.rows {
            let (rt, kt, vt) = (
                &r.row(t)[hs.clone()],
                &k.row(t)[hs.clone()],
                &v.row(t)[hs.clone()],
            );
            let wt = &w.row(if w.rows == 1 { 0 } else { t })[hs.clone()];
            let o = &mut out_h[t * n..(t + 1) * n];
            for (i, row) in s.chunks_exact_mut(n).enumerate() {
                let (ri, ki, wi, ui) = (rt[i], kt[i], wt[i], u[i]);
                for ((x, o), vj) in row.iter_mut().zip(o.iter_mut()).zip(vt) {
                    let kv = ki * vj;
                    *o += ri * (ui * kv + *x);
                    *x = kv + wi * *x;
                }
            }
        }
    })
}

thread_local! {
    /// Per-thread transposed copy of one head's RWKV-7 state.
    static WKV_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[j·n + i] = src[i·n + j]` for one `n × n` block, in 16 × 16 tiles (the tile's rows read
/// and its columns written as whole runs; a plain strided loop costs ~20× the WKV kernel).
fn transpose(src: &[f32], dst: &mut [f32], n: usize) {
    const T: usize = 16;
    let (src, dst) = (&src[..n * n], &mut dst[..n * n]);
    if !n.is_multiple_of(T) {
        for (i, row) in src.chunks_exact(n).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                dst[j * n + i] = x;
            }
        }
        return;
    }
    let mut tile = [[0.0f32; T]; T];
    for i0 in (0..n).step_by(T) {
        for j0 in (0..n).step_by(T) {
            for (i, t) in tile.iter_mut().enumerate() {
                t.copy_from_slice(&src[(i0 + i) * n + j0..][..T]);
            }
            for j in 0..T {
                let out = &mut dst[(j0 + j) * n + i0..][..T];
                for (o, t) in out.iter_mut().zip(&tile) {
                    *o = t[j];
                }
            }
        }
    }
}

/// Runs `f` on one head's `n × n` state `st` held transposed (as [`wkv7_token`] wants it) in
/// this thread's buffer, then writes it back.
fn with_transposed(st: &mut [f32], n: usize, f: impl FnOnce(&mut [f32])) {
    WKV_T.with(|buf| {
        let mut s_t = buf.borrow_mut();
        s_t.resize(n * n, 0.0);
        // One value of every cache line first: independent loads that the core overlaps, where
        // the tiles' loads would wait for the hardware prefetcher, which starts again at every
        // 4 KiB page (a decoding sequence's state comes from memory: 12% of a batched q8_0
        // step of the 0.1B shape at B = 8).
        let mut acc = 0.0f32;
        for x in st[..n * n].iter().step_by(16) {
            acc += *x;
        }
        std::hint::black_box(acc);
        transpose(st, &mut s_t, n);
        f(&mut s_t);
        transpose(&s_t, st, n);
    })
}

/// Row `t` of `[r, w, k, v, kk, a]` through head `h` of a state held transposed (`s_t`),
/// its output to `o`.
fn head_token(s_t: &mut [f32], n: usize, h: usize, ins: [&Mat; 6], t: usize, o: &mut [f32]) {
    let [r, w, k, v, kk, a] = ins.map(|m| &m.row(t)[h * n..(h + 1) * n]);
    wkv7_token(s_t, n, r, w, k, v, kk, a, o)
}

/// [`head_token`] on a state in the official layout (a single token: no transposes).
fn head_token_rows(st: &mut [f32], n: usize, h: usize, ins: [&Mat; 6], t: usize, o: &mut [f32]) {
    let [r, w, k, v, kk, a] = ins.map(|m| &m.row(t)[h * n..(h + 1) * n]);
    wkv7_token_rows(st, n, r, w, k, v, kk, a, o)
}

/// The RWKV-7 recurrence over a chunk, heads in parallel.
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
/// sums, and transposed back at the end. A single token (the decode step) is computed in
/// place instead ([`crate::kernels::wkv7_token_rows`]): two transposes would cost more than
/// the step.
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
    if t_count == 1 {
        // One token: in place, in the official layout (no transposes).
        return per_head(state, n_head, n, 1, |h, st, out_h| {
            head_token_rows(st, n, h, [r, w, k, v, kk, a], 0, out_h)
        });
    }
    per_head(state, n_head, n, t_count, |h, st, out_h| {
        with_transposed(st, n, |s_t| {
            for t in 0..t_count {
                let o = &mut out_h[t * n..(t + 1) * n];
                head_token(s_t, n, h, [r, w, k, v, kk, a], t, o);
            }
        })
    })
}

/// [`wkv7`] for B independent sequences, one token each: row `b` of the inputs
/// `[r, w, k, v, kk, a]` is fed to `states[b]` (one layer's state of sequence `b`). Every
/// (sequence, head) pair is one task of a single parallel call; each gives exactly what
/// [`wkv7`] gives that sequence alone.
pub fn wkv7_rows(states: &mut [&mut [f32]], n_head: usize, n: usize, ins: [&Mat; 6]) -> Mat {
    let rows = ins[0].rows;
    assert_eq!(states.len(), rows, "wkv7_rows: one state per row");
    let mut heads: Vec<&mut [f32]> = states
        .iter_mut()
        .flat_map(|s| s[..n_head * n * n].chunks_exact_mut(n * n))
        .collect();
    let mut out = Mat::zeros(rows, n_head * n);
    // Output piece i (n values) is row b = i / n_head, head h = i % n_head; each task takes
    // `per` of them (one token's heads, grouped as in `per_head`).
    let per = items_per_thread(heads.len());
    par_chunks2_mut(&mut out.data, per * n, &mut heads, per, |c, o, st| {
        for (j, (o, st)) in o.chunks_mut(n).zip(st.iter_mut()).enumerate() {
            let i = c * per + j;
            head_token_rows(st, n, i % n_head, ins, i / n_head, o)
        }
    });
    out
}

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
    assert!(state.len() >= n_head * n * n);
    // Heads per task: one for a sequence (much work per head: the tasks balance the cores);
    // for one token, as few tasks as threads (1.5B decode, 32 heads: 39.5 µs a layer with a
    // task per head, 25.8 on one thread, 18.4 so).
    let hpt = if t_count == 1 {
        items_per_thread(n_head)
    } else {
        1
    };
    par_chunks2_mut(
        &mut per_head,
        hpt * t_count * n,
        state,
        hpt * n * n,
        |c, out_c, s_c| {
            for (j, (o, s)) in out_c
                .chunks_mut(t_count * n)
                .zip(s_c.chunks_mut(n * n))
                .enumerate()
            {
                f(c * hpt + j, s, o)
            }
        },
    );
    let mut out = Mat::zeros(t_count, n_head * n);
    for h in 0..n_head {
        for t in 0..t_count {
            out.row_mut(t)[h * n..(h + 1) * n]
                .copy_from_slice(&per_head[(h * t_count + t) * n..(h * t_count + t + 1) * n]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pseudo;

    #[test]
    fn wkv7_matches_the_row_by_row_recurrence() {
        for (n_head, n, t_count) in [
            (2, 16, 5),
            (3, 64, 7),
            (1, 8, 3),
            (2, 64, 1),
            (1, 24, 1),
            (12, 16, 1),
            (5, 16, 1),
        ] {
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

    #[test]
    fn wkv7_rows_gives_each_row_exactly_what_wkv7_gives_it_alone() {
        for (n_head, n, b_count) in [(3, 64, 5), (2, 8, 3)] {
            let c = n_head * n;
            let m = |seed| Mat::from_vec(b_count, c, pseudo(b_count * c, seed));
            let (r, k, v, kk) = (m(1), m(2), m(3), m(4));
            let w = m(5).map(|x| 0.6 + 0.7 * x.abs());
            let a = m(6).map(|x| 0.5 + x);
            let inits: Vec<Vec<f32>> = (0..b_count)
                .map(|b| pseudo(n_head * n * n, 10 + b as u32))
                .collect();
            let mut batched = inits.clone();
            let mut refs: Vec<&mut [f32]> = batched.iter_mut().map(|s| s.as_mut_slice()).collect();
            let out = wkv7_rows(&mut refs, n_head, n, [&r, &w, &k, &v, &kk, &a]);
            let row = |x: &Mat, b: usize| Mat::from_vec(1, c, x.row(b).to_vec());
            for (b, init) in inits.iter().enumerate() {
                let mut alone = init.clone();
                let (rb, wb, kb, vb) = (row(&r, b), row(&w, b), row(&k, b), row(&v, b));
                let o = wkv7(
                    &mut alone,
                    n_head,
                    n,
                    &rb,
                    &wb,
                    &kb,
                    &vb,
                    &row(&kk, b),
                    &row(&a, b),
                );
                assert_eq!(out.row(b), o.row(0), "row {b}");
                assert_eq!(batched[b], alone, "state {b}");
            }
        }
    }
}
