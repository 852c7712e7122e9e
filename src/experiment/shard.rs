//! A grid spread over machines: `run --shard I/N` fits a deterministic, cost-balanced share of
//! the grid's cells and writes files of its own; [`super::join`] puts the shards' rows
//! together into the `results.csv` one run would have written.
//!
//! - **Cells.** A few-shot or base-to-new grid shards by cell (one method on one draw); a
//!   transfer protocol by fit (one method on one source draw, with all of that fit's rows).
//! - **Cost.** Each cell's cost is estimated before anything is fitted, from what is known
//!   then: the method's card and the draw's size, read from the cache's file headers (no
//!   features are read). See [`method_weight`] and [`draw_cost`].
//! - **Assignment.** Greedy, largest first: cells in decreasing cost (ties in grid order), each
//!   to the shard with the least cost so far (ties to the lowest index). Every shard computes
//!   the same assignment on its own from the same spec and cache; nothing is exchanged.
//! - **Files.** Shard `I` of `N` writes `results.shard-I-of-N.csv` (its rows, resumable as
//!   `results.csv` is) and `results.shard-I-of-N.json` (its [`ShardManifest`]: the grid, every
//!   cell's estimated cost and the shard's cells), and no table or report: shards that share a
//!   folder, as a network file system shares it between machines, never write the same file,
//!   so they need no lock that such file systems may not honour.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExperimentError, GridMethod, Protocol, ResultRow, ResultsFile, RowKey, Validation};
use crate::features::task::DrawSize;
pub use crate::features::Shard;
use crate::methods::{MethodCard, Needs};

/// The results file of shard `s`: `results.shard-I-of-N.csv`.
pub fn results_name(s: Shard) -> String {
    format!("results.shard-{}-of-{}.csv", s.index, s.count)
}

/// The manifest of shard `s`: `results.shard-I-of-N.json`.
pub fn manifest_name(s: Shard) -> String {
    format!("results.shard-{}-of-{}.json", s.index, s.count)
}

/// `results.shard-I-of-N.<ext>` -> shard `I/N` (`None` for any other name).
pub fn parse_name(name: &str, ext: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("results.shard-")?.strip_suffix(ext)?;
    let (i, n) = rest.strip_suffix('.')?.split_once("-of-")?;
    let (i, n) = (i.parse().ok()?, n.parse().ok()?);
    (i < n).then_some((i, n))
}

/// How much heavier a method's fit is than scoring a draw once: 1 for a method that trains
/// nothing image by image (zero-shot, and the closed-form or search-only heads whose card
/// lists no augmentation and no epochs), 10 for one that trains on the images' features (its
/// card lists an augmentation or an `epochs` option), 100 for one that trains through the
/// text tower (CoOp: every step encodes every class's prompt), 1000 for one that trains
/// through the model on the images themselves (CLIP-LoRA: every step decodes and encodes a
/// batch of images and every class's prompt, forward and backward, and its test images are
/// encoded again through its updates).
pub fn method_weight(card: &MethodCard) -> u64 {
    let trains = card.augmentation.augments() || card.options.contains(&"epochs");
    match card.needs {
        Needs::Images => 1000,
        Needs::TextTower => 100,
        _ if trains => 10,
        _ => 1,
    }
}

/// The estimated cost of scoring a draw: its images (train, val, test) × its classes, the size
/// of the logits a fit computes at least once (ImageNet's 16-shot draw weighs about 600 times
/// EuroSAT's).
pub fn draw_cost(size: &DrawSize) -> u64 {
    (size.images() as u64).saturating_mul(size.classes.max(1) as u64)
}

/// The shard of every cell: greedy, largest first (ties in grid order), each cell to the
/// shard with the least cost so far (ties to the lowest index). Deterministic: the same costs
/// give the same assignment on every machine.
pub fn assign(costs: &[u64], count: usize) -> Vec<usize> {
    let count = count.max(1);
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(costs[c]), c));
    let mut loads = vec![0u64; count];
    let mut out = vec![0; costs.len()];
    for c in order {
        let (s, _) = (loads.iter().enumerate())
            .min_by_key(|&(s, &load)| (load, s))
            .unwrap_or((0, &0));
        out[c] = s;
        loads[s] = loads[s].saturating_add(costs[c]);
    }
    out
}

/// Which cells (by grid position) shard `s` runs.
pub fn share(costs: &[u64], s: Shard) -> Vec<bool> {
    assign(costs, s.count)
        .into_iter()
        .map(|a| a == s.index)
        .collect()
}

/// What a shard writes beside its rows (`results.shard-I-of-N.json`): the grid it is a share
/// of, every cell's estimated cost, and its own cells. Joining reads it to check that the
/// shards ran one grid, each its own cells, and to put their rows in the grid's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub index: usize,
    pub count: usize,
    pub protocol: Protocol,
    pub validation: Validation,
    pub methods: Vec<GridMethod>,
    /// The datasets fitted (a transfer protocol: tested).
    pub datasets: Vec<String>,
    /// The dataset a transfer protocol trains on.
    pub source: Option<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    /// The estimated cost of every cell (a transfer protocol: of every fit), in grid order.
    pub costs: Vec<u64>,
    /// The grid positions of this shard's cells, ascending.
    pub cells: Vec<usize>,
}

impl ShardManifest {
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.index,
            count: self.count,
        }
    }

    /// Rows per cell: 1, or a transfer fit's source row and one row per target.
    pub fn rows_per_cell(&self) -> usize {
        match self.protocol.transfers() {
            true => 1 + self.datasets.len(),
            false => 1,
        }
    }

    /// Whether two shards' manifests describe the same grid and estimate (all but the shard
    /// and its cells).
    pub fn same_grid(&self, other: &ShardManifest) -> bool {
        let strip = |m: &ShardManifest| ShardManifest {
            index: 0,
            cells: Vec::new(),
            ..m.clone()
        };
        strip(self) == strip(other)
    }

    /// A row's place in the order a single run writes the grid's rows: `(cell, row of the
    /// cell)`; `None` for a row that is not one of this grid's.
    pub fn place(&self, r: &ResultRow) -> Option<(usize, usize)> {
        if r.protocol != self.protocol || r.validation != self.validation {
            return None;
        }
        let s = self.shots.iter().position(|&k| k == r.shots)?;
        let e = self.seeds.iter().position(|&k| k == r.seed)?;
        let m =
            (self.methods.iter()).position(|g| g.label == r.method && g.options == r.options)?;
        let (sh, se, me) = (self.shots.len(), self.seeds.len(), self.methods.len());
        if !self.protocol.transfers() {
            let d = self.datasets.iter().position(|d| *d == r.dataset)?;
            return Some((((d * sh + s) * se + e) * me + m, 0));
        }
        let source = self.source.as_deref()?;
        if r.source_dataset != source {
            return None;
        }
        let j = match r.dataset == source {
            true => 0,
            false => 1 + self.datasets.iter().position(|d| *d == r.dataset)?,
        };
        Some(((s * se + e) * me + m, j))
    }

    /// A row's index in the single run's order (see [`Self::place`]).
    pub fn order(&self, r: &ResultRow) -> Option<usize> {
        self.place(r)
            .map(|(cell, j)| cell * self.rows_per_cell() + j)
    }

    /// Reads a manifest, naming the file in the error.
    pub fn read(path: &Path) -> Result<Self, ExperimentError> {
        let bad = |msg: String| ExperimentError::ShardManifest {
            path: path.to_path_buf(),
            msg,
        };
        crate::limits::check_list_file(path).map_err(|limit| ExperimentError::TooLarge {
            path: path.to_path_buf(),
            limit,
        })?;
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let m: ShardManifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a shard manifest: {e}")))?;
        let rows = m.methods.len() * m.shots.len() * m.seeds.len();
        let cells = match m.protocol.transfers() {
            true => rows,
            false => rows * m.datasets.len(),
        };
        if m.costs.len() != cells || m.cells.iter().any(|&c| c >= cells) || m.index >= m.count {
            return Err(bad(format!(
                "inconsistent: shard {}/{}, {} costs and cells up to {:?} for a grid of {cells} \
                 cells",
                m.index,
                m.count,
                m.costs.len(),
                m.cells.iter().max()
            )));
        }
        Ok(m)
    }

    /// Writes the manifest atomically.
    pub fn write(&self, path: &Path) -> Result<(), ExperimentError> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| ExperimentError::ShardManifest {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        crate::fsutil::write_atomic(path, &bytes)?;
        Ok(())
    }
}

/// Where a shard's rows go: its own results file. Rows are also found in the folder's
/// `results.csv` (an earlier unsharded run, or shards joined before), read once and never
/// written, so a shard does not fit again what the folder already holds.
#[derive(Debug)]
pub struct ShardSink {
    shard: Shard,
    own: ResultsFile,
    folder: Vec<ResultRow>,
}

impl ShardSink {
    /// Opens shard `s`'s results file in `out`, and `out/results.csv` when it exists.
    pub fn open(out: &Path, s: Shard) -> Result<Self, ExperimentError> {
        let own = ResultsFile::open(&out.join(results_name(s)))?;
        let folder = out.join("results.csv");
        let folder = match folder.exists() {
            true => super::row::read_csv(&folder)?,
            false => Vec::new(),
        };
        Ok(ShardSink {
            shard: s,
            own,
            folder,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.own.path().to_path_buf()
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The shard file's rows.
    pub fn rows(&self) -> &[ResultRow] {
        self.own.rows()
    }
}

impl super::RowSink for ShardSink {
    fn find(&self, key: &RowKey) -> Option<&ResultRow> {
        (self.own.find(key)).or_else(|| self.folder.iter().find(|r| r.key() == *key))
    }

    fn push(&mut self, row: ResultRow) -> Result<(), ExperimentError> {
        self.own.push(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let s = Shard { index: 2, count: 7 };
        assert_eq!(results_name(s), "results.shard-2-of-7.csv");
        assert_eq!(parse_name(&results_name(s), "csv"), Some((2, 7)));
        assert_eq!(parse_name(&manifest_name(s), "json"), Some((2, 7)));
        assert_eq!(parse_name("results.shard-7-of-7.csv", "csv"), None);
        assert_eq!(parse_name("results.csv", "csv"), None);
        assert_eq!(parse_name("results.shard-a-of-2.csv", "csv"), None);
    }

    /// Each cell goes to exactly one shard, the same one however often it is computed, and
    /// the loads are within the largest cell of each other.
    #[test]
    fn assignment_is_deterministic_complete_and_balanced() {
        // A grid-like mix: zero-shot (1), trained (10) and CoOp (100) cells on a small and a
        // large dataset (×1 and ×600).
        let mut costs = Vec::new();
        for dataset in [1u64, 600] {
            for _seed in 0..3 {
                for weight in [1u64, 10, 10, 100] {
                    costs.push(weight * dataset * 1000);
                }
            }
        }
        for n in 1..=7 {
            let a = assign(&costs, n);
            assert_eq!(a, assign(&costs, n), "deterministic");
            assert!(a.iter().all(|&s| s < n));
            let shares: Vec<Vec<bool>> = (0..n)
                .map(|i| share(&costs, Shard { index: i, count: n }))
                .collect();
            for c in 0..costs.len() {
                assert_eq!(
                    shares.iter().filter(|s| s[c]).count(),
                    1,
                    "cell {c}, {n} shards"
                );
            }
            let mut loads = vec![0u64; n];
            for (c, &s) in a.iter().enumerate() {
                loads[s] += costs[c];
            }
            let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
            let largest = *costs.iter().max().unwrap();
            assert!(max - min <= largest, "{n} shards: loads {loads:?}");
            if n <= 3 {
                // Few shards: the greedy split is close to even.
                let total: u64 = costs.iter().sum();
                assert!(max <= total / n as u64 + largest / 2, "{n}: {loads:?}");
            }
        }
    }

    /// Largest first, ties in grid order to the lowest shard.
    #[test]
    fn greedy_largest_first() {
        assert_eq!(assign(&[5, 5, 5, 5], 2), vec![0, 1, 0, 1]);
        assert_eq!(assign(&[1, 9, 4, 4], 2), vec![1, 0, 1, 1]);
        assert_eq!(assign(&[], 3), Vec::<usize>::new());
        // A shard may get nothing.
        assert_eq!(assign(&[3], 2), vec![0]);
    }

    #[test]
    fn method_weights_follow_the_card() {
        use crate::methods::MethodKind;
        let weight = |name: &str| {
            let k = MethodKind::all().iter().find(|k| k.name() == name).unwrap();
            method_weight(k.card())
        };
        assert_eq!(weight("zero-shot"), 1);
        assert_eq!(weight("clip-adapter"), 10);
        assert_eq!(weight("coop"), 100);
        assert_eq!(weight("clip-lora"), 1000);
        let eurosat = DrawSize {
            classes: 10,
            train: 160,
            val: 40,
            test: 8100,
        };
        let imagenet = DrawSize {
            classes: 1000,
            train: 16000,
            val: 0,
            test: 50000,
        };
        assert!(draw_cost(&imagenet) > 500 * draw_cost(&eurosat));
    }
}
