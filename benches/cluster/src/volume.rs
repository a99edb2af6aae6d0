//! A legacy group migrated at volume, on real `domicile node` processes (issue #16 part 4).
//!
//! Five nodes on loopback: Dublin (n1), Hamar (n2), Frankfurt (n3) and two in Ashburn (n4, n5). The only
//! group, `users-legacy`, is fenced to the EEA but its current voters are n1, n4 and n5 (`[group.current]`):
//! a group whose voters were all outside could never elect a leader, the ingress fence refuses outside
//! candidates. The run:
//!
//! 1. bulk-loads `records` records of `value_bytes` bytes each (`user-I`, record `v`, a value derived from
//!    I) through the client library, `in_flight` puts at a time;
//! 2. reads every one back: each must equal what was written, and their checksum (an order-independent sum
//!    of a 64-bit FNV-1a hash of each key, value and revision: `at_volume.rs`) is the "before";
//! 3. readies the baseline: waits until no replica has a snapshot build running or due and, where one
//!    has less than half a snapshot interval to go, writes small `filler-N` records past every replica's
//!    next point and waits for those builds (a baseline holding three whole-keyspace scans measures
//!    them); then measures write latency for `baseline_s` seconds with `live_writers` closed-loop writers
//!    of new keys (`live-N`), no migration running;
//! 4. runs `domicile placement apply --yes -o json` while the same writers keep writing, sampling every
//!    node's `/proc/PID/status` (VmRSS, VmHWM) every 200 ms and the cluster's status (`domicile status -o
//!    json`) as often as it answers: the group's leader and members at every sample, and each new replica's
//!    applied index, for its catch-up time;
//! 5. reads every record back again (same values, same checksum), every acknowledged live write (same
//!    value), and checks the end state: voters n1-n3, led from inside, the apply's purge attestations for
//!    n4 and n5 and their data directories without the group.
//!
//! Everything it starts it stops by pid (also on an error or a panic); every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::Value;

pub const GROUP: &str = "users-legacy";
/// The client service and operator the run certifies (the topology grants the service the EEA).
#[path = "at_volume.rs"]
mod at_volume;
/// CPU time, load and (for `at_volume`'s latencies) quantiles, shared with the workload bench (whose
/// context-switch reader this one does not use).
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

use at_volume::{
    Guard, Keyspace, Latency, Live, Nodes, bulk_key, for_each, latency_of, live_at_rate, live_writers,
    memory_kib, put, read_keyspace, read_live, value_of,
};

const SERVICE: &str = "volume";
const INSIDE: [u64; 3] = [1, 2, 3];
const OUTSIDE: [u64; 2] = [4, 5];
const NODES: [(u64, &str); 5] = [
    (1, "dublin"),
    (2, "hamar"),
    (3, "frankfurt"),
    (4, "ashburn"),
    (5, "ashburn"),
];

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [2]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [3]

[[site]]
name = "ashburn"
country = "US"
nodes = [4, 5]

[[group]]
name = "users-legacy"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin"]

[group.current]
voters = [1, 4, 5]
leader = 1

[[grant]]
service = "volume"
jurisdiction = "EEA"
access = "read-write"
"#;

#[derive(Clone, Debug)]
pub struct Config {
    /// The `domicile` binary: the nodes, the certificates, `status` and `placement apply`.
    pub domicile: PathBuf,
    /// Where the cluster's files and data go (not tmpfs: fsync must cost what it costs).
    pub dir: PathBuf,
    pub records: u64,
    pub value_bytes: usize,
    /// Puts (and gets) in flight during the bulk load and the read-backs.
    pub in_flight: usize,
    /// Closed-loop writers of new keys before and during the migration...
    pub live_writers: usize,
    /// ... or, when given, writes of new keys at this many a second, on a fixed schedule (latency
    /// counted from when each was due).
    pub live_rate: Option<f64>,
    pub baseline_s: f64,
    /// The whole run, from the first node started; past it the run stops with an error.
    pub time_limit: Duration,
    /// Progress lines on stderr.
    pub verbose: bool,
    /// The nodes' snapshot policy, (every N applied entries, entries kept behind the last), instead of
    /// their defaults (`[raft] snapshot_every_entries`, `log_kept_behind_snapshot_entries`).
    pub snapshot_policy: Option<(u64, u64)>,
    /// The nodes' `[raft] snapshot_build_mb_per_s`, instead of their default.
    pub snapshot_build_mb_per_s: Option<u64>,
    /// `placement apply --copies`: `one-at-a-time` or `side-by-side` (its default unless given).
    pub copies: Option<String>,
}

impl Config {
    /// The live writes of a phase, as configured: closed-loop writers, or writes at a fixed rate.
    fn start_live(
        &self,
        clients: &[Arc<client::Client>],
        value_bytes: usize,
        next: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    ) -> (Arc<Live>, tokio::task::JoinSet<()>) {
        match self.live_rate {
            Some(per_s) => live_at_rate(clients, per_s, value_bytes, next, stop, deadline),
            None => live_writers(clients, self.live_writers, value_bytes, next, stop, deadline),
        }
    }

    fn keyspace(&self) -> Keyspace {
        Keyspace {
            records: self.records,
            value_bytes: self.value_bytes,
            in_flight: self.in_flight,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CopyRate {
    pub node: u64,
    /// From the `add_learner` step's start to the first status sample with the replica's applied index at
    /// or past the leader's committed index when it was added.
    pub catch_up_s: f64,
    /// The bulk keyspace's values (the least the new replica had to receive; keys and live writes aside).
    pub logical_bytes: u64,
    pub mb_per_s: f64,
    /// The group's directory on the new node just after it caught up (redb file, log, snapshot).
    pub on_disk_bytes: u64,
    /// CPU seconds (user + system) each process spent in the copy's window, by name (`n1`..`n5`, and
    /// `bench`: this program, the writers' client library included), from the samples nearest its ends.
    pub cpu_s: BTreeMap<String, f64>,
    /// All of `cpu_s` per gigabyte of `logical_bytes`: what the copy and whatever ran beside it cost.
    pub cpu_s_per_gb: f64,
    /// The new replica's part of `cpu_s` by thread name (`domicile-instal`: its install; `tokio-rt-worker`:
    /// its runtime, which receives; threads of one name summed). A thread that ended inside the window
    /// counts to its last sample, up to 200 ms short.
    pub learner_threads_cpu_s: BTreeMap<String, f64>,
    /// The group's leader when the copy began, and its part of `cpu_s` by thread name, likewise.
    pub leader: Option<u64>,
    pub leader_threads_cpu_s: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Snapshots {
    pub node: u64,
    pub installed: u64,
    pub sent: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    pub node: u64,
    /// The highest VmRSS sampled during the migration.
    pub peak_rss_during_mib: f64,
    /// VmHWM at the end of the migration: the peak over the process's life (bulk load included).
    pub hwm_mib: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub value_bytes: usize,
    pub in_flight: usize,
    /// The nodes' `[raft] snapshot_build_mb_per_s` when the run set it (their default otherwise).
    pub snapshot_build_mb_per_s: Option<u64>,
    pub live_writers: usize,
    /// Live writes a second on a fixed schedule, when they were paced so (`live_writers` unused).
    pub live_rate: Option<f64>,
    pub load_s: f64,
    pub load_mb_per_s: f64,
    pub read_back_s: f64,
    /// Small writes made after the read-back to carry every replica's log past its next snapshot
    /// point, and the seconds they and the builds they started took: the baseline then has at least
    /// half a snapshot interval of entries before the next build.
    pub filler_writes: u64,
    pub builds_waited_s: f64,
    /// Replicas whose snapshot moved during the baseline (a build held in it, on a fast machine).
    pub builds_in_baseline: Vec<u64>,
    pub checksum_before: String,
    pub checksum_after: String,
    pub checksum_equal: bool,
    pub records_wrong_after: u64,
    pub baseline: Latency,
    pub during: Latency,
    pub migration_s: f64,
    pub apply_exit_code: Option<i32>,
    pub steps_done: Vec<String>,
    pub copy: Vec<CopyRate>,
    pub memory: Vec<Memory>,
    pub live_acknowledged: usize,
    pub live_lost: usize,
    pub purges_attested: Vec<u64>,
    pub outside_dirs_left: Vec<u64>,
    pub status_samples: usize,
    /// Samples in which an outside node led the group, or an outside node other than n4 and n5 was a member.
    pub residency_violations: Vec<String>,
    pub final_voters: Vec<u64>,
    pub final_leader: Option<u64>,
    /// Per node: whole snapshots of the group its replica installed, and sent, since the node started
    /// (from the status at the end). A new replica brought up entry by entry installed none.
    pub snapshots: Vec<Snapshots>,
    pub load_average_start: f64,
    pub load_average_end: f64,
}

impl Report {
    /// What did not hold, one line each; empty: the migration kept everything.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.checksum_equal {
            failures.push(format!(
                "checksum before {} after {}",
                self.checksum_before, self.checksum_after
            ));
        }
        if self.records_wrong_after > 0 {
            failures.push(format!(
                "{} records read back different or missing",
                self.records_wrong_after
            ));
        }
        if self.live_lost > 0 {
            failures.push(format!(
                "{} of {} acknowledged writes lost",
                self.live_lost, self.live_acknowledged
            ));
        }
        if self.apply_exit_code != Some(0) {
            failures.push(format!("placement apply exited {:?}", self.apply_exit_code));
        }
        if self.purges_attested != OUTSIDE {
            failures.push(format!("purges attested for {:?}", self.purges_attested));
        }
        if !self.outside_dirs_left.is_empty() {
            failures.push(format!(
                "the group is still on the disk of {:?}",
                self.outside_dirs_left
            ));
        }
        if !self.residency_violations.is_empty() {
            failures.push(format!("residency: {:?}", self.residency_violations));
        }
        if self.final_voters != INSIDE || !self.final_leader.is_some_and(|leader| INSIDE.contains(&leader)) {
            failures.push(format!(
                "end state: voters {:?}, leader {:?}",
                self.final_voters, self.final_leader
            ));
        }
        // With no writers at all (`--live-writers 0`: what a copy does with the machine to itself), there
        // is nothing to acknowledge; with writers, none acknowledged is a failure.
        let writers = self.live_rate.is_some() || self.live_writers > 0;
        if writers && (self.baseline.writes == 0 || self.during.writes == 0) {
            failures.push("no live write was acknowledged before or during the migration".into());
        }
        failures
    }

    pub fn render(&self) -> String {
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let mut text = format!(
            "records {} x {} B ({:.0} MB of values), {} in flight, snapshot builds paced to {}\n\
             load: {:.1} s, {:.1} MB/s; read back: {:.1} s; {} filler writes and their builds: {:.1} s\n\
             builds in the baseline: {:?}\n\
             checksum before {} after {}: {}\n\
             write latency, {}: before p50 {} us p99 {} us ({} writes, {:.0}/s); \
             during p50 {} us p99 {} us ({} writes, {:.0}/s, {} failed); p99 ratio {:.2}\n\
             migration: {:.1} s, apply exit {:?}, steps {:?}\n",
            self.records,
            self.value_bytes,
            mb(self.records * self.value_bytes as u64),
            self.in_flight,
            match self.snapshot_build_mb_per_s {
                Some(0) => "no limit".to_string(),
                Some(mb_per_s) => format!("{mb_per_s} MB/s"),
                None => "the nodes' default".to_string(),
            },
            self.load_s,
            self.load_mb_per_s,
            self.read_back_s,
            self.filler_writes,
            self.builds_waited_s,
            self.builds_in_baseline,
            self.checksum_before,
            self.checksum_after,
            if self.checksum_equal { "equal" } else { "DIFFERENT" },
            match self.live_rate {
                Some(per_s) => format!("{per_s:.0} writes/s on a fixed schedule"),
                None => format!("{} closed-loop writers", self.live_writers),
            },
            self.baseline.p50_us,
            self.baseline.p99_us,
            self.baseline.writes,
            self.baseline.writes_per_s,
            self.during.p50_us,
            self.during.p99_us,
            self.during.writes,
            self.during.writes_per_s,
            self.during.failed,
            self.during.p99_us as f64 / self.baseline.p99_us.max(1) as f64,
            self.migration_s,
            self.apply_exit_code,
            self.steps_done,
        );
        let seconds: Vec<String> = (self.during.by_second.iter())
            .map(|second| format!("{}:{:.1}", second.second, second.p99_us as f64 / 1000.0))
            .collect();
        text.push_str(&format!(
            "write p99 (ms) by second of the migration: {}\n",
            seconds.join(" ")
        ));
        for copy in &self.copy {
            text.push_str(&format!(
                "copy to n{}: {:.1} MB in {:.1} s = {:.1} MB/s ({:.1} MB on its disk)\n",
                copy.node,
                mb(copy.logical_bytes),
                copy.catch_up_s,
                copy.mb_per_s,
                mb(copy.on_disk_bytes)
            ));
            let by_process: Vec<String> = (copy.cpu_s.iter())
                .map(|(process, seconds)| format!("{process} {seconds:.1}"))
                .collect();
            text.push_str(&format!(
                "  CPU-s in its window: {} = {:.1} CPU-s/GB\n",
                by_process.join(", "),
                copy.cpu_s_per_gb
            ));
            let by_thread = threads_text(&copy.learner_threads_cpu_s);
            text.push_str(&format!("  n{}'s threads: {}\n", copy.node, by_thread.join(", ")));
            if let Some(leader) = copy.leader {
                text.push_str(&format!(
                    "  leader n{leader}'s threads: {}\n",
                    threads_text(&copy.leader_threads_cpu_s).join(", ")
                ));
            }
        }
        for snapshots in &self.snapshots {
            text.push_str(&format!(
                "n{}: snapshots installed {}, sent {}\n",
                snapshots.node, snapshots.installed, snapshots.sent
            ));
        }
        for memory in &self.memory {
            text.push_str(&format!(
                "n{}: peak RSS during the migration {:.0} MiB, VmHWM {:.0} MiB\n",
                memory.node, memory.peak_rss_during_mib, memory.hwm_mib
            ));
        }
        text.push_str(&format!(
            "live writes acknowledged {}, lost {}; purges attested {:?}; outside dirs left {:?}; \
             {} status samples, residency violations {:?}; voters {:?} leader {:?}; load average {:.1} -> {:.1}\n",
            self.live_acknowledged,
            self.live_lost,
            self.purges_attested,
            self.outside_dirs_left,
            self.status_samples,
            self.residency_violations,
            self.final_voters,
            self.final_leader,
            self.load_average_start,
            self.load_average_end,
        ));
        text
    }
}

struct Cluster {
    config: Config,
    admin: BTreeMap<u64, String>,
    listen: BTreeMap<u64, String>,
    deadline: Instant,
}

impl Cluster {
    fn domicile(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(&self.config.domicile)
            .args(args)
            .current_dir(&self.config.dir)
            .output()
            .with_context(|| format!("running domicile {args:?}"))
    }

    fn check_time(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            Instant::now() < self.deadline,
            "the run's time limit ({:?}) passed while {what}",
            self.config.time_limit
        );
        Ok(())
    }

    /// `domicile status -o json` through n1's admin endpoint; `None` while it does not answer.
    fn status(&self) -> Option<Value> {
        let output = self
            .domicile(&["status", "--admin", &self.admin[&1], "-o", "json"])
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    async fn client(&self) -> anyhow::Result<client::Client> {
        let endpoints: Vec<String> = INSIDE
            .iter()
            .map(|id| format!("n{id}@{}", self.listen[id]))
            .collect();
        loop {
            let built = client::Client::builder()
                .endpoints(endpoints.clone())
                .tls(client::ClientTls::from_dir(
                    self.config.dir.join("certs"),
                    SERVICE,
                )?)
                .default_jurisdiction("EEA")
                .timeout(Duration::from_secs(30))
                .build()
                .await;
            match built {
                Ok(client) => return Ok(client),
                Err(error) if error.is_retryable() => {
                    self.check_time("building a client")?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => bail!("no client of the EEA: {error}"),
            }
        }
    }

    fn group_dir(&self, node: u64) -> PathBuf {
        let number = raft::routing::group_number(&placement::GroupId(GROUP.into()));
        self.config.dir.join(format!("data-{node}/store/groups/{number}"))
    }
}

/// Writes the topology, certificates and node configurations into `config.dir`, on free loopback ports.
fn write_files(config: &Config, deadline: Instant) -> anyhow::Result<Cluster> {
    std::fs::create_dir_all(&config.dir)?;
    std::fs::write(config.dir.join("topology.toml"), TOPOLOGY)?;
    let mut cluster = Cluster {
        config: config.clone(),
        admin: BTreeMap::new(),
        listen: BTreeMap::new(),
        deadline,
    };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new(&config.domicile)
            .args(args)
            .current_dir(&config.dir)
            .output()
            .with_context(|| format!("running domicile {args:?}"))?;
        ensure!(
            output.status.success(),
            "domicile {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    run(&["certs", "init", "--dir", "certs"])?;
    run(&["certs", "client", "--name", SERVICE, "--dir", "certs"])?;
    run(&["certs", "operator", "--name", SERVICE, "--dir", "certs"])?;
    // Every port held until all are found, so none repeats; UDP (QUIC) and TCP (admin) both free.
    let mut held = Vec::new();
    for (id, _) in NODES {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        cluster.listen.insert(id, udp.local_addr()?.to_string());
        cluster.admin.insert(id, tcp.local_addr()?.to_string());
        held.push((udp, tcp));
    }
    drop(held);
    for (id, site) in NODES {
        let id_text = id.to_string();
        run(&[
            "certs",
            "node",
            "--id",
            &id_text,
            "--site",
            site,
            "--topology",
            "topology.toml",
            "--dir",
            "certs",
        ])?;
        let peers: String = NODES
            .iter()
            .filter(|(peer, _)| *peer != id)
            .map(|(peer, _)| {
                format!(
                    "\n[[peer]]\nid = {peer}\naddr = \"{}\"\nadmin = \"{}\"\n",
                    cluster.listen[peer], cluster.admin[peer]
                )
            })
            .collect();
        let snapshot_policy = config
            .snapshot_policy
            .map(|(every, kept)| {
                format!("snapshot_every_entries = {every}\nlog_kept_behind_snapshot_entries = {kept}\n")
            })
            .unwrap_or_default();
        let build_pace = config
            .snapshot_build_mb_per_s
            .map(|mb_per_s| format!("snapshot_build_mb_per_s = {mb_per_s}\n"))
            .unwrap_or_default();
        std::fs::write(
            config.dir.join(format!("node-{id}.toml")),
            format!(
                "cluster = \"volume\"\nnode_id = {id}\nsite = \"{site}\"\ndata_dir = \"data-{id}\"\n\
                 listen = \"{}\"\nadmin = \"{}\"\ntopology = \"topology.toml\"\n\
                 [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n\
                 {peers}\n[raft]\npurge_check_ms = 1000\n{snapshot_policy}{build_pace}",
                cluster.listen[&id], cluster.admin[&id]
            ),
        )?;
    }
    Ok(cluster)
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => dir_bytes(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The leader's view of the group in a `domicile status -o json` answer.
fn group_view(status: &Value) -> &Value {
    &status["groups"][GROUP]
}

fn member_ids(members: &Value) -> Vec<u64> {
    members
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|member| member["node"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// What a status sample shows against residency: an outside leader, an outside member that was not one
/// before the migration (n4, n5), a node outside the jurisdiction whose own status reports the group led
/// from outside.
fn residency_problems(status: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let view = group_view(status);
    let members = view["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(view["learners"].as_array().into_iter().flatten());
    for member in members {
        let node = member["node"].as_u64().unwrap_or(0);
        let inside = member["inside"].as_bool().unwrap_or(false);
        if !inside && !OUTSIDE.contains(&node) {
            problems.push(format!("n{node} outside the EEA is a member: {view}"));
        }
        if inside != INSIDE.contains(&node) {
            problems.push(format!("n{node} is shown inside={inside}: {view}"));
        }
    }
    for node in status["nodes"].as_array().into_iter().flatten() {
        for group in node["groups"].as_array().into_iter().flatten() {
            if group["group"] == GROUP
                && let Some(leader) = group["leader"].as_u64()
                && !INSIDE.contains(&leader)
            {
                problems.push(format!(
                    "n{} saw the group led by n{leader}, outside the EEA",
                    node["node"]
                ));
            }
        }
    }
    problems
}

/// Readies the group for the baseline: no replica has a snapshot build running or due, and each has, if
/// two rounds can make it so, at least half a snapshot interval of entries before its next one. Where one
/// is nearer, small records (`filler-N`, outside the checked keyspace) carry every replica past its next
/// point, and the builds that starts are waited for. Returns how many were written.
async fn settle_snapshots(
    cluster: &Cluster,
    config: &Config,
    clients: &[Arc<client::Client>],
    deadline: Instant,
) -> anyhow::Result<u64> {
    let every = snapshot_every(config);
    let mut written = 0;
    // Filler is written twice at most: after a round of it every replica is just past the point it crossed.
    for round in 0..3 {
        let status = settled_status(cluster, every).await?;
        let remaining: Vec<u64> = snapshot_indexes(&status)
            .iter()
            .map(|(&node, &snapshot)| {
                (snapshot + every).saturating_sub(applied_on(&status, node).unwrap_or(0))
            })
            .collect();
        // After two rounds the baseline starts anyway, with no build running: replicas whose points
        // are spread over the interval (a small one, in tests) can't all be left half of it behind, and
        // the report says whose snapshot moved during the baseline.
        if round == 2 || remaining.iter().all(|&left| left >= every / 2) {
            return Ok(written);
        }
        let count = remaining.iter().copied().max().unwrap_or(0) + 1;
        for_each(
            clients,
            count,
            config.in_flight,
            deadline,
            |client, index| async move {
                put(
                    &client,
                    &format!("filler-{}", index % 1024),
                    index.to_le_bytes().to_vec(),
                )
                .await
            },
        )
        .await?;
        written += count;
    }
    unreachable!("the third look returns")
}

/// The cluster's status once every replica has applied what the leader had applied when it was first
/// read, and none has a snapshot build running or due (its applied index a snapshot interval or more
/// past its current snapshot's: openraft builds once it is that far).
async fn settled_status(cluster: &Cluster, every: u64) -> anyhow::Result<Value> {
    let mut target = None;
    loop {
        cluster.check_time("waiting for snapshot builds")?;
        if let Some(status) = cluster.status()
            && let Some(leader) = group_view(&status)["leader"].as_u64()
        {
            let target = *target.get_or_insert(applied_on(&status, leader).unwrap_or(0));
            let indexes = snapshot_indexes(&status);
            let applied = |node: u64| applied_on(&status, node).unwrap_or(0);
            let behind = |node: &u64| applied(*node) < target;
            let due = |(&node, &snapshot): (&u64, &u64)| applied(node).saturating_sub(snapshot) >= every;
            if !indexes.is_empty() && !indexes.keys().any(behind) && !indexes.iter().any(due) {
                return Ok(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each replica's current snapshot index (0: none yet).
fn snapshot_indexes(status: &Value) -> BTreeMap<u64, u64> {
    NODES
        .iter()
        .map(|(node, _)| *node)
        .filter(|&node| applied_on(status, node).is_some())
        .map(|node| (node, field_on(status, node, "snapshot_index").unwrap_or(0)))
        .collect()
}

/// The replicas' snapshot interval: the run's, or the nodes' default.
fn snapshot_every(config: &Config) -> u64 {
    config
        .snapshot_policy
        .map_or(raft::config::SNAPSHOT_EVERY_ENTRIES, |(every, _)| every)
}

/// The applied index of `node`'s replica of the group, from its own status.
fn applied_on(status: &Value, node: u64) -> Option<u64> {
    field_on(status, node, "last_applied")
}

/// A number from `node`'s own status of its replica of the group.
fn field_on(status: &Value, node: u64, field: &str) -> Option<u64> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|entry| entry["node"].as_u64() == Some(node))?["groups"]
        .as_array()?
        .iter()
        .find(|group| group["group"] == GROUP)?[field]
        .as_u64()
}

fn log(config: &Config, message: &str) {
    if config.verbose {
        eprintln!("[volume {}] {message}", time_of_day());
    }
}

fn time_of_day() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

pub async fn run(config: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + config.time_limit;
    let mut report = Report {
        records: config.records,
        value_bytes: config.value_bytes,
        in_flight: config.in_flight,
        snapshot_build_mb_per_s: config.snapshot_build_mb_per_s,
        live_writers: config.live_writers,
        live_rate: config.live_rate,
        load_average_start: stats::load_average(),
        ..Report::default()
    };
    let cluster = write_files(&config, deadline)?;
    let nodes = Nodes::start(
        &cluster.config.domicile,
        &cluster.config.dir,
        NODES.iter().map(|(id, _)| *id),
    )?;
    let pids = nodes.pids();

    // Every node answers and the group has a leader (a legacy group's first election takes seconds).
    loop {
        cluster.check_time("waiting for the cluster")?;
        if let Some(status) = cluster.status()
            && status["nodes"].as_array().map_or(0, Vec::len) == NODES.len()
            && group_view(&status)["leader"].as_u64().is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Arc::new(cluster.client().await?));
    }
    log(&config, "cluster up; bulk load");

    // 1. The bulk load.
    let load_started = Instant::now();
    let loaded = Arc::new(AtomicU64::new(0));
    let value_bytes = config.value_bytes;
    {
        let loaded_seen = loaded.clone();
        let records = config.records;
        let verbose = config.verbose;
        let progress = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let done = loaded_seen.load(Ordering::Relaxed);
                if verbose {
                    eprintln!("[volume {}] loaded {done} of {records}", time_of_day());
                }
                if done >= records {
                    return;
                }
            }
        });
        let loaded_in = loaded.clone();
        let result = for_each(
            &clients,
            config.records,
            config.in_flight,
            deadline,
            move |client, index| {
                let loaded = loaded_in.clone();
                async move {
                    put(&client, &bulk_key(index), value_of(0, index, value_bytes)).await?;
                    loaded.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            },
        )
        .await;
        progress.abort();
        result?;
    }
    report.load_s = load_started.elapsed().as_secs_f64();
    report.load_mb_per_s = (config.records * config.value_bytes as u64) as f64 / 1e6 / report.load_s;
    log(
        &config,
        &format!("loaded in {:.1} s; reading back", report.load_s),
    );

    // 2. The checksum before.
    let read_started = Instant::now();
    let (before, wrong_before) = read_keyspace(&clients, config.keyspace(), deadline).await?;
    report.read_back_s = read_started.elapsed().as_secs_f64();
    ensure!(
        wrong_before == 0,
        "{wrong_before} records read back different or missing before the migration"
    );
    report.checksum_before = format!("{before:016x}");

    // 3. Write latency without a migration, and without snapshot builds: a baseline that holds the three
    // replicas' whole-keyspace scans (at 1,000,000 records the load ends near a snapshot point) measures
    // them, not the steady writes a migration is compared against (while the membership changes, builds
    // are deferred: storage's `BUILD_DEFERRED_MAX`).
    let waited = Instant::now();
    report.filler_writes = settle_snapshots(&cluster, &config, &clients, deadline).await?;
    report.builds_waited_s = waited.elapsed().as_secs_f64();
    log(
        &config,
        &format!(
            "{} filler writes and the builds they started took {:.1} s; baseline writes",
            report.filler_writes, report.builds_waited_s
        ),
    );
    let snapshots_before = cluster.status().map(|status| snapshot_indexes(&status));
    let next_live = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (baseline, mut tasks) =
        config.start_live(&clients, value_bytes, next_live.clone(), stop.clone(), deadline);
    let baseline_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(config.baseline_s)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    report.baseline = latency_of(&baseline, baseline_started.elapsed().as_secs_f64());
    if let (Some(before), Some(after)) = (
        snapshots_before,
        cluster.status().map(|status| snapshot_indexes(&status)),
    ) {
        report.builds_in_baseline = after
            .iter()
            .filter(|(node, index)| before.get(node) != Some(index))
            .map(|(node, _)| *node)
            .collect();
    }

    // 4. The migration, with the writers writing, memory and status sampled.
    log(&config, "placement apply");
    let stop = Arc::new(AtomicBool::new(false));
    let (during, mut tasks) =
        config.start_live(&clients, value_bytes, next_live.clone(), stop.clone(), deadline);
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_rss: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let cpu_samples: Arc<Mutex<Vec<CpuSample>>> = Arc::default();
    let memory_sampler = {
        let (sampling, peak_rss, pids) = (sampling.clone(), peak_rss.clone(), pids.clone());
        let cpu_samples = cpu_samples.clone();
        std::thread::spawn(move || {
            // Every node thread seen so far, by node and thread id: its name and its last reading. An
            // ended thread keeps its last reading, so a name's sum never falls when one of its threads
            // ends (the install's thread ends as its copy does).
            let mut threads_seen: BTreeMap<(u64, u32), (String, f64)> = BTreeMap::new();
            while sampling.load(Ordering::Relaxed) {
                let mut processes = BTreeMap::new();
                for (id, pid) in &pids {
                    if let Some((rss, _)) = memory_kib(*pid) {
                        let mut peaks = peak_rss.lock().unwrap();
                        let peak = peaks.entry(*id).or_default();
                        *peak = (*peak).max(rss);
                    }
                    // 0 is a process gone: left out, so no window counts it.
                    let seconds = stats::process_cpu_seconds(*pid);
                    if seconds > 0.0 {
                        processes.insert(format!("n{id}"), seconds);
                    }
                    for (tid, name, seconds) in stats::thread_cpu_seconds(*pid) {
                        threads_seen.insert((*id, tid), (name, seconds));
                    }
                }
                processes.insert("bench".to_string(), stats::own_cpu_seconds());
                let mut threads = BTreeMap::new();
                for ((id, _), (name, seconds)) in &threads_seen {
                    *threads.entry(format!("n{id} {name}")).or_default() += seconds;
                }
                cpu_samples.lock().unwrap().push(CpuSample {
                    at: Instant::now(),
                    processes,
                    threads,
                });
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // Status samples: (when, answer), taken one after the other as fast as `domicile status` answers.
    let samples: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
    let status_sampler = {
        let (sampling, samples) = (sampling.clone(), samples.clone());
        let (domicile, dir, admin) = (
            config.domicile.clone(),
            config.dir.clone(),
            cluster.admin[&1].clone(),
        );
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let output = Command::new(&domicile)
                    .args(["status", "--admin", &admin, "-o", "json"])
                    .current_dir(&dir)
                    .output();
                if let Ok(output) = output
                    && let Ok(status) = serde_json::from_slice::<Value>(&output.stdout)
                {
                    samples.lock().unwrap().push((Instant::now(), status));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let migration_started = Instant::now();
    let certs = config.dir.join("certs");
    let apply = Command::new(&config.domicile)
        .args([
            "placement",
            "apply",
            "--admin",
            &cluster.admin[&1],
            "--yes",
            "-o",
            "json",
            "--purge-timeout-s",
            "120",
        ])
        .args(
            config
                .copies
                .iter()
                .flat_map(|copies| ["--copies", copies.as_str()]),
        )
        .current_dir(&config.dir)
        .env("DOMICILE_CERTS", &certs)
        .env("DOMICILE_OPERATOR", SERVICE)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(config.dir.join("apply.stderr"))?)
        .spawn()
        .context("starting placement apply")?;
    let mut apply = Guard(apply);
    let stdout = apply.0.stdout.take().expect("piped");
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (events_out, events_in) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
            if events_out.send((Instant::now(), event)).is_err() {
                break;
            }
        }
    });
    let mut events: Vec<(Instant, Value)> = Vec::new();
    let apply_deadline = Instant::now() + remaining;
    let exit = loop {
        while let Ok(event) = events_in.try_recv() {
            log(&config, &format!("apply: {}", event.1));
            events.push(event);
        }
        if let Some(status) = apply.0.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < apply_deadline,
            "the run's time limit passed during placement apply"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The rest of its output (the reader ends at end of file).
    while let Ok(event) = events_in.recv_timeout(Duration::from_secs(2)) {
        events.push(event);
    }
    report.migration_s = migration_started.elapsed().as_secs_f64();
    report.apply_exit_code = exit.code();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    report.during = latency_of(&during, report.migration_s);
    sampling.store(false, Ordering::Relaxed);
    let _ = memory_sampler.join();
    let _ = status_sampler.join();
    for (id, pid) in &pids {
        let (_, hwm) = memory_kib(*pid).unwrap_or((0, 0));
        report.memory.push(Memory {
            node: *id,
            peak_rss_during_mib: peak_rss.lock().unwrap().get(id).copied().unwrap_or(0) as f64 / 1024.0,
            hwm_mib: hwm as f64 / 1024.0,
        });
    }
    log(
        &config,
        &format!("apply exited {exit} after {:.1} s", report.migration_s),
    );

    // What the apply did and attested.
    for (_, event) in &events {
        if event["event"] == "step" && event["state"] == "done" {
            report.steps_done.push(event["step"].to_string());
        }
        if event["event"] == "purge"
            && event["state"] == "purged"
            && event["group"] == GROUP
            && let Some(node) = event["node"].as_u64()
            && !report.purges_attested.contains(&node)
        {
            report.purges_attested.push(node);
        }
    }
    report.purges_attested.sort_unstable();

    // Residency at every sample, and each new replica's catch-up.
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    report.status_samples = samples.len();
    for (_, status) in &samples {
        report.residency_violations.extend(residency_problems(status));
    }
    report.residency_violations.dedup();
    let logical_bytes = config.records * config.value_bytes as u64;
    for (added_at, event) in &events {
        let step = &event["step"];
        if !(event["event"] == "step" && event["state"] == "started" && step["step"] == "add_learner") {
            continue;
        }
        let Some(node) = step["node"].as_u64() else {
            continue;
        };
        // The leader's committed index in the first sample after the learner was added.
        let first = samples.iter().find(|(at, _)| at >= added_at);
        let Some(target) = first.and_then(|(_, status)| group_view(status)["committed"].as_u64()) else {
            continue;
        };
        let leader = first.and_then(|(_, status)| group_view(status)["leader"].as_u64());
        let caught_up = samples.iter().find(|(at, status)| {
            at >= added_at && applied_on(status, node).is_some_and(|applied| applied >= target)
        });
        if let Some((at, _)) = caught_up {
            let seconds = at.duration_since(*added_at).as_secs_f64();
            let cpu_samples = cpu_samples.lock().unwrap();
            let cpu_s = cpu_between(&cpu_samples, *added_at, *at, |sample| &sample.processes);
            let threads = cpu_between(&cpu_samples, *added_at, *at, |sample| &sample.threads);
            let threads_of = |node: u64| -> BTreeMap<String, f64> {
                let prefix = format!("n{node} ");
                (threads.iter())
                    .filter_map(|(thread, seconds)| {
                        Some((thread.strip_prefix(&prefix)?.to_string(), *seconds))
                    })
                    .collect()
            };
            let learner_threads_cpu_s = threads_of(node);
            let leader_threads_cpu_s = leader.map(threads_of).unwrap_or_default();
            report.copy.push(CopyRate {
                node,
                catch_up_s: seconds,
                logical_bytes,
                mb_per_s: logical_bytes as f64 / 1e6 / seconds.max(1e-9),
                on_disk_bytes: dir_bytes(&cluster.group_dir(node)),
                cpu_s_per_gb: cpu_s.values().sum::<f64>() / (logical_bytes as f64 / 1e9).max(1e-9),
                cpu_s,
                learner_threads_cpu_s,
                leader,
                leader_threads_cpu_s,
            });
        }
    }

    // 5. The end state, then every record and every acknowledged write.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = cluster.status() {
            report.residency_violations.extend(residency_problems(&status));
            let view = group_view(&status);
            let mut voters = member_ids(&view["voters"]);
            voters.sort_unstable();
            report.final_voters = voters;
            report.final_leader = view["leader"].as_u64();
            report.snapshots = INSIDE
                .iter()
                .map(|&node| Snapshots {
                    node,
                    installed: field_on(&status, node, "snapshots_installed").unwrap_or(0),
                    sent: field_on(&status, node, "snapshots_sent").unwrap_or(0),
                })
                .collect();
            if report.final_voters == INSIDE && member_ids(&view["learners"]).is_empty() {
                break;
            }
        }
        if Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.outside_dirs_left = OUTSIDE
        .into_iter()
        .filter(|node| cluster.group_dir(*node).exists())
        .collect();
    log(&config, "reading everything back");
    let (after, wrong_after) = read_keyspace(&clients, config.keyspace(), deadline).await?;
    report.checksum_after = format!("{after:016x}");
    report.checksum_equal = after == before;
    report.records_wrong_after = wrong_after;
    (report.live_acknowledged, report.live_lost) =
        read_live(&clients, &[&baseline, &during], config.keyspace(), deadline).await?;
    report.load_average_end = stats::load_average();
    drop(apply);
    drop(nodes);
    Ok(report)
}

/// `name seconds` of each thread that spent at least 0.05 s, the busiest first.
fn threads_text(threads: &BTreeMap<String, f64>) -> Vec<String> {
    let mut by_thread: Vec<(&String, &f64)> = threads.iter().collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(a.1));
    (by_thread.iter())
        .filter(|(_, seconds)| **seconds >= 0.05)
        .map(|(thread, seconds)| format!("{thread} {seconds:.1}"))
        .collect()
}

/// The CPU time at one memory sample: when; each process's seconds by name (`n1`.., `bench`); and each
/// node's threads' seconds by node and thread name (`n3 domicile-instal`, threads of one name summed).
struct CpuSample {
    at: Instant,
    processes: BTreeMap<String, f64>,
    threads: BTreeMap<String, f64>,
}

/// Seconds spent between the samples nearest `from` and `to` (the last at or before each, or the first
/// after it where none is before), for each name of the readings `pick` chooses. A name missing at the end
/// (a process gone) is left out; one missing at the start (a thread begun inside the window) counts from 0.
fn cpu_between(
    samples: &[CpuSample],
    from: Instant,
    to: Instant,
    pick: impl Fn(&CpuSample) -> &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let nearest = |when: Instant| {
        samples
            .iter()
            .rev()
            .find(|sample| sample.at <= when)
            .or_else(|| samples.first())
            .map(&pick)
    };
    let (Some(start), Some(end)) = (nearest(from), nearest(to)) else {
        return BTreeMap::new();
    };
    (end.iter())
        .map(|(name, &seconds)| (name.clone(), seconds - start.get(name).copied().unwrap_or(0.0)))
        .collect()
}
