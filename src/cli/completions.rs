//! `rwkv-cli completions SHELL` and `rwkv-cli man`: the shell completion scripts
//! (clap_complete) and the manual pages (clap_mangen), both generated from the same clap
//! definitions the parser uses, so they never fall out of step with the flags.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::path::PathBuf;

const COMPLETIONS_HELP: &str = "\
Examples:
  rwkv-cli completions bash > ~/.local/share/bash-completion/completions/rwkv-cli
  rwkv-cli completions zsh > ~/.zfunc/_rwkv-cli      (with fpath+=~/.zfunc before compinit)
  rwkv-cli completions fish > ~/.config/fish/completions/rwkv-cli.fish

Environment: none. Exit status: 0 success, 1 failure, 2 usage error.";

const MAN_HELP: &str = "\
Examples:
  rwkv-cli man | man -l -                           read it now
  rwkv-cli man --dir ~/.local/share/man/man1         install every page (then `man rwkv-cli`)
  rwkv-cli man generate > rwkv-cli-generate.1

Environment: none. Exit status: 0 success, 1 failure, 2 usage error.";

#[derive(Args, Debug, Clone)]
#[command(after_help = COMPLETIONS_HELP)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug, Clone)]
#[command(after_help = MAN_HELP)]
pub struct ManArgs {
    /// The page of this subcommand (rwkv-cli-COMMAND(1)); default: the main page, rwkv-cli(1).
    #[arg(conflicts_with = "dir")]
    pub command: Option<String>,
    /// Write every page (rwkv-cli.1 and rwkv-cli-COMMAND.1 for each subcommand) into this
    /// directory instead of one page to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run_completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "rwkv-cli", &mut buf);
    if args.shell == clap_complete::Shell::Bash {
        buf = fix_bash_labels(&buf);
    }
    super::print_bytes(&buf)
}

/// clap_complete's bash script for a name with a hyphen spells each subcommand's state two
/// ways (`rwkv__cli__subcmd__generate` where it is set, `rwkv__subcmd__cli__subcmd__generate`
/// in the `case` that reads it), so no subcommand's flags complete
/// (clap-rs/clap#6421). This spells the labels the way they are set; once clap_complete is
/// fixed there is nothing left to replace.
fn fix_bash_labels(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("rwkv__subcmd__cli__subcmd__", "rwkv__cli__subcmd__")
        .into_bytes()
}

/// The page of `cmd` (named `name` on it), in roff.
fn render(cmd: clap::Command, name: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    // The name lives as long as the process: clap wants it 'static.
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    clap_mangen::Man::new(cmd.name(name))
        .render(&mut buf)
        .context("cannot render the manual page")?;
    Ok(keep_breaks(&String::from_utf8_lossy(&buf)).into_bytes())
}

/// The help's text after the options keeps its lines as written where they matter: roff fills
/// a line that follows an indented one (a table row, an example) into it, and the `Exit
/// status:` line into the environment's. A break (`.br`) goes before each such line.
fn keep_breaks(page: &str) -> String {
    let mut out = String::with_capacity(page.len() + 256);
    let mut prev_indented = false;
    for line in page.lines() {
        let text = !line.is_empty() && !line.starts_with('.') && !line.starts_with(' ');
        if text && (prev_indented || line.starts_with("Exit status:")) {
            out.push_str(".br\n");
        }
        out.push_str(line);
        out.push('\n');
        prev_indented = line.starts_with(' ');
    }
    out
}

pub fn run_man(args: ManArgs) -> Result<()> {
    let mut root = crate::Cli::command();
    root.build();
    if let Some(dir) = &args.dir {
        let write = |file: String, page: Vec<u8>| -> Result<()> {
            let path = dir.join(&file);
            std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
        };
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!("--dir {}: not a directory", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut n = 1;
        write("rwkv-cli.1".into(), render(root.clone(), "rwkv-cli")?)?;
        for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("rwkv-cli-{}", sub.get_name());
            write(format!("{name}.1"), render(sub.clone(), &name)?)?;
            n += 1;
        }
        crate::errln!("wrote {n} pages to {}", dir.display());
        return Ok(());
    }
    let page = match &args.command {
        None => render(root, "rwkv-cli")?,
        Some(c) => {
            let Some(sub) = root.find_subcommand(c).cloned() else {
                let names: Vec<&str> = root
                    .get_subcommands()
                    .map(|s| s.get_name())
                    .filter(|n| *n != "help")
                    .collect();
                rwkv_cli::usage_bail!("no command '{c}' (commands: {})", names.join(", "));
            };
            render(sub, &format!("rwkv-cli-{c}"))?
        }
    };
    super::print_bytes(&page)
}
