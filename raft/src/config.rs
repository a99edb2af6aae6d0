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

/// Standard Raft leader ids: at most one leader per term (openraft's default "advanced" ids allow several
/// leaders in one term, told apart by node id). One leader per term is what operators, the simulator's
/// safety checker and the residency reasoning ("who led term 7, and where?") expect.
pub type StandardLeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>;

openraft::declare_raft_types!(
    /// Production: replica groups on tokio.
    pub TokioConfig: D = Command, R = Response, Node = (), LeaderId = StandardLeaderId
);

/// openraft's configuration for Domicile's groups, with the settings our storage's guarantees require.
///
/// `enable_leader_restore` is off: with it, a leader that restarts may resume leadership without an
/// election. Our state machine does not fsync every apply, and a leader whose fdatasync failed can come
/// back with a shorter log than a quorum committed — restored without an election, it would serve reads
/// from before an acknowledged write (the simulator found exactly that). An election makes it learn.
pub fn group_raft_config(
    cluster_name: &str,
    heartbeat_interval_ms: u64,
    election_timeout_min_ms: u64,
    election_timeout_max_ms: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: heartbeat_interval_ms,
        election_timeout_min: election_timeout_min_ms,
        election_timeout_max: election_timeout_max_ms,
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
}
