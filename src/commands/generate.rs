//! `rwkv-cli generate`: stream text from a prompt.
//!
//! stdout carries exactly the bytes of the generated tokens, flushed as they come; everything
//! else (the stats line, errors) goes to stderr. The prompt runs through the sequence path in
//! chunks; generation runs through the recurrent path, one token at a time, with a state that
//! never grows.

use crate::models::{self, LoadOptions, Model};
use crate::ops::ComputeDType;
use crate::sampler::{Sampler, SamplerConfig};
use crate::state_file;
use crate::stats::{human_bytes, human_count, peak_rss_bytes};
use crate::tokenizer::{self, TokenizerKind};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Checkpoint file (.pth or .safetensors).
    #[arg(long, short)]
    pub model: Option<String>,
    /// The prompt; `-` reads it from stdin (as does a piped stdin when --prompt is absent).
    #[arg(long, short)]
    pub prompt: Option<std::ffi::OsString>,
    /// Tokens to generate (0: run the prompt only).
    #[arg(long, short = 'n', default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (ties to the lowest id).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = 0.85)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Subtracted from the logit of every token already generated.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per (decayed) occurrence.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Stop when the output contains this string (not printed); may be repeated.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Write the next-token logits after the prompt as raw little-endian f32 (one per vocab entry).
    #[arg(long)]
    pub logits_out: Option<String>,
    /// Compute dtype of the weight matrices: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDType,
    /// Quantize the weight matrices at load time: q8_0 or q4_0 (replaces --dtype for them).
    #[arg(long)]
    pub quant: Option<ComputeDType>,
    /// Tokenizer (default: chosen from the vocabulary size): world, 20b, bytes.
    #[arg(long)]
    pub tokenizer: Option<TokenizerKind>,
    /// Tokens per chunk of the prompt's sequence path.
    #[arg(long, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Resume from a state saved by --state-out (the prompt, if any, continues it).
    #[arg(long)]
    pub state_in: Option<String>,
    /// Save the state after the run (prompt and generated tokens) to this file.
    #[arg(long)]
    pub state_out: Option<String>,
    /// No stats line on stderr.
    #[arg(long, short, conflicts_with = "stats_json")]
    pub quiet: bool,
    /// Print the stats as one JSON object on stderr instead of a text line.
    #[arg(long)]
    pub stats_json: bool,
}

/// Reads the prompt from `--prompt`, or from stdin for `-` or when stdin is piped.
fn read_prompt(prompt: Option<&std::ffi::OsStr>) -> Result<Vec<u8>> {
    let from_stdin = || -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the prompt from stdin")?;
        Ok(buf)
    };
    // The prompt is bytes: an argument that is not UTF-8 is tokenized byte by byte.
    use std::os::unix::ffi::OsStrExt;
    match prompt.map(|p| p.as_bytes()) {
        Some(b"-") => from_stdin(),
        Some(p) => Ok(p.to_vec()),
        None if !std::io::stdin().is_terminal() => from_stdin(),
        None => crate::usage_bail!("no prompt: pass --prompt TEXT, or pipe the prompt on stdin"),
    }
}

/// Writes a file atomically: a temporary file beside it, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Holds back output that might be the start of a stop string.
struct StopFilter {
    stops: Vec<Vec<u8>>,
    pending: Vec<u8>,
}

impl StopFilter {
    /// Adds bytes; returns what can be printed now and whether a stop string was reached.
    fn push(&mut self, bytes: &[u8]) -> (Vec<u8>, bool) {
        self.pending.extend_from_slice(bytes);
        let found = self
            .stops
            .iter()
            .filter_map(|s| find(&self.pending, s))
            .min();
        if let Some(at) = found {
            let out = self.pending[..at].to_vec();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len().min(self.pending.len() + 1))
                    .rev()
                    .find(|&n| self.pending.ends_with(&s[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let out = self.pending.drain(..self.pending.len() - keep).collect();
        (out, false)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes to stdout; `Ok(false)` when the reader has gone away (closed pipe).
fn emit(out: &mut impl Write, bytes: &[u8]) -> Result<bool> {
    if bytes.is_empty() {
        return Ok(true);
    }
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// What one run measured, for the stats line.
pub struct RunStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub gen_secs: f64,
}

/// Set by Ctrl-C: generation stops at the next token and still reports its stats.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampler_cfg = SamplerConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    if let Err(e) = sampler_cfg.validate() {
        crate::usage_bail!("{e}");
    }
    if args.chunk == 0 {
        crate::usage_bail!("--chunk must be at least 1");
    }
    let prompt =
        if args.state_in.is_some() && args.prompt.is_none() && std::io::stdin().is_terminal() {
            Vec::new() // resuming a saved state needs no prompt
        } else {
            read_prompt(args.prompt.as_deref())?
        };
    let path = super::resolve_model(args.model.as_deref())?;
    let ckpt = crate::checkpoint::Checkpoint::open(&path)?;
    let dtype = crate::ops::effective_dtype(args.dtype, args.quant)
        .map_err(|e| crate::commands::UsageError(format!("{e:#}")))?;
    let model = models::load_checkpoint(&ckpt, LoadOptions { dtype })?;
    let cfg = model.config().clone();
    let kind = match args.tokenizer {
        Some(k) => k,
        None => tokenizer::kind_for_vocab(cfg.vocab_size)?,
    };
    let tok = tokenizer::load(kind)?;
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "the {} tokenizer has {} tokens but the model only {}",
            tok.name(),
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    let fingerprint = if args.state_in.is_some() || args.state_out.is_some() {
        ckpt.fingerprint()?
    } else {
        0
    };
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));

    // Where we start: a saved state, or a fresh one.
    let (mut state, mut logits, mut seen) = match &args.state_in {
        Some(p) => {
            let saved = state_file::load(Path::new(p), &cfg, fingerprint)?;
            (saved.state, Some(saved.logits), saved.tokens)
        }
        None => (model.new_state(), None, 0),
    };
    let mut tokens = tok.encode(&prompt)?;
    if tokens.is_empty() && logits.is_none() {
        // An empty prompt starts a new document: RWKV models are trained with documents
        // separated by the end-of-text token.
        tokens.push(tok.eot_token().unwrap_or(0));
    }

    // The prompt: sequence path, chunk by chunk.
    let t0 = Instant::now();
    for c in tokens.chunks(args.chunk) {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        logits = Some(model.forward_seq(c, &mut state, false)?);
        seen += c.len() as u64;
    }
    let prompt_secs = t0.elapsed().as_secs_f64();
    let mut logits = match logits {
        Some(l) => l,
        None => bail!("interrupted before the prompt was read"),
    };
    if let Some(p) = &args.logits_out {
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_atomic(Path::new(p), &bytes)?;
    }

    // Generation: recurrent path, one token at a time.
    let mut sampler = Sampler::new(sampler_cfg);
    // Like ChatRWKV, only generated tokens count towards the penalties, not the prompt.
    let mut filter = StopFilter {
        stops: args.stop.iter().map(|s| s.as_bytes().to_vec()).collect(),
        pending: Vec::new(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let t1 = Instant::now();
    let mut generated = 0;
    let mut open = true;
    while generated < args.max_tokens && !INTERRUPTED.load(Ordering::SeqCst) {
        let next = sampler.sample(&logits);
        if Some(next) == tok.eot_token() {
            break;
        }
        sampler.accept(next);
        generated += 1;
        let (text, stopped) = filter.push(&tok.token_bytes(next));
        open = emit(&mut out, &text)?;
        // The state always sees every generated token when it is saved afterwards.
        if generated < args.max_tokens && !stopped && open || args.state_out.is_some() {
            logits = model.step(next, &mut state)?;
            seen += 1;
        }
        if stopped || !open {
            break;
        }
    }
    if open {
        let rest = std::mem::take(&mut filter.pending);
        emit(&mut out, &rest)?;
    }
    let gen_secs = t1.elapsed().as_secs_f64();
    drop(out);

    if let Some(p) = &args.state_out {
        let saved = state_file::SavedState {
            state,
            logits,
            tokens: seen,
        };
        state_file::save(Path::new(p), &cfg, fingerprint, &saved)?;
    }
    let stats = RunStats {
        prompt_tokens: tokens.len(),
        prompt_secs,
        generated_tokens: generated,
        gen_secs,
    };
    if !args.quiet {
        print_stats(model.as_ref(), &ckpt, dtype, &stats, args.stats_json);
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        // Like a shell: 128 + SIGINT.
        std::process::exit(130);
    }
    Ok(())
}

fn per_sec(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn print_stats(
    model: &dyn Model,
    ckpt: &crate::checkpoint::Checkpoint,
    dtype: ComputeDType,
    s: &RunStats,
    json: bool,
) {
    let c = model.config();
    let context = s.prompt_tokens + s.generated_tokens;
    let kv = c.kv_cache_bytes(context, dtype.size_in_bytes());
    let rss = peak_rss_bytes();
    let prompt_tps = per_sec(s.prompt_tokens, s.prompt_secs);
    let gen_tps = per_sec(s.generated_tokens, s.gen_secs);
    if json {
        let v = serde_json::json!({
            "version": c.version.name(),
            "params": c.n_params,
            "layers": c.n_layer,
            "width": c.n_embd,
            "dtype": dtype.name(),
            "file_bytes": ckpt.file_size,
            "state_bytes": c.state_bytes(),
            "context_tokens": context,
            "kv_cache_bytes_equivalent": kv,
            "prompt_tokens": s.prompt_tokens,
            "prompt_seconds": s.prompt_secs,
            "prompt_tokens_per_second": prompt_tps,
            "generated_tokens": s.generated_tokens,
            "generate_seconds": s.gen_secs,
            "generate_tokens_per_second": gen_tps,
            "peak_rss_bytes": rss,
        });
        eprintln!("{v}");
    } else {
        eprintln!(
            "\n[RWKV {} {} params, {}] state {} (a transformer's KV cache at {} tokens: {}) | prompt {} tok at {:.1} tok/s | generated {} tok at {:.1} tok/s | peak RSS {}",
            c.version,
            human_count(c.n_params),
            dtype.name(),
            human_bytes(c.state_bytes() as u64),
            context,
            human_bytes(kv),
            s.prompt_tokens,
            prompt_tps,
            s.generated_tokens,
            gen_tps,
            rss.map(human_bytes).unwrap_or_else(|| "n/a".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_filter(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter {
            stops: stops.iter().map(|s| s.as_bytes().to_vec()).collect(),
            pending: Vec::new(),
        };
        let mut out = Vec::new();
        for p in pieces {
            let (o, stop) = f.push(p.as_bytes());
            out.extend(o);
            if stop {
                return (String::from_utf8(out).unwrap(), true);
            }
        }
        out.extend(f.pending);
        (String::from_utf8(out).unwrap(), false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_not_printed() {
        assert_eq!(
            run_filter(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run_filter(&["User:"], &["a Us", "er: b"]),
            ("a ".into(), true)
        );
    }

    #[test]
    fn partial_match_that_diverges_is_printed() {
        assert_eq!(
            run_filter(&["STOP"], &["ST", "ART"]),
            ("START".into(), false)
        );
        assert_eq!(run_filter(&[], &["abc"]), ("abc".into(), false));
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("rwkv-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
