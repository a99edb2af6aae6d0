//! `domicile placement apply`, `site evacuate` and `node decommission` against real `domicile node`
//! processes: a legacy group migrated out of the United States with its records intact and its US replicas
//! purged (attested), a run SIGKILLed after its first step and resumed, a site emptied inside each group's
//! jurisdiction, and bad input refused before anything changes.

// Real processes on the wall clock: the test polls their admin endpoints until a condition holds (bounded).
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, NodeFiles, cluster_files, domicile, domicile_as_operator};
use serde_json::Value;

/// A legacy group fenced to the EEA with two of its three voters in Ashburn, as `[group.current]` declares
/// it (the example topology's `users-legacy`, scaled down), and three EEA sites to move it to.
const LEGACY: &str = r#"
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
"#;

const LEGACY_NODES: &[(u64, &str)] = &[
    (1, "dublin"),
    (2, "hamar"),
    (3, "frankfurt"),
    (4, "ashburn"),
    (5, "ashburn"),
];

/// Writes the cluster's files, with removed replicas purged within about two seconds (the node asks every
/// second), and starts every node.
fn start_cluster(dir: &std::path::Path, name: &str, topology: &str, nodes: &[(u64, &str)]) -> Cluster {
    let files = cluster_files(dir, name, topology, nodes);
    for node in &files {
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str("\n[raft]\npurge_check_ms = 1000\n");
        std::fs::write(&node.config, config).unwrap();
    }
    let processes = files.iter().map(NodeFiles::start).collect();
    Cluster {
        dir: dir.to_path_buf(),
        files,
        processes,
    }
}

struct Cluster {
    dir: std::path::PathBuf,
    files: Vec<NodeFiles>,
    /// In the order of `files`.
    processes: Vec<KillOnDrop>,
}

impl Cluster {
    fn admin(&self) -> String {
        self.files[0].admin.to_string()
    }

    fn client_endpoints(&self, ids: &[u64]) -> Vec<String> {
        self.files
            .iter()
            .filter(|node| ids.contains(&node.id))
            .map(NodeFiles::endpoint)
            .collect()
    }

    /// A client of `jurisdiction` through nodes `ids`, once the jurisdiction's shard map is published (its
    /// directory group must have elected a leader first: a legacy group's elections take seconds).
    async fn client(&self, ids: &[u64], jurisdiction: &str) -> client::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let built = client::Client::builder()
                .endpoints(self.client_endpoints(ids))
                .tls(client::ClientTls::from_dir(self.dir.join("certs"), "tests").unwrap())
                .default_jurisdiction(jurisdiction)
                .timeout(Duration::from_secs(15))
                .build()
                .await;
            match built {
                Ok(client) => return client,
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(error) => panic!("no client of {jurisdiction}: {error}"),
            }
        }
    }

    /// Until every node's admin endpoint answers (a node listens once it has opened its groups): the CLI
    /// plans a node that does not answer as down.
    async fn all_answer(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = domicile(&["status", "--admin", &self.admin(), "-o", "json"]);
            let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let answered = status["nodes"].as_array().map_or(0, Vec::len);
            if answered == self.files.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{answered} of {} nodes answer",
                self.files.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `domicile status -o json`'s view of a group: the leader's.
    fn group(&self, group: &str) -> Value {
        let output = domicile(&["status", "--admin", &self.admin(), "-o", "json"]);
        // Nothing (null) while the first node's admin endpoint is not up yet.
        let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        status["groups"][group].clone()
    }

    /// Until `check` holds of the group's view (at most 30 s).
    async fn wait_for(&self, group: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.group(group);
            if check(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{group}: {what}: never; last seen {view}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether node `id`'s data directory holds a state machine of `group`.
    fn holds_on_disk(&self, id: u64, group: &str) -> bool {
        let number = raft::routing::group_number(&placement::GroupId(group.into()));
        self.dir.join(format!("data-{id}/store/groups/{number}")).exists()
    }
}

fn ids(members: &Value) -> BTreeSet<u64> {
    members
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["node"].as_u64().unwrap())
        .collect()
}

/// The JSON events a run printed.
fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON event: {line}")))
        .collect()
}

/// A run's events, a line each, for a failed assertion's message.
fn show(events: &[Value]) -> String {
    events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

/// The steps a run's events say took effect.
fn steps_done(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|event| event["event"] == "step" && event["state"] == "done")
        .map(|event| event["step"].clone())
        .collect()
}

/// `placement apply` as the operator `tests` of the cluster in `dir`.
fn apply(dir: &std::path::Path, admin: &str, extra: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut args = vec!["placement", "apply", "--admin", admin, "--yes", "-o", "json"];
    args.extend_from_slice(extra);
    let output = domicile_as_operator(dir, &args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), events(&output.stdout), stderr)
}

/// The legacy group's records, written while two of its voters were in Ashburn.
fn record_of(user: usize) -> Vec<u8> {
    format!("address of user {user}, written before the migration").into_bytes()
}

async fn write_records(cluster: &Cluster, count: usize) {
    let client = cluster.client(&[1, 2, 3], "EEA").await;
    for user in 0..count {
        client
            .put(&format!("user-{user}"), "address", record_of(user))
            .await
            .unwrap();
    }
}

async fn read_back(cluster: &Cluster, count: usize) {
    let client = cluster.client(&[1, 2, 3], "EEA").await;
    for user in 0..count {
        let record = client.get(&format!("user-{user}"), "address").await.unwrap();
        assert_eq!(
            record.map(|record| record.value),
            Some(record_of(user)),
            "user-{user}"
        );
    }
}

/// The end state of a migration: voters in Dublin, Hamar and Frankfurt, led from inside, nothing in the US
/// in the membership or on the US nodes' disks.
async fn assert_migrated(cluster: &Cluster) {
    let view = cluster
        .wait_for("users-legacy", "led from inside", |view| {
            view["leader"].as_u64().is_some_and(|leader| leader <= 3)
        })
        .await;
    assert_eq!(ids(&view["voters"]), BTreeSet::from([1, 2, 3]), "{view}");
    assert!(ids(&view["learners"]).is_empty(), "{view}");
    for us in [4, 5] {
        assert!(
            !cluster.holds_on_disk(us, "users-legacy"),
            "n{us}'s data directory still holds the group"
        );
    }
}

/// The purge attestations of a run, by node.
fn attestations(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|event| event["event"] == "purge")
        .cloned()
        .collect()
}

fn assert_us_purges_attested(events: &[Value]) {
    let attested = attestations(events);
    for us in [4, 5] {
        let attestation = attested
            .iter()
            .find(|attestation| attestation["node"] == us)
            .unwrap_or_else(|| panic!("no attestation for n{us}: {attested:?}"));
        assert_eq!(attestation["state"], "purged", "{attestation}");
        assert_eq!(attestation["group"], "users-legacy");
        assert_eq!(attestation["site"], "ashburn");
        assert_eq!(attestation["country"], "US");
        assert!(attestation["term"].as_u64().unwrap() >= 1, "{attestation}");
        assert!(attestation["log_index"].as_u64().unwrap() >= 1, "{attestation}");
        let voters: Vec<u64> = serde_json::from_value(attestation["voters"].clone()).unwrap();
        assert!(!voters.contains(&us), "the proof leaves n{us} out: {attestation}");
        assert!(
            attestation["deleted_at"].as_str().unwrap().ends_with('Z'),
            "{attestation}"
        );
    }
}

/// The reason this product exists, on real processes: a group with voters in Ashburn is moved into the EEA
/// by `placement apply` — learners added and caught up, promoted, the US voters removed and their replicas
/// purged by their own nodes on the leader's proof — with every record written before it read back after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_migrates_the_legacy_group_into_the_eea_and_attests_the_us_purges() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "legacy", LEGACY, LEGACY_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    write_records(&cluster, 40).await;

    // A dry run prints the plan and changes nothing.
    let (code, dry, stderr) = apply(dir.path(), &admin, &["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    let plan = dry.iter().find(|event| event["event"] == "plan").unwrap();
    let planned: Vec<&Value> = plan["steps"].as_array().unwrap().iter().collect();
    assert!(
        planned
            .iter()
            .any(|step| step["step"] == "remove_member" && step["node"] == 4),
        "{plan}"
    );
    assert!(steps_done(&dry).is_empty());
    assert_eq!(
        ids(&cluster.group("users-legacy")["voters"]),
        BTreeSet::from([1, 4, 5])
    );

    let (code, run, stderr) = apply(dir.path(), &admin, &[]);
    assert_eq!(code, Some(0), "{}\n{stderr}", show(&run));
    let done = steps_done(&run);
    let kinds: Vec<(&str, u64)> = done
        .iter()
        .map(|step| {
            let node = step.get("node").or(step.get("to")).unwrap();
            (step["step"].as_str().unwrap(), node.as_u64().unwrap())
        })
        .collect();
    for expected in [
        ("add_learner", 2),
        ("add_learner", 3),
        ("promote_voter", 2),
        ("promote_voter", 3),
        ("remove_member", 4),
        ("remove_member", 5),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} not in {kinds:?}");
    }
    let position = |kind| kinds.iter().position(|done| *done == kind).unwrap();
    assert!(position(("promote_voter", 3)) < position(("remove_member", 4)));
    assert_us_purges_attested(&run);
    assert_migrated(&cluster).await;
    read_back(&cluster, 40).await;

    // Applied again: nothing to do, and the purges it attested are still attested.
    let (code, again, stderr) = apply(dir.path(), &admin, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(steps_done(&again).is_empty(), "{}", show(&again));
    assert_us_purges_attested(&again);
}

/// Where step `kind` on `node` reported `state` among a run's events.
fn position_of(events: &[Value], kind: &str, node: u64, state: &str) -> Option<usize> {
    events.iter().position(|event| {
        event["event"] == "step"
            && event["state"] == state
            && event["step"]["step"] == kind
            && event["step"]["node"] == node
    })
}

/// `placement apply` (with `extra` arguments) on a fresh legacy cluster whose first new replica, n2, is cut
/// off from Raft traffic for three seconds just before: it cannot catch up at once. Returns the run's
/// events, once the migration is checked.
async fn apply_with_n2_cut_off(extra: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "legacy", LEGACY, LEGACY_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    write_records(&cluster, 40).await;
    let hamar = cluster.files.iter().find(|node| node.id == 2).unwrap();
    common::isolate_from_all(dir.path(), hamar, 3_000).await;
    let (code, run, stderr) = apply(dir.path(), &admin, extra);
    assert_eq!(code, Some(0), "{}\n{stderr}", show(&run));
    assert_migrated(&cluster).await;
    read_back(&cluster, 40).await;
    run
}

/// Where a run's events first say n2 caught up.
fn n2_caught_up(events: &[Value]) -> Option<usize> {
    events
        .iter()
        .position(|event| event["event"] == "catch_up" && event["node"] == 2 && event["caught_up"] == true)
}

/// By default (`--copies one-at-a-time`) a group's second learner is added only once the first has caught
/// up; `--copies side-by-side` adds n3 while n2 is still cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_replicas_are_copied_one_at_a_time_by_default_side_by_side_when_asked() {
    let run = apply_with_n2_cut_off(&[]).await;
    // The wait is part of the add step: n2 catches up after its step starts, before n3's starts.
    let added_n2 = position_of(&run, "add_learner", 2, "started").expect("n2 added");
    let added_n3 = position_of(&run, "add_learner", 3, "started").expect("n3 added");
    let caught_up = n2_caught_up(&run).expect("n2 was waited for");
    assert!(
        added_n2 < caught_up && caught_up < added_n3,
        "one at a time, n3 is added once n2 has caught up:\n{}",
        show(&run)
    );

    let run = apply_with_n2_cut_off(&["--copies", "side-by-side"]).await;
    let added_n3 = position_of(&run, "add_learner", 3, "started").expect("n3 added");
    assert!(
        n2_caught_up(&run).is_some_and(|at| at > added_n3),
        "side by side, n3 is added while n2 is still cut off:\n{}",
        show(&run)
    );
}

/// Where a run of `placement apply` is killed.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Right after a step reports it took effect: a step boundary.
    StepDone,
    /// Right after a step starts, before it reports anything: mid-step (a learner added and catching
    /// up, a removal on its way to commit).
    StepStarted,
}

/// Runs `placement apply` and SIGKILLs it at the first `at`; returns the events it printed, and whether it
/// ended by itself first (nothing left to kill it at).
fn apply_killed(dir: &std::path::Path, admin: &str, at: KillAt) -> (Vec<Value>, bool) {
    let child = Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["placement", "apply", "--admin", admin, "--yes", "-o", "json"])
        .envs(common::operator_env(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let state = match at {
            KillAt::StepDone => "done",
            KillAt::StepStarted => "started",
        };
        let kill = event["event"] == "step" && event["state"] == state;
        events.push(event);
        if kill {
            child.sigkill();
            return (events, false);
        }
    }
    (events, true)
}

/// `placement apply` SIGKILLed over and over — alternately at a step boundary and mid-step — and run again
/// each time: every run reads the cluster and plans from what is true, so no step that took effect is
/// ever executed again, none is skipped, and the end is the same as one uninterrupted run's: the group
/// inside, the US replicas purged and attested, every record read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_killed_at_every_step_boundary_and_mid_step_ends_the_same_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "resume", LEGACY, LEGACY_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    write_records(&cluster, 10).await;

    // The uninterrupted plan has 9 steps (2 learners, 2 promotions, 2 removals with 2 purges, and a
    // leadership move at most); 16 killed runs are more than enough to reach the end.
    let mut done: Vec<Value> = Vec::new();
    let mut kills = Vec::new();
    for run in 0..16 {
        let at = if run % 2 == 0 {
            KillAt::StepDone
        } else {
            KillAt::StepStarted
        };
        let (events, ended) = apply_killed(dir.path(), &admin, at);
        for step in steps_done(&events) {
            assert!(
                !done.contains(&step),
                "{step} took effect in an earlier run and was executed again (run {run}, killed so far at \
                 {kills:?}):\n{}",
                show(&events)
            );
            done.push(step);
        }
        if ended {
            break;
        }
        kills.push(at);
    }
    assert!(
        kills.iter().any(|at| matches!(at, KillAt::StepDone))
            && kills.iter().any(|at| matches!(at, KillAt::StepStarted)),
        "killed at {kills:?}"
    );

    // The last word: a run that is not killed finds nothing left but to attest.
    let (code, last_run, stderr) = apply(dir.path(), &admin, &[]);
    assert_eq!(code, Some(0), "{}\n{stderr}", show(&last_run));
    for step in steps_done(&last_run) {
        assert!(!done.contains(&step), "{step} executed again by the last run");
    }
    assert_us_purges_attested(&last_run);
    assert_migrated(&cluster).await;
    read_back(&cluster, 10).await;
}

/// Four EEA sites, two groups: the EEA group leaves Dublin A for Hamar; the EU group has no other EU site to
/// go to, so it stays, under-replicated (exit 1) — never placed in Hamar (Norway: EEA, not EU).
const FOUR_SITES: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "frankfurt"
country = "DE"
nodes = [3]

[[site]]
name = "hamar"
country = "NO"
nodes = [4]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
leader_preference = ["dublin-a"]

[[group]]
name = "users-eu"
jurisdiction = "EU"
voters = 3
"#;

const FOUR_NODES: &[(u64, &str)] = &[(1, "dublin-a"), (2, "dublin-b"), (3, "frankfurt"), (4, "hamar")];

/// Then `node decommission`, planned only, on the same cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_evacuate_moves_replicas_off_a_site_inside_each_jurisdiction() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "evacuate", FOUR_SITES, FOUR_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    let before = cluster
        .wait_for("users-eea", "led from Dublin A", |view| view["leader"] == 1)
        .await;
    assert_eq!(ids(&before["voters"]), BTreeSet::from([1, 2, 3]), "{before}");
    let client = cluster.client(&[1, 2, 3], "EEA").await;
    client
        .put("user-7", "address", b"Storgata 1, Hamar".to_vec())
        .await
        .unwrap();
    drop(client);
    cluster
        .wait_for("users-eu", "has a leader", |view| view["leader"].is_u64())
        .await;

    let output = domicile_as_operator(
        dir.path(),
        &[
            "site", "evacuate", "dublin-a", "--admin", &admin, "--yes", "-o", "json",
        ],
    );
    let run = events(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the EU group can't leave: {}\n{}",
        show(&run),
        String::from_utf8_lossy(&output.stderr)
    );
    let left: Vec<&Value> = run
        .iter()
        .filter(|event| event["event"] == "under_replicated")
        .collect();
    assert_eq!(left.len(), 1, "{}", show(&run));
    assert_eq!(left[0]["group"], "users-eu");

    // The leaving node was drained first: it handed its leadership away and declines it since, so the
    // other nodes' leader preference (which prefers Dublin A) does not hand it back.
    assert!(
        run.iter().any(|event| event["event"] == "note"
            && event["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("n1 drained: group users-eea: leadership moved"))),
        "{}",
        show(&run)
    );
    let eea = cluster
        .wait_for("users-eea", "led from outside Dublin A", |view| {
            view["leader"].as_u64().is_some_and(|leader| leader != 1)
        })
        .await;
    assert_eq!(ids(&eea["voters"]), BTreeSet::from([2, 3, 4]), "{eea}");
    // Every leadership leaves the site, that of the group left in place too.
    cluster
        .wait_for("users-eu", "led from outside Dublin A", |view| {
            view["leader"].as_u64().is_some_and(|leader| leader != 1)
        })
        .await;
    let output = domicile(&["status", "--admin", &admin, "-o", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let drained: BTreeSet<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|node| node["draining"] == true)
        .map(|node| node["node"].as_u64().unwrap())
        .collect();
    assert_eq!(drained, BTreeSet::from([1]), "{status}");
    let eu = cluster.group("users-eu");
    assert_eq!(
        ids(&eu["voters"]),
        BTreeSet::from([1, 2, 3]),
        "left where it is: {eu}"
    );
    assert!(ids(&eu["learners"]).is_empty(), "{eu}");
    let attested = attestations(&run);
    assert_eq!(attested.len(), 1, "{attested:?}");
    assert_eq!(attested[0]["group"], "users-eea");
    assert_eq!(attested[0]["node"], 1);
    // The attestation's reason and the run's events say why, if the purge was not confirmed (it was not,
    // now and then under load, when leadership had been handed back to n1 and it removed itself: a removed
    // leader never asked to be purged; `raft/tests/purge.rs` covers that path now).
    assert_eq!(attested[0]["state"], "purged", "{attested:?}\n{}", show(&run));
    assert!(!cluster.holds_on_disk(1, "users-eea"));
    assert!(cluster.holds_on_disk(1, "users-eu"));

    let client = cluster.client(&[2, 3, 4], "EEA").await;
    let record = client.get("user-7", "address").await.unwrap();
    assert_eq!(
        record.map(|record| record.value),
        Some(b"Storgata 1, Hamar".to_vec())
    );

    // Decommissioning Dublin B, planned only: the EEA group would take Dublin A back; the EU group can't go.
    let output = domicile(&[
        "node",
        "decommission",
        "2",
        "--admin",
        &admin,
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let planned = events(&output.stdout);
    let plan = planned.iter().find(|event| event["event"] == "plan").unwrap();
    assert!(
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|step| step["group"] == "users-eea" && step["step"] == "add_learner" && step["node"] == 1),
        "{plan}"
    );
    assert!(
        planned
            .iter()
            .any(|event| event["event"] == "under_replicated" && event["group"] == "users-eu")
    );
    assert_eq!(
        ids(&cluster.group("users-eea")["voters"]),
        BTreeSet::from([2, 3, 4])
    );
}

/// An unknown group, site or node, and an admin endpoint that does not answer: exit 2 with the reason, and
/// the cluster as it was. A step the fence refuses, asked of the steps endpoint directly: 403 with the
/// typed refusal. A plan with no compliant placement (a node down): exit 1, nothing executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_refusals_and_infeasible_plans_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "bad-input", FOUR_SITES, FOUR_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    let before = cluster
        .wait_for("users-eea", "has a leader", |view| view["leader"].is_u64())
        .await;
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec![
                "placement",
                "apply",
                "--admin",
                &admin,
                "--group",
                "users-mars",
                "--yes",
            ],
            "no group `users-mars`",
        ),
        (
            vec!["site", "evacuate", "atlantis", "--admin", &admin, "--yes"],
            "no site `atlantis`",
        ),
        (
            vec!["node", "decommission", "99", "--admin", &admin, "--yes"],
            "no node n99",
        ),
        (
            vec!["placement", "apply", "--admin", "127.0.0.1:1", "--yes"],
            "can't reach the admin endpoint at 127.0.0.1:1",
        ),
        (
            vec!["site", "evacuate", "hamar", "--admin", "127.0.0.1:1", "--yes"],
            "can't reach the admin endpoint at 127.0.0.1:1",
        ),
    ];
    for (args, reason) in cases {
        let output = domicile(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    // Executing needs --yes where nobody can be asked.
    let output = domicile(&["node", "decommission", "1", "--admin", &admin]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");

    // A step the fence refuses, sent to the steps endpoint by hand: 403 with the typed refusal.
    let eu = cluster
        .wait_for("users-eu", "has a leader", |view| view["leader"].is_u64())
        .await;
    let leader = eu["leader"].as_u64().unwrap();
    let leader_files = cluster.files.iter().find(|node| node.id == leader).unwrap();
    let operator = common::AdminHttps::new(dir.path(), leader_files, Some("operator-tests"));
    let response = operator
        .client
        .post(operator.url("/groups/users-eu/steps"))
        .json(&serde_json::json!({"step": "add_learner", "node": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["refusal"]["node"], 4, "{refused}");
    assert_eq!(refused["refusal"]["country"], "NO", "{refused}");
    assert_eq!(refused["refusal"]["jurisdiction"], "EU", "{refused}");

    let after = cluster.group("users-eea");
    assert_eq!(after["voters"], before["voters"]);
    assert_eq!(after["learners"], before["learners"]);
    assert_eq!(ids(&cluster.group("users-eu")["learners"]), BTreeSet::new());

    // With Frankfurt down, the EU group has no compliant placement: `apply` says so and changes nothing.
    let mut cluster = cluster;
    cluster.processes[2].sigkill();
    let (code, run, stderr) = apply(dir.path(), &admin, &[]);
    assert_eq!(code, Some(1), "{}\n{stderr}", show(&run));
    assert!(
        !run.iter().any(|event| event["event"] == "step"),
        "nothing executed: {}",
        show(&run)
    );
    let end = run.last().unwrap();
    assert_eq!(end["outcome"], "stopped", "{end}");
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .contains("no compliant placement for group users-eu"),
        "{end}"
    );
    let eu_after = cluster.group("users-eu");
    assert_eq!(ids(&eu_after["voters"]), BTreeSet::from([1, 2, 3]), "{eu_after}");
}

/// Three EU groups on three EU nodes, as they stood before a fourth EU site (Amsterdam, n4) was added; and
/// Hamar (Norway, n5: EEA, not EU) beside them.
const GROWN: &str = r#"
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

[[site]]
name = "amsterdam"
country = "NL"
nodes = [4]

[[site]]
name = "hamar"
country = "NO"
nodes = [5]

[[group]]
name = "users-eu-1"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 1

[[group]]
name = "users-eu-2"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 2

[[group]]
name = "users-eu-3"
jurisdiction = "EU"
voters = 3

[group.current]
voters = [1, 2, 3]
leader = 3
"#;

const GROWN_NODES: &[(u64, &str)] = &[
    (1, "dublin"),
    (2, "frankfurt"),
    (3, "paris"),
    (4, "amsterdam"),
    (5, "hamar"),
];

/// A node added inside a jurisdiction takes its share: `domicile rebalance` moves replicas onto it, one
/// step at a time through the fence, until the EU nodes hold within one replica of each other — never
/// onto Hamar, outside the EU, though it holds none. The replicas moved off are purged and attested, the
/// records all read back, and a second run has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_gives_a_new_node_its_share_inside_the_jurisdiction() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path(), "grown", GROWN, GROWN_NODES);
    let admin = cluster.admin();
    cluster.all_answer().await;
    for group in ["users-eu-1", "users-eu-2", "users-eu-3"] {
        cluster
            .wait_for(group, "led", |view| view["leader"].as_u64().is_some())
            .await;
    }
    let client = cluster.client(&[1, 2, 3], "EU").await;
    for user in 0..30 {
        client
            .put(&format!("user-{user}"), "address", record_of(user))
            .await
            .unwrap();
    }
    let replicas = |node: u64| {
        ["users-eu-1", "users-eu-2", "users-eu-3"]
            .iter()
            .filter(|group| {
                let view = cluster.group(group);
                ids(&view["voters"]).contains(&node) || ids(&view["learners"]).contains(&node)
            })
            .count()
    };
    assert_eq!(replicas(4), 0);

    let run = |extra: &[&str]| {
        let mut args = vec!["rebalance", "--admin", &admin, "--yes", "-o", "json"];
        args.extend_from_slice(extra);
        let output = domicile_as_operator(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), events(&output.stdout), stderr)
    };
    let (code, dry, stderr) = run(&["--dry-run"]);
    assert_eq!(code, Some(0), "{stderr}");
    let plan = dry.iter().find(|event| event["event"] == "plan").unwrap();
    let planned = plan["steps"].as_array().unwrap();
    assert!(
        planned
            .iter()
            .any(|step| step["step"] == "add_learner" && step["node"] == 4),
        "{plan}"
    );
    assert!(
        planned.iter().all(|step| step["node"] != 5 && step["to"] != 5),
        "{plan}"
    );
    assert_eq!(replicas(4), 0, "a dry run changes nothing");

    let (code, events, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{}\n{stderr}", show(&events));
    let counts: Vec<usize> = (1..=4).map(replicas).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "EU replicas per node n1-n4: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 9, "{counts:?}");
    assert_eq!(replicas(5), 0, "Hamar is outside the EU");
    let attested = attestations(&events);
    let removed = steps_done(&events)
        .iter()
        .filter(|step| step["step"] == "remove_member")
        .count();
    assert!(removed > 0, "{}", show(&events));
    assert_eq!(attested.len(), removed, "{}", show(&events));
    for attestation in &attested {
        assert_eq!(attestation["state"], "purged", "{attestation}");
        let node = attestation["node"].as_u64().unwrap();
        assert!(
            !cluster.holds_on_disk(node, attestation["group"].as_str().unwrap()),
            "{attestation}"
        );
    }
    // Read back through every EU node: a group may now be led from Amsterdam.
    let client = cluster.client(&[1, 2, 3, 4], "EU").await;
    for user in 0..30 {
        let record = client.get(&format!("user-{user}"), "address").await.unwrap();
        assert_eq!(
            record.map(|record| record.value),
            Some(record_of(user)),
            "user-{user}"
        );
    }

    let (code, again, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(steps_done(&again).is_empty(), "{}", show(&again));
}
