//! `rwkv-cli generate` and its streams and files: closed and full streams, Ctrl-C during the
//! prompt, output files that are symbolic links, FIFOs or stdout, bad output paths caught
//! before any work, and the stats after `--state-in` and across weight formats.
//!
//! The fixture models have a 256-entry vocabulary (byte tokenizer: 256 logits, one token per
//! prompt byte); the embedded default model is used where a run must take a while.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Vocabulary of the fixtures and of the embedded model.
const VOCAB: usize = 256;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
    c.env("RWKV_CLI_CACHE", dir("cache"))
        .env("HF_HUB_OFFLINE", "1");
    c
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A fresh directory per test (`name`), under one per test process.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("rwkv-generate-io-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs with `stdin` piped in (closed after it), stdout and stderr captured.
fn run_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

fn run(args: &[&str]) -> Output {
    run_stdin(bin().args(args), b"")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stats JSON object: the last line of stderr.
fn stats_json(o: &Output) -> serde_json::Value {
    let e = stderr(o);
    let line = e.trim().lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: stderr {e:?}"))
}

/// Waits for `child`, killing it (and failing) after `limit`.
fn wait_for(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("rwkv-cli did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The next-token logits after `prompt` on the v7 fixture, written to a plain new file.
fn reference_logits(prompt: &str) -> Vec<u8> {
    let f = dir("reference").join(format!("{}.f32", prompt.len()));
    let o = run(&[
        "generate",
        "--model",
        &fixture("v7.safetensors"),
        "-p",
        prompt,
        "-n",
        "0",
        "--quiet",
        "--logits-out",
        &s(&f),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&f).unwrap();
    assert_eq!(bytes.len(), VOCAB * 4);
    bytes
}

// ---------------------------------------------------------------------------------------------
// closed and full streams

/// `rwkv-cli generate -p hi -n 1000 2>&1 | head -c 10`: stdout and stderr are one pipe whose
/// reader goes away; the stats line then goes to a closed stderr. That used to panic (exit 101).
#[test]
fn stdout_and_stderr_into_a_closed_pipe_end_quietly() {
    let o = Command::new("bash")
        .args([
            "-c",
            r#""$0" generate -p hi -n 1000 2>&1 | head -c 10 > /dev/null; exit "${PIPESTATUS[0]}""#,
            env!("CARGO_BIN_EXE_rwkv-cli"),
        ])
        .env("RWKV_CLI_CACHE", dir("cache"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// stderr closed before the run ends (its reader gone), stdout read: the text is complete and
/// the stats line is dropped without a panic.
#[test]
fn a_closed_stderr_loses_only_the_stats() {
    let mut child = bin()
        .args([
            "generate",
            "--model",
            &fixture("v7.safetensors"),
            "-p",
            "hi",
            "-n",
            "20",
            "--temperature",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // the reader of stderr goes away at once
    let mut text = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut text).unwrap();
    let status = wait_for(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "no panic (101) on a closed stderr");
    assert_eq!(text.len(), 20, "every generated byte still reaches stdout");
}

/// `> /dev/full`: exit 1 with one `error:` line; `2> /dev/full`: the run succeeds.
#[test]
fn a_full_stdout_fails_with_one_line_and_a_full_stderr_is_ignored() {
    let model = fixture("v7.safetensors");
    let args = ["generate", "--model", &model, "-p", "hi", "-n", "20"];
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = bin()
        .args(args)
        .stdin(Stdio::null())
        .stdout(full())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.starts_with("error: ") && e.contains("stdout"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    let o = bin()
        .args(args)
        .args(["--temperature", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "a stats line that cannot be written"
    );
    assert_eq!(o.stdout.len(), 20);
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C during the prompt

/// True once the process has a handler for SIGINT (the run installed its Ctrl-C handler, which
/// it does just before the prompt).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0) // SIGINT is signal 2
}

#[test]
fn ctrl_c_during_the_prompt_writes_no_state_and_reports_what_was_read() {
    let d = dir("sigint");
    // A 1 MB prompt: minutes for the embedded model (byte tokenizer: one token per byte).
    let text = std::fs::read(fixture("austen_heldout.txt")).unwrap();
    let prompt: Vec<u8> = text.iter().copied().cycle().take(1 << 20).collect();
    let prompt_file = d.join("prompt.txt");
    std::fs::write(&prompt_file, &prompt).unwrap();
    let state = d.join("partial.state");
    let logits = d.join("partial.f32");
    let mut child = bin()
        .args([
            "generate",
            "--prompt",
            "-",
            "-n",
            "10",
            "--chunk",
            "64",
            "--stats-json",
            "--state-out",
            &s(&state),
            "--logits-out",
            &s(&logits),
        ])
        .stdin(std::fs::File::open(&prompt_file).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while !catches_sigint(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no Ctrl-C handler after 60 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "ended before Ctrl-C");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300)); // some chunks of the prompt
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(&mut child, Duration::from_secs(60));
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(!state.exists(), "--state-out written after Ctrl-C: {e}");
    assert!(!logits.exists(), "--logits-out written after Ctrl-C: {e}");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "nothing but the prompt in the directory (no temporary file)"
    );
    assert!(
        e.contains("interrupted") && e.contains("--state-out") && e.contains("not written"),
        "says so: {e}"
    );
    assert!(o.stdout.is_empty(), "nothing generated");
    let v = stats_json(&o);
    let read = v["prompt_tokens"].as_u64().unwrap();
    assert!(
        read < prompt.len() as u64,
        "stats count the tokens actually read ({read}), not the whole prompt"
    );
    assert_eq!(read % 64, 0, "whole chunks of 64: {read}");
    assert_eq!(v["generated_tokens"], 0);
    assert_eq!(v["context_tokens"], read);
    assert_eq!(v["interrupted"], true);
}

// ---------------------------------------------------------------------------------------------
// output files: symbolic links, FIFOs, stdout, regular files

#[test]
fn a_symlinked_output_is_written_through_the_link() {
    let d = dir("symlink");
    let want = reference_logits("abc");
    let model = fixture("v7.safetensors");
    // A link to an existing file, by a relative path: the file gets the logits, the link stays.
    let real = d.join("real.f32");
    std::fs::write(&real, b"old contents").unwrap();
    let link = d.join("link.f32");
    std::os::unix::fs::symlink("real.f32", &link).unwrap();
    let o = run(&[
        "generate",
        "--model",
        &model,
        "-p",
        "abc",
        "-n",
        "0",
        "--quiet",
        "--logits-out",
        &s(&link),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.f32"));
    assert_eq!(
        std::fs::read(&real).unwrap(),
        want,
        "written through the link"
    );

    // A dangling link into another directory: the file is created where it points.
    let other = dir("symlink-target");
    let target = other.join("state.bin");
    let dangling = d.join("dangling.state");
    std::os::unix::fs::symlink(&target, &dangling).unwrap();
    let o = run(&[
        "generate",
        "--model",
        &model,
        "-p",
        "abc",
        "-n",
        "0",
        "--quiet",
        "--state-out",
        &s(&dangling),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata(&target).unwrap().is_file());
    // And the state reads back through the link.
    let o = run(&[
        "generate",
        "--model",
        &model,
        "--state-in",
        &s(&dangling),
        "--prompt",
        "",
        "-n",
        "0",
        "--quiet",
        "--logits-out",
        &s(&d.join("resumed.f32")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("resumed.f32")).unwrap(), want);
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "no temporary file left beside the target"
    );
}

#[test]
fn a_fifo_output_delivers_the_bytes_to_its_reader() {
    let d = dir("fifo");
    let want = reference_logits("abc");
    let fifo = d.join("logits.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // The reader: a thread, so that a FIFO replaced by a file fails the test, not hangs it.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let r = std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut got));
        let _ = tx.send(r.map(|_| got));
    });
    let o = run(&[
        "generate",
        "--model",
        &fixture("v7.safetensors"),
        "-p",
        "abc",
        "-n",
        "0",
        "--quiet",
        "--logits-out",
        &s(&fifo),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the FIFO's reader received nothing (was the FIFO replaced?)")
        .unwrap();
    assert_eq!(got, want, "the reader gets exactly the logits");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO is still a FIFO"
    );
}

#[test]
fn logits_out_dash_writes_exactly_the_logits_to_stdout() {
    let want = reference_logits("abc");
    let model = fixture("v7.safetensors");
    let d = dir("dash");
    let o = run_stdin(
        bin().current_dir(&d).args([
            "generate",
            "--model",
            &model,
            "-p",
            "abc",
            "-n",
            "0",
            "--logits-out",
            "-",
        ]),
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), VOCAB * 4);
    assert_eq!(o.stdout, want);
    assert!(!d.join("-").exists(), "no file named -");
    // With generated text the two would mix: a usage error, before any output.
    let o = run(&[
        "generate",
        "--model",
        &model,
        "-p",
        "abc",
        "-n",
        "5",
        "--logits-out",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("--max-tokens 0"), "{}", stderr(&o));
}

#[test]
fn a_regular_output_file_is_replaced_atomically_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let d = dir("regular");
    let want = reference_logits("abc");
    let f = d.join("out.f32");
    std::fs::write(&f, vec![7u8; 5000]).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run(&[
        "generate",
        "--model",
        &fixture("v7.safetensors"),
        "-p",
        "abc",
        "-n",
        "0",
        "--quiet",
        "--logits-out",
        &s(&f),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&f).unwrap(),
        want,
        "replaced, not overwritten"
    );
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        1,
        "no temporary file"
    );
}

// ---------------------------------------------------------------------------------------------
// bad output paths: caught before any work

#[test]
fn a_bad_output_path_fails_before_anything_runs() {
    let d = dir("badpath");
    let model = fixture("v7.safetensors");
    let missing_dir = d.join("no-such-dir").join("x.state");
    let a_dir = d.join("a-dir");
    std::fs::create_dir_all(&a_dir).unwrap();
    let with_slash = format!("{}/", s(&a_dir));
    let cases: [(&str, String, &str); 5] = [
        ("--state-out", s(&missing_dir), "does not exist"),
        ("--state-out", s(&a_dir), "directory"),
        ("--state-out", with_slash, "directory"),
        ("--logits-out", s(&missing_dir), "does not exist"),
        ("--logits-out", s(&a_dir), "directory"),
    ];
    for (option, path, why) in &cases {
        let o = run(&[
            "generate",
            "--model",
            &model,
            "-p",
            "x",
            "-n",
            "50",
            "--temperature",
            "0",
            option,
            path,
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{option} {path}: {e}");
        assert!(o.stdout.is_empty(), "{option} {path}: generated first");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(
            e.contains(option) && e.contains(path.as_str()) && e.contains(why),
            "names the option, the path and why: {e}"
        );
        assert!(!e.contains("os error 20"), "{e}");
    }
    // Before the model is even looked at: a missing model is not what is reported.
    let o = run(&[
        "generate",
        "--model",
        "/nonexistent/model.pth",
        "-p",
        "x",
        "--state-out",
        &s(&missing_dir),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--state-out"), "{}", stderr(&o));
    // The checks leave nothing behind.
    assert_eq!(std::fs::read_dir(&a_dir).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// stats

#[test]
fn the_kv_cache_figure_is_f32_whatever_the_weight_format() {
    let model = fixture("v7.safetensors");
    let mut seen = Vec::new();
    for format in [
        ["--dtype", "f32"],
        ["--dtype", "bf16"],
        ["--dtype", "f16"],
        ["--quant", "q8_0"],
        ["--quant", "q4_0"],
    ] {
        let o = run(&[
            "generate",
            "--model",
            &model,
            "-p",
            "hello",
            "-n",
            "5",
            "--temperature",
            "0",
            "--stats-json",
            format[0],
            format[1],
        ]);
        assert!(o.status.success(), "{format:?}: {}", stderr(&o));
        let v = stats_json(&o);
        assert_eq!(v["model"]["dtype"], format[1]);
        assert_eq!(v["context_tokens"], 10);
        seen.push(v["kv_cache_bytes"].as_u64().unwrap());
    }
    // 2 (K, V) × 2 layers × width 32 × 10 tokens × 4 bytes, for every format.
    assert_eq!(seen, vec![2 * 2 * 32 * 10 * 4; 5], "{seen:?}");
    // The text line says which precision the comparison assumes.
    let o = run(&[
        "generate", "--model", &model, "-p", "hello", "-n", "5", "--quant", "q4_0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("f32 KV cache at 10 tokens: 5.0 KiB"), "{e}");
}

#[test]
fn the_context_after_state_in_counts_the_saved_tokens() {
    let d = dir("context");
    let model = fixture("v7.safetensors");
    let state = d.join("doc.state");
    let o = run(&[
        "generate",
        "--model",
        &model,
        "-p",
        "hello",
        "-n",
        "0",
        "--quiet",
        "--state-out",
        &s(&state),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let resume = |json: bool| {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--state-in",
            state.to_str().unwrap(),
            "-p",
            "abc",
            "-n",
            "4",
            "--temperature",
            "0",
        ];
        if json {
            args.push("--stats-json");
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let v = stats_json(&resume(true));
    // 5 saved + 3 prompt + 4 generated.
    assert_eq!(v["context_tokens"], 12, "{v}");
    assert_eq!(v["kv_cache_bytes"], 2 * 2 * 32 * 12 * 4);
    assert_eq!(v["prompt_tokens"], 3);
    assert_eq!(v["generated_tokens"], 4);
    assert_eq!(v["resumed_tokens"], 5);
    let e = stderr(&resume(false));
    assert!(e.contains("KV cache at 12 tokens"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// usage errors

#[test]
fn an_empty_prompt_from_stdin_is_a_usage_error() {
    let model = fixture("v7.safetensors");
    for extra in [&[][..], &["--prompt", "-"][..]] {
        let o = run_stdin(
            bin()
                .args(["generate", "--model", &model, "-n", "5"])
                .args(extra),
            b"",
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {e}");
        assert!(o.stdout.is_empty(), "nothing generated from an empty pipe");
        assert!(e.contains("stdin is empty"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    // `< /dev/null` as well.
    let o = bin()
        .args(["generate", "--model", &model, "-n", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // An explicit empty prompt still generates unconditionally.
    let o = run(&[
        "generate", "--model", &model, "--prompt", "", "-n", "5", "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout.len(), 5);
}

#[test]
fn an_empty_stop_string_is_a_usage_error() {
    let model = fixture("v7.safetensors");
    let o = run(&[
        "generate", "--model", &model, "-p", "x", "-n", "5", "--stop", "",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("--stop"), "{}", stderr(&o));
    // Next to a real one, too.
    let o = run(&[
        "generate", "--model", &model, "-p", "x", "-n", "5", "--stop", "\n", "--stop", "",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn quant_and_dtype_conflict() {
    let model = fixture("v7.safetensors");
    let o = run(&[
        "generate", "--model", &model, "-p", "x", "-n", "3", "--quant", "q4_0", "--dtype", "bf16",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    // Each alone is fine.
    for f in [["--quant", "q4_0"], ["--dtype", "bf16"]] {
        let o = run(&[
            "generate", "--model", &model, "-p", "x", "-n", "3", "--quiet", f[0], f[1],
        ]);
        assert!(o.status.success(), "{f:?}: {}", stderr(&o));
        assert_eq!(o.stdout.len(), 3);
    }
}

#[test]
fn help_describes_logits_on_stdout() {
    let o = run(&["generate", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = "`-` writes them to stdout, which needs --max-tokens 0";
    assert!(flat.contains(want), "--help lacks {want:?}:\n{help}");
}
