//! What the audit trail records: the facts a monitor or an auditor asks a node about — what the
//! residency fence refused, which changes to membership and leadership it admitted, what the node saw
//! its groups become, which replicas it deleted and on what proof, what operators asked for.
//!
//! Names and ids are plain strings and numbers, not the placement model's types: a verifier reads the
//! trail without the node's code. Each variant's fields are the on-disk format (postcard, which is not
//! self-describing): append variants at the end, never reorder or change one.

use serde::{Deserialize, Serialize};

/// One fact in a node's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The node opened its audit trail, at every start. `tail_cut_bytes` counts the bytes of an
    /// unfinished write a crash left at the end of the log, cut before this entry: never an
    /// acknowledged entry, since an entry is acknowledged only once synced.
    Opened { identity: String, tail_cut_bytes: u64 },
    /// The residency fence refused something.
    Refused(Refusal),
    /// A client call refused: made under a node's certificate, or for data with no lawful place.
    ClientRefused(ClientRefusal),
    /// A membership change or leadership transfer this node, as the group's leader, asked Raft for after
    /// the fence admitted it.
    ChangeAdmitted(Change),
    /// What this node saw one of its groups become (a new leader, term or membership), with the fence's
    /// verdict on it.
    GroupObserved(Observation),
    /// This node is about to delete its replica of a group, on the proof below; written and synced
    /// before the deletion's point of no return.
    Purge(PurgeProof),
    /// A purge whose entry was written, then failed: the replica is kept.
    PurgeFailed { group: String, reason: String },
    /// An operator's request on the admin endpoint, recorded before it runs — as nodes wrote it before
    /// the endpoint authenticated operators (an address, no name). Nodes now write `OperatorRequest`.
    AdminRequest(AdminAction),
    /// What came of an operator's request (the unauthenticated form; now `OperatorOutcome`).
    AdminOutcome {
        action: AdminAction,
        ok: bool,
        detail: String,
    },
    /// A request to change something, from an operator its certificate names, recorded before it runs.
    OperatorRequest(OperatorAction),
    /// What came of it.
    OperatorOutcome {
        action: OperatorAction,
        ok: bool,
        detail: String,
    },
    /// A request to change something the admin endpoint refused: the caller showed no operator
    /// certificate.
    AdminRefused(AdminRefusal),
    /// A read of records whose jurisdiction declares personal fields, by a client outside it (or of no
    /// attested country): answered with those fields pseudonymised, recorded before it is answered.
    OutsideRead(OutsideRead),
}

/// A read from outside a jurisdiction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideRead {
    /// Who read, as its certificate attests (`client `search` (US)`).
    pub caller: String,
    pub jurisdiction: String,
    pub group: String,
    /// `get` or `scan`.
    pub request: String,
    /// Records returned.
    pub records: u64,
    /// Personal fields replaced by pseudonyms (a value that is not a JSON object counts as one, replaced
    /// whole).
    pub fields_pseudonymised: u64,
}

/// Where the fence refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// A membership or leadership change.
    Membership,
    /// A group's data about to leave this node.
    Egress,
    /// A message arriving at this node.
    Ingress,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub enforcement: Enforcement,
    pub group: String,
    pub node: Option<u64>,
    pub site: Option<String>,
    pub country: Option<String>,
    pub jurisdiction: String,
    /// The fence's reason, as a code (`outside_jurisdiction`, `egress_outside_jurisdiction`, ...).
    pub reason: String,
    /// The refusal as the node reported it.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRefusalKind {
    /// A client call presented with a node's certificate: nodes talk Raft, services talk client.
    NodeCertificate,
    /// Data with no lawful place: no group is fenced to the jurisdiction, or the fence refused.
    Residency,
    /// The topology grants the calling service no such access to the jurisdiction (or the caller is an
    /// operator, whose certificate is for the admin endpoints).
    NotGranted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRefusal {
    pub kind: ClientRefusalKind,
    /// Who called, as its certificate attests (`n5 at ashburn (US)`, `client "billing"`).
    pub caller: String,
    pub jurisdiction: String,
    /// What was asked: `shard_map`, `get`, `put`, `delete`, `compare_and_set` or `scan`.
    pub request: String,
    pub reason: String,
}

/// A membership: voters and learners by node id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub group: String,
    /// The planner step (`add learner n4`, `transfer leadership to n2`, ...).
    pub step: String,
    /// The membership the fence judged the change against, and the one it admitted.
    pub from: Members,
    pub to: Members,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub group: String,
    pub jurisdiction: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub members: Members,
    /// The fence's verdict: the leader (if any) stands inside the jurisdiction and every member is inside
    /// or a declared legacy member. `false` would be a breach.
    pub admitted: bool,
    /// Members outside the jurisdiction (declared legacy members, or the breach).
    pub outside: Vec<u64>,
}

/// The proof a purge rests on: the group's leader, after confirming its leadership with a quorum, showed
/// a committed membership without this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeProof {
    pub group: String,
    pub leader: u64,
    pub term: u64,
    /// The index of the committed membership's log entry.
    pub log_index: u64,
    pub members: Members,
}

/// An operator's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAction {
    pub operator: Operator,
    /// `add_learner`, `move_leader`, `drain`.
    pub action: String,
    /// What it names, e.g. `users-eu: n5`.
    pub target: String,
}

/// Who asked, in entries written before the admin endpoint authenticated operators: `authenticated` is
/// `false` and the only thing known is the address the request came from — which says where, not who.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub remote_address: String,
    pub authenticated: bool,
}

/// An operator's request, with the operator as its verified certificate names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// The name in the operator certificate (`domicile://v1/operator/NAME`).
    pub operator: String,
    /// Where the request came from.
    pub remote_address: String,
    /// `add_learner`, `move_leader`, `step`, `drain`, ...
    pub action: String,
    /// What it names, e.g. `users-eu: n5`.
    pub target: String,
}

/// A state-changing admin request refused for want of an operator certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRefusal {
    /// Who the caller's verified certificate says it is (`client `billing``, `node n3 at ...`), or
    /// `no certificate`.
    pub caller: String,
    pub remote_address: String,
    /// The method and path, e.g. `POST /drain`.
    pub request: String,
    /// The HTTP status answered: 401 (no certificate) or 403 (a certificate, not an operator's).
    pub status: u16,
}

impl Event {
    /// A short, stable name of the event's kind, for monitors: `opened`, `refused.egress`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Opened { .. } => "opened",
            Event::Refused(refusal) => match refusal.enforcement {
                Enforcement::Membership => "refused.membership",
                Enforcement::Egress => "refused.egress",
                Enforcement::Ingress => "refused.ingress",
            },
            Event::ClientRefused(refusal) => match refusal.kind {
                ClientRefusalKind::NodeCertificate => "client_refused.node_certificate",
                ClientRefusalKind::Residency => "client_refused.residency",
                ClientRefusalKind::NotGranted => "client_refused.not_granted",
            },
            Event::ChangeAdmitted(_) => "change_admitted",
            Event::GroupObserved(_) => "group_observed",
            Event::Purge(_) => "purge",
            Event::PurgeFailed { .. } => "purge_failed",
            Event::AdminRequest(_) => "admin.request",
            Event::AdminOutcome { .. } => "admin.outcome",
            Event::OperatorRequest(_) => "admin.request",
            Event::OperatorOutcome { .. } => "admin.outcome",
            Event::AdminRefused(_) => "refused.admin",
            Event::OutsideRead(_) => "outside_read",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Event::Opened {
                identity,
                tail_cut_bytes,
            } => {
                let cut = if *tail_cut_bytes > 0 {
                    format!(" (cut a torn tail of {tail_cut_bytes} bytes)")
                } else {
                    String::new()
                };
                format!("audit trail opened by {identity}{cut}")
            }
            Event::Refused(refusal) => refusal.message.clone(),
            Event::ClientRefused(refusal) => format!(
                "refused {} from {} on `{}`: {}",
                refusal.request, refusal.caller, refusal.jurisdiction, refusal.reason
            ),
            Event::ChangeAdmitted(change) => format!(
                "{}: {} admitted, {} -> {}",
                change.group,
                change.step,
                members(&change.from),
                members(&change.to)
            ),
            Event::GroupObserved(seen) => format!(
                "{}: term {}, leader {}, {}: {}",
                seen.group,
                seen.term,
                seen.leader.map_or("none".into(), |leader| format!("n{leader}")),
                members(&seen.members),
                if seen.admitted {
                    format!("inside {}", seen.jurisdiction)
                } else {
                    format!("OUTSIDE {}", seen.jurisdiction)
                }
            ),
            Event::Purge(proof) => format!(
                "{}: purging this replica: leader n{} showed membership {} committed at index {} in term {}",
                proof.group,
                proof.leader,
                members(&proof.members),
                proof.log_index,
                proof.term
            ),
            Event::PurgeFailed { group, reason } => format!("{group}: purge failed, replica kept: {reason}"),
            Event::AdminRequest(action) => format!(
                "{} requested {} {} (unauthenticated: {})",
                action.operator.remote_address, action.action, action.target, !action.operator.authenticated
            ),
            Event::AdminOutcome { action, ok, detail } => format!(
                "{} {} from {}: {} {detail}",
                action.action,
                action.target,
                action.operator.remote_address,
                if *ok { "done" } else { "failed:" }
            ),
            Event::OperatorRequest(action) => format!(
                "operator `{}` ({}) requested {} {}",
                action.operator, action.remote_address, action.action, action.target
            ),
            Event::OperatorOutcome { action, ok, detail } => format!(
                "{} {} by operator `{}`: {} {detail}",
                action.action,
                action.target,
                action.operator,
                if *ok { "done" } else { "failed:" }
            ),
            Event::AdminRefused(refusal) => format!(
                "refused {} from {} ({}): {}",
                refusal.request,
                refusal.caller,
                refusal.remote_address,
                if refusal.status == 401 {
                    "no operator certificate"
                } else {
                    "not an operator"
                }
            ),
            Event::OutsideRead(read) => format!(
                "{}: {} read {} record(s) of `{}` from outside it, {} personal field(s) pseudonymised",
                read.group, read.caller, read.records, read.jurisdiction, read.fields_pseudonymised
            ),
        }
    }
}

fn members(members: &Members) -> String {
    let ids = |nodes: &[u64]| {
        nodes
            .iter()
            .map(|node| format!("n{node}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "voters [{}] learners [{}]",
        ids(&members.voters),
        ids(&members.learners)
    )
}
