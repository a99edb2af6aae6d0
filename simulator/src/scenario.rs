//! The scenarios: a world, a client workload on tracked keys, a fault schedule drawn from the seed,
//! then healing, the liveness check and the final checks.
//!
//! * `failover`: leaders crash, partitions (leader isolated, one-way cuts, majority/minority) come and
//!   go, lossy and duplicating links, now and then a power loss of every node at once.
//! * `site-outage`: a whole EEA site (Dublin A) is lost, then returns; the planner re-replicates groups
//!   inside their jurisdiction (EEA: to Frankfurt) or reports them under-replicated (EU).
//! * `chaos`: all of it at random, plus disk faults (EIO/ENOSPC on sync, latency spikes, torn writes,
//!   bit flips the log's checksums must catch, a disk lost).
//! * `migrate`: three legacy groups holding 150 million modelled EU user records, each with one voter in
//!   the EEA and two on US sites, are migrated into EEA sites by the planner's steps while clients and a
//!   bulk writer run and nodes crash and links partition; a new replica is promoted only once its bulk
//!   copy has arrived, and after cutover the US replicas are purged ([`crate::bulk`]). Its US–EU links
//!   run at the true 70–90 ms, which the groups' Raft timing covers (`raft::config::covering_round_trip`).
//! * `grow` and `grow-wide` ([`crate::growth`]): an EEA jurisdiction holding 150 million modelled records
//!   grows from 2 groups on 6 nodes to 8 groups on 24 (`grow`), or from 3 groups on 9 nodes to 24 groups
//!   on 24 (`grow-wide`), while clients and a bulk writer run and nodes crash and links partition: groups
//!   created where the planner places them, ranges split by `raft::range_copy`, replicas moved by
//!   `placement::rebalance_by_cost`; the US nodes beside them are never used (issue 19).
//! * `chaos` also points stale routes at nodes outside a group's jurisdiction: a leader replicating where
//!   only its egress fence stops it (the `egress-off` canary's catch).
//! * `writes`: one 3-node group under client writes and no faults, the speed benchmark's baseline.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::Instant as _;
use openraft_rt_sim::{SimInstant, SimRuntime};
use placement::{GroupId, NodeId, Step};
use raft::host::ReadConsistency;
use raft::routing::Router;
use serde::Serialize;
use storage::{Command, RecordKey, WriteId};

use crate::bulk;
use crate::checkers::{self, Checker, Finding, Involved, Violations};
use crate::growth;
use crate::network::{LinkModel, NetFaults};
use crate::orchestrator;
use crate::prng::Prng;
use crate::stores::SyncLatency;
use crate::timeline::{EventKind, Fault, Timeline};
use crate::workload::{TrackedKey, Workload, tracked_keys};
use crate::world::{Canary, GroupSpec, World, WorldSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Failover,
    SiteOutage,
    Chaos,
    Migrate,
    Grow,
    /// `grow` at the issue's scale: 3 → 24 groups on 24 nodes, splits three at a time.
    GrowWide,
    /// One 3-node group under client writes, no faults: the speed benchmark's baseline.
    Writes,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Failover => "failover",
            Scenario::SiteOutage => "site-outage",
            Scenario::Chaos => "chaos",
            Scenario::Migrate => "migrate",
            Scenario::Grow => "grow",
            Scenario::GrowWide => "grow-wide",
            Scenario::Writes => "writes",
        }
    }
}

/// The EEA world: two Dublin sites, Hamar (Norway: EEA, not EU) and Frankfurt.
pub const EEA_TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
nodes = [3]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [4]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eu"
jurisdiction = "EU"
voters = 3
"#;

fn nodes(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|&id| NodeId(id)).collect()
}

fn eea_world() -> WorldSpec {
    WorldSpec {
        topology: EEA_TOPOLOGY.to_string(),
        groups: vec![
            GroupSpec {
                group: GroupId("users-eea".into()),
                voters: nodes(&[1, 2, 3]),
                legacy: BTreeSet::new(),
            },
            GroupSpec {
                group: GroupId("users-eu".into()),
                voters: nodes(&[1, 2, 4]),
                legacy: BTreeSet::new(),
            },
        ],
        links: LinkModel::new(),
        sync_latency: SyncLatency::default(),
        bulk: None,
        first_map: None,
    }
}

/// The benchmark world: one EEA group on three nodes in three sites (Dublin A and B, Hamar).
fn one_group_world() -> WorldSpec {
    let topology = EEA_TOPOLOGY
        .split("[[group]]")
        .next()
        .expect("the EEA topology has sites")
        .to_string()
        + "[[group]]\nname = \"users-eea\"\njurisdiction = \"EEA\"\nvoters = 3\n";
    WorldSpec {
        topology,
        groups: vec![GroupSpec {
            group: GroupId("users-eea".into()),
            voters: nodes(&[1, 2, 3]),
            legacy: BTreeSet::new(),
        }],
        links: LinkModel::new(),
        sync_latency: SyncLatency::default(),
        bulk: None,
        first_map: None,
    }
}

/// The migration world: 15 nodes in six sites, four in the EEA (two in Dublin, Hamar, Frankfurt) and
/// two in the US, where the legacy groups grew up.
pub const MIGRATE_TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1, 2]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [3, 4]

[[site]]
name = "hamar"
country = "NO"
nodes = [5, 6]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [7, 8]

[[site]]
name = "ashburn-1"
country = "US"
nodes = [11, 12, 13, 14]

[[site]]
name = "ashburn-2"
country = "US"
nodes = [15, 16, 17]

[[group]]
name = "users-eea-1"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-a"]

[[group]]
name = "users-eea-2"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-b"]

[[group]]
name = "users-eea-3"
jurisdiction = "EEA"
voters = 3
leader_preference = ["hamar"]
"#;

/// Modelled EU user records across the legacy groups, and ranges per group.
pub const MIGRATE_RECORDS: u64 = 150_000_000;
const MIGRATE_RANGES_PER_GROUP: u64 = 16;

fn migrate_world() -> WorldSpec {
    let legacy = |name: &str, inside: u64, outside: [u64; 2]| GroupSpec {
        group: GroupId(name.into()),
        voters: nodes(&[inside, outside[0], outside[1]]),
        legacy: nodes(&outside),
    };
    let groups = vec![
        legacy("users-eea-1", 1, [11, 15]),
        legacy("users-eea-2", 3, [12, 16]),
        legacy("users-eea-3", 5, [13, 17]),
    ];
    let records_per_group = MIGRATE_RECORDS / groups.len() as u64;
    let links = LinkModel::new();
    WorldSpec {
        topology: MIGRATE_TOPOLOGY.to_string(),
        groups,
        links,
        sync_latency: SyncLatency::default(),
        bulk: Some((records_per_group, MIGRATE_RANGES_PER_GROUP)),
        first_map: None,
    }
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub seed: u64,
    pub canary: Option<Canary>,
    pub keep_trace: bool,
    /// Render the client history as JSON lines (`--history`); a run that does not ask skips the work.
    pub keep_history: bool,
    /// Simulated seconds of faults (the scenario's default when `None`).
    pub fault_seconds: Option<u64>,
}

/// What `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub scenario: Scenario,
    pub canary: Option<&'static str>,
    pub trace_hash: String,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_unknown: u64,
    pub records_modeled: u64,
    pub bytes_modeled: u64,
    /// `migrate` only: simulated seconds from the first bulk transfer to the last purge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_sim_seconds: Option<f64>,
    /// `migrate` only: modelled bytes copied to new replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_moved: Option<u64>,
    /// `grow` and `grow-wide` only: what the growth took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<GrowthReport>,
    pub violations: Violations,
    /// How often each fault point in production code (`raft::sim::maybe`) fired.
    pub fault_points: BTreeMap<&'static str, u64>,
    /// The faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// How many times each group's leadership passed to a new leader (or a new term).
    pub leader_changes: BTreeMap<String, u64>,
    /// The earliest violation in simulated time, and how to replay it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_violation: Option<FirstViolation>,
}

/// What a growth run took: its time, its copying against the least it could be, its splits and moves.
#[derive(Clone, Debug, Serialize)]
pub struct GrowthReport {
    pub groups_from: usize,
    pub groups_to: usize,
    /// Splits allowed under way at once (on disjoint groups).
    pub splits_at_once: usize,
    /// Splits run to their end.
    pub splits: u64,
    /// Simulated seconds from the world's start to the growth found complete (every group owning a
    /// range, nodes balanced, moved copies purged); `None` if it never was.
    pub done_sim_seconds: Option<f64>,
    /// The modelled bytes the splits moved from group to group.
    pub split_bytes: u64,
    /// Modelled bytes copied to replicas: splits, repairs, rebalancing moves.
    pub bytes_moved: u64,
    /// The least copying that ends with every range where it ended: each record whose group changed,
    /// copied once per voter of its final group.
    pub bytes_moved_min: u64,
    /// `bytes_moved / bytes_moved_min`.
    pub bytes_moved_ratio: f64,
    /// Replicas added to groups (`AddLearner` steps: repairs and rebalancing moves).
    pub replicas_added: u64,
    /// Leaderships handed over (`TransferLeader` steps).
    pub leaderships_moved: u64,
    /// Nodes holding a replica at the end.
    pub nodes_used: usize,
}

impl GrowthReport {
    fn of(world: &World, shape: &growth::Shape, timeline: &Timeline) -> GrowthReport {
        let tally = world.growth.lock().expect("growth lock").clone();
        let bytes_moved = world.bulk.as_ref().map_or(0, |bulk| bulk.bytes_moved());
        let bytes_moved_min: u64 = world.bulk.as_ref().map_or(0, |bulk| {
            bulk.ranges
                .iter()
                .zip(bulk.current())
                .filter(|(first, now)| first.group != now.group)
                .map(|(_, now)| now.bytes * world.policies[&now.group].voters as u64)
                .sum()
        });
        let steps = |wanted: fn(&Step) -> bool| {
            timeline
                .events()
                .iter()
                .filter(|event| matches!(&event.kind, EventKind::Step(step) if wanted(step)))
                .count() as u64
        };
        let nodes_used = world
            .policies
            .keys()
            .flat_map(|group| world.holders(group))
            .collect::<BTreeSet<_>>()
            .len();
        GrowthReport {
            groups_from: shape.groups_from(),
            groups_to: shape.groups_to(),
            splits_at_once: shape.splits_at_once(),
            splits: tally.splits,
            done_sim_seconds: tally.done_at.map(|at| at.as_secs_f64()),
            split_bytes: tally.split_bytes,
            bytes_moved,
            bytes_moved_min,
            bytes_moved_ratio: if bytes_moved_min == 0 {
                0.0
            } else {
                bytes_moved as f64 / bytes_moved_min as f64
            },
            replicas_added: steps(|step| matches!(step, Step::AddLearner { .. })),
            leaderships_moved: steps(|step| matches!(step, Step::TransferLeader { .. })),
            nodes_used,
        }
    }
}

/// The first violation of a failing seed, for `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct FirstViolation {
    pub checker: &'static str,
    /// Simulated seconds since the world was built, when known.
    pub at_seconds: Option<f64>,
    pub group: Option<String>,
    pub nodes: Vec<NodeId>,
    pub keys: Vec<String>,
    pub detail: String,
    pub replay: String,
}

pub struct Outcome {
    pub report: Report,
    /// The client history as JSON lines, when the run config asked for it.
    pub history: Option<String>,
    pub trace: Option<String>,
    pub details: Vec<String>,
    /// What the summary and the HTML report are drawn from.
    pub timeline: Timeline,
    pub findings: Vec<Finding>,
    pub layout: Layout,
}

/// Where the run's nodes stood and which groups it ran.
#[derive(Clone, Debug)]
pub struct Layout {
    /// (site, country, nodes), in the topology's order.
    pub sites: Vec<(String, String, Vec<NodeId>)>,
    /// (group, jurisdiction).
    pub groups: Vec<(GroupId, String)>,
}

impl Layout {
    fn of(world: &World) -> Layout {
        let sites = world
            .topology
            .sites()
            .map(|site| {
                (
                    site.name.0.clone(),
                    site.country.as_str().to_string(),
                    site.nodes.clone(),
                )
            })
            .collect();
        let groups = world
            .policies
            .iter()
            .map(|(group, policy)| (group.clone(), policy.jurisdiction.name().to_string()))
            .collect();
        Layout { sites, groups }
    }

    /// The site a node stands in.
    pub fn site_of(&self, node: NodeId) -> Option<&str> {
        self.sites
            .iter()
            .find(|(_, _, nodes)| nodes.contains(&node))
            .map(|(site, ..)| site.as_str())
    }
}

impl RunConfig {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "domicile sim run --scenario {} --seed {}",
            self.scenario.name(),
            self.seed
        );
        if let Some(canary) = self.canary {
            command.push_str(&format!(" --canary {}", canary.name()));
        }
        if let Some(seconds) = self.fault_seconds {
            command.push_str(&format!(" --fault-seconds {seconds}"));
        }
        command
    }
}

/// Runs one seed of a scenario on a fresh deterministic runtime.
pub fn run(config: &RunConfig) -> Outcome {
    let mut runtime = SimRuntime::with_seed(config.seed);
    // The production code's fault points fire on this thread only, drawn from this seed.
    raft::sim::arm(config.seed);
    let (world, workload, sim_seconds) = runtime.block_on(simulate(config));
    let fault_points = raft::sim::disarm();
    let history = workload.history.lock().expect("history lock");
    // Porcupine runs outside the simulation: it is a pure function of the history.
    let timeline = world.timeline();
    history.check(&world.checks, Duration::from_secs(60), &timeline);
    let violations = world.checks.violations();
    let findings = world.checks.findings();
    let first_violation = checkers::first(&findings).map(|finding| FirstViolation {
        checker: finding.checker.name(),
        at_seconds: finding.at.map(|at| at.as_secs_f64()),
        group: finding.involved.group.as_ref().map(|group| group.0.clone()),
        nodes: finding.involved.nodes.clone(),
        keys: finding.involved.keys.clone(),
        detail: finding.detail.clone(),
        replay: config.replay_command(),
    });
    let leaders = timeline.leaders();
    let leader_changes = world
        .policies
        .keys()
        .map(|group| {
            let changes = leaders
                .get(group)
                .map_or(0, |leaders| leaders.len().saturating_sub(1));
            (group.0.clone(), changes as u64)
        })
        .collect();
    let report = Report {
        seed: config.seed,
        scenario: config.scenario,
        canary: config.canary.map(Canary::name),
        trace_hash: format!("{:016x}", world.trace_hash()),
        sim_seconds,
        wall_seconds: 0.0,
        ops_ok: history.ok,
        ops_failed: history.failed,
        ops_unknown: history.unknown,
        records_modeled: world.bulk.as_ref().map_or(0, |bulk| bulk.records()),
        bytes_modeled: world.bulk.as_ref().map_or(0, |bulk| bulk.bytes()),
        migration_sim_seconds: world.bulk.as_ref().map(|bulk| bulk.migration_seconds()),
        bytes_moved: world.bulk.as_ref().map(|bulk| bulk.bytes_moved()),
        growth: growth::Shape::of(config.scenario).map(|shape| GrowthReport::of(&world, shape, &timeline)),
        violations,
        fault_points,
        faults: timeline.fault_counts(),
        leader_changes,
        first_violation,
    };
    let outcome = Outcome {
        report,
        history: config.keep_history.then(|| history.jsonl()),
        trace: world.trace_text(),
        details: world.checks.details(),
        layout: Layout::of(&world),
        timeline,
        findings,
    };
    drop(history);
    drop(runtime);
    outcome
}

async fn simulate(config: &RunConfig) -> (World, Workload, f64) {
    let start = SimInstant::now();
    let growth = growth::Shape::of(config.scenario);
    let migrate = config.scenario == Scenario::Migrate || growth.is_some();
    let spec = match config.scenario {
        Scenario::Migrate => migrate_world(),
        Scenario::Grow | Scenario::GrowWide => growth::world(growth.expect("a growth scenario has a shape")),
        Scenario::Writes => one_group_world(),
        _ => eea_world(),
    };
    let world = World::build(config.seed, &spec, config.canary, config.keep_trace)
        .await
        .expect("the world builds");
    if let Some(shape) = growth {
        growth::publish_first_map(&world, shape)
            .await
            .expect("the first map is published");
    }
    let router = Router::new(world.policies.values()).expect("group names do not collide");
    let keys = if migrate {
        tracked_keys(&router, &["EEA"], 6)
            .into_iter()
            .map(|tracked| TrackedKey {
                group: world
                    .route(&tracked.key.jurisdiction, &tracked.key.user_id)
                    .unwrap_or(tracked.group.clone()),
                ..tracked
            })
            .collect()
    } else if config.scenario == Scenario::Writes {
        tracked_keys(&router, &["EEA"], 3)
    } else {
        tracked_keys(&router, &["EEA", "EU"], 3)
    };
    let workload = Workload::new(world.clone(), keys, (5, 40));
    let observer = spawn_observer(world.clone());
    world.sleep(Duration::from_secs(1)).await;
    workload.start(4);
    let writer_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = world.bulk.as_ref().map(|bulk| {
        bulk::spawn_writer(
            world.clone(),
            bulk.clone(),
            workload.history.clone(),
            writer_stop.clone(),
        )
    });
    let fault_seconds = config.fault_seconds.unwrap_or(match config.scenario {
        Scenario::Failover => 20,
        Scenario::SiteOutage => 30,
        Scenario::Chaos => 30,
        Scenario::Migrate | Scenario::Grow | Scenario::GrowWide => 30,
        Scenario::Writes => 60,
    });
    let mut faults = Faults::new(world.clone(), world.fork_rng(0xfa017), config.scenario);
    faults.run(Duration::from_secs(fault_seconds)).await;
    faults.heal_everything().await;
    match config.scenario {
        Scenario::Migrate => finish_migration(&world).await,
        Scenario::Grow | Scenario::GrowWide => {
            growth::finish(&world, growth.expect("a growth scenario has a shape")).await
        }
        _ => {}
    }
    liveness(&world).await;
    writer_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(writer) = writer {
        // Bounded: its last sleep, then at most one write's 2-s deadline.
        let _ = writer.await;
    }
    workload.stop().await;
    final_checks(&world, &workload).await;
    if let Some(bulk) = &world.bulk {
        bulk.check(&world).await;
    }
    observer.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    world.observe().await;
    let sim_seconds = (SimInstant::now() - start).as_secs_f64();
    world.log(format!("end: {:.3} simulated seconds", sim_seconds));
    world.shutdown().await;
    (world, workload, sim_seconds)
}

struct ObserverHandle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Observes every replica every 20 ms of simulated time until stopped.
fn spawn_observer(world: World) -> ObserverHandle {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    drop(SimRuntime::spawn(async move {
        // Bounded: a run is far shorter than 10^7 steps of 20 ms (55 simulated hours).
        for _ in 0..10_000_000u64 {
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            world.observe().await;
            SimRuntime::sleep(Duration::from_millis(20)).await;
        }
    }));
    ObserverHandle { stop }
}

/// The fault injector: one decision every 100 ms of simulated time, drawn from its own PRNG stream.
struct Faults {
    world: World,
    rng: Prng,
    scenario: Scenario,
    /// (when, node) restarts due.
    restarts: Vec<(SimInstant, NodeId)>,
    /// (when, node) crashes due.
    crashes: Vec<(SimInstant, NodeId)>,
    heal_at: Option<SimInstant>,
    power_loss_done: bool,
    outage: Option<(Vec<NodeId>, SimInstant)>,
    outage_done: bool,
    /// The one node whose disk took a fault (a flipped bit, a lost disk). Disk faults stay within
    /// one node per run: every group has three voters, so a second damaged disk could be a second
    /// voter of the same group, beyond the one failure it is built to survive. (Recovery refusing
    /// three disks that each hold one flipped bit is the correct, fail-closed answer, not a bug the
    /// run should report.)
    damaged_disk: Option<NodeId>,
}

const TICK: Duration = Duration::from_millis(100);

impl Faults {
    fn new(world: World, rng: Prng, scenario: Scenario) -> Faults {
        Faults {
            world,
            rng,
            scenario,
            restarts: Vec::new(),
            crashes: Vec::new(),
            heal_at: None,
            power_loss_done: false,
            outage: None,
            outage_done: false,
            damaged_disk: None,
        }
    }

    async fn run(&mut self, duration: Duration) {
        if self.scenario == Scenario::Writes {
            SimRuntime::sleep(duration).await;
            return;
        }
        let end = SimInstant::now() + duration;
        let base = NetFaults {
            loss_per_million: if self.scenario == Scenario::SiteOutage {
                2_000
            } else {
                10_000
            },
            duplicate_per_million: 5_000,
            delay_per_million: 20_000,
            delay_max_micros: 100_000,
            blocked: BTreeSet::new(),
        };
        self.world.network.set_faults(base.clone());
        let ticks = duration.as_millis() / TICK.as_millis();
        let mut plan_due = SimInstant::now();
        for _ in 0..ticks {
            if SimInstant::now() >= end {
                break;
            }
            self.due_restarts().await;
            if self.heal_at.is_some_and(|at| SimInstant::now() >= at) {
                self.heal_at = None;
                let mut faults = self.world.network.faults();
                faults.blocked.clear();
                self.world.network.set_faults(faults);
                self.world.log("network healed");
                self.world.record(EventKind::Healed);
            }
            match self.scenario {
                Scenario::Failover | Scenario::Migrate | Scenario::Grow | Scenario::GrowWide => {
                    self.failover_tick().await
                }
                Scenario::SiteOutage => self.site_outage_tick().await,
                Scenario::Chaos => self.chaos_tick().await,
                Scenario::Writes => {}
            }
            if self.scenario != Scenario::Failover && SimInstant::now() >= plan_due {
                plan_due = SimInstant::now() + Duration::from_secs(1);
                self.plan_round().await;
            }
            SimRuntime::sleep(TICK).await;
        }
    }

    async fn plan_round(&self) {
        if self.scenario == Scenario::Migrate {
            migration_round(&self.world).await;
            return;
        }
        if let Some(shape) = growth::Shape::of(self.scenario) {
            growth::round(&self.world, shape).await;
            return;
        }
        let step = async {
            let round = orchestrator::round(&self.world, &|_, _| true).await;
            for group in round.under_replicated {
                self.world.log(format!("{group} under-replicated"));
            }
        };
        let _ = SimRuntime::timeout(Duration::from_secs(10), step).await;
    }

    async fn due_restarts(&mut self) {
        let now = SimInstant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.crashes.drain(..).partition(|(at, _)| *at <= now);
        self.crashes = later;
        for (_, node) in due {
            self.world.fault(Fault::ExitAfterFailedSync { node });
            self.crash(node, (200, 2_000)).await;
        }
        let (due, later): (Vec<_>, Vec<_>) = self.restarts.drain(..).partition(|(at, _)| *at <= now);
        self.restarts = later;
        for (_, node) in due {
            if let Err(error) = self.world.start(node).await {
                self.world.log(format!("{node} failed to restart: {error}"));
            }
        }
    }

    fn schedule_restart(&mut self, node: NodeId, millis: (u64, u64)) {
        let at = SimInstant::now() + Duration::from_millis(self.rng.between(millis.0, millis.1));
        self.restarts.push((at, node));
    }

    /// A stale route: a group's leader replicates an entry to a node outside the group's jurisdiction
    /// that is no member of it (a peer table or membership view gone stale). Only the sender's egress
    /// fence stands in the way; the network's residency witness sees the message if it gets through.
    async fn stale_route(&mut self) {
        let groups = self.groups();
        let group = self.rng.pick(&groups).clone();
        let jurisdiction = &self.world.policies[&group].jurisdiction;
        let legacy = self.world.legacy.get(&group).cloned().unwrap_or_default();
        let outside: Vec<NodeId> = self
            .world
            .node_ids()
            .into_iter()
            .filter(|&node| !self.world.topology.is_inside(node, jurisdiction) && !legacy.contains(&node))
            .collect();
        if outside.is_empty() {
            return;
        }
        let target = *self.rng.pick(&outside);
        let Some((leader, host)) = self.world.leader(&group) else {
            return;
        };
        let sent = SimRuntime::timeout(Duration::from_secs(2), host.send_stray_append(&group, target)).await;
        let outcome = match sent {
            Ok(Ok(())) => "delivered".to_string(),
            Ok(Err(reason)) => reason,
            Err(_) => "timed out".to_string(),
        };
        self.world.fault(Fault::StaleRoute {
            leader,
            group,
            target,
            outcome,
        });
    }

    /// A node's clock misbehaves: it leaps forward (a VM paused or migrated: up to 3 s gone in an
    /// instant), or starts running up to 2% fast or slow (a clock source gone bad).
    fn clock_fault(&mut self, node: NodeId) {
        if self.rng.below(2) == 0 {
            let millis = self.rng.between(100, 3_000);
            crate::clock::leap(node.0, Duration::from_millis(millis));
            self.world.fault(Fault::ClockLeap { node, millis });
        } else {
            let drift_ppm = self.rng.below(40_001) as i64 - 20_000;
            crate::clock::set_drift(node.0, drift_ppm);
            self.world.fault(Fault::ClockDrift { node, ppm: drift_ppm });
        }
    }

    fn groups(&self) -> Vec<GroupId> {
        self.world.policies.keys().cloned().collect()
    }

    async fn crash(&mut self, node: NodeId, restart_millis: (u64, u64)) {
        if !self.world.is_up(node) {
            return;
        }
        self.world.crash(node, true).await;
        self.schedule_restart(node, restart_millis);
    }

    fn block(&mut self, pairs: impl IntoIterator<Item = (NodeId, NodeId)>, what: &str) {
        let blocked: BTreeSet<(NodeId, NodeId)> = pairs.into_iter().collect();
        let mut faults = self.world.network.faults();
        faults.blocked.extend(blocked.iter().copied());
        self.world.network.set_faults(faults);
        let millis = self.rng.between(1_000, 4_000);
        self.heal_at = Some(SimInstant::now() + Duration::from_millis(millis));
        self.world.fault(Fault::Partition {
            description: what.to_string(),
            millis,
            blocked,
        });
    }

    /// A partition of one of the shapes the issue names, around `leader` when there is one.
    fn partition(&mut self) {
        let all = self.world.node_ids();
        let groups = self.groups();
        let group = self.rng.pick(&groups).clone();
        let leader = self.world.leader(&group).map(|(node, _)| node);
        let shape = self.rng.below(5);
        let pairs_between = |a: &[NodeId], b: &[NodeId]| {
            let mut pairs = Vec::new();
            for &x in a {
                for &y in b {
                    pairs.push((x, y));
                    pairs.push((y, x));
                }
            }
            pairs
        };
        match (shape, leader) {
            (0, Some(leader)) => {
                let rest: Vec<NodeId> = all.iter().copied().filter(|&n| n != leader).collect();
                self.block(
                    pairs_between(&[leader], &rest),
                    &format!("{leader} isolated (leader of {group})"),
                );
            }
            (1, Some(leader)) => {
                let others: Vec<NodeId> = all.iter().copied().filter(|&n| n != leader).collect();
                let to = *self.rng.pick(&others);
                self.block([(leader, to)], &format!("one-way {leader} -> {to}"));
            }
            (2, _) => {
                // Majority / minority.
                let mut shuffled = all.clone();
                for index in (1..shuffled.len()).rev() {
                    let other = self.rng.below(index as u64 + 1) as usize;
                    shuffled.swap(index, other);
                }
                let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
                self.block(
                    pairs_between(minority, majority),
                    &format!("minority {minority:?} | majority {majority:?}"),
                );
            }
            (3, _) => {
                // Ring: each node reaches only its neighbours.
                let mut pairs = Vec::new();
                let count = all.len();
                for (i, &x) in all.iter().enumerate() {
                    for (j, &y) in all.iter().enumerate() {
                        let distance = (i + count - j) % count;
                        if i != j && distance != 1 && distance != count - 1 {
                            pairs.push((x, y));
                        }
                    }
                }
                self.block(pairs, "ring");
            }
            _ => {
                // Bridge: two halves that only one node connects.
                if all.len() >= 3 {
                    let bridge = *self.rng.pick(&all);
                    let rest: Vec<NodeId> = all.iter().copied().filter(|&n| n != bridge).collect();
                    let (a, b) = rest.split_at(rest.len() / 2);
                    self.block(
                        pairs_between(a, b),
                        &format!("bridge through {bridge}: {a:?} | {b:?}"),
                    );
                }
            }
        }
    }

    async fn power_loss(&mut self) {
        self.power_loss_done = true;
        self.world.fault(Fault::PowerLoss);
        for node in self.world.node_ids() {
            self.crash(node, (1_000, 3_000)).await;
        }
    }

    async fn failover_tick(&mut self) {
        let roll = self.rng.below(1_000);
        let down = self.world.down_nodes().len();
        if roll < 15 && down == 0 {
            let groups = self.groups();
            let group = self.rng.pick(&groups).clone();
            if let Some((leader, _)) = self.world.leader(&group) {
                self.world.fault(Fault::CrashLeader { node: leader, group });
                self.crash(leader, (1_000, 5_000)).await;
            }
        } else if roll < 25 && self.heal_at.is_none() {
            self.partition();
        } else if roll < 27 && !self.power_loss_done && down == 0 {
            self.power_loss().await;
        }
    }

    async fn site_outage_tick(&mut self) {
        if !self.outage_done && self.outage.is_none() && self.rng.chance(50_000) {
            let nodes = self.world.site_nodes("dublin-a");
            self.world.fault(Fault::SiteOutage {
                site: "dublin-a".into(),
                listed: Some(nodes.clone()),
            });
            self.world.network.set_faults(NetFaults {
                blocked: BTreeSet::new(),
                ..self.world.network.faults()
            });
            for &node in &nodes {
                self.world.crash(node, true).await;
            }
            let back = SimInstant::now() + Duration::from_millis(self.rng.between(8_000, 15_000));
            self.outage = Some((nodes, back));
        }
        if let Some((nodes, back)) = self.outage.clone()
            && SimInstant::now() >= back
        {
            self.outage = None;
            self.outage_done = true;
            self.world.fault(Fault::SiteReturns {
                site: "dublin-a".into(),
            });
            for node in nodes {
                let _ = self.world.start(node).await;
            }
        }
    }

    async fn chaos_tick(&mut self) {
        let roll = self.rng.below(1_000);
        let all = self.world.node_ids();
        let node = *self.rng.pick(&all);
        let down = self.world.down_nodes().len();
        let lost = all.iter().filter(|&&n| self.world.is_lost(n)).count();
        // A disk fault may hit `node` only if no other node's disk was damaged.
        let disk_fault_allowed = self.damaged_disk.is_none_or(|damaged| damaged == node);
        match roll {
            0..10 if down < 2 => {
                self.world.fault(Fault::Crash { node });
                self.crash(node, (500, 5_000)).await;
            }
            10..20 if self.heal_at.is_none() => self.partition(),
            20..23 if self.world.is_up(node) => {
                let kind = if self.rng.below(2) == 0 {
                    io::ErrorKind::Other
                } else {
                    io::ErrorKind::StorageFull
                };
                self.world.fault(Fault::SyncFails { node, kind });
                if let Some(disk) = self.world.disk(node) {
                    disk.fail_next_sync(kind);
                }
                // A failed fdatasync poisons the log: the process exits (once it has met the error) and is
                // restarted.
                let at = SimInstant::now() + Duration::from_millis(self.rng.between(50, 500));
                self.crashes.push((at, node));
            }
            23..25
                if !self.world.is_up(node)
                    && lost == 0
                    && !self.world.is_lost(node)
                    && disk_fault_allowed =>
            {
                if let Some(disk) = self.world.disk(node) {
                    self.damaged_disk = Some(node);
                    let flipped = self.rng.fork(7);
                    let mut flipped = flipped;
                    let at = disk.flip_bit(&mut flipped);
                    self.world.fault(Fault::BitFlip { node, at });
                }
            }
            25..26 if lost == 0 && down == 0 && disk_fault_allowed => {
                self.damaged_disk = Some(node);
                self.world.lose(node).await;
            }
            26..28 => {
                let mut faults = self.world.network.faults();
                faults.loss_per_million = self.rng.below(50_000);
                faults.duplicate_per_million = self.rng.below(20_000);
                self.world.fault(Fault::Links {
                    loss_ppm: faults.loss_per_million,
                    duplicate_ppm: faults.duplicate_per_million,
                });
                self.world.network.set_faults(faults);
            }
            28..29 if !self.outage_done && down == 0 => {
                self.outage_done = true;
                let sites: Vec<String> = self
                    .world
                    .topology
                    .sites()
                    .map(|site| site.name.0.clone())
                    .collect();
                let site = self.rng.pick(&sites).clone();
                self.world.fault(Fault::SiteOutage {
                    site: site.clone(),
                    listed: None,
                });
                for node in self.world.site_nodes(&site) {
                    self.crash(node, (3_000, 10_000)).await;
                }
            }
            29..30 if !self.power_loss_done && down == 0 => self.power_loss().await,
            30..34 => self.stale_route().await,
            34..37 => self.clock_fault(node),
            _ => {}
        }
    }

    /// Faults stop: links heal, every node that can come back does.
    async fn heal_everything(&mut self) {
        self.world.network.set_faults(NetFaults::default());
        self.heal_at = None;
        self.restarts.clear();
        // A node whose fdatasync failed has a poisoned log: its process exits whether or not the faults
        // stop, so the exits still due happen now (and the restarts below bring those nodes back).
        for (_, node) in std::mem::take(&mut self.crashes) {
            if self.world.is_up(node) {
                self.world.fault(Fault::ExitAfterFailedSync { node });
                self.world.crash(node, true).await;
            }
        }
        raft::sim::pause();
        for (node, drift_ppm) in &self.world.clock_drift_ppm {
            crate::clock::set_drift(node.0, *drift_ppm);
        }
        self.world.log("faults stop; everything heals");
        self.world.record(EventKind::FaultsStop);
        for node in self.world.node_ids() {
            if let Err(error) = self.world.start(node).await {
                self.world.log(format!("{node} failed to restart: {error}"));
            }
        }
    }
}

/// One planning round of the migration: a new replica is promoted only once its bulk copy has
/// arrived (its catch-up), and each removal is followed by its purge.
async fn migration_round(world: &World) {
    let step = async {
        orchestrator::purge_leftovers(world).await;
        orchestrator::round_with(world, &bulk_gate, true).await
    };
    let _ = SimRuntime::timeout(Duration::from_secs(10), step).await;
}

/// A new replica is promoted only once its bulk copy has arrived (the copy starts at the first ask).
pub(crate) fn bulk_gate(world: &World, step: &Step) -> bool {
    let (Step::PromoteVoter { group, node }, Some(bulk)) = (step, &world.bulk) else {
        return true;
    };
    if bulk.complete(group, *node) {
        return true;
    }
    bulk.start_transfer(world, group, *node);
    // The planted bug: promote (and so go on to remove the legacy voters) before the copy is durable.
    world.canary == Some(Canary::EarlyLegacyRemoval)
}

/// Is every group's membership inside its jurisdiction, and every outside bulk copy purged?
fn migrated(world: &World) -> bool {
    world.policies.iter().all(|(group, policy)| {
        let inside = |node: NodeId| world.topology.is_inside(node, &policy.jurisdiction);
        let members_inside = world
            .leader(group)
            .and_then(|(_, host)| host.status(group).ok())
            .is_some_and(|status| status.membership.members().all(inside));
        let copies_inside = world
            .bulk
            .as_ref()
            .is_none_or(|bulk| bulk.holders(group).into_iter().all(inside));
        members_inside && copies_inside
    })
}

/// Simulated time after the faults stop within which the migration must finish.
pub(crate) const MIGRATION_BOUND: Duration = Duration::from_secs(900);

/// Faults over: planning rounds go on until every group is inside and purged (bounded).
async fn finish_migration(world: &World) {
    let started = SimInstant::now();
    for _ in 0..MIGRATION_BOUND.as_secs() {
        if migrated(world) {
            world.log("migration complete");
            return;
        }
        if SimInstant::now() - started > MIGRATION_BOUND {
            break;
        }
        migration_round(world).await;
        SimRuntime::sleep(Duration::from_secs(1)).await;
    }
    if !migrated(world) {
        world.checks.violation(
            Checker::Liveness,
            Involved::default(),
            format!("the migration did not finish within {MIGRATION_BOUND:?} after faults stopped"),
        );
    }
}

/// Simulated time within which every group that can must elect a leader and serve a write and a read.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// The key a liveness probe writes in `group`: of a user the published map routes to it, where the run
/// publishes maps (a group that owns ranges refuses every other user); else of a jurisdiction of its own.
fn probe_key(world: &World, index: usize, group: &GroupId) -> RecordKey {
    let owner_of = |jurisdiction: &str| {
        let map = world.route_map(jurisdiction)?;
        if !map.ranges().iter().any(|range| &range.group == group) {
            return None;
        }
        // Bounded: a group owning an eighth of the positions is hit by one user in eight, on average.
        (0..100_000u64)
            .map(|n| format!("liveness-{index}-{n}"))
            .find(|user| map.owner(wire::routing::range_position(user)) == group)
            .map(|user| RecordKey::new(jurisdiction, user, "probe"))
    };
    let jurisdiction = world.policies[group].jurisdiction.name().to_string();
    owner_of(&jurisdiction).unwrap_or_else(|| RecordKey::new("probe", format!("liveness-{index}"), "probe"))
}

async fn liveness(world: &World) {
    for (index, group) in world.policies.keys().enumerate() {
        let started = SimInstant::now();
        // A group can recover if a quorum of its voters (as its replicas last knew them) is not lost.
        // Replicas restarted a moment ago report nothing until their Raft core has loaded its state.
        let mut voters = latest_voters(world, group);
        for _ in 0..100 {
            if !voters.is_empty() {
                break;
            }
            SimRuntime::sleep(Duration::from_millis(20)).await;
            voters = latest_voters(world, group);
        }
        let healthy = voters.iter().filter(|&&node| world.is_up(node)).count();
        if voters.is_empty() || healthy < voters.len() / 2 + 1 {
            world.log(format!(
                "liveness: {group} can't recover ({healthy} of {} voters healthy)",
                voters.len()
            ));
            if !voters.is_empty() || world.holders(group).iter().all(|&node| !world.is_lost(node)) {
                world.checks.violation(
                    Checker::Liveness,
                    Involved::group(group).nodes(voters.iter().copied()),
                    format!("{group} has no quorum of healthy voters after faults stopped"),
                );
            }
            continue;
        }
        let key = probe_key(world, index, group);
        let mut served = false;
        for attempt in 0..300u64 {
            if SimInstant::now() - started > LIVENESS_BOUND {
                break;
            }
            if let Some((_, host)) = world.leader(group) {
                let write = Command::Put {
                    write: WriteId {
                        client_id: 900_000 + index as u64,
                        sequence: attempt + 1,
                    },
                    key: key.clone(),
                    value: b"alive".to_vec(),
                };
                let probe = async {
                    host.write(group, write).await.ok()?;
                    host.read(group, key.clone(), ReadConsistency::Linearizable)
                        .await
                        .ok()
                };
                if let Ok(Some(_)) = SimRuntime::timeout(Duration::from_secs(2), probe).await {
                    served = true;
                    break;
                }
            }
            SimRuntime::sleep(Duration::from_millis(100)).await;
        }
        let took = SimInstant::now() - started;
        world.log(format!(
            "liveness: {group} served={served} after {} ms",
            took.as_millis()
        ));
        if !served {
            world.checks.violation(
                Checker::Liveness,
                Involved::group(group).nodes(voters.iter().copied()),
                format!(
                    "{group} did not elect a leader and serve a write and a read within {LIVENESS_BOUND:?}"
                ),
            );
        }
    }
}

/// The voters of `group` as its most up-to-date running replica knows them.
fn latest_voters(world: &World, group: &GroupId) -> BTreeSet<NodeId> {
    world
        .holders(group)
        .into_iter()
        .filter_map(|node| world.status(node, group))
        .max_by_key(|status| (status.term, status.committed))
        .map(|status| status.membership.voters)
        .unwrap_or_default()
}

/// After the run: every acknowledged write is in the committed log where it was acknowledged, and
/// every replica's committed entries agree.
async fn final_checks(world: &World, workload: &Workload) {
    let acked = workload.history.lock().expect("history lock").acked.clone();
    for group in world.policies.keys() {
        // The committed log is read from a leader. A group may be between leaders at this instant (one
        // re-election after the liveness probe); it must have one again within the liveness bound.
        let mut current = world.leader(group);
        let started = SimInstant::now();
        while current.is_none() && SimInstant::now() - started < LIVENESS_BOUND {
            SimRuntime::sleep(Duration::from_millis(20)).await;
            current = world.leader(group);
        }
        let Some((leader, host)) = current else {
            for write in acked.iter().filter(|write| &write.group == group) {
                world.checks.violation(
                    Checker::LostAckedWrites,
                    Involved::group(group).keys([workload.key_name(write.key)]),
                    format!(
                        "{group} has no leader at the end; acknowledged {:?} can't be found",
                        write.write
                    ),
                );
            }
            continue;
        };
        let committed = host
            .status(group)
            .ok()
            .and_then(|status| status.committed)
            .unwrap_or(0);
        // A revision is the index of the entry that wrote it plus the group's revision offset, which copies
        // of a moved range raise past the revisions they bring (`storage::apply`): the entry is found by the
        // write id it carries, at an index no later than the revision. The only payloads that carry a write
        // id are commands that change state, each with its own.
        let Some(log) = world.entries(leader, group, 1, committed + 1).await else {
            // The leader's log can't be read now: its writes are not verifiable, its agreement still is.
            world.log(format!(
                "final checks: {group}'s log could not be read from {leader}"
            ));
            log_agreement(world, group, leader, committed).await;
            continue;
        };
        let first_held = log.first().map_or(committed + 1, |(index, ..)| *index);
        // The first entry carrying each write id: a client's retry of a write may be appended again, and
        // the state machine answers it with the first one's revision (deduplication).
        let mut carried: BTreeMap<storage::WriteId, u64> = BTreeMap::new();
        for (index, _, payload) in &log {
            if let openraft::EntryPayload::Normal(command) = payload
                && let Some(write) = command.write_id()
            {
                carried.entry(write).or_insert(*index);
            }
        }
        for write in acked.iter().filter(|write| &write.group == group) {
            let problem = match carried.get(&write.write) {
                Some(&index) if index <= write.revision => continue,
                Some(&index) => format!(
                    "{:?} acknowledged as revision {} of {group}, but written by its entry {index}",
                    write.write, write.revision
                ),
                // Purged by a snapshot: not verifiable from the log.
                None if first_held > 1 => continue,
                None => format!(
                    "{:?} acknowledged as revision {} of {group}, but no entry of its committed log (1..={committed}) \
                     carries it",
                    write.write, write.revision
                ),
            };
            world.checks.violation(
                Checker::LostAckedWrites,
                Involved::group(group)
                    .nodes([leader])
                    .keys([workload.key_name(write.key)]),
                problem,
            );
        }
        log_agreement(world, group, leader, committed).await;
    }
}

/// The last committed entries of every running replica match the leader's.
async fn log_agreement(world: &World, group: &GroupId, leader: NodeId, committed: u64) {
    let from = committed.saturating_sub(300).max(1);
    let Some(reference) = world.entries(leader, group, from, committed + 1).await else {
        return;
    };
    for node in world.holders(group) {
        if node == leader {
            continue;
        }
        let Some(status) = world.status(node, group) else {
            continue;
        };
        let theirs = status.committed.unwrap_or(0).min(committed);
        if theirs < from {
            continue;
        }
        let Some(entries) = world.entries(node, group, from, theirs + 1).await else {
            continue;
        };
        for (index, term, payload) in entries {
            let Some((_, leader_term, leader_payload)) = reference.iter().find(|(i, ..)| *i == index) else {
                continue;
            };
            if term != *leader_term || &payload != leader_payload {
                world.checks.violation(
                    Checker::RaftSafety,
                    Involved::group(group).nodes([node, leader]),
                    format!("{group} entry {index}: {node} committed term {term}, the leader {leader} has term {leader_term}"),
                );
            }
        }
    }
}
