//! Zero-shot CLIP: a classifier whose weights are the text embeddings of the class names put
//! into prompt templates (Radford et al. 2021). With several templates each prompt embedding is
//! normalised, the templates are averaged per class and the mean is normalised again, as in
//! CLIP's prompt ensembling (OpenAI's `zeroshot_classifier` notebook, open_clip's
//! `build_zero_shot_classifier`).

use candle_core::{Tensor, D};

use crate::clip::error::{InputError, Result};
use crate::clip::model::transformer::l2_normalize;
use crate::clip::Clip;

pub use crate::data::DEFAULT_TEMPLATE;

/// Prompts encoded per text-tower call: bounds memory for large label sets.
const PROMPT_BATCH: usize = 256;

/// Puts a class name into a template at its `{}`.
pub fn format_prompt(template: &str, label: &str) -> Result<String> {
    match template.matches("{}").count() {
        1 => Ok(template.replacen("{}", label, 1)),
        found => Err(InputError::Template {
            template: template.to_string(),
            found,
        }
        .into()),
    }
}

pub struct ZeroShotClassifier {
    pub labels: Vec<String>,
    /// Normalised class embeddings, `(K, E)`.
    pub weights: Tensor,
    /// The mean over templates of the *un-normalised* prompt embeddings, `(K, E)`: the
    /// zero-shot prototypes CLAP's reference (`_get_base_text_features`) trains from.
    pub mean: Tensor,
    pub logit_scale: f32,
    /// SigLIP's learned bias, added to every logit; its probabilities are then per-class
    /// sigmoids instead of a softmax over the classes. `None` for CLIP.
    pub logit_bias: Option<f32>,
}

/// One ranked class for one image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub label: String,
    pub index: usize,
    pub probability: f32,
    pub logit: f32,
}

impl ZeroShotClassifier {
    /// Encodes `labels × templates` prompts and ensembles them per class.
    ///
    /// `on_progress(done, total)` is called after each batch of prompts.
    pub fn build(
        clip: &Clip,
        labels: &[String],
        templates: &[String],
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        if labels.is_empty() {
            return Err(InputError::NoLabels.into());
        }
        if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
            return Err(InputError::EmptyLabel { index: i + 1 }.into());
        }
        if templates.is_empty() {
            return Err(InputError::NoTemplates.into());
        }
        let prompts: Vec<String> = templates
            .iter()
            .flat_map(|t| labels.iter().map(move |l| format_prompt(t, l)))
            .collect::<Result<_>>()?;
        let mut embeddings = Vec::new();
        let mut raw = Vec::new();
        let mut done = 0;
        for chunk in prompts.chunks(PROMPT_BATCH) {
            let e = clip.encode_text(chunk)?;
            embeddings.push(l2_normalize(&e)?);
            raw.push(e);
            done += chunk.len();
            on_progress(done, prompts.len());
        }
        let (k, t) = (labels.len(), templates.len());
        let all = Tensor::cat(&embeddings, 0)?; // (T·K, E), template-major
        let e = all.dim(1)?;
        let mean = all.reshape((t, k, e))?.mean(0)?; // (K, E)
        let raw_mean = Tensor::cat(&raw, 0)?.reshape((t, k, e))?.mean(0)?;
        Ok(ZeroShotClassifier {
            labels: labels.to_vec(),
            weights: l2_normalize(&mean)?,
            mean: raw_mean,
            logit_scale: clip.logit_scale(),
            logit_bias: clip.logit_bias(),
        })
    }

    /// `logit_scale · cos(image, class)`, plus `logit_bias` for SigLIP.
    ///
    /// # Shapes
    /// `(B, E) -> (B, K)`
    pub fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        let f = l2_normalize(image_features)?;
        let bias = f64::from(self.logit_bias.unwrap_or(0.0));
        Ok(f.matmul(&self.weights.t()?)?
            .affine(self.logit_scale as f64, bias)?)
    }

    /// How [`ZeroShotClassifier::logits`] become probabilities.
    pub fn scores(&self) -> Scores {
        match self.logit_bias {
            Some(_) => Scores::Sigmoid,
            None => Scores::Softmax,
        }
    }

    /// Class probabilities of each image `(B, K)`: a softmax over the classes (CLIP) or one
    /// sigmoid per class (SigLIP).
    pub fn probabilities(&self, image_features: &Tensor) -> Result<Tensor> {
        self.scores().apply(&self.logits(image_features)?)
    }

    /// The `k` most probable classes of each image, best first.
    pub fn predict(&self, image_features: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        rank_with(
            &self.labels,
            &self.logits(image_features)?,
            k,
            self.scores(),
        )
    }
}

/// How logits become probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scores {
    /// One distribution over the classes (CLIP, and every trained head).
    Softmax,
    /// An independent probability per class (SigLIP's sigmoid loss): they need not sum to 1.
    Sigmoid,
}

impl Scores {
    /// # Shapes
    /// `(B, K) -> (B, K)`
    pub fn apply(self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Scores::Softmax => candle_nn::ops::softmax(logits, D::Minus1)?,
            Scores::Sigmoid => candle_nn::ops::sigmoid(logits)?,
        })
    }
}

/// The `k` most probable classes of each row of `logits` `(B, K)` (softmax over a row), best
/// first; ties go to the lower index.
pub fn rank(labels: &[String], logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
    rank_with(labels, logits, k, Scores::Softmax)
}

/// [`rank`] with the probabilities `scores` gives; the order is the logits' either way.
pub fn rank_with(
    labels: &[String],
    logits: &Tensor,
    k: usize,
    scores: Scores,
) -> Result<Vec<Vec<Prediction>>> {
    let probs = scores.apply(logits)?;
    let (logits, probs) = (logits.to_vec2::<f32>()?, probs.to_vec2::<f32>()?);
    Ok(logits
        .iter()
        .zip(&probs)
        .map(|(l, p)| {
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
            order
                .into_iter()
                .take(k)
                .map(|i| Prediction {
                    label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
                    index: i,
                    probability: p[i],
                    logit: l[i],
                })
                .collect()
        })
        .collect())
}
