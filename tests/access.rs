//! Who may touch what, on real `domicile node` processes through the `domicile record` verb: a US support
//! tool granted read on the EEA reads a record with its personal field pseudonymised — the same pseudonym
//! after the node restarts, since the key is on disk — is refused a write, and an Irish service reads it in
//! clear. A node outside the EEA refuses to start with the EEA's key.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{NodeFiles, cluster_files, domicile};

const TOPOLOGY: &str = r#"[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "ashburn"
country = "US"
nodes = [9]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 1

[[grant]]
service = "tests"
jurisdiction = "EEA"
access = "read-write"

[[grant]]
service = "billing"
jurisdiction = "EEA"
access = "read-write"

[[grant]]
service = "support-us"
jurisdiction = "EEA"
access = "read"

[[personal_data]]
jurisdiction = "EEA"
format = "json"
fields = ["phone"]
"#;

const PROFILE: &str = r#"{"name":"Ana","phone":"+353 1 555 0142"}"#;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `domicile record ARGS` as `client`, against `node`.
fn record(dir: &std::path::Path, node: &NodeFiles, client: &str, args: &[&str]) -> Output {
    let certs = dir.join("certs");
    let endpoint = node.endpoint();
    let mut all = vec!["record"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--client",
        client,
        "--certs",
        certs.to_str().unwrap(),
        "--endpoints",
        &endpoint,
        "--jurisdiction",
        "EEA",
    ]);
    domicile(&all)
}

/// Writes the profile as `billing`, retrying while the node elects itself (bounded: 30 s).
fn put_profile(dir: &std::path::Path, node: &NodeFiles) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let output = record(dir, node, "billing", &["put", "user-42", "profile", PROFILE]);
        if output.status.success() {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "the put never succeeded: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_profile(dir: &std::path::Path, node: &NodeFiles, client: &str) -> String {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let output = record(dir, node, client, &["get", "user-42", "profile"]);
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < give_up,
            "{client}'s get never succeeded: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_outside_reader_gets_stable_pseudonyms_and_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let files = cluster_files(dir.path(), "access", TOPOLOGY, &[(1, "dublin-a"), (9, "ashburn")]);
    let certs = dir.path().join("certs");
    let certs = certs.to_str().unwrap();
    let topology = dir.path().join("topology.toml");
    for (name, country) in [("billing", "IE"), ("support-us", "US")] {
        let output = domicile(&[
            "certs",
            "client",
            "--name",
            name,
            "--country",
            country,
            "--dir",
            certs,
        ]);
        assert!(output.status.success(), "{}", text(&output));
    }
    let output = domicile(&[
        "certs",
        "pseudonym-key",
        "--jurisdiction",
        "EEA",
        "--topology",
        topology.to_str().unwrap(),
        "--dir",
        certs,
    ]);
    assert!(output.status.success(), "{}", text(&output));
    // Made once: a second key would change every pseudonym, so the CLI won't overwrite it.
    let again = domicile(&[
        "certs",
        "pseudonym-key",
        "--jurisdiction",
        "EEA",
        "--topology",
        topology.to_str().unwrap(),
        "--dir",
        certs,
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    for node in &files {
        let config = std::fs::read_to_string(&node.config).unwrap();
        let config = config.replacen(
            "topology = \"topology.toml\"\n",
            "topology = \"topology.toml\"\npseudonym_keys = [\"certs/pseudonym-EEA.key\"]\n",
            1,
        );
        std::fs::write(&node.config, config).unwrap();
    }
    let (dublin, ashburn) = (&files[0], &files[1]);

    // The Ashburn node, given the EEA's key, refuses to start: the key may exist only inside the EEA.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(["node", "--config", ashburn.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("a pseudonym key for `EEA` on a node in US, outside it"),
        "{}",
        text(&refused)
    );

    let mut node = dublin.start();
    put_profile(dir.path(), dublin);
    assert_eq!(
        get_profile(dir.path(), dublin, "billing"),
        PROFILE,
        "an Irish reader sees it in clear"
    );
    let seen = get_profile(dir.path(), dublin, "support-us");
    assert!(
        // "555 0142" holds a space, which a pseudonym's hex never does: a digest that
        // happens to contain "555" cannot fail this.
        !seen.contains("555 0142"),
        "the phone number reached the US in clear: {seen}"
    );
    let object: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(object["name"], "Ana");
    let pseudonym = object["phone"].as_str().unwrap().to_string();
    assert!(pseudonym.starts_with("psn:1:"), "{seen}");

    let write = record(
        dir.path(),
        dublin,
        "support-us",
        &["put", "user-42", "profile", "{}"],
    );
    assert_eq!(write.status.code(), Some(1), "{}", text(&write));
    assert!(
        text(&write)
            .contains("service `support-us` holds read access to jurisdiction `EEA`; put needs write"),
        "{}",
        text(&write)
    );

    // SIGTERM and start again on the same files: the same pseudonym, and the record unchanged.
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(node.0.id() as libc::pid_t, libc::SIGTERM) };
    let _ = node.0.wait();
    let _node = dublin.start();
    let again = get_profile(dir.path(), dublin, "support-us");
    assert_eq!(again, seen, "pseudonyms are stable across a restart");
    assert_eq!(get_profile(dir.path(), dublin, "billing"), PROFILE);
}
