//! Round trips on real node processes (issue #17 part 4): a group's Raft timing comes from the round
//! trips the topology declares (`[[round_trip]]`), not the guess from countries, and each node measures
//! the round trip to every peer from its QUIC connections and says which members of its groups are
//! farther than their timing covers — in `status` and in its metrics. Loopback is never farther than any
//! timing covers; the judgement itself is unit-tested in `src/round_trip_watch.rs`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{NodeFiles, cluster_files, http};
use serde_json::Value;

/// Three EU sites, declared 200 ms apart: the group's heartbeat is stretched to two round trips (400 ms),
/// so its timing covers 200 ms. The country guess for three European countries would give 80.
const DECLARED: &str = "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1]\n\n[[site]]\nname = \"frankfurt\"\ncountry = \"DE\"\nnodes = [2]\n\n[[site]]\nname = \"paris\"\ncountry = \"FR\"\nnodes = [3]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 3\n\n[[round_trip]]\nsites = [\"dublin\", \"frankfurt\"]\nms = 200\n\n[[round_trip]]\nsites = [\"dublin\", \"paris\"]\nms = 200\n\n[[round_trip]]\nsites = [\"paris\", \"frankfurt\"]\nms = 200\n";

const NODES: &[(u64, &str)] = &[(1, "dublin"), (2, "frankfurt"), (3, "paris")];

/// Node `node`'s status once it reports a round trip to both peers, and its metrics then.
async fn measured(node: &NodeFiles) -> (Value, String) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    while tokio::time::Instant::now() < give_up {
        if let Ok(answer) = http().get(format!("http://{}/status", node.admin)).send().await
            && let Ok(status) = answer.json::<Value>().await
        {
            let peers = status["round_trips"].as_array().map_or(0, Vec::len);
            let led = status["groups"][0]["leader"].as_u64().is_some();
            if peers == 2 && led {
                let metrics = http()
                    .get(format!("http://{}/metrics", node.admin))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                return (status, metrics);
            }
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("n{} never measured both peers; last status: {last}", node.id);
}

fn metric(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_round_trips_time_the_group_and_measured_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = cluster_files(dir.path(), "declared", DECLARED, NODES);
    let _processes: Vec<_> = files.iter().map(NodeFiles::start).collect();

    let (status, metrics) = measured(&files[0]).await;
    let peers = status["round_trips"].as_array().unwrap();
    for (peer, site) in [(2, "frankfurt"), (3, "paris")] {
        let entry = peers
            .iter()
            .find(|entry| entry["node"] == peer)
            .unwrap_or_else(|| panic!("no round trip to n{peer}: {status}"));
        assert_eq!(entry["site"], site, "{status}");
        assert!(entry["round_trip_ms"].as_f64().unwrap() > 0.0, "{status}");
        let seconds = metric(
            &metrics,
            &format!("domicile_peer_round_trip_seconds{{peer=\"n{peer}\",site=\"{site}\"}}"),
        );
        assert!(seconds > 0.0, "{metrics}");
    }
    // The timing is the declared one: 200 ms covered, not the 80 ms the country guess would give.
    let covered = metric(
        &metrics,
        "domicile_group_covered_round_trip_seconds{group=\"users-eu\",jurisdiction=\"EU\"}",
    );
    assert_eq!(covered, 0.2, "{metrics}");
    // Loopback is well inside it.
    let uncovered = metric(
        &metrics,
        "domicile_group_round_trips_uncovered{group=\"users-eu\",jurisdiction=\"EU\"}",
    );
    assert_eq!(uncovered, 0.0, "{metrics}");
    assert_eq!(
        status["round_trips_uncovered"],
        Value::Array(Vec::new()),
        "{status}"
    );
}
