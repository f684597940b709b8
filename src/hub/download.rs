//! Downloads from the Hub (or the mirror in `HF_ENDPOINT`), written on ureq directly so that:
//!
//! - every wait is bounded: a connect timeout and a per-read timeout (a server that accepts the
//!   connection and never answers, or stalls mid-file, fails with one line naming the host);
//! - transient failures (HTTP 429 and 5xx, a connection reset or cut, a timeout) are retried a
//!   bounded number of times with exponential backoff, resuming from the bytes already on disk;
//! - nothing a server sends chooses a path: the commit must be 40 hexadecimal characters and the
//!   ETag (the blob's name) plain letters, digits, `-` and `_`; the file name is the user's
//!   (checked when `--model` was parsed), never the server's;
//! - a 4xx carries the server's own `X-Error-Message`, stripped of control characters.
//!
//! The result is the standard Hugging Face cache layout (see [`super`]): `blobs/<etag>`, with
//! `blobs/<etag>.incomplete` while it downloads (kept on failure, resumed with `Range` next
//! time; locked by `.locks/models--OWNER--REPO/<etag>.lock`, huggingface_hub's names),
//! `snapshots/<commit>/<file>` a relative symlink to the blob, `refs/<revision>` the commit.

use super::{token, DownloadProgress, HubFile};
use crate::stats::human_bytes;
use anyhow::{anyhow, Result};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seconds allowed to resolve the host and open the connection (TLS included).
pub const DEFAULT_CONNECT_TIMEOUT_S: f64 = 10.0;
/// Seconds a read may wait for the next byte (headers or body) before the transfer counts as
/// stalled.
pub const DEFAULT_READ_TIMEOUT_S: f64 = 30.0;
/// Retries after a transient failure (so at most this + 1 attempts).
pub const DEFAULT_RETRIES: u32 = 3;
/// The longest wait between two attempts.
const MAX_BACKOFF_S: u64 = 8;

/// The network settings, from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// `RWKV_HUB_CONNECT_TIMEOUT` (seconds).
    pub connect: Duration,
    /// `RWKV_HUB_READ_TIMEOUT` (seconds).
    pub read: Duration,
    /// `RWKV_HUB_RETRIES`.
    pub retries: u32,
}

impl NetConfig {
    /// Reads `RWKV_HUB_CONNECT_TIMEOUT`, `RWKV_HUB_READ_TIMEOUT` (seconds, fractions allowed)
    /// and `RWKV_HUB_RETRIES`; unset or empty means the default, anything unreadable an error.
    pub fn from_env() -> Result<NetConfig> {
        Ok(NetConfig {
            connect: seconds("RWKV_HUB_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S)?,
            read: seconds("RWKV_HUB_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_S)?,
            retries: match super::env_nonempty("RWKV_HUB_RETRIES") {
                None => DEFAULT_RETRIES,
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n <= 100)
                    .ok_or_else(|| {
                        anyhow!("RWKV_HUB_RETRIES={v} is not a number of retries from 0 to 100")
                    })?,
            },
        })
    }
}

fn seconds(name: &str, default: f64) -> Result<Duration> {
    let Some(v) = super::env_nonempty(name) else {
        return Ok(Duration::from_secs_f64(default));
    };
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            anyhow!("{name}={v} is not a number of seconds (more than 0, at most 86400; e.g. 30 or 2.5)")
        })
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// Why an attempt failed: worth another try, or not.
enum Fail {
    Transient(anyhow::Error),
    Fatal(anyhow::Error),
}

type Attempt<T> = std::result::Result<T, Fail>;

/// The host (and port) of a URL, for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// The host of `HF_ENDPOINT` (or of the Hub).
pub(super) fn host_of_endpoint() -> String {
    host_of(&super::endpoint()).to_string()
}

/// A server's text made safe to print: no control characters (no terminal escapes), at most
/// 200 characters.
pub fn sanitize(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean.to_string(),
    }
}

/// A commit as the cache may hold it: exactly 40 hexadecimal characters (lower-cased).
pub fn valid_commit(c: &str) -> Option<String> {
    (c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit())).then(|| c.to_ascii_lowercase())
}

/// An ETag as a blob's file name: the quotes and a weak `W/` prefix removed, then 1 to 128
/// letters, digits, `-` or `_` (the Hub's are SHA-256 or git SHA-1 hex).
pub fn valid_etag(e: &str) -> Option<String> {
    let e = e.trim();
    let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
    (!e.is_empty()
        && e.len() <= 128
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| e.to_string())
}

/// Percent-encodes one URL path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{endpoint}/{owner}/{repo}/resolve/{revision}/{file}`, the revision as one segment (a `/` in
/// it encoded, as huggingface_hub does), the file segment by segment.
pub fn resolve_url(endpoint: &str, f: &HubFile) -> String {
    let file: Vec<String> = f.file.split('/').map(encode_segment).collect();
    format!(
        "{endpoint}/{}/resolve/{}/{}",
        f.repo,
        encode_segment(&f.revision),
        file.join("/")
    )
}

/// What the first request says about the file.
#[derive(Debug)]
struct Meta {
    commit: String,
    etag: String,
    size: u64,
}

/// Everything one download needs.
struct Job<'a> {
    f: &'a HubFile,
    endpoint: &'a str,
    cache: &'a Path,
    cfg: &'a NetConfig,
    url: String,
    token: Option<String>,
    progress: &'a dyn DownloadProgress,
}

impl Job<'_> {
    fn agent(&self, redirects: u32) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(redirects)
            .timeout_resolve(Some(self.cfg.connect))
            .timeout_connect(Some(self.cfg.connect))
            .timeout_per_read(Some(self.cfg.read))
            .timeout_per_write(Some(self.cfg.read))
            .timeout_recv_response(Some(self.cfg.read))
            .user_agent(format!("rwkv-cli/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn get(
        &self,
        agent: &ureq::Agent,
        url: &str,
        range: Option<String>,
    ) -> Attempt<ureq::http::Response<ureq::Body>> {
        let mut req = agent.get(url);
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        // Only to the endpoint itself: ureq drops it on redirects to other hosts.
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().map_err(|e| self.request_error(e))
    }

    /// A failure below HTTP: no answer, no connection, no such host.
    fn request_error(&self, e: ureq::Error) -> Fail {
        let (f, endpoint) = (self.f, self.endpoint);
        let host = host_of(endpoint);
        match e {
            ureq::Error::Timeout(t) => {
                use ureq::Timeout::*;
                match t {
                    Resolve | Connect => Fail::Transient(anyhow!(
                        "cannot download {f}: no connection to {host} within {} (RWKV_HUB_CONNECT_TIMEOUT); cached models still run with --offline",
                        secs(self.cfg.connect)
                    )),
                    _ => Fail::Transient(anyhow!(
                        "cannot download {f}: {host} did not answer within {} (RWKV_HUB_READ_TIMEOUT)",
                        secs(self.cfg.read)
                    )),
                }
            }
            ureq::Error::HostNotFound => Fail::Fatal(anyhow!(
                "cannot download {f}: the host of {endpoint} cannot be resolved (no network?); cached models still run with --offline"
            )),
            ureq::Error::Io(io) if is_transient_io(&io) => Fail::Transient(anyhow!(
                "cannot download {f}: the connection to {host} broke ({io})"
            )),
            ureq::Error::Io(io) => Fail::Fatal(anyhow!(
                "cannot download {f}: no connection to {endpoint} ({io}); cached models still run with --offline"
            )),
            ureq::Error::ConnectionFailed => Fail::Fatal(anyhow!(
                "cannot download {f}: no connection to {endpoint}; cached models still run with --offline"
            )),
            other => Fail::Fatal(anyhow!(
                "cannot download {f} from {endpoint}: {}",
                sanitize(&other.to_string())
            )),
        }
    }

    /// An HTTP error status, with the server's `X-Error-Message` when it sent one.
    fn status_error(&self, resp: &ureq::http::Response<ureq::Body>, kept: &str) -> Fail {
        let (f, endpoint) = (self.f, self.endpoint);
        let code = resp.status().as_u16();
        let said = resp
            .headers()
            .get("x-error-message")
            .map(|v| sanitize(&String::from_utf8_lossy(v.as_bytes())))
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match code {
            404 => Fail::Fatal(anyhow!(
                "{f} not found on {endpoint} (HTTP 404{said}): check the repo, the file name and the revision"
            )),
            401 | 403 => {
                let hint = if self.token.is_some() {
                    "the token in HF_TOKEN (or the token file) has no access to it"
                } else {
                    "if it is private or gated, set HF_TOKEN to a token with access"
                };
                Fail::Fatal(anyhow!(
                    "{f}: access denied by {endpoint} (HTTP {code}{said}): the repo may not exist, or {hint}"
                ))
            }
            416 => Fail::Transient(anyhow!(
                "{f}: {endpoint} refused to resume the download (HTTP 416{said})"
            )),
            408 | 429 | 500..=599 => Fail::Transient(anyhow!(
                "{f}: {endpoint} answered HTTP {code}{said}{kept}"
            )),
            _ => Fail::Fatal(anyhow!("{f}: {endpoint} answered HTTP {code}{said}{kept}")),
        }
    }

    fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    }

    /// The total from `Content-Range: bytes a-b/TOTAL`.
    fn range_total(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
        Self::header(resp, "content-range")?
            .rsplit_once('/')?
            .1
            .trim()
            .parse()
            .ok()
    }

    /// Asks for the file's first byte without following redirects: the commit, the ETag and
    /// the size, each checked.
    fn metadata(&self) -> Attempt<Meta> {
        let (f, endpoint) = (self.f, self.endpoint);
        let resp = self.get(&self.agent(0), &self.url, Some("bytes=0-0".into()))?;
        let status = resp.status().as_u16();
        let redirect = (300..400).contains(&status);
        if !redirect && !(200..300).contains(&status) {
            return Err(self.status_error(&resp, ""));
        }
        let invalid = |h: &str, v: Option<&str>| {
            Fail::Fatal(match v {
                None => anyhow!(
                    "cannot download {f}: {endpoint} sent no {h} header (is HF_ENDPOINT a Hugging Face Hub?)"
                ),
                Some(v) => anyhow!(
                    "cannot download {f}: {endpoint} sent an invalid {h} header ({:?}); refused, nothing was written",
                    sanitize(v)
                ),
            })
        };
        let commit = Self::header(&resp, "x-repo-commit");
        let commit = match commit.as_deref().map(valid_commit) {
            Some(Some(c)) => c,
            _ => return Err(invalid("X-Repo-Commit", commit.as_deref())),
        };
        let etag = Self::header(&resp, "x-linked-etag").or_else(|| Self::header(&resp, "etag"));
        let etag = match etag.as_deref().map(valid_etag) {
            Some(Some(e)) => e,
            _ => return Err(invalid("ETag", etag.as_deref())),
        };
        let mut size = Self::header(&resp, "x-linked-size").and_then(|s| s.parse().ok());
        if size.is_none() && !redirect {
            size = Self::range_total(&resp).or_else(|| {
                (status == 200)
                    .then(|| Self::header(&resp, "content-length")?.parse().ok())
                    .flatten()
            });
        }
        if size.is_none() && redirect {
            // The size is where the redirect points (the Hub's storage): ask there.
            let r = self.get(&self.agent(5), &self.url, Some("bytes=0-0".into()))?;
            if !(200..300).contains(&r.status().as_u16()) {
                return Err(self.status_error(&r, ""));
            }
            size = Self::range_total(&r);
        }
        let Some(size) = size else {
            return Err(invalid("Content-Range", None));
        };
        Ok(Meta { commit, etag, size })
    }

    /// "; 1.2 MiB kept in PATH, the next run resumes from there" when `part` holds bytes.
    fn kept(part: &Path) -> String {
        match std::fs::metadata(part) {
            Ok(m) if m.len() > 0 => format!(
                "; {} kept in {}, the next run resumes from there",
                human_bytes(m.len()),
                part.display()
            ),
            _ => String::new(),
        }
    }

    /// Brings `part` to `size` bytes: resumes what is there with a `Range` request, starts
    /// over when the server sends the whole file.
    fn transfer(&self, part: &Path, size: u64) -> Attempt<()> {
        let f = self.f;
        let host = host_of(self.endpoint);
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > size {
            let _ = std::fs::remove_file(part);
            have = 0;
        }
        if have == size && size > 0 {
            return Ok(());
        }
        let range = (have > 0).then(|| format!("bytes={have}-"));
        let resp = self.get(&self.agent(5), &self.url, range)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(self.status_error(&resp, &Self::kept(part)));
        }
        if status == 206 {
            let start = Self::header(&resp, "content-range").and_then(|c| {
                c.strip_prefix("bytes")?
                    .trim()
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            if start != Some(have) {
                // Not the range asked for: start over.
                have = 0;
            }
        } else {
            // 200: the whole file, whatever was asked.
            have = 0;
        }
        if have == 0 && status == 206 && range_is_partial(&resp, size) {
            return Err(Fail::Transient(anyhow!(
                "{f}: {host} answered a request for the whole file with a part of it"
            )));
        }
        let disk = |e: std::io::Error| {
            if super::is_disk_full(&e) {
                Fail::Fatal(anyhow!(
                    "disk full while downloading {f} ({}) into {}: free some space and run again{}",
                    human_bytes(size),
                    self.cache.display(),
                    Self::kept(part)
                ))
            } else {
                Fail::Fatal(anyhow!("cannot write {}: {e}", part.display()))
            }
        };
        let mut out = if have > 0 {
            OpenOptions::new().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(disk)?;
        self.progress.start(&f.file, size, have);
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 20];
        let result = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            if have + n as u64 > size {
                break Err(std::io::Error::other(
                    "the server sent more than it announced",
                ));
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                self.progress.finish();
                return Err(disk(e));
            }
            have += n as u64;
            self.progress.advance(n as u64);
        };
        self.progress.finish();
        out.flush().map_err(disk)?;
        drop(out);
        match result {
            Ok(()) if have == size => Ok(()),
            Ok(()) => Err(Fail::Transient(anyhow!(
                "download of {f} interrupted: {host} closed the connection after {have} of {size} bytes{}",
                Self::kept(part)
            ))),
            Err(e) if e.kind() == ErrorKind::TimedOut || is_timeout(&e) => {
                Err(Fail::Transient(anyhow!(
                    "download of {f} stalled: {host} sent nothing for {} (RWKV_HUB_READ_TIMEOUT){}",
                    secs(self.cfg.read),
                    Self::kept(part)
                )))
            }
            Err(e) if e.to_string().contains("more than it announced") => {
                let _ = std::fs::remove_file(part);
                Err(Fail::Transient(anyhow!(
                    "download of {f}: {host} sent more than the {size} bytes it announced; dropped"
                )))
            }
            Err(e) => Err(Fail::Transient(anyhow!(
                "download of {f} interrupted ({}){}",
                sanitize(&e.to_string()),
                Self::kept(part)
            ))),
        }
    }

    /// One attempt: metadata, transfer, checks, then the blob, the snapshot link and the ref.
    fn attempt(&self) -> Attempt<PathBuf> {
        let f = self.f;
        let fatal = |e: anyhow::Error| Fail::Fatal(e);
        let meta = self.metadata()?;
        let repo_dir = f.repo_dir(self.cache);
        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| {
            fatal(anyhow!(
                "cannot download {f} into {}: {e}",
                self.cache.display()
            ))
        })?;
        let blob = blobs.join(&meta.etag);
        // huggingface_hub's names for the partial file and the lock (an flock, as its
        // `filelock`'s): either tool resumes the other's interrupted download and waits for
        // the other's download in progress, in the cache they share.
        let part = blobs.join(format!("{}.incomplete", meta.etag));
        let repo_name = repo_dir.file_name().unwrap_or_default();
        let locks = self.cache.join(".locks").join(repo_name);
        let lock_path = locks.join(format!("{}.lock", meta.etag));
        let lock = std::fs::create_dir_all(&locks)
            .and_then(|()| File::create(&lock_path))
            .map_err(|e| fatal(anyhow!("cannot create {}: {e}", lock_path.display())))?;
        // Another process downloading the same file holds the lock: wait for it (as
        // huggingface_hub does), then find its blob below. The lock is the kernel's (flock):
        // it goes with the process that held it, so the wait ends.
        let mut waited = false;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !waited {
                        self.progress.notice(&format!(
                            "waiting for another process that is downloading {f}"
                        ));
                        waited = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(fatal(anyhow!("cannot lock {}: {e}", lock_path.display())))
                }
            }
        }
        let have_blob = std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size);
        if !have_blob {
            let resume = std::fs::metadata(&part)
                .map(|m| m.len())
                .unwrap_or(0)
                .min(meta.size);
            let how = if resume > 0 && resume < meta.size {
                format!(
                    "resuming at {} of {}",
                    human_bytes(resume),
                    human_bytes(meta.size)
                )
            } else {
                human_bytes(meta.size)
            };
            self.progress.notice(&format!(
                "downloading {f} ({how}) from {} into {}",
                self.endpoint,
                self.cache.display()
            ));
            self.transfer(&part, meta.size)?;
            // Reads the archive's index or the safetensors header only, not the weights.
            let is_rwkv = crate::checkpoint::Checkpoint::open(&part)
                .and_then(|ckpt| crate::models::detect_version(&ckpt).map(|_| ()));
            if let Err(e) = is_rwkv {
                let e = format!("{e:#}").replace(&part.display().to_string(), &f.file);
                let _ = std::fs::remove_file(&part);
                return Err(fatal(anyhow!(
                    "the file served for {f} is not an RWKV checkpoint ({}); it was not kept in the cache",
                    sanitize(&e)
                )));
            }
            std::fs::rename(&part, &blob)
                .map_err(|e| fatal(anyhow!("cannot move {} into place: {e}", part.display())))?;
        }
        let pointer = f.pointer(self.cache, &meta.commit);
        link(&blob, &pointer).map_err(|e| {
            fatal(anyhow!(
                "cannot create the cache entry {}: {e}",
                pointer.display()
            ))
        })?;
        if f.revision != meta.commit {
            let r = repo_dir.join("refs").join(&f.revision);
            let written = r
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&r, &meta.commit));
            written.map_err(|e| fatal(anyhow!("cannot write {}: {e}", r.display())))?;
        }
        drop(lock);
        let _ = std::fs::remove_file(&lock_path);
        Ok(pointer)
    }
}

/// A 206 whose range does not cover the whole file.
fn range_is_partial(resp: &ureq::http::Response<ureq::Body>, size: u64) -> bool {
    let Some(c) = Job::header(resp, "content-range") else {
        return false;
    };
    let Some(span) = c.strip_prefix("bytes").map(str::trim) else {
        return true;
    };
    let span = span.split('/').next().unwrap_or("");
    span != format!("0-{}", size.saturating_sub(1))
}

fn is_transient_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
            | ErrorKind::TimedOut
    )
}

/// Whether a body read failed on ureq's per-read timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

/// The snapshot entry: a relative symlink to the blob (a copy where symlinks are missing).
fn link(blob: &Path, pointer: &Path) -> std::io::Result<()> {
    let dir = pointer.parent().ok_or(ErrorKind::InvalidInput)?;
    std::fs::create_dir_all(dir)?;
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer)?;
    }
    #[cfg(unix)]
    {
        // snapshots/<commit>/<a/b/file> → ../../(../ per subfolder)blobs/<etag>
        let snapshot_root = pointer
            .ancestors()
            .find(|a| a.parent().and_then(Path::file_name) == Some("snapshots".as_ref()))
            .ok_or(ErrorKind::InvalidInput)?;
        let depth = dir
            .strip_prefix(snapshot_root)
            .map(|p| p.components().count())
            .unwrap_or(0);
        let mut target = PathBuf::from("../..");
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().ok_or(ErrorKind::InvalidInput)?);
        std::os::unix::fs::symlink(target, pointer)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(blob, pointer).map(|_| ())
    }
}

/// Downloads `f` into `cache` from `endpoint`, retrying transient failures.
pub fn download(
    f: &HubFile,
    endpoint: &str,
    cache: &Path,
    progress: &dyn DownloadProgress,
) -> Result<PathBuf> {
    let cfg = NetConfig::from_env()?;
    let job = Job {
        f,
        endpoint,
        cache,
        cfg: &cfg,
        url: resolve_url(endpoint, f),
        token: token(),
        progress,
    };
    let mut attempt = 0u32;
    loop {
        match job.attempt() {
            Ok(p) => return Ok(p),
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Transient(e)) if attempt < cfg.retries => {
                let wait = (1u64 << attempt.min(6)).min(MAX_BACKOFF_S);
                attempt += 1;
                progress.notice(&format!(
                    "downloading {f}: {}; retry {attempt} of {} in {wait} s",
                    strip_prefix_of(&e, f),
                    cfg.retries
                ));
                std::thread::sleep(Duration::from_secs(wait));
            }
            Err(Fail::Transient(e)) => return Err(e),
        }
    }
}

/// The message without its leading "cannot download F: " or "F: " (the notice names F
/// already).
fn strip_prefix_of(e: &anyhow::Error, f: &HubFile) -> String {
    let s = e.to_string();
    for p in [format!("cannot download {f}: "), format!("{f}: ")] {
        if let Some(rest) = s.strip_prefix(&p) {
            return rest.to_string();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked_before_they_become_paths() {
        let c = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(valid_commit(c).unwrap(), c.to_ascii_lowercase());
        for bad in [
            "../../..",
            "",
            "0123",
            &format!("{c}0"),
            "../0123456789abcdef0123456789abcdef0123",
        ] {
            assert_eq!(valid_commit(bad), None, "{bad}");
        }
        assert_eq!(valid_etag("\"abc-1_2\"").unwrap(), "abc-1_2");
        assert_eq!(valid_etag("W/\"abc\"").unwrap(), "abc");
        for bad in ["\"../x\"", "\"\"", "a/b", "a.b", ".."] {
            assert_eq!(valid_etag(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_encode_revisions_and_file_names() {
        let f = HubFile {
            repo: "o/r".into(),
            file: "dir/a b#.pth".into(),
            revision: "refs/pr/1".into(),
        };
        assert_eq!(
            resolve_url("http://h", &f),
            "http://h/o/r/resolve/refs%2Fpr%2F1/dir/a%20b%23.pth"
        );
        assert_eq!(host_of("https://hf.co:443/x?y"), "hf.co:443");
    }

    #[test]
    fn server_text_loses_control_characters() {
        assert_eq!(sanitize("a\x1b[31mb\nc"), "a [31mb c");
        assert_eq!(sanitize(&"x".repeat(300)).chars().count(), 201);
    }
}
