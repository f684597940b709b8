//! rwkv-cli: run RWKV language models (v4, v5, v6, v7) on the CPU.
//!
//! The library holds everything; `src/main.rs` only parses arguments and dispatches.
//! - [`checkpoint`]: reading weights from safetensors (memory-mapped) and PyTorch `.pth` archives.
//! - [`models`]: version detection and one module per RWKV version behind the [`models::Model`] trait.
//! - [`tokenizer`]: World (trie, greedy longest match), 20B (HF `tokenizers`) and byte tokenizers.
//! - [`sampler`]: temperature, top-k, top-p, penalties, seeded.
//! - [`stats`]: peak and current resident memory.
//! - [`state_file`], [`output_file`]: saved states; writing output files safely.
//! - [`commands`]: one file per subcommand.

pub mod baselines;
pub mod catalog;
pub mod checkpoint;
pub mod commands;
pub mod default_model;
pub mod format;
pub mod hub;
pub mod kernels;
pub mod models;
pub mod ops;
pub mod output_file;
pub mod sampler;
pub mod state_file;
pub mod stats;
pub mod tokenizer;
