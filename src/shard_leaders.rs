//! [`AdminLeaders`]: `raft::range_copy::Leaders` over the admin endpoints of a running cluster
//! (`crate::admin_range_copy`), so `domicile shard split|move` runs the range copy from outside it.
//!
//! Each operation goes to the admin endpoint of the group's leader as the nodes' statuses show it
//! (`crate::cluster_view`), remembered per group. A node that does not lead answers 409 naming the
//! leader, whom the next attempt asks; no leader named, a node that does not answer, or a 503 (an
//! election, a quorum lost for a while) re-reads the cluster after a pause, until the operation's
//! deadline ([`AdminLeaders::RETRY_FOR`]). Every operation of the protocol is safe to repeat, so an
//! attempt whose answer was lost is simply sent again. Any other answer (400, 403, 404) is final.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use placement::GroupId;
use raft::directory::ShardMap;
use raft::host::HostError;
use raft::range_copy::{Leaders, RangeCopyError};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use storage::apply::{RangeBatch, RangeDigest, SessionBatch};
use storage::record::Ownership;
use storage::{Command, RecordKey, Response};

use crate::admin_api::{
    AdminError, DigestRequest, FRAME_BYTES_MAX, FRAME_CONTENT_TYPE, MapStepRequest, RangeState,
    ReadRangeRequest, SessionsRequest, frame_body, open_body,
};
use crate::cluster_view::Cluster;
use crate::operator_cli::{admin_url, http_with_timeout};

pub struct AdminLeaders {
    /// Admin endpoints to read the cluster from, the one the operator named first.
    starts: Vec<String>,
    /// Each jurisdiction's directory group (its first group by name in the topology).
    directories: BTreeMap<String, GroupId>,
    /// The admin endpoint of each group's leader, as last found.
    leaders: Mutex<BTreeMap<GroupId, String>>,
    /// Admin endpoints by node id, as the cluster names them.
    admins: Mutex<BTreeMap<u64, String>>,
    http: reqwest::Client,
}

/// How one attempt ended.
enum Attempt<T> {
    Done(T),
    /// Ask this node next (a 409 naming the leader).
    Follow(u64),
    /// Try again after a pause, with the cluster read again.
    Again(String),
    Final(String),
}

impl AdminLeaders {
    /// How long one operation keeps trying through elections and restarts before it fails.
    pub const RETRY_FOR: Duration = Duration::from_secs(60);
    /// One request's bound: a digest or a purge scans the group's records on its leader.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
    const PAUSE: Duration = Duration::from_millis(200);

    pub fn new(cluster: &Cluster, directories: BTreeMap<String, GroupId>) -> AdminLeaders {
        let mut admins = BTreeMap::new();
        for node in &cluster.nodes {
            if let Some(admin) = cluster.admin(placement::NodeId(node.node)) {
                admins.insert(node.node, admin);
            }
        }
        let mut starts = vec![cluster.start.clone()];
        starts.extend(admins.values().filter(|admin| **admin != cluster.start).cloned());
        let leaders = cluster
            .views
            .iter()
            .filter_map(|(group, view)| {
                let admin = admins.get(&view.leader?)?;
                Some((GroupId(group.clone()), admin.clone()))
            })
            .collect();
        AdminLeaders {
            starts,
            directories,
            leaders: Mutex::new(leaders),
            admins: Mutex::new(admins),
            http: http_with_timeout(Self::REQUEST_TIMEOUT),
        }
    }

    fn directory_of(&self, jurisdiction: &str) -> Result<GroupId, RangeCopyError> {
        self.directories.get(jurisdiction).cloned().ok_or_else(|| {
            final_error(
                &GroupId(String::new()),
                format!("no jurisdiction `{jurisdiction}`"),
            )
        })
    }

    /// Reads the cluster again from the first admin endpoint that answers, and remembers its leaders.
    async fn refresh(&self) {
        for start in &self.starts {
            let Ok(cluster) = Cluster::read(start).await else {
                continue;
            };
            let mut admins = self.admins.lock().expect("admins lock");
            for node in &cluster.nodes {
                if let Some(admin) = cluster.admin(placement::NodeId(node.node)) {
                    admins.insert(node.node, admin);
                }
            }
            let mut leaders = self.leaders.lock().expect("leaders lock");
            leaders.clear();
            for (group, view) in &cluster.views {
                if let Some(admin) = view.leader.and_then(|leader| admins.get(&leader)) {
                    leaders.insert(GroupId(group.clone()), admin.clone());
                }
            }
            return;
        }
    }

    /// Runs `attempt` against the admin endpoint of `group`'s leader until it is done, final, or the
    /// deadline passes.
    async fn on_leader<T, F, Fut>(&self, group: &GroupId, attempt: F) -> Result<T, RangeCopyError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let give_up = tokio::time::Instant::now() + Self::RETRY_FOR;
        let mut last;
        loop {
            let admin = self.leaders.lock().expect("leaders lock").get(group).cloned();
            let outcome = match admin {
                Some(admin) => attempt(admin).await,
                None => Attempt::Again(format!("no node reports a leader of `{group}`")),
            };
            match outcome {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Final(reason) => return Err(final_error(group, reason)),
                Attempt::Follow(node) => {
                    let admin = self.admins.lock().expect("admins lock").get(&node).cloned();
                    match admin {
                        Some(admin) => {
                            self.leaders
                                .lock()
                                .expect("leaders lock")
                                .insert(group.clone(), admin);
                            last = format!("n{node} leads `{group}`");
                        }
                        None => {
                            last = format!("the leader n{node}'s admin endpoint is unknown");
                            self.leaders.lock().expect("leaders lock").remove(group);
                        }
                    }
                }
                Attempt::Again(reason) => {
                    last = reason;
                    self.leaders.lock().expect("leaders lock").remove(group);
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(RangeCopyError::Host {
                    group: group.clone(),
                    error: HostError::Raft {
                        group: group.clone(),
                        reason: format!(
                            "no answer from its leader within {} s: {last}",
                            Self::RETRY_FOR.as_secs()
                        ),
                    },
                });
            }
            tokio::time::sleep(Self::PAUSE).await;
            if !self.leaders.lock().expect("leaders lock").contains_key(group) {
                self.refresh().await;
            }
        }
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        admin: &str,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Attempt<T> {
        let sent = self.http.post(admin_url(admin, path)).json(body).send().await;
        json_answer(sent).await
    }
}

/// The error of an answer that is final: the group and the node's reason.
fn final_error(group: &GroupId, reason: String) -> RangeCopyError {
    RangeCopyError::Unexpected {
        group: group.clone(),
        what: "its admin endpoint's request".into(),
        answer: reason,
    }
}

/// What a non-2xx answer means for the next attempt.
async fn classify<T>(response: reqwest::Response) -> Attempt<T> {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let error = serde_json::from_str::<AdminError>(&body).ok();
    let reason = error
        .as_ref()
        .map_or_else(|| format!("{status}: {body}"), |error| error.error.clone());
    match (status, error.and_then(|error| error.leader)) {
        (StatusCode::CONFLICT, Some(leader)) => Attempt::Follow(leader),
        // 409 without a leader: an election under way (the directory's "not the leader" too).
        (StatusCode::CONFLICT, None) if reason.contains("not the leader") => Attempt::Again(reason),
        (StatusCode::SERVICE_UNAVAILABLE | StatusCode::NOT_FOUND, _) => Attempt::Again(reason),
        _ => Attempt::Final(reason),
    }
}

async fn json_answer<T: DeserializeOwned>(sent: reqwest::Result<reqwest::Response>) -> Attempt<T> {
    let response = match sent {
        Ok(response) => response,
        Err(error) => return Attempt::Again(format!("{error:#}")),
    };
    if !response.status().is_success() {
        return classify(response).await;
    }
    match response.json::<T>().await {
        Ok(answer) => Attempt::Done(answer),
        Err(error) => Attempt::Again(format!("an unreadable answer: {error:#}")),
    }
}

/// A frame answer, read up to [`FRAME_BYTES_MAX`] before it is opened.
async fn frame_answer<T: DeserializeOwned>(sent: reqwest::Result<reqwest::Response>) -> Attempt<T> {
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return Attempt::Again(format!("{error:#}")),
    };
    if !response.status().is_success() {
        return classify(response).await;
    }
    let bound = FRAME_BYTES_MAX + wire::codec::FRAME_HEADER_BYTES;
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > bound {
                    return Attempt::Final(format!("an answer longer than {bound} bytes"));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => return Attempt::Again(format!("{error:#}")),
        }
    }
    match open_body(&bytes) {
        Ok(answer) => Attempt::Done(answer),
        Err(error) => Attempt::Again(format!("a damaged answer: {error}")),
    }
}

impl Leaders for AdminLeaders {
    async fn write(&self, group: &GroupId, command: Command) -> Result<Response, RangeCopyError> {
        let body = frame_body(&command).map_err(|error| final_error(group, error.to_string()))?;
        let path = format!("/range-copy/{group}/command");
        self.on_leader(group, |admin| {
            let sent = self
                .http
                .post(admin_url(&admin, &path))
                .header("content-type", FRAME_CONTENT_TYPE)
                .body(body.clone())
                .send();
            async move { json_answer(sent.await).await }
        })
        .await
    }

    async fn read_range(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
        after: Option<RecordKey>,
    ) -> Result<RangeBatch, RangeCopyError> {
        let request = ReadRangeRequest {
            jurisdiction: jurisdiction.to_string(),
            ranges: ranges.to_vec(),
            after,
            records_max: None,
            bytes_max: None,
        };
        let path = format!("/range-copy/{group}/read");
        self.on_leader(group, |admin| {
            let sent = self.http.post(admin_url(&admin, &path)).json(&request).send();
            async move { frame_answer(sent.await).await }
        })
        .await
    }

    async fn read_sessions(
        &self,
        group: &GroupId,
        after: Option<u64>,
    ) -> Result<SessionBatch, RangeCopyError> {
        let request = SessionsRequest { after };
        let path = format!("/range-copy/{group}/sessions");
        self.on_leader(group, |admin| {
            let sent = self.http.post(admin_url(&admin, &path)).json(&request).send();
            async move { frame_answer(sent.await).await }
        })
        .await
    }

    async fn digest(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
    ) -> Result<RangeDigest, RangeCopyError> {
        let request = DigestRequest {
            jurisdiction: jurisdiction.to_string(),
            ranges: ranges.to_vec(),
        };
        let path = format!("/range-copy/{group}/digest");
        self.on_leader(group, |admin| {
            let path = path.clone();
            let request = request.clone();
            async move { self.post_json(&admin, &path, &request).await }
        })
        .await
    }

    async fn range_state(
        &self,
        group: &GroupId,
    ) -> Result<(Option<Ownership>, Option<Ownership>), RangeCopyError> {
        let path = format!("/range-copy/{group}/state");
        let state: RangeState = self
            .on_leader(group, |admin| {
                let sent = self.http.get(admin_url(&admin, &path)).send();
                async move { json_answer(sent.await).await }
            })
            .await?;
        Ok((state.owned, state.incoming))
    }

    async fn published(&self, jurisdiction: &str) -> Result<ShardMap, RangeCopyError> {
        let directory = self.directory_of(jurisdiction)?;
        let path = format!("/shard-map/{jurisdiction}/published");
        let map: wire::routing::RoutingMap = self
            .on_leader(&directory, |admin| {
                let sent = self.http.get(admin_url(&admin, &path)).send();
                async move { json_answer(sent.await).await }
            })
            .await?;
        Ok(ShardMap::from_wire(map)?)
    }

    async fn publish(&self, next: &ShardMap) -> Result<(), RangeCopyError> {
        let directory = self.directory_of(next.jurisdiction())?;
        let step = MapStepRequest::Publish {
            directory: directory.0.clone(),
            map: next.to_wire(),
        };
        let _: serde_json::Value = self
            .on_leader(&directory, |admin| {
                let step = step.clone();
                async move { self.post_json(&admin, "/shard-map/steps", &step).await }
            })
            .await?;
        Ok(())
    }
}
