//! When a jurisdiction's group has grown too large or too busy, which split to make: the automatic
//! trigger's decision (issue 19), pure like the planner. The caller (`domicile shard auto-split`)
//! measures each group, asks here, and runs the split it is given with the same machinery as
//! `domicile shard split`, one at a time.
//!
//! A group is over when it holds more than [`SplitThresholds::max_records`] records or applied more than
//! [`SplitThresholds::max_writes_per_minute`] writes in the last minute measured; both are off unless
//! set. Of the groups over, the most over (by the larger of its two ratios to the thresholds) splits
//! first, ties by name. It splits its largest range at the midpoint: routing positions are hashes, so
//! the halves hold about half the records each. The new owner is a *spare* group of the jurisdiction —
//! one the map gives no range, created by the planner inside the jurisdiction like any other — the first
//! by name; with none, nothing is split and [`Trigger::NoSpare`] says which group wanted one, since a
//! split must never place a replica anywhere the planner did not.

use crate::policy::GroupId;
use crate::shard_map::ShardMap;

/// What makes a group split; `None` is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitThresholds {
    pub max_records: Option<u64>,
    pub max_writes_per_minute: Option<u64>,
}

/// One group as measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLoad {
    pub group: GroupId,
    pub records: u64,
    pub writes_per_minute: u64,
}

/// Why a group is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Records { records: u64, max: u64 },
    Writes { per_minute: u64, max: u64 },
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// No group is over a threshold.
    Quiet,
    /// Split `group`'s largest range at `at`, giving `at..=` its end to `to`.
    Split {
        group: GroupId,
        at: u64,
        to: GroupId,
        over: Over,
    },
    /// `group` is over but the jurisdiction has no spare group to take half of it.
    NoSpare { group: GroupId, over: Over },
    /// `group` is over but owns no range of two positions or more (it can't be cut).
    Unsplittable { group: GroupId, over: Over },
}

/// How far over the thresholds `load` is, in millionths of a threshold (0: not over), and why.
fn excess(load: &GroupLoad, thresholds: &SplitThresholds) -> Option<(u128, Over)> {
    let ratio = |value: u64, max: u64| u128::from(value) * 1_000_000 / u128::from(max.max(1));
    let records = thresholds
        .max_records
        .filter(|max| load.records > *max)
        .map(|max| {
            (
                ratio(load.records, max),
                Over::Records {
                    records: load.records,
                    max,
                },
            )
        });
    let writes = thresholds
        .max_writes_per_minute
        .filter(|max| load.writes_per_minute > *max)
        .map(|max| {
            (
                ratio(load.writes_per_minute, max),
                Over::Writes {
                    per_minute: load.writes_per_minute,
                    max,
                },
            )
        });
    match (records, writes) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (one, other) => one.or(other),
    }
}

/// The split to make next in `map`'s jurisdiction, given each of its groups' `loads` and the
/// jurisdiction's `groups` (every group fenced to it, spare ones included).
pub fn next_split(
    map: &ShardMap,
    groups: &[GroupId],
    loads: &[GroupLoad],
    thresholds: &SplitThresholds,
) -> Trigger {
    let owners: Vec<GroupId> = map.ranges().into_iter().map(|range| range.group).collect();
    let Some((load, over)) = loads
        .iter()
        .filter(|load| owners.contains(&load.group))
        .filter_map(|load| excess(load, thresholds).map(|(excess, over)| (excess, load, over)))
        // The most over; of equals, the first by name.
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.group.cmp(&a.1.group)))
        .map(|(_, load, over)| (load, over))
    else {
        return Trigger::Quiet;
    };
    let group = load.group.clone();
    let Some(at) = map.midpoint_of_largest(&group) else {
        return Trigger::Unsplittable { group, over };
    };
    let mut spares: Vec<&GroupId> = groups.iter().filter(|g| !owners.contains(g)).collect();
    spares.sort();
    match spares.first() {
        Some(to) => Trigger::Split {
            group,
            at,
            to: (*to).clone(),
            over,
        },
        None => Trigger::NoSpare { group, over },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> GroupId {
        GroupId(name.to_string())
    }

    fn load(group: &str, records: u64, writes_per_minute: u64) -> GroupLoad {
        GroupLoad {
            group: g(group),
            records,
            writes_per_minute,
        }
    }

    fn map() -> ShardMap {
        ShardMap::even("EU", &[g("eu-1"), g("eu-2")]).unwrap()
    }

    const HALF: u64 = 1 << 63;

    #[test]
    fn nothing_splits_while_every_group_is_under_or_the_trigger_is_off() {
        let loads = [load("eu-1", 900, 50), load("eu-2", 1_000, 60)];
        let groups = [g("eu-1"), g("eu-2"), g("eu-3")];
        let on = SplitThresholds {
            max_records: Some(1_000),
            max_writes_per_minute: Some(60),
        };
        assert_eq!(next_split(&map(), &groups, &loads, &on), Trigger::Quiet);
        let busy = [load("eu-1", u64::MAX, u64::MAX)];
        let off = SplitThresholds::default();
        assert_eq!(next_split(&map(), &groups, &busy, &off), Trigger::Quiet);
    }

    #[test]
    fn the_most_over_group_splits_its_largest_range_in_half_to_the_first_spare() {
        let groups = [g("eu-1"), g("eu-2"), g("eu-4"), g("eu-3")];
        let thresholds = SplitThresholds {
            max_records: Some(1_000),
            max_writes_per_minute: Some(100),
        };
        // eu-1 is 1.5x over by records; eu-2 is 3x over by writes.
        let loads = [load("eu-1", 1_500, 10), load("eu-2", 10, 300)];
        assert_eq!(
            next_split(&map(), &groups, &loads, &thresholds),
            Trigger::Split {
                group: g("eu-2"),
                at: HALF + (u64::MAX - HALF) / 2 + 1,
                to: g("eu-3"),
                over: Over::Writes {
                    per_minute: 300,
                    max: 100
                },
            }
        );
        // The split applied, eu-3 owns a range and eu-4 is the spare left.
        let after = map().split(HALF + (HALF >> 1), g("eu-3")).unwrap();
        let loads = [load("eu-1", 1_500, 10)];
        assert!(matches!(
            next_split(&after, &groups, &loads, &thresholds),
            Trigger::Split { group, at, to, .. } if group == g("eu-1") && at == HALF / 2 && to == g("eu-4")
        ));
    }

    #[test]
    fn an_over_group_without_a_spare_or_a_range_to_cut_is_named_not_split() {
        let thresholds = SplitThresholds {
            max_records: Some(10),
            max_writes_per_minute: None,
        };
        let loads = [load("eu-1", 11, 0)];
        assert_eq!(
            next_split(&map(), &[g("eu-1"), g("eu-2")], &loads, &thresholds),
            Trigger::NoSpare {
                group: g("eu-1"),
                over: Over::Records { records: 11, max: 10 }
            }
        );
        // A group the map gives no range is not split, however loaded (it is a spare).
        let loads = [load("eu-3", 1_000, 0)];
        assert_eq!(
            next_split(&map(), &[g("eu-1"), g("eu-2"), g("eu-3")], &loads, &thresholds),
            Trigger::Quiet
        );
        // One position can't be cut.
        let single = ShardMap::from_ranges("EU", 1, vec![(0, g("eu-1")), (1, g("eu-2"))]).unwrap();
        let loads = [load("eu-1", 11, 0)];
        assert!(matches!(
            next_split(&single, &[g("eu-1"), g("eu-2"), g("eu-3")], &loads, &thresholds),
            Trigger::Unsplittable { group, .. } if group == g("eu-1")
        ));
    }
}
