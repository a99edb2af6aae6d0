//! Replica groups on the wire.
//!
//! A [`host::Host`] runs the openraft groups placed on one node over `storage`, and talks to other hosts
//! through a [`transport::Transport`]: QUIC with mutual TLS in production ([`quic`]), a simulated network in
//! the simulator. Peers learn each other's site from the verified certificate ([`identity`]), never from
//! what a peer says. The residency fence is enforced at three points ([`residency`]): on membership and
//! leadership changes, on every message carrying a group's data as it leaves, and on every message as it
//! arrives. Keys route to groups by jurisdiction and a stable hash of the user id ([`routing`]). Every
//! refusal, admitted change, observed leadership and purge is recorded in the node's audit trail
//! ([`audit`]).
//!
//! Everything here except `quic` is generic over openraft's runtime ([`config::GroupConfig`]) and uses no
//! tokio spawn, wall clock or OS randomness directly, so the simulator runs the same code.

pub mod append_pipeline;
pub mod append_split;
pub mod audit;
pub mod bootstrap;
pub mod client_access;
pub mod client_protocol;
pub mod config;
pub mod directory;
pub mod fault;
pub mod host;
pub mod identity;
pub mod local_cluster;
pub mod map_change;
pub mod message;
pub mod network;
pub mod prompt_election;
pub mod pseudonym;
pub mod purge;
pub mod quic;
pub mod range_copy;
pub mod repair;
pub mod residency;
pub mod routing;
pub mod service;
pub mod session_clock;
pub mod sim;
pub mod stores;
pub mod transport;
