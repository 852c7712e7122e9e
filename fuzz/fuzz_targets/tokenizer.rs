#![no_main]
//! CLIP's tokenizer (text clean-up, byte-level BPE) on arbitrary text.
use std::sync::OnceLock;

use clip_adapter::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::openai().expect("the embedded vocabulary loads"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ids = tokenizer().tokenize(&text, 77);
    assert!(ids.len() <= 77);
    let _ = tokenizer().encode(&text);
});
