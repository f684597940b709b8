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
//!
//! - this file: the flags, the data (contenders, points, series) and [`run`], step by step;
//! - [`worker`]: the child process (`--worker`), and running one from the parent;
//! - [`fit`]: growth exponents, and the predictions of a point's time and memory;
//! - [`report`]: the table and the JSON report;
//! - [`plot`]: the SVG plot.

mod fit;
mod plot;
mod report;
mod worker;

use anyhow::{bail, Context, Result};
use clap::Args;
use rwkv_cli::baselines::{Kind, Shape};
use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::format::Format;
use rwkv_cli::models;
use rwkv_cli::stats::{human_bytes, human_count};
use std::path::PathBuf;
use std::time::Instant;

use super::interrupted;
use fit::{median, predict_peak_bytes, predict_seconds};
use report::{opt_bytes, secs};

/// A context length: a count as `bench --context` takes it (512, 1k, 1.5M).
fn parse_context(s: &str) -> Result<usize> {
    let n = rwkv_cli::stats::parse_count(s)?;
    usize::try_from(n).map_err(|_| anyhow::anyhow!("invalid count \"{s}\": too large"))
}

/// Contexts measured when `--contexts` is not given.
pub const DEFAULT_CONTEXTS: [usize; 7] = [512, 1024, 2048, 4096, 8192, 16384, 32768];

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The RWKV checkpoint to compare: a file (.pth, .safetensors or .gguf), a catalogue alias (see
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
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::count, default_value_t = 8)]
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
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::count, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Seed of the token stream and of the baselines' random weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub weight_cache: crate::cli::model_args::WeightCacheArgs,
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

/// Parses a byte count as every size flag does ([`crate::cli::parse_size`]: K/KiB … binary,
/// KB … decimal); "none" (or "off") is no limit.
pub fn parse_bytes(s: &str) -> Result<Option<u64>> {
    if matches!(s.trim().to_ascii_lowercase().as_str(), "none" | "off") {
        return Ok(None);
    }
    crate::cli::parse_size(s).map(Some)
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
}

/// A model's points, and why its series ended early (if it did).
pub struct Series {
    pub who: Contender,
    pub params: u64,
    pub points: Vec<Point>,
    pub stopped: Option<String>,
    pub failed: bool,
}

/// The run's settings beyond the flags, checked before anything is loaded.
struct Settings {
    memory_budget: Option<u64>,
    time_budget: Option<f64>,
    /// Sorted, without repeats.
    contexts: Vec<usize>,
    /// The baselines, each once, in the order given.
    kinds: Vec<Kind>,
}

impl Settings {
    /// Checks the flags (usage errors) and that the plot can be written, before any work.
    fn check(args: &CompareArgs) -> Result<Self> {
        if args.chunk == 0 {
            rwkv_cli::usage_bail!("--chunk must be at least 1");
        }
        if args.decode_tokens == 0 {
            rwkv_cli::usage_bail!("--decode-tokens must be at least 1");
        }
        let memory_budget = match parse_bytes(&args.memory_budget) {
            Ok(b) => b,
            Err(e) => rwkv_cli::usage_bail!("--memory-budget: {e}"),
        };
        let time_budget = match parse_duration(&args.time_budget) {
            Ok(Some(t)) if t <= 0.0 => {
                rwkv_cli::usage_bail!(
                    "--time-budget must be more than zero (or \"none\" for no limit)"
                )
            }
            Ok(t) => t,
            Err(e) => rwkv_cli::usage_bail!("--time-budget: {e}"),
        };
        if let Some(p) = &args.plot {
            let svg = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
            if !svg {
                rwkv_cli::usage_bail!(
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
            rwkv_cli::usage_bail!("--contexts: every context must be at least 1 token");
        }
        contexts.sort_unstable();
        contexts.dedup();
        // Not a usage error: the path is well formed, the file system says no. Before any work.
        if let Some(p) = &args.plot {
            // Before any point is measured: a run is minutes long.
            rwkv_cli::output_file::check("--plot", &p.to_string_lossy())?;
        }
        let mut kinds: Vec<Kind> = Vec::new();
        for k in &args.baseline {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        Ok(Settings {
            memory_budget,
            time_budget,
            contexts,
            kinds,
        })
    }
}

/// The RWKV model compared, and the shape its baselines copy.
struct Subject {
    model_path: PathBuf,
    cfg: models::Config,
    shape: Shape,
    threads: usize,
    decode_tokens: usize,
}

impl Subject {
    /// Resolves the RWKV model and reads its configuration, checked as loading checks it
    /// without converting the weights (the workers load the model, through the weight cache).
    fn load(args: &CompareArgs) -> Result<Self> {
        let model_path = super::model_args::resolve_model(args.model.as_deref())?;
        let cfg = models::inspect(&Checkpoint::open(&model_path)?)?;
        Ok(Subject {
            shape: Shape::like(&cfg),
            model_path,
            cfg,
            threads: rayon::current_num_threads(),
            decode_tokens: args.decode_tokens,
        })
    }

    /// Bytes allocated for the state or KV cache of a point at context n.
    fn allocation(&self, who: Contender, n: usize) -> u64 {
        match who {
            Contender::Rwkv(_) => self.cfg.state_bytes() as u64,
            Contender::Baseline(Kind::Softmax) => self.shape.kv_cache_bytes(n + self.decode_tokens),
            Contender::Baseline(Kind::Linear) => self.shape.linear_state_bytes(),
        }
    }

    /// An empty series for RWKV, then one for each baseline.
    fn series(&self, kinds: &[Kind]) -> Vec<Series> {
        std::iter::once(Contender::Rwkv(self.cfg.version))
            .chain(kinds.iter().map(|&k| Contender::Baseline(k)))
            .map(|who| Series {
                who,
                params: match who {
                    Contender::Rwkv(_) => self.cfg.n_params,
                    Contender::Baseline(_) => self.shape.n_params(),
                },
                points: Vec::new(),
                stopped: None,
                failed: false,
            })
            .collect()
    }
}

/// Says on stderr what is about to be compared, how, and within which budgets.
fn announce(args: &CompareArgs, settings: &Settings, subject: &Subject) {
    let (cfg, shape, kinds) = (&subject.cfg, &subject.shape, &settings.kinds);
    crate::errln!(
        "compare: RWKV {} ({} params): {} layers, width {}, FFN {}, vocab {} — {}",
        cfg.version,
        human_count(cfg.n_params),
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_ffn,
        cfg.vocab_size,
        subject.model_path.display()
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
        "compare: {} threads, {} weights, prefill chunks of {}, {} decode tokens per point, each point in a fresh process",
        subject.threads,
        args.dtype.name(),
        args.chunk,
        args.decode_tokens
    );
    let mut mem_line = format!(
        "compare: memory budget {}; state at any context: RWKV {}",
        settings
            .memory_budget
            .map(human_bytes)
            .unwrap_or_else(|| "none".into()),
        human_bytes(cfg.state_bytes() as u64),
    );
    if kinds.contains(&Kind::Linear) {
        mem_line += &format!(", linear {}", human_bytes(shape.linear_state_bytes()));
    }
    if kinds.contains(&Kind::Softmax) {
        let list: Vec<String> = settings
            .contexts
            .iter()
            .map(|&n| format!("{n}: {}", human_bytes(shape.kv_cache_bytes(n))))
            .collect();
        mem_line += &format!("; softmax KV cache (f32) at {}", list.join(", "));
    }
    crate::errln!("{mem_line}");
    crate::errln!(
        "compare: time budget {}",
        settings
            .time_budget
            .map(|t| format!(
                "{} (a model's series stops when its next point is predicted to overrun it)",
                secs(t)
            ))
            .unwrap_or_else(|| "none".into())
    );
}

/// Why a series' point at context `n` is not run: predicted to exceed the memory budget, or
/// to overrun what is left of the time budget (`started` is the start of the run).
fn over_budget(
    s: &Series,
    n: usize,
    settings: &Settings,
    subject: &Subject,
    started: Instant,
) -> Option<String> {
    let who = s.who;
    // Before any point: f32 weights and some room for the runtime.
    let first_guess = s.params * 4 + (16 << 20);
    let need = predict_peak_bytes(&s.points, |n| subject.allocation(who, n), n, first_guess);
    if let Some(budget) = settings.memory_budget {
        if need > budget {
            return Some(format!(
                "stopped before {n} tokens: predicted peak memory {} exceeds the memory budget {}",
                human_bytes(need),
                human_bytes(budget)
            ));
        }
    }
    if let (Some(budget), Some(pred)) = (settings.time_budget, predict_seconds(&s.points, n)) {
        let left = budget - started.elapsed().as_secs_f64();
        if pred > left {
            return Some(format!(
                "stopped before {n} tokens: predicted {} with {} of the time budget left",
                secs(pred),
                secs(left.max(0.0))
            ));
        }
    }
    None
}

/// Measures the points context by context, every series in turn, each in a worker process;
/// a series stops at its first point over budget or at its first failure, and all stop at
/// Ctrl-C. Each point is reported on stderr as it comes.
fn measure(
    plan: &worker::Plan,
    settings: &Settings,
    subject: &Subject,
    series: &mut [Series],
    started: Instant,
) {
    'points: for &n in &settings.contexts {
        for s in series.iter_mut() {
            if interrupted() {
                break 'points;
            }
            if s.stopped.is_some() {
                continue;
            }
            let who = s.who;
            if let Some(why) = over_budget(s, n, settings, subject, started) {
                crate::errln!("compare: {}: {why}", who.id());
                s.stopped = Some(why);
                continue;
            }
            match worker::run_point(plan, who, n) {
                Ok(p) => {
                    crate::errln!(
                        "[{:>7}] {:<10} N={:<6} prefill {} ({:.0} tok/s)  decode {:.2} ms/tok  state {}  peak RSS {}",
                        secs(started.elapsed().as_secs_f64()),
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
}

/// After Ctrl-C: every series still running says where it was stopped.
fn mark_interrupted(series: &mut [Series], contexts: &[usize]) {
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

/// The report on stdout (table or JSON), and the plot.
fn write_report(
    args: &CompareArgs,
    settings: &Settings,
    subject: &Subject,
    series: &[Series],
    elapsed: f64,
) -> Result<()> {
    let report = report::Report {
        args,
        settings,
        subject,
        elapsed,
    };
    let title = report.title();
    if args.json {
        crate::outln!("{}", report.to_json(series))?;
    } else {
        super::print_out(&report::table(&title, series, &settings.contexts))?;
    }
    if let Some(p) = &args.plot {
        plot::draw_plot(p, &title, series)
            .with_context(|| format!("cannot draw {}", p.display()))?;
        crate::errln!("compare: plot written to {}", p.display());
    }
    Ok(())
}

pub fn run(args: CompareArgs) -> Result<()> {
    if let Some(who) = args.worker.clone() {
        return worker::run_worker(&args, &who);
    }
    let started = Instant::now();
    let settings = Settings::check(&args)?;
    let subject = Subject::load(&args)?;
    announce(&args, &settings, &subject);
    let plan = worker::Plan {
        args: &args,
        exe: std::env::current_exe().context("cannot find this program's executable")?,
        model_path: subject.model_path.clone(),
        shape: subject.shape.clone(),
        threads: subject.threads,
    };
    let mut series = subject.series(&settings.kinds);

    // Ctrl-C: the running point's worker is stopped, the points measured so far are
    // reported, and the process exits 130.
    super::catch_interrupt();
    measure(&plan, &settings, &subject, &mut series, started);
    let elapsed = started.elapsed().as_secs_f64();
    let stopped_by_user = interrupted();
    if stopped_by_user {
        crate::errln!(
            "compare: interrupted after {}; reporting the points measured so far",
            secs(elapsed)
        );
        mark_interrupted(&mut series, &settings.contexts);
    }

    write_report(&args, &settings, &subject, &series, elapsed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
