//! `rwkv-cli chat`: a conversation with a model in the G1 chat format.
//!
//! The conversation logic (the format, the turns, the end of a turn, undo) is in
//! [`rwkv_cli::chat`]; this file is the command: its flags, the interactive loop with a line
//! editor when stdin is a terminal, the line-per-message mode otherwise, the `/` commands and
//! the statistics.

use super::model_args::{InitStateArgs, ModelArgs};
use anyhow::{Context, Result};
use clap::Args;
use rwkv_cli::chat::{ChatOptions, Conversation, Piece, StopReason, Think, TurnStats};
use rwkv_cli::format::Format;
use rwkv_cli::models::{self, Model};
use rwkv_cli::output_file;
use rwkv_cli::sampler::{Sampler, SamplerConfig};
use rwkv_cli::state_file;
use rwkv_cli::stats::{human_bytes, human_count, peak_rss_bytes};
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const AFTER_HELP: &str = "\
The conversation is this text (the G1 format of BlinkDL's RWKV-7 model cards), each part
tokenized and read as it comes, so a turn costs only its own tokens:
  System: SYSTEM\\n\\n                       (only with --system)
  User: MESSAGE\\n\\nAssistant: REPLY\\n\\n    (per turn)
The reply ends when the model writes \\n\\n (not shown) or after --max-tokens; a \\n\\n inside a
message becomes \\n. --think on starts the reply with `Assistant: <think` (the reasoning is shown
dimmed, or left out of stdout when piped unless --show-thinking); --think skip uses G1's empty
reasoning block `Assistant: <think>\\n</think`.

Sampling defaults are those of the official chat demo (ChatRWKV API_DEMO_CHAT.py): temperature
1.0, top-p 0.3, presence penalty 0.5, frequency penalty 0.5, penalty decay 0.996; the penalties
count the tokens of the current reply only, and the end-of-text token is never sampled.

Interactive (stdin is a terminal): a line editor with history. Enter sends the message; a line
ending in \\ continues on the next line, as does Alt-Enter (pasted text keeps its newlines).
Ctrl-C stops the reply being written (the turn still counts: /undo takes it back) or clears the
line; Ctrl-D on an empty line quits. Commands:
  /reset         start over (from --state-in or /load, with the system prompt)
  /undo          take back the last turn          /retry       sample the last reply anew
  /save FILE     save the state (generate --state-in reads it)
  /load FILE     continue from a saved state      /stats       context, state, speed
  /system TEXT   set the system prompt and start over (/system: show it, /system -: none)
  /help          these commands                   /quit        leave (also Ctrl-D)
  //text         send a message that begins with /
History: $RWKV_CLI_HISTORY if set (empty: none), else $XDG_DATA_HOME/rwkv-cli/chat_history,
else ~/.local/share/rwkv-cli/chat_history. NO_COLOR or --color never turns off the dim text.

Piped (stdin is not a terminal): each line is one message (empty lines are skipped); each reply
is written to stdout followed by one blank line. --stats-json writes one JSON object per turn
on stderr: turn, prompt_tokens (read this turn), reply_tokens (the reply and its \\n\\n),
context_tokens, state_bytes, prefill_tokens_per_second, decode_tokens_per_second,
peak_rss_bytes. Ctrl-C stops the reply, then the run (exit status 130, no --state-out).

Examples:
  rwkv-cli chat                                     the embedded demo model
  rwkv-cli chat -m rwkv7-g1-1.5b --think on --system 'You are terse.'
  printf 'Hi!\\nWhat is 2+2?\\n' | rwkv-cli chat -m rwkv7-g1-0.4b --stats-json

Environment: RWKV_CLI_HISTORY, XDG_DATA_HOME, HOME (history); NO_COLOR (dim text);
RWKV_CLI_CACHE or XDG_CACHE_HOME (the embedded model and the weight cache); RWKV_CLI_WEIGHT_CACHE_MAX; HF_HOME, HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS (Hub models); RWKV_NO_AVX512,
RWKV_NO_VNNI, RWKV_NO_BF16, RWKV_NO_AMX, RWKV_NO_SIMD (force slower kernels).
Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 130 interrupted.";

#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct ChatArgs {
    #[command(flatten)]
    pub load: ModelArgs,
    /// System prompt: `System: TEXT\n\n` is read before the first turn.
    #[arg(long, allow_hyphen_values = true)]
    pub system: Option<String>,
    /// Reasoning: off (`Assistant:`), on (`Assistant: <think`), skip (G1's empty reasoning
    /// block, `Assistant: <think>\n</think`).
    #[arg(long, default_value = "off", value_parser = super::named::<Think>(&["off", "on", "skip"]), hide_possible_values = true)]
    pub think: Think,
    /// Show the reasoning on stdout when piped (--think on); it is always shown on a terminal.
    #[arg(long)]
    pub show_thinking: bool,
    /// Tokens per reply at most (then the turn is ended for the model).
    #[arg(long, short = 'n', default_value_t = 1000, allow_negative_numbers = true, value_parser = super::count)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (after the penalties).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability (1 = off).
    #[arg(long, default_value_t = 0.3)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::count)]
    pub top_k: usize,
    /// Min-p: drop the tokens less than P times as likely as the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub min_p: f32,
    /// Add VALUE to token ID's logit (`-inf` bans it); may be repeated.
    #[arg(long, value_name = "ID=VALUE", value_parser = super::generate::logit_bias_arg)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the sampler's random generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Subtracted from the logit of every token already in the reply.
    #[arg(long, default_value_t = 0.5)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per (decayed) occurrence in the reply.
    #[arg(long, default_value_t = 0.5)]
    pub frequency_penalty: f32,
    /// Every token's occurrence count is multiplied by this at each new token.
    #[arg(long, default_value_t = 0.996)]
    pub penalty_decay: f32,
    /// Tokens per chunk of the sequence path (messages).
    #[arg(long, default_value_t = models::DEFAULT_CHUNK, allow_negative_numbers = true, value_parser = super::count)]
    pub chunk: usize,
    /// Turns that /undo and /retry can go back (one state kept per turn).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = super::count)]
    pub undo_depth: usize,
    /// Start from a state saved by --state-out, /save or `generate --state-out` (it must end
    /// at the end of a turn, `\n\n`, to continue as a conversation).
    #[arg(long, value_name = "FILE", conflicts_with = "init_state")]
    pub state_in: Option<String>,
    #[command(flatten)]
    pub init: InitStateArgs,
    /// Save the conversation's state at the end (the file of `generate --state-in`).
    #[arg(long, value_name = "FILE")]
    pub state_out: Option<String>,
    /// No banner and no statistics on stderr.
    #[arg(long, short, conflicts_with = "stats_json")]
    pub quiet: bool,
    /// Write the statistics of each turn as one JSON object per line on stderr.
    #[arg(long)]
    pub stats_json: bool,
}

/// Whether a turn is running (piped mode: Ctrl-C between turns ends the run at once).
static BUSY: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler: it sets the CLI's interrupt flag (which stops the reply being
/// written); when `exit_when_idle`, a Ctrl-C outside a turn (waiting for input) ends the process
/// with status 130.
fn catch_ctrl_c(exit_when_idle: bool) {
    super::catch_interrupt_then(move || {
        if exit_when_idle && !BUSY.load(Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Dim text (ANSI) where `--color` and NO_COLOR allow it (see `cli::color_for`).
#[derive(Clone, Copy)]
struct Style {
    out: bool,
    err: bool,
}

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Style {
    fn detect() -> Self {
        Style {
            out: super::color_stdout(),
            err: super::color_stderr(),
        }
    }

    /// A dim line on stderr.
    fn note(&self, text: &str) {
        if self.err {
            crate::errln!("{DIM}{text}{RESET}");
        } else {
            crate::errln!("{text}");
        }
    }
}

/// Model bytes made safe for a terminal: control characters other than newline and tab are
/// shown as `^X` instead of being obeyed (a model must not move the cursor or set colours).
fn terminal_safe(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' | b'\t' => v.push(b),
            0..=0x1f => v.extend_from_slice(&[b'^', b + 0x40]),
            0x7f => v.extend_from_slice(b"^?"),
            _ => v.push(b),
        }
    }
    v
}

/// Everything a chat session holds besides the conversation.
struct Session {
    conv: Conversation,
    sampler: Sampler,
    args: ChatArgs,
    ckpt: rwkv_cli::checkpoint::Checkpoint,
    model_name: String,
    dtype: Format,
    fingerprint: Option<u64>,
    style: Style,
}

impl Session {
    fn cfg(&self) -> &models::Config {
        self.conv.model().config()
    }

    fn fingerprint(&mut self) -> Result<u64> {
        if let Some(f) = self.fingerprint {
            return Ok(f);
        }
        let f = self.ckpt.fingerprint()?;
        self.fingerprint = Some(f);
        Ok(f)
    }

    fn save(&mut self, path: &str) -> Result<u64> {
        let Some(saved) = self.conv.saved_state() else {
            anyhow::bail!("nothing has been read yet: there is no state to save");
        };
        let f = self.fingerprint()?;
        let cfg = self.cfg().clone();
        state_file::save(Path::new(path), &cfg, f, &saved)?;
        Ok(saved.tokens)
    }

    fn load(&mut self, path: &str) -> Result<u64> {
        let f = self.fingerprint()?;
        let saved = state_file::load(Path::new(path), self.cfg(), f)?;
        let tokens = saved.tokens;
        self.conv.load(saved);
        Ok(tokens)
    }

    /// The stats of a turn: a JSON line (--stats-json) or, on a terminal, a dim line.
    fn turn_stats(&self, s: &TurnStats, terminal: bool) {
        let cfg = self.cfg();
        if self.args.stats_json {
            let v = serde_json::json!({
                "turn": s.turn,
                "prompt_tokens": s.prompt_tokens,
                "reply_tokens": s.reply_tokens,
                "context_tokens": s.context_tokens,
                "state_bytes": cfg.state_bytes(),
                "prefill_tokens_per_second": s.prefill_tokens_per_second(),
                "decode_tokens_per_second": s.decode_tokens_per_second(),
                "peak_rss_bytes": peak_rss_bytes(),
            });
            crate::errln!("{v}");
        } else if terminal && !self.args.quiet {
            let kv = cfg.kv_cache_bytes(s.context_tokens as usize, models::KV_BYTES_PER_ELEMENT);
            self.style.note(&format!(
                "[context {} tokens · state {} (a transformer's f32 KV cache: {}) · read {} tok at {:.0} tok/s · reply {} tok at {:.1} tok/s · first token after {:.1} ms]",
                s.context_tokens,
                human_bytes(cfg.state_bytes() as u64),
                human_bytes(kv),
                s.prompt_tokens,
                s.prefill_tokens_per_second(),
                s.reply_tokens,
                s.decode_tokens_per_second(),
                s.first_token_secs * 1000.0,
            ));
        }
    }

    /// The `/stats` block (and the piped run's closing line).
    fn summary(&self) -> String {
        let cfg = self.cfg();
        let ctx = self.conv.context_tokens();
        let kv = cfg.kv_cache_bytes(ctx as usize, models::KV_BYTES_PER_ELEMENT);
        let mut s = format!(
            "model      RWKV {} {} params, {} ({})\n\
             turns      {} ({} can be undone)\n\
             context    {} tokens\n\
             state      {} whatever the context length\n\
             KV cache   a softmax transformer of this depth and width would hold {} (f32) for {} tokens\n",
            cfg.version,
            human_count(cfg.n_params),
            self.dtype.name(),
            self.model_name,
            self.conv.turn_count(),
            self.conv.turns().count(),
            ctx,
            human_bytes(cfg.state_bytes() as u64),
            human_bytes(kv),
            ctx,
        );
        if let Some(t) = self.conv.last_turn() {
            let st = &t.stats;
            s += &format!(
                "last turn  read {} tokens at {:.0} tok/s, reply {} tokens at {:.1} tok/s, first token after {:.1} ms\n",
                st.prompt_tokens,
                st.prefill_tokens_per_second(),
                st.reply_tokens,
                st.decode_tokens_per_second(),
                st.first_token_secs * 1000.0
            );
        }
        s += &format!(
            "peak RSS   {}\n",
            peak_rss_bytes()
                .map(human_bytes)
                .unwrap_or_else(|| "n/a".into())
        );
        s
    }
}

pub fn run(args: ChatArgs) -> Result<()> {
    let sampler_cfg = SamplerConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        logit_bias: args.logit_bias.clone(),
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        penalty_decay: args.penalty_decay,
        seed: args.seed,
    };
    if let Err(e) = sampler_cfg.validate() {
        rwkv_cli::usage_bail!("{e}");
    }
    if args.chunk == 0 {
        rwkv_cli::usage_bail!("--chunk must be at least 1");
    }
    if args.max_tokens == 0 {
        rwkv_cli::usage_bail!("--max-tokens must be at least 1");
    }
    if let Some(p) = &args.state_out {
        output_file::check("--state-out", p)?;
        if output_file::is_stdout(std::path::Path::new(p)) {
            rwkv_cli::usage_bail!("--state-out {p} is stdout, where the replies go");
        }
    }
    let (loaded, tok) = args.load.load()?;
    if let Err(e) = sampler_cfg.validate_vocab(loaded.config.vocab_size) {
        rwkv_cli::usage_bail!("{e}");
    }
    let dtype = loaded.format;
    let ckpt = loaded.checkpoint;
    let model: Arc<dyn Model> = Arc::from(loaded.model);
    let opts = ChatOptions {
        think: args.think,
        max_reply_tokens: args.max_tokens,
        chunk: args.chunk,
        undo_depth: args.undo_depth,
    };
    let start = args.init.load(model.as_ref())?;
    let mut conv = Conversation::new(model, Arc::from(tok), opts);
    if let Some(state) = start {
        conv.start_from(state);
    }
    let interactive = std::io::stdin().is_terminal();
    let mut s = Session {
        conv,
        sampler: Sampler::new(sampler_cfg),
        model_name: args
            .load
            .model
            .clone()
            .unwrap_or_else(|| rwkv_cli::default_model::NAME.to_string()),
        args,
        ckpt,
        dtype,
        fingerprint: None,
        style: Style::detect(),
    };
    if let Some(p) = s.args.state_in.clone() {
        s.load(&p).context("--state-in")?;
    }
    catch_ctrl_c(!interactive);
    BUSY.store(true, Ordering::SeqCst);
    if let Some(sys) = s.args.system.clone() {
        if !s
            .conv
            .set_system(Some(sys.as_bytes()), super::interrupt_flag())?
        {
            crate::errln!("interrupted while reading the system prompt");
            std::process::exit(130);
        }
    }
    let interrupted = if interactive {
        interactive_loop(&mut s)?;
        false
    } else {
        match piped(&mut s) {
            // The reader of the replies went away: the conversation up to the last whole turn
            // (the one cut off is taken back) is still saved, as generate saves its state.
            Err(e) if e.chain().any(|c| c.is::<super::ReaderGone>()) => {
                if let Some(p) = s.args.state_out.clone() {
                    if s.conv.saved_state().is_some() {
                        s.save(&p).context("--state-out")?;
                    } else {
                        crate::errln!(
                            "note: --state-out not written: the reader of stdout went away before a turn ended"
                        );
                    }
                }
                return Err(e);
            }
            r => r?,
        }
    };
    if let Some(p) = s.args.state_out.clone() {
        if interrupted {
            crate::errln!("interrupted: --state-out not written");
        } else if s.conv.saved_state().is_none() {
            let kept = if Path::new(&p).exists() {
                " (the file there is left as it was)"
            } else {
                ""
            };
            anyhow::bail!(
                "--state-out {p} not written: the conversation read nothing, so there is no state to save{kept}"
            );
        } else {
            s.save(&p).context("--state-out")?;
        }
    }
    if interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// Piped mode: one message per line. Returns whether Ctrl-C stopped it.
fn piped(s: &mut Session) -> Result<bool> {
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    let show_thinking = s.args.show_thinking;
    let think = s.args.think;
    loop {
        line.clear();
        BUSY.store(false, Ordering::SeqCst);
        if super::interrupted() {
            return Ok(true);
        }
        let n = stdin
            .read_until(b'\n', &mut line)
            .context("cannot read stdin")?;
        BUSY.store(true, Ordering::SeqCst);
        if n == 0 {
            break;
        }
        if rwkv_cli::chat::clean_message(&line).is_empty() {
            continue;
        }
        let mut in_thinking = false;
        let mut thought = false;
        let Session { conv, sampler, .. } = s;
        let turn = conv.turn(&line, sampler, super::interrupt_flag(), &mut |p| match p {
            Piece::Thinking(b) if show_thinking => {
                if !in_thinking && !thought && think == Think::On {
                    super::print_bytes(b"<think")?;
                }
                in_thinking = true;
                thought = true;
                super::print_bytes(b)
            }
            Piece::Thinking(_) => Ok(()),
            Piece::Answer(b) => {
                if in_thinking {
                    in_thinking = false;
                    super::print_bytes(b"\n")?;
                }
                super::print_bytes(b)
            }
        })?;
        let Some(stats) = turn.map(|t| t.stats.clone()) else {
            return Ok(true); // Ctrl-C while the message was read
        };
        super::print_bytes(b"\n\n")?;
        s.turn_stats(&stats, false);
        if super::interrupted() {
            return Ok(true);
        }
    }
    if !s.args.quiet && !s.args.stats_json {
        let cfg = s.cfg();
        let ctx = s.conv.context_tokens();
        crate::errln!(
            "[RWKV {} {} params, {}] {} turns, context {} tokens in a state of {} (a transformer's f32 KV cache: {}) | peak RSS {}",
            cfg.version,
            human_count(cfg.n_params),
            s.dtype.name(),
            s.conv.turn_count(),
            ctx,
            human_bytes(cfg.state_bytes() as u64),
            human_bytes(cfg.kv_cache_bytes(ctx as usize, models::KV_BYTES_PER_ELEMENT)),
            peak_rss_bytes()
                .map(human_bytes)
                .unwrap_or_else(|| "n/a".into())
        );
    }
    Ok(false)
}

/// The line editor's helper: a line ending in `\` continues on the next line.
struct InputHelper;

impl rustyline::completion::Completer for InputHelper {
    type Candidate = String;
}
impl rustyline::hint::Hinter for InputHelper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for InputHelper {}
impl rustyline::validate::Validator for InputHelper {
    fn validate(
        &self,
        ctx: &mut rustyline::validate::ValidationContext,
    ) -> rustyline::Result<rustyline::validate::ValidationResult> {
        use rustyline::validate::ValidationResult;
        Ok(if ctx.input().ends_with('\\') {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}
impl rustyline::Helper for InputHelper {}

/// The history file: `$RWKV_CLI_HISTORY` (empty: none), else the user's data directory.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RWKV_CLI_HISTORY") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("rwkv-cli").join("chat_history"))
}

/// What the text of the editor means: continuation backslashes become plain newlines.
fn joined(line: &str) -> String {
    line.replace("\\\n", "\n")
}

const PROMPT: &str = "> ";

fn interactive_loop(s: &mut Session) -> Result<()> {
    use rustyline::error::ReadlineError;
    use rustyline::{Cmd, EventHandler, KeyCode, KeyEvent, Modifiers};
    // The editor draws on the terminal itself (/dev/tty), so that `chat > log.txt` or
    // `chat | tee log.txt` keeps its prompt and echo on the screen and only replies in stdout.
    let config = rustyline::Config::builder()
        .max_history_size(1000)?
        .auto_add_history(false)
        .behavior(rustyline::Behavior::PreferTerm)
        .build();
    let mut rl: rustyline::Editor<InputHelper, rustyline::history::FileHistory> =
        rustyline::Editor::with_config(config)?;
    rl.set_helper(Some(InputHelper));
    rl.bind_sequence(
        KeyEvent(KeyCode::Enter, Modifiers::ALT),
        EventHandler::Simple(Cmd::Newline),
    );
    let history = history_path();
    if let Some(p) = &history {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if p.exists() {
            if let Err(e) = rl.load_history(p) {
                s.style
                    .note(&format!("(cannot read the history {}: {e})", p.display()));
            }
        }
    }
    if !s.args.quiet {
        let cfg = s.cfg();
        s.style.note(&format!(
            "rwkv-cli chat: RWKV {} {} params ({}), state {}, think {}. /help for commands, Ctrl-D to quit.",
            cfg.version,
            human_count(cfg.n_params),
            s.model_name,
            human_bytes(cfg.state_bytes() as u64),
            s.args.think,
        ));
    }
    let mut history_ok = true;
    loop {
        BUSY.store(false, Ordering::SeqCst);
        let line = match rl.readline(PROMPT) {
            Ok(l) => joined(&l),
            Err(ReadlineError::Interrupted) => {
                s.style.note("(Ctrl-D or /quit to leave)");
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the terminal"),
        };
        BUSY.store(true, Ordering::SeqCst);
        super::clear_interrupt();
        if line.trim().is_empty() {
            continue;
        }
        if let (Some(p), true) = (&history, history_ok) {
            let _ = rl.add_history_entry(line.as_str());
            if let Err(e) = rl.append_history(p) {
                history_ok = false;
                s.style.note(&format!(
                    "(cannot write the history {}: {e}; set RWKV_CLI_HISTORY to another file, or empty for none)",
                    p.display()
                ));
            }
        }
        if !command(s, &line)? {
            break;
        }
    }
    Ok(())
}

/// Sends a message and shows the reply. `retry`: sample the last reply anew instead.
fn say(s: &mut Session, message: Option<&str>) -> Result<()> {
    let style = s.style;
    let think = s.conv.options().think;
    let mut dim = false;
    let mut started = false;
    let Session { conv, sampler, .. } = s;
    let mut show = |p: Piece<'_>| -> Result<()> {
        match p {
            Piece::Thinking(b) => {
                if !dim {
                    dim = true;
                    if style.out {
                        super::print_bytes(DIM.as_bytes())?;
                    }
                    if !started && think == Think::On {
                        super::print_bytes(b"<think")?;
                    }
                }
                started = true;
                super::print_bytes(&terminal_safe(b))
            }
            Piece::Answer(b) => {
                if dim {
                    dim = false;
                    if style.out {
                        super::print_bytes(RESET.as_bytes())?;
                    }
                    super::print_bytes(b"\n")?;
                }
                started = true;
                super::print_bytes(&terminal_safe(b))
            }
        }
    };
    let turn = match message {
        Some(m) => conv.turn(m.as_bytes(), sampler, super::interrupt_flag(), &mut show)?,
        None if !conv.can_undo() => {
            style.note("(nothing to retry)");
            return Ok(());
        }
        None => conv.retry(sampler, super::interrupt_flag(), &mut show)?,
    };
    if dim && style.out {
        super::print_bytes(RESET.as_bytes())?;
    }
    let Some(stats) = turn.map(|t| t.stats.clone()) else {
        style.note("(stopped before the reply: the message was not sent)");
        return Ok(());
    };
    if stats.stop == Some(StopReason::Cancelled) {
        super::print_bytes(b"\n")?;
        style.note("[stopped: the turn ends here; /undo takes it back, /retry samples it anew]");
    } else {
        super::print_bytes(b"\n")?;
    }
    s.turn_stats(&stats, true);
    Ok(())
}

/// A path typed at the prompt with a leading `~/` read as the home directory's, as a shell
/// would have expanded it on the command line.
fn home_expanded(path: &str) -> String {
    expand_home(path, std::env::var("HOME").ok().as_deref())
}

fn expand_home(path: &str, home: Option<&str>) -> String {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) if !h.is_empty() => format!("{}/{rest}", h.trim_end_matches('/')),
        _ => path.to_string(),
    }
}

/// Runs one line typed at the prompt. Returns `false` to quit.
fn command(s: &mut Session, line: &str) -> Result<bool> {
    if let Some(rest) = line.strip_prefix("//") {
        say(s, Some(&format!("/{rest}")))?;
        return Ok(true);
    }
    let Some(cmd) = line.strip_prefix('/') else {
        say(s, Some(line))?;
        return Ok(true);
    };
    let (name, arg) = match cmd.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (cmd.trim(), ""),
    };
    let style = s.style;
    match name {
        "quit" | "exit" | "q" => return Ok(false),
        "help" | "h" | "?" => {
            let help = AFTER_HELP
                .split("Commands:\n")
                .nth(1)
                .and_then(|c| c.split("History:").next())
                .unwrap_or("");
            super::print_bytes(help.as_bytes())?;
        }
        "reset" => {
            if s.conv.reset(super::interrupt_flag())? {
                style.note("(new conversation)");
            } else {
                style.note("(new conversation; the system prompt was not read: interrupted)");
            }
        }
        "undo" => match s.conv.undo() {
            Some(t) => {
                let m = String::from_utf8_lossy(&t.message);
                let short: String = m.chars().take(40).collect();
                let more = if m.chars().count() > 40 { "…" } else { "" };
                style.note(&format!(
                    "(took back turn {}: \"{short}{more}\"; context {} tokens)",
                    t.stats.turn,
                    s.conv.context_tokens()
                ));
            }
            None => style.note("(nothing to undo)"),
        },
        "retry" => say(s, None)?,
        "save" | "load" if arg.is_empty() => style.note(&format!("(usage: /{name} FILE)")),
        "save" => match s.save(&home_expanded(arg)) {
            Ok(n) => style.note(&format!("(saved the state after {n} tokens to {arg})")),
            Err(e) => style.note(&format!("(not saved: {e:#})")),
        },
        "load" => match s.load(&home_expanded(arg)) {
            Ok(n) => style.note(&format!(
                "(loaded the state after {n} tokens from {arg}; the conversation continues from it)"
            )),
            Err(e) => style.note(&format!("(not loaded: {e:#})")),
        },
        "system" => match arg {
            "" => match s.conv.system() {
                Some(t) => style.note(&format!("(system: {})", String::from_utf8_lossy(t))),
                None => style.note("(no system prompt)"),
            },
            _ => {
                let text = (arg != "-").then_some(arg.as_bytes());
                if s.conv.set_system(text, super::interrupt_flag())? {
                    style.note("(new conversation with this system prompt)");
                } else {
                    style.note("(interrupted: new conversation without a system prompt)");
                }
            }
        },
        "stats" => super::print_bytes(s.summary().as_bytes())?,
        _ => style.note(&format!(
            "(unknown command /{name}: /help lists them; //{name} sends it as a message)"
        )),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(terminal_safe(b"a\x1b[2Jb\n\tc\x7f"), b"a^[[2Jb\n\tc^?");
        assert_eq!(terminal_safe("é".as_bytes()), "é".as_bytes());
    }

    #[test]
    fn a_typed_path_starts_at_home_with_a_tilde() {
        assert_eq!(
            expand_home("~/x.state", Some("/home/e/")),
            "/home/e/x.state"
        );
        assert_eq!(expand_home("~/x.state", None), "~/x.state");
        assert_eq!(expand_home("~x/y", Some("/h")), "~x/y");
        assert_eq!(expand_home("a/~/b", Some("/h")), "a/~/b");
    }

    #[test]
    fn continuation_lines_become_newlines() {
        assert_eq!(joined("one\\\ntwo"), "one\ntwo");
        assert_eq!(joined("a\nb"), "a\nb");
    }
}
