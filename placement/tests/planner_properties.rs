//! Property tests for the planner and the fence, over random topologies, policies, legacy placements and
//! sequences of node and site failures and recoveries:
//!
//! (a) every step the planner emits is admitted by the fence, applied in order;
//! (b) no plan ever adds a member outside its group's jurisdiction, nor picks a leader outside it;
//! (c) the planner is deterministic;
//! (d) once everything has recovered, when the jurisdiction has enough nodes and sites, one round of steps
//!     reaches a compliant placement that needs no further step;
//! (e) after every event, a plan applied in full leaves nothing to do while health stays as it is, leaders
//!     included, whether or not the group can be made compliant (the node plans in a loop);
//! (f) rebalancing stays inside the fence, ends, never widens the spread of replicas per node inside a
//!     jurisdiction, and leaves the planner nothing to undo.

use std::collections::BTreeMap;

use placement::{
    Country, FailureDomains, Fence, GroupId, GroupPolicy, GroupState, Health, Jurisdictions,
    LeaderPreference, Membership, NodeId, Placement, Plan, Problem, Site, SiteName, Step, Topology,
    TopologyFile,
};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, RngSeed};

const COUNTRIES: [&str; 7] = ["IE", "NO", "DE", "FR", "US", "GB", "IS"];
const JURISDICTIONS: [&str; 4] = ["EU", "EEA", "EEA + GB", "EU - DE"];
/// The seed of the pinned run (see `pinned`).
const PINNED_SEED: u64 = 21;

#[derive(Debug, Clone)]
struct World {
    topology: Topology,
    policies: BTreeMap<GroupId, GroupPolicy>,
    current: Placement,
    events: Vec<Event>,
}

#[derive(Debug, Clone)]
enum Event {
    NodeDown(usize),
    NodeUp(usize),
    SiteDown(usize),
    SiteUp(usize),
}

#[derive(Debug, Clone)]
struct RawSite {
    country: usize,
    region: usize,
    nodes: usize,
}

#[derive(Debug, Clone)]
struct RawGroup {
    jurisdiction: usize,
    voters: usize,
    learners: usize,
    distinct_sites: usize,
    distinct_regions: usize,
    prefer_site: Option<usize>,
    existing: Option<(Vec<usize>, Vec<usize>, usize)>,
}

fn raw_group() -> impl Strategy<Value = RawGroup> {
    (
        0..JURISDICTIONS.len(),
        1..=5usize,
        0..=2usize,
        0..=5usize,
        0..=2usize,
        proptest::option::of(0..8usize),
        proptest::option::weighted(
            0.6,
            (
                proptest::collection::vec(0..40usize, 1..6),
                proptest::collection::vec(0..40usize, 0..3),
                0..5usize,
            ),
        ),
    )
        .prop_map(
            |(jurisdiction, voters, learners, distinct_sites, distinct_regions, prefer_site, existing)| {
                RawGroup {
                    jurisdiction,
                    voters,
                    learners,
                    distinct_sites,
                    distinct_regions,
                    prefer_site,
                    existing,
                }
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..40usize).prop_map(Event::NodeDown),
        (0..40usize).prop_map(Event::NodeUp),
        (0..8usize).prop_map(Event::SiteDown),
        (0..8usize).prop_map(Event::SiteUp),
    ]
}

fn world() -> impl Strategy<Value = World> {
    let site = (0..COUNTRIES.len(), 0..3usize, 1..=3usize).prop_map(|(country, region, nodes)| RawSite {
        country,
        region,
        nodes,
    });
    (
        proptest::collection::vec(site, 2..=7),
        proptest::collection::vec(raw_group(), 1..=4),
        proptest::collection::vec(event(), 0..10),
    )
        .prop_map(|(sites, groups, events)| build(sites, groups, events))
}

/// Turns raw choices into a valid world: policies are clamped to what their jurisdiction can hold (invalid
/// policies are load-time errors, tested elsewhere), legacy memberships are drawn from all nodes.
fn build(raw_sites: Vec<RawSite>, raw_groups: Vec<RawGroup>, events: Vec<Event>) -> World {
    let mut topology = Topology::new(Jurisdictions::default());
    let mut next_node = 1;
    for (index, raw) in raw_sites.iter().enumerate() {
        let nodes = (next_node..next_node + raw.nodes as u64).map(NodeId).collect();
        next_node += raw.nodes as u64;
        let site = Site {
            name: SiteName(format!("site-{index}")),
            country: Country::parse(COUNTRIES[raw.country]).unwrap(),
            region: Some(format!("region-{}", raw.region)),
            zone: None,
            nodes,
        };
        topology.add_site(site).unwrap();
    }
    let all_nodes: Vec<NodeId> = topology.nodes().collect();
    let mut policies = BTreeMap::new();
    let mut current = Placement::new();
    for (index, raw) in raw_groups.into_iter().enumerate() {
        let jurisdiction = topology
            .jurisdictions()
            .resolve(JURISDICTIONS[raw.jurisdiction])
            .unwrap();
        let inside_sites: Vec<&Site> = topology.sites_inside(&jurisdiction).collect();
        if inside_sites.is_empty() {
            continue;
        }
        let voters = raw.voters.min(inside_sites.len());
        let leader_preference = raw
            .prefer_site
            .map(|pick| LeaderPreference::Site(inside_sites[pick % inside_sites.len()].name.clone()))
            .into_iter()
            .collect();
        let policy = GroupPolicy {
            group: GroupId(format!("group-{index}")),
            jurisdiction,
            voters,
            learners: raw.learners,
            failure_domains: FailureDomains {
                distinct_sites_min: raw.distinct_sites.clamp(1, voters),
                distinct_regions_min: raw.distinct_regions.min(voters),
            },
            leader_preference,
            shard: Default::default(),
        };
        policy.validate(&topology).expect("generated policies are valid");
        if let Some((voters, learners, leader)) = raw.existing {
            let voters: Vec<NodeId> = voters
                .iter()
                .map(|pick| all_nodes[pick % all_nodes.len()])
                .collect();
            let membership = Membership::new(
                voters.iter().copied(),
                learners
                    .iter()
                    .map(|pick| all_nodes[pick % all_nodes.len()])
                    .filter(|node| !voters.contains(node)),
            );
            let leader = membership
                .voters
                .iter()
                .copied()
                .nth(leader % membership.voters.len());
            current.insert(policy.group.clone(), GroupState { membership, leader });
        }
        policies.insert(policy.group.clone(), policy);
    }
    World {
        topology,
        policies,
        current,
        events,
    }
}

/// Applies `plan` to `placement` in order, asking the fence about every step (property a) and checking that
/// nothing joins or leads from outside the jurisdiction (property b).
fn execute(world: &World, placement: &mut Placement, plan: &Plan) -> Result<(), TestCaseError> {
    for step in &plan.steps {
        let policy = &world.policies[step.group()];
        let before = placement.get(step.group()).cloned().unwrap_or_default();
        let joining: Vec<NodeId> = match step {
            Step::CreateGroup { voters, .. } => voters.iter().copied().collect(),
            Step::AddLearner { node, .. } => vec![*node],
            Step::TransferLeader { to, .. } => vec![*to],
            _ => vec![],
        };
        for node in joining {
            prop_assert!(
                world.topology.is_inside(node, &policy.jurisdiction),
                "{step:?} reaches outside {}",
                policy.jurisdiction
            );
        }
        if let Some(next) = step.next_membership(&before.membership) {
            let admitted = Fence::admit(&world.topology, policy, &before.membership, &next);
            prop_assert!(admitted.is_ok(), "{step:?} refused: {:?}", admitted.err());
        }
        step.apply(placement);
        if let Step::TransferLeader { to, .. } = step {
            let state = &placement[step.group()];
            let fenced = Fence::admit(&world.topology, policy, &state.membership, &state.membership).unwrap();
            prop_assert!(Fence::admit_leader(&world.topology, policy, &fenced, *to).is_ok());
        }
    }
    Ok(())
}

fn plan_checked(world: &World, placement: &Placement, health: &Health) -> Result<Plan, TestCaseError> {
    let plan = placement::plan(&world.topology, &world.policies, placement, health).unwrap();
    // (c) Deterministic: the same input, rebuilt from scratch, gives the same plan.
    let rebuilt: Placement = placement
        .iter()
        .rev()
        .map(|(group, state)| (group.clone(), state.clone()))
        .collect();
    let again = placement::plan(
        &world.topology,
        &world.policies.clone(),
        &rebuilt,
        &health.clone(),
    )
    .unwrap();
    prop_assert_eq!(&plan, &again);
    Ok(plan)
}

fn site_nodes(world: &World, site: usize) -> Vec<NodeId> {
    let sites: Vec<&Site> = world.topology.sites().collect();
    sites[site % sites.len()].nodes.clone()
}

proptest! {
    #![proptest_config(pinned(1500))]

    #[test]
    fn plans_stay_inside_the_fence_and_converge(world in world()) {
        let nodes: Vec<NodeId> = world.topology.nodes().collect();
        let mut placement = world.current.clone();
        let mut health = Health::all_up();
        for event in &world.events {
            match event {
                Event::NodeDown(pick) => health.node_down(nodes[pick % nodes.len()]),
                Event::NodeUp(pick) => health.node_up(nodes[pick % nodes.len()]),
                Event::SiteDown(pick) => site_nodes(&world, *pick).into_iter().for_each(|node| health.node_down(node)),
                Event::SiteUp(pick) => site_nodes(&world, *pick).into_iter().for_each(|node| health.node_up(node)),
            }
            let plan = plan_checked(&world, &placement, &health)?;
            execute(&world, &mut placement, &plan)?;
            let again = plan_checked(&world, &placement, &health)?;
            prop_assert!(again.steps.is_empty(), "after {event:?}, one round left steps: {:?}", again.steps);
        }

        // (d) Everything recovers.
        let health = Health::all_up();
        let plan = plan_checked(&world, &placement, &health)?;
        execute(&world, &mut placement, &plan)?;
        for report in &plan.groups {
            if !report.problems.is_empty() {
                continue;
            }
            let policy = &world.policies[&report.group];
            let state = &placement[&report.group];
            let outside: Vec<NodeId> =
                state.membership.members().filter(|&node| !world.topology.is_inside(node, &policy.jurisdiction)).collect();
            prop_assert!(outside.is_empty(), "{}: members {outside:?} outside after a feasible plan", report.group);
            prop_assert_eq!(state.membership.voters.len(), policy.voters);
            prop_assert_eq!(state.membership.learners.len(), policy.learners);
            let leader = state.leader.expect("a compliant group has a leader");
            prop_assert!(state.membership.voters.contains(&leader));
        }
        let settled = plan_checked(&world, &placement, &health)?;
        for report in plan.groups.iter().filter(|report| report.problems.is_empty()) {
            let again: Vec<&Step> = settled.steps.iter().filter(|step| step.group() == &report.group).collect();
            prop_assert!(again.is_empty(), "{} did not converge: {again:?}", report.group);
        }
    }
}

proptest! {
    #![proptest_config(pinned(400))]

    /// (f) Rebalancing, run as its executor runs it (one step, then plan again), from wherever the planner
    /// leaves a world with every node up: every step admitted by the fence and inside the jurisdiction, an
    /// end within a bound, the imbalance inside each jurisdiction never larger than at the start, nothing
    /// left to rebalance at the end, and nothing the planner would undo but leaderships.
    #[test]
    fn rebalancing_stays_inside_the_fence_ends_and_never_unbalances(world in world()) {
        let health = Health::all_up();
        let mut placement = world.current.clone();
        for _ in 0..3 {
            let plan = plan_checked(&world, &placement, &health)?;
            execute(&world, &mut placement, &plan)?;
        }
        let spread = |placement: &Placement| -> BTreeMap<String, usize> {
            let mut by_jurisdiction: BTreeMap<String, BTreeMap<NodeId, usize>> = BTreeMap::new();
            for policy in world.policies.values() {
                let loads = by_jurisdiction.entry(policy.jurisdiction.name().to_string()).or_default();
                for node in world.topology.nodes().filter(|&node| world.topology.is_inside(node, &policy.jurisdiction)) {
                    loads.entry(node).or_insert(0);
                }
                if let Some(state) = placement.get(&policy.group) {
                    for member in state.membership.members() {
                        if let Some(load) = loads.get_mut(&member) {
                            *load += 1;
                        }
                    }
                }
            }
            by_jurisdiction
                .into_iter()
                .map(|(name, loads)| {
                    let max = loads.values().max().copied().unwrap_or(0);
                    let min = loads.values().min().copied().unwrap_or(0);
                    (name, max - min)
                })
                .collect()
        };
        let before = spread(&placement);
        let mut ended = false;
        for _ in 0..2_000 {
            let plan = placement::rebalance(&world.topology, &world.policies, &placement, &health).unwrap();
            let again = placement::rebalance(&world.topology, &world.policies, &placement, &health).unwrap();
            prop_assert_eq!(&plan, &again);
            let Some(step) = plan.steps.first() else {
                ended = true;
                break;
            };
            execute(&world, &mut placement, &Plan { steps: vec![step.clone()], groups: Vec::new() })?;
        }
        prop_assert!(ended, "rebalancing did not end within 2,000 steps");
        let after = spread(&placement);
        for (jurisdiction, spread) in &after {
            prop_assert!(spread <= &before[jurisdiction], "{jurisdiction}: spread {} before, {spread} after", before[jurisdiction]);
        }
        let planned = plan_checked(&world, &placement, &health)?;
        let undone: Vec<&Step> = planned
            .steps
            .iter()
            .filter(|step| !matches!(step, Step::TransferLeader { .. }))
            .collect();
        prop_assert!(undone.is_empty(), "the planner would undo the rebalance: {undone:?}");
    }
}

/// CI's cases: the regression file's first, then `cases` drawn from ChaCha with a fixed seed, so every run
/// on every machine tries the same worlds. proptest's own `PROPTEST_RNG_SEED` and `PROPTEST_CASES` override
/// both (the `proptest!` macro reads them over this config): the wide search, `scripts/wide-search.sh`.
fn pinned(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(PINNED_SEED),
        ..ProptestConfig::default()
    }
}

/// Issue 21, the world `plans_stay_inside_the_fence_and_converge` failed on in CI, rebuilt from the issue
/// and written out (the regression file's seeds are later finds of the same defect). The EU sites are all in
/// Ireland: site-1 alone in region-1, site-2 and site-3 in region-0. group-1 is migrating out of the US and
/// can't shed its US voters (its inside voters are no quorum), so it keeps every inside voter it gains —
/// more than the one it wants. group-0 and group-2 want two regions, so while site-1 is down they settle
/// for region-0 alone, and take n3 back when it returns, which moves replicas off other nodes.
///
/// It proves that one round after the recovery leaves nothing to do, leaders included. The planner used to
/// pick group-1's one wanted voter among its members n3 and n4 by replica count, which the round's own moves
/// change: the next round picked the other one and moved group-1's leader there, and group-2, balanced
/// against it, asked to move its own (`TransferLeader { group: group-2, to: n7 }`), and so on.
#[test]
fn leaders_settle_when_a_region_returns_beside_a_blocked_migration() -> Result<(), TestCaseError> {
    let file = TopologyFile::parse(ISSUE_21).expect("the issue's topology parses");
    let world = World {
        topology: file.topology,
        policies: file.policies,
        current: file.current,
        events: Vec::new(),
    };
    let mut placement = world.current.clone();

    let mut health = Health::all_up();
    health.site_down(&world.topology, &SiteName("site-1".into()));
    let plan = plan_checked(&world, &placement, &health)?;
    execute(&world, &mut placement, &plan)?;
    let problems = |group: usize| &plan.groups[group].problems[..];
    assert!(
        matches!(problems(1), [Problem::MigrationBlocked { .. }]),
        "{:?}",
        problems(1)
    );
    assert!(
        matches!(problems(2), [Problem::FailureDomainsShort { regions: 1, .. }]),
        "{:?}",
        problems(2)
    );

    let health = Health::all_up();
    let plan = plan_checked(&world, &placement, &health)?;
    execute(&world, &mut placement, &plan)?;
    let group_2 = &placement[&GroupId("group-2".into())].membership;
    assert!(
        group_2.voters.contains(&NodeId(3)),
        "group-2 spans region-1 again: {group_2:?}"
    );
    let again = plan_checked(&world, &placement, &health)?;
    assert_eq!(
        again.steps,
        [],
        "one round after the recovery leaves nothing to do"
    );
    Ok(())
}

const ISSUE_21: &str = r#"
[[site]]
name = "site-0"
country = "US"
region = "region-0"
nodes = [1, 2]

[[site]]
name = "site-1"
country = "IE"
region = "region-1"
nodes = [3]

[[site]]
name = "site-2"
country = "IE"
region = "region-0"
nodes = [4, 5]

[[site]]
name = "site-3"
country = "IE"
region = "region-0"
nodes = [6, 7]

[[site]]
name = "site-4"
country = "US"
region = "region-0"
nodes = [8, 9]

[[site]]
name = "site-5"
country = "US"
region = "region-2"
nodes = [10, 11]

[[group]]
name = "group-0"
jurisdiction = "EU"
voters = 2
learners = 2
distinct_regions = 2

[[group]]
name = "group-1"
jurisdiction = "EU"
voters = 1
learners = 1
[group.current]
voters = [1, 3, 8, 11]
leader = 3

[[group]]
name = "group-2"
jurisdiction = "EU"
voters = 3
distinct_sites = 1
distinct_regions = 2
"#;
