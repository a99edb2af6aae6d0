//! `domicile demo`: a local cluster of five nodes in five sites — Dublin A, Dublin B, Hamar, Frankfurt and
//! Ashburn — with real QUIC, mutual TLS and disks under a temporary directory, shown working end to end:
//! EEA, EU and US groups; user records written through the client library; a legacy group with a voter in
//! Ashburn moved into the EEA by `placement apply`, its US replica purged; users-eea split online into a
//! spare group by `shard split`; the failover when the Dublin A node is killed (no acknowledged write
//! lost); the fence refusing the Ashburn node in an EU group; and a
//! residency report, ending with `audit verify` on every node's audit trail. Every process it starts is
//! stopped when it ends, also on Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use client::{Client, ClientTls};
use placement::{Country, Jurisdiction, TopologyFile};
use raft::identity::{ClientIdentity, ClusterCa, NodeIdentity, OperatorIdentity, Validity};

use crate::admin_api::{AddLearner, AdminError, GroupView, NodeStatus};
use crate::operator_cli::{AdminCredentials, admin_url, fetch_status, group_views, http, render_groups};

const TOPOLOGY: &str = r#"# The demo cluster: five nodes in five sites.
[[site]]
name = "dublin-a"
country = "IE"
region = "eu-west"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
region = "eu-west"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
region = "eu-north"
nodes = [3]

[[site]]
name = "frankfurt"
country = "DE"
region = "eu-central"
nodes = [4]

[[site]]
name = "ashburn"
country = "US"
region = "us-east"
nodes = [5]

# European users' data, anywhere in the EEA (Norway included).
[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-a"]

# EU-only data: Hamar (Norway) and Ashburn may never hold it.
[[group]]
name = "users-eu"
jurisdiction = "EU"
voters = 3
leader_preference = ["dublin-a"]

# A legacy group: placed before residency was enforced, with a voter in Ashburn, and now fenced to the EEA.
# Its US member may stay only until it is removed; the demo moves it out with `placement apply`.
[[group]]
name = "users-legacy"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-b"]

[group.current]
voters = [2, 3, 5]
leader = 2

# A spare EEA group: placed and created like the others, it owns no range of the EEA's map until the demo
# splits users-eea into it with `shard split`.
[[group]]
name = "users-eea-2"
jurisdiction = "EEA"
voters = 3
shard = "reserve"

# US users' data stays in the US.
[[group]]
name = "users-us"
jurisdiction = "US"
voters = 1

# Who may touch what: the demo's own service everything; a US support tool may read EU records, and sees
# their personal fields pseudonymised, since its certificate places it outside the EU.
[[grant]]
service = "demo"
jurisdiction = "EEA"
access = "read-write"

[[grant]]
service = "demo"
jurisdiction = "EU"
access = "read-write"

[[grant]]
service = "demo"
jurisdiction = "US"
access = "read-write"

[[grant]]
service = "support-us"
jurisdiction = "EU"
access = "read"

[[personal_data]]
jurisdiction = "EU"
format = "json"
fields = ["phone", "ip"]

[[personal_data]]
jurisdiction = "EEA"
format = "json"
fields = ["phone", "ip"]
"#;

/// How long a silent member goes unanswered before its group's leader replaces it (the node default is 5 s;
/// shorter here so the demo shows it).
const REPAIR_AFTER_MS: u64 = 2000;

/// How often a node asks whether replicas it holds were removed while it was away (the node default is 10 s).
const PURGE_CHECK_MS: u64 = 2000;

/// Each acknowledged put's latency, as the client saw it, by jurisdiction.
#[derive(Default)]
struct PutLatencies {
    by_jurisdiction: BTreeMap<&'static str, Vec<Duration>>,
}

impl PutLatencies {
    fn record(&mut self, jurisdiction: &'static str, latency: Duration) {
        self.by_jurisdiction
            .entry(jurisdiction)
            .or_default()
            .push(latency);
    }

    /// `put p50 0.71 ms, p99 2.30 ms` over every put.
    fn summary(&self) -> String {
        let all: Vec<Duration> = self.by_jurisdiction.values().flatten().copied().collect();
        format_percentiles(all)
    }

    fn by_jurisdiction(&self) -> Vec<String> {
        self.by_jurisdiction
            .iter()
            .map(|(jurisdiction, latencies)| {
                format!(
                    "{jurisdiction:<4} {} puts: {}",
                    latencies.len(),
                    format_percentiles(latencies.clone())
                )
            })
            .collect()
    }
}

fn format_percentiles(mut latencies: Vec<Duration>) -> String {
    if latencies.is_empty() {
        return "no puts".into();
    }
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let rank = ((latencies.len() as f64 * quantile).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1000.0
    };
    format!("put p50 {:.2} ms, p99 {:.2} ms", at(0.50), at(0.99))
}

/// Kills (by pid) every node it started when dropped: on success, on error, and on Ctrl-C.
struct Nodes {
    children: BTreeMap<u64, Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Nodes {
    fn kill(&mut self, node: u64) -> anyhow::Result<()> {
        let child = self
            .children
            .get_mut(&node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping the killed node")?;
        Ok(())
    }

    /// SIGTERM each (graceful: leaderships handed over), then SIGKILL what is still running after 5 s.
    fn stop(&mut self) {
        for child in self.children.values() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.values_mut() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Layout {
    dir: PathBuf,
    nodes: BTreeMap<u64, (SocketAddr, SocketAddr)>,
}

pub async fn run(records: u64) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("domicile-demo-")
        .tempdir()
        .context("a temporary directory")?;
    let layout = prepare(scratch.path())?;
    let mut nodes = start(&layout)?;
    let outcome = tokio::select! {
        outcome = show(&layout, &mut nodes, records) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    println!("\n== Stopping every node the demo started");
    nodes.stop();
    drop(nodes);
    outcome
}

/// Certificates, the topology and one config per node, in `dir`.
fn prepare(dir: &Path) -> anyhow::Result<Layout> {
    let file = TopologyFile::parse(TOPOLOGY).map_err(|error| anyhow!("demo topology:{error}"))?;
    std::fs::write(dir.join("topology.toml"), TOPOLOGY)?;
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::minutes(5),
        not_after: now + time::Duration::days(1),
    };
    let ca = ClusterCa::generate("demo", validity)?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs)?;
    std::fs::write(certs.join("ca.pem"), &ca.certified_key().cert_pem)?;
    // The demo's service runs in Ireland: inside the EU and the EEA, it reads their records in clear.
    let ireland = Country::parse("IE").expect("a country code");
    let united_states = Country::parse("US").expect("a country code");
    for (name, country) in [("demo", ireland), ("support-us", united_states)] {
        let identity = ClientIdentity {
            name: name.into(),
            country: Some(country),
        };
        let client = ca.issue_client(&identity, validity)?;
        std::fs::write(certs.join(format!("client-{name}.pem")), &client.cert_pem)?;
        std::fs::write(certs.join(format!("client-{name}.key")), &client.key_pem)?;
    }
    // One pseudonym key per jurisdiction with personal fields, for the nodes inside it only.
    let mut keys: Vec<(&Jurisdiction, String)> = Vec::new();
    for name in ["EU", "EEA"] {
        let jurisdiction = file
            .policies
            .values()
            .map(|policy| &policy.jurisdiction)
            .find(|jurisdiction| jurisdiction.name() == name)
            .expect("the demo topology fences a group to each");
        let path = format!("certs/pseudonym-{name}.key");
        crate::pseudonym_keys::generate(&dir.join(&path), name, 1)?;
        keys.push((jurisdiction, path));
    }
    // The demo's own changes (the learner request below) go to the admin endpoints as an operator's.
    let operator = ca.issue_operator(&OperatorIdentity { name: "demo".into() }, validity)?;
    std::fs::write(certs.join("operator-demo.pem"), &operator.cert_pem)?;
    std::fs::write(certs.join("operator-demo.key"), &operator.key_pem)?;
    crate::operator_cli::use_credentials(&AdminCredentials {
        certs_dir: Some(certs.clone()),
        operator_name: Some("demo".into()),
        ..AdminCredentials::default()
    })?;

    let mut nodes = BTreeMap::new();
    for site in file.topology.sites() {
        for &id in &site.nodes {
            let identity = NodeIdentity {
                node: id,
                site: site.name.clone(),
                country: site.country,
            };
            let pair = ca.issue(&identity, validity)?;
            std::fs::write(certs.join(format!("node-{}.pem", id.0)), &pair.cert_pem)?;
            std::fs::write(certs.join(format!("node-{}.key", id.0)), &pair.key_pem)?;
            nodes.insert(id.0, (free_udp_port()?, free_tcp_port()?));
        }
    }
    for site in file.topology.sites() {
        for &id in &site.nodes {
            let (listen, admin) = nodes[&id.0];
            let inside: Vec<String> = keys
                .iter()
                .filter(|(jurisdiction, _)| jurisdiction.contains(site.country))
                .map(|(_, path)| format!("\"{path}\""))
                .collect();
            let mut config = format!(
                "cluster = \"demo\"\nnode_id = {id}\nsite = \"{site}\"\ndata_dir = \"data/n{id}\"\nlisten = \"{listen}\"\nadmin = \"{admin}\"\ntopology = \"topology.toml\"\npseudonym_keys = [{keys}]\n\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n\n[raft]\nrepair_down_after_ms = {REPAIR_AFTER_MS}\npurge_check_ms = {PURGE_CHECK_MS}\n",
                id = id.0,
                site = site.name,
                keys = inside.join(", "),
            );

            for (&peer, &(peer_listen, peer_admin)) in nodes.iter().filter(|(peer, _)| **peer != id.0) {
                config.push_str(&format!(
                    "\n[[peer]]\nid = {peer}\naddr = \"{peer_listen}\"\nadmin = \"{peer_admin}\"\n"
                ));
            }
            std::fs::write(dir.join(format!("node-{}.toml", id.0)), config)?;
        }
    }
    Ok(Layout {
        dir: dir.to_path_buf(),
        nodes,
    })
}

fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start(layout: &Layout) -> anyhow::Result<Nodes> {
    let mut nodes = Nodes {
        children: BTreeMap::new(),
    };
    for &id in layout.nodes.keys() {
        nodes.children.insert(id, start_node(layout, id)?);
    }
    Ok(nodes)
}

/// Starts node `id` on its config and data directory, appending to its log file (a restart keeps the
/// earlier incarnation's lines).
fn start_node(layout: &Layout, id: u64) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("the domicile binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.dir.join(format!("node-{id}.log")))?;
    std::process::Command::new(&exe)
        .args(["node", "--config"])
        .arg(layout.dir.join(format!("node-{id}.toml")))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a node")
}

fn admin(layout: &Layout, node: u64) -> String {
    layout.nodes[&node].1.to_string()
}

/// Whether a live node inside the group's jurisdiction is not yet one of its voters.
fn spare_inside(topology: &TopologyFile, view: &GroupView, dead: u64) -> bool {
    let policy = &topology.policies[&placement::GroupId(view.group.clone())];
    topology.topology.nodes().any(|node| {
        node.0 != dead
            && topology.topology.is_inside(node, &policy.jurisdiction)
            && view.voters.iter().all(|member| member.node != node.0)
    })
}

/// Restarts the killed node and shows what it does with its replicas: those of groups that replaced it
/// while it was down are purged (their leader shows a committed membership without it); those it is
/// still a member of catch up. Returns whether every replica it was removed from is gone within 30 s.
async fn show_return(
    layout: &Layout,
    nodes: &mut Nodes,
    victim: u64,
    had_victim: &[String],
) -> anyhow::Result<bool> {
    println!("\n== n{victim} returns (same data directory)");
    nodes.children.insert(victim, start_node(layout, victim)?);
    let returned_at = Instant::now();
    let (hosted, views) = loop {
        let views = group_views(&statuses(layout, &[victim]).await);
        let hosted: Vec<String> = match fetch_status(&admin(layout, victim)).await {
            Ok(status) => status.groups.into_iter().map(|group| group.group).collect(),
            Err(_) => Vec::new(),
        };
        let member = |group: &String| {
            views.get(group).is_some_and(|view| {
                view.voters
                    .iter()
                    .chain(&view.learners)
                    .any(|member| member.node == victim)
            })
        };
        let settled = !hosted.is_empty()
            && had_victim
                .iter()
                .all(|group| member(group) == hosted.contains(group));
        if settled || returned_at.elapsed() > Duration::from_secs(30) {
            break (hosted, views);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = returned_at.elapsed().as_secs_f64();
    let mut purged = true;
    for group in had_victim {
        let Some(view) = views.get(group) else { continue };
        let member = view
            .voters
            .iter()
            .chain(&view.learners)
            .any(|member| member.node == victim);
        let line = match (member, hosted.contains(group)) {
            (false, false) => format!(
                "replica purged from n{victim}'s disk ({waited:.1} s after it returned): leader n{} showed a \
                 committed membership without it",
                view.leader.map_or("?".into(), |leader| leader.to_string())
            ),
            (false, true) => {
                purged = false;
                format!("replica NOT purged {waited:.1} s after it returned")
            }
            (true, _) => format!("n{victim} is a voter again (no one replaced it)"),
        };
        println!("   {group:<10} {line}");
    }
    Ok(purged)
}

async fn statuses(layout: &Layout, skip: &[u64]) -> Vec<NodeStatus> {
    let mut all = Vec::new();
    for &id in layout.nodes.keys().filter(|id| !skip.contains(id)) {
        if let Ok(status) = fetch_status(&admin(layout, id)).await {
            all.push(status);
        }
    }
    all
}

/// Polls until every group has a leader that is not in `dead`; gives up after `limit`.
async fn wait_for_leaders(
    layout: &Layout,
    dead: &[u64],
    limit: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let groups = TopologyFile::parse(TOPOLOGY)
        .map_err(|error| anyhow!("demo topology:{error}"))?
        .policies
        .len();
    let started = Instant::now();
    loop {
        let nodes = statuses(layout, dead).await;
        let views = group_views(&nodes);
        let leaders: BTreeMap<String, u64> = views
            .iter()
            .filter_map(|(group, view)| {
                view.leader
                    .filter(|leader| !dead.contains(leader))
                    .map(|leader| (group.clone(), leader))
            })
            .collect();
        if views.len() == groups && leaders.len() == groups {
            return Ok(leaders);
        }
        if started.elapsed() > limit {
            bail!(
                "groups without a leader after {limit:?}: {:?} (node logs in {})",
                views
                    .keys()
                    .filter(|group| !leaders.contains_key(*group))
                    .collect::<Vec<_>>(),
                layout.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `domicile audit verify` on every node's trail, with the CA certificate alone. A node still running may
/// be in the middle of a write; a trail that ends inside an entry is checked again a moment later.
async fn verify_audit_trails(layout: &Layout) -> bool {
    println!("   $ domicile audit verify data/nN/audit --ca certs/ca.pem");
    let ca = layout.dir.join("certs/ca.pem");
    let mut intact = true;
    for id in layout.nodes.keys() {
        let trail = layout.dir.join(format!("data/n{id}/audit"));
        let mut verdict = crate::audit_cli::summary(&trail, &ca);
        for _ in 0..3 {
            if verdict.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            verdict = crate::audit_cli::summary(&trail, &ca);
        }
        intact &= verdict.0;
        println!("   n{id}: {}", verdict.1);
    }
    intact
}

async fn show(layout: &Layout, nodes: &mut Nodes, records: u64) -> anyhow::Result<ExitCode> {
    println!(
        "== Five nodes, five sites, one cluster CA (everything under {})",
        layout.dir.display()
    );
    for (id, (listen, admin)) in &layout.nodes {
        println!("   n{id}: QUIC {listen}, admin https://{admin}");
    }
    let leaders = wait_for_leaders(layout, &[], Duration::from_secs(30)).await?;
    println!("   every group has a leader");

    println!("\n== Writing {records} user records through the client library");
    let endpoints: Vec<String> = layout
        .nodes
        .iter()
        .map(|(id, (listen, _))| format!("n{id}@{listen}"))
        .collect();
    let client = Client::builder()
        .endpoints(&endpoints)
        .tls(ClientTls::from_dir(layout.dir.join("certs"), "demo")?)
        .default_jurisdiction("EEA")
        .timeout(Duration::from_secs(5))
        .build()
        .await?;
    let bar = indicatif::ProgressBar::new(records);
    bar.set_style(
        indicatif::ProgressStyle::with_template("   {bar:40} {pos}/{len} records {msg}")
            .expect("a valid template"),
    );
    let mut acknowledged = Vec::new();
    let mut latencies = PutLatencies::default();
    let started = Instant::now();
    for index in 0..records {
        // Six in ten users are European (EEA), three EU-only, one American.
        let jurisdiction = match index % 10 {
            0..=5 => "EEA",
            6..=8 => "EU",
            _ => "US",
        };
        let user = format!("user-{index:05}");
        let value = format!("{{\"user\":\"{user}\",\"phone\":\"+000 {index:07}\"}}").into_bytes();
        let put_started = Instant::now();
        client
            .in_jurisdiction(jurisdiction)
            .put(&user, "profile", value.clone())
            .await?;
        latencies.record(jurisdiction, put_started.elapsed());
        acknowledged.push((jurisdiction, user, value));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "   {records} records acknowledged in {elapsed:.1} s ({:.0} writes/s, one at a time; {})",
        records as f64 / elapsed,
        latencies.summary()
    );
    for line in latencies.by_jurisdiction() {
        println!("   {line}");
    }

    println!("\n== Groups, leaders and replicas by site");
    let nodes_now = statuses(layout, &[]).await;
    print!("{}", render_groups(&group_views(&nodes_now), &nodes_now));

    let migrated = show_legacy_migration(layout).await?;
    let split = show_split(layout).await?;

    let victim = 1;
    let led: Vec<String> = leaders
        .iter()
        .filter(|(_, leader)| **leader == victim)
        .map(|(group, _)| group.clone())
        .collect();
    println!(
        "\n== Killing n{victim} (Dublin A) with SIGKILL; it led: {}",
        if led.is_empty() {
            "nothing".into()
        } else {
            led.join(", ")
        }
    );
    let had_victim: Vec<String> = group_views(&statuses(layout, &[]).await)
        .into_iter()
        .filter(|(_, view)| view.voters.iter().any(|member| member.node == victim))
        .map(|(group, _)| group)
        .collect();
    let killed_at = Instant::now();
    nodes.kill(victim)?;
    let after = wait_for_leaders(layout, &[victim], Duration::from_secs(30)).await?;
    let failover = killed_at.elapsed();
    for group in &led {
        println!(
            "   {group}: leader n{victim} -> n{} ({:.2} s after the kill)",
            after[group],
            failover.as_secs_f64()
        );
    }
    let mut lost = 0;
    for (jurisdiction, user, value) in &acknowledged {
        let record = client.in_jurisdiction(jurisdiction).get(user, "profile").await?;
        if record.map(|record| record.value) != Some(value.clone()) {
            lost += 1;
        }
    }
    println!(
        "   read back all {} acknowledged writes (linearizable): {lost} lost",
        acknowledged.len()
    );

    show_outside_reader(layout, &endpoints, &client, &acknowledged).await?;

    println!("\n== Asking to add the Ashburn node (n5, US) to the EU group");
    let eu_leader = after["users-eu"];
    println!("   (as operator `demo`, over mutual TLS: the fence, not the operator's rights, decides)");
    let url = admin_url(&admin(layout, eu_leader), "/groups/users-eu/learners");
    let response = http().post(&url).json(&AddLearner { node: 5 }).send().await?;
    let refused = response.status() == reqwest::StatusCode::FORBIDDEN;
    let answer: AdminError = response.json().await.context("the admin endpoint's answer")?;
    println!(
        "   HTTP {}: {}",
        if refused {
            "403 Forbidden"
        } else {
            "unexpected status"
        },
        answer.error
    );
    if let Some(refusal) = &answer.refusal {
        println!("   refusal: {refusal}");
    }

    println!(
        "\n== Re-replication: each leader replaces n{victim} inside its group's jurisdiction after {:.0} s of silence",
        REPAIR_AFTER_MS as f64 / 1000.0
    );
    let topology = TopologyFile::parse(TOPOLOGY).map_err(|error| anyhow!("{error}"))?;
    let repair_started = Instant::now();
    let repaired = loop {
        let views = group_views(&statuses(layout, &[victim]).await);
        let eea = views.get("users-eea");
        let done = eea.is_some_and(|view| {
            view.voters.len() == 3
                && view.learners.is_empty()
                && view.voters.iter().all(|member| member.node != victim)
        });
        if done || repair_started.elapsed() > Duration::from_secs(30) {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let repaired_after = killed_at.elapsed();
    for (group, view) in repaired.iter().filter(|(group, _)| had_victim.contains(group)) {
        let voters: Vec<String> = view
            .voters
            .iter()
            .map(|member| format!("n{}", member.node))
            .collect();
        let replaced = view.voters.iter().all(|member| member.node != victim);
        println!(
            "   {group:<10} voters {} {}",
            voters.join(", "),
            if replaced {
                format!(
                    "(n{victim} replaced, {:.1} s after the kill)",
                    repaired_after.as_secs_f64()
                )
            } else if spare_inside(&topology, view, victim) {
                format!(
                    "(n{victim} NOT replaced within 30 s although a spare is inside {})",
                    view.jurisdiction
                )
            } else {
                format!("(n{victim} kept: no healthy spare inside {})", view.jurisdiction)
            }
        );
    }

    let purged = show_return(layout, nodes, victim, &had_victim).await?;

    println!("\n== Residency report");
    let nodes_now = statuses(layout, &[]).await;
    let mut breaches = 0;
    for (group, view) in group_views(&nodes_now) {
        let members: Vec<String> = view
            .voters
            .iter()
            .chain(&view.learners)
            .map(|member| format!("n{} {}/{}", member.node, member.site, member.country))
            .collect();
        let outside = view
            .voters
            .iter()
            .chain(&view.learners)
            .filter(|member| !member.inside)
            .count();
        breaches += outside;
        let verdict = if outside == 0 {
            format!("all inside {}", view.jurisdiction)
        } else {
            format!("{outside} OUTSIDE {}", view.jurisdiction)
        };
        println!(
            "   {group:<10} {:<4} {verdict:<18} replicas: {}",
            view.jurisdiction,
            members.join(", ")
        );
        let policy = &topology.policies[&placement::GroupId(group.clone())];
        if view.voters.len() < policy.voters {
            println!(
                "   {:<10} under-replicated: {} of {} voters",
                "",
                view.voters.len(),
                policy.voters
            );
        }
    }
    let incidents = nodes_now.iter().fold((0, 0, 0, 0), |total, node| {
        (
            total.0 + node.incidents.membership_refused,
            total.1 + node.incidents.egress_blocked,
            total.2 + node.incidents.ingress_refused,
            total.3 + node.incidents.client_calls_refused,
        )
    });
    println!(
        "   fence incidents: {} refused changes, {} blocked messages out, {} refused messages in, \
         {} client calls refused",
        incidents.0, incidents.1, incidents.2, incidents.3
    );
    if breaches == 0 {
        println!("   no replica of any group is outside its jurisdiction.");
    }
    let audited = verify_audit_trails(layout).await;
    Ok(
        if lost == 0 && breaches == 0 && refused && purged && audited && migrated && split {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// The reason this product exists, on the demo's own cluster: `users-legacy`, with a voter in Ashburn, is
/// moved into the EEA by `placement apply` — the same code as the command, through the same admin calls
/// and the same fence — and its US replica is purged by its own node. The records written to it above are
/// read back after the failover below. Returns whether the run ended with every member inside.
async fn show_legacy_migration(layout: &Layout) -> anyhow::Result<bool> {
    println!("\n== Moving users-legacy out of Ashburn");
    println!(
        "   $ domicile placement apply --group users-legacy --yes --admin {}",
        admin(layout, 2)
    );
    let code = crate::apply_cli::run(
        crate::apply_cli::Scope::Apply {
            group: Some("users-legacy".into()),
        },
        crate::apply_cli::RunArgs {
            admin: admin(layout, 2),
            dry_run: false,
            yes: true,
            output: crate::operator_cli::Output::Table,
            purge_timeout_s: 30,
            catch_up_timeout_s: 120,
            copies: crate::apply_cli::Copies::SideBySide,
        },
    )
    .await?;
    let view = group_views(&statuses(layout, &[]).await).remove("users-legacy");
    let inside = code == ExitCode::SUCCESS
        && view.as_ref().is_some_and(|view| {
            view.voters.len() == 3
                && view
                    .voters
                    .iter()
                    .chain(&view.learners)
                    .all(|member| member.inside)
        });
    let members = view.map_or_else(String::new, |view| {
        view.voters
            .iter()
            .map(|member| format!("n{} {}/{}", member.node, member.site, member.country))
            .collect::<Vec<_>>()
            .join(", ")
    });
    println!(
        "   users-legacy voters now: {members} ({})",
        if inside {
            "all inside the EEA"
        } else {
            "NOT all inside the EEA"
        }
    );
    Ok(inside)
}

/// Growing a jurisdiction while it serves: half of users-eea's range, with its records, moved online into
/// the spare users-eea-2 by `shard split` — the same code as the command, through the same admin calls.
/// The records written above are read back, wherever they now live, after the failover below. Returns
/// whether the split was done.
async fn show_split(layout: &Layout) -> anyhow::Result<bool> {
    println!("\n== Splitting users-eea online: half of its users move to the spare users-eea-2");
    println!(
        "   $ domicile shard split --jurisdiction EEA --group users-eea --yes --admin {}",
        admin(layout, 1)
    );
    let code = crate::shard_cli::run(crate::shard_cli::ShardCommand::Split {
        jurisdiction: "EEA".into(),
        group: "users-eea".into(),
        at: None,
        to: None,
        run: crate::shard_cli::ShardArgs {
            admin: admin(layout, 1),
            dry_run: false,
            yes: true,
            output: crate::operator_cli::Output::Table,
        },
    })
    .await?;
    Ok(code == ExitCode::SUCCESS)
}

/// What a service outside the EU, granted read access to EU records, sees of them: personal fields
/// pseudonymised by the nodes inside, with a key it never holds; and what it may not do: write.
async fn show_outside_reader(
    layout: &Layout,
    endpoints: &[String],
    inside: &Client,
    acknowledged: &[(&str, String, Vec<u8>)],
) -> anyhow::Result<()> {
    let Some((_, user, _)) = acknowledged
        .iter()
        .find(|(jurisdiction, _, _)| *jurisdiction == "EU")
    else {
        return Ok(());
    };
    println!("\n== Service `support-us` (certificate: US; granted read on EU) reads EU user {user}");
    let outside = Client::builder()
        .endpoints(endpoints)
        .tls(ClientTls::from_dir(layout.dir.join("certs"), "support-us")?)
        .default_jurisdiction("EU")
        .timeout(Duration::from_secs(5))
        .build()
        .await?;
    let show = |record: Option<client::Record>| -> String {
        record.map_or("(none)".to_string(), |record| {
            String::from_utf8_lossy(&record.value).into_owned()
        })
    };
    let clear = inside.in_jurisdiction("EU").get(user, "profile").await?;
    println!("   `demo` (IE) reads:       {}", show(clear));
    let seen = show(outside.get(user, "profile").await?);
    println!("   `support-us` (US) reads: {seen}");
    if seen.contains("+000 ") {
        bail!("a personal field reached a reader outside the EU in clear: {seen}");
    }
    match outside.put(user, "profile", b"{}".to_vec()).await {
        Err(client::ClientError::Forbidden { reason, .. }) => println!("   and may not write: {reason}"),
        Err(error) => println!("   its write failed otherwise: {error}"),
        Ok(_) => bail!("`support-us` wrote an EU record without a write grant"),
    }
    Ok(())
}
