//! `rwkv-cli bench`: its arithmetic and its JSON schema on a small context (speed is reported,
//! never asserted).

use std::process::Command;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn bench(args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}

#[test]
fn bench_json_reports_every_segment_and_the_state_against_a_kv_cache() {
    let v = bench(&[
        "--model",
        &fixture("v7.safetensors"),
        "--context",
        "1k",
        "--json",
        "--segments",
        "4",
        "--chunk",
        "100",
    ]);
    assert_eq!(v["context"], 1000);
    assert_eq!(v["model"]["version"], "v7");
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 4);
    let mut expect_start = 0;
    for s in segs {
        assert_eq!(s["start"], expect_start);
        expect_start = s["end"].as_u64().unwrap();
        let tps = s["tokens_per_second"].as_f64().unwrap();
        let implied = (s["end"].as_f64().unwrap() - s["start"].as_f64().unwrap())
            / s["seconds"].as_f64().unwrap();
        assert!((tps - implied).abs() / implied < 1e-6);
        assert!(s["rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(expect_start, 1000);
    // 2 layers × (2 × 32 + 2 heads × 16²) floats × 4 bytes: constant.
    assert_eq!(v["state_bytes"], 2 * (64 + 512) * 4);
    // K and V, per layer, per token, f32: 2 × 2 × 32 × 1000 × 4.
    assert_eq!(v["kv_cache_bytes_at_context"], 2 * 2 * 32 * 1000 * 4);
    assert!(v["decode_ms_per_token_depth_0"].as_f64().unwrap() > 0.0);
    assert!(v["decode_ms_per_token_depth_n"].as_f64().unwrap() > 0.0);
    assert!(v["bits_per_byte"].is_null(), "no --text, no bits per byte");
    let g = v["rss_growth_last_over_first_segment"].as_f64().unwrap();
    assert!(g > 0.5 && g < 2.0);
}

#[test]
fn bench_with_text_reports_bits_per_byte_of_the_model_on_it() {
    // The byte-level fixture's bits per byte over this file must equal what the library
    // computes: -log2 p(byte | previous bytes), averaged over all predicted bytes.
    let text = format!("{}/README.md", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&text).unwrap();
    let n = 600.min(bytes.len());
    let v = bench(&[
        "--model",
        &fixture("v5_2.safetensors"),
        "--context",
        &n.to_string(),
        "--json",
        "--text",
        &text,
        "--chunk",
        "64",
    ]);
    let m = rwkv_cli::models::load(
        std::path::Path::new(&fixture("v5_2.safetensors")),
        Default::default(),
    )
    .unwrap();
    let tokens: Vec<u32> = bytes[..n].iter().map(|&b| b as u32).collect();
    let mut state = m.new_state();
    let mut bits = 0.0;
    let mut logits = m.step(tokens[0], &mut state).unwrap();
    for &t in &tokens[1..] {
        bits -= rwkv_cli::sampler::log_softmax_at(&logits, t) / std::f64::consts::LN_2;
        logits = m.step(t, &mut state).unwrap();
    }
    let expected = bits / (n - 1) as f64;
    let got = v["bits_per_byte"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-4,
        "bench {got} vs recurrent {expected}"
    );
}

#[test]
fn bench_accepts_k_and_m_suffixes_and_rejects_garbage() {
    let o = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .args([
            "bench",
            "--model",
            &fixture("v4.safetensors"),
            "--context",
            "lots",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = bench(&[
        "--model",
        &fixture("v4.safetensors"),
        "--context",
        "2k",
        "--json",
    ]);
    assert_eq!(v["context"], 2000);
}

#[test]
fn eval_scores_a_text_like_the_recurrent_path() {
    let text = format!("{}/tests/fixtures/README.md", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&text).unwrap();
    let n = 500;
    let o = Command::new(env!("CARGO_BIN_EXE_rwkv-cli"))
        .args([
            "eval",
            "--model",
            &fixture("v6.pth"),
            "--text",
            &text,
            "--json",
            "--chunk",
            "77",
        ])
        .args(["--max-tokens", &n.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = rwkv_cli::models::load(std::path::Path::new(&fixture("v6.pth")), Default::default())
        .unwrap();
    let mut state = m.new_state();
    let mut nats = 0.0;
    let mut logits = m.step(bytes[0] as u32, &mut state).unwrap();
    for &b in &bytes[1..n] {
        nats -= rwkv_cli::sampler::log_softmax_at(&logits, b as u32);
        logits = m.step(b as u32, &mut state).unwrap();
    }
    assert_eq!(v["scored_tokens"], n - 1);
    assert_eq!(v["scored_bytes"], n - 1);
    let bpb = nats / std::f64::consts::LN_2 / (n - 1) as f64;
    assert!((v["bits_per_byte"].as_f64().unwrap() - bpb).abs() < 1e-4);
    let ppl = (nats / (n - 1) as f64).exp();
    assert!((v["perplexity"].as_f64().unwrap() - ppl).abs() / ppl < 1e-4);
}
