//! Where the concurrent fits of a grid group run.
//!
//! A group's fits are independent trainings of small heads. With fewer fits than cores they
//! share one pool, so that each fit's products spread over the cores the others leave idle.
//! With at least as many fits as cores every fit runs alone on a thread of its own, its products
//! on that thread: on a shared pool a fit waiting for a product's stolen half would steal a
//! piece of another fit's, and the workers woke and preempted each other tens of thousands of
//! times a second (the CLIP-Adapter grid's three seeds on two cores, a tenth of its epochs:
//! 1.6–1.8 million involuntary context switches per run, against 22–23 thousand on threads of
//! their own; Intel Xeon Emerald Rapids, docs/benchmarks.md). The rows are the same whichever
//! threads run them: every kernel's split leaves each sum's order unchanged.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};

/// The threads a grid's fits run on, built once for the whole grid (so that each thread keeps
/// its allocator's memory from one group to the next).
pub(crate) struct FitPool {
    /// The caller's number of threads, over which a group of fewer fits splits its products.
    shared: ThreadPool,
    /// Single-thread pools, each running one fit at a time, for groups of at least as many fits
    /// as cores (none when the grid's groups have fewer).
    alone: Vec<ThreadPool>,
}

impl FitPool {
    /// The pool for groups of up to `fits` concurrent fits on `cores` threads.
    pub(crate) fn new(cores: usize, fits: usize) -> Result<Self, ThreadPoolBuildError> {
        let cores = cores.max(1);
        let shared = ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("grid-fit-{i}"))
            .build()?;
        let alone = match fits >= cores {
            true => (0..fit_threads(cores, fits))
                .map(|t| {
                    ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("grid-fit-alone-{t}"))
                        .build()
                })
                .collect::<Result<_, _>>()?,
            false => Vec::new(),
        };
        Ok(FitPool { shared, alone })
    }

    /// Runs every one of `fits`, started in their order, while `body` runs on this thread
    /// (which is none of the pool's); returns `body`'s value once every fit is done.
    pub(crate) fn run<'s, R>(&self, fits: Vec<FitJob<'s>>, body: impl FnOnce() -> R) -> R {
        let n = fits.len();
        if n < self.shared.current_num_threads() || self.alone.is_empty() {
            return self.shared.in_place_scope(|scope| {
                for fit in fits {
                    scope.spawn(move |_| fit());
                }
                body()
            });
        }
        // Each thread takes the next fit not yet started whenever it is free.
        let queue = Mutex::new(VecDeque::from(fits));
        let take = || {
            let _drain = DrainOnPanic(&queue);
            loop {
                // The lock is released at the end of this statement, before the fit runs.
                let next = queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                match next {
                    Some(fit) => fit(),
                    None => break,
                }
            }
        };
        nested(&self.alone[..self.alone.len().min(n)], &take, body)
    }
}

/// One fit, as [`FitPool::run`] takes it.
pub(crate) type FitJob<'s> = Box<dyn FnOnce() + Send + 's>;

/// Drops the fits not yet started when a fit panics on the thread that holds it: a fit may own
/// what `body` waits on (the sender of its rows), so fits left queued would keep `body`
/// waiting, and the panic, which the scope raises once `body` returns, would never arrive.
struct DrainOnPanic<'q, 's>(&'q Mutex<VecDeque<FitJob<'s>>>);

impl Drop for DrainOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let left = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
            drop(left);
        }
    }
}

/// `body` on this thread inside a scope of every pool of `pools`, each of which runs `work`.
fn nested<R>(pools: &[ThreadPool], work: &(dyn Fn() + Sync), body: impl FnOnce() -> R) -> R {
    match pools.split_first() {
        None => body(),
        Some((pool, rest)) => pool.in_place_scope(|scope| {
            scope.spawn(move |_| work());
            nested(rest, work, body)
        }),
    }
}

/// Threads for groups of `fits` fits on `cores` cores: one per fit when a group holds between one
/// and two fits per core, else one per core. With one per core, the fits beyond a multiple of
/// the cores ran at the group's end alone, their products split over the idle cores at a
/// fraction of separate fits' throughput: three seeds on two cores took the 11-dataset
/// CLIP-Adapter grid 2–9 % longer than three threads time-sliced on them (seven alternated
/// runs, Intel Xeon Emerald Rapids, 2 cores; not measured elsewhere).
pub(crate) fn fit_threads(cores: usize, fits: usize) -> usize {
    if fits > cores && fits <= 2 * cores {
        fits
    } else {
        cores.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_group_between_one_and_two_fits_per_core_gets_a_thread_per_fit() {
        assert_eq!(fit_threads(2, 3), 3);
        assert_eq!(fit_threads(2, 4), 4);
        assert_eq!(fit_threads(2, 2), 2);
        assert_eq!(fit_threads(2, 1), 2);
        assert_eq!(fit_threads(2, 5), 2);
        assert_eq!(fit_threads(8, 3), 8);
        assert_eq!(fit_threads(0, 3), 1);
    }

    /// Runs `n` fits that record the threads of the pool each ran on; returns the body's value
    /// and the thread counts seen.
    fn threads_seen(pool: &FitPool, n: usize) -> (usize, Vec<usize>) {
        let seen = Mutex::new(Vec::new());
        let started = AtomicUsize::new(0);
        let fits: Vec<FitJob> = (0..n)
            .map(|_| {
                let (seen, started) = (&seen, &started);
                Box::new(move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    seen.lock().unwrap().push(rayon::current_num_threads());
                }) as FitJob
            })
            .collect();
        let value = pool.run(fits, || 7);
        assert_eq!(started.load(Ordering::Relaxed), n);
        (value, seen.into_inner().unwrap())
    }

    #[test]
    fn fits_run_alone_from_as_many_as_cores_and_share_below() {
        // Three fits on two cores: each on a thread of its own, its products on that thread.
        let pool = FitPool::new(2, 3).unwrap();
        assert_eq!(pool.alone.len(), 3);
        assert_eq!(threads_seen(&pool, 3), (7, vec![1, 1, 1]));
        // A group with fewer left (a resumed grid) splits its products over the cores.
        assert_eq!(threads_seen(&pool, 1), (7, vec![2]));
        // Five on two: two threads take them in turn.
        let pool = FitPool::new(2, 5).unwrap();
        assert_eq!(pool.alone.len(), 2);
        assert_eq!(threads_seen(&pool, 5), (7, vec![1; 5]));
        // One fit on four cores: the shared pool only.
        let pool = FitPool::new(4, 1).unwrap();
        assert!(pool.alone.is_empty());
        assert_eq!(threads_seen(&pool, 1), (7, vec![4]));
        assert_eq!(threads_seen(&pool, 0), (7, vec![]));
    }

    #[test]
    fn a_panicking_fit_reaches_the_caller_while_the_body_waits_on_the_others() {
        // Five fits on two threads, each holding a sender that the body waits on, as the
        // grid's fits hold the sender of their rows; the first two panic, ending both threads'
        // turns while three fits are still queued.
        let pool = FitPool::new(2, 5).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let fits: Vec<FitJob> = (0..5)
            .map(|i| {
                let tx = tx.clone();
                Box::new(move || {
                    if i < 2 {
                        panic!("a fit failed");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let _ = tx.send(i);
                }) as FitJob
            })
            .collect();
        drop(tx);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(fits, || rx.iter().count())
        }));
        let message = outcome.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"a fit failed"));
    }
}
