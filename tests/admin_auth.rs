//! Who may change a cluster through its admin endpoints, on real node processes: every state-changing
//! request — each route the endpoint has, the drills' fault routes, and a route nobody has written yet —
//! is refused 401 without a certificate (plain HTTP from loopback included) and 403 under a client's or a
//! node's certificate, with a JSON error, a counter and an entry in the node's audit trail naming the
//! caller. The operator CLI with an operator certificate (`DOMICILE_CERTS`, `DOMICILE_OPERATOR`) moves a
//! leader and drains a node, and the trail names the operator. Reads stay open, over HTTPS and over plain
//! HTTP from loopback. A node whose admin endpoint would be plain HTTP beyond loopback refuses to start,
//! before it binds anything.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{
    AdminHttps, NodeFiles, THREE_EU_SITES, cluster_files, domicile, domicile_as_operator, http,
    three_eu_sites, wait_ready,
};
use serde_json::{Value, json};

/// On [`common::three_eu_sites`].
const GROUPS: &str = "[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 3\n";

/// Every kind of state-changing request, with a body the route would accept from an operator.
fn changes() -> Vec<(reqwest::Method, &'static str, Value)> {
    vec![
        (
            reqwest::Method::POST,
            "/groups/users-eu/learners",
            json!({"node": 2}),
        ),
        (reqwest::Method::POST, "/groups/users-eu/leader", json!({"to": 2})),
        (
            reqwest::Method::POST,
            "/groups/users-eu/steps",
            json!({"step": "transfer_leader", "to": 2}),
        ),
        (reqwest::Method::POST, "/drain", json!({})),
        (
            reqwest::Method::POST,
            "/faults/isolate",
            json!({"peers": "all", "duration_ms": 1000}),
        ),
        (reqwest::Method::POST, "/faults/heal", json!({})),
        (
            reqwest::Method::POST,
            "/shard-map/EU/plan",
            json!({"split": {"at": 1u64 << 62, "to": "users-eu"}}),
        ),
        (
            reqwest::Method::POST,
            "/shard-map/steps",
            json!({"set_ranges": {"group": "users-eu", "jurisdiction": "EU", "epoch": 2, "ranges": [[0, 5]]}}),
        ),
        // The gate stands before the routes: one added later is covered, and so is any method but GET.
        (reqwest::Method::POST, "/a/route/added/later", json!({})),
        (reqwest::Method::DELETE, "/status", json!({})),
    ]
}

/// The leader of `users-eu` as node 1 reports it, once it reports `wanted` (any leader if `None`).
async fn leader(node: &NodeFiles, wanted: impl Fn(u64) -> bool) -> u64 {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while tokio::time::Instant::now() < give_up {
        if let Ok(answer) = http().get(format!("http://{}/status", node.admin)).send().await
            && let Ok(status) = answer.json::<Value>().await
        {
            let leader = status["groups"][0]["leader"].as_u64();
            if let Some(leader) = leader.filter(|&leader| wanted(leader)) {
                return leader;
            }
            last = status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("users-eu never had the leader wanted; last status: {last}");
}

async fn send(client: &reqwest::Client, method: &reqwest::Method, url: &str, body: &Value) -> (u16, Value) {
    let answer = client
        .request(method.clone(), url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_certificate_changes_a_cluster_and_the_trail_names_who_asked() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_eu_sites(dir.path(), "guarded", GROUPS);
    let mut processes: Vec<_> = files.iter().map(NodeFiles::start).collect();
    for node in &files {
        wait_ready(node).await;
    }
    let first = &files[0];

    // Reads: open over HTTPS without a certificate, and over plain HTTP from loopback.
    let anonymous = AdminHttps::new(dir.path(), first, None);
    for path in ["/status", "/ready", "/metrics", "/topology"] {
        let answer = anonymous.client.get(anonymous.url(path)).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "GET {path} over HTTPS");
    }

    // Changes: refused, whoever asks without an operator certificate.
    let plain = http();
    let as_client = AdminHttps::new(dir.path(), first, Some("client-tests"));
    let as_node = AdminHttps::new(dir.path(), first, Some("node-2"));
    let changes = changes();
    for (method, path, body) in &changes {
        let plain_url = format!("http://{}{path}", first.admin);
        for (how, client, url) in [
            ("plain HTTP", &plain, plain_url),
            ("HTTPS, no certificate", &anonymous.client, anonymous.url(path)),
        ] {
            let (status, error) = send(client, method, &url, body).await;
            assert_eq!(status, 401, "{method} {path} over {how}: {error}");
            let message = error["error"].as_str().unwrap_or_default();
            assert!(
                message.contains("needs an operator certificate") && message.contains("certs operator"),
                "{method} {path} over {how}: {error}"
            );
        }
        for (who, caller) in [("client `tests`", &as_client), ("node 2", &as_node)] {
            let (status, error) = send(&caller.client, method, &caller.url(path), body).await;
            assert_eq!(status, 403, "{method} {path} as {who}: {error}");
            let message = error["error"].as_str().unwrap_or_default();
            assert!(
                message.contains("is not an operator"),
                "{method} {path} as {who}: {error}"
            );
        }
    }
    let metrics = anonymous
        .client
        .get(anonymous.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = changes.len() * 2;
    for reason in ["no_certificate", "not_operator"] {
        let line = format!("domicile_admin_requests_refused_total{{reason=\"{reason}\"}} {refused}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // The CLI without credentials: reads work on loopback, a change is refused with the reason.
    let admin = first.admin.to_string();
    let status = domicile(&["status", "--admin", &admin]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let current = leader(first, |_| true).await;
    let other = (1..=3).find(|&id| id != current).unwrap().to_string();
    let move_args = [
        "leader", "move", "--admin", &admin, "--group", "users-eu", "--to", &other,
    ];
    let refused_move = domicile(&move_args);
    assert_eq!(
        refused_move.status.code(),
        Some(1),
        "{}",
        text(&refused_move.stderr)
    );
    assert!(
        text(&refused_move.stdout).contains("needs an operator certificate"),
        "{}",
        text(&refused_move.stdout)
    );
    // A client certificate handed to the CLI as an operator's is caught before anything is sent.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(move_args)
        .env("DOMICILE_CERTS", dir.path().join("certs"))
        .env(
            "DOMICILE_OPERATOR_CERT",
            dir.path().join("certs/client-tests.pem"),
        )
        .env("DOMICILE_OPERATOR_KEY", dir.path().join("certs/client-tests.key"))
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        text(&wrong.stderr).contains("is not an operator certificate"),
        "{}",
        text(&wrong.stderr)
    );

    // The operator: over HTTPS with its certificate, the node's checked against the cluster CA.
    let moved = domicile_as_operator(dir.path(), &move_args);
    assert_eq!(
        moved.status.code(),
        Some(0),
        "{}{}",
        text(&moved.stdout),
        text(&moved.stderr)
    );
    let to: u64 = other.parse().unwrap();
    leader(first, |leader| leader == to).await;
    let status = domicile_as_operator(dir.path(), &["status", "--admin", &admin]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    // Drain node 1 (leading or not): its trail then holds an operator's request and its outcome.
    let drained = domicile_as_operator(dir.path(), &["node", "drain", "1", "--admin", &admin]);
    assert_eq!(
        drained.status.code(),
        Some(0),
        "{}{}",
        text(&drained.stdout),
        text(&drained.stderr)
    );
    leader(first, |leader| leader != 1).await;

    // Answered, so on disk.
    processes[0].sigkill();
    let trail = dir.path().join("data-1/audit");
    let exported = domicile(&["audit", "export", trail.to_str().unwrap(), "-o", "json"]);
    assert_eq!(exported.status.code(), Some(0));
    let entries: Vec<Value> = text(&exported.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let refusals: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["kind"] == "refused.admin")
        .map(|entry| &entry["event"]["AdminRefused"])
        .collect();
    // Every change refused above, and the CLI's move if node 1 led.
    assert!(refusals.len() >= changes.len() * 4, "{refusals:?}");
    for (caller, status) in [
        ("no certificate (plain HTTP)", 401),
        ("no certificate", 401),
        ("client `tests`", 403),
        ("node n2 at frankfurt (DE)", 403),
    ] {
        let requests: Vec<&str> = refusals
            .iter()
            .filter(|refusal| refusal["caller"] == caller && refusal["status"] == status)
            .map(|refusal| refusal["request"].as_str().unwrap())
            .collect();
        for (method, path, _) in &changes {
            let request = format!("{method} {path}");
            assert!(
                requests.contains(&request.as_str()),
                "{request} by {caller}: {requests:?}"
            );
        }
    }
    let drain = entries
        .iter()
        .position(|entry| {
            entry["kind"] == "admin.request" && entry["event"]["OperatorRequest"]["action"] == "drain"
        })
        .expect("the operator's drain request");
    let request = &entries[drain]["event"]["OperatorRequest"];
    assert_eq!(request["operator"], "tests", "{request}");
    assert!(
        request["remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{request}"
    );
    let outcome = entries[drain..]
        .iter()
        .find(|entry| entry["kind"] == "admin.outcome")
        .expect("the drain's outcome");
    assert_eq!(outcome["event"]["OperatorOutcome"]["action"]["operator"], "tests");
    assert_eq!(outcome["event"]["OperatorOutcome"]["ok"], true, "{outcome}");
    assert!(
        outcome["summary"]
            .as_str()
            .unwrap()
            .contains("by operator `tests`"),
        "{outcome}"
    );
    let verified = domicile(&[
        "audit",
        "verify",
        trail.to_str().unwrap(),
        "--ca",
        dir.path().join("certs/ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified.stdout));
    drop(processes);
}

#[test]
fn a_plain_http_admin_endpoint_beyond_loopback_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let topology = format!("{THREE_EU_SITES}\n{GROUPS}");
    let files = cluster_files(dir.path(), "guarded", &topology, &[(1, "dublin")]);
    // Hold the port on loopback: a node that bound 0.0.0.0 on it before checking would fail on the port
    // in use, with another message.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let config = std::fs::read_to_string(&files[0].config).unwrap();
    let plain_beyond = config.replace(
        &format!("admin = \"{}\"", files[0].admin),
        &format!("admin = \"0.0.0.0:{port}\"\nadmin_tls = false"),
    );
    assert_ne!(config, plain_beyond);
    std::fs::write(&files[0].config, plain_beyond).unwrap();
    let refused = domicile(&["node", "--config", files[0].config.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let error = text(&refused.stderr);
    assert!(
        error.contains(&format!(
            "admin = \"0.0.0.0:{port}\" is beyond loopback, and admin_tls = false"
        )) && error.contains("bind admin to 127.0.0.1"),
        "{error}"
    );
    assert!(!error.contains("in use"), "{error}");
    assert!(
        !dir.path().join("data-1").exists(),
        "the node refused before touching its data directory"
    );
    drop(held);
}

/// `admin_tls = false` on loopback: plain HTTP only, which answers reads and can authenticate no one, so
/// every change is refused; an HTTPS client finds no TLS there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_admin_endpoint_on_loopback_answers_reads_and_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_eu_sites(dir.path(), "plain", GROUPS);
    let node = &files[0];
    let config = std::fs::read_to_string(&node.config).unwrap();
    let plain = config.replace(
        &format!("admin = \"{}\"", node.admin),
        &format!("admin = \"{}\"\nadmin_tls = false", node.admin),
    );
    assert_ne!(config, plain);
    std::fs::write(&node.config, plain).unwrap();
    let _processes: Vec<_> = files.iter().map(NodeFiles::start).collect();
    wait_ready(node).await;
    let (status, error) = send(
        &http(),
        &reqwest::Method::POST,
        &format!("http://{}/drain", node.admin),
        &json!({}),
    )
    .await;
    assert_eq!(status, 401, "{error}");
    let operator = AdminHttps::new(dir.path(), node, Some("operator-tests"));
    let answer = operator.client.post(operator.url("/drain")).send().await;
    assert!(answer.is_err(), "no TLS on a plain endpoint: {answer:?}");
}
