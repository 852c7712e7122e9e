//! Where the concurrent fits of a grid run.
//!
//! A group's fits (one dataset and shot count: every seed and method) are independent trainings
//! of small heads. With fewer fits per group than cores they share one pool, so that each fit's
//! products spread over the cores the others leave idle, and one group runs at a time. With at
//! least as many fits as cores every fit runs alone on a thread of its own, its products on that
//! thread: on a shared pool a fit waiting for a product's stolen half would steal a piece of
//! another fit's, and the workers woke and preempted each other tens of thousands of times a
//! second (the CLIP-Adapter grid's three seeds on two cores, a tenth of its epochs: 1.6–1.8
//! million involuntary context switches per run, against 22–23 thousand on threads of their
//! own; Intel Xeon Emerald Rapids, docs/benchmarks.md). Those threads take the fits from one
//! queue for the whole grid, so that a thread done with its group's last fit starts on the next
//! group's (which the grid loads and queues while the first still runs) instead of waiting for
//! the slowest fit of its group. The rows are the same whichever threads run them: every
//! kernel's split leaves each sum's order unchanged.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use rayon::{Scope, ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder};

/// The threads a grid's fits run on, built once for the whole grid (so that each thread keeps
/// its allocator's memory from one group to the next).
pub(crate) struct FitPool {
    /// The caller's number of threads, over which a group of fewer fits splits its products.
    shared: ThreadPool,
    /// Single-thread pools, each running one fit at a time from the grid's queue, for groups
    /// of at least as many fits as cores (none when the grid's groups have fewer).
    alone: Vec<ThreadPool>,
}

impl FitPool {
    /// The pool for a grid of `groups` groups of up to `fits` concurrent fits on `cores`
    /// threads.
    pub(crate) fn new(
        cores: usize,
        fits: usize,
        groups: usize,
    ) -> Result<Self, ThreadPoolBuildError> {
        let cores = cores.max(1);
        let shared = ThreadPoolBuilder::new()
            .num_threads(cores)
            .thread_name(|i| format!("grid-fit-{i}"))
            .build()?;
        let alone = match fits >= cores {
            true => (0..fit_threads(cores, fits, groups))
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

    /// Whether a group's fits may be queued while the previous group's still run: when the
    /// fits run alone, one per thread. On the shared pool they would compete for its threads.
    pub(crate) fn overlaps_groups(&self) -> bool {
        !self.alone.is_empty()
    }

    /// The threads that run fits.
    pub(crate) fn threads(&self) -> usize {
        match self.alone.len() {
            0 => self.shared.current_num_threads(),
            n => n,
        }
    }

    /// Runs `body` on this thread (which is none of the pool's) with the lanes it hands its fits
    /// to; returns `body`'s value once every fit it handed on is done. Fits run in the order
    /// they are handed on.
    pub(crate) fn scope<'s, R>(&self, body: impl FnOnce(&Lanes<'_, 's>) -> R) -> R {
        if self.alone.is_empty() {
            return self
                .shared
                .in_place_scope(|scope| body(&Lanes::Shared(scope)));
        }
        let queue = Queue::default();
        // Each thread takes the next fit not yet started whenever it is free, until the body
        // is done handing them on.
        let take = || {
            let _drain = DrainOnPanic(&queue);
            while let Some(fit) = queue.next() {
                fit();
            }
        };
        nested(&self.alone, &take, || {
            let _close = CloseOnDrop(&queue);
            body(&Lanes::Queue(&queue))
        })
    }
}

/// Where [`FitPool::scope`]'s body hands its fits.
pub(crate) enum Lanes<'q, 's> {
    /// Spawned on the shared pool.
    Shared(&'q Scope<'s>),
    /// Queued for the threads that run one fit at a time.
    Queue(&'q Queue<'s>),
}

impl<'s> Lanes<'_, 's> {
    /// Starts `fit` as soon as a thread is free. A fit handed on after a fit panicked is
    /// dropped unstarted (the panic reaches the caller when the scope ends).
    pub(crate) fn start(&self, fit: FitJob<'s>) {
        match self {
            Lanes::Shared(scope) => scope.spawn(move |_| fit()),
            Lanes::Queue(queue) => queue.push(fit),
        }
    }

    /// The fits handed on and not taken by a thread yet (none on the shared pool, which
    /// takes them at once).
    pub(crate) fn queued(&self) -> usize {
        match self {
            Lanes::Shared(_) => 0,
            Lanes::Queue(queue) => queue.lock().fits.len(),
        }
    }
}

/// One fit, as [`Lanes::start`] takes it.
pub(crate) type FitJob<'s> = Box<dyn FnOnce() + Send + 's>;

/// The fits not yet started, in order, and whether more may come.
#[derive(Default)]
pub(crate) struct Queue<'s> {
    state: Mutex<QueueState<'s>>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState<'s> {
    fits: VecDeque<FitJob<'s>>,
    closed: bool,
}

impl<'s> Queue<'s> {
    fn lock(&self) -> MutexGuard<'_, QueueState<'s>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, fit: FitJob<'s>) {
        let mut state = self.lock();
        if state.closed {
            // Dropped after the lock: a fit owns what the body may wait on.
            drop(state);
            drop(fit);
            return;
        }
        state.fits.push_back(fit);
        self.ready.notify_one();
    }

    /// The next fit, waiting for one while more may come; `None` once closed and empty.
    fn next(&self) -> Option<FitJob<'s>> {
        let mut state = self.lock();
        loop {
            if let Some(fit) = state.fits.pop_front() {
                return Some(fit);
            }
            if state.closed {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// No more fits come: the threads stop once the queue is empty.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Closes the queue when the body returns or unwinds, so that the threads waiting for fits
/// stop and the scope can end.
struct CloseOnDrop<'q, 's>(&'q Queue<'s>);

impl Drop for CloseOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Drops the fits not yet started, and those handed on later, when a fit panics on the thread
/// that holds it: a fit may own what the body waits on (the sender of its rows), so fits left
/// queued would keep the body waiting, and the panic, which the scope raises once the body
/// returns, would never arrive.
struct DrainOnPanic<'q, 's>(&'q Queue<'s>);

impl Drop for DrainOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let left = {
                let mut state = self.0.lock();
                state.closed = true;
                std::mem::take(&mut state.fits)
            };
            self.0.ready.notify_all();
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

/// Threads for a grid of `groups` groups of `fits` fits on `cores` cores. With more than one
/// group, one per core: the threads take the next group's fits as they free up. A grid of one
/// group holding between one and two fits per core gets one per fit: with one per core the
/// fits beyond a multiple of the cores ran at the group's end alone, with cores idle (three
/// seeds on two cores took the 11-dataset CLIP-Adapter grid 2–9 % longer than three threads
/// time-sliced on them when each group waited for its last fit; seven alternated runs, Intel
/// Xeon Emerald Rapids, 2 cores; not measured elsewhere).
pub(crate) fn fit_threads(cores: usize, fits: usize, groups: usize) -> usize {
    if groups <= 1 && fits > cores && fits <= 2 * cores {
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
    fn a_grid_gets_a_thread_per_core_and_a_single_group_of_up_to_two_per_core_one_per_fit() {
        assert_eq!(fit_threads(2, 3, 1), 3);
        assert_eq!(fit_threads(2, 4, 1), 4);
        assert_eq!(fit_threads(2, 2, 1), 2);
        assert_eq!(fit_threads(2, 1, 1), 2);
        assert_eq!(fit_threads(2, 5, 1), 2);
        assert_eq!(fit_threads(8, 3, 1), 8);
        assert_eq!(fit_threads(0, 3, 1), 1);
        assert_eq!(fit_threads(2, 3, 55), 2);
        assert_eq!(fit_threads(2, 3, 0), 3);
    }

    /// Runs `n` fits that record the threads of the pool each ran on; returns the body's value
    /// and the thread counts seen.
    fn threads_seen(pool: &FitPool, n: usize) -> (usize, Vec<usize>) {
        let seen = Mutex::new(Vec::new());
        let started = AtomicUsize::new(0);
        let value = pool.scope(|lanes| {
            for _ in 0..n {
                let (seen, started) = (&seen, &started);
                lanes.start(Box::new(move || {
                    started.fetch_add(1, Ordering::Relaxed);
                    seen.lock().unwrap().push(rayon::current_num_threads());
                }));
            }
            7
        });
        assert_eq!(started.load(Ordering::Relaxed), n);
        (value, seen.into_inner().unwrap())
    }

    #[test]
    fn fits_run_alone_from_as_many_as_cores_and_share_below() {
        // One group of three fits on two cores: each on a thread of its own, its products on
        // that thread.
        let pool = FitPool::new(2, 3, 1).unwrap();
        assert_eq!(pool.alone.len(), 3);
        assert!(pool.overlaps_groups());
        assert_eq!(threads_seen(&pool, 3), (7, vec![1, 1, 1]));
        // Many groups: one thread per core takes them in turn.
        let pool = FitPool::new(2, 3, 10).unwrap();
        assert_eq!(pool.alone.len(), 2);
        assert_eq!(threads_seen(&pool, 30), (7, vec![1; 30]));
        // One fit per group on four cores: the shared pool only, a group at a time.
        let pool = FitPool::new(4, 1, 10).unwrap();
        assert!(pool.alone.is_empty());
        assert!(!pool.overlaps_groups());
        assert_eq!(threads_seen(&pool, 1), (7, vec![4]));
        assert_eq!(threads_seen(&pool, 0), (7, vec![]));
    }

    #[test]
    fn the_threads_start_fits_handed_on_while_earlier_ones_run() {
        // Two threads: the first fit waits until the body has handed on the third, which the
        // second thread must have run meanwhile (it took the second, then the third).
        let pool = FitPool::new(2, 2, 2).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let order = pool.scope(|lanes| {
            let (tx, go) = (done_tx.clone(), &go_rx);
            lanes.start(Box::new(move || {
                go.lock().unwrap().recv().unwrap();
                tx.send(0).unwrap();
            }));
            for i in 1..3 {
                let tx = done_tx.clone();
                lanes.start(Box::new(move || tx.send(i).unwrap()));
            }
            let early: Vec<usize> = done_rx.iter().take(2).collect();
            go_tx.send(()).unwrap();
            let last = done_rx.recv().unwrap();
            (early, last)
        });
        assert_eq!(order, (vec![1, 2], 0));
    }

    #[test]
    fn a_panicking_fit_reaches_the_caller_while_the_body_waits_on_the_others() {
        // Five fits on two threads, each holding a sender that the body waits on, as the
        // grid's fits hold the sender of their rows; the first two panic, ending both threads'
        // turns while three fits are still queued.
        let pool = FitPool::new(2, 5, 1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.scope(|lanes| {
                for i in 0..5 {
                    let tx = tx.clone();
                    lanes.start(Box::new(move || {
                        if i < 2 {
                            panic!("a fit failed");
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        let _ = tx.send(i);
                    }));
                }
                drop(tx);
                rx.iter().count()
            })
        }));
        let message = outcome.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"a fit failed"));
    }
}
