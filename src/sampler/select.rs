//! Which ids survive the filters: the top-k selection and the nucleus's probability buckets.

use std::cmp::Ordering;

/// Descending by value, then ascending by id. Values must not be NaN.
#[inline]
pub(super) fn rank(vals: &[f32], a: u32, b: u32) -> Ordering {
    let (va, vb) = (vals[a as usize], vals[b as usize]);
    vb.partial_cmp(&va)
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Number of probability buckets: `bucket(1.0)` is 0x3F8 = 1016.
pub(super) const HIST_LEN: usize = 1024;

/// Monotone bucket of a probability in [0, 1] (8 buckets per power of two).
#[inline]
pub(super) fn bucket(p: f32) -> usize {
    (p.to_bits() >> 20) as usize
}

/// Fills `idx` with the `k` best ids of `vals` (descending value, ties to lower
/// ids), sorted best-first; -inf entries are skipped. Streams over `vals` with
/// a rising threshold, so only O(k) candidates are ever ranked.
pub(super) fn top_k_candidates(vals: &[f32], k: usize, idx: &mut Vec<u32>) {
    idx.clear();
    let cap = k.saturating_mul(2).max(k + 64);
    let mut thr = f32::NEG_INFINITY;
    for (i, &v) in vals.iter().enumerate() {
        // Ids come in increasing order, so a later value equal to the threshold
        // ranks below every kept one and can be skipped.
        if v <= thr {
            continue;
        }
        idx.push(i as u32);
        if idx.len() >= cap {
            idx.select_nth_unstable_by(k - 1, |&a, &b| rank(vals, a, b));
            idx.truncate(k);
            thr = vals[idx[k - 1] as usize];
        }
    }
    if idx.len() > k {
        idx.select_nth_unstable_by(k - 1, |&a, &b| rank(vals, a, b));
        idx.truncate(k);
    }
    idx.sort_unstable_by(|&a, &b| rank(vals, a, b));
}
