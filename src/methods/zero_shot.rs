//! Zero-shot CLIP on cached features (Radford et al. 2021): logits = scale · cos(image, class prompt).
//! The prompt ensemble itself is built once from the text tower
//! ([`crate::zero_shot::ZeroShotClassifier`]); here it is only applied.

use super::linalg::{gemm, Matrix};
use super::TextClassifier;

/// `scale · û v̂ᵀ` with `û`, `v̂` the row-normalised `image` (B×D) and `classes` (K×D). Every
/// head ends with this function, so a head whose adaptation is switched off (ratio 0) gives
/// bit-for-bit the zero-shot logits.
pub fn cosine_logits(image: &Matrix, classes: &Matrix, scale: f32) -> Matrix {
    let (u, v) = (image.normalized(), classes.normalized());
    let mut out = Matrix::zeros(image.rows, classes.rows);
    gemm(
        &u.data,
        false,
        &v.data,
        true,
        &mut out.data,
        u.rows,
        u.cols,
        v.rows,
        false,
    );
    out.data.iter_mut().for_each(|x| *x *= scale);
    out
}

/// The zero-shot head.
#[derive(Debug, Clone)]
pub struct ZeroShot {
    pub text: TextClassifier,
}

impl ZeroShot {
    pub fn new(text: &TextClassifier) -> Self {
        ZeroShot { text: text.clone() }
    }

    pub fn logits(&self, features: &Matrix) -> Matrix {
        cosine_logits(features, &self.text.weights, self.text.logit_scale)
    }
}
