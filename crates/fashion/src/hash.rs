//! A stable 64-bit hash (FNV-1a) for cache keys, train/validation splits and shards: the same on
//! every run and machine, which std's hasher does not promise.

/// The FNV-1a offset basis: the hash of nothing.
pub const START: u64 = 0xcbf29ce484222325;

/// Continues hash `h` over `bytes`.
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// The hash of `bytes`.
pub fn of(bytes: &[u8]) -> u64 {
    fnv1a(START, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_published_fnv1a_values() {
        // Test vectors of the FNV reference (64-bit FNV-1a).
        assert_eq!(super::of(b""), 0xcbf29ce484222325);
        assert_eq!(super::of(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(super::of(b"foobar"), 0x85944171f73967e8);
    }
}
