//! Text clean-up before BPE, one function per reference.
//!
//! * open_clip (`src/open_clip/tokenizer.py`, `clean="lower"`, the OpenAI CLIP code path):
//!   `ftfy.fix_text(text)`, `html.unescape` twice, strip, `" ".join(text.split())`, `lower()`.
//! * transformers (`models/clip/tokenization_clip.py`, 5.x): the `tokenizers` normalizer
//!   `Sequence([NFC(), Replace(Regex(r"\s+"), " "), Lowercase()])` and nothing else — no ftfy,
//!   no HTML unescaping.

use std::sync::{Arc, OnceLock};

use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use super::html::HtmlUnescaper;
use super::mojibake::{fix_c1_controls, Mojibake};
use super::tables::Tables;
use super::TokenizerError;

/// ftfy's `max_decode_length`: segments longer than this many characters are fixed in pieces.
const MAX_DECODE_LENGTH: usize = 1_000_000;

pub(crate) struct Cleaner {
    tables: Arc<Tables>,
    html: HtmlUnescaper,
    mojibake: Mojibake,
    ansi: Regex,
}

/// Python's `str.isspace()`: White_Space plus the information separators U+1C..U+1F.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// ftfy `remove_control_chars`: C0 controls other than \t \n \x0c \r, DEL, the deprecated
/// Arabic format controls, BOM, interlinear annotation marks and U+FFFC.
fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{00}'..='\u{08}'
        | '\u{0b}'
        | '\u{0e}'..='\u{1f}'
        | '\u{7f}'
        | '\u{206a}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffc}')
}

impl Cleaner {
    fn new() -> Result<Self, String> {
        let tables = Tables::get().map_err(|e| e.to_string())?;
        Ok(Cleaner {
            html: HtmlUnescaper::new().map_err(|e| e.to_string())?,
            mojibake: Mojibake::new(&tables).map_err(|e| e.to_string())?,
            // ftfy fixes.ANSI_RE = "\033\\[((?:\\d|;)*)([a-zA-Z])"; Python's \d is Unicode Nd.
            ansi: Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").map_err(|e| e.to_string())?,
            tables,
        })
    }

    /// The process-wide cleaner (its regexes take a few milliseconds to build).
    pub fn get() -> Result<Arc<Cleaner>, TokenizerError> {
        static CLEANER: OnceLock<Result<Arc<Cleaner>, String>> = OnceLock::new();
        CLEANER
            .get_or_init(|| Cleaner::new().map(Arc::new))
            .clone()
            .map_err(|msg| TokenizerError::EmbeddedAsset {
                asset: "text cleaning rules",
                msg,
            })
    }

    /// open_clip's `basic_clean`: `ftfy.fix_text`, `html.unescape` twice, strip.
    pub fn open_clip_basic(&self, text: &str) -> String {
        let text = self.fix_text(text);
        let text = self.html.python_unescape(&self.tables, &text);
        let text = self.html.python_unescape(&self.tables, &text);
        text.trim_matches(is_python_space).to_string()
    }

    /// open_clip's `_clean_lower`.
    pub fn open_clip(&self, text: &str) -> String {
        let text = self.fix_text(text);
        let text = self.html.python_unescape(&self.tables, &text);
        let text = self.html.python_unescape(&self.tables, &text);
        let words: Vec<&str> = text
            .split(is_python_space)
            .filter(|w| !w.is_empty())
            .collect();
        words.join(" ").to_lowercase()
    }

    /// The transformers CLIPTokenizer normalizer. `Lowercase` maps character by character
    /// (Rust's `char::to_lowercase`), so unlike Python's `str.lower` it has no final sigma.
    pub fn transformers(text: &str) -> String {
        let text = nfc(text);
        let mut out = String::with_capacity(text.len());
        let mut in_space = false;
        for c in text.chars() {
            if c.is_whitespace() {
                if !in_space {
                    out.push(' ');
                }
                in_space = true;
            } else {
                out.extend(c.to_lowercase());
                in_space = false;
            }
        }
        out
    }

    /// ftfy.fix_text with its default configuration.
    pub fn fix_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        // "auto": once a segment contains '<', HTML unescaping stays off for the rest.
        let mut unescape = true;
        for line in text.split_inclusive('\n') {
            for segment in chunks(line, MAX_DECODE_LENGTH) {
                if segment.contains('<') {
                    unescape = false;
                }
                out.push_str(&self.fix_segment(segment, unescape));
            }
        }
        out
    }

    /// ftfy.fix_and_explain: apply every fixer until the text stops changing.
    fn fix_segment(&self, segment: &str, unescape: bool) -> String {
        let mut text = segment.to_string();
        loop {
            let orig = text.clone();
            if unescape {
                text = self.html.ftfy_unescape(&self.tables, &text);
            }
            text = self.mojibake.fix_encoding(&self.tables, &text);
            if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
                text = fix_c1_controls(&self.tables, &text);
            }
            text = self.translate(&text);
            text = fix_line_breaks(&text);
            if text.contains('\u{1b}') {
                text = self.ansi.replace_all(&text, "").into_owned();
            }
            if text.chars().any(is_removed_control) {
                text.retain(|c| !is_removed_control(c));
            }
            text = nfc(&text);
            if text == orig {
                return text;
            }
        }
    }

    /// fix_latin_ligatures, fix_character_width and uncurl_quotes, in that order. Each maps
    /// single characters and none produces a character another one maps, so one pass does all.
    fn translate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii() {
                out.push(c);
            } else if let Some(s) = self.tables.ligatures.get(&c) {
                // ŉ becomes "ʼn", whose apostrophe uncurl_quotes then straightens.
                out.extend(s.chars().map(uncurl));
            } else if let Some(s) = self.tables.width.get(&c) {
                out.extend(s.chars().map(uncurl));
            } else {
                out.push(uncurl(c));
            }
        }
        out
    }
}

/// ftfy uncurl_quotes: SINGLE_QUOTE_RE "[\u02bc\u2018-\u201b]", DOUBLE_QUOTE_RE "[\u201c-\u201f]".
fn uncurl(c: char) -> char {
    match c {
        '\u{02bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// ftfy fix_line_breaks: CRLF, CR, LINE/PARAGRAPH SEPARATOR and NEXT LINE become "\n".
fn fix_line_breaks(text: &str) -> String {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return text.to_string();
    }
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

pub(crate) fn nfc(text: &str) -> String {
    match is_nfc_quick(text.chars()) {
        IsNormalized::Yes => text.to_string(),
        _ => text.nfc().collect(),
    }
}

/// Splits `text` into pieces of at most `max` characters.
fn chunks(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}
