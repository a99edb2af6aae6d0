//! Operator verbs against the admin endpoint: `status`, `leader move`, `node drain`; and how every verb
//! reaches an admin endpoint ([`http`], [`admin_url`]).
//!
//! Changes need an operator certificate (`crate::admin_tls`). An operator names it once per command,
//! with `--certs DIR --operator NAME` (`DIR/ca.pem`, `DIR/operator-NAME.pem` and `.key`, as `domicile
//! certs operator` writes them), or once per shell, with `DOMICILE_CERTS` and `DOMICILE_OPERATOR`; files
//! elsewhere are `--admin-ca`, `--operator-cert`, `--operator-key` (`DOMICILE_CA`,
//! `DOMICILE_OPERATOR_CERT`, `DOMICILE_OPERATOR_KEY`). With a CA the verbs speak HTTPS and accept only a
//! node's certificate from it; with none, plain HTTP, which a node answers for reads from loopback only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use placement::NodeId;
use raft::identity::{CertifiedKey, Peer, attested_peer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::admin_api::{AdminError, GroupView, MoveLeader, NodeStatus};
use crate::node::Handover;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum LeaderCommand {
    /// Move a group's leadership to another voter inside its jurisdiction.
    Move {
        #[arg(long, default_value = "127.0.0.1:7200")]
        admin: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        to: NodeId,
    },
}

/// Whose certificates the verbs use to reach admin endpoints: global flags, or the environment.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AdminCredentials {
    /// Certificates directory: its ca.pem verifies the nodes (HTTPS), and with --operator, its
    /// operator-NAME.pem and .key authorise changes
    #[arg(long = "certs", env = "DOMICILE_CERTS", global = true, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// The operator whose certificate in --certs DIR authorises changes (`domicile certs operator`)
    #[arg(
        long = "operator",
        env = "DOMICILE_OPERATOR",
        global = true,
        value_name = "NAME"
    )]
    pub operator_name: Option<String>,
    /// The cluster CA certificate, if not DIR/ca.pem
    #[arg(long = "admin-ca", env = "DOMICILE_CA", global = true, value_name = "PEM")]
    pub admin_ca: Option<PathBuf>,
    /// The operator certificate, if not DIR/operator-NAME.pem
    #[arg(
        long = "operator-cert",
        env = "DOMICILE_OPERATOR_CERT",
        global = true,
        value_name = "PEM"
    )]
    pub operator_cert: Option<PathBuf>,
    /// The operator certificate's key, if not DIR/operator-NAME.key
    #[arg(
        long = "operator-key",
        env = "DOMICILE_OPERATOR_KEY",
        global = true,
        value_name = "PEM"
    )]
    pub operator_key: Option<PathBuf>,
}

/// How this process reaches admin endpoints: HTTPS with this configuration, or plain HTTP if none.
struct AdminAccess {
    tls: Option<rustls::ClientConfig>,
}

static ACCESS: OnceLock<AdminAccess> = OnceLock::new();

/// Reads the credentials the command was given, once, before any admin endpoint is called; a later
/// call changes nothing.
pub fn use_credentials(credentials: &AdminCredentials) -> anyhow::Result<()> {
    let tls = match load(credentials)? {
        Some((ca_pem, operator)) => Some(crate::admin_tls::client_config(&ca_pem, operator.as_ref())?),
        None => None,
    };
    let _ = ACCESS.set(AdminAccess { tls });
    Ok(())
}

/// The CA and the operator's certificate the credentials name, read and checked.
fn load(credentials: &AdminCredentials) -> anyhow::Result<Option<(String, Option<CertifiedKey>)>> {
    let dir = credentials.certs_dir.as_deref();
    let ca = credentials
        .admin_ca
        .clone()
        .or_else(|| dir.map(|dir| dir.join("ca.pem")));
    let operator = match (
        &credentials.operator_cert,
        &credentials.operator_key,
        &credentials.operator_name,
        dir,
    ) {
        (Some(cert), Some(key), _, _) => Some((cert.clone(), key.clone())),
        (Some(_), None, _, _) | (None, Some(_), _, _) => {
            bail!("--operator-cert and --operator-key go together")
        }
        (None, None, Some(name), Some(dir)) => Some((
            dir.join(format!("operator-{name}.pem")),
            dir.join(format!("operator-{name}.key")),
        )),
        (None, None, Some(_), None) => bail!(
            "--operator NAME needs --certs DIR, where `domicile certs operator --name NAME --dir DIR` wrote \
             operator-NAME.pem and operator-NAME.key"
        ),
        (None, None, None, _) => None,
    };
    let Some(ca) = ca else {
        if operator.is_some() {
            bail!(
                "an operator certificate needs the cluster CA to check the nodes: --certs DIR or --admin-ca PEM"
            );
        }
        return Ok(None);
    };
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).with_context(|| format!("can't read {what} {}", path.display()))
    };
    let ca_pem = read(&ca, "the cluster CA certificate")?;
    let operator = match operator {
        Some((cert, key)) => {
            let certified = CertifiedKey {
                cert_pem: read(&cert, "the operator certificate")?,
                key_pem: read(&key, "the operator key")?,
            };
            check_operator(&cert, &certified.cert_pem)?;
            Some(certified)
        }
        None => None,
    };
    Ok(Some((ca_pem, operator)))
}

/// A certificate given as an operator's must be one: a node or client certificate would only be refused.
fn check_operator(path: &Path, cert_pem: &str) -> anyhow::Result<()> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|error| anyhow!("{} is not a PEM certificate: {error}", path.display()))?;
    match attested_peer(der.as_ref()) {
        Ok(Peer::Operator(_)) => Ok(()),
        Ok(other) => bail!(
            "{} is not an operator certificate but {other}'s; make one with `domicile certs operator --name NAME`",
            path.display()
        ),
        Err(error) => bail!("{} carries no Domicile identity: {error}", path.display()),
    }
}

fn access() -> &'static AdminAccess {
    ACCESS.get_or_init(|| AdminAccess { tls: None })
}

/// `scheme://admin/path`: HTTPS if the command has the cluster CA, plain HTTP if not.
pub fn admin_url(admin: &str, path: &str) -> String {
    let scheme = if access().tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{admin}{path}")
}

/// An HTTP client for admin endpoints, with the command's credentials; requests time out after 5 s.
pub fn http() -> reqwest::Client {
    http_with_timeout(Duration::from_secs(5))
}

pub fn http_with_timeout(timeout: Duration) -> reqwest::Client {
    // reqwest's TLS is rustls with no provider of its own: ring, as the rest of the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder().timeout(timeout);
    let builder = match &access().tls {
        Some(tls) => builder.tls_backend_preconfigured(tls.clone()),
        None => builder,
    };
    builder
        .build()
        .expect("an HTTP client with a checked TLS configuration builds")
}

/// An admin endpoint's answer to a request it did not carry out, in words: its `error`, or the status.
pub async fn refusal_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    serde_json::from_str::<AdminError>(&body)
        .map_or_else(|_| format!("{status}: {body}"), |error| error.error)
}

pub async fn fetch_status(admin: &str) -> anyhow::Result<NodeStatus> {
    let url = admin_url(admin, "/status");
    let response = http().get(&url).send().await.map_err(|error| {
        anyhow!(
            "can't reach the admin endpoint at {admin}: {error:#} (is the node running? is the address right?)"
        )
    })?;
    if !response.status().is_success() {
        bail!("{url}: {}", refusal_of(response).await);
    }
    response
        .json()
        .await
        .with_context(|| format!("{url} answered something that is not a status"))
}

/// A peer whose admin endpoint did not answer: its id, its admin address and the last error.
pub struct Silent {
    pub node: u64,
    pub admin: String,
    pub error: anyhow::Error,
}

/// Every node's status, starting from one admin endpoint and following its peers', sorted by node id.
/// A peer is asked up to `attempts` times, 200 ms apart, before it counts as silent.
pub async fn read_nodes(admin: &str, attempts: u32) -> anyhow::Result<(Vec<NodeStatus>, Vec<Silent>)> {
    let first = fetch_status(admin).await?;
    let mut nodes = vec![first.clone()];
    let mut silent = Vec::new();
    for (&id, peer_admin) in &first.peer_admins {
        let mut answer = fetch_status(peer_admin).await;
        for _ in 1..attempts {
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            answer = fetch_status(peer_admin).await;
        }
        match answer {
            Ok(status) => nodes.push(status),
            Err(error) => silent.push(Silent {
                node: id,
                admin: peer_admin.clone(),
                error,
            }),
        }
    }
    nodes.sort_by_key(|status| status.node);
    Ok((nodes, silent))
}

/// Every node's status as one read sees it, and the peers that did not answer (`n9 (ADDR)`).
pub async fn cluster_status(admin: &str) -> anyhow::Result<(Vec<NodeStatus>, Vec<String>)> {
    let (nodes, silent) = read_nodes(admin, 1).await?;
    let unreachable = silent
        .iter()
        .map(|peer| format!("n{} ({})", peer.node, peer.admin))
        .collect();
    Ok((nodes, unreachable))
}

/// Per group of the topology, the view of the replica with the highest term (the leader's, when it
/// answers). A group no reachable node hosts still has a view: no leader, term 0, nothing applied, and
/// the voters it started with — so a group whose replicas are all down is shown, not left out.
pub fn group_views(nodes: &[NodeStatus]) -> BTreeMap<String, GroupView> {
    let mut groups = hosted_group_views(nodes);
    for node in nodes {
        for declared in &node.topology_groups {
            groups.entry(declared.group.clone()).or_insert_with(|| GroupView {
                group: declared.group.clone(),
                jurisdiction: declared.jurisdiction.clone(),
                leader: None,
                term: 0,
                last_applied: None,
                committed: None,
                snapshots_sent: 0,
                snapshots_installed: 0,
                snapshot_index: None,
                records: None,
                voters: declared.initial_voters.clone(),
                learners: Vec::new(),
            });
        }
    }
    groups
}

/// A group is available when some replica knows its leader and that leader answers.
fn is_available(view: &GroupView, nodes: &[NodeStatus]) -> bool {
    view.leader
        .is_some_and(|leader| nodes.iter().any(|node| node.node == leader))
}

/// The members of `view` whose node did not answer.
fn members_down(view: &GroupView, nodes: &[NodeStatus]) -> Vec<u64> {
    view.voters
        .iter()
        .chain(&view.learners)
        .map(|member| member.node)
        .filter(|&id| !nodes.iter().any(|node| node.node == id))
        .collect()
}

/// Per group, the most authoritative view a node reported: its leader's own (of the highest term, should
/// two claim it), else the view of the highest term that knows a leader and has applied the most. The
/// leader's view used to tie with a follower's of the same term that merely knew the leader, and the first
/// node asked won: a follower that had not applied the last membership change yet showed a replica the
/// group had just removed (a rebalance test, under load, counted one replica too many).
fn hosted_group_views(nodes: &[NodeStatus]) -> BTreeMap<String, GroupView> {
    let authority = |view: &GroupView, reporter: u64| {
        (
            view.leader == Some(reporter),
            view.term,
            view.leader.is_some(),
            view.last_applied,
        )
    };
    let mut groups: BTreeMap<String, (u64, GroupView)> = BTreeMap::new();
    for node in nodes {
        for view in &node.groups {
            let better = match groups.get(&view.group) {
                None => true,
                Some((reporter, current)) => authority(view, node.node) > authority(current, *reporter),
            };
            if better {
                groups.insert(view.group.clone(), (node.node, view.clone()));
            }
        }
    }
    groups
        .into_iter()
        .map(|(group, (_, view))| (group, view))
        .collect()
}

pub fn render_groups(groups: &BTreeMap<String, GroupView>, nodes: &[NodeStatus]) -> String {
    let site_of = |id: u64| {
        nodes
            .iter()
            .find(|node| node.node == id)
            .map_or(String::new(), |node| {
                format!(" ({}, {})", node.site, node.country)
            })
    };
    let mut out = format!(
        "{:<14} {:<6} {:<11} {:<26} {:>4} {:>7}  {}\n",
        "GROUP", "JURIS.", "STATE", "LEADER", "TERM", "APPLIED", "REPLICAS BY SITE"
    );
    for view in groups.values() {
        let leader = view
            .leader
            .map_or("none".to_string(), |id| format!("n{id}{}", site_of(id)));
        let mut by_site: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (member, role) in view
            .voters
            .iter()
            .map(|m| (m, ""))
            .chain(view.learners.iter().map(|m| (m, "learner ")))
        {
            let mark = if member.inside { "" } else { " OUTSIDE" };
            by_site
                .entry(format!("{}/{}", member.site, member.country))
                .or_default()
                .push(format!("{role}n{}{mark}", member.node));
        }
        let mut replicas: Vec<String> = by_site
            .iter()
            .map(|(site, members)| format!("{site}: {}", members.join(",")))
            .collect();
        let down = members_down(view, nodes);
        if !down.is_empty() {
            let down: Vec<String> = down.iter().map(|id| format!("n{id}")).collect();
            replicas.push(format!("down: {}", down.join(",")));
        }
        let state = if is_available(view, nodes) {
            "ok"
        } else {
            "UNAVAILABLE"
        };
        out.push_str(&format!(
            "{:<14} {:<6} {:<11} {:<26} {:>4} {:>7}  {}\n",
            view.group,
            view.jurisdiction,
            state,
            leader,
            view.term,
            view.last_applied.map_or("-".into(), |index| index.to_string()),
            replicas.join("; ")
        ));
    }
    out
}

pub async fn status(admin: &str, output: Output) -> anyhow::Result<ExitCode> {
    let (nodes, unreachable) = cluster_status(admin).await?;
    match output {
        Output::Json => {
            let value = serde_json::json!({"nodes": nodes, "unreachable": unreachable, "groups": group_views(&nodes)});
            outln!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Table => {
            out!("{}", render_groups(&group_views(&nodes), &nodes));
            for node in &nodes {
                let incidents = node.incidents;
                outln!(
                    "n{} {} ({}){}: fence refusals {}, egress blocked {}, ingress refused {}, \
                     client calls refused {}, not granted {}, outside reads {}",
                    node.node,
                    node.site,
                    node.country,
                    if node.draining { ", drained" } else { "" },
                    incidents.membership_refused,
                    incidents.egress_blocked,
                    incidents.ingress_refused,
                    incidents.client_calls_refused,
                    incidents.client_calls_forbidden,
                    incidents.outside_reads
                );
            }
            if !unreachable.is_empty() {
                outln!("unreachable: {}", unreachable.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin address of node `id`, as the cluster knows it: as its peers name it, or `start` if it answered
/// and no peer names it (the other nodes were found through the start node's peers). `nodes` are sorted by
/// id, so the first is not necessarily the start node.
pub fn admin_of(nodes: &[NodeStatus], start: &str, id: u64) -> Option<String> {
    let named = nodes.iter().find_map(|node| node.peer_admins.get(&id).cloned());
    named.or_else(|| {
        nodes
            .iter()
            .any(|node| node.node == id)
            .then(|| start.to_string())
    })
}

pub async fn move_leader(admin: &str, group: &str, to: NodeId) -> anyhow::Result<ExitCode> {
    let (nodes, _) = cluster_status(admin).await?;
    let view = group_views(&nodes)
        .remove(group)
        .ok_or_else(|| anyhow!("no node reports group `{group}`"))?;
    let leader = view
        .leader
        .ok_or_else(|| anyhow!("group `{group}` has no leader now; try again shortly"))?;
    let leader_admin = admin_of(&nodes, admin, leader)
        .ok_or_else(|| anyhow!("the admin address of the leader n{leader} is unknown"))?;
    let url = admin_url(&leader_admin, &format!("/groups/{group}/leader"));
    let response = http()
        .post(&url)
        .json(&MoveLeader { to: to.0 })
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if response.status().is_success() {
        outln!("group {group}: leadership moving from n{leader} to {to}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("refused: {}", refusal_of(response).await);
    Ok(ExitCode::from(1))
}

/// `POST /drain` on the node whose admin endpoint is `admin`: its handovers, or the node's refusal.
pub async fn post_drain(admin: &str) -> anyhow::Result<Result<Vec<Handover>, String>> {
    let url = admin_url(admin, "/drain");
    // A drain waits for every handover, each for its new leader's election.
    let response = http_with_timeout(Duration::from_secs(30))
        .post(&url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !response.status().is_success() {
        return Ok(Err(refusal_of(response).await));
    }
    let handovers = response
        .json()
        .await
        .with_context(|| format!("the answer to POST {url}"))?;
    Ok(Ok(handovers))
}

pub async fn drain(admin: &str, node: NodeId) -> anyhow::Result<ExitCode> {
    let (nodes, _) = cluster_status(admin).await?;
    let target =
        admin_of(&nodes, admin, node.0).ok_or_else(|| anyhow!("the admin address of {node} is unknown"))?;
    let handovers = match post_drain(&target).await? {
        Ok(handovers) => handovers,
        Err(refusal) => {
            outln!("refused: {refusal}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut failed = false;
    for handover in &handovers {
        match (&handover.to, &handover.error) {
            (Some(to), None) => outln!("group {}: leadership moved to n{to}", handover.group),
            (_, Some(error)) => {
                failed = true;
                outln!("group {}: not moved: {error}", handover.group);
            }
            (None, None) => {}
        }
    }
    if handovers.is_empty() {
        outln!("{node} leads no group");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_api::{GroupView, Incidents, Member};

    fn member(node: u64) -> Member {
        Member {
            node,
            site: format!("site-{node}"),
            country: "IE".into(),
            inside: true,
        }
    }

    fn view(leader: Option<u64>, term: u64, applied: u64, voters: &[u64]) -> GroupView {
        GroupView {
            group: "users-eea".into(),
            jurisdiction: "EEA".into(),
            leader,
            term,
            last_applied: Some(applied),
            committed: Some(applied),
            snapshots_sent: 0,
            snapshots_installed: 0,
            snapshot_index: None,
            records: None,
            voters: voters.iter().copied().map(member).collect(),
            learners: Vec::new(),
        }
    }

    fn node(id: u64, groups: Vec<GroupView>) -> NodeStatus {
        NodeStatus {
            cluster: "test".into(),
            node: id,
            site: format!("site-{id}"),
            country: "IE".into(),
            listen: "127.0.0.1:1".into(),
            peer_admins: BTreeMap::new(),
            groups,
            incidents: Incidents::default(),
            topology_groups: Vec::new(),
            purged: Vec::new(),
            retired: Vec::new(),
            fault: None,
            round_trips: Vec::new(),
            round_trips_uncovered: Vec::new(),
            purging: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn the_leaders_own_view_is_shown_whichever_node_answered_first() {
        // n1 follows in term 3 and has not applied the removal of n4 yet; n2 leads and has.
        let follower = node(1, vec![view(Some(2), 3, 10, &[1, 2, 3, 4])]);
        let leader = node(2, vec![view(Some(2), 3, 11, &[1, 2, 3])]);
        for nodes in [
            vec![follower.clone(), leader.clone()],
            vec![leader.clone(), follower.clone()],
        ] {
            let shown = &group_views(&nodes)["users-eea"];
            let voters: Vec<u64> = shown.voters.iter().map(|member| member.node).collect();
            assert_eq!(voters, [1, 2, 3]);
        }
        // Without the leader's answer: the follower that applied the most.
        let behind = node(3, vec![view(Some(2), 3, 9, &[1, 2, 3, 4, 5])]);
        let shown = &group_views(&[behind, follower])["users-eea"];
        assert_eq!(shown.last_applied, Some(10));
        // A leader of an older term (removed, still naming itself) loses to the newer one.
        let old = node(4, vec![view(Some(4), 2, 12, &[1, 2, 3])]);
        let shown = &group_views(&[old, leader])["users-eea"];
        assert_eq!(shown.leader, Some(2));
    }
}
