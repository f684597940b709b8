//! `rwkv-cli generate`: stream text from a prompt.
//!
//! stdout carries exactly the bytes of the generated tokens, flushed as they come; everything
//! else (the stats line, errors) goes to stderr. The prompt runs through the sequence path in
//! chunks; generation runs through the recurrent path, one token at a time, with a state that
//! never grows.
//!
//! Output files (`--state-out`, `--logits-out`) are checked before anything expensive runs, and
//! written by [`rwkv_cli::output_file`] (atomically for regular files, through symbolic links, in
//! place for FIFOs and devices). After Ctrl-C neither is written: the state would cover only
//! part of the input.

use super::model_args::{InitStateArgs, Loaded, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use rwkv_cli::models;
use rwkv_cli::output_file;
use rwkv_cli::sampler::{Sampler, SamplerConfig};
use rwkv_cli::state_file;
use rwkv_cli::stats::{human_bytes, human_count, peak_rss_bytes};
use rwkv_cli::stop::StopFilter;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

const AFTER_HELP: &str = "\
Examples:
  rwkv-cli generate -p 'The Eiffel tower is in' -n 50
  rwkv-cli generate -m rwkv7-g1-0.1b -f question.txt -p 'Answer:' --temperature 0 --logprobs 5
  git diff | rwkv-cli generate --top-p 0.5 --min-p 0.05 --logit-bias 0=-inf --stats-json

The prompt is --file's bytes followed by --prompt's (so a document and then an instruction);
either alone is the whole prompt; with neither, a piped stdin is read.
Sampling: penalties, --logit-bias, then (temperature > 0) --min-p, --top-k, --top-p, a draw.
--logprobs N writes one JSON object per generated token: {\"id\", \"bytes\" (the token's bytes,
escaped), \"logprob\" (natural log, of the model's distribution before any sampling setting),
\"top_logprobs\": the N most likely tokens as [{\"id\", \"bytes\", \"logprob\"}]}.

Environment: RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model and the weight cache);
RWKV_CLI_WEIGHT_CACHE_MAX;
HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS (Hub
models); RWKV_NO_AVX512, RWKV_NO_VNNI, RWKV_NO_BF16, RWKV_NO_AMX, RWKV_NO_SIMD (force slower kernels).
Exit status: 0 success (also when the reader of stdout goes away), 1 failure (one line on
stderr), 2 usage error, 130 interrupted by Ctrl-C (the stats are still printed).";

#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; `-` reads it from stdin (as does a piped stdin when --prompt and --file are
    /// absent). A prompt read from stdin must not be empty; `--prompt ""` generates
    /// unconditionally. A prompt may begin with a dash (`-p "- item"`).
    #[arg(long, short, allow_hyphen_values = true)]
    pub prompt: Option<std::ffi::OsString>,
    /// Read the prompt from this file (`-`: stdin); with --prompt too, the file comes first
    /// and the prompt follows it.
    #[arg(long, short = 'f', value_name = "PATH")]
    pub file: Option<std::ffi::OsString>,
    /// Print the prompt's token ids on stderr before generating.
    #[arg(long)]
    pub verbose_prompt: bool,
    /// Tokens to generate (0: run the prompt only).
    #[arg(
        long,
        allow_negative_numbers = true,
        short = 'n',
        default_value_t = 200,
        value_parser = super::count
    )]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (ties to the lowest id).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.85)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0, value_parser = super::count)]
    pub top_k: usize,
    /// Min-p: drop the tokens less than P times as likely as the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f32,
    /// Add VALUE to token ID's logit (`-inf` bans it); may be repeated.
    #[arg(long, value_name = "ID=VALUE", value_parser = logit_bias_arg)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Write one JSON line per generated token: its log-probability and the N most likely
    /// alternatives' (see below); on stderr unless --logprobs-out.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = super::count)]
    pub logprobs: Option<usize>,
    /// Write the --logprobs lines to this file instead of stderr.
    #[arg(long, value_name = "FILE", requires = "logprobs")]
    pub logprobs_out: Option<String>,
    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Subtracted from the logit of every token already generated.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per (decayed) occurrence.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Stop when the output contains this (non-empty) string, not printed; may be repeated.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Write the next-token logits after the prompt as raw little-endian f32 (one per vocab
    /// entry) to this file; `-` writes them to stdout, which needs --max-tokens 0 (they would
    /// mix with the text). Not written after Ctrl-C during the prompt.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<String>,
    /// Tokens per chunk of the prompt's sequence path.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = models::DEFAULT_CHUNK,
        value_parser = super::count
    )]
    pub chunk: usize,
    /// Resume from a state saved by --state-out (the prompt, if any, continues it; an empty
    /// piped stdin is no prompt).
    #[arg(long, value_name = "FILE", conflicts_with = "init_state")]
    pub state_in: Option<String>,
    #[command(flatten)]
    pub init: InitStateArgs,
    /// Save the state after the run (prompt and generated tokens) to this file (not written
    /// after Ctrl-C).
    #[arg(long, value_name = "FILE")]
    pub state_out: Option<String>,
    /// No stats line on stderr.
    #[arg(long, short, conflicts_with = "stats_json")]
    pub quiet: bool,
    /// Print the stats as one JSON object on stderr instead of a text line.
    #[arg(long)]
    pub stats_json: bool,
}

/// `--logit-bias ID=VALUE` for clap.
pub fn logit_bias_arg(s: &str) -> std::result::Result<(u32, f32), String> {
    rwkv_cli::sampler::parse_logit_bias(s).map_err(|e| format!("{e:#}"))
}

/// The prompt's bytes: `--file`'s, then `--prompt`'s; without `--file`, [`read_prompt`].
fn gather_prompt(
    file: Option<&std::ffi::OsStr>,
    prompt: Option<&std::ffi::OsStr>,
) -> Result<Vec<u8>> {
    let Some(file) = file else {
        return read_prompt(prompt);
    };
    let stdin = |what: &str| -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {what} from stdin"))?;
        Ok(buf)
    };
    let mut bytes = if file == "-" {
        if prompt.is_some_and(|p| p == "-") {
            rwkv_cli::usage_bail!("--file - and --prompt - cannot both read stdin");
        }
        stdin("--file -")?
    } else {
        std::fs::read(file).with_context(|| format!("cannot read --file {}", file.display()))?
    };
    match prompt {
        Some(p) if p == "-" => bytes.extend(stdin("--prompt -")?),
        Some(p) => {
            use std::os::unix::ffi::OsStrExt;
            bytes.extend_from_slice(p.as_bytes())
        }
        None if bytes.is_empty() => rwkv_cli::usage_bail!(
            "the prompt file {} is empty (use --prompt \"\" to generate without a prompt)",
            file.display()
        ),
        None => {}
    }
    Ok(bytes)
}

/// One `--logprobs` line: the chosen token's log-probability under softmax(`logits`) and the
/// `top` most likely tokens' (ties to the lower id), as JSON.
fn logprobs_line(
    logits: &[f32],
    chosen: u32,
    top: usize,
    tok: &dyn rwkv_cli::tokenizer::Tokenizer,
) -> String {
    let (chosen_lp, best) = rwkv_cli::sampler::top_logprobs(logits, chosen, top);
    let entry = |id: u32, lp: f64| {
        serde_json::json!({
            "id": id,
            "bytes": super::tokenize::escape_bytes(&tok.token_bytes(id)),
            "logprob": lp,
        })
    };
    let mut v = entry(chosen, chosen_lp);
    v["top_logprobs"] = best.into_iter().map(|(id, lp)| entry(id, lp)).collect();
    v.to_string()
}

/// Reads the prompt from `--prompt`, or from stdin for `-` or when stdin is piped. A prompt
/// read from stdin must not be empty (an empty pipe is almost always a mistake upstream, as in
/// `cat missing | rwkv-cli generate`); an explicit `--prompt ""` is allowed.
fn read_prompt(prompt: Option<&std::ffi::OsStr>) -> Result<Vec<u8>> {
    let from_stdin = || -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the prompt from stdin")?;
        if buf.is_empty() {
            rwkv_cli::usage_bail!(
                "the prompt read from stdin is empty (use --prompt \"\" to generate without a prompt)"
            );
        }
        Ok(buf)
    };
    // The prompt is bytes: an argument that is not UTF-8 is tokenized byte by byte.
    use std::os::unix::ffi::OsStrExt;
    match prompt.map(|p| p.as_bytes()) {
        Some(b"-") => from_stdin(),
        Some(p) => Ok(p.to_vec()),
        None if !std::io::stdin().is_terminal() => from_stdin(),
        None => rwkv_cli::usage_bail!("no prompt: pass --prompt TEXT, or pipe the prompt on stdin"),
    }
}

/// Prompts of at least this many tokens show a progress bar while they are read (when stderr
/// is a terminal).
const LONG_PROMPT_TOKENS: usize = 4096;

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
    /// Tokens the state had already seen when loaded with --state-in (0 without it).
    pub resumed_tokens: u64,
    /// Prompt tokens actually processed (fewer than the prompt's after Ctrl-C).
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub gen_secs: f64,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
}

impl RunStats {
    /// Tokens in the context at the end: those of a resumed state, the prompt's, the generated.
    pub fn context_tokens(&self) -> u64 {
        self.resumed_tokens + self.prompt_tokens as u64 + self.generated_tokens as u64
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampler_cfg = SamplerConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        logit_bias: args.logit_bias.clone(),
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    if let Err(e) = sampler_cfg.validate() {
        rwkv_cli::usage_bail!("{e}");
    }
    if args.chunk == 0 {
        rwkv_cli::usage_bail!("--chunk must be at least 1");
    }
    if args.stop.iter().any(|s| s.is_empty()) {
        rwkv_cli::usage_bail!("--stop needs a non-empty string");
    }
    let logits_to_stdout = args.logits_out.as_deref() == Some("-");
    if logits_to_stdout && args.max_tokens != 0 {
        rwkv_cli::usage_bail!(
            "--logits-out - writes the logits to stdout, which needs --max-tokens 0 (they would mix with the generated text)"
        );
    }
    // Fail on an output that cannot be written now, not after the whole run.
    if let Some(p) = &args.state_out {
        output_file::check("--state-out", p)?;
    }
    if let Some(p) = args.logits_out.as_deref().filter(|_| !logits_to_stdout) {
        output_file::check("--logits-out", p)?;
    }
    if let Some(p) = &args.logprobs_out {
        if p == "-" {
            rwkv_cli::usage_bail!(
                "--logprobs-out - would mix the lines with the generated text (without --logprobs-out they go to stderr)"
            );
        }
        output_file::check("--logprobs-out", p)?;
    }
    // A file output that is stdout itself would be mixed into the generated text.
    if args.max_tokens != 0 {
        let files = [
            ("--state-out", args.state_out.as_deref()),
            (
                "--logits-out",
                args.logits_out.as_deref().filter(|_| !logits_to_stdout),
            ),
            ("--logprobs-out", args.logprobs_out.as_deref()),
        ];
        for (option, path) in files {
            if let Some(p) = path.filter(|p| output_file::is_stdout(Path::new(p))) {
                rwkv_cli::usage_bail!(
                    "{option} {p} is stdout, where the generated text goes (with --max-tokens 0 nothing else is written there)"
                );
            }
        }
    }
    output_file::check_distinct(&[
        ("--state-out", args.state_out.as_deref()),
        (
            "--logits-out",
            args.logits_out.as_deref().filter(|_| !logits_to_stdout),
        ),
        ("--logprobs-out", args.logprobs_out.as_deref()),
    ])?;
    // The flags' own errors before the prompt is read.
    args.model.format()?;
    let prompt = if args.state_in.is_some() && args.prompt.is_none() && args.file.is_none() {
        // Resuming a saved state needs no prompt: a piped one may be empty (a cron job's
        // `< /dev/null`), and a terminal is not read.
        if std::io::stdin().is_terminal() {
            Vec::new()
        } else {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the prompt from stdin")?;
            buf
        }
    } else {
        gather_prompt(args.file.as_deref(), args.prompt.as_deref())?
    };
    let (loaded, tok) = args.model.load()?;
    if let Err(e) = sampler_cfg.validate_vocab(loaded.config.vocab_size) {
        rwkv_cli::usage_bail!("{e}");
    }
    let model = loaded.model.as_ref();
    let cfg = &loaded.config;
    let fingerprint = if args.state_in.is_some() || args.state_out.is_some() {
        loaded.checkpoint.fingerprint()?
    } else {
        0
    };

    // Where we start: a saved state, or a fresh one.
    let (mut state, mut logits, resumed_tokens) = match &args.state_in {
        Some(p) => {
            let saved = state_file::load(Path::new(p), cfg, fingerprint)?;
            (saved.state, Some(saved.logits), saved.tokens)
        }
        None => (args.init.start(model)?, None, 0),
    };
    let mut seen = resumed_tokens;
    let mut tokens = tok.encode(&prompt)?;
    if tokens.is_empty() && logits.is_none() {
        // An empty prompt starts a new document: RWKV models are trained with documents
        // separated by the end-of-text token.
        tokens.push(tok.eot_token().unwrap_or(0));
    }
    if args.verbose_prompt {
        let ids: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        crate::errln!("prompt: {} tokens: {}", tokens.len(), ids.join(" "));
    }
    let mut logprob_lines = String::new();

    // From here on, Ctrl-C stops the run at the next chunk or token and still reports it.
    // Ctrl-C: generation stops at the next token and still reports its stats.
    super::catch_interrupt();

    // The prompt: sequence path, chunk by chunk (a long one shows a progress bar on a
    // terminal's stderr; hidden otherwise).
    let t0 = Instant::now();
    let mut prompt_done = 0;
    let bar = if tokens.len() >= LONG_PROMPT_TOKENS {
        super::token_progress_bar(tokens.len())
    } else {
        indicatif::ProgressBar::hidden()
    };
    for c in tokens.chunks(args.chunk) {
        if super::interrupted() {
            break;
        }
        logits = Some(model.forward_seq(c, &mut state, false)?);
        seen += c.len() as u64;
        prompt_done += c.len();
        bar.set_position(prompt_done as u64);
    }
    bar.finish_and_clear();
    let prompt_secs = t0.elapsed().as_secs_f64();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut generated = 0;
    let mut gen_secs = 0.0;
    // Ctrl-C during the prompt: the state and the logits cover only part of it.
    let prompt_interrupted = super::interrupted();
    // Whether the run counts as interrupted, decided once (before --state-out would be
    // written): a Ctrl-C after that changes nothing.
    let mut interrupted = prompt_interrupted;
    if let (false, Some(mut logits)) = (prompt_interrupted, logits) {
        rwkv_cli::models::check_logits(&logits)?;
        if let Some(p) = &args.logits_out {
            let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
            if logits_to_stdout {
                emit(&mut out, &bytes)?;
            } else {
                output_file::write(Path::new(p), &bytes).context("--logits-out")?;
            }
        }

        // Generation: recurrent path, one token at a time.
        let t1 = Instant::now();
        let mut sampler = Sampler::new(sampler_cfg);
        // Like ChatRWKV, only generated tokens count towards the penalties, not the prompt.
        let mut filter = StopFilter::new(args.stop.iter().map(|s| s.as_bytes().to_vec()).collect());
        let mut open = true;
        while generated < args.max_tokens && !super::interrupted() {
            let next = sampler.sample(&logits);
            if Some(next) == tok.eot_token() {
                break;
            }
            if let Some(n) = args.logprobs {
                let line = logprobs_line(&logits, next, n, tok.as_ref());
                if args.logprobs_out.is_some() {
                    logprob_lines.push_str(&line);
                    logprob_lines.push('\n');
                } else {
                    crate::errln!("{line}");
                }
            }
            sampler.accept(next);
            generated += 1;
            let (text, stopped) = filter.push(&tok.token_bytes(next));
            open = emit(&mut out, &text)?;
            // The state always sees every generated token when it is saved afterwards.
            if generated < args.max_tokens && !stopped && open || args.state_out.is_some() {
                logits = model.step(next, &mut state)?;
                rwkv_cli::models::check_logits(&logits)?;
                seen += 1;
            }
            if stopped || !open {
                break;
            }
        }
        if open {
            let rest = filter.take_pending();
            emit(&mut out, &rest)?;
        }
        gen_secs = t1.elapsed().as_secs_f64();

        interrupted = super::interrupted();
        if let (Some(p), false) = (&args.state_out, interrupted) {
            let saved = state_file::SavedState {
                state,
                logits,
                tokens: seen,
            };
            state_file::save(Path::new(p), cfg, fingerprint, &saved).context("--state-out")?;
        }
    }
    drop(out);
    if let Some(p) = &args.logprobs_out {
        // Written after Ctrl-C too: each line stands on its own.
        output_file::write(Path::new(p), logprob_lines.as_bytes()).context("--logprobs-out")?;
    }

    if interrupted {
        let mut skipped = Vec::new();
        if args.state_out.is_some() {
            skipped.push("--state-out");
        }
        if prompt_interrupted && args.logits_out.is_some() {
            skipped.push("--logits-out");
        }
        if !skipped.is_empty() {
            crate::errln!("interrupted: {} not written", skipped.join(" and "));
        }
    }
    let stats = RunStats {
        resumed_tokens,
        prompt_tokens: prompt_done,
        prompt_secs,
        generated_tokens: generated,
        gen_secs,
        interrupted,
    };
    if !args.quiet {
        print_stats(&loaded, &stats, args.stats_json);
    }
    if interrupted {
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

fn print_stats(loaded: &Loaded, s: &RunStats, json: bool) {
    let (c, dtype) = (&loaded.config, loaded.format);
    let context = s.context_tokens();
    let kv = c.kv_cache_bytes(context as usize, models::KV_BYTES_PER_ELEMENT);
    let rss = peak_rss_bytes();
    let prompt_tps = per_sec(s.prompt_tokens, s.prompt_secs);
    let gen_tps = per_sec(s.generated_tokens, s.gen_secs);
    if json {
        let v = serde_json::json!({
            "model": loaded.json(),
            "state_bytes": c.state_bytes(),
            "resumed_tokens": s.resumed_tokens,
            "context_tokens": context,
            "kv_cache_bytes": kv,
            "kv_cache_dtype": "f32",
            "prompt_tokens": s.prompt_tokens,
            "prompt_seconds": s.prompt_secs,
            "prompt_tokens_per_second": prompt_tps,
            "generated_tokens": s.generated_tokens,
            "generate_seconds": s.gen_secs,
            "generate_tokens_per_second": gen_tps,
            "peak_rss_bytes": rss,
            "interrupted": s.interrupted,
        });
        crate::errln!("{v}");
    } else {
        let resumed = if s.resumed_tokens > 0 {
            format!(", {} of them from --state-in", s.resumed_tokens)
        } else {
            String::new()
        };
        // On a terminal the line starts below the generated text; in a file it is a line.
        let lead = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            "\n"
        } else {
            ""
        };
        crate::errln!(
            "{lead}[RWKV {} {} params, {}] state {} (a transformer's f32 KV cache at {} tokens{}: {}) | prompt {} tok at {:.1} tok/s | generated {} tok at {:.1} tok/s | peak RSS {}",
            c.version,
            human_count(c.n_params),
            dtype.name(),
            human_bytes(c.state_bytes() as u64),
            context,
            resumed,
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

    #[test]
    fn logprobs_line_has_the_chosen_token_and_the_best_alternatives() {
        let tok = rwkv_cli::tokenizer::load(rwkv_cli::tokenizer::TokenizerKind::Bytes).unwrap();
        let logits = [1.0f32, 3.0, 3.0, 0.0, f32::NAN, 2.0];
        let v: serde_json::Value =
            serde_json::from_str(&logprobs_line(&logits, 5, 3, tok.as_ref())).unwrap();
        let z: f64 = [1.0f64, 3.0, 3.0, 0.0, 2.0].iter().map(|x| x.exp()).sum();
        let lp = |x: f64| x - z.ln();
        assert_eq!(v["id"], 5);
        assert_eq!(v["bytes"], "\\x05");
        assert!((v["logprob"].as_f64().unwrap() - lp(2.0)).abs() < 1e-12);
        // Best first, ties to the lower id; NaN never ranks.
        let top: Vec<u64> = v["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        assert_eq!(top, [1, 2, 5]);
        assert!((v["top_logprobs"][0]["logprob"].as_f64().unwrap() - lp(3.0)).abs() < 1e-12);
        // N larger than the vocabulary: every token; N = 0: none.
        let v: serde_json::Value =
            serde_json::from_str(&logprobs_line(&logits, 1, 99, tok.as_ref())).unwrap();
        assert_eq!(v["top_logprobs"].as_array().unwrap().len(), 6);
        let v: serde_json::Value =
            serde_json::from_str(&logprobs_line(&logits, 1, 0, tok.as_ref())).unwrap();
        assert_eq!(v["top_logprobs"].as_array().unwrap().len(), 0);
    }
}
