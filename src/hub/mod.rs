//! Models from the Hugging Face Hub: resolving `--model`, the cache, downloads, offline mode.
//!
//! `--model` is, in this order: an existing file; a catalogue alias ([`crate::catalog`]); or
//! `owner/repo:path/in/repo.pth[@revision]`. Hub files live in the standard Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), in the layout every
//! HF tool shares: `models--owner--repo/{blobs/<etag>, refs/<revision>,
//! snapshots/<commit>/<file> -> ../../blobs/<etag>}`.
//!
//! A file already in the cache is used without any request. Otherwise it is downloaded by our
//! own code on ureq (`download`: bounded timeouts, bounded retries, every server-provided
//! name checked before it becomes a path) from `$HF_ENDPOINT` (else the Hub), authenticated
//! with `HF_TOKEN` (or the token file in `$HF_HOME/token`), never printed. With `--offline` or
//! `HF_HUB_OFFLINE=1` only the cache is consulted and nothing is sent to the network.
//!
//! Interrupted downloads: the bytes go to `blobs/<etag>.incomplete`, renamed to the blob only
//! once it has exactly the announced size and is an RWKV checkpoint; a leftover one is resumed
//! with a `Range` request (restarted when the server sends the whole file instead). So the
//! cache never holds a snapshot entry for a partial or foreign file.

mod download;
mod spec;

pub use download::{NetConfig, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S, DEFAULT_RETRIES};

use crate::catalog;
use anyhow::{anyhow, bail, Result};
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

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`, else (no
/// `HOME`) `huggingface` in the per-user `rwkv-cli-<uid>` temporary folder.
pub fn hf_home() -> PathBuf {
    if let Some(h) = env_nonempty("HF_HOME") {
        return expand_home(h);
    }
    // Without HOME: this user's private folder in the temporary directory, never the
    // current directory nor a folder shared by all users.
    let cache = env_nonempty("XDG_CACHE_HOME")
        .map(expand_home)
        .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".cache")))
        .or_else(|| crate::default_model::private_temp_dir().ok())
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

impl HubFile {
    /// Parses a Hub reference: `owner/repo:path/in/repo[@revision]`, a Hub URL
    /// (`https://huggingface.co/OWNER/REPO/resolve|blob/REV/FILE`, `hf://OWNER/REPO[@REV]/FILE`)
    /// or `OWNER/REPO/FILE`. `Ok(None)` when `spec` has none of these shapes; an error when it
    /// does but is malformed, or is a URL of another host (never downloaded from).
    pub fn parse(spec: &str) -> Result<Option<HubFile>> {
        if spec.contains("://") {
            return spec::parse_url(spec).map(Some);
        }
        let Some((repo, rest)) = spec.split_once(':') else {
            return Ok(spec::parse_path_form(spec));
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
        if parts.next().is_some() || !spec::valid_repo_part(owner) || !spec::valid_repo_part(name) {
            return Err(bad("the repo must be owner/name"));
        }
        if !spec::valid_file(file) {
            return Err(bad("no valid file path after ':'"));
        }
        if !spec::valid_revision(revision) {
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
        download::valid_commit(commit.trim())
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
        "model {spec} does not exist: it is not a file, a catalogue alias or a Hub file (owner/repo:file.pth[@revision], owner/repo/file.pth or a huggingface.co link)"
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
        Source::Local => local_file(spec)?,
        Source::Hub { file, .. } => fetch(file, progress)?,
    };
    Ok(Resolved { path, source })
}

/// A local `--model` path, checked to be a regular file before anything opens it (opening a
/// FIFO would wait for a writer forever; a folder or a device is no checkpoint either).
pub fn local_file(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    let meta = std::fs::metadata(&p).map_err(|e| anyhow!("cannot read model file {spec}: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if is_fifo(&ft) {
            "a named pipe (FIFO)"
        } else {
            "not a regular file"
        };
        bail!("model file {spec} is {what}: give a checkpoint file (.pth, .safetensors or .gguf)");
    }
    // rwkv.cpp's own format (ggml, magic "ggmf"): say so rather than fail as safetensors.
    let mut magic = [0u8; 4];
    let head = std::fs::File::open(&p).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    if matches!(head, Ok(4)) && matches!(u32::from_le_bytes(magic), 0x6767_6d66 | 0x6767_6d6c) {
        bail!(
            "model file {spec} is in rwkv.cpp's ggml format, which rwkv-cli does not read: use the original PyTorch .pth, a .safetensors or a llama.cpp .gguf file of the same model"
        );
    }
    Ok(p)
}

#[cfg(unix)]
fn is_fifo(ft: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_fifo()
}

#[cfg(not(unix))]
fn is_fifo(_ft: &std::fs::FileType) -> bool {
    false
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
    download::download(f, &endpoint(), &cache, progress)
}

/// What a download tells its user. The library draws nothing itself: the CLI implements this
/// with a progress bar and notices on stderr; `()` stays silent.
pub trait DownloadProgress {
    /// One line of news: a download starts, resumes or restarts.
    fn notice(&self, line: &str);
    /// The transfer of `file` (its path in the repo) begins: `total` bytes in all, `have` of
    /// them already on disk (a resumed download: they do not count towards its speed).
    fn start(&self, file: &str, total: u64, have: u64);
    /// `bytes` more have arrived.
    fn advance(&self, bytes: u64);
    /// The transfer has ended, well or not: whatever was drawn goes away.
    fn finish(&self);
}

/// No progress shown, no notice printed.
impl DownloadProgress for () {
    fn notice(&self, _line: &str) {}
    fn start(&self, _file: &str, _total: u64, _have: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Whether `HF_HUB_DISABLE_PROGRESS_BARS` turns progress bars off (read as huggingface_hub does).
pub fn progress_bars_disabled() -> bool {
    env_true("HF_HUB_DISABLE_PROGRESS_BARS")
}

/// Whether `e` means the disk (or quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28) // ENOSPC on Linux and macOS
}

#[cfg(test)]
mod tests {
    use super::spec::tests::hub;
    use super::*;

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
        let main = "abcdef0123456789abcdef0123456789abcdef01";
        std::fs::write(dir.join("refs/main"), format!("{main}\n")).unwrap();
        assert_eq!(f.cached(&cache), None, "ref without the file");
        let snap = dir.join("snapshots").join(main).join("sub");
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
    }
}
