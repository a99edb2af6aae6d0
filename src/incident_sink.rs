//! Incidents pushed to a webhook as they happen (`[incidents]` in the node config).
//!
//! The audit trail is the source of truth and the spool. A task follows the trail as the writer syncs it
//! (`trail.rs`), picks out the entries that are incidents ([`is_incident`]), and POSTs each as JSON
//! (`payload.rs`) to the configured webhook, one at a time, in trail order. So an incident goes out only
//! once it is durable and signed, and the receiver can check it against `domicile audit export`.
//!
//! * **At least once.** The delivery cursor (`cursor.rs`, on disk, atomic, checksummed) moves past an
//!   incident only after the receiver answered 2xx. After a crash or restart the node sends again from
//!   the cursor: an incident may arrive twice, never not at all (short of the spool bound below).
//! * **An idempotency key per incident**, `n<node>-<sequence>-<entry hash>`, in the `Idempotency-Key`
//!   header and the body: a duplicate carries the key of the original, and no two incidents share one.
//! * **Retried with backoff.** A failed POST (no connection, a timeout, any status but 2xx, a redirect,
//!   which is never followed) is retried after a delay that doubles from `backoff_initial_ms` up to
//!   `backoff_max_ms`, with the upper half of each delay drawn at random, so nodes that lost the same
//!   receiver do not return to it in step.
//! * **A bounded spool.** While the receiver is away incidents stay in the trail on disk, and the sink
//!   keeps at most `spool_incidents_max` of them owed. Past that the oldest owed are given up into one
//!   gap notice (`backlog.rs`), sent first when the receiver is back, naming the range of the trail to
//!   fetch with `domicile audit export --from`; counted in `domicile_incidents_skipped_total`. The
//!   entries themselves are never lost: only their push is.
//! * **Off the node's path.** The task only reads files the audit writer has synced, on the blocking
//!   pool, and shares no lock with Raft or the writer but the writer's count of durable entries. A
//!   receiver that is down, slow or wrong costs the node nothing but this task's retries.
//!
//! An audit trail that can't be written (its write or sync failed; it takes no entries until the node
//! restarts) has no entry to push: the sink sends one `audit.write_failed` notice for it, from memory,
//! after what it owed.

mod backlog;
mod config;
mod cursor;
mod payload;
mod trail;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{AuditLog, Event};
use tokio::task::JoinHandle;

pub use config::{IncidentSinkConfig, RawIncidentSink};

use backlog::{Backlog, Head};
use cursor::Cursor;
use trail::TrailReader;

use crate::metrics::Metrics;
use crate::node::Node;

/// How often the sink looks for newly synced entries when it owes nothing.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// How long the sink waits before trying again to find its place in a trail it could not read.
const RESTART_EVERY: Duration = Duration::from_secs(10);

/// Entries read from the trail in one go (one call on the blocking pool).
const READ_ENTRIES_MAX: usize = 4_096;

/// While delivering a long backlog the cursor is persisted at least this often (and whenever the
/// backlog empties): a crash then sends again at most this much, with the same keys.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Whether an audit event is an incident, pushed to the webhook: what a monitor must hear about without
/// asking. By kind: every refusal (`refused.*`: the residency fence's on membership, egress and ingress,
/// and the admin endpoint's), every client call refused (`client_refused.*`), a failed purge
/// (`purge_failed`), and a group seen with a member or leader outside its jurisdiction (`group_observed`
/// with the fence's verdict `admitted: false`: a breach). Not incidents: the trail's opening, admitted
/// changes, observations the fence admits, completed purges, operators' requests and their outcomes (a
/// refusal behind one is its own `refused.*` entry) and reads served pseudonymised. The rule is on the
/// kind's name, so a refusal of a kind added later is an incident without a change here.
pub fn is_incident(event: &Event) -> bool {
    let kind = event.kind();
    match event {
        Event::GroupObserved(seen) => !seen.admitted,
        _ => kind.starts_with("refused.") || kind.starts_with("client_refused.") || kind == "purge_failed",
    }
}

/// Starts the sink if the node config has an `[incidents]` section.
pub fn spawn(node: &Arc<Node>) -> Option<JoinHandle<()>> {
    let config = node.config.incidents.clone()?;
    let sink = Sink {
        config,
        node: node.config.node.0,
        cluster: node.config.cluster.clone(),
        trail_dir: node.config.audit_dir.clone(),
        cursor_path: cursor::path_in(&node.config.data_dir),
        audit: node.audit.clone(),
        metrics: node.metrics.clone(),
    };
    Some(tokio::spawn(sink.run()))
}

struct Sink {
    config: IncidentSinkConfig,
    node: u64,
    cluster: String,
    trail_dir: PathBuf,
    cursor_path: PathBuf,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

/// The reading side, moved to the blocking pool and back for each read.
struct Reading {
    reader: TrailReader,
    backlog: Backlog,
    /// Why the trail could not be read further last time, logged once until it changes.
    stuck: Option<String>,
}

/// Where delivery stands between two POSTs.
struct Delivery {
    failures_in_row: u32,
    /// When the cursor was last written, and a later one not yet written.
    persisted: Instant,
    unpersisted: Option<Cursor>,
    trail_failure_sent: bool,
    random: fastrand::Rng,
}

impl Sink {
    async fn run(self) {
        let mut builder = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("domicile/", env!("CARGO_PKG_VERSION")));
        if let Some(cas) = &self.config.trusted_cas {
            builder = builder.tls_certs_only(cas.iter().cloned());
        }
        let http = match builder.build() {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(%error, "incident sink: can't build the HTTP client; incidents are not pushed");
                return;
            }
        };
        let mut reading = loop {
            match self.start().await {
                Some(reading) => break reading,
                None => tokio::time::sleep(RESTART_EVERY).await,
            }
        };
        tracing::info!(
            webhook = %self.config.webhook, from = reading.backlog.next_to_read(),
            "pushing incidents"
        );
        let mut delivery = Delivery {
            failures_in_row: 0,
            persisted: Instant::now(),
            unpersisted: None,
            trail_failure_sent: false,
            random: fastrand::Rng::with_seed(crate::node::unix_ms() ^ self.node.rotate_left(32)),
        };
        loop {
            reading = self.read_more(reading).await;
            self.metrics.incident_backlog.set(reading.backlog.len() as i64);
            let Some(body) = self.next_body(&reading, &mut delivery).await else {
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            };
            if delivery.failures_in_row > 0 {
                self.metrics.incident_delivery_retries.inc();
            }
            match self.post(&http, &body).await {
                Ok(()) => self.acknowledged(&mut reading, &mut delivery).await,
                Err(reason) => {
                    delivery.failures_in_row = delivery.failures_in_row.saturating_add(1);
                    self.metrics.incident_delivery_failures.inc();
                    let failures = delivery.failures_in_row;
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            webhook = %self.config.webhook, failures, %reason,
                            owed = reading.backlog.len(), "incident webhook failed; retrying"
                        );
                    }
                    tokio::time::sleep(backoff(&self.config, failures, &mut delivery.random)).await;
                }
            }
        }
    }

    /// What to POST next: the backlog's head, or, once nothing is owed, the notice of a trail that can
    /// no longer be written (once). With nothing to send, the cursor is brought up to date.
    async fn next_body(&self, reading: &Reading, delivery: &mut Delivery) -> Option<serde_json::Value> {
        let identity = self.audit.identity();
        match reading.backlog.head() {
            Some(Head::Incident(incident)) => Some(payload::incident(
                self.node,
                &self.cluster,
                identity,
                &incident.entry,
                &incident.hash,
            )),
            Some(Head::Gap(gap)) => Some(payload::gap(self.node, &self.cluster, identity, gap)),
            None => {
                if let Some(cursor) = delivery.unpersisted.take() {
                    self.persist(cursor).await;
                    delivery.persisted = Instant::now();
                }
                let failures = self.audit.failures();
                if failures == 0 || delivery.trail_failure_sent {
                    return None;
                }
                let durable = self.audit.durable_entries();
                Some(payload::trail_failed(
                    self.node,
                    &self.cluster,
                    identity,
                    durable,
                    failures,
                ))
            }
        }
    }

    /// The receiver answered 2xx: the head is delivered, and the cursor moves past it (written now if
    /// nothing more is owed or the last write is a second old).
    async fn acknowledged(&self, reading: &mut Reading, delivery: &mut Delivery) {
        if delivery.failures_in_row > 0 {
            tracing::info!(
                failures = delivery.failures_in_row,
                "incident webhook answers again"
            );
        }
        delivery.failures_in_row = 0;
        self.metrics.incidents_delivered.inc();
        if reading.backlog.is_empty() {
            // What was sent was the trail's failure notice.
            delivery.trail_failure_sent = true;
            return;
        }
        if matches!(reading.backlog.head(), Some(Head::Gap(_))) {
            self.metrics.incident_gaps.inc();
        }
        let cursor = reading.backlog.delivered();
        if reading.backlog.is_empty() || delivery.persisted.elapsed() >= PERSIST_EVERY {
            self.persist(cursor).await;
            delivery.persisted = Instant::now();
            delivery.unpersisted = None;
        } else {
            delivery.unpersisted = Some(cursor);
        }
        self.metrics.incident_backlog.set(reading.backlog.len() as i64);
    }

    /// The cursor from disk, checked against the trail, and a reader placed there.
    async fn start(&self) -> Option<Reading> {
        let cursor_path = self.cursor_path.clone();
        let trail_dir = self.trail_dir.clone();
        let bound = self.config.spool_incidents_max;
        let started = tokio::task::spawn_blocking(move || {
            let cursor = match cursor::load(&cursor_path) {
                Ok(cursor) => cursor.unwrap_or(Cursor::START),
                Err(error) => {
                    tracing::error!(%error, "incident cursor unreadable: pushing again from the trail's start");
                    Cursor::START
                }
            };
            let cursor = match check_cursor(&trail_dir, cursor) {
                Ok(cursor) => cursor,
                Err(error) => return Err(error),
            };
            let reader = TrailReader::starting_at(&trail_dir, cursor.next_sequence).map_err(|error| error.to_string())?;
            Ok(Reading {
                reader,
                backlog: Backlog::new(bound, cursor),
                stuck: None,
            })
        })
        .await;
        match started {
            Ok(Ok(reading)) => Some(reading),
            Ok(Err(error)) => {
                tracing::error!(%error, "incident sink can't read the audit trail; trying again in 10 s");
                None
            }
            Err(error) => {
                tracing::error!(%error, "incident sink failed to start");
                None
            }
        }
    }

    /// Reads newly synced entries into the backlog, on the blocking pool.
    async fn read_more(&self, mut reading: Reading) -> Reading {
        let durable_below = self.audit.durable_entries();
        if reading.reader.next_sequence() >= durable_below {
            return reading;
        }
        let metrics = self.metrics.clone();
        let read = tokio::task::spawn_blocking(move || {
            let Reading {
                reader,
                backlog,
                stuck,
            } = &mut reading;
            let outcome = reader.read(durable_below, READ_ENTRIES_MAX, |entry, hash| {
                let incident = is_incident(&entry.event);
                if backlog.read(entry, hash, incident) {
                    metrics.incidents_skipped.inc();
                }
            });
            let error = outcome.err().map(|error| error.to_string());
            if error.is_some() && error != *stuck {
                tracing::error!(
                    error = error.as_deref().unwrap_or_default(),
                    "incident sink: the audit trail can't be read past here (run `domicile audit verify`); \
                     trying again"
                );
            }
            *stuck = error;
            reading
        })
        .await;
        read.expect("the trail reader does not panic")
    }

    /// Writes the cursor, on the blocking pool; a failure is logged (the node sends again from the last
    /// cursor written: at least once still holds).
    async fn persist(&self, cursor: Cursor) {
        let path = self.cursor_path.clone();
        let stored = tokio::task::spawn_blocking(move || cursor::store(&path, cursor)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "can't write the incident cursor"),
            Err(error) => tracing::warn!(%error, "can't write the incident cursor"),
        }
    }

    /// One POST; `Ok` on 2xx.
    async fn post(&self, http: &reqwest::Client, body: &serde_json::Value) -> Result<(), String> {
        let key = body["idempotency_key"].as_str().unwrap_or_default();
        let answer = http
            .post(self.config.webhook.clone())
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = answer.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// Whether `cursor` belongs to the trail in `dir`: the entry at `cursor.next_sequence` must hold the hash
/// the cursor recorded. A cursor that does not (the audit directory was replaced or restored) is dropped
/// and delivery starts from the trail's beginning: more duplicates, nothing missed.
fn check_cursor(dir: &std::path::Path, cursor: Cursor) -> Result<Cursor, String> {
    if cursor == Cursor::START {
        return Ok(cursor);
    }
    let mut reader =
        TrailReader::starting_at(dir, cursor.next_sequence).map_err(|error| error.to_string())?;
    let mut found = None;
    reader
        .read(cursor.next_sequence + 1, 1, |entry, _| found = Some(entry))
        .map_err(|error| error.to_string())?;
    match found {
        Some(entry) if entry.sequence == cursor.next_sequence && entry.previous == cursor.previous => {
            Ok(cursor)
        }
        Some(_) | None => {
            tracing::error!(
                next_sequence = cursor.next_sequence,
                "the incident cursor does not match the audit trail: pushing again from the trail's start"
            );
            Ok(Cursor::START)
        }
    }
}

/// The delay before retry `failures` (1 after the first failure): doubling from `backoff_initial`, capped
/// at `backoff_max`, the upper half drawn at random.
fn backoff(config: &IncidentSinkConfig, failures: u32, random: &mut fastrand::Rng) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    let ceiling = config
        .backoff_initial
        .saturating_mul(1u32 << doublings.min(31))
        .min(config.backoff_max);
    let half = ceiling / 2;
    let jitter_ms = random.u64(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let config = IncidentSinkConfig {
            webhook: "http://127.0.0.1:9/x".parse().unwrap(),
            timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            spool_incidents_max: 10,
            trusted_cas: None,
        };
        let mut random = fastrand::Rng::with_seed(18);
        for (failures, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (40, 1_000)] {
            for _ in 0..50 {
                let delay = backoff(&config, failures, &mut random).as_millis() as u64;
                assert!(
                    (ceiling_ms / 2..=ceiling_ms).contains(&delay),
                    "failure {failures}: {delay} ms outside {}..={ceiling_ms}",
                    ceiling_ms / 2
                );
            }
        }
    }

    #[test]
    fn a_cursor_is_trusted_only_on_the_trail_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let log = trail::tests::trail(dir.path(), 2_048);
        let mut hashes = Vec::new();
        for number in 0..20 {
            log.append(trail::tests::failed_purge(number)).unwrap();
        }
        let mut reader = TrailReader::starting_at(dir.path(), 0).unwrap();
        reader
            .read(u64::MAX, usize::MAX, |_, hash| hashes.push(hash))
            .unwrap();
        assert_eq!(hashes.len(), 21);
        let at = |next_sequence: u64, previous: audit::Hash| Cursor {
            next_sequence,
            previous,
        };
        assert_eq!(check_cursor(dir.path(), Cursor::START), Ok(Cursor::START));
        for next in [1, 7, 20] {
            let cursor = at(next, hashes[next as usize - 1]);
            assert_eq!(check_cursor(dir.path(), cursor), Ok(cursor), "entry {next}");
        }
        assert_eq!(
            check_cursor(dir.path(), at(7, hashes[5])),
            Ok(Cursor::START),
            "another trail's cursor: from the start"
        );
        assert_eq!(
            check_cursor(dir.path(), at(40, hashes[20])),
            Ok(Cursor::START),
            "a cursor past the trail's end"
        );
    }

    /// The sink in-process, on a real trail, pushing to a real receiver on 127.0.0.1; the trail's
    /// directory is then removed, so its next rotation fails and poisons it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trail_that_can_no_longer_be_written_is_reported_after_what_was_owed() {
        use axum::extract::State;
        use axum::routing::post;
        use std::sync::Mutex;

        // As `main` does: the one crypto provider, for an HTTP client built with TLS support.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let trail_dir = dir.path().join("audit");
        let log = Arc::new(trail::tests::trail(&trail_dir, 2_048));
        log.append(trail::tests::failed_purge(0)).unwrap();
        let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/incidents",
                post(
                    |State(received): State<Arc<Mutex<Vec<serde_json::Value>>>>,
                     axum::Json(body): axum::Json<serde_json::Value>| async move {
                        received.lock().unwrap().push(body);
                        axum::http::StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(received.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let sink = Sink {
            config: IncidentSinkConfig {
                webhook: format!("http://{addr}/incidents").parse().unwrap(),
                timeout: Duration::from_secs(5),
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(200),
                spool_incidents_max: 10,
                trusted_cas: None,
            },
            node: 1,
            cluster: "test".into(),
            trail_dir: trail_dir.clone(),
            cursor_path: cursor::path_in(dir.path()),
            audit: log.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let task = tokio::spawn(sink.run());
        let wait_for = async |what: &str, count: usize| {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
            while received.lock().unwrap().len() < count {
                assert!(tokio::time::Instant::now() < give_up, "{what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        wait_for("the failed purge pushed", 1).await;

        std::fs::remove_dir_all(&trail_dir).unwrap();
        let mut number = 1;
        while log.append(trail::tests::failed_purge(number)).is_ok() {
            number += 1;
            assert!(number < 1_000, "a 2 KiB segment rotates within a few entries");
        }
        assert!(log.failures() > 0);
        wait_for("the trail's failure pushed", 2).await;
        let notice = received.lock().unwrap()[1].clone();
        assert_eq!(notice["type"], "audit.write_failed", "{notice}");
        let durable = log.durable_entries();
        assert_eq!(notice["durable_entries"], durable);
        assert_eq!(notice["idempotency_key"], format!("n1-trail-failed-{durable}"));
        task.abort();
        server.abort();
    }

    #[test]
    fn refusals_breaches_and_failed_purges_are_incidents_the_rest_not() {
        use audit::event::{Enforcement, Members, Observation, Refusal};
        let refusal = Event::Refused(Refusal {
            enforcement: Enforcement::Egress,
            group: "users-eu".into(),
            node: Some(9),
            site: Some("ashburn".into()),
            country: Some("US".into()),
            jurisdiction: "EU".into(),
            reason: "egress_outside_jurisdiction".into(),
            message: "not sent".into(),
        });
        assert!(is_incident(&refusal));
        let observed = |admitted| {
            Event::GroupObserved(Observation {
                group: "users-eu".into(),
                jurisdiction: "EU".into(),
                term: 2,
                leader: Some(1),
                members: Members::default(),
                admitted,
                outside: Vec::new(),
            })
        };
        assert!(is_incident(&observed(false)), "a breach");
        assert!(!is_incident(&observed(true)));
        assert!(is_incident(&Event::PurgeFailed {
            group: "users-eu".into(),
            reason: "disk".into()
        }));
        assert!(!is_incident(&Event::Opened {
            identity: "n1".into(),
            tail_cut_bytes: 0
        }));
    }
}
