//! Incidents pushed to a webhook by a real node process, received by a real HTTP server each test starts
//! on 127.0.0.1. Incidents are made by asking the Dublin node, over its admin endpoint, to add the Ashburn
//! node to the EU group: refused — by the fence (403, a `refused.membership` incident) or, where the admin
//! endpoint asks for an operator's certificate, for want of one (401, `refused.admin`) — one incident in
//! the node's audit trail per request. What the receiver got is compared with `domicile audit export`: every incident
//! arrives with the key `n<node>-<sequence>-<hash>`, duplicates only ever carry the same key and body, a
//! receiver answering 500 is retried, a receiver down for a minute gets everything after in trail order,
//! a node killed while its receiver is down sends after its restart from its cursor (not again what was
//! acknowledged before), and a full spool gives up the oldest with one gap notice sent first.
//!
//! Waits are bounded (deadlines); nothing passes or fails on timing.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{KillOnDrop, NodeFiles, cluster_files, domicile};
use tokio::time::Instant;

const TOPOLOGY: &str = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n[[site]]\nname = \"ashburn\"\ncountry = \"US\"\nnodes = [9]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    header_key: String,
    body: serde_json::Value,
    /// Whether it answered 2xx.
    acknowledged: bool,
}

impl Received {
    fn key(&self) -> &str {
        self.body["idempotency_key"].as_str().unwrap_or_default()
    }
}

#[derive(Clone, Default)]
struct Inbox {
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests still to answer 500.
    failing: Arc<Mutex<usize>>,
}

impl Inbox {
    fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// What was acknowledged, first time each key was, in arrival order.
    fn acknowledged(&self) -> Vec<Received> {
        let mut seen = std::collections::BTreeSet::new();
        self.all()
            .into_iter()
            .filter(|received| received.acknowledged && seen.insert(received.key().to_string()))
            .collect()
    }
}

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: String) -> StatusCode {
    let failing = {
        let mut failing = inbox.failing.lock().unwrap();
        let fail = *failing > 0;
        *failing = failing.saturating_sub(1);
        fail
    };
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    inbox.received.lock().unwrap().push(Received {
        header_key: headers
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
        acknowledged: !failing,
    });
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A webhook receiver on 127.0.0.1, stopped (its port closed, its connections shut) by `stop`.
struct Receiver {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(addr: SocketAddr, inbox: &Inbox) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = axum::Router::new()
            .route("/incidents", post(receive))
            .with_state(inbox.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Receiver { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the receiver stops within 30 s")
            .unwrap();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The Dublin node's files, its config pushing incidents to `webhook` with `settings`.
fn dublin(dir: &std::path::Path, webhook: SocketAddr, settings: &str) -> NodeFiles {
    let mut files = cluster_files(dir, "incidents", TOPOLOGY, &[(1, "dublin-a"), (9, "ashburn")]);
    let dublin = files.remove(0);
    let mut config = std::fs::read_to_string(&dublin.config).unwrap();
    config.push_str(&format!(
        "\n[incidents]\nwebhook = \"http://{webhook}/incidents\"\n{settings}\n"
    ));
    std::fs::write(&dublin.config, config).unwrap();
    dublin
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut done: F) {
    let give_up = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < give_up, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for the admin endpoint, with ring as the process's crypto provider (as `main` has it:
/// reqwest's TLS support needs one chosen even for plain HTTP).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn ready(node: &NodeFiles) {
    let http = http();
    let url = format!("http://{}/ready", node.admin);
    wait_until("node 1 ready", Duration::from_secs(60), async || {
        let answer = http.get(&url).send().await;
        answer.is_ok_and(|answer| answer.status().is_success())
    })
    .await;
}

/// One refused request: one incident in the trail.
async fn refuse(node: &NodeFiles) {
    let answer = http()
        .post(format!("http://{}/groups/users-eu/learners", node.admin))
        .json(&serde_json::json!({ "node": 9 }))
        .send()
        .await
        .unwrap();
    assert!(
        [reqwest::StatusCode::FORBIDDEN, reqwest::StatusCode::UNAUTHORIZED].contains(&answer.status()),
        "refused: {}",
        answer.status()
    );
}

/// The node's metrics of the incident sink, by name without the `domicile_` prefix.
async fn sink_metrics(node: &NodeFiles) -> BTreeMap<String, f64> {
    let Ok(answer) = http().get(format!("http://{}/metrics", node.admin)).send().await else {
        return BTreeMap::new();
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("domicile_"))
        .filter(|line| line.starts_with("incident"))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn metric(node: &NodeFiles, name: &str) -> f64 {
    sink_metrics(node).await.get(name).copied().unwrap_or(-1.0)
}

/// The incidents in node 1's trail, as `(sequence, key, exported entry)`, in trail order.
fn trail_entries(dir: &std::path::Path) -> Vec<(u64, String, serde_json::Value)> {
    let trail = dir.join("data-1/audit");
    let exported = domicile(&["audit", "export", trail.to_str().unwrap(), "-o", "json"]);
    assert_eq!(exported.status.code(), Some(0));
    String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|entry| {
            let kind = entry["kind"].as_str().unwrap();
            kind.starts_with("refused.")
                || kind.starts_with("client_refused.")
                || kind == "purge_failed"
                || (kind == "group_observed" && entry["event"]["GroupObserved"]["admitted"] == false)
        })
        .map(|entry| {
            let sequence = entry["sequence"].as_u64().unwrap();
            let key = format!("n1-{sequence}-{}", entry["hash"].as_str().unwrap());
            (sequence, key, entry)
        })
        .collect()
}

fn trail_incidents(dir: &std::path::Path) -> Vec<(u64, String)> {
    trail_entries(dir)
        .into_iter()
        .map(|(sequence, key, _)| (sequence, key))
        .collect()
}

/// Every POST carried its key in the header and the body, and a key always came with the same body.
fn check_keys(inbox: &Inbox) {
    let mut bodies: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for received in inbox.all() {
        assert_eq!(received.header_key, received.key(), "{received:?}");
        assert!(!received.key().is_empty(), "{received:?}");
        let first = bodies
            .entry(received.key().to_string())
            .or_insert(received.body.clone());
        assert_eq!(
            *first, received.body,
            "a duplicate carries its original's key and body"
        );
    }
}

fn acknowledged_keys(inbox: &Inbox) -> Vec<String> {
    inbox
        .acknowledged()
        .iter()
        .map(|received| received.key().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_incident_arrives_with_its_key_and_a_failing_receiver_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let inbox = Inbox::default();
    *inbox.failing.lock().unwrap() = 3;
    let receiver = Receiver::start(webhook, &inbox).await;
    let node = dublin(
        dir.path(),
        webhook,
        "backoff_initial_ms = 50\nbackoff_max_ms = 400",
    );
    let _process = node.start();
    ready(&node).await;

    for _ in 0..5 {
        refuse(&node).await;
    }
    wait_until(
        "five incidents acknowledged",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() >= 5 && metric(&node, "incident_backlog").await == 0.0,
    )
    .await;

    let expected = trail_incidents(dir.path());
    assert_eq!(expected.len(), 5, "{expected:?}");
    let keys: Vec<String> = expected.iter().map(|(_, key)| key.clone()).collect();
    assert_eq!(acknowledged_keys(&inbox), keys, "every incident, in trail order");
    check_keys(&inbox);
    for (received, (sequence, _, exported)) in inbox.acknowledged().iter().zip(trail_entries(dir.path())) {
        let body = &received.body;
        assert_eq!(body["type"], "incident");
        assert_eq!(body["node"], 1);
        assert_eq!(body["cluster"], "incidents");
        assert_eq!(body["sequence"].as_u64(), Some(sequence));
        assert!(body["kind"].as_str().unwrap().starts_with("refused."), "{body}");
        for field in [
            "kind",
            "summary",
            "event",
            "hash",
            "previous",
            "time",
            "time_unix_ms",
        ] {
            assert_eq!(
                body[field], exported[field],
                "{field}: as the signed trail has it"
            );
        }
        assert!(
            body["identity"]
                .as_str()
                .unwrap()
                .starts_with("domicile://v1/node/1/")
        );
    }

    let failed: Vec<Received> = inbox
        .all()
        .into_iter()
        .filter(|received| !received.acknowledged)
        .collect();
    assert_eq!(failed.len(), 3, "three answers were 500");
    assert!(
        failed.iter().all(|received| received.key() == keys[0]),
        "the first incident was retried until acknowledged: {failed:?}"
    );
    let metrics = sink_metrics(&node).await;
    assert_eq!(metrics["incident_delivery_failures_total"], 3.0, "{metrics:?}");
    assert_eq!(metrics["incident_delivery_retries_total"], 3.0, "{metrics:?}");
    assert_eq!(metrics["incidents_delivered_total"], 5.0, "{metrics:?}");
    assert_eq!(metrics["incidents_skipped_total"], 0.0, "{metrics:?}");
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_minute_gets_everything_after_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let inbox = Inbox::default();
    let receiver = Receiver::start(webhook, &inbox).await;
    let node = dublin(
        dir.path(),
        webhook,
        "backoff_initial_ms = 100\nbackoff_max_ms = 2000",
    );
    let _process = node.start();
    ready(&node).await;
    refuse(&node).await;
    wait_until(
        "the first incident acknowledged",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() == 1,
    )
    .await;

    receiver.stop().await;
    let down_since = Instant::now();
    // Six incidents while the receiver is down, one every ten seconds.
    for round in 0..6u32 {
        tokio::time::sleep_until(down_since + Duration::from_secs(10) * round).await;
        refuse(&node).await;
    }
    tokio::time::sleep_until(down_since + Duration::from_secs(60)).await;
    let metrics = sink_metrics(&node).await;
    assert_eq!(metrics["incident_backlog"], 6.0, "all six owed: {metrics:?}");
    assert!(metrics["incident_delivery_failures_total"] > 0.0, "{metrics:?}");
    assert_eq!(inbox.acknowledged().len(), 1, "nothing arrived while down");

    let receiver = Receiver::start(webhook, &inbox).await;
    wait_until(
        "everything spooled delivered",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() >= 7,
    )
    .await;
    let expected: Vec<String> = trail_incidents(dir.path())
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    assert_eq!(expected.len(), 7);
    assert_eq!(acknowledged_keys(&inbox), expected, "all of them, in trail order");
    check_keys(&inbox);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_its_receiver_is_down_sends_after_restart_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let inbox = Inbox::default();
    let receiver = Receiver::start(webhook, &inbox).await;
    let node = dublin(
        dir.path(),
        webhook,
        "backoff_initial_ms = 100\nbackoff_max_ms = 1000",
    );
    let mut process: KillOnDrop = node.start();
    ready(&node).await;
    refuse(&node).await;
    refuse(&node).await;
    wait_until(
        "two acknowledged, the cursor written",
        Duration::from_secs(60),
        async || {
            metric(&node, "incidents_delivered_total").await == 2.0
                && metric(&node, "incident_backlog").await == 0.0
        },
    )
    .await;
    let before = inbox.all().len();

    receiver.stop().await;
    for _ in 0..3 {
        refuse(&node).await;
    }
    wait_until("three owed", Duration::from_secs(60), async || {
        metric(&node, "incident_backlog").await == 3.0
    })
    .await;
    process.sigkill();
    let _process = node.start();
    ready(&node).await;
    let receiver = Receiver::start(webhook, &inbox).await;
    wait_until(
        "the three delivered after the restart",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() >= 5,
    )
    .await;

    let expected: Vec<String> = trail_incidents(dir.path())
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    assert_eq!(expected.len(), 5);
    assert_eq!(acknowledged_keys(&inbox), expected);
    let after_restart: Vec<String> = inbox.all()[before..]
        .iter()
        .map(|received| received.key().to_string())
        .collect();
    assert!(
        after_restart.iter().all(|key| expected[2..].contains(key)),
        "what was acknowledged before the crash is not sent again: {after_restart:?}"
    );
    check_keys(&inbox);
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_gives_up_the_oldest_with_one_gap_notice_sent_first() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let inbox = Inbox::default();
    let node = dublin(
        dir.path(),
        webhook,
        "backoff_initial_ms = 100\nbackoff_max_ms = 1000\nspool_incidents_max = 2",
    );
    let _process = node.start();
    ready(&node).await;
    for _ in 0..5 {
        refuse(&node).await;
    }
    wait_until("three skipped, two owed", Duration::from_secs(60), async || {
        let metrics = sink_metrics(&node).await;
        metrics.get("incidents_skipped_total") == Some(&3.0) && metrics.get("incident_backlog") == Some(&2.0)
    })
    .await;

    let receiver = Receiver::start(webhook, &inbox).await;
    wait_until(
        "the gap notice and the two",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() >= 3,
    )
    .await;
    let incidents = trail_incidents(dir.path());
    assert_eq!(incidents.len(), 5);
    let acknowledged = inbox.acknowledged();
    let gap = &acknowledged[0].body;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["first_sequence"].as_u64(), Some(incidents[0].0));
    assert_eq!(gap["last_sequence"].as_u64(), Some(incidents[2].0));
    assert_eq!(gap["skipped_incidents"], 3);
    assert_eq!(
        gap["idempotency_key"],
        format!("n1-gap-{}-{}", incidents[0].0, incidents[2].0)
    );
    let rest: Vec<String> = acknowledged[1..]
        .iter()
        .map(|received| received.key().to_string())
        .collect();
    assert_eq!(rest, [incidents[3].1.clone(), incidents[4].1.clone()]);
    check_keys(&inbox);
    wait_until("the gap counted", Duration::from_secs(30), async || {
        metric(&node, "incident_gaps_total").await == 1.0
    })
    .await;
    receiver.stop().await;
}

/// A certificate for 127.0.0.1 signed by a CA of its own: `(CA certificate PEM, server TLS config)`.
fn receiver_tls(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// An HTTPS receiver on `addr` with `tls`, until the returned task is aborted.
async fn https_receiver(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    inbox: &Inbox,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = axum::Router::new()
        .route("/incidents", post(receive))
        .with_state(inbox.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                // A handshake the node refuses (an impostor's certificate) ends here.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_gets_incidents_only_from_behind_a_certificate_of_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = free_port();
    let (monitor_ca, monitor_tls) = receiver_tls("monitor");
    let (_, impostor_tls) = receiver_tls("impostor");
    std::fs::write(dir.path().join("monitor-ca.pem"), monitor_ca).unwrap();
    let inbox = Inbox::default();
    let impostor = https_receiver(webhook, impostor_tls, &inbox).await;
    let node = dublin(
        dir.path(),
        webhook,
        "backoff_initial_ms = 50\nbackoff_max_ms = 400\nca = \"monitor-ca.pem\"",
    );
    let mut config = std::fs::read_to_string(&node.config).unwrap();
    config = config.replace("webhook = \"http://", "webhook = \"https://");
    std::fs::write(&node.config, config).unwrap();
    let _process = node.start();
    ready(&node).await;
    refuse(&node).await;
    refuse(&node).await;
    wait_until(
        "the impostor's certificate refused twice",
        Duration::from_secs(60),
        async || metric(&node, "incident_delivery_failures_total").await >= 2.0,
    )
    .await;
    assert!(
        inbox.all().is_empty(),
        "nothing reached a receiver the node can't trust"
    );
    impostor.abort();
    let _ = impostor.await;

    let monitor = https_receiver(webhook, monitor_tls, &inbox).await;
    wait_until(
        "both acknowledged over TLS",
        Duration::from_secs(60),
        async || inbox.acknowledged().len() >= 2 && metric(&node, "incident_backlog").await == 0.0,
    )
    .await;
    let expected: Vec<String> = trail_incidents(dir.path())
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(acknowledged_keys(&inbox), expected);
    check_keys(&inbox);
    monitor.abort();
}
