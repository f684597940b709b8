//! The small linear-algebra toolkit the models are written in.
//!
//! Activations are plain row-major [`Mat`]s of f32 (T tokens × width). Weight matrices are
//! [`Linear`]s packed once at load into panels of 32 output rows, in the chosen
//! [`Format`](crate::format::Format) (f32, bf16, f16, or the block-quantized Q8_0 / Q4_0):
//! a token (two for some formats) goes through our matrix–vector kernels (the decode path, bound by memory
//! bandwidth), a batch through our register-tiled matrix–matrix kernels (the prefill path,
//! bound by arithmetic), both SIMD ([`crate::kernels`]) and multi-threaded on a small
//! fork–join [`pool`]. Embeddings are [`RowTable`]s. Everything else (norms, token shift,
//! activations) is plain Rust, run by rows on the same pool ([`for_rows`]) when the matrix is
//! large (a prompt's tokens × width).
//!
//! - `mat.rs`: [`Mat`].
//! - `linear.rs`: [`Linear`], [`forward_all`] (independent products in one call), [`RowTable`].
//! - `norm.rs`: [`layer_norm`], [`group_norm`], [`token_shift`], [`lerp`], activations.
//! - `pool.rs`: the fork–join [`pool`] and [`par_chunks_mut`].

mod linear;
mod mat;
mod norm;
pub mod pool;

pub use crate::kernels::dot_f32 as dot;
pub use linear::{forward_all, Linear, RowTable};
pub use mat::Mat;
pub use norm::{add_row, group_norm, layer_norm, layer_norm_row, lerp, token_shift};
pub use pool::{for_rows, par_chunks2_mut, par_chunks_mut};
