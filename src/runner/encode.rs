//! What `tokenize`, `embed` and `classify` do with a model, as functions: the model found and
//! loaded, texts tokenized with the model's own tokenizer and context length, images encoded
//! from files or from pixels already in memory (a Python program's arrays), and the zero-shot
//! classifier's probabilities. The numbers are those of the commands: the same preprocessing,
//! the same batches, the same ensembling.

use std::path::Path;

use candle_core::Tensor;
use rayon::prelude::*;

use super::{resolve_model, RunError, RunObserver};
use crate::clip::error::{Error, InputError};
use crate::clip::hub::HubOptions;
use crate::clip::{Clip, ModelFiles, Precision};
use crate::image::RgbImage;
use crate::tokenizer::{Tokenizer, CONTEXT_LENGTH};
use crate::zero_shot::ZeroShotClassifier;

/// Finds and loads a model (`--model`'s forms: a directory, an OpenAI `.pt` file,
/// `openai:NAME`, a hub id) at `precision`, reporting downloads; returns its files too
/// (fingerprint, config).
pub fn load_model(
    spec: &str,
    hub: &HubOptions,
    precision: Precision,
    observer: &mut dyn RunObserver,
) -> std::result::Result<(Clip, ModelFiles), RunError> {
    let files = resolve_model(spec, hub, observer)?;
    let clip = super::load_clip(&files, precision)?;
    Ok((clip, files))
}

/// The tokenizer and context length of a model, or OpenAI's (77 tokens) without one: what
/// `clip-adapter tokenize [--model M]` uses. Only the config and tokenizer files are read.
pub fn model_tokenizer(
    spec: Option<&str>,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> std::result::Result<(Tokenizer, usize), RunError> {
    let Some(spec) = spec else {
        return Ok((Tokenizer::openai().map_err(Error::from)?, CONTEXT_LENGTH));
    };
    let files = resolve_model(spec, hub, observer)?;
    let config = files.read_config()?;
    Ok((files.tokenizer()?, config.text.context_length))
}

/// Token ids of each text, padded to `context_length` (start token, BPE ids, end token, zeros).
pub fn tokenize<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    texts: &[S],
    context_length: usize,
) -> Vec<Vec<u32>> {
    texts
        .iter()
        .map(|t| tokenizer.tokenize(t.as_ref(), context_length))
        .collect()
}

/// One image to encode: a file, or decoded 8-bit RGB pixels in memory.
#[derive(Debug, Clone, Copy)]
pub enum ImageSource<'a> {
    File(&'a Path),
    /// `height × width × 3` bytes, row-major, channels last (a `uint8` HWC array).
    Rgb {
        width: u32,
        height: u32,
        pixels: &'a [u8],
    },
}

/// Why images in memory or on disk could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// `index` counts from 0, as the caller's list does.
    #[error("image {index}: {found} bytes of pixels for a {width}×{height} RGB image, expected {expected}")]
    PixelCount {
        index: usize,
        found: usize,
        width: u32,
        height: u32,
        expected: usize,
    },

    #[error("image {index} is empty ({width}×{height})")]
    EmptyImage {
        index: usize,
        width: u32,
        height: u32,
    },

    #[error(transparent)]
    Model(#[from] Error),
}

impl From<InputError> for EncodeError {
    fn from(e: InputError) -> Self {
        EncodeError::Model(e.into())
    }
}

impl From<candle_core::Error> for EncodeError {
    fn from(e: candle_core::Error) -> Self {
        EncodeError::Model(e.into())
    }
}

impl From<crate::image::ImageError> for EncodeError {
    fn from(e: crate::image::ImageError) -> Self {
        EncodeError::Model(e.into())
    }
}

impl ImageSource<'_> {
    /// The model's input tensor of this image, `3 × S × S` flattened.
    fn preprocess(&self, clip: &Clip, index: usize) -> Result<Vec<f32>, EncodeError> {
        let preprocess = clip.preprocess();
        match *self {
            ImageSource::File(path) => Ok(preprocess.load(path)?),
            ImageSource::Rgb {
                width,
                height,
                pixels,
            } => {
                if width == 0 || height == 0 {
                    return Err(EncodeError::EmptyImage {
                        index,
                        width,
                        height,
                    });
                }
                // The preprocessing reads an owned image; the copy lives for one image only.
                let image = RgbImage::from_raw(width, height, pixels.to_vec()).ok_or(
                    EncodeError::PixelCount {
                        index,
                        found: pixels.len(),
                        width,
                        height,
                        expected: 3 * width as usize * height as usize,
                    },
                )?;
                Ok(preprocess.apply(&image))
            }
        }
    }
}

/// Projected, un-normalised embeddings of `images`, in order, `(N, E)`: for files the numbers
/// of [`crate::encode::encode_image_files`] (and `clip-adapter embed`) with the same batch size.
///
/// `pre_projection` gives the image tower's output before its last projection instead.
/// `on_progress(done, total)` is called after each batch.
pub fn encode_images(
    clip: &Clip,
    images: &[ImageSource],
    batch_size: usize,
    pre_projection: bool,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor, EncodeError> {
    crate::limits::BATCH
        .check_option("batch_size", batch_size)
        .map_err(Error::from)?;
    if images.is_empty() {
        return Err(InputError::NoImages.into());
    }
    let s = clip.image_size();
    let mut out = Vec::new();
    let mut done = 0;
    for (b, batch) in images.chunks(batch_size.max(1)).enumerate() {
        let first = b * batch_size.max(1);
        let pixels: Vec<Vec<f32>> = batch
            .par_iter()
            .enumerate()
            .map(|(i, image)| image.preprocess(clip, first + i))
            .collect::<Result<_, EncodeError>>()?;
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        let pixels = Tensor::from_vec(flat, (batch.len(), 3, s, s), clip.device())?;
        out.push(match pre_projection {
            true => clip.encode_image_parts(&pixels)?.0,
            false => clip.encode_image(&pixels)?,
        });
        done += batch.len();
        on_progress(done, images.len());
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// The zero-shot classifier of `labels` in `templates` (prompt ensembling), as `classify`
/// builds it.
pub fn classifier(
    clip: &Clip,
    labels: &[String],
    templates: &[String],
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<ZeroShotClassifier, Error> {
    ZeroShotClassifier::build(clip, labels, templates, on_progress)
}

/// Zero-shot class probabilities `(N, K)` and logits `(N, K)` of image features `(N, E)`:
/// the `probability` and `logit` columns of `clip-adapter classify`, for every class.
pub fn zero_shot_scores(
    classifier: &ZeroShotClassifier,
    features: &Tensor,
) -> Result<(Tensor, Tensor), Error> {
    let logits = classifier.logits(features)?;
    let probabilities = classifier.scores().apply(&logits)?;
    Ok((probabilities, logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_clip() -> Clip {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-clip");
        Clip::load(
            &ModelFiles::in_dir(&dir).unwrap(),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn pixels_in_memory_encode_as_their_file_does() {
        let clip = tiny_clip();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/good");
        let files: Vec<_> = ["grey.png", "cmyk.jpg", "grey.bmp"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        let decoded: Vec<RgbImage> = files
            .iter()
            .map(|f| crate::image::decode_file(f).unwrap())
            .collect();
        let from_files: Vec<ImageSource> = files.iter().map(|f| ImageSource::File(f)).collect();
        let in_memory: Vec<ImageSource> = decoded
            .iter()
            .map(|i| ImageSource::Rgb {
                width: i.width(),
                height: i.height(),
                pixels: i.as_raw(),
            })
            .collect();
        let a = encode_images(&clip, &from_files, 2, false, &mut |_, _| {}).unwrap();
        let b = encode_images(&clip, &in_memory, 2, false, &mut |_, _| {}).unwrap();
        let c = crate::encode::encode_image_files(&clip, &files, 2, &mut |_, _| {}).unwrap();
        let (a, b, c) = (
            a.to_vec2::<f32>().unwrap(),
            b.to_vec2::<f32>().unwrap(),
            c.to_vec2::<f32>().unwrap(),
        );
        assert_eq!(a, c, "files: the numbers of `embed`");
        assert_eq!(a, b, "pixels in memory: the numbers of their files");
    }

    #[test]
    fn pixels_of_the_wrong_size_name_the_image() {
        let clip = tiny_clip();
        let pixels = [0u8; 10];
        let images = [ImageSource::Rgb {
            width: 2,
            height: 2,
            pixels: &pixels,
        }];
        let err = encode_images(&clip, &images, 4, false, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("image 0: 10 bytes"), "{err}");
    }
}
