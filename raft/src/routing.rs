//! Which replica group holds a user's records: the user's jurisdiction, then a hash of the user id over that
//! jurisdiction's shard groups.
//!
//! Routing needs no directory of keys: it is a pure function of the user id and the list of groups fenced to
//! the jurisdiction, so no component ever holds a global index of raw keys. The hash and the user-to-shard
//! rule are `wire::routing`'s, which clients apply too.

use std::collections::BTreeMap;

use placement::{GroupId, GroupPolicy, Jurisdiction};
use wire::routing::shard_index;
pub use wire::routing::stable_hash;

/// The number openraft's storage knows a group by: a stable hash of its name.
pub fn group_number(group: &GroupId) -> u64 {
    stable_hash(group.0.as_bytes())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("no replica group is fenced to jurisdiction `{0}`")]
    NoGroup(String),
    #[error("groups `{first}` and `{second}` hash to the same group number: rename one")]
    Collision { first: GroupId, second: GroupId },
}

/// Shard groups per jurisdiction name, each list in group-name order: the topology's proposal of each
/// jurisdiction's shard map (the published map lives in the jurisdiction's directory group, see
/// [`crate::directory`]).
#[derive(Clone, Debug, Default)]
pub struct Router {
    shards: BTreeMap<String, Vec<GroupId>>,
    jurisdictions: BTreeMap<String, Jurisdiction>,
}

impl Router {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a GroupPolicy>) -> Result<Router, RoutingError> {
        let mut shards: BTreeMap<String, Vec<GroupId>> = BTreeMap::new();
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
            shards
                .entry(policy.jurisdiction.name().to_string())
                .or_default()
                .push(policy.group.clone());
        }
        for groups in shards.values_mut() {
            groups.sort();
        }
        Ok(Router {
            shards,
            jurisdictions,
        })
    }

    /// Every jurisdiction some group is fenced to, by name.
    pub fn jurisdictions(&self) -> impl Iterator<Item = (&String, &Jurisdiction)> {
        self.jurisdictions.iter()
    }

    /// The shard groups of one jurisdiction, in name order (never empty).
    pub fn shards_of(&self, jurisdiction: &str) -> Option<&Vec<GroupId>> {
        self.shards.get(jurisdiction).filter(|groups| !groups.is_empty())
    }

    /// Every jurisdiction with its shard groups, in name order.
    pub fn shards(&self) -> impl Iterator<Item = (&String, &Vec<GroupId>)> {
        self.shards.iter()
    }

    /// The group that holds `user_id`'s records in `jurisdiction`.
    pub fn route(&self, jurisdiction: &str, user_id: &str) -> Result<&GroupId, RoutingError> {
        let groups = self.shards.get(jurisdiction).filter(|groups| !groups.is_empty());
        let groups = groups.ok_or_else(|| RoutingError::NoGroup(jurisdiction.to_string()))?;
        Ok(&groups[shard_index(user_id, groups.len())])
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
}
