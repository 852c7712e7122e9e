//! Batched encoding of image files: decode and preprocess a batch in parallel, then run the
//! image tower on it. Progress is reported through a callback; the library never prints.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;

use crate::clip::error::Result;
use crate::clip::Clip;

/// Images per image-tower call unless the caller says otherwise.
pub const DEFAULT_BATCH: usize = 32;

/// Projected, un-normalised embeddings of `paths`, in order, `(N, E)`.
///
/// The first unreadable image stops the work with an error naming its file.
/// `on_progress(done, total)` is called after each batch.
pub fn encode_image_files<P: AsRef<Path> + Sync>(
    clip: &Clip,
    paths: &[P],
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    encode_files(clip, paths, batch_size, on_progress, &|p| {
        clip.encode_image(p)
    })
}

/// [`encode_image_files`], but the image tower's output before its last projection, `(N, W)`
/// (what a ProLIP head scores).
pub fn encode_image_files_pre_projection<P: AsRef<Path> + Sync>(
    clip: &Clip,
    paths: &[P],
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    encode_files(clip, paths, batch_size, on_progress, &|p| {
        Ok(clip.encode_image_parts(p)?.0)
    })
}

/// [`encode_image_files`] and [`encode_image_files_pre_projection`] from one forward pass:
/// `((N, W), (N, E))`, the projected rows bit-identical to [`encode_image_files`]'.
pub fn encode_image_files_both<P: AsRef<Path> + Sync>(
    clip: &Clip,
    paths: &[P],
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Tensor)> {
    let width = clip.config().vision.width();
    let both = encode_files(clip, paths, batch_size, on_progress, &|p| {
        let (pre, projected) = clip.encode_image_parts(p)?;
        Ok(Tensor::cat(&[&pre, &projected], 1)?)
    })?;
    let e = both.dims2()?.1 - width;
    Ok((both.narrow(1, 0, width)?, both.narrow(1, width, e)?))
}

pub(crate) fn encode_files<P: AsRef<Path> + Sync>(
    clip: &Clip,
    paths: &[P],
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
    encode: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    crate::limits::BATCH.check_option("batch_size", batch_size)?;
    let preprocess = clip.preprocess();
    let s = clip.image_size();
    let mut done = 0;
    let mut out = Vec::new();
    for batch in paths.chunks(batch_size.max(1)) {
        let pixels: Vec<Vec<f32>> = batch
            .par_iter()
            .map(|p| preprocess.load(p.as_ref()))
            .collect::<std::result::Result<_, _>>()?;
        let flat: Vec<f32> = pixels.into_iter().flatten().collect();
        let pixels = Tensor::from_vec(flat, (batch.len(), 3, s, s), clip.device())?;
        out.push(encode(&pixels)?);
        done += batch.len();
        on_progress(done, paths.len());
    }
    if out.is_empty() {
        return Err(crate::clip::error::InputError::NoImages.into());
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Paths as given, for reports: `PathBuf`s printed the way the user typed them.
pub fn display_paths(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}
