//! 64-bit FNV-1a: the one hash of the crate, a leaf module that imports nothing.
//!
//! Used for the checksum of state files ([`crate::state_file`]), the fingerprint of a
//! checkpoint's weights ([`crate::checkpoint::Checkpoint::fingerprint`]) and the cache name of
//! the embedded default model. Not cryptographic: it detects damage, not tampering.

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
