//! The production transport's serving side: a node's QUIC (quinn) endpoint with mutual TLS, which serves
//! its peers and client services and dials its peers through `link`, the crate a client service links too.
//!
//! What it adds to `link`'s guarantees (one bounded, checksummed frame each way per stream; dialled nodes
//! present their own id's certificate; one connection per peer):
//!
//! * **Who.** Whoever connects, node or client service, is known by the identity its verified certificate
//!   attests, and a node's node id, site and country are checked against the topology before any request
//!   is served; a peer this node dials is checked the same way (`AttestedNode`). A handler is told the
//!   *attested* identity of the sender; nothing the peer says about itself is used.
//! * **One endpoint for both kinds of traffic.** Requests arrive as an [`Envelope`] (peer or client) and
//!   each stream is served on its own task, so a large snapshot chunk does not hold up heartbeats.
//!
//! This module is the one part of `raft/` bound to tokio (quinn runs its I/O on it); everything above it
//! talks to a transport trait so the simulator can substitute its own network.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use link::frame::{Reply, read_frame, write_frame};
use link::{PeerCheck, TlsConfigs};
use placement::{NodeId, Topology};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use link::{Dialer, QuicConfig, QuicError};

use crate::client_protocol::{ClientResponse, Envelope, EnvelopeResponse};
use crate::identity::{IdentityError, NodeIdentity, Peer, attested_peer, check_against_topology};
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport, TransportError};

impl From<IdentityError> for QuicError {
    fn from(error: IdentityError) -> QuicError {
        QuicError::Identity(Box::new(error))
    }
}

/// Serves requests arriving from attested peers (nodes, or client services).
pub trait Handler<Request, Response>: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

/// A node's check of a peer it dialled: the certificate must attest a node (not a client service), the
/// one dialled, standing where the topology places it.
struct AttestedNode(Arc<Topology>);

impl PeerCheck for AttestedNode {
    fn check(&self, node: u64, connection: &Connection) -> Result<(), QuicError> {
        match peer_identity(connection, &self.0)? {
            Peer::Node(identity) if identity.node == NodeId(node) => Ok(()),
            Peer::Node(identity) => Err(QuicError::WrongPeer {
                expected: node,
                attested: identity.node.0,
            }),
            Peer::Client(_) | Peer::Operator(_) => Err(IdentityError::NoIdentity.into()),
        }
    }
}

/// One node's QUIC endpoint: a server for its peers (and clients) and a dialler of its peers.
pub struct QuicNode {
    me: NodeIdentity,
    dialer: Dialer,
    topology: Arc<Topology>,
}

impl QuicNode {
    /// Binds `addr` and starts serving `handler`. `addresses` says where each peer listens.
    pub fn bind<Request, Response, H>(
        me: NodeIdentity,
        addr: SocketAddr,
        tls: &TlsConfigs,
        topology: Arc<Topology>,
        addresses: BTreeMap<NodeId, SocketAddr>,
        config: QuicConfig,
        handler: Arc<H>,
    ) -> Result<Arc<QuicNode>, QuicError>
    where
        Request: DeserializeOwned + Send + 'static,
        Response: Serialize + Send + Sync + 'static,
        H: Handler<Request, Response>,
    {
        check_against_topology(&me, &topology)?;
        let server_crypto = QuicServerConfig::try_from(tls.server.clone())
            .map_err(|error| QuicError::Config(error.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::new(config.transport()?));
        // quinn's `Endpoint::server`, with our endpoint settings (the UDP payload bound).
        let bind = |source| QuicError::Bind { addr, source };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        let runtime =
            quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no async runtime found")))?;
        let endpoint = Endpoint::new(
            config.endpoint(&tls.endpoint_secret)?,
            Some(server),
            socket,
            runtime,
        )
        .map_err(bind)?;
        let check = Arc::new(AttestedNode(topology.clone()));
        let addresses = addresses.into_iter().map(|(node, addr)| (node.0, addr)).collect();
        let dialer = Dialer::over(endpoint, tls, Some(check), addresses, config)?;
        let node = Arc::new(QuicNode { me, dialer, topology });
        spawn_accept_loop(node.clone(), handler);
        spawn_connection_warmer(Arc::downgrade(&node));
        Ok(node)
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.me
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Records where `node` listens (its identity is still checked on every connection).
    pub fn learn_address(&self, node: NodeId, addr: SocketAddr) {
        self.dialer.learn_address(node.0, addr);
    }

    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.dialer
            .endpoint()
            .local_addr()
            .map_err(|error| QuicError::Config(error.to_string()))
    }

    /// Sends one request to `to` and waits for its response, within `config.request_timeout`.
    pub async fn request<Request, Response>(
        &self,
        to: NodeId,
        request: &Request,
    ) -> Result<Response, QuicError>
    where
        Request: Serialize + ?Sized,
        Response: DeserializeOwned,
    {
        self.dialer.request(to.0, request).await
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.dialer.close();
    }
}

/// Longest wait between two dials of a peer that does not answer (the wait doubles from the keep-alive
/// interval after each failed dial).
const WARM_RETRY_MAX: Duration = Duration::from_secs(60);

/// Keeps a connection open to every peer in the address book, dialled ahead of need and dialled again
/// when it closes (the peer restarted, or was down).
///
/// **Why.** A follower sends nothing to another follower until its leader dies; then its first pre-vote
/// to that follower waited for a handshake before the request itself, a round trip more of the failover
/// (60 ms between Dublin and Hamar, docs/performance.md). A warm connection carries no data (quinn's
/// keep-alives hold it open; every request on it still passes the fences), and the peer was checked
/// against the topology when it was dialled, as on any dial.
///
/// Every peer the address book names, also one learned later, gets a loop of its own, which holds the node
/// only weakly while it sleeps, so dropping or closing the node ends it; a dial in progress ends when
/// the node's endpoint closes.
// quinn's connections live on tokio: like the accept loop, this is the tokio-bound part of `raft/`.
#[allow(clippy::disallowed_methods)]
fn spawn_connection_warmer(node: std::sync::Weak<QuicNode>) {
    tokio::spawn(async move {
        let mut warming = std::collections::BTreeSet::new();
        loop {
            let Some(live) = node.upgrade() else { return };
            if live.dialer.is_closed() {
                return;
            }
            for peer in live.dialer.peers() {
                if peer != live.me.node.0 && warming.insert(peer) {
                    tokio::spawn(keep_warm(node.clone(), peer));
                }
            }
            let interval = live.dialer.config().keep_alive;
            drop(live);
            tokio::time::sleep(interval).await;
        }
    });
}

/// One peer's loop of [`spawn_connection_warmer`].
#[allow(clippy::disallowed_methods)]
async fn keep_warm(node: std::sync::Weak<QuicNode>, peer: u64) {
    let mut failed = 0u32;
    loop {
        let Some(live) = node.upgrade() else { return };
        if live.dialer.is_closed() {
            return;
        }
        let interval = live.dialer.config().keep_alive;
        // Dials only if the open connection is gone.
        match live.dialer.warm(peer).await {
            Ok(()) => failed = 0,
            Err(error) => {
                failed = failed.saturating_add(1);
                tracing::debug!(peer, %error, failed, "a peer's connection could not be opened ahead of need");
            }
        }
        drop(live);
        let wait = interval
            .saturating_mul(1 << failed.min(6))
            .min(WARM_RETRY_MAX.max(interval));
        tokio::time::sleep(wait).await;
    }
}

/// The attested identity of the peer at the other end of a verified connection; a node's is also checked
/// against the topology.
fn peer_identity(connection: &Connection, topology: &Topology) -> Result<Peer, IdentityError> {
    let certificates = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(IdentityError::NoIdentity)?;
    let leaf = certificates.first().ok_or(IdentityError::NoIdentity)?;
    let peer = attested_peer(leaf.as_ref())?;
    if let Peer::Node(identity) = &peer {
        check_against_topology(identity, topology)?;
    }
    Ok(peer)
}

// quinn needs tokio tasks for its connections: this transport is the one tokio-bound part of `raft/`.
#[allow(clippy::disallowed_methods)]
fn spawn_accept_loop<Request, Response, H>(node: Arc<QuicNode>, handler: Arc<H>)
where
    Request: DeserializeOwned + Send + 'static,
    Response: Serialize + Send + Sync + 'static,
    H: Handler<Request, Response>,
{
    tokio::spawn(async move {
        while let Some(incoming) = node.dialer.endpoint().accept().await {
            let node = node.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                let peer = match peer_identity(&connection, &node.topology) {
                    Ok(peer) => peer,
                    Err(error) => {
                        tracing::warn!(remote = %connection.remote_address(), %error, "refusing peer");
                        connection.close(VarInt::from_u32(2), b"identity refused");
                        return;
                    }
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let (handler, peer) = (handler.clone(), peer.clone());
                    let bytes_max = node.dialer.config().message_bytes_max;
                    tokio::spawn(serve_stream(handler, peer, send, recv, bytes_max));
                }
            });
        }
    });
}

async fn serve_stream<Request, Response, H>(
    handler: Arc<H>,
    peer: Peer,
    mut send: SendStream,
    mut recv: RecvStream,
    bytes_max: u32,
) where
    Request: DeserializeOwned,
    Response: Serialize,
    H: Handler<Request, Response>,
{
    let reply: Reply<Response> = match read_frame::<Request>(&mut recv, bytes_max).await {
        Ok(request) => Ok(handler.handle(peer.clone(), request).await),
        Err(error) => {
            tracing::warn!(%peer, error = %error, "refused a request frame");
            Err(error.to_string())
        }
    };
    if let Err(error) = write_frame(&mut send, &reply, bytes_max).await {
        tracing::debug!(%peer, %error, "could not send a response");
    }
}

/// How long a snapshot chunk's answer may take: the last one is answered once the receiver has
/// installed the snapshot (15 s for a gigabyte here, docs/performance.md). Under the ordinary request
/// timeout the sender gave up during the install and sent the whole snapshot again, and again. A peer
/// that is gone is still noticed within the connection's idle timeout.
pub const SNAPSHOT_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl Transport for QuicNode {
    async fn send(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, TransportError> {
        let envelope = Envelope::Peer(request);
        let reply: Result<EnvelopeResponse, QuicError> = match &envelope {
            Envelope::Peer(PeerRequest {
                kind: RequestKind::SnapshotChunk,
                ..
            }) => {
                self.dialer
                    .request_within(to.0, &envelope, SNAPSHOT_CHUNK_TIMEOUT)
                    .await
            }
            _ => self.request(to, &envelope).await,
        };
        match reply {
            Ok(EnvelopeResponse::Peer(response)) => Ok(response),
            Ok(EnvelopeResponse::Client(_)) => Err(TransportError::Refused {
                node: to,
                reason: "answered a Raft message with a client response".into(),
            }),
            Err(QuicError::Timeout(_)) => Err(TransportError::Timeout(to)),
            Err(
                error @ (QuicError::Identity(_) | QuicError::WrongPeer { .. } | QuicError::Remote { .. }),
            ) => Err(TransportError::Refused {
                node: to,
                reason: error.to_string(),
            }),
            Err(other) => Err(TransportError::Unreachable(to, other.to_string())),
        }
    }
}

/// A handler installed after the endpoint is bound: the host needs the endpoint as its transport, and the
/// endpoint needs the host as its handler. Until installed, every request is refused.
pub struct LateHandler<H> {
    handler: std::sync::OnceLock<Arc<H>>,
}

impl<H> Default for LateHandler<H> {
    fn default() -> Self {
        LateHandler {
            handler: std::sync::OnceLock::new(),
        }
    }
}

impl<H> LateHandler<H> {
    /// Installs the handler; a second call is ignored (the first handler stays).
    pub fn install(&self, handler: Arc<H>) {
        let _ = self.handler.set(handler);
    }
}

impl<H: Handler<Envelope, EnvelopeResponse>> Handler<Envelope, EnvelopeResponse> for LateHandler<H> {
    fn handle(
        &self,
        peer: Peer,
        request: Envelope,
    ) -> Pin<Box<dyn Future<Output = EnvelopeResponse> + Send + '_>> {
        match self.handler.get() {
            Some(handler) => handler.handle(peer, request),
            None => {
                let starting = "node is starting".to_string();
                Box::pin(async move {
                    match request {
                        Envelope::Peer(request) => EnvelopeResponse::Peer(PeerResponse::Refused {
                            group: request.group,
                            reason: starting,
                        }),
                        Envelope::Client(_) => EnvelopeResponse::Client(ClientResponse::Unavailable {
                            group: String::new(),
                            reason: starting,
                        }),
                    }
                })
            }
        }
    }
}
