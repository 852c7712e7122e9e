//! `fit`, `run` and `predict`: the methods on cached features, and a trained head on new images.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use clip_adapter::encode::{display_paths, encode_image_files};
use clip_adapter::methods::clip_adapter::{AdapterOptions, Branch, Form, RatioMode};
use clip_adapter::methods::from_cache::{load_task, CacheQuery};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::{
    self, eval, gda::GdaOptions, linear_probe::LinearProbeOptions, tip_adapter::TipOptions, Matrix,
    Method,
};

use crate::output::Progress;

/// The method and its options (shared by `fit` and `run`).
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// CLIP-Adapter: which features get an adapter.
    #[arg(long, default_value = "visual", value_parser = ["visual", "text", "both"])]
    pub branch: String,
    /// CLIP-Adapter: `official` (ReLU after both Linear layers, the released code) or `paper`.
    #[arg(long, default_value = "official", value_parser = ["official", "paper"])]
    pub form: String,
    /// CLIP-Adapter: hidden width = feature width / reduction.
    #[arg(long, default_value_t = 4)]
    pub reduction: usize,
    /// Residual ratio α: weight of the adapted image feature (CLIP-Adapter); Tip-Adapter's α
    /// when there is no validation set (default: the authors' per-dataset value).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Text ratio β (CLIP-Adapter), Tip-Adapter's β.
    #[arg(long)]
    pub beta: Option<f32>,
    /// CLIP-Adapter ratios: `fixed`, `learnable` (a scalar per branch) or `hyper` (predicted
    /// by the hyper-network Q(f, W)).
    #[arg(long, default_value = "fixed", value_parser = ["fixed", "learnable", "hyper"])]
    pub ratio: String,
    /// Search the CLIP-Adapter ratio on the validation set over these values (e.g.
    /// 0.1,0.2,0.4,0.6,0.8).
    #[arg(long, value_delimiter = ',')]
    pub search: Vec<f32>,
    /// Learning rate (CLIP-Adapter default 0.002 as CoOp; Tip-Adapter-F 0.001).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Epochs (default: CLIP-Adapter by shots, 50/100/100/200/200; Tip-Adapter-F the authors'
    /// per-dataset value).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size (CLIP-Adapter 32, Tip-Adapter-F 256).
    #[arg(long)]
    pub batch_size: Option<usize>,
}

impl MethodArgs {
    /// The options the user gave, for results rows.
    fn label(&self, method: &str) -> String {
        let mut s = Vec::new();
        if method == "clip-adapter" {
            s.push(format!(
                "branch={} form={} reduction={} ratio={}",
                self.branch, self.form, self.reduction, self.ratio
            ));
            if !self.search.is_empty() {
                s.push(format!("search={:?}", self.search));
            }
        }
        for (k, v) in [("alpha", self.alpha), ("beta", self.beta), ("lr", self.lr)] {
            if let Some(v) = v {
                s.push(format!("{k}={v}"));
            }
        }
        for (k, v) in [("epochs", self.epochs), ("batch", self.batch_size)] {
            if let Some(v) = v {
                s.push(format!("{k}={v}"));
            }
        }
        s.join(" ")
    }

    /// The method with its options for one dataset and seed.
    fn method(&self, name: &str, dataset: &str, seed: u64) -> Result<Method> {
        let tip = || {
            let mut o = TipOptions::for_dataset(dataset);
            o.alpha = self.alpha.unwrap_or(o.alpha);
            o.beta = self.beta.unwrap_or(o.beta);
            o.lr = self.lr.unwrap_or(o.lr);
            o.epochs = self.epochs.unwrap_or(o.epochs);
            o.batch_size = self.batch_size.unwrap_or(o.batch_size);
            o.seed = seed;
            o
        };
        Ok(match name {
            "zero-shot" => Method::ZeroShot,
            "linear-probe" => Method::LinearProbe(LinearProbeOptions::default()),
            "gda" => Method::Gda(GdaOptions::default()),
            "tip-adapter" => Method::TipAdapter(tip()),
            "tip-adapter-f" => Method::TipAdapterF(tip()),
            "clip-adapter" => {
                let d = AdapterOptions::default();
                Method::ClipAdapter(AdapterOptions {
                    branch: self.branch.parse::<Branch>().map_err(anyhow::Error::msg)?,
                    form: self.form.parse::<Form>().map_err(anyhow::Error::msg)?,
                    reduction: self.reduction,
                    alpha: self.alpha.unwrap_or(d.alpha),
                    beta: self.beta.unwrap_or(d.beta),
                    ratio: self
                        .ratio
                        .parse::<RatioMode>()
                        .map_err(anyhow::Error::msg)?,
                    lr: self.lr.unwrap_or(d.lr),
                    // CoOp trains ImageNet 50 epochs at every shot count.
                    epochs: self.epochs.or((dataset == "imagenet").then_some(50)),
                    batch_size: self.batch_size.unwrap_or(d.batch_size),
                    seed,
                    search: self.search.clone(),
                    ..d
                })
            }
            other => bail!(
                "unknown method `{other}`; expected one of: {}",
                METHODS.join(", ")
            ),
        })
    }
}

const METHODS: [&str; 6] = [
    "zero-shot",
    "linear-probe",
    "clip-adapter",
    "tip-adapter",
    "tip-adapter-f",
    "gda",
];

#[derive(Args, Debug)]
pub struct FitArgs {
    /// zero-shot, linear-probe, clip-adapter, tip-adapter, tip-adapter-f or gda.
    #[arg(long)]
    pub method: String,
    /// The dataset folder name in the cache (e.g. eurosat).
    #[arg(long)]
    pub dataset: String,
    #[arg(long)]
    pub shots: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Pick the model's features when the cache holds several (the name given to extract).
    #[arg(long)]
    pub model: Option<String>,
    /// Save the trained head here (safetensors with its metadata) for `predict`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub options: MethodArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One finished run.
struct RunResult {
    val: f32,
    test: f32,
    seconds: f64,
    chosen: Vec<(String, String)>,
    losses: Vec<f32>,
}

fn fit_one(
    method: &Method,
    q: &CacheQuery,
    save: Option<&Path>,
    progress: &Progress,
) -> Result<RunResult> {
    let (task, source) = load_task(q)
        .with_context(|| format!("loading {} {}-shot seed {}", q.dataset, q.shots, q.seed))?;
    let bar = progress.bar(method.name(), 0);
    let start = Instant::now();
    let fitted = methods::fit(method, &task, &mut |p| match p {
        methods::Progress::Epoch {
            epoch,
            epochs,
            loss,
        } => {
            bar.set_length(epochs as u64);
            bar.set_position(epoch as u64 + 1);
            bar.set_message(format!("loss {loss:.4}"));
        }
        methods::Progress::Search { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("training {} on {}", method.name(), q.dataset))?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (val, test) = methods::evaluate(&fitted.head, &task);
    if let Some(path) = save {
        let mut options: BTreeMap<String, String> = fitted.chosen.iter().cloned().collect();
        options.insert("options".into(), method.describe());
        options.insert("dataset".into(), q.dataset.clone());
        options.insert("shots".into(), q.shots.to_string());
        options.insert("seed".into(), q.seed.to_string());
        let info = HeadInfo {
            model: source.model_name.clone(),
            classnames: task.classnames.clone(),
            templates: source.templates.clone(),
            method: method.name().to_string(),
            options: serde_json::to_string(&options)?,
        };
        head::save(path, &fitted.head, &info)?;
    }
    Ok(RunResult {
        val,
        test,
        seconds,
        chosen: fitted.chosen,
        losses: fitted.losses,
    })
}

pub fn fit(a: FitArgs, progress: &Progress) -> Result<()> {
    let method = a.options.method(&a.method, &a.dataset, a.seed)?;
    let q = CacheQuery {
        cache: a.cache.clone(),
        dataset: a.dataset.clone(),
        shots: a.shots.into(),
        seed: a.seed,
        model: a.model.clone(),
        split: None,
        crop_scale: None,
    };
    let r = fit_one(&method, &q, a.save.as_deref(), progress)?;
    let chosen: BTreeMap<_, _> = r.chosen.iter().cloned().collect();
    if a.json {
        let v = serde_json::json!({
            "method": method.name(), "options": method.describe(), "dataset": a.dataset, "shots": a.shots,
            "seed": a.seed, "val_accuracy": r.val, "test_accuracy": r.test, "train_seconds": r.seconds,
            "chosen_on_validation": chosen, "epoch_losses": r.losses,
        });
        println!("{v}");
    } else {
        println!(
            "{} on {} ({}-shot, seed {}): val {:.2} %, test {:.2} % ({:.1} s)",
            method.name(),
            a.dataset,
            a.shots,
            a.seed,
            r.val,
            r.test,
            r.seconds
        );
        if !chosen.is_empty() {
            let c: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("chosen on validation: {}", c.join(", "));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Methods to run (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub methods: Vec<String>,
    /// Dataset folder names in the cache (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub datasets: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub shots: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    #[arg(long)]
    pub model: Option<String>,
    /// Where results.csv and results.md go; rows already in results.csv are not run again.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Published numbers to print beside ours when the backbone is RN50.
    #[arg(long, value_name = "CSV")]
    pub reported: Option<PathBuf>,
    #[command(flatten)]
    pub options: MethodArgs,
}

const HEADER: &str =
    "method,options,dataset,shots,seed,val_accuracy,test_accuracy,train_seconds,chosen";

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Splits one CSV line (quoted fields may hold commas and doubled quotes).
fn csv_split(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

pub fn run(a: RunArgs, progress: &Progress) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let csv = a.out.join("results.csv");
    let mut done = BTreeSet::new();
    if csv.is_file() {
        for line in std::fs::read_to_string(&csv)
            .with_context(|| format!("reading {}", csv.display()))?
            .lines()
            .skip(1)
        {
            let f = csv_split(line);
            if f.len() >= 5 {
                done.insert((
                    f[0].clone(),
                    f[1].clone(),
                    f[2].clone(),
                    f[3].clone(),
                    f[4].clone(),
                ));
            }
        }
    } else {
        std::fs::write(&csv, format!("{HEADER}\n"))
            .with_context(|| format!("writing {}", csv.display()))?;
    }
    let mut model_name = None;
    let total_start = Instant::now();
    for name in &a.methods {
        let label = a.options.label(name);
        for dataset in &a.datasets {
            for &shots in &a.shots {
                for &seed in &a.seeds {
                    let key = (
                        name.clone(),
                        label.clone(),
                        dataset.clone(),
                        shots.to_string(),
                        seed.to_string(),
                    );
                    if done.contains(&key) {
                        continue;
                    }
                    let method = a.options.method(name, dataset, seed)?;
                    let q = CacheQuery {
                        cache: a.cache.clone(),
                        dataset: dataset.clone(),
                        shots: shots.into(),
                        seed,
                        model: a.model.clone(),
                        split: None,
                        crop_scale: None,
                    };
                    if model_name.is_none() {
                        model_name = load_task(&q).ok().map(|(_, s)| s.model_name);
                    }
                    let r = fit_one(&method, &q, None, progress)?;
                    let chosen: Vec<String> =
                        r.chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let row = format!(
                        "{},{},{},{},{},{:.4},{:.4},{:.3},{}\n",
                        name,
                        csv_field(&label),
                        dataset,
                        shots,
                        seed,
                        r.val,
                        r.test,
                        r.seconds,
                        csv_field(&chosen.join(" "))
                    );
                    // Appended row by row, so an interrupted grid resumes where it stopped.
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&csv)
                        .with_context(|| format!("opening {}", csv.display()))?;
                    f.write_all(row.as_bytes())
                        .with_context(|| format!("writing {}", csv.display()))?;
                    eprintln!(
                        "{name} {dataset} {shots}-shot seed {seed}: test {:.2} % ({:.1} s)",
                        r.test, r.seconds
                    );
                }
            }
        }
    }
    let reported = match &a.reported {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    let rn50 = model_name.as_deref().is_some_and(|m| {
        let m = m.to_lowercase();
        (m.contains("rn50") || m.contains("resnet50"))
            && !m.contains("rn50x")
            && !m.contains("resnet50x")
    });
    let table = markdown(
        &std::fs::read_to_string(&csv)?,
        if rn50 { &reported } else { "" },
    );
    clip_adapter::fsutil::write_atomic(&a.out.join("results.md"), table.as_bytes())?;
    print!("{table}");
    eprintln!(
        "grid finished in {:.1} s",
        total_start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Our dataset keys → the names in reported_results_rn50.csv.
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

fn published_method(m: &str) -> Option<&'static str> {
    Some(match m {
        "clip-adapter" => "CLIP-Adapter",
        "tip-adapter" => "Tip-Adapter",
        "tip-adapter-f" => "Tip-Adapter-F",
        "gda" => "GDA",
        "zero-shot" => "ZeroShot_CoOp",
        _ => return None,
    })
}

/// Mean ± std of test accuracy over seeds per method/options × dataset × shots, the average
/// over the datasets, and published numbers in brackets when given.
fn markdown(csv: &str, reported: &str) -> String {
    let mut published: BTreeMap<(String, String, usize), String> = BTreeMap::new();
    for line in reported.lines().skip(1) {
        let f = csv_split(line);
        if f.len() >= 5 {
            if let Ok(s) = f[3].parse() {
                published.insert((f[0].clone(), f[2].clone(), s), f[4].clone());
            }
        }
    }
    // (method, options) → dataset → shots → test accuracies.
    type PerDataset = BTreeMap<String, BTreeMap<usize, Vec<f32>>>;
    let mut groups: BTreeMap<(String, String), PerDataset> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f = csv_split(line);
        if f.len() < 7 {
            continue;
        }
        let (Ok(shots), Ok(test)) = (f[3].parse::<usize>(), f[6].parse::<f32>()) else {
            continue;
        };
        groups
            .entry((f[0].clone(), f[1].clone()))
            .or_default()
            .entry(f[2].clone())
            .or_default()
            .entry(shots)
            .or_default()
            .push(test);
    }
    let mut out = String::from("Test accuracy (%), mean ± std over seeds; hyper-parameters chosen on the validation sets only.");
    if !published.is_empty() {
        out.push_str(" Published RN50 numbers in brackets.");
    }
    out.push('\n');
    for ((method, options), datasets) in &groups {
        let shots: BTreeSet<usize> = datasets.values().flat_map(|s| s.keys().copied()).collect();
        out.push_str(&format!("\n### {method} {options}\n\n| dataset |"));
        shots
            .iter()
            .for_each(|s| out.push_str(&format!(" {s}-shot |")));
        out.push_str("\n|---|");
        shots.iter().for_each(|_| out.push_str("---|"));
        out.push('\n');
        let cell = |m: (f32, f32), paper: Option<&String>| match paper {
            Some(p) => format!(" {:.2} ± {:.2} ({p}) |", m.0, m.1),
            None => format!(" {:.2} ± {:.2} |", m.0, m.1),
        };
        for (dataset, per_shot) in datasets {
            out.push_str(&format!("| {dataset} |"));
            for s in &shots {
                match per_shot.get(s) {
                    Some(v) => {
                        let paper = published_method(method)
                            .zip(published_dataset(dataset))
                            .and_then(|(m, d)| published.get(&(m.to_string(), d.to_string(), *s)));
                        out.push_str(&cell(eval::mean_std(v), paper));
                    }
                    None => out.push_str(" |"),
                }
            }
            out.push('\n');
        }
        // Average over datasets of the per-dataset means, where every dataset has the shot.
        out.push_str(&format!("| average ({} datasets) |", datasets.len()));
        for s in &shots {
            let means: Vec<f32> = datasets
                .values()
                .filter_map(|d| d.get(s))
                .map(|v| eval::mean_std(v).0)
                .collect();
            if means.len() == datasets.len() {
                let paper = (datasets.len() == 11)
                    .then(|| {
                        published_method(method)
                            .and_then(|m| published.get(&(m.to_string(), "AVG11".to_string(), *s)))
                    })
                    .flatten();
                out.push_str(
                    &cell(eval::mean_std(&means), paper)
                        .replace(" ± ", " (sd over datasets ")
                        .replacen(" |", ") |", 1),
                );
            } else {
                out.push_str(" |");
            }
        }
        out.push('\n');
    }
    out
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A head saved by `fit --save`.
    #[arg(long, value_name = "FILE")]
    pub adapter: PathBuf,
    /// The CLIP model (default: the one the head was trained on).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// Images to classify.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn predict(a: PredictArgs, progress: &Progress) -> Result<()> {
    let (head, info) = head::load(&a.adapter)?;
    let spec = a.model.clone().unwrap_or_else(|| info.model.clone());
    let clip = crate::load_model(&spec, progress)?;
    let bar = progress.bar("encoding images", a.images.len());
    let features = encode_image_files(&clip, &a.images, a.batch_size, &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    let (n, d) = features.dims2()?;
    if d != head.dim() {
        bail!(
            "{}: the head expects {}-wide features but model `{spec}` gives {d}",
            a.adapter.display(),
            head.dim()
        );
    }
    let x = Matrix::from_vec(n, d, features.flatten_all()?.to_vec1::<f32>()?)
        .context("feature matrix")?;
    let logits = head.logits(&x);
    let paths = display_paths(&a.images);
    let k = a.top_k.max(1).min(logits.cols);
    let mut results = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let row = logits.row(i);
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
        let preds: Vec<_> = idx[..k]
            .iter()
            .map(|&j| {
                let label = info
                    .classnames
                    .get(j)
                    .cloned()
                    .unwrap_or_else(|| j.to_string());
                (label, j, (row[j] - max).exp() / z, row[j])
            })
            .collect();
        results.push((path.clone(), preds));
    }
    if a.json {
        let v: Vec<_> = results
            .iter()
            .map(|(p, preds)| {
                let preds: Vec<_> = preds.iter().map(|(l, i, pr, lg)| serde_json::json!({"label": l, "index": i, "probability": pr, "logit": lg})).collect();
                serde_json::json!({"path": p, "predictions": preds})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"adapter": a.adapter.display().to_string(), "method": info.method, "labels": info.classnames, "results": v})
        );
    } else {
        for (p, preds) in &results {
            println!("{p}");
            for (l, _, pr, _) in preds {
                println!("  {:6.2} %  {l}", 100.0 * pr);
            }
        }
    }
    Ok(())
}
