//! Group policies: what a replica group asks of its placement.
//!
//! A policy names the jurisdiction the group's data is fenced to, how many voters and learners it wants, the
//! failure-domain rule its voters must satisfy, and an ordered leader preference. A policy is validated
//! against the topology when it is built, so a policy that can never be honoured — a preferred leader site
//! outside the jurisdiction, more voters than the jurisdiction has sites — is a configuration error at load
//! time, not a surprise during a failover.

use std::fmt;

use serde::Serialize;

use crate::country::Country;
use crate::jurisdiction::Jurisdiction;
use crate::site::{NodeId, SiteName};
use crate::topology::Topology;

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupId(pub String);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a leader preference: a site, or any site in a country.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderPreference {
    Site(SiteName),
    Country(Country),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureDomains {
    /// Voters must stand in at least this many distinct sites.
    pub distinct_sites_min: usize,
    /// Voters must stand in at least this many distinct regions (0: no rule).
    pub distinct_regions_min: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPolicy {
    pub group: GroupId,
    pub jurisdiction: Jurisdiction,
    pub voters: usize,
    pub learners: usize,
    pub failure_domains: FailureDomains,
    pub leader_preference: Vec<LeaderPreference>,
    /// Whether the group takes part in its jurisdiction's first shard map (`Even`, the default) or is
    /// created owning no range until a split or move gives it one (`Reserve`).
    pub shard: ShardRole,
}

/// A group's part in its jurisdiction's first shard map (`shard = "even" | "reserve"` in the topology).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardRole {
    /// One of the groups over which epoch 1's map spreads the positions evenly.
    #[default]
    Even,
    /// Placed and bootstrapped like any group, but given no range at epoch 1: a split's or a move's
    /// gainer, held ready.
    Reserve,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("group `{group}` asks for no voters: a group needs at least one")]
    NoVoters { group: GroupId },
    #[error(
        "group `{group}` asks for {voters} voters but jurisdiction `{jurisdiction}` has only {sites} site(s) in this topology"
    )]
    MoreVotersThanSites {
        group: GroupId,
        voters: usize,
        jurisdiction: String,
        sites: usize,
    },
    #[error("group `{group}` asks for voters in {wanted} distinct {kind} but has only {voters} voters")]
    DomainsExceedVoters {
        group: GroupId,
        wanted: usize,
        kind: &'static str,
        voters: usize,
    },
    #[error(
        "group `{group}` prefers leaders at site `{site}` in {country}, which is outside its jurisdiction `{jurisdiction}`"
    )]
    PreferredSiteOutside {
        group: GroupId,
        site: SiteName,
        country: Country,
        jurisdiction: String,
    },
    #[error(
        "group `{group}` prefers leaders in {country}, which is outside its jurisdiction `{jurisdiction}`"
    )]
    PreferredCountryOutside {
        group: GroupId,
        country: Country,
        jurisdiction: String,
    },
}

impl GroupPolicy {
    /// Checks the policy against the topology; the only way to get a policy the planner and fence accept.
    pub fn validate(&self, topology: &Topology) -> Result<(), PolicyError> {
        let group = self.group.clone();
        let jurisdiction = self.jurisdiction.name().to_string();
        if self.voters == 0 {
            return Err(PolicyError::NoVoters { group });
        }
        let sites = topology.sites_inside(&self.jurisdiction).count();
        if self.voters > sites {
            return Err(PolicyError::MoreVotersThanSites {
                group,
                voters: self.voters,
                jurisdiction,
                sites,
            });
        }
        let domains = &self.failure_domains;
        for (wanted, kind) in [
            (domains.distinct_sites_min, "sites"),
            (domains.distinct_regions_min, "regions"),
        ] {
            if wanted > self.voters {
                return Err(PolicyError::DomainsExceedVoters {
                    group,
                    wanted,
                    kind,
                    voters: self.voters,
                });
            }
        }
        for preference in &self.leader_preference {
            match preference {
                LeaderPreference::Site(site) => {
                    // The file parser has already resolved the name; an unknown site here is a caller bug.
                    let country = topology.site(site).map(|site| site.country);
                    let country = country.unwrap_or_else(|| panic!("preference names unknown site `{site}`"));
                    if !self.jurisdiction.contains(country) {
                        let site = site.clone();
                        return Err(PolicyError::PreferredSiteOutside {
                            group,
                            site,
                            country,
                            jurisdiction,
                        });
                    }
                }
                LeaderPreference::Country(country) => {
                    if !self.jurisdiction.contains(*country) {
                        let country = *country;
                        return Err(PolicyError::PreferredCountryOutside {
                            group,
                            country,
                            jurisdiction,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The rank of a node in the leader preference: 0 is most preferred; nodes matching no entry rank last.
    pub fn leader_rank(&self, topology: &Topology, node: NodeId) -> usize {
        let Some(site) = topology.site_of(node) else {
            return usize::MAX;
        };
        self.leader_preference
            .iter()
            .position(|preference| match preference {
                LeaderPreference::Site(name) => *name == site.name,
                LeaderPreference::Country(country) => *country == site.country,
            })
            .unwrap_or(self.leader_preference.len())
    }

    /// A majority of `voters` voters.
    pub fn quorum(voters: usize) -> usize {
        voters / 2 + 1
    }
}
