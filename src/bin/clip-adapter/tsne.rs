//! `tsne`: arguments onto [`clip_adapter::tsne`], and printing.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::features::task::{CacheQuery, Shots};
use clip_adapter::runner::{
    self,
    tsne::{HeadsTsneSpec, PanelHead},
};
use clip_adapter::tsne::{self, Split, TsneOptions, KNN_K};

use crate::output::{outln, Observer, Progress};
use crate::shared::{positive, trimmed};

#[derive(Args, Debug)]
pub struct TsneArgs {
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// The dataset folder name in the cache (e.g. eurosat).
    #[arg(long)]
    pub dataset: String,
    /// Shots of the few-shot draw the head was fitted on (as given to extract and fit), or
    /// `all`; it picks the extraction, whose test split is the same for every draw.
    #[arg(long, value_parser = trimmed::<Shots>)]
    pub shots: Shots,
    /// Seed of that draw (as given to extract and fit); also seeds the t-SNE's initial map.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A CLIP-Adapter head with a visual adapter, saved by `fit --method clip-adapter --save`:
    /// two panels, the features before and after the adapter.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "head",
        conflicts_with = "head"
    )]
    pub adapter: Option<PathBuf>,
    /// Instead of --adapter: a saved head of any method on the cached features (repeat the
    /// option); one panel each after zero-shot CLIP's, every panel mapping the images' class
    /// scores (the paper's four: `--head coop.safetensors --head alpha1.safetensors --head
    /// adapter.safetensors`). A CoOp head's prompts are encoded through the model it records.
    #[arg(long, value_name = "FILE")]
    pub head: Vec<PathBuf>,
    /// The panel titles of the --head files, in their order [default: each head's method, with
    /// the file's stem when two share one].
    #[arg(long, value_name = "NAME", requires = "head")]
    pub label: Vec<String>,
    /// The set to map: `test` (the whole test split, as the paper's figure), `val` or `train`
    /// (the few-shot draw).
    #[arg(long, default_value = "test", value_parser = trimmed::<Split>)]
    pub split: Split,
    /// t-SNE perplexity: about the number of neighbours each point keeps close; needs at least
    /// 3 × perplexity + 1 points.
    #[arg(long, default_value_t = 30.0, value_parser = trimmed::<f32>)]
    pub perplexity: f32,
    /// t-SNE iterations.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub epochs: usize,
    /// Pick the model's features when the cache holds several (the name given to extract,
    /// NAME+bf16 for its `--precision bf16` features, or the fingerprint); it must be the model the head was trained on.
    #[arg(long)]
    pub model: Option<String>,
    /// Where the figure goes: FILE_STEM.svg and FILE_STEM.png (an extension given is replaced).
    #[arg(long, value_name = "FILE_STEM")]
    pub out: PathBuf,
    /// Print JSON: `{"dataset", "split", "adapter", "model", "classnames", "labels",
    /// "options", "before", "after", "figure"}`, where `before` and `after` are `{"coordinates":
    /// [[x, y], ...], "features": {"knn_accuracy", "silhouette"}, "map": {...},
    /// "trustworthiness"}`; with --head, `{"dataset", "split", "heads", "model", "classnames",
    /// "labels", "options", "panels", "figure"}`, each panel `{"name", "accuracy", "view",
    /// "image_features"}` (`view` as `before` above, of the centred class scores).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TsneArgs, progress: &Progress) -> Result<()> {
    let opts = TsneOptions {
        perplexity: a.perplexity,
        epochs: a.epochs,
        seed: a.seed,
        ..TsneOptions::default()
    };
    let query = CacheQuery {
        model: a.model.clone(),
        ..CacheQuery::new(&a.cache, &a.dataset, a.shots, a.seed)
    };
    let context = || {
        format!(
            "t-SNE of the {} features of {} ({}-shot seed {})",
            a.split.as_str(),
            a.dataset,
            a.shots,
            a.seed
        )
    };
    let Some(adapter) = &a.adapter else {
        return run_heads(&a, query, opts, progress).with_context(context);
    };
    let made =
        tsne::adapter_tsne_from_cache(&query, adapter, a.split, &opts).with_context(context)?;
    let figure = made.tsne.write_figure(&a.out)?;
    let figure: Vec<String> = figure.iter().map(|p| p.display().to_string()).collect();
    let t = &made.tsne;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "dataset": a.dataset, "split": a.split, "adapter": adapter.display().to_string(),
                "model": made.source.model_name, "classnames": t.classnames, "labels": t.labels,
                "options": t.options, "before": t.before, "after": t.after, "figure": figure,
            })
        );
        return Ok(());
    }
    outln!(
        "t-SNE of {} {} features of {} (perplexity {}, seed {}); {KNN_K}-NN: leave-one-out \
         accuracy; features: cosine, map: euclidean",
        t.labels.len(),
        a.split.as_str(),
        a.dataset,
        opts.perplexity,
        opts.seed
    );
    outln!("{}", t.table());
    outln!("wrote {}", figure.join(", "));
    Ok(())
}

/// `--head`: zero-shot CLIP and each saved head, one panel each of the images' class scores.
fn run_heads(
    a: &TsneArgs,
    query: CacheQuery,
    options: TsneOptions,
    progress: &Progress,
) -> Result<()> {
    if a.label.len() > a.head.len() {
        bail!(
            "{} --label values for {} --head files: give at most one title per head",
            a.label.len(),
            a.head.len()
        );
    }
    let heads = (a.head.iter().enumerate())
        .map(|(i, path)| PanelHead {
            path: path.clone(),
            label: a.label.get(i).cloned(),
        })
        .collect();
    let spec = HeadsTsneSpec {
        query,
        heads,
        split: a.split,
        options,
        hub: HubOptions::from_env(),
    };
    let mut observer = Observer::new(progress);
    let made = runner::tsne::heads_tsne(&spec, &mut observer);
    observer.finish();
    let made = made?;
    let t = &made.tsne;
    let figure = t.write_figure(&a.out)?;
    let figure: Vec<String> = figure.iter().map(|p| p.display().to_string()).collect();
    if a.json {
        let heads: Vec<String> = a.head.iter().map(|p| p.display().to_string()).collect();
        outln!(
            "{}",
            serde_json::json!({
                "dataset": a.dataset, "split": a.split, "heads": heads,
                "model": made.source.model_name, "classnames": t.classnames, "labels": t.labels,
                "options": t.options, "panels": t.panels, "figure": figure,
            })
        );
        return Ok(());
    }
    outln!(
        "t-SNE of the class scores of {} {} images of {} (centred logits, cosine; perplexity {}, \
         seed {}); {KNN_K}-NN: leave-one-out accuracy; features: the image features each head \
         scores",
        t.labels.len(),
        a.split.as_str(),
        a.dataset,
        t.options.perplexity,
        t.options.seed
    );
    outln!("{}", t.table());
    outln!("wrote {}", figure.join(", "));
    Ok(())
}
