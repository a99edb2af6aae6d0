//! Three `domicile node` processes on loopback — Dublin A, Dublin B and Hamar, one EEA group — and
//! who leads it: shared by `tests/client_failover.rs` and the failover benchmark (`benches/failover.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const TOPOLOGY: &str = r#"
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
name = "users-eea"
jurisdiction = "EEA"
voters = 3
"#;

/// The defaults' election timeouts (0.5–1 s); no member is replaced while the test runs.
pub const RAFT: &str = "\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nrepair_down_after_ms = 600000\n";

/// The node `users-eea`'s replicas report as leader, among `admins`, waiting up to 30 s.
pub async fn leader(admins: &BTreeMap<u64, SocketAddr>) -> u64 {
    let http = super::http();
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        for (&id, admin) in admins {
            let Ok(response) = http.get(format!("http://{admin}/status")).send().await else {
                continue;
            };
            let Ok(status) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let leads = status["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|group| group["group"] == "users-eea" && group["leader"] == id);
            if leads {
                return id;
            }
        }
        assert!(Instant::now() < give_up, "users-eea elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node the survivors among `admins` report as `users-eea`'s leader, other than `dead`, and when one
/// first did (polled every 10 ms); `None` after `limit`.
pub async fn next_leader(
    admins: &BTreeMap<u64, SocketAddr>,
    dead: u64,
    limit: Duration,
) -> Option<(u64, Instant)> {
    let http = super::http();
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        for admin in admins.values() {
            let Ok(response) = http.get(format!("http://{admin}/status")).send().await else {
                continue;
            };
            let Ok(status) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let leader = status["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|group| group["group"] == "users-eea")
                .and_then(|group| group["leader"].as_u64());
            if let Some(leader) = leader.filter(|&leader| leader != dead) {
                return Some((leader, Instant::now()));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
