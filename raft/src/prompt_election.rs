//! Prompt elections: a follower whose leader has fallen silent campaigns as soon as the leader's lease has
//! run out, in an order the group's voters agree on, instead of waiting a random election timeout more.
//!
//! **Why.** openraft 0.10 calls an election only once its leader's lease (`election_timeout_max` since the
//! leader last reached the follower) *and then* the follower's own random election timeout (between
//! `election_timeout_min` and `election_timeout_max`) have both passed. With 0.5–1 s, a group whose
//! leader died has no leader for 1.5–2 s before the first vote is even asked for: a client's next write
//! cannot be acknowledged within 2 × `election_timeout_max` (measured on real hosts: docs/performance.md).
//! The random wait exists so that two followers rarely campaign at once and split the vote. Here they are
//! given turns instead: the group's voters, leaving out the silent leader and any node outside the
//! jurisdiction, ordered by the group's leader preference and then by node id. The first is prompted
//! once the lease has run out (and half a heartbeat more, for the heartbeat that reached it a little
//! later than it reached us), the next two heartbeats after that, and so on. A winner's first heartbeat
//! reaches the others before their turn, which ends their silence.
//!
//! **Safety is openraft's, not ours.** A prompt is openraft's own pre-vote (`trigger().elect(true)`),
//! which a node whose leader's lease has not expired *in openraft's own accounting* does not start, which
//! each peer grants only if its own lease has expired and the candidate's log is at least as up to date,
//! and whose real vote the ingress fence refuses from outside the jurisdiction. So a prompt can make an
//! election earlier, never one that Raft (or the fence) would not allow. A node outside the group's
//! jurisdiction (a legacy replica: its election timer is off) or draining is never prompted. Each
//! silence prompts a node at most once; if that election fails, openraft's own timer goes on as before.
//!
//! Used by the node (a task every [`PROMPT_EVERY`]) and by the simulator's nodes, so it runs under every
//! fault the simulator injects.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::alias::InstantOf;
use placement::{GroupId, NodeId};

use crate::config::GroupConfig;
use crate::host::Host;
use crate::stores::Stores;
use crate::transport::Transport;

/// How often a node looks for a silent leader: small against the 100-ms heartbeat it measures silence in.
pub const PROMPT_EVERY: Duration = Duration::from_millis(20);

/// How long a follower has gone without its leader, and its place among those who may campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence<I> {
    pub leader: NodeId,
    /// When the leader's last append was taken here: openraft renewed its lease no later than this.
    pub heard: I,
    pub silent_for: Duration,
    /// The voters that may campaign, in turn: the leader and nodes outside the jurisdiction left out.
    pub turns: Vec<NodeId>,
    /// The leader's lease (openraft's is `election_timeout_max`) and the group's heartbeat interval.
    pub lease: Duration,
    pub heartbeat: Duration,
}

/// How long after its leader's last contact `me` campaigns, if it is one of `turns`: the lease, half a
/// heartbeat, and two heartbeats per node before it in turn (time for an earlier winner to be heard).
pub fn turn_after(turns: &[NodeId], me: NodeId, lease: Duration, heartbeat: Duration) -> Option<Duration> {
    let position = turns.iter().position(|&node| node == me)?;
    let position = u32::try_from(position).ok()?;
    Some(lease + heartbeat / 2 + heartbeat * 2 * position)
}

/// Which silence each group was last prompted for, so that one silence prompts once.
pub struct ElectionPrompter<C: GroupConfig> {
    prompted: Mutex<BTreeMap<GroupId, InstantOf<C>>>,
}

impl<C: GroupConfig> Default for ElectionPrompter<C> {
    fn default() -> Self {
        ElectionPrompter {
            prompted: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<C: GroupConfig> ElectionPrompter<C> {
    /// One round over the groups `host` holds: each whose leader has been silent past this node's turn
    /// is prompted to campaign. Returns the groups prompted, with the leader that fell silent.
    pub async fn round<T: Transport, S: Stores<C>>(&self, host: &Host<C, T, S>) -> Vec<(GroupId, NodeId)> {
        let me = host.identity().node;
        let held = host.hosted_groups();
        let mut prompted = Vec::new();
        for group in &held {
            let Ok(Some(silence)) = host.silence(group) else {
                continue;
            };
            let Some(turn) = turn_after(&silence.turns, me, silence.lease, silence.heartbeat) else {
                continue;
            };
            if silence.silent_for < turn {
                continue;
            }
            {
                let mut memo = self.prompted.lock().expect("prompted groups lock");
                if memo.get(group) == Some(&silence.heard) {
                    continue;
                }
                memo.insert(group.clone(), silence.heard);
            }
            match host.campaign_after_silence(group).await {
                Ok(()) => prompted.push((group.clone(), silence.leader)),
                Err(error) => tracing::debug!(%group, %error, "election prompt not delivered"),
            }
        }
        // Forget groups no longer held (purged, closed): the memo stays as small as the group table.
        self.prompted
            .lock()
            .expect("prompted groups lock")
            .retain(|group, _| held.contains(group));
        prompted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);
    const HEARTBEAT: Duration = Duration::from_millis(100);

    #[test]
    fn turns_come_a_lease_and_half_a_heartbeat_after_the_last_contact_then_two_heartbeats_apart() {
        let turns = [NodeId(2), NodeId(3), NodeId(5)];
        let after = |node| turn_after(&turns, NodeId(node), LEASE, HEARTBEAT);
        assert_eq!(after(2), Some(Duration::from_millis(1050)));
        assert_eq!(after(3), Some(Duration::from_millis(1250)));
        assert_eq!(after(5), Some(Duration::from_millis(1450)));
    }

    #[test]
    fn a_node_without_a_turn_is_never_prompted() {
        // The silent leader and nodes outside the jurisdiction are left out of the turns by the host.
        let turns = [NodeId(2), NodeId(3)];
        assert_eq!(turn_after(&turns, NodeId(1), LEASE, HEARTBEAT), None);
        assert_eq!(turn_after(&[], NodeId(2), LEASE, HEARTBEAT), None);
    }

    #[test]
    fn every_turn_starts_after_the_lease_has_run_out() {
        let turns: Vec<NodeId> = (1..=9).map(NodeId).collect();
        for &node in &turns {
            assert!(turn_after(&turns, node, LEASE, HEARTBEAT).unwrap() > LEASE);
        }
    }
}
