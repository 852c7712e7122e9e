//! Draws a [`Scene`] into a small RGB image: a two-tone background pattern, 1-3 objects
//! (anti-aliased by 2×2 supersampling) in the scene's drawing style, then pixel noise.
//!
//! Each shape is an implicit function on object-local coordinates `(u, v)` in about
//! `[-1, 1]²` (v grows downwards, as image rows do).

use std::f32::consts::{PI, TAU};

use super::attributes::{Shape, Size, Style, Texture};
use super::rng::WorldRng;
use super::scene::Scene;
use crate::image::RgbImage;

/// Object radius as a fraction of the image side, per size.
fn radius_range(size: Size) -> (f32, f32) {
    match size {
        Size::Small => (0.10, 0.13),
        Size::Large => (0.19, 0.24),
    }
}

/// Inner scale of an outline: the part of the shape inside `scale ×` itself is cut away.
const OUTLINE_SCALE: f32 = 0.6;
const SKETCH_SCALE: f32 = 0.72;

/// Renders `scene` at `side × side` pixels; `rng` decides positions, tints and phases.
pub fn render(scene: &Scene, side: u32, rng: &mut WorldRng) -> RgbImage {
    let s = side as usize;
    let mut pixels = background(scene.texture, s, rng);
    let placed = place(scene, s as f32, rng);
    let tint = scene
        .colour
        .rgb()
        .map(|c| (c + rng.range(-18.0, 18.0)).clamp(0.0, 255.0));
    for obj in &placed {
        draw(&mut pixels, s, obj, scene.shape, scene.style, tint);
    }
    if scene.noise > 0.0 {
        for p in pixels.iter_mut() {
            *p += scene.noise * rng.normal();
        }
    }
    let data = pixels
        .iter()
        .map(|&p| p.round().clamp(0.0, 255.0) as u8)
        .collect();
    // The buffer has exactly side² × 3 values, so this cannot fail.
    RgbImage::from_raw(side, side, data).unwrap_or_else(|| RgbImage::new(side, side))
}

/// One object's placement.
struct Placed {
    cx: f32,
    cy: f32,
    r: f32,
    angle: f32,
    /// Phase of sketch dashes and wobble.
    phase: f32,
}

fn place(scene: &Scene, side: f32, rng: &mut WorldRng) -> Vec<Placed> {
    let (lo, hi) = radius_range(scene.size);
    let mut out: Vec<Placed> = Vec::with_capacity(scene.count);
    for _ in 0..scene.count {
        let r = side * rng.range(lo, hi);
        let angle = match scene.shape {
            // Squares and diamonds differ only by rotation: keep them upright.
            Shape::Square | Shape::Diamond => 0.0,
            Shape::Bar => rng.range(0.0, PI),
            _ => rng.range(-0.25, 0.25),
        };
        let phase = rng.range(0.0, TAU);
        // Rejection sampling for non-overlapping objects; after that many tries, overlap.
        let mut best = (side / 2.0, side / 2.0);
        for _ in 0..40 {
            let cx = rng.range(r, side - r);
            let cy = rng.range(r, side - r);
            best = (cx, cy);
            let free = out
                .iter()
                .all(|o| (o.cx - cx).hypot(o.cy - cy) > (o.r + r) * 1.05);
            if free {
                break;
            }
        }
        out.push(Placed {
            cx: best.0,
            cy: best.1,
            r,
            angle,
            phase,
        });
    }
    out
}

fn draw(pixels: &mut [f32], s: usize, o: &Placed, shape: Shape, style: Style, tint: [f32; 3]) {
    let (sin, cos) = o.angle.sin_cos();
    let x0 = (o.cx - o.r - 1.0).floor().max(0.0) as usize;
    let x1 = ((o.cx + o.r + 1.0).ceil() as usize).min(s);
    let y0 = (o.cy - o.r - 1.0).floor().max(0.0) as usize;
    let y1 = ((o.cy + o.r + 1.0).ceil() as usize).min(s);
    for y in y0..y1 {
        for x in x0..x1 {
            let mut cover = 0.0;
            for (dx, dy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let px = (x as f32 + dx - o.cx) / o.r;
                let py = (y as f32 + dy - o.cy) / o.r;
                let u = cos * px + sin * py;
                let v = -sin * px + cos * py;
                if covered(shape, style, u, v, o.phase) {
                    cover += 0.25;
                }
            }
            if cover > 0.0 {
                let i = (y * s + x) * 3;
                for c in 0..3 {
                    pixels[i + c] = pixels[i + c] * (1.0 - cover) + tint[c] * cover;
                }
            }
        }
    }
}

fn covered(shape: Shape, style: Style, u: f32, v: f32, phase: f32) -> bool {
    match style {
        Style::Filled => inside(shape, u, v),
        Style::Outlined => {
            inside(shape, u, v) && !inside(shape, u / OUTLINE_SCALE, v / OUTLINE_SCALE)
        }
        Style::Sketch => {
            // A wobbly, dashed, thin outline: the same shape, drawn as a hurried pen would.
            let wobble = 0.12 * (5.0 * v + phase).sin();
            let (u, v) = (u + wobble, v + 0.12 * (5.0 * u + phase).cos());
            let dash = (7.0 * v.atan2(u) + phase).sin() > -0.2;
            dash && inside(shape, u, v) && !inside(shape, u / SKETCH_SCALE, v / SKETCH_SCALE)
        }
    }
}

/// Whether `(u, v)` is inside the unit-size `shape`.
fn inside(shape: Shape, u: f32, v: f32) -> bool {
    let rho = u.hypot(v);
    match shape {
        Shape::Circle => rho <= 0.92,
        Shape::Square => u.abs().max(v.abs()) <= 0.8,
        Shape::Triangle => {
            // Upward equilateral triangle: the bottom edge and the two slanted edges.
            v <= 0.6 && v >= -0.95 + 1.75 * u.abs()
        }
        Shape::Cross => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        Shape::Ring => (0.55..=0.95).contains(&rho),
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Bar => u.abs() <= 1.0 && v.abs() <= 0.28,
        Shape::Star => {
            // Radius oscillates between 0.42 (notches) and 1.0 (points), five points up.
            let theta = v.atan2(u) + PI / 2.0;
            let t = (theta * 5.0 / TAU).rem_euclid(1.0);
            let tri = (2.0 * t - 1.0).abs();
            rho <= 0.42 + 0.58 * tri
        }
        Shape::Hexagon => (u.abs() * 0.866 + v.abs() * 0.5).max(v.abs()) <= 0.85,
        Shape::Heart => {
            let (x, y) = (u * 1.25, -v * 1.25 + 0.25);
            let a = x * x + y * y - 1.0;
            a * a * a - x * x * y * y * y <= 0.0
        }
        Shape::Crescent => rho <= 0.95 && (u - 0.42).hypot(v + 0.1) > 0.72,
    }
}

/// A two-tone background pattern, as `side² × 3` floats in 0-255.
fn background(texture: Texture, s: usize, rng: &mut WorldRng) -> Vec<f32> {
    let grey = rng.range(70.0, 190.0);
    let base: [f32; 3] = [0, 1, 2].map(|_| (grey + rng.range(-28.0, 28.0)).clamp(0.0, 255.0));
    let shift = rng.range(35.0, 60.0) * if grey > 130.0 { -1.0 } else { 1.0 };
    let other = base.map(|c| (c + shift).clamp(0.0, 255.0));
    let period = rng.range(4.0, 7.0);
    let phase = rng.range(0.0, period);
    let angle = *rng.pick(&[0.0, PI / 2.0, PI / 4.0, 3.0 * PI / 4.0]);
    let (sa, ca) = f32::sin_cos(angle);
    let mut out = vec![0.0; s * s * 3];
    for y in 0..s {
        for x in 0..s {
            let (xf, yf) = (x as f32 + 0.5, y as f32 + 0.5);
            let on = match texture {
                Texture::Plain => false,
                Texture::Striped => band((xf * ca + yf * sa + phase) / (period / 2.0)),
                Texture::Dotted => {
                    let gx = (xf + phase).rem_euclid(period) - period / 2.0;
                    let gy = (yf + phase).rem_euclid(period) - period / 2.0;
                    gx.hypot(gy) < period * 0.24
                }
                Texture::Checkered => {
                    band((xf + phase) / (period / 2.0)) ^ band((yf + phase) / (period / 2.0))
                }
                Texture::Wavy => {
                    let w = yf + 1.8 * (xf * TAU / 9.0 + phase).sin() + phase;
                    band(w / (period / 2.0))
                }
                Texture::Brick => {
                    let h = period.round().max(3.0);
                    let row = ((yf + phase) / h).floor() as i32;
                    let offset = if row % 2 == 0 { 0.0 } else { h };
                    (yf + phase).rem_euclid(h) < 1.0 || (xf + offset).rem_euclid(2.0 * h) < 1.0
                }
                Texture::Grid => {
                    (xf + phase).rem_euclid(period) < 1.0 || (yf + phase).rem_euclid(period) < 1.0
                }
            };
            let tone = if on { &other } else { &base };
            out[(y * s + x) * 3..(y * s + x) * 3 + 3].copy_from_slice(tone);
        }
    }
    out
}

/// Alternating bands of unit width: true on odd ones.
fn band(t: f32) -> bool {
    (t.floor() as i64).rem_euclid(2) == 1
}
