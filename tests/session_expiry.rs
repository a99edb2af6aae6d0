//! Client sessions expire on real node processes: with a short `session_tick_ms`, the group's leader ticks
//! its session clock, and a session idle past the bound is forgotten and counted in
//! `domicile_sessions_expired_total`, while the record its write stored stays. The rules themselves are
//! tested in `storage/src/apply/session_expiry.rs` and `raft/tests/session_clock.rs`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{NodeFiles, http, three_eu_sites, wait_ready};

const GROUPS: &str = "[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 3\n";

/// The sessions the groups led by each node have expired, summed over the nodes.
async fn sessions_expired(files: &[NodeFiles]) -> f64 {
    let mut total = 0.0;
    for node in files {
        let Ok(answer) = http().get(format!("http://{}/metrics", node.admin)).send().await else {
            continue;
        };
        let text = answer.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|line| line.starts_with("domicile_sessions_expired_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_session_is_forgotten_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_eu_sites(dir.path(), "sessions", GROUPS);
    for node in &files {
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str("\n[raft]\nsession_tick_ms = 50\n");
        std::fs::write(&node.config, config).unwrap();
    }
    let _processes: Vec<_> = files.iter().map(NodeFiles::start).collect();
    for node in &files {
        wait_ready(node).await;
    }
    let certs = dir.path().join("certs");
    let client = client::Client::builder()
        .endpoints(files.iter().map(NodeFiles::endpoint))
        .tls(client::ClientTls::from_dir(certs.to_str().unwrap(), "tests").unwrap())
        .default_jurisdiction("EU")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    client.put("user-1", "profile", b"kept".to_vec()).await.unwrap();

    // 60 ticks of 50 ms and the sweep's: a few seconds; a minute is the bound on a loaded machine.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while sessions_expired(&files).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "no session expired within a minute of 50-ms ticks"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let record = client.get("user-1", "profile").await.unwrap();
    assert_eq!(record.map(|record| record.value), Some(b"kept".to_vec()));
    // A new write of the same client (a later sequence of a session it no longer has) is taken as new.
    client.put("user-1", "profile", b"after".to_vec()).await.unwrap();
    let record = client.get("user-1", "profile").await.unwrap();
    assert_eq!(record.map(|record| record.value), Some(b"after".to_vec()));
}
