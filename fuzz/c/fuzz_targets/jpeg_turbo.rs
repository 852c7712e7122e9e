#![no_main]
//! libjpeg-turbo's decoder, called as `clip_adapter::image::jpeg` calls it (`Turbo::header`,
//! then `Turbo::decompress` into a buffer of the reported size, in the pixel format the colour
//! space gives), with the C library built with AddressSanitizer and libFuzzer's coverage
//! (`fuzz/c/run.sh`): an out-of-bounds read or write in the C code aborts with ASan's report.
//! Warnings are followed through, as the library follows them; the library's own Rust checks
//! (marker walk, size limits, truncation) are the `image_decode` target's.
use libfuzzer_sys::fuzz_target;
use libjpeg_turbo_sys as tj;

/// Images above this many pixels are not decoded (the library refuses them earlier, from the
/// frame header; here it keeps libFuzzer's memory limit meaningful).
const MAX_PIXELS: usize = 4096 * 4096;

fuzz_target!(|data: &[u8]| {
    // SAFETY: a fresh handle, destroyed once below; every buffer passed is described by its
    // own pointer and length, and the output holds the rows tj3Decompress8 writes at the size
    // tj3DecompressHeader reported for the same bytes.
    unsafe {
        let handle = tj::tj3Init(tj::TJINIT_DECOMPRESS);
        assert!(!handle.is_null(), "tj3Init failed");
        decode(handle, data);
        tj::tj3Destroy(handle);
    }
});

/// Whether the last call succeeded or only warned (the library goes on after warnings).
unsafe fn went_on(handle: tj::tjhandle, rc: i32) -> bool {
    rc == 0 || tj::tj3GetErrorCode(handle) == tj::TJERR_WARNING
}

unsafe fn decode(handle: tj::tjhandle, data: &[u8]) {
    let rc = tj::tj3DecompressHeader(handle, data.as_ptr(), data.len());
    if !went_on(handle, rc) {
        return;
    }
    let get = |p| tj::tj3Get(handle, p);
    let (w, h) = (get(tj::TJPARAM_JPEGWIDTH), get(tj::TJPARAM_JPEGHEIGHT));
    let (Ok(w), Ok(h)) = (usize::try_from(w), usize::try_from(h)) else {
        return;
    };
    let (format, channels) = match get(tj::TJPARAM_COLORSPACE) {
        tj::TJCS_GRAY => (tj::TJPF_GRAY, 1),
        tj::TJCS_CMYK | tj::TJCS_YCCK => (tj::TJPF_CMYK, 4),
        tj::TJCS_RGB | tj::TJCS_YCbCr => (tj::TJPF_RGB, 3),
        _ => return,
    };
    if w == 0 || h == 0 || w * h > MAX_PIXELS {
        return;
    }
    let mut out = vec![0u8; w * h * channels];
    let pitch = (w * channels) as i32;
    let rc = tj::tj3Decompress8(handle, data.as_ptr(), data.len(), out.as_mut_ptr(), pitch, format);
    let _ = went_on(handle, rc);
}
