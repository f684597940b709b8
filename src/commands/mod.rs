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

/// Prints the error chain on one line and exits: status 2 for usage errors, 1 otherwise.
pub fn exit_with_error(e: &anyhow::Error) -> ! {
    let msg = format!("{e:#}").replace('\n', " ");
    eprintln!("error: {msg}");
    let usage = e.chain().any(|c| c.downcast_ref::<UsageError>().is_some());
    std::process::exit(if usage { 2 } else { 1 })
}
