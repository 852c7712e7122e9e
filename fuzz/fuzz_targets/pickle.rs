#![no_main]
//! The bounded pickle reader (`data.pkl` of PyTorch archives).
use clip_adapter::clip::load::pickle::{parse, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, &Limits::default());
});
