//! A jurisdiction's shard map changed through the admin endpoints, on real node processes: an operator
//! plans a split of `users-eu-1` and runs each step on the leader of its group (as `domicile shard split`
//! will); a client that learnt epoch 1 before the split writes to a user whose range moved and succeeds;
//! a node restarted from its disk plans from epoch 2; forged steps are refused with named errors.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{AdminHttps, NodeFiles, http, three_eu_sites, wait_ready};
use serde_json::{Value, json};
use wire::routing::range_position;

/// On [`common::three_eu_sites`].
const GROUPS: &str = r#"
[[group]]
name = "users-eu-1"
jurisdiction = "EU"
voters = 3

[[group]]
name = "users-eu-2"
jurisdiction = "EU"
voters = 3
"#;

const QUARTER: u64 = 1 << 62;
const HALF: u64 = 1 << 63;

/// The leader of `group` as `node` reports it.
async fn leader(node: &NodeFiles, group: &str) -> u64 {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = http().get(format!("http://{}/status", node.admin)).send().await
            && let Ok(status) = answer.json::<Value>().await
            && let Some(leader) = status["groups"]
                .as_array()
                .and_then(|groups| groups.iter().find(|view| view["group"] == group))
                .and_then(|view| view["leader"].as_u64())
        {
            return leader;
        }
        assert!(tokio::time::Instant::now() < give_up, "{group} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(admin: &AdminHttps, path: &str, body: &Value) -> (u16, Value) {
    let answer = admin
        .client
        .post(admin.url(path))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {path}: {error}"));
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn plan(dir: &std::path::Path, node: &NodeFiles, change: &Value) -> (u16, Value) {
    let admin = AdminHttps::new(dir, node, Some("operator-tests"));
    post(&admin, "/shard-map/EU/plan", change).await
}

/// Runs `step` on the leader of its group, following "not the leader" answers.
async fn run_step(dir: &std::path::Path, files: &[NodeFiles], step: &Value) -> (u16, Value) {
    let group = step
        .as_object()
        .and_then(|step| step.values().next())
        .and_then(|body| body.get("group").or_else(|| body.get("directory")))
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let id = leader(&files[0], &group).await;
        let admin = AdminHttps::new(dir, &files[id as usize - 1], Some("operator-tests"));
        let (status, answer) = post(&admin, "/shard-map/steps", step).await;
        if status == 409 && answer["leader"].is_u64() && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        return (status, answer);
    }
}

fn connect(dir: &std::path::Path, files: &[NodeFiles]) -> impl Future<Output = client::Client> {
    let endpoints: Vec<String> = files.iter().map(NodeFiles::endpoint).collect();
    let tls = client::ClientTls::from_dir(dir.join("certs").to_str().unwrap(), "tests").unwrap();
    async move {
        client::Client::builder()
            .endpoints(endpoints)
            .tls(tls)
            .default_jurisdiction("EU")
            .timeout(Duration::from_secs(15))
            .build()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_splits_a_range_through_the_admin_endpoints_and_a_stale_client_follows() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_eu_sites(dir.path(), "sharded", GROUPS);
    let mut processes: Vec<_> = files.iter().map(NodeFiles::start).collect();
    for node in &files {
        wait_ready(node).await;
    }
    let staying = (0..)
        .map(|n| format!("staying-{n}"))
        .find(|user| range_position(user) < QUARTER)
        .unwrap();
    let moving = (0..)
        .map(|n| format!("moving-{n}"))
        .find(|user| (QUARTER..HALF).contains(&range_position(user)))
        .unwrap();
    // This client learns epoch 1 now and keeps it until a node tells it otherwise.
    let client = connect(dir.path(), &files).await;
    client.put(&staying, "profile", b"before".to_vec()).await.unwrap();

    // Refused plans, by name: a group not fenced to the jurisdiction, a range that does not start there.
    let (status, answer) = plan(
        dir.path(),
        &files[0],
        &json!({"move": {"start": 0, "to": "users-us"}}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not fenced to `EU`"),
        "{answer}"
    );
    let (status, answer) = plan(
        dir.path(),
        &files[0],
        &json!({"move": {"start": 7, "to": "users-eu-2"}}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no range starts at 7"),
        "{answer}"
    );

    let split = json!({"split": {"at": QUARTER, "to": "users-eu-2"}});
    let (status, planned) = plan(dir.path(), &files[1], &split).await;
    assert_eq!(status, 200, "{planned}");
    assert_eq!(
        (planned["from_epoch"].as_u64(), planned["to_epoch"].as_u64()),
        (Some(1), Some(2))
    );
    let steps = planned["steps"].as_array().unwrap().clone();
    assert_eq!(steps.len(), 3, "{planned}");
    assert_eq!(steps[0]["set_ranges"]["group"], "users-eu-1");
    assert_eq!(steps[2]["publish"]["directory"], "users-eu-1");

    // A forged step is refused before it runs: ranges for a group of the topology under another
    // jurisdiction's name, a map skipping an epoch.
    let (status, answer) = run_step(
        dir.path(),
        &files,
        &json!({"set_ranges": {"group": "users-eu-1", "jurisdiction": "US", "epoch": 2, "ranges": [[0, 5]]}}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let mut skipping = steps[2].clone();
    skipping["publish"]["map"]["epoch"] = json!(5);
    let (status, answer) = run_step(dir.path(), &files, &skipping).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("at epoch 1, not 4"),
        "{answer}"
    );

    for step in &steps {
        let (status, answer) = run_step(dir.path(), &files, step).await;
        assert_eq!(status, 200, "{step}: {answer}");
    }

    // The client still routes by epoch 1: moved, it routes again and writes to users-eu-2.
    let revision = client.put(&moving, "profile", b"after".to_vec()).await.unwrap();
    let record = client.get(&moving, "profile").await.unwrap().unwrap();
    assert_eq!(
        (record.value.as_slice(), record.revision),
        (&b"after"[..], revision)
    );
    assert_eq!(
        client.get(&staying, "profile").await.unwrap().unwrap().value,
        b"before"
    );
    // Planned again anywhere, the change starts from epoch 2 now.
    let (status, again) = plan(
        dir.path(),
        &files[2],
        &json!({"split": {"at": HALF + 1, "to": "users-eu-1"}}),
    )
    .await;
    assert_eq!((status, again["from_epoch"].as_u64()), (200, Some(2)), "{again}");

    // Node 1 stops (SIGTERM) and starts again from its disk: it plans from epoch 2 as well.
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(processes[0].0.id() as libc::pid_t, libc::SIGTERM) };
    processes[0].0.wait().unwrap();
    processes[0] = files[0].start();
    wait_ready(&files[0]).await;
    let (status, again) = plan(
        dir.path(),
        &files[0],
        &json!({"split": {"at": HALF + 1, "to": "users-eu-1"}}),
    )
    .await;
    assert_eq!((status, again["from_epoch"].as_u64()), (200, Some(2)), "{again}");
    let fresh = connect(dir.path(), &files).await;
    assert_eq!(
        fresh.get(&moving, "profile").await.unwrap().unwrap().value,
        b"after"
    );
    drop(processes);
}
