//! The paper's ablations of CLIP-Adapter as sweeps over one option: the bottleneck width
//! (Table 1 of Gao et al., 2021: hidden width D/r for r = 1, 2, 4, 8, 16, 32) and the residual
//! ratio α (Table 2: α fixed at 0, 0.2, …, 1, no search on validation), each on the few-shot
//! draws of some datasets.
//!
//! A point of a sweep is an ordinary CLIP-Adapter row whose options record the swept value
//! (`reduction=8`, `alpha=0.6`), so a sweep shares `run`'s results file, resumes like it, and
//! its rows are the ones `run --methods clip-adapter --reduction 8` would make.

use super::{GridMethod, MethodOverrides, ResultRow};
use crate::methods::clip_adapter::{Branch, RatioMode};
use crate::methods::eval;
use crate::methods::registry::CLIP_ADAPTER;

/// Errors of a sweep's description.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("`{0}` is not a sweep: expected `reduction` (the bottleneck width) or `alpha` (the residual ratio)")]
    UnknownParam(String),

    #[error("the list of {param} values is empty")]
    NoValues { param: &'static str },

    #[error("{param} value `{value}` is out of range: expected {expected}")]
    OutOfRange {
        param: &'static str,
        value: String,
        expected: &'static str,
    },

    #[error("{param} value `{value}` is given twice")]
    Duplicate { param: &'static str, value: String },

    #[error(
        "{} cannot be set in a sweep over {param}: {why}",
        crate::hint::opt(option)
    )]
    Conflict {
        option: &'static str,
        param: &'static str,
        why: &'static str,
    },

    /// The other options, checked as `run` checks them for CLIP-Adapter.
    #[error(transparent)]
    Options(#[from] super::ExperimentError),
}

/// A table cell: the mean, and the std over seeds (none for a mean over datasets).
type Cell = Option<(f32, Option<f32>)>;

/// The option a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepParam {
    /// The bottleneck: hidden width = feature width / reduction.
    Reduction,
    /// The residual ratio α of the visual adapter, fixed (not searched).
    Alpha,
}

impl SweepParam {
    pub const ALL: [SweepParam; 2] = [SweepParam::Reduction, SweepParam::Alpha];

    pub fn name(self) -> &'static str {
        match self {
            SweepParam::Reduction => "reduction",
            SweepParam::Alpha => "alpha",
        }
    }
}

impl std::str::FromStr for SweepParam {
    type Err = SweepError;

    fn from_str(s: &str) -> Result<Self, SweepError> {
        let t = s.trim();
        (Self::ALL.into_iter())
            .find(|p| p.name() == t)
            .ok_or_else(|| SweepError::UnknownParam(s.to_string()))
    }
}

/// One sweep: the values of its option, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Sweep {
    Reduction(Vec<usize>),
    Alpha(Vec<f32>),
}

impl Sweep {
    /// The paper's Table 1: D, D/2, …, D/32.
    pub fn paper(param: SweepParam) -> Sweep {
        match param {
            SweepParam::Reduction => Sweep::Reduction(vec![1, 2, 4, 8, 16, 32]),
            SweepParam::Alpha => Sweep::Alpha(vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        }
    }

    /// A sweep over `param` with `values` given as text (a reduction is a positive whole
    /// number, α a number in [0, 1]); each value once.
    pub fn parse(param: SweepParam, values: &[String]) -> Result<Sweep, SweepError> {
        let p = param.name();
        if values.is_empty() {
            return Err(SweepError::NoValues { param: p });
        }
        let out_of_range = |v: &str, expected| SweepError::OutOfRange {
            param: p,
            value: v.to_string(),
            expected,
        };
        let sweep = match param {
            SweepParam::Reduction => {
                let mut out = Vec::with_capacity(values.len());
                for v in values {
                    match v.trim().parse::<usize>() {
                        Ok(r) if r > 0 => out.push(r),
                        _ => return Err(out_of_range(v, "a whole number of at least 1")),
                    }
                }
                Sweep::Reduction(out)
            }
            SweepParam::Alpha => {
                let mut out = Vec::with_capacity(values.len());
                for v in values {
                    match v.trim().parse::<f32>() {
                        Ok(a) if (0.0..=1.0).contains(&a) => out.push(a),
                        _ => return Err(out_of_range(v, "a number from 0 to 1")),
                    }
                }
                Sweep::Alpha(out)
            }
        };
        let shown: Vec<String> = (0..sweep.len()).map(|i| sweep.value(i)).collect();
        for (i, v) in shown.iter().enumerate() {
            if shown[..i].contains(v) {
                return Err(SweepError::Duplicate {
                    param: p,
                    value: v.clone(),
                });
            }
        }
        Ok(sweep)
    }

    pub fn param(&self) -> SweepParam {
        match self {
            Sweep::Reduction(_) => SweepParam::Reduction,
            Sweep::Alpha(_) => SweepParam::Alpha,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Sweep::Reduction(v) => v.len(),
            Sweep::Alpha(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th value as the options column writes it.
    pub fn value(&self, i: usize) -> String {
        match self {
            Sweep::Reduction(v) => v[i].to_string(),
            Sweep::Alpha(v) => v[i].to_string(),
        }
    }

    /// The `i`-th value as the paper's tables name it (`D/4`, `0.2`).
    pub fn display(&self, i: usize) -> String {
        match self {
            Sweep::Reduction(v) if v[i] == 1 => "D".to_string(),
            Sweep::Reduction(v) => format!("D/{}", v[i]),
            Sweep::Alpha(v) => v[i].to_string(),
        }
    }

    /// Refuses options that would hide the swept value: the option itself, and for α a
    /// search on validation, learned ratios or a text-only adapter (α weighs the visual one).
    /// The rest is checked as `run` checks CLIP-Adapter's options.
    pub fn check(&self, base: &MethodOverrides) -> Result<(), SweepError> {
        let param = self.param().name();
        let conflict = |option, why| Err(SweepError::Conflict { option, param, why });
        match self {
            Sweep::Reduction(_) if base.reduction.is_some() => {
                return conflict("reduction", "it is the swept option");
            }
            Sweep::Alpha(_) if base.alpha.is_some() => {
                return conflict("alpha", "it is the swept option");
            }
            Sweep::Alpha(_) if !base.search.is_empty() => {
                return conflict("search", "a search on validation would replace each α");
            }
            Sweep::Alpha(_) if base.ratio.is_some_and(|r| r != RatioMode::Fixed) => {
                return conflict("ratio", "learned ratios would replace each α");
            }
            Sweep::Alpha(_) if base.branch == Some(Branch::Text) => {
                return conflict("branch", "α weighs the visual adapter, which `text` lacks");
            }
            _ => {}
        }
        base.check(&[CLIP_ADAPTER])?;
        Ok(())
    }

    /// `base` with the `i`-th value set.
    pub fn point(&self, base: &MethodOverrides, i: usize) -> MethodOverrides {
        let mut o = base.clone();
        match self {
            Sweep::Reduction(v) => o.reduction = Some(v[i]),
            Sweep::Alpha(v) => o.alpha = Some(v[i]),
        }
        o
    }

    /// The grid's methods: CLIP-Adapter once per value, with the options a row records.
    pub fn grid_methods(&self, base: &MethodOverrides) -> Vec<GridMethod> {
        (0..self.len())
            .map(|i| GridMethod {
                label: CLIP_ADAPTER.name().to_string(),
                options: self.point(base, i).label(CLIP_ADAPTER),
            })
            .collect()
    }

    /// The paper's layout: a table per shot count, a line per value and a column per dataset
    /// (mean ± std of test accuracy over seeds), then the mean over datasets when there are
    /// several; the best value of each column in bold.
    pub fn markdown(&self, base: &MethodOverrides, rows: &[ResultRow]) -> String {
        let options: Vec<String> = (self.grid_methods(base).into_iter())
            .map(|m| m.options)
            .collect();
        self.table(&options, rows)
    }

    /// [`Sweep::markdown`] for points whose rows carry `options[i]` (the `i`-th value's).
    pub fn table(&self, options: &[String], rows: &[ResultRow]) -> String {
        let clip_adapter = CLIP_ADAPTER.name();
        let rows: Vec<&ResultRow> = (rows.iter())
            .filter(|r| r.method == clip_adapter && options.contains(&r.options))
            .collect();
        let mut datasets: Vec<&str> = Vec::new();
        let mut shots: Vec<usize> = Vec::new();
        for r in &rows {
            if !datasets.contains(&r.dataset.as_str()) {
                datasets.push(&r.dataset);
            }
            if !shots.contains(&r.shots) {
                shots.push(r.shots);
            }
        }
        shots.sort_unstable();
        let cell = |o: &String, dataset: &str, k: usize| {
            let v: Vec<f32> = (rows.iter())
                .filter(|r| r.options == *o && r.dataset == dataset && r.shots == k)
                .map(|r| r.test_accuracy)
                .collect();
            (!v.is_empty()).then(|| eval::mean_std(&v))
        };
        let (what, column) = match self.param() {
            SweepParam::Reduction => ("the bottleneck width (hidden width D/r)", "hidden width"),
            SweepParam::Alpha => ("the residual ratio α (fixed, not searched)", "α"),
        };
        let mut s = format!(
            "CLIP-Adapter, sweep over {what}. Test accuracy (%), mean ± std over seeds; the \
             best value of each column in bold.\n"
        );
        let average = datasets.len() > 1;
        for &k in &shots {
            // columns[j][i]: the cell of value i in column j (datasets, then their mean).
            let mut columns: Vec<Vec<Cell>> = (datasets.iter())
                .map(|d| {
                    (options.iter())
                        .map(|o| cell(o, d, k).map(|(mean, sd)| (mean, Some(sd))))
                        .collect()
                })
                .collect();
            if average {
                let means = (0..options.len())
                    .map(|i| {
                        let v: Option<Vec<f32>> =
                            columns.iter().map(|c| c[i].map(|x| x.0)).collect();
                        v.map(|v| (v.iter().sum::<f32>() / v.len() as f32, None))
                    })
                    .collect();
                columns.push(means);
            }
            s.push_str(&format!("\n### {k}-shot\n\n| {column} |"));
            for d in &datasets {
                s.push_str(&format!(" {d} |"));
            }
            if average {
                s.push_str(" mean |");
            }
            s.push_str("\n|---|");
            s.push_str(&"---:|".repeat(columns.len()));
            s.push('\n');
            let best: Vec<Option<f32>> = (columns.iter())
                .map(|c| c.iter().flatten().map(|x| x.0).reduce(f32::max))
                .collect();
            for i in 0..options.len() {
                s.push_str(&format!("| {} |", self.display(i)));
                for (c, b) in columns.iter().zip(&best) {
                    match c[i] {
                        Some((mean, sd)) => {
                            let mut t = format!("{mean:.2}");
                            if let Some(sd) = sd {
                                t.push_str(&format!(" ± {sd:.2}"));
                            }
                            if Some(mean) == *b {
                                t = format!("**{t}**");
                            }
                            s.push_str(&format!(" {t} |"));
                        }
                        None => s.push_str(" – |"),
                    }
                }
                s.push('\n');
            }
        }
        s
    }
}

/// A sweep found among results rows: CLIP-Adapter rows with the same other options and at
/// least two values of the swept one.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundSweep {
    /// Its values, ascending.
    pub sweep: Sweep,
    /// The options every point shares (`key=value`, space-separated; empty: none).
    pub base: String,
    /// The options column of the `i`-th value's rows.
    pub options: Vec<String>,
}

impl FoundSweep {
    /// The mean over seeds of the test accuracy of the `i`-th value.
    pub fn cell(&self, rows: &[ResultRow], i: usize, dataset: &str, shots: usize) -> Option<f32> {
        let clip_adapter = CLIP_ADAPTER.name();
        let v: Vec<f32> = (rows.iter())
            .filter(|r| r.method == clip_adapter && r.options == self.options[i])
            .filter(|r| r.dataset == dataset && r.shots == shots)
            .map(|r| r.test_accuracy)
            .collect();
        (!v.is_empty()).then(|| eval::mean_std(&v).0)
    }
}

/// The sweeps among `rows`: over the bottleneck first, then over α among the rows left, each
/// base's points in ascending order of value; sweeps ordered by parameter, then base. A row
/// belongs to one sweep at most.
pub fn find_sweeps(rows: &[ResultRow]) -> Vec<FoundSweep> {
    let clip_adapter = CLIP_ADAPTER.name();
    let mut options: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.method == clip_adapter) {
        if !options.contains(&r.options.as_str()) {
            options.push(&r.options);
        }
    }
    let mut found = Vec::new();
    for param in SweepParam::ALL {
        let prefix = format!("{}=", param.name());
        // base -> (value, options) of each point.
        let mut groups: std::collections::BTreeMap<String, Vec<(f64, String, String)>> =
            Default::default();
        for o in &options {
            let tokens: Vec<&str> = o.split(' ').collect();
            let Some(v) = tokens.iter().find_map(|t| t.strip_prefix(prefix.as_str())) else {
                continue;
            };
            let Ok(x) = v.parse::<f64>() else { continue };
            let base: Vec<&str> = (tokens.iter().copied())
                .filter(|t| !t.starts_with(prefix.as_str()))
                .collect();
            groups
                .entry(base.join(" "))
                .or_default()
                .push((x, v.to_string(), o.to_string()));
        }
        for (base, mut points) in groups {
            if points.len() < 2 {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let values: Vec<String> = points.iter().map(|p| p.1.clone()).collect();
            let Ok(sweep) = Sweep::parse(param, &values) else {
                continue;
            };
            let point_options: Vec<String> = points.into_iter().map(|p| p.2).collect();
            options.retain(|o| !point_options.iter().any(|p| p == o));
            found.push(FoundSweep {
                sweep,
                base,
                options: point_options,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_are_checked() {
        let r = Sweep::parse(SweepParam::Reduction, &strings(&["1", " 4", "32"])).unwrap();
        assert_eq!(r, Sweep::Reduction(vec![1, 4, 32]));
        assert_eq!((r.display(0), r.display(1)), ("D".into(), "D/4".into()));
        for bad in [&["0"][..], &["2.5"], &["-1"], &[]] {
            let err = Sweep::parse(SweepParam::Reduction, &strings(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    SweepError::OutOfRange { .. } | SweepError::NoValues { .. }
                ),
                "{bad:?}: {err}"
            );
        }
        let err = Sweep::parse(SweepParam::Alpha, &strings(&["0.2", "1.5"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "alpha value `1.5` is out of range: expected a number from 0 to 1"
        );
        assert!(Sweep::parse(SweepParam::Alpha, &strings(&["NaN"])).is_err());
        let err = Sweep::parse(SweepParam::Alpha, &strings(&["0.2", "0.20"])).unwrap_err();
        assert!(matches!(err, SweepError::Duplicate { .. }), "{err}");
        assert!("beta".parse::<SweepParam>().is_err());
        assert_eq!(" alpha".parse::<SweepParam>().unwrap(), SweepParam::Alpha);
    }

    #[test]
    fn options_that_hide_the_swept_value_are_refused() {
        let alpha = Sweep::paper(SweepParam::Alpha);
        let refused = |o: MethodOverrides, option: &str| {
            let err = alpha.check(&o).unwrap_err();
            assert!(
                matches!(&err, SweepError::Conflict { option: x, .. } if *x == option),
                "{err}"
            );
        };
        refused(
            MethodOverrides {
                search: vec![0.2, 0.4],
                ..Default::default()
            },
            "search",
        );
        refused(
            MethodOverrides {
                ratio: Some(RatioMode::Learnable),
                ..Default::default()
            },
            "ratio",
        );
        refused(
            MethodOverrides {
                branch: Some(Branch::Text),
                ..Default::default()
            },
            "branch",
        );
        refused(
            MethodOverrides {
                alpha: Some(0.5),
                ..Default::default()
            },
            "alpha",
        );
        let reduction = Sweep::paper(SweepParam::Reduction);
        let with_r = MethodOverrides {
            reduction: Some(4),
            ..Default::default()
        };
        assert!(reduction.check(&with_r).is_err());
        assert!(alpha.check(&with_r).is_ok());
    }

    #[test]
    fn points_are_ordinary_clip_adapter_rows() {
        let base = MethodOverrides {
            epochs: Some(5),
            ..Default::default()
        };
        let s = Sweep::Reduction(vec![2, 8]);
        let m = s.grid_methods(&base);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].label, "clip-adapter");
        // The same options string `run --methods clip-adapter --reduction 8 --epochs 5` records.
        let run = MethodOverrides {
            reduction: Some(8),
            ..base.clone()
        };
        assert_eq!(m[1].options, run.label(CLIP_ADAPTER));
        assert_eq!(m[1].options, "reduction=8 epochs=5");
    }

    #[test]
    fn sweeps_are_found_among_rows() {
        let row = |options: &str| ResultRow {
            method: "clip-adapter".into(),
            options: options.into(),
            dataset: "dtd".into(),
            shots: 16,
            seed: 1,
            validation: Default::default(),
            model: "m".into(),
            model_name: "m".into(),
            features: "f".into(),
            val_accuracy: 50.0,
            test_accuracy: 50.0,
            train_seconds: 0.0,
            chosen: String::new(),
            augmentation: String::new(),
            protocol: Default::default(),
            new_accuracy: None,
            source_dataset: String::new(),
        };
        let rows = vec![
            row("reduction=8 epochs=3"),
            row("reduction=2 epochs=3"),
            row("reduction=16"),
            row("alpha=0.6"),
            row("alpha=0"),
            row(""),
            row("branch=text"),
        ];
        let found = find_sweeps(&rows);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].sweep, Sweep::Reduction(vec![2, 8]));
        assert_eq!(found[0].base, "epochs=3");
        assert_eq!(
            found[0].options,
            ["reduction=2 epochs=3", "reduction=8 epochs=3"]
        );
        assert_eq!(found[1].sweep, Sweep::Alpha(vec![0.0, 0.6]));
        assert_eq!(found[1].base, "");
        assert_eq!(found[1].cell(&rows, 1, "dtd", 16), Some(50.0));
        assert_eq!(found[1].cell(&rows, 1, "dtd", 8), None);
    }

    #[test]
    fn table_has_a_line_per_value_and_bolds_the_best() {
        let s = Sweep::Alpha(vec![0.0, 0.6]);
        let base = MethodOverrides::default();
        let row = |alpha: &str, dataset: &str, seed: u64, test: f32| ResultRow {
            method: "clip-adapter".into(),
            options: format!("alpha={alpha}"),
            dataset: dataset.into(),
            shots: 16,
            seed,
            validation: Default::default(),
            model: "m".into(),
            model_name: "m".into(),
            features: "f".into(),
            val_accuracy: test,
            test_accuracy: test,
            train_seconds: 0.0,
            chosen: String::new(),
            augmentation: String::new(),
            protocol: Default::default(),
            new_accuracy: None,
            source_dataset: String::new(),
        };
        let rows = vec![
            row("0", "dtd", 1, 40.0),
            row("0", "dtd", 2, 44.0),
            row("0.6", "dtd", 1, 60.0),
            row("0", "imagenet", 1, 58.0),
            row("0.6", "imagenet", 1, 56.0),
        ];
        let md = s.markdown(&base, &rows);
        assert!(md.contains("### 16-shot"), "{md}");
        assert!(md.contains("| α | dtd | imagenet | mean |"), "{md}");
        // dtd: 42 ± 2 and 60 ± 0; imagenet 58 and 56; means 50 and 58.
        assert!(
            md.contains("| 0 | 42.00 ± 2.00 | **58.00 ± 0.00** | 50.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| 0.6 | **60.00 ± 0.00** | 56.00 ± 0.00 | **58.00** |"),
            "{md}"
        );
    }
}
