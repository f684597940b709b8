//! What `compare` prints on stdout: the table of points and growth exponents, or one JSON
//! object.

use super::fit::Metric;
use super::{CompareArgs, Point, Series, Settings, Subject};
use crate::cli::model_args::model_json;
use rwkv_cli::stats::human_bytes;
use serde_json::{json, Value};

pub(super) fn secs(s: f64) -> String {
    if s < 0.1 {
        format!("{:.1} ms", s * 1e3)
    } else if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.2} s")
    }
}

pub(super) fn opt_bytes(b: Option<u64>) -> String {
    b.map(human_bytes).unwrap_or_else(|| "n/a".into())
}

pub(super) fn opt_exp(e: Option<f64>) -> String {
    // No "-0.00" for a flat line.
    e.map(|e| format!("{:.2}", if e.abs() < 0.005 { 0.0 } else { e }))
        .unwrap_or_else(|| "n/a".into())
}

impl Point {
    pub(super) fn to_json(&self) -> Value {
        json!({
            "context": self.context,
            "prefill_seconds": self.prefill_seconds,
            "prefill_tokens_per_second": self.prefill_tokens_per_second(),
            "decode_ms_per_token": self.decode_ms_per_token(),
            "decode_ms": self.decode_ms,
            "state_bytes": self.state_bytes,
            "allocated_state_bytes": self.allocated_bytes,
            "rss_after_load_bytes": self.rss_after_load,
            "peak_rss_bytes": self.peak_rss,
            "rss_growth_bytes": self.rss_growth(),
            "peak_rss_includes_load": self.peak_includes_load,
            "load_seconds": self.load_seconds,
            "wall_seconds": self.wall_seconds,
        })
    }
}

/// Everything the JSON report says besides the series.
pub(super) struct Report<'a> {
    pub args: &'a CompareArgs,
    pub settings: &'a Settings,
    pub subject: &'a Subject,
    pub elapsed: f64,
}

impl Report<'_> {
    /// The line above the table, and the plot's title.
    pub(super) fn title(&self) -> String {
        let (cfg, threads) = (&self.subject.cfg, self.subject.threads);
        format!(
            "RWKV {} vs baselines of the same shape ({} layers, width {}), {} thread{}, {}",
            cfg.version,
            cfg.n_layer,
            cfg.n_embd,
            threads,
            if threads == 1 { "" } else { "s" },
            self.args.dtype.name()
        )
    }

    pub(super) fn to_json(&self, series: &[Series]) -> Value {
        let (cfg, shape) = (&self.subject.cfg, &self.subject.shape);
        let models_json: Vec<Value> = series
            .iter()
            .map(|s| {
                let exps = |f: &dyn Fn(Metric) -> Option<f64>| {
                    let mut m = serde_json::Map::new();
                    for metric in Metric::ALL {
                        m.insert(metric.key().into(), json!(f(metric)));
                    }
                    Value::Object(m)
                };
                json!({
                    "name": s.who.id(),
                    "label": s.who.label(),
                    "params": s.params,
                    "points": s.points.iter().map(Point::to_json).collect::<Vec<_>>(),
                    "exponents": exps(&|m| s.exponent(m)),
                    "exponents_last_step": exps(&|m| s.last_step_exponent(m)),
                    "stopped": s.stopped,
                })
            })
            .collect();
        let mut model = model_json(&self.subject.model_path, cfg, self.args.dtype);
        model["ffn"] = cfg.n_ffn.into();
        model["heads"] = cfg.n_head.into();
        model["head_size"] = cfg.head_size.into();
        model["state_bytes"] = cfg.state_bytes().into();
        json!({
            "model": model,
            "baseline_shape": {
                "layers": shape.n_layer,
                "width": shape.n_embd,
                "ffn": shape.n_ffn,
                "heads": shape.n_head,
                "head_size": shape.head_size,
                "vocab": shape.vocab_size,
                "params": shape.n_params(),
            },
            "settings": {
                "contexts": self.settings.contexts,
                "decode_tokens": self.args.decode_tokens,
                "chunk": self.args.chunk,
                "threads": self.subject.threads,
                "dtype": self.args.dtype.name(),
                "seed": self.args.seed,
                "memory_budget_bytes": self.settings.memory_budget,
                "time_budget_seconds": self.settings.time_budget,
                "isolation": "one child process per point; peak RSS reset after loading",
            },
            "models": models_json,
            "elapsed_seconds": self.elapsed,
            // As bench's: Ctrl-C ended the run (each model's "stopped" says where).
            "interrupted": crate::cli::interrupted(),
        })
    }
}

/// The table of every point, the growth exponents and why series stopped, as printed.
pub(super) fn table(title: &str, series: &[Series], contexts: &[usize]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>8}  {:<18} {:>10} {:>9} {:>14} {:>12} {:>12} {:>12}",
        "context",
        "model",
        "prefill",
        "tok/s",
        "decode ms/tok",
        "state/KV",
        "peak RSS",
        "RSS growth"
    );
    for &n in contexts {
        for s in series {
            if let Some(p) = s.points.iter().find(|p| p.context == n) {
                let _ = writeln!(
                    out,
                    "{:>8}  {:<18} {:>10} {:>9.0} {:>14.2} {:>12} {:>12} {:>12}",
                    n,
                    s.who.label(),
                    secs(p.prefill_seconds),
                    p.prefill_tokens_per_second(),
                    p.decode_ms_per_token(),
                    human_bytes(p.state_bytes),
                    opt_bytes(p.peak_rss),
                    opt_bytes(p.rss_growth()),
                );
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "growth exponents: least-squares slope of log(value) against log(context); \
         in brackets, the last step"
    );
    let _ = writeln!(
        out,
        "{:<18} {:>14} {:>14} {:>10} {:>10}",
        "model", "prefill", "decode", "state/KV", "peak RSS"
    );
    for s in series {
        let both = |m: Metric| {
            format!(
                "{} ({})",
                opt_exp(s.exponent(m)),
                opt_exp(s.last_step_exponent(m))
            )
        };
        let _ = writeln!(
            out,
            "{:<18} {:>14} {:>14} {:>10} {:>10}",
            s.who.label(),
            both(Metric::PrefillSeconds),
            both(Metric::DecodeMs),
            opt_exp(s.exponent(Metric::StateBytes)),
            opt_exp(s.exponent(Metric::PeakRss)),
        );
    }
    for s in series {
        if let Some(why) = &s.stopped {
            let _ = writeln!(out, "{}: {why}", s.who.label());
        }
    }
    out
}
