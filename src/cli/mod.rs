//! The command line (binary only; the library knows nothing of it): the subcommands, one file
//! each, and what they share: printing, error reporting and exit codes, Ctrl-C, thread setup and
//! progress bars. The model-loading flags and the loading itself are in [`model_args`].

pub mod bench;
pub mod chat;
pub mod compare;
pub mod completions;
pub mod eval;
pub mod generate;
pub mod info;
pub mod model_args;
pub mod models;
pub mod serve;
pub mod tokenize;

use anyhow::Result;
use rwkv_cli::error::UsageError;
use std::io::IsTerminal;

/// Set by Ctrl-C once [`catch_interrupt`] has installed the handler.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes Ctrl-C set a flag instead of killing the process, for the commands that stop cleanly
/// on it (`generate` stops at the next token, `compare` reports the points it has, `chat` ends
/// the reply being written): they poll [`interrupted`] and exit 130 themselves.
pub fn catch_interrupt() {
    catch_interrupt_then(|| {});
}

/// [`catch_interrupt`], and `then` runs in the handler after the flag is set (chat's piped
/// mode exits there when no turn is running).
pub fn catch_interrupt_then(then: impl Fn() + Send + 'static) {
    let _ = ctrlc::set_handler(move || {
        note_interrupt();
        then();
    });
}

/// Whether Ctrl-C has been pressed (or [`note_interrupt`] called).
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The flag itself, for library code that polls a cancellation flag (a chat reply).
pub fn interrupt_flag() -> &'static std::sync::atomic::AtomicBool {
    &INTERRUPTED
}

/// Forgets a Ctrl-C that has been dealt with (chat: the reply stopped, the session goes on).
pub fn clear_interrupt() {
    INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
}

/// Records an interrupt seen another way (a child process that died of SIGINT, say).
pub fn note_interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// `--color`: when to colour or dim text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless the NO_COLOR environment variable is set (and not empty).
    Auto,
    /// Always, even into a pipe or with NO_COLOR.
    Always,
    /// Never.
    Never,
}

/// The `--color` of this run (0 auto, 1 always, 2 never).
/// When `main` began: the origin of "time to ready" (what a shell loop pays per call before
/// the first token; the loader's and the kernel's work before `main` is a few milliseconds).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the process's start; called first thing in `main`.
pub fn mark_start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// Seconds since [`mark_start`] (since the first call, if it was never marked).
pub fn seconds_since_start() -> f64 {
    STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

static COLOR: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Records `--color` for [`color_for`].
pub fn set_color(c: ColorChoice) {
    let v = match c {
        ColorChoice::Auto => 0,
        ColorChoice::Always => 1,
        ColorChoice::Never => 2,
    };
    COLOR.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Whether to colour (or dim) text written to a stream: `--color always`/`never` decide; with
/// `auto` only a terminal gets colour, and not when NO_COLOR is set to anything but "".
pub fn color_for(is_terminal: bool) -> bool {
    match COLOR.load(std::sync::atomic::Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// Colour for stderr ([`color_for`] its terminal-ness).
pub fn color_stderr() -> bool {
    color_for(std::io::stderr().is_terminal())
}

/// Colour for stdout ([`color_for`] its terminal-ness).
pub fn color_stdout() -> bool {
    color_for(std::io::stdout().is_terminal())
}

/// Ends the process for a command line clap did not parse, like `clap::Error::exit`, except
/// that `--help` and `--version` whose text cannot be written (stdout closed or full:
/// `--help > /dev/full`) exit 1 with one line instead of 0.
pub fn exit_on_parse_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let written = e
            .print()
            .and_then(|()| std::io::Write::flush(&mut std::io::stdout()));
        // A reader that went away (`--help | head`) is fine, as for every output.
        if let Err(w) = written.filter_broken_pipe() {
            crate::errln!("error: cannot write the help to stdout: {w}");
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    e.exit()
}

/// An I/O result with a closed pipe counted as success.
trait FilterBrokenPipe {
    fn filter_broken_pipe(self) -> std::io::Result<()>;
}

impl FilterBrokenPipe for std::io::Result<()> {
    fn filter_broken_pipe(self) -> std::io::Result<()> {
        match self {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

/// A count flag's value (clap `value_parser`): a whole number of 0 or more, with the range
/// said for a negative one (`-n -1`: "must be 0 or more") rather than "invalid digit".
pub fn count(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n < 0 => Err(format!("must be 0 or more (got {n})")),
        Ok(n) => usize::try_from(n).map_err(|_| format!("{n} is too large")),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// A flag's value parsed by its type's `FromStr` (its messages, aliases and case), with the
/// usual names offered to shell completions (see [`named`]).
#[derive(Clone)]
pub struct Named<T> {
    names: &'static [&'static str],
    parse: fn(&str) -> Result<T>,
}

/// The value parser of a flag that takes one of `names` (clap `value_parser`): completions
/// offer the names, parsing stays the type's own. Give the flag `hide_possible_values = true`
/// where its help already lists them.
pub fn named<T>(names: &'static [&'static str]) -> Named<T>
where
    T: std::str::FromStr<Err = anyhow::Error>,
{
    Named {
        names,
        parse: T::from_str,
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<T, clap::Error> {
        self.parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            self.names
                .iter()
                .map(|n| clap::builder::PossibleValue::new(*n)),
        ))
    }
}

/// A size in bytes, as coreutils reads them: a number (`1.5` allowed) and a unit — `K`, `M`,
/// `G`, `T` and `KiB` … `TiB` are powers of 1024, `KB` … `TB` powers of 1000, `B` or none
/// bytes (case ignored). The one size reader of every flag (`serve --state-cache`,
/// `--weight-cache-max`, `compare --memory-budget`).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| anyhow::anyhow!("cannot read the size '{s}' (e.g. 512MiB, 2GiB, 0)"))?;
    let unit = unit.to_ascii_lowercase();
    let (base, power) = match unit.as_str() {
        "" | "b" => (1024.0, 0),
        "k" | "kib" => (1024.0, 1),
        "m" | "mib" => (1024.0, 2),
        "g" | "gib" => (1024.0, 3),
        "t" | "tib" => (1024.0, 4),
        "kb" => (1000.0, 1),
        "mb" => (1000.0, 2),
        "gb" => (1000.0, 3),
        "tb" => (1000.0, 4),
        _ => anyhow::bail!(
            "cannot read the size '{s}': unknown unit '{unit}' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        ),
    };
    let scale = f64::powi(base, power);
    let bytes = n * scale;
    if bytes >= u64::MAX as f64 {
        anyhow::bail!("the size '{s}' is too large");
    }
    Ok(bytes as u64)
}

/// Sets the size of the thread pool used by the matrix kernels.
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let n = match threads {
        Some(0) => rwkv_cli::usage_bail!("--threads must be at least 1"),
        // More threads than cores only take turns on them (5× slower at 1000): capped.
        Some(n) if n > cores => {
            crate::errln!("warning: --threads {n} is more than the {cores} cores this process may use; using {cores}");
            cores
        }
        Some(n) => n,
        None => cores,
    };
    // Any rayon pool started without this builder reads the variable; set it before any starts.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))
}

/// A progress bar over `len` tokens on stderr when it is a terminal; hidden otherwise.
pub fn token_progress_bar(len: usize) -> indicatif::ProgressBar {
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

/// The download of a Hub model as the user sees it: each notice as a line on stderr, and a
/// progress bar (bytes, rate, ETA) drawn only when stderr is a terminal.
#[derive(Default)]
pub struct DownloadBar(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl DownloadBar {
    fn bar(&self) -> std::sync::MutexGuard<'_, Option<indicatif::ProgressBar>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl rwkv_cli::hub::DownloadProgress for DownloadBar {
    fn notice(&self, line: &str) {
        crate::errln!("{line}");
    }

    fn start(&self, file: &str, total: u64, have: u64) {
        if !std::io::stderr().is_terminal() || rwkv_cli::hub::progress_bars_disabled() {
            return;
        }
        // Drawn from the moment the size is known, so no "0 B/0 B" flashes first.
        let bar = indicatif::ProgressBar::hidden();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let chars: Vec<char> = file.chars().collect();
        let short: String = if chars.len() > 24 {
            format!("..{}", chars[chars.len() - 22..].iter().collect::<String>())
        } else {
            file.to_string()
        };
        bar.set_message(short);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_length(total);
        bar.set_position(have);
        // The speed and ETA from the bytes that arrive now, not those already on disk.
        bar.reset_eta();
        *self.bar() = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = &*self.bar() {
            b.inc(bytes);
        }
    }

    /// Removes the bar from the terminal (the "downloading" line above it stays).
    fn finish(&self) {
        if let Some(b) = self.bar().take() {
            b.finish_and_clear();
        }
    }
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
    print_bytes(text.as_bytes())
}

/// [`print_out`] for raw bytes (model output, which may not be UTF-8 at a token's end).
pub fn print_bytes(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// `println!` for command output: `outln!(...)?` writes one line through [`print_out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(&format!("{}\n", format_args!($($arg)*)))
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
    errln!("error: {msg}");
    let usage = e.chain().any(|c| c.downcast_ref::<UsageError>().is_some());
    std::process::exit(if usage { 2 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_coreutils_reads_them() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("512 mib").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("7b").unwrap(), 7);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "lots",
            "5 parsecs",
            "GiB",
            "-1GiB",
            "1e400",
            "99999999TiB",
            "1.2.3M",
            "1ib",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
