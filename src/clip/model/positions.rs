//! Resizing a learned positional embedding to another patch grid, for a model run at an input
//! size other than the one it was trained at.

use candle_core::Tensor;

use crate::clip::error::{InputError, Result};

/// Which of PyTorch's bicubic resizes (`F.interpolate(mode='bicubic', align_corners=False)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// `antialias=False`: Keys' cubic with A = -0.75, four taps, indices clamped at the edges.
    Bicubic,
    /// `antialias=True` (open_clip's `resize_pos_embed`): Pillow's filter, A = -0.5, widened by
    /// the scale when shrinking, taps outside the grid dropped and the rest renormalised.
    BicubicAntialias,
}

/// Resizes a `(prefix + g0², C)` positional embedding to `(prefix + g², C)`, keeping the first
/// `prefix` rows (class or pooled token) as they are.
pub fn resize_positions(
    pos: &Tensor,
    prefix: usize,
    grid: usize,
    interpolation: Interpolation,
) -> Result<Tensor> {
    let (n, c) = pos.dims2()?;
    let cells = n.saturating_sub(prefix);
    let old = (cells as f64).sqrt().round() as usize;
    if old * old != cells || old == 0 {
        return Err(InputError::PositionGrid { rows: n }.into());
    }
    let data = pos.to_vec2::<f32>()?;
    let taps = match interpolation {
        Interpolation::Bicubic => cubic_weights(old, grid),
        Interpolation::BicubicAntialias => antialias_weights(old, grid),
    };
    let mut out: Vec<Vec<f32>> = data[..prefix].to_vec();
    for row in &taps {
        for col in &taps {
            let mut acc = vec![0f32; c];
            for &(iy, wy) in row {
                for &(ix, wx) in col {
                    let w = (wy * wx) as f32;
                    acc.iter_mut()
                        .zip(&data[prefix + iy * old + ix])
                        .for_each(|(a, v)| *a += w * v);
                }
            }
            out.push(acc);
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Ok(Tensor::from_vec(
        flat,
        (prefix + grid * grid, c),
        pos.device(),
    )?)
}

/// PyTorch's bicubic interpolation taps (A = -0.75, align_corners=False, indices clamped).
fn cubic_weights(input: usize, output: usize) -> Vec<Vec<(usize, f64)>> {
    const A: f64 = -0.75;
    let cubic = |x: f64| {
        let x = x.abs();
        if x <= 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let src = (o as f64 + 0.5) * scale - 0.5;
            let floor = src.floor();
            let t = src - floor;
            (-1..=2)
                .map(|d| {
                    let i = (floor as i64 + d).clamp(0, input as i64 - 1) as usize;
                    (i, cubic(t - d as f64))
                })
                .collect()
        })
        .collect()
}

/// PyTorch's antialiased bicubic taps (`_compute_indices_weights_aa`, as Pillow's resampling):
/// A = -0.5, support 2 widened by the scale when shrinking, weights normalised to sum to 1.
fn antialias_weights(input: usize, output: usize) -> Vec<Vec<(usize, f64)>> {
    const A: f64 = -0.5;
    let filter = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let (support, inv) = match scale >= 1.0 {
        true => (2.0 * scale, 1.0 / scale),
        false => (2.0, 1.0),
    };
    (0..output)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(input);
            let taps: Vec<(usize, f64)> = (lo..hi)
                .map(|i| (i, filter((i as f64 - center + 0.5) * inv)))
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            match total != 0.0 {
                true => taps.into_iter().map(|(i, w)| (i, w / total)).collect(),
                false => taps,
            }
        })
        .collect()
}
