//! The `grow` scenario: a jurisdiction outgrows its first groups and nodes while clients write.
//!
//! The EEA starts with two groups holding 150 million modelled records on six of its twenty-four nodes
//! (one node of each group per site in Dublin A, Dublin B and Hamar); the topology declares six more
//! groups, not yet created, and eighteen nodes that hold nothing yet (Frankfurt's among them). The
//! jurisdiction's shard map is published at epoch 1 over the two groups that exist, as their directory
//! group's first member would publish it, and clients route by it.
//!
//! Each growth round, under the usual faults: the copies left behind by removals are purged; the groups
//! the topology declares but nobody has created are created where the planner places them (its
//! failure-domain rule, the least-loaded nodes inside); then the rebalancer moves replicas and leaderships
//! onto the nodes holding fewest, one step per group, through the fence, bulk copies and all (a new
//! replica is promoted only once its copy has arrived). US nodes stand beside them and are never used.
//!
//! Splits: while a created group owns no range of the map, the range holding the most modelled bytes is
//! split at the median position of its users, the upper half given to that group, by the production
//! protocol (`raft::range_copy`, the steps `domicile shard split` runs): prepare, copy while writes
//! continue, fence, tail and digests, admit, publish, purge — one phase per round, resumed from what the
//! groups hold after any fault. The modelled bytes of the moving ranges are copied to the new group's
//! voters beside the real records' bulk copy, and the old group is fenced only once a quorum of the new
//! group's voters hold them; the old group's copies are deleted at the purge, checked by conservation first (the
//! `early-range-purge` canary deletes them right after the fence instead).
//!
//! `grow-wide` is the issue's scale: three groups holding the same 150 million records grow to
//! twenty-four on the same twenty-four nodes. Each split carves a final group's share (the jurisdiction's
//! ranges over its declared groups) off the top of the fullest range, so every record moves at most once,
//! and up to three splits run at once on disjoint groups: their copies overlap, each planned from the map
//! the one before it will publish (epochs N+1, N+2, …), while their cutovers — fence to publication — go
//! one at a time in epoch order, since each publication is a compare-and-set on the epoch before it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::Instant as _;
use openraft_rt_sim::{SimInstant, SimRuntime};
use placement::{GroupId, Health, NodeId, Step};
use raft::directory::{Directory, ShardMap, shard_map_key};
use raft::map_change::MapChange;
use raft::range_copy::{self, HostLeaders, Phase, RangeChange};
use raft::routing::Router;
use storage::{Command, Response, WriteId};

use crate::checkers::{Checker, Involved};
use crate::config::SimConfig;
use crate::network::LinkModel;
use crate::network::{SimHost, SimTransport};
use crate::orchestrator;
use crate::scenario::{MIGRATE_RECORDS, MIGRATION_BOUND, Scenario, bulk_gate};
use crate::stores::{SimStores, SyncLatency};
use crate::world::{Canary, GroupSpec, World, WorldSpec};

/// The jurisdiction that grows.
pub const JURISDICTION: &str = "EEA";

/// The growth worlds' sites: twenty-four nodes inside the EEA, six per site, and three US nodes beside
/// them.
const GROW_SITES: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1, 2, 3, 4, 5, 6]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [7, 8, 9, 10, 11, 12]

[[site]]
name = "hamar"
country = "NO"
nodes = [13, 14, 15, 16, 17, 18]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [19, 20, 21, 22, 23, 24]

[[site]]
name = "ashburn"
country = "US"
nodes = [31, 32, 33]
"#;

/// How a split picks where to cut the fullest range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// At its median user: the upper half goes (a group may be split again later, its records moving
    /// twice).
    Median,
    /// Its top users, as many as a final group's share (every modelled range over the declared groups),
    /// go: each record moves at most once. A range with no more than a share is cut at its median.
    Share,
}

/// A growth world: where it starts, what it grows to, how it splits.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The groups that exist when the run begins, each on one node of Dublin A, Dublin B and Hamar.
    first: &'static [(&'static str, [u64; 3])],
    /// The groups the topology declares, `users-eea-1` to `users-eea-N`.
    declared: usize,
    /// Modelled ranges per first group.
    ranges_per_group: u64,
    cut: Cut,
    /// Splits under way at once, on disjoint groups.
    splits_at_once: usize,
}

/// `grow`: 2 → 8 groups, one split at a time, each at the median.
pub const GROW: Shape = Shape {
    first: &[("users-eea-1", [1, 7, 13]), ("users-eea-2", [2, 8, 14])],
    declared: 8,
    // Enough that a group split in two still holds a dozen, and eight groups hold six each.
    ranges_per_group: 24,
    cut: Cut::Median,
    splits_at_once: 1,
};

/// `grow-wide`: 3 → 24 groups, each split carving a final group's share, three at a time.
pub const GROW_WIDE: Shape = Shape {
    first: &[
        ("users-eea-1", [1, 7, 13]),
        ("users-eea-2", [2, 8, 14]),
        ("users-eea-3", [3, 9, 15]),
    ],
    declared: 24,
    // Four per group at the end: 1.6 GB each.
    ranges_per_group: 32,
    cut: Cut::Share,
    splits_at_once: 3,
};

impl Shape {
    /// The shape of a growth scenario's world (`None` for the others).
    pub fn of(scenario: Scenario) -> Option<&'static Shape> {
        match scenario {
            Scenario::Grow => Some(&GROW),
            Scenario::GrowWide => Some(&GROW_WIDE),
            _ => None,
        }
    }

    /// The groups the run begins with.
    pub fn groups_from(&self) -> usize {
        self.first.len()
    }

    /// The groups it grows to.
    pub fn groups_to(&self) -> usize {
        self.declared
    }

    pub fn splits_at_once(&self) -> usize {
        self.splits_at_once
    }

    /// The topology: the sites, and every declared group (three voters inside the EEA).
    pub fn topology(&self) -> String {
        let mut topology = GROW_SITES.to_string();
        for number in 1..=self.declared {
            topology.push_str(&format!(
                "\n[[group]]\nname = \"users-eea-{number}\"\njurisdiction = \"EEA\"\nvoters = 3\n"
            ));
        }
        topology
    }
}

/// The groups that exist when the run begins.
fn first_groups(shape: &Shape) -> Vec<GroupSpec> {
    shape
        .first
        .iter()
        .map(|&(name, voters)| GroupSpec {
            group: GroupId(name.into()),
            voters: voters.into_iter().map(NodeId).collect(),
            legacy: BTreeSet::new(),
        })
        .collect()
}

/// The EEA's first map: the first groups, each given an equal range.
fn first_map(shape: &Shape) -> placement::shard_map::ShardMap {
    let groups: Vec<GroupId> = first_groups(shape).into_iter().map(|spec| spec.group).collect();
    placement::shard_map::ShardMap::even(JURISDICTION, &groups).expect("the first groups make a map")
}

pub fn world(shape: &Shape) -> WorldSpec {
    let groups = first_groups(shape);
    let records_per_group = MIGRATE_RECORDS / groups.len() as u64;
    WorldSpec {
        topology: shape.topology(),
        groups,
        links: LinkModel::new(),
        sync_latency: SyncLatency::default(),
        bulk: Some((records_per_group, shape.ranges_per_group)),
        first_map: Some(first_map(shape)),
    }
}

/// Publishes the EEA's first map over the groups the world started with: a compare-and-set on "absent"
/// of the map record in its directory group (the first group by name), as the directory group's first
/// member publishes the topology's proposal. Clients route by it from then on.
pub async fn publish_first_map(world: &World, shape: &Shape) -> Result<(), String> {
    let ranged = first_map(shape);
    let groups: Vec<GroupId> = first_groups(shape).into_iter().map(|spec| spec.group).collect();
    let map = ShardMap::Ranged(ranged.clone());
    let value = map.encode().map_err(|error| error.to_string())?;
    let directory = groups[0].clone();
    let command = Command::CompareAndSet {
        write: WriteId {
            client_id: 910_000,
            sequence: 1,
        },
        key: shard_map_key(JURISDICTION),
        expected_revision: None,
        value,
    };
    // Bounded: the directory group was just bootstrapped and elects within seconds of simulated time.
    for _ in 0..600 {
        if let Some((_, host)) = world.leader(&directory) {
            match SimRuntime::timeout(Duration::from_secs(2), host.write(&directory, command.clone())).await {
                Ok(Ok(Response::Written { .. })) => {
                    world.log(format!(
                        "published the {JURISDICTION} map at epoch 1 over {groups:?}"
                    ));
                    world.set_route_map(ranged);
                    return Ok(());
                }
                Ok(Ok(other)) => return Err(format!("publishing the first map: {other:?}")),
                Ok(Err(_)) | Err(_) => {}
            }
        }
        SimRuntime::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the first {JURISDICTION} map could not be published"))
}

/// Creates the declared groups no node holds yet, where the planner places them.
async fn create_missing_groups(world: &World) {
    let missing: Vec<GroupId> = world
        .policies
        .keys()
        .filter(|group| world.holders(group).is_empty())
        .cloned()
        .collect();
    if missing.is_empty() {
        return;
    }
    let placement = orchestrator::observed_placement(world);
    let mut health = Health::all_up();
    for node in world.down_nodes() {
        health.node_down(node);
    }
    // The groups that run, and the missing ones: the planner creates the latter and leaves the former
    // to the rebalancer (a group without a leader right now is left out, as everywhere).
    let policies: BTreeMap<GroupId, placement::GroupPolicy> = world
        .policies
        .iter()
        .filter(|(group, _)| placement.contains_key(*group) || missing.contains(group))
        .map(|(group, policy)| (group.clone(), policy.clone()))
        .collect();
    let plan = match placement::plan(&world.topology, &policies, &placement, &health) {
        Ok(plan) => plan,
        Err(error) => {
            world.log(format!("planner refused to create groups: {error}"));
            return;
        }
    };
    for step in &plan.steps {
        if matches!(step, Step::CreateGroup { .. }) && missing.contains(step.group()) {
            orchestrator::execute(world, step).await;
        }
    }
}

/// A split under way and its next phase, if known.
type UnderWay = (RangeChange, Option<Phase>);

/// The next split the growth wants, planned from the map the last split under way will publish (the
/// published one if none is): a created group that owns no range and takes part in no split under way
/// gets the top of the range holding the most modelled bytes among the ranges of groups that take part
/// in none either — its upper half, or a final group's share of users ([`Cut`]).
fn next_split(
    world: &World,
    directory: &Directory,
    shape: &Shape,
    under_way: &[UnderWay],
) -> Option<RangeChange> {
    let current = match under_way.last() {
        Some((change, _)) => change.next.clone(),
        None => ShardMap::Ranged((*world.route_map(JURISDICTION)?).clone()),
    };
    let planned = current.ranged().ok()?;
    let busy: BTreeSet<&GroupId> = under_way
        .iter()
        .flat_map(|(change, _)| [&change.loser, &change.gainer])
        .collect();
    let owning: BTreeSet<GroupId> = planned.ranges().into_iter().map(|range| range.group).collect();
    let empty = world
        .policies
        .keys()
        .find(|group| !owning.contains(*group) && !busy.contains(group) && world.leader(group).is_some())?
        .clone();
    let bulk = world.bulk.as_ref()?;
    let positions = |start: u64, end: u64| -> Vec<(u64, u64)> {
        let mut found: Vec<(u64, u64)> = bulk
            .current()
            .into_iter()
            .map(|range| (wire::routing::range_position(&range.user()), range.bytes))
            .filter(|&(position, _)| start <= position && position <= end)
            .collect();
        found.sort_unstable();
        found
    };
    let fullest = planned
        .ranges()
        .into_iter()
        .filter(|range| !busy.contains(&range.group))
        .max_by_key(|range| {
            (
                positions(range.start, range.end)
                    .iter()
                    .map(|&(_, bytes)| bytes)
                    .sum::<u64>(),
                std::cmp::Reverse(range.start),
            )
        })?;
    let users = positions(fullest.start, fullest.end);
    // The median user's position starts the upper half (above the range's start, so both halves exist).
    let median = users
        .get(users.len() / 2)
        .map(|&(position, _)| position)
        .filter(|&position| position > fullest.start)
        .unwrap_or(fullest.start + (fullest.end - fullest.start) / 2 + 1);
    let at = match shape.cut {
        Cut::Median => median,
        Cut::Share => {
            let share = (bulk.ranges.len() as u64).div_ceil(shape.declared as u64) as usize;
            users
                .len()
                .checked_sub(share)
                .filter(|&first| first > 0)
                .and_then(|first| users.get(first))
                .map(|&(position, _)| position)
                .filter(|&position| position > fullest.start)
                .unwrap_or(median)
        }
    };
    let change = MapChange::Split { at, to: empty };
    match range_copy::plan(directory, &current, &change) {
        Ok(Some(change)) => Some(change),
        Ok(None) => None,
        Err(error) => {
            world.log(format!("split {change:?}: {error}"));
            None
        }
    }
}

/// Every running node's host, and a directory of shard maps for each.
fn leaders_of(world: &World) -> Vec<(Arc<SimHost>, Directory)> {
    world
        .node_ids()
        .into_iter()
        .filter_map(|node| world.host(node).map(|host| (node, host)))
        .map(|(node, host)| {
            let router = Router::new(world.policies.values()).expect("group names do not collide");
            (host, Directory::new(node, &world.topology, router))
        })
        .collect()
}

/// The bulk ranges whose users lie in `moving`.
fn moving_bulk(world: &World, moving: &[(u64, u64)]) -> Vec<u64> {
    let Some(bulk) = world.bulk.as_ref() else {
        return Vec::new();
    };
    bulk.current()
        .into_iter()
        .filter(|range| {
            let position = wire::routing::range_position(&range.user());
            moving
                .iter()
                .any(|&(start, end)| start <= position && position <= end)
        })
        .map(|range| range.id)
        .collect()
}

/// The voters of `group`, as its leader sees them.
fn voters_of(world: &World, group: &GroupId) -> Option<BTreeSet<NodeId>> {
    let (_, host) = world.leader(group)?;
    host.status(group).ok().map(|status| status.membership.voters)
}

/// Begins the splits the growth wants while fewer than the shape's are under way, then runs the next
/// phase of each, in epoch order. One phase per round: a fault that cuts a phase short leaves the change
/// where the groups hold it, and the next round observes it. A split fences its loser only once every
/// split before it has published its map: cutovers go one at a time, in epoch order.
async fn split_round(world: &World, shape: &Shape) {
    let nodes = leaders_of(world);
    let Some((_, directory)) = nodes.first() else {
        return;
    };
    let mut under_way = world.splits.lock().expect("splits lock").clone();
    while under_way.len() < shape.splits_at_once {
        let Some(change) = next_split(world, directory, shape, &under_way) else {
            break;
        };
        begin_split(world, &change);
        under_way.push((change, None));
    }
    *world.splits.lock().expect("splits lock") = under_way.clone();
    let leaders = HostLeaders {
        nodes: nodes
            .iter()
            .map(|(host, directory)| (host.as_ref(), directory))
            .collect(),
    };
    let mut published_before = true;
    for (change, known) in under_way {
        let may_fence = published_before;
        published_before &= known == Some(Phase::Purge);
        advance_split(world, &leaders, &change, known, may_fence).await;
    }
}

/// A split begins: logged, and its modelled ranges marked incoming at the gainer.
fn begin_split(world: &World, change: &RangeChange) {
    let modelled = moving_bulk(world, &change.moving);
    let bytes: u64 = world.bulk.as_ref().map_or(0, |bulk| {
        bulk.current()
            .iter()
            .filter(|range| modelled.contains(&range.id))
            .map(|range| range.bytes)
            .sum()
    });
    world.log(format!(
        "split: {:?} of {} to {} at epoch {}: {} modelled ranges, {bytes} bytes",
        change.moving,
        change.loser,
        change.gainer,
        change.next.epoch(),
        modelled.len()
    ));
    if let Some(bulk) = &world.bulk {
        bulk.begin_move(&moving_bulk(world, &change.moving), &change.gainer);
    }
}

/// Records the phase a split under way stands at (`None`: to be observed), or drops it once done.
fn set_phase(world: &World, change: &RangeChange, phase: Option<Phase>) {
    let mut under_way = world.splits.lock().expect("splits lock");
    if phase == Some(Phase::Done) {
        under_way.retain(|(candidate, _)| candidate != change);
    } else if let Some(entry) = under_way.iter_mut().find(|(candidate, _)| candidate == change) {
        entry.1 = phase;
    }
}

/// Runs the next phase of one split under way (its fence only if `may_fence`).
async fn advance_split(
    world: &World,
    leaders: &HostLeaders<'_, SimConfig, SimTransport, SimStores>,
    change: &RangeChange,
    known: Option<Phase>,
    may_fence: bool,
) {
    // The phase the last one answered; after a failure, where the groups say the change stands.
    let phase = match known {
        Some(phase) => phase,
        None => match range_copy::observe(leaders, change).await {
            Ok(phase) => phase,
            Err(error) => {
                world.log(format!("split: where it stands is not known now: {error}"));
                return;
            }
        },
    };
    let ranges = moving_bulk(world, &change.moving);
    if phase == Phase::Fence
        && let Some(bulk) = &world.bulk
    {
        // The modelled bytes go with the bulk copy of the records, before the fence (the range stays
        // writable meanwhile): fenced only once a quorum of the new group's voters (as its leader knows
        // them; none known, no fence) hold them.
        let Some(voters) = voters_of(world, &change.gainer) else {
            return;
        };
        if !bulk.quorum_holds(&change.gainer, &voters, &ranges) {
            for voter in voters {
                bulk.start_transfer(world, &change.gainer, voter);
            }
            return;
        }
    }
    if phase == Phase::Fence && !may_fence {
        // A split before it has not published yet: its map is this one's epoch N.
        set_phase(world, change, Some(phase));
        return;
    }
    if phase == Phase::Purge
        && let Some(bulk) = &world.bulk
    {
        // The modelled copies leave the old group with its real records, and only for new voters that
        // hold them: with no leader of the new group to name its voters this round, nothing is purged
        // (purging the real records while the modelled ones stayed broke conservation: grow-wide seeds
        // 21, 41 and 50).
        let Some(voters) = voters_of(world, &change.gainer) else {
            return;
        };
        bulk.drop_departed(world, &change.loser, &change.gainer, &voters, &ranges);
    }
    let mut report = |progress: range_copy::Progress| world.log(format!("split: {progress:?}"));
    match range_copy::step(leaders, change, phase, &mut report).await {
        Ok(next) => {
            if phase == Phase::Fence
                && world.canary == Some(Canary::EarlyRangePurge)
                && let (Some(bulk), Some(voters)) = (&world.bulk, voters_of(world, &change.gainer))
            {
                // The planted bug deleted the real records with the fence; the modelled ones go too.
                bulk.drop_departed(world, &change.loser, &change.gainer, &voters, &ranges);
            }
            if phase == Phase::Publish {
                if let Some(bulk) = &world.bulk {
                    bulk.finish_move(&ranges, &change.gainer);
                }
                if let Ok(next_map) = change.next.ranged() {
                    world.set_route_map(next_map);
                }
            }
            if next == Phase::Done {
                world.log(format!(
                    "split to {} done at epoch {}",
                    change.gainer,
                    change.next.epoch()
                ));
                let bytes: u64 = world.bulk.as_ref().map_or(0, |bulk| {
                    bulk.ranges
                        .iter()
                        .filter(|range| ranges.contains(&range.id))
                        .map(|range| range.bytes)
                        .sum()
                });
                let mut tally = world.growth.lock().expect("growth lock");
                tally.splits += 1;
                tally.split_bytes += bytes;
            }
            set_phase(world, change, Some(next));
        }
        Err(error) => {
            world.log(format!("split: {phase:?}: {error}"));
            set_phase(world, change, None);
        }
    }
}

/// One round of growth: leftovers purged, missing groups created, the split under way advanced (or the
/// next one begun), then the rebalancer's next move of each group (a half-done move finished, the
/// planner's repairs first).
/// Every voter missing modelled bytes of its group's ranges gets them: a voter of a group that gained a
/// range was admitted with a quorum holding it, and the rest follow (as Raft replicates the copied records
/// to every member), also after a crash cut a copy short.
fn catch_up(world: &World) {
    let Some(bulk) = &world.bulk else { return };
    for group in world.policies.keys() {
        for voter in voters_of(world, group).unwrap_or_default() {
            if world.is_up(voter) && !bulk.complete(group, voter) {
                bulk.start_transfer(world, group, voter);
            }
        }
    }
}

pub async fn round(world: &World, shape: &Shape) {
    let step = async {
        orchestrator::purge_leftovers(world).await;
        create_missing_groups(world).await;
        catch_up(world);
        split_round(world, shape).await;
        // The bytes a new replica of each group must be copied: groups created empty move first.
        let bytes: BTreeMap<GroupId, u64> = world
            .bulk
            .as_ref()
            .map(|bulk| bulk.bytes_by_group())
            .unwrap_or_default();
        let cost = |group: &GroupId| bytes.get(group).copied().unwrap_or(0);
        let rebalance = |topology: &placement::Topology,
                         policies: &BTreeMap<GroupId, placement::GroupPolicy>,
                         current: &placement::Placement,
                         health: &Health| {
            placement::rebalance_by_cost(topology, policies, current, health, &cost)
        };
        orchestrator::round_by(world, &bulk_gate, true, &rebalance).await;
    };
    let _ = SimRuntime::timeout(Duration::from_secs(10), step).await;
}

/// Has the growth finished: every declared group created and settled, nothing left to rebalance, and
/// every bulk copy on a member (the copies moved off are purged)?
fn grown(world: &World) -> bool {
    let placement = orchestrator::observed_placement(world);
    if placement.len() != world.policies.len() {
        return false;
    }
    // Every group owns a range of the published map, and no split is under way.
    let owning = world
        .route_map(JURISDICTION)
        .map(|map| {
            map.ranges()
                .into_iter()
                .map(|range| range.group)
                .collect::<BTreeSet<_>>()
        })
        .unwrap_or_default();
    if world.policies.keys().any(|group| !owning.contains(group))
        || !world.splits.lock().expect("splits lock").is_empty()
    {
        return false;
    }
    let health = Health::all_up();
    let moves_left = |planned: Result<placement::Plan, placement::PlanError>| {
        planned.map_or(true, |plan| {
            plan.steps
                .iter()
                .any(|step| !matches!(step, Step::TransferLeader { .. }))
        })
    };
    if moves_left(placement::plan(
        &world.topology,
        &world.policies,
        &placement,
        &health,
    )) || moves_left(placement::rebalance(
        &world.topology,
        &world.policies,
        &placement,
        &health,
    )) {
        return false;
    }
    placement.iter().all(|(group, state)| {
        world.bulk.as_ref().is_none_or(|bulk| {
            bulk.holders(group)
                .into_iter()
                .all(|holder| state.membership.contains(holder))
                && state
                    .membership
                    .voters
                    .iter()
                    .all(|&voter| bulk.complete(group, voter))
        })
    })
}

/// Faults over: growth rounds go on until every group exists, the nodes inside are balanced and the
/// moved copies purged (bounded, like a migration).
pub async fn finish(world: &World, shape: &Shape) {
    let started = SimInstant::now();
    for _ in 0..MIGRATION_BOUND.as_secs() {
        if grown(world) {
            world.log("growth complete");
            world.growth.lock().expect("growth lock").done_at = Some(SimInstant::now() - world.started());
            return;
        }
        if SimInstant::now() - started > MIGRATION_BOUND {
            break;
        }
        round(world, shape).await;
        SimRuntime::sleep(Duration::from_secs(1)).await;
    }
    if !grown(world) {
        world.checks.violation(
            Checker::Liveness,
            Involved::default(),
            format!("the growth did not finish within {MIGRATION_BOUND:?} after faults stopped"),
        );
    }
}

/// What the growth did, for the report (kept beside the trace, never in it).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Splits run to their end.
    pub splits: u64,
    /// The modelled bytes those splits moved.
    pub split_bytes: u64,
    /// When the growth was found complete, since the world was built.
    pub done_at: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use placement::{GroupState, Membership, TopologyFile};

    /// Both growth worlds declare their groups inside the EEA over the same 24 nodes, and the planner
    /// places every group `grow-wide` creates on three distinct sites: 72 voters on 24 nodes of four
    /// sites need no more nodes than `grow` has.
    #[test]
    fn the_wide_world_creates_its_groups_on_distinct_sites() {
        for shape in [&GROW, &GROW_WIDE] {
            let file = TopologyFile::parse(&shape.topology()).expect("the growth topology parses");
            assert_eq!(
                file.policies.len(),
                shape.groups_to(),
                "every declared group is in the topology"
            );
            for spec in first_groups(shape) {
                assert!(
                    file.policies.contains_key(&spec.group),
                    "{} is declared",
                    spec.group
                );
            }
        }
        let file = TopologyFile::parse(&GROW_WIDE.topology()).expect("the growth topology parses");
        let placement: placement::Placement = first_groups(&GROW_WIDE)
            .into_iter()
            .map(|spec| {
                let leader = spec.voters.iter().next().copied();
                let state = GroupState {
                    membership: Membership::new(spec.voters, []),
                    leader,
                };
                (spec.group, state)
            })
            .collect();
        let plan = placement::plan(&file.topology, &file.policies, &placement, &Health::all_up())
            .expect("the planner plans the growth");
        let created: Vec<&BTreeSet<NodeId>> = plan
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::CreateGroup { voters, .. } => Some(voters),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 21, "the 21 missing groups are created");
        let eea = &file.policies[&GroupId("users-eea-1".into())].jurisdiction;
        for voters in created {
            let sites: BTreeSet<&str> = voters
                .iter()
                .map(|&node| {
                    assert!(file.topology.is_inside(node, eea), "{node} is inside the EEA");
                    file.topology
                        .site_of(node)
                        .expect("a node of the topology")
                        .name
                        .0
                        .as_str()
                })
                .collect();
            assert_eq!(sites.len(), 3, "voters {voters:?} stand on three sites");
        }
    }
}
