//! The simulator's openraft type configuration: production's commands and responses, on the
//! deterministic runtime with a clock per node ([`crate::clock`]).

use storage::{Command, Response};

openraft::declare_raft_types!(
    /// Replica groups on `openraft-rt-sim`: one thread, a virtual clock read through each node's own
    /// skewed, drifting clock, seeded randomness.
    pub SimConfig: D = Command, R = Response, Node = (), LeaderId = raft::config::StandardLeaderId,
        AsyncRuntime = crate::clock::NodeClockRuntime
);
