//! The production transport: QUIC (quinn) with mutual TLS, one long-lived connection per peer, one
//! bidirectional stream per request, framed messages.
//!
//! What it guarantees to the layer above:
//!
//! * **Who.** Every connection, in either direction, is mutually authenticated against the cluster CA, and
//!   the peer's node id, site and country are read from its verified certificate and checked against the
//!   topology before any request is served or sent. A handler is told the *attested* identity of the
//!   sender; nothing the peer says about itself is used.
//! * **Integrity and bounds.** Each request and response is one frame `[length][crc32][version][payload]`
//!   from `storage::codec`; the length is checked against `message_bytes_max` before anything is
//!   allocated, and a frame that fails its checksum or version is refused with a named error.
//! * **Multiplexing.** Requests to one peer share its connection and run concurrently on their own streams,
//!   so a large snapshot chunk does not hold up heartbeats.
//!
//! This module is the one part of `raft/` bound to tokio (quinn runs its I/O on it); everything above it
//! talks to a transport trait so the simulator can substitute its own network.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use placement::{NodeId, Topology};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage::codec::{self, FRAME_HEADER_BYTES, FrameHeader};

use crate::client_protocol::{ClientResponse, Envelope, EnvelopeResponse};
use crate::identity::{
    IdentityError, NodeIdentity, Peer, TlsConfigs, attested_peer, check_against_topology, server_name,
};
use crate::transport::{PeerRequest, PeerResponse, Transport, TransportError};

/// Tuning for one kind of link. quinn's defaults assume ~100 ms round trips and modest windows.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alives well inside the idle timeout keep an idle peer's connection warm.
    pub keep_alive: Duration,
    /// The first round-trip estimate, before any is measured: it sets the first retransmission timeout.
    pub initial_rtt: Duration,
    /// Flow-control window of one stream, and of the whole connection, in bytes.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// Largest payload of one request or response; larger frames are refused before allocation.
    pub message_bytes_max: u32,
    /// Concurrent requests one peer may have open towards us.
    pub concurrent_requests_max: u32,
    /// Deadline for one request: connect, send, and the peer's answer.
    pub request_timeout: Duration,
}

impl QuicConfig {
    /// Loopback and same-machine tests: sub-millisecond RTTs.
    pub fn loopback() -> QuicConfig {
        QuicConfig {
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(1),
            stream_window_bytes: 8 << 20,
            connection_window_bytes: 32 << 20,
            message_bytes_max: 16 << 20,
            concurrent_requests_max: 1024,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Between sites: 5–90 ms RTTs. Windows sized for ~1 Gbit/s × 90 ms (bandwidth-delay product ≈ 11 MB).
    pub fn cross_site() -> QuicConfig {
        QuicConfig {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            initial_rtt: Duration::from_millis(50),
            stream_window_bytes: 16 << 20,
            connection_window_bytes: 64 << 20,
            message_bytes_max: 16 << 20,
            concurrent_requests_max: 1024,
            request_timeout: Duration::from_secs(10),
        }
    }

    fn transport(&self) -> Result<TransportConfig, QuicError> {
        let mut transport = TransportConfig::default();
        let idle = self
            .idle_timeout
            .try_into()
            .map_err(|_| QuicError::Config("idle timeout out of range".into()))?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .initial_rtt(self.initial_rtt)
            .stream_receive_window(VarInt::from_u32(self.stream_window_bytes))
            .receive_window(VarInt::from_u32(self.connection_window_bytes))
            .send_window(u64::from(self.connection_window_bytes))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.concurrent_requests_max))
            .max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(transport)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("no address known for node {0}")]
    UnknownPeer(NodeId),
    #[error("transport configuration: {0}")]
    Config(String),
    #[error("can't bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to node {node} at {addr}: {reason}")]
    Connect {
        node: NodeId,
        addr: SocketAddr,
        reason: String,
    },
    #[error("peer identity refused: {0}")]
    Identity(#[from] IdentityError),
    #[error("dialled node {expected} but its certificate attests node {attested}")]
    WrongPeer { expected: NodeId, attested: NodeId },
    #[error("stream to node {node}: {reason}")]
    Stream { node: NodeId, reason: String },
    #[error("frame of {length} bytes exceeds the {bound}-byte bound")]
    TooLarge { length: u64, bound: u64 },
    #[error("bad frame: {0}")]
    Codec(#[from] storage::error::CodecError),
    #[error("request to node {0} timed out")]
    Timeout(NodeId),
    #[error("node {node} failed the request: {reason}")]
    Remote { node: NodeId, reason: String },
}

impl QuicError {
    /// True when trying again (later, or after reconnecting) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QuicError::Connect { .. } | QuicError::Stream { .. } | QuicError::Timeout(_)
        )
    }
}

/// Serves requests arriving from attested peers (nodes, or client services).
pub trait Handler<Request, Response>: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

/// The dialling side: connections to nodes by id, one per node, each checked to be the node it claims.
/// Used by every node for its peers and by the client library for the nodes it talks to.
pub struct Dialer {
    endpoint: Endpoint,
    /// With a topology, a dialled node's attested site is also checked against it (node to node); clients
    /// don't carry the topology and rely on the certificate chain and the node id in the server name.
    topology: Option<Arc<Topology>>,
    addresses: std::sync::RwLock<BTreeMap<NodeId, SocketAddr>>,
    connections: std::sync::Mutex<BTreeMap<NodeId, Connection>>,
    config: QuicConfig,
}

impl Dialer {
    /// A client-only endpoint presenting `tls.client` (e.g. a client service's certificate).
    pub fn client(
        tls: &TlsConfigs,
        addresses: BTreeMap<NodeId, SocketAddr>,
        config: QuicConfig,
    ) -> Result<Dialer, QuicError> {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
        let mut endpoint = Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config(tls, &config)?);
        Ok(Dialer::over(endpoint, None, addresses, config))
    }

    fn over(
        endpoint: Endpoint,
        topology: Option<Arc<Topology>>,
        addresses: BTreeMap<NodeId, SocketAddr>,
        config: QuicConfig,
    ) -> Dialer {
        let addresses = std::sync::RwLock::new(addresses);
        Dialer {
            endpoint,
            topology,
            addresses,
            connections: Default::default(),
            config,
        }
    }

    /// Records where `node` listens (its identity is still checked on every connection).
    pub fn learn_address(&self, node: NodeId, addr: SocketAddr) {
        self.addresses
            .write()
            .expect("address book lock")
            .insert(node, addr);
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
        let exchange = async {
            let connection = self.connection(to).await?;
            let stream_error = |reason: String| QuicError::Stream { node: to, reason };
            let frame_error = |error: FrameError| match error {
                FrameError::Transport(error) => error,
                FrameError::Io(reason) => stream_error(reason),
            };
            let (mut send, mut recv) = connection.open_bi().await.map_err(|error| {
                // A broken connection is dropped so the next request dials afresh.
                self.forget(to, &connection);
                stream_error(error.to_string())
            })?;
            write_frame(&mut send, request, self.config.message_bytes_max)
                .await
                .map_err(frame_error)?;
            let reply: Result<Response, String> = read_frame(&mut recv, self.config.message_bytes_max)
                .await
                .map_err(frame_error)?;
            reply.map_err(|reason| QuicError::Remote { node: to, reason })
        };
        match tokio::time::timeout(self.config.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QuicError::Timeout(to)),
        }
    }

    /// quinn's counters (packets, frames by type, round-trip estimate) of the live connection to `to`.
    pub fn connection_stats(&self, to: NodeId) -> Option<quinn::ConnectionStats> {
        let connections = self.connections.lock().expect("connection table lock");
        connections.get(&to).map(Connection::stats)
    }

    fn forget(&self, to: NodeId, broken: &Connection) {
        let mut connections = self.connections.lock().expect("connection table lock");
        if connections
            .get(&to)
            .is_some_and(|current| current.stable_id() == broken.stable_id())
        {
            connections.remove(&to);
        }
    }

    /// The live connection to `to`, dialling (and checking the peer's attested identity) if needed. The
    /// table lock is never held while dialling: a dead peer must not hold up requests to live ones.
    async fn connection(&self, to: NodeId) -> Result<Connection, QuicError> {
        if let Some(connection) = self.connections.lock().expect("connection table lock").get(&to)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let addr = self
            .addresses
            .read()
            .expect("address book lock")
            .get(&to)
            .copied();
        let addr = addr.ok_or(QuicError::UnknownPeer(to))?;
        let connect_error = |reason: String| QuicError::Connect {
            node: to,
            addr,
            reason,
        };
        let connecting = self
            .endpoint
            .connect(addr, &server_name(to))
            .map_err(|error| connect_error(error.to_string()))?;
        let connection = connecting
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        match peer_identity(&connection, self.topology.as_deref())? {
            Peer::Node(identity) if identity.node == to => {}
            Peer::Node(identity) => {
                connection.close(VarInt::from_u32(1), b"wrong peer");
                return Err(QuicError::WrongPeer {
                    expected: to,
                    attested: identity.node,
                });
            }
            Peer::Client(_) => {
                connection.close(VarInt::from_u32(1), b"not a node");
                return Err(QuicError::Identity(IdentityError::NoIdentity));
            }
        }
        let mut connections = self.connections.lock().expect("connection table lock");
        // Another request may have dialled meanwhile: keep one connection per peer.
        match connections.get(&to) {
            Some(existing) if existing.close_reason().is_none() => {
                connection.close(VarInt::from_u32(0), b"duplicate");
                Ok(existing.clone())
            }
            _ => {
                connections.insert(to, connection.clone());
                Ok(connection)
            }
        }
    }

    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
    }
}

/// One node's QUIC endpoint: a server for its peers (and clients) and a dialler of its peers.
pub struct QuicNode {
    me: NodeIdentity,
    dialer: Dialer,
    topology: Arc<Topology>,
}

fn client_config(tls: &TlsConfigs, config: &QuicConfig) -> Result<quinn::ClientConfig, QuicError> {
    let crypto = QuicClientConfig::try_from(tls.client.clone())
        .map_err(|error| QuicError::Config(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(config.transport()?));
    Ok(client)
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
        let mut endpoint =
            Endpoint::server(server, addr).map_err(|source| QuicError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config(tls, &config)?);
        let dialer = Dialer::over(endpoint, Some(topology.clone()), addresses, config);
        let node = Arc::new(QuicNode { me, dialer, topology });
        spawn_accept_loop(node.clone(), handler);
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
        self.dialer.learn_address(node, addr);
    }

    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.dialer
            .endpoint
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
        self.dialer.request(to, request).await
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.dialer.close();
    }
}

/// The attested identity of the peer at the other end of a verified connection; a node's is also checked
/// against the topology when there is one.
fn peer_identity(connection: &Connection, topology: Option<&Topology>) -> Result<Peer, IdentityError> {
    let certificates = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or(IdentityError::NoIdentity)?;
    let leaf = certificates.first().ok_or(IdentityError::NoIdentity)?;
    let peer = attested_peer(leaf.as_ref())?;
    if let (Peer::Node(identity), Some(topology)) = (&peer, topology) {
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
        while let Some(incoming) = node.dialer.endpoint.accept().await {
            let node = node.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                let peer = match peer_identity(&connection, Some(&node.topology)) {
                    Ok(peer) => peer,
                    Err(error) => {
                        tracing::warn!(remote = %connection.remote_address(), %error, "refusing peer");
                        connection.close(VarInt::from_u32(2), b"identity refused");
                        return;
                    }
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let (handler, peer) = (handler.clone(), peer.clone());
                    let bytes_max = node.dialer.config.message_bytes_max;
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
    let reply: Result<Response, String> = match read_frame::<Request>(&mut recv, bytes_max).await {
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

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error(transparent)]
    Transport(#[from] QuicError),
    #[error("{0}")]
    Io(String),
}

async fn write_frame<T: Serialize + ?Sized>(
    send: &mut SendStream,
    value: &T,
    bytes_max: u32,
) -> Result<(), FrameError> {
    let mut frame = Vec::new();
    codec::encode_frame(value, None::<&()>, bytes_max as usize, &mut frame).map_err(QuicError::Codec)?;
    send.write_all(&frame)
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    send.finish().map_err(|error| FrameError::Io(error.to_string()))?;
    Ok(())
}

async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, bytes_max: u32) -> Result<T, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header)
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    let parsed = FrameHeader::parse(&header);
    if parsed.payload_len > bytes_max {
        // Bounded before allocating: a peer can't make us reserve what it claims.
        let error = QuicError::TooLarge {
            length: u64::from(parsed.payload_len),
            bound: u64::from(bytes_max),
        };
        return Err(error.into());
    }
    let mut frame = vec![0u8; parsed.frame_len() as usize];
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    recv.read_exact(&mut frame[FRAME_HEADER_BYTES..])
        .await
        .map_err(|error| FrameError::Io(error.to_string()))?;
    // One frame per stream: read the stream's end too. A stream dropped before its end was read makes
    // quinn send a STOP_SENDING, one extra packet each way per request (measured: a third of the
    // cluster's packets under single-client puts).
    match recv.read(&mut [0u8; 1]).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(FrameError::Io(format!(
                "the stream holds more than the {}-byte payload its frame header announced",
                parsed.payload_len
            )));
        }
        Err(error) => return Err(FrameError::Io(error.to_string())),
    }
    let payload = codec::open_frame(&frame).map_err(QuicError::Codec)?;
    Ok(codec::decode(payload).map_err(QuicError::Codec)?)
}

impl Transport for QuicNode {
    async fn send(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, TransportError> {
        let reply: Result<EnvelopeResponse, QuicError> = self.request(to, &Envelope::Peer(request)).await;
        match reply {
            Ok(EnvelopeResponse::Peer(response)) => Ok(response),
            Ok(EnvelopeResponse::Client(_)) => Err(TransportError::Refused {
                node: to,
                reason: "answered a Raft message with a client response".into(),
            }),
            Err(QuicError::Timeout(node)) => Err(TransportError::Timeout(node)),
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
