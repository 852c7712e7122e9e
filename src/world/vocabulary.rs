//! A byte-level BPE vocabulary of the world's own, trained on its captions and written as a
//! standard Hugging Face `tokenizer.json` (BPE model, CLIP's `</w>` end-of-word suffix), so the
//! project's [`Tokenizer`](crate::tokenizer::Tokenizer) — and `tokenizers` — read it.
//!
//! Vocabulary order follows CLIP's: the 256 byte symbols, the same 256 with `</w>`, one token
//! per merge in merge order, then `<|startoftext|>` and `<|endoftext|>` (the largest id, so
//! both pooling rules find it). Words never seen in training (held-out class names) still
//! encode, as shorter pieces.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

const END_OF_WORD: &str = "</w>";
pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A trained vocabulary: tokens by id and the merges in rank order.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
}

impl Vocabulary {
    /// Trains byte-level BPE on `texts`: merges the most frequent adjacent pair (ties broken by
    /// the pair's text, for determinism) until no pair occurs twice or `max_merges` is reached.
    pub fn train<S: AsRef<str>>(texts: &[S], max_merges: usize) -> Self {
        let map = byte_symbols();
        let mut words: HashMap<Vec<String>, usize> = HashMap::new();
        for text in texts {
            for word in pre_tokenize(text.as_ref()) {
                let bytes = word.as_bytes();
                let mut symbols: Vec<String> =
                    bytes.iter().map(|&b| map[b as usize].to_string()).collect();
                if let Some(last) = symbols.last_mut() {
                    last.push_str(END_OF_WORD);
                }
                *words.entry(symbols).or_default() += 1;
            }
        }
        let mut merges = Vec::new();
        while merges.len() < max_merges {
            let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
            for (symbols, &n) in &words {
                for w in symbols.windows(2) {
                    *pairs.entry((w[0].clone(), w[1].clone())).or_default() += n;
                }
            }
            // The BTreeMap iterates pairs in text order; `max_by_key` keeps the last maximum,
            // so reverse to keep the first.
            let Some((best, count)) = pairs.into_iter().rev().max_by_key(|(_, n)| *n) else {
                break;
            };
            if count < 2 {
                break;
            }
            let merged = format!("{}{}", best.0, best.1);
            words = words
                .into_iter()
                .map(|(symbols, n)| (merge_pair(&symbols, &best, &merged), n))
                .fold(HashMap::new(), |mut acc, (s, n)| {
                    *acc.entry(s).or_default() += n;
                    acc
                });
            merges.push(best);
        }
        let mut tokens: Vec<String> = byte_symbols_in_vocab_order()
            .iter()
            .map(char::to_string)
            .collect();
        let ends: Vec<String> = tokens.iter().map(|t| format!("{t}{END_OF_WORD}")).collect();
        tokens.extend(ends);
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(START_OF_TEXT.into());
        tokens.push(END_OF_TEXT.into());
        Vocabulary { tokens, merges }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The `tokenizer.json` document (the layout of openai/clip-vit-base-patch32's).
    pub fn to_tokenizer_json(&self) -> Value {
        let vocab: serde_json::Map<String, Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        let n = self.tokens.len();
        let added = |id: usize, content: &str, normalized: bool| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": normalized, "special": true})
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [added(n - 2, START_OF_TEXT, true), added(n - 1, END_OF_TEXT, false)],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
            "post_processor": {"type": "RobertaProcessing", "sep": [END_OF_TEXT, n - 1],
                "cls": [START_OF_TEXT, n - 2], "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": END_OF_TEXT,
                "continuing_subword_prefix": "", "end_of_word_suffix": END_OF_WORD,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges}
        })
    }
}

fn merge_pair(symbols: &[String], pair: &(String, String), merged: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == pair.0 && symbols[i + 1] == pair.1 {
            out.push(merged.to_string());
            i += 2;
        } else {
            out.push(symbols[i].clone());
            i += 1;
        }
    }
    out
}

/// CLIP's word split for the world's (ASCII, lower-case) captions: runs of letters, single
/// digits, runs of other non-space characters.
fn pre_tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut kind = 0u8;
    for c in lower.chars() {
        let k = if c.is_whitespace() {
            0
        } else if c.is_alphabetic() {
            1
        } else if c.is_numeric() {
            2
        } else {
            3
        };
        if (k != kind || k == 2) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if k != 0 {
            cur.push(c);
        }
        kind = k;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// GPT-2's byte → printable character map, shared with the CLIP tokenizer so that a
/// vocabulary trained here is read back byte for byte.
fn byte_symbols() -> [char; 256] {
    crate::tokenizer::bpe::bytes_to_unicode()
}

/// Printable bytes first, then the remapped ones: CLIP's vocabulary order.
fn byte_symbols_in_vocab_order() -> Vec<char> {
    let (mut printable, remapped): (Vec<char>, Vec<char>) =
        byte_symbols().iter().partition(|&&c| (c as u32) < 0x100);
    printable.extend(remapped);
    printable
}
