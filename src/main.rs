//! `rwkv-cli`: parses the command line once and dispatches to a subcommand in [`cli`]. The
//! engine is the `rwkv_cli` library; everything about the command line lives here.
//!
//! Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error (from clap or a
//! command), 130 interrupted by Ctrl-C (the commands that stop cleanly on it).

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  rwkv-cli generate -p 'The capital of France is' -n 20     the embedded demo model
  rwkv-cli chat -m rwkv7-g1-1.5b                            download once, then chat
  rwkv-cli tokenize --tokenizer world 'Hello'               see the tokens

Environment: RWKV_CLI_CACHE, XDG_CACHE_HOME (the embedded model's cache); HF_HOME,
HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS (the Hugging
Face Hub); NO_COLOR; RWKV_NO_AVX512, RWKV_NO_VNNI, RWKV_NO_BF16, RWKV_NO_AMX, RWKV_NO_SIMD
(force slower kernels).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted by
Ctrl-C. `rwkv-cli COMMAND --help` has each command's details.";

/// The environment variables of every command that loads a model.
macro_rules! model_env {
    () => {
        "Environment: RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model and the weight cache);
RWKV_CLI_WEIGHT_CACHE_MAX;
HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS (Hub
models); RWKV_NO_AVX512, RWKV_NO_VNNI, RWKV_NO_BF16, RWKV_NO_AMX, RWKV_NO_SIMD (force slower kernels)."
    };
}

const BENCH_HELP: &str = concat!(
    "Examples:
  rwkv-cli bench --context 10k                      the embedded model, 10k tokens
  rwkv-cli bench -m rwkv7-g1-0.4b --quant q8_0 --context 1M --json > bench.json
  rwkv-cli bench -m rwkv7-g1-0.4b --decode --decode-tokens 64

",
    model_env!(),
    "
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted by
Ctrl-C (the segments measured so far are still reported)."
);

const COMPARE_HELP: &str = concat!(
    "Examples:
  rwkv-cli compare --contexts 1k,4k,16k --baseline softmax,linear
  rwkv-cli compare -m rwkv7-g1-0.1b --memory-budget 8GiB --plot compare.svg
  rwkv-cli compare --json --time-budget 60s > compare.json

",
    model_env!(),
    "
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted by
Ctrl-C (the points measured so far are still reported)."
);

const EVAL_HELP: &str = concat!(
    "Examples:
  rwkv-cli eval --text book.txt                     the embedded model
  rwkv-cli eval -m rwkv7-g1-0.4b --quant q8_0 --text book.txt --max-tokens 20000
  curl -s https://example.org/page.txt | rwkv-cli eval -m rwkv7-g1-0.1b --text - --json

",
    model_env!(),
    "
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted by
Ctrl-C (the score of the text read so far is still reported)."
);

const INFO_HELP: &str = "\
Examples:
  rwkv-cli info                                      the embedded model
  rwkv-cli info model.pth --json
  rwkv-cli info rwkv7-g1-1.5b                       a catalogue alias (--download fetches it)

Environment: RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model); HF_HOME, HF_HUB_CACHE,
HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS (Hub models).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error.";

const MODELS_HELP: &str = "\
Examples:
  rwkv-cli models                                   the catalogue, and what is cached
  rwkv-cli models --json | jq -r '.[].alias'
  rwkv-cli generate -m rwkv7-g1-0.1b -p 'Hello'     use an alias

Environment: HF_HOME, HF_HUB_CACHE (where the cache is looked for).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error.";

#[derive(Parser)]
#[command(
    name = "rwkv-cli",
    version,
    about = "Run RWKV language models (v4–v7) on the CPU with a fixed-size recurrent state",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Worker threads for the matrix kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Use only models already in the Hugging Face cache; make no network request
    /// (same as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    /// Colour and dim text: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(
        long,
        global = true,
        value_name = "WHEN",
        default_value = "auto",
        hide_possible_values = true
    )]
    color: cli::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; text on stdout, stats on stderr.
    Generate(cli::generate::GenerateArgs),
    /// Chat with a model (G1 format): a line editor on a terminal, one message per line when
    /// piped; every turn reads only its own tokens.
    Chat(cli::chat::ChatArgs),
    /// Long-context throughput and memory: push N tokens, report each segment.
    #[command(after_help = BENCH_HELP)]
    Bench(cli::bench::BenchArgs),
    /// RWKV against softmax and linear attention of the same shape: time and memory vs context.
    #[command(after_help = COMPARE_HELP)]
    Compare(cli::compare::CompareArgs),
    /// Bits per byte and perplexity of a model over a text.
    #[command(after_help = EVAL_HELP)]
    Eval(cli::eval::EvalArgs),
    /// Print a model's version, shapes, parameter count and state size.
    #[command(after_help = INFO_HELP)]
    Info(cli::info::InfoArgs),
    /// List the built-in model catalogue (aliases for --model) and what is already cached.
    #[command(after_help = MODELS_HELP)]
    Models(cli::models::ModelsArgs),
    /// An OpenAI-compatible HTTP server: batched decoding, a cache of prefix states.
    Serve(cli::serve::ServeArgs),
    /// Text to token ids (one per line, or JSON), with a model's tokenizer or a named one.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Token ids (arguments or stdin) back to their bytes, on stdout.
    Detokenize(cli::tokenize::DetokenizeArgs),
    /// Print a shell completion script: bash, zsh, fish, powershell (or elvish).
    Completions(cli::completions::CompletionsArgs),
    /// Print the manual page (roff), or write every page into a directory.
    Man(cli::completions::ManArgs),
}

/// What `--version` says: the version, the commit and the kernels this machine will use.
fn long_version() -> String {
    use rwkv_cli::kernels::{self, Isa};
    let isa = match kernels::isa() {
        Isa::Avx512 => "AVX-512",
        Isa::Avx2 => "AVX2 + FMA",
        Isa::Neon => "NEON",
        Isa::Portable => "portable (no SIMD)",
    };
    let vnni = match (kernels::isa(), kernels::has_vnni(), kernels::has_bf16_dot()) {
        (Isa::Avx2, true, _) => ", AVX-VNNI for the int8 dot products",
        (Isa::Neon, true, true) => ", sdot for the int8 and bfdot for the bf16 dot products",
        (Isa::Neon, true, false) => ", sdot for the int8 dot products",
        (Isa::Neon, false, true) => ", bfdot for the bf16 dot products",
        (_, true, true) => ", AVX-512 VNNI for the int8 and BF16 for the bf16 dot products",
        (_, true, false) => ", AVX-512 VNNI for the int8 dot products",
        (_, false, true) => ", AVX-512 BF16 for the bf16 dot products",
        (_, false, false) => "",
    };
    let amx_tiles = if kernels::has_amx() {
        ", AMX tiles for the bf16 matrix products"
    } else {
        ""
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    // AMX: CPUID leaf 7 EDX (is_x86_feature_detected! has no stable AMX names yet); the CPU's
    // word only, not whether the kernel lets a process use the tiles.
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    let amx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    #[cfg(target_arch = "x86_64")]
    let cpu = format!(
        "avx2 {}, avx-vnni {}, avx512f {}, avx512vnni {}, avx512bf16 {}, amx-tile {}, amx-bf16 {}, amx-int8 {}",
        yes(is_x86_feature_detected!("avx2")),
        yes(is_x86_feature_detected!("avxvnni")),
        yes(is_x86_feature_detected!("avx512f")),
        yes(is_x86_feature_detected!("avx512vnni")),
        yes(is_x86_feature_detected!("avx512bf16")),
        yes(amx & (1 << 24) != 0),
        yes(amx & (1 << 22) != 0),
        yes(amx & (1 << 25) != 0),
    );
    #[cfg(target_arch = "aarch64")]
    let cpu = format!(
        "neon {}, dotprod {}, bf16 {}",
        yes(std::arch::is_aarch64_feature_detected!("neon")),
        yes(std::arch::is_aarch64_feature_detected!("dotprod")),
        yes(std::arch::is_aarch64_feature_detected!("bf16")),
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let cpu = {
        let _ = yes;
        "no detection on this architecture".to_string()
    };
    format!(
        "{}\ncommit: {}\ntarget: {}-{}\nkernels: {isa}{vnni}{amx_tiles}\ncpu: {cpu}",
        env!("CARGO_PKG_VERSION"),
        env!("RWKV_CLI_GIT_COMMIT"),
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}

/// The `--color` of the command line, read before parsing so that clap's own messages (help,
/// errors) follow it too.
fn color_from_args() -> clap::ColorChoice {
    let mut it = std::env::args_os().skip(1);
    let mut choice = clap::ColorChoice::Auto;
    while let Some(a) = it.next() {
        let v = match a.to_str() {
            Some("--") => break,
            Some("--color") => it.next(),
            Some(s) => match s.strip_prefix("--color=") {
                Some(v) => Some(v.into()),
                None => continue,
            },
            None => continue,
        };
        choice = match v.as_ref().and_then(|v| v.to_str()) {
            Some("always") => clap::ColorChoice::Always,
            Some("never") => clap::ColorChoice::Never,
            _ => clap::ColorChoice::Auto,
        };
    }
    choice
}

fn main() {
    cli::mark_start();
    let version = long_version();
    let short = format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("RWKV_CLI_GIT_COMMIT")
    );
    // The version strings live as long as the process: clap wants them 'static.
    let cmd = Cli::command()
        .version(&*Box::leak(short.into_boxed_str()))
        .long_version(&*Box::leak(version.into_boxed_str()))
        .color(color_from_args());
    let matches = cmd
        .try_get_matches()
        .unwrap_or_else(|e| cli::exit_on_parse_error(e));
    let args = Cli::from_arg_matches(&matches).unwrap_or_else(|e| cli::exit_on_parse_error(e));
    cli::set_color(args.color);
    rwkv_cli::hub::set_offline(args.offline);
    if let Err(e) = cli::init_threads(args.threads) {
        cli::exit_with_error(&e);
    }
    let result = match args.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Compare(a) => cli::compare::run(a),
        Command::Models(a) => cli::models::run(a),
        Command::Tokenize(a) => cli::tokenize::run_tokenize(a),
        Command::Detokenize(a) => cli::tokenize::run_detokenize(a),
        Command::Completions(a) => cli::completions::run_completions(a),
        Command::Man(a) => cli::completions::run_man(a),
        Command::Serve(a) => cli::serve::run(a),
    };
    if let Err(e) = result {
        cli::exit_with_error(&e);
    }
}
