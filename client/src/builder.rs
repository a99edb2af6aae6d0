use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use link::{Dialer, QuicConfig};

use crate::call::Client;
use crate::{ClientError, ClientTls};

pub struct ClientBuilder {
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
    default_jurisdiction: String,
    timeout: Duration,
    attempts_max: u32,
    liveness_timeout: Duration,
    backoff_seed: Option<u64>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            endpoints: Vec::new(),
            tls: None,
            // Services store European users' data in Europe unless told otherwise.
            default_jurisdiction: "EEA".into(),
            timeout: Duration::from_secs(5),
            // The deadline bounds a call; a count would end it early while a group elects its leader.
            attempts_max: u32::MAX,
            liveness_timeout: Duration::from_secs(2),
            backoff_seed: None,
        }
    }
}

impl ClientBuilder {
    /// Nodes to talk to, as `nID@address:port` or `nID@host-name:port` (a name is looked up when the client
    /// is built; the id is checked against the node's certificate either way).
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.endpoints = endpoints
            .into_iter()
            .map(|endpoint| endpoint.as_ref().to_string())
            .collect();
        self
    }

    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The jurisdiction of calls that don't name one.
    pub fn default_jurisdiction(mut self, jurisdiction: impl Into<String>) -> Self {
        self.default_jurisdiction = jurisdiction.into();
        self
    }

    /// The deadline of every call, retries included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// At most this many attempts per call (each a safe retry), within the deadline. By default a call
    /// is bounded by its deadline alone.
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    /// A connection that hears nothing from its node for this long is lost (keep-alives go every quarter
    /// of it, so a live node always answers in time): a call waiting on it moves to another node, and the
    /// node is not asked again until a probe reaches it. Also bounds a dial to a node that does not
    /// answer. Default 2 s; keep it above the worst round trip to a node by several times.
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Seeds the jitter of the pauses between retries, so a test can replay them. By default each client
    /// draws its own seed: clients that lost the same leader at the same moment must not all retry at the
    /// same moments after it.
    pub fn backoff_seed(mut self, seed: u64) -> Self {
        self.backoff_seed = Some(seed);
        self
    }

    pub async fn build(self) -> Result<Client, ClientError> {
        let mut addresses = BTreeMap::new();
        for endpoint in &self.endpoints {
            let (node, addr) = parse_endpoint(endpoint)?;
            addresses.insert(node, resolve(endpoint, addr).await?);
        }
        if addresses.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let tls = self
            .tls
            .ok_or_else(|| ClientError::Tls("no TLS configuration: call .tls(..)".into()))?;
        let quic = QuicConfig {
            request_timeout: self.timeout,
            idle_timeout: self.liveness_timeout,
            keep_alive: self.liveness_timeout / 4,
            ..QuicConfig::loopback()
        };
        let nodes: Vec<u64> = addresses.keys().copied().collect();
        let dialer = Dialer::client(&tls.configs()?, addresses, quic)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        Client::connect(
            Arc::new(dialer),
            nodes,
            self.default_jurisdiction,
            self.timeout,
            self.attempts_max,
            self.backoff_seed
                .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
        )
        .await
    }
}

/// `n7@host:port` (or `7@host:port`): a node id and the address it listens on.
/// Where an endpoint says a node is: an address, or a host name to look up (a Kubernetes Service's, a
/// Compose service's).
#[derive(Debug, PartialEq, Eq)]
enum NodeAddress {
    Ip(SocketAddr),
    Host { name: String, port: u16 },
}

fn parse_endpoint(endpoint: &str) -> Result<(u64, NodeAddress), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.into(),
        reason: reason.into(),
    };
    let (node, addr) = endpoint.split_once('@').ok_or_else(|| invalid("missing `@`"))?;
    let node = node.trim();
    let node = node.strip_prefix('n').unwrap_or(node);
    let node: u64 = node.parse().map_err(|_| invalid("the node id is not a number"))?;
    if let Ok(addr) = addr.parse::<SocketAddr>() {
        return Ok((node, NodeAddress::Ip(addr)));
    }
    let (name, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid("not an address or host name with a port"))?;
    let port: u16 = port.parse().map_err(|_| invalid("the port is not a number"))?;
    // A DNS name: labels of letters, digits and `-`, dot-separated, at most 253 characters. Anything
    // else (an IPv6 address without brackets, a stray character) is a typo, not a name to look up.
    let is_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(is_label) {
        return Err(invalid("not an IP address and port, nor a host name and port"));
    }
    let name = name.to_string();
    Ok((node, NodeAddress::Host { name, port }))
}

/// The socket address of a node: as given, or its host name's first IPv4 address, else its first (looked
/// up once, when the client is built). IPv4 first because a name such as `localhost` often has both, and
/// a node listening on an IPv4 address is not reached at the name's IPv6 one.
async fn resolve(endpoint: &str, address: NodeAddress) -> Result<SocketAddr, ClientError> {
    let (name, port) = match address {
        NodeAddress::Ip(addr) => return Ok(addr),
        NodeAddress::Host { name, port } => (name, port),
    };
    let unresolved = |reason: String| ClientError::InvalidEndpoint {
        endpoint: endpoint.into(),
        reason,
    };
    let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|error| unresolved(format!("can't look up `{name}`: {error}")))?
        .collect();
    found
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| unresolved(format!("`{name}` has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_node() {
        assert_eq!(
            parse_endpoint("n3@127.0.0.1:7103").unwrap(),
            (3, NodeAddress::Ip("127.0.0.1:7103".parse().unwrap()))
        );
        assert_eq!(parse_endpoint("3@[::1]:7103").unwrap().0, 3);
        let name = "dublin-b-0.domicile.eu.svc".to_string();
        assert_eq!(
            parse_endpoint("n2@dublin-b-0.domicile.eu.svc:7101").unwrap(),
            (2, NodeAddress::Host { name, port: 7101 })
        );
        for bad in [
            "127.0.0.1:7103",
            "nX@127.0.0.1:1",
            "n1@localhost",
            "n1@",
            "n1@localhost:port",
            "n1@::1:7101",
            "n1@bad_name:7101",
            "n1@:7101",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(ClientError::InvalidEndpoint { .. })),
                "{bad}"
            );
        }
    }
}
