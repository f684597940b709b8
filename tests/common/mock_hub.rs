//! A mock Hugging Face Hub for `hub.rs` and `hub_hostile.rs`, and the helpers both use.
//!
//! The real Hub is not reachable from the test machines, so each test starts its own mock on
//! 127.0.0.1 (a port picked by binding port 0), speaking the part of the Hub protocol hf-hub
//! 0.5 uses: `GET /{owner}/{repo}/resolve/{revision}/{file}` with `Range` requests, answered
//! with `ETag`, `X-Repo-Commit` and `Content-Range`. The binary runs with `HF_ENDPOINT` pointing
//! at the mock and its own temporary `HF_HOME`. The mock serves `tests/fixtures/v7.pth` (a real
//! tiny checkpoint).

use super::{fixture, read_fixture, stderr};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub fn fixture_bytes() -> Arc<Vec<u8>> {
    Arc::new(read_fixture("v7.pth"))
}

/// What a route does wrong, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// Full-file requests get the full Content-Length but only this many bytes, then the
    /// connection closes.
    CutWithLength(usize),
    /// Full-file requests get no Content-Length and only this many bytes before the close.
    CutWithoutLength(usize),
    /// A request for the rest of the file (a resume) gets the whole file with status 200.
    IgnoreResumeRange,
    /// A gated repo: 401 unless the request carries `Authorization: Bearer <this>`.
    NeedsToken(&'static str),
    /// A hostile mirror: this `X-Repo-Commit` header.
    Commit(&'static str),
    /// A hostile mirror: this `ETag` header.
    Etag(&'static str),
    /// The first this-many requests get "503 Service Unavailable" with an X-Error-Message.
    Unavailable(usize),
    /// Every request gets this status with an X-Error-Message.
    Status(u16),
    /// Full-file requests get the headers and this many bytes, then nothing for 6 s.
    StallAfter(usize),
    /// Full-file requests get the file in ten pieces, this many milliseconds apart.
    Slow(u64),
}

#[derive(Clone)]
pub struct Route {
    /// `/{owner}/{repo}/resolve/{revision}/{file}`, or `*` for any path.
    pub path: String,
    pub body: Arc<Vec<u8>>,
    pub fault: Fault,
}

pub fn route(path: &str, body: Arc<Vec<u8>>, fault: Fault) -> Route {
    Route {
        path: path.to_string(),
        body,
        fault,
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

/// A mock Hub: serves its routes, answers 404 to anything else, and logs every request.
pub struct Mock {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Request>>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl Mock {
    pub fn start(routes: Vec<Route>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let routes = Arc::new(routes);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = conn {
                    // A connection each its own thread, as a real server: one client's slow
                    // transfer does not hold up another's requests.
                    let (routes, log) = (routes.clone(), log2.clone());
                    std::thread::spawn(move || {
                        let _ = serve(&mut s, &routes, &log);
                    });
                }
            }
        });
        Mock {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Stops serving and closes the port.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            t.join().unwrap();
        }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A short, stable ETag for a body (FNV-1a).
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in body {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// `bytes=S-` or `bytes=S-E` as (S, E inclusive), clamped to the body.
fn parse_range(r: &str, len: usize) -> Option<(usize, usize)> {
    let (s, e) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = s.parse().ok()?;
    let end = if e.is_empty() {
        len.checked_sub(1)?
    } else {
        e.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn serve(s: &mut TcpStream, routes: &[Route], log: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let (range, authorization) = (header("range"), header("authorization"));
    log.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        authorization: authorization.clone(),
    });

    let Some(r) = routes.iter().find(|r| r.path == path || r.path == "*") else {
        let body = b"{\"error\":\"Entry not found\"}";
        write!(
            s,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nX-Error-Code: EntryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        return Ok(());
    };
    let seen = log
        .lock()
        .unwrap()
        .iter()
        .filter(|q| q.path == path)
        .count();
    let failing = match r.fault {
        Fault::Unavailable(n) if seen <= n => Some(503),
        Fault::Status(code) => Some(code),
        _ => None,
    };
    if let Some(code) = failing {
        write!(
            s,
            "HTTP/1.1 {code} Oops\r\nX-Error-Message: the mirror says \u{9b}31mno\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if let Fault::NeedsToken(t) = r.fault {
        if authorization.as_deref() != Some(&format!("Bearer {t}")) {
            write!(
                s,
                "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
    }
    let body = &r.body[..];
    let n = body.len();
    let commit = match r.fault {
        Fault::Commit(c) => c,
        _ => COMMIT,
    };
    let tag = match r.fault {
        Fault::Etag(e) => e.to_string(),
        _ => etag(body),
    };
    let common = format!(
        "ETag: \"{tag}\"\r\nX-Repo-Commit: {commit}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"
    );
    let range = range.as_deref().and_then(|r| parse_range(r, n));
    let (status, start, end) = match range {
        Some((a, _)) if a > 0 && r.fault == Fault::IgnoreResumeRange => ("200 OK", 0, n - 1),
        Some((a, b)) => ("206 Partial Content", a, b),
        None => ("200 OK", 0, n - 1),
    };
    let content_range = if status.starts_with("206") {
        format!("Content-Range: bytes {start}-{end}/{n}\r\n")
    } else {
        String::new()
    };
    let slice = &body[start..=end];
    let whole = start == 0 && end == n - 1;
    let (length_header, sent) = match r.fault {
        Fault::CutWithLength(k) if whole => (true, &slice[..k]),
        Fault::CutWithoutLength(k) if whole => (false, &slice[..k]),
        Fault::StallAfter(k) if whole => (true, &slice[..k]),
        _ => (true, slice),
    };
    let length = if length_header {
        format!("Content-Length: {}\r\n", slice.len())
    } else {
        String::new()
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\n{common}{content_range}{length}\r\n"
    )?;
    if method != "HEAD" {
        match r.fault {
            Fault::Slow(ms) if whole => {
                for piece in sent.chunks(sent.len().div_ceil(10).max(1)) {
                    s.write_all(piece)?;
                    s.flush()?;
                    std::thread::sleep(Duration::from_millis(ms));
                }
            }
            _ => s.write_all(sent)?,
        }
    }
    s.flush()?;
    if matches!(r.fault, Fault::StallAfter(_)) && whole {
        std::thread::sleep(Duration::from_secs(6));
    }
    Ok(())
}

/// A temporary HF_HOME, removed at the end of the test.
pub struct TempHome(pub PathBuf);

impl TempHome {
    pub fn new(name: &str) -> TempHome {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rwkv-hub-test-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempHome(dir)
    }

    pub fn hub(&self) -> PathBuf {
        self.0.join("hub")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean Hub environment: our HF_HOME, our endpoint, no proxies (and, as in
/// every test, the embedded model's cache in the test's scratch folder).
pub fn bin(home: &TempHome, endpoint: &str) -> Command {
    let mut c = super::bin();
    for v in [
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "RWKV_HUB_CONNECT_TIMEOUT",
        "RWKV_HUB_READ_TIMEOUT",
        "RWKV_HUB_RETRIES",
        "XDG_CACHE_HOME",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c.env("HF_HOME", &home.0)
        .env("HF_ENDPOINT", endpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

/// `generate` greedily for 8 tokens, dumping the logits after the prompt.
pub fn generate(
    home: &TempHome,
    endpoint: &str,
    model: &str,
    logits: &Path,
    extra: &[&str],
) -> Output {
    run(generate_cmd(home, endpoint, model, logits, extra))
}

pub fn generate_cmd(
    home: &TempHome,
    endpoint: &str,
    model: &str,
    logits: &Path,
    extra: &[&str],
) -> Command {
    let mut c = bin(home, endpoint);
    c.args(["generate", "--model", model, "--prompt", "Hello hub"])
        .args(["--temperature", "0", "-n", "8", "--quiet", "--logits-out"])
        .arg(logits)
        .args(extra);
    c
}

/// The same run on the local fixture: (stdout, logits).
pub fn local_reference(home: &TempHome) -> (Vec<u8>, Vec<u8>) {
    let out = home.file("local.logits");
    let o = generate(home, "http://127.0.0.1:9", &fixture("v7.pth"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    (o.stdout, std::fs::read(&out).unwrap())
}

/// Asserts a failure: exit status 1 and one error line on stderr (after at most a
/// "downloading ..." notice), containing every `needle`. Returns the error line.
pub fn assert_fails(o: &Output, needles: &[&str]) -> String {
    let all = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    let lines: Vec<&str> = all.trim().lines().collect();
    let (last, notices) = lines.split_last().expect("an error line");
    assert!(last.starts_with("error: "), "{all}");
    assert!(
        notices.iter().all(|l| l.starts_with("downloading ")),
        "one error line: {all}"
    );
    let e = last.to_string();
    for n in needles {
        assert!(e.contains(n), "{n:?} not in: {e}");
    }
    e
}

/// Every file under `dir` whose name is `name` (the cache's snapshot entries).
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(find_named(&p, name));
            } else if p.file_name().is_some_and(|n| n == name) {
                out.push(p);
            }
        }
    }
    out
}

pub fn part_files(home: &TempHome) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(home.hub())
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(dir.path().join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "incomplete") {
                out.push(e.path());
            }
        }
    }
    out
}

pub const SPEC: &str = "test-owner/tiny-rwkv:v7.pth";
pub const PATH: &str = "/test-owner/tiny-rwkv/resolve/main/v7.pth";
