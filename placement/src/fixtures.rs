//! A small topology for unit tests: two Dublin sites, Hamar, Frankfurt and Ashburn.

use crate::{GroupId, GroupPolicy, Membership, NodeId, TopologyFile};

pub const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
region = "eu-west"
nodes = [1, 2]

[[site]]
name = "dublin-b"
country = "IE"
region = "eu-west"
nodes = [3, 4]

[[site]]
name = "hamar"
country = "NO"
region = "eu-north"
nodes = [5, 6]

[[site]]
name = "frankfurt"
country = "DE"
region = "eu-central"
nodes = [7]

[[site]]
name = "ashburn"
country = "US"
region = "us-east"
nodes = [9, 10, 11]

[[group]]
name = "eea"
jurisdiction = "EEA"
voters = 3
leader_preference = ["hamar"]

[[group]]
name = "eu"
jurisdiction = "EU"
voters = 3
leader_preference = ["dublin-a"]
"#;

pub fn file() -> TopologyFile {
    TopologyFile::parse(TOPOLOGY).expect("the fixture topology parses")
}

pub fn policy(file: &TopologyFile, group: &str) -> GroupPolicy {
    file.policies[&GroupId(group.into())].clone()
}

pub fn members(voters: &[u64], learners: &[u64]) -> Membership {
    Membership::new(
        voters.iter().map(|&id| NodeId(id)),
        learners.iter().map(|&id| NodeId(id)),
    )
}
