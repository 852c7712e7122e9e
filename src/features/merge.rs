//! Joining shard files (a [`Shard`](super::Shard) `i/n` each) into complete feature files. Shards of one set carry the
//! same key and consecutive rows; merging checks both and that all `n` are present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::{join, FeatureFile};
use super::FeatureError;

/// One set put together.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Merged {
    pub path: PathBuf,
    pub shards: usize,
    pub rows: usize,
}

/// `<stem>.shard-<i>-of-<n>.safetensors` -> `(stem, i, n)`.
fn parse_shard_name(name: &str) -> Option<(String, usize, usize)> {
    let rest = name.strip_suffix(".safetensors")?;
    let (stem, shard) = rest.rsplit_once(".shard-")?;
    let (i, n) = shard.split_once("-of-")?;
    Some((stem.to_string(), i.parse().ok()?, n.parse().ok()?))
}

/// Merges every set whose shards sit in `cache_dir/<dataset>/` folders (or in `cache_dir`
/// itself). Shard files are kept; merging again gives the same files.
pub fn merge(cache_dir: &Path) -> Result<Vec<Merged>, FeatureError> {
    let mut dirs = vec![cache_dir.to_path_buf()];
    for e in std::fs::read_dir(cache_dir).map_err(|e| FeatureError::io(cache_dir, e))? {
        let p = e.map_err(|e| FeatureError::io(cache_dir, e))?.path();
        if p.is_dir() && p.extension().is_none_or(|x| x != "partial") {
            dirs.push(p);
        }
    }
    // (final path) -> (n, {i -> shard path})
    let mut groups: BTreeMap<PathBuf, (usize, BTreeMap<usize, PathBuf>)> = BTreeMap::new();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).map_err(|e| FeatureError::io(&dir, e))? {
            let p = e.map_err(|e| FeatureError::io(&dir, e))?.path();
            let Some((stem, i, n)) = p
                .file_name()
                .and_then(|f| parse_shard_name(&f.to_string_lossy()))
            else {
                continue;
            };
            let target = dir.join(format!("{stem}.safetensors"));
            let entry = groups.entry(target.clone()).or_insert((n, BTreeMap::new()));
            if entry.0 != n {
                return Err(FeatureError::Merge {
                    path: p,
                    msg: format!(
                        "shards of {} disagree on the shard count ({} vs {n})",
                        target.display(),
                        entry.0
                    ),
                });
            }
            entry.1.insert(i, p);
        }
    }
    let mut out = Vec::new();
    for (target, (n, shards)) in groups {
        let missing: Vec<String> = (0..n)
            .filter(|i| !shards.contains_key(i))
            .map(|i| format!("{i}/{n}"))
            .collect();
        if !missing.is_empty() {
            return Err(FeatureError::Merge {
                path: target,
                msg: format!(
                    "shard(s) {} have not finished (no shard file)",
                    missing.join(", ")
                ),
            });
        }
        let files: Vec<FeatureFile> = shards
            .values()
            .map(|p| FeatureFile::read(p))
            .collect::<Result<_, _>>()?;
        let files: Vec<FeatureFile> = files
            .into_iter()
            .filter(|f| !f.meta.rows.is_empty())
            .collect();
        let impaths = files
            .first()
            .map(|f| f.meta.impaths.clone())
            .unwrap_or_default();
        let whole = join(&files, impaths).map_err(|why| FeatureError::Join {
            path: target.clone(),
            why,
        })?;
        if whole.meta.rows != (0..whole.meta.total) {
            return Err(FeatureError::Merge {
                path: target,
                msg: format!(
                    "the shards cover rows {:?} of 0..{}",
                    whole.meta.rows, whole.meta.total
                ),
            });
        }
        let held = super::lock::lock(&target, &mut |_| {})?;
        whole.write(&target)?;
        drop(held);
        out.push(Merged {
            path: target,
            shards: n,
            rows: whole.rows(),
        });
    }
    Ok(out)
}
