//! A model's identity for cache keys: a hash of every byte of its config, weights and
//! tokenizer files, so a cache made by one checkpoint is never read as another's.
//!
//! The hash is a 4-lane multiply-rotate hash over 8-byte words (xxHash64's round function),
//! fast enough to read a ViT-L/14 (1.7 GB) in well under a second once the file is in the page
//! cache. It guards against accidents, not adversaries.

use std::io::Read;
use std::path::Path;

use crate::clip::ModelFiles;
use crate::error::{Error, Result};

const P1: u64 = 0x9e37_79b1_85eb_ca87;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const P3: u64 = 0x1656_67b1_9e37_79f9;

/// Streaming 64-bit content hash (xxHash64's rounds; not byte-compatible with xxHash64).
#[derive(Debug, Clone)]
pub struct ContentHash {
    lanes: [u64; 4],
    pending: Vec<u8>,
    len: u64,
}

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash {
            lanes: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            pending: Vec::with_capacity(32),
            len: 0,
        }
    }
}

fn round(acc: u64, word: u64) -> u64 {
    acc.wrapping_add(word.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

impl ContentHash {
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (32 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 32 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.block(&block);
        }
        let mut blocks = bytes.chunks_exact(32);
        for b in &mut blocks {
            self.block(b);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn block(&mut self, b: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(b.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = round(*lane, u64::from_le_bytes(w));
        }
    }

    /// Hashes a length-prefixed field, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.lanes.iter().enumerate().fold(self.len, |h, (i, &l)| {
            (h ^ round(0, l))
                .rotate_left(27 + i as u32)
                .wrapping_mul(P1)
                .wrapping_add(P3)
        });
        for &b in &self.pending {
            h = (h ^ u64::from(b).wrapping_mul(P3))
                .rotate_left(11)
                .wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }

    /// `finish` as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.finish())
    }
}

/// Hashes a whole file into `h`, length-prefixed.
pub fn hash_file(h: &mut ContentHash, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// The fingerprint of a model: its config and weight files, and the tokenizer files that sit
/// beside them (they change the text embeddings), by content, not by path.
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut h = ContentHash::default();
    h.field(b"clip-adapter model fingerprint v1");
    for path in files.config.iter().chain([&files.weights]) {
        hash_file(&mut h, path)?;
    }
    for name in ["vocab.json", "merges.txt", "tokenizer.json"] {
        let p = files.dir.join(name);
        // A single OpenAI file always uses the embedded vocabulary, whatever sits beside it.
        if files.config.is_some() && p.is_file() {
            h.field(name.as_bytes());
            hash_file(&mut h, &p)?;
        }
    }
    Ok(h.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_updates_hash_like_one() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut one = ContentHash::default();
        one.update(&data);
        let mut parts = ContentHash::default();
        for c in data.chunks(7) {
            parts.update(c);
        }
        assert_eq!(one.finish(), parts.finish());
        let mut other = ContentHash::default();
        other.update(&data[1..]);
        assert_ne!(one.finish(), other.finish());
        let (mut a, mut b) = (ContentHash::default(), ContentHash::default());
        a.field(b"ab");
        a.field(b"c");
        b.field(b"a");
        b.field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
