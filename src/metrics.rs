//! The node's Prometheus metrics. Names are stable and prefixed `domicile_`, as etcd's are `etcd_`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use raft::host::GroupStatus;
use raft::residency::IncidentCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
    pub jurisdiction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    has_leader: Family<GroupLabel, Gauge>,
    is_leader: Family<GroupLabel, Gauge>,
    leader_changes: Family<GroupLabel, Counter>,
    applied_index: Family<GroupLabel, Gauge>,
    snapshots_sent: Family<GroupLabel, Gauge>,
    snapshots_installed: Family<GroupLabel, Gauge>,
    snapshot_index: Family<GroupLabel, Gauge>,
    fence_refusals: Counter<u64, AtomicU64>,
    egress_blocked: Counter<u64, AtomicU64>,
    ingress_refused: Counter<u64, AtomicU64>,
    client_calls_refused: Counter<u64, AtomicU64>,
    client_calls_forbidden: Counter<u64, AtomicU64>,
    outside_reads: Counter<u64, AtomicU64>,
    audit_entries: Gauge,
    audit_write_failures: Counter<u64, AtomicU64>,
    pub request_seconds: Family<OpLabel, Histogram>,
    /// Membership steps the repair driver executed (replacing members found down).
    pub repair_steps: Family<GroupLabel, Counter>,
    /// Replicas this node deleted after their group committed a membership without it.
    pub replicas_purged: Family<GroupLabel, Counter>,
    /// Client sessions the groups led here forgot, idle past their bound (`raft::session_clock`).
    pub sessions_expired: Family<GroupLabel, Counter>,
    /// Elections this node started because its leader fell silent past its lease (`raft::prompt_election`).
    pub elections_prompted: Family<GroupLabel, Counter>,
    /// 1 while a group this node leads has members down and no replacement inside its jurisdiction.
    pub under_replicated: Family<GroupLabel, Gauge>,
    /// Admin requests the endpoint refused (`crate::admin_tls`): a change with no operator certificate
    /// (`no_certificate`) or under another kind (`not_operator`), a read over plain HTTP from beyond
    /// loopback (`plain_beyond_loopback`).
    pub admin_requests_refused: Family<ReasonLabel, Counter>,
    /// The incident webhook (`crate::incident_sink`): POSTs acknowledged (2xx), failed, and repeated
    /// after a failure; incidents owed; incidents given up to the spool bound, and gap notices sent.
    pub incidents_delivered: Counter<u64, AtomicU64>,
    pub incident_delivery_failures: Counter<u64, AtomicU64>,
    pub incident_delivery_retries: Counter<u64, AtomicU64>,
    pub incident_backlog: Gauge,
    pub incidents_skipped: Counter<u64, AtomicU64>,
    pub incident_gaps: Counter<u64, AtomicU64>,
    /// Isolations from peers an operator asked this node for (drills, `POST /faults/isolate`).
    pub faults_injected: Counter<u64, AtomicU64>,
    /// 1 while such an isolation is in force.
    fault_isolated: Gauge,
    peer_round_trip_seconds: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    group_covered_round_trip_seconds: Family<GroupLabel, Gauge<f64, AtomicU64>>,
    group_round_trips_uncovered: Family<GroupLabel, Gauge>,
    /// Raft messages dropped or refused by isolations, and the last count exported.
    fault_messages_dropped: Counter<u64, AtomicU64>,
    seen_fault_dropped: AtomicU64,
    /// The groups whose round-trip gauges were last set: a group no longer hosted has them zeroed, so an
    /// alert on a replica since moved away does not fire for ever.
    round_trip_groups: Mutex<std::collections::BTreeSet<(String, String)>>,
    /// Last seen leader per group (by its label) and last exported incident counts, to turn snapshots
    /// into counters and to drop the gauges of a group no longer hosted.
    seen: Mutex<(BTreeMap<GroupLabel, Option<u64>>, IncidentCounts)>,
    /// Last exported count of audit write failures.
    seen_audit_failures: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("domicile");
        let has_leader = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_has_leader",
            "1 if this replica knows a leader of the group",
            has_leader.clone(),
        );
        let is_leader = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_is_leader",
            "1 if this node leads the group",
            is_leader.clone(),
        );
        let leader_changes = Family::<GroupLabel, Counter>::default();
        registry.register(
            "raft_leader_changes",
            "Leader changes seen by this replica",
            leader_changes.clone(),
        );
        let applied_index = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_applied_index",
            "Last log index applied by this replica",
            applied_index.clone(),
        );
        let snapshots_sent = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_snapshots_sent",
            "Whole snapshots this replica sent as leader since it was opened (each installed by its follower)",
            snapshots_sent.clone(),
        );
        let snapshots_installed = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_snapshots_installed",
            "Snapshots this replica installed since it was opened",
            snapshots_installed.clone(),
        );
        let snapshot_index = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "raft_snapshot_index",
            "Last log index this replica's current snapshot covers (0: none yet)",
            snapshot_index.clone(),
        );
        let fence_refusals = Counter::default();
        registry.register(
            "fence_refusals",
            "Membership or leadership changes refused by the residency fence",
            fence_refusals.clone(),
        );
        let egress_blocked = Counter::default();
        registry.register(
            "fence_egress_blocked",
            "Messages with a group's data not sent: receiver outside the jurisdiction",
            egress_blocked.clone(),
        );
        let ingress_refused = Counter::default();
        registry.register(
            "fence_ingress_refused",
            "Messages refused on arrival by the residency fence",
            ingress_refused.clone(),
        );
        let client_calls_refused = Counter::default();
        registry.register(
            "fence_client_calls_refused",
            "Client calls (records, shard maps) refused because the caller presented a node's certificate",
            client_calls_refused.clone(),
        );
        let client_calls_forbidden = Counter::default();
        registry.register(
            "fence_client_calls_forbidden",
            "Client calls refused because the calling service holds no such grant on the jurisdiction",
            client_calls_forbidden.clone(),
        );
        let outside_reads = Counter::default();
        registry.register(
            "outside_reads",
            "Reads answered with personal fields pseudonymised, to callers outside the jurisdiction",
            outside_reads.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register(
            "audit_entries",
            "Entries in this node's audit trail, on disk",
            audit_entries.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit entries that could not be written (a failed write or sync poisons the trail until restart)",
            audit_write_failures.clone(),
        );
        let request_seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Client requests served by this node",
            request_seconds.clone(),
        );
        let repair_steps = Family::<GroupLabel, Counter>::default();
        registry.register(
            "repair_steps",
            "Membership steps executed to replace members found down (inside the jurisdiction)",
            repair_steps.clone(),
        );
        let admin_requests_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admin_requests_refused",
            "Admin requests refused: changes without an operator certificate, plain HTTP beyond loopback",
            admin_requests_refused.clone(),
        );
        let replicas_purged = Family::<GroupLabel, Counter>::default();
        registry.register(
            "replicas_purged",
            "Replicas this node deleted once their group's leader showed a committed membership without it",
            replicas_purged.clone(),
        );
        let sessions_expired = Family::<GroupLabel, Counter>::default();
        registry.register(
            "sessions_expired",
            "Client sessions the groups led here dropped from their dedup tables, idle past the bound",
            sessions_expired.clone(),
        );
        let elections_prompted = Family::<GroupLabel, Counter>::default();
        registry.register(
            "elections_prompted",
            "Pre-votes this node started because its group's leader fell silent past its lease",
            elections_prompted.clone(),
        );
        let under_replicated = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "group_under_replicated",
            "1 if a group this node leads has members down and no replacement inside its jurisdiction",
            under_replicated.clone(),
        );
        let incidents_delivered = Counter::default();
        registry.register(
            "incidents_delivered",
            "Incident webhook POSTs the receiver acknowledged with 2xx (incidents and gap notices)",
            incidents_delivered.clone(),
        );
        let incident_delivery_failures = Counter::default();
        registry.register(
            "incident_delivery_failures",
            "Incident webhook POSTs that failed (no connection, timeout, or an answer other than 2xx)",
            incident_delivery_failures.clone(),
        );
        let incident_delivery_retries = Counter::default();
        registry.register(
            "incident_delivery_retries",
            "Incident webhook POSTs repeating one that failed",
            incident_delivery_retries.clone(),
        );
        let incident_backlog = Gauge::default();
        registry.register(
            "incident_backlog",
            "Incidents in the audit trail not yet acknowledged by the incident webhook",
            incident_backlog.clone(),
        );
        let incidents_skipped = Counter::default();
        registry.register(
            "incidents_skipped",
            "Incidents not pushed because the spool bound was reached (announced in a gap notice; still in the audit trail)",
            incidents_skipped.clone(),
        );
        let incident_gaps = Counter::default();
        registry.register(
            "incident_gaps",
            "Gap notices the incident webhook acknowledged",
            incident_gaps.clone(),
        );
        let faults_injected = Counter::default();
        registry.register(
            "faults_injected",
            "Isolations from peers an operator asked this node for (drills)",
            faults_injected.clone(),
        );
        let fault_isolated = Gauge::default();
        registry.register(
            "fault_isolated",
            "1 while an operator's isolation from peers is in force on this node",
            fault_isolated.clone(),
        );
        let fault_messages_dropped = Counter::default();
        registry.register(
            "fault_messages_dropped",
            "Raft messages to or from peers dropped by an operator's isolation",
            fault_messages_dropped.clone(),
        );
        let peer_round_trip_seconds = Family::<PeerLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_round_trip_seconds",
            "Smoothed round trip of the QUIC connection to a peer, as this node measures it",
            peer_round_trip_seconds.clone(),
        );
        let group_covered_round_trip_seconds = Family::<GroupLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "group_covered_round_trip_seconds",
            "The round trip a hosted group's Raft timing covers (half its heartbeat interval)",
            group_covered_round_trip_seconds.clone(),
        );
        let group_round_trips_uncovered = Family::<GroupLabel, Gauge>::default();
        registry.register(
            "group_round_trips_uncovered",
            "Members of a hosted group whose measured round trip from this node exceeds what the group's timing covers",
            group_round_trips_uncovered.clone(),
        );
        Metrics {
            registry,
            peer_round_trip_seconds,
            group_covered_round_trip_seconds,
            group_round_trips_uncovered,
            faults_injected,
            fault_isolated,
            fault_messages_dropped,
            seen_fault_dropped: AtomicU64::new(0),
            round_trip_groups: Mutex::new(Default::default()),
            incidents_delivered,
            incident_delivery_failures,
            incident_delivery_retries,
            incident_backlog,
            incidents_skipped,
            incident_gaps,
            repair_steps,
            admin_requests_refused,
            replicas_purged,
            sessions_expired,
            elections_prompted,
            under_replicated,
            has_leader,
            is_leader,
            leader_changes,
            applied_index,
            snapshots_sent,
            snapshots_installed,
            snapshot_index,
            fence_refusals,
            egress_blocked,
            ingress_refused,
            client_calls_refused,
            client_calls_forbidden,
            outside_reads,
            audit_entries,
            audit_write_failures,
            request_seconds,
            seen: Mutex::new((BTreeMap::new(), IncidentCounts::default())),
            seen_audit_failures: AtomicU64::new(0),
        }
    }

    /// Folds a snapshot of the node's groups and incident counters into the metrics.
    pub fn observe(&self, me: u64, groups: &[GroupStatus], incidents: IncidentCounts) {
        let mut seen = self.seen.lock().expect("metrics lock");
        for status in groups {
            let label = GroupLabel {
                group: status.group.0.clone(),
                jurisdiction: status.jurisdiction.clone(),
            };
            let leader = status.leader.map(|node| node.0);
            self.has_leader
                .get_or_create(&label)
                .set(i64::from(leader.is_some()));
            self.is_leader
                .get_or_create(&label)
                .set(i64::from(leader == Some(me)));
            self.applied_index
                .get_or_create(&label)
                .set(status.last_applied.unwrap_or(0) as i64);
            self.snapshots_sent
                .get_or_create(&label)
                .set(status.snapshots_sent as i64);
            self.snapshots_installed
                .get_or_create(&label)
                .set(status.snapshots_installed as i64);
            self.snapshot_index
                .get_or_create(&label)
                .set(status.snapshot_index.unwrap_or(0) as i64);
            let previous = seen.0.insert(label.clone(), leader);
            if leader.is_some() && previous.is_some_and(|previous| previous != leader) {
                self.leader_changes.get_or_create(&label).inc();
            }
        }
        // A replica moved away (purged, retired) takes its gauges with it: a last value kept for ever would
        // fire `DomicileGroupWithoutLeader` for a group this node no longer holds. Counters stay.
        let gone: Vec<GroupLabel> = seen
            .0
            .keys()
            .filter(|label| !groups.iter().any(|status| status.group.0 == label.group))
            .cloned()
            .collect();
        for label in gone {
            self.forget_group(&label);
            seen.0.remove(&label);
        }
        let last = seen.1;
        self.fence_refusals.inc_by(
            incidents
                .membership_refused
                .saturating_sub(last.membership_refused),
        );
        self.egress_blocked
            .inc_by(incidents.egress_blocked.saturating_sub(last.egress_blocked));
        self.ingress_refused
            .inc_by(incidents.ingress_refused.saturating_sub(last.ingress_refused));
        self.client_calls_refused.inc_by(
            incidents
                .client_calls_refused
                .saturating_sub(last.client_calls_refused),
        );
        self.client_calls_forbidden.inc_by(
            incidents
                .client_calls_forbidden
                .saturating_sub(last.client_calls_forbidden),
        );
        self.outside_reads
            .inc_by(incidents.outside_reads.saturating_sub(last.outside_reads));
        seen.1 = incidents;
    }

    /// Drops the gauges of a group this node no longer hosts.
    pub fn forget_group(&self, label: &GroupLabel) {
        for family in [
            &self.has_leader,
            &self.is_leader,
            &self.applied_index,
            &self.snapshots_sent,
            &self.snapshots_installed,
            &self.snapshot_index,
            &self.under_replicated,
        ] {
            family.remove(label);
        }
    }

    /// Folds the measured round trips, and each hosted group's covered round trip and members past it,
    /// into the metrics (`jurisdiction` names a group's jurisdiction).
    pub fn observe_round_trips(
        &self,
        peers: &[crate::round_trip_watch::PeerRoundTrip],
        groups: &[crate::round_trip_watch::Timed],
        uncovered: &[crate::round_trip_watch::Uncovered],
        jurisdiction: impl Fn(&placement::GroupId) -> String,
    ) {
        for peer in peers {
            let label = PeerLabel {
                peer: format!("n{}", peer.node),
                site: peer.site.clone(),
            };
            self.peer_round_trip_seconds
                .get_or_create(&label)
                .set(peer.round_trip_ms / 1000.0);
        }
        let mut now = std::collections::BTreeSet::new();
        for timed in groups {
            let label = GroupLabel {
                group: timed.group.0.clone(),
                jurisdiction: jurisdiction(&timed.group),
            };
            now.insert((label.group.clone(), label.jurisdiction.clone()));
            self.group_covered_round_trip_seconds
                .get_or_create(&label)
                .set(timed.covered_ms as f64 / 1000.0);
            let count = uncovered
                .iter()
                .filter(|uncovered| uncovered.group == timed.group.0)
                .count();
            self.group_round_trips_uncovered
                .get_or_create(&label)
                .set(count as i64);
        }
        let mut before = self.round_trip_groups.lock().expect("metrics lock");
        for (group, jurisdiction) in before.difference(&now) {
            let label = GroupLabel {
                group: group.clone(),
                jurisdiction: jurisdiction.clone(),
            };
            self.group_round_trips_uncovered.get_or_create(&label).set(0);
        }
        *before = now;
    }

    /// Folds the audit trail's length and failure count into the metrics.
    pub fn observe_audit(&self, durable_entries: u64, failures: u64) {
        self.audit_entries.set(durable_entries as i64);
        let last = self
            .seen_audit_failures
            .swap(failures, std::sync::atomic::Ordering::Relaxed);
        self.audit_write_failures.inc_by(failures.saturating_sub(last));
    }

    /// Folds the node's isolation (in force or not) and its count of dropped messages into the metrics.
    pub fn observe_fault(&self, isolated: bool, dropped: u64) {
        self.fault_isolated.set(i64::from(isolated));
        let last = self
            .seen_fault_dropped
            .swap(dropped, std::sync::atomic::Ordering::Relaxed);
        self.fault_messages_dropped.inc_by(dropped.saturating_sub(last));
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String can't fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::round_trip_watch::{Timed, Uncovered};
    use placement::{GroupId, Membership, NodeId};

    fn status(group: &str, leader: Option<u64>) -> GroupStatus {
        GroupStatus {
            group: GroupId(group.into()),
            jurisdiction: "EEA".into(),
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)], []),
            leader: leader.map(NodeId),
            term: 1,
            last_applied: Some(7),
            committed: Some(7),
            snapshots_sent: 0,
            snapshots_installed: 0,
            snapshot_index: Some(5),
        }
    }

    #[test]
    fn a_replica_moved_away_takes_its_group_gauges_with_it() {
        let metrics = Metrics::new();
        let incidents = IncidentCounts::default();
        let label = GroupLabel {
            group: "users-legacy".into(),
            jurisdiction: "EEA".into(),
        };
        metrics.under_replicated.get_or_create(&label).set(1);
        // The removed replica heard no leader before its purge.
        metrics.observe(
            5,
            &[status("users-legacy", None), status("users-eea", Some(5))],
            incidents,
        );
        let line = "domicile_raft_has_leader{group=\"users-legacy\",jurisdiction=\"EEA\"} 0";
        assert!(metrics.render().contains(line), "{}", metrics.render());
        let line = "domicile_raft_snapshot_index{group=\"users-legacy\",jurisdiction=\"EEA\"} 5";
        assert!(metrics.render().contains(line), "{}", metrics.render());
        metrics.observe(5, &[status("users-eea", Some(5))], incidents);
        let rendered = metrics.render();
        for gauge in [
            "domicile_raft_has_leader{group=\"users-legacy\"",
            "domicile_raft_is_leader{group=\"users-legacy\"",
            "domicile_raft_applied_index{group=\"users-legacy\"",
            "domicile_raft_snapshot_index{group=\"users-legacy\"",
            "domicile_group_under_replicated{group=\"users-legacy\"",
        ] {
            assert!(!rendered.contains(gauge), "{gauge} kept:\n{rendered}");
        }
        assert!(
            rendered.contains("domicile_raft_is_leader{group=\"users-eea\",jurisdiction=\"EEA\"} 1"),
            "{rendered}"
        );
    }

    #[test]
    fn a_group_no_longer_hosted_has_its_uncovered_gauge_zeroed() {
        let metrics = Metrics::new();
        let legacy = Timed {
            group: GroupId("users-legacy".into()),
            membership: Membership::new([NodeId(1), NodeId(4)], []),
            covered_ms: 250,
        };
        let far = Uncovered {
            group: "users-legacy".into(),
            member: 4,
            measured_ms: 320,
            covered_ms: 250,
        };
        let line = "domicile_group_round_trips_uncovered{group=\"users-legacy\",jurisdiction=\"EEA\"}";
        metrics.observe_round_trips(&[], &[legacy], &[far], |_| "EEA".into());
        assert!(
            metrics.render().contains(&format!("{line} 1")),
            "{}",
            metrics.render()
        );
        // The replica moved away: the gauge must not keep an alert firing.
        metrics.observe_round_trips(&[], &[], &[], |_| "EEA".into());
        assert!(
            metrics.render().contains(&format!("{line} 0")),
            "{}",
            metrics.render()
        );
    }
}
