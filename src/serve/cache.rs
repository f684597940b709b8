//! The prefix-state cache: states at the end of token prefixes, least recently used first out.
//!
//! An entry is the state (and the next-token logits) after reading exactly its `tokens`. It
//! is found by a hash of its whole prefix: the hashes of every prefix of a request's tokens
//! come from one pass (FNV-1a over the tokens, continued token by token), so the longest
//! cached prefix costs one map look-up per token and one comparison of tokens on a hit.

use crate::fnv::{fnv1a, FNV_OFFSET};
use crate::models::State;
use std::collections::HashMap;

struct Entry {
    tokens: Vec<u32>,
    state: State,
    logits: Vec<f32>,
    bytes: usize,
    last_used: u64,
}

/// A hit: the state and logits after the first `len` tokens of the request.
pub struct Hit {
    pub len: usize,
    pub state: State,
    pub logits: Vec<f32>,
}

/// States of token prefixes, within a byte budget.
pub struct PrefixCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<u64, Entry>,
}

/// The hash of every prefix of `tokens`: element `i` is the hash of `tokens[..=i]`.
fn prefix_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut h = FNV_OFFSET;
    tokens
        .iter()
        .map(|t| {
            h = fnv1a(&t.to_le_bytes(), h);
            h
        })
        .collect()
}

/// The key of the whole of `tokens`: the last of [`prefix_hashes`], without the others.
fn full_hash(tokens: &[u32]) -> u64 {
    tokens
        .iter()
        .fold(FNV_OFFSET, |h, t| fnv1a(&t.to_le_bytes(), h))
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes of states, logits and keys (0: none).
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest cached prefix of `tokens` (at least one token long), marked as just used.
    pub fn lookup(&mut self, tokens: &[u32]) -> Option<Hit> {
        if self.entries.is_empty() {
            return None;
        }
        let hashes = prefix_hashes(tokens);
        self.clock += 1;
        for len in (1..=tokens.len()).rev() {
            if let Some(e) = self.entries.get_mut(&hashes[len - 1]) {
                if e.tokens == tokens[..len] {
                    e.last_used = self.clock;
                    return Some(Hit {
                        len,
                        state: e.state.clone(),
                        logits: e.logits.clone(),
                    });
                }
            }
        }
        None
    }

    /// Keeps the state (and logits) after reading exactly `tokens`, evicting the least
    /// recently used entries to stay within the budget. An entry larger than the whole budget
    /// is not kept.
    pub fn insert(&mut self, tokens: &[u32], state: &State, logits: &[f32]) {
        if tokens.is_empty() {
            return;
        }
        let bytes = state.size_bytes() + logits.len() * 4 + tokens.len() * 4;
        if bytes > self.budget {
            return;
        }
        let key = full_hash(tokens);
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            if e.tokens == tokens {
                e.last_used = self.clock;
                return;
            }
        }
        if let Some(old) = self.entries.remove(&key) {
            self.used -= old.bytes;
        }
        while self.used + bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
                .expect("entries hold the used bytes");
            let e = self.entries.remove(&oldest).expect("just found");
            self.used -= e.bytes;
        }
        self.used += bytes;
        self.entries.insert(
            key,
            Entry {
                tokens: tokens.to_vec(),
                state: state.clone(),
                logits: logits.to_vec(),
                bytes,
                last_used: self.clock,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::LayerState;

    fn state(v: f32) -> State {
        State {
            layers: vec![LayerState {
                att_shift: vec![v; 4],
                wkv: vec![v; 8],
                ffn_shift: vec![v; 4],
            }],
        }
    }

    #[test]
    fn longest_prefix_wins_and_must_match_exactly() {
        let mut c = PrefixCache::new(1 << 20);
        c.insert(&[1, 2], &state(2.0), &[0.5]);
        c.insert(&[1, 2, 3, 4], &state(4.0), &[0.25]);
        let hit = c.lookup(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!((hit.len, hit.state.layers[0].wkv[0]), (4, 4.0));
        let hit = c.lookup(&[1, 2, 3, 9]).unwrap();
        assert_eq!((hit.len, hit.logits[0]), (2, 0.5));
        assert!(c.lookup(&[2, 1]).is_none());
        assert!(c.lookup(&[1]).is_none());
    }

    #[test]
    fn least_recently_used_goes_first_within_the_budget() {
        // Each entry: 16 floats of state + 1 logit + 1 token = 72 bytes.
        let mut c = PrefixCache::new(72 * 2);
        c.insert(&[1], &state(1.0), &[0.0]);
        c.insert(&[2], &state(2.0), &[0.0]);
        assert!(c.lookup(&[1, 7]).is_some()); // [1] is now the most recent
        c.insert(&[3], &state(3.0), &[0.0]);
        assert_eq!(c.len(), 2);
        assert!(c.lookup(&[2]).is_none(), "[2] was the least recently used");
        assert!(c.lookup(&[1]).is_some() && c.lookup(&[3]).is_some());
        assert_eq!(c.used_bytes(), 144);
        // Too big for the whole budget: not kept, nothing evicted.
        c.insert(&[4; 100], &state(4.0), &[0.0]);
        assert_eq!(c.len(), 2);
        // A zero budget keeps nothing.
        let mut none = PrefixCache::new(0);
        none.insert(&[1], &state(1.0), &[0.0]);
        assert!(none.is_empty());
    }
}
