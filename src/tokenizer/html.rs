//! HTML character references, two ways.
//!
//! * [`python_unescape`] is CPython 3.11's `html.unescape` (Lib/html/__init__.py): the HTML5
//!   rules, including references without `;` (`&amp` → `&`), the longest-prefix rule for
//!   unknown names (`&notit;` → `¬it;`) and the remapping of invalid numeric references.
//!   open_clip's `basic_clean` applies it twice after ftfy.
//! * [`ftfy_unescape`] is ftfy 6.3.1's `fixes.unescape_html`: only `&...;` with a semicolon, plus
//!   upper-cased names of lower-case entities (`&EACUTE;` → `É`).

use regex::{Captures, Regex};

use super::tables::Tables;

pub(crate) struct HtmlUnescaper {
    python: Regex,
    ftfy: Regex,
}

/// CPython's `_invalid_charrefs`: numeric references the HTML5 spec remaps (mostly Windows-1252).
fn invalid_charref(num: u64) -> Option<&'static str> {
    Some(match num {
        0x00 => "\u{fffd}",
        0x0d => "\r",
        0x80 => "\u{20ac}",
        0x81 => "\u{81}",
        0x82 => "\u{201a}",
        0x83 => "\u{0192}",
        0x84 => "\u{201e}",
        0x85 => "\u{2026}",
        0x86 => "\u{2020}",
        0x87 => "\u{2021}",
        0x88 => "\u{02c6}",
        0x89 => "\u{2030}",
        0x8a => "\u{0160}",
        0x8b => "\u{2039}",
        0x8c => "\u{0152}",
        0x8d => "\u{8d}",
        0x8e => "\u{017d}",
        0x8f => "\u{8f}",
        0x90 => "\u{90}",
        0x91 => "\u{2018}",
        0x92 => "\u{2019}",
        0x93 => "\u{201c}",
        0x94 => "\u{201d}",
        0x95 => "\u{2022}",
        0x96 => "\u{2013}",
        0x97 => "\u{2014}",
        0x98 => "\u{02dc}",
        0x99 => "\u{2122}",
        0x9a => "\u{0161}",
        0x9b => "\u{203a}",
        0x9c => "\u{0153}",
        0x9d => "\u{9d}",
        0x9e => "\u{017e}",
        0x9f => "\u{0178}",
        _ => return None,
    })
}

/// CPython's `_invalid_codepoints`: numeric references that decode to nothing.
fn invalid_codepoint(num: u64) -> bool {
    matches!(num, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
        || (num <= 0x10ffff && (num & 0xfffe) == 0xfffe)
}

fn numeric_charref(digits: &str, radix: u32) -> String {
    // Python parses arbitrarily long numbers; anything past u64 is far beyond U+10FFFF anyway.
    let num = digits
        .chars()
        .try_fold(0u64, |acc, c| {
            let d = c.to_digit(radix)?;
            Some(acc.saturating_mul(radix as u64).saturating_add(d as u64))
        })
        .unwrap_or(u64::MAX);
    if let Some(s) = invalid_charref(num) {
        return s.to_string();
    }
    if (0xd800..=0xdfff).contains(&num) || num > 0x10ffff {
        return "\u{fffd}".to_string();
    }
    if invalid_codepoint(num) {
        return String::new();
    }
    char::from_u32(num as u32).map_or_else(|| "\u{fffd}".to_string(), String::from)
}

impl HtmlUnescaper {
    pub fn new() -> Result<Self, regex::Error> {
        Ok(HtmlUnescaper {
            // CPython: r'&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)'
            python: Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0c <&#;]{1,32};?)")?,
            // ftfy chardata.HTML_ENTITY_RE: r"&#?[0-9A-Za-z]{1,24};"
            ftfy: Regex::new(r"&#?[0-9A-Za-z]{1,24};")?,
        })
    }

    fn python_charref(&self, tables: &Tables, s: &str) -> String {
        if let Some(num) = s.strip_prefix('#') {
            let num = num.trim_end_matches(';');
            return match num.strip_prefix(['x', 'X']) {
                Some(hex) => numeric_charref(hex, 16),
                None => numeric_charref(num, 10),
            };
        }
        if let Some(v) = tables.html5.get(s) {
            return v.clone();
        }
        // The longest known prefix of at least two characters wins; the rest stays as text.
        let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
        for x in (2..bounds.len()).rev() {
            let (head, tail) = s.split_at(bounds[x]);
            if let Some(v) = tables.html5.get(head) {
                return format!("{v}{tail}");
            }
        }
        format!("&{s}")
    }

    /// CPython's `html.unescape`.
    pub fn python_unescape(&self, tables: &Tables, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.python
            .replace_all(text, |c: &Captures| self.python_charref(tables, &c[1]))
            .into_owned()
    }

    /// ftfy's `unescape_html`.
    pub fn ftfy_unescape(&self, tables: &Tables, text: &str) -> String {
        if !text.contains('&') {
            return text.to_string();
        }
        self.ftfy
            .replace_all(text, |c: &Captures| {
                let m = &c[0];
                let name = &m[1..];
                if let Some(v) = tables.html5.get(name).or_else(|| tables.ftfy_upper.get(m)) {
                    return v.clone();
                }
                if m.starts_with("&#") {
                    // Only a reference consumed up to its `;` counts.
                    let s = self.python_unescape(tables, m);
                    return if s.contains(';') { m.to_string() } else { s };
                }
                m.to_string()
            })
            .into_owned()
    }
}
