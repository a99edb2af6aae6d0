//! Rebalancing: replicas moved onto nodes that hold fewer, inside each jurisdiction, until the nodes
//! inside hold within one replica of each other — what a node added to a site, or a new site, needs to
//! take its share (issue 19).
//!
//! Pure and deterministic, like the planner, and it starts where the planner ends: a group the planner
//! still has membership work for (legacy members, members down, counts short) gets the planner's steps,
//! not a move. A move takes
//! one voter's place in one group: a learner is added on the node that holds the fewest replicas of the
//! jurisdiction's groups, promoted, leadership handed over if the leaving voter led, the leaving voter —
//! on the node that holds the most — removed, and its replica purged. Every move keeps the policy's
//! failure domains and is checked by [`Fence::admit`]; nothing goes outside, whatever the imbalance.
//!
//! The executor runs one step, reads the cluster again and asks again (`domicile rebalance`), so the
//! plan must finish a move it finds half done rather than undo it: a group with one voter more than its
//! policy has its surplus removed from the fullest node first; a group with one learner more has it
//! promoted. Moves are planned one after another on the placement they leave, in a bounded number, so a
//! dry run shows the whole way.

use std::collections::{BTreeMap, BTreeSet};

use crate::fence::Fence;
use crate::planner::{self, Plan, PlanError, Step};
use crate::policy::{GroupId, GroupPolicy};
use crate::site::NodeId;
use crate::state::{GroupState, Health, Placement};
use crate::topology::Topology;

/// A bound on the moves one plan holds: each move brings the fullest and emptiest node of a jurisdiction
/// at least one replica closer, so a balance needs fewer moves than there are replicas.
const MOVES_MAX: usize = 1_000;

/// The steps that balance replicas across the healthy nodes inside each jurisdiction: a half-done move
/// finished first; then the planner's own membership steps (repairs, migrations) for the groups it has
/// work for, which are not moved; then the moves; then the planner's leadership steps.
pub fn rebalance(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    current: &Placement,
    health: &Health,
) -> Result<Plan, PlanError> {
    rebalance_by_cost(topology, policies, current, health, &|_| 0)
}

/// [`rebalance`], moving off a full node the replica of the group whose `cost` (the bytes a new replica
/// must be copied, say) is least, of those that may move; ties by name. A group created empty for a
/// split moves for nothing where a full one would copy its whole keyspace: the same balance, reached
/// with the fewest bytes the caller knows of.
pub fn rebalance_by_cost(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    current: &Placement,
    health: &Health,
    cost: &dyn Fn(&GroupId) -> u64,
) -> Result<Plan, PlanError> {
    let planned = planner::plan(topology, policies, current, health)?;
    let mut placement = current.clone();
    let mut steps = Vec::new();

    // Half-done moves first: a surplus learner promoted, then the surplus voter removed. The planner
    // would remove the surplus instead, undoing the move, so these groups are not the planner's now.
    let mut finishing = BTreeSet::new();
    for (group, policy) in policies {
        // Promotion, then removal: at most two rounds for one move.
        for _ in 0..2 {
            let Some(state) = placement.get(group) else {
                break;
            };
            let finish = finish_move(topology, policies, policy, state, &placement, health);
            if finish.is_empty() {
                break;
            }
            finishing.insert(group.clone());
            for step in finish {
                step.apply(&mut placement);
                steps.push(step);
            }
        }
    }

    // The planner's membership work comes before any move; its groups are not moved.
    let repairs: Vec<Step> = planner::plan(topology, policies, &placement, health)?
        .steps
        .into_iter()
        .filter(|step| !matches!(step, Step::TransferLeader { .. }) && !finishing.contains(step.group()))
        .collect();
    let unsettled: BTreeSet<GroupId> = repairs.iter().map(|step| step.group().clone()).collect();
    for step in repairs {
        step.apply(&mut placement);
        steps.push(step);
    }

    for _ in 0..MOVES_MAX {
        let Some(mv) = next_move(topology, policies, &placement, health, &unsettled, cost) else {
            break;
        };
        for step in mv {
            step.apply(&mut placement);
            steps.push(step);
        }
    }

    // Then leadership, balanced by the planner on the placement the moves leave.
    let leaders = planner::plan(topology, policies, &placement, health)?;
    steps.extend(
        leaders
            .steps
            .into_iter()
            .filter(|step| matches!(step, Step::TransferLeader { .. }) && !unsettled.contains(step.group())),
    );
    let mut groups = planned.groups;
    for report in &mut groups {
        report.steps = steps.iter().filter(|step| step.group() == &report.group).count();
    }
    Ok(Plan { steps, groups })
}

/// Replicas of the jurisdiction's groups per healthy node inside it, empty nodes included.
fn loads(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    placement: &Placement,
    health: &Health,
    jurisdiction: &str,
) -> BTreeMap<NodeId, usize> {
    let policy = policies
        .values()
        .find(|policy| policy.jurisdiction.name() == jurisdiction)
        .expect("a jurisdiction of some group");
    let mut loads: BTreeMap<NodeId, usize> = topology
        .nodes()
        .filter(|&node| health.is_up(node) && topology.is_inside(node, &policy.jurisdiction))
        .map(|node| (node, 0))
        .collect();
    for (group, state) in placement {
        let Some(policy) = policies.get(group) else {
            continue;
        };
        if policy.jurisdiction.name() != jurisdiction {
            continue;
        }
        for member in state.membership.members() {
            if let Some(load) = loads.get_mut(&member) {
                *load += 1;
            }
        }
    }
    loads
}

/// The next step of a move found half done in `state`, if any.
fn finish_move(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    policy: &GroupPolicy,
    state: &GroupState,
    placement: &Placement,
    health: &Health,
) -> Vec<Step> {
    let membership = &state.membership;
    let group = &policy.group;
    let all_up = membership.members().all(|member| health.is_up(member));
    let all_inside = membership
        .members()
        .all(|member| topology.is_inside(member, &policy.jurisdiction));
    if !all_up || !all_inside {
        return Vec::new(); // the planner's business: repair or migration
    }
    if membership.voters.len() == policy.voters && membership.learners.len() == policy.learners + 1 {
        // A learner added by a move: promoted, then the fullest voter leaves (next read).
        let loads = loads(topology, policies, placement, health, policy.jurisdiction.name());
        let newest = membership
            .learners
            .iter()
            .copied()
            .min_by_key(|learner| (loads.get(learner).copied().unwrap_or(0), *learner));
        return newest
            .map(|node| {
                vec![Step::PromoteVoter {
                    group: group.clone(),
                    node,
                }]
            })
            .unwrap_or_default();
    }
    if membership.voters.len() == policy.voters + 1 && membership.learners.len() == policy.learners {
        return leave_fullest(topology, policies, policy, state, placement, health);
    }
    Vec::new()
}

/// Removes, from a group with one voter too many, the voter on the fullest node whose leaving keeps the
/// failure domains: leadership handed over first if it led, then the removal and the purge.
fn leave_fullest(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    policy: &GroupPolicy,
    state: &GroupState,
    placement: &Placement,
    health: &Health,
) -> Vec<Step> {
    let group = &policy.group;
    let loads = loads(topology, policies, placement, health, policy.jurisdiction.name());
    let mut candidates: Vec<NodeId> = state
        .membership
        .voters
        .iter()
        .copied()
        .filter(|&voter| {
            let rest: BTreeSet<NodeId> = state
                .membership
                .voters
                .iter()
                .copied()
                .filter(|&other| other != voter)
                .collect();
            spans(topology, policy, &rest)
        })
        .collect();
    // Fullest first, then lowest id, as a move picks the node it moves from. The newcomer is not chosen:
    // it was the emptiest node, at least two replicas below the fullest, before it took this one.
    candidates.sort_by_key(|node| (std::cmp::Reverse(loads.get(node).copied().unwrap_or(0)), *node));
    let Some(&leaving) = candidates.first() else {
        return Vec::new();
    };
    let mut steps = Vec::new();
    if state.leader == Some(leaving) {
        let to = state
            .membership
            .voters
            .iter()
            .copied()
            .filter(|&voter| voter != leaving)
            .min_by_key(|voter| (loads.get(voter).copied().unwrap_or(0), *voter))
            .expect("a group with more voters than one");
        steps.push(Step::TransferLeader {
            group: group.clone(),
            to,
        });
    }
    steps.push(Step::RemoveMember {
        group: group.clone(),
        node: leaving,
    });
    steps.push(Step::PurgeReplica {
        group: group.clone(),
        node: leaving,
    });
    steps
}

/// Whether `voters` stand in the distinct sites and regions the policy asks for, counted as the planner
/// counts them.
fn spans(topology: &Topology, policy: &GroupPolicy, voters: &BTreeSet<NodeId>) -> bool {
    let (sites, regions) = planner::domains_spanned(topology, voters);
    let domains = &policy.failure_domains;
    sites >= domains.distinct_sites_min && regions >= domains.distinct_regions_min
}

/// The steps of the next move that brings a jurisdiction's fullest and emptiest nodes closer, or `None`
/// when every jurisdiction is balanced within one (or no move keeps the failure domains).
fn next_move(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    placement: &Placement,
    health: &Health,
    unsettled: &BTreeSet<GroupId>,
    cost: &dyn Fn(&GroupId) -> u64,
) -> Option<Vec<Step>> {
    let jurisdictions: BTreeSet<&str> = policies
        .values()
        .map(|policy| policy.jurisdiction.name())
        .collect();
    for jurisdiction in jurisdictions {
        let loads = loads(topology, policies, placement, health, jurisdiction);
        // Fullest first (then lowest id); emptiest first (then lowest id).
        let mut fullest: Vec<(NodeId, usize)> = loads.iter().map(|(&node, &load)| (node, load)).collect();
        fullest.sort_by_key(|&(node, load)| (std::cmp::Reverse(load), node));
        let mut emptiest = fullest.clone();
        emptiest.sort_by_key(|&(node, load)| (load, node));
        for &(from, from_load) in &fullest {
            for &(to, to_load) in &emptiest {
                if from_load <= to_load + 1 {
                    break;
                }
                let candidate = Candidate {
                    jurisdiction,
                    from,
                    to,
                };
                if let Some(steps) =
                    move_one(topology, policies, placement, health, unsettled, cost, candidate)
                {
                    return Some(steps);
                }
            }
        }
    }
    None
}

/// A voter's place in some group of `jurisdiction`, to move from `from` to `to`.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    jurisdiction: &'a str,
    from: NodeId,
    to: NodeId,
}

/// A voter of some group of the candidate's jurisdiction moved from `from` to `to`, if one may be: the
/// group settled (exactly its policy's counts, every member up and inside: a group still migrating or
/// repaired is the planner's), `from` a voter and `to` no member, the failure domains kept and the fence
/// admitting `to`.
fn move_one(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    placement: &Placement,
    health: &Health,
    unsettled: &BTreeSet<GroupId>,
    cost: &dyn Fn(&GroupId) -> u64,
    Candidate {
        jurisdiction,
        from,
        to,
    }: Candidate<'_>,
) -> Option<Vec<Step>> {
    let mut cheapest_first: Vec<(&GroupId, &GroupState)> = placement.iter().collect();
    cheapest_first.sort_by_key(|&(group, _)| (cost(group), group));
    for (group, state) in cheapest_first {
        let Some(policy) = policies.get(group) else {
            continue;
        };
        let settled = !unsettled.contains(group)
            && state.membership.voters.len() == policy.voters
            && state.membership.learners.len() == policy.learners
            && state
                .membership
                .members()
                .all(|member| health.is_up(member) && topology.is_inside(member, &policy.jurisdiction));
        if policy.jurisdiction.name() != jurisdiction
            || !settled
            || !state.membership.voters.contains(&from)
            || state.membership.contains(to)
        {
            continue;
        }
        let after: BTreeSet<NodeId> = state
            .membership
            .voters
            .iter()
            .copied()
            .filter(|&voter| voter != from)
            .chain([to])
            .collect();
        if !spans(topology, policy, &after) {
            continue;
        }
        let mut with_learner = state.membership.clone();
        with_learner.learners.insert(to);
        if Fence::admit(topology, policy, &state.membership, &with_learner).is_err() {
            continue;
        }
        let mut steps = vec![
            Step::AddLearner {
                group: group.clone(),
                node: to,
            },
            Step::PromoteVoter {
                group: group.clone(),
                node: to,
            },
        ];
        if state.leader == Some(from) {
            steps.push(Step::TransferLeader {
                group: group.clone(),
                to,
            });
        }
        steps.push(Step::RemoveMember {
            group: group.clone(),
            node: from,
        });
        steps.push(Step::PurgeReplica {
            group: group.clone(),
            node: from,
        });
        return Some(steps);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology_file::TopologyFile;

    /// Three EU sites, each group on all three; then a fourth site with a new node.
    const GROWN: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [2]

[[site]]
name = "paris"
country = "FR"
nodes = [3]

[[site]]
name = "amsterdam"
country = "NL"
nodes = [4]

[[site]]
name = "hamar"
country = "NO"
nodes = [5]

[[group]]
name = "eu-1"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 1

[[group]]
name = "eu-2"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 2

[[group]]
name = "eu-3"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 3
"#;

    fn run_to_the_end(file: &TopologyFile, health: &Health) -> (Placement, Vec<Step>) {
        let mut placement = file.current.clone();
        let mut executed = Vec::new();
        // The executor's loop: one step, then plan again from what is true.
        for _ in 0..100 {
            let plan = rebalance(&file.topology, &file.policies, &placement, health).unwrap();
            let Some(step) = plan.steps.first() else {
                return (placement, executed);
            };
            step.apply(&mut placement);
            executed.push(step.clone());
        }
        panic!("no end after 100 steps: {executed:?}");
    }

    fn load_of(file: &TopologyFile, placement: &Placement) -> BTreeMap<NodeId, usize> {
        loads(&file.topology, &file.policies, placement, &Health::all_up(), "EU")
    }

    /// The same balance, reached by moving the groups cheapest to copy: with eu-1 and eu-2 holding data and
    /// eu-3 empty, the first move is eu-3's (the plain rebalancer takes eu-1 first, by name); the second
    /// must be a full group's, since the new node already holds eu-3.
    #[test]
    fn the_cheapest_groups_move_first() {
        let file = TopologyFile::parse(GROWN).unwrap();
        let cost = |group: &GroupId| if group.0 == "eu-3" { 0 } else { 50 << 30 };
        let plan = rebalance_by_cost(
            &file.topology,
            &file.policies,
            &file.current,
            &Health::all_up(),
            &cost,
        )
        .unwrap();
        let moved: Vec<&GroupId> = plan
            .steps
            .iter()
            .filter(|step| matches!(step, Step::AddLearner { .. }))
            .map(Step::group)
            .collect();
        assert_eq!(
            moved,
            [&GroupId("eu-3".into()), &GroupId("eu-1".into())],
            "{:?}",
            plan.steps
        );
        let plain = rebalance(&file.topology, &file.policies, &file.current, &Health::all_up()).unwrap();
        let first = plain
            .steps
            .iter()
            .find(|step| matches!(step, Step::AddLearner { .. }));
        assert_eq!(first.map(Step::group), Some(&GroupId("eu-1".into())));
    }

    #[test]
    fn a_new_node_takes_its_share_inside_the_jurisdiction_and_never_outside() {
        let file = TopologyFile::parse(GROWN).unwrap();
        let (placement, executed) = run_to_the_end(&file, &Health::all_up());
        // Nine replicas on four EU nodes: 3, 3, 3, 0 before; two moves, each from the fullest node (lowest
        // id first) to the emptiest.
        let loads = load_of(&file, &placement);
        assert_eq!(
            loads,
            BTreeMap::from([(NodeId(1), 2), (NodeId(2), 2), (NodeId(3), 3), (NodeId(4), 2)]),
            "after {executed:?}"
        );
        let moves = executed
            .iter()
            .filter(|step| matches!(step, Step::AddLearner { .. }))
            .count();
        assert_eq!(moves, 2, "{executed:?}");
        // Hamar (Norway) is outside the EU: never a member, whatever the imbalance.
        for state in placement.values() {
            assert!(!state.membership.contains(NodeId(5)), "{placement:?}");
            assert_eq!(state.membership.voters.len(), 3);
            assert!(state.membership.learners.is_empty());
        }
        // Balanced: the plan is empty, and the planner has nothing to undo.
        let again = rebalance(&file.topology, &file.policies, &placement, &Health::all_up()).unwrap();
        assert!(again.steps.is_empty(), "{:?}", again.steps);
        let planned = planner::plan(&file.topology, &file.policies, &placement, &Health::all_up()).unwrap();
        assert!(
            planned
                .steps
                .iter()
                .all(|step| matches!(step, Step::TransferLeader { .. })),
            "{:?}",
            planned.steps
        );
    }

    #[test]
    fn a_move_found_half_done_is_finished_not_undone() {
        let file = TopologyFile::parse(GROWN).unwrap();
        let first = rebalance(&file.topology, &file.policies, &file.current, &Health::all_up()).unwrap();
        let Step::AddLearner { group, node } = first.steps[0].clone() else {
            panic!("a move starts with a learner: {:?}", first.steps);
        };
        assert_eq!(node, NodeId(4), "the emptiest node");
        let mut placement = file.current.clone();
        first.steps[0].apply(&mut placement);
        // Read again after the learner was added: promote it.
        let next = rebalance(&file.topology, &file.policies, &placement, &Health::all_up()).unwrap();
        assert_eq!(
            next.steps[0],
            Step::PromoteVoter {
                group: group.clone(),
                node
            }
        );
        next.steps[0].apply(&mut placement);
        // Then one voter too many: the fullest leaves, never the newcomer.
        let next = rebalance(&file.topology, &file.policies, &placement, &Health::all_up()).unwrap();
        let leaving: Vec<&Step> = next
            .steps
            .iter()
            .take_while(|step| !matches!(step, Step::PurgeReplica { .. }))
            .collect();
        assert!(
            leaving
                .iter()
                .any(|step| matches!(step, Step::RemoveMember { node: gone, .. } if *gone != node)),
            "{leaving:?}"
        );
    }

    #[test]
    fn a_down_node_gets_nothing_and_an_unsettled_group_is_not_moved() {
        let file = TopologyFile::parse(GROWN).unwrap();
        let mut health = Health::all_up();
        health.node_down(NodeId(4));
        let plan = rebalance(&file.topology, &file.policies, &file.current, &health).unwrap();
        assert!(
            plan.steps.iter().all(|step| match step {
                Step::AddLearner { node, .. } | Step::PromoteVoter { node, .. } => *node != NodeId(4),
                _ => true,
            }),
            "{:?}",
            plan.steps
        );
        // A group with a member down is the planner's (repair), not the rebalancer's: its membership
        // steps are the planner's, exactly, and no move is added to them.
        let mut health = Health::all_up();
        health.node_down(NodeId(3));
        let plan = rebalance(&file.topology, &file.policies, &file.current, &health).unwrap();
        let repairs = planner::plan(&file.topology, &file.policies, &file.current, &health).unwrap();
        let membership = |steps: &[Step]| -> Vec<Step> {
            steps
                .iter()
                .filter(|step| !matches!(step, Step::TransferLeader { .. }))
                .cloned()
                .collect()
        };
        assert!(!membership(&repairs.steps).is_empty(), "n3's groups need repair");
        assert_eq!(membership(&plan.steps), membership(&repairs.steps));
    }
}
