//! Round trips to peers, measured at run time, against what each group's Raft timing covers.
//!
//! A group's timing is fixed when its replica opens, from the round trips the topology declares
//! (`[[round_trip]]`) or, for pairs it does not, a guess from countries (`raft::config`): the heartbeat
//! interval covers two round trips to the farthest site that may hold the group. openraft counts a
//! heartbeat's reply only if it arrives within one heartbeat interval, so a link that turns slower than
//! that leaves a leader without its lease — writes refused, and no election to fix it. The margin keeps a
//! leader through a link that turns up to twice as slow as declared; past the margin, an operator must
//! know before the lease goes.
//!
//! So the node reads the smoothed round trip of the QUIC connection its Raft traffic to each peer uses,
//! every [`WATCH_EVERY`], publishes it (`domicile_peer_round_trip_seconds`, `round_trips` in the status),
//! and for every group it hosts counts the members whose measured round trip is past what the group's
//! timing covers (`domicile_group_round_trips_uncovered`, alert `DomicileRoundTripUncovered`), with a
//! warning in the log when one appears. Re-timing a running group is not possible here: openraft takes its
//! timing once, when the Raft instance is built; the fix is to declare the measured round trip in the
//! topology and restart the nodes one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use placement::{GroupId, Membership, NodeId};
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// How often the round trips are read (they are quinn's smoothed estimates, updated by every packet).
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// A peer's measured round trip, as the status shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRoundTrip {
    pub node: u64,
    pub site: String,
    pub round_trip_ms: f64,
}

/// A member of a group this node hosts, farther away than the group's timing covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Uncovered {
    pub group: String,
    pub member: u64,
    pub measured_ms: u64,
    pub covered_ms: u64,
}

/// What the last look found.
#[derive(Default)]
pub struct RoundTrips {
    state: Mutex<(Vec<PeerRoundTrip>, Vec<Uncovered>)>,
}

impl RoundTrips {
    pub fn peers(&self) -> Vec<PeerRoundTrip> {
        self.state.lock().expect("round trips lock").0.clone()
    }

    pub fn uncovered(&self) -> Vec<Uncovered> {
        self.state.lock().expect("round trips lock").1.clone()
    }
}

/// A hosted group as the check needs it: its members and the round trip its timing covers.
pub struct Timed {
    pub group: GroupId,
    pub membership: Membership,
    pub covered_ms: u64,
}

/// The members of each group, other than `me`, whose measured round trip is longer than the group's
/// timing covers; in group, then member order. A member with no measurement yet (no connection) is not
/// judged.
pub fn uncovered(me: NodeId, measured: &BTreeMap<NodeId, Duration>, groups: &[Timed]) -> Vec<Uncovered> {
    let mut found = Vec::new();
    for timed in groups {
        for member in timed.membership.members().filter(|&member| member != me) {
            let Some(round_trip) = measured.get(&member) else {
                continue;
            };
            // Rounded up: a round trip a fraction of a millisecond past the covered one is past it.
            let measured_ms = (round_trip.as_micros() as u64).div_ceil(1000);
            if measured_ms > timed.covered_ms {
                found.push(Uncovered {
                    group: timed.group.0.clone(),
                    member: member.0,
                    measured_ms,
                    covered_ms: timed.covered_ms,
                });
            }
        }
    }
    found.sort();
    found
}

/// Reads the round trips and judges them every [`WATCH_EVERY`], for the life of the node.
pub async fn watch(node: Arc<Node>) {
    let mut reported: BTreeSet<(String, u64)> = BTreeSet::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        look(&node, &mut reported);
    }
}

fn look(node: &Node, reported: &mut BTreeSet<(String, u64)>) {
    let me = node.config.node;
    let topology = &node.file.topology;
    let mut measured = BTreeMap::new();
    let mut peers = Vec::new();
    for peer in topology.nodes().filter(|&peer| peer != me) {
        let Some(stats) = node.quic.dialer().connection_stats(peer.0) else {
            continue;
        };
        measured.insert(peer, stats.path.rtt);
        peers.push(PeerRoundTrip {
            node: peer.0,
            site: topology
                .site_of(peer)
                .map_or("?".into(), |site| site.name.0.clone()),
            round_trip_ms: stats.path.rtt.as_secs_f64() * 1000.0,
        });
    }
    let mut groups = Vec::new();
    for group in node.host.hosted_groups() {
        let (Ok(status), Ok(timing)) = (node.host.status(&group), node.host.group_timing(&group)) else {
            continue;
        };
        groups.push(Timed {
            group,
            membership: status.membership,
            covered_ms: raft::config::covered_round_trip_ms(&timing),
        });
    }
    let found = uncovered(me, &measured, &groups);
    let now: BTreeSet<(String, u64)> = found
        .iter()
        .map(|uncovered| (uncovered.group.clone(), uncovered.member))
        .collect();
    for uncovered in found
        .iter()
        .filter(|found| !reported.contains(&(found.group.clone(), found.member)))
    {
        tracing::warn!(
            group = %uncovered.group,
            member = uncovered.member,
            measured_ms = uncovered.measured_ms,
            covered_ms = uncovered.covered_ms,
            "the round trip to a member is longer than the group's Raft timing covers: a leader's lease may \
             lapse; declare it in the topology's [[round_trip]] and restart the nodes one at a time"
        );
    }
    for (group, member) in reported.difference(&now) {
        tracing::info!(%group, member, "the round trip to the member is covered again");
    }
    *reported = now;
    node.metrics
        .observe_round_trips(&peers, &groups, &found, |group| {
            node.file
                .policies
                .get(group)
                .map_or("?".into(), |policy| policy.jurisdiction.name().to_string())
        });
    *node.round_trips.state.lock().expect("round trips lock") = (peers, found);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(group: &str, voters: &[u64], covered_ms: u64) -> Timed {
        Timed {
            group: GroupId(group.into()),
            membership: Membership::new(voters.iter().copied().map(NodeId), []),
            covered_ms,
        }
    }

    #[test]
    fn only_members_past_the_covered_round_trip_are_named() {
        let measured = BTreeMap::from([
            (NodeId(2), Duration::from_millis(3)),
            (NodeId(3), Duration::from_millis(61)),
            (NodeId(4), Duration::from_millis(170)),
        ]);
        let groups = [
            timed("users-eea", &[1, 2, 3], 50),
            timed("users-legacy", &[1, 4, 5], 250),
        ];
        let found = uncovered(NodeId(1), &measured, &groups);
        assert_eq!(
            found,
            [Uncovered {
                group: "users-eea".into(),
                member: 3,
                measured_ms: 61,
                covered_ms: 50,
            }],
            "n4 is within users-legacy's 250 ms; n5 has no measurement; n1 is this node"
        );
        assert!(uncovered(NodeId(1), &BTreeMap::new(), &groups).is_empty());
    }
}
