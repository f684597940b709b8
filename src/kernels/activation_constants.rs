//! The constants of the SIMD activation kernels (`x86_64/activation.rs`,
//! `aarch64/activation.rs`), one home for both instruction sets.
//!
//! The exponential is the classic one (Cephes' `expf`, as in most SIMD math libraries):
//! `x = n·ln 2 + r` with `n` the nearest integer to `x / ln 2` and `|r| ≤ ln 2 / 2`
//! (`ln 2` split in two so that `n·ln 2` is exact in its high part), a degree-7 polynomial for
//! `e^r`, then `2^n` applied (by `vscalefps`, or as two normal factors `2^⌊n/2⌋ · 2^(n−⌊n/2⌋)`
//! where the instruction set has no such scaling). Tanh follows Cephes' `tanhf`: an odd
//! polynomial below 0.625, `1 − 2 / (e^{2|x|} + 1)` above. Within 2–3 units in the last place
//! of the exact values (tested against f64 over the whole range, with the special values, at
//! every level: `tests.rs`), where the portable kernels call the standard library's functions.

/// `ln 2` in two parts: `LN2_HI` has few enough significant bits that `n · LN2_HI` is exact
/// for every `n` the clamped range gives.
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `e^x` rounds to zero in f32 (`e^-104 < 2^-149 / 2`), above the other bound to
/// infinity; clamping keeps `r` finite for infinite inputs.
pub(super) const EXP_MIN: f32 = -104.0;
pub(super) const EXP_MAX: f32 = 89.0;
/// `e^r − 1 − r = r²·(P5 + P4·r + … + P0·r⁵)` on `|r| ≤ ln 2 / 2` (Cephes' expf coefficients).
pub(super) const EXP_P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// `tanh(x) = x + x³·(T0·x⁸ + … + T4)` for `|x| < TANH_SMALL` (Cephes' tanhf coefficients).
pub(super) const TANH_SMALL: f32 = 0.625;
pub(super) const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    0.133_314_42,
    -0.333_332_8,
];
