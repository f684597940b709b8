//! The weight cache: a model's packed weights, kept in a file in the cache directory and
//! memory-mapped read-only by later runs, so that a second start costs a map and a check
//! instead of a conversion, and concurrent processes share the same pages.
//!
//! One file per checkpoint path, weight format, instruction set, crate version and
//! executable (`<cache>/weights/<hash>.rwkvw`). A load that finds no file records every
//! packed matrix, table and small vector it reads (by full tensor name and kind) into a
//! temporary file beside it, and renames that over the name once the model is whole (not synced: a
//! file a crash left incomplete fails its checksums below): concurrent first runs each write their own and the last rename wins, every one of
//! them valid. A load that finds the file maps it and trusts nothing before checking: the
//! header, the key (the checkpoint's canonical path, size, modification time, inode and
//! [`Checkpoint::fingerprint`], the format, the CPU features the kernels use, the packing
//! layout, the crate version and the executable's size and time) and an xxh3 hash of every
//! 16 MiB of data. A stale or damaged file is reported, rebuilt and replaced; it is never
//! used. A file that cannot be written (disk full, unwritable directory) is reported and the
//! run goes on without it.
//!
//! Large tensors lie at 2 MiB-aligned offsets and the file is mapped at a 2 MiB-aligned
//! address ([`FileMap`]), so the kernel may map them with huge pages.
//!
//! The cache is bounded: after a file is written, the least recently used files (the
//! modification time, refreshed on every hit) are removed until the directory holds at most
//! the limit; a model larger than the limit is not cached.

use crate::checkpoint::Checkpoint;
use crate::format::{self, Format};
use crate::kernels::{AlignedBuf, FileMap};
use crate::ops::{Linear, RowTable};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_64;

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"RWKVWC\x00\x01";
/// The version of this file layout; part of the key.
const LAYOUT: u32 = 1;
/// The header's size: the data start on the next page.
const HEADER: usize = 4096;
/// Data is hashed in pieces of this size (and checked on all threads).
const SEGMENT: usize = 16 << 20;
/// Tensors of this size and more start at a multiple of it (huge pages); others at 64 bytes.
const HUGE: usize = 2 << 20;
/// Temporary files of crashed writers older than this are removed by the next writer.
const STALE_TEMP_SECS: u64 = 3600;

/// Where the cache lives and how large it may grow; `dir: None` turns it off.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
}

impl Settings {
    /// Off: a load neither reads nor writes a cache file.
    pub fn off() -> Self {
        Self {
            dir: None,
            max_bytes: 0,
        }
    }

    /// The default: `weights` in the cache directory (as the embedded model's, see
    /// [`crate::default_model::cache_dir`]), bounded by `max_bytes` (else [`default_max_bytes`]).
    /// A limit of 0 turns the cache off.
    pub fn default_with(max_bytes: Option<u64>) -> Self {
        let max_bytes = max_bytes.unwrap_or_else(default_max_bytes);
        if max_bytes == 0 {
            return Self::off();
        }
        Self {
            dir: crate::default_model::cache_dir().map(|d| d.join("weights")),
            max_bytes,
        }
    }
}

/// The default size limit: twice the machine's memory, at most 64 GiB.
pub fn default_max_bytes() -> u64 {
    const CAP: u64 = 64 << 30;
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions; a failure returns -1, handled below.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return (2 * pages as u64 * size as u64).min(CAP);
        }
    }
    CAP
}

/// How a load used the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No cache (`--no-weight-cache`, a limit of 0, or no cache directory).
    Off,
    /// The weights came from a valid cache file.
    Hit,
    /// There was no file: the weights were converted and the file written.
    Written,
    /// The file was stale or damaged: the weights were converted and the file replaced.
    Rebuilt,
    /// The weights were converted but the file could not be written (see the warnings).
    NotWritten,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Off => "off",
            Status::Hit => "hit",
            Status::Written => "written",
            Status::Rebuilt => "rebuilt",
            Status::NotWritten => "not written",
        }
    }
}

/// What a load did with the cache: its status, the file, and one-line warnings to show.
#[derive(Clone, Debug)]
pub struct Report {
    pub status: Status,
    pub path: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// One record of the file's index.
#[derive(Clone, Debug)]
struct Entry {
    offset: usize,
    len: usize,
    dims: [usize; 2],
    format: String,
}

/// A load's use of the cache: serving from a checked mapping, or recording into a new file.
pub struct Session {
    inner: Mutex<Mode>,
    path: Option<PathBuf>,
    warnings: Mutex<Vec<String>>,
}

enum Mode {
    Off,
    Reading {
        map: Arc<FileMap>,
        entries: HashMap<String, Entry>,
    },
    Writing {
        writer: Box<Writer>,
        rebuilding: bool,
    },
    /// Writing failed part way: the warning is recorded, the load goes on.
    Failed,
}

impl Session {
    /// No cache.
    pub fn off() -> Self {
        Self {
            inner: Mutex::new(Mode::Off),
            path: None,
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// The cache for `ckpt` in `format`: a checked mapping of a valid file, or a writer for a
    /// new one. Never fails: what goes wrong becomes a warning and the load runs uncached.
    pub fn open(settings: &Settings, ckpt: &Checkpoint, format: Format) -> Self {
        let Some(dir) = &settings.dir else {
            return Self::off();
        };
        let mut warnings = Vec::new();
        let key = match key(ckpt, format) {
            Ok(k) => k,
            Err(e) => {
                warnings.push(format!("weight cache not used: {e:#}"));
                return Self {
                    inner: Mutex::new(Mode::Failed),
                    path: None,
                    warnings: Mutex::new(warnings),
                };
            }
        };
        let path = dir.join(format!("{:016x}.rwkvw", xxh3_64(key.name.as_bytes())));
        let mut rebuilding = false;
        if path.exists() {
            match read(&path, &key.full) {
                Ok((map, entries)) => {
                    // Recently used: the eviction order.
                    if let Ok(f) = std::fs::File::open(&path) {
                        let _ = f.set_modified(std::time::SystemTime::now());
                    }
                    return Self {
                        inner: Mutex::new(Mode::Reading { map, entries }),
                        path: Some(path),
                        warnings: Mutex::new(warnings),
                    };
                }
                Err(why) => {
                    warnings.push(format!(
                        "weight cache file {} is {why}; rebuilding it",
                        path.display()
                    ));
                    rebuilding = true;
                }
            }
        }
        let mode = match Writer::create(dir, &path, key.full, settings.max_bytes) {
            Ok(w) => Mode::Writing {
                writer: Box::new(w),
                rebuilding,
            },
            Err(e) => {
                warnings.push(format!(
                    "cannot write the weight cache in {}: {e}; running without it",
                    dir.display()
                ));
                Mode::Failed
            }
        };
        Self {
            inner: Mutex::new(mode),
            path: Some(path),
            warnings: Mutex::new(warnings),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mapped bytes of entry `key`, when serving from a file and it holds that entry with
    /// these dimensions and format.
    fn mapped(&self, key: &str, dims: [usize; 2], format: Format) -> Option<AlignedBuf> {
        let Mode::Reading { map, entries } = &*self.lock() else {
            return None;
        };
        let e = entries.get(key)?;
        if e.dims != dims || e.format != format.name() {
            return None;
        }
        AlignedBuf::mapped(map.clone(), e.offset, e.len)
    }

    /// Matrix `key` (out × in, packed in `format`) from the file.
    pub fn linear(&self, key: &str, out: usize, inp: usize, format: Format) -> Option<Linear> {
        let buf = self.mapped(key, [out, inp], format)?;
        Linear::from_packed(out, inp, format, buf).ok()
    }

    /// Table `key` (rows × cols, encoded in `format`) from the file.
    pub fn table(&self, key: &str, rows: usize, cols: usize, format: Format) -> Option<RowTable> {
        let buf = self.mapped(key, [rows, cols], format)?;
        RowTable::from_encoded(rows, cols, format, buf).ok()
    }

    /// Vector `key` from the file (copied: vectors are small).
    pub fn f32s(&self, key: &str) -> Option<Vec<f32>> {
        let Mode::Reading { map, entries } = &*self.lock() else {
            return None;
        };
        let e = entries.get(key)?;
        if e.format != Format::F32.name() || e.dims[0] * e.dims[1] * 4 != e.len {
            return None;
        }
        let bytes = &map.bytes()[e.offset..e.offset + e.len];
        Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }

    /// Whether a load should record what it converts (a file is being written).
    pub fn recording(&self) -> bool {
        matches!(&*self.lock(), Mode::Writing { .. })
    }

    /// Records entry `key` for the file being written (nothing when none is).
    pub fn put(&self, key: &str, dims: [usize; 2], format: Format, bytes: &[u8]) {
        let mut mode = self.lock();
        let Mode::Writing { writer, .. } = &mut *mode else {
            return;
        };
        if let Err(e) = writer.put(key, dims, format, bytes) {
            self.warn(format!("{e}; running without the weight cache"));
            *mode = Mode::Failed;
        }
    }

    /// Records vector `key`.
    pub fn put_f32s(&self, key: &str, v: &[f32]) {
        if !self.recording() {
            return;
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.put(key, [1, v.len()], Format::F32, &bytes);
    }

    fn warn(&self, w: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
    }

    /// After a successful load: the file is completed and renamed into place (when one was
    /// being written), older files evicted down to the limit, and what happened reported.
    pub fn finish(self) -> Report {
        let mode = self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut warnings = self
            .warnings
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let status = match mode {
            Mode::Off => Status::Off,
            Mode::Reading { .. } => Status::Hit,
            Mode::Failed => Status::NotWritten,
            Mode::Writing { writer, rebuilding } => match writer.finish() {
                Ok(()) if rebuilding => Status::Rebuilt,
                Ok(()) => Status::Written,
                Err(e) => {
                    warnings.push(format!("{e}; running without the weight cache"));
                    Status::NotWritten
                }
            },
        };
        Report {
            status,
            path: self.path,
            warnings,
        }
    }
}

/// A file's key: `name` chooses its file name (what stays the same when the checkpoint is
/// touched or replaced, so that the old file is found stale and replaced), `full` must equal
/// the key stored in it.
struct Key {
    name: String,
    full: Value,
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_m: &std::fs::Metadata) -> u64 {
    0
}

/// A hash of every format's packing of a fixed matrix and encoding of a fixed row: a change
/// of panel layout or row codec changes the key even without a new version number.
fn layout_probe() -> u64 {
    let (rows, cols) = (40, 64);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
        .collect();
    let mut h = Vec::new();
    for f in Format::ALL {
        h.extend_from_slice(format::pack(&w, rows, cols, f).bytes());
        (f.traits().rows.encode)(&w[..cols], &mut h);
    }
    xxh3_64(&h)
}

fn key(ckpt: &Checkpoint, format: Format) -> anyhow::Result<Key> {
    use anyhow::Context;
    let path = std::fs::canonicalize(&ckpt.path)
        .with_context(|| format!("cannot resolve {}", ckpt.path.display()))?;
    let m = std::fs::metadata(&path)?;
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|e| format!("{}:{}", e.len(), mtime_ns(&e)))
        .unwrap_or_default();
    let isa = format!(
        "{:?}{}",
        crate::kernels::isa(),
        if crate::kernels::has_vnni() {
            "+vnni"
        } else {
            ""
        }
    );
    let version = env!("CARGO_PKG_VERSION");
    let name = format!(
        "{}\0{}\0{isa}\0{version}\0{exe}",
        path.display(),
        format.name()
    );
    let full = json!({
        "layout": LAYOUT,
        "packing": layout_probe(),
        "crate": version,
        "exe": exe,
        "isa": isa,
        "format": format.name(),
        "checkpoint": path.display().to_string(),
        "size": m.len(),
        "mtime_ns": mtime_ns(&m).to_string(),
        "inode": inode(&m),
        "fingerprint": ckpt.fingerprint()?,
    });
    Ok(Key { name, full })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Maps and checks the file at `path` against `key`: the mapping and its index, or why it
/// cannot be used ("stale (…)" or "damaged (…)").
fn read(path: &Path, key: &Value) -> Result<(Arc<FileMap>, HashMap<String, Entry>), String> {
    let damaged = |why: &str| format!("damaged ({why})");
    let file = std::fs::File::open(path).map_err(|e| format!("unreadable ({e})"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("unreadable ({e})"))?
        .len() as usize;
    if len < HEADER {
        return Err(damaged("shorter than its header"));
    }
    // The header alone first: a stale file is not read whole.
    let map = FileMap::new(&file, len, false).map_err(|e| format!("unreadable ({e})"))?;
    let b = map.bytes();
    if &b[..8] != MAGIC {
        return Err(damaged("not a weight cache file of this layout"));
    }
    if xxh3_64(&b[..40]) != u64_at(b, 40) {
        return Err(damaged("header checksum"));
    }
    let (total, at, n, index_hash) = (
        u64_at(b, 8) as usize,
        u64_at(b, 16) as usize,
        u64_at(b, 24) as usize,
        u64_at(b, 32),
    );
    if total != len {
        return Err(damaged(&format!("{len} bytes, its header says {total}")));
    }
    let index = at
        .checked_add(n)
        .filter(|&end| at >= HEADER && end <= len)
        .map(|end| &b[at..end])
        .ok_or_else(|| damaged("index outside the file"))?;
    if xxh3_64(index) != index_hash {
        return Err(damaged("index checksum"));
    }
    let index: Value = serde_json::from_slice(index).map_err(|_| damaged("index"))?;
    if index.get("key") != Some(key) {
        return Err(stale_reason(index.get("key"), key));
    }
    let mut entries = HashMap::new();
    let mut segments: Vec<(usize, usize, u64)> = Vec::new();
    let Some(list) = index.get("entries").and_then(Value::as_object) else {
        return Err(damaged("index"));
    };
    for (k, e) in list {
        let num = |f: &str| e.get(f).and_then(Value::as_u64).map(|v| v as usize);
        let dims = e.get("dims").and_then(Value::as_array);
        let parsed = (|| {
            let (offset, len) = (num("offset")?, num("len")?);
            let dims = dims?;
            let dims = [
                dims.first()?.as_u64()? as usize,
                dims.get(1)?.as_u64()? as usize,
            ];
            let format = e.get("format")?.as_str()?.to_string();
            let hashes = e.get("hashes")?.as_array()?;
            Some((offset, len, dims, format, hashes))
        })();
        let Some((offset, elen, dims, format, hashes)) = parsed else {
            return Err(damaged("index entry"));
        };
        let inside = offset
            .checked_add(elen)
            .is_some_and(|end| offset >= HEADER && end <= at && offset.is_multiple_of(64));
        if !inside || hashes.len() != elen.div_ceil(SEGMENT) {
            return Err(damaged("index entry"));
        }
        for (i, h) in hashes.iter().enumerate() {
            let h = h.as_u64().ok_or_else(|| damaged("index entry"))?;
            let s = offset + i * SEGMENT;
            segments.push((s, SEGMENT.min(offset + elen - s), h));
        }
        entries.insert(
            k.clone(),
            Entry {
                offset,
                len: elen,
                dims,
                format,
            },
        );
    }
    drop(map);
    // The key matches: map the whole file with its pages read in at once, and check every
    // byte of data on all threads.
    let map = FileMap::new(&file, len, true).map_err(|e| format!("unreadable ({e})"))?;
    let bad = std::sync::atomic::AtomicBool::new(false);
    let bytes = map.bytes();
    crate::ops::pool::run(segments.len(), &|i| {
        let (s, n, h) = segments[i];
        if xxh3_64(&bytes[s..s + n]) != h {
            bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if bad.into_inner() {
        return Err(damaged("data checksum"));
    }
    Ok((Arc::new(map), entries))
}

/// "stale (…)", naming the first key field that differs.
fn stale_reason(found: Option<&Value>, want: &Value) -> String {
    let why = match (found.and_then(Value::as_object), want.as_object()) {
        (Some(f), Some(w)) => w
            .iter()
            .find(|(k, v)| f.get(*k) != Some(*v))
            .map(|(k, _)| match k.as_str() {
                "size" | "mtime_ns" | "inode" | "fingerprint" => "the checkpoint changed",
                "exe" | "crate" | "packing" | "layout" => "written by another build",
                "isa" => "for another CPU",
                _ => "for another checkpoint or format",
            })
            .unwrap_or("key differs"),
        _ => "key missing",
    };
    format!("stale ({why})")
}

/// A cache file being written: a temporary file beside its final name.
struct Writer {
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
    file: std::fs::File,
    /// Bytes not written yet, from file offset `flushed` (a multiple of 2 MiB) on: the file is
    /// written in whole, aligned 2 MiB pieces, which the page cache keeps as huge folios (and a
    /// later run can map with huge pages).
    staged: Vec<u8>,
    flushed: usize,
    max: u64,
    key: Value,
    entries: serde_json::Map<String, Value>,
    done: bool,
}

impl Writer {
    fn create(dir: &Path, dest: &Path, key: Value, max: u64) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
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
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            dir: dir.to_path_buf(),
            file,
            // The header's page, written last.
            staged: vec![0; HEADER],
            flushed: 0,
            max,
            key,
            entries: serde_json::Map::new(),
            done: false,
        })
    }

    fn io_error(&self, e: std::io::Error) -> String {
        format!("cannot write {}: {e}", self.tmp.display())
    }

    fn put(
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
        if (offset + bytes.len()) as u64 > self.max {
            return Err(format!(
                "the model's weights exceed the weight cache's limit of {} MiB",
                self.max >> 20
            ));
        }
        self.staged.resize(offset - self.flushed, 0);
        if align == HUGE {
            // The staged bytes end on a 2 MiB boundary: written, then the tensor's whole 2 MiB
            // pieces straight from its buffer, and its tail staged.
            self.flush(false).map_err(|e| self.io_error(e))?;
            let direct = bytes.len() / HUGE * HUGE;
            self.write_at(offset, &bytes[..direct])
                .map_err(|e| self.io_error(e))?;
            self.flushed = offset + direct;
            self.staged.extend_from_slice(&bytes[direct..]);
        } else {
            self.staged.extend_from_slice(bytes);
            self.flush(false).map_err(|e| self.io_error(e))?;
        }
        let hashes: Vec<u64> = bytes.chunks(SEGMENT).map(xxh3_64).collect();
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
    fn finish(mut self) -> Result<(), String> {
        let index = serde_json::to_vec(&json!({
            "key": self.key,
            "entries": Value::Object(std::mem::take(&mut self.entries)),
        }))
        .map_err(|e| format!("cannot write the weight cache index: {e}"))?;
        let at = (self.flushed + self.staged.len()).next_multiple_of(64);
        let total = at + index.len();
        if total as u64 > self.max {
            return Err(format!(
                "the model's weights exceed the weight cache's limit of {} MiB",
                self.max >> 20
            ));
        }
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
            w.write_at(0, &header)
        };
        write(&mut self).map_err(|e| self.io_error(e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.io_error(e))?;
        self.done = true;
        evict(&self.dir, &self.dest, self.max);
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

/// Removes the least recently used cache files (not `keep`) until `dir` holds at most `max`
/// bytes of them, and temporary files that crashed writers left long ago.
fn evict(dir: &Path, keep: &Path, max: u64) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut files = Vec::new();
    let mut total = 0u64;
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
            if p != keep {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_reasons_name_what_changed() {
        let want = json!({"exe": "1", "size": 2});
        assert_eq!(
            stale_reason(Some(&json!({"exe": "1", "size": 3})), &want),
            "stale (the checkpoint changed)"
        );
        assert_eq!(
            stale_reason(Some(&json!({"exe": "0", "size": 2})), &want),
            "stale (written by another build)"
        );
        assert_eq!(stale_reason(None, &want), "stale (key missing)");
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
        evict(&dir, &dir.join("a.rwkvw"), 200);
        assert!(dir.join("a.rwkvw").exists());
        assert!(!dir.join("b.rwkvw").exists());
        assert!(dir.join("c.rwkvw").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
