//! The node's audit trail, as the replica groups see it: a sink that events are recorded into.
//!
//! The host records every refusal (through [`crate::residency::Incidents`], the fence's one choke point
//! for counting them), every membership change and leadership transfer the fence admitted, what it sees
//! its groups become ([`crate::host::Host::observe_groups`]), every purge with its proof, and every
//! client call refused for residency. Recording never blocks: refusals happen inside synchronous fence
//! checks on the runtime's threads. Where the node answers someone — a refused request, an admitted
//! change, a purge — it first awaits [`AuditSink::durable`], so nothing it acknowledged is missing from
//! the trail after a crash.
//!
//! In production the sink is the file-backed, signed `audit::AuditLog` (its writer thread does the I/O);
//! the simulator, which must stay deterministic, runs with [`NoAudit`] or [`MemoryAudit`]. This module
//! reads no clock: the file-backed sink stamps entries with the clock the node gave it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use placement::{GroupId, Membership, Refusal, RefusalReason, Step};

pub use ::audit::event::{
    AdminAction, Change, ClientRefusal, ClientRefusalKind, Enforcement, Event, Members, Observation,
    Operator, OutsideRead, PurgeProof,
};

/// Completes once what was recorded before it is durable; an error if the trail can't record it.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Where a node's audit events go.
pub trait AuditSink: Send + Sync + 'static {
    /// Records `event`, in order after every event recorded before. Returns at once.
    fn record(&self, event: Event);

    /// Completes once every event recorded before the call is durable.
    fn durable(&self) -> Durable;
}

/// No audit trail (the default; tests and simulations that don't look at one).
#[derive(Debug, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _event: Event) {}

    fn durable(&self) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Events kept in memory, in order: for the simulator and tests.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<Event>>,
}

impl MemoryAudit {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("audit events lock").clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, event: Event) {
        self.events.lock().expect("audit events lock").push(event);
    }

    fn durable(&self) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The production sink: the signed trail on disk, written and synced on its own thread.
impl AuditSink for ::audit::AuditLog {
    fn record(&self, event: Event) {
        // The entry's own completion is not awaited here; `durable` covers it, and a failure is counted
        // by the log (and poisons it: every later entry fails too).
        drop(self.submit(event));
    }

    fn durable(&self) -> Durable {
        let durable = self.durable_now();
        Box::pin(async move { durable.await.map_err(|error| error.to_string()) })
    }
}

/// A fence refusal as the trail records it.
pub fn refusal_event(enforcement: Enforcement, refusal: &Refusal) -> Event {
    Event::Refused(::audit::event::Refusal {
        enforcement,
        group: refusal.group.0.clone(),
        node: refusal.node.map(|node| node.0),
        site: refusal.site.as_ref().map(|site| site.0.clone()),
        country: refusal.country.map(|country| country.to_string()),
        jurisdiction: refusal.jurisdiction.clone(),
        reason: reason_code(refusal.reason),
        message: refusal.to_string(),
    })
}

/// `OutsideJurisdiction` as `outside_jurisdiction`.
fn reason_code(reason: RefusalReason) -> String {
    let mut code = String::new();
    for (index, character) in format!("{reason:?}").chars().enumerate() {
        if character.is_ascii_uppercase() {
            if index > 0 {
                code.push('_');
            }
            code.push(character.to_ascii_lowercase());
        } else {
            code.push(character);
        }
    }
    code
}

pub fn members(membership: &Membership) -> Members {
    Members {
        voters: membership.voters.iter().map(|node| node.0).collect(),
        learners: membership.learners.iter().map(|node| node.0).collect(),
    }
}

/// A planner step in words: `add learner n4`, `transfer leadership to n2`.
pub fn describe_step(step: &Step) -> String {
    match step {
        Step::CreateGroup { voters, .. } => format!(
            "create with voters {}",
            voters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Step::AddLearner { node, .. } => format!("add learner {node}"),
        Step::PromoteVoter { node, .. } => format!("promote {node} to voter"),
        Step::DemoteVoter { node, .. } => format!("demote {node} to learner"),
        Step::TransferLeader { to, .. } => format!("transfer leadership to {to}"),
        Step::RemoveMember { node, .. } => format!("remove {node}"),
        Step::PurgeReplica { node, .. } => format!("purge the replica on {node}"),
    }
}

/// A membership change admitted by the fence, about to be proposed.
pub fn change_event(group: &GroupId, step: String, from: &Membership, to: &Membership) -> Event {
    Event::ChangeAdmitted(Change {
        group: group.0.clone(),
        step,
        from: members(from),
        to: members(to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_recorded_as_snake_case_codes() {
        assert_eq!(
            reason_code(RefusalReason::EgressOutsideJurisdiction),
            "egress_outside_jurisdiction"
        );
        assert_eq!(reason_code(RefusalReason::NoVoters), "no_voters");
    }
}
