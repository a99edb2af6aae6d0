//! A node's front door: one handler for everything arriving on its QUIC endpoint — Raft traffic from peer
//! nodes (to the [`Host`]) and calls from client services (routed to the user's group).
//!
//! Clients may not speak Raft, and nodes may not make client calls: Raft traffic is accepted only from
//! attested nodes, and client calls (records and shard maps) only from client services' certificates. A
//! node's certificate presented for a client call is a residency incident (`residency::NodeAsClient`):
//! otherwise a node the egress fence never sends a group's data could read it as a client. A client call
//! is routed by its jurisdiction's published shard map ([`Directory`]) and its user id; a jurisdiction with
//! no group fenced to it is refused rather than stored anywhere else, and a node outside the jurisdiction,
//! which holds none of its routing metadata, sends the client elsewhere.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::alias::InstantOf;
use openraft::type_config::TypeConfigExt;

use placement::GroupId;
use storage::{Command, CommandError, Record, RecordKey, Response};

use crate::audit::{ClientRefusal, ClientRefusalKind, Event};
use crate::client_access::{ClientAccess, OutsideRead};
use crate::client_protocol::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency, Envelope, EnvelopeResponse,
};
use crate::config::GroupConfig;
use crate::directory::{Directory, DirectoryError, ShardMap, is_reserved_user};
use crate::host::{Host, HostError, ReadConsistency};
use crate::identity::{ClientIdentity, NodeIdentity, Peer};
use crate::quic::Handler;
use crate::residency::NodeAsClient;
use crate::stores::Stores;
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport};

/// The least time between two refreshes of one jurisdiction's map that want an epoch the last one did
/// not find. A call routed by an epoch no node has (a buggy or hostile client's; or one just published and
/// not yet replicated here) makes this node ask every node inside for it; without a bound, each such call
/// would cost one request per node inside. Within the interval the call is answered `Unavailable` from the
/// map known, and the client retries within its deadline. Refreshes that find what they want are never held.
pub const UNMET_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

pub struct NodeService<C: GroupConfig, T: Transport, S: Stores<C>> {
    host: Arc<Host<C, T, S>>,
    directory: Directory,
    access: ClientAccess,
    /// Per jurisdiction, when the last refresh that fell short of its wanted epoch ended, and the epoch it
    /// found ([`UNMET_REFRESH_INTERVAL`]).
    unmet_refreshes: Mutex<BTreeMap<String, (InstantOf<C>, u64)>>,
}

impl<C: GroupConfig, T: Transport, S: Stores<C>> NodeService<C, T, S> {
    pub fn new(host: Arc<Host<C, T, S>>, directory: Directory, access: ClientAccess) -> Self {
        NodeService {
            host,
            directory,
            access,
            unmet_refreshes: Mutex::default(),
        }
    }

    pub fn host(&self) -> &Arc<Host<C, T, S>> {
        &self.host
    }

    /// The node's view of the jurisdictions' shard maps (map changes run their steps with it).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Serves a client service's call. The caller's attested identity is the proof that it is a client
    /// service and not a node: [`route_envelope`] refuses nodes before they get here. The call must be
    /// within the service's grants; a read from outside the jurisdiction gets its personal fields
    /// pseudonymised. A refusal, and a read from outside, are answered once the audit trail holds them.
    pub async fn serve_client(&self, caller: &ClientIdentity, request: ClientRequest) -> ClientResponse {
        let (jurisdiction, name) = (request.jurisdiction().to_string(), request.name());
        if let Err(refused) = self.access.authorise(caller, &request) {
            self.host.forbid_client_call(ClientRefusal {
                kind: ClientRefusalKind::NotGranted,
                caller: caller.to_string(),
                jurisdiction: jurisdiction.clone(),
                request: name.to_string(),
                reason: refused.to_string(),
            });
            let _ = self.host.audit_durable().await;
            return ClientResponse::Forbidden {
                caller: caller.to_string(),
                jurisdiction,
                reason: refused.to_string(),
            };
        }
        let response = self.serve_client_request(request).await;
        if let ClientResponse::Residency { reason } = &response {
            self.host.record(Event::ClientRefused(ClientRefusal {
                kind: ClientRefusalKind::Residency,
                caller: caller.to_string(),
                jurisdiction,
                request: name.to_string(),
                reason: reason.clone(),
            }));
            let _ = self.host.audit_durable().await;
            return response;
        }
        self.as_seen_by(caller, &jurisdiction, name, response).await
    }

    /// A response as `caller` may see it: records' personal fields pseudonymised if it reads from outside
    /// the jurisdiction (recorded in the audit trail before it is answered), or an error if this node can't
    /// pseudonymise them. Writes' answers carry revisions only, never values.
    async fn as_seen_by(
        &self,
        caller: &ClientIdentity,
        jurisdiction: &str,
        request: &'static str,
        response: ClientResponse,
    ) -> ClientResponse {
        let ClientResponse::Done { group, mut result } = response else {
            return response;
        };
        let records: Vec<&mut Record> = match &mut result {
            ClientResult::Value {
                record: Some(record), ..
            } => vec![record],
            ClientResult::Records(records) => records.iter_mut().map(|(_, record)| record).collect(),
            _ => return ClientResponse::Done { group, result },
        };
        let (key, fields) = match self.access.outside_read(caller, jurisdiction) {
            OutsideRead::Clear => return ClientResponse::Done { group, result },
            OutsideRead::Pseudonymise { key, fields } => (key, fields),
            OutsideRead::NoKey => {
                tracing::error!(
                    %jurisdiction, %group,
                    "an outside read needs the jurisdiction's pseudonym key, and this node has none: refused"
                );
                return ClientResponse::Unavailable {
                    group,
                    reason: format!(
                        "node {} holds no pseudonym key for `{jurisdiction}`, whose personal fields {caller} may \
                         only read pseudonymised",
                        self.host.identity().node
                    ),
                };
            }
        };
        let count = records.len() as u64;
        let mut replaced = 0;
        for record in records {
            let (value, fields) = key.pseudonymise(&record.value, fields);
            record.value = value;
            replaced += fields;
        }
        self.host.record_outside_read(crate::audit::OutsideRead {
            caller: caller.to_string(),
            jurisdiction: jurisdiction.to_string(),
            group: group.clone(),
            request: request.to_string(),
            records: count,
            fields_pseudonymised: replaced,
        });
        if let Err(error) = self.host.audit_durable().await {
            // Evidence first: a read the trail can't record is not answered.
            return ClientResponse::Unavailable {
                group,
                reason: error.to_string(),
            };
        }
        ClientResponse::Done { group, result }
    }

    async fn serve_client_request(&self, request: ClientRequest) -> ClientResponse {
        match request {
            // The groups only, in map order: what clients that route `hash mod N` asked for. Their calls
            // carry no epoch and are routed here by the published map, so they stay correct.
            ClientRequest::ShardMap { jurisdiction } => {
                match self.directory.shard_map(&self.host, &jurisdiction).await {
                    Ok(map) => ClientResponse::ShardMap {
                        jurisdiction,
                        epoch: map.epoch(),
                        groups: map.groups().into_iter().map(|group| group.0).collect(),
                    },
                    Err(error) => directory_refusal(error),
                }
            }
            ClientRequest::Map { jurisdiction } => {
                match self.directory.shard_map(&self.host, &jurisdiction).await {
                    Ok(map) => ClientResponse::Map(map.to_wire()),
                    Err(error) => directory_refusal(error),
                }
            }
            ClientRequest::Call {
                jurisdiction,
                user_id,
                op,
            } => self.call(jurisdiction, user_id, None, op).await,
            ClientRequest::RoutedCall {
                jurisdiction,
                user_id,
                epoch,
                op,
            } => self.call(jurisdiction, user_id, Some(epoch), op).await,
        }
    }

    /// The map to route a call by, given the epoch the client routed by (`None`: a client that does not
    /// say): `Err` is the answer instead — `Moved` with this node's later map, or the reason no map of the
    /// client's epoch is to be had here.
    async fn map_for(&self, jurisdiction: &str, asked: Option<u64>) -> Result<Arc<ShardMap>, ClientResponse> {
        let mut map = self
            .directory
            .shard_map(&self.host, jurisdiction)
            .await
            .map_err(directory_refusal)?;
        let Some(asked) = asked else {
            return Ok(map);
        };
        if asked > map.epoch() {
            // The client saw a later map than this node: learn it before routing by anything.
            map = self
                .refresh(jurisdiction, asked)
                .await
                .map_err(directory_refusal)?;
            if asked > map.epoch() {
                return Err(ClientResponse::Unavailable {
                    group: String::new(),
                    reason: format!(
                        "node {} knows the map of `{jurisdiction}` up to epoch {} only, and the call was routed \
                         by epoch {asked}",
                        self.host.identity().node,
                        map.epoch()
                    ),
                });
            }
        }
        if asked < map.epoch() {
            return Err(ClientResponse::Moved {
                asked_epoch: asked,
                map: map.to_wire(),
            });
        }
        Ok(map)
    }

    /// [`Directory::refresh`], wanting epoch `wanted`, unless a refresh of the same jurisdiction fell short
    /// of an epoch at most `wanted` less than [`UNMET_REFRESH_INTERVAL`] ago: then the map known answers.
    async fn refresh(&self, jurisdiction: &str, wanted: u64) -> Result<Arc<ShardMap>, DirectoryError> {
        let held = {
            let unmet = self.unmet_refreshes.lock().expect("refresh lock");
            unmet
                .get(jurisdiction)
                .is_some_and(|&(ended, found)| wanted > found && C::now() < ended + UNMET_REFRESH_INTERVAL)
        };
        if held && let Some(known) = self.directory.known(jurisdiction) {
            return Ok(known);
        }
        let map = self.directory.refresh(&self.host, jurisdiction, wanted).await?;
        let mut unmet = self.unmet_refreshes.lock().expect("refresh lock");
        if map.epoch() < wanted {
            unmet.insert(jurisdiction.to_string(), (C::now(), map.epoch()));
        } else {
            unmet.remove(jurisdiction);
        }
        Ok(map)
    }

    /// A group refused the user as no longer its own (its committed ranges are of `owned_epoch`): learn
    /// the map that moved it, and tell the client to route by it.
    async fn moved(
        &self,
        jurisdiction: &str,
        user_id: &str,
        asked: Option<u64>,
        routed_by: &ShardMap,
        group: &GroupId,
        owned_epoch: u64,
    ) -> ClientResponse {
        let wanted = owned_epoch.max(routed_by.epoch() + 1);
        let unavailable = |reason: String| ClientResponse::Unavailable {
            group: group.0.clone(),
            reason,
        };
        match self.refresh(jurisdiction, wanted).await {
            Ok(map) if map.epoch() > routed_by.epoch() && map.route(user_id) != group => match asked {
                Some(asked) => ClientResponse::Moved {
                    asked_epoch: asked,
                    map: map.to_wire(),
                },
                // A client that does not say its epoch is routed here by the map just learnt when it retries.
                None => unavailable(format!(
                    "the user's range moved from `{group}` at epoch {}: retry",
                    map.epoch()
                )),
            },
            Ok(map) => unavailable(format!(
                "`{group}` gave up the user's range at epoch {owned_epoch}, and the map of `{jurisdiction}` is \
                 at epoch {} here: the change is not published yet",
                map.epoch()
            )),
            Err(error) => unavailable(error.to_string()),
        }
    }

    async fn call(
        &self,
        jurisdiction: String,
        user_id: String,
        asked: Option<u64>,
        op: ClientOp,
    ) -> ClientResponse {
        if is_reserved_user(&user_id) {
            return ClientResponse::Invalid {
                reason: "user ids starting with a NUL byte are reserved for the system".into(),
            };
        }
        let map = match self.map_for(&jurisdiction, asked).await {
            Ok(map) => map,
            Err(answer) => return answer,
        };
        let group = map.route(&user_id).clone();
        let key = |record: String| RecordKey::new(jurisdiction.clone(), user_id.clone(), record);
        let outcome = match op {
            ClientOp::Get { record, consistency } => {
                let consistency = match consistency {
                    Consistency::Linearizable => ReadConsistency::Linearizable,
                    Consistency::Stale => ReadConsistency::Stale,
                };
                self.host
                    .read(&group, key(record), consistency)
                    .await
                    .map(|read| ClientResult::Value {
                        record: read.record,
                        stale: read.stale,
                    })
            }
            ClientOp::Put { record, value, write } => {
                self.write(
                    &group,
                    Command::Put {
                        write,
                        key: key(record),
                        value,
                    },
                )
                .await
            }
            ClientOp::Delete { record, write } => {
                self.write(
                    &group,
                    Command::Delete {
                        write,
                        key: key(record),
                    },
                )
                .await
            }
            ClientOp::CompareAndSet {
                record,
                expected_revision,
                value,
                write,
            } => {
                let command = Command::CompareAndSet {
                    write,
                    key: key(record),
                    expected_revision,
                    value,
                };
                self.write(&group, command).await
            }
            ClientOp::Scan => {
                let command = Command::Scan {
                    jurisdiction: jurisdiction.clone(),
                    user_id: user_id.clone(),
                };
                self.write(&group, command).await
            }
        };
        match outcome {
            Ok(result) => ClientResponse::Done {
                group: group.0,
                result,
            },
            Err(HostError::NotLeader { leader, .. }) => ClientResponse::NotLeader {
                group: group.0,
                leader: leader.map(|node| node.0),
            },
            Err(HostError::UnknownGroup(_)) => ClientResponse::NotHosted { group: group.0 },
            Err(HostError::Residency(refusal)) => ClientResponse::Residency {
                reason: refusal.to_string(),
            },
            Err(HostError::NotOwned { epoch, .. }) => {
                self.moved(&jurisdiction, &user_id, asked, &map, &group, epoch)
                    .await
            }
            Err(error) => ClientResponse::Unavailable {
                group: group.0,
                reason: error.to_string(),
            },
        }
    }

    /// A peer inside the jurisdiction asks for the shard map this node's directory replica holds. If none
    /// is published yet and this node leads the directory group, it publishes the topology's proposal
    /// first: so a map gets published however clients and peers happen to be spread over the nodes.
    async fn serve_directory_read(&self, peer: &NodeIdentity, request: PeerRequest) -> PeerResponse {
        let (directory, jurisdiction) = match self.host.admit_directory_read(peer, &request) {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let failed = |reason: String| PeerResponse::Failed {
            group: request.group,
            reason,
        };
        let stored = match self
            .directory
            .read_own_replica(&self.host, &jurisdiction, &directory)
            .await
        {
            Ok(map) => map.map(|map| map.encode()).transpose(),
            Err(error) => Err(error),
        };
        match stored.map(|stored| storage::codec::encode(&stored)) {
            Ok(Ok(bytes)) => PeerResponse::Ok(bytes),
            Ok(Err(error)) => failed(error.to_string()),
            Err(error) => failed(error.to_string()),
        }
    }

    async fn write(&self, group: &GroupId, command: Command) -> Result<ClientResult, HostError> {
        Ok(match self.host.write(group, command).await? {
            Response::Written { revision } => ClientResult::Written { revision },
            Response::Deleted { previous_revision } => ClientResult::Deleted { previous_revision },
            Response::Value(record) => ClientResult::Value { record, stale: false },
            Response::Records(records) => ClientResult::Records(records),
            Response::Rejected(CommandError::NotOwned {
                jurisdiction, epoch, ..
            }) => {
                return Err(HostError::NotOwned {
                    group: group.clone(),
                    jurisdiction,
                    epoch,
                });
            }
            Response::Rejected(error) => ClientResult::Rejected(error),
            other => {
                return Err(HostError::Raft {
                    group: group.clone(),
                    reason: format!("unexpected response {other:?}"),
                });
            }
        })
    }
}

/// What a client is told when the shard map can't be had here.
fn directory_refusal(error: DirectoryError) -> ClientResponse {
    match error {
        DirectoryError::NoGroup(_) => ClientResponse::Residency {
            reason: error.to_string(),
        },
        DirectoryError::Outside { directory, .. } => ClientResponse::NotHosted { group: directory.0 },
        DirectoryError::Unavailable { ref directory, .. } => ClientResponse::Unavailable {
            group: directory.0.clone(),
            reason: error.to_string(),
        },
        DirectoryError::Corrupt { .. } => {
            tracing::error!(%error, "refusing to route by a damaged shard map");
            ClientResponse::Unavailable {
                group: String::new(),
                reason: error.to_string(),
            }
        }
        // Map changes' errors: not met while routing, but answered as what they are if they are.
        DirectoryError::NotLeader { ref group, .. } | DirectoryError::RangesRefused { ref group, .. } => {
            ClientResponse::Unavailable {
                group: group.0.clone(),
                reason: error.to_string(),
            }
        }
        DirectoryError::ModuloMap { .. }
        | DirectoryError::Change { .. }
        | DirectoryError::ForeignGroup { .. }
        | DirectoryError::EpochMoved { .. } => ClientResponse::Unavailable {
            group: String::new(),
            reason: error.to_string(),
        },
    }
}

/// Raft traffic only from attested nodes; client calls only from client services. Each refusal names the
/// caller; a node's client call is also counted and logged as a residency incident.
pub async fn route_envelope<C: GroupConfig, T: Transport, S: Stores<C>>(
    host: &Host<C, T, S>,
    service: Option<&NodeService<C, T, S>>,
    peer: Peer,
    envelope: Envelope,
) -> EnvelopeResponse {
    match (envelope, peer) {
        // An operator isolated this node from the sender (a drill): refused unread, both ways.
        (Envelope::Peer(request), Peer::Node(node)) if host.isolated_from(node.node) => {
            EnvelopeResponse::Peer(PeerResponse::Refused {
                group: request.group,
                reason: crate::fault::refusal_reason(host.identity().node),
            })
        }
        (Envelope::Peer(request), Peer::Node(node)) => EnvelopeResponse::Peer(match service {
            Some(service) if request.kind == RequestKind::DirectoryRead => {
                service.serve_directory_read(&node, request).await
            }
            _ => host.handle(&node, request).await,
        }),
        (Envelope::Peer(request), Peer::Client(client)) => EnvelopeResponse::Peer(PeerResponse::Refused {
            group: request.group,
            reason: format!("client `{}` may not speak Raft", client.name),
        }),
        (Envelope::Client(request), Peer::Node(node)) => {
            let refusal = host.refuse_node_as_client(NodeAsClient {
                node: node.node,
                site: node.site.clone(),
                country: node.country,
                jurisdiction: request.jurisdiction().to_string(),
                request: request.name(),
            });
            // Refused and recorded; answered once the record is on disk.
            let _ = host.audit_durable().await;
            EnvelopeResponse::Client(ClientResponse::Forbidden {
                caller: refusal.caller(),
                jurisdiction: refusal.jurisdiction.clone(),
                reason: refusal.to_string(),
            })
        }
        (Envelope::Peer(request), Peer::Operator(operator)) => {
            EnvelopeResponse::Peer(PeerResponse::Refused {
                group: request.group,
                reason: format!("{operator} may not speak Raft"),
            })
        }
        // Operators change the cluster through the admin endpoints; they hold no grant to user records.
        (Envelope::Client(request), Peer::Operator(operator)) => {
            EnvelopeResponse::Client(ClientResponse::Forbidden {
                caller: operator.to_string(),
                jurisdiction: request.jurisdiction().to_string(),
                reason: format!(
                    "{operator} may not call the client API: operator certificates are for the admin endpoints"
                ),
            })
        }
        (Envelope::Client(request), Peer::Client(client)) => EnvelopeResponse::Client(match service {
            Some(service) => service.serve_client(&client, request).await,
            None => ClientResponse::Invalid {
                reason: "this endpoint serves no clients".into(),
            },
        }),
    }
}

impl<C: GroupConfig, T: Transport, S: Stores<C>> Handler<Envelope, EnvelopeResponse>
    for NodeService<C, T, S>
{
    fn handle(
        &self,
        peer: Peer,
        request: Envelope,
    ) -> Pin<Box<dyn Future<Output = EnvelopeResponse> + Send + '_>> {
        Box::pin(route_envelope(&self.host, Some(self), peer, request))
    }
}

impl<C: GroupConfig, T: Transport, S: Stores<C>> Handler<Envelope, EnvelopeResponse> for Host<C, T, S> {
    fn handle(
        &self,
        peer: Peer,
        request: Envelope,
    ) -> Pin<Box<dyn Future<Output = EnvelopeResponse> + Send + '_>> {
        Box::pin(route_envelope(self, None, peer, request))
    }
}
