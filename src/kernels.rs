//! SIMD dot products for the one-token (decode) path, where every weight is read once per
//! token and the speed is set by memory bandwidth and by how fast 16-bit weights widen to f32.
//!
//! Each kernel has an AVX-512 and an AVX2+FMA version chosen at run time, and a portable
//! fallback. The 16-bit kernels widen in registers, so weights stay 16-bit in memory.

use half::{bf16, f16};

/// Which instruction set the kernels use on this machine (detected once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("RWKV_NO_AVX512").is_none()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
            {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// `Σ a[i]·b[i]` over f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match isa() {
        // SAFETY: the CPU supports the target features (checked by `isa`), and both slices
        // have length `n`, which is all the kernel reads.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_f32_avx512(a, b) },
        // SAFETY: as above, for AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_f32_avx2(a, b) },
        _ => portable::dot_f32(a, b),
    }
}

/// `Σ a[i]·b[i]` with `a` in IEEE half precision.
pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match isa() {
        // SAFETY: target features checked by `isa`; both slices have length `n`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_f16_avx512(a, b) },
        // SAFETY: as above (AVX2, FMA and F16C).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_f16_avx2(a, b) },
        _ => portable::dot_f16(a, b),
    }
}

/// `Σ a[i]·b[i]` with `a` in bfloat16.
pub fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match isa() {
        // SAFETY: target features checked by `isa`; both slices have length `n`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot_bf16_avx512(a, b) },
        // SAFETY: as above (AVX2 and FMA).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::dot_bf16_avx2(a, b) },
        _ => portable::dot_bf16(a, b),
    }
}

mod portable {
    use half::{bf16, f16};

    const L: usize = 16;

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; L];
        let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for j in 0..L {
                acc[j] += x[j] * y[j];
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
    }

    pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x.to_f32() * y).sum()
    }

    pub fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; L];
        let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for j in 0..L {
                acc[j] += f32::from_bits((x[j].to_bits() as u32) << 16) * y[j];
            }
        }
        acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x.to_f32() * y).sum::<f32>()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Horizontal sum of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    // Every kernel below reads a[i] and b[i] for i < a.len() only (the callers pass slices of
    // equal length), with unaligned loads.

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                acc1,
            );
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f16_avx512(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let h0 = _mm256_loadu_si256(pa.add(i) as *const __m256i);
            let h1 = _mm256_loadu_si256(pa.add(i + 16) as *const __m256i);
            acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(h0), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(h1), _mm512_loadu_ps(pb.add(i + 16)), acc1);
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while i < n {
            s += f16::from_bits(*pa.add(i)).to_f32() * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_avx2(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let h0 = _mm_loadu_si128(pa.add(i) as *const __m128i);
            let h1 = _mm_loadu_si128(pa.add(i + 8) as *const __m128i);
            acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(h0), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(h1), _mm256_loadu_ps(pb.add(i + 8)), acc1);
            i += 16;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += f16::from_bits(*pa.add(i)).to_f32() * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_bf16_avx512(a: &[bf16], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let h0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(pa.add(i) as *const __m256i));
            let h1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(pa.add(i + 16) as *const __m256i));
            let w0 = _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16));
            let w1 = _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16));
            acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(pb.add(i + 16)), acc1);
            i += 32;
        }
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        while i < n {
            s += bf16::from_bits(*pa.add(i)).to_f32() * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16_avx2(a: &[bf16], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr() as *const u16, b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let h0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(pa.add(i) as *const __m128i));
            let h1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(pa.add(i + 8) as *const __m128i));
            let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(h0, 16));
            let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(h1, 16));
            acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(pb.add(i + 8)), acc1);
            i += 16;
        }
        let mut s = hsum256(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += bf16::from_bits(*pa.add(i)).to_f32() * *pb.add(i);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> (Vec<f32>, Vec<f32>) {
        let a = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let b = (0..n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 30.0)
            .collect();
        (a, b)
    }

    #[test]
    fn every_kernel_matches_the_plain_sum_at_every_length() {
        for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 768, 3072] {
            let (a, b) = data(n);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-4 * (1.0 + exact.abs());
            assert!((dot_f32(&a, &b) as f64 - exact).abs() < tol, "f32 n={n}");
            let ah: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            let exact_h: f64 = ah.iter().zip(&b).map(|(x, y)| x.to_f64() * *y as f64).sum();
            assert!((dot_f16(&ah, &b) as f64 - exact_h).abs() < tol, "f16 n={n}");
            let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
            let exact_b: f64 = ab.iter().zip(&b).map(|(x, y)| x.to_f64() * *y as f64).sum();
            assert!(
                (dot_bf16(&ab, &b) as f64 - exact_b).abs() < tol,
                "bf16 n={n}"
            );
            // The portable fallback agrees too.
            assert!((portable::dot_f32(&a, &b) as f64 - exact).abs() < tol);
            assert!((portable::dot_bf16(&ab, &b) as f64 - exact_b).abs() < tol);
        }
    }
}
