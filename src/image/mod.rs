//! Image input: decode any supported file to 8-bit RGB, then CLIP's evaluation preprocessing,
//! bit-compatible with the Python reference that CoOp/Dassl (and so CLIP-Adapter) run:
//!
//! ```text
//! PIL.Image.open(path).convert("RGB")       decode.rs      (JPEG: jpeg.rs, libjpeg-turbo as Pillow)
//! Resize(n, InterpolationMode.BICUBIC)      resize.rs      (Pillow's resampler, fixed point)
//! CenterCrop(n)                             preprocess.rs  (torchvision's rounding)
//! ToTensor(); Normalize(mean, std)          preprocess.rs  (f32, CHW)
//! ```
//!
//! Parity is checked against fixtures written by `scripts/fixtures/images.py` (Pillow 13.0.0,
//! torchvision 0.29.2) in `tests/preprocess.rs`; `docs/preprocessing.md` has the semantics, the
//! JPEG decoder decision with its measurements, and the speed.
//!
//! Every failure is an [`ImageError`] naming the file and what was expected; no input panics.

pub mod augment;
mod decode;
mod jpeg;
mod preprocess;
mod resize;

use std::fmt;
use std::path::PathBuf;

pub use decode::{decode_bytes, decode_file, sniff_format, Format, SUPPORTED_FORMATS};
pub use preprocess::{
    center_crop_offset, crop, shorter_side_size, Preprocess, CLIP_MEAN, CLIP_STD,
};
pub use resize::resize_bicubic;

/// An 8-bit RGB image, rows top to bottom, pixels `[r, g, b]` left to right.
///
/// The fields are private so that `data.len() == width * height * 3` always holds; the resampler
/// and the crop index into `data` relying on it.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl RgbImage {
    /// A black image. Either dimension may be 0 (an empty image).
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize * 3],
        }
    }

    /// Wraps row-major RGB bytes; `None` unless `data.len() == width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        let expected = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (data.len() == expected).then_some(Self {
            width,
            height,
            data,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The row-major RGB bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y`, or `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }
}

impl fmt::Debug for RgbImage {
    // The pixel bytes would drown any assertion message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

/// Why an image could not be read. Every variant names the file (`path`; for
/// [`decode_bytes`] the name the caller gave) and says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("{}: image file not found", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: cannot read image file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: file is empty (0 bytes); expected an image ({SUPPORTED_FORMATS})", path.display())]
    Empty { path: PathBuf },

    #[error(
        "{}: not an image: the file starts with {magic}, which matches no supported format \
         ({SUPPORTED_FORMATS})",
        path.display()
    )]
    NotAnImage { path: PathBuf, magic: String },

    #[error("{}: {format} images are not supported; expected {SUPPORTED_FORMATS}", path.display())]
    UnsupportedFormat { path: PathBuf, format: &'static str },

    #[error(
        "{}: {format} file is truncated ({detail}); the reference (PIL) refuses it too",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        format: Format,
        detail: String,
    },

    #[error("{}: corrupt {format} file: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        format: Format,
        detail: String,
    },

    #[error(
        "{}: {format} image has zero size ({width}x{height}); expected width and height >= 1",
        path.display()
    )]
    ZeroSized {
        path: PathBuf,
        format: Format,
        width: u32,
        height: u32,
    },

    #[error("{}: unsupported {format} pixel layout: {detail}", path.display())]
    UnsupportedMode {
        path: PathBuf,
        format: Format,
        detail: String,
    },

    #[error("{}: {format} image is too large to decode: {detail}", path.display())]
    TooLarge {
        path: PathBuf,
        format: Format,
        detail: String,
    },
}

impl ImageError {
    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageError::NotFound { path }
            | ImageError::Io { path, .. }
            | ImageError::Empty { path }
            | ImageError::NotAnImage { path, .. }
            | ImageError::UnsupportedFormat { path, .. }
            | ImageError::Truncated { path, .. }
            | ImageError::Corrupt { path, .. }
            | ImageError::ZeroSized { path, .. }
            | ImageError::UnsupportedMode { path, .. }
            | ImageError::TooLarge { path, .. } => path,
        }
    }
}
