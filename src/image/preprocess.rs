//! CLIP's evaluation view, as torchvision 0.29.2 computes it on a PIL image:
//! `Resize(n, BICUBIC)` (shorter side to `n`), `CenterCrop(n)`, `ToTensor()`,
//! `Normalize(mean, std)`.
//!
//! [`Preprocess`] is a plain value (serialisable, so a feature cache can record it). The steps
//! are public building blocks ([`shorter_side_size`], [`resize_bicubic`](super::resize_bicubic),
//! [`crop`], [`Preprocess::to_tensor_normalized`]) so that augmented training views
//! (RandomResizedCrop + horizontal flip, seeded) can be added here later from the same parts:
//! torchvision's `RandomResizedCrop` on a PIL image is `img.crop(box)` then
//! `img.resize(size, BICUBIC)`, i.e. [`crop`] then `resize_bicubic`.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{decode_file, resize_bicubic, ImageError, RgbImage};

/// OpenAI CLIP's normalisation mean (clip/clip.py `_transform`), as the Python floats.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's normalisation standard deviation.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Evaluation preprocessing: shorter side to `size` (PIL bicubic), centre crop to
/// `size` x `size`, then `(x / 255 - mean) / std` per channel, in `f32`, channels first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Output height and width in pixels (the model's input resolution).
    pub size: usize,
    /// Per-channel (R, G, B) mean subtracted after scaling to 0..1.
    pub mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Resize straight to `size` x `size` (PIL bicubic), ignoring the aspect ratio, with no
    /// crop: SigLIP's processor (`do_resize` to `{height, width}`, no `do_center_crop`).
    /// Absent from (and `false` in) the cache keys of CLIP's preprocessing, which are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub squash: bool,
}

impl Preprocess {
    /// CLIP's preprocessing at input resolution `size` (224 for ViT-B/32, 336 for ViT-L/14@336).
    pub fn clip(size: usize) -> Self {
        // torchvision turns the Python floats into a float32 tensor: round each f64 to f32
        // (rounding the decimal literal straight to f32 could differ in the last bit).
        Self {
            size,
            mean: CLIP_MEAN.map(|v| v as f32),
            std: CLIP_STD.map(|v| v as f32),
            squash: false,
        }
    }

    /// Number of `f32`s one image becomes: `3 * size * size`.
    pub fn tensor_len(&self) -> usize {
        3 * self.size * self.size
    }

    fn size_u32(&self) -> u32 {
        u32::try_from(self.size).unwrap_or(u32::MAX)
    }

    /// `Resize(size, BICUBIC)`: the shorter side becomes `size`, the longer one
    /// `int(size * long / short)`, resampled as PIL does.
    pub fn resize_shorter(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = shorter_side_size(img.width(), img.height(), self.size_u32());
        resize_bicubic(img, w, h)
    }

    /// `CenterCrop(size)`, with torchvision's offsets (and its zero padding if the image is
    /// smaller than the crop, which cannot happen after [`resize_shorter`](Self::resize_shorter)).
    pub fn center_crop(&self, img: &RgbImage) -> RgbImage {
        let n = self.size_u32();
        let top = center_crop_offset(img.height(), n);
        let left = center_crop_offset(img.width(), n);
        crop(img, top, left, n, n)
    }

    /// `ToTensor()` then `Normalize(mean, std)`: `(v / 255 - mean[c]) / std[c]` in `f32`, the
    /// same operations in the same order as torch, so the values are identical. Layout CHW.
    pub fn to_tensor_normalized(&self, img: &RgbImage) -> Vec<f32> {
        // Only 256 values per channel exist: compute each once.
        let mut table = [[0f32; 256]; 3];
        for (c, t) in table.iter_mut().enumerate() {
            for (v, out) in t.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            r[i] = table[0][px[0] as usize];
            g[i] = table[1][px[1] as usize];
            b[i] = table[2][px[2] as usize];
        }
        out
    }

    /// The whole evaluation view of a decoded image: resize, crop, normalise (or, when
    /// [`squash`](Self::squash), resize to the square and normalise). `(3, size, size)`.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        if self.squash {
            let n = self.size_u32();
            return self.to_tensor_normalized(&resize_bicubic(img, n, n));
        }
        self.to_tensor_normalized(&self.center_crop(&self.resize_shorter(img)))
    }

    /// Decodes `path` and applies [`apply`](Self::apply).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Vec<f32>, ImageError> {
        Ok(self.apply(&decode_file(path)?))
    }

    /// [`load`](Self::load) for many files in parallel (rayon), one result per path, in order,
    /// so the caller can report every bad file rather than the first.
    pub fn load_batch<P: AsRef<Path> + Sync>(
        &self,
        paths: &[P],
    ) -> Vec<Result<Vec<f32>, ImageError>> {
        paths.par_iter().map(|p| self.load(p)).collect()
    }
}

/// torchvision's `_compute_resized_output_size` for an int `size` and `max_size=None`:
/// `short, long = (w, h) if w <= h else (h, w)`; `new_long = int(size * long / short)`.
/// Python's `/` on ints is correctly rounded, as the `f64` division of these exact integers is,
/// and `int()` truncates like `as`. Returns `(width, height)`.
///
/// An empty image (a zero side) has no aspect ratio; it maps to `size` x `size`.
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == 0 {
        return (size, size);
    }
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Where a centred window of `crop_len` starts in a side of `len`, as torchvision's
/// `center_crop` places it: `int(round((len - crop_len) / 2.0))`, where Python's `round` sends
/// halves to the even neighbour (slack 111 -> 56, 31 -> 16, 5 -> 2). HF transformers uses
/// `(len - crop_len) // 2` instead, one pixel off when the slack is odd.
///
/// When the crop is larger, torchvision first pads `(crop_len - len) // 2` zeros before the
/// image; the window then starts that far before it (a negative offset).
pub fn center_crop_offset(len: u32, crop_len: u32) -> i64 {
    let (len, crop_len) = (i64::from(len), i64::from(crop_len));
    if crop_len > len {
        return -((crop_len - len) / 2);
    }
    let slack = len - crop_len;
    let half = slack / 2;
    // slack / 2 is exact for even slack; for odd slack it is half + 0.5: pick the even one.
    if slack % 2 == 0 || half % 2 == 0 {
        half
    } else {
        half + 1
    }
}

/// The `width` x `height` window of `img` whose top-left corner is at (`left`, `top`), which may
/// lie partly or wholly outside the image; outside pixels are 0 (torchvision pads with 0).
pub fn crop(img: &RgbImage, top: i64, left: i64, height: u32, width: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    let (iw, ih) = (i64::from(img.width()), i64::from(img.height()));
    // The overlap of the window with the image, in image coordinates.
    let (x0, x1) = (left.max(0), (left + i64::from(width)).min(iw));
    let (y0, y1) = (top.max(0), (top + i64::from(height)).min(ih));
    if x0 >= x1 || y0 >= y1 {
        return out;
    }
    let src = img.as_raw();
    let dst = &mut out.data;
    let row_bytes = (x1 - x0) as usize * 3;
    for y in y0..y1 {
        let s = ((y * iw + x0) * 3) as usize;
        let d = (((y - top) * i64::from(width) + (x0 - left)) * 3) as usize;
        dst[d..d + row_bytes].copy_from_slice(&src[s..s + row_bytes]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offset_rounds_half_to_even_like_python() {
        // int(round(d / 2.0)) for d = 0..=8: 0 0 1 2 2 2 3 4 4
        let expected = [0, 0, 1, 2, 2, 2, 3, 4, 4];
        for (d, &e) in expected.iter().enumerate() {
            assert_eq!(center_crop_offset(224 + d as u32, 224), e, "slack {d}");
        }
        assert_eq!(center_crop_offset(335, 224), 56); // 55.5 -> 56
        assert_eq!(center_crop_offset(331, 224), 54); // 53.5 -> 54
        assert_eq!(center_crop_offset(95, 64), 16); // 15.5 -> 16
        assert_eq!(center_crop_offset(85, 64), 10); // 10.5 -> 10
    }

    #[test]
    fn crop_offset_pads_like_torchvision_when_the_image_is_smaller() {
        // padding_ltrb = [(crop - w) // 2, ..., (crop - w + 1) // 2, ...]
        assert_eq!(center_crop_offset(60, 64), -2);
        assert_eq!(center_crop_offset(61, 64), -1);
    }

    #[test]
    fn output_size_matches_torchvision() {
        // torchvision.transforms.functional._compute_resized_output_size((h, w), [n])
        assert_eq!(shorter_side_size(500, 375, 224), (298, 224)); // 298.67
        assert_eq!(shorter_side_size(375, 500, 224), (224, 298));
        assert_eq!(shorter_side_size(335, 224, 64), (95, 64)); // 95.71
        assert_eq!(shorter_side_size(37, 53, 224), (224, 320)); // 320.86
        assert_eq!(shorter_side_size(64, 64, 224), (224, 224));
        assert_eq!(shorter_side_size(400, 60, 64), (426, 64)); // 426.67
        assert_eq!(shorter_side_size(1, 3, 3), (3, 9));
    }

    #[test]
    fn crop_pads_with_zero_outside() {
        let img = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let out = crop(&img, -1, -1, 3, 3);
        #[rustfmt::skip]
        let expected = vec![
            0, 0, 0,  0, 0, 0,  0, 0, 0,
            0, 0, 0,  1, 2, 3,  4, 5, 6,
            0, 0, 0,  0, 0, 0,  0, 0, 0,
        ];
        assert_eq!(out.as_raw(), expected);
        assert_eq!(crop(&img, 5, 5, 2, 2).as_raw(), [0u8; 12]);
    }

    #[test]
    fn tensor_is_chw_and_normalised() {
        let p = Preprocess::clip(1);
        let img = RgbImage::from_raw(1, 1, vec![0, 255, 128]).unwrap();
        let t = p.to_tensor_normalized(&img);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0], (0.0 - p.mean[0]) / p.std[0]);
        assert_eq!(t[1], (1.0 - p.mean[1]) / p.std[1]);
        assert_eq!(t[2], (128.0 / 255.0 - p.mean[2]) / p.std[2]);
    }
}
