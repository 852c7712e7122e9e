//! Lookups over the registry (the `registry!` list in `methods/mod.rs`, one line per method
//! file): every method in the order of tables and figures, the codec of a head file's kind,
//! and the methods of the paper's own comparison, which its figures and the demo name.

use super::head::HeadCodec;
use super::method::MethodKind;
use super::{clip_adapter, coop, linear_probe, zero_shot};

/// Every method.
pub static ALL: &[MethodKind] = super::REGISTERED;

/// The codec of a head kind (the `head` value of a head file).
pub fn head_codec(kind: &str) -> Option<&'static HeadCodec> {
    ALL.iter()
        .map(|k| k.card().head)
        .find(|codec| codec.kind == kind)
}

/// The methods of the paper's own comparison, which the report's paper figures, the sweeps and
/// the demo name directly.
pub const ZERO_SHOT: MethodKind = MethodKind(&zero_shot::CARD);
pub const LINEAR_PROBE: MethodKind = MethodKind(&linear_probe::CARD);
pub const CLIP_ADAPTER: MethodKind = MethodKind(&clip_adapter::CARD);
pub const COOP: MethodKind = MethodKind(&coop::CARD);
