//! `domicile drill` against real `domicile node` processes: a site's outage, a leader's loss and a
//! partition, each passing on a healthy cluster with a new leader wherever one was lost; a drill SIGKILLed
//! while its fault is in force, after which the nodes heal by themselves at the deadline; a real outage
//! through `--fault-command`/`--heal-command` (SIGSTOP and SIGCONT of a node process); and bad input
//! refused before anything changes.
//!
//! Nothing here asserts a duration: the drills are short, and the waits poll with generous deadlines.

// Real processes on the wall clock: the tests poll admin endpoints until a condition holds (bounded).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, NodeFiles, cluster_files};
use serde_json::Value;

/// Four sites, an EEA group that may use all of them and an EU group that may not use Hamar (Norway).
const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
nodes = [3]

[[site]]
name = "frankfurt"
country = "DE"
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
leader_preference = ["dublin-a"]
"#;

const NODES: &[(u64, &str)] = &[(1, "dublin-a"), (2, "dublin-b"), (3, "hamar"), (4, "frankfurt")];

/// One cluster at a time: four nodes and a workload each are all two shared cores should carry.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    dir: tempfile::TempDir,
    files: Vec<NodeFiles>,
    processes: Vec<KillOnDrop>,
}

impl Cluster {
    /// Writes the files and starts every node. Leaders replace silent members only after a minute, so a
    /// drill's few seconds of fault never change a membership here.
    fn start(name: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let files = cluster_files(dir.path(), name, TOPOLOGY, NODES);
        for node in &files {
            let mut config = std::fs::read_to_string(&node.config).unwrap();
            config.push_str("\n[raft]\nrepair_down_after_ms = 60000\n");
            std::fs::write(&node.config, config).unwrap();
        }
        let processes = files.iter().map(NodeFiles::start).collect();
        Cluster {
            dir,
            files,
            processes,
        }
    }

    fn admin(&self) -> String {
        self.files[0].admin.to_string()
    }

    /// The CLI as this cluster's operator `tests`, whose certificate changes on the admin endpoints need
    /// (the nodes' isolation and heal requests).
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_domicile"));
        command
            .env("DOMICILE_CERTS", self.certs())
            .env("DOMICILE_OPERATOR", "tests");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn certs(&self) -> String {
        self.dir.path().join("certs").to_str().unwrap().to_string()
    }

    /// `domicile status -o json`, or null while the first node does not answer.
    fn status(&self) -> Value {
        let output = common::domicile(&["status", "--admin", &self.admin(), "-o", "json"]);
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    /// Until every node answers and every group has a leader (at most 60 s).
    async fn wait_until_led(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status();
            let answered = status["nodes"].as_array().map_or(0, Vec::len);
            let led = ["users-eea", "users-eu"]
                .iter()
                .all(|group| status["groups"][group]["leader"].is_u64());
            if answered == self.files.len() && led {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never settled: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The isolation each node reports in force (`GET /faults`), by node id; null where none.
    async fn faults(&self) -> Vec<(u64, Value)> {
        let mut faults = Vec::new();
        for node in &self.files {
            let answer = get(&format!("http://{}/faults", node.admin)).await;
            let fault = serde_json::from_str::<Value>(&answer)
                .map_or(Value::String("no answer".into()), |answer| {
                    answer["fault"].clone()
                });
            faults.push((node.id, fault));
        }
        faults
    }

    /// `drill VERB...` with this cluster's admin endpoint and client certificate, short phases, a light
    /// workload and JSON output; `extra` options replace the defaults they name.
    fn drill_args(&self, verb: &[&str], extra: &[&str]) -> Vec<String> {
        let defaults = [
            ("--admin", self.admin()),
            ("--client-certs", self.certs()),
            ("--client", "tests".to_string()),
            ("--before", "1s".to_string()),
            ("--duration", "6s".to_string()),
            ("--after", "1s".to_string()),
            ("--workers", "2".to_string()),
            ("--rate", "100".to_string()),
            ("--seed", "16".to_string()),
            ("--output", "json".to_string()),
        ];
        let mut args: Vec<String> = vec!["drill".into()];
        args.extend(verb.iter().map(|arg| arg.to_string()));
        for (option, value) in defaults {
            if !extra.contains(&option) {
                args.extend([option.to_string(), value]);
            }
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    fn drill(&self, verb: &[&str], extra: &[&str]) -> (Output, Value) {
        let args = self.drill_args(verb, extra);
        let output = self.command().args(&args).output().unwrap();
        let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output, report)
    }
}

/// A GET's body, or nothing if the endpoint does not answer.
async fn get(url: &str) -> String {
    // reqwest's TLS may be built with no crypto provider of its own: ring, as the rest of the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    match http.get(url).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn group<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|group| group["group"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// A passing report: every check passed, every group wrote and read back its acknowledged writes, its
/// history is linearizable, and nothing stood outside.
fn assert_passed(output: &Output, report: &Value) {
    assert_eq!(output.status.code(), Some(0), "{report:#}\n{}", stderr(output));
    assert_eq!(report["passed"], true, "{report:#}");
    for group in report["groups"].as_array().unwrap() {
        assert!(group["writes_acknowledged"].as_u64().unwrap() > 0, "{group}");
        assert_eq!(group["writes_lost"], serde_json::json!([]), "{group}");
        assert_eq!(group["linearizable"], "yes", "{group}");
        assert!(group["leader_after"].is_u64(), "{group}");
        let operations: u64 = group["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|phase| phase["operations"].as_u64().unwrap())
            .sum();
        assert!(operations > 0, "{group}");
    }
    assert_eq!(report["residency"]["violations_total"], 0, "{report:#}");
    assert!(report["residency"]["answers"].as_u64().unwrap() > 0);
    assert_eq!(report["cleanup"]["users_left"], serde_json::json!([]));
}

/// Where the fault took a group's leader, the report names a new one (not the lost leader) and its RTO.
fn assert_new_leader_where_lost(report: &Value, lost_nodes: &[u64]) {
    for group in report["groups"].as_array().unwrap() {
        let before = group["leader_before"].as_u64().unwrap();
        let lost = lost_nodes.contains(&before);
        assert_eq!(group["leader_lost"], lost, "{group}");
        if lost {
            let new = group["new_leader"].as_u64().unwrap_or_else(|| panic!("{group}"));
            assert!(!lost_nodes.contains(&new), "{group}");
            assert!(group["rto_ms"].is_u64(), "{group}");
        }
    }
}

async fn no_fault_anywhere(cluster: &Cluster) {
    for (node, fault) in cluster.faults().await {
        assert_eq!(fault, Value::Null, "n{node} reports a fault");
    }
}

/// The three drills, one after another on one cluster, each passing with a new leader wherever it took
/// one; and before them, bad input refused with a clear error and nothing isolated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_drill_passes_on_a_healthy_cluster_and_bad_input_changes_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("drills");
    cluster.wait_until_led().await;

    for (verb, message) in [
        (vec!["site-outage", "--site", "paris"], "unknown site `paris`"),
        (
            vec!["leader-loss", "--group", "users-us"],
            "unknown group `users-us`",
        ),
        (vec!["partition", "--isolate", "n9"], "unknown node n9"),
        (
            vec!["partition", "--isolate", "atlantis"],
            "unknown site or node `atlantis`",
        ),
    ] {
        let (output, _) = cluster.drill(&verb, &[]);
        assert_eq!(output.status.code(), Some(2), "{verb:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(message), "{verb:?}: {}", stderr(&output));
    }
    let (output, _) = cluster.drill(&["site-outage", "--site", "hamar"], &["--client", "nobody"]);
    assert_eq!(output.status.code(), Some(2));
    let message = "client service `nobody` may not both read and write in jurisdiction";
    assert!(stderr(&output).contains(message), "{}", stderr(&output));
    let elsewhere = cluster.dir.path().join("elsewhere");
    let elsewhere = elsewhere.to_str().unwrap();
    let (output, _) = cluster.drill(
        &["site-outage", "--site", "hamar"],
        &["--client-certs", elsewhere],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("the drill's client certificate: TLS setup"),
        "{}",
        stderr(&output)
    );
    let silent = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = common::domicile(&[
        "drill",
        "site-outage",
        "--site",
        "hamar",
        "--admin",
        &silent.to_string(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("can't reach the admin endpoint"),
        "{}",
        stderr(&output)
    );
    no_fault_anywhere(&cluster).await;

    // The leaders prefer Dublin A: its outage takes both.
    let (output, report) = cluster.drill(&["site-outage", "--site", "dublin-a"], &[]);
    assert_passed(&output, &report);
    assert_eq!(report["fault"]["nodes"], serde_json::json!([1]));
    assert_eq!(report["fault"]["method"], "isolation");
    assert_new_leader_where_lost(&report, &[1]);
    no_fault_anywhere(&cluster).await;

    cluster.wait_until_led().await;
    let (output, report) = cluster.drill(&["leader-loss", "--group", "users-eu"], &[]);
    assert_passed(&output, &report);
    let lost = report["fault"]["nodes"][0].as_u64().unwrap();
    assert_eq!(group(&report, "users-eu")["leader_before"], lost);
    assert_eq!(group(&report, "users-eu")["leader_lost"], true);
    assert_new_leader_where_lost(&report, &[lost]);

    // Hamar holds no EU replica; cut off, it takes no leadership with it.
    cluster.wait_until_led().await;
    let (output, report) = cluster.drill(&["partition", "--isolate", "hamar"], &[]);
    assert_passed(&output, &report);
    assert_eq!(report["fault"]["nodes"], serde_json::json!([3]));
    assert_new_leader_where_lost(&report, &[3]);
    assert_eq!(group(&report, "users-eu")["leader_lost"], false);
    no_fault_anywhere(&cluster).await;

    // `drill heal` answers for every node, isolated or not.
    let output = cluster.run(&["drill", "heal", "--admin", &cluster.admin()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let healed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(healed.matches("was not isolated").count(), 4, "{healed}");
}

/// The drill's CLI SIGKILLed while its fault is in force: the node it isolated heals by itself at the
/// deadline, its groups lead again and take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_killed_mid_fault_leaves_nodes_that_heal_by_themselves() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("killed");
    cluster.wait_until_led().await;
    let args = cluster.drill_args(&["leader-loss", "--group", "users-eea"], &["--duration", "8s"]);
    let progress = cluster.dir.path().join("drill.err");
    let child = cluster
        .command()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&progress).unwrap())
        .spawn()
        .unwrap();
    let mut drill = KillOnDrop(child);

    let deadline = Instant::now() + Duration::from_secs(30);
    let isolated = loop {
        let isolated: Vec<(u64, Value)> = cluster
            .faults()
            .await
            .into_iter()
            .filter(|(_, fault)| fault.is_object())
            .collect();
        if !isolated.is_empty() {
            break isolated;
        }
        assert!(Instant::now() < deadline, "the drill never injected its fault");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drill.sigkill();
    assert_eq!(isolated.len(), 1, "{isolated:?}");
    let (node, fault) = &isolated[0];
    assert_eq!(fault["peers"], "all", "{fault}");
    assert!(fault["remaining_ms"].as_u64().unwrap() <= 8000, "{fault}");

    // Nothing heals it but its own deadline (the drill is dead).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let faults = cluster.faults().await;
        if faults.iter().all(|(_, fault)| fault.is_null()) {
            break;
        }
        assert!(Instant::now() < deadline, "n{node} never healed: {faults:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_until_led().await;
    let metrics = get(&format!(
        "http://{}/metrics",
        cluster.files[*node as usize - 1].admin
    ))
    .await;
    assert!(metrics.contains("domicile_faults_injected_total 1"), "{metrics}");
    assert!(metrics.contains("domicile_fault_isolated 0"), "{metrics}");

    let client = client::Client::builder()
        .endpoints(cluster.files.iter().map(NodeFiles::endpoint))
        .tls(client::ClientTls::from_dir(cluster.dir.path().join("certs"), "tests").unwrap())
        .default_jurisdiction("EEA")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    client
        .put("user-1", "profile", b"after the drill".to_vec())
        .await
        .unwrap();
    let read = client.get("user-1", "profile").await.unwrap().unwrap();
    assert_eq!(read.value, b"after the drill");

    // The killed drill's records are still there; `drill cleanup` finds them by its run id, once.
    let progress = std::fs::read_to_string(&progress).unwrap();
    let run = progress
        .strip_prefix("drill ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no run id in {progress}"));
    let certs = cluster.certs();
    let cleanup = [
        "drill",
        "cleanup",
        "--run",
        run,
        "--admin",
        &cluster.admin(),
        "--client-certs",
        &certs,
        "--client",
        "tests",
    ];
    let deleted = |output: &Output| -> u64 {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let count = stdout.split(": ").nth(1).and_then(|rest| rest.split(' ').next());
        count
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"))
    };
    let output = cluster.run(&cleanup);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(deleted(&output) > 0, "the killed drill left no records?");
    let output = cluster.run(&cleanup);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(deleted(&output), 0, "cleaned up already");
}

/// A real outage instead of the nodes' isolation: the fault command SIGSTOPs the node of Dublin A (which
/// leads both groups), the heal command SIGCONTs it. The drill reports new leaders elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_command_runs_a_real_outage_and_the_heal_command_ends_it() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start("command");
    cluster.wait_until_led().await;
    let pid = cluster.processes[0].0.id();
    let stop = format!("test \"$DOMICILE_DRILL_NODES\" = 1 && kill -STOP {pid}");
    let cont = format!("kill -CONT {pid}");
    let (output, report) = cluster.drill(
        &["site-outage", "--site", "dublin-a"],
        &["--fault-command", &stop, "--heal-command", &cont],
    );
    assert_passed(&output, &report);
    assert_eq!(report["fault"]["method"], "command");
    assert_new_leader_where_lost(&report, &[1]);
    no_fault_anywhere(&cluster).await;

    // A fault command that fails: the drill stops, heals (runs the heal command) and says so.
    let (output, _) = cluster.drill(
        &["site-outage", "--site", "dublin-a"],
        &["--fault-command", "exit 3", "--heal-command", "true"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the fault command `exit 3` failed"),
        "{}",
        stderr(&output)
    );
}

/// The SIGKILL of a node the drill is watching: the fault command kills the process of Dublin A (which
/// leads both groups), the heal command starts it again. The drill polls every node's admin endpoint
/// over HTTPS on kept-alive connections, and a node killed under one resets it: a command that let
/// SIGPIPE end it (as report verbs once did, to stop quietly when piped into `head`) died of that reset,
/// silently, between its fault and its heal — so the node was never started again (the multi-host
/// suite's "never settled" failure). The drill must live through it, heal, and pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled_under_the_drill_is_healed_by_its_heal_command() {
    use std::os::unix::process::ExitStatusExt;
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("sigkill");
    cluster.wait_until_led().await;
    let pid = cluster.processes[0].0.id();
    let dir = cluster.dir.path().display().to_string();
    let binary = env!("CARGO_BIN_EXE_domicile");
    let config = cluster.files[0].config.display().to_string();
    // Stopped first, so the drill's requests to it are in its socket buffers, unread, when it is killed:
    // its kernel then resets those connections (a process that dies busy does the same).
    let kill =
        format!("test \"$DOMICILE_DRILL_NODES\" = 1 && kill -STOP {pid} && sleep 0.5 && kill -KILL {pid}");
    let restart = format!(
        "cd '{dir}' && '{binary}' node --config '{config}' >/dev/null 2>&1 & echo $! >'{dir}/restarted.pid'"
    );
    let (output, report) = cluster.drill(
        &["site-outage", "--site", "dublin-a"],
        &["--fault-command", &kill, "--heal-command", &restart],
    );
    // The node the heal command started is this test's to stop, whatever the outcome.
    let restarted = Restarted::read(&cluster.dir.path().join("restarted.pid"), &config);
    assert_eq!(
        output.status.signal(),
        None,
        "the drill died of a signal: {}",
        stderr(&output)
    );
    assert_passed(&output, &report);
    assert_new_leader_where_lost(&report, &[1]);
    assert!(
        restarted.0.is_some(),
        "the heal command did not run: {}",
        stderr(&output)
    );
    cluster.processes.remove(0);
    cluster.wait_until_led().await;
}

/// The node a heal command started (its pid, if that process is still that node's), SIGKILLed on drop.
struct Restarted(Option<libc::pid_t>);

impl Restarted {
    fn read(pid_file: &std::path::Path, config: &str) -> Restarted {
        let pid: Option<libc::pid_t> = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        // A pid is reused once its process ends: signal it only while it is still that node.
        let still_the_node = |pid: &libc::pid_t| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|command| String::from_utf8_lossy(&command).contains(config))
        };
        Restarted(pid.filter(still_the_node))
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) of the node process the drill's heal command started for this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
