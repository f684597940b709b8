//! A small fork–join pool for the products and recurrences of one token or one chunk.
//!
//! The decode path makes about fifteen parallel calls per layer, each a few tens of
//! microseconds long, from the main thread. Handing each to rayon from outside its pool costs
//! a mutex, a condition variable and a wake-up per call (a third of the decode time in the
//! profiles here). Here the calling thread takes part in the work, tasks are claimed from one
//! atomic word, and idle workers wait for the next call for a short while (long enough to
//! bridge the gap between two calls of a token) before they park: first spinning, then
//! yielding their core between checks — on a machine shared with other processes (Linux
//! shares CPU time between sessions, whatever their nice values) a spinning worker would take
//! time from its own caller. A guard runs calls serially for a while when workers keep the
//! caller waiting (they were descheduled with work in hand).
//!
//! Below the pool, the helpers that spread work over it: [`par_chunks_mut`], and (for `ops`)
//! one task per panel or per block of rows.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Waiting for workers this much longer than the caller's own share took is a strike;
/// `STRIKES` in a row bench the pool for `BENCHED_CALLS` calls.
const STRAGGLER_SLACK: Duration = Duration::from_micros(200);
const STRIKES: u32 = 3;
const BENCHED_CALLS: u32 = 4096;
/// Busy-wait rounds before an idle worker starts yielding its core between checks.
const PURE_SPINS: u32 = 4096;
/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(500);
/// Tasks per call at most (the task index has 20 bits of the state word).
const MAX_TASKS: usize = (1 << 20) - 1;

/// The state word: generation (24 bits) | task count (20 bits) | next task (20 bits).
fn pack(gen: u64, n: usize, next: usize) -> u64 {
    (gen << 40) | ((n as u64) << 20) | next as u64
}
fn unpack(s: u64) -> (u64, usize, usize) {
    (
        s >> 40,
        ((s >> 20) & 0xF_FFFF) as usize,
        (s & 0xF_FFFF) as usize,
    )
}

/// The job of the current generation, on the stack of the thread that posted it.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

/// A value on a cache line of its own: idle workers spin reading the state word, and every
/// write to a line they read (the caller's counters, the completion count) would cost a
/// transfer of that line between the cores on every call.
#[repr(align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Pool {
    state: Line<AtomicU64>,
    /// Written once per call, before `state`; read by the workers after it.
    job: AtomicPtr<()>,
    done: Line<AtomicUsize>,
    panicked: AtomicBool,
    sleeping: Vec<AtomicBool>,
    /// Handles to unpark the workers (set once they are started).
    threads: OnceLock<Vec<Thread>>,
    /// One job at a time; a second caller runs its tasks itself.
    post: Mutex<()>,
    /// Consecutive calls that waited on a straggler, and calls left to run serially.
    strikes: AtomicU32,
    benched: AtomicU32,
}

thread_local! {
    /// Set on pool workers and on a thread while it runs a job: nested calls run serially.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // As many threads as the rayon pool (`--threads`), the caller being one of them.
        let n = rayon::current_num_threads().max(1) - 1;
        let p: &'static Pool = Box::leak(Box::new(Pool {
            state: Line(AtomicU64::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: Line(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            post: Mutex::new(()),
            strikes: AtomicU32::new(0),
            benched: AtomicU32::new(0),
        }));
        let threads = (0..n)
            .map_while(|i| {
                std::thread::Builder::new()
                    .name(format!("rwkv-worker-{i}"))
                    .spawn(move || worker(p, i))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect::<Vec<_>>();
        let _ = p.threads.set(threads);
        p
    })
}

fn worker(p: &'static Pool, me: usize) {
    INSIDE.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let (gen, _, _) = unpack(p.state.load(Acquire));
            if gen != seen {
                seen = gen;
                break;
            }
            spins += 1;
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                p.sleeping[me].store(true, SeqCst);
                if unpack(p.state.load(SeqCst)).0 == seen {
                    std::thread::park();
                }
                p.sleeping[me].store(false, SeqCst);
                continue;
            }
            if spins > PURE_SPINS {
                // Give the core to a runnable thread of ours (or anyone's) if there is one.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        run_tasks(p, seen);
    }
}

/// Claims and runs tasks of generation `gen` until none is left.
fn run_tasks(p: &Pool, gen: u64) {
    loop {
        let s = p.state.load(Acquire);
        let (g, n, next) = unpack(s);
        if g != gen || next >= n {
            return;
        }
        if p.state
            .compare_exchange_weak(s, s + 1, AcqRel, Acquire)
            .is_err()
        {
            continue;
        }
        // SAFETY: the claim succeeded, so generation `gen` is still current and task
        // `next` of it not yet done: its poster is still waiting in `run` (it returns only
        // once `done` counts every task), so the `Job` on its stack is alive.
        let job = unsafe { &*(p.job.load(Acquire) as *const Job) };
        let f = job.f;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next))).is_err() {
            p.panicked.store(true, Release);
        }
        p.done.fetch_add(1, AcqRel);
    }
}

/// Threads that run a job: the workers and the caller.
pub fn threads() -> usize {
    pool().sleeping.len() + 1
}

/// Runs `f(i)` for every `i < n`, spread over the pool's threads and the caller.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let serial = || (0..n).for_each(f);
    if n <= 1 || n > MAX_TASKS || INSIDE.with(|c| c.get()) {
        return serial();
    }
    let p = pool();
    let threads = match p.threads.get() {
        Some(t) if !t.is_empty() => t,
        _ => return serial(),
    };
    // Straggler guard: while the pool is benched (see below), run serially.
    if p.benched.load(Relaxed) > 0
        && p.benched
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1))
            .is_ok()
    {
        return serial();
    }
    let _posting = match p.post.try_lock() {
        Ok(g) => g,
        // A task panicked while this lock was held; the pool itself is intact.
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return serial(),
    };
    let started = Instant::now();
    let job = Job { f };
    p.done.store(0, Relaxed);
    p.panicked.store(false, Relaxed);
    p.job.store(&job as *const Job as *mut (), Release);
    let gen = ((unpack(p.state.load(Relaxed)).0 + 1) & 0xFF_FFFF).max(1);
    p.state.store(pack(gen, n, 0), SeqCst);
    for (s, th) in p.sleeping.iter().zip(threads) {
        if s.load(SeqCst) {
            th.unpark();
        }
    }
    INSIDE.with(|c| c.set(true));
    run_tasks(p, gen);
    INSIDE.with(|c| c.set(false));
    let own = started.elapsed();
    let mut spins = 0u32;
    while p.done.load(Acquire) < n {
        spins += 1;
        if spins > 1 << 14 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    // A worker that claimed a task and was then descheduled (another process wanting the
    // core) keeps the caller waiting for a whole time slice. When waiting takes longer than
    // the work itself several calls in a row, the cores are not ours: run serially for a
    // while (each call is then as fast as on one thread), then try again.
    let waited = started.elapsed() - own;
    if waited > 2 * own + STRAGGLER_SLACK {
        if p.strikes.fetch_add(1, Relaxed) + 1 >= STRIKES {
            p.strikes.store(0, Relaxed);
            p.benched.store(BENCHED_CALLS, Relaxed);
        }
    } else if p.strikes.load(Relaxed) != 0 {
        p.strikes.store(0, Relaxed);
    }
    if p.panicked.load(Acquire) {
        panic!("a worker thread panicked in a parallel kernel");
    }
}

// ---------------------------------------------------------------------------------------------
// Spreading work over the pool.

/// Runs `f(p)` for every panel, on the pool unless `serial`.
pub(super) fn for_panels(n_panels: usize, serial: bool, f: impl Fn(usize) + Sync) {
    if serial {
        (0..n_panels).for_each(f);
    } else {
        run(n_panels, &f);
    }
}

/// A raw pointer to the start of a slice whose chunks several threads write, one each.
struct ChunkPtr<T>(*mut T);
// SAFETY: only used by `par_chunks_mut` and `par_chunks2_mut`, whose tasks write disjoint chunks
// of a slice that is borrowed mutably for the whole call.
unsafe impl<T: Send> Send for ChunkPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for ChunkPtr<T> {}

/// `f(index, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), on the
/// pool unless `serial`.
pub fn par_chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    serial: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let n = data.len().div_ceil(chunk);
    if serial || n <= 1 {
        data.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    let len = data.len();
    let base = ChunkPtr(data.as_mut_ptr());
    let base = &base;
    run(n, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: `start..end` lies within `data` (i < n = ⌈len / chunk⌉), each index `i` is
        // run exactly once, so the chunks handed out are disjoint, and `data` stays mutably
        // borrowed until `run` returns, after every task has finished.
        let c = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
        f(i, c);
    });
}

/// [`par_chunks_mut`] over two slices in step: `f(i, a_i, b_i)` for the `i`-th `chunk_a`-long
/// piece of `a` and the `i`-th `chunk_b`-long piece of `b`, for every piece of `a` (`b` must
/// have as many whole pieces). Used where each task owns a block of two buffers (a head's
/// state and its outputs).
pub fn par_chunks2_mut<A: Send, B: Send>(
    a: &mut [A],
    chunk_a: usize,
    b: &mut [B],
    chunk_b: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let chunk_a = chunk_a.max(1);
    let n = a.len().div_ceil(chunk_a);
    assert!(
        b.len() >= n * chunk_b,
        "par_chunks2_mut: the second slice has fewer than {n} pieces"
    );
    let b = &mut b[..n * chunk_b];
    let base = ChunkPtr(b.as_mut_ptr());
    let base = &base;
    par_chunks_mut(a, chunk_a, false, |i, a_i| {
        // SAFETY: piece `i` of `b`, `i·chunk_b .. (i+1)·chunk_b`, lies within `b` (asserted
        // above, i < n); `par_chunks_mut` runs each index exactly once, so the pieces are
        // disjoint, and `b` stays mutably borrowed until it returns.
        let b_i = unsafe { std::slice::from_raw_parts_mut(base.0.add(i * chunk_b), chunk_b) };
        f(i, a_i, b_i)
    });
}

/// Items per task for `n` small items of equal work (one token's heads): as few tasks as
/// there are threads, each a whole number of items and all the same size (a divisor of `n`:
/// [`par_chunks2_mut`] wants whole pieces), since a task per item costs more in claims, and in
/// data moving between cores, than the items' own work.
pub fn items_per_thread(n: usize) -> usize {
    (n.div_ceil(threads()).max(1)..=n)
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

/// Elementwise work on more values than this is spread over the pool, by rows.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// Rows per task for row-parallel elementwise work on `x`, or `None` to run serially.
fn row_tasks(rows: usize, cols: usize) -> Option<usize> {
    (rows > 1 && rows * cols >= PARALLEL_ELEMENTS).then(|| rows.div_ceil(4 * threads()))
}

/// `f(t, row)` for every row `t` of `data` (`cols` long each), in parallel for large
/// matrices (the elementwise work of the sequence path).
pub fn for_rows(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = data.len() / cols.max(1);
    match row_tasks(rows, cols) {
        Some(per) => par_chunks_mut(data, per * cols, false, |c, block| {
            for (i, row) in block.chunks_exact_mut(cols).enumerate() {
                f(c * per + i, row);
            }
        }),
        None => {
            for (i, row) in data.chunks_exact_mut(cols.max(1)).enumerate() {
                f(i, row);
            }
        }
    }
}
