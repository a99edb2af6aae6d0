//! Which of a jurisdiction's shard groups holds a user's records: the rule a client and a node must
//! apply alike, since the client sends each call to the group this picks.
//!
//! It is a pure function of the user id and the jurisdiction's published shard map, a [`RoutingMap`], so
//! no component ever holds a global index of raw keys. A map cuts the 64-bit **routing position**
//! ([`range_position`]) into ranges, each owned by one group, and carries the **epoch** it was published
//! at: a change of map (a split, a move) publishes the next epoch and moves only the ranges that change
//! hands. Maps published before ranges existed spread users `hash mod N` over their groups
//! ([`Layout::Modulo`], always epoch 1); they are still read, and route exactly as they always did.
//!
//! The hash is FNV-1a (64-bit), fixed forever: it decides where data lives, so it may not change with a
//! library or compiler version the way `std`'s hasher may. The routing position mixes it once more
//! (murmur3's 64-bit finaliser), also fixed forever: FNV-1a's high bits barely depend on the last bytes of
//! an id, so ids that differ only at their end (`user-1`, `user-2`, ...) would crowd into one range.
//!
//! A map travels and is stored in this one form (encoded by [`crate::codec`], in a checksummed frame on
//! the wire, sealed in the directory group's state machine), checked whole by [`RoutingMap::check`] after
//! decoding; the decoder refuses more than [`RANGES_MAX`] ranges or groups before allocating for them.

use serde::{Deserialize, Serialize};

/// Bound on the ranges (or, for a modulo map, the groups) of one jurisdiction's map.
pub const RANGES_MAX: usize = 4096;

/// Bound on a group name in a map, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 256;

/// FNV-1a, 64-bit. Stable across versions and platforms by construction.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The position, in a shard map of `shard_count` groups, of the group holding `user_id`'s records: the
/// rule of maps published before ranges ([`Layout::Modulo`]).
pub fn shard_index(user_id: &str, shard_count: usize) -> usize {
    assert!(shard_count > 0, "a shard map routes users only if it has shards");
    (stable_hash(user_id.as_bytes()) % shard_count as u64) as usize
}

/// Where `user_id` falls in a ranged map: FNV-1a of the id, mixed by murmur3's 64-bit finaliser.
pub fn range_position(user_id: &str) -> u64 {
    let mut position = stable_hash(user_id.as_bytes());
    position ^= position >> 33;
    position = position.wrapping_mul(0xff51_afd7_ed55_8ccd);
    position ^= position >> 33;
    position = position.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    position ^ (position >> 33)
}

/// Whether a user id is reserved for the system's own records (it starts with a NUL byte): no client may
/// use one, and such records (a directory group's map) belong to their group whatever the map says.
pub fn is_reserved_user(user_id: &str) -> bool {
    user_id.starts_with('\u{0}')
}

/// One jurisdiction's published shard map. Field order and variant order are the format (append only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingMap {
    pub jurisdiction: String,
    /// Starts at 1; each committed change of the map publishes the next.
    pub epoch: u64,
    pub layout: Layout,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `shard_index(user id, N)` over these groups: maps published before ranges. Epoch 1, never changed.
    Modulo(#[serde(with = "bounded")] Vec<String>),
    /// Ranges of [`range_position`], in order: each starts where it says and ends just before the next
    /// starts (the last at `u64::MAX`); the first starts at 0.
    Ranges(#[serde(with = "bounded")] Vec<RangeStart>),
}

/// Where one range starts, and its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStart {
    pub start: u64,
    pub group: String,
}

/// Why a decoded map can't be routed by.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingMapError {
    #[error("a map at epoch 0: epochs start at 1")]
    ZeroEpoch,
    #[error("a map with no groups")]
    Empty,
    #[error("{count} ranges exceed the bound {RANGES_MAX}")]
    TooManyRanges { count: usize },
    #[error("the first range starts at {0}, not at 0: positions below it would have no owner")]
    Uncovered(u64),
    #[error("a range starting at {start} follows one starting at {previous}: starts must increase")]
    Unordered { previous: u64, start: u64 },
    #[error("a group name of {bytes} bytes (empty, or over {GROUP_NAME_BYTES_MAX})")]
    BadGroupName { bytes: usize },
}

impl RoutingMap {
    /// Checks the whole map: what a decoder of untrusted bytes must do before routing by it.
    pub fn check(&self) -> Result<(), RoutingMapError> {
        if self.epoch == 0 {
            return Err(RoutingMapError::ZeroEpoch);
        }
        let names: Vec<&str> = match &self.layout {
            Layout::Modulo(groups) => groups.iter().map(String::as_str).collect(),
            Layout::Ranges(ranges) => ranges.iter().map(|range| range.group.as_str()).collect(),
        };
        if names.is_empty() {
            return Err(RoutingMapError::Empty);
        }
        if names.len() > RANGES_MAX {
            return Err(RoutingMapError::TooManyRanges { count: names.len() });
        }
        if let Some(name) = names
            .iter()
            .find(|name| name.is_empty() || name.len() > GROUP_NAME_BYTES_MAX)
        {
            return Err(RoutingMapError::BadGroupName { bytes: name.len() });
        }
        if let Layout::Ranges(ranges) = &self.layout {
            if ranges[0].start != 0 {
                return Err(RoutingMapError::Uncovered(ranges[0].start));
            }
            if let Some(pair) = ranges.windows(2).find(|pair| pair[0].start >= pair[1].start) {
                return Err(RoutingMapError::Unordered {
                    previous: pair[0].start,
                    start: pair[1].start,
                });
            }
        }
        Ok(())
    }

    /// The group holding `user_id`'s records. The map must have passed [`RoutingMap::check`].
    pub fn route(&self, user_id: &str) -> &str {
        match &self.layout {
            Layout::Modulo(groups) => &groups[shard_index(user_id, groups.len())],
            Layout::Ranges(ranges) => {
                let position = range_position(user_id);
                let after = ranges.partition_point(|range| range.start <= position);
                assert!(after > 0, "a checked map's first range starts at 0");
                &ranges[after - 1].group
            }
        }
    }

    /// Every group the map names, in map order, each once.
    pub fn groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = Vec::new();
        let names: Box<dyn Iterator<Item = &str>> = match &self.layout {
            Layout::Modulo(groups) => Box::new(groups.iter().map(String::as_str)),
            Layout::Ranges(ranges) => Box::new(ranges.iter().map(|range| range.group.as_str())),
        };
        for name in names {
            if !groups.contains(&name) {
                groups.push(name);
            }
        }
        groups
    }
}

/// A map's lists (and a group's committed ranges, `storage::record::Ownership`), refused past
/// [`RANGES_MAX`] elements while decoding, before more is allocated. The encoding is a plain sequence's.
pub mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RANGES_MAX;

    pub fn serialize<S: Serializer, T: Serialize>(items: &[T], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(items)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(BoundedVisitor(PhantomData))
    }

    struct BoundedVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "at most {RANGES_MAX} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if let Some(hint) = seq.size_hint()
                && hint > RANGES_MAX
            {
                return Err(A::Error::custom(format!(
                    "{hint} elements exceed the bound {RANGES_MAX}"
                )));
            }
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element()? {
                if items.len() == RANGES_MAX {
                    return Err(A::Error::custom(format!("more than {RANGES_MAX} elements")));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
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
    fn the_routing_position_never_changes() {
        // murmur3's fmix64 of the FNV-1a vectors above: a change here would move every ranged map's users.
        assert_eq!(range_position(""), fmix64_reference(0xcbf2_9ce4_8422_2325));
        assert_eq!(range_position("a"), fmix64_reference(0xaf63_dc4c_8601_ec8c));
        assert_eq!(range_position(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(range_position("user-1"), 0x41a2_fca5_c684_01c5);
    }

    /// murmur3's `fmix64`, written out as its reference does.
    fn fmix64_reference(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51afd7ed558ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ceb9fe1a85ec53);
        k ^= k >> 33;
        k
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

    fn ranged(starts: &[(u64, &str)]) -> RoutingMap {
        RoutingMap {
            jurisdiction: "EU".into(),
            epoch: 2,
            layout: Layout::Ranges(
                starts
                    .iter()
                    .map(|&(start, group)| RangeStart {
                        start,
                        group: group.into(),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn sequential_ids_spread_over_ranges() {
        let map = ranged(&[(0, "a"), (1 << 62, "b"), (1 << 63, "c"), (3 << 62, "d")]);
        map.check().unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for user in 0..1000 {
            *counts.entry(map.route(&format!("user-{user}"))).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(
            counts.values().all(|&count| count > 180),
            "roughly even: {counts:?}"
        );
    }

    #[test]
    fn a_position_belongs_to_the_range_starting_at_or_before_it() {
        let map = ranged(&[(0, "a"), (100, "b")]);
        for user in 0..200 {
            let user = format!("u{user}");
            let expected = if range_position(&user) >= 100 { "b" } else { "a" };
            assert_eq!(map.route(&user), expected);
        }
        assert_eq!(map.groups(), vec!["a", "b"]);
    }

    #[test]
    fn bad_maps_are_named_errors() {
        assert_eq!(ranged(&[]).check(), Err(RoutingMapError::Empty));
        assert_eq!(ranged(&[(5, "a")]).check(), Err(RoutingMapError::Uncovered(5)));
        assert_eq!(
            ranged(&[(0, "a"), (9, "b"), (9, "c")]).check(),
            Err(RoutingMapError::Unordered {
                previous: 9,
                start: 9
            })
        );
        assert_eq!(
            ranged(&[(0, "")]).check(),
            Err(RoutingMapError::BadGroupName { bytes: 0 })
        );
        let mut zero = ranged(&[(0, "a")]);
        zero.epoch = 0;
        assert_eq!(zero.check(), Err(RoutingMapError::ZeroEpoch));
    }

    #[test]
    fn too_many_ranges_are_refused_while_decoding() {
        let starts: Vec<(u64, &str)> = (0..=RANGES_MAX as u64).map(|start| (start, "a")).collect();
        let bytes = crate::codec::encode(&ranged(&starts)).unwrap();
        // postcard reports a custom error without its message: a decode error, and no map.
        let error = crate::codec::decode::<RoutingMap>(&bytes).unwrap_err();
        assert!(matches!(error, crate::codec::CodecError::Decode(_)), "{error}");
        let fits = crate::codec::encode(&ranged(&starts[..RANGES_MAX])).unwrap();
        assert!(crate::codec::decode::<RoutingMap>(&fits).is_ok());
    }
}
