//! The options a user sets on top of the protocol's values (the flags of `run`, `sweep` and
//! `fit`); `None` (or empty) keeps the protocol's value. Each method's card lists the ones it
//! takes and its `configure` applies them; the experiment refuses an option that none of the
//! chosen methods takes.

use super::clip_adapter::{Branch, Form, RatioMode};
use super::coop::ClassPosition;
use crate::clip::train::lora::{LoraEncoder, LoraParams, LoraPosition};

/// What an option's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionValue {
    /// A whole number, at least 1.
    Count,
    /// A finite number.
    Number,
    /// Finite numbers, comma-separated.
    Numbers,
    /// One of these names.
    Choice(&'static [&'static str]),
    /// Some of these names, comma-separated.
    Names(&'static [&'static str]),
    /// Free text.
    Phrase,
    /// On or off (`true` / `false`).
    Switch,
}

/// One option a user can set, with what it takes and what it does (the command line's
/// `--help` and the Python package's docstrings read these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSpec {
    /// As the cards and results rows name it (`batch-size`).
    pub name: &'static str,
    pub value: OptionValue,
    pub help: &'static str,
}

/// Every option, in the order rows list them.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "branch",
        value: OptionValue::Choice(&["visual", "text", "both"]),
        help: "CLIP-Adapter: which features get an adapter [default: visual].",
    },
    OptionSpec {
        name: "form",
        value: OptionValue::Choice(&["official", "paper"]),
        help: "CLIP-Adapter: `official` (ReLU after both Linear layers, the released code) or \
               `paper` [default: official].",
    },
    OptionSpec {
        name: "reduction",
        value: OptionValue::Count,
        help: "CLIP-Adapter: hidden width = feature width / reduction [default: 4].",
    },
    OptionSpec {
        name: "ratio",
        value: OptionValue::Choice(&["fixed", "learnable", "hyper"]),
        help: "CLIP-Adapter ratios: `fixed`, `learnable` (a scalar per branch) or `hyper` \
               (predicted by the hyper-network Q(f, W)) [default: fixed].",
    },
    OptionSpec {
        name: "search",
        value: OptionValue::Numbers,
        help: "CLIP-Adapter: search the ratio on the validation set over these values (e.g. \
               0.1,0.2,0.4,0.6,0.8).",
    },
    OptionSpec {
        name: "alpha",
        value: OptionValue::Number,
        help: "Residual ratio α: weight of the adapted image feature (CLIP-Adapter, default \
               0.2); Tip-Adapter(-F)'s α when there is no validation set (default: the authors' \
               per-dataset value); TaskRes's residual scale (default 0.5, 1 on Flowers102).",
    },
    OptionSpec {
        name: "beta",
        value: OptionValue::Number,
        help: "Text ratio β (CLIP-Adapter), Tip-Adapter(-F)'s β; ProKeR's RBF kernel width β, \
               used as is instead of its validation grid (without validation, default: the \
               authors' value for the shot count).",
    },
    OptionSpec {
        name: "lmbda",
        value: OptionValue::Number,
        help: "ProKeR's proximal regularisation λ (the authors' `lmbda`, > 0), used as is \
               instead of its validation grid (without validation, default: the authors' value \
               for the shot count).",
    },
    OptionSpec {
        name: "lr",
        value: OptionValue::Number,
        help: "Learning rate (CLIP-Adapter and CoOp default 0.002; Tip-Adapter-F 0.001; \
               TaskRes 0.002, 0.0002 on ImageNet; ProLIP and the cross-modal probe: used as is \
               instead of their validation search, over 1e-2..1e-5 and {1e-3, 1e-4}, default \
               1e-5 and 1e-4 without validation).",
    },
    OptionSpec {
        name: "epochs",
        value: OptionValue::Count,
        help: "Epochs (default: CLIP-Adapter and CoOp by shots, 50/100/100/200/200, and 50 on \
               ImageNet; TaskRes by shots, 100/100/100/200/200; Tip-Adapter-F the authors' \
               per-dataset value; ProLIP 300).",
    },
    OptionSpec {
        name: "batch-size",
        value: OptionValue::Count,
        help: "Batch size (CLIP-Adapter and CoOp 32, Tip-Adapter-F and TaskRes 256; the \
               cross-modal probe: used instead of its search over 8 and 32, half text, half \
               images).",
    },
    OptionSpec {
        name: "lora-rank",
        value: OptionValue::Count,
        help: "CLIP-LoRA: rank r of each update [default: 2].",
    },
    OptionSpec {
        name: "lora-alpha",
        value: OptionValue::Number,
        help: "CLIP-LoRA: the updates are scaled by α/√r [default: 1].",
    },
    OptionSpec {
        name: "lora-dropout",
        value: OptionValue::Number,
        help: "CLIP-LoRA: dropout rate on the low-rank path's input, in [0, 1) [default: 0.25].",
    },
    OptionSpec {
        name: "lora-params",
        value: OptionValue::Names(&["q", "k", "v", "o"]),
        help: "CLIP-LoRA: the attention projections adapted, comma-separated among q, k, v, o \
               [default: q,k,v].",
    },
    OptionSpec {
        name: "lora-encoder",
        value: OptionValue::Choice(&["text", "vision", "both"]),
        help: "CLIP-LoRA: the towers adapted [default: both].",
    },
    OptionSpec {
        name: "lora-position",
        value: OptionValue::Choice(&[
            "bottom",
            "mid",
            "up",
            "half-up",
            "half-bottom",
            "all",
            "top3",
        ]),
        help: "CLIP-LoRA: the layers adapted (thirds and halves of the tower's depth, or its last \
               3) [default: all].",
    },
    OptionSpec {
        name: "lora-last",
        value: OptionValue::Count,
        help: "CLIP-LoRA, our variant (not the reference's): updates in the last N layers of the \
               adapted tower(s) only, the text prompts' states entering them computed once \
               instead of at every step (exact: the rows of the same layers at full depth); \
               replaces --lora-position (recorded as position last:N).",
    },
    OptionSpec {
        name: "lora-views",
        value: OptionValue::Count,
        help: "CLIP-LoRA, our variant (not the reference's protocol, which crops afresh at every \
               step): train on N fixed augmented views per image (the same crop and flip rule), \
               encoded once up to the first layer that runs at every step (with --lora-last, \
               the last layers; with only the text tower adapted, the whole frozen image tower); \
               each step picks one view per image.",
    },
    OptionSpec {
        name: "iters-per-shot",
        value: OptionValue::Count,
        help: "CLIP-LoRA: training steps per shot, `n_iters` [default: 500, i.e. 8000 steps at 16 \
               shots].",
    },
    OptionSpec {
        name: "n-ctx",
        value: OptionValue::Count,
        help: "CoOp: number of learned context vectors M [default: 16].",
    },
    OptionSpec {
        name: "ctx-init",
        value: OptionValue::Phrase,
        help: "CoOp: initialise the context from this phrase's token embeddings (e.g. \"a photo \
               of a\"); M becomes its token count.",
    },
    OptionSpec {
        name: "csc",
        value: OptionValue::Switch,
        help: "CoOp: one context per class (class-specific context) instead of one shared by \
               all.",
    },
    OptionSpec {
        name: "class-token-position",
        value: OptionValue::Choice(&["end", "middle", "front"]),
        help: "CoOp: where the class name sits among the context vectors [default: end].",
    },
];

/// An option set to something it does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option `{given}`; the options are: {}", option_names().join(", "))]
    Unknown { given: String },
    #[error("option {name}: `{given}` is not {expected}")]
    Invalid {
        name: &'static str,
        given: String,
        expected: String,
    },
    #[error("options {name} and {other} cannot be given together: {why}")]
    Conflict {
        name: &'static str,
        other: &'static str,
        why: &'static str,
    },
}

fn option_names() -> Vec<&'static str> {
    OPTIONS.iter().map(|o| o.name).collect()
}

impl OptionValue {
    /// What a value must be, in words.
    fn expected(self) -> String {
        match self {
            OptionValue::Count => "a whole number of at least 1".into(),
            OptionValue::Number => "a finite number".into(),
            OptionValue::Numbers => "a comma-separated list of finite numbers".into(),
            OptionValue::Choice(names) => format!("one of: {}", names.join(", ")),
            OptionValue::Names(names) => {
                format!("comma-separated names among: {}", names.join(", "))
            }
            OptionValue::Phrase => "a non-empty phrase".into(),
            OptionValue::Switch => "true or false".into(),
        }
    }
}

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
    /// ProKeR's λ.
    pub lmbda: Option<f32>,
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
    pub lora_rank: Option<usize>,
    pub lora_alpha: Option<f32>,
    pub lora_dropout: Option<f32>,
    pub lora_params: Option<LoraParams>,
    pub lora_encoder: Option<LoraEncoder>,
    pub lora_position: Option<LoraPosition>,
    /// CLIP-LoRA in the last K layers only (ours; [`LoraPosition::Last`]).
    pub lora_last: Option<usize>,
    /// CLIP-LoRA on this many fixed views per image (ours).
    pub lora_views: Option<usize>,
    /// CLIP-LoRA's `n_iters`.
    pub iters_per_shot: Option<usize>,
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
        put("lmbda", self.lmbda.map(|v| v.to_string()));
        put("lr", self.lr.map(|v| v.to_string()));
        put("epochs", self.epochs.map(|v| v.to_string()));
        put("batch-size", self.batch_size.map(|v| v.to_string()));
        put("lora-rank", self.lora_rank.map(|v| v.to_string()));
        put("lora-alpha", self.lora_alpha.map(|v| v.to_string()));
        put("lora-dropout", self.lora_dropout.map(|v| v.to_string()));
        put("lora-params", self.lora_params.map(|v| v.to_string()));
        put("lora-encoder", self.lora_encoder.map(|v| v.to_string()));
        put("lora-position", self.lora_position.map(|v| v.to_string()));
        put("lora-last", self.lora_last.map(|v| v.to_string()));
        put("lora-views", self.lora_views.map(|v| v.to_string()));
        put("iters-per-shot", self.iters_per_shot.map(|v| v.to_string()));
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

    /// Sets an option from its text, as a command line or a keyword argument gives it; `name`
    /// as [`OPTIONS`] spells it, `_` read as `-`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), OptionError> {
        let key = name.replace('_', "-");
        let spec =
            (OPTIONS.iter().find(|o| o.name == key)).ok_or_else(|| OptionError::Unknown {
                given: name.to_string(),
            })?;
        let invalid = || OptionError::Invalid {
            name: spec.name,
            given: value.to_string(),
            expected: spec.value.expected(),
        };
        let v = value.trim();
        let count = || {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(invalid)
        };
        // A count that sizes an allocation, within its limit of the one table.
        let bounded = |limit: crate::limits::Limit| {
            count().and_then(|n| match n as u64 <= limit.max {
                true => Ok(n),
                false => Err(OptionError::Invalid {
                    name: spec.name,
                    given: value.to_string(),
                    expected: format!("a whole number from 1 to {} ({})", limit.max, limit.why),
                }),
            })
        };
        let number =
            |x: &str| (x.trim().parse::<f32>().ok().filter(|x| x.is_finite())).ok_or_else(invalid);
        let choice = |_| invalid();
        match spec.name {
            "branch" => self.branch = Some(v.parse().map_err(choice)?),
            "form" => self.form = Some(v.parse().map_err(choice)?),
            "reduction" => self.reduction = Some(count()?),
            "ratio" => self.ratio = Some(v.parse().map_err(choice)?),
            "search" => self.search = v.split(',').map(number).collect::<Result<_, _>>()?,
            "alpha" => self.alpha = Some(number(v)?),
            "beta" => self.beta = Some(number(v)?),
            "lmbda" => self.lmbda = Some(number(v)?),
            "lr" => self.lr = Some(number(v)?),
            "epochs" => self.epochs = Some(count()?),
            "batch-size" => self.batch_size = Some(count()?),
            "lora-rank" => self.lora_rank = Some(count()?),
            "lora-alpha" => self.lora_alpha = Some(number(v)?),
            "lora-dropout" => {
                self.lora_dropout = Some(number(v).and_then(|p| match (0.0..1.0).contains(&p) {
                    true => Ok(p),
                    false => Err(invalid()),
                })?)
            }
            "lora-params" => self.lora_params = Some(v.parse().map_err(|_| invalid())?),
            "lora-encoder" => self.lora_encoder = Some(v.parse().map_err(choice)?),
            "lora-position" => {
                let position: LoraPosition = v.parse().map_err(choice)?;
                // `last:K` is `lora-last`'s, which says it is our variant.
                if matches!(position, LoraPosition::Last(_)) {
                    return Err(invalid());
                }
                self.set_layers(Some(position), self.lora_last)?
            }
            "lora-last" => {
                self.set_layers(self.lora_position, Some(bounded(crate::limits::LAYERS)?))?
            }
            "lora-views" => self.lora_views = Some(bounded(crate::limits::VIEWS)?),
            "iters-per-shot" => self.iters_per_shot = Some(count()?),
            "n-ctx" => self.n_ctx = Some(count()?),
            "ctx-init" if !v.is_empty() => self.ctx_init = Some(value.to_string()),
            "csc" => self.csc = v.parse().map_err(|_| invalid())?,
            "class-token-position" => self.class_token_position = Some(v.parse().map_err(choice)?),
            _ => return Err(invalid()),
        }
        Ok(())
    }

    /// Sets CLIP-LoRA's layers, refusing both ways of choosing them at once (one would hide the
    /// other).
    fn set_layers(
        &mut self,
        position: Option<LoraPosition>,
        last: Option<usize>,
    ) -> Result<(), OptionError> {
        if position.is_some() && last.is_some() {
            return Err(OptionError::Conflict {
                name: "lora-last",
                other: "lora-position",
                why: "both choose the adapted layers",
            });
        }
        (self.lora_position, self.lora_last) = (position, last);
        Ok(())
    }

    /// CLIP-LoRA's layers: `last:K` from `lora-last`, else `lora-position`.
    pub fn lora_layers(&self) -> Option<LoraPosition> {
        self.lora_last
            .map(LoraPosition::Last)
            .or(self.lora_position)
    }

    /// The epochs CoOp's schedule gives on `dataset` unless the user set them: 50 on ImageNet,
    /// by shot count elsewhere (`None`).
    pub fn coop_epochs(&self, dataset: &str) -> Option<usize> {
        self.epochs
            .or((dataset == IMAGENET).then_some(IMAGENET_EPOCHS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value each kind of option takes.
    fn sample(value: OptionValue) -> &'static str {
        match value {
            OptionValue::Count => "3",
            OptionValue::Number => "0.5",
            OptionValue::Numbers => "0.1, 0.2",
            OptionValue::Choice(names) => names[names.len() - 1],
            OptionValue::Names(names) => names[0],
            OptionValue::Phrase => "a photo of a",
            OptionValue::Switch => "true",
        }
    }

    #[test]
    fn every_option_is_set_by_its_name_and_listed_under_it() {
        for spec in OPTIONS {
            let mut o = MethodOverrides::default();
            o.set(spec.name, sample(spec.value)).unwrap();
            let given: Vec<_> = o.given().into_iter().map(|(k, _)| k).collect();
            assert_eq!(given, [spec.name], "{}", spec.name);
            // A keyword argument's spelling.
            let mut p = MethodOverrides::default();
            p.set(&spec.name.replace('-', "_"), sample(spec.value))
                .unwrap();
            assert_eq!(o, p);
        }
    }

    #[test]
    fn values_are_parsed_as_the_flags_parse_them() {
        let mut o = MethodOverrides::default();
        o.set("search", "0.1,0.2, 0.4").unwrap();
        o.set("batch_size", " 16 ").unwrap();
        o.set("class-token-position", "middle").unwrap();
        assert_eq!(o.search, [0.1, 0.2, 0.4]);
        assert_eq!(o.batch_size, Some(16));
        assert_eq!(o.class_token_position, Some(ClassPosition::Middle));
    }

    #[test]
    fn bad_values_and_names_are_refused_with_what_was_expected() {
        let mut o = MethodOverrides::default();
        for (name, value, expected) in [
            ("epochs", "0", "at least 1"),
            ("reduction", "two", "whole number"),
            ("alpha", "nan", "finite"),
            ("search", "0.1,,0.2", "comma-separated"),
            ("branch", "left", "visual, text, both"),
            ("csc", "yes", "true or false"),
            ("ctx-init", " ", "non-empty"),
            ("lora-last", "0", "at least 1"),
            ("lora-last", "257", "from 1 to 256"),
            ("lora-views", "1001", "from 1 to 1000"),
            // `last:K` is spelt `lora-last`, which says it is ours.
            ("lora-position", "last:1", "one of"),
        ] {
            let e = o.set(name, value).unwrap_err();
            assert!(matches!(e, OptionError::Invalid { .. }), "{name}");
            assert!(e.to_string().contains(expected), "{name}: {e}");
        }
        let e = o.set("alfa", "1").unwrap_err();
        assert!(matches!(e, OptionError::Unknown { .. }));
        assert!(e.to_string().contains("alpha"), "{e}");
        assert_eq!(
            o,
            MethodOverrides::default(),
            "a refused value leaves the options as they were"
        );
    }

    #[test]
    fn lora_last_and_lora_position_are_not_given_together() {
        for order in [
            ["lora-last", "lora-position"],
            ["lora-position", "lora-last"],
        ] {
            let mut o = MethodOverrides::default();
            let value = |name: &str| if name == "lora-last" { "2" } else { "up" };
            o.set(order[0], value(order[0])).unwrap();
            let e = o.set(order[1], value(order[1])).unwrap_err();
            assert!(matches!(e, OptionError::Conflict { .. }), "{order:?}: {e}");
            assert!(e.to_string().contains("lora-last and lora-position"), "{e}");
        }
        let mut o = MethodOverrides::default();
        o.set("lora-last", "2").unwrap();
        assert_eq!(o.lora_layers(), Some(LoraPosition::Last(2)));
        assert_eq!(o.given(), [("lora-last", "2".to_string())]);
    }
}
