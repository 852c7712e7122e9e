//! Where parallel work starts from: a worker of rayon's pool.
//!
//! Our products and row-wise passes split their work with rayon. Called from a thread outside
//! the pool (a program's main thread, Python's), every such call hands its work to the pool's
//! workers, which sleep between calls, and waits to be woken when they are done: two thread
//! wake-ups per product, tens of microseconds each on the machines measured. A training step of
//! a few milliseconds or a one-text forward makes dozens of such calls, so the work that makes
//! them runs on a worker instead, where a call's first half starts at once on the same thread.

/// `f()` on a worker of the current rayon pool: at once when this thread is one, else on the
/// global pool while this thread waits for it.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_its_value() {
        assert_eq!(rayon::current_thread_index(), None);
        let (inside, value) = on_pool(|| (rayon::current_thread_index(), 7));
        assert!(inside.is_some());
        assert_eq!(value, 7);
        // From a worker it runs where it is.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let nested = pool.install(|| {
            let here = std::thread::current().id();
            on_pool(|| std::thread::current().id() == here)
        });
        assert!(nested);
    }
}
