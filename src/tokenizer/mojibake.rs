//! ftfy 6.3.1's `fix_encoding`: detect mojibake (UTF-8 that was decoded as a single-byte
//! codepage) and decode it again.
//!
//! A port of `ftfy/__init__.py::_fix_encoding_one_step_and_explain`, `ftfy/fixes.py`
//! (`restore_byte_a0`, `replace_lossy_sequences`, `decode_inconsistent_utf8`, `fix_c1_controls`),
//! `ftfy/badness.py::BADNESS_RE` and the `utf-8-variants` codec. The heuristic only matters in
//! that open_clip runs it on every prompt, so this follows the Python control flow step by step
//! rather than improving on it. Character classes come from the generated tables (see
//! `tables.rs`); Python regex features the `regex` crate lacks (look-around) are done by hand.

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::tables::{AssetError, Charmap, Ranges, Tables};

pub(crate) struct Mojibake {
    badness: Regex,
    utf8_detector: Regex,
    utf8_continuation_strict: Ranges,
    altered_utf8: BytesRegex,
    lossy_utf8: BytesRegex,
    c1: Regex,
}

/// A class body (without brackets) for ranges, every character escaped, so no table content
/// can be read as regex syntax.
fn body(ranges: &[(u32, u32)]) -> String {
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                format!("\\x{{{lo:X}}}")
            } else {
                format!("\\x{{{lo:X}}}-\\x{{{hi:X}}}")
            }
        })
        .collect()
}

/// Literal characters as a class body.
fn lit(chars: &str) -> String {
    chars
        .chars()
        .map(|c| format!("\\x{{{:X}}}", c as u32))
        .collect()
}

fn contains(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

impl Mojibake {
    pub fn new(tables: &Tables) -> Result<Self, AssetError> {
        let cat = |name: &str| tables.class(name).map(|r| body(r));
        let c1 = cat("c1")?;
        let bad = cat("bad")?;
        let common = cat("common")?;
        let law = cat("law")?;
        let currency = cat("currency")?;
        let start = cat("start_punctuation")?;
        let end = cat("end_punctuation")?;
        let numeric = cat("numeric")?;
        let kaomoji = cat("kaomoji")?;
        let upper_acc = cat("upper_accented")?;
        let lower_acc = cat("lower_accented")?;
        let upper_common = cat("upper_common")?;
        let lower_common = cat("lower_common")?;
        let boxes = cat("box")?;
        // Python's `\s` is str.isspace(), which adds the separators U+1C..U+1F to White_Space;
        // Python's `\w` is str.isalnum() plus `_`.
        let space = r"[\s\x1C-\x1F]";
        let word = r"[\p{L}\p{N}_]";
        let l = |s: &str| lit(s);
        // badness.py BADNESS_RE, alternative by alternative.
        let alternatives = [
            format!("[{c1}]"),
            format!("[{bad}{lower_acc}{upper_acc}{boxes}{start}{end}{currency}{numeric}{law}][{bad}]"),
            format!("[a-zA-Z][{lower_common}{upper_common}][{bad}]"),
            format!("[{bad}][{lower_acc}{upper_acc}{boxes}{start}{end}{currency}{numeric}{law}]"),
            format!("[{lower_acc}{lower_common}{boxes}{end}{currency}{numeric}][{upper_acc}]"),
            format!("[{boxes}{end}{currency}{numeric}][{lower_acc}]"),
            format!("[{lower_acc}{boxes}{end}][{currency}]"),
            format!("{space}[{upper_acc}][{currency}]"),
            format!("[{upper_acc}{boxes}][{numeric}{law}]"),
            format!("[{lower_acc}{upper_acc}{boxes}{currency}{end}][{start}][{numeric}]"),
            format!("[{lower_acc}{upper_acc}{currency}{numeric}{boxes}{law}][{end}][{start}]"),
            format!("[{currency}{numeric}{boxes}][{start}]"),
            format!("[a-z][{upper_acc}][{start}{currency}]"),
            format!("[{boxes}][{kaomoji}]"),
            format!("[{lower_acc}{upper_acc}{currency}{numeric}{start}{end}{law}][{boxes}]"),
            format!("[{boxes}][{end}]"),
            format!("[{lower_acc}{upper_acc}][{start}{end}]{word}"),
            format!("[{}][^A-Za-z]", l("Œœ")),
            format!("[{upper_acc}]{}", l("°")),
            format!(
                "[{}][{}{start}{end}{}]",
                l("ÂÃÎÐ"),
                l("€œŠš¢£Ÿž\u{a0}\u{ad}®©°·»"),
                l("–—´")
            ),
            format!("{}[{}]", l("×"), l("²³")),
            format!(
                "[{ar}][{common}{currency}{bad}{numeric}{start}{extra}][{ar}][{common}{currency}{bad}{numeric}{start}{extra}]",
                ar = l("ØÙ"),
                extra = l("ŸŠ®°µ»")
            ),
            format!("{}[{}]", l("à"), l("²µ¹¼½¾")),
            format!("{}[{}]", l("√"), l("±∂†≠®™´≤≥¥µø")),
            format!("{}[{}]", l("≈"), l("°¢")),
            format!("{}[{}]", l("‚Ä"), l("ìîïòôúùû†°¢π")),
            format!("{}[{}][{}]", l("‚"), l("âó"), l("àä°ê")),
            l("вЂ"),
            format!(
                "[{v}][{c1}{bad}{start}{end}{currency}{}][{v}]",
                l("°µ"),
                v = l("ВГРС")
            ),
            format!("{}.[A-Za-z ]", l("ГўВЂВ")),
            format!("{}[{}]", l("Ã"), l("\u{a0}¡")),
            format!("[a-z]{space}?[{}][ ]", l("ÃÂ")),
            format!("^[{}][ ]", l("ÃÂ")),
            format!("[a-z.,?!{end}]{}[ {start}{end}]", l("Â")),
            format!("{}[{}]", l("β€"), l("™\u{a0}Ά\u{ad}®°")),
            format!(
                "[{g}][{c1}{bad}{start}{end}{currency}{}][{g}]",
                l("°"),
                g = l("ΒΓΞΟ")
            ),
            l("ā€"),
        ];
        let badness = Regex::new(&alternatives.join("|")).map_err(|e| pattern("badness", e))?;

        let first2 = cat("utf8_first_of_2")?;
        let first3 = cat("utf8_first_of_3")?;
        let first4 = cat("utf8_first_of_4")?;
        let cont = cat("utf8_continuation")?;
        // chardata.UTF8_DETECTOR_RE without its look-behind, which `utf8_matches` applies.
        let utf8_detector = Regex::new(&format!(
            "(?:[{first2}][{cont}]|[{first3}][{cont}]{{2}}|[{first4}][{cont}]{{3}})+"
        ))
        .map_err(|e| pattern("UTF-8 detector", e))?;
        let altered_utf8 = BytesRegex::new(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        )
        .map_err(|e| pattern("altered UTF-8", e))?;
        let lossy_utf8 = BytesRegex::new(concat!(
            r"(?-u)[\xc2-\xdf][\x1a]",
            r"|[\xc2-\xc3][?]",
            r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
            r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
            r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]",
            r"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
            r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]",
            r"|\x1a",
        ))
        .map_err(|e| pattern("lossy UTF-8", e))?;
        Ok(Mojibake {
            badness,
            utf8_detector,
            utf8_continuation_strict: tables.class("utf8_continuation_strict")?.clone(),
            altered_utf8,
            lossy_utf8,
            c1: Regex::new(r"[\x{80}-\x{9F}]").map_err(|e| pattern("C1 control", e))?,
        })
    }

    /// badness.is_bad
    pub fn is_bad(&self, text: &str) -> bool {
        self.badness.is_match(text)
    }

    /// ftfy.fix_encoding: one-step fixes until nothing changes.
    pub fn fix_encoding(&self, tables: &Tables, text: &str) -> String {
        let mut text = text.to_string();
        loop {
            let fixed = self.fix_one_step(tables, &text);
            if fixed == text {
                return text;
            }
            text = fixed;
        }
    }

    fn fix_one_step(&self, tables: &Tables, text: &str) -> String {
        if text.is_ascii() || !self.is_bad(text) {
            return text.to_string();
        }
        let mut possible: Vec<&str> = Vec::new();
        for charmap in &tables.charmaps {
            let Some(mut bytes) = encode(charmap, text) else {
                continue;
            };
            possible.push(&charmap.name);
            if charmap.name != "macroman" && self.altered_utf8.is_match(&bytes) {
                bytes = self.restore_byte_a0(&bytes);
            }
            if charmap.name.starts_with("sloppy") {
                bytes = self
                    .lossy_utf8
                    .replace_all(&bytes, "\u{fffd}".as_bytes())
                    .into_owned();
            }
            let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
                decode_utf8_variants(&bytes)
            } else {
                String::from_utf8(bytes).ok()
            };
            if let Some(fixed) = decoded {
                return fixed;
            }
        }

        if self.utf8_matches(text).next().is_some() {
            let fixed = self.decode_inconsistent_utf8(tables, text);
            if fixed != text {
                return fixed;
            }
        }

        // ftfy compares against "windows-1252", which is never in its list of candidates (that
        // holds "sloppy-windows-1252"), so the Latin-1 case always tries strict Windows-1252.
        if possible.contains(&"latin-1") {
            let mut fixed = String::with_capacity(text.len());
            let mut ok = true;
            for c in text.chars() {
                match tables
                    .windows_1252
                    .decode
                    .get(c as usize)
                    .copied()
                    .flatten()
                {
                    Some(d) => fixed.push(d),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && fixed != text {
                return fixed;
            }
        }

        if self.c1.is_match(text) {
            return fix_c1_controls(tables, text);
        }
        text.to_string()
    }

    /// fixes.restore_byte_a0
    fn restore_byte_a0(&self, bytes: &[u8]) -> Vec<u8> {
        // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" → b"\xc3\xa0 "
        let mut out = Vec::with_capacity(bytes.len() + 4);
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == 0xC3 && bytes.get(i + 1) == Some(&b' ') {
                let rest = &bytes[i + 2..];
                let excluded = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                    .iter()
                    .any(|p| rest.starts_with(p));
                if !excluded {
                    out.extend_from_slice(b"\xc3\xa0 ");
                    i += 2;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        self.altered_utf8
            .replace_all(&out, |c: &regex::bytes::Captures| {
                c[0].iter()
                    .map(|&b| if b == b' ' { 0xA0 } else { b })
                    .collect::<Vec<u8>>()
            })
            .into_owned()
    }

    /// Matches of UTF8_DETECTOR_RE, honouring its look-behind: a match may not start right
    /// after a `utf8_continuation_strict` character.
    fn utf8_matches<'t>(&'t self, text: &'t str) -> impl Iterator<Item = regex::Match<'t>> + 't {
        let mut pos = 0;
        std::iter::from_fn(move || {
            while pos <= text.len() {
                let m = self.utf8_detector.find_at(text, pos)?;
                let blocked = text[..m.start()]
                    .chars()
                    .next_back()
                    .is_some_and(|c| contains(&self.utf8_continuation_strict, c));
                if blocked {
                    pos = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
                    continue;
                }
                pos = m.end();
                return Some(m);
            }
            None
        })
    }

    /// fixes.decode_inconsistent_utf8
    fn decode_inconsistent_utf8(&self, tables: &Tables, text: &str) -> String {
        let total = text.chars().count();
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.utf8_matches(text) {
            out.push_str(&text[last..m.start()]);
            let sub = m.as_str();
            if sub.chars().count() < total && self.is_bad(sub) {
                out.push_str(&self.fix_encoding(tables, sub));
            } else {
                out.push_str(sub);
            }
            last = m.end();
        }
        out.push_str(&text[last..]);
        out
    }
}

/// `text.encode(codec)`, or `None` where ftfy's `possible_encoding` says the text cannot come
/// from that codec.
fn encode(charmap: &Charmap, text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| charmap.encode.get(&c).copied())
        .collect()
}

/// fixes.fix_c1_controls: C1 controls read as sloppy Windows-1252.
pub(crate) fn fix_c1_controls(tables: &Tables, text: &str) -> String {
    let sloppy = tables
        .charmaps
        .iter()
        .find(|c| c.name == "sloppy-windows-1252");
    text.chars()
        .map(|c| match (c as u32, sloppy) {
            (0x80..=0x9F, Some(map)) => map.decode.get(c as usize).copied().flatten().unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// ftfy's "utf-8-variants" codec: UTF-8 plus CESU-8 surrogate pairs and Java's `C0 80` for NUL.
/// `None` where Python raises UnicodeDecodeError.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(&[0xC0, 0x80]) {
            out.push('\0');
            i += 2;
            continue;
        }
        if rest.len() >= 6
            && rest[0] == 0xED
            && (0xA0..=0xAF).contains(&rest[1])
            && (0x80..=0xBF).contains(&rest[2])
            && rest[3] == 0xED
            && (0xB0..=0xBF).contains(&rest[4])
            && (0x80..=0xBF).contains(&rest[5])
        {
            let cp = (((rest[1] & 0x0F) as u32) << 16)
                + (((rest[2] & 0x3F) as u32) << 10)
                + (((rest[4] & 0x0F) as u32) << 6)
                + ((rest[5] & 0x3F) as u32)
                + 0x10000;
            out.push(char::from_u32(cp)?);
            i += 6;
            continue;
        }
        // One ordinary UTF-8 sequence; its length comes from the lead byte.
        let len = match rest[0] {
            0x00..=0x7F => 1,
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return None,
        };
        let s = std::str::from_utf8(rest.get(..len)?).ok()?;
        out.push_str(s);
        i += len;
    }
    Some(out)
}

fn pattern(what: &'static str, e: regex::Error) -> AssetError {
    AssetError::Pattern {
        what,
        msg: e.to_string(),
    }
}
