//! A trained head: it turns image features into class logits, and it is saved as one
//! safetensors file with everything needed to use it on new images (`clip-adapter predict`):
//! the model it was trained on, the class names, the prompt templates, the method and its
//! options, all as string metadata next to the tensors.
//!
//! Tensor names: `classes` (K×D class embeddings) and `logit_scale` in every head, then
//! `visual.w1`, `visual.w2`, `text.w1`, `text.w2`, `alpha`, `beta`, `alpha.u|c|q|b`,
//! `beta.u|c|q|b` (CLIP-Adapter; W1 is D×H, W2 is H×D), `weight`, `bias` (linear probe, GDA),
//! `keys`, `values` (Tip-Adapter), `alpha` (Tip, GDA), `beta` (Tip).

use std::collections::BTreeMap;
use std::path::Path;

use super::clip_adapter::{AdapterModel, AdapterParams, Bottleneck, Ratio};
use super::gda::GdaHead;
use super::hyper_network::RatioNet;
use super::linalg::Matrix;
use super::linear_probe::LinearHead;
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
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Head::ZeroShot(_) => "zero-shot",
            Head::ClipAdapter(_) => "clip-adapter",
            Head::Linear(_) => "linear",
            Head::Tip(_) => "tip-adapter",
            Head::Gda(_) => "gda",
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
    while h.len() % 8 != 0 {
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
    crate::fsutil::write_atomic(path, &to_bytes(head, info)).map_err(|e| MethodError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Reads a head file back.
pub fn load(path: &Path) -> Result<(Head, HeadInfo), MethodError> {
    let bytes = std::fs::read(path).map_err(|source| MethodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes).map_err(|msg| MethodError::HeadFormat {
        path: path.to_path_buf(),
        msg,
    })
}

/// Parses head bytes; the error says what is wrong.
pub fn from_bytes(bytes: &[u8]) -> Result<(Head, HeadInfo), String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| format!("metadata lacks `{k}`"))
    };
    if get("format")? != FORMAT {
        return Err(format!(
            "format is `{}`, expected `{FORMAT}`",
            get("format")?
        ));
    }
    if get("version")? != VERSION.to_string() {
        return Err(format!(
            "version {} is not supported (expected {VERSION})",
            get("version")?
        ));
    }
    let list = |k: &str| -> Result<Vec<String>, String> {
        serde_json::from_str(&get(k)?).map_err(|e| format!("metadata `{k}`: {e}"))
    };
    let info = HeadInfo {
        model: get("model")?,
        model_fingerprint: meta.get("model_fingerprint").cloned(),
        classnames: list("classnames")?,
        templates: list("templates")?,
        method: get("method")?,
        options: get("options")?,
    };
    let has = |name: &str| st.names().contains(&name);
    let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), String> {
        let t = st
            .tensor(name)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, expected F32", t.dtype()));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((t.shape().to_vec(), data))
    };
    let matrix = |name: &str| -> Result<Matrix, String> {
        match tensor(name)? {
            (s, d) if s.len() == 2 => Ok(Matrix {
                rows: s[0],
                cols: s[1],
                data: d,
            }),
            (s, _) => Err(format!(
                "tensor `{name}` has shape {s:?}, expected 2 dimensions"
            )),
        }
    };
    let scalar = |name: &str| -> Result<f32, String> {
        match tensor(name)? {
            (_, d) if d.len() == 1 => Ok(d[0]),
            (s, _) => Err(format!(
                "tensor `{name}` has shape {s:?}, expected one value"
            )),
        }
    };
    let vector = |name: &str| tensor(name).map(|t| t.1);
    let kind = get("head")?;
    let head = match kind.as_str() {
        "zero-shot" => Head::ZeroShot(ZeroShot::new(&TextClassifier {
            weights: matrix("classes")?,
            logit_scale: scalar("logit_scale")?,
        })),
        "linear" => Head::Linear(LinearHead {
            weight: matrix("weight")?,
            bias: vector("bias")?,
        }),
        "gda" => Head::Gda(GdaHead {
            weight: matrix("weight")?,
            bias: vector("bias")?,
            alpha: scalar("alpha")?,
            classes: matrix("classes")?,
            logit_scale: scalar("logit_scale")?,
        }),
        "tip-adapter" => Head::Tip(TipHead {
            keys: matrix("keys")?,
            values: vector("values")?.into_iter().map(|v| v as usize).collect(),
            alpha: scalar("alpha")?,
            beta: scalar("beta")?,
            classes: matrix("classes")?,
            logit_scale: scalar("logit_scale")?,
        }),
        "clip-adapter" => {
            let relu_out = meta.get("relu_out").map(|v| v == "true").unwrap_or(true);
            let bottleneck = |name: &str| -> Result<Option<Bottleneck>, String> {
                if !has(&format!("{name}.w1")) {
                    return Ok(None);
                }
                let w1 = matrix(&format!("{name}.w1"))?;
                let w2 = matrix(&format!("{name}.w2"))?;
                Ok(Some(Bottleneck {
                    dim: w1.rows,
                    hidden: w1.cols,
                    w1: w1.data,
                    w2: w2.data,
                    relu_out,
                }))
            };
            let ratio = |name: &str| -> Result<Ratio, String> {
                if has(&format!("{name}.u")) {
                    let u = matrix(&format!("{name}.u"))?;
                    return Ok(Ratio::Hyper(RatioNet {
                        input: u.rows,
                        hidden: u.cols,
                        u: u.data,
                        c: vector(&format!("{name}.c"))?,
                        q: vector(&format!("{name}.q"))?,
                        b: vector(&format!("{name}.b"))?,
                    }));
                }
                Ok(Ratio::Fixed(scalar(name)?))
            };
            Head::ClipAdapter(AdapterModel {
                params: AdapterParams {
                    visual: bottleneck("visual")?,
                    text: bottleneck("text")?,
                    alpha: ratio("alpha")?,
                    beta: ratio("beta")?,
                },
                classes: matrix("classes")?,
                logit_scale: scalar("logit_scale")?,
            })
        }
        other => return Err(format!("unknown head kind `{other}`")),
    };
    Ok((head, info))
}
