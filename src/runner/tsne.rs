//! The paper's Fig. 5 from saved heads: a split of a cached task in the class-score space of
//! zero-shot CLIP and of each head given (CoOp's learned prompts encoded through the model it
//! records, any head on projected features read as `predict` reads it), one t-SNE panel each.

use std::path::PathBuf;

use super::predict::load_head;
use super::{RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::features::task::{load_task, CacheQuery, TaskSource};
use crate::methods::zero_shot::ZeroShot;
use crate::methods::{Head, MethodKind};
use crate::tsne::{check_head, score_tsne, NamedHead, ScoreTsne, Split, TsneError, TsneOptions};

/// The name of the panel of zero-shot CLIP (the cache's prompt embeddings), always the first.
pub const CLIP_PANEL: &str = "CLIP";

/// One saved head to map, and the name its panel shows [default: its method's title, with the
/// file's stem when two heads share a method].
#[derive(Debug, Clone)]
pub struct PanelHead {
    pub path: PathBuf,
    pub label: Option<String>,
}

/// What `clip-adapter tsne --head …` is told.
#[derive(Debug, Clone)]
pub struct HeadsTsneSpec {
    /// The cached task (its extraction: dataset, shots, seed, model).
    pub query: CacheQuery,
    pub heads: Vec<PanelHead>,
    pub split: Split,
    pub options: TsneOptions,
    /// Where a CoOp head's model is found.
    pub hub: HubOptions,
}

/// The maps and where their inputs came from.
#[derive(Debug, Clone)]
pub struct HeadsTsne {
    pub tsne: ScoreTsne,
    pub source: TaskSource,
}

/// Loads the split and every head (each checked against the cache's model and classes), then
/// maps the split in the class-score space of zero-shot CLIP and of each head.
pub fn heads_tsne(
    spec: &HeadsTsneSpec,
    observer: &mut dyn RunObserver,
) -> Result<HeadsTsne, RunError> {
    let tsne_error = |source: TsneError| RunError::Tsne {
        task: spec.query.dataset.clone(),
        source: Box::new(source),
    };
    let (task, source) = load_task(&spec.query)?;
    let mut heads = vec![(CLIP_PANEL.to_string(), Head::new(ZeroShot::new(&task.text)))];
    let mut methods = Vec::new();
    for h in &spec.heads {
        let (head, info) = load_head(&h.path, None, false, &spec.hub, observer)?;
        check_head(
            &h.path,
            &info,
            &task.classnames,
            &source,
            &spec.query.dataset,
        )
        .map_err(tsne_error)?;
        methods.push(info.method);
        heads.push((String::new(), head));
    }
    for (i, h) in spec.heads.iter().enumerate() {
        heads[i + 1].0 = panel_name(h, &methods, i);
    }
    let named: Vec<NamedHead> = (heads.iter())
        .map(|(name, head)| NamedHead { name, head })
        .collect();
    let set = spec.split.of(&task);
    let tsne = score_tsne(
        &set.features,
        &set.labels,
        &task.classnames,
        &named,
        &spec.options,
    )
    .map_err(tsne_error)?;
    Ok(HeadsTsne { tsne, source })
}

/// The label given, or the method's title, with the file's stem when another head has the
/// same method (two CLIP-Adapter heads of another α, say).
fn panel_name(h: &PanelHead, methods: &[String], i: usize) -> String {
    if let Some(label) = &h.label {
        return label.clone();
    }
    let method = &methods[i];
    let title = (method.parse::<MethodKind>().ok())
        .map_or_else(|| method.clone(), |m| m.card().title.to_string());
    match methods.iter().filter(|m| *m == method).count() {
        1 => title,
        _ => {
            let stem = h.path.file_stem().unwrap_or_default().to_string_lossy();
            format!("{title} ({stem})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(path: &str, label: Option<&str>) -> PanelHead {
        PanelHead {
            path: PathBuf::from(path),
            label: label.map(str::to_string),
        }
    }

    #[test]
    fn panels_are_named_by_label_then_method_then_file() {
        let methods = ["coop", "clip-adapter", "clip-adapter"].map(String::from);
        let heads = [
            head("a/coop.safetensors", None),
            head("a/alpha1.safetensors", None),
            head("a/searched.safetensors", Some("CLIP-Adapter")),
        ];
        let names: Vec<String> = (0..3).map(|i| panel_name(&heads[i], &methods, i)).collect();
        assert_eq!(names, ["CoOp", "CLIP-Adapter (alpha1)", "CLIP-Adapter"]);
    }
}
