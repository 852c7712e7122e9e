//! `Clip`: a model found and loaded as `--model` finds it, with the numbers of `embed`,
//! `classify` and `tokenize`.

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Tensor;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::clip::{Clip, ModelFiles, Precision};
use clip_adapter::encode::DEFAULT_BATCH;
use clip_adapter::features::model_fingerprint;
use clip_adapter::runner::encode::{self, ImageSource};
use clip_adapter::zero_shot::DEFAULT_TEMPLATE;
use numpy::{PyArray1, PyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::arrays::matrix_out;
use crate::errors::{input, Kind, OrRaise};
use crate::progress::Progress;

/// A CLIP model: its image and text towers, tokenizer and preprocessing.
///
/// Load it with `Clip.load(model)`, where `model` is anything the command line's `--model`
/// takes: a model directory (`transformers` or open_clip layout), an OpenAI `.pt` file,
/// `openai:NAME`, or a hub id such as `openai/clip-vit-base-patch32`.
#[pyclass(name = "Clip", module = "clip_adapter", frozen)]
pub struct PyClip {
    pub clip: Clip,
    pub files: ModelFiles,
    /// The name it was loaded by.
    pub spec: String,
    fingerprint: OnceLock<String>,
}

/// An image given from Python, held while the GIL is released.
enum Given<'py> {
    File(PathBuf),
    Pixels(PyReadonlyArray3<'py, u8>),
}

/// Paths, `uint8` `(H, W, 3)` arrays and PIL images, as the library's image sources.
fn images<'py>(items: &Bound<'py, PyAny>) -> PyResult<Vec<Given<'py>>> {
    let py = items.py();
    if items.is_instance_of::<PyString>() {
        return Err(input(
            "images must be a list of images (paths, arrays or PIL images), not one string",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in items.try_iter()?.enumerate() {
        let item = item?;
        if let Ok(path) = item.extract::<PathBuf>() {
            out.push(Given::File(path));
            continue;
        }
        // A PIL image: its RGB pixels, as PIL's `convert("RGB")` gives them.
        let item = if item.hasattr("convert")? && item.hasattr("mode")? {
            let rgb = item.call_method1("convert", ("RGB",))?;
            py.import("numpy")?.call_method1("asarray", (rgb,))?
        } else {
            item
        };
        let array = item.extract::<PyReadonlyArray3<'py, u8>>().map_err(|_| {
            let what = item
                .getattr("shape")
                .and_then(|s| Ok(format!("an array of shape {}", s.repr()?)))
                .or_else(|_| item.get_type().name().map(|n| format!("a {n}")))
                .unwrap_or_else(|_| "something else".into());
            input(format!(
                "image {i}: expected a path, a PIL image or a uint8 array of shape (H, W, 3), \
                 got {what}"
            ))
        })?;
        let shape = array.shape();
        if shape[2] != 3 {
            return Err(input(format!(
                "image {i}: a uint8 array must be (H, W, 3) RGB, got shape {shape:?}"
            )));
        }
        let array = match array.as_slice() {
            Ok(_) => array,
            // Not C-contiguous (a crop or a channel flip): one copy, made by numpy.
            Err(_) => py
                .import("numpy")?
                .call_method1("ascontiguousarray", (array.as_any(),))?
                .extract()?,
        };
        out.push(Given::Pixels(array));
    }
    Ok(out)
}

fn sources<'a>(given: &'a [Given<'_>]) -> PyResult<Vec<ImageSource<'a>>> {
    given
        .iter()
        .enumerate()
        .map(|(i, g)| match g {
            Given::File(p) => Ok(ImageSource::File(p)),
            Given::Pixels(a) => {
                let shape = a.shape();
                let (height, width) = (dim_u32(shape[0], i)?, dim_u32(shape[1], i)?);
                Ok(ImageSource::Rgb {
                    width,
                    height,
                    pixels: a.as_slice().unwrap_or(&[]),
                })
            }
        })
        .collect()
}

fn dim_u32(n: usize, image: usize) -> PyResult<u32> {
    u32::try_from(n).map_err(|_| input(format!("image {image}: side of {n} pixels is too large")))
}

/// A projection as numpy: its weight `(E, W)` and bias `(E,)`, if any.
type Projection<'py> = (Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray1<f32>>>);

/// A `(N, E)` tensor as a float32 array.
pub fn tensor_out<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (n, e) = t
        .dims2()
        .map_err(clip_adapter::Error::from)
        .or_raise(Kind::Other)?;
    let data = (t.flatten_all())
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(clip_adapter::Error::from)
        .or_raise(Kind::Other)?;
    matrix_out(py, n, e, data)
}

fn strings(items: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if items.is_instance_of::<PyString>() {
        return Err(input(format!(
            "{what} must be a list of strings, not one string"
        )));
    }
    items
        .extract::<Vec<String>>()
        .map_err(|_| input(format!("{what} must be a list of strings")))
}

/// A `precision` argument, or a ValueError naming the accepted ones.
pub fn parse_precision(value: &str) -> PyResult<Precision> {
    value
        .parse::<Precision>()
        .map_err(|e| input(format!("precision = {value:?}: {e}")))
}

impl PyClip {
    /// The model's content fingerprint at its precision (what the feature cache and heads
    /// record).
    pub fn fingerprint_of(&self, py: Python<'_>) -> PyResult<String> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let f = py
            .detach(|| model_fingerprint(&self.files))
            .or_raise(Kind::Model)?;
        let f = self.clip.precision().fingerprint(&f);
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }
}

#[pymethods]
impl PyClip {
    /// Finds and loads a model: a directory, an OpenAI `.pt` file, `openai:NAME` or a hub id
    /// (downloaded into the Hugging Face cache unless HF_HUB_OFFLINE is set), its transformer
    /// towers' linear layers and convolutions at `precision` (`"f32"` or `"bf16"`).
    #[staticmethod]
    #[pyo3(signature = (model, *, precision = "f32", progress = None))]
    pub fn load(
        py: Python<'_>,
        model: &str,
        precision: &str,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let precision = parse_precision(precision)?;
        let mut p = Progress::new(py, progress)?;
        if let Some(notice) = precision.notice() {
            p.warn(&notice);
        }
        let hub = HubOptions::from_env();
        let loaded = py.detach(|| encode::load_model(model, &hub, precision, &mut p));
        p.finish(py)?;
        let (clip, files) = loaded.or_raise(Kind::Model)?;
        Ok(PyClip {
            clip,
            files,
            spec: model.to_string(),
            fingerprint: OnceLock::new(),
        })
    }

    /// The name the model was loaded by.
    #[getter]
    fn name(&self) -> &str {
        &self.spec
    }

    /// `"f32"` or `"bf16"`: the arithmetic of the towers' linear layers and convolutions.
    #[getter]
    fn precision(&self) -> &'static str {
        self.clip.precision().name()
    }

    /// The folder of the model's files.
    #[getter]
    fn directory(&self) -> PathBuf {
        self.files.dir.clone()
    }

    /// The width of the embeddings (the projection's output).
    #[getter]
    fn embed_dim(&self) -> usize {
        self.clip.config().embed_dim
    }

    /// The side of the square input images.
    #[getter]
    fn image_size(&self) -> usize {
        self.clip.image_size()
    }

    /// Tokens per text.
    #[getter]
    fn context_length(&self) -> usize {
        self.clip.config().text.context_length
    }

    /// `exp(logit_scale)` of the checkpoint: what cosine similarities are multiplied by.
    #[getter]
    fn logit_scale(&self) -> f32 {
        self.clip.logit_scale()
    }

    /// The content fingerprint that the feature cache and saved heads record.
    #[getter]
    fn fingerprint(&self, py: Python<'_>) -> PyResult<String> {
        self.fingerprint_of(py)
    }

    /// Projected, un-normalised image embeddings `(N, E)` (float32), the numbers of
    /// `clip-adapter embed`. `images`: paths, PIL images or uint8 `(H, W, 3)` RGB arrays.
    /// `pre_projection`: the image tower's output before its last projection instead.
    #[pyo3(signature = (images, *, batch_size = DEFAULT_BATCH, pre_projection = false, progress = None))]
    fn encode_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        batch_size: usize,
        pre_projection: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let given = self::images(images)?;
        let sources = sources(&given)?;
        let mut p = Progress::new(py, progress)?;
        let encoded = py.detach(|| {
            encode::encode_images(
                &self.clip,
                &sources,
                batch_size,
                pre_projection,
                &mut |d, t| p.report("encoding images", d as u64, Some(t as u64)),
            )
        });
        p.finish(py)?;
        tensor_out(py, &encoded.or_raise(Kind::Input)?)
    }

    /// Projected, un-normalised text embeddings `(N, E)` (float32), the numbers of
    /// `clip-adapter embed --text`.
    fn encode_texts<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = strings(texts, "texts")?;
        if texts.is_empty() {
            return Err(input("no texts given"));
        }
        let encoded = py.detach(|| self.clip.encode_text(&texts));
        tensor_out(py, &encoded.or_raise(Kind::Input)?)
    }

    /// Token ids `(N, context_length)` (int64) with the model's tokenizer: start token, BPE
    /// ids, end token, zero padding (`clip-adapter tokenize --model`).
    #[pyo3(signature = (texts, *, context_length = None))]
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        context_length: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<i64>>> {
        let texts = strings(texts, "texts")?;
        let length = context_length.unwrap_or(self.clip.config().text.context_length);
        let ids = py.detach(|| encode::tokenize(self.clip.tokenizer(), &texts, length));
        ids_out(py, ids, length)
    }

    /// The zero-shot classifier `(K, E)` (float32, unit rows): each label put into every
    /// template, normalised, averaged per class and normalised again (prompt ensembling).
    /// What `fit` takes as `text_features`.
    #[pyo3(signature = (labels, templates = None))]
    fn text_classifier<'py>(
        &self,
        py: Python<'py>,
        labels: &Bound<'py, PyAny>,
        templates: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (labels, templates) = labels_templates(labels, templates)?;
        let c = py
            .detach(|| encode::classifier(&self.clip, &labels, &templates, &mut |_, _| {}))
            .or_raise(Kind::Input)?;
        tensor_out(py, &c.weights)
    }

    /// Zero-shot class probabilities `(N, K)` (float32) of images among `labels`: the
    /// `probability` of `clip-adapter classify`, for every class. `templates` default to
    /// "a photo of a {}.".
    #[pyo3(signature = (images, labels, templates = None, *, batch_size = DEFAULT_BATCH, logits = false, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn classify<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        templates: Option<&Bound<'py, PyAny>>,
        batch_size: usize,
        logits: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (labels, templates) = labels_templates(labels, templates)?;
        let given = self::images(images)?;
        let sources = sources(&given)?;
        let mut p = Progress::new(py, progress)?;
        let scores = py.detach(|| {
            let c = encode::classifier(&self.clip, &labels, &templates, &mut |d, t| {
                p.report("encoding prompts", d as u64, Some(t as u64))
            })?;
            let f = encode::encode_images(&self.clip, &sources, batch_size, false, &mut |d, t| {
                p.report("encoding images", d as u64, Some(t as u64))
            })?;
            Ok::<_, encode::EncodeError>(encode::zero_shot_scores(&c, &f)?)
        });
        p.finish(py)?;
        let (probabilities, raw) = scores.or_raise(Kind::Input)?;
        tensor_out(py, if logits { &raw } else { &probabilities })
    }

    /// The image tower's last projection: `(weight (E, W), bias (E,) or None)`, what ProLIP
    /// trains (`encode_images(..., pre_projection=True) @ weight.T + bias` gives the
    /// embeddings).
    fn image_projection<'py>(&self, py: Python<'py>) -> PyResult<Projection<'py>> {
        let (weight, input, bias) = self.clip.image_projection().or_raise(Kind::Model)?;
        let rows = weight.len() / input.max(1);
        Ok((
            matrix_out(py, rows, input, weight)?,
            bias.map(|b| PyArray1::from_vec(py, b)),
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "Clip({:?}, embed_dim={}, image_size={})",
            self.spec,
            self.clip.config().embed_dim,
            self.clip.image_size()
        )
    }
}

/// Labels (trimmed, none empty) and templates (default: CLIP's "a photo of a {}.").
fn labels_templates(
    labels: &Bound<'_, PyAny>,
    templates: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Vec<String>, Vec<String>)> {
    let labels: Vec<String> = strings(labels, "labels")?
        .iter()
        .map(|l| l.trim().to_string())
        .collect();
    let templates = match templates {
        Some(t) => strings(t, "templates")?,
        None => vec![DEFAULT_TEMPLATE.to_string()],
    };
    Ok((labels, templates))
}

fn ids_out(
    py: Python<'_>,
    ids: Vec<Vec<u32>>,
    length: usize,
) -> PyResult<Bound<'_, PyArray2<i64>>> {
    let n = ids.len();
    let flat: Vec<i64> = ids.into_iter().flatten().map(i64::from).collect();
    let array = numpy::ndarray::Array2::from_shape_vec((n, length), flat)
        .map_err(|e| input(format!("token ids: {e}")))?;
    Ok(numpy::IntoPyArray::into_pyarray(array, py))
}

/// Token ids `(N, context_length)` (int64), as `clip-adapter tokenize [--model M]`: the
/// model's tokenizer and context length, or OpenAI's (77 tokens) without a model. Only the
/// model's config and tokenizer files are read.
#[pyfunction]
#[pyo3(signature = (texts, *, model = None, context_length = None))]
pub fn tokenize<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    model: Option<&str>,
    context_length: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let texts = strings(texts, "texts")?;
    let hub = HubOptions::from_env();
    let (tokenizer, default_length) = py
        .detach(|| encode::model_tokenizer(model, &hub, &mut ()))
        .or_raise(Kind::Model)?;
    let length = context_length.unwrap_or(default_length);
    let ids = py.detach(|| encode::tokenize(&tokenizer, &texts, length));
    ids_out(py, ids, length)
}
