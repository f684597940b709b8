//! [`AlignedBuf`]: the 64-byte aligned, huge-page backed buffers weight panels live in, and
//! [`FileMap`], the read-only file mapping the weight cache serves them from.

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
/// A buffer may also be a read-only piece of a [`FileMap`] (the weight cache's file, shared
/// by every process that maps it): reading it reads the file's pages; the `_mut` views first
/// turn it into a private copy, so a mapped file is never written.
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
    /// A read-only piece of a file mapping (the weight cache): shared with every other
    /// process that maps the same file. Never written: the `_mut` views copy it first.
    Mapped {
        map: std::sync::Arc<FileMap>,
        offset: usize,
    },
}

/// A whole file mapped read-only and shared (`MAP_SHARED`, `PROT_READ`), at an address
/// aligned to 2 MiB, so that data at 2 MiB-aligned file offsets may be mapped with huge pages
/// where the page cache holds them in large folios. Unmapped when the last
/// [`AlignedBuf`] on it is dropped.
pub struct FileMap {
    base: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only for its whole life (PROT_READ) and owned by this value:
// any number of threads may read it.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps the first `len` bytes of `file` (which must be at least that long). With
    /// `populate`, huge pages are asked for and every page is read in and mapped now (one
    /// system call instead of a fault per page; the kernel reads a file it has to fetch in
    /// huge-page-sized pieces once asked for huge pages).
    #[cfg(unix)]
    pub fn new(file: &std::fs::File, len: usize, populate: bool) -> std::io::Result<Self> {
        use std::os::unix::io::AsRawFd;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        let err = std::io::Error::last_os_error;
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
        let start = reserved as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let flags = libc::MAP_SHARED | libc::MAP_FIXED;
        // SAFETY: `aligned .. aligned + len` lies inside the reservation made above, which this
        // function owns; MAP_FIXED replaces that part of it with the file.
        let p = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len,
                libc::PROT_READ,
                flags,
                file.as_raw_fd(),
                0,
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
        };
        if populate {
            map.populate();
        }
        Ok(map)
    }

    #[cfg(not(unix))]
    pub fn new(_file: &std::fs::File, _len: usize, _populate: bool) -> std::io::Result<Self> {
        Err(std::io::Error::other(
            "read-only file maps need a Unix system",
        ))
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `base` starts `len` mapped, readable bytes that live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }

    /// Huge pages, then every page read in and mapped (hints: a refusal changes only speed).
    #[cfg(unix)]
    fn populate(&self) {
        #[cfg(target_os = "linux")]
        // SAFETY: advice over this value's own mapping; it changes no contents.
        unsafe {
            let p = self.base as *mut libc::c_void;
            libc::madvise(p, self.len, libc::MADV_HUGEPAGE);
            // MADV_POPULATE_READ (Linux 5.14); an older kernel refuses it, and the first reads
            // fault the pages in instead.
            libc::madvise(p, self.len, 22);
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
    /// when the range is outside the mapping or `offset` is not a multiple of 64.
    pub fn mapped(map: std::sync::Arc<FileMap>, offset: usize, len: usize) -> Option<Self> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= map.len);
        if !inside || !offset.is_multiple_of(64) {
            return None;
        }
        Some(Self {
            store: Store::Mapped { map, offset },
            len,
        })
    }

    /// Whether the bytes are a shared read-only file mapping (the weight cache's).
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped { .. })
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
        if let Store::Mapped { .. } = self.store {
            // A file mapping is never written: the buffer becomes a private copy first.
            let mut copy = Self::zeroed(self.len);
            copy.bytes_mut().copy_from_slice(self.bytes());
            *self = copy;
        }
        match &mut self.store {
            Store::Heap(v) => v.as_mut_ptr() as *mut u8,
            // SAFETY: as in `ptr`.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
            Store::Mapped { .. } => unreachable!("copied above"),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr()` starts `len` initialised bytes (zeroed at creation: a `Line` vector
        // or an anonymous map) that only `self` reaches, borrowed for the slice's lifetime; or
        // `len` bytes of a read-only file map that no one writes, alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len) }
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
}
