//! Bicubic resampling that reproduces `PIL.Image.resize(size, Image.BICUBIC)` bit for bit.
//!
//! This is the parity-critical file, so it holds nothing else. No Rust crate matches Pillow here
//! (`image` and `fast_image_resize` differ in 9-22 % of bytes, see docs/preprocessing.md): the
//! differences come from the filter support, the tap window rounding and Pillow's fixed-point
//! arithmetic, all of which are re-derived below from Pillow 13.0.0's
//! `src/libImaging/Resample.c` (<https://github.com/python-pillow/Pillow/blob/13.0.0/src/libImaging/Resample.c>),
//! functions `bicubic_filter`, `precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`, `ImagingResampleInner`.
//! Every floating-point step is done in `f64` in the same order as the C code, so the
//! coefficients are the same doubles and round to the same integers.
//!
//! The two passes do not commute (the first is rounded to 8 bits), so their order matters.
//! Pillow 13 picks it in `ImagingResampleInner` (`vertical_first` below); the Resample.c of
//! earlier releases always ran the horizontal pass first.

use super::RgbImage;

/// Pillow: "8 bits for result. Filter can have negative areas. In one case the sum of the
/// coefficients will be negative, in the other it will be more than 1.0. That is why we need two
/// extra bits for overflow and int type." `#define PRECISION_BITS (32 - 8 - 2)`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Accumulators start at one half (in fixed point), so the final shift rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `static struct filter BICUBIC = {bicubic_filter, 2.0};`
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic convolution kernel with a = -0.5 (Pillow's `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for one axis: output index `o` reads input samples
/// `start[o] .. start[o] + len[o]` with weights `weights[o * ksize ..][.. len[o]]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` (with box = the whole input) followed by `normalize_coeffs_8bpc`.
fn taps(in_size: u32, out_size: u32) -> Taps {
    // filterscale = scale = (double)(in1 - in0) / outSize; clamped to >= 1 so that upscaling
    // interpolates and downscaling widens the kernel (antialiasing).
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let out = out_size as usize;
    let mut t = Taps {
        start: Vec::with_capacity(out),
        len: Vec::with_capacity(out),
        ksize,
        weights: vec![0; out * ksize],
    };
    let mut k = vec![0f64; ksize];
    for xx in 0..out {
        let center = (xx as f64 + 0.5) * scale;
        // `(int)(center - support + 0.5)`: C truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let n = ((xmax - xmin).max(0) as usize).min(ksize);
        let xmin = xmin as usize;

        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            // `(x + xmin - center + 0.5) * ss`: integer sum first, then the doubles.
            let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut t.weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            // normalize_coeffs_8bpc: round half away from zero, then truncate.
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        t.start.push(xmin);
        t.len.push(n);
    }
    t
}

/// Pillow's `clip8`: `clip8_lookups[in >> PRECISION_BITS]`, a table clamping to 0..=255.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow 13's pass order: the vertical pass runs first when it removes more than twice as many
/// rows as the horizontal pass removes columns, `in_h - out_h > 0 && in_h - out_h > 2 * (in_w -
/// out_w)` (a signed comparison, so any horizontal upscale with a vertical downscale qualifies);
/// otherwise the horizontal pass runs first. Read from `ImagingResampleInner` in Pillow 13.0.0's
/// build and checked against `Image.resize` on random sizes (tests/resize_order.rs).
fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    let removed_rows = i64::from(in_h) - i64::from(out_h);
    let removed_cols = i64::from(in_w) - i64::from(out_w);
    removed_rows > 0 && removed_rows > 2 * removed_cols
}

/// Resizes to `width` x `height` exactly as `PIL.Image.resize((width, height), Image.BICUBIC)`
/// does for an RGB image: two separable passes, each rounded to 8 bits, each skipped when its
/// dimension does not change, in the order `vertical_first` gives.
///
/// A zero target dimension gives an empty image; an empty source gives a black one.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width(), img.height());
    if width == 0 || height == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    if (width, height) == (in_w, in_h) {
        return img.clone();
    }
    let data = if width != in_w && height != in_h && vertical_first(in_w, in_h, width, height) {
        // The vertical pass over every column, then the horizontal pass over its rows.
        let rows = vertical(img.as_raw(), in_w as usize, 0, &taps(in_h, height));
        horizontal(
            &rows,
            in_w as usize,
            0..height as usize,
            &taps(in_w, width),
            width,
        )
    } else {
        horizontal_then_vertical(img, width, height)
    };
    // The length holds by construction; `new` is only the fallback that keeps this total.
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

/// The horizontal pass (if the width changes), then the vertical one (if the height does).
fn horizontal_then_vertical(img: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let (in_w, in_h) = (img.width(), img.height());
    let need_horizontal = width != in_w;
    let need_vertical = height != in_h;

    // ImagingResampleInner: the horizontal pass only computes the source rows the vertical pass
    // will read (ybox_first .. ybox_last). That saves work without changing any value.
    let vtaps = need_vertical.then(|| taps(in_h, height));
    let rows = match &vtaps {
        Some(v) => {
            let last = height as usize - 1;
            v.start[0]..v.start[last] + v.len[last]
        }
        None => 0..in_h as usize,
    };

    // Either way `src` holds exactly the source rows `rows`, `width` pixels wide.
    let resized_rows;
    let src: &[u8] = if need_horizontal {
        resized_rows = horizontal(
            img.as_raw(),
            in_w as usize,
            rows.clone(),
            &taps(in_w, width),
            width,
        );
        &resized_rows
    } else {
        let bytes_per_row = in_w as usize * 3;
        &img.as_raw()[rows.start * bytes_per_row..rows.end * bytes_per_row]
    };
    match &vtaps {
        Some(v) => vertical(src, width as usize, rows.start, v),
        None => src.to_vec(),
    }
}

/// ImagingResampleHorizontal_8bpc over `rows` of an RGB image `src_w` pixels wide.
fn horizontal(
    src: &[u8],
    src_w: usize,
    rows: std::ops::Range<usize>,
    t: &Taps,
    out_w: u32,
) -> Vec<u8> {
    let out_w = out_w as usize;
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (row, dst) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let line = &src[row * src_w * 3..(row + 1) * src_w * 3];
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let (start, n) = (t.start[xx], t.len[xx]);
            let k = &t.weights[xx * t.ksize..xx * t.ksize + n];
            let input = &line[start * 3..(start + n) * 3];
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &w) in input.chunks_exact(3).zip(k) {
                r += i32::from(p[0]) * w;
                g += i32::from(p[1]) * w;
                b += i32::from(p[2]) * w;
            }
            px[0] = clip8(r);
            px[1] = clip8(g);
            px[2] = clip8(b);
        }
    }
    out
}

/// ImagingResampleVertical_8bpc. `src` holds rows `first_row ..` of the (horizontally resized)
/// image, `width` pixels wide. Rows are accumulated whole, which vectorises; integer sums do
/// not depend on the order, so this equals Pillow's per-pixel loop.
fn vertical(src: &[u8], width: usize, first_row: usize, t: &Taps) -> Vec<u8> {
    let stride = width * 3;
    let out_h = t.start.len();
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, dst) in out.chunks_exact_mut(stride).enumerate() {
        acc.fill(HALF);
        let (start, n) = (t.start[yy] - first_row, t.len[yy]);
        let k = &t.weights[yy * t.ksize..yy * t.ksize + n];
        for (i, &w) in k.iter().enumerate() {
            let line = &src[(start + i) * stride..(start + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_keys_cubic() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
    }

    #[test]
    fn taps_sum_to_one_in_fixed_point() {
        for (i, o) in [(500, 224), (37, 64), (224, 224), (3, 1), (1, 7)] {
            let t = taps(i, o);
            for xx in 0..o as usize {
                let s: i32 = t.weights[xx * t.ksize..][..t.len[xx]].iter().sum();
                // Rounding each tap can leave the sum a few units of 2^-22 off.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= t.len[xx] as i32,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn vertical_first_on_both_sides_of_pillows_rule() {
        // (in_w, in_h, out_w, out_h, vertical first?)
        for (iw, ih, ow, oh, want) in [
            (40, 64, 32, 32, true),   // 32 rows > 2 * 8 columns
            (60, 60, 32, 4, false),   // 56 rows = 2 * 28 columns
            (60, 60, 33, 4, true),    // 56 rows > 2 * 27 columns
            (40, 64, 64, 16, true),   // horizontal upscale, vertical downscale
            (60, 60, 100, 90, false), // both upscaled: no rows removed
            (60, 60, 30, 60, false),  // no rows removed
            (500, 375, 298, 224, false),
            (40, 100, 20, 50, true), // shorter side of a portrait taller than 2:1
        ] {
            assert_eq!(
                vertical_first(iw, ih, ow, oh),
                want,
                "{iw}x{ih} -> {ow}x{oh}"
            );
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_raw(5, 4, [10u8, 200, 255].repeat(20)).unwrap();
        for (w, h) in [(2, 3), (11, 9), (5, 1), (1, 4)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(
                out.as_raw(),
                [10u8, 200, 255].repeat((w * h) as usize),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let img = RgbImage::new(3, 3);
        assert_eq!(resize_bicubic(&img, 0, 5).as_raw().len(), 0);
        assert_eq!(
            resize_bicubic(&RgbImage::new(0, 4), 2, 2).as_raw(),
            [0u8; 12]
        );
        assert_eq!(resize_bicubic(&img, 3, 3), img);
    }
}
