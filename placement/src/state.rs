//! What the planner is told about the world: each group's current membership and leader, and which nodes are
//! down. Both are observations, not decisions, so they are plain data.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::membership::Membership;
use crate::policy::GroupId;
use crate::site::{NodeId, SiteName};
use crate::topology::Topology;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupState {
    pub membership: Membership,
    pub leader: Option<NodeId>,
}

/// The current placement of every group that exists. A group with a policy but no entry does not exist yet.
pub type Placement = BTreeMap<GroupId, GroupState>;

/// Which nodes are down. Everything not listed is up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    down: BTreeSet<NodeId>,
}

impl Health {
    pub fn all_up() -> Health {
        Health::default()
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        !self.down.contains(&node)
    }

    pub fn node_down(&mut self, node: NodeId) {
        self.down.insert(node);
    }

    pub fn node_up(&mut self, node: NodeId) {
        self.down.remove(&node);
    }

    /// A whole site lost: every node there is down.
    pub fn site_down(&mut self, topology: &Topology, site: &SiteName) {
        if let Some(site) = topology.site(site) {
            self.down.extend(site.nodes.iter().copied());
        }
    }

    pub fn site_up(&mut self, topology: &Topology, site: &SiteName) {
        if let Some(site) = topology.site(site) {
            for node in &site.nodes {
                self.down.remove(node);
            }
        }
    }

    pub fn down(&self) -> &BTreeSet<NodeId> {
        &self.down
    }
}
