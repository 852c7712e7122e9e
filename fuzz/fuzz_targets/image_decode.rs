#![no_main]
//! Image decoding (PNG, JPEG through libjpeg-turbo, GIF, WebP, BMP) from arbitrary bytes.
//!
//! `decode_bytes` turns a panic inside the `image` crate's pure-Rust decoders into an error
//! (`image::decode::catch_decoder_panic`), so such a panic is not a failure of ours: this target
//! lets those through (printing each place once) and aborts on every other panic, as
//! libfuzzer-sys's own hook does.
use std::collections::HashSet;
use std::sync::{Mutex, Once};

use libfuzzer_sys::fuzz_target;

/// Where the decoders that `catch_decoder_panic` guards live in the cargo registry.
const CAUGHT: [&str; 4] = ["/image-0.", "/image-webp-", "/png-0.", "/gif-0."];

fn allow_caught_decoder_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        let seen = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let place = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            let place = place.unwrap_or_default();
            if !CAUGHT.iter().any(|c| place.contains(c)) {
                return abort(info);
            }
            if seen
                .lock()
                .map(|mut s| s.insert(place.clone()))
                .unwrap_or(false)
            {
                eprintln!("caught decoder panic at {place}: {info}");
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    allow_caught_decoder_panics();
    if let Ok(img) = clip_adapter::image::decode_bytes(data, "fuzz") {
        // A decoded image must be as large as it says.
        assert_eq!(
            img.as_raw().len(),
            img.width() as usize * img.height() as usize * 3
        );
    }
});
