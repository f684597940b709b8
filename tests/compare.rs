//! `rwkv-cli compare` and its baselines: the attention kernels against textbook references,
//! the cached and recurrent paths against recomputation, and the command end to end on the
//! tiny fixture model (the exponent fit is a unit test of the CLI). Speed is reported by the
//! command, never asserted here.

use rwkv_cli::baselines::{
    linear, random_values, softmax, token_stream, Cache, Kind, Shape, Transformer,
};
use rwkv_cli::format::Format;
use rwkv_cli::ops::Mat;
use std::process::Command;

mod common;
use common::{bin, fixture, max_abs_diff, scratch_file};

fn tiny_shape() -> Shape {
    Shape {
        n_layer: 2,
        n_embd: 64,
        n_ffn: 192,
        n_head: 4,
        head_size: 16,
        vocab_size: 97,
    }
}

#[test]
fn tiled_softmax_attention_matches_the_naive_reference() {
    // (heads, head size, queries, keys): single token, whole sequences crossing key and
    // query blocks, queries after a cached prefix (chunked prefill), one query over a long
    // cache (decode), and head sizes that are not multiples of the kernel's widths.
    let cases = [
        (1, 64, 1, 1),
        (2, 64, 100, 100),
        (3, 16, 37, 200),
        (2, 32, 1, 300),
        (1, 64, 130, 130),
        (2, 48, 65, 129),
        (1, 8, 3, 64),
        (12, 64, 64, 320),
    ];
    for (i, &(nh, d, t, n)) in cases.iter().enumerate() {
        let seed = 10 * i as u64;
        let q = random_values(nh * t * d, 1.0, seed);
        let k = random_values(nh * n * d, 1.0, seed + 1);
        let v = random_values(nh * n * d, 1.0, seed + 2);
        let tiled = softmax::causal_attention(&q, &k, &v, nh, d, t, n);
        let naive = softmax::causal_attention_naive(&q, &k, &v, nh, d, t, n);
        let diff = max_abs_diff(&tiled, &naive);
        assert!(diff <= 1e-5, "case {:?}: max abs diff {diff}", cases[i]);
    }
}

#[test]
fn softmax_attention_survives_large_scores() {
    // Scores in the hundreds: the online softmax must rescale, not overflow.
    let (nh, d, n) = (1, 64, 200);
    let q: Vec<f32> = random_values(nh * n * d, 1.0, 1)
        .iter()
        .map(|x| x * 40.0)
        .collect();
    let k = random_values(nh * n * d, 1.0, 2);
    let v = random_values(nh * n * d, 1.0, 3);
    let tiled = softmax::causal_attention(&q, &k, &v, nh, d, n, n);
    assert!(tiled.iter().all(|x| x.is_finite()));
    let naive = softmax::causal_attention_naive(&q, &k, &v, nh, d, n, n);
    // Scores near ±100 carry f32 rounding of ~1e-5 (the reference forms them in f64), which
    // the exponential passes on: a looser bound than for unit-sized scores.
    let diff = max_abs_diff(&tiled, &naive);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

/// Logits of every position from one forward pass over the whole sequence.
fn recompute_all(m: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let mut cache = m.new_cache(tokens.len());
    m.forward(tokens, &mut cache, true).unwrap()
}

#[test]
fn kv_cache_decode_equals_full_recomputation() {
    let m = Transformer::random(Kind::Softmax, tiny_shape(), Format::F32, 3).unwrap();
    let v = m.shape.vocab_size;
    let tokens = token_stream(150, v, 9);
    let full = recompute_all(&m, &tokens);
    // Chunked prefill of a prefix (chunks that do not divide it), then one token at a time.
    let prefix = 70;
    let mut cache = m.new_cache(tokens.len());
    let last = m
        .prefill(&tokens[..prefix], &mut cache, 16)
        .unwrap()
        .unwrap();
    let diff = max_abs_diff(&last, &full[(prefix - 1) * v..prefix * v]);
    assert!(diff <= 1e-4, "after prefill: {diff}");
    for (p, &tok) in tokens.iter().enumerate().skip(prefix) {
        let logits = m.step(tok, &mut cache).unwrap();
        let diff = max_abs_diff(&logits, &full[p * v..(p + 1) * v]);
        assert!(diff <= 1e-4, "decode at position {p}: {diff}");
    }
    assert_eq!(cache.len(), tokens.len());
    // Recomputing a prefix from scratch gives the same logits as the cached path.
    let again = recompute_all(&m, &tokens[..101]);
    let diff = max_abs_diff(&again[100 * v..], &full[100 * v..101 * v]);
    assert!(diff <= 1e-4, "prefix recomputation: {diff}");
    // The cache holds keys and values of every token: 2 × layers × tokens × width × 4 bytes.
    let s = &m.shape;
    assert_eq!(cache.bytes(), s.kv_cache_bytes(tokens.len()));
    assert_eq!(cache.bytes(), (2 * 2 * 150 * 64 * 4) as u64);
}

#[test]
fn linear_attention_recurrent_and_chunked_forms_agree() {
    let (nh, d, t) = (3, 16, 150);
    let c = nh * d;
    let q = Mat::from_vec(t, c, random_values(t * c, 1.0, 1));
    let k = Mat::from_vec(t, c, random_values(t * c, 1.0, 2));
    let v = Mat::from_vec(t, c, random_values(t * c, 1.0, 3));
    let mut rec_state = linear::LinearState::new(1, nh, d).layers.remove(0);
    let rec = linear::recurrent(&q, &k, &v, &mut rec_state, nh);
    for block in [1, 7, 64, 150, 512] {
        let mut st = linear::LinearState::new(1, nh, d).layers.remove(0);
        let ch = linear::chunked(&q, &k, &v, &mut st, nh, block);
        let diff = max_abs_diff(&ch.data, &rec.data);
        assert!(diff <= 1e-5, "block {block}: outputs differ by {diff}");
        let sdiff = max_abs_diff(&st.s, &rec_state.s)
            / rec_state.s.iter().fold(1.0, |a, x| f32::max(a, x.abs()));
        assert!(
            sdiff <= 1e-5,
            "block {block}: states differ by {sdiff} (relative)"
        );
        assert!(max_abs_diff(&st.z, &rec_state.z) <= 1e-3);
    }
    // Continuing from a carried state: chunked over the second half equals the recurrence.
    let half =
        |m: &Mat, lo: usize, hi: usize| Mat::from_vec(hi - lo, c, m.data[lo * c..hi * c].to_vec());
    let mut st = linear::LinearState::new(1, nh, d).layers.remove(0);
    linear::chunked(
        &half(&q, 0, 80),
        &half(&k, 0, 80),
        &half(&v, 0, 80),
        &mut st,
        nh,
        32,
    );
    let second = linear::chunked(
        &half(&q, 80, t),
        &half(&k, 80, t),
        &half(&v, 80, t),
        &mut st,
        nh,
        32,
    );
    let diff = max_abs_diff(&second.data, &rec.data[80 * c..]);
    assert!(diff <= 1e-5, "carried state: {diff}");
}

#[test]
fn linear_attention_model_decode_equals_recomputation() {
    let m = Transformer::random(Kind::Linear, tiny_shape(), Format::F32, 4).unwrap();
    let v = m.shape.vocab_size;
    let tokens = token_stream(120, v, 5);
    let full = recompute_all(&m, &tokens);
    let mut cache = m.new_cache(0);
    m.prefill(&tokens[..50], &mut cache, 20).unwrap();
    for (p, &tok) in tokens.iter().enumerate().skip(50) {
        let logits = m.step(tok, &mut cache).unwrap();
        let diff = max_abs_diff(&logits, &full[p * v..(p + 1) * v]);
        assert!(diff <= 1e-4, "position {p}: {diff}");
    }
    // The state does not grow.
    assert!(matches!(cache, Cache::Linear(_)));
    assert_eq!(cache.bytes(), m.shape.linear_state_bytes());
}

#[test]
fn cli_compares_end_to_end_with_json_and_plot() {
    let svg = scratch_file("cmp.svg");
    let out = bin()
        .args(["--threads", "2", "compare", "--model"])
        .arg(fixture("v7.safetensors"))
        .args(["--baseline", "softmax,linear", "--contexts", "16,64,32,128"])
        .args([
            "--decode-tokens",
            "3",
            "--time-budget",
            "none",
            "--json",
            "--plot",
        ])
        .arg(&svg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("memory budget"), "{stderr}");
    assert!(stderr.contains("time budget"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["model"]["version"], "v7");
    assert_eq!(
        v["settings"]["contexts"],
        serde_json::json!([16, 32, 64, 128])
    );
    assert_eq!(v["settings"]["threads"], 2);
    assert_eq!(v["interrupted"], false);
    let models = v["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rwkv-v7", "softmax", "linear"]);
    let (layers, width) = (2u64, 32u64);
    for m in models {
        let points = m["points"].as_array().unwrap();
        assert_eq!(points.len(), 4, "{}", m["name"]);
        assert!(m["stopped"].is_null());
        for p in points {
            for key in [
                "prefill_seconds",
                "prefill_tokens_per_second",
                "decode_ms_per_token",
                "peak_rss_bytes",
                "rss_after_load_bytes",
                "rss_growth_bytes",
                "wall_seconds",
            ] {
                assert!(p[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {p}");
            }
            assert_eq!(p["decode_ms"].as_array().unwrap().len(), 3);
            let n = p["context"].as_u64().unwrap();
            let state = p["state_bytes"].as_u64().unwrap();
            match m["name"].as_str().unwrap() {
                "softmax" => assert_eq!(state, 2 * layers * n * width * 4),
                "rwkv-v7" => assert_eq!(state, v["model"]["state_bytes"].as_u64().unwrap()),
                _ => assert_eq!(state, layers * 2 * (16 * 16 + 16) * 4),
            }
        }
        for key in [
            "prefill_seconds",
            "decode_ms_per_token",
            "state_bytes",
            "peak_rss_bytes",
        ] {
            assert!(m["exponents"][key].is_f64(), "{key}: {}", m["exponents"]);
            assert!(m["exponents_last_step"][key].is_f64());
        }
    }
    // The state's exponent is exact: 1 for the KV cache, 0 for the fixed-size states.
    assert!((models[1]["exponents"]["state_bytes"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert!(
        models[0]["exponents"]["state_bytes"]
            .as_f64()
            .unwrap()
            .abs()
            < 1e-9
    );
    assert!(
        models[2]["exponents"]["state_bytes"]
            .as_f64()
            .unwrap()
            .abs()
            < 1e-9
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") || text.contains("<svg"),
        "not an SVG"
    );
    assert!(text.len() > 10_000, "suspiciously small SVG");
    for label in [
        "RWKV v7: slope",
        "softmax attention: slope",
        "linear attention: slope",
    ] {
        assert!(text.contains(label), "legend lacks {label}");
    }
}

#[test]
fn cli_prints_a_table_and_respects_the_memory_budget() {
    // A 40000-token KV cache of the fixture's shape is 20 MiB: with the ~7 MiB the process
    // needs anyway, over a 24 MiB budget, so the softmax series stops, while RWKV goes on.
    let out = bin()
        .args(["--threads", "1", "compare", "--model"])
        .arg(fixture("v7.safetensors"))
        .args(["--contexts", "64,40000", "--decode-tokens", "2"])
        .args(["--memory-budget", "24MiB"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stdout.contains("growth exponents"), "{stdout}");
    assert!(
        stdout.contains("softmax attention: stopped before 40000 tokens"),
        "{stdout}"
    );
    assert!(stdout.contains("memory budget"), "{stdout}");
    let rows = |model: &str| {
        stdout
            .lines()
            .filter(|l| {
                l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(model)
            })
            .count()
    };
    assert_eq!(rows("RWKV v7"), 2, "{stdout}");
    assert_eq!(rows("softmax attention"), 1, "{stdout}");
}

#[test]
fn cli_rejects_bad_options() {
    for args in [
        &["--baseline", "cosine"][..],
        &["--plot", "x.png"],
        &["--memory-budget", "lots"],
        &["--time-budget", "3 weeks"],
        &["--contexts", "0,16"],
        &["--contexts", "1x"],
        &["--decode-tokens", "0"],
        &["--time-budget", "0s"],
        &["--time-budget", "0"],
        &["--time-budget", "0ms"],
    ] {
        let out = bin()
            .args(["compare", "--model"])
            .arg(fixture("v7.safetensors"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn cli_accepts_k_suffixes_in_contexts() {
    let out = bin()
        .args(["compare", "--model"])
        .arg(fixture("v7.safetensors"))
        .args(["--contexts", "1k,0.05k", "--baseline", "linear"])
        .args(["--decode-tokens", "2", "--time-budget", "none", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["settings"]["contexts"], serde_json::json!([50, 1000]));
    for m in v["models"].as_array().unwrap() {
        let contexts: Vec<u64> = m["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["context"].as_u64().unwrap())
            .collect();
        assert_eq!(contexts, [50, 1000], "{}", m["name"]);
    }
}

#[test]
fn cli_refuses_a_plot_into_a_missing_directory_before_any_work() {
    let missing = scratch_file("no-such-dir").join("sub").join("x.svg");
    let t = std::time::Instant::now();
    let out = bin()
        .args(["compare", "--model"])
        .arg(fixture("v7.safetensors"))
        .args(["--contexts", "16,64,256", "--baseline", "softmax,linear"])
        .args(["--time-budget", "none", "--plot"])
        .arg(&missing)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("error: cannot write --plot") && stderr.contains("no-such-dir"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no table before the error");
    assert!(secs < 5.0, "took {secs:.1} s");
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn an_rwkv_point_peaks_at_the_same_memory_at_any_context() {
    // The worker of one point (as the parent runs it): its token stream is drawn chunk by
    // chunk, so a 1M-token point does not hold 4 MB of tokens that a 1k point does not.
    let peak = |n: &str| {
        let out = bin()
            .args(["--threads", "1", "compare", "--worker", "rwkv"])
            .args(["--worker-context", n, "--decode-tokens", "2", "--model"])
            .arg(fixture("v7.safetensors"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["context"].as_u64().unwrap().to_string(), n);
        v["peak_rss_bytes"].as_u64().unwrap()
    };
    let (small, large) = (peak("1000"), peak("1000000"));
    assert!(
        large < small + (2 << 20),
        "peak RSS at 1M tokens {large}, at 1k {small}"
    );
}

/// The processes whose parent is `pid` (Linux /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the command may hold spaces and brackets.
            let ppid: u32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Runs a comparison whose last point takes minutes, sends SIGINT to compare (not to its
/// worker) once the first two contexts are measured and the third's worker runs, and returns
/// what came out. The worker must be gone with its parent.
fn compare_interrupted(json: bool) -> std::process::Output {
    use std::io::BufRead;
    let mut child = bin()
        .args(["--threads", "1", "compare", "--model"])
        .arg(fixture("v7.safetensors"))
        .args(["--contexts", "16,32,20000000", "--baseline", "linear"])
        .args(["--decode-tokens", "2", "--time-budget", "none"])
        .args(json.then_some("--json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("linear     N=32 ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "ended early: {seen}");
        seen += &line;
    }
    // The RWKV worker at 20M tokens (a minute or more) is starting: find it, then Ctrl-C.
    let t = std::time::Instant::now();
    let mut workers = Vec::new();
    while workers.is_empty() && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        workers = children_of(child.id());
    }
    assert!(!workers.is_empty(), "no worker running");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t.elapsed().as_secs() < 15 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let still_running = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let left: Vec<u32> = workers.iter().copied().filter(still_running).collect();
    for pid in &left {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let _ = child.kill();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let mut o = child.wait_with_output().unwrap();
    assert!(left.is_empty(), "the worker {left:?} outlived compare");
    o.stderr = (seen + &rest).into_bytes();
    o
}

#[test]
fn ctrl_c_reports_the_points_measured_so_far_and_exits_130() {
    let o = compare_interrupted(false);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 4, "two contexts × two models: {stdout}");
    assert!(rows.iter().all(|r| !r.contains("20000000")), "{stdout}");
    assert!(stdout.contains("growth exponents"), "{stdout}");
    assert!(
        stdout.contains("RWKV v7: interrupted (Ctrl-C) before 20000000 tokens"),
        "{stdout}"
    );

    let o = compare_interrupted(true);
    assert_eq!(o.status.code(), Some(130));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["interrupted"], true);
    for m in v["models"].as_array().unwrap() {
        let contexts: Vec<u64> = m["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["context"].as_u64().unwrap())
            .collect();
        assert_eq!(contexts, [16, 32], "{}", m["name"]);
        assert!(m["stopped"].as_str().unwrap().contains("interrupted"));
    }
}

/// Nanoseconds this thread has run on a CPU (Linux), to time kernels on a shared machine.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Kernel speeds, for a person to look at (one thread, CPU time, best of five):
/// `cargo test --release --test compare -- --ignored --nocapture`.
#[test]
#[ignore]
fn kernel_speeds() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let best = |f: &(dyn Fn() -> f32 + Sync)| -> f64 {
        pool.install(|| {
            (0..5)
                .map(|_| {
                    let t0 = thread_cpu_ns().unwrap_or(0);
                    std::hint::black_box(f());
                    (thread_cpu_ns().unwrap_or(0) - t0) as f64 / 1e9
                })
                .fold(f64::MAX, f64::min)
        })
    };
    let (nh, d, n) = (12, 64, 2048);
    let q = random_values(nh * n * d, 1.0, 1);
    let k = random_values(nh * n * d, 1.0, 2);
    let v = random_values(nh * n * d, 1.0, 3);
    let s = best(&|| softmax::causal_attention(&q, &k, &v, nh, d, n, n)[0]);
    let flops = 2.0 * (n * n) as f64 * (nh * d) as f64; // causal QKᵀ and PV, 2 flops per MAC
    eprintln!(
        "softmax attention prefill, {nh} heads x {d}, {n} tokens: {s:.3} CPU s, {:.1} GFLOP/s per core",
        flops / s / 1e9
    );
    let c = nh * d;
    let (qm, km, vm) = (
        Mat::from_vec(n, c, q.clone()),
        Mat::from_vec(n, c, k.clone()),
        Mat::from_vec(n, c, v.clone()),
    );
    let s = best(&|| {
        let mut st = linear::LinearState::new(1, nh, d).layers.remove(0);
        linear::chunked(&qm, &km, &vm, &mut st, nh, linear::BLOCK).data[0]
    });
    eprintln!("linear attention chunked, {n} tokens: {s:.3} CPU s");
    let s = best(&|| {
        let mut st = linear::LinearState::new(1, nh, d).layers.remove(0);
        linear::recurrent(&qm, &km, &vm, &mut st, nh).data[0]
    });
    eprintln!("linear attention recurrent, {n} tokens: {s:.3} CPU s");
}
