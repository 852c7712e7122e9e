//! The data subcommands: `datasets`, `fewshot`, `extract`, `merge`. Arguments and printing
//! only; the library does the work.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::clip::Precision;
use clip_adapter::data::benchmarks::{all_benchmarks, TemplateSet};
use clip_adapter::data::check::{check, decode_all, CheckReport};
use clip_adapter::data::folder::{COOP_TRAIN_FRACTION, COOP_VAL_FRACTION};
use clip_adapter::data::imagenet_variants::missing_classes;
use clip_adapter::data::{Benchmark, Dataset, FewShot, Split};
use clip_adapter::features::extract::DEFAULT_CHUNK_BATCHES;
use clip_adapter::features::job::ExtractOutcome;
use clip_adapter::features::{merge::merge, DataSource, ExtractOptions, Shard};
use clip_adapter::runner::{self, ExtractSpec};
use serde_json::json;

use crate::output::{outln, report_short, Observer, Progress, FIRST, MORE};
use crate::shared::{crop_scale, dataset_name, fraction, positive};

/// Where the images and their split come from (one of --dataset, --folder, --manifest,
/// --split).
#[derive(Args)]
pub struct SourceArgs {
    /// A benchmark (imagenet, caltech101, oxford_pets, stanford_cars, oxford_flowers, food101,
    /// fgvc_aircraft, sun397, dtd, eurosat, ucf101) read from --root in CoOp's layout, or a
    /// test-only ImageNet variant (imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r).
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

    /// Fraction of each class for training in such a split (CoOp: 0.5), in (0, 1].
    #[arg(long, default_value_t = COOP_TRAIN_FRACTION, value_name = "F", value_parser = |s: &str| fraction(s, false, true))]
    pub train_fraction: f64,

    /// Fraction of each class for validation in such a split (CoOp: 0.2), in [0, 1); the rest
    /// is test.
    #[arg(long, default_value_t = COOP_VAL_FRACTION, value_name = "F", value_parser = |s: &str| fraction(s, true, false))]
    pub val_fraction: f64,

    /// The dataset's name in the cache (`<cache>/<NAME>/`) and in `fit --dataset`. Defaults:
    /// the benchmark's key; the --folder's folder name; the --manifest's file name without
    /// extension; the --split file's name without `split_zhou_`, lower case.
    #[arg(long, value_name = "NAME", value_parser = dataset_name)]
    pub name: Option<String>,
}

impl SourceArgs {
    /// The dataset and its benchmark, if it is one, renamed by --name.
    pub fn load(&self) -> Result<(Dataset, Option<&'static Benchmark>)> {
        if self.train_fraction + self.val_fraction > 1.0 {
            let why = format!(
                "--train-fraction {} and --val-fraction {} add up to more than 1",
                self.train_fraction, self.val_fraction
            );
            clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{why}\n")).exit();
        }
        if self.dataset.is_some() && self.root.is_none() {
            bail!("--dataset needs --root DIR (CoOp's data folder)");
        }
        let source = self.source(false).context(
            "say where the images are: --dataset NAME --root DIR, --folder DIR, --manifest FILE \
             or --split FILE",
        )?;
        let bench = source.benchmark()?;
        let mut dataset = (source.load()).with_context(|| match (bench, &self.root) {
            (Some(b), Some(root)) => format!("reading {} from {}", b.name, root.display()),
            _ => "reading the dataset".into(),
        })?;
        if let Some(name) = &self.name {
            dataset.name = name.clone();
        }
        Ok((dataset, bench))
    }

    /// Whether any of --dataset, --folder, --manifest, --split was given.
    pub fn given(&self) -> bool {
        self.dataset.is_some()
            || self.folder.is_some()
            || self.manifest.is_some()
            || self.split.is_some()
    }

    /// The source as given, or with absolute paths (as the cache records it, so that a printed
    /// command runs anywhere).
    pub fn source(&self, absolute: bool) -> Option<DataSource> {
        let abs = |p: &PathBuf| match absolute {
            true => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            false => p.clone(),
        };
        let (split_seed, train_fraction, val_fraction) =
            (self.split_seed, self.train_fraction, self.val_fraction);
        Some(
            match (&self.dataset, &self.root, &self.folder, &self.manifest) {
                (Some(dataset), Some(root), ..) => {
                    let (dataset, root, split) =
                        (dataset.clone(), abs(root), self.split.as_ref().map(abs));
                    DataSource::Benchmark {
                        dataset,
                        root,
                        split,
                    }
                }
                (_, _, Some(dir), _) => {
                    let dir = abs(dir);
                    DataSource::Folder {
                        dir,
                        split_seed,
                        train_fraction,
                        val_fraction,
                    }
                }
                (_, _, _, Some(file)) => {
                    let file = abs(file);
                    DataSource::Manifest {
                        file,
                        split_seed,
                        train_fraction,
                        val_fraction,
                    }
                }
                _ => DataSource::SplitFile {
                    file: abs(self.split.as_ref()?),
                    root: self.root.as_ref().map(abs),
                },
            },
        )
    }
}

#[derive(Args)]
pub struct DatasetsArgs {
    /// What to check: --root DIR alone checks every benchmark found under CoOp's $DATA;
    /// --dataset NAME --root DIR one of them; --folder, --manifest or --split your own data.
    /// Without any, the 11 benchmarks and the 4 ImageNet variants are listed.
    #[command(flatten)]
    pub source: SourceArgs,

    /// Also decode every image (in parallel), so that corrupt or truncated files are found
    /// before `extract` spends hours encoding.
    #[arg(long)]
    pub decode: bool,

    /// List every class with too few images and every missing or unreadable file, not only
    /// the first few.
    #[arg(long, short)]
    pub verbose: bool,

    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct FewShotArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Images per class to draw for training (validation gets min(K, 4)); at least 1.
    #[arg(long, value_name = "K", value_parser = positive)]
    pub shots: usize,

    /// Name every class that has fewer than K images, not only the first few.
    #[arg(long, short)]
    pub verbose: bool,

    /// The run seed: Python's random.seed(S), as CoOp's --seed.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: i64,

    /// Print `{"train": [impath, ...], "val": [impath, ...]}`.
    #[arg(long)]
    pub json: bool,
}

/// The prompt template sets, described as `--help` shows them.
fn template_sets() -> impl TypedValueParser<Value = TemplateSet> {
    let help = [
        "The dataset's hand-written template (CLIP-Adapter / CoOp)",
        "Tip-Adapter's (ImageNet: 7 templates)",
        "The 7 selected ImageNet templates",
        "CLIP's 80 ImageNet templates",
    ];
    let values =
        (TemplateSet::ALL.iter().zip(help)).map(|((_, n), h)| PossibleValue::new(n).help(h));
    PossibleValuesParser::new(values).try_map(|s| s.parse::<TemplateSet>())
}

#[derive(Args)]
pub struct ExtractArgs {
    /// Model directory, OpenAI checkpoint file (RN50.pt), openai:NAME or hub id.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,

    #[command(flatten)]
    pub source: SourceArgs,

    /// Encode a K-shot draw of train and val (CoOp's, seeded by --seed) instead of the whole
    /// splits. The test set is always encoded whole.
    #[arg(long, value_name = "K", value_parser = positive)]
    pub shots: Option<usize>,

    /// Run seed: the few-shot draw and the augmented views.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: i64,

    /// Augmented views of each training image (RandomResizedCrop + flip) besides the plain one
    /// [default: 10 with --shots (Tip-Adapter's 10 augmented passes; the methods that augment
    /// train on them), 0 for the whole train split].
    #[arg(long, value_name = "N")]
    pub views: Option<u32>,

    /// Also keep the image tower's output before its last projection, for every set (files
    /// `<part>.pre-<view>.<key>.safetensors`), and the projection itself
    /// (`projection.<key>.safetensors`): what ProLIP trains on. One forward pass gives both.
    #[arg(long)]
    pub pre_projection: bool,

    /// Area range of the random crops, as `min,max` (CoOp: 0.08,1; Tip-Adapter: 0.5,1).
    #[arg(long, default_value = "0.5,1", value_name = "MIN,MAX", value_parser = crop_scale)]
    pub crop_scale: (f64, f64),

    /// Prompt templates for the class-name embeddings.
    #[arg(long, value_parser = template_sets(), default_value = "custom")]
    pub templates: TemplateSet,

    /// Cache folder.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,

    /// Images per forward pass (at least 1).
    #[arg(long, default_value_t = clip_adapter::encode::DEFAULT_BATCH, value_name = "N", value_parser = positive)]
    pub batch_size: usize,

    /// Arithmetic of the towers' linear layers and convolutions: f32, or bf16 (bfloat16 operands,
    /// f32 sums, as PyTorch's bfloat16 autocast; faster on CPUs with AVX512-BF16, features
    /// 1e-3 to 1e-2 off the f32 ones, cached under their own key; CoOp and CLIP-LoRA refuse them).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    pub precision: Precision,

    /// Batches per resumable chunk (what an interruption can lose; at least 1).
    #[arg(long, default_value_t = DEFAULT_CHUNK_BATCHES, value_name = "N", value_parser = positive)]
    pub chunk_batches: usize,

    /// Encode only part i of n (0-based, 0 <= i < n), e.g. one task of a Slurm job array; join
    /// the parts with `clip-adapter merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Name every class that has fewer than K images, not only the first few.
    #[arg(long, short)]
    pub verbose: bool,

    /// Leave out unreadable or missing images (counted and listed) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,

    /// Print a JSON summary: `{"text": PATH, "sets": [{"name", "path", "rows", "skipped",
    /// "reused", "encoded", "seconds"}]}` (`encoded` images decoded and encoded by this run in
    /// `seconds` of wall time).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The cache folder the shards wrote into.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,

    /// Join the results of `run --shard I/N --out DIR` instead: DIR's results.shard-I-of-N.csv
    /// files into DIR/results.csv, in the order one run writes, refusing unfinished shards and
    /// rows that disagree; then results.md and the folder's report, as `run` writes them.
    #[arg(long, value_name = "DIR", conflicts_with = "cache")]
    pub results: Option<PathBuf>,

    /// With --results: published numbers (CSV) to print beside ours, as `run --reported`.
    #[arg(long, value_name = "CSV", requires = "results")]
    pub reported: Option<PathBuf>,

    /// Fold a CLIP-LoRA head's updates (`fit --method clip-lora --save FILE`) into the model
    /// it was trained on instead, written to --out in the model's own layout: a model that
    /// `classify`, `embed`, `extract` and every method load like any other.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cache", "results"], requires = "out")]
    pub lora: Option<PathBuf>,

    /// With --lora: a new folder for the merged model.
    #[arg(long, value_name = "DIR", requires = "lora")]
    pub out: Option<PathBuf>,

    /// With --lora: the model [default: the one the head records].
    #[arg(long, value_name = "MODEL", requires = "lora")]
    pub model: Option<String>,

    /// Print `[{"path", "shards", "rows"}]` (with --lora: `{"model", "merged"}`).
    #[arg(long)]
    pub json: bool,
}

pub fn datasets(a: DatasetsArgs, progress: &Progress) -> Result<()> {
    if a.source.given() {
        let (dataset, bench) = a.source.load()?;
        let mut report = check_one(&dataset, bench, &a, progress);
        if let (Some(b), Some(root), None) = (bench, &a.source.root, &a.source.split) {
            report.missing_classes = missing_classes(b, root)?;
        }
        return print_checks(vec![report], &a, 0);
    }
    let Some(root) = &a.source.root else {
        return list_benchmarks(a.json);
    };
    let benches: Vec<&Benchmark> = all_benchmarks()
        .filter(|b| root.join(b.folder).is_dir())
        .collect();
    if benches.is_empty() {
        bail!(
            "no benchmark folder (caltech-101/, dtd/, ...) under {}",
            root.display()
        );
    }
    let (mut reports, mut unreadable) = (Vec::new(), 0);
    for b in benches {
        match b.load(root, None) {
            Ok(d) => {
                let mut report = check_one(&d, Some(b), &a, progress);
                report.dataset = b.key.to_string();
                report.missing_classes = missing_classes(b, root)?;
                reports.push(report);
            }
            Err(e) => {
                unreadable += 1;
                eprintln!("{}: {:#}", b.key, anyhow::Error::new(e));
            }
        }
    }
    print_checks(reports, &a, unreadable)
}

fn check_one(
    dataset: &Dataset,
    bench: Option<&Benchmark>,
    a: &DatasetsArgs,
    progress: &Progress,
) -> CheckReport {
    let mut report = check(dataset, bench.map(|b| b.published));
    if a.decode {
        let bar = progress.bar("decoding", report.listed() - report.missing());
        decode_all(dataset, &mut report, &|done| bar.set_position(done as u64));
        bar.finish_and_clear();
    }
    report
}

fn print_checks(reports: Vec<CheckReport>, a: &DatasetsArgs, unreadable: usize) -> Result<()> {
    if a.json {
        outln!("{}", serde_json::to_string(&reports)?);
    }
    let shown = if a.verbose { usize::MAX } else { FIRST };
    for r in reports.iter().filter(|_| !a.json) {
        outln!("{}", r.summary(shown, MORE));
    }
    let problems = unreadable + reports.iter().map(CheckReport::problems).sum::<usize>();
    match (problems, reports.as_slice()) {
        (0, _) => Ok(()),
        (n, [one]) if a.source.given() => bail!("{n} problem(s) found in {}", one.dataset),
        (n, _) => bail!("{n} problem(s) found"),
    }
}

fn list_benchmarks(as_json: bool) -> Result<()> {
    if as_json {
        let rows: Vec<_> = all_benchmarks()
            .map(|b| {
                let (train, val, test) = b.published;
                json!({"key": b.key, "name": b.name, "folder": b.folder, "classes": b.classnames().len(),
                       "train": train, "val": val, "test": test, "test_only": b.test_only(),
                       "templates": b.templates(TemplateSet::Custom)})
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let head = ("dataset", "folder", "classes", "train", "val", "test");
    outln!(
        "{:<15} {:<16} {:>7} {:>9} {:>7} {:>7}  template",
        head.0,
        head.1,
        head.2,
        head.3,
        head.4,
        head.5
    );
    for b in all_benchmarks() {
        let ((t, v, s), classes) = (b.published, b.classnames().len());
        let template = b.templates(TemplateSet::Custom).join(" | ");
        outln!(
            "{:<15} {:<16} {classes:>7} {t:>9} {v:>7} {s:>7}  {template}",
            b.key,
            b.folder
        );
    }
    outln!("(train and val 0: a test set only, a target of `run --protocol domain`)");
    Ok(())
}

pub fn fewshot(a: FewShotArgs) -> Result<()> {
    let (dataset, _) = a.source.load()?;
    let few = FewShot::coop(&dataset, a.shots, a.seed)?;
    report_short(&few, &dataset, a.verbose);
    let paths = |split| -> Vec<&str> {
        few.samples(&dataset, split)
            .iter()
            .map(|s| s.impath.as_str())
            .collect()
    };
    if a.json {
        outln!(
            "{}",
            json!({"train": paths(Split::Train), "val": paths(Split::Val)})
        );
        return Ok(());
    }
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
    Ok(())
}

pub fn extract(a: ExtractArgs, progress: &Progress) -> Result<()> {
    let (dataset, benchmark) = a.source.load()?;
    let spec = ExtractSpec {
        dataset,
        benchmark,
        shots: a.shots,
        seed: a.seed,
        templates: a.templates,
        views: a.views,
        crop_scale: a.crop_scale,
        pre_projection: a.pre_projection,
        options: ExtractOptions {
            cache_dir: a.cache.clone(),
            batch: a.batch_size,
            chunk_batches: a.chunk_batches,
            skip_bad: a.skip_bad,
            shard: a.shard,
            model_name: a.model.clone(),
            source: a.source.source(true),
            precision: a.precision,
        },
        hub: HubOptions::from_env(),
    };
    crate::warn_precision(a.precision);
    let mut observer = Observer::new(progress).verbose(a.verbose);
    let outcome = runner::extract(&spec, &mut observer);
    observer.finish();
    print_extracted(&outcome?, a.json)
}

fn print_extracted(outcome: &ExtractOutcome, as_json: bool) -> Result<()> {
    for s in outcome.sets.iter().filter(|s| !s.skipped.is_empty()) {
        let (n, first) = (s.skipped.len(), &s.skipped[0]);
        eprintln!(
            "warning: {}: skipped {n} unreadable image(s), e.g. {first}",
            s.name
        );
    }
    if as_json {
        outln!("{}", serde_json::to_string(outcome)?);
        return Ok(());
    }
    if let Some(p) = &outcome.text {
        outln!("text\t{}", p.display());
    }
    for s in &outcome.sets {
        let how = if s.reused { "cached" } else { "encoded" };
        let speed = match s.encoded {
            0 => String::new(),
            n => format!(
                ", {n} in {:.1} s ({:.1} images/s)",
                s.seconds,
                n as f64 / s.seconds.max(1e-9)
            ),
        };
        outln!(
            "{}\t{}\t{} images {how}, {} skipped{speed}",
            s.name,
            s.path.display(),
            s.rows,
            s.skipped.len()
        );
    }
    Ok(())
}

pub fn merge_cmd(a: MergeArgs, progress: &Progress) -> Result<()> {
    if let Some(dir) = a.results {
        return merge_results(dir, a.reported, a.json, progress);
    }
    if let (Some(head), Some(out)) = (a.lora, a.out) {
        let spec = clip_adapter::runner::MergeLoraSpec {
            head,
            model: a.model,
            out,
            hub: clip_adapter::clip::hub::HubOptions::from_env(),
        };
        let mut observer = crate::output::Observer::new(progress);
        let merged = clip_adapter::runner::merge_lora(&spec, &mut observer);
        observer.finish();
        let merged = merged?;
        match a.json {
            true => outln!("{}", serde_json::to_string(&merged)?),
            false => outln!(
                "{}\t{} weight matrices merged",
                merged.model.display(),
                merged.merged
            ),
        }
        return Ok(());
    }
    let merged = merge(&a.cache)?;
    if merged.is_empty() {
        bail!(
            "no shard files (*.shard-I-of-N.safetensors) under {}",
            a.cache.display()
        );
    }
    if a.json {
        outln!("{}", serde_json::to_string(&merged)?);
    }
    for m in merged.iter().filter(|_| !a.json) {
        outln!(
            "{}\t{} rows from {} shards",
            m.path.display(),
            m.rows,
            m.shards
        );
    }
    Ok(())
}

/// `merge --results DIR`: prints the table, or `{"results_csv", "rows", "added", "shards",
/// "table", "report", "figures"}` with --json.
fn merge_results(
    dir: PathBuf,
    reported: Option<PathBuf>,
    json: bool,
    progress: &Progress,
) -> Result<()> {
    let spec = clip_adapter::runner::JoinSpec {
        dir,
        reported,
        hub: clip_adapter::clip::hub::HubOptions::from_env(),
    };
    let mut observer = crate::output::Observer::new(progress);
    let outcome = clip_adapter::runner::join_shards(&spec, &mut observer);
    observer.finish();
    let o = outcome?;
    if json {
        let doc = serde_json::json!({"results_csv": o.results_csv, "rows": o.rows.len(),
            "added": o.added, "shards": o.shards, "table": o.table_path,
            "report": o.report.report, "figures": o.report.figures});
        outln!("{doc}");
        return Ok(());
    }
    outln!("{}", o.table.trim_end());
    crate::output::print_written(&o.report);
    let (added, shards, csv) = (o.added, o.shards, o.results_csv.display());
    eprintln!("joined {shards} shards: {added} rows added to {csv}");
    Ok(())
}
