//! openraft's view of the network for one replica group: every message it sends goes through here, and
//! everything that carries the group's data is checked by the egress fence first.
//!
//! A blocked message is never sent: openraft sees the target as unreachable (and backs off), and the
//! refusal is counted and logged as an incident by [`GroupFence`].
//!
//! Whether a peer answers is the node's business, not each group's: [`PeerReachability`], shared by all
//! of a node's groups, logs a peer once when it stops answering and once when it is back, where
//! openraft's replication streams and heartbeat workers would each warn on every failed send.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::alias::{InstantOf, SnapshotOf, VoteOf, WatchReceiverOf};
use openraft::async_runtime::WatchReceiver;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::metrics::RaftMetrics;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::TypeConfigExt;
use placement::{Membership, NodeId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage::codec;
use storage::snapshot::SnapshotData;

use crate::append_pipeline;
use crate::append_split;
use crate::config::GroupConfig;
use crate::fault::Isolation;
use crate::message::{SNAPSHOT_CHUNKS_IN_FLIGHT, SnapshotChunk, SnapshotsSent};
use crate::residency::GroupFence;
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport};

/// The group's current membership as openraft sees it, once the group runs.
pub type MetricsCell<C> = Arc<OnceLock<WatchReceiverOf<C, RaftMetrics<C>>>>;

/// The membership (voters and learners, joint configurations flattened) in a metrics snapshot.
pub fn membership_of<C: GroupConfig>(metrics: &RaftMetrics<C>) -> Membership {
    flatten::<C>(metrics.membership_config.membership())
}

/// A stored openraft membership as voters and learners (joint configurations flattened).
pub fn flatten<C: GroupConfig>(stored: &openraft::Membership<u64, ()>) -> Membership {
    let voters: Vec<NodeId> = stored.voter_ids().map(NodeId).collect();
    let learners = stored
        .learner_ids()
        .map(NodeId)
        .filter(|node| !voters.contains(node))
        .collect::<Vec<_>>();
    Membership::new(voters, learners)
}

/// Failed requests in a row, with no answer between them, after which a peer counts as unreachable: a
/// lost packet or one slow answer is not an outage.
pub const FAILURES_TO_UNREACHABLE: u64 = 3;

/// Whether this node's requests reach each peer, kept by the node for all its groups. `I` is the
/// runtime's instant (openraft's type config), so the simulator's runs stay deterministic.
pub struct PeerReachability<I> {
    /// This node, named in the log lines (the simulator runs many nodes in one process).
    me: NodeId,
    peers: Mutex<BTreeMap<NodeId, PeerState<I>>>,
    /// Set as the node shuts down: the requests it cuts short are no failures of their peers.
    stopped: AtomicBool,
}

struct PeerState<I> {
    /// Failed requests since the last answer.
    failures: u64,
    first_failure: Option<I>,
    /// Set once `failures` reached [`FAILURES_TO_UNREACHABLE`]: when the first of them was sent.
    unreachable_since: Option<I>,
}

/// A change in a peer's reachability, to be logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReachabilityChange<I> {
    /// The peer stopped answering (first failure at `since`).
    Unreachable { since: I },
    /// The peer answered again after `failures` failed requests since `since`.
    Reachable { since: I, failures: u64 },
}

impl<I: Copy> PeerReachability<I> {
    pub fn new(me: NodeId) -> Self {
        PeerReachability {
            me,
            peers: Mutex::new(BTreeMap::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// A request to `peer` got no answer (sent at `now`).
    pub fn failed(&self, peer: NodeId, now: I) -> Option<ReachabilityChange<I>> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let mut peers = self.peers.lock().expect("reachability lock");
        let state = peers.entry(peer).or_insert(PeerState {
            failures: 0,
            first_failure: None,
            unreachable_since: None,
        });
        state.failures += 1;
        let since = *state.first_failure.get_or_insert(now);
        if state.unreachable_since.is_some() || state.failures < FAILURES_TO_UNREACHABLE {
            return None;
        }
        state.unreachable_since = Some(since);
        Some(ReachabilityChange::Unreachable { since })
    }

    /// `peer` answered a request (whatever the answer: it is there).
    pub fn answered(&self, peer: NodeId) -> Option<ReachabilityChange<I>> {
        let mut peers = self.peers.lock().expect("reachability lock");
        let state = peers.remove(&peer)?;
        let since = state.unreachable_since?;
        Some(ReachabilityChange::Reachable {
            since,
            failures: state.failures,
        })
    }

    /// The node is shutting down: failures from now on are its own, not its peers'.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Does this node count `peer` as unreachable now?
    pub fn is_unreachable(&self, peer: NodeId) -> bool {
        let peers = self.peers.lock().expect("reachability lock");
        peers
            .get(&peer)
            .is_some_and(|state| state.unreachable_since.is_some())
    }
}

/// One request's outcome for [`PeerReachability`]. A request openraft gives up on (its own timeout drops
/// the future) counts as failed: over QUIC a peer that is down never answers, it is only waited for.
struct Attempt<'a, C: GroupConfig> {
    peers: &'a PeerReachability<InstantOf<C>>,
    peer: NodeId,
    settled: bool,
}

impl<'a, C: GroupConfig> Attempt<'a, C> {
    fn new(peers: &'a PeerReachability<InstantOf<C>>, peer: NodeId) -> Self {
        Attempt {
            peers,
            peer,
            settled: false,
        }
    }

    fn answered(mut self) {
        self.settled = true;
        if let Some(ReachabilityChange::Reachable { since, failures }) = self.peers.answered(self.peer) {
            let unreachable_ms = (C::now() - since).as_millis() as u64;
            tracing::info!(node = %self.peers.me, peer = %self.peer, unreachable_ms, failures, "peer reachable again");
        }
    }

    fn failed(mut self, reason: &str) {
        self.settled = true;
        self.record_failure(reason);
    }

    fn record_failure(&self, reason: &str) {
        if let Some(ReachabilityChange::Unreachable { .. }) = self.peers.failed(self.peer, C::now()) {
            tracing::warn!(
                node = %self.peers.me,
                peer = %self.peer,
                reason,
                "peer unreachable ({FAILURES_TO_UNREACHABLE} requests in a row failed); logged again when it answers"
            );
        }
    }
}

impl<C: GroupConfig> Drop for Attempt<'_, C> {
    fn drop(&mut self) {
        if !self.settled {
            self.record_failure("no answer before the request was given up");
        }
    }
}

pub struct GroupNetworkFactory<C: GroupConfig, T> {
    pub fence: Arc<GroupFence>,
    pub transport: Arc<T>,
    pub metrics: MetricsCell<C>,
    /// The node's view of its peers, shared by all its groups.
    pub peers: Arc<PeerReachability<InstantOf<C>>>,
    /// The node's isolation from its peers, if an operator asked for one ([`crate::fault`]).
    pub isolation: Arc<Isolation<InstantOf<C>>>,
    /// The group's count of snapshots sent, shared with its host.
    pub snapshots: Arc<SnapshotsSent>,
}

impl<C: GroupConfig, T: Transport> RaftNetworkFactory<C> for GroupNetworkFactory<C, T> {
    type Network = GroupNetwork<C, T>;

    async fn new_client(&mut self, target: u64, _node: &()) -> GroupNetwork<C, T> {
        GroupNetwork {
            target: NodeId(target),
            fence: self.fence.clone(),
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
            peers: self.peers.clone(),
            isolation: self.isolation.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

pub struct GroupNetwork<C: GroupConfig, T> {
    target: NodeId,
    fence: Arc<GroupFence>,
    transport: Arc<T>,
    metrics: MetricsCell<C>,
    peers: Arc<PeerReachability<InstantOf<C>>>,
    isolation: Arc<Isolation<InstantOf<C>>>,
    snapshots: Arc<SnapshotsSent>,
}

impl<C: GroupConfig, T: Transport> GroupNetwork<C, T> {
    /// The egress fence, on the membership openraft holds now. Before the group runs there is no
    /// membership to check against, so nothing carrying data may leave (fail closed).
    fn check_egress(&self) -> Result<(), String> {
        let Some(metrics) = self.metrics.get() else {
            return Err(format!("group {} is not running yet", self.fence.policy.group));
        };
        let membership = membership_of::<C>(&metrics.borrow_watched());
        self.fence
            .check_egress(self.target, &membership)
            .map_err(|refusal| refusal.to_string())
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RequestKind,
        carries_data: bool,
        message: &Req,
    ) -> Result<Resp, RPCError<C>> {
        self.admit(carries_data)?;
        let body =
            codec::encode(message).map_err(|error| RPCError::Network(NetworkError::from_string(error)))?;
        self.send_body(kind, carries_data, body).await
    }

    /// Replication to this follower: one request, or parts of it in order when it encodes to more than
    /// [`append_split::APPEND_BYTES_MAX`] (large values: the link would refuse it whole).
    async fn append(&self, rpc: AppendEntriesRequest<C>) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let carries_data = !rpc.entries.is_empty();
        self.admit(carries_data)?;
        let body =
            codec::encode(&rpc).map_err(|error| RPCError::Network(NetworkError::from_string(error)))?;
        if body.len() <= append_split::APPEND_BYTES_MAX {
            let (entries, sent) = (rpc.entries.len(), C::now());
            let answer = self
                .send_body(RequestKind::AppendEntries, carries_data, body)
                .await;
            // The leader's view of one replication round trip (docs/performance.md, the WAN breakdown).
            tracing::debug!(
                group = %self.fence.policy.group, peer = %self.target, entries,
                took_us = (C::now() - sent).as_micros() as u64,
                "append answered"
            );
            return answer;
        }
        drop(body);
        // An entry that does not encode fails the part that carries it, as it would the whole.
        let entry_bytes = |entry: &C::Entry| codec::encoded_len(entry).unwrap_or(0);
        let parts = append_split::split(rpc, append_split::APPEND_BYTES_MAX, entry_bytes);
        let send = |part: AppendEntriesRequest<C>| async move {
            self.call(RequestKind::AppendEntries, true, &part).await
        };
        append_split::combine(parts, send).await
    }

    /// Whether a message may leave for the target at all: not while an operator isolates it, and one that
    /// carries the group's data only past the egress fence.
    fn admit(&self, carries_data: bool) -> Result<(), RPCError<C>> {
        if self.isolation.blocks(self.target, C::now()) {
            let reason = format!("{} is isolated from this node by a fault injection", self.target);
            return Err(RPCError::Unreachable(Unreachable::from_string(reason)));
        }
        if carries_data {
            self.check_egress()
                .map_err(|reason| RPCError::Unreachable(Unreachable::from_string(reason)))?;
        }
        Ok(())
    }

    /// Sends an encoded message; see [`Self::call`].
    async fn send_body<Resp: DeserializeOwned>(
        &self,
        kind: RequestKind,
        carries_data: bool,
        body: Vec<u8>,
    ) -> Result<Resp, RPCError<C>> {
        let attempt = Attempt::<C>::new(&self.peers, self.target);
        // Fault points (simulation only): a send that fails at once, as a reset connection would, and one
        // that leaves late, as behind a congested queue; openraft must back off and retry either way.
        if crate::sim::maybe("network.send.fails") {
            let reason = format!("fault point: the send to {} failed", self.target);
            attempt.failed(&reason);
            return Err(RPCError::Unreachable(Unreachable::from_string(reason)));
        }
        if let Some(delay_ms) = crate::sim::maybe_delay_ms("network.send.late", 250) {
            C::sleep(Duration::from_millis(delay_ms)).await;
        }
        let request = PeerRequest {
            group: self.fence.raft_group,
            kind,
            carries_data,
            body,
        };
        let unreachable = |reason: String| RPCError::Unreachable(Unreachable::from_string(reason));
        let response = self.transport.send(self.target, request).await;
        match &response {
            Ok(_) => attempt.answered(),
            Err(error) => attempt.failed(&error.to_string()),
        }
        match response {
            Ok(PeerResponse::Ok(bytes)) => {
                codec::decode(&bytes).map_err(|error| RPCError::Network(NetworkError::from_string(error)))
            }
            Ok(PeerResponse::Refused { reason, .. }) => {
                Err(unreachable(format!("{} refused: {reason}", self.target)))
            }
            Ok(PeerResponse::Failed { reason, .. }) => {
                Err(RPCError::Network(NetworkError::from_string(reason)))
            }
            Err(error) => Err(unreachable(error.to_string())),
        }
    }
}

impl<C: GroupConfig, T: Transport> RaftNetworkV2<C> for GroupNetwork<C, T> {
    type SnapshotData = SnapshotData;

    /// Replication and heartbeats to this follower: commit notices ride on the next append when
    /// one follows soon ([`append_pipeline`]); every request still goes through [`Self::call`].
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        let this: &'s Self = self;
        let send = move |rpc: AppendEntriesRequest<C>| async move { this.append(rpc).await };
        let answers: BoxStream<'s, _> = Box::pin(append_pipeline::answers(input, send));
        Box::pin(async move { Ok(answers) })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.append(rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(RequestKind::Vote, false, &rpc).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        _option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(RequestKind::PreVote, false, &rpc).await
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<C>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        // Handing leadership over hands over the data too: the target must be one the data may reach.
        self.call(RequestKind::TransferLeader, true, &request).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        // The first chunk opens the transfer on its own; the middle ones go SNAPSHOT_CHUNKS_IN_FLIGHT at a
        // time (the receiver puts them back in order); the last, which installs the snapshot, goes once
        // every other one was answered. Each is read from the snapshot's spool as it is sent, and each
        // goes through `call`, so the egress fence checks every chunk on the membership of the moment.
        let data = &snapshot.snapshot;
        let count = data.chunk_count() as u64;
        if count == 0 {
            return Err(StreamingError::Network(NetworkError::from_string(
                "the snapshot had no chunk",
            )));
        }
        let this: &Self = self;
        let send = |sequence: u64| {
            let chunk = data
                .read_chunk(sequence as usize)
                .map(|bytes| SnapshotChunk::<C> {
                    vote: vote.clone(),
                    meta: snapshot.meta.clone(),
                    sequence,
                    count,
                    bytes,
                });
            async move {
                let chunk =
                    chunk.map_err(|error| StreamingError::Network(NetworkError::from_string(error)))?;
                this.call::<_, Option<SnapshotResponse<C>>>(RequestKind::SnapshotChunk, true, &chunk)
                    .await
                    .map_err(StreamingError::from)
            }
        };
        let mut last = send(0).await?;
        if count > 1 {
            let mut middle = futures_util::stream::iter(1..count - 1)
                .map(&send)
                .buffered(SNAPSHOT_CHUNKS_IN_FLIGHT);
            while let Some(reply) = middle.next().await {
                reply?;
            }
            drop(middle);
            last = send(count - 1).await?;
        }
        let installed = last.ok_or_else(|| {
            StreamingError::Network(NetworkError::from_string("the snapshot was not installed"))
        })?;
        self.snapshots.count();
        Ok(installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokioConfig;

    #[test]
    fn a_peer_is_logged_unreachable_once_and_reachable_once() {
        let peers = PeerReachability::<u64>::new(NodeId(1));
        let peer = NodeId(2);
        assert_eq!(peers.failed(peer, 10), None, "one failed request is no outage");
        assert_eq!(peers.failed(peer, 20), None);
        assert_eq!(
            peers.failed(peer, 30),
            Some(ReachabilityChange::Unreachable { since: 10 }),
            "the third failure in a row makes the peer unreachable, since the first"
        );
        for now in 40..100 {
            assert_eq!(peers.failed(peer, now), None, "logged once, not once per request");
        }
        assert!(peers.is_unreachable(peer));
        assert_eq!(
            peers.answered(peer),
            Some(ReachabilityChange::Reachable {
                since: 10,
                failures: 63
            })
        );
        assert_eq!(peers.answered(peer), None, "back once");
        assert!(!peers.is_unreachable(peer));
    }

    #[test]
    fn an_answer_between_failures_starts_the_count_again() {
        let peers = PeerReachability::<u64>::new(NodeId(1));
        let (lossy, down) = (NodeId(2), NodeId(3));
        for now in 0..100 {
            assert_eq!(peers.failed(lossy, now), None);
            assert_eq!(
                peers.answered(lossy),
                None,
                "a lossy link answers between its failures"
            );
            peers.failed(down, now);
        }
        assert!(!peers.is_unreachable(lossy));
        assert!(peers.is_unreachable(down), "peers are counted apart");
    }

    #[test]
    fn a_request_given_up_before_its_answer_counts_as_failed() {
        let peers = PeerReachability::new(NodeId(1));
        let peer = NodeId(4);
        for _ in 0..FAILURES_TO_UNREACHABLE {
            // openraft's own timeout drops the request's future: the peer never answered.
            drop(Attempt::<TokioConfig>::new(&peers, peer));
        }
        assert!(peers.is_unreachable(peer));
        Attempt::<TokioConfig>::new(&peers, peer).answered();
        assert!(!peers.is_unreachable(peer));
    }

    #[test]
    fn requests_a_shutdown_cuts_short_are_not_counted() {
        let peers = PeerReachability::new(NodeId(1));
        peers.stop();
        for _ in 0..10 {
            drop(Attempt::<TokioConfig>::new(&peers, NodeId(2)));
        }
        assert!(!peers.is_unreachable(NodeId(2)));
    }
}
