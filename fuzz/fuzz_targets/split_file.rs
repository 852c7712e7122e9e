#![no_main]
//! CoOp's split files (`split_zhou_*.json`).
use std::path::Path;

use clip_adapter::data::split_file::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse(Path::new("split.json"), text);
    }
});
