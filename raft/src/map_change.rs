//! Changing a jurisdiction's shard map: a split or a move, planned as steps, each run on the leader of
//! the group it changes. The admin path `domicile shard split|move` will drive (issue 19).
//!
//! A change from epoch N to N+1 is, in order:
//!
//! 1. [`MapStep::SetRanges`] in every group that **loses** a range: it commits its ranges of N+1, and from
//!    that entry on its state machine refuses the lost range's users (`CommandError::NotOwned`) on every
//!    replica — a write routed by epoch N that reaches its log after the change is refused, never applied.
//!    The state machine refuses the step itself while the group holds any record outside its new ranges:
//!    records are never left behind unreadable.
//! 2. [`MapStep::SetRanges`] in every group that **gains** a range, so a group that lost ranges before
//!    (and so has ranges committed) accepts its new one.
//! 3. [`MapStep::Publish`] in the directory group: a compare-and-set of the map record from epoch N to
//!    N+1 — the cutover, one committed entry. Nodes learn it when a client brings epoch N+1 or a group
//!    refuses a user as moved, and send clients of epoch N a `Moved` answer with it.
//!
//! Every step is idempotent (the same ranges at the same epoch again, the same map published again), so
//! an interrupted change is finished by running its plan again; a change planned from another epoch than
//! the published one is refused (`EpochMoved`) rather than applied over it.
//!
//! These steps never strand records: the plain ranges change is refused while the group holds any record
//! outside its new ranges, so a plan of `map_change` alone moves only ranges no user has written to. A
//! range that holds records moves by [`crate::range_copy`], which copies it while writes continue, fences
//! the loser with `Command::Depart`, and deletes the departing records once the gainer holds them.

use placement::GroupId;
use storage::record::Ownership;
use storage::{Command, Response};

use crate::config::GroupConfig;
use crate::directory::{Directory, DirectoryError, ShardMap};
use crate::host::{Host, HostError};
use crate::stores::Stores;
use crate::transport::Transport;

/// A change of one jurisdiction's map, in routing positions (`wire::routing::range_position`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapChange {
    /// Cut the range holding `at` at `at`, and give `at..=` its end to `to`.
    Split { at: u64, to: GroupId },
    /// Give the range starting at `start` to `to`.
    Move { start: u64, to: GroupId },
}

/// One step of a change, run on the leader of [`MapStep::group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapStep {
    /// Commit in `group` the ranges it owns at the next epoch.
    SetRanges { group: GroupId, ownership: Ownership },
    /// Publish the next epoch's map in the jurisdiction's directory group.
    Publish { directory: GroupId, map: ShardMap },
}

impl MapStep {
    /// The group whose leader runs the step.
    pub fn group(&self) -> &GroupId {
        match self {
            MapStep::SetRanges { group, .. } | MapStep::Publish { directory: group, .. } => group,
        }
    }
}

/// The next map and the steps that publish it, from the published `current` map. Pure.
pub fn plan(
    directory: &Directory,
    current: &ShardMap,
    change: &MapChange,
) -> Result<(ShardMap, Vec<MapStep>), DirectoryError> {
    let jurisdiction = current.jurisdiction().to_string();
    let ranged = current.ranged()?;
    let to = match change {
        MapChange::Split { to, .. } | MapChange::Move { to, .. } => to,
    };
    if !directory.groups_of(&jurisdiction)?.contains(to) {
        return Err(DirectoryError::ForeignGroup {
            jurisdiction,
            group: to.clone(),
        });
    }
    let next = match change {
        MapChange::Split { at, to } => ranged.split(*at, to.clone()),
        MapChange::Move { start, to } => ranged.move_range(*start, to.clone()),
    }
    .map_err(|error| DirectoryError::Change {
        jurisdiction: jurisdiction.clone(),
        error,
    })?;
    let handovers = ranged.handovers(&next);
    let next = ShardMap::Ranged(next);
    let mut groups: Vec<&GroupId> = handovers.iter().map(|handover| &handover.from).collect();
    groups.extend(handovers.iter().map(|handover| &handover.to));
    let mut steps: Vec<MapStep> = Vec::new();
    for group in groups {
        if steps.iter().any(|step| step.group() == group) {
            continue;
        }
        steps.push(MapStep::SetRanges {
            group: group.clone(),
            ownership: next.ownership_of(group)?,
        });
    }
    steps.push(MapStep::Publish {
        directory: directory.directory_group(&jurisdiction)?,
        map: next.clone(),
    });
    Ok((next, steps))
}

/// Runs one step on this node, which must lead the step's group (`DirectoryError::NotLeader` names the
/// leader otherwise).
pub async fn execute<C: GroupConfig, T: Transport, S: Stores<C>>(
    directory: &Directory,
    host: &Host<C, T, S>,
    step: &MapStep,
) -> Result<(), DirectoryError> {
    match step {
        MapStep::SetRanges { group, ownership } => {
            let unavailable = |error: HostError| match error {
                HostError::NotLeader { group, leader } => DirectoryError::NotLeader { group, leader },
                error => DirectoryError::Unavailable {
                    jurisdiction: ownership.jurisdiction.clone(),
                    directory: group.clone(),
                    reason: error.to_string(),
                },
            };
            match host
                .write(group, Command::SetOwnership(ownership.clone()))
                .await
                .map_err(unavailable)?
            {
                Response::OwnershipSet { .. } => {
                    tracing::info!(%group, epoch = ownership.epoch, ranges = ownership.ranges.len(), "committed the group's ranges");
                    Ok(())
                }
                Response::Rejected(error) => Err(DirectoryError::RangesRefused {
                    group: group.clone(),
                    epoch: ownership.epoch,
                    error,
                }),
                other => Err(unavailable(HostError::Store(format!(
                    "setting ranges answered {other:?}"
                )))),
            }
        }
        MapStep::Publish { map, .. } => directory.publish(host, map).await,
    }
}

#[cfg(test)]
mod tests {
    use placement::{NodeId, TopologyFile};

    use super::*;
    use crate::routing::Router;

    const TOPOLOGY: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]
[[site]]
name = "ashburn"
country = "US"
nodes = [2]
[[group]]
name = "eu-1"
jurisdiction = "EU"
voters = 1
[[group]]
name = "eu-2"
jurisdiction = "EU"
voters = 1
[[group]]
name = "us-1"
jurisdiction = "US"
voters = 1
"#;

    fn directory() -> (Directory, ShardMap) {
        let file = TopologyFile::parse(TOPOLOGY).unwrap();
        let router = Router::new(file.policies.values()).unwrap();
        let first = ShardMap::Ranged(router.proposal("EU").unwrap().clone());
        (Directory::new(NodeId(1), &file.topology, router), first)
    }

    fn group(name: &str) -> GroupId {
        GroupId(name.into())
    }

    #[test]
    fn a_split_fences_the_loser_then_admits_the_gainer_then_publishes() {
        let (directory, first) = directory();
        let change = MapChange::Split {
            at: 1 << 62,
            to: group("eu-2"),
        };
        let (next, steps) = plan(&directory, &first, &change).unwrap();
        assert_eq!(next.epoch(), 2);
        let MapStep::SetRanges {
            group: loser,
            ownership,
        } = &steps[0]
        else {
            panic!("{steps:?}")
        };
        assert_eq!((loser, ownership.epoch), (&group("eu-1"), 2));
        assert_eq!(ownership.ranges, [(0, (1 << 62) - 1)]);
        let MapStep::SetRanges {
            group: gainer,
            ownership,
        } = &steps[1]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(gainer, &group("eu-2"));
        assert_eq!(ownership.ranges, [(1 << 62, u64::MAX)]);
        assert_eq!(
            steps[2],
            MapStep::Publish {
                directory: group("eu-1"),
                map: next
            }
        );
    }

    #[test]
    fn a_range_never_goes_to_a_group_of_another_jurisdiction() {
        let (directory, first) = directory();
        for change in [
            MapChange::Split {
                at: 9,
                to: group("us-1"),
            },
            MapChange::Move {
                start: 0,
                to: group("us-1"),
            },
            MapChange::Move {
                start: 0,
                to: group("nowhere"),
            },
        ] {
            assert!(
                matches!(
                    plan(&directory, &first, &change),
                    Err(DirectoryError::ForeignGroup { .. })
                ),
                "{change:?}"
            );
        }
        let same = MapChange::Move {
            start: 0,
            to: group("eu-1"),
        };
        assert!(matches!(
            plan(&directory, &first, &same),
            Err(DirectoryError::Change { .. })
        ));
    }
}
