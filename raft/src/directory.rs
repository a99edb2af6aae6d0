//! Each jurisdiction's routing metadata, kept in a replica group fenced to that jurisdiction.
//!
//! A jurisdiction's **shard map** (its epoch and the ordered list of its shard groups) is a record in the
//! state machine of its **directory group**: the jurisdiction's first shard group by name. There is no
//! global directory: the EEA's map is replicated only where EEA data may live, a node learns it from its own
//! replica or from a peer inside the jurisdiction — which hands it over only after the egress fence
//! admitted the asking node's attested site — and a node outside the jurisdiction never holds it, so it
//! cannot route (or misroute) the jurisdiction's users. The map holds group names only; users are placed
//! by a stable hash of their id over it ([`crate::routing`]), so no component holds raw keys.
//!
//! The topology file only *proposes* a jurisdiction's first map: the first member of its directory group
//! to need the map publishes the proposal with a compare-and-set on "absent", and from then on the
//! published map is authoritative. A node whose topology file later disagrees is warned and still routes
//! by the published map — an edited file on one node cannot silently send users to another shard, which
//! would make their records look lost. Maps are written once per epoch; a change of epoch (re-sharding,
//! which moves data) is not implemented yet, which is also why a node may cache a map and read it from its
//! local, possibly lagging replica: a lagging replica can only lack the map, never hold another one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use placement::{GroupId, NodeId, Topology};
use serde::{Deserialize, Serialize};
use storage::{Command, CommandError, RecordKey, Response, WriteId, codec};
use wire::routing::shard_index;

use crate::config::GroupConfig;
use crate::host::{Host, HostError, ReadConsistency};
use crate::routing::{Router, group_number, stable_hash};
use crate::stores::Stores;
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport};

/// The reserved user id under which a directory group keeps its jurisdiction's map. It starts with a NUL
/// byte, which no client may use in a user id ([`is_reserved_user`]), so no client call can read or
/// overwrite it.
const DIRECTORY_USER: &str = "\u{0}directory";
const SHARD_MAP_RECORD: &str = "shard-map";

/// Whether a user id is reserved for the system's own records.
pub fn is_reserved_user(user_id: &str) -> bool {
    user_id.starts_with('\u{0}')
}

/// Where a jurisdiction's shard map is stored, in its directory group.
pub fn shard_map_key(jurisdiction: &str) -> RecordKey {
    RecordKey::new(jurisdiction, DIRECTORY_USER, SHARD_MAP_RECORD)
}

/// One jurisdiction's routing metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    pub jurisdiction: String,
    /// Starts at 1; a new epoch would be a re-sharding.
    pub epoch: u64,
    /// The jurisdiction's shard groups; a user's shard is `shard_index(user id, shards.len())`.
    pub shards: Vec<GroupId>,
}

impl ShardMap {
    /// The group that holds `user_id`'s records.
    pub fn route(&self, user_id: &str) -> &GroupId {
        assert!(!self.shards.is_empty(), "a published shard map has shards");
        &self.shards[shard_index(user_id, self.shards.len())]
    }

    /// The stored form: sealed (versioned, checksummed over the jurisdiction) by the codec.
    pub fn encode(&self) -> Result<Vec<u8>, DirectoryError> {
        let stored = StoredShardMap {
            jurisdiction: self.jurisdiction.clone(),
            epoch: self.epoch,
            shards: self.shards.iter().map(|group| group.0.clone()).collect(),
        };
        codec::seal(seal_key(&self.jurisdiction).as_bytes(), &stored).map_err(|error| {
            DirectoryError::Corrupt {
                jurisdiction: self.jurisdiction.clone(),
                reason: error.to_string(),
            }
        })
    }

    /// Decodes a stored map and checks it is the one asked for and well formed.
    pub fn decode(jurisdiction: &str, bytes: &[u8]) -> Result<ShardMap, DirectoryError> {
        let corrupt = |reason: String| DirectoryError::Corrupt {
            jurisdiction: jurisdiction.to_string(),
            reason,
        };
        let stored: StoredShardMap = codec::unseal(seal_key(jurisdiction).as_bytes(), bytes)
            .map_err(|error| corrupt(error.to_string()))?;
        let map = ShardMap {
            jurisdiction: stored.jurisdiction,
            epoch: stored.epoch,
            shards: stored.shards.into_iter().map(GroupId).collect(),
        };
        if map.jurisdiction != jurisdiction || map.shards.is_empty() || map.epoch == 0 {
            return Err(corrupt(format!(
                "map of `{}` at epoch {} with {} shards",
                map.jurisdiction,
                map.epoch,
                map.shards.len()
            )));
        }
        Ok(map)
    }
}

/// The encoded form; field order is part of the format (append only).
#[derive(Serialize, Deserialize)]
struct StoredShardMap {
    jurisdiction: String,
    epoch: u64,
    shards: Vec<String>,
}

fn seal_key(jurisdiction: &str) -> String {
    format!("domicile/shard-map/{jurisdiction}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("no replica group is fenced to jurisdiction `{0}`: the data would have nowhere lawful to live")]
    NoGroup(String),
    /// This node stands outside the jurisdiction: it may not hold the jurisdiction's routing metadata.
    #[error(
        "node {node} is outside `{jurisdiction}` and holds none of its routing metadata (directory group `{directory}`)"
    )]
    Outside {
        node: NodeId,
        jurisdiction: String,
        directory: GroupId,
    },
    #[error("the shard map of `{jurisdiction}` can't be read now (directory group `{directory}`): {reason}")]
    Unavailable {
        jurisdiction: String,
        directory: GroupId,
        reason: String,
    },
    #[error("the stored shard map of `{jurisdiction}` is damaged: {reason}")]
    Corrupt { jurisdiction: String, reason: String },
}

/// A node's view of the jurisdictions' shard maps: what it has learnt, and how to learn the rest.
pub struct Directory {
    me: NodeId,
    /// The topology's proposals: each jurisdiction's shard groups in name order; the first is its
    /// directory group.
    proposals: Router,
    /// Nodes at sites inside each jurisdiction, in id order: whom to ask for a map this node holds no
    /// replica of.
    inside: BTreeMap<String, Vec<NodeId>>,
    learnt: RwLock<BTreeMap<String, Arc<ShardMap>>>,
}

impl Directory {
    pub fn new(me: NodeId, topology: &Topology, proposals: Router) -> Directory {
        let inside = proposals
            .jurisdictions()
            .map(|(name, jurisdiction)| {
                let nodes = topology
                    .nodes()
                    .filter(|&node| topology.is_inside(node, jurisdiction))
                    .collect();
                (name.clone(), nodes)
            })
            .collect();
        Directory {
            me,
            proposals,
            inside,
            learnt: RwLock::default(),
        }
    }

    /// The directory group of `jurisdiction`.
    pub fn directory_group(&self, jurisdiction: &str) -> Result<GroupId, DirectoryError> {
        self.proposals
            .shards_of(jurisdiction)
            .and_then(|shards| shards.first())
            .cloned()
            .ok_or_else(|| DirectoryError::NoGroup(jurisdiction.to_string()))
    }

    /// The published shard map of `jurisdiction`: learnt before, read from this node's replica of the
    /// directory group (publishing the proposal if none is there yet), or asked of a node inside.
    pub async fn shard_map<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
    ) -> Result<Arc<ShardMap>, DirectoryError> {
        if let Some(map) = self.learnt.read().expect("directory lock").get(jurisdiction) {
            return Ok(map.clone());
        }
        let directory = self.directory_group(jurisdiction)?;
        let map = match self.read_own_replica(host, jurisdiction, &directory).await {
            Ok(Some(map)) => map,
            Ok(None) | Err(DirectoryError::Unavailable { .. }) if self.is_inside(jurisdiction) => {
                self.ask_peers(host, jurisdiction, &directory).await?
            }
            Ok(None) => {
                return Err(DirectoryError::Outside {
                    node: self.me,
                    jurisdiction: jurisdiction.to_string(),
                    directory,
                });
            }
            Err(error) => return Err(error),
        };
        let proposal = self
            .proposals
            .shards_of(jurisdiction)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if map.shards.as_slice() != proposal {
            tracing::warn!(
                jurisdiction,
                epoch = map.epoch,
                published = ?map.shards,
                topology = ?proposal,
                "the topology file proposes other shards than the published map: routing follows the map"
            );
        }
        let map = Arc::new(map);
        let mut learnt = self.learnt.write().expect("directory lock");
        Ok(learnt.entry(jurisdiction.to_string()).or_insert(map).clone())
    }

    fn is_inside(&self, jurisdiction: &str) -> bool {
        self.inside
            .get(jurisdiction)
            .is_some_and(|nodes| nodes.contains(&self.me))
    }

    /// Reads the map from this node's replica of the directory group; publishes the topology's proposal
    /// if the group has none and this node leads it. `Ok(None)`: no replica here, or nothing published
    /// and this node is not the one to publish.
    pub(crate) async fn read_own_replica<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
        directory: &GroupId,
    ) -> Result<Option<ShardMap>, DirectoryError> {
        let key = shard_map_key(jurisdiction);
        let unavailable = |error: HostError| DirectoryError::Unavailable {
            jurisdiction: jurisdiction.to_string(),
            directory: directory.clone(),
            reason: error.to_string(),
        };
        let stored = match host.read(directory, key.clone(), ReadConsistency::Stale).await {
            Ok(read) => read.record,
            Err(HostError::UnknownGroup(_)) => return Ok(None),
            Err(error) => return Err(unavailable(error)),
        };
        if let Some(record) = stored {
            return ShardMap::decode(jurisdiction, &record.value).map(Some);
        }
        let Some(shards) = self.proposals.shards_of(jurisdiction) else {
            return Err(DirectoryError::NoGroup(jurisdiction.to_string()));
        };
        let proposal = ShardMap {
            jurisdiction: jurisdiction.to_string(),
            epoch: 1,
            shards: shards.clone(),
        };
        // Only if absent: two members publishing at once (or a retry of an applied attempt) leave exactly
        // one map. The write id's sequence is the group's next log index, which only grows, so this node's
        // later attempts are never refused as stale.
        let sequence = host
            .status(directory)
            .map_err(unavailable)?
            .committed
            .map_or(1, |index| index + 1);
        let command = Command::CompareAndSet {
            write: WriteId {
                client_id: stable_hash(format!("domicile/directory/{}", self.me).as_bytes()),
                sequence,
            },
            key,
            expected_revision: None,
            value: proposal.encode()?,
        };
        match host.write(directory, command).await {
            Ok(Response::Written { revision }) => {
                tracing::info!(jurisdiction, %directory, revision, shards = ?proposal.shards, "published the shard map");
                Ok(Some(proposal))
            }
            // Someone else published first: the map is applied here now (the write was answered after
            // this node applied it), so read it back.
            Ok(Response::Rejected(CommandError::RevisionMismatch { .. })) => {
                let read = host
                    .read(directory, shard_map_key(jurisdiction), ReadConsistency::Stale)
                    .await
                    .map_err(unavailable)?;
                match read.record {
                    Some(record) => ShardMap::decode(jurisdiction, &record.value).map(Some),
                    None => Err(unavailable(HostError::Store("published map vanished".into()))),
                }
            }
            Ok(other) => Err(unavailable(HostError::Store(format!(
                "publishing answered {other:?}"
            )))),
            Err(HostError::NotLeader { .. }) => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Asks the nodes inside the jurisdiction, in id order, for the map their replica holds. Each answers
    /// only after its egress fence admitted this node's attested site.
    async fn ask_peers<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
        directory: &GroupId,
    ) -> Result<ShardMap, DirectoryError> {
        let body = codec::encode(jurisdiction).map_err(|error| DirectoryError::Corrupt {
            jurisdiction: jurisdiction.to_string(),
            reason: error.to_string(),
        })?;
        let mut reasons = Vec::new();
        let peers = self
            .inside
            .get(jurisdiction)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for &peer in peers.iter().filter(|&&peer| peer != self.me) {
            let request = PeerRequest {
                group: group_number(directory),
                kind: RequestKind::DirectoryRead,
                carries_data: false,
                body: body.clone(),
            };
            match host.ask_peer(peer, request).await {
                Ok(PeerResponse::Ok(bytes)) => match codec::decode::<Option<Vec<u8>>>(&bytes) {
                    Ok(Some(stored)) => return ShardMap::decode(jurisdiction, &stored),
                    Ok(None) => reasons.push(format!("{peer}: nothing published yet")),
                    Err(error) => reasons.push(format!("{peer}: undecodable answer: {error}")),
                },
                Ok(PeerResponse::Refused { reason, .. } | PeerResponse::Failed { reason, .. }) => {
                    reasons.push(format!("{peer}: {reason}"))
                }
                Err(error) => reasons.push(error.to_string()),
            }
        }
        Err(DirectoryError::Unavailable {
            jurisdiction: jurisdiction.to_string(),
            directory: directory.clone(),
            reason: if reasons.is_empty() {
                "no other node inside the jurisdiction".into()
            } else {
                reasons.join("; ")
            },
        })
    }
}
