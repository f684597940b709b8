//! `rwkv-cli serve`: the server on a free loopback port (it binds port 0 and prints the
//! address), talked to with a real HTTP client (ureq); every wait is bounded and every server
//! is killed when its handle drops. The model is the embedded default (v7, byte vocabulary)
//! unless a test says otherwise. Errors, the API key, a full queue, read timeouts, the body
//! limit, shutdown, the batched step and initial states.

mod common;

use common::server::*;
use common::{fixture, run, stderr};
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
            Some("temperature"),
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

/// Each field's error: status, `param` and a part of the message (parameters this server does
/// not implement are refused by name; the sampler's checks name the field and keep its sign).
#[test]
fn unsupported_and_malformed_fields_are_named() {
    let s = Server::start(&[]);
    // -100 for every id of the embedded model's 256: nothing left to sample.
    let every_id: serde_json::Map<String, Value> =
        (0..256).map(|i| (i.to_string(), json!(-100))).collect();
    let cases: &[(&str, Value, &str, &str)] = &[
        (
            "/v1/completions",
            json!({"logit_bias": every_id}),
            "logit_bias",
            "bans every token",
        ),
        (
            "/v1/completions",
            json!({"temperature": -1}),
            "temperature",
            "'temperature' must be a finite number >= 0 (got -1).",
        ),
        (
            "/v1/completions",
            json!({"top_p": 0}),
            "top_p",
            "'top_p' must be in (0, 1] (got 0; use 1 to disable).",
        ),
        (
            "/v1/chat/completions",
            json!({"echo": true}),
            "echo",
            "not supported by this server for chat",
        ),
        (
            "/v1/completions",
            json!({"best_of": 3}),
            "best_of",
            "not supported",
        ),
        (
            "/v1/completions",
            json!({"suffix": "end"}),
            "suffix",
            "not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
            "not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"tool_choice": "auto"}),
            "tool_choice",
            "not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"functions": [{"name": "f"}]}),
            "functions",
            "not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
            "not supported",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            "prompt",
            "holds 2 prompts; this server takes one per request",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 2, 3]}),
            "prompt",
            "Token-id prompts are not supported",
        ),
        (
            "/v1/completions",
            json!({"prompt": [[1, 2]]}),
            "prompt",
            "Token-id prompts are not supported",
        ),
        (
            "/v1/completions",
            json!({"seed": 1.5}),
            "seed",
            "expected an integer",
        ),
        (
            "/v1/completions",
            json!({"seed": 1e30}),
            "seed",
            "out of range (an integer from -9223372036854775808 to 18446744073709551615)",
        ),
        (
            "/v1/completions",
            json!({"max_tokens": u64::MAX}),
            "max_tokens",
            "18446744073709551615 is more than this server generates",
        ),
        (
            "/v1/completions",
            json!({"logit_bias": {"256": 1}}),
            "logit_bias",
            "'256' is not a token id of this model (0 to 255)",
        ),
        (
            "/v1/completions",
            json!({"logit_bias": {"-1": 1}}),
            "logit_bias",
            "'-1' is not a token id",
        ),
        (
            "/v1/completions",
            json!({"logit_bias": {"5": -101}}),
            "logit_bias",
            "Expected a number from -100 to 100",
        ),
        (
            "/v1/completions",
            json!({"logit_bias": [5]}),
            "logit_bias",
            "expected an object",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": null}),
            "messages",
            "You must provide messages.",
        ),
    ];
    for (path, extra, param, message) in cases {
        let body = with(
            json!({"model": MODEL, "prompt": "a",
                              "messages": [{"role": "user", "content": "x"}]}),
            extra,
        );
        let (got, v, text) = s.post(path, &body.to_string(), None);
        assert_eq!(
            (got, &v["error"]["param"]),
            (400, &json!(param)),
            "{path} {extra}: {text}"
        );
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(message), "{path} {extra}: {m}");
    }
    // Harmless values and unknown fields that change nothing pass; a u64 seed is a seed.
    let body = json!({"model": MODEL, "prompt": "a", "max_tokens": 2, "echo": false,
                      "best_of": 1, "suffix": null, "tools": [], "tool_choice": "none",
                      "response_format": {"type": "text"}, "user": "u", "metadata": {"k": "v"},
                      "store": false, "logit_bias": {}, "seed": u64::MAX});
    assert_eq!(
        s.ok("/v1/completions", body)["usage"]["completion_tokens"],
        2
    );
    let body = json!({"model": MODEL, "prompt": "a", "max_tokens": 2, "n": 2, "best_of": 2});
    assert_eq!(
        s.ok("/v1/completions", body)["choices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// `max_tokens` left out: the endpoint's default (16, chat 1000) but never more than
/// `--max-completion-tokens`; `null` counts as left out (so `max_completion_tokens: null`
/// leaves `max_tokens` in charge).
#[test]
fn the_default_max_tokens_stays_within_the_cap_and_null_is_absent() {
    let s = Server::start(&["--max-completion-tokens", "5"]);
    // The byte vocabulary has no end-of-text token: a completion runs to its limit.
    let v = s.ok("/v1/completions", json!({"model": MODEL, "prompt": "Once"}));
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let v = s.ok(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Once", "max_tokens": null}),
    );
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    let chat = |extra: Value| {
        let body = with(
            json!({"model": MODEL, "temperature": 0,
                              "messages": [{"role": "user", "content": "Tell me a story."}]}),
            &extra,
        );
        s.ok("/v1/chat/completions", body)
    };
    let v = chat(json!({}));
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() <= 5,
        "{v}"
    );
    let three = chat(json!({"max_tokens": 3}));
    assert_eq!(three["usage"]["completion_tokens"], 3, "{three}");
    let v = chat(json!({"max_completion_tokens": null, "max_tokens": 3}));
    assert_eq!(v["usage"], three["usage"], "{v}");
    assert_eq!(chat_text(&v), chat_text(&three));
    let v = chat(json!({"max_completion_tokens": 2, "max_tokens": 3}));
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
}

/// `GET /v1/models/{id}`: the model object of the model served; another id is 404.
#[test]
fn a_model_is_found_by_its_id() {
    let s = Server::start(&[]);
    let (st, v) = s.get(&format!("/v1/models/{MODEL}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!((&v["id"], &v["object"]), (&json!(MODEL), &json!("model")));
    let (_, list) = s.get("/v1/models", None);
    assert_eq!(list["data"][0], v);
    for other in ["gpt-4", "rwkv-cli-default2", "%20"] {
        let (st, v) = s.get(&format!("/v1/models/{other}"), None);
        assert_eq!(
            (st, &v["error"]["code"]),
            (404, &json!("model_not_found")),
            "{v}"
        );
    }
}

/// `--cors-origin`: a browser's preflight is answered before the API key is asked for, the
/// origins given (only they) get `Access-Control-Allow-Origin`, and without the flag nobody
/// does; an origin that is not one is a usage error.
#[test]
fn cors_lets_the_origins_given_call_from_a_browser() {
    let s = Server::start(&["--cors-origin", "http://localhost:3000", "--api-key", "k"]);
    let allowed = |resp: &ureq::http::Response<ureq::Body>| {
        resp.headers()
            .get("access-control-allow-origin")
            .map(|h| h.to_str().unwrap().to_string())
    };
    let preflight = |origin: &str| {
        agent()
            .options(&s.url("/v1/chat/completions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .call()
            .expect("preflight")
    };
    let r = preflight("http://localhost:3000");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(allowed(&r).as_deref(), Some("http://localhost:3000"));
    let methods = r.headers().get("access-control-allow-methods").unwrap();
    assert!(methods.to_str().unwrap().contains("POST"));
    assert_eq!(allowed(&preflight("http://elsewhere.test")), None);
    let get = |origin: &str, server: &Server| {
        agent()
            .get(&server.url("/v1/models"))
            .header("Origin", origin)
            .header("Authorization", "Bearer k")
            .call()
            .expect("request")
    };
    let r = get("http://localhost:3000", &s);
    assert_eq!(
        (r.status().as_u16(), allowed(&r).as_deref()),
        (200, Some("http://localhost:3000"))
    );
    assert_eq!(allowed(&get("http://elsewhere.test", &s)), None);
    let plain = Server::start(&["--api-key", "k"]);
    assert_eq!(allowed(&get("http://localhost:3000", &plain)), None);
    let o = run(&["serve", "--cors-origin", "localhost:3000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cors-origin"), "{}", stderr(&o));
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
        let (st, v) = s.get(&format!("/v1/models/{MODEL}"), Some("s3cret"));
        assert_eq!((st, &v["id"]), (200, &json!(MODEL)));
        assert_eq!(s.get(&format!("/v1/models/{MODEL}"), None).0, 401);
    }
    // The scheme is case-insensitive and may be followed by several spaces (RFC 7235); the
    // key is not.
    let s = Server::start(&["--api-key", "s3cret"]);
    for (header, want) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer   s3cret", 200),
        ("Bearer S3CRET", 401),
        ("Basic s3cret", 401),
        ("Bearers3cret", 401),
        ("s3cret", 401),
    ] {
        let resp = agent()
            .get(&s.url("/v1/models"))
            .header("Authorization", header)
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{header}");
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
    let resp = agent()
        .post(&s.url("/v1/completions"))
        .content_type("application/json")
        .send(json!({"model": MODEL, "prompt": "b"}).to_string())
        .expect("request");
    // When to retry, as clients (the `openai` package among them) read it.
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|h| h.to_str().unwrap().to_string());
    let st = resp.status().as_u16();
    let v: Value = serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!((st, &v["error"]["type"]), (429, &json!("rate_limit_error")));
    assert_eq!(retry.as_deref(), Some("1"));
    drop(hog);
    let v = waiting.join().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 5);
    wait_for_health(&s, "active", 0);
    s.wait_for_log(|l| l.contains("stream closed by the client"));
    // A whole (not streamed) answer's client going away frees the slot too, and is logged
    // (it left no line).
    let body = json!({"model": MODEL, "prompt": "Once", "max_tokens": 1_000_000}).to_string();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_for_health(&s, "active", 1);
    drop(c);
    wait_for_health(&s, "active", 0);
    s.wait_for_log(|l| {
        l.starts_with("POST /v1/completions closed by the client before the answer")
    });
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

/// Reads what the server sends until it closes the connection (or resets it); bounded by the
/// socket's read timeout ([`LIMIT`]).
fn read_to_close(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(LIMIT)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close from the server: {e} (read so far: {seen:?})"),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A request cut short (headers never finished, a body shorter than its Content-Length) is
/// disconnected after --read-timeout (the body's with a 408), so it does not hold the server
/// after SIGTERM: --shutdown-timeout is far away, and the server still exits, with 0.
#[test]
fn stalled_requests_are_cut_and_do_not_hold_the_shutdown() {
    for bad in ["0", "86401"] {
        let o = run(&["serve", "--port", "0", "--read-timeout", bad]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("--read-timeout must be from 1 to 86400"),
            "{err}"
        );
    }
    let s = Server::start(&["--read-timeout", "1", "--shutdown-timeout", "100000"]);
    let connect = |bytes: &[u8]| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.write_all(bytes).unwrap();
        c
    };
    let mut headers = connect(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    let mut body = connect(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"",
    );
    // Both connections are the server's (an answer to a request after them has come back).
    assert_eq!(s.get("/health", None).0, 200);
    s.signal("TERM");
    let answer = read_to_close(&mut body);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert_eq!(read_to_close(&mut headers), "");
    s.wait_for_log(|l| l.starts_with("POST /v1/completions 408 "));
    let status = s.exit_status();
    assert!(status.success(), "{status:?}");
}

/// The requests in flight get --shutdown-timeout to finish, then the server exits anyway (0); a
/// second SIGINT during the wait exits at once with 130 (a second SIGTERM: 143).
#[test]
fn the_shutdown_wait_is_bounded_and_a_second_signal_ends_it() {
    for (flags, second, want) in [
        (["--shutdown-timeout", "1"], None, 0),
        (["--shutdown-timeout", "100000"], Some("INT"), 130),
        (["--shutdown-timeout", "100000"], Some("TERM"), 143),
    ] {
        let s = Server::start(&[&flags[..], &["--max-completion-tokens", "100000000"]].concat());
        // A request that would hold its slot for a hundred million tokens.
        let hog = open_stream(&s, 100_000_000);
        wait_for_health(&s, "active", 1);
        s.signal(second.unwrap_or("TERM"));
        if let Some(sig) = second {
            s.wait_for_log(|l| l.starts_with("shutting down: finishing"));
            s.signal(sig);
        }
        let status = s.exit_status();
        assert_eq!(
            status.code(),
            Some(want),
            "{flags:?} {second:?}: {status:?}"
        );
        drop(hog);
    }
}

/// A body over the limit (--max-prompt-tokens 100: the floor, 1 MiB) gets 413 as an OpenAI
/// error, refused by its Content-Length before it is sent, with `Connection: close` and a log
/// line; a body of exactly the limit is read.
#[test]
fn a_body_over_the_limit_gets_413_as_an_openai_error() {
    let s = Server::start(&["--max-prompt-tokens", "100"]);
    let limit = 1 << 20;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        limit + 1
    )
    .unwrap();
    let answer = read_to_close(&mut c);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1048576 bytes"));
    s.wait_for_log(|l| l.starts_with("POST /v1/completions 413 "));
    // Exactly the limit: read and answered (JSON may be padded with spaces).
    let mut body = json!({"model": MODEL, "prompt": "a", "max_tokens": 2}).to_string();
    body.push_str(&" ".repeat(limit - body.len()));
    let (st, v, _) = s.post("/v1/completions", &body, None);
    assert_eq!((st, &v["usage"]["completion_tokens"]), (200, &json!(2)));
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
