//! What the benchmarks at volume (`volume.rs`: a migration; `split.rs`: a shard split) share: the node
//! processes they run, the bulk keyspace they load and check, and the closed-loop writers beside it.
//!
//! The keyspace is `records` records `user-I`, record `v`, whose values are derived from I
//! ([`value_of`]); its checksum is an order-independent sum of a 64-bit FNV-1a hash of each key, value
//! and revision (a moved or copied record keeps its revision, so the sum must be equal after the move).
//! Both benchmarks include this file as a module of their own (`#[path]`), as the tests that run them at
//! a small size include theirs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

// The includer's `stats.rs` (both benchmarks and their tests include it beside this file).
use super::stats::quantile;

/// The record every bulk and live key is written under.
pub const RECORD: &str = "v";

/// Write latency over a phase of a run.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub writes: usize,
    pub failed: usize,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub writes_per_s: f64,
    /// Each whole second of the phase (by when the write began): its writes and their p99, so that a
    /// phase's p99 can be laid beside what happened when (a migration's steps, a build).
    pub by_second: Vec<SecondOfWrites>,
}

/// The writes that began in one second of a phase.
#[derive(Debug, Default, Serialize)]
pub struct SecondOfWrites {
    pub second: u32,
    pub writes: usize,
    pub p99_us: u32,
}

/// The node processes, stopped by pid when dropped (SIGTERM, then SIGKILL after 5 s).
pub struct Nodes {
    pub children: Vec<(u64, Child)>,
}

impl Nodes {
    /// Starts `domicile node --config node-ID.toml` in `dir` for each of `ids`, each logging to
    /// `dir/node-ID.log`.
    pub fn start(domicile: &Path, dir: &Path, ids: impl IntoIterator<Item = u64>) -> anyhow::Result<Nodes> {
        let mut nodes = Nodes { children: Vec::new() };
        for id in ids {
            let log = std::fs::File::create(dir.join(format!("node-{id}.log")))?;
            let child = Command::new(domicile)
                .args(["node", "--config", &format!("node-{id}.toml")])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting a node")?;
            nodes.children.push((id, child));
        }
        Ok(nodes)
    }

    /// Each node's id and pid.
    pub fn pids(&self) -> Vec<(u64, u32)> {
        self.children
            .iter()
            .map(|(id, child)| (*id, child.id()))
            .collect()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child killed by pid when dropped (the CLI a run drives, if the run fails while it runs).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of bulk record `index` (`generation` 0) or live write `index` (1): splitmix64 bytes.
pub fn value_of(generation: u64, index: u64, bytes: usize) -> Vec<u8> {
    let mut state = index
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(generation.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut value = Vec::with_capacity(bytes + 8);
    while value.len() < bytes {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    value.truncate(bytes);
    value
}

/// 64-bit FNV-1a over a key, its value and its revision (a zero byte after the key).
fn record_hash(key: &str, value: &[u8], revision: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key
        .bytes()
        .chain([0])
        .chain(value.iter().copied())
        .chain(revision.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub fn bulk_key(index: u64) -> String {
    format!("user-{index}")
}

pub fn live_key(index: u64) -> String {
    format!("live-{index}")
}

/// Runs `op` on indexes 0..count, `in_flight` at a time, over `clients`; the first error stops the run.
pub async fn for_each<F, Fut>(
    clients: &[Arc<client::Client>],
    count: u64,
    in_flight: usize,
    deadline: Instant,
    op: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<client::Client>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..in_flight.max(1) {
        let client = clients[worker % clients.len()].clone();
        let (next, op) = (next.clone(), op.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok(());
                }
                ensure!(
                    Instant::now() < deadline,
                    "the run's time limit passed at {index} of {count}"
                );
                op(client.clone(), index).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// A put, retried while the error is retryable (at most 20 times).
pub async fn put(client: &client::Client, key: &str, value: Vec<u8>) -> anyhow::Result<()> {
    for attempt in 0.. {
        match client.put(key, RECORD, value.clone()).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_retryable() && attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => bail!("put {key}: {error}"),
        }
    }
    unreachable!()
}

/// A read of `key`'s record: its value and revision, retried while the error is retryable (at most 20
/// times).
pub async fn get(client: &client::Client, key: &str) -> anyhow::Result<Option<(Vec<u8>, u64)>> {
    for attempt in 0.. {
        match client.get(key, RECORD).await {
            Ok(record) => return Ok(record.map(|record| (record.value, record.revision))),
            Err(error) if error.is_retryable() && attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => bail!("get {key}: {error}"),
        }
    }
    unreachable!()
}

/// The bulk keyspace a run loads: how many records, their values' size, and how many requests it keeps
/// in flight reading or writing them.
#[derive(Clone, Copy, Debug)]
pub struct Keyspace {
    pub records: u64,
    pub value_bytes: usize,
    pub in_flight: usize,
}

/// Reads every bulk record, `in_flight` at a time: (the keyspace's checksum, records missing or not as
/// written).
pub async fn read_keyspace(
    clients: &[Arc<client::Client>],
    keyspace: Keyspace,
    deadline: Instant,
) -> anyhow::Result<(u64, u64)> {
    let Keyspace {
        records,
        value_bytes,
        in_flight,
    } = keyspace;
    let sum = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let (sum_in, wrong_in) = (sum.clone(), wrong.clone());
    for_each(clients, records, in_flight, deadline, move |client, index| {
        let (sum, wrong) = (sum_in.clone(), wrong_in.clone());
        async move {
            let key = bulk_key(index);
            match get(&client, &key).await? {
                Some((value, revision)) => {
                    sum.fetch_add(record_hash(&key, &value, revision), Ordering::Relaxed);
                    if value != value_of(0, index, value_bytes) {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
    })
    .await?;
    Ok((sum.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed)))
}

/// What writers of `live-N` keys saw: each acknowledged write's second of the phase (when it began)
/// and latency (µs), and the acknowledged indexes; a failed write (not acknowledged) is counted, not
/// retried.
#[derive(Default)]
pub struct Live {
    pub latencies: Mutex<Vec<(u32, u32)>>,
    pub acknowledged: Mutex<Vec<u64>>,
    pub failed: AtomicU64,
}

/// Reads back every live write the writers of `phases` saw acknowledged, `keyspace.in_flight` at a time:
/// (how many were acknowledged, how many of them read back missing or different).
pub async fn read_live(
    clients: &[Arc<client::Client>],
    phases: &[&Live],
    keyspace: Keyspace,
    deadline: Instant,
) -> anyhow::Result<(usize, usize)> {
    let acknowledged: Vec<u64> = phases
        .iter()
        .flat_map(|live| live.acknowledged.lock().unwrap().clone())
        .collect();
    let count = acknowledged.len();
    let lost = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(acknowledged);
    let lost_in = lost.clone();
    let value_bytes = keyspace.value_bytes;
    for_each(
        clients,
        count as u64,
        keyspace.in_flight,
        deadline,
        move |client, at| {
            let (lost, acknowledged) = (lost_in.clone(), acknowledged.clone());
            async move {
                let index = acknowledged[at as usize];
                let read = get(&client, &live_key(index)).await?;
                if read.map(|(value, _)| value) != Some(value_of(1, index, value_bytes)) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        },
    )
    .await?;
    Ok((count, lost.load(Ordering::Relaxed) as usize))
}

/// Starts `writers` closed-loop writers of new `live-N` keys (N from `next`) until `stop` or `deadline`.
pub fn live_writers(
    clients: &[Arc<client::Client>],
    writers: usize,
    value_bytes: usize,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> (Arc<Live>, tokio::task::JoinSet<()>) {
    let live = Arc::new(Live::default());
    let phase_began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let client = clients[writer % clients.len()].clone();
        let (live, next, stop) = (live.clone(), next.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let written = client
                    .put(&live_key(index), RECORD, value_of(1, index, value_bytes))
                    .await;
                live.record(index, phase_began, started, written.is_ok());
            }
        });
    }
    (live, tasks)
}

/// Writes outstanding at most, at a fixed rate: a cluster that stops answering holds this many, and
/// the schedule waits (each write's latency still counts from when it was due).
// Only `volume.rs` paces its writes at a fixed rate; `split.rs` includes this file too.
#[allow(dead_code)]
const AT_RATE_OUTSTANDING_MAX: usize = 4096;

/// Starts writes of new `live-N` keys at `per_s` a second, on a fixed schedule whatever the cluster
/// answers (an open loop, as a service's users write), until `stop` or `deadline`. Each write's latency
/// is counted from when it was due, not from when it left: a stall delays the writes behind it, and
/// that wait is theirs too (closed-loop writers would not send them, and their p99 would not show it).
#[allow(dead_code)]
pub fn live_at_rate(
    clients: &[Arc<client::Client>],
    per_s: f64,
    value_bytes: usize,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> (Arc<Live>, tokio::task::JoinSet<()>) {
    assert!(per_s > 0.0, "a rate of writes must be positive");
    let live = Arc::new(Live::default());
    let phase_began = Instant::now();
    let clients = clients.to_vec();
    let mut tasks = tokio::task::JoinSet::new();
    let scheduled = live.clone();
    tasks.spawn(async move {
        let outstanding = Arc::new(tokio::sync::Semaphore::new(AT_RATE_OUTSTANDING_MAX));
        let mut writes = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        loop {
            let due = phase_began + Duration::from_secs_f64(sent as f64 / per_s);
            if stop.load(Ordering::Relaxed) || due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let Ok(permit) = outstanding.clone().acquire_owned().await else {
                break;
            };
            let index = next.fetch_add(1, Ordering::Relaxed);
            let client = clients[sent as usize % clients.len()].clone();
            let live = scheduled.clone();
            writes.spawn(async move {
                let written = client
                    .put(&live_key(index), RECORD, value_of(1, index, value_bytes))
                    .await;
                live.record(index, phase_began, due, written.is_ok());
                drop(permit);
            });
            sent += 1;
            while writes.try_join_next().is_some() {}
        }
        while writes.join_next().await.is_some() {}
    });
    (live, tasks)
}

impl Live {
    /// One write's outcome: `index` began (or was due) at `started`.
    fn record(&self, index: u64, phase_began: Instant, started: Instant, acknowledged: bool) {
        if !acknowledged {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let second = started.saturating_duration_since(phase_began).as_secs() as u32;
        self.latencies.lock().unwrap().push((second, micros));
        self.acknowledged.lock().unwrap().push(index);
    }
}

/// The writers' latency over a phase `seconds` long.
pub fn latency_of(live: &Live, seconds: f64) -> Latency {
    let samples = live.latencies.lock().unwrap().clone();
    let mut seconds_of: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for &(second, micros) in &samples {
        seconds_of.entry(second).or_default().push(micros);
    }
    let by_second = seconds_of
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_unstable();
            SecondOfWrites {
                second,
                writes: latencies.len(),
                p99_us: quantile(&latencies, 0.99),
            }
        })
        .collect();
    let mut latencies: Vec<u32> = samples.iter().map(|&(_, micros)| micros).collect();
    latencies.sort_unstable();
    Latency {
        writes: latencies.len(),
        failed: live.failed.load(Ordering::Relaxed) as usize,
        p50_us: quantile(&latencies, 0.5),
        p99_us: quantile(&latencies, 0.99),
        max_us: latencies.last().copied().unwrap_or(0),
        writes_per_s: latencies.len() as f64 / seconds.max(1e-9),
        by_second,
    }
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
