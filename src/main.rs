//! `rwkv-cli`: parses the command line once and dispatches to a subcommand in [`cli`]. The
//! engine is the `rwkv_cli` library; everything about the command line lives here.
//!
//! Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error (from clap).

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rwkv-cli",
    version,
    about = "Run RWKV language models (v4–v7) on the CPU with a fixed-size recurrent state"
)]
struct Cli {
    /// Worker threads for the matrix kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Use only models already in the Hugging Face cache; make no network request
    /// (same as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
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
    Bench(cli::bench::BenchArgs),
    /// RWKV against softmax and linear attention of the same shape: time and memory vs context.
    Compare(cli::compare::CompareArgs),
    /// Bits per byte and perplexity of a model over a text.
    Eval(cli::eval::EvalArgs),
    /// Print a model's version, shapes, parameter count and state size.
    Info(cli::info::InfoArgs),
    /// List the built-in model catalogue (aliases for --model) and what is already cached.
    Models(cli::models::ModelsArgs),
}

fn main() {
    let args: Cli = cli::parse_args();
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
    };
    if let Err(e) = result {
        cli::exit_with_error(&e);
    }
}
