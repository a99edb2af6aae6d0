//! The admin endpoints of a jurisdiction's shard map changes (issue 19), which `domicile shard split|move`
//! will drive as `placement apply` drives planner steps: plan on any node inside the jurisdiction, then run
//! each step on the leader of its group, in order, and run the plan again to finish an interrupted change.
//!
//! * `POST /shard-map/{jurisdiction}/plan` with a [`MapChangeRequest`]: the next map and the steps to it
//!   ([`MapPlan`]), from the latest map this node can learn. Changes nothing.
//! * `POST /shard-map/steps` with a [`MapStepRequest`]: runs it on this node, which must lead the step's
//!   group (409 with the leader otherwise). Audited before it runs, naming the operator, and its outcome.
//!
//! Both need an operator's certificate (`crate::admin_tls`'s gate, as every POST). The steps' order and
//! guarantees are `raft::map_change`'s; what is not built yet (copying a range's records) is said there.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use placement::GroupId;
use raft::directory::{DirectoryError, ShardMap};
use raft::map_change::{self, MapChange, MapStep};
use storage::record::Ownership;

use crate::admin::{audited, operator_action};
use crate::admin_api::{AdminError, MapChangeRequest, MapPlan, MapStepRequest};
use crate::admin_tls::AuthorisedOperator;
use crate::node::Node;

pub async fn plan(
    State(node): State<Arc<Node>>,
    Extension(_operator): Extension<AuthorisedOperator>,
    Path(jurisdiction): Path<String>,
    Json(body): Json<MapChangeRequest>,
) -> Response {
    let directory = node.service.directory();
    // The latest map to be had: this node's replica, else its peers inside (the publish step refuses a
    // plan from an epoch that is no longer the published one).
    let known = directory.known(&jurisdiction).map_or(1, |map| map.epoch() + 1);
    let current = match directory.refresh(&node.host, &jurisdiction, known).await {
        Ok(current) => current,
        Err(error) => return directory_error(error),
    };
    let change = match body {
        MapChangeRequest::Split { at, to } => MapChange::Split { at, to: GroupId(to) },
        MapChangeRequest::Move { start, to } => MapChange::Move {
            start,
            to: GroupId(to),
        },
    };
    match map_change::plan(directory, &current, &change) {
        Ok((next, steps)) => Json(MapPlan {
            from_epoch: current.epoch(),
            to_epoch: next.epoch(),
            next: next.to_wire(),
            steps: steps.iter().map(request_of).collect(),
        })
        .into_response(),
        Err(error) => directory_error(error),
    }
}

pub async fn execute_step(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Json(body): Json<MapStepRequest>,
) -> Response {
    let step = match step_of(&node, body) {
        Ok(step) => step,
        Err(reason) => return bad_request(reason),
    };
    let action = operator_action(&operator, "shard-map step", describe(&step));
    let execution = map_change::execute(node.service.directory(), &node.host, &step);
    let outcome = match audited(&node, action, execution, |()| String::new()).await {
        Ok(outcome) => outcome,
        Err(refused) => return refused,
    };
    match outcome {
        Ok(()) => Json(serde_json::json!({"ok": true, "step": request_of(&step)})).into_response(),
        Err(error) => directory_error(error),
    }
}

fn request_of(step: &MapStep) -> MapStepRequest {
    match step {
        MapStep::SetRanges { group, ownership } => MapStepRequest::SetRanges {
            group: group.0.clone(),
            jurisdiction: ownership.jurisdiction.clone(),
            epoch: ownership.epoch,
            ranges: ownership.ranges.clone(),
        },
        MapStep::Publish { directory, map } => MapStepRequest::Publish {
            directory: directory.0.clone(),
            map: map.to_wire(),
        },
    }
}

/// A posted step, checked: its group is of the topology and fenced to the jurisdiction it names, and a
/// map is well formed and published in that jurisdiction's directory group.
fn step_of(node: &Node, body: MapStepRequest) -> Result<MapStep, String> {
    let fenced_to = |group: &GroupId, jurisdiction: &str| match node.file.policies.get(group) {
        Some(policy) if policy.jurisdiction.name() == jurisdiction => Ok(()),
        Some(policy) => Err(format!(
            "group `{group}` is fenced to `{}`, not to `{jurisdiction}`",
            policy.jurisdiction.name()
        )),
        None => Err(format!("no group `{group}` in the topology")),
    };
    match body {
        MapStepRequest::SetRanges {
            group,
            jurisdiction,
            epoch,
            ranges,
        } => {
            let group = GroupId(group);
            fenced_to(&group, &jurisdiction)?;
            let ownership = Ownership {
                jurisdiction,
                epoch,
                ranges,
            };
            if let Some(reason) = ownership.malformed() {
                return Err(reason);
            }
            Ok(MapStep::SetRanges { group, ownership })
        }
        MapStepRequest::Publish { directory, map } => {
            let map = ShardMap::from_wire(map).map_err(|error| error.to_string())?;
            let expected = node
                .service
                .directory()
                .directory_group(map.jurisdiction())
                .map_err(|error| error.to_string())?;
            if expected.0 != directory {
                return Err(format!(
                    "the map of `{}` lives in `{expected}`, not in `{directory}`",
                    map.jurisdiction()
                ));
            }
            for group in map.groups() {
                fenced_to(&group, map.jurisdiction())?;
            }
            Ok(MapStep::Publish {
                directory: expected,
                map,
            })
        }
    }
}

fn describe(step: &MapStep) -> String {
    match step {
        MapStep::SetRanges { group, ownership } => format!(
            "{group}: own {} ranges of {} at epoch {}",
            ownership.ranges.len(),
            ownership.jurisdiction,
            ownership.epoch
        ),
        MapStep::Publish { directory, map } => format!(
            "{directory}: publish the map of {} at epoch {}",
            map.jurisdiction(),
            map.epoch()
        ),
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

fn directory_error(error: DirectoryError) -> Response {
    let (status, leader) = match &error {
        DirectoryError::NotLeader { leader, .. } => (StatusCode::CONFLICT, leader.map(|id| id.0)),
        DirectoryError::NoGroup(_) | DirectoryError::ForeignGroup { .. } => (StatusCode::BAD_REQUEST, None),
        DirectoryError::ModuloMap { .. }
        | DirectoryError::Change { .. }
        | DirectoryError::EpochMoved { .. }
        | DirectoryError::RangesRefused { .. } => (StatusCode::CONFLICT, None),
        DirectoryError::Outside { .. } => (StatusCode::NOT_FOUND, None),
        DirectoryError::Unavailable { .. } | DirectoryError::Corrupt { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, None)
        }
    };
    let body = AdminError {
        error: error.to_string(),
        leader,
        refusal: None,
    };
    (status, Json(body)).into_response()
}
