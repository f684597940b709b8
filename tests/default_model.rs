//! The embedded default model (`models/default.safetensors`, trained by
//! `scripts/train_default_model.py`): it runs with no `--model`, offline, and is the model its
//! training script reported.

use std::path::PathBuf;
use std::process::Output;

mod common;
use common::{bin_with_cache, repo_path, scratch};

/// A cache folder of one test's own.
fn cache(name: &str) -> PathBuf {
    scratch(&format!("default-model-cache-{name}"))
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn generate_without_model_uses_the_embedded_one_and_a_seed_reproduces_it() {
    let c = cache("gen");
    let args = [
        "generate",
        "--prompt",
        "It is a truth universally acknowledged",
        "-n",
        "120",
        "--quiet",
    ];
    let a = ok(bin_with_cache(&c)
        .args(args)
        .args(["--seed", "5"])
        .output()
        .unwrap())
    .stdout;
    let b = ok(bin_with_cache(&c)
        .args(args)
        .args(["--seed", "5"])
        .output()
        .unwrap())
    .stdout;
    let other = ok(bin_with_cache(&c)
        .args(args)
        .args(["--seed", "6"])
        .output()
        .unwrap())
    .stdout;
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, other, "another seed, another text");
    // The same as naming the file explicitly.
    let explicit = ok(bin_with_cache(&c)
        .args(args)
        .args(["--seed", "5", "--model"])
        .arg(repo_path("models/default.safetensors"))
        .output()
        .unwrap())
    .stdout;
    assert_eq!(a, explicit);
    // English-like: letters, spaces and punctuation, several distinct words.
    let text = String::from_utf8(a).expect("ASCII text");
    let plain = text
        .bytes()
        .filter(|b| b.is_ascii_alphabetic() || b" ,.;'\"!?-\n".contains(b))
        .count();
    assert!(plain as f64 > 0.95 * text.len() as f64, "{text:?}");
    let words: std::collections::BTreeSet<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 10, "{text:?}");
}

#[test]
fn info_without_model_describes_the_embedded_model() {
    let o = ok(bin_with_cache(&cache("info"))
        .args(["info", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], "v7");
    assert_eq!(v["vocab"], 256);
    assert!(v["source"].as_str().unwrap().contains("embedded"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("models/default.json")).unwrap())
            .unwrap();
    assert_eq!(v["params"], meta["model"]["params"]);
    assert!(
        std::fs::metadata(repo_path("models/default.safetensors"))
            .unwrap()
            .len()
            <= 16 << 20,
        "≤ 16 MB"
    );
}

/// The engine's held-out bits per byte equal what the training script reported (to 1e-3),
/// with the protocol of `models/default.json`: token 0, then the held-out bytes, every byte
/// scored given all before it.
#[test]
fn held_out_bits_per_byte_match_the_training_script() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("models/default.json")).unwrap())
            .unwrap();
    let reported = meta["evaluation"]["heldout_bpb_exact"]
        .as_f64()
        .expect("heldout_bpb_exact in default.json");
    let heldout = std::fs::read(repo_path("tests/fixtures/austen_heldout.txt")).unwrap();
    assert_eq!(
        heldout.len() as u64,
        meta["evaluation"]["heldout_bytes"].as_u64().unwrap()
    );
    let text = scratch("heldout").join("heldout.txt");
    std::fs::write(&text, [&[0u8][..], &heldout].concat()).unwrap();
    let o = ok(bin_with_cache(&cache("eval"))
        .args([
            "eval",
            "--json",
            "--chunk",
            "1024",
            "--text",
            text.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scored_bytes"], heldout.len());
    let ours = v["bits_per_byte"].as_f64().unwrap();
    assert!(
        (ours - reported).abs() < 1e-3,
        "engine {ours} vs training script {reported}"
    );
}

/// A cache file of the right name and size but damaged contents is not trusted: it is
/// rewritten, and the output is the embedded model's.
#[test]
fn a_damaged_cache_file_is_rewritten() {
    let c = cache("damaged");
    let args = [
        "generate",
        "-p",
        "It is a truth",
        "-n",
        "30",
        "--temperature",
        "0",
        "--quiet",
    ];
    let good = ok(bin_with_cache(&c).args(args).output().unwrap()).stdout;
    let files: Vec<_> = std::fs::read_dir(&c)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let half = bytes.len() / 2;
    bytes[half..].fill(0);
    std::fs::write(&files[0], &bytes).unwrap();
    let again = ok(bin_with_cache(&c).args(args).output().unwrap()).stdout;
    assert_eq!(again, good);
    let embedded = std::fs::read(repo_path("models/default.safetensors")).unwrap();
    assert!(
        std::fs::read(&files[0]).unwrap() == embedded,
        "cache file not repaired"
    );
}
