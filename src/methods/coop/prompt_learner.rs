//! CoOp's `PromptLearner`: M context vectors in the token-embedding space, shared by all classes
//! (`unified`) or one set per class (`csc`), placed around each class name.
//!
//! The prompt of class k is `[SOS] ctx_1..ctx_M [name tokens] . [EOS]` (class token position
//! `end`), `[SOS] ctx_1..ctx_M/2 [name] ctx_M/2+1..ctx_M . [EOS]` (`middle`) or
//! `[SOS] [name] ctx_1..ctx_M . [EOS]` (`front`). As in CoOp, the token ids are those of
//! `"X X … X name."` (M placeholders): they fix the end-of-text position, and their embeddings
//! supply every row that is not a context vector.
//!
//! The prompts are one `index_select` from a table whose first rows are the context vectors and
//! whose other rows are the frozen token embeddings, so a single op routes the gradient back to
//! the context (its backward is an `index_add`). Every prompt stops at the last end-of-text
//! position of the classes, as the inference tower does.

use std::ops::Range;

use candle_core::{Tensor, D};

use super::{ClassPosition, CoopError};
use crate::clip::train::prompt_text::PromptTextEncoder;
use crate::methods::linalg::seeded_rng;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;

/// CoOp's `PromptLearner` with its context held outside (the optimiser owns the values).
pub struct PromptLearner {
    pub n_ctx: usize,
    pub csc: bool,
    pub position: ClassPosition,
    classes: usize,
    width: usize,
    /// Prompt length after the cut: the last end-of-text position + 1.
    len: usize,
    eot: Vec<usize>,
    /// `(K·len, width)` token embeddings of the placeholder prompts.
    constants: Tensor,
    /// `K·len` rows into `[context rows; constants]`.
    index: Tensor,
}

/// What the text of a class name becomes, as CoOp prepares it (`name.replace("_", " ")`).
pub fn clean_name(name: &str) -> String {
    name.replace('_', " ")
}

impl PromptLearner {
    pub fn new(
        encoder: &PromptTextEncoder,
        tokenizer: &Tokenizer,
        classnames: &[String],
        n_ctx: usize,
        csc: bool,
        position: ClassPosition,
    ) -> Result<Self, CoopError> {
        if n_ctx == 0 {
            return Err(CoopError::NoContext);
        }
        if classnames.is_empty() {
            return Err(CoopError::NoClasses);
        }
        let config = encoder.config();
        let context = config.context_length;
        let sot = tokenizer.sot_id().ok_or(CoopError::NoStartToken)?;
        let eot_id = tokenizer.eot_id();
        let placeholders = vec!["X"; n_ctx].join(" ");
        let mut rows = Vec::with_capacity(classnames.len());
        let mut name_lens = Vec::with_capacity(classnames.len());
        for (index, raw) in classnames.iter().enumerate() {
            let name = clean_name(raw);
            let body = tokenizer.encode(&format!("{placeholders} {name}."));
            if body.len() + 2 > context {
                return Err(CoopError::ClassTooLong {
                    number: index + 1,
                    name: raw.clone(),
                    n_ctx,
                    need: body.len() + 2,
                    context,
                });
            }
            let mut ids = Vec::with_capacity(body.len() + 2);
            ids.push(sot);
            ids.extend(body);
            ids.push(eot_id);
            rows.push(ids);
            name_lens.push(tokenizer.encode(&name).len());
        }
        // The end token is the largest id (CoOp pools at `argmax`); its first occurrence.
        let eot: Vec<usize> = rows.iter().map(|r| r.len() - 1).collect();
        let len = eot.iter().max().map_or(1, |&p| p + 1);
        let k = classnames.len();
        let mut flat = Vec::with_capacity(k * len);
        for r in &rows {
            flat.extend(r.iter().copied());
            // The padding CoOp's `clip.tokenize` writes; causal attention makes it inert.
            flat.extend(std::iter::repeat_n(0, len - r.len()));
        }
        let constants = encoder.token_embeddings(&flat)?;
        let ctx_rows = if csc { k * n_ctx } else { n_ctx };
        let mut index = Vec::with_capacity(k * len);
        for (class, &n) in name_lens.iter().enumerate() {
            let ctx = |j: usize| (if csc { class * n_ctx + j } else { j }) as u32;
            let constant = |p: usize| (ctx_rows + class * len + p) as u32;
            let half = n_ctx / 2;
            for p in 0..len {
                // In the placeholder ids the name starts at 1 + M.
                let row = match position {
                    _ if p == 0 => constant(0),
                    ClassPosition::End if p <= n_ctx => ctx(p - 1),
                    ClassPosition::Middle if p <= half => ctx(p - 1),
                    ClassPosition::Middle if p <= half + n => constant(n_ctx + p - half),
                    ClassPosition::Middle if p <= n_ctx + n => ctx(p - n - 1),
                    ClassPosition::Front if p <= n => constant(n_ctx + p),
                    ClassPosition::Front if p <= n + n_ctx => ctx(p - n - 1),
                    _ => constant(p),
                };
                index.push(row);
            }
        }
        let index = Tensor::from_vec(index, (k * len,), encoder.device())?;
        Ok(PromptLearner {
            n_ctx,
            csc,
            position,
            classes: k,
            width: config.width,
            len,
            eot,
            constants,
            index,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Positions each prompt runs through the tower: the last end-of-text position + 1.
    pub fn prompt_len(&self) -> usize {
        self.len
    }

    /// The shape of the context: `(M, width)` unified, `(K, M, width)` class-specific.
    pub fn context_shape(&self) -> Vec<usize> {
        match self.csc {
            true => vec![self.classes, self.n_ctx, self.width],
            false => vec![self.n_ctx, self.width],
        }
    }

    pub fn context_len(&self) -> usize {
        self.context_shape().iter().product()
    }

    /// The embedded prompts of every class.
    ///
    /// # Shapes
    /// context `(M, width)` or `(K, M, width)` `-> (K, len, width)`
    pub fn prompts(&self, ctx: &Tensor) -> Result<Tensor, CoopError> {
        self.prompts_of(ctx, 0..self.classes)
    }

    /// The embedded prompts of the classes in `classes`, `(|classes|, len, width)`.
    fn prompts_of(&self, ctx: &Tensor, classes: Range<usize>) -> Result<Tensor, CoopError> {
        let rows = ctx.reshape((ctx.elem_count() / self.width, self.width))?;
        let table = Tensor::cat(&[&rows, &self.constants], 0)?;
        let index = self
            .index
            .narrow(0, classes.start * self.len, classes.len() * self.len)?;
        Ok(table
            .index_select(&index, 0)?
            .reshape((classes.len(), self.len, self.width))?)
    }

    /// Unit-norm text features of every class, `(K, E)`.
    pub fn text_features(
        &self,
        encoder: &PromptTextEncoder,
        ctx: &Tensor,
    ) -> Result<Tensor, CoopError> {
        self.text_features_of(encoder, ctx, 0..self.classes)
    }

    /// Unit-norm text features of the classes in `classes`, `(|classes|, E)`; each chunk is
    /// cut after its own last end token.
    pub fn text_features_of(
        &self,
        encoder: &PromptTextEncoder,
        ctx: &Tensor,
        classes: Range<usize>,
    ) -> Result<Tensor, CoopError> {
        let eot = &self.eot[classes.clone()];
        let features = encoder.encode_embeddings(&self.prompts_of(ctx, classes)?, eot)?;
        let norm = features.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(features.broadcast_div(&norm)?)
    }
}

/// The initial context: the embeddings of `init`'s tokens (copied to every class when `csc`),
/// or N(0, 0.02²) draws from `seed`. Returns the values and M.
pub fn initial_context(
    encoder: &PromptTextEncoder,
    tokenizer: &Tokenizer,
    init: Option<&str>,
    n_ctx: usize,
    csc_classes: Option<usize>,
    seed: u64,
) -> Result<(Vec<f32>, usize), CoopError> {
    let width = encoder.config().width;
    let copies = csc_classes.unwrap_or(1);
    match init {
        Some(text) => {
            let text = text.replace('_', " ");
            let ids = tokenizer.encode(&text);
            let context = encoder.config().context_length;
            if ids.is_empty() {
                return Err(CoopError::NoContext);
            }
            if ids.len() + 2 > context {
                return Err(CoopError::InitTooLong {
                    text,
                    tokens: ids.len(),
                    context,
                });
            }
            let one = encoder
                .token_embeddings(&ids)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok((one.repeat(copies), ids.len()))
        }
        None => {
            if n_ctx == 0 {
                return Err(CoopError::NoContext);
            }
            let mut rng = seeded_rng(seed ^ 0xc00b_c0de_5eed);
            Ok((normals(&mut rng, copies * n_ctx * width, 0.02), n_ctx))
        }
    }
}

/// `n` draws of N(0, std²) (Box–Muller on the crate's generator).
fn normals(rng: &mut SplitMix64, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.uniform() as f64; // (0, 1]: the log stays finite
        let u2 = rng.uniform() as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_asked_spread() {
        let v = normals(&mut seeded_rng(3), 20_000, 0.02);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 5e-4, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 5e-4, "{}", var.sqrt());
    }
}
