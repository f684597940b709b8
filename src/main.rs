//! `rwkv-cli`: parses the command line and dispatches to [`rwkv_cli::commands`].
//!
//! Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error (from clap).

use clap::{Parser, Subcommand};
use rwkv_cli::commands;

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
    Generate(commands::generate::GenerateArgs),
    /// Chat with a model (G1 format): a line editor on a terminal, one message per line when
    /// piped; every turn reads only its own tokens.
    Chat(commands::chat::ChatArgs),
    /// Long-context throughput and memory: push N tokens, report each segment.
    Bench(commands::bench::BenchArgs),
    /// RWKV against softmax and linear attention of the same shape: time and memory vs context.
    Compare(commands::compare::CompareArgs),
    /// Bits per byte and perplexity of a model over a text.
    Eval(commands::eval::EvalArgs),
    /// Print a model's version, shapes, parameter count and state size.
    Info(commands::info::InfoArgs),
    /// List the built-in model catalogue (aliases for --model) and what is already cached.
    Models(commands::models::ModelsArgs),
}

fn main() {
    let cli = Cli::parse();
    rwkv_cli::hub::set_offline(cli.offline);
    if let Err(e) = commands::init_threads(cli.threads) {
        commands::exit_with_error(&e);
    }
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Models(args) => commands::models::run(args),
    };
    if let Err(e) = result {
        commands::exit_with_error(&e);
    }
}
