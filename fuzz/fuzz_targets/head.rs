#![no_main]
//! Saved heads: the few-shot methods' heads and CoOp's learned context.
use clip_adapter::methods::{coop::CoopHead, head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = head::from_bytes(data);
    let _ = CoopHead::from_bytes(data);
});
