//! Contrastive pretraining of a small CLIP on the generated image-text world
//! (`clip-adapter pretrain`).

use std::path::PathBuf;

use clip_adapter::pretrain::{pretrain as run_pretrain, ModelShape, PretrainEvent};
use clip_adapter::pretrain::{PretrainOptions, ResNetShape};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{input, Kind, OrRaise};
use crate::plain::to_python;
use crate::progress::Progress;

/// One optimiser step as heard from the library: step, loss, learning rate, temperature.
type Step = (usize, f32, f64, f32);

/// Pretrains a small CLIP on pairs of the generated world (`clip-adapter pretrain`) and writes
/// it to `out` (config, weights, tokenizer and `pretrain.json`): the model `Clip.load(out)`,
/// `extract` and the demo read. Each of the `steps` AdamW steps sees `batch_size` fresh pairs;
/// the learning rate warms up linearly for `warmup` steps (at most half of them) and then decays
/// to 0 on a cosine. The image tower is a ViT (`patch_size`, `vision_width`, `vision_layers`)
/// or, with `resnet_layers` (4 block counts), a ModifiedResNet in open_clip's layout. A model
/// already in `out` is an error unless `force`. Progress is `("steps", done, steps)`.
///
/// Returns `pretrain.json` as a dict (`{"options", "seconds", "final_loss", "retrieval",
/// "vocab_size", "parameters"}`) with `"history"`: `[{"step", "loss", "lr", "logit_scale"}]`
/// for every step, and `"evals"`: `[{"step", "image_to_text", "text_to_image", "loss"}]`, the
/// held-out retrieval at each evaluation.
#[pyfunction]
#[pyo3(signature = (
    out, *, force = false, seed = 0, steps = PretrainOptions::default().steps,
    batch_size = PretrainOptions::default().batch_size, lr = PretrainOptions::default().lr,
    warmup = PretrainOptions::default().warmup, resnet_layers = None, resnet_width = 16,
    resnet_head_width = 64, patch_size = ModelShape::default().patch_size,
    vision_width = ModelShape::default().vision_width,
    vision_layers = ModelShape::default().vision_layers,
    text_width = ModelShape::default().text_width,
    text_layers = ModelShape::default().text_layers, heads = ModelShape::default().heads,
    embed_dim = ModelShape::default().embed_dim, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn pretrain<'py>(
    py: Python<'py>,
    out: PathBuf,
    force: bool,
    seed: u64,
    steps: usize,
    batch_size: usize,
    lr: f64,
    warmup: usize,
    resnet_layers: Option<Vec<usize>>,
    resnet_width: usize,
    resnet_head_width: usize,
    patch_size: usize,
    vision_width: usize,
    vision_layers: usize,
    text_width: usize,
    text_layers: usize,
    heads: usize,
    embed_dim: usize,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let resnet = match resnet_layers {
        Some(l) => Some(ResNetShape {
            layers: l.as_slice().try_into().map_err(|_| {
                input(format!(
                    "resnet_layers = {l:?}: expected 4 block counts, one per stage"
                ))
            })?,
            width: resnet_width,
            head_width: resnet_head_width,
        }),
        None => None,
    };
    let options = PretrainOptions {
        seed,
        steps,
        batch_size,
        lr,
        warmup: warmup.min(steps / 2),
        shape: ModelShape {
            resnet,
            patch_size,
            vision_width,
            vision_layers,
            text_width,
            text_layers,
            heads,
            embed_dim,
            ..ModelShape::default()
        },
        overwrite: force,
        ..PretrainOptions::default()
    };
    let mut p = Progress::new(py, progress)?;
    let mut history: Vec<Step> = Vec::new();
    let mut evals = Vec::new();
    let report = py.detach(|| {
        run_pretrain(&out, &options, &mut |event| match event {
            PretrainEvent::Step {
                step,
                steps,
                loss,
                lr,
                logit_scale,
                ..
            } => {
                history.push((step, loss, lr, logit_scale));
                p.report("steps", step as u64, Some(steps as u64));
            }
            PretrainEvent::Eval { step, eval } => evals.push((step, eval)),
            PretrainEvent::Tokenizer { .. } | PretrainEvent::Saved { .. } => {}
        })
    });
    p.finish(py)?;
    let report = report.or_raise(Kind::Other)?;
    let d = to_python(py, &report)?;
    let rows = PyList::empty(py);
    for (step, loss, lr, logit_scale) in history {
        let r = PyDict::new(py);
        r.set_item("step", step)?;
        r.set_item("loss", loss)?;
        r.set_item("lr", lr)?;
        r.set_item("logit_scale", logit_scale)?;
        rows.append(r)?;
    }
    d.set_item("history", rows)?;
    let rows = PyList::empty(py);
    for (step, eval) in evals {
        let r = to_python(py, &eval)?;
        r.set_item("step", step)?;
        rows.append(r)?;
    }
    d.set_item("evals", rows)?;
    Ok(d)
}
