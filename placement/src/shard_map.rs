//! A jurisdiction's shard map as hash ranges, versioned by epoch: the model a growing jurisdiction needs
//! (issue 19).
//!
//! Users are placed by a 64-bit hash of their id. Maps published before this one spread them `hash mod N`
//! over a fixed list of groups, so adding a group would move almost every user. Here the hash space is cut into
//! contiguous ranges, each owned by one group; a change — splitting a range to give half to a new group,
//! or moving a range to another group — makes the next epoch and moves only the hashes of the ranges that
//! change hands ([`ShardMap::handovers`]). The map is data, checked whole when built: the ranges cover
//! the hash space exactly once, in order, and no range is empty.
//!
//! ```
//! use placement::{GroupId, shard_map::ShardMap};
//!
//! let eu1 = GroupId("users-eu-1".into());
//! let eu2 = GroupId("users-eu-2".into());
//! let map = ShardMap::single("EU", eu1.clone());
//! let grown = map.split(1 << 63, eu2.clone()).unwrap();
//! assert_eq!(grown.epoch(), 2);
//! assert_eq!(grown.owner(7), &eu1);
//! assert_eq!(grown.owner(u64::MAX), &eu2);
//! // Only the upper half changed hands.
//! let moved = map.handovers(&grown);
//! assert_eq!((moved[0].start, moved[0].end), (1 << 63, u64::MAX));
//! ```
//!
//! Pure, like the rest of the crate. The published map of each jurisdiction is one of these
//! (`raft::directory`), with the user's routing position (`wire::routing::range_position`) as the hash;
//! `raft::map_change` plans its changes and publishes them. See docs/sharding.md.

use std::collections::BTreeMap;

use crate::policy::GroupId;

/// A range of the hash space, `start..=end`, and who owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    /// Inclusive: the last range ends at `u64::MAX`.
    pub end: u64,
    pub group: GroupId,
}

/// Hashes `start..=end` pass from one group to another between two epochs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub start: u64,
    pub end: u64,
    pub from: GroupId,
    pub to: GroupId,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("a shard map needs at least one range")]
    Empty,
    #[error("the first range starts at {0}, not at 0: hashes below it would have no owner")]
    Uncovered(u64),
    #[error("ranges starting at {0} appear twice")]
    Duplicate(u64),
    #[error("splitting at {0} would leave an empty range: {0} already starts one")]
    EmptyRange(u64),
    #[error("{group} already owns the range starting at {start}")]
    SameOwner { group: GroupId, start: u64 },
    #[error("no range starts at {0}")]
    NoSuchRange(u64),
    #[error("epoch {0} is the last: a map can't change again")]
    EpochExhausted(u64),
}

/// One jurisdiction's ranges at one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    jurisdiction: String,
    epoch: u64,
    /// Range starts, in order; a range ends just before the next one starts (the last at `u64::MAX`).
    starts: BTreeMap<u64, GroupId>,
}

impl ShardMap {
    /// Epoch 1: the whole hash space owned by one group.
    pub fn single(jurisdiction: &str, group: GroupId) -> ShardMap {
        ShardMap {
            jurisdiction: jurisdiction.to_string(),
            epoch: 1,
            starts: BTreeMap::from([(0, group)]),
        }
    }

    /// Epoch 1: the hash space cut into `groups.len()` ranges as equal as integers allow, in the order
    /// given.
    pub fn even(jurisdiction: &str, groups: &[GroupId]) -> Result<ShardMap, ShardMapError> {
        if groups.is_empty() {
            return Err(ShardMapError::Empty);
        }
        let count = groups.len() as u128;
        let space = 1u128 << 64;
        let starts = groups
            .iter()
            .enumerate()
            .map(|(index, group)| ((space * index as u128 / count) as u64, group.clone()))
            .collect::<Vec<_>>();
        ShardMap::from_ranges(jurisdiction, 1, starts)
    }

    /// A map from its range starts and owners (as published), checked whole.
    pub fn from_ranges(
        jurisdiction: &str,
        epoch: u64,
        starts: impl IntoIterator<Item = (u64, GroupId)>,
    ) -> Result<ShardMap, ShardMapError> {
        let mut map = BTreeMap::new();
        for (start, group) in starts {
            if map.insert(start, group).is_some() {
                return Err(ShardMapError::Duplicate(start));
            }
        }
        match map.keys().next() {
            None => return Err(ShardMapError::Empty),
            Some(&first) if first != 0 => return Err(ShardMapError::Uncovered(first)),
            Some(_) => {}
        }
        Ok(ShardMap {
            jurisdiction: jurisdiction.to_string(),
            epoch,
            starts: map,
        })
    }

    pub fn jurisdiction(&self) -> &str {
        &self.jurisdiction
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The group that owns `hash`.
    pub fn owner(&self, hash: u64) -> &GroupId {
        self.starts
            .range(..=hash)
            .next_back()
            .map(|(_, group)| group)
            .expect("the first range starts at 0, so every hash has an owner")
    }

    /// Every range, in hash order.
    pub fn ranges(&self) -> Vec<Range> {
        let mut ranges = Vec::with_capacity(self.starts.len());
        let mut starts = self.starts.iter().peekable();
        while let Some((&start, group)) = starts.next() {
            let end = starts.peek().map_or(u64::MAX, |(next, _)| **next - 1);
            ranges.push(Range {
                start,
                end,
                group: group.clone(),
            });
        }
        ranges
    }

    /// The next epoch, with the range holding `at` cut at `at` and `at..=` its end given to `to`.
    pub fn split(&self, at: u64, to: GroupId) -> Result<ShardMap, ShardMapError> {
        if self.starts.contains_key(&at) {
            return Err(ShardMapError::EmptyRange(at));
        }
        let owner = self.owner(at);
        if *owner == to {
            return Err(ShardMapError::SameOwner { group: to, start: at });
        }
        let mut next = self.next_epoch()?;
        next.starts.insert(at, to);
        Ok(next)
    }

    /// The next epoch, with the range starting at `start` owned by `to`.
    pub fn move_range(&self, start: u64, to: GroupId) -> Result<ShardMap, ShardMapError> {
        let owner = self.starts.get(&start).ok_or(ShardMapError::NoSuchRange(start))?;
        if *owner == to {
            return Err(ShardMapError::SameOwner { group: to, start });
        }
        let mut next = self.next_epoch()?;
        next.starts.insert(start, to);
        Ok(next)
    }

    /// Where a group's largest range would be split in half (`None` if it owns no range of two hashes or
    /// more): the automatic trigger's choice when a group grows too large.
    pub fn midpoint_of_largest(&self, group: &GroupId) -> Option<u64> {
        self.ranges()
            .into_iter()
            .filter(|range| range.group == *group && range.end > range.start)
            .max_by_key(|range| (range.end - range.start, std::cmp::Reverse(range.start)))
            .map(|range| range.start + (range.end - range.start) / 2 + 1)
    }

    /// What changes hands from `self` to `newer`: maximal runs of hashes whose owner differs, in hash
    /// order. Hashes outside them keep their owner, which is what lets a change move only what it must.
    pub fn handovers(&self, newer: &ShardMap) -> Vec<Handover> {
        let mut cuts: Vec<u64> = self.starts.keys().chain(newer.starts.keys()).copied().collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut handovers: Vec<Handover> = Vec::new();
        for (index, &start) in cuts.iter().enumerate() {
            let end = cuts.get(index + 1).map_or(u64::MAX, |next| next - 1);
            let (from, to) = (self.owner(start), newer.owner(start));
            if from == to {
                continue;
            }
            match handovers.last_mut() {
                Some(last)
                    if last.end.checked_add(1) == Some(start) && last.from == *from && last.to == *to =>
                {
                    last.end = end
                }
                _ => handovers.push(Handover {
                    start,
                    end,
                    from: from.clone(),
                    to: to.clone(),
                }),
            }
        }
        handovers
    }

    fn next_epoch(&self) -> Result<ShardMap, ShardMapError> {
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(ShardMapError::EpochExhausted(self.epoch))?;
        Ok(ShardMap {
            epoch,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupId {
        GroupId(name.into())
    }

    #[test]
    fn an_even_map_covers_the_hash_space_in_order() {
        let map = ShardMap::even("EU", &[group("a"), group("b"), group("c")]).unwrap();
        let ranges = map.ranges();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[2].end, u64::MAX);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end + 1, pair[1].start);
        }
        assert_eq!(map.owner(0), &group("a"));
        assert_eq!(map.owner(u64::MAX), &group("c"));
        assert_eq!(map.owner(ranges[1].start), &group("b"));
        assert_eq!(map.owner(ranges[1].start - 1), &group("a"));
    }

    #[test]
    fn bad_maps_and_changes_are_named_errors() {
        assert_eq!(ShardMap::even("EU", &[]), Err(ShardMapError::Empty));
        assert_eq!(
            ShardMap::from_ranges("EU", 1, [(5, group("a"))]),
            Err(ShardMapError::Uncovered(5))
        );
        assert_eq!(
            ShardMap::from_ranges("EU", 1, [(0, group("a")), (0, group("b"))]),
            Err(ShardMapError::Duplicate(0))
        );
        let map = ShardMap::single("EU", group("a"));
        assert_eq!(map.split(0, group("b")), Err(ShardMapError::EmptyRange(0)));
        assert!(matches!(
            map.split(9, group("a")),
            Err(ShardMapError::SameOwner { .. })
        ));
        assert_eq!(map.move_range(9, group("b")), Err(ShardMapError::NoSuchRange(9)));
        let last = ShardMap::from_ranges("EU", u64::MAX, [(0, group("a"))]).unwrap();
        assert_eq!(
            last.split(9, group("b")),
            Err(ShardMapError::EpochExhausted(u64::MAX))
        );
    }

    #[test]
    fn a_move_hands_over_one_range_and_merges_adjacent_runs() {
        let map = ShardMap::single("EU", group("a")).split(100, group("b")).unwrap();
        let map = map.split(200, group("c")).unwrap();
        assert_eq!(map.epoch(), 3);
        let moved = map.move_range(100, group("c")).unwrap();
        assert_eq!(
            map.handovers(&moved),
            vec![Handover {
                start: 100,
                end: 199,
                from: group("b"),
                to: group("c"),
            }]
        );
        assert_eq!(map.midpoint_of_largest(&group("a")), Some(50));
        assert_eq!(
            ShardMap::single("EU", group("a")).midpoint_of_largest(&group("z")),
            None
        );
    }
}
