//! `rwkv-cli eval` end to end: output into closed and full streams, `--text -`, the tokenizer
//! check, conflicting flags and the help text. The embedded default model is used where no
//! `--model` is given; its cache file goes to a temporary directory (`RWKV_CLI_CACHE`).

use std::process::{Output, Stdio};

mod common;
use common::{bin, fixture, run_with_stdin, scratch_file, stderr};

/// The one line of a failure: `error: ...`, nothing else.
fn assert_one_error_line(o: &Output) {
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}

#[test]
fn eval_into_a_closed_pipe_exits_0_without_a_panic() {
    // `eval ... | true`: the reader is gone before the result is printed.
    let mut child = bin()
        .args(["eval", "--text", &fixture("austen_heldout.txt")])
        .args(["--max-tokens", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "a closed pipe is not an error");
}

#[test]
fn eval_into_a_full_disk_fails_with_one_line() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full (Linux)");
    for json in [false, true] {
        let o = bin()
            .args(["eval", "--text", &fixture("austen_heldout.txt")])
            .args(["--max-tokens", "300"])
            .args(json.then_some("--json"))
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_one_error_line(&o);
        assert!(stderr(&o).contains("stdout"), "{}", stderr(&o));
    }
}

#[test]
fn eval_text_dash_reads_stdin_and_scores_it_like_the_file() {
    let path = fixture("austen_heldout.txt");
    let text = &std::fs::read(&path).unwrap()[..4000];
    let file = scratch_file("eval-stdin.txt");
    std::fs::write(&file, text).unwrap();
    let from_file = json(
        &bin()
            .args(["eval", "--json", "--text"])
            .arg(&file)
            .output()
            .unwrap(),
    );
    let from_stdin = json(&run_with_stdin(
        bin().args(["eval", "--json", "--text", "-"]),
        text,
    ));
    let _ = std::fs::remove_file(&file);
    assert_eq!(from_stdin["tokens"], 4000);
    assert_eq!(from_stdin["scored_bytes"], 3999);
    assert_eq!(from_stdin["tokens"], from_file["tokens"]);
    // The model object says where the weights came from, as generate's does.
    let cache = from_file["model"]["weight_cache"]
        .as_str()
        .unwrap_or_default();
    assert!(["hit", "written", "rebuilt"].contains(&cache), "{cache:?}");
    let (a, b) = (
        from_stdin["bits_per_byte"].as_f64().unwrap(),
        from_file["bits_per_byte"].as_f64().unwrap(),
    );
    assert!(a > 0.5 && a < 8.0, "{a}");
    assert_eq!(
        a, b,
        "the same text scores the same from stdin and from a file"
    );
    assert!(bin()
        .args(["eval", "--help"])
        .output()
        .unwrap()
        .stdout
        .windows(b"`-` to read it from stdin".len())
        .any(|w| w == b"`-` to read it from stdin"));
}

#[test]
fn eval_refuses_a_tokenizer_larger_than_the_model_vocabulary() {
    for (model, tokenizer, size) in [
        (None, "world", "65530"),
        (Some(fixture("v7.safetensors")), "20b", "50277"),
    ] {
        let mut cmd = bin();
        cmd.args(["eval", "--text", &fixture("austen_heldout.txt")])
            .args(["--tokenizer", tokenizer]);
        if let Some(m) = &model {
            cmd.args(["--model", m]);
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_one_error_line(&o);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("the {tokenizer} tokenizer has {size} tokens"))
                && err.contains("the model only 256"),
            "{err}"
        );
    }
}

#[test]
fn eval_refuses_quant_with_dtype() {
    let o = bin()
        .args(["eval", "--text", &fixture("austen_heldout.txt")])
        .args(["--quant", "q4_0", "--dtype", "bf16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--dtype"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}
