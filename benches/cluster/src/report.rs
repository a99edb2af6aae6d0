//! The Markdown report: per step, each system's median over rounds, the Domicile/etcd ratio of every
//! round and its median, latencies, CPU; the goals of issue 7 checked; the fsync sanity ceiling.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Deserialize;

#[derive(Deserialize, Clone)]
struct StepResult {
    system: String,
    round: u32,
    groups: u32,
    op: String,
    clients: usize,
    connections: usize,
    operations: u64,
    errors: u64,
    ops_per_s: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    server_cpu_s: f64,
    client_cpu_s: f64,
    #[serde(default)]
    server_context_switches: u64,
    load_avg: f64,
}

#[derive(Deserialize)]
struct FsyncResult {
    batch: usize,
    entries_per_s: f64,
    sync_ms: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

/// Step key: (groups, op, clients), ordered puts first.
type Key = (u32, u8, usize);

fn key_of(step: &StepResult) -> Key {
    (step.groups, u8::from(step.op != "put"), step.clients)
}

struct Summary {
    rounds: Vec<StepResult>,
}

impl Summary {
    fn median(&self, field: impl Fn(&StepResult) -> f64) -> f64 {
        median(self.rounds.iter().map(field).collect())
    }
    fn latencies(&self) -> String {
        format!(
            "{} / {} / {}",
            ms(self.median(|s| f64::from(s.p50_us))),
            ms(self.median(|s| f64::from(s.p99_us))),
            ms(self.median(|s| f64::from(s.p999_us)))
        )
    }
    fn cpu(&self) -> String {
        let cpu = self.median(|s| s.server_cpu_s);
        let per_op = self.median(|s| s.server_cpu_s * 1e6 / s.operations as f64);
        let switches = self.median(|s| s.server_context_switches as f64 / s.operations as f64);
        format!("{cpu:.1} ({per_op:.0}; {switches:.1} cs/op)")
    }
}

pub fn render(input: &Path, title: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(input)?;
    let mut steps: BTreeMap<(String, Key), Summary> = BTreeMap::new();
    let mut fsync: BTreeMap<usize, FsyncResult> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)?;
        match value["kind"].as_str() {
            Some("step") => {
                let step: StepResult = serde_json::from_value(value)?;
                steps
                    .entry((step.system.clone(), key_of(&step)))
                    .or_insert_with(|| Summary { rounds: Vec::new() })
                    .rounds
                    .push(step);
            }
            Some("fsync") => {
                // The disk is shared and its sync time varies: the ceiling is the best measurement.
                let result: FsyncResult = serde_json::from_value(value)?;
                let best = fsync
                    .get(&result.batch)
                    .is_some_and(|b| b.entries_per_s >= result.entries_per_s);
                if !best {
                    fsync.insert(result.batch, result);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    if !title.is_empty() {
        writeln!(out, "{title}\n")?;
    }
    let has_etcd = steps.keys().any(|(system, _)| system == "etcd");
    if has_etcd {
        comparison(&mut out, &steps)?;
        goals(&mut out, &steps)?;
    } else {
        groups_table(&mut out, &steps)?;
    }
    sanity(&mut out, &steps, &fsync)?;
    let loads: Vec<f64> = steps
        .values()
        .flat_map(|s| s.rounds.iter().map(|r| r.load_avg))
        .collect();
    let errors: u64 = steps
        .values()
        .flat_map(|s| s.rounds.iter().map(|r| r.errors))
        .sum();
    let client_cpu: f64 = steps
        .values()
        .flat_map(|s| s.rounds.iter().map(|r| r.client_cpu_s))
        .sum();
    writeln!(
        out,
        "\nLoad average (1 min) at step starts: {:.1}–{:.1} on {} cores. Failed operations: {errors}. \
         Load generator CPU, all steps: {client_cpu:.0} s.",
        loads.iter().copied().fold(f64::INFINITY, f64::min),
        loads.iter().copied().fold(0.0, f64::max),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )?;
    Ok(out)
}

fn label(key: &Key, connections: usize) -> String {
    let op = if key.1 == 0 { "put" } else { "linearizable get" };
    format!("{op}, {} clients ({connections} conn.)", key.2)
}

fn comparison(out: &mut String, steps: &BTreeMap<(String, Key), Summary>) -> anyhow::Result<()> {
    writeln!(
        out,
        "| step | Domicile ops/s | etcd ops/s | Domicile/etcd per round | median ratio | Domicile p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | server CPU s (µs/op; context switches/op) Domicile | etcd |"
    )?;
    writeln!(out, "|---|---:|---:|---|---:|---|---|---:|---:|")?;
    for ((system, key), domicile) in steps.iter().filter(|((system, _), _)| system == "domicile") {
        let _ = system;
        let Some(etcd) = steps.get(&("etcd".to_string(), *key)) else {
            continue;
        };
        let ratios = round_ratios(domicile, etcd);
        writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | **{:.2}** | {} | {} | {} | {} |",
            label(key, domicile.rounds[0].connections),
            domicile.median(|s| s.ops_per_s),
            etcd.median(|s| s.ops_per_s),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(ratios.clone()),
            domicile.latencies(),
            etcd.latencies(),
            domicile.cpu(),
            etcd.cpu(),
        )?;
    }
    Ok(())
}

/// Domicile/etcd throughput ratio within each round both ran.
fn round_ratios(domicile: &Summary, etcd: &Summary) -> Vec<f64> {
    domicile
        .rounds
        .iter()
        .filter_map(|d| {
            etcd.rounds
                .iter()
                .find(|e| e.round == d.round)
                .map(|e| d.ops_per_s / e.ops_per_s)
        })
        .collect()
}

fn goals(out: &mut String, steps: &BTreeMap<(String, Key), Summary>) -> anyhow::Result<()> {
    let get = |system: &str, op: u8, clients: usize| steps.get(&(system.to_string(), (1, op, clients)));
    writeln!(out, "\nGoals (issue 7), on the medians above:\n")?;
    let verdict = |met: bool| if met { "met" } else { "**not met**" };
    if let (Some(d), Some(e)) = (get("domicile", 0, 256), get("etcd", 0, 256)) {
        let ratio = median(round_ratios(d, e));
        let (dp99, ep99) = (
            d.median(|s| f64::from(s.p99_us)),
            e.median(|s| f64::from(s.p99_us)),
        );
        writeln!(
            out,
            "- put, 256 clients: throughput ≥ 1.5× etcd — {:.2}×, {}; p99 no worse than etcd's — {} ms vs {} ms, {}",
            ratio,
            verdict(ratio >= 1.5),
            ms(dp99),
            ms(ep99),
            verdict(dp99 <= ep99)
        )?;
    }
    if let (Some(d), Some(e)) = (get("domicile", 0, 1), get("etcd", 0, 1)) {
        let ratios: Vec<f64> = d
            .rounds
            .iter()
            .filter_map(|dr| {
                e.rounds
                    .iter()
                    .find(|er| er.round == dr.round)
                    .map(|er| f64::from(dr.p50_us) / f64::from(er.p50_us))
            })
            .collect();
        let ratio = median(ratios);
        writeln!(
            out,
            "- put, 1 client: p50 ≤ 0.7× etcd's — {} ms vs {} ms, {:.2}× (median of per-round ratios), {}",
            ms(d.median(|s| f64::from(s.p50_us))),
            ms(e.median(|s| f64::from(s.p50_us))),
            ratio,
            verdict(ratio <= 0.7)
        )?;
    }
    if let (Some(d), Some(e)) = (get("domicile", 1, 256), get("etcd", 1, 256)) {
        let ratio = median(round_ratios(d, e));
        writeln!(
            out,
            "- linearizable get, 256 clients: throughput ≥ 2× etcd — {:.2}×, {}",
            ratio,
            verdict(ratio >= 2.0)
        )?;
    }
    Ok(())
}

fn groups_table(out: &mut String, steps: &BTreeMap<(String, Key), Summary>) -> anyhow::Result<()> {
    writeln!(
        out,
        "| groups | step | ops/s (median) | per round | vs 1 group | p50 / p99 / p99.9 ms | server CPU s (µs/op; context switches/op) |"
    )?;
    writeln!(out, "|---:|---|---:|---|---:|---|---:|")?;
    let mut base: BTreeMap<(u8, usize), f64> = BTreeMap::new();
    for ((_, key), summary) in steps {
        let throughput = summary.median(|s| s.ops_per_s);
        let base = *base.entry((key.1, key.2)).or_insert(throughput);
        writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.2}× | {} | {} |",
            key.0,
            label(key, summary.rounds[0].connections),
            throughput,
            summary
                .rounds
                .iter()
                .map(|r| format!("{:.0}", r.ops_per_s))
                .collect::<Vec<_>>()
                .join(", "),
            throughput / base,
            summary.latencies(),
            summary.cpu(),
        )?;
    }
    Ok(())
}

fn sanity(
    out: &mut String,
    steps: &BTreeMap<(String, Key), Summary>,
    fsync: &BTreeMap<usize, FsyncResult>,
) -> anyhow::Result<()> {
    if fsync.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nSanity ceiling — one thread, `write` of N entries + `fdatasync`, preallocated file, same disk, best of the run's measurements: {}.",
        fsync
            .values()
            .map(|f| format!(
                "N={}: {:.0} entries/s ({:.3} ms/sync)",
                f.batch, f.entries_per_s, f.sync_ms
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    let mut flagged = false;
    for ((system, key), summary) in steps.iter().filter(|(key, _)| key.1.1 == 0) {
        let Some(ceiling) = fsync.get(&key.2) else {
            continue;
        };
        for round in &summary.rounds {
            if round.ops_per_s > ceiling.entries_per_s {
                flagged = true;
                writeln!(
                    out,
                    "**WARNING: {system} did {:.0} durable puts/s with {} clients (round {}), more than a single fsync loop with the same batching ({:.0}/s): something skipped a sync.**",
                    round.ops_per_s, key.2, round.round, ceiling.entries_per_s
                )?;
            }
        }
    }
    if !flagged {
        writeln!(out, "No put step of either system exceeded it.")?;
    }
    Ok(())
}
