//! Datasets (benchmarks, folders, manifests, split files), CoOp's few-shot draw, and `extract`
//! into the feature cache.

use std::path::{Path, PathBuf};

use clip_adapter::clip::hub::HubOptions;
use clip_adapter::clip::Precision;
use clip_adapter::data::benchmarks::{TemplateSet, BENCHMARKS};
use clip_adapter::data::{Benchmark, Dataset, FewShot, Sample, Split};
use clip_adapter::encode::DEFAULT_BATCH;
use clip_adapter::features::extract::DEFAULT_CHUNK_BATCHES;
use clip_adapter::features::import::{self, ArraySource, ImportSpec, PartSpec, TextSpec};
use clip_adapter::features::task::Shots;
use clip_adapter::features::{DataSource, ExtractOptions, Shard};
use clip_adapter::runner::{self, ExtractSpec};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::errors::{input, Kind, OrRaise};
use crate::progress::Progress;

/// CoOp's split of a dataset without one: half of each class for training, a fifth for
/// validation (the command line's defaults).
const TRAIN_FRACTION: f64 = 0.5;
const VAL_FRACTION: f64 = 0.2;

/// A dataset: its images with labels and class names, in train, val and test splits.
///
/// Made by `Dataset.benchmark`, `Dataset.folder`, `Dataset.manifest` or `Dataset.split_file`
/// (the `--dataset`, `--folder`, `--manifest` and `--split` of the command line).
#[pyclass(name = "Dataset", module = "clip_adapter", frozen)]
pub struct PyDataset {
    pub dataset: Dataset,
    pub benchmark: Option<&'static Benchmark>,
    /// Where it came from, with absolute paths (what the cache records).
    pub source: DataSource,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn check_fractions(train: f64, val: f64) -> PyResult<()> {
    if !(train > 0.0 && train <= 1.0) {
        return Err(input(format!(
            "train_fraction = {train}: expected a number in (0, 1]"
        )));
    }
    if !(0.0..1.0).contains(&val) {
        return Err(input(format!(
            "val_fraction = {val}: expected a number in [0, 1)"
        )));
    }
    if train + val > 1.0 {
        return Err(input(format!(
            "train_fraction {train} and val_fraction {val} add up to more than 1"
        )));
    }
    Ok(())
}

impl PyDataset {
    fn from_source(
        py: Python<'_>,
        source: DataSource,
        benchmark: Option<&'static Benchmark>,
        name: Option<String>,
    ) -> PyResult<Self> {
        let mut dataset = py.detach(|| source.load()).or_raise(Kind::Input)?;
        if let Some(name) = name {
            let ok = !name.is_empty()
                && name.len() <= 100
                && name != "."
                && name != ".."
                && !name.contains(['/', '\\'])
                && !name.chars().any(char::is_control);
            if !ok {
                return Err(input(format!(
                    "name = {name:?}: expected a folder name (1-100 bytes, no `/`, `\\`, control \
                     characters, `.` or `..`)"
                )));
            }
            dataset.name = name;
        }
        Ok(PyDataset {
            dataset,
            benchmark,
            source,
        })
    }

    fn samples<'py>(&self, py: Python<'py>, samples: &[Sample]) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<(PathBuf, usize)> = samples
            .iter()
            .map(|s| (self.dataset.path(s), s.label))
            .collect();
        PyList::new(py, items)
    }
}

#[pymethods]
impl PyDataset {
    /// One of the 11 benchmarks, read from CoOp's data folder `root` (with its own split, or
    /// the split file `split`).
    #[staticmethod]
    #[pyo3(signature = (name, root, *, split = None))]
    fn benchmark(
        py: Python<'_>,
        name: &str,
        root: PathBuf,
        split: Option<PathBuf>,
    ) -> PyResult<Self> {
        let bench = Benchmark::find(name).or_raise(Kind::Input)?;
        let source = DataSource::Benchmark {
            dataset: name.to_string(),
            root: absolute(&root),
            split: split.as_deref().map(absolute),
        };
        Self::from_source(py, source, Some(bench), None)
    }

    /// A folder with one sub-folder of images per class (optionally inside train/, val/,
    /// test/); without those, a seeded split as CoOp makes one.
    #[staticmethod]
    #[pyo3(signature = (path, *, split_seed = 1, train_fraction = TRAIN_FRACTION, val_fraction = VAL_FRACTION, name = None))]
    fn folder(
        py: Python<'_>,
        path: PathBuf,
        split_seed: i64,
        train_fraction: f64,
        val_fraction: f64,
        name: Option<String>,
    ) -> PyResult<Self> {
        check_fractions(train_fraction, val_fraction)?;
        let source = DataSource::Folder {
            dir: absolute(&path),
            split_seed,
            train_fraction,
            val_fraction,
        };
        Self::from_source(py, source, None, name)
    }

    /// A CSV (`path,label[,split]`) or JSON (`[{"path","label","split"}]`) list of images,
    /// paths relative to the manifest's folder.
    #[staticmethod]
    #[pyo3(signature = (path, *, split_seed = 1, train_fraction = TRAIN_FRACTION, val_fraction = VAL_FRACTION, name = None))]
    fn manifest(
        py: Python<'_>,
        path: PathBuf,
        split_seed: i64,
        train_fraction: f64,
        val_fraction: f64,
        name: Option<String>,
    ) -> PyResult<Self> {
        check_fractions(train_fraction, val_fraction)?;
        let source = DataSource::Manifest {
            file: absolute(&path),
            split_seed,
            train_fraction,
            val_fraction,
        };
        Self::from_source(py, source, None, name)
    }

    /// A split file (CoOp's `split_zhou_*.json`), image paths relative to `root` (default:
    /// the file's folder).
    #[staticmethod]
    #[pyo3(signature = (path, *, root = None, name = None))]
    fn split_file(
        py: Python<'_>,
        path: PathBuf,
        root: Option<PathBuf>,
        name: Option<String>,
    ) -> PyResult<Self> {
        let source = DataSource::SplitFile {
            file: absolute(&path),
            root: root.as_deref().map(absolute),
        };
        Self::from_source(py, source, None, name)
    }

    /// Its name in the cache (`<cache>/<name>/`) and in `fit_cached`.
    #[getter]
    fn name(&self) -> &str {
        &self.dataset.name
    }

    #[getter]
    fn classnames(&self) -> Vec<String> {
        self.dataset.classnames.clone()
    }

    /// Its prompt templates (`{}` is the class name).
    #[getter]
    fn templates(&self) -> Vec<String> {
        self.dataset.templates.clone()
    }

    /// `[(path, label), ...]` of the training split.
    #[getter]
    fn train<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.samples(py, &self.dataset.train)
    }

    #[getter]
    fn val<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.samples(py, &self.dataset.val)
    }

    #[getter]
    fn test<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.samples(py, &self.dataset.test)
    }

    /// CoOp's K-shot draw for a seed (Python's `random`, bit for bit): `{"train": [(path,
    /// label), ...], "val": [...]}`, K per class for training and min(K, 4) for validation
    /// (`clip-adapter fewshot`).
    #[pyo3(signature = (shots, seed = 1))]
    fn few_shot<'py>(
        &self,
        py: Python<'py>,
        shots: usize,
        seed: i64,
    ) -> PyResult<Bound<'py, PyDict>> {
        if shots == 0 {
            return Err(input("shots = 0: expected at least 1 image per class"));
        }
        let few = FewShot::coop(&self.dataset, shots, seed).or_raise(Kind::Input)?;
        let pick = |idx: &[usize], from: &[Sample]| -> Vec<Sample> {
            idx.iter().filter_map(|&i| from.get(i).cloned()).collect()
        };
        let d = PyDict::new(py);
        d.set_item(
            "train",
            self.samples(py, &pick(&few.train, &self.dataset.train))?,
        )?;
        d.set_item("val", self.samples(py, &pick(&few.val, &self.dataset.val))?)?;
        Ok(d)
    }

    /// Checks the dataset against the disk (`clip-adapter datasets`): images per split and
    /// class, listed files that are missing, classes without a training image, split sizes
    /// that differ from the published ones (benchmarks); with `decode=True` also decodes every
    /// image on disk (in parallel, progress `("decoding images", done, total)`), so that
    /// corrupt files are found before a long `extract`. Returns a `CheckReport`; its
    /// `problems` is 0 when the dataset is ready.
    #[pyo3(signature = (*, decode = false, progress = None))]
    fn check(
        &self,
        py: Python<'_>,
        decode: bool,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<crate::check::PyCheckReport> {
        crate::check::check_dataset(py, self, decode, progress)
    }

    fn __len__(&self) -> usize {
        self.dataset.train.len() + self.dataset.val.len() + self.dataset.test.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Dataset({:?}, classes={}, train={}, val={}, test={})",
            self.dataset.name,
            self.dataset.classnames.len(),
            self.dataset.train.len(),
            self.dataset.val.len(),
            self.dataset.test.len()
        )
    }
}

/// The 11 benchmarks, by the names the cache and `Dataset.benchmark` use (`eurosat`).
#[pyfunction]
pub fn benchmarks() -> Vec<&'static str> {
    BENCHMARKS.iter().map(|b| b.key).collect()
}

/// Encodes a dataset into the feature cache (`clip-adapter extract`): the few-shot draw of
/// train and val (`shots`, `seed`; the whole splits without `shots`), the test split, the
/// augmented views and the class prompts. Resumes an interrupted run; files already there are
/// reused. Returns `{"text": path, "sets": [{"name", "path", "rows", "skipped", "reused",
/// "encoded", "seconds"}]}`: `encoded` images decoded and encoded by this call in `seconds` of
/// wall time.
#[pyfunction]
#[pyo3(signature = (
    model, dataset, *, shots = None, seed = 1, views = None, crop_scale = (0.5, 1.0),
    templates = "custom", pre_projection = false, cache = PathBuf::from("clip-adapter-cache"),
    batch_size = DEFAULT_BATCH, chunk_batches = DEFAULT_CHUNK_BATCHES, shard = None,
    skip_bad = false, precision = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn extract<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    dataset: &Bound<'py, PyDataset>,
    shots: Option<usize>,
    seed: i64,
    views: Option<u32>,
    crop_scale: (f64, f64),
    templates: &str,
    pre_projection: bool,
    cache: PathBuf,
    batch_size: usize,
    chunk_batches: usize,
    shard: Option<&str>,
    skip_bad: bool,
    precision: Option<&str>,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    // A loaded Clip brings its precision unless one is given.
    let (model_name, model_precision) = match model.cast::<crate::model::PyClip>() {
        Ok(clip) => (clip.get().spec.clone(), clip.get().clip.precision()),
        Err(_) => (
            model.extract::<String>().map_err(|_| {
                input("model must be a model name (directory, file, hub id) or a Clip")
            })?,
            Precision::F32,
        ),
    };
    let precision = match precision {
        Some(p) => crate::model::parse_precision(p)?,
        None => model_precision,
    };
    if shots == Some(0) {
        return Err(input("shots = 0: expected at least 1 image per class"));
    }
    if batch_size == 0 || chunk_batches == 0 {
        return Err(input("batch_size and chunk_batches must be at least 1"));
    }
    let (lo, hi) = crop_scale;
    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
        return Err(input(format!(
            "crop_scale = ({lo}, {hi}): expected 0 < min <= max <= 1"
        )));
    }
    let templates = (templates.parse::<TemplateSet>())
        .map_err(|e| input(format!("templates = {templates:?}: {e}")))?;
    let shard = shard
        .map(|s| {
            s.parse::<Shard>()
                .map_err(|e| input(format!("shard = {s:?}: {e}")))
        })
        .transpose()?;
    let d = dataset.get();
    let spec = ExtractSpec {
        dataset: d.dataset.clone(),
        benchmark: d.benchmark,
        shots,
        seed,
        templates,
        views,
        crop_scale,
        pre_projection,
        options: ExtractOptions {
            cache_dir: cache,
            batch: batch_size,
            chunk_batches,
            skip_bad,
            shard,
            model_name,
            source: Some(d.source.clone()),
            precision,
        },
        hub: HubOptions::from_env(),
    };
    let mut p = Progress::new(py, progress)?;
    if let Some(notice) = precision.notice() {
        p.warn(&notice);
    }
    let outcome = py.detach(|| runner::extract(&spec, &mut p));
    p.finish(py)?;
    let outcome = outcome.or_raise(Kind::Model)?;
    let out = PyDict::new(py);
    out.set_item("text", outcome.text)?;
    let sets = PyList::empty(py);
    for s in &outcome.sets {
        let set = PyDict::new(py);
        set.set_item("name", &s.name)?;
        set.set_item("path", &s.path)?;
        set.set_item("rows", s.rows)?;
        set.set_item("skipped", &s.skipped)?;
        set.set_item("reused", s.reused)?;
        set.set_item("encoded", s.encoded)?;
        set.set_item("seconds", s.seconds)?;
        sets.append(set)?;
    }
    out.set_item("sets", sets)?;
    Ok(out)
}

/// `"FILE"` or `"FILE#NAME"` (an array of an `.npz`, safetensors file or pickled dict), as the
/// command line's `import` takes them.
fn array_source(spec: &str) -> ArraySource {
    match spec.rsplit_once('#') {
        Some((path, name)) if !name.is_empty() => ArraySource::named(path, name),
        _ => ArraySource::new(spec),
    }
}

/// An array argument: a file (`str`: `"FILE"` or `"FILE#NAME"`; an `os.PathLike`: the file)
/// or an array in memory (anything `numpy.asarray` takes), read as its `.npy` file would be.
fn array_arg(value: &Bound<'_, PyAny>, label: &str) -> PyResult<ArraySource> {
    let py = value.py();
    if let Ok(s) = value.extract::<String>() {
        return Ok(array_source(&s));
    }
    if value.hasattr("__fspath__")? {
        let path: PathBuf = py
            .import("os")?
            .call_method1("fspath", (value,))?
            .extract()?;
        return Ok(ArraySource::new(path));
    }
    let array = py
        .import("numpy")?
        .call_method1("ascontiguousarray", (value,))?;
    let dtype: String = array.getattr("dtype")?.getattr("str")?.extract()?;
    let shape: Vec<usize> = array.getattr("shape")?.extract()?;
    let bytes = array.call_method0("tobytes")?;
    let bytes = bytes.cast::<PyBytes>()?.as_bytes().to_vec();
    ArraySource::in_memory(label, &dtype, shape, bytes).or_raise(Kind::Input)
}

/// A `(features, labels)` pair of one split: files or arrays.
fn part(
    split: Split,
    pair: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
) -> PyResult<Option<PartSpec>> {
    let Some((f, l)) = pair else { return Ok(None) };
    let features = array_arg(&f, &format!("{split} features"))?;
    let labels = array_arg(&l, &format!("{split} labels"))?;
    Ok(Some(PartSpec::new(split, features, labels)))
}

/// Writes features computed elsewhere into the feature cache (`clip-adapter import`), as
/// `extract` would have written them, so that `fit_cached`, `run`, `sweep` and `report` read
/// them. Each split is a `(features, labels)` pair: numpy arrays (`(N, D)` floats, `(N,)`
/// integers) or files (`.npy`, `.npz`, safetensors or a `torch.save`d tensor; `"FILE#NAME"`
/// names an array of a file of several). The class-name side is `text_features` (a `(C, E)`
/// array or file, with the model's `logit_scale`) or `model`, whose text tower encodes the
/// class names in `templates` (default: the dataset's). Arrays and files get the same checks
/// and write the same files; everything is checked before anything is written. Returns
/// `{"dataset", "model", "model_name", "width", "text", "sets": [{"name", "path", "rows"}]}`.
#[pyfunction]
#[pyo3(signature = (
    dataset, classnames, *, train, test, val = None, shots = None, seed = 1,
    text_features = None, logit_scale = 100.0, model = None, templates = Vec::new(),
    model_name = None, fingerprint = None, cache = PathBuf::from("clip-adapter-cache"),
    progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn import_features<'py>(
    py: Python<'py>,
    dataset: String,
    classnames: Vec<String>,
    train: (Bound<'py, PyAny>, Bound<'py, PyAny>),
    test: (Bound<'py, PyAny>, Bound<'py, PyAny>),
    val: Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    shots: Option<usize>,
    seed: u64,
    text_features: Option<Bound<'py, PyAny>>,
    logit_scale: f32,
    model: Option<String>,
    templates: Vec<String>,
    model_name: Option<String>,
    fingerprint: Option<String>,
    cache: PathBuf,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let text = match (text_features, &model) {
        (Some(array), None) => TextSpec::Features {
            array: array_arg(&array, "text features")?,
            logit_scale,
            templates,
        },
        (None, Some(m)) => TextSpec::encode(m, templates, &dataset),
        _ => {
            return Err(input(
                "give text_features (an array or file) or model (to encode the class names), one of them",
            ))
        }
    };
    let shots = match shots {
        Some(0) => {
            return Err(input(
                "shots = 0: expected at least 1 image per class, or None for the whole split",
            ))
        }
        Some(k) => Shots::K(k),
        None => Shots::All,
    };
    let parts = [
        part(Split::Train, Some(train))?,
        part(Split::Val, val)?,
        part(Split::Test, Some(test))?,
    ];
    let spec = ImportSpec {
        cache,
        dataset,
        shots,
        seed,
        parts: parts.into_iter().flatten().collect(),
        classnames,
        text,
        model_name: model_name.or(model),
        fingerprint,
        hub: HubOptions::from_env(),
    };
    let mut p = Progress::new(py, progress)?;
    // Boxed across the thread boundary (the error is large), unboxed so its kind is seen.
    let outcome = py.detach(|| import::import(&spec, &mut p).map_err(Box::new));
    p.finish(py)?;
    let outcome = outcome.map_err(|e| *e).or_raise(Kind::Input)?;
    crate::plain::to_python(py, &outcome)
}
