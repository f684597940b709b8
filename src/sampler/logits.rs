//! Functions of a whole logits vector: the greedy choice and one token's log-probability.

/// Index of the largest logit; ties go to the lowest id, NaN is never chosen,
/// and a slice with nothing above -inf (or an empty one) gives 0.
pub fn argmax(logits: &[f32]) -> u32 {
    let m = max_ignoring_nan(logits);
    if m == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&x| x == m).unwrap_or(0) as u32
}

/// Largest value, skipping NaN; -inf for an empty or all-NaN/-inf slice.
/// Eight independent lanes keep the loop free of a serial dependency.
pub(super) fn max_ignoring_nan(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut lanes = xs.chunks_exact(8);
    for c in &mut lanes {
        for j in 0..8 {
            // `x > acc` is false for NaN, so NaN never enters.
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    for &x in lanes.remainder() {
        if x > acc[0] {
            acc[0] = x;
        }
    }
    acc.iter()
        .copied()
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
}

/// A logit as the log-probabilities see it: NaN counts as -inf.
fn clean(x: f32) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else {
        x as f64
    }
}

/// What softmax(logits) is normalised by, in f64: the largest logit `max` (NaN counting as
/// -inf) and `Σ exp(x − max)`; the log-probability of a finite logit `x` is
/// `x − max − ln(sum)`.
pub fn softmax_norm(logits: &[f32]) -> (f64, f64) {
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum = logits.iter().map(|&x| (clean(x) - max).exp()).sum();
    (max, sum)
}

/// Natural-log probability of `token` under softmax(logits), computed in f64
/// with the maximum subtracted. NaN logits count as -inf. Returns -inf when
/// `token` is out of range or has no probability.
pub fn log_softmax_at(logits: &[f32], token: u32) -> f64 {
    let Some(&xt) = logits.get(token as usize) else {
        return f64::NEG_INFINITY;
    };
    let xt = clean(xt);
    let (max, sum) = softmax_norm(logits);
    if xt == f64::NEG_INFINITY || max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    if max == f64::INFINITY {
        // Only +inf logits have mass, shared equally.
        if xt != f64::INFINITY {
            return f64::NEG_INFINITY;
        }
        let n_inf = logits.iter().filter(|&&x| x == f32::INFINITY).count();
        return -(n_inf as f64).ln();
    }
    xt - max - sum.ln()
}

/// Log-probabilities under softmax(`logits`) (NaN counting as -inf, as in [`softmax_norm`]):
/// the `chosen` token's and the `top` most likely tokens' (best first, ties to the lower id),
/// as `(chosen's, [(id, logprob)])`. What `generate --logprobs` prints and `serve` answers
/// with.
pub fn top_logprobs(logits: &[f32], chosen: u32, top: usize) -> (f64, Vec<(u32, f64)>) {
    let (max, sum) = softmax_norm(logits);
    let lse = max + sum.ln();
    let lp = |id: u32| {
        logits
            .get(id as usize)
            .map_or(f64::NEG_INFINITY, |&x| clean(x) - lse)
    };
    let by_rank = |a: &u32, b: &u32| {
        clean(logits[*b as usize])
            .total_cmp(&clean(logits[*a as usize]))
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(ids.len());
    if top > 0 && top < ids.len() {
        ids.select_nth_unstable_by(top - 1, by_rank);
    }
    ids.truncate(top);
    ids.sort_unstable_by(by_rank);
    (lp(chosen), ids.into_iter().map(|id| (id, lp(id))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[5.0, 1.0, 5.0, 5.0]), 0);
        assert_eq!(argmax(&[1.0, 7.0, 3.0, 7.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, 2.0, f32::NAN, 2.0]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -1e30]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[0.0, f32::INFINITY, f32::INFINITY]), 1);
    }

    #[test]
    fn log_softmax_matches_direct() {
        let logits = [0.5f32, -1.25, 3.0, 2.0, 0.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        for (i, &x) in logits.iter().enumerate() {
            let direct = ((x as f64).exp() / z).ln();
            let got = log_softmax_at(&logits, i as u32);
            assert!((got - direct).abs() < 1e-12, "{i}: {got} vs {direct}");
        }
        // Probabilities sum to one.
        let s: f64 = (0..logits.len())
            .map(|i| log_softmax_at(&logits, i as u32).exp())
            .sum();
        assert!((s - 1.0).abs() < 1e-12);
        // Stable with huge logits (a naive exp would overflow).
        let big = [1000.0f32, 1000.0, 999.25];
        let got = log_softmax_at(&big, 2);
        let direct = (-0.75f64).exp().ln() - (2.0 + (-0.75f64).exp()).ln();
        assert!((got - direct).abs() < 1e-12, "{got} vs {direct}");
        // NaN ignored, out of range is -inf.
        let with_nan = [0.0f32, f32::NAN, 0.0];
        assert!((log_softmax_at(&with_nan, 0) - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(log_softmax_at(&with_nan, 1), f64::NEG_INFINITY);
        assert_eq!(log_softmax_at(&with_nan, 3), f64::NEG_INFINITY);
    }

    #[test]
    fn top_logprobs_are_best_first_and_agree_with_log_softmax_at() {
        let logits = [0.5f32, 3.0, -1.0, 3.0, f32::NAN, 2.0];
        let (chosen, top) = top_logprobs(&logits, 5, 3);
        assert!((chosen - log_softmax_at(&logits, 5)).abs() < 1e-12);
        let ids: Vec<u32> = top.iter().map(|e| e.0).collect();
        assert_eq!(ids, [1, 3, 5]); // the tie 1 = 3 goes to the lower id first
        for (id, lp) in top {
            assert!((lp - log_softmax_at(&logits, id)).abs() < 1e-12);
        }
        assert_eq!(top_logprobs(&logits, 0, 99).1.len(), 6);
        assert!(top_logprobs(&logits, 0, 0).1.is_empty());
        assert_eq!(top_logprobs(&logits, 4, 0).0, f64::NEG_INFINITY);
    }
}
