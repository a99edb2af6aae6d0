//! The admin endpoint's fault injection, for drills (`domicile drill`): an operator makes this node stop
//! exchanging Raft traffic with some peers, or all, until a deadline (`raft::fault`).
//!
//! `POST /faults/isolate` `{"peers": "all" | [2, 3], "duration_ms": 5000}` isolates the node (replacing an
//! isolation in force); `POST /faults/heal` ends it at once; `GET /faults` shows it (as does `GET /status`,
//! under `fault`). The node heals by itself at the deadline — at most `raft::fault::ISOLATION_MAX` away —
//! whatever becomes of the tool that asked: the deadline is the node's, checked on every message.
//!
//! Both requests change how the node behaves, so they are in its audit trail before they run, with their
//! outcome after, like every other state-changing admin request; the isolations asked for, the one in
//! force and the messages it dropped are in the metrics.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use openraft::Instant as _;
use openraft::type_config::TypeConfigExt;
use placement::NodeId;
use raft::config::TokioConfig;
use raft::fault::{ISOLATION_MAX, IsolatedFrom};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::{audit_outcome, audit_request, operator_action};
use crate::admin_api::AdminError;
use crate::admin_tls::AuthorisedOperator;
use crate::node::Node;

/// An isolation in force, as `GET /faults` and `GET /status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultView {
    /// `"all"`, or the ids of the peers the node is isolated from.
    pub peers: Value,
    /// Until the node heals by itself.
    pub remaining_ms: u64,
}

/// `POST /faults/isolate`, once read and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolateRequest {
    pub from: IsolatedFrom,
    pub duration: Duration,
}

impl IsolateRequest {
    /// Reads `{"peers": "all" | [ids], "duration_ms": N}`; every peer must be a node of `topology` other
    /// than `me`, and the duration within the bound.
    pub fn parse(body: &Value, topology: &placement::Topology, me: NodeId) -> Result<IsolateRequest, String> {
        let from = match body.get("peers") {
            Some(Value::String(all)) if all == "all" => IsolatedFrom::All,
            Some(Value::Array(ids)) => {
                let mut peers = BTreeSet::new();
                for id in ids {
                    let id = id
                        .as_u64()
                        .map(NodeId)
                        .ok_or_else(|| format!("`peers` holds {id}, not a node id"))?;
                    if id == me {
                        return Err(format!("{id} is this node: a node is not isolated from itself"));
                    }
                    if topology.site_of(id).is_none() {
                        return Err(format!("{id} is not a node of the topology"));
                    }
                    peers.insert(id);
                }
                if peers.is_empty() {
                    return Err("`peers` is empty: name peers, or \"all\"".into());
                }
                IsolatedFrom::Peers(peers)
            }
            _ => return Err("`peers` must be \"all\" or a list of node ids".into()),
        };
        let duration_ms = body
            .get("duration_ms")
            .and_then(Value::as_u64)
            .ok_or("`duration_ms` must be a whole number of milliseconds")?;
        let duration = Duration::from_millis(duration_ms);
        if duration_ms == 0 || duration > ISOLATION_MAX {
            return Err(format!(
                "`duration_ms` must be between 1 and {} (asked for {duration_ms})",
                ISOLATION_MAX.as_millis()
            ));
        }
        Ok(IsolateRequest { from, duration })
    }
}

fn peers_json(from: &IsolatedFrom) -> Value {
    match from {
        IsolatedFrom::All => Value::from("all"),
        IsolatedFrom::Peers(peers) => peers.iter().map(|peer| peer.0).collect(),
    }
}

/// The isolation in force on this node now, if any.
pub fn view(node: &Node) -> Option<FaultView> {
    let now = TokioConfig::now();
    node.host.isolation().current(now).map(|isolation| FaultView {
        peers: peers_json(&isolation.from),
        remaining_ms: isolation.until.saturating_duration_since(now).as_millis() as u64,
    })
}

/// Folds the isolation into the metrics, and logs one that ended at its deadline.
pub fn observe(node: &Node) {
    let isolation = node.host.isolation();
    if let Some(expired) = isolation.take_expired(TokioConfig::now()) {
        tracing::info!(from = %expired.from, "the isolation reached its deadline: exchanging Raft traffic again");
    }
    node.metrics
        .observe_fault(view(node).is_some(), isolation.dropped());
}

fn bad_request(error: String) -> Response {
    let body = AdminError {
        error,
        leader: None,
        refusal: None,
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

pub async fn isolate(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
    Json(body): Json<Value>,
) -> Response {
    let me = node.config.node;
    let request = match IsolateRequest::parse(&body, &node.file.topology, me) {
        Ok(request) => request,
        Err(error) => return bad_request(error),
    };
    let target = format!(
        "{me} from {} for {} ms",
        request.from,
        request.duration.as_millis()
    );
    let action = operator_action(&operator, "isolate", target);
    if let Err(refused) = audit_request(&node, &action).await {
        return refused;
    }
    let outcome = node
        .host
        .isolation()
        .isolate(request.from.clone(), request.duration, TokioConfig::now());
    let detail = match &outcome {
        Ok(_) => "isolated; heals by itself at its deadline".to_string(),
        Err(error) => error.to_string(),
    };
    audit_outcome(&node, action, outcome.is_ok(), detail).await;
    match outcome {
        Ok(_) => {
            node.metrics.faults_injected.inc();
            tracing::warn!(from = %request.from, duration_ms = request.duration.as_millis() as u64,
                "isolated from peers by an operator (a drill): Raft traffic with them is dropped until the deadline");
            Json(serde_json::json!({"fault": view(&node)})).into_response()
        }
        Err(error) => bad_request(error.to_string()),
    }
}

pub async fn heal(
    State(node): State<Arc<Node>>,
    Extension(operator): Extension<AuthorisedOperator>,
) -> Response {
    let action = operator_action(&operator, "heal", format!("{}", node.config.node));
    if let Err(refused) = audit_request(&node, &action).await {
        return refused;
    }
    let healed = node.host.isolation().heal(TokioConfig::now());
    let detail = match &healed {
        Some(isolation) => format!("no longer isolated from {}", isolation.from),
        None => "no isolation was in force".to_string(),
    };
    audit_outcome(&node, action, true, detail).await;
    if let Some(isolation) = &healed {
        tracing::info!(from = %isolation.from, "healed by an operator: exchanging Raft traffic again");
    }
    Json(serde_json::json!({"healed": healed.is_some()})).into_response()
}

pub async fn fault(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(serde_json::json!({"fault": view(&node)}))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topology() -> placement::Topology {
        let file = placement::TopologyFile::parse(
            "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1, 2]\n\n\
             [[site]]\nname = \"hamar\"\ncountry = \"NO\"\nnodes = [3]\n",
        )
        .unwrap();
        file.topology
    }

    fn parse(body: Value) -> Result<IsolateRequest, String> {
        IsolateRequest::parse(&body, &topology(), NodeId(1))
    }

    #[test]
    fn an_isolation_request_names_all_peers_or_some() {
        assert_eq!(
            parse(json!({"peers": "all", "duration_ms": 5000})),
            Ok(IsolateRequest {
                from: IsolatedFrom::All,
                duration: Duration::from_secs(5)
            })
        );
        assert_eq!(
            parse(json!({"peers": [3, 2], "duration_ms": 1})),
            Ok(IsolateRequest {
                from: IsolatedFrom::Peers([NodeId(2), NodeId(3)].into()),
                duration: Duration::from_millis(1)
            })
        );
    }

    #[test]
    fn a_bad_isolation_request_says_what_is_wrong() {
        let error = |body| parse(body).unwrap_err();
        assert!(error(json!({"peers": [9], "duration_ms": 10})).contains("n9 is not a node of the topology"));
        assert!(error(json!({"peers": [1], "duration_ms": 10})).contains("not isolated from itself"));
        assert!(error(json!({"peers": [], "duration_ms": 10})).contains("empty"));
        assert!(error(json!({"peers": "some", "duration_ms": 10})).contains("\"all\" or a list"));
        assert!(error(json!({"peers": "all"})).contains("duration_ms"));
        assert!(error(json!({"peers": "all", "duration_ms": 0})).contains("between 1 and 600000"));
        assert!(error(json!({"peers": "all", "duration_ms": 600_001})).contains("between 1 and 600000"));
        assert!(error(json!({"peers": ["2"], "duration_ms": 10})).contains("not a node id"));
    }
}
