//! Domicile's QUIC link to a node: what a client service needs to reach the cluster, and what a node
//! uses to reach its peers.
//!
//! What it guarantees to the layer above:
//!
//! * **Who.** Every connection is mutually authenticated against the cluster CA alone ([`tls_configs`]), and the
//!   dialled node must present a certificate for its own id (the server name `node-N.domicile.internal`
//!   is checked in the handshake). A node checks more — the identity its peer's certificate attests,
//!   against its topology — through a [`PeerCheck`] that the node's crate supplies.
//! * **Integrity and bounds.** Each request and response is one `wire::codec` frame
//!   `[length][crc32][version][payload]` on its own stream ([`frame`]); the length is checked against
//!   `message_bytes_max` before anything is allocated, and a frame that fails its checksum or version is
//!   refused with a named error.
//! * **Multiplexing.** Requests to one node share its connection and run concurrently on their own
//!   streams, so a large snapshot chunk does not hold up heartbeats.
//!
//! The serving side, which reads the attested identity of whoever connects and hands requests to the
//! node's host, is `raft::quic`'s. This crate knows neither openraft nor the placement model: it carries
//! the frames `wire` defines, to nodes named by their Raft node ids. It runs on tokio, as quinn does.

mod config;
mod dialer;
mod error;
pub mod frame;
mod tls;

pub use config::{QuicConfig, UDP_PAYLOAD_BYTES_ETHERNET, UDP_PAYLOAD_BYTES_MAX};
pub use dialer::{Dialer, PeerCheck};
pub use error::QuicError;
pub use tls::{CertifiedKey, TlsConfigs, TlsError, server_name, tls_configs};
