use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, IntoFuture};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use link::{Dialer, QuicError};
use tokio::time::Instant;
use wire::client::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency, Envelope, EnvelopeResponse,
};
use wire::record::{CommandError, Record, WriteId};
use wire::routing::RoutingMap;

use crate::{ClientBuilder, ClientError};

/// A connection to a Domicile cluster. Cheap to share (`Arc<Client>`); calls may run concurrently.
///
/// How a call finds a live node (as etcd's and TiKV's clients do): each attempt has a bound shorter than
/// the call's deadline; a connection that hears nothing from its node for the liveness timeout is lost,
/// and a call waiting on it moves on at once instead of waiting out its attempt; a node found down (its
/// connection lost, a dial failed, an attempt unanswered) is not asked again, nor followed when another
/// node names it leader, until a probe in the background reaches it again; and a call keeps trying the
/// other nodes, with backoff, until its deadline, not until a count of attempts runs out.
pub struct Client {
    dialer: Arc<Dialer>,
    /// The nodes to ask, by node id.
    nodes: Vec<u64>,
    default_jurisdiction: String,
    timeout: Duration,
    attempts_max: u32,
    /// Write sessions not in use by a call (see [`Session`]).
    sessions: Mutex<Vec<Session>>,
    /// Each jurisdiction's published shard map, learnt on first use and replaced by later epochs that
    /// nodes answer with (`Moved`).
    shard_maps: Mutex<BTreeMap<String, Arc<RoutingMap>>>,
    /// The last known leader of each group.
    leaders: Mutex<BTreeMap<String, u64>>,
    /// Nodes that answered that they hold no replica of a group, by group: a call without a known leader
    /// asks the others first, so it does not spend a round trip per such node on every rotation (two
    /// Frankfurt nodes, 40 ms each, on the WAN bench's EEA failover). Taken back when the node answers
    /// for the group as a replica (served, or named a leader).
    not_hosting: Mutex<BTreeMap<String, BTreeSet<u64>>>,
    /// Round-robin start for calls without a known leader.
    next_node: AtomicU64,
    /// Nodes found down, until a probe reaches them again: skipped while others remain.
    down: Arc<Mutex<BTreeMap<u64, Down>>>,
    /// Draws the jitter of each pause between retries ([`backoff_pause`]).
    jitter: Mutex<fastrand::Rng>,
}

/// A node found down: when its last probe began, and whether one is running.
struct Down {
    probed: Instant,
    probing: bool,
}

/// A deduplication identity: the state machine remembers, per client id, the last sequence it applied and
/// its response, and refuses a sequence older than that one. Concurrent calls through one `Client` would
/// reach the state machine out of order, so each write call holds a session of its own while it runs — a
/// session's sequences are then issued and applied one at a time, in order — and a retry of the call
/// resends the same id and sequence, so it is applied once. Sessions are pooled: a client makes as many as
/// it has had concurrent writes, each with a random id.
struct Session {
    client_id: u64,
    sequence: u64,
}

impl Session {
    fn new() -> Session {
        // `RandomState::new()` is keyed afresh each time: ids differ across sessions, clients and processes.
        let client_id = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Session {
            client_id,
            sequence: 0,
        }
    }
}

/// Returns its session to the pool when the call ends, also when the call's future is dropped: a request
/// still in flight then carries an older sequence than any later use of the session, so if it arrives
/// after one, the state machine refuses it rather than applying it out of order.
struct SessionGuard<'a> {
    client: &'a Client,
    session: Option<Session>,
}

impl SessionGuard<'_> {
    fn next_write(&mut self) -> WriteId {
        let session = self
            .session
            .as_mut()
            .expect("a guard holds its session until dropped");
        session.sequence += 1;
        WriteId {
            client_id: session.client_id,
            sequence: session.sequence,
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Ok(mut pool) = self.client.sessions.lock()
        {
            pool.push(session);
        }
    }
}

/// How often a node found down is probed (a fresh QUIC handshake, in the background). A probe of a node
/// that does not answer fails after the liveness timeout, so a dead node costs calls nothing.
const PROBE_EVERY: Duration = Duration::from_millis(300);

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Waits out [`backoff_pause`] before retry number `attempt`, or until the deadline if that comes first.
    async fn backoff(&self, attempt: u32, deadline: Instant) {
        let pause = backoff_pause(attempt, &mut self.jitter.lock().expect("backoff jitter lock"));
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
    }

    pub(crate) async fn connect(
        dialer: Arc<Dialer>,
        nodes: Vec<u64>,
        default_jurisdiction: String,
        timeout: Duration,
        attempts_max: u32,
        jitter: fastrand::Rng,
    ) -> Result<Client, ClientError> {
        let client = Client {
            dialer,
            nodes,
            default_jurisdiction,
            timeout,
            attempts_max,
            sessions: Mutex::new(Vec::new()),
            shard_maps: Mutex::new(BTreeMap::new()),
            leaders: Mutex::new(BTreeMap::new()),
            not_hosting: Mutex::new(BTreeMap::new()),
            next_node: AtomicU64::new(0),
            down: Arc::new(Mutex::new(BTreeMap::new())),
            jitter: Mutex::new(jitter),
        };
        // Learn the default jurisdiction's map now, so a client that can reach no node fails here; a
        // jurisdiction with no group is only an error for the calls that use it.
        let deadline = Instant::now() + client.timeout;
        let default_jurisdiction = client.default_jurisdiction.clone();
        match client.shard_map(&default_jurisdiction, deadline).await {
            Ok(_) | Err(ClientError::Residency(_)) => Ok(client),
            Err(error) => Err(error),
        }
    }

    /// Calls in another jurisdiction than the default one.
    pub fn in_jurisdiction<'a>(&'a self, jurisdiction: &'a str) -> Scoped<'a> {
        Scoped {
            client: self,
            jurisdiction,
        }
    }

    fn scoped(&self) -> Scoped<'_> {
        Scoped {
            client: self,
            jurisdiction: &self.default_jurisdiction,
        }
    }

    /// Writes `value` as `record` of `user_id`; returns the record's new revision.
    pub async fn put(&self, user_id: &str, record: &str, value: Vec<u8>) -> Result<u64, ClientError> {
        self.scoped().put(user_id, record, value).await
    }

    /// Reads a record, linearizably unless `.stale()` is asked for.
    pub fn get<'a>(&'a self, user_id: &'a str, record: &'a str) -> Get<'a> {
        Get {
            scoped: self.scoped(),
            user_id,
            record,
            consistency: Consistency::Linearizable,
        }
    }

    /// Deletes a record; returns the revision it had, if it existed.
    pub async fn delete(&self, user_id: &str, record: &str) -> Result<Option<u64>, ClientError> {
        self.scoped().delete(user_id, record).await
    }

    /// Writes only if the record is at `expected_revision` (`None`: absent); [`ClientError::Conflict`] if not.
    pub async fn compare_and_set(
        &self,
        user_id: &str,
        record: &str,
        expected_revision: Option<u64>,
        value: Vec<u8>,
    ) -> Result<u64, ClientError> {
        self.scoped()
            .compare_and_set(user_id, record, expected_revision, value)
            .await
    }

    /// Every record of one user, by record name.
    pub async fn scan_user(&self, user_id: &str) -> Result<Vec<(String, Record)>, ClientError> {
        self.scoped().scan_user(user_id).await
    }

    /// A write session for one call, held until the call ends (see [`Session`]).
    fn session(&self) -> SessionGuard<'_> {
        let session = self
            .sessions
            .lock()
            .expect("session pool lock")
            .pop()
            .unwrap_or_else(Session::new);
        SessionGuard {
            client: self,
            session: Some(session),
        }
    }

    /// The published shard map of `jurisdiction`: cached, or asked of the nodes in turn until one inside
    /// the jurisdiction answers (nodes outside it hold none of its routing metadata and say so).
    async fn shard_map(&self, jurisdiction: &str, deadline: Instant) -> Result<Arc<RoutingMap>, ClientError> {
        if let Some(map) = self.shard_maps.lock().expect("shard map lock").get(jurisdiction) {
            return Ok(map.clone());
        }
        let mut last_error = String::from("no node answered");
        for attempt in 0..self.attempts_max {
            // Nodes found down last: each costs an attempt's bound.
            let mut nodes = self.nodes.clone();
            nodes.sort_by_key(|&node| self.is_down(node));
            for node in nodes {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ClientError::Timeout {
                        deadline: self.timeout,
                        last_error,
                    });
                }
                let request = Envelope::Client(ClientRequest::Map {
                    jurisdiction: jurisdiction.to_string(),
                });
                let attempt_limit = self.attempt_limit(remaining);
                let reply = tokio::time::timeout(
                    attempt_limit,
                    self.dialer.request::<_, EnvelopeResponse>(node, &request),
                )
                .await;
                self.note_reply(node, &reply, attempt_limit < self.attempt_bound());
                match reply {
                    Ok(Ok(EnvelopeResponse::Client(ClientResponse::Map(map)))) => {
                        match self.learn(jurisdiction, map) {
                            Ok(map) => return Ok(map),
                            Err(reason) => last_error = format!("n{node} answered {reason}"),
                        }
                    }
                    Ok(Ok(EnvelopeResponse::Client(ClientResponse::Residency { reason }))) => {
                        return Err(ClientError::Residency(reason));
                    }
                    Ok(Ok(EnvelopeResponse::Client(ClientResponse::Invalid { reason }))) => {
                        return Err(ClientError::Invalid(reason));
                    }
                    Ok(Ok(EnvelopeResponse::Client(ClientResponse::Forbidden {
                        caller,
                        jurisdiction,
                        reason,
                    }))) => {
                        return Err(ClientError::Forbidden {
                            caller,
                            jurisdiction,
                            reason,
                        });
                    }
                    Ok(Ok(other)) => last_error = format!("n{node} answered {other:?}"),
                    Ok(Err(error)) => last_error = error.to_string(),
                    Err(_) => last_error = format!("n{node} did not answer in time"),
                }
            }
            self.backoff(attempt, deadline).await;
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout {
                deadline: self.timeout,
                last_error,
            });
        }
        Err(ClientError::Unavailable(last_error))
    }

    /// One call, routed to the user's group and retried (safely) until it succeeds, fails for good, or the
    /// deadline passes.
    async fn call(
        &self,
        jurisdiction: &str,
        user_id: &str,
        op: ClientOp,
    ) -> Result<ClientResult, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let (mut group, mut epoch) = self.route(jurisdiction, user_id, deadline).await?;
        let mut last_error = String::from("no attempt made");
        // Nodes that said they hold no replica since the last pause: a routing miss is not a busy
        // group, so the next node is asked at once, and the call pauses only once every node missed.
        let mut misses = 0;
        // Whether the last attempt followed a hint: a second hint in a row (two followers each naming
        // the other, stale) waits out a backoff like any other miss, so no call spins until its deadline.
        let mut redirected = false;
        let mut pauses = 0;
        for _ in 0..self.attempts_max {
            let following = std::mem::take(&mut redirected);
            // Whether this attempt found the group electing: a replica named no leader, or one found down.
            let mut electing = false;
            let node = self.target(&group);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let request = Envelope::Client(ClientRequest::RoutedCall {
                jurisdiction: jurisdiction.to_string(),
                user_id: user_id.to_string(),
                epoch,
                op: op.clone(),
            });
            let attempt_limit = self.attempt_limit(remaining);
            let cut_short = attempt_limit < self.attempt_bound();
            let reply = tokio::time::timeout(
                attempt_limit,
                self.dialer.request::<_, EnvelopeResponse>(node, &request),
            )
            .await;
            self.note_reply(node, &reply, cut_short);
            match reply {
                Ok(Ok(EnvelopeResponse::Client(response))) => match response {
                    ClientResponse::Done { result, .. } => {
                        self.note_hosting(&group, node, true);
                        // A node that served a write or a linearizable read led the group just now: ask
                        // it first next time. Without this, a group whose only replica leads (no
                        // follower ever names it in a hint) is looked for afresh on every call.
                        if !op.is_stale_read() {
                            self.leaders
                                .lock()
                                .expect("leader cache lock")
                                .insert(group.clone(), node);
                        }
                        return Ok(result);
                    }
                    // Follow a hint to a node we can reach; a hint at a node found down is stale
                    // (followers name the old leader until they notice it is gone): wait, ask again.
                    ClientResponse::NotLeader {
                        leader: Some(leader), ..
                    } if self.nodes.contains(&leader) && !self.is_down(leader) => {
                        self.note_hosting(&group, node, true);
                        self.leaders
                            .lock()
                            .expect("leader cache lock")
                            .insert(group.clone(), leader);
                        last_error = format!("n{node} is not the leader of {group}; n{leader} is");
                        if !following {
                            redirected = true;
                            continue;
                        }
                    }
                    ClientResponse::NotLeader { leader, .. } => {
                        self.note_hosting(&group, node, true);
                        self.forget_leader(&group);
                        // No leader, or one found down: the group is electing (a leader with no endpoint
                        // here is not an election, see below: the backoff's pace).
                        electing = leader.is_none_or(|leader| self.nodes.contains(&leader));
                        // Say why the hint was not followed: a leader this client was never given an
                        // endpoint for is a configuration to fix, not a group without a leader.
                        last_error = match leader {
                            Some(leader) if !self.nodes.contains(&leader) => format!(
                                "n{node} names n{leader} as the leader of {group}, and this client has no \
                                 endpoint for n{leader}: give the client every node that may lead"
                            ),
                            Some(leader) => {
                                format!("n{node} names n{leader} as the leader of {group}, which is down")
                            }
                            None => format!("{group} has no leader at n{node} now"),
                        };
                    }
                    // Ask another node: this one holds no replica (or is still opening it).
                    ClientResponse::NotHosted { .. } => {
                        self.note_hosting(&group, node, false);
                        self.forget_leader(&group);
                        last_error = format!("n{node} holds no replica of {group}");
                        misses += 1;
                        if misses < self.nodes.len() {
                            continue;
                        }
                        misses = 0;
                    }
                    ClientResponse::Unavailable { reason, .. } => last_error = reason,
                    ClientResponse::Residency { reason } => return Err(ClientError::Residency(reason)),
                    ClientResponse::Invalid { reason } => return Err(ClientError::Invalid(reason)),
                    ClientResponse::Forbidden {
                        caller,
                        jurisdiction,
                        reason,
                    } => {
                        return Err(ClientError::Forbidden {
                            caller,
                            jurisdiction,
                            reason,
                        });
                    }
                    // Routed by an older map than the node's: route by the later one at once.
                    ClientResponse::Moved { map, .. } => match self.learn(jurisdiction, map) {
                        Ok(map) if map.epoch > epoch => {
                            last_error = format!("{group} lost the user's range at epoch {}", map.epoch);
                            (group, epoch) = (map.route(user_id).to_string(), map.epoch);
                            continue;
                        }
                        Ok(map) => {
                            last_error = format!(
                                "n{node} answered moved, with no map later than epoch {}",
                                map.epoch
                            )
                        }
                        Err(reason) => last_error = format!("n{node} answered {reason}"),
                    },
                    ClientResponse::ShardMap { .. } | ClientResponse::Map(_) => {
                        last_error = "unexpected shard map".into()
                    }
                },
                Ok(Ok(EnvelopeResponse::Peer(_))) => {
                    last_error = format!("n{node} answered with a peer response")
                }
                Ok(Err(error)) => {
                    self.forget_leader_if(&group, node);
                    last_error = error.to_string();
                }
                // Only the call's deadline ended the attempt: the node may be the leader, just elected,
                // that the next call should ask first.
                Err(_) if cut_short => last_error = format!("n{node} did not answer before the deadline"),
                Err(_) => {
                    self.forget_leader_if(&group, node);
                    last_error = format!("n{node} did not answer in time");
                }
            }
            if electing {
                poll_election(deadline).await;
            } else {
                self.backoff(pauses, deadline).await;
                pauses += 1;
            }
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout {
                deadline: self.timeout,
                last_error,
            });
        }
        Err(ClientError::Unavailable(last_error))
    }

    /// The group holding `user_id`'s records by the jurisdiction's published map, and the map's epoch.
    async fn route(
        &self,
        jurisdiction: &str,
        user_id: &str,
        deadline: Instant,
    ) -> Result<(String, u64), ClientError> {
        let map = self.shard_map(jurisdiction, deadline).await?;
        Ok((map.route(user_id).to_string(), map.epoch))
    }

    /// Keeps a map a node answered with, if it is well formed, of `jurisdiction`, and later than the one
    /// known; returns the latest known.
    fn learn(&self, jurisdiction: &str, map: RoutingMap) -> Result<Arc<RoutingMap>, String> {
        if map.jurisdiction != jurisdiction {
            return Err(format!(
                "a map of `{}`, not of `{jurisdiction}`",
                map.jurisdiction
            ));
        }
        map.check().map_err(|error| format!("a malformed map: {error}"))?;
        let mut maps = self.shard_maps.lock().expect("shard map lock");
        let known = maps
            .entry(jurisdiction.to_string())
            .or_insert_with(|| Arc::new(map.clone()));
        if map.epoch > known.epoch {
            *known = Arc::new(map);
        }
        Ok(known.clone())
    }

    /// How long one attempt may take: a share of the deadline, not all of it, so a dead node leaves time to
    /// ask another.
    fn attempt_limit(&self, remaining: Duration) -> Duration {
        remaining.min(self.attempt_bound())
    }

    /// The share of the deadline one attempt gets when the deadline is not about to end.
    fn attempt_bound(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(250))
    }

    fn is_down(&self, node: u64) -> bool {
        self.down.lock().expect("down list lock").contains_key(&node)
    }

    /// Notes what an attempt's outcome says of its node ([`verdict`]).
    fn note_reply<T>(
        &self,
        node: u64,
        reply: &Result<Result<T, QuicError>, tokio::time::error::Elapsed>,
        cut_short: bool,
    ) {
        let mut down = self.down.lock().expect("down list lock");
        match verdict(reply, cut_short) {
            Verdict::Up => {
                down.remove(&node);
            }
            Verdict::Down => {
                down.entry(node).or_insert(Down {
                    probed: Instant::now(),
                    probing: false,
                });
            }
            Verdict::Unknown => {}
        }
    }

    /// Starts a probe of each node found down whose last probe began `PROBE_EVERY` ago and has ended: a
    /// fresh handshake, in the background, that brings the node back into use if it answers.
    fn probe_down_nodes(&self) {
        let mut down = self.down.lock().expect("down list lock");
        let now = Instant::now();
        for (&node, state) in down.iter_mut() {
            if state.probing || now.duration_since(state.probed) < PROBE_EVERY {
                continue;
            }
            state.probing = true;
            state.probed = now;
            let (dialer, list) = (self.dialer.clone(), self.down.clone());
            tokio::spawn(async move {
                let reached = dialer.probe(node).await.is_ok();
                let mut down = list.lock().expect("down list lock");
                if reached {
                    down.remove(&node);
                } else if let Some(state) = down.get_mut(&node) {
                    state.probing = false;
                }
            });
        }
    }

    fn target(&self, group: &str) -> u64 {
        self.probe_down_nodes();
        let cached = self
            .leaders
            .lock()
            .expect("leader cache lock")
            .get(group)
            .copied();
        if let Some(leader) = cached.filter(|&leader| !self.is_down(leader)) {
            return leader;
        }
        let down = self.down.lock().expect("down list lock");
        let not_hosting = self.not_hosting.lock().expect("not-hosting lock");
        let missing = not_hosting.get(group);
        let start = self.next_node.load(Ordering::Relaxed) as usize;
        let chosen = pick(&self.nodes, start, |node| down.contains_key(&node), missing);
        if let Some(index) = chosen {
            // The next call without a leader starts after this node, not at a node skipped just now.
            self.next_node.store(index as u64 + 1, Ordering::Relaxed);
            return self.nodes[index];
        }
        // Every node is down: ask the one probed longest ago (a probe may be slower than a request).
        self.nodes
            .iter()
            .copied()
            .min_by_key(|node| down.get(node).map(|state| state.probed))
            .expect("a client has at least one node")
    }

    /// Notes whether `node` answered as a replica of `group` (see `not_hosting`).
    fn note_hosting(&self, group: &str, node: u64, hosts: bool) {
        let mut not_hosting = self.not_hosting.lock().expect("not-hosting lock");
        if hosts {
            if let Some(missing) = not_hosting.get_mut(group) {
                missing.remove(&node);
            }
        } else {
            not_hosting.entry(group.to_string()).or_default().insert(node);
        }
    }

    /// Forgets `node` as `group`'s leader, if it was: it failed to answer.
    fn forget_leader_if(&self, group: &str, node: u64) {
        let mut leaders = self.leaders.lock().expect("leader cache lock");
        if leaders.get(group) == Some(&node) {
            leaders.remove(group);
        }
    }

    fn forget_leader(&self, group: &str) {
        self.leaders.lock().expect("leader cache lock").remove(group);
    }
}

/// What an attempt's outcome says of the node asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Up,
    Down,
    Unknown,
}

/// An answer (even a refusal) proves the node up; a lost connection, a failed dial or no answer within
/// the attempt's bound marks it down. No answer within an attempt the call's deadline `cut_short` says
/// nothing: a node found down is left alone until a probe reaches it (at least [`PROBE_EVERY`]), and the
/// node a call's last moments were spent on is often the leader just elected. Marked down, it cost the
/// next call 0.3-0.5 s after a failover on the WAN bench (docs/performance.md).
fn verdict<T>(reply: &Result<Result<T, QuicError>, tokio::time::error::Elapsed>, cut_short: bool) -> Verdict {
    match reply {
        Ok(Ok(_)) | Ok(Err(QuicError::Remote { .. })) => Verdict::Up,
        Err(_) if cut_short => Verdict::Unknown,
        _ => Verdict::Down,
    }
}

/// Which node a call without a known leader asks, by index in `nodes`, taking turns from `start`: a node up
/// that did not say it holds no replica of the group (`missing`), else any node up; `None` if all are down.
fn pick(
    nodes: &[u64],
    start: usize,
    is_down: impl Fn(u64) -> bool,
    missing: Option<&BTreeSet<u64>>,
) -> Option<usize> {
    rotate(nodes, start, |node| {
        is_down(node) || missing.is_some_and(|missing| missing.contains(&node))
    })
    .or_else(|| rotate(nodes, start, &is_down))
}

/// The index of the first of `nodes`, in turn from `start`, that `skip` does not rule out.
fn rotate(nodes: &[u64], start: usize, skip: impl Fn(u64) -> bool) -> Option<usize> {
    (0..nodes.len())
        .map(|offset| (start + offset) % nodes.len())
        .find(|&index| !skip(nodes[index]))
}

/// How often a call asks again while its group elects a leader (as etcd's client retries, every 25 ms).
///
/// An election ends at a moment the client can't know; with the backoff's growing pauses (up to 200 ms) a
/// call learned of the new leader up to a whole pause after it was elected. Asking a replica costs it a
/// lookup of its leader, no Raft work, and only while the group has none.
const ELECTION_POLL: Duration = Duration::from_millis(25);

/// One [`ELECTION_POLL`], or less if the deadline comes first.
async fn poll_election(deadline: Instant) {
    tokio::time::sleep_until((Instant::now() + ELECTION_POLL).min(deadline)).await;
}

/// The pause before a call's retry number `attempt` (from 0): exponential from 10 ms, capped at 200 ms, and
/// of that a random part ("equal jitter": half the step, plus up to the other half).
///
/// Why jitter: a leader lost at one moment fails every client's call at that moment, and pauses of the
/// same lengths would bring all their retries back at the same moments, each wave one burst at the nodes
/// (etcd's and gRPC's clients jitter theirs for this reason). Half the step is kept fixed, so no retry
/// comes sooner than half of what the step asks for.
fn backoff_pause(attempt: u32, jitter: &mut fastrand::Rng) -> Duration {
    let step = Duration::from_millis(10u64 << attempt.min(4)).min(BACKOFF_MAX);
    let half = step / 2;
    half + Duration::from_micros(jitter.u64(0..=half.as_micros() as u64))
}

/// The longest pause between two attempts of a call.
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Calls in one jurisdiction.
pub struct Scoped<'a> {
    client: &'a Client,
    jurisdiction: &'a str,
}

impl<'a> Scoped<'a> {
    pub async fn put(&self, user_id: &str, record: &str, value: Vec<u8>) -> Result<u64, ClientError> {
        let mut session = self.client.session();
        let op = ClientOp::Put {
            record: record.into(),
            value,
            write: session.next_write(),
        };
        match self.client.call(self.jurisdiction, user_id, op).await? {
            ClientResult::Written { revision } => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    pub fn get(&self, user_id: &'a str, record: &'a str) -> Get<'a> {
        let scoped = Scoped {
            client: self.client,
            jurisdiction: self.jurisdiction,
        };
        Get {
            scoped,
            user_id,
            record,
            consistency: Consistency::Linearizable,
        }
    }

    pub async fn delete(&self, user_id: &str, record: &str) -> Result<Option<u64>, ClientError> {
        let mut session = self.client.session();
        let op = ClientOp::Delete {
            record: record.into(),
            write: session.next_write(),
        };
        match self.client.call(self.jurisdiction, user_id, op).await? {
            ClientResult::Deleted { previous_revision } => Ok(previous_revision),
            other => Err(unexpected(other)),
        }
    }

    pub async fn compare_and_set(
        &self,
        user_id: &str,
        record: &str,
        expected_revision: Option<u64>,
        value: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let mut session = self.client.session();
        let write = session.next_write();
        let op = ClientOp::CompareAndSet {
            record: record.into(),
            expected_revision,
            value,
            write,
        };
        match self.client.call(self.jurisdiction, user_id, op).await? {
            ClientResult::Written { revision } => Ok(revision),
            ClientResult::Rejected(error @ CommandError::RevisionMismatch { .. }) => {
                Err(ClientError::Conflict(error))
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn scan_user(&self, user_id: &str) -> Result<Vec<(String, Record)>, ClientError> {
        match self
            .client
            .call(self.jurisdiction, user_id, ClientOp::Scan)
            .await?
        {
            ClientResult::Records(records) => Ok(records),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(result: ClientResult) -> ClientError {
    match result {
        ClientResult::Rejected(error) => ClientError::Rejected(error),
        other => ClientError::Invalid(format!("unexpected result {other:?}")),
    }
}

/// A read; `.await` it for a linearizable read, or call `.stale()` first to accept any replica's state.
pub struct Get<'a> {
    scoped: Scoped<'a>,
    user_id: &'a str,
    record: &'a str,
    consistency: Consistency,
}

impl Get<'_> {
    /// Serve from any replica's local state, possibly behind the leader. The outcome is marked stale.
    pub fn stale(mut self) -> Self {
        self.consistency = Consistency::Stale;
        self
    }
}

impl<'a> IntoFuture for Get<'a> {
    type Output = Result<Option<Record>, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let op = ClientOp::Get {
                record: self.record.into(),
                consistency: self.consistency,
            };
            match self
                .scoped
                .client
                .call(self.scoped.jurisdiction, self.user_id, op)
                .await?
            {
                ClientResult::Value { record, .. } => Ok(record),
                other => Err(unexpected(other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn elapsed() -> tokio::time::error::Elapsed {
        tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn an_attempt_only_the_calls_deadline_cut_short_marks_no_node_down() {
        let timed_out: Result<Result<(), QuicError>, _> = Err(elapsed().await);
        assert_eq!(verdict(&timed_out, true), Verdict::Unknown);
        // Given its whole bound and silent, the node is taken for down, as before.
        assert_eq!(verdict(&timed_out, false), Verdict::Down);
    }

    /// The WAN bench's EEA failover (docs/performance.md): the client knows n1..n6, n1 (the leader) is
    /// dead, and the Frankfurt nodes n4 and n6 answered "not hosted". Each turn asks a replica, not a
    /// Frankfurt node 40 ms away; were every node up to answer "not hosted", turns would go on over all.
    #[test]
    fn a_call_without_a_leader_asks_nodes_that_host_the_group_first() {
        let nodes = [1, 2, 3, 4, 6];
        let down = |node| node == 1;
        // The nodes `count` calls in a row ask, each starting after the last one asked.
        let turns = |missing: &BTreeSet<u64>, count: usize| {
            let mut start = 0;
            (0..count)
                .map(|_| {
                    let index = pick(&nodes, start, down, Some(missing)).expect("nodes are up");
                    start = index + 1;
                    nodes[index]
                })
                .collect::<Vec<u64>>()
        };
        let missing = BTreeSet::from([4, 6]);
        assert_eq!(turns(&missing, 6), [2, 3, 2, 3, 2, 3]);
        // Nothing known of the group yet: every node up, in turn.
        let index = pick(&nodes, 3, down, None).expect("nodes are up");
        assert_eq!(nodes[index], 4);
        // Every node up said "not hosted" (the group moved): ask them all again rather than none.
        assert_eq!(turns(&BTreeSet::from([2, 3, 4, 6]), 4), [2, 3, 4, 6]);
        // All down: no pick (the caller asks the node probed longest ago).
        assert_eq!(pick(&nodes, 0, |_| true, Some(&missing)), None);
    }

    #[test]
    fn answers_prove_a_node_up_and_lost_connections_mark_it_down_either_way() {
        for cut_short in [false, true] {
            let answered: Result<Result<(), QuicError>, tokio::time::error::Elapsed> = Ok(Ok(()));
            assert_eq!(verdict(&answered, cut_short), Verdict::Up);
            let refused: Result<Result<(), QuicError>, tokio::time::error::Elapsed> =
                Ok(Err(QuicError::Remote {
                    node: 2,
                    reason: "busy".into(),
                }));
            assert_eq!(verdict(&refused, cut_short), Verdict::Up);
            let lost: Result<Result<(), QuicError>, tokio::time::error::Elapsed> =
                Ok(Err(QuicError::Stream {
                    node: 2,
                    reason: "connection lost".into(),
                }));
            assert_eq!(verdict(&lost, cut_short), Verdict::Down);
        }
    }

    #[test]
    fn backoff_pauses_grow_to_their_cap_each_with_up_to_half_of_it_left_to_chance() {
        let mut jitter = fastrand::Rng::with_seed(7);
        for attempt in 0..12 {
            let step = Duration::from_millis(10u64 << attempt.min(4)).min(BACKOFF_MAX);
            let pauses: Vec<Duration> = (0..200).map(|_| backoff_pause(attempt, &mut jitter)).collect();
            for pause in &pauses {
                assert!(
                    *pause >= step / 2 && *pause <= step,
                    "retry {attempt}: {pause:?} is outside half to all of its step {step:?}"
                );
            }
            let distinct: BTreeSet<Duration> = pauses.iter().copied().collect();
            assert!(
                distinct.len() > 100,
                "retry {attempt}: the pauses vary ({} distinct of 200)",
                distinct.len()
            );
        }
        assert_eq!(
            backoff_pause(40, &mut jitter).max(BACKOFF_MAX),
            BACKOFF_MAX,
            "capped"
        );
    }

    #[test]
    fn clients_seeded_alike_pause_alike_and_clients_seeded_apart_do_not() {
        let pauses = |seed: u64| {
            let mut jitter = fastrand::Rng::with_seed(seed);
            (0..8)
                .map(|attempt| backoff_pause(attempt, &mut jitter))
                .collect::<Vec<_>>()
        };
        assert_eq!(pauses(1), pauses(1), "a seed replays its pauses");
        assert_ne!(
            pauses(1),
            pauses(2),
            "two clients that failed together come back apart"
        );
    }
}
