//! The subcommands, one file each, and what they share: model resolution, thread setup and
//! error reporting.

pub mod bench;
pub mod compare;
pub mod eval;
pub mod generate;
pub mod info;
pub mod models;

use anyhow::Result;
use std::path::PathBuf;

/// Set by Ctrl-C once [`catch_interrupt`] has installed the handler.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes Ctrl-C set a flag instead of killing the process, for the commands that stop cleanly
/// on it (`generate` stops at the next token, `compare` reports the points it has): they poll
/// [`interrupted`] and exit 130 themselves.
pub fn catch_interrupt() {
    let _ = ctrlc::set_handler(note_interrupt);
}

/// Whether Ctrl-C has been pressed (or [`note_interrupt`] called).
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Records an interrupt seen another way (a child process that died of SIGINT, say).
pub fn note_interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Sets the size of the thread pool used by the matrix kernels (ours and candle's).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => crate::usage_bail!("--threads must be at least 1"),
        Some(n) if n > 1024 => {
            crate::usage_bail!("--threads {n} is more than this tool supports (1024)")
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    // candle's gemm reads the same variable as rayon; set it before any pool starts.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))
}

/// A progress bar over `len` tokens on stderr when it is a terminal; hidden otherwise.
pub fn token_progress_bar(len: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tokens  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// The `"model"` object of every command's JSON (`generate --stats-json`, `eval`, `bench` and
/// `compare --json`): which file ran, what it is, and the precision it ran in.
pub fn model_json(
    path: &std::path::Path,
    cfg: &crate::models::Config,
    dtype: crate::format::Format,
) -> serde_json::Value {
    serde_json::json!({
        "path": path.display().to_string(),
        "version": cfg.version.name(),
        "params": cfg.n_params,
        "layers": cfg.n_layer,
        "width": cfg.n_embd,
        "vocab": cfg.vocab_size,
        "dtype": dtype.name(),
    })
}

/// Resolves `--model` to a checkpoint file.
pub fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    match model {
        // A local file, a catalogue alias, or owner/repo:file[@revision] (see crate::hub).
        Some(m) => Ok(crate::hub::resolve(m)?.path),
        // No --model: the small RWKV-7 embedded in the binary.
        None => crate::default_model::path(),
    }
}

/// An error in how the command was called (exit status 2, like clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns early with a [`UsageError`].
#[macro_export]
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::commands::UsageError(format!($($arg)*))))
    };
}

/// The reader of stdout went away (a closed pipe, as in `rwkv-cli info | head -1`): not a
/// failure. A command returns it to stop at once; the process then exits 0 without a word.
#[derive(Debug)]
pub struct ReaderGone;

impl std::fmt::Display for ReaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reader of stdout went away")
    }
}

impl std::error::Error for ReaderGone {}

/// Writes `text` to stdout and flushes it. A closed pipe becomes [`ReaderGone`]; any other
/// failure (a full disk, say) is an error that names stdout. Commands print through this (or
/// [`outln!`](crate::outln)) rather than `println!`, which panics on either.
pub fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// `println!` for command output: `outln!(...)?` writes one line through [`print_out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::print_out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for messages and statistics: a stderr that cannot be written (closed, as in
/// `2>&1 | head -c 10`) is ignored instead of panicking.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Prints the error chain on one line and exits: status 2 for usage errors, 1 otherwise, 0
/// quietly when the reader of stdout went away ([`ReaderGone`]).
pub fn exit_with_error(e: &anyhow::Error) -> ! {
    if e.chain().any(|c| c.downcast_ref::<ReaderGone>().is_some()) {
        std::process::exit(0);
    }
    let msg = format!("{e:#}").replace('\n', " ");
    crate::errln!("error: {msg}");
    let usage = e.chain().any(|c| c.downcast_ref::<UsageError>().is_some());
    std::process::exit(if usage { 2 } else { 1 })
}

/// The weight format of a command line's `--dtype` and `--quant`: the quantized format when
/// one is given (it must be one), else the dtype. (Moved verbatim from the library's `ops`;
/// the CLI's `ModelArgs` owns it after the restructuring.)
pub fn effective_dtype(
    dtype: crate::format::Format,
    quant: Option<crate::format::Format>,
) -> Result<crate::format::Format> {
    match quant {
        None => Ok(dtype),
        Some(q) if q.is_quantized() => Ok(q),
        Some(q) => anyhow::bail!(
            "--quant {} is not a quantized format (expected q8_0 or q4_0; use --dtype for f32, f16, bf16)",
            q.name()
        ),
    }
}
