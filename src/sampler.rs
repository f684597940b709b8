//! Next-token sampling over f32 logits.
//!
//! Order of operations in [`Sampler::sample`]:
//! 1. copy the logits into an internal buffer (NaN becomes -inf),
//! 2. ChatRWKV-style repetition penalties,
//! 3. temperature 0: greedy argmax (ties to the lowest id), done;
//! 4. top-k (partial selection, ties at the boundary go to lower ids),
//! 5. softmax with temperature (max-subtracted, sums in f64),
//! 6. top-p (nucleus) over the survivors,
//! 7. a draw from a seeded SplitMix64 generator.
//!
//! Nothing here sorts the whole vocabulary: top-k streams over the logits with a
//! rising threshold and `select_nth_unstable_by`, sorting only the k survivors;
//! top-p without top-k buckets the probabilities by their float exponent and
//! sorts only the bucket where the nucleus ends; the plain draw finds its
//! position through partial sums of 256 ids. The exponential is our own
//! branch-free polynomial, so results do not depend on the platform's libm.
//!
//! Token ids passed to [`Sampler::accept`] index a dense table, so they are
//! expected to be vocabulary ids (not arbitrary `u32`s).

use std::cmp::Ordering;

use anyhow::{bail, Result};

/// Sampling settings. `top_p == 1.0` and `top_k == 0` switch those filters off.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub penalty_decay: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_decay: 0.996,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Checks every field; the error names the command-line flag at fault.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "--temperature must be a finite number >= 0 (got {})",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!(
                "--top-p must be in (0, 1] (got {}; use 1 to disable)",
                self.top_p
            );
        }
        if !self.presence_penalty.is_finite() {
            bail!(
                "--presence-penalty must be a finite number (got {})",
                self.presence_penalty
            );
        }
        if !self.frequency_penalty.is_finite() {
            bail!(
                "--frequency-penalty must be a finite number (got {})",
                self.frequency_penalty
            );
        }
        if !(self.penalty_decay > 0.0 && self.penalty_decay <= 1.0) {
            bail!(
                "--penalty-decay must be in (0, 1] (got {})",
                self.penalty_decay
            );
        }
        Ok(())
    }

    fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// SplitMix64: tiny, fast, and bit-for-bit reproducible on every platform. The sampler's
/// draws, and the baselines' random weights and tokens.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-1, 1) with 24 random bits.
    pub fn next_signed(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Stateful sampler: owns the RNG, the penalty counts and reusable scratch buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: SplitMix64,
    /// Decayed occurrence count per token id (dense, grown on demand).
    counts: Vec<f32>,
    /// Distinct token ids that have been accepted, in first-seen order.
    seen: Vec<u32>,
    /// `is_seen[t]` iff `t` is in `seen` (same length as `counts`).
    is_seen: Vec<bool>,
    /// Working copy of the logits, later the unnormalised probabilities.
    buf: Vec<f32>,
    /// Candidate token ids.
    idx: Vec<u32>,
    /// Ids in the nucleus boundary bucket.
    edge: Vec<u32>,
    /// Probability mass per bucket (see [`bucket`]).
    hist: Vec<f64>,
    /// Probability mass per `CHUNK` consecutive ids.
    sums: Vec<f64>,
}

/// Descending by value, then ascending by id. Values must not be NaN.
#[inline]
fn rank(vals: &[f32], a: u32, b: u32) -> Ordering {
    let (va, vb) = (vals[a as usize], vals[b as usize]);
    vb.partial_cmp(&va)
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = SplitMix64::new(cfg.seed);
        Sampler {
            cfg,
            rng,
            counts: Vec::new(),
            seen: Vec::new(),
            is_seen: Vec::new(),
            buf: Vec::new(),
            idx: Vec::new(),
            edge: Vec::new(),
            hist: Vec::new(),
            sums: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Forgets every accepted token (e.g. at the start of a new conversation).
    /// The RNG keeps its position.
    pub fn reset_penalties(&mut self) {
        for &t in &self.seen {
            self.counts[t as usize] = 0.0;
            self.is_seen[t as usize] = false;
        }
        self.seen.clear();
    }

    /// Records an emitted token for the repetition penalties:
    /// every count decays by `penalty_decay`, then `count[token] += 1`.
    pub fn accept(&mut self, token: u32) {
        let decay = self.cfg.penalty_decay;
        for &t in &self.seen {
            self.counts[t as usize] *= decay;
        }
        let i = token as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0.0);
            self.is_seen.resize(i + 1, false);
        }
        if !self.is_seen[i] {
            self.is_seen[i] = true;
            self.seen.push(token);
        }
        self.counts[i] += 1.0;
    }

    /// Picks the next token id. `logits` is not modified. An empty slice yields 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let n = logits.len();
        if n == 0 {
            return 0;
        }
        let penalize = self.cfg.has_penalties() && !self.seen.is_empty();
        if self.cfg.temperature == 0.0 && !penalize {
            return argmax(logits);
        }

        self.buf.clear();
        self.buf.extend(
            logits
                .iter()
                .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }),
        );
        if penalize {
            let (pp, fp) = (self.cfg.presence_penalty, self.cfg.frequency_penalty);
            for &t in &self.seen {
                if let Some(x) = self.buf.get_mut(t as usize) {
                    *x -= pp + self.counts[t as usize] * fp;
                }
            }
        }
        if self.cfg.temperature == 0.0 || self.cfg.top_k == 1 {
            return argmax(&self.buf);
        }
        self.sample_buf()
    }

    /// Steps 4..7 on `self.buf` (NaN-free, penalties applied, temperature > 0).
    fn sample_buf(&mut self) -> u32 {
        let n = self.buf.len();
        let inv_t = 1.0 / self.cfg.temperature;
        let top_p = self.cfg.top_p as f64;
        let k = self.cfg.top_k;
        let Sampler {
            buf,
            idx,
            edge,
            hist,
            sums,
            rng,
            ..
        } = self;

        if k > 0 && k < n {
            // Top-k: `idx` = the k best ids (fewer if some are -inf), best first.
            top_k_candidates(buf, k, idx);
            let Some(&best) = idx.first() else {
                return 0; // nothing above -inf
            };
            let max = buf[best as usize];
            if max == f32::INFINITY {
                return pick_infinite(buf, idx.iter().copied(), rng);
            }
            if !inv_t.is_finite() {
                return best; // temperature so small it is greedy
            }
            let mut total = 0.0f64;
            for &t in idx.iter() {
                let x = &mut buf[t as usize];
                let p = exp_nonpos((*x - max) * inv_t);
                *x = p;
                total += p as f64;
            }
            let mut mass = total;
            if top_p < 1.0 {
                // Probabilities are monotone in the logits: idx is still best-first.
                let target = top_p * total;
                let mut cum = 0.0f64;
                let mut keep = idx.len();
                for (i, &t) in idx.iter().enumerate() {
                    cum += buf[t as usize] as f64;
                    if cum >= target {
                        keep = i + 1;
                        break;
                    }
                }
                idx.truncate(keep);
                mass = cum;
            }
            return draw(buf, idx.iter().copied(), mass, rng, best);
        }

        let max = max_ignoring_nan(buf);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        if max == f32::INFINITY {
            return pick_infinite(buf, 0..n as u32, rng);
        }
        if !inv_t.is_finite() {
            return argmax(buf);
        }

        let total = exp_with_chunk_sums(buf, max, inv_t, sums);
        if top_p >= 1.0 {
            return draw_chunked(buf, sums, total, rng);
        }

        // Nucleus over the whole vocabulary without a full sort. Each probability
        // p in [0, 1] goes to a bucket keyed by its top float bits (exponent plus
        // 3 mantissa bits: 8 buckets per octave, monotone in p). Walking buckets
        // from the top finds the bucket where the cumulative mass crosses the
        // target; ids above it are all in the nucleus, ids in it are sorted and
        // taken one by one, ids below it are all out.
        hist.clear();
        hist.resize(HIST_LEN, 0.0);
        for &p in buf.iter() {
            hist[bucket(p)] += p as f64;
        }
        let target = top_p * total;
        let mut above = 0.0f64; // mass of buckets strictly above the boundary
        let mut boundary = 0usize;
        for b in (0..HIST_LEN).rev() {
            if above + hist[b] >= target {
                boundary = b;
                break;
            }
            above += hist[b];
        }
        idx.clear();
        edge.clear();
        for (t, &p) in buf.iter().enumerate() {
            let b = bucket(p);
            if b > boundary {
                idx.push(t as u32);
            } else if b == boundary {
                edge.push(t as u32);
            }
        }
        edge.sort_unstable_by(|&a, &b| rank(buf, a, b));
        let mut mass = above;
        for &t in edge.iter() {
            if mass >= target && !idx.is_empty() {
                break;
            }
            mass += buf[t as usize] as f64;
            idx.push(t);
        }
        // The draw walks idx in id order for the part above the boundary, then the
        // boundary part best-first; any fixed order gives the same distribution.
        // idx is never empty: the top bucket holds the maximum (p = 1).
        let fallback = idx[0];
        draw(buf, idx.iter().copied(), mass, rng, fallback)
    }
}

/// `e^z` for `z <= 0` (z = -inf gives 0), relative error about 1e-7.
///
/// Used instead of `f32::exp` for two reasons: it is plain IEEE arithmetic with
/// no libm call, so results (and therefore seeded samples) are identical on
/// every platform, and it is branch-free, so loops over the vocabulary vectorise.
#[inline(always)]
fn exp_nonpos(z: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a high part exact in f32 and a small correction.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let zc = if z > -87.0 { z } else { -87.0 };
    // Adding ROUND leaves round(zc * log2 e) in the low mantissa bits.
    let shifted = zc * LOG2E + ROUND;
    let n = shifted - ROUND; // in [-126, 0]
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (zc - n * LN2_HI) - n * LN2_LO; // |r| <= ln2 / 2
                                            // Taylor series of e^r to degree 7 (truncation error < 1e-8 on |r| <= 0.35).
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if z < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// Ids per partial sum in the full-vocabulary draw.
const CHUNK: usize = 256;

/// Replaces every value by `e^((x - max) * inv_t)`, stores the sum of each run
/// of `CHUNK` ids in `sums`, and returns the total. The sums use fixed lanes, so
/// the result is deterministic and the loops vectorise.
fn exp_with_chunk_sums(buf: &mut [f32], max: f32, inv_t: f32, sums: &mut Vec<f64>) -> f64 {
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
fn draw_chunked(probs: &[f32], sums: &[f64], total: f64, rng: &mut SplitMix64) -> u32 {
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

/// Number of probability buckets: `bucket(1.0)` is 0x3F8 = 1016.
const HIST_LEN: usize = 1024;

/// Monotone bucket of a probability in [0, 1] (8 buckets per power of two).
#[inline]
fn bucket(p: f32) -> usize {
    (p.to_bits() >> 20) as usize
}

/// Fills `idx` with the `k` best ids of `vals` (descending value, ties to lower
/// ids), sorted best-first; -inf entries are skipped. Streams over `vals` with
/// a rising threshold, so only O(k) candidates are ever ranked.
fn top_k_candidates(vals: &[f32], k: usize, idx: &mut Vec<u32>) {
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

/// Uniform choice among the ids whose value is +inf.
fn pick_infinite(vals: &[f32], ids: impl Iterator<Item = u32>, rng: &mut SplitMix64) -> u32 {
    let winners: Vec<u32> = ids.filter(|&t| vals[t as usize] == f32::INFINITY).collect();
    let j = (rng.next_f64() * winners.len() as f64) as usize;
    winners[j.min(winners.len() - 1)]
}

/// Inverse-CDF draw over `ids` with weights `probs[id]` summing to `mass`.
/// Zero-weight ids are never returned; rounding past the end returns the last
/// id with positive weight (or `fallback` if there is none).
fn draw(
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
fn max_ignoring_nan(xs: &[f32]) -> f32 {
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

/// Natural-log probability of `token` under softmax(logits), computed in f64
/// with the maximum subtracted. NaN logits count as -inf. Returns -inf when
/// `token` is out of range or has no probability.
pub fn log_softmax_at(logits: &[f32], token: u32) -> f64 {
    let clean = |x: f32| {
        if x.is_nan() {
            f64::NEG_INFINITY
        } else {
            x as f64
        }
    };
    let Some(&xt) = logits.get(token as usize) else {
        return f64::NEG_INFINITY;
    };
    let xt = clean(xt);
    let max = logits
        .iter()
        .map(|&x| clean(x))
        .fold(f64::NEG_INFINITY, f64::max);
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
    let sum: f64 = logits.iter().map(|&x| (clean(x) - max).exp()).sum();
    xt - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k,
            top_p,
            seed,
            ..SamplerConfig::default()
        }
    }

    fn counts(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut c = vec![0usize; logits.len()];
        for _ in 0..draws {
            c[s.sample(logits) as usize] += 1;
        }
        c
    }

    /// Logits whose softmax is exactly `probs` (up to rounding).
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|&p| p.ln() as f32).collect()
    }

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
    fn greedy_matches_argmax() {
        let mut s = Sampler::new(cfg(0.0, 0, 1.0, 1));
        let cases: Vec<Vec<f32>> = vec![
            vec![0.1, 0.9, 0.3],
            vec![2.0, 2.0, 1.0],
            vec![f32::NAN, 0.5, 0.5, f32::NAN],
            vec![f32::NAN, f32::NAN, f32::NAN],
            vec![f32::NEG_INFINITY; 4],
            vec![-3.0, f32::NAN, -1.0, -1.0],
        ];
        let expected = [1, 0, 1, 0, 0, 2];
        for (l, &e) in cases.iter().zip(&expected) {
            assert_eq!(s.sample(l), e, "logits {l:?}");
            assert_eq!(argmax(l), e);
        }
        // Deterministic regardless of seed.
        let big: Vec<f32> = (0..65536).map(|i| ((i * 7919) % 65521) as f32).collect();
        let a = argmax(&big);
        for seed in 0..5 {
            let mut s = Sampler::new(cfg(0.0, 0, 0.5, seed));
            assert_eq!(s.sample(&big), a);
        }
    }

    #[test]
    fn sample_does_not_modify_logits() {
        let logits = vec![0.5f32, f32::NAN, 2.0, -1.0, 1.0];
        let copy = logits.clone();
        let mut c = cfg(0.8, 3, 0.9, 3);
        c.presence_penalty = 1.0;
        c.frequency_penalty = 0.5;
        let mut s = Sampler::new(c);
        s.accept(2);
        for _ in 0..10 {
            let t = s.sample(&logits);
            s.accept(t);
        }
        assert_eq!(format!("{logits:?}"), format!("{copy:?}"));
    }

    #[test]
    fn top_k_one_is_argmax() {
        let mut logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.01).collect();
        logits[500] = 5.0;
        logits[700] = 5.0;
        for &t in &[0.1f32, 1.0, 3.0, 100.0] {
            let mut s = Sampler::new(cfg(t, 1, 1.0, 42));
            for _ in 0..200 {
                assert_eq!(s.sample(&logits), 500);
            }
        }
    }

    #[test]
    fn top_k_support() {
        // Highest three: ids 7 (3.0), 2 (2.5), 9 (2.4).
        let logits = [0.0f32, 1.0, 2.5, -1.0, 0.5, 2.3, 1.9, 3.0, 0.2, 2.4];
        let mut s = Sampler::new(cfg(1.0, 3, 1.0, 7));
        let c = counts(&mut s, &logits, 2000);
        for (id, &n) in c.iter().enumerate() {
            if [7, 2, 9].contains(&id) {
                assert!(n > 0, "id {id} never drawn: {c:?}");
            } else {
                assert_eq!(n, 0, "id {id} outside top-3 drawn: {c:?}");
            }
        }
    }

    #[test]
    fn top_k_boundary_ties_go_to_lower_ids() {
        // ids 1, 3, 4 tie at 1.0 behind id 0; top_k = 3 keeps 0, 1, 3.
        let logits = [2.0f32, 1.0, 0.0, 1.0, 1.0];
        let mut s = Sampler::new(cfg(1.0, 3, 1.0, 11));
        let c = counts(&mut s, &logits, 3000);
        assert!(c[0] > 0 && c[1] > 0 && c[3] > 0, "{c:?}");
        assert_eq!(c[2] + c[4], 0, "{c:?}");
    }

    #[test]
    fn top_p_support() {
        let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
        let mut s = Sampler::new(cfg(1.0, 0, 0.7, 5));
        let c = counts(&mut s, &logits, 3000);
        assert!(c[0] > 0 && c[1] > 0, "{c:?}");
        assert_eq!(c[2] + c[3], 0, "{c:?}");
        // Renormalised 0.5 : 0.3 -> 0.625 of the mass on id 0.
        let f0 = c[0] as f64 / 3000.0;
        assert!((f0 - 0.625).abs() < 0.04, "{c:?}");

        let mut s = Sampler::new(cfg(1.0, 0, 0.85, 5));
        let c = counts(&mut s, &logits, 3000);
        assert!(c[0] > 0 && c[1] > 0 && c[2] > 0, "{c:?}");
        assert_eq!(c[3], 0, "{c:?}");

        // Tiny top_p always keeps at least the best token.
        let mut s = Sampler::new(cfg(1.0, 0, 1e-6, 5));
        assert!(counts(&mut s, &logits, 500)[0] == 500);
    }

    #[test]
    fn top_k_then_top_p() {
        // After top-3 the probabilities renormalise to 0.526, 0.316, 0.158.
        let logits = logits_of(&[0.05, 0.5, 0.15, 0.3]);
        let mut s = Sampler::new(cfg(1.0, 3, 0.7, 8));
        let c = counts(&mut s, &logits, 2000);
        assert!(c[1] > 0 && c[3] > 0, "{c:?}");
        assert_eq!(c[0] + c[2], 0, "{c:?}");
        let mut s = Sampler::new(cfg(1.0, 3, 0.5, 8));
        assert_eq!(counts(&mut s, &logits, 500)[1], 500);
        let mut s = Sampler::new(cfg(1.0, 3, 0.9, 8));
        let c = counts(&mut s, &logits, 2000);
        assert!(c[1] > 0 && c[2] > 0 && c[3] > 0 && c[0] == 0, "{c:?}");
    }

    #[test]
    fn top_p_large_vocab_flat_and_peaked() {
        // Flat-ish distribution over 65536: the nucleus needs many rounds of growth.
        let n = 65536;
        let logits: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32) * 0.5).collect();
        let mut s = Sampler::new(cfg(1.0, 0, 0.5, 9));
        // Compute the true nucleus threshold: keep the highest ids until mass >= 0.5.
        let mut probs: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        let mut cum = 0.0;
        let mut lowest_kept = n;
        for i in (0..n).rev() {
            cum += probs[i];
            lowest_kept = i;
            if cum >= 0.5 {
                break;
            }
        }
        for _ in 0..300 {
            let t = s.sample(&logits) as usize;
            // Allow one id of slack for f32 vs f64 rounding at the boundary.
            assert!(
                t + 1 >= lowest_kept,
                "token {t} below nucleus start {lowest_kept}"
            );
        }

        // Peaked: one dominant token plus noise.
        let mut logits = vec![0.0f32; n];
        logits[12345] = 20.0;
        let mut s = Sampler::new(cfg(1.0, 0, 0.9, 9));
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 12345);
        }
    }

    /// Reference nucleus by full sort (same f32 probabilities as the sampler).
    fn reference_nucleus(logits: &[f32], temp: f32, top_p: f64) -> Vec<u32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let probs: Vec<f32> = logits
            .iter()
            .map(|&x| exp_nonpos((x - max) * (1.0 / temp)))
            .collect();
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        ids.sort_by(|&a, &b| rank(&probs, a, b));
        let mut cum = 0.0;
        let mut out = Vec::new();
        for t in ids {
            out.push(t);
            cum += probs[t as usize] as f64;
            if cum >= top_p * total {
                break;
            }
        }
        out
    }

    #[test]
    fn top_p_matches_full_sort_reference() {
        // Many exact ties, so the boundary tie-break (lower ids first) matters.
        let n = 4096;
        let logits: Vec<f32> = (0..n).map(|i| ((i * 7919) % 23) as f32 * 0.3).collect();
        for &(temp, top_p, seed) in &[(0.7f32, 0.2f32, 1u64), (1.0, 0.05, 2), (0.3, 0.5, 3)] {
            let reference = reference_nucleus(&logits, temp, top_p as f64);
            let mut s = Sampler::new(cfg(temp, 0, top_p, seed));
            let mut hits = vec![0usize; n];
            for _ in 0..4000 {
                hits[s.sample(&logits) as usize] += 1;
            }
            for (t, &h) in hits.iter().enumerate() {
                if h > 0 {
                    assert!(reference.contains(&(t as u32)), "id {t} outside nucleus");
                }
            }
            if reference.len() <= 40 {
                for &t in &reference {
                    assert!(hits[t as usize] > 0, "nucleus id {t} never drawn");
                }
            }
        }
        // Smooth logits: every draw lies in the reference nucleus.
        let logits: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 4.0).collect();
        let reference = reference_nucleus(&logits, 0.9, 0.6);
        let mut s = Sampler::new(cfg(0.9, 0, 0.6, 4));
        for _ in 0..1000 {
            assert!(reference.contains(&s.sample(&logits)));
        }
    }

    #[test]
    fn frequencies_match_softmax() {
        let logits = [0.3f32, -0.5, 1.2, 0.0, -2.0, 0.8];
        for &(temp, seed) in &[(1.0f32, 123u64), (0.7, 321), (1.8, 999)] {
            let mut s = Sampler::new(cfg(temp, 0, 1.0, seed));
            let draws = 20000;
            let c = counts(&mut s, &logits, draws);
            let w: Vec<f64> = logits.iter().map(|&x| ((x / temp) as f64).exp()).collect();
            let z: f64 = w.iter().sum();
            let chi2: f64 = c
                .iter()
                .zip(&w)
                .map(|(&o, &wi)| {
                    let e = wi / z * draws as f64;
                    (o as f64 - e).powi(2) / e
                })
                .sum();
            // 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5.
            assert!(chi2 < 30.0, "temp {temp}: chi2 {chi2}, counts {c:?}");
        }
    }

    #[test]
    fn frequencies_match_softmax_large_vocab() {
        // 1200 ids in groups of 300 (spanning the 256-id partial sums), with
        // whole -inf stretches that must never be drawn.
        let n = 1200;
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                if (256..512).contains(&i) || i % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    (i / 300) as f32 * 0.5
                }
            })
            .collect();
        let mut s = Sampler::new(cfg(1.0, 0, 1.0, 31337));
        let draws = 20000;
        let mut groups = [0usize; 4];
        for _ in 0..draws {
            let t = s.sample(&logits) as usize;
            assert!(logits[t].is_finite(), "drew -inf id {t}");
            groups[t / 300] += 1;
        }
        let mut w = [0.0f64; 4];
        for (i, &x) in logits.iter().enumerate() {
            w[i / 300] += (x as f64).exp();
        }
        let z: f64 = w.iter().sum();
        let chi2: f64 = groups
            .iter()
            .zip(&w)
            .map(|(&o, &wi)| {
                let e = wi / z * draws as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        // 3 degrees of freedom: P(chi2 > 25) ~ 1.6e-5.
        assert!(chi2 < 25.0, "chi2 {chi2}, groups {groups:?}");
    }

    #[test]
    fn frequencies_match_softmax_with_top_k() {
        // top_k = 4 of 6 at temperature 0.5: renormalised softmax over the survivors.
        let logits = [0.3f32, -0.5, 1.2, 0.0, -2.0, 0.8];
        let kept = [0usize, 2, 3, 5];
        let mut s = Sampler::new(cfg(0.5, 4, 1.0, 77));
        let draws = 20000;
        let c = counts(&mut s, &logits, draws);
        assert_eq!(c[1] + c[4], 0);
        let w: Vec<f64> = kept
            .iter()
            .map(|&i| ((logits[i] / 0.5) as f64).exp())
            .collect();
        let z: f64 = w.iter().sum();
        let chi2: f64 = kept
            .iter()
            .zip(&w)
            .map(|(&i, &wi)| {
                let e = wi / z * draws as f64;
                (c[i] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 25.0, "chi2 {chi2}, counts {c:?}");
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 13) % 17) as f32 * 0.1).collect();
        let run = |seed: u64| {
            let mut s = Sampler::new(cfg(1.0, 50, 0.95, seed));
            (0..100).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
        };
        assert_eq!(run(1234), run(1234));
        assert_eq!(run(0), run(0));
        assert_ne!(run(1234), run(1235));
        assert_ne!(run(0), run(1));
    }

    #[test]
    fn exp_nonpos_is_accurate() {
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(-1000.0), 0.0);
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let z = -(i as f32) * 1e-4;
            let want = (z as f64).exp();
            let got = exp_nonpos(z) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn rng_is_splitmix64() {
        // Reference values of SplitMix64 seeded with 0 (fixed across platforms).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn presence_penalty_blocks_repeats_greedily() {
        let logits = [1.0f32, 3.0, 2.0, 2.5];
        let mut c = cfg(0.0, 0, 1.0, 0);
        c.presence_penalty = 10.0;
        let mut s = Sampler::new(c);
        let mut out = Vec::new();
        for _ in 0..4 {
            let t = s.sample(&logits);
            s.accept(t);
            out.push(t);
        }
        // Every token gets the same penalty once seen, so greedy walks down the ranks.
        assert_eq!(out, vec![1, 3, 2, 0]);
    }

    #[test]
    fn frequency_penalty_counts_and_decay() {
        let logits = [5.0f32, 4.0];
        let mut c = cfg(0.0, 0, 1.0, 0);
        c.frequency_penalty = 0.6;
        c.penalty_decay = 1.0;
        let mut s = Sampler::new(c.clone());
        s.accept(0);
        assert_eq!(s.sample(&logits), 0); // 5 - 0.6 = 4.4 > 4
        s.accept(0);
        assert_eq!(s.sample(&logits), 1); // 5 - 1.2 = 3.8 < 4

        // Decay: counts are multiplied before adding, so after two accepts
        // count = 1 * 0.5 + 1 = 1.5 -> 5 - 0.9 = 4.1 > 4.
        c.penalty_decay = 0.5;
        let mut s = Sampler::new(c);
        s.accept(0);
        s.accept(0);
        assert_eq!(s.sample(&logits), 0);
        // An accept of another token decays id 0 to 0.75 -> 5 - 0.45.
        s.accept(1); // id 1: 4 - 0.6
        assert_eq!(s.sample(&logits), 0);

        // Penalties on ids beyond the vocabulary are ignored.
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 1.0,
            temperature: 0.0,
            ..SamplerConfig::default()
        });
        s.accept(1_000_000);
        assert_eq!(s.sample(&logits), 0);
        s.reset_penalties();
        s.accept(0);
        s.reset_penalties();
        assert_eq!(s.sample(&logits), 0);
    }

    #[test]
    fn penalties_lower_sampled_frequency() {
        let logits = [1.0f32, 1.0, 1.0, 1.0];
        let mut c = cfg(1.0, 0, 1.0, 2024);
        let mut plain = Sampler::new(c.clone());
        c.presence_penalty = 1.5;
        let mut pen = Sampler::new(c);
        plain.accept(2);
        pen.accept(2);
        let a = counts(&mut plain, &logits, 4000)[2];
        let b = counts(&mut pen, &logits, 4000)[2];
        // Expected 1000 vs 4000 * e^-1.5 / (3 + e^-1.5) ~ 276.
        assert!(a > 850 && b < 400, "plain {a}, penalised {b}");
    }

    #[test]
    fn degenerate_inputs() {
        let mut s = Sampler::new(cfg(1.0, 0, 0.9, 1));
        assert_eq!(s.sample(&[]), 0);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NAN]), 0);
        // Only finite logit among NaN/-inf must be chosen.
        for _ in 0..50 {
            assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY, -50.0, f32::NAN]), 2);
        }
        // +inf wins over finite values.
        for _ in 0..50 {
            let t = s.sample(&[0.0, f32::INFINITY, 1e30, f32::INFINITY]);
            assert!(t == 1 || t == 3);
        }
        // Tiny temperature acts greedily.
        let mut s = Sampler::new(cfg(1e-6, 0, 1.0, 1));
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.999]), 1);
        }
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert!(SamplerConfig::default().validate().is_ok());
        assert!(cfg(0.0, 5, 0.5, 0).validate().is_ok());
        let bad: Vec<(SamplerConfig, &str)> = vec![
            (cfg(-0.1, 0, 1.0, 0), "--temperature"),
            (cfg(f32::NAN, 0, 1.0, 0), "--temperature"),
            (cfg(f32::INFINITY, 0, 1.0, 0), "--temperature"),
            (cfg(1.0, 0, 0.0, 0), "--top-p"),
            (cfg(1.0, 0, 1.01, 0), "--top-p"),
            (cfg(1.0, 0, f32::NAN, 0), "--top-p"),
            (
                SamplerConfig {
                    presence_penalty: f32::NAN,
                    ..Default::default()
                },
                "--presence-penalty",
            ),
            (
                SamplerConfig {
                    frequency_penalty: f32::INFINITY,
                    ..Default::default()
                },
                "--frequency-penalty",
            ),
            (
                SamplerConfig {
                    penalty_decay: 0.0,
                    ..Default::default()
                },
                "--penalty-decay",
            ),
            (
                SamplerConfig {
                    penalty_decay: 1.5,
                    ..Default::default()
                },
                "--penalty-decay",
            ),
        ];
        for (c, flag) in bad {
            let e = c.validate().expect_err(flag).to_string();
            assert!(e.contains(flag), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
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
}
