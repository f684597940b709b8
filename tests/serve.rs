//! `rwkv-cli serve`: the server on a free loopback port (it binds port 0 and prints the
//! address), talked to with a real HTTP client (ureq); every wait is bounded and every server
//! is killed when its handle drops. The model is the embedded default (v7, byte vocabulary)
//! unless a test says otherwise.

mod common;

use common::{bin, fixture, run, run_with_stdin, wait_or_kill};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "rwkv-cli-default";
const LIMIT: Duration = Duration::from_secs(120);

struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = bin();
        cmd.args(["serve", "--port", "0"]).args(args);
        cmd.env_remove("RWKV_CLI_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find("listening on http://127.0.0.1:") {
                        let port: u16 = line[at + 30..].trim().parse().unwrap();
                        let _ = tx.send(port);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let port = match rx.recv_timeout(LIMIT) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start: {:?}", log.lock().unwrap());
            }
        };
        Server { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// POSTs JSON; the status and the body as JSON (`Null` when it is not JSON).
    fn post(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value, String) {
        let mut req = agent()
            .post(&self.url(path))
            .content_type("application/json");
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = req.send(body).expect("request");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = agent().get(&self.url(path));
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = req.call().expect("request");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v, text) = self.post(path, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        v
    }

    /// A streamed request: the `data:` payloads in order (`[DONE]` included).
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let resp = agent()
            .post(&self.url(path))
            .content_type("application/json")
            .send(body.to_string().as_str())
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        wait_or_kill(&mut self.child, LIMIT).expect("the server did not exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(LIMIT))
        .build()
        .into()
}

fn completion_text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

fn chat_text(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `generate --temperature 0 -q -n N --prompt P` and `more` flags: its text.
fn generate_with(prompt: &str, n: usize, more: &[&str]) -> String {
    let n = n.to_string();
    let args = [
        &[
            "generate",
            "--temperature",
            "0",
            "-q",
            "-n",
            &n,
            "--prompt",
            prompt,
        ],
        more,
    ]
    .concat();
    let o = run(&args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn generate(prompt: &str, n: usize) -> String {
    generate_with(prompt, n, &[])
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time",
    "It is a truth universally acknowledged",
    "Mr. Darcy said",
    "In the morning",
    "She walked",
    "1, 2, 3,",
    "Elizabeth",
];

#[test]
fn greedy_completions_equal_generate() {
    let s = Server::start(&[]);
    for p in &PROMPTS[..3] {
        let v = s.ok(
            "/v1/completions",
            json!({"model": MODEL, "prompt": p, "max_tokens": 40, "temperature": 0}),
        );
        assert_eq!(completion_text(&v), generate(p, 40), "prompt {p:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["usage"]["completion_tokens"], 40);
        // The byte vocabulary: one token per byte.
        assert_eq!(v["usage"]["prompt_tokens"], p.len());
    }
    // A stop string ends the text before it, with finish_reason "stop".
    let full = generate(PROMPTS[0], 40);
    let stop = &full[10..13];
    let v = s.ok(
        "/v1/completions",
        json!({"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0, "stop": [stop]}),
    );
    assert_eq!(completion_text(&v), full[..full.find(stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // One log line per request, with its tokens.
    let log = s.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /v1/completions 200 prompt_tokens=")
                && l.contains("cached_tokens=")
                && l.contains("completion_tokens=40")
                && l.ends_with("ms")),
        "{log:?}"
    );
}

#[test]
fn seeded_sampling_equals_generate() {
    let s = Server::start(&[]);
    let v = s.ok(
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 30,
               "temperature": 0.9, "top_p": 0.7, "seed": 7, "presence_penalty": 0.3,
               "frequency_penalty": 0.2}),
    );
    let o = run(&[
        "generate",
        "-q",
        "-n",
        "30",
        "--temperature",
        "0.9",
        "--top-p",
        "0.7",
        "--seed",
        "7",
        "--presence-penalty",
        "0.3",
        "--frequency-penalty",
        "0.2",
        "--prompt",
        "Once upon a time",
    ]);
    assert_eq!(completion_text(&v), String::from_utf8(o.stdout).unwrap());
}

#[test]
fn chat_completions_equal_the_chat_command() {
    let s = Server::start(&[]);
    for (system, message) in [
        (None, "Hello, who are you?"),
        (Some("You are terse."), "Tell me a story."),
    ] {
        let mut messages = Vec::new();
        let mut cmd = bin();
        cmd.args(["chat", "--temperature", "0", "-n", "60"]);
        if let Some(sys) = system {
            messages.push(json!({"role": "system", "content": sys}));
            cmd.args(["--system", sys]);
        }
        messages.push(json!({"role": "user", "content": message}));
        let v = s.ok(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 60}),
        );
        let o = run_with_stdin(&mut cmd, format!("{message}\n").as_bytes());
        assert!(o.status.success(), "{}", common::stderr(&o));
        let piped = String::from_utf8(o.stdout).unwrap();
        assert_eq!(format!("{}\n\n", chat_text(&v)), piped, "system {system:?}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    }
}

#[test]
fn streaming_yields_the_same_text_and_usage() {
    let s = Server::start(&[]);
    let body =
        json!({"model": MODEL, "prompt": "It is a truth", "max_tokens": 50, "temperature": 0});
    let whole = completion_text(&s.ok("/v1/completions", body.clone()));
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let events = s.stream("/v1/completions", sb);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["text"].as_str()))
        .collect();
    assert_eq!(text, whole);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| &ch["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 50);
    // The same prompt again: all of it came from the cache.
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 13);

    let cb = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}],
                    "temperature": 0, "max_tokens": 40});
    let whole = chat_text(&s.ok("/v1/chat/completions", cb.clone()));
    let mut sb = cb;
    sb["stream"] = json!(true);
    let events = s.stream("/v1/chat/completions", sb);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole);
}

/// `generate --temperature 0 --logprobs N` lines for a prompt: (logprob, top logprobs).
fn generate_logprobs(prompt: &str, n: usize, top: usize) -> Vec<(f64, Vec<f64>)> {
    let out = common::scratch_file(&format!("logprobs-{n}-{top}.jsonl"));
    let top = top.to_string();
    let flags = ["--logprobs", &top, "--logprobs-out", out.to_str().unwrap()];
    generate_with(prompt, n, &flags);
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let top = v["top_logprobs"].as_array().unwrap();
            let top = top.iter().map(|e| e["logprob"].as_f64().unwrap()).collect();
            (v["logprob"].as_f64().unwrap(), top)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

/// The `logprobs` of the chunks of a streamed reply, one JSON value per chunk that has them.
fn streamed_logprobs(events: &[String]) -> Vec<Value> {
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"].get(0).map(|ch| ch["logprobs"].clone()))
        .filter(|l| !l.is_null())
        .collect()
}

#[test]
fn logprobs_equal_generate_and_stream_as_they_answer_whole() {
    let s = Server::start(&[]);
    let prompt = "Once upon a time";
    let want = generate_logprobs(prompt, 24, 3);
    assert_eq!(want.len(), 24);
    // Completions: OpenAI's legacy form.
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0,
                      "logprobs": 3});
    let v = s.ok("/v1/completions", body.clone());
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let token_lps = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(tokens.len(), 24, "{lp}");
    assert_eq!((token_lps.len(), tops.len(), offsets.len()), (24, 24, 24));
    let text = completion_text(&v);
    for (i, (lp_want, top_want)) in want.iter().enumerate() {
        let got = token_lps[i].as_f64().unwrap();
        assert!(
            close(got, *lp_want),
            "token {i}: {got} vs generate's {lp_want}"
        );
        // {token: logprob}: the same values as generate's best three; greedy chose the best.
        let mut top: Vec<f64> = tops[i]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .collect();
        top.sort_by(|a, b| b.total_cmp(a));
        assert!(top.len() <= 3 && !top.is_empty(), "{}", tops[i]);
        for (g, w) in top.iter().zip(top_want) {
            assert!(close(*g, *w), "token {i}: top {g} vs {w}");
        }
        assert!(close(top[0], got), "token {i}: greedy took the best");
    }
    // Where each token's text starts (the byte vocabulary: one character per ASCII token).
    assert_eq!(offsets[0], 0);
    if text.is_ascii() {
        let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(joined, text);
        let want: Vec<Value> = (0..24).map(|i| json!(i)).collect();
        assert_eq!(offsets, &want);
    }
    // Streamed: the chunks' logprobs put together are the whole reply's.
    let mut sb = body;
    sb["stream"] = json!(true);
    let parts = streamed_logprobs(&s.stream("/v1/completions", sb));
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        let joined: Vec<Value> = parts
            .iter()
            .flat_map(|p| p[key].as_array().unwrap().clone())
            .collect();
        assert_eq!(&joined, lp[key].as_array().unwrap(), "{key}");
    }
    // Without logprobs: null.
    let v = s.ok(
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 2}),
    );
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");

    // Chat: content entries with bytes and sorted top_logprobs holding the chosen token.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}],
                      "temperature": 0, "max_tokens": 30, "logprobs": true, "top_logprobs": 4});
    let v = s.ok("/v1/chat/completions", body.clone());
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(!content.is_empty());
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().unwrap()
        );
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4, "{e}");
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "not sorted: {e}");
        assert!(
            top.iter()
                .any(|t| t["bytes"] == e["bytes"] && close(t["logprob"].as_f64().unwrap(), lp)),
            "the chosen token is not among the top: {e}"
        );
    }
    let mut sb = body;
    sb["stream"] = json!(true);
    let parts = streamed_logprobs(&s.stream("/v1/chat/completions", sb));
    let joined: Vec<Value> = parts
        .iter()
        .flat_map(|p| p["content"].as_array().unwrap().clone())
        .collect();
    assert_eq!(&joined, content);

    // Out of range or of the wrong type: 400 naming the parameter.
    for (path, extra, param) in [
        ("/v1/completions", json!({"logprobs": 21}), "logprobs"),
        ("/v1/completions", json!({"logprobs": -1}), "logprobs"),
        ("/v1/completions", json!({"logprobs": true}), "logprobs"),
        (
            "/v1/chat/completions",
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"top_logprobs": 2}),
            "top_logprobs",
        ),
        ("/v1/chat/completions", json!({"logprobs": 2}), "logprobs"),
    ] {
        let mut body = json!({"model": MODEL, "prompt": "a",
                              "messages": [{"role": "user", "content": "x"}]});
        for (k, x) in extra.as_object().unwrap() {
            body[k] = x.clone();
        }
        let (got, v, text) = s.post(path, &body.to_string(), None);
        assert_eq!(
            (got, &v["error"]["param"]),
            (400, &json!(param)),
            "{path} {extra}: {text}"
        );
    }
}

/// `n`: the prompt is read once; choice i samples as a request seeded `seed + i` would.
#[test]
fn n_choices_are_the_samples_of_their_seeds() {
    let s = Server::start(&["--max-batch", "4"]);
    let prompt = "It is a truth universally";
    let sampled = |seed: u64, n: usize| {
        s.ok(
            "/v1/completions",
            json!({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 1.0,
                   "top_p": 0.9, "seed": seed, "n": n}),
        )
    };
    let v = sampled(7, 3);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{v}");
    // Usage: the prompt once, every choice's tokens.
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], 3 * 24);
    let texts: Vec<String> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
        // The same choice alone: a request with the seed 7 + i (its prompt from the cache).
        let alone = sampled(7 + i as u64, 1);
        assert_eq!(texts[i], completion_text(&alone), "choice {i}");
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three equal samples: {texts:?}"
    );
    // Streamed: each index's pieces make its choice's text.
    let events = s.stream(
        "/v1/completions",
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 1.0,
               "top_p": 0.9, "seed": 7, "n": 3, "stream": true}),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut streamed = vec![String::new(); 3];
    let mut finished = 0;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        streamed[i].push_str(ch["text"].as_str().unwrap());
        finished += usize::from(!ch["finish_reason"].is_null());
    }
    assert_eq!(streamed, texts);
    assert_eq!(finished, 3);
    // Chat: greedy choices are all the same reply.
    let v = s.ok(
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}],
               "temperature": 0, "max_tokens": 20, "n": 2}),
    );
    let c = v["choices"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0]["message"], c[1]["message"]);
    // More choices than slots, or none: 400.
    for n in [0, 5, -1] {
        let body = json!({"model": MODEL, "prompt": "a", "n": n});
        let (got, v, text) = s.post("/v1/completions", &body.to_string(), None);
        assert_eq!((got, &v["error"]["param"]), (400, &json!("n")), "{text}");
    }
}

#[test]
fn a_shared_prefix_comes_from_the_cache_and_changes_nothing() {
    let cached = Server::start(&[]);
    let fresh = Server::start(&["--state-cache", "0"]);
    let prefix = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ".repeat(3);
    let ask = |s: &Server, p: &str| {
        s.ok(
            "/v1/completions",
            json!({"model": MODEL, "prompt": p, "max_tokens": 30, "temperature": 0}),
        )
    };
    let first = ask(&cached, &prefix);
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let longer = format!("{prefix}However little known");
    let second = ask(&cached, &longer);
    let cached_tokens = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached_tokens >= prefix.len() as u64 && cached_tokens < longer.len() as u64,
        "{cached_tokens}"
    );
    let reference = ask(&fresh, &longer);
    assert_eq!(
        reference["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
    assert_eq!(completion_text(&second), completion_text(&reference));
    assert!(cached
        .log()
        .iter()
        .any(|l| l.contains(&format!("cached_tokens={cached_tokens} "))));

    // A chat follow-up: the previous turn (prompt and reply) is a cached prefix.
    let m1 = json!([{"role": "user", "content": "Hello"}]);
    let r1 = cached.ok(
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": m1, "temperature": 0, "max_tokens": 200}),
    );
    let p1 = r1["usage"]["prompt_tokens"].as_u64().unwrap();
    let reply = chat_text(&r1);
    let m2 = json!([{"role": "user", "content": "Hello"},
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": "And then?"}]);
    let body = json!({"model": MODEL, "messages": m2, "temperature": 0, "max_tokens": 40});
    let r2 = cached.ok("/v1/chat/completions", body.clone());
    let c2 = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(c2 >= p1, "cached {c2} < first prompt {p1}");
    let r2_fresh = fresh.ok("/v1/chat/completions", body);
    assert_eq!(chat_text(&r2), chat_text(&r2_fresh));
}

#[test]
fn concurrent_requests_give_the_texts_of_one_by_one() {
    let s = Arc::new(Server::start(&["--max-batch", "8", "--state-cache", "0"]));
    let body = |p: &str| json!({"model": MODEL, "prompt": p, "max_tokens": 40, "temperature": 0});
    let alone: Vec<String> = PROMPTS
        .iter()
        .map(|p| completion_text(&s.ok("/v1/completions", body(p))))
        .collect();
    let handles: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let (s, b) = (s.clone(), body(p));
            std::thread::spawn(move || completion_text(&s.ok("/v1/completions", b)))
        })
        .collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(together, alone);
}

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
