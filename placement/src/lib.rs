//! Placement: where a replica group's replicas and leader may live, and the fence that refuses everything
//! else.
//!
//! The model is small: [`Site`]s stand in [`Country`]s and hold nodes; a [`Jurisdiction`] is a set of
//! countries; a [`GroupPolicy`] fences a replica group to one jurisdiction and says how it wants to be
//! replicated. [`Fence`] decides whether a membership, a leader or a replication target is allowed, and is
//! the only maker of [`FencedMembership`]. [`plan`] computes the steps that make every group compliant.
//!
//! ```
//! use placement::{Fence, Membership, NodeId, RefusalReason, TopologyFile};
//!
//! let file = TopologyFile::parse(r#"
//!     [[site]]
//!     name = "dublin"
//!     country = "IE"
//!     nodes = [1]
//!
//!     [[site]]
//!     name = "hamar"
//!     country = "NO"
//!     nodes = [2]
//!
//!     [[group]]
//!     name = "users-eu"
//!     jurisdiction = "EU"
//!     voters = 1
//! "#).unwrap();
//! let policy = &file.policies[&placement::GroupId("users-eu".into())];
//! let current = Membership::new([NodeId(1)], []);
//! // Norway is in the EEA, not in the EU: Hamar may not hold EU-only data.
//! let with_hamar = Membership::new([NodeId(1)], [NodeId(2)]);
//! let refusal = Fence::admit(&file.topology, policy, &current, &with_hamar).unwrap_err();
//! assert_eq!(refusal.reason, RefusalReason::OutsideJurisdiction);
//! assert_eq!(refusal.country.unwrap().as_str(), "NO");
//! ```
//!
//! This crate is pure: no I/O, no clock, no randomness, no hash-ordered iteration. Every function gives the
//! same answer for the same input, on every node and in the simulator — which is what lets the Raft layer,
//! the planner and the simulator all ask the fence the same question and get the same answer.

pub mod access;
pub mod country;
pub mod fence;
#[cfg(test)]
mod fixtures;
pub mod jurisdiction;
pub mod membership;
pub mod planner;
pub mod policy;
pub mod rebalance;
pub mod round_trips;
pub mod shard_map;
pub mod site;
pub mod split_trigger;
pub mod state;
pub mod topology;
pub mod topology_file;

pub use access::{Access, AccessPolicy, PersonalFields};
pub use country::{Country, CountryError};
pub use fence::{Fence, FencedLeader, FencedMembership, Refusal, RefusalReason};
pub use jurisdiction::{Jurisdiction, JurisdictionError, Jurisdictions};
pub use membership::Membership;
pub use planner::{GroupReport, Plan, PlanError, Problem, Step, plan};
pub use policy::{FailureDomains, GroupId, GroupPolicy, LeaderPreference, PolicyError, ShardRole};
pub use rebalance::{rebalance, rebalance_by_cost};
pub use round_trips::{RoundTripError, RoundTripTable};
pub use site::{NodeId, Site, SiteName};
pub use state::{GroupState, Health, Placement};
pub use topology::{Topology, TopologyError};
pub use topology_file::{ConfigError, TopologyFile};
