//! Test-only fault injection: `CLIP_ADAPTER_FAULT=<site>:<n>` aborts the process at the n-th
//! time it reaches `site` (`write`: a file's bytes are in its temp file, not yet renamed;
//! `rename`: a file was just renamed into place; `unlink`: a resume chunk was just deleted
//! during clean-up), except `full`, which makes the n-th file's write fail as on a full disk
//! (`ENOSPC`) and lets the process go on handling the error. Several faults are separated by
//! commas. Without the variable every point is
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

/// Without fault points: the disk is never full.
#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub(crate) fn disk_full() -> std::io::Result<()> {
    Ok(())
}

#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub(crate) use active::{disk_full, point};

#[cfg(any(debug_assertions, feature = "fault-injection"))]
mod active {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// The sites, in the order their counters are kept.
    const SITES: [&str; 4] = ["write", "rename", "unlink", "full"];

    static COUNTS: [AtomicUsize; 4] = [
        AtomicUsize::new(0),
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
        if hit(site) {
            std::process::abort();
        }
    }

    /// Marks one file's write; fails it as a full disk would when the plan says so.
    pub(crate) fn disk_full() -> std::io::Result<()> {
        const ENOSPC: i32 = 28;
        match hit("full") {
            true => Err(std::io::Error::from_raw_os_error(ENOSPC)),
            false => Ok(()),
        }
    }

    /// Counts a pass through `site`: whether the plan names this one.
    fn hit(site: &str) -> bool {
        let plan = plan();
        if plan.is_empty() {
            return false;
        }
        let Some(i) = SITES.iter().position(|s| *s == site) else {
            return false;
        };
        let n = COUNTS[i].fetch_add(1, Ordering::SeqCst) + 1;
        plan.iter().any(|&(s, at)| s == i && at == n)
    }
}
