//! Models from the Hugging Face Hub, end to end, against a mock Hub.
//!
//! The real Hub is not reachable from the test machines, so each test starts its own mock on
//! 127.0.0.1 (a port picked by binding port 0), speaking the part of the Hub protocol hf-hub
//! 0.5 uses: `GET /{owner}/{repo}/resolve/{revision}/{file}` with `Range` requests, answered
//! with `ETag`, `X-Repo-Commit` and `Content-Range`. The binary runs with `HF_ENDPOINT` pointing
//! at the mock and its own temporary `HF_HOME`. The mock serves `tests/fixtures/v7.pth` (a real
//! tiny checkpoint), and what was downloaded must give exactly the logits of the local file.
//!
//! The hostile-server cases (hostile mirrors, silent and stalled servers, retries, the server's
//! error messages, pasted links) are in `hub_hostile.rs`; the mock is `common/mock_hub.rs`.

mod common;
use common::mock_hub::*;
use common::stderr;
use std::path::PathBuf;
use std::sync::Arc;

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
