//! Who syncs a replica's appends: a follower's own task when nothing else waits for the disk, the
//! group-commit driver otherwise (a leader's appends always). No driver runs in these tests: each
//! sync is either the appender's own or an explicit `sync_pending`, so the assertions say exactly
//! which one made an append durable.

mod common;

use std::future::Future;
use std::sync::Arc;

use common::*;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use storage::disk::FsDisk;
use storage::log::LogConfig;
use storage::raft_log::LogEngine;

const ME: u64 = 1;
const OTHER: u64 = 2;

fn open(dir: &std::path::Path) -> Arc<LogEngine<FsDisk>> {
    LogEngine::open(FsDisk::new(dir.join("log")).unwrap(), LogConfig::default()).unwrap()
}

/// Runs a call that waits for durability, driving the queue by hand once it has pushed.
async fn durably<T>(engine: &LogEngine<FsDisk>, call: impl Future<Output = T>) -> T {
    let (result, synced) = tokio::join!(call, async { engine.sync_pending() });
    assert!(synced, "the call pushed nothing to sync");
    result
}

async fn vote_for(engine: &LogEngine<FsDisk>, log: &mut TestLog, node: u64) {
    let vote: openraft::alias::VoteOf<TestConfig> = openraft::Vote::new(1, node);
    durably(engine, log.save_vote(&vote)).await.unwrap();
}

/// Appends one entry; returns whether its flush callback had run when `append` returned.
async fn append(log: &mut TestLog, index: u64) -> (bool, impl Future<Output = bool>) {
    let (tx, mut rx) = TestConfig::oneshot();
    log.append([put_entry(index)], IOFlushed::signal(tx))
        .await
        .unwrap();
    let done_on_return = match rx.try_recv() {
        Ok(result) => {
            result.unwrap();
            true
        }
        Err(_) => false,
    };
    (done_on_return, async move {
        done_on_return || rx.await.is_ok_and(|result| result.is_ok())
    })
}

#[test]
fn a_follower_syncs_its_own_append_and_a_leader_leaves_it_to_the_driver() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut log: TestLog = engine.replica(1, ME).unwrap();

        vote_for(&engine, &mut log, OTHER).await;
        let syncs = engine.commit_queue().sync_count();
        let (done, _) = append(&mut log, 1).await;
        assert!(done, "a follower's append is durable when append returns");
        assert_eq!(
            engine.commit_queue().sync_count(),
            syncs + 1,
            "by one sync of its own"
        );
        assert!(!engine.sync_pending(), "nothing is left for the driver");

        vote_for(&engine, &mut log, ME).await;
        let (done, flushed) = append(&mut log, 2).await;
        assert!(!done, "a leader's append waits for the driver");
        assert!(engine.sync_pending());
        assert!(flushed.await, "and the driver's sync acknowledges it");

        let entries = log.try_get_log_entries(1..=2).await.unwrap();
        assert_eq!(entries, vec![put_entry(1), put_entry(2)]);
    });
}

#[test]
fn a_follower_with_work_already_queued_joins_the_drivers_round() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let mut follower: TestLog = engine.replica(1, ME).unwrap();
        let mut leader: TestLog = engine.replica(2, ME).unwrap();
        vote_for(&engine, &mut follower, OTHER).await;
        vote_for(&engine, &mut leader, ME).await;

        let (leader_done, leader_flushed) = append(&mut leader, 1).await;
        assert!(!leader_done);
        let (follower_done, follower_flushed) = append(&mut follower, 1).await;
        assert!(
            !follower_done,
            "another group's append was unsynced: the follower's waits for the same round"
        );
        let syncs = engine.commit_queue().sync_count();
        assert!(engine.sync_pending());
        assert_eq!(
            engine.commit_queue().sync_count(),
            syncs + 1,
            "one round for both"
        );
        assert!(leader_flushed.await && follower_flushed.await);
    });
}

#[test]
fn the_role_survives_a_restart_with_the_stored_vote() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let engine = open(dir.path());
        let mut log: TestLog = engine.replica(1, ME).unwrap();
        vote_for(&engine, &mut log, OTHER).await;
    });
    runtime().block_on(async {
        let engine = open(dir.path());
        let mut log: TestLog = engine.replica(1, ME).unwrap();
        let (done, _) = append(&mut log, 1).await;
        assert!(done, "reopened with a vote for another node: still a follower");
        let mut plain: TestLog = engine.group(1);
        let (done, flushed) = append(&mut plain, 2).await;
        assert!(!done, "a group log opened without its node never syncs by itself");
        assert!(engine.sync_pending() && flushed.await);
    });
}
