//! `rwkv-cli compare`: RWKV against transformer baselines of the same shape, as context grows.
//!
//! For each context length N, every model (RWKV, then each baseline) prefills the same N
//! pseudo-random tokens in chunks, then decodes a few more one at a time. Reported per point:
//! prefill seconds, decode ms/token at depth N (median), bytes of the state or KV cache at
//! depth N, and resident memory.
//!
//! Every point runs in a fresh child process (this same binary, `compare --worker ...`), so
//! that its peak RSS is its own: the child loads or builds its model, resets the kernel's
//! high-water mark (`/proc/self/clear_refs`, so the transient of loading a checkpoint is not
//! counted), runs, and prints one JSON line. The parent schedules the points context by
//! context, refuses those predicted to exceed the memory budget, and stops a model's series
//! when its next point is predicted (from the growth measured so far) to overrun what is left
//! of the time budget. Ctrl-C stops the running worker and reports the points measured so far
//! (table or JSON), then exits 130.

use crate::baselines::{self, Kind, Shape, Transformer};
use crate::format::Format;
use crate::models::{self, LoadOptions};
use crate::stats::{current_rss_bytes, human_bytes, human_count, peak_rss_bytes};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::interrupted;

/// A context length: a count as `bench --context` takes it (512, 1k, 1.5M).
fn parse_context(s: &str) -> Result<usize> {
    let n = crate::stats::parse_count(s)?;
    usize::try_from(n).map_err(|_| anyhow::anyhow!("invalid count \"{s}\": too large"))
}

/// Contexts measured when `--contexts` is not given.
pub const DEFAULT_CONTEXTS: [usize; 7] = [512, 1024, 2048, 4096, 8192, 16384, 32768];

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The RWKV checkpoint to compare: a file (.pth or .safetensors), a catalogue alias (see
    /// `rwkv-cli models`) or owner/repo:file.pth[@revision] on the Hugging Face Hub. Default:
    /// the embedded model.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Baselines, comma-separated: softmax, linear.
    #[arg(long, value_delimiter = ',', default_value = "softmax")]
    pub baseline: Vec<Kind>,
    /// Context lengths in tokens, comma-separated, with k/M suffixes as for `bench --context`
    /// (1k = 1000) [default: 512,1024,2048,4096,8192,16384,32768].
    #[arg(long, value_delimiter = ',', value_parser = parse_context)]
    pub contexts: Vec<usize>,
    /// Tokens decoded one at a time after each prefill; decode speed is their median.
    #[arg(long, default_value_t = 8)]
    pub decode_tokens: usize,
    /// Skip points predicted to need more peak memory than this: 8GiB, 512MiB, 4G (binary
    /// units), or "none".
    #[arg(long, default_value = "8GiB")]
    pub memory_budget: String,
    /// Wall-clock budget: a model's series stops when its next point is predicted to overrun
    /// it. 180s, 5m, 1h, or "none" (not zero).
    #[arg(long, default_value = "180s")]
    pub time_budget: String,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw time and memory against context (log–log) into this SVG file (its directory must
    /// exist).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Compute dtype of the weight matrices (RWKV and baselines): f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Format,
    /// Tokens per chunk of the prefill, for every model.
    #[arg(long, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Seed of the token stream and of the baselines' random weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Internal: measure one point in this process (rwkv, softmax or linear).
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    /// Internal: the worker's context length.
    #[arg(long, hide = true)]
    pub worker_context: Option<usize>,
    /// Internal: the baseline's shape, `layers,width,ffn,heads,head_size,vocab`.
    #[arg(long, hide = true)]
    pub worker_shape: Option<String>,
}

/// A model in the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    Rwkv(models::Version),
    Baseline(Kind),
}

impl Contender {
    /// Identifier in JSON and on the worker's command line.
    pub fn id(self) -> String {
        match self {
            Contender::Rwkv(v) => format!("rwkv-{}", v.name()),
            Contender::Baseline(k) => k.name().to_string(),
        }
    }

    pub fn label(self) -> String {
        match self {
            Contender::Rwkv(v) => format!("RWKV {v}"),
            Contender::Baseline(Kind::Softmax) => "softmax attention".into(),
            Contender::Baseline(Kind::Linear) => "linear attention".into(),
        }
    }

    fn worker_name(self) -> &'static str {
        match self {
            Contender::Rwkv(_) => "rwkv",
            Contender::Baseline(k) => k.name(),
        }
    }
}

/// One measured point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub context: usize,
    pub load_seconds: f64,
    pub prefill_seconds: f64,
    /// Each decoded token's time, in order.
    pub decode_ms: Vec<f64>,
    /// Bytes of the state or of the KV cache's tokens at depth N.
    pub state_bytes: u64,
    /// Bytes allocated for it (a KV cache is preallocated for N + decode tokens).
    pub allocated_bytes: u64,
    pub rss_after_load: Option<u64>,
    pub peak_rss: Option<u64>,
    /// The high-water mark could not be reset after loading.
    pub peak_includes_load: bool,
    /// The child process's whole run, as seen by the parent.
    pub wall_seconds: f64,
}

impl Point {
    pub fn decode_ms_per_token(&self) -> f64 {
        median(&self.decode_ms)
    }

    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.context as f64 / self.prefill_seconds.max(1e-12)
    }

    /// What the run added to the resident memory of the loaded model.
    pub fn rss_growth(&self) -> Option<u64> {
        Some(self.peak_rss?.saturating_sub(self.rss_after_load?))
    }

    fn decode_seconds(&self) -> f64 {
        self.decode_ms.iter().sum::<f64>() / 1e3
    }

    fn to_json(&self) -> Value {
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

    fn from_worker_json(v: &Value, wall_seconds: f64) -> Result<Self> {
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("worker output lacks {k}"))
        };
        let u = |k: &str| {
            v[k].as_u64()
                .with_context(|| format!("worker output lacks {k}"))
        };
        Ok(Self {
            context: u("context")? as usize,
            load_seconds: f("load_seconds")?,
            prefill_seconds: f("prefill_seconds")?,
            decode_ms: v["decode_ms"]
                .as_array()
                .context("worker output lacks decode_ms")?
                .iter()
                .filter_map(Value::as_f64)
                .collect(),
            state_bytes: u("state_bytes")?,
            allocated_bytes: u("allocated_state_bytes")?,
            rss_after_load: v["rss_after_load_bytes"].as_u64(),
            peak_rss: v["peak_rss_bytes"].as_u64(),
            peak_includes_load: v["peak_rss_includes_load"].as_bool().unwrap_or(true),
            wall_seconds,
        })
    }
}

/// A model's points, and why its series ended early (if it did).
pub struct Series {
    pub who: Contender,
    pub params: u64,
    pub points: Vec<Point>,
    pub stopped: Option<String>,
    pub failed: bool,
}

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

    fn title(self) -> &'static str {
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
    fn xy(&self, m: Metric) -> Vec<(f64, f64)> {
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

fn median(v: &[f64]) -> f64 {
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

/// Parses a byte count: a number with an optional binary unit (B, K/KiB, M/MiB, G/GiB, T/TiB;
/// KB, MB, GB, TB are read as binary too); "none" (or "off") is no limit.
pub fn parse_bytes(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if matches!(t.to_ascii_lowercase().as_str(), "none" | "off") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size \"{s}\": expected e.g. 8GiB, 512MiB or none"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("invalid size \"{s}\": unknown unit \"{unit}\" (use KiB, MiB, GiB or TiB)"),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        bail!("invalid size \"{s}\": too large");
    }
    Ok(Some(bytes as u64))
}

/// Parses a duration: seconds, or a number with `ms`, `s`, `m`/`min` or `h`; "none" (or
/// "off") is no limit.
pub fn parse_duration(s: &str) -> Result<Option<f64>> {
    let t = s.trim();
    if matches!(t.to_ascii_lowercase().as_str(), "none" | "off") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let value: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration \"{s}\": expected e.g. 180s, 5m or none"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1e-3,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => bail!("invalid duration \"{s}\": unknown unit \"{unit}\" (use s, m or h)"),
    };
    Ok(Some(value * scale))
}

/// Resets this process's peak RSS to its current RSS (Linux ≥ 4.0); false where impossible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn shape_arg(s: &Shape) -> String {
    format!(
        "{},{},{},{},{},{}",
        s.n_layer, s.n_embd, s.n_ffn, s.n_head, s.head_size, s.vocab_size
    )
}

fn parse_shape_arg(s: &str) -> Result<Shape> {
    let v: Vec<usize> = s
        .split(',')
        .map(|x| x.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .context("invalid --worker-shape")?;
    if v.len() != 6 {
        bail!("--worker-shape needs 6 numbers");
    }
    Ok(Shape {
        n_layer: v[0],
        n_embd: v[1],
        n_ffn: v[2],
        n_head: v[3],
        head_size: v[4],
        vocab_size: v[5],
    })
}

/// Worker mode: measures one point in this process and prints it as one JSON line.
fn run_worker(args: &CompareArgs, who: &str) -> Result<()> {
    let n = args
        .worker_context
        .context("--worker needs --worker-context")?;
    let d = args.decode_tokens;
    let t_load = Instant::now();
    enum Runner {
        Rwkv(Box<dyn models::Model>, models::State),
        Base(Box<Transformer>, baselines::Cache),
    }
    let (mut runner, vocab) = match who {
        "rwkv" => {
            let path = super::resolve_model(args.model.as_deref())?;
            let model = models::load(&path, LoadOptions { dtype: args.dtype })?;
            let state = model.new_state();
            let vocab = model.config().vocab_size;
            (Runner::Rwkv(model, state), vocab)
        }
        other => {
            let kind: Kind = other.parse()?;
            let shape = parse_shape_arg(
                args.worker_shape
                    .as_deref()
                    .context("a baseline worker needs --worker-shape")?,
            )?;
            let vocab = shape.vocab_size;
            let model = Transformer::random(kind, shape, args.dtype, args.seed)?;
            let cache = model.new_cache(n + d);
            (Runner::Base(Box::new(model), cache), vocab)
        }
    };
    let load_seconds = t_load.elapsed().as_secs_f64();
    // The tokens are drawn chunk by chunk, never held whole: at a long context a stream of
    // 4 bytes per token would otherwise grow the peak RSS of even a fixed-size state.
    let mut next_token = baselines::token_source(vocab, args.seed);
    let mut piece = Vec::with_capacity(args.chunk.min(n));
    let reset = reset_peak_rss();
    let rss_after_load = current_rss_bytes();

    let t0 = Instant::now();
    let mut logits = None;
    for start in (0..n).step_by(args.chunk.max(1)) {
        piece.clear();
        piece.extend((start..(start + args.chunk).min(n)).map(|_| next_token()));
        logits = Some(match &mut runner {
            Runner::Rwkv(m, st) => m.forward_seq(&piece, st, false)?,
            Runner::Base(m, c) => m
                .prefill(&piece, c, piece.len())?
                .context("no tokens to prefill")?,
        });
    }
    let logits = logits.context("no tokens to prefill")?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let (state_bytes, allocated_bytes) = match &runner {
        Runner::Rwkv(_, st) => (st.size_bytes() as u64, st.size_bytes() as u64),
        Runner::Base(_, c) => (c.bytes(), c.allocated_bytes()),
    };
    let mut finite = logits.iter().all(|v| v.is_finite());
    let mut decode_ms = Vec::with_capacity(d);
    for tok in (0..d).map(|_| next_token()) {
        let t = Instant::now();
        let out = match &mut runner {
            Runner::Rwkv(m, st) => m.step(tok, st)?,
            Runner::Base(m, c) => m.step(tok, c)?,
        };
        decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
        finite &= out.iter().all(|v| v.is_finite());
    }
    if !finite {
        bail!("{who}: the logits are not finite");
    }
    let v = json!({
        "model": who,
        "context": n,
        "load_seconds": load_seconds,
        "prefill_seconds": prefill_seconds,
        "decode_ms": decode_ms,
        "state_bytes": state_bytes,
        "allocated_state_bytes": allocated_bytes,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_includes_load": !reset,
    });
    crate::outln!("{v}")?;
    Ok(())
}

/// Settings shared by every point.
struct Plan<'a> {
    args: &'a CompareArgs,
    exe: PathBuf,
    model_path: PathBuf,
    shape: Shape,
    threads: usize,
}

/// Runs one point in a child process.
fn run_point(plan: &Plan, who: Contender, n: usize) -> Result<Point> {
    let a = plan.args;
    let mut cmd = Command::new(&plan.exe);
    cmd.arg("--threads")
        .arg(plan.threads.to_string())
        .arg("compare")
        .arg("--worker")
        .arg(who.worker_name())
        .arg("--worker-context")
        .arg(n.to_string())
        .arg("--decode-tokens")
        .arg(a.decode_tokens.to_string())
        .arg("--dtype")
        .arg(a.dtype.name())
        .arg("--chunk")
        .arg(a.chunk.to_string())
        .arg("--seed")
        .arg(a.seed.to_string());
    match who {
        Contender::Rwkv(_) => cmd.arg("--model").arg(&plan.model_path),
        Contender::Baseline(_) => cmd.arg("--worker-shape").arg(shape_arg(&plan.shape)),
    };
    let t = Instant::now();
    let out = run_child(&mut cmd).with_context(|| format!("cannot run {}", plan.exe.display()))?;
    let wall = t.elapsed().as_secs_f64();
    if interrupted() {
        bail!("interrupted");
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "the worker for {} at {n} tokens failed ({}): {}",
            who.id(),
            out.status,
            line.unwrap_or("no message (killed for lack of memory?)")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the worker printed no result")?;
    let v: Value = serde_json::from_str(line).context("the worker's result is not JSON")?;
    Point::from_worker_json(&v, wall)
}

/// Runs a worker to its end, like [`Command::output`], but kills it as soon as Ctrl-C is
/// pressed. A worker that died of SIGINT itself (Ctrl-C in a terminal reaches the whole
/// process group) counts as an interruption too, even if our handler has not run yet.
fn run_child(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if interrupted() {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.signal() == Some(2) {
        super::note_interrupt();
    }
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn secs(s: f64) -> String {
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

fn opt_bytes(b: Option<u64>) -> String {
    b.map(human_bytes).unwrap_or_else(|| "n/a".into())
}

fn opt_exp(e: Option<f64>) -> String {
    // No "-0.00" for a flat line.
    e.map(|e| format!("{:.2}", if e.abs() < 0.005 { 0.0 } else { e }))
        .unwrap_or_else(|| "n/a".into())
}

pub fn run(args: CompareArgs) -> Result<()> {
    if let Some(who) = args.worker.clone() {
        return run_worker(&args, &who);
    }
    let start = Instant::now();
    if args.chunk == 0 {
        crate::usage_bail!("--chunk must be at least 1");
    }
    if args.decode_tokens == 0 {
        crate::usage_bail!("--decode-tokens must be at least 1");
    }
    let memory_budget = match parse_bytes(&args.memory_budget) {
        Ok(b) => b,
        Err(e) => crate::usage_bail!("--memory-budget: {e}"),
    };
    let time_budget = match parse_duration(&args.time_budget) {
        Ok(Some(t)) if t <= 0.0 => {
            crate::usage_bail!("--time-budget must be more than zero (or \"none\" for no limit)")
        }
        Ok(t) => t,
        Err(e) => crate::usage_bail!("--time-budget: {e}"),
    };
    if let Some(p) = &args.plot {
        let svg = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
        if !svg {
            crate::usage_bail!(
                "--plot writes SVG: name the file *.svg (convert with e.g. rsvg-convert for PNG)"
            );
        }
    }
    let mut contexts = if args.contexts.is_empty() {
        DEFAULT_CONTEXTS.to_vec()
    } else {
        args.contexts.clone()
    };
    if contexts.contains(&0) {
        crate::usage_bail!("--contexts: every context must be at least 1 token");
    }
    contexts.sort_unstable();
    contexts.dedup();
    // Not a usage error: the path is well formed, the file system says no. Before any work.
    if let Some(p) = &args.plot {
        // Before any point is measured: a run is minutes long.
        crate::output_file::check("--plot", &p.to_string_lossy())?;
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for k in &args.baseline {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }

    let model_path = super::resolve_model(args.model.as_deref())?;
    let cfg = models::load(&model_path, LoadOptions { dtype: args.dtype })?
        .config()
        .clone();
    let shape = Shape::like(&cfg);
    let threads = rayon::current_num_threads();
    let d = args.decode_tokens;
    let rwkv = Contender::Rwkv(cfg.version);

    crate::errln!(
        "compare: RWKV {} ({} params): {} layers, width {}, FFN {}, vocab {} — {}",
        cfg.version,
        human_count(cfg.n_params),
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_ffn,
        cfg.vocab_size,
        model_path.display()
    );
    if !kinds.is_empty() {
        crate::errln!(
            "compare: baselines of the same shape, random weights, {} heads × {}, squared-ReLU FFN: {} ({} params each)",
            shape.n_head,
            shape.head_size,
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
            human_count(shape.n_params())
        );
    }
    crate::errln!(
        "compare: {threads} threads, {} weights, prefill chunks of {}, {d} decode tokens per point, each point in a fresh process",
        args.dtype.name(),
        args.chunk
    );
    // Bytes allocated for the state or KV cache of a point at context n.
    let allocation = |who: Contender, n: usize| -> u64 {
        match who {
            Contender::Rwkv(_) => cfg.state_bytes() as u64,
            Contender::Baseline(Kind::Softmax) => shape.kv_cache_bytes(n + d),
            Contender::Baseline(Kind::Linear) => shape.linear_state_bytes(),
        }
    };
    let mut mem_line = format!(
        "compare: memory budget {}; state at any context: RWKV {}",
        memory_budget
            .map(human_bytes)
            .unwrap_or_else(|| "none".into()),
        human_bytes(cfg.state_bytes() as u64),
    );
    if kinds.contains(&Kind::Linear) {
        mem_line += &format!(", linear {}", human_bytes(shape.linear_state_bytes()));
    }
    if kinds.contains(&Kind::Softmax) {
        let list: Vec<String> = contexts
            .iter()
            .map(|&n| format!("{n}: {}", human_bytes(shape.kv_cache_bytes(n))))
            .collect();
        mem_line += &format!("; softmax KV cache (f32) at {}", list.join(", "));
    }
    crate::errln!("{mem_line}");
    crate::errln!(
        "compare: time budget {}",
        time_budget
            .map(|t| format!(
                "{} (a model's series stops when its next point is predicted to overrun it)",
                secs(t)
            ))
            .unwrap_or_else(|| "none".into())
    );

    let plan = Plan {
        args: &args,
        exe: std::env::current_exe().context("cannot find this program's executable")?,
        model_path: model_path.clone(),
        shape: shape.clone(),
        threads,
    };
    let mut series: Vec<Series> = std::iter::once(rwkv)
        .chain(kinds.iter().map(|&k| Contender::Baseline(k)))
        .map(|who| Series {
            who,
            params: match who {
                Contender::Rwkv(_) => cfg.n_params,
                Contender::Baseline(_) => shape.n_params(),
            },
            points: Vec::new(),
            stopped: None,
            failed: false,
        })
        .collect();

    // Ctrl-C: the running point's worker is stopped, the points measured so far are
    // reported, and the process exits 130.
    super::catch_interrupt();
    'points: for &n in &contexts {
        for s in series.iter_mut() {
            if interrupted() {
                break 'points;
            }
            if s.stopped.is_some() {
                continue;
            }
            let who = s.who;
            // Before any point: f32 weights and some room for the runtime.
            let first_guess = s.params * 4 + (16 << 20);
            let need = predict_peak_bytes(&s.points, |n| allocation(who, n), n, first_guess);
            if let Some(budget) = memory_budget {
                if need > budget {
                    let why = format!(
                        "stopped before {n} tokens: predicted peak memory {} exceeds the memory budget {}",
                        human_bytes(need),
                        human_bytes(budget)
                    );
                    crate::errln!("compare: {}: {why}", who.id());
                    s.stopped = Some(why);
                    continue;
                }
            }
            if let (Some(budget), Some(pred)) = (time_budget, predict_seconds(&s.points, n)) {
                let left = budget - start.elapsed().as_secs_f64();
                if pred > left {
                    let why = format!(
                        "stopped before {n} tokens: predicted {} with {} of the time budget left",
                        secs(pred),
                        secs(left.max(0.0))
                    );
                    crate::errln!("compare: {}: {why}", who.id());
                    s.stopped = Some(why);
                    continue;
                }
            }
            match run_point(&plan, who, n) {
                Ok(p) => {
                    crate::errln!(
                        "[{:>7}] {:<10} N={:<6} prefill {} ({:.0} tok/s)  decode {:.2} ms/tok  state {}  peak RSS {}",
                        secs(start.elapsed().as_secs_f64()),
                        who.id(),
                        n,
                        secs(p.prefill_seconds),
                        p.prefill_tokens_per_second(),
                        p.decode_ms_per_token(),
                        human_bytes(p.state_bytes),
                        opt_bytes(p.peak_rss),
                    );
                    s.points.push(p);
                }
                Err(_) if interrupted() => break 'points,
                Err(e) => {
                    let why = format!("{e:#}");
                    crate::errln!("compare: {}: {why}", who.id());
                    s.stopped = Some(why);
                    s.failed = true;
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stopped_by_user = interrupted();
    if stopped_by_user {
        crate::errln!(
            "compare: interrupted after {}; reporting the points measured so far",
            secs(elapsed)
        );
        for s in series.iter_mut().filter(|s| s.stopped.is_none()) {
            let next = contexts
                .iter()
                .find(|&&n| !s.points.iter().any(|p| p.context == n));
            s.stopped = Some(match next {
                Some(n) => format!("interrupted (Ctrl-C) before {n} tokens were measured"),
                None => "interrupted (Ctrl-C) after its last point".into(),
            });
        }
    }

    let title = format!(
        "RWKV {} vs baselines of the same shape ({} layers, width {}), {} thread{}, {}",
        cfg.version,
        cfg.n_layer,
        cfg.n_embd,
        threads,
        if threads == 1 { "" } else { "s" },
        args.dtype.name()
    );
    if args.json {
        let report = Report {
            args: &args,
            cfg: &cfg,
            shape: &shape,
            model_path: &model_path,
            contexts: &contexts,
            threads,
            memory_budget,
            time_budget,
            elapsed,
        };
        crate::outln!("{}", report.to_json(&series))?;
    } else {
        super::print_out(&table(&title, &series, &contexts))?;
    }
    if let Some(p) = &args.plot {
        draw_plot(p, &title, &series).with_context(|| format!("cannot draw {}", p.display()))?;
        crate::errln!("compare: plot written to {}", p.display());
    }
    if stopped_by_user {
        // Like a shell: 128 + SIGINT.
        std::process::exit(130);
    }
    crate::errln!("compare: done in {}", secs(elapsed));
    let failures = series.iter().filter(|s| s.failed).count();
    if series.iter().all(|s| s.points.is_empty()) {
        bail!("no point could be measured");
    }
    if failures > 0 {
        bail!("{failures} model(s) failed to run; see above");
    }
    Ok(())
}

/// Everything the JSON report says besides the series.
struct Report<'a> {
    args: &'a CompareArgs,
    cfg: &'a models::Config,
    shape: &'a Shape,
    model_path: &'a Path,
    contexts: &'a [usize],
    threads: usize,
    memory_budget: Option<u64>,
    time_budget: Option<f64>,
    elapsed: f64,
}

impl Report<'_> {
    fn to_json(&self, series: &[Series]) -> Value {
        let (cfg, shape) = (self.cfg, self.shape);
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
        let mut model = super::model_json(self.model_path, cfg, self.args.dtype);
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
                "contexts": self.contexts,
                "decode_tokens": self.args.decode_tokens,
                "chunk": self.args.chunk,
                "threads": self.threads,
                "dtype": self.args.dtype.name(),
                "seed": self.args.seed,
                "memory_budget_bytes": self.memory_budget,
                "time_budget_seconds": self.time_budget,
                "isolation": "one child process per point; peak RSS reset after loading",
            },
            "models": models_json,
            "elapsed_seconds": self.elapsed,
        })
    }
}

/// The table of every point, the growth exponents and why series stopped, as printed.
fn table(title: &str, series: &[Series], contexts: &[usize]) -> String {
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
fn draw_plot(path: &Path, title: &str, series: &[Series]) -> Result<()> {
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
    fn budgets_parse() {
        assert_eq!(parse_bytes("8GiB").unwrap(), Some(8 << 30));
        assert_eq!(parse_bytes("512 MiB").unwrap(), Some(512 << 20));
        assert_eq!(parse_bytes("1.5G").unwrap(), Some(3 << 29));
        assert_eq!(parse_bytes("1000").unwrap(), Some(1000));
        assert_eq!(parse_bytes("none").unwrap(), None);
        assert!(parse_bytes("8 parsecs").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert_eq!(parse_duration("180s").unwrap(), Some(180.0));
        assert_eq!(parse_duration("3m").unwrap(), Some(180.0));
        assert_eq!(parse_duration("90").unwrap(), Some(90.0));
        assert_eq!(parse_duration("500ms").unwrap(), Some(0.5));
        assert_eq!(parse_duration("off").unwrap(), None);
        assert!(parse_duration("3 weeks").is_err());
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
    fn the_worker_draws_the_same_tokens_one_at_a_time() {
        let mut next = baselines::token_source(97, 42);
        let streamed: Vec<u32> = (0..1000).map(|_| next()).collect();
        assert_eq!(streamed, baselines::token_stream(1000, 97, 42));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(32768.0), "32768");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(12.34), "12.3");
        assert_eq!(tick(0.00012), "1.2e-4");
    }
}
