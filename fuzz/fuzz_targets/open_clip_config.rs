#![no_main]
//! open_clip's `open_clip_config.json`.
use std::path::Path;

use clip_adapter::clip::load::open_clip_config::from_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = from_json(text, Path::new("open_clip_config.json"));
    }
});
