//! The topology file (TOML): jurisdictions, sites and group policies, optionally a group's current
//! membership, grants, personal fields and declared round trips between sites; and the current-placement file the planner reads (memberships, leaders, nodes down).
//!
//! Parsing is pure (text in, model out). Every error carries the line and column of the value at fault so the
//! CLI can print `file:line:column: message`: a residency configuration is exactly the kind of file where a
//! vague error gets "fixed" by guessing.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::access::{Access, AccessPolicy};
use crate::country::Country;
use crate::jurisdiction::Jurisdictions;
use crate::membership::Membership;
use crate::policy::{FailureDomains, GroupId, GroupPolicy, LeaderPreference, ShardRole};
use crate::round_trips::{RoundTripError, RoundTripTable};
use crate::site::{NodeId, Site, SiteName};
use crate::state::{GroupState, Health, Placement};
use crate::topology::{Topology, TopologyError};

/// A configuration error at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    fn at(text: &str, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.len(), |newline| before.len() - newline - 1)
            + 1;
        ConfigError {
            line,
            column,
            message: message.into(),
        }
    }

    fn from_toml(text: &str, error: toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        ConfigError::at(text, span, error.message().to_string())
    }
}

/// A parsed topology file.
#[derive(Debug, Clone)]
pub struct TopologyFile {
    pub topology: Topology,
    pub policies: BTreeMap<GroupId, GroupPolicy>,
    /// Memberships declared in the file (`[group.current]`), e.g. a legacy group's members outside.
    pub current: Placement,
    /// Which services may read or write which jurisdiction (`[[grant]]`), and its personal fields
    /// (`[[personal_data]]`).
    pub access: AccessPolicy,
    /// Round trips between sites, as measured by the operator (`[[round_trip]]`): groups' Raft timing
    /// covers these instead of a guess from countries.
    pub round_trips: RoundTripTable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    jurisdiction: Vec<RawJurisdiction>,
    #[serde(default)]
    site: Vec<RawSite>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    grant: Vec<RawGrant>,
    #[serde(default)]
    personal_data: Vec<RawPersonalData>,
    #[serde(default)]
    round_trip: Vec<RawRoundTrip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoundTrip {
    sites: Spanned<Vec<Spanned<String>>>,
    ms: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    service: Spanned<String>,
    jurisdiction: Spanned<String>,
    access: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersonalData {
    jurisdiction: Spanned<String>,
    format: Spanned<String>,
    fields: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJurisdiction {
    name: Spanned<String>,
    expr: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: Spanned<String>,
    country: Spanned<String>,
    region: Option<String>,
    zone: Option<String>,
    nodes: Vec<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    jurisdiction: Spanned<String>,
    voters: Spanned<usize>,
    #[serde(default)]
    learners: usize,
    distinct_sites: Option<Spanned<usize>>,
    distinct_regions: Option<Spanned<usize>>,
    #[serde(default)]
    leader_preference: Vec<Spanned<String>>,
    /// `"even"` (the default: the group takes part in epoch 1's shard map) or `"reserve"` (it owns no
    /// range until a split or move gives it one).
    shard: Option<Spanned<String>>,
    current: Option<RawMembership>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    voters: Vec<Spanned<u64>>,
    #[serde(default)]
    learners: Vec<Spanned<u64>>,
    leader: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCurrent {
    #[serde(default)]
    group: Vec<RawCurrentGroup>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCurrentGroup {
    name: Spanned<String>,
    voters: Vec<Spanned<u64>>,
    #[serde(default)]
    learners: Vec<Spanned<u64>>,
    leader: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    down_nodes: Vec<Spanned<u64>>,
    #[serde(default)]
    down_sites: Vec<Spanned<String>>,
}

impl TopologyFile {
    /// A group's declared members outside its jurisdiction: the legacy members it may keep until removed.
    pub fn legacy_members(&self, group: &GroupId) -> std::collections::BTreeSet<NodeId> {
        let (Some(state), Some(policy)) = (self.current.get(group), self.policies.get(group)) else {
            return Default::default();
        };
        state
            .membership
            .members()
            .filter(|&node| !self.topology.is_inside(node, &policy.jurisdiction))
            .collect()
    }

    pub fn parse(text: &str) -> Result<TopologyFile, ConfigError> {
        let raw: RawTopology = toml::from_str(text).map_err(|error| ConfigError::from_toml(text, error))?;
        let error = |span: Range<usize>, message: String| ConfigError::at(text, span, message);

        let mut jurisdictions = Jurisdictions::default();
        for definition in &raw.jurisdiction {
            jurisdictions
                .define(definition.name.get_ref(), definition.expr.get_ref())
                .map_err(|reason| error(definition.expr.span(), format!("jurisdiction: {reason}")))?;
        }

        let mut topology = Topology::new(jurisdictions);
        for site in &raw.site {
            let country = Country::parse(site.country.get_ref()).map_err(|reason| {
                error(
                    site.country.span(),
                    format!("site `{}`: {reason}", site.name.get_ref()),
                )
            })?;
            let parsed = Site {
                name: SiteName(site.name.get_ref().clone()),
                country,
                region: site.region.clone(),
                zone: site.zone.clone(),
                nodes: site.nodes.iter().map(|node| NodeId(*node.get_ref())).collect(),
            };
            topology.add_site(parsed).map_err(|reason| {
                let span = match &reason {
                    TopologyError::DuplicateSite(_) => site.name.span(),
                    TopologyError::DuplicateNode { node, .. } => site
                        .nodes
                        .iter()
                        .rev()
                        .find(|raw| *raw.get_ref() == node.0)
                        .map_or(site.name.span(), |raw| raw.span()),
                };
                error(span, reason.to_string())
            })?;
        }

        let mut policies = BTreeMap::new();
        let mut current = Placement::new();
        for group in &raw.group {
            let policy = parse_policy(text, &topology, group)?;
            if policies.contains_key(&policy.group) {
                return Err(error(
                    group.name.span(),
                    format!("group `{}` is defined twice", policy.group),
                ));
            }
            if let Some(membership) = &group.current {
                let state = parse_membership(
                    text,
                    &topology,
                    &policy.group,
                    &membership.voters,
                    &membership.learners,
                    &membership.leader,
                )?;
                current.insert(policy.group.clone(), state);
            }
            policies.insert(policy.group.clone(), policy);
        }
        if let Some(group) = raw.group.iter().find(|group| {
            let id = GroupId(group.name.get_ref().clone());
            let jurisdiction = policies[&id].jurisdiction.name();
            !policies
                .values()
                .any(|policy| policy.jurisdiction.name() == jurisdiction && policy.shard == ShardRole::Even)
        }) {
            let id = GroupId(group.name.get_ref().clone());
            return Err(error(
                group
                    .shard
                    .as_ref()
                    .map_or(group.name.span(), |shard| shard.span()),
                format!(
                    "group `{id}`: every group of `{}` is a reserve: its first shard map needs a group that \
                     is not (`shard = \"even\"`, the default)",
                    policies[&id].jurisdiction.name()
                ),
            ));
        }
        let access = parse_access(text, &policies, &raw)?;
        let round_trips = parse_round_trips(text, &topology, &raw.round_trip)?;
        Ok(TopologyFile {
            topology,
            policies,
            current,
            access,
            round_trips,
        })
    }

    /// Parses a current-placement file against this topology: memberships replace those declared in the
    /// topology file, group by group; `[health]` lists nodes and sites that are down.
    pub fn parse_current(&self, text: &str) -> Result<(Placement, Health), ConfigError> {
        let raw: RawCurrent = toml::from_str(text).map_err(|error| ConfigError::from_toml(text, error))?;
        let mut placement = self.current.clone();
        for group in &raw.group {
            let id = GroupId(group.name.get_ref().clone());
            if !self.policies.contains_key(&id) {
                return Err(ConfigError::at(
                    text,
                    group.name.span(),
                    format!("group `{id}` has no policy in the topology"),
                ));
            }
            let state = parse_membership(
                text,
                &self.topology,
                &id,
                &group.voters,
                &group.learners,
                &group.leader,
            )?;
            placement.insert(id, state);
        }
        let mut health = Health::all_up();
        for node in &raw.health.down_nodes {
            let id = known_node(text, &self.topology, node)?;
            health.node_down(id);
        }
        for site in &raw.health.down_sites {
            let name = SiteName(site.get_ref().clone());
            if self.topology.site(&name).is_none() {
                return Err(ConfigError::at(
                    text,
                    site.span(),
                    format!("unknown site `{name}`"),
                ));
            }
            health.site_down(&self.topology, &name);
        }
        Ok((placement, health))
    }
}

/// Grants and personal fields name a jurisdiction some group is fenced to (a typo would otherwise grant,
/// or protect, nothing) and a service as its client certificate spells it.
fn parse_access(
    text: &str,
    policies: &BTreeMap<GroupId, GroupPolicy>,
    raw: &RawTopology,
) -> Result<AccessPolicy, ConfigError> {
    let fenced: std::collections::BTreeSet<&str> = policies
        .values()
        .map(|policy| policy.jurisdiction.name())
        .collect();
    let known = |name: &Spanned<String>, what: &str| {
        if fenced.contains(name.get_ref().as_str()) {
            Ok(())
        } else {
            Err(ConfigError::at(
                text,
                name.span(),
                format!(
                    "{what}: no group is fenced to jurisdiction `{}` (groups are fenced to: {})",
                    name.get_ref(),
                    fenced.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    let label = |name: &Spanned<String>, what: &str| {
        if crate::site::is_label(name.get_ref()) {
            Ok(())
        } else {
            Err(ConfigError::at(
                text,
                name.span(),
                format!("{what} `{}`: use 1 to 63 of a-z, 0-9 and `-`", name.get_ref()),
            ))
        }
    };
    let mut access = AccessPolicy::default();
    for grant in &raw.grant {
        label(&grant.service, "grant: service")?;
        known(&grant.jurisdiction, "grant")?;
        let allowed = Access::parse(grant.access.get_ref()).ok_or_else(|| {
            ConfigError::at(
                text,
                grant.access.span(),
                format!(
                    "grant: access `{}` is not one of read, write, read-write",
                    grant.access.get_ref()
                ),
            )
        })?;
        access.grant(grant.service.get_ref(), grant.jurisdiction.get_ref(), allowed);
    }
    for personal in &raw.personal_data {
        known(&personal.jurisdiction, "personal_data")?;
        if personal.format.get_ref() != "json" {
            return Err(ConfigError::at(
                text,
                personal.format.span(),
                format!(
                    "personal_data: format `{}` is not supported (records as JSON objects: `json`)",
                    personal.format.get_ref()
                ),
            ));
        }
        if let Some(empty) = personal.fields.iter().find(|field| field.get_ref().is_empty()) {
            return Err(ConfigError::at(
                text,
                empty.span(),
                "personal_data: an empty field name",
            ));
        }
        access.declare_personal(
            personal.jurisdiction.get_ref(),
            personal.fields.iter().map(|field| field.get_ref().clone()),
        );
    }
    Ok(access)
}

fn parse_round_trips(
    text: &str,
    topology: &Topology,
    raw: &[RawRoundTrip],
) -> Result<RoundTripTable, ConfigError> {
    let mut table = RoundTripTable::default();
    for declared in raw {
        let [a, b] = declared.sites.get_ref().as_slice() else {
            return Err(ConfigError::at(
                text,
                declared.sites.span(),
                "round_trip: `sites` names exactly two sites",
            ));
        };
        for site in [a, b] {
            if topology.site(&SiteName(site.get_ref().clone())).is_none() {
                return Err(ConfigError::at(
                    text,
                    site.span(),
                    format!("round_trip: unknown site `{}`", site.get_ref()),
                ));
            }
        }
        table
            .declare(
                SiteName(a.get_ref().clone()),
                SiteName(b.get_ref().clone()),
                *declared.ms.get_ref(),
            )
            .map_err(|reason| {
                let span = match reason {
                    RoundTripError::OutOfRange { .. } => declared.ms.span(),
                    _ => declared.sites.span(),
                };
                ConfigError::at(text, span, format!("round_trip: {reason}"))
            })?;
    }
    Ok(table)
}

fn parse_policy(text: &str, topology: &Topology, group: &RawGroup) -> Result<GroupPolicy, ConfigError> {
    let id = GroupId(group.name.get_ref().clone());
    let jurisdiction = topology
        .jurisdictions()
        .resolve(group.jurisdiction.get_ref())
        .map_err(|reason| {
            ConfigError::at(text, group.jurisdiction.span(), format!("group `{id}`: {reason}"))
        })?;
    let voters = *group.voters.get_ref();
    let mut leader_preference = Vec::new();
    for entry in &group.leader_preference {
        let name = SiteName(entry.get_ref().clone());
        let preference = if topology.site(&name).is_some() {
            LeaderPreference::Site(name)
        } else if let Ok(country) = Country::parse(entry.get_ref()) {
            LeaderPreference::Country(country)
        } else {
            let message =
                format!("group `{id}`: leader preference `{name}` is neither a site nor a country code");
            return Err(ConfigError::at(text, entry.span(), message));
        };
        leader_preference.push(preference);
    }
    let shard = match group
        .shard
        .as_ref()
        .map(|shard| (shard.get_ref().as_str(), shard.span()))
    {
        None | Some(("even", _)) => ShardRole::Even,
        Some(("reserve", _)) => ShardRole::Reserve,
        Some((other, span)) => {
            let message =
                format!("group `{id}`: shard = `{other}` is neither \"even\" (the default) nor \"reserve\"");
            return Err(ConfigError::at(text, span, message));
        }
    };
    let policy = GroupPolicy {
        group: id,
        jurisdiction,
        voters,
        learners: group.learners,
        failure_domains: FailureDomains {
            distinct_sites_min: group
                .distinct_sites
                .as_ref()
                .map_or(voters, |sites| *sites.get_ref()),
            distinct_regions_min: group
                .distinct_regions
                .as_ref()
                .map_or(0, |regions| *regions.get_ref()),
        },
        leader_preference,
        shard,
    };
    policy.validate(topology).map_err(|reason| {
        use crate::policy::PolicyError::*;
        let span = match &reason {
            NoVoters { .. } | MoreVotersThanSites { .. } => group.voters.span(),
            DomainsExceedVoters { kind: "sites", .. } => group
                .distinct_sites
                .as_ref()
                .map_or(group.voters.span(), |s| s.span()),
            DomainsExceedVoters { .. } => group
                .distinct_regions
                .as_ref()
                .map_or(group.voters.span(), |s| s.span()),
            PreferredSiteOutside { .. } | PreferredCountryOutside { .. } => group
                .leader_preference
                .first()
                .map_or(group.name.span(), |entry| entry.span()),
        };
        let span = preference_span(group, &reason).unwrap_or(span);
        ConfigError::at(text, span, format!("configuration error: {reason}"))
    })?;
    Ok(policy)
}

/// The exact entry a leader-preference error is about, when there is one.
fn preference_span(group: &RawGroup, reason: &crate::policy::PolicyError) -> Option<Range<usize>> {
    use crate::policy::PolicyError::*;
    let wanted = match reason {
        PreferredSiteOutside { site, .. } => site.0.clone(),
        PreferredCountryOutside { country, .. } => country.to_string(),
        _ => return None,
    };
    group
        .leader_preference
        .iter()
        .find(|entry| *entry.get_ref() == wanted)
        .map(|entry| entry.span())
}

fn known_node(text: &str, topology: &Topology, node: &Spanned<u64>) -> Result<NodeId, ConfigError> {
    let id = NodeId(*node.get_ref());
    match topology.site_of(id) {
        Some(_) => Ok(id),
        None => Err(ConfigError::at(
            text,
            node.span(),
            format!("node {id} is not at any site of the topology"),
        )),
    }
}

fn parse_membership(
    text: &str,
    topology: &Topology,
    group: &GroupId,
    voters: &[Spanned<u64>],
    learners: &[Spanned<u64>],
    leader: &Option<Spanned<u64>>,
) -> Result<GroupState, ConfigError> {
    let mut membership = Membership::default();
    for node in voters {
        let id = known_node(text, topology, node)?;
        if !membership.voters.insert(id) {
            return Err(ConfigError::at(
                text,
                node.span(),
                format!("group `{group}`: voter {id} is listed twice"),
            ));
        }
    }
    for node in learners {
        let id = known_node(text, topology, node)?;
        if membership.contains(id) {
            return Err(ConfigError::at(
                text,
                node.span(),
                format!("group `{group}`: learner {id} is listed twice or is also a voter"),
            ));
        }
        membership.learners.insert(id);
    }
    if membership.voters.is_empty() {
        let span = voters
            .first()
            .or(learners.first())
            .map_or(0..0, |node| node.span());
        return Err(ConfigError::at(
            text,
            span,
            format!("group `{group}`: a current membership needs at least one voter"),
        ));
    }
    let leader = match leader {
        Some(node) => {
            let id = known_node(text, topology, node)?;
            if !membership.voters.contains(&id) {
                return Err(ConfigError::at(
                    text,
                    node.span(),
                    format!("group `{group}`: leader {id} is not one of its voters"),
                ));
            }
            Some(id)
        }
        None => None,
    };
    Ok(GroupState { membership, leader })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITES: &str = r#"[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [2]
"#;

    /// Parses `SITES` followed by `extra` and returns the error, whose line must be `line`.
    fn error_at(extra: &str, line: usize) -> String {
        let text = format!("{SITES}{extra}");
        let error = TopologyFile::parse(&text).expect_err("the file should be refused");
        assert_eq!(error.line, line, "wrong line for: {error}");
        error.message
    }

    #[test]
    fn round_trips_are_declared_between_two_known_sites() {
        let text = format!("{SITES}[[round_trip]]\nsites = [\"hamar\", \"dublin-a\"]\nms = 31\n");
        let file = TopologyFile::parse(&text).unwrap();
        let (dublin, hamar) = (SiteName("dublin-a".into()), SiteName("hamar".into()));
        assert_eq!(file.round_trips.get(&dublin, &hamar), Some(31));

        let message = error_at("[[round_trip]]\nsites = [\"hamar\", \"oslo\"]\nms = 5\n", 11);
        assert!(message.contains("unknown site `oslo`"), "{message}");
        let message = error_at("[[round_trip]]\nsites = [\"hamar\"]\nms = 5\n", 11);
        assert!(message.contains("exactly two"), "{message}");
        let message = error_at("[[round_trip]]\nsites = [\"hamar\", \"dublin-a\"]\nms = 0\n", 12);
        assert!(
            message.contains("0 ms") && message.contains("outside"),
            "{message}"
        );
        let twice = "[[round_trip]]\nsites = [\"hamar\", \"dublin-a\"]\nms = 30\n";
        let message = error_at(&format!("{twice}{}", twice.replace("30", "40")), 14);
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn the_example_topology_parses_with_a_legacy_group() {
        let file = TopologyFile::parse(include_str!("../../deploy/topology.example.toml")).unwrap();
        assert_eq!(file.topology.sites().count(), 6);
        assert_eq!(file.round_trips.iter().count(), 4);
        assert_eq!(file.policies.len(), 4);
        let legacy = &file.current[&GroupId("users-legacy".into())];
        assert!(
            legacy
                .membership
                .voters
                .iter()
                .all(|&node| file.topology.country_of(node).unwrap().as_str() == "US")
        );
        assert!(
            file.topology
                .jurisdictions()
                .get("EEA_GB_CH")
                .unwrap()
                .contains(Country::parse("CH").unwrap())
        );
    }

    #[test]
    fn bad_input_is_named_with_its_line() {
        let message = error_at("[[site]]\nname = \"london\"\ncountry = \"UK\"\nnodes = [3]\n", 12);
        assert!(message.contains("`UK`") && message.contains("GB"), "{message}");
        assert!(
            error_at("[[site]]\nname = \"hamar\"\ncountry = \"NO\"\nnodes = [3]\n", 11).contains("twice")
        );
        assert!(
            error_at(
                "[[site]]\nname = \"oslo\"\ncountry = \"NO\"\nnodes = [3, 1]\n",
                13
            )
            .contains("node n1")
        );
        let message = error_at(
            "[[group]]\nname = \"g\"\njurisdiction = \"EEA\"\nvoters = 3\n",
            13,
        );
        assert!(
            message.contains("3 voters") && message.contains("2 site"),
            "{message}"
        );
        let message = error_at("[[jurisdiction]]\nname = \"X\"\nexpr = \"EEA + MARS\"\n", 12);
        assert!(message.contains("MARS"), "{message}");
        let message = error_at(
            "[[group]]\nname = \"g\"\njurisdiction = \"EU\"\nvoters = 1\nleader_preference = [\"IE\", \"hamar\"]\n",
            14,
        );
        assert!(
            message.contains("configuration error")
                && message.contains("hamar")
                && message.contains("outside"),
            "{message}"
        );
        let message = error_at(
            "[[group]]\nname = \"g\"\njurisdiction = \"EU\"\nvoters = 1\nleader_preference = [\"NO\"]\n",
            14,
        );
        assert!(message.contains("NO") && message.contains("outside"), "{message}");
        let message = error_at(
            "[[group]]\nname = \"g\"\njurisdiction = \"EU + ATLANTIS\"\nvoters = 1\n",
            12,
        );
        assert!(message.contains("ATLANTIS"), "{message}");
        assert!(
            error_at(
                "[[group]]\nname = \"g\"\njurisdiction = \"EEA\"\nvoters = 1\nvoterz = 2\n",
                14
            )
            .contains("voterz")
        );
        assert!(error_at("[[group]]\nname = \"g\"\njurisdiction = \"EEA\"\nvoters = 1\n[[group]]\nname = \"g\"\njurisdiction = \"EEA\"\nvoters = 1\n", 15).contains("twice"));
        let message = error_at(
            "[[group]]\nname = \"g\"\njurisdiction = \"EEA\"\nvoters = 1\n[group.current]\nvoters = [1, 7]\n",
            15,
        );
        assert!(message.contains("n7"), "{message}");
        assert!(
            !error_at("[[site]\n", 10).is_empty(),
            "TOML syntax errors carry their line too"
        );
    }

    #[test]
    fn the_current_file_overrides_memberships_and_marks_nodes_down() {
        let file = TopologyFile::parse(include_str!("../../deploy/topology.example.toml")).unwrap();
        let text = "[[group]]\nname = \"users-eu\"\nvoters = [1, 3, 7]\nleader = 3\n\n[health]\ndown_sites = [\"dublin-a\"]\ndown_nodes = [7]\n";
        let (placement, health) = file.parse_current(text).unwrap();
        assert_eq!(placement[&GroupId("users-eu".into())].leader, Some(NodeId(3)));
        assert!(
            placement.contains_key(&GroupId("users-legacy".into())),
            "topology memberships stay unless overridden"
        );
        assert!(
            !health.is_up(NodeId(1))
                && !health.is_up(NodeId(2))
                && !health.is_up(NodeId(7))
                && health.is_up(NodeId(3))
        );
        let error = file
            .parse_current("[[group]]\nname = \"users-eu\"\nvoters = [1]\nleader = 3\n")
            .unwrap_err();
        assert_eq!(error.line, 4);
        let error = file
            .parse_current("[health]\ndown_sites = [\"atlantis\"]\n")
            .unwrap_err();
        assert_eq!(error.line, 2);
    }

    const EU_GROUP: &str = "\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n";

    #[test]
    fn grants_and_personal_fields_are_read_per_jurisdiction() {
        let text = format!(
            "{SITES}{EU_GROUP}
[[grant]]
service = \"billing\"
jurisdiction = \"EU\"
access = \"read\"

[[personal_data]]
jurisdiction = \"EU\"
format = \"json\"
fields = [\"phone\", \"ip\"]
"
        );
        let file = TopologyFile::parse(&text).unwrap();
        assert_eq!(file.access.granted("billing", "EU"), Access::READ);
        assert_eq!(file.access.granted("search", "EU"), Access::default());
        let personal = &file.access.personal_fields("EU").unwrap().fields;
        assert_eq!(
            personal.iter().map(String::as_str).collect::<Vec<_>>(),
            ["ip", "phone"]
        );
        assert_eq!(
            TopologyFile::parse(SITES).unwrap().access,
            AccessPolicy::default()
        );
    }

    #[test]
    fn a_grant_names_a_fenced_jurisdiction_a_service_and_an_access() {
        let grant = |service: &str, jurisdiction: &str, access: &str| {
            format!(
                "{EU_GROUP}\n[[grant]]\nservice = \"{service}\"\njurisdiction = \"{jurisdiction}\"\naccess = \"{access}\"\n"
            )
        };
        // Line 17 is the grant's service, 18 its jurisdiction, 19 its access.
        assert!(
            error_at(&grant("billing", "EEA", "read"), 18)
                .contains("no group is fenced to jurisdiction `EEA`")
        );
        assert!(error_at(&grant("Billing", "EU", "read"), 17).contains("service `Billing`"));
        assert!(error_at(&grant("billing", "EU", "admin"), 19).contains("access `admin`"));
        let personal = format!(
            "{EU_GROUP}\n[[personal_data]]\njurisdiction = \"EU\"\nformat = \"xml\"\nfields = [\"phone\"]\n"
        );
        assert!(error_at(&personal, 18).contains("format `xml`"));
    }

    #[test]
    fn a_reserve_group_is_declared_by_shard_and_a_bad_value_is_named_at_its_line() {
        let groups = "[[group]]\nname = \"a\"\njurisdiction = \"EEA\"\nvoters = 1\n\
                      [[group]]\nname = \"b\"\njurisdiction = \"EEA\"\nvoters = 1\nshard = \"reserve\"\n";
        let file = TopologyFile::parse(&format!("{SITES}{groups}")).unwrap();
        let role = |name: &str| file.policies[&GroupId(name.into())].shard;
        assert_eq!((role("a"), role("b")), (ShardRole::Even, ShardRole::Reserve));
        let message = error_at(&groups.replace("\"reserve\"", "\"spare\""), 18);
        assert!(message.contains("`spare` is neither"), "{message}");
        let only_reserves =
            "[[group]]\nname = \"a\"\njurisdiction = \"EEA\"\nvoters = 1\nshard = \"reserve\"\n";
        let message = error_at(only_reserves, 14);
        assert!(message.contains("every group of `EEA` is a reserve"), "{message}");
    }
}
