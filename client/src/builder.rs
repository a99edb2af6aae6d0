use std::collections::BTreeMap;
use std::net::SocketAddr;
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
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            endpoints: Vec::new(),
            tls: None,
            // Services store European users' data in Europe unless told otherwise.
            default_jurisdiction: "EEA".into(),
            timeout: Duration::from_secs(5),
            attempts_max: 16,
        }
    }
}

impl ClientBuilder {
    /// Nodes to talk to, as `nID@host:port` (the id is checked against the node's certificate).
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

    /// At most this many attempts per call (each a safe retry), within the deadline.
    pub fn attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = attempts.max(1);
        self
    }

    pub async fn build(self) -> Result<Client, ClientError> {
        let mut addresses = BTreeMap::new();
        for endpoint in &self.endpoints {
            let (node, addr) = parse_endpoint(endpoint)?;
            addresses.insert(node, addr);
        }
        if addresses.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let tls = self
            .tls
            .ok_or_else(|| ClientError::Tls("no TLS configuration: call .tls(..)".into()))?;
        let quic = QuicConfig {
            request_timeout: self.timeout,
            ..QuicConfig::loopback()
        };
        let nodes: Vec<u64> = addresses.keys().copied().collect();
        let dialer = Dialer::client(&tls.configs()?, addresses, quic)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        Client::connect(
            dialer,
            nodes,
            self.default_jurisdiction,
            self.timeout,
            self.attempts_max,
        )
        .await
    }
}

/// `n7@host:port` (or `7@host:port`): a node id and the address it listens on.
fn parse_endpoint(endpoint: &str) -> Result<(u64, SocketAddr), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        endpoint: endpoint.into(),
        reason: reason.into(),
    };
    let (node, addr) = endpoint.split_once('@').ok_or_else(|| invalid("missing `@`"))?;
    let node = node.trim();
    let node = node.strip_prefix('n').unwrap_or(node);
    let node: u64 = node.parse().map_err(|_| invalid("the node id is not a number"))?;
    let addr: SocketAddr = addr.parse().map_err(|_| invalid("not an IP address and port"))?;
    Ok((node, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_node() {
        assert_eq!(
            parse_endpoint("n3@127.0.0.1:7103").unwrap(),
            (3, "127.0.0.1:7103".parse().unwrap())
        );
        assert_eq!(parse_endpoint("3@[::1]:7103").unwrap().0, 3);
        for bad in ["127.0.0.1:7103", "nX@127.0.0.1:1", "n1@localhost", "n1@"] {
            assert!(
                matches!(parse_endpoint(bad), Err(ClientError::InvalidEndpoint { .. })),
                "{bad}"
            );
        }
    }
}
