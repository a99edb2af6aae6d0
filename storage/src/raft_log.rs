//! openraft's log storage for one replica group, on top of the node-wide log.
//!
//! [`LogEngine`] owns the node's [`Wal`] and its [`CommitQueue`]; [`GroupLog`] is a cheap handle
//! for one group that implements [`RaftLogStorage`] and [`RaftLogReader`].
//!
//! Every operation is accepted into the log's write buffer under the log's lock; the group-commit
//! driver writes the buffer out and syncs it. Durability of each operation:
//! * `append`: acknowledged through openraft's [`IOFlushed`] callback only after an fdatasync that
//!   covers the entries (group commit);
//! * `save_vote`: returns only after an fdatasync covering the vote;
//! * `truncate_after`, `purge`: written in log order and made durable by the next group sync (the
//!   driver syncs whenever anything is unsynced) without blocking the caller;
//! * `save_committed`: written in log order but asks for no sync of its own: it becomes durable with
//!   the next sync something else asks for (an append, a vote, a truncation, a purge, a segment
//!   rotation). A commit index changes on every write, and a sync of its own would add an
//!   fdatasync per write on every replica — one the next write's append then queues behind.
//!
//! Losing any of the last three in a crash is safe: a commit index only speeds up re-apply (openraft
//! re-learns it from the leader), a lost truncation is redone by the leader before any conflicting
//! entry is acknowledged (the append that follows it is synced after it), and a lost purge leaves
//! extra entries.
//!
//! A follower's appends, when nothing else waits for the disk, are synced on the appending task's
//! own thread instead of the driver's (see [`crate::group_commit`]): two thread hand-offs fewer on
//! every replicated write. Only groups opened with [`LogEngine::replica`] do so, and only while their
//! vote is for another node; a leader's append must not wait for its own sync before replication
//! starts, so it leaves the sync to the driver. Which thread syncs never changes what is
//! acknowledged when: a wrong guess of the role costs latency, not safety.
//!
//! Someone must drive the commit queue, or appends never complete: [`LogEngine::spawn_sync_thread`]
//! in production, a runtime task calling [`LogEngine::sync_pending`] in the simulator.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::alias::LogIdOf;
use openraft::alias::VoteOf;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::OneshotSender;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use openraft::vote::RaftVote;

use crate::StorageTypeConfig;
use crate::codec;
use crate::disk::Disk;
use crate::error::LogError;
use crate::group_commit::CommitQueue;
use crate::group_commit::Journal;
use crate::group_commit::SyncThread;
use crate::group_commit::Waiter;
use crate::log::EntryBatch;
use crate::log::LogConfig;
use crate::log::Position;
use crate::log::Wal;

/// The node-wide log shared by every group's [`GroupLog`].
pub struct LogEngine<D: Disk> {
    wal: Mutex<Wal<D>>,
    queue: Arc<CommitQueue>,
}

impl<D: Disk> LogEngine<D> {
    /// Opens (recovering) the log; see [`Wal::open`] for what refuses to start.
    pub fn open(disk: D, config: LogConfig) -> Result<Arc<LogEngine<D>>, LogError> {
        let wal = Wal::open(disk, config)?;
        Ok(Arc::new(LogEngine {
            wal: Mutex::new(wal),
            queue: Arc::new(CommitQueue::new()),
        }))
    }

    /// The queue a group-commit driver must drive.
    pub fn commit_queue(&self) -> Arc<CommitQueue> {
        self.queue.clone()
    }

    /// Starts the production driver; dropping the handle syncs what is pending and stops it.
    pub fn spawn_sync_thread(self: &Arc<Self>) -> io::Result<SyncThread> {
        SyncThread::spawn(self.queue.clone(), self.clone())
    }

    /// One round of group commit, for drivers other than the sync thread: writes what the log
    /// buffered, syncs it and acknowledges what that covered. Returns whether it synced.
    pub fn sync_pending(&self) -> bool {
        self.queue.sync_pending(self)
    }

    /// The openraft log storage of one group; every sync is left to the driver.
    pub fn group<C: StorageTypeConfig>(self: &Arc<Self>, group: u64) -> GroupLog<C, D> {
        GroupLog {
            engine: self.clone(),
            group,
            role: None,
            _config: PhantomData,
        }
    }

    /// The openraft log storage of `node`'s replica of `group`: while the replica follows another
    /// node, its appends sync on the appender's thread when nothing else waits (see the module
    /// docs). For a driver on its own thread; the simulator's driver paces syncs and uses
    /// [`LogEngine::group`].
    pub fn replica<C: StorageTypeConfig>(
        self: &Arc<Self>,
        group: u64,
        node: u64,
    ) -> Result<GroupLog<C, D>, io::Error> {
        let mut log = self.group::<C>(group);
        let following = log
            .stored_vote()?
            .is_some_and(|vote| *vote.leader_id().node_id() != node);
        log.role = Some(Arc::new(Role {
            node,
            following: AtomicBool::new(following),
        }));
        Ok(log)
    }

    /// Groups that have any state in the log.
    pub fn groups(&self) -> Vec<u64> {
        self.lock().groups()
    }

    /// Whether this node's replica of `group` was purged and not brought back since.
    pub fn is_retired(&self, group: u64) -> bool {
        self.lock().is_retired(group)
    }

    /// The groups whose replica on this node was purged.
    pub fn retired_groups(&self) -> Vec<u64> {
        let wal = self.lock();
        wal.groups()
            .into_iter()
            .filter(|&group| wal.is_retired(group))
            .collect()
    }

    /// Segment ids on disk, oldest first.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.lock().segment_ids()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wal<D>> {
        // A panic while holding the lock would leave the index half-updated: stop serving.
        self.wal
            .lock()
            .expect("log index lock poisoned by an earlier panic")
    }

    /// Runs `operation` under the log's lock and returns the lock with the position the write ends
    /// at. On failure the waiter is told, and taken.
    fn accept(
        &self,
        operation: impl FnOnce(&mut Wal<D>) -> Result<Position, LogError>,
        waiter: &mut Option<Waiter>,
    ) -> Result<(std::sync::MutexGuard<'_, Wal<D>>, Position), LogError> {
        let mut wal = self.lock();
        match operation(&mut wal) {
            Ok(end) => Ok((wal, end)),
            Err(error) => {
                drop(wal);
                if let Some(waiter) = waiter.take() {
                    waiter(Err(io::Error::other(error.to_string())));
                }
                Err(error)
            }
        }
    }

    /// Runs one write and hands its end position to the commit queue, both under the log's lock
    /// so the queue sees positions in log order. Then, outside the lock, completes the waiters of
    /// the last sync that the push took over (see [`crate::group_commit`]).
    fn write(
        &self,
        operation: impl FnOnce(&mut Wal<D>) -> Result<Position, LogError>,
        mut waiter: Option<Waiter>,
    ) -> Result<(), LogError> {
        let (wal, end) = self.accept(operation, &mut waiter)?;
        let pushed = self.queue.push(end, waiter);
        drop(wal);
        pushed
            .map(|acknowledged| acknowledged.complete())
            .map_err(LogError::Poisoned)
    }

    /// Like [`LogEngine::write`], but when nothing else is unsynced and no round is running, syncs
    /// on this thread instead of waking the driver (and `waiter` has then run when this returns).
    fn write_and_sync(
        &self,
        operation: impl FnOnce(&mut Wal<D>) -> Result<Position, LogError>,
        waiter: Waiter,
    ) -> Result<(), LogError> {
        let mut waiter = Some(waiter);
        let (wal, end) = self.accept(operation, &mut waiter)?;
        let waiter = waiter.expect("accept keeps the waiter when the write succeeds");
        let pushed = self.queue.push_claiming(end, waiter);
        drop(wal);
        let (acknowledged, claimed) = pushed.map_err(LogError::Poisoned)?;
        acknowledged.complete();
        if claimed {
            self.queue.sync_claimed(self);
        }
        Ok(())
    }

    /// Runs one write into the log's buffer without telling the commit queue: the record reaches the
    /// disk with whatever sync is asked for next, and asks for none itself.
    fn write_unsynced(
        &self,
        operation: impl FnOnce(&mut Wal<D>) -> Result<Position, LogError>,
    ) -> Result<(), LogError> {
        operation(&mut self.lock()).map(|_end| ())
    }
}

impl<D: Disk> Journal for LogEngine<D> {
    type File = D::File;

    fn write_buffered(&self) -> io::Result<(Position, Arc<D::File>)> {
        let written = self
            .lock()
            .write_buffered()
            .map_err(|error| io::Error::other(error.to_string()))?;
        Ok((written.end, written.file))
    }
}

/// openraft's log storage and reader for one group.
pub struct GroupLog<C, D: Disk> {
    engine: Arc<LogEngine<D>>,
    group: u64,
    /// Set for a replica that syncs its appends itself while following (see the module docs).
    role: Option<Arc<Role>>,
    _config: PhantomData<fn() -> C>,
}

/// What the log knows of its replica's role: the vote it last stored.
struct Role {
    node: u64,
    /// The stored vote is for another node: a follower, or about to be one.
    following: AtomicBool,
}

impl<C, D: Disk> Clone for GroupLog<C, D> {
    fn clone(&self) -> Self {
        GroupLog {
            engine: self.engine.clone(),
            group: self.group,
            role: self.role.clone(),
            _config: PhantomData,
        }
    }
}

fn decode_error(group: u64, what: &str, error: crate::error::CodecError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("group {group}: stored {what} does not decode: {error}"),
    )
}

/// Decodes the entry the log holds for `group` at `index`. An entry that does not decode, or whose log
/// id names another index than the record it was stored under, is damage: refused by name, never served.
pub fn decode_entry<C: StorageTypeConfig>(
    group: u64,
    index: u64,
    bytes: &[u8],
) -> Result<C::Entry, io::Error> {
    let entry: C::Entry = codec::decode(bytes).map_err(|e| decode_error(group, "entry", e))?;
    if entry.index() != index {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "group {group}: the log's record for index {index} holds the entry of index {}",
                entry.index()
            ),
        ));
    }
    Ok(entry)
}

impl<C: StorageTypeConfig, D: Disk> GroupLog<C, D> {
    pub fn group(&self) -> u64 {
        self.group
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<C::Entry>, io::Error> {
        let refs = self.engine.lock().locate(self.group, range);
        // Reads run outside the lock; a purge meanwhile only unlinks files we still hold open.
        refs.iter()
            .map(|entry_ref| decode_entry::<C>(self.group, entry_ref.index, &entry_ref.read()?))
            .collect()
    }

    fn stored_vote(&self) -> Result<Option<VoteOf<C>>, io::Error> {
        let vote = self.engine.lock().vote(self.group);
        vote.map(|bytes| codec::decode(&bytes).map_err(|e| decode_error(self.group, "vote", e)))
            .transpose()
    }

    fn last_log_id(&self) -> Result<Option<LogIdOf<C>>, io::Error> {
        let (last, purged) = {
            let wal = self.engine.lock();
            (wal.last_index(self.group), wal.purged(self.group))
        };
        if let Some(last) = last
            && let Some(entry) = self.read_entries(last..=last)?.pop()
        {
            return Ok(Some(entry.log_id()));
        }
        self.decode_purged(purged)
    }

    fn decode_purged(&self, purged: Option<Vec<u8>>) -> Result<Option<LogIdOf<C>>, io::Error> {
        purged
            .map(|bytes| codec::decode(&bytes).map_err(|e| decode_error(self.group, "purge point", e)))
            .transpose()
    }

    /// Deletes this replica from the log, durably: its entries, commit and purge point (its vote
    /// stays). The group's Raft instance must be stopped first; see [`crate::log::Wal::retire`].
    pub async fn retire(&self) -> Result<(), io::Error> {
        let group = self.group;
        self.wait_durable(|wal| wal.retire(group)).await
    }

    /// Makes a retired group a replica here again, from an empty log. Not waited for: any later
    /// record of the group that becomes durable makes this one durable first (the log's order).
    pub fn revive(&self) -> Result<(), io::Error> {
        let group = self.group;
        Ok(self.engine.write(|wal| wal.revive(group), None)?)
    }

    /// Waits until everything written so far is durable.
    async fn wait_durable(
        &self,
        operation: impl FnOnce(&mut Wal<D>) -> Result<Position, LogError>,
    ) -> Result<(), io::Error> {
        let (tx, rx) = C::oneshot();
        let waiter: Waiter = Box::new(move |result| {
            // The receiver is gone only if the caller's future was dropped; nothing to tell then.
            let _ = tx.send(result);
        });
        self.engine.write(operation, Some(waiter))?;
        rx.await
            .map_err(|_| io::Error::other("the log sync driver stopped"))?
    }
}

impl<C: StorageTypeConfig, D: Disk> RaftLogReader<C> for GroupLog<C, D> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        self.read_entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.stored_vote()
    }
}

impl<C: StorageTypeConfig, D: Disk> RaftLogStorage<C> for GroupLog<C, D> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged = self.engine.lock().purged(self.group);
        let last_purged_log_id = self.decode_purged(purged)?;
        let last_log_id = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let bytes = codec::encode(vote).map_err(io::Error::other)?;
        let group = self.group;
        self.wait_durable(move |wal| wal.save_vote(group, bytes)).await?;
        if let Some(role) = &self.role {
            let following = *vote.leader_id().node_id() != role.node;
            role.following.store(following, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let Some(committed) = committed else { return Ok(()) };
        let bytes = codec::encode(&committed).map_err(io::Error::other)?;
        let group = self.group;
        // No sync of its own (see the module docs): losing it in a crash only means re-learning it.
        Ok(self
            .engine
            .write_unsynced(move |wal| wal.save_committed(group, committed.index, bytes))?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        let committed = self.engine.lock().committed(self.group);
        committed
            .map(|bytes| codec::decode(&bytes).map_err(|e| decode_error(self.group, "commit index", e)))
            .transpose()
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Framing and checksumming happen here, outside the log's lock.
        let mut batch = EntryBatch::new(self.group);
        for entry in entries {
            batch.push(entry.index(), &entry)?;
        }
        if batch.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let waiter: Waiter = Box::new(move |result| callback.io_completed(result));
        let following = self
            .role
            .as_ref()
            .is_some_and(|role| role.following.load(Ordering::Relaxed));
        if following {
            Ok(self.engine.write_and_sync(|wal| wal.append(&batch), waiter)?)
        } else {
            Ok(self.engine.write(|wal| wal.append(&batch), Some(waiter))?)
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index + 1);
        let group = self.group;
        Ok(self
            .engine
            .write(move |wal| wal.truncate(group, first_removed), None)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let bytes = codec::encode(&log_id).map_err(io::Error::other)?;
        let group = self.group;
        Ok(self
            .engine
            .write(move |wal| wal.purge(group, log_id.index, bytes), None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;
    use crate::Response;

    openraft::declare_raft_types!(
        TestConfig: D = Command, R = Response
    );

    /// A record stored for one index whose entry names another (checksums intact) made reading it
    /// panic (found while writing the `wal_segment` fuzz target); it is damage, refused by name.
    #[test]
    fn an_entry_stored_under_another_index_is_refused_not_a_panic() {
        let entry = openraft::alias::EntryOf::<TestConfig>::new_blank(
            openraft::testing::log_id::<TestConfig>(1, 1, 7),
        );
        let bytes = codec::encode(&entry).unwrap();
        assert_eq!(decode_entry::<TestConfig>(3, 7, &bytes).unwrap(), entry);
        let error = decode_entry::<TestConfig>(3, 8, &bytes).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error
                .to_string()
                .contains("record for index 8 holds the entry of index 7"),
            "{error}"
        );
        let error = decode_entry::<TestConfig>(3, 7, &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(error.to_string().contains("does not decode"), "{error}");
    }
}
