//! Bad input never panics and never hangs.
//!
//! A table of damaged models, lying headers, broken archives and pickles, wrong shapes, missing
//! tensors, bad state files and bad flags, each run through the real binary with a deadline:
//! every case must exit 1 with exactly one line on stderr naming the problem (usage errors:
//! exit 2, clap's message first), and never print "panicked". The table is built by one small
//! function per family of cases, and each family is its own test. Then the inputs that must be
//! *accepted*: prompts that are not UTF-8 and `--max-tokens` at its maximum. Finally the
//! fuzzing seeds (`fuzz/corpus/`) are replayed through the fuzz harness, so CI runs the
//! fuzz targets' code on stable without cargo-fuzz.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rwkv_cli::checkpoint::StoredDType;

mod common;
#[path = "bad_input/model_files.rs"]
mod model_files;

use common::harness;
use common::{
    bin, bin_offline, fixture, fixture_path, read_f32, read_fixture, repo_path, scratch,
    wait_or_kill,
};
use model_files::{
    layer_layouts, not_a_model, pickles, safetensors_entries, safetensors_headers, truncated,
    wrong_or_missing_tensors, zip_archives,
};

/// Longer than any case needs (they take milliseconds); a run past it is a hang.
const DEADLINE: Duration = Duration::from_secs(20);

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs the CLI with `stdin`; kills it and fails the test if it runs past the deadline.
fn run(args: &[String], stdin: &[u8]) -> Run {
    let mut child = bin_offline()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rwkv-cli");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_or_kill(&mut child, DEADLINE) else {
        panic!("rwkv-cli {args:?} hung: killed after {DEADLINE:?}");
    };
    let _ = writer.join();
    Run {
        code: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// the table

/// What a case expects.
struct Case {
    name: String,
    args: Vec<String>,
    stdin: Vec<u8>,
    /// 1 (failure: exactly one line on stderr) or 2 (usage error: clap's message first).
    code: i32,
    /// stderr must contain at least one of these.
    any_of: Vec<&'static str>,
}

fn check(case: &Case) -> Result<(), String> {
    let r = run(&case.args, &case.stdin);
    let e = r.stderr.trim_end();
    let fail = |why: &str| {
        Err(format!(
            "case {:?}: {why}\n  args: {:?}\n  exit: {:?}\n  stderr: {e}",
            case.name, case.args, r.code
        ))
    };
    if e.contains("panicked") || e.contains("RUST_BACKTRACE") {
        return fail("panicked");
    }
    if r.code != Some(case.code) {
        return fail(&format!("expected exit {}", case.code));
    }
    if !r.stdout.is_empty() {
        return fail("printed on stdout");
    }
    let first = e.lines().next().unwrap_or("");
    if !first.starts_with("error: ") {
        return fail("stderr does not start with 'error: '");
    }
    if case.code == 1 && e.lines().count() != 1 {
        return fail("stderr is not exactly one line");
    }
    if !case.any_of.iter().any(|n| first.contains(n)) {
        return fail(&format!("the message names none of {:?}", case.any_of));
    }
    Ok(())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// xorshift64*: deterministic "random" bytes.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// `generate --model <the v7 fixture> --prompt x`, then `extra`.
fn generate_args(extra: &[&str]) -> Vec<String> {
    let mut a = s(&[
        "generate",
        "--model",
        &fixture("v7.safetensors"),
        "--prompt",
        "x",
    ]);
    a.extend(s(extra));
    a
}

fn case(name: &str, args: Vec<String>, code: i32, any_of: Vec<&'static str>) -> Case {
    Case {
        name: name.into(),
        args,
        stdin: Vec::new(),
        code,
        any_of,
    }
}

/// Flags out of range, unknown or in conflict, and output paths that cannot be written.
fn flags(_dir: &Path) -> Vec<Case> {
    vec![
        case(
            "--quiet with --stats-json",
            generate_args(&["--quiet", "--stats-json"]),
            2,
            vec!["cannot be used with"],
        ),
        case(
            "--max-tokens past u64",
            generate_args(&["--max-tokens", "18446744073709551616"]),
            2,
            vec!["too large"],
        ),
        case(
            "--max-tokens negative",
            generate_args(&["--max-tokens", "-1"]),
            2,
            vec!["invalid value '-1' for '--max-tokens"],
        ),
        case(
            "--max-tokens not a number",
            generate_args(&["--max-tokens", "lots"]),
            2,
            vec!["invalid value 'lots'"],
        ),
        case(
            "--temperature NaN",
            generate_args(&["--temperature", "nan"]),
            2,
            vec!["--temperature"],
        ),
        case(
            "--top-p 2",
            generate_args(&["--top-p", "2"]),
            2,
            vec!["--top-p"],
        ),
        case(
            "--chunk 0",
            generate_args(&["--chunk", "0"]),
            2,
            vec!["--chunk"],
        ),
        case(
            "--tokenizer unknown",
            generate_args(&["--tokenizer", "klingon"]),
            2,
            vec!["unknown tokenizer"],
        ),
        case(
            "--dtype unknown",
            generate_args(&["--dtype", "f8"]),
            2,
            vec!["f8"],
        ),
        case(
            "--tokenizer world on a 256-token model",
            generate_args(&["--tokenizer", "world"]),
            1,
            vec!["world tokenizer has 65530 tokens but the model only 256"],
        ),
        case(
            "--logits-out into a missing directory",
            generate_args(&["-n", "0", "--logits-out", "/nonexistent-dir/x/logits.f32"]),
            1,
            vec!["cannot write"],
        ),
    ]
}

/// State files that are missing, empty, random or damaged, and one that cannot be written.
fn state_files(dir: &Path) -> Vec<Case> {
    let empty_state = dir.join("empty.state");
    std::fs::write(&empty_state, b"").expect("write");
    let random_state = dir.join("random.state");
    std::fs::write(&random_state, random_bytes(7, 5000)).expect("write");
    let mut magic_state = b"RWKVSTATE\0".to_vec();
    magic_state.extend(random_bytes(8, 5000));
    let magic_path = dir.join("magic.state");
    std::fs::write(&magic_path, &magic_state).expect("write");
    let missing_state = dir.join("missing.state").display().to_string();
    vec![
        case(
            "--state-in missing",
            generate_args(&["--state-in", &missing_state]),
            1,
            vec!["cannot read state file"],
        ),
        case(
            "--state-in empty",
            generate_args(&["--state-in", &empty_state.display().to_string()]),
            1,
            vec!["empty"],
        ),
        case(
            "--state-in random bytes",
            generate_args(&["--state-in", &random_state.display().to_string()]),
            1,
            vec!["bad magic"],
        ),
        case(
            "--state-in random bytes after the magic",
            generate_args(&["--state-in", &magic_path.display().to_string()]),
            1,
            vec!["damaged or truncated"],
        ),
        case(
            "--state-out into a missing directory",
            generate_args(&["-n", "0", "--state-out", "/nonexistent-dir/x/s.state"]),
            1,
            vec!["cannot write"],
        ),
    ]
}

/// A family of cases: builds its rows, writing the files they need into the given folder.
type Family = fn(&Path) -> Vec<Case>;

/// Every family, by name (the name of its scratch folder).
const FAMILIES: [(&str, Family); 10] = [
    ("not-a-model", not_a_model),
    ("truncated", truncated),
    ("safetensors-entries", safetensors_entries),
    ("safetensors-headers", safetensors_headers),
    ("zip-archives", zip_archives),
    ("pickles", pickles),
    ("wrong-or-missing-tensors", wrong_or_missing_tensors),
    ("layer-layouts", layer_layouts),
    ("flags", flags),
    ("state-files", state_files),
];

/// Runs every case of the family `name`; the folder of its files is removed when they all pass.
fn check_family(name: &str) {
    let (_, family) = FAMILIES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no family {name}"));
    let dir = scratch(&format!("table-{name}"));
    let cases = family(&dir);
    assert!(!cases.is_empty(), "{name}: no cases");
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn files_that_are_not_models_fail_cleanly() {
    check_family("not-a-model");
}

#[test]
fn truncated_files_fail_cleanly() {
    check_family("truncated");
}

#[test]
fn safetensors_entries_that_lie_fail_cleanly() {
    check_family("safetensors-entries");
}

#[test]
fn damaged_safetensors_headers_fail_cleanly() {
    check_family("safetensors-headers");
}

#[test]
fn damaged_zip_archives_fail_cleanly() {
    check_family("zip-archives");
}

#[test]
fn damaged_pickles_fail_cleanly() {
    check_family("pickles");
}

#[test]
fn wrong_or_missing_tensors_fail_cleanly() {
    check_family("wrong-or-missing-tensors");
}

#[test]
fn broken_layer_layouts_fail_cleanly() {
    check_family("layer-layouts");
}

#[test]
fn bad_flags_fail_cleanly() {
    check_family("flags");
}

#[test]
fn bad_state_files_fail_cleanly() {
    check_family("state-files");
}

/// The families together keep the table's size (they are run by the tests above).
#[test]
fn the_table_did_not_shrink() {
    let dir = scratch("table-size");
    let n: usize = FAMILIES.iter().map(|(_, f)| f(&dir).len()).sum();
    assert!(n > 150, "the table shrank: {n}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every damaged file in the table also fails through the library, with no panic (the same
/// code, without the process boundary: a panic here would name its line).
#[test]
fn the_library_refuses_every_damaged_file_without_panicking() {
    let st = read_fixture("v7.safetensors");
    let pth = read_fixture("v7.pth");
    for f in [&st, &pth] {
        for cut in (0..f.len()).step_by(97) {
            let r = rwkv_cli::checkpoint::Checkpoint::from_bytes(f[..cut].to_vec(), "cut");
            assert!(r.is_err(), "cut at {cut} accepted");
        }
    }
    // A header just over the 100 MiB limit, in a file large enough to hold it.
    let mut big = vec![b' '; 8 + (100 << 20) + 1];
    big[..8].copy_from_slice(&((100u64 << 20) + 1).to_le_bytes());
    let e = rwkv_cli::checkpoint::Checkpoint::from_bytes(big, "big")
        .err()
        .expect("refused");
    assert!(format!("{e:#}").contains("implausibly large"), "{e:#}");
}

// ---------------------------------------------------------------------------------------------
// inputs that must be accepted

#[test]
fn a_prompt_that_is_not_utf8_is_tokenized_as_bytes() {
    let model = fixture("v7.safetensors");
    let dir = scratch("utf8");
    let prompts: [&[u8]; 4] = [
        b"\xff\xfe\x80abc\xc3",
        b"\xed\xa0\x80 lone surrogate",
        b"\xc0\xaf overlong",
        b"caf\xe9 latin-1",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let logits = dir.join(format!("utf8-{i}.f32"));
        let args = s(&[
            "generate",
            "--model",
            &model,
            "-n",
            "0",
            "--quiet",
            "--logits-out",
            &logits.display().to_string(),
        ]);
        let r = run(&args, prompt);
        assert_eq!(r.code, Some(0), "{prompt:?}: {}", r.stderr);
        assert!(r.stderr.is_empty(), "{}", r.stderr);
        // The byte tokenizer feeds exactly these bytes: the library gives the same logits.
        let m = rwkv_cli::models::load(&fixture_path("v7.safetensors"), Default::default())
            .expect("load");
        let mut state = m.new_state();
        let tokens: Vec<u32> = prompt.iter().map(|&b| u32::from(b)).collect();
        let want = m.forward_seq(&tokens, &mut state, false).expect("forward");
        let got = read_f32(&logits);
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-4, "{prompt:?}: logits differ by {d}");
    }
    // Generation from such a prompt also runs.
    let r = run(
        &s(&["generate", "--model", &model, "-n", "5", "--quiet"]),
        b"\xff\xfe\xfd",
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.len(), 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--prompt` given on the command line with bytes that are not UTF-8. clap refuses them
/// before our code runs (`GenerateArgs::prompt` is a `String`); piped prompts are accepted.
#[test]
fn a_non_utf8_prompt_argument_is_accepted() {
    use std::os::unix::ffi::OsStrExt;
    let out = bin()
        .arg("generate")
        .arg("--model")
        .arg(fixture("v7.safetensors"))
        .arg("--prompt")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfeabc"))
        .args(["-n", "3", "--quiet"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_world_tokenizer_round_trips_bytes_that_are_not_utf8() {
    use rwkv_cli::tokenizer::{self, TokenizerKind};
    let t = tokenizer::load(TokenizerKind::World).expect("world tokenizer");
    let mut inputs: Vec<Vec<u8>> = vec![
        (0..=255u8).collect(),
        b"\xff\xfe\x80abc\xc3".to_vec(),
        b"\xed\xa0\x80\xed\xbf\xbf".to_vec(), // surrogates
        b"\xc0\xaf\xe0\x80\xaf".to_vec(),     // overlong
        b"\xf4\x90\x80\x80".to_vec(),         // past U+10FFFF
        "你好🎉".as_bytes()[..5].to_vec(),    // cut mid-character
        Vec::new(),
    ];
    for seed in 1..50 {
        inputs.push(random_bytes(seed, (seed as usize * 37) % 700));
    }
    for input in &inputs {
        let ids = t.encode(input).expect("encode");
        assert!(ids
            .iter()
            .all(|&id| id != 0 && (id as usize) < t.vocab_size()));
        assert_eq!(&t.decode(&ids), input, "round trip of {input:?}");
    }
    // Decoding ids outside the vocabulary never panics.
    assert!(t.decode(&[u32::MAX, 65530, 70000, 0]).is_empty());
}

#[test]
fn max_tokens_at_its_maximum_runs_and_ends_with_a_closed_pipe() {
    let model = fixture("v7.safetensors");
    let mut child = bin()
        .args([
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "--max-tokens",
            "18446744073709551615",
            "--temperature",
            "0",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut out = child.stdout.take().expect("stdout");
    let mut some = [0u8; 64];
    out.read_exact(&mut some)
        .expect("it generates rather than failing at parse or allocation");
    drop(out);
    let Some(status) = wait_or_kill(&mut child, DEADLINE) else {
        panic!("did not end after its reader went away");
    };
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// the fuzz seeds, replayed on stable

#[test]
fn the_fuzz_seed_corpus_replays_cleanly() {
    let root = repo_path("fuzz/corpus");
    let mut n = 0;
    for (target, f) in harness::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no seed corpus at {}", dir.display());
        };
        for e in entries {
            let data = std::fs::read(e.expect("entry").path()).expect("seed");
            f(&data);
            n += 1;
        }
    }
    assert!(n >= harness::TARGETS.len(), "seeds replayed: {n}");
    // The checkpoint seeds are valid (so the fuzzers start from inputs that go deep).
    for target in ["safetensors", "pth", "load_model"] {
        for e in std::fs::read_dir(root.join(target)).expect("corpus") {
            let path = e.expect("entry").path();
            let data = std::fs::read(&path).expect("seed");
            let bytes = match (target, data.split_first()) {
                ("pth", Some((&mode, rest))) if mode & 1 == 1 => harness::wrap_pickle(rest),
                ("pth", Some((_, rest))) => rest.to_vec(),
                _ => data,
            };
            let c = rwkv_cli::checkpoint::Checkpoint::from_bytes(bytes, "seed")
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            for name in c.tensors().keys() {
                let readable = c.read_f32(name).is_ok();
                let int = c.meta(name).map(|m| m.dtype) == Some(StoredDType::Other);
                assert!(readable != int, "{}: {name}", path.display());
            }
            if target == "load_model" {
                rwkv_cli::models::load_checkpoint(&c, Default::default())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
        }
    }
}

/// `--threads` far beyond the machine: 10 000 threads take over a minute to start and run a
/// three-token generation (it should be refused as a usage error, or capped).
#[test]
fn an_absurd_thread_count_does_not_hang() {
    let model = fixture("v7.safetensors");
    let r = run(
        &s(&[
            "--threads",
            "100000",
            "generate",
            "--model",
            &model,
            "--prompt",
            "x",
            "-n",
            "3",
            "--quiet",
        ]),
        b"",
    );
    assert!(matches!(r.code, Some(0) | Some(2)), "{}", r.stderr);
}
