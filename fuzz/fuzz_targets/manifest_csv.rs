#![no_main]
//! Image manifests in CSV.
use std::path::Path;

use clip_adapter::data::folder::{manifest_from_bytes, SeededSplit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manifest_from_bytes(
        Path::new("/nonexistent/manifest.csv"),
        data,
        SeededSplit::default(),
    );
});
