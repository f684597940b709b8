//! The SVG plot of `compare --plot`: time and memory against context, log–log.

use super::fit::{fit_exponent, Metric};
use super::report::opt_exp;
use super::{Contender, Series};
use anyhow::Result;
use rwkv_cli::baselines::Kind;
use rwkv_cli::stats::human_bytes;
use std::path::Path;

/// Tick values for a log axis over `[lo, hi]`: powers of two for bytes, else 1–2–5 per
/// decade (finer over a narrow range); thinned to at most about eight.
fn log_ticks(lo: f64, hi: f64, bytes: bool) -> Vec<f64> {
    let mut t: Vec<f64> = if bytes {
        (lo.log2().floor() as i32..=hi.log2().ceil() as i32)
            .map(|e| 2f64.powi(e))
            .collect()
    } else {
        let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
        let in_range = |m: &[f64]| -> Vec<f64> {
            decades
                .clone()
                .flat_map(|e| m.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|&v| v >= lo && v <= hi)
                .collect()
        };
        let coarse = in_range(&[1.0, 2.0, 5.0]);
        if coarse.len() >= 4 {
            coarse
        } else {
            in_range(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0])
        }
    };
    t.retain(|&v| v >= lo && v <= hi);
    let step = t.len().div_ceil(8).max(1);
    t.into_iter().step_by(step).collect()
}

/// A number for an axis: three significant digits, no trailing zeros.
fn tick(v: f64) -> String {
    let a = v.abs();
    let text = if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.4}")
    } else {
        return format!("{v:.1e}");
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn color_of(who: Contender) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match who {
        Contender::Rwkv(_) => RGBColor(214, 39, 40),
        Contender::Baseline(Kind::Softmax) => RGBColor(31, 119, 180),
        Contender::Baseline(Kind::Linear) => RGBColor(44, 160, 44),
    }
}

/// Four log–log panels (prefill, decode, state/KV, peak RSS), one line per model, the fitted
/// exponent of each line in the legend.
pub(super) fn draw_plot(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((2, 2));
    for (area, metric) in panels.iter().zip(Metric::ALL) {
        let lines: Vec<(&Series, Vec<(f64, f64)>)> = series
            .iter()
            .map(|s| (s, s.xy(metric)))
            .filter(|(_, xy)| !xy.is_empty())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in lines.iter().flat_map(|(_, xy)| xy.iter()) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if lines.is_empty() {
            (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
        }
        // At least a factor of 4 on the value axis, so that flat lines look flat.
        if y1 / y0 < 4.0 {
            let mid = (y0 * y1).sqrt();
            (y0, y1) = (mid / 2.0, mid * 2.0);
        }
        let (y0, y1) = (y0 / 1.25, y1 * 1.25);
        let bytes = matches!(metric, Metric::StateBytes | Metric::PeakRss);
        let mut x_ticks: Vec<f64> = lines
            .iter()
            .flat_map(|(_, xy)| xy.iter().map(|p| p.0))
            .collect();
        x_ticks.sort_by(f64::total_cmp);
        x_ticks.dedup();
        let step = x_ticks.len().div_ceil(10).max(1);
        let x_ticks: Vec<f64> = x_ticks.into_iter().step_by(step).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(metric.title(), ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(if bytes { 90 } else { 70 })
            .build_cartesian_2d(
                (x0 / 1.2..x1 * 1.2).log_scale().with_key_points(x_ticks),
                (y0..y1)
                    .log_scale()
                    .with_key_points(log_ticks(y0, y1, bytes)),
            )?;
        let y_fmt = move |v: &f64| {
            if bytes {
                human_bytes(v.max(0.0) as u64)
            } else {
                tick(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc("context (tokens)")
            .y_desc(match metric {
                Metric::PrefillSeconds => "seconds",
                Metric::DecodeMs => "ms per token",
                _ => "bytes",
            })
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        for (s, xy) in &lines {
            let color = color_of(s.who);
            let label = format!("{}: slope {}", s.who.label(), opt_exp(fit_exponent(xy)));
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(3)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        if !lines.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(32768.0), "32768");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(12.34), "12.3");
        assert_eq!(tick(0.00012), "1.2e-4");
    }
}
