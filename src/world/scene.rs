//! A scene: the attributes of one image, drawn from a [`Domain`].

use super::attributes::{Colour, Shape, Size, Style, Texture};
use super::rng::WorldRng;

/// Everything a caption can say about an image. Positions, exact tints and pattern phases are
/// left to the renderer: captions never mention them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// 1 to 3 objects.
    pub count: usize,
    pub texture: Texture,
    pub style: Style,
    /// Standard deviation of the pixel noise, in 0-255 units.
    pub noise: f32,
}

/// The values a scene may take: a region of the world. Pretraining draws from
/// [`Domain::pretraining`]; downstream tasks narrow or shift it.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub shapes: Vec<Shape>,
    pub colours: Vec<Colour>,
    pub sizes: Vec<Size>,
    pub counts: Vec<usize>,
    pub textures: Vec<Texture>,
    pub styles: Vec<Style>,
    /// Noise standard deviation, uniform in this range.
    pub noise: (f32, f32),
}

impl Domain {
    /// What pretraining sees: every value not held out, light noise.
    pub fn pretraining() -> Self {
        Domain {
            shapes: Shape::seen(),
            colours: Colour::seen(),
            sizes: Size::seen(),
            counts: vec![1, 2, 3],
            textures: Texture::seen(),
            styles: Style::seen(),
            noise: (0.0, 8.0),
        }
    }

    pub fn sample(&self, rng: &mut WorldRng) -> Scene {
        Scene {
            shape: *rng.pick(&self.shapes),
            colour: *rng.pick(&self.colours),
            size: *rng.pick(&self.sizes),
            count: *rng.pick(&self.counts),
            texture: *rng.pick(&self.textures),
            style: *rng.pick(&self.styles),
            noise: rng.range(self.noise.0, self.noise.1),
        }
    }
}
