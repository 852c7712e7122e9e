//! The allocator setting the encoders need: keep freed memory mapped.
//!
//! A forward pass allocates and frees multi-megabyte activations per op (candle's matmul and
//! element-wise outputs). mimalloc's default gives freed memory back to the OS after a 10 ms
//! delay, so the next forward faults every page in again and the kernel zeroes it: 17 % of a
//! ViT-B/32 batch-32 forward in `clear_page_erms` on one CPU, about 4,800 page faults per call
//! here. With purging off, a steady-state forward faults no page (`bench/encoders.rs` counts
//! them), and the resident size stays at the process's high-water mark, which it reaches on the
//! first call anyway.

// Links libmimalloc into every binary of this crate, so that the symbol below resolves even
// where mimalloc is not the global allocator (there the setting is harmless).
extern crate mimalloc;

use std::os::raw::{c_int, c_long};

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_option_get(option: c_int) -> c_long;
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// Tells mimalloc never to return freed memory to the OS. Call it first thing in `main` of a
/// program that installs `mimalloc::MiMalloc` as its global allocator; returns the delay now in
/// force (-1: never).
pub fn keep_freed_memory() -> i64 {
    // SAFETY: plain C calls on mimalloc's option table, valid at any time.
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        mi_option_get(MI_OPTION_PURGE_DELAY) as i64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_set() {
        assert_eq!(super::keep_freed_memory(), -1);
    }
}
