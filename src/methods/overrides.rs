//! The options a user sets on top of the protocol's values (the flags of `run`, `sweep` and
//! `fit`); `None` (or empty) keeps the protocol's value. Each method's card lists the ones it
//! takes and its `configure` applies them; the experiment refuses an option that none of the
//! chosen methods takes.

use super::clip_adapter::{Branch, Form, RatioMode};
use super::coop::ClassPosition;

/// Options given by the user; `None` (or empty) keeps the protocol's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodOverrides {
    pub branch: Option<Branch>,
    pub form: Option<Form>,
    pub reduction: Option<usize>,
    pub ratio: Option<RatioMode>,
    pub search: Vec<f32>,
    pub alpha: Option<f32>,
    pub beta: Option<f32>,
    pub lr: Option<f32>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    /// CoOp: number of learned context vectors.
    pub n_ctx: Option<usize>,
    /// CoOp: initialise the context from this phrase.
    pub ctx_init: Option<String>,
    /// CoOp: one context per class.
    pub csc: bool,
    pub class_token_position: Option<ClassPosition>,
}

/// The dataset on which CoOp (and CLIP-Adapter, which follows CoOp's schedule) trains 50
/// epochs whatever the shot count.
pub const IMAGENET: &str = "imagenet";
pub const IMAGENET_EPOCHS: usize = 50;

impl MethodOverrides {
    /// The options that are set, as `(name, value)`, in a fixed order.
    pub fn given(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("branch", self.branch.map(|b| b.as_str().to_string()));
        put("form", self.form.map(|f| f.as_str().to_string()));
        put("reduction", self.reduction.map(|r| r.to_string()));
        put("ratio", self.ratio.map(|r| r.as_str().to_string()));
        put(
            "search",
            (!self.search.is_empty()).then(|| {
                let v: Vec<String> = self.search.iter().map(f32::to_string).collect();
                v.join(",")
            }),
        );
        put("alpha", self.alpha.map(|v| v.to_string()));
        put("beta", self.beta.map(|v| v.to_string()));
        put("lr", self.lr.map(|v| v.to_string()));
        put("epochs", self.epochs.map(|v| v.to_string()));
        put("batch-size", self.batch_size.map(|v| v.to_string()));
        put("n-ctx", self.n_ctx.map(|v| v.to_string()));
        // Quoted: a phrase has spaces, and the options column is space-separated.
        put("ctx-init", self.ctx_init.as_ref().map(|v| format!("{v:?}")));
        put("csc", self.csc.then(|| "true".to_string()));
        put(
            "class-token-position",
            self.class_token_position.map(|p| p.as_str().to_string()),
        );
        out
    }

    /// The epochs CoOp's schedule gives on `dataset` unless the user set them: 50 on ImageNet,
    /// by shot count elsewhere (`None`).
    pub fn coop_epochs(&self, dataset: &str) -> Option<usize> {
        self.epochs
            .or((dataset == IMAGENET).then_some(IMAGENET_EPOCHS))
    }
}
