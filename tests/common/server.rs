//! A `rwkv-cli serve` process on a free loopback port for the serve tests (it binds port 0
//! and prints the address), an HTTP client with bounded waits, and the `generate` runs the
//! answers are compared with. The server is killed when its handle drops.

use super::{bin, run, wait_or_kill};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MODEL: &str = "rwkv-cli-default";
pub const LIMIT: Duration = Duration::from_secs(120);

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
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

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// POSTs JSON; the status and the body as JSON (`Null` when it is not JSON).
    pub fn post(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value, String) {
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

    pub fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = agent().get(&self.url(path));
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let resp = req.call().expect("request");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v, text) = self.post(path, &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        v
    }

    /// A streamed request: the `data:` payloads in order (`[DONE]` included).
    pub fn stream(&self, path: &str, body: Value) -> Vec<String> {
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
    pub fn terminate(self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.exit_status()
    }

    /// Sends a signal (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits (at most [`LIMIT`]) for the server to exit; its status.
    pub fn exit_status(mut self) -> std::process::ExitStatus {
        wait_or_kill(&mut self.child, LIMIT)
            .unwrap_or_else(|| panic!("the server did not exit within {LIMIT:?}: {:?}", self.log()))
    }

    /// Waits (at most [`LIMIT`]) for a log line that `matches`.
    pub fn wait_for_log(&self, matches: impl Fn(&str) -> bool) {
        let t0 = std::time::Instant::now();
        while !self.log().iter().any(|l| matches(l)) {
            assert!(t0.elapsed() < LIMIT, "no such log line: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(LIMIT))
        .build()
        .into()
}

pub fn completion_text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

pub fn chat_text(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `generate --temperature 0 -q -n N --prompt P` and `more` flags: its text.
pub fn generate_with(prompt: &str, n: usize, more: &[&str]) -> String {
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
    assert!(o.status.success(), "{}", super::stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

pub fn generate(prompt: &str, n: usize) -> String {
    generate_with(prompt, n, &[])
}

/// `base` (a JSON object) with the fields of `extra` set over it.
pub fn with(mut base: Value, extra: &Value) -> Value {
    for (k, v) in extra.as_object().expect("an object") {
        base[k] = v.clone();
    }
    base
}

pub const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time",
    "It is a truth universally acknowledged",
    "Mr. Darcy said",
    "In the morning",
    "She walked",
    "1, 2, 3,",
    "Elizabeth",
];
