//! openraft's view of the network for one replica group: every message it sends goes through here, and
//! everything that carries the group's data is checked by the egress fence first.
//!
//! A blocked message is never sent: openraft sees the target as unreachable (and backs off), and the
//! refusal is counted and logged as an incident by [`GroupFence`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::Stream;
use openraft::OptionalSend;
use openraft::alias::{SnapshotOf, VoteOf, WatchReceiverOf};
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
use crate::config::GroupConfig;
use crate::message::SnapshotChunk;
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

pub struct GroupNetworkFactory<C: GroupConfig, T> {
    pub fence: Arc<GroupFence>,
    pub transport: Arc<T>,
    pub metrics: MetricsCell<C>,
}

impl<C: GroupConfig, T: Transport> RaftNetworkFactory<C> for GroupNetworkFactory<C, T> {
    type Network = GroupNetwork<C, T>;

    async fn new_client(&mut self, target: u64, _node: &()) -> GroupNetwork<C, T> {
        GroupNetwork {
            target: NodeId(target),
            fence: self.fence.clone(),
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

pub struct GroupNetwork<C: GroupConfig, T> {
    target: NodeId,
    fence: Arc<GroupFence>,
    transport: Arc<T>,
    metrics: MetricsCell<C>,
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
        if carries_data {
            self.check_egress()
                .map_err(|reason| RPCError::Unreachable(Unreachable::from_string(reason)))?;
        }
        // Fault points (simulation only): a send that fails at once, as a reset connection would, and one
        // that leaves late, as behind a congested queue; openraft must back off and retry either way.
        if crate::sim::maybe("network.send.fails") {
            let reason = format!("fault point: the send to {} failed", self.target);
            return Err(RPCError::Unreachable(Unreachable::from_string(reason)));
        }
        if let Some(delay_ms) = crate::sim::maybe_delay_ms("network.send.late", 250) {
            C::sleep(Duration::from_millis(delay_ms)).await;
        }
        let body =
            codec::encode(message).map_err(|error| RPCError::Network(NetworkError::from_string(error)))?;
        let request = PeerRequest {
            group: self.fence.raft_group,
            kind,
            carries_data,
            body,
        };
        let unreachable = |reason: String| RPCError::Unreachable(Unreachable::from_string(reason));
        match self.transport.send(self.target, request).await {
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
        let send = move |rpc: AppendEntriesRequest<C>| async move {
            let carries_data = !rpc.entries.is_empty();
            this.call(RequestKind::AppendEntries, carries_data, &rpc).await
        };
        let answers: BoxStream<'s, _> = Box::pin(append_pipeline::answers(input, send));
        Box::pin(async move { Ok(answers) })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let carries_data = !rpc.entries.is_empty();
        self.call(RequestKind::AppendEntries, carries_data, &rpc).await
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
        let chunks: Vec<&[u8]> = snapshot.snapshot.chunks().collect();
        let count = chunks.len() as u64;
        let mut last = None;
        for (sequence, bytes) in chunks.into_iter().enumerate() {
            let chunk = SnapshotChunk::<C> {
                vote: vote.clone(),
                meta: snapshot.meta.clone(),
                sequence: sequence as u64,
                count,
                bytes: bytes.to_vec(),
            };
            let reply: Option<SnapshotResponse<C>> = self
                .call(RequestKind::SnapshotChunk, true, &chunk)
                .await
                .map_err(StreamingError::from)?;
            last = reply;
        }
        last.ok_or_else(|| StreamingError::Network(NetworkError::from_string("the snapshot had no chunk")))
    }
}
