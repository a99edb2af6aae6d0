//! Replica groups on the wire.
//!
//! Today this crate holds the first piece of the transport: [`identity`], how a node proves which site (and
//! so which country) it stands in. The cluster CA signs each node's certificate with its node id, site and
//! country; peers learn each other's site from the verified certificate, never from what a peer says. The
//! residency fence's egress and ingress checks are built on that fact. Multi-group openraft and the QUIC
//! transport come next, over `storage`.

pub mod identity;
pub mod quic;
