//! The residency fence: the one gate every membership, leadership and replication decision passes.
//!
//! Rules, for a group fenced to jurisdiction J:
//!
//! 1. No member — voter or learner — is ever added at a site outside J.
//! 2. A leader is a voter inside J. Leadership never moves to a node outside J.
//! 3. A group that still holds *legacy* members outside J (placed before it was fenced) is migrating. It may
//!    keep them only until they are removed, and every change must move it towards J: it may add inside
//!    members and remove outside ones, never the reverse. Concretely an outside learner may not be promoted,
//!    an inside voter may not be removed or demoted while outside voters remain (that would shift quorum
//!    weight outside), and an outside voter may be removed only when the inside voters that were already
//!    voters before the change form a quorum of the new configuration on their own: data is never left to
//!    depend on members that have not caught up.
//! 4. Data (log entries, snapshot chunks, records) is only sent to inside nodes or legacy members.
//!
//! [`FencedMembership`] and [`FencedLeader`] can only be built here, so code that holds one has passed the
//! fence; the Raft layer accepts nothing else. A refusal is a [`Refusal`] naming the group, the node, its
//! site, the site's country and the jurisdiction. This module is pure: counting and logging incidents is the
//! caller's job, which is why a refusal carries everything a log line needs.

use std::fmt;

use serde::Serialize;

use crate::country::Country;
use crate::membership::Membership;
use crate::policy::{GroupId, GroupPolicy};
use crate::site::{NodeId, SiteName};
use crate::topology::Topology;

/// A membership the fence admitted for a group. Only [`Fence::admit`] makes one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FencedMembership {
    group: GroupId,
    membership: Membership,
}

impl FencedMembership {
    pub fn group(&self) -> &GroupId {
        &self.group
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn into_membership(self) -> Membership {
        self.membership
    }
}

/// A leader the fence admitted for a fenced membership. Only [`Fence::admit_leader`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FencedLeader {
    node: NodeId,
}

impl FencedLeader {
    pub fn node(&self) -> NodeId {
        self.node
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The node is not in the topology: where it stands is unknown, so it is treated as outside.
    UnknownNode,
    /// A member would be added at a site outside the jurisdiction.
    OutsideJurisdiction,
    /// A legacy learner outside the jurisdiction would become a voter.
    LegacyPromotion,
    /// An inside voter would be removed or demoted while voters outside the jurisdiction remain.
    InsideVoterRemovedWhileMigrating,
    /// An outside voter would be removed before existing inside voters form a quorum on their own.
    LegacyRemovalBeforeInsideQuorum,
    /// A leader (or leadership transfer target) outside the jurisdiction.
    LeaderOutsideJurisdiction,
    /// A leader that is not a voter of the membership.
    LeaderNotVoter,
    /// Data would be sent to a node that is neither inside the jurisdiction nor a legacy member.
    EgressOutsideJurisdiction,
    /// A node outside the jurisdiction (and not a legacy member) was asked to store the group's data.
    IngressOutsideJurisdiction,
    /// A vote was requested by, or entries were sent from, a would-be leader outside the jurisdiction.
    CandidateOutsideJurisdiction,
    /// The proposed membership has no voter.
    NoVoters,
    /// A node is proposed as both voter and learner.
    VoterAndLearner,
}

impl RefusalReason {
    fn describe(self) -> &'static str {
        match self {
            RefusalReason::UnknownNode => "the node is not in the topology, so its site can't be vouched for",
            RefusalReason::OutsideJurisdiction => "no member may be added at a site outside the jurisdiction",
            RefusalReason::LegacyPromotion => {
                "a legacy member outside the jurisdiction may not become a voter"
            }
            RefusalReason::InsideVoterRemovedWhileMigrating => {
                "an inside voter may not be removed or demoted while voters outside the jurisdiction remain"
            }
            RefusalReason::LegacyRemovalBeforeInsideQuorum => {
                "an outside voter may be removed only once existing inside voters form a quorum on their own"
            }
            RefusalReason::LeaderOutsideJurisdiction => "leadership may not move outside the jurisdiction",
            RefusalReason::LeaderNotVoter => "a leader must be a voter of the group",
            RefusalReason::EgressOutsideJurisdiction => {
                "the group's data may not be sent to a node outside the jurisdiction"
            }
            RefusalReason::IngressOutsideJurisdiction => {
                "this node is outside the jurisdiction and may not store the group's data"
            }
            RefusalReason::CandidateOutsideJurisdiction => {
                "a node outside the jurisdiction may not lead the group, so its votes and entries are refused"
            }
            RefusalReason::NoVoters => "a membership needs at least one voter",
            RefusalReason::VoterAndLearner => "a node can't be both voter and learner",
        }
    }
}

/// Why the fence refused. `site` and `country` are absent only for [`RefusalReason::UnknownNode`] and
/// [`RefusalReason::NoVoters`] (no node to name: `node` is then `None` too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Refusal {
    pub group: GroupId,
    pub node: Option<NodeId>,
    pub site: Option<SiteName>,
    pub country: Option<Country>,
    pub jurisdiction: String,
    pub reason: RefusalReason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "residency fence refused group `{}`", self.group)?;
        if let Some(node) = self.node {
            write!(f, ", node {node}")?;
        }
        if let (Some(site), Some(country)) = (&self.site, &self.country) {
            write!(f, " at site `{site}` ({country})")?;
        }
        write!(
            f,
            ", jurisdiction `{}`: {}",
            self.jurisdiction,
            self.reason.describe()
        )
    }
}

/// Stateless: the fence's whole input is in its arguments, so the same question always gets the same answer
/// on every node, in the planner and in the simulator.
pub struct Fence;

impl Fence {
    /// Admits `proposed` as the next membership of `policy.group`, whose current membership is `current`.
    /// Use `current == proposed` to re-check an existing membership (it admits legacy members in place).
    pub fn admit(
        topology: &Topology,
        policy: &GroupPolicy,
        current: &Membership,
        proposed: &Membership,
    ) -> Result<FencedMembership, Refusal> {
        let refuse = |node: Option<NodeId>, reason| refusal(topology, policy, node, reason);
        if proposed.voters.is_empty() {
            return Err(refuse(None, RefusalReason::NoVoters));
        }
        if let Some(&both) = proposed.voters.intersection(&proposed.learners).next() {
            return Err(refuse(Some(both), RefusalReason::VoterAndLearner));
        }
        let inside = |node: NodeId| topology.is_inside(node, &policy.jurisdiction);

        // Rules 1 and 3: outside members only survive from `current`, and never gain a vote.
        for node in proposed.members() {
            if topology.site_of(node).is_none() {
                return Err(refuse(Some(node), RefusalReason::UnknownNode));
            }
            if inside(node) {
                continue;
            }
            if !current.contains(node) {
                return Err(refuse(Some(node), RefusalReason::OutsideJurisdiction));
            }
            if proposed.voters.contains(&node) && !current.voters.contains(&node) {
                return Err(refuse(Some(node), RefusalReason::LegacyPromotion));
            }
        }

        // Rule 3: voters that lose their vote (removed, or demoted to learner).
        let outside_voters_remain = proposed.voters.iter().any(|&node| !inside(node));
        let seasoned_inside_voters = proposed
            .voters
            .iter()
            .filter(|&&node| inside(node) && current.voters.contains(&node))
            .count();
        for &node in current.voters.difference(&proposed.voters) {
            if inside(node) {
                if outside_voters_remain {
                    return Err(refuse(
                        Some(node),
                        RefusalReason::InsideVoterRemovedWhileMigrating,
                    ));
                }
            } else if seasoned_inside_voters < GroupPolicy::quorum(proposed.voters.len()) {
                return Err(refuse(Some(node), RefusalReason::LegacyRemovalBeforeInsideQuorum));
            }
        }

        Ok(FencedMembership {
            group: policy.group.clone(),
            membership: proposed.clone(),
        })
    }

    /// Admits `node` as the leader of a fenced membership (an election result or a transfer target).
    pub fn admit_leader(
        topology: &Topology,
        policy: &GroupPolicy,
        membership: &FencedMembership,
        node: NodeId,
    ) -> Result<FencedLeader, Refusal> {
        assert_eq!(
            membership.group, policy.group,
            "a membership is fenced for one group only"
        );
        if topology.site_of(node).is_none() {
            return Err(refusal(topology, policy, Some(node), RefusalReason::UnknownNode));
        }
        if !topology.is_inside(node, &policy.jurisdiction) {
            return Err(refusal(
                topology,
                policy,
                Some(node),
                RefusalReason::LeaderOutsideJurisdiction,
            ));
        }
        if !membership.membership.voters.contains(&node) {
            return Err(refusal(
                topology,
                policy,
                Some(node),
                RefusalReason::LeaderNotVoter,
            ));
        }
        Ok(FencedLeader { node })
    }

    /// May the group's data be sent to `target`? Yes for inside nodes, and for legacy members of the current
    /// membership (a migrating group must keep replicating to them until they are removed).
    pub fn admit_egress(
        topology: &Topology,
        policy: &GroupPolicy,
        membership: &FencedMembership,
        target: NodeId,
    ) -> Result<(), Refusal> {
        assert_eq!(
            membership.group, policy.group,
            "a membership is fenced for one group only"
        );
        if topology.site_of(target).is_none() {
            return Err(refusal(
                topology,
                policy,
                Some(target),
                RefusalReason::UnknownNode,
            ));
        }
        if topology.is_inside(target, &policy.jurisdiction) || membership.membership.contains(target) {
            return Ok(());
        }
        Err(refusal(
            topology,
            policy,
            Some(target),
            RefusalReason::EgressOutsideJurisdiction,
        ))
    }
}

impl Refusal {
    /// A refusal about `node` for the group of `policy`, naming the node's site and country from the
    /// topology. For runtime enforcement points (egress, ingress) that apply the fence's rules to messages.
    pub fn new(topology: &Topology, policy: &GroupPolicy, node: NodeId, reason: RefusalReason) -> Refusal {
        refusal(topology, policy, Some(node), reason)
    }
}

fn refusal(
    topology: &Topology,
    policy: &GroupPolicy,
    node: Option<NodeId>,
    reason: RefusalReason,
) -> Refusal {
    let site = node.and_then(|node| topology.site_of(node));
    Refusal {
        group: policy.group.clone(),
        node,
        site: site.map(|site| site.name.clone()),
        country: site.map(|site| site.country),
        jurisdiction: policy.jurisdiction.name().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{file, members, policy};

    fn reason(result: Result<FencedMembership, Refusal>) -> RefusalReason {
        result.expect_err("the fence should have refused").reason
    }

    #[test]
    fn a_member_outside_the_jurisdiction_is_never_added_and_the_refusal_names_everything() {
        let file = file();
        let eea = policy(&file, "eea");
        let current = members(&[1, 3, 5], &[]);
        let refusal = Fence::admit(&file.topology, &eea, &current, &members(&[1, 3, 5], &[9])).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OutsideJurisdiction);
        assert_eq!(refusal.group, GroupId("eea".into()));
        assert_eq!(refusal.node, Some(NodeId(9)));
        assert_eq!(refusal.site, Some(SiteName("ashburn".into())));
        assert_eq!(
            refusal.country.map(|country| country.to_string()),
            Some("US".into())
        );
        assert_eq!(refusal.jurisdiction, "EEA");
        let text = refusal.to_string();
        for part in ["eea", "n9", "ashburn", "US", "EEA"] {
            assert!(text.contains(part), "refusal message `{text}` should name {part}");
        }
        // As a voter too, and into an empty group.
        assert_eq!(
            reason(Fence::admit(
                &file.topology,
                &eea,
                &current,
                &members(&[1, 3, 9], &[])
            )),
            RefusalReason::OutsideJurisdiction
        );
        assert_eq!(
            reason(Fence::admit(
                &file.topology,
                &eea,
                &Membership::default(),
                &members(&[9], &[])
            )),
            RefusalReason::OutsideJurisdiction
        );
    }

    #[test]
    fn hamar_may_hold_eea_data_but_not_eu_data() {
        let file = file();
        let current = members(&[1, 3, 7], &[]);
        let with_hamar = members(&[1, 3, 7], &[5]);
        assert!(Fence::admit(&file.topology, &policy(&file, "eea"), &current, &with_hamar).is_ok());
        let refusal = Fence::admit(&file.topology, &policy(&file, "eu"), &current, &with_hamar).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OutsideJurisdiction);
        assert_eq!(refusal.site, Some(SiteName("hamar".into())));
        assert_eq!(refusal.jurisdiction, "EU");
    }

    #[test]
    fn a_leader_is_an_inside_voter() {
        let file = file();
        let eea = policy(&file, "eea");
        let legacy = members(&[9, 10, 11, 1, 3], &[5]);
        let fenced =
            Fence::admit(&file.topology, &eea, &legacy, &legacy).expect("legacy members may stay in place");
        assert_eq!(
            Fence::admit_leader(&file.topology, &eea, &fenced, NodeId(1))
                .unwrap()
                .node(),
            NodeId(1)
        );
        let outside = Fence::admit_leader(&file.topology, &eea, &fenced, NodeId(9)).unwrap_err();
        assert_eq!(outside.reason, RefusalReason::LeaderOutsideJurisdiction);
        assert_eq!(outside.site, Some(SiteName("ashburn".into())));
        let learner = Fence::admit_leader(&file.topology, &eea, &fenced, NodeId(5)).unwrap_err();
        assert_eq!(learner.reason, RefusalReason::LeaderNotVoter);
        let unknown = Fence::admit_leader(&file.topology, &eea, &fenced, NodeId(99)).unwrap_err();
        assert_eq!(unknown.reason, RefusalReason::UnknownNode);
        // Norway leads an EEA group, never an EU one.
        let eu = policy(&file, "eu");
        let eu_members = Fence::admit(
            &file.topology,
            &eu,
            &members(&[1, 3, 7], &[]),
            &members(&[1, 3, 7], &[]),
        )
        .unwrap();
        assert!(Fence::admit_leader(&file.topology, &eu, &eu_members, NodeId(5)).is_err());
    }

    #[test]
    fn a_migrating_group_only_moves_towards_its_jurisdiction() {
        let file = file();
        let eea = policy(&file, "eea");
        let topology = &file.topology;
        let admit =
            |current: &[u64], current_learners: &[u64], proposed: &[u64], proposed_learners: &[u64]| {
                Fence::admit(
                    topology,
                    &eea,
                    &members(current, current_learners),
                    &members(proposed, proposed_learners),
                )
            };
        assert!(
            admit(&[9, 10, 11], &[], &[9, 10, 11], &[]).is_ok(),
            "legacy members may stay until removed"
        );

        // Adding inside learners, then promoting them, moves inwards.
        assert!(admit(&[9, 10, 11], &[], &[9, 10, 11], &[1, 3, 5]).is_ok());
        assert!(admit(&[9, 10, 11], &[1, 3, 5], &[9, 10, 11, 1, 3, 5], &[]).is_ok());

        // Never another outside member, never a vote for a legacy learner.
        assert_eq!(
            reason(admit(&[9, 10], &[], &[9, 10], &[11])),
            RefusalReason::OutsideJurisdiction
        );
        assert_eq!(
            reason(admit(&[9, 10], &[11], &[9, 10, 11], &[])),
            RefusalReason::LegacyPromotion
        );

        // An outside voter leaves (removed or demoted) only when inside voters that were already voters form
        // a quorum of the new configuration; voters promoted in the same change don't count.
        assert_eq!(
            reason(admit(&[9, 10, 11], &[], &[10, 11], &[9])),
            RefusalReason::LegacyRemovalBeforeInsideQuorum
        );
        assert_eq!(
            reason(admit(&[9, 10, 11, 1], &[3, 5], &[10, 11, 1, 3, 5], &[])),
            RefusalReason::LegacyRemovalBeforeInsideQuorum
        );
        assert!(admit(&[9, 10, 11, 1, 3, 5], &[], &[10, 11, 1, 3, 5], &[]).is_ok());
        assert!(admit(&[10, 11, 1, 3, 5], &[], &[11, 1, 3, 5], &[]).is_ok());
        assert!(admit(&[11, 1, 3, 5], &[], &[1, 3, 5], &[]).is_ok());

        // While outside voters remain, inside voters may not leave: that would hand quorum weight outside.
        assert_eq!(
            reason(admit(&[9, 10, 11, 1, 3, 5], &[], &[9, 10, 11, 1, 3], &[])),
            RefusalReason::InsideVoterRemovedWhileMigrating
        );
        assert_eq!(
            reason(admit(&[9, 1, 3, 5], &[], &[9, 1, 3], &[5])),
            RefusalReason::InsideVoterRemovedWhileMigrating
        );
        // Outside learners carry no vote: inside voters may change around them, and they may be removed.
        assert!(admit(&[1, 3, 5, 7], &[9], &[1, 3, 5], &[9]).is_ok());
        assert!(admit(&[1, 3, 5], &[9], &[1, 3, 5], &[]).is_ok());
        assert!(
            admit(&[1, 3, 5], &[], &[1, 3], &[]).is_ok(),
            "an inside voter may leave once no outside voter remains"
        );
    }

    #[test]
    fn malformed_memberships_are_refused() {
        let file = file();
        let eea = policy(&file, "eea");
        let topology = &file.topology;
        let current = members(&[1, 3, 5], &[]);
        let no_voters = Fence::admit(topology, &eea, &current, &members(&[], &[1])).unwrap_err();
        assert_eq!(
            (no_voters.reason, no_voters.node),
            (RefusalReason::NoVoters, None)
        );
        assert_eq!(
            reason(Fence::admit(topology, &eea, &current, &members(&[1, 3, 5], &[5]))),
            RefusalReason::VoterAndLearner
        );
        let unknown = Fence::admit(topology, &eea, &current, &members(&[1, 3, 5, 42], &[])).unwrap_err();
        assert_eq!(
            (unknown.reason, unknown.node, unknown.site.clone()),
            (RefusalReason::UnknownNode, Some(NodeId(42)), None)
        );
    }

    #[test]
    fn data_goes_only_to_inside_nodes_or_legacy_members() {
        let file = file();
        let eea = policy(&file, "eea");
        let topology = &file.topology;
        let migrating = Fence::admit(
            topology,
            &eea,
            &members(&[9, 1, 3], &[]),
            &members(&[9, 1, 3], &[]),
        )
        .unwrap();
        assert!(
            Fence::admit_egress(topology, &eea, &migrating, NodeId(5)).is_ok(),
            "inside, even if not a member yet"
        );
        assert!(
            Fence::admit_egress(topology, &eea, &migrating, NodeId(9)).is_ok(),
            "a legacy member until removed"
        );
        let refusal = Fence::admit_egress(topology, &eea, &migrating, NodeId(10)).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::EgressOutsideJurisdiction);
        assert_eq!(refusal.site, Some(SiteName("ashburn".into())));
        assert!(
            Fence::admit_egress(topology, &eea, &migrating, NodeId(77)).is_err(),
            "unknown nodes get nothing"
        );
    }

    #[test]
    fn a_refusal_serialises_with_the_fields_operators_grep_for() {
        let file = file();
        let refusal = Fence::admit(
            &file.topology,
            &policy(&file, "eu"),
            &members(&[1, 3, 7], &[]),
            &members(&[1, 3, 7], &[5]),
        )
        .unwrap_err();
        let json = serde_json::to_value(&refusal).unwrap();
        assert_eq!(json["group"], "eu");
        assert_eq!(json["node"], 5);
        assert_eq!(json["site"], "hamar");
        assert_eq!(json["country"], "NO");
        assert_eq!(json["jurisdiction"], "EU");
        assert_eq!(json["reason"], "outside_jurisdiction");
    }
}
