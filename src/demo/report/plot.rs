//! A small line-chart renderer: panels of series on a log2 x axis, one shared legend, PNG out.
//!
//! The demo needs one figure (accuracy vs shots); a plotting crate would bring system font
//! lookups and far more than that. This draws with `image` and the `font8x8` bitmap glyphs, so
//! the output is identical on every machine. Layout is fixed-size per panel: no text measuring
//! beyond `8 px × scale` per character.

use ::image::{ImageError, ImageFormat, Rgb, RgbImage};
use font8x8::{UnicodeFonts, BASIC_FONTS, GREEK_FONTS, LATIN_FONTS};

/// An RGB colour.
pub type Colour = [u8; 3];

/// One line: `points` are `(x, y)`; points with a non-finite coordinate or `x <= 0` (no log)
/// are skipped and their neighbours joined. Points are drawn in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub colour: Colour,
    /// Dashed line (a reference, such as zero-shot), solid otherwise.
    pub dashed: bool,
    pub points: Vec<(f32, f32)>,
}

/// One chart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    /// Labelled x positions (log2 axis); empty: the x values of the points.
    pub x_ticks: Vec<f32>,
    /// The y axis; `None`: fitted to the data, widened to round steps.
    pub y_range: Option<(f32, f32)>,
}

/// Panels in a grid of `columns`, and one legend of every distinct series label: in the first
/// free grid cell when there is one, below the grid otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub panels: Vec<Panel>,
    pub columns: usize,
    pub x_label: String,
    pub y_label: String,
}

/// Panel size and the margins around its plot area, in pixels.
pub const PANEL_W: u32 = 440;
pub const PANEL_H: u32 = 320;
const LEFT: i32 = 64;
const RIGHT: i32 = 24;
const TOP: i32 = 56;
const BOTTOM: i32 = 52;
/// Legend row height.
const ROW: i32 = 26;

const WHITE: Colour = [255, 255, 255];
const INK: Colour = [40, 40, 40];
const GRID: Colour = [222, 222, 222];

/// Where a panel's data lands: the plot area and the ranges it shows (x as log2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axes {
    pub left: i32,
    pub top: i32,
    pub width: i32,
    pub height: i32,
    pub log2_x: (f32, f32),
    pub y: (f32, f32),
    /// Distance between y gridlines.
    pub y_step: f32,
}

impl Axes {
    /// The pixel of a data point, or `None` where it cannot be placed (non-finite, `x <= 0`).
    pub fn to_pixel(self, x: f32, y: f32) -> Option<(i32, i32)> {
        if !(x > 0.0 && x.is_finite() && y.is_finite()) {
            return None;
        }
        let fx = (x.log2() - self.log2_x.0) / (self.log2_x.1 - self.log2_x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        // Clamped far outside the image, so wild values cannot overflow the sums below.
        let scaled = |f: f32, n: i32| (f * (n - 1) as f32).round().clamp(-1e6, 1e6) as i32;
        let px = self.left + scaled(fx, self.width);
        let py = self.top + self.height - 1 - scaled(fy, self.height);
        Some((px, py))
    }

    fn contains(&self, (x, y): (i32, i32)) -> bool {
        x >= self.left && x < self.left + self.width && y >= self.top && y < self.top + self.height
    }

    /// Ranges for `panel` with its plot area at `origin` (the panel's top-left corner).
    fn fit(panel: &Panel, origin: (i32, i32)) -> Axes {
        let points = || panel.series.iter().flat_map(|s| s.points.iter().copied());
        let ok = |x: f32, y: f32| x > 0.0 && x.is_finite() && y.is_finite();
        let xs: Vec<f32> = (panel.x_ticks.iter().copied().filter(|&x| ok(x, 0.0)))
            .chain(points().filter(|&(x, y)| ok(x, y)).map(|p| p.0))
            .map(f32::log2)
            .collect();
        // Pad so end points sit inside the box; a single x value gets a unit either side.
        let log2_x = padded(span(&xs).unwrap_or((0.0, 4.0)), 0.06, 1.0);
        let (y, y_step) = match panel
            .y_range
            .filter(|(lo, hi)| hi > lo && lo.is_finite() && hi.is_finite())
        {
            Some(r) => (r, nice_step(r.1 - r.0)),
            None => {
                let ys: Vec<f32> = points().filter(|&(x, y)| ok(x, y)).map(|p| p.1).collect();
                let (lo, hi) = padded(span(&ys).unwrap_or((0.0, 1.0)), 0.0, 1.0);
                let step = nice_step(hi - lo);
                (
                    ((lo / step).floor() * step, (hi / step).ceil() * step),
                    step,
                )
            }
        };
        Axes {
            left: origin.0 + LEFT,
            top: origin.1 + TOP,
            width: PANEL_W as i32 - LEFT - RIGHT,
            height: PANEL_H as i32 - TOP - BOTTOM,
            log2_x,
            y,
            y_step,
        }
    }
}

fn span(v: &[f32]) -> Option<(f32, f32)> {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (lo <= hi).then_some((lo, hi))
}

/// Widens by `frac` of the span on each side, or by `flat` when the span is (nearly) empty.
fn padded((lo, hi): (f32, f32), frac: f32, flat: f32) -> (f32, f32) {
    if hi - lo < 1e-6 {
        (lo - flat, hi + flat)
    } else {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    }
}

/// A 1, 2 or 5 × 10^k step giving about five gridlines over `span`.
fn nice_step(span: f32) -> f32 {
    let raw = (span / 5.0).max(1e-6);
    let mag = 10f32.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|&n| norm <= n)
        .unwrap_or(10.0)
}

/// Distinct series (by label), in order of first appearance: the legend's entries.
fn legend_entries(panels: &[Panel]) -> Vec<&Series> {
    let mut out: Vec<&Series> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !out.iter().any(|o| o.label == s.label) {
            out.push(s);
        }
    }
    out
}

impl Figure {
    fn columns(&self) -> usize {
        self.columns.max(1)
    }

    fn rows(&self) -> usize {
        self.panels.len().div_ceil(self.columns())
    }

    /// The grid cell the legend takes, if one is free and tall enough for it.
    fn legend_cell(&self) -> Option<usize> {
        let fits = legend_entries(&self.panels).len() as i32 * ROW <= PANEL_H as i32 - 2 * ROW;
        (self.panels.len() < self.rows() * self.columns() && fits).then_some(self.panels.len())
    }

    /// Legend entries laid out left to right below the grid, wrapping: `(x, y)` offsets.
    fn legend_below(&self) -> Vec<(i32, i32)> {
        let width = (self.columns() as u32 * PANEL_W) as i32;
        let (mut x, mut y) = (16, 12);
        let mut at = Vec::new();
        for s in legend_entries(&self.panels) {
            let w = 48 + text_width(&s.label, 2) + 28;
            if x > 16 && x + w > width {
                (x, y) = (16, y + ROW);
            }
            at.push((x, y));
            x += w;
        }
        at
    }

    /// Image size in pixels.
    pub fn size(&self) -> (u32, u32) {
        let below = match (self.legend_cell(), self.legend_below().last()) {
            (None, Some(&(_, y))) => (y + ROW + 8) as u32,
            _ => 0,
        };
        let w = self.columns() as u32 * PANEL_W;
        (w, (self.rows() as u32 * PANEL_H + below).max(1))
    }

    fn origin(&self, cell: usize) -> (i32, i32) {
        let (c, r) = (cell % self.columns(), cell / self.columns());
        ((c as u32 * PANEL_W) as i32, (r as u32 * PANEL_H) as i32)
    }

    /// Where panel `i`'s data is drawn (the mapping `render` uses).
    pub fn axes(&self, i: usize) -> Option<Axes> {
        Some(Axes::fit(self.panels.get(i)?, self.origin(i)))
    }

    /// The figure on a white background, [`Figure::size`] pixels.
    pub fn render(&self) -> RgbImage {
        let (w, h) = self.size();
        let mut img = RgbImage::from_pixel(w, h, Rgb(WHITE));
        for (i, panel) in self.panels.iter().enumerate() {
            let a = Axes::fit(panel, self.origin(i));
            draw_frame(&mut img, panel, &a, &self.x_label, &self.y_label);
            // Reference (dashed) lines last: they often coincide with a method's line, and
            // their gaps leave that line visible.
            let solid_first = (panel.series.iter().filter(|s| !s.dashed))
                .chain(panel.series.iter().filter(|s| s.dashed));
            for s in solid_first {
                let mut pts: Vec<(i32, i32, f32)> = (s.points.iter())
                    .filter_map(|&(x, y)| a.to_pixel(x, y).map(|(px, py)| (px, py, x)))
                    .collect();
                pts.sort_by(|p, q| p.2.total_cmp(&q.2));
                let pixels: Vec<(i32, i32)> = pts.iter().map(|p| (p.0, p.1)).collect();
                polyline(&mut img, &pixels, s.colour, s.dashed, Some(&a));
                // Whole markers, even on the box's edge (data at a round limit such as 100 %).
                for &p in pixels.iter().filter(|&&p| a.contains(p)) {
                    square(&mut img, p, 3, s.colour, None);
                }
            }
        }
        let entries = legend_entries(&self.panels);
        let at: Vec<(i32, i32)> = match self.legend_cell() {
            Some(cell) => {
                let (x, y) = self.origin(cell);
                (0..entries.len() as i32)
                    .map(|k| (x + LEFT, y + TOP + k * ROW))
                    .collect()
            }
            None => {
                let top = (self.rows() as u32 * PANEL_H) as i32;
                (self.legend_below().into_iter())
                    .map(|(x, y)| (x, top + y))
                    .collect()
            }
        };
        for (s, (x, y)) in entries.into_iter().zip(at) {
            let mid = y + 8;
            polyline(
                &mut img,
                &[(x, mid), (x + 40, mid)],
                s.colour,
                s.dashed,
                None,
            );
            square(&mut img, (x + 20, mid), 3, s.colour, None);
            text(&mut img, (x + 48, y), &s.label, 2, INK);
        }
        img
    }

    /// [`Figure::render`] encoded as a PNG file.
    pub fn to_png_bytes(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = std::io::Cursor::new(Vec::new());
        self.render().write_to(&mut out, ImageFormat::Png)?;
        Ok(out.into_inner())
    }
}

/// Gridlines, box, tick labels, title and axis labels of one panel.
fn draw_frame(img: &mut RgbImage, panel: &Panel, a: &Axes, x_label: &str, y_label: &str) {
    let (right, bottom) = (a.left + a.width - 1, a.top + a.height - 1);
    let decimals = if a.y_step >= 1.0 {
        0
    } else {
        (-a.y_step.log10()).ceil() as usize
    };
    let first = (a.y.0 / a.y_step - 1e-3).ceil() as i32;
    let last = (a.y.1 / a.y_step + 1e-3).floor() as i32;
    for k in first..=last.min(first.saturating_add(50)) {
        let v = k as f32 * a.y_step;
        let Some((_, py)) = a.to_pixel(1.0, v) else {
            continue;
        };
        fill(img, (a.left, py), (right, py), GRID);
        fill(img, (a.left - 4, py), (a.left - 1, py), INK);
        let label = format!("{v:.decimals$}");
        text(
            img,
            (a.left - 8 - text_width(&label, 2), py - 8),
            &label,
            2,
            INK,
        );
    }
    let mut ticks = panel.x_ticks.clone();
    if ticks.is_empty() {
        ticks = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        ticks.sort_by(f32::total_cmp);
        ticks.dedup();
    }
    for x in ticks {
        let Some((px, _)) = a.to_pixel(x, a.y.0).filter(|&p| a.contains(p)) else {
            continue;
        };
        fill(img, (px, a.top), (px, bottom), GRID);
        fill(img, (px, bottom + 1), (px, bottom + 4), INK);
        let label = if x.fract() == 0.0 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        };
        text(
            img,
            (px - text_width(&label, 2) / 2, bottom + 8),
            &label,
            2,
            INK,
        );
    }
    for (p, q) in [
        ((a.left, a.top), (right, a.top)),
        ((a.left, bottom), (right, bottom)),
    ] {
        fill(img, p, q, INK);
    }
    fill(img, (a.left, a.top), (a.left, bottom), INK);
    fill(img, (right, a.top), (right, bottom), INK);
    text(img, (a.left, a.top - 46), &panel.title, 2, INK);
    text(
        img,
        (a.left - text_width(y_label, 1) / 2, a.top - 18),
        y_label,
        1,
        INK,
    );
    let xl = (
        a.left + a.width / 2 - text_width(x_label, 1) / 2,
        bottom + 32,
    );
    text(img, xl, x_label, 1, INK);
}

/// Sets a pixel if it is in the image (and inside `clip`'s plot area when given).
fn put(img: &mut RgbImage, (x, y): (i32, i32), c: Colour, clip: Option<&Axes>) {
    let inside = clip.is_none_or(|a| a.contains((x, y)));
    if inside && x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(c));
    }
}

/// A filled rectangle between two corners (inclusive): lines of the frame.
fn fill(img: &mut RgbImage, p: (i32, i32), q: (i32, i32), c: Colour) {
    for y in p.1.min(q.1)..=p.1.max(q.1) {
        for x in p.0.min(q.0)..=p.0.max(q.0) {
            put(img, (x, y), c, None);
        }
    }
}

fn square(img: &mut RgbImage, (x, y): (i32, i32), r: i32, c: Colour, clip: Option<&Axes>) {
    for dy in -r..=r {
        for dx in -r..=r {
            put(img, (x + dx, y + dy), c, clip);
        }
    }
}

/// A 3-px line through `pts`; dashes (8 on, 5 off) continue across the joints.
fn polyline(img: &mut RgbImage, pts: &[(i32, i32)], c: Colour, dashed: bool, clip: Option<&Axes>) {
    let mut travelled = 0.0f32;
    for w in pts.windows(2) {
        let (dx, dy) = ((w[1].0 - w[0].0) as f32, (w[1].1 - w[0].1) as f32);
        let len = dx.hypot(dy);
        // Half-pixel steps: no gaps on steep segments; capped for points mapped far outside.
        let n = ((len * 2.0).ceil() as usize).clamp(1, 20_000);
        for i in 0..=n {
            let t = i as f32 / n as f32;
            if dashed && (travelled + t * len) % 13.0 >= 8.0 {
                continue;
            }
            let p = (w[0].0 as f32 + t * dx, w[0].1 as f32 + t * dy);
            square(img, (p.0.round() as i32, p.1.round() as i32), 1, c, clip);
        }
        travelled += len;
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    s.chars().count() as i32 * 8 * scale
}

/// The glyph of `c`: ASCII, Latin-1 and Greek (α) have one; dashes read as '-', anything else
/// as '?', so no text can make rendering fail.
fn glyph(c: char) -> [u8; 8] {
    let c = if matches!(c, '–' | '—' | '−') {
        '-'
    } else {
        c
    };
    (BASIC_FONTS.get(c))
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Draws `s` with its top-left corner at `at`, each glyph pixel a `scale`×`scale` block.
fn text(img: &mut RgbImage, at: (i32, i32), s: &str, scale: i32, c: Colour) {
    for (i, ch) in s.chars().enumerate() {
        let x0 = at.0 + i as i32 * 8 * scale;
        for (row, bits) in glyph(ch).into_iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let p = (x0 + col * scale, at.1 + row as i32 * scale);
                    fill(img, p, (p.0 + scale - 1, p.1 + scale - 1), c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Colour = [214, 39, 40];
    const BLUE: Colour = [31, 119, 180];

    fn series(label: &str, colour: Colour, points: &[(f32, f32)]) -> Series {
        Series {
            label: label.into(),
            colour,
            dashed: false,
            points: points.to_vec(),
        }
    }

    fn figure(panels: Vec<Panel>, columns: usize) -> Figure {
        Figure {
            panels,
            columns,
            x_label: "shots".into(),
            y_label: "accuracy (%)".into(),
        }
    }

    fn shots_panel(title: &str, a: &[f32], b: &[f32]) -> Panel {
        let shots = [1.0, 2.0, 4.0, 8.0, 16.0];
        let pts = |v: &[f32]| {
            shots
                .iter()
                .copied()
                .zip(v.iter().copied())
                .collect::<Vec<_>>()
        };
        Panel {
            title: title.into(),
            series: vec![
                series("ours", RED, &pts(a)),
                series("theirs", BLUE, &pts(b)),
            ],
            x_ticks: shots.to_vec(),
            y_range: None,
        }
    }

    fn pixel(img: &RgbImage, (x, y): (i32, i32)) -> Colour {
        img.get_pixel(x as u32, y as u32).0
    }

    #[test]
    fn png_decodes_to_the_figure_size() {
        let p = shots_panel("task", &[40.0, 50.0, 55.0, 60.0, 62.0], &[30.0; 5]);
        let f = figure(vec![p.clone(), p.clone(), p], 2);
        assert_eq!(
            f.size(),
            (2 * PANEL_W, 2 * PANEL_H),
            "legend in the free cell"
        );
        let img = ::image::load_from_memory(&f.to_png_bytes().unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), f.size());
        assert_eq!(img.to_rgb8(), f.render());
    }

    #[test]
    fn each_series_colour_is_drawn_at_its_points() {
        let f = figure(
            vec![
                shots_panel("a", &[40.0, 50.0, 55.0, 60.0, 62.0], &[30.0; 5]),
                shots_panel(
                    "b",
                    &[10.0, 20.0, 30.0, 40.0, 50.0],
                    &[90.0, 80.0, 70.0, 60.0, 55.0],
                ),
            ],
            2,
        );
        let img = f.render();
        for (i, panel) in f.panels.iter().enumerate() {
            let a = f.axes(i).unwrap();
            for s in &panel.series {
                for &(x, y) in &s.points {
                    let p = a.to_pixel(x, y).unwrap();
                    assert!(a.contains(p), "panel {i}: ({x}, {y}) outside the plot area");
                    assert_eq!(
                        pixel(&img, p),
                        s.colour,
                        "panel {i} {}: ({x}, {y})",
                        s.label
                    );
                }
            }
            // Log2 x: equal shot ratios are equal distances.
            let px = |x| a.to_pixel(x, 50.0).unwrap().0;
            assert!((px(2.0) - px(1.0) - (px(16.0) - px(8.0))).abs() <= 1);
        }
        // No free cell: the legend goes below the grid, swatches in the series' colours.
        let (w, h) = f.size();
        assert!(h > PANEL_H);
        let below: Vec<Colour> = (PANEL_H..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(below.contains(&RED) && below.contains(&BLUE));
    }

    #[test]
    fn different_inputs_give_different_images() {
        let base = figure(
            vec![shots_panel(
                "a",
                &[40.0, 50.0, 55.0, 60.0, 62.0],
                &[30.0; 5],
            )],
            2,
        );
        let mut moved = base.clone();
        moved.panels[0].series[0].points[2].1 = 45.0;
        let mut renamed = base.clone();
        renamed.panels[0].title = "b".into();
        let mut dashed = base.clone();
        dashed.panels[0].series[1].dashed = true;
        let img = base.render();
        for other in [moved, renamed, dashed] {
            assert_ne!(img, other.render());
        }
        assert_eq!(img, base.render(), "rendering is deterministic");
    }

    #[test]
    fn degenerate_inputs_render_without_panicking() {
        let empty = Panel {
            title: "no series".into(),
            ..Panel::default()
        };
        let no_points = Panel {
            title: "α — β ∞ 日本".into(),
            series: vec![series("σ ≈ 1 → ?", RED, &[])],
            ..Panel::default()
        };
        let one_shot = Panel {
            title: "one shot".into(),
            series: vec![series("ours", RED, &[(16.0, 62.0)])],
            x_ticks: vec![16.0],
            y_range: None,
        };
        let gaps = Panel {
            title: "NaN".into(),
            series: vec![series(
                "theirs",
                BLUE,
                &[
                    (1.0, 20.0),
                    (2.0, f32::NAN),
                    (f32::NAN, 5.0),
                    (0.0, 1.0),
                    (-4.0, 1.0),
                    (16.0, 30.0),
                ],
            )],
            x_ticks: vec![1.0, 2.0, 4.0, 8.0, 16.0],
            y_range: Some((f32::NAN, 3.0)),
        };
        let fixed = Panel {
            title: "outside its range".into(),
            series: vec![series(
                "ours",
                RED,
                &[
                    (1.0, 150.0),
                    (2.0, 1e30),
                    (4.0, -1e30),
                    (f32::INFINITY, 1.0),
                ],
            )],
            x_ticks: vec![],
            y_range: Some((0.0, 100.0)),
        };
        let far_from_zero = Panel {
            title: "1e9".into(),
            series: vec![series("ours", RED, &[(1.0, 1e9), (1e30, 1e9)])],
            ..Panel::default()
        };
        let panels = vec![empty, no_points, one_shot, gaps, fixed, far_from_zero];
        let f = figure(panels, 3);
        let img = ::image::load_from_memory(&f.to_png_bytes().unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!((img.width(), img.height()), f.size());
        let a = f.axes(2).unwrap();
        assert_eq!(pixel(&img, a.to_pixel(16.0, 62.0).unwrap()), RED);
        let a = f.axes(3).unwrap();
        for (x, y) in [(1.0, 20.0), (16.0, 30.0)] {
            assert_eq!(pixel(&img, a.to_pixel(x, y).unwrap()), BLUE);
        }
        assert_eq!(a.to_pixel(2.0, f32::NAN), None);
        assert_eq!(a.to_pixel(0.0, 1.0), None);
        assert_eq!(figure(vec![], 0).render().width(), PANEL_W);
    }

    #[test]
    fn y_axis_widens_to_round_steps() {
        let p = shots_panel("a", &[24.3, 27.8, 32.2, 32.4, 36.0], &[33.9; 5]);
        let a = Axes::fit(&p, (0, 0));
        assert_eq!((a.y, a.y_step), ((20.0, 40.0), 5.0));
        let flat = shots_panel("b", &[62.4; 5], &[62.4; 5]);
        let a = Axes::fit(&flat, (0, 0));
        assert!(a.y.0 < 62.4 && a.y.1 > 62.4);
    }
}
