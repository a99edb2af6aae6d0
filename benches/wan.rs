//! The WAN benchmark (issue 17 part 4): put latency against the physical limit, and failover time, on
//! `domicile node` processes in network namespaces with the multi-host suite's WAN shape
//! (`tests/common/netns.rs`, docs/testing.md).
//!
//! An EEA group led from Dublin A with voters in Dublin B (1.5 ms each way) and Hamar (30 ms), and an EU
//! group led from Dublin A whose other voters are both in Frankfurt (20 ms each way), each written by one
//! client in Dublin A, one put at a time (20 warm-up puts, then WAN_PUTS, default 300); against the
//! physical limit, the round trip to the nearest quorum member plus the median of 200 4-KiB fdatasyncs in
//! the run's directory. Then the failover time a client sees when the EEA leader's process is SIGKILLed
//! (WAN_FAILOVER_ROUNDS rounds, default 3; each call's deadline WAN_CALL_TIMEOUT_MS, default 2000;
//! WAN_PROMPT_ELECTIONS=0 runs the nodes without election prompts, for a before/after in one sitting;
//! DOMICILE_BIN=PATH runs that build of the node).
//! It prints; nothing is asserted on a duration.
//!
//! ```sh
//! sudo bash benches/wan.sh      # cargo bench --bench wan, bounded by timeout(1)
//! ```
//!
//! Needs root, iproute2, iptables and /dev/net/tun (DOMICILE_MULTIHOST=1, which the script sets); says why
//! and skips when it can't run. Everything it starts (namespaces, node processes by pid, the router's
//! threads) is removed when the run ends. Wall-clock time is what a benchmark measures, so this file
//! allows `Instant::now` and `sleep`.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{Cluster, Host, Place, RAFT, enabled, run_checked};

/// Four sites: an EEA group whose voters are Dublin A (leading), Dublin B and Hamar, and an EU group whose
/// voters are Dublin A (leading) and two nodes in Frankfurt.
const BENCH: &str = r#"
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

[[site]]
name = "frankfurt"
country = "DE"
nodes = [4, 6]

[[group]]
name = "near-eea"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-a"]

[group.current]
voters = [1, 2, 3]
leader = 1

[[group]]
name = "far-eu"
jurisdiction = "EU"
voters = 3
leader_preference = ["dublin-a"]

[group.current]
voters = [1, 4, 6]
leader = 1
"#;

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// The median of `rounds` 4 KiB writes each followed by fdatasync, in `dir`.
fn fdatasync_ms(dir: &Path, rounds: usize) -> f64 {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut file = File::create(&path).unwrap();
    let mut took: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&[7u8; 4096]).unwrap();
            file.sync_data().unwrap();
            started.elapsed()
        })
        .collect();
    took.sort_unstable();
    let _ = std::fs::remove_file(path);
    quantile(&took, 0.5)
}

/// Runs `work` on a thread inside network namespace `ns`, on a runtime of its own: every socket the
/// client library opens there belongs to the namespace.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let target = File::open(&path).unwrap();
        // SAFETY: setns(2) on a namespace file we hold open; it moves this thread only.
        assert_eq!(unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work())
    })
    .join()
    .unwrap()
}

async fn bench_client(certs: PathBuf, jurisdiction: &'static str, timeout: Duration) -> client::Client {
    let endpoints: Vec<String> = [1, 2, 3, 4, 6]
        .iter()
        .map(|id| format!("n{id}@10.77.0.{id}:7100"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let built = client::Client::builder()
            .endpoints(endpoints.clone())
            .tls(client::ClientTls::from_dir(&certs, "tests").unwrap())
            .default_jurisdiction(jurisdiction)
            .timeout(timeout)
            .build()
            .await;
        match built {
            Ok(client) => return client,
            Err(error) if Instant::now() < deadline => {
                eprintln!("wan bench: no client of {jurisdiction} yet: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(error) => panic!("no client of {jurisdiction}: {error}"),
        }
    }
}

/// Sequential puts through `client`: their latencies, sorted.
async fn put_latencies(client: &client::Client, warmup: usize, count: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(count);
    for round in 0..warmup + count {
        let started = Instant::now();
        client
            .put(&format!("bench-{}", round % 64), "value", b"{\"v\":1}".to_vec())
            .await
            .unwrap();
        if round >= warmup {
            took.push(started.elapsed());
        }
    }
    took.sort_unstable();
    took
}

fn main() {
    // Skipped, not failed, so `cargo bench` over the workspace still runs the others.
    if !enabled() {
        eprintln!("wan bench: skipped (see above); run it as root with: sudo bash benches/wan.sh");
        return;
    }
    let count: usize = std::env::var("WAN_PUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let hosts = vec![
        Host::at(1, "dublin-a", Place::DublinA),
        Host::at(2, "dublin-b", Place::DublinB),
        Host::at(3, "hamar", Place::Hamar),
        Host::at(4, "frankfurt", Place::Frankfurt),
        Host::at(6, "frankfurt", Place::Frankfurt),
    ];
    // WAN_PROMPT_ELECTIONS=0 runs the nodes without election prompts (`raft::prompt_election`), to
    // compare failovers with and without them in one sitting.
    let raft = match std::env::var("WAN_PROMPT_ELECTIONS").as_deref() {
        Ok("0") => format!("{RAFT}\nprompt_elections = false"),
        _ => RAFT.to_string(),
    };
    let cluster = Cluster::start("b", BENCH, &hosts, &raft);
    let status = cluster.wait_until_led(&["near-eea", "far-eu"]);
    for group in ["near-eea", "far-eu"] {
        assert_eq!(status["groups"][group]["leader"], 1, "{status}");
    }
    let sync = fdatasync_ms(cluster.path(), 200);
    let certs = cluster.path().join("certs");
    let client_ns = cluster.ns("c");
    let (near, far) = in_namespace(&client_ns, move || {
        Box::pin(async move {
            let near = bench_client(certs.clone(), "EEA", Duration::from_secs(10)).await;
            let far = bench_client(certs, "EU", Duration::from_secs(10)).await;
            (
                put_latencies(&near, 20, count).await,
                put_latencies(&far, 20, count).await,
            )
        })
    });
    println!("| group | nearest quorum member | limit (RTT + fdatasync) | put p50 | put p99 | puts |");
    println!("|---|---|---|---|---|---|");
    for (group, nearest, rtt, took) in [
        ("near-eea (Dublin A; Dublin B, Hamar)", "Dublin B", 3.0, &near),
        ("far-eu (Dublin A; Frankfurt ×2)", "Frankfurt", 40.0, &far),
    ] {
        println!(
            "| {group} | {nearest}, {rtt:.1} ms RTT | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            rtt + sync,
            quantile(took, 0.5),
            quantile(took, 0.99),
            took.len()
        );
    }
    println!("fdatasync (4 KiB, median of 200): {sync:.2} ms");

    // Failover as a client sees it: the EEA leader SIGKILLed, time to the next acknowledged put, with each
    // call's deadline (retries included) WAN_CALL_TIMEOUT_MS (default 2000).
    let call_timeout = Duration::from_millis(
        std::env::var("WAN_CALL_TIMEOUT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(2000),
    );
    let rounds: usize = std::env::var("WAN_FAILOVER_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let mut failovers = Vec::new();
    for round in 0..rounds {
        cluster.wait_until_led(&["near-eea", "far-eu"]);
        let status = cluster.status();
        let leader = status["groups"]["near-eea"]["leader"].as_u64().unwrap();
        let certs = cluster.path().join("certs");
        let pid = cluster.pid(leader);
        assert!(pid > 0, "n{leader} is not running");
        let (took, calls) = in_namespace(&client_ns, move || {
            Box::pin(async move {
                let client = bench_client(certs, "EEA", call_timeout).await;
                put_latencies(&client, 5, 1).await;
                // SAFETY: kill(2) of a node process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let killed = Instant::now();
                // The kill's wall-clock time, to set against the nodes' logs (an election's time).
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                println!(
                    "failover round {round}: SIGKILL at {:.3} s since the epoch",
                    wall.as_secs_f64()
                );
                let key = format!("failover-{round}");
                // Each failed call, as the client saw it: when it began and ended, and why.
                let mut calls = Vec::new();
                while killed.elapsed() < Duration::from_secs(120) {
                    let began = killed.elapsed();
                    match client.put(&key, "value", b"{\"v\":2}".to_vec()).await {
                        Ok(_) => return (killed.elapsed(), calls),
                        Err(error) => calls.push(format!(
                            "{}-{} ms: {error}",
                            began.as_millis(),
                            killed.elapsed().as_millis()
                        )),
                    }
                }
                panic!("no put acknowledged within 120 s of the SIGKILL: {calls:?}");
            })
        });
        println!(
            "failover round {round}: n{leader} SIGKILLed, next put acknowledged after {} ms",
            took.as_millis()
        );
        for call in calls {
            println!("failover round {round}: a call failed, {call}");
        }
        failovers.push(took);
        run_checked(Command::new("sh").arg(cluster.path().join(format!("start-{leader}.sh"))));
    }
    failovers.sort_unstable();
    println!(
        "failover ({rounds} rounds, calls' deadline {} ms): median {} ms, max {} ms; 2 x election timeout max = 2000 ms",
        call_timeout.as_millis(),
        failovers[rounds / 2].as_millis(),
        failovers[rounds - 1].as_millis()
    );
}
