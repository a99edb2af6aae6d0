//! The planner: from policies, the current placement and node health, the steps that make every group
//! compliant, in an order that is safe to execute one step at a time.
//!
//! A pure, deterministic function: the same input gives the same plan, in the same order, on any machine.
//! It never looks outside a group's jurisdiction for capacity. When the jurisdiction has too few healthy
//! sites, the group is reported under-replicated and left that way: unavailability or reduced redundancy is
//! preferable to a breach.
//!
//! Per group, steps come in this order, which is what makes a migration out of legacy sites safe:
//!
//! 1. new inside replicas are added as learners (they catch up without voting),
//! 2. then promoted to voters,
//! 3. leadership moves to the preferred inside voter,
//! 4. outside (legacy) members are removed — voters only once existing inside voters form a quorum —,
//!    then dead voters that have been replaced, then surplus members (a surplus voter chosen as a learner
//!    is demoted instead, keeping its data),
//! 5. and each removed member's replica is purged.
//!
//! Every membership step is checked by [`Fence::admit`] against the membership the steps before it produce,
//! and every leader by [`Fence::admit_leader`] (the pair assertion: the plan is checked when it is made and
//! again by the Raft layer when each step is applied). A step the fence refuses is never emitted; a
//! removal it refuses is reported as a blocked migration. Nor is a step after which the voters that are up
//! would not form a quorum: Raft could not commit it.
//!
//! A plan is a fixed point: applied in full, it leaves nothing to do for the same health, leaders included
//! (the node runs the planner in a loop, and a plan that asked for more would move leadership back and
//! forth). That holds because every choice is a function of inputs the plan leaves as it found them or
//! sets itself: among a group's members, voters and learners are chosen by failure domains, membership,
//! preference and id — never by load, which every group's moves shift — and leadership is balanced, group by
//! group in name order, against the leaders chosen before, keeping the current leader when it is no worse.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::fence::Fence;
#[cfg(test)]
use crate::jurisdiction::Jurisdiction;
use crate::membership::Membership;
use crate::policy::{GroupId, GroupPolicy};
use crate::site::NodeId;
use crate::state::{GroupState, Health, Placement};
use crate::topology::Topology;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Bootstrap a group that does not exist yet with these voters.
    CreateGroup {
        group: GroupId,
        voters: BTreeSet<NodeId>,
    },
    AddLearner {
        group: GroupId,
        node: NodeId,
    },
    PromoteVoter {
        group: GroupId,
        node: NodeId,
    },
    /// Turn a voter into a learner: it keeps its data and keeps receiving the log, but stops voting.
    DemoteVoter {
        group: GroupId,
        node: NodeId,
    },
    TransferLeader {
        group: GroupId,
        to: NodeId,
    },
    RemoveMember {
        group: GroupId,
        node: NodeId,
    },
    /// Delete the removed member's copy of the group's data from its disk.
    PurgeReplica {
        group: GroupId,
        node: NodeId,
    },
}

impl Step {
    pub fn group(&self) -> &GroupId {
        match self {
            Step::CreateGroup { group, .. }
            | Step::AddLearner { group, .. }
            | Step::PromoteVoter { group, .. }
            | Step::DemoteVoter { group, .. }
            | Step::TransferLeader { group, .. }
            | Step::RemoveMember { group, .. }
            | Step::PurgeReplica { group, .. } => group,
        }
    }

    /// The membership this step leads to from `current`; `None` for steps that leave it unchanged.
    pub fn next_membership(&self, current: &Membership) -> Option<Membership> {
        let mut next = current.clone();
        match self {
            Step::CreateGroup { voters, .. } => next = Membership::new(voters.iter().copied(), []),
            Step::AddLearner { node, .. } => {
                next.learners.insert(*node);
            }
            Step::PromoteVoter { node, .. } => {
                next.learners.remove(node);
                next.voters.insert(*node);
            }
            Step::DemoteVoter { node, .. } => {
                next.voters.remove(node);
                next.learners.insert(*node);
            }
            Step::RemoveMember { node, .. } => {
                next.voters.remove(node);
                next.learners.remove(node);
            }
            Step::TransferLeader { .. } | Step::PurgeReplica { .. } => return None,
        }
        Some(next)
    }

    /// Applies the step to a placement, as an executor that succeeded would.
    pub fn apply(&self, placement: &mut Placement) {
        let state = placement.entry(self.group().clone()).or_default();
        if let Some(next) = self.next_membership(&state.membership) {
            state.membership = next;
        }
        match self {
            Step::TransferLeader { to, .. } => state.leader = Some(*to),
            Step::RemoveMember { node, .. } | Step::DemoteVoter { node, .. }
                if state.leader == Some(*node) =>
            {
                state.leader = None
            }
            _ => {}
        }
    }
}

/// Why a group can't be made compliant now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Fewer healthy voters than a quorum: no membership change can commit until nodes return.
    QuorumLost { voters: usize, healthy: usize },
    /// Not enough healthy nodes inside the jurisdiction for the voters the policy asks for.
    UnderReplicated {
        voters_wanted: usize,
        voters_possible: usize,
    },
    /// The voters found don't span the failure domains the policy asks for.
    FailureDomainsShort {
        sites_wanted: usize,
        sites: usize,
        regions_wanted: usize,
        regions: usize,
    },
    /// Not enough healthy nodes inside the jurisdiction for the learners the policy asks for.
    LearnersShort {
        learners_wanted: usize,
        learners_possible: usize,
    },
    /// Legacy voters outside the jurisdiction can't be removed yet: too few inside voters, or too few of them
    /// up, to form a quorum.
    MigrationBlocked { outside_voters: Vec<NodeId> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    pub group: GroupId,
    pub jurisdiction: String,
    pub steps: usize,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub groups: Vec<GroupReport>,
}

impl Plan {
    /// True when every group can be made compliant by these steps.
    pub fn is_feasible(&self) -> bool {
        self.groups.iter().all(|report| report.problems.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the current placement has group `{0}`, which has no policy")]
    UnknownGroup(GroupId),
    #[error("group `{group}`: node {node} in the current placement is not in the topology")]
    UnknownNode { group: GroupId, node: NodeId },
    #[error("group `{group}`: node {node} is both voter and learner in the current placement")]
    VoterAndLearner { group: GroupId, node: NodeId },
    #[error("group `{group}` has learners but no voter in the current placement")]
    NoVoters { group: GroupId },
    #[error("group `{group}`: current leader {node} is not a voter")]
    LeaderNotVoter { group: GroupId, node: NodeId },
}

/// Plans every group with a policy, in group-name order.
pub fn plan(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    current: &Placement,
    health: &Health,
) -> Result<Plan, PlanError> {
    validate_current(topology, policies, current)?;
    let mut cluster = ClusterLoad::new(current);
    let mut plan = Plan {
        steps: Vec::new(),
        groups: Vec::new(),
    };
    let empty = GroupState::default();
    for (group, policy) in policies {
        assert_eq!(group, &policy.group, "policies are keyed by their own group");
        let state = current.get(group).unwrap_or(&empty);
        let planner = GroupPlanner {
            topology,
            policy,
            state,
            health,
        };
        let (steps, problems) = planner.plan(&mut cluster);
        plan.groups.push(GroupReport {
            group: group.clone(),
            jurisdiction: policy.jurisdiction.name().to_string(),
            steps: steps.len(),
            problems,
        });
        plan.steps.extend(steps);
    }
    Ok(plan)
}

fn validate_current(
    topology: &Topology,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    current: &Placement,
) -> Result<(), PlanError> {
    for (group, state) in current {
        if !policies.contains_key(group) {
            return Err(PlanError::UnknownGroup(group.clone()));
        }
        let group = group.clone();
        let membership = &state.membership;
        if let Some(node) = membership
            .members()
            .find(|&node| topology.site_of(node).is_none())
        {
            return Err(PlanError::UnknownNode { group, node });
        }
        if let Some(&node) = membership.voters.intersection(&membership.learners).next() {
            return Err(PlanError::VoterAndLearner { group, node });
        }
        if membership.voters.is_empty() && !membership.learners.is_empty() {
            return Err(PlanError::NoVoters { group });
        }
        if let Some(node) = state.leader.filter(|leader| !membership.voters.contains(leader)) {
            return Err(PlanError::LeaderNotVoter { group, node });
        }
    }
    Ok(())
}

/// What the groups planned so far put on each node: replicas (to spread data) and leaderships (to spread
/// leader load). Updated as each group is planned, so later groups see earlier decisions.
struct ClusterLoad {
    replicas: BTreeMap<NodeId, usize>,
    leaders: BTreeMap<NodeId, usize>,
}

impl ClusterLoad {
    fn new(current: &Placement) -> ClusterLoad {
        let mut replicas = BTreeMap::new();
        for state in current.values() {
            for node in state.membership.members() {
                *replicas.entry(node).or_insert(0) += 1;
            }
        }
        ClusterLoad {
            replicas,
            leaders: BTreeMap::new(),
        }
    }

    fn replicas(&self, node: NodeId) -> usize {
        self.replicas.get(&node).copied().unwrap_or(0)
    }

    fn leaders(&self, node: NodeId) -> usize {
        self.leaders.get(&node).copied().unwrap_or(0)
    }

    fn moved(&mut self, before: &Membership, after: &Membership) {
        for node in before.members().filter(|&node| !after.contains(node)) {
            let count = self.replicas.entry(node).or_insert(0);
            *count = count.saturating_sub(1);
        }
        for node in after.members().filter(|&node| !before.contains(node)) {
            *self.replicas.entry(node).or_insert(0) += 1;
        }
    }
}

struct GroupPlanner<'a> {
    topology: &'a Topology,
    policy: &'a GroupPolicy,
    state: &'a GroupState,
    health: &'a Health,
}

/// The membership being built step by step, each step through the fence.
struct Steps<'a> {
    topology: &'a Topology,
    policy: &'a GroupPolicy,
    health: &'a Health,
    membership: Membership,
    steps: Vec<Step>,
}

impl Steps<'_> {
    /// Emits `step` if the fence admits the membership it leads to and that membership's voters that are up
    /// form a quorum; returns whether it did.
    fn push(&mut self, step: Step) -> bool {
        let next = step
            .next_membership(&self.membership)
            .expect("only membership steps are pushed here");
        let healthy = next
            .voters
            .iter()
            .filter(|&&node| self.health.is_up(node))
            .count();
        if healthy < GroupPolicy::quorum(next.voters.len()) {
            // Raft commits a change only with a quorum of the new configuration too: this one would stall the
            // group until a node returns, and the next plan would find it without a quorum.
            return false;
        }
        match Fence::admit(self.topology, self.policy, &self.membership, &next) {
            Ok(fenced) => {
                self.membership = fenced.into_membership();
                self.steps.push(step);
                true
            }
            Err(_) => false,
        }
    }
}

impl GroupPlanner<'_> {
    fn inside(&self, node: NodeId) -> bool {
        self.topology.is_inside(node, &self.policy.jurisdiction)
    }

    fn up(&self, node: NodeId) -> bool {
        self.health.is_up(node)
    }

    fn plan(&self, cluster: &mut ClusterLoad) -> (Vec<Step>, Vec<Problem>) {
        let current = &self.state.membership;
        let group = &self.policy.group;
        let mut problems = Vec::new();

        let voters = current.voters.len();
        let healthy = current.voters.iter().filter(|&&node| self.up(node)).count();
        if voters > 0 && healthy < GroupPolicy::quorum(voters) {
            // No change could commit; planning one would only mislead the operator.
            return (Vec::new(), vec![Problem::QuorumLost { voters, healthy }]);
        }

        let target_voters = self.choose_voters(cluster);
        let target_learners = self.choose_learners(&target_voters, cluster);
        self.report_shortfalls(&target_voters, &target_learners, &mut problems);
        if target_voters.is_empty() {
            return (Vec::new(), problems);
        }

        let mut steps = Steps {
            topology: self.topology,
            policy: self.policy,
            health: self.health,
            membership: current.clone(),
            steps: Vec::new(),
        };

        // 1 and 2: add, then promote.
        if current.is_empty() {
            let created = steps.push(Step::CreateGroup {
                group: group.clone(),
                voters: target_voters.clone(),
            });
            assert!(
                created,
                "the fence refused a group made only of healthy inside voters"
            );
        } else {
            let joining: Vec<NodeId> = target_voters
                .iter()
                .copied()
                .filter(|node| !current.voters.contains(node))
                .collect();
            for &node in joining.iter().filter(|node| !current.learners.contains(node)) {
                let added = steps.push(Step::AddLearner {
                    group: group.clone(),
                    node,
                });
                assert!(added, "the fence refused adding inside node {node} as a learner");
            }
            for &node in &joining {
                let promoted = steps.push(Step::PromoteVoter {
                    group: group.clone(),
                    node,
                });
                assert!(promoted, "the fence refused promoting inside learner {node}");
            }
        }
        let new_learners: Vec<NodeId> = target_learners
            .iter()
            .copied()
            .filter(|&node| !steps.membership.contains(node))
            .collect();
        for node in new_learners {
            let added = steps.push(Step::AddLearner {
                group: group.clone(),
                node,
            });
            assert!(added, "the fence refused adding inside node {node} as a learner");
        }

        // 3: leadership to the preferred inside voter, before any removal can take the current leader away.
        if let Some(leader) = self.choose_leader(&target_voters, cluster)
            && self.state.leader != Some(leader)
        {
            let fenced = Fence::admit(self.topology, self.policy, &steps.membership, &steps.membership)
                .expect("the membership built by admitted steps is admitted");
            Fence::admit_leader(self.topology, self.policy, &fenced, leader)
                .expect("the planner picks leaders among healthy inside voters only");
            steps.steps.push(Step::TransferLeader {
                group: group.clone(),
                to: leader,
            });
        }

        // 4 and 5: removals, legacy first, each followed by its purge. A removal refused now may be admitted
        // once a later one is made (a dead voter's removal restores the quorum a live one's needs), so the
        // candidates are tried again until a pass changes nothing: what is left would be refused next round
        // too.
        let mut pending = self.removal_order(&steps.membership, &target_voters, &target_learners);
        loop {
            let before = pending.len();
            pending.retain(|&node| !self.remove(&mut steps, node, &target_learners));
            if pending.len() == before {
                break;
            }
        }
        let blocked: Vec<NodeId> = pending.into_iter().filter(|&node| !self.inside(node)).collect();
        if !blocked.is_empty() {
            problems.push(Problem::MigrationBlocked {
                outside_voters: blocked,
            });
        }

        cluster.moved(current, &steps.membership);
        (steps.steps, problems)
    }

    /// Emits the step that takes `node` out of the group, or out of its voters if it was chosen as a learner
    /// (a demotion: it keeps its data rather than being removed and re-added); a removal is followed by the
    /// purge of its replica. Returns whether the step was admitted.
    fn remove(&self, steps: &mut Steps, node: NodeId, target_learners: &BTreeSet<NodeId>) -> bool {
        let group = &self.policy.group;
        if target_learners.contains(&node) {
            return steps.push(Step::DemoteVoter {
                group: group.clone(),
                node,
            });
        }
        let removed = steps.push(Step::RemoveMember {
            group: group.clone(),
            node,
        });
        if removed {
            steps.steps.push(Step::PurgeReplica {
                group: group.clone(),
                node,
            });
        }
        removed
    }

    /// Picks up to `policy.voters` healthy inside nodes, greedily. Keys, most important first: helps reach
    /// the policy's region minimum, then its site minimum; is already a voter, then a learner (keeping them
    /// avoids moving data); adds a new site, then a new region (spread beyond the minimum when it is free);
    /// leader preference; fewest replicas on the node (for a newcomer only: see [`Self::newcomer_load`]);
    /// lowest id.
    fn choose_voters(&self, cluster: &ClusterLoad) -> BTreeSet<NodeId> {
        let current = &self.state.membership;
        let domains = &self.policy.failure_domains;
        let mut chosen = BTreeSet::new();
        let mut sites = BTreeSet::new();
        let mut regions = BTreeSet::new();
        while chosen.len() < self.policy.voters {
            let best = self
                .topology
                .nodes()
                .filter(|&node| self.inside(node) && self.up(node) && !chosen.contains(&node))
                .max_by_key(|&node| {
                    let site = self.topology.site_of(node).expect("topology nodes have sites");
                    let new_site = !sites.contains(&site.name);
                    let new_region = !regions.contains(site.failure_region());
                    (
                        new_region && regions.len() < domains.distinct_regions_min,
                        new_site && sites.len() < domains.distinct_sites_min,
                        current.voters.contains(&node),
                        current.learners.contains(&node),
                        new_site,
                        new_region,
                        Reverse(self.policy.leader_rank(self.topology, node)),
                        Reverse(self.newcomer_load(node, cluster)),
                        Reverse(node),
                    )
                });
            let Some(node) = best else { break };
            let site = self.topology.site_of(node).expect("topology nodes have sites");
            sites.insert(site.name.clone());
            regions.insert(site.failure_region().to_string());
            chosen.insert(node);
        }
        chosen
    }

    /// Picks up to `policy.learners` healthy inside nodes that are not voters: current learners first, then
    /// nodes at sites the voters don't cover, then members (a surplus voter, demoted, keeps its data), then
    /// the least loaded newcomers (see [`Self::newcomer_load`]).
    fn choose_learners(&self, voters: &BTreeSet<NodeId>, cluster: &ClusterLoad) -> BTreeSet<NodeId> {
        let voter_sites: BTreeSet<_> = voters
            .iter()
            .filter_map(|&node| self.topology.site_of(node))
            .map(|site| &site.name)
            .collect();
        let mut candidates: Vec<NodeId> = self
            .topology
            .nodes()
            .filter(|&node| self.inside(node) && self.up(node) && !voters.contains(&node))
            .collect();
        candidates.sort_by_key(|&node| {
            let site = &self
                .topology
                .site_of(node)
                .expect("topology nodes have sites")
                .name;
            (
                Reverse(self.state.membership.learners.contains(&node)),
                Reverse(!voter_sites.contains(site)),
                Reverse(self.state.membership.contains(node)),
                self.newcomer_load(node, cluster),
                node,
            )
        });
        candidates.into_iter().take(self.policy.learners).collect()
    }

    /// How many replicas `node` holds, as a tie-break between candidates — counted for newcomers only: a
    /// current member of the group weighs 0. Load is the one input of a choice that the plan itself changes
    /// (every group's moves shift it), so among members it would make the choice drift from one round to the
    /// next. A group whose plan can't reach its target (a blocked migration keeps every inside voter) would
    /// then aim at a different subset of its members, and lead from a different one, every time it is
    /// planned, and the leader balance of every group planned after it would follow. Members are preferred
    /// to newcomers before load is compared, and a newcomer is always added by the plan that picks it, so
    /// from the next round on it is a member and the choice holds.
    fn newcomer_load(&self, node: NodeId, cluster: &ClusterLoad) -> usize {
        if self.state.membership.contains(node) {
            0
        } else {
            cluster.replicas(node)
        }
    }

    /// The most preferred voter; among equals the current leader if it leads no more groups than the others,
    /// else the one leading the fewest groups so far (balance), then the lowest id.
    fn choose_leader(&self, voters: &BTreeSet<NodeId>, cluster: &mut ClusterLoad) -> Option<NodeId> {
        let rank = |node: NodeId| self.policy.leader_rank(self.topology, node);
        let best_rank = voters.iter().map(|&node| rank(node)).min()?;
        let candidates: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&node| rank(node) == best_rank)
            .collect();
        let fewest = candidates.iter().map(|&node| cluster.leaders(node)).min()?;
        let keep = self
            .state
            .leader
            .filter(|leader| candidates.contains(leader) && cluster.leaders(*leader) <= fewest);
        let leader = keep.or_else(|| {
            candidates
                .iter()
                .copied()
                .min_by_key(|&node| (cluster.leaders(node), node))
        })?;
        *cluster.leaders.entry(leader).or_insert(0) += 1;
        Some(leader)
    }

    /// Members to remove, in a safe order: outside voters, outside learners, dead voters that have been
    /// replaced (a dead voter that can't be replaced is kept, so it rejoins when it returns), surplus
    /// voters, surplus learners.
    fn removal_order(
        &self,
        membership: &Membership,
        target_voters: &BTreeSet<NodeId>,
        target_learners: &BTreeSet<NodeId>,
    ) -> Vec<NodeId> {
        let fully_replaced = target_voters.len() >= self.policy.voters;
        let outside_voters = membership.voters.iter().filter(|&&node| !self.inside(node));
        let outside_learners = membership.learners.iter().filter(|&&node| !self.inside(node));
        let dead_voters = membership
            .voters
            .iter()
            .filter(|&&node| self.inside(node) && !self.up(node) && fully_replaced);
        let surplus_voters = membership
            .voters
            .iter()
            .filter(|&&node| self.inside(node) && self.up(node) && !target_voters.contains(&node));
        let surplus_learners = membership.learners.iter().filter(|&&node| {
            self.inside(node) && !target_learners.contains(&node) && !target_voters.contains(&node)
        });
        outside_voters
            .chain(outside_learners)
            .chain(dead_voters)
            .chain(surplus_voters)
            .chain(surplus_learners)
            .copied()
            .collect()
    }

    fn report_shortfalls(
        &self,
        voters: &BTreeSet<NodeId>,
        learners: &BTreeSet<NodeId>,
        problems: &mut Vec<Problem>,
    ) {
        let policy = self.policy;
        if voters.len() < policy.voters {
            problems.push(Problem::UnderReplicated {
                voters_wanted: policy.voters,
                voters_possible: voters.len(),
            });
        }
        let (sites, regions) = domains_spanned(self.topology, voters);
        let domains = &policy.failure_domains;
        if sites < domains.distinct_sites_min || regions < domains.distinct_regions_min {
            problems.push(Problem::FailureDomainsShort {
                sites_wanted: domains.distinct_sites_min,
                sites,
                regions_wanted: domains.distinct_regions_min,
                regions,
            });
        }
        if learners.len() < policy.learners {
            problems.push(Problem::LearnersShort {
                learners_wanted: policy.learners,
                learners_possible: learners.len(),
            });
        }
    }
}

/// How many distinct sites and failure regions ([`Site::failure_region`](crate::Site::failure_region))
/// `voters` stand in: what a policy's failure-domain rule counts, for the planner and the rebalancer alike.
pub(crate) fn domains_spanned(topology: &Topology, voters: &BTreeSet<NodeId>) -> (usize, usize) {
    let sites: BTreeSet<_> = voters
        .iter()
        .filter_map(|&node| topology.site_of(node))
        .map(|site| &site.name)
        .collect();
    let regions: BTreeSet<_> = voters
        .iter()
        .filter_map(|&node| topology.site_of(node))
        .map(|site| site.failure_region())
        .collect();
    (sites.len(), regions.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{file, members};
    use crate::{SiteName, TopologyFile};

    fn group(name: &str) -> GroupId {
        GroupId(name.into())
    }

    fn state(voters: &[u64], learners: &[u64], leader: Option<u64>) -> GroupState {
        GroupState {
            membership: members(voters, learners),
            leader: leader.map(NodeId),
        }
    }

    /// Executes the plan step by step, asking the fence about every step as the Raft layer will.
    fn execute(file: &TopologyFile, mut placement: Placement, plan: &Plan) -> Placement {
        for step in &plan.steps {
            let policy = &file.policies[step.group()];
            let before = placement.get(step.group()).cloned().unwrap_or_default();
            if let Some(next) = step.next_membership(&before.membership) {
                Fence::admit(&file.topology, policy, &before.membership, &next)
                    .unwrap_or_else(|refusal| panic!("planned step {step:?} refused: {refusal}"));
            }
            step.apply(&mut placement);
            if let Step::TransferLeader { to, .. } = step {
                let state = &placement[step.group()];
                let fenced =
                    Fence::admit(&file.topology, policy, &state.membership, &state.membership).unwrap();
                Fence::admit_leader(&file.topology, policy, &fenced, *to).unwrap();
            }
        }
        placement
    }

    fn only(file: &TopologyFile, name: &str) -> BTreeMap<GroupId, GroupPolicy> {
        BTreeMap::from([(group(name), file.policies[&group(name)].clone())])
    }

    #[test]
    fn a_legacy_group_migrates_in_a_safe_order_and_ends_inside() {
        let file = file();
        let policies = only(&file, "eea");
        let current = Placement::from([(group("eea"), state(&[9, 10, 11], &[], Some(9)))]);
        let plan = plan(&file.topology, &policies, &current, &Health::all_up()).unwrap();
        assert!(plan.is_feasible(), "{plan:?}");

        let position = |wanted: fn(&Step) -> bool| plan.steps.iter().position(wanted);
        let last_add = plan
            .steps
            .iter()
            .rposition(|step| matches!(step, Step::AddLearner { .. }))
            .unwrap();
        let first_promote = position(|step| matches!(step, Step::PromoteVoter { .. })).unwrap();
        let last_promote = plan
            .steps
            .iter()
            .rposition(|step| matches!(step, Step::PromoteVoter { .. }))
            .unwrap();
        let transfer = position(|step| matches!(step, Step::TransferLeader { .. })).unwrap();
        let first_remove = position(|step| matches!(step, Step::RemoveMember { .. })).unwrap();
        assert!(
            last_add < first_promote && last_promote < transfer && transfer < first_remove,
            "{:#?}",
            plan.steps
        );
        for (index, step) in plan.steps.iter().enumerate() {
            if let Step::RemoveMember { node, .. } = step {
                assert!(
                    matches!(&plan.steps[index + 1], Step::PurgeReplica { node: purged, .. } if purged == node)
                );
            }
        }

        let after = execute(&file, current, &plan);
        let placed = &after[&group("eea")];
        assert!(
            placed
                .membership
                .members()
                .all(|node| file.topology.is_inside(node, &Jurisdiction::eea()))
        );
        assert_eq!(placed.membership.voters.len(), 3);
        let leader_site = file.topology.site_of(placed.leader.unwrap()).unwrap();
        assert_eq!(
            leader_site.name,
            SiteName("hamar".into()),
            "the leader preference is honoured"
        );
        let again = super::plan(&file.topology, &policies, &after, &Health::all_up()).unwrap();
        assert!(
            again.steps.is_empty(),
            "a compliant placement needs no step: {:?}",
            again.steps
        );
    }

    #[test]
    fn a_lost_site_is_replaced_inside_the_jurisdiction_only() {
        let file = file();
        let policies = only(&file, "eu");
        let current = Placement::from([(group("eu"), state(&[1, 3, 7], &[], Some(1)))]);
        let mut health = Health::all_up();
        health.site_down(&file.topology, &SiteName("dublin-a".into()));
        let plan = super::plan(&file.topology, &policies, &current, &health).unwrap();
        // EU has Dublin A (down), Dublin B and Frankfurt here: Hamar and Ashburn are never candidates, so the
        // group can only keep its count by doubling up in Dublin B, and says its failure domains are short.
        for step in &plan.steps {
            if let Step::AddLearner { node, .. } | Step::PromoteVoter { node, .. } = step {
                assert!(
                    file.topology.is_inside(*node, &Jurisdiction::eu()),
                    "{step:?} goes outside the EU"
                );
            }
        }
        assert_eq!(
            plan.groups[0].problems,
            vec![Problem::FailureDomainsShort {
                sites_wanted: 3,
                sites: 2,
                regions_wanted: 0,
                regions: 2
            }]
        );
        let after = execute(&file, current, &plan);
        assert_eq!(after[&group("eu")].membership, members(&[3, 4, 7], &[]));
        assert_ne!(
            after[&group("eu")].leader,
            Some(NodeId(1)),
            "leadership leaves the dead site"
        );
    }

    #[test]
    fn too_few_healthy_nodes_inside_means_under_replicated_never_outside() {
        let file = file();
        let policies = only(&file, "eu");
        let current = Placement::from([(group("eu"), state(&[1, 3, 7], &[], Some(1)))]);
        let mut health = Health::all_up();
        for site in ["dublin-b", "frankfurt"] {
            health.site_down(&file.topology, &SiteName(site.into()));
        }
        // Two of three voters down: no quorum, so no change can be planned at all.
        let plan = plan(&file.topology, &policies, &current, &health).unwrap();
        assert!(plan.steps.is_empty());
        assert_eq!(
            plan.groups[0].problems,
            vec![Problem::QuorumLost {
                voters: 3,
                healthy: 1
            }]
        );

        // One voter down and no inside node to replace it: under-replicated, dead voter kept for its return.
        let mut health = Health::all_up();
        for node in [2, 3, 4] {
            health.node_down(NodeId(node));
        }
        let current = Placement::from([(group("eu"), state(&[1, 3, 7], &[], Some(1)))]);
        let plan = super::plan(&file.topology, &policies, &current, &health).unwrap();
        assert!(!plan.is_feasible());
        let after = execute(&file, current, &plan);
        let placed = &after[&group("eu")];
        assert!(
            placed.membership.voters.contains(&NodeId(3)),
            "an irreplaceable dead voter is kept"
        );
        assert!(
            placed
                .membership
                .members()
                .all(|node| file.topology.is_inside(node, &Jurisdiction::eu()))
        );
    }

    #[test]
    fn a_migration_stops_before_removing_legacy_voters_without_an_inside_quorum() {
        let file = file();
        let policies = only(&file, "eea");
        let current = Placement::from([(group("eea"), state(&[9, 10, 11], &[], Some(9)))]);
        let mut health = Health::all_up();
        for site in ["dublin-a", "dublin-b", "frankfurt"] {
            health.site_down(&file.topology, &SiteName(site.into()));
        }
        let plan = plan(&file.topology, &policies, &current, &health).unwrap();
        // Only Hamar's two nodes are up inside: they join and vote, but 2 of 4 voters would be no quorum, so
        // no legacy voter leaves. Leadership still moves inside.
        assert!(
            plan.groups[0]
                .problems
                .iter()
                .any(|problem| matches!(problem, Problem::MigrationBlocked { .. }))
        );
        let after = execute(&file, current, &plan);
        let voters = &after[&group("eea")].membership.voters;
        assert!(voters.contains(&NodeId(5)) && voters.contains(&NodeId(6)));
        assert_eq!(
            voters
                .iter()
                .filter(|node| !file.topology.is_inside(**node, &Jurisdiction::eea()))
                .count(),
            3,
            "{voters:?}"
        );
        assert_eq!(after[&group("eea")].leader, Some(NodeId(5)));
    }

    /// Dublin, Paris and Ashburn, one EU group migrating out of Ashburn; the caller adds its policy.
    const MIGRATING: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1, 2]

[[site]]
name = "paris"
country = "FR"
nodes = [3]

[[site]]
name = "ashburn"
country = "US"
nodes = [9, 10]
"#;

    #[test]
    fn a_legacy_voter_stays_while_its_removal_would_leave_no_quorum_up() {
        let file = TopologyFile::parse(&format!(
            "{MIGRATING}[[group]]\nname = \"eu\"\njurisdiction = \"EU\"\nvoters = 2\n"
        ))
        .unwrap();
        let current = Placement::from([(group("eu"), state(&[1, 9, 10], &[], Some(9)))]);
        let mut health = Health::all_up();
        health.site_down(&file.topology, &SiteName("dublin".into()));
        let plan = plan(&file.topology, &file.policies, &current, &health).unwrap();
        // Paris joins and leads, and one Ashburn voter leaves. The fence would let the other go too (Dublin and
        // Paris are a quorum of two), but with Dublin down that change could not commit: it waits.
        let after = execute(&file, current, &plan);
        assert_eq!(after[&group("eu")].membership, members(&[1, 3, 10], &[]));
        assert_eq!(after[&group("eu")].leader, Some(NodeId(3)));
        assert!(plan.groups[0].problems.contains(&Problem::MigrationBlocked {
            outside_voters: vec![NodeId(10)]
        }));
        let again = super::plan(&file.topology, &file.policies, &after, &health).unwrap();
        assert_eq!(again.steps, [], "the plan left nothing to do");
    }

    #[test]
    fn a_removal_refused_for_want_of_a_quorum_up_is_tried_again_after_the_others() {
        let file = TopologyFile::parse(&format!(
            "{MIGRATING}[[group]]\nname = \"eu\"\njurisdiction = \"EU\"\nvoters = 2\ndistinct_sites = 1\n"
        ))
        .unwrap();
        let current = Placement::from([(group("eu"), state(&[1, 2, 3, 9, 10], &[], Some(1)))]);
        let mut health = Health::all_up();
        for node in [3, 10] {
            health.node_down(NodeId(node));
        }
        let plan = plan(&file.topology, &file.policies, &current, &health).unwrap();
        // Removing 9 first would leave 1 and 2 up of 4 voters: refused. Removing the dead 10 leaves 3 up of 4,
        // and then 9 can go, and after it the dead 3 (an inside voter stays while an outside one remains): one
        // round does it all, so the next has nothing left.
        let after = execute(&file, current, &plan);
        assert_eq!(after[&group("eu")].membership, members(&[1, 2], &[]));
        let again = super::plan(&file.topology, &file.policies, &after, &health).unwrap();
        assert_eq!(again.steps, [], "the plan left nothing to do");
    }

    #[test]
    fn new_groups_are_created_and_leaders_spread_over_preferred_voters() {
        let text = format!(
            "{}{}",
            crate::fixtures::TOPOLOGY,
            "
[[group]]
name = \"eu-2\"
jurisdiction = \"EU\"
voters = 3
leader_preference = [\"IE\"]

[[group]]
name = \"eu-3\"
jurisdiction = \"EU\"
voters = 3
leader_preference = [\"IE\"]
"
        );
        let file = TopologyFile::parse(&text).unwrap();
        let plan = plan(
            &file.topology,
            &file.policies,
            &Placement::new(),
            &Health::all_up(),
        )
        .unwrap();
        assert!(plan.is_feasible());
        let after = execute(&file, Placement::new(), &plan);
        let leaders: Vec<NodeId> = ["eu-2", "eu-3"]
            .iter()
            .map(|name| after[&group(name)].leader.unwrap())
            .collect();
        for leader in &leaders {
            assert_eq!(file.topology.country_of(*leader).unwrap().as_str(), "IE");
        }
        assert_ne!(
            leaders[0], leaders[1],
            "equally preferred leaders are spread across nodes"
        );
        assert_eq!(
            plan,
            super::plan(
                &file.topology,
                &file.policies,
                &Placement::new(),
                &Health::all_up()
            )
            .unwrap()
        );
    }

    #[test]
    fn inconsistent_current_placements_are_errors() {
        let file = file();
        let bad = Placement::from([(group("nope"), state(&[1], &[], None))]);
        assert_eq!(
            plan(&file.topology, &file.policies, &bad, &Health::all_up()),
            Err(PlanError::UnknownGroup(group("nope")))
        );
        let bad = Placement::from([(group("eu"), state(&[1, 99], &[], None))]);
        assert!(matches!(
            plan(&file.topology, &file.policies, &bad, &Health::all_up()),
            Err(PlanError::UnknownNode { .. })
        ));
        let bad = Placement::from([(group("eu"), state(&[1, 3], &[], Some(7)))]);
        assert!(matches!(
            plan(&file.topology, &file.policies, &bad, &Health::all_up()),
            Err(PlanError::LeaderNotVoter { .. })
        ));
    }
}
