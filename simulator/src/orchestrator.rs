//! The thin executor of the planner's steps: it observes each group's membership and leader, asks
//! the pure planner (`placement::plan`) what to do given which nodes are down, and executes the next
//! step of each group on that group's leader through the host (whose fence checks it again).
//!
//! `AddLearner` first opens the group on the joining node (and, when the world models bulk data,
//! starts copying the group's ranges to it); `PurgeReplica` runs production's purge on the removed node
//! (which deletes its replica only on its group leader's proof of a committed membership without it) and
//! then deletes its bulk copies, which the conservation checker watches.

use std::collections::BTreeMap;

use placement::{GroupId, GroupState, Health, NodeId, Placement, Step};

use crate::timeline::EventKind;
use crate::world::World;

/// What one planning round did.
#[derive(Debug, Default)]
pub struct Round {
    pub executed: Vec<Step>,
    pub under_replicated: Vec<GroupId>,
}

/// The placement as the world's leaders see it (groups without a leader are left out: the planner
/// can't change them now anyway).
pub fn observed_placement(world: &World) -> Placement {
    let mut placement = BTreeMap::new();
    for group in world.policies.keys() {
        if let Some((leader, host)) = world.leader(group)
            && let Ok(status) = host.status(group)
        {
            placement.insert(
                group.clone(),
                GroupState {
                    membership: status.membership,
                    leader: Some(leader),
                },
            );
        }
    }
    placement
}

/// One round: plan, then execute the first step of every group that has one.
pub async fn round(world: &World, gate: &(dyn Fn(&World, &Step) -> bool + Sync)) -> Round {
    round_with(world, gate, false).await
}

/// What plans a round: the planner ([`placement::plan`]) or the rebalancer ([`placement::rebalance`]).
pub type Planner<'p> = &'p (
        dyn Fn(
    &placement::Topology,
    &BTreeMap<GroupId, placement::GroupPolicy>,
    &Placement,
    &Health,
) -> Result<placement::Plan, placement::PlanError>
            + Sync
    );

/// One round; with `purge_after_removal`, a removal that took effect is followed at once by the purge
/// the plan put after it (the next round no longer sees the removed node, so could not purge it).
pub async fn round_with(
    world: &World,
    gate: &(dyn Fn(&World, &Step) -> bool + Sync),
    purge_after_removal: bool,
) -> Round {
    round_by(world, gate, purge_after_removal, &placement::plan).await
}

/// One round planned by `planner`.
pub async fn round_by(
    world: &World,
    gate: &(dyn Fn(&World, &Step) -> bool + Sync),
    purge_after_removal: bool,
    planner: Planner<'_>,
) -> Round {
    let placement = observed_placement(world);
    let mut health = Health::all_up();
    for node in world.down_nodes() {
        health.node_down(node);
    }
    let policies: BTreeMap<GroupId, placement::GroupPolicy> = world
        .policies
        .iter()
        .filter(|(group, _)| placement.contains_key(*group))
        .map(|(group, policy)| (group.clone(), policy.clone()))
        .collect();
    let mut outcome = Round::default();
    let plan = match planner(&world.topology, &policies, &placement, &health) {
        Ok(plan) => plan,
        Err(error) => {
            world.log(format!("planner refused the observed placement: {error}"));
            return outcome;
        }
    };
    for report in &plan.groups {
        if !report.problems.is_empty() {
            outcome.under_replicated.push(report.group.clone());
        }
    }
    let mut done: std::collections::BTreeSet<GroupId> = Default::default();
    for (index, step) in plan.steps.iter().enumerate() {
        if !done.insert(step.group().clone()) || !gate(world, step) {
            continue;
        }
        if !execute(world, step).await {
            continue;
        }
        outcome.executed.push(step.clone());
        if let (true, Step::RemoveMember { node, .. }) = (purge_after_removal, step)
            && let Some(purge @ Step::PurgeReplica { node: purged, .. }) = plan.steps.get(index + 1)
            && purged == node
            && execute(world, purge).await
        {
            outcome.executed.push(purge.clone());
        }
    }
    outcome
}

/// Runs the production purge on `node` ([`raft::purge::purge_replica`]): the node asks the group's leader
/// for a committed membership without it and only then deletes its replica. A node that is down, or can't
/// get that proof now, keeps its replica, and [`purge_leftovers`] asks again in later rounds.
async fn purge(world: &World, group: &GroupId, node: NodeId) -> bool {
    let Some(host) = world.host(node) else {
        world.log(format!("purge of {group} on {node}: the node is down; later"));
        return false;
    };
    match crate::clock::on_node(node.0, raft::purge::purge_replica(host.as_ref(), group)).await {
        Ok(purged) => {
            if let Some(bulk) = &world.bulk {
                let voters = world
                    .leader(group)
                    .and_then(|(_, host)| host.status(group).ok())
                    .map(|status| status.membership.voters)
                    .unwrap_or_default();
                bulk.purge(world, group, node, &voters);
            }
            world.drop_replica(node, group);
            world.log(format!("purge of {group} on {node}: {purged:?}"));
            if let raft::purge::Purged::Deleted { .. } = purged {
                world.record(EventKind::Step(Step::PurgeReplica {
                    group: group.clone(),
                    node,
                }));
            }
            true
        }
        Err(error) => {
            world.log(format!("purge of {group} on {node}: {error}"));
            false
        }
    }
}

/// Copies a removal left behind, on nodes no longer members (the purge after the removal found the node
/// down or without proof): purged now if the node can get its proof — what production's background purge
/// round does.
pub async fn purge_leftovers(world: &World) {
    let Some(bulk) = &world.bulk else { return };
    for group in world.policies.keys() {
        let Some(members) = world
            .leader(group)
            .and_then(|(_, host)| host.status(group).ok())
            .map(|status| status.membership)
        else {
            continue;
        };
        for holder in bulk.holders(group) {
            if !members.contains(holder) {
                purge(world, group, holder).await;
            }
        }
    }
}

/// Executes one step; returns whether it took effect.
pub async fn execute(world: &World, step: &Step) -> bool {
    let group = step.group().clone();
    match step {
        Step::PurgeReplica { node, .. } => return purge(world, &group, *node).await,
        Step::CreateGroup { voters, .. } => {
            return match world.create_group(&group, voters).await {
                Ok(()) => {
                    world.log(format!("step {step:?}: done"));
                    world.record(EventKind::Step(step.clone()));
                    true
                }
                Err(error) => {
                    world.log(format!("step {step:?}: {error}"));
                    false
                }
            };
        }
        Step::AddLearner { node, .. } => {
            if let Err(error) = world.add_replica(*node, &group).await {
                world.log(format!("step {step:?}: {error}"));
                return false;
            }
        }
        _ => {}
    }
    let Some((_, host)) = world.leader(&group) else {
        return false;
    };
    match host.execute(step).await {
        Ok(()) => {
            world.log(format!("step {step:?}: done"));
            world.record(EventKind::Step(step.clone()));
            if let (Step::AddLearner { node, .. }, Some(bulk)) = (step, &world.bulk) {
                bulk.start_transfer(world, &group, *node);
            }
            true
        }
        Err(error) => {
            world.log(format!("step {step:?}: {error}"));
            false
        }
    }
}
