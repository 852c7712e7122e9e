//! A generated image-text world: small RGB pictures of shapes with natural captions, from which
//! the embedded demo model is pretrained and the demo's few-shot tasks are drawn.
//!
//! ```text
//! rng.rs             SplitMix64: a seed names the same images forever
//! attributes.rs      shapes, colours, sizes, textures, styles (some held out of pretraining)
//! scene.rs           Scene (one image's attributes) and Domain (a region of the world)
//! render.rs          Scene -> RgbImage
//! caption.rs         Scene -> "a photo of two small red circles on a striped background."
//! vocabulary.rs      a byte-level BPE tokenizer.json trained on the captions
//! tasks.rs           downstream few-shot tasks, close to and far from pretraining, on disk
//! ```
//!
//! Everything is deterministic in `(seed, index)`, so images can be generated in any order or
//! in parallel.

pub mod attributes;
pub mod caption;
pub mod render;
pub mod rng;
pub mod scene;
pub mod tasks;
pub mod vocabulary;

pub use attributes::{Colour, Shape, Size, Style, Texture};
pub use caption::{caption, PROMPT};
pub use render::render;
pub use rng::WorldRng;
pub use scene::{Domain, Scene};

use crate::image::RgbImage;

/// Side of the world's images, in pixels.
pub const IMAGE_SIDE: u32 = 32;

/// One generated image with its caption.
#[derive(Debug, Clone)]
pub struct Pair {
    pub scene: Scene,
    pub image: RgbImage,
    pub caption: String,
}

/// Pair `index` of the stream `seed` drawn from `domain`.
pub fn pair(domain: &Domain, seed: u64, index: u64) -> Pair {
    let mut rng = WorldRng::for_item(seed, index);
    let scene = domain.sample(&mut rng);
    let image = render(&scene, IMAGE_SIDE, &mut rng);
    let caption = caption(&scene, &mut rng);
    Pair {
        scene,
        image,
        caption,
    }
}

/// A name's stream id: gives each task its own image stream.
pub(crate) fn name_hash(name: &str) -> u64 {
    crate::hash::fnv1a64(name.as_bytes())
}
