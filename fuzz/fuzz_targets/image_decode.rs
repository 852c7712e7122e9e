#![no_main]
//! Image decoding (PNG, JPEG through libjpeg-turbo, GIF, WebP, BMP) from arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = clip_adapter::image::decode_bytes(data, "fuzz") {
        // A decoded image must be as large as it says.
        assert_eq!(
            img.as_raw().len(),
            img.width() as usize * img.height() as usize * 3
        );
    }
});
