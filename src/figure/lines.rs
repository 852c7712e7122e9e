//! Panels of lines sharing one legend: accuracy against shots (log2 axis) per dataset, the
//! adapter variants, and the ablations (accuracy against a swept value).
//!
//! Each panel fits its own y range to its data (rounded to a readable step); the x ticks are
//! given by the caller (the shot counts, the swept values), so no label is invented or crowded.
//! A line is drawn through its finite points only: a missing point breaks it.

use plotters::coord::Shift;
use plotters::element::{Circle, DashedPathElement, PathElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{
    SeriesStyle, GRID, INK, LABEL_SIZE, LEGEND_SIZE, LINE_WIDTH, TICK_SIZE, TITLE_SIZE,
};
use super::{Chart, FONT};

/// How x values map to the axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XScale {
    /// Shots, bottleneck reductions: equal steps per doubling.
    Log2,
    Linear,
}

/// One series: a label (the legend's), its style, and `(x, y)` points; a non-finite y is a gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub style: SeriesStyle,
    pub points: Vec<(f64, f64)>,
}

/// Reference points (published numbers) drawn as faint hollow markers in a series' colour.
#[derive(Debug, Clone, PartialEq)]
pub struct Markers {
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinePanel {
    pub title: String,
    pub lines: Vec<Line>,
    pub markers: Vec<Markers>,
}

/// Panels in a grid of `columns`, the legend below them.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub panels: Vec<LinePanel>,
    pub columns: usize,
    pub x_scale: XScale,
    /// Tick positions (data values) and their labels.
    pub x_ticks: Vec<(f64, String)>,
    pub x_label: String,
    pub y_label: String,
    /// The legend's text for the markers, shown when a panel has any.
    pub markers_label: String,
}

/// One panel's size in pixels.
pub const PANEL_W: u32 = 400;
pub const PANEL_H: u32 = 320;
const LEGEND_ROW: u32 = 28;
const LEGEND_PAD: u32 = 14;
/// The legend's line sample, and the gap before the label.
const SAMPLE_W: i32 = 36;
const SAMPLE_GAP: i32 = 8;
/// A bound on DejaVu Sans' advance per character at [`LEGEND_SIZE`], so the legend's layout
/// is fixed before anything is drawn (plotters measures text only on a drawing area).
const LEGEND_CHAR_W: u32 = 9;

impl LineChart {
    fn columns(&self) -> usize {
        self.columns.clamp(1, self.panels.len().max(1))
    }

    fn rows(&self) -> usize {
        self.panels.len().div_ceil(self.columns())
    }

    /// The legend's entries: each distinct line label once, in order of first appearance, then
    /// the markers' entry.
    fn legend(&self) -> Vec<(String, Option<SeriesStyle>)> {
        let mut out: Vec<(String, Option<SeriesStyle>)> = Vec::new();
        for l in self.panels.iter().flat_map(|p| &p.lines) {
            if !out.iter().any(|(label, _)| *label == l.label) {
                out.push((l.label.clone(), Some(l.style)));
            }
        }
        if self.panels.iter().any(|p| !p.markers.is_empty()) {
            out.push((self.markers_label.clone(), None));
        }
        out
    }

    /// Width of one legend column, and how many fit across `width`.
    fn legend_grid(&self, width: u32) -> (u32, usize) {
        let longest = (self.legend().iter())
            .map(|(l, _)| l.chars().count() as u32)
            .max()
            .unwrap_or(0);
        let cell = (SAMPLE_W + SAMPLE_GAP) as u32 + longest * LEGEND_CHAR_W + 16;
        let per_row = (width.saturating_sub(2 * LEGEND_PAD) / cell).max(1) as usize;
        (cell, per_row)
    }

    fn legend_height(&self, width: u32) -> u32 {
        let n = self.legend().len();
        if n == 0 {
            return 0;
        }
        let (_, per_row) = self.legend_grid(width);
        n.div_ceil(per_row) as u32 * LEGEND_ROW + 2 * LEGEND_PAD
    }

    /// The width of a one-column legend beside the panels, for figures of one or two panels
    /// across (below them it would be a tall list or squeezed).
    fn legend_beside(&self) -> Option<u32> {
        let n = self.legend().len();
        (self.columns() < 3 && n > 0).then(|| self.legend_grid(0).0 + 2 * LEGEND_PAD)
    }

    /// Where the legend goes: the free cells right of the last row's panels when it fits
    /// there (`x`, `y`, width), below the panels otherwise (`None`).
    fn legend_in_grid(&self) -> Option<(u32, u32, u32)> {
        let used = self.panels.len() - (self.rows() - 1) * self.columns();
        let free = (self.columns() - used) as u32 * PANEL_W;
        let fits = free > 0 && self.legend_height(free) <= PANEL_H;
        fits.then(|| {
            (
                used as u32 * PANEL_W,
                (self.rows() as u32 - 1) * PANEL_H,
                free,
            )
        })
    }

    fn to_axis(&self, x: f64) -> f64 {
        match self.x_scale {
            XScale::Log2 => x.log2(),
            XScale::Linear => x,
        }
    }

    /// The x range shown (axis units): the ticks and points, padded so end points sit inside.
    fn x_range(&self) -> (f64, f64) {
        let xs = (self.x_ticks.iter().map(|t| t.0))
            .chain(self.panels.iter().flat_map(|p| {
                (p.lines.iter().flat_map(|l| l.points.iter().map(|q| q.0)))
                    .chain(p.markers.iter().flat_map(|m| m.points.iter().map(|q| q.0)))
            }))
            .map(|x| self.to_axis(x))
            .filter(|x| x.is_finite());
        let (lo, hi) = span(xs).unwrap_or((0.0, 1.0));
        let pad = if hi > lo { (hi - lo) * 0.06 } else { 1.0 };
        (lo - pad, hi + pad)
    }
}

/// A linear axis whose ticks are exactly the given values (plotters' `with_key_points` has no
/// label formatter).
pub(crate) struct Ticked {
    inner: plotters::coord::types::RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    pub(crate) fn new(lo: f64, hi: f64, ticks: Vec<f64>) -> Self {
        Ticked {
            inner: (lo..hi).into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

fn span(v: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    v.fold(None, |acc, x| match acc {
        None => Some((x, x)),
        Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
    })
}

/// A y range around `lo..hi` on multiples of a round step (1, 2 or 5 × 10^k) that gives four
/// to eight grid lines, and that step.
pub fn nice_range(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (lo, hi) = if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| (hi - lo) / s <= 7.0)
        .unwrap_or(10.0 * mag);
    let a = (lo / step).floor() * step;
    let mut b = (hi / step).ceil() * step;
    // Room above the highest point, so a marker never sits on the frame.
    if b - hi < step * 0.15 {
        b += step;
    }
    (a, b, step)
}

fn decimals(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    }
}

/// Runs of consecutive finite points (a line is not drawn across a missing value).
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            if let Some(last) = out.last_mut() {
                last.push((x, y));
            }
        } else if out.last().is_some_and(|l| !l.is_empty()) {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// A colour between `c` and white (`t` = 0: `c`).
pub fn faint(c: RGBColor, t: f64) -> RGBColor {
    let mix = |v: u8| (f64::from(v) + (255.0 - f64::from(v)) * t).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

impl Chart for LineChart {
    fn size(&self) -> (u32, u32) {
        let w = PANEL_W * self.columns() as u32;
        if let Some(side) = self.legend_beside() {
            let h = PANEL_H * self.rows() as u32;
            return (
                w + side,
                h.max(self.legend().len() as u32 * LEGEND_ROW + 2 * LEGEND_PAD),
            );
        }
        let below = match self.legend_in_grid() {
            Some(_) => 0,
            None => self.legend_height(w),
        };
        (w, PANEL_H * self.rows() as u32 + below)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (w, h) = self.size();
        let grid_w = PANEL_W * self.columns() as u32;
        let grid_h = PANEL_H * self.rows() as u32;
        let (plots, below) = area.split_vertically(grid_h);
        let (legend, legend_w) = match (self.legend_beside(), self.legend_in_grid()) {
            (Some(side), _) => {
                let lh = self.legend().len() as u32 * LEGEND_ROW + 2 * LEGEND_PAD;
                let top = (h.min(grid_h.max(lh)) - lh) / 2;
                (area.clone().shrink((grid_w, top), (side, lh)), side)
            }
            (None, Some((x, y, width))) => {
                // Centred in the free cells' height.
                let h = self.legend_height(width);
                let top = y + (PANEL_H - h) / 2;
                (area.clone().shrink((x, top), (width, h)), width)
            }
            (None, None) => (below, w),
        };
        let plots = if self.legend_beside().is_some() {
            plots.shrink((0, 0), (grid_w, grid_h))
        } else {
            plots
        };
        let cells = plots.split_evenly((self.rows(), self.columns()));
        let ticks: Vec<(f64, String)> = (self.x_ticks.iter())
            .map(|(x, l)| (self.to_axis(*x), l.clone()))
            .filter(|(x, _)| x.is_finite())
            .collect();
        for (i, (panel, cell)) in self.panels.iter().zip(&cells).enumerate() {
            self.draw_panel(i, panel, cell, &ticks)?;
        }
        draw_legend(&legend, &self.legend(), self.legend_grid(legend_w))
    }
}

impl LineChart {
    /// One panel: its axes, the published markers, then the lines (references last).
    fn draw_panel<DB: DrawingBackend>(
        &self,
        i: usize,
        panel: &LinePanel,
        cell: &DrawingArea<DB, Shift>,
        ticks: &[(f64, String)],
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (xa, xb) = self.x_range();
        let tick_label = |v: &f64| {
            (ticks.iter())
                .find(|(x, _)| (x - v).abs() < 1e-9)
                .map_or_else(String::new, |(_, l)| l.clone())
        };
        let columns = self.columns();
        let ys = panel
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1));
        let ys = ys.chain(
            panel
                .markers
                .iter()
                .flat_map(|m| m.points.iter().map(|p| p.1)),
        );
        let (ylo, yhi) = span(ys.filter(|y| y.is_finite())).unwrap_or((0.0, 1.0));
        let (ya, yb, step) = nice_range(ylo, yhi);
        // Room below the lowest point too (a flat reference would sit on the axis).
        let ya = if ylo - ya < step * 0.15 {
            ya - step
        } else {
            ya
        };
        let y_ticks: Vec<f64> = (0..)
            .map(|k| ya + f64::from(k) * step)
            .take_while(|y| *y <= yb + step * 1e-6)
            .collect();
        let digits = decimals(step);
        let y_fmt = |v: &f64| format!("{v:.digits$}");
        let last_row = i + columns >= self.panels.len();
        let mut chart = ChartBuilder::on(cell)
            .caption(&panel.title, (FONT, TITLE_SIZE).into_font().color(&INK))
            .margin_top(6)
            .margin_left(8)
            .margin_right(18)
            .margin_bottom(6)
            .x_label_area_size(if last_row { 52 } else { 30 })
            .y_label_area_size(if i.is_multiple_of(columns) { 64 } else { 44 })
            .build_cartesian_2d(
                Ticked::new(xa, xb, ticks.iter().map(|t| t.0).collect()),
                Ticked::new(ya, yb, y_ticks),
            )?;
        let mut mesh = chart.configure_mesh();
        mesh.x_label_formatter(&tick_label)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, TICK_SIZE).into_font().color(&INK))
            .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
            .bold_line_style(GRID.stroke_width(1))
            .light_line_style(TRANSPARENT)
            .axis_style(INK.stroke_width(1));
        if last_row {
            mesh.x_desc(self.x_label.as_str());
        }
        if i.is_multiple_of(columns) {
            mesh.y_desc(self.y_label.as_str());
        }
        mesh.draw()?;

        for m in &panel.markers {
            let colour = faint(m.colour, 0.45);
            let pts = (m.points.iter())
                .map(|&(x, y)| (self.to_axis(x), y))
                .filter(|(x, y)| x.is_finite() && y.is_finite());
            chart.draw_series(pts.map(|p| Circle::new(p, 6, colour.stroke_width(2))))?;
        }
        // The references (dashed) last, so they stay visible where lines cross them.
        let order = (panel.lines.iter().filter(|l| !l.style.dashed))
            .chain(panel.lines.iter().filter(|l| l.style.dashed));
        for line in order {
            let pts: Vec<(f64, f64)> = (line.points.iter())
                .map(|&(x, y)| (self.to_axis(x), y))
                .collect();
            let style = line.style.colour.stroke_width(LINE_WIDTH);
            for seg in segments(&pts) {
                if line.style.dashed {
                    chart.draw_series(std::iter::once(DashedPathElement::new(
                        seg.clone(),
                        9,
                        6,
                        style,
                    )))?;
                } else {
                    chart.draw_series(std::iter::once(PathElement::new(seg.clone(), style)))?;
                }
                let dot = line.style.colour.filled();
                chart.draw_series(seg.into_iter().map(|p| Circle::new(p, 3, dot)))?;
            }
        }
        Ok(())
    }
}

/// The legend: a line sample (or a hollow marker) and its label per entry, left to right.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, Option<SeriesStyle>)],
    (cell, per_row): (u32, usize),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let text = (FONT, LEGEND_SIZE)
        .into_font()
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, style)) in entries.iter().enumerate() {
        let x = (LEGEND_PAD + (i % per_row) as u32 * cell) as i32;
        let y = (LEGEND_PAD + (i / per_row) as u32 * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        match style {
            Some(s) => {
                let stroke = s.colour.stroke_width(LINE_WIDTH + 1);
                let pts = vec![(x, y), (x + SAMPLE_W, y)];
                if s.dashed {
                    area.draw(&DashedPathElement::new(pts, 9, 6, stroke))?;
                } else {
                    area.draw(&PathElement::new(pts, stroke))?;
                    area.draw(&Circle::new((x + SAMPLE_W / 2, y), 3, s.colour.filled()))?;
                }
            }
            None => {
                let grey = faint(INK, 0.45);
                area.draw(&Circle::new((x + SAMPLE_W / 2, y), 6, grey.stroke_width(2)))?;
            }
        }
        area.draw(&Text::new(
            label.clone(),
            (x + SAMPLE_W + SAMPLE_GAP, y),
            text.clone(),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_round_and_leave_room_above() {
        assert_eq!(nice_range(41.3, 76.0), (40.0, 80.0, 5.0));
        assert_eq!(nice_range(12.0, 61.0), (10.0, 70.0, 10.0));
        // A point just under a grid line gets another step above it.
        assert_eq!(nice_range(41.3, 79.5), (40.0, 90.0, 10.0));
        let (a, b, step) = nice_range(50.0, 50.0);
        assert!(a < 50.0 && b > 50.0 && step > 0.0);
        assert_eq!(decimals(0.2), 1);
    }

    #[test]
    fn missing_points_break_a_line() {
        let s = segments(&[(1.0, 2.0), (2.0, f64::NAN), (4.0, 3.0), (8.0, 4.0)]);
        assert_eq!(s, vec![vec![(1.0, 2.0)], vec![(4.0, 3.0), (8.0, 4.0)]]);
    }
}
