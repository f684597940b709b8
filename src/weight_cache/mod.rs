//! The weight cache: a model's packed weights, kept in a file in the cache directory and
//! memory-mapped read-only by later runs, so that a second start costs a map and a check
//! instead of a conversion, and concurrent processes share the same pages.
//!
//! One file per checkpoint path, weight format and instruction set
//! (`<cache>/weights/<hash>.rwkvw`; another build of rwkv-cli finds it stale and replaces it). A load that finds no file records every
//! packed matrix, table and small vector it reads (by full tensor name and kind) into a
//! temporary file beside it, and renames that over the name once the model is whole.
//! Concurrent first runs each write their own and the last rename wins, every one of them
//! valid. The file is not synced: one a crash left incomplete fails its checksums below.
//!
//! A first load packs each large matrix and table straight into the file: a region of it,
//! its blocks allocated first ([`Session::reserve`]) and mapped, is filled on all threads
//! through the file in whole 2 MiB blocks ([`AlignedBuf::fill_pieces`]), then checksummed and
//! sealed read-only ([`Session::put_packed`]), and the model runs from those pages. So the
//! first run writes every byte once, from small per-thread buffers (a 1.5B model in f32, 6 GB,
//! packed into memory and then written took 4× as long), and the pages it wrote are the ones a
//! second process maps, as huge pages. Small tensors are staged and written.
//!
//! A load that finds the file maps it and trusts nothing before checking: the header, the
//! key (the checkpoint's canonical path, size, modification time, inode and
//! [`Checkpoint::fingerprint`], the format, the CPU features the kernels use, the packing
//! layout, the crate version and the executable's size and time) and an xxh3 hash of every
//! 16 MiB of data. A stale or damaged file is reported, rebuilt and replaced; it is never
//! used. A file that cannot be written (disk full, unwritable directory) is reported and the
//! run goes on without it.
//!
//! The file is mapped at a 2 MiB-aligned address ([`FileMap`]), so the kernel may map its
//! whole 2 MiB blocks with huge pages; large tensors start on a page, small ones on 64 bytes.
//!
//! The cache is bounded: after a file is written, the least recently used files (the
//! modification time, refreshed on every hit) are removed until the directory holds at most
//! the limit; a model larger than the limit is not cached.

mod read;
mod writer;

use crate::checkpoint::Checkpoint;
use crate::format::{self, Format};
use crate::kernels::{AlignedBuf, FileMap};
use crate::ops::{Linear, RowTable};
use read::read;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use writer::Writer;
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
                    // A limit lowered since the last write holds from this run on.
                    if writer::evict(dir, &path, settings.max_bytes) {
                        warnings.push(format!(
                            "weight cache file {} is larger than the cache's limit ({} bytes); \
                             removed (this run still reads it)",
                            path.display(),
                            settings.max_bytes
                        ));
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

    /// A region of `len` zero bytes in the file being written, for a large matrix or table
    /// to be packed straight into with [`AlignedBuf::fill_pieces`] (then given to
    /// [`Session::put_packed`]): its bytes are written once, into the file's pages, where
    /// packing into memory of its own and then writing would zero and copy every page (a 1.5B
    /// model's 6 GB in f32 took 4× as long).
    /// `None` when no file is being written, for small tensors, and where the file system
    /// cannot reserve the space or map the file (then the bytes are written as before).
    pub fn reserve(&self, len: usize) -> Option<AlignedBuf> {
        if len < HUGE {
            return None;
        }
        let mut mode = self.lock();
        let Mode::Writing { writer, .. } = &mut *mode else {
            return None;
        };
        match writer.reserve(len) {
            Ok(buf) => buf,
            Err(e) => {
                self.warn(format!("{e}; running without the weight cache"));
                *mode = Mode::Failed;
                None
            }
        }
    }

    /// Records entry `key` with its packed bytes `buf`: a region from [`Session::reserve`]
    /// is checksummed and sealed read-only in place; other bytes are copied into the file.
    pub fn put_packed(&self, key: &str, dims: [usize; 2], format: Format, buf: &AlignedBuf) {
        let Some(map) = buf.writable_map() else {
            return self.put(key, dims, format, buf.bytes());
        };
        let hashes = segment_hashes(buf.bytes());
        map.seal();
        let mut mode = self.lock();
        let Mode::Writing { writer, .. } = &mut *mode else {
            return;
        };
        if let Err(e) = writer.adopt(key, dims, format, map, hashes) {
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
    // The build is not in the name: a new build's file replaces the old one's (found stale)
    // instead of piling up beside it, one per build, until the size limit.
    let name = format!("{}\0{}\0{isa}", path.display(), format.name());
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

/// The xxh3 hash of every [`SEGMENT`] of `bytes`, computed on all threads.
fn segment_hashes(bytes: &[u8]) -> Vec<u64> {
    let n = bytes.len().div_ceil(SEGMENT);
    let hashes: Vec<std::sync::atomic::AtomicU64> = (0..n)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    crate::ops::pool::run(n, &|i| {
        let end = bytes.len().min((i + 1) * SEGMENT);
        let h = xxh3_64(&bytes[i * SEGMENT..end]);
        hashes[i].store(h, std::sync::atomic::Ordering::Relaxed);
    });
    hashes.into_iter().map(|h| h.into_inner()).collect()
}
