//! JPEG through libjpeg-turbo, as Pillow decodes it.
//!
//! Pillow 13.0.0 links libjpeg-turbo 3.2.0; the `turbojpeg` crate builds the vendored 3.1.0.
//! With TurboJPEG's defaults, which are Pillow's settings (accurate integer IDCT, smooth
//! "fancy" chroma upsampling, no scaling), the pixels are bit-identical to PIL's;
//! `docs/preprocessing.md` has the measurements, and those of the `image` crate's zune-jpeg,
//! which is not. This file also holds what Pillow does around the decoder: which files it
//! refuses (truncated, not 8-bit), and its CMYK conversion.

use super::decode::{be16, Ctx};
use super::{ImageError, RgbImage};

/// The frame header (SOFn) of a JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sof {
    precision: u8,
    pub(super) width: u32,
    pub(super) height: u32,
    components: u8,
}

/// What the marker walk found before the first scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct JpegMarkers {
    pub(super) sof: Option<Sof>,
    /// Offset of the first SOS marker: entropy-coded data follows it.
    sos: Option<usize>,
}

/// Walks the markers up to the first scan, skipping junk between segments as libjpeg's
/// `next_marker` does. `Err(())`: the data ends inside the header, i.e. the file is truncated.
pub(super) fn markers(b: &[u8]) -> Result<JpegMarkers, ()> {
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

/// Whether the data ends before the image does: no EOI marker after the first scan. 0xFF 0xD9
/// cannot occur inside entropy-coded data (0xFF is stuffed there), and trailing bytes after EOI
/// are harmless. This is what makes Pillow raise "image file is truncated" (even a missing EOI
/// alone does); libjpeg's own "Premature end of JPEG file" warning is not enough, because
/// libjpeg reports only the first warning and an earlier one (junk between markers) hides it.
fn jpeg_truncated(b: &[u8], sos: usize) -> bool {
    // From the end: EOI is normally the last two bytes, so this costs nothing on good files.
    !b[sos..].windows(2).rev().any(|w| w == [0xFF, 0xD9])
}

/// The first messages of libjpeg's non-fatal warnings (`JWRN_*` in libjpeg-turbo's
/// `jerror.h`) other than "Premature end of JPEG file". Pillow's decoder ignores warnings, so
/// we keep the pixels as it does. TurboJPEG keeps the first warning's message unless a fatal
/// error follows (libjpeg prints only the first warning, and every fatal error), so a message
/// from this list means that no fatal error happened.
const LIBJPEG_WARNINGS: &[&str] = &[
    "Corrupt JPEG data",
    "Warning: unknown JFIF revision number",
    "Inconsistent progression sequence",
    "Invalid SOS parameters for sequential JPEG",
    "Unknown Adobe color transform code",
    "Application transferred too many scanlines",
];

/// libjpeg's `JWRN_JPEG_EOF`: the data ended before the image did. libjpeg would fill the rest
/// with grey; Pillow raises "image file is truncated" (with `LOAD_TRUNCATED_IMAGES = False`, the
/// default), so this is an error.
const LIBJPEG_EOF: &str = "Premature end of JPEG file";

pub(super) fn decode(bytes: &[u8], ctx: &Ctx) -> Result<RgbImage, ImageError> {
    let info =
        markers(bytes).map_err(|()| ctx.truncated("the data ends inside the JPEG header"))?;
    if let Some(sof) = info.sof {
        // Pillow's JpegImagePlugin accepts the same: 8-bit samples, 1, 3 or 4 components.
        if sof.precision != 8 {
            return Err(ctx.unsupported_mode(format!(
                "{}-bit samples; expected 8-bit (PIL cannot read them either)",
                sof.precision
            )));
        }
        if !matches!(sof.components, 1 | 3 | 4) {
            return Err(ctx.unsupported_mode(format!(
                "{} colour components; expected 1 (grey), 3 (colour) or 4 (CMYK)",
                sof.components
            )));
        }
    }
    if info.sos.is_some_and(|sos| jpeg_truncated(bytes, sos)) {
        return Err(ctx.truncated("no end-of-image marker after the image data"));
    }
    let fail = |msg: String| {
        if msg.contains(LIBJPEG_EOF) {
            ctx.truncated(msg)
        } else {
            ctx.corrupt(msg)
        }
    };
    let mut tj = Turbo::new().map_err(fail)?;
    let header = tj.header(bytes).map_err(fail)?;
    ctx.check_size(header.width, header.height)?;
    let channels = header.layout.channels();
    let len = (header.width as usize)
        .checked_mul(header.height as usize)
        .and_then(|n| n.checked_mul(channels))
        .ok_or_else(|| {
            ctx.corrupt(format!(
                "impossible size {}x{}",
                header.width, header.height
            ))
        })?;
    let mut pixels = vec![0u8; len];
    tj.decompress(bytes, &header, &mut pixels).map_err(fail)?;
    // Pillow's mode is L, RGB or CMYK; convert("RGB") from there.
    let data = match header.layout {
        JpegLayout::Grey => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        JpegLayout::Cmyk => cmyk_to_rgb(&pixels),
        JpegLayout::Rgb => pixels,
    };
    RgbImage::from_raw(header.width, header.height, data)
        .ok_or_else(|| ctx.corrupt("decoder returned a short buffer"))
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

    fn pixel_format(self) -> turbojpeg::raw::TJPF {
        match self {
            JpegLayout::Grey => turbojpeg::raw::TJPF_TJPF_GRAY,
            JpegLayout::Rgb => turbojpeg::raw::TJPF_TJPF_RGB,
            JpegLayout::Cmyk => turbojpeg::raw::TJPF_TJPF_CMYK,
        }
    }
}

struct JpegHeader {
    width: u32,
    height: u32,
    layout: JpegLayout,
}

/// A TurboJPEG 3 decompressor, used through the raw API because the `turbojpeg` crate's safe
/// `Decompressor` turns libjpeg *warnings* into errors before decoding (its `decompress` first
/// re-reads the header and gives up on "Corrupt JPEG data: N extraneous bytes before marker"),
/// while Pillow decodes such files. Defaults are Pillow's: accurate integer IDCT, smooth
/// chroma upsampling, no scaling, top-down rows, continue on warnings.
struct Turbo(turbojpeg::raw::tjhandle);

impl Drop for Turbo {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { turbojpeg::raw::tj3Destroy(self.0) }
    }
}

impl Turbo {
    fn new() -> Result<Self, String> {
        // SAFETY: plain constructor; a null handle is checked below.
        let h = unsafe { turbojpeg::raw::tj3Init(turbojpeg::raw::TJINIT_TJINIT_DECOMPRESS as _) };
        if h.is_null() {
            return Err("cannot initialise libjpeg-turbo".into());
        }
        Ok(Self(h))
    }

    /// The last error's message; `Ok` when it is only a libjpeg warning.
    fn check(&mut self, rc: std::ffi::c_int) -> Result<(), String> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle (or a
        // thread-local buffer), valid until the next call on this thread; it is copied at once.
        let msg = unsafe { std::ffi::CStr::from_ptr(turbojpeg::raw::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned();
        if LIBJPEG_WARNINGS.iter().any(|w| msg.starts_with(w)) {
            Ok(())
        } else {
            Err(msg)
        }
    }

    fn header(&mut self, jpeg: &[u8]) -> Result<JpegHeader, String> {
        let len = jpeg
            .len()
            .try_into()
            .map_err(|_| "file too large".to_string())?;
        // SAFETY: the pointer and length describe `jpeg`, which outlives the call.
        let rc = unsafe { turbojpeg::raw::tj3DecompressHeader(self.0, jpeg.as_ptr(), len) };
        self.check(rc)?;
        // SAFETY: reading parameters of a valid handle.
        let get = |p: turbojpeg::raw::TJPARAM| unsafe { turbojpeg::raw::tj3Get(self.0, p as _) };
        let (w, h) = (
            get(turbojpeg::raw::TJPARAM_TJPARAM_JPEGWIDTH),
            get(turbojpeg::raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        let colorspace = get(turbojpeg::raw::TJPARAM_TJPARAM_COLORSPACE);
        let layout = match u32::try_from(colorspace) {
            Ok(turbojpeg::raw::TJCS_TJCS_GRAY) => JpegLayout::Grey,
            Ok(turbojpeg::raw::TJCS_TJCS_CMYK | turbojpeg::raw::TJCS_TJCS_YCCK) => JpegLayout::Cmyk,
            Ok(_) => JpegLayout::Rgb,
            Err(_) => return Err(format!("unknown JPEG colour space {colorspace}")),
        };
        match (u32::try_from(w), u32::try_from(h)) {
            (Ok(width), Ok(height)) => Ok(JpegHeader {
                width,
                height,
                layout,
            }),
            _ => Err(format!("invalid size {w}x{h} in the JPEG header")),
        }
    }

    /// Decodes into `out`, which holds `width * height * channels` bytes.
    fn decompress(&mut self, jpeg: &[u8], hd: &JpegHeader, out: &mut [u8]) -> Result<(), String> {
        let channels = hd.layout.channels();
        if out.len() != hd.width as usize * hd.height as usize * channels {
            return Err("output buffer does not match the image size".into());
        }
        let len = jpeg
            .len()
            .try_into()
            .map_err(|_| "file too large".to_string())?;
        let pitch = (hd.width as usize * channels)
            .try_into()
            .map_err(|_| format!("image too wide ({} pixels)", hd.width))?;
        // SAFETY: `out` holds exactly `height` rows of `pitch` bytes, which is what
        // tj3Decompress8 writes at scaling factor 1 (the default) for the size that
        // tj3DecompressHeader reported for this same `jpeg`.
        let rc = unsafe {
            turbojpeg::raw::tj3Decompress8(
                self.0,
                jpeg.as_ptr(),
                len,
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
