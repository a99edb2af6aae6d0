//! The checkers, run on every seed: each violation is counted under the checker that saw it, with the
//! first few described for the report.
//!
//! * linearizability of the tracked keys' client history ([`crate::history`], porcupine);
//! * no acknowledged write lost, no value read that was never written ([`crate::history`]);
//! * residency at every observation step ([`Observer`]) and on every message ([`crate::network`]);
//! * conservation of modelled bulk data ([`crate::bulk`]);
//! * Raft safety: at most one leader per term per group, committed entries never change ([`Observer`],
//!   and a final comparison of every replica's committed log);
//! * liveness: after faults stop, every group that can elect a leader does, and serves a write and a read.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft_rt_sim::SimInstant;
use placement::{GroupId, GroupPolicy, NodeId, Topology};
use serde::Serialize;

/// The checkers, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checker {
    Linearizability,
    LostAckedWrites,
    Residency,
    Conservation,
    RaftSafety,
    Liveness,
}

impl Checker {
    pub const ALL: [Checker; 6] = [
        Checker::Linearizability,
        Checker::LostAckedWrites,
        Checker::Residency,
        Checker::Conservation,
        Checker::RaftSafety,
        Checker::Liveness,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Checker::Linearizability => "linearizability",
            Checker::LostAckedWrites => "lost_acked_writes",
            Checker::Residency => "residency",
            Checker::Conservation => "conservation",
            Checker::RaftSafety => "raft_safety",
            Checker::Liveness => "liveness",
        }
    }

    pub fn from_name(name: &str) -> Option<Checker> {
        Checker::ALL.into_iter().find(|checker| checker.name() == name)
    }
}

/// Violation counts, as the report prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    pub linearizability: u64,
    pub lost_acked_writes: u64,
    pub residency: u64,
    pub conservation: u64,
    pub raft_safety: u64,
    pub liveness: u64,
}

impl Violations {
    pub fn get(&self, checker: Checker) -> u64 {
        match checker {
            Checker::Linearizability => self.linearizability,
            Checker::LostAckedWrites => self.lost_acked_writes,
            Checker::Residency => self.residency,
            Checker::Conservation => self.conservation,
            Checker::RaftSafety => self.raft_safety,
            Checker::Liveness => self.liveness,
        }
    }

    fn slot(&mut self, checker: Checker) -> &mut u64 {
        match checker {
            Checker::Linearizability => &mut self.linearizability,
            Checker::LostAckedWrites => &mut self.lost_acked_writes,
            Checker::Residency => &mut self.residency,
            Checker::Conservation => &mut self.conservation,
            Checker::RaftSafety => &mut self.raft_safety,
            Checker::Liveness => &mut self.liveness,
        }
    }

    pub fn total(&self) -> u64 {
        Checker::ALL.into_iter().map(|checker| self.get(checker)).sum()
    }

    /// The checkers that saw anything, by name.
    pub fn failing(&self) -> Vec<&'static str> {
        Checker::ALL
            .into_iter()
            .filter(|&checker| self.get(checker) > 0)
            .map(Checker::name)
            .collect()
    }
}

/// Bound on the violations described in full, per checker (the counts are exact).
const DETAILS_MAX: usize = 20;

/// What a violation involves, for the report: its group, nodes and keys.
#[derive(Clone, Debug, Default)]
pub struct Involved {
    pub group: Option<GroupId>,
    pub nodes: Vec<NodeId>,
    pub keys: Vec<String>,
}

impl Involved {
    pub fn group(group: &GroupId) -> Involved {
        Involved {
            group: Some(group.clone()),
            ..Involved::default()
        }
    }

    pub fn nodes(mut self, nodes: impl IntoIterator<Item = NodeId>) -> Involved {
        self.nodes.extend(nodes);
        self
    }

    pub fn keys(mut self, keys: impl IntoIterator<Item = String>) -> Involved {
        self.keys.extend(keys);
        self
    }
}

/// One violation, described.
#[derive(Clone, Debug)]
pub struct Finding {
    pub checker: Checker,
    /// Simulated time since the world was built: when the checker saw it, or (for the history, checked
    /// after the run) when the operation that broke it returned.
    pub at: Option<Duration>,
    pub involved: Involved,
    pub detail: String,
}

impl Finding {
    /// `checker: detail`, as the report's `details` have always read.
    pub fn line(&self) -> String {
        format!("{}: {}", self.checker.name(), self.detail)
    }
}

/// Every checker's findings in one run.
pub struct Checks {
    /// When the world was built: findings are stamped with simulated time since.
    start: SimInstant,
    state: Mutex<(Violations, Vec<Finding>)>,
}

impl Checks {
    pub fn new(start: SimInstant) -> Checks {
        Checks {
            start,
            state: Mutex::default(),
        }
    }

    /// A violation seen now.
    pub fn violation(&self, checker: Checker, involved: Involved, detail: String) {
        let at = SimInstant::try_now().map(|now| now - self.start);
        self.violation_at(checker, at, involved, detail);
    }

    /// A violation found after the fact, placed at the simulated time `at`.
    pub fn violation_at(&self, checker: Checker, at: Option<Duration>, involved: Involved, detail: String) {
        let mut state = self.state.lock().expect("checks lock");
        *state.0.slot(checker) += 1;
        if state
            .1
            .iter()
            .filter(|finding| finding.checker == checker)
            .count()
            < DETAILS_MAX
        {
            state.1.push(Finding {
                checker,
                at,
                involved,
                detail,
            });
        }
    }

    pub fn violations(&self) -> Violations {
        self.state.lock().expect("checks lock").0.clone()
    }

    /// The findings described, in the order they were found.
    pub fn findings(&self) -> Vec<Finding> {
        self.state.lock().expect("checks lock").1.clone()
    }

    pub fn details(&self) -> Vec<String> {
        self.findings().iter().map(Finding::line).collect()
    }
}

/// The first violation in simulated time (one without a time last).
pub fn first(findings: &[Finding]) -> Option<&Finding> {
    findings
        .iter()
        .min_by_key(|finding| finding.at.unwrap_or(Duration::MAX))
}

/// What one replica reported at one observation step.
#[derive(Clone, Debug)]
pub struct ReplicaView {
    pub node: NodeId,
    pub group: GroupId,
    pub status: raft::host::GroupStatus,
    /// The term of the replica's last committed log id, if any.
    pub committed_term: Option<u64>,
}

/// Watches every replica at every observation step: residency of members and leaders, one leader per
/// term, and committed log ids that never change.
#[derive(Default)]
pub struct Observer {
    leaders: BTreeMap<(GroupId, u64), NodeId>,
    committed: BTreeMap<(GroupId, u64), u64>,
    /// Committed (index, term) samples are bounded per group: older ones are forgotten.
    samples: BTreeMap<GroupId, std::collections::VecDeque<u64>>,
}

const SAMPLES_PER_GROUP_MAX: usize = 4096;

impl Observer {
    pub fn observe(
        &mut self,
        topology: &Topology,
        policy: &GroupPolicy,
        legacy: &std::collections::BTreeSet<NodeId>,
        view: &ReplicaView,
        checks: &Checks,
    ) {
        let status = &view.status;
        let inside = |node: NodeId| topology.is_inside(node, &policy.jurisdiction);
        for node in status.membership.members() {
            if !inside(node) && !legacy.contains(&node) {
                checks.violation(
                    Checker::Residency,
                    Involved::group(&view.group).nodes([view.node, node]),
                    format!(
                        "{} sees {node} as a member of `{}`, outside {}",
                        view.node,
                        view.group,
                        policy.jurisdiction.name()
                    ),
                );
            }
        }
        if status.leader == Some(view.node) {
            if !inside(view.node) {
                checks.violation(
                    Checker::Residency,
                    Involved::group(&view.group).nodes([view.node]),
                    format!(
                        "{} leads `{}` from outside {}",
                        view.node,
                        view.group,
                        policy.jurisdiction.name()
                    ),
                );
            }
            let key = (view.group.clone(), status.term);
            match self.leaders.get(&key) {
                Some(&other) if other != view.node => checks.violation(
                    Checker::RaftSafety,
                    Involved::group(&view.group).nodes([other, view.node]),
                    format!(
                        "two leaders of `{}` in term {}: {other} and {}",
                        view.group, status.term, view.node
                    ),
                ),
                Some(_) => {}
                None => {
                    self.leaders.insert(key, view.node);
                }
            }
        }
        if let (Some(index), Some(term)) = (status.committed, view.committed_term) {
            let key = (view.group.clone(), index);
            match self.committed.get(&key) {
                Some(&seen) if seen != term => checks.violation(
                    Checker::RaftSafety,
                    Involved::group(&view.group).nodes([view.node]),
                    format!(
                        "`{}` entry {index} committed in term {seen}, later {} reports it committed in term {term}",
                        view.group, view.node
                    ),
                ),
                Some(_) => {}
                None => {
                    self.committed.insert(key, term);
                    let samples = self.samples.entry(view.group.clone()).or_default();
                    samples.push_back(index);
                    if samples.len() > SAMPLES_PER_GROUP_MAX
                        && let Some(old) = samples.pop_front()
                    {
                        self.committed.remove(&(view.group.clone(), old));
                    }
                }
            }
        }
    }
}
