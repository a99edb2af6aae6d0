//! Which of a jurisdiction's shard groups holds a user's records: the rule a client and a node must
//! apply alike, since the client sends each call to the group this picks.
//!
//! It is a pure function of the user id and the jurisdiction's published shard map (its groups, in
//! order), so no component ever holds a global index of raw keys. The hash is FNV-1a (64-bit), fixed
//! forever: it decides where data lives, so it may not change with a library or compiler version the way
//! `std`'s hasher may.

/// FNV-1a, 64-bit. Stable across versions and platforms by construction.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The position, in a shard map of `shard_count` groups, of the group holding `user_id`'s records.
pub fn shard_index(user_id: &str, shard_count: usize) -> usize {
    assert!(shard_count > 0, "a shard map routes users only if it has shards");
    (stable_hash(user_id.as_bytes()) % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_never_changes() {
        // Published FNV-1a 64 test vectors: a change here would move every user's data.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn users_stay_in_their_shard_map() {
        for shard_count in 1..8 {
            for user in ["", "user-1", "user-42", "ü"] {
                assert!(shard_index(user, shard_count) < shard_count);
            }
        }
        assert_eq!(shard_index("user-1", 1), 0);
    }
}
