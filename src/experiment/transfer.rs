//! Cross-dataset transfer and domain generalisation, the protocols of CoOp's and CoCoOp's
//! `xd` scripts: a head trained on a source dataset's few-shot draw (16 shots of ImageNet in
//! the papers) is tested, unchanged, on other datasets' test sets.
//!
//! - **Cross-dataset**: the targets are other datasets with classes of their own. The head is
//!   re-aimed at the target's class names, as for base-to-new's new classes, so only the
//!   methods whose head scores a class from its text embedding run.
//! - **Domain generalisation**: the targets hold the source's classes, all of them or a subset
//!   (ImageNet-A and -R keep 200 of ImageNet's 1000), in other image domains. Every head runs;
//!   its scores are kept for the target's classes, matched to the source's by name.
//!
//! One fit per method, shot count and seed; a row for the source's own test set and one per
//! target, each resumable by its identity.
//!
//! CLIP-LoRA, whose head scores its own adapted image tower's features, is tested by encoding
//! each target's test images through its updated towers, and the class names through its
//! adapted text tower (the target's own under cross-dataset transfer, the source's under
//! domain generalisation, whose columns are then the target's classes).

use std::rc::Rc;

use super::base_to_new::{new_class_accuracy, push_new, NewClassError, NewClassTest, Towers};
use super::grid::RowSpec;
use super::grid::{fit_row, FitInputs, GridEvent, GridIo, GridMethod, GridOutcome, RowSink, Share};
use super::protocol::Protocol;
use super::{ExperimentError, ResultRow, RowKey, RowSource, Validation};
use crate::features::ContentHash;
use crate::methods::clip_lora::LoraHead;
use crate::methods::coop::PromptModel;
use crate::methods::{eval, FeatureSpace, FewShotTask, Fit, ImageContext, Needs};

/// What to run: every method on the source's draws, tested on every target.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub methods: Vec<GridMethod>,
    pub source: String,
    pub targets: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    pub validation: Validation,
    /// [`Protocol::CrossDataset`] or [`Protocol::Domain`].
    pub protocol: Protocol,
}

impl Transfer {
    /// Fits of a complete run: one per method, shot count and seed.
    pub fn fits(&self) -> usize {
        self.methods.len() * self.shots.len() * self.seeds.len()
    }

    /// Rows of a complete run: the source's and each target's, per fit.
    pub fn rows(&self) -> usize {
        self.fits() * (1 + self.targets.len())
    }

    /// The position of a fit in the order a run fits them (shots, then seed, then method;
    /// each axis in the run's order). Its rows follow one another in the results: the
    /// source's, then each target's in the order of `targets`.
    pub fn position(&self, shots: usize, seed: usize, method: usize) -> usize {
        (shots * self.seeds.len() + seed) * self.methods.len() + method
    }
}

/// Why a head could not be tested on a target.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(
        "class `{class}` of `{target}` is not a class of the source `{trained_on}`: domain \
         generalisation tests the source's classes in other domains (cross-dataset transfer \
         tests other classes)"
    )]
    NotASourceClass {
        class: String,
        target: String,
        trained_on: String,
    },
    #[error(transparent)]
    NewClasses(#[from] NewClassError),
}

/// A target's whole test set with its classes.
pub fn target_test(task: &FewShotTask) -> NewClassTest {
    NewClassTest {
        classnames: task.classnames.clone(),
        test: task.test.clone(),
        text: task.text.clone(),
        pre_projection_test: task.pre_projection.as_ref().map(|p| p.test.clone()),
    }
}

/// Accuracy (percent) of a head trained on classes `source_classes` on `target` (named
/// `target_name`, trained on `source_name`), under `protocol`. `towers` holds what CoOp and
/// CLIP-LoRA encode the target through (CLIP-LoRA: the target's test images).
pub fn target_accuracy(
    protocol: Protocol,
    fit: &Fit,
    source_classes: &[String],
    target: &NewClassTest,
    names: (&str, &str),
    towers: Towers,
) -> Result<f32, TransferError> {
    if protocol != Protocol::Domain {
        return Ok(new_class_accuracy(fit, target, towers)?);
    }
    let (source_name, target_name) = names;
    let columns = (target.classnames.iter())
        .map(|c| {
            (source_classes.iter().position(|s| s == c)).ok_or(TransferError::NotASourceClass {
                class: c.clone(),
                target: target_name.to_string(),
                trained_on: source_name.to_string(),
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let head = &fit.fitted.head;
    if head.downcast_ref::<LoraHead>().is_some() {
        // Each class is scored by its own prompt's embedding: the source's columns of the
        // target's classes are the target's class names encoded with the source's prompt
        // (`towers` carries the source's templates).
        return Ok(new_class_accuracy(fit, target, towers)?);
    }
    let x = match (head.input(), &target.pre_projection_test) {
        (FeatureSpace::Projected, _) => &target.test.features,
        (FeatureSpace::PreProjection, Some(pre)) => pre,
        (FeatureSpace::PreProjection, None) => return Ok(f32::NAN),
        // Scored above, through the head's own updates.
        (FeatureSpace::Adapted, _) => return Err(NewClassError::NoImages.into()),
    };
    // The target's classes' columns, in the target's label order.
    let logits = head
        .logits(x)
        .transposed()
        .gather_rows(&columns)
        .transposed();
    Ok(eval::accuracy(&logits, &target.test.labels))
}

/// A draw of a target: its test and where its features came from.
struct Target {
    dataset: String,
    test: NewClassTest,
    source: RowSource,
}

/// The identity of a target's row: the source row's, tested on `target`, whose features
/// join the source's in the row's feature identity.
fn target_key(source_key: &RowKey, target: &Target) -> RowKey {
    let mut h = ContentHash::default();
    h.field(b"clip-adapter transfer target v1");
    h.field(source_key.features.as_bytes());
    h.field(target.source.features.as_bytes());
    RowKey {
        dataset: target.dataset.clone(),
        features: h.hex(),
        ..source_key.clone()
    }
}

/// Runs `t`: rows already in `sink` are not fitted again (a fit runs when any of its rows is
/// missing, and adds only those).
pub fn run_transfer<E: From<ExperimentError>>(
    t: &Transfer,
    sink: &mut dyn RowSink,
    io: GridIo<E>,
) -> Result<GridOutcome, E> {
    run_transfer_share(t, None, sink, io)
}

/// Runs the fits of `t` that `mine` marks (by fit position, see [`Transfer::position`]; all
/// of them when `None`), each with all its rows, as [`run_transfer`] runs them all. Draws
/// with none of the fits are not loaded.
pub fn run_transfer_share<E: From<ExperimentError>>(
    t: &Transfer,
    mine: Option<&[bool]>,
    sink: &mut dyn RowSink,
    mut io: GridIo<E>,
) -> Result<GridOutcome, E> {
    let share = Share::new(mine, t.fits());
    let total = share.total * (1 + t.targets.len());
    let mut out = GridOutcome {
        rows: Vec::with_capacity(total),
        fitted: 0,
    };
    for (s, &shots) in t.shots.iter().enumerate() {
        for (e, &seed) in t.seeds.iter().enumerate() {
            let fits: Vec<usize> = (0..t.methods.len())
                .filter(|&m| share.has(t.position(s, e, m)))
                .collect();
            if fits.is_empty() {
                continue;
            }
            let (task, source) = (io.load)(&t.source, shots, seed)?;
            let task = t.validation.apply(task);
            let mut targets = Vec::with_capacity(t.targets.len());
            for d in &t.targets {
                let (target, target_source) = (io.load)(d, shots, seed)?;
                check_same_model(&t.source, &source, d, &target_source)?;
                targets.push(Target {
                    dataset: d.clone(),
                    test: target_test(&target),
                    source: target_source,
                });
            }
            for m in fits {
                let spec = RowSpec {
                    method: &t.methods[m],
                    dataset: &t.source,
                    shots,
                    seed,
                    validation: t.validation,
                    source: &source,
                    protocol: t.protocol,
                    new: None,
                };
                let cell = Cell {
                    task: &task,
                    targets: &targets,
                    spec,
                    total,
                };
                cell.run(m, sink, &mut io, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// The rows of one fit.
struct Cell<'a> {
    task: &'a FewShotTask,
    targets: &'a [Target],
    spec: RowSpec<'a>,
    /// The rows of the run (of its share of the fits).
    total: usize,
}

impl Cell<'_> {
    fn run<E: From<ExperimentError>>(
        &self,
        m: usize,
        sink: &mut dyn RowSink,
        io: &mut GridIo<E>,
        out: &mut GridOutcome,
    ) -> Result<(), E> {
        let source_key = self.spec.key();
        let keys: Vec<RowKey> = std::iter::once(source_key.clone())
            .chain(self.targets.iter().map(|tg| target_key(&source_key, tg)))
            .collect();
        let found: Vec<Option<ResultRow>> = keys.iter().map(|k| sink.find(k).cloned()).collect();
        let rows: Vec<(ResultRow, bool)> = match found.iter().all(Option::is_some) {
            true => found.into_iter().flatten().map(|r| (r, true)).collect(),
            false => (self.fit(m, &keys, io)?.into_iter())
                .zip(found)
                .map(|(new, old)| old.map_or((new, false), |o| (o, true)))
                .collect(),
        };
        for (row, skipped) in rows {
            if !skipped {
                sink.push(row.clone())?;
                out.fitted += 1;
            }
            out.rows.push(row);
            let done = out.rows.len();
            let (row, total) = (&out.rows[done - 1], self.total);
            (io.events)(GridEvent::Row {
                row,
                skipped,
                done,
                total,
            });
        }
        Ok(())
    }

    /// Fits the method on the source and makes every row of `keys` (the source's first).
    fn fit<E: From<ExperimentError>>(
        &self,
        m: usize,
        keys: &[RowKey],
        io: &mut GridIo<E>,
    ) -> Result<Vec<ResultRow>, E> {
        let spec = &self.spec;
        let trained_on = spec.dataset;
        let method = (io.configure)(m, trained_on, spec.seed);
        (io.events)(GridEvent::Fitting {
            method: &spec.method.label,
            dataset: trained_on,
            shots: spec.shots,
            seed: spec.seed,
        });
        let needs = method.card().needs;
        let tower: Option<Rc<PromptModel>> = match needs {
            Needs::TextTower => Some((io.model)(spec.source)?),
            _ => None,
        };
        let images: Option<ImageContext> = match needs {
            Needs::Images => Some((io.images)(trained_on, spec.shots, spec.seed, spec.source)?),
            _ => None,
        };
        let inputs = FitInputs {
            text_tower: tower.as_deref(),
            images: images.as_ref(),
            new_images: None,
        };
        let events = &mut *io.events;
        let mut progress = |p| events(GridEvent::Method(p));
        let (fit, row) = fit_row(&method, self.task, spec, inputs, &mut progress)?;
        let mut rows = vec![row.clone()];
        for (target, key) in self.targets.iter().zip(&keys[1..]) {
            let names = (trained_on, target.dataset.as_str());
            let classes = &self.task.classnames;
            let target_images = match &images {
                Some(source_cx) => {
                    let (d, k, seed) = (target.dataset.as_str(), spec.shots, spec.seed);
                    let cx = (io.images)(d, k, seed, &target.source)?;
                    Some(on_target(spec.protocol, source_cx, cx))
                }
                None => None,
            };
            let towers = Towers {
                text: tower.as_deref(),
                images: target_images.as_ref(),
            };
            let tested = target_accuracy(spec.protocol, &fit, classes, &target.test, names, towers);
            let accuracy = tested.map_err(|e| ExperimentError::Fit {
                method: spec.method.label.clone(),
                dataset: target.dataset.clone(),
                shots: spec.shots,
                seed: spec.seed,
                source: Box::new(e),
            })?;
            rows.push(ResultRow {
                dataset: key.dataset.clone(),
                features: key.features.clone(),
                val_accuracy: f32::NAN,
                test_accuracy: accuracy,
                ..row.clone()
            });
        }
        Ok(rows)
    }
}

/// What CLIP-LoRA's updates are tested on for a target: the target's test images through the
/// source's model, with the target's prompt templates under cross-dataset transfer (its own
/// classes, as CoOp's prompts are), the source's under domain generalisation (the source's
/// classes, as every other head scores them).
fn on_target(protocol: Protocol, source: &ImageContext, target: ImageContext) -> ImageContext {
    ImageContext {
        model: source.model.clone(),
        templates: match protocol {
            Protocol::Domain => source.templates.clone(),
            _ => target.templates,
        },
        images: target.images,
        precision: source.precision,
    }
}

/// A target's features must come from the source's model: a head scores its model's features.
fn check_same_model(
    source_name: &str,
    source: &RowSource,
    target_name: &str,
    target: &RowSource,
) -> Result<(), ExperimentError> {
    match source.model == target.model {
        true => Ok(()),
        false => Err(ExperimentError::TargetModel {
            trained_on: source_name.to_string(),
            source_model: source.model_name.clone(),
            target: target_name.to_string(),
            target_model: target.model_name.clone(),
        }),
    }
}

/// The transfer rows of a results file as Markdown: per protocol, source and shot count, a
/// line per method with the mean test accuracy over seeds on the source and on each target,
/// and the mean over the targets (CoOp's cross-dataset and domain tables). Other rows are left
/// out.
pub fn markdown(rows: &[ResultRow]) -> String {
    let rows: Vec<&ResultRow> = rows.iter().filter(|r| r.protocol.transfers()).collect();
    let mut tables: Vec<(Protocol, &str, usize)> = Vec::new();
    for r in &rows {
        push_new(
            &mut tables,
            (r.protocol, r.source_dataset.as_str(), r.shots),
        );
    }
    let mut md = String::new();
    for (protocol, source, shots) in tables {
        let of: Vec<&&ResultRow> = (rows.iter())
            .filter(|r| r.protocol == protocol && r.source_dataset == source && r.shots == shots)
            .collect();
        let mut labels: Vec<String> = Vec::new();
        let mut targets: Vec<&str> = Vec::new();
        for r in &of {
            push_new(&mut labels, r.label());
            if r.dataset != source {
                push_new(&mut targets, r.dataset.as_str());
            }
        }
        let title = match protocol {
            Protocol::Domain => "Domain generalisation",
            _ => "Cross-dataset transfer",
        };
        md.push_str(&format!(
            "## {title} from {source}, {shots} shots\n\nTrained on `{source}`, tested \
             unchanged on each dataset's test set; mean test accuracy over seeds (%).\n\n\
             | method | {source} (source) | {} | average |\n|---|---:|{}---:|\n",
            targets.join(" | "),
            "---:|".repeat(targets.len())
        ));
        let mean = |label: &str, dataset: &str| {
            let acc: Vec<f32> = (of.iter())
                .filter(|r| r.label() == label && r.dataset == dataset)
                .map(|r| r.test_accuracy)
                .collect();
            (!acc.is_empty()).then(|| acc.iter().sum::<f32>() / acc.len() as f32)
        };
        let cell = |v: Option<f32>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
        for l in &labels {
            let on: Vec<Option<f32>> = targets.iter().map(|d| mean(l, d)).collect();
            let average = (on.iter().all(Option::is_some) && !on.is_empty())
                .then(|| on.iter().flatten().sum::<f32>() / on.len() as f32);
            let cells: Vec<String> = on.into_iter().map(cell).collect();
            md.push_str(&format!(
                "| {l} | {} | {} | {} |\n",
                cell(mean(l, source)),
                cells.join(" | "),
                cell(average)
            ));
        }
        md.push('\n');
    }
    md
}
