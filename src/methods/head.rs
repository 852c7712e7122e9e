//! A trained head: it turns image features into class logits, and it is saved as one
//! safetensors file with everything needed to use it on new images (`clip-adapter predict`):
//! the model it was trained on, the class names, the prompt templates, the method and its
//! options, all as string metadata next to the tensors.
//!
//! Tensor names: `classes` (K×D class embeddings) and `logit_scale` in every head, then
//! `visual.w1`, `visual.w2`, `text.w1`, `text.w2`, `alpha`, `beta`, `alpha.u|c|q|b`,
//! `beta.u|c|q|b` (CLIP-Adapter; W1 is D×H, W2 is H×D), `weight`, `bias` (linear probe, GDA),
//! `keys`, `values` (Tip-Adapter), `alpha` (Tip, GDA), `beta` (Tip).
//! APE / APE-T: `classes`, `logit_scale`, `keys`, `values`, `value_weights`, `alpha`, `beta`,
//! `channels` (APE's refined channels; absent for APE-T). LP++: `weight`, `bias`, `alpha` (one
//! per class), `text`. CLAP: `prototypes`, `logit_scale`. ProLIP: `classes`, `logit_scale`,
//! `projection.weight` (E × W, output × input: it scores pre-projection features) and
//! `projection.bias` (ModifiedResNet towers).

use std::collections::BTreeMap;
use std::path::Path;

use super::ape::ApeHead;
use super::clap::ClapHead;
use super::clip_adapter::{AdapterModel, AdapterParams, Bottleneck, Ratio};
use super::gda::GdaHead;
use super::hyper_network::RatioNet;
use super::linalg::Matrix;
use super::linear_probe::LinearHead;
use super::lp_plus_plus::LpPlusPlusHead;
use super::prolip::{Projection, ProlipHead};
use super::tip_adapter::TipHead;
use super::zero_shot::ZeroShot;
use super::{MethodError, TextClassifier};

/// The `format` metadata value of head files.
pub const FORMAT: &str = "clip-adapter-head";
pub const VERSION: u32 = 1;

// A head is built once per run and used by reference; boxing the large variants would only add
// indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Head {
    ZeroShot(ZeroShot),
    ClipAdapter(AdapterModel),
    Linear(LinearHead),
    Tip(TipHead),
    Gda(GdaHead),
    Ape(ApeHead),
    LpPlusPlus(LpPlusPlusHead),
    Clap(ClapHead),
    /// Scores *pre-projection* features (its `dim` is the projection's input width).
    Prolip(ProlipHead),
}

impl Head {
    /// Class logits for image features (N×D, un-normalised as the cache stores them).
    pub fn logits(&self, x: &Matrix) -> Matrix {
        match self {
            Head::ZeroShot(h) => h.logits(x),
            Head::ClipAdapter(h) => h.logits(x),
            Head::Linear(h) => h.logits(x),
            Head::Tip(h) => h.logits(x),
            Head::Gda(h) => h.logits(x),
            Head::Ape(h) => h.logits(x),
            Head::LpPlusPlus(h) => h.logits(x),
            Head::Clap(h) => h.logits(x),
            Head::Prolip(h) => h.logits(x),
        }
    }

    /// The feature width the head expects.
    pub fn dim(&self) -> usize {
        match self {
            Head::ZeroShot(h) => h.text.weights.cols,
            Head::ClipAdapter(h) => h.classes.cols,
            Head::Linear(h) => h.weight.cols,
            Head::Tip(h) => h.classes.cols,
            Head::Gda(h) => h.classes.cols,
            Head::Ape(h) => h.classes.cols,
            Head::LpPlusPlus(h) => h.weight.cols,
            Head::Clap(h) => h.prototypes.cols,
            Head::Prolip(h) => h.projection.input_dim(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Head::ZeroShot(_) => "zero-shot",
            Head::ClipAdapter(_) => "clip-adapter",
            Head::Linear(_) => "linear",
            Head::Tip(_) => "tip-adapter",
            Head::Gda(_) => "gda",
            Head::Ape(_) => "ape",
            Head::LpPlusPlus(_) => "lp++",
            Head::Clap(_) => "clap",
            Head::Prolip(_) => "prolip",
        }
    }
}

/// What a head file says about how the head was made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadInfo {
    /// The CLIP model it was trained on, as a reference that resolves from any directory: the
    /// absolute path of a model directory, or a hub id (e.g. `timm/resnet50_clip.openai`).
    pub model: String,
    /// The model's content fingerprint (`features::model_fingerprint`); `None` in heads saved
    /// before it was recorded.
    pub model_fingerprint: Option<String>,
    pub classnames: Vec<String>,
    pub templates: Vec<String>,
    /// Method name (`clip-adapter`, …).
    pub method: String,
    /// The method's options and chosen hyper-parameters, as JSON.
    pub options: String,
}

struct Tensors(Vec<(String, Vec<usize>, Vec<f32>)>);

impl Tensors {
    fn put(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.0.push((name.to_string(), shape, data));
    }
    fn matrix(&mut self, name: &str, m: &Matrix) {
        self.put(name, vec![m.rows, m.cols], m.data.clone());
    }
    fn scalar(&mut self, name: &str, v: f32) {
        self.put(name, vec![1], vec![v]);
    }
}

fn put_ratio(t: &mut Tensors, name: &str, r: &Ratio) {
    match r {
        Ratio::Fixed(v) => t.scalar(name, *v),
        Ratio::Scalar(v) => t.scalar(name, v[0]),
        Ratio::Hyper(n) => {
            t.put(&format!("{name}.u"), vec![n.input, n.hidden], n.u.clone());
            t.put(&format!("{name}.c"), vec![n.hidden], n.c.clone());
            t.put(&format!("{name}.q"), vec![n.hidden], n.q.clone());
            t.put(&format!("{name}.b"), vec![1], n.b.clone());
        }
    }
}

/// Serialises `head` with `info` as safetensors bytes.
pub fn to_bytes(head: &Head, info: &HeadInfo) -> Vec<u8> {
    let mut t = Tensors(Vec::new());
    let mut meta = BTreeMap::new();
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("version".to_string(), VERSION.to_string());
    meta.insert("head".to_string(), head.kind().to_string());
    meta.insert("model".to_string(), info.model.clone());
    if let Some(f) = &info.model_fingerprint {
        meta.insert("model_fingerprint".to_string(), f.clone());
    }
    meta.insert("classnames".to_string(), json(&info.classnames));
    meta.insert("templates".to_string(), json(&info.templates));
    meta.insert("method".to_string(), info.method.clone());
    meta.insert("options".to_string(), info.options.clone());
    match head {
        Head::ZeroShot(h) => {
            t.matrix("classes", &h.text.weights);
            t.scalar("logit_scale", h.text.logit_scale);
        }
        Head::ClipAdapter(h) => {
            t.matrix("classes", &h.classes);
            t.scalar("logit_scale", h.logit_scale);
            for (name, b) in [("visual", &h.params.visual), ("text", &h.params.text)] {
                if let Some(b) = b {
                    t.put(&format!("{name}.w1"), vec![b.dim, b.hidden], b.w1.clone());
                    t.put(&format!("{name}.w2"), vec![b.hidden, b.dim], b.w2.clone());
                    meta.insert("relu_out".to_string(), b.relu_out.to_string());
                }
            }
            put_ratio(&mut t, "alpha", &h.params.alpha);
            put_ratio(&mut t, "beta", &h.params.beta);
        }
        Head::Linear(h) => {
            t.matrix("weight", &h.weight);
            t.put("bias", vec![h.bias.len()], h.bias.clone());
        }
        Head::Tip(h) => {
            t.matrix("classes", &h.classes);
            t.scalar("logit_scale", h.logit_scale);
            t.matrix("keys", &h.keys);
            // Class indices are exact in f32 up to 2^24 classes.
            t.put(
                "values",
                vec![h.values.len()],
                h.values.iter().map(|&v| v as f32).collect(),
            );
            t.scalar("alpha", h.alpha);
            t.scalar("beta", h.beta);
        }
        Head::Gda(h) => {
            t.matrix("classes", &h.classes);
            t.scalar("logit_scale", h.logit_scale);
            t.matrix("weight", &h.weight);
            t.put("bias", vec![h.bias.len()], h.bias.clone());
            t.scalar("alpha", h.alpha);
        }
        Head::Ape(h) => {
            t.matrix("classes", &h.classes);
            t.scalar("logit_scale", h.logit_scale);
            t.matrix("keys", &h.keys);
            t.put(
                "values",
                vec![h.values.len()],
                h.values.iter().map(|&v| v as f32).collect(),
            );
            t.put(
                "value_weights",
                vec![h.value_weights.len()],
                h.value_weights.clone(),
            );
            t.scalar("alpha", h.alpha);
            t.scalar("beta", h.beta);
            if !h.channels.is_empty() {
                // Channel indices are exact in f32 up to 2^24 channels.
                t.put(
                    "channels",
                    vec![h.channels.len()],
                    h.channels.iter().map(|&c| c as f32).collect(),
                );
            }
        }
        Head::LpPlusPlus(h) => {
            t.matrix("weight", &h.weight);
            t.put("bias", vec![h.bias.len()], h.bias.clone());
            t.put("alpha", vec![h.alpha.len()], h.alpha.clone());
            t.matrix("text", &h.text);
        }
        Head::Clap(h) => {
            t.matrix("prototypes", &h.prototypes);
            t.scalar("logit_scale", h.logit_scale);
        }
        Head::Prolip(h) => {
            t.matrix("classes", &h.text.weights);
            t.scalar("logit_scale", h.text.logit_scale);
            t.matrix("projection.weight", &h.projection.weight);
            if let Some(b) = &h.projection.bias {
                t.put("projection.bias", vec![b.len()], b.clone());
            }
        }
    }
    // safetensors: u64 header length, JSON header (sorted keys), then the raw little-endian data.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(&meta).unwrap_or_default(),
    );
    let mut offset = 0usize;
    t.0.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, shape, data) in &t.0 {
        let end = offset + 4 * data.len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, data) in &t.0 {
        data.iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    out
}

/// Writes the head atomically (temp file + rename).
pub fn save(path: &Path, head: &Head, info: &HeadInfo) -> Result<(), MethodError> {
    Ok(crate::fsutil::write_atomic(path, &to_bytes(head, info))?)
}

/// Reads a head file back, refusing one that is malformed or inconsistent (see
/// [`from_bytes`]).
pub fn load(path: &Path) -> Result<(Head, HeadInfo), MethodError> {
    let bytes = std::fs::read(path).map_err(|source| MethodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes).map_err(|source| MethodError::HeadFormat {
        path: path.to_path_buf(),
        source,
    })
}

/// Why head bytes are not a usable head.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    #[error("not a safetensors file")]
    Safetensors(#[from] safetensors::SafeTensorError),

    #[error("metadata `{key}` is not valid JSON")]
    MetadataJson {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("{0}")]
    Invalid(String),
}

/// A tensor's expected shape: each dimension either a known size or free.
type Dims<'a> = &'a [Option<usize>];

/// Reads tensors out of a head file, checking dtype, shape and finiteness, and remembers which
/// ones were read so that leftovers can be refused.
struct Reader<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    read: std::cell::RefCell<Vec<String>>,
}

impl Reader<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.names().contains(&name)
    }

    fn tensor(
        &self,
        name: &str,
        dims: Dims,
        what: &str,
    ) -> Result<(Vec<usize>, Vec<f32>), HeadError> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| HeadError::Invalid(format!("tensor `{name}` ({what}) is missing")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(HeadError::Invalid(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        let shape = t.shape().to_vec();
        let fits = shape.len() == dims.len()
            && shape
                .iter()
                .zip(dims)
                .all(|(s, d)| d.is_none_or(|d| d == *s));
        if !fits {
            let expected: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("_".to_string(), |d| d.to_string()))
                .collect();
            return Err(HeadError::Invalid(format!(
                "tensor `{name}` has shape {shape:?}, expected [{}] ({what})",
                expected.join(", ")
            )));
        }
        if let Some(&0) = shape.iter().find(|&&s| s == 0) {
            return Err(HeadError::Invalid(format!(
                "tensor `{name}` has shape {shape:?}: an empty dimension"
            )));
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(HeadError::Invalid(format!(
                "tensor `{name}` holds {} at position {i}; a head's weights must be finite",
                data[i]
            )));
        }
        self.read.borrow_mut().push(name.to_string());
        Ok((shape, data))
    }

    fn matrix(
        &self,
        name: &str,
        rows: Option<usize>,
        cols: Option<usize>,
        what: &str,
    ) -> Result<Matrix, HeadError> {
        let (s, data) = self.tensor(name, &[rows, cols], what)?;
        Ok(Matrix {
            rows: s[0],
            cols: s[1],
            data,
        })
    }

    fn vector(&self, name: &str, len: usize, what: &str) -> Result<Vec<f32>, HeadError> {
        Ok(self.tensor(name, &[Some(len)], what)?.1)
    }

    fn scalar(&self, name: &str, what: &str) -> Result<f32, HeadError> {
        Ok(self.tensor(name, &[Some(1)], what)?.1[0])
    }

    /// The positive `logit_scale`.
    fn logit_scale(&self) -> Result<f32, HeadError> {
        let v = self.scalar("logit_scale", "one value")?;
        if v <= 0.0 {
            return Err(HeadError::Invalid(format!(
                "tensor `logit_scale` is {v}; CLIP's logit scale is positive"
            )));
        }
        Ok(v)
    }

    /// Refuses tensors the head kind does not have (a file mixing two heads, or one whose
    /// branches were renamed, would otherwise load with parts silently ignored).
    fn no_leftovers(&self, kind: &str) -> Result<(), HeadError> {
        let read = self.read.borrow();
        let mut extra: Vec<&str> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !read.iter().any(|r| r == *n))
            .collect();
        extra.sort_unstable();
        if extra.is_empty() {
            return Ok(());
        }
        Err(HeadError::Invalid(format!(
            "tensor(s) {} are not part of a `{kind}` head",
            extra
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Parses and validates head bytes: format and version, every tensor's dtype and shape against
/// the others (`classes` K×D fixes K and D), finite weights, as many class names as the head has
/// classes (at least two), and options parsed strictly.
pub fn from_bytes(bytes: &[u8]) -> Result<(Head, HeadInfo), HeadError> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let bad = HeadError::Invalid;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("metadata lacks `{k}`")))
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(bad(format!("format is `{format}`, expected `{FORMAT}`")));
    }
    let version = get("version")?;
    if version != VERSION.to_string() {
        return Err(bad(format!(
            "version `{version}` is not supported (expected {VERSION})"
        )));
    }
    let list = |key: &'static str| -> Result<Vec<String>, HeadError> {
        serde_json::from_str(&get(key)?).map_err(|source| HeadError::MetadataJson { key, source })
    };
    let options = get("options")?;
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&options).map_err(
        |source| HeadError::MetadataJson {
            key: "options",
            source,
        },
    )?;
    let info = HeadInfo {
        model: get("model")?,
        model_fingerprint: meta.get("model_fingerprint").cloned(),
        classnames: list("classnames")?,
        templates: list("templates")?,
        method: get("method")?,
        options,
    };
    let r = Reader {
        st: &st,
        read: Default::default(),
    };
    let kind = get("head")?;
    // `classes` (or a linear head's `weight`) fixes the class count K and the feature width D;
    // every other tensor is checked against them.
    let (first, k_by_d) = match kind.as_str() {
        "linear" | "lp++" => ("weight", "K × D, one row per class"),
        "clap" => ("prototypes", "K × D, one prototype per class"),
        _ => ("classes", "K × D, one class embedding per row"),
    };
    let anchor = r.matrix(first, None, None, k_by_d)?;
    let (k, d) = (anchor.rows, anchor.cols);
    let min = crate::data::MIN_CLASSES;
    if k < min {
        return Err(bad(format!(
            "`{first}` has {k} row(s): the head scores {k} class(es), a classifier needs at least {min}"
        )));
    }
    if info.classnames.len() != k {
        return Err(bad(format!(
            "metadata `classnames` names {} class(es), but the head scores {k} (`{first}` has {k} rows)",
            info.classnames.len()
        )));
    }
    let head = match kind.as_str() {
        "zero-shot" => Head::ZeroShot(ZeroShot::new(&TextClassifier {
            weights: anchor,
            logit_scale: r.logit_scale()?,
        })),
        "linear" => Head::Linear(LinearHead {
            weight: anchor,
            bias: r.vector("bias", k, "one per class")?,
        }),
        "gda" => Head::Gda(GdaHead {
            weight: r.matrix("weight", Some(k), Some(d), "K × D, like `classes`")?,
            bias: r.vector("bias", k, "one per class")?,
            alpha: r.scalar("alpha", "one value")?,
            classes: anchor,
            logit_scale: r.logit_scale()?,
        }),
        "tip-adapter" => {
            let keys = r.matrix("keys", None, Some(d), "N × D, one cache key per row")?;
            let values = r.vector("values", keys.rows, "one class index per key")?;
            let values = values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v >= 0.0 && v.fract() == 0.0 && (v as usize) < k {
                        Ok(v as usize)
                    } else {
                        Err(bad(format!(
                            "tensor `values` holds {v} at position {i}; expected a class index \
                             0..{k}"
                        )))
                    }
                })
                .collect::<Result<_, _>>()?;
            Head::Tip(TipHead {
                keys,
                values,
                alpha: r.scalar("alpha", "one value")?,
                beta: r.scalar("beta", "one value")?,
                classes: anchor,
                logit_scale: r.logit_scale()?,
            })
        }
        "clip-adapter" => {
            let branches =
                ["visual", "text"].map(|b| r.has(&format!("{b}.w1")) || r.has(&format!("{b}.w2")));
            if !branches.contains(&true) {
                return Err(bad(
                    "a `clip-adapter` head needs `visual.w1`/`visual.w2` or `text.w1`/`text.w2`"
                        .into(),
                ));
            }
            let relu_out = match meta.get("relu_out").map(String::as_str) {
                Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(bad(format!(
                        "metadata `relu_out` is `{other}`, expected `true` or `false`"
                    )))
                }
                None => return Err(bad("metadata lacks `relu_out`".into())),
            };
            let bottleneck = |name: &str, on: bool| -> Result<Option<Bottleneck>, HeadError> {
                if !on {
                    return Ok(None);
                }
                let w1 = r.matrix(&format!("{name}.w1"), Some(d), None, "D × H")?;
                let h = w1.cols;
                let w2 = r.matrix(
                    &format!("{name}.w2"),
                    Some(h),
                    Some(d),
                    "H × D, H from `.w1`",
                )?;
                Ok(Some(Bottleneck {
                    dim: d,
                    hidden: h,
                    w1: w1.data,
                    w2: w2.data,
                    relu_out,
                }))
            };
            let ratio = |name: &str| -> Result<Ratio, HeadError> {
                if !r.has(&format!("{name}.u")) {
                    return Ok(Ratio::Fixed(r.scalar(name, "one value")?));
                }
                // The hyper-network reads a feature and the classifier summary side by side.
                let u = r.matrix(&format!("{name}.u"), Some(2 * d), None, "2D × hidden")?;
                let hidden = u.cols;
                Ok(Ratio::Hyper(RatioNet {
                    input: u.rows,
                    hidden,
                    u: u.data,
                    c: r.vector(&format!("{name}.c"), hidden, "hidden")?,
                    q: r.vector(&format!("{name}.q"), hidden, "hidden")?,
                    b: r.vector(&format!("{name}.b"), 1, "one value")?,
                }))
            };
            Head::ClipAdapter(AdapterModel {
                params: AdapterParams {
                    visual: bottleneck("visual", branches[0])?,
                    text: bottleneck("text", branches[1])?,
                    alpha: ratio("alpha")?,
                    beta: ratio("beta")?,
                },
                classes: anchor,
                logit_scale: r.logit_scale()?,
            })
        }
        "ape" => {
            let keys = r.matrix("keys", None, Some(d), "N × D, one cache key per row")?;
            let n = keys.rows;
            let indices = |name: &str, len: Option<usize>, below: usize, what: &str| {
                let (_, v) = r.tensor(name, &[len], what)?;
                v.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        if v >= 0.0 && v.fract() == 0.0 && (v as usize) < below {
                            Ok(v as usize)
                        } else {
                            Err(bad(format!(
                                "tensor `{name}` holds {v} at position {i}; expected an index \
                                 0..{below}"
                            )))
                        }
                    })
                    .collect::<Result<Vec<usize>, HeadError>>()
            };
            Head::Ape(ApeHead {
                values: indices("values", Some(n), k, "one class index per key")?,
                value_weights: r.vector("value_weights", n, "one weight per key")?,
                channels: if r.has("channels") {
                    indices("channels", None, d, "the refined feature channels")?
                } else {
                    Vec::new()
                },
                alpha: r.scalar("alpha", "one value")?,
                beta: r.scalar("beta", "one value")?,
                keys,
                classes: anchor,
                logit_scale: r.logit_scale()?,
            })
        }
        "lp++" => Head::LpPlusPlus(LpPlusPlusHead {
            bias: r.vector("bias", k, "one per class")?,
            alpha: r.vector("alpha", k, "one blending multiplier per class")?,
            text: r.matrix("text", Some(k), Some(d), "K × D text embeddings")?,
            weight: anchor,
        }),
        "clap" => Head::Clap(ClapHead {
            prototypes: anchor,
            logit_scale: r.logit_scale()?,
        }),
        "prolip" => {
            let weight = r.matrix(
                "projection.weight",
                Some(d),
                None,
                "D × W, the projection from the image tower's W-wide output (output × input)",
            )?;
            let bias = if r.has("projection.bias") {
                Some(r.vector("projection.bias", d, "one per embedding channel")?)
            } else {
                None
            };
            Head::Prolip(ProlipHead {
                projection: Projection { weight, bias },
                text: TextClassifier {
                    weights: anchor,
                    logit_scale: r.logit_scale()?,
                },
            })
        }
        other => return Err(bad(format!("unknown head kind `{other}`"))),
    };
    r.no_leftovers(&kind)?;
    Ok((head, info))
}
