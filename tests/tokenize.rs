//! `tokenize` and `detokenize` end to end from the binary (the ids as lines, JSON and verbose;
//! a model's tokenizer; bad input refused in one line), and `generate --verbose-prompt`
//! printing the ids `tokenize` prints. Part of the CLI's habits (issue 18; the rest are in
//! `cli_habits.rs`).
//!
//! The fixture models have a 256-entry vocabulary (byte tokenizer), as has the embedded model.

mod common;
use common::runs::{fails, ok, run_in, unescape};
use common::{fixture, run_offline, run_with_stdin, scratch, stderr};

use rwkv_cli::tokenizer::{self, TokenizerKind};

fn ids_of(out: &str) -> Vec<u32> {
    out.lines()
        .map(|l| l.parse().expect("an id per line"))
        .collect()
}

#[test]
fn tokenize_prints_the_tokenizers_ids_as_lines_json_and_verbose() {
    let text = "Hello, world! Ünïcödé 中文\n\tend";
    for (name, kind) in [
        ("world", TokenizerKind::World),
        ("20b", TokenizerKind::Neox20B),
        ("bytes", TokenizerKind::Bytes),
    ] {
        let tok = tokenizer::load(kind).unwrap();
        let want = tok.encode(text.as_bytes()).unwrap();
        let got = ids_of(&ok(&run_offline(&["tokenize", "--tokenizer", name, text])));
        assert_eq!(got, want, "{name}");
        // JSON: the same ids.
        let json: Vec<u32> = serde_json::from_str(&ok(&run_offline(&[
            "tokenize",
            "--tokenizer",
            name,
            "--json",
            text,
        ])))
        .unwrap();
        assert_eq!(json, want, "{name}");
        // Verbose JSON: the bytes of each token, escaped; unescaped and put back together they
        // are the text (a byte-level token may hold part of a character: \xNN).
        let v: serde_json::Value = serde_json::from_str(&ok(&run_offline(&[
            "tokenize",
            "--tokenizer",
            name,
            "--json",
            "--verbose",
            text,
        ])))
        .unwrap();
        let joined: Vec<u8> = v
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| {
                let b = e["bytes"].as_str().unwrap();
                assert!(!b.contains('\n') && !b.contains('\t'), "{b:?}");
                unescape(b)
            })
            .collect();
        assert_eq!(joined, text.as_bytes(), "{name}");
        assert_eq!(v[0]["id"].as_u64().unwrap() as u32, want[0]);
    }
    // Verbose lines: id, tab, escaped bytes (a backslash, a newline, invalid UTF-8 from stdin).
    let o = run_in(
        &["tokenize", "--tokenizer", "bytes", "-v", "-"],
        b"a\\\n\xff",
    );
    assert_eq!(ok(&o), "97\ta\n92\t\\\\\n10\t\\n\n255\t\\xff\n");
    // The World tokenizer keeps whole characters in one token: they stay readable.
    let o = run_offline(&["tokenize", "--tokenizer", "world", "-v", "中文"]);
    assert!(ok(&o).lines().all(|l| !l.contains("\\x")), "{}", ok(&o));
}

#[test]
fn tokenize_with_a_model_uses_its_tokenizer_and_detokenize_reverses_it() {
    // The v7 fixture has a 256-entry vocabulary: the byte tokenizer.
    let o = run_offline(&["tokenize", "-m", &fixture("v7.safetensors"), "hi"]);
    assert_eq!(ids_of(&ok(&o)), vec![104, 105]);
    // The embedded model (no --model) is byte-level too. Neither it nor --tokenizer writes or
    // reads a model file: the cache folder stays empty (generate would unpack the model there).
    let cache = scratch("habits-empty-cache");
    let mut c = common::bin_with_cache(&cache);
    c.env("HF_HUB_OFFLINE", "1").args(["tokenize", "ok"]);
    assert_eq!(ids_of(&ok(&run_with_stdin(&mut c, b""))), vec![111, 107]);
    let mut c = common::bin_with_cache(&cache);
    c.args(["tokenize", "--tokenizer", "world", "ok"]);
    assert_eq!(ids_of(&ok(&run_with_stdin(&mut c, b""))).len(), 1);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    let mut c = common::bin_with_cache(&cache);
    c.args(["generate", "-p", "ok", "-n", "0", "-q"]);
    ok(&run_with_stdin(&mut c, b""));
    assert_eq!(
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "weights")
            .count(),
        1,
        "generate unpacks it"
    );
    // Round trips on stdin, for every tokenizer; the World and byte tokenizers keep bytes that
    // are not UTF-8 (the 20B one, through the `tokenizers` crate, works on text).
    let broken: &[u8] = b"Round \xe4\xb8\xad trip\n\xc3 with a broken char, and  spaces.";
    let valid: &[u8] = "Round 中 trip\n with whole chars, and  spaces.".as_bytes();
    for (name, text) in [("world", broken), ("bytes", broken), ("20b", valid)] {
        let ids = ok(&run_in(&["tokenize", "--tokenizer", name], text));
        let back = run_in(&["detokenize", "--tokenizer", name], ids.as_bytes());
        assert!(back.status.success(), "{}", stderr(&back));
        assert_eq!(back.stdout, text, "{name}");
        // From a JSON array and from arguments too.
        let json = ok(&run_in(&["tokenize", "--tokenizer", name, "--json"], text));
        let back = run_in(&["detokenize", "--tokenizer", name], json.as_bytes());
        assert_eq!(back.stdout, text, "{name}");
        let mut args = vec!["detokenize", "--tokenizer", name];
        args.extend(ids.lines());
        let back = run_offline(&args);
        assert_eq!(back.stdout, text, "{name}");
    }
}

#[test]
fn tokenize_and_detokenize_refuse_bad_input_in_one_line() {
    fails(
        &run_offline(&["detokenize", "--tokenizer", "bytes", "256"]),
        1,
        "token id 256 is outside the bytes tokenizer's vocabulary",
    );
    fails(
        &run_offline(&["detokenize", "--tokenizer", "world", "12", "x"]),
        2,
        "'x' is not a token id",
    );
    fails(
        &run_in(&["detokenize", "--tokenizer", "world"], b"1 2 -3"),
        1,
        "'-3' is not a token id",
    );
    fails(
        &run_offline(&["tokenize", "--tokenizer", "klingon", "x"]),
        2,
        "unknown tokenizer",
    );
    fails(
        &run_offline(&["tokenize", "-m", "x.pth", "--tokenizer", "world", "x"]),
        2,
        "cannot be used with",
    );
    fails(
        &run_offline(&["tokenize", "-m", "/nonexistent/model.safetensors", "x"]),
        1,
        "/nonexistent/model.safetensors",
    );
}

#[test]
fn verbose_prompt_prints_the_ids_tokenize_prints() {
    let text = "Ids, please.";
    let want = ok(&run_offline(&["tokenize", text]));
    let o = run_offline(&["generate", "-p", text, "-n", "0", "-q", "--verbose-prompt"]);
    ok(&o);
    let line = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("prompt: ").map(String::from))
        .expect("a prompt line");
    let (count, ids) = line.split_once(" tokens: ").unwrap();
    let got: Vec<&str> = ids.split(' ').collect();
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(got, want);
    assert_eq!(count.parse::<usize>().unwrap(), want.len());
}
