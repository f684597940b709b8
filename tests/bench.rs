//! `rwkv-cli bench`: its arithmetic and its JSON schema on a small context (speed is reported,
//! never asserted).

mod common;
use common::{bin, fixture, stderr};

fn bench(args: &[&str]) -> serde_json::Value {
    let o = bin().arg("bench").args(args).output().unwrap();
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
    assert_eq!(v["context_tokens"], 1000);
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
    assert_eq!(v["kv_cache_bytes"], 2 * 2 * 32 * 1000 * 4);
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
    let o = bin()
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
    assert_eq!(v["context_tokens"], 2000);
}

#[test]
fn eval_scores_a_text_like_the_recurrent_path() {
    let text = format!("{}/tests/fixtures/README.md", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&text).unwrap();
    let n = 500;
    let o = bin()
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

/// Runs `bench ARGS --json` and returns the largest RSS of its segments.
fn max_segment_rss(args: &[&str]) -> u64 {
    let o = bin()
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rss_bytes"].as_u64().unwrap())
        .max()
        .unwrap()
}

#[test]
fn bench_memory_does_not_grow_with_the_context() {
    // The tiny fixture pushes 2M tokens in a few seconds. Were the token stream built whole
    // before the run, it would add 2M × 4 bytes = 7.6 MiB to every segment's RSS.
    let model = fixture("v7.safetensors");
    let common = ["--model", &model, "--segments", "4", "--decode-tokens", "2"];
    let small = max_segment_rss(&[&common[..], &["--context", "20k"]].concat());
    let large = max_segment_rss(&[&common[..], &["--context", "2M"]].concat());
    assert!(
        large < small + (2 << 20),
        "RSS at 2M tokens {large} vs at 20k tokens {small}"
    );
}

#[test]
fn bench_runs_a_context_too_large_to_hold_in_flat_memory() {
    // 100G tokens would be 400 GB as a Vec<u32>. The run must start and settle into a small
    // RSS (after the bandwidth probe's 256 MiB buffers are freed) for a full second; it is
    // then stopped.
    let mut child = bin()
        .args(["bench", "--context", "100G", "--decode-tokens", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let rss_kib = |pid: u32| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (mut small_in_a_row, mut seen) = (0, Vec::new());
    while small_in_a_row < 10 && start.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if let Some(status) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!("bench --context 100G ended ({status}): {}", stderr(&o));
        }
        let Some(kib) = rss_kib(child.id()) else {
            continue;
        };
        seen.push(kib);
        if start.elapsed().as_millis() >= 1000 && kib < 128 << 10 {
            small_in_a_row += 1;
        } else {
            small_in_a_row = 0;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(small_in_a_row, 10, "RSS samples (KiB): {seen:?}");
}

#[test]
fn bench_kv_cache_is_f32_whatever_the_weight_format() {
    let kv = |flags: &[&str]| {
        let o = bin()
            .args([
                "bench",
                "--context",
                "100",
                "--decode-tokens",
                "2",
                "--json",
            ])
            .args(flags)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kv_cache_bytes_per_element"], 4, "{flags:?}");
        (
            v["kv_cache_bytes"].as_u64().unwrap(),
            v["state_bytes"].as_u64().unwrap(),
        )
    };
    // The embedded model: 4 layers × 192, K and V, 100 tokens, 4 bytes.
    let f32 = kv(&["--dtype", "f32"]);
    assert_eq!(f32.0, 2 * 4 * 192 * 100 * 4);
    for flags in [
        &["--quant", "q4_0"][..],
        &["--dtype", "bf16"],
        &["--quant", "q8_0"],
    ] {
        assert_eq!(kv(flags), f32, "{flags:?}");
    }
}

#[test]
fn bench_refuses_flags_it_would_ignore() {
    let model = fixture("v7.safetensors");
    for args in [
        &["--decode", "--text", "/nonexistent"][..],
        &["--decode", "--context", "5"],
        &["--decode", "--segments", "3"],
        &["--decode", "--chunk", "64"],
        &["--decode", "--tokenizer", "bytes"],
        &["--decode", "--decode-tokens", "0"],
        &["--decode-tokens", "0", "--context", "10"],
        &["--quant", "q4_0", "--dtype", "bf16"],
    ] {
        let o = bin()
            .args(["bench", "--model", &model])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bench_refuses_a_tokenizer_larger_than_the_model_vocabulary() {
    let o = bin()
        .args(["bench", "--model", &fixture("v7.safetensors")])
        .args(["--context", "100", "--tokenizer", "20b"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: the 20b tokenizer has 50277 tokens but the model only 256"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn bench_labels_are_distinct_and_small_weights_get_the_cache_note() {
    // The fixture's weights (a few hundred KiB) fit in any L2: the fraction of memory
    // bandwidth is not bounded by it, and the report says so.
    let o = bin()
        .args(["bench", "--model", &fixture("v7.safetensors")])
        .args([
            "--context",
            "200",
            "--segments",
            "2",
            "--decode-tokens",
            "4",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let labels: Vec<&str> = out
        .lines()
        .filter(|l| l.len() > 18 && l.is_char_boundary(18) && !l.starts_with(' '))
        .map(|l| l[..18].trim_end())
        .filter(|l| !l.is_empty() && !l.starts_with("RWKV"))
        .collect();
    let mut unique = labels.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        labels.len(),
        "repeated labels: {labels:?}\n{out}"
    );
    assert!(labels.iter().filter(|l| l.starts_with("decode")).count() >= 2);
    assert!(
        out.contains("note") && out.contains("not bounded by memory bandwidth"),
        "{out}"
    );

    let v = bench(&[
        "--model",
        &fixture("v7.safetensors"),
        "--decode",
        "--decode-tokens",
        "4",
        "--json",
    ]);
    assert_eq!(v["decode"]["weights_fit_in_cache"], true);
    assert_eq!(v["decode_tokens"], 4);
    assert!(v["decode"]["last_level_cache_bytes"].as_u64().unwrap() > 0);
    // Time to ready: after the load began, before the run ended, the probe left out.
    let ready = v["decode"]["ready_seconds"].as_f64().unwrap();
    let load = v["load_seconds"].as_f64().unwrap();
    let total = v["total_seconds"].as_f64().unwrap();
    assert!(ready >= load && ready < total, "{v}");
    // The fixture's packed weights were cached by an earlier run in this cache, or written now.
    let cache = v["weight_cache"].as_str().unwrap();
    assert!(["hit", "written"].contains(&cache), "{v}");
    assert_eq!(v["decode"]["weight_cache"], cache);
}
