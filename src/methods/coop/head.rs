//! A saved CoOp head: the learned context, the class names, the prompt layout and the model it
//! was trained on, as one safetensors file (tensor `ctx`, string metadata). The class prompts
//! are re-encoded through the same model when the head is used ([`CoopHead::text_classifier`]),
//! so the file is small (M·width or K·M·width values) and cannot drift from the model.

use std::collections::HashMap;
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

    /// Safetensors bytes of the head.
    pub fn to_bytes(&self) -> Result<Vec<u8>, safetensors::SafeTensorError> {
        let bytes: Vec<u8> = self.context.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            self.context_shape(),
            &bytes,
        )?;
        let classnames = serde_json::Value::from(self.classnames.clone()).to_string();
        let meta: HashMap<String, String> = [
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
        safetensors::serialize([("ctx", view)], Some(meta))
    }

    /// Writes the head atomically: the old file or the complete new one, never a part.
    pub fn save(&self, path: &Path) -> Result<(), CoopError> {
        let bytes = self.to_bytes().map_err(|e| CoopError::HeadFormat {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(crate::fsutil::write_atomic(path, &bytes)?)
    }

    pub fn load(path: &Path) -> Result<Self, CoopError> {
        let bytes = std::fs::read(path).map_err(|e| CoopError::Io {
            path: path.to_path_buf(),
            source: Box::new(crate::Error::io(path, e)),
        })?;
        Self::from_bytes(&bytes).map_err(|msg| CoopError::HeadFormat {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// Parses head bytes; the error says what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| format!("metadata lacks `{k}`"))
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(format!("format is `{format}`, expected `{FORMAT}`"));
        }
        let version = get("version")?;
        if version != VERSION.to_string() {
            return Err(format!(
                "version {version} is not supported (expected {VERSION})"
            ));
        }
        let number = |k: &str| -> Result<usize, String> {
            let v = get(k)?;
            v.parse()
                .map_err(|_| format!("metadata `{k}` = `{v}` is not a count"))
        };
        let classnames: Vec<String> = serde_json::from_str(&get("classnames")?)
            .map_err(|e| format!("metadata `classnames`: {e}"))?;
        let csc = match get("csc")?.as_str() {
            "true" => true,
            "false" => false,
            v => return Err(format!("metadata `csc` = `{v}`, expected true or false")),
        };
        let head = CoopHead {
            model: get("model")?,
            fingerprint: get("fingerprint")?,
            classnames,
            n_ctx: number("n_ctx")?,
            csc,
            position: get("position")?.parse()?,
            context: Vec::new(),
            width: number("width")?,
            options: get("options")?,
        };
        let t = st.tensor("ctx").map_err(|e| format!("tensor `ctx`: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor `ctx` is {:?}, expected F32", t.dtype()));
        }
        if t.shape() != head.context_shape().as_slice() {
            return Err(format!(
                "tensor `ctx` has shape {:?}, expected {:?} from the metadata",
                t.shape(),
                head.context_shape()
            ));
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
