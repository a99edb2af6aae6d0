//! The client wire protocol and the envelope that carries peer and client traffic on one endpoint.
//!
//! Defined in `wire`, the crate a client service links instead of this one; re-exported here for the
//! node's modules.

pub use wire::client::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency, Envelope, EnvelopeResponse,
};
