//! `domicile demo`: the placement layer at work on the embedded example topology.
//!
//! Today Domicile's finished layer is placement, so the demo shows it end to end without any setup: the
//! sites and which jurisdictions each can serve, the plan that migrates a legacy US group into the EEA, the
//! fence refusing a US node in an EU group, and a residency report of the placement the plan leads to. The
//! networked cluster demo (QUIC, TLS, disks, failover) replaces this once the node exists.

use std::process::ExitCode;

use anyhow::anyhow;
use placement::{Fence, GroupId, Jurisdiction, NodeId, TopologyFile};

use crate::placement_cli::{apply_plan, describe_node, render_plan};

const EXAMPLE_TOPOLOGY: &str = include_str!("../deploy/topology.example.toml");

pub fn run() -> anyhow::Result<ExitCode> {
    let file = TopologyFile::parse(EXAMPLE_TOPOLOGY).map_err(|error| anyhow!("embedded topology:{error}"))?;
    let topology = &file.topology;
    let (eu, eea) = (Jurisdiction::eu(), Jurisdiction::eea());

    println!("== Sites (embedded deploy/topology.example.toml)\n");
    println!(
        "{:<10} {:<7} {:<11} {:<12} {:>3} {:>4}",
        "site", "country", "region", "nodes", "EU", "EEA"
    );
    for site in topology.sites() {
        let nodes: Vec<String> = site.nodes.iter().map(NodeId::to_string).collect();
        let mark = |inside: bool| if inside { "yes" } else { "-" };
        println!(
            "{:<10} {:<7} {:<11} {:<12} {:>3} {:>4}",
            site.name.0,
            site.country.as_str(),
            site.region.as_deref().unwrap_or("-"),
            nodes.join(","),
            mark(eu.contains(site.country)),
            mark(eea.contains(site.country)),
        );
    }

    println!("\n== The plan (legacy group users-legacy migrates from Ashburn into the EEA)\n");
    let plan = placement::plan(
        topology,
        &file.policies,
        &file.current,
        &placement::Health::all_up(),
    )?;
    print!("{}", render_plan(topology, &plan));

    println!("\n== The fence refuses what would breach residency\n");
    let users_eu = GroupId("users-eu".into());
    let policy = &file.policies[&users_eu];
    let placed = apply_plan(&file.current, &plan);
    let eu_members = placed[&users_eu].membership.clone();
    for (attempt, node) in [
        ("add Ashburn node as a learner of users-eu", 9),
        ("add Hamar node (Norway: EEA, not EU)", 5),
    ] {
        let mut proposed = eu_members.clone();
        proposed.learners.insert(NodeId(node));
        match Fence::admit(topology, policy, &eu_members, &proposed) {
            Ok(_) => return Err(anyhow!("the fence admitted `{attempt}`: residency is broken")),
            Err(refusal) => println!("{attempt}:\n  refused: {refusal}"),
        }
    }
    let fenced = Fence::admit(topology, policy, &eu_members, &eu_members)?;
    if let Err(refusal) = Fence::admit_leader(topology, policy, &fenced, NodeId(9)) {
        println!("transfer users-eu leadership to Ashburn:\n  refused: {refusal}");
    }

    println!("\n== Residency report (placement after the plan)\n");
    let mut breaches = 0;
    for (group, state) in &placed {
        let policy = &file.policies[group];
        let members: Vec<String> = state
            .membership
            .members()
            .map(|node| describe_node(topology, node))
            .collect();
        let outside: Vec<NodeId> = state
            .membership
            .members()
            .filter(|&node| !topology.is_inside(node, &policy.jurisdiction))
            .collect();
        breaches += outside.len();
        let leader = state
            .leader
            .map(|node| describe_node(topology, node))
            .unwrap_or_else(|| "-".into());
        let verdict = if outside.is_empty() {
            "all inside".to_string()
        } else {
            format!("OUTSIDE: {outside:?}")
        };
        println!(
            "{group:<13} {:<5} leader {leader:<22} {verdict}\n  members {}",
            policy.jurisdiction.name(),
            members.join(", ")
        );
    }
    if breaches == 0 {
        println!("\nno replica of any group is outside its jurisdiction.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{breaches} replica(s) outside their jurisdiction.");
        Ok(ExitCode::from(1))
    }
}
