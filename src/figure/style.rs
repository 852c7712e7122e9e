//! The look every chart shares: ink and grid colours, font sizes, a categorical palette, and
//! one colour per method (the same in every figure and every run).

use plotters::style::RGBColor;

use crate::methods::registry::ZERO_SHOT;
use crate::methods::MethodKind;

/// Text and axes.
pub const INK: RGBColor = RGBColor(40, 40, 40);
/// Grid lines: light enough to read data over them.
pub const GRID: RGBColor = RGBColor(225, 225, 225);

/// Font sizes in plotters' units (the SVG states `size / 1.24` px); the smallest, the tick
/// labels, is 12 px in the SVG, readable at a paper's column width.
pub const TITLE_SIZE: f64 = 19.0;
pub const LABEL_SIZE: f64 = 17.0;
pub const TICK_SIZE: f64 = 15.0;
pub const LEGEND_SIZE: f64 = 16.0;
/// Width of data lines in pixels.
pub const LINE_WIDTH: u32 = 3;

/// How one series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesStyle {
    pub colour: RGBColor,
    /// A reference (zero-shot), drawn dashed.
    pub dashed: bool,
}

/// Tableau's ten categorical colours (matplotlib's default cycle), for datasets and values.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th palette colour (cycling).
pub fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The style of a method's series: zero-shot is the dashed dark reference, every other method
/// keeps one colour. `label` is a method name, a demo variant (`clip-adapter-text`) or a
/// results-table label (`clip-adapter (branch=text)`), whose branch picks the variant's colour.
pub fn method_style(label: &str) -> SeriesStyle {
    let (method, options) = match label.split_once(" (") {
        Some((m, rest)) => (m, rest.trim_end_matches(')')),
        None => (label, ""),
    };
    let branch = options.split(' ').find_map(|kv| kv.strip_prefix("branch="));
    let key = match (method, branch) {
        ("clip-adapter", Some("text")) => "clip-adapter-text",
        ("clip-adapter", Some("both")) => "clip-adapter-both",
        (m, _) => m,
    };
    if key == ZERO_SHOT.name() {
        return SeriesStyle {
            colour: INK,
            dashed: true,
        };
    }
    let registered = MethodKind::all().iter().find_map(|k| {
        let card = k.card();
        if card.name == key {
            return Some(card.colour);
        }
        (card.variant_colours.iter())
            .find(|(name, _)| *name == key)
            .map(|(_, c)| *c)
    });
    let colour = match registered {
        Some((r, g, b)) => RGBColor(r, g, b),
        // Another method: a colour that depends on its name only.
        None => palette(crate::hash::fnv1a64(key.as_bytes()) as usize),
    };
    SeriesStyle {
        colour,
        dashed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_get_their_own_colour_in_both_namings() {
        assert!(method_style("zero-shot").dashed);
        let text = method_style("clip-adapter-text");
        assert_eq!(method_style("clip-adapter (branch=text epochs=5)"), text);
        assert_ne!(text, method_style("clip-adapter"));
        assert_eq!(
            method_style("clip-adapter (reduction=8)"),
            method_style("clip-adapter")
        );
        assert_eq!(method_style("new-method"), method_style("new-method"));
    }

    /// Every registered method and variant is told apart by its colour.
    #[test]
    fn every_method_has_its_own_colour() {
        let mut names: Vec<&str> = Vec::new();
        for k in MethodKind::all() {
            names.push(k.name());
            names.extend(k.card().variant_colours.iter().map(|(n, _)| *n));
        }
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(
                    method_style(a).colour,
                    method_style(b).colour,
                    "{a} and {b}"
                );
            }
        }
    }
}
