//! Natural captions from a scene's attributes, with the variety contrastive pretraining needs:
//! several sentence frames, and attributes left out at random so that short prompts such as
//! "a photo of a circle." (what zero-shot classification asks) are in-distribution.

use super::attributes::COUNT_WORDS;
use super::rng::WorldRng;
use super::scene::Scene;

/// Sentence frames; `{}` is the noun phrase (with its background clause).
const FRAMES: [&str; 5] = [
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "a drawing of {}.",
    "{}.",
];

/// How often each attribute is mentioned.
const P_COUNT: f32 = 0.6;
const P_SIZE: f32 = 0.6;
const P_STYLE: f32 = 0.5;
const P_COLOUR: f32 = 0.75;
const P_BACKGROUND: f32 = 0.6;
/// How often the shape is replaced by the generic word "shape", so that colour-, size- or
/// texture-only prompts ("a photo of a red shape.") mean something.
const P_GENERIC: f32 = 0.15;

/// A caption for `scene`, e.g. "a photo of two small red circles on a striped background.".
pub fn caption(scene: &Scene, rng: &mut WorldRng) -> String {
    let mut words: Vec<String> = Vec::new();
    let counted = rng.chance(P_COUNT);
    let plural = scene.count > 1 && counted;
    if counted {
        words.push(COUNT_WORDS[scene.count - 1].to_string());
    }
    if rng.chance(P_SIZE) {
        words.push(scene.size.word().into());
    }
    if rng.chance(P_STYLE) {
        words.push(scene.style.word().into());
    }
    if rng.chance(P_COLOUR) {
        words.push(scene.colour.word().into());
    }
    let noun = match (rng.chance(P_GENERIC), plural) {
        (true, false) => "shape".to_string(),
        (true, true) => "shapes".to_string(),
        (false, false) => scene.shape.word().to_string(),
        (false, true) => scene.shape.plural(),
    };
    words.push(noun);
    let mut phrase = words.join(" ");
    if !counted {
        // "one" was left out (or the count is unknown): an article instead.
        let article = if starts_with_vowel(&phrase) {
            "an"
        } else {
            "a"
        };
        phrase = format!("{article} {phrase}");
    }
    if rng.chance(P_BACKGROUND) {
        phrase.push_str(&format!(" on a {} background", scene.texture.word()));
    }
    rng.pick(&FRAMES).replace("{}", &phrase)
}

/// The prompt frame downstream tasks use: `{}` is the class name.
pub const PROMPT: &str = "a photo of a {}.";

fn starts_with_vowel(s: &str) -> bool {
    s.starts_with(['a', 'e', 'i', 'o', 'u'])
}
