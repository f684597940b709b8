//! Models from the Hugging Face Hub: resolving `--model`, the cache, downloads, offline mode.
//!
//! `--model` is, in this order: an existing file; a catalogue alias ([`crate::catalog`]); or
//! `owner/repo:path/in/repo.pth[@revision]`. Hub files live in the standard Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), in the layout every
//! HF tool shares: `models--owner--repo/{blobs/<etag>, refs/<revision>,
//! snapshots/<commit>/<file> -> ../../blobs/<etag>}`.
//!
//! A file already in the cache is used without any request. Otherwise it is downloaded with
//! hf-hub (which honours `HF_ENDPOINT`), authenticated with `HF_TOKEN` (or the token file in
//! `$HF_HOME/token`), never printed. With `--offline` or `HF_HUB_OFFLINE=1` only the cache is
//! consulted and nothing is sent to the network; hf-hub 0.5 does not read that variable, so
//! the lookup here is our own.
//!
//! Interrupted downloads: hf-hub writes `blobs/<etag>.part`, renames it to the blob only when
//! the transfer ends without error, and resumes a leftover `.part` with a `Range` request. On
//! top of that we check the finished blob's size against the size the server announced (a
//! connection closed early without a Content-Length, or a server that ignored `Range` on a
//! resume, would otherwise leave a complete-looking but wrong file), check that it is an RWKV
//! checkpoint at all, and drop a `.part` that cannot be resumed. So the cache never holds a
//! snapshot entry for a partial or foreign file, and the next run resumes or restarts cleanly.

use crate::catalog;
use crate::stats::human_bytes;
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

static OFFLINE_FLAG: AtomicBool = AtomicBool::new(false);

/// Turns offline mode on for this process (the `--offline` flag).
pub fn set_offline(on: bool) {
    if on {
        OFFLINE_FLAG.store(true, Ordering::Relaxed);
    }
}

/// Whether only the cache may be used: `--offline` or `HF_HUB_OFFLINE=1`.
pub fn offline() -> bool {
    OFFLINE_FLAG.load(Ordering::Relaxed) || env_true("HF_HUB_OFFLINE")
}

/// `1`, `true`, `yes` or `on`, as huggingface_hub reads boolean variables.
fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A variable's value when it is set and not empty.
fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn expand_home(p: String) -> PathBuf {
    match (p.strip_prefix("~/"), env_nonempty("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = env_nonempty("HF_HOME") {
        return expand_home(h);
    }
    let cache = env_nonempty("XDG_CACHE_HOME")
        .map(expand_home)
        .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface")
}

/// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`.
pub fn cache_dir() -> PathBuf {
    match env_nonempty("HF_HUB_CACHE") {
        Some(c) => expand_home(c),
        None => hf_home().join("hub"),
    }
}

/// `$HF_ENDPOINT` (a mirror) without a trailing slash, else the Hub itself.
pub fn endpoint() -> String {
    env_nonempty("HF_ENDPOINT")
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// `$HF_TOKEN`, else the token file (`$HF_TOKEN_PATH` or `$HF_HOME/token`). Never printed.
fn token() -> Option<String> {
    if let Some(t) = env_nonempty("HF_TOKEN") {
        return Some(t.trim().to_string());
    }
    let path = env_nonempty("HF_TOKEN_PATH")
        .map(expand_home)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A file in a Hub model repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubFile {
    /// `owner/name`.
    pub repo: String,
    /// Path inside the repo.
    pub file: String,
    /// Branch, tag or commit.
    pub revision: String,
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.file)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

impl From<&catalog::Entry> for HubFile {
    fn from(e: &catalog::Entry) -> Self {
        HubFile {
            repo: e.repo.clone(),
            file: e.file.clone(),
            revision: e.revision.clone(),
        }
    }
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HubFile {
    /// Parses `owner/repo:path/in/repo[@revision]`. `Ok(None)` when `spec` does not look like a
    /// Hub reference at all (no `:` after an `owner/repo`); an error when it does but is
    /// malformed.
    pub fn parse(spec: &str) -> Result<Option<HubFile>> {
        let Some((repo, rest)) = spec.split_once(':') else {
            return Ok(None);
        };
        if !repo.contains('/') {
            return Ok(None);
        }
        let (file, revision) = rest.rsplit_once('@').unwrap_or((rest, "main"));
        let bad = |why: &str| {
            anyhow!("invalid Hub reference {spec}: {why} (expected owner/repo:path/in/repo.pth[@revision])")
        };
        let mut parts = repo.split('/');
        let (owner, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if parts.next().is_some() || !valid_repo_part(owner) || !valid_repo_part(name) {
            return Err(bad("the repo must be owner/name"));
        }
        if file.is_empty()
            || file.starts_with('/')
            || file.ends_with('/')
            || file.contains('\\')
            || file
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("no valid file path after ':'"));
        }
        if revision.is_empty()
            || revision.contains("..")
            || revision.starts_with('/')
            || revision.chars().any(|c| c.is_whitespace() || c == '\\')
        {
            return Err(bad("invalid revision after '@'"));
        }
        Ok(Some(HubFile {
            repo: repo.to_string(),
            file: file.to_string(),
            revision: revision.to_string(),
        }))
    }

    /// The repo's folder in the cache.
    pub fn repo_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }

    /// The snapshot entry for a given commit.
    fn pointer(&self, cache: &Path, commit: &str) -> PathBuf {
        self.repo_dir(cache)
            .join("snapshots")
            .join(commit)
            .join(&self.file)
    }

    /// The commit that `revision` points to in the cache, if known.
    fn cached_commit(&self, cache: &Path) -> Option<String> {
        let dir = self.repo_dir(cache);
        let is_hash =
            self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit());
        if is_hash && dir.join("snapshots").join(&self.revision).is_dir() {
            return Some(self.revision.clone());
        }
        let commit = std::fs::read_to_string(dir.join("refs").join(&self.revision)).ok()?;
        let commit = commit.trim();
        let plausible = !commit.is_empty()
            && commit
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        plausible.then(|| commit.to_string())
    }

    /// The file in the cache, if it is there (a lookup only: no request, nothing written).
    pub fn cached(&self, cache: &Path) -> Option<PathBuf> {
        let p = self.pointer(cache, &self.cached_commit(cache)?);
        p.is_file().then_some(p)
    }
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A path given on the command line.
    Local,
    /// A Hub file, named directly or through a catalogue alias.
    Hub {
        file: HubFile,
        alias: Option<String>,
    },
}

/// A model resolved to a file on disk.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub path: PathBuf,
    pub source: Source,
}

impl Resolved {
    /// One line for humans: "local file" or "owner/repo:file (alias a)".
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Local => "local file".to_string(),
            Source::Hub { file, alias: None } => file.to_string(),
            Source::Hub {
                file,
                alias: Some(a),
            } => format!("{file} (alias {a})"),
        }
    }

    /// The cache entry, for Hub models.
    pub fn cached_at(&self) -> Option<&Path> {
        match self.source {
            Source::Local => None,
            Source::Hub { .. } => Some(&self.path),
        }
    }
}

/// What a `--model` value names, before anything is downloaded.
pub fn identify(spec: &str) -> Result<Source> {
    if Path::new(spec).exists() {
        return Ok(Source::Local);
    }
    if let Some(e) = catalog::find(spec) {
        return Ok(Source::Hub {
            file: HubFile::from(e),
            alias: Some(e.alias.clone()),
        });
    }
    if let Some(file) = HubFile::parse(spec)? {
        return Ok(Source::Hub { file, alias: None });
    }
    let mut msg = format!(
        "model {spec} does not exist: it is not a file, a catalogue alias or owner/repo:file.pth[@revision]"
    );
    let near = catalog::suggest(spec, 3);
    if near.is_empty() {
        msg.push_str(" (`rwkv-cli models` lists the aliases)");
    } else {
        msg.push_str(&format!(
            "; nearest aliases: {} (`rwkv-cli models` lists them all)",
            near.join(", ")
        ));
    }
    bail!(msg)
}

/// Resolves a `--model` value to a file, downloading it into the cache when needed (telling
/// `progress` how the download goes).
pub fn resolve(spec: &str, progress: &dyn DownloadProgress) -> Result<Resolved> {
    let source = identify(spec)?;
    let path = match &source {
        Source::Local => PathBuf::from(spec),
        Source::Hub { file, .. } => fetch(file, progress)?,
    };
    Ok(Resolved { path, source })
}

/// The cached file, or a download into the cache (never in offline mode).
pub fn fetch(f: &HubFile, progress: &dyn DownloadProgress) -> Result<PathBuf> {
    let cache = cache_dir();
    if let Some(p) = f.cached(&cache) {
        return Ok(p);
    }
    if offline() {
        bail!(
            "{f} is not in the cache ({}) and offline mode is on (--offline or HF_HUB_OFFLINE=1): run once without it to download the model",
            cache.display()
        );
    }
    download(f, &cache, progress)
}

/// What a download tells its user. The library draws nothing itself: the CLI implements this
/// with a progress bar and notices on stderr; `()` stays silent.
pub trait DownloadProgress {
    /// One line of news: a download starts, resumes or restarts.
    fn notice(&self, line: &str);
    /// The transfer of `file` (its path in the repo) begins: `total` bytes in all.
    fn start(&self, file: &str, total: u64);
    /// `bytes` more have arrived.
    fn advance(&self, bytes: u64);
    /// The transfer has ended, well or not: whatever was drawn goes away.
    fn finish(&self);
}

/// No progress shown, no notice printed.
impl DownloadProgress for () {
    fn notice(&self, _line: &str) {}
    fn start(&self, _file: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Whether `HF_HUB_DISABLE_PROGRESS_BARS` turns progress bars off (read as huggingface_hub does).
pub fn progress_bars_disabled() -> bool {
    env_true("HF_HUB_DISABLE_PROGRESS_BARS")
}

/// What hf-hub drives: it takes the progress by value, so this lends it ours.
struct ProgressHandle<'a> {
    progress: &'a dyn DownloadProgress,
    file: &'a str,
}

impl hf_hub::api::Progress for ProgressHandle<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.progress.start(self.file, size as u64);
    }
    fn update(&mut self, size: usize) {
        self.progress.advance(size as u64);
    }
    fn finish(&mut self) {
        self.progress.finish();
    }
}

/// Whether `e` means the disk (or quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28) // ENOSPC on Linux and macOS
}

/// One clear sentence for a failed Hub request or download.
fn explain(
    e: ApiError,
    f: &HubFile,
    endpoint: &str,
    cache: &Path,
    part: Option<&Path>,
    size: Option<u64>,
) -> anyhow::Error {
    let kept = || -> String {
        match part.and_then(|p| std::fs::metadata(p).ok()) {
            Some(m) if m.len() > 0 => format!(
                "; {} kept in {}, the next run resumes from there",
                human_bytes(m.len()),
                part.unwrap_or(Path::new("")).display()
            ),
            _ => String::new(),
        }
    };
    match e {
        ApiError::RequestError(err) => {
            let text = err.to_string();
            if let Some(code) = text.strip_prefix("http status: ") {
                let code = code.trim();
                return match code {
                    "404" => anyhow!(
                        "{f} not found on {endpoint} (HTTP 404): check the repo, the file name and the revision"
                    ),
                    "401" | "403" => {
                        let hint = if token().is_some() {
                            "the token in HF_TOKEN (or the token file) has no access to it"
                        } else {
                            "if it is private or gated, set HF_TOKEN to a token with access"
                        };
                        anyhow!("{f}: access denied by {endpoint} (HTTP {code}): the repo may not exist, or {hint}")
                    }
                    "416" => anyhow!(
                        "{f}: {endpoint} refused to resume the download (HTTP 416); run again to restart it"
                    ),
                    _ => anyhow!("{f}: {endpoint} answered HTTP {code}{}", kept()),
                };
            }
            if text == "host not found" {
                return anyhow!(
                    "cannot download {f}: the host of {endpoint} cannot be resolved (no network?); cached models still run with --offline"
                );
            }
            let detail = text.strip_prefix("io: ").unwrap_or(&text);
            anyhow!(
                "cannot download {f}: no connection to {endpoint} ({detail}){}; cached models still run with --offline",
                kept()
            )
        }
        ApiError::IoError(io) if is_disk_full(&io) => anyhow!(
            "disk full while downloading {f}{} into {}: free some space and run again{}",
            size.map(|n| format!(" ({})", human_bytes(n)))
                .unwrap_or_default(),
            cache.display(),
            kept()
        ),
        ApiError::IoError(io) => {
            let k = kept();
            if k.is_empty() {
                anyhow!("cannot download {f} into {}: {io}", cache.display())
            } else {
                anyhow!("download of {f} interrupted ({io}){k}")
            }
        }
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => anyhow!(
            "cannot download {f}: {endpoint} sent no valid {h} header (is HF_ENDPOINT a Hugging Face Hub?)"
        ),
        ApiError::LockAcquisition(p) => anyhow!(
            "cannot download {f}: another process is downloading it (lock {} is held)",
            p.display()
        ),
        other => anyhow!("cannot download {f}: {other}{}", kept()),
    }
}

/// What a finished download turned out to be.
enum Check {
    Good,
    /// Bigger than announced (a resume the server did not honour): removed, try again.
    Restart,
}

/// Checks a finished download; removes whatever must not stay in the cache.
fn check_download(
    f: &HubFile,
    pointer: &Path,
    blob: &Path,
    part: &Path,
    size: u64,
) -> Result<Check> {
    let got = std::fs::metadata(pointer)
        .with_context(|| format!("cannot read the downloaded {}", pointer.display()))?
        .len();
    if got != size {
        let _ = std::fs::remove_file(pointer);
        if got < size {
            // The connection ended early without an error: keep the bytes for a resume.
            let _ = std::fs::rename(blob, part);
            bail!(
                "download of {f} interrupted: got {got} of {size} bytes; the next run resumes it"
            );
        }
        let _ = std::fs::remove_file(blob);
        return Ok(Check::Restart);
    }
    // Reads the archive's index or the safetensors header only, not the weights.
    let is_rwkv = crate::checkpoint::Checkpoint::open(pointer)
        .and_then(|ckpt| crate::models::detect_version(&ckpt).map(|_| ()));
    if let Err(e) = is_rwkv {
        // The loader names the cache path, which is about to go: name the file instead.
        let e = format!("{e:#}").replace(&pointer.display().to_string(), &f.file);
        let _ = std::fs::remove_file(pointer);
        let _ = std::fs::remove_file(blob);
        bail!(
            "the file served for {f} is not an RWKV checkpoint ({e}); it was not kept in the cache"
        );
    }
    Ok(Check::Good)
}

/// Downloads `f` into the cache with hf-hub and checks the result.
fn download(f: &HubFile, cache: &Path, progress: &dyn DownloadProgress) -> Result<PathBuf> {
    let endpoint = endpoint();
    let api = ApiBuilder::from_env()
        .with_endpoint(endpoint.clone())
        .with_cache_dir(cache.to_path_buf())
        .with_token(token())
        .with_progress(false)
        .with_retries(0)
        .build()
        .map_err(|e| anyhow!("cannot set up the Hub client: {e}"))?;
    let repo = api.repo(Repo::with_revision(
        f.repo.clone(),
        RepoType::Model,
        f.revision.clone(),
    ));
    let url = repo.url(&f.file);
    for attempt in 0..2 {
        let meta = api
            .metadata(&url)
            .map_err(|e| explain(e, f, &endpoint, cache, None, None))?;
        let size = meta.size() as u64;
        let blob = f.repo_dir(cache).join("blobs").join(meta.etag());
        let mut part = blob.clone();
        part.set_extension("part");
        let pointer = f.pointer(cache, meta.commit_hash());
        // A snapshot link whose blob is gone would make hf-hub fail: drop it.
        if pointer.symlink_metadata().is_ok() && !pointer.exists() {
            let _ = std::fs::remove_file(&pointer);
        }
        // A leftover that cannot be resumed (as long as the file or longer) restarts from zero.
        let resume_from = match std::fs::metadata(&part) {
            Ok(m) if m.len() >= size => {
                let _ = std::fs::remove_file(&part);
                0
            }
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        let how = if resume_from > 0 {
            format!(
                "resuming at {} of {}",
                human_bytes(resume_from),
                human_bytes(size)
            )
        } else {
            human_bytes(size)
        };
        progress.notice(&format!(
            "downloading {f} ({how}) from {endpoint} into {}",
            cache.display()
        ));
        let handle = ProgressHandle {
            progress,
            file: &f.file,
        };
        let result = repo.download_with_progress(&f.file, handle);
        progress.finish();
        let path = result.map_err(|e| explain(e, f, &endpoint, cache, Some(&part), Some(size)))?;
        match check_download(f, &path, &blob, &part, size)? {
            Check::Good => return Ok(path),
            Check::Restart if attempt == 0 => {
                progress.notice(&format!(
                    "{f}: the server sent more than announced; downloading it again"
                ));
            }
            Check::Restart => {}
        }
    }
    bail!("download of {f} failed twice: the server sends a different size than it announces")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repo: &str, file: &str, rev: &str) -> HubFile {
        HubFile {
            repo: repo.into(),
            file: file.into(),
            revision: rev.into(),
        }
    }

    #[test]
    fn hub_references_parse_with_an_optional_revision() {
        assert_eq!(
            HubFile::parse("BlinkDL/rwkv7-g1:rwkv7-g1d-0.1b-20260129-ctx8192.pth").unwrap(),
            Some(hub(
                "BlinkDL/rwkv7-g1",
                "rwkv7-g1d-0.1b-20260129-ctx8192.pth",
                "main"
            ))
        );
        assert_eq!(
            HubFile::parse("a/b:dir/x.pth@v1.0").unwrap(),
            Some(hub("a/b", "dir/x.pth", "v1.0"))
        );
        assert_eq!(
            HubFile::parse("a/b:x.pth@refs/pr/1").unwrap(),
            Some(hub("a/b", "x.pth", "refs/pr/1"))
        );
        // Not Hub references at all.
        assert_eq!(HubFile::parse("model.pth").unwrap(), None);
        assert_eq!(HubFile::parse("/tmp/model.pth").unwrap(), None);
        assert_eq!(HubFile::parse("C:\\models\\x.pth").unwrap(), None);
        // Malformed ones.
        for bad in [
            "a/b:",
            "a/b:x.pth@",
            "a/b/c:x.pth",
            "/b:x.pth",
            "a/b:/x.pth",
            "a/b:../x.pth",
            "a/b:x.pth@..",
            "a b/c:x.pth",
        ] {
            assert!(HubFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_omits_the_default_revision() {
        assert_eq!(hub("a/b", "x.pth", "main").to_string(), "a/b:x.pth");
        assert_eq!(hub("a/b", "x.pth", "dev").to_string(), "a/b:x.pth@dev");
    }

    #[test]
    fn cache_lookup_follows_refs_to_snapshots() {
        let cache = std::env::temp_dir().join(format!("rwkv-hub-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let f = hub("o/r", "sub/m.pth", "main");
        assert_eq!(f.cached(&cache), None);
        let dir = cache.join("models--o--r");
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(f.cached(&cache), None, "ref without the file");
        let snap = dir.join("snapshots/abc123/sub");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("m.pth"), b"PK\x03\x04").unwrap();
        assert_eq!(f.cached(&cache), Some(snap.join("m.pth")));
        // A commit hash as the revision finds its snapshot directly.
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap2 = dir.join("snapshots").join(commit).join("sub");
        std::fs::create_dir_all(&snap2).unwrap();
        std::fs::write(snap2.join("m.pth"), b"x").unwrap();
        assert_eq!(
            hub("o/r", "sub/m.pth", commit).cached(&cache),
            Some(snap2.join("m.pth"))
        );
        // A ref that tries to escape the cache is ignored.
        std::fs::write(dir.join("refs/main"), "../../etc").unwrap();
        assert_eq!(f.cached(&cache), None);
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn disk_full_is_recognised() {
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&std::io::Error::from(
            std::io::ErrorKind::StorageFull
        )));
        assert!(!is_disk_full(&std::io::Error::from(
            std::io::ErrorKind::PermissionDenied
        )));
        let f = hub("o/r", "m.pth", "main");
        let e = explain(
            ApiError::IoError(std::io::Error::from_raw_os_error(28)),
            &f,
            "http://x",
            Path::new("/cache"),
            None,
            Some(2048),
        );
        assert!(
            e.to_string()
                .starts_with("disk full while downloading o/r:m.pth (2.0 KiB) into /cache"),
            "{e}"
        );
    }
}
