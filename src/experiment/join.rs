//! Joining the rows of a grid's shards (`run --shard I/N`) into the `results.csv` a single
//! run would have written (`merge --results DIR`).
//!
//! - **Which files.** Every `results.shard-I-of-N.csv` of the folder with its manifest
//!   `results.shard-I-of-N.json`; all `N` shards must be there, of one `N`, with manifests of
//!   one grid and one cost estimate, each holding the cells the assignment gives it.
//! - **Order.** The folder's `results.csv`, when there is one, keeps its rows where they are
//!   (as a rerun of one run keeps the rows it finds); the shards' other rows follow in the
//!   grid's order, which each manifest records (the grid's axes in the order the run was
//!   given them), so the joined file is row for row the one a single run writes. Rows of a
//!   shard file that are not of the manifest's grid (an earlier grid in the same folder) go
//!   last, by shard and then in their file's order.
//! - **Disagreeing rows.** A row whose identity (method, options, dataset, shots, seed,
//!   validation, model, features, protocol, source) is already there must have the same
//!   measurements: validation, test and new-class accuracy (NaN equal to NaN), the chosen
//!   hyper-parameters and what it trained on. The training time and the model's display name
//!   may differ. Fits are deterministic, so two fits of one cell that disagree ran other code
//!   or other features; the join is refused, naming both files, and nothing is written.
//! - **Finished.** Every cell of every shard must have its rows (in a shard file or in
//!   `results.csv`); an unfinished shard is named, to be run again (it resumes).
//!
//! `results.csv` is written atomically under the lock `run` takes on it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::shard::{assign, manifest_name, parse_name, results_name, ShardManifest};
use super::{row, ExperimentError, ResultRow, RowKey};

/// What a join wrote.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The folder's `results.csv`.
    pub path: PathBuf,
    /// The grid the shards ran (shard 0's manifest).
    pub manifest: ShardManifest,
    /// Every row of `results.csv`, as written.
    pub rows: Vec<ResultRow>,
    /// The grid's rows, in the grid's order.
    pub grid_rows: Vec<ResultRow>,
    /// How many rows the shards added to `results.csv`.
    pub added: usize,
}

/// Joins the shards in `dir` into `dir/results.csv` (see the module's notes).
pub fn join(dir: &Path) -> Result<Joined, ExperimentError> {
    let manifests = read_manifests(dir)?;
    let target = dir.join("results.csv");
    use crate::features::lock;
    let held = lock::lock(&target, &mut |_| {}).map_err(|e| ExperimentError::Lock(Box::new(e)))?;
    lock::clean(&target, &held).map_err(|e| ExperimentError::Lock(Box::new(e)))?;
    let base = match target.exists() {
        true => row::read_csv(&target)?,
        false => Vec::new(),
    };
    let mut from: HashMap<RowKey, (usize, PathBuf)> = HashMap::new();
    for (i, r) in base.iter().enumerate() {
        from.entry(r.key()).or_insert((i, target.clone()));
    }
    let grid = &manifests[0].1;
    let mut new: Vec<(usize, usize, usize, ResultRow)> = Vec::new();
    for (s, (_, m)) in manifests.iter().enumerate() {
        let path = dir.join(results_name(m.shard()));
        if !path.exists() {
            continue;
        }
        for (j, r) in row::read_csv(&path)?.into_iter().enumerate() {
            match from.get(&r.key()) {
                Some((k, other)) => {
                    let earlier = match other == &target {
                        true => &base[*k],
                        false => &new[*k].3,
                    };
                    check_agree(earlier, &r, other, &path)?;
                }
                None => {
                    from.insert(r.key(), (new.len(), path.clone()));
                    new.push((grid.order(&r).unwrap_or(usize::MAX), s, j, r));
                }
            }
        }
    }
    check_finished(dir, &manifests, base.iter().chain(new.iter().map(|n| &n.3)))?;
    new.sort_by_key(|&(order, s, j, _)| (order, s, j));
    let added = new.len();
    let rows: Vec<ResultRow> = base
        .into_iter()
        .chain(new.into_iter().map(|n| n.3))
        .collect();
    row::write_csv(&target, &rows)?;
    drop(held);
    let mut grid_rows: Vec<(usize, ResultRow)> = (rows.iter())
        .filter_map(|r| grid.order(r).map(|o| (o, r.clone())))
        .collect();
    grid_rows.sort_by_key(|(o, _)| *o);
    Ok(Joined {
        path: target,
        manifest: grid.clone(),
        rows,
        grid_rows: grid_rows.into_iter().map(|(_, r)| r).collect(),
        added,
    })
}

/// The manifests of shards `0..N` in `dir`, checked: one `N`, all there, one grid and
/// estimate, each with the cells the assignment gives it.
fn read_manifests(dir: &Path) -> Result<Vec<(PathBuf, ShardManifest)>, ExperimentError> {
    let io = |source| ExperimentError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut counts = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let name = e.map_err(io)?.file_name().to_string_lossy().into_owned();
        if let Some((_, n)) = parse_name(&name, "csv").or_else(|| parse_name(&name, "json")) {
            counts.insert(n);
        }
    }
    let count = match counts.len() {
        0 => return Err(ExperimentError::NoShards { dir: dir.into() }),
        1 => counts.into_iter().next().unwrap_or(1),
        _ => {
            let counts: Vec<String> = counts.iter().map(|n| format!("of {n}")).collect();
            return Err(ExperimentError::ShardCounts {
                dir: dir.into(),
                counts: counts.join(", "),
            });
        }
    };
    let mut out: Vec<(PathBuf, ShardManifest)> = Vec::with_capacity(count);
    for index in 0..count {
        let path = dir.join(manifest_name(super::shard::Shard { index, count }));
        if !path.exists() {
            return Err(ExperimentError::ShardMissing { path, index, count });
        }
        let m = ShardManifest::read(&path)?;
        if (m.index, m.count) != (index, count) {
            return Err(ExperimentError::ShardManifest {
                path,
                msg: format!("records shard {}/{}, not {index}/{count}", m.index, m.count),
            });
        }
        if let Some((first, f)) = out.first() {
            if !f.same_grid(&m) {
                let other = first.clone();
                return Err(ExperimentError::ShardGrids { path, other });
            }
        }
        let cells: Vec<usize> = (assign(&m.costs, count).into_iter().enumerate())
            .filter_map(|(c, s)| (s == index).then_some(c))
            .collect();
        if cells != m.cells {
            return Err(ExperimentError::ShardManifest {
                path,
                msg: "its cells are not the ones its costs assign it".into(),
            });
        }
        out.push((path, m));
    }
    Ok(out)
}

/// Refuses `b` (from `b_path`) unless its measurements are those of `a` (from `a_path`).
fn check_agree(
    a: &ResultRow,
    b: &ResultRow,
    a_path: &Path,
    b_path: &Path,
) -> Result<(), ExperimentError> {
    let same = |x: f32, y: f32| x == y || (x.is_nan() && y.is_nan());
    let new_same = match (a.new_accuracy, b.new_accuracy) {
        (Some(x), Some(y)) => same(x, y),
        (x, y) => x.is_none() && y.is_none(),
    };
    let differ: Vec<&str> = [
        ("val_accuracy", same(a.val_accuracy, b.val_accuracy)),
        ("test_accuracy", same(a.test_accuracy, b.test_accuracy)),
        ("new_accuracy", new_same),
        ("chosen", a.chosen == b.chosen),
        ("augmentation", a.augmentation == b.augmentation),
    ]
    .into_iter()
    .filter_map(|(column, same)| (!same).then_some(column))
    .collect();
    match differ.is_empty() {
        true => Ok(()),
        false => Err(ExperimentError::RowsDisagree {
            path: b_path.to_path_buf(),
            other: a_path.to_path_buf(),
            row: describe(b),
            columns: differ.join(", "),
        }),
    }
}

fn describe(r: &ResultRow) -> String {
    format!(
        "`{}` on {} {}-shot seed {}",
        r.label(),
        r.dataset,
        r.shots,
        r.seed
    )
}

/// Refuses the join while a shard's cell lacks a row.
fn check_finished<'a>(
    dir: &Path,
    manifests: &[(PathBuf, ShardManifest)],
    rows: impl Iterator<Item = &'a ResultRow>,
) -> Result<(), ExperimentError> {
    let grid = &manifests[0].1;
    let have: HashSet<(usize, usize)> = rows.filter_map(|r| grid.place(r)).collect();
    for (_, m) in manifests {
        let missing: Vec<(usize, usize)> = (m.cells.iter())
            .flat_map(|&c| (0..m.rows_per_cell()).map(move |j| (c, j)))
            .filter(|p| !have.contains(p))
            .collect();
        if let Some(&(c, j)) = missing.first() {
            return Err(ExperimentError::ShardUnfinished {
                path: dir.join(results_name(m.shard())),
                index: m.index,
                count: m.count,
                missing: missing.len(),
                first: describe_cell(grid, c, j),
            });
        }
    }
    Ok(())
}

/// A cell's row `j` in words.
fn describe_cell(m: &ShardManifest, c: usize, j: usize) -> String {
    let (me, se, sh) = (m.methods.len(), m.seeds.len(), m.shots.len());
    let (method, seed, shots) = (&m.methods[c % me], m.seeds[c / me % se], c / me / se % sh);
    let dataset = match (m.protocol.transfers(), &m.source) {
        (true, Some(source)) if j == 0 => source.clone(),
        (true, Some(source)) => format!("{} (trained on {source})", m.datasets[j - 1]),
        _ => m.datasets[c / me / se / sh].clone(),
    };
    format!(
        "`{}` on {dataset} {}-shot seed {seed}",
        method.label, m.shots[shots]
    )
}
