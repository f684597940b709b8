//! The two ends every version shares: the embedding (token → normalised vector, with
//! `blocks.0.ln0`) and the head (`ln_out`, then the output projection to logits).

use super::Weights;
use crate::ops::{layer_norm, layer_norm_row, Linear, Mat, RowTable};
use anyhow::{bail, Result};

/// The token embedding, normalised by `blocks.0.ln0` on lookup.
pub struct Embedding {
    /// `vocab × C`, in the compute dtype (the `blocks.0.ln0` norm is applied on lookup).
    table: RowTable,
    ln0_w: Vec<f32>,
    ln0_b: Vec<f32>,
    pub n_embd: usize,
    pub vocab_size: usize,
}

impl Embedding {
    pub fn load(w: &Weights, vocab: usize, c: usize) -> Result<Self> {
        Ok(Self {
            table: w.table("emb.weight", vocab, c)?,
            ln0_w: w.pp("blocks.0").vector("ln0.weight", c)?,
            ln0_b: w.pp("blocks.0").vector("ln0.bias", c)?,
            n_embd: c,
            vocab_size: vocab,
        })
    }

    /// Rows of the normalised embedding for `tokens`.
    pub fn lookup(&self, tokens: &[u32]) -> Result<Mat> {
        let c = self.n_embd;
        let mut x = Mat::zeros(tokens.len(), c);
        for (t, &tok) in tokens.iter().enumerate() {
            let tok = tok as usize;
            if tok >= self.vocab_size {
                bail!(
                    "token id {tok} is out of range for a vocabulary of {}",
                    self.vocab_size
                );
            }
            let row = x.row_mut(t);
            self.table.row_into(tok, row);
            layer_norm_row(row, &self.ln0_w, &self.ln0_b, 1e-5);
        }
        Ok(x)
    }
}

/// The final norm and the output projection.
pub struct Head {
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    head: Linear,
}

impl Head {
    pub fn load(w: &Weights, vocab: usize, c: usize) -> Result<Self> {
        Ok(Self {
            ln_w: w.vector("ln_out.weight", c)?,
            ln_b: w.vector("ln_out.bias", c)?,
            head: w.linear("head.weight", vocab, c)?,
        })
    }

    /// Logits for the last row of `x`, or for every row.
    pub fn logits(&self, x: &Mat, all: bool) -> Result<Vec<f32>> {
        let x = if all {
            x.clone()
        } else {
            Mat::from_vec(1, x.cols, x.last_row().to_vec())
        };
        let x = layer_norm(&x, &self.ln_w, &self.ln_b);
        Ok(self.head.forward(&x)?.data)
    }
}
