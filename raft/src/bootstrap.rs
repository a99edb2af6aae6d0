//! How a cluster's groups come into being from its topology file, the same way on every node.
//!
//! Each group starts with its declared membership (`[group.current]`: a legacy group is adopted as it
//! stands, its outside members marked legacy) or with the voters the pure planner would create it with.
//! Every node computes the same answer, opens the groups it belongs to, and the first inside voter of each
//! bootstraps it — through the fence, like every other membership.

use placement::{GroupPolicy, Health, Membership, PlanError, Step, TopologyFile};

use crate::config::GroupConfig;
use crate::host::{Host, HostError};
use crate::stores::Stores;
use crate::transport::Transport;

#[derive(Clone, Debug)]
pub struct InitialGroup {
    pub policy: GroupPolicy,
    pub membership: Membership,
    /// Declared in the topology (adopted as it stands) rather than created.
    pub adopted: bool,
}

/// Every group's initial membership; groups with no compliant placement are left out (and logged).
pub fn initial_placement(file: &TopologyFile) -> Result<Vec<InitialGroup>, PlanError> {
    let plan = placement::plan(&file.topology, &file.policies, &file.current, &Health::all_up())?;
    let mut groups = Vec::new();
    for (group, policy) in &file.policies {
        if let Some(state) = file.current.get(group) {
            groups.push(InitialGroup {
                policy: policy.clone(),
                membership: state.membership.clone(),
                adopted: true,
            });
            continue;
        }
        let created = plan.steps.iter().find_map(|step| match step {
            Step::CreateGroup {
                group: created,
                voters,
            } if created == group => Some(voters.clone()),
            _ => None,
        });
        match created {
            Some(voters) => groups.push(InitialGroup {
                policy: policy.clone(),
                membership: Membership::new(voters, []),
                adopted: false,
            }),
            None => tracing::error!(%group, "no compliant initial placement: the group is not created"),
        }
    }
    Ok(groups)
}

/// Opens, on `host`, the groups its node belongs to initially, and bootstraps those it is the first inside
/// voter of (unless already initialized: a restart finds them on disk).
pub async fn open_initial_groups<C: GroupConfig, T: Transport, S: Stores<C>>(
    host: &Host<C, T, S>,
    file: &TopologyFile,
) -> Result<(), HostError> {
    let me = host.identity().node;
    let groups = initial_placement(file).map_err(|error| HostError::Store(error.to_string()))?;
    for InitialGroup {
        policy,
        membership,
        adopted,
    } in groups
    {
        if !membership.contains(me) {
            continue;
        }
        if host.is_retired(&policy.group) {
            // Purged here after a committed membership left this node out: the initial placement is
            // history. Never bootstrap it again (a second group of the same name) nor reopen it; a
            // leader that adds this node back reopens it.
            tracing::info!(group = %policy.group, "not reopened: this node's replica was purged");
            continue;
        }
        match host
            .open_group(policy.clone(), file.legacy_members(&policy.group))
            .await
        {
            Ok(()) => {}
            // Already opened on demand: a leader reached this node first, so the group exists.
            Err(HostError::AlreadyOpen { .. }) => continue,
            Err(error) => return Err(error),
        }
        let first_inside = membership
            .voters
            .iter()
            .copied()
            .find(|&node| file.topology.is_inside(node, &policy.jurisdiction));
        if first_inside == Some(me) && !host.is_initialized(&policy.group).await? {
            let fence = host.fence(&policy.group)?;
            let current = if adopted {
                membership.clone()
            } else {
                Membership::default()
            };
            host.bootstrap(fence.admit_change(&current, &membership)?).await?;
            tracing::info!(group = %policy.group, ?membership, "bootstrapped");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_groups_are_adopted_and_new_ones_created_inside() {
        let file = TopologyFile::parse(include_str!("../../deploy/topology.example.toml")).unwrap();
        let groups = initial_placement(&file).unwrap();
        assert_eq!(groups.len(), file.policies.len());
        for group in groups {
            if group.adopted {
                assert_eq!(group.policy.group.0, "users-legacy");
                assert!(!file.legacy_members(&group.policy.group).is_empty());
            } else {
                let jurisdiction = &group.policy.jurisdiction;
                assert!(
                    group
                        .membership
                        .members()
                        .all(|node| file.topology.is_inside(node, jurisdiction))
                );
                assert_eq!(group.membership.voters.len(), group.policy.voters);
            }
        }
    }
}
