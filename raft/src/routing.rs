//! Which replica group holds a user's records: the user's jurisdiction, then a hash of the user id over that
//! jurisdiction's shard map.
//!
//! Routing needs no directory of keys: it is a pure function of the user id and the jurisdiction's map, so
//! no component ever holds a global index of raw keys. The hash and the routing position are
//! `wire::routing`'s, which clients apply too. The topology proposes each jurisdiction's first map (epoch
//! 1: its groups in name order, each given an equal range); the published map, which may have changed
//! since, is the directory's ([`crate::directory`]).

use std::collections::BTreeMap;

use placement::shard_map::ShardMap;
use placement::{GroupId, GroupPolicy, Jurisdiction, ShardRole};
use wire::routing::range_position;
pub use wire::routing::stable_hash;

/// The number openraft's storage knows a group by: a stable hash of its name.
pub fn group_number(group: &GroupId) -> u64 {
    stable_hash(group.0.as_bytes())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("no replica group is fenced to jurisdiction `{0}`")]
    NoGroup(String),
    #[error(
        "every group of `{jurisdiction}` is a reserve (`{group}`, ...): its first map needs one that is not"
    )]
    OnlyReserves { jurisdiction: String, group: GroupId },
    #[error("groups `{first}` and `{second}` hash to the same group number: rename one")]
    Collision { first: GroupId, second: GroupId },
}

/// Shard groups per jurisdiction name, each list in group-name order — the groups of epoch 1's map
/// first, then the reserves (`shard = "reserve"`: no range at epoch 1, a split's or a move's gainer):
/// the topology's proposal of each jurisdiction's shard map (the published map lives in the jurisdiction's directory group, see
/// [`crate::directory`]).
#[derive(Clone, Debug, Default)]
pub struct Router {
    shards: BTreeMap<String, Vec<GroupId>>,
    /// Each jurisdiction's proposed first map: `shards` but the reserves, cut into equal ranges, in name
    /// order.
    proposals: BTreeMap<String, ShardMap>,
    jurisdictions: BTreeMap<String, Jurisdiction>,
}

impl Router {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a GroupPolicy>) -> Result<Router, RoutingError> {
        let mut shards: BTreeMap<String, Vec<GroupId>> = BTreeMap::new();
        let mut reserves: BTreeMap<String, Vec<GroupId>> = BTreeMap::new();
        let mut numbers: BTreeMap<u64, GroupId> = BTreeMap::new();
        let mut jurisdictions = BTreeMap::new();
        for policy in policies {
            if let Some(first) = numbers.insert(group_number(&policy.group), policy.group.clone()) {
                return Err(RoutingError::Collision {
                    first,
                    second: policy.group.clone(),
                });
            }
            jurisdictions
                .entry(policy.jurisdiction.name().to_string())
                .or_insert_with(|| policy.jurisdiction.clone());
            let listed = match policy.shard {
                ShardRole::Even => &mut shards,
                ShardRole::Reserve => &mut reserves,
            };
            listed
                .entry(policy.jurisdiction.name().to_string())
                .or_default()
                .push(policy.group.clone());
        }
        let mut proposals = BTreeMap::new();
        for (jurisdiction, groups) in shards.iter_mut() {
            groups.sort();
            let proposal = ShardMap::even(jurisdiction, groups)
                .expect("a jurisdiction is listed once a group is fenced to it");
            proposals.insert(jurisdiction.clone(), proposal);
        }
        // The reserves follow the groups of the first map, so its first group stays the directory group.
        for (jurisdiction, mut reserve) in reserves {
            reserve.sort();
            let groups = shards
                .get_mut(&jurisdiction)
                .ok_or_else(|| RoutingError::OnlyReserves {
                    jurisdiction: jurisdiction.clone(),
                    group: reserve[0].clone(),
                })?;
            groups.extend(reserve);
        }
        Ok(Router {
            shards,
            proposals,
            jurisdictions,
        })
    }

    /// Every jurisdiction some group is fenced to, by name.
    pub fn jurisdictions(&self) -> impl Iterator<Item = (&String, &Jurisdiction)> {
        self.jurisdictions.iter()
    }

    /// The shard groups of one jurisdiction: those of its first map in name order (never empty; the
    /// first is its directory group), then its reserves in name order.
    pub fn shards_of(&self, jurisdiction: &str) -> Option<&Vec<GroupId>> {
        self.shards.get(jurisdiction).filter(|groups| !groups.is_empty())
    }

    /// Every jurisdiction with its shard groups, in name order.
    pub fn shards(&self) -> impl Iterator<Item = (&String, &Vec<GroupId>)> {
        self.shards.iter()
    }

    /// The topology's proposal of `jurisdiction`'s first map (epoch 1).
    pub fn proposal(&self, jurisdiction: &str) -> Option<&ShardMap> {
        self.proposals.get(jurisdiction)
    }

    /// The groups of `jurisdiction`'s first map (its shard groups but the reserves), in name order.
    pub fn first_map_groups(&self, jurisdiction: &str) -> Vec<GroupId> {
        self.proposals
            .get(jurisdiction)
            .map(|proposal| proposal.ranges().into_iter().map(|range| range.group).collect())
            .unwrap_or_default()
    }

    /// The group that holds `user_id`'s records in `jurisdiction` by the proposed first map: where the
    /// published map puts them until a map change moves their range.
    pub fn route(&self, jurisdiction: &str, user_id: &str) -> Result<&GroupId, RoutingError> {
        let proposal = self
            .proposals
            .get(jurisdiction)
            .ok_or_else(|| RoutingError::NoGroup(jurisdiction.to_string()))?;
        Ok(proposal.owner(range_position(user_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use placement::TopologyFile;

    #[test]
    fn users_spread_over_their_jurisdictions_shards_and_nowhere_else() {
        let text = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]
[[site]]
name = "ashburn"
country = "US"
nodes = [2]
[[group]]
name = "eu-0"
jurisdiction = "EU"
voters = 1
[[group]]
name = "eu-1"
jurisdiction = "EU"
voters = 1
[[group]]
name = "us-0"
jurisdiction = "US"
voters = 1
"#;
        let file = TopologyFile::parse(text).unwrap();
        let router = Router::new(file.policies.values()).unwrap();
        let mut used = BTreeMap::new();
        for user in 0..1000 {
            let group = router.route("EU", &format!("user-{user}")).unwrap();
            assert!(group.0.starts_with("eu-"), "EU users stay in EU groups");
            *used.entry(group.clone()).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 2, "both EU shards get users: {used:?}");
        assert!(used.values().all(|&count| count > 400), "roughly even: {used:?}");
        assert_eq!(
            router.route("EU", "alice"),
            router.route("EU", "alice"),
            "deterministic"
        );
        assert_eq!(
            router.route("EEA", "alice"),
            Err(RoutingError::NoGroup("EEA".into()))
        );
    }

    #[test]
    fn a_reserve_group_owns_no_range_of_the_first_map_and_follows_the_others() {
        let text = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]
[[group]]
name = "eu-0"
jurisdiction = "EU"
voters = 1
shard = "reserve"
[[group]]
name = "eu-1"
jurisdiction = "EU"
voters = 1
[[group]]
name = "eu-2"
jurisdiction = "EU"
voters = 1
"#;
        let file = TopologyFile::parse(text).unwrap();
        let router = Router::new(file.policies.values()).unwrap();
        let group = |name: &str| GroupId(name.into());
        assert_eq!(router.first_map_groups("EU"), vec![group("eu-1"), group("eu-2")]);
        // The directory group is the first map's first group, not the reserve that sorts before it.
        assert_eq!(
            router.shards_of("EU").unwrap(),
            &vec![group("eu-1"), group("eu-2"), group("eu-0")]
        );
        assert!((0..500).all(|user| router.route("EU", &format!("user-{user}")).unwrap() != &group("eu-0")));
    }
}
