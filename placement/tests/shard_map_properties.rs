//! Properties of hash-range shard maps under any sequence of splits and moves: the ranges always cover
//! the hash space exactly once, each change makes exactly the next epoch, and what a change hands over is
//! exactly the set of hashes whose owner changed — nothing else moves. Pinned like every randomised test
//! in CI (docs/testing.md).

use placement::GroupId;
use placement::shard_map::{ShardMap, ShardMapError};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, RngSeed};

const PINNED_SEED: u64 = 19;

fn pinned(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(PINNED_SEED),
        ..ProptestConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Change {
    /// Split at this hash, giving the upper part to group number `to`.
    Split { at: u64, to: u8 },
    /// Move the range number `range` (modulo how many there are) to group number `to`.
    Move { range: usize, to: u8 },
    /// Split a group's largest range in half (the automatic trigger's choice).
    Halve { group: u8, to: u8 },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<u64>(), 0u8..8).prop_map(|(at, to)| Change::Split { at, to }),
        // Splits next to existing boundaries and the ends of the space, where off-by-ones live.
        (
            prop_oneof![
                Just(0u64),
                Just(1),
                Just(u64::MAX),
                Just(u64::MAX - 1),
                Just(1 << 63)
            ],
            0u8..8
        )
            .prop_map(|(at, to)| Change::Split { at, to }),
        (any::<usize>(), 0u8..8).prop_map(|(range, to)| Change::Move { range, to }),
        (0u8..8, 0u8..8).prop_map(|(group, to)| Change::Halve { group, to }),
    ]
}

fn group(number: u8) -> GroupId {
    GroupId(format!("users-eu-{number}"))
}

fn check_whole(map: &ShardMap) -> Result<(), TestCaseError> {
    let ranges = map.ranges();
    prop_assert_eq!(ranges[0].start, 0);
    prop_assert_eq!(ranges.last().unwrap().end, u64::MAX);
    for range in &ranges {
        prop_assert!(range.start <= range.end, "an empty range: {range:?}");
        prop_assert_eq!(map.owner(range.start), &range.group);
        prop_assert_eq!(map.owner(range.end), &range.group);
    }
    for pair in ranges.windows(2) {
        prop_assert_eq!(pair[0].end.checked_add(1), Some(pair[1].start));
    }
    Ok(())
}

proptest! {
    #![proptest_config(pinned(512))]

    #[test]
    fn changes_cover_the_space_advance_the_epoch_and_move_only_what_changes_hands(
        groups in 1usize..4,
        changes in prop::collection::vec(change(), 1..24),
        probes in prop::collection::vec(any::<u64>(), 32),
    ) {
        let initial: Vec<GroupId> = (0..groups as u8).map(group).collect();
        let mut map = ShardMap::even("EU", &initial).unwrap();
        check_whole(&map)?;
        for change in changes {
            let next = match change {
                Change::Split { at, to } => map.split(at, group(to)),
                Change::Move { range, to } => {
                    let ranges = map.ranges();
                    map.move_range(ranges[range % ranges.len()].start, group(to))
                }
                Change::Halve { group: from, to } => match map.midpoint_of_largest(&group(from)) {
                    Some(at) => map.split(at, group(to)),
                    None => continue,
                },
            };
            let next = match next {
                Ok(next) => next,
                // Refused changes are the ones that would change nothing or leave an empty range.
                Err(ShardMapError::SameOwner { .. } | ShardMapError::EmptyRange(_)) => continue,
                Err(other) => return Err(TestCaseError::fail(format!("unexpected refusal: {other}"))),
            };
            check_whole(&next)?;
            prop_assert_eq!(next.epoch(), map.epoch() + 1);
            let handovers = map.handovers(&next);
            prop_assert!(!handovers.is_empty(), "a change that moved nothing made an epoch");
            for pair in handovers.windows(2) {
                prop_assert!(pair[0].end < pair[1].start, "handovers overlap or are out of order");
            }
            // Every probe, and both sides of every boundary of both maps: moved iff in a handover.
            let mut hashes = probes.clone();
            for range in map.ranges().into_iter().chain(next.ranges()) {
                hashes.extend([range.start, range.end, range.start.saturating_sub(1), range.end.saturating_add(1)]);
            }
            for hash in hashes {
                let handover = handovers.iter().find(|handover| handover.start <= hash && hash <= handover.end);
                match handover {
                    Some(handover) => {
                        prop_assert_eq!(map.owner(hash), &handover.from);
                        prop_assert_eq!(next.owner(hash), &handover.to);
                        prop_assert_ne!(&handover.from, &handover.to);
                    }
                    None => prop_assert_eq!(map.owner(hash), next.owner(hash), "hash {} moved outside any handover", hash),
                }
            }
            map = next;
        }
    }
}
