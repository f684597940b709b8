//! Models from the Hugging Face Hub, end to end, against a mock Hub.
//!
//! The real Hub is not reachable from the test machines, so each test starts its own mock on
//! 127.0.0.1 (a port picked by binding port 0), speaking the part of the Hub protocol hf-hub
//! 0.5 uses: `GET /{owner}/{repo}/resolve/{revision}/{file}` with `Range` requests, answered
//! with `ETag`, `X-Repo-Commit` and `Content-Range`. The binary runs with `HF_ENDPOINT` pointing
//! at the mock and its own temporary `HF_HOME`. The mock serves `tests/fixtures/v7.pth` (a real
//! tiny checkpoint), and what was downloaded must give exactly the logits of the local file.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod common;
use common::{fixture, read_fixture, stderr};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture_bytes() -> Arc<Vec<u8>> {
    Arc::new(read_fixture("v7.pth"))
}

/// What a route does wrong, if anything.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
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
}

#[derive(Clone)]
struct Route {
    /// `/{owner}/{repo}/resolve/{revision}/{file}`, or `*` for any path.
    path: String,
    body: Arc<Vec<u8>>,
    fault: Fault,
}

fn route(path: &str, body: Arc<Vec<u8>>, fault: Fault) -> Route {
    Route {
        path: path.to_string(),
        body,
        fault,
    }
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// A mock Hub: serves its routes, answers 404 to anything else, and logs every request.
struct Mock {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mock {
    fn start(routes: Vec<Route>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = conn {
                    let _ = serve(&mut s, &routes, &log2);
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Stops serving and closes the port.
    fn stop(&mut self) {
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
        s.write_all(sent)?;
    }
    s.flush()?;
    if matches!(r.fault, Fault::StallAfter(_)) && whole {
        std::thread::sleep(Duration::from_secs(6));
    }
    Ok(())
}

/// A temporary HF_HOME, removed at the end of the test.
struct TempHome(PathBuf);

impl TempHome {
    fn new(name: &str) -> TempHome {
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

    fn hub(&self) -> PathBuf {
        self.0.join("hub")
    }

    fn file(&self, name: &str) -> PathBuf {
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
fn bin(home: &TempHome, endpoint: &str) -> Command {
    let mut c = common::bin();
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

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

/// `generate` greedily for 8 tokens, dumping the logits after the prompt.
fn generate(home: &TempHome, endpoint: &str, model: &str, logits: &Path, extra: &[&str]) -> Output {
    run(generate_cmd(home, endpoint, model, logits, extra))
}

fn generate_cmd(
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
fn local_reference(home: &TempHome) -> (Vec<u8>, Vec<u8>) {
    let out = home.file("local.logits");
    let o = generate(home, "http://127.0.0.1:9", &fixture("v7.pth"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    (o.stdout, std::fs::read(&out).unwrap())
}

/// Asserts a failure: exit status 1 and one error line on stderr (after at most a
/// "downloading ..." notice), containing every `needle`. Returns the error line.
fn assert_fails(o: &Output, needles: &[&str]) -> String {
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
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
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

fn part_files(home: &TempHome) -> Vec<PathBuf> {
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
            if e.path().extension().is_some_and(|x| x == "part") {
                out.push(e.path());
            }
        }
    }
    out
}

const SPEC: &str = "test-owner/tiny-rwkv:v7.pth";
const PATH: &str = "/test-owner/tiny-rwkv/resolve/main/v7.pth";

#[test]
fn first_download_generates_like_the_local_file_then_the_cache_serves_it_without_the_hub() {
    let home = TempHome::new("first");
    let (ref_text, ref_logits) = local_reference(&home);
    let mut hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::None)]);
    let endpoint = hub.url();

    let out = home.file("hub.logits");
    let o = generate(&home, &endpoint, SPEC, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("downloading test-owner/tiny-rwkv:v7.pth"));
    assert_eq!(o.stdout, ref_text, "same greedy text as the local file");
    assert_eq!(std::fs::read(&out).unwrap(), ref_logits, "same logits");
    // Every request went to the file's resolve URL.
    let reqs = hub.requests();
    assert!(!reqs.is_empty());
    assert!(
        reqs.iter().all(|r| r.method == "GET" && r.path == PATH),
        "{reqs:?}"
    );

    // The standard cache layout: refs/main -> commit, snapshot link -> blob, no leftovers.
    let repo = home.hub().join("models--test-owner--tiny-rwkv");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let entry = repo.join("snapshots").join(COMMIT).join("v7.pth");
    assert!(entry.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&entry).unwrap(), *fixture_bytes());
    assert!(part_files(&home).is_empty());

    // With the Hub gone, the cache serves the model: no download, same logits.
    hub.stop();
    let out2 = home.file("cached.logits");
    let o = generate(&home, &endpoint, SPEC, &out2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("downloading"), "{}", stderr(&o));
    assert_eq!(o.stdout, ref_text);
    assert_eq!(std::fs::read(&out2).unwrap(), ref_logits);

    // info says where the file is cached.
    let mut c = bin(&home, &endpoint);
    c.args(["info", SPEC]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("cached at     {}", entry.display())),
        "{text}"
    );
    assert!(
        text.contains("source        test-owner/tiny-rwkv:v7.pth"),
        "{text}"
    );
    let mut c = bin(&home, &endpoint);
    c.args(["info", SPEC, "--json"]);
    let o = run(c);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cached_at"], entry.display().to_string());
    assert_eq!(v["version"], "v7");
}

#[test]
fn offline_mode_makes_no_request_and_uses_the_cache() {
    let home = TempHome::new("offline");
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::None)]);
    let out = home.file("o.logits");

    // Not cached: a clear error, and not one request, with the variable or the flag.
    let mut c = bin(&home, &hub.url());
    c.env("HF_HUB_OFFLINE", "1")
        .args(["generate", "-m", SPEC, "-p", "x", "-n", "1"]);
    assert_fails(
        &run(c),
        &["test-owner/tiny-rwkv:v7.pth", "not in the cache", "offline"],
    );
    let o = generate(&home, &hub.url(), SPEC, &out, &["--offline"]);
    assert_fails(&o, &["not in the cache", "--offline"]);
    let o = generate(&home, &hub.url(), "rwkv7-g1-0.1b", &out, &["--offline"]);
    assert_fails(&o, &["BlinkDL/rwkv7-g1:", "not in the cache"]);
    assert_eq!(hub.requests().len(), 0, "offline mode sent requests");
    assert!(!home.hub().join("models--test-owner--tiny-rwkv").exists());

    // Download once, online.
    let o = generate(&home, &hub.url(), SPEC, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let online = std::fs::read(&out).unwrap();
    let count = hub.requests().len();
    assert!(count > 0);

    // Offline again: served from the cache, still no new request.
    let out2 = home.file("o2.logits");
    let mut c = bin(&home, &hub.url());
    c.env("HF_HUB_OFFLINE", "1")
        .args([
            "generate",
            "-m",
            SPEC,
            "-p",
            "Hello hub",
            "--temperature",
            "0",
        ])
        .args(["-n", "8", "--quiet", "--logits-out"])
        .arg(&out2);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out2).unwrap(), online);
    let o = generate(&home, &hub.url(), SPEC, &out2, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = bin(&home, &hub.url());
    c.args(["--offline", "models"]);
    assert!(run(c).status.success());
    assert_eq!(hub.requests().len(), count, "offline mode sent requests");
}

#[test]
fn missing_files_and_unreachable_hubs_give_one_clear_line() {
    let home = TempHome::new("404");
    let hub = Mock::start(vec![]);
    let out = home.file("x.logits");
    let o = generate(
        &home,
        &hub.url(),
        "test-owner/tiny-rwkv:nope.pth",
        &out,
        &[],
    );
    assert_fails(&o, &["test-owner/tiny-rwkv:nope.pth", "not found", "404"]);
    let o = generate(
        &home,
        &hub.url(),
        "test-owner/tiny-rwkv:nope.pth@dev",
        &out,
        &[],
    );
    assert_fails(&o, &["nope.pth@dev", "404"]);
    assert_eq!(
        hub.requests()[1].path,
        "/test-owner/tiny-rwkv/resolve/dev/nope.pth"
    );
    assert!(find_named(&home.hub(), "nope.pth").is_empty());

    // Nothing listening: connection refused.
    let mut dead = Mock::start(vec![]);
    let url = dead.url();
    dead.stop();
    let o = generate(&home, &url, SPEC, &out, &[]);
    assert_fails(
        &o,
        &[
            "cannot download test-owner/tiny-rwkv:v7.pth",
            "no connection",
            &url,
        ],
    );

    // A host that does not resolve (.invalid never does).
    let o = generate(&home, "http://hub.invalid", SPEC, &out, &[]);
    assert_fails(&o, &["cannot download", "hub.invalid"]);

    // Malformed references are usage of the wrong shape, not downloads.
    let o = generate(&home, &hub.url(), "test-owner/tiny-rwkv:", &out, &[]);
    assert_fails(&o, &["invalid Hub reference"]);
}

/// Runs a download against a server that breaks mid-transfer, checks that nothing
/// complete-looking was cached, then retries against `healthy` and compares with the fixture.
fn interrupted_then_resumed(name: &str, fault: Fault, healthy: Fault) {
    let home = TempHome::new(name);
    let (ref_text, ref_logits) = local_reference(&home);
    let body = fixture_bytes();
    let out = home.file("x.logits");

    let hub = Mock::start(vec![route(PATH, body.clone(), fault)]);
    let mut c = generate_cmd(&home, &hub.url(), SPEC, &out, &[]);
    c.env("RWKV_HUB_RETRIES", "0");
    let o = run(c);
    assert_fails(
        &o,
        &["test-owner/tiny-rwkv:v7.pth", "interrupted", "resume"],
    );
    // No snapshot entry (nothing that looks complete), but the partial bytes are kept.
    assert!(
        find_named(&home.hub(), "v7.pth").is_empty(),
        "partial file cached as complete"
    );
    let parts = part_files(&home);
    assert_eq!(parts.len(), 1, "{parts:?}");
    let kept = std::fs::metadata(&parts[0]).unwrap().len() as usize;
    assert!(kept > 0 && kept < body.len(), "{kept}");
    assert_eq!(std::fs::read(&parts[0]).unwrap(), body[..kept]);
    drop(hub);

    let hub = Mock::start(vec![route(PATH, body.clone(), healthy)]);
    let o = generate(&home, &hub.url(), SPEC, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, ref_text);
    assert_eq!(std::fs::read(&out).unwrap(), ref_logits);
    let entries = find_named(&home.hub(), "v7.pth");
    assert_eq!(entries.len(), 1);
    assert_eq!(std::fs::read(&entries[0]).unwrap(), *body);
    assert!(part_files(&home).is_empty());
    // The retry resumed from the kept bytes.
    let resumed = format!("bytes={kept}-");
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.range.as_deref() == Some(&resumed)),
        "{:?}",
        hub.requests()
    );
}

#[test]
fn a_server_dying_mid_transfer_leaves_no_corrupt_entry_and_the_next_run_resumes() {
    let half = fixture_bytes().len() / 2;
    // The connection drops before Content-Length bytes arrived.
    interrupted_then_resumed("cut-len", Fault::CutWithLength(half), Fault::None);
    // No Content-Length: the early close looks like a normal end; the size check catches it.
    interrupted_then_resumed("cut-nolen", Fault::CutWithoutLength(half), Fault::None);
}

#[test]
fn a_resume_the_server_ignores_restarts_cleanly() {
    // The resumed request gets the whole file again (200): appended to the partial file, it
    // would be too long; the download is dropped and done again from the start.
    interrupted_then_resumed(
        "ignore-range",
        Fault::CutWithLength(1000),
        Fault::IgnoreResumeRange,
    );
}

#[test]
fn a_served_file_that_is_not_a_checkpoint_is_named_and_not_cached() {
    let home = TempHome::new("junk");
    let out = home.file("x.logits");
    let html = Arc::new(b"<!DOCTYPE html><html><body>Sign in</body></html>".to_vec());
    // A safetensors file that parses but holds no RWKV tensors.
    let header = br#"{"__metadata__":{"format":"pt"}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    let hub = Mock::start(vec![
        route(PATH, html, Fault::None),
        route(
            "/test-owner/tiny-rwkv/resolve/main/empty.safetensors",
            Arc::new(st),
            Fault::None,
        ),
    ]);
    let o = generate(&home, &hub.url(), SPEC, &out, &[]);
    assert_fails(
        &o,
        &[
            "test-owner/tiny-rwkv:v7.pth",
            "not an RWKV checkpoint",
            "not kept",
        ],
    );
    let o = generate(
        &home,
        &hub.url(),
        "test-owner/tiny-rwkv:empty.safetensors",
        &out,
        &[],
    );
    assert_fails(
        &o,
        &["tiny-rwkv:empty.safetensors", "not an RWKV checkpoint"],
    );
    assert!(find_named(&home.hub(), "v7.pth").is_empty());
    assert!(find_named(&home.hub(), "empty.safetensors").is_empty());
    assert!(part_files(&home).is_empty());
}

#[test]
fn catalogue_aliases_resolve_to_their_repo_and_file() {
    let home = TempHome::new("alias");
    let hub = Mock::start(vec![route("*", fixture_bytes(), Fault::None)]);
    let mut c = bin(&home, &hub.url());
    c.args(["models", "--json"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(list.len() >= 13);
    assert!(list.iter().all(|e| e["cached"] == false));
    let g1 = list.iter().find(|e| e["alias"] == "rwkv7-g1-0.1b").unwrap();
    assert_eq!(g1["repo"], "BlinkDL/rwkv7-g1");

    for e in &list {
        let alias = e["alias"].as_str().unwrap();
        let (repo, file) = (e["repo"].as_str().unwrap(), e["file"].as_str().unwrap());
        let before = hub.requests().len();
        let mut c = bin(&home, &hub.url());
        c.args(["info", alias, "--json", "--download"]);
        let o = run(c);
        assert!(o.status.success(), "{alias}: {}", stderr(&o));
        let expected = format!("/{repo}/resolve/main/{file}");
        let reqs = hub.requests();
        assert!(reqs.len() > before);
        for r in &reqs[before..] {
            assert_eq!(r.path, expected, "{alias}");
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            v["source"],
            format!("{repo}:{file} (alias {alias})"),
            "{alias}"
        );
        let at = PathBuf::from(v["cached_at"].as_str().unwrap());
        assert!(at.starts_with(home.hub()), "{at:?}");
        assert!(at.ends_with(file));
    }

    // `models` now shows them cached; the done-when command runs from the cache.
    let mut c = bin(&home, &hub.url());
    c.args(["models", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&run(c).stdout).unwrap();
    assert!(list.iter().all(|e| e["cached"] == true));
    let mut c = bin(&home, &hub.url());
    c.args(["models"]);
    let table = String::from_utf8(run(c).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("rwkv7-g1-0.1b ") && l.contains(" yes ")),
        "{table}"
    );
    let out = home.file("alias.logits");
    let o = generate(&home, &hub.url(), "rwkv7-g1-0.1b", &out, &["--offline"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_unknown_name_suggests_the_nearest_aliases() {
    let home = TempHome::new("unknown");
    let hub = Mock::start(vec![]);
    let out = home.file("x.logits");
    let o = generate(&home, &hub.url(), "rwkv7-g1-01b", &out, &[]);
    let e = assert_fails(
        &o,
        &[
            "rwkv7-g1-01b does not exist",
            "nearest aliases: rwkv7-g1-0.1b",
        ],
    );
    assert!(e.contains("rwkv-cli models"), "{e}");
    let o = generate(&home, &hub.url(), "rwkv6-world-3", &out, &[]);
    assert_fails(&o, &["nearest aliases: rwkv6-world-3b"]);
    assert_eq!(
        hub.requests().len(),
        0,
        "an unknown name is never sent to the Hub"
    );
}

#[test]
fn hf_token_opens_gated_repos_and_is_never_printed() {
    let home = TempHome::new("token");
    let secret = "hf_SeCrEt_t0ken";
    let hub = Mock::start(vec![route(
        PATH,
        fixture_bytes(),
        Fault::NeedsToken(secret),
    )]);
    let out = home.file("t.logits");
    // Without a token: a clear error that says what to do.
    let o = generate(&home, &hub.url(), SPEC, &out, &[]);
    assert_fails(&o, &["access denied", "401", "HF_TOKEN"]);
    // A wrong token: the same, and the token is not echoed.
    let mut c = bin(&home, &hub.url());
    c.env("HF_TOKEN", "hf_wrong_value")
        .args(["generate", "-m", SPEC, "-p", "x", "-n", "1"]);
    let o = run(c);
    let e = assert_fails(&o, &["401"]);
    assert!(!e.contains("hf_wrong_value"));
    // The right token is sent as a bearer token; nothing prints it.
    let mut c = bin(&home, &hub.url());
    c.env("HF_TOKEN", secret)
        .args(["generate", "-m", SPEC, "-p", "x", "-n", "4"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains(secret) && !String::from_utf8_lossy(&o.stdout).contains(secret));
    let bearer = format!("Bearer {secret}");
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.authorization.as_deref() == Some(bearer.as_str())));
    // The token file in HF_HOME works too.
    let home2 = TempHome::new("token-file");
    std::fs::write(home2.file("token"), format!("{secret}\n")).unwrap();
    let o = generate(&home2, &hub.url(), SPEC, &home2.file("t.logits"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn hf_hub_cache_overrides_the_cache_location() {
    let home = TempHome::new("hubcache");
    let elsewhere = home.file("elsewhere");
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::None)]);
    let mut c = bin(&home, &hub.url());
    c.env("HF_HUB_CACHE", &elsewhere)
        .args(["generate", "-m", SPEC, "-p", "x", "-n", "1", "--quiet"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(find_named(&elsewhere, "v7.pth").len(), 1);
    assert!(!home.hub().exists());
    // The same variable finds it again, offline.
    let mut c = bin(&home, &hub.url());
    c.env("HF_HUB_CACHE", &elsewhere)
        .args(["--offline", "info", SPEC]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout)
        .contains(&format!("cached at     {}", elsewhere.display())));
}

/// Runs `c`, killing it (and failing) if it has not ended within `limit`: a hang guard, not a
/// timing assertion.
fn run_bounded(mut c: Command, limit: Duration) -> Output {
    let mut child = c.spawn().unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("still running after {limit:?}: {}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every path under `dir`, folders included.
fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                out.extend(all_paths(&p));
            }
        }
    }
    out
}

#[test]
fn a_hostile_mirror_cannot_choose_a_path() {
    for (name, fault, header) in [
        ("commit-up", Fault::Commit("../../.."), "X-Repo-Commit"),
        (
            "commit-abs",
            Fault::Commit("/tmp/rwkv-hostile"),
            "X-Repo-Commit",
        ),
        ("commit-short", Fault::Commit("abc"), "X-Repo-Commit"),
        ("etag-up", Fault::Etag("../../../evil"), "ETag"),
    ] {
        let home = TempHome::new(name);
        let hub = Mock::start(vec![route(PATH, fixture_bytes(), fault)]);
        let out = home.file("x.logits");
        let o = generate(&home, &hub.url(), SPEC, &out, &[]);
        let e = assert_fails(&o, &["test-owner/tiny-rwkv:v7.pth", "invalid", header]);
        assert!(e.contains("refused"), "{e}");
        // Nothing was written anywhere: no blob, no snapshot, no link, no folder outside.
        let written: Vec<PathBuf> = all_paths(&home.0)
            .into_iter()
            .filter(|p| !p.ends_with("local.logits"))
            .collect();
        assert!(written.is_empty(), "{name}: {written:?}");
        assert!(!Path::new("/tmp/rwkv-hostile").exists());
    }
}

#[test]
fn a_silent_server_fails_within_the_read_timeout_naming_the_host() {
    // Accepts connections and never answers (nor reads).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..1200 {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        conns.len()
    });
    let home = TempHome::new("silent");
    let mut c = generate_cmd(
        &home,
        &format!("http://127.0.0.1:{port}"),
        SPEC,
        &home.file("x.logits"),
        &[],
    );
    c.env("RWKV_HUB_READ_TIMEOUT", "1")
        .env("RWKV_HUB_RETRIES", "1");
    let o = run_bounded(c, Duration::from_secs(60));
    stop.store(true, Ordering::SeqCst);
    let accepted = held.join().unwrap();
    let e = assert_fails(
        &o,
        &[&format!("127.0.0.1:{port}"), "did not answer within 1 s"],
    );
    assert!(e.contains("RWKV_HUB_READ_TIMEOUT"), "{e}");
    // One retry after the first timeout: two connections.
    assert_eq!(accepted, 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("retry 1 of 1"), "{}", stderr(&o));
}

#[test]
fn a_stalled_transfer_fails_naming_the_host_and_keeps_the_part_for_a_resume() {
    let home = TempHome::new("stall");
    let body = fixture_bytes();
    let half = body.len() / 2;
    let hub = Mock::start(vec![route(PATH, body.clone(), Fault::StallAfter(half))]);
    let mut c = generate_cmd(&home, &hub.url(), SPEC, &home.file("x.logits"), &[]);
    c.env("RWKV_HUB_READ_TIMEOUT", "1")
        .env("RWKV_HUB_RETRIES", "0");
    let o = run_bounded(c, Duration::from_secs(60));
    let host = hub.url().trim_start_matches("http://").to_string();
    assert_fails(&o, &["stalled", &host, "1 s", "kept in", "resumes"]);
    let parts = part_files(&home);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(std::fs::read(&parts[0]).unwrap(), body[..half]);
    assert!(find_named(&home.hub(), "v7.pth").is_empty());
}

#[test]
fn transient_failures_are_retried_and_a_cut_transfer_resumes_in_the_same_run() {
    let home = TempHome::new("retry");
    let (ref_text, _) = local_reference(&home);
    // Two 503s, then the file.
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::Unavailable(2))]);
    let o = generate(&home, &hub.url(), SPEC, &home.file("x.logits"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, ref_text);
    let err = stderr(&o);
    assert!(
        err.contains("HTTP 503") && err.contains("retry 2 of 3"),
        "{err}"
    );
    assert!(
        !err.contains('\u{9b}'),
        "a server's escape sequence reached the terminal: {err}"
    );
    drop(hub);

    // A connection cut mid-file: resumed with a Range request, without a second run.
    let home = TempHome::new("retry-cut");
    let body = fixture_bytes();
    let hub = Mock::start(vec![route(PATH, body.clone(), Fault::CutWithLength(1000))]);
    let o = generate(&home, &hub.url(), SPEC, &home.file("x.logits"), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, ref_text);
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.range.as_deref() == Some("bytes=1000-")));
    assert_eq!(
        std::fs::read(&find_named(&home.hub(), "v7.pth")[0]).unwrap(),
        *body
    );
}

#[test]
fn the_servers_error_message_is_in_the_error_without_control_characters() {
    let home = TempHome::new("xerr");
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::Status(404))]);
    let o = generate(&home, &hub.url(), SPEC, &home.file("x.logits"), &[]);
    let e = assert_fails(&o, &["HTTP 404: the mirror says", "no"]);
    assert!(!e.contains('\u{9b}'), "{e}");
    drop(hub);
    // A persistent 5xx: bounded retries, then the server's text.
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::Status(502))]);
    let mut c = generate_cmd(&home, &hub.url(), SPEC, &home.file("x.logits"), &[]);
    c.env("RWKV_HUB_RETRIES", "1");
    let o = run_bounded(c, Duration::from_secs(60));
    assert_fails(&o, &["HTTP 502: the mirror says"]);
    assert_eq!(hub.requests().len(), 2, "one try and one retry");
}

#[test]
fn pasted_hub_links_download_the_same_file_and_other_hosts_are_refused() {
    let home = TempHome::new("pasted");
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::None)]);
    let endpoint = hub.url();
    let host = endpoint.trim_start_matches("http://");
    let forms = [
        format!("https://huggingface.co{PATH}"),
        format!(
            "https://huggingface.co{}",
            PATH.replace("/resolve/", "/blob/")
        ),
        format!("{endpoint}{PATH}?download=true"),
        "hf://test-owner/tiny-rwkv/v7.pth".to_string(),
        "hf://test-owner/tiny-rwkv@main/v7.pth".to_string(),
        "test-owner/tiny-rwkv/v7.pth".to_string(),
    ];
    for form in &forms {
        // A fresh cache for each: every form downloads, from the mirror, the right path.
        let _ = std::fs::remove_dir_all(home.hub());
        let before = hub.requests().len();
        let mut c = bin(&home, &endpoint);
        c.args(["info", form, "--download", "--json"]);
        let o = run(c);
        assert!(o.status.success(), "{form}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["source"], SPEC, "{form}");
        let reqs = hub.requests();
        assert!(reqs.len() > before, "{form}");
        assert!(
            reqs[before..].iter().all(|r| r.path == PATH),
            "{form}: {reqs:?}"
        );
    }
    let before = hub.requests().len();
    for bad in [
        "https://example.com/test-owner/tiny-rwkv/resolve/main/v7.pth".to_string(),
        format!("https://huggingface.co@{host}/x/y/resolve/main/v7.pth"),
        "ftp://huggingface.co/test-owner/tiny-rwkv/resolve/main/v7.pth".to_string(),
    ] {
        let o = generate(&home, &endpoint, &bad, &home.file("x.logits"), &[]);
        assert_fails(&o, &["only from the Hugging Face Hub"]);
    }
    assert_eq!(hub.requests().len(), before, "a refused URL was requested");
}

#[test]
fn info_on_an_uncached_alias_shows_the_catalogue_without_downloading() {
    let home = TempHome::new("info-alias");
    let hub = Mock::start(vec![route("*", fixture_bytes(), Fault::None)]);
    let mut c = bin(&home, &hub.url());
    c.args(["info", "rwkv7-g1-0.1b"]);
    let o = run(c);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("BlinkDL/rwkv7-g1:"), "{text}");
    assert!(text.contains("cached        no"), "{text}");
    assert!(text.contains("version       RWKV v7"), "{text}");
    let mut c = bin(&home, &hub.url());
    c.args(["info", "rwkv7-g1-0.1b", "--json"]);
    let o = run(c);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cached"], false);
    assert_eq!(v["repo"], "BlinkDL/rwkv7-g1");
    assert!(v["download_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        hub.requests().len(),
        0,
        "info downloaded without --download"
    );
    assert!(!home.hub().exists());
}
