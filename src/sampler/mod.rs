//! Next-token sampling over f32 logits.
//!
//! Order of operations in [`Sampler::sample`]:
//! 1. copy the logits into an internal buffer (NaN becomes -inf),
//! 2. ChatRWKV-style repetition penalties, then the logit biases (`--logit-bias`),
//! 3. temperature 0: greedy argmax (ties to the lowest id), done;
//! 4. min-p: drop every token whose probability (at this temperature) is below `min_p` times
//!    the most likely token's, i.e. whose logit is below `max + temperature · ln(min_p)`,
//! 5. top-k (partial selection, ties at the boundary go to lower ids),
//! 6. softmax with temperature (max-subtracted, sums in f64),
//! 7. top-p (nucleus) over the survivors,
//! 8. a draw from a seeded SplitMix64 generator.
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

use anyhow::{bail, Result};

mod draw;
mod exp;
mod logits;
mod rng;
mod select;
#[cfg(test)]
mod tests;

use draw::{draw, draw_chunked, exp_with_chunk_sums, pick_infinite};
use exp::exp_nonpos;
use logits::max_ignoring_nan;
pub use logits::{argmax, log_softmax_at, softmax_norm, top_logprobs};
pub use rng::SplitMix64;
use select::{bucket, rank, top_k_candidates, HIST_LEN};

/// Sampling settings. `top_p == 1.0`, `top_k == 0` and `min_p == 0.0` switch those filters
/// off.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// Min-p: keep only the tokens at least this fraction as likely as the most likely one
    /// (0 = off, 1 = only the most likely).
    pub min_p: f32,
    /// Added to a token's logit before anything else but the penalties (`(id, bias)`; a bias
    /// of `-inf` bans a token). Later entries for the same id add up.
    pub logit_bias: Vec<(u32, f32)>,
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
            min_p: 0.0,
            logit_bias: Vec::new(),
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
        match self.invalid_field() {
            Some((field, why)) => bail!("--{} {why}", field.replace('_', "-")),
            None => Ok(()),
        }
    }

    /// The first field out of range: its name as this struct spells it (`top_p`) and what is
    /// wrong with it, without the name ("must be in (0, 1] (got 2; use 1 to disable)").
    /// [`validate`](Self::validate) puts the command-line flag in front; a server, its field.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Some((
                "temperature",
                format!("must be a finite number >= 0 (got {})", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Some((
                "top_p",
                format!("must be in (0, 1] (got {}; use 1 to disable)", self.top_p),
            ));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Some((
                "min_p",
                format!("must be in [0, 1] (got {}; 0 disables it)", self.min_p),
            ));
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan()) {
            return Some(("logit_bias", format!("{id}={b}: the bias must be a number")));
        }
        if !self.presence_penalty.is_finite() {
            return Some((
                "presence_penalty",
                format!("must be a finite number (got {})", self.presence_penalty),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Some((
                "frequency_penalty",
                format!("must be a finite number (got {})", self.frequency_penalty),
            ));
        }
        if !(self.penalty_decay > 0.0 && self.penalty_decay <= 1.0) {
            return Some((
                "penalty_decay",
                format!("must be in (0, 1] (got {})", self.penalty_decay),
            ));
        }
        None
    }

    fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Checks the `--logit-bias` ids against a vocabulary of `vocab` entries, and that they
    /// leave a token to sample (with every one banned the sampler would have nothing to draw).
    pub fn validate_vocab(&self, vocab: usize) -> Result<()> {
        if let Some((id, _)) = self.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
            bail!("--logit-bias {id}: the vocabulary has only ids 0..{vocab}");
        }
        if bans_every_token(&self.logit_bias, vocab) {
            bail!(
                "--logit-bias bans every token of the vocabulary ({vocab}): none is left to sample"
            );
        }
        Ok(())
    }
}

/// Whether `logit_bias` (ids below `vocab`) gives every token of a vocabulary of `vocab` a
/// bias of −∞, leaving nothing to sample.
pub fn bans_every_token(logit_bias: &[(u32, f32)], vocab: usize) -> bool {
    let bans = |b: &f32| *b == f32::NEG_INFINITY;
    if vocab == 0 || logit_bias.iter().filter(|(_, b)| bans(b)).count() < vocab {
        return false;
    }
    let mut banned = vec![false; vocab];
    for (id, _) in logit_bias.iter().filter(|(_, b)| bans(b)) {
        banned[*id as usize] = true;
    }
    banned.iter().all(|b| *b)
}

/// Parses one `--logit-bias` value, `ID=VALUE` (VALUE a number, `-inf` to ban the token).
pub fn parse_logit_bias(s: &str) -> Result<(u32, f32)> {
    let Some((id, v)) = s.split_once('=') else {
        bail!("expected ID=VALUE (e.g. 0=-inf or 11=2.5), got '{s}'");
    };
    let id: u32 = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("'{}' is not a token id", id.trim()))?;
    let v: f32 = v
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("'{}' is not a number", v.trim()))?;
    if v.is_nan() {
        bail!("the bias must be a number, not NaN");
    }
    Ok((id, v))
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
    /// Probability mass per bucket (see [`select::bucket`]).
    hist: Vec<f64>,
    /// Probability mass per `CHUNK` consecutive ids.
    sums: Vec<f64>,
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
        let bias = !self.cfg.logit_bias.is_empty();
        if self.cfg.temperature == 0.0 && !penalize && !bias {
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
        for &(t, b) in &self.cfg.logit_bias {
            if let Some(x) = self.buf.get_mut(t as usize) {
                *x += b;
            }
        }
        if self.cfg.temperature == 0.0 || self.cfg.top_k == 1 {
            return argmax(&self.buf);
        }
        if self.cfg.min_p > 0.0 {
            self.apply_min_p();
        }
        self.sample_buf()
    }

    /// Sets to -inf every logit of `self.buf` whose probability at this temperature is below
    /// `min_p` times the largest: `x < max + T·ln(min_p)`. Nothing to do when the maximum is
    /// not finite (the draw then handles it).
    fn apply_min_p(&mut self) {
        let max = max_ignoring_nan(&self.buf);
        if !max.is_finite() {
            return;
        }
        let cut = max as f64 + self.cfg.temperature as f64 * (self.cfg.min_p as f64).ln();
        for x in self.buf.iter_mut() {
            if (*x as f64) < cut {
                *x = f32::NEG_INFINITY;
            }
        }
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
