//! Domicile's wire protocol: what client services and nodes say to each other, and the byte format of
//! everything Domicile sends or stores.
//!
//! A client service links this crate, not the node's: the messages ([`client`], and the [`peer`] frames
//! the same envelope carries between nodes), the records and errors they return ([`record`]), the rule
//! that sends a user's calls to one of its jurisdiction's groups ([`routing`]), and the encoding of all of
//! it ([`codec`]: postcard inside frames `[length][crc32][version][payload]` that are bounded before
//! allocation and checksummed). The node's storage uses the same codec for its log, snapshots and
//! state-machine values, so there is one byte format to keep compatible.
//!
//! Compatibility is by construction, not by negotiation: postcard is not self-describing, so the order of
//! every struct's fields and every enum's variants is the format. Variants are only appended; a change
//! that can't be written that way needs a new format version ([`codec::FORMAT_VERSION`]).
//!
//! This crate does no I/O and knows neither openraft nor QUIC: peer messages carry openraft's messages as
//! opaque bytes, and the connection that carries frames is the `link` crate's.
//!
//! *Architecture invariant:* only `codec` imports postcard.

pub mod client;
pub mod codec;
pub mod peer;
pub mod record;
pub mod routing;
