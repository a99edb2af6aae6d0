//! Purging a removed replica: the planner's `PurgeReplica` step, run by the node that holds the replica.
//!
//! Deleting a copy of a group's data is safe only once a committed membership leaves this node out: then a
//! quorum of the remaining members holds everything the group committed, and no leader will count on this
//! copy again. A removed node often can't tell by itself — it was down, or cut off, when the removal
//! committed, and its own view still lists it — so it asks. The group's leader answers with the membership
//! it has committed, after confirming with a quorum that it still leads ([`RequestKind::CommittedMembership`]);
//! the transport authenticated that leader, and only a proof that leaves this node out is acted on. Then
//! the replica is closed, its log retired durably (the point of no return: a restart finds it retired and
//! does not bootstrap or reopen it) and its state machine removed. The proof is in the node's audit trail,
//! on disk, before that point; without a trail that can record it, nothing is deleted.
//!
//! [`purge_removed_replicas`] is the background side (TiKV's stale-peer check, in effect): a replica
//! whose own view leaves it out, that knows no leader, or that has not heard from one for a while, asks.
//! A live member gets [`HostError::StillMember`] and keeps its data; with no leader reachable the replica
//! is kept and the question asked again later — availability of the decision is never bought with a
//! guess.

use std::collections::BTreeMap;
use std::time::Duration;

use placement::{GroupId, Membership, NodeId};
use serde::{Deserialize, Serialize};
use storage::codec;

use crate::audit::{Event, Members, PurgeProof};
use crate::config::GroupConfig;
use crate::host::{GroupStatus, Host, HostError};
use crate::routing::group_number;
use crate::stores::Stores;
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport};

/// A leader's answer: the membership `group` has committed, as of `term`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedMembership {
    pub group: u64,
    pub leader: u64,
    pub term: u64,
    /// The index of the membership's log entry.
    pub log_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl CommittedMembership {
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node.0) || self.learners.contains(&node.0)
    }

    fn membership(&self) -> Membership {
        Membership::new(
            self.voters.iter().copied().map(NodeId),
            self.learners.iter().copied().map(NodeId).collect::<Vec<_>>(),
        )
    }
}

/// What purging one replica did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purged {
    /// Deleted, on the word of `leader`, whose committed membership (`membership`, its entry at `log_index`,
    /// answered in `term`) leaves this node out: the proof an operator's purge attestation shows.
    Deleted {
        leader: NodeId,
        term: u64,
        log_index: u64,
        membership: Membership,
    },
    /// Nothing left to delete: purged before.
    AlreadyPurged,
}

/// Whether this node's replica leads the group, with nothing to ask: a leader leads a membership it
/// belongs to. A leader that removed itself does not, though it still names itself leader: once its removal
/// commits, openraft hands leadership to a remaining voter and makes it a learner, but keeps its vote, which
/// names it — and nothing will correct that, as the group sends a replica outside its membership nothing
/// more. Taken for a leader, that replica was never asked about, and so never purged (an evacuation whose
/// leaving node was handed leadership back before its removal kept its data for ever). It asks like any
/// removed replica; only another node's committed membership is proof.
fn leads_its_membership(status: &GroupStatus, me: NodeId) -> bool {
    status.leader == Some(me) && status.membership.contains(me)
}

/// Deletes this node's replica of `group` if, and only if, the group's leader shows a committed membership
/// without this node. Asks the members this replica knows, then every other node inside the group's
/// jurisdiction (the whole membership may have been replaced while this node was away), in id order.
pub async fn purge_replica<C: GroupConfig, T: Transport, S: Stores<C>>(
    host: &Host<C, T, S>,
    group: &GroupId,
) -> Result<Purged, HostError> {
    let me = host.identity().node;
    let status = match host.status(group) {
        Ok(status) => status,
        Err(HostError::UnknownGroup(_)) if host.is_retired(group) => return Ok(Purged::AlreadyPurged),
        Err(error) => return Err(error),
    };
    if leads_its_membership(&status, me) {
        return Err(HostError::StillMember {
            group: group.clone(),
            node: me,
            leader: me,
            membership: status.membership,
        });
    }
    let jurisdiction = &host.fence(group)?.policy.jurisdiction;
    let mut peers: Vec<NodeId> = status.membership.members().filter(|&node| node != me).collect();
    let topology = host.topology();
    let inside = topology
        .nodes()
        .filter(|&node| node != me && topology.is_inside(node, jurisdiction));
    for node in inside {
        if !peers.contains(&node) {
            peers.push(node);
        }
    }

    let number = group_number(group);
    let mut reasons = Vec::new();
    for peer in peers {
        let request = PeerRequest {
            group: number,
            kind: RequestKind::CommittedMembership,
            carries_data: false,
            body: Vec::new(),
        };
        let proof = match host.ask_peer(peer, request).await {
            Ok(PeerResponse::Ok(bytes)) => match codec::decode::<CommittedMembership>(&bytes) {
                Ok(proof) => proof,
                Err(error) => {
                    reasons.push(format!("{peer}: undecodable answer: {error}"));
                    continue;
                }
            },
            Ok(PeerResponse::Refused { reason, .. } | PeerResponse::Failed { reason, .. }) => {
                reasons.push(format!("{peer}: {reason}"));
                continue;
            }
            Err(error) => {
                reasons.push(error.to_string());
                continue;
            }
        };
        // The transport authenticated `peer`; a proof is its own word, about this group, or nothing.
        if proof.leader != peer.0 || proof.group != number {
            reasons.push(format!(
                "{peer}: answered for leader {} of group {}",
                proof.leader, proof.group
            ));
            continue;
        }
        if proof.contains(me) {
            return Err(HostError::StillMember {
                group: group.clone(),
                node: me,
                leader: peer,
                membership: proof.membership(),
            });
        }
        // The proof goes into the audit trail, on disk, before the point of no return.
        host.record(Event::Purge(PurgeProof {
            group: group.0.clone(),
            leader: proof.leader,
            term: proof.term,
            log_index: proof.log_index,
            members: Members {
                voters: proof.voters.clone(),
                learners: proof.learners.clone(),
            },
        }));
        host.audit_durable().await?;
        if let Err(error) = host.retire(group, &proof).await {
            host.record(Event::PurgeFailed {
                group: group.0.clone(),
                reason: error.to_string(),
            });
            let _ = host.audit_durable().await;
            return Err(error);
        }
        tracing::info!(
            %group, node = %me, leader = %peer, term = proof.term, membership_index = proof.log_index,
            voters = ?proof.voters, learners = ?proof.learners,
            "purged this node's replica: the group committed a membership without it"
        );
        return Ok(Purged::Deleted {
            leader: peer,
            term: proof.term,
            log_index: proof.log_index,
            membership: proof.membership(),
        });
    }
    Err(HostError::NoRemovalProof {
        group: group.clone(),
        node: me,
        reason: if reasons.is_empty() {
            "no other node to ask".into()
        } else {
            reasons.join("; ")
        },
    })
}

/// One background round: every replica here that may have been removed — its own view leaves this node
/// out, it knows no leader, or no leader has reached it for `silence` — asks and is purged if so. Replicas
/// this node leads, and members a leader keeps reaching, are not asked about. Outcomes by group.
pub async fn purge_removed_replicas<C: GroupConfig, T: Transport, S: Stores<C>>(
    host: &Host<C, T, S>,
    silence: Duration,
) -> BTreeMap<GroupId, Result<Purged, HostError>> {
    let me = host.identity().node;
    let mut outcomes = BTreeMap::new();
    for group in host.hosted_groups() {
        let (Ok(status), Ok(quiet)) = (host.status(&group), host.leader_silence(&group)) else {
            continue;
        };
        let suspect = !status.membership.contains(me) || status.leader.is_none() || quiet >= silence;
        if leads_its_membership(&status, me) || !suspect {
            continue;
        }
        let outcome = purge_replica(host, &group).await;
        outcomes.insert(group, outcome);
    }
    outcomes
}
