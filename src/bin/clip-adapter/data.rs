//! The data subcommands: `datasets`, `fewshot`, `extract`, `merge`. Arguments and printing
//! only; the library does the work.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::data::benchmarks::{TemplateSet, BENCHMARKS};
use clip_adapter::data::check::{check, decode_all, CheckReport};
use clip_adapter::data::{display_name, Benchmark, Dataset, FewShot, Split};
use clip_adapter::features::extract::DEFAULT_CHUNK_BATCHES;
use clip_adapter::features::job::{ExtractObserver, ExtractOutcome};
use clip_adapter::features::{merge::merge, DataSource, Event, ExtractOptions, Shard};
use clip_adapter::runner::{self, ExtractSpec};
use serde_json::json;

use crate::output::Progress;

/// `println!` that returns an error (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

/// CoOp's split of a dataset without one: half of each class for training, a fifth for
/// validation.
pub const TRAIN_FRACTION: f64 = 0.5;
pub const VAL_FRACTION: f64 = 0.2;

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

    /// Fraction of each class for training in such a split (CoOp: 0.5), in (0, 1].
    #[arg(long, default_value_t = TRAIN_FRACTION, value_name = "F", value_parser = train_fraction)]
    pub train_fraction: f64,

    /// Fraction of each class for validation in such a split (CoOp: 0.2), in [0, 1); the rest
    /// is test.
    #[arg(long, default_value_t = VAL_FRACTION, value_name = "F", value_parser = val_fraction)]
    pub val_fraction: f64,

    /// The dataset's name in the cache (`<cache>/<NAME>/`) and in `fit --dataset`. Defaults:
    /// the benchmark's key; the --folder's folder name; the --manifest's file name without
    /// extension; the --split file's name without `split_zhou_`, lower case.
    #[arg(long, value_name = "NAME", value_parser = dataset_name)]
    pub name: Option<String>,
}

/// A value outside what an option allows is an argument error (exit status 2), found by clap
/// before anything runs.
fn fraction(s: &str, allow_zero: bool, allow_one: bool) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    let low_ok = if allow_zero { v >= 0.0 } else { v > 0.0 };
    let high_ok = if allow_one { v <= 1.0 } else { v < 1.0 };
    if low_ok && high_ok {
        Ok(v)
    } else {
        Err(format!(
            "{v} is out of range; expected a fraction {}0, 1{}",
            if allow_zero { "[" } else { "(" },
            if allow_one { "]" } else { ")" }
        ))
    }
}

fn train_fraction(s: &str) -> Result<f64, String> {
    fraction(s, false, true)
}

fn val_fraction(s: &str) -> Result<f64, String> {
    fraction(s, true, false)
}

/// At least 1 (shots, batch sizes, chunk sizes).
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// `min,max` with 0 < min <= max <= 1.
fn crop_scale(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected MIN,MAX, e.g. 0.5,1"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{x}` is not a number"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if !(0.0 < a && a <= b && b <= 1.0) {
        return Err(format!("{a},{b}: expected 0 < MIN <= MAX <= 1"));
    }
    Ok((a, b))
}

/// A name that is one folder in the cache.
fn dataset_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && !s.contains(['/', '\\'])
        && !s.chars().any(char::is_control);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}`: expected a folder name (1-100 bytes, no `/`, `\\`, control characters, \
             `.` or `..`)",
            clip_adapter::data::display_name(s)
        ))
    }
}

impl SourceArgs {
    /// The dataset and its benchmark, if it is one, renamed by --name.
    pub fn load(&self) -> Result<(Dataset, Option<&'static Benchmark>)> {
        let (mut dataset, bench) = self.load_unnamed()?;
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

    fn load_unnamed(&self) -> Result<(Dataset, Option<&'static Benchmark>)> {
        if self.train_fraction + self.val_fraction > 1.0 {
            use clap::CommandFactory;
            crate::args::Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--train-fraction {} and --val-fraction {} add up to more than 1",
                        self.train_fraction, self.val_fraction
                    ),
                )
                .exit();
        }
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
        let source = self.source(false).context(
            "say where the images are: --dataset NAME --root DIR, --folder DIR, --manifest FILE \
             or --split FILE",
        )?;
        Ok((source.load()?, None))
    }

    /// The source as the cache records it (absolute paths, so a printed command runs anywhere).
    pub fn data_source(&self) -> Option<DataSource> {
        self.source(true)
    }

    /// The source as given, or with absolute paths.
    fn source(&self, absolute: bool) -> Option<DataSource> {
        let abs = |p: &PathBuf| match absolute {
            true => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            false => p.clone(),
        };
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
    /// What to check: --root DIR alone checks every benchmark found under CoOp's $DATA;
    /// --dataset NAME --root DIR one of them; --folder, --manifest or --split your own data.
    /// Without any, the 11 benchmarks are listed.
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
fn template_sets() -> impl clap::builder::TypedValueParser<Value = TemplateSet> {
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

pub fn datasets(a: DatasetsArgs, progress: &Progress) -> Result<()> {
    if a.source.given() {
        return check_one(&a, progress);
    }
    let Some(root) = &a.source.root else {
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
    let benches: Vec<&Benchmark> = BENCHMARKS
        .iter()
        .filter(|b| root.join(b.folder).is_dir())
        .collect();
    if benches.is_empty() {
        bail!(
            "no benchmark folder (caltech-101/, dtd/, ...) under {}",
            root.display()
        );
    }
    let mut reports = Vec::new();
    let mut problems = 0;
    for b in benches {
        let mut report = match b.load(root, None) {
            Ok(d) => {
                let mut r = check(&d, Some(b.published));
                if a.decode {
                    decode(&d, &mut r, progress);
                }
                r
            }
            Err(e) => {
                problems += 1;
                eprintln!("{}: {:#}", b.key, anyhow::Error::new(e));
                continue;
            }
        };
        report.dataset = b.key.to_string();
        problems += report.problems();
        if !a.json {
            print_report(&report, a.verbose)?;
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

/// `datasets` with one source: a benchmark, a folder, a manifest or a split file.
fn check_one(a: &DatasetsArgs, progress: &Progress) -> Result<()> {
    let (dataset, bench) = a.source.load()?;
    let mut report = check(&dataset, bench.map(|b| b.published));
    if a.decode {
        decode(&dataset, &mut report, progress);
    }
    if a.json {
        outln!("{}", serde_json::to_string(&[&report])?);
    } else {
        print_report(&report, a.verbose)?;
    }
    let problems = report.problems();
    if problems > 0 {
        bail!("{problems} problem(s) found in {}", dataset.name);
    }
    Ok(())
}

fn decode(dataset: &Dataset, report: &mut CheckReport, progress: &Progress) {
    let total = report.listed() - report.missing();
    let bar = progress.bar("decoding", total);
    decode_all(dataset, report, &|done| bar.set_position(done as u64));
    bar.finish_and_clear();
}

/// Items listed in full with --verbose, else this many and a count.
const FIRST: usize = 5;

/// `a, b, c and 7 more` (everything with `verbose`).
fn first_few<T: std::fmt::Display>(items: &[T], verbose: bool) -> String {
    let shown = if verbose { items.len() } else { FIRST };
    let mut s = items
        .iter()
        .take(shown)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > shown {
        s.push_str(&format!(
            " and {} more (--verbose lists all)",
            items.len() - shown
        ));
    }
    s
}

fn print_report(report: &CheckReport, verbose: bool) -> Result<()> {
    let sizes: Vec<String> = report
        .splits
        .iter()
        .map(|s| format!("{} {}", s.split, s.listed))
        .collect();
    outln!(
        "{}: {} classes, {} in {}",
        report.dataset,
        report.classes,
        sizes.join(", "),
        report.image_root.display()
    );
    if let (Some(min), Some(max)) = (
        report.per_class.iter().map(|c| c.train).min(),
        report.per_class.iter().map(|c| c.train).max(),
    ) {
        outln!("  train images per class: {min} to {max}");
    }
    let empty: Vec<String> = report
        .classes_without_train()
        .iter()
        .map(|c| format!("{} `{}`", c.label, display_name(&c.name)))
        .collect();
    if !empty.is_empty() {
        outln!(
            "  {} class(es) without a train image: {}",
            empty.len(),
            first_few(&empty, verbose)
        );
    }
    for (split, listed, published) in report.count_mismatches() {
        outln!("  {split}: the split lists {listed} images, CoOp's has {published}");
    }
    for s in &report.splits {
        if !s.missing.is_empty() {
            let names: Vec<_> = s.missing.iter().map(|m| display_name(m)).collect();
            outln!(
                "  {}: {} of {} images missing: {}",
                s.split,
                s.missing.len(),
                s.listed,
                first_few(&names, verbose)
            );
        }
    }
    if report.decoded {
        if report.unreadable.is_empty() {
            outln!("  every image on disk decodes");
        } else {
            outln!("  {} image(s) do not decode:", report.unreadable.len());
            let shown = if verbose { usize::MAX } else { FIRST };
            for u in report.unreadable.iter().take(shown) {
                outln!("    {}", u.reason);
            }
            if report.unreadable.len() > shown {
                outln!(
                    "    and {} more (--verbose lists all)",
                    report.unreadable.len() - shown
                );
            }
        }
    }
    Ok(())
}

/// The classes that had fewer images than asked for, on stderr: a count and the first few
/// (all with `verbose`), one line per split.
fn report_short(few: &FewShot, dataset: &Dataset, verbose: bool) {
    for split in [Split::Train, Split::Val] {
        let short: Vec<_> = few.short.iter().filter(|s| s.split == split).collect();
        let Some(first) = short.first() else {
            continue;
        };
        let classes: Vec<String> = short
            .iter()
            .map(|s| {
                format!(
                    "{} `{}` ({})",
                    s.label,
                    display_name(&dataset.classnames[s.label]),
                    s.available
                )
            })
            .collect();
        eprintln!(
            "note: {} of {} classes have fewer than the {} {split} image(s) asked for; all of \
             theirs are used (as CoOp does): {}",
            short.len(),
            dataset.num_classes(),
            first.requested,
            first_few(&classes, verbose)
        );
    }
}

pub fn fewshot(a: FewShotArgs) -> Result<()> {
    let (dataset, _) = a.source.load()?;
    let few = FewShot::coop(&dataset, a.shots, a.seed)?;
    report_short(&few, &dataset, a.verbose);
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
            source: a.source.data_source(),
        },
        hub: HubOptions::from_env(),
    };
    let mut bars = ExtractBars::new(progress, a.verbose);
    let outcome = runner::extract(&spec, &mut bars);
    bars.finish();
    print_extracted(&outcome?, a.json)
}

/// One bar for the class prompts, one for the images of the sets in progress (the sets of the
/// same images, a train set's views, are encoded together, each image decoded once).
struct ExtractBars<'a> {
    progress: &'a Progress,
    verbose: bool,
    download: Box<crate::output::OnDownload<'a>>,
    prompts: Option<indicatif::ProgressBar>,
    images: Option<indicatif::ProgressBar>,
    counts: std::collections::BTreeMap<String, (usize, usize)>,
}

impl<'a> ExtractBars<'a> {
    fn new(progress: &'a Progress, verbose: bool) -> Self {
        ExtractBars {
            progress,
            verbose,
            download: Box::new(progress.download()),
            prompts: None,
            images: None,
            counts: Default::default(),
        }
    }

    fn finish(&mut self) {
        for bar in [self.prompts.take(), self.images.take()]
            .into_iter()
            .flatten()
        {
            bar.finish_and_clear();
        }
    }
}

impl ExtractObserver for ExtractBars<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        (self.download)(file, done, total)
    }

    fn short_classes(&mut self, few: &FewShot, dataset: &Dataset) {
        report_short(few, dataset, self.verbose);
    }

    fn skipping_missing(&mut self, why: &clip_adapter::data::DataError) {
        eprintln!("warning: {why}; they will be skipped");
    }

    fn prompts(&mut self, done: usize, total: usize) {
        let bar = (self.prompts).get_or_insert_with(|| self.progress.bar("class prompts", total));
        bar.set_position(done as u64);
    }

    fn prompts_rebuilt(&mut self, reason: &str) {
        eprintln!("note: {reason}\nencoding the class prompts again");
    }

    fn event(&mut self, e: &Event) {
        if let Some(bar) = self.prompts.take() {
            bar.finish_and_clear();
        }
        match e {
            Event::Start { set, total, done } | Event::Progress { set, total, done } => {
                self.counts.insert(set.clone(), (*done, *total));
                let (d, t) = (self.counts.values()).fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                let b = (self.images).get_or_insert_with(|| self.progress.bar(set, t));
                b.set_length(t as u64);
                b.set_position(d as u64);
            }
            Event::Done { set, .. } => {
                self.counts.remove(set);
                if self.counts.is_empty() {
                    if let Some(b) = self.images.take() {
                        b.finish_and_clear();
                    }
                }
            }
            other => {
                if let Some(note) = other.notice() {
                    eprintln!("note: {note}");
                }
            }
        }
    }
}

fn print_extracted(outcome: &ExtractOutcome, as_json: bool) -> Result<()> {
    for s in outcome.sets.iter().filter(|s| !s.skipped.is_empty()) {
        eprintln!(
            "warning: {}: skipped {} unreadable image(s), e.g. {}",
            s.name,
            s.skipped.len(),
            s.skipped[0]
        );
    }
    if as_json {
        let sets: Vec<_> = (outcome.sets.iter())
            .map(|s| {
                json!({"name": s.name, "path": s.path, "rows": s.rows, "skipped": s.skipped,
                       "reused": s.reused})
            })
            .collect();
        outln!("{}", json!({"text": outcome.text, "sets": sets}));
        return Ok(());
    }
    if let Some(p) = &outcome.text {
        outln!("text\t{}", p.display());
    }
    for s in &outcome.sets {
        let how = if s.reused { "cached" } else { "encoded" };
        outln!(
            "{}\t{}\t{} images {how}, {} skipped",
            s.name,
            s.path.display(),
            s.rows,
            s.skipped.len()
        );
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
