//! The one safetensors writer: tensors sorted by name, the JSON header with sorted keys, and a
//! `checksum` metadata entry (xxHash3-128 of the data section) that readers verify. The same
//! tensors and metadata always give the same bytes, which is what lets a resumed extraction
//! and a rerun compare byte for byte. Feature caches, heads and CoOp heads are written here.

use std::collections::{BTreeMap, HashMap};

/// One tensor to write: its name, safetensors dtype (`F32`, `I64`, ...), shape and raw
/// little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// An f32 tensor, the dtype of every head.
#[derive(Debug, Clone)]
pub struct F32Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl From<F32Tensor> for RawTensor {
    fn from(t: F32Tensor) -> Self {
        RawTensor {
            name: t.name,
            dtype: "F32",
            shape: t.shape,
            data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// The `checksum` value of a data section.
pub fn checksum(data: &[u8]) -> String {
    format!("xxh3-128:{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

/// safetensors bytes: u64 header length, JSON header (keys sorted), padding, data.
pub fn write(tensors: Vec<RawTensor>, mut metadata: BTreeMap<String, String>) -> Vec<u8> {
    let mut sorted = tensors;
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sum = xxhash_rust::xxh3::Xxh3::new();
    for t in &sorted {
        sum.update(&t.data);
    }
    metadata.insert(
        "checksum".into(),
        format!("xxh3-128:{:032x}", sum.digest128()),
    );
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(&metadata).unwrap_or_default(),
    );
    let mut offset = 0;
    for t in &sorted {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    // serde_json's Map is a BTreeMap (no `preserve_order` feature): keys come out sorted.
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for t in sorted {
        out.extend_from_slice(&t.data);
    }
    out
}

/// [`write`] of f32 tensors.
pub fn to_bytes(tensors: Vec<F32Tensor>, metadata: BTreeMap<String, String>) -> Vec<u8> {
    write(tensors.into_iter().map(RawTensor::from).collect(), metadata)
}

/// A data section that does not match its recorded checksum or size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChecksumError {
    #[error("{found} data bytes, the header describes {described}")]
    Size { found: usize, described: usize },
    #[error("the data's checksum is {found}, the header recorded {recorded}")]
    Mismatch { found: String, recorded: String },
}

/// Verifies the `checksum` entry of `metadata` against the data section of `bytes`, when the
/// file has one (files written before checksums were recorded have none).
pub fn verify_checksum(
    bytes: &[u8],
    metadata: &HashMap<String, String>,
) -> Result<(), ChecksumError> {
    let Some(recorded) = metadata.get("checksum") else {
        return Ok(());
    };
    let Ok((n, header)) = safetensors::SafeTensors::read_metadata(bytes) else {
        // The caller's parse reports a malformed header with its own error.
        return Ok(());
    };
    let data = &bytes[(8 + n).min(bytes.len())..];
    let described = header
        .tensors()
        .values()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0);
    if data.len() != described {
        return Err(ChecksumError::Size {
            found: data.len(),
            described,
        });
    }
    let found = checksum(data);
    if found != *recorded {
        return Err(ChecksumError::Mismatch {
            found,
            recorded: recorded.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, v: f32) -> F32Tensor {
        F32Tensor {
            name: name.into(),
            shape: vec![1],
            data: vec![v],
        }
    }

    #[test]
    fn order_of_tensors_does_not_change_the_bytes_and_the_checksum_verifies() {
        let a = to_bytes(vec![t("b", 1.0), t("a", 2.0)], BTreeMap::new());
        let b = to_bytes(vec![t("a", 2.0), t("b", 1.0)], BTreeMap::new());
        assert_eq!(a, b);
        let (_, header) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        let meta = header.metadata().clone().unwrap();
        verify_checksum(&a, &meta).unwrap();
        let mut damaged = a.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            verify_checksum(&damaged, &meta),
            Err(ChecksumError::Mismatch { .. })
        ));
    }
}
