//! `domicile shard auto-split`: the automatic split trigger (issue 19), off unless an operator runs it.
//!
//! Each round reads every node's status twice, `--window-s` apart, and takes from each group's leader
//! its record count (the store's own count) and how many entries it applied in between (its write
//! load, per minute). `placement::split_trigger` picks the group most over `--max-records` or
//! `--max-writes-per-minute` and where to cut it; the split then runs exactly as `domicile shard split`
//! runs it (the same checks, the same `range_copy`, the same progress and resumption), one at a time.
//! A group over a threshold with no spare group to split into is reported, never split elsewhere: spare
//! groups are declared in the topology (`shard = "reserve"`) so the planner, not the trigger, places
//! their replicas inside the jurisdiction.
//!
//! It runs as a controller beside the cluster (a sidecar, a CronJob with `--once`), not inside the
//! nodes: a split is driven through the admin endpoints with an operator's certificate and is in every
//! node's audit trail under that operator, like any other change an operator makes.
//!
//! Exit codes with `--once`: 0 nothing over, or the split done; 1 a group over with no spare group or
//! no range to cut, or a split stopped (run again to finish it); 2 bad input. Without `--once` it runs
//! `--rounds` rounds (default: until stopped), `--interval-s` apart, and a round that fails is reported
//! and tried again at the next.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use placement::GroupId;
use placement::split_trigger::{self, GroupLoad, Over, SplitThresholds, Trigger};
use raft::map_change::MapChange;

use crate::admin_api::NodeStatus;
use crate::cluster_view::Cluster;
use crate::shard_cli::{Context, ShardArgs, execute};

#[derive(Args, Clone, Debug)]
pub struct AutoSplitArgs {
    #[arg(long)]
    pub jurisdiction: String,
    /// Split a group holding more records than this.
    #[arg(long)]
    pub max_records: Option<u64>,
    /// Split a group whose leader applies more entries a minute than this.
    #[arg(long)]
    pub max_writes_per_minute: Option<u64>,
    /// Seconds between the two status readings a round's write load is measured over.
    #[arg(long, default_value_t = 10)]
    pub window_s: u64,
    /// One round, then exit with its outcome.
    #[arg(long)]
    pub once: bool,
    /// Rounds to run without `--once` (default: until stopped).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 60)]
    pub interval_s: u64,
    #[command(flatten)]
    pub run: ShardArgs,
}

/// Each group's leader's figures from one reading: (records, applied index).
fn leader_figures(nodes: &[NodeStatus], jurisdiction: &str) -> Vec<(GroupId, Option<u64>, u64)> {
    let mut figures = Vec::new();
    for node in nodes {
        for view in &node.groups {
            if view.jurisdiction == jurisdiction && view.leader == Some(node.node) {
                figures.push((
                    GroupId(view.group.clone()),
                    view.records,
                    view.last_applied.unwrap_or(0),
                ));
            }
        }
    }
    figures.sort();
    figures
}

/// The loads of the jurisdiction's groups, measured over `window`.
async fn measure(admin: &str, jurisdiction: &str, window: Duration) -> anyhow::Result<Vec<GroupLoad>> {
    let first = leader_figures(&Cluster::read(admin).await?.nodes, jurisdiction);
    tokio::time::sleep(window).await;
    let second = leader_figures(&Cluster::read(admin).await?.nodes, jurisdiction);
    let minutes = window.as_secs_f64().max(1.0) / 60.0;
    Ok(second
        .into_iter()
        .map(|(group, records, applied)| {
            // Applied entries in the window, as the same leader counts them (none if leadership moved
            // or the first reading missed the group: the next round measures again).
            let before = first
                .iter()
                .find(|(earlier, _, _)| *earlier == group)
                .map_or(applied, |(_, _, applied)| *applied);
            let writes = applied.saturating_sub(before);
            GroupLoad {
                group,
                records: records.unwrap_or(0),
                writes_per_minute: (writes as f64 / minutes).round() as u64,
            }
        })
        .collect())
}

fn describe(over: &Over) -> String {
    match over {
        Over::Records { records, max } => format!("{records} records, over {max}"),
        Over::Writes { per_minute, max } => format!("{per_minute} writes a minute, over {max}"),
    }
}

/// One round: measure, decide, split if told to. Answers the round's exit code.
async fn round(args: &AutoSplitArgs, thresholds: &SplitThresholds) -> anyhow::Result<ExitCode> {
    let context = Context::read(&args.run).await?;
    let groups = context.groups_of(&args.jurisdiction)?.to_vec();
    let loads = measure(
        &args.run.admin,
        &args.jurisdiction,
        Duration::from_secs(args.window_s),
    )
    .await?;
    for load in &loads {
        context.report.note(&format!(
            "{}: {} records, {} writes a minute",
            load.group, load.records, load.writes_per_minute
        ));
    }
    let current = context.published(&args.jurisdiction).await?;
    let map = current.ranged()?;
    match split_trigger::next_split(&map, &groups, &loads, thresholds) {
        Trigger::Quiet => Ok(context
            .report
            .end(0, "no group is over a threshold: nothing to split")),
        Trigger::NoSpare { group, over } => Ok(context.report.end(
            1,
            &format!(
                "`{group}` is over ({}) but `{}` has no spare group to split it into: declare one with \
                 `shard = \"reserve\"` in the topology",
                describe(&over),
                args.jurisdiction
            ),
        )),
        Trigger::Unsplittable { group, over } => Ok(context.report.end(
            1,
            &format!(
                "`{group}` is over ({}) but owns no range of two positions or more",
                describe(&over)
            ),
        )),
        Trigger::Split { group, at, to, over } => {
            context.report.note(&format!(
                "splitting `{group}` ({}) at {at:#x} into `{to}`",
                describe(&over)
            ));
            let change = MapChange::Split { at, to };
            execute(&context, &args.run, &args.jurisdiction, &current, &change).await
        }
    }
}

pub async fn run(args: AutoSplitArgs) -> anyhow::Result<ExitCode> {
    let thresholds = SplitThresholds {
        max_records: args.max_records,
        max_writes_per_minute: args.max_writes_per_minute,
    };
    if thresholds == SplitThresholds::default() {
        bail!("no threshold: give --max-records, --max-writes-per-minute or both");
    }
    // Bad input is found once, before any round: an unknown jurisdiction, an admin endpoint that does not
    // answer.
    Context::read(&args.run).await?.groups_of(&args.jurisdiction)?;
    if args.once {
        return round(&args, &thresholds).await;
    }
    let mut done = 0;
    loop {
        if let Err(error) = round(&args, &thresholds).await {
            eprintln!("auto-split round failed: {error:#}; trying again next round");
        }
        done += 1;
        if args.rounds.is_some_and(|rounds| done >= rounds) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(args.interval_s)).await;
    }
}
