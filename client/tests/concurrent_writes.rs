//! One `Client` shared by many tasks: concurrent writes must all succeed. The state machine deduplicates by
//! (client id, sequence) and refuses a sequence older than the last it applied for that id, so a client
//! that numbered concurrent writes from one counter would see some refused when they overtake each other
//! on the way; each concurrent call holds a write session of its own instead.

// A tokio program against real sockets: it spawns tokio tasks directly.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{client_of, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_one_client_all_succeed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let client = client_of(&cluster, Duration::from_secs(10)).await;
    let client = Arc::new(client);

    let (tasks, writes_per_task) = (64, 8);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            for write in 0..writes_per_task {
                let user = format!("user-{task}");
                let value = format!("{task}/{write}").into_bytes();
                client
                    .put(&user, &format!("r{write}"), value)
                    .await
                    .unwrap_or_else(|error| panic!("task {task}, write {write}: {error}"));
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    for task in 0..tasks {
        for write in 0..writes_per_task {
            let record = client
                .get(&format!("user-{task}"), &format!("r{write}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("task {task}, write {write} is missing"));
            assert_eq!(record.value, format!("{task}/{write}").into_bytes());
        }
    }
    cluster.stop().await;
}
