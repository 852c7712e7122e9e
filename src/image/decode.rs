//! Any supported file to 8-bit RGB, as `PIL.Image.open(path).convert("RGB")` gives it.
//!
//! * The format comes from the magic bytes, never the extension (datasets hold PNGs named
//!   `.jpg`; PIL sniffs too).
//! * JPEG goes through libjpeg-turbo ([`super::jpeg`]), the library Pillow links: the result is
//!   bit-identical to PIL's.
//! * PNG, WebP, BMP and GIF go through the `image` crate, then [`to_rgb`] maps its pixel layout
//!   to RGB with the rules of Pillow's `convert("RGB")` for the mode Pillow would have opened
//!   the file in (alpha is dropped, not composited; 16-bit grey is clipped at 255; ...).
//! * EXIF orientation is ignored, as `Image.open` and torchvision ignore it.

use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use ::image::DynamicImage;

use super::jpeg::{self, JpegError};
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

/// JPEG: the header first, so that the size is checked before the pixels are allocated.
fn decode_jpeg(bytes: &[u8], ctx: &Ctx) -> Result<RgbImage, ImageError> {
    let decoder = jpeg::open(bytes).map_err(|e| ctx.jpeg(e))?;
    ctx.check_size(decoder.width(), decoder.height())?;
    decoder.decode().map_err(|e| ctx.jpeg(e))
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

    fn jpeg(&self, e: JpegError) -> ImageError {
        match e {
            JpegError::Truncated(detail) => self.truncated(detail),
            JpegError::Corrupt(detail) => self.corrupt(detail),
            JpegError::UnsupportedMode(detail) => self.unsupported_mode(detail),
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
        Format::Jpeg => jpeg::frame_size(b),
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
    let read = || ::image::ImageReader::with_format(Cursor::new(bytes), image_format).decode();
    let decoded = catch_decoder_panic(read, ctx)?.map_err(|e| image_crate_error(e, ctx))?;
    // Pillow opens 16-bit greyscale PNGs (colour type 0) as mode I;16 even with a tRNS chunk,
    // while the `image` crate then hands out grey+alpha.
    let png_grey16 = ctx.format == Format::Png && bytes.get(24..26) == Some(&[16, 0]);
    to_rgb(decoded, png_grey16, ctx)
}

/// Runs a pure-Rust decoder of the `image` crate family, turning a panic inside it into the
/// corrupt-file error it should have been: one bad file must not end an extraction of thousands.
/// Fuzzing found one (image-webp 0.2.4, `huffman.rs`: an overflowing `u16` sum of code-length
/// counts in a lossless WebP's Huffman table, a panic wherever overflow checks are on, as in
/// debug and test builds; release builds wrap and then reject the table).
fn catch_decoder_panic<T>(decode: impl FnOnce() -> T, ctx: &Ctx) -> Result<T, ImageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|panic| {
        let message = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        ctx.corrupt(format!(
            "the {} decoder failed on it ({message})",
            ctx.format
        ))
    })
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
    fn a_panic_inside_a_decoder_is_a_corrupt_file_error() {
        let ctx = Ctx {
            path: Path::new("x.webp"),
            format: Format::Webp,
        };
        let err = catch_decoder_panic(|| panic!("attempt to add with overflow"), &ctx);
        let msg = err.expect_err("a panic is an error").to_string();
        assert!(msg.starts_with("x.webp: corrupt WebP file: the WebP decoder failed on it ("));
        assert!(msg.contains("attempt to add with overflow"), "{msg}");
        assert_eq!(catch_decoder_panic(|| 7, &ctx).ok(), Some(7));
    }

    #[test]
    fn the_lossless_webp_that_overflows_image_webp_is_refused_in_every_build() {
        // Panics inside image-webp where overflow checks are on (this test's build), wraps and
        // is rejected where they are off: a corrupt-file error either way.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/image_decode/webp-huffman-count-overflow.webp"
        );
        let bytes = std::fs::read(path).expect("the fixture is committed");
        match decode_bytes(&bytes, "x.webp") {
            Err(ImageError::Corrupt { format, .. }) => assert_eq!(format, Format::Webp),
            other => panic!("expected a corrupt-WebP error, got {other:?}"),
        }
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
}
