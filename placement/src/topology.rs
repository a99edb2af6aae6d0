//! The topology: which sites exist, where each node stands, and the jurisdictions they can be fenced to.
//!
//! Built once from configuration and then only read. Construction checks the facts every later question
//! relies on: site names and node ids are unique, so "where is node n" has exactly one answer.

use std::collections::BTreeMap;

use crate::country::Country;
use crate::jurisdiction::{Jurisdiction, Jurisdictions};
use crate::site::{NodeId, Site, SiteName};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("site `{0}` is defined twice")]
    DuplicateSite(SiteName),
    #[error("node {node} is placed at both `{first}` and `{second}`")]
    DuplicateNode {
        node: NodeId,
        first: SiteName,
        second: SiteName,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Topology {
    sites: BTreeMap<SiteName, Site>,
    site_of_node: BTreeMap<NodeId, SiteName>,
    jurisdictions: Jurisdictions,
}

impl Topology {
    pub fn new(jurisdictions: Jurisdictions) -> Topology {
        Topology {
            sites: BTreeMap::new(),
            site_of_node: BTreeMap::new(),
            jurisdictions,
        }
    }

    pub fn add_site(&mut self, site: Site) -> Result<(), TopologyError> {
        if self.sites.contains_key(&site.name) {
            return Err(TopologyError::DuplicateSite(site.name));
        }
        // Check every node before inserting any, so a refused site leaves the topology unchanged.
        let mut seen = BTreeMap::new();
        for &node in &site.nodes {
            let earlier = self.site_of_node.get(&node).or_else(|| seen.get(&node).copied());
            if let Some(first) = earlier {
                return Err(TopologyError::DuplicateNode {
                    node,
                    first: first.clone(),
                    second: site.name.clone(),
                });
            }
            seen.insert(node, &site.name);
        }
        for &node in &site.nodes {
            self.site_of_node.insert(node, site.name.clone());
        }
        self.sites.insert(site.name.clone(), site);
        Ok(())
    }

    pub fn jurisdictions(&self) -> &Jurisdictions {
        &self.jurisdictions
    }

    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }

    pub fn site(&self, name: &SiteName) -> Option<&Site> {
        self.sites.get(name)
    }

    pub fn site_of(&self, node: NodeId) -> Option<&Site> {
        self.site_of_node.get(&node).map(|name| &self.sites[name])
    }

    pub fn country_of(&self, node: NodeId) -> Option<Country> {
        self.site_of(node).map(|site| site.country)
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.site_of_node.keys().copied()
    }

    /// True when the node is known and stands in a country of the jurisdiction. Unknown nodes are outside:
    /// the fence fails closed.
    pub fn is_inside(&self, node: NodeId, jurisdiction: &Jurisdiction) -> bool {
        self.country_of(node)
            .is_some_and(|country| jurisdiction.contains(country))
    }

    pub fn sites_inside<'a>(&'a self, jurisdiction: &'a Jurisdiction) -> impl Iterator<Item = &'a Site> + 'a {
        self.sites
            .values()
            .filter(|site| jurisdiction.contains(site.country))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, country: &str, nodes: &[u64]) -> Site {
        Site {
            name: SiteName(name.into()),
            country: Country::parse(country).unwrap(),
            region: None,
            zone: None,
            nodes: nodes.iter().map(|&id| NodeId(id)).collect(),
        }
    }

    #[test]
    fn duplicate_sites_and_nodes_are_refused_and_leave_the_topology_unchanged() {
        let mut topology = Topology::default();
        topology.add_site(site("dublin-a", "IE", &[1, 2])).unwrap();
        assert_eq!(
            topology.add_site(site("dublin-a", "IE", &[3])),
            Err(TopologyError::DuplicateSite(SiteName("dublin-a".into())))
        );
        assert!(matches!(
            topology.add_site(site("hamar", "NO", &[3, 2])),
            Err(TopologyError::DuplicateNode { node: NodeId(2), .. })
        ));
        assert!(
            topology.site_of(NodeId(3)).is_none(),
            "a refused site must not leave nodes behind"
        );
        assert!(matches!(
            topology.add_site(site("paris", "FR", &[4, 4])),
            Err(TopologyError::DuplicateNode { node: NodeId(4), .. })
        ));
    }

    #[test]
    fn hamar_is_inside_eea_and_outside_eu() {
        let mut topology = Topology::default();
        topology.add_site(site("hamar", "NO", &[7])).unwrap();
        assert!(topology.is_inside(NodeId(7), &Jurisdiction::eea()));
        assert!(!topology.is_inside(NodeId(7), &Jurisdiction::eu()));
        assert!(
            !topology.is_inside(NodeId(99), &Jurisdiction::eea()),
            "unknown nodes are outside"
        );
    }
}
