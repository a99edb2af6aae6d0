//! The admin endpoints behind which `domicile shard split|move` runs `raft::range_copy` from outside the
//! cluster (`crate::shard_cli::AdminLeaders`): each runs one operation of the protocol on the node that
//! leads the group it names, and answers 409 naming the leader on any other node, so the caller follows.
//!
//! * `POST /range-copy/{group}/command`: one of the protocol's commands — `SetOwnership`, `Receive`,
//!   `CopyIn`, `Depart`, `Purge`, `CancelIncoming`, `MergeSessions` — and nothing else (a client's put or delete is refused
//!   400). The body is a frame (`application/x-domicile-frame`, see [`crate::admin_api::frame_body`]),
//!   since a `CopyIn` carries up to 4 MiB of values; the answer is the command's `Response`, JSON.
//! * `POST /range-copy/{group}/read` ([`ReadRangeRequest`], JSON): a bounded run of the group's records
//!   in the ranges after a key, read after a linearizable barrier; answered as a frame of `RangeBatch`.
//! * `POST /range-copy/{group}/digest` ([`DigestRequest`], JSON): the ranges' digest, after a barrier.
//! * `POST /range-copy/{group}/sessions` ([`SessionsRequest`], JSON): a bounded run of the group's client
//!   sessions (its deduplication entries) after a client id, after a barrier; answered as a frame of
//!   `SessionBatch`. The copy merges them into the gainer (`Command::MergeSessions`).
//! * `GET /range-copy/{group}/state`: the group's committed and incoming ranges, after a barrier.
//! * `GET /shard-map/{jurisdiction}/published`: the published map, read linearizably on the directory
//!   group's leader. (Publication is `POST /shard-map/steps`'s `publish` step, `crate::admin_shard_map`.)
//!
//! The POSTs need an operator's certificate (`crate::admin_tls`'s gate) and are in the node's audit trail
//! before they run, naming the operator, and so is their outcome: reads too, since they carry records out
//! of the group. Every named jurisdiction must be the group's own (its fence), so no record is copied into,
//! or read for, a group fenced elsewhere. Bodies are bounded before they are read ([`COMMAND_BYTES_MAX`],
//! [`REQUEST_BYTES_MAX`]); a read is bounded by `range_copy`'s batch limits whatever is asked.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use placement::GroupId;
use raft::directory::{ShardMap, shard_map_key};
use raft::host::{HostError, ReadConsistency};
use raft::range_copy::{BATCH_BYTES, BATCH_RECORDS, BATCH_SESSIONS};
use storage::Command;
use storage::record::Ownership;

use crate::admin::{audited, error_response, operator_action};
use crate::admin_api::{
    AdminError, DigestRequest, FRAME_CONTENT_TYPE, RangeState, ReadRangeRequest, SessionsRequest, frame_body,
    open_body,
};
use crate::admin_tls::AuthorisedOperator;
use crate::node::Node;

/// The largest command body: a `CopyIn` of at most 4 MiB of values plus one value of at most 1 MiB,
/// with its keys, fits with room to spare.
pub const COMMAND_BYTES_MAX: usize = 8 << 20;
/// The largest JSON request (a read or a digest: a jurisdiction, ranges and a key).
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// The topology's groups, whose policies name the jurisdiction each is fenced to.
type Policies = std::collections::BTreeMap<GroupId, placement::GroupPolicy>;

/// Ranges one read or digest may name (a map holds at most 4,096).
const RANGES_MAX: usize = 4096;

pub async fn command(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let group = GroupId(group);
    let command: Command = match open_body(&body) {
        Ok(command) => command,
        Err(error) => return bad_request(format!("the command's frame: {error}")),
    };
    let what = match check_command(&node.file.policies, &group, &command) {
        Ok(what) => what,
        Err(reason) => return bad_request(reason),
    };
    let action = operator_action(&operator, "range-copy command", format!("{group}: {what}"));
    let write = node.host.write(&group, command);
    let outcome = match audited(&node, action, write, |answer| {
        format!("{answer:?}").chars().take(200).collect()
    })
    .await
    {
        Ok(outcome) => outcome,
        Err(refused) => return refused,
    };
    match outcome {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => error_response(error),
    }
}

pub async fn read(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<ReadRangeRequest>,
) -> Response {
    let group = GroupId(group);
    if let Err(reason) = check_ranges(&node.file.policies, &group, &body.jurisdiction, &body.ranges) {
        return bad_request(reason);
    }
    let action = operator_action(
        &operator,
        "range-copy read",
        format!(
            "{group}: records of {} in {} range(s) after {:?}",
            body.jurisdiction,
            body.ranges.len(),
            body.after
        ),
    );
    let records_max = body.records_max.unwrap_or(BATCH_RECORDS).clamp(1, BATCH_RECORDS);
    let bytes_max = body.bytes_max.unwrap_or(BATCH_BYTES).clamp(1, BATCH_BYTES);
    let read = node.host.read_range(
        &group,
        &body.jurisdiction,
        &body.ranges,
        body.after,
        records_max,
        bytes_max,
    );
    let describe =
        |batch: &storage::apply::RangeBatch| format!("{} records, more: {}", batch.records.len(), batch.more);
    audited(&node, action, read, describe)
        .await
        .map_or_else(|refused| refused, framed)
}

pub async fn sessions(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<SessionsRequest>,
) -> Response {
    let group = GroupId(group);
    if !node.file.policies.contains_key(&group) {
        return error_response(HostError::UnknownGroup(group.0));
    }
    let action = operator_action(
        &operator,
        "range-copy sessions",
        format!("{group}: client sessions after {:?}", body.after),
    );
    let read = node.host.read_sessions(&group, body.after, BATCH_SESSIONS);
    let describe = |batch: &storage::apply::SessionBatch| {
        format!("{} sessions, more: {}", batch.sessions.len(), batch.more)
    };
    audited(&node, action, read, describe)
        .await
        .map_or_else(|refused| refused, framed)
}

pub async fn digest(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<DigestRequest>,
) -> Response {
    let group = GroupId(group);
    if let Err(reason) = check_ranges(&node.file.policies, &group, &body.jurisdiction, &body.ranges) {
        return bad_request(reason);
    }
    let action = operator_action(
        &operator,
        "range-copy digest",
        format!("{group}: {} range(s) of {}", body.ranges.len(), body.jurisdiction),
    );
    let digest = node.host.range_digest(&group, &body.jurisdiction, &body.ranges);
    let outcome = match audited(&node, action, digest, |digest| format!("{digest:?}")).await {
        Ok(outcome) => outcome,
        Err(refused) => return refused,
    };
    match outcome {
        Ok(digest) => Json(digest).into_response(),
        Err(error) => error_response(error),
    }
}

pub async fn state(State(node): State<Arc<Node>>, Path(group): Path<String>) -> Response {
    let group = GroupId(group);
    if !node.file.policies.contains_key(&group) {
        return error_response(HostError::UnknownGroup(group.0));
    }
    match node.host.range_state(&group).await {
        Ok((owned, incoming)) => Json(RangeState { owned, incoming }).into_response(),
        Err(error) => error_response(error),
    }
}

/// The published map of `jurisdiction`, read linearizably on its directory group's leader.
pub async fn published(State(node): State<Arc<Node>>, Path(jurisdiction): Path<String>) -> Response {
    let directory = match node.service.directory().directory_group(&jurisdiction) {
        Ok(directory) => directory,
        Err(error) => return bad_request(error.to_string()),
    };
    let read = node
        .host
        .read(
            &directory,
            shard_map_key(&jurisdiction),
            ReadConsistency::Linearizable,
        )
        .await;
    let record = match read {
        Ok(outcome) => outcome.record,
        Err(error) => return error_response(error),
    };
    let Some(record) = record else {
        return unavailable(format!("no map of `{jurisdiction}` is published yet"));
    };
    match ShardMap::decode(&jurisdiction, &record.value) {
        Ok(map) => Json(map.to_wire()).into_response(),
        Err(error) => unavailable(error.to_string()),
    }
}

/// A command the range copy may send, on the ranges of the group's own jurisdiction; described for the
/// audit trail.
fn check_command(policies: &Policies, group: &GroupId, command: &Command) -> Result<String, String> {
    let ownership = |ownership: &Ownership, what: &str| -> Result<String, String> {
        fenced_to(policies, group, &ownership.jurisdiction)?;
        if let Some(reason) = ownership.malformed() {
            return Err(reason);
        }
        Ok(format!(
            "{what} {} range(s) of {} at epoch {}",
            ownership.ranges.len(),
            ownership.jurisdiction,
            ownership.epoch
        ))
    };
    match command {
        Command::SetOwnership(owned) => ownership(owned, "own"),
        Command::Receive(incoming) => ownership(incoming, "receive"),
        Command::Depart(owned) => ownership(owned, "depart to"),
        Command::CopyIn {
            jurisdiction,
            epoch,
            records,
        } => {
            fenced_to(policies, group, jurisdiction)?;
            if let Some(key) = records
                .iter()
                .find(|copied| copied.key.jurisdiction != *jurisdiction)
            {
                return Err(format!(
                    "a copied record of `{}` in a copy into `{jurisdiction}`",
                    key.key.jurisdiction
                ));
            }
            Ok(format!(
                "copy in {} record(s) of {jurisdiction} at epoch {epoch}",
                records.len()
            ))
        }
        Command::Purge {
            jurisdiction,
            after,
            limit,
        } => {
            fenced_to(policies, group, jurisdiction)?;
            Ok(format!(
                "purge up to {limit} record(s) of {jurisdiction} it does not own, after {after:?}"
            ))
        }
        Command::CancelIncoming { jurisdiction, epoch } => {
            fenced_to(policies, group, jurisdiction)?;
            Ok(format!(
                "cancel the incoming ranges of {jurisdiction} at epoch {epoch}"
            ))
        }
        Command::MergeSessions {
            jurisdiction,
            epoch,
            sessions,
        } => {
            fenced_to(policies, group, jurisdiction)?;
            Ok(format!(
                "merge {} client session(s) of {jurisdiction}'s loser at epoch {epoch}",
                sessions.len()
            ))
        }
        other => Err(format!(
            "only the range copy's commands run here, not {}",
            format!("{other:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or("this one")
        )),
    }
}

fn check_ranges(
    policies: &Policies,
    group: &GroupId,
    jurisdiction: &str,
    ranges: &[(u64, u64)],
) -> Result<(), String> {
    fenced_to(policies, group, jurisdiction)?;
    if ranges.is_empty() || ranges.len() > RANGES_MAX {
        return Err(format!("{} ranges named: from 1 to {RANGES_MAX}", ranges.len()));
    }
    match ranges.iter().find(|(start, end)| start > end) {
        Some((start, end)) => Err(format!("range {start}..={end} ends before it starts")),
        None => Ok(()),
    }
}

fn fenced_to(policies: &Policies, group: &GroupId, jurisdiction: &str) -> Result<(), String> {
    match policies.get(group) {
        Some(policy) if policy.jurisdiction.name() == jurisdiction => Ok(()),
        Some(policy) => Err(format!(
            "group `{group}` is fenced to `{}`, not to `{jurisdiction}`",
            policy.jurisdiction.name()
        )),
        None => Err(format!("no group `{group}` in the topology")),
    }
}

/// A read's answer as a frame (its records may be binary and megabytes long), or its error.
fn framed<T: serde::Serialize>(outcome: Result<T, HostError>) -> Response {
    match outcome.and_then(|answer| {
        frame_body(&answer).map_err(|error| HostError::Store(format!("can't encode the answer: {error}")))
    }) {
        Ok(bytes) => ([("content-type", FRAME_CONTENT_TYPE)], bytes).into_response(),
        Err(error) => error_response(error),
    }
}

fn bad_request(reason: String) -> Response {
    let body = AdminError {
        error: reason,
        leader: None,
        refusal: None,
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn unavailable(reason: String) -> Response {
    let body = AdminError {
        error: reason,
        leader: None,
        refusal: None,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use placement::TopologyFile;
    use storage::record::CopiedRecord;
    use storage::{Record, RecordKey, WriteId};

    use super::*;

    const TOPOLOGY: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]
[[site]]
name = "ashburn"
country = "US"
nodes = [2]
[[group]]
name = "eu"
jurisdiction = "EU"
voters = 1
[[group]]
name = "us"
jurisdiction = "US"
voters = 1
"#;

    fn policies() -> Policies {
        TopologyFile::parse(TOPOLOGY).unwrap().policies
    }

    fn copy_in(jurisdiction: &str, record_jurisdiction: &str) -> Command {
        Command::CopyIn {
            jurisdiction: jurisdiction.into(),
            epoch: 2,
            records: vec![CopiedRecord {
                key: RecordKey::new(record_jurisdiction, "alice", "profile"),
                record: Some(Record {
                    value: b"v".to_vec(),
                    revision: 7,
                }),
            }],
        }
    }

    #[test]
    fn only_the_range_copys_commands_on_the_groups_own_jurisdiction_pass() {
        let policies = policies();
        let eu = GroupId("eu".into());
        assert!(check_command(&policies, &eu, &copy_in("EU", "EU")).is_ok());
        let refused = check_command(&policies, &GroupId("us".into()), &copy_in("EU", "EU")).unwrap_err();
        assert!(refused.contains("fenced to `US`, not to `EU`"), "{refused}");
        let smuggled = check_command(&policies, &eu, &copy_in("EU", "US")).unwrap_err();
        assert!(smuggled.contains("a copied record of `US`"), "{smuggled}");
        let put = Command::Put {
            write: WriteId {
                client_id: 1,
                sequence: 1,
            },
            key: RecordKey::new("EU", "alice", "profile"),
            value: b"v".to_vec(),
        };
        let refused = check_command(&policies, &eu, &put).unwrap_err();
        assert!(
            refused.contains("only the range copy's commands run here, not Put"),
            "{refused}"
        );
        let unknown = check_command(&policies, &GroupId("nowhere".into()), &copy_in("EU", "EU")).unwrap_err();
        assert!(unknown.contains("no group `nowhere`"), "{unknown}");
    }

    #[test]
    fn reads_and_digests_name_bounded_well_formed_ranges() {
        let policies = policies();
        let eu = GroupId("eu".into());
        assert!(check_ranges(&policies, &eu, "EU", &[(0, 5), (9, u64::MAX)]).is_ok());
        assert!(check_ranges(&policies, &eu, "EU", &[]).is_err());
        assert!(
            check_ranges(&policies, &eu, "EU", &[(5, 4)])
                .unwrap_err()
                .contains("ends before it starts")
        );
        assert!(check_ranges(&policies, &eu, "EU", &vec![(0, 1); RANGES_MAX + 1]).is_err());
        assert!(check_ranges(&policies, &eu, "US", &[(0, 1)]).is_err());
    }

    #[test]
    fn a_frame_body_round_trips_and_a_damaged_one_is_refused() {
        let command = copy_in("EU", "EU");
        let mut body = frame_body(&command).unwrap();
        assert_eq!(open_body::<Command>(&body).unwrap(), command);
        let last = body.len() - 1;
        body[last] ^= 1;
        assert!(matches!(
            open_body::<Command>(&body),
            Err(wire::codec::CodecError::Checksum { .. })
        ));
        assert!(open_body::<Command>(&body[..5]).is_err());
    }
}
