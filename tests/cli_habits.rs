//! The habits of a well-kept CLI (issue 18), end to end from the binary: `--logprobs` against
//! `--logits-out`, `--min-p` and `--logit-bias` (generate and chat), `-f/--file`, shell
//! completions and manual pages, `--version`, the help's examples / environment / exit codes,
//! and `--color` with NO_COLOR. (`tokenize`, `detokenize` and `generate --verbose-prompt` are
//! in `tokenize.rs`.)
//!
//! The fixture models have a 256-entry vocabulary (byte tokenizer), as has the embedded model.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::runs::{fails, ok, okb, run_in, unescape};
use common::{bin_offline, fixture, read_f32, run_offline, run_with_stdin, scratch, stderr};

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// logprobs, min-p, logit bias

/// log-softmax of `logits`, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().map(|&x| x as f64).fold(f64::MIN, f64::max);
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The next-token logits after `prompt` on the v7 fixture (`--logits-out`).
fn logits_after(prompt: &str) -> Vec<f32> {
    let f = scratch("habits-logits").join(format!("{}.f32", prompt.len()));
    let m = fixture("v7.safetensors");
    ok(&run_offline(&[
        "generate",
        "-m",
        &m,
        "-p",
        prompt,
        "-n",
        "0",
        "-q",
        "--logits-out",
        &s(&f),
    ]));
    read_f32(&f)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn logprobs_of_the_greedy_token_are_the_max_of_the_logits_log_softmax() {
    let prompt = "The quick brown";
    let m = fixture("v7.safetensors");
    let lsm = log_softmax(&logits_after(prompt));
    let best = argmax(&lsm);
    let out = scratch("habits").join("logprobs.jsonl");
    let o = run_offline(&[
        "generate",
        "-m",
        &m,
        "-p",
        prompt,
        "-n",
        "3",
        "--temperature",
        "0",
        "-q",
        "--logprobs",
        "5",
        "--logprobs-out",
        &s(&out),
    ]);
    let text = okb(&o);
    let lines = json_lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(lines.len(), 3, "one line per generated token");
    let first = &lines[0];
    assert_eq!(first["id"].as_u64().unwrap() as usize, best);
    let lp = first["logprob"].as_f64().unwrap();
    assert!((lp - lsm[best]).abs() < 1e-5, "{lp} vs {}", lsm[best]);
    // The greedy text is the tokens' bytes (escaped the same way only for printable ASCII).
    assert_eq!(text[0] as usize, best);
    assert_eq!(unescape(first["bytes"].as_str().unwrap()), [best as u8]);
    // top_logprobs: the 5 best of the same distribution, best first, with the same keys.
    let mut order: Vec<usize> = (0..lsm.len()).collect();
    order.sort_by(|&a, &b| lsm[b].total_cmp(&lsm[a]).then(a.cmp(&b)));
    let top = first["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    for (t, &want) in top.iter().zip(&order) {
        assert_eq!(t["id"].as_u64().unwrap() as usize, want);
        assert!((t["logprob"].as_f64().unwrap() - lsm[want]).abs() < 1e-5);
        assert!(t["bytes"].is_string());
    }
    assert_eq!(top[0]["id"], first["id"]);
    // Without --logprobs-out the lines go to stderr, before the stats.
    let o = run_offline(&[
        "generate",
        "-m",
        &m,
        "-p",
        prompt,
        "-n",
        "2",
        "--temperature",
        "0",
        "--logprobs",
        "0",
    ]);
    ok(&o);
    let on_stderr = json_lines(&stderr(&o));
    assert_eq!(on_stderr.len(), 2, "{}", stderr(&o));
    assert_eq!(on_stderr[0]["logprob"], first["logprob"]);
    assert_eq!(on_stderr[0]["top_logprobs"].as_array().unwrap().len(), 0);
}

#[test]
fn logprobs_are_of_the_model_before_logit_bias_and_the_bias_moves_the_greedy_choice() {
    let prompt = "Sampling";
    let m = fixture("v7.safetensors");
    let lsm = log_softmax(&logits_after(prompt));
    let best = argmax(&lsm);
    let mut rest = lsm.clone();
    rest[best] = f64::NEG_INFINITY;
    let second = argmax(&rest);
    let ban = format!("{best}=-inf");
    let o = run_offline(&[
        "generate",
        "-m",
        &m,
        "-p",
        prompt,
        "-n",
        "1",
        "--temperature",
        "0",
        "-q",
        "--logit-bias",
        &ban,
        "--logprobs",
        "1",
    ]);
    assert_eq!(okb(&o), [second as u8], "the banned token is not chosen");
    let l = &json_lines(&stderr(&o))[0];
    assert_eq!(l["id"].as_u64().unwrap() as usize, second);
    // Its logprob and the top alternative are the model's own, unbiased.
    assert!((l["logprob"].as_f64().unwrap() - lsm[second]).abs() < 1e-5);
    assert_eq!(l["top_logprobs"][0]["id"].as_u64().unwrap() as usize, best);
    // A large positive bias forces a token; repeated flags all apply.
    let o = run_offline(&[
        "generate",
        "-m",
        &m,
        "-p",
        prompt,
        "-n",
        "1",
        "--temperature",
        "0",
        "-q",
        "--logit-bias",
        "120=50",
        "--logit-bias",
        "121=60",
    ]);
    assert_eq!(okb(&o), [121]);
}

#[test]
fn min_p_one_samples_only_the_most_likely_token() {
    let prompt = "Min p";
    let m = fixture("v7.safetensors");
    let best = argmax(&log_softmax(&logits_after(prompt)));
    for seed in ["1", "2", "3", "4"] {
        let o = run_offline(&[
            "generate",
            "-m",
            &m,
            "-p",
            prompt,
            "-n",
            "1",
            "--temperature",
            "1.5",
            "--top-p",
            "1",
            "--min-p",
            "1",
            "--seed",
            seed,
            "-q",
        ]);
        assert_eq!(okb(&o), [best as u8], "seed {seed}");
    }
}

#[test]
fn sampling_flags_are_checked_in_one_line() {
    let m = fixture("v7.safetensors");
    for (args, needle) in [
        (vec!["--min-p", "1.5"], "--min-p must be in [0, 1]"),
        (vec!["--min-p=-0.1"], "--min-p"),
        (vec!["--logit-bias", "3"], "expected ID=VALUE"),
        (vec!["--logit-bias", "a=1"], "'a' is not a token id"),
        (vec!["--logit-bias", "1=x"], "'x' is not a number"),
        (vec!["--logit-bias", "256=1"], "--logit-bias 256"),
        (vec!["--logprobs-out", "x.jsonl"], "--logprobs"),
    ] {
        let mut a = vec!["generate", "-m", &m, "-p", "x", "-n", "1"];
        a.extend(&args);
        fails(&run_offline(&a), 2, needle);
        // chat has the same sampling flags (not --logprobs).
        if !args[0].starts_with("--logprobs") {
            let mut a = vec!["chat", "-m", &m];
            a.extend(&args);
            fails(&run_in(&a, b"hi\n"), 2, needle);
        }
    }
    fails(
        &run_offline(&[
            "generate",
            "-m",
            &m,
            "-p",
            "x",
            "--logprobs",
            "1",
            "--logprobs-out",
            "-",
        ]),
        2,
        "--logprobs-out -",
    );
}

#[test]
fn chat_min_p_one_gives_the_greedy_reply() {
    // After the penalties, min-p 1 keeps only the best token: the reply of temperature 0.
    let m = fixture("v7.safetensors");
    let reply = |extra: &[&str]| {
        let mut a = vec!["chat", "-m", &m, "-n", "12", "-q"];
        a.extend(extra);
        let mut c = bin_offline();
        c.env("RWKV_CLI_HISTORY", "").args(&a);
        okb(&run_with_stdin(&mut c, b"Hello there\n"))
    };
    let greedy = reply(&["--temperature", "0"]);
    let min_p = reply(&["--temperature", "1", "--top-p", "1", "--min-p", "1"]);
    assert!(!greedy.is_empty());
    assert_eq!(greedy, min_p);
    // A banned token never appears in the reply.
    let first = greedy[0];
    let ban = format!("{first}=-inf");
    let banned = reply(&["--temperature", "0", "--logit-bias", &ban]);
    assert!(!banned.contains(&first), "{banned:?}");
}

// ---------------------------------------------------------------------------------------------
// -f / --file

#[test]
fn file_prompt_comes_first_then_the_prompt() {
    let m = fixture("v7.safetensors");
    let dir = scratch("habits-file");
    let f = dir.join("doc.txt");
    std::fs::write(&f, "A document.\n").unwrap();
    let ids = |args: &[&str], stdin: &[u8]| -> String {
        let mut a = vec!["generate", "-m", &m, "-n", "0", "-q", "--verbose-prompt"];
        a.extend(args);
        let o = run_in(&a, stdin);
        ok(&o);
        stderr(&o)
            .lines()
            .find(|l| l.starts_with("prompt: "))
            .unwrap()
            .to_string()
    };
    let both = ids(&["-f", &s(&f), "-p", "Question?"], b"");
    assert_eq!(both, ids(&["-p", "A document.\nQuestion?"], b""));
    assert_eq!(
        ids(&["--file", &s(&f)], b"ignored"),
        ids(&["-p", "A document.\n"], b"")
    );
    // A prompt may begin with a dash (it was taken for an unknown flag).
    assert!(
        ids(&["-p", "- item"], b"").contains("45 32 105"),
        "the dash, then ' i'"
    );
    // `-` reads stdin, for the file or for the prompt.
    assert_eq!(ids(&["-f", "-", "-p", "Question?"], b"A document.\n"), both);
    assert_eq!(ids(&["-f", &s(&f), "-p", "-"], b"Question?"), both);
    // The logits agree too: the same tokens reached the model.
    let l1 = dir.join("1.f32");
    let l2 = dir.join("2.f32");
    ok(&run_offline(&[
        "generate",
        "-m",
        &m,
        "-n",
        "0",
        "-q",
        "-f",
        &s(&f),
        "-p",
        "Q",
        "--logits-out",
        &s(&l1),
    ]));
    ok(&run_offline(&[
        "generate",
        "-m",
        &m,
        "-n",
        "0",
        "-q",
        "-p",
        "A document.\nQ",
        "--logits-out",
        &s(&l2),
    ]));
    assert_eq!(std::fs::read(&l1).unwrap(), std::fs::read(&l2).unwrap());
    // Errors: a missing file (1), an empty one alone and stdin twice (2).
    fails(
        &run_offline(&["generate", "-m", &m, "-f", "/nonexistent/prompt.txt"]),
        1,
        "cannot read --file /nonexistent/prompt.txt",
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails(
        &run_offline(&["generate", "-m", &m, "-f", &s(&empty)]),
        2,
        "is empty",
    );
    fails(
        &run_in(&["generate", "-m", &m, "-f", "-", "-p", "-"], b"x"),
        2,
        "cannot both read stdin",
    );
}

// ---------------------------------------------------------------------------------------------
// completions and manual pages

#[test]
fn completion_scripts_are_generated_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = ok(&run_offline(&["completions", shell]));
        for word in ["generate", "tokenize", "logprobs", "min-p"] {
            assert!(out.contains(word), "{shell}: no {word}");
        }
    }
    let script = scratch("habits-completions").join("rwkv-cli.bash");
    std::fs::write(&script, ok(&run_offline(&["completions", "bash"]))).unwrap();
    let o = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(o.status.success(), "bash -n: {}", stderr(&o));
    // Sourced, it completes a subcommand's flags.
    // (the function registered for rwkv-cli, called as bash would on `rwkv-cli generate --logp<TAB>`)
    let probe = format!(
        "source {}; f=$(complete -p rwkv-cli | sed 's/.*-F \\([^ ]*\\).*/\\1/'); \
         COMP_WORDS=(rwkv-cli generate --logp); COMP_CWORD=2; COMP_LINE='rwkv-cli generate --logp'; \
         COMP_POINT=${{#COMP_LINE}}; \"$f\" rwkv-cli --logp generate; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        s(&script)
    );
    let o = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    let words = String::from_utf8_lossy(&o.stdout);
    assert!(
        words.lines().any(|w| w == "--logprobs"),
        "{words:?} {}",
        stderr(&o)
    );
    assert!(words.lines().any(|w| w == "--logprobs-out"), "{words:?}");
    // A flag's values, not file names (they were files for --dtype, --quant, --tokenizer and
    // --think).
    for (cmd, flag, want) in [
        ("generate", "--dtype", "bf16 f16 f32"),
        ("bench", "--quant", "q4_0 q8_0"),
        ("tokenize", "--tokenizer", "20b bytes world"),
        ("chat", "--think", "off on skip"),
    ] {
        let probe = format!(
            "source {}; f=$(complete -p rwkv-cli | sed 's/.*-F \\([^ ]*\\).*/\\1/'); \
             COMP_WORDS=(rwkv-cli {cmd} {flag} ''); COMP_CWORD=3; COMP_LINE='rwkv-cli {cmd} {flag} '; \
             COMP_POINT=${{#COMP_LINE}}; \"$f\" rwkv-cli '' {flag}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            s(&script)
        );
        let o = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
        let mut words: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect();
        words.sort();
        assert_eq!(words.join(" "), want, "{cmd} {flag}: {}", stderr(&o));
    }
    fails(&run_offline(&["completions", "tcsh"]), 2, "invalid value");
}

/// The roff of a page has the header, and NAME, SYNOPSIS and OPTIONS sections.
fn check_roff(page: &str, name: &str) {
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "{page:.200}"
    );
    assert!(
        page.contains(&format!(".TH {name} 1")),
        "{name}: {page:.300}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
        assert!(page.contains(section), "{name}: no {section}");
    }
}

/// Whether `man` is installed (the page is then also rendered with `man -l`).
fn have_man() -> bool {
    Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn man_pages_have_every_section_and_render_with_man() {
    let main = ok(&run_offline(&["man"]));
    check_roff(&main, "rwkv-cli");
    for sub in ["generate", "chat", "tokenize", "detokenize", "completions"] {
        assert!(main.contains(sub), "the main page lists {sub}");
    }
    let generate = ok(&run_offline(&["man", "generate"]));
    check_roff(&generate, "rwkv-cli-generate");
    // The page carries the flags and the after-help text (examples, exit status).
    for word in ["logprobs", "min\\-p", "Examples:", "Exit status"] {
        assert!(generate.contains(word), "no {word} in the generate page");
    }
    // Every page into a directory.
    let dir = scratch("habits-man");
    let o = run_offline(&["man", "--dir", &s(&dir)]);
    ok(&o);
    for page in [
        "rwkv-cli.1",
        "rwkv-cli-generate.1",
        "rwkv-cli-tokenize.1",
        "rwkv-cli-man.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        check_roff(&text, page.trim_end_matches(".1"));
    }
    fails(&run_offline(&["man", "nope"]), 2, "no command 'nope'");
    let page = s(&dir.join("rwkv-cli.1"));
    fails(&run_offline(&["man", "--dir", &page]), 1, "not a directory");
    // Lines after a table or an example, and the exit status, start a line of their own
    // (roff ran them into the line before).
    let chat = std::fs::read_to_string(dir.join("rwkv-cli-chat.1")).unwrap();
    for line in ["History: ", "Exit status: ", "The reply ends"] {
        assert!(
            chat.contains(&format!(".br\n{line}")),
            "no break before {line:?}"
        );
    }
    if !have_man() {
        eprintln!("man is not installed: checked the roff structure only");
        return;
    }
    let f = dir.join("rwkv-cli-generate.1");
    let o = Command::new("man")
        .arg("-l")
        .arg(&f)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "man -l: {}", stderr(&o));
    for word in [
        "NAME",
        "SYNOPSIS",
        "rwkv-cli-generate",
        "--logprobs",
        "--file",
    ] {
        assert!(
            text.contains(word),
            "man -l output lacks {word}: {text:.500}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// --version and --help

#[test]
fn version_names_the_commit_and_the_kernels() {
    let o = run_offline(&["--version"]);
    let v = ok(&o);
    assert!(
        v.starts_with(&format!("rwkv-cli {}\n", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let field = |name: &str| -> String {
        v.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(String::from))
            .unwrap_or_else(|| panic!("no {name} line in {v}"))
    };
    let commit = field("commit");
    assert!(
        commit == "unknown" || commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    let kernels = field("kernels");
    assert!(
        ["AVX-512", "AVX2", "portable"]
            .iter()
            .any(|k| kernels.starts_with(k)),
        "{kernels}"
    );
    field("cpu");
    // The kernels line follows what this machine will actually use.
    let o = run_with_stdin(bin_offline().env("RWKV_NO_SIMD", "1").arg("--version"), b"");
    assert!(ok(&o).contains("kernels: portable"), "{}", ok(&o));
    let o = run_with_stdin(
        bin_offline().env("RWKV_NO_AVX512", "1").arg("--version"),
        b"",
    );
    assert!(!ok(&o).contains("kernels: AVX-512"));
    // -V is one line with the commit.
    let short = ok(&run_offline(&["-V"]));
    assert_eq!(
        short.trim(),
        format!("rwkv-cli {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn every_help_ends_with_examples_environment_and_exit_codes() {
    let mut commands = vec![String::new()];
    let top = ok(&run_offline(&["--help"]));
    let list = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap();
    for l in list.lines() {
        if let Some(name) = l.split_whitespace().next().filter(|n| *n != "help") {
            commands.push(name.to_string());
        }
    }
    assert!(commands.len() >= 11, "{commands:?}");
    for c in &commands {
        let mut args: Vec<&str> = c.split(' ').filter(|a| !a.is_empty()).collect();
        args.push("--help");
        let help = ok(&run_offline(&args));
        let at = |what: &str| {
            help.rfind(what)
                .unwrap_or_else(|| panic!("`{c} --help` has no {what}"))
        };
        let (ex, env, exit) = (
            at("\nExamples:\n"),
            at("\nEnvironment:"),
            at("Exit status:"),
        );
        assert!(ex < env && env < exit, "{c}: sections out of order");
        let examples = help[ex..env]
            .lines()
            .filter(|l| l.trim_start().starts_with("rwkv-cli ") || l.contains("| rwkv-cli "))
            .count();
        assert!((2..=3).contains(&examples), "{c}: {examples} examples");
        // The exit codes end the text: nothing after them but their own lines.
        let tail = &help[exit..];
        assert!(
            !tail.trim_end().contains("\n\n"),
            "{c}: text after the exit codes"
        );
        assert!(
            tail.contains("0 success") && tail.contains("2 usage error"),
            "{c}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// colour and terminals

/// Whether `bytes` contain the dim escape sequence.
fn dimmed(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\x1b[2m")
}

#[test]
fn no_progress_bar_or_escape_codes_when_stderr_is_not_a_terminal() {
    // eval draws a progress bar on a terminal (see the next test, same text); into a pipe its
    // stderr is plain lines.
    let text = eval_text();
    for args in [
        vec!["eval", "--text", &s(&text)],
        vec!["bench", "--context", "2k", "--segments", "2"],
        vec!["--color", "always", "eval", "--text", &s(&text)],
    ] {
        let o = run_offline(&args);
        ok(&o);
        assert!(!o.stderr.contains(&b'\r'), "{args:?}: {}", stderr(&o));
        assert!(!o.stderr.contains(&0x1b), "{args:?}: {}", stderr(&o));
    }
}

/// A text that takes eval long enough to draw its progress bar on a terminal.
fn eval_text() -> std::path::PathBuf {
    let text = scratch("habits-eval").join("text.txt");
    std::fs::write(&text, "word ".repeat(8_000)).unwrap();
    text
}

use expectrl::{Expect, Session};

#[test]
fn progress_bar_is_drawn_on_a_terminal() {
    // The other side of the test above: the bar exists, so its absence in a pipe means
    // something. (--color never changes nothing here: the bar has no colour.)
    let text = eval_text();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", scratch("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("TERM", "xterm")
        .args(["--color", "never", "eval", "--text", &s(&text)]);
    let mut session = Session::spawn(c).unwrap();
    session.set_expect_timeout(Some(Duration::from_secs(120)));
    let caps = session.expect("bits per byte").unwrap();
    let shown = String::from_utf8_lossy(caps.before()).into_owned();
    assert!(shown.contains(" tokens "), "{shown:?}");
    assert!(shown.contains('\r') || shown.contains('\x1b'), "{shown:?}");
}

/// The start of an interactive chat in a pseudo-terminal (killed when dropped): what it
/// printed until the line editor's prompt.
fn pty_banner(args: &[&str], no_color: bool) -> Vec<u8> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", scratch("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RWKV_CLI_HISTORY", "")
        .env("TERM", "xterm")
        .env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    c.args(args).arg("chat");
    let mut s = Session::spawn(c).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(60)));
    let start = Instant::now();
    let caps = s.expect("> ").unwrap();
    assert!(start.elapsed() < Duration::from_secs(60));
    caps.before().to_vec()
}

#[test]
fn terminal_chat_dims_its_notes_unless_no_color_or_color_never() {
    assert!(dimmed(&pty_banner(&[], false)), "a terminal gets dim notes");
    assert!(!dimmed(&pty_banner(&[], true)), "NO_COLOR");
    assert!(
        !dimmed(&pty_banner(&["--color", "never"], false)),
        "--color never"
    );
    assert!(
        dimmed(&pty_banner(&["--color", "always"], true)),
        "--color always"
    );
    fails(
        &run_offline(&["--color", "sometimes", "info"]),
        2,
        "invalid value",
    );
}

#[test]
fn a_long_prompt_draws_a_progress_bar_on_a_terminal() {
    // generate reads a 40,000-token prompt (the byte model) with a bar on a terminal's stderr;
    // a short prompt, or stderr into a pipe, gets none (tests/generate_io.rs reads piped
    // stderr byte for byte).
    let text = eval_text();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", scratch("cache"))
        .env("HF_HUB_OFFLINE", "1")
        .env("TERM", "xterm")
        .args(["generate", "-n", "1", "-f", &s(&text)]);
    let mut session = Session::spawn(c).unwrap();
    session.set_expect_timeout(Some(Duration::from_secs(120)));
    let caps = session.expect("peak RSS").unwrap();
    let shown = String::from_utf8_lossy(caps.before()).into_owned();
    assert!(shown.contains("/40000 tokens"), "{shown:?}");
    assert!(shown.contains('\r') || shown.contains('\x1b'), "{shown:?}");
}
