//! What several commands share: value parsers (a bad value is an argument error, exit status
//! 2, found by clap before anything runs) and groups of flags.

use std::path::PathBuf;

use clap::Args;
use clip_adapter::experiment::Validation;

/// A count that must be at least 1 (spaces around it ignored).
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number: {e}")),
    }
}

/// A value with the spaces around it ignored (`--methods "zero-shot, gda"`).
pub fn trimmed<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let t = s.trim();
    if t.is_empty() {
        return Err("empty value in the list".into());
    }
    t.parse::<T>().map_err(|e| format!("`{t}`: {e}"))
}

/// A value outside what an option allows is an argument error (exit status 2), found by clap
/// before anything runs.
pub fn fraction(s: &str, allow_zero: bool, allow_one: bool) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    let low_ok = if allow_zero { v >= 0.0 } else { v > 0.0 };
    let high_ok = if allow_one { v <= 1.0 } else { v < 1.0 };
    let (open, close) = (
        ["(", "["][allow_zero as usize],
        [")", "]"][allow_one as usize],
    );
    match low_ok && high_ok {
        true => Ok(v),
        false => Err(format!(
            "{v} is out of range; expected a fraction {open}0, 1{close}"
        )),
    }
}

/// `min,max` with 0 < min <= max <= 1.
pub fn crop_scale(s: &str) -> Result<(f64, f64), String> {
    let (a, b) =
        (s.split_once(',')).ok_or_else(|| format!("`{s}`: expected MIN,MAX, e.g. 0.5,1"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{x}` is not a number"))
    };
    let (a, b) = (num(a)?, num(b)?);
    if !(0.0 < a && a <= b && b <= 1.0) {
        return Err(format!("{a},{b}: expected 0 < MIN <= MAX <= 1"));
    }
    Ok((a, b))
}

/// A name that is one folder in the cache.
pub fn dataset_name(s: &str) -> Result<String, String> {
    let bad = s.is_empty() || s.len() > 100 || s == "." || s == "..";
    if bad || s.contains(['/', '\\']) || s.chars().any(char::is_control) {
        return Err(format!(
            "`{}`: expected a folder name (1-100 bytes, no `/`, `\\`, control characters, \
             `.` or `..`)",
            clip_adapter::data::display_name(s)
        ));
    }
    Ok(s.to_string())
}

/// Which cached features: the cache and, when it holds several models' features, which.
#[derive(Args, Debug)]
pub struct CacheArgs {
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Pick the model's features when the cache holds several (the name given to extract,
    /// NAME+bf16 for its `--precision bf16` features, or the fingerprint). CoOp and CLIP-LoRA
    /// train through this model's towers, at bf16 on bf16 features [default: the model the
    /// cache records]; one whose content differs from the features' model is refused.
    #[arg(long)]
    pub model: Option<String>,
}

#[derive(Args, Debug)]
pub struct ValidationArg {
    /// `val`: hyper-parameters and best epochs chosen on the few-shot validation set; `none`:
    /// no validation set (as a user with a few labelled images has), each method keeps its
    /// documented default or uses its own validation-free rule (docs/methods.md).
    #[arg(long, default_value = "val", value_parser = |s: &str| s.parse::<Validation>().map_err(|e| e.to_string()), value_name = "val|none")]
    pub validation: Validation,
}
