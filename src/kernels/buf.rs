//! [`AlignedBuf`]: the 64-byte aligned, huge-page backed buffers weight panels live in.

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
        }
    }

    fn ptr_mut(&mut self) -> *mut u8 {
        match &mut self.store {
            Store::Heap(v) => v.as_mut_ptr() as *mut u8,
            // SAFETY: as in `ptr`.
            Store::Arena { arena, offset } => unsafe { arena.base.add(*offset) },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr()` starts `len` initialised bytes (zeroed at creation: a `Line` vector
        // or an anonymous map) that only `self` reaches, borrowed for the slice's lifetime.
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
}
