//! `rwkv-cli chat` end to end: piped mode against `generate` over the same conversation text
//! (the embedded byte-level model, and a World-vocabulary model built from the v7 fixture),
//! the per-turn statistics, and the interactive mode through a pseudo-terminal (a streamed
//! reply, /undo, /retry, /save and /load, Ctrl-C during a reply, Ctrl-D).
//!
//! Every process a test starts is killed when the test lets go of it, and every wait is
//! bounded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fixture, scratch, stderr, world_model};

use rwkv_cli::chat::user_part;
use rwkv_cli::tokenizer::{self, TokenizerKind};

const LIMIT: Duration = Duration::from_secs(120);
const TWO_NEWLINES: &str = "\n\n";

fn bin() -> Command {
    let mut c = common::bin();
    c.env("HF_HUB_OFFLINE", "1")
        .env("RWKV_CLI_HISTORY", "")
        .env("NO_COLOR", "1");
    c
}

/// A child process that is killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` with `stdin` written to it (then closed); kills it and fails after `LIMIT`.
fn run_input(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = Killed(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut input = child.0.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "rwkv-cli ran past {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().unwrap();
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

fn chat(args: &[&str], messages: &[&str]) -> Output {
    let input: String = messages.iter().map(|m| format!("{m}\n")).collect();
    ok(run_input(bin().arg("chat").args(args), input.as_bytes()))
}

/// Splits piped chat output into replies (each is followed by one blank line).
fn replies(o: &Output) -> Vec<Vec<u8>> {
    let out = &o.stdout;
    assert!(
        out.ends_with(b"\n\n"),
        "output ends with a blank line: {out:?}"
    );
    let mut v = Vec::new();
    let mut rest = &out[..out.len() - 2];
    loop {
        match rest.windows(2).position(|w| w == b"\n\n") {
            Some(i) => {
                v.push(rest[..i].to_vec());
                rest = &rest[i + 2..];
            }
            None => {
                v.push(rest.to_vec());
                break;
            }
        }
    }
    v
}

/// The sampling flags both commands get: greedy, the chat demo's penalties.
const SAMPLING: [&str; 6] = [
    "--temperature",
    "0",
    "--presence-penalty",
    "0.5",
    "--frequency-penalty",
    "0.5",
];

/// A reply as shown: the fake think's `>` and the leading whitespace left out.
fn shown(raw: &[u8], skip: bool) -> Vec<u8> {
    let mut r = raw;
    if skip && r.first() == Some(&b'>') {
        r = &r[1..];
    }
    let start = r
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(r.len());
    r[start..].to_vec()
}

/// The replies `generate` gives, turn by turn, over the whole conversation text so far.
fn generate_replies(
    model: &[&str],
    system: Option<&str>,
    prefix: &str,
    messages: &[&str],
    max: usize,
) -> Vec<Vec<u8>> {
    let mut text: Vec<u8> = system
        .map(|s| format!("System: {s}\n\n").into_bytes())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in messages {
        text.extend(user_part(m.as_bytes()));
        text.extend(prefix.as_bytes());
        use std::os::unix::ffi::OsStrExt;
        let o = ok(run_input(
            bin()
                .arg("generate")
                .args(model)
                .args(SAMPLING)
                .args(["-q", "-n", &max.to_string(), "--stop", TWO_NEWLINES])
                .arg("--prompt")
                .arg(std::ffi::OsStr::from_bytes(&text)),
            b"",
        ));
        let mut raw = o.stdout;
        // Cut by the token limit after a newline: that newline begins the end of the turn.
        if raw.ends_with(b"\n") {
            raw.pop();
        }
        text.extend(&raw);
        text.extend(b"\n\n");
        out.push(shown(&raw, prefix.ends_with("</think")));
    }
    out
}

const MESSAGES: [&str; 4] = [
    "Good morning, Miss Bennet. How do you do?",
    "  What do you think of Mr. Darcy?\r",
    "And of Bath?",
    "Shall we walk to Meryton tomorrow?",
];

#[test]
fn piped_replies_equal_generate_over_the_whole_conversation() {
    let max = 80;
    let n = max.to_string();
    for (system, think, prefix) in [
        (None, "off", "Assistant:"),
        (Some("You are Elizabeth Bennet."), "off", "Assistant:"),
        (None, "skip", "Assistant: <think>\n</think"),
    ] {
        let mut args = vec!["--think", think, "--max-tokens", &n];
        args.extend(SAMPLING);
        if let Some(s) = system {
            args.extend(["--system", s]);
        }
        let got = replies(&chat(&args, &MESSAGES));
        let want = generate_replies(&[], system, prefix, &MESSAGES, max);
        assert_eq!(got.len(), MESSAGES.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                String::from_utf8_lossy(g),
                String::from_utf8_lossy(w),
                "turn {} (system {system:?}, think {think})",
                i + 1
            );
        }
        assert!(got.iter().any(|r| r.len() > 10), "real replies: {got:?}");
    }
}

/// `--undo-depth 0` keeps no snapshot, yet every turn runs and ends as with the default depth,
/// and `--state-out` is written (it once read each turn as interrupted: the turn was trimmed
/// away before its stats were read).
#[test]
fn undo_depth_zero_still_runs_every_turn() {
    let state = scratch("undo0").join("talk.state");
    let _ = std::fs::remove_file(&state);
    let mut args = vec!["--max-tokens", "40"];
    args.extend(SAMPLING);
    let want = replies(&chat(&args, &MESSAGES));
    let s = state.to_str().unwrap();
    args.extend(["--undo-depth", "0", "--state-out", s]);
    let got = replies(&chat(&args, &MESSAGES));
    assert_eq!(got, want);
    assert!(
        std::fs::metadata(&state).unwrap().len() > 0,
        "state written"
    );
}

/// A conversation that read nothing has no state: `--state-out` says so, and that a file
/// already there is left as it was (it said only "nothing has been read yet").
#[test]
fn state_out_of_an_empty_conversation_says_the_old_file_stays() {
    let state = scratch("empty-conv").join("old.state");
    std::fs::write(&state, b"earlier").unwrap();
    let o = run_input(bin().args(["chat", "--state-out"]).arg(&state), b"");
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("no state to save") && e.contains("left as it was"),
        "{e}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), b"earlier");
}

/// When the reader of the replies goes away, `--state-out` still gets the conversation up to
/// the last whole turn (it was skipped without a word), as `generate --state-out` writes its
/// state when its reader goes.
#[test]
fn a_reader_going_away_still_gets_the_state_of_the_whole_turns() {
    let state = scratch("reader-gone").join("talk.state");
    let _ = std::fs::remove_file(&state);
    let mut c = bin();
    c.args(["chat", "--max-tokens", "40", "--stats-json", "--state-out"])
        .arg(&state)
        .args(SAMPLING)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let input_text: String = MESSAGES.iter().map(|m| format!("{m}\n")).collect();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(input_text.as_bytes());
    });
    let mut err = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    // Read the first reply (up to its blank line), then go away.
    let mut out = child.stdout.take().unwrap();
    let (mut seen, mut buf) = (Vec::new(), [0u8; 256]);
    let start = Instant::now();
    while !seen.windows(2).any(|w| w == b"\n\n") {
        assert!(start.elapsed() < LIMIT, "no first reply");
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stdout closed before the first reply ended");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(out);
    let status = common::wait_or_kill(&mut child, LIMIT).expect("chat ended");
    let _ = writer.join();
    let errs = String::from_utf8_lossy(&errs.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{errs}");
    // Each whole turn printed its stats line; the turn cut off printed none.
    let last: serde_json::Value = serde_json::from_str(errs.lines().last().unwrap()).unwrap();
    let bytes = std::fs::read(&state).expect("--state-out written");
    // The state file's header holds the tokens read: those up to the last whole turn.
    let header = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
    let tokens = format!("\"tokens\":{}", last["context_tokens"]);
    assert!(header.contains(&tokens), "{tokens} in {header:?}");
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn world_tokenizer_parts_are_tokenized_on_their_own() {
    let model = p(&world_model());
    let max = 6;
    let messages = [
        "Hello there, how are you?",
        "Qu'est-ce que c'est ? 日本語のテキスト",
        "Tell me more.",
    ];
    let dir = scratch("world-chain");
    let chat_state = dir.join("chat.state");
    let mut args = vec![
        "-m".to_string(),
        model.clone(),
        "--max-tokens".into(),
        max.to_string(),
        "--state-out".into(),
        p(&chat_state),
    ];
    args.extend(SAMPLING.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let got = replies(&chat(&args, &messages));

    // The reference: each part read by its own `generate` run, chained through state files.
    let gen = |state_in: Option<&Path>, prompt: &[u8], n: usize, state_out: &Path| {
        use std::os::unix::ffi::OsStrExt;
        let mut c = bin();
        c.args(["generate", "-m", &model, "-q", "-n", &n.to_string()])
            .args(SAMPLING)
            .arg("--prompt")
            .arg(std::ffi::OsStr::from_bytes(prompt))
            .args(["--state-out", &p(state_out)]);
        if let Some(s) = state_in {
            c.args(["--state-in", &p(s)]);
        }
        ok(run_input(&mut c, b"")).stdout
    };
    let mut state: Option<PathBuf> = None;
    for (i, m) in messages.iter().enumerate() {
        let (a, b, c) = (
            dir.join(format!("{i}a")),
            dir.join(format!("{i}b")),
            dir.join(format!("{i}c")),
        );
        let user = user_part(m.as_bytes());
        gen(state.as_deref(), &user, 0, &a);
        let mut raw = gen(Some(&a), b"Assistant:", max, &b);
        assert!(
            !raw.windows(2).any(|w| w == b"\n\n"),
            "the reference assumes replies cut by the token limit: {raw:?}"
        );
        let end: &[u8] = if raw.ends_with(b"\n") {
            raw.pop();
            b"\n"
        } else {
            b"\n\n"
        };
        gen(Some(&b), end, 0, &c);
        assert_eq!(
            String::from_utf8_lossy(&got[i]),
            String::from_utf8_lossy(&shown(&raw, false)),
            "turn {}",
            i + 1
        );
        state = Some(c);
    }
    // Same state, same logits, same token count: the files are byte for byte the same.
    assert!(
        std::fs::read(&chat_state).unwrap() == std::fs::read(state.unwrap()).unwrap(),
        "chat's --state-out equals the chained generate runs' state"
    );
}

fn stats_lines(o: &Output) -> Vec<serde_json::Value> {
    stderr(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn turn_twenty_reads_only_its_own_tokens() {
    let messages: Vec<String> = (1..=20)
        .map(|i| format!("This is message number {i}, about the weather at Longbourn."))
        .collect();
    let m: Vec<&str> = messages.iter().map(|s| s.as_str()).collect();
    let o = chat(&["--stats-json", "--max-tokens", "24", "--seed", "3"], &m);
    let stats = stats_lines(&o);
    assert_eq!(stats.len(), 20);
    let keys: Vec<&str> = stats[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut want_keys = vec![
        "turn",
        "prompt_tokens",
        "reply_tokens",
        "context_tokens",
        "state_bytes",
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "peak_rss_bytes",
    ];
    want_keys.sort();
    assert_eq!(keys, want_keys);
    let tok = tokenizer::load(TokenizerKind::Bytes).unwrap();
    let own = |msg: &str| {
        tok.encode(&user_part(msg.as_bytes())).unwrap().len()
            + tok.encode(b"Assistant:").unwrap().len()
    };
    let u = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let mut context = 0;
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(u(s, "turn"), i as u64 + 1);
        assert_eq!(u(s, "prompt_tokens"), own(m[i]) as u64, "turn {}", i + 1);
        assert!(u(s, "reply_tokens") >= 1);
        assert_eq!(
            u(s, "context_tokens"),
            context + u(s, "prompt_tokens") + u(s, "reply_tokens")
        );
        assert!(u(s, "context_tokens") > context);
        context = u(s, "context_tokens");
        assert!(s["prefill_tokens_per_second"].as_f64().unwrap() > 0.0);
        assert!(s["decode_tokens_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(
            u(s, "state_bytes"),
            stats[0]["state_bytes"].as_u64().unwrap()
        );
    }
    // Turn 20 reads about as much as turn 1, while the context grew twentyfold.
    assert!(u(&stats[19], "prompt_tokens") < 2 * u(&stats[0], "prompt_tokens"));
    assert!(u(&stats[19], "context_tokens") > 15 * u(&stats[0], "context_tokens"));
}

#[test]
fn thinking_is_left_out_of_piped_output_unless_asked() {
    let args = ["--think", "on", "--max-tokens", "30", "--temperature", "0"];
    let hidden = chat(&args, &["Why is the sky blue?"]);
    let mut with = args.to_vec();
    with.push("--show-thinking");
    let shown = chat(&with, &["Why is the sky blue?"]);
    assert!(shown.stdout.starts_with(b"<think"), "{:?}", shown.stdout);
    assert!(!hidden.stdout.starts_with(b"<think"));
    // The embedded model never closes its reasoning in 30 tokens: nothing else is shown.
    assert_eq!(hidden.stdout, b"\n\n");
}

#[test]
fn empty_lines_are_skipped_and_usage_errors_exit_2() {
    let o = chat(&["--max-tokens", "5", "-q"], &["", "  ", "Hello", ""]);
    assert_eq!(replies(&o).len(), 1);
    assert!(o.stderr.is_empty(), "--quiet: {}", stderr(&o));
    for (args, msg) in [
        (vec!["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (vec!["--think", "maybe"], "unknown think mode"),
        (vec!["--top-p", "0"], "--top-p"),
    ] {
        let o = run_input(bin().arg("chat").args(&args), b"hi\n");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn piped_ctrl_c_ends_the_reply_and_the_run() {
    let mut child = Killed(
        bin()
            .args([
                "chat",
                "-m",
                &fixture("v7.safetensors"),
                "--max-tokens",
                "100000000",
            ])
            .args(["--state-out", &p(&scratch("sigint").join("never.state"))])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hi\n").unwrap();
    let mut out = child.0.stdout.take().unwrap();
    let mut first = [0u8; 64];
    out.read_exact(&mut first).unwrap(); // the reply is streaming
    let pid = child.0.id().to_string();
    let k = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(k.success());
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "still running after Ctrl-C");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(stdin);
    let rest = reader.join().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        rest.ends_with(b"\n\n"),
        "the reply is closed by a blank line"
    );
    assert!(!scratch("sigint").join("never.state").exists());
}

// ---------------------------------------------------------------------------------------------
// Interactive mode, through a pseudo-terminal.

use expectrl::session::OsSession;
use expectrl::{Expect, Session};

/// A chat in a pseudo-terminal (killed when dropped: expectrl's process ends it then).
fn pty(args: &[&str], history: &Path) -> OsSession {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", scratch("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RWKV_CLI_HISTORY", history)
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .arg("chat")
        .args(args);
    let mut s = Session::spawn(c).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s
}

/// With stdout redirected to a file, the line editor still draws on the terminal, and the file
/// gets the replies only (it once got the prompt, the echo and the editor's escape sequences).
#[test]
fn a_redirected_stdout_gets_replies_not_the_line_editor() {
    let dir = scratch("pty-redirect");
    let out = dir.join("replies.txt");
    let mut c = Command::new("sh");
    c.env("RWKV_CLI_CACHE", scratch("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RWKV_CLI_HISTORY", dir.join("history"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .args(["-c", "exec \"$0\" chat --max-tokens 40 \"$@\" > \"$OUT\""])
        .arg(env!("CARGO_BIN_EXE_rwkv-cli"))
        .args(SAMPLING)
        .env("OUT", &out);
    let mut s = Session::spawn(c).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    s.expect(PROMPT).unwrap();
    let shown = send(&mut s, "Good morning, Miss Bennet.");
    assert!(
        shown.contains("Good morning"),
        "the echo on the terminal: {shown:?}"
    );
    s.send_line("/quit").unwrap();
    assert_eq!(exit_code(&s), 0);
    let mut args = vec!["--max-tokens", "40"];
    args.extend(SAMPLING);
    // Piped mode ends a reply with a blank line; the terminal's ends it with one newline.
    let mut want = chat(&args, &["Good morning, Miss Bennet."]).stdout;
    assert_eq!(want.pop(), Some(b'\n'));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// Terminal text without escape sequences and carriage returns.
fn plain(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0x1b if bytes.get(i + 1) == Some(&b'[') => {
                i += 2;
                while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                    i += 1;
                }
                i += 1;
            }
            b'\r' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the line editor draws the prompt: at the start of a cleared line.
const PROMPT: &str = "\x1b[K> ";

/// Sends a line and returns what the terminal showed until the next prompt.
fn send(s: &mut OsSession, line: &str) -> String {
    s.send_line(line).unwrap();
    let caps = s.expect(PROMPT).unwrap();
    plain(caps.before())
}

/// Waits (bounded) for the process to exit; returns its exit code.
fn exit_code(s: &OsSession) -> i32 {
    use expectrl::process::unix::WaitStatus;
    let start = Instant::now();
    loop {
        match s.get_process().status().unwrap() {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::StillAlive => {}
            other => panic!("ended by {other:?}"),
        }
        assert!(start.elapsed() < LIMIT, "did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn interactive_chat_streams_undoes_retries_saves_and_loads() {
    let max = ["--max-tokens", "60"];
    let mut args = max.to_vec();
    args.extend(SAMPLING);
    let m = [
        "Good morning, Miss Bennet.",
        "What news from London?",
        "Who is coming to dinner?",
    ];
    // What piped mode answers: the same conversation must come out on the terminal.
    let piped: Vec<String> = replies(&chat(&args, &m))
        .iter()
        .map(|r| String::from_utf8(r.clone()).unwrap())
        .collect();
    let dir = scratch("pty");
    let history = dir.join("history");
    let saved = dir.join("after-two.state");
    let mut s = pty(&args, &history);
    s.expect(PROMPT).unwrap();

    let first = send(&mut s, m[0]);
    assert!(first.contains(&piped[0]), "{first:?} shows {:?}", piped[0]);
    assert!(first.contains("[context "), "a stats line: {first:?}");
    let undone = send(&mut s, "/undo");
    assert!(undone.contains("took back turn 1"), "{undone:?}");
    assert!(
        send(&mut s, m[0]).contains(&piped[0]),
        "the same reply after /undo"
    );
    let retried = send(&mut s, "/retry");
    assert!(
        retried.contains(&piped[0]),
        "greedy: /retry gives it again: {retried:?}"
    );
    assert!(
        send(&mut s, m[1]).contains(&piped[1]),
        "turn 2 continues the right state"
    );

    let said = send(&mut s, &format!("/save {}", p(&saved)));
    assert!(said.contains("saved the state"), "{said:?}");
    let third = send(&mut s, m[2]);
    assert!(third.contains(&piped[2]));
    let loaded = send(&mut s, &format!("/load {}", p(&saved)));
    assert!(loaded.contains("loaded the state"), "{loaded:?}");
    assert!(
        send(&mut s, m[2]).contains(&piped[2]),
        "the same reply after /load"
    );

    let stats = send(&mut s, "/stats");
    assert!(stats.contains("KV cache"), "{stats:?}");
    let unknown = send(&mut s, "/frobnicate");
    assert!(
        unknown.contains("unknown command /frobnicate"),
        "{unknown:?}"
    );
    assert!(send(&mut s, "/help").contains("/retry"));
    let sys = send(&mut s, "/system You are Jane Bennet.");
    assert!(
        sys.contains("new conversation with this system prompt"),
        "{sys:?}"
    );
    let sys = send(&mut s, "/system");
    assert!(sys.contains("(system: You are Jane Bennet.)"), "{sys:?}");

    // Multi-line messages: a trailing backslash continues the line, and so does Alt-Enter.
    for (first, second) in [("First line \\\r", "second line\r"), ("one\x1b\r", "two\r")] {
        s.send(first).unwrap();
        s.send(second).unwrap();
        let c = s.expect("[context").unwrap();
        let shown = plain(c.before());
        assert!(shown.contains(second.trim_end()), "{shown:?}");
        s.expect(PROMPT).unwrap();
    }
    let stats = send(&mut s, "/stats");
    assert!(
        stats.contains("turns      2 ("),
        "two turns, not four: {stats:?}"
    );

    s.send("\x04").unwrap(); // Ctrl-D
    assert_eq!(exit_code(&s), 0);

    // The saved state is generate's: it continues the conversation there too.
    let mut args = max.to_vec();
    args.extend(SAMPLING);
    let saved = p(&saved);
    args.extend(["--state-in", &saved]);
    let continued = chat(&args, &[m[2]]);
    assert_eq!(
        String::from_utf8(replies(&continued)[0].clone()).unwrap(),
        piped[2]
    );
    let h = std::fs::read_to_string(&history).unwrap();
    assert!(h.contains(m[0]) && h.contains("/undo"), "history: {h:?}");
}

#[test]
fn ctrl_c_stops_a_reply_not_the_program() {
    let dir = scratch("pty-ctrl-c");
    let model = fixture("v7.safetensors");
    // The fixture's replies can end by themselves (the first here after 29,051 tokens, 0.4 s at
    // full speed), and a Ctrl-C that comes after that finds the prompt, not a reply: with the
    // newline byte (its bytes tokenizer's token 10) banned, a reply cannot reach the `\n\n`
    // that ends a turn, so it runs until the Ctrl-C however late that comes.
    let mut s = pty(
        &[
            "-m",
            &model,
            "--max-tokens",
            "100000000",
            "--logit-bias",
            "10=-inf",
        ],
        &dir.join("history"),
    );
    s.expect(PROMPT).unwrap();
    // Ctrl-C on an empty line does not quit.
    s.send("\x03").unwrap();
    s.expect("Ctrl-D or /quit to leave").unwrap();
    for msg in ["hello", "hello again"] {
        s.send_line(msg).unwrap();
        s.expect(msg).unwrap();
        // Wait until the reply is streaming (its first byte after the echoed line, whatever
        // byte: `(?-u)`, as a reply need not be UTF-8), so that Ctrl-C reaches the reply, not
        // the line editor or the reading of the message.
        s.expect(expectrl::Regex("(?-u)\n[^\r\n]")).unwrap();
        s.send("\x03").unwrap();
        s.expect("[stopped").unwrap();
        s.expect(PROMPT).unwrap();
    }
    let undone = send(&mut s, "/undo");
    assert!(undone.contains("took back turn 2"), "{undone:?}");
    s.send("\x04").unwrap();
    assert_eq!(exit_code(&s), 0);
}
