//! JPEG through libjpeg-turbo, as Pillow decodes it.
//!
//! Pillow 13.0.0 links libjpeg-turbo 3.2.0; we build the vendored 3.1.0 (`libjpeg-turbo-sys`,
//! a C compiler suffices; NASM adds the SIMD routines, which decode to the same pixels). With
//! TurboJPEG's defaults, which are Pillow's settings (accurate integer IDCT, smooth "fancy"
//! chroma upsampling, no scaling), the pixels are bit-identical to PIL's;
//! `docs/preprocessing.md` has the measurements, and those of the `image` crate's zune-jpeg,
//! which is not. This file also holds what Pillow does around the decoder: which files it
//! refuses (truncated, not 8-bit), and its CMYK conversion.
//!
//! It knows nothing of files or paths: [`decode`](super::decode) opens a [`JpegDecoder`],
//! checks the size it reports, decodes, and turns a [`JpegError`] into an `ImageError`.

use std::ffi::{c_int, CStr};

use libjpeg_turbo_sys as tj;

use super::RgbImage;

/// Why a JPEG was refused. The message is libjpeg's, or says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JpegError {
    /// The data ends before the image does (Pillow: "image file is truncated").
    Truncated(String),
    /// libjpeg-turbo gave up on the data.
    Corrupt(String),
    /// A layout Pillow does not open either (not 8-bit, odd component count).
    UnsupportedMode(String),
}

/// The frame header (SOFn) of a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sof {
    precision: u8,
    width: u32,
    height: u32,
    components: u8,
}

/// What the marker walk found before the first scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct JpegMarkers {
    sof: Option<Sof>,
    /// Offset of the first SOS marker: entropy-coded data follows it.
    sos: Option<usize>,
}

/// (width, height) from the frame header, when the marker walk reaches one.
pub(super) fn frame_size(b: &[u8]) -> Option<(u32, u32)> {
    markers(b).ok()?.sof.map(|s| (s.width, s.height))
}

/// Walks the markers up to the first scan, skipping junk between segments as libjpeg's
/// `next_marker` does. `Err(())`: the data ends inside the header, i.e. the file is truncated.
fn markers(b: &[u8]) -> Result<JpegMarkers, ()> {
    let mut info = JpegMarkers::default();
    let mut i = 2; // after SOI
    loop {
        // Any bytes up to the next 0xFF are junk (libjpeg warns and skips them), and a marker
        // may be preceded by any number of 0xFF fill bytes.
        while *b.get(i).ok_or(())? != 0xFF {
            i += 1;
        }
        let at = i;
        while *b.get(i).ok_or(())? == 0xFF {
            i += 1;
        }
        let marker = b[i];
        i += 1;
        match marker {
            // A stuffed zero (0xFF00) outside entropy-coded data: more junk.
            0x00 => continue,
            // Standalone markers: TEM, RSTn, SOI.
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 => return Ok(info),
            0xDA => {
                info.sos = Some(at);
                return Ok(info);
            }
            _ => {}
        }
        let len = be16(b, i).ok_or(())? as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && info.sof.is_none() {
            let seg = b.get(i..i + 8).ok_or(())?;
            info.sof = Some(Sof {
                precision: seg[2],
                height: u32::from(u16::from_be_bytes([seg[3], seg[4]])),
                width: u32::from(u16::from_be_bytes([seg[5], seg[6]])),
                components: seg[7],
            });
        }
        if len < 2 {
            // A malformed length: leave the diagnosis to libjpeg.
            return Ok(info);
        }
        i += len;
    }
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

/// Whether the data ends before the image does: no EOI marker after the first scan. 0xFF 0xD9
/// cannot occur inside entropy-coded data (0xFF is stuffed there), and trailing bytes after EOI
/// are harmless. This is what makes Pillow raise "image file is truncated" (even a missing EOI
/// alone does); libjpeg's own "Premature end of JPEG file" warning is not enough, because
/// libjpeg reports only the first warning and an earlier one (junk between markers) hides it.
fn jpeg_truncated(b: &[u8], sos: usize) -> bool {
    // From the end: EOI is normally the last two bytes, so this costs nothing on good files.
    !b[sos..].windows(2).rev().any(|w| w == [0xFF, 0xD9])
}

/// libjpeg's `JWRN_JPEG_EOF`: the data ended before the image did. libjpeg would fill the rest
/// with grey; Pillow raises "image file is truncated" (with `LOAD_TRUNCATED_IMAGES = False`, the
/// default), so this is an error.
const LIBJPEG_EOF: &str = "Premature end of JPEG file";

/// A JPEG whose header libjpeg-turbo has read: its size is known, no pixel memory is taken yet.
pub(super) struct JpegDecoder<'a> {
    bytes: &'a [u8],
    turbo: Turbo,
    header: JpegHeader,
}

/// Checks what Pillow checks before decoding, then reads the header with libjpeg-turbo.
pub(super) fn open(bytes: &[u8]) -> Result<JpegDecoder<'_>, JpegError> {
    let info = markers(bytes)
        .map_err(|()| JpegError::Truncated("the data ends inside the JPEG header".into()))?;
    if let Some(sof) = info.sof {
        // Pillow's JpegImagePlugin accepts the same: 8-bit samples, 1, 3 or 4 components.
        if sof.precision != 8 {
            return Err(JpegError::UnsupportedMode(format!(
                "{}-bit samples; expected 8-bit (PIL cannot read them either)",
                sof.precision
            )));
        }
        if !matches!(sof.components, 1 | 3 | 4) {
            return Err(JpegError::UnsupportedMode(format!(
                "{} colour components; expected 1 (grey), 3 (colour) or 4 (CMYK)",
                sof.components
            )));
        }
    }
    if info.sos.is_some_and(|sos| jpeg_truncated(bytes, sos)) {
        return Err(JpegError::Truncated(
            "no end-of-image marker after the image data".into(),
        ));
    }
    let mut turbo = Turbo::new()?;
    let header = turbo.header(bytes)?;
    Ok(JpegDecoder {
        bytes,
        turbo,
        header,
    })
}

impl JpegDecoder<'_> {
    pub(super) fn width(&self) -> u32 {
        self.header.width
    }

    pub(super) fn height(&self) -> u32 {
        self.header.height
    }

    /// Decodes to RGB as Pillow's `convert("RGB")` gives it. The caller has checked the size.
    pub(super) fn decode(mut self) -> Result<RgbImage, JpegError> {
        let JpegHeader {
            width,
            height,
            layout,
        } = self.header;
        let len = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(layout.channels()))
            .ok_or_else(|| JpegError::Corrupt(format!("impossible size {width}x{height}")))?;
        let mut pixels = vec![0u8; len];
        self.turbo
            .decompress(self.bytes, &self.header, &mut pixels)?;
        // Pillow's mode is L, RGB or CMYK; convert("RGB") from there.
        let data = match layout {
            JpegLayout::Grey => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
            JpegLayout::Cmyk => cmyk_to_rgb(&pixels),
            JpegLayout::Rgb => pixels,
        };
        RgbImage::from_raw(width, height, data)
            .ok_or_else(|| JpegError::Corrupt("decoder returned a short buffer".into()))
    }
}

/// The pixel layout we ask libjpeg-turbo for: the one Pillow's mode has.
#[derive(Debug, Clone, Copy)]
enum JpegLayout {
    Grey,
    Rgb,
    Cmyk,
}

impl JpegLayout {
    fn channels(self) -> usize {
        match self {
            JpegLayout::Grey => 1,
            JpegLayout::Rgb => 3,
            JpegLayout::Cmyk => 4,
        }
    }

    fn pixel_format(self) -> c_int {
        match self {
            JpegLayout::Grey => tj::TJPF_GRAY,
            JpegLayout::Rgb => tj::TJPF_RGB,
            JpegLayout::Cmyk => tj::TJPF_CMYK,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct JpegHeader {
    width: u32,
    height: u32,
    layout: JpegLayout,
}

/// A TurboJPEG 3 decompressor, used through the raw API: a libjpeg *warning* must not stop the
/// decode (Pillow decodes e.g. "Corrupt JPEG data: N extraneous bytes before marker", junk
/// between segments that is common in scraped data), and TurboJPEG reports warnings through the
/// same -1 return as errors. Defaults are Pillow's: accurate integer IDCT, smooth chroma
/// upsampling, no scaling, top-down rows, continue on warnings.
struct Turbo(tj::tjhandle);

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

impl Turbo {
    fn new() -> Result<Self, JpegError> {
        // SAFETY: plain constructor; a null handle is checked below.
        let h = unsafe { tj::tj3Init(tj::TJINIT_DECOMPRESS) };
        if h.is_null() {
            return Err(JpegError::Corrupt("cannot initialise libjpeg-turbo".into()));
        }
        Ok(Self(h))
    }

    /// `Ok` when the call succeeded or libjpeg only warned (TurboJPEG's `TJERR_WARNING`: no
    /// fatal error followed), except for the warning that the data ended early.
    fn check(&mut self, rc: c_int) -> Result<(), JpegError> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or a
        // thread-local buffer), valid until the next call on this thread; it is copied at once.
        // tj3GetErrorCode only reads the handle.
        let (msg, code) = unsafe {
            let msg = CStr::from_ptr(tj::tj3GetErrorStr(self.0))
                .to_string_lossy()
                .into_owned();
            (msg, tj::tj3GetErrorCode(self.0))
        };
        if msg.contains(LIBJPEG_EOF) {
            Err(JpegError::Truncated(msg))
        } else if code == tj::TJERR_WARNING {
            Ok(())
        } else {
            Err(JpegError::Corrupt(msg))
        }
    }

    fn header(&mut self, jpeg: &[u8]) -> Result<JpegHeader, JpegError> {
        // SAFETY: the pointer and length describe `jpeg`, which outlives the call.
        let rc = unsafe { tj::tj3DecompressHeader(self.0, jpeg.as_ptr(), jpeg.len()) };
        self.check(rc)?;
        // SAFETY: reading parameters of a valid handle.
        let get = |p: c_int| unsafe { tj::tj3Get(self.0, p) };
        let (w, h) = (get(tj::TJPARAM_JPEGWIDTH), get(tj::TJPARAM_JPEGHEIGHT));
        let layout = match get(tj::TJPARAM_COLORSPACE) {
            tj::TJCS_GRAY => JpegLayout::Grey,
            tj::TJCS_CMYK | tj::TJCS_YCCK => JpegLayout::Cmyk,
            tj::TJCS_RGB | tj::TJCS_YCbCr => JpegLayout::Rgb,
            other => {
                return Err(JpegError::Corrupt(format!(
                    "unknown JPEG colour space {other}"
                )))
            }
        };
        match (u32::try_from(w), u32::try_from(h)) {
            (Ok(width), Ok(height)) => Ok(JpegHeader {
                width,
                height,
                layout,
            }),
            _ => Err(JpegError::Corrupt(format!(
                "invalid size {w}x{h} in the JPEG header"
            ))),
        }
    }

    /// Decodes into `out`, which holds `width * height * channels` bytes.
    fn decompress(
        &mut self,
        jpeg: &[u8],
        hd: &JpegHeader,
        out: &mut [u8],
    ) -> Result<(), JpegError> {
        let channels = hd.layout.channels();
        if out.len() != hd.width as usize * hd.height as usize * channels {
            return Err(JpegError::Corrupt(
                "output buffer does not match the image size".into(),
            ));
        }
        let pitch = c_int::try_from(hd.width as usize * channels)
            .map_err(|_| JpegError::Corrupt(format!("image too wide ({} pixels)", hd.width)))?;
        // SAFETY: `out` holds exactly `height` rows of `pitch` bytes, which is what
        // tj3Decompress8 writes at scaling factor 1 (the default) for the size that
        // tj3DecompressHeader reported for this same `jpeg`.
        let rc = unsafe {
            tj::tj3Decompress8(
                self.0,
                jpeg.as_ptr(),
                jpeg.len(),
                out.as_mut_ptr(),
                pitch,
                hd.layout.pixel_format(),
            )
        };
        self.check(rc)
    }
}

/// Pillow's CMYK JPEG path: the JPEG plugin unpacks with rawmode `CMYK;I` ("assume adobe
/// conventions", i.e. Photoshop's inverted CMYK), then `convert("RGB")` runs `cmyk2rgb`
/// (Pillow 13.0.0, src/libImaging/Convert.c):
/// `nk = 255 - k; out = clip8(nk - MULDIV255(c, nk))`, where `MULDIV255(a, b)` is
/// `t = a * b + 128; ((t >> 8) + t) >> 8`.
fn cmyk_to_rgb(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for px in raw.chunks_exact(4) {
        // Undo the Adobe inversion: Pillow's CMYK values.
        let [c, m, y, k] = [255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3]];
        let nk = 255 - u32::from(k);
        let muldiv255 = |a: u8| {
            let t = u32::from(a) * nk + 128;
            ((t >> 8) + t) >> 8
        };
        for v in [c, m, y] {
            // nk >= muldiv255(v, nk) for all v <= 255, so this never underflows.
            out.push(nk.saturating_sub(muldiv255(v)).min(255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_matches_pillow_values() {
        // Pillow 13.0.0: Image.new("CMYK", ...).putdata([...]).convert("RGB"), with the file's
        // (inverted) bytes being 255 - these.
        let pil_cmyk = [
            [0u8, 0, 0, 0],
            [255, 0, 0, 0],
            [0, 0, 0, 255],
            [100, 50, 25, 10],
            [200, 200, 200, 200],
            [1, 2, 3, 128],
        ];
        let expected = [
            [255u8, 255, 255],
            [0, 255, 255],
            [0, 0, 0],
            [149, 197, 221],
            [12, 12, 12],
            [127, 126, 126],
        ];
        let raw: Vec<u8> = pil_cmyk.iter().flatten().map(|v| 255 - v).collect();
        let rgb = cmyk_to_rgb(&raw);
        assert_eq!(rgb, expected.iter().flatten().copied().collect::<Vec<_>>());
    }

    #[test]
    fn jpeg_header_walk_handles_truncation_and_junk() {
        assert_eq!(markers(&[0xFF, 0xD8]), Err(()));
        assert_eq!(markers(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]), Err(()));
        // APP0 of length 4, 3 junk bytes, SOF0 (precision 8, 3x2 pixels, 3 components), SOS.
        let b = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 1, 2, 3, 0xFF, 0xC0, 0, 17, 8, 0, 2, 0, 3, 3, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xDA, 0, 2, 0x12, 0xFF, 0x00,
        ];
        let info = markers(&b).unwrap();
        let sof = info.sof.unwrap();
        assert_eq!(
            (sof.precision, sof.width, sof.height, sof.components),
            (8, 3, 2, 3)
        );
        assert_eq!(info.sos, Some(36));
        assert!(jpeg_truncated(&b, 36));
        let complete = [&b[..], &[0xFF, 0xD9, 0x00]].concat();
        assert!(!jpeg_truncated(&complete, 36));
    }
}
