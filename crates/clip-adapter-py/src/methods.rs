//! The methods: `fit` on arrays, `fit_cached` on the feature cache, the `Head` they return
//! (scores, saving, loading), a cached task as arrays, and the options as keyword arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::clip::{ModelFiles, Precision};
use clip_adapter::experiment::{
    fit_row, model_reference, ExperimentError, FitInputs, GridMethod, MethodOverrides, RowSource,
    RowSpec, Validation,
};
use clip_adapter::features::task::{load_task, CacheQuery, Shots};
use clip_adapter::methods::coop::{CoopHead, PromptModel};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::pre_projection::{PreProjection, Projection};
use clip_adapter::methods::{
    FeatureSpace, FewShotTask, Head, LabelledSet, Matrix, MethodKind, OptionError,
    Progress as MethodProgress, TextClassifier, OPTIONS,
};
use clip_adapter::runner::{self, FitSpec};
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};

use crate::arrays::{float_rows, indices_out, labels, matrix_out};
use crate::errors::{input, to_py, Kind, OrRaise};
use crate::model::PyClip;
use crate::progress::Progress;

/// Rows scored per chunk: bounds the copy a head's scoring makes of a large input.
const CHUNK_ROWS: usize = 4096;

/// The method options given as keyword arguments, onto the library's `MethodOverrides` (the
/// flags of `fit`, `run` and `sweep`), each value parsed by the library as the command line
/// parses its flag: `alpha=0.3` is `--alpha 0.3`, `search=[0.1, 0.2]` is `--search 0.1,0.2`,
/// `csc=True` is `--csc`. An unknown keyword is a `TypeError` naming the options; a value the
/// option does not take an `InputError` naming both.
pub fn overrides(options: Option<&Bound<'_, PyDict>>) -> PyResult<MethodOverrides> {
    let mut o = MethodOverrides::default();
    let Some(options) = options else {
        return Ok(o);
    };
    for (key, value) in options.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        let text = if value.is_instance_of::<PyBool>() {
            // Python spells them `True`/`False`; the flags' parser `true`/`false`.
            value.is_truthy()?.to_string()
        } else if value.is_instance_of::<PyString>() {
            value.extract::<String>()?
        } else if let Ok(items) = value.try_iter() {
            let items = items
                .map(|v| Ok(v?.str()?.to_string()))
                .collect::<PyResult<Vec<String>>>()?;
            items.join(",")
        } else {
            value.str()?.to_string()
        };
        o.set(&key, &text).map_err(|e| match e {
            OptionError::Unknown { .. } => PyTypeError::new_err(format!(
                "unexpected keyword argument `{key}`; the method options are: {}",
                option_names().join(", ")
            )),
            invalid => to_py(&invalid, Kind::Input),
        })?;
    }
    Ok(o)
}

/// The options as keyword arguments spell them (`batch_size`).
pub fn option_names() -> Vec<String> {
    OPTIONS.iter().map(|o| o.name.replace('-', "_")).collect()
}

pub fn method_kind(name: &str) -> PyResult<MethodKind> {
    name.parse::<MethodKind>().or_raise(Kind::Input)
}

fn validation(name: &str) -> PyResult<Validation> {
    name.parse::<Validation>().or_raise(Kind::Input)
}

/// A trained head: class scores for image features, and what it was trained with.
///
/// `fit` and `fit_cached` return one; `Head.load` reads a file `fit --save` (or `Head.save`)
/// wrote.
#[pyclass(name = "Head", module = "clip_adapter", frozen)]
pub struct PyHead {
    head: Head,
    info: HeadInfo,
    /// CoOp's learned context: what its file holds.
    coop: Option<CoopHead>,
    chosen: BTreeMap<String, String>,
    losses: Vec<f32>,
    val_accuracy: Option<f32>,
    test_accuracy: Option<f32>,
    /// The results row of a `fit_cached`.
    row: Option<clip_adapter::experiment::ResultRow>,
}

impl PyHead {
    /// Logits of `x` `(N, D)`, `(N, K)`, scored a chunk of rows at a time (the head types take
    /// owned matrices; a chunk is all that is copied).
    fn scores(&self, data: &[f32], n: usize, d: usize) -> PyResult<Matrix> {
        if d != self.head.dim() {
            let space = match self.head.input() {
                FeatureSpace::Projected => "projected image features",
                FeatureSpace::PreProjection => {
                    "features before the image tower's last projection (pre_projection=True)"
                }
                FeatureSpace::Adapted => {
                    "image features of the model with the head's CLIP-LoRA updates merged in \
                     (`clip-adapter merge --lora`)"
                }
            };
            return Err(input(format!(
                "features have {d} columns, but the head scores {}-wide {space}",
                self.head.dim()
            )));
        }
        let k = self.info.classnames.len().max(1);
        let mut out = Vec::with_capacity(n * k);
        for chunk in data.chunks(CHUNK_ROWS * d.max(1)) {
            let m = Matrix {
                rows: chunk.len() / d.max(1),
                cols: d,
                data: chunk.to_vec(),
            };
            out.extend_from_slice(&self.head.logits(&m).data);
        }
        let k = out.len().checked_div(n).unwrap_or(k);
        Ok(Matrix {
            rows: n,
            cols: k,
            data: out,
        })
    }
}

#[pymethods]
impl PyHead {
    /// Class logits `(N, K)` (float32) of image features `(N, D)`.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = float_rows(features, "features")?;
        let (data, n, d) = (x.data(), x.rows(), x.cols());
        let m = py.detach(|| self.scores(data, n, d))?;
        matrix_out(py, m.rows, m.cols, m.data)
    }

    /// The most probable class of each row (int64; ties go to the lower index).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let x = float_rows(features, "features")?;
        let (data, n, d) = (x.data(), x.rows(), x.cols());
        let m = py.detach(|| self.scores(data, n, d))?;
        let best = (0..m.rows)
            .map(|i| {
                let row = m.row(i);
                (0..m.cols)
                    .reduce(|b, j| if row[j] > row[b] { j } else { b })
                    .unwrap_or(0)
            })
            .collect();
        Ok(indices_out(py, best))
    }

    /// Class probabilities `(N, K)` (float32): the softmax of the logits, the `probability`
    /// of `clip-adapter predict`.
    fn predict_proba<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = float_rows(features, "features")?;
        let (data, n, d) = (x.data(), x.rows(), x.cols());
        let (n, k, data) = py.detach(|| -> PyResult<_> {
            let m = self.scores(data, n, d)?;
            let (n, k) = (m.rows, m.cols);
            let p = Tensor::from_vec(m.data, (n, k), &Device::Cpu)
                .and_then(|t| candle_nn::ops::softmax(&t, D::Minus1))
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(clip_adapter::Error::from)
                .or_raise(Kind::Method)?;
            Ok((n, k, p))
        })?;
        matrix_out(py, n, k, data)
    }

    /// Writes the head as `clip-adapter fit --save` does (a CoOp head: its learned context).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| match &self.coop {
            Some(c) => c.save(&path).or_raise(Kind::Other),
            None => head::save(&path, &self.head, &self.info).or_raise(Kind::Other),
        })
    }

    /// Reads a head file (`fit --save`, `Head.save`). A CoOp head's prompts are encoded
    /// through `model` [default: the model it records], which must be the one it was trained
    /// on unless `allow_model_mismatch`.
    #[staticmethod]
    #[pyo3(signature = (path, *, model = None, allow_model_mismatch = false, progress = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        model: Option<&str>,
        allow_model_mismatch: bool,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut p = Progress::new(py, progress)?;
        let hub = HubOptions::from_env();
        let loaded = py.detach(|| {
            let coop = match clip_adapter::methods::coop::head::is_coop_head(&path) {
                true => Some(CoopHead::load(&path).or_raise(Kind::Input)?),
                false => None,
            };
            let (head, info) =
                runner::predict::load_head(&path, model, allow_model_mismatch, &hub, &mut p)
                    .or_raise(Kind::Input)?;
            Ok::<_, PyErr>((head, info, coop))
        });
        p.finish(py)?;
        let (head, info, coop) = loaded?;
        let chosen = serde_json::from_str::<BTreeMap<String, String>>(&info.options)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "options" | "dataset" | "shots" | "seed"))
            .collect();
        Ok(PyHead {
            head,
            info,
            coop,
            chosen,
            losses: Vec::new(),
            val_accuracy: None,
            test_accuracy: None,
            row: None,
        })
    }

    /// The method that trained it.
    #[getter]
    fn method(&self) -> &str {
        &self.info.method
    }

    /// The class names, in label order.
    #[getter]
    fn classnames(&self) -> Vec<String> {
        self.info.classnames.clone()
    }

    /// The feature width it scores.
    #[getter]
    fn dim(&self) -> usize {
        self.head.dim()
    }

    /// `"projected"` (the embeddings `encode_images` gives), `"pre-projection"` (ProLIP:
    /// `encode_images(..., pre_projection=True)`) or `"adapted"` (CLIP-LoRA: the embeddings of
    /// the model with the head's updates merged in, `clip-adapter merge --lora`).
    #[getter]
    fn input(&self) -> &'static str {
        match self.head.input() {
            FeatureSpace::Projected => "projected",
            FeatureSpace::PreProjection => "pre-projection",
            FeatureSpace::Adapted => "adapted",
        }
    }

    /// Hyper-parameters chosen on validation (or the defaults without it), by name.
    #[getter]
    fn chosen(&self) -> BTreeMap<String, String> {
        self.chosen.clone()
    }

    /// Mean training loss per epoch (empty for training-free methods and loaded heads).
    #[getter]
    fn losses(&self) -> Vec<f32> {
        self.losses.clone()
    }

    /// Validation accuracy in percent (`None` without a validation set, or for a loaded head).
    #[getter]
    fn val_accuracy(&self) -> Option<f32> {
        self.val_accuracy.filter(|a| a.is_finite())
    }

    /// Test accuracy in percent (`None` without test data, or for a loaded head).
    #[getter]
    fn test_accuracy(&self) -> Option<f32> {
        self.test_accuracy.filter(|a| a.is_finite())
    }

    /// What its file records: `model`, `model_fingerprint`, `templates`, `options` (JSON).
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("method", &self.info.method)?;
        d.set_item("model", &self.info.model)?;
        d.set_item("model_fingerprint", &self.info.model_fingerprint)?;
        d.set_item("classnames", &self.info.classnames)?;
        d.set_item("templates", &self.info.templates)?;
        d.set_item("options", &self.info.options)?;
        Ok(d)
    }

    /// The results row of a `fit_cached` (as `run` writes it to results.csv), else `None`.
    #[getter]
    fn row<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.row
            .as_ref()
            .map(|r| crate::experiment::row_dict(py, r))
            .transpose()
    }

    fn __repr__(&self) -> String {
        format!(
            "Head(method={:?}, classes={}, dim={})",
            self.info.method,
            self.info.classnames.len(),
            self.head.dim()
        )
    }
}

/// Feeds a method's epochs to a progress callback.
fn epochs(p: &mut Progress) -> impl FnMut(MethodProgress) + '_ {
    move |e| match e {
        MethodProgress::Epoch { epoch, epochs, .. } => {
            p.report("epochs", epoch as u64, Some(epochs as u64))
        }
        MethodProgress::Search { done, total } => {
            p.report("validation search", done as u64, Some(total as u64))
        }
    }
}

/// The model a fit on arrays trains through (CoOp) or records in the head.
fn given_model(model: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Py<PyClip>>> {
    let Some(m) = model else { return Ok(None) };
    if let Ok(clip) = m.cast::<PyClip>() {
        return Ok(Some(clip.clone().unbind()));
    }
    if let Ok(spec) = m.extract::<String>() {
        return Ok(Some(Py::new(
            m.py(),
            PyClip::load(m.py(), &spec, "f32", None)?,
        )?));
    }
    Err(input(
        "model must be a Clip or a model name (directory, file, hub id)",
    ))
}

/// Trains `method` on features given as arrays and returns its head.
///
/// `features` `(N, D)` float32 and `labels` `(N,)` class indices are the training set;
/// `text_features` `(K, D)` the zero-shot classifier (rows are normalised, e.g.
/// `Clip.text_classifier(classnames)`). With `val_features`/`val_labels` hyper-parameters are
/// chosen on them (the protocol's `val`); without, each method keeps its defaults (`none`).
/// `test_features`/`test_labels` only give `head.test_accuracy`. `train_views` are augmented
/// views of the training images (same rows), `text_mean` the mean prompt embedding per class
/// (CLAP's start). `logit_scale` defaults to the model's, else CLIP's 100. `dataset` and
/// `seed` pick the protocol's values (per-dataset defaults, the training seed). `model` (a
/// `Clip` or a model name) is recorded in the head, and CoOp trains through it (with
/// `classnames`). Options are keyword arguments (`alpha=0.3`, `epochs=50`, ...; see
/// `method_options(method)`); an unknown one is a `TypeError`.
#[pyfunction]
#[pyo3(signature = (
    method, features, labels, *, text_features, val_features = None, val_labels = None,
    test_features = None, test_labels = None, train_views = None, text_mean = None,
    pre_projection = None, logit_scale = None, classnames = None, dataset = "", seed = 1,
    model = None, progress = None, **options
))]
#[allow(clippy::too_many_arguments)]
pub fn fit(
    py: Python<'_>,
    method: &str,
    features: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    text_features: &Bound<'_, PyAny>,
    val_features: Option<&Bound<'_, PyAny>>,
    val_labels: Option<&Bound<'_, PyAny>>,
    test_features: Option<&Bound<'_, PyAny>>,
    test_labels: Option<&Bound<'_, PyAny>>,
    train_views: Option<&Bound<'_, PyAny>>,
    text_mean: Option<&Bound<'_, PyAny>>,
    pre_projection: Option<&Bound<'_, PyDict>>,
    logit_scale: Option<f32>,
    classnames: Option<Vec<String>>,
    dataset: &str,
    seed: u64,
    model: Option<&Bound<'_, PyAny>>,
    progress: Option<&Bound<'_, PyAny>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyHead> {
    let kind = method_kind(method)?;
    let overrides = overrides(options)?;
    let model = given_model(model)?;
    let text = float_rows(text_features, "text_features")?.to_matrix();
    let (k, d) = (text.rows, text.cols);
    let train = labelled(Some(features), Some(labels), "train", d)?;
    let val = labelled(val_features, val_labels, "val", d)?;
    let test = labelled(test_features, test_labels, "test", d)?;
    let train_views = views(train_views)?;
    let text_mean = text_mean
        .map(|m| float_rows(m, "text_mean").map(|r| r.to_matrix()))
        .transpose()?;
    let classnames = classnames_of(classnames, k)?;
    let (clip_scale, model_name, fingerprint, at) = match &model {
        Some(m) => {
            let m = m.get();
            (
                Some(m.clip.logit_scale()),
                m.spec.clone(),
                Some(m.fingerprint_of(py)?),
                Some((m.files.clone(), m.clip.precision())),
            )
        }
        None => (None, String::new(), None, None),
    };
    let validation = match val.labels.is_empty() {
        true => Validation::None,
        false => Validation::Val,
    };
    let task = FewShotTask {
        classnames: classnames.clone(),
        train,
        train_views,
        val,
        test,
        text: TextClassifier::from_embeddings(text, logit_scale.or(clip_scale).unwrap_or(100.0)),
        pre_projection: None,
        text_mean,
    };
    let task = FewShotTask {
        pre_projection: pre_projection
            .map(|p| pre_projection_arg(p, model.as_ref().map(|m| &m.get().clip)))
            .transpose()?
            .map(Box::new),
        ..task
    };
    let (configured, grid_method) = configure(kind, &overrides, validation, dataset, seed)?;
    let source = RowSource {
        model: fingerprint.clone().unwrap_or_default(),
        model_name: model_name.clone(),
        features: String::new(),
    };
    let mut p = Progress::new(py, progress)?;
    let fitted = py.detach(|| -> PyResult<_> {
        let prompt = text_tower(kind, at.as_ref(), &model_name)?;
        let spec = RowSpec {
            method: &grid_method,
            dataset,
            shots: 0,
            seed,
            validation,
            source: &source,
            protocol: clip_adapter::experiment::Protocol::FewShot,
            new: None,
        };
        let inputs = FitInputs {
            text_tower: prompt.as_ref(),
            // Features in arrays carry no images: CLIP-LoRA is refused, `fit_cached` runs it.
            images: None,
            new_images: None,
        };
        fit_row(&configured, &task, &spec, inputs, &mut epochs(&mut p)).map_err(|e| {
            match e {
                // "training M on  (0-shot, seed 1)" names nothing of arrays: the cause alone.
                ExperimentError::Fit { source, .. } => to_py(source.as_ref(), Kind::Method),
                other => to_py(&other, Kind::Method),
            }
        })
    });
    p.finish(py)?;
    let (fit, row) = fitted?;
    let chosen: BTreeMap<String, String> = fit.fitted.chosen.iter().cloned().collect();
    let info = match &fit.prompt {
        Some(c) => c.info(),
        None => {
            let made = Made {
                method: kind.name(),
                options: configured.describe(),
                dataset,
                seed,
                model_name: &model_name,
            };
            head_info(&made, &chosen, fingerprint, classnames)?
        }
    };
    Ok(PyHead {
        head: fit.fitted.head,
        info,
        coop: fit.prompt,
        chosen,
        losses: fit.fitted.losses,
        val_accuracy: Some(row.val_accuracy),
        test_accuracy: Some(row.test_accuracy),
        row: None,
    })
}

/// The method with the user's options, checked, and the row label they give.
fn configure(
    kind: MethodKind,
    overrides: &MethodOverrides,
    validation: Validation,
    dataset: &str,
    seed: u64,
) -> PyResult<(clip_adapter::methods::Method, GridMethod)> {
    overrides.check(&[kind]).or_raise(Kind::Input)?;
    overrides
        .check_validation(validation)
        .or_raise(Kind::Input)?;
    let label = kind.name().to_string();
    let options = overrides.label(kind);
    Ok((
        overrides.method(kind, dataset, seed),
        GridMethod { label, options },
    ))
}

/// The text tower a method trains through (CoOp), from the model given to `fit`, at that
/// model's precision (its features' arithmetic).
fn text_tower(
    kind: MethodKind,
    model: Option<&(ModelFiles, Precision)>,
    model_name: &str,
) -> PyResult<Option<PromptModel>> {
    match (kind.card().needs, model) {
        (clip_adapter::methods::Needs::TextTower, Some((files, precision))) => Ok(Some(
            PromptModel::load_at(
                files,
                &model_reference(model_name),
                *precision,
                &Device::Cpu,
            )
            .or_raise(Kind::Model)?,
        )),
        (clip_adapter::methods::Needs::TextTower, None) => Err(input(format!(
            "{} trains prompts through the model's text tower: pass model= (the Clip that made \
             the features) and classnames=",
            kind.name()
        ))),
        (clip_adapter::methods::Needs::Images, _) => Err(input(format!(
            "{} trains on the images themselves through the model, which arrays of features do \
             not carry: fit it with fit_cached(), which reads the images the cache records",
            kind.name()
        ))),
        _ => Ok(None),
    }
}

/// How a head fitted on arrays was made, as its file records it.
struct Made<'a> {
    method: &'static str,
    options: String,
    dataset: &'a str,
    seed: u64,
    model_name: &'a str,
}

/// The head file's metadata of a head fitted on arrays.
fn head_info(
    made: &Made,
    chosen: &BTreeMap<String, String>,
    fingerprint: Option<String>,
    classnames: Vec<String>,
) -> PyResult<HeadInfo> {
    let mut options = chosen.clone();
    options.insert("options".into(), made.options.clone());
    if !made.dataset.is_empty() {
        options.insert("dataset".into(), made.dataset.to_string());
    }
    options.insert("seed".into(), made.seed.to_string());
    Ok(HeadInfo {
        model: match made.model_name.is_empty() {
            true => String::new(),
            false => model_reference(made.model_name),
        },
        model_fingerprint: fingerprint,
        classnames,
        templates: Vec::new(),
        method: made.method.to_string(),
        options: serde_json::to_string(&options).or_raise(Kind::Other)?,
    })
}

/// A labelled set of `fit`'s arrays (`what`: train, val or test); both arrays or neither.
fn labelled(
    x: Option<&Bound<'_, PyAny>>,
    y: Option<&Bound<'_, PyAny>>,
    what: &str,
    dim: usize,
) -> PyResult<LabelledSet> {
    match (x, y) {
        (Some(x), Some(y)) => Ok(LabelledSet {
            features: float_rows(x, &format!("{what}_features"))?.to_matrix(),
            labels: self::labels(y, &format!("{what}_labels"))?,
        }),
        (None, None) => Ok(LabelledSet {
            features: Matrix::zeros(0, dim),
            labels: Vec::new(),
        }),
        _ => Err(input(format!(
            "give both {what}_features and {what}_labels, or neither"
        ))),
    }
}

/// `train_views`: a sequence of `(N, D)` arrays.
fn views(train_views: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Matrix>> {
    let Some(v) = train_views else {
        return Ok(Vec::new());
    };
    (v.try_iter()?)
        .enumerate()
        .map(|(i, m)| Ok(float_rows(&m?, &format!("train_views[{i}]"))?.to_matrix()))
        .collect()
}

/// The class names, one per row of `text_features` (`"0"`, `"1"`, ... when not given).
fn classnames_of(classnames: Option<Vec<String>>, k: usize) -> PyResult<Vec<String>> {
    match classnames {
        Some(c) if c.len() != k => Err(input(format!(
            "{} classnames for {k} rows of text_features",
            c.len()
        ))),
        Some(c) => Ok(c),
        None => Ok((0..k).map(|i| i.to_string()).collect()),
    }
}

/// ProLIP's input from a dict of arrays: `train` (and `val`, `test`, `train_views`) features
/// before the image tower's last projection, the projection's `weight` `(E, W)` and `bias`
/// (default: the model's own).
fn pre_projection_arg(
    d: &Bound<'_, PyDict>,
    model: Option<&clip_adapter::Clip>,
) -> PyResult<PreProjection> {
    const KEYS: [&str; 6] = ["train", "val", "test", "train_views", "weight", "bias"];
    for key in d.keys() {
        let key: String = key.extract()?;
        if !KEYS.contains(&key.as_str()) {
            return Err(PyTypeError::new_err(format!(
                "pre_projection: unexpected key `{key}`; expected: {}",
                KEYS.join(", ")
            )));
        }
    }
    let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
        Ok(d.get_item(k)?.filter(|v| !v.is_none()))
    };
    let matrix = |k: &str| -> PyResult<Option<Matrix>> {
        get(k)?
            .map(|v| float_rows(&v, &format!("pre_projection[{k:?}]")).map(|r| r.to_matrix()))
            .transpose()
    };
    let train = matrix("train")?.ok_or_else(|| input("pre_projection needs `train`"))?;
    let empty = || Matrix::zeros(0, train.cols);
    let projection = match (matrix("weight")?, model) {
        (Some(weight), _) => {
            let bias = get("bias")?
                .map(|b| -> PyResult<Vec<f32>> {
                    let b = crate::arrays::ascontiguous(&b, "float32", "pre_projection[\"bias\"]")?;
                    b.call_method0("tolist")?.extract()
                })
                .transpose()?;
            Projection { weight, bias }
        }
        (None, Some(clip)) => {
            let (weight, input, bias) = clip.image_projection().or_raise(Kind::Model)?;
            let rows = weight.len() / input.max(1);
            Projection {
                weight: Matrix {
                    rows,
                    cols: input,
                    data: weight,
                },
                bias,
            }
        }
        (None, None) => {
            return Err(input(
                "pre_projection needs the projection: its `weight` (and `bias`), or model=",
            ))
        }
    };
    let train_views = match get("train_views")? {
        Some(v) => (v.try_iter()?)
            .enumerate()
            .map(|(i, m)| {
                Ok(float_rows(&m?, &format!("pre_projection[\"train_views\"][{i}]"))?.to_matrix())
            })
            .collect::<PyResult<_>>()?,
        None => Vec::new(),
    };
    Ok(PreProjection {
        projection,
        val: matrix("val")?.unwrap_or_else(empty),
        test: matrix("test")?.unwrap_or_else(empty),
        train,
        train_views,
    })
}

/// Trains `method` on a draw of the feature cache (`clip-adapter fit`): `dataset` as the
/// cache names it, `shots` (an int, or `"all"`) and `seed` as given to `extract`. Returns the
/// head, with `row` the results row `run` would write; `save` writes the head file too.
#[pyfunction]
#[pyo3(signature = (
    method, dataset, shots, seed = 1, *, cache = PathBuf::from("clip-adapter-cache"),
    model = None, validation = "val", save = None, progress = None, **options
))]
#[allow(clippy::too_many_arguments)]
pub fn fit_cached(
    py: Python<'_>,
    method: &str,
    dataset: String,
    shots: &Bound<'_, PyAny>,
    seed: u64,
    cache: PathBuf,
    model: Option<String>,
    validation: &str,
    save: Option<PathBuf>,
    progress: Option<&Bound<'_, PyAny>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyHead> {
    let spec = FitSpec {
        method: method_kind(method)?,
        dataset,
        shots: shots_arg(shots)?,
        seed,
        cache,
        model,
        save,
        validation: self::validation(validation)?,
        overrides: overrides(options)?,
        hub: HubOptions::from_env(),
    };
    let mut p = Progress::new(py, progress)?;
    let outcome = py.detach(|| runner::fit(&spec, &mut p));
    p.finish(py)?;
    let outcome = outcome.or_raise(Kind::Method)?;
    Ok(PyHead {
        head: outcome.fit.fitted.head,
        info: outcome.info,
        coop: outcome.fit.prompt,
        chosen: outcome.chosen,
        losses: outcome.fit.fitted.losses,
        val_accuracy: Some(outcome.row.val_accuracy),
        test_accuracy: Some(outcome.row.test_accuracy),
        row: Some(outcome.row),
    })
}

/// `shots` as `extract` was given it: a positive int, or `"all"` (the whole train split).
pub fn shots_arg(shots: &Bound<'_, PyAny>) -> PyResult<Shots> {
    if let Ok(k) = shots.extract::<usize>() {
        if k > 0 {
            return Ok(Shots::K(k));
        }
    }
    if let Ok(s) = shots.extract::<String>() {
        if let Ok(v) = s.parse::<Shots>() {
            return Ok(v);
        }
    }
    let got = shots.repr().map(|r| r.to_string()).unwrap_or_default();
    Err(input(format!(
        "shots = {got}: expected a positive number of images per class, or \"all\""
    )))
}

/// A few-shot task read from the feature cache, as arrays.
#[pyclass(name = "Task", module = "clip_adapter", frozen)]
pub struct PyTask {
    task: FewShotTask,
}

/// A labelled set as numpy: features `(N, D)` float32 and labels `(N,)` int64.
type LabelledArrays<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<i64>>);

fn set_out<'py>(py: Python<'py>, s: &LabelledSet) -> PyResult<LabelledArrays<'py>> {
    let f = &s.features;
    Ok((
        matrix_out(py, f.rows, f.cols, f.data.clone())?,
        indices_out(py, s.labels.clone()),
    ))
}

#[pymethods]
impl PyTask {
    #[getter]
    fn classnames(&self) -> Vec<String> {
        self.task.classnames.clone()
    }

    /// `(features (N, D) float32, labels (N,) int64)` of the few-shot training images.
    #[getter]
    fn train<'py>(&self, py: Python<'py>) -> PyResult<LabelledArrays<'py>> {
        set_out(py, &self.task.train)
    }

    /// The few-shot validation set (empty arrays without one).
    #[getter]
    fn val<'py>(&self, py: Python<'py>) -> PyResult<LabelledArrays<'py>> {
        set_out(py, &self.task.val)
    }

    #[getter]
    fn test<'py>(&self, py: Python<'py>) -> PyResult<LabelledArrays<'py>> {
        set_out(py, &self.task.test)
    }

    /// The augmented views of the training images, same rows as `train` (may be empty).
    #[getter]
    fn train_views<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let views = (self.task.train_views.iter())
            .map(|v| matrix_out(py, v.rows, v.cols, v.data.clone()))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, views)
    }

    /// The zero-shot classifier `(K, D)`, unit rows.
    #[getter]
    fn text_features<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let w = &self.task.text.weights;
        matrix_out(py, w.rows, w.cols, w.data.clone())
    }

    /// The mean prompt embedding per class `(K, D)` (CLAP's prototypes), when cached.
    #[getter]
    fn text_mean<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        (self.task.text_mean.as_ref())
            .map(|m| matrix_out(py, m.rows, m.cols, m.data.clone()))
            .transpose()
    }

    #[getter]
    fn logit_scale(&self) -> f32 {
        self.task.text.logit_scale
    }

    /// The features before the image tower's last projection (`train`, `val`, `test`,
    /// `train_views`) and the projection (`weight` `(E, W)`, `bias`), when the cache holds
    /// them (`extract(..., pre_projection=True)`): what ProLIP trains on.
    #[getter]
    fn pre_projection<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(p) = self.task.pre_projection.as_deref() else {
            return Ok(None);
        };
        let m = |x: &Matrix| matrix_out(py, x.rows, x.cols, x.data.clone());
        let d = PyDict::new(py);
        d.set_item("train", m(&p.train)?)?;
        d.set_item("val", m(&p.val)?)?;
        d.set_item("test", m(&p.test)?)?;
        let views = p.train_views.iter().map(m).collect::<PyResult<Vec<_>>>()?;
        d.set_item("train_views", PyList::new(py, views)?)?;
        d.set_item("weight", m(&p.projection.weight)?)?;
        let bias = (p.projection.bias.as_ref()).map(|b| numpy::PyArray1::from_slice(py, b));
        d.set_item("bias", bias)?;
        Ok(Some(d))
    }

    /// The keyword arguments of `fit` that give it this task.
    fn fit_arguments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let (x, y) = self.train(py)?;
        d.set_item("features", x)?;
        d.set_item("labels", y)?;
        d.set_item("text_features", self.text_features(py)?)?;
        if !self.task.val.labels.is_empty() {
            let (x, y) = self.val(py)?;
            d.set_item("val_features", x)?;
            d.set_item("val_labels", y)?;
        }
        let (x, y) = self.test(py)?;
        d.set_item("test_features", x)?;
        d.set_item("test_labels", y)?;
        d.set_item("train_views", self.train_views(py)?)?;
        d.set_item("text_mean", self.text_mean(py)?)?;
        d.set_item("pre_projection", self.pre_projection(py)?)?;
        d.set_item("logit_scale", self.task.text.logit_scale)?;
        d.set_item("classnames", self.classnames())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Task(classes={}, dim={}, train={}, val={}, test={}, views={})",
            self.task.classes(),
            self.task.dim(),
            self.task.train.labels.len(),
            self.task.val.labels.len(),
            self.task.test.labels.len(),
            self.task.train_views.len()
        )
    }
}

/// The few-shot task of a draw in the feature cache (what `fit_cached` trains on), as arrays.
#[pyfunction]
#[pyo3(signature = (dataset, shots, seed = 1, *, cache = PathBuf::from("clip-adapter-cache"), model = None))]
pub fn load_cached_task(
    py: Python<'_>,
    dataset: &str,
    shots: &Bound<'_, PyAny>,
    seed: u64,
    cache: PathBuf,
    model: Option<String>,
) -> PyResult<PyTask> {
    let q = CacheQuery {
        model,
        ..CacheQuery::new(cache, dataset, shots_arg(shots)?, seed)
    };
    let (task, _) = py.detach(|| load_task(&q)).or_raise(Kind::Cache)?;
    Ok(PyTask { task })
}

/// The registered methods, in the order of tables and figures.
#[pyfunction]
pub fn methods() -> Vec<&'static str> {
    MethodKind::all().iter().map(|k| k.name()).collect()
}

/// The keyword options `method` takes (as `fit` spells them).
#[pyfunction]
pub fn method_options(method: &str) -> PyResult<Vec<String>> {
    let kind = method_kind(method)?;
    Ok(kind
        .card()
        .options
        .iter()
        .map(|o| o.replace('-', "_"))
        .collect())
}

/// Folds a CLIP-LoRA head's updates (`fit_cached("clip-lora", ...).save(path)`) into the model
/// it was trained on (`clip-adapter merge --lora`): writes `out`, a new folder, in the model's
/// own layout, and returns what to load (`Clip.load(path)`), a model whose embeddings are the
/// adapted ones.
#[pyfunction]
#[pyo3(signature = (head, out, *, model = None, progress = None))]
pub fn merge_lora(
    py: Python<'_>,
    head: PathBuf,
    out: PathBuf,
    model: Option<String>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let spec = runner::MergeLoraSpec {
        head,
        model,
        out,
        hub: HubOptions::from_env(),
    };
    let mut p = Progress::new(py, progress)?;
    let merged = py.detach(|| runner::merge_lora(&spec, &mut p));
    p.finish(py)?;
    Ok(merged.or_raise(Kind::Input)?.model.display().to_string())
}
