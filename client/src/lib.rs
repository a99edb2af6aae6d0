//! Domicile's client library: store and read user records in the jurisdiction they belong to.
//!
//! ```no_run
//! # async fn example() -> Result<(), client::ClientError> {
//! use std::time::Duration;
//! use client::{Client, ClientTls};
//!
//! let client = Client::builder()
//!     .endpoints(["n1@127.0.0.1:7101", "n2@127.0.0.1:7102", "n3@127.0.0.1:7103"])
//!     .tls(ClientTls::from_dir("certs", "billing")?)
//!     .default_jurisdiction("EEA")
//!     .timeout(Duration::from_secs(2))
//!     .build()
//!     .await?;
//! let revision = client.put("user-42", "profile", b"{\"name\":\"Ada\"}".to_vec()).await?;
//! let profile = client.get("user-42", "profile").await?;            // linearizable
//! let maybe_old = client.get("user-42", "profile").stale().await?;  // any replica, marked stale
//! client.in_jurisdiction("EU").put("user-7", "phone", b"+353...".to_vec()).await?;
//! # Ok(()) }
//! ```
//!
//! Guarantees: every call has a deadline (the builder's `timeout`) and fails with
//! [`ClientError::Timeout`] when it passes; writes carry a session id and a sequence number (each
//! concurrent call holds a session of its own, so `Arc<Client>` may be shared by many tasks), so a retry
//! after a lost reply is applied once; only such safe retries are made, with backoff, until the deadline;
//! a call follows leader hints to the right node; a node whose connection is lost (it heard nothing for
//! the builder's `liveness_timeout`) or that did not answer an attempt is left for the others until a
//! probe reaches it again, so a call in flight to a leader that dies moves on to the next one instead of
//! waiting out its deadline. Data goes only to the groups fenced to its
//! jurisdiction: when there is none, the call fails with [`ClientError::Residency`] instead of storing the
//! record anywhere else. Errors say whether a retry can help ([`ClientError::is_retryable`]).

// The client library is for tokio services and is never run by the simulator: it sleeps and reads the
// clock through tokio directly.
#![allow(clippy::disallowed_methods)]

mod builder;
mod call;
mod error;
mod tls;

pub use builder::ClientBuilder;
pub use call::{Client, Get, Scoped};
pub use error::ClientError;
pub use tls::ClientTls;
pub use wire::client::Consistency;
pub use wire::record::Record;
