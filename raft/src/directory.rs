//! Each jurisdiction's routing metadata, kept in a replica group fenced to that jurisdiction.
//!
//! A jurisdiction's **shard map** (its epoch, and which group owns each range of the routing position,
//! `wire::routing::range_position`) is a record in the state machine of its **directory group**: the
//! jurisdiction's first shard group by name. There is no global directory: the EEA's map is replicated only
//! where EEA data may live, a node learns it from its own replica or from a peer inside the jurisdiction —
//! which hands it over only after the egress fence admitted the asking node's attested site — and a node
//! outside the jurisdiction never holds it, so it cannot route (or misroute) the jurisdiction's users. The
//! map holds group names and range starts only, so no component holds raw keys.
//!
//! The topology file only *proposes* a jurisdiction's first map (epoch 1: its groups in name order, equal
//! ranges): the first member of its directory group to need the map publishes the proposal with a
//! compare-and-set on "absent", and from then on the published map is authoritative. A node whose topology
//! file later disagrees is warned and still routes by the published map — an edited file on one node cannot
//! silently send users to another shard, which would make their records look lost.
//!
//! A map **changes** by epochs ([`crate::map_change`]): a split or a move publishes epoch N+1 by a
//! compare-and-set on the record of epoch N, after every group losing a range has committed its ranges of
//! N+1 (from then on its state machine refuses the lost range's users, so a write that raced the change is
//! refused, never applied). A node caches the map it learnt and refreshes it when a client brings a later
//! epoch or a group refuses a user as no longer its own ([`Directory::refresh`]); its possibly lagging
//! replica may hold an older map, never a wrong one for its epoch.
//!
//! Maps published before ranges existed (`hash mod N` over the groups, epoch 1) are still read, and route
//! exactly as before ([`ShardMap::Modulo`]); one of more than one group can't be changed by ranges without
//! moving almost every user, which is refused ([`DirectoryError::ModuloMap`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use placement::shard_map::{self, ShardMapError};
use placement::{GroupId, NodeId, Topology};
use serde::{Deserialize, Serialize};
use storage::codec::CodecError;
use storage::record::Ownership;
use storage::{Command, CommandError, RecordKey, Response, WriteId, codec};
pub use wire::routing::is_reserved_user;
use wire::routing::{Layout, RangeStart, RoutingMap, range_position, shard_index};

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

/// Where a jurisdiction's shard map is stored, in its directory group.
pub fn shard_map_key(jurisdiction: &str) -> RecordKey {
    RecordKey::new(jurisdiction, DIRECTORY_USER, SHARD_MAP_RECORD)
}

/// One jurisdiction's published routing metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardMap {
    /// Published before ranged maps: a user's shard is `shard_index(user id, shards.len())`. Read and
    /// routed by exactly as before; never published anew.
    Modulo {
        jurisdiction: String,
        epoch: u64,
        shards: Vec<GroupId>,
    },
    /// Ranges of the routing position, by epoch.
    Ranged(shard_map::ShardMap),
}

impl ShardMap {
    pub fn jurisdiction(&self) -> &str {
        match self {
            ShardMap::Modulo { jurisdiction, .. } => jurisdiction,
            ShardMap::Ranged(map) => map.jurisdiction(),
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            ShardMap::Modulo { epoch, .. } => *epoch,
            ShardMap::Ranged(map) => map.epoch(),
        }
    }

    /// The group that holds `user_id`'s records.
    pub fn route(&self, user_id: &str) -> &GroupId {
        match self {
            ShardMap::Modulo { shards, .. } => {
                assert!(!shards.is_empty(), "a published shard map has shards");
                &shards[shard_index(user_id, shards.len())]
            }
            ShardMap::Ranged(map) => map.owner(range_position(user_id)),
        }
    }

    /// Every group the map names, in map order, each once.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> = Vec::new();
        let named: Vec<GroupId> = match self {
            ShardMap::Modulo { shards, .. } => shards.clone(),
            ShardMap::Ranged(map) => map.ranges().into_iter().map(|range| range.group).collect(),
        };
        for group in named {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        groups
    }

    /// The map as ranges, to be changed by ranges: a modulo map of one group is the same as the whole
    /// space owned by it; one of more can't be expressed as ranges without moving almost every user.
    pub fn ranged(&self) -> Result<shard_map::ShardMap, DirectoryError> {
        match self {
            ShardMap::Ranged(map) => Ok(map.clone()),
            ShardMap::Modulo {
                jurisdiction,
                epoch,
                shards,
            } if shards.len() == 1 => {
                shard_map::ShardMap::from_ranges(jurisdiction, *epoch, [(0, shards[0].clone())]).map_err(
                    |error| DirectoryError::Change {
                        jurisdiction: jurisdiction.clone(),
                        error,
                    },
                )
            }
            ShardMap::Modulo {
                jurisdiction, shards, ..
            } => Err(DirectoryError::ModuloMap {
                jurisdiction: jurisdiction.clone(),
                groups: shards.len(),
            }),
        }
    }

    /// The ranges `group` owns in this map, as its state machine records them.
    pub fn ownership_of(&self, group: &GroupId) -> Result<Ownership, DirectoryError> {
        let map = self.ranged()?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for range in map.ranges().into_iter().filter(|range| range.group == *group) {
            // Adjacent ranges of one owner are one range to it.
            match ranges.last_mut() {
                Some((_, end)) if end.checked_add(1) == Some(range.start) => *end = range.end,
                _ => ranges.push((range.start, range.end)),
            }
        }
        Ok(Ownership {
            jurisdiction: map.jurisdiction().to_string(),
            epoch: map.epoch(),
            ranges,
        })
    }

    /// The form clients and the directory record share.
    pub fn to_wire(&self) -> RoutingMap {
        let layout = match self {
            ShardMap::Modulo { shards, .. } => {
                Layout::Modulo(shards.iter().map(|group| group.0.clone()).collect())
            }
            ShardMap::Ranged(map) => Layout::Ranges(
                map.ranges()
                    .into_iter()
                    .map(|range| RangeStart {
                        start: range.start,
                        group: range.group.0,
                    })
                    .collect(),
            ),
        };
        RoutingMap {
            jurisdiction: self.jurisdiction().to_string(),
            epoch: self.epoch(),
            layout,
        }
    }

    /// A map received or read back, checked whole.
    pub fn from_wire(map: RoutingMap) -> Result<ShardMap, DirectoryError> {
        let corrupt = |reason: String| DirectoryError::Corrupt {
            jurisdiction: map.jurisdiction.clone(),
            reason,
        };
        map.check().map_err(|error| corrupt(error.to_string()))?;
        Ok(match &map.layout {
            Layout::Modulo(shards) => ShardMap::Modulo {
                jurisdiction: map.jurisdiction.clone(),
                epoch: map.epoch,
                shards: shards.iter().cloned().map(GroupId).collect(),
            },
            Layout::Ranges(ranges) => ShardMap::Ranged(
                shard_map::ShardMap::from_ranges(
                    &map.jurisdiction,
                    map.epoch,
                    ranges
                        .iter()
                        .map(|range| (range.start, GroupId(range.group.clone()))),
                )
                .map_err(|error| corrupt(error.to_string()))?,
            ),
        })
    }

    /// The stored form: the wire form, sealed (versioned, checksummed over the jurisdiction) by the codec.
    pub fn encode(&self) -> Result<Vec<u8>, DirectoryError> {
        codec::seal(seal_key(self.jurisdiction()).as_bytes(), &self.to_wire()).map_err(|error| {
            DirectoryError::Corrupt {
                jurisdiction: self.jurisdiction().to_string(),
                reason: error.to_string(),
            }
        })
    }

    /// Decodes a stored map (or one published before ranges) and checks it is the one asked for and well
    /// formed.
    pub fn decode(jurisdiction: &str, bytes: &[u8]) -> Result<ShardMap, DirectoryError> {
        let corrupt = |reason: String| DirectoryError::Corrupt {
            jurisdiction: jurisdiction.to_string(),
            reason,
        };
        let map = match codec::unseal::<RoutingMap>(seal_key(jurisdiction).as_bytes(), bytes) {
            Ok(map) => ShardMap::from_wire(map).map_err(|error| corrupt(error.to_string()))?,
            // Not sealed as a ranged map: one published before them, or damage.
            Err(error @ CodecError::Checksum { .. }) => {
                decode_modulo(jurisdiction, bytes).map_err(|_| corrupt(error.to_string()))?
            }
            Err(error) => return Err(corrupt(error.to_string())),
        };
        if map.jurisdiction() != jurisdiction {
            return Err(corrupt(format!(
                "a map of `{}` at epoch {}",
                map.jurisdiction(),
                map.epoch()
            )));
        }
        Ok(map)
    }
}

/// A map published before ranges: `StoredModuloMap` sealed under its own key.
fn decode_modulo(jurisdiction: &str, bytes: &[u8]) -> Result<ShardMap, DirectoryError> {
    let stored: StoredModuloMap =
        codec::unseal(modulo_seal_key(jurisdiction).as_bytes(), bytes).map_err(|error| {
            DirectoryError::Corrupt {
                jurisdiction: jurisdiction.to_string(),
                reason: error.to_string(),
            }
        })?;
    ShardMap::from_wire(RoutingMap {
        jurisdiction: stored.jurisdiction,
        epoch: stored.epoch,
        layout: Layout::Modulo(stored.shards),
    })
}

/// The stored form of maps published before ranges; field order is part of the format.
#[derive(Serialize, Deserialize)]
struct StoredModuloMap {
    jurisdiction: String,
    epoch: u64,
    shards: Vec<String>,
}

fn modulo_seal_key(jurisdiction: &str) -> String {
    format!("domicile/shard-map/{jurisdiction}")
}

/// A ranged map's seal key: another than a modulo map's, so each is read only as what it is.
fn seal_key(jurisdiction: &str) -> String {
    format!("domicile/shard-map/ranges/{jurisdiction}")
}

/// A modulo map sealed as it was published before ranges (tests and fuzz seeds of the old format).
pub fn encode_modulo_map(jurisdiction: &str, epoch: u64, shards: &[GroupId]) -> Result<Vec<u8>, CodecError> {
    let stored = StoredModuloMap {
        jurisdiction: jurisdiction.to_string(),
        epoch,
        shards: shards.iter().map(|group| group.0.clone()).collect(),
    };
    codec::seal(modulo_seal_key(jurisdiction).as_bytes(), &stored)
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
    #[error(
        "the map of `{jurisdiction}` spreads users `hash mod {groups}` (published before ranged maps): changing \
         it by ranges would move almost every user, which is not supported"
    )]
    ModuloMap { jurisdiction: String, groups: usize },
    #[error("the map of `{jurisdiction}` can't change so: {error}")]
    Change {
        jurisdiction: String,
        error: ShardMapError,
    },
    #[error("group `{group}` is not fenced to `{jurisdiction}`: no range of its users may go there")]
    ForeignGroup { jurisdiction: String, group: GroupId },
    #[error(
        "the map of `{jurisdiction}` is at epoch {published}, not {expected}: plan the change again from the \
         published map"
    )]
    EpochMoved {
        jurisdiction: String,
        expected: u64,
        published: u64,
    },
    #[error("not the leader of group `{group}`; the leader is {leader:?}")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("group `{group}` refused its ranges of epoch {epoch}: {error}")]
    RangesRefused {
        group: GroupId,
        epoch: u64,
        error: CommandError,
    },
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
    /// The latest map learnt of each jurisdiction (only ever replaced by a later epoch).
    learnt: RwLock<BTreeMap<String, Arc<ShardMap>>>,
    /// Requests sent to peers for a map, ever: what a caller that makes this node ask pays for.
    peer_asks: AtomicU64,
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
            peer_asks: AtomicU64::new(0),
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

    /// The groups the topology fences to `jurisdiction`, in name order: the only groups a map of it may
    /// name.
    pub fn groups_of(&self, jurisdiction: &str) -> Result<&[GroupId], DirectoryError> {
        self.proposals
            .shards_of(jurisdiction)
            .map(Vec::as_slice)
            .ok_or_else(|| DirectoryError::NoGroup(jurisdiction.to_string()))
    }

    /// The published shard map of `jurisdiction` this node knows: learnt before, read from this node's
    /// replica of the directory group (publishing the proposal if none is there yet), or asked of a node
    /// inside.
    pub async fn shard_map<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
    ) -> Result<Arc<ShardMap>, DirectoryError> {
        if let Some(map) = self.known(jurisdiction) {
            return Ok(map);
        }
        self.refresh(host, jurisdiction, 1).await
    }

    /// How many requests for a map this node has sent its peers.
    pub fn peer_asks(&self) -> u64 {
        self.peer_asks.load(Ordering::Relaxed)
    }

    /// The map learnt of `jurisdiction`, if any.
    pub fn known(&self, jurisdiction: &str) -> Option<Arc<ShardMap>> {
        self.learnt
            .read()
            .expect("directory lock")
            .get(jurisdiction)
            .cloned()
    }

    /// Learns the map again, wanting epoch `at_least` (a client routed by it, or a group committed it):
    /// from this node's replica, else from the nodes inside. Returns the latest map found, which may still
    /// be older than `at_least` (the change is not published, or not replicated here yet).
    pub async fn refresh<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
        at_least: u64,
    ) -> Result<Arc<ShardMap>, DirectoryError> {
        let directory = self.directory_group(jurisdiction)?;
        let inside = self.is_inside(jurisdiction);
        let own = match self.read_own_replica(host, jurisdiction, &directory).await {
            Ok(Some(map)) if map.epoch() >= at_least => Some(map),
            Ok(own) if inside => match self.ask_peers(host, jurisdiction, &directory, at_least).await {
                Ok(theirs) if own.as_ref().is_none_or(|own| theirs.epoch() > own.epoch()) => Some(theirs),
                Err(error) if own.is_none() => return Err(error),
                Ok(_) | Err(_) => own,
            },
            Err(DirectoryError::Unavailable { .. }) if inside => {
                Some(self.ask_peers(host, jurisdiction, &directory, at_least).await?)
            }
            Ok(own) => own,
            Err(error) => return Err(error),
        };
        let Some(map) = own else {
            return Err(DirectoryError::Outside {
                node: self.me,
                jurisdiction: jurisdiction.to_string(),
                directory,
            });
        };
        if map.epoch() == 1 && self.known(jurisdiction).is_none() {
            self.warn_if_not_proposed(&map);
        }
        Ok(self.learn(map))
    }

    /// Keeps `map` if it is later than the one known; returns the latest.
    pub fn learn(&self, map: ShardMap) -> Arc<ShardMap> {
        let mut learnt = self.learnt.write().expect("directory lock");
        let entry = learnt
            .entry(map.jurisdiction().to_string())
            .or_insert_with(|| Arc::new(map.clone()));
        if map.epoch() > entry.epoch() {
            tracing::info!(
                jurisdiction = map.jurisdiction(),
                epoch = map.epoch(),
                "learnt a later shard map"
            );
            *entry = Arc::new(map);
        }
        entry.clone()
    }

    fn warn_if_not_proposed(&self, map: &ShardMap) {
        let proposal = self.proposals.first_map_groups(map.jurisdiction());
        if map.groups() != proposal {
            tracing::warn!(
                jurisdiction = map.jurisdiction(),
                epoch = map.epoch(),
                published = ?map.groups(),
                topology = ?proposal,
                "the topology file proposes other shards than the published map: routing follows the map"
            );
        }
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
        let Some(proposal) = self.proposals.proposal(jurisdiction) else {
            return Err(DirectoryError::NoGroup(jurisdiction.to_string()));
        };
        let proposal = ShardMap::Ranged(proposal.clone());
        // Only if absent: two members publishing at once (or a retry of an applied attempt) leave exactly
        // one map.
        match self
            .compare_and_set(host, directory, jurisdiction, None, &proposal)
            .await
        {
            Ok(()) => {
                tracing::info!(jurisdiction, %directory, groups = ?proposal.groups(), "published the shard map");
                Ok(Some(proposal))
            }
            // Someone else published first: the map is applied here now (the write was answered after
            // this node applied it), so read it back.
            Err(HostError::Store(reason)) if reason == REVISION_MISMATCH => {
                let read = host
                    .read(directory, shard_map_key(jurisdiction), ReadConsistency::Stale)
                    .await
                    .map_err(unavailable)?;
                match read.record {
                    Some(record) => ShardMap::decode(jurisdiction, &record.value).map(Some),
                    None => Err(unavailable(HostError::Store("published map vanished".into()))),
                }
            }
            Err(HostError::NotLeader { .. }) => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Writes `map` into the directory group if the stored record is still at `expected_revision`
    /// (`None`: absent). A mismatch is `HostError::Store(REVISION_MISMATCH)`.
    async fn compare_and_set<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        directory: &GroupId,
        jurisdiction: &str,
        expected_revision: Option<u64>,
        map: &ShardMap,
    ) -> Result<(), HostError> {
        let value = map
            .encode()
            .map_err(|error| HostError::Store(error.to_string()))?;
        // The write id's sequence is the group's next log index, which only grows, so this node's later
        // attempts are never refused as stale.
        let sequence = host.status(directory)?.committed.map_or(1, |index| index + 1);
        let command = Command::CompareAndSet {
            write: WriteId {
                client_id: stable_hash(format!("domicile/directory/{}", self.me).as_bytes()),
                sequence,
            },
            key: shard_map_key(jurisdiction),
            expected_revision,
            value,
        };
        match host.write(directory, command).await? {
            Response::Written { .. } => Ok(()),
            Response::Rejected(CommandError::RevisionMismatch { .. }) => {
                Err(HostError::Store(REVISION_MISMATCH.into()))
            }
            other => Err(HostError::Store(format!("publishing answered {other:?}"))),
        }
    }

    /// Publishes `next` in place of the map of epoch `next.epoch() - 1`, on the directory group's leader:
    /// the committed change of epoch. Done already (the same map published): `Ok`. The caller must first
    /// have every group losing a range commit its ranges of `next` ([`crate::map_change`]).
    pub async fn publish<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        next: &ShardMap,
    ) -> Result<(), DirectoryError> {
        let jurisdiction = next.jurisdiction();
        let directory = self.directory_group(jurisdiction)?;
        let not_leader = |error: HostError| match error {
            HostError::NotLeader { group, leader } => DirectoryError::NotLeader { group, leader },
            error => DirectoryError::Unavailable {
                jurisdiction: jurisdiction.to_string(),
                directory: directory.clone(),
                reason: error.to_string(),
            },
        };
        let read = host
            .read(
                &directory,
                shard_map_key(jurisdiction),
                ReadConsistency::Linearizable,
            )
            .await
            .map_err(not_leader)?;
        let Some(record) = read.record else {
            return Err(DirectoryError::EpochMoved {
                jurisdiction: jurisdiction.to_string(),
                expected: next.epoch() - 1,
                published: 0,
            });
        };
        let published = ShardMap::decode(jurisdiction, &record.value)?;
        if published == *next {
            self.learn(published);
            return Ok(());
        }
        if published.epoch() + 1 != next.epoch() {
            return Err(DirectoryError::EpochMoved {
                jurisdiction: jurisdiction.to_string(),
                expected: next.epoch() - 1,
                published: published.epoch(),
            });
        }
        match self
            .compare_and_set(host, &directory, jurisdiction, Some(record.revision), next)
            .await
        {
            Ok(()) => {
                tracing::info!(jurisdiction, epoch = next.epoch(), %directory, "published a new epoch of the shard map");
                self.learn(next.clone());
                Ok(())
            }
            // Changed since the read: another change won; plan again.
            Err(HostError::Store(reason)) if reason == REVISION_MISMATCH => Err(DirectoryError::EpochMoved {
                jurisdiction: jurisdiction.to_string(),
                expected: next.epoch() - 1,
                published: next.epoch(),
            }),
            Err(error) => Err(not_leader(error)),
        }
    }

    /// Asks the nodes inside the jurisdiction, all at once, for the map their replica holds, and takes the
    /// first answer with epoch `at_least`; else, once all have answered, the latest any holds. Each
    /// answers only after its egress fence admitted this node's attested site.
    async fn ask_peers<C: GroupConfig, T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        jurisdiction: &str,
        directory: &GroupId,
        at_least: u64,
    ) -> Result<ShardMap, DirectoryError> {
        let body = codec::encode(jurisdiction).map_err(|error| DirectoryError::Corrupt {
            jurisdiction: jurisdiction.to_string(),
            reason: error.to_string(),
        })?;
        let mut reasons = Vec::new();
        let mut latest: Option<ShardMap> = None;
        let peers = self
            .inside
            .get(jurisdiction)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Every peer inside at once, the first answer with the wanted epoch taken: asked one after the
        // other, a dead peer's request (until its timeout) held up the answer of every peer after it, and
        // with it the client call that wanted the map, which its client then took for a dead node.
        let mut asks: FuturesUnordered<_> = peers
            .iter()
            .filter(|&&peer| peer != self.me)
            .map(|&peer| {
                let request = PeerRequest {
                    group: group_number(directory),
                    kind: RequestKind::DirectoryRead,
                    carries_data: false,
                    body: body.clone(),
                };
                self.peer_asks.fetch_add(1, Ordering::Relaxed);
                async move { (peer, host.ask_peer(peer, request).await) }
            })
            .collect();
        while let Some((peer, answer)) = asks.next().await {
            match answer {
                Ok(PeerResponse::Ok(bytes)) => match codec::decode::<Option<Vec<u8>>>(&bytes) {
                    Ok(Some(stored)) => {
                        let map = ShardMap::decode(jurisdiction, &stored)?;
                        if map.epoch() >= at_least {
                            return Ok(map);
                        }
                        if latest.as_ref().is_none_or(|latest| map.epoch() > latest.epoch()) {
                            latest = Some(map);
                        }
                    }
                    Ok(None) => reasons.push(format!("{peer}: nothing published yet")),
                    Err(error) => reasons.push(format!("{peer}: undecodable answer: {error}")),
                },
                Ok(PeerResponse::Refused { reason, .. } | PeerResponse::Failed { reason, .. }) => {
                    reasons.push(format!("{peer}: {reason}"))
                }
                Err(error) => reasons.push(error.to_string()),
            }
        }
        // In peer order, whatever order they answered in.
        reasons.sort();
        latest.ok_or_else(|| DirectoryError::Unavailable {
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

/// What [`Directory::compare_and_set`] says when the record was not at the expected revision.
const REVISION_MISMATCH: &str = "the shard map record changed meanwhile";

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupId {
        GroupId(name.into())
    }

    fn split_map() -> ShardMap {
        ShardMap::Ranged(
            shard_map::ShardMap::even("EU", &[group("eu-1"), group("eu-2")])
                .unwrap()
                .split(1 << 62, group("eu-3"))
                .unwrap(),
        )
    }

    fn corrupt_reason(result: Result<ShardMap, DirectoryError>) -> String {
        match result {
            Err(DirectoryError::Corrupt { jurisdiction, reason }) => {
                assert_eq!(jurisdiction, "EU");
                reason
            }
            other => panic!("not named as damage: {other:?}"),
        }
    }

    #[test]
    fn a_ranged_map_round_trips_and_routes_as_its_wire_form() {
        let map = split_map();
        let decoded = ShardMap::decode("EU", &map.encode().unwrap()).unwrap();
        assert_eq!(decoded, map);
        assert_eq!(decoded.epoch(), 2);
        let wire = map.to_wire();
        for user in 0..500 {
            let user = format!("user-{user}");
            assert_eq!(map.route(&user).0, wire.route(&user), "{user}");
        }
        assert_eq!(map.groups(), [group("eu-1"), group("eu-3"), group("eu-2")]);
    }

    #[test]
    fn bad_map_bytes_are_named_damage() {
        let sealed = split_map().encode().unwrap();
        for at in [0, 3, 5, sealed.len() - 1] {
            let mut damaged = sealed.clone();
            damaged[at] ^= 0x10;
            let reason = corrupt_reason(ShardMap::decode("EU", &damaged));
            assert!(!reason.is_empty(), "byte {at}");
        }
        corrupt_reason(ShardMap::decode("EU", &sealed[..sealed.len() / 2]));
        corrupt_reason(ShardMap::decode("EU", &[]));
        assert!(matches!(
            ShardMap::decode("EEA", &sealed),
            Err(DirectoryError::Corrupt { .. })
        ));
        // Well sealed, but not a map to route by: starts out of order, or a map of another jurisdiction.
        let unordered = RoutingMap {
            jurisdiction: "EU".into(),
            epoch: 2,
            layout: Layout::Ranges(vec![
                RangeStart {
                    start: 0,
                    group: "eu-1".into(),
                },
                RangeStart {
                    start: 9,
                    group: "eu-2".into(),
                },
                RangeStart {
                    start: 5,
                    group: "eu-3".into(),
                },
            ]),
        };
        let sealed = codec::seal(seal_key("EU").as_bytes(), &unordered).unwrap();
        let reason = corrupt_reason(ShardMap::decode("EU", &sealed));
        assert!(reason.contains("starts must increase"), "{reason}");
        let foreign = RoutingMap {
            jurisdiction: "EEA".into(),
            ..split_map().to_wire()
        };
        let sealed = codec::seal(seal_key("EU").as_bytes(), &foreign).unwrap();
        let reason = corrupt_reason(ShardMap::decode("EU", &sealed));
        assert!(reason.contains("a map of `EEA`"), "{reason}");
    }

    #[test]
    fn a_map_published_before_ranges_routes_exactly_as_before_and_is_not_changed_by_ranges() {
        let groups = [group("eu-1"), group("eu-2"), group("eu-3")];
        let sealed = encode_modulo_map("EU", 1, &groups).unwrap();
        let map = ShardMap::decode("EU", &sealed).unwrap();
        for user in 0..500 {
            let user = format!("user-{user}");
            assert_eq!(map.route(&user), &groups[shard_index(&user, 3)], "{user}");
            assert_eq!(map.to_wire().route(&user), groups[shard_index(&user, 3)].0);
        }
        assert_eq!(
            map.ranged(),
            Err(DirectoryError::ModuloMap {
                jurisdiction: "EU".into(),
                groups: 3
            })
        );
        // Re-encoded, it keeps its layout: a node never turns it into ranges on its own.
        assert_eq!(ShardMap::decode("EU", &map.encode().unwrap()).unwrap(), map);
        // One group: the same as the whole space owned by it, so it may change by ranges.
        let single = ShardMap::decode("EU", &encode_modulo_map("EU", 1, &groups[..1]).unwrap()).unwrap();
        let ranged = single.ranged().unwrap();
        assert_eq!((ranged.epoch(), ranged.ranges().len()), (1, 1));
    }
}
