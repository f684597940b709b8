//! The worker: one point measured in a fresh process (this same binary, run as
//! `compare --worker ...`), so that its peak RSS is its own; and the parent's side, which
//! starts it, stops it on Ctrl-C and reads its one line of JSON.

use super::{CompareArgs, Contender, Point};
use anyhow::{bail, Context, Result};
use rwkv_cli::baselines::{self, Kind, Shape, Transformer};
use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::models::{self, LoadOptions};
use rwkv_cli::stats::{current_rss_bytes, peak_rss_bytes};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::interrupted;

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
pub(super) fn run_worker(args: &CompareArgs, who: &str) -> Result<()> {
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
            let path = crate::cli::model_args::resolve_model(args.model.as_deref())?;
            let cache = args.weight_cache.settings()?;
            let ckpt = Checkpoint::open(&path)?;
            let (model, report) =
                models::load_checkpoint_cached(&ckpt, LoadOptions { dtype: args.dtype }, &cache)?;
            for w in &report.warnings {
                crate::errln!("warning: {w}");
            }
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

impl Point {
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

/// Settings shared by every point.
pub(super) struct Plan<'a> {
    pub args: &'a CompareArgs,
    pub exe: PathBuf,
    pub model_path: PathBuf,
    pub shape: Shape,
    pub threads: usize,
}

/// Runs one point in a child process.
pub(super) fn run_point(plan: &Plan, who: Contender, n: usize) -> Result<Point> {
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
        Contender::Rwkv(_) => cmd
            .arg("--model")
            .arg(&plan.model_path)
            .args(a.weight_cache.to_args()),
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
        crate::cli::note_interrupt();
    }
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_draws_the_same_tokens_one_at_a_time() {
        let mut next = baselines::token_source(97, 42);
        let streamed: Vec<u32> = (0..1000).map(|_| next()).collect();
        assert_eq!(streamed, baselines::token_stream(1000, 97, 42));
    }
}
