//! A saved CoOp head: the learned context, the class names, the prompt layout and the model it
//! was trained on, as one safetensors file (tensor `ctx`, string metadata). The class prompts
//! are re-encoded through the same model when the head is used ([`CoopHead::text_classifier`]),
//! so the file is small (M·width or K·M·width values) and cannot drift from the model.

use std::collections::BTreeMap;

use crate::methods::head::HeadError;
use std::path::Path;

use super::{ClassPosition, CoopError, PromptModel};
use crate::methods::TextClassifier;

/// The `format` metadata value of CoOp head files.
pub const FORMAT: &str = "clip-adapter-coop-head";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct CoopHead {
    /// The model as the user named it.
    pub model: String,
    /// Its content fingerprint: a head only loads onto the same model files.
    pub fingerprint: String,
    pub classnames: Vec<String>,
    pub n_ctx: usize,
    pub csc: bool,
    pub position: ClassPosition,
    /// `(M, width)` or, class-specific, `(K, M, width)`, row-major.
    pub context: Vec<f32>,
    /// The text tower's token-embedding width.
    pub width: usize,
    /// The training options, `key=value` ([`super::CoopOptions::describe`]).
    pub options: String,
}

/// Whether `path` holds a CoOp head (by its `format` metadata); anything unreadable is not one,
/// and is left to the other head loader to report.
pub fn is_coop_head(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        safetensors::SafeTensors::read_metadata(&bytes).is_ok_and(|(_, header)| {
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .is_some_and(|f| f == FORMAT)
        })
    })
}

impl CoopHead {
    /// What the head records, as the other heads' metadata reads (for the model check of
    /// `predict`); a CoOp head has no templates, its prompts are learned.
    pub fn info(&self) -> crate::methods::head::HeadInfo {
        crate::methods::head::HeadInfo {
            model: self.model.clone(),
            model_fingerprint: Some(self.fingerprint.clone()),
            classnames: self.classnames.clone(),
            templates: Vec::new(),
            method: "coop".to_string(),
            options: self.options.clone(),
        }
    }

    fn context_shape(&self) -> Vec<usize> {
        match self.csc {
            true => vec![self.classnames.len(), self.n_ctx, self.width],
            false => vec![self.n_ctx, self.width],
        }
    }

    /// Safetensors bytes of the head (the crate's one writer: sorted, checksummed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let classnames = serde_json::Value::from(self.classnames.clone()).to_string();
        let meta: BTreeMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("method", "coop".to_string()),
            ("model", self.model.clone()),
            ("fingerprint", self.fingerprint.clone()),
            ("classnames", classnames),
            ("n_ctx", self.n_ctx.to_string()),
            ("csc", self.csc.to_string()),
            ("position", self.position.as_str().to_string()),
            ("width", self.width.to_string()),
            ("options", self.options.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ctx = crate::safetensors_file::F32Tensor {
            name: "ctx".into(),
            shape: self.context_shape(),
            data: self.context.clone(),
        };
        crate::safetensors_file::to_bytes(vec![ctx], meta)
    }

    /// Writes the head atomically: the old file or the complete new one, never a part.
    pub fn save(&self, path: &Path) -> Result<(), CoopError> {
        Ok(crate::fsutil::write_atomic(path, &self.to_bytes())?)
    }

    pub fn load(path: &Path) -> Result<Self, CoopError> {
        let bytes = std::fs::read(path).map_err(|e| CoopError::Io {
            path: path.to_path_buf(),
            source: Box::new(crate::Error::io(path, e)),
        })?;
        Self::from_bytes(&bytes).map_err(|source| CoopError::HeadFormat {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses head bytes; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeadError> {
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        crate::safetensors_file::verify_checksum(bytes, &meta)?;
        let get = |key: &'static str| {
            meta.get(key)
                .cloned()
                .ok_or(HeadError::MissingMetadata { key })
        };
        let bad = |key: &'static str, value: String, expected: &str| HeadError::Metadata {
            key,
            value,
            expected: expected.to_string(),
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(bad("format", format, &format!("`{FORMAT}`")));
        }
        let version = get("version")?;
        if version != VERSION.to_string() {
            return Err(bad("version", version, &VERSION.to_string()));
        }
        let number = |key: &'static str| -> Result<usize, HeadError> {
            let v = get(key)?;
            v.parse().map_err(|_| bad(key, v, "a count"))
        };
        let classnames: Vec<String> =
            serde_json::from_str(&get("classnames")?).map_err(|source| {
                HeadError::MetadataJson {
                    key: "classnames",
                    source,
                }
            })?;
        let csc = match get("csc")?.as_str() {
            "true" => true,
            "false" => false,
            v => return Err(bad("csc", v.to_string(), "true or false")),
        };
        let position = get("position")?;
        let head = CoopHead {
            model: get("model")?,
            fingerprint: get("fingerprint")?,
            classnames,
            n_ctx: number("n_ctx")?,
            csc,
            position: position
                .parse()
                .map_err(|_| bad("position", position.clone(), "end, middle or front"))?,
            context: Vec::new(),
            width: number("width")?,
            options: get("options")?,
        };
        let t = st.tensor("ctx").map_err(|_| HeadError::MissingTensor {
            name: "ctx".into(),
            what: "the learned context".into(),
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(HeadError::Dtype {
                name: "ctx".into(),
                dtype: format!("{:?}", t.dtype()),
            });
        }
        let expected = head.context_shape();
        if t.shape() != expected.as_slice() {
            return Err(HeadError::Shape {
                name: "ctx".into(),
                shape: t.shape().to_vec(),
                expected: expected
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                what: "from the metadata's n_ctx, csc and width".into(),
            });
        }
        let context = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(CoopHead { context, ..head })
    }

    /// The class prompts with the learned context, encoded once through `model` (the model
    /// the head was trained on; `path` names the head in the error otherwise).
    pub fn text_classifier(
        &self,
        path: &Path,
        model: &PromptModel,
    ) -> Result<TextClassifier, CoopError> {
        if model.fingerprint != self.fingerprint || model.encoder.config().width != self.width {
            return Err(CoopError::OtherModel {
                path: path.to_path_buf(),
                head: format!("`{}` (fingerprint {})", self.model, self.fingerprint),
                model: format!("`{}` (fingerprint {})", model.name, model.fingerprint),
            });
        }
        let learner = model.learner(&self.classnames, self.n_ctx, self.csc, self.position)?;
        model.classifier(&learner, &self.context)
    }
}
