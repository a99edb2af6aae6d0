//! The run told in words, for whoever typed `domicile sim run`: what the world was, the faults injected
//! and when, each group's leaders in turn, the planner's steps (for `migrate`, the migration's timeline:
//! each step, the bytes copied, the cutover, the purges), the clients' operations and every checker's
//! verdict; for a failing seed, the first violation — its time, group, nodes and keys — and the exact
//! command that replays it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use placement::{GroupId, NodeId, Step};

use crate::checkers::{self, Checker, Finding};
use crate::scenario::{Outcome, RunConfig, Scenario};
use crate::timeline::{Copy, Downtime, EventKind, Fault, Timeline};

/// Faults listed one by one; past this, counted.
const FAULTS_LISTED_MAX: usize = 40;
/// The most simulated time between a crash's decision and its node going down.
const CRASH_TAKES_MAX: Duration = Duration::from_millis(100);
/// Leaders listed per group; past this, counted.
const LEADERS_LISTED_MAX: usize = 10;

/// The whole summary, one line per `\n`.
pub fn render(outcome: &Outcome, config: &RunConfig) -> String {
    let mut text = String::new();
    header(&mut text, outcome);
    faults(&mut text, outcome);
    leaders(&mut text, &outcome.timeline);
    if matches!(
        config.scenario,
        Scenario::Migrate | Scenario::Grow | Scenario::GrowWide
    ) {
        migration(&mut text, outcome);
    } else {
        steps(&mut text, &outcome.timeline);
    }
    let report = &outcome.report;
    let _ = writeln!(
        text,
        "\nclients: {} operations ok, {} failed, {} with an unknown outcome",
        report.ops_ok, report.ops_failed, report.ops_unknown
    );
    verdicts(&mut text, outcome, config);
    text
}

/// `12.345 s`, simulated.
pub fn seconds(at: Duration) -> String {
    format!("{:.3} s", at.as_secs_f64())
}

/// Bytes in the largest binary unit that keeps a whole number in front.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn nodes(list: &[NodeId]) -> String {
    list.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ")
}

fn header(text: &mut String, outcome: &Outcome) {
    let report = &outcome.report;
    let verdict = if report.violations.total() == 0 {
        "passed"
    } else {
        "FAILED"
    };
    let _ = writeln!(
        text,
        "seed {} {}: {verdict}, {:.1} simulated s in {:.2} s, trace {}",
        report.seed,
        report.scenario.name(),
        report.sim_seconds,
        report.wall_seconds,
        report.trace_hash
    );
    let sites: Vec<String> = outcome
        .layout
        .sites
        .iter()
        .map(|(site, country, members)| format!("{site} ({country}) {}", nodes(members)))
        .collect();
    let groups: Vec<String> = outcome
        .layout
        .groups
        .iter()
        .map(|(group, jurisdiction)| format!("{group} ({jurisdiction})"))
        .collect();
    let _ = writeln!(text, "sites: {}", sites.join("; "));
    let _ = writeln!(text, "groups: {}", groups.join(", "));
}

fn faults(text: &mut String, outcome: &Outcome) {
    let timeline = &outcome.timeline;
    let counts = timeline.fault_counts();
    let total: u64 = counts.values().sum();
    let by_kind: Vec<String> = counts
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    let _ = write!(text, "\nfaults: {total}");
    if !by_kind.is_empty() {
        let _ = write!(text, " ({})", by_kind.join(", "));
    }
    match timeline.faults_stopped() {
        Some(at) => {
            let _ = writeln!(text, "; at {} faults stopped and everything healed", seconds(at));
        }
        None => text.push('\n'),
    }
    let downtime = timeline.downtime();
    for (at, fault) in timeline.faults().take(FAULTS_LISTED_MAX) {
        let _ = write!(text, "  {:>10}  {:<13} {fault}", seconds(at), fault.kind());
        if let Some(effect) = crash_effect(fault, at, &downtime) {
            let _ = write!(text, " ({effect})");
        }
        text.push('\n');
    }
    if total as usize > FAULTS_LISTED_MAX {
        let _ = writeln!(
            text,
            "  … and {} more (`--report FILE.html` draws them all)",
            total as usize - FAULTS_LISTED_MAX
        );
    }
    let fired: Vec<String> = outcome
        .report
        .fault_points
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(point, count)| format!("{point} ×{count}"))
        .collect();
    if !fired.is_empty() {
        let _ = writeln!(
            text,
            "  fault points fired in production code: {}",
            fired.join(", ")
        );
    }
}

/// What a crash did: how long the node stayed down, or that it was down already (the injector's roll
/// came up, and there was nothing to crash).
fn crash_effect(fault: &Fault, at: Duration, downtime: &BTreeMap<NodeId, Vec<Downtime>>) -> Option<String> {
    let crashes = matches!(
        fault,
        Fault::Crash { .. } | Fault::CrashLeader { .. } | Fault::ExitAfterFailedSync { .. }
    );
    let node = fault.node().filter(|_| crashes)?;
    let spans = downtime.get(&node).map(Vec::as_slice).unwrap_or_default();
    // A crash takes the node down at once (its host's shutdown may take a few simulated ms).
    let caused = spans
        .iter()
        .find(|span| span.from >= at && span.from - at <= CRASH_TAKES_MAX);
    if let Some(span) = caused {
        return Some(if span.lost {
            "down for good".to_string()
        } else {
            format!("down {}", seconds(span.to - span.from))
        });
    }
    spans
        .iter()
        .any(|span| span.from <= at && at <= span.to)
        .then(|| "already down".to_string())
}

fn leaders(text: &mut String, timeline: &Timeline) {
    let _ = writeln!(
        text,
        "\nleaders (each group's in turn, with term and since when):"
    );
    for (group, leaders) in timeline.leaders() {
        let changes = leaders.len().saturating_sub(1);
        let shown: Vec<String> = leaders
            .iter()
            .take(LEADERS_LISTED_MAX)
            .map(|(at, node, term)| format!("{node} t{term} {}", seconds(*at)))
            .collect();
        let more = leaders.len().saturating_sub(LEADERS_LISTED_MAX);
        let _ = write!(
            text,
            "  {group}: {changes} change{}: {}",
            if changes == 1 { "" } else { "s" },
            shown.join(" → ")
        );
        if more > 0 {
            let _ = write!(text, " → … {more} more");
        }
        text.push('\n');
    }
}

/// The planner's steps outside `migrate` (re-replication after a site is lost).
fn steps(text: &mut String, timeline: &Timeline) {
    let steps: Vec<(Duration, &Step)> = timeline
        .events()
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Step(step) => Some((event.at, step)),
            _ => None,
        })
        .collect();
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(text, "\nplanner steps:");
    for (at, step) in steps {
        let _ = writeln!(text, "  {:>10}  {}", seconds(at), describe_step(step));
    }
}

pub fn describe_step(step: &Step) -> String {
    format!("{}: {}", step.group(), step_action(step))
}

/// What a step does, its group left out.
pub fn step_action(step: &Step) -> String {
    match step {
        Step::CreateGroup { voters, .. } => format!("create with voters {voters:?}"),
        Step::AddLearner { node, .. } => format!("add learner {node}"),
        Step::PromoteVoter { node, .. } => format!("promote {node} to voter"),
        Step::DemoteVoter { node, .. } => format!("demote {node} to learner"),
        Step::TransferLeader { to, .. } => format!("transfer leadership to {to}"),
        Step::RemoveMember { node, .. } => format!("remove {node}"),
        Step::PurgeReplica { node, .. } => format!("purge {node}'s replica"),
    }
}

/// `150,000,000`.
pub fn count(number: u64) -> String {
    let digits = number.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `migrate`: the migration's timeline, group by group.
fn migration(text: &mut String, outcome: &Outcome) {
    let report = &outcome.report;
    let _ = writeln!(
        text,
        "\nmigration: {} records ({}) modelled; {} copied to new replicas; {:.1} simulated s from the \
         first copy to the last purge",
        count(report.records_modeled),
        bytes(report.bytes_modeled),
        bytes(report.bytes_moved.unwrap_or(0)),
        report.migration_sim_seconds.unwrap_or(0.0)
    );
    if let Some(growth) = &report.growth {
        let done = growth
            .done_sim_seconds
            .map_or("never".to_string(), |at| format!("at {at:.1} simulated s"));
        let _ = writeln!(
            text,
            "growth: {} → {} groups on {} nodes, done {done}; {} splits ({} at a time) moved {} between \
             groups; {} copied to replicas against a least of {} (×{:.2}); {} replicas added, {} leaderships \
             moved",
            growth.groups_from,
            growth.groups_to,
            growth.nodes_used,
            growth.splits,
            growth.splits_at_once,
            bytes(growth.split_bytes),
            bytes(growth.bytes_moved),
            bytes(growth.bytes_moved_min),
            growth.bytes_moved_ratio,
            growth.replicas_added,
            growth.leaderships_moved
        );
    }
    let mut lines: BTreeMap<GroupId, Vec<(Duration, String)>> = BTreeMap::new();
    // Bytes copied to each new replica so far, for the line that says its copy is complete.
    let mut copied: BTreeMap<(GroupId, NodeId), (u64, u64)> = BTreeMap::new();
    for event in outcome.timeline.events() {
        let (group, line) = match &event.kind {
            EventKind::Step(step) => (step.group().clone(), step_action(step)),
            EventKind::Cutover { group } => {
                let jurisdiction = outcome
                    .layout
                    .groups
                    .iter()
                    .find(|(candidate, _)| candidate == group)
                    .map_or("", |(_, jurisdiction)| jurisdiction.as_str());
                (
                    group.clone(),
                    format!("cutover: every member inside {jurisdiction}"),
                )
            }
            EventKind::Copy(Copy::Started { group, node }) => {
                (group.clone(), format!("bulk copy to {node} started"))
            }
            EventKind::Copy(Copy::Range { group, to, bytes, .. }) => {
                let entry = copied.entry((group.clone(), *to)).or_default();
                entry.0 += 1;
                entry.1 += bytes;
                continue;
            }
            EventKind::Copy(Copy::Interrupted { group, reason, .. }) => {
                let reason = reason.strip_prefix("bulk: ").unwrap_or(reason);
                (group.clone(), format!("bulk copy interrupted: {reason}"))
            }
            EventKind::Copy(Copy::Complete { group, node }) => {
                let (ranges, total) = copied.get(&(group.clone(), *node)).copied().unwrap_or_default();
                (
                    group.clone(),
                    format!("bulk copy to {node} complete: {ranges} ranges, {}", bytes(total)),
                )
            }
            EventKind::Copy(Copy::Purged { group, node }) => {
                (group.clone(), format!("{node}'s bulk copies deleted"))
            }
            _ => continue,
        };
        lines.entry(group).or_default().push((event.at, line));
    }
    for (group, lines) in lines {
        let _ = writeln!(text, "  {group}");
        for (at, line) in lines {
            let _ = writeln!(text, "    {:>10}  {line}", seconds(at));
        }
    }
}

fn verdicts(text: &mut String, outcome: &Outcome, config: &RunConfig) {
    let violations = &outcome.report.violations;
    let _ = writeln!(text, "\ncheckers:");
    for checker in Checker::ALL {
        let count = violations.get(checker);
        let verdict = if count == 0 {
            "ok".to_string()
        } else {
            format!("FAILED ({count} violation{})", if count == 1 { "" } else { "s" })
        };
        let _ = writeln!(text, "  {:<18} {verdict}", checker.name());
    }
    let Some(first) = checkers::first(&outcome.findings) else {
        return;
    };
    let _ = writeln!(
        text,
        "\nfirst violation, {}: {}",
        first.at.map_or("at an unknown time".to_string(), |at| format!(
            "at {}",
            seconds(at)
        )),
        first.checker.name()
    );
    involved(text, first, &outcome.timeline);
    let _ = writeln!(text, "  {}", first.detail);
    if outcome.findings.len() > 1 {
        let _ = writeln!(text, "other violations:");
        for finding in outcome
            .findings
            .iter()
            .filter(|finding| !std::ptr::eq(*finding, first))
        {
            let at = finding.at.map_or("       ?".to_string(), seconds);
            let _ = writeln!(text, "  {at:>10}  {}", finding.line());
        }
    }
    let _ = writeln!(text, "replay: {}", config.replay_command());
}

/// The group, nodes and keys a violation involves, and who led the group at the time.
fn involved(text: &mut String, finding: &Finding, timeline: &Timeline) {
    let involved = &finding.involved;
    let mut parts = Vec::new();
    if let Some(group) = &involved.group {
        parts.push(format!("group {group}"));
    }
    if !involved.nodes.is_empty() {
        let mut list = involved.nodes.clone();
        list.dedup();
        parts.push(format!("nodes {}", nodes(&list)));
    }
    if !involved.keys.is_empty() {
        parts.push(format!("keys {}", involved.keys.join(", ")));
    }
    if !parts.is_empty() {
        let _ = writeln!(text, "  {}", parts.join("; "));
    }
    let (Some(group), Some(at)) = (&involved.group, finding.at) else {
        return;
    };
    let spans = timeline.leader_spans();
    let led = spans
        .get(group)
        .and_then(|spans| spans.iter().rev().find(|span| span.from <= at));
    if let Some(span) = led {
        let leader = match span.value {
            Some((node, term)) => format!("{node} (term {term})"),
            None => "nobody".to_string(),
        };
        let _ = writeln!(
            text,
            "  {group} was led by {leader} from {} to {}",
            seconds(span.from),
            seconds(span.to)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(count(150_000_000), "150,000,000");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(150_000_000 * 1_024), "143.1 GiB");
        assert_eq!(seconds(Duration::from_micros(12_345_678)), "12.346 s");
    }
}
