//! The data subcommands: `datasets`, `fewshot`, `extract`, `merge`. Arguments and printing
//! only; the library does the work.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use clip_adapter::data::benchmarks::{TemplateSet, BENCHMARKS};
use clip_adapter::data::check::check;
use clip_adapter::data::folder::{self, SeededSplit};
use clip_adapter::data::{split_file, Benchmark, Dataset, FewShot, Split};
use clip_adapter::features::extract::{extract_sets, Hooks, DEFAULT_CHUNK_BATCHES};
use clip_adapter::features::{
    merge::merge, model_fingerprint, plan, text, DataSource, Event, ExtractOptions, Shard,
};
use clip_adapter::image::augment::{Augment, DEFAULT_RATIO};
use serde_json::json;

use crate::output::Progress;

/// `println!` that returns an error (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

/// Where the images and their split come from (one of --dataset, --folder, --manifest,
/// --split).
#[derive(Args)]
pub struct SourceArgs {
    /// A benchmark (imagenet, caltech101, oxford_pets, stanford_cars, oxford_flowers, food101,
    /// fgvc_aircraft, sun397, dtd, eurosat, ucf101) read from --root in CoOp's layout.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["folder", "manifest"])]
    pub dataset: Option<String>,

    /// CoOp's data folder ($DATA, holding caltech-101/ etc.) or the dataset's own folder.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// A split file `{"train"|"val"|"test": [[impath, label, classname], ...]}` (CoOp's
    /// split_zhou_*.json). With --dataset it replaces the benchmark's; alone, image paths are
    /// relative to --root (default: the split file's folder).
    #[arg(long, value_name = "FILE.json")]
    pub split: Option<PathBuf>,

    /// A folder with one sub-folder of images per class (class name = folder name, `_` read
    /// as a space), optionally inside train/, val/, test/.
    #[arg(long, value_name = "DIR", conflicts_with = "manifest")]
    pub folder: Option<PathBuf>,

    /// A CSV (`path,label[,split]`) or JSON (`[{"path","label","split"}]`) list of images;
    /// paths relative to the manifest's folder.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Seed of the train/val/test split of a --folder or --manifest without one (Python's
    /// random.shuffle per class, as CoOp splits datasets without an official split).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub split_seed: i64,

    /// Fraction of each class for training in such a split (CoOp: 0.5).
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub train_fraction: f64,

    /// Fraction of each class for validation in such a split (CoOp: 0.2); the rest is test.
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub val_fraction: f64,
}

impl SourceArgs {
    pub fn load(&self) -> Result<(Dataset, Option<&'static Benchmark>)> {
        let seeded = SeededSplit {
            seed: self.split_seed,
            train: self.train_fraction,
            val: self.val_fraction,
        };
        if let Some(name) = &self.dataset {
            let bench = Benchmark::find(name)?;
            let root = self
                .root
                .as_deref()
                .context("--dataset needs --root DIR (CoOp's data folder)")?;
            let d = bench
                .load(root, self.split.as_deref())
                .with_context(|| format!("reading {} from {}", bench.name, root.display()))?;
            return Ok((d, Some(bench)));
        }
        if let Some(dir) = &self.folder {
            return Ok((folder::from_class_folders(dir, seeded)?, None));
        }
        if let Some(file) = &self.manifest {
            return Ok((folder::from_manifest(file, seeded)?, None));
        }
        if let Some(path) = &self.split {
            let s = split_file::read(path)?;
            let root = match &self.root {
                Some(r) => r.clone(),
                None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            };
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = name
                .strip_prefix("split_zhou_")
                .unwrap_or(&name)
                .to_lowercase();
            return Ok((
                Dataset {
                    name,
                    classnames: s.classnames,
                    image_root: root,
                    train: s.train,
                    val: s.val,
                    test: s.test,
                    templates: vec![clip_adapter::zero_shot::DEFAULT_TEMPLATE.to_string()],
                },
                None,
            ));
        }
        bail!("say where the images are: --dataset NAME --root DIR, --folder DIR, --manifest FILE or --split FILE")
    }

    /// The source as the cache records it (absolute paths, so a printed command runs anywhere).
    pub fn data_source(&self) -> Option<DataSource> {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let (split_seed, train_fraction, val_fraction) =
            (self.split_seed, self.train_fraction, self.val_fraction);
        if let (Some(dataset), Some(root)) = (&self.dataset, &self.root) {
            let split = self.split.as_ref().map(abs);
            let (dataset, root) = (dataset.clone(), abs(root));
            return Some(DataSource::Benchmark {
                dataset,
                root,
                split,
            });
        }
        if let Some(dir) = &self.folder {
            let dir = abs(dir);
            return Some(DataSource::Folder {
                dir,
                split_seed,
                train_fraction,
                val_fraction,
            });
        }
        if let Some(file) = &self.manifest {
            let file = abs(file);
            return Some(DataSource::Manifest {
                file,
                split_seed,
                train_fraction,
                val_fraction,
            });
        }
        let file = abs(self.split.as_ref()?);
        Some(DataSource::SplitFile {
            file,
            root: self.root.as_ref().map(abs),
        })
    }
}

#[derive(Args)]
pub struct DatasetsArgs {
    /// Check the benchmarks found under this folder (CoOp's $DATA): split sizes against the
    /// published ones, and every listed image on disk.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Only this benchmark.
    #[arg(long, value_name = "NAME", requires = "root")]
    pub dataset: Option<String>,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FewShotArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Images per class to draw for training (validation gets min(K, 4)).
    #[arg(long, value_name = "K")]
    pub shots: usize,

    /// The run seed: Python's random.seed(S), as CoOp's --seed.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: i64,

    /// Print `{"train": [impath, ...], "val": [impath, ...]}`.
    #[arg(long)]
    pub json: bool,
}

/// Prompt template sets.
#[derive(Clone, Copy, ValueEnum)]
pub enum Templates {
    /// The dataset's hand-written template (CLIP-Adapter / CoOp).
    Custom,
    /// Tip-Adapter's (ImageNet: 7 templates).
    Tip,
    /// The 7 selected ImageNet templates.
    Imagenet7,
    /// CLIP's 80 ImageNet templates.
    Imagenet80,
}

#[derive(Args)]
pub struct ExtractArgs {
    /// Model directory or hub id.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,

    #[command(flatten)]
    pub source: SourceArgs,

    /// Encode a K-shot draw of train and val (CoOp's, seeded by --seed) instead of the whole
    /// splits. The test set is always encoded whole.
    #[arg(long, value_name = "K")]
    pub shots: Option<usize>,

    /// Run seed: the few-shot draw and the augmented views.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: i64,

    /// Augmented views of each training image (RandomResizedCrop + flip) besides the plain one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub views: u32,

    /// Area range of the random crops, as `min,max` (CoOp: 0.08,1; Tip-Adapter: 0.5,1).
    #[arg(long, default_value = "0.5,1", value_name = "MIN,MAX")]
    pub crop_scale: String,

    /// Prompt templates for the class-name embeddings.
    #[arg(long, value_enum, default_value = "custom")]
    pub templates: Templates,

    /// Cache folder.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,

    /// Images per forward pass.
    #[arg(long, default_value_t = clip_adapter::encode::DEFAULT_BATCH, value_name = "N")]
    pub batch_size: usize,

    /// Batches per resumable chunk (what an interruption can lose).
    #[arg(long, default_value_t = DEFAULT_CHUNK_BATCHES, value_name = "N")]
    pub chunk_batches: usize,

    /// Encode only part i of n (0-based), e.g. one task of a Slurm job array; join the parts
    /// with `clip-adapter merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,

    /// Leave out unreadable or missing images (counted and listed) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,

    /// Print a JSON summary: `{"text": PATH, "sets": [{"name", "path", "rows", "skipped",
    /// "reused"}]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The cache folder the shards wrote into.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,

    /// Print `[{"path", "shards", "rows"}]`.
    #[arg(long)]
    pub json: bool,
}

pub fn datasets(a: DatasetsArgs) -> Result<()> {
    let Some(root) = &a.root else {
        let rows: Vec<_> = BENCHMARKS
            .iter()
            .map(|b| {
                json!({"key": b.key, "name": b.name, "folder": b.folder, "classes": b.classnames().len(),
                       "train": b.published.0, "val": b.published.1, "test": b.published.2,
                       "templates": b.templates(TemplateSet::Custom)})
            })
            .collect();
        if a.json {
            outln!("{}", serde_json::Value::Array(rows));
        } else {
            outln!(
                "{:<15} {:<16} {:>7} {:>9} {:>7} {:>7}  template",
                "dataset",
                "folder",
                "classes",
                "train",
                "val",
                "test"
            );
            for b in &BENCHMARKS {
                let (t, v, s) = b.published;
                let template = b.templates(TemplateSet::Custom).join(" | ");
                outln!(
                    "{:<15} {:<16} {:>7} {:>9} {:>7} {:>7}  {template}",
                    b.key,
                    b.folder,
                    b.classnames().len(),
                    t,
                    v,
                    s
                );
            }
        }
        return Ok(());
    };
    let benches: Vec<&Benchmark> = match &a.dataset {
        Some(name) => vec![Benchmark::find(name)?],
        None => BENCHMARKS
            .iter()
            .filter(|b| root.join(b.folder).is_dir())
            .collect(),
    };
    if benches.is_empty() {
        bail!(
            "no benchmark folder (caltech-101/, dtd/, ...) under {}",
            root.display()
        );
    }
    let mut reports = Vec::new();
    let mut problems = 0;
    for b in benches {
        let report = match b.load(root, None) {
            Ok(d) => check(&d, Some(b.published)),
            Err(e) => {
                problems += 1;
                eprintln!("{}: {e}", b.key);
                continue;
            }
        };
        problems += report.missing() + report.count_mismatches().len();
        if !a.json {
            let sizes: Vec<String> = report
                .splits
                .iter()
                .map(|s| format!("{} {}", s.split, s.listed))
                .collect();
            outln!(
                "{}: {} classes, {} in {}",
                b.key,
                report.classes,
                sizes.join(", "),
                report.image_root.display()
            );
            for (split, listed, published) in report.count_mismatches() {
                outln!("  {split}: the split lists {listed} images, CoOp's has {published}");
            }
            for s in &report.splits {
                if !s.missing.is_empty() {
                    outln!(
                        "  {}: {} of {} images missing, e.g. {}",
                        s.split,
                        s.missing.len(),
                        s.listed,
                        s.missing
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        reports.push(report);
    }
    if a.json {
        outln!("{}", serde_json::to_string(&reports)?);
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    Ok(())
}

fn report_short(few: &FewShot, dataset: &Dataset) {
    for s in &few.short {
        eprintln!(
            "note: class {} `{}` has {} {} image(s), fewer than the {} asked for; all are used (as CoOp does)",
            s.label, dataset.classnames[s.label], s.available, s.split, s.requested
        );
    }
}

pub fn fewshot(a: FewShotArgs) -> Result<()> {
    let (dataset, _) = a.source.load()?;
    let few = FewShot::coop(&dataset, a.shots, a.seed)?;
    report_short(&few, &dataset);
    let list = |split: Split| -> Vec<String> {
        few.samples(&dataset, split)
            .iter()
            .map(|s| s.impath.clone())
            .collect()
    };
    if a.json {
        outln!(
            "{}",
            json!({"train": list(Split::Train), "val": list(Split::Val)})
        );
    } else {
        for split in [Split::Train, Split::Val] {
            for s in few.samples(&dataset, split) {
                outln!(
                    "{split}\t{}\t{}\t{}",
                    s.impath,
                    s.label,
                    dataset.classnames[s.label]
                );
            }
        }
    }
    Ok(())
}

fn parse_scale(s: &str) -> Result<(f64, f64)> {
    let (a, b) = s
        .split_once(',')
        .with_context(|| format!("--crop-scale `{s}`: expected MIN,MAX"))?;
    let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
    if !(0.0 < a && a <= b && b <= 1.0) {
        bail!("--crop-scale {a},{b}: expected 0 < MIN <= MAX <= 1");
    }
    Ok((a, b))
}

pub fn extract(a: ExtractArgs, progress: &Progress) -> Result<()> {
    let shard: Option<Shard> = a.shard.as_deref().map(str::parse).transpose()?;
    let scale = parse_scale(&a.crop_scale)?;
    let (dataset, bench) = a.source.load()?;
    let few = a
        .shots
        .map(|k| FewShot::coop(&dataset, k, a.seed))
        .transpose()?;
    if let Some(f) = &few {
        report_short(f, &dataset);
    }
    let report = check(&dataset, None);
    if let Err(e) = report.require_complete() {
        if !a.skip_bad {
            return Err(anyhow::Error::new(e)
                .context("rerun with --skip-bad to leave the missing images out"));
        }
        eprintln!("warning: {e}; they will be skipped");
    }
    let files = crate::resolve_model(&a.model, progress)?;
    let fingerprint = model_fingerprint(&files)?;
    let clip = clip_adapter::Clip::load(&files, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model from {}", files.dir.display()))?;
    let preprocess = clip.preprocess();
    let augment = Augment {
        size: preprocess.size as u32,
        scale,
        ratio: DEFAULT_RATIO,
        flip: true,
    };
    let sets = plan(
        &dataset,
        few.as_ref(),
        &fingerprint,
        &preprocess,
        a.views,
        augment,
        a.seed.unsigned_abs(),
    );
    let opts = ExtractOptions {
        cache_dir: a.cache.clone(),
        batch: a.batch_size.max(1),
        chunk_batches: a.chunk_batches.max(1),
        skip_bad: a.skip_bad,
        shard,
        model_name: a.model.clone(),
        source: a.source.data_source(),
    };

    // The class-name prompts are cheap: shard 0 (or an unsharded run) encodes them.
    let text_path = if shard.is_none_or(|s| s.index == 0) {
        let set = match (a.templates, bench) {
            (Templates::Custom, _) => TemplateSet::Custom,
            (Templates::Tip, _) => TemplateSet::TipAdapter,
            (Templates::Imagenet7, _) => TemplateSet::ImageNet7,
            (Templates::Imagenet80, _) => TemplateSet::ImageNet80,
        };
        let templates = match bench {
            Some(b) => b.templates(set),
            None if matches!(set, TemplateSet::Custom | TemplateSet::TipAdapter) => {
                dataset.templates.clone()
            }
            None => Benchmark::find("imagenet")?.templates(set),
        };
        let bar = progress.bar("class prompts", dataset.classnames.len() * templates.len());
        let (path, outcome) = text::extract_text(
            &clip,
            &dataset,
            &fingerprint,
            &a.model,
            &templates,
            &a.cache,
            &mut |d, _| bar.set_position(d as u64),
        )?;
        bar.finish_and_clear();
        if let text::TextOutcome::Rebuilt { reason } = outcome {
            eprintln!("note: {reason}\nencoding the class prompts again");
        }
        Some(path)
    } else {
        None
    };

    // Sets of the same images (a train set's views) are encoded together, each image decoded
    // once; one bar counts the images of the sets in progress.
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut counts: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut finished = Vec::new();
    let mut on_event = |e: &Event| match e {
        Event::Start { set, total, done } | Event::Progress { set, total, done } => {
            counts.insert(set.clone(), (*done, *total));
            let (d, t) = counts.values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
            let b = bar.get_or_insert_with(|| progress.bar(set, t));
            b.set_length(t as u64);
            b.set_position(d as u64);
        }
        Event::Done {
            set,
            path,
            reused,
            skipped,
        } => {
            counts.remove(set);
            if counts.is_empty() {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            finished.push((set.clone(), path.clone(), *reused, skipped.clone()));
        }
        other => {
            if let Some(note) = other.notice() {
                eprintln!("note: {note}");
            }
        }
    };
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &|| false,
    };
    extract_sets(&clip, &sets, &opts, &mut hooks)
        .with_context(|| format!("encoding {}", dataset.name))?;
    let mut summary = Vec::new();
    for (name, path, reused, skipped) in finished {
        if !skipped.is_empty() {
            eprintln!(
                "warning: {name}: skipped {} unreadable image(s), e.g. {}",
                skipped.len(),
                skipped[0]
            );
        }
        let rows = sets
            .iter()
            .find(|s| s.name() == name)
            .map_or(0, |s| s.samples.len());
        summary.push((name, path, reused, skipped, rows));
    }
    summary.sort_by_key(|(name, ..)| sets.iter().position(|s| s.name() == *name));
    if a.json {
        let sets: Vec<_> = summary
            .iter()
            .map(|(name, path, reused, skipped, rows)| {
                json!({"name": name, "path": path, "rows": rows - skipped.len(), "skipped": skipped, "reused": reused})
            })
            .collect();
        outln!("{}", json!({"text": text_path, "sets": sets}));
    } else {
        if let Some(p) = &text_path {
            outln!("text\t{}", p.display());
        }
        for (name, path, reused, skipped, rows) in &summary {
            let how = if *reused { "cached" } else { "encoded" };
            outln!(
                "{name}\t{}\t{} images {how}, {} skipped",
                path.display(),
                rows - skipped.len(),
                skipped.len()
            );
        }
    }
    Ok(())
}

pub fn merge_cmd(a: MergeArgs) -> Result<()> {
    let merged = merge(&a.cache)?;
    if merged.is_empty() {
        bail!(
            "no shard files (*.shard-I-of-N.safetensors) under {}",
            a.cache.display()
        );
    }
    if a.json {
        let rows: Vec<_> = merged
            .iter()
            .map(|m| json!({"path": m.path, "shards": m.shards, "rows": m.rows}))
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
    } else {
        for m in merged {
            outln!(
                "{}\t{} rows from {} shards",
                m.path.display(),
                m.rows,
                m.shards
            );
        }
    }
    Ok(())
}
