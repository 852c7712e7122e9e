//! Base-to-new generalisation, the protocol of CoCoOp (Zhou et al., CVPR 2022): a dataset's
//! classes are split in label order into base classes (the first ⌈n/2⌉) and new classes (the
//! rest), each relabelled from 0, as CoCoOp's `subsample_classes` does. CoCoOp draws the few
//! shots over all classes and then subsamples, so the few-shot draw of the few-shot protocol
//! serves here too: its base-class images train, its base-class validation images choose
//! hyper-parameters. A method is tested on the base test images among the base classes, and on
//! the new test images among the new classes, which it never saw; the harmonic mean of the two
//! accuracies summarises them.
//!
//! Only a head that scores a class from its text embedding can be tested on new classes
//! ([`NewClasses::FromText`]); the others are refused before anything runs, with their card's
//! reason, never given zero-shot's number. CLIP-LoRA, which trains on the images themselves,
//! is trained on the base classes' training images, and its updates stay active for the new
//! classes: their names through its adapted text tower, their test images through its adapted
//! image tower, as the reference evaluates it.

use std::ops::Range;
use std::path::Path;

use super::protocol::Protocol;
use super::table::{Published, PublishedBaseNew};
use super::ResultRow;
use crate::methods::clip_lora::{self, LoraHead};
use crate::methods::coop::{CoopError, CoopHead, PromptModel};
use crate::methods::zero_shot::ZeroShot;
use crate::methods::{
    eval, DrawImages, FeatureSpace, FewShotTask, Fit, Head, ImageContext, LabelledSet, Matrix,
    MethodError, TextClassifier,
};

/// The base classes of `classes` (labels `0..base`) and the new ones (`base..classes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSplit {
    pub base: usize,
    pub classes: usize,
}

impl ClassSplit {
    /// CoCoOp's split: `m = ceil(n / 2)` base classes.
    pub fn of(classes: usize) -> Self {
        ClassSplit {
            base: classes.div_ceil(2),
            classes,
        }
    }

    pub fn base_labels(self) -> Range<usize> {
        0..self.base
    }

    pub fn new_labels(self) -> Range<usize> {
        self.base..self.classes
    }
}

/// What the new classes are tested on: their test images, relabelled from 0, and their text
/// classifier; the same images before the last projection for a head that scores those.
#[derive(Debug, Clone)]
pub struct NewClassTest {
    pub classnames: Vec<String>,
    pub test: LabelledSet,
    pub text: TextClassifier,
    pub pre_projection_test: Option<Matrix>,
}

/// A task split for base-to-new: the base task (train, val and test of the base classes) and
/// the new classes' test.
#[derive(Debug, Clone)]
pub struct BaseToNew {
    pub base: FewShotTask,
    pub new: NewClassTest,
    /// Which rows of the whole draw each part holds.
    pub rows: SplitRows,
}

/// The rows of the whole draw that the base task's training and test sets and the new
/// classes' test hold, in their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRows {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub new_test: Vec<usize>,
}

impl SplitRows {
    /// The images of a method that trains on them (CLIP-LoRA), split as the draw's features
    /// are: the base task's, and the new classes' test images (no training images).
    pub fn images(&self, whole: ImageContext) -> (ImageContext, ImageContext) {
        let pick = |paths: &[std::path::PathBuf], rows: &[usize]| -> Vec<std::path::PathBuf> {
            rows.iter().map(|&r| paths[r].clone()).collect()
        };
        let d = &whole.images;
        let new = ImageContext {
            model: whole.model.clone(),
            images: DrawImages {
                train: Vec::new(),
                train_keys: Vec::new(),
                test: pick(&d.test, &self.new_test),
                preprocess: d.preprocess.clone(),
            },
            templates: whole.templates.clone(),
            precision: whole.precision,
        };
        let base = ImageContext {
            images: DrawImages {
                train: pick(&d.train, &self.train),
                train_keys: self
                    .train
                    .iter()
                    .map(|&r| d.train_keys[r].clone())
                    .collect(),
                test: pick(&d.test, &self.test),
                preprocess: d.preprocess.clone(),
            },
            ..whole
        };
        (base, new)
    }
}

/// Too few classes to split into two classification problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{dataset}` has {classes} classes: base-to-new needs at least 4, so that base and new \
     classes are each a choice among at least two"
)]
pub struct TooFewClasses {
    pub dataset: String,
    pub classes: usize,
}

impl BaseToNew {
    /// Splits `task` (a few-shot draw over all of a dataset's classes).
    pub fn split(task: &FewShotTask, dataset: &str) -> Result<Self, TooFewClasses> {
        let classes = task.classnames.len();
        if classes < 4 {
            let dataset = dataset.to_string();
            return Err(TooFewClasses { dataset, classes });
        }
        let s = ClassSplit::of(classes);
        let (base, new) = (s.base_labels(), s.new_labels());
        let (train, train_rows) = subset(&task.train, &base);
        let (val, val_rows) = subset(&task.val, &base);
        let (test, test_rows) = subset(&task.test, &base);
        let (new_test, new_rows) = subset(&task.test, &new);
        let rows_of = |m: &Matrix, rows: &[usize]| m.gather_rows(rows);
        let pre_projection = task.pre_projection.as_ref().map(|p| {
            let mut p = p.clone();
            p.train_views = (p.train_views.iter())
                .map(|v| rows_of(v, &train_rows))
                .collect();
            (p.train, p.val) = (rows_of(&p.train, &train_rows), rows_of(&p.val, &val_rows));
            p.test = rows_of(&p.test, &test_rows);
            p
        });
        let base_task = FewShotTask {
            classnames: task.classnames[base.clone()].to_vec(),
            train,
            train_views: (task.train_views.iter())
                .map(|v| rows_of(v, &train_rows))
                .collect(),
            val,
            test,
            text: classes_of(&task.text, &base),
            pre_projection,
            text_mean: task.text_mean.as_ref().map(|m| rows_of(m, &range(&base))),
        };
        let new = NewClassTest {
            classnames: task.classnames[new.clone()].to_vec(),
            test: new_test,
            text: classes_of(&task.text, &new),
            pre_projection_test: (task.pre_projection.as_ref())
                .map(|p| rows_of(&p.test, &new_rows)),
        };
        Ok(BaseToNew {
            base: base_task,
            new,
            rows: SplitRows {
                train: train_rows,
                test: test_rows,
                new_test: new_rows,
            },
        })
    }
}

fn range(r: &Range<usize>) -> Vec<usize> {
    r.clone().collect()
}

/// The rows of `set` whose label is in `keep`, relabelled from `keep.start`, and their row
/// numbers in `set`.
fn subset(set: &LabelledSet, keep: &Range<usize>) -> (LabelledSet, Vec<usize>) {
    let rows: Vec<usize> = (0..set.labels.len())
        .filter(|&i| keep.contains(&set.labels[i]))
        .collect();
    let labels = rows.iter().map(|&i| set.labels[i] - keep.start).collect();
    let features = set.features.gather_rows(&rows);
    (LabelledSet { features, labels }, rows)
}

/// The classifier of the classes in `keep`.
fn classes_of(text: &TextClassifier, keep: &Range<usize>) -> TextClassifier {
    TextClassifier {
        weights: text.weights.gather_rows(&range(keep)),
        ..text.clone()
    }
}

/// Why a fitted head could not be tested on the new classes.
#[derive(Debug, thiserror::Error)]
pub enum NewClassError {
    #[error("a `{kind}` head holds something of each training class and cannot score new ones")]
    NotFromText { kind: &'static str },
    #[error(
        "class-specific context (one learned context per training class) has none for a new \
         class; base-to-new needs CoOp's shared context"
    )]
    ClassSpecificContext,
    #[error("CoOp's new classes are encoded through the text tower, which was not given")]
    NoTextTower,
    #[error(
        "CLIP-LoRA's new classes and their images are encoded through its adapted towers, whose \
         model and images were not given"
    )]
    NoImages,
    #[error(transparent)]
    Coop(#[from] CoopError),
    #[error(transparent)]
    Method(#[from] MethodError),
}

/// What scoring new classes reads besides the head and their test features: CoOp's text tower
/// (its learned context with the new class names), and for CLIP-LoRA the model and the new
/// classes' test images, in the order of the test's rows (encoded through its updates).
#[derive(Clone, Copy, Default)]
pub struct Towers<'a> {
    pub text: Option<&'a PromptModel>,
    pub images: Option<&'a ImageContext>,
}

/// Accuracy (percent) of a fitted head on the new classes' test images, among the new classes:
/// the head re-aimed at the new classes' text embeddings; for CoOp, the learned context with
/// the new class names encoded through the text tower; for CLIP-LoRA, the new class names and
/// test images encoded through its adapted towers ([`clip_lora::accuracy_on`]).
pub fn new_class_accuracy(
    fit: &Fit,
    new: &NewClassTest,
    towers: Towers,
) -> Result<f32, NewClassError> {
    if let Some(lora) = fit.fitted.head.downcast_ref::<LoraHead>() {
        let cx = towers.images.ok_or(NewClassError::NoImages)?;
        let accuracy = clip_lora::accuracy_on(lora, cx, &new.classnames, &new.test.labels)?;
        return Ok(accuracy);
    }
    let head = match (&fit.prompt, towers.text) {
        (Some(prompt), _) if prompt.csc => return Err(NewClassError::ClassSpecificContext),
        (Some(prompt), Some(model)) => {
            let prompt = CoopHead {
                classnames: new.classnames.clone(),
                ..prompt.clone()
            };
            let text = prompt.text_classifier(Path::new("the trained context"), model)?;
            Head::new(ZeroShot::new(&text))
        }
        (Some(_), None) => return Err(NewClassError::NoTextTower),
        (None, _) => fit.fitted.head.for_classes(&new.text).ok_or({
            NewClassError::NotFromText {
                kind: fit.fitted.head.kind(),
            }
        })?,
    };
    let x = match (head.input(), &new.pre_projection_test) {
        (FeatureSpace::Projected, _) => &new.test.features,
        (FeatureSpace::PreProjection, Some(pre)) => pre,
        // As on the base classes: nothing it can score, so no accuracy rather than a guess.
        (FeatureSpace::PreProjection, None) => return Ok(f32::NAN),
        // Scored above, through the head's own updates.
        (FeatureSpace::Adapted, _) => return Err(NewClassError::NoImages),
    };
    Ok(eval::accuracy(&head.logits(x), &new.test.labels))
}

/// The harmonic mean of base and new accuracy, CoCoOp's summary (0 when either is 0).
pub fn harmonic_mean(base: f32, new: f32) -> f32 {
    match base + new {
        s if s > 0.0 => 2.0 * base * new / s,
        _ => 0.0,
    }
}

/// Mean base, new and harmonic-mean accuracy of one method on one dataset (or averaged over
/// datasets), over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseNewCell {
    pub base: f32,
    pub new: f32,
    /// Of the two means, as CoCoOp reports it.
    pub harmonic: f32,
    pub seeds: usize,
}

/// The base-to-new rows of a results file as Markdown: per shot count, a table per dataset
/// and one averaged over datasets, each a line per method with base, new and their harmonic
/// mean (means over seeds), the `published` numbers in brackets where they exist for the
/// dataset (or the 11 benchmarks' average). Rows of other protocols are left out.
pub fn markdown(rows: &[ResultRow], published: &Published) -> String {
    let rows: Vec<&ResultRow> = (rows.iter())
        .filter(|r| r.protocol == Protocol::BaseToNew)
        .collect();
    // Each label with its method, whose published numbers it is shown beside.
    let mut labels: Vec<(String, String)> = Vec::new();
    let (mut datasets, mut shots): (Vec<String>, Vec<usize>) = (Vec::new(), Vec::new());
    for r in &rows {
        push_new(&mut labels, (r.label(), r.method.clone()));
        push_new(&mut datasets, r.dataset.clone());
        push_new(&mut shots, r.shots);
    }
    shots.sort_unstable();
    let mut md = String::new();
    for &k in &shots {
        md.push_str(&format!(
            "## Base-to-new generalisation, {k} shots\n\nTrained on the base classes (the \
             first half in label order); base: accuracy on the base classes' test images among \
             the base classes; new: on the new classes' among the new classes, which the \
             method never saw; H: their harmonic mean. Means over seeds (%){}.\n",
            match published.is_empty() {
                true => "",
                false => "; in brackets, the published number where there is one",
            }
        ));
        let table = |heading: &str, of: &[String]| {
            let cell = |l: &String| cell(&rows, l, of, k);
            let paper = |l: &String| published.base_to_new(l, of, k);
            table(heading, &labels, &cell, &paper)
        };
        for d in &datasets {
            md.push_str(&table(d, std::slice::from_ref(d)));
        }
        if datasets.len() > 1 {
            md.push_str(&table(
                &format!("Average over {} datasets", datasets.len()),
                &datasets,
            ));
        }
    }
    md
}

pub(super) fn push_new<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// The mean over seeds of each dataset, then over datasets; `None` unless every dataset has
/// rows.
fn cell(
    rows: &[&ResultRow],
    label: &str,
    datasets: &[String],
    shots: usize,
) -> Option<BaseNewCell> {
    let (mut base, mut new, mut seeds) = (0.0, 0.0, usize::MAX);
    for d in datasets {
        let of: Vec<&&ResultRow> = (rows.iter())
            .filter(|r| r.label() == label && &r.dataset == d && r.shots == shots)
            .collect();
        if of.is_empty() {
            return None;
        }
        let n = of.len() as f32;
        base += of.iter().map(|r| r.test_accuracy).sum::<f32>() / n;
        new += of
            .iter()
            .map(|r| r.new_accuracy.unwrap_or(f32::NAN))
            .sum::<f32>()
            / n;
        seeds = seeds.min(of.len());
    }
    let d = datasets.len() as f32;
    let (base, new) = (base / d, new / d);
    Some(BaseNewCell {
        base,
        new,
        harmonic: harmonic_mean(base, new),
        seeds,
    })
}

fn table(
    heading: &str,
    labels: &[(String, String)],
    cell: &dyn Fn(&String) -> Option<BaseNewCell>,
    published: &dyn Fn(&String) -> Option<PublishedBaseNew>,
) -> String {
    let mut md = format!(
        "\n### {heading}\n\n| method | base | new | H | seeds |\n|---|---:|---:|---:|---:|\n"
    );
    for (l, method) in labels {
        if let Some(c) = cell(l) {
            let p = published(method);
            let with = |ours: f32, paper: Option<f32>| match paper {
                Some(v) => format!("{ours:.2} ({v:.2})"),
                None => format!("{ours:.2}"),
            };
            md.push_str(&format!(
                "| {l} | {} | {} | {} | {} |\n",
                with(c.base, p.and_then(|p| p.base)),
                with(c.new, p.and_then(|p| p.new)),
                with(c.harmonic, p.and_then(|p| p.harmonic)),
                c.seeds
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[usize], dim: usize) -> LabelledSet {
        let data = (0..labels.len() * dim).map(|i| i as f32).collect();
        LabelledSet {
            features: Matrix::from_vec(labels.len(), dim, data).unwrap(),
            labels: labels.to_vec(),
        }
    }

    fn task(classes: usize) -> FewShotTask {
        let labels: Vec<usize> = (0..2 * classes).map(|i| i % classes).collect();
        let text = TextClassifier {
            weights: Matrix::from_vec(classes, 2, (0..2 * classes).map(|i| i as f32).collect())
                .unwrap(),
            logit_scale: 100.0,
            logit_bias: None,
        };
        FewShotTask {
            classnames: (0..classes).map(|c| format!("c{c}")).collect(),
            train: set(&labels, 2),
            train_views: vec![set(&labels, 2).features],
            val: set(&labels, 2),
            test: set(&labels, 2),
            text,
            pre_projection: None,
            text_mean: None,
        }
    }

    #[test]
    fn base_classes_are_the_first_half_rounded_up_and_both_halves_relabel_from_zero() {
        assert_eq!(ClassSplit::of(5).base, 3);
        assert_eq!(ClassSplit::of(4).base, 2);
        assert_eq!(ClassSplit::of(1000).base, 500);
        let t = task(5);
        let s = BaseToNew::split(&t, "d").unwrap();
        assert_eq!(s.base.classnames, ["c0", "c1", "c2"]);
        assert_eq!(s.new.classnames, ["c3", "c4"]);
        assert_eq!(s.base.train.labels, [0, 1, 2, 0, 1, 2]);
        assert_eq!(s.new.test.labels, [0, 1, 0, 1]);
        // Rows follow their labels: test rows 3, 4, 8, 9 (labels 3, 4, 3, 4) are the new ones.
        assert_eq!(s.new.test.features.row(0), t.test.features.row(3));
        assert_eq!(s.new.test.features.row(3), t.test.features.row(9));
        assert_eq!(s.base.train_views[0].rows, 6);
        assert_eq!(s.new.text.weights.row(0), t.text.weights.row(3));
        assert_eq!(s.base.text.weights.rows, 3);
    }

    #[test]
    fn three_classes_are_refused_and_the_harmonic_mean_is_cocoops() {
        assert_eq!(BaseToNew::split(&task(3), "tiny").unwrap_err().classes, 3);
        assert!((harmonic_mean(80.0, 60.0) - 68.571_43).abs() < 1e-4);
        assert_eq!(harmonic_mean(0.0, 0.0), 0.0);
        assert_eq!("base-to-new".parse::<Protocol>(), Ok(Protocol::BaseToNew));
        assert!("base2new".parse::<Protocol>().is_err());
    }
}
