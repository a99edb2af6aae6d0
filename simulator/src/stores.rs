//! A node's stores in the simulator: the real node-wide log ([`storage::raft_log::LogEngine`]) over a
//! [`SimDisk`], and per group the real state machine over an in-memory ordered map that, like
//! redb, only keeps its durable commits across a crash.
//!
//! Group commit is driven by a task on the deterministic runtime: it waits until something is
//! accepted into the log, writes the log's buffer out, lets the simulated fdatasync take its time,
//! and calls [`LogEngine::sync_pending`] (write what arrived since, sync, acknowledge) — the same
//! round production's sync thread runs. Writing before the simulated latency keeps written but
//! unsynced bytes on the simulated disk while the sync is in flight, for crashes to tear.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft_rt_sim::SimRuntime;
use raft::stores::{OpenedGroup, StoreError, Stores};
use storage::backend::{Backend, MemBackend, SyncJob, WriteBatch};
use storage::error::StateMachineError;
use storage::group_commit::Journal;
use storage::log::LogConfig;
use storage::raft_log::{GroupLog, LogEngine};
use storage::snapshot::{SnapshotData, SnapshotSpool};
use storage::state_machine::{Execution, StateMachine};

use crate::config::SimConfig;
use crate::disk::{DiskHandle, SimDisk};
use crate::prng::Prng;

/// What of each group's state machine survives a crash: its last durable commit.
#[derive(Clone, Default)]
pub struct DurableBackends {
    groups: Arc<Mutex<BTreeMap<u64, MemBackend>>>,
}

impl DurableBackends {
    /// The disk is gone.
    pub fn lose_everything(&self) {
        self.groups.lock().expect("durable backends lock").clear();
    }

    fn get(&self, group: u64) -> MemBackend {
        let groups = self.groups.lock().expect("durable backends lock");
        groups.get(&group).cloned().unwrap_or_default()
    }

    /// The group's replica was purged.
    fn remove(&self, group: u64) {
        self.groups.lock().expect("durable backends lock").remove(&group);
    }

    fn set(&self, group: u64, backend: MemBackend) {
        self.groups
            .lock()
            .expect("durable backends lock")
            .insert(group, backend);
    }
}

/// The state machine's backing store: production's in-memory map, plus a copy of it as of the last
/// durable commit (copy-on-write, so the copy costs nothing until the next write).
pub struct SimBackend {
    live: MemBackend,
    group: u64,
    durable: DurableBackends,
    /// The incarnation's liveness: a dead incarnation's late commits must not reach the disk.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend for SimBackend {
    type View = <MemBackend as Backend>::View;

    fn view(&self) -> Result<Self::View, StateMachineError> {
        self.live.view()
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
        let durable = batch.durable;
        self.live.commit(batch)?;
        if durable && self.alive.load(std::sync::atomic::Ordering::Relaxed) {
            self.durable.set(self.group, self.live.clone());
        }
        Ok(())
    }

    /// The state as of now becomes the durable copy when the job runs, unless the incarnation died
    /// first (its disk is detached: a sync that had not completed made nothing durable).
    fn sync_job(&mut self) -> Result<SyncJob, StateMachineError> {
        let (state, group, durable, alive) = (
            self.live.clone(),
            self.group,
            self.durable.clone(),
            self.alive.clone(),
        );
        Ok(Box::new(move || {
            if alive.load(std::sync::atomic::Ordering::Relaxed) {
                durable.set(group, state);
            }
            Ok(())
        }))
    }

    fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        self.live.snapshot_spool()
    }

    /// Durable, as production's install is.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        self.live.install_snapshot(snapshot)?;
        if self.alive.load(std::sync::atomic::Ordering::Relaxed) {
            self.durable.set(self.group, self.live.clone());
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        self.live.save_snapshot(snapshot)?;
        if self.alive.load(std::sync::atomic::Ordering::Relaxed) {
            let mut durable = self.durable.get(self.group);
            durable.save_snapshot(snapshot)?;
            self.durable.set(self.group, durable);
        }
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
        self.live.load_snapshot()
    }
}

/// One incarnation's stores.
pub struct SimStores {
    pub engine: Arc<LogEngine<DiskHandle>>,
    durable: DurableBackends,
    alive: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

/// How long simulated fdatasyncs take.
#[derive(Clone, Copy, Debug)]
pub struct SyncLatency {
    pub normal_micros: (u64, u64),
    /// Chance per sync (per million) of a latency spike, and its range.
    pub spike_per_million: u64,
    pub spike_micros: (u64, u64),
}

impl Default for SyncLatency {
    fn default() -> Self {
        SyncLatency {
            normal_micros: (200, 1_500),
            spike_per_million: 0,
            spike_micros: (20_000, 200_000),
        }
    }
}

impl SimStores {
    /// Recovers the log from the disk (failing if recovery refuses the disk's contents) and starts
    /// the group-commit driver for this incarnation.
    pub fn open(
        disk: &SimDisk,
        durable: DurableBackends,
        mut rng: Prng,
        latency: SyncLatency,
    ) -> Result<SimStores, String> {
        let wake = Arc::new(tokio::sync::Notify::new());
        let handle = disk.attach(wake.clone());
        let config = LogConfig {
            segment_bytes_max: 4 << 20,
        };
        let engine = LogEngine::open(handle, config).map_err(|error| error.to_string())?;
        // As production does at start: a purge cut short after its log was retired is finished.
        for group in engine.retired_groups() {
            durable.remove(group);
        }
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let notified = wake.clone();
        engine
            .commit_queue()
            .set_notify(Arc::new(move || notified.notify_one()));
        let driven = engine.clone();
        let driver_alive = alive.clone();
        let driver_wake = wake.clone();
        // Bounded by the incarnation: it stops once the node dies (`kill` wakes it to notice).
        drop(SimRuntime::spawn(async move {
            while driver_alive.load(std::sync::atomic::Ordering::Relaxed) {
                driver_wake.notified().await;
                // A failure poisons the log; sync_pending below then fails every waiter.
                let _ = driven.write_buffered();
                let micros = if rng.chance(latency.spike_per_million) {
                    rng.between(latency.spike_micros.0, latency.spike_micros.1)
                } else {
                    rng.between(latency.normal_micros.0, latency.normal_micros.1)
                };
                SimRuntime::sleep(Duration::from_micros(micros)).await;
                // On a detached disk this fails every waiter, so nothing waits forever.
                driven.sync_pending();
            }
            driven.sync_pending();
        }));
        Ok(SimStores {
            engine,
            durable,
            alive,
            wake,
        })
    }

    /// What the world keeps of this incarnation's stores once the host owns them.
    pub fn handle(&self) -> StoresHandle {
        StoresHandle {
            engine: self.engine.clone(),
            alive: self.alive.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// The world's handle on an incarnation's stores: the log (for the checkers) and the kill switch.
#[derive(Clone)]
pub struct StoresHandle {
    pub engine: Arc<LogEngine<DiskHandle>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl StoresHandle {
    /// The incarnation died: nothing it does from now on is durable, and its sync driver stops.
    pub fn kill(&self) {
        self.alive.store(false, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }
}

impl Stores<SimConfig> for SimStores {
    type Log = GroupLog<SimConfig, DiskHandle>;
    type Backend = SimBackend;

    fn open_group(&self, group: u64) -> Result<OpenedGroup<SimConfig, Self::Log, SimBackend>, StoreError> {
        let backend = SimBackend {
            live: self.durable.get(group),
            group,
            durable: self.durable.clone(),
            alive: self.alive.clone(),
        };
        let state_machine = StateMachine::open(backend, Execution::Inline).map_err(|error| StoreError {
            what: format!("state machine of group {group}"),
            reason: error.to_string(),
        })?;
        let log: GroupLog<SimConfig, DiskHandle> = self.engine.group(group);
        if self.engine.is_retired(group) {
            log.revive().map_err(|error| StoreError {
                what: format!("reviving the log of group {group}"),
                reason: error.to_string(),
            })?;
        }
        Ok(OpenedGroup { log, state_machine })
    }

    fn is_retired(&self, group: u64) -> bool {
        self.engine.is_retired(group)
    }

    async fn retire_group(&self, group: u64) -> Result<(), StoreError> {
        let log: GroupLog<SimConfig, DiskHandle> = self.engine.group(group);
        log.retire().await.map_err(|error| StoreError {
            what: format!("retiring the log of group {group}"),
            reason: error.to_string(),
        })?;
        self.durable.remove(group);
        Ok(())
    }
}
