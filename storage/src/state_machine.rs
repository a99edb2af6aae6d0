//! openraft's state machine for one replica group, over any [`Backend`].
//!
//! Each `apply` call becomes one atomic backend batch built by the deterministic [`Applier`]. The
//! backend is wrapped in [`WriteBehind`]: a non-durable batch gathers in memory, read through, and
//! reaches the store (one redb write transaction) with the next durable commit or once the pending
//! changes pass a bound, so a lightly loaded group does not pay a transaction per entry, and
//! committing a batch costs little more than building it. Its responses are sent once it is
//! committed; `apply` returns then too, and openraft counts an entry applied — which linearizable
//! reads wait for — only then. A small batch nobody waits for (a follower's, whose commit index
//! came with an append) yields once before it is built, so the append's answer, which the leader
//! waits for, leaves before the apply's CPU.
//!
//! **Durability choice.** Applies are not fsynced one by one. A batch commits non-durably (into
//! the write-behind map); after every [`DURABLE_EVERY_BATCHES`]th batch, or sooner once
//! [`DURABLE_EVERY_BYTES`] were applied, one durable commit is queued on the state machine's
//! thread, *after* the batch's responses are sent, so no client waits for it. It writes everything
//! pending to the store under the lock, then waits for the disk (a [`crate::backend::SyncJob`], a
//! millisecond or more) without it, so small applies go on meanwhile instead of queuing behind an
//! `fdatasync`. Every snapshot build and every snapshot install commit durably.
//!
//! **Snapshots.** A build makes the state durable and takes a read view under the lock, then
//! releases it: the scan into the spool (see [`crate::snapshot`]) runs on a thread of its own
//! while applies go on (on the caller's task and on the dedicated thread), so a build of a large
//! keyspace does not stall the group's writes. The
//! current snapshot is kept as a handle (a file in production), handed to openraft to send
//! without reading it into memory. After a crash the backend is at its last durable
//! commit — a consistent state that includes its own applied log id — and openraft re-applies the
//! committed entries after it from the log, which is already durable (and whose purge never passes
//! a durable snapshot, because building a snapshot makes the state durable first). Fsyncing each
//! apply would double the syncs on the write path for no gain in safety: the log is the durable
//! record of what was committed. Re-applying is safe because applying is deterministic and retried
//! writes are deduplicated. A failed background durable commit fails every later apply.
//!
//! **Where the work runs.** A non-durable commit touches memory and the page cache only, so small
//! applies (up to [`INLINE_APPLY_ENTRIES_MAX`] entries: a lightly loaded group's) and reads run on
//! openraft's state machine task when the store is free ([`Execution`]), saving two thread hand-offs
//! per batch. Large batches, and the calls that sync, run on the dedicated thread, so a busy group's
//! apply overlaps the runtime's network and log work instead of holding a runtime worker.
//!
//! Opening verifies the stored metadata and the current snapshot, refusing to start on damage.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::TryLockError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::Stream;
use futures_util::TryStreamExt;
use openraft::EntryPayload;
use openraft::Instant as _;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::Snapshot;
use openraft::StoredMembership;
use openraft::alias::LogIdOf;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::StoredMembershipOf;
use openraft::storage::ApplyResponder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;

use crate::StorageTypeConfig;
use crate::apply;
use crate::apply::Applier;
use crate::backend::Backend;
use crate::backend::BackendView;
use crate::backend::Table;
use crate::backend::WriteBatch;
pub use crate::blocking::Execution;
use crate::blocking::Executor;
use crate::build_pace::BuildPace;
use crate::codec;
use crate::error::SnapshotError;
use crate::error::StateMachineError;
use crate::priority::SNAPSHOT_THREAD_NICE;
use crate::record::Record;
use crate::record::RecordKey;
use crate::record::Response;
use crate::snapshot;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotHeader;
use crate::snapshot::SnapshotSpool;
use crate::write_behind::WriteBehind;

/// After this many apply batches, a durable commit is queued (bounds the re-apply after a crash).
pub const DURABLE_EVERY_BATCHES: u32 = 64;

/// After this many bytes of applied changes (keys and values), a durable commit is queued even if
/// fewer than [`DURABLE_EVERY_BATCHES`] batches were applied. It bounds what one durable commit sends
/// to the disk at once: a replica catching up on its log after a snapshot install applies batches of
/// thousands of entries, and 64 of them left the store over 100 MB of dirty pages for one sync, which
/// held every log fsync on the disk behind it: the write p99 of the cluster beside it rose to
/// 100–400 ms in that second (docs/performance.md). A group's steady writes reach the batch bound first.
pub const DURABLE_EVERY_BYTES: u64 = 4 << 20;

/// Apply batches of at most this many entries run on the caller's task (when the store is free).
pub const INLINE_APPLY_ENTRIES_MAX: usize = 8;

/// How long a snapshot build waits, at most, while the group's membership is changing
/// ([`membership_is_changing`]).
///
/// **Why wait.** A build copies the whole keyspace (a gigabyte at a million records, 8–30 s at the
/// background priority) to bound the log, which can wait a minute; a membership change is usually a
/// migration, an evacuation or a rebalance, and then every replica of the group is busy with the copy
/// the operator is waiting for: the leader sends it, a new replica receives it. Builds that fell
/// inside a migration (on the leader, on the old voters, and on each new replica as soon as it had
/// caught up, while the next was still copying) took the cores and the disk from both the copy and
/// the group's writes (docs/performance.md, "Migrating a legacy group at volume"). Deferred, the
/// build runs once the membership has settled, or after this bound whatever happens (a group whose
/// policy keeps learners for good builds this much later than it would have); meanwhile the log is
/// only purged later, which is safe.
pub const BUILD_DEFERRED_MAX: Duration = Duration::from_secs(60);

/// How often a deferred build looks at the membership again.
const BUILD_DEFERRAL_POLL: Duration = Duration::from_millis(250);

/// What was applied since the last durable commit, against the two bounds that queue the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SinceDurable {
    batches: u32,
    bytes: u64,
}

impl SinceDurable {
    fn add(&mut self, batch: &WriteBatch) {
        let bytes: usize = batch
            .changes
            .iter()
            .map(|((_, key), value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.batches += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    fn due(&self) -> bool {
        self.batches >= DURABLE_EVERY_BATCHES || self.bytes >= DURABLE_EVERY_BYTES
    }

    fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// What is left once a durable commit covered `covered` (applies made while it ran are not).
    fn without(self, covered: SinceDurable) -> SinceDurable {
        SinceDurable {
            batches: self.batches.saturating_sub(covered.batches),
            bytes: self.bytes.saturating_sub(covered.bytes),
        }
    }
}

struct Core<B> {
    backend: WriteBehind<B>,
    since_durable: SinceDurable,
    /// A durable commit is queued on the dedicated thread and has not run yet.
    durable_commit_queued: bool,
    /// Why a background durable commit failed: the store is no longer trusted to reach the disk.
    durable_commit_failed: Option<String>,
    /// The last snapshot built or installed (or found at open).
    current_snapshot: Option<SnapshotData>,
    /// Whether the applied membership is changing ([`membership_is_changing`]): set as membership
    /// entries are applied and snapshots installed, read by a build in progress between its chunks.
    membership_changing: Arc<AtomicBool>,
    /// The last build was given up (the membership began to change while it ran): the next one is not,
    /// so the log is kept at most one snapshot interval longer.
    last_build_given_up: bool,
}

/// The state machine of one group.
pub struct StateMachine<C, B: Backend> {
    core: Arc<Mutex<Core<B>>>,
    executor: Arc<Executor>,
    /// Snapshots installed since the state machine was opened (openraft installs only those newer
    /// than what it has committed).
    snapshots_installed: Arc<AtomicU64>,
    /// The core's [`Core::membership_changing`], read without its lock.
    membership_changing: Arc<AtomicBool>,
    /// Held by every handle: once none is left the group is closed, and a build in progress gives up.
    handles: Arc<()>,
    /// The node's pace for snapshot builds, shared by its groups (`None`: builds go as fast as they can).
    build_pace: Option<Arc<BuildPace>>,
    _config: PhantomData<fn() -> C>,
}

/// A second handle on the same state machine, for local reads beside the one openraft drives.
impl<C, B: Backend> Clone for StateMachine<C, B> {
    fn clone(&self) -> Self {
        StateMachine {
            core: self.core.clone(),
            executor: self.executor.clone(),
            snapshots_installed: self.snapshots_installed.clone(),
            membership_changing: self.membership_changing.clone(),
            handles: self.handles.clone(),
            build_pace: self.build_pace.clone(),
            _config: PhantomData,
        }
    }
}

/// Whether the state machine whose `handles` a builder keeps was closed: none of its handles is left.
fn closed(handles: &std::sync::Weak<()>) -> bool {
    handles.strong_count() == 0
}

/// Builds snapshots while the state machine keeps applying.
pub struct SnapshotBuilder<C, B: Backend> {
    core: Arc<Mutex<Core<B>>>,
    membership_changing: Arc<AtomicBool>,
    /// The state machine's handles, not held: a build that finds none left gives up. A replica
    /// removed in a migration resumed its deferred build of the whole keyspace (a gigabyte) as its
    /// removal committed, and its purge, which waits for the store's files to close, waited the
    /// build's 10–16 s for a snapshot nobody would take (docs/performance.md).
    handles: std::sync::Weak<()>,
    build_pace: Option<Arc<BuildPace>>,
    executor: Arc<Executor>,
    _config: PhantomData<fn() -> C>,
}

fn lock<B>(core: &Mutex<Core<B>>) -> std::sync::MutexGuard<'_, Core<B>> {
    core.lock()
        .expect("state machine lock poisoned by an earlier panic")
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StateMachineError {
    StateMachineError::Corrupt {
        location: format!("meta {what}"),
        reason: error.to_string(),
    }
}

/// Decodes caller-encoded bytes; empty means "never set".
fn decode_optional<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<Option<T>, StateMachineError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    codec::decode(bytes).map(Some).map_err(|e| corrupt(what, e))
}

type SnapshotStart<V> = (V, SnapshotHeader, SnapshotSpool);

type AppliedState<C> = (Option<LogIdOf<C>>, StoredMembershipOf<C>);

fn applied_state_of<C: StorageTypeConfig>(
    header: &SnapshotHeader,
) -> Result<AppliedState<C>, StateMachineError> {
    let applied = decode_optional("applied log id", &header.last_log_id)?;
    let membership = decode_optional("membership", &header.membership)?.unwrap_or_default();
    Ok((applied, membership))
}

/// A joint configuration (voters being replaced), or learners (replicas being brought up).
fn membership_is_changing<C: StorageTypeConfig>(membership: &StoredMembershipOf<C>) -> bool {
    let membership = membership.membership();
    membership.get_joint_config().len() > 1 || membership.learner_ids().next().is_some()
}

impl<B: Backend> Core<B> {
    /// Records whether `membership`, now the applied one, is changing ([`Core::membership_changing`]).
    fn note_membership<C: StorageTypeConfig>(&self, membership: &StoredMembershipOf<C>) {
        self.membership_changing
            .store(membership_is_changing::<C>(membership), Ordering::Relaxed);
    }

    fn header(&self) -> Result<SnapshotHeader, StateMachineError> {
        snapshot::header_from_view(&self.backend.view()?)
    }

    /// Applies `entries` in one non-durable commit. Also says whether a durable commit is now due
    /// (and marks it queued: the caller must queue it).
    fn apply<C: StorageTypeConfig>(
        &mut self,
        entries: Vec<C::Entry>,
    ) -> Result<(Vec<Response>, bool), StateMachineError> {
        let (responses, batch) = self.prepare_apply::<C>(entries)?;
        Ok((responses, self.commit_apply(batch)?))
    }

    /// Applies `entries` to one write batch against the current state, writing nothing yet.
    fn prepare_apply<C: StorageTypeConfig>(
        &mut self,
        entries: Vec<C::Entry>,
    ) -> Result<(Vec<Response>, WriteBatch), StateMachineError> {
        if let Some(reason) = &self.durable_commit_failed {
            return Err(StateMachineError::Backend(format!(
                "an earlier durable commit failed: {reason}"
            )));
        }
        let view = self.backend.view()?;
        let mut applier = Applier::new(&view);
        let mut responses = Vec::with_capacity(entries.len());
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(command) => applier.apply(index, command)?,
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id.clone()), membership.clone());
                    applier.set_meta(apply::META_MEMBERSHIP, &encode(&stored)?)?;
                    // Advisory (it only defers or gives up builds), so it may run ahead of the commit.
                    self.note_membership::<C>(&stored);
                    Response::Empty
                }
            };
            responses.push(response);
            last = Some(entry.log_id);
        }
        if let Some(last) = last {
            applier.set_meta(apply::META_APPLIED, &encode(&last)?)?;
        }
        Ok((responses, applier.finish()))
    }

    /// Commits a prepared apply batch non-durably; says whether a durable commit is now due (and
    /// marks it queued: the caller must queue it).
    fn commit_apply(&mut self, batch: WriteBatch) -> Result<bool, StateMachineError> {
        assert!(!batch.durable, "an apply batch commits non-durably");
        self.since_durable.add(&batch);
        self.backend.commit(batch)?;
        let durable_commit_due = self.since_durable.due() && !self.durable_commit_queued;
        if durable_commit_due {
            self.durable_commit_queued = true;
        }
        Ok(durable_commit_due)
    }

    fn make_durable(&mut self) -> Result<(), StateMachineError> {
        self.backend.sync_job()?()?;
        self.since_durable = SinceDurable::default();
        Ok(())
    }

    fn durable_commit_failed(&mut self, error: StateMachineError) {
        tracing::error!(%error, "the state machine's periodic durable commit failed");
        self.durable_commit_failed = Some(error.to_string());
    }

    /// What a snapshot build needs from under the lock: a durable state, a view of it, its
    /// header and a spool to write into.
    fn start_snapshot(
        &mut self,
    ) -> Result<SnapshotStart<<WriteBehind<B> as Backend>::View>, StateMachineError> {
        // Durable first: the log may be purged up to this snapshot as soon as it exists.
        self.make_durable()?;
        let view = self.backend.view()?;
        let header = snapshot::header_from_view(&view)?;
        let spool = self.backend.snapshot_spool()?;
        Ok((view, header, spool))
    }

    /// Makes a built snapshot the current one, unless a newer one was installed while it was
    /// being built.
    fn keep_built_snapshot<C: StorageTypeConfig>(
        &mut self,
        data: &SnapshotData,
    ) -> Result<(), StateMachineError> {
        let index_of = |data: &SnapshotData| -> Result<Option<u64>, StateMachineError> {
            Ok(applied_state_of::<C>(data.header())?.0.map(|log_id| log_id.index))
        };
        if let Some(current) = &self.current_snapshot
            && index_of(current)? > index_of(data)?
        {
            return Ok(());
        }
        self.backend.save_snapshot(data)?;
        self.current_snapshot = Some(data.clone());
        Ok(())
    }

    fn install_snapshot<C: StorageTypeConfig>(
        &mut self,
        data: &SnapshotData,
    ) -> Result<(), StateMachineError> {
        let (_, membership) = applied_state_of::<C>(data.header())?;
        self.backend.install_snapshot(data)?;
        self.note_membership::<C>(&membership);
        self.since_durable = SinceDurable::default();
        self.backend.save_snapshot(data)?;
        self.current_snapshot = Some(data.clone());
        Ok(())
    }
}

/// The queued periodic durable commit; a failure is kept and fails every later apply. The wait for
/// the disk (a millisecond or more) runs without the lock, so applies go on meanwhile: they only
/// gather in the write-behind map, and one that has to write to the store waits for the store's
/// own lock instead. Installs run on this thread too, so they never overlap it; a snapshot build
/// syncs under the lock on its own thread, which redb serialises with this commit (one write
/// transaction at a time), and resets the count this one subtracts from.
fn run_queued_durable_commit<B: Backend>(core: &Mutex<Core<B>>) {
    let (job, covered) = {
        let mut core = lock(core);
        assert!(core.durable_commit_queued, "only a queued durable commit runs");
        if core.since_durable.is_empty() || core.durable_commit_failed.is_some() {
            // A snapshot made the state durable meanwhile, or the store already failed.
            core.durable_commit_queued = false;
            return;
        }
        match core.backend.sync_job() {
            Ok(job) => (job, core.since_durable),
            Err(error) => {
                core.durable_commit_queued = false;
                return core.durable_commit_failed(error);
            }
        }
    };
    let synced = job();
    let mut core = lock(core);
    // Queued until now, so the applies made meanwhile do not queue a second one behind it.
    core.durable_commit_queued = false;
    match synced {
        // Batches applied while the job ran are not covered: they count toward the next one.
        Ok(()) => core.since_durable = core.since_durable.without(covered),
        Err(error) => core.durable_commit_failed(error),
    }
}

/// Sends each entry's response to whoever waits for it.
fn respond<C: StorageTypeConfig>(responders: Vec<Option<ApplyResponder<C>>>, responses: Vec<Response>) {
    assert_eq!(
        responses.len(),
        responders.len(),
        "one response per applied entry"
    );
    for (responder, response) in responders.into_iter().zip(responses) {
        if let Some(responder) = responder {
            responder.send(response);
        }
    }
}

/// Returns `Pending` once, waking itself: the task goes to the back of its runtime's queue, so
/// tasks it woke run first (tokio queues a task that woke itself while polled behind the others,
/// not in its next-to-run slot). Runtime-neutral, so the simulator's runtime runs it too.
#[derive(Default)]
struct YieldOnce {
    yielded: bool,
}

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StateMachineError> {
    codec::encode(value).map_err(|e| StateMachineError::Backend(format!("encoding failed: {e}")))
}

fn snapshot_of<C: StorageTypeConfig>(
    data: SnapshotData,
) -> Result<SnapshotOf<C, SnapshotData>, StateMachineError> {
    let (last_log_id, last_membership) = applied_state_of::<C>(data.header())?;
    Ok(Snapshot {
        meta: SnapshotMetaOf::<C> {
            last_log_id,
            last_membership,
        },
        snapshot: data,
    })
}

impl<C: StorageTypeConfig, B: Backend> StateMachine<C, B> {
    /// Opens the state machine, refusing damaged metadata or a damaged current snapshot.
    pub fn open(backend: B, execution: Execution) -> Result<Self, StateMachineError> {
        let mut core = Core {
            backend: WriteBehind::new(backend),
            since_durable: SinceDurable::default(),
            durable_commit_queued: false,
            durable_commit_failed: None,
            current_snapshot: None,
            membership_changing: Arc::default(),
            last_build_given_up: false,
        };
        let (_, membership) = applied_state_of::<C>(&core.header()?)?;
        core.note_membership::<C>(&membership);
        if let Some(data) = core.backend.load_snapshot()? {
            applied_state_of::<C>(data.header())?;
            core.current_snapshot = Some(data);
        }
        let executor = Executor::new(execution, "domicile-state-machine".into())?;
        Ok(StateMachine {
            membership_changing: core.membership_changing.clone(),
            core: Arc::new(Mutex::new(core)),
            executor: Arc::new(executor),
            snapshots_installed: Arc::default(),
            handles: Arc::default(),
            build_pace: None,
            _config: PhantomData,
        })
    }

    /// Holds this group's snapshot builds to `pace`, shared with the node's other groups
    /// ([`crate::build_pace`]); only builds on a thread of their own are paced.
    pub fn with_build_pace(mut self, pace: Option<Arc<BuildPace>>) -> Self {
        self.build_pace = pace;
        self
    }

    /// Runs a short store call (one that never syncs): at once on this task when the store is free,
    /// else queued on the dedicated thread behind the call that holds it (a durable commit, a
    /// snapshot), so this task never blocks on a sync.
    async fn with_core<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Core<B>) -> Result<T, StateMachineError> + Send + 'static,
    ) -> Result<T, StateMachineError> {
        match self.core.try_lock() {
            Ok(mut core) => return job(&mut core),
            Err(TryLockError::Poisoned(_)) => panic!("state machine lock poisoned by an earlier panic"),
            Err(TryLockError::WouldBlock) => {}
        }
        self.with_core_on_thread(job).await
    }

    /// Runs a store call that may sync or read a whole file, on the dedicated thread.
    async fn with_core_on_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Core<B>) -> Result<T, StateMachineError> + Send + 'static,
    ) -> Result<T, StateMachineError> {
        let core = self.core.clone();
        self.executor.run::<C, _>(move || job(&mut lock(&core))).await?
    }

    /// Queues the periodic durable commit on the dedicated thread, not waited for.
    fn queue_durable_commit(&self) {
        let core = self.core.clone();
        let queued = self.executor.submit(move || run_queued_durable_commit(&core));
        if let Err(error) = queued {
            // The thread is gone; the next call that needs it reports the same error.
            tracing::error!(%error, "could not queue the state machine's durable commit");
            lock(&self.core).durable_commit_queued = false;
        }
    }

    /// A local read of one record: as of the last applied entry, not linearizable.
    pub async fn read_record(&self, key: RecordKey) -> Result<Option<Record>, StateMachineError> {
        self.with_core(move |core| apply::read_record(&core.backend.view()?, &key))
            .await
    }

    /// A local read of one record, as [`StateMachine::read_record`], refused with
    /// [`CommandError::NotOwned`] if the ranges the group committed no longer hold the record's user.
    pub async fn read_owned_record(
        &self,
        key: RecordKey,
    ) -> Result<Result<Option<Record>, crate::record::CommandError>, StateMachineError> {
        self.with_core(move |core| {
            let view = core.backend.view()?;
            if let Some(refused) = apply::not_owned(&view, &key.jurisdiction, &key.user_id)? {
                return Ok(Err(refused));
            }
            apply::read_record(&view, &key).map(Ok)
        })
        .await
    }

    /// The ranges the group is receiving as of the last applied entry (`None`: none).
    pub async fn incoming(&self) -> Result<Option<crate::record::Ownership>, StateMachineError> {
        self.with_core(|core| apply::read_incoming(&core.backend.view()?))
            .await
    }

    /// A bounded run of the records of `jurisdiction` in `ranges` after `after`, as of the last applied
    /// entry, owned or not: the range copy's read (`apply::read_range`).
    pub async fn read_range(
        &self,
        jurisdiction: String,
        ranges: Vec<(u64, u64)>,
        after: Option<RecordKey>,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<apply::RangeBatch, StateMachineError> {
        self.with_core(move |core| {
            apply::read_range(
                &core.backend.view()?,
                &jurisdiction,
                &ranges,
                after.as_ref(),
                records_max,
                bytes_max,
            )
        })
        .await
    }

    /// How many records the replica holds (owned, incoming or departing, and the system's own): what
    /// a split trigger compares with its threshold.
    pub async fn record_count(&self) -> Result<u64, StateMachineError> {
        self.with_core(|core| core.backend.view()?.len(Table::Records))
            .await
    }

    /// The client sessions the replica holds after client `after`, at most `sessions_max`
    /// (`apply::read_sessions`).
    pub async fn read_sessions(
        &self,
        after: Option<u64>,
        sessions_max: usize,
    ) -> Result<apply::SessionBatch, StateMachineError> {
        self.with_core(move |core| apply::read_sessions(&core.backend.view()?, after, sessions_max))
            .await
    }

    /// The digest of what the replica holds of `jurisdiction` in `ranges` (`apply::range_digest`).
    pub async fn range_digest(
        &self,
        jurisdiction: String,
        ranges: Vec<(u64, u64)>,
    ) -> Result<apply::RangeDigest, StateMachineError> {
        self.with_core(move |core| apply::range_digest(&core.backend.view()?, &jurisdiction, &ranges))
            .await
    }

    /// The ranges the group owns as of the last applied entry (`None`: never set).
    pub async fn ownership(&self) -> Result<Option<crate::record::Ownership>, StateMachineError> {
        self.with_core(|core| apply::read_ownership(&core.backend.view()?))
            .await
    }

    /// A new place to receive a snapshot in (a file beside the store in production, whose install
    /// may follow it as it fills: [`crate::snapshot_feed`]).
    pub async fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        self.with_core(|core| core.backend.snapshot_receive_spool()).await
    }

    /// Snapshots installed since the state machine was opened.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    /// The group's policy version as of the last applied entry.
    pub async fn policy_version(&self) -> Result<u64, StateMachineError> {
        self.with_core(|core| Ok(core.header()?.policy_version)).await
    }
}

impl<C: StorageTypeConfig, B: Backend> RaftStateMachine<C> for StateMachine<C, B> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder<C, B>;

    async fn applied_state(&mut self) -> Result<AppliedState<C>, io::Error> {
        let header = self.with_core(|core| core.header()).await?;
        Ok(applied_state_of::<C>(&header)?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let durable_commit_due = if batch.len() <= INLINE_APPLY_ENTRIES_MAX {
            if responders.iter().all(Option::is_none) {
                // Nobody waits for these responses: on a follower, the commit index rode in on an
                // append whose answer is being sent. Let that answer leave first (the leader waits
                // for it), then build and commit.
                YieldOnce::default().await;
            }
            // Committing into the write-behind map costs little: build and commit, then answer.
            let (responses, durable_commit_due) = self.with_core(move |core| core.apply::<C>(batch)).await?;
            respond::<C>(responders, responses);
            durable_commit_due
        } else {
            let (responses, durable_commit_due) = self
                .with_core_on_thread(move |core| core.apply::<C>(batch))
                .await?;
            respond::<C>(responders, responses);
            durable_commit_due
        };
        // After the responses: the sync is off every client's path.
        if durable_commit_due {
            self.queue_durable_commit();
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            core: self.core.clone(),
            membership_changing: self.membership_changing.clone(),
            handles: Arc::downgrade(&self.handles),
            build_pace: self.build_pace.clone(),
            executor: self.executor.clone(),
            _config: PhantomData,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (last_log_id, last_membership) = applied_state_of::<C>(snapshot.header())?;
        if last_log_id != meta.last_log_id || last_membership != meta.last_membership {
            let reason =
                format!("snapshot holds {last_log_id:?}/{last_membership}, openraft installs {meta}");
            return Err(StateMachineError::Snapshot(SnapshotError::MetaMismatch(reason)).into());
        }
        self.with_core_on_thread(move |core| core.install_snapshot::<C>(&snapshot))
            .await?;
        self.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        // On the thread: behind a build or install in progress, as openraft expects.
        let current = self
            .with_core_on_thread(|core| Ok(core.current_snapshot.clone()))
            .await?;
        let Some(data) = current else { return Ok(None) };
        Ok(Some(snapshot_of::<C>(data)?))
    }
}

impl<C: StorageTypeConfig, B: Backend> SnapshotBuilder<C, B> {
    /// Waits, at most [`BUILD_DEFERRED_MAX`], while the applied membership is changing; says whether
    /// it settled (not whether the bound ran out). Fails with [`StateMachineError::Closed`] as soon as
    /// the state machine is closed: a replica removed in a migration never sees its membership settle,
    /// and a deferred build holds the store open, which its purge waits for (46 s in a bench run).
    async fn wait_while_membership_changes(&self) -> Result<bool, StateMachineError> {
        let started = C::now();
        let mut deferred = false;
        loop {
            if closed(&self.handles) {
                tracing::info!(deferred, "snapshot build not begun: the state machine was closed");
                return Err(StateMachineError::Closed);
            }
            let changing = self.membership_changing.load(Ordering::Relaxed);
            let waited = C::now().saturating_duration_since(started);
            if !changing || waited >= BUILD_DEFERRED_MAX {
                if deferred {
                    tracing::info!(
                        waited_ms = waited.as_millis() as u64,
                        settled = !changing,
                        "snapshot build resumed after the membership change"
                    );
                }
                return Ok(!changing);
            }
            if !deferred {
                tracing::info!("snapshot build deferred while the membership changes");
                deferred = true;
            }
            C::sleep(BUILD_DEFERRAL_POLL).await;
        }
    }
}

impl<C: StorageTypeConfig, B: Backend> RaftSnapshotBuilder<C> for SnapshotBuilder<C, B> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        let settled = self.wait_while_membership_changes().await?;
        let core = self.core.clone();
        let changing = self.membership_changing.clone();
        let handles = self.handles.clone();
        let build_pace = self.build_pace.clone();
        // On a thread of its own: the scan takes seconds at volume, and large applies (and calls that
        // found the store busy) queue on the state machine's thread; they would wait behind it.
        let data = self
            .executor
            .run_apart::<C, _>(
                "domicile-snapshot",
                move |apart| -> Result<SnapshotData, StateMachineError> {
                    // Closed since its wait (the replica purged, the node stopping): not even the
                    // durable commit the build begins with is worth making.
                    if closed(&handles) {
                        tracing::info!("snapshot build not begun: the state machine was closed");
                        return Err(StateMachineError::Closed);
                    }
                    // Given up only by a replica that has a snapshot to answer with, whose membership had
                    // settled (a change longer than the wait, or learners kept for good, would otherwise
                    // stop every build), and not twice in a row: the log stays bounded.
                    let (view, header, spool, current) = {
                        let mut core = lock(&core);
                        let (view, header, spool) = core.start_snapshot()?;
                        let may_give_up = settled && !core.last_build_given_up;
                        (
                            view,
                            header,
                            spool,
                            core.current_snapshot.clone().filter(|_| may_give_up),
                        )
                    };
                    // Without the lock, and behind the foreground (`crate::priority`): applies go on
                    // while the view is scanned, and take the CPU first.
                    let pace = build_pace.filter(|_| apart.own_thread());
                    apart.lower_priority(SNAPSHOT_THREAD_NICE, "snapshot build");
                    let mut chunks = 0u64;
                    let mut go_on = |bytes| {
                        chunks += 1;
                        if let Some(pace) = &pace {
                            pace.wrote(bytes);
                        }
                        current.is_none() || !changing.load(Ordering::Relaxed)
                    };
                    let stop_now = || closed(&handles);
                    let built = snapshot::build_unless_given_up(&view, header, spool, &mut go_on, &stop_now)?;
                    drop(view);
                    if built.is_none() && closed(&handles) {
                        tracing::info!(chunks, "snapshot build given up: the state machine was closed");
                        return Err(StateMachineError::Closed);
                    }
                    let Some(data) = built else {
                        let current = current.expect("only a replica with a snapshot gives a build up");
                        lock(&core).last_build_given_up = true;
                        tracing::info!(
                            chunks,
                            "snapshot build given up: the membership began to change; the current \
                             snapshot stays, and the log until the next build"
                        );
                        return Ok(current);
                    };
                    // The spool's bytes reach the disk before the lock is taken: keeping the
                    // snapshot syncs it again under the lock, which then finds nothing to write
                    // (it found the whole snapshot, a gigabyte at volume, while applies waited).
                    data.sync_data()?;
                    let mut core = lock(&core);
                    core.last_build_given_up = false;
                    core.keep_built_snapshot::<C>(&data)?;
                    Ok(data)
                },
            )
            .await??;
        Ok(snapshot_of::<C>(data)?)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::backend::MemBackend;
    use crate::backend::MemView;
    use crate::record::Command;
    use crate::record::WriteId;

    openraft::declare_raft_types!(
        TestConfig: D = Command, R = Response
    );

    const THREAD_NAME: &str = "domicile-state-machine";

    /// A [`MemBackend`] that counts its commits by kind, and its commits and views by the thread
    /// that made them.
    struct Watched {
        inner: MemBackend,
        durable_on_thread: Arc<AtomicU32>,
        durable_elsewhere: Arc<AtomicU32>,
        applies_on_thread: Arc<AtomicU32>,
        applies_elsewhere: Arc<AtomicU32>,
        views_on_thread: Arc<AtomicU32>,
        views_elsewhere: Arc<AtomicU32>,
        /// The next sync job says it started on the first channel, then waits on the second.
        hold_next_sync: Arc<Mutex<Option<HeldSync>>>,
        /// The nice value of the thread that last kept a snapshot (`i32::MIN`: none yet).
        saved_at_nice: Arc<std::sync::atomic::AtomicI32>,
    }

    type HeldSync = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

    fn on_thread() -> bool {
        std::thread::current().name() == Some(THREAD_NAME)
    }

    impl Watched {
        fn new() -> Watched {
            Watched {
                inner: MemBackend::new(),
                durable_on_thread: Arc::default(),
                durable_elsewhere: Arc::default(),
                applies_on_thread: Arc::default(),
                applies_elsewhere: Arc::default(),
                views_on_thread: Arc::default(),
                views_elsewhere: Arc::default(),
                hold_next_sync: Arc::default(),
                saved_at_nice: Arc::new(std::sync::atomic::AtomicI32::new(i32::MIN)),
            }
        }
    }

    impl Backend for Watched {
        type View = MemView;

        fn view(&self) -> Result<MemView, StateMachineError> {
            let counter = if on_thread() {
                &self.views_on_thread
            } else {
                &self.views_elsewhere
            };
            counter.fetch_add(1, Ordering::SeqCst);
            self.inner.view()
        }

        fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
            let counter = match (batch.durable, on_thread()) {
                (true, true) => &self.durable_on_thread,
                (true, false) => &self.durable_elsewhere,
                (false, true) => &self.applies_on_thread,
                (false, false) => &self.applies_elsewhere,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            self.inner.commit(batch)
        }

        fn sync_job(&mut self) -> Result<crate::backend::SyncJob, StateMachineError> {
            let (on, elsewhere) = (self.durable_on_thread.clone(), self.durable_elsewhere.clone());
            let hold = self.hold_next_sync.lock().unwrap().take();
            let inner = self.inner.sync_job()?;
            Ok(Box::new(move || {
                if let Some((started, release)) = hold {
                    started.send(()).unwrap();
                    release.recv().unwrap();
                }
                let counter = if on_thread() { on } else { elsewhere };
                counter.fetch_add(1, Ordering::SeqCst);
                inner()
            }))
        }

        fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
            self.inner.snapshot_spool()
        }

        fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
            self.inner.install_snapshot(snapshot)
        }

        fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
            let nice = crate::priority::this_thread_nice().unwrap();
            self.saved_at_nice.store(nice, Ordering::SeqCst);
            self.inner.save_snapshot(snapshot)
        }

        fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
            self.inner.load_snapshot()
        }
    }

    fn put(index: u64) -> openraft::alias::EntryOf<TestConfig> {
        openraft::Entry {
            log_id: openraft::testing::log_id::<TestConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Put {
                write: WriteId {
                    client_id: 1,
                    sequence: index,
                },
                key: RecordKey::new("eu", "alice", format!("r{}", index % 5)),
                value: index.to_le_bytes().to_vec(),
            }),
        }
    }

    /// Applies `put(index)` as a batch of its own, nobody waiting for its response.
    async fn apply_one(state_machine: &mut StateMachine<TestConfig, Watched>, index: u64) {
        let stream = futures_util::stream::iter([Ok((put(index), None))]);
        state_machine.apply(stream).await.unwrap();
    }

    /// Proves that small applies are built on the caller's task, large ones on the state machine's
    /// thread, that they reach the store only with the periodic durable commit (write-behind), and
    /// that it runs on that thread once [`DURABLE_EVERY_BATCHES`] batches are applied.
    #[tokio::test]
    async fn the_periodic_durable_commit_runs_on_the_thread_after_the_applies() {
        let backend = Watched::new();
        let (durable_on_thread, durable_elsewhere, applies_on_thread, applies_elsewhere, views_on_thread) = (
            backend.durable_on_thread.clone(),
            backend.durable_elsewhere.clone(),
            backend.applies_on_thread.clone(),
            backend.applies_elsewhere.clone(),
            backend.views_on_thread.clone(),
        );
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(backend, Execution::DedicatedThread).unwrap();
        let batches = u64::from(DURABLE_EVERY_BATCHES);
        for index in 1..=batches {
            apply_one(&mut state_machine, index).await;
            // Runs on the thread, behind any durable commit queued before it.
            state_machine.get_current_snapshot().await.unwrap();
            let expected = u32::from(index == batches);
            assert_eq!(
                durable_on_thread.load(Ordering::SeqCst),
                expected,
                "after {index} batches: one durable commit exactly when {batches} batches are applied"
            );
        }
        assert_eq!(
            durable_elsewhere.load(Ordering::SeqCst),
            0,
            "no durable commit on the caller's task"
        );
        assert_eq!(
            views_on_thread.load(Ordering::SeqCst),
            0,
            "an uncontended apply runs on the caller's task"
        );
        assert_eq!(
            (
                applies_on_thread.load(Ordering::SeqCst),
                applies_elsewhere.load(Ordering::SeqCst)
            ),
            (1, 0),
            "the applied batches reached the store in one commit, on the thread, before the sync"
        );
        let large =
            (batches + 1..=batches + 1 + INLINE_APPLY_ENTRIES_MAX as u64).map(|index| Ok((put(index), None)));
        state_machine
            .apply(futures_util::stream::iter(large))
            .await
            .unwrap();
        assert_eq!(
            views_on_thread.load(Ordering::SeqCst),
            1,
            "a batch larger than INLINE_APPLY_ENTRIES_MAX is built on the thread"
        );
        let (applied, _) = state_machine.applied_state().await.unwrap();
        let last = batches + 1 + INLINE_APPLY_ENTRIES_MAX as u64;
        assert_eq!(applied.map(|log_id| log_id.index), Some(last));
    }

    /// Large applies queue the durable commit by their bytes, before [`DURABLE_EVERY_BATCHES`]
    /// batches: a replica catching up must not leave one sync a hundred megabytes to write.
    #[tokio::test]
    async fn large_applies_queue_the_durable_commit_by_their_bytes() {
        let backend = Watched::new();
        let durable_on_thread = backend.durable_on_thread.clone();
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(backend, Execution::DedicatedThread).unwrap();
        // Each batch holds a little over half the bound, in entries of distinct keys.
        let value_bytes = 64 << 10;
        let per_batch = (DURABLE_EVERY_BYTES as usize / 2).div_ceil(value_bytes) as u64 + 1;
        let big = |index: u64| openraft::Entry {
            log_id: openraft::testing::log_id::<TestConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Put {
                write: WriteId {
                    client_id: 2,
                    sequence: index,
                },
                key: RecordKey::new("eu", "bob", format!("r{index}")),
                value: vec![index as u8; value_bytes],
            }),
        };
        for batch in 0..2u64 {
            let entries =
                (batch * per_batch + 1..=(batch + 1) * per_batch).map(|index| Ok((big(index), None)));
            state_machine
                .apply(futures_util::stream::iter(entries))
                .await
                .unwrap();
            // Runs on the thread, behind any durable commit queued before it.
            state_machine.get_current_snapshot().await.unwrap();
            assert_eq!(
                durable_on_thread.load(Ordering::SeqCst),
                u32::from(batch == 1),
                "after batch {batch}: a durable commit once {DURABLE_EVERY_BYTES} bytes are applied, not before"
            );
        }
        // Two batches are below the batch bound: the bytes queued the commit.
        const { assert!(2 < DURABLE_EVERY_BATCHES) };
    }

    /// While the periodic durable commit waits for the disk, applies go on and answer: the wait
    /// holds no lock they need.
    #[tokio::test]
    async fn applies_go_on_while_the_durable_commit_waits_for_the_disk() {
        let backend = Watched::new();
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *backend.hold_next_sync.lock().unwrap() = Some((started_tx, release_rx));
        let synced = backend.durable_on_thread.clone();
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(backend, Execution::DedicatedThread).unwrap();
        let batches = u64::from(DURABLE_EVERY_BATCHES);
        for index in 1..=batches {
            apply_one(&mut state_machine, index).await;
        }
        started.recv().unwrap(); // the durable commit is now waiting for the "disk"
        for index in batches + 1..=batches + 3 {
            let applying = state_machine.apply(futures_util::stream::iter([Ok((put(index), None))]));
            // A bound that only a deadlock reaches (the apply waiting for the held sync).
            let Ok(applied) = tokio::time::timeout(std::time::Duration::from_secs(30), applying).await else {
                release.send(()).unwrap(); // lets the thread, and the state machine's drop, finish
                panic!("an apply waited for the durable commit's disk wait");
            };
            applied.unwrap();
        }
        assert_eq!(synced.load(Ordering::SeqCst), 0, "the sync is still held");
        release.send(()).unwrap();
        // Runs on the thread behind the durable commit.
        state_machine.get_current_snapshot().await.unwrap();
        assert_eq!(synced.load(Ordering::SeqCst), 1);
        let (applied, _) = state_machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|log_id| log_id.index), Some(batches + 3));
    }

    /// A snapshot is built on a thread of its own behind the foreground (`crate::priority`): the
    /// thread that keeps it runs at the background nice value, the caller's keeps its own.
    #[tokio::test]
    async fn a_snapshot_is_built_at_the_background_priority() {
        let backend = Watched::new();
        let saved_at_nice = backend.saved_at_nice.clone();
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(backend, Execution::DedicatedThread).unwrap();
        for index in 1..=5 {
            apply_one(&mut state_machine, index).await;
        }
        let ours = crate::priority::this_thread_nice().unwrap();
        let snapshot = build(&mut state_machine).await;
        assert_eq!(snapshot.meta.last_log_id.map(|log_id| log_id.index), Some(5));
        assert_eq!(
            saved_at_nice.load(Ordering::SeqCst),
            SNAPSHOT_THREAD_NICE.max(ours),
            "the build ran at the background nice value"
        );
        assert_eq!(
            crate::priority::this_thread_nice().unwrap(),
            ours,
            "the caller's priority is its own"
        );
    }

    /// Builds a snapshot of `state_machine` as openraft would.
    async fn build(
        state_machine: &mut StateMachine<TestConfig, Watched>,
    ) -> SnapshotOf<TestConfig, SnapshotData> {
        state_machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// Applies a membership entry at `index`: `voters`, and the other `nodes` as learners.
    async fn apply_membership(
        state_machine: &mut StateMachine<TestConfig, Watched>,
        index: u64,
        voters: &[u64],
        nodes: &[u64],
    ) {
        let membership = openraft::Membership::new_with_defaults(
            vec![voters.iter().copied().collect()],
            nodes.iter().copied(),
        );
        let entry = openraft::Entry {
            log_id: openraft::testing::log_id::<TestConfig>(1, 1, index),
            payload: EntryPayload::Membership(membership),
        };
        let stream = futures_util::stream::iter([Ok((entry, None))]);
        state_machine.apply(stream).await.unwrap();
    }

    /// While learners are being brought up a build waits, and it runs once they are voters, from a
    /// view taken then.
    #[tokio::test(start_paused = true)]
    async fn a_build_waits_while_the_membership_changes_and_runs_once_it_settles() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        for index in 1..=3 {
            apply_one(&mut state_machine, index).await;
        }
        apply_membership(&mut state_machine, 4, &[1, 2, 3], &[1, 2, 3, 4]).await;
        let mut builder = state_machine.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let early = tokio::time::timeout(BUILD_DEFERRED_MAX / 2, &mut build).await;
        assert!(early.is_err(), "no build while a learner is being brought up");
        apply_membership(&mut state_machine, 5, &[1, 2, 3, 4], &[1, 2, 3, 4]).await;
        // Awaited without a timeout: with the clock paused, tokio would move it to the timeout's
        // deadline while the build's thread scans.
        let settled = TestConfig::now();
        let snapshot = build.await.unwrap();
        assert!(
            settled.elapsed() <= BUILD_DEFERRAL_POLL,
            "the build ran at its next look at the membership, {:?} after it settled",
            settled.elapsed()
        );
        assert_eq!(
            snapshot.meta.last_log_id.map(|log_id| log_id.index),
            Some(5),
            "its view was taken after the wait"
        );
        assert_eq!(
            snapshot.meta.last_membership.membership().learner_ids().count(),
            0
        );
    }

    /// A build waits no longer than its bound, whatever the membership.
    #[tokio::test(start_paused = true)]
    async fn a_deferred_build_runs_after_its_bound_even_while_the_membership_changes() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        apply_one(&mut state_machine, 1).await;
        apply_membership(&mut state_machine, 2, &[1, 2, 3], &[1, 2, 3, 4]).await;
        let started = TestConfig::now();
        let snapshot = build(&mut state_machine).await;
        let waited = started.elapsed();
        assert!(
            waited >= BUILD_DEFERRED_MAX && waited < BUILD_DEFERRED_MAX + 2 * BUILD_DEFERRAL_POLL,
            "waited {waited:?}"
        );
        assert_eq!(snapshot.meta.last_log_id.map(|log_id| log_id.index), Some(2));
    }

    /// With a settled membership a build does not wait at all.
    #[tokio::test(start_paused = true)]
    async fn a_build_with_a_settled_membership_starts_at_once() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        apply_membership(&mut state_machine, 1, &[1, 2, 3], &[1, 2, 3]).await;
        let started = TestConfig::now();
        build(&mut state_machine).await;
        assert!(
            started.elapsed() < BUILD_DEFERRAL_POLL,
            "waited {:?}",
            started.elapsed()
        );
    }

    /// Applies `count` entries of 64 KiB from `first` on, in one batch (four make a snapshot chunk).
    async fn apply_large(state_machine: &mut StateMachine<TestConfig, Watched>, first: u64, count: u64) {
        let entries = (first..first + count).map(|index| {
            let mut entry = put(index);
            if let EntryPayload::Normal(Command::Put { key, value, .. }) = &mut entry.payload {
                *key = RecordKey::new("eu", "alice", format!("r{index}"));
                *value = vec![index as u8; 64 << 10];
            }
            Ok((entry, None))
        });
        state_machine
            .apply(futures_util::stream::iter(entries))
            .await
            .unwrap();
    }

    /// A state machine on its own thread, and the handle that holds its next sync.
    fn open_with_held_sync() -> (StateMachine<TestConfig, Watched>, Arc<Mutex<Option<HeldSync>>>) {
        let backend = Watched::new();
        let hold = backend.hold_next_sync.clone();
        let state_machine = StateMachine::open(backend, Execution::DedicatedThread).unwrap();
        (state_machine, hold)
    }

    /// Starts a build that stops in its first durable commit, lets the membership begin to change
    /// there (as if a learner's entry were applied once the build had begun), and returns its result.
    async fn build_while_the_membership_begins_to_change(
        state_machine: &mut StateMachine<TestConfig, Watched>,
        hold: &Mutex<Option<HeldSync>>,
    ) -> SnapshotOf<TestConfig, SnapshotData> {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *hold.lock().unwrap() = Some((started_tx, release_rx));
        state_machine.membership_changing.store(false, Ordering::Relaxed);
        let changing = state_machine.membership_changing.clone();
        let mut builder = state_machine.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let polled = tokio::time::timeout(Duration::from_millis(1), &mut build).await;
        assert!(polled.is_err(), "the build waits for its held sync");
        started.recv().unwrap(); // making the store durable, before it takes its view
        changing.store(true, Ordering::Relaxed);
        release.send(()).unwrap();
        build.await.unwrap()
    }

    /// A build that finds the membership changing while it writes gives up and answers with the
    /// current snapshot, which stays; the next one is not given up, so the log stays bounded.
    #[tokio::test]
    async fn a_build_gives_up_when_the_membership_begins_to_change_but_not_twice_in_a_row() {
        let (mut state_machine, hold) = open_with_held_sync();
        apply_large(&mut state_machine, 1, 64).await;
        let first = build(&mut state_machine).await;
        assert_eq!(first.meta.last_log_id.map(|log_id| log_id.index), Some(64));
        apply_large(&mut state_machine, 65, 64).await;
        let given_up = build_while_the_membership_begins_to_change(&mut state_machine, &hold).await;
        assert_eq!(
            given_up.meta, first.meta,
            "the answer is the snapshot already held"
        );
        let current = state_machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, first.meta, "and it is still the current one");
        let next = build_while_the_membership_begins_to_change(&mut state_machine, &hold).await;
        assert_eq!(
            next.meta.last_log_id.map(|log_id| log_id.index),
            Some(128),
            "the build after one given up goes on"
        );
    }

    /// A build whose state machine was closed (every handle dropped: the replica purged, the node
    /// stopping) before it began does not begin, even a first one: nobody will take the snapshot, and
    /// the store's files are held until it ends.
    #[tokio::test]
    async fn a_build_gives_up_once_its_state_machine_is_closed() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        apply_large(&mut state_machine, 1, 64).await;
        let mut builder = state_machine.get_snapshot_builder().await;
        let reader = state_machine.clone();
        drop(state_machine);
        drop(reader);
        let error = builder.build_snapshot().await.unwrap_err();
        assert!(
            error.to_string().contains("the state machine was closed"),
            "{error}"
        );
    }

    /// A build whose state machine is closed while it runs (here: in its first durable commit) stops
    /// at its next item, even a first build, and says the state machine was closed.
    #[tokio::test]
    async fn a_build_stops_once_its_state_machine_is_closed_while_it_runs() {
        let (mut state_machine, hold) = open_with_held_sync();
        apply_large(&mut state_machine, 1, 64).await;
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *hold.lock().unwrap() = Some((started_tx, release_rx));
        let mut builder = state_machine.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let polled = tokio::time::timeout(Duration::from_millis(1), &mut build).await;
        assert!(polled.is_err(), "the build waits for its held sync");
        started.recv().unwrap(); // past the check made before it begins
        drop(state_machine);
        release.send(()).unwrap();
        let error = build.await.unwrap_err();
        assert!(
            error.to_string().contains("the state machine was closed"),
            "{error}"
        );
    }

    /// A replica with no snapshot yet never gives its build up: its log can be purged only after one.
    #[tokio::test]
    async fn a_first_build_is_never_given_up() {
        let (mut state_machine, hold) = open_with_held_sync();
        apply_large(&mut state_machine, 1, 64).await;
        let snapshot = build_while_the_membership_begins_to_change(&mut state_machine, &hold).await;
        assert_eq!(snapshot.meta.last_log_id.map(|log_id| log_id.index), Some(64));
        assert!(
            snapshot.snapshot.chunk_count() >= 4,
            "{} chunks",
            snapshot.snapshot.chunk_count()
        );
    }

    /// A build that began only because its wait ran out (a long change, or learners kept for good) is
    /// not given up: otherwise such a group would never build again.
    #[tokio::test(start_paused = true)]
    async fn a_build_that_waited_its_bound_is_not_given_up() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        apply_large(&mut state_machine, 1, 64).await;
        build(&mut state_machine).await;
        apply_large(&mut state_machine, 65, 64).await;
        state_machine.membership_changing.store(true, Ordering::Relaxed);
        let snapshot = build(&mut state_machine).await; // the clock is paused: its minute passes at once
        assert_eq!(snapshot.meta.last_log_id.map(|log_id| log_id.index), Some(128));
    }

    /// A build deferred while the membership changes stops waiting as soon as its state machine is
    /// closed: a removed replica's membership never settles, and the wait held its store open, which
    /// the replica's purge waits for.
    #[tokio::test(start_paused = true)]
    async fn a_deferred_build_ends_once_its_state_machine_is_closed() {
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(Watched::new(), Execution::DedicatedThread).unwrap();
        apply_large(&mut state_machine, 1, 64).await;
        state_machine.membership_changing.store(true, Ordering::Relaxed);
        let mut builder = state_machine.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let polled = tokio::time::timeout(Duration::from_secs(5), &mut build).await;
        assert!(polled.is_err(), "deferred while the membership changes");
        drop(state_machine);
        let ended = tokio::time::timeout(Duration::from_secs(1), build)
            .await
            .expect("it ends within a poll of the close, not when its minute runs out");
        let error = ended.unwrap_err();
        assert!(
            error.to_string().contains("the state machine was closed"),
            "{error}"
        );
    }

    /// A follower's apply (no caller waits for its responses) first lets the tasks already woken
    /// run (the answer to the append that brought the commit index), then builds the batch.
    #[tokio::test]
    async fn an_apply_nobody_waits_for_yields_before_touching_the_store() {
        let backend = Watched::new();
        let (views, applies) = (backend.views_elsewhere.clone(), backend.applies_elsewhere.clone());
        let mut state_machine =
            StateMachine::<TestConfig, _>::open(backend, Execution::DedicatedThread).unwrap();
        let opened = views.load(Ordering::SeqCst); // opening reads the stored metadata
        let mut apply = std::pin::pin!(state_machine.apply(futures_util::stream::iter([Ok((put(1), None))])));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            apply.as_mut().poll(&mut cx).is_pending(),
            "the apply yields first"
        );
        assert_eq!(
            views.load(Ordering::SeqCst),
            opened,
            "the store is not read before the yield"
        );
        apply.await.unwrap();
        assert_eq!(
            views.load(Ordering::SeqCst),
            opened + 1,
            "then the batch is built against it"
        );
        assert_eq!(
            applies.load(Ordering::SeqCst),
            0,
            "and waits in memory for the next durable commit"
        );
    }
}
