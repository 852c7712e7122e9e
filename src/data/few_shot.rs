//! K shots per class, drawn exactly as CoOp draws them, so our K-shot sets are the very images
//! the published results used.
//!
//! CoOp (`datasets/*.py`, e.g. `caltech101.py` @ KaiyangZhou/CoOp) runs, after the run's
//! `set_random_seed(cfg.SEED)` (which calls `random.seed(seed)`) and before any other use of
//! Python's `random`:
//!
//! ```python
//! train = self.generate_fewshot_dataset(train, num_shots=num_shots)
//! val = self.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
//! ```
//!
//! and Dassl's `DatasetBase.generate_fewshot_dataset` groups items by label in order of first
//! appearance (`split_dataset_by_label`, a `defaultdict(list)`), then per class takes
//! `random.sample(items, num_shots)`, or all items when the class has fewer. ImageNet draws
//! train shots only (its val is the test set). [`PyRandom`] reproduces `random` bit for bit;
//! `tests/few_shot.rs` reproduces every published draw that has its split file.

use std::collections::HashMap;

use super::python_random::PyRandom;
use super::{DataError, Dataset, Sample, Split};

/// CoOp's few-shot validation size: `min(K, 4)` per class.
pub const MAX_VAL_SHOTS: usize = 4;

/// A class with fewer images than the shots asked for: all of them were taken, as CoOp does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShortClass {
    pub split: Split,
    pub label: usize,
    pub available: usize,
    pub requested: usize,
}

/// A K-shot draw: positions into the dataset's `train` and `val` lists, in draw order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShot {
    pub shots: usize,
    pub seed: i64,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    /// Classes that had fewer images than asked for (the draw took all they have).
    pub short: Vec<ShortClass>,
}

impl FewShot {
    /// Draws `shots` train images per class and `min(shots, 4)` val images per class with
    /// Python's `random` seeded by `seed`, as CoOp does.
    pub fn coop(dataset: &Dataset, shots: usize, seed: i64) -> Result<Self, DataError> {
        if shots == 0 {
            return Err(DataError::Invalid {
                what: "shots".into(),
                msg: "must be at least 1 (CoOp's 0 means the whole split: draw no shots)".into(),
            });
        }
        crate::limits::SHOTS.check("shots", shots)?;
        let mut rng = PyRandom::new(seed);
        let mut short = Vec::new();
        let train = draw(&dataset.train, shots, &mut rng, Split::Train, &mut short);
        let val = draw(
            &dataset.val,
            shots.min(MAX_VAL_SHOTS),
            &mut rng,
            Split::Val,
            &mut short,
        );
        Ok(FewShot {
            shots,
            seed,
            train,
            val,
            short,
        })
    }

    /// A note per split in which classes had fewer images than asked for: how many, and the
    /// first `shown` of them (`more` follows the count of the rest).
    pub fn shortage_notes(&self, dataset: &Dataset, shown: usize, more: &str) -> Vec<String> {
        let mut notes = Vec::new();
        for split in [Split::Train, Split::Val] {
            let short: Vec<_> = self.short.iter().filter(|s| s.split == split).collect();
            let Some(first) = short.first() else {
                continue;
            };
            let classes: Vec<String> = (short.iter())
                .map(|s| {
                    let name = super::display_name(&dataset.classnames[s.label]);
                    format!("{} `{name}` ({})", s.label, s.available)
                })
                .collect();
            notes.push(format!(
                "{} of {} classes have fewer than the {} {split} image(s) asked for; all of \
                 theirs are used (as CoOp does): {}",
                short.len(),
                dataset.num_classes(),
                first.requested,
                super::check::first_few(&classes, shown, more)
            ));
        }
        notes
    }

    /// The drawn samples of `split` (`Train` or `Val`; `Test` is never sampled: empty).
    pub fn samples<'a>(&self, dataset: &'a Dataset, split: Split) -> Vec<&'a Sample> {
        let idx = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => return Vec::new(),
        };
        let all = dataset.split(split);
        idx.iter().map(|&i| &all[i]).collect()
    }
}

/// Dassl's `split_dataset_by_label`: positions grouped per label, labels in order of first
/// appearance, positions in list order.
pub fn group_by_label(samples: &[Sample]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    // label -> position in `groups` (a map: a label is not trusted to be small).
    let mut slot: HashMap<usize, usize> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        match slot.get(&s.label) {
            Some(&g) => groups[g].1.push(i),
            None => {
                slot.insert(s.label, groups.len());
                groups.push((s.label, vec![i]));
            }
        }
    }
    groups
}

fn draw(
    samples: &[Sample],
    k: usize,
    rng: &mut PyRandom,
    split: Split,
    short: &mut Vec<ShortClass>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for (label, items) in group_by_label(samples) {
        match rng.sample(&items, k) {
            Some(picked) => out.extend(picked),
            None => {
                // Dassl: `sampled_items = items` (repeat=False), consuming no random numbers.
                short.push(ShortClass {
                    split,
                    label,
                    available: items.len(),
                    requested: k,
                });
                out.extend(items);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(per_class: &[usize]) -> Dataset {
        let mut train = Vec::new();
        for (label, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                train.push(Sample {
                    impath: format!("{label}/{i}.jpg"),
                    label,
                });
            }
        }
        Dataset {
            name: "t".into(),
            classnames: (0..per_class.len()).map(|c| c.to_string()).collect(),
            image_root: ".".into(),
            val: train.clone(),
            train,
            test: Vec::new(),
            templates: vec!["{}".into()],
        }
    }

    #[test]
    fn draws_k_per_class_and_reports_short_classes() {
        let d = dataset(&[30, 2, 10]);
        let f = FewShot::coop(&d, 4, 1).unwrap();
        assert_eq!(f.train.len(), 4 + 2 + 4);
        assert_eq!(f.val.len(), 4 + 2 + 4);
        assert_eq!(
            f.short,
            [
                ShortClass {
                    split: Split::Train,
                    label: 1,
                    available: 2,
                    requested: 4
                },
                ShortClass {
                    split: Split::Val,
                    label: 1,
                    available: 2,
                    requested: 4
                },
            ]
        );
        assert_eq!(
            f,
            FewShot::coop(&d, 4, 1).unwrap(),
            "deterministic per seed"
        );
        assert_ne!(f.train, FewShot::coop(&d, 4, 2).unwrap().train);
    }

    #[test]
    fn matches_python_on_a_small_case() {
        // random.seed(7); groups = [range(0,30), range(30,32), range(32,42)]
        // [random.sample(g, 4) if len(g) >= 4 else g for g in groups]
        let d = dataset(&[30, 2, 10]);
        let f = FewShot::coop(&d, 4, 7).unwrap();
        assert_eq!(f.train, [10, 4, 12, 20, 30, 31, 32, 33, 40, 34]);
    }
}
