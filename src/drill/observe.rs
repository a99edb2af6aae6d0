//! The drill's observer: every node's `GET /status`, polled on its own every [`POLL_EVERY`] (a node that
//! does not answer delays no other), kept as a list of answers with the time each arrived. From them: each
//! group's leader before the fault and the first new one during it (the RTO), and the residency of every
//! leader and replica at every answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use placement::{GroupId, NodeId, TopologyFile};
use serde::Serialize;

use crate::admin_api::NodeStatus;

/// How often each node's status is asked for.
pub const POLL_EVERY: Duration = Duration::from_millis(150);

/// How long one status request may take: a stopped node must not hold the node's poller for long.
const POLL_TIMEOUT: Duration = Duration::from_millis(1000);

/// One answer of a node's admin endpoint (or its silence).
#[derive(Clone, Debug)]
pub struct Answer {
    pub node: u64,
    /// When the answer (or the failure) came, since the drill started.
    pub at: Duration,
    pub status: Option<NodeStatus>,
}

pub struct Observer {
    started: Instant,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    pollers: tokio::task::JoinSet<()>,
}

impl Observer {
    /// Starts polling every node of `admins` (node id → admin address).
    pub fn start(started: Instant, admins: &BTreeMap<u64, String>) -> Observer {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = crate::operator_cli::http();
        let mut pollers = tokio::task::JoinSet::new();
        for (&node, admin) in admins {
            let (answers, stop, http) = (answers.clone(), stop.clone(), http.clone());
            let url = super::admin_url(admin, "/status");
            pollers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + POLL_EVERY;
                    let status = poll(&http, &url).await;
                    let at = started.elapsed();
                    answers
                        .lock()
                        .expect("answers lock")
                        .push(Answer { node, at, status });
                    tokio::time::sleep_until(next.into()).await;
                }
            });
        }
        Observer {
            started,
            answers,
            stop,
            pollers,
        }
    }

    /// Until every node has answered (or failed to) once, at most [`POLL_TIMEOUT`] and a bit: so the
    /// drill knows the leaders before its first phase ends, however short.
    pub async fn first_round(&self, nodes: usize) {
        let deadline = Instant::now() + POLL_TIMEOUT * 2;
        while Instant::now() < deadline {
            let answered: BTreeSet<u64> = self.answers().iter().map(|answer| answer.node).collect();
            if answered.len() >= nodes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The answers so far, in arrival order.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.lock().expect("answers lock").clone()
    }

    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops every poller; returns every answer.
    pub async fn stop(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        while self.pollers.join_next().await.is_some() {}
        let mut answers = self.answers();
        answers.sort_by_key(|answer| answer.at);
        answers
    }
}

async fn poll(http: &reqwest::Client, url: &str) -> Option<NodeStatus> {
    let response = http.get(url).timeout(POLL_TIMEOUT).send().await.ok()?;
    response.error_for_status().ok()?.json().await.ok()
}

/// The node that leads `group` as the answers up to `until` show it: the latest answer of each node, and
/// among the nodes that say they lead, the highest term.
pub fn leader_at(answers: &[Answer], group: &str, until: Duration) -> Option<(u64, u64)> {
    let mut latest: BTreeMap<u64, &NodeStatus> = BTreeMap::new();
    for answer in answers.iter().filter(|answer| answer.at <= until) {
        match &answer.status {
            Some(status) => latest.insert(answer.node, status),
            None => latest.remove(&answer.node),
        };
    }
    latest
        .iter()
        .filter_map(|(&node, status)| {
            status
                .groups
                .iter()
                .find(|view| view.group == group && view.leader == Some(node))
                .map(|view| (view.term, node))
        })
        .max()
        .map(|(term, node)| (node, term))
}

/// The node that last said it leads `group` in the answers between `from` and `until`: the group was led
/// again after the fault even if, at the very end, its leadership was being handed over (to a preferred
/// site, say) and no node claimed it.
pub fn last_leader(answers: &[Answer], group: &str, from: Duration, until: Duration) -> Option<u64> {
    answers
        .iter()
        .filter(|answer| answer.at >= from && answer.at <= until)
        .filter_map(|answer| {
            let status = answer.status.as_ref()?;
            status
                .groups
                .iter()
                .any(|view| view.group == group && view.leader == Some(answer.node))
                .then_some((answer.at, answer.node))
        })
        .max()
        .map(|(_, node)| node)
}

/// The first answer after `from` (and before `until`) in which a node of `eligible` says it leads `group`
/// in a term above `term`: when, who, which term.
pub fn new_leader(
    answers: &[Answer],
    group: &str,
    term: u64,
    eligible: &BTreeSet<u64>,
    from: Duration,
    until: Duration,
) -> Option<(Duration, u64, u64)> {
    answers
        .iter()
        .filter(|answer| answer.at >= from && answer.at <= until && eligible.contains(&answer.node))
        .find_map(|answer| {
            let status = answer.status.as_ref()?;
            status
                .groups
                .iter()
                .find(|view| view.group == group && view.leader == Some(answer.node) && view.term > term)
                .map(|view| (answer.at, answer.node, view.term))
        })
}

/// A moment a leader or replica of a group stood outside its jurisdiction (and was not a legacy member
/// outside before the drill began).
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub at_ms: u64,
    /// The node whose answer showed it.
    pub reported_by: u64,
    pub group: String,
    pub node: u64,
    pub site: String,
    pub what: String,
}

/// The residency of every group at every answer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Residency {
    /// Answers checked (each holds every group its node hosts).
    pub answers: u64,
    /// Group views checked, over all answers.
    pub views: u64,
    /// Members outside their group's jurisdiction from before the drill (legacy members being moved
    /// in), by group: allowed, and reported.
    pub legacy_outside: BTreeMap<String, Vec<u64>>,
    /// Every violation seen (the same one counts at every answer that shows it).
    pub violations_total: u64,
    /// The first [`VIOLATIONS_SHOWN`] of them.
    pub violations: Vec<Violation>,
}

/// Violations listed in a report; the rest are counted.
pub const VIOLATIONS_SHOWN: usize = 20;

/// Members outside each group's jurisdiction in the answers before the drill began (`until`): legacy
/// members, lawful while the group is migrated in.
pub fn legacy_outside(
    file: &TopologyFile,
    answers: &[Answer],
    until: Duration,
) -> BTreeMap<String, BTreeSet<u64>> {
    let mut outside: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for answer in answers.iter().filter(|answer| answer.at <= until) {
        let Some(status) = &answer.status else { continue };
        for view in &status.groups {
            let Some(policy) = file.policies.get(&GroupId(view.group.clone())) else {
                continue;
            };
            for member in view.voters.iter().chain(&view.learners) {
                if !file.topology.is_inside(NodeId(member.node), &policy.jurisdiction) {
                    outside.entry(view.group.clone()).or_default().insert(member.node);
                }
            }
        }
    }
    outside
}

/// Checks every answer: each group's leader inside its jurisdiction, and every voter, learner and the
/// node holding the replica inside it too, or a legacy member from before the drill.
pub fn residency(
    file: &TopologyFile,
    answers: &[Answer],
    legacy: &BTreeMap<String, BTreeSet<u64>>,
) -> Residency {
    let mut residency = Residency {
        legacy_outside: legacy
            .iter()
            .map(|(group, nodes)| (group.clone(), nodes.iter().copied().collect()))
            .collect(),
        ..Residency::default()
    };
    let site = |node: u64| {
        file.topology
            .site_of(NodeId(node))
            .map_or("unknown site".to_string(), |site| {
                format!("{} ({})", site.name.0, site.country)
            })
    };
    for answer in answers {
        let Some(status) = &answer.status else { continue };
        residency.answers += 1;
        for view in &status.groups {
            residency.views += 1;
            let group = GroupId(view.group.clone());
            let mut flag = |node: u64, what: String| {
                residency.violations_total += 1;
                if residency.violations.len() >= VIOLATIONS_SHOWN {
                    return;
                }
                residency.violations.push(Violation {
                    at_ms: answer.at.as_millis() as u64,
                    reported_by: answer.node,
                    group: view.group.clone(),
                    node,
                    site: site(node),
                    what,
                })
            };
            let Some(policy) = file.policies.get(&group) else {
                flag(
                    answer.node,
                    format!(
                        "a replica of `{}`, a group the topology does not know",
                        view.group
                    ),
                );
                continue;
            };
            let jurisdiction = policy.jurisdiction.name();
            let inside = |node: u64| file.topology.is_inside(NodeId(node), &policy.jurisdiction);
            let lawful = |node: u64| {
                inside(node) || legacy.get(&view.group).is_some_and(|nodes| nodes.contains(&node))
            };
            if let Some(leader) = view.leader
                && !inside(leader)
            {
                flag(leader, format!("led from outside {jurisdiction}"));
            }
            for member in view.voters.iter().chain(&view.learners) {
                if !lawful(member.node) {
                    flag(member.node, format!("a member outside {jurisdiction}"));
                }
            }
            if !lawful(answer.node) {
                flag(answer.node, format!("holds a replica outside {jurisdiction}"));
            }
        }
    }
    residency
}
