//! [`AlignedBuf`]: the 64-byte aligned, huge-page backed buffers weight panels live in, and
//! [`FileMap`], the file mappings the weight cache serves them from (read-only) and packs a
//! first load's panels into (writable until sealed).

/// One cache line; the unit of small [`AlignedBuf`]s.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A zero-initialised byte buffer aligned to 64 bytes, viewed as f32, u16 or bytes.
///
/// Buffers live in anonymous memory maps ("arenas") backed by transparent huge pages where
/// the kernel allows: streaming a weight matrix through 4 KiB pages costs a TLB miss every
/// 4 KiB and stops the hardware prefetcher at every page boundary (measured here: 20 GB/s
/// through small pages, 33 GB/s through huge ones). Buffers of 16 MiB and more get an arena
/// of their own; smaller ones are laid back to back in shared 64 MiB arenas, so that no matrix
/// ends in a partly used page of its own. Maps are zero until written and cost resident
/// memory only as they are filled; an arena is unmapped when its last buffer is dropped.
///
/// A buffer may also be a piece of a [`FileMap`] (the weight cache's file, shared by every
/// process that maps it): reading it reads the file's pages. A sealed (read-only) map is never
/// written: the `_mut` views first turn the buffer into a private copy. A writable map (a
/// region of a cache file being written, see [`AlignedBuf::in_file`]) is written in place.
pub struct AlignedBuf {
    store: Store,
    len: usize,
}

enum Store {
    Heap(Vec<Line>),
    Arena {
        arena: std::sync::Arc<Arena>,
        offset: usize,
    },
    /// A piece of a file mapping (the weight cache): shared with every other process that
    /// maps the same file. Written in place only while the map is writable (then this buffer
    /// is its only one); once sealed, the `_mut` views copy it first.
    Mapped {
        map: std::sync::Arc<FileMap>,
        offset: usize,
    },
}

/// A file, or a region of one, mapped shared (`MAP_SHARED`) at an address that is aligned to
/// 2 MiB where the file offset is, so that the file's whole 2 MiB blocks may be mapped with
/// huge pages where the page cache holds them in large folios. Read-only ([`FileMap::new`]), or writable until
/// [`FileMap::seal`]ed ([`FileMap::writable`]). Unmapped when the last [`AlignedBuf`] on it
/// is dropped.
pub struct FileMap {
    base: *const u8,
    len: usize,
    /// Where the mapping starts in the file.
    file_offset: usize,
    /// Writable (`PROT_WRITE`) until sealed.
    writable: std::sync::atomic::AtomicBool,
    /// The file, while the map is writable: [`AlignedBuf::fill_pieces`] writes through it.
    file: std::sync::RwLock<Option<std::fs::File>>,
}

// SAFETY: a read-only map (PROT_READ) may be read by any number of threads. A writable one is
// reached only through the single `AlignedBuf` that `AlignedBuf::in_file` wraps it in (written
// through `&mut`, read through `&`, as a `Vec<u8>`), until it is sealed read-only.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps the first `len` bytes of `file` (which must be at least that long) read-only.
    /// With `populate`, huge pages are asked for and every page is read in and mapped now (one
    /// system call instead of a fault per page; the kernel reads a file it has to fetch in
    /// huge-page-sized pieces once asked for huge pages).
    #[cfg(unix)]
    pub fn new(file: &std::fs::File, len: usize, populate: bool) -> std::io::Result<Self> {
        let map = Self::map(file, 0, len, false)?;
        if populate {
            map.populate();
        }
        Ok(map)
    }

    /// Maps `len` bytes of `file` from `offset` (a multiple of the page size; the file must
    /// already be that long, its blocks allocated — a write to a hole the disk cannot fill
    /// would kill the process) readable and writable, shared: what is written goes to the
    /// file's page cache, with no copy of its own. Wrapped by [`AlignedBuf::in_file`].
    #[cfg(unix)]
    pub fn writable(file: &std::fs::File, offset: usize, len: usize) -> std::io::Result<Self> {
        Self::map(file, offset, len, true)
    }

    #[cfg(unix)]
    fn map(
        file: &std::fs::File,
        offset: usize,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        use std::os::unix::io::AsRawFd;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        let err = std::io::Error::last_os_error;
        // A writable map keeps a handle on its file for `AlignedBuf::fill_pieces`.
        let handle = if writable {
            Some(file.try_clone()?)
        } else {
            None
        };
        // Reserve `len + 2 MiB` of address space, then map the file over its first aligned
        // address and give the rest back.
        let span = len + HUGE_PAGE;
        // SAFETY: a fresh private reservation with no access; the kernel picks the address.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(err());
        }
        // The first address that is to a 2 MiB boundary what `offset` is to one: every whole,
        // aligned 2 MiB block of the file in the map then lies at a 2 MiB-aligned address.
        let start = reserved as usize;
        let aligned = start + (offset % HUGE_PAGE + HUGE_PAGE - start % HUGE_PAGE) % HUGE_PAGE;
        let flags = libc::MAP_SHARED | libc::MAP_FIXED;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: `aligned .. aligned + len` lies inside the reservation made above, which this
        // function owns; MAP_FIXED replaces that part of it with the file.
        let p = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                prot,
                flags,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        let mapped_end = (aligned + len).next_multiple_of(4096);
        // SAFETY: the head and tail of the reservation around the file mapping are ours and
        // unused (page-aligned: the reservation and `aligned` are, and `mapped_end` is rounded).
        unsafe {
            if p == libc::MAP_FAILED {
                let e = err();
                libc::munmap(reserved, span);
                return Err(e);
            }
            if aligned > start {
                libc::munmap(reserved, aligned - start);
            }
            if start + span > mapped_end {
                libc::munmap(mapped_end as *mut libc::c_void, start + span - mapped_end);
            }
        }
        let map = Self {
            base: aligned as *const u8,
            len,
            file_offset: offset,
            writable: std::sync::atomic::AtomicBool::new(writable),
            file: std::sync::RwLock::new(handle),
        };
        if writable {
            map.advise_huge();
        }
        Ok(map)
    }

    #[cfg(not(unix))]
    pub fn new(_file: &std::fs::File, _len: usize, _populate: bool) -> std::io::Result<Self> {
        Err(std::io::Error::other("file maps need a Unix system"))
    }

    #[cfg(not(unix))]
    pub fn writable(_file: &std::fs::File, _offset: usize, _len: usize) -> std::io::Result<Self> {
        Err(std::io::Error::other("file maps need a Unix system"))
    }

    /// Where the mapping starts in the file.
    pub fn file_offset(&self) -> usize {
        self.file_offset
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the map may still be written (see [`FileMap::seal`]).
    pub fn is_writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Writes `bytes` at `at` in the map's region of the file (`pwrite`), while it is writable.
    pub fn write_at(&self, at: usize, bytes: &[u8]) -> std::io::Result<()> {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return Err(std::io::Error::other("a write outside the mapped region"));
        }
        let file = self.file.read().unwrap_or_else(|e| e.into_inner());
        let Some(file) = file.as_ref() else {
            return Err(std::io::Error::other("a write to a sealed map"));
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(bytes, (self.file_offset + at) as u64)
        }
        #[cfg(not(unix))]
        {
            let _ = file;
            Err(std::io::Error::other("file maps need a Unix system"))
        }
    }

    /// Makes the map read-only for good: from now on a buffer on it copies before a write,
    /// and a stray write through an old pointer faults instead of changing the file.
    pub fn seal(&self) {
        self.writable
            .store(false, std::sync::atomic::Ordering::Release);
        self.file.write().unwrap_or_else(|e| e.into_inner()).take();
        #[cfg(unix)]
        // SAFETY: the mapping made in `new`/`writable`, still mapped; only its protection changes.
        unsafe {
            libc::mprotect(self.base as *mut libc::c_void, self.len, libc::PROT_READ);
        }
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `base` starts `len` mapped, readable bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// Asks for huge pages (a hint: a refusal changes only speed).
    #[cfg(unix)]
    fn advise_huge(&self) {
        #[cfg(target_os = "linux")]
        // SAFETY: advice over this value's own mapping; it changes no contents.
        unsafe {
            libc::madvise(
                self.base as *mut libc::c_void,
                self.len,
                libc::MADV_HUGEPAGE,
            );
        }
    }

    /// Huge pages, then every page read in and mapped (hints: a refusal changes only speed).
    #[cfg(unix)]
    fn populate(&self) {
        self.advise_huge();
        #[cfg(target_os = "linux")]
        // SAFETY: advice over this value's own mapping; it changes no contents.
        unsafe {
            // MADV_POPULATE_READ (Linux 5.14); an older kernel refuses it, and the first reads
            // fault the pages in instead.
            libc::madvise(self.base as *mut libc::c_void, self.len, 22);
        }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: the mapping made in `new`, unmapped once, when no buffer refers to it.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// One anonymous mapping, aligned to 2 MiB, handed out in disjoint pieces.
struct Arena {
    /// Keeps the mapping alive; its memory is reached only through `base`.
    _map: memmap2::MmapMut,
    base: *mut u8,
    cap: usize,
}

// SAFETY: the arena's memory is only reached through `AlignedBuf`s, each owning a disjoint
// range of it (handed out once, under the `CURRENT` lock), and reading it through `&self`,
// writing through `&mut self` — the same rules as a `Vec<u8>` per buffer.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    fn new(bytes: usize) -> Option<Self> {
        let cap = bytes.next_multiple_of(HUGE_PAGE);
        let mut map = memmap2::MmapMut::map_anon(cap + HUGE_PAGE).ok()?;
        let addr = map.as_ptr() as usize;
        let offset = addr.next_multiple_of(HUGE_PAGE) - addr;
        // A refusal (no THP on this kernel) changes only speed.
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, cap);
        // SAFETY: `offset < HUGE_PAGE`, and the map is `cap + HUGE_PAGE` bytes long.
        let base = unsafe { map.as_mut_ptr().add(offset) };
        Some(Self {
            _map: map,
            base,
            cap,
        })
    }
}

const HUGE_PAGE: usize = 2 << 20;
/// Size of a shared arena, and the size from which a buffer gets an arena of its own.
const ARENA_BYTES: usize = 64 << 20;
const OWN_ARENA_FROM: usize = 16 << 20;

/// The shared arena being filled, and how much of it is handed out.
static CURRENT: std::sync::Mutex<Option<(std::sync::Arc<Arena>, usize)>> =
    std::sync::Mutex::new(None);

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let placed = if len == 0 {
            None
        } else if len >= OWN_ARENA_FROM {
            Arena::new(len).map(|a| (std::sync::Arc::new(a), 0))
        } else {
            let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            let fits = matches!(&*cur, Some((a, used)) if used + len <= a.cap);
            if !fits {
                *cur = Arena::new(ARENA_BYTES).map(|a| (std::sync::Arc::new(a), 0));
            }
            cur.as_mut().map(|(a, used)| {
                let offset = *used;
                *used = (offset + len).next_multiple_of(64);
                (a.clone(), offset)
            })
        };
        let store = match placed {
            Some((arena, offset)) => Store::Arena { arena, offset },
            None => Store::Heap(vec![Line([0; 64]); len.div_ceil(64)]),
        };
        Self { store, len }
    }

    /// `len` bytes at `offset` of a read-only file mapping, shared rather than copied; `None`
    /// when the range is outside the mapping, `offset` is not a multiple of 64 or the map is
    /// writable.
    pub fn mapped(map: std::sync::Arc<FileMap>, offset: usize, len: usize) -> Option<Self> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= map.len);
        // A writable map has one buffer, made by `in_file`.
        if !inside || !offset.is_multiple_of(64) || map.is_writable() {
            return None;
        }
        Some(Self {
            store: Store::Mapped { map, offset },
            len,
        })
    }

    /// The whole of a fresh writable file map (see [`FileMap::writable`]): written in place,
    /// into the file, until the map is sealed. Taking the map by value makes this buffer its
    /// only one.
    pub fn in_file(map: FileMap) -> Self {
        let len = map.len;
        Self {
            store: Store::Mapped {
                map: std::sync::Arc::new(map),
                offset: 0,
            },
            len,
        }
    }

    /// Whether the bytes are a shared file mapping (the weight cache's).
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped { .. })
    }

    /// The file mapping the bytes lie in, and their offset in it.
    pub fn file_map(&self) -> Option<(&std::sync::Arc<FileMap>, usize)> {
        match &self.store {
            Store::Mapped { map, offset } => Some((map, *offset)),
            _ => None,
        }
    }

    /// The writable file map this buffer is the whole of (a region of a cache file being
    /// written, [`AlignedBuf::in_file`]), until it is sealed.
    pub fn writable_map(&self) -> Option<&std::sync::Arc<FileMap>> {
        match self.file_map() {
            Some((map, 0)) if map.is_writable() => Some(map),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ptr(&self) -> *const u8 {
        match &self.store {
            Store::Heap(v) => v.as_ptr() as *const u8,
            // SAFETY: `offset + len ≤ cap`: the range was handed out inside the arena.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
            // SAFETY: `offset + len ≤ map.len`, checked in `mapped`.
            Store::Mapped { map, offset } => unsafe { map.base.add(*offset) },
        }
    }

    fn ptr_mut(&mut self) -> *mut u8 {
        if matches!(&self.store, Store::Mapped { map, .. } if !map.is_writable()) {
            // A sealed file mapping is never written: the buffer becomes a private copy first.
            let mut copy = Self::zeroed(self.len);
            copy.bytes_mut().copy_from_slice(self.bytes());
            *self = copy;
        }
        match &mut self.store {
            Store::Heap(v) => v.as_mut_ptr() as *mut u8,
            // SAFETY: as in `ptr`.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
            // SAFETY: `offset + len ≤ map.len`; the map is writable, and this buffer its only
            // one (`in_file`), borrowed mutably.
            Store::Mapped { map, offset } => unsafe { (map.base as *mut u8).add(*offset) },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr()` starts `len` initialised bytes (zeroed at creation: a `Line` vector
        // or an anonymous map) that only `self` reaches, borrowed for the slice's lifetime; or
        // `len` bytes of a file map alive while `self` is, written (if writable) only through
        // this buffer's `&mut` views.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
    }

    /// Fills the buffer, zero until now, piece by piece on all threads: `fill(state, i, piece)`
    /// writes piece `i` (bytes `i·len .. (i + 1)·len`; the last one may be shorter), which it is
    /// given zeroed; `init` makes a thread's `state` (buffers it reuses).
    ///
    /// A region of a cache file being written (a writable [`FileMap`]) is filled through the
    /// file instead of through the map, in whole 2 MiB blocks of it (see `fill_file`).
    pub fn fill_pieces<S, E: Send>(
        &mut self,
        len: usize,
        init: impl Fn() -> S + Sync + Send,
        fill: impl Fn(&mut S, usize, &mut [u8]) -> Result<(), E> + Sync + Send,
    ) -> Result<(), E> {
        use rayon::prelude::*;
        let len = len.max(1);
        if self.len == 0 {
            return Ok(());
        }
        if let Some(map) = self.writable_map() {
            let map = map.clone();
            if Self::fill_file(&map, self.len, len, &init, &fill)? {
                return Ok(());
            }
            // A write failed: filled in memory of its own instead.
            *self = AlignedBuf::zeroed(self.len);
        }
        self.bytes_mut()
            .par_chunks_mut(len)
            .with_max_len(1)
            .enumerate()
            .try_for_each_init(init, |state, (i, piece)| fill(state, i, piece))
    }

    /// [`AlignedBuf::fill_pieces`] into a writable map's `total` bytes through its file: the
    /// region is cut into a few spans per thread, on the file's 2 MiB boundaries; each span's
    /// pieces are built in order in a buffer of the thread's and gathered into the span's 2 MiB
    /// blocks, each written with one `pwrite` (a piece that crosses into the next span is built
    /// by both). Whole aligned 2 MiB writes are what the page cache keeps as huge folios, which
    /// every later run maps with huge pages. Written through the map instead, each page of the
    /// region was faulted in first, read from a block not written yet, which the kernel fills
    /// with zeros: 65% of the CPU time of a 1.5B bf16 first start in one profile on this
    /// project's machine. `Ok(false)` if a write failed (the map's bytes are then not all
    /// written: the caller fills memory of its own instead, which the weight cache then writes
    /// as it writes small tensors, or reports that it cannot and goes on without the file).
    fn fill_file<S, E: Send>(
        map: &FileMap,
        total: usize,
        len: usize,
        init: &(impl Fn() -> S + Sync + Send),
        fill: &(impl Fn(&mut S, usize, &mut [u8]) -> Result<(), E> + Sync + Send),
    ) -> Result<bool, E> {
        use rayon::prelude::*;
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        // The region offset of the first 2 MiB boundary of the file after `x`.
        let base = map.file_offset();
        let next_block = |x: usize| ((base + x) / HUGE_PAGE + 1) * HUGE_PAGE - base;
        let span = total
            .div_ceil(2 * rayon::current_num_threads())
            .max(8 * len)
            .next_multiple_of(HUGE_PAGE);
        // Spans: the part of a block before the first boundary (if the region starts inside
        // one), then `span` bytes each from that boundary.
        let mut cuts = vec![0];
        let mut at = if base.is_multiple_of(HUGE_PAGE) {
            span
        } else {
            next_block(0)
        };
        while at < total {
            cuts.push(at);
            at += span;
        }
        cuts.push(total);
        let failed = AtomicBool::new(false);
        cuts.par_windows(2).with_max_len(1).try_for_each_init(
            || (init(), Vec::new(), Vec::with_capacity(HUGE_PAGE)),
            |(state, piece, block), w| -> Result<(), E> {
                let (start, end) = (w[0], w[1]);
                block.clear();
                let mut block_at = start;
                for i in start / len..end.div_ceil(len) {
                    let p0 = i * len;
                    piece.clear();
                    piece.resize(len.min(total - p0), 0);
                    fill(state, i, piece)?;
                    let (lo, hi) = (p0.max(start), (p0 + piece.len()).min(end));
                    let mut rest = &piece[lo - p0..hi - p0];
                    while !rest.is_empty() {
                        let block_end = next_block(block_at).min(end);
                        let take = rest.len().min(block_end - block_at - block.len());
                        block.extend_from_slice(&rest[..take]);
                        rest = &rest[take..];
                        if block_at + block.len() == block_end {
                            if !failed.load(Relaxed) && map.write_at(block_at, block).is_err() {
                                failed.store(true, Relaxed);
                            }
                            block.clear();
                            block_at = block_end;
                        }
                    }
                }
                Ok(())
            },
        )?;
        Ok(!failed.into_inner())
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        // SAFETY: as in `bytes`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut(), len) }
    }

    pub fn f32s(&self) -> &[f32] {
        // SAFETY: the start is 64-byte aligned (more than f32 needs), every bit pattern is a
        // valid f32, and `len / 4` whole f32s lie within the `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr() as *const f32, self.len / 4) }
    }

    pub fn f32s_mut(&mut self) -> &mut [f32] {
        let len = self.len;
        // SAFETY: as in `f32s`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut() as *mut f32, len / 4) }
    }

    pub fn u16s(&self) -> &[u16] {
        // SAFETY: aligned for u16, every bit pattern valid, `len / 2` u16s within `len` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr() as *const u16, self.len / 2) }
    }

    pub fn u16s_mut(&mut self) -> &mut [u16] {
        let len = self.len;
        // SAFETY: as in `u16s`, borrowed mutably and exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr_mut() as *mut u16, len / 2) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(1000);
        assert_eq!(b.bytes().as_ptr() as usize % 64, 0);
        assert_eq!(b.len(), 1000);
        assert_eq!(b.f32s().len(), 250);
        assert!(b.bytes().iter().all(|&v| v == 0));
    }

    #[test]
    fn mapped_buffers_share_the_file_and_copy_before_a_write() {
        let path = std::env::temp_dir().join(format!("rwkv-filemap-{}", std::process::id()));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let map = std::sync::Arc::new(FileMap::new(&file, data.len(), true).unwrap());
        assert_eq!(map.bytes().as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(map.bytes(), &data[..]);
        assert!(
            AlignedBuf::mapped(map.clone(), 32, 64).is_none(),
            "unaligned"
        );
        assert!(
            AlignedBuf::mapped(map.clone(), 9984, 64).is_none(),
            "past the end"
        );
        let mut b = AlignedBuf::mapped(map.clone(), 128, 256).unwrap();
        assert!(b.is_mapped());
        assert_eq!(b.bytes(), &data[128..384]);
        // A write goes to a private copy; the file and the mapping are unchanged.
        b.bytes_mut()[0] ^= 0xff;
        assert!(!b.is_mapped());
        assert_eq!(b.bytes()[0], data[128] ^ 0xff);
        assert_eq!(&b.bytes()[1..], &data[129..384]);
        assert_eq!(map.bytes(), &data[..]);
        drop((b, map));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        std::fs::remove_file(&path).unwrap();
    }

    /// A new file of `len` zero bytes at `path`, open for reading and writing.
    fn empty_file(path: &std::path::Path, len: usize) -> std::fs::File {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(len as u64).unwrap();
        file
    }

    #[test]
    fn pieces_filled_through_the_file_are_those_filled_in_memory() {
        // Regions at a page and at a 2 MiB boundary of the file, pieces that cross its 2 MiB
        // blocks and the spans (a few per thread, at least 8 pieces), a short last piece; each
        // piece's bytes tell its index and position, and come zeroed to `fill`.
        let fill = |_: &mut (), i: usize, piece: &mut [u8]| -> Result<(), String> {
            if piece.iter().any(|&v| v != 0) {
                return Err(format!("piece {i} not zeroed"));
            }
            for (j, v) in piece.iter_mut().enumerate() {
                *v = (i * 7 + j % 251) as u8 | 1;
            }
            Ok(())
        };
        for (offset, total, piece) in [
            (4096, 9 * HUGE_PAGE + 12_345, 300_000),
            (HUGE_PAGE, 5 * HUGE_PAGE, 1 << 20),
            (3 * 4096, 40_000, 4096),
        ] {
            let mut want = AlignedBuf::zeroed(total);
            want.fill_pieces(piece, || (), fill).unwrap();
            let path = std::env::temp_dir().join(format!(
                "rwkv-filemap-pieces-{}-{offset}",
                std::process::id()
            ));
            let file = empty_file(&path, offset + total);
            let mut b = AlignedBuf::in_file(FileMap::writable(&file, offset, total).unwrap());
            b.fill_pieces(piece, || (), fill).unwrap();
            assert!(b.is_mapped(), "filled through the file, not copied");
            assert!(b.bytes() == want.bytes(), "the map reads what was written");
            let on_disk = std::fs::read(&path).unwrap();
            assert!(on_disk[..offset].iter().all(|&v| v == 0), "nothing before");
            assert!(on_disk[offset..] == *want.bytes(), "offset {offset}");
            drop(b);
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_writable_map_is_written_in_place_until_sealed() {
        let path = std::env::temp_dir().join(format!("rwkv-filemap-w-{}", std::process::id()));
        let file = empty_file(&path, 3 * 4096);
        let mut b = AlignedBuf::in_file(FileMap::writable(&file, 4096, 8192).unwrap());
        let map = b.file_map().unwrap().0.clone();
        assert!(map.is_writable() && map.file_offset() == 4096);
        assert_eq!(map.bytes().as_ptr() as usize % HUGE_PAGE, 4096);
        assert!(
            AlignedBuf::mapped(map.clone(), 0, 64).is_none(),
            "one buffer only"
        );
        b.bytes_mut()
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as u8);
        map.seal();
        // Sealed: a write now goes to a private copy.
        b.bytes_mut()[0] = 0xee;
        assert!(!b.is_mapped());
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[..4096].iter().all(|&v| v == 0));
        assert!(on_disk[4096..]
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u8));
        assert_eq!(&map.bytes()[..4], &[0, 1, 2, 3]);
        drop((b, map));
        std::fs::remove_file(&path).unwrap();
    }
}
