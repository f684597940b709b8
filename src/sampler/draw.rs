//! The inverse-CDF draws: over all ids through partial sums of `CHUNK` ids, over a candidate
//! list, and among +inf logits.

use super::exp::exp_nonpos;
use super::rng::SplitMix64;

/// Ids per partial sum in the full-vocabulary draw.
pub(super) const CHUNK: usize = 256;

/// Replaces every value by `e^((x - max) * inv_t)`, stores the sum of each run
/// of `CHUNK` ids in `sums`, and returns the total. The sums use fixed lanes, so
/// the result is deterministic and the loops vectorise.
pub(super) fn exp_with_chunk_sums(
    buf: &mut [f32],
    max: f32,
    inv_t: f32,
    sums: &mut Vec<f64>,
) -> f64 {
    for x in buf.iter_mut() {
        *x = exp_nonpos((*x - max) * inv_t);
    }
    sums.clear();
    sums.extend(buf.chunks(CHUNK).map(sum_f64));
    sums.iter().sum()
}

fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut lanes = xs.chunks_exact(8);
    for c in &mut lanes {
        for j in 0..8 {
            acc[j] += c[j] as f64;
        }
    }
    for (a, &x) in acc.iter_mut().zip(lanes.remainder()) {
        *a += x as f64;
    }
    acc.iter().sum()
}

/// Inverse-CDF draw over all ids: find the chunk by its partial sum, then walk
/// inside it. Zero-weight ids are never returned.
pub(super) fn draw_chunked(probs: &[f32], sums: &[f64], total: f64, rng: &mut SplitMix64) -> u32 {
    let r = rng.next_f64() * total;
    let mut cum = 0.0f64;
    let mut chosen = None;
    for (c, &s) in sums.iter().enumerate() {
        if s > 0.0 {
            chosen = Some((c, cum));
            if cum + s > r {
                break;
            }
        }
        cum += s;
    }
    // With rounding, r may lie past the last chunk: then `chosen` is the last
    // chunk with mass, and the walk below ends on its last positive id.
    let Some((c, before)) = chosen else {
        return 0;
    };
    let base = c * CHUNK;
    let end = (base + CHUNK).min(probs.len());
    let mut inner = before;
    let mut last = base;
    for (t, &p) in probs[base..end].iter().enumerate() {
        if p > 0.0 {
            inner += p as f64;
            last = base + t;
            if inner > r {
                break;
            }
        }
    }
    last as u32
}

/// Uniform choice among the ids whose value is +inf.
pub(super) fn pick_infinite(
    vals: &[f32],
    ids: impl Iterator<Item = u32>,
    rng: &mut SplitMix64,
) -> u32 {
    let winners: Vec<u32> = ids.filter(|&t| vals[t as usize] == f32::INFINITY).collect();
    let j = (rng.next_f64() * winners.len() as f64) as usize;
    winners[j.min(winners.len() - 1)]
}

/// Inverse-CDF draw over `ids` with weights `probs[id]` summing to `mass`.
/// Zero-weight ids are never returned; rounding past the end returns the last
/// id with positive weight (or `fallback` if there is none).
pub(super) fn draw(
    probs: &[f32],
    ids: impl Iterator<Item = u32>,
    mass: f64,
    rng: &mut SplitMix64,
    fallback: u32,
) -> u32 {
    let r = rng.next_f64() * mass;
    let mut cum = 0.0f64;
    let mut last = fallback;
    for t in ids {
        let p = probs[t as usize];
        if p > 0.0 {
            cum += p as f64;
            last = t;
            if cum > r {
                return t;
            }
        }
    }
    last
}
