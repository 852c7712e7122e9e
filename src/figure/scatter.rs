//! Labelled 2-D point clouds side by side (the t-SNE maps of Fig. 5): one panel per cloud,
//! points coloured by class, one legend of class names under the panels. Map axes carry no
//! units, so panels have a frame and no ticks.

use super::style::PALETTE;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Chart, FONT};

const PANEL: u32 = 560;
const LEGEND_ROW: u32 = 26;
const LEGEND_COLUMNS: usize = 5;

/// One cloud: its title and one `[x, y]` per point.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub points: Vec<[f32; 2]>,
}

/// Panels of the same points (same order, same labels) in different spaces.
#[derive(Debug, Clone)]
pub struct Scatter {
    pub panels: Vec<Panel>,
    /// Class index of each point, shared by every panel.
    pub labels: Vec<usize>,
    pub classnames: Vec<String>,
}

/// The colour of class `c` among `k`: tab10 up to ten classes, evenly spaced hues beyond.
pub fn class_colour(c: usize, k: usize) -> RGBColor {
    if k <= PALETTE.len() {
        return PALETTE[c % PALETTE.len()];
    }
    let (r, g, b) = HSLColor(c as f64 / k as f64, 0.7, 0.45).rgb();
    RGBColor(r, g, b)
}

impl Scatter {
    fn legend_rows(&self) -> u32 {
        self.classnames.len().div_ceil(LEGEND_COLUMNS) as u32
    }
}

impl Chart for Scatter {
    fn size(&self) -> (u32, u32) {
        let panels = self.panels.len().max(1) as u32;
        (panels * PANEL, PANEL + 20 + self.legend_rows() * LEGEND_ROW)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let (top, legend) = area.split_vertically(PANEL);
        let k = self.classnames.len();
        let panels = top.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(&panels) {
            draw_panel(panel, &self.labels, k, area)?;
        }
        draw_legend(&self.classnames, &legend)
    }
}

/// The range of one coordinate, padded by 5 % (a cloud of one point gets a unit range).
fn range(values: impl Iterator<Item = f32>) -> std::ops::Range<f32> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    // No finite value leaves lo = +∞ > hi = −∞.
    if lo >= hi {
        let mid = if lo.is_finite() { lo } else { 0.0 };
        return mid - 1.0..mid + 1.0;
    }
    let pad = 0.05 * (hi - lo);
    lo - pad..hi + pad
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    labels: &[usize],
    k: usize,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let x = range(panel.points.iter().map(|p| p[0]));
    let y = range(panel.points.iter().map(|p| p[1]));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 22).into_font())
        .margin(14)
        .build_cartesian_2d(x.clone(), y.clone())?;
    chart.plotting_area().draw(&Rectangle::new(
        [(x.start, y.start), (x.end, y.end)],
        BLACK.mix(0.6).stroke_width(1),
    ))?;
    // One series per class, drawn in class order, so that the SVG groups them.
    for c in 0..k {
        let colour = class_colour(c, k);
        chart.draw_series(
            panel
                .points
                .iter()
                .zip(labels)
                .filter(|(_, &l)| l == c)
                .map(|(p, _)| Circle::new((p[0], p[1]), 3, colour.mix(0.85).filled())),
        )?;
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(
    classnames: &[String],
    area: &DrawingArea<DB, Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, _) = area.dim_in_pixel();
    let column = (w as i32 - 40) / LEGEND_COLUMNS as i32;
    let k = classnames.len();
    let style = (FONT, 17).into_font().color(&BLACK);
    for (c, name) in classnames.iter().enumerate() {
        let x = 20 + (c % LEGEND_COLUMNS) as i32 * column;
        let y = 10 + (c / LEGEND_COLUMNS) as i32 * LEGEND_ROW as i32;
        area.draw(&Circle::new((x + 6, y + 5), 6, class_colour(c, k).filled()))?;
        area.draw(&Text::new(name.as_str(), (x + 18, y), style.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::figure::{render_png, render_svg};

    fn scatter() -> Scatter {
        Scatter {
            panels: vec![
                Panel {
                    title: "before: 5-NN 50.0 %".into(),
                    points: vec![[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]],
                },
                Panel {
                    title: "after: 5-NN 100.0 %".into(),
                    points: vec![[0.0, 0.0], [5.0, 1.0], [9.0, 0.5]],
                },
            ],
            labels: vec![0, 1, 1],
            classnames: vec!["annual crop".into(), "forest".into()],
        }
    }

    #[test]
    fn svg_holds_every_point_title_and_class_name() {
        let svg = render_svg(&scatter(), Path::new("s.svg")).unwrap();
        // 3 points in each of 2 panels, and a legend marker per class.
        assert_eq!(svg.matches("<circle").count(), 2 * 3 + 2, "{svg}");
        for text in [
            "before: 5-NN 50.0 %",
            "after: 5-NN 100.0 %",
            "annual crop",
            "forest",
        ] {
            assert!(svg.contains(text), "no `{text}` in the SVG");
        }
        let png = render_png(&scatter(), Path::new("s.png")).unwrap();
        let image = ::image::load_from_memory(&png).unwrap();
        assert_eq!(
            (image.width(), image.height()),
            scatter().size(),
            "PNG size"
        );
    }

    #[test]
    fn many_classes_get_distinct_colours() {
        let colours: Vec<RGBColor> = (0..37).map(|c| class_colour(c, 37)).collect();
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(class_colour(3, 4), PALETTE[3]);
    }
}
