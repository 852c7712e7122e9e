//! Test-only fault injection: `CLIP_ADAPTER_FAULT=<site>:<n>` aborts the process at the n-th
//! time it reaches `site` (`write`: a file's bytes are in its temp file, not yet renamed;
//! `rename`: a file was just renamed into place; `unlink`: a resume chunk was just deleted
//! during clean-up). Several faults are separated by commas. Without the variable every point is
//! a no-op. The crash harnesses (`tests/cache_safety.rs`, `tests/crash_experiment.rs`) use it
//! to kill an extraction or a grid exactly between the steps a crash can separate, and check
//! that the next run recovers: byte for byte for the cache, row for row for the results.
//!
//! Compiled only where the harness runs: builds with debug assertions (`cargo test`, `cargo
//! build`) or with the `fault-injection` feature (`cargo test --release --features
//! fault-injection`). A release build has no fault points at all (the points are empty inline
//! functions and the variable's name is not in the binary), so no environment can make the
//! shipped command abort.

/// Whether this build has fault points; the crash harness skips itself, saying why, without.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "fault-injection"));

/// Without fault points: nothing to do, and nothing left once inlined.
#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn point(_site: &str) {}

#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub(crate) use active::point;

#[cfg(any(debug_assertions, feature = "fault-injection"))]
mod active {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// The sites, in the order their counters are kept.
    const SITES: [&str; 3] = ["write", "rename", "unlink"];

    static COUNTS: [AtomicUsize; 3] = [
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ];

    /// `(site index, n)` pairs parsed from the environment once; malformed entries are ignored, so
    /// a typo can never make a normal run abort.
    fn plan() -> &'static [(usize, usize)] {
        static PLAN: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let Ok(spec) = std::env::var("CLIP_ADAPTER_FAULT") else {
                return Vec::new();
            };
            spec.split(',')
                .filter_map(|f| {
                    let (site, n) = f.trim().split_once(':')?;
                    let i = SITES.iter().position(|s| *s == site)?;
                    Some((i, n.parse().ok()?))
                })
                .collect()
        })
    }

    /// Marks one pass through `site`; aborts (no clean-up, as a kill would) when the plan says so.
    pub(crate) fn point(site: &str) {
        let plan = plan();
        if plan.is_empty() {
            return;
        }
        let Some(i) = SITES.iter().position(|s| *s == site) else {
            return;
        };
        let n = COUNTS[i].fetch_add(1, Ordering::SeqCst) + 1;
        if plan.iter().any(|&(s, at)| s == i && at == n) {
            std::process::abort();
        }
    }
}
