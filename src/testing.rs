//! Helpers for the library's unit tests (compiled only for them).

/// `n` pseudo-random values in [-0.5, 0.5) from a linear congruential generator: the same
/// values for the same seed, on every machine.
pub fn pseudo(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}
