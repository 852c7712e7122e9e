#![no_main]
//! transformers' `config.json` for CLIP.
use std::path::Path;

use clip_adapter::clip::load::config::ClipConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ClipConfig::from_hf_json(text, Path::new("config.json"));
    }
});
