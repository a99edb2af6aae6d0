//! Who may touch what, on the client API: the topology's grants per service and jurisdiction, and what a
//! reader outside a jurisdiction sees of its personal fields.
//!
//! Every client call is authorised here before it is routed: a service holds, per jurisdiction, read,
//! write, both or (by default) nothing. Learning a jurisdiction's shard map needs either; `get` and `scan`
//! need read; `put` and `delete` need write; a compare-and-set needs both, since its answer tells whether
//! the record held a revision (as etcd requires read on the keys a transaction compares).
//!
//! A read is pseudonymised when the jurisdiction declares personal fields and the caller's certificate
//! attests a country outside it — or no country: an unknown location is treated as outside. The key is
//! the jurisdiction's, held only by nodes inside it ([`crate::pseudonym`]); a node that lacks it answers
//! such a read with an error, never in clear.

use std::collections::BTreeMap;

use placement::{Access, AccessPolicy, GroupPolicy, Jurisdiction, PersonalFields};

use crate::client_protocol::{ClientOp, ClientRequest};
use crate::identity::ClientIdentity;
use crate::pseudonym::{PseudonymKey, PseudonymKeys};

/// A call outside the caller's grants.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "service `{service}` holds {held} access to jurisdiction `{jurisdiction}`; {request} needs {needed} (grants are in the topology's [[grant]] tables)"
)]
pub struct NotGranted {
    pub service: String,
    pub jurisdiction: String,
    pub request: &'static str,
    pub needed: Access,
    pub held: Access,
}

/// How an outside read must be answered.
pub enum OutsideRead<'a> {
    /// The caller is inside the jurisdiction, or it declares no personal field: answer in clear.
    Clear,
    /// Replace the personal fields with pseudonyms under this key.
    Pseudonymise {
        key: &'a PseudonymKey,
        fields: &'a PersonalFields,
    },
    /// The jurisdiction declares personal fields, but this node holds no key for it: refuse.
    NoKey,
}

/// A node's client-access policy.
#[derive(Debug, Default)]
pub struct ClientAccess {
    policy: AccessPolicy,
    /// The jurisdictions groups are fenced to, by name: to tell whether a caller's country is inside.
    jurisdictions: BTreeMap<String, Jurisdiction>,
    keys: PseudonymKeys,
}

impl ClientAccess {
    pub fn new<'a>(
        policy: AccessPolicy,
        groups: impl IntoIterator<Item = &'a GroupPolicy>,
        keys: PseudonymKeys,
    ) -> ClientAccess {
        let jurisdictions = groups
            .into_iter()
            .map(|group| (group.jurisdiction.name().to_string(), group.jurisdiction.clone()))
            .collect();
        ClientAccess {
            policy,
            jurisdictions,
            keys,
        }
    }

    /// Whether the caller's grants cover `request`.
    pub fn authorise(&self, caller: &ClientIdentity, request: &ClientRequest) -> Result<(), NotGranted> {
        let jurisdiction = request.jurisdiction();
        if !self.jurisdictions.contains_key(jurisdiction) {
            // No group is fenced to it, so no record of it exists to protect: the call goes on to be
            // refused for residency (data with no lawful place), which is what the caller needs to hear.
            return Ok(());
        }
        let held = self.policy.granted(&caller.name, jurisdiction);
        let needed = match request {
            // Routing needs either: a writer must find the group as much as a reader.
            ClientRequest::ShardMap { .. } | ClientRequest::Map { .. } if held.read || held.write => {
                return Ok(());
            }
            ClientRequest::ShardMap { .. } | ClientRequest::Map { .. } => Access::READ,
            ClientRequest::Call { op, .. } | ClientRequest::RoutedCall { op, .. } => match op {
                ClientOp::Get { .. } | ClientOp::Scan => Access::READ,
                ClientOp::Put { .. } | ClientOp::Delete { .. } => Access::WRITE,
                ClientOp::CompareAndSet { .. } => Access::READ_WRITE,
            },
        };
        if held.covers(needed) {
            Ok(())
        } else {
            Err(NotGranted {
                service: caller.name.clone(),
                jurisdiction: jurisdiction.to_string(),
                request: request.name(),
                needed,
                held,
            })
        }
    }

    /// Whether `caller` reads `jurisdiction`'s records from outside it, and if so how.
    pub fn outside_read(&self, caller: &ClientIdentity, jurisdiction: &str) -> OutsideRead<'_> {
        let Some(fields) = self.policy.personal_fields(jurisdiction) else {
            return OutsideRead::Clear;
        };
        let inside = match (caller.country, self.jurisdictions.get(jurisdiction)) {
            (Some(country), Some(fenced)) => fenced.contains(country),
            _ => false,
        };
        if inside {
            return OutsideRead::Clear;
        }
        match self.keys.get(jurisdiction) {
            Some(key) => OutsideRead::Pseudonymise { key, fields },
            None => OutsideRead::NoKey,
        }
    }
}

#[cfg(test)]
mod tests {
    use placement::TopologyFile;
    use wire::record::WriteId;

    use super::*;

    /// A call routed by an epoch, or the map asked for whole, needs what the same call without an epoch
    /// (or the shard map's group names) needs: the epoch changes where a call goes, not who may make it.
    #[test]
    fn calls_routed_by_an_epoch_need_the_same_grants() {
        let file = TopologyFile::parse(
            "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1]\n\n[[group]]\nname = \"eu-1\"\n\
             jurisdiction = \"EU\"\nvoters = 1\n\n[[grant]]\nservice = \"reader\"\njurisdiction = \"EU\"\n\
             access = \"read\"\n\n[[grant]]\nservice = \"writer\"\njurisdiction = \"EU\"\naccess = \"write\"\n",
        )
        .unwrap();
        let access = ClientAccess::new(
            file.access.clone(),
            file.policies.values(),
            PseudonymKeys::default(),
        );
        let get = ClientOp::Get {
            record: "r".into(),
            consistency: crate::client_protocol::Consistency::Linearizable,
        };
        let put = ClientOp::Put {
            record: "r".into(),
            value: vec![1],
            write: WriteId {
                client_id: 1,
                sequence: 1,
            },
        };
        let routed = |op: &ClientOp| ClientRequest::RoutedCall {
            jurisdiction: "EU".into(),
            user_id: "u".into(),
            epoch: 3,
            op: op.clone(),
        };
        let unrouted = |op: &ClientOp| ClientRequest::Call {
            jurisdiction: "EU".into(),
            user_id: "u".into(),
            op: op.clone(),
        };
        let map = ClientRequest::Map {
            jurisdiction: "EU".into(),
        };
        for (service, may_get, may_put) in [
            ("reader", true, false),
            ("writer", false, true),
            ("nobody", false, false),
        ] {
            let caller = ClientIdentity {
                name: service.into(),
                country: None,
            };
            for (op, allowed) in [(&get, may_get), (&put, may_put)] {
                assert_eq!(
                    access.authorise(&caller, &routed(op)).is_ok(),
                    allowed,
                    "{service} {op:?}"
                );
                assert_eq!(
                    access.authorise(&caller, &unrouted(op)).is_ok(),
                    allowed,
                    "{service} {op:?}"
                );
            }
            assert_eq!(
                access.authorise(&caller, &map).is_ok(),
                service != "nobody",
                "{service}"
            );
        }
    }
}
