//! What a run needs, encoded: the few-shot train set (evaluation view and N augmented views),
//! its val set and the full test set, each a [`FeatureSet`] cached in its own file.
//!
//! Work is cut into *chunks* of `chunk_batches` batches, aligned from the set's first row. A
//! finished chunk is written (atomically) into `<target>.partial/` at once, so a run killed at
//! any point resumes at its first unfinished chunk; when every chunk is there they are joined
//! into the target and the partial folder is removed. Because chunks and batches always start
//! at the same rows, a resumed, sharded or uninterrupted run encodes exactly the same batches
//! and writes byte-identical files.
//!
//! Decoding runs in a producer thread (each batch decoded in parallel with rayon) one to two
//! batches ahead of the image tower, so decoding overlaps encoding. Sets of the same images
//! (a train set's evaluation view and its augmented views) are encoded together from one
//! decoding of each image; a batch then holds `1 + views` model inputs per image. Each file is
//! written under its lock (`lock.rs`). Progress goes to a callback; the library never prints.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;

use super::cache::{
    join, samples_digest, split_digest, DataSource, FeatureFile, Meta, Output, Partial, SetKey,
    Transform,
};
use super::error::Result;
use super::{lock, FeatureError};
use crate::clip::{Clip, Precision};
use crate::data::{Dataset, FewShot, Sample, Split};
use crate::image::augment::{Augment, ViewRng};
use crate::image::{decode_file, ImageError, Preprocess};

/// Batches per resumable chunk unless the caller says otherwise.
pub const DEFAULT_CHUNK_BATCHES: usize = 4;

/// One of `count` processes that split the work: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = FeatureError;

    /// `i/n`, e.g. `0/4`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || FeatureError::BadShard(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Root of the cache (`<cache>/<dataset>/<file>`).
    pub cache_dir: PathBuf,
    /// Images per forward pass.
    pub batch: usize,
    /// Batches per resumable chunk.
    pub chunk_batches: usize,
    /// Leave unreadable images out (listed in the file's `skipped` metadata) instead of
    /// stopping.
    pub skip_bad: bool,
    /// Encode only this shard's chunks into a shard file.
    pub shard: Option<Shard>,
    /// The model as the user named it, recorded in the files.
    pub model_name: String,
    /// Where the images came from, recorded in the files so a later message can print an
    /// `extract` command for missing sets.
    pub source: Option<DataSource>,
    /// The arithmetic of the model's linear layers; bfloat16 features are cached under their
    /// own key ([`Precision::fingerprint`]).
    pub precision: Precision,
}

/// One set of images to encode with one transform.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub key: SetKey,
    pub classnames: Vec<String>,
    pub samples: Vec<Sample>,
    pub image_root: PathBuf,
}

impl FeatureSet {
    /// A readable name: `train-16shot-seed1.aug3`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.key.part, self.key.tag())
    }

    /// The complete set's file.
    pub fn path(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(&self.key.dataset).join(self.key.file_name())
    }

    /// Shard `s`'s file.
    pub fn shard_path(&self, cache_dir: &Path, s: Shard) -> PathBuf {
        let full = self.key.file_name();
        let stem = full.trim_end_matches(".safetensors");
        cache_dir.join(&self.key.dataset).join(format!(
            "{stem}.shard-{}-of-{}.safetensors",
            s.index, s.count
        ))
    }
}

/// The sets a run on `dataset` needs: train (or its few-shot draw) in the evaluation view and
/// in `views` augmented views (`augment`, seeded by `seed`), val likewise without views, and
/// the full test set. Empty parts (ImageNet's val) are left out.
pub fn plan(
    dataset: &Dataset,
    few_shot: Option<&FewShot>,
    model: &str,
    preprocess: &Preprocess,
    views: u32,
    augment: Augment,
    seed: u64,
) -> Result<Vec<FeatureSet>> {
    // Each view is a set holding its own copy of the samples: bound them before the loop.
    crate::limits::VIEWS.check_option("views", views)?;
    let pick = |split: Split| -> (String, Vec<Sample>) {
        match (few_shot, split) {
            (Some(f), Split::Train | Split::Val) => (
                format!("{split}-{}shot-seed{}", f.shots, f.seed),
                f.samples(dataset, split).into_iter().cloned().collect(),
            ),
            _ => (split.name().to_string(), dataset.split(split).to_vec()),
        }
    };
    let eval = Transform::Eval {
        preprocess: preprocess.clone(),
    };
    let split_id = split_digest(dataset);
    let mut sets = Vec::new();
    for split in crate::data::Split::ALL {
        let (part, samples) = pick(split);
        if samples.is_empty() {
            continue;
        }
        let set = |transform: Transform, view: u32| FeatureSet {
            key: SetKey {
                model: model.to_string(),
                dataset: dataset.name.clone(),
                part: part.clone(),
                samples: samples_digest(&samples),
                split: split_id.clone(),
                transform,
                view,
                output: Output::Projected,
            },
            classnames: dataset.classnames.clone(),
            samples: samples.clone(),
            image_root: dataset.image_root.clone(),
        };
        sets.push(set(eval.clone(), 0));
        if split == Split::Train {
            for view in 0..views {
                let transform = Transform::Augment {
                    augment,
                    preprocess: preprocess.clone(),
                    seed,
                };
                sets.push(set(transform, view));
            }
        }
    }
    Ok(sets)
}

/// `sets` with, right after each, its twin holding the image tower's output before the last
/// projection (pre-projection features, for ProLIP). A twin is keyed, resumed, sharded and
/// locked like any set, and is encoded from the same forward pass as its projected set.
pub fn with_pre_projection(sets: Vec<FeatureSet>) -> Vec<FeatureSet> {
    let mut out = Vec::with_capacity(2 * sets.len());
    for set in sets {
        let mut pre = set.clone();
        pre.key.output = Output::PreProjection;
        out.push(set);
        out.push(pre);
    }
    out
}

/// What extraction reports, in order, per set.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Starting `set`; `done` images come from an earlier, interrupted run.
    Start {
        set: String,
        total: usize,
        done: usize,
    },
    /// `done` of `total` images encoded (counting resumed ones).
    Progress {
        set: String,
        done: usize,
        total: usize,
    },
    /// The set's file is complete: freshly written, or `reused` from an earlier run.
    Done {
        set: String,
        path: PathBuf,
        reused: bool,
        skipped: Vec<String>,
    },
    /// The set's file was there but unusable (damaged, or of an older format): it is encoded
    /// again. `reason` is the reader's message.
    Rebuilding {
        set: String,
        path: PathBuf,
        reason: String,
    },
    /// Another process (`holder`, when it has written its PID) is writing the set's file; this
    /// one waits for it, then reuses or resumes what it left.
    Waiting {
        set: String,
        path: PathBuf,
        holder: Option<u32>,
    },
    /// Files that killed runs left behind were removed.
    Cleaned { paths: Vec<PathBuf> },
}

impl Event {
    /// A line for the user (stderr) for the events that are news rather than progress.
    pub fn notice(&self) -> Option<String> {
        match self {
            Event::Rebuilding { set, reason, .. } => {
                Some(format!("{reason}\nencoding {set} again"))
            }
            Event::Waiting { set, path, holder } => Some(format!(
                "{set}: {} is being written by {} (another extract on this cache); waiting for it",
                path.display(),
                holder.map_or("another process".to_string(), |p| format!("PID {p}"))
            )),
            Event::Cleaned { paths } => Some(format!(
                "removed {} file(s) left by an interrupted run, e.g. {}",
                paths.len(),
                paths
                    .first()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }
}

/// Hooks into a running extraction.
pub struct Hooks<'a> {
    pub on_event: &'a mut dyn FnMut(&Event),
    /// Asked before each chunk; `true` stops the run cleanly (as Ctrl-C or a kill would,
    /// minus the unfinished chunk). Tests use it to interrupt at a chosen point.
    pub should_stop: &'a dyn Fn() -> bool,
}

/// Chunks of `0..total`, each `chunk` rows, aligned from row 0.
fn chunks(total: usize, chunk: usize) -> Vec<Range<usize>> {
    (0..total)
        .step_by(chunk.max(1))
        .map(|s| s..(s + chunk).min(total))
        .collect()
}

/// Encodes `set` (or this shard's part of it) into the cache, resuming from any finished
/// chunks, and returns the file written or found.
pub fn extract_set(
    clip: &Clip,
    set: &FeatureSet,
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<PathBuf> {
    let mut paths = extract_sets(clip, std::slice::from_ref(set), opts, hooks)?;
    Ok(paths.remove(0))
}

/// [`extract_set`] for each of `sets`, in order, returning their files. Consecutive sets of
/// the same images (the evaluation view and the augmented views of a train set, as [`plan`]
/// lists them) are encoded together: each image is read and decoded once, and every view is
/// cropped from that decoded image. The files are the same, byte for byte, as one set at a
/// time would write.
pub fn extract_sets(
    clip: &Clip,
    sets: &[FeatureSet],
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<Vec<PathBuf>> {
    crate::limits::BATCH.check_option("batch_size", opts.batch)?;
    // Features computed elsewhere have no images here to encode.
    if let Some(set) = (sets.iter()).find(|s| s.key.transform == Transform::Imported) {
        return Err(FeatureError::NotEncodable { set: set.name() });
    }
    let mut out = Vec::with_capacity(sets.len());
    let mut i = 0;
    while i < sets.len() {
        let same = |s: &FeatureSet| {
            s.key.part == sets[i].key.part
                && s.key.samples == sets[i].key.samples
                && s.key.split == sets[i].key.split
                && s.key.dataset == sets[i].key.dataset
                && s.image_root == sets[i].image_root
                && s.samples == sets[i].samples
        };
        let j = i + sets[i..].iter().take_while(|s| same(s)).count();
        out.extend(extract_group(clip, &sets[i..j], opts, hooks)?);
        i = j;
    }
    Ok(out)
}

/// A set of a group that has to be encoded (not reused).
struct Member<'a> {
    set: &'a FeatureSet,
    name: String,
    target: PathBuf,
    partial: Partial,
    /// Held until the member's file is complete.
    lock: Option<lock::FileLock>,
    done: usize,
}

/// Sets of the same samples (`sets` non-empty), decoded once.
fn extract_group(
    clip: &Clip,
    sets: &[FeatureSet],
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<Vec<PathBuf>> {
    let total = sets[0].samples.len();
    let (my_chunks, rows) = shard_chunks(total, opts);
    let (paths, mut work) = claim(sets, &rows, opts, hooks)?;
    if work.is_empty() {
        return Ok(paths);
    }
    encode_members(clip, &mut work, &my_chunks, opts, hooks)?;
    // Every chunk is on disk: join each member's into its file.
    for member in &mut work {
        join_member(clip, member, &my_chunks, &rows, total, opts, hooks)?;
    }
    Ok(paths)
}

/// The chunks of `0..total` this process encodes (its shard's), and the rows they span.
fn shard_chunks(total: usize, opts: &ExtractOptions) -> (Vec<Range<usize>>, Range<usize>) {
    let all_chunks = chunks(total, opts.batch.max(1) * opts.chunk_batches.max(1));
    let my_chunks = match opts.shard {
        None => all_chunks,
        Some(s) => {
            let n = all_chunks.len();
            all_chunks[s.index * n / s.count..(s.index + 1) * n / s.count].to_vec()
        }
    };
    let rows = match (my_chunks.first(), my_chunks.last()) {
        (Some(a), Some(b)) => a.start..b.end,
        // A shard with no rows (more shards than chunks) still writes its empty file, so
        // `merge` can tell that every shard ran.
        _ => {
            let at = opts
                .shard
                .map_or(0, |s| if s.index == 0 { 0 } else { total });
            at..at
        }
    };
    (my_chunks, rows)
}

fn target_of(set: &FeatureSet, opts: &ExtractOptions) -> PathBuf {
    match opts.shard {
        None => set.path(&opts.cache_dir),
        Some(s) => set.shard_path(&opts.cache_dir, s),
    }
}

/// Leftovers of killed runs on this cache folder, then each file's lock (always in plan
/// order, so two runs cannot deadlock): from then on no other process writes the file or its
/// resume chunks. Sets already cached are reported done; the others are returned as work.
fn claim<'a>(
    sets: &'a [FeatureSet],
    rows: &Range<usize>,
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<(Vec<PathBuf>, Vec<Member<'a>>)> {
    if let Some(dir) = target_of(&sets[0], opts).parent() {
        let removed = lock::sweep(dir)?;
        if !removed.is_empty() {
            (hooks.on_event)(&Event::Cleaned { paths: removed });
        }
    }
    let mut paths = Vec::with_capacity(sets.len());
    let mut work: Vec<Member> = Vec::new();
    for set in sets {
        let name = set.name();
        let target = target_of(set, opts);
        paths.push(target.clone());
        let held = lock::lock(&target, &mut |holder| {
            (hooks.on_event)(&Event::Waiting {
                set: name.clone(),
                path: target.clone(),
                holder,
            })
        })?;
        let removed = lock::clean(&target, &held)?;
        if !removed.is_empty() {
            (hooks.on_event)(&Event::Cleaned { paths: removed });
        }
        if let Some(found) = reuse(&target, set, rows, opts, &mut |reason| {
            (hooks.on_event)(&Event::Rebuilding {
                set: name.clone(),
                path: target.clone(),
                reason,
            })
        })? {
            (hooks.on_event)(&Event::Done {
                set: name,
                path: target,
                reused: true,
                skipped: found,
            });
            continue;
        }
        work.push(Member {
            set,
            name,
            partial: Partial::for_target(&target),
            target,
            lock: Some(held),
            done: 0,
        });
    }
    Ok((paths, work))
}

/// Encodes the chunks some member still needs (the others resume from their chunk files),
/// each written as a resume chunk.
fn encode_members(
    clip: &Clip,
    work: &mut [Member],
    my_chunks: &[Range<usize>],
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<()> {
    let my_total: usize = my_chunks.iter().map(|c| c.len()).sum();
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); my_chunks.len()];
    for (m, member) in work.iter_mut().enumerate() {
        for (c, chunk) in my_chunks.iter().enumerate() {
            if member
                .partial
                .load(&member.set.key, opts.batch, chunk)
                .is_none()
            {
                needs[c].push(m);
            } else {
                member.done += chunk.len();
            }
        }
        (hooks.on_event)(&Event::Start {
            set: member.name.clone(),
            total: my_total,
            done: member.done,
        });
    }
    let todo: Vec<(Range<usize>, Vec<usize>)> = my_chunks
        .iter()
        .cloned()
        .zip(needs)
        .filter(|(_, n)| !n.is_empty())
        .collect();
    let member_sets: Vec<&FeatureSet> = work.iter().map(|m| m.set).collect();
    let encoded = encode_chunks(
        clip,
        &member_sets,
        &todo,
        opts,
        &mut |m: usize, chunk: FeatureFile| {
            let member = &mut work[m];
            let path = member.partial.chunk_path(&chunk.meta.rows);
            member.done += chunk.meta.rows.len();
            chunk.write(&path)?;
            (hooks.on_event)(&Event::Progress {
                set: member.name.clone(),
                done: member.done,
                total: my_total,
            });
            Ok(())
        },
        hooks.should_stop,
    );
    encoded.map_err(|e| match e {
        // The interruption is reported on the first unfinished member, with its resume folder.
        FeatureError::Interrupted { .. } => {
            let m = work.iter().find(|m| m.done < my_total).unwrap_or(&work[0]);
            FeatureError::Interrupted {
                set: m.name.clone(),
                done: m.done,
                total: my_total,
                partial: m.partial.dir.clone(),
            }
        }
        e => e,
    })
}

/// Joins a member's chunks into its file, removes its resume folder and releases its lock.
fn join_member(
    clip: &Clip,
    member: &mut Member,
    my_chunks: &[Range<usize>],
    rows: &Range<usize>,
    total: usize,
    opts: &ExtractOptions,
    hooks: &mut Hooks,
) -> Result<()> {
    let set = member.set;
    let mut parts = Vec::with_capacity(my_chunks.len());
    for c in my_chunks {
        let f = member
            .partial
            .load(&set.key, opts.batch, c)
            .ok_or_else(|| FeatureError::Format {
                path: member.partial.chunk_path(c),
                msg: "a finished chunk vanished or changed while the set was being joined \
                      (something outside clip-adapter changed the resume folder); run the \
                      same command again"
                    .into(),
            })?;
        parts.push(f);
    }
    let impaths = set.samples.iter().map(|s| s.impath.clone()).collect();
    let whole = if parts.is_empty() {
        FeatureFile {
            meta: Meta {
                key: set.key.clone(),
                classnames: set.classnames.clone(),
                rows: rows.clone(),
                total,
                batch: opts.batch,
                skipped: Vec::new(),
                impaths: Vec::new(),
                model_name: opts.model_name.clone(),
                source: opts.source.clone(),
                imported: None,
            },
            dim: output_dim(clip, set.key.output),
            features: Vec::new(),
            labels: Vec::new(),
            index: Vec::new(),
        }
    } else {
        join(&parts, impaths).map_err(|why| FeatureError::Join {
            path: member.target.clone(),
            why,
        })?
    };
    whole.write(&member.target)?;
    member.partial.remove()?;
    member.lock.take();
    (hooks.on_event)(&Event::Done {
        set: member.name.clone(),
        path: member.target.clone(),
        reused: false,
        skipped: whole.meta.skipped.clone(),
    });
    Ok(())
}

/// The width of a set's rows.
fn output_dim(clip: &Clip, output: Output) -> usize {
    match output {
        Output::Projected => clip.config().embed_dim,
        Output::PreProjection => clip.config().vision.width(),
    }
}

/// An existing target made for exactly this set and these rows: `Some(skipped)`; a file for
/// something else never matches (its name carries the key; the key inside is checked too). A
/// file that cannot be read back whole (damaged data, a truncated or foreign header, an older
/// format) is reported through `rebuilding` and encoded again.
fn reuse(
    target: &Path,
    set: &FeatureSet,
    rows: &Range<usize>,
    opts: &ExtractOptions,
    rebuilding: &mut dyn FnMut(String),
) -> Result<Option<Vec<String>>> {
    if !target.is_file() {
        return Ok(None);
    }
    let f = match FeatureFile::read(target) {
        Ok(f) => f,
        Err(e @ FeatureError::Io { .. }) => return Err(e),
        Err(e) => {
            rebuilding(e.to_string());
            return Ok(None);
        }
    };
    // The batch size is not compared: it only decides the last bits of a complete file.
    if f.meta.key != set.key || f.meta.rows != *rows {
        return Ok(None);
    }
    if !f.meta.skipped.is_empty() && !opts.skip_bad {
        return Err(FeatureError::SkippedInCache {
            path: target.to_path_buf(),
            count: f.meta.skipped.len(),
            first: f.meta.skipped[0].clone(),
        });
    }
    Ok(Some(f.meta.skipped))
}

/// One decoded batch, on its way from the producer thread to the encoder: per image, the
/// model input of every member that needs the chunk (in `needs` order), or why the image
/// could not be read.
struct Decoded {
    chunk: usize,
    rows: Range<usize>,
    pixels: Vec<std::result::Result<Vec<Vec<f32>>, ImageError>>,
}

/// The model inputs of `sample` under the transforms of `sets[m]` for each `m` in `members`,
/// from one decoding of the image.
fn load(
    sets: &[&FeatureSet],
    members: &[usize],
    sample: &Sample,
) -> std::result::Result<Vec<Vec<f32>>, ImageError> {
    let root = &sets[members[0]].image_root;
    let img = decode_file(root.join(&sample.impath))?;
    Ok(members
        .iter()
        .map(|&m| match &sets[m].key.transform {
            Transform::Eval { preprocess } => preprocess.apply(&img),
            Transform::Augment {
                augment,
                preprocess,
                seed,
            } => {
                let mut rng = ViewRng::new(*seed, sets[m].key.view, &sample.impath);
                preprocess.to_tensor_normalized(&augment.apply(&img, &mut rng))
            }
            // `extract_sets` refuses imported sets before any image is decoded.
            Transform::Imported => Vec::new(),
        })
        .collect())
}

/// Decodes the chunks' batches on their own thread, each image once for every view of its
/// members, and hands them to the encoder; stops when the encoder does.
fn decode_batches(
    sets: &[&FeatureSet],
    todo: &[(Range<usize>, Vec<usize>)],
    batch: usize,
    tx: &std::sync::mpsc::SyncSender<Decoded>,
) {
    let samples = &sets[0].samples;
    for (chunk, (range, members)) in todo.iter().enumerate() {
        for start in range.clone().step_by(batch) {
            let rows = start..(start + batch).min(range.end);
            let pixels = samples[rows.clone()]
                .par_iter()
                .map(|s| load(sets, members, s))
                .collect();
            let decoded = Decoded {
                chunk,
                rows,
                pixels,
            };
            if tx.send(decoded).is_err() {
                return; // the encoder stopped
            }
        }
    }
}

/// An empty chunk file of `set` for `rows`, filled batch by batch.
fn chunk_file(
    clip: &Clip,
    set: &FeatureSet,
    rows: Range<usize>,
    opts: &ExtractOptions,
) -> FeatureFile {
    FeatureFile {
        meta: Meta {
            key: set.key.clone(),
            classnames: set.classnames.clone(),
            rows,
            total: set.samples.len(),
            batch: opts.batch,
            skipped: Vec::new(),
            impaths: Vec::new(),
            model_name: opts.model_name.clone(),
            source: opts.source.clone(),
            imported: None,
        },
        dim: output_dim(clip, set.key.output),
        features: Vec::new(),
        labels: Vec::new(),
        index: Vec::new(),
    }
}

/// Encodes the `todo` chunks (each with the members that need it), decoding in a producer
/// thread, handing each member's finished chunk to `on_chunk(member, chunk)`.
fn encode_chunks(
    clip: &Clip,
    sets: &[&FeatureSet],
    todo: &[(Range<usize>, Vec<usize>)],
    opts: &ExtractOptions,
    on_chunk: &mut dyn FnMut(usize, FeatureFile) -> Result<()>,
    should_stop: &dyn Fn() -> bool,
) -> Result<()> {
    if todo.is_empty() {
        return Ok(());
    }
    let batch = opts.batch.max(1);
    std::thread::scope(|scope| {
        // Two decoded batches in flight: one being encoded, one ready.
        let (tx, rx) = sync_channel::<Decoded>(1);
        scope.spawn(move || decode_batches(sets, todo, batch, &tx));
        let mut current: Vec<Option<FeatureFile>> = vec![None; sets.len()];
        let mut stop_checked = usize::MAX;
        for d in rx {
            if stop_checked != d.chunk {
                stop_checked = d.chunk;
                if should_stop() {
                    return Err(FeatureError::Interrupted {
                        set: String::new(),
                        done: 0,
                        total: 0,
                        partial: PathBuf::new(),
                    });
                }
            }
            let (range, members) = &todo[d.chunk];
            let mut good = Vec::new();
            let mut bad = Vec::new();
            for (row, px) in d.rows.clone().zip(d.pixels) {
                match px {
                    Ok(px) => good.push((row, px)),
                    Err(e) => bad.push((row, e)),
                }
            }
            if !bad.is_empty() && !opts.skip_bad {
                return Err(FeatureError::BadImages {
                    count: bad.len(),
                    details: bad.iter().map(|(_, e)| e.to_string()).collect(),
                });
            }
            // Both outputs of each view of this batch, from one forward pass: a projected set
            // and its pre-projection twin share it.
            let mut forwards: Vec<(&Transform, u32, candle_core::Tensor, candle_core::Tensor)> =
                Vec::new();
            for (k, &m) in members.iter().enumerate() {
                let set = sets[m];
                let size = match &set.key.transform {
                    Transform::Eval { preprocess } | Transform::Augment { preprocess, .. } => {
                        preprocess.size
                    }
                    Transform::Imported => 0,
                };
                let file =
                    current[m].get_or_insert_with(|| chunk_file(clip, set, range.clone(), opts));
                file.meta
                    .skipped
                    .extend(bad.iter().map(|(row, _)| set.samples[*row].impath.clone()));
                if !good.is_empty() {
                    let n = good.len();
                    let flat: Vec<f32> = good
                        .iter()
                        .flat_map(|(_, px)| px[k].iter().copied())
                        .collect();
                    let view = (&set.key.transform, set.key.view);
                    let at = match forwards.iter().position(|f| (f.0, f.1) == view) {
                        Some(at) => at,
                        None => {
                            let pixels = candle_core::Tensor::from_vec(
                                flat,
                                (n, 3, size, size),
                                clip.device(),
                            )?;
                            let (pre, projected) = clip.encode_image_parts(&pixels)?;
                            forwards.push((view.0, view.1, pre, projected));
                            forwards.len() - 1
                        }
                    };
                    let emb = match set.key.output {
                        Output::Projected => &forwards[at].3,
                        Output::PreProjection => &forwards[at].2,
                    }
                    .to_dtype(candle_core::DType::F32)?;
                    file.features.extend(emb.flatten_all()?.to_vec1::<f32>()?);
                    for (row, _) in &good {
                        file.labels.push(set.samples[*row].label as i64);
                        file.index.push(*row as i64);
                    }
                }
            }
            if d.rows.end == range.end {
                for &m in members {
                    if let Some(f) = current[m].take() {
                        on_chunk(m, f)?;
                    }
                }
            }
        }
        Ok(())
    })
}
