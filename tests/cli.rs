//! The CLI as an operator runs it: the real binary against the example topology in `deploy/`. Waits on real
//! processes poll with deadlines on the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{cluster_files, domicile};

fn example() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/topology.example.toml")
        .display()
        .to_string()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn plan_migrates_the_legacy_group_out_of_the_us_and_exits_zero() {
    let output = domicile(&["placement", "plan", "--topology", &example()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(text.contains("group users-legacy (EEA)"), "{text}");
    assert!(text.contains("remove member n9 (ashburn, US)"), "{text}");

    let output = domicile(&["placement", "plan", "--topology", &example(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let steps = plan["steps"].as_array().unwrap();
    let legacy: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|step| step["group"] == "users-legacy")
        .collect();
    let first_removal = legacy
        .iter()
        .position(|step| step["step"] == "remove_member")
        .unwrap();
    let last_promotion = legacy
        .iter()
        .rposition(|step| step["step"] == "promote_voter")
        .unwrap();
    assert!(
        last_promotion < first_removal,
        "legacy voters leave only after inside voters are promoted"
    );
}

#[test]
fn plan_exits_one_with_the_reason_when_no_compliant_placement_exists() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("current.toml");
    std::fs::write(&current, "[health]\ndown_sites = [\"dublin-a\", \"dublin-b\"]\n").unwrap();
    let output = domicile(&[
        "placement",
        "plan",
        "--topology",
        &example(),
        "--current",
        current.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout(&output);
    assert!(text.contains("NOT COMPLIANT"), "{text}");
    assert!(
        text.contains("failure domains short") || text.contains("under-replicated"),
        "{text}"
    );
    assert!(
        !text.contains("ashburn, US) to voter"),
        "never looks outside: {text}"
    );
}

#[test]
fn check_admits_inside_members_and_refuses_outside_ones_with_json() {
    let output = domicile(&[
        "placement",
        "check",
        "--topology",
        &example(),
        "--group",
        "users-eu",
        "--members",
        "n1,n3,n7",
        "--leader",
        "n1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));

    let output = domicile(&[
        "placement",
        "check",
        "--topology",
        &example(),
        "--group",
        "users-eu",
        "--members",
        "1,3,5",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let refusal: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(refusal["group"], "users-eu");
    assert_eq!(refusal["node"], 5);
    assert_eq!(refusal["site"], "hamar");
    assert_eq!(refusal["country"], "NO");
    assert_eq!(refusal["jurisdiction"], "EU");
    assert_eq!(refusal["reason"], "outside_jurisdiction");

    // The legacy group may keep its US voters in place, but not hand them leadership.
    let output = domicile(&[
        "placement",
        "check",
        "--topology",
        &example(),
        "--group",
        "users-legacy",
        "--members",
        "9,10,11",
        "--leader",
        "9",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("leadership may not move outside"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn bad_input_names_the_file_and_line_and_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[site]]\nname = \"london\"\ncountry = \"UK\"\nnodes = [1]\n",
    )
    .unwrap();
    let output = domicile(&["placement", "plan", "--topology", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains(&format!("{}:3:", path.display())), "{error}");
    assert!(error.contains("GB"), "{error}");

    let output = domicile(&[
        "placement",
        "check",
        "--topology",
        &example(),
        "--group",
        "nope",
        "--members",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let output = domicile(&["placement", "plan", "--topology", "/nonexistent/topology.toml"]);
    assert_eq!(output.status.code(), Some(2));
}

/// The rate in the demo's `N records acknowledged in T s (R writes/s, ...` line.
fn demo_write_rate(text: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| line.contains("records acknowledged in"))
        .unwrap_or_else(|| panic!("no write rate in:\n{text}"));
    let rate = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(" writes/s"))
        .map(|(rate, _)| rate.trim())
        .unwrap_or_else(|| panic!("no write rate in `{line}`"));
    rate.parse()
        .unwrap_or_else(|error| panic!("write rate `{rate}`: {error}"))
}

/// The README's main command, shorter: five nodes in five sites as real processes, records written through
/// the client library, the legacy group moved out of Ashburn, users-eea split online, the Dublin A node SIGKILLed, the fence's refusal, its return (and purge), the
/// residency report.
#[test]
fn demo_runs_a_five_site_cluster_end_to_end() {
    let output = domicile(&["demo", "--records", "200"]);
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("200 records acknowledged"), "{text}");
    // The rate is reported, not judged: a timing threshold fails on a loaded machine (this one wrote 45
    // records/s at a load average of 10 on 2 cores, 2026-12-04, against 127-155 at 5.5). The release
    // demo's rate is measured in docs/performance.md ("The demo's write rate").
    let rate = demo_write_rate(&text);
    assert!(rate > 0.0, "the demo reported no write rate:\n{text}");
    assert!(text.contains("put p50 ") && text.contains("p99 "), "{text}");
    assert!(
        text.contains("read back all 200 acknowledged writes (linearizable): 0 lost"),
        "{text}"
    );
    // The legacy group is moved out of Ashburn by `placement apply`, and its US replica purged.
    assert!(
        text.contains("users-legacy voters now:") && text.contains("(all inside the EEA)"),
        "{text}"
    );
    // users-eea is split online into the spare users-eea-2, and the reads above found every record.
    assert!(
        text.contains(
            "done: epoch 2 published, `users-eea-2` holds the range and `users-eea` no longer does"
        ),
        "{text}"
    );
    assert!(text.contains("HTTP 403 Forbidden"), "{text}");
    assert!(
        text.contains("\"site\":\"ashburn\"") && text.contains("\"jurisdiction\":\"EU\""),
        "{text}"
    );
    assert!(
        text.contains("no replica of any group is outside its jurisdiction"),
        "{text}"
    );
    // The residency report ends with every node's audit trail verified with the CA certificate alone.
    assert!(text.contains("$ domicile audit verify"), "{text}");
    assert_eq!(text.matches(": intact: ").count(), 5, "{text}");
    // A US support tool reads an EU record with its phone number pseudonymised, and may not write.
    assert!(
        text.contains("`support-us` (US) reads: {\"phone\":\"psn:1:"),
        "{text}"
    );
    assert!(
        text.contains("and may not write: service `support-us` holds read access"),
        "{text}"
    );
    // The killed node comes back: a group that replaced it has its replica purged, never kept half-alive.
    assert!(text.contains("== n1 returns"), "{text}");
    assert!(!text.contains("NOT purged"), "{text}");
    assert!(text.contains("Stopping every node the demo started"), "{text}");
}

#[test]
fn certs_bind_the_site_and_country_from_the_topology() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_str().unwrap();
    let output = domicile(&["certs", "init", "--dir", certs]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = domicile(&[
        "certs",
        "node",
        "--id",
        "5",
        "--site",
        "hamar",
        "--topology",
        &example(),
        "--dir",
        certs,
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pem = std::fs::read_to_string(dir.path().join("node-5.pem")).unwrap();
    let der = der_of_pem(&pem);
    let identity = raft::identity::attested_identity(&der).unwrap();
    assert_eq!(
        (
            identity.node.0,
            identity.site.0.as_str(),
            identity.country.as_str()
        ),
        (5, "hamar", "NO")
    );
    // A node can't be certified for a site the topology doesn't place it at.
    let output = domicile(&[
        "certs",
        "node",
        "--id",
        "9",
        "--site",
        "dublin-a",
        "--topology",
        &example(),
        "--dir",
        certs,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not at site `dublin-a`"));
}

/// The DER body of a single-certificate PEM file.
fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn operator_verbs_say_clearly_when_the_cluster_is_unreachable() {
    for args in [
        vec!["status", "--admin", "127.0.0.1:1"],
        vec![
            "leader",
            "move",
            "--admin",
            "127.0.0.1:1",
            "--group",
            "users-eu",
            "--to",
            "2",
        ],
        vec!["node", "drain", "1", "--admin", "127.0.0.1:1"],
    ] {
        let output = domicile(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(
            error.contains("can't reach the admin endpoint at 127.0.0.1:1"),
            "{args:?}: {error}"
        );
    }
    let output = domicile(&["node"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--config"));
}

#[test]
fn a_node_with_a_bad_config_or_missing_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "cluster = \"x\"\nnode_id = 1\n").unwrap();
    let output = domicile(&["node", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("node.toml"),
        "names the file"
    );

    std::fs::copy(example(), dir.path().join("topology.example.toml")).unwrap();
    std::fs::write(
        &config,
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/node.example.toml"))
            .unwrap(),
    )
    .unwrap();
    let output = domicile(&["node", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("missing the cluster CA certificate") && error.contains("ca.pem"),
        "{error}"
    );
}

/// A one-node cluster's files in `dir` (see `common::cluster_files`).
fn single_node(dir: &std::path::Path) -> common::NodeFiles {
    let topology = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n";
    cluster_files(dir, "restart", topology, &[(1, "dublin-a")]).remove(0)
}

/// A node stopped with SIGTERM exits cleanly, and restarted on the same data directory it serves what it
/// stored before: the Raft log and the state machine recover from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_on_sigterm_and_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let node_files = single_node(dir.path());
    let listen = node_files.listen;
    let certs = path("certs");
    let certs = certs.to_str().unwrap();
    let start = || node_files.start();
    let connect = || async {
        client::Client::builder()
            .endpoints([format!("n1@{listen}")])
            .tls(client::ClientTls::from_dir(certs, "tests").unwrap())
            .default_jurisdiction("EU")
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .await
            .unwrap()
    };

    let mut node = start();
    let client = connect().await;
    client
        .put("user-1", "profile", b"before the restart".to_vec())
        .await
        .unwrap();
    drop(client);
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(node.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = node.0.wait().unwrap();
    assert!(status.success(), "a SIGTERM stop is clean: {status:?}");

    let node = start();
    let client = connect().await;
    let record = client.get("user-1", "profile").await.unwrap();
    assert_eq!(
        record.map(|record| record.value),
        Some(b"before the restart".to_vec())
    );
    drop(node);
}

#[test]
fn a_node_whose_port_is_taken_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let listen = single_node(dir.path()).listen;
    let _squatter = std::net::UdpSocket::bind(listen).unwrap();
    let output = domicile(&[
        "node",
        "--config",
        dir.path().join("node-1.toml").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains(&format!("can't listen on {listen}")) && error.contains("port in use"),
        "{error}"
    );
}

/// The breach of issue 20, as it was found: a US node's certificate, copied to where a client's goes,
/// asks an EU node for an EU user's records. Real processes, the CLI's certificates: the call is refused
/// with the node, site and country named, it shows in the node's status, and the service's own client is
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_us_nodes_certificate_gets_no_eu_record_as_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let topology = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n[[site]]\nname = \"ashburn\"\ncountry = \"US\"\nnodes = [9]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n";
    let mut files = cluster_files(dir.path(), "breach", topology, &[(1, "dublin-a"), (9, "ashburn")]);
    let dublin = files.remove(0);
    let certs = dir.path().join("certs");
    std::fs::copy(certs.join("node-9.pem"), certs.join("client-us9.pem")).unwrap();
    std::fs::copy(certs.join("node-9.key"), certs.join("client-us9.key")).unwrap();
    let _node = dublin.start();
    let connect = |name: &'static str| {
        let certs = certs.clone();
        let endpoint = dublin.endpoint();
        async move {
            client::Client::builder()
                .endpoints([endpoint])
                .tls(client::ClientTls::from_dir(certs, name).unwrap())
                .default_jurisdiction("EU")
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .await
        }
    };

    let service = connect("tests").await.unwrap();
    service
        .put("user-42", "phone", b"+353 1 555 0142".to_vec())
        .await
        .unwrap();
    match connect("us9").await {
        Err(client::ClientError::Forbidden {
            caller, jurisdiction, ..
        }) => {
            assert_eq!(caller, "n9 at ashburn (US)");
            assert_eq!(jurisdiction, "EU");
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("the US node's certificate connected as a client"),
    }
    let record = service.get("user-42", "phone").await.unwrap();
    assert_eq!(
        record.map(|record| record.value),
        Some(b"+353 1 555 0142".to_vec())
    );

    let admin = dublin.admin.to_string();
    let status = domicile(&["status", "--admin", &admin]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("client calls refused 1"), "{table}");
}

/// `status` shows every group of the topology: one whose only replica is on a stopped node is listed as
/// UNAVAILABLE with that member down, not left out of the table. And piped into a reader that stops
/// early, it ends without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_a_group_whose_replicas_are_all_down() {
    let dir = tempfile::tempdir().unwrap();
    let topology = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n[[site]]\nname = \"ashburn\"\ncountry = \"US\"\nnodes = [9]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n\n[[group]]\nname = \"users-us\"\njurisdiction = \"US\"\nvoters = 1\n";
    let files = cluster_files(dir.path(), "down", topology, &[(1, "dublin-a"), (9, "ashburn")]);
    let _dublin = files[0].start();
    let mut ashburn = files[1].start();
    let admin = files[0].admin.to_string();
    let table =
        |admin: &str| String::from_utf8_lossy(&domicile(&["status", "--admin", admin]).stdout).to_string();
    let row = |table: &str, group: &str| {
        table
            .lines()
            .find(|line| line.starts_with(group))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no row for {group} in:\n{table}"))
    };
    // Both groups elect their one voter.
    let mut both_up = String::new();
    for _ in 0..200 {
        both_up = table(&admin);
        if both_up.lines().filter(|line| line.contains(" ok ")).count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(row(&both_up, "users-us").contains(" ok "), "{both_up}");

    ashburn.sigkill();
    let after = table(&admin);
    let us = row(&after, "users-us");
    assert!(us.contains("UNAVAILABLE") && us.contains("down: n9"), "{after}");
    assert!(row(&after, "users-eu").contains(" ok "), "{after}");
    assert!(after.contains("unreachable: n9"), "{after}");

    // A reader that closed the pipe: `status` ends quietly with 141 (128 + SIGPIPE, as a Unix tool
    // killed by it), not a panic. (SIGPIPE itself stays ignored: see `write_report` in main.rs.)
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["status", "--admin", &admin])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}
