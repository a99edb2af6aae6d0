//! What an orchestrator relies on, with the real binary: `GET /ready` answers 503 while a node's groups know
//! no leader and 200 once they do, and peers given by host name (as Kubernetes' headless services give
//! them) are resolved and reached.

// Real processes and sockets: the test waits on tokio's clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster_files;

/// Two sites, one group whose two voters must both be up to elect a leader.
const TOPOLOGY: &str = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n\
                        [[site]]\nname = \"dublin-b\"\ncountry = \"IE\"\nnodes = [2]\n\n\
                        [[group]]\nname = \"users-eea\"\njurisdiction = \"EEA\"\nvoters = 2\n";

/// `GET /ready`'s status code and body, or `None` while nothing listens.
async fn ready(admin: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let response = common::http()
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .ok()?;
    let code = response.status().as_u16();
    Some((code, response.json().await.ok()?))
}

/// Polls `GET /ready` until `accept` takes its answer, for at most 30 s.
async fn ready_until(
    admin: SocketAddr,
    accept: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ready(admin).await;
        if let Some((code, body)) = &answer
            && accept(*code, body)
        {
            return (*code, body.clone());
        }
        assert!(
            Instant::now() < deadline,
            "{admin}/ready never answered as expected; last: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_once_its_groups_know_a_leader_and_peers_may_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster_files(dir.path(), "ready", TOPOLOGY, &[(1, "dublin-a"), (2, "dublin-b")]);
    for node in &nodes {
        // Each peer by name, as a pod's DNS name would be given: the node resolves it.
        // The node's own listen and admin addresses stay IP addresses: only peers take names.
        let config = std::fs::read_to_string(&node.config).unwrap();
        let (own, peers) = config.split_at(config.find("[[peer]]").expect("a peer section"));
        let named = format!("{own}{}", peers.replace("\"127.0.0.1:", "\"localhost:"));
        assert!(
            named.contains("addr = \"localhost:") && named.contains("admin = \"localhost:"),
            "{named}"
        );
        std::fs::write(&node.config, named).unwrap();
    }

    let _first = nodes[0].start();
    let (code, body) = ready_until(nodes[0].admin, |_, _| true).await;
    assert_eq!(code, 503, "one voter of two elects no leader: {body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["groups"], 1);
    assert_eq!(body["without_leader"], serde_json::json!(["users-eea"]));

    let _second = nodes[1].start();
    for node in &nodes {
        let (_, body) = ready_until(node.admin, |code, _| code == 200).await;
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(body["without_leader"], serde_json::json!([]));
    }
    let status: serde_json::Value = common::http()
        .get(format!("http://{}/status", nodes[0].admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["peer_admins"]["2"],
        format!("localhost:{}", nodes[1].admin.port()),
        "the operator CLI follows the peer's admin name: {status}"
    );
}
