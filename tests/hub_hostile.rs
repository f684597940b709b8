//! Models from the Hugging Face Hub against hostile or failing servers, end to end: a mirror
//! that tries to choose a path, silent and stalled servers (timeouts), transient failures
//! (retries and resumes), the server's error messages, and pasted Hub links.
//!
//! Each test starts its own mock Hub (`common/mock_hub.rs`, described there and in `hub.rs`);
//! what was downloaded must give exactly the logits of the local file.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::mock_hub::*;
use common::stderr;

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

/// Two processes asking for the same file at once: the second waits for the first's download
/// and uses its file (it failed, "another process is downloading it"), so a pipeline or a
/// server beside a chat both start on a fresh cache.
#[test]
fn a_second_process_waits_for_the_download_in_progress() {
    let home = TempHome::new("two-at-once");
    let (ref_text, _) = local_reference(&home);
    let hub = Mock::start(vec![route(PATH, fixture_bytes(), Fault::Slow(150))]);
    let mut first = generate_cmd(&home, &hub.url(), SPEC, &home.file("1.logits"), &[]);
    first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    // The second starts once the first is writing the file.
    let t0 = std::time::Instant::now();
    while part_files(&home).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run_bounded(
        generate_cmd(&home, &hub.url(), SPEC, &home.file("2.logits"), &[]),
        Duration::from_secs(120),
    );
    let first = first.wait_with_output().unwrap();
    for o in [&first, &second] {
        assert!(o.status.success(), "{}", stderr(o));
        assert_eq!(o.stdout, ref_text);
    }
    assert!(
        stderr(&second).contains("waiting for another process"),
        "{}",
        stderr(&second)
    );
    let whole = hub
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.range.as_deref().is_none_or(|g| g == "bytes=0-"))
        .count();
    assert_eq!(whole, 1, "one download: {:?}", hub.requests());
    // The lock where huggingface_hub keeps its own (so the two tools wait for each other;
    // removed once the blob is in place), none among the blobs.
    let locks = home
        .hub()
        .join(".locks")
        .join("models--test-owner--tiny-rwkv");
    assert!(locks.is_dir());
    let blobs = home
        .hub()
        .join("models--test-owner--tiny-rwkv")
        .join("blobs");
    assert!(std::fs::read_dir(blobs).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".lock")));
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
    // The notice names the file once (it said "downloading F: F: …").
    let notice = err.lines().find(|l| l.contains("retry 1 of 3")).unwrap();
    assert_eq!(notice.matches(SPEC).count(), 1, "{notice}");
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
