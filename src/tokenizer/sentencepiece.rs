//! SigLIP's tokenizer: a SentencePiece Unigram model run as `transformers`' `SiglipTokenizer`
//! runs it (transformers 5.23, `models/siglip/tokenization_siglip.py`, the tokenizer
//! `AutoTokenizer` gives for `model_type: siglip`).
//!
//! The pipeline, step for step:
//! 1. `"▁" + text.replace("▁", " ")` (`SiglipTokenizer.tokenize`);
//! 2. the special tokens (`</s>`, `<unk>`, and the pad token) are split out first, leftmost
//!    then longest (`PreTrainedTokenizer.tokenize`'s trie);
//! 3. every other chunk is canonicalised (`canonicalize_text`: Python's `str.lower`, ASCII
//!    punctuation removed, runs of whitespace made one space, stripped), then encoded by
//!    SentencePiece as `"<unk>" + chunk`, and the pieces of `"<unk>"` alone are dropped from the
//!    front (`SiglipTokenizer._tokenize`);
//! 4. a leading lone `▁` before a special token is dropped;
//! 5. `</s>` is appended unless the ids already end with it, after truncating to
//!    `context_length - 1`; then padding with the pad id to `context_length`
//!    (`padding="max_length"`, as SigLIP was trained).
//!
//! SentencePiece itself: the normaliser is sentencepiece's own algorithm (longest match in the
//! precompiled character map, then whitespace handling, dummy prefix and `▁` escaping), written
//! here because `tokenizers`' `Precompiled` normaliser maps a whole grapheme from its shortest
//! match (it drops the second accent of `e\u{301}\u{301}`); the segmentation is the
//! `tokenizers` crate's Unigram model (Viterbi, unknown characters fused into one unknown
//! piece, as sentencepiece does). Only normal, user-defined and byte pieces can be matched in
//! text; control and unknown pieces are reached by id only.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::unigram::Unigram;
use tokenizers::Model;

use super::config::TokenizerConfig;
use super::spm_model::{ModelProto, NormalizerSpec};
use super::TokenizerError;

/// sentencepiece's whitespace meta symbol.
pub const SPACE: char = '\u{2581}';

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// sentencepiece's precompiled character map: a Darts double-array trie over UTF-8 byte
/// strings whose values are offsets of NUL-terminated replacements in a string blob.
#[derive(Clone)]
struct CharsMap {
    trie: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(blob: &[u8]) -> Option<CharsMap> {
        if blob.is_empty() {
            return Some(CharsMap {
                trie: Vec::new(),
                normalized: Vec::new(),
            });
        }
        let size = u32::from_le_bytes(blob.get(..4)?.try_into().ok()?) as usize;
        let trie_bytes = blob.get(4..4usize.checked_add(size)?)?;
        if !size.is_multiple_of(4) {
            return None;
        }
        let trie = trie_bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(CharsMap {
            trie,
            normalized: blob[4 + size..].to_vec(),
        })
    }

    /// The longest rule matching a prefix of `input`: `(bytes consumed, replacement)`.
    fn longest_prefix(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        let unit = |pos: usize| self.trie.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut best = None;
        let mut node = offset(unit(0)?);
        for (i, &c) in input.iter().enumerate() {
            if c == 0 {
                break;
            }
            node ^= c as usize;
            let u = unit(node)?;
            if (u & ((1 << 31) | 0xff)) != u32::from(c) {
                break;
            }
            node ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let value = (unit(node)? & ((1 << 31) - 1)) as usize;
                best = Some((i + 1, value));
            }
        }
        let (len, value) = best?;
        let rest = self.normalized.get(value..)?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// sentencepiece's `Normalizer::Normalize` (normalizer.cc) on valid UTF-8.
fn spm_normalize(map: &CharsMap, spec: &NormalizerSpec, input: &str) -> String {
    let mut rest = input.as_bytes();
    // One normalised prefix: the longest rule, else the next character unchanged.
    // `rest` always starts a character of valid UTF-8: its lead byte gives its length.
    let next = |rest: &[u8]| -> (usize, Vec<u8>) {
        if let Some((len, rep)) = map.longest_prefix(rest) {
            return (len, rep.to_vec());
        }
        let len = match rest[0] {
            b if (0xc0..0xe0).contains(&b) => 2,
            b if (0xe0..0xf0).contains(&b) => 3,
            b if b >= 0xf0 => 4,
            _ => 1,
        }
        .min(rest.len());
        (len, rest[..len].to_vec())
    };
    if spec.remove_extra_whitespaces {
        while !rest.is_empty() {
            let (len, piece) = next(rest);
            if piece != b" " {
                break;
            }
            rest = &rest[len..];
        }
    }
    let mut out = String::new();
    if rest.is_empty() {
        return out;
    }
    if spec.add_dummy_prefix {
        out.push(if spec.escape_whitespaces { SPACE } else { ' ' });
    }
    let mut prev_space = spec.remove_extra_whitespaces;
    while !rest.is_empty() {
        let (len, piece) = next(rest);
        rest = &rest[len..];
        let mut piece: &[u8] = &piece;
        while prev_space && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        if piece.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(piece);
        for c in text.chars() {
            out.push(if spec.escape_whitespaces && c == ' ' {
                SPACE
            } else {
                c
            });
        }
        prev_space = piece.last() == Some(&b' ');
    }
    if spec.remove_extra_whitespaces {
        let space = if spec.escape_whitespaces { SPACE } else { ' ' };
        while out.ends_with(space) {
            out.pop();
        }
    }
    out
}

/// The `precompiled_charsmap` of a `Precompiled` normaliser, alone or inside a `Sequence`.
fn find_precompiled(normalizer: &serde_json::Value) -> Option<&str> {
    if normalizer["type"] == "Precompiled" {
        return normalizer["precompiled_charsmap"].as_str();
    }
    normalizer["normalizers"]
        .as_array()?
        .iter()
        .find_map(find_precompiled)
}

/// SigLIP's `canonicalize_text`: lower-cased, ASCII punctuation removed, whitespace runs made
/// one space, stripped (Python's whitespace: `str.isspace`).
pub fn canonicalize(text: &str, lower: bool) -> String {
    let text = if lower {
        text.to_lowercase()
    } else {
        text.to_string()
    };
    let kept = text.chars().filter(|c| !PUNCTUATION.contains(*c));
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in kept {
        if super::clean::is_python_space(c) {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

/// open_clip's `_clean_canonicalize` after `basic_clean` (big_vision's `canonicalize_text`):
/// `_` made a space, ASCII punctuation removed, then Python's `str.lower` (in this order: a final
/// sigma is judged without the punctuation), whitespace runs made one space, stripped.
pub fn open_clip_canonicalize(text: &str) -> String {
    let kept: String = text
        .replace('_', " ")
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    canonicalize(&kept.to_lowercase(), false)
}

/// A SentencePiece Unigram model with SigLIP's text handling.
#[derive(Clone)]
pub struct SentencePiece {
    model: Unigram,
    charsmap: CharsMap,
    normalizer: NormalizerSpec,
    /// Special tokens split out of the raw text, with their ids.
    specials: Vec<(String, u32)>,
    eos: u32,
    pad: u32,
    unk_token: String,
    lower: bool,
    /// open_clip's `HFTokenizer(clean='canonicalize')` cleans the whole text first (`_` made a
    /// space, punctuation removed, lower-cased, whitespace collapsed), before the tokenizer.
    open_clip_clean: bool,
    vocab_size: usize,
    /// Pieces of `"<unk>"` alone, dropped from every chunk's front.
    unk_len: usize,
    pieces: Vec<String>,
}

impl std::fmt::Debug for SentencePiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentencePiece")
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

/// What `tokenizer_config.json` may change.
#[derive(Debug, Clone)]
pub struct SiglipOptions {
    pub eos_token: String,
    pub unk_token: String,
    pub pad_token: String,
    pub lower: bool,
}

impl Default for SiglipOptions {
    fn default() -> Self {
        // SiglipTokenizer.__init__'s defaults.
        SiglipOptions {
            eos_token: "</s>".into(),
            unk_token: "<unk>".into(),
            pad_token: "</s>".into(),
            lower: true,
        }
    }
}

impl SiglipOptions {
    /// `tokenizer_config.json`'s `eos_token`, `unk_token`, `pad_token` (strings, or added-token
    /// objects with a `content`) and `do_lower_case`, over [`SiglipOptions::default`]; the
    /// defaults when the file is absent.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let mut options = SiglipOptions::default();
        let Some(config) = TokenizerConfig::read(dir)? else {
            return Ok(options);
        };
        config.tokens_into([
            ("eos_token", &mut options.eos_token),
            ("unk_token", &mut options.unk_token),
            ("pad_token", &mut options.pad_token),
        ]);
        if let Some(lower) = config.bool("do_lower_case") {
            options.lower = lower;
        }
        Ok(options)
    }
}

impl SentencePiece {
    /// The Unigram model of a `tokenizers` `tokenizer.json` (`model.vocab` as `[piece, score]`
    /// pairs, `model.unk_id`, the `Precompiled` normaliser's character map): the same model as
    /// the `spiece.model` it was converted from. Added special tokens are control pieces;
    /// sentencepiece's normaliser flags take their defaults (dummy prefix, extra whitespace
    /// removed, spaces escaped), which a T5-style file's Metaspace pre-tokenizer encodes.
    pub fn from_tokenizer_json(
        path: &Path,
        json: &serde_json::Value,
        options: &SiglipOptions,
    ) -> Result<Self, TokenizerError> {
        use super::spm_model::{Piece, PieceType};
        use base64::Engine;
        let format = |location: &str, expected: &str| TokenizerError::Format {
            path: path.into(),
            location: location.into(),
            expected: expected.into(),
        };
        let model = &json["model"];
        let vocab = model["vocab"]
            .as_array()
            .ok_or_else(|| format("model.vocab", "a list of [piece, score] pairs"))?;
        let unk = model["unk_id"].as_u64();
        let special: std::collections::HashSet<u64> = json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["special"].as_bool().unwrap_or(false))
            .filter_map(|t| t["id"].as_u64())
            .collect();
        let mut pieces = Vec::with_capacity(vocab.len());
        for (i, entry) in vocab.iter().enumerate() {
            let (Some(piece), Some(score)) = (entry[0].as_str(), entry[1].as_f64()) else {
                return Err(format(
                    &format!("model.vocab[{i}]"),
                    "a [piece, score] pair",
                ));
            };
            let kind = match i as u64 {
                i if Some(i) == unk => PieceType::Unknown,
                i if special.contains(&i) => PieceType::Control,
                _ => PieceType::Normal,
            };
            pieces.push(Piece {
                piece: piece.to_string(),
                score: score as f32,
                kind,
            });
        }
        let charsmap = find_precompiled(&json["normalizer"])
            .map(|b64| base64::engine::general_purpose::STANDARD.decode(b64))
            .transpose()
            .map_err(|_| format("normalizer.precompiled_charsmap", "base64 data"))?
            .unwrap_or_default();
        let proto = ModelProto {
            pieces,
            model_type: 1,
            byte_fallback: model["byte_fallback"].as_bool().unwrap_or(false),
            normalizer: NormalizerSpec {
                precompiled_charsmap: charsmap,
                ..NormalizerSpec::default()
            },
        };
        Self::from_proto(path, proto, options)
    }

    /// Reads a `spiece.model`.
    pub fn from_spiece_model(path: &Path, options: &SiglipOptions) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.into(),
            source,
        })?;
        let proto = ModelProto::parse(&bytes).map_err(|e| TokenizerError::Format {
            path: path.into(),
            location: format!("byte {}", e.offset),
            expected: format!("a SentencePiece model protocol buffer ({} found)", e.what),
        })?;
        Self::from_proto(path, proto, options)
    }

    pub(crate) fn from_proto(
        path: &Path,
        proto: ModelProto,
        options: &SiglipOptions,
    ) -> Result<Self, TokenizerError> {
        let format = |location: &str, expected: String| TokenizerError::Format {
            path: path.into(),
            location: location.into(),
            expected,
        };
        if proto.model_type != 1 {
            return Err(format(
                "trainer_spec.model_type",
                format!("1 (Unigram), found {}", proto.model_type),
            ));
        }
        if proto.byte_fallback {
            return Err(format(
                "trainer_spec.byte_fallback",
                "false (byte fallback is not supported)".into(),
            ));
        }
        let charsmap =
            CharsMap::parse(&proto.normalizer.precompiled_charsmap).ok_or_else(|| {
                format(
                    "normalizer_spec.precompiled_charsmap",
                    "a sentencepiece character map".into(),
                )
            })?;
        let unk = proto
            .pieces
            .iter()
            .position(|p| p.kind == super::spm_model::PieceType::Unknown);
        // Pieces that text never produces get a name text cannot hold (NUL never survives
        // sentencepiece's normalisation), so the Unigram lattice cannot match them.
        let vocab: Vec<(String, f64)> = proto
            .pieces
            .iter()
            .map(|p| match p.kind.matches_text() {
                true => (p.piece.clone(), f64::from(p.score)),
                false => (format!("\0{}", p.piece), f64::from(p.score)),
            })
            .collect();
        let model = Unigram::from(vocab, unk, false)
            .map_err(|e| format("pieces", format!("a Unigram vocabulary ({e})")))?;
        let ids: HashMap<&str, u32> = proto
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.as_str(), i as u32))
            .collect();
        let id = |token: &str| {
            ids.get(token)
                .copied()
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: path.into(),
                    token: token.into(),
                })
        };
        let (eos, pad, unk_id) = (
            id(&options.eos_token)?,
            id(&options.pad_token)?,
            id(&options.unk_token)?,
        );
        let mut specials = vec![
            (options.eos_token.clone(), eos),
            (options.unk_token.clone(), unk_id),
        ];
        if !specials.iter().any(|(t, _)| *t == options.pad_token) {
            specials.push((options.pad_token.clone(), pad));
        }
        let mut sp = SentencePiece {
            model,
            charsmap,
            normalizer: proto.normalizer,
            specials,
            eos,
            pad,
            unk_token: options.unk_token.clone(),
            lower: options.lower,
            open_clip_clean: false,
            vocab_size: proto.pieces.len(),
            unk_len: 0,
            pieces: proto.pieces.into_iter().map(|p| p.piece).collect(),
        };
        sp.unk_len = sp.encode_pieces(&options.unk_token).len();
        Ok(sp)
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

    /// sentencepiece's `encode(text, out_type=str)` as `(piece, id)` pairs.
    fn encode_pieces(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = spm_normalize(&self.charsmap, &self.normalizer, text);
        let mut out = Vec::new();
        let mut start = 0;
        let bounds = normalized
            .char_indices()
            .filter(|&(i, c)| c == SPACE && i > 0)
            .map(|(i, _)| i)
            .chain([normalized.len()]);
        for end in bounds {
            let word = &normalized[start..end];
            start = end;
            if word.is_empty() {
                continue;
            }
            // The model only fails on an empty vocabulary, which `from_proto` refused.
            if let Ok(tokens) = self.model.tokenize(word) {
                out.extend(tokens.into_iter().map(|t| (t.value, t.id)));
            }
        }
        out
    }

    /// Splits `text` at the special tokens (leftmost, then longest).
    fn split_specials<'t>(&self, text: &'t str) -> Vec<Result<&'t str, u32>> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let next = self
                .specials
                .iter()
                .filter_map(|(t, id)| {
                    text[pos..]
                        .find(t.as_str())
                        .map(|at| (pos + at, t.len(), *id))
                })
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            let Some((at, len, id)) = next else { break };
            if at > pos {
                out.push(Ok(&text[pos..at]));
            }
            out.push(Err(id));
            pos = at + len;
        }
        if pos < text.len() {
            out.push(Ok(&text[pos..]));
        }
        out
    }

    /// The same model behind open_clip's `HFTokenizer` with `clean='canonicalize'` (open_clip's
    /// SigLIP models): the raw text goes through `basic_clean` (ftfy, HTML unescaping) and is
    /// canonicalised once more before anything else ([`open_clip_canonicalize`]), so
    /// special-token strings in the text lose their punctuation and are read as words.
    pub fn with_open_clip_canonicalize(mut self) -> Self {
        self.open_clip_clean = true;
        self
    }

    /// The ids of `text` without the end token or padding.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned;
        let text = match self.open_clip_clean {
            true => {
                let basic = match super::clean::Cleaner::get() {
                    Ok(c) => c.open_clip_basic(text),
                    Err(_) => text.to_string(),
                };
                cleaned = open_clip_canonicalize(&basic);
                cleaned.as_str()
            }
            false => text,
        };
        let text = format!("{SPACE}{}", text.replace(SPACE, " "));
        let mut tokens: Vec<(Option<String>, u32)> = Vec::new();
        for chunk in self.split_specials(&text) {
            match chunk {
                Err(id) => tokens.push((None, id)),
                Ok(chunk) => {
                    let canonical = canonicalize(chunk, self.lower);
                    let pieces = self.encode_pieces(&format!("{}{canonical}", self.unk_token));
                    let skip = if pieces.len() >= self.unk_len {
                        self.unk_len
                    } else {
                        0
                    };
                    tokens.extend(pieces.into_iter().skip(skip).map(|(p, id)| (Some(p), id)));
                }
            }
        }
        let lone_space = SPACE.to_string();
        if tokens.len() > 1
            && tokens[0].0.as_deref() == Some(lone_space.as_str())
            && tokens[1].0.is_none()
        {
            tokens.remove(0);
        }
        tokens.into_iter().map(|(_, id)| id).collect()
    }

    /// One row of model input: the ids, truncated to leave room for the end token, `</s>`
    /// (unless already last), then the pad id up to `context_length`.
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        self.tokenize_padded(text, context_length, self.pad)
    }

    /// As [`SentencePiece::tokenize`], padding with `pad_id`.
    pub fn tokenize_padded(&self, text: &str, context_length: usize, pad_id: u32) -> Vec<u32> {
        let mut ids = self.encode(text);
        ids.truncate(context_length.saturating_sub(1));
        if ids.last() != Some(&self.eos) {
            ids.push(self.eos);
        }
        ids.truncate(context_length);
        ids.resize(context_length, pad_id);
        ids
    }

    /// The pieces of `ids` joined, `▁` read as a space; ids outside the vocabulary skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&i| self.pieces.get(i as usize))
            .map(String::as_str)
            .collect::<String>()
            .replace(SPACE, " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_is_siglips() {
        assert_eq!(
            canonicalize("  A Photo, of a CAT!!  ", true),
            "a photo of a cat"
        );
        assert_eq!(
            canonicalize("tab\tand\n\u{a0}newline", true),
            "tab and newline"
        );
        assert_eq!(canonicalize("don't-stop", false), "dontstop");
        assert_eq!(canonicalize("!!!", true), "");
    }

    #[test]
    fn open_clip_canonicalize_removes_punctuation_before_lowering() {
        assert_eq!(open_clip_canonicalize(" Snake_Case, OK! "), "snake case ok");
        // Python: "Α&Σ x".translate(...) is "ΑΣ x", whose sigma is final ("ας x"); lower-cased
        // first (SiglipTokenizer's order) the `&` keeps it medial ("ασ x").
        assert_eq!(open_clip_canonicalize("Α&Σ x"), "ας x");
        assert_eq!(canonicalize("Α&Σ x", true), "ασ x");
    }
}
