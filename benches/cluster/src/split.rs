//! A shard split at volume, on real `domicile node` processes (issue 19): `domicile shard split` run as a
//! process while clients write, its range copied, fenced, verified, published and purged.
//!
//! Three nodes on loopback: Dublin (n1, IE), Frankfurt (n2, DE), Paris (n3, FR). Two groups fenced to
//! the EU, three voters each: `users-eu-1`, which owns the whole map at epoch 1, and `users-eu-2`,
//! declared `shard = "reserve"` (created, owning no range). The run:
//!
//! 1. bulk-loads `records` records of `value_bytes` bytes (`user-I`, record `v`) through the client
//!    library, `in_flight` puts at a time, and reads every one back: the "before" checksum is an
//!    order-independent sum of FNV-1a over each key, value and revision (a copied record keeps its
//!    revision, so the sum must be equal after the move);
//! 2. checks bad input: an unknown jurisdiction, an unknown group, a position outside the group's ranges,
//!    an admin endpoint that does not answer — each exit 2 with nothing changed (a dry run afterwards
//!    still plans from epoch 1, prepare first);
//! 3. measures write latency for `baseline_s` with `live_writers` closed-loop writers of new keys;
//! 4. runs `domicile shard split --jurisdiction EU --group users-eu-1 --yes -o json` while the writers
//!    write, sampling each node's VmRSS every 200 ms. With `interrupt`, the CLI is SIGKILLed (by pid)
//!    once the gainer holds some of the range's records (mid-copy), the change is aborted (`shard
//!    abort`: the gainer's copy dropped), run again and SIGKILLed as the tail phase begins (after the
//!    fence), each time checked to stand where it was left, then run again to the end;
//! 5. reads every record back (same checksum), every acknowledged live write (same value), and checks on
//!    the groups' leaders (the admin digest) that the moved range is gone from `users-eu-1` and that the
//!    two groups together hold every record; the groups' voters are unchanged and inside the EU, and no
//!    node counted a residency incident.
//!
//! The moving range's unavailability is measured from the CLI's `fence` phase event to its `purge` phase
//! event (which follows the publication) in the run that did both. Everything it starts it stops by pid.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};

#[path = "at_volume.rs"]
mod at_volume;
/// Quantiles for `at_volume`'s latencies, shared with the workload bench (whose CPU and load readers this
/// one does not use).
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

use at_volume::{
    Guard, Keyspace, Latency, Nodes, bulk_key, for_each, latency_of, live_writers, memory_kib, put,
    read_keyspace, read_live, value_of,
};

const SERVICE: &str = "split";
pub const LOSER: &str = "users-eu-1";
pub const GAINER: &str = "users-eu-2";
const NODES: [(u64, &str); 3] = [(1, "dublin"), (2, "frankfurt"), (3, "paris")];

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin"
country = "IE"
nodes = [1]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [2]

[[site]]
name = "paris"
country = "FR"
nodes = [3]

[[group]]
name = "users-eu-1"
jurisdiction = "EU"
voters = 3

[[group]]
name = "users-eu-2"
jurisdiction = "EU"
voters = 3
shard = "reserve"

[[grant]]
service = "split"
jurisdiction = "EU"
access = "read-write"
"#;

#[derive(Clone, Debug)]
pub struct Config {
    /// The `domicile` binary: the nodes, the certificates and `shard split`.
    pub domicile: PathBuf,
    /// Where the cluster's files and data go (not tmpfs).
    pub dir: PathBuf,
    pub records: u64,
    pub value_bytes: usize,
    pub in_flight: usize,
    pub live_writers: usize,
    pub baseline_s: f64,
    /// Kill the CLI mid-copy and after the fence, and run it again each time.
    pub interrupt: bool,
    /// After the checks, move the range back with `domicile shard move`, run it again (a change
    /// published already: exit 0, nothing to do) and check the keyspace once more.
    pub move_back: bool,
    pub time_limit: Duration,
    pub verbose: bool,
}

impl Config {
    fn keyspace(&self) -> Keyspace {
        Keyspace {
            records: self.records,
            value_bytes: self.value_bytes,
            in_flight: self.in_flight,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub value_bytes: usize,
    pub load_s: f64,
    pub checksum_before: String,
    pub checksum_after: String,
    pub records_wrong_after: u64,
    /// Exit codes of the bad-input runs, in order: unknown jurisdiction, unknown group, a position
    /// outside the group's ranges, an admin endpoint that does not answer.
    pub bad_input_exit_codes: Vec<Option<i32>>,
    /// After the bad input, a dry run still plans from epoch 1 with `prepare` next.
    pub unchanged_after_bad_input: bool,
    /// Exit code of each run of the CLI (killed runs: `None`).
    pub split_exit_codes: Vec<Option<i32>>,
    /// Records the gainer held of the range when the CLI was killed mid-copy, and the range's records.
    pub killed_mid_copy_at: Option<(u64, u64)>,
    /// With `interrupt`: `shard abort` after the mid-copy kill, and what the gainer held of the range then.
    pub abort_exit_code: Option<i32>,
    pub gainer_held_after_abort: Option<u64>,
    /// `shard abort` once the loser is fenced (refused: exit 1).
    pub abort_after_fence_exit_code: Option<i32>,
    /// The phase `shard split --dry-run` reported after each kill (and after the abort).
    pub phases_after_kills: Vec<String>,
    pub split_s: f64,
    /// The copy phase of the last run that copied: records, value bytes, seconds.
    pub copy_records: u64,
    pub copy_bytes: u64,
    pub copy_s: f64,
    pub copy_mb_per_s: f64,
    /// From the fence to the publication (the purge phase's start), in the run that did both.
    pub unavailable_s: Option<f64>,
    pub baseline: Latency,
    pub during: Latency,
    pub peak_rss_mib: BTreeMap<u64, f64>,
    pub live_acknowledged: usize,
    pub live_lost: usize,
    /// The records the loser still holds of the moved range (its leader's digest).
    pub loser_left_in_moved_range: u64,
    /// Records held by the loser in its ranges and by the gainer in its ranges, after.
    pub loser_records: u64,
    pub gainer_records: u64,
    /// Every group's voters before and after, and residency incidents counted by any node.
    pub voters_before: BTreeMap<String, Vec<u64>>,
    pub voters_after: BTreeMap<String, Vec<u64>>,
    pub members_outside: Vec<String>,
    pub residency_incidents: u64,
    pub published_epoch_after: u64,
    /// With `move_back`: the exit codes of `shard move` and of its second run, the checksum after, and
    /// what the gainer still holds of the range it gave back.
    pub move_back_exit_codes: Vec<Option<i32>>,
    pub checksum_after_move_back: Option<String>,
    pub gainer_left_after_move_back: Option<u64>,
    pub published_epoch_after_move_back: Option<u64>,
}

impl Report {
    pub fn render(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// What is wrong with the run's outcome, in words; empty when every check holds.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(what.to_string());
            }
        };
        check(self.checksum_before == self.checksum_after, "checksum differs");
        check(self.records_wrong_after == 0, "records wrong after the split");
        check(
            self.bad_input_exit_codes.iter().all(|code| *code == Some(2)),
            "a bad input did not exit 2",
        );
        check(self.unchanged_after_bad_input, "bad input changed something");
        check(
            self.split_exit_codes.last() == Some(&Some(0)),
            "the last split did not exit 0",
        );
        check(self.live_lost == 0, "acknowledged writes lost");
        check(
            self.loser_left_in_moved_range == 0,
            "the moved range is still at the loser",
        );
        check(self.gainer_records > 0, "the gainer holds nothing");
        check(self.voters_before == self.voters_after, "voters changed");
        check(self.members_outside.is_empty(), "a member outside the EU");
        check(self.residency_incidents == 0, "residency incidents counted");
        check(self.published_epoch_after == 2, "epoch 2 not published");
        if !self.move_back_exit_codes.is_empty() {
            check(
                self.move_back_exit_codes == [Some(0), Some(0)],
                "shard move did not exit 0 twice",
            );
            check(
                self.checksum_after_move_back.as_ref() == Some(&self.checksum_before),
                "checksum differs after the move back",
            );
            check(
                self.gainer_left_after_move_back == Some(0),
                "the range is still at the gainer",
            );
            check(
                self.published_epoch_after_move_back == Some(3),
                "epoch 3 not published",
            );
        }
        failures
    }
}

struct Cluster {
    config: Config,
    admin: BTreeMap<u64, String>,
    listen: BTreeMap<u64, String>,
    deadline: Instant,
    https: reqwest::Client,
}

impl Cluster {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.config.domicile);
        command
            .args(args)
            .current_dir(&self.config.dir)
            .env("DOMICILE_CERTS", self.config.dir.join("certs"))
            .env("DOMICILE_OPERATOR", SERVICE);
        command
    }

    fn domicile(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running domicile {args:?}"))
    }

    fn check_time(&self, what: &str) -> anyhow::Result<()> {
        ensure!(
            Instant::now() < self.deadline,
            "the run's time limit passed while {what}"
        );
        Ok(())
    }

    fn status(&self) -> Option<Value> {
        let output = self
            .domicile(&["status", "--admin", &self.admin[&1], "-o", "json"])
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    async fn client(&self) -> anyhow::Result<client::Client> {
        let endpoints: Vec<String> = NODES
            .iter()
            .map(|(id, _)| format!("n{id}@{}", self.listen[id]))
            .collect();
        loop {
            let built = client::Client::builder()
                .endpoints(endpoints.clone())
                .tls(client::ClientTls::from_dir(
                    self.config.dir.join("certs"),
                    SERVICE,
                )?)
                .default_jurisdiction("EU")
                .timeout(Duration::from_secs(30))
                .build()
                .await;
            match built {
                Ok(client) => return Ok(client),
                Err(error) if error.is_retryable() => {
                    self.check_time("building a client")?;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => bail!("no client of the EU: {error}"),
            }
        }
    }

    /// An admin request on the leader of `group`, following 409s (the operator's certificate).
    async fn on_leader(&self, group: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let give_up = Instant::now() + Duration::from_secs(60);
        let mut node = 1;
        loop {
            let url = format!(
                "https://node-{node}.domicile.internal:{}{path}",
                port(&self.admin[&node])
            );
            let request = match body {
                Some(body) => self.https.post(&url).json(body),
                None => self.https.get(&url),
            };
            let answer = request.send().await;
            if let Ok(answer) = answer {
                let status = answer.status();
                let value: Value = answer.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    return Ok(value);
                }
                if let Some(leader) = value["leader"].as_u64() {
                    node = leader;
                } else if status != reqwest::StatusCode::CONFLICT
                    && status != reqwest::StatusCode::SERVICE_UNAVAILABLE
                {
                    bail!("{path} on {group}'s leader: {status} {value}");
                } else {
                    node = node % 3 + 1;
                }
            } else {
                node = node % 3 + 1;
            }
            ensure!(Instant::now() < give_up, "no leader of {group} answered {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The records `group` holds of `ranges`, by its leader's digest.
    async fn held(&self, group: &str, ranges: &[(u64, u64)]) -> anyhow::Result<u64> {
        let body = json!({"jurisdiction": "EU", "ranges": ranges});
        let digest = self
            .on_leader(group, &format!("/range-copy/{group}/digest"), Some(&body))
            .await?;
        digest["records"].as_u64().context("a digest without records")
    }

    async fn range_state(&self, group: &str) -> anyhow::Result<Value> {
        self.on_leader(group, &format!("/range-copy/{group}/state"), None)
            .await
    }
}

fn port(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or(0)
}

fn https(config: &Config, admin: &BTreeMap<u64, String>) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = config.dir.join("certs");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(certs.join("ca.pem"))?)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(
                certs.join(format!("operator-{SERVICE}.pem")),
            )?],
            PrivateKeyDer::from_pem_file(certs.join(format!("operator-{SERVICE}.key")))?,
        )?;
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .tls_backend_preconfigured(tls);
    for (id, address) in admin {
        builder = builder.resolve(&format!("node-{id}.domicile.internal"), address.parse()?);
    }
    Ok(builder.build()?)
}

fn write_files(config: &Config, deadline: Instant) -> anyhow::Result<Cluster> {
    std::fs::create_dir_all(&config.dir)?;
    std::fs::write(config.dir.join("topology.toml"), TOPOLOGY)?;
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
    let (mut admin, mut listen) = (BTreeMap::new(), BTreeMap::new());
    let mut held = Vec::new();
    for (id, _) in NODES {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        listen.insert(id, udp.local_addr()?.to_string());
        admin.insert(id, tcp.local_addr()?.to_string());
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
                    listen[peer], admin[peer]
                )
            })
            .collect();
        std::fs::write(
            config.dir.join(format!("node-{id}.toml")),
            format!(
                "cluster = \"split\"\nnode_id = {id}\nsite = \"{site}\"\ndata_dir = \"data-{id}\"\n\
                 listen = \"{}\"\nadmin = \"{}\"\ntopology = \"topology.toml\"\n\
                 [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n\
                 {peers}",
                listen[&id], admin[&id]
            ),
        )?;
    }
    let https = https(config, &admin)?;
    Ok(Cluster {
        config: config.clone(),
        admin,
        listen,
        deadline,
        https,
    })
}

fn log(config: &Config, message: &str) {
    if config.verbose {
        eprintln!("[split] {message}");
    }
}

/// Every group's voters (node ids) and members outside the EU, from `domicile status -o json`.
fn voters(status: &Value) -> (BTreeMap<String, Vec<u64>>, Vec<String>) {
    let mut voters = BTreeMap::new();
    let mut outside = Vec::new();
    for (name, view) in status["groups"].as_object().into_iter().flatten() {
        let mut ids: Vec<u64> = view["voters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|member| member["node"].as_u64())
            .collect();
        ids.sort_unstable();
        voters.insert(name.clone(), ids);
        for member in view["voters"].as_array().into_iter().flatten() {
            if member["inside"] != Value::Bool(true) {
                outside.push(format!("{name}: {member}"));
            }
        }
    }
    (voters, outside)
}

fn incidents(status: &Value) -> u64 {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|node| {
            ["membership_refused", "egress_blocked", "ingress_refused"]
                .iter()
                .filter_map(|field| node["incidents"][field].as_u64())
                .sum::<u64>()
        })
        .sum()
}

/// One run of `shard split`: its events as they come, with when each came.
struct SplitRun {
    child: Guard,
    events: std::sync::mpsc::Receiver<(Instant, Value)>,
}

impl SplitRun {
    fn start(cluster: &Cluster, index: usize) -> anyhow::Result<SplitRun> {
        let mut child = cluster
            .command(&[
                "shard",
                "split",
                "--jurisdiction",
                "EU",
                "--group",
                LOSER,
                "--admin",
                &cluster.admin[&1],
                "--yes",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                cluster.config.dir.join(format!("split-{index}.stderr")),
            )?)
            .spawn()
            .context("starting shard split")?;
        let stdout = child.stdout.take().expect("piped");
        let (events_out, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                if events_out.send((Instant::now(), event)).is_err() {
                    break;
                }
            }
        });
        Ok(SplitRun {
            child: Guard(child),
            events,
        })
    }

    /// SIGKILL, by pid.
    fn kill(mut self) {
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        unsafe { libc::kill(self.child.0.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.0.wait();
    }
}

/// The phase `shard split --dry-run` says comes next, and the epoch it plans from.
fn dry_run(cluster: &Cluster) -> anyhow::Result<(String, u64)> {
    let output = cluster.domicile(&[
        "shard",
        "split",
        "--jurisdiction",
        "EU",
        "--group",
        LOSER,
        "--admin",
        &cluster.admin[&1],
        "--dry-run",
        "-o",
        "json",
    ])?;
    let text = String::from_utf8_lossy(&output.stdout);
    let plan = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["event"] == "plan")
        .with_context(|| {
            format!(
                "no plan in the dry run: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    Ok((
        plan["phase"].as_str().unwrap_or_default().to_string(),
        plan["from_epoch"].as_u64().unwrap_or(0),
    ))
}

pub async fn run(config: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = started + config.time_limit;
    let mut report = Report {
        records: config.records,
        value_bytes: config.value_bytes,
        ..Report::default()
    };
    let cluster = write_files(&config, deadline)?;
    let nodes = Nodes::start(
        &cluster.config.domicile,
        &cluster.config.dir,
        NODES.iter().map(|(id, _)| *id),
    )?;
    let pids = nodes.pids();
    loop {
        cluster.check_time("waiting for the cluster")?;
        if let Some(status) = cluster.status()
            && status["nodes"].as_array().map_or(0, Vec::len) == NODES.len()
            && [LOSER, GAINER]
                .iter()
                .all(|group| status["groups"][group]["leader"].as_u64().is_some())
        {
            (report.voters_before, _) = voters(&status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Arc::new(cluster.client().await?));
    }
    log(&config, "cluster up; bulk load");

    // 1. The bulk load and the checksum before.
    let load_started = Instant::now();
    let value_bytes = config.value_bytes;
    for_each(&clients, config.records, config.in_flight, deadline, move |client, index| async move {
        put(&client, &bulk_key(index), value_of(0, index, value_bytes)).await
    })
    .await?;
    report.load_s = load_started.elapsed().as_secs_f64();
    let (before, wrong_before) = read_keyspace(&clients, config.keyspace(), deadline).await?;
    ensure!(
        wrong_before == 0,
        "{wrong_before} records read back wrong before the split"
    );
    report.checksum_before = format!("{before:016x}");
    log(&config, &format!("loaded in {:.1} s", report.load_s));

    // 2. Bad input: exit 2, nothing changed.
    let admin = cluster.admin[&1].clone();
    for args in [
        vec!["--jurisdiction", "XX", "--group", LOSER],
        vec!["--jurisdiction", "EU", "--group", "users-eu-9"],
        vec!["--jurisdiction", "EU", "--group", LOSER, "--at", "0"],
    ] {
        let mut full = vec!["shard", "split"];
        full.extend(args);
        full.extend(["--admin", &admin, "--yes"]);
        report
            .bad_input_exit_codes
            .push(cluster.domicile(&full)?.status.code());
    }
    let silent = cluster.domicile(&[
        "shard",
        "split",
        "--jurisdiction",
        "EU",
        "--group",
        LOSER,
        "--admin",
        "127.0.0.1:1",
        "--yes",
    ])?;
    report.bad_input_exit_codes.push(silent.status.code());
    report.unchanged_after_bad_input = dry_run(&cluster)? == ("prepare".to_string(), 1);

    // 3. Write latency without a split.
    let next_live = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (baseline, mut tasks) = live_writers(
        &clients,
        config.live_writers,
        value_bytes,
        next_live.clone(),
        stop.clone(),
        deadline,
    );
    let baseline_started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(config.baseline_s)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    report.baseline = latency_of(&baseline, baseline_started.elapsed().as_secs_f64());

    // 4. The split, with the writers writing and memory sampled.
    log(&config, "shard split");
    let stop = Arc::new(AtomicBool::new(false));
    let (during, mut tasks) = live_writers(
        &clients,
        config.live_writers,
        value_bytes,
        next_live.clone(),
        stop.clone(),
        deadline,
    );
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_rss: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let sampler = {
        let (sampling, peak_rss, pids) = (sampling.clone(), peak_rss.clone(), pids.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                for (id, pid) in &pids {
                    if let Some((rss, _)) = memory_kib(*pid) {
                        let mut peaks = peak_rss.lock().unwrap();
                        let peak = peaks.entry(*id).or_default();
                        *peak = (*peak).max(rss);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let split_started = Instant::now();
    let moving = [(1u64 << 63, u64::MAX)];
    let outcome = split(&cluster, &config, &mut report, &moving).await;
    report.split_s = split_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    report.during = latency_of(&during, report.split_s);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    report.peak_rss_mib = peak_rss
        .lock()
        .unwrap()
        .iter()
        .map(|(id, kib)| (*id, *kib as f64 / 1024.0))
        .collect();
    outcome?;

    // 5. Every record, every acknowledged write, and where the records are.
    log(&config, "reading everything back");
    let (after, wrong_after) = read_keyspace(&clients, config.keyspace(), deadline).await?;
    report.checksum_after = format!("{after:016x}");
    report.records_wrong_after = wrong_after;
    (report.live_acknowledged, report.live_lost) =
        read_live(&clients, &[&baseline, &during], config.keyspace(), deadline).await?;
    report.loser_left_in_moved_range = cluster.held(LOSER, &moving).await?;
    report.loser_records = cluster.held(LOSER, &[(0, (1 << 63) - 1)]).await?;
    report.gainer_records = cluster.held(GAINER, &moving).await?;
    let published = cluster.on_leader(LOSER, "/shard-map/EU/published", None).await?;
    report.published_epoch_after = published["epoch"].as_u64().unwrap_or(0);
    if let Some(status) = cluster.status() {
        (report.voters_after, report.members_outside) = voters(&status);
        report.residency_incidents = incidents(&status);
    }
    if config.move_back {
        log(&config, "shard move, back");
        let start = format!("{:#x}", moving[0].0);
        for _ in 0..2 {
            let output = cluster.domicile(&[
                "shard",
                "move",
                "--jurisdiction",
                "EU",
                "--start",
                &start,
                "--to",
                LOSER,
                "--admin",
                &admin,
                "--yes",
            ])?;
            log(&config, &String::from_utf8_lossy(&output.stdout));
            report.move_back_exit_codes.push(output.status.code());
        }
        let (after, _) = read_keyspace(&clients, config.keyspace(), deadline).await?;
        report.checksum_after_move_back = Some(format!("{after:016x}"));
        report.gainer_left_after_move_back = Some(cluster.held(GAINER, &moving).await?);
        let published = cluster.on_leader(LOSER, "/shard-map/EU/published", None).await?;
        report.published_epoch_after_move_back = published["epoch"].as_u64();
    }
    drop(nodes);
    Ok(report)
}

/// Runs the split to the end; with `interrupt`, kills it mid-copy and after the fence first.
async fn split(
    cluster: &Cluster,
    config: &Config,
    report: &mut Report,
    moving: &[(u64, u64)],
) -> anyhow::Result<()> {
    let mut index = 0;
    if config.interrupt {
        // Mid-copy: once the gainer holds some of the range's records.
        let run = SplitRun::start(cluster, index)?;
        index += 1;
        let give_up = Instant::now() + Duration::from_secs(120);
        let held = loop {
            let copied = cluster.held(GAINER, moving).await.unwrap_or(0);
            if copied > 0 {
                break copied;
            }
            ensure!(Instant::now() < give_up, "the gainer received nothing in 120 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        run.kill();
        report.split_exit_codes.push(None);
        let total = cluster.held(LOSER, moving).await?;
        report.killed_mid_copy_at = Some((held, total));
        report.phases_after_kills.push(dry_run(cluster)?.0);
        // Before the fence the change may be undone: the gainer's copy is dropped, and the next run
        // starts over from `prepare`.
        let aborted = cluster.domicile(&[
            "shard",
            "abort",
            "--jurisdiction",
            "EU",
            "--group",
            LOSER,
            "--to",
            GAINER,
            "--admin",
            &cluster.admin[&1],
            "--yes",
        ])?;
        log(config, &String::from_utf8_lossy(&aborted.stdout));
        report.abort_exit_code = aborted.status.code();
        report.gainer_held_after_abort = Some(cluster.held(GAINER, moving).await?);
        report.phases_after_kills.push(dry_run(cluster)?.0);
        // After the fence: as the tail phase begins.
        let run = SplitRun::start(cluster, index)?;
        index += 1;
        loop {
            let (_, event) = run
                .events
                .recv_timeout(Duration::from_secs(300))
                .context("no tail phase from the second run")?;
            log(config, &format!("split: {event}"));
            if event["event"] == "phase" && event["phase"] == "tail" {
                break;
            }
            ensure!(
                event["event"] != "end",
                "the second run ended before its tail: {event}"
            );
        }
        run.kill();
        report.split_exit_codes.push(None);
        report.phases_after_kills.push(dry_run(cluster)?.0);
        let state = cluster.range_state(LOSER).await?;
        ensure!(
            state["owned"]["epoch"] == 2,
            "the loser is not fenced after the kill: {state}"
        );
        // After the fence the change only rolls forward: `abort` refuses (exit 1).
        let refused = cluster.domicile(&[
            "shard",
            "abort",
            "--jurisdiction",
            "EU",
            "--group",
            LOSER,
            "--to",
            GAINER,
            "--admin",
            &cluster.admin[&1],
            "--yes",
        ])?;
        report.abort_after_fence_exit_code = refused.status.code();
    }
    let mut run = SplitRun::start(cluster, index)?;
    let mut events = Vec::new();
    let exit = loop {
        while let Ok(event) = run.events.try_recv() {
            log(config, &format!("split: {}", event.1));
            events.push(event);
        }
        if let Some(status) = run.child.0.try_wait()? {
            break status;
        }
        cluster.check_time("the split ran")?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while let Ok(event) = run.events.recv_timeout(Duration::from_secs(2)) {
        events.push(event);
    }
    report.split_exit_codes.push(exit.code());
    let at = |phase: &str| {
        events
            .iter()
            .find(|(_, event)| event["event"] == "phase" && event["phase"] == phase)
            .map(|(at, _)| *at)
    };
    if let (Some(fence), Some(purge)) = (at("fence"), at("purge")) {
        report.unavailable_s = Some(purge.duration_since(fence).as_secs_f64());
    }
    if let Some((_, copy)) = events
        .iter()
        .find(|(_, event)| event["event"] == "phase-end" && event["phase"] == "copy")
    {
        report.copy_records = copy["records"].as_u64().unwrap_or(0);
        report.copy_bytes = copy["bytes"].as_u64().unwrap_or(0);
        report.copy_s = copy["seconds"].as_f64().unwrap_or(0.0);
        report.copy_mb_per_s = report.copy_bytes as f64 / 1e6 / report.copy_s.max(1e-9);
    }
    ensure!(exit.success(), "shard split exited {exit}: {:?}", events.last());
    Ok(())
}
