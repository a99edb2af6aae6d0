//! Where a host keeps its groups: one node-wide Raft log and one state machine per group.
//!
//! A seam: production opens the log on real files with its sync thread and each state machine on redb; the
//! simulator supplies in-memory disks and maps with the same log and apply code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::RaftLogStorage;
use openraft::type_config::OneshotSender;
use openraft::type_config::TypeConfigExt;
use placement::NodeId;
use storage::backend::Backend;
use storage::build_pace::BuildPace;
use storage::disk::FsDisk;
use storage::group_commit::SyncThread;
use storage::log::LogConfig;
use storage::paced_removal;
use storage::raft_log::{GroupLog, LogEngine};
use storage::redb_store::RedbBackend;
use storage::redb_store::StoresClosed;
use storage::state_machine::{Execution, StateMachine};

use crate::config::GroupConfig;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct StoreError {
    pub what: String,
    pub reason: String,
}

/// Where a purge of a replica stands, once its log is retired (the point of no return) and until its
/// files are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeState {
    /// Its store is still open (a snapshot build, a sync or a reader holds it): its files are deleted
    /// once it closes, or after a minute at most.
    WaitingForStore,
    /// Its files are being deleted, a slice at a time ([`paced_removal`]).
    Deleting,
}

impl PurgeState {
    pub fn name(self) -> &'static str {
        match self {
            PurgeState::WaitingForStore => "waiting_for_store",
            PurgeState::Deleting => "deleting",
        }
    }
}

/// A group's log and state machine, as recovered.
pub struct OpenedGroup<C: GroupConfig, L, B: Backend> {
    pub log: L,
    pub state_machine: StateMachine<C, B>,
}

pub trait Stores<C: GroupConfig>: Send + Sync + 'static {
    type Log: RaftLogStorage<C>;
    type Backend: Backend;

    /// The log and state machine of `group`, recovered from what is on disk. A retired group is
    /// revived: a replica again, from nothing.
    fn open_group(&self, group: u64) -> Result<OpenedGroup<C, Self::Log, Self::Backend>, StoreError>;

    /// Whether this node's replica of `group` was purged ([`Stores::retire_group`]) and not
    /// reopened since.
    fn is_retired(&self, group: u64) -> bool;

    /// Deletes this node's replica of `group`: its log first, durably — the point of no return,
    /// after which a restart finds the group retired — then its state machine, once its files are
    /// closed (the store outlives the stopped Raft instance by its last commit). The group's Raft
    /// instance must be stopped.
    fn retire_group(&self, group: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where this node's purge of `group` stands, while one runs ([`Stores::retire_group`]).
    fn purge_state(&self, _group: u64) -> Option<PurgeState> {
        None
    }
}

/// Production storage under one data directory: `log/` (the node-wide WAL) and `groups/<n>/` (redb).
pub struct DiskStores {
    dir: PathBuf,
    /// The node whose replicas these are: a follower's appends sync on its own thread
    /// ([`LogEngine::replica`]).
    node: NodeId,
    engine: Arc<LogEngine<FsDisk>>,
    /// Each opened group's hold on its store files: a purge deletes them only once they are closed.
    stores_closed: Mutex<BTreeMap<u64, StoresClosed>>,
    /// The pace every group's snapshot builds keep to together (`None`: as fast as they can).
    build_pace: Option<Arc<BuildPace>>,
    /// Purges under way, by group: an operator waiting for one sees where it stands.
    purges: Arc<Mutex<BTreeMap<u64, PurgeState>>>,
    // Kept for its lifetime: dropping it syncs what is pending and stops the driver.
    _sync: SyncThread,
}

/// How long a purge waits for a stopped group's store files to close before it deletes them anyway:
/// the state machine's thread, a sync job or a snapshot build's view may hold them a little after the
/// group's Raft instance stopped. The data must go either way; deleted under an open store, its space
/// is freed only at the store's last close, and the store's last commit fails (logged).
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(60);

/// How long a purge waits for the store to close before it says it is waiting.
const STORE_CLOSE_NOTICED: Duration = Duration::from_secs(5);

impl DiskStores {
    pub fn open(dir: &Path, node: NodeId) -> Result<DiskStores, StoreError> {
        let error = |what: &str, reason: String| StoreError {
            what: format!("{what} in {}", dir.display()),
            reason,
        };
        let disk =
            FsDisk::new(dir.join("log")).map_err(|e| error("creating the log directory", e.to_string()))?;
        let engine = LogEngine::open(disk, LogConfig::default())
            .map_err(|e| error("opening the Raft log", e.to_string()))?;
        let sync = engine
            .spawn_sync_thread()
            .map_err(|e| error("starting the log sync thread", e.to_string()))?;
        let stores = DiskStores {
            dir: dir.to_path_buf(),
            node,
            engine,
            stores_closed: Mutex::default(),
            build_pace: None,
            purges: Arc::default(),
            _sync: sync,
        };
        // A purge cut short after its log was retired: finish it.
        for group in stores.engine.retired_groups() {
            DiskStores::remove_state_machine(&stores.state_machine_dir(group))
                .map_err(|e| error("finishing an interrupted purge", e.to_string()))?;
        }
        Ok(stores)
    }

    /// Holds the snapshot builds of every group opened from now on to `bytes_per_second` together,
    /// a limit of the disk's, which they share ([`storage::build_pace`]); `None` or 0: no limit.
    pub fn with_build_pace(mut self, bytes_per_second: Option<u64>) -> DiskStores {
        self.build_pace = bytes_per_second
            .filter(|&rate| rate > 0)
            .map(|rate| Arc::new(BuildPace::new(rate)));
        self
    }

    fn state_machine_dir(&self, group: u64) -> PathBuf {
        self.dir.join("groups").join(group.to_string())
    }

    /// Removes a group's redb directory, if any, and makes the removal durable. Paced
    /// ([`paced_removal`]): a replica at volume is gigabytes (its store and its snapshot), and freed at
    /// once they stall every fsync on the disk, the logs of the groups this node keeps.
    fn remove_state_machine(dir: &Path) -> std::io::Result<()> {
        let removed = paced_removal::remove_dir_all(dir)?;
        if removed.files > 0 {
            tracing::info!(path = %dir.display(), bytes = removed.bytes, commits = removed.commits, "removed a purged replica's state machine");
        }
        Ok(())
    }
}

impl<C: GroupConfig> Stores<C> for DiskStores {
    type Log = GroupLog<C, FsDisk>;
    type Backend = RedbBackend;

    fn open_group(&self, group: u64) -> Result<OpenedGroup<C, Self::Log, RedbBackend>, StoreError> {
        let path = self.state_machine_dir(group);
        let error = |reason: String| StoreError {
            what: format!("state machine {}", path.display()),
            reason,
        };
        let log: GroupLog<C, FsDisk> = self
            .engine
            .replica(group, self.node.0)
            .map_err(|e| error(format!("reading the stored vote: {e}")))?;
        if self.engine.is_retired(group) {
            // Its state machine went with the purge (or at the start after a purge cut short).
            log.revive()
                .map_err(|e| error(format!("reviving the log: {e}")))?;
        }
        let backend = RedbBackend::open(&path).map_err(|e| error(e.to_string()))?;
        self.stores_closed
            .lock()
            .expect("stores closed lock")
            .insert(group, backend.stores_closed());
        let state_machine = StateMachine::open(backend, Execution::DedicatedThread)
            .map_err(|e| error(e.to_string()))?
            .with_build_pace(self.build_pace.clone());
        Ok(OpenedGroup { log, state_machine })
    }

    fn is_retired(&self, group: u64) -> bool {
        self.engine.is_retired(group)
    }

    async fn retire_group(&self, group: u64) -> Result<(), StoreError> {
        let error = |what: &str, reason: String| StoreError {
            what: format!("purging group {group}: {what}"),
            reason,
        };
        let log: GroupLog<C, FsDisk> = self.engine.group(group);
        log.retire()
            .await
            .map_err(|e| error("retiring its log", e.to_string()))?;
        // On a thread of its own: the wait for the store to close, and the paced removal, which waits
        // between its cuts, seconds at volume.
        let dir = self.state_machine_dir(group);
        let stores_closed = self
            .stores_closed
            .lock()
            .expect("stores closed lock")
            .remove(&group);
        let (tx, rx) = C::oneshot();
        let purges = self.purges.clone();
        let purge_state = move |state: Option<PurgeState>| {
            let mut purges = purges.lock().expect("purges lock");
            match state {
                Some(state) => purges.insert(group, state),
                None => purges.remove(&group),
            };
        };
        purge_state(Some(PurgeState::WaitingForStore));
        let spawned = std::thread::Builder::new()
            .name("domicile-purge".into())
            .spawn(move || {
                if let Some(stores_closed) = stores_closed
                    && !stores_closed.wait(STORE_CLOSE_NOTICED)
                {
                    // Said while it waits, not only when the wait runs out: the operator's apply is
                    // waiting for this purge's attestation meanwhile.
                    tracing::info!(
                        path = %dir.display(), waited_s = STORE_CLOSE_NOTICED.as_secs(),
                        "a purged replica's store is still open (a snapshot build or a reader holds it); \
                         its files are deleted once it closes, or in {} s at most",
                        (STORE_CLOSE_WAIT - STORE_CLOSE_NOTICED).as_secs()
                    );
                    if !stores_closed.wait(STORE_CLOSE_WAIT - STORE_CLOSE_NOTICED) {
                        tracing::warn!(
                            path = %dir.display(), waited_s = STORE_CLOSE_WAIT.as_secs(),
                            "a purged replica's store is still open; deleting its files under it"
                        );
                    }
                }
                purge_state(Some(PurgeState::Deleting));
                let removed = DiskStores::remove_state_machine(&dir);
                purge_state(None);
                let _ = tx.send(removed);
            });
        if let Err(e) = spawned {
            self.purges.lock().expect("purges lock").remove(&group);
            return Err(error("starting its removal thread", e.to_string()));
        }
        rx.await
            .map_err(|_| error("removing its state machine", "the removal thread stopped".into()))?
            .map_err(|e| error("removing its state machine", e.to_string()))
    }

    fn purge_state(&self, group: u64) -> Option<PurgeState> {
        self.purges.lock().expect("purges lock").get(&group).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokioConfig;

    // Production stores: the purge runs on a thread of its own, the test on the type config's runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_says_it_waits_for_its_open_store_and_ends_once_the_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Arc::new(DiskStores::open(dir.path(), NodeId(1)).unwrap());
        let opened: OpenedGroup<TokioConfig, _, _> = Stores::<TokioConfig>::open_group(&*stores, 7).unwrap();
        let group_dir = dir.path().join("groups").join("7");
        assert!(group_dir.exists());
        assert_eq!(Stores::<TokioConfig>::purge_state(&*stores, 7), None);

        let purge = TokioConfig::spawn({
            let stores = stores.clone();
            async move { Stores::<TokioConfig>::retire_group(&*stores, 7).await }
        });
        // The state machine still holds its store: the purge waits for it, and says so meanwhile.
        let mut waiting = false;
        for _ in 0..100 {
            if Stores::<TokioConfig>::purge_state(&*stores, 7) == Some(PurgeState::WaitingForStore) {
                waiting = true;
                break;
            }
            TokioConfig::sleep(Duration::from_millis(20)).await;
        }
        assert!(waiting, "no purge reported waiting for the open store");
        assert!(!purge.is_finished() && group_dir.exists());

        drop(opened);
        purge.await.unwrap().unwrap();
        assert_eq!(
            Stores::<TokioConfig>::purge_state(&*stores, 7),
            None,
            "a finished purge is no longer reported"
        );
        assert!(!group_dir.exists());
        assert!(Stores::<TokioConfig>::is_retired(&*stores, 7));
    }
}
