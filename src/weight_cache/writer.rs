//! Writing a cache file: a temporary file beside its final name, renamed once whole; and
//! the size limit's eviction.

use super::{segment_hashes, HEADER, HUGE, MAGIC, STALE_TEMP_SECS};

/// Regions packed in place start on a page.
const PAGE: usize = 4096;
use crate::format::Format;
use crate::kernels::{AlignedBuf, FileMap};
use serde_json::{json, Value};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

/// A cache file being written: a temporary file beside its final name.
pub(super) struct Writer {
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    file: std::fs::File,
    /// Bytes not written yet, from file offset `flushed` on: the file is written in whole
    /// 2 MiB pieces, which the page cache keeps as huge folios (and a later run can map with
    /// huge pages); large tensors start at 2 MiB offsets.
    staged: Vec<u8>,
    flushed: usize,
    /// The regions handed out by `reserve` (file offset, map), not yet recorded.
    reserved: Vec<(usize, std::sync::Weak<FileMap>)>,
    /// The file system cannot reserve space or map the file: every entry is written.
    no_map: bool,
    max: u64,
    /// What the file may take of the disk's free space (see [`room`]).
    room: u64,
    key: Value,
    entries: serde_json::Map<String, Value>,
    done: bool,
}

impl Writer {
    pub(super) fn create(dir: &Path, dest: &Path, key: Value, max: u64) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        let mut opts = std::fs::OpenOptions::new();
        // Readable too: a shared writable map of it needs both.
        opts.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            builder.mode(0o700);
            opts.mode(0o600);
        }
        builder.create(dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(
            "{}.tmp.{}.{nanos}",
            name.unwrap_or_default(),
            std::process::id()
        ));
        let file = opts.open(&tmp)?;
        let room = room(&file);
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            dir: dir.to_path_buf(),
            file,
            // The header's page, written last.
            staged: vec![0; HEADER],
            flushed: 0,
            reserved: Vec::new(),
            no_map: false,
            max,
            room,
            key,
            entries: serde_json::Map::new(),
            done: false,
        })
    }

    fn io_error(&self, e: std::io::Error) -> String {
        format!("cannot write {}: {e}", self.tmp.display())
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        dims: [usize; 2],
        format: Format,
        bytes: &[u8],
    ) -> Result<(), String> {
        if self.entries.contains_key(key) {
            return Ok(());
        }
        let align = if bytes.len() >= HUGE { HUGE } else { 64 };
        let offset = (self.flushed + self.staged.len()).next_multiple_of(align);
        self.fits(offset + bytes.len())?;
        self.staged.resize(offset - self.flushed, 0);
        if align == HUGE {
            // The staged bytes end on a 2 MiB boundary: written, then the tensor's whole 2 MiB
            // pieces straight from its buffer, and its tail staged.
            self.flush(true).map_err(|e| self.io_error(e))?;
            let direct = bytes.len() / HUGE * HUGE;
            self.write_at(offset, &bytes[..direct])
                .map_err(|e| self.io_error(e))?;
            self.flushed = offset + direct;
            self.staged.extend_from_slice(&bytes[direct..]);
        } else {
            self.staged.extend_from_slice(bytes);
            self.flush(false).map_err(|e| self.io_error(e))?;
        }
        let hashes = segment_hashes(bytes);
        self.entries.insert(
            key.to_string(),
            json!({
                "offset": offset,
                "len": bytes.len(),
                "dims": dims,
                "format": format.name(),
                "hashes": hashes,
            }),
        );
        Ok(())
    }

    /// A writable map of `len` bytes of the file at the next page, its blocks
    /// allocated first (a write into a hole the disk could not fill would kill the process:
    /// a full disk is an error here instead). `None` where the file system cannot allocate
    /// or map (the entry is then written by `put`).
    pub(super) fn reserve(&mut self, len: usize) -> Result<Option<AlignedBuf>, String> {
        if self.no_map {
            return Ok(None);
        }
        // A page boundary is enough: the file is mapped so that its 2 MiB blocks, not its
        // tensors, fall on huge pages (2 MiB-aligned tensors left holes of up to 2 MiB each,
        // 12% of a 0.1B f32 file, that a later run's mapping read in as zero pages).
        let offset = (self.flushed + self.staged.len()).next_multiple_of(PAGE);
        self.fits(offset + len)?;
        // What is staged is written; the gap up to `offset` stays a hole.
        self.flush(true).map_err(|e| self.io_error(e))?;
        match allocate(&self.file, offset, len) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {
                self.no_map = true;
                return Ok(None);
            }
            Err(e) => return Err(self.io_error(e)),
        }
        // The file reaches to the end of the region's last 2 MiB block (what follows fills
        // it; `finish` cuts the file to its length), so that the page cache may hold that
        // block in one huge folio too: a page beyond the end of the file cannot be cached, and
        // the blocks shared by neighbouring tensors would stay in small folios for good.
        let block_end = (offset + len).next_multiple_of(HUGE) as u64;
        if self.file.metadata().map_err(|e| self.io_error(e))?.len() < block_end {
            self.file.set_len(block_end).map_err(|e| self.io_error(e))?;
        }
        let map = match FileMap::writable(&self.file, offset, len) {
            Ok(m) => m,
            Err(_) => {
                self.no_map = true;
                return Ok(None);
            }
        };
        let buf = AlignedBuf::in_file(map);
        if let Some((m, _)) = buf.file_map() {
            self.reserved.push((offset, std::sync::Arc::downgrade(m)));
        }
        self.flushed = offset + len;
        Ok(Some(buf))
    }

    /// Records entry `key`, packed into region `map` (from `reserve`) with these hashes.
    pub(super) fn adopt(
        &mut self,
        key: &str,
        dims: [usize; 2],
        format: Format,
        map: &std::sync::Arc<FileMap>,
        hashes: Vec<u64>,
    ) -> Result<(), String> {
        let at = self
            .reserved
            .iter()
            .position(|(_, w)| w.upgrade().is_some_and(|m| std::sync::Arc::ptr_eq(&m, map)));
        let Some(at) = at else {
            return Err("a weight cache region from another file".into());
        };
        let (offset, _) = self.reserved.swap_remove(at);
        if !self.entries.contains_key(key) {
            self.entries.insert(
                key.to_string(),
                json!({
                    "offset": offset,
                    "len": map.len(),
                    "dims": dims,
                    "format": format.name(),
                    "hashes": hashes,
                }),
            );
        }
        Ok(())
    }

    /// Whether a file of `len` bytes fits the size limit and the disk's free space.
    fn fits(&self, len: usize) -> Result<(), String> {
        if len as u64 > self.max {
            return Err(format!(
                "the model's weights exceed the weight cache's limit of {} MiB",
                self.max >> 20
            ));
        }
        if len as u64 > self.room {
            return Err(format!(
                "not enough free disk space for the weight cache in {} ({} MiB may be used)",
                self.dir.display(),
                self.room >> 20
            ));
        }
        Ok(())
    }

    fn write_at(&mut self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(offset as u64))?;
        self.file.write_all(bytes)
    }

    /// Writes the staged bytes' whole 2 MiB pieces (`all`: every staged byte).
    fn flush(&mut self, all: bool) -> std::io::Result<()> {
        let n = if all {
            self.staged.len()
        } else {
            self.staged.len() / HUGE * HUGE
        };
        if n > 0 {
            let staged = std::mem::take(&mut self.staged);
            self.write_at(self.flushed, &staged[..n])?;
            self.flushed += n;
            self.staged = staged[n..].to_vec();
        }
        Ok(())
    }

    /// Index, header, rename; then eviction.
    pub(super) fn finish(mut self) -> Result<(), String> {
        let index = serde_json::to_vec(&json!({
            "key": self.key,
            "entries": Value::Object(std::mem::take(&mut self.entries)),
        }))
        .map_err(|e| format!("cannot write the weight cache index: {e}"))?;
        let at = (self.flushed + self.staged.len()).next_multiple_of(64);
        let total = at + index.len();
        self.fits(total)?;
        let mut header = Vec::with_capacity(48);
        header.extend_from_slice(MAGIC);
        for v in [total, at, index.len()] {
            header.extend_from_slice(&(v as u64).to_le_bytes());
        }
        header.extend_from_slice(&xxh3_64(&index).to_le_bytes());
        let h = xxh3_64(&header);
        header.extend_from_slice(&h.to_le_bytes());
        self.staged.resize(at - self.flushed, 0);
        self.staged.extend_from_slice(&index);
        // Not synced: the kernel writes the pages back in its own time, so that the first run
        // costs the copy into the page cache, not the disk's speed (syncing 6 GB of 1.5B f32
        // weights made the first start 4× longer). A file a crash left incomplete is still
        // never used: the header, index and every 16 MiB of data are checked against their
        // checksums before a run uses it, and a file that fails is rebuilt.
        let write = |w: &mut Self| -> std::io::Result<()> {
            w.flush(true)?;
            w.write_at(0, &header)?;
            // Beyond the index, where the last region's block was reserved: cut.
            w.file.set_len(total as u64)
        };
        write(&mut self).map_err(|e| self.io_error(e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.io_error(e))?;
        self.done = true;
        let _ = evict(&self.dir, &self.dest, self.max);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// How much of the free space of `file`'s file system a cache file may take: all but 5% of
/// the file system (at most 1 GiB), so that the cache never fills a disk; unbounded where
/// the free space cannot be read.
fn room(file: &std::fs::File) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: fstatvfs fills `st` for an open descriptor we own; read only on success.
        if unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) } == 0 {
            // SAFETY: initialised by the successful call above.
            let st = unsafe { st.assume_init() };
            // The fields' types differ between systems (u32 block counts on some).
            #[allow(clippy::unnecessary_cast)]
            let (unit, free, blocks) = (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
            return room_left(free * unit, blocks * unit);
        }
    }
    let _ = file;
    u64::MAX
}

/// Free bytes less a margin of 5% of the file system's `size`, at most 1 GiB.
fn room_left(free: u64, size: u64) -> u64 {
    free.saturating_sub((size / 20).min(1 << 30))
}

/// Allocates the blocks of `len` bytes of `file` from `offset` (growing the file).
#[cfg(target_os = "linux")]
fn allocate(file: &std::fs::File, offset: usize, len: usize) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a plain system call on an open file descriptor we own.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &std::fs::File, _offset: usize, _len: usize) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether `e` says the file system cannot allocate (rather than that it is full).
fn unsupported(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return code == libc::EOPNOTSUPP || code == libc::ENOSYS || code == libc::EINVAL;
    }
    e.kind() == std::io::ErrorKind::Unsupported
}

/// Removes the least recently used cache files (`keep` last) until `dir` holds at most `max`
/// bytes of them, and temporary files that crashed writers left long ago. Run after a write
/// and on a hit. Returns whether `keep` itself was removed: larger than the limit alone (a
/// limit lowered since it was written), it goes too; a process reading it keeps its mapping.
pub(super) fn evict(dir: &Path, keep: &Path, max: u64) -> bool {
    let Ok(list) = std::fs::read_dir(dir) else {
        return false;
    };
    let now = std::time::SystemTime::now();
    let mut files = Vec::new();
    let (mut total, mut kept) = (0u64, None);
    for e in list.flatten() {
        let (p, Ok(m)) = (e.path(), e.metadata()) else {
            continue;
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let age = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0, |d| d.as_secs());
        if name.contains(".rwkvw.tmp.") {
            if age > STALE_TEMP_SECS {
                let _ = std::fs::remove_file(&p);
            }
        } else if name.ends_with(".rwkvw") && m.is_file() {
            total += m.len();
            if p == keep {
                kept = Some(m.len());
            } else {
                files.push((m.modified().ok(), m.len(), p));
            }
        }
    }
    files.sort();
    for (_, len, p) in files {
        if total <= max {
            break;
        }
        if std::fs::remove_file(&p).is_ok() {
            total -= len;
        }
    }
    total > max && kept.is_some() && std::fs::remove_file(keep).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_file_leaves_a_margin_of_the_disk_free() {
        const GIB: u64 = 1 << 30;
        // 1 GiB of a 100 GiB disk, 5% of a small one; nothing when less is free.
        assert_eq!(room_left(50 * GIB, 100 * GIB), 49 * GIB);
        assert_eq!(room_left(3 * GIB, 10 * GIB), 3 * GIB - GIB / 2);
        assert_eq!(room_left(GIB / 4, 10 * GIB), 0);
    }

    #[test]
    fn eviction_removes_the_oldest_files_first() {
        let dir = std::env::temp_dir().join(format!("rwkv-wc-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(1000);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.join(format!("{name}.rwkvw"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64 * 10))
                .unwrap();
        }
        // "a" is the oldest but kept (just written); "b" goes first, then "c" is enough.
        assert!(!evict(&dir, &dir.join("a.rwkvw"), 200));
        assert!(dir.join("a.rwkvw").exists());
        assert!(!dir.join("b.rwkvw").exists());
        assert!(dir.join("c.rwkvw").exists());
        // A limit under the kept file alone removes it too, last.
        assert!(evict(&dir, &dir.join("a.rwkvw"), 50));
        assert!(!dir.join("a.rwkvw").exists() && !dir.join("c.rwkvw").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
