//! The memory-bandwidth probe: how fast this machine streams memory, the ceiling of the
//! decode path.

use super::{kernels, AlignedBuf};

/// Sum of every value of `v` (a pure streaming read: one load per 64 bytes, four
/// independent accumulators), for measuring memory bandwidth.
pub fn sum_f32(v: &[f32]) -> f32 {
    // SAFETY: the table holds only kernels the CPU supports (see `super::Kernels`); reads
    // stay within `v`.
    unsafe { (kernels().sum_f32)(v) }
}

/// Measured memory bandwidth, bytes per second.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    /// Reading a buffer much larger than the caches, on every pool thread (best pass).
    pub read: f64,
    /// Copying between two such buffers, counting the bytes read and written (best pass).
    pub copy: f64,
    pub bytes: usize,
    pub threads: usize,
}

/// Measures the memory bandwidth with a short STREAM-style test: a read (sum) over `bytes`
/// and a copy of `bytes / 2` into a second buffer, each split across the rayon pool's
/// threads, `passes` times; the best pass of each is kept. The buffers are laid out like the
/// weight matrices (huge pages where the kernel allows), so the figure is the ceiling the
/// matrix–vector kernels of the decode path can reach.
pub fn measure_bandwidth(bytes: usize, passes: usize) -> Bandwidth {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let mut a = AlignedBuf::zeroed(bytes);
    // Touch every page first (and give the values something to add).
    a.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(1.0));
    let part = (a.f32s().len() / threads).max(1).next_multiple_of(16);
    let mut read = 0.0f64;
    let mut sink = 0.0f32;
    for _ in 0..passes.max(1) {
        let t = std::time::Instant::now();
        let s: f32 = a.f32s().par_chunks(part).map(sum_f32).sum();
        let dt = t.elapsed().as_secs_f64();
        sink += s;
        read = read.max(bytes as f64 / dt.max(1e-9));
    }
    std::hint::black_box(sink);
    drop(a);
    let half = bytes / 2;
    let mut src = AlignedBuf::zeroed(half);
    let mut dst = AlignedBuf::zeroed(half);
    src.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(2.0));
    dst.f32s_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(0.0));
    let part = (src.f32s().len() / threads).max(1);
    let mut copy = 0.0f64;
    for _ in 0..passes.max(1) {
        let t = std::time::Instant::now();
        dst.f32s_mut()
            .par_chunks_mut(part)
            .zip(src.f32s().par_chunks(part))
            .for_each(|(d, s)| d.copy_from_slice(s));
        let dt = t.elapsed().as_secs_f64();
        copy = copy.max(2.0 * half as f64 / dt.max(1e-9));
    }
    std::hint::black_box(dst.f32s()[0]);
    Bandwidth {
        read,
        copy,
        bytes,
        threads,
    }
}
