//! What can go wrong on a link, and whether trying again can help.

use std::net::SocketAddr;

use wire::codec::CodecError;

/// Node ids are Raft node ids, written `n7` as everywhere in Domicile.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("no address known for node n{0}")]
    UnknownPeer(u64),
    #[error("transport configuration: {0}")]
    Config(String),
    #[error("can't bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to node n{node} at {addr}: {reason}")]
    Connect {
        node: u64,
        addr: SocketAddr,
        reason: String,
    },
    /// The peer's certificate passed the handshake but not the dialler's or the server's own check of
    /// the identity it attests (`raft::identity::IdentityError`, for a node).
    #[error("peer identity refused: {0}")]
    Identity(Box<dyn std::error::Error + Send + Sync>),
    #[error("dialled node n{expected} but its certificate attests node n{attested}")]
    WrongPeer { expected: u64, attested: u64 },
    #[error("stream to node n{node}: {reason}")]
    Stream { node: u64, reason: String },
    #[error("frame of {length} bytes exceeds the {bound}-byte bound")]
    TooLarge { length: u64, bound: u64 },
    #[error("bad frame: {0}")]
    Codec(#[from] CodecError),
    #[error("request to node n{0} timed out")]
    Timeout(u64),
    #[error("node n{node} failed the request: {reason}")]
    Remote { node: u64, reason: String },
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
