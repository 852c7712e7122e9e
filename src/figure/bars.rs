//! Horizontal bars, one per category, with the value written at the end of each: the gain of
//! a method over zero-shot per dataset (the paper's Fig. 3). Horizontal, so that dataset
//! names of any length stay level and readable.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::lines::{nice_range, Ticked};
use super::style::{GRID, INK, LABEL_SIZE, TICK_SIZE, TITLE_SIZE};
use super::{Chart, FONT};

#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// What is written beyond the bar's end (`+3.50`).
    pub text: String,
    pub colour: RGBColor,
}

/// Bars from top to bottom in the order given, on an axis that always includes zero.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub bars: Vec<Bar>,
    pub x_label: String,
}

const WIDTH: u32 = 760;
const BAR_ROW: u32 = 34;
const TOP: u32 = 54;
const BOTTOM: u32 = 64;
/// A bound on DejaVu Sans' advance per character at [`TICK_SIZE`] (see `lines.rs`).
const TICK_CHAR_W: u32 = 10;

impl Chart for BarChart {
    fn size(&self) -> (u32, u32) {
        (
            WIDTH,
            TOP + BOTTOM + BAR_ROW * self.bars.len().max(1) as u32,
        )
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let n = self.bars.len();
        let lo = self.bars.iter().map(|b| b.value).fold(0.0, f64::min);
        let hi = self.bars.iter().map(|b| b.value).fold(0.0, f64::max);
        // Room on each side for the value written beyond the bar's end.
        let room = (hi - lo).max(1.0) * 0.16;
        let (a, b, step) = nice_range(if lo < 0.0 { lo - room } else { lo }, hi + room);
        let ticks: Vec<f64> = (0..)
            .map(|k| a + f64::from(k) * step)
            .take_while(|x| *x <= b + step * 1e-6)
            .collect();
        // Category i's centre is at n - i - 0.5, so the first bar is at the top.
        let centres: Vec<f64> = (0..n).map(|i| n as f64 - i as f64 - 0.5).collect();
        let name = |v: &f64| {
            (centres.iter().zip(&self.bars))
                .find(|(c, _)| (*c - v).abs() < 1e-9)
                .map_or_else(String::new, |(_, bar)| bar.label.clone())
        };
        let longest = self.bars.iter().map(|b| b.label.chars().count()).max();
        let label_w = longest.unwrap_or(4) as u32 * TICK_CHAR_W + 20;
        let digits = if step >= 1.0 { 0 } else { 1 };
        let x_fmt = |v: &f64| format!("{v:.digits$}");
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, (FONT, TITLE_SIZE).into_font().color(&INK))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(BOTTOM - 12)
            .y_label_area_size(label_w)
            .build_cartesian_2d(
                Ticked::new(a, b, ticks),
                Ticked::new(0.0, n.max(1) as f64, centres.clone()),
            )?;
        chart
            .configure_mesh()
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&name)
            .x_desc(self.x_label.as_str())
            .label_style((FONT, TICK_SIZE).into_font().color(&INK))
            .axis_desc_style((FONT, LABEL_SIZE).into_font().color(&INK))
            .bold_line_style(GRID.stroke_width(1))
            .light_line_style(TRANSPARENT)
            .disable_y_mesh()
            .axis_style(INK.stroke_width(1))
            .draw()?;
        chart.draw_series((self.bars.iter().zip(&centres)).map(|(bar, &c)| {
            Rectangle::new(
                [(0.0, c - 0.32), (bar.value, c + 0.32)],
                bar.colour.filled(),
            )
        }))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, n as f64)],
            INK.stroke_width(2),
        )))?;
        let font = (FONT, TICK_SIZE).into_font().color(&INK);
        for (bar, &c) in self.bars.iter().zip(&centres) {
            let (h, dx) = if bar.value < 0.0 {
                (HPos::Right, -6)
            } else {
                (HPos::Left, 6)
            };
            let style = font.clone().pos(Pos::new(h, VPos::Center));
            chart.draw_series(std::iter::once(
                EmptyElement::at((bar.value, c)) + Text::new(bar.text.clone(), (dx, 0), style),
            ))?;
        }
        Ok(())
    }
}
