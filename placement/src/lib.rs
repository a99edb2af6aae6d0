//! Placement: where a replica group's replicas and leader may live, and the fence that refuses everything
//! else.
//!
//! The model is small: [`Site`]s stand in [`Country`]s and hold nodes; a [`Jurisdiction`] is a set of
//! countries; a [`GroupPolicy`] fences a replica group to one jurisdiction and says how it wants to be
//! replicated. [`Fence`] decides whether a membership, a leader or a replication target is allowed, and is
//! the only maker of [`FencedMembership`]. [`plan`] computes the steps that make every group compliant.
//!
//! This crate is pure: no I/O, no clock, no randomness, no hash-ordered iteration. Every function gives the
//! same answer for the same input, on every node and in the simulator — which is what lets the Raft layer,
//! the planner and the simulator all ask the fence the same question and get the same answer.

pub mod country;
pub mod fence;
#[cfg(test)]
mod fixtures;
pub mod jurisdiction;
pub mod membership;
pub mod planner;
pub mod policy;
pub mod site;
pub mod state;
pub mod topology;
pub mod topology_file;

pub use country::{Country, CountryError};
pub use fence::{Fence, FencedLeader, FencedMembership, Refusal, RefusalReason};
pub use jurisdiction::{Jurisdiction, JurisdictionError, Jurisdictions};
pub use membership::Membership;
pub use planner::{GroupReport, Plan, PlanError, Problem, Step, plan};
pub use policy::{FailureDomains, GroupId, GroupPolicy, LeaderPreference, PolicyError};
pub use site::{NodeId, Site, SiteName};
pub use state::{GroupState, Health, Placement};
pub use topology::{Topology, TopologyError};
pub use topology_file::{ConfigError, TopologyFile};
