//! A new replica receives a group's data as a streamed snapshot: the leader's log before its snapshot is
//! purged, so a learner can only be brought up by one. The snapshot is tens of chunks — more than the
//! sender keeps in flight, so the receiver puts chunks that overtook each other on the QUIC streams back
//! in order — written into a spool file beside the learner's store, checked, installed (the install
//! following the transfer as it arrives), and kept there as the learner's current snapshot; every record
//! arrives intact, and the counts in both replicas' status say one snapshot went over, so a regression to
//! entry-by-entry copying fails here.
//!
//! Waits poll with deadlines on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{EEA_SITES_WITH_A_SPARE, ONE_CLUSTER_AT_A_TIME, cluster_with, group};
use placement::{NodeId, Step};
use raft::host::ReadConsistency;
use raft::message::SNAPSHOT_CHUNKS_IN_FLIGHT;
use storage::snapshot::SNAPSHOT_CHUNK_BYTES_MAX;
use storage::{Command, RecordKey, WriteId};

const RECORDS: u64 = 200;
const VALUE_BYTES: usize = 128 << 10;

fn key(index: u64) -> RecordKey {
    RecordKey::new("EEA", format!("user-{}", index % 7), format!("record-{index}"))
}

fn value(index: u64) -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| (i as u64 * 31 + index) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_receives_a_streamed_snapshot_of_many_chunks_and_every_record() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    // A snapshot every 50 entries with 5 kept behind it: the log a learner would need is gone.
    let config = raft::config::with_snapshot_policy(&common::raft_config(), 50, 5).unwrap();
    let cluster = cluster_with(EEA_SITES_WITH_A_SPARE, Arc::new(config)).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    for index in 0..RECORDS {
        let put = Command::Put {
            write: WriteId {
                client_id: 11,
                sequence: index + 1,
            },
            key: key(index),
            value: value(index),
        };
        cluster.write("users-eea", &[1, 2, 3], put).await.unwrap();
    }
    let snapshot_bytes = RECORDS as usize * VALUE_BYTES;
    assert!(
        snapshot_bytes / SNAPSHOT_CHUNK_BYTES_MAX > 2 * SNAPSHOT_CHUNKS_IN_FLIGHT,
        "the snapshot must take more chunks than the sender keeps in flight"
    );
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(5))
        .await
        .unwrap();
    let host = &cluster.nodes[&leader].host;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let purged = host.raft_metrics(&eea).unwrap().purged.map(|log_id| log_id.index);
        if purged.is_some_and(|index| index > RECORDS / 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the leader never purged its log behind a snapshot ({purged:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Frankfurt's replica is opened when the leader first reaches it.
    host.execute(&Step::AddLearner {
        group: eea.clone(),
        node: NodeId(4),
    })
    .await
    .unwrap();
    let learner = &cluster.node(4).host;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    for index in 0..RECORDS {
        loop {
            let read = learner.read(&eea, key(index), ReadConsistency::Stale).await;
            if let Some(record) = read.ok().and_then(|read| read.record) {
                assert_eq!(record.value, value(index), "record {index} arrived changed");
                break;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "record {index} never reached the learner"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let metrics = learner.raft_metrics(&eea).unwrap();
    assert!(
        metrics.snapshot.is_some_and(|log_id| log_id.index > RECORDS / 2),
        "the learner holds a snapshot: {:?}",
        metrics.snapshot
    );
    let received = learner.status(&eea).unwrap();
    assert!(
        received.snapshots_installed >= 1,
        "the learner was brought up by a snapshot: {received:?}"
    );
    assert_eq!(received.snapshots_sent, 0, "a learner sends none: {received:?}");
    let sent = host.status(&eea).unwrap();
    assert!(
        sent.snapshots_sent >= 1,
        "the leader sent the learner a snapshot: {sent:?}"
    );
    assert_eq!(sent.snapshots_installed, 0, "the leader built its own: {sent:?}");
}
