//! Mean ± std tables of test accuracy over seeds, as Markdown: one per dataset (methods ×
//! shots), then the average over datasets (the mean of the per-dataset means, where every
//! dataset has the cell). Published numbers of the run's backbone go in brackets.
//!
//! Methods are listed in [`MethodKind::all`]'s order (the paper's comparison, then later
//! methods); variants of one method follow it in the order they first appear.

use std::path::Path;

use serde::Deserialize;

use super::{ExperimentError, Protocol, ResultRow, Validation};
use crate::data::benchmarks::BENCHMARKS;
use crate::methods::{eval, MethodKind};

/// One line of a published-results CSV (`method,backbone,dataset,shots,accuracy,source`, and
/// optionally `protocol` and `metric`: `base-to-new` rows give `base`, `new` and `hm`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct PublishedRow {
    method: String,
    backbone: String,
    dataset: String,
    shots: usize,
    accuracy: f32,
    /// Absent or empty: few-shot classification.
    #[serde(default)]
    protocol: Option<String>,
    /// Absent or empty: the accuracy of the protocol's one number.
    #[serde(default)]
    metric: Option<String>,
}

impl PublishedRow {
    /// Whether the row is a number of `protocol`'s `metric` (`None`: its one accuracy).
    fn is(&self, protocol: Protocol, metric: Option<&str>) -> bool {
        let row_protocol = given(&self.protocol).unwrap_or(Protocol::FewShot.as_str());
        row_protocol == protocol.as_str() && given(&self.metric) == metric
    }
}

/// An optional column's value, `None` when absent or empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The base-to-new metrics of a published-results CSV, in its `metric` column.
const BASE_NEW_METRICS: [&str; 3] = ["base", "new", "hm"];

/// Published base, new and harmonic-mean accuracy of a method (each where published).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedBaseNew {
    pub base: Option<f32>,
    pub new: Option<f32>,
    pub harmonic: Option<f32>,
}

/// Published accuracies, by (method, dataset, shots) in the publications' names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    rows: Vec<PublishedRow>,
}

/// The publications' name of the average over the 11 benchmarks.
const AVERAGE_11: &str = "AVG11";

/// The publications' names of the CoOp dataset keys.
fn published_dataset(key: &str) -> Option<&'static str> {
    Some(match key {
        "imagenet" => "ImageNet",
        "caltech101" => "Caltech101",
        "dtd" => "DTD",
        "eurosat" => "EuroSAT",
        "fgvc_aircraft" => "FGVCAircraft",
        "oxford_flowers" => "Flowers102",
        "food101" => "Food101",
        "oxford_pets" => "OxfordPets",
        "sun397" => "SUN397",
        "stanford_cars" => "StanfordCars",
        "ucf101" => "UCF101",
        _ => return None,
    })
}

impl Published {
    /// Reads a published-results CSV.
    pub fn read(path: &Path) -> Result<Self, ExperimentError> {
        let fail = |msg: String| ExperimentError::Published {
            path: path.to_path_buf(),
            msg,
        };
        let mut r = csv::Reader::from_path(path).map_err(|source| ExperimentError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        let mut rows = Vec::new();
        for (i, rec) in r.deserialize::<PublishedRow>().enumerate() {
            let row = rec.map_err(|e| {
                fail(format!(
                    "line {}: {e} (expected columns method,backbone,dataset,shots,accuracy and \
                     optionally protocol,metric)",
                    i + 2
                ))
            })?;
            check_protocol(&row).map_err(|msg| fail(format!("line {}: {msg}", i + 2)))?;
            rows.push(row);
        }
        Ok(Published { rows })
    }

    /// The numbers published for one backbone (`RN50`, `ViT-B/16`, …).
    pub fn for_backbone(&self, backbone: &str) -> Published {
        Published {
            rows: (self.rows.iter())
                .filter(|r| r.backbone == backbone)
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn get(&self, method: &str, dataset: &str, shots: usize) -> Option<f32> {
        self.get_of(Protocol::FewShot, None, method, dataset, shots)
    }

    /// A number of `protocol`'s `metric`, the method known by its published name or its title.
    fn get_of(
        &self,
        protocol: Protocol,
        metric: Option<&str>,
        method: &str,
        dataset: &str,
        shots: usize,
    ) -> Option<f32> {
        let kind = method.parse::<MethodKind>().ok()?;
        let names = [kind.card().reported_as, Some(kind.card().title)];
        self.rows
            .iter()
            .find(|r| {
                names.contains(&Some(r.method.as_str()))
                    && r.dataset == dataset
                    && r.shots == shots
                    && r.is(protocol, metric)
            })
            .map(|r| r.accuracy)
    }

    /// The published base-to-new numbers of `method` (our name) on `datasets` (CoOp keys): one
    /// benchmark's, or the 11 benchmarks' average; `None` when none is published.
    pub fn base_to_new(
        &self,
        method: &str,
        datasets: &[String],
        shots: usize,
    ) -> Option<PublishedBaseNew> {
        let dataset = match datasets {
            [d] => published_dataset(d)?,
            _ if is_all_benchmarks(datasets) => AVERAGE_11,
            _ => return None,
        };
        let [base, new, harmonic] = BASE_NEW_METRICS
            .map(|m| self.get_of(Protocol::BaseToNew, Some(m), method, dataset, shots));
        (base.is_some() || new.is_some() || harmonic.is_some()).then_some(PublishedBaseNew {
            base,
            new,
            harmonic,
        })
    }

    fn for_dataset(&self, method: &str, dataset: &str, shots: usize) -> Option<f32> {
        self.get(method, published_dataset(dataset)?, shots)
    }

    /// The published accuracy of `method` (our name) on benchmark `dataset` (its CoOp key).
    pub fn dataset_value(&self, method: &str, dataset: &str, shots: usize) -> Option<f32> {
        self.for_dataset(method, dataset, shots)
    }

    /// The published average of `method` over `datasets`, which exists only for the 11
    /// benchmarks together.
    pub fn average_value(&self, method: &str, datasets: &[String], shots: usize) -> Option<f32> {
        is_all_benchmarks(datasets)
            .then(|| self.get(method, AVERAGE_11, shots))
            .flatten()
    }
}

/// Whether `datasets` are the 11 benchmarks, whose average is published.
fn is_all_benchmarks(datasets: &[String]) -> bool {
    datasets.len() == BENCHMARKS.len()
        && BENCHMARKS
            .iter()
            .all(|b| datasets.iter().any(|d| d == b.key))
}

/// Refuses a protocol or metric the report would never read (a typo would hide the row).
fn check_protocol(row: &PublishedRow) -> Result<(), String> {
    let protocol = match given(&row.protocol) {
        None => Protocol::FewShot,
        Some(p) => p
            .parse::<Protocol>()
            .map_err(|e| format!("protocol: {e}"))?,
    };
    match (protocol, given(&row.metric)) {
        (Protocol::BaseToNew, Some(m)) if BASE_NEW_METRICS.contains(&m) => Ok(()),
        (Protocol::BaseToNew, m) => Err(format!(
            "a base-to-new row's metric is one of {}, not `{}`",
            BASE_NEW_METRICS.join(", "),
            m.unwrap_or("")
        )),
        (_, None) => Ok(()),
        (p, Some(m)) => Err(format!(
            "metric `{m}`: only base-to-new rows have a metric ({p} rows give the accuracy)"
        )),
    }
}

/// The results of a set of rows, ready to tabulate.
#[derive(Debug, Clone)]
pub struct Summary {
    rows: Vec<ResultRow>,
    /// Row labels in table order, with the method each belongs to.
    labels: Vec<(String, String)>,
    datasets: Vec<String>,
    shots: Vec<usize>,
}

/// Position of a method label in [`MethodKind::all`] (a variant label such as
/// `clip-adapter-text` goes with the longest method name it starts with).
fn method_rank(method: &str) -> usize {
    MethodKind::all()
        .iter()
        .enumerate()
        .filter(|(_, k)| method.starts_with(k.name()))
        .max_by_key(|(_, k)| k.name().len())
        .map_or(MethodKind::all().len(), |(i, _)| i)
}

fn cell_text(mean: f32, std: Option<f32>, paper: Option<f32>) -> String {
    let mut s = format!("{mean:.2}");
    if let Some(sd) = std {
        s.push_str(&format!(" ± {sd:.2}"));
    }
    if let Some(p) = paper {
        s.push_str(&format!(" ({p:.2})"));
    }
    s
}

impl Summary {
    pub fn new(rows: &[ResultRow]) -> Self {
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut datasets: Vec<String> = Vec::new();
        let mut shots: Vec<usize> = Vec::new();
        for r in rows {
            let label = r.label();
            if !labels.iter().any(|(l, _)| *l == label) {
                labels.push((label, r.method.clone()));
            }
            if !datasets.contains(&r.dataset) {
                datasets.push(r.dataset.clone());
            }
            if !shots.contains(&r.shots) {
                shots.push(r.shots);
            }
        }
        // Stable: variants keep their order of appearance within a method.
        labels.sort_by_key(|(_, m)| method_rank(m));
        shots.sort_unstable();
        Summary {
            rows: rows.to_vec(),
            labels,
            datasets,
            shots,
        }
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|(l, _)| l.as_str())
    }

    pub fn datasets(&self) -> &[String] {
        &self.datasets
    }

    pub fn shots(&self) -> &[usize] {
        &self.shots
    }

    /// Mean and standard deviation over seeds of the test accuracy.
    pub fn cell(&self, label: &str, dataset: &str, shots: usize) -> Option<(f32, f32)> {
        let v: Vec<f32> = (self.rows.iter())
            .filter(|r| r.dataset == dataset && r.shots == shots && r.label() == label)
            .map(|r| r.test_accuracy)
            .collect();
        (!v.is_empty()).then(|| eval::mean_std(&v))
    }

    /// The mean over `datasets` of the per-dataset means; `None` unless every one has it.
    pub fn average(&self, label: &str, datasets: &[String], shots: usize) -> Option<f32> {
        let means: Option<Vec<f32>> = (datasets.iter())
            .map(|d| self.cell(label, d, shots).map(|c| c.0))
            .collect();
        let means = means.filter(|m| !m.is_empty())?;
        Some(means.iter().sum::<f32>() / means.len() as f32)
    }

    fn header(&self) -> String {
        let mut s = String::from("| method |");
        for k in &self.shots {
            s.push_str(&format!(" {k}-shot |"));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(self.shots.len()));
        s.push('\n');
        s
    }

    /// `### heading`, then methods × shots for one dataset.
    pub fn dataset_table(&self, dataset: &str, heading: &str, published: &Published) -> String {
        let mut s = format!("### {heading}\n\n{}", self.header());
        for (label, method) in &self.labels {
            s.push_str(&format!("| {label} |"));
            for &k in &self.shots {
                match self.cell(label, dataset, k) {
                    Some((m, sd)) => {
                        let paper = published.for_dataset(method, dataset, k);
                        s.push_str(&format!(" {} |", cell_text(m, Some(sd), paper)));
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// `### heading`, then methods × shots averaged over `datasets`.
    pub fn average_table(
        &self,
        heading: &str,
        datasets: &[String],
        published: &Published,
    ) -> String {
        let mut s = format!("### {heading}\n\n{}", self.header());
        for (label, method) in &self.labels {
            s.push_str(&format!("| {label} |"));
            for &k in &self.shots {
                match self.average(label, datasets, k) {
                    Some(m) => {
                        let paper = published.average_value(method, datasets, k);
                        s.push_str(&format!(" {} |", cell_text(m, None, paper)));
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        s
    }

    /// What the numbers are, in one line.
    pub fn caption(&self, published: &Published, backbone: Option<&str>) -> String {
        let mut s = String::from(
            "Test accuracy (%), mean ± std over seeds; hyper-parameters chosen on the validation \
             sets only.",
        );
        if self.rows.iter().any(|r| r.validation == Validation::None) {
            s.push_str(
                " Rows marked [no validation]: no validation set, each method's documented \
                 defaults and validation-free rules.",
            );
        }
        if let (false, Some(b)) = (published.is_empty(), backbone) {
            s.push_str(&format!(" Published {b} numbers in brackets."));
        }
        s.push('\n');
        s
    }

    /// The caption, a table per dataset, and the average over datasets when there are several.
    pub fn markdown(&self, published: &Published, backbone: Option<&str>) -> String {
        let mut s = self.caption(published, backbone);
        for d in &self.datasets {
            s.push('\n');
            s.push_str(&self.dataset_table(d, d, published));
        }
        if self.datasets.len() > 1 {
            s.push('\n');
            let heading = format!("Average over {} datasets", self.datasets.len());
            s.push_str(&self.average_table(&heading, &self.datasets, published));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, dataset: &str, shots: usize, seed: u64, test: f32) -> ResultRow {
        ResultRow {
            method: method.into(),
            options: String::new(),
            dataset: dataset.into(),
            shots,
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
        }
    }

    #[test]
    fn tables_order_methods_and_average_only_several_datasets() {
        let rows = vec![
            row("gda", "eurosat", 1, 1, 50.0),
            row("gda", "eurosat", 1, 2, 60.0),
            row("zero-shot", "eurosat", 1, 1, 40.0),
        ];
        let published = Published {
            rows: vec![PublishedRow {
                method: "GDA".into(),
                backbone: "RN50".into(),
                dataset: "EuroSAT".into(),
                shots: 1,
                accuracy: 61.5,
                protocol: None,
                metric: None,
            }],
        };
        let md = Summary::new(&rows).markdown(&published, Some("RN50"));
        let zs = md.find("| zero-shot |").unwrap();
        let gda = md.find("| gda | 55.00 ± 5.00 (61.50) |").unwrap();
        assert!(zs < gda, "{md}");
        assert!(!md.contains("Average"), "{md}");
        assert!(md.contains("Published RN50 numbers"), "{md}");

        let mut rows = rows;
        rows.push(row("gda", "dtd", 1, 1, 30.0));
        let s = Summary::new(&rows);
        let md = s.markdown(&Published::default(), None);
        assert!(md.contains("### Average over 2 datasets"), "{md}");
        // gda: (55 + 30) / 2; zero-shot lacks dtd.
        assert!(
            md.contains("| gda | 42.50 |") && md.contains("| zero-shot | – |"),
            "{md}"
        );
    }

    #[test]
    fn coop_sits_after_clip_adapter_with_its_published_numbers() {
        let rows = vec![
            row("tip-adapter", "eurosat", 16, 1, 70.0),
            row("coop", "eurosat", 16, 1, 80.0),
            row("clip-adapter", "eurosat", 16, 1, 75.0),
        ];
        let published = Published {
            rows: vec![PublishedRow {
                method: "CoOp(APE nb)".into(),
                backbone: "RN50".into(),
                dataset: "EuroSAT".into(),
                shots: 16,
                accuracy: 83.53,
                protocol: None,
                metric: None,
            }],
        };
        let md = Summary::new(&rows).markdown(&published, Some("RN50"));
        let at = |m: &str| md.find(m).unwrap_or_else(|| panic!("no `{m}` in {md}"));
        let (ca, coop, tip) = (
            at("| clip-adapter |"),
            at("| coop | 80.00 ± 0.00 (83.53) |"),
            at("| tip-adapter |"),
        );
        assert!(ca < coop && coop < tip, "{md}");
    }

    #[test]
    fn both_protocols_share_a_table_with_the_no_validation_rows_labelled() {
        let mut none = row("gda", "eurosat", 1, 1, 50.0);
        none.validation = Validation::None;
        let rows = vec![row("gda", "eurosat", 1, 1, 60.0), none];
        let md = Summary::new(&rows).markdown(&Published::default(), None);
        assert!(md.contains("| gda | 60.00 ± 0.00 |"), "{md}");
        assert!(
            md.contains("| gda [no validation] | 50.00 ± 0.00 |"),
            "{md}"
        );
        assert!(md.contains("Rows marked [no validation]"), "{md}");
        let md = Summary::new(&rows[..1]).markdown(&Published::default(), None);
        assert!(!md.contains("no validation"), "{md}");
    }

    /// The published base-to-new numbers the repository ships, read as `--reported` reads them.
    fn shipped_base_to_new() -> Published {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/published/base_to_new_vit_b16.csv"
        );
        Published::read(Path::new(path))
            .unwrap()
            .for_backbone("ViT-B/16")
    }

    #[test]
    fn base_to_new_numbers_are_read_by_protocol_and_metric() {
        let p = shipped_base_to_new();
        let all: Vec<String> = BENCHMARKS.iter().map(|b| b.key.to_string()).collect();
        let coop = p.base_to_new("coop", &all, 16).unwrap();
        assert_eq!(
            (coop.base, coop.new, coop.harmonic),
            (Some(82.69), Some(63.22), Some(71.66))
        );
        // Published by its title, not the few-shot file's name.
        assert_eq!(
            p.base_to_new("zero-shot", &all, 16).unwrap().harmonic,
            Some(71.70)
        );
        let lora = p.base_to_new("clip-lora", &all, 16).unwrap();
        assert_eq!((lora.base, lora.harmonic), (None, Some(79.18)));
        // Only the 11 benchmarks' average is published; other shots, none.
        assert_eq!(p.base_to_new("coop", &all[..10], 16), None);
        assert_eq!(p.base_to_new("coop", &["eurosat".into()], 16), None);
        assert_eq!(p.base_to_new("coop", &all, 8), None);
        // Base-to-new rows are not few-shot accuracies.
        assert_eq!(p.average_value("coop", &all, 16), None);
        // And the table shows them in brackets.
        let rows: Vec<ResultRow> = (all.iter())
            .map(|d| ResultRow {
                protocol: Protocol::BaseToNew,
                new_accuracy: Some(60.0),
                ..row("coop", d, 16, 1, 80.0)
            })
            .collect();
        let md = crate::experiment::base_to_new::markdown(&rows, &p);
        assert!(
            md.contains(
                "| coop [base-to-new] | 80.00 (82.69) | 60.00 (63.22) | 68.57 (71.66) | 1 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| coop [base-to-new] | 80.00 | 60.00 | 68.57 | 1 |"),
            "{md}"
        );
    }

    #[test]
    fn a_published_row_of_an_unknown_protocol_or_metric_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let header = "method,backbone,dataset,shots,accuracy,protocol,metric\n";
        for (line, want) in [
            (
                "CoOp,ViT-B/16,AVG11,16,1,base-to-new,novel",
                "metric is one of base, new, hm",
            ),
            ("CoOp,ViT-B/16,AVG11,16,1,base2new,base", "protocol"),
            (
                "CoOp,ViT-B/16,AVG11,16,1,,base",
                "only base-to-new rows have a metric",
            ),
        ] {
            let path = dir.path().join("p.csv");
            std::fs::write(&path, format!("{header}{line}\n")).unwrap();
            let err = Published::read(&path).unwrap_err().to_string();
            assert!(
                err.contains("line 2") && err.contains(want),
                "{line}: {err}"
            );
        }
    }
}
