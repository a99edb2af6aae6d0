//! `domicile drill`: rehearse a failure on a live cluster and report what clients saw.
//!
//! `site-outage --site S` takes every node of a site away from every peer, `leader-loss --group G` the
//! group's leader node, `partition --isolate SITE_OR_NODE` cuts a site's (or a node's) nodes off from the
//! rest — each for `--duration`, while a client workload (the client library: writes, linearizable reads,
//! compare-and-sets, on users reserved for the drill in every jurisdiction) runs before, during and after.
//!
//! The fault is injected by the nodes themselves (`POST /faults/isolate` on their admin endpoints): they
//! stop exchanging Raft traffic until a deadline after which they heal by themselves, so a drill tool that
//! dies leaves nothing broken for longer than `--duration`. With `--fault-command` and `--heal-command`
//! the drill runs an SRE's own commands instead (`docker stop`, `systemctl stop`, a cloud CLI), for an
//! outage that takes client traffic and admin endpoints down too.
//!
//! Nothing is changed before every input is checked — the site, group or node exists, every node's admin
//! endpoint answers, no earlier fault is in force, the client certificate can read in every jurisdiction
//! — and the drill's records are deleted at the end. Exit codes: 0 every check passed, 1 one failed, 2 bad
//! input (or the drill could not run).

mod observe;
mod report;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use client::{Client, ClientTls};
use placement::{GroupId, NodeId, SiteName, TopologyFile};
use raft::routing::Router;

use crate::admin_api::AdminError;
use crate::cluster_view::{Cluster, fetch_topology, membership_of};
use observe::{Answer, Observer};
use report::{Check, Cleanup, Fault, GroupReport, Report, WorkloadSummary};
use workload::{Shape, Workload};

#[derive(Subcommand)]
pub enum DrillCommand {
    /// Every node of a site stops exchanging Raft traffic with every peer, for `--duration`.
    SiteOutage {
        /// The site whose nodes the fault takes out.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        run: DrillArgs,
    },
    /// The node leading a group (when the fault begins) stops exchanging Raft traffic with every peer.
    LeaderLoss {
        /// The group whose leader the fault takes out.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        run: DrillArgs,
    },
    /// A site's nodes (or one node) stop exchanging Raft traffic with the rest of the cluster; a site's
    /// nodes still reach each other.
    Partition {
        /// A site name, or a node id (`3` or `n3`).
        #[arg(long)]
        isolate: String,
        #[command(flatten)]
        run: DrillArgs,
    },
    /// Ends every isolation in force on the cluster's nodes now (each ends at its deadline anyway).
    Heal {
        /// Any node's admin endpoint; the others are found through its peers.
        #[arg(long, default_value = "127.0.0.1:7200")]
        admin: String,
    },
    /// Deletes the records a drill that did not finish left behind: its users, named after its run id
    /// (printed on stderr as it starts).
    Cleanup(CleanupArgs),
}

#[derive(Args, Clone, Debug)]
pub struct CleanupArgs {
    /// The run id of the drill whose records to delete.
    #[arg(long)]
    run: String,
    /// `--users-per-group` of that drill.
    #[arg(long, default_value_t = 2)]
    users_per_group: u32,
    /// Any node's admin endpoint; the others are found through its peers.
    #[arg(long, default_value = "127.0.0.1:7200")]
    admin: String,
    /// The directory holding the cluster CA (`ca.pem`) and the client certificate.
    #[arg(long, default_value = "certs", value_name = "DIR")]
    client_certs: PathBuf,
    /// The client certificate that drill used: `client-NAME.pem` in `--client-certs`.
    #[arg(long, default_value = "drill")]
    client: String,
    /// The nodes' client endpoints (`n1@host:port,...`), if not the addresses they listen on.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

#[derive(Args, Clone, Debug)]
pub struct DrillArgs {
    /// Any node's admin endpoint; the others are found through its peers.
    #[arg(long, default_value = "127.0.0.1:7200")]
    admin: String,
    /// The directory holding the cluster CA (`ca.pem`) and the workload's client certificate.
    #[arg(long, default_value = "certs", value_name = "DIR")]
    client_certs: PathBuf,
    /// The workload's client certificate: `client-NAME.pem` in `--client-certs` (`domicile certs client --name NAME`).
    #[arg(long, default_value = "drill")]
    client: String,
    /// The nodes' client endpoints (`n1@host:port,...`), when the addresses the nodes listen on are not
    /// the ones to reach them by from here.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// How long the fault lasts (`500ms`, `5s`, `2m`; at most 10 minutes).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// How long the workload runs before the fault.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    before: Duration,
    /// How long the workload runs after the fault is healed (longer if a group has no leader yet).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    after: Duration,
    /// Concurrent clients of the workload.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Operations per second, all clients together, at most.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Drill users per group.
    #[arg(long, default_value_t = 2)]
    users_per_group: u32,
    /// Seeds the workload's choices (default: drawn afresh for each run).
    #[arg(long)]
    seed: Option<u64>,
    /// Each client call's deadline, retries included.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// A command that causes a real outage of the target's nodes instead (run with `sh -c`; it gets
    /// DOMICILE_DRILL_NODES, DOMICILE_DRILL_SITES and DOMICILE_DRILL_ADMINS). Needs `--heal-command`.
    #[arg(long, requires = "heal_command")]
    fault_command: Option<String>,
    /// The command that ends the outage `--fault-command` caused.
    #[arg(long, requires = "fault_command")]
    heal_command: Option<String>,
    #[arg(short, long, value_enum, default_value = "markdown")]
    output: Format,
}

/// `500ms`, `5s`, `2m`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        _ => Err(format!("`{text}` is not a duration: write 500ms, 5s or 2m")),
    }
}

/// How long the drill waits after its `after` phase for every group to have a leader again.
const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// How long the fault may wait, after the `before` phase, for every group to have been seen led. Past it
/// the fault is injected anyway and the report fails the group that was not led before it.
const LEADERS_BEFORE_MAX: Duration = Duration::from_secs(30);

/// How long a `--fault-command` or `--heal-command` may run.
const COMMAND_MAX: Duration = Duration::from_secs(120);

/// An admin endpoint's URL: HTTPS when the command was given the cluster CA.
pub fn admin_url(admin: &str, path: &str) -> String {
    crate::operator_cli::admin_url(admin, path)
}

pub fn run_blocking(command: DrillCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match command {
            DrillCommand::Heal { admin } => heal_cluster(&admin).await,
            DrillCommand::Cleanup(args) => clean_up_run(args).await,
            DrillCommand::SiteOutage { site, run } => drill(Goal::SiteOutage(site), run).await,
            DrillCommand::LeaderLoss { group, run } => drill(Goal::LeaderLoss(group), run).await,
            DrillCommand::Partition { isolate, run } => drill(Goal::Partition(isolate), run).await,
        }
    })
}

enum Goal {
    SiteOutage(String),
    LeaderLoss(String),
    Partition(String),
}

impl Goal {
    fn name(&self) -> &'static str {
        match self {
            Goal::SiteOutage(_) => "site-outage",
            Goal::LeaderLoss(_) => "leader-loss",
            Goal::Partition(_) => "partition",
        }
    }
}

/// How the target's nodes are cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Each from every peer.
    Alone,
    /// Together, from the rest.
    FromTheRest,
    /// Down, by the SRE's command.
    Down,
}

/// The nodes a drill takes out, once resolved.
#[derive(Clone, Debug)]
struct Target {
    nodes: BTreeSet<u64>,
    cut: Cut,
    /// What the drill takes down, in words (`site dublin-a`).
    what: String,
    /// Which nodes, and how.
    description: String,
}

impl Target {
    /// The groups of nodes that can still reach each other during the fault (nodes down are in none).
    fn sides(&self, all: &BTreeSet<u64>) -> Vec<BTreeSet<u64>> {
        let rest: BTreeSet<u64> = all.difference(&self.nodes).copied().collect();
        let mut sides = vec![rest];
        match self.cut {
            Cut::Alone => sides.extend(self.nodes.iter().map(|&node| BTreeSet::from([node]))),
            Cut::FromTheRest => sides.push(self.nodes.clone()),
            Cut::Down => {}
        }
        sides
    }
}

fn describe_nodes(file: &TopologyFile, nodes: &BTreeSet<u64>) -> String {
    let named: Vec<String> = nodes
        .iter()
        .map(|&node| {
            let site = file
                .topology
                .site_of(NodeId(node))
                .map_or("?".to_string(), |site| site.name.0.clone());
            format!("n{node} ({site})")
        })
        .collect();
    named.join(", ")
}

fn site_nodes(file: &TopologyFile, name: &str) -> Option<BTreeSet<u64>> {
    file.topology
        .site(&SiteName(name.to_string()))
        .map(|site| site.nodes.iter().map(|node| node.0).collect())
}

fn known_sites(file: &TopologyFile) -> String {
    let names: Vec<String> = file.topology.sites().map(|site| site.name.0.clone()).collect();
    names.join(", ")
}

/// Checks the drill's target against the topology before anything changes. A leader-loss's node is
/// chosen when the fault begins (the leader may move meanwhile); here only its group is checked.
fn check_goal(goal: &Goal, file: &TopologyFile) -> anyhow::Result<()> {
    match goal {
        Goal::SiteOutage(site) => {
            site_nodes(file, site).ok_or_else(|| {
                anyhow!(
                    "unknown site `{site}`: the topology's sites are {}",
                    known_sites(file)
                )
            })?;
        }
        Goal::LeaderLoss(group) => {
            if !file.policies.contains_key(&GroupId(group.clone())) {
                let groups: Vec<&str> = file.policies.keys().map(|group| group.0.as_str()).collect();
                bail!(
                    "unknown group `{group}`: the topology's groups are {}",
                    groups.join(", ")
                );
            }
        }
        Goal::Partition(isolate) => {
            let nodes = partition_nodes(file, isolate)?;
            if nodes.len() == file.topology.nodes().count() {
                bail!("`{isolate}` holds every node of the cluster: there is no rest to cut it off from");
            }
        }
    }
    Ok(())
}

/// The drill's client service must be granted read-write in every jurisdiction it drills, and its values'
/// field must not be declared personal (the drill checks what it reads back against what it wrote).
fn check_grants(file: &TopologyFile, service: &str) -> anyhow::Result<()> {
    let jurisdictions: BTreeSet<&str> = file
        .policies
        .values()
        .map(|policy| policy.jurisdiction.name())
        .collect();
    for jurisdiction in jurisdictions {
        let held = file.access.granted(service, jurisdiction);
        if !held.covers(placement::Access::READ_WRITE) {
            bail!(
                "client service `{service}` may not both read and write in jurisdiction {jurisdiction}, and a drill \
                 writes and reads its own records there: grant it in the topology ([[grant]] service = \"{service}\", \
                 jurisdiction = \"{jurisdiction}\", access = \"read-write\"), or name another with --client"
            );
        }
        let personal = file.access.personal_fields(jurisdiction);
        if personal.is_some_and(|personal| personal.fields.contains(workload::FIELD)) {
            bail!(
                "jurisdiction {jurisdiction} declares `{}` personal: the drill's values use that field, and would be \
                 read back pseudonymised",
                workload::FIELD
            );
        }
    }
    Ok(())
}

fn partition_nodes(file: &TopologyFile, isolate: &str) -> anyhow::Result<BTreeSet<u64>> {
    if let Some(nodes) = site_nodes(file, isolate) {
        return Ok(nodes);
    }
    let id = isolate.strip_prefix('n').unwrap_or(isolate).parse::<u64>().ok();
    match id {
        Some(id) if file.topology.site_of(NodeId(id)).is_some() => Ok(BTreeSet::from([id])),
        Some(id) => bail!("unknown node n{id}: it is in no site of the topology"),
        None => bail!(
            "unknown site or node `{isolate}`: name a site ({}) or a node id (n3)",
            known_sites(file)
        ),
    }
}

/// The nodes the fault takes out, at the moment it begins.
fn resolve(
    goal: &Goal,
    file: &TopologyFile,
    answers: &[Answer],
    now: Duration,
    command: bool,
) -> anyhow::Result<Target> {
    let (nodes, cut, what) = match goal {
        Goal::SiteOutage(site) => {
            let nodes = site_nodes(file, site).expect("checked before the drill began");
            (nodes, Cut::Alone, format!("site {site}"))
        }
        Goal::LeaderLoss(group) => {
            let (leader, term) = observe::leader_at(answers, group, now)
                .ok_or_else(|| anyhow!("group `{group}` has no leader now: there is no leader to lose"))?;
            (
                BTreeSet::from([leader]),
                Cut::Alone,
                format!("group {group}'s leader (term {term})"),
            )
        }
        Goal::Partition(isolate) => {
            let nodes = partition_nodes(file, isolate)?;
            (nodes, Cut::FromTheRest, isolate.clone())
        }
    };
    let named = describe_nodes(file, &nodes);
    let (cut, description) = if command {
        (
            Cut::Down,
            format!("{what}: {named} taken down by the fault command"),
        )
    } else {
        let how = match cut {
            Cut::Alone if nodes.len() == 1 => "isolated from every peer",
            Cut::Alone => "each isolated from every peer",
            _ => "isolated from the rest of the cluster",
        };
        (
            cut,
            format!("{what}: {named} {how}, by the nodes themselves (healing by themselves at the deadline)"),
        )
    };
    Ok(Target {
        nodes,
        cut,
        what,
        description,
    })
}

/// Where to reach each node's client endpoint from here: its listen address, with the host the admin
/// endpoint was reached by when it listens on every address.
fn endpoints(cluster: &Cluster, admins: &BTreeMap<u64, String>) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|status| {
            let listen = status.listen.clone();
            let address = match listen.parse::<std::net::SocketAddr>() {
                Ok(address) if address.ip().is_unspecified() => admins
                    .get(&status.node)
                    .and_then(|admin| admin.rsplit_once(':'))
                    .map_or(listen, |(host, _)| format!("{host}:{}", address.port())),
                _ => listen,
            };
            format!("n{}@{address}", status.node)
        })
        .collect()
}

fn check_args(args: &DrillArgs) -> anyhow::Result<()> {
    let fault_max = raft::fault::ISOLATION_MAX;
    if args.duration < Duration::from_millis(100) || args.duration > fault_max {
        bail!(
            "--duration must be between 100ms and {}m",
            fault_max.as_secs() / 60
        );
    }
    for (name, phase) in [("--before", args.before), ("--after", args.after)] {
        if phase > fault_max {
            bail!("{name} must be at most {}m", fault_max.as_secs() / 60);
        }
    }
    if !(1..=workload::WORKERS_MAX as u32).contains(&args.workers) {
        bail!("--workers must be between 1 and {}", workload::WORKERS_MAX);
    }
    if !(1..=10_000).contains(&args.rate) {
        bail!("--rate must be between 1 and 10000 operations per second");
    }
    if !(1..=16).contains(&args.users_per_group) {
        bail!("--users-per-group must be between 1 and 16");
    }
    if args.op_timeout < Duration::from_millis(100) || args.op_timeout > Duration::from_secs(60) {
        bail!("--op-timeout must be between 100ms and 60s");
    }
    Ok(())
}

/// A short run id: the users' names carry it, so a drill's records are told from another's.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let hash = raft::routing::stable_hash(format!("{nanos}-{}", std::process::id()).as_bytes());
    format!("{:08x}", hash as u32)
}

/// The cluster as the drill starts on it: every node answers, none is isolated already.
async fn read_healthy_cluster(admin: &str) -> anyhow::Result<(Cluster, TopologyFile, BTreeMap<u64, String>)> {
    let cluster = Cluster::read(admin).await?;
    let text = fetch_topology(admin).await?;
    let file = TopologyFile::parse(&text).map_err(|error| anyhow!("the cluster's topology: {error}"))?;
    if let Some((node, error)) = cluster.silent.first() {
        bail!(
            "{node}'s admin endpoint does not answer ({error}): a drill starts from a cluster whose nodes all answer"
        );
    }
    let mut admins = BTreeMap::new();
    for node in file.topology.nodes() {
        if !cluster.answers(node) {
            bail!(
                "{node} of the topology does not answer (no node names its admin endpoint): a drill starts from a cluster whose nodes all answer"
            );
        }
        let address = cluster
            .admin(node)
            .ok_or_else(|| anyhow!("the admin endpoint of {node} is unknown"))?;
        admins.insert(node.0, address);
    }
    for status in &cluster.nodes {
        if let Some(fault) = &status.fault {
            bail!(
                "n{} is still isolated from {} for {} ms (an earlier drill?): wait, or run `domicile drill heal --admin {admin}`",
                status.node,
                fault.peers,
                fault.remaining_ms
            );
        }
    }
    Ok((cluster, file, admins))
}

async fn build_client(
    certs: &std::path::Path,
    service: &str,
    timeout: Duration,
    endpoints: Vec<String>,
    jurisdiction: &str,
) -> anyhow::Result<Client> {
    let tls = ClientTls::from_dir(certs, service).map_err(|error| {
        anyhow!(
            "the drill's client certificate: {error} (make one with `domicile certs client --name {service} --dir {}`)",
            certs.display()
        )
    })?;
    Client::builder()
        .endpoints(endpoints)
        .tls(tls)
        .default_jurisdiction(jurisdiction)
        .timeout(timeout)
        .build()
        .await
        .map_err(|error| anyhow!("the drill's client can't reach the cluster: {error}"))
}

/// Sleeps, or returns early (true) on Ctrl-C.
async fn sleep_or_interrupted(duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = tokio::signal::ctrl_c() => true,
    }
}

async fn drill(goal: Goal, args: DrillArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let (cluster, file, admins) = read_healthy_cluster(&args.admin).await?;
    check_goal(&goal, &file)?;
    check_grants(&file, &args.client)?;
    let router = Router::new(file.policies.values()).map_err(|error| anyhow!("{error}"))?;
    let run = run_id();
    let users = workload::choose_users(&router, &run, args.users_per_group)?;
    let first_jurisdiction = users
        .first()
        .map(|user| user.jurisdiction.clone())
        .ok_or_else(|| anyhow!("the topology fences no group to any jurisdiction: nothing to drill"))?;
    let endpoints = if args.endpoints.is_empty() {
        endpoints(&cluster, &admins)
    } else {
        args.endpoints.clone()
    };
    let client = build_client(
        &args.client_certs,
        &args.client,
        args.op_timeout,
        endpoints,
        &first_jurisdiction,
    )
    .await?;
    let started = Instant::now();
    let workload = Arc::new(Workload {
        client: Arc::new(client),
        users: Arc::new(users),
        run: run.clone(),
        seed: args
            .seed
            .unwrap_or_else(|| raft::routing::stable_hash(run.as_bytes())),
        started,
    });
    workload.preflight().await?;
    let observer = Observer::start(started, &admins);
    observer.first_round(admins.len()).await;
    eprintln!(
        "drill {run}: {} on {} nodes; workload on {} drill users; fault in {:?}",
        goal.name(),
        admins.len(),
        workload.users.len(),
        args.before
    );
    let stop = Arc::new(AtomicBool::new(false));
    let shape = Shape {
        workers: args.workers,
        rate: args.rate,
    };
    let running = tokio::spawn(workload.clone().run(shape, stop.clone()));

    // A group whose leadership is still moving when the fault is due (just after the cluster starts, or
    // after a handover) has no leader to lose: the fault waits, a bounded time, until every group has
    // been seen led, so the drill measures a recovery rather than a start-up.
    let fault = if sleep_or_interrupted(args.before).await
        || until_all_led(&file, &observer, LEADERS_BEFORE_MAX).await
    {
        FaultOutcome::interrupted(observer.since_start())
    } else {
        fault(&goal, &args, &file, &admins, &observer, &run).await
    };
    let FaultOutcome {
        target,
        began,
        injected,
        healed,
        mut interrupted,
        failure,
    } = fault;
    if !interrupted && failure.is_none() {
        interrupted = recover(&file, &observer, args.after).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut record = running.await.context("the workload stopped unexpectedly")?;
    let ended = observer.since_start();
    workload.final_reads(&mut record).await;
    let answers = observer.stop().await;
    let read_back = workload.read_back(&record.acknowledged).await;
    let (records_deleted, users_left) = workload.clean_up().await;
    if interrupted {
        bail!("interrupted: the fault was healed and the drill's records deleted ({records_deleted})");
    }
    if let Some(error) = failure {
        return Err(error.context(
            "the drill could not inject its fault (it was healed, and the drill's records deleted)",
        ));
    }
    let target = target.expect("a drill that was not interrupted and did not fail has a target");
    let report = judge(Judged {
        goal: &goal,
        file: &file,
        args: &args,
        run,
        target,
        answers: &answers,
        record: &record,
        read_back: &read_back,
        began,
        injected,
        healed,
        ended,
        workload: &workload,
        cleanup: Cleanup {
            users: workload.users.len(),
            records_deleted,
            users_left,
        },
    });
    match args.output {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Markdown => out!("{}", report.markdown()),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What became of the fault: on whom, when it began and ended, and whether it could be injected at all.
struct FaultOutcome {
    target: Option<Target>,
    began: Duration,
    injected: Duration,
    healed: Duration,
    interrupted: bool,
    failure: Option<anyhow::Error>,
}

impl FaultOutcome {
    fn interrupted(now: Duration) -> FaultOutcome {
        FaultOutcome {
            target: None,
            began: now,
            injected: now,
            healed: now,
            interrupted: true,
            failure: None,
        }
    }

    fn not_injected(now: Duration, error: anyhow::Error) -> FaultOutcome {
        FaultOutcome {
            interrupted: false,
            failure: Some(error),
            ..FaultOutcome::interrupted(now)
        }
    }
}

/// The fault: its target resolved now (a leader-loss takes the leader of this moment), injected, held for
/// `--duration` (or until Ctrl-C), and healed — also when it could be injected on some nodes only.
async fn fault(
    goal: &Goal,
    args: &DrillArgs,
    file: &TopologyFile,
    admins: &BTreeMap<u64, String>,
    observer: &Observer,
    run: &str,
) -> FaultOutcome {
    let now = observer.since_start();
    let command = args.fault_command.is_some();
    let target = match resolve(goal, file, &observer.answers(), now, command) {
        Ok(target) => target,
        Err(error) => return FaultOutcome::not_injected(now, error),
    };
    let injection = inject(args, file, admins, &target).await;
    let injected = observer.since_start();
    eprintln!("drill {run}: fault injected: {}", target.description);
    let (interrupted, failure) = match injection {
        Ok(()) => (sleep_or_interrupted(args.duration).await, None),
        Err(error) => (false, Some(error)),
    };
    let healed = observer.since_start();
    if let Err(error) = heal(args, file, admins, &target).await {
        eprintln!("drill {run}: {error:#}");
    }
    eprintln!("drill {run}: fault healed");
    FaultOutcome {
        target: Some(target),
        began: now,
        injected,
        healed,
        interrupted,
        failure,
    }
}

/// The `after` phase, then until every group has a leader again (at most [`RECOVERY_MAX`] more); true if
/// interrupted.
async fn recover(file: &TopologyFile, observer: &Observer, after: Duration) -> bool {
    if sleep_or_interrupted(after).await {
        return true;
    }
    until_all_led(file, observer, RECOVERY_MAX).await
}

/// Waits until every group has a leader, as the latest answers show, or `bound` has passed; true if
/// interrupted.
async fn until_all_led(file: &TopologyFile, observer: &Observer, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline && !all_led(file, &observer.answers(), observer.since_start()) {
        if sleep_or_interrupted(observe::POLL_EVERY).await {
            return true;
        }
    }
    false
}

/// Whether every group of the topology has a leader, as the latest answers show.
fn all_led(file: &TopologyFile, answers: &[Answer], now: Duration) -> bool {
    file.policies
        .keys()
        .all(|group| observe::leader_at(answers, &group.0, now).is_some())
}

/// Isolates each node of the target (or runs the fault command).
async fn inject(
    args: &DrillArgs,
    file: &TopologyFile,
    admins: &BTreeMap<u64, String>,
    target: &Target,
) -> anyhow::Result<()> {
    if let Some(command) = &args.fault_command {
        return run_command("fault", command, file, admins, target).await;
    }
    let http = crate::operator_cli::http();
    for &node in &target.nodes {
        let peers = match target.cut {
            Cut::Alone | Cut::Down => serde_json::json!("all"),
            Cut::FromTheRest => admins
                .keys()
                .filter(|peer| !target.nodes.contains(peer))
                .copied()
                .collect::<Vec<u64>>()
                .into(),
        };
        let url = admin_url(&admins[&node], "/faults/isolate");
        let body = serde_json::json!({"peers": peers, "duration_ms": args.duration.as_millis() as u64});
        let response = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let error = response
                .json::<AdminError>()
                .await
                .map_or_else(|_| status.to_string(), |error| error.error);
            bail!("n{node} refused the isolation: {error}");
        }
    }
    Ok(())
}

/// Heals each node of the target (or runs the heal command). A node that does not answer heals at its
/// deadline anyway.
async fn heal(
    args: &DrillArgs,
    file: &TopologyFile,
    admins: &BTreeMap<u64, String>,
    target: &Target,
) -> anyhow::Result<()> {
    if let Some(command) = &args.heal_command {
        return run_command("heal", command, file, admins, target).await;
    }
    let http = crate::operator_cli::http();
    let mut unhealed = Vec::new();
    for &node in &target.nodes {
        let url = admin_url(&admins[&node], "/faults/heal");
        let mut healed = false;
        for _ in 0..3 {
            if let Ok(response) = http.post(&url).send().await
                && response.status().is_success()
            {
                healed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !healed {
            unhealed.push(format!("n{node}"));
        }
    }
    if !unhealed.is_empty() {
        bail!(
            "{} did not answer the heal request: they heal by themselves at the deadline",
            unhealed.join(", ")
        );
    }
    Ok(())
}

/// Runs an SRE's fault or heal command with `sh -c`, its output on stderr (stdout is the report's), and
/// the target in its environment.
async fn run_command(
    what: &str,
    command: &str,
    file: &TopologyFile,
    admins: &BTreeMap<u64, String>,
    target: &Target,
) -> anyhow::Result<()> {
    let join = |values: Vec<String>| values.join(",");
    let nodes = join(target.nodes.iter().map(u64::to_string).collect());
    let node_admins = join(
        target
            .nodes
            .iter()
            .filter_map(|node| admins.get(node).cloned())
            .collect(),
    );
    let sites: BTreeSet<String> = target
        .nodes
        .iter()
        .filter_map(|&node| {
            file.topology
                .site_of(NodeId(node))
                .map(|site| site.name.0.clone())
        })
        .collect();
    let stderr = std::io::stderr();
    let output = std::os::fd::AsFd::as_fd(&stderr)
        .try_clone_to_owned()
        .context("the drill's stderr")?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("DOMICILE_DRILL_NODES", nodes)
        .env("DOMICILE_DRILL_SITES", join(sites.into_iter().collect()))
        .env("DOMICILE_DRILL_ADMINS", node_admins)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(output))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("can't run the {what} command `{command}`"))?;
    let status = tokio::time::timeout(COMMAND_MAX, child.wait())
        .await
        .map_err(|_| anyhow!("the {what} command `{command}` ran longer than {COMMAND_MAX:?}: killed"))??;
    if !status.success() {
        bail!("the {what} command `{command}` failed ({status})");
    }
    Ok(())
}

/// Ends every isolation in force on the cluster's nodes (`drill heal`).
async fn heal_cluster(admin: &str) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::read(admin).await?;
    let http = crate::operator_cli::http();
    for status in &cluster.nodes {
        let Some(address) = cluster.admin(NodeId(status.node)) else {
            continue;
        };
        let url = admin_url(&address, "/faults/heal");
        let response = http
            .post(&url)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let answer: serde_json::Value = response.error_for_status()?.json().await?;
        let healed = answer["healed"].as_bool().unwrap_or(false);
        outln!(
            "n{}: {}",
            status.node,
            if healed { "healed" } else { "was not isolated" }
        );
    }
    for (node, error) in &cluster.silent {
        outln!("{node}: did not answer ({error}); an isolation ends at its deadline by itself");
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes every record of a run's drill users (`drill cleanup`): the users are named after the run id,
/// chosen again from the topology as the drill chose them.
async fn clean_up_run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let run = &args.run;
    if run.is_empty() || run.len() > 32 || !run.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("`{run}` is not a drill's run id (up to 32 letters and digits, e.g. 4fc5d300)");
    }
    if !(1..=16).contains(&args.users_per_group) {
        bail!("--users-per-group must be between 1 and 16");
    }
    let cluster = Cluster::read(&args.admin).await?;
    let text = fetch_topology(&args.admin).await?;
    let file = TopologyFile::parse(&text).map_err(|error| anyhow!("the cluster's topology: {error}"))?;
    check_grants(&file, &args.client)?;
    let router = Router::new(file.policies.values()).map_err(|error| anyhow!("{error}"))?;
    let users = workload::choose_users(&router, run, args.users_per_group)?;
    let first_jurisdiction = users
        .first()
        .map(|user| user.jurisdiction.clone())
        .ok_or_else(|| anyhow!("the topology fences no group to any jurisdiction: no drill records"))?;
    let admins: BTreeMap<u64, String> = cluster
        .nodes
        .iter()
        .filter_map(|status| {
            cluster
                .admin(NodeId(status.node))
                .map(|admin| (status.node, admin))
        })
        .collect();
    let endpoints = if args.endpoints.is_empty() {
        endpoints(&cluster, &admins)
    } else {
        args.endpoints.clone()
    };
    let timeout = Duration::from_secs(5);
    let client = build_client(
        &args.client_certs,
        &args.client,
        timeout,
        endpoints,
        &first_jurisdiction,
    )
    .await?;
    let workload = Workload {
        client: Arc::new(client),
        users: Arc::new(users),
        run: run.clone(),
        seed: 0,
        started: Instant::now(),
    };
    let (deleted, left) = workload.clean_up().await;
    outln!(
        "drill {run}: {deleted} records of {} drill users deleted",
        workload.users.len()
    );
    if left.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    outln!("not cleaned up (try again): {}", left.join(", "));
    Ok(ExitCode::from(1))
}

/// Everything the verdict is made of.
struct Judged<'a> {
    goal: &'a Goal,
    file: &'a TopologyFile,
    args: &'a DrillArgs,
    run: String,
    target: Target,
    answers: &'a [Answer],
    record: &'a workload::Record,
    read_back: &'a BTreeMap<String, workload::ReadBack>,
    /// When the fault's injection began: the cluster as it stood before the fault is read here. An
    /// injection takes time (a fault command that kills a node, say), and a status poll answered
    /// during it already sees the fault.
    began: Duration,
    injected: Duration,
    healed: Duration,
    ended: Duration,
    workload: &'a Workload,
    cleanup: Cleanup,
}

fn judge(judged: Judged<'_>) -> Report {
    let Judged {
        goal,
        file,
        args,
        run,
        target,
        answers,
        record,
        read_back,
        began,
        injected,
        healed,
        ended,
        workload,
        cleanup,
    } = judged;
    let all: BTreeSet<u64> = file.topology.nodes().map(|node| node.0).collect();
    let sides = target.sides(&all);
    let fault_ms = healed.saturating_sub(injected).as_millis() as u64;
    let mut groups = Vec::new();
    let mut checks: Vec<Check> = Vec::new();
    for (group, policy) in &file.policies {
        let before = observe::leader_at(answers, &group.0, began);
        // The voters as the leader (or the freshest replica) saw them when the fault began.
        let voters: BTreeSet<u64> = latest_view(answers, &group.0, began)
            .map(|view| membership_of(&view).voters.iter().map(|node| node.0).collect())
            .unwrap_or_default();
        let majority = |side: &BTreeSet<u64>| voters.intersection(side).count() * 2 > voters.len();
        let may_lead = |side: &BTreeSet<u64>| {
            voters
                .intersection(side)
                .any(|&voter| file.topology.is_inside(NodeId(voter), &policy.jurisdiction))
        };
        let quorum_side = sides.iter().find(|side| majority(side) && may_lead(side));
        let leader_lost =
            before.is_some_and(|(leader, _)| !quorum_side.is_some_and(|side| side.contains(&leader)));
        let (new_leader, rto_ms) = match (before, quorum_side, leader_lost) {
            (Some((_, term)), Some(side), true) => {
                match observe::new_leader(answers, &group.0, term, side, injected, healed) {
                    Some((at, leader, _)) => {
                        (Some(leader), Some(at.saturating_sub(injected).as_millis() as u64))
                    }
                    None => (None, None),
                }
            }
            _ => (None, None),
        };
        let samples: Vec<&workload::Sample> = record
            .samples
            .iter()
            .filter(|sample| sample.group == group.0)
            .collect();
        let history: Vec<_> = record
            .history
            .iter()
            .filter(|(user, _)| workload.users[*user].group == group.0)
            .map(|(_, operation)| operation.clone())
            .collect();
        let mut report = GroupReport {
            group: group.0.clone(),
            jurisdiction: policy.jurisdiction.name().to_string(),
            leader_before: before.map(|(leader, _)| leader),
            term_before: before.map(|(_, term)| term),
            leader_lost,
            failover_possible: quorum_side.is_some(),
            new_leader,
            rto_ms,
            leader_after: observe::last_leader(answers, &group.0, healed, ended),
            writes_acknowledged: 0,
            writes_lost: Vec::new(),
            writes_unverified: 0,
            linearizable: report::linearizable(&history),
            phases: report::phase_stats(&samples, injected, healed),
        };
        report.read_back(read_back.get(&group.0));
        if before.is_none() {
            checks.push(Check {
                check: format!("{}: led before the fault", group.0),
                passed: false,
                detail: "no leader when the fault began: the drill measured nothing for this group".into(),
            });
        }
        checks.extend(report.checks(fault_ms));
        groups.push(report);
    }
    let legacy = observe::legacy_outside(file, answers, injected);
    let residency = observe::residency(file, answers, &legacy);
    checks.push(Check {
        check: "residency: no leader or replica outside its jurisdiction".into(),
        passed: residency.violations_total == 0,
        detail: format!(
            "{} group views in {} answers, {} outside",
            residency.views, residency.answers, residency.violations_total
        ),
    });
    checks.push(Check {
        check: "the drill's records deleted".into(),
        passed: cleanup.users_left.is_empty(),
        detail: format!("{} records of {} users", cleanup.records_deleted, cleanup.users),
    });
    let passed = checks.iter().all(|check| check.passed);
    Report {
        drill: goal.name().to_string(),
        target: target.what.clone(),
        run,
        passed,
        fault: Fault {
            method: if args.fault_command.is_some() {
                "command".into()
            } else {
                "isolation".into()
            },
            nodes: target.nodes.iter().copied().collect(),
            description: target.description.clone(),
            injected_at_ms: injected.as_millis() as u64,
            healed_at_ms: healed.as_millis() as u64,
        },
        workload: WorkloadSummary {
            workers: args.workers,
            rate: args.rate,
            users: workload.users.len(),
            operations: record.samples.len(),
            poll_every_ms: observe::POLL_EVERY.as_millis() as u64,
        },
        groups,
        residency,
        cleanup,
        checks,
    }
}

/// The view of `group` with the highest term in the answers up to `until` (a leader's own first).
fn latest_view(answers: &[Answer], group: &str, until: Duration) -> Option<crate::admin_api::GroupView> {
    answers
        .iter()
        .filter(|answer| answer.at <= until)
        .filter_map(|answer| {
            let status = answer.status.as_ref()?;
            let view = status.groups.iter().find(|view| view.group == group)?;
            Some((
                (view.term, view.leader == Some(answer.node), answer.at),
                view.clone(),
            ))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, view)| view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 hours").unwrap_err().contains("not a duration"));
        assert!(parse_duration("soon").is_err());
    }

    const TOPOLOGY: &str = "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1, 2]\n\n\
                            [[site]]\nname = \"hamar\"\ncountry = \"NO\"\nnodes = [3]\n\n\
                            [[group]]\nname = \"users-eea\"\njurisdiction = \"EEA\"\nvoters = 2\n";

    #[test]
    fn a_target_that_is_not_in_the_topology_is_refused_by_name() {
        let file = TopologyFile::parse(TOPOLOGY).unwrap();
        let error = |goal| check_goal(&goal, &file).unwrap_err().to_string();
        assert!(
            error(Goal::SiteOutage("paris".into()))
                .contains("unknown site `paris`: the topology's sites are dublin, hamar")
        );
        assert!(
            error(Goal::LeaderLoss("users-eu".into()))
                .contains("unknown group `users-eu`: the topology's groups are users-eea")
        );
        assert!(error(Goal::Partition("n9".into())).contains("unknown node n9"));
        assert!(error(Goal::Partition("paris".into())).contains("unknown site or node `paris`"));
        assert!(check_goal(&Goal::Partition("dublin".into()), &file).is_ok());
        assert!(check_goal(&Goal::Partition("3".into()), &file).is_ok());
    }

    #[test]
    fn the_drills_client_needs_a_read_write_grant_in_every_jurisdiction() {
        let grant = |access: &str| {
            format!(
                "{TOPOLOGY}\n[[grant]]\nservice = \"drill\"\njurisdiction = \"EEA\"\naccess = \"{access}\"\n"
            )
        };
        let file = TopologyFile::parse(TOPOLOGY).unwrap();
        let error = check_grants(&file, "drill").unwrap_err().to_string();
        assert!(
            error.contains("client service `drill` may not both read and write in jurisdiction EEA"),
            "{error}"
        );
        let file = TopologyFile::parse(&grant("read")).unwrap();
        assert!(check_grants(&file, "drill").is_err(), "reading is not enough");
        let file = TopologyFile::parse(&grant("read-write")).unwrap();
        check_grants(&file, "drill").unwrap();
        let personal = format!(
            "{}\n[[personal_data]]\njurisdiction = \"EEA\"\nformat = \"json\"\nfields = [\"drill\"]\n",
            grant("read-write")
        );
        let file = TopologyFile::parse(&personal).unwrap();
        let error = check_grants(&file, "drill").unwrap_err().to_string();
        assert!(error.contains("declares `drill` personal"), "{error}");
    }

    #[test]
    fn a_partition_keeps_the_isolated_nodes_together_and_an_outage_does_not() {
        let all = BTreeSet::from([1, 2, 3]);
        let target = |cut| Target {
            nodes: BTreeSet::from([1, 2]),
            cut,
            what: String::new(),
            description: String::new(),
        };
        assert_eq!(
            target(Cut::FromTheRest).sides(&all),
            [BTreeSet::from([3]), BTreeSet::from([1, 2])]
        );
        assert_eq!(
            target(Cut::Alone).sides(&all),
            [BTreeSet::from([3]), BTreeSet::from([1]), BTreeSet::from([2])]
        );
        assert_eq!(target(Cut::Down).sides(&all), [BTreeSet::from([3])]);
    }
}
