//! A node's audit trail: an append-only log of what the node did and refused, that an auditor holding
//! only the cluster CA's certificate can check offline.
//!
//! What it guarantees:
//!
//! * **Tamper-evident.** Each entry carries the SHA-256 of the one before it and is signed with the
//!   node's certificate key; each segment file carries that certificate. [`verify`] checks the
//!   certificate against the CA, every signature against the certificate, and every link, and names the
//!   first entry that is missing, altered, out of order or not signed by the node, by its position.
//! * **Durable as the Raft log.** An entry is acknowledged ([`AuditLog::append`] returns, a [`Durable`]
//!   completes) only after an `fdatasync` that covers it; a crash leaves at most an unacknowledged torn
//!   tail, which the next open cuts and records.
//! * **Checksummed, versioned, bounded.** Records are `wire`'s frames (crc32 and version), the trail has
//!   its own format number, and every length is bounded before anything is allocated for it.
//! * **Rotated without a gap.** A full segment is closed and the next one's header holds the last entry's
//!   hash; so does a segment started for a renewed certificate.
//!
//! What it does not guarantee: whoever holds the node's key can rewrite the whole trail and sign it
//! again. Shipping entries off the node as they are written ([`read_entries`], `domicile audit export`)
//! and keeping the last sequence and hash a monitor saw ([`VerifyOptions::expect_entries`]) is what
//! makes that visible, and what shows a trail cut at an entry boundary.
//!
//! The crate reads no clock (the node passes one in) and draws randomness only to sign, on the writer's
//! own thread; code the simulator runs never touches it (`raft` holds a sink trait, with an in-memory
//! implementation for the simulator).

pub mod entry;
pub mod event;
pub mod key;
pub mod log;
pub mod segment;
pub mod verify;

pub use entry::{Entry, Hash};
pub use event::Event;
pub use key::{ClusterCa, KeyError, NodeCertificate, SignatureAlgorithm, Signer};
pub use log::{AuditConfig, AuditError, AuditLog, Clock, Durable};
pub use verify::{Break, BreakKind, ReadEntry, Report, VerifyError, VerifyOptions, read_entries, verify};
