//! CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
//! CVPR Workshops 2024; `MaxZanella/CLIP-LoRA` `lora.py`, `run_utils.py`, `loralib/`).
//!
//! Low-rank updates in the attention of both towers ([`crate::clip::train::lora`]) trained on the
//! images themselves, as the reference's `run_lora` does:
//! - the class prompts are the dataset's first template only (`dataset.template[0]`), encoded
//!   through the adapted text tower at every step;
//! - images through the adapted image tower, `RandomResizedCrop(224, scale (0.08, 1), bicubic)`
//!   and a horizontal flip (the reference's `train_tranform`);
//! - cross-entropy of `logit_scale · cos`, the scale the checkpoint's, frozen;
//! - AdamW (betas 0.9/0.999, weight decay 1e-2) at lr 2e-4 on the LoRA matrices, cosine to 1e-6
//!   over `500 × shots` steps of batch 32 (`n_iters × shots`), the schedule stepped every step;
//! - the last step is kept: the reference's validation is switched off (`VALIDATION = False`).

use candle_core::{Tensor, Var, D};

use super::optim::AdamW;
use super::MethodError;
use crate::clip::train::lora::LoraClip;

/// The reference's AdamW weight decay.
pub const WEIGHT_DECAY: f32 = 1e-2;
/// The floor of the cosine schedule (`eta_min`).
pub const FLOOR_LR: f32 = 1e-6;

/// `CosineAnnealingLR(T_max = total, eta_min = floor)` after `step` steps.
pub fn cosine_lr(base: f32, floor: f32, step: usize, total: usize) -> f32 {
    let t = std::f64::consts::PI * step as f64 / total.max(1) as f64;
    (floor as f64 + (base - floor) as f64 * 0.5 * (1.0 + t.cos())) as f32
}

/// What a step's images are: pixels through the adapted image tower, or features the frozen
/// image tower made (when only the text tower is adapted).
pub enum StepImages<'a> {
    Pixels(&'a Tensor),
    Features(&'a Tensor),
}

/// The optimiser and schedule over a model's LoRA matrices.
pub struct LoraTrainer<'m> {
    model: &'m LoraClip,
    vars: Vec<Var>,
    opt: AdamW,
    base_lr: f32,
    total: usize,
    steps: usize,
}

fn unit_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

impl<'m> LoraTrainer<'m> {
    /// `total` steps from `lr` down the cosine.
    pub fn new(model: &'m LoraClip, lr: f32, total: usize) -> Self {
        LoraTrainer {
            vars: model.vars().into_iter().map(|(_, v)| v).collect(),
            opt: AdamW::new(1e-8, WEIGHT_DECAY),
            model,
            base_lr: lr,
            total,
            steps: 0,
        }
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f32 {
        cosine_lr(self.base_lr, FLOOR_LR, self.steps, self.total)
    }

    /// `logit_scale · cos(image, class)` of a batch, `(B, K)`; `prompts` are the class
    /// prompts' token rows.
    pub fn logits(&self, images: StepImages, prompts: &[Vec<u32>]) -> Result<Tensor, MethodError> {
        let img = match images {
            StepImages::Pixels(p) => self.model.encode_image(p)?,
            StepImages::Features(f) => f.clone(),
        };
        let txt = self.model.encode_tokens(prompts)?;
        let logits = unit_rows(&img)?.matmul(&unit_rows(&txt)?.t()?)?;
        Ok((logits * self.model.logit_scale() as f64)?)
    }

    /// One AdamW step on the cross-entropy of a batch; returns the loss before the step.
    pub fn step(
        &mut self,
        images: StepImages,
        prompts: &[Vec<u32>],
        labels: &[u32],
    ) -> Result<f32, MethodError> {
        let logits = self.logits(images, prompts)?;
        let targets = Tensor::from_slice(labels, labels.len(), logits.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let grads = loss.backward()?;
        let mut params = Vec::with_capacity(self.vars.len());
        let mut gradients = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            params.push(var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            gradients.push(match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                // Every update takes part in every forward; a missing gradient is a zero one.
                None => vec![0.0; var.elem_count()],
            });
        }
        let lr = self.lr();
        {
            let mut p: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
            let g: Vec<&[f32]> = gradients.iter().map(|v| v.as_slice()).collect();
            self.opt.step(&mut p, &g, lr);
        }
        for (var, values) in self.vars.iter().zip(params) {
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
        }
        self.steps += 1;
        Ok(loss.to_scalar::<f32>()?)
    }
}
