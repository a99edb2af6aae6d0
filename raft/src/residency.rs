//! The fence at run time: every membership change, every message carrying a group's data, every vote and
//! every append a node receives is checked against the group's jurisdiction, and every refusal is an
//! incident — counted, and logged with the group, node, site, country and jurisdiction.
//!
//! Three enforcement points (defence in depth), each independent of the others:
//!
//! 1. **Membership** ([`GroupFence::admit_change`], [`GroupFence::admit_leader`]): the host calls openraft
//!    only with a membership or leader the placement fence admitted.
//! 2. **Egress** ([`GroupFence::check_egress`]): before entries or snapshot bytes leave this node, the
//!    receiving node must stand inside the jurisdiction or be a declared legacy member still in the group.
//! 3. **Ingress** ([`GroupFence::check_ingress`], [`GroupFence::check_leader_peer`]): a node outside the
//!    jurisdiction refuses to store the group's data, and no node accepts votes or entries from a would-be
//!    leader outside it — so even a group that still has legacy voters outside never elects one of them.
//! 4. **Client access** ([`Incidents::refuse_node_as_client`]): client calls (records, shard maps) are
//!    served to client services' certificates only. A node's certificate is refused whatever its site:
//!    otherwise a node the egress fence never sends a group's data could simply ask for it as a client.
//!
//! Every refusal passes through [`Incidents`], which also records it in the node's audit trail
//! ([`crate::audit`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use placement::{
    Country, Fence, FencedLeader, FencedMembership, GroupPolicy, Membership, NodeId, Refusal, RefusalReason,
    SiteName, Topology,
};

use crate::audit::{AuditSink, ClientRefusal, ClientRefusalKind, Event, NoAudit, OutsideRead, refusal_event};

/// Where a refusal happened, for counting, logs and the audit trail (the trail's own type, so the two
/// can't drift apart).
pub use crate::audit::Enforcement;

/// A client call (a record operation or a shard-map request) that arrived under a node's certificate.
/// Nodes talk Raft and services talk client: a node inside the jurisdiction has no business reading
/// records as a client either, and a node outside would be reading around the egress fence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{node} at {site} ({country}) presented a node certificate for a client call ({request}) on \
     jurisdiction `{jurisdiction}`: client calls are served to client services only"
)]
pub struct NodeAsClient {
    pub node: NodeId,
    pub site: SiteName,
    pub country: Country,
    /// The jurisdiction the call asked for, as the caller spelt it.
    pub jurisdiction: String,
    /// What was asked: `shard_map`, `get`, `put`, `delete`, `compare_and_set` or `scan`.
    pub request: &'static str,
}

impl NodeAsClient {
    /// Who the certificate says the caller is: `n9 at ashburn (US)`.
    pub fn caller(&self) -> String {
        format!("{} at {} ({})", self.node, self.site, self.country)
    }
}

/// Counters of refused actions on one node (monotonic; exported as metrics), and the audit trail every
/// refusal is recorded in.
pub struct Incidents {
    membership_refused: AtomicU64,
    egress_blocked: AtomicU64,
    ingress_refused: AtomicU64,
    client_calls_refused: AtomicU64,
    client_calls_forbidden: AtomicU64,
    outside_reads: AtomicU64,
    audit: Arc<dyn AuditSink>,
}

impl Default for Incidents {
    fn default() -> Incidents {
        Incidents::with_audit(Arc::new(NoAudit))
    }
}

impl std::fmt::Debug for Incidents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incidents")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IncidentCounts {
    pub membership_refused: u64,
    pub egress_blocked: u64,
    pub ingress_refused: u64,
    /// Client calls refused because the caller's certificate was a node's ([`NodeAsClient`]).
    #[serde(default)]
    pub client_calls_refused: u64,
    /// Client calls outside the calling service's grants (or from an operator's certificate).
    #[serde(default)]
    pub client_calls_forbidden: u64,
    /// Reads answered with personal fields pseudonymised, for callers outside the jurisdiction.
    #[serde(default)]
    pub outside_reads: u64,
}

impl Incidents {
    /// Counters at zero, refusals recorded in `audit`.
    pub fn with_audit(audit: Arc<dyn AuditSink>) -> Incidents {
        Incidents {
            membership_refused: AtomicU64::new(0),
            egress_blocked: AtomicU64::new(0),
            ingress_refused: AtomicU64::new(0),
            client_calls_refused: AtomicU64::new(0),
            client_calls_forbidden: AtomicU64::new(0),
            outside_reads: AtomicU64::new(0),
            audit,
        }
    }

    pub fn record(&self, enforcement: Enforcement, refusal: &Refusal) {
        let counter = match enforcement {
            Enforcement::Membership => &self.membership_refused,
            Enforcement::Egress => &self.egress_blocked,
            Enforcement::Ingress => &self.ingress_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            enforcement = ?enforcement,
            group = %refusal.group,
            node = ?refusal.node,
            site = ?refusal.site,
            country = ?refusal.country,
            jurisdiction = %refusal.jurisdiction,
            reason = ?refusal.reason,
            "residency incident: {refusal}"
        );
        self.audit.record(refusal_event(enforcement, refusal));
    }

    /// Client-access enforcement: counts and logs a client call made under a node's certificate.
    pub fn refuse_node_as_client(&self, refusal: NodeAsClient) -> NodeAsClient {
        self.client_calls_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            enforcement = "client_access",
            node = %refusal.node,
            site = %refusal.site,
            country = %refusal.country,
            jurisdiction = %refusal.jurisdiction,
            request = refusal.request,
            "residency incident: {refusal}"
        );
        self.audit.record(Event::ClientRefused(ClientRefusal {
            kind: ClientRefusalKind::NodeCertificate,
            caller: refusal.caller(),
            jurisdiction: refusal.jurisdiction.clone(),
            request: refusal.request.to_string(),
            reason: refusal.to_string(),
        }));
        refusal
    }

    /// Authorisation: counts, logs and records a client call outside the caller's grants.
    pub fn forbid_client_call(&self, refusal: ClientRefusal) {
        debug_assert_eq!(refusal.kind, ClientRefusalKind::NotGranted);
        self.client_calls_forbidden.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            enforcement = "client_grants",
            caller = %refusal.caller,
            jurisdiction = %refusal.jurisdiction,
            request = %refusal.request,
            "client call refused: {}",
            refusal.reason
        );
        self.audit.record(Event::ClientRefused(refusal));
    }

    /// Counts and records a read answered pseudonymised to a caller outside the jurisdiction.
    pub fn record_outside_read(&self, read: OutsideRead) {
        self.outside_reads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            caller = %read.caller,
            jurisdiction = %read.jurisdiction,
            group = %read.group,
            fields = read.fields_pseudonymised,
            "read from outside the jurisdiction, personal fields pseudonymised"
        );
        self.audit.record(Event::OutsideRead(read));
    }

    pub fn counts(&self) -> IncidentCounts {
        IncidentCounts {
            membership_refused: self.membership_refused.load(Ordering::Relaxed),
            egress_blocked: self.egress_blocked.load(Ordering::Relaxed),
            ingress_refused: self.ingress_refused.load(Ordering::Relaxed),
            client_calls_refused: self.client_calls_refused.load(Ordering::Relaxed),
            client_calls_forbidden: self.client_calls_forbidden.load(Ordering::Relaxed),
            outside_reads: self.outside_reads.load(Ordering::Relaxed),
        }
    }
}

/// One group's fence on one node: its policy, the topology, and the legacy members (outside the
/// jurisdiction, declared by the operator when the group was fenced) that may still receive its data.
#[derive(Debug)]
pub struct GroupFence {
    pub raft_group: u64,
    pub policy: GroupPolicy,
    pub topology: Arc<Topology>,
    legacy: BTreeSet<NodeId>,
    incidents: Arc<Incidents>,
}

impl GroupFence {
    pub fn new(
        raft_group: u64,
        policy: GroupPolicy,
        topology: Arc<Topology>,
        legacy: BTreeSet<NodeId>,
        incidents: Arc<Incidents>,
    ) -> GroupFence {
        // Legacy members are by definition outside; an inside node listed as legacy is a caller bug.
        assert!(
            legacy
                .iter()
                .all(|&node| !topology.is_inside(node, &policy.jurisdiction)),
            "legacy members of {} must be outside its jurisdiction",
            policy.group
        );
        GroupFence {
            raft_group,
            policy,
            topology,
            legacy,
            incidents,
        }
    }

    fn refuse(&self, enforcement: Enforcement, refusal: Refusal) -> Refusal {
        self.incidents.record(enforcement, &refusal);
        refusal
    }

    fn inside(&self, node: NodeId) -> bool {
        self.topology.is_inside(node, &self.policy.jurisdiction)
    }

    pub fn is_legacy(&self, node: NodeId) -> bool {
        self.legacy.contains(&node)
    }

    /// Membership enforcement: the next membership, admitted by the placement fence or refused (and counted).
    pub fn admit_change(
        &self,
        current: &Membership,
        proposed: &Membership,
    ) -> Result<FencedMembership, Refusal> {
        Fence::admit(&self.topology, &self.policy, current, proposed)
            .map_err(|refusal| self.refuse(Enforcement::Membership, refusal))
    }

    pub fn admit_leader(&self, membership: &Membership, leader: NodeId) -> Result<FencedLeader, Refusal> {
        let fenced = self.admit_change(membership, membership)?;
        Fence::admit_leader(&self.topology, &self.policy, &fenced, leader)
            .map_err(|refusal| self.refuse(Enforcement::Membership, refusal))
    }

    /// Egress enforcement: may this group's data go to `target`, given the current membership?
    pub fn check_egress(&self, target: NodeId, membership: &Membership) -> Result<(), Refusal> {
        #[cfg(feature = "canaries")]
        if canary::egress_off() {
            return Ok(());
        }
        if self.topology.site_of(target).is_some()
            && (self.inside(target) || (self.legacy.contains(&target) && membership.contains(target)))
        {
            return Ok(());
        }
        let refusal = Refusal::new(
            &self.topology,
            &self.policy,
            target,
            RefusalReason::EgressOutsideJurisdiction,
        );
        Err(self.refuse(Enforcement::Egress, refusal))
    }

    /// Ingress enforcement: may this node (`me`, as its own certificate attests) store the group's data?
    pub fn check_ingress(&self, me: NodeId) -> Result<(), Refusal> {
        #[cfg(feature = "canaries")]
        if canary::ingress_off() {
            return Ok(());
        }
        if self.inside(me) || self.legacy.contains(&me) {
            return Ok(());
        }
        let refusal = Refusal::new(
            &self.topology,
            &self.policy,
            me,
            RefusalReason::IngressOutsideJurisdiction,
        );
        Err(self.refuse(Enforcement::Ingress, refusal))
    }

    /// Ingress enforcement on votes and appends: the would-be leader (`peer`, as its certificate attests)
    /// must stand inside the jurisdiction. Legacy voters can still vote for inside candidates; they can
    /// never win.
    pub fn check_leader_peer(&self, peer: NodeId) -> Result<(), Refusal> {
        #[cfg(feature = "canaries")]
        if canary::ingress_off() {
            return Ok(());
        }
        if self.inside(peer) {
            return Ok(());
        }
        let refusal = Refusal::new(
            &self.topology,
            &self.policy,
            peer,
            RefusalReason::CandidateOutsideJurisdiction,
        );
        Err(self.refuse(Enforcement::Ingress, refusal))
    }
}

/// Planted bugs: for the simulator's `egress-off` canary, the egress fence lets everything through; for
/// the multi-host suite's `ingress-off` (a node started with `DOMICILE_CANARY=ingress-off`), the ingress
/// fence does, and a legacy replica outside the jurisdiction campaigns like any other (the two guards
/// that keep an outside voter from leading). Compiled only with the `canaries` feature, which no
/// production build enables; they exist to prove that the checkers catch a fence that is switched off.
#[cfg(feature = "canaries")]
pub mod canary {
    use std::sync::atomic::{AtomicBool, Ordering};

    static EGRESS_OFF: AtomicBool = AtomicBool::new(false);
    static INGRESS_OFF: AtomicBool = AtomicBool::new(false);

    pub fn set_ingress_off(off: bool) {
        INGRESS_OFF.store(off, Ordering::Relaxed);
    }

    pub fn ingress_off() -> bool {
        INGRESS_OFF.load(Ordering::Relaxed)
    }

    pub fn set_egress_off(off: bool) {
        EGRESS_OFF.store(off, Ordering::Relaxed);
    }

    pub fn egress_off() -> bool {
        EGRESS_OFF.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use placement::TopologyFile;

    const TOPOLOGY: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1, 2]
[[site]]
name = "hamar"
country = "NO"
nodes = [3]
[[site]]
name = "ashburn"
country = "US"
nodes = [4, 5]
[[group]]
name = "users-eu"
jurisdiction = "EU"
voters = 1
"#;

    fn fence(legacy: &[u64]) -> (GroupFence, Arc<Incidents>) {
        let file = TopologyFile::parse(TOPOLOGY).unwrap();
        let policy = file.policies.values().next().unwrap().clone();
        let incidents = Arc::new(Incidents::default());
        let legacy = legacy.iter().map(|&id| NodeId(id)).collect();
        (
            GroupFence::new(7, policy, Arc::new(file.topology), legacy, incidents.clone()),
            incidents,
        )
    }

    #[test]
    fn egress_reaches_inside_nodes_and_legacy_members_only() {
        let (fence, incidents) = fence(&[4]);
        let membership = Membership::new([NodeId(1), NodeId(4)], []);
        assert!(
            fence.check_egress(NodeId(2), &membership).is_ok(),
            "inside, joining or not"
        );
        assert!(
            fence.check_egress(NodeId(4), &membership).is_ok(),
            "a legacy member still in the group"
        );
        let refusal = fence.check_egress(NodeId(5), &membership).unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::EgressOutsideJurisdiction);
        assert_eq!(refusal.site.as_ref().map(|site| site.0.as_str()), Some("ashburn"));
        // Norway is outside the EU; a legacy node that has left the group gets nothing more.
        assert!(fence.check_egress(NodeId(3), &membership).is_err());
        assert!(
            fence
                .check_egress(NodeId(4), &Membership::new([NodeId(1)], []))
                .is_err()
        );
        assert!(
            fence.check_egress(NodeId(99), &membership).is_err(),
            "unknown nodes get nothing"
        );
        assert_eq!(incidents.counts().egress_blocked, 4);
    }

    #[test]
    fn ingress_and_leadership_stay_inside() {
        let (fence, incidents) = fence(&[4]);
        assert!(fence.check_ingress(NodeId(1)).is_ok());
        assert!(
            fence.check_ingress(NodeId(4)).is_ok(),
            "a legacy replica still stores until removed"
        );
        assert_eq!(
            fence.check_ingress(NodeId(5)).unwrap_err().reason,
            RefusalReason::IngressOutsideJurisdiction
        );
        assert_eq!(
            fence.check_ingress(NodeId(3)).unwrap_err().reason,
            RefusalReason::IngressOutsideJurisdiction
        );
        assert!(fence.check_leader_peer(NodeId(2)).is_ok());
        let refusal = fence.check_leader_peer(NodeId(4)).unwrap_err();
        assert_eq!(
            refusal.reason,
            RefusalReason::CandidateOutsideJurisdiction,
            "legacy voters never lead"
        );
        assert_eq!(
            incidents.counts(),
            IncidentCounts {
                membership_refused: 0,
                egress_blocked: 0,
                ingress_refused: 3,
                ..IncidentCounts::default()
            }
        );
        let current = Membership::new([NodeId(1), NodeId(4)], []);
        assert!(
            fence
                .admit_change(&current, &Membership::new([NodeId(1), NodeId(4)], [NodeId(5)]))
                .is_err()
        );
        assert!(fence.admit_leader(&current, NodeId(4)).is_err());
        assert_eq!(incidents.counts().membership_refused, 2);
    }
}
