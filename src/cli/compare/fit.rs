//! Growth exponents (the `p` of `y ≈ a·x^p`, fitted on log–log axes) and the predictions
//! that decide whether a model's next point fits in the budgets.

use super::{Point, Series};

/// The quantities plotted and fitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    PrefillSeconds,
    DecodeMs,
    StateBytes,
    PeakRss,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::PrefillSeconds,
        Metric::DecodeMs,
        Metric::StateBytes,
        Metric::PeakRss,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Metric::PrefillSeconds => "prefill_seconds",
            Metric::DecodeMs => "decode_ms_per_token",
            Metric::StateBytes => "state_bytes",
            Metric::PeakRss => "peak_rss_bytes",
        }
    }

    pub(super) fn title(self) -> &'static str {
        match self {
            Metric::PrefillSeconds => "Prefill: seconds for N tokens",
            Metric::DecodeMs => "Decode: ms per token at depth N (median)",
            Metric::StateBytes => "State or KV cache at depth N",
            Metric::PeakRss => "Peak RSS of the run (weights included)",
        }
    }

    fn value(self, p: &Point) -> Option<f64> {
        match self {
            Metric::PrefillSeconds => Some(p.prefill_seconds),
            Metric::DecodeMs => Some(p.decode_ms_per_token()),
            Metric::StateBytes => Some(p.state_bytes as f64),
            Metric::PeakRss => p.peak_rss.map(|b| b as f64),
        }
    }
}

impl Series {
    pub(super) fn xy(&self, m: Metric) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.context as f64, m.value(p)?)))
            .filter(|&(_, y)| y > 0.0 && y.is_finite())
            .collect()
    }

    /// The least-squares growth exponent of a metric over all points.
    pub fn exponent(&self, m: Metric) -> Option<f64> {
        fit_exponent(&self.xy(m))
    }

    /// The exponent between the last two points only.
    pub fn last_step_exponent(&self, m: Metric) -> Option<f64> {
        let xy = self.xy(m);
        fit_exponent(&xy[xy.len().saturating_sub(2)..])
    }
}

/// The slope of `log y` against `log x` by least squares: the `p` of `y ≈ a·x^p`. `None`
/// with fewer than two distinct `x` or any value that is not positive.
pub fn fit_exponent(points: &[(f64, f64)]) -> Option<f64> {
    if points.iter().any(|&(x, y)| !(x > 0.0 && y > 0.0)) {
        return None;
    }
    let n = points.len() as f64;
    let lx: Vec<f64> = points.iter().map(|p| p.0.ln()).collect();
    let ly: Vec<f64> = points.iter().map(|p| p.1.ln()).collect();
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxx: f64 = lx.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    if points.len() < 2 || sxx <= 1e-12 {
        return None;
    }
    Some(sxy / sxx)
}

pub(super) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Predicts the wall time of a model's point at context `n` from its points so far: the last
/// point's fixed cost (process start, load) plus its prefill and decode times scaled by the
/// growth of the last step (prefill exponent clamped to [1, 2], decode to [0, 1]; with one
/// point, linear growth is assumed for both). `None` without points.
pub fn predict_seconds(points: &[Point], n: usize) -> Option<f64> {
    let last = points.last()?;
    let ratio = n as f64 / last.context as f64;
    let (e_prefill, e_decode) = match points.len() {
        0 | 1 => (1.0, 1.0),
        len => {
            let prev = &points[len - 2];
            let slope = |a: f64, b: f64| {
                fit_exponent(&[
                    (prev.context as f64, a.max(1e-9)),
                    (last.context as f64, b.max(1e-9)),
                ])
            };
            (
                slope(prev.prefill_seconds, last.prefill_seconds)
                    .unwrap_or(1.0)
                    .clamp(1.0, 2.0),
                slope(prev.decode_seconds(), last.decode_seconds())
                    .unwrap_or(1.0)
                    .clamp(0.0, 1.0),
            )
        }
    };
    let fixed = (last.wall_seconds - last.prefill_seconds - last.decode_seconds()).max(0.0);
    Some(
        fixed
            + last.prefill_seconds * ratio.powf(e_prefill)
            + last.decode_seconds() * ratio.powf(e_decode),
    )
}

/// Predicts a point's peak RSS: the last point's peak plus the growth of the state or cache
/// allocation; before any point, `first_guess` (weights) plus the allocation.
pub fn predict_peak_bytes(
    points: &[Point],
    allocation_at: impl Fn(usize) -> u64,
    n: usize,
    first_guess: u64,
) -> u64 {
    match points.last() {
        Some(p) if p.peak_rss.is_some() => {
            let peak = p.peak_rss.unwrap_or(0);
            (peak + allocation_at(n)).saturating_sub(allocation_at(p.context))
        }
        _ => first_guess + allocation_at(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(n: usize, prefill: f64, decode_ms: f64, wall: f64) -> Point {
        let peak = 1_000_000;
        Point {
            context: n,
            load_seconds: 1.0,
            prefill_seconds: prefill,
            decode_ms: vec![decode_ms; 4],
            state_bytes: 100,
            allocated_bytes: 100,
            rss_after_load: Some(peak / 2),
            peak_rss: Some(peak),
            peak_includes_load: false,
            wall_seconds: wall,
        }
    }

    #[test]
    fn predictions_follow_the_measured_growth() {
        assert_eq!(predict_seconds(&[], 100), None);
        // One point: linear growth; the fixed cost is wall − prefill − decode (4 × 250 ms).
        let one = [point(1000, 4.0, 250.0, 10.0)];
        let fixed = 10.0 - 4.0 - 1.0;
        let p = predict_seconds(&one, 2000).unwrap();
        assert!((p - (fixed + 8.0 + 2.0)).abs() < 1e-9, "{p}");
        // Quadratic prefill, constant decode.
        let two = [
            point(1000, 4.0, 250.0, 10.0),
            point(2000, 16.0, 250.0, 22.0),
        ];
        let p = predict_seconds(&two, 4000).unwrap();
        assert!((p - (5.0 + 64.0 + 1.0)).abs() < 1e-6, "{p}");
        // Memory: the last peak plus the allocation's growth.
        let alloc = |n: usize| n as u64 * 10;
        assert_eq!(predict_peak_bytes(&two, alloc, 4000, 0), 1_000_000 + 20_000);
        assert_eq!(predict_peak_bytes(&[], alloc, 4000, 500), 40_500);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn exponent_fit_recovers_known_growth() {
        let xs = [512.0, 1024.0, 2048.0, 4096.0, 8192.0];
        let fit = |f: &dyn Fn(f64) -> f64| {
            fit_exponent(&xs.iter().map(|&x| (x, f(x))).collect::<Vec<_>>()).unwrap()
        };
        assert!((fit(&|x| 3.0 * x * x) - 2.0).abs() < 1e-9);
        assert!((fit(&|x| x) - 1.0).abs() < 1e-9);
        assert!(fit(&|_| 7.5).abs() < 1e-9);
        assert!((fit(&|x| 0.01 * x.sqrt()) - 0.5).abs() < 1e-9);
        // A sum of a linear and a quadratic term lies between 1 and 2.
        let mixed = fit(&|x| 10.0 * x + 0.001 * x * x);
        assert!(mixed > 1.0 && mixed < 2.0, "{mixed}");
        assert_eq!(fit_exponent(&[(10.0, 1.0)]), None);
        assert_eq!(fit_exponent(&[(10.0, 1.0), (10.0, 2.0)]), None);
        assert_eq!(fit_exponent(&[(10.0, 0.0), (20.0, 2.0)]), None);
    }
}
