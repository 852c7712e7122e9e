//! The arithmetic of the frozen encoders' matrix products: f32 (the default, within 1e-5 of the
//! reference implementations) or, as an opt-in, bfloat16 operands with f32 sums.
//!
//! bfloat16 rounds each operand of the towers' linear layers and ResNet convolutions (the
//! weights once at load time, the activations at each product) to 8 significant bits, as
//! PyTorch's `torch.autocast("cpu", dtype=torch.bfloat16)` does, but keeps every sum and every
//! product's output in f32 (autocast rounds outputs to bfloat16 too); everything else
//! (LayerNorm, softmax, GELU, attention's two products, pooling) stays f32. On a CPU with
//! AVX512-BF16 the products run at about twice the f32 rate (1.8–2.5× on AMD Zen 4). Features made this way differ
//! from f32 ones by 1e-3 to 1e-2 relative (docs/benchmarks.md measures it), so they carry
//! their own fingerprint: caches, heads and predictions never mix the two.

use std::fmt;
use std::str::FromStr;

use crate::kernels::bf16;

/// How the frozen encoders multiply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bfloat16 operands, f32 sums, in the towers' linear layers and convolutions.
    Bf16,
}

/// The suffix a bfloat16 model's fingerprint carries.
const BF16_TAG: &str = "+bf16";

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The identity of what a model computes at this precision: its content fingerprint, with
    /// a suffix for bfloat16 (the cache keys and saved heads record this).
    pub fn fingerprint(self, model_fingerprint: &str) -> String {
        match self {
            Precision::F32 => model_fingerprint.to_string(),
            Precision::Bf16 => format!("{model_fingerprint}{BF16_TAG}"),
        }
    }

    /// The precision a recorded fingerprint was made at ([`Precision::fingerprint`]'s inverse).
    pub fn of_fingerprint(fingerprint: &str) -> Precision {
        Precision::split(fingerprint).1
    }

    /// A recorded fingerprint or a `--model` name (`NAME+bf16` names bfloat16 features) split
    /// into the model it names and the precision ([`Precision::fingerprint`]'s inverse).
    pub fn split(tagged: &str) -> (&str, Precision) {
        match tagged.strip_suffix(BF16_TAG) {
            Some(model) => (model, Precision::Bf16),
            None => (tagged, Precision::F32),
        }
    }

    /// What a user should know before running at this precision on this CPU: bfloat16 without
    /// AVX512-BF16 gives the bfloat16 numbers at f32 speed.
    pub fn notice(self) -> Option<String> {
        match self {
            Precision::Bf16 if !bf16::native() => Some(
                "--precision bf16: this CPU has no AVX512-BF16 instructions (or a lower SIMD level \
                 is forced); the bfloat16-rounded products run on the f32 kernels: same numbers, \
                 no speed gain"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--precision` value that is not one of [`Precision::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("precision `{0}` is not one of: f32, bf16")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPrecision(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_fingerprints_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(Precision::of_fingerprint(&p.fingerprint("abc123")), p);
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!(Precision::F32.fingerprint("abc"), "abc");
        assert_eq!(
            Precision::split("ViT-B-32+bf16"),
            ("ViT-B-32", Precision::Bf16)
        );
        assert_eq!(Precision::split("abc"), ("abc", Precision::F32));
        assert_ne!(Precision::Bf16.fingerprint("abc"), "abc");
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }
}
