//! How a host reaches its peers: one request, one response, addressed by node id.
//!
//! The host speaks in [`PeerRequest`]s (defined in `wire`, as the envelope carries them) — a group, what
//! kind of Raft message, and the message encoded by `storage::codec` — so the transport never needs to
//! know openraft's types. Production sends them over QUIC ([`crate::quic::QuicNode`]); the simulator
//! delivers them through its simulated network. Either way the receiving host is told the sender's
//! *attested* identity, from which it decides what to accept.

use std::future::Future;

use placement::NodeId;
pub use wire::peer::{PeerRequest, PeerResponse, RequestKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("request to node {0} timed out")]
    Timeout(NodeId),
    #[error("node {node} refused the connection or the message: {reason}")]
    Refused { node: NodeId, reason: String },
}

/// Sends peer requests. Implementations must not reorder a single caller's request and its response, and
/// must report the peer's identity to the receiving host from authentication, not from the message.
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        to: NodeId,
        request: PeerRequest,
    ) -> impl Future<Output = Result<PeerResponse, TransportError>> + Send;
}

/// A switchable fault layer over a transport, for tests: messages to a cut peer fail as unreachable
/// without being sent. Cut both directions (on both nodes' layers) for a symmetric partition. Messages to
/// a stalled peer neither fail nor arrive until the link heals, as those to a host that stopped without
/// closing its connection wait for its timeout.
pub struct Faulty<T> {
    inner: std::sync::Arc<T>,
    cut: std::sync::RwLock<std::collections::BTreeSet<NodeId>>,
    stalled: tokio::sync::watch::Sender<std::collections::BTreeSet<NodeId>>,
}

impl<T> Faulty<T> {
    pub fn new(inner: std::sync::Arc<T>) -> Faulty<T> {
        Faulty {
            inner,
            cut: Default::default(),
            stalled: tokio::sync::watch::Sender::new(Default::default()),
        }
    }

    pub fn inner(&self) -> &std::sync::Arc<T> {
        &self.inner
    }

    pub fn cut(&self, peer: NodeId) {
        self.cut.write().expect("fault layer lock").insert(peer);
    }

    /// Messages to `peer` wait, unanswered, until it is healed.
    pub fn stall(&self, peer: NodeId) {
        self.stalled.send_modify(|stalled| {
            stalled.insert(peer);
        });
    }

    pub fn heal(&self, peer: NodeId) {
        self.cut.write().expect("fault layer lock").remove(&peer);
        self.stalled.send_if_modified(|stalled| stalled.remove(&peer));
    }

    pub fn heal_all(&self) {
        self.cut.write().expect("fault layer lock").clear();
        self.stalled.send_if_modified(|stalled| {
            let any = !stalled.is_empty();
            stalled.clear();
            any
        });
    }
}

impl<T: Transport> Transport for Faulty<T> {
    async fn send(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, TransportError> {
        if self.stalled.borrow().contains(&to) {
            let mut stalled = self.stalled.subscribe();
            while stalled.borrow_and_update().contains(&to) {
                // The sender lives as long as this layer, which outlives the call.
                let _ = stalled.changed().await;
            }
        }
        if self.cut.read().expect("fault layer lock").contains(&to) {
            return Err(TransportError::Unreachable(
                to,
                "link cut by the fault layer".into(),
            ));
        }
        self.inner.send(to, request).await
    }
}
