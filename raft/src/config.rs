//! The openraft type configuration of a replica group.
//!
//! Everything in this crate except `quic` is generic over [`GroupConfig`], so the same host, network and
//! fence code runs with tokio in production ([`TokioConfig`]) and with the deterministic runtime in the
//! simulator (which declares its own config with `AsyncRuntime = openraft_rt_sim::SimRuntime`).

use std::collections::BTreeSet;

use placement::{GroupPolicy, Jurisdiction, NodeId, RoundTripTable, Site, Topology};
use storage::{Command, Response, StorageTypeConfig};

/// What a replica group's type config must be: our commands and responses, `u64` node ids, openraft's
/// entries (from `storage`), and no per-node metadata in the membership — where a node stands is the
/// topology's business and its certificate's, never something a membership entry could claim.
pub trait GroupConfig: StorageTypeConfig<Node = (), Term = u64> {}

impl<C> GroupConfig for C where C: StorageTypeConfig<Node = (), Term = u64> {}

/// Standard Raft leader ids: at most one leader per term (openraft's default "advanced" ids allow several
/// leaders in one term, told apart by node id). One leader per term is what operators, the simulator's
/// safety checker and the residency reasoning ("who led term 7, and where?") expect.
pub type StandardLeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>;

openraft::declare_raft_types!(
    /// Production: replica groups on tokio.
    pub TokioConfig: D = Command, R = Response, Node = (), LeaderId = StandardLeaderId
);

/// openraft's configuration for Domicile's groups, with the settings our storage's guarantees require.
///
/// `enable_leader_restore` is off: with it, a leader that restarts may resume leadership without an
/// election. Our state machine does not fsync every apply, and a leader whose fdatasync failed can come
/// back with a shorter log than a quorum committed — restored without an election, it would serve reads
/// from before an acknowledged write (the simulator found exactly that). An election makes it learn.
///
/// `enable_pre_vote` is on (openraft's default is off): a follower whose election timeout passes first asks
/// whether a quorum would vote for it, and only then raises its term. Without it, a follower that cannot
/// win — one whose log is behind (it was restarted, or cut off, while the others went on) — raises its term
/// anyway each time its timeout passes, votes for itself, and so refuses the vote of the one that can win
/// in that term: after its leader died, a group on loopback with a lagging survivor elected its next leader
/// one election timeout later, in the term after (4.4 s instead of 2.6–3.1 s; docs/performance.md,
/// "Failover"). A follower cut off for a while likewise came back with a term that deposed a live leader.
///
/// Snapshots are taken every [`SNAPSHOT_EVERY_ENTRIES`] applied entries and the log keeps
/// [`LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES`] behind the last one ([`with_snapshot_policy`] sets others).
pub fn group_raft_config(
    cluster_name: &str,
    heartbeat_interval_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_min_ms,
        election_timeout_max: election_timeout_max_ms,
        enable_leader_restore: Some(false),
        enable_pre_vote: Some(true),
        max_payload_entries: APPEND_ENTRIES_MAX,
        ..Default::default()
    };
    with_snapshot_policy(&config, SNAPSHOT_EVERY_ENTRIES, LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES)
}

/// Entries one AppendEntries may carry (openraft's default is 300); requests larger than
/// [`crate::append_split::APPEND_BYTES_MAX`] in bytes are cut into parts whatever the count.
///
/// A steady stream of writes never fills even 300: a request carries what was proposed since the last.
/// The count matters to a replica that is behind, above all a new one catching up from the log after
/// the snapshot it installed (which is up to [`SNAPSHOT_EVERY_ENTRIES`] behind the leader's log: a
/// million-record migration's learners replayed 70,000 entries). One request is on the wire per
/// follower at a time, and each waits for the follower's append and fsync: at 300 entries a round trip
/// that replay took 4–5 s of a 19-s copy (docs/performance.md, "Migrating a legacy group at volume").
pub const APPEND_ENTRIES_MAX: u64 = 2_048;

/// A snapshot is built once this many entries were applied since the last one.
///
/// openraft's default, 5,000, rebuilds the whole keyspace every 5,000 writes: loading a million records
/// built 200 snapshots of up to a gigabyte (quadratic in the keyspace), and each held a learner's next
/// entries for only 1,000 more. A snapshot exists to bound the log (disk, and replay after a restart),
/// which at this count is about a hundred megabytes of 1 KiB records, not to ship data: a new replica
/// receives whichever snapshot is current.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 100_000;

/// Entries kept in the log behind the last snapshot, so a replica that just installed one (or fell
/// behind during a transfer) catches up from the log instead of being sent another whole snapshot.
/// Twice [`SNAPSHOT_EVERY_ENTRIES`]: the next snapshot is taken a little more than that many entries after
/// the last one (the entries applied while it is built), so keeping only as many would purge the first few
/// entries after the previous snapshot; with twice as many, a replica that installed the previous snapshot
/// still finds every entry after it, unless more than [`SNAPSHOT_EVERY_ENTRIES`] are applied during one
/// build. openraft's default, 1,000, did not hold — each new replica received the keyspace three to six
/// times — nor did 50,000 at a million records (twice each; docs/performance.md).
pub const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 2 * SNAPSHOT_EVERY_ENTRIES;

/// `base` with a snapshot every `every_entries` applied entries and `kept_entries` kept in the log
/// behind the last one.
pub fn with_snapshot_policy(
    base: &openraft::Config,
    every_entries: u64,
    kept_entries: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(every_entries),
        max_in_snapshot_log_to_keep: kept_entries,
        ..base.clone()
    }
    .validate()
}

/// How many worst-case round trips a heartbeat interval must cover.
///
/// openraft waits for a heartbeat's reply for one heartbeat interval only (the interval is the heartbeat
/// RPC's timeout), and a leader accepts a write only while a quorum has acknowledged something it sent less
/// than `election_timeout_max` ago (its lease). With a heartbeat interval shorter than the round trip to the
/// voter its quorum needs, no heartbeat reply ever counts: once the leader goes one lease without a
/// replicated write, its lease lapses, every write is refused with `ForwardToLeader(None)` (reason
/// `LeaseExpired`), and nothing renews it — while the followers, which do receive the heartbeats, never
/// call an election. A legacy group with an EEA leader and its quorum in Ashburn (70–90 ms each way) under
/// 100 ms heartbeats is exactly that (the simulator's `migrate` scenario found it). Two round trips leave
/// room for jitter and a queue in front of the reply.
pub const HEARTBEAT_ROUND_TRIPS: u64 = 2;

/// The fewest heartbeat intervals a group's shortest election timeout spans.
///
/// A follower of openraft calls an election only once its leader's lease (`election_timeout_max` after the
/// last heartbeat it received) has run out *and* then its election timeout (drawn from
/// `election_timeout_min..election_timeout_max`) has passed too: at least `election_timeout_max +
/// election_timeout_min` without a heartbeat. Three heartbeats in the shorter of the two is plenty for a
/// heartbeat or two to be lost or late without an election, and openraft needs more than one (plus a
/// tick, a fifth of one).
pub const ELECTION_TIMEOUT_HEARTBEATS: u64 = 3;

/// `base`, stretched to work between voters up to `round_trip_ms` apart: the heartbeat interval covers
/// [`HEARTBEAT_ROUND_TRIPS`] round trips, and the election timeouts, which bound how long a dead leader is
/// waited for, are stretched only as far as they must to span [`ELECTION_TIMEOUT_HEARTBEATS`] of the
/// longer heartbeats, keeping their ratio to each other. A base that already covers the round trip is
/// returned unchanged.
///
/// The leader's lease, `election_timeout_max`, then spans fewer heartbeats than the base's, but still
/// more than [`ELECTION_TIMEOUT_HEARTBEATS`] of them, each of which renews it if a quorum answers it
/// within the interval. Stretching the election timeouts in proportion to the heartbeat, as this did
/// before, made a group across two European countries (the estimate's 80 ms round trip: 160 ms
/// heartbeats) wait out 0.8–1.6 s timeouts instead of the configured 0.5–1 s, and its failover, at least
/// `election_timeout_max + election_timeout_min` after the last heartbeat, never shorter than 2.4 s
/// (docs/performance.md, "Failover").
pub fn covering_round_trip(
    base: &openraft::Config,
    round_trip_ms: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    let heartbeat_interval_ms = base.heartbeat_interval.max(round_trip_ms * HEARTBEAT_ROUND_TRIPS);
    if heartbeat_interval_ms == base.heartbeat_interval {
        return Ok(base.clone());
    }
    let election_timeout_min_ms = base
        .election_timeout_min
        .max(heartbeat_interval_ms.saturating_mul(ELECTION_TIMEOUT_HEARTBEATS));
    let stretch = |ms: u64| {
        ms.saturating_mul(election_timeout_min_ms)
            .div_ceil(base.election_timeout_min.max(1))
    };
    openraft::Config {
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_min_ms,
        election_timeout_max: stretch(base.election_timeout_max),
        ..base.clone()
    }
    .validate()
}

/// The worst round trip between two sites, in milliseconds: what a group's Raft timing must cover.
pub trait RoundTrips: Send + Sync {
    fn round_trip_ms(&self, a: &Site, b: &Site) -> u64;
}

/// Production's estimate from where sites stand, since the topology records countries, not distances:
/// deliberately pessimistic (a too-long heartbeat only slows failure detection; a too-short one stops
/// a group from accepting writes).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountryRoundTrips;

impl CountryRoundTrips {
    /// Two sites in one country (a metro or a national backbone).
    pub const SAME_COUNTRY_MS: u64 = 20;
    /// Two European sites (the EEA's extremes, Iceland to Cyprus, are well under this).
    pub const EUROPE_MS: u64 = 80;
    /// Anything else: across an ocean (transatlantic is 140–180 ms, transpacific more).
    pub const INTERCONTINENTAL_MS: u64 = 250;
}

impl RoundTrips for CountryRoundTrips {
    fn round_trip_ms(&self, a: &Site, b: &Site) -> u64 {
        let eea = Jurisdiction::eea();
        let european =
            |site: &Site| eea.contains(site.country) || matches!(site.country.as_str(), "GB" | "CH");
        if a.name == b.name {
            1
        } else if a.country == b.country {
            Self::SAME_COUNTRY_MS
        } else if european(a) && european(b) {
            Self::EUROPE_MS
        } else {
            Self::INTERCONTINENTAL_MS
        }
    }
}

/// The round trips the operator declared in the topology (`[[round_trip]]`, measured on their network),
/// and for any pair not declared, [`CountryRoundTrips`]' estimate. A declaration may be shorter than the
/// estimate (a group across Dublin and Hamar at 30 ms need not be timed for 80) or longer (a slow link the
/// estimate would have left uncovered, and the group's lease lapsing on it).
#[derive(Clone, Debug, Default)]
pub struct DeclaredRoundTrips {
    declared: RoundTripTable,
}

impl DeclaredRoundTrips {
    pub fn new(declared: RoundTripTable) -> DeclaredRoundTrips {
        DeclaredRoundTrips { declared }
    }
}

impl RoundTrips for DeclaredRoundTrips {
    fn round_trip_ms(&self, a: &Site, b: &Site) -> u64 {
        self.declared
            .get(&a.name, &b.name)
            .unwrap_or_else(|| CountryRoundTrips.round_trip_ms(a, b))
    }
}

/// The round trip a group's timing covers: a reply to a heartbeat counts only if it arrives within one
/// heartbeat interval, which [`covering_round_trip`] made [`HEARTBEAT_ROUND_TRIPS`] round trips long.
/// A measured round trip to a member above this leaves the leader's lease to chance.
pub fn covered_round_trip_ms(timing: &openraft::Config) -> u64 {
    timing.heartbeat_interval / HEARTBEAT_ROUND_TRIPS
}

/// The worst round trip between any two sites that may hold `policy`'s group: every site inside its
/// jurisdiction, and the sites of its legacy members (a legacy group's leader needs their acknowledgements
/// until they are removed).
pub fn group_round_trip_ms(
    topology: &Topology,
    policy: &GroupPolicy,
    legacy: &BTreeSet<NodeId>,
    round_trips: &dyn RoundTrips,
) -> u64 {
    let sites: Vec<&Site> = topology
        .sites()
        .filter(|site| {
            policy.jurisdiction.contains(site.country) || site.nodes.iter().any(|node| legacy.contains(node))
        })
        .collect();
    sites
        .iter()
        .flat_map(|a| sites.iter().map(move |b| round_trips.round_trip_ms(a, b)))
        .max()
        .unwrap_or(0)
}

/// How a linearizable read (or barrier) is confirmed on a group's leader: a ReadIndex round — a heartbeat
/// sent after the read began and acknowledged by a quorum — waited for up to two leases
/// (`election_timeout_max` each), not openraft's default of one.
///
/// **Why two.** A leader under load (a snapshot build, a migration's copy, a debug build on two shared
/// cores) can take longer than one lease to gather a quorum's acknowledgements while it is still the
/// leader; with one lease the read failed with "not enough for a quorum", and its caller (the admin API,
/// a range copy's reads, a test) had to ask again. Waiting longer changes no answer: the round still
/// needs an acknowledgement sent after the read began, so a deposed leader can never confirm one. It only
/// delays that failure, by one lease, for a leader cut off from its quorum — and a follower that is not
/// leader is answered at once (forward to the leader), as before.
pub fn read_index(config: &openraft::Config) -> openraft::LinearizerOption {
    let lease = std::time::Duration::from_millis(config.election_timeout_max);
    openraft::LinearizerOption::from(openraft::ReadPolicy::ReadIndex).with_wait_timeout(lease * 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use placement::TopologyFile;

    fn base() -> openraft::Config {
        group_raft_config("test", 100, 500, 1_000).expect("valid")
    }

    #[test]
    fn a_timing_that_covers_the_round_trip_is_kept() {
        let config = covering_round_trip(&base(), 40).expect("valid");
        assert_eq!(
            (
                config.heartbeat_interval,
                config.election_timeout_min,
                config.election_timeout_max
            ),
            (100, 500, 1_000)
        );
    }

    #[test]
    fn a_european_round_trip_stretches_the_heartbeat_but_keeps_the_election_timeouts() {
        // The estimate for two European countries (an EEA group across Dublin and Hamar): 160 ms
        // heartbeats, of which 500 ms already spans three. Stretched like the heartbeat, the timeouts were
        // 800-1,600 ms, and a failover never took less than 2.4 s.
        let config = covering_round_trip(&base(), CountryRoundTrips::EUROPE_MS).expect("valid");
        assert_eq!(
            (
                config.heartbeat_interval,
                config.election_timeout_min,
                config.election_timeout_max
            ),
            (160, 500, 1_000)
        );
    }

    #[test]
    fn a_transatlantic_round_trip_stretches_the_election_timeouts_to_three_heartbeats() {
        let config = covering_round_trip(&base(), 180).expect("valid");
        assert_eq!(config.heartbeat_interval, 360, "two round trips");
        assert_eq!(
            (config.election_timeout_min, config.election_timeout_max),
            (1_080, 2_160),
            "three heartbeats, and the base's ratio of max to min"
        );
        assert_eq!(
            (config.enable_leader_restore, config.max_payload_entries),
            (Some(false), APPEND_ENTRIES_MAX),
            "the rest of the base is kept"
        );
        assert_eq!(
            (&config.snapshot_policy, config.max_in_snapshot_log_to_keep),
            (
                &openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
                LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES
            )
        );
    }

    #[test]
    fn a_legacy_group_is_timed_for_the_ocean_and_an_eea_group_for_europe() {
        let file = TopologyFile::parse(
            r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [2]

[[site]]
name = "ashburn"
country = "US"
nodes = [3]

[[group]]
name = "users"
jurisdiction = "EEA"
voters = 2
"#,
        )
        .expect("a valid topology");
        let policy = file.policies.values().next().expect("one group").clone();
        let inside = group_round_trip_ms(&file.topology, &policy, &BTreeSet::new(), &CountryRoundTrips);
        assert_eq!(inside, CountryRoundTrips::EUROPE_MS);
        let legacy = group_round_trip_ms(
            &file.topology,
            &policy,
            &BTreeSet::from([NodeId(3)]),
            &CountryRoundTrips,
        );
        assert_eq!(legacy, CountryRoundTrips::INTERCONTINENTAL_MS);
    }

    #[test]
    fn declared_round_trips_replace_the_estimate_pair_by_pair() {
        let file = TopologyFile::parse(
            r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [2]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [3]

[[group]]
name = "users"
jurisdiction = "EEA"
voters = 3

[[round_trip]]
sites = ["dublin", "hamar"]
ms = 30

[[round_trip]]
sites = ["hamar", "frankfurt"]
ms = 25
"#,
        )
        .expect("a valid topology");
        let policy = file.policies.values().next().expect("one group").clone();
        let declared = DeclaredRoundTrips::new(file.round_trips.clone());
        // Dublin-Frankfurt is not declared: the estimate for two European countries stands.
        let worst = group_round_trip_ms(&file.topology, &policy, &BTreeSet::new(), &declared);
        assert_eq!(worst, CountryRoundTrips::EUROPE_MS);

        let mut all = file.round_trips.clone();
        all.declare(
            placement::SiteName("dublin".into()),
            placement::SiteName("frankfurt".into()),
            20,
        )
        .expect("a new pair");
        let declared = DeclaredRoundTrips::new(all);
        let worst = group_round_trip_ms(&file.topology, &policy, &BTreeSet::new(), &declared);
        assert_eq!(worst, 30, "every pair declared: the worst declaration");
        let timing = covering_round_trip(&base(), worst).expect("valid");
        assert_eq!(
            timing.heartbeat_interval, 100,
            "the base already covers 2 x 30 ms"
        );
        assert_eq!(covered_round_trip_ms(&timing), 50);
    }
}
