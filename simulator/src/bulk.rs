//! Modelled bulk data: large volumes without the bytes.
//!
//! A group's user data is a handful of key ranges, each a record count, a byte size and an
//! order-independent fingerprint — the wrapping sum of a hash of (range, record, version) over its
//! records — so 150 million records of ~1 KiB cost a few kilobytes. Every replica holds its own copy
//! of each range (or none); a copy is what was shipped to it, not a pointer to the original, so a
//! transfer that was cut short or a copy purged too early shows up as a different fingerprint or a
//! missing copy.
//!
//! Writes to bulk data go through the real log: the first [`RECORDS_WRITTEN_PER_RANGE`] records of each
//! range are real keys (`bulk-R/record-I`, value `vN`), written through the group's leader by
//! [`spawn_writer`]. A replica's fingerprint of a range is its copy's fingerprint with those records
//! replaced by the versions in its own state machine, so writes made while a range moves are
//! accounted for by the real replication, not by the model.
//!
//! Moving a range to a new replica (the planner's `AddLearner`, then its catch-up) costs simulated time
//! from its bytes and the bandwidth of the link between the source and the new replica's sites. The
//! [conservation checks](Bulk::check) compare, per range, every owning voter's fingerprint with the
//! original plus the writes acknowledged in between; check that each range has exactly one owning
//! group; and (at each purge) that an outside copy is deleted only once a quorum of inside voters hold
//! a durable copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::Instant as _;
use openraft_rt_sim::{SimInstant, SimRuntime};
use placement::{GroupId, GroupPolicy, NodeId};
use raft::host::ReadConsistency;
use storage::{Command, RecordKey, Response, WriteId};

use crate::checkers::{Checker, Involved};
use crate::history::{AckedWrite, History};
use crate::timeline::{self, EventKind};
use crate::workload::key_name;
use crate::world::World;

/// Records of ~1 KiB each.
pub const RECORD_BYTES: u64 = 1_024;
/// Records per range that are also real keys, written through the log during the run.
pub const RECORDS_WRITTEN_PER_RANGE: u64 = 4;
/// The bulk writer's client id (its writes are acknowledged writes like any other).
const WRITER_CLIENT_ID: u64 = 800_000;

/// One modelled key range, as its owning group held it when the run began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub id: u64,
    pub group: GroupId,
    pub records: u64,
    pub bytes: u64,
    /// The sum of [`record_hash`] over its records, every one at version 0.
    pub fingerprint: u64,
}

/// A replica's copy of one range (complete once the transfer that made it finished and was synced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy {
    pub records: u64,
    pub bytes: u64,
    pub fingerprint: u64,
}

/// The hash of one record at one version (SplitMix64 finalisation of its coordinates).
pub fn record_hash(range: u64, record: u64, version: u64) -> u64 {
    let mut x = range
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(record.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(version.wrapping_mul(0x94d0_49bb_1331_11eb))
        .wrapping_add(0x2545_f491_4f6c_dd1d);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The fingerprint of `records` records at version 0. It is summed record by record (150 million
/// additions take a fraction of a second), so it is the sum the issue defines, not a stand-in.
fn initial_fingerprint(range: u64, records: u64) -> u64 {
    (0..records).fold(0u64, |sum, record| {
        sum.wrapping_add(record_hash(range, record, 0))
    })
}

pub fn record_key(range: u64, record: u64) -> RecordKey {
    RecordKey::new("EEA", range_user(range), format!("record-{record}"))
}

/// The user whose records a range's written records are: where the shard map routes the range.
pub fn range_user(range: u64) -> String {
    format!("bulk-{range}")
}

fn parse_version(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.strip_prefix('v')?.parse().ok()
}

/// The fingerprint of a copy once the written records hold `versions` instead of version 0.
fn with_versions(range: u64, base: u64, versions: &BTreeMap<u64, u64>) -> u64 {
    versions.iter().fold(base, |sum, (&record, &version)| {
        sum.wrapping_sub(record_hash(range, record, 0))
            .wrapping_add(record_hash(range, record, version))
    })
}

#[derive(Default)]
struct State {
    /// (group, node) → range id → copy.
    copies: BTreeMap<(GroupId, NodeId), BTreeMap<u64, Copy>>,
    transfers: BTreeSet<(GroupId, NodeId)>,
    bytes_moved: u64,
    /// (range, record) → (highest acknowledged version, highest attempted version).
    versions: BTreeMap<(u64, u64), (u64, u64)>,
    started: Option<SimInstant>,
    last_purge: Option<SimInstant>,
    /// Ranges whose group changed since the run began (a split moved them): range id → group.
    moved: BTreeMap<u64, GroupId>,
    /// Ranges being copied to the group gaining them, not yet its: range id → that group.
    incoming: BTreeMap<u64, GroupId>,
}

/// Every range and every replica's copies.
pub struct Bulk {
    pub ranges: Vec<Range>,
    state: Mutex<State>,
}

impl Bulk {
    /// `records` records per group, in `ranges_per_group` ranges, held in full by each group's voters.
    /// Where the run routes by a shard map, a group's ranges are those whose user ([`range_user`]) the
    /// map routes to it; else they are numbered in group order.
    pub fn new(
        groups: &[(GroupId, BTreeSet<NodeId>)],
        records: u64,
        ranges_per_group: u64,
        map: Option<&placement::shard_map::ShardMap>,
    ) -> Bulk {
        let mut ranges = Vec::new();
        let mut state = State::default();
        let mut taken = BTreeSet::new();
        for (group, voters) in groups {
            for index in 0..ranges_per_group {
                let id = match map {
                    None => ranges.len() as u64,
                    // Bounded: a map of a few groups routes one id in a few to each.
                    Some(map) => (0..1_000_000u64)
                        .find(|id| {
                            !taken.contains(id)
                                && map.owner(wire::routing::range_position(&range_user(*id))) == group
                        })
                        .expect("the map routes some user to every group"),
                };
                taken.insert(id);
                let count = records / ranges_per_group + u64::from(index < records % ranges_per_group);
                let range = Range {
                    id,
                    group: group.clone(),
                    records: count,
                    bytes: count * RECORD_BYTES,
                    fingerprint: initial_fingerprint(id, count),
                };
                for &node in voters {
                    state
                        .copies
                        .entry((group.clone(), node))
                        .or_default()
                        .insert(id, range.copy());
                }
                ranges.push(range);
            }
        }
        Bulk {
            ranges,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("bulk lock")
    }

    pub fn records(&self) -> u64 {
        self.ranges.iter().map(|range| range.records).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|range| range.bytes).sum()
    }

    pub fn bytes_moved(&self) -> u64 {
        self.lock().bytes_moved
    }

    /// From the first transfer to the last purge.
    pub fn migration_seconds(&self) -> f64 {
        let state = self.lock();
        match (state.started, state.last_purge) {
            (Some(start), Some(end)) => (end - start).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The group that holds `range` now: the one the published map routes its user to, where the run
    /// publishes maps; else the group it started in.
    pub fn owner(&self, world: &World, range: &Range) -> GroupId {
        world
            .route("EEA", &range.user())
            .unwrap_or_else(|| range.group.clone())
    }

    /// Every range as it stands now: `group` is the group that owns it (after any move).
    pub fn current(&self) -> Vec<Range> {
        let state = self.lock();
        self.ranges
            .iter()
            .map(|range| Range {
                group: state.moved.get(&range.id).unwrap_or(&range.group).clone(),
                ..range.clone()
            })
            .collect()
    }

    /// The ranges `group` owns or is receiving: what each of its replicas must hold.
    fn ranges_of(&self, group: &GroupId) -> Vec<Range> {
        let incoming: BTreeSet<u64> = self
            .lock()
            .incoming
            .iter()
            .filter(|(_, to)| *to == group)
            .map(|(&range, _)| range)
            .collect();
        self.current()
            .into_iter()
            .filter(|range| &range.group == group || incoming.contains(&range.id))
            .collect()
    }

    /// The modelled bytes each group owns now.
    pub fn bytes_by_group(&self) -> BTreeMap<GroupId, u64> {
        let mut bytes = BTreeMap::new();
        for range in self.current() {
            *bytes.entry(range.group).or_insert(0) += range.bytes;
        }
        bytes
    }

    /// The ranges `group` owns now, by id.
    pub fn owned_by(&self, group: &GroupId) -> Vec<u64> {
        self.current()
            .into_iter()
            .filter(|range| &range.group == group)
            .map(|range| range.id)
            .collect()
    }

    /// A move of `ranges` to `to` begins: its replicas are to receive copies of them (started by
    /// [`Bulk::start_transfer`] for each).
    pub fn begin_move(&self, ranges: &[u64], to: &GroupId) {
        let mut state = self.lock();
        for &range in ranges {
            state.incoming.insert(range, to.clone());
        }
    }

    /// Whether a quorum of `voters` of `to` hold complete copies of every range of `ranges`.
    pub fn quorum_holds(&self, to: &GroupId, voters: &BTreeSet<NodeId>, ranges: &[u64]) -> bool {
        let state = self.lock();
        let holding = voters
            .iter()
            .filter(|&&voter| {
                state
                    .copies
                    .get(&(to.clone(), voter))
                    .is_some_and(|copies| ranges.iter().all(|range| copies.contains_key(range)))
            })
            .count();
        holding >= GroupPolicy::quorum(voters.len())
    }

    /// The cutover of a move committed: `ranges` are `to`'s from now on.
    pub fn finish_move(&self, ranges: &[u64], to: &GroupId) {
        let mut state = self.lock();
        for &range in ranges {
            state.incoming.remove(&range);
            state.moved.insert(range, to.clone());
        }
    }

    /// The group that lost `ranges` deletes its copies of them: checked first, as every deletion is, that
    /// a quorum of the gaining group's voters (`to`, `voters`) hold durable copies.
    pub fn drop_departed(
        &self,
        world: &World,
        from: &GroupId,
        to: &GroupId,
        voters: &BTreeSet<NodeId>,
        ranges: &[u64],
    ) {
        if !self.quorum_holds(to, voters, ranges) {
            world.checks.violation(
                Checker::Conservation,
                Involved::group(from).nodes(voters.iter().copied()),
                format!(
                    "ranges {ranges:?} deleted from `{from}` while fewer than a quorum of `{to}`'s voters \
                     {voters:?} hold durable copies"
                ),
            );
        }
        let mut state = self.lock();
        let mut dropped = 0u64;
        for ((group, _), copies) in state.copies.iter_mut() {
            if group == from {
                for range in ranges {
                    dropped += u64::from(copies.remove(range).is_some());
                }
            }
        }
        drop(state);
        world.log(format!(
            "bulk: {dropped} copies of ranges {ranges:?} deleted from {from}"
        ));
    }

    /// Does `node` hold a complete copy of every range `group` owns (not those it is still receiving,
    /// whose authoritative copy is the losing group's)?
    fn complete_owned(&self, group: &GroupId, node: NodeId) -> bool {
        let copies = self.held(group, node);
        self.owned_by(group).iter().all(|range| copies.contains(range))
    }

    /// Does `node` hold a complete copy of every range of `group`, those it is receiving included? (A
    /// group that holds no range, created empty and waiting for a split, needs no copy.)
    pub fn complete(&self, group: &GroupId, node: NodeId) -> bool {
        let copies = self.held(group, node);
        self.ranges_of(group)
            .iter()
            .all(|range| copies.contains(&range.id))
    }

    /// The ranges `node`'s replica of `group` holds a copy of (none if it holds no replica).
    fn held(&self, group: &GroupId, node: NodeId) -> BTreeSet<u64> {
        self.lock()
            .copies
            .get(&(group.clone(), node))
            .map(|copies| copies.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn holders(&self, group: &GroupId) -> Vec<NodeId> {
        self.lock()
            .copies
            .keys()
            .filter(|(held, _)| held == group)
            .map(|(_, node)| *node)
            .collect()
    }

    /// Starts copying `group`'s ranges to `node` unless a copy is complete or already under way.
    pub fn start_transfer(self: &Arc<Self>, world: &World, group: &GroupId, node: NodeId) {
        {
            let mut state = self.lock();
            if !state.transfers.insert((group.clone(), node)) {
                return;
            }
            state.started.get_or_insert(SimInstant::now());
        }
        world.record(EventKind::Copy(timeline::Copy::Started {
            group: group.clone(),
            node,
        }));
        let (bulk, world, group) = (self.clone(), world.clone(), group.clone());
        drop(SimRuntime::spawn(async move {
            bulk.transfer(&world, &group, node).await;
            bulk.lock().transfers.remove(&(group, node));
        }));
    }

    /// Copies the missing ranges one by one from a complete, running holder; stops when either end
    /// crashes (what was synced stays; the orchestrator starts the rest again).
    async fn transfer(&self, world: &World, group: &GroupId, node: NodeId) {
        let missing: Vec<Range> = {
            let held = self.held(group, node);
            self.ranges_of(group)
                .into_iter()
                .filter(|range| !held.contains(&range.id))
                .collect()
        };
        for range in missing {
            // A replica of the group, or (for a range it is receiving) of the group losing it.
            let source = {
                let state = self.lock();
                state
                    .copies
                    .iter()
                    .filter(|((held_by, holder), copies)| {
                        (held_by == group || *held_by == range.group)
                            && *holder != node
                            && copies.contains_key(&range.id)
                    })
                    .map(|((held_by, holder), _)| (held_by.clone(), *holder))
                    .find(|(_, holder)| world.is_up(*holder))
            };
            let Some((source_group, source)) = source else {
                let reason = format!("bulk: no running holder of range {} for {node}", range.id);
                world.log(&reason);
                world.record(EventKind::Copy(timeline::Copy::Interrupted {
                    group: group.clone(),
                    node,
                    reason,
                }));
                return;
            };
            if !world.is_up(node) {
                return;
            }
            let epochs = (world.network.incarnation(source), world.network.incarnation(node));
            let link = world.network.link(source, node);
            let micros = range.bytes.saturating_mul(1_000_000) / link.bytes_per_second.max(1);
            SimRuntime::sleep(Duration::from_micros(micros)).await;
            if (world.network.incarnation(source), world.network.incarnation(node)) != epochs {
                let reason = format!("bulk: range {} {source} -> {node} cut short by a crash", range.id);
                world.log(&reason);
                world.record(EventKind::Copy(timeline::Copy::Interrupted {
                    group: group.clone(),
                    node,
                    reason,
                }));
                return;
            }
            let mut state = self.lock();
            let Some(copy) = state
                .copies
                .get(&(source_group, source))
                .and_then(|copies| copies.get(&range.id))
                .copied()
            else {
                return;
            };
            state
                .copies
                .entry((group.clone(), node))
                .or_default()
                .insert(range.id, copy);
            state.bytes_moved += range.bytes;
            drop(state);
            world.log(format!(
                "bulk: range {} ({} bytes) {source} -> {node} in {} ms",
                range.id,
                range.bytes,
                micros / 1_000
            ));
            world.record(EventKind::Copy(timeline::Copy::Range {
                group: group.clone(),
                range: range.id,
                from: source,
                to: node,
                bytes: range.bytes,
            }));
        }
        if self.complete(group, node) {
            world.record(EventKind::Copy(timeline::Copy::Complete {
                group: group.clone(),
                node,
            }));
        }
    }

    /// Deletes `node`'s copies of `group`, checking first that a quorum of the group's inside voters
    /// hold durable (complete) copies.
    pub fn purge(&self, world: &World, group: &GroupId, node: NodeId, voters: &BTreeSet<NodeId>) {
        let policy = &world.policies[group];
        let inside_complete = voters
            .iter()
            .filter(|&&voter| {
                voter != node
                    && world.topology.is_inside(voter, &policy.jurisdiction)
                    && self.complete_owned(group, voter)
            })
            .count();
        if inside_complete < GroupPolicy::quorum(voters.len()) {
            world.checks.violation(
                Checker::Conservation,
                Involved::group(group).nodes([node]).nodes(voters.iter().copied()),
                format!(
                    "{node}'s copy of `{group}` purged while only {inside_complete} of {} voters {voters:?} \
                     hold a durable inside copy",
                    voters.len()
                ),
            );
        }
        let mut state = self.lock();
        if state.copies.remove(&(group.clone(), node)).is_some() {
            state.last_purge = Some(SimInstant::now());
        }
        drop(state);
        world.log(format!("bulk: {node}'s copies of {group} purged"));
        world.record(EventKind::Copy(timeline::Copy::Purged {
            group: group.clone(),
            node,
        }));
    }

    pub fn record_attempt(&self, range: u64, record: u64, version: u64) {
        let mut state = self.lock();
        let entry = state.versions.entry((range, record)).or_default();
        entry.1 = entry.1.max(version);
    }

    pub fn record_ack(&self, range: u64, record: u64, version: u64) {
        let mut state = self.lock();
        let entry = state.versions.entry((range, record)).or_default();
        entry.0 = entry.0.max(version);
    }

    /// The versions of a range's written records in one replica's state machine.
    async fn versions_at(
        &self,
        world: &World,
        node: NodeId,
        range: &Range,
        consistency: ReadConsistency,
    ) -> Option<BTreeMap<u64, u64>> {
        let host = world.host(node)?;
        let mut versions = BTreeMap::new();
        for record in 0..RECORDS_WRITTEN_PER_RANGE {
            let read = host.read(&range.group, record_key(range.id, record), consistency);
            let outcome = SimRuntime::timeout(Duration::from_secs(2), read)
                .await
                .ok()?
                .ok()?;
            let version = match outcome.record {
                Some(record) => parse_version(&record.value)?,
                None => 0,
            };
            versions.insert(record, version);
        }
        Some(versions)
    }

    /// The final conservation checks (faults over, the workload stopped).
    pub async fn check(&self, world: &World) {
        for range in &self.current() {
            let Some((leader, host)) = world.leader(&range.group) else {
                continue; // the liveness checker reports a group without a leader
            };
            let Ok(status) = host.status(&range.group) else {
                continue;
            };
            let Some(now) = self
                .versions_at(world, leader, range, ReadConsistency::Linearizable)
                .await
            else {
                world.checks.violation(
                    Checker::Conservation,
                    Involved::group(&range.group).nodes([leader]).keys([range.name()]),
                    format!("range {} could not be read from {leader}", range.id),
                );
                continue;
            };
            // Writes in between: every acknowledged version is there, nothing never attempted is.
            for (&record, &version) in &now {
                let (acked, attempted) = self
                    .lock()
                    .versions
                    .get(&(range.id, record))
                    .copied()
                    .unwrap_or_default();
                if version < acked || version > attempted {
                    world.checks.violation(
                        Checker::Conservation,
                        Involved::group(&range.group)
                            .nodes([leader])
                            .keys([key_name(&record_key(range.id, record))]),
                        format!(
                            "range {} record {record} is at version {version}; acknowledged {acked}, \
                             attempted up to {attempted}",
                            range.id
                        ),
                    );
                }
            }
            let expected = with_versions(range.id, range.fingerprint, &now);
            for &voter in &status.membership.voters {
                self.check_copy(world, range, voter, leader, expected).await;
            }
            self.check_ownership(world, range);
        }
        let policies = &world.policies;
        for (group, node) in self.lock().copies.keys() {
            if !world.topology.is_inside(*node, &policies[group].jurisdiction) {
                world.checks.violation(
                    Checker::Conservation,
                    Involved::group(group).nodes([*node]),
                    format!(
                        "{node} outside {} still holds a copy of `{group}` after cutover",
                        policies[group].jurisdiction.name()
                    ),
                );
            }
        }
    }

    /// One voter's fingerprint of `range` matches the original plus the writes since. Both sides are
    /// read again on a mismatch (bounded): the voter may lag the leader for a moment, and a write whose
    /// call timed out may still commit after the leader was read.
    async fn check_copy(&self, world: &World, range: &Range, voter: NodeId, leader: NodeId, expected: u64) {
        let mut expected = expected;
        let Some(copy) = self
            .lock()
            .copies
            .get(&(range.group.clone(), voter))
            .and_then(|copies| copies.get(&range.id))
            .copied()
        else {
            world.checks.violation(
                Checker::Conservation,
                Involved::group(&range.group).nodes([voter]).keys([range.name()]),
                format!(
                    "voter {voter} of `{}` holds no copy of range {}",
                    range.group, range.id
                ),
            );
            return;
        };
        if copy.records != range.records || copy.bytes != range.bytes {
            world.checks.violation(
                Checker::Conservation,
                Involved::group(&range.group).nodes([voter]).keys([range.name()]),
                format!(
                    "{voter}'s copy of range {} has {} records, {} bytes",
                    range.id, copy.records, copy.bytes
                ),
            );
        }
        let mut seen = None;
        let mut seen_versions = BTreeMap::new();
        for _ in 0..50 {
            if let Some(versions) = self
                .versions_at(world, voter, range, ReadConsistency::Stale)
                .await
            {
                let fingerprint = with_versions(range.id, copy.fingerprint, &versions);
                if fingerprint == expected {
                    return;
                }
                seen = Some(fingerprint);
                seen_versions = versions;
            }
            SimRuntime::sleep(Duration::from_millis(100)).await;
            if let Some(now) = self
                .versions_at(world, leader, range, ReadConsistency::Linearizable)
                .await
            {
                expected = with_versions(range.id, range.fingerprint, &now);
            }
        }
        world.checks.violation(
            Checker::Conservation,
            Involved::group(&range.group).nodes([voter, leader]).keys([range.name()]),
            format!(
                "range {} on {voter}: fingerprint {seen:x?} (records at versions {seen_versions:?}), expected \
                 {expected:x} (the original plus the writes since)",
                range.id
            ),
        );
    }

    /// Exactly one group owns the range: a quorum of its voters hold a copy.
    fn check_ownership(&self, world: &World, range: &Range) {
        let state = self.lock();
        let owners: Vec<&GroupId> = world
            .policies
            .keys()
            .filter(|group| {
                let Some(status) = world.leader(group).and_then(|(_, host)| host.status(group).ok()) else {
                    return false;
                };
                let holding = status
                    .membership
                    .voters
                    .iter()
                    .filter(|&&voter| {
                        state
                            .copies
                            .get(&((*group).clone(), voter))
                            .is_some_and(|copies| copies.contains_key(&range.id))
                    })
                    .count();
                holding >= GroupPolicy::quorum(status.membership.voters.len())
            })
            .collect();
        if owners.len() != 1 {
            world.checks.violation(
                Checker::Conservation,
                Involved::group(&range.group).keys([range.name()]),
                format!(
                    "range {} is owned by {} groups: {owners:?}",
                    range.id,
                    owners.len()
                ),
            );
        }
    }
}

impl Range {
    /// The user the range's records belong to ([`range_user`]).
    pub fn user(&self) -> String {
        range_user(self.id)
    }

    /// The range as the report names it: the keys it spans.
    pub fn name(&self) -> String {
        format!("EEA/bulk-{}/* (range {})", self.id, self.id)
    }

    fn copy(&self) -> Copy {
        Copy {
            records: self.records,
            bytes: self.bytes,
            fingerprint: self.fingerprint,
        }
    }
}

/// Writes to the ranges' written records through each group's leader until `stop`: versions go up
/// by one per record; acknowledged writes join the history's acknowledged writes. The final checks await
/// the returned handle after setting `stop`: a write still in flight when they read would be acknowledged
/// after they read, and counted missing (grow-wide seed 20 did, 34 ms after the read).
pub fn spawn_writer(
    world: World,
    bulk: Arc<Bulk>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) -> <SimRuntime as AsyncRuntime>::JoinHandle<()> {
    let mut rng = world.fork_rng(0xb01c);
    SimRuntime::spawn(async move {
        // Bounded: one write per 50–250 ms of a run far shorter than a day.
        for sequence in 1..=1_000_000u64 {
            SimRuntime::sleep(Duration::from_millis(rng.between(50, 250))).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let range = rng.pick(&bulk.ranges).clone();
            let record = rng.below(RECORDS_WRITTEN_PER_RANGE);
            let version = {
                let state = bulk.lock();
                state
                    .versions
                    .get(&(range.id, record))
                    .map_or(0, |versions| versions.1)
                    + 1
            };
            let write = WriteId {
                client_id: WRITER_CLIENT_ID,
                sequence,
            };
            let command = Command::Put {
                write,
                key: record_key(range.id, record),
                value: format!("v{version}").into_bytes(),
            };
            bulk.record_attempt(range.id, record, version);
            // Where the published map sends the range's user now (a range moved by a split is refused by
            // its old group: not acknowledged, nothing applied).
            let group = bulk.owner(&world, &range);
            let Some((_, host)) = world.leader(&group) else {
                continue;
            };
            let outcome = SimRuntime::timeout(Duration::from_secs(2), host.write(&group, command)).await;
            if let Ok(Ok(Response::Written { revision })) = outcome {
                bulk.record_ack(range.id, record, version);
                history.lock().expect("history lock").acked.push(AckedWrite {
                    group,
                    key: u64::MAX - range.id,
                    write,
                    revision,
                });
            }
        }
    })
}
