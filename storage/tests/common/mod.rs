//! Shared by the integration tests: a concrete type config on tokio, and store constructors.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use storage::Command;
use storage::Response;
use storage::disk::FsDisk;
use storage::group_commit::SyncThread;
use storage::log::LogConfig;
use storage::raft_log::GroupLog;
use storage::raft_log::LogEngine;
use storage::redb_store::RedbBackend;
use storage::state_machine::Execution;
use storage::state_machine::StateMachine;

openraft::declare_raft_types!(
    /// The test type config: our data types on the tokio runtime.
    pub TestConfig: D = Command, R = Response
);

pub type TestLog = GroupLog<TestConfig, FsDisk>;
pub type TestStateMachine = StateMachine<TestConfig, RedbBackend>;

/// A node's stores in `dir`: the log engine (with its sync thread) and one group's state machine.
pub struct Node {
    pub engine: Arc<LogEngine<FsDisk>>,
    pub sync: SyncThread,
}

impl Node {
    pub fn open(dir: &Path, config: LogConfig) -> Result<Node, storage::error::LogError> {
        let disk = FsDisk::new(dir.join("log")).expect("log dir");
        let engine = LogEngine::open(disk, config)?;
        let sync = engine.spawn_sync_thread().expect("sync thread");
        Ok(Node { engine, sync })
    }

    pub fn log(&self, group: u64) -> TestLog {
        self.engine.group(group)
    }
}

pub fn open_state_machine(
    dir: &Path,
    group: u64,
) -> Result<TestStateMachine, storage::error::StateMachineError> {
    let backend = RedbBackend::open(dir.join(format!("sm-{group}")))?;
    StateMachine::open(backend, Execution::DedicatedThread)
}

/// SplitMix64: seeded randomness for tests, so a failure names a seed that replays it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub type TestEntry = openraft::alias::EntryOf<TestConfig>;

/// The deterministic entry at `index`: a put whose key and value are functions of the index.
pub fn put_entry(index: u64) -> TestEntry {
    let command = Command::Put {
        write: storage::WriteId {
            client_id: 1,
            sequence: index,
        },
        key: put_key(index),
        value: put_value(index),
    };
    openraft::Entry {
        log_id: openraft::testing::log_id::<TestConfig>(1, 1, index),
        payload: openraft::EntryPayload::Normal(command),
    }
}

pub fn put_key(index: u64) -> storage::RecordKey {
    storage::RecordKey::new(
        "eu",
        format!("user-{}", index % 10),
        format!("record-{}", index % 7),
    )
}

pub fn put_value(index: u64) -> Vec<u8> {
    format!("value-{index:08}-").repeat(8).into_bytes()
}

/// Applies entries to a state machine the way openraft does (one stream per batch).
pub async fn apply_entries(sm: &mut TestStateMachine, entries: Vec<TestEntry>) -> Result<(), std::io::Error> {
    use openraft::storage::RaftStateMachine;
    let stream = futures_util::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
    sm.apply(stream).await
}

/// What each record should hold after entries 1..=last were applied.
pub fn expected_records(last: u64) -> std::collections::BTreeMap<storage::RecordKey, storage::Record> {
    let mut expected = std::collections::BTreeMap::new();
    for index in 1..=last {
        expected.insert(
            put_key(index),
            storage::Record {
                value: put_value(index),
                revision: index,
            },
        );
    }
    expected
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
