//! Moving a range that holds records from one group to another, online: the cutover of a split or a
//! move (issue 19), as a protocol a driver runs step by step against the groups' leaders.
//!
//! **API.** [`plan`] turns a [`MapChange`] of the published map into a [`RangeChange`]: the group losing
//! the range, the one gaining it, the moving ranges, the maps of epochs N and N+1. [`observe`] finds from
//! what the cluster holds where a change stands ([`Phase`]); [`step`] runs one phase and answers the next;
//! [`run`] loops from `observe` to [`Phase::Done`], reporting [`Progress`]; [`abort`] undoes a change
//! that has not fenced its loser. Every call goes through a [`Leaders`]: something that runs a command,
//! a bounded range read, a digest or a publication on a group's leader — [`HostLeaders`] over hosts in
//! one process (tests, the simulator's orchestrator), the admin endpoints for the CLI.
//!
//! **Phases**, from epoch N to N+1:
//! 1. [`Phase::Prepare`]: the gainer commits its ranges of N if it has none (so it refuses the moving
//!    range's users) and marks the moving ranges *incoming* at N+1 (`Command::Receive`).
//! 2. [`Phase::Copy`]: the range's records are read from the loser's leader (after a linearizable
//!    barrier, in batches of at most [`BATCH_RECORDS`] records and [`BATCH_BYTES`] value bytes) and
//!    written into the gainer (`Command::CopyIn`, each entry well under the 16 MiB message bound) while
//!    the loser still serves writes. A pass is a merge of both sides in key order, so it copies what
//!    differs and deletes what the loser no longer holds: the same pass is the bulk copy and the tail.
//! 3. [`Phase::Fence`]: the loser commits its ranges of N+1 with `Command::Depart`: from that entry on it
//!    refuses the range's users, and keeps their records as *departing*.
//! 4. [`Phase::Tail`]: a second pass copies what changed between the bulk copy and the fence, deletions
//!    included, and the loser's client sessions are merged into the gainer's (`Command::MergeSessions`,
//!    so a write the loser applied and its client retries at the gainer is answered, not applied twice);
//!    then each leader computes the range's digest after a barrier and the change stops
//!    (`DigestMismatch`) unless they are equal: the gainer is never admitted with other records.
//! 5. [`Phase::Admit`]: the gainer commits its ranges of N+1; the incoming ranges are its own.
//! 6. [`Phase::Publish`]: the directory group's map goes from N to N+1 by compare-and-set.
//! 7. [`Phase::Purge`]: the loser deletes its departing records in batches (`Command::Purge`). Only now:
//!    the gainer holds them committed (each `CopyIn` is acknowledged once a quorum holds it) and admitted.
//!
//! **Resumption.** Each phase is idempotent, and [`observe`] reads where a change stands from the groups
//! (the gainer's incoming or admitted ranges, the loser's fence) and the published map, so a change
//! interrupted anywhere (a driver killed, a node restarted) is finished by running it again with the same
//! arguments. Before the fence, [`abort`] may undo it (cancel the incoming mark, purge the gainer's copy);
//! after the fence it only rolls forward, since the loser already refuses the range's users.
//!
//! The unavailability of the moving range is the time from the fence to the publication: the tail pass,
//! the digests and two committed entries.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use openraft::type_config::TypeConfigExt;
use placement::GroupId;
use storage::apply::{RangeBatch, RangeDigest, SessionBatch};
use storage::record::{COPY_RECORDS_MAX, COPY_SESSIONS_MAX, CopiedRecord, Ownership, PURGE_RECORDS_MAX};
use storage::{Command, CommandError, Record, RecordKey, Response};

use crate::config::GroupConfig;
use crate::directory::{Directory, DirectoryError, ShardMap};
use crate::host::{Host, HostError, ReadConsistency};
use crate::map_change::{self, MapChange};
use crate::stores::Stores;
use crate::transport::Transport;

/// Records read from the loser per batch (also bounds one `CopyIn`).
pub const BATCH_RECORDS: usize = 1024;
/// Value bytes read per batch: with a last value of at most 1 MiB, one `CopyIn` stays under 5 MiB.
pub const BATCH_BYTES: usize = 4 << 20;
/// Records deleted per `Purge` entry.
pub const PURGE_BATCH: u32 = 1024;
/// Client sessions read from the loser, and merged into the gainer, per batch.
pub const BATCH_SESSIONS: usize = 1024;

const _: () = assert!(
    BATCH_RECORDS <= COPY_RECORDS_MAX
        && PURGE_BATCH <= PURGE_RECORDS_MAX
        && BATCH_SESSIONS <= COPY_SESSIONS_MAX
);

/// A split or move of a range that may hold records, planned from the published map of epoch N.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeChange {
    pub jurisdiction: String,
    pub current: ShardMap,
    pub next: ShardMap,
    pub loser: GroupId,
    pub gainer: GroupId,
    /// The routing positions that change hands, `(start, end)` inclusive.
    pub moving: Vec<(u64, u64)>,
}

impl RangeChange {
    fn incoming(&self) -> Ownership {
        Ownership {
            jurisdiction: self.jurisdiction.clone(),
            epoch: self.next.epoch(),
            ranges: self.moving.clone(),
        }
    }
}

/// Where a change stands; each phase is run by [`step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Prepare,
    Copy,
    Fence,
    Tail,
    Admit,
    Publish,
    Purge,
    Done,
}

/// What a run reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Progress {
    /// A phase begins.
    Phase { phase: Phase },
    /// A batch was copied into the gainer (`records` written or deleted, `bytes` of values).
    Copied { records: u64, bytes: u64 },
    /// The range's digests, equal on both sides.
    Verified { records: u64, value_bytes: u64 },
    /// A batch of departing records was deleted from the loser.
    Purged { records: u64 },
    /// A batch of the loser's client sessions was merged into the gainer (`taken` of `carried` were
    /// later than the gainer's).
    Sessions { carried: u64, taken: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RangeCopyError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("group `{group}`: {error}")]
    Host { group: GroupId, error: HostError },
    #[error("group `{group}` refused {what}: {error}")]
    Refused {
        group: GroupId,
        what: String,
        error: CommandError,
    },
    #[error(
        "the range's records differ after the tail copy: `{loser}` holds {loser_digest:?}, `{gainer}` \
         {gainer_digest:?}; the gainer is not admitted"
    )]
    DigestMismatch {
        loser: GroupId,
        gainer: GroupId,
        loser_digest: RangeDigest,
        gainer_digest: RangeDigest,
    },
    #[error("the change moves {count} ranges between several groups; one handover at a time")]
    SeveralHandovers { count: usize },
    #[error("`{loser}` is fenced already (its ranges of epoch {epoch}): the change only rolls forward")]
    Fenced { loser: GroupId, epoch: u64 },
    #[error("group `{group}` answered {what} with {answer}")]
    Unexpected {
        group: GroupId,
        what: String,
        answer: String,
    },
}

/// Runs the protocol's operations on a group's leader (finding it, and retrying while leadership moves,
/// is the implementation's job). Every operation is safe to repeat.
pub trait Leaders: Sync {
    fn write(
        &self,
        group: &GroupId,
        command: Command,
    ) -> impl Future<Output = Result<Response, RangeCopyError>> + Send;
    fn read_range(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
        after: Option<RecordKey>,
    ) -> impl Future<Output = Result<RangeBatch, RangeCopyError>> + Send;
    fn digest(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
    ) -> impl Future<Output = Result<RangeDigest, RangeCopyError>> + Send;
    /// The group's committed ranges and its incoming ones.
    fn range_state(
        &self,
        group: &GroupId,
    ) -> impl Future<Output = Result<(Option<Ownership>, Option<Ownership>), RangeCopyError>> + Send;
    /// The group's client sessions after client `after`, at most [`BATCH_SESSIONS`].
    fn read_sessions(
        &self,
        group: &GroupId,
        after: Option<u64>,
    ) -> impl Future<Output = Result<SessionBatch, RangeCopyError>> + Send;
    /// The published map, read linearizably on the directory group's leader.
    fn published(&self, jurisdiction: &str) -> impl Future<Output = Result<ShardMap, RangeCopyError>> + Send;
    /// Publishes `next` over its previous epoch (done already: `Ok`).
    fn publish(&self, next: &ShardMap) -> impl Future<Output = Result<(), RangeCopyError>> + Send;
}

/// The change `change` makes to the published map `current`. `Ok(None)`: the map already shows it
/// (published before an interruption), and only the departing records may be left to purge.
pub fn plan(
    directory: &Directory,
    current: &ShardMap,
    change: &MapChange,
) -> Result<Option<RangeChange>, RangeCopyError> {
    let (next, _) = match map_change::plan(directory, current, change) {
        Ok(planned) => planned,
        Err(DirectoryError::Change { .. }) if already_published(current, change)? => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let handovers = current.ranged()?.handovers(&next.ranged()?);
    let [first, rest @ ..] = handovers.as_slice() else {
        return Err(RangeCopyError::SeveralHandovers { count: 0 });
    };
    if rest
        .iter()
        .any(|other| other.from != first.from || other.to != first.to)
    {
        return Err(RangeCopyError::SeveralHandovers {
            count: handovers.len(),
        });
    }
    Ok(Some(RangeChange {
        jurisdiction: current.jurisdiction().to_string(),
        current: current.clone(),
        next,
        loser: first.from.clone(),
        gainer: first.to.clone(),
        moving: handovers
            .iter()
            .map(|handover| (handover.start, handover.end))
            .collect(),
    }))
}

fn already_published(current: &ShardMap, change: &MapChange) -> Result<bool, RangeCopyError> {
    let ranged = current.ranged()?;
    let (start, to) = match change {
        MapChange::Split { at, to } => (*at, to),
        MapChange::Move { start, to } => (*start, to),
    };
    Ok(ranged
        .ranges()
        .iter()
        .any(|range| range.start == start && range.group == *to))
}

/// Where `change` stands, from what the groups hold.
pub async fn observe(leaders: &impl Leaders, change: &RangeChange) -> Result<Phase, RangeCopyError> {
    let next = change.next.epoch();
    let (gainer_owned, gainer_incoming) = leaders.range_state(&change.gainer).await?;
    if gainer_owned.as_ref().is_some_and(|owned| owned.epoch >= next) {
        return Ok(Phase::Publish);
    }
    let (loser_owned, _) = leaders.range_state(&change.loser).await?;
    if loser_owned.as_ref().is_some_and(|owned| owned.epoch >= next) {
        return Ok(Phase::Tail);
    }
    Ok(if gainer_incoming == Some(change.incoming()) {
        Phase::Copy
    } else {
        Phase::Prepare
    })
}

/// Runs `phase` of `change`; answers the phase that follows.
pub async fn step(
    leaders: &impl Leaders,
    change: &RangeChange,
    phase: Phase,
    progress: &mut impl FnMut(Progress),
) -> Result<Phase, RangeCopyError> {
    progress(Progress::Phase { phase });
    match phase {
        Phase::Prepare => {
            prepare(leaders, change).await?;
            Ok(Phase::Copy)
        }
        Phase::Copy => {
            copy_pass(leaders, change, progress).await?;
            Ok(Phase::Fence)
        }
        Phase::Fence => {
            let ownership = change.next.ownership_of(&change.loser)?;
            expect_ownership(leaders, &change.loser, Command::Depart(ownership), "its fence").await?;
            #[cfg(feature = "canaries")]
            if canary::early_purge() {
                purge(leaders, &change.loser, &change.jurisdiction, progress).await?;
            }
            Ok(Phase::Tail)
        }
        Phase::Tail => {
            copy_pass(leaders, change, progress).await?;
            sessions_pass(leaders, change, progress).await?;
            verify(leaders, change, progress).await?;
            Ok(Phase::Admit)
        }
        Phase::Admit => {
            let ownership = change.next.ownership_of(&change.gainer)?;
            expect_ownership(
                leaders,
                &change.gainer,
                Command::SetOwnership(ownership),
                "its admission",
            )
            .await?;
            Ok(Phase::Publish)
        }
        Phase::Publish => {
            leaders.publish(&change.next).await?;
            Ok(Phase::Purge)
        }
        Phase::Purge => {
            purge(leaders, &change.loser, &change.jurisdiction, progress).await?;
            Ok(Phase::Done)
        }
        Phase::Done => Ok(Phase::Done),
    }
}

/// Runs `change` from wherever it stands to the end.
pub async fn run(
    leaders: &impl Leaders,
    change: &RangeChange,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let mut phase = observe(leaders, change).await?;
    while phase != Phase::Done {
        phase = step(leaders, change, phase, progress).await?;
    }
    Ok(())
}

/// Finishes a change found published already ([`plan`] answered `None`): purges every group of the
/// jurisdiction of the records it no longer owns, where that is safe — a group whose committed ranges
/// are of an epoch already published, so whatever it departed is held by its admitted new owner.
pub async fn finish_published(
    leaders: &impl Leaders,
    groups: &[GroupId],
    jurisdiction: &str,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let published = leaders.published(jurisdiction).await?.epoch();
    progress(Progress::Phase { phase: Phase::Purge });
    for group in groups {
        let (owned, incoming) = leaders.range_state(group).await?;
        if incoming.is_none() && owned.is_some_and(|owned| owned.epoch <= published) {
            purge(leaders, group, jurisdiction, progress).await?;
        }
    }
    Ok(())
}

/// Undoes a change whose loser is not fenced: the gainer's incoming mark is cancelled and its copy
/// purged. After the fence, `Fenced`: the change only rolls forward.
pub async fn abort(
    leaders: &impl Leaders,
    change: &RangeChange,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let (loser_owned, _) = leaders.range_state(&change.loser).await?;
    if let Some(owned) = loser_owned.filter(|owned| owned.epoch >= change.next.epoch()) {
        return Err(RangeCopyError::Fenced {
            loser: change.loser.clone(),
            epoch: owned.epoch,
        });
    }
    let cancel = Command::CancelIncoming {
        jurisdiction: change.jurisdiction.clone(),
        epoch: change.next.epoch(),
    };
    match leaders.write(&change.gainer, cancel).await? {
        Response::IncomingSet { .. } => {}
        answer => {
            return Err(refused_or_unexpected(
                &change.gainer,
                "cancelling the incoming ranges",
                answer,
            ));
        }
    }
    // The gainer's unowned records are the abandoned copy's, unless it is itself fenced for a later
    // change not yet published (then its departing records wait for that change's purge).
    let published = leaders.published(&change.jurisdiction).await?.epoch();
    let (owned, _) = leaders.range_state(&change.gainer).await?;
    if owned.is_some_and(|owned| owned.epoch <= published) {
        purge(leaders, &change.gainer, &change.jurisdiction, progress).await?;
    }
    Ok(())
}

async fn prepare(leaders: &impl Leaders, change: &RangeChange) -> Result<(), RangeCopyError> {
    let (owned, _) = leaders.range_state(&change.gainer).await?;
    if owned.is_none() {
        let now = change.current.ownership_of(&change.gainer)?;
        expect_ownership(
            leaders,
            &change.gainer,
            Command::SetOwnership(now),
            "its current ranges",
        )
        .await?;
    }
    match leaders
        .write(&change.gainer, Command::Receive(change.incoming()))
        .await?
    {
        Response::IncomingSet { .. } => Ok(()),
        answer => Err(refused_or_unexpected(
            &change.gainer,
            "the incoming ranges",
            answer,
        )),
    }
}

async fn expect_ownership(
    leaders: &impl Leaders,
    group: &GroupId,
    command: Command,
    what: &str,
) -> Result<(), RangeCopyError> {
    match leaders.write(group, command).await? {
        Response::OwnershipSet { .. } => Ok(()),
        answer => Err(refused_or_unexpected(group, what, answer)),
    }
}

fn refused_or_unexpected(group: &GroupId, what: &str, answer: Response) -> RangeCopyError {
    match answer {
        Response::Rejected(error) => RangeCopyError::Refused {
            group: group.clone(),
            what: what.to_string(),
            error,
        },
        answer => RangeCopyError::Unexpected {
            group: group.clone(),
            what: what.to_string(),
            answer: format!("{answer:?}"),
        },
    }
}

/// One pass over the moving ranges: both sides read in key order, batch by batch, and what differs
/// written into the gainer (the loser's record, or its absence).
async fn copy_pass(
    leaders: &impl Leaders,
    change: &RangeChange,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let mut after: Option<RecordKey> = None;
    loop {
        let source = leaders
            .read_range(&change.loser, &change.jurisdiction, &change.moving, after.clone())
            .await?;
        let target = leaders
            .read_range(
                &change.gainer,
                &change.jurisdiction,
                &change.moving,
                after.clone(),
            )
            .await?;
        // Compare only up to where both runs are complete: the smaller of their last keys when cut short,
        // in the store's key order (the encoded keys', which is not `RecordKey`'s).
        let upper = [&source, &target]
            .iter()
            .filter(|run| run.more)
            .filter_map(|run| run.records.last().map(|(key, _)| encoded(key)))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .min();
        let differing = difference(&source, &target, upper.as_ref().map(|(bytes, _)| bytes))?;
        let bytes: u64 = differing
            .iter()
            .filter_map(|copied| copied.record.as_ref())
            .map(|record| record.value.len() as u64)
            .sum();
        if !differing.is_empty() {
            let records = differing.len() as u64;
            let command = Command::CopyIn {
                jurisdiction: change.jurisdiction.clone(),
                epoch: change.next.epoch(),
                records: differing,
            };
            match leaders.write(&change.gainer, command).await? {
                Response::Copied { .. } => progress(Progress::Copied { records, bytes }),
                answer => return Err(refused_or_unexpected(&change.gainer, "a copied batch", answer)),
            }
        }
        match upper {
            Some((_, upper)) => after = Some(upper),
            None => return Ok(()),
        }
    }
}

/// Carries the loser's client sessions into the gainer (`storage::apply::sessions`), after the fence:
/// from then on the loser applies no write of the range, so the entries of the range's writes are
/// final, and a write it applied is answered, not applied again, when its client retries it at the
/// gainer. Every session is read: an entry does not say which user its write was for.
async fn sessions_pass(
    leaders: &impl Leaders,
    change: &RangeChange,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let mut after = None;
    loop {
        let batch = leaders.read_sessions(&change.loser, after).await?;
        let Some(last) = batch.sessions.last() else {
            return Ok(());
        };
        after = Some(last.client_id);
        let carried = batch.sessions.len() as u64;
        let command = Command::MergeSessions {
            jurisdiction: change.jurisdiction.clone(),
            epoch: change.next.epoch(),
            sessions: batch.sessions,
        };
        match leaders.write(&change.gainer, command).await? {
            Response::SessionsMerged { taken } => progress(Progress::Sessions { carried, taken }),
            answer => {
                return Err(refused_or_unexpected(
                    &change.gainer,
                    "the client sessions",
                    answer,
                ));
            }
        }
        if !batch.more {
            return Ok(());
        }
    }
}

/// A record key with its encoding, which orders keys as the store does.
fn encoded(key: &RecordKey) -> Result<(Vec<u8>, RecordKey), RangeCopyError> {
    let bytes = storage::apply::record_key(key).map_err(|error| RangeCopyError::Host {
        group: GroupId(String::new()),
        error: HostError::Store(error.to_string()),
    })?;
    Ok((bytes, key.clone()))
}

/// What the gainer must write so that its run equals the loser's, for keys up to `upper` (all if none),
/// in the store's key order.
fn difference(
    source: &RangeBatch,
    target: &RangeBatch,
    upper: Option<&Vec<u8>>,
) -> Result<Vec<CopiedRecord>, RangeCopyError> {
    let within = |run: &RangeBatch| -> Result<BTreeMap<Vec<u8>, (RecordKey, Record)>, RangeCopyError> {
        let mut kept = BTreeMap::new();
        for (key, record) in &run.records {
            let (bytes, key) = encoded(key)?;
            if upper.is_none_or(|upper| bytes <= *upper) {
                kept.insert(bytes, (key, record.clone()));
            }
        }
        Ok(kept)
    };
    let source = within(source)?;
    let target = within(target)?;
    let mut differing: Vec<CopiedRecord> = source
        .iter()
        .filter(|(bytes, (_, record))| target.get(*bytes).map(|(_, held)| held) != Some(record))
        .map(|(_, (key, record))| CopiedRecord {
            key: key.clone(),
            record: Some(record.clone()),
        })
        .collect();
    differing.extend(
        target
            .iter()
            .filter(|(bytes, _)| !source.contains_key(*bytes))
            .map(|(_, (key, _))| CopiedRecord {
                key: key.clone(),
                record: None,
            }),
    );
    Ok(differing)
}

async fn verify(
    leaders: &impl Leaders,
    change: &RangeChange,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let loser_digest = leaders
        .digest(&change.loser, &change.jurisdiction, &change.moving)
        .await?;
    let gainer_digest = leaders
        .digest(&change.gainer, &change.jurisdiction, &change.moving)
        .await?;
    if loser_digest != gainer_digest {
        return Err(RangeCopyError::DigestMismatch {
            loser: change.loser.clone(),
            gainer: change.gainer.clone(),
            loser_digest,
            gainer_digest,
        });
    }
    progress(Progress::Verified {
        records: loser_digest.records,
        value_bytes: loser_digest.value_bytes,
    });
    Ok(())
}

async fn purge(
    leaders: &impl Leaders,
    group: &GroupId,
    jurisdiction: &str,
    progress: &mut impl FnMut(Progress),
) -> Result<(), RangeCopyError> {
    let mut after = None;
    loop {
        let command = Command::Purge {
            jurisdiction: jurisdiction.to_string(),
            after: after.clone(),
            limit: PURGE_BATCH,
        };
        match leaders.write(group, command).await? {
            Response::Purged { deleted, next } => {
                if deleted > 0 {
                    progress(Progress::Purged { records: deleted });
                }
                match next {
                    Some(next) => after = Some(next),
                    None => return Ok(()),
                }
            }
            answer => return Err(refused_or_unexpected(group, "a purge", answer)),
        }
    }
}

/// [`Leaders`] over hosts in one process, each with its node's directory: the leader of a group is the
/// host whose replica says it leads; an operation meeting `NotLeader` or a Raft error (an election)
/// is tried again, up to [`HostLeaders::ATTEMPTS`] times [`HostLeaders::PAUSE`] on the runtime's clock.
pub struct HostLeaders<'a, C: GroupConfig, T: Transport, S: Stores<C>> {
    pub nodes: Vec<(&'a Host<C, T, S>, &'a Directory)>,
}

impl<'a, C: GroupConfig, T: Transport, S: Stores<C>> HostLeaders<'a, C, T, S> {
    pub const ATTEMPTS: u32 = 300;
    pub const PAUSE: Duration = Duration::from_millis(50);

    fn leader(&self, group: &GroupId) -> Option<(&'a Host<C, T, S>, &'a Directory)> {
        self.nodes.iter().copied().find(|(host, _)| {
            host.status(group)
                .is_ok_and(|status| status.leader == Some(host.identity().node))
        })
    }

    async fn on_leader<R, F, Fut>(&self, group: &GroupId, operation: F) -> Result<R, RangeCopyError>
    where
        F: Fn(&'a Host<C, T, S>, &'a Directory) -> Fut,
        Fut: Future<Output = Result<R, HostError>>,
    {
        let mut last = None;
        for _ in 0..Self::ATTEMPTS {
            if let Some((host, directory)) = self.leader(group) {
                match operation(host, directory).await {
                    Ok(answer) => return Ok(answer),
                    Err(error @ (HostError::NotLeader { .. } | HostError::Raft { .. })) => last = Some(error),
                    Err(error) => {
                        return Err(RangeCopyError::Host {
                            group: group.clone(),
                            error,
                        });
                    }
                }
            }
            C::sleep(Self::PAUSE).await;
        }
        Err(RangeCopyError::Host {
            group: group.clone(),
            error: last.unwrap_or(HostError::NotLeader {
                group: group.clone(),
                leader: None,
            }),
        })
    }
}

impl<C: GroupConfig, T: Transport, S: Stores<C>> Leaders for HostLeaders<'_, C, T, S> {
    async fn write(&self, group: &GroupId, command: Command) -> Result<Response, RangeCopyError> {
        self.on_leader(group, |host, _| host.write(group, command.clone()))
            .await
    }

    async fn read_range(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
        after: Option<RecordKey>,
    ) -> Result<RangeBatch, RangeCopyError> {
        self.on_leader(group, |host, _| {
            host.read_range(
                group,
                jurisdiction,
                ranges,
                after.clone(),
                BATCH_RECORDS,
                BATCH_BYTES,
            )
        })
        .await
    }

    async fn digest(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
    ) -> Result<RangeDigest, RangeCopyError> {
        self.on_leader(group, |host, _| host.range_digest(group, jurisdiction, ranges))
            .await
    }

    async fn range_state(
        &self,
        group: &GroupId,
    ) -> Result<(Option<Ownership>, Option<Ownership>), RangeCopyError> {
        self.on_leader(group, |host, _| host.range_state(group)).await
    }

    async fn read_sessions(
        &self,
        group: &GroupId,
        after: Option<u64>,
    ) -> Result<SessionBatch, RangeCopyError> {
        self.on_leader(group, |host, _| host.read_sessions(group, after, BATCH_SESSIONS))
            .await
    }

    async fn published(&self, jurisdiction: &str) -> Result<ShardMap, RangeCopyError> {
        let (_, any) = self.nodes.first().copied().ok_or_else(|| RangeCopyError::Host {
            group: GroupId(String::new()),
            error: HostError::Store("no node to ask".into()),
        })?;
        let directory_group = any.directory_group(jurisdiction)?;
        let record = self
            .on_leader(&directory_group, |host, _| {
                host.read(
                    &directory_group,
                    crate::directory::shard_map_key(jurisdiction),
                    ReadConsistency::Linearizable,
                )
            })
            .await?;
        let Some(record) = record.record else {
            return Err(RangeCopyError::Directory(DirectoryError::Unavailable {
                jurisdiction: jurisdiction.to_string(),
                directory: directory_group,
                reason: "no map is published yet".into(),
            }));
        };
        Ok(ShardMap::decode(jurisdiction, &record.value)?)
    }

    async fn publish(&self, next: &ShardMap) -> Result<(), RangeCopyError> {
        let (_, any) = self.nodes.first().copied().ok_or_else(|| RangeCopyError::Host {
            group: GroupId(String::new()),
            error: HostError::Store("no node to ask".into()),
        })?;
        let directory_group = any.directory_group(next.jurisdiction())?;
        for _ in 0..Self::ATTEMPTS {
            if let Some((host, directory)) = self.leader(&directory_group) {
                match directory.publish(host, next).await {
                    Ok(()) => return Ok(()),
                    Err(DirectoryError::NotLeader { .. } | DirectoryError::Unavailable { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            C::sleep(Self::PAUSE).await;
        }
        Err(DirectoryError::NotLeader {
            group: directory_group,
            leader: None,
        }
        .into())
    }
}

/// A planted bug, with the `canaries` feature only (never in a production build): the loser's departing
/// records are purged right after its fence, before the tail copy and before the gainer holds them. The
/// tail pass then copies their absence, so the digests agree and the change completes having lost every
/// write of the range: only a check of the acknowledged writes against the new group (the raft test
/// `range_copy`'s, the simulator's conservation checker) catches it.
#[cfg(feature = "canaries")]
pub mod canary {
    use std::sync::atomic::{AtomicBool, Ordering};

    static EARLY_PURGE: AtomicBool = AtomicBool::new(false);

    pub fn set_early_purge(on: bool) {
        EARLY_PURGE.store(on, Ordering::Relaxed);
    }

    pub fn early_purge() -> bool {
        EARLY_PURGE.load(Ordering::Relaxed)
    }
}
