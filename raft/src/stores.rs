//! Where a host keeps its groups: one node-wide Raft log and one state machine per group.
//!
//! A seam: production opens the log on real files with its sync thread and each state machine on redb; the
//! simulator supplies in-memory disks and maps with the same log and apply code.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use storage::backend::Backend;
use storage::disk::FsDisk;
use storage::group_commit::SyncThread;
use storage::log::LogConfig;
use storage::raft_log::{GroupLog, LogEngine};
use storage::redb_store::RedbBackend;
use storage::state_machine::{Execution, StateMachine};

use crate::config::GroupConfig;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct StoreError {
    pub what: String,
    pub reason: String,
}

/// A group's log and state machine, as recovered.
pub struct OpenedGroup<C: GroupConfig, L, B: Backend> {
    pub log: L,
    pub state_machine: StateMachine<C, B>,
}

pub trait Stores<C: GroupConfig>: Send + Sync + 'static {
    type Log: RaftLogStorage<C>;
    type Backend: Backend;

    /// The log and state machine of `group`, recovered from what is on disk.
    fn open_group(&self, group: u64) -> Result<OpenedGroup<C, Self::Log, Self::Backend>, StoreError>;
}

/// Production storage under one data directory: `log/` (the node-wide WAL) and `groups/<n>/` (redb).
pub struct DiskStores {
    dir: PathBuf,
    engine: Arc<LogEngine<FsDisk>>,
    // Kept for its lifetime: dropping it syncs what is pending and stops the driver.
    _sync: SyncThread,
}

impl DiskStores {
    pub fn open(dir: &Path) -> Result<DiskStores, StoreError> {
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
        Ok(DiskStores {
            dir: dir.to_path_buf(),
            engine,
            _sync: sync,
        })
    }
}

impl<C: GroupConfig> Stores<C> for DiskStores {
    type Log = GroupLog<C, FsDisk>;
    type Backend = RedbBackend;

    fn open_group(&self, group: u64) -> Result<OpenedGroup<C, Self::Log, RedbBackend>, StoreError> {
        let path = self.dir.join("groups").join(group.to_string());
        let error = |reason: String| StoreError {
            what: format!("state machine {}", path.display()),
            reason,
        };
        let backend = RedbBackend::open(&path).map_err(|e| error(e.to_string()))?;
        let state_machine =
            StateMachine::open(backend, Execution::DedicatedThread).map_err(|e| error(e.to_string()))?;
        Ok(OpenedGroup {
            log: self.engine.group(group),
            state_machine,
        })
    }
}
