#![no_main]
//! The feature cache's safetensors files: image features and text features.
use std::path::Path;

use clip_adapter::features::{text::text_from_bytes, FeatureFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    if let Ok(f) = FeatureFile::from_bytes(path, data) {
        assert_eq!(f.features.len(), f.rows() * f.dim);
        assert_eq!(f.index.len(), f.rows());
    }
    let _ = text_from_bytes(path, data);
});
