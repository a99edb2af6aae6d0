//! What a drill found, per group — time to a new leader (RTO), acknowledged writes lost (RPO), errors and
//! latency before, during and after the fault, whether the history is linearizable — and the residency of
//! every leader and replica at every observed moment; as Markdown for a person, or JSON for a pipeline.
//! The checks decide the exit code.

use std::fmt::Write as _;
use std::time::Duration;

use linearizability::{CheckResult, Operation, Registers};
use serde::Serialize;

use super::observe::Residency;
use super::workload::{Outcome, ReadBack, Sample};

/// How long the checker may search one group's history before the answer is "undecided".
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `site-outage`, `leader-loss` or `partition`.
    pub drill: String,
    /// What the drill took down, in words.
    pub target: String,
    pub run: String,
    pub passed: bool,
    pub fault: Fault,
    pub workload: WorkloadSummary,
    pub groups: Vec<GroupReport>,
    pub residency: Residency,
    pub cleanup: Cleanup,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// `isolation` (the nodes drop their own Raft traffic) or `command` (`--fault-command`).
    pub method: String,
    /// The nodes the fault takes out.
    pub nodes: Vec<u64>,
    pub description: String,
    pub injected_at_ms: u64,
    pub healed_at_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSummary {
    pub workers: u32,
    pub rate: u32,
    pub users: usize,
    pub operations: usize,
    pub poll_every_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cleanup {
    pub users: usize,
    pub records_deleted: u64,
    /// Drill users whose records could not all be deleted.
    pub users_left: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub jurisdiction: String,
    /// The leader when the fault began, and its term.
    pub leader_before: Option<u64>,
    pub term_before: Option<u64>,
    /// The fault took the leader out.
    pub leader_lost: bool,
    /// A majority of the voters, one of them inside the jurisdiction, stayed on one side of the fault:
    /// a new leader can be elected (if not, the group is unavailable during the fault, by design).
    pub failover_possible: bool,
    /// The first new leader seen during the fault, and how long after the fault began (RTO).
    pub new_leader: Option<u64>,
    pub rto_ms: Option<u64>,
    /// The node that last led the group after the fault was healed.
    pub leader_after: Option<u64>,
    pub writes_acknowledged: u64,
    /// Acknowledged writes absent or changed when read back (`user/record`): the RPO, which must be 0.
    pub writes_lost: Vec<String>,
    /// Acknowledged writes that could not be read back.
    pub writes_unverified: u64,
    /// `yes`, `no` or `undecided` (the checker ran out of time).
    pub linearizable: String,
    pub phases: Vec<PhaseStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseStats {
    pub phase: String,
    pub operations: u64,
    /// Operations that failed or got no answer.
    pub errors: u64,
    pub error_rate: f64,
    /// Latency of the operations answered.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

/// Before, during and after the fault: a call belongs to the phase it began in, except that one still
/// running when the fault began is counted during it.
pub fn phase_stats(samples: &[&Sample], injected: Duration, healed: Duration) -> Vec<PhaseStats> {
    // A call still running when the fault began counts in `during`: the fault is what it met.
    let phase_of = |sample: &Sample| {
        if sample.invoked + sample.latency < injected {
            "before"
        } else if sample.invoked < healed {
            "during"
        } else {
            "after"
        }
    };
    ["before", "during", "after"]
        .iter()
        .map(|&phase| {
            let in_phase: Vec<&&Sample> = samples
                .iter()
                .filter(|sample| phase_of(sample) == phase)
                .collect();
            let errors = in_phase
                .iter()
                .filter(|sample| sample.outcome != Outcome::Ok)
                .count() as u64;
            let mut answered: Vec<Duration> = in_phase
                .iter()
                .filter(|sample| sample.outcome == Outcome::Ok)
                .map(|sample| sample.latency)
                .collect();
            answered.sort_unstable();
            let quantile = |q: f64| {
                (!answered.is_empty()).then(|| {
                    let index = ((answered.len() as f64 * q).ceil() as usize).clamp(1, answered.len()) - 1;
                    answered[index].as_secs_f64() * 1000.0
                })
            };
            let operations = in_phase.len() as u64;
            PhaseStats {
                phase: phase.to_string(),
                operations,
                errors,
                error_rate: if operations == 0 {
                    0.0
                } else {
                    errors as f64 / operations as f64
                },
                p50_ms: quantile(0.50),
                p99_ms: quantile(0.99),
            }
        })
        .collect()
}

/// The checker's verdict on one group's register history.
pub fn linearizable(history: &[Operation<Registers>]) -> String {
    match linearizability::check_operations_timeout::<Registers>(history, CHECK_TIMEOUT) {
        CheckResult::Ok => "yes",
        CheckResult::Illegal => "no",
        CheckResult::Unknown => "undecided",
    }
    .to_string()
}

impl GroupReport {
    pub fn read_back(&mut self, read_back: Option<&ReadBack>) {
        if let Some(read_back) = read_back {
            self.writes_acknowledged = read_back.acknowledged;
            self.writes_lost = read_back.lost.clone();
            self.writes_unverified = read_back.unverified;
        }
    }

    /// This group's checks: a new leader when one could be elected, no acknowledged write lost (and every
    /// one read back), a linearizable history, a leader again after the fault.
    pub fn checks(&self, fault_ms: u64) -> Vec<Check> {
        let group = &self.group;
        let mut checks = Vec::new();
        if self.leader_lost {
            let (passed, detail) = match (self.failover_possible, self.new_leader, self.rto_ms) {
                (true, Some(leader), Some(rto)) => {
                    (true, format!("n{leader} led {} ms after the fault began", rto))
                }
                (true, _, _) => (
                    false,
                    format!(
                        "no new leader during the fault's {fault_ms} ms, though a quorum stayed together"
                    ),
                ),
                (false, _, _) => (
                    true,
                    "no quorum of voters stayed together: unavailable during the fault, by design"
                        .to_string(),
                ),
            };
            checks.push(Check {
                check: format!("{group}: a new leader (RTO)"),
                passed,
                detail,
            });
        }
        let lost = self.writes_lost.len();
        checks.push(Check {
            check: format!("{group}: no acknowledged write lost (RPO 0)"),
            passed: lost == 0 && self.writes_unverified == 0,
            detail: match (lost, self.writes_unverified) {
                (0, 0) => format!(
                    "{} acknowledged writes, every one read back",
                    self.writes_acknowledged
                ),
                (0, unverified) => format!("{unverified} acknowledged writes could not be read back"),
                (lost, _) => format!(
                    "{lost} of {} acknowledged writes lost: {}",
                    self.writes_acknowledged,
                    self.writes_lost
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        });
        checks.push(Check {
            check: format!("{group}: the history is linearizable"),
            passed: self.linearizable == "yes",
            detail: format!("porcupine: {}", self.linearizable),
        });
        checks.push(Check {
            check: format!("{group}: led again after the fault"),
            passed: self.leader_after.is_some(),
            detail: self
                .leader_after
                .map_or("no leader at the end of the drill".to_string(), |leader| {
                    format!("n{leader} leads")
                }),
        });
        checks
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |ms| format!("{ms:.1} ms"))
}

fn node(value: Option<u64>) -> String {
    value.map_or("none".to_string(), |node| format!("n{node}"))
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "## Drill {}: {} — {verdict}\n", self.drill, self.target);
        let fault = &self.fault;
        let _ = writeln!(
            out,
            "Fault: {}; injected at {}, healed at {} ({}). Run `{}`: {} clients at most {} operations/s on {} \
             drill users, {} operations; every node's status polled every {} ms ({} answers).\n",
            fault.description,
            seconds(fault.injected_at_ms),
            seconds(fault.healed_at_ms),
            seconds(fault.healed_at_ms.saturating_sub(fault.injected_at_ms)),
            self.run,
            self.workload.workers,
            self.workload.rate,
            self.workload.users,
            self.workload.operations,
            self.workload.poll_every_ms,
            self.residency.answers,
        );
        out.push_str(
            "| group | jurisdiction | leader before | lost | new leader | RTO | leader after | acked writes | lost | linearizable |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for group in &self.groups {
            let lost = match (group.leader_lost, group.failover_possible) {
                (false, _) => "no",
                (true, true) => "yes",
                (true, false) => "yes, no quorum left",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {lost} | {} | {} | {} | {} | {} | {} |",
                group.group,
                group.jurisdiction,
                node(group.leader_before),
                node(group.new_leader),
                group.rto_ms.map_or("-".to_string(), |rto| format!("{rto} ms")),
                node(group.leader_after),
                group.writes_acknowledged,
                group.writes_lost.len() as u64 + group.writes_unverified,
                group.linearizable,
            );
        }
        out.push_str("\n| group | phase | operations | errors | error rate | p50 | p99 |\n|---|---|---|---|---|---|---|\n");
        for group in &self.groups {
            for phase in &group.phases {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.1}% | {} | {} |",
                    group.group,
                    phase.phase,
                    phase.operations,
                    phase.errors,
                    phase.error_rate * 100.0,
                    ms(phase.p50_ms),
                    ms(phase.p99_ms),
                );
            }
        }
        let residency = &self.residency;
        let _ = write!(
            out,
            "\nResidency: {} group views in {} answers: ",
            residency.views, residency.answers
        );
        if residency.violations_total == 0 {
            out.push_str("no leader or replica outside its jurisdiction.");
        } else {
            let _ = write!(
                out,
                "{} times a leader or replica outside:",
                residency.violations_total
            );
            for violation in &residency.violations {
                let _ = write!(
                    out,
                    "\n- at {} ms, n{} reported {} n{} at {}: {}",
                    violation.at_ms,
                    violation.reported_by,
                    violation.group,
                    violation.node,
                    violation.site,
                    violation.what
                );
            }
        }
        for (group, nodes) in &residency.legacy_outside {
            let nodes: Vec<String> = nodes.iter().map(|node| format!("n{node}")).collect();
            let _ = write!(
                out,
                " Legacy members outside {group}'s jurisdiction since before the drill: {}.",
                nodes.join(", ")
            );
        }
        let cleanup = &self.cleanup;
        let _ = writeln!(
            out,
            "\n\nCleanup: {} records of {} drill users deleted{}.\n",
            cleanup.records_deleted,
            cleanup.users,
            if cleanup.users_left.is_empty() {
                String::new()
            } else {
                format!("; NOT cleaned up: {}", cleanup.users_left.join(", "))
            }
        );
        out.push_str("Checks:\n");
        for check in &self.checks {
            let mark = if check.passed { "x" } else { " " };
            let _ = writeln!(out, "- [{mark}] {}: {}", check.check, check.detail);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(invoked_ms: u64, latency_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            group: "g".into(),
            invoked: Duration::from_millis(invoked_ms),
            latency: Duration::from_millis(latency_ms),
            outcome,
        }
    }

    #[test]
    fn operations_count_in_the_phase_they_began_in() {
        let samples = [
            sample(100, 1, Outcome::Ok),
            sample(200, 3, Outcome::Ok),
            sample(900, 200, Outcome::Unknown),
            sample(1000, 500, Outcome::Unknown),
            sample(1500, 9, Outcome::Failed),
            sample(1600, 2, Outcome::Ok),
            sample(3000, 4, Outcome::Ok),
        ];
        let samples: Vec<&Sample> = samples.iter().collect();
        let phases = phase_stats(&samples, Duration::from_secs(1), Duration::from_secs(2));
        let summary: Vec<(&str, u64, u64)> = phases
            .iter()
            .map(|phase| (phase.phase.as_str(), phase.operations, phase.errors))
            .collect();
        assert_eq!(
            summary,
            [("before", 2, 0), ("during", 4, 3), ("after", 1, 0)],
            "a call the fault caught running counts during it"
        );
        assert_eq!(phases[0].p50_ms, Some(1.0));
        assert_eq!(phases[0].p99_ms, Some(3.0));
        assert_eq!(
            phases[1].p50_ms,
            Some(2.0),
            "only answered operations have a latency"
        );
        assert!((phases[1].error_rate - 3.0 / 4.0).abs() < 1e-9);
    }

    fn group() -> GroupReport {
        GroupReport {
            group: "users-eea".into(),
            jurisdiction: "EEA".into(),
            leader_before: Some(1),
            term_before: Some(3),
            leader_lost: true,
            failover_possible: true,
            new_leader: Some(2),
            rto_ms: Some(1200),
            leader_after: Some(2),
            writes_acknowledged: 10,
            writes_lost: Vec::new(),
            writes_unverified: 0,
            linearizable: "yes".into(),
            phases: Vec::new(),
        }
    }

    #[test]
    fn a_group_passes_only_with_a_new_leader_no_write_lost_and_a_linearizable_history() {
        assert!(group().checks(5000).iter().all(|check| check.passed));
        let failed = |group: GroupReport| -> Vec<String> {
            group
                .checks(5000)
                .into_iter()
                .filter(|check| !check.passed)
                .map(|check| check.check)
                .collect()
        };
        let mut no_leader = group();
        (no_leader.new_leader, no_leader.rto_ms) = (None, None);
        assert_eq!(failed(no_leader), ["users-eea: a new leader (RTO)"]);
        let mut no_quorum = group();
        (
            no_quorum.failover_possible,
            no_quorum.new_leader,
            no_quorum.rto_ms,
        ) = (false, None, None);
        assert!(
            failed(no_quorum).is_empty(),
            "unavailable by design is no failure"
        );
        let mut lost = group();
        lost.writes_lost = vec!["drill-x-eea-0/ack-w0-3".into()];
        assert_eq!(failed(lost), ["users-eea: no acknowledged write lost (RPO 0)"]);
        let mut unverified = group();
        unverified.writes_unverified = 1;
        assert_eq!(
            failed(unverified),
            ["users-eea: no acknowledged write lost (RPO 0)"]
        );
        let mut broken = group();
        broken.linearizable = "no".into();
        assert_eq!(failed(broken), ["users-eea: the history is linearizable"]);
        let mut leaderless = group();
        leaderless.leader_after = None;
        assert_eq!(failed(leaderless), ["users-eea: led again after the fault"]);
    }
}
