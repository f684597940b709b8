//! `rwkv-cli bench --context N`: long-context throughput and memory, measured.
//!
//! Pushes N tokens (the text's tokens repeated, made chunk by chunk so that nothing grows with
//! N) through the sequence path in chunks, reporting throughput and resident memory per
//! segment (each tenth of N by default) so that a flat line is visible, then
//! decodes a few tokens at depth 0 and at depth N. The state's size is printed next to the
//! KV cache a softmax transformer of the same depth and width would need at that context, in
//! f32 like the state, whatever the weights' format.
//!
//! Decode is bound by memory bandwidth: every generated token reads every weight matrix once.
//! So the report also gives the bytes of weights one decode step reads (the embedding row
//! aside), the bandwidth that makes at the measured decode speed, and the machine's memory
//! bandwidth measured in the same run by a short STREAM-style read and copy over buffers much
//! larger than the caches — the fraction of the physical limit is printed, not guessed.
//! `--decode` runs only that part.

use super::model_args::{model_json, Loaded, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use rwkv_cli::checkpoint::Checkpoint;
use rwkv_cli::error::UsageError;
use rwkv_cli::eval::Score;
use rwkv_cli::format::Format;
use rwkv_cli::models::{self, held_format, Model};
use rwkv_cli::stats::{current_rss_bytes, human_bytes, human_count, parse_count, peak_rss_bytes};
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens to push through the model: 100000, 100k, 1M.
    #[arg(long, default_value = "100k")]
    pub context: String,
    /// Text to feed (tokenized, repeated if shorter than the context); also reports bits per byte.
    #[arg(long)]
    pub text: Option<String>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Number of segments the run is reported in.
    #[arg(long, allow_negative_numbers = true, value_parser = super::count, default_value_t = 10)]
    pub segments: usize,
    /// Tokens per chunk of the sequence path.
    #[arg(long, allow_negative_numbers = true, value_parser = super::count, default_value_t = models::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Tokens decoded (one at a time) at depth 0 and at depth N (at least 1).
    #[arg(long, allow_negative_numbers = true, value_parser = super::count, default_value_t = 16)]
    pub decode_tokens: usize,
    /// Measure decode only: ms/token over --decode-tokens steps, the weight traffic it makes,
    /// and the machine's memory bandwidth (no long-context run, so none of --context, --text,
    /// --segments, --chunk, --tokenizer).
    #[arg(long, conflicts_with_all = ["context", "text", "segments", "chunk", "tokenizer"])]
    pub decode: bool,
}

/// Size of the buffer the memory-bandwidth probe reads: eight times a 32 MiB L3. At four
/// times, a victim L3 still served part of the reads (best passes 32–42 GB/s on a machine
/// whose decode streams 36 GB/s); from eight times up the best pass is stable within 2%.
const BANDWIDTH_PROBE_BYTES: usize = 256 << 20;

/// The last-level cache assumed when the system does not say: 32 MiB, an L3 of this project's
/// machine.
const DEFAULT_LLC_BYTES: u64 = 32 << 20;

/// Size of the largest cache of CPU 0 (Linux sysfs), or [`DEFAULT_LLC_BYTES`].
pub fn last_level_cache_bytes() -> u64 {
    let parse = |s: &str| -> Option<u64> {
        let s = s.trim();
        let (num, scale) = match s.chars().last()? {
            'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
            'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
            'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
            _ => (s, 1),
        };
        Some(num.trim().parse::<u64>().ok()? * scale)
    };
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse(&std::fs::read_to_string(e.path().join("size")).ok()?))
        .max()
        .filter(|&b| b > 0)
        .unwrap_or(DEFAULT_LLC_BYTES)
}

/// Bytes of weights one decode step reads: every tensor but the embedding (of which a step
/// reads one row), the weight matrices in the packed layout of `dtype`, one row of each
/// per-token table (DeepEmbed's `s_emb`), the low-rank (LoRA) matrices in its low-rank
/// format, the rest (mixes, norms) in f32 as the models keep them.
pub fn decode_weight_bytes(ckpt: &Checkpoint, dtype: Format) -> Result<u64> {
    let low_rank = rwkv_cli::models::detect_version(ckpt)?.info().low_rank;
    Ok(ckpt
        .tensors()
        .iter()
        .filter(|(name, _)| name.as_str() != "emb.weight")
        .map(|(name, meta)| {
            let dims: Vec<usize> = meta.shape.iter().copied().filter(|&d| d != 1).collect();
            let held = |format| held_format(ckpt, format, name);
            if name.ends_with(".s_emb.weight") && dims.len() == 2 {
                held(dtype).traits().rows.row_bytes(dims[1]) as u64
            } else if name.ends_with(".weight") && dims.len() == 2 {
                held(dtype).matrix_bytes(dims[0], dims[1]) as u64
            } else if low_rank.iter().any(|s| name.ends_with(s)) {
                // Kept (out, in) = (last dimension, the others).
                let out = *dims.last().unwrap_or(&1);
                let format = held(dtype.traits().low_rank);
                format.matrix_bytes(out, meta.numel() / out.max(1)) as u64
            } else {
                4 * meta.numel() as u64
            }
        })
        .sum())
}

/// One segment of the run.
#[derive(Clone, Debug)]
pub struct Segment {
    pub start: usize,
    pub end: usize,
    pub seconds: f64,
    pub rss_bytes: Option<u64>,
}

impl Segment {
    pub fn tokens_per_second(&self) -> f64 {
        (self.end - self.start) as f64 / self.seconds.max(1e-9)
    }
}

/// Splits `n` tokens into `k` segments of (nearly) equal length: the boundaries.
pub fn segment_bounds(n: usize, k: usize) -> Vec<(usize, usize)> {
    let k = k.clamp(1, n.max(1));
    (0..k)
        .map(|i| (i * n / k, (i + 1) * n / k))
        .filter(|(a, b)| b > a)
        .collect()
}

/// A deterministic English-like text: a fixed word list drawn by a fixed LCG. Used when no
/// `--text` is given, so that runs are comparable across machines.
pub fn builtin_text(min_bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be",
        "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have",
        "an", "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "time",
        "river", "house", "light", "morning", "small", "old", "world", "long", "story", "water",
        "before", "after", "under", "people", "could", "would", "again", "never", "always",
    ];
    let mut s = String::with_capacity(min_bytes + 16);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut n = 0;
    while s.len() < min_bytes {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(x >> 33) as usize % WORDS.len()];
        n += 1;
        if n % 14 == 0 {
            s.push_str(w);
            s.push_str(".\n");
        } else {
            s.push_str(w);
            s.push(' ');
        }
    }
    s
}

/// Positions `start..end` of the token stream (the text's tokens repeated without end) into
/// `buf`: the stream is made chunk by chunk, never held whole, so memory does not grow with
/// the context.
fn stream_chunk(tokens: &[u32], start: usize, end: usize, buf: &mut Vec<u32>) {
    buf.clear();
    let len = tokens.len();
    buf.extend((start..end).map(|p| tokens[p % len]));
}

/// Median milliseconds per token of `k` greedy recurrent steps from `state`.
fn decode_ms(model: &dyn Model, state: &mut models::State, first: u32, k: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(k);
    let mut tok = first;
    for _ in 0..k.max(1) {
        let t = Instant::now();
        let logits = model.step(tok, state)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        tok = rwkv_cli::sampler::argmax(&logits);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run(args: BenchArgs) -> Result<()> {
    let n = parse_count(&args.context).map_err(|e| UsageError(format!("--context: {e}")))? as usize;
    if n == 0 {
        rwkv_cli::usage_bail!("--context must be at least 1");
    }
    if args.chunk == 0 || args.segments == 0 {
        rwkv_cli::usage_bail!("--chunk and --segments must be at least 1");
    }
    if args.decode_tokens == 0 {
        rwkv_cli::usage_bail!("--decode-tokens must be at least 1");
    }
    args.model.format()?;
    // The time the user waits: from here to the last line.
    let started = Instant::now();
    let path = args.model.resolve()?;
    // What a decode step reads, from the checkpoint's index (the weights are not read).
    let weight_bytes = {
        let ckpt = rwkv_cli::checkpoint::Checkpoint::open(&path)?;
        decode_weight_bytes(&ckpt, args.model.format_for(&ckpt)?)?
    };
    let cache_bytes = last_level_cache_bytes();
    // Before the model is loaded, so that the probes' buffers never add to the model's peak
    // (the allocator reuses what they leave for the weights).
    let probe_start = Instant::now();
    let bandwidth = rwkv_cli::kernels::measure_bandwidth(BANDWIDTH_PROBE_BYTES, 10);
    let mut probe_secs = probe_start.elapsed().as_secs_f64();
    // The process's own peak so far (the probes' buffers): reported too, labelled.
    let probe_peak = peak_rss_bytes();
    // Their buffers are freed: from here the peak is the model's.
    rwkv_cli::stats::reset_peak_rss();
    let load_start = Instant::now();
    let Loaded {
        path,
        checkpoint,
        model,
        config: cfg,
        format: dtype,
        weight_cache,
    } = args.model.load_from(path)?;
    drop(checkpoint);
    let load_secs = load_start.elapsed().as_secs_f64();
    // What a shell loop pays before its first token: process start to a loaded model, less the
    // probe (only bench runs it).
    let ready_secs = super::seconds_since_start() - probe_secs;
    // The bandwidth is probed again after the decode steps (the peak RSS is read first): a
    // shared machine's bandwidth moves with its neighbours' work, and the best of a probe before
    // and one after is the fairer ceiling for the steps between them.
    let mut decode = |ms: f64| {
        let t = Instant::now();
        let again = rwkv_cli::kernels::measure_bandwidth(BANDWIDTH_PROBE_BYTES, 10);
        // The bandwidth at the weights' own size, caches included: what a decode step can
        // really draw on when the weights fit (or half fit) in the caches, measured rather than
        // inferred from the reported L3. Only below the memory probe's size (larger is memory
        // anyway). Last, after the peak RSS is read: small buffers stay in the kernels' arena.
        let working_set = (weight_bytes < BANDWIDTH_PROBE_BYTES as u64).then(|| {
            rwkv_cli::kernels::measure_bandwidth((weight_bytes as usize).max(1 << 20), 20).read
        });
        probe_secs += t.elapsed().as_secs_f64();
        DecodeReport {
            ms_per_token: ms,
            ready_seconds: ready_secs,
            weight_cache: weight_cache.name(),
            weight_bytes,
            read_bandwidth: bandwidth.read.max(again.read),
            copy_bandwidth: bandwidth.copy.max(again.copy),
            threads: bandwidth.threads,
            cache_bytes,
            working_set_read_bandwidth: working_set,
        }
    };
    if args.decode {
        let ms = decode_ms(
            model.as_ref(),
            &mut model.new_state(),
            0,
            args.decode_tokens,
        )?;
        let model_peak = peak_rss_bytes();
        let d = decode(ms);
        let peak_rss = process_peak(probe_peak, model_peak);
        if args.json {
            crate::outln!(
                "{}",
                serde_json::json!({
                    "model": model_json(&path, &cfg, dtype),
                    "weight_cache": d.weight_cache,
                    "decode_tokens": args.decode_tokens,
                    "decode": d.to_json(),
                    "peak_rss_bytes": peak_rss,
                    "model_peak_rss_bytes": model_peak,
                    "load_seconds": load_secs,
                    "total_seconds": started.elapsed().as_secs_f64(),
                })
            )?;
        } else {
            crate::outln!(
                "RWKV {} {} params, {} layers × {}, {} — decode, {} tokens",
                cfg.version.name(),
                human_count(cfg.n_params),
                cfg.n_layer,
                cfg.n_embd,
                dtype.name(),
                args.decode_tokens
            )?;
            super::print_out(&d.to_table())?;
        }
        return Ok(());
    }
    let tok = args.model.tokenizer(&cfg)?;
    let text = match &args.text {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read --text {p}"))?,
        None => builtin_text(64 * 1024).into_bytes(),
    };
    let text_tokens = tok.encode(&text)?;
    if text_tokens.is_empty() {
        rwkv_cli::usage_bail!("--text is empty");
    }

    let bar = super::token_progress_bar(n);

    let decode_depth0 = decode_ms(
        model.as_ref(),
        &mut model.new_state(),
        text_tokens[0],
        args.decode_tokens,
    )?;

    // With --text, score every prediction: bits for token t+1 given tokens ..=t.
    let scoring = args.text.is_some();
    let mut score = Score::default();

    // Ctrl-C: the rows measured so far, then exit 130.
    super::catch_interrupt();
    // Rows are printed as each segment ends (text mode), not all at the end.
    let stream = !args.json;
    if stream {
        super::print_out(&Report::header(&cfg, dtype, n, args.chunk))?;
    }
    let mut state = model.new_state();
    let mut segments = Vec::new();
    let mut last_logits = Vec::new();
    let mut chunk = Vec::with_capacity(args.chunk.min(n));
    let run_start = Instant::now();
    let mut done = 0;
    'segments: for (a, b) in segment_bounds(n, args.segments) {
        let t = Instant::now();
        for start in (a..b).step_by(args.chunk) {
            if super::interrupted() {
                break 'segments;
            }
            let end = (start + args.chunk).min(b);
            stream_chunk(&text_tokens, start, end, &mut chunk);
            let logits = model.forward_seq(&chunk, &mut state, scoring)?;
            if scoring {
                let v = cfg.vocab_size;
                for (i, row) in logits.chunks_exact(v).enumerate() {
                    // Only the text's first pass counts: repeats would be easy to predict.
                    let pos = start + i + 1;
                    if pos < text_tokens.len().min(n) {
                        score.add(row, text_tokens[pos], tok.as_ref());
                    }
                }
                last_logits = logits[logits.len() - v..].to_vec();
            } else {
                last_logits = logits;
            }
            bar.set_position(end as u64);
        }
        let seg = Segment {
            start: a,
            end: b,
            seconds: t.elapsed().as_secs_f64(),
            rss_bytes: current_rss_bytes(),
        };
        if stream {
            let row = Report::row(&seg);
            bar.suspend(|| super::print_out(&row))?;
        }
        segments.push(seg);
        done = b;
    }
    let interrupted = super::interrupted();
    let prefill_secs = run_start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let decode_depth_n = if interrupted || last_logits.is_empty() {
        None
    } else {
        let next = rwkv_cli::sampler::argmax(&last_logits);
        Some(decode_ms(
            model.as_ref(),
            &mut state,
            next,
            args.decode_tokens,
        )?)
    };

    // f32, the precision of the RWKV state, whatever the weights' format: like for like (the
    // figure generate prints).
    let bytes_per_el = rwkv_cli::models::KV_BYTES_PER_ELEMENT;
    let model_peak = peak_rss_bytes();
    let decode_report = decode(decode_depth0);
    let mut report = Report {
        path,
        cfg: cfg.clone(),
        dtype,
        context: done,
        chunk: args.chunk,
        segments,
        state_bytes: state.size_bytes(),
        kv_cache_bytes: cfg.kv_cache_bytes(done, bytes_per_el),
        kv_bytes_per_element: bytes_per_el,
        decode_ms_depth0: decode_depth0,
        decode_ms_depth_n: decode_depth_n,
        prefill_seconds: prefill_secs,
        load_seconds: load_secs,
        total_seconds: 0.0,
        probe_seconds: 0.0,
        peak_rss_bytes: process_peak(probe_peak, model_peak),
        model_peak_rss_bytes: model_peak,
        bits_per_byte: (scoring && score.bytes > 0).then(|| score.bits_per_byte()),
        decode: decode_report,
        interrupted,
    };
    report.probe_seconds = probe_secs;
    report.total_seconds = started.elapsed().as_secs_f64();
    if args.json {
        crate::outln!("{}", report.to_json())?;
    } else {
        super::print_out(&report.summary())?;
    }
    if interrupted {
        // Like a shell: 128 + SIGINT.
        std::process::exit(130);
    }
    Ok(())
}

/// Everything `bench` measured.
pub struct Report {
    /// The checkpoint that ran, its configuration and the weights' format.
    pub path: std::path::PathBuf,
    pub cfg: models::Config,
    pub dtype: Format,
    pub context: usize,
    pub chunk: usize,
    pub segments: Vec<Segment>,
    pub state_bytes: usize,
    pub kv_cache_bytes: u64,
    pub kv_bytes_per_element: usize,
    pub decode_ms_depth0: f64,
    /// `None` when the run was interrupted before the end of the context.
    pub decode_ms_depth_n: Option<f64>,
    pub prefill_seconds: f64,
    pub load_seconds: f64,
    /// What the user waited: from resolving the model to the report.
    pub total_seconds: f64,
    /// Of which the memory-bandwidth probes.
    pub probe_seconds: f64,
    /// The process's peak resident set size (the bandwidth probe's buffers included).
    pub peak_rss_bytes: Option<u64>,
    /// The peak since the model started loading (the probe's buffers freed before).
    pub model_peak_rss_bytes: Option<u64>,
    /// Ctrl-C stopped the run: `context` is the tokens done.
    pub interrupted: bool,
    pub bits_per_byte: Option<f64>,
    pub decode: DecodeReport,
}

/// Decode speed against the memory bandwidth it needs and the bandwidth measured.
#[derive(Clone, Debug)]
pub struct DecodeReport {
    pub ms_per_token: f64,
    /// Seconds from the process's start to the model loaded (the bandwidth probe excluded).
    pub ready_seconds: f64,
    /// What the load did with the packed-weight cache ("hit", "written", "off", ...).
    pub weight_cache: &'static str,
    /// Bytes of weights one step reads (the embedding row aside).
    pub weight_bytes: u64,
    /// Measured memory bandwidth, bytes/s: streaming read, and copy (read + write).
    pub read_bandwidth: f64,
    pub copy_bandwidth: f64,
    pub threads: usize,
    /// The largest cache (L3) of the machine, bytes.
    pub cache_bytes: u64,
    /// Read bandwidth measured over a buffer of the weights' size (caches included), when the
    /// weights are smaller than the memory probe.
    pub working_set_read_bandwidth: Option<f64>,
}

impl DecodeReport {
    /// Bytes/s of weight traffic at the measured decode speed.
    pub fn weight_bandwidth(&self) -> f64 {
        self.weight_bytes as f64 / (self.ms_per_token.max(1e-9) / 1e3)
    }
    /// The weight traffic as a fraction of the measured read bandwidth.
    pub fn fraction_of_bandwidth(&self) -> f64 {
        self.weight_bandwidth() / self.read_bandwidth.max(1.0)
    }
    /// The fastest a step could be if it only read the weights at the measured bandwidth.
    pub fn bound_ms(&self) -> f64 {
        self.weight_bytes as f64 / self.read_bandwidth.max(1.0) * 1e3
    }
    /// The weights a step reads are small next to the caches (under four times the largest:
    /// see [`BANDWIDTH_PROBE_BYTES`], at four times an L3 still served part of the probe's
    /// reads), or their traffic exceeds the measured memory bandwidth: part of them comes from
    /// the caches, so the fraction of memory bandwidth is not bounded by it.
    pub fn weights_fit_in_cache(&self) -> bool {
        self.weight_bytes < 4 * self.cache_bytes || self.fraction_of_bandwidth() > 1.0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ms_per_token": self.ms_per_token,
            "ready_seconds": self.ready_seconds,
            "weight_cache": self.weight_cache,
            "tokens_per_second": 1e3 / self.ms_per_token.max(1e-9),
            "weight_bytes_per_token": self.weight_bytes,
            "weight_bandwidth_bytes_per_second": self.weight_bandwidth(),
            "memory_read_bandwidth_bytes_per_second": self.read_bandwidth,
            "memory_copy_bandwidth_bytes_per_second": self.copy_bandwidth,
            "fraction_of_memory_bandwidth": self.fraction_of_bandwidth(),
            "bandwidth_bound_ms_per_token": self.bound_ms(),
            "threads": self.threads,
            "last_level_cache_bytes": self.cache_bytes,
            "weights_fit_in_cache": self.weights_fit_in_cache(),
            "working_set_read_bandwidth_bytes_per_second": self.working_set_read_bandwidth,
            "fraction_of_working_set_bandwidth": self
                .working_set_read_bandwidth
                .map(|b| self.weight_bandwidth() / b.max(1.0)),
        })
    }

    pub fn to_table(&self) -> String {
        let mut s = format!(
            "time to ready     {:.2} s (process start to model loaded; the bandwidth probe excluded; weight cache: {})\n\
             decode speed      {:.2} ms/token ({:.1} tokens/s), reading {} of weights per token\n\
             weight traffic    {:.1} GB/s = {:.0}% of the measured memory bandwidth\n\
             memory bandwidth  {:.1} GB/s read, {:.1} GB/s copy ({} threads, STREAM-style); bound {:.2} ms/token\n",
            self.ready_seconds,
            self.weight_cache,
            self.ms_per_token,
            1e3 / self.ms_per_token.max(1e-9),
            human_bytes(self.weight_bytes),
            self.weight_bandwidth() / 1e9,
            100.0 * self.fraction_of_bandwidth(),
            self.read_bandwidth / 1e9,
            self.copy_bandwidth / 1e9,
            self.threads,
            self.bound_ms(),
        );
        if let Some(ws) = self.working_set_read_bandwidth {
            s += &format!(
                "at weights' size  {:.1} GB/s read over a {} buffer (caches included): the weight traffic is {:.0}% of that\n",
                ws / 1e9,
                human_bytes(self.weight_bytes.max(1 << 20)),
                100.0 * self.weight_bandwidth() / ws.max(1.0)
            );
        }
        if self.weights_fit_in_cache() {
            let why = if self.weight_bytes < 4 * self.cache_bytes {
                format!(
                    "the weights a token reads ({}) are under 4× the last-level cache ({}): the \
                     caches may serve part of them",
                    human_bytes(self.weight_bytes),
                    human_bytes(self.cache_bytes)
                )
            } else {
                "the weight traffic exceeds the measured memory bandwidth: the caches served \
                 part of the weights, or the machine's bandwidth moved during the run"
                    .to_string()
            };
            s += &format!(
                "note              {why}, so the fraction above is not bounded by memory \
                 bandwidth\n"
            );
        }
        s
    }
}

impl Report {
    /// Last segment's RSS relative to the first's (1.0 = perfectly flat).
    pub fn rss_growth(&self) -> Option<f64> {
        let first = self.segments.first()?.rss_bytes? as f64;
        let last = self.segments.last()?.rss_bytes? as f64;
        Some(last / first)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": model_json(&self.path, &self.cfg, self.dtype),
            "weight_cache": self.decode.weight_cache,
            "context_tokens": self.context,
            "chunk": self.chunk,
            "segments": self.segments.iter().map(|s| serde_json::json!({
                "start": s.start,
                "end": s.end,
                "seconds": s.seconds,
                "tokens_per_second": s.tokens_per_second(),
                "rss_bytes": s.rss_bytes,
            })).collect::<Vec<_>>(),
            "prefill_tokens_per_second": self.context as f64 / self.prefill_seconds.max(1e-9),
            "prefill_seconds": self.prefill_seconds,
            "state_bytes": self.state_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "kv_cache_bytes_per_element": self.kv_bytes_per_element,
            "decode_ms_per_token_depth_0": self.decode_ms_depth0,
            "decode_ms_per_token_depth_n": self.decode_ms_depth_n,
            "rss_growth_last_over_first_segment": self.rss_growth(),
            "peak_rss_bytes": self.peak_rss_bytes,
            "model_peak_rss_bytes": self.model_peak_rss_bytes,
            "load_seconds": self.load_seconds,
            "total_seconds": self.total_seconds,
            "bandwidth_probe_seconds": self.probe_seconds,
            "interrupted": self.interrupted,
            "bits_per_byte": self.bits_per_byte,
            "decode": self.decode.to_json(),
        })
    }

    /// The table's first two lines: what runs, and the columns.
    pub fn header(cfg: &models::Config, dtype: Format, context: usize, chunk: usize) -> String {
        format!(
            "RWKV {} {} params, {} layers × {}, {} — context {} tokens in chunks of {}\n{:>10} {:>10} {:>12} {:>12}\n",
            cfg.version.name(),
            human_count(cfg.n_params),
            cfg.n_layer,
            cfg.n_embd,
            dtype.name(),
            context,
            chunk,
            "from",
            "to",
            "tokens/s",
            "RSS"
        )
    }

    /// One segment's row.
    pub fn row(seg: &Segment) -> String {
        format!(
            "{:>10} {:>10} {:>12.1} {:>12}\n",
            seg.start,
            seg.end,
            seg.tokens_per_second(),
            seg.rss_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "n/a".into())
        )
    }

    /// What follows the rows.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if self.interrupted {
            let _ = writeln!(
                s,
                "interrupted       after {} tokens: the figures below cover those",
                self.context
            );
        }
        let _ = writeln!(
            s,
            "prefill           {:.1} tokens/s over {} tokens ({:.1} s)",
            self.context as f64 / self.prefill_seconds.max(1e-9),
            self.context,
            self.prefill_seconds
        );
        match self.decode_ms_depth_n {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "decode by depth   {:.2} ms/token at depth 0, {:.2} ms/token at depth {}",
                    self.decode_ms_depth0, d, self.context
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "decode by depth   {:.2} ms/token at depth 0 (not measured at depth: interrupted)",
                    self.decode_ms_depth0
                );
            }
        }
        let _ = writeln!(
            s,
            "state             {} (constant) — a softmax transformer's KV cache at {} tokens: {} ({}×)",
            human_bytes(self.state_bytes as u64),
            self.context,
            human_bytes(self.kv_cache_bytes),
            format_ratio(self.kv_cache_bytes as f64 / self.state_bytes.max(1) as f64)
        );
        if let Some(g) = self.rss_growth() {
            let _ = writeln!(s, "RSS growth        last segment / first segment = {g:.3}");
        }
        let na = || "n/a".to_string();
        let _ = writeln!(
            s,
            "peak RSS          {} for the process (the bandwidth probe's buffers included), {} since the model started loading",
            self.peak_rss_bytes.map(human_bytes).unwrap_or_else(na),
            self.model_peak_rss_bytes.map(human_bytes).unwrap_or_else(na)
        );
        s.push_str(&self.decode.to_table());
        if let Some(b) = self.bits_per_byte {
            let _ = writeln!(s, "bits per byte     {b:.4}");
        }
        let _ = writeln!(
            s,
            "total time        {:.1} s (load {:.1} s, memory-bandwidth probes {:.1} s)",
            self.total_seconds, self.load_seconds, self.probe_seconds
        );
        s
    }
}

/// The process's peak: the larger of the peak before the reset and the one after.
fn process_peak(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    match (before, after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn format_ratio(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_context_exactly() {
        for (n, k) in [(100_000, 10), (7, 10), (1, 3), (1001, 10)] {
            let b = segment_bounds(n, k);
            assert_eq!(b.first().unwrap().0, 0);
            assert_eq!(b.last().unwrap().1, n);
            assert!(b.windows(2).all(|w| w[0].1 == w[1].0));
            assert!(b.len() <= k);
        }
    }

    #[test]
    fn builtin_text_is_deterministic_and_long_enough() {
        let a = builtin_text(5000);
        assert!(a.len() >= 5000);
        assert_eq!(a, builtin_text(5000));
        assert!(a.is_ascii());
    }

    #[test]
    fn the_stream_repeats_the_text_chunk_by_chunk() {
        let mut buf = Vec::new();
        let mut all = Vec::new();
        for (a, b) in [(0, 2), (2, 5), (5, 7)] {
            stream_chunk(&[1, 2, 3], a, b, &mut buf);
            all.extend_from_slice(&buf);
        }
        assert_eq!(all, vec![1, 2, 3, 1, 2, 3, 1]);
        // Far into a context too large to hold: position 10^11 is token 10^11 mod 3.
        stream_chunk(&[1, 2, 3], 100_000_000_000, 100_000_000_002, &mut buf);
        assert_eq!(buf, vec![2, 3]);
    }

    #[test]
    fn small_weights_or_traffic_over_the_bandwidth_get_the_cache_note() {
        let d = |weight_bytes: u64, ms: f64| DecodeReport {
            ms_per_token: ms,
            ready_seconds: 0.5,
            weight_cache: "off",
            weight_bytes,
            read_bandwidth: 40e9,
            copy_bandwidth: 30e9,
            threads: 2,
            cache_bytes: 32 << 20,
            working_set_read_bandwidth: (weight_bytes < 256 << 20).then_some(100e9),
        };
        // 8 MiB of weights: in the caches, whatever the speed.
        assert!(d(8 << 20, 1.0).weights_fit_in_cache());
        assert!(d(8 << 20, 1.0).to_table().contains("note"));
        // 760 MB at 20 ms: 38 GB/s, 95% of 40 GB/s, from memory.
        let big = d(760_000_000, 20.0);
        assert!(!big.weights_fit_in_cache());
        assert!(!big.to_table().contains("note"));
        assert_eq!(big.to_json()["weights_fit_in_cache"], false);
        // Small weights: the bandwidth at their size says how much of it the traffic uses.
        let small = d(8 << 20, 1.0);
        assert!(
            small.to_table().contains("at weights' size  100.0 GB/s"),
            "{}",
            small.to_table()
        );
        assert_eq!(
            small.to_json()["working_set_read_bandwidth_bytes_per_second"],
            100e9
        );
        // The same at 10 ms would be 190% of the bandwidth: not bounded by it.
        assert!(d(760_000_000, 10.0).weights_fit_in_cache());
    }
}
