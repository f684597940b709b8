//! The exponential used for the probabilities.

/// `e^z` for `z <= 0` (z = -inf gives 0), relative error about 1e-7.
///
/// Used instead of `f32::exp` for two reasons: it is plain IEEE arithmetic with
/// no libm call, so results (and therefore seeded samples) are identical on
/// every platform, and it is branch-free, so loops over the vocabulary vectorise.
#[inline(always)]
pub(super) fn exp_nonpos(z: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
