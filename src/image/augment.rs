//! Augmented training views: torchvision's `RandomResizedCrop(size, scale, ratio, BICUBIC)`
//! followed by `RandomHorizontalFlip(0.5)`, as CoOp (scale 0.08-1) and Tip-Adapter (scale
//! 0.5-1) build their training transform, seeded so that a view can be recomputed.
//!
//! On a PIL image torchvision's `resized_crop` is `img.crop(box)` then `img.resize(size,
//! BICUBIC)`; here that is [`crop`] then [`resize_bicubic`], the parity-tested resampler.
//! The crop *geometry* follows `RandomResizedCrop.get_params` line by line, but the random
//! numbers come from our own generator, not torch's: a view is reproducible here, not
//! identical to a particular PyTorch run (which depends on its worker seeding anyway).
//!
//! Each image's view `v` draws from a stream seeded by `(seed, v, image key)`, so a view does
//! not depend on batch order, sharding or which other images are in the set.

use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use super::{crop, resize_bicubic, RgbImage};

/// `RandomResizedCrop` + horizontal flip parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Output side in pixels (the model's input resolution).
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
    /// Flip horizontally with probability 0.5.
    pub flip: bool,
}

/// torchvision's default aspect-ratio range.
pub const DEFAULT_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// The crop window, in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

impl Augment {
    /// CoOp's (Dassl) training view: scale 0.08-1.
    pub fn coop(size: u32) -> Self {
        Augment {
            size,
            scale: (0.08, 1.0),
            ratio: DEFAULT_RATIO,
            flip: true,
        }
    }

    /// Crops of at least half the image's area (scale 0.5-1): Tip-Adapter's cached views.
    pub fn half_area(size: u32) -> Self {
        Augment {
            scale: (0.5, 1.0),
            ..Self::coop(size)
        }
    }

    /// `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform aspect
    /// ratio that fits, else the whole image clamped to the ratio range, centred.
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut ViewRng) -> CropBox {
        let area = f64::from(width) * f64::from(height);
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            // w = int(round(math.sqrt(target_area * aspect_ratio))): Python rounds half to even.
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
                let (w, h) = (w as u32, h as u32);
                let top = rng.below(height - h + 1);
                let left = rng.below(width - w + 1);
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        // Fallback to a central crop.
        let in_ratio = f64::from(width) / f64::from(height.max(1));
        let (w, h) = if in_ratio < self.ratio.0.min(self.ratio.1) {
            let h = (f64::from(width) / self.ratio.0.min(self.ratio.1)).round_ties_even() as u32;
            (width, h.min(height))
        } else if in_ratio > self.ratio.0.max(self.ratio.1) {
            let w = (f64::from(height) * self.ratio.0.max(self.ratio.1)).round_ties_even() as u32;
            (w.min(width), height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }

    /// One augmented view of `img`: crop, bicubic resize to `size` x `size`, maybe flip.
    pub fn apply(&self, img: &RgbImage, rng: &mut ViewRng) -> RgbImage {
        let b = self.crop_box(img.width(), img.height(), rng);
        let cropped = crop(img, i64::from(b.top), i64::from(b.left), b.height, b.width);
        let resized = resize_bicubic(&cropped, self.size, self.size);
        // RandomHorizontalFlip: `if torch.rand(1) < p`; always draw so streams stay aligned.
        let flip = rng.uniform(0.0, 1.0) < 0.5;
        if self.flip && flip {
            hflip(&resized)
        } else {
            resized
        }
    }
}

/// Mirrors an image left to right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    let w = img.width() as usize;
    let mut data = Vec::with_capacity(img.as_raw().len());
    for row in img.as_raw().chunks_exact((w * 3).max(1)) {
        for px in row.chunks_exact(3).rev() {
            data.extend_from_slice(px);
        }
    }
    // Same dimensions and byte count as the input, so `from_raw` cannot fail.
    RgbImage::from_raw(img.width(), img.height(), data).unwrap_or_else(|| img.clone())
}

/// The random stream of one view of one image: SplitMix64 seeded from `(seed, view, key)`.
/// Small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct ViewRng(SplitMix64);

impl ViewRng {
    /// `key` identifies the image (e.g. its path relative to the dataset root).
    pub fn new(seed: u64, view: u32, key: &str) -> Self {
        let mut s = SplitMix64::from_state(seed ^ 0x9e37_79b9_7f4a_7c15);
        let first = s.next_u64().wrapping_add(u64::from(view));
        let mut s = SplitMix64::from_state(s.state() ^ first);
        let second = s.next_u64() ^ crate::hash::fnv1a64(key.as_bytes());
        ViewRng(SplitMix64::from_state(s.state() ^ second))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[lo, hi)` from 53 random bits.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        lo + (hi - lo) * u
    }

    /// Uniform in `0..n` (`n >= 1`), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u32) -> u32 {
        let n = u64::from(n.max(1));
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let r = self.next_u64();
            if r < zone {
                return (r % n) as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        let data = (0..h)
            .flat_map(|y| {
                (0..w).flat_map(move |x| [(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
            })
            .collect();
        RgbImage::from_raw(w, h, data).unwrap()
    }

    #[test]
    fn boxes_respect_scale_ratio_and_bounds() {
        let aug = Augment::half_area(32);
        for i in 0..500 {
            let mut rng = ViewRng::new(1, i, "x.jpg");
            let b = aug.crop_box(200, 100, &mut rng);
            assert!(b.left + b.width <= 200 && b.top + b.height <= 100, "{b:?}");
            let frac = f64::from(b.width * b.height) / 20000.0;
            let ratio = f64::from(b.width) / f64::from(b.height);
            // Rounding to whole pixels moves area and ratio slightly past the sampled range.
            assert!((0.49..=1.01).contains(&frac), "{b:?} area {frac}");
            assert!((0.74..=1.34).contains(&ratio), "{b:?} ratio {ratio}");
        }
    }

    #[test]
    fn views_are_seeded_and_differ() {
        let img = gradient(64, 48);
        let aug = Augment::coop(16);
        let a = aug.apply(&img, &mut ViewRng::new(3, 0, "a.jpg"));
        let again = aug.apply(&img, &mut ViewRng::new(3, 0, "a.jpg"));
        let other_view = aug.apply(&img, &mut ViewRng::new(3, 1, "a.jpg"));
        assert_eq!(a, again);
        assert_ne!(a, other_view);
        assert_eq!((a.width(), a.height()), (16, 16));
    }

    #[test]
    fn a_too_narrow_image_falls_back_to_a_centred_crop() {
        // 10x1000: no box of ratio >= 3/4 fits; the fallback is 10 wide, round(10 / 0.75) = 13 high.
        let aug = Augment::coop(8);
        let b = aug.crop_box(10, 1000, &mut ViewRng::new(0, 0, "k"));
        assert_eq!(
            b,
            CropBox {
                top: 493,
                left: 0,
                height: 13,
                width: 10
            }
        );
    }

    #[test]
    fn flip_mirrors_rows() {
        let img = gradient(3, 2);
        let f = hflip(&img);
        assert_eq!(f.pixel(0, 1), img.pixel(2, 1));
        assert_eq!(hflip(&f), img);
    }

    /// The first views of a few seeded streams, frozen: a change of the generator, of its
    /// seeding from (seed, view, key) or of the order of the draws changes these boxes and
    /// flips, and so every cached augmented feature; such a change must be deliberate (raise
    /// the feature cache's `VERSION` so old files are refused, then update this table). The
    /// flip is checked
    /// through `apply`: its output must be the frozen box resized, mirrored when frozen so.
    #[test]
    fn golden_stream() {
        let (w, h) = (500u32, 375u32);
        // (seed, view, key, Tip-Adapter's scale?) -> (top, left, height, width, flipped)
        type Golden<'a> = (u64, u32, &'a str, bool, (u32, u32, u32, u32, bool));
        #[rustfmt::skip]
        let golden: [Golden; 6] = [
            (1, 0, "a.jpg", false, (32, 153, 250, 285, false)),
            (1, 1, "a.jpg", false, (117, 30, 205, 227, false)),
            (1, 0, "class_3/img 0042.png", false, (44, 175, 271, 285, false)),
            (2, 0, "a.jpg", true, (32, 71, 339, 379, true)),
            (2, 5, "n\u{f6}rd/\u{df}.jpg", true, (10, 28, 363, 360, true)),
            (7, 9, "", true, (8, 14, 314, 349, false)),
        ];
        let img = gradient(w, h);
        let mut seen = Vec::new();
        for (seed, view, key, tip, want) in golden {
            let aug = if tip {
                Augment::half_area(24)
            } else {
                Augment::coop(24)
            };
            let mut rng = ViewRng::new(seed, view, key);
            let b = aug.crop_box(w, h, &mut rng);
            let flipped = rng.uniform(0.0, 1.0) < 0.5;
            seen.push(format!(
                "({seed}, {view}, {key:?}, {tip}, ({}, {}, {}, {}, {flipped})),",
                b.top, b.left, b.height, b.width
            ));
            let out = aug.apply(&img, &mut ViewRng::new(seed, view, key));
            let c = crop(&img, i64::from(want.0), i64::from(want.1), want.2, want.3);
            let resized = resize_bicubic(&c, 24, 24);
            let expected = if want.4 { hflip(&resized) } else { resized };
            assert!(
                out == expected,
                "apply() for {key:?} view {view} left the frozen stream"
            );
        }
        let got = seen.join("\n");
        let want: Vec<String> = golden
            .iter()
            .map(|(seed, view, key, tip, g)| {
                format!(
                    "({seed}, {view}, {key:?}, {tip}, ({}, {}, {}, {}, {})),",
                    g.0, g.1, g.2, g.3, g.4
                )
            })
            .collect();
        assert_eq!(got, want.join("\n"), "the augmentation stream changed");
    }
}
