//! Tuning of a QUIC link, for one kind of path (same machine, or between sites).

use std::sync::Arc;
use std::time::Duration;

use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};

use crate::QuicError;

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
    /// Largest UDP payload this endpoint accepts and MTU discovery probes for (every connection starts
    /// at QUIC's 1,200 bytes and grows only to what the path is found to carry, so a high bound is safe
    /// on any path). Every packet costs quinn its own encryption, header protection, frame encoding and
    /// acknowledgement bookkeeping: on loopback, whose MTU is 64 KiB, Ethernet-sized packets made a
    /// snapshot transfer pay that 45 times as often as it needs to.
    pub udp_payload_bytes_max: u16,
}

/// quinn's bound on a UDP payload, and ours when a path may carry it (loopback).
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 65_527;

/// Ethernet's (1,500 bytes less the IPv6 and UDP headers): quinn's default bound.
pub const UDP_PAYLOAD_BYTES_ETHERNET: u16 = 1_452;

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
            udp_payload_bytes_max: UDP_PAYLOAD_BYTES_MAX,
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
            udp_payload_bytes_max: UDP_PAYLOAD_BYTES_ETHERNET,
        }
    }

    /// quinn's transport settings for these limits, on both the dialling and the serving side.
    pub fn transport(&self) -> Result<TransportConfig, QuicError> {
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
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(self.udp_payload_bytes_max);
        transport.mtu_discovery_config(Some(mtu));
        Ok(transport)
    }

    /// quinn's endpoint settings: the largest UDP payload accepted from peers (what a peer's MTU
    /// discovery may grow to, [`QuicConfig::udp_payload_bytes_max`]), never less than quinn's own
    /// default (1,472 bytes), so a link tuned for Ethernet accepts what it accepted before; and the
    /// stateless-reset and connection-id keys, from `secret` (the holder's [`TlsConfigs::endpoint_secret`]).
    ///
    /// **Why keys that outlive a restart.** A peer that dialled this node before it restarted still holds
    /// a connection to the old process. quinn's default keys are random per process, so the new one
    /// neither recognises the old connection ids as its own nor can sign a reset the peer would believe:
    /// it drops the packets, and the peer's requests vanish into the old connection until it is given up
    /// (a lost pre-vote cost a failover an election round, docs/performance.md). With the same keys, the
    /// restarted node answers the first packet with a stateless reset the peer accepts, the connection
    /// ends at once, and the request is sent again on a new one ([`crate::Dialer::request_within`]).
    ///
    /// [`TlsConfigs::endpoint_secret`]: crate::tls::TlsConfigs::endpoint_secret
    pub fn endpoint(&self, secret: &[u8; 32]) -> Result<EndpointConfig, QuicError> {
        let derive =
            |label: &[u8]| ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), label);
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"stateless reset").as_ref());
        let mut cid_key = [0; 8];
        cid_key.copy_from_slice(&derive(b"connection id").as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let mut endpoint = EndpointConfig::new(Arc::new(reset_key));
        endpoint.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let accepted = self
            .udp_payload_bytes_max
            .max(u16::try_from(endpoint.get_max_udp_payload_size()).unwrap_or(UDP_PAYLOAD_BYTES_MAX));
        endpoint
            .max_udp_payload_size(accepted)
            .map_err(|error| QuicError::Config(format!("UDP payload bound: {error}")))?;
        Ok(endpoint)
    }
}
