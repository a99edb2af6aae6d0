//! A range holding records moves between groups online, on real groups over QUIC on loopback
//! (`raft::range_copy`): a split of users-eea-1 at a quarter of the positions, copied while a writer keeps
//! writing; every acknowledged write is readable at the new group afterwards, with its revision kept, so a
//! compare-and-set against a revision read at the old group holds; the range is gone from every replica
//! of the old group; and a change interrupted after any phase is found where it stands and finished by
//! running it again, also after every node restarted from its disk (or, before its fence, aborted with
//! nothing left behind).
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ONE_CLUSTER_AT_A_TIME, group, raft_config};
use placement::{GroupId, NodeId};
use raft::directory::ShardMap;
use raft::identity::Validity;
use raft::local_cluster::LocalCluster;
use raft::map_change::MapChange;
use raft::range_copy::{self, HostLeaders, Leaders, Phase, Progress, RangeChange, RangeCopyError};
use storage::{Command, CommandError, Record, RecordKey, Response, WriteId};
use wire::routing::range_position;

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
nodes = [3]

[[group]]
name = "users-eea-1"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eea-2"
jurisdiction = "EEA"
voters = 3
"#;

/// Epoch 1 gives users-eea-1 positions below 2^63; the split hands `QUARTER..HALF` to users-eea-2.
const QUARTER: u64 = 1 << 62;
const HALF: u64 = 1 << 63;

fn start(dir: &std::path::Path) -> LocalCluster {
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    LocalCluster::start(TOPOLOGY, dir, validity, raft_config()).unwrap()
}

fn leaders(
    cluster: &LocalCluster,
) -> HostLeaders<
    '_,
    raft::config::TokioConfig,
    raft::transport::Faulty<raft::quic::QuicNode>,
    raft::stores::DiskStores,
> {
    HostLeaders {
        nodes: cluster
            .nodes
            .values()
            .map(|node| (&*node.host, node.service.directory()))
            .collect(),
    }
}

/// `count` users whose routing positions lie in `range`.
fn users_in(range: std::ops::Range<u64>, prefix: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|user| range.contains(&range_position(user)))
        .take(count)
        .collect()
}

fn key(user: &str) -> RecordKey {
    RecordKey::new("EEA", user, "profile")
}

fn put(user: &str, value: &str, client_id: u64, sequence: u64) -> Command {
    Command::Put {
        write: WriteId { client_id, sequence },
        key: key(user),
        value: value.as_bytes().to_vec(),
    }
}

fn split() -> MapChange {
    MapChange::Split {
        at: QUARTER,
        to: group("users-eea-2"),
    }
}

/// The published map (publishing epoch 1 if none is yet) and the change planned from it.
async fn plan(cluster: &LocalCluster) -> Option<RangeChange> {
    let node = &cluster.nodes[&NodeId(1)];
    let directory = node.service.directory();
    directory.shard_map(&node.host, "EEA").await.unwrap();
    let current: ShardMap = leaders(cluster).published("EEA").await.unwrap();
    range_copy::plan(directory, &current, &split()).unwrap()
}

/// Writes `users`' records with values `{user}@{tag}`; answers the revisions.
async fn preload(
    cluster: &LocalCluster,
    users: &[String],
    tag: &str,
    client_id: u64,
) -> BTreeMap<String, u64> {
    let leaders = leaders(cluster);
    let mut revisions = BTreeMap::new();
    // Thirty-two writes in flight at a time: their entries share commits. Each of the 32 is a session of
    // its own (`client_id` and its slot): a session's writes go one at a time, and two in flight in one
    // session could reach the log in either order, the later sequence first (then the earlier one is
    // refused as stale).
    let numbered: Vec<(usize, &String)> = users.iter().enumerate().collect();
    for chunk in numbered.chunks(32) {
        let writes = chunk.iter().map(|(n, user)| {
            let session = client_id * 1_000 + (*n % 32) as u64;
            let sequence = (*n / 32) as u64 + 1;
            let command = put(user, &format!("{user}@{tag}"), session, sequence);
            let leaders = &leaders;
            async move {
                (
                    *user,
                    leaders.write(&group("users-eea-1"), command).await.unwrap(),
                )
            }
        });
        for (user, answer) in futures_util::future::join_all(writes).await {
            let Response::Written { revision } = answer else {
                panic!("{answer:?}")
            };
            revisions.insert(user.clone(), revision);
        }
    }
    revisions
}

/// Writes `writes` values round the users while a change runs: to the old group, and once it refuses the
/// range (fenced) to the new one, waiting there while the range is unavailable. Answers the last value
/// acknowledged per user.
async fn write_through(cluster: &LocalCluster, users: &[String], writes: u64) -> BTreeMap<String, String> {
    let leaders = leaders(cluster);
    let mut acknowledged = BTreeMap::new();
    let mut target = group("users-eea-1");
    // A refusal is remembered under its write id like any answer: each attempt is a write of its own.
    let mut sequence = 0;
    for n in 0..writes {
        let user = &users[n as usize % users.len()];
        let value = format!("{user}#{n}");
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            sequence += 1;
            match leaders
                .write(&target, put(user, &value, 900, sequence))
                .await
                .unwrap()
            {
                Response::Written { .. } => {
                    acknowledged.insert(user.clone(), value);
                    break;
                }
                // Refused, applied nowhere: the old group is fenced, or the new one not yet admitted.
                Response::Rejected(CommandError::NotOwned { .. }) => {
                    target = group("users-eea-2");
                    assert!(
                        tokio::time::Instant::now() < give_up,
                        "write {n} refused by both groups for a minute"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("write {n}: {other:?}"),
            }
        }
    }
    acknowledged
}

async fn read_at(cluster: &LocalCluster, group_name: &str, user: &str) -> Response {
    leaders(cluster)
        .write(&group(group_name), Command::Get { key: key(user) })
        .await
        .unwrap()
}

/// No replica of the old group holds any of `users`' records, and its leader reads none of the range.
async fn assert_gone_from_the_old_group(cluster: &LocalCluster, users: &[String]) {
    let old = group("users-eea-1");
    let batch = leaders(cluster)
        .read_range(&old, "EEA", &[(QUARTER, HALF - 1)], None)
        .await
        .unwrap();
    assert!(batch.records.is_empty(), "{:?}", batch.records.first());
    for node in cluster.nodes.values() {
        for user in users {
            // The leader's purge reaches each replica as it applies the entries: wait for it.
            let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
            while node
                .host
                .read_local_copy(&old, key(user))
                .await
                .unwrap()
                .is_some()
            {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "node {} still holds {user}'s record in the old group",
                    node.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_with_records_moves_while_a_writer_writes_and_every_acknowledged_write_is_at_the_new_group() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    // More than one copy batch of records in the moving range, and some that stay.
    let moving = users_in(QUARTER..HALF, "moving", range_copy::BATCH_RECORDS + 200);
    let staying = users_in(0..QUARTER, "staying", 20);
    let before = preload(&cluster, &moving, "before", 1).await;
    preload(&cluster, &staying, "before", 2).await;
    // A compare-and-set the old group applies whose answer the client never gets: it retries the same
    // write after the move, at the new group, and must be answered as the first time, not applied again
    // (which would answer a conflict with its own revision).
    let retried = users_in(QUARTER..HALF, "retried", 1).remove(0);
    let create = Command::CompareAndSet {
        write: WriteId {
            client_id: 77,
            sequence: 1,
        },
        key: key(&retried),
        expected_revision: None,
        value: b"once".to_vec(),
    };
    let first_answer = leaders(&cluster)
        .write(&group("users-eea-1"), create.clone())
        .await
        .unwrap();
    assert!(
        matches!(first_answer, Response::Written { .. }),
        "{first_answer:?}"
    );
    let change = plan(&cluster).await.unwrap();
    assert_eq!(
        (&change.loser, &change.gainer, change.moving.as_slice()),
        (
            &group("users-eea-1"),
            &group("users-eea-2"),
            &[(QUARTER, HALF - 1)][..]
        )
    );

    let mut events = Vec::new();
    let writers_users: Vec<String> = moving[..50].to_vec();
    let driver = leaders(&cluster);
    let began = tokio::time::Instant::now();
    let mut record_event = |event: Progress| {
        eprintln!("{:?} {event:?}", began.elapsed());
        events.push(event)
    };
    let (outcome, acknowledged) = tokio::join!(
        range_copy::run(&driver, &change, &mut record_event),
        write_through(&cluster, &writers_users, 300)
    );
    outcome.unwrap();
    let copied: u64 = events
        .iter()
        .map(|event| match event {
            Progress::Copied { records, .. } => *records,
            _ => 0,
        })
        .sum();
    assert!(
        copied >= moving.len() as u64,
        "copied {copied} of {}",
        moving.len()
    );
    assert!(events.contains(&Progress::Phase { phase: Phase::Tail }));
    // The moving users' records and the retried one's.
    assert!(events.iter().any(
        |event| matches!(event, Progress::Verified { records, .. } if *records == moving.len() as u64 + 1)
    ));
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Progress::Sessions { carried, .. } if *carried >= 3)),
        "the sessions of the preloads (clients 1,000 on and 2,000 on) and of client 77 carried: {events:?}"
    );

    // Every acknowledged write, and every record written before, at the new group; the staying ones at
    // the old.
    // Read on the new group's leader after a barrier, in the copy's bounded runs; a sample also through
    // the log, as a client reads.
    let mut held = BTreeMap::new();
    let mut after = None;
    loop {
        let run = leaders(&cluster)
            .read_range(&group("users-eea-2"), "EEA", &change.moving, after.clone())
            .await
            .unwrap();
        after = run.records.last().map(|(key, _)| key.clone());
        held.extend(run.records.into_iter().map(|(key, record)| (key.user_id, record)));
        if !run.more {
            break;
        }
    }
    assert_eq!(held.len(), moving.len() + 1);
    let retry = leaders(&cluster)
        .write(&group("users-eea-2"), create)
        .await
        .unwrap();
    assert_eq!(
        retry, first_answer,
        "the retry at the new group is answered as the first time"
    );
    let Response::Written { revision } = first_answer else {
        unreachable!()
    };
    assert_eq!(held[&retried].revision, revision);
    let Response::Value(Some(record)) = read_at(&cluster, "users-eea-2", &retried).await else {
        panic!("{retried} is not at the new group")
    };
    assert_eq!(
        (record.revision, record.value.as_slice()),
        (revision, &b"once"[..])
    );
    for user in &moving {
        let expected = acknowledged
            .get(user)
            .cloned()
            .unwrap_or_else(|| format!("{user}@before"));
        let record = &held[user];
        assert_eq!(
            String::from_utf8(record.value.clone()).unwrap(),
            expected,
            "{user}"
        );
        if !acknowledged.contains_key(user) {
            assert_eq!(
                record.revision, before[user],
                "a copied record keeps its revision"
            );
        }
    }
    for user in &writers_users {
        let Response::Value(Some(record)) = read_at(&cluster, "users-eea-2", user).await else {
            panic!("{user} is not at the new group")
        };
        assert_eq!(record, held[user]);
    }
    for user in &staying {
        assert!(matches!(
            read_at(&cluster, "users-eea-1", user).await,
            Response::Value(Some(_))
        ));
    }
    assert_gone_from_the_old_group(&cluster, &moving).await;
    assert!(
        plan(&cluster).await.is_none(),
        "epoch 2 published: nothing left to plan"
    );

    // Compare-and-set across the move: a client holding the revision it read at the old group may set
    // once; a client holding it after that change may not (no revision is ever reused).
    let untouched = moving
        .iter()
        .find(|user| !acknowledged.contains_key(*user))
        .unwrap();
    let cas = |client_id: u64, value: &str| Command::CompareAndSet {
        write: WriteId {
            client_id,
            sequence: 1,
        },
        key: key(untouched),
        expected_revision: Some(before[untouched]),
        value: value.as_bytes().to_vec(),
    };
    let leaders = leaders(&cluster);
    let first = leaders
        .write(&group("users-eea-2"), cas(31, "first"))
        .await
        .unwrap();
    let Response::Written { revision } = first else {
        panic!("{first:?}")
    };
    assert!(revision > before[untouched]);
    let delete = Command::Delete {
        write: WriteId {
            client_id: 31,
            sequence: 2,
        },
        key: key(untouched),
    };
    leaders.write(&group("users-eea-2"), delete).await.unwrap();
    let recreate = put(untouched, "again", 31, 3);
    let Response::Written { revision: again } = leaders.write(&group("users-eea-2"), recreate).await.unwrap()
    else {
        panic!()
    };
    assert!(again > revision, "a recreated record never takes an old revision");
    assert!(matches!(
        leaders
            .write(&group("users-eea-2"), cas(32, "stale"))
            .await
            .unwrap(),
        Response::Rejected(CommandError::RevisionMismatch { .. })
    ));
    cluster.stop().await;
}

/// The phase `observe` finds after each step, with the change planned afresh each time as a rerun would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_change_is_found_where_it_stands_and_finished_or_aborted_before_its_fence() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    let moving = users_in(QUARTER..HALF, "moving", 60);
    preload(&cluster, &moving, "before", 1).await;
    let mut ignore = |_: Progress| {};

    // Copied, then aborted: the new group holds nothing of the range and receives nothing.
    let change = plan(&cluster).await.unwrap();
    assert_eq!(
        range_copy::observe(&leaders(&cluster), &change).await.unwrap(),
        Phase::Prepare
    );
    let mut phase = Phase::Prepare;
    for expected in [Phase::Copy, Phase::Fence] {
        phase = range_copy::step(&leaders(&cluster), &change, phase, &mut ignore)
            .await
            .unwrap();
        assert_eq!(phase, expected);
    }
    let held = leaders(&cluster)
        .read_range(&group("users-eea-2"), "EEA", &change.moving, None)
        .await
        .unwrap();
    assert_eq!(held.records.len(), moving.len());
    range_copy::abort(&leaders(&cluster), &change, &mut ignore)
        .await
        .unwrap();
    let held = leaders(&cluster)
        .read_range(&group("users-eea-2"), "EEA", &change.moving, None)
        .await
        .unwrap();
    assert!(held.records.is_empty(), "an aborted copy leaves nothing behind");
    assert_eq!(
        leaders(&cluster)
            .range_state(&group("users-eea-2"))
            .await
            .unwrap()
            .1,
        None
    );
    // Still served by the old group.
    assert!(matches!(
        read_at(&cluster, "users-eea-1", &moving[0]).await,
        Response::Value(Some(_))
    ));

    // Run again, interrupted after every phase: a fresh plan and `observe` resume it.
    let resumed_at = [
        (Phase::Prepare, Phase::Copy),
        (Phase::Copy, Phase::Copy),
        (Phase::Fence, Phase::Tail),
        (Phase::Tail, Phase::Tail),
        (Phase::Admit, Phase::Publish),
    ];
    for (run, expected) in resumed_at {
        let change = plan(&cluster).await.unwrap();
        let found = range_copy::observe(&leaders(&cluster), &change).await.unwrap();
        let phase = if found < run { run } else { found };
        range_copy::step(&leaders(&cluster), &change, phase, &mut ignore)
            .await
            .unwrap();
        if run == Phase::Fence {
            // Every node stops and starts again from its disk: the incoming and departing ranges are
            // there, and so is where the change stands.
            cluster.stop().await;
            drop(cluster);
            cluster = start(dir.path());
            cluster.create_groups().await.unwrap();
        }
        let change = plan(&cluster).await.unwrap();
        assert_eq!(
            range_copy::observe(&leaders(&cluster), &change).await.unwrap(),
            expected,
            "after {run:?}"
        );
        if run == Phase::Fence {
            assert!(matches!(
                range_copy::abort(&leaders(&cluster), &change, &mut ignore).await,
                Err(RangeCopyError::Fenced { .. })
            ));
        }
    }
    let change = plan(&cluster).await.unwrap();
    range_copy::step(&leaders(&cluster), &change, Phase::Publish, &mut ignore)
        .await
        .unwrap();
    // Published, then interrupted before the purge: the rerun finds the change published and purges.
    assert!(plan(&cluster).await.is_none());
    let groups: Vec<GroupId> = vec![group("users-eea-1"), group("users-eea-2")];
    range_copy::finish_published(&leaders(&cluster), &groups, "EEA", &mut ignore)
        .await
        .unwrap();
    for user in &moving {
        let Response::Value(Some(Record { value, .. })) = read_at(&cluster, "users-eea-2", user).await else {
            panic!("{user} missing at the new group")
        };
        assert_eq!(value, format!("{user}@before").into_bytes());
    }
    assert_gone_from_the_old_group(&cluster, &moving).await;
    cluster.stop().await;
}

/// The planted early purge loses the range: the digests agree (both sides empty), so only the
/// acknowledged writes checked at the new group catch it.
#[cfg(feature = "canaries")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_early_purge_canary_is_caught_by_the_acknowledged_writes() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    let moving = users_in(QUARTER..HALF, "moving", 40);
    preload(&cluster, &moving, "before", 1).await;
    let change = plan(&cluster).await.unwrap();
    range_copy::canary::set_early_purge(true);
    let outcome = range_copy::run(&leaders(&cluster), &change, &mut |_| {}).await;
    range_copy::canary::set_early_purge(false);
    outcome.unwrap();
    let mut lost = 0;
    for user in &moving {
        if !matches!(
            read_at(&cluster, "users-eea-2", user).await,
            Response::Value(Some(_))
        ) {
            lost += 1;
        }
    }
    assert_eq!(
        lost,
        moving.len(),
        "the canary purged before the gainer held the range"
    );
    cluster.stop().await;
}
