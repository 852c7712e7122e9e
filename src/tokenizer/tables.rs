//! Character tables the text cleaner needs, read once from the embedded
//! `assets/text_clean_tables.json`.
//!
//! The tables are data, not code: `scripts/fixtures/tokenizer.py` dumps them from Python 3.11's
//! `html.entities.html5` and from ftfy 6.3.1's `chardata.py` / `badness.py`, so the Rust cleaner
//! sees exactly the character sets the references see instead of a hand-copied approximation.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::TokenizerError;

const TABLES_JSON: &str = include_str!("../../assets/text_clean_tables.json");
const TABLES_NAME: &str = "assets/text_clean_tables.json (embedded)";

/// A character class as inclusive code point ranges, the form the fixture script writes.
pub(crate) type Ranges = Vec<(u32, u32)>;

#[derive(Deserialize)]
struct RawEncoding {
    /// What bytes 0x80..=0xFF decode to; `None` where the codec has no character.
    high: Vec<Option<String>>,
    /// What byte 0x1A decodes to (U+FFFD in ftfy's "sloppy" codecs).
    x1a: String,
}

#[derive(Deserialize)]
struct RawTables {
    html5: HashMap<String, String>,
    ftfy_upper_entities: HashMap<String, String>,
    width_map: HashMap<String, String>,
    ligatures: HashMap<String, String>,
    charmap_encodings: Vec<String>,
    encodings: HashMap<String, RawEncoding>,
    badness: HashMap<String, Vec<(u32, u32)>>,
    utf8_clues: HashMap<String, Vec<(u32, u32)>>,
}

/// A single-byte codec: the 256-entry decoding table and its inverse.
pub(crate) struct Charmap {
    pub name: String,
    pub decode: [Option<char>; 256],
    pub encode: HashMap<char, u8>,
}

impl Charmap {
    fn new(name: &str, raw: &RawEncoding) -> Result<Self, String> {
        let mut decode = [None; 256];
        for (b, slot) in decode.iter_mut().enumerate().take(0x80) {
            *slot = char::from_u32(b as u32);
        }
        decode[0x1A] = Some(single_char(&raw.x1a).ok_or("x1a is not one character")?);
        if raw.high.len() != 0x80 {
            return Err(format!(
                "`high` has {} entries, expected 128",
                raw.high.len()
            ));
        }
        for (i, c) in raw.high.iter().enumerate() {
            decode[0x80 + i] = match c {
                Some(s) => Some(single_char(s).ok_or("a decoded byte is not one character")?),
                None => None,
            };
        }
        let encode = decode
            .iter()
            .enumerate()
            .filter_map(|(b, c)| c.map(|c| (c, b as u8)))
            .collect();
        Ok(Charmap {
            name: name.to_string(),
            decode,
            encode,
        })
    }
}

pub(crate) struct Tables {
    /// Python's `html.entities.html5`: names with and without the trailing `;`.
    pub html5: HashMap<String, String>,
    /// ftfy's extra upper-case entities (`&EACUTE;`), keyed with `&` and `;`.
    pub ftfy_upper: HashMap<String, String>,
    pub width: HashMap<char, String>,
    pub ligatures: HashMap<char, String>,
    /// ftfy's `CHARMAP_ENCODINGS`, in the order it tries them.
    pub charmaps: Vec<Charmap>,
    /// Strict Windows-1252 (no characters for 0x81, 0x8D, 0x8F, 0x90, 0x9D).
    pub windows_1252: Charmap,
    pub badness: HashMap<String, Ranges>,
    pub utf8_clues: HashMap<String, Ranges>,
}

fn single_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

fn char_map(raw: HashMap<String, String>, what: &str) -> Result<HashMap<char, String>, String> {
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .map(|c| (c, v))
                .ok_or_else(|| format!("{what}: key `{k}` is not a code point"))
        })
        .collect()
}

impl Tables {
    fn parse() -> Result<Tables, String> {
        let raw: RawTables = serde_json::from_str(TABLES_JSON).map_err(|e| e.to_string())?;
        let mut encodings = raw.encodings;
        let mut charmaps = Vec::new();
        for name in &raw.charmap_encodings {
            let enc = encodings
                .get(name)
                .ok_or_else(|| format!("no table for encoding `{name}`"))?;
            charmaps.push(Charmap::new(name, enc).map_err(|e| format!("{name}: {e}"))?);
        }
        let cp1252 = encodings
            .remove("windows-1252")
            .ok_or("no table for encoding `windows-1252`")?;
        Ok(Tables {
            html5: raw.html5,
            ftfy_upper: raw.ftfy_upper_entities,
            width: char_map(raw.width_map, "width_map")?,
            ligatures: char_map(raw.ligatures, "ligatures")?,
            charmaps,
            windows_1252: Charmap::new("windows-1252", &cp1252)?,
            badness: raw.badness,
            utf8_clues: raw.utf8_clues,
        })
    }

    /// The process-wide tables, parsed on first use.
    pub fn get() -> Result<Arc<Tables>, TokenizerError> {
        static TABLES: OnceLock<Result<Arc<Tables>, String>> = OnceLock::new();
        TABLES
            .get_or_init(|| Tables::parse().map(Arc::new))
            .clone()
            .map_err(|msg| TokenizerError::EmbeddedAsset {
                asset: TABLES_NAME,
                msg,
            })
    }

    /// A category from ftfy's badness or UTF-8-clue tables; the fixture script writes all of them.
    pub fn class(&self, name: &str) -> Result<&Ranges, AssetError> {
        self.badness
            .get(name)
            .or_else(|| self.utf8_clues.get(name))
            .ok_or_else(|| AssetError::MissingClass {
                name: name.to_string(),
            })
    }
}

/// Why the embedded text clean-up tables cannot be used (only a broken build can cause it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssetError {
    #[error("no character class `{name}`")]
    MissingClass { name: String },
    #[error("the {what} pattern does not compile: {msg}")]
    Pattern { what: &'static str, msg: String },
}
