//! Any supported file to 8-bit RGB, as `PIL.Image.open(path).convert("RGB")` gives it.
//!
//! * The format comes from the magic bytes, never the extension (datasets hold PNGs named
//!   `.jpg`; PIL sniffs too).
//! * JPEG goes through libjpeg-turbo (the `turbojpeg` crate, vendored 3.1), the library Pillow
//!   links, with Pillow's settings (accurate integer IDCT, smooth "fancy" chroma upsampling):
//!   the result is bit-identical to PIL's. `docs/preprocessing.md` has the measurements against
//!   the `image` crate's zune-jpeg, which is not.
//! * PNG, WebP, BMP and GIF go through the `image` crate, then [`to_rgb`] maps its pixel layout
//!   to RGB with the rules of Pillow's `convert("RGB")` for the mode Pillow would have opened
//!   the file in (alpha is dropped, not composited; 16-bit grey is clipped at 255; ...).
//! * EXIF orientation is ignored, as `Image.open` and torchvision ignore it.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::DynamicImage;

use super::{ImageError, RgbImage};

/// The formats we decode, for error messages.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, BMP or GIF";

/// A supported container format, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Bmp,
    Gif,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Webp => "WebP",
            Format::Bmp => "BMP",
            Format::Gif => "GIF",
        })
    }
}

/// Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`)
/// with `DecompressionBombError`; so do we, before allocating anything.
const MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Supported(Format),
    /// A known image format we do not decode (named, for the error message).
    Unsupported(&'static str),
    Unknown,
}

/// Recognises the format from the magic bytes (the same signatures Pillow's plugins accept).
pub fn sniff_format(bytes: &[u8]) -> Sniffed {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        Sniffed::Supported(Format::Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Sniffed::Supported(Format::Png)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Sniffed::Supported(Format::Gif)
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Sniffed::Supported(Format::Webp)
    } else if starts(b"BM") {
        Sniffed::Supported(Format::Bmp)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Sniffed::Unsupported("TIFF")
    } else if starts(b"\0\0\0\x0cjP  \r\n\x87\n") || starts(&[0xFF, 0x4F, 0xFF, 0x51]) {
        Sniffed::Unsupported("JPEG 2000")
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        Sniffed::Unsupported("JPEG XL")
    } else if bytes.get(4..8) == Some(b"ftyp") {
        match bytes.get(8..12) {
            Some(b"avif") | Some(b"avis") => Sniffed::Unsupported("AVIF"),
            Some(b"heic") | Some(b"heix") | Some(b"mif1") | Some(b"msf1") => {
                Sniffed::Unsupported("HEIF")
            }
            _ => Sniffed::Unknown,
        }
    } else if starts(b"8BPS") {
        Sniffed::Unsupported("Photoshop")
    } else if starts(&[0, 0, 1, 0]) {
        Sniffed::Unsupported("ICO")
    } else if starts(b"qoif") {
        Sniffed::Unsupported("QOI")
    } else {
        Sniffed::Unknown
    }
}

/// Reads and decodes an image file to RGB. Errors name `path`.
pub fn decode_file(path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    decode(&bytes, path)
}

/// Decodes an in-memory image to RGB; `name` (a path or URL) is what errors report.
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    decode(bytes, Path::new(name))
}

fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
        });
    }
    let format = match sniff_format(bytes) {
        Sniffed::Supported(f) => f,
        Sniffed::Unsupported(format) => {
            return Err(ImageError::UnsupportedFormat {
                path: path.to_path_buf(),
                format,
            })
        }
        Sniffed::Unknown => {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                magic: describe_magic(bytes),
            })
        }
    };
    let ctx = Ctx { path, format };
    // Check the header's size first: the decoders report a 0-pixel image in many different
    // ways (or not at all), and "zero-sized" is the clearer message.
    if let Some((width, height)) = header_size(format, bytes) {
        ctx.check_size(width, height)?;
    }
    let img = match format {
        Format::Jpeg => decode_jpeg(bytes, &ctx)?,
        _ => decode_other(bytes, &ctx)?,
    };
    ctx.check_size(img.width(), img.height())?;
    Ok(img)
}

/// The file being decoded, to build errors.
struct Ctx<'a> {
    path: &'a Path,
    format: Format,
}

impl Ctx<'_> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn check_size(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSized {
                path: self.path(),
                format: self.format,
                width,
                height,
            });
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > MAX_PIXELS {
            return Err(ImageError::TooLarge {
                path: self.path(),
                format: self.format,
                detail: format!(
                    "{width}x{height} = {pixels} pixels, more than {MAX_PIXELS} \
                     (PIL's decompression-bomb limit)"
                ),
            });
        }
        Ok(())
    }

    fn corrupt(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            path: self.path(),
            format: self.format,
            detail: detail.into(),
        }
    }

    fn truncated(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Truncated {
            path: self.path(),
            format: self.format,
            detail: detail.into(),
        }
    }

    fn unsupported_mode(&self, detail: impl Into<String>) -> ImageError {
        ImageError::UnsupportedMode {
            path: self.path(),
            format: self.format,
            detail: detail.into(),
        }
    }
}

/// `"bytes 6e 61 6d 65 ... (\"name\")"`: enough for the user to recognise a text file.
fn describe_magic(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("bytes {} (\"{}\")", hex.join(" "), text)
}

// ------------------------------------------------------------------------------------------
// Header sizes
// ------------------------------------------------------------------------------------------

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// (width, height) as the file header states it, where it is at a fixed place; `None` when the
/// header is too short to say (the decoder then reports the problem).
fn header_size(format: Format, b: &[u8]) -> Option<(u32, u32)> {
    match format {
        // Signature, then the IHDR chunk: length, "IHDR", width, height.
        Format::Png => (b.get(12..16) == Some(b"IHDR")).then_some((be32(b, 16)?, be32(b, 20)?)),
        Format::Gif => gif_size(b),
        Format::Bmp => {
            // File header (14 bytes), then the DIB header; its size says which layout.
            match le32(b, 14)? {
                12 => Some((le16(b, 18)?, le16(b, 20)?)),
                _ => Some((le32(b, 18)?.unsigned_abs(), le32(b, 22)?.unsigned_abs())),
            }
        }
        Format::Jpeg => jpeg_markers(b).ok()?.sof.map(|s| (s.width, s.height)),
        Format::Webp => {
            // RIFF header (12 bytes), then the first chunk. Only lossy VP8 can state a 0 size:
            // VP8L and VP8X store size - 1.
            (b.get(12..16) == Some(b"VP8 ") && b.get(23..26) == Some(&[0x9d, 0x01, 0x2a]))
                .then_some((le16(b, 26)? & 0x3fff, le16(b, 28)? & 0x3fff))
        }
    }
}

/// The size Pillow gives a GIF: the logical screen, grown to contain the first frame
/// (GifImagePlugin `_seek`: `self._size = max(x1, self.size[0]), max(y1, self.size[1])`).
fn gif_size(b: &[u8]) -> Option<(u32, u32)> {
    let (screen_w, screen_h) = (le16(b, 6)?, le16(b, 8)?);
    let flags = *b.get(10)?;
    let mut i = 13;
    if flags & 0x80 != 0 {
        // Global colour table: 3 * 2^(n + 1) bytes.
        i += 3 << ((flags & 7) + 1);
    }
    // Extensions (0x21, label, sub-blocks ending in a 0 length) until the image descriptor.
    while *b.get(i)? == 0x21 {
        i += 2;
        loop {
            let n = *b.get(i)? as usize;
            i += 1 + n;
            if n == 0 {
                break;
            }
        }
    }
    if *b.get(i)? != 0x2C {
        return None;
    }
    let (left, top) = (le16(b, i + 1)?, le16(b, i + 3)?);
    let (w, h) = (le16(b, i + 5)?, le16(b, i + 7)?);
    Some((screen_w.max(left + w), screen_h.max(top + h)))
}

// ------------------------------------------------------------------------------------------
// JPEG
// ------------------------------------------------------------------------------------------

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

/// Walks the markers up to the first scan, skipping junk between segments as libjpeg's
/// `next_marker` does. `Err(())`: the data ends inside the header, i.e. the file is truncated.
fn jpeg_markers(b: &[u8]) -> Result<JpegMarkers, ()> {
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

fn decode_jpeg(bytes: &[u8], ctx: &Ctx) -> Result<RgbImage, ImageError> {
    let info =
        jpeg_markers(bytes).map_err(|()| ctx.truncated("the data ends inside the JPEG header"))?;
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

// ------------------------------------------------------------------------------------------
// PNG, WebP, BMP, GIF
// ------------------------------------------------------------------------------------------

fn decode_other(bytes: &[u8], ctx: &Ctx) -> Result<RgbImage, ImageError> {
    let image_format = match ctx.format {
        Format::Png => ::image::ImageFormat::Png,
        Format::Webp => ::image::ImageFormat::WebP,
        Format::Bmp => ::image::ImageFormat::Bmp,
        Format::Gif => ::image::ImageFormat::Gif,
        Format::Jpeg => ::image::ImageFormat::Jpeg,
    };
    // The reader's default limits (512 MiB per allocation) stop decompression bombs.
    let decoded = ::image::ImageReader::with_format(Cursor::new(bytes), image_format)
        .decode()
        .map_err(|e| image_crate_error(e, ctx))?;
    // Pillow opens 16-bit greyscale PNGs (colour type 0) as mode I;16 even with a tRNS chunk,
    // while the `image` crate then hands out grey+alpha.
    let png_grey16 = ctx.format == Format::Png && bytes.get(24..26) == Some(&[16, 0]);
    to_rgb(decoded, png_grey16, ctx)
}

fn image_crate_error(e: ::image::ImageError, ctx: &Ctx) -> ImageError {
    use ::image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ctx.truncated(io.to_string())
        }
        E::Limits(l) => ImageError::TooLarge {
            path: ctx.path(),
            format: ctx.format,
            detail: l.to_string(),
        },
        E::Unsupported(u) => ctx.unsupported_mode(u.to_string()),
        other => {
            let msg = other.to_string();
            // Some decoders report running out of data as a format error.
            let lower = msg.to_ascii_lowercase();
            if lower.contains("unexpected end") || lower.contains("eof") {
                ctx.truncated(msg)
            } else {
                ctx.corrupt(msg)
            }
        }
    }
}

/// Pillow's `convert("RGB")`, applied to the layout the `image` crate decoded, for the mode
/// Pillow opens the same file in (PngImagePlugin `_MODES`, Convert.c):
///
/// | file                        | Pillow mode  | to RGB                              |
/// |-----------------------------|--------------|-------------------------------------|
/// | grey 1/2/4/8-bit            | 1 / L        | replicate (low depths scaled to 0..255, both sides) |
/// | grey + alpha, RGBA          | LA / RGBA    | drop alpha (no compositing)         |
/// | palette (+ tRNS)            | P            | palette colour, alpha dropped       |
/// | 16-bit grey (PNG type 0)    | I;16         | `min(v, 255)` replicated (Convert.c `I16_RGB` clips) |
/// | 16-bit RGB(A), grey+alpha   | RGB / RGBA   | high byte (unpackers `RGB;16B`, `LA;16B`, `RGBA;16B`) |
fn to_rgb(img: DynamicImage, png_grey16: bool, ctx: &Ctx) -> Result<RgbImage, ImageError> {
    let (w, h) = (img.width(), img.height());
    let data: Vec<u8> = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => b.iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => b.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLuma16(b) => b.iter().flat_map(|&v| [clip16(v); 3]).collect(),
        DynamicImage::ImageLumaA16(b) if png_grey16 => {
            b.chunks_exact(2).flat_map(|p| [clip16(p[0]); 3]).collect()
        }
        DynamicImage::ImageLumaA16(b) => b.chunks_exact(2).flat_map(|p| [hi(p[0]); 3]).collect(),
        DynamicImage::ImageRgb16(b) => b.iter().map(|&v| hi(v)).collect(),
        DynamicImage::ImageRgba16(b) => b
            .chunks_exact(4)
            .flat_map(|p| [hi(p[0]), hi(p[1]), hi(p[2])])
            .collect(),
        other => {
            return Err(ctx.unsupported_mode(format!(
                "{:?} pixels; expected 8- or 16-bit grey, grey+alpha, RGB or RGBA",
                other.color()
            )))
        }
    };
    RgbImage::from_raw(w, h, data).ok_or_else(|| ctx.corrupt("decoder returned a short buffer"))
}

/// Pillow's I;16 -> 8-bit conversion clips (it does not scale).
fn clip16(v: u16) -> u8 {
    v.min(255) as u8
}

/// Pillow's 16-bit big-endian unpackers keep the most significant byte.
fn hi(v: u16) -> u8 {
    (v >> 8) as u8
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
    fn sniffing_ignores_extensions_and_names_unsupported_formats() {
        assert_eq!(
            sniff_format(b"\xff\xd8\xff\xe0"),
            Sniffed::Supported(Format::Jpeg)
        );
        assert_eq!(
            sniff_format(b"RIFF\0\0\0\0WEBPVP8 "),
            Sniffed::Supported(Format::Webp)
        );
        assert_eq!(sniff_format(b"RIFF\0\0\0\0WAVEfmt "), Sniffed::Unknown);
        assert_eq!(
            sniff_format(b"MM\0*\0\0\0\x08"),
            Sniffed::Unsupported("TIFF")
        );
        assert_eq!(sniff_format(b"name,label\n"), Sniffed::Unknown);
    }

    #[test]
    fn jpeg_header_walk_handles_truncation_and_junk() {
        assert_eq!(jpeg_markers(&[0xFF, 0xD8]), Err(()));
        assert_eq!(jpeg_markers(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]), Err(()));
        // APP0 of length 4, 3 junk bytes, SOF0 (precision 8, 3x2 pixels, 3 components), SOS.
        let b = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 1, 2, 3, 0xFF, 0xC0, 0, 17, 8, 0, 2, 0, 3, 3, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xDA, 0, 2, 0x12, 0xFF, 0x00,
        ];
        let info = jpeg_markers(&b).unwrap();
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
