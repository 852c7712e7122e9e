//! What the step and encoder benchmarks read from their environment and report of their process.

use clip_adapter::clip::Precision;

/// `PRECISION` (f32 or bf16, default f32): the arithmetic the benchmark's scripts pass to both
/// sides.
pub fn precision() -> anyhow::Result<Precision> {
    Ok(std::env::var("PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .parse()?)
}

/// The process's peak resident memory (`VmHWM`), in MiB; NaN where /proc does not say.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
