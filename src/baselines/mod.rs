//! Baselines for `rwkv-cli compare`: decoder transformers of the same shape as an RWKV model
//! (depth, width, FFN width, vocabulary), with random weights — what is compared is cost, not
//! the quality of the text.
//!
//! Both baselines share everything but the sequence mixing: pre-norm blocks (LayerNorm,
//! fused QKV projection, attention, output projection; LayerNorm, squared-ReLU FFN of the RWKV
//! model's FFN width — the same FFN as RWKV's channel mix, so the comparison isolates the
//! sequence mixing), a final LayerNorm and the output head. Every matrix product goes through
//! [`Linear::forward`], so the baselines use exactly RWKV's matmul paths and threads.
//!
//! - [`softmax`]: multi-head causal softmax attention with rotary positions, a preallocated KV
//!   cache and a tiled (online-softmax, "flash") kernel.
//! - [`linear`]: Katharopoulos et al. linear attention (feature map `elu(x) + 1`), a fixed
//!   `head_size × head_size` state plus a normaliser per head; recurrent decode, chunked prefill.

pub mod linear;
pub mod softmax;

use crate::format::Format;
use crate::models::Config;
use crate::ops::{layer_norm, Linear, Mat};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Which sequence mixing a baseline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Causal softmax attention with a KV cache.
    Softmax,
    /// Katharopoulos et al. linear attention with a fixed-size state.
    Linear,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Softmax => "softmax",
            Kind::Linear => "linear",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "softmax" => Ok(Kind::Softmax),
            "linear" => Ok(Kind::Linear),
            other => bail!("unknown baseline '{other}' (expected softmax or linear)"),
        }
    }
}

/// The shape of a baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ffn: usize,
    pub n_head: usize,
    pub head_size: usize,
    pub vocab_size: usize,
}

impl Shape {
    /// The shape of an RWKV model: same depth, width, FFN width and vocabulary, and the same
    /// head size (64 in official v5–v7 models). v4 has no heads; there, and wherever the head
    /// size would not divide the width evenly, the largest even divisor of the width up to 64.
    pub fn like(cfg: &Config) -> Self {
        let c = cfg.n_embd;
        let d = if cfg.head_size >= 8
            && cfg.head_size.is_multiple_of(2)
            && c.is_multiple_of(cfg.head_size)
        {
            cfg.head_size
        } else {
            (2..=64.min(c))
                .rev()
                .find(|&d| d.is_multiple_of(2) && c.is_multiple_of(d))
                .unwrap_or(c)
        };
        Self {
            n_layer: cfg.n_layer,
            n_embd: c,
            n_ffn: cfg.n_ffn,
            n_head: c / d.max(1),
            head_size: d,
            vocab_size: cfg.vocab_size,
        }
    }

    /// Number of weights: embedding, per block the QKV, output and two FFN matrices plus two
    /// LayerNorms, the final LayerNorm and the head.
    pub fn n_params(&self) -> u64 {
        let (c, f, v) = (
            self.n_embd as u64,
            self.n_ffn as u64,
            self.vocab_size as u64,
        );
        let block = 4 * c * c + 2 * c * f + 4 * c;
        self.n_layer as u64 * block + 2 * v * c + 2 * c
    }

    /// Bytes of an f32 KV cache holding `tokens` tokens: keys and values, every layer.
    pub fn kv_cache_bytes(&self, tokens: usize) -> u64 {
        2 * self.n_layer as u64 * tokens as u64 * self.n_embd as u64 * 4
    }

    /// Bytes of the linear-attention state: per layer and head, `d × d` plus the normaliser.
    pub fn linear_state_bytes(&self) -> u64 {
        let d = self.head_size as u64;
        self.n_layer as u64 * self.n_head as u64 * (d * d + d) * 4
    }

    fn check(&self) -> Result<()> {
        let ok = self.n_layer > 0
            && self.n_embd > 0
            && self.n_ffn > 0
            && self.vocab_size > 0
            && self.head_size > 0
            && self.head_size.is_multiple_of(2)
            && self.n_head * self.head_size == self.n_embd;
        if !ok {
            bail!("invalid baseline shape {self:?}: the width must be heads × an even head size");
        }
        Ok(())
    }
}

/// The generator of the random weights and tokens (the sampler's).
pub use crate::sampler::SplitMix64;

/// `n` values, uniform with standard deviation `std`, generated in parallel; the same seed
/// always gives the same values, whatever the number of threads.
pub fn random_values(n: usize, std: f32, seed: u64) -> Vec<f32> {
    const PIECE: usize = 1 << 16;
    let half_width = std * 3f32.sqrt();
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(PIECE).enumerate().for_each(|(i, piece)| {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for x in piece {
            *x = rng.next_signed() * half_width;
        }
    });
    v
}

/// A deterministic pseudo-random token stream: ids uniform in `0..vocab`.
pub fn token_stream(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut next = token_source(vocab, seed);
    (0..n).map(|_| next()).collect()
}

/// The tokens of [`token_stream`], one at a time (for runs too long to hold them all).
pub fn token_source(vocab: usize, seed: u64) -> impl FnMut() -> u32 {
    let mut rng = SplitMix64::new(seed);
    move || ((rng.next_u64() >> 32) % vocab.max(1) as u64) as u32
}

/// What a baseline carries from token to token.
pub enum Cache {
    /// Softmax attention: keys and values of every token so far.
    Kv(softmax::KvCache),
    /// Linear attention: a fixed-size state.
    Linear(linear::LinearState),
}

impl Cache {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        match self {
            Cache::Kv(c) => c.len,
            Cache::Linear(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes holding information about the tokens so far: for a KV cache those of the tokens
    /// cached (not the preallocated capacity), for the linear state its fixed size.
    pub fn bytes(&self) -> u64 {
        match self {
            Cache::Kv(c) => c.bytes_used(),
            Cache::Linear(s) => s.bytes(),
        }
    }

    /// Bytes allocated (a KV cache is preallocated for its capacity).
    pub fn allocated_bytes(&self) -> u64 {
        match self {
            Cache::Kv(c) => c.bytes_allocated(),
            Cache::Linear(s) => s.bytes(),
        }
    }
}

struct Block {
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    /// Q, K and V in one matrix (3C × C): one batched product per chunk.
    qkv: Linear,
    out: Linear,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
    up: Linear,
    down: Linear,
}

/// A baseline transformer with random weights.
pub struct Transformer {
    pub kind: Kind,
    pub shape: Shape,
    /// `vocab × C`, f32 (like RWKV's embedding).
    emb: Vec<f32>,
    blocks: Vec<Block>,
    ln_out_w: Vec<f32>,
    ln_out_b: Vec<f32>,
    head: Linear,
}

impl Transformer {
    /// Random weights (GPT-2-like scale: std 0.02, output projections scaled by depth),
    /// matrices kept in `dtype` like the RWKV model's.
    pub fn random(kind: Kind, shape: Shape, dtype: Format, seed: u64) -> Result<Self> {
        shape.check()?;
        let (c, f, v) = (shape.n_embd, shape.n_ffn, shape.vocab_size);
        let mut next_seed = {
            let mut rng = SplitMix64::new(seed);
            move || rng.next_u64()
        };
        let std = 0.02;
        let proj_std = std / (2.0 * shape.n_layer as f32).sqrt();
        let mut blocks = Vec::with_capacity(shape.n_layer);
        for _ in 0..shape.n_layer {
            blocks.push(Block {
                ln1_w: vec![1.0; c],
                ln1_b: vec![0.0; c],
                qkv: Linear::new(random_values(3 * c * c, std, next_seed()), 3 * c, c, dtype)?,
                out: Linear::new(random_values(c * c, proj_std, next_seed()), c, c, dtype)?,
                ln2_w: vec![1.0; c],
                ln2_b: vec![0.0; c],
                up: Linear::new(random_values(f * c, std, next_seed()), f, c, dtype)?,
                down: Linear::new(random_values(c * f, proj_std, next_seed()), c, f, dtype)?,
            });
        }
        Ok(Self {
            kind,
            emb: random_values(v * c, std, next_seed()),
            blocks,
            ln_out_w: vec![1.0; c],
            ln_out_b: vec![0.0; c],
            head: Linear::new(random_values(v * c, std, next_seed()), v, c, dtype)?,
            shape,
        })
    }

    /// An empty cache. For softmax attention the KV cache is allocated here for `capacity`
    /// tokens (and never grows); the linear state ignores `capacity`.
    pub fn new_cache(&self, capacity: usize) -> Cache {
        let s = &self.shape;
        match self.kind {
            Kind::Softmax => Cache::Kv(softmax::KvCache::new(
                s.n_layer,
                s.n_head,
                s.head_size,
                capacity,
            )),
            Kind::Linear => {
                Cache::Linear(linear::LinearState::new(s.n_layer, s.n_head, s.head_size))
            }
        }
    }

    /// Feeds `tokens` (non-empty) at once: batched projections and FFN over all of them.
    /// Returns the logits after the last token, or after every token if `all_logits`.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache, all_logits: bool) -> Result<Vec<f32>> {
        let s = &self.shape;
        let (c, t) = (s.n_embd, tokens.len());
        if t == 0 {
            bail!("no tokens to process");
        }
        let pos0 = cache.len();
        match cache {
            Cache::Kv(kv) if self.kind == Kind::Softmax => {
                if kv.n_layer != s.n_layer || kv.n_head != s.n_head || kv.head_size != s.head_size {
                    bail!("the KV cache does not match this model's shape");
                }
                if pos0 + t > kv.capacity {
                    bail!(
                        "the KV cache holds {} tokens; {} more do not fit after {pos0}",
                        kv.capacity,
                        t
                    );
                }
            }
            Cache::Linear(st) if self.kind == Kind::Linear => {
                if st.layers.len() != s.n_layer
                    || st.n_head != s.n_head
                    || st.head_size != s.head_size
                {
                    bail!("the linear-attention state does not match this model's shape");
                }
            }
            _ => bail!("this cache belongs to another kind of baseline"),
        }
        let mut x = Mat::zeros(t, c);
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= s.vocab_size {
                bail!(
                    "token id {tok} is out of range for a vocabulary of {}",
                    s.vocab_size
                );
            }
            x.row_mut(i)
                .copy_from_slice(&self.emb[tok * c..(tok + 1) * c]);
        }
        let rope = softmax::RopeTable::new(pos0, t, s.head_size);
        for (l, b) in self.blocks.iter().enumerate() {
            let h = layer_norm(&x, &b.ln1_w, &b.ln1_b);
            let qkv = b.qkv.forward(&h)?;
            let mixed = match cache {
                Cache::Kv(kv) => softmax::attend(&qkv, kv, l, pos0, &rope),
                Cache::Linear(st) => linear::attend(&qkv, st, l),
            };
            x.add_assign(&b.out.forward(&mixed)?);
            let h = layer_norm(&x, &b.ln2_w, &b.ln2_b);
            let f = b.up.forward(&h)?.map(|v| {
                let r = v.max(0.0);
                r * r
            });
            x.add_assign(&b.down.forward(&f)?);
        }
        match cache {
            Cache::Kv(kv) => kv.len += t,
            Cache::Linear(st) => st.len += t,
        }
        let x = if all_logits {
            x
        } else {
            Mat::from_vec(1, c, x.last_row().to_vec())
        };
        let x = layer_norm(&x, &self.ln_out_w, &self.ln_out_b);
        Ok(self.head.forward(&x)?.data)
    }

    /// One token (the decode path): the matrix–vector kernels, attention over the cache.
    pub fn step(&self, token: u32, cache: &mut Cache) -> Result<Vec<f32>> {
        self.forward(&[token], cache, false)
    }

    /// Feeds a prompt in chunks of `chunk` tokens, like [`crate::models::prefill`]; returns
    /// the logits after its last token (`None` for an empty prompt).
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        chunk: usize,
    ) -> Result<Option<Vec<f32>>> {
        let mut last = None;
        for piece in tokens.chunks(chunk.max(1)) {
            last = Some(self.forward(piece, cache, false)?);
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Shape {
        Shape {
            n_layer: 2,
            n_embd: 32,
            n_ffn: 96,
            n_head: 2,
            head_size: 16,
            vocab_size: 50,
        }
    }

    #[test]
    fn shape_follows_the_rwkv_model() {
        let cfg = Config {
            version: crate::models::Version::V7,
            n_layer: 12,
            n_embd: 768,
            n_att: 768,
            n_ffn: 3072,
            n_head: 12,
            head_size: 64,
            vocab_size: 65536,
            n_params: 0,
        };
        let s = Shape::like(&cfg);
        assert_eq!((s.n_layer, s.n_embd, s.n_ffn), (12, 768, 3072));
        assert_eq!((s.n_head, s.head_size, s.vocab_size), (12, 64, 65536));
        assert_eq!(s.kv_cache_bytes(1000), cfg.kv_cache_bytes(1000, 4));
        let v4 = Config {
            version: crate::models::Version::V4,
            n_head: 1,
            head_size: 1,
            n_embd: 96,
            ..cfg
        };
        let s = Shape::like(&v4);
        assert_eq!((s.n_head, s.head_size), (2, 48));
    }

    #[test]
    fn random_values_are_deterministic_and_scaled() {
        let a = random_values(200_000, 0.5, 7);
        assert_eq!(a, random_values(200_000, 0.5, 7));
        assert_ne!(a, random_values(200_000, 0.5, 8));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
        let t = token_stream(1000, 50, 1);
        assert!(t.iter().all(|&x| x < 50));
        assert_eq!(t, token_stream(1000, 50, 1));
    }

    #[test]
    fn forward_checks_its_inputs() {
        let m = Transformer::random(Kind::Softmax, tiny(), Format::F32, 1).unwrap();
        let mut cache = m.new_cache(4);
        assert!(m.forward(&[], &mut cache, false).is_err());
        assert!(m.forward(&[50], &mut cache, false).is_err());
        assert!(m.forward(&[1, 2, 3, 4, 5], &mut cache, false).is_err());
        let logits = m.forward(&[1, 2, 3, 4], &mut cache, false).unwrap();
        assert_eq!(logits.len(), 50);
        assert!(logits.iter().all(|v| v.is_finite()));
        assert!(m.step(1, &mut cache).is_err(), "capacity is 4");
        let lin = Transformer::random(Kind::Linear, tiny(), Format::F32, 1).unwrap();
        let mut wrong = lin.new_cache(0);
        assert!(m.forward(&[1], &mut wrong, false).is_err());
    }
}
