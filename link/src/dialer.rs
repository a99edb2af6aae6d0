//! The dialling side of a link: connections to nodes by id, one per node, each checked to be the node
//! it claims.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, ConnectionError, Endpoint, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{FrameError, Reply, read_frame, write_frame};
use crate::tls::{TlsConfigs, server_name};
use crate::{QuicConfig, QuicError};

/// What a dialler checks of a node's certificate beyond the TLS handshake. The handshake has already
/// verified the chain to the cluster CA and that the certificate is a server's for
/// `node-N.domicile.internal` ([`server_name`]), which names the node id: a client service needs no more.
/// A node also reads the identity the certificate attests and checks it against its topology
/// (`raft::quic`).
pub trait PeerCheck: Send + Sync + 'static {
    /// Accepts the peer of a fresh, verified `connection` as node `node`, or says why not.
    fn check(&self, node: u64, connection: &Connection) -> Result<(), QuicError>;
}

/// Connections to nodes by id, one per node, each checked to be the node it claims. Used by every node
/// for its peers and by the client library for the nodes it talks to.
pub struct Dialer {
    endpoint: Endpoint,
    /// A node's further check of whom it dialled; clients don't carry the topology and rely on the
    /// certificate chain and the node id in the server name.
    check: Option<Arc<dyn PeerCheck>>,
    addresses: std::sync::RwLock<BTreeMap<u64, SocketAddr>>,
    connections: std::sync::Mutex<BTreeMap<u64, Connection>>,
    config: QuicConfig,
    /// Set by [`Dialer::close`]: whoever keeps connections warm stops.
    closed: std::sync::atomic::AtomicBool,
}

impl Dialer {
    /// A client-only endpoint presenting `tls.client` (e.g. a client service's certificate).
    pub fn client(
        tls: &TlsConfigs,
        addresses: BTreeMap<u64, SocketAddr>,
        config: QuicConfig,
    ) -> Result<Dialer, QuicError> {
        let addr = local_address_for(addresses.values());
        let endpoint = Endpoint::client(addr).map_err(|source| QuicError::Bind { addr, source })?;
        Dialer::over(endpoint, tls, None, addresses, config)
    }

    /// Dials from `endpoint` (a node's, which also serves), presenting `tls.client` and applying `check`
    /// to every node it connects to.
    pub fn over(
        mut endpoint: Endpoint,
        tls: &TlsConfigs,
        check: Option<Arc<dyn PeerCheck>>,
        addresses: BTreeMap<u64, SocketAddr>,
        config: QuicConfig,
    ) -> Result<Dialer, QuicError> {
        let crypto = QuicClientConfig::try_from(tls.client.clone())
            .map_err(|error| QuicError::Config(error.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(config.transport()?));
        endpoint.set_default_client_config(client);
        Ok(Dialer {
            endpoint,
            check,
            addresses: std::sync::RwLock::new(addresses),
            connections: Default::default(),
            config,
            closed: Default::default(),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn config(&self) -> &QuicConfig {
        &self.config
    }

    /// Records where `node` listens (its identity is still checked on every connection). A node that
    /// moved (a restarted pod's new address) is dialled afresh at the next request: the connection to
    /// where it was is dropped from the table — it may still look open, to a process that is gone or,
    /// worse, to whatever took the old address — and requests already running on it finish there.
    pub fn learn_address(&self, node: u64, addr: SocketAddr) {
        let previous = self
            .addresses
            .write()
            .expect("address book lock")
            .insert(node, addr);
        if previous.is_some_and(|previous| previous != addr) {
            self.connections
                .lock()
                .expect("connection table lock")
                .remove(&node);
        }
    }

    /// Sends one request to `to` and waits for its response, within `config.request_timeout`.
    pub async fn request<Request, Response>(&self, to: u64, request: &Request) -> Result<Response, QuicError>
    where
        Request: Serialize + ?Sized,
        Response: DeserializeOwned,
    {
        self.request_within(to, request, self.config.request_timeout)
            .await
    }

    /// Sends one request to `to` and waits for its response, within `timeout` (for a request whose answer
    /// waits for long work on the peer; a peer that is gone is still noticed within the idle timeout).
    pub async fn request_within<Request, Response>(
        &self,
        to: u64,
        request: &Request,
        timeout: std::time::Duration,
    ) -> Result<Response, QuicError>
    where
        Request: Serialize + ?Sized,
        Response: DeserializeOwned,
    {
        let exchange = async {
            let mut resent = false;
            loop {
                let connection = self.connection(to).await?;
                match self.exchange(to, &connection, request).await {
                    // The peer reset the connection statelessly: it is a new process that knows nothing
                    // of it ([`QuicConfig::endpoint`]). Once more, on a new connection. Requests on a link
                    // may be sent twice (Raft's messages are idempotent, a client's writes carry their
                    // write id), and this one may have reached the old process before it died.
                    Err(_)
                        if !resent && matches!(connection.close_reason(), Some(ConnectionError::Reset)) =>
                    {
                        self.forget(to, &connection);
                        resent = true;
                    }
                    outcome => return outcome,
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QuicError::Timeout(to)),
        }
    }

    /// quinn's counters (packets, frames by type, round-trip estimate) of the live connection to `to`.
    pub fn connection_stats(&self, to: u64) -> Option<quinn::ConnectionStats> {
        let connections = self.connections.lock().expect("connection table lock");
        connections.get(&to).map(Connection::stats)
    }

    /// One request and its answer on `connection`.
    async fn exchange<Request, Response>(
        &self,
        to: u64,
        connection: &Connection,
        request: &Request,
    ) -> Result<Response, QuicError>
    where
        Request: Serialize + ?Sized,
        Response: DeserializeOwned,
    {
        let mut unanswered = Unanswered::new(self, to, connection);
        let stream_error = |reason: String| QuicError::Stream { node: to, reason };
        let frame_error = |error: FrameError| match error {
            FrameError::Transport(error) => error,
            FrameError::Io(reason) => stream_error(reason),
        };
        let (mut send, mut recv) = connection.open_bi().await.map_err(|error| {
            // A broken connection is dropped so the next request dials afresh.
            self.forget(to, connection);
            stream_error(error.to_string())
        })?;
        let written = write_frame(&mut send, request, self.config.message_bytes_max).await;
        if written.is_err() {
            // Not sent (too large to frame, or the connection reports itself broken).
            unanswered.settled();
        }
        written.map_err(frame_error)?;
        let reply = read_frame::<Reply<Response>>(&mut recv, self.config.message_bytes_max)
            .await
            .map_err(frame_error);
        unanswered.settled();
        reply?.map_err(|reason| QuicError::Remote { node: to, reason })
    }

    fn forget(&self, to: u64, broken: &Connection) {
        let mut connections = self.connections.lock().expect("connection table lock");
        if connections
            .get(&to)
            .is_some_and(|current| current.stable_id() == broken.stable_id())
        {
            connections.remove(&to);
        }
    }

    /// Dials `to` afresh, whatever the table holds, and keeps the new connection: a handshake answered
    /// proves the node is up now, where a cached connection to a node that died looks open until its idle
    /// timeout. A node that does not answer fails the dial after the transport's idle timeout. Requests
    /// already running on the old connection finish on it.
    pub async fn probe(&self, to: u64) -> Result<(), QuicError> {
        let connection = self.dial(to).await?;
        let mut connections = self.connections.lock().expect("connection table lock");
        connections.insert(to, connection);
        Ok(())
    }

    /// The nodes whose addresses this dialler knows, in id order.
    pub fn peers(&self) -> Vec<u64> {
        self.addresses
            .read()
            .expect("address book lock")
            .keys()
            .copied()
            .collect()
    }

    /// Whether the table holds a connection to `to` that has not closed.
    pub fn is_connected(&self, to: u64) -> bool {
        self.connections
            .lock()
            .expect("connection table lock")
            .get(&to)
            .is_some_and(|connection| connection.close_reason().is_none())
    }

    /// Makes sure a checked connection to `to` is open, dialling it if none is, and sends nothing on it:
    /// the next request to `to` then pays no handshake (see `raft::quic`'s connection warmer).
    pub async fn warm(&self, to: u64) -> Result<(), QuicError> {
        self.connection(to).await.map(|_| ())
    }

    /// The live connection to `to`, dialling (and checking the peer's attested identity) if needed. The
    /// table lock is never held while dialling: a dead peer must not hold up requests to live ones.
    async fn connection(&self, to: u64) -> Result<Connection, QuicError> {
        if let Some(connection) = self.connections.lock().expect("connection table lock").get(&to)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let connection = self.dial(to).await?;
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

    /// A new connection to `to`, its peer checked.
    async fn dial(&self, to: u64) -> Result<Connection, QuicError> {
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
        if let Some(check) = &self.check
            && let Err(error) = check.check(to, &connection)
        {
            connection.close(VarInt::from_u32(1), b"identity refused");
            return Err(error);
        }
        Ok(connection)
    }

    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
    }

    /// Whether [`Dialer::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A request on a connection, from when it is sent until its answer is read. Dropped unanswered (its
/// deadline passed, or its caller gave up on it: openraft drops a vote request after the election
/// timeout) while the peer sent nothing at all on the connection — no answer, not even an
/// acknowledgement of the request's packets — the connection is dead: it is dropped from the table, so
/// the next request dials afresh.
///
/// A peer whose process was killed and restarted at the same address is exactly that: it knows nothing
/// of the old connection, its stateless resets carry a key the dialler can't match, and the connection
/// looks open until its idle timeout (30 s between sites). Before, every request to the restarted peer
/// went into that connection and was lost, and a group whose only other survivor had restarted could
/// elect no one for 30 s (docs/performance.md, "Failover"). A live peer acknowledges a request's packets
/// within a round trip, and every caller's deadline is longer than that; a request given up sooner on
/// a live connection costs one handshake. Requests still running on the old connection finish on it.
struct Unanswered<'a> {
    dialer: &'a Dialer,
    to: u64,
    connection: Connection,
    received: u64,
    settled: bool,
}

impl<'a> Unanswered<'a> {
    fn new(dialer: &'a Dialer, to: u64, connection: &Connection) -> Unanswered<'a> {
        Unanswered {
            dialer,
            to,
            connection: connection.clone(),
            received: connection.stats().udp_rx.datagrams,
            settled: false,
        }
    }

    /// The peer answered (or the stream failed, which the connection reports itself).
    fn settled(&mut self) {
        self.settled = true;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.settled && self.connection.stats().udp_rx.datagrams == self.received {
            self.dialer.forget(self.to, &self.connection);
        }
    }
}

/// The address a client-only endpoint sends from: loopback when every node it will dial is on loopback,
/// else the unspecified address, so the kernel picks the interface that routes to each node (a socket
/// bound to 127.0.0.1 can reach no other host). Nodes of both families get a dual-stack IPv6 socket.
/// The port is ephemeral: nothing listens on it.
fn local_address_for<'a>(nodes: impl IntoIterator<Item = &'a SocketAddr>) -> SocketAddr {
    let nodes: Vec<&SocketAddr> = nodes.into_iter().collect();
    let all_loopback = nodes.iter().all(|addr| addr.ip().is_loopback());
    let ip: IpAddr = if nodes.iter().all(|addr| addr.is_ipv4()) {
        if all_loopback {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        }
    } else if nodes.iter().all(|addr| addr.is_ipv6()) && all_loopback {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(nodes: &[&str]) -> String {
        let nodes: Vec<SocketAddr> = nodes.iter().map(|addr| addr.parse().unwrap()).collect();
        local_address_for(&nodes).to_string()
    }

    #[test]
    fn a_client_sends_from_loopback_only_when_every_node_is_there() {
        assert_eq!(local(&["127.0.0.1:7101", "127.0.0.1:7102"]), "127.0.0.1:0");
        assert_eq!(local(&["[::1]:7101"]), "[::1]:0");
        assert_eq!(local(&["127.0.0.1:7101", "10.0.0.2:7101"]), "0.0.0.0:0");
        assert_eq!(local(&["[fd00::2]:7101"]), "[::]:0");
        assert_eq!(
            local(&["127.0.0.1:7101", "[::1]:7101"]),
            "[::]:0",
            "both families: dual stack"
        );
    }
}
