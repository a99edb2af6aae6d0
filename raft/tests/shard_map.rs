//! A jurisdiction's shard map changes by epochs, on real groups over QUIC on loopback: a split publishes
//! epoch 2 after the group losing the range has committed its new ranges; a call routed by epoch 1 is
//! answered `Moved` with epoch 2 and succeeds when routed again; the losing group refuses the moved range's
//! writes where it applies them, so none is ever applied; a range still holding records is not handed over;
//! the map and the ranges survive a restart of every node; a damaged map is routed by by no node.
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{ONE_CLUSTER_AT_A_TIME, ask, group, raft_config};
use placement::NodeId;
use raft::client_protocol::{ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency};
use raft::directory::{DirectoryError, ShardMap, shard_map_key};
use raft::host::{HostError, ReadConsistency};
use raft::identity::Validity;
use raft::local_cluster::LocalCluster;
use raft::map_change::{self, MapChange, MapStep};
use storage::{Command, CommandError, RecordKey, Response, WriteId};
use wire::routing::{Layout, RangeStart, RoutingMap, range_position};

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

[[grant]]
service = "shard-test"
jurisdiction = "EEA"
access = "read-write"
"#;

const NODES: [u64; 3] = [1, 2, 3];
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

/// A user whose routing position lies in `range`.
fn user_in(range: std::ops::Range<u64>, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|user| range.contains(&range_position(user)))
        .unwrap()
}

fn put(user: &str, record: &str, epoch: u64, sequence: u64) -> ClientRequest {
    ClientRequest::RoutedCall {
        jurisdiction: "EEA".into(),
        user_id: user.into(),
        epoch,
        op: ClientOp::Put {
            record: record.into(),
            value: format!("{user}/{record}").into_bytes(),
            write: WriteId {
                client_id: 41,
                sequence,
            },
        },
    }
}

/// Asks `request` of each node in turn until one serves it or says `Moved`, while groups elect leaders
/// and nodes learn maps; panics after 20 s.
async fn call(dialer: &raft::quic::Dialer, request: ClientRequest) -> ClientResponse {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < give_up {
        for node in NODES {
            match ask(dialer, node, request.clone()).await {
                answer @ (ClientResponse::Done { .. }
                | ClientResponse::Moved { .. }
                | ClientResponse::Map(_)) => {
                    return answer;
                }
                other => last = Some(other),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no node served {request:?}: last {last:?}");
}

async fn leader_of(cluster: &LocalCluster, name: &str) -> NodeId {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        for id in NODES {
            // A replica a node opens when its group's leader first contacts it is not there before.
            let status = cluster.nodes[&NodeId(id)].host.status(&group(name));
            if status.is_ok_and(|status| status.leader == Some(NodeId(id))) {
                return NodeId(id);
            }
        }
        assert!(tokio::time::Instant::now() < give_up, "{name} elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs each step on its group's leader, in order, as `domicile shard split` will through the admin
/// endpoints; stops at the first refusal.
async fn run(cluster: &LocalCluster, steps: &[MapStep]) -> Result<(), DirectoryError> {
    for step in steps {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let node = &cluster.nodes[&leader_of(cluster, &step.group().0).await];
            match map_change::execute(node.service.directory(), &node.host, step).await {
                Err(DirectoryError::NotLeader { .. }) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                outcome => {
                    outcome?;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Plans a split of users-eea-1 at `QUARTER` from the map node 1 knows now.
async fn plan_split(cluster: &LocalCluster) -> Result<(ShardMap, Vec<MapStep>), DirectoryError> {
    let node = &cluster.nodes[&NodeId(1)];
    let directory = node.service.directory();
    let current = directory.refresh(&node.host, "EEA", 1).await?;
    map_change::plan(
        directory,
        &current,
        &MapChange::Split {
            at: QUARTER,
            to: group("users-eea-2"),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_moves_a_range_by_epoch_refuses_its_writes_in_the_old_group_and_survives_a_restart() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    let (_, certificate) = cluster.client_certificate("shard-test").unwrap();
    let client = cluster.dialer(&certificate).unwrap();
    let staying = user_in(0..QUARTER, "staying");
    let moving = user_in(QUARTER..HALF, "moving");

    // Epoch 1, as the topology proposes it: two equal ranges, in group-name order.
    let ClientResponse::Map(first) = call(
        &client,
        ClientRequest::Map {
            jurisdiction: "EEA".into(),
        },
    )
    .await
    else {
        unreachable!()
    };
    let epoch_one = RoutingMap {
        jurisdiction: "EEA".into(),
        epoch: 1,
        layout: Layout::Ranges(vec![
            RangeStart {
                start: 0,
                group: "users-eea-1".into(),
            },
            RangeStart {
                start: HALF,
                group: "users-eea-2".into(),
            },
        ]),
    };
    assert_eq!(first, epoch_one);
    let answer = call(&client, put(&staying, "profile", 1, 1)).await;
    assert!(
        matches!(&answer, ClientResponse::Done { group, .. } if group == "users-eea-1"),
        "{answer:?}"
    );

    // A range holding a record is not handed over: its records would be left behind (copying them is not
    // built). Nothing changes, the map stays at epoch 1.
    let answer = call(&client, put(&moving, "profile", 1, 2)).await;
    assert!(matches!(&answer, ClientResponse::Done { group, .. } if group == "users-eea-1"));
    let (_, steps) = plan_split(&cluster).await.unwrap();
    let refused = run(&cluster, &steps).await.unwrap_err();
    assert!(
        matches!(&refused, DirectoryError::RangesRefused { group: refusing, error: CommandError::OwnershipRefused { reason }, .. }
            if refusing.0 == "users-eea-1" && reason.contains(&moving)),
        "{refused}"
    );
    let ClientResponse::Map(still) = call(
        &client,
        ClientRequest::Map {
            jurisdiction: "EEA".into(),
        },
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(still, epoch_one);
    let delete = ClientRequest::RoutedCall {
        jurisdiction: "EEA".into(),
        user_id: moving.clone(),
        epoch: 1,
        op: ClientOp::Delete {
            record: "profile".into(),
            write: WriteId {
                client_id: 41,
                sequence: 3,
            },
        },
    };
    assert!(matches!(call(&client, delete).await, ClientResponse::Done { .. }));

    // The split: users-eea-1 commits its ranges of epoch 2, then the directory publishes epoch 2.
    let (next, steps) = plan_split(&cluster).await.unwrap();
    assert_eq!(next.epoch(), 2);
    assert_eq!(
        steps
            .iter()
            .map(|step| step.group().0.as_str())
            .collect::<Vec<_>>(),
        ["users-eea-1", "users-eea-2", "users-eea-1"],
        "the loser's ranges, the gainer's, then the map in the directory group (users-eea-1)"
    );
    run(&cluster, &steps).await.unwrap();
    // Again: every step is idempotent, so an interrupted change is finished by running it again.
    run(&cluster, &steps).await.unwrap();

    // A call routed by epoch 1 is told of epoch 2, by whichever node it reaches or the leader that node
    // names: a node that cached epoch 1 routes it to users-eea-1, whose leader refuses the user as moved,
    // learns epoch 2 and answers with it.
    for node in NODES {
        let mut answer = ask(&client, node, put(&moving, "profile", 1, 10 + node)).await;
        if let ClientResponse::NotLeader {
            leader: Some(leader), ..
        } = answer
        {
            answer = ask(&client, leader, put(&moving, "profile", 1, 10 + node)).await;
        }
        let ClientResponse::Moved { asked_epoch, map } = answer else {
            panic!("a call routed by epoch 1 for a moved user, asked of node {node}: {answer:?}")
        };
        assert_eq!((asked_epoch, map.epoch), (1, 2));
        assert_eq!(map.route(&moving), "users-eea-2");
        assert_eq!(map.route(&staying), "users-eea-1");
    }
    let answer = call(&client, put(&moving, "profile", 2, 20)).await;
    assert!(
        matches!(&answer, ClientResponse::Done { group, result: ClientResult::Written { .. } } if group == "users-eea-2"),
        "{answer:?}"
    );
    // The staying user's range did not move: epoch 2 still routes it to users-eea-1, its record there.
    let read = ClientRequest::RoutedCall {
        jurisdiction: "EEA".into(),
        user_id: staying.clone(),
        epoch: 2,
        op: ClientOp::Get {
            record: "profile".into(),
            consistency: Consistency::Linearizable,
        },
    };
    let answer = call(&client, read.clone()).await;
    assert!(
        matches!(&answer, ClientResponse::Done { group, result: ClientResult::Value { record: Some(_), .. } } if group == "users-eea-1"),
        "{answer:?}"
    );

    // A write that raced the cutover — routed to users-eea-1 by a node that still knew epoch 1 — reaches
    // its log after the ranges of epoch 2: refused where it is applied, and applied on no replica.
    let old = group("users-eea-1");
    let raced = Command::Put {
        write: WriteId {
            client_id: 42,
            sequence: 1,
        },
        key: RecordKey::new("EEA", moving.clone(), "raced"),
        value: b"must never be applied".to_vec(),
    };
    let leader = leader_of(&cluster, "users-eea-1").await;
    let response = cluster.nodes[&leader].host.write(&old, raced).await.unwrap();
    assert_eq!(
        response,
        Response::Rejected(CommandError::NotOwned {
            jurisdiction: "EEA".into(),
            epoch: 2,
            position: range_position(&moving),
        })
    );
    assert_old_group_refuses(&cluster, &moving, 1).await;

    // Every node stops; all start again from their disks: the map of epoch 2 is the published one, and
    // users-eea-1 still refuses the moved range.
    cluster.stop().await;
    drop(cluster);
    let cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    let (_, certificate) = cluster.client_certificate("shard-test").unwrap();
    let client = cluster.dialer(&certificate).unwrap();
    let ClientResponse::Map(after) = call(
        &client,
        ClientRequest::Map {
            jurisdiction: "EEA".into(),
        },
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(after, next.to_wire(), "the map of epoch 2 survives the restart");
    let answer = ask(&client, 1, put(&moving, "later", 1, 30)).await;
    assert!(
        matches!(&answer, ClientResponse::Moved { map, .. } if map.epoch == 2),
        "{answer:?}"
    );
    let read_moved = ClientRequest::RoutedCall {
        jurisdiction: "EEA".into(),
        user_id: moving.clone(),
        epoch: 2,
        op: ClientOp::Get {
            record: "profile".into(),
            consistency: Consistency::Linearizable,
        },
    };
    let answer = call(&client, read_moved).await;
    assert!(
        matches!(&answer, ClientResponse::Done { group, result: ClientResult::Value { record: Some(record), .. } }
            if group == "users-eea-2" && record.value == format!("{moving}/profile").into_bytes()),
        "the write acknowledged at epoch 2 is read back after the restart: {answer:?}"
    );
    assert_old_group_refuses(&cluster, &moving, 2).await;

    // Damage the stored map (one flipped bit, written through the directory group as any record is), and
    // start again: no node routes by it; each names the damage.
    let directory = group("users-eea-1");
    let leader = leader_of(&cluster, "users-eea-1").await;
    let host = &cluster.nodes[&leader].host;
    let stored = host
        .read(&directory, shard_map_key("EEA"), ReadConsistency::Linearizable)
        .await
        .unwrap()
        .record
        .unwrap();
    let mut damaged = stored.value.clone();
    damaged[7] ^= 0x01;
    let overwrite = Command::Put {
        write: WriteId {
            client_id: 44,
            sequence: 1,
        },
        key: shard_map_key("EEA"),
        value: damaged.clone(),
    };
    assert!(matches!(
        host.write(&directory, overwrite).await.unwrap(),
        Response::Written { .. }
    ));
    cluster.stop().await;
    drop(cluster);
    let cluster = start(dir.path());
    cluster.create_groups().await.unwrap();
    let (_, certificate) = cluster.client_certificate("shard-test").unwrap();
    let client = cluster.dialer(&certificate).unwrap();
    // Before anyone asks, every replica re-applies the log past the damage (a replica still behind it
    // would rightly serve the map it holds).
    for node in NODES {
        let host = &cluster.nodes[&NodeId(node)].host;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
        while host
            .read_local_copy(&directory, shard_map_key("EEA"))
            .await
            .unwrap()
            .is_none_or(|record| record.value != damaged)
        {
            assert!(
                tokio::time::Instant::now() < give_up,
                "node {node} never applied the damage"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for node in NODES {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match ask(
                &client,
                node,
                ClientRequest::Map {
                    jurisdiction: "EEA".into(),
                },
            )
            .await
            {
                ClientResponse::Unavailable { reason, .. } if reason.contains("damaged") => {
                    assert!(reason.contains("shard map of `EEA`"), "{reason}");
                    break;
                }
                other => {
                    assert!(
                        !matches!(other, ClientResponse::Map(_)),
                        "node {node} routes by a damaged map: {other:?}"
                    );
                    assert!(tokio::time::Instant::now() < give_up, "node {node}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let answer = ask(&client, 1, put(&staying, "profile", 2, 40)).await;
    assert!(
        matches!(&answer, ClientResponse::Unavailable { reason, .. } if reason.contains("damaged")),
        "{answer:?}"
    );
    cluster.stop().await;
}

/// users-eea-1 refuses `moving` on a linearizable read, and no replica of it holds the raced record: each
/// has applied a write proposed after the raced one (so the raced one's outcome is final there) and
/// holds nothing under its key.
async fn assert_old_group_refuses(cluster: &LocalCluster, moving: &str, marker_sequence: u64) {
    let old = group("users-eea-1");
    let leader = leader_of(cluster, "users-eea-1").await;
    let read = cluster.nodes[&leader]
        .host
        .read(
            &old,
            RecordKey::new("EEA", moving, "raced"),
            ReadConsistency::Linearizable,
        )
        .await;
    assert!(
        matches!(&read, Err(HostError::NotOwned { epoch: 2, .. })),
        "{read:?}"
    );
    let marker = RecordKey::new("EEA", "\u{0}marker", format!("after-{marker_sequence}"));
    let command = Command::Put {
        write: WriteId {
            client_id: 43,
            sequence: marker_sequence,
        },
        key: marker.clone(),
        value: b"after the raced write".to_vec(),
    };
    let written = cluster.nodes[&leader].host.write(&old, command).await.unwrap();
    assert!(matches!(written, Response::Written { .. }), "{written:?}");
    for id in NODES {
        let host = &cluster.nodes[&NodeId(id)].host;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while host
            .read_local_copy(&old, marker.clone())
            .await
            .unwrap()
            .is_none()
        {
            assert!(
                tokio::time::Instant::now() < give_up,
                "node {id} never applied the marker"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = host
            .read_local_copy(&old, RecordKey::new("EEA", moving, "raced"))
            .await
            .unwrap();
        assert_eq!(
            held, None,
            "node {id} applied a write for a range its group had given up"
        );
    }
}
