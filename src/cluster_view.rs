//! The cluster as `placement apply` and the evacuation verbs see it: every node's status read through the
//! admin endpoints (a node that does not answer, asked three times, counts as down), each group's freshest
//! view (its leader's own), and the topology file the nodes run with (`GET /topology`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, anyhow, bail};
use placement::{GroupId, GroupState, Health, Membership, NodeId, Placement, TopologyFile};

use crate::admin_api::{GroupView, NodeStatus};
use crate::operator_cli::{admin_of, admin_url, group_views, http, read_nodes};

pub async fn fetch_topology(admin: &str) -> anyhow::Result<String> {
    let url = admin_url(admin, "/topology");
    let response = http().get(&url).send().await.map_err(|error| {
        anyhow!(
            "can't reach the admin endpoint at {admin}: {error} (is the node running? is the address right?)"
        )
    })?;
    if !response.status().is_success() {
        bail!(
            "{url} answered {}: the node does not serve its topology (is it older than `placement apply`?)",
            response.status()
        );
    }
    response
        .text()
        .await
        .with_context(|| format!("{url}: unreadable answer"))
}

/// The nodes that answer but run with another topology file than the one planned with.
pub async fn topologies_disagreeing(cluster: &Cluster, text: &str) -> Vec<String> {
    let mut disagreeing = Vec::new();
    for node in &cluster.nodes {
        let Some(admin) = cluster.admin(NodeId(node.node)) else {
            continue;
        };
        if let Ok(theirs) = fetch_topology(&admin).await
            && theirs != text
        {
            disagreeing.push(format!("n{}", node.node));
        }
    }
    disagreeing
}

/// The cluster as its admin endpoints show it now.
pub struct Cluster {
    pub start: String,
    /// The nodes that answered.
    pub nodes: Vec<NodeStatus>,
    /// The peers that did not, and why.
    pub silent: Vec<(NodeId, String)>,
    /// Per group, the view of the replica with the highest term (the leader's, when it answers).
    pub views: BTreeMap<String, GroupView>,
}

impl Cluster {
    /// Every node's status, from `admin` and the peers it names. A peer that does not answer is asked
    /// twice more, 200 ms apart, before it counts as down: a busy node's read may fail once, and a node
    /// taken for down changes the plan.
    pub async fn read(admin: &str) -> anyhow::Result<Cluster> {
        let (nodes, silent) = read_nodes(admin, 3).await?;
        let silent = silent
            .into_iter()
            .map(|peer| (NodeId(peer.node), format!("{:#}", peer.error)))
            .collect();
        let mut views = group_views(&nodes);
        // A leader's own view is the freshest: a follower's may not show a change the leader just committed,
        // and planning from it would ask for that change again.
        for node in &nodes {
            for view in node.groups.iter().filter(|view| view.leader == Some(node.node)) {
                let fresher = views.get(&view.group).is_none_or(|known| view.term >= known.term);
                if fresher {
                    views.insert(view.group.clone(), view.clone());
                }
            }
        }
        Ok(Cluster {
            start: admin.to_string(),
            nodes,
            silent,
            views,
        })
    }

    pub fn answers(&self, node: NodeId) -> bool {
        self.nodes.iter().any(|status| status.node == node.0)
    }

    pub fn admin(&self, node: NodeId) -> Option<String> {
        admin_of(&self.nodes, &self.start, node.0)
    }

    pub fn membership(&self, group: &GroupId) -> Membership {
        self.views.get(&group.0).map(membership_of).unwrap_or_default()
    }

    /// The group's leader, if it answers.
    pub fn leader(&self, group: &GroupId) -> Option<NodeId> {
        self.views
            .get(&group.0)
            .and_then(|view| view.leader)
            .map(NodeId)
            .filter(|&leader| self.answers(leader))
    }

    pub fn placement(&self, file: &TopologyFile) -> Placement {
        let mut placement = Placement::new();
        for (name, view) in &self.views {
            let group = GroupId(name.clone());
            if !file.policies.contains_key(&group) {
                continue;
            }
            let membership = membership_of(view);
            // A leader that is not (or no longer) a voter is a view mid-change: no leader, for the planner.
            let leader = view
                .leader
                .map(NodeId)
                .filter(|leader| membership.voters.contains(leader));
            placement.insert(group, GroupState { membership, leader });
        }
        placement
    }

    /// Every node of the topology that did not answer is down; so are the nodes being drained.
    pub fn health(&self, file: &TopologyFile, draining: &BTreeSet<NodeId>) -> Health {
        let mut health = Health::all_up();
        for node in file.topology.nodes() {
            if !self.answers(node) || draining.contains(&node) {
                health.node_down(node);
            }
        }
        health
    }
}

pub fn membership_of(view: &GroupView) -> Membership {
    Membership::new(
        view.voters.iter().map(|member| NodeId(member.node)),
        view.learners.iter().map(|member| NodeId(member.node)),
    )
}
