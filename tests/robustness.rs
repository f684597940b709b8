//! The second robustness round (issue 16): broken numbers, odd files, honest byte counts.
//! Each test runs the real binary with a bound on its time (a hang fails the test).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::safetensors::st_edit;
use common::{bin_offline, fixture, scratch, stderr, wait_or_kill};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `c` with `stdin`, killing it (and failing) past [`LIMIT`].
fn run_bounded(mut c: Command, stdin: &[u8]) -> Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start rwkv-cli");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let status = wait_or_kill(&mut child, LIMIT).expect("rwkv-cli ran past its time limit");
    let _ = writer.join();
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn cli(args: &[&str]) -> Output {
    let mut c = bin_offline();
    c.args(args);
    run_bounded(c, b"")
}

/// Exit 1, exactly one line on stderr starting with "error: " and holding every needle.
fn one_line_error(o: &Output, needles: &[&str]) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("error: "), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
    e
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The v7 fixture with every value of `tensor` replaced by `value`.
fn poisoned(tensor: &str, value: f32) -> Vec<u8> {
    st_edit("v7.safetensors", tensor, |t| {
        assert_eq!(t.dtype, "F32");
        t.bytes = t
            .bytes
            .chunks(4)
            .flat_map(|_| value.to_le_bytes())
            .collect();
        true
    })
}

#[test]
fn non_finite_weights_fail_with_one_line_in_generate_eval_and_chat() {
    let dir = scratch("robust-nan");
    let text = write(
        &dir,
        "text.txt",
        b"Some text to score, long enough for a few tokens.",
    );
    for (name, value) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let model = write(
            &dir,
            &format!("{name}.safetensors"),
            &poisoned("head.weight", value),
        );
        let m = model.display().to_string();
        // Before: NUL bytes and exit 0.
        let o = cli(&["generate", "-m", &m, "-p", "Hello", "-n", "5", "--quiet"]);
        one_line_error(&o, &["non-finite logits", "info --check"]);
        assert!(o.stdout.is_empty(), "{:?}", o.stdout);
        // Before: "inf bits per byte" and exit 0.
        let o = cli(&["eval", "-m", &m, "--text", &text.display().to_string()]);
        one_line_error(&o, &["non-finite logits"]);
        let mut c = bin_offline();
        c.args(["chat", "-m", &m]);
        let o = run_bounded(c, b"Hello\n");
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("non-finite logits"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

#[test]
fn info_check_names_the_tensors_that_hold_non_finite_values() {
    let dir = scratch("robust-check");
    let model = write(
        &dir,
        "nan.safetensors",
        &poisoned("blocks.0.att.key.weight", f32::NAN),
    );
    let m = model.display().to_string();
    // Without --check, info reads no weight: it still describes the file.
    let o = cli(&["info", &m]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&["info", "--check", &m]);
    one_line_error(
        &o,
        &[
            "1 tensors hold non-finite values",
            "blocks.0.att.key.weight",
            "NaN",
        ],
    );
    let o = cli(&["info", "--check", &fixture("v7.pth")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("every weight is finite"));
    let o = cli(&["info", "--check", "--json", &fixture("v7.safetensors")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["weights_finite"], true);
}

/// `info --check` reads a state-tuning file's values too (it once described the file and
/// exited 0 without reading them).
#[test]
fn info_check_reads_the_values_of_a_state_tuning_file() {
    let dir = scratch("robust-check-state");
    let nan = st_edit("v7.state.safetensors", "blocks.1.att.time_state", |t| {
        assert_eq!(t.dtype, "F16");
        t.bytes[2..4].copy_from_slice(&0x7E00u16.to_le_bytes());
        true
    });
    let s = write(&dir, "nan.state.safetensors", &nan)
        .display()
        .to_string();
    let o = cli(&["info", &s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&["info", "--check", &s]);
    one_line_error(
        &o,
        &[
            "1 tensors hold non-finite values",
            "blocks.1.att.time_state (1 NaN",
        ],
    );
    let good = fixture("v7.state.safetensors");
    let o = cli(&["info", "--check", &good]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("every value is finite (2 tensors read)"));
    let o = cli(&["info", "--check", "--json", &good]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["values_finite"].as_bool()),
        (Some("state"), Some(true))
    );
}

#[test]
fn a_state_file_holding_nan_is_refused() {
    use rwkv_cli::checkpoint::Checkpoint;
    use rwkv_cli::state_file::{self, SavedState};
    let dir = scratch("robust-state");
    let model = fixture("v7.safetensors");
    let ckpt = Checkpoint::open(Path::new(&model)).unwrap();
    let cfg = rwkv_cli::models::inspect(&ckpt).unwrap();
    let fp = ckpt.fingerprint().unwrap();
    let mut state = rwkv_cli::models::State::new(&cfg);
    state.layers[0].wkv[0] = f32::NAN;
    let saved = SavedState {
        state,
        logits: vec![0.0; cfg.vocab_size],
        tokens: 3,
    };
    let p = write(&dir, "nan.state", &state_file::encode(&cfg, fp, &saved));
    let o = cli(&[
        "generate",
        "-m",
        &model,
        "-p",
        "x",
        "--state-in",
        &p.display().to_string(),
        "-n",
        "3",
    ]);
    one_line_error(&o, &["nan.state", "NaN"]);
    // A token count near 2^64 is refused, not wrapped.
    let saved = SavedState {
        state: rwkv_cli::models::State::new(&cfg),
        logits: vec![0.0; cfg.vocab_size],
        tokens: u64::MAX - 1,
    };
    let p = write(&dir, "huge.state", &state_file::encode(&cfg, fp, &saved));
    let o = cli(&[
        "generate",
        "-m",
        &model,
        "-p",
        "x",
        "--state-in",
        &p.display().to_string(),
        "-n",
        "3",
    ]);
    one_line_error(&o, &["implausible"]);
    // Cut inside its header: "truncated", not "bad magic".
    let good = state_file::encode(
        &cfg,
        fp,
        &SavedState {
            state: rwkv_cli::models::State::new(&cfg),
            logits: vec![0.0; cfg.vocab_size],
            tokens: 3,
        },
    );
    let p = write(&dir, "short.state", &good[..14]);
    let o = cli(&[
        "generate",
        "-m",
        &model,
        "-p",
        "x",
        "--state-in",
        &p.display().to_string(),
        "-n",
        "3",
    ]);
    one_line_error(&o, &["truncated"]);
    // A state file where a model is expected says what it is (it was read as safetensors,
    // "its header length says … bytes").
    let p = write(&dir, "good.state", &good);
    let o = cli(&["info", p.to_str().unwrap()]);
    one_line_error(&o, &["is a state saved by rwkv-cli", "--state-in"]);
    let o = cli(&["generate", "-m", p.to_str().unwrap(), "-p", "x"]);
    one_line_error(&o, &["is a state saved by rwkv-cli", "--state-in"]);
    // An endless file is refused after a state's length, not read until memory runs out
    // (and a file longer than any state of the model the same way).
    let mut long = good.clone();
    long.resize(good.len() + (1 << 21), 0);
    let p = write(&dir, "long.state", &long);
    for path in ["/dev/zero", p.to_str().unwrap()] {
        let o = cli(&[
            "generate",
            "-m",
            &model,
            "-p",
            "x",
            "--state-in",
            path,
            "-n",
            "3",
        ]);
        one_line_error(&o, &[path, "not a state of this model"]);
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_as_the_model_is_refused_without_opening_it() {
    let dir = scratch("robust-fifo");
    let fifo = dir.join("model.pth");
    let _ = std::fs::remove_file(&fifo);
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    // Before: opening it waited for a writer forever.
    let o = cli(&["generate", "-m", &fifo.display().to_string(), "-p", "x"]);
    one_line_error(&o, &["named pipe", "model.pth"]);
    let o = cli(&["info", &fifo.display().to_string()]);
    one_line_error(&o, &["named pipe"]);
}

#[test]
fn an_rwkv_cpp_file_is_named_as_such() {
    let dir = scratch("robust-ggml");
    // rwkv.cpp's header: magic 'ggmf' (u32, little-endian), version, then the model's shape.
    let mut bytes = 0x6767_6d66u32.to_le_bytes().to_vec();
    bytes.extend(101u32.to_le_bytes());
    bytes.extend([0u8; 64]);
    let p = write(&dir, "model.bin", &bytes);
    let o = cli(&["generate", "-m", &p.display().to_string(), "-p", "x"]);
    one_line_error(&o, &["rwkv.cpp", "model.bin", ".pth", ".safetensors"]);
}

#[test]
fn eval_counts_the_files_own_bytes() {
    let dir = scratch("robust-eval-bytes");
    // Not UTF-8 at all: every byte still counts once.
    let text: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8 | 0x80).collect();
    let p = write(&dir, "bytes.bin", &text);
    let o = cli(&[
        "eval",
        "-m",
        &fixture("v7.safetensors"),
        "--text",
        &p.display().to_string(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["text_bytes"], 100);
    // The first token is context, not scored.
    assert_eq!(v["scored_bytes"], 99);
    assert!(v["bits_per_byte"].as_f64().unwrap().is_finite());
}

#[cfg(unix)]
#[test]
fn without_home_the_default_model_goes_to_a_private_per_user_directory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = scratch("robust-nohome");
    let uid = std::fs::metadata(&tmp).unwrap().uid();
    let private = tmp.join(format!("rwkv-cli-{uid}"));
    let _ = std::fs::remove_dir_all(&private);
    let bare = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"));
        for v in ["HOME", "XDG_CACHE_HOME", "RWKV_CLI_CACHE"] {
            c.env_remove(v);
        }
        c.env("TMPDIR", &tmp)
            .env("HF_HUB_OFFLINE", "1")
            .args(["generate", "-p", "Hi", "-n", "2", "--quiet"]);
        c
    };
    let o = run_bounded(bare(), b"");
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::metadata(&private).unwrap();
    assert_eq!(m.mode() & 0o777, 0o700);
    // The model, and the weight cache's directory beside it.
    let files: Vec<_> = std::fs::read_dir(&private).unwrap().flatten().collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(private.join("weights").is_dir());
    // The shared name of before is not used.
    assert!(!tmp.join("rwkv-cli").exists());
    // A directory others can write (as another user could have made it) is refused.
    std::fs::remove_dir_all(&private).unwrap();
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run_bounded(bare(), b"");
    one_line_error(&o, &["not a private directory"]);
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);
}

#[test]
fn load_errors_name_the_file_once_and_never_repeat_themselves() {
    let dir = scratch("robust-name");
    let missing = write(
        &dir,
        "missing.safetensors",
        &st_edit("v7.safetensors", "blocks.0.att.key.weight", |_| false),
    );
    // A .pth whose tensor data were damaged (the CRC catches it).
    let mut pth = common::read_fixture("v7.pth");
    let mid = pth.len() / 2;
    pth[mid] ^= 0x55;
    let damaged = write(&dir, "damaged.pth", &pth);
    for (p, says) in [(missing, "missing"), (damaged, "CRC-32 does not match")] {
        let m = p.display().to_string();
        let o = cli(&["generate", "-m", &m, "-p", "x", "-n", "1"]);
        let e = one_line_error(&o, &[says]);
        assert_eq!(e.matches(&m).count(), 1, "the file named once: {e}");
        let words: Vec<&str> = e.split(": ").collect();
        assert!(
            words.windows(2).all(|w| w[0] != w[1]),
            "a repeated part: {e}"
        );
        assert!(
            !e.contains("tensor blocks.0.att.key.weight: tensor blocks.0.att.key.weight"),
            "{e}"
        );
    }
}

#[test]
fn more_threads_than_cores_are_capped_with_a_warning() {
    let o = cli(&[
        "--threads",
        "1000",
        "generate",
        "-m",
        &fixture("v7.safetensors"),
        "-p",
        "x",
        "-n",
        "2",
        "--quiet",
    ]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.starts_with("warning: --threads 1000 is more than the"),
        "{e}"
    );
    assert!(e.contains("; using "), "{e}");
}

/// Exit 2 and a first line "error: " holding every needle (clap's usage lines may follow).
fn usage_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.starts_with("error: "), "{e}");
    let first = e.lines().next().unwrap();
    for n in needles {
        assert!(first.contains(n), "{n:?} not in: {e}");
    }
}

#[test]
fn negative_numbers_get_the_flags_own_message() {
    let m = fixture("v7.safetensors");
    for (flag, value, needle) in [
        ("--temperature", "-1", "--temperature must be"),
        ("--top-p", "-0.5", "--top-p must be"),
        ("-n", "-1", "'--max-tokens <MAX_TOKENS>': must be 0 or more"),
        ("--top-k", "-3", "'--top-k <TOP_K>': must be 0 or more"),
        ("--chunk", "-2", "'--chunk <CHUNK>': must be 0 or more"),
    ] {
        let o = cli(&["generate", "-m", &m, "-p", "x", flag, value]);
        usage_error(&o, &[needle]);
        assert!(
            !stderr(&o).contains("unexpected argument"),
            "{}",
            stderr(&o)
        );
    }
    // chat's counts say the same.
    for (flag, needle) in [
        ("-n", "'--max-tokens <MAX_TOKENS>': must be 0 or more"),
        ("--top-k", "'--top-k <TOP_K>': must be 0 or more"),
        (
            "--undo-depth",
            "'--undo-depth <UNDO_DEPTH>': must be 0 or more",
        ),
    ] {
        let o = cli(&["chat", "-m", &m, flag, "-1"]);
        usage_error(&o, &[needle]);
    }
    // So do bench's, eval's and compare's.
    for args in [
        &["bench", "--decode-tokens", "-1"][..],
        &["bench", "--segments", "-4"],
        &["eval", "--chunk", "-2"],
        &["eval", "--max-tokens", "-5"],
        &["compare", "--decode-tokens", "-3"],
    ] {
        let o = cli(&[args, &["-m", &m]].concat());
        usage_error(&o, &[&format!("'{} <", args[1]), "must be 0 or more"]);
    }
    // Negative penalties are meaningful: accepted.
    let o = cli(&[
        "generate",
        "-m",
        &m,
        "-p",
        "x",
        "-n",
        "2",
        "--quiet",
        "--presence-penalty",
        "-0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn two_outputs_on_the_same_file_are_refused() {
    let dir = scratch("robust-same-out");
    let m = fixture("v7.safetensors");
    let f = dir.join("out.bin");
    let same = dir.join(".").join("out.bin");
    let o = cli(&[
        "generate",
        "-m",
        &m,
        "-p",
        "x",
        "-n",
        "1",
        "--logits-out",
        &f.display().to_string(),
        "--state-out",
        &same.display().to_string(),
    ]);
    usage_error(&o, &["--state-out", "--logits-out", "the same file"]);
    assert!(!f.exists(), "nothing written");
    // Through a symbolic link, too.
    #[cfg(unix)]
    {
        let link = dir.join("link.bin");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let o = cli(&[
            "generate",
            "-m",
            &m,
            "-p",
            "x",
            "--logits-out",
            &link.display().to_string(),
            "--state-out",
            &f.display().to_string(),
        ]);
        usage_error(&o, &["the same file"]);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn help_into_a_full_disk_fails() {
    let full = std::fs::File::create("/dev/full").unwrap();
    for args in [&["--help"][..], &["generate", "--help"], &["--version"]] {
        let mut c = bin_offline();
        c.args(args)
            .stdout(full.try_clone().unwrap())
            .stderr(Stdio::piped());
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("cannot write"), "{}", stderr(&o));
    }
}

#[test]
fn the_stats_line_in_a_file_is_a_plain_line() {
    let o = cli(&[
        "generate",
        "-m",
        &fixture("v7.safetensors"),
        "-p",
        "x",
        "-n",
        "3",
    ]);
    assert!(o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("[RWKV v7"), "{e:?}");
}

/// `bench` streams its rows, and Ctrl-C prints the rows and the figures so far (exit 130).
#[cfg(unix)]
#[test]
fn bench_streams_rows_and_a_ctrl_c_prints_what_it_has() {
    use std::io::BufRead;
    let mut c = bin_offline();
    c.args([
        "bench",
        "-m",
        &fixture("v7.safetensors"),
        "--context",
        "4M",
        "--segments",
        "400",
        "--decode-tokens",
        "2",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    // The header (2 lines) and the first row arrive while the run goes on.
    for _ in 0..3 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(l);
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the rows came only at the end: {lines:?}"
    );
    // SAFETY: kill sends a signal to the child we started; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = wait_or_kill(&mut child, LIMIT).expect("bench ignored Ctrl-C");
    assert_eq!(status.code(), Some(130), "{lines:?} {rest}");
    assert!(rest.contains("interrupted       after"), "{rest}");
    assert!(rest.contains("peak RSS"), "{rest}");
    let rows = lines.len() - 2
        + rest
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count();
    assert!(rows < 400, "{rows} rows");
}

#[cfg(target_os = "linux")]
#[test]
fn bench_reports_the_process_peak_and_the_time_waited() {
    let o = cli(&[
        "bench",
        "-m",
        &fixture("v7.safetensors"),
        "--context",
        "2k",
        "--segments",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let process = v["peak_rss_bytes"].as_u64().unwrap();
    let model = v["model_peak_rss_bytes"].as_u64().unwrap();
    // The probe reads a 256 MiB buffer: the process peaked above it, the model far below.
    assert!(process >= 200 << 20, "{process}");
    assert!(model < process, "{model} vs {process}");
    let total = v["total_seconds"].as_f64().unwrap();
    let parts = v["load_seconds"].as_f64().unwrap()
        + v["prefill_seconds"].as_f64().unwrap()
        + v["bandwidth_probe_seconds"].as_f64().unwrap();
    assert!(total >= parts, "total {total} < its parts {parts}");
}

/// Ctrl-C during `eval` prints the score of what was read (exit 130).
#[cfg(unix)]
#[test]
fn eval_interrupted_prints_the_score_so_far() {
    let dir = scratch("robust-eval-int");
    // Long enough to take seconds on the tiny model.
    let text: Vec<u8> = (0..6_000_000u32)
        .map(|i| b"abcdefgh "[(i % 9) as usize])
        .collect();
    let p = write(&dir, "long.txt", &text);
    let mut c = bin_offline();
    c.args([
        "eval",
        "-m",
        &fixture("v7.safetensors"),
        "--text",
        &p.display().to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // The model loads in milliseconds; the handler is in place well before this.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "eval ended before Ctrl-C"
    );
    // SAFETY: kill sends a signal to the child we started; no memory is involved.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = wait_or_kill(&mut child, LIMIT).expect("eval ignored Ctrl-C");
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.starts_with("interrupted after "), "{out}");
    assert!(out.contains("bits per byte"), "{out}");
}
