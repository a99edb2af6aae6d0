//! The simulator's openraft type configuration: production's commands and responses, on the
//! deterministic runtime.

use storage::{Command, Response};

openraft::declare_raft_types!(
    /// Replica groups on `openraft-rt-sim`: one thread, a virtual clock, seeded randomness.
    pub SimConfig: D = Command, R = Response, Node = (), LeaderId = raft::config::StandardLeaderId,
        AsyncRuntime = openraft_rt_sim::SimRuntime
);
