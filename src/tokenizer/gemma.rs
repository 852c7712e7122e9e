//! SigLIP 2's tokenizer: Gemma's byte-fallback BPE (`tokenizer.json`, a 256,000-token
//! vocabulary), run as `transformers`' `GemmaTokenizer` runs it (transformers 5.23,
//! `models/gemma/tokenization_gemma.py`, the class `AutoTokenizer` gives for a `SiglipModel`
//! directory whose `tokenizer_config.json` names `GemmaTokenizer`, as google/siglip2-* do).
//!
//! `GemmaTokenizer` keeps only the vocabulary, the merges and the post-processor of the file and
//! rebuilds the rest, so the same is done here:
//! * the model: BPE over the file's vocabulary and merges with `byte_fallback` and `fuse_unk`
//!   (a character outside the vocabulary becomes its UTF-8 bytes `<0xXX>`);
//! * the normaliser: `Replace(" ", "▁")` only — no lower-casing, no Unicode normalisation;
//! * the pre-tokenizer: `Split(" ", merged_with_previous)` (after the normaliser it never splits:
//!   the BPE sees the whole text);
//! * the file's added tokens (`<pad>`, `<eos>`, `<bos>`, ...) are matched in the raw text;
//! * the post-processor: the file's (SigLIP 2's appends `<eos>`), or, when
//!   `tokenizer_config.json` sets `add_bos_token` / `add_eos_token`, the template those give
//!   (`TokenizersBackend.update_post_processor`);
//! * a row: the ids truncated (`truncation_side`, right by default) to leave room for what the
//!   post-processor adds, then padded with `pad_token` to the context length on the
//!   `padding_side` (`padding="max_length"`, `truncation=True`, as `Siglip2Processor` and
//!   open_clip call it; SigLIP 2's files say `right`).
//!
//! open_clip's `HFTokenizer` runs the same tokenizer behind its own text cleaner
//! (`text_cfg.tokenizer_kwargs.clean`; `canonicalize` for its SigLIP 2 models: ftfy, HTML
//! unescaping, `_` made a space, ASCII punctuation removed, lower-cased, whitespace collapsed):
//! [`OpenClipClean`].
//!
//! The `tokenizers` crate runs the BPE itself: it is the library `transformers`' fast tokenizers
//! are built on, so segmentation, byte fallback and added-token matching are the reference's own.

use std::path::Path;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{PostProcessor, SplitDelimiterBehavior, TruncationDirection};

use super::clean::{is_python_space, Cleaner};
use super::config::TokenizerConfig;
use super::sentencepiece::{open_clip_canonicalize, SPACE};
use super::TokenizerError;

/// open_clip's `HFTokenizer` clean functions (`open_clip/tokenizer.py`, 3.3.0); every one starts
/// with `basic_clean` (ftfy's `fix_text`, `html.unescape` twice, strip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenClipClean {
    /// `whitespace` (open_clip's default): runs of whitespace made one space.
    Whitespace,
    /// `lower`: as `whitespace`, then Python's `str.lower`.
    Lower,
    /// `canonicalize` (SigLIP models): `_` made a space, ASCII punctuation removed, lower-cased,
    /// whitespace collapsed.
    Canonicalize,
}

impl OpenClipClean {
    /// The value of `text_cfg.tokenizer_kwargs.clean`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "whitespace" => Some(OpenClipClean::Whitespace),
            "lower" => Some(OpenClipClean::Lower),
            "canonicalize" => Some(OpenClipClean::Canonicalize),
            _ => None,
        }
    }
}

/// What `tokenizer_config.json` may change.
#[derive(Debug, Clone)]
struct GemmaOptions {
    pad_token: String,
    unk_token: String,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    bos_token: String,
    eos_token: String,
    pad_left: bool,
    truncate_left: bool,
}

impl Default for GemmaOptions {
    /// `GemmaTokenizer.__init__`'s defaults (`padding_side = "left"` is the class's).
    fn default() -> Self {
        GemmaOptions {
            pad_token: "<pad>".into(),
            unk_token: "<unk>".into(),
            bos_token: "<bos>".into(),
            eos_token: "<eos>".into(),
            add_bos_token: None,
            add_eos_token: None,
            pad_left: true,
            truncate_left: false,
        }
    }
}

impl GemmaOptions {
    /// The defaults, then the directory's `tokenizer_config.json` when there is one.
    fn from_model_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let mut o = GemmaOptions::default();
        let Some(config) = TokenizerConfig::read(dir)? else {
            return Ok(o);
        };
        config.tokens_into([
            ("pad_token", &mut o.pad_token),
            ("unk_token", &mut o.unk_token),
            ("bos_token", &mut o.bos_token),
            ("eos_token", &mut o.eos_token),
        ]);
        o.add_bos_token = config.bool("add_bos_token");
        o.add_eos_token = config.bool("add_eos_token");
        let side = |key: &str, default_left: bool| match config.str(key) {
            None => Ok(default_left),
            Some("left") => Ok(true),
            Some("right") => Ok(false),
            Some(other) => Err(TokenizerError::Format {
                path: config.path.clone(),
                location: key.into(),
                expected: format!("\"left\" or \"right\", found {other:?}"),
            }),
        };
        o.pad_left = side("padding_side", o.pad_left)?;
        o.truncate_left = side("truncation_side", o.truncate_left)?;
        Ok(o)
    }
}

/// Gemma's BPE with SigLIP 2's settings (see the module documentation).
#[derive(Clone)]
pub struct Gemma {
    tokenizer: tokenizers::Tokenizer,
    pad: u32,
    eos: u32,
    pad_left: bool,
    truncate_left: bool,
    /// Ids the post-processor adds to one sequence.
    added: usize,
    open_clip: Option<OpenClipClean>,
    vocab_size: usize,
}

impl std::fmt::Debug for Gemma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemma")
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("pad_left", &self.pad_left)
            .field("open_clip", &self.open_clip)
            .finish()
    }
}

/// Whether a parsed `tokenizer.json` holds Gemma's kind of model: BPE with byte fallback (CLIP's
/// BPE has none, and an end-of-word suffix).
pub fn is_gemma_json(json: &serde_json::Value) -> bool {
    json["model"]["type"] == "BPE" && json["model"]["byte_fallback"] == true
}

impl Gemma {
    /// Reads `dir/tokenizer.json` with `dir/tokenizer_config.json`'s settings.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let options = GemmaOptions::from_model_dir(dir)?;
        Self::from_file(&dir.join("tokenizer.json"), options)
    }

    /// Reads a `tokenizer.json` alone, with `GemmaTokenizer`'s defaults.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(path, GemmaOptions::default())
    }

    fn from_file(path: &Path, options: GemmaOptions) -> Result<Self, TokenizerError> {
        let format = |location: &str, expected: String| TokenizerError::Format {
            path: path.into(),
            location: location.into(),
            expected,
        };
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| format("the file", format!("a `tokenizers` tokenizer.json ({e})")))?;
        let mut model = tokenizer.get_model().clone();
        let ModelWrapper::BPE(bpe) = &mut model else {
            return Err(format("model.type", "\"BPE\" (Gemma's tokenizer)".into()));
        };
        if bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
            return Err(format(
                "model",
                "Gemma's BPE (no continuing_subword_prefix or end_of_word_suffix)".into(),
            ));
        }
        // GemmaTokenizer.__init__: BPE(vocab, merges, fuse_unk=True, unk_token, dropout=None,
        // byte_fallback=True).
        bpe.byte_fallback = true;
        bpe.fuse_unk = true;
        bpe.dropout = None;
        bpe.unk_token = Some(options.unk_token.clone());
        tokenizer.with_model(model);
        let replace = Replace::new(" ", SPACE.to_string())
            .map_err(|e| format("normalizer", e.to_string()))?;
        tokenizer
            .with_normalizer(Some(replace))
            .map_err(|e| format("normalizer", e.to_string()))?;
        let split = Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(|e| format("pre_tokenizer", e.to_string()))?;
        tokenizer.with_pre_tokenizer(Some(split));
        tokenizer.with_decoder(None::<tokenizers::DecoderWrapper>);
        tokenizer
            .with_truncation(None)
            .map_err(|e| format("truncation", e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: path.into(),
                    token: token.into(),
                })
        };
        let (pad, eos) = (id(&options.pad_token)?, id(&options.eos_token)?);
        if options.add_bos_token.is_some() || options.add_eos_token.is_some() {
            let (add_bos, add_eos) = (
                options.add_bos_token.unwrap_or(false),
                options.add_eos_token.unwrap_or(false),
            );
            let mut single = Vec::new();
            let mut specials = Vec::new();
            if add_bos {
                single.push(format!("{}:0", options.bos_token));
                specials.push((options.bos_token.clone(), id(&options.bos_token)?));
            }
            single.push("$A:0".to_string());
            if add_eos {
                single.push(format!("{}:0", options.eos_token));
                specials.push((options.eos_token.clone(), eos));
            }
            let template = TemplateProcessing::builder()
                .try_single(single.join(" "))
                .map_err(|e| format("post_processor", e.to_string()))?
                .special_tokens(specials)
                .build()
                .map_err(|e| format("post_processor", e.to_string()))?;
            tokenizer.with_post_processor(Some(template));
        }
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p: &PostProcessorWrapper| p.added_tokens(false));
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(Gemma {
            tokenizer,
            pad,
            eos,
            pad_left: options.pad_left,
            truncate_left: options.truncate_left,
            added,
            open_clip: None,
            vocab_size,
        })
    }

    /// The same tokenizer behind open_clip's `HFTokenizer` text cleaner.
    pub fn with_open_clip_clean(mut self, clean: OpenClipClean) -> Self {
        self.open_clip = Some(clean);
        self
    }

    pub fn open_clip_clean(&self) -> Option<OpenClipClean> {
        self.open_clip
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// open_clip's clean function, or the text unchanged.
    fn cleaned<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let Some(clean) = self.open_clip else {
            return text.into();
        };
        // basic_clean: ftfy.fix_text, html.unescape twice, strip.
        let basic = match Cleaner::get() {
            Ok(c) => c.open_clip_basic(text),
            // The cleaning tables are compiled in; `Tokenizer::openai` reports them broken.
            Err(_) => text.trim_matches(is_python_space).to_string(),
        };
        let collapsed = |t: &str| {
            t.split(is_python_space)
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match clean {
            OpenClipClean::Whitespace => collapsed(&basic).into(),
            OpenClipClean::Lower => collapsed(&basic).to_lowercase().into(),
            OpenClipClean::Canonicalize => open_clip_canonicalize(&basic).into(),
        }
    }

    /// The encoding of `text` before truncation and post-processing.
    fn raw(&self, text: &str) -> Option<tokenizers::Encoding> {
        // `tokenizers` fails only on a model error, which a loaded BPE with byte fallback has
        // no way to raise on valid UTF-8.
        self.tokenizer.encode(&*self.cleaned(text), false).ok()
    }

    /// The ids of `text` (after open_clip's cleaner, when set) without special tokens or
    /// truncation; literal added tokens in the text (`<eos>`, ...) give their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.raw(text)
            .map_or_else(Vec::new, |e| e.get_ids().to_vec())
    }

    /// One row of model input: the ids truncated to leave room for the post-processor's special
    /// tokens, post-processed (SigLIP 2: `<eos>` appended), padded with the pad id to
    /// `context_length` on the padding side.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        self.tokenize_padded(text, context_length, self.pad)
    }

    /// As [`Gemma::tokenize`], padding with `pad_id`.
    pub fn tokenize_padded(&self, text: &str, context_length: usize, pad_id: u32) -> Vec<u32> {
        let Some(mut encoding) = self.raw(text) else {
            return vec![pad_id; context_length];
        };
        let direction = match self.truncate_left {
            true => TruncationDirection::Left,
            false => TruncationDirection::Right,
        };
        encoding.truncate(context_length.saturating_sub(self.added), 0, direction);
        let mut ids = match self.tokenizer.post_process(encoding, None, true) {
            Ok(e) => e.get_ids().to_vec(),
            Err(_) => Vec::new(),
        };
        ids.truncate(context_length);
        let padding = context_length - ids.len();
        if self.pad_left {
            let mut row = vec![pad_id; padding];
            row.extend(ids);
            row
        } else {
            ids.resize(context_length, pad_id);
            ids
        }
    }

    /// Text for ids: tokens joined, `▁` read as a space, byte tokens restored (invalid UTF-8
    /// replaced). Every id is rendered, special and padding ids too; ids outside the vocabulary
    /// are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for token in ids.iter().filter_map(|&id| self.tokenizer.id_to_token(id)) {
            let byte = token
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match byte {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(token.replace(SPACE, " ").as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
