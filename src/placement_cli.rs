//! `domicile placement plan|check|apply`: the placement layer from the command line (`apply` is
//! [`crate::apply_cli`]'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use placement::{
    Fence, GroupId, Health, Membership, NodeId, Placement, Plan, Problem, Refusal, Step, Topology,
    TopologyFile,
};

#[derive(Subcommand)]
pub enum PlacementCommand {
    /// Print the steps that make every group compliant, or why no compliant placement exists (exit 1).
    Plan {
        #[arg(long)]
        topology: PathBuf,
        /// Current memberships and node health; without it, memberships declared in the topology file.
        #[arg(long)]
        current: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if the fence admits this membership (and leader) for the group, 1 with the refusal if not.
    Check {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        current: Option<PathBuf>,
        #[arg(long)]
        group: String,
        /// Proposed voters, e.g. `1,3,5` or `n1,n3,n5`.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<NodeId>,
        /// Proposed learners.
        #[arg(long, value_delimiter = ',')]
        learners: Vec<NodeId>,
        #[arg(long)]
        leader: Option<NodeId>,
        #[arg(long)]
        json: bool,
    },
    /// Execute the plan on a running cluster, step by step through the fence on each group's leader, from
    /// the placement and health its admin endpoints report; resumable (run it again to continue).
    Apply {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        run: crate::apply_cli::RunArgs,
    },
}

pub fn run(command: PlacementCommand) -> anyhow::Result<ExitCode> {
    match command {
        PlacementCommand::Apply { group, run } => {
            crate::apply_cli::run_blocking(crate::apply_cli::Scope::Apply { group }, run)
        }
        PlacementCommand::Plan {
            topology,
            current,
            json,
        } => {
            let (file, placement, health) = load(&topology, current.as_deref())?;
            let plan = placement::plan(&file.topology, &file.policies, &placement, &health)
                .with_context(|| format!("{}: the current placement is inconsistent", topology.display()))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                out!("{}", render_plan(&file.topology, &plan));
            }
            Ok(if plan.is_feasible() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PlacementCommand::Check {
            topology,
            current,
            group,
            members,
            learners,
            leader,
            json,
        } => {
            let (file, placement, _) = load(&topology, current.as_deref())?;
            let group = GroupId(group);
            let policy = file.policies.get(&group).ok_or_else(|| {
                let known: Vec<_> = file.policies.keys().map(|id| id.0.as_str()).collect();
                anyhow!(
                    "no group `{group}` in {} (groups: {})",
                    topology.display(),
                    known.join(", ")
                )
            })?;
            let now = placement
                .get(&group)
                .map(|state| state.membership.clone())
                .unwrap_or_default();
            let proposed = Membership::new(members, learners);
            let verdict =
                Fence::admit(&file.topology, policy, &now, &proposed).and_then(|fenced| match leader {
                    Some(node) => Fence::admit_leader(&file.topology, policy, &fenced, node).map(|_| fenced),
                    None => Ok(fenced),
                });
            match verdict {
                Ok(fenced) => {
                    if json {
                        let answer = serde_json::json!({"admitted": true, "group": group, "membership": fenced.membership(), "leader": leader});
                        outln!("{}", serde_json::to_string_pretty(&answer)?);
                    } else {
                        outln!(
                            "admitted: group `{group}` ({}) {:?}{}",
                            policy.jurisdiction,
                            fenced.membership(),
                            leader.map(|node| format!(" leader {node}")).unwrap_or_default()
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => {
                    print_refusal(&refusal, json)?;
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn print_refusal(refusal: &Refusal, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(refusal)?;
        value["message"] = serde_json::Value::String(refusal.to_string());
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        outln!("refused: {refusal}");
    }
    Ok(())
}

/// Reads the topology file and, if given, the current-placement file; errors name the file and line.
pub fn load(topology: &Path, current: Option<&Path>) -> anyhow::Result<(TopologyFile, Placement, Health)> {
    let text =
        std::fs::read_to_string(topology).with_context(|| format!("can't read {}", topology.display()))?;
    let file = TopologyFile::parse(&text).map_err(|error| anyhow!("{}:{error}", topology.display()))?;
    let (placement, health) = match current {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("can't read {}", path.display()))?;
            file.parse_current(&text)
                .map_err(|error| anyhow!("{}:{error}", path.display()))?
        }
        None => (file.current.clone(), Health::all_up()),
    };
    Ok((file, placement, health))
}

pub fn describe_node(topology: &Topology, node: NodeId) -> String {
    match topology.site_of(node) {
        Some(site) => format!("{node} ({}, {})", site.name, site.country),
        None => format!("{node} (unknown site)"),
    }
}

pub fn render_plan(topology: &Topology, plan: &Plan) -> String {
    let mut out = String::new();
    for report in &plan.groups {
        let status = if !report.problems.is_empty() {
            "NOT COMPLIANT"
        } else if report.steps == 0 {
            "compliant"
        } else {
            "compliant after these steps"
        };
        out.push_str(&format!(
            "group {} ({}): {} step(s), {status}\n",
            report.group, report.jurisdiction, report.steps
        ));
        let steps = plan.steps.iter().filter(|step| step.group() == &report.group);
        for (index, step) in steps.enumerate() {
            out.push_str(&format!("  {:>2}. {}\n", index + 1, render_step(topology, step)));
        }
        for problem in &report.problems {
            out.push_str(&format!("  problem: {}\n", render_problem(topology, problem)));
        }
    }
    out
}

pub fn render_step(topology: &Topology, step: &Step) -> String {
    let node = |node: &NodeId| describe_node(topology, *node);
    match step {
        Step::CreateGroup { voters, .. } => {
            format!(
                "create group with voters {}",
                voters.iter().map(node).collect::<Vec<_>>().join(", ")
            )
        }
        Step::AddLearner { node: n, .. } => format!("add learner {}", node(n)),
        Step::PromoteVoter { node: n, .. } => format!("promote {} to voter", node(n)),
        Step::DemoteVoter { node: n, .. } => format!("demote {} to learner", node(n)),
        Step::TransferLeader { to, .. } => format!("transfer leadership to {}", node(to)),
        Step::RemoveMember { node: n, .. } => format!("remove member {}", node(n)),
        Step::PurgeReplica { node: n, .. } => format!("purge replica on {}", node(n)),
    }
}

pub fn render_problem(topology: &Topology, problem: &Problem) -> String {
    match problem {
        Problem::QuorumLost { voters, healthy } => {
            format!("quorum lost: {healthy} of {voters} voters healthy; no membership change can commit")
        }
        Problem::UnderReplicated {
            voters_wanted,
            voters_possible,
        } => format!(
            "under-replicated: wants {voters_wanted} voters, only {voters_possible} healthy node(s) inside the jurisdiction (nothing outside it is considered)"
        ),
        Problem::FailureDomainsShort {
            sites_wanted,
            sites,
            regions_wanted,
            regions,
        } => format!(
            "failure domains short: voters span {sites} site(s) (wants {sites_wanted}) and {regions} region(s) (wants {regions_wanted})"
        ),
        Problem::LearnersShort {
            learners_wanted,
            learners_possible,
        } => {
            format!(
                "learners short: wants {learners_wanted}, only {learners_possible} node(s) available inside"
            )
        }
        Problem::MigrationBlocked { outside_voters } => format!(
            "migration blocked: legacy voters {} stay until inside voters can form a quorum on their own",
            outside_voters
                .iter()
                .map(|node| describe_node(topology, *node))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
