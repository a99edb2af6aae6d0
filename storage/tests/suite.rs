//! openraft's own storage conformance suite against our log and state machine: on real files
//! (FsDisk + redb, the production pair) and in memory (MemDisk + MemBackend, the simulator pair).

mod common;

use std::sync::Arc;

use common::TestConfig;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use storage::backend::MemBackend;
use storage::disk::FsDisk;
use storage::disk::MemDisk;
use storage::group_commit::SyncThread;
use storage::log::LogConfig;
use storage::raft_log::GroupLog;
use storage::raft_log::LogEngine;
use storage::redb_store::RedbBackend;
use storage::state_machine::Execution;
use storage::state_machine::StateMachine;

/// Keeps a store's directory and sync thread alive for the duration of one suite case.
struct Guard {
    _sync: SyncThread,
    _dir: Option<tempfile::TempDir>,
}

struct FileStores;

impl StoreBuilder<TestConfig, GroupLog<TestConfig, FsDisk>, StateMachine<TestConfig, RedbBackend>, Guard>
    for FileStores
{
    async fn build(
        &self,
    ) -> Result<
        (
            Guard,
            GroupLog<TestConfig, FsDisk>,
            StateMachine<TestConfig, RedbBackend>,
        ),
        StorageError<TestConfig>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        // Small segments, so the suite's purges exercise segment removal.
        let engine = LogEngine::open(
            FsDisk::new(dir.path().join("log")).unwrap(),
            LogConfig {
                segment_bytes_max: 4096,
            },
        )
        .unwrap();
        let sync = engine.spawn_sync_thread().unwrap();
        let sm = StateMachine::open(
            RedbBackend::open(dir.path().join("sm")).unwrap(),
            Execution::DedicatedThread,
        )
        .unwrap();
        Ok((
            Guard {
                _sync: sync,
                _dir: Some(dir),
            },
            engine.group(1),
            sm,
        ))
    }
}

struct MemoryStores;

impl StoreBuilder<TestConfig, GroupLog<TestConfig, MemDisk>, StateMachine<TestConfig, MemBackend>, Guard>
    for MemoryStores
{
    async fn build(
        &self,
    ) -> Result<
        (
            Guard,
            GroupLog<TestConfig, MemDisk>,
            StateMachine<TestConfig, MemBackend>,
        ),
        StorageError<TestConfig>,
    > {
        let engine: Arc<LogEngine<MemDisk>> = LogEngine::open(MemDisk::new(), LogConfig::default()).unwrap();
        let sync = engine.spawn_sync_thread().unwrap();
        let sm = StateMachine::open(MemBackend::new(), Execution::Inline).unwrap();
        // Another group shares the engine, as on a real node; the suite only sees group 7.
        Ok((
            Guard {
                _sync: sync,
                _dir: None,
            },
            engine.group(7),
            sm,
        ))
    }
}

#[test]
fn openraft_suite_passes_on_files_and_redb() {
    TestConfig::run(async {
        Suite::test_all(FileStores).await.expect("openraft storage suite");
    });
}

#[test]
fn openraft_suite_passes_in_memory() {
    TestConfig::run(async {
        Suite::test_all(MemoryStores)
            .await
            .expect("openraft storage suite");
    });
}
