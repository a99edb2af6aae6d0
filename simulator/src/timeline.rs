//! The run as people read it: the faults injected, nodes going down and up, each group's leader and
//! membership, the planner's steps and the migration's copies and purges, each stamped with simulated
//! time since the world was built (the trace's clock).
//!
//! The timeline is recorded beside the trace, at the same points, and never hashed into it: the trace is
//! the determinism witness, the timeline is what the summary ([`crate::summary`]) and the HTML report
//! ([`crate::html`]) are drawn from. Recording draws no random number, takes no lock another task holds
//! across an `.await` and awaits nothing, so a run does exactly the same with or without it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::time::Duration;

use placement::{GroupId, Membership, NodeId, Step};

/// One thing that happened, `at` simulated time since the world was built.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub kind: EventKind,
}

#[derive(Clone, Debug)]
pub enum EventKind {
    /// Something the fault injector did.
    Fault(Fault),
    /// The partition in force healed.
    Healed,
    /// The fault phase ended: links heal and every node that can come back does.
    FaultsStop,
    NodeUp {
        node: NodeId,
    },
    NodeDown {
        node: NodeId,
        bytes_lost: u64,
        torn_files: u64,
    },
    /// The node stays down for good (its disk is gone, or recovery refused it).
    NodeLost {
        node: NodeId,
        reason: String,
    },
    /// The group's leader as its replicas report it (the highest term's), `None` while it has none.
    Leader {
        group: GroupId,
        leader: Leadership,
    },
    /// The group's membership as its leader holds it.
    Membership {
        group: GroupId,
        membership: Membership,
    },
    /// Every member of a group that began with members outside its jurisdiction is now inside.
    Cutover {
        group: GroupId,
    },
    /// A planner step took effect.
    Step(Step),
    /// The bulk copy of a group's ranges to a new replica.
    Copy(Copy),
}

/// The bulk copy of a group's modelled data to a new replica ([`crate::bulk`]).
#[derive(Clone, Debug)]
pub enum Copy {
    Started {
        group: GroupId,
        node: NodeId,
    },
    Range {
        group: GroupId,
        range: u64,
        from: NodeId,
        to: NodeId,
        bytes: u64,
    },
    /// Cut short (a crash at either end, or no running holder); the orchestrator starts it again.
    Interrupted {
        group: GroupId,
        node: NodeId,
        reason: String,
    },
    Complete {
        group: GroupId,
        node: NodeId,
    },
    /// A removed member's copies deleted.
    Purged {
        group: GroupId,
        node: NodeId,
    },
}

/// A fault the injector decided. Its `Display` is the line the trace has always shown for it, so the
/// trace (and its hash) is the same whether the fault is also recorded here or not.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `failover`'s crash of a group's leader.
    CrashLeader {
        node: NodeId,
        group: GroupId,
    },
    /// `chaos`'s crash of any node.
    Crash {
        node: NodeId,
    },
    Partition {
        description: String,
        millis: u64,
        blocked: BTreeSet<(NodeId, NodeId)>,
    },
    PowerLoss,
    SiteOutage {
        site: String,
        /// Listed in the trace line by `site-outage`, not by `chaos`.
        listed: Option<Vec<NodeId>>,
    },
    SiteReturns {
        site: String,
    },
    /// The node's next fdatasync fails; the process exits once it meets the error.
    SyncFails {
        node: NodeId,
        kind: io::ErrorKind,
    },
    ExitAfterFailedSync {
        node: NodeId,
    },
    BitFlip {
        node: NodeId,
        at: Option<(String, u64)>,
    },
    DiskLost {
        node: NodeId,
    },
    Links {
        loss_ppm: u64,
        duplicate_ppm: u64,
    },
    StaleRoute {
        leader: NodeId,
        group: GroupId,
        target: NodeId,
        outcome: String,
    },
    ClockLeap {
        node: NodeId,
        millis: u64,
    },
    ClockDrift {
        node: NodeId,
        ppm: i64,
    },
}

impl Fault {
    /// A short name for counting and for the report's classes.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::CrashLeader { .. } | Fault::Crash { .. } => "crash",
            Fault::Partition { .. } => "partition",
            Fault::PowerLoss => "power-loss",
            Fault::SiteOutage { .. } => "site-outage",
            Fault::SiteReturns { .. } => "site-returns",
            Fault::SyncFails { .. } => "sync-failure",
            Fault::ExitAfterFailedSync { .. } => "exit",
            Fault::BitFlip { .. } => "bit-flip",
            Fault::DiskLost { .. } => "disk-lost",
            Fault::Links { .. } => "lossy-links",
            Fault::StaleRoute { .. } => "stale-route",
            Fault::ClockLeap { .. } => "clock-leap",
            Fault::ClockDrift { .. } => "clock-drift",
        }
    }

    /// The node the fault hit, if it hit one.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Fault::CrashLeader { node, .. }
            | Fault::Crash { node }
            | Fault::SyncFails { node, .. }
            | Fault::ExitAfterFailedSync { node }
            | Fault::BitFlip { node, .. }
            | Fault::DiskLost { node }
            | Fault::ClockLeap { node, .. }
            | Fault::ClockDrift { node, .. } => Some(*node),
            Fault::StaleRoute { leader, .. } => Some(*leader),
            Fault::Partition { .. }
            | Fault::PowerLoss
            | Fault::SiteOutage { .. }
            | Fault::SiteReturns { .. }
            | Fault::Links { .. } => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CrashLeader { node, group } => write!(f, "crash {node}, leader of {group}"),
            Fault::Crash { node } => write!(f, "crash {node}"),
            Fault::Partition {
                description, millis, ..
            } => write!(f, "partition: {description} for {millis} ms"),
            Fault::PowerLoss => write!(f, "power loss: every node at once"),
            Fault::SiteOutage { site, listed: None } => write!(f, "site outage: {site}"),
            Fault::SiteOutage {
                site,
                listed: Some(nodes),
            } => write!(f, "site outage: {site} {nodes:?}"),
            Fault::SiteReturns { site } => write!(f, "site {site} returns"),
            Fault::SyncFails { node, kind } => {
                write!(
                    f,
                    "{node}: next fdatasync fails ({kind:?}); the process will crash"
                )
            }
            Fault::ExitAfterFailedSync { node } => write!(f, "{node} exits after its failed fdatasync"),
            Fault::BitFlip { node, at } => write!(f, "{node}: bit flipped at {at:?} while down"),
            Fault::DiskLost { node } => write!(f, "{node} lost its disk; it stays down"),
            Fault::Links {
                loss_ppm,
                duplicate_ppm,
            } => write!(f, "links: loss {loss_ppm} ppm, duplication {duplicate_ppm} ppm"),
            Fault::StaleRoute {
                leader,
                group,
                target,
                outcome,
            } => write!(
                f,
                "stale route: {leader} replicates {group} to {target}: {outcome}"
            ),
            Fault::ClockLeap { node, millis } => write!(f, "{node}: clock leaps {millis} ms forward"),
            Fault::ClockDrift { node, ppm } => write!(f, "{node}: clock drifts {ppm} ppm"),
        }
    }
}

/// The events of one run, in the order they happened.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    events: Vec<Event>,
    /// What the last `Leader` and `Membership` events of each group said: only changes are recorded.
    leaders: BTreeMap<GroupId, Leadership>,
    memberships: BTreeMap<GroupId, Membership>,
    cut_over: BTreeSet<GroupId>,
}

impl Timeline {
    pub fn record(&mut self, at: Duration, kind: EventKind) {
        debug_assert!(
            self.events.last().is_none_or(|last| last.at <= at),
            "events are recorded in time order"
        );
        self.events.push(Event { at, kind });
    }

    /// The group's leader now: recorded if it changed.
    pub fn leader(&mut self, at: Duration, group: &GroupId, leader: Leadership) {
        if self.leaders.get(group) == Some(&leader) {
            return;
        }
        self.leaders.insert(group.clone(), leader);
        let group = group.clone();
        self.record(at, EventKind::Leader { group, leader });
    }

    /// The group's membership now (as its leader holds it): recorded if it changed.
    pub fn membership(&mut self, at: Duration, group: &GroupId, membership: &Membership) {
        if self.memberships.get(group) == Some(membership) {
            return;
        }
        self.memberships.insert(group.clone(), membership.clone());
        let (group, membership) = (group.clone(), membership.clone());
        self.record(at, EventKind::Membership { group, membership });
    }

    /// The group's members are all inside its jurisdiction: recorded the first time.
    pub fn cutover(&mut self, at: Duration, group: &GroupId) {
        if self.cut_over.insert(group.clone()) {
            let group = group.clone();
            self.record(at, EventKind::Cutover { group });
        }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// When the last event happened (the run's length, once the run has ended).
    pub fn end(&self) -> Duration {
        self.events.last().map_or(Duration::ZERO, |event| event.at)
    }

    pub fn faults(&self) -> impl Iterator<Item = (Duration, &Fault)> {
        self.events.iter().filter_map(|event| match &event.kind {
            EventKind::Fault(fault) => Some((event.at, fault)),
            _ => None,
        })
    }

    /// How many faults of each kind.
    pub fn fault_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut counts = BTreeMap::new();
        for (_, fault) in self.faults() {
            *counts.entry(fault.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// When the fault phase ended, if it did.
    pub fn faults_stopped(&self) -> Option<Duration> {
        self.events
            .iter()
            .find(|event| matches!(event.kind, EventKind::FaultsStop))
            .map(|event| event.at)
    }

    /// Each group's leaders in turn: (from, leader, term); a leaderless stretch is left out, and a leader
    /// unseen for a moment and back in the same term counted once.
    pub fn leaders(&self) -> BTreeMap<GroupId, Vec<(Duration, NodeId, u64)>> {
        let mut leaders: BTreeMap<GroupId, Vec<(Duration, NodeId, u64)>> = BTreeMap::new();
        for event in &self.events {
            if let EventKind::Leader {
                group,
                leader: Some((node, term)),
            } = &event.kind
            {
                let list = leaders.entry(group.clone()).or_default();
                // Unseen for a moment and back in the same term is the same leadership.
                if list
                    .last()
                    .is_none_or(|&(_, last, last_term)| (last, last_term) != (*node, *term))
                {
                    list.push((event.at, *node, *term));
                }
            }
        }
        leaders
    }

    /// The node that led `group` at `at`, if one did.
    pub fn leader_at(&self, group: &GroupId, at: Duration) -> Option<NodeId> {
        let mut leader = None;
        for event in self.events.iter().take_while(|event| event.at <= at) {
            if let EventKind::Leader {
                group: changed,
                leader: now,
            } = &event.kind
                && changed == group
            {
                leader = now.map(|(node, _)| node);
            }
        }
        leader
    }

    /// Each group's leadership as intervals [from, to) with the leader, or `None` while it had none.
    pub fn leader_spans(&self) -> BTreeMap<GroupId, Vec<Span<Leadership>>> {
        let changes = self.events.iter().filter_map(|event| match &event.kind {
            EventKind::Leader { group, leader } => Some((event.at, group.clone(), *leader)),
            _ => None,
        });
        spans(changes, self.end())
    }

    /// Each group's membership as intervals.
    pub fn membership_spans(&self) -> BTreeMap<GroupId, Vec<Span<Membership>>> {
        let changes = self.events.iter().filter_map(|event| match &event.kind {
            EventKind::Membership { group, membership } => {
                Some((event.at, group.clone(), membership.clone()))
            }
            _ => None,
        });
        spans(changes, self.end())
    }

    /// Each node's stretches of time down.
    pub fn downtime(&self) -> BTreeMap<NodeId, Vec<Downtime>> {
        let mut down: BTreeMap<NodeId, Vec<Downtime>> = BTreeMap::new();
        let mut since: BTreeMap<NodeId, Duration> = BTreeMap::new();
        for event in &self.events {
            match &event.kind {
                EventKind::NodeDown { node, .. } => {
                    since.entry(*node).or_insert(event.at);
                }
                EventKind::NodeUp { node } => {
                    if let Some(from) = since.remove(node) {
                        down.entry(*node).or_default().push(Downtime {
                            from,
                            to: event.at,
                            lost: false,
                        });
                    }
                }
                EventKind::NodeLost { node, .. } => {
                    let from = since.remove(node).unwrap_or(event.at);
                    down.entry(*node).or_default().push(Downtime {
                        from,
                        to: self.end(),
                        lost: true,
                    });
                }
                _ => {}
            }
        }
        for (node, from) in since {
            down.entry(node).or_default().push(Downtime {
                from,
                to: self.end(),
                lost: false,
            });
        }
        down
    }

    /// The partitions, each until it healed.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut partitions = Vec::new();
        let mut open: Option<Partition> = None;
        for event in &self.events {
            match &event.kind {
                EventKind::Fault(Fault::Partition {
                    description, blocked, ..
                }) => {
                    if let Some(partition) = open.take() {
                        partitions.push(Partition {
                            to: event.at,
                            ..partition
                        });
                    }
                    open = Some(Partition {
                        from: event.at,
                        to: event.at,
                        description: description.clone(),
                        blocked: blocked.clone(),
                    });
                }
                EventKind::Healed | EventKind::FaultsStop => {
                    if let Some(partition) = open.take() {
                        partitions.push(Partition {
                            to: event.at,
                            ..partition
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(partition) = open {
            partitions.push(Partition {
                to: self.end(),
                ..partition
            });
        }
        partitions
    }
}

/// A group's leader and its term, or `None` while it has none.
pub type Leadership = Option<(NodeId, u64)>;

/// A stretch of time a node was down; `lost`: for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downtime {
    pub from: Duration,
    pub to: Duration,
    pub lost: bool,
}

/// A partition, from when it was cut until it healed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub from: Duration,
    pub to: Duration,
    pub description: String,
    /// The directed pairs that could not talk.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
}

/// A stretch of time in which something held a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span<T> {
    pub from: Duration,
    pub to: Duration,
    pub value: T,
}

fn spans<T>(
    changes: impl Iterator<Item = (Duration, GroupId, T)>,
    end: Duration,
) -> BTreeMap<GroupId, Vec<Span<T>>> {
    let mut spans: BTreeMap<GroupId, Vec<Span<T>>> = BTreeMap::new();
    for (at, group, value) in changes {
        let list = spans.entry(group).or_default();
        if let Some(last) = list.last_mut() {
            last.to = at;
        }
        list.push(Span {
            from: at,
            to: end,
            value,
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn a_fault_is_shown_in_the_trace_as_it_always_was() {
        let fault = Fault::CrashLeader {
            node: NodeId(1),
            group: GroupId("users-eea".into()),
        };
        assert_eq!(fault.to_string(), "crash n1, leader of users-eea");
        let outage = Fault::SiteOutage {
            site: "dublin-a".into(),
            listed: Some(vec![NodeId(1), NodeId(2)]),
        };
        assert_eq!(outage.to_string(), "site outage: dublin-a [n1, n2]");
        let flip = Fault::BitFlip {
            node: NodeId(3),
            at: Some(("log-0".into(), 17)),
        };
        assert_eq!(
            flip.to_string(),
            "n3: bit flipped at Some((\"log-0\", 17)) while down"
        );
    }

    #[test]
    fn only_changes_of_leader_and_membership_are_recorded() {
        let mut timeline = Timeline::default();
        let group = GroupId("g".into());
        let members = Membership::new([NodeId(1), NodeId(2)], []);
        timeline.leader(at(10), &group, Some((NodeId(1), 1)));
        timeline.membership(at(10), &group, &members);
        timeline.leader(at(30), &group, Some((NodeId(1), 1)));
        timeline.leader(at(50), &group, None);
        timeline.leader(at(70), &group, Some((NodeId(2), 2)));
        timeline.membership(at(90), &group, &members);
        timeline.cutover(at(90), &group);
        timeline.cutover(at(95), &group);
        assert_eq!(
            timeline.events().len(),
            5,
            "three leaders (one a gap), one membership, one cutover"
        );
        let spans = &timeline.leader_spans()[&group];
        let shown: Vec<(u128, u128, Leadership)> = spans
            .iter()
            .map(|span| (span.from.as_millis(), span.to.as_millis(), span.value))
            .collect();
        assert_eq!(
            shown,
            [
                (10, 50, Some((NodeId(1), 1))),
                (50, 70, None),
                (70, 90, Some((NodeId(2), 2)))
            ]
        );
        assert_eq!(
            timeline.leaders()[&group].len(),
            2,
            "two leaders, the gap left out"
        );
    }

    #[test]
    fn downtime_and_partitions_are_intervals() {
        let mut timeline = Timeline::default();
        let (one, two) = (NodeId(1), NodeId(2));
        let down = |node| EventKind::NodeDown {
            node,
            bytes_lost: 0,
            torn_files: 0,
        };
        timeline.record(at(100), down(one));
        timeline.record(
            at(150),
            EventKind::Fault(Fault::Partition {
                description: "one-way n1 -> n2".into(),
                millis: 100,
                blocked: [(one, two)].into(),
            }),
        );
        timeline.record(at(200), EventKind::NodeUp { node: one });
        timeline.record(at(250), EventKind::Healed);
        timeline.record(at(300), down(two));
        timeline.record(
            at(400),
            EventKind::NodeLost {
                node: two,
                reason: "disk lost".into(),
            },
        );
        let downtime = timeline.downtime();
        let millis = |spans: &Vec<Downtime>| -> Vec<(u128, u128, bool)> {
            spans
                .iter()
                .map(|span| (span.from.as_millis(), span.to.as_millis(), span.lost))
                .collect()
        };
        assert_eq!(millis(&downtime[&one]), [(100, 200, false)]);
        assert_eq!(millis(&downtime[&two]), [(300, 400, true)]);
        let partitions = timeline.partitions();
        assert_eq!(partitions.len(), 1);
        assert_eq!(
            (partitions[0].from.as_millis(), partitions[0].to.as_millis()),
            (150, 250)
        );
    }
}
