//! Operator verbs against the admin endpoint: `status`, `leader move`, `node drain`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Subcommand, ValueEnum};
use placement::NodeId;

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

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client builds")
}

pub async fn fetch_status(admin: &str) -> anyhow::Result<NodeStatus> {
    let url = format!("http://{admin}/status");
    let response = http().get(&url).send().await.map_err(|error| {
        anyhow!(
            "can't reach the admin endpoint at {admin}: {error} (is the node running? is the address right?)"
        )
    })?;
    response
        .error_for_status()?
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

fn hosted_group_views(nodes: &[NodeStatus]) -> BTreeMap<String, GroupView> {
    let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
    for node in nodes {
        for view in &node.groups {
            let better = match groups.get(&view.group) {
                None => true,
                Some(current) => {
                    (view.leader == Some(node.node), view.term) > (current.leader.is_some(), current.term)
                }
            };
            if better {
                groups.insert(view.group.clone(), view.clone());
            }
        }
    }
    groups
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
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Table => {
            print!("{}", render_groups(&group_views(&nodes), &nodes));
            for node in &nodes {
                let incidents = node.incidents;
                println!(
                    "n{} {} ({}): fence refusals {}, egress blocked {}, ingress refused {}, \
                     client calls refused {}",
                    node.node,
                    node.site,
                    node.country,
                    incidents.membership_refused,
                    incidents.egress_blocked,
                    incidents.ingress_refused,
                    incidents.client_calls_refused
                );
            }
            if !unreachable.is_empty() {
                println!("unreachable: {}", unreachable.join(", "));
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
    let url = format!("http://{leader_admin}/groups/{group}/leader");
    let response = http()
        .post(&url)
        .json(&MoveLeader { to: to.0 })
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if response.status().is_success() {
        println!("group {group}: leadership moving from n{leader} to {to}");
        return Ok(ExitCode::SUCCESS);
    }
    let error: AdminError = response
        .json()
        .await
        .context("the admin endpoint's error is unreadable")?;
    println!("refused: {}", error.error);
    Ok(ExitCode::from(1))
}

pub async fn drain(admin: &str, node: NodeId) -> anyhow::Result<ExitCode> {
    let (nodes, _) = cluster_status(admin).await?;
    let target =
        admin_of(&nodes, admin, node.0).ok_or_else(|| anyhow!("the admin address of {node} is unknown"))?;
    let url = format!("http://{target}/drain");
    let response = http()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let handovers: Vec<Handover> = response.error_for_status()?.json().await?;
    let mut failed = false;
    for handover in &handovers {
        match (&handover.to, &handover.error) {
            (Some(to), None) => println!("group {}: leadership moved to n{to}", handover.group),
            (_, Some(error)) => {
                failed = true;
                println!("group {}: not moved: {error}", handover.group);
            }
            (None, None) => {}
        }
    }
    if handovers.is_empty() {
        println!("{node} leads no group");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
