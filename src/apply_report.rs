//! What `placement apply`, `site evacuate` and `node decommission` tell the operator: the plan, each step as
//! it starts and ends, a new replica's progress while it catches up, and the purge attestation of every
//! removed replica — for a person (lines on stdout, a progress bar on stderr when it is a terminal) or, with
//! `-o json`, for a machine: one JSON object a line, each with an `event` field.
//!
//! What the progress measures: log entries applied by the new replica, against the leader's committed
//! index when the wait began (the replica must reach it before it may vote). A replica filled by a snapshot
//! shows it as one jump. Bytes are not measured: no node reports them.

use std::io::Write;
use std::time::{Duration, Instant};

use placement::{GroupReport, NodeId, Plan, Step, Topology};
use serde::Serialize;
use serde_json::json;

use crate::operator_cli::Output;
use crate::placement_cli::{describe_node, render_plan, render_step};

pub struct Reporter {
    json: bool,
    topology: Topology,
}

/// A removed replica whose purge is not confirmed yet: its group, its node, and where the node says
/// its purge stands (`waiting_for_store` or `deleting`; none if it has not begun, or the node is silent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPurge {
    pub group: String,
    pub node: NodeId,
    pub state: Option<String>,
}

/// What became of one removed replica.
#[derive(Clone, Debug, Serialize)]
pub struct Attestation {
    pub group: String,
    pub node: u64,
    pub site: String,
    pub country: String,
    /// `purged` only with the node's record of the proof it acted on; `unconfirmed` otherwise.
    pub state: PurgeState,
    /// The leader whose committed membership left the node out.
    pub leader: Option<u64>,
    pub term: Option<u64>,
    /// The index of that membership's log entry.
    pub log_index: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// When the node's copy was gone, by its clock (RFC 3339, UTC).
    pub deleted_at: Option<String>,
    /// Why the purge is not confirmed.
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeState {
    Purged,
    Unconfirmed,
}

/// How a run ended; the exit code follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step done, every removed replica's purge attested.
    Done,
    /// The plan, printed and not executed.
    DryRun,
    /// The fence refused a step.
    Refused,
    /// No compliant placement, a node the plan needs is down, or the cluster would not converge.
    Stopped,
    /// An evacuation left groups that have no other place inside their jurisdiction where they are.
    UnderReplicated,
    /// The placement is applied, but not every removed replica's purge could be confirmed.
    PurgeUnconfirmed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Done | Outcome::DryRun => 0,
            _ => 1,
        }
    }
}

impl Reporter {
    pub fn new(output: Output, topology: Topology) -> Reporter {
        Reporter {
            json: matches!(output, Output::Json),
            topology,
        }
    }

    fn emit(&self, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn say(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    pub fn node(&self, node: NodeId) -> String {
        describe_node(&self.topology, node)
    }

    /// The scope of the run, before its plan (`evacuating site dublin-a: ...`).
    pub fn scope(&self, description: &str, draining: &[NodeId]) {
        if self.json {
            let draining: Vec<u64> = draining.iter().map(|node| node.0).collect();
            self.emit(json!({"event": "scope", "description": description, "draining": draining}));
        } else {
            self.say(description);
        }
    }

    pub fn plan(&self, plan: &Plan) {
        if self.json {
            self.emit(json!({"event": "plan", "steps": plan.steps, "groups": plan.groups}));
        } else if plan.groups.is_empty() {
            self.say("no group in scope");
        } else {
            out!("{}", render_plan(&self.topology, plan));
        }
    }

    pub fn step_started(&self, index: usize, step: &Step) {
        if self.json {
            self.emit(self.step_event(index, step, "started"));
        }
    }

    pub fn step_done(&self, index: usize, step: &Step, elapsed: Duration) {
        if self.json {
            let mut event = self.step_event(index, step, "done");
            event["elapsed_ms"] = json!(elapsed.as_millis() as u64);
            self.emit(event);
        } else {
            self.say(&format!(
                "step {index}: {} ... done ({:.1} s)",
                render_step(&self.topology, step),
                elapsed.as_secs_f64()
            ));
        }
    }

    /// A step that did not take effect: `state` is `refused` (by the fence; `refusal` is its typed answer) or
    /// `failed`.
    pub fn step_failed(
        &self,
        index: usize,
        step: &Step,
        state: &str,
        error: &str,
        refusal: Option<&serde_json::Value>,
    ) {
        if self.json {
            let mut event = self.step_event(index, step, state);
            event["error"] = json!(error);
            event["refusal"] = json!(refusal);
            self.emit(event);
        } else {
            self.say(&format!(
                "step {index}: {} ... {state}: {error}",
                render_step(&self.topology, step)
            ));
        }
    }

    fn step_event(&self, index: usize, step: &Step, state: &str) -> serde_json::Value {
        json!({
            "event": "step",
            "index": index,
            "state": state,
            "step": step,
            "description": render_step(&self.topology, step),
        })
    }

    /// A note on the way (a retry, a wait), for a person; an event `note` for a machine.
    pub fn note(&self, message: &str) {
        if self.json {
            self.emit(json!({"event": "note", "message": message}));
        } else {
            self.say(&format!("  {message}"));
        }
    }

    /// Progress of `node`'s replica of `group` towards the leader's committed index `target`.
    pub fn catch_up(&self, group: &str, node: NodeId, applied: u64, target: u64) -> CatchUp<'_> {
        let bar = (!self.json).then(|| {
            let bar = indicatif::ProgressBar::new(target);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "  {msg} [{bar:30}] {pos}/{len} entries applied, {per_sec}, ETA {eta}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("{} catching up on {group}", self.node(node)));
            bar.set_position(applied.min(target));
            bar
        });
        CatchUp {
            reporter: self,
            group: group.to_string(),
            node,
            first: (Instant::now(), applied),
            target,
            last_event: None,
            bar,
        }
    }

    /// Says which removed replicas are not purged yet, and where each node says its purge stands.
    pub fn purge_waiting(&self, waiting: &[PendingPurge], waited: Duration) {
        let pending: Vec<String> = waiting
            .iter()
            .map(|purge| {
                let state = match purge.state.as_deref() {
                    Some("waiting_for_store") => {
                        " (its store is still open: a snapshot build or a reader holds it; deleted once it \
                         closes, a minute at most)"
                    }
                    Some("deleting") => " (deleting its files)",
                    _ => "",
                };
                format!("{} on {}{state}", purge.group, self.node(purge.node))
            })
            .collect();
        if self.json {
            let pending: Vec<serde_json::Value> = waiting
                .iter()
                .map(|purge| json!({"group": purge.group, "node": purge.node.0, "state": purge.state}))
                .collect();
            self.emit(
                json!({"event": "purge_wait", "pending": pending, "waited_ms": waited.as_millis() as u64}),
            );
        } else {
            self.say(&format!(
                "  waiting for the removed replicas' nodes to purge them on their leader's proof: {}",
                pending.join(", ")
            ));
        }
    }

    pub fn attestations(&self, attestations: &[Attestation]) {
        if self.json {
            for attestation in attestations {
                let mut event = serde_json::to_value(attestation).expect("an attestation serializes");
                event["event"] = json!("purge");
                self.emit(event);
            }
            return;
        }
        if attestations.is_empty() {
            return;
        }
        self.say("purge attestation:");
        for attestation in attestations {
            self.say(&render_attestation(attestation));
        }
    }

    /// Groups an evacuation leaves where they are, and why.
    pub fn left_in_place(&self, reports: &[GroupReport]) {
        if self.json {
            for report in reports {
                self.emit(json!({"event": "under_replicated", "group": report.group, "jurisdiction": report.jurisdiction, "problems": report.problems}));
            }
            return;
        }
        for report in reports {
            self.say(&format!(
                "group {} ({}) stays where it is, under-replicated: no other place inside its jurisdiction (nothing outside it is considered)",
                report.group, report.jurisdiction
            ));
        }
    }

    pub fn end(&self, outcome: Outcome, message: &str) {
        if self.json {
            self.emit(json!({"event": "end", "outcome": outcome, "message": message, "exit_code": outcome.exit_code()}));
        } else {
            self.say(message);
        }
    }
}

fn render_attestation(attestation: &Attestation) -> String {
    let who = format!(
        "  {} on n{} ({}, {})",
        attestation.group, attestation.node, attestation.site, attestation.country
    );
    match attestation.state {
        PurgeState::Purged => {
            let nodes = |ids: &[u64]| {
                ids.iter()
                    .map(|id| format!("n{id}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "{who}: PURGED at {}: leader n{} showed the committed membership voters {{{}}} learners {{{}}} \
                 (term {}, log index {}) without it",
                attestation.deleted_at.as_deref().unwrap_or("?"),
                attestation.leader.unwrap_or(0),
                nodes(&attestation.voters),
                nodes(&attestation.learners),
                attestation.term.unwrap_or(0),
                attestation.log_index.unwrap_or(0)
            )
        }
        PurgeState::Unconfirmed => format!(
            "{who}: NOT CONFIRMED: {}",
            attestation
                .reason
                .as_deref()
                .unwrap_or("no proof of deletion seen")
        ),
    }
}

/// A catch-up being watched; see [`Reporter::catch_up`].
pub struct CatchUp<'a> {
    reporter: &'a Reporter,
    group: String,
    node: NodeId,
    first: (Instant, u64),
    target: u64,
    last_event: Option<Instant>,
    bar: Option<indicatif::ProgressBar>,
}

impl CatchUp<'_> {
    /// The replica has applied `applied` entries; a JSON event at most once a second.
    pub fn update(&mut self, applied: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(applied.min(self.target));
            return;
        }
        if self
            .last_event
            .is_some_and(|last| last.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_event = Some(Instant::now());
        self.emit(applied, false);
    }

    pub fn finish(self, applied: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(applied.min(self.target));
                bar.finish_and_clear();
                self.reporter.say(&format!(
                    "  {} caught up on {}: {applied} entries applied (the leader had committed {})",
                    self.reporter.node(self.node),
                    self.group,
                    self.target
                ));
            }
            None => self.emit(applied, true),
        }
    }

    fn emit(&self, applied: u64, caught_up: bool) {
        let elapsed = self.first.0.elapsed().as_secs_f64();
        let copied = applied.saturating_sub(self.first.1);
        let rate = if elapsed > 0.0 {
            copied as f64 / elapsed
        } else {
            0.0
        };
        let left = self.target.saturating_sub(applied);
        let eta = (rate > 0.0).then(|| left as f64 / rate);
        self.reporter.emit(json!({
            "event": "catch_up",
            "group": self.group,
            "node": self.node.0,
            "applied": applied,
            "target": self.target,
            "entries_per_s": (rate * 10.0).round() / 10.0,
            "eta_s": eta.map(|eta| (eta * 10.0).round() / 10.0),
            "caught_up": caught_up,
        }));
    }
}
