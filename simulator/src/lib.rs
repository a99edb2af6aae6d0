//! Domicile's deterministic simulator: the real `raft` hosts (groups, fence, planner steps, client
//! routing) on openraft's deterministic runtime, with a simulated network, disks and clocks, a fault
//! injector and checkers.
//!
//! One seed fixes everything: the runtime's scheduling and timers (`openraft-rt-sim`), and every
//! latency, loss, crash, partition and client operation (the simulator's own [`prng::Prng`]). The same
//! seed gives the same trace, and so the same `trace_hash`, in any process.

pub mod bulk;
pub mod checkers;
pub mod cli;
pub mod clock;
pub mod config;
pub mod disk;
pub mod growth;
pub mod history;
pub mod html;
pub mod network;
pub mod orchestrator;
pub mod prng;
pub mod scenario;
pub mod stores;
pub mod summary;
pub mod timeline;
pub mod trace;
pub mod workload;
pub mod world;
