//! The openraft type configuration of a replica group.
//!
//! Everything in this crate except `quic` is generic over [`GroupConfig`], so the same host, network and
//! fence code runs with tokio in production ([`TokioConfig`]) and with the deterministic runtime in the
//! simulator (which declares its own config with `AsyncRuntime = openraft_rt_sim::SimRuntime`).

use storage::{Command, Response, StorageTypeConfig};

/// What a replica group's type config must be: our commands and responses, `u64` node ids, openraft's
/// entries (from `storage`), and no per-node metadata in the membership — where a node stands is the
/// topology's business and its certificate's, never something a membership entry could claim.
pub trait GroupConfig: StorageTypeConfig<Node = (), Term = u64> {}

impl<C> GroupConfig for C where C: StorageTypeConfig<Node = (), Term = u64> {}

openraft::declare_raft_types!(
    /// Production: replica groups on tokio.
    pub TokioConfig: D = Command, R = Response, Node = ()
);
