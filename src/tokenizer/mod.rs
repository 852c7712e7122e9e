//! CLIP's text tokenizer: byte-level BPE over a 49,408-token vocabulary, context 77.
//!
//! Token ids match both references exactly (checked on a corpus of several hundred strings in
//! `tests/tokenizer.rs`; see `docs/tokenizer.md`):
//!
//! * open_clip 3.3.0, `src/open_clip/tokenizer.py` (`SimpleTokenizer`, a copy of OpenAI's
//!   `clip/simple_tokenizer.py`): [`Cleaning::OpenClip`], the default, and what the paper's code
//!   runs. Text goes through ftfy's `fix_text`, `html.unescape` twice, whitespace collapsing
//!   and Python's `str.lower`.
//! * transformers 5.23, `src/transformers/models/clip/tokenization_clip.py` (`CLIPTokenizer`,
//!   backed by `tokenizers`): [`Cleaning::Transformers`]. Text is only NFC-normalised,
//!   whitespace-collapsed and lower-cased character by character.
//!
//! The two differ on text that needs cleaning (HTML entities, curly quotes, full-width letters,
//! control characters, mojibake, a final capital sigma) and on literal special tokens:
//! open_clip recognises `<start_of_text>` / `<end_of_text>`, transformers `<|startoftext|>` /
//! `<|endoftext|>`. On ordinary prompts they agree.
//!
//! The OpenAI vocabulary (`bpe_simple_vocab_16e6.txt.gz`, as shipped in the open_clip wheel) is
//! embedded in the binary, because open_clip checkpoints carry none; Hugging Face layouts
//! (`tokenizer.json`, or `vocab.json` + `merges.txt`) load from files.
//!
//! ```
//! use clip_adapter::tokenizer::{Tokenizer, CONTEXT_LENGTH};
//!
//! let tokenizer = Tokenizer::openai()?;
//! assert_eq!(
//!     tokenizer.encode("a photo of a cat."),
//!     [320, 1125, 539, 320, 2368, 269]
//! );
//! let row = tokenizer.tokenize("a photo of a cat.", CONTEXT_LENGTH);
//! assert_eq!(row[..8], [49406, 320, 1125, 539, 320, 2368, 269, 49407]);
//! assert!(row[8..].iter().all(|&id| id == 0));
//! assert_eq!(tokenizer.decode(&row[1..7]), "a photo of a cat . ");
//! # Ok::<(), clip_adapter::tokenizer::TokenizerError>(())
//! ```

pub(crate) mod bpe;
mod clean;
mod config;
pub mod gemma;
mod html;
mod mojibake;
pub mod sentencepiece;
mod spm_model;
mod tables;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::Deserialize;

use bpe::{byte_tokens_in_vocab_order, bytes_to_unicode, Bpe, Merge, END_OF_WORD};
use clean::Cleaner;
use gemma::{is_gemma_json, Gemma, OpenClipClean};
use sentencepiece::{SentencePiece, SiglipOptions};

/// CLIP's text context: start token, at most 75 BPE tokens, end token.
pub const CONTEXT_LENGTH: usize = 77;

/// The start and end tokens as the Hugging Face vocabularies (and this crate) name them.
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

const EMBEDDED_VOCAB: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
const EMBEDDED_VOCAB_NAME: &str = "assets/bpe_simple_vocab_16e6.txt.gz (embedded)";

/// The OpenAI file has 262,145 merge lines; CLIP uses the first 49152 - 256 - 2 of them, so that
/// 256 byte tokens, their 256 end-of-word forms, the merges and the 2 special tokens make 49,408.
const OPENAI_MERGES: usize = 49152 - 256 - 2;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The file parsed but does not hold what a CLIP BPE tokenizer needs.
    #[error("{path}: {location}: expected {expected}")]
    Format {
        path: PathBuf,
        location: String,
        expected: String,
    },

    /// Kept whole rather than as `#[source]`: its text is the message.
    #[error("{path}: {limit}")]
    Limit {
        path: PathBuf,
        limit: crate::limits::LimitError,
    },

    #[error("{path}: the vocabulary has no token `{token}`, which CLIP's byte-level BPE needs")]
    MissingToken { path: PathBuf, token: String },

    /// Data compiled into the binary is unreadable: a build problem, not a user error.
    #[error("{asset}: {msg}")]
    EmbeddedAsset { asset: &'static str, msg: String },
}

/// Which reference's text clean-up and special-token handling to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleaning {
    /// open_clip / OpenAI CLIP: ftfy + HTML unescaping + whitespace collapsing + `str.lower`;
    /// the literals `<start_of_text>` and `<end_of_text>` become the start and end ids.
    #[default]
    OpenClip,
    /// transformers' `CLIPTokenizer`: NFC + whitespace collapsing + per-character lower-casing;
    /// the literal `<|endoftext|>` (matched before normalisation) and `<|startoftext|>` (after)
    /// become the end and start ids.
    Transformers,
}

/// transformers' added-token flag: whether a special token is matched in the normalised text
/// (`normalized: true`) or in the raw input.
#[derive(Debug, Clone, Copy)]
struct Special {
    id: u32,
    normalized: bool,
}

/// A CLIP tokenizer. Cloning is cheap (the vocabulary is shared).
/// CLIP's byte-level BPE with its text clean-up.
#[derive(Clone)]
struct ClipBpe {
    bpe: Arc<Bpe>,
    cleaner: Arc<Cleaner>,
    patterns: Arc<Patterns>,
    cleaning: Cleaning,
    sot: Special,
    eot: Special,
}

impl std::fmt::Debug for ClipBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipBpe")
            .field("vocab_size", &self.vocab_size())
            .field("cleaning", &self.cleaning)
            .field("sot_id", &self.sot.id)
            .field("eot_id", &self.eot.id)
            .finish()
    }
}

/// The pre-tokenisation regexes.
struct Patterns {
    /// open_clip: the special alternatives are its own names, and `re.IGNORECASE` is set, so
    /// `'ſ` (long s) counts as the contraction `'s`. On the classes the flag changes only one
    /// character in the `regex` module: U+0345 COMBINING GREEK YPOGEGRAMMENI, whose case
    /// variants are letters, drops out of `[^\s\p{L}\p{N}]` without joining `[\p{L}]`, so
    /// open_clip skips it like a space (checked over all code points with regex 2026.11.19).
    open_clip: Regex,
    /// transformers: the `Split` pre-tokenizer's pattern, case-sensitive (Oniguruma default).
    transformers: Regex,
}

impl Patterns {
    fn get() -> Result<Arc<Patterns>, TokenizerError> {
        static PATTERNS: OnceLock<Result<Arc<Patterns>, String>> = OnceLock::new();
        const CONTRACTIONS: &str = "'s|'t|'re|'ve|'m|'ll|'d";
        PATTERNS
            .get_or_init(|| {
                let compile = |p: String| Regex::new(&p).map_err(|e| e.to_string());
                Ok(Arc::new(Patterns {
                    open_clip: compile(format!(
                        r"(?i:<start_of_text>|<end_of_text>|{CONTRACTIONS})|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}\x{{345}}]+"
                    ))?,
                    transformers: compile(format!(
                        r"<\|startoftext\|>|<\|endoftext\|>|{CONTRACTIONS}|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
                    ))?,
                }))
            })
            .clone()
            .map_err(|msg| TokenizerError::EmbeddedAsset {
                asset: "pre-tokenizer pattern",
                msg,
            })
    }
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: ModelJson,
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    merges: Vec<MergeJson>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
}

/// `tokenizers` writes merges as "a b" (older files) or as ["a", "b"] (0.20 and later).
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeJson {
    Joined(String),
    Pair(String, String),
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
    #[serde(default)]
    normalized: Option<bool>,
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String, TokenizerError> {
    String::from_utf8(bytes).map_err(|e| TokenizerError::Format {
        path: path.to_path_buf(),
        location: format!("byte {}", e.utf8_error().valid_up_to()),
        expected: "UTF-8 text".to_string(),
    })
}

fn split_merge(path: &Path, line: &str, location: String) -> Result<Merge, TokenizerError> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => Ok(Merge {
            left: left.to_string(),
            right: right.to_string(),
            location,
        }),
        _ => Err(TokenizerError::Format {
            path: path.to_path_buf(),
            location,
            expected: format!("a merge `LEFT RIGHT` (two tokens, one space), found {line:?}"),
        }),
    }
}

impl ClipBpe {
    fn assemble(
        bpe: Arc<Bpe>,
        path: &Path,
        added: &[AddedTokenJson],
    ) -> Result<ClipBpe, TokenizerError> {
        // Defaults are the flags of the hub's openai/clip-vit-* tokenizer configs.
        let special = |name: &str, normalized: bool| {
            let entry = added.iter().find(|t| t.content == name);
            let id = entry.map(|t| t.id).or_else(|| bpe.id(name));
            id.map(|id| Special {
                id,
                normalized: entry.and_then(|t| t.normalized).unwrap_or(normalized),
            })
            .ok_or_else(|| TokenizerError::MissingToken {
                path: path.to_path_buf(),
                token: name.to_string(),
            })
        };
        Ok(ClipBpe {
            sot: special(START_OF_TEXT, true)?,
            eot: special(END_OF_TEXT, false)?,
            bpe,
            cleaner: Cleaner::get()?,
            patterns: Patterns::get()?,
            cleaning: Cleaning::default(),
        })
    }

    /// The OpenAI CLIP vocabulary, embedded in the binary; decompressed once per process.
    fn openai() -> Result<ClipBpe, TokenizerError> {
        static OPENAI: OnceLock<Result<Arc<Bpe>, String>> = OnceLock::new();
        let bpe = OPENAI
            .get_or_init(|| openai_bpe().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|msg| TokenizerError::EmbeddedAsset {
                asset: EMBEDDED_VOCAB_NAME,
                msg,
            })?;
        ClipBpe::assemble(bpe, Path::new(EMBEDDED_VOCAB_NAME), &[])
    }

    /// The Hugging Face pair `vocab.json` (token → id) and `merges.txt` (one `a b` per line,
    /// after an optional `#version` header).
    fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<ClipBpe, TokenizerError> {
        let vocab: HashMap<String, u32> =
            serde_json::from_slice(&read(vocab_json)?).map_err(|source| TokenizerError::Json {
                path: vocab_json.to_path_buf(),
                source,
            })?;
        let text = utf8(merges_txt, read(merges_txt)?)?;
        let mut merges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            merges.push(split_merge(merges_txt, line, format!("line {}", i + 1))?);
        }
        let bpe = Bpe::new(vocab_json, vocab, merges_txt, merges)?;
        ClipBpe::assemble(Arc::new(bpe), vocab_json, &[])
    }

    /// A `tokenizers` `tokenizer.json` whose model is CLIP's BPE (`end_of_word_suffix` `</w>`).
    /// Only the vocabulary, the merges and the special tokens' ids and `normalized` flags are
    /// read; the text pipeline is CLIP's whatever the file's normalizer says.
    fn from_tokenizer_json(path: &Path) -> Result<ClipBpe, TokenizerError> {
        let json: TokenizerJson =
            serde_json::from_slice(&read(path)?).map_err(|source| TokenizerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let format = |location: &str, expected: String| TokenizerError::Format {
            path: path.to_path_buf(),
            location: location.to_string(),
            expected,
        };
        let model = json.model;
        if let Some(kind) = model.kind.as_deref().filter(|k| *k != "BPE") {
            return Err(format("model.type", format!("\"BPE\", found {kind:?}")));
        }
        if model.end_of_word_suffix.as_deref() != Some(END_OF_WORD) {
            return Err(format(
                "model.end_of_word_suffix",
                format!(
                    "{END_OF_WORD:?} (CLIP's byte-level BPE), found {:?}",
                    model.end_of_word_suffix
                ),
            ));
        }
        let merges = model
            .merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let location = format!("model.merges[{i}]");
                match m {
                    MergeJson::Joined(s) => split_merge(path, &s, location),
                    MergeJson::Pair(left, right) => Ok(Merge {
                        left,
                        right,
                        location,
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut vocab = model.vocab;
        for t in &json.added_tokens {
            vocab.entry(t.content.clone()).or_insert(t.id);
        }
        let bpe = Bpe::new(path, vocab, path, merges)?;
        ClipBpe::assemble(Arc::new(bpe), path, &json.added_tokens)
    }

    /// The same vocabulary with another reference's text handling.
    fn with_cleaning(mut self, cleaning: Cleaning) -> ClipBpe {
        self.cleaning = cleaning;
        self
    }

    fn cleaning(&self) -> Cleaning {
        self.cleaning
    }

    fn sot_id(&self) -> u32 {
        self.sot.id
    }

    fn eot_id(&self) -> u32 {
        self.eot.id
    }

    /// Number of tokens, special tokens included (49,408 for OpenAI's vocabulary).
    fn vocab_size(&self) -> usize {
        self.bpe.len()
    }

    /// BPE ids of `text` after the clean-up, without start/end tokens and without truncation.
    /// Literal special tokens in the text (see [`Cleaning`]) give their ids.
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        match self.cleaning {
            Cleaning::OpenClip => self.encode_open_clip(text, &mut ids),
            Cleaning::Transformers => self.encode_transformers(text, &mut ids),
        }
        ids
    }

    fn encode_open_clip(&self, text: &str, ids: &mut Vec<u32>) {
        let text = self.cleaner.open_clip(text);
        for piece in self.patterns.open_clip.find_iter(&text) {
            // open_clip seeds its BPE cache with these two exact strings; `<ſtart_of_text>`
            // matches the case-insensitive pattern but is ordinary text.
            match piece.as_str() {
                "<start_of_text>" => ids.push(self.sot.id),
                "<end_of_text>" => ids.push(self.eot.id),
                word => self.bpe.encode_word(word, ids),
            }
        }
    }

    fn encode_transformers(&self, text: &str, ids: &mut Vec<u32>) {
        // `tokenizers` extracts added tokens in two rounds: raw-text tokens first, then, in
        // each normalised remainder, the `normalized` ones.
        let raw: Vec<(&str, u32)> = [(START_OF_TEXT, self.sot), (END_OF_TEXT, self.eot)]
            .into_iter()
            .filter(|(_, s)| !s.normalized)
            .map(|(name, s)| (name, s.id))
            .collect();
        let normalized: Vec<(&str, u32)> = [(START_OF_TEXT, self.sot), (END_OF_TEXT, self.eot)]
            .into_iter()
            .filter(|(_, s)| s.normalized)
            .map(|(name, s)| (name, s.id))
            .collect();
        split_specials(text, &raw, ids, &mut |segment, ids| {
            let segment = Cleaner::transformers(segment);
            split_specials(&segment, &normalized, ids, &mut |rest, ids| {
                for piece in self.patterns.transformers.find_iter(rest) {
                    match piece.as_str() {
                        // An unextracted special-token literal: the ByteLevel pre-tokenizer's
                        // GPT-2 regex splits it again.
                        special @ (START_OF_TEXT | END_OF_TEXT) => {
                            let name = &special[2..special.len() - 2];
                            for part in ["<|", name, "|>"] {
                                self.bpe.encode_word(part, ids);
                            }
                        }
                        word => self.bpe.encode_word(word, ids),
                    }
                }
            });
        });
    }

    /// One row of model input, open_clip's convention: start id, the BPE ids truncated so the
    /// end id stays last, then 0 up to `context_length`.
    fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        self.tokenize_padded(text, context_length, 0)
    }

    /// As [`ClipBpe::tokenize`], padding with `pad_id` (transformers pads CLIP with the end
    /// id, 49407; the padding never reaches the end-token embedding either way).
    fn tokenize_padded(&self, text: &str, context_length: usize, pad_id: u32) -> Vec<u32> {
        let mut row = Vec::with_capacity(context_length.max(2));
        row.push(self.sot.id);
        match self.cleaning {
            Cleaning::OpenClip => self.encode_open_clip(text, &mut row),
            Cleaning::Transformers => self.encode_transformers(text, &mut row),
        }
        row.push(self.eot.id);
        if row.len() > context_length {
            row.truncate(context_length);
            if let Some(last) = row.last_mut() {
                *last = self.eot.id;
            }
        }
        row.resize(context_length, pad_id);
        row
    }

    /// Text for ids, open_clip's way: token strings joined, bytes restored (invalid UTF-8
    /// replaced), `</w>` read as a space. Every id is rendered, special and padding ids too;
    /// ids outside the vocabulary are skipped.
    fn decode(&self, ids: &[u32]) -> String {
        static BYTE_DECODER: OnceLock<HashMap<char, u8>> = OnceLock::new();
        let decoder = BYTE_DECODER.get_or_init(|| {
            bytes_to_unicode()
                .iter()
                .enumerate()
                .map(|(b, &c)| (c, b as u8))
                .collect()
        });
        let mut bytes = Vec::new();
        for token in ids.iter().filter_map(|&id| self.bpe.token(id)) {
            for c in token.chars() {
                match decoder.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ")
    }
}

/// A model's tokenizer: CLIP's byte-level BPE, SigLIP's SentencePiece, or SigLIP 2's Gemma BPE.
/// Cloning is cheap (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Bpe(ClipBpe),
    SentencePiece(Arc<SentencePiece>),
    Gemma(Arc<Gemma>),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Bpe(b) => b.fmt(f),
            Kind::SentencePiece(s) => s.fmt(f),
            Kind::Gemma(g) => g.fmt(f),
        }
    }
}

impl From<ClipBpe> for Tokenizer {
    fn from(b: ClipBpe) -> Self {
        Tokenizer { kind: Kind::Bpe(b) }
    }
}

impl Tokenizer {
    /// The OpenAI CLIP vocabulary, embedded in the binary; decompressed once per process.
    pub fn openai() -> Result<Tokenizer, TokenizerError> {
        ClipBpe::openai().map(Tokenizer::from)
    }

    /// The Hugging Face pair `vocab.json` (token → id) and `merges.txt` (one `a b` per line,
    /// after an optional `#version` header).
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Tokenizer, TokenizerError> {
        ClipBpe::from_files(vocab_json, merges_txt).map(Tokenizer::from)
    }

    /// A `tokenizers` `tokenizer.json`: CLIP's BPE (`end_of_word_suffix` `</w>`; only the
    /// vocabulary, the merges and the special tokens' ids and `normalized` flags are read, the
    /// text pipeline is CLIP's), or a SentencePiece Unigram model (`model.type` `Unigram`),
    /// run as SigLIP's tokenizer, or Gemma's byte-fallback BPE (SigLIP 2's), run as
    /// `GemmaTokenizer` with its defaults.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let json: serde_json::Value =
            serde_json::from_slice(&read(path)?).map_err(|source| TokenizerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if is_gemma_json(&json) {
            return Ok(Gemma::from_tokenizer_json(path)?.into());
        }
        if json["model"]["type"] == "Unigram" {
            let options = SiglipOptions::default();
            return Ok(SentencePiece::from_tokenizer_json(path, &json, &options)?.into());
        }
        ClipBpe::from_tokenizer_json(path).map(Tokenizer::from)
    }

    /// The tokenizer a model directory carries, `None` when it has none (open_clip
    /// checkpoints; the caller falls back to [`Tokenizer::openai`]):
    /// - SigLIP's SentencePiece: `spiece.model` (what `SiglipTokenizer` saves), else a
    ///   `tokenizer.json` whose model is Unigram; `tokenizer_config.json`'s special tokens and
    ///   `do_lower_case` apply;
    /// - SigLIP 2's Gemma BPE: a `tokenizer.json` whose model is BPE with byte fallback;
    ///   `tokenizer_config.json`'s special tokens, `add_bos_token` / `add_eos_token` and
    ///   padding and truncation sides apply;
    /// - CLIP's BPE: `tokenizer.json`, else `vocab.json` + `merges.txt`, with
    ///   [`Cleaning::OpenClip`] like every constructor's; pick another with
    ///   [`Tokenizer::with_cleaning`].
    pub fn from_model_dir(dir: &Path) -> Result<Option<Tokenizer>, TokenizerError> {
        let spiece = dir.join("spiece.model");
        let tokenizer_json = dir.join("tokenizer.json");
        if spiece.is_file() {
            let options = SiglipOptions::from_model_dir(dir)?;
            return Ok(Some(
                SentencePiece::from_spiece_model(&spiece, &options)?.into(),
            ));
        }
        if tokenizer_json.is_file() {
            let json: serde_json::Value =
                serde_json::from_slice(&read(&tokenizer_json)?).map_err(|source| {
                    TokenizerError::Json {
                        path: tokenizer_json.clone(),
                        source,
                    }
                })?;
            if is_gemma_json(&json) {
                return Ok(Some(Gemma::from_model_dir(dir)?.into()));
            }
            if json["model"]["type"] == "Unigram" {
                let options = SiglipOptions::from_model_dir(dir)?;
                let sp = SentencePiece::from_tokenizer_json(&tokenizer_json, &json, &options)?;
                return Ok(Some(sp.into()));
            }
            return ClipBpe::from_tokenizer_json(&tokenizer_json).map(|t| Some(t.into()));
        }
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        match (vocab.is_file(), merges.is_file()) {
            (false, false) => Ok(None),
            // from_files reports whichever of the two is missing.
            _ => Tokenizer::from_files(&vocab, &merges).map(Some),
        }
    }

    /// The same SentencePiece model behind open_clip's canonicalising cleaner (see
    /// [`SentencePiece::with_open_clip_canonicalize`]); a BPE tokenizer is returned unchanged.
    pub fn with_open_clip_canonicalize(self) -> Tokenizer {
        match self.kind {
            Kind::SentencePiece(s) => Arc::unwrap_or_clone(s).with_open_clip_canonicalize().into(),
            other => Tokenizer { kind: other },
        }
    }

    /// The same Gemma tokenizer behind open_clip's `HFTokenizer` clean function
    /// (`text_cfg.tokenizer_kwargs.clean`); other tokenizers are returned unchanged.
    pub fn with_open_clip_clean(self, clean: OpenClipClean) -> Tokenizer {
        match self.kind {
            Kind::Gemma(g) => Arc::unwrap_or_clone(g).with_open_clip_clean(clean).into(),
            other => Tokenizer { kind: other },
        }
    }

    /// The same vocabulary with another reference's text handling (CLIP's BPE only:
    /// SentencePiece and Gemma have one way each).
    pub fn with_cleaning(self, cleaning: Cleaning) -> Tokenizer {
        match self.kind {
            Kind::Bpe(b) => b.with_cleaning(cleaning).into(),
            other => Tokenizer { kind: other },
        }
    }

    pub fn cleaning(&self) -> Cleaning {
        match &self.kind {
            Kind::Bpe(b) => b.cleaning(),
            Kind::SentencePiece(_) | Kind::Gemma(_) => Cleaning::default(),
        }
    }

    /// The SentencePiece tokenizer, when this is one (SigLIP).
    pub fn sentencepiece(&self) -> Option<&SentencePiece> {
        match &self.kind {
            Kind::SentencePiece(s) => Some(s),
            _ => None,
        }
    }

    /// Gemma's BPE, when this is it (SigLIP 2).
    pub fn gemma(&self) -> Option<&Gemma> {
        match &self.kind {
            Kind::Gemma(g) => Some(g),
            _ => None,
        }
    }

    /// The start-of-text id; SentencePiece (SigLIP) and Gemma (SigLIP 2) rows have none.
    pub fn sot_id(&self) -> Option<u32> {
        match &self.kind {
            Kind::Bpe(b) => Some(b.sot_id()),
            Kind::SentencePiece(_) | Kind::Gemma(_) => None,
        }
    }

    /// The end-of-text id (SentencePiece: `</s>`; Gemma: `<eos>`).
    pub fn eot_id(&self) -> u32 {
        match &self.kind {
            Kind::Bpe(b) => b.eot_id(),
            Kind::SentencePiece(s) => s.eos_id(),
            Kind::Gemma(g) => g.eos_id(),
        }
    }

    /// The id rows are padded with by [`Tokenizer::tokenize`]: 0 for CLIP's BPE (open_clip's
    /// convention), the pad token's for SentencePiece.
    pub fn pad_id(&self) -> u32 {
        match &self.kind {
            Kind::Bpe(_) => 0,
            Kind::SentencePiece(s) => s.pad_id(),
            Kind::Gemma(g) => g.pad_id(),
        }
    }

    /// Number of tokens, special tokens included (49,408 for OpenAI's vocabulary).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Bpe(b) => b.vocab_size(),
            Kind::SentencePiece(s) => s.vocab_size(),
            Kind::Gemma(g) => g.vocab_size(),
        }
    }

    /// Ids of `text` without start/end tokens and without truncation (BPE: after the clean-up;
    /// literal special tokens in the text give their ids).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.kind {
            Kind::Bpe(b) => b.encode(text),
            Kind::SentencePiece(s) => s.encode(text),
            Kind::Gemma(g) => g.encode(text),
        }
    }

    /// One row of model input. BPE (open_clip's convention): start id, the ids truncated so the
    /// end id stays last, then 0 up to `context_length`. SentencePiece (SigLIP's): the ids,
    /// `</s>`, then the pad id up to `context_length`.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        match &self.kind {
            Kind::Bpe(b) => b.tokenize(text, context_length),
            Kind::SentencePiece(s) => s.tokenize(text, context_length),
            Kind::Gemma(g) => g.tokenize(text, context_length),
        }
    }

    /// As [`Tokenizer::tokenize`], padding with `pad_id` (transformers pads CLIP with the end
    /// id, 49407; the padding never reaches the end-token embedding either way).
    pub fn tokenize_padded(&self, text: &str, context_length: usize, pad_id: u32) -> Vec<u32> {
        match &self.kind {
            Kind::Bpe(b) => b.tokenize_padded(text, context_length, pad_id),
            Kind::SentencePiece(s) => s.tokenize_padded(text, context_length, pad_id),
            Kind::Gemma(g) => g.tokenize_padded(text, context_length, pad_id),
        }
    }

    /// [`Tokenizer::tokenize`] for each text.
    pub fn tokenize_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        context_length: usize,
    ) -> Vec<Vec<u32>> {
        texts
            .iter()
            .map(|t| self.tokenize(t.as_ref(), context_length))
            .collect()
    }

    /// Text for ids. BPE, open_clip's way: token strings joined, bytes restored (invalid UTF-8
    /// replaced), `</w>` read as a space; SentencePiece: pieces joined, `▁` read as a space.
    /// Every id is rendered, special and padding ids too; ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.kind {
            Kind::Bpe(b) => b.decode(ids),
            Kind::SentencePiece(s) => s.decode(ids),
            Kind::Gemma(g) => g.decode(ids),
        }
    }
}

impl From<Gemma> for Tokenizer {
    fn from(g: Gemma) -> Self {
        Tokenizer {
            kind: Kind::Gemma(Arc::new(g)),
        }
    }
}

impl From<SentencePiece> for Tokenizer {
    fn from(s: SentencePiece) -> Self {
        Tokenizer {
            kind: Kind::SentencePiece(Arc::new(s)),
        }
    }
}

/// Splits `text` on the leftmost (then longest) occurrence of any special token, pushing the
/// special ids and handing the text between them to `rest`.
fn split_specials(
    text: &str,
    specials: &[(&str, u32)],
    ids: &mut Vec<u32>,
    rest: &mut dyn FnMut(&str, &mut Vec<u32>),
) {
    let mut pos = 0;
    loop {
        let next = specials
            .iter()
            .filter_map(|&(name, id)| text[pos..].find(name).map(|at| (pos + at, name.len(), id)))
            .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
        let Some((at, len, id)) = next else {
            break;
        };
        if at > pos {
            rest(&text[pos..at], ids);
        }
        ids.push(id);
        pos = at + len;
    }
    if pos < text.len() {
        rest(&text[pos..], ids);
    }
}

/// Vocabulary and merges from the embedded OpenAI file, laid out as open_clip does: byte
/// tokens, byte tokens with `</w>`, one token per merge, then the two special tokens.
fn openai_bpe() -> Result<Bpe, TokenizerError> {
    let path = Path::new(EMBEDDED_VOCAB_NAME);
    let mut text = String::new();
    flate2::read::GzDecoder::new(EMBEDDED_VOCAB)
        .read_to_string(&mut text)
        .map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut merges = Vec::with_capacity(OPENAI_MERGES);
    // Line 1 is the `#version` header.
    for (i, line) in text.split('\n').enumerate().skip(1).take(OPENAI_MERGES) {
        merges.push(split_merge(path, line, format!("line {}", i + 1))?);
    }
    if merges.len() != OPENAI_MERGES {
        return Err(TokenizerError::Format {
            path: path.to_path_buf(),
            location: "merges".to_string(),
            expected: format!("{OPENAI_MERGES} merges, found {}", merges.len()),
        });
    }
    let bytes: Vec<String> = byte_tokens_in_vocab_order()
        .iter()
        .map(char::to_string)
        .collect();
    let tokens = bytes
        .iter()
        .cloned()
        .chain(bytes.iter().map(|b| format!("{b}{END_OF_WORD}")))
        .chain(merges.iter().map(|m| format!("{}{}", m.left, m.right)))
        .chain([START_OF_TEXT.to_string(), END_OF_TEXT.to_string()]);
    let vocab: HashMap<String, u32> = tokens.enumerate().map(|(i, t)| (t, i as u32)).collect();
    Bpe::new(path, vocab, path, merges)
}
