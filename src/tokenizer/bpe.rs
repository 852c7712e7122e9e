//! Byte-level BPE with CLIP's `</w>` end-of-word marker.
//!
//! The algorithm of open_clip's `SimpleTokenizer.bpe` (and of `tokenizers`' BPE model with
//! `end_of_word_suffix="</w>"`): a word starts as one symbol per UTF-8 byte, the last one
//! carrying `</w>`; the adjacent pair with the lowest merge rank is merged everywhere, left to
//! right, until no pair has a rank. Symbols are vocabulary ids, so a merge is one table lookup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::TokenizerError;

/// Marker on the last symbol of a word.
pub const END_OF_WORD: &str = "</w>";

/// Words cached per tokenizer before the cache starts over; bounds memory on endless input.
const CACHE_LIMIT: usize = 100_000;

/// GPT-2's reversible byte → printable character map (open_clip `bytes_to_unicode`): printable
/// Latin-1 bytes map to themselves, the other 68 to U+0100 onwards, in byte order.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut map = ['\0'; 256];
    let mut extra = 0;
    for (b, slot) in map.iter_mut().enumerate() {
        let b = b as u32;
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            0xff + extra
        };
        *slot = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    map
}

/// The byte tokens in vocabulary order (open_clip `list(bytes_to_unicode().values())`): the
/// printable bytes first, then the 68 remapped ones.
pub(crate) fn byte_tokens_in_vocab_order() -> Vec<char> {
    let map = bytes_to_unicode();
    let (mut printable, remapped): (Vec<char>, Vec<char>) =
        map.iter().partition(|&&c| (c as u32) < 0x100);
    printable.extend(remapped);
    printable
}

/// A merge rule as read from a file, with where it came from for error messages.
pub(crate) struct Merge {
    pub left: String,
    pub right: String,
    pub location: String,
}

pub(crate) struct Bpe {
    /// Vocabulary id of each byte's symbol, inside a word and at its end.
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// id → token string, "" where the vocabulary skips an id.
    tokens: Vec<String>,
    vocab: HashMap<String, u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    /// The paths only name the sources in errors.
    pub fn new(
        vocab_path: &Path,
        vocab: HashMap<String, u32>,
        merges_path: &Path,
        merges: Vec<Merge>,
    ) -> Result<Self, TokenizerError> {
        let missing = |token: String| TokenizerError::MissingToken {
            path: vocab_path.to_path_buf(),
            token,
        };
        let mut byte_ids = [0; 256];
        let mut byte_end_ids = [0; 256];
        for (b, c) in bytes_to_unicode().iter().enumerate() {
            let s = c.to_string();
            byte_ids[b] = *vocab.get(&s).ok_or_else(|| missing(s.clone()))?;
            let end = format!("{s}{END_OF_WORD}");
            byte_end_ids[b] = *vocab.get(&end).ok_or_else(|| missing(end.clone()))?;
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.into_iter().enumerate() {
            let id = |s: &str| {
                vocab.get(s).copied().ok_or_else(|| TokenizerError::Format {
                    path: PathBuf::from(merges_path),
                    location: m.location.clone(),
                    expected: format!("a merge of vocabulary tokens, but `{s}` is not in it"),
                })
            };
            let pair = (id(&m.left)?, id(&m.right)?);
            let merged = id(&format!("{}{}", m.left, m.right))?;
            // A repeated pair keeps its last rank, as Python's dict and `tokenizers` do.
            table.insert(pair, (rank as u32, merged));
        }
        let len = vocab.values().max().map_or(0, |&m| m as usize + 1);
        crate::limits::VOCABULARY
            .check("vocabulary size (largest id + 1)", len)
            .map_err(|limit| TokenizerError::Limit {
                path: vocab_path.to_path_buf(),
                limit,
            })?;
        if len > 4 * vocab.len() + 1024 {
            return Err(TokenizerError::Format {
                path: vocab_path.to_path_buf(),
                location: "vocabulary".to_string(),
                expected: format!(
                    "ids numbered from 0 without large gaps ({} tokens, largest id {})",
                    vocab.len(),
                    len - 1
                ),
            });
        }
        let mut tokens = vec![String::new(); len];
        for (token, &id) in &vocab {
            tokens[id as usize] = token.clone();
        }
        Ok(Bpe {
            byte_ids,
            byte_end_ids,
            merges: table,
            tokens,
            vocab,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens
            .get(id as usize)
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    pub fn len(&self) -> usize {
        self.vocab.len()
    }

    /// Appends the ids of one pre-tokenized word (raw text, before the byte mapping).
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let Some((&last, init)) = bytes.split_last() else {
            return;
        };
        if let Some(ids) = self.cache_get(word) {
            out.extend_from_slice(&ids);
            return;
        }
        let mut symbols: Vec<u32> = init.iter().map(|&b| self.byte_ids[b as usize]).collect();
        symbols.push(self.byte_end_ids[last as usize]);
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(r, m)| (r, w[0], w[1], m))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
        out.extend_from_slice(&symbols);
        self.cache_put(word, symbols);
    }

    fn cache_get(&self, word: &str) -> Option<Vec<u32>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still sound.
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(word).cloned()
    }

    fn cache_put(&self, word: &str, ids: Vec<u32>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), ids);
    }
}
