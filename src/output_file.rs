//! Writing the files the CLI produces (`--state-out`, `--logits-out`, the embedded model's
//! cache copy) so that a failure never leaves a corrupt file and a path is never clobbered:
//! - [`check`]: before any expensive work, that a path can be written (a directory that
//!   exists and takes a file; not a directory itself);
//! - [`write`](fn@write): a regular or new file atomically — a temporary file in the directory of the
//!   real file (symbolic links are followed, never replaced), then a rename; an existing FIFO
//!   or device (`/dev/stdout`) is opened and written in place;
//! - [`write_atomic`]: the temporary-file-and-rename step itself (permissions kept, synced).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Follows `path` through symbolic links (relative targets are relative to the link's
/// directory) to the path of the file it names, which need not exist yet.
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)
                    .with_context(|| format!("cannot read the link {}", p.display()))?;
                p = match p.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(p),
        }
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// Where `path` really is: links followed, the directory made absolute and canonical (the file
/// itself need not exist).
fn real_location(path: &Path) -> Option<PathBuf> {
    let p = resolve_links(path).ok()?;
    let dir = std::fs::canonicalize(parent_dir(&p)).ok()?;
    Some(dir.join(p.file_name()?))
}

/// Whether two output paths name the same file: the same place once links are followed, or
/// the same existing file under two names (a hard link).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    match (real_location(a), real_location(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether `path` is this process's standard output (`/dev/stdout`, or the file or pipe stdout
/// goes to), where the generated text also goes. `/dev/null` is not: whatever both write there
/// mixes with nothing.
pub fn is_stdout(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(p), Ok(out)) = (
            std::fs::metadata(path),
            std::fs::metadata("/proc/self/fd/1"),
        ) {
            let null = std::fs::metadata("/dev/null").is_ok_and(|n| n.rdev() == p.rdev());
            return p.dev() == out.dev() && p.ino() == out.ino() && !null;
        }
    }
    let _ = path;
    false
}

/// Refuses (a usage error) two output options that name the same file, where one would
/// overwrite the other: `(option, path)` pairs, `None` for an option not given.
pub fn check_distinct(outputs: &[(&str, Option<&str>)]) -> Result<()> {
    let given: Vec<(&str, &str)> = outputs
        .iter()
        .filter_map(|(o, p)| p.map(|p| (*o, p)))
        .collect();
    for (i, (oa, pa)) in given.iter().enumerate() {
        for (ob, pb) in &given[i + 1..] {
            if same_file(Path::new(pa), Path::new(pb)) {
                crate::usage_bail!(
                    "{oa} {pa} and {ob} {pb} are the same file: one would overwrite the other"
                );
            }
        }
    }
    Ok(())
}

/// The directory a new file at `path` goes into.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The temporary file [`write_atomic`] writes before renaming it to `path`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().context("output path has no file name")?;
    Ok(parent_dir(path).join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Checks, before any work, that `--option path` can be written: not a directory, in a
/// directory that exists and where a file can be created (for a regular or a new file). An
/// existing FIFO or device is not opened here (opening a FIFO waits for its reader).
pub fn check(option: &str, path: &str) -> Result<()> {
    if path.is_empty() {
        crate::usage_bail!("{option} needs a file name");
    }
    if path == "-" {
        crate::usage_bail!(
            "{option} - would write to stdout, where the text goes: name a file (./- for a file named -)"
        );
    }
    let fail = |why: String| -> Result<()> { bail!("cannot write {option} {path}: {why}") };
    if path.ends_with('/') {
        return fail("the path names a directory, not a file".into());
    }
    let p = Path::new(path);
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => return fail("it is a directory".into()),
        Ok(m) if !m.is_file() => return Ok(()), // a FIFO or a device: written in place
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return fail(e.to_string()),
    }
    // A regular file or a new one: written atomically beside the real file.
    let target = match resolve_links(p) {
        Ok(t) => t,
        Err(e) => return fail(format!("{e:#}")),
    };
    let dir = parent_dir(&target);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return fail(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(format!("directory {} does not exist", dir.display()))
        }
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    }
    // Can a file be created there (permissions, a read-only file system)?
    let tmp = match temp_path(&target) {
        Ok(t) => t,
        Err(e) => return fail(format!("{e:#}")),
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
    {
        Ok(f) => {
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        // A temporary file left by an earlier run of this pid: it is overwritten later.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => fail(format!("cannot create a file in {}: {e}", dir.display())),
    }
}

/// Writes an output file: a regular (or new) file atomically, in the directory of the file a
/// symbolic link points to (the link stays); a FIFO, a character device or anything else that
/// is not a regular file is opened and written in place.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("cannot write {}: it is a directory", path.display()),
        Ok(m) if !m.is_file() => {
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.write_all(bytes)?;
                f.flush()
            };
            write().with_context(|| format!("cannot write {}", path.display()))
        }
        Ok(_) => write_atomic(&resolve_links(path)?, bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(&resolve_links(path)?, bytes)
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// Writes a file atomically: a temporary file beside it, then a rename. An existing file's
/// permissions are kept.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(m) = std::fs::metadata(path) {
            if m.is_file() {
                f.set_permissions(m.permissions())?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every file system allows it).
        if let Ok(d) = std::fs::File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to `path` only if no file is there: written to a temporary file, synced,
/// then linked into place, so that of several processes creating the same file at once the
/// first one's stays (its inode and time unchanged) and the others' are discarded. `Ok(false)`
/// when a file was already there. Where the file system has no hard links, it is renamed into
/// place as by [`write_atomic`].
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    let result = (|| -> Result<bool> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let placed = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(_) => {
                std::fs::rename(&tmp, path)?;
                true
            }
        };
        if let Ok(d) = std::fs::File::open(parent_dir(path)) {
            let _ = d.sync_all();
        }
        Ok(placed)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_written_once_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("rwkv-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        assert!(write_new(&p, b"one").unwrap());
        assert!(!write_new(&p, b"two").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("rwkv-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
