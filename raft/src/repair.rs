//! Re-replication: a group's leader replaces members that stopped answering, inside the jurisdiction.
//!
//! A round, run on each group this node leads: members whose last acknowledged heartbeat is older than
//! `down_after` are taken as down; the planner is asked for this group's steps given that health; and the
//! first membership step it proposes is executed through the fence ([`Host::execute`]), a new voter only
//! once it has caught up. One step per round, re-planned from the membership openraft then holds, so a
//! round that fails or races another change just leaves the next round to try again.
//!
//! Repair only: a round with no member down does nothing, and a group that still has legacy members (being
//! migrated) is left alone, so a migration stays the operator's decision, made with `placement plan` and
//! executed on request. What the planner can't fix — no healthy node left inside the jurisdiction, a lost
//! quorum — is reported and logged as under-replication, never worked around: the fence admits no
//! replacement outside.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::Instant as _;
use openraft::type_config::TypeConfigExt;
use openraft::vote::{RaftLeaderId, RaftVote};
use placement::{GroupId, GroupState, Health, NodeId, Problem, Step};

use crate::config::GroupConfig;
use crate::host::{Host, HostError};
use crate::network::membership_of;
use crate::stores::Stores;
use crate::transport::Transport;

/// What one round did for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// This node does not lead the group (or has led it too briefly to judge its followers).
    NotLeading,
    /// Every member answers.
    Healthy,
    /// A step was executed.
    Executed(Step),
    /// A new voter is still catching up: promoted in a later round.
    CatchingUp(NodeId),
    /// Members are down, but the group still has legacy members outside its jurisdiction: it is being
    /// migrated, and its membership changes are the operator's (the planner's next step might be a
    /// migration step, not a repair).
    Migrating { down: Vec<NodeId> },
    /// Members are down and the planner can't replace them (the problems say why).
    UnderReplicated {
        down: Vec<NodeId>,
        problems: Vec<Problem>,
    },
}

/// Repair rounds for the groups of one host. Remembers since when this node leads each group, so that
/// followers that simply have not been heard from *yet* are not taken as down; and which nodes it found
/// down, for a while: a node removed from a group is no longer heard from at all, and without that memory
/// the planner would add it straight back.
pub struct Repairer<C: GroupConfig> {
    down_after: Duration,
    led_since: Mutex<BTreeMap<GroupId, (u64, openraft::alias::InstantOf<C>)>>,
    found_down: Mutex<BTreeMap<NodeId, openraft::alias::InstantOf<C>>>,
    /// Since when each member of each group led here has been seen in its membership: a member that has
    /// acknowledged no heartbeat yet (a learner just added, still opening its replica under load) is
    /// given `down_after` from then, not taken as down at the first round.
    member_since: Mutex<BTreeMap<(GroupId, NodeId), openraft::alias::InstantOf<C>>>,
}

/// How long a node found down is not chosen as a replacement, in multiples of `down_after`. If it is
/// still down when this runs out, it is tried as a learner, found silent again and removed: churn of one
/// learner per period, never of a voter.
const QUARANTINE_FACTOR: u32 = 30;

impl<C: GroupConfig> Repairer<C> {
    pub fn new(down_after: Duration) -> Repairer<C> {
        Repairer {
            down_after,
            led_since: Mutex::default(),
            found_down: Mutex::default(),
            member_since: Mutex::default(),
        }
    }

    /// One round over every group the host runs, in name order.
    pub async fn round<T: Transport, S: Stores<C>>(&self, host: &Host<C, T, S>) -> BTreeMap<GroupId, Repair> {
        let mut outcomes = BTreeMap::new();
        for group in host.hosted_groups() {
            match self.repair(host, &group).await {
                Ok(Repair::NotLeading | Repair::Healthy) => {}
                Ok(outcome) => {
                    outcomes.insert(group, outcome);
                }
                Err(error) => tracing::warn!(%group, %error, "repair round failed; the next one retries"),
            }
        }
        outcomes
    }

    /// One round for one group.
    pub async fn repair<T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        group: &GroupId,
    ) -> Result<Repair, HostError> {
        let me = host.identity().node;
        let metrics = host.raft_metrics(group)?;
        if metrics.current_leader != Some(me.0) {
            self.led_since.lock().expect("repair lock").remove(group);
            return Ok(Repair::NotLeading);
        }
        let term = metrics.vote.leader_id().term();
        let now = C::now();
        let since = {
            let mut led_since = self.led_since.lock().expect("repair lock");
            let entry = led_since.entry(group.clone()).or_insert((term, now));
            if entry.0 != term {
                *entry = (term, now);
            }
            entry.1
        };
        if now.saturating_duration_since(since) < self.down_after {
            return Ok(Repair::NotLeading);
        }
        let membership = membership_of::<C>(&metrics);
        let acked = metrics.heartbeat.clone().unwrap_or_default();
        let mut health = Health::all_up();
        let mut down = Vec::new();
        {
            let mut found_down = self.found_down.lock().expect("repair lock");
            let mut member_since = self.member_since.lock().expect("repair lock");
            member_since.retain(|(of, node), _| of != group || membership.contains(*node));
            for node in membership.members().filter(|&node| node != me) {
                let since = *member_since.entry((group.clone(), node)).or_insert(now);
                let last = acked.get(&node.0).cloned().flatten();
                let silent = match last {
                    Some(at) => now.saturating_duration_since(*at) > self.down_after,
                    None => now.saturating_duration_since(since) > self.down_after,
                };
                if silent {
                    down.push(node);
                    found_down.insert(node, now);
                } else {
                    found_down.remove(&node);
                }
            }
            let quarantine = self.down_after * QUARANTINE_FACTOR;
            found_down.retain(|_, at| now.saturating_duration_since(*at) <= quarantine);
            for &node in found_down.keys() {
                health.node_down(node);
            }
        }
        if down.is_empty() {
            return Ok(Repair::Healthy);
        }
        let fence = host.fence(group)?;
        if membership.members().any(|node| fence.is_legacy(node)) {
            tracing::warn!(%group, ?down, "members down in a migrating group: left to the operator");
            return Ok(Repair::Migrating { down });
        }
        let policies = BTreeMap::from([(group.clone(), fence.policy.clone())]);
        let current = BTreeMap::from([(
            group.clone(),
            GroupState {
                membership: membership.clone(),
                leader: Some(me),
            },
        )]);
        let plan = placement::plan(&fence.topology, &policies, &current, &health).map_err(|error| {
            HostError::Raft {
                group: group.clone(),
                reason: error.to_string(),
            }
        })?;
        let step = plan.steps.into_iter().find(|step| {
            matches!(
                step,
                Step::AddLearner { .. }
                    | Step::PromoteVoter { .. }
                    | Step::DemoteVoter { .. }
                    | Step::RemoveMember { .. }
            )
        });
        let Some(step) = step else {
            let problems: Vec<Problem> = plan
                .groups
                .into_iter()
                .flat_map(|report| report.problems)
                .collect();
            tracing::error!(%group, ?down, ?problems, "under-replicated: no replacement inside the jurisdiction");
            return Ok(Repair::UnderReplicated { down, problems });
        };
        if let Step::PromoteVoter { node, .. } = &step
            && host.wait_caught_up(group, *node, self.down_after).await.is_err()
        {
            return Ok(Repair::CatchingUp(*node));
        }
        host.execute(&step).await?;
        tracing::info!(%group, ?down, ?step, "re-replicating");
        Ok(Repair::Executed(step))
    }
}
