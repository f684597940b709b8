//! rwkv-cli: run RWKV language models (v4, v5, v6, v7) on the CPU.
//!
//! The library is the engine; the command line (flags, printing, progress bars) lives in the
//! binary (`src/main.rs`, `src/cli/`), which the `cli` feature builds.
//! - [`checkpoint`]: reading weights from safetensors (memory-mapped) and PyTorch `.pth` archives.
//! - [`models`]: version detection and one module per RWKV version behind the [`models::Model`] trait.
//! - [`tokenizer`]: World (trie, greedy longest match), 20B (HF `tokenizers`) and byte tokenizers.
//! - [`chat`]: conversations in the G1 chat format on one fixed-size state.
//! - [`sampler`]: temperature, top-k, top-p, penalties, seeded.
//! - [`serve`]: the serving engine (continuous batching, prefix-state cache) behind `serve`.
//! - [`stats`]: peak and current resident memory.
//! - [`eval`]: scoring a model on a text (bits per byte, perplexity).
//! - [`hub`]: resolving a model name to a file, downloading it into the Hugging Face cache.
//! - [`state_file`], [`output_file`]: saved states; writing output files safely.
//! - [`fnv`]: the FNV-1a hash (state checksums, weight fingerprints).
//! - [`error`]: usage errors (exit status 2 in the CLI).

pub mod baselines;
pub mod catalog;
pub mod chat;
pub mod checkpoint;
pub mod default_model;
pub mod error;
pub mod eval;
pub mod fnv;
pub mod format;
pub mod hub;
pub mod kernels;
pub mod models;
pub mod ops;
pub mod output_file;
pub mod sampler;
pub mod serve;
pub mod state_file;
pub mod stats;
pub mod stop;
pub mod tokenizer;
pub mod weight_cache;

#[cfg(test)]
mod testing;
