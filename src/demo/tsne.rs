//! The demo's Fig. 5: the test set of a far task in the class-score space of the paper's four
//! heads (zero-shot CLIP, CoOp, CLIP-Adapter with α = 1 and CLIP-Adapter with α chosen on
//! validation), fitted on one draw with the demo's settings.

use super::run::{demo_coop, for_draw, DemoError, ALPHAS};
use crate::methods::clip_adapter::{AdapterOptions, Branch};
use crate::methods::coop::PromptModel;
use crate::methods::zero_shot::ZeroShot;
use crate::methods::{FewShotTask, FitContext, Head, Method};
use crate::tsne::{score_tsne, NamedHead, ScoreTsne, TsneOptions, KNN_K};

/// The far task the demo maps by default: the one with the largest domain gap in colour,
/// where the adapter gains most.
pub const TSNE_TASK: &str = "new_colours";

/// The panels' names, in the paper's order.
pub const CLIP_PANEL: &str = "CLIP";
pub const COOP_PANEL: &str = "CoOp";
pub const NO_RESIDUAL_PANEL: &str = "CLIP-Adapter, α = 1";
pub const ADAPTER_PANEL: &str = "CLIP-Adapter";

/// The t-SNE of one task's test set as the paper's four heads score it.
#[derive(Debug, Clone)]
pub struct DemoTsne {
    pub task: String,
    pub shots: usize,
    pub seed: u64,
    /// The α the adapter of the last panel chose on validation.
    pub alpha: String,
    pub maps: ScoreTsne,
}

impl DemoTsne {
    /// The figure's file stem inside the figures folder.
    pub fn stem(&self) -> String {
        format!("tsne_{}", self.task)
    }

    /// The report's section: what was mapped, the numbers that back the picture, the figure.
    pub fn markdown(&self) -> String {
        let pct = |v: f32| format!("{:.1}", 100.0 * v);
        let mut rows = String::new();
        for p in &self.maps.panels {
            let (s, m, f) = (&p.view.features, &p.view.map, &p.image_features);
            rows.push_str(&format!(
                "| {} | {} | {} | {:.3} | {} | {:.3} | {:.3} | {} | {:.3} |\n",
                p.name,
                pct(p.accuracy),
                pct(s.knn_accuracy),
                s.silhouette,
                pct(m.knn_accuracy),
                m.silhouette,
                p.view.trustworthiness,
                pct(f.knn_accuracy),
                f.silhouette,
            ));
        }
        format!(
            "\n### t-SNE of `{task}` as CLIP, CoOp and CLIP-Adapter see it (the paper's Fig. 5)\n\n\
             The test images of `{task}` ({n}) in the space each head classifies in: their \
             class scores (logits, each image's centred on their mean; cosine), for zero-shot \
             CLIP, CoOp (its learned prompts), CLIP-Adapter without the residual (α = 1) and \
             CLIP-Adapter (α = {alpha} chosen on validation), all fitted on the {shots}-shot \
             draw of seed {seed}; mapped by t-SNE (perplexity {perplexity}, seed {seed}). CoOp \
             leaves the image features as CLIP made them, so a map of the features would draw \
             its panel as CLIP's: the scores show what it learned (`docs/tsne.md`). How well \
             the classes separate, as numbers: the head's accuracy; {k}-NN accuracy and \
             silhouette of the scores and of their map; and, last, of the image features the \
             head scores (the frozen ones for CLIP and CoOp, the adapted ones for the adapters: \
             the space of the paper's figure).\n\n\
             | head | accuracy (%) | {k}-NN (%) | silhouette | map {k}-NN (%) | map silhouette | trustworthiness | features {k}-NN (%) | features silhouette |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             {rows}\n\
             ![t-SNE of {task} as the four heads score it](figures/{stem}.svg)\n",
            task = self.task,
            n = self.maps.labels.len(),
            alpha = self.alpha,
            shots = self.shots,
            seed = self.seed,
            perplexity = self.maps.options.perplexity,
            k = KNN_K,
            stem = self.stem(),
        )
    }
}

/// Fits the four heads on `task` (the draw of `shots` and `seed`) and maps its test set.
pub(super) fn demo_tsne(
    name: &str,
    task: &FewShotTask,
    (shots, seed): (usize, u64),
    logit_scale: f32,
    text_tower: &PromptModel,
) -> Result<DemoTsne, DemoError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| DemoError::Tsne {
        task: name.to_string(),
        source,
    };
    let fit = |method: Method| -> Result<crate::methods::Fit, DemoError> {
        let mut cx = FitContext {
            progress: &mut |_| {},
            text_tower: Some(text_tower),
            images: None,
        };
        (for_draw(&method, seed, logit_scale).fit(task, &mut cx)).map_err(|e| fail(Box::new(e)))
    };
    let adapter = |alpha: f32, search: Vec<f32>| {
        Method::new(AdapterOptions {
            branch: Branch::Visual,
            alpha,
            search,
            ..AdapterOptions::default()
        })
    };
    let clip = Head::new(ZeroShot::new(&task.text));
    let coop = fit(Method::new(demo_coop()))?.fitted.head;
    let no_residual = fit(adapter(1.0, Vec::new()))?.fitted.head;
    let searched = fit(adapter(AdapterOptions::default().alpha, ALPHAS.to_vec()))?.fitted;
    let alpha = (searched.chosen.iter())
        .find(|(k, _)| k == "alpha")
        .map_or_else(|| "–".to_string(), |(_, v)| v.clone());
    let heads = [
        NamedHead {
            name: CLIP_PANEL,
            head: &clip,
        },
        NamedHead {
            name: COOP_PANEL,
            head: &coop,
        },
        NamedHead {
            name: NO_RESIDUAL_PANEL,
            head: &no_residual,
        },
        NamedHead {
            name: ADAPTER_PANEL,
            head: &searched.head,
        },
    ];
    let maps = score_tsne(
        &task.test.features,
        &task.test.labels,
        &task.classnames,
        &heads,
        &TsneOptions {
            seed,
            ..TsneOptions::default()
        },
    )
    .map_err(|e| fail(Box::new(e)))?;
    Ok(DemoTsne {
        task: name.to_string(),
        shots,
        seed,
        alpha,
        maps,
    })
}
