//! The admin endpoint: HTTPS, and plain HTTP for reads from loopback (`crate::admin_tls`), on loopback by
//! default. `GET /status`, `GET /ready`, `GET /metrics` (Prometheus text), `GET /topology`,
//! `POST /groups/{group}/learners`, `POST /groups/{group}/leader`, `POST /groups/{group}/steps` (a planner
//! step), `POST /drain`, `POST /shard-map/{jurisdiction}/plan` and `POST /shard-map/steps` (a change of a
//! jurisdiction's shard map, `crate::admin_shard_map`), and the range copy's operations on a group's
//! leader (`/range-copy/{group}/...`, `GET /shard-map/{jurisdiction}/published`:
//! `crate::admin_range_copy`).
//!
//! `GET /ready` is for an orchestrator's readiness probe: 200 once the node serves its groups — the
//! endpoint only listens after the node has opened them, and every group it hosts knows a leader — and
//! 503 naming the groups that know none otherwise. A node whose groups have lost their quorum is
//! therefore not ready, which stops a disruption budget from letting another node go.
//!
//! Membership and leadership requests go through the host, so through the residency fence: a refused
//! request answers 403 with the typed refusal, and is counted as an incident.
//!
//! Who may call what is `crate::admin_tls`'s gate, in front of every route: a state-changing request
//! (learners, leader, steps, drain, faults — any method but GET and HEAD) needs an operator certificate
//! over mutual TLS, and its handler receives the [`AuthorisedOperator`] the gate admitted. Reads stay open
//! (over HTTPS, and over plain HTTP from loopback).
//!
//! Every state-changing request is in the node's audit trail before it runs, naming the operator its
//! certificate names — if the trail can't record it, it does not run (503) — and so is its outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use audit::event::OperatorAction;
use axum::extract::{DefaultBodyLimit, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use placement::{GroupId, NodeId, Step};
use raft::audit::{Event, describe_step};
use raft::host::HostError;

use crate::admin_api::{
    AddLearner, AdminError, GroupView, Incidents, Member, MoveLeader, NodeStatus, Readiness, StepRequest,
    TopologyGroup,
};
use crate::admin_tls::AuthorisedOperator;
use crate::node::Node;

pub async fn serve(node: Arc<Node>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(node.config.admin)
        .await
        .with_context(|| {
            format!(
                "can't listen on the admin address {} (is the port in use?)",
                node.config.admin
            )
        })?;
    let app = Router::new()
        .route("/status", get(status))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/groups/{group}/learners", post(add_learner))
        .route("/groups/{group}/leader", post(move_leader))
        .route("/groups/{group}/steps", post(execute_step))
        .route("/topology", get(topology))
        .route("/drain", post(drain))
        .route("/faults", get(crate::admin_faults::fault))
        .route("/faults/isolate", post(crate::admin_faults::isolate))
        .route("/faults/heal", post(crate::admin_faults::heal))
        .route(
            "/shard-map/{jurisdiction}/plan",
            post(crate::admin_shard_map::plan),
        )
        .route("/shard-map/steps", post(crate::admin_shard_map::execute_step))
        .route(
            "/shard-map/{jurisdiction}/published",
            get(crate::admin_range_copy::published),
        )
        .route(
            "/range-copy/{group}/command",
            post(crate::admin_range_copy::command)
                .layer(DefaultBodyLimit::max(crate::admin_range_copy::COMMAND_BYTES_MAX)),
        )
        .route(
            "/range-copy/{group}/read",
            post(crate::admin_range_copy::read)
                .layer(DefaultBodyLimit::max(crate::admin_range_copy::REQUEST_BYTES_MAX)),
        )
        .route(
            "/range-copy/{group}/digest",
            post(crate::admin_range_copy::digest)
                .layer(DefaultBodyLimit::max(crate::admin_range_copy::REQUEST_BYTES_MAX)),
        )
        .route(
            "/range-copy/{group}/sessions",
            post(crate::admin_range_copy::sessions)
                .layer(DefaultBodyLimit::max(crate::admin_range_copy::REQUEST_BYTES_MAX)),
        )
        .route("/range-copy/{group}/state", get(crate::admin_range_copy::state))
        .with_state(node.clone());
    let observer = node.clone();
    tokio::spawn(async move {
        // Leader changes are counted by sampling: a change between two samples 200 ms apart is one change.
        loop {
            observe(&observer);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let tls = if node.config.admin_tls {
        Some(crate::admin_tls::node_server_config(&node.config)?)
    } else {
        None
    };
    Ok(tokio::spawn(crate::admin_tls::serve(listener, tls, node, app)))
}

fn observe(node: &Node) {
    let statuses: Vec<_> = node
        .host
        .hosted_groups()
        .iter()
        .filter_map(|group| node.host.status(group).ok())
        .collect();
    node.metrics
        .observe(node.config.node.0, &statuses, node.host.incidents());
    // What changed in each group (term, leader, membership) goes into the audit trail, with the verdict.
    node.host.observe_groups();
    node.metrics
        .observe_audit(node.audit.durable_entries(), node.audit.failures());
    crate::admin_faults::observe(node);
}

pub fn node_status(node: &Node) -> NodeStatus {
    let topology = &node.file.topology;
    let member = |id: NodeId, jurisdiction: &placement::Jurisdiction| {
        let site = topology.site_of(id);
        Member {
            node: id.0,
            site: site.map_or("?".into(), |site| site.name.0.clone()),
            country: site.map_or("?".into(), |site| site.country.to_string()),
            inside: topology.is_inside(id, jurisdiction),
        }
    };
    let groups = node
        .host
        .hosted_groups()
        .iter()
        .filter_map(|group| node.host.status(group).ok())
        .map(|status| {
            let jurisdiction = &node.file.policies[&status.group].jurisdiction;
            GroupView {
                group: status.group.0.clone(),
                jurisdiction: status.jurisdiction.clone(),
                leader: status.leader.map(|id| id.0),
                term: status.term,
                last_applied: status.last_applied,
                committed: status.committed,
                snapshots_sent: status.snapshots_sent,
                snapshots_installed: status.snapshots_installed,
                snapshot_index: status.snapshot_index,
                records: None,
                voters: status
                    .membership
                    .voters
                    .iter()
                    .map(|&id| member(id, jurisdiction))
                    .collect(),
                learners: status
                    .membership
                    .learners
                    .iter()
                    .map(|&id| member(id, jurisdiction))
                    .collect(),
            }
        })
        .collect();
    let topology_groups = match raft::bootstrap::initial_placement(&node.file) {
        Ok(initial) => initial
            .iter()
            .map(|group| TopologyGroup {
                group: group.policy.group.0.clone(),
                jurisdiction: group.policy.jurisdiction.name().to_string(),
                initial_voters: group
                    .membership
                    .voters
                    .iter()
                    .map(|&id| member(id, &group.policy.jurisdiction))
                    .collect(),
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "no initial placement to report in the status");
            Vec::new()
        }
    };
    let identity = node.host.identity();
    let incidents = node.host.incidents();
    NodeStatus {
        cluster: node.config.cluster.clone(),
        node: identity.node.0,
        site: identity.site.0.clone(),
        country: identity.country.to_string(),
        listen: node.config.listen.to_string(),
        peer_admins: node
            .config
            .peers
            .iter()
            .filter_map(|(id, peer)| peer.admin.as_ref().map(|admin| (id.0, admin.to_string())))
            .collect::<BTreeMap<_, _>>(),
        groups,
        draining: node.host.is_draining(),
        incidents: Incidents {
            membership_refused: incidents.membership_refused,
            egress_blocked: incidents.egress_blocked,
            ingress_refused: incidents.ingress_refused,
            client_calls_refused: incidents.client_calls_refused,
            client_calls_forbidden: incidents.client_calls_forbidden,
            outside_reads: incidents.outside_reads,
        },
        topology_groups,
        purged: node.purges.records(),
        retired: node
            .file
            .policies
            .keys()
            .filter(|group| node.host.is_retired(group))
            .map(|group| group.0.clone())
            .collect(),
        purging: node
            .file
            .policies
            .keys()
            .filter_map(|group| {
                let state = node.host.purge_state(group)?;
                Some(crate::admin_api::Purging {
                    group: group.0.clone(),
                    state: state.name().to_string(),
                })
            })
            .collect(),
        fault: crate::admin_faults::view(node),
        round_trips: node.round_trips.peers(),
        round_trips_uncovered: node.round_trips.uncovered(),
    }
}

async fn status(State(node): State<Arc<Node>>) -> Json<NodeStatus> {
    let mut status = node_status(&node);
    // Each replica's record count, from the store's own count (no record is read): what
    // `domicile shard auto-split` compares with its threshold.
    for view in &mut status.groups {
        view.records = node
            .host
            .record_count(&placement::GroupId(view.group.clone()))
            .await
            .ok();
    }
    Json(status)
}

pub fn readiness(node: &Node) -> Readiness {
    let groups = node.host.hosted_groups();
    let without_leader: Vec<String> = groups
        .iter()
        .filter(|group| {
            node.host
                .status(group)
                .map_or(true, |status| status.leader.is_none())
        })
        .map(|group| group.0.clone())
        .collect();
    Readiness {
        ready: without_leader.is_empty(),
        groups: groups.len(),
        without_leader,
    }
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let readiness = readiness(&node);
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    observe(&node);
    (
        [("content-type", "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
}

async fn add_learner(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<AddLearner>,
) -> Response {
    let step = Step::AddLearner {
        group: GroupId(group),
        node: NodeId(body.node),
    };
    execute(&node, &operator, "add_learner", step).await
}

async fn move_leader(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<MoveLeader>,
) -> Response {
    let step = Step::TransferLeader {
        group: GroupId(group),
        to: NodeId(body.to),
    };
    execute(&node, &operator, "move_leader", step).await
}

/// `POST /groups/{group}/steps`: one planner step, executed if this node leads the group — through the
/// fence, with the membership precondition, like the learner and leader requests (`domicile placement
/// apply` sends its steps here).
async fn execute_step(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Path(group): Path<String>,
    Json(body): Json<StepRequest>,
) -> Response {
    let step = body.into_step(GroupId(group));
    execute(&node, &operator, "step", step).await
}

/// `GET /topology`: the topology file this node runs with, as it read it at start-up — what `domicile
/// placement apply` plans with.
async fn topology(State(node): State<Arc<Node>>) -> impl IntoResponse {
    ([("content-type", "application/toml")], node.topology_text.clone())
}

async fn drain(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
) -> Response {
    let action = operator_action(&operator, "drain", format!("{}", node.config.node));
    if let Err(refused) = audit_request(&node, &action).await {
        return refused;
    }
    let handovers = node.drain().await;
    let failed = handovers
        .iter()
        .filter(|handover| handover.error.is_some())
        .count();
    let detail = format!(
        "{} leaderships handed over, {failed} failed",
        handovers.len() - failed
    );
    audit_outcome(&node, action, failed == 0, detail).await;
    Json(handovers).into_response()
}

async fn execute(node: &Node, operator: &AuthorisedOperator, action: &str, step: Step) -> Response {
    let target = format!("{}: {}", step.group(), describe_step(&step));
    let action = operator_action(operator, action, target);
    let outcome = match audited(node, action, node.host.execute(&step), |()| String::new()).await {
        Ok(outcome) => outcome,
        Err(refused) => return refused,
    };
    match outcome {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({"ok": true, "step": step})),
        )
            .into_response(),
        Err(error) => error_response(error),
    }
}

/// An operator's request, as the audit trail names it: the operator its certificate names, and where the
/// request came from.
pub(crate) fn operator_action(operator: &AuthorisedOperator, action: &str, target: String) -> OperatorAction {
    OperatorAction {
        operator: operator.name.clone(),
        remote_address: operator.remote.to_string(),
        action: action.into(),
        target,
    }
}

/// Records the request and waits until it is on disk; a request the trail can't record does not run.
pub(crate) async fn audit_request(node: &Node, action: &OperatorAction) -> Result<(), Response> {
    node.host.record(Event::OperatorRequest(action.clone()));
    node.host.audit_durable().await.map_err(error_response)
}

/// Runs `operation` between the audit trail's two entries: the request, on disk before anything runs (a
/// request the trail can't record is refused and not run: the `Err`), and the outcome, `describe`d when
/// it succeeded and named by its error when not.
pub(crate) async fn audited<T, E: std::fmt::Display>(
    node: &Node,
    action: OperatorAction,
    operation: impl std::future::Future<Output = Result<T, E>>,
    describe: impl FnOnce(&T) -> String,
) -> Result<Result<T, E>, Response> {
    audit_request(node, &action).await?;
    let outcome = operation.await;
    let detail = match &outcome {
        Ok(done) => describe(done),
        Err(error) => error.to_string(),
    };
    audit_outcome(node, action, outcome.is_ok(), detail).await;
    Ok(outcome)
}

pub(crate) async fn audit_outcome(node: &Node, action: OperatorAction, ok: bool, detail: String) {
    node.host.record(Event::OperatorOutcome { action, ok, detail });
    // The answer goes out either way; a trail that failed is logged and counted.
    let _ = node.host.audit_durable().await;
}

pub(crate) fn error_response(error: HostError) -> Response {
    let message = error.to_string();
    let (status, leader, refusal) = match &error {
        HostError::Residency(refusal) => (StatusCode::FORBIDDEN, None, serde_json::to_value(refusal).ok()),
        HostError::NotLeader { leader, .. } => (StatusCode::CONFLICT, leader.map(|id| id.0), None),
        HostError::UnknownGroup(_) => (StatusCode::NOT_FOUND, None, None),
        _ => (StatusCode::SERVICE_UNAVAILABLE, None, None),
    };
    (
        status,
        Json(AdminError {
            error: message,
            leader,
            refusal,
        }),
    )
        .into_response()
}
