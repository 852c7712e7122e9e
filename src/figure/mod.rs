//! Figures: every chart is drawn once, through `plotters`, into an SVG and a PNG.
//!
//! The text of both comes from DejaVu Sans, embedded in the binary and registered with
//! plotters' `ab_glyph` backend, so no system font is looked up and a figure has the same bytes
//! on every machine. A chart implements [`Chart`] (one generic `draw` over any plotters backend);
//! [`write_figure`] renders it to `STEM.svg` and `STEM.png`, each written atomically.
//!
//! ```text
//! style.rs  ink, grid, font sizes, the palette, one colour per method
//! lines.rs  panels of lines on a shared legend (log2 or linear x), faint reference markers
//! bars.rs   horizontal bars with their values (gains per dataset)
//! ```

pub mod bars;
pub mod lines;
pub mod style;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ::image::ImageEncoder as _;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::fsutil::{write_atomic, WriteError};

pub mod scatter;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans-LICENSE.txt`).
const DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name charts ask for; [`register_font`] maps it onto the embedded font.
pub const FONT: &str = "sans-serif";

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("cannot draw the figure {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    #[error("cannot encode the PNG of {}", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Something plotters draws: the same code renders the SVG and the PNG.
pub trait Chart {
    /// Width and height in pixels (the SVG's user units).
    fn size(&self) -> (u32, u32);

    /// Draws onto `area`, which is already filled white.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Registers the embedded font under [`FONT`] (once per process; later calls do nothing).
pub fn register_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The bytes are a valid TrueType file compiled into the binary; failing to parse them
        // is a build defect, which the tests of this module catch.
        if plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_err() {
            panic!("the embedded DejaVu Sans font does not parse");
        }
    });
}

/// Renders `chart` to an SVG document.
pub fn render_svg(chart: &impl Chart, path_for_errors: &Path) -> Result<String, FigureError> {
    register_font();
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, chart.size()).into_drawing_area();
        draw_on(chart, &area, path_for_errors)?;
    }
    Ok(svg)
}

/// Renders `chart` to PNG bytes (8-bit RGB).
pub fn render_png(chart: &impl Chart, path_for_errors: &Path) -> Result<Vec<u8>, FigureError> {
    register_font();
    let (w, h) = chart.size();
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw_on(chart, &area, path_for_errors)?;
    }
    let mut png = Vec::new();
    ::image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, w, h, ::image::ExtendedColorType::Rgb8)
        .map_err(|source| FigureError::Png {
            path: path_for_errors.to_path_buf(),
            source,
        })?;
    Ok(png)
}

/// Writes `STEM.svg` and `STEM.png` (each atomically) and returns their paths.
pub fn write_figure(chart: &impl Chart, stem: &Path) -> Result<[PathBuf; 2], FigureError> {
    let svg_path = stem.with_extension("svg");
    let png_path = stem.with_extension("png");
    let svg = render_svg(chart, &svg_path)?;
    let png = render_png(chart, &png_path)?;
    write_atomic(&svg_path, svg.as_bytes())?;
    write_atomic(&png_path, &png)?;
    Ok([svg_path, png_path])
}

fn draw_on<DB: DrawingBackend>(
    chart: &impl Chart,
    area: &DrawingArea<DB, Shift>,
    path: &Path,
) -> Result<(), FigureError> {
    let result = area
        .fill(&WHITE)
        .and_then(|()| chart.draw(area))
        .and_then(|()| area.present());
    result.map_err(|e| FigureError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Caption;

    impl Chart for Caption {
        fn size(&self) -> (u32, u32) {
            (200, 60)
        }

        fn draw<DB: DrawingBackend>(
            &self,
            area: &DrawingArea<DB, Shift>,
        ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
            area.draw(&Text::new("Accuracy (%)", (10, 20), (FONT, 20).into_font()))
        }
    }

    #[test]
    fn text_is_drawn_with_the_embedded_font_in_both_formats() {
        let svg = render_svg(&Caption, Path::new("caption.svg")).unwrap();
        assert!(
            svg.contains("Accuracy (%)") && svg.contains("font-family=\"sans-serif\""),
            "{svg}"
        );
        let png = render_png(&Caption, Path::new("caption.png")).unwrap();
        let image = ::image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (200, 60));
        // Anti-aliased glyphs leave grey pixels, not only black and white.
        let greys = image
            .pixels()
            .filter(|p| p.0[0] > 30 && p.0[0] < 220)
            .count();
        let dark = image.pixels().filter(|p| p.0[0] < 128).count();
        assert!(dark > 100 && greys > 50, "dark {dark}, grey {greys}");
    }

    #[test]
    fn rendering_is_deterministic() {
        let a = render_png(&Caption, Path::new("a.png")).unwrap();
        let b = render_png(&Caption, Path::new("b.png")).unwrap();
        assert_eq!(a, b);
    }
}
