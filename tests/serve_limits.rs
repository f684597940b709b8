//! `rwkv-cli serve`: the server on a free loopback port (it binds port 0 and prints the
//! address), talked to with a real HTTP client (ureq); every wait is bounded and every server
//! is killed when its handle drops. The model is the embedded default (v7, byte vocabulary)
//! unless a test says otherwise. Errors, the API key, a full queue, shutdown, the batched step and
//! initial states.

mod common;

use common::server::*;
use common::{fixture, run};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn bad_requests_get_openai_errors() {
    let s = Server::start(&[
        "--max-prompt-tokens",
        "100",
        "--max-completion-tokens",
        "1000",
    ]);
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "max_tokens": 1001}"#,
            400,
            Some("max_tokens"),
        ),
        ("/v1/completions", "{not json", 400, None),
        ("/v1/completions", "[1, 2]", 400, None),
        (
            "/v1/completions",
            r#"{"model": "gpt-4", "prompt": "a"}"#,
            404,
            Some("model"),
        ),
        ("/v1/completions", r#"{"prompt": "a"}"#, 400, Some("model")),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": 5}"#,
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "max_tokens": -1}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "max_tokens": "9"}"#,
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "temperature": "hot"}"#,
            400,
            Some("temperature"),
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "temperature": -1}"#,
            400,
            None,
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "stop": 3}"#,
            400,
            Some("stop"),
        ),
        (
            "/v1/completions",
            r#"{"model": "rwkv-cli-default", "prompt": "a", "stream": "yes"}"#,
            400,
            Some("stream"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "rwkv-cli-default", "messages": "hi"}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "rwkv-cli-default", "messages": []}"#,
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "rwkv-cli-default", "messages": [{"role": "wizard", "content": "x"}]}"#,
            400,
            None,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "rwkv-cli-default", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}"#,
            400,
            Some("messages"),
        ),
        ("/v1/no/such/endpoint", "{}", 404, None),
    ];
    for (path, body, status, param) in cases {
        let (got, v, text) = s.post(path, body, None);
        assert_eq!(got, *status, "{path} {body}: {text}");
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        assert!(err["type"].is_string(), "{text}");
        if let Some(p) = param {
            assert_eq!(err["param"], *p, "{body}");
        }
    }
    let long = "x".repeat(101);
    let (got, v, _) = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": long}).to_string(),
        None,
    );
    assert_eq!(
        (got, &v["error"]["code"]),
        (400, &json!("context_length_exceeded"))
    );
    // A known path with the wrong method: 405 with an error object, and a log line.
    let (got, v) = s.get("/v1/completions", None);
    assert_eq!(got, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    // The log is read from the server's stderr by a thread: wait for the line (bounded).
    let t0 = Instant::now();
    while !s.log().iter().any(|l| l == "GET /v1/completions 405") {
        assert!(
            t0.elapsed() < LIMIT,
            "no log line for the 405: {:?}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The worker is still alive.
    let v = s.ok(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "a", "max_tokens": 3}),
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(
        s.log()
            .iter()
            .any(|l| l == "POST /v1/completions 404 0ms"
                || l.starts_with("POST /v1/completions 404 "))
    );
}

#[test]
fn the_api_key_is_required_when_set() {
    for (args, env) in [
        (vec!["--api-key", "s3cret"], vec![]),
        (vec![], vec![("RWKV_CLI_API_KEY", "s3cret")]),
    ] {
        let s = Server::start_env(&args, &env);
        let body = json!({"model": MODEL, "prompt": "a", "max_tokens": 2}).to_string();
        let (st, v, _) = s.post("/v1/completions", &body, None);
        assert_eq!((st, &v["error"]["code"]), (401, &json!("invalid_api_key")));
        assert_eq!(s.post("/v1/completions", &body, Some("s3cre")).0, 401);
        assert_eq!(s.post("/v1/completions", &body, Some("s3cret!")).0, 401);
        assert_eq!(s.get("/v1/models", None).0, 401);
        assert_eq!(s.post("/v1/completions", &body, Some("s3cret")).0, 200);
        let (st, v) = s.get("/v1/models", Some("s3cret"));
        assert_eq!((st, &v["data"][0]["id"]), (200, &json!(MODEL)));
        assert_eq!(s.get("/health", None).0, 200);
    }
}

/// Opens a streamed request on a raw socket and reads until its first event.
fn open_stream(s: &Server, max_tokens: usize) -> TcpStream {
    let body = json!({"model": MODEL, "prompt": "Once", "max_tokens": max_tokens, "stream": true})
        .to_string();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    c
}

fn wait_for_health(s: &Server, what: &str, want: u64) {
    let t0 = Instant::now();
    loop {
        let (_, v) = s.get("/health", None);
        if v[what] == want {
            return;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "health never showed {what} = {want}: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_queue_answers_429_and_a_gone_client_frees_its_slot() {
    let s = Arc::new(Server::start(&[
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--max-completion-tokens",
        "1000000",
    ]));
    // Holds the only slot for a long time (a million tokens) until it disconnects.
    let hog = open_stream(&s, 1_000_000);
    wait_for_health(&s, "active", 1);
    let waiting = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.ok(
                "/v1/completions",
                json!({"model": MODEL, "prompt": "a", "max_tokens": 5}),
            )
        })
    };
    wait_for_health(&s, "queued", 1);
    let (st, v, _) = s.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "b"}).to_string(),
        None,
    );
    assert_eq!((st, &v["error"]["type"]), (429, &json!("rate_limit_error")));
    drop(hog);
    let v = waiting.join().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5);
    wait_for_health(&s, "active", 0);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let s = Server::start(&[]);
    let port = s.port;
    let pending = std::thread::spawn(move || {
        let resp = agent()
            .post(&format!("http://127.0.0.1:{port}/v1/completions"))
            .send(
                json!({"model": MODEL, "prompt": "Once", "max_tokens": 300})
                    .to_string()
                    .as_str(),
            )
            .unwrap();
        let v: Value = serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap();
        v
    });
    wait_for_health(&s, "active", 1);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let v = pending.join().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 300, "{v}");
}

#[test]
fn batched_v7_step_matches_single_steps() {
    // Plain v7, and DeepEmbed (whose FFN scale depends on each row's token).
    for fixture_name in ["v7.safetensors", "v7_de.safetensors"] {
        batched_step_matches_single_steps(fixture_name);
    }
}

fn batched_step_matches_single_steps(fixture_name: &str) {
    use rwkv_cli::checkpoint::Checkpoint;
    use rwkv_cli::models::{load_checkpoint, LoadOptions, State};
    let ckpt = Checkpoint::open(std::path::Path::new(&fixture(fixture_name))).unwrap();
    let model = load_checkpoint(&ckpt, LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size;
    // Eight sequences with different histories.
    let mut singles: Vec<State> = Vec::new();
    for b in 0..8u32 {
        let mut st = model.new_state();
        let prompt: Vec<u32> = (0..(b + 3))
            .map(|i| (i * 7 + b * 13) % vocab as u32)
            .collect();
        model.forward_seq(&prompt, &mut st, false).unwrap();
        singles.push(st);
    }
    let mut batched = singles.clone();
    let mut worst = 0f32;
    for step in 0..4u32 {
        let tokens: Vec<u32> = (0..8u32)
            .map(|b| (b * 5 + step * 3 + 1) % vocab as u32)
            .collect();
        let alone: Vec<Vec<f32>> = tokens
            .iter()
            .zip(singles.iter_mut())
            .map(|(&t, st)| model.step(t, st).unwrap())
            .collect();
        let mut refs: Vec<&mut State> = batched.iter_mut().collect();
        let together = model.step_batch(&tokens, &mut refs).unwrap();
        assert_eq!(together.len(), 8 * vocab);
        for (b, a) in alone.iter().enumerate() {
            let row = &together[b * vocab..(b + 1) * vocab];
            worst = worst.max(common::max_abs_diff(a, row));
        }
    }
    // The matrix-matrix and matrix-vector kernels sum in different orders: close, not equal.
    assert!(worst < 1e-3, "{fixture_name}: max logit difference {worst}");
    for (a, b) in singles.iter().zip(&batched) {
        let d = a
            .layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| common::max_abs_diff(&x.wkv, &y.wkv))
            .fold(0.0, f32::max);
        assert!(d < 1e-3, "{fixture_name}: state difference {d}");
    }
    eprintln!("batched step, {fixture_name}: max logit difference {worst:e}");
}

/// `--init-state`: every request starts from the state-tuned state, so a greedy completion
/// equals `generate --init-state` (and differs from the server without it), also when the
/// prompt's prefix comes from the cache.
#[test]
fn an_init_state_is_where_every_request_starts() {
    let model = common::fixture_path("v7.safetensors");
    let state = common::fixture_path("v7.state.pth");
    let (m, st) = (model.to_str().unwrap(), state.to_str().unwrap());
    let prompt = "Hello there";
    let generate_from = |init: bool| -> String {
        let mut args = vec!["generate", "-m", m, "--temperature", "0", "-q", "-n", "12"];
        if init {
            args.extend_from_slice(&["--init-state", st]);
        }
        args.extend_from_slice(&["--prompt", prompt]);
        let o = run(&args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let expected = generate_from(true);
    assert_ne!(
        expected,
        generate_from(false),
        "the state changes nothing here"
    );
    let s = Server::start(&["-m", m, "--init-state", st]);
    let id = "v7";
    for _ in 0..2 {
        // The second request finds its prompt's state in the cache.
        let v = s.ok(
            "/v1/completions",
            json!({"model": id, "prompt": prompt, "max_tokens": 12, "temperature": 0}),
        );
        assert_eq!(completion_text(&v), expected);
    }
}
