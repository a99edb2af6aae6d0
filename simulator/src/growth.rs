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
//! Not built yet: splitting the existing groups' ranges into the new groups (issue 19's online copy of a
//! range, which the simulator will drive with the same steps as `domicile shard split`); until then the
//! new groups own no range of the map.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::Instant as _;
use openraft_rt_sim::{SimInstant, SimRuntime};
use placement::{GroupId, Health, NodeId, Step};
use raft::directory::{ShardMap, shard_map_key};
use storage::{Command, Response, WriteId};

use crate::checkers::{Checker, Involved};
use crate::network::LinkModel;
use crate::orchestrator;
use crate::scenario::{MIGRATE_RECORDS, MIGRATION_BOUND, bulk_gate};
use crate::stores::SyncLatency;
use crate::world::{GroupSpec, World, WorldSpec};

/// The jurisdiction that grows.
pub const JURISDICTION: &str = "EEA";

/// Ranges of modelled records per group at the start: enough that a group split in two still holds a
/// dozen, and eight groups hold six each.
const RANGES_PER_GROUP: u64 = 24;

/// The growth world's topology: twenty-four nodes inside the EEA, six per site, and three US nodes
/// beside them; eight groups declared, of which the world creates two.
pub const GROW_TOPOLOGY: &str = r#"
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

[[group]]
name = "users-eea-1"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-2"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-3"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-4"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-5"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-6"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-7"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-8"
jurisdiction = "EEA"
voters = 3
"#;

/// The groups that exist when the run begins, each on one node of Dublin A, Dublin B and Hamar.
fn first_groups() -> Vec<GroupSpec> {
    [("users-eea-1", [1, 7, 13]), ("users-eea-2", [2, 8, 14])]
        .into_iter()
        .map(|(name, voters)| GroupSpec {
            group: GroupId(name.into()),
            voters: voters.into_iter().map(NodeId).collect(),
            legacy: BTreeSet::new(),
        })
        .collect()
}

/// The EEA's first map: the first groups, each given an equal range.
fn first_map() -> placement::shard_map::ShardMap {
    let groups: Vec<GroupId> = first_groups().into_iter().map(|spec| spec.group).collect();
    placement::shard_map::ShardMap::even(JURISDICTION, &groups).expect("two groups make a map")
}

pub fn world() -> WorldSpec {
    let groups = first_groups();
    let records_per_group = MIGRATE_RECORDS / groups.len() as u64;
    WorldSpec {
        topology: GROW_TOPOLOGY.to_string(),
        groups,
        links: LinkModel::new(),
        sync_latency: SyncLatency::default(),
        bulk: Some((records_per_group, RANGES_PER_GROUP)),
        first_map: Some(first_map()),
    }
}

/// Publishes the EEA's first map over the groups the world started with: a compare-and-set on "absent"
/// of the map record in its directory group (the first group by name), as the directory group's first
/// member publishes the topology's proposal. Clients route by it from then on.
pub async fn publish_first_map(world: &World) -> Result<(), String> {
    let ranged = first_map();
    let groups: Vec<GroupId> = first_groups().into_iter().map(|spec| spec.group).collect();
    let map = ShardMap::Ranged(ranged.clone());
    let value = map.encode().map_err(|error| error.to_string())?;
    let directory = groups[0].clone();
    let command = Command::CompareAndSet {
        write: WriteId {
            client_id: 900_000,
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

/// One round of growth: leftovers purged, missing groups created, then the rebalancer's next move of
/// each group (a half-done move finished, the planner's repairs first).
pub async fn round(world: &World) {
    let step = async {
        orchestrator::purge_leftovers(world).await;
        create_missing_groups(world).await;
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
        })
    })
}

/// Faults over: growth rounds go on until every group exists, the nodes inside are balanced and the
/// moved copies purged (bounded, like a migration).
pub async fn finish(world: &World) {
    let started = SimInstant::now();
    for _ in 0..MIGRATION_BOUND.as_secs() {
        if grown(world) {
            world.log("growth complete");
            return;
        }
        if SimInstant::now() - started > MIGRATION_BOUND {
            break;
        }
        round(world).await;
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
