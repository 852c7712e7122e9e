//! FNV-1a (64-bit), the one hash the crate derives seeds and stream ids from (a task's image
//! stream, a parameter's initialisation, an image's augmentation stream). It is fixed by
//! definition: changing it would change every generated world and every augmented view, so it is
//! not a place for a faster or stronger hash. Content fingerprints (cache keys, checksums) use a
//! cryptographic hash instead (`clip::fingerprint`).

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(OFFSET, bytes)
}

/// Continues an FNV-1a hash `h` over more bytes (for hashing several buffers as one).
pub fn fnv1a64_extend(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The starting value, for [`fnv1a64_extend`] over several buffers.
pub const FNV1A64_OFFSET: u64 = OFFSET;

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of the FNV-1a 64-bit specification.
    #[test]
    fn reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64_extend(fnv1a64(b"foo"), b"bar"), fnv1a64(b"foobar"));
    }
}
