//! The features before the image tower's last projection, and that projection: what a task
//! carries for the methods that train the projection itself (ProLIP), cached by
//! `extract --pre-projection` beside the projected features.

use super::linalg::Matrix;
use super::{FewShotTask, MethodError};

/// The image tower's last projection: `z = W x + b` (W is `E × W_in`, output × input, as a
/// `Linear` stores it; a ViT's `proj` is its transpose, and has no bias).
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    pub weight: Matrix,
    pub bias: Option<Vec<f32>>,
}

impl Projection {
    /// Projected features `X Wᵀ + b` (N × E) of pre-projection features X (N × W_in).
    pub fn apply(&self, x: &Matrix) -> Matrix {
        let mut z = x.matmul(false, &self.weight, true);
        if let Some(b) = &self.bias {
            for row in z.data.chunks_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        z
    }

    pub fn input_dim(&self) -> usize {
        self.weight.cols
    }

    pub fn output_dim(&self) -> usize {
        self.weight.rows
    }
}

/// What ProLIP trains on besides a task's projected features: the pre-projection features of
/// the same images, in the same row order, and the checkpoint's projection.
#[derive(Debug, Clone)]
pub struct PreProjection {
    pub projection: Projection,
    /// The training images, evaluation view.
    pub train: Matrix,
    /// Their augmented views (may be empty: training then uses `train`).
    pub train_views: Vec<Matrix>,
    pub val: Matrix,
    pub test: Matrix,
}

impl PreProjection {
    /// Checks widths and row counts against the task's projected sets.
    pub fn validate(&self, task: &FewShotTask) -> Result<(), MethodError> {
        let p = &self.projection;
        let w = p.input_dim();
        if p.output_dim() != task.dim() {
            return Err(MethodError::Width {
                what: "the projection's output",
                expected: task.dim(),
                found: p.output_dim(),
            });
        }
        if let Some(b) = &p.bias {
            if b.len() != p.output_dim() {
                return Err(MethodError::Width {
                    what: "the projection's bias",
                    expected: p.output_dim(),
                    found: b.len(),
                });
            }
        }
        let sets = [
            ("pre-projection train", &self.train, task.train.labels.len()),
            ("pre-projection val", &self.val, task.val.labels.len()),
            ("pre-projection test", &self.test, task.test.labels.len()),
        ];
        let views = self.train_views.iter().map(|v| {
            (
                "a pre-projection augmented view",
                v,
                task.train.labels.len(),
            )
        });
        for (what, m, labels) in sets.into_iter().chain(views) {
            if m.cols != w {
                return Err(MethodError::Width {
                    what,
                    expected: w,
                    found: m.cols,
                });
            }
            if m.rows != labels {
                return Err(MethodError::Rows {
                    what,
                    found: m.rows,
                    labels,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn training_views(&self) -> Vec<&Matrix> {
        if self.train_views.is_empty() {
            vec![&self.train]
        } else {
            self.train_views.iter().collect()
        }
    }
}
