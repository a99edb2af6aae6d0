//! `domicile shard split|move|abort`: a range of a jurisdiction's shard map moved to another group while
//! it serves, its records copied by `raft::range_copy` through the admin endpoints
//! ([`crate::shard_leaders::AdminLeaders`]).
//!
//! A run reads the cluster and the topology the nodes run with, checks its input against them (before
//! anything changes), reads the published map linearizably, plans the change with `range_copy::plan`,
//! finds where it stands from what the groups hold (`range_copy::observe`) and runs it to the end,
//! reporting each phase and the copy's progress. It keeps no state of its own: a run interrupted anywhere
//! is finished by running the same command again. A change found published already has only its purge
//! left, which the run finishes. `split` without `--at` cuts the group's largest range in half; when
//! the group still holds records it departed in a published change (a run stopped during its purge),
//! the run finishes that purge and stops instead of splitting again.
//!
//! Exit codes: 0 done (or a dry run); 1 refused or infeasible (a digest mismatch, a refusal by a group,
//! no group to split into, a change fenced already that `abort` can't undo, the cluster not answering
//! mid-change: run again to finish); 2 bad input, nothing changed (an unknown jurisdiction or group, a
//! position outside the group's ranges, an admin endpoint that does not answer).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use placement::{GroupId, TopologyFile};
use raft::directory::ShardMap;
use raft::map_change::MapChange;
use raft::range_copy::{self, Leaders, Phase, Progress, RangeChange, RangeCopyError};
use serde_json::json;

use crate::cluster_view::{Cluster, fetch_topology};
use crate::operator_cli::Output;
use crate::shard_leaders::AdminLeaders;

#[derive(Subcommand)]
pub enum ShardCommand {
    /// Cut a group's range at a position and give the upper part, with its records, to another group.
    Split {
        #[arg(long)]
        jurisdiction: String,
        /// The group whose range is split.
        #[arg(long)]
        group: String,
        /// The routing position to cut at (decimal or 0x hex); default: the middle of the group's
        /// largest range.
        #[arg(long, value_parser = parse_position)]
        at: Option<u64>,
        /// The group gaining the upper part; default: a group of the jurisdiction that owns no range.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        run: ShardArgs,
    },
    /// Give a whole range (the one starting at `--start`), with its records, to another group.
    Move {
        #[arg(long)]
        jurisdiction: String,
        #[arg(long, value_parser = parse_position)]
        start: u64,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        run: ShardArgs,
    },
    /// Split the group most over a size or load threshold into a spare group, as `split` does; off
    /// unless run (a controller beside the cluster).
    AutoSplit(crate::shard_auto::AutoSplitArgs),
    /// Undo a split or move that has not fenced its losing group: the gainer's copy is dropped.
    Abort {
        #[arg(long)]
        jurisdiction: String,
        /// The group whose range was being split or moved.
        #[arg(long)]
        group: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        run: ShardArgs,
    },
}

#[derive(Args, Clone, Debug)]
pub struct ShardArgs {
    /// Any node's admin endpoint; the others are found through its peers'.
    #[arg(long, default_value = "127.0.0.1:7200")]
    pub admin: String,
    /// Print the change and where it stands, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run without asking.
    #[arg(long)]
    pub yes: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

fn parse_position(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|error| {
        format!("`{text}` is not a routing position (0..=2^64-1, decimal or 0x hex): {error}")
    })
}

pub fn run_blocking(command: ShardCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(command))
}

/// What the cluster is, as a run needs it: the topology's groups of each jurisdiction, and a
/// [`AdminLeaders`] over its admin endpoints.
pub(crate) struct Context {
    file: TopologyFile,
    /// Each jurisdiction's groups, in name order (the first is its directory group).
    groups: BTreeMap<String, Vec<GroupId>>,
    leaders: AdminLeaders,
    pub(crate) report: Report,
}

impl Context {
    pub(crate) async fn read(args: &ShardArgs) -> anyhow::Result<Context> {
        let cluster = Cluster::read(&args.admin).await?;
        let text = fetch_topology(&args.admin).await?;
        let file = TopologyFile::parse(&text).map_err(|error| {
            anyhow!(
                "the topology the node at {} runs with does not parse: {error}",
                args.admin
            )
        })?;
        let router = raft::routing::Router::new(file.policies.values())?;
        let groups: BTreeMap<String, Vec<GroupId>> = router
            .shards()
            .map(|(jurisdiction, groups)| (jurisdiction.clone(), groups.clone()))
            .collect();
        let directories = groups
            .iter()
            .filter_map(|(jurisdiction, groups)| Some((jurisdiction.clone(), groups.first()?.clone())))
            .collect();
        let leaders = AdminLeaders::new(&cluster, directories);
        Ok(Context {
            file,
            groups,
            leaders,
            report: Report::new(args.output),
        })
    }

    pub(crate) fn groups_of(&self, jurisdiction: &str) -> anyhow::Result<&[GroupId]> {
        self.groups.get(jurisdiction).map(Vec::as_slice).ok_or_else(|| {
            anyhow!(
                "no group is fenced to jurisdiction `{jurisdiction}` in the topology (its jurisdictions: {})",
                self.groups.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn group_of(&self, jurisdiction: &str, name: &str) -> anyhow::Result<GroupId> {
        let group = GroupId(name.to_string());
        if self.groups_of(jurisdiction)?.contains(&group) {
            return Ok(group);
        }
        match self.file.policies.get(&group) {
            Some(policy) => bail!(
                "group `{name}` is fenced to `{}`, not to `{jurisdiction}`",
                policy.jurisdiction.name()
            ),
            None => bail!("no group `{name}` in the topology"),
        }
    }

    /// The published map, read on the directory group's leader: a cluster that does not answer is
    /// bad input here, before anything changed.
    pub(crate) async fn published(&self, jurisdiction: &str) -> anyhow::Result<ShardMap> {
        self.leaders
            .published(jurisdiction)
            .await
            .map_err(|error| anyhow!("can't read the published map of `{jurisdiction}`: {error}"))
    }
}

pub async fn run(command: ShardCommand) -> anyhow::Result<ExitCode> {
    match command {
        ShardCommand::Split {
            jurisdiction,
            group,
            at,
            to,
            run,
        } => {
            let context = Context::read(&run).await?;
            let group = context.group_of(&jurisdiction, &group)?;
            let to = to.map(|to| context.group_of(&jurisdiction, &to)).transpose()?;
            let current = context.published(&jurisdiction).await?;
            let ranged = current.ranged()?;
            let ranges: Vec<_> = ranged
                .ranges()
                .into_iter()
                .filter(|range| range.group == group)
                .collect();
            if let Some(at) = at {
                let published_already = to.as_ref().is_some_and(|to| {
                    ranged
                        .ranges()
                        .iter()
                        .any(|range| range.start == at && range.group == *to)
                });
                if !published_already && !ranges.iter().any(|range| range.start < at && at <= range.end) {
                    bail!(
                        "position {at:#x} is not inside a range of `{group}` (past its start): its ranges at \
                         epoch {} are {}",
                        current.epoch(),
                        describe_ranges(&ranges)
                    );
                }
            } else {
                if ranges.is_empty() {
                    bail!(
                        "group `{group}` owns no range of `{jurisdiction}` at epoch {}: nothing to split",
                        current.epoch()
                    );
                }
                // A split without `--at` is "half of what the group holds now": if an earlier one was
                // published and stopped during its purge, finish that instead of splitting again.
                if let Some(code) = finish_departed(&context, &run, &group, &current).await? {
                    return Ok(code);
                }
            }
            let Some(at) = at.or_else(|| ranged.midpoint_of_largest(&group)) else {
                bail!("group `{group}`'s ranges are single positions: nothing to split");
            };
            let to = match to {
                Some(to) => to,
                None => match gainer(&context, &jurisdiction, &current, &group)? {
                    Some(to) => to,
                    None => {
                        return Ok(context.report.end(
                            1,
                            &format!(
                                "no group of `{jurisdiction}` owns no range to split into: declare one with \
                                 `shard = \"reserve\"` in the topology, or name one with --to"
                            ),
                        ));
                    }
                },
            };
            if to == group {
                bail!("--to names the group being split, `{group}`");
            }
            let change = MapChange::Split { at, to };
            execute(&context, &run, &jurisdiction, &current, &change).await
        }
        ShardCommand::Move {
            jurisdiction,
            start,
            to,
            run,
        } => {
            let context = Context::read(&run).await?;
            let to = context.group_of(&jurisdiction, &to)?;
            let current = context.published(&jurisdiction).await?;
            let ranges = current.ranged()?.ranges();
            if !ranges.iter().any(|range| range.start == start) {
                bail!(
                    "no range of `{jurisdiction}` starts at {start:#x} at epoch {}: its ranges are {}",
                    current.epoch(),
                    describe_ranges(&ranges)
                );
            }
            let change = MapChange::Move { start, to };
            execute(&context, &run, &jurisdiction, &current, &change).await
        }
        ShardCommand::AutoSplit(args) => crate::shard_auto::run(args).await,
        ShardCommand::Abort {
            jurisdiction,
            group,
            to,
            run,
        } => {
            let context = Context::read(&run).await?;
            let group = context.group_of(&jurisdiction, &group)?;
            let to = context.group_of(&jurisdiction, &to)?;
            abort(&context, &run, &group, &to).await
        }
    }
}

fn describe_ranges(ranges: &[placement::shard_map::Range]) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    ranges
        .iter()
        .map(|range| format!("{:#x}..={:#x} ({})", range.start, range.end, range.group))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The default gainer of a split: the first group of the jurisdiction, by name, that owns no range of
/// the published map and is not receiving another change's ranges.
fn gainer(
    context: &Context,
    jurisdiction: &str,
    current: &ShardMap,
    loser: &GroupId,
) -> anyhow::Result<Option<GroupId>> {
    let owning = current.groups();
    Ok(context
        .groups_of(jurisdiction)?
        .iter()
        .find(|group| *group != loser && !owning.contains(group))
        .cloned())
}

/// A split without `--at` of a group that still holds records outside its ranges of the published
/// epoch (departed in a published change, their purge cut short): purges them and ends the run.
async fn finish_departed(
    context: &Context,
    args: &ShardArgs,
    group: &GroupId,
    current: &ShardMap,
) -> anyhow::Result<Option<ExitCode>> {
    let leaders = &context.leaders;
    let unreachable = |error: RangeCopyError| anyhow!("can't read `{group}`'s ranges: {error}");
    let (owned, incoming) = leaders.range_state(group).await.map_err(unreachable)?;
    if incoming.is_some() || owned.is_none_or(|owned| owned.epoch != current.epoch()) {
        return Ok(None);
    }
    let outside = complement(&current.ownership_of(group)?.ranges);
    if outside.is_empty() {
        return Ok(None);
    }
    let departed = leaders
        .digest(group, current.jurisdiction(), &outside)
        .await
        .map_err(unreachable)?;
    if departed.records == 0 {
        return Ok(None);
    }
    let message = format!(
        "`{group}` still holds {} record(s) outside its ranges of epoch {}: an earlier change is published \
         and its purge was cut short",
        departed.records,
        current.epoch()
    );
    context.report.note(&message);
    if args.dry_run {
        return Ok(Some(
            context
                .report
                .end(0, "dry run: the purge is left to do, nothing was changed"),
        ));
    }
    let mut progress = context.report.progress();
    let finished = range_copy::finish_published(
        leaders,
        std::slice::from_ref(group),
        current.jurisdiction(),
        &mut |event| progress.event(event),
    )
    .await;
    Ok(Some(match finished {
        Ok(()) => context.report.end(
            0,
            "the earlier change is finished; run again to split what the group holds now",
        ),
        Err(error) => context.report.end(
            1,
            &format!("stopped: {error}; run the same command again to finish"),
        ),
    }))
}

/// The positions outside `ranges` (sorted, inclusive, not overlapping).
fn complement(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut outside = Vec::new();
    let mut next = Some(0u64);
    for (start, end) in sorted {
        if let Some(from) = next
            && from < start
        {
            outside.push((from, start - 1));
        }
        next = end.checked_add(1);
    }
    if let Some(from) = next {
        outside.push((from, u64::MAX));
    }
    outside
}

pub(crate) async fn execute(
    context: &Context,
    args: &ShardArgs,
    jurisdiction: &str,
    current: &ShardMap,
    change: &MapChange,
) -> anyhow::Result<ExitCode> {
    let directory = raft::directory::Directory::new(
        placement::NodeId(0),
        &context.file.topology,
        raft::routing::Router::new(context.file.policies.values())?,
    );
    let leaders = &context.leaders;
    let planned = match range_copy::plan(&directory, current, change) {
        Ok(planned) => planned,
        Err(error) => return Ok(context.report.end(1, &format!("refused: {error}"))),
    };
    let Some(range_change) = planned else {
        context.report.note(&format!(
            "the change is published already (epoch {}): finishing its purge",
            current.epoch()
        ));
        if args.dry_run {
            return Ok(context.report.end(0, "dry run: nothing was changed"));
        }
        let groups = context.groups_of(jurisdiction)?.to_vec();
        let mut progress = context.report.progress();
        let finished =
            range_copy::finish_published(leaders, &groups, jurisdiction, &mut |event| progress.event(event))
                .await;
        return Ok(match finished {
            Ok(()) => context.report.end(0, "done"),
            Err(error) => context.report.end(
                1,
                &format!("stopped: {error}; run the same command again to finish"),
            ),
        });
    };
    let phase = match range_copy::observe(leaders, &range_change).await {
        Ok(phase) => phase,
        Err(error) => bail!("can't read where the change stands: {error}"),
    };
    context.report.plan(&range_change, phase);
    if args.dry_run {
        return Ok(context.report.end(0, "dry run: nothing was changed"));
    }
    if !args.yes && !confirm(&range_change)? {
        return Ok(context.report.end(1, "not confirmed: nothing was changed"));
    }
    let mut progress = context.report.progress();
    let outcome = range_copy::run(leaders, &range_change, &mut |event| progress.event(event)).await;
    progress.finish();
    if let Err(error) = outcome {
        return Ok(context.report.end(
            1,
            &format!("stopped: {error}; run the same command again to finish"),
        ));
    }
    // What the loser still holds of the moved ranges, read on its leader: none, after the purge.
    let left = leaders
        .digest(&range_change.loser, jurisdiction, &range_change.moving)
        .await;
    let epoch = range_change.next.epoch();
    Ok(match left {
        Ok(left) if left.records == 0 => {
            context.report.gone(&range_change.loser, 0);
            context.report.end(
                0,
                &format!(
                    "done: epoch {epoch} published, `{}` holds the range and `{}` no longer does",
                    range_change.gainer, range_change.loser
                ),
            )
        }
        Ok(left) => {
            context.report.gone(&range_change.loser, left.records);
            context.report.end(
                1,
                &format!(
                    "epoch {epoch} is published, but `{}` still holds {} record(s) of the moved range",
                    range_change.loser, left.records
                ),
            )
        }
        Err(error) => context.report.end(
            1,
            &format!("epoch {epoch} is published; the purge could not be checked: {error}"),
        ),
    })
}

async fn abort(
    context: &Context,
    args: &ShardArgs,
    loser: &GroupId,
    gainer: &GroupId,
) -> anyhow::Result<ExitCode> {
    let leaders = &context.leaders;
    let unreachable = |error: RangeCopyError| anyhow!("can't read `{gainer}`'s ranges: {error}");
    let (_, incoming) = leaders.range_state(gainer).await.map_err(unreachable)?;
    let Some(incoming) = incoming else {
        return Ok(context
            .report
            .end(0, &format!("`{gainer}` receives no range: nothing to abort")));
    };
    let current = context.published(&incoming.jurisdiction).await?;
    if incoming.epoch != current.epoch() + 1 {
        return Ok(context.report.end(
            1,
            &format!(
                "`{gainer}` receives ranges of epoch {}, not of the next epoch {}",
                incoming.epoch,
                current.epoch() + 1
            ),
        ));
    }
    // The change as the gainer records it: its incoming ranges, from the group that owns them now.
    let [(start, _), ..] = incoming.ranges.as_slice() else {
        return Ok(context.report.end(1, "the gainer's incoming ranges are empty"));
    };
    let ranged = current.ranged()?;
    if ranged.owner(*start) != loser {
        bail!(
            "`{gainer}` receives {start:#x}.., which `{loser}` does not own at epoch {}",
            current.epoch()
        );
    }
    let next = ranged
        .split(*start, gainer.clone())
        .or_else(|_| ranged.move_range(*start, gainer.clone()));
    let next =
        next.map_err(|error| anyhow!("the change can't be rebuilt from the gainer's ranges: {error}"))?;
    let change = RangeChange {
        jurisdiction: incoming.jurisdiction.clone(),
        current: current.clone(),
        next: ShardMap::Ranged(next),
        loser: loser.clone(),
        gainer: gainer.clone(),
        moving: incoming.ranges.clone(),
    };
    context.report.plan(&change, Phase::Prepare);
    if args.dry_run {
        return Ok(context.report.end(0, "dry run: nothing was changed"));
    }
    if !args.yes && !confirm(&change)? {
        return Ok(context.report.end(1, "not confirmed: nothing was changed"));
    }
    let mut progress = context.report.progress();
    let outcome = range_copy::abort(leaders, &change, &mut |event| progress.event(event)).await;
    Ok(match outcome {
        Ok(()) => context.report.end(0, "aborted: the gainer's copy is purged"),
        Err(error) => context.report.end(1, &format!("not aborted: {error}")),
    })
}

fn confirm(change: &RangeChange) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "not asking on a non-interactive input: give --yes to run the change, or --dry-run to print it"
        );
    }
    eprint!(
        "move {} range(s) from {} to {} and publish epoch {}? [y/N] ",
        change.moving.len(),
        change.loser,
        change.gainer,
        change.next.epoch()
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// What a run tells the operator: lines for a person, or one JSON object a line with `-o json`.
pub(crate) struct Report {
    json: bool,
}

impl Report {
    fn new(output: Output) -> Report {
        Report {
            json: matches!(output, Output::Json),
        }
    }

    pub(crate) fn note(&self, message: &str) {
        if self.json {
            outln!("{}", json!({"event": "note", "message": message}));
        } else {
            outln!("{message}");
        }
    }

    fn plan(&self, change: &RangeChange, phase: Phase) {
        if self.json {
            outln!(
                "{}",
                json!({
                    "event": "plan",
                    "jurisdiction": change.jurisdiction,
                    "from_epoch": change.current.epoch(),
                    "to_epoch": change.next.epoch(),
                    "loser": change.loser.0,
                    "gainer": change.gainer.0,
                    "moving": change.moving,
                    "phase": phase,
                })
            );
        } else {
            outln!(
                "{}: epoch {} -> {}: {} from {} to {}; next phase: {:?}",
                change.jurisdiction,
                change.current.epoch(),
                change.next.epoch(),
                change
                    .moving
                    .iter()
                    .map(|(start, end)| format!("{start:#x}..={end:#x}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                change.loser,
                change.gainer,
                phase
            );
        }
    }

    /// What the losing group holds of the moved ranges after the purge, read on its leader.
    fn gone(&self, loser: &GroupId, records_left: u64) {
        if self.json {
            outln!(
                "{}",
                json!({"event": "purge-checked", "group": loser.0, "records_left": records_left})
            );
        } else {
            outln!("  `{loser}` holds {records_left} record(s) of the moved range");
        }
    }

    fn progress(&self) -> ProgressReport {
        ProgressReport {
            json: self.json,
            started: Instant::now(),
            phase_started: Instant::now(),
            phase: None,
            records: 0,
            bytes: 0,
            purged: 0,
            last_line: Instant::now(),
        }
    }

    pub(crate) fn end(&self, code: u8, message: &str) -> ExitCode {
        if self.json {
            outln!(
                "{}",
                json!({"event": "end", "exit_code": code, "message": message})
            );
        } else {
            outln!("{message}");
        }
        ExitCode::from(code)
    }
}

/// The progress of a run: each phase as it begins (with how long the previous one took), the copy's
/// records, bytes and rate at most once a second, and a phase's totals as it ends.
struct ProgressReport {
    json: bool,
    started: Instant,
    phase_started: Instant,
    phase: Option<Phase>,
    /// Records and value bytes copied in the current phase.
    records: u64,
    bytes: u64,
    purged: u64,
    last_line: Instant,
}

impl ProgressReport {
    fn event(&mut self, event: Progress) {
        match event {
            Progress::Phase { phase } => {
                self.close_phase();
                self.phase = Some(phase);
                self.phase_started = Instant::now();
                self.records = 0;
                self.bytes = 0;
                self.purged = 0;
                if self.json {
                    outln!(
                        "{}",
                        json!({"event": "phase", "phase": phase, "elapsed_s": self.started.elapsed().as_secs_f64()})
                    );
                } else {
                    outln!("phase {phase:?}");
                }
            }
            Progress::Copied { records, bytes } => {
                self.records += records;
                self.bytes += bytes;
                self.line_at_most_each_second();
            }
            Progress::Purged { records } => {
                self.purged += records;
                self.line_at_most_each_second();
            }
            Progress::Sessions { carried, taken } => {
                if self.json {
                    outln!(
                        "{}",
                        json!({"event": "sessions", "carried": carried, "taken": taken})
                    );
                } else {
                    outln!("  client sessions carried: {carried} ({taken} later than the new group's)");
                }
            }
            Progress::Verified { records, value_bytes } => {
                if self.json {
                    outln!(
                        "{}",
                        json!({"event": "verified", "records": records, "value_bytes": value_bytes})
                    );
                } else {
                    outln!("  digests equal: {records} records, {value_bytes} value bytes on both sides");
                }
            }
        }
    }

    fn line_at_most_each_second(&mut self) {
        if self.last_line.elapsed().as_secs_f64() >= 1.0 {
            self.counts("progress");
            self.last_line = Instant::now();
        }
    }

    fn counts(&self, event: &str) {
        let seconds = self.phase_started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            self.bytes as f64 / seconds
        } else {
            0.0
        };
        if self.json {
            outln!(
                "{}",
                json!({
                    "event": event,
                    "phase": self.phase,
                    "records": self.records,
                    "bytes": self.bytes,
                    "purged": self.purged,
                    "seconds": seconds,
                    "bytes_per_second": rate,
                })
            );
        } else if self.purged > 0 {
            outln!("  purged {} records ({seconds:.1} s)", self.purged);
        } else {
            outln!(
                "  copied {} records, {:.1} MiB ({seconds:.1} s, {:.1} MiB/s)",
                self.records,
                self.bytes as f64 / (1 << 20) as f64,
                rate / (1 << 20) as f64
            );
        }
    }

    fn close_phase(&mut self) {
        if matches!(self.phase, Some(Phase::Copy | Phase::Tail | Phase::Purge))
            && (self.records > 0 || self.purged > 0 || self.phase == Some(Phase::Copy))
        {
            self.counts("phase-end");
        }
    }

    fn finish(&mut self) {
        self.close_phase();
        self.phase = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_in_decimal_or_hex_and_nothing_else() {
        assert_eq!(parse_position("9223372036854775808"), Ok(1 << 63));
        assert_eq!(parse_position("0x8000_0000_0000_0000"), Ok(1 << 63));
        assert!(parse_position("-1").is_err());
        assert!(parse_position("0x1_0000_0000_0000_0000").is_err());
        assert!(
            parse_position("half")
                .unwrap_err()
                .contains("not a routing position")
        );
    }

    #[test]
    fn the_complement_of_ranges_covers_every_other_position() {
        assert_eq!(complement(&[(0, u64::MAX)]), []);
        assert_eq!(complement(&[]), [(0, u64::MAX)]);
        assert_eq!(
            complement(&[(10, 19), (0, 4), (30, u64::MAX)]),
            [(5, 9), (20, 29)]
        );
        assert_eq!(complement(&[(5, 9)]), [(0, 4), (10, u64::MAX)]);
    }
}
