//! A model directory's `tokenizer_config.json` (transformers' tokenizer settings), read by the
//! SentencePiece and Gemma tokenizers for their special tokens and flags.

use std::path::{Path, PathBuf};

use super::TokenizerError;

/// The parsed file and where it came from.
pub(crate) struct TokenizerConfig {
    pub path: PathBuf,
    json: serde_json::Value,
}

impl TokenizerConfig {
    /// `dir/tokenizer_config.json`, or `None` when the directory has none.
    pub fn read(dir: &Path) -> Result<Option<Self>, TokenizerError> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Io {
            path: path.clone(),
            source,
        })?;
        let json = serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Self { path, json }))
    }

    /// A special token: a string, or an added-token object's `content`.
    pub fn token(&self, key: &str) -> Option<String> {
        match &self.json[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            v => v["content"].as_str().map(str::to_string),
        }
    }

    /// Overwrites each slot whose key holds a token.
    pub fn tokens_into<const N: usize>(&self, slots: [(&str, &mut String); N]) {
        for (key, slot) in slots {
            if let Some(t) = self.token(key) {
                *slot = t;
            }
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.json[key].as_bool()
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.json[key].as_str()
    }
}
