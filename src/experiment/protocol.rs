//! The options a user sets on top of the protocol's defaults, and the protocol's rules: the
//! authors' per-dataset Tip-Adapter values, and CoOp's 50 epochs on ImageNet at every shot
//! count (for CoOp itself and for CLIP-Adapter, which follows CoOp's schedule); which
//! protocol a grid runs (few-shot, base-to-new, cross-dataset, domain) and which methods each
//! admits.
//!
//! An option that applies to none of the chosen methods is refused rather than ignored (a
//! reduction given to Tip-Adapter would otherwise silently do nothing). With several
//! methods, each gets the options that apply to it, and its rows record exactly those.

use serde::{Deserialize, Serialize};

use super::ExperimentError;
pub use crate::methods::MethodOverrides;
use crate::methods::{FewShotTask, LabelledSet, Matrix, Method, MethodKind, NewClasses};
use std::borrow::Cow;

/// Which protocol a results row was measured under.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    /// Train and test on the same classes.
    #[default]
    #[serde(rename = "few-shot")]
    FewShot,
    /// Train on the base classes; test on base and on new classes.
    #[serde(rename = "base-to-new")]
    BaseToNew,
    /// Train on a source dataset; test the same head on other datasets, among their classes.
    #[serde(rename = "cross-dataset")]
    CrossDataset,
    /// Train on a source dataset; test on shifted versions of it (the same classes, or a
    /// subset of them, in other image domains).
    #[serde(rename = "domain")]
    Domain,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::FewShot,
        Protocol::BaseToNew,
        Protocol::CrossDataset,
        Protocol::Domain,
    ];

    /// The name on the command line and in the `protocol` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::FewShot => "few-shot",
            Protocol::BaseToNew => "base-to-new",
            Protocol::CrossDataset => "cross-dataset",
            Protocol::Domain => "domain",
        }
    }

    /// Why `method` cannot run under this protocol, if it cannot: base-to-new and
    /// cross-dataset test on classes the head never trained on, which only a head that scores
    /// a class from its name can score.
    pub fn refuses(self, method: MethodKind) -> Option<&'static str> {
        match (self, method.card().new_classes) {
            (Protocol::BaseToNew | Protocol::CrossDataset, NewClasses::No(why)) => Some(why),
            _ => None,
        }
    }

    /// Whether a head trained on one dataset is tested on others.
    pub fn transfers(self) -> bool {
        matches!(self, Protocol::CrossDataset | Protocol::Domain)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = crate::unknown_name::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let names = Protocol::ALL.map(Protocol::as_str);
                crate::unknown_name::UnknownName::new("protocol", s, &names)
            })
    }
}

/// Whether hyper-parameters and best epochs are chosen on the few-shot validation set.
///
/// `None` is the setting of a user with one to four labelled images per class, who has no
/// validation set: the validation features are dropped before fitting, so every method falls
/// back on its documented default (its initial α/β/γ, the last epoch, C = 1, ...) or on its
/// own validation-free rule (LP++'s step sizes, CLAP's class-adaptive penalty), exactly as it
/// does on ImageNet, which has no validation split. The test set is never used for a choice.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Choices on the few-shot validation set (the protocol of every published comparison).
    #[default]
    Val,
    /// No validation set: defaults and validation-free rules only.
    None,
}

impl Validation {
    pub const ALL: [Validation; 2] = [Validation::Val, Validation::None];

    /// The name on the command line and in the `validation` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Validation::Val => "val",
            Validation::None => "none",
        }
    }

    /// The task a method sees under this protocol: without `None`'s validation set.
    pub fn task<'a>(self, task: &'a FewShotTask) -> Cow<'a, FewShotTask> {
        match self {
            Validation::None if !task.val.labels.is_empty() => Cow::Owned(self.apply(task.clone())),
            _ => Cow::Borrowed(task),
        }
    }

    /// [`Validation::task`] on an owned task, without copying it.
    pub fn apply(self, mut task: FewShotTask) -> FewShotTask {
        if self == Validation::None {
            task.val = LabelledSet {
                features: Matrix::zeros(0, task.dim()),
                labels: Vec::new(),
            };
            // ProLIP's view of the same validation images goes too.
            if let Some(pre) = &mut task.pre_projection {
                pre.val = Matrix::zeros(0, pre.val.cols);
            }
        }
        task
    }
}

impl std::fmt::Display for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name other than `val` or `none`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown validation protocol `{name}`; expected `val` (choices on the validation set) or `none` (defaults, no validation set)")]
pub struct UnknownValidation {
    pub name: String,
}

impl std::str::FromStr for Validation {
    type Err = UnknownValidation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Validation::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownValidation { name: s.into() })
    }
}

pub use crate::methods::overrides::{IMAGENET, IMAGENET_EPOCHS};

/// Whether `option` (a name on the command line) is one `kind` takes.
fn applies(option: &str, kind: MethodKind) -> bool {
    kind.card().options.contains(&option)
}

/// The methods that take `option`, for the error that refuses it.
fn taken_by(option: &str) -> String {
    let titles: Vec<&str> = MethodKind::all()
        .iter()
        .filter(|k| applies(option, **k))
        .map(|k| k.card().title)
        .collect();
    match titles.as_slice() {
        [] => "no method takes it".to_string(),
        [one] => format!("it is an option of {one} only"),
        many => format!("only {} take it", many.join(", ")),
    }
}

impl MethodOverrides {
    /// Refuses an option that applies to none of `kinds`.
    pub fn check(&self, kinds: &[MethodKind]) -> Result<(), ExperimentError> {
        if kinds.is_empty() {
            return Err(ExperimentError::Empty {
                what: "the method list",
            });
        }
        for (option, _) in self.given() {
            if !kinds.iter().any(|&k| applies(option, k)) {
                let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                return Err(ExperimentError::NotApplicable {
                    option,
                    to: super::NotApplicableTo::Methods(names.join(", ")),
                    why: taken_by(option),
                });
            }
        }
        Ok(())
    }

    /// Refuses an option that only means something with a validation set (CLIP-Adapter's
    /// search) under [`Validation::None`], where it would be silently ignored.
    pub fn check_validation(&self, validation: Validation) -> Result<(), ExperimentError> {
        if validation == Validation::None && !self.search.is_empty() {
            return Err(ExperimentError::NotApplicable {
                option: "search",
                to: super::NotApplicableTo::NoValidation,
                why: "a search chooses on the validation set, and this protocol has none".into(),
            });
        }
        Ok(())
    }

    /// The options that apply to `kind`, as a row records them (`key=value`, space-separated).
    pub fn label(&self, kind: MethodKind) -> String {
        let parts: Vec<String> = self
            .given()
            .into_iter()
            .filter(|(k, _)| applies(k, kind))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(" ")
    }

    /// The method with the protocol's values for `dataset`, these options on top, trained
    /// with `seed`.
    pub fn method(&self, kind: MethodKind, dataset: &str, seed: u64) -> Method {
        (kind.card().configure)(self, dataset, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::clip_adapter::{self, AdapterOptions};
    use crate::methods::coop::{self, CoopOptions};

    const CLIP_ADAPTER: MethodKind = MethodKind(&clip_adapter::CARD);
    const COOP: MethodKind = MethodKind(&coop::CARD);

    /// A method of the registry by its name.
    fn kind(name: &str) -> MethodKind {
        name.parse().unwrap()
    }

    #[test]
    fn options_for_no_chosen_method_are_refused() {
        let o = MethodOverrides {
            reduction: Some(8),
            ..Default::default()
        };
        let err = o.check(&[kind("tip-adapter")]).unwrap_err().to_string();
        assert!(
            err.contains("`reduction`") && err.contains("tip-adapter"),
            "{err}"
        );
        o.check(&[kind("tip-adapter"), CLIP_ADAPTER]).unwrap();
        assert_eq!(o.label(CLIP_ADAPTER), "reduction=8");
        assert_eq!(o.label(kind("tip-adapter")), "");
    }

    #[test]
    fn coop_options_apply_to_coop_only() {
        let o = MethodOverrides {
            n_ctx: Some(4),
            ctx_init: Some("a photo of a".into()),
            lr: Some(0.01),
            ..Default::default()
        };
        let err = o.check(&[CLIP_ADAPTER]).unwrap_err().to_string();
        assert!(err.contains("`n-ctx`") && err.contains("CoOp"), "{err}");
        o.check(&[COOP]).unwrap();
        assert_eq!(o.label(COOP), "lr=0.01 n-ctx=4 ctx-init=\"a photo of a\"");
        assert_eq!(o.label(CLIP_ADAPTER), "lr=0.01");
        let m = o.method(COOP, "eurosat", 2);
        let c = m.options::<CoopOptions>().unwrap();
        assert_eq!((c.n_ctx, c.lr, c.seed), (4, 0.01, 2));
        assert_eq!(c.ctx_init.as_deref(), Some("a photo of a"));
    }

    #[test]
    fn imagenet_trains_50_epochs_unless_told() {
        let o = MethodOverrides::default();
        let epochs = |d: &str, o: &MethodOverrides| {
            let m = o.method(CLIP_ADAPTER, d, 1);
            m.options::<AdapterOptions>().unwrap().epochs
        };
        assert_eq!(epochs("imagenet", &o), Some(50));
        assert_eq!(epochs("eurosat", &o), None);
        let o = MethodOverrides {
            epochs: Some(3),
            ..Default::default()
        };
        assert_eq!(epochs("imagenet", &o), Some(3));
        let coop = |d: &str, o: &MethodOverrides| {
            let m = o.method(COOP, d, 4);
            let c = m.options::<CoopOptions>().unwrap();
            (c.epochs, c.seed)
        };
        assert_eq!(coop("imagenet", &MethodOverrides::default()), (Some(50), 4));
        assert_eq!(coop("eurosat", &MethodOverrides::default()), (None, 4));
        assert_eq!(coop("imagenet", &o), (Some(3), 4));
        let tip_f = o.method(kind("tip-adapter-f"), "eurosat", 2).describe();
        assert!(
            tip_f.contains("alpha=2 ") && tip_f.contains("epochs=3 "),
            "{tip_f}"
        );
    }

    #[test]
    fn no_validation_drops_the_validation_set_and_refuses_a_search() {
        let m = |rows: usize| Matrix::zeros(rows, 2);
        let set = |rows: usize| LabelledSet {
            features: m(rows),
            labels: vec![0; rows],
        };
        let task = FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: vec!["a".into(), "b".into()],
            train: set(2),
            train_views: Vec::new(),
            val: set(3),
            test: set(4),
            text: crate::methods::TextClassifier {
                weights: m(2),
                logit_scale: 100.0,
                logit_bias: None,
            },
        };
        assert!(matches!(Validation::Val.task(&task), Cow::Borrowed(_)));
        let none = Validation::None.task(&task);
        assert_eq!((none.val.features.rows, none.val.labels.len()), (0, 0));
        assert_eq!((none.val.features.cols, none.test.labels.len()), (2, 4));
        assert_eq!(Validation::None.apply(task.clone()).val.labels.len(), 0);
        let mut with_pre = task.clone();
        with_pre.pre_projection = Some(Box::new(crate::methods::pre_projection::PreProjection {
            projection: crate::methods::pre_projection::Projection {
                // E = 2 (the task's width) from W = 3.
                weight: Matrix::zeros(2, 3),
                bias: None,
            },
            train: Matrix::zeros(2, 3),
            train_views: Vec::new(),
            val: Matrix::zeros(3, 3),
            test: Matrix::zeros(4, 3),
        }));
        let dropped = Validation::None.task(&with_pre);
        let pre = dropped.pre_projection.as_deref().unwrap();
        assert_eq!((pre.val.rows, pre.val.cols, pre.test.rows), (0, 3, 4));
        pre.validate(&dropped).unwrap();
        assert_eq!(Validation::Val.apply(task).val.labels.len(), 3);

        assert_eq!("none".parse::<Validation>().unwrap(), Validation::None);
        assert_eq!(" val ".parse::<Validation>().unwrap(), Validation::Val);
        assert!("test".parse::<Validation>().is_err());
        let o = MethodOverrides {
            search: vec![0.2, 0.4],
            ..Default::default()
        };
        o.check_validation(Validation::Val).unwrap();
        let err = o
            .check_validation(Validation::None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`search`") && err.contains("`validation` = none"),
            "{err}"
        );
    }
}
