//! Zero-shot CLIP on cached features (Radford et al. 2021): logits = scale · cos(image, class prompt),
//! plus the learned bias for SigLIP (whose probabilities are then a sigmoid per class, as
//! `classify` scores with the model). The prompt ensemble itself is built once from the text tower
//! ([`crate::zero_shot::ZeroShotClassifier`]); here it is only applied.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{gemm, Matrix};
use super::method::method_boilerplate;
use crate::zero_shot::Scores;
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method, MethodCard,
    MethodError, Needs, TextClassifier,
};

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

    /// `scale · cos`, plus SigLIP's bias (which moves no argmax: accuracy is CLIP's rule).
    pub fn logits(&self, features: &Matrix) -> Matrix {
        let mut out = cosine_logits(features, &self.text.weights, self.text.logit_scale);
        if let Some(bias) = self.text.logit_bias {
            out.data.iter_mut().for_each(|x| *x += bias);
        }
        out
    }
}

/// Zero-shot CLIP as a method: nothing to train, no options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZeroShotMethod;

pub static CARD: MethodCard = MethodCard {
    name: "zero-shot",
    title: "Zero-shot CLIP",
    paper: "Radford et al., ICML 2021",
    code: "openai/CLIP (prompt ensembles as CoOp reproduces them)",
    colour: (0, 0, 0),
    variant_colours: &[],
    reported_as: Some("ZeroShot_CoOp"),
    without_validation: "unchanged (nothing to choose)",
    augmentation: Augmentation::None,
    needs: Needs::Features,
    options: &[],
    configure: |_, _, _| Method::new(ZeroShotMethod),
    head: &CODEC,
    new_classes: crate::methods::NewClasses::FromText,
};

impl FewShotMethod for ZeroShotMethod {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        String::new()
    }

    fn fit(&self, task: &FewShotTask, _: &mut FitContext) -> Result<Fit, MethodError> {
        Ok(Fitted {
            head: Head::new(ZeroShot::new(&task.text)),
            chosen: Vec::new(),
            losses: Vec::new(),
        }
        .into())
    }
}

/// Tensors: `classes` (K×D unit-norm prompt embeddings) and `logit_scale`; SigLIP's also
/// `logit_bias` (its presence makes the head's probabilities sigmoids).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "zero-shot",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::Projected,
    read: |r, classes| {
        let logit_bias = match r.has("logit_bias") {
            false => None,
            true => Some(r.scalar("logit_bias", "one finite value")?),
        };
        Ok(Box::new(ZeroShot::new(&TextClassifier {
            weights: classes,
            logit_scale: r.logit_scale()?,
            logit_bias,
        })))
    },
};

impl HeadModel for ZeroShot {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        ZeroShot::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.text.weights.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.text.weights);
        w.scalar("logit_scale", self.text.logit_scale);
        if let Some(bias) = self.text.logit_bias {
            w.scalar("logit_bias", bias);
        }
    }

    fn scores(&self) -> Scores {
        match self.text.logit_bias {
            Some(_) => Scores::Sigmoid,
            None => Scores::Softmax,
        }
    }

    fn for_classes(&self, text: &TextClassifier) -> Option<Box<dyn HeadModel>> {
        Some(Box::new(ZeroShot { text: text.clone() }))
    }
}
