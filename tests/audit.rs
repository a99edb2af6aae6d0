//! The audit trail of a real node process, read as an auditor and a monitor would. An operator asks the
//! Dublin node, over its admin endpoint (mutual TLS, an operator certificate), to add the Ashburn node to
//! the EU group; the fence refuses (403). The node is then SIGKILLed: what it answered was already in its
//! trail. `domicile audit verify` finds the trail intact with the CA certificate alone (exit 0), `audit
//! export -o json` shows the request with the operator's name and address, the fence's refusal and the
//! outcome; a flipped byte is reported
//! by position (exit 1), and a trail that is not there is bad input (exit 2).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{AdminHttps, cluster_files, domicile, http};

const TOPOLOGY: &str = "[[site]]\nname = \"dublin-a\"\ncountry = \"IE\"\nnodes = [1]\n\n[[site]]\nname = \"ashburn\"\ncountry = \"US\"\nnodes = [9]\n\n[[group]]\nname = \"users-eu\"\njurisdiction = \"EU\"\nvoters = 1\n";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_admin_request_is_in_the_trail_an_auditor_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = cluster_files(
        dir.path(),
        "audited",
        TOPOLOGY,
        &[(1, "dublin-a"), (9, "ashburn")],
    );
    let dublin = files.remove(0);
    let mut node = dublin.start();
    let http = http();
    let ready = format!("http://{}/ready", dublin.admin);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http.get(&ready).send().await;
        if answer.is_ok_and(|answer| answer.status().is_success()) {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "node 1 is not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let operator = AdminHttps::new(dir.path(), &dublin, Some("operator-tests"));
    let answer = operator
        .client
        .post(operator.url("/groups/users-eu/learners"))
        .json(&serde_json::json!({ "node": 9 }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::FORBIDDEN);
    // Answered, so on disk: a crash now loses none of it.
    node.sigkill();

    let trail = dir.path().join("data-1/audit");
    let trail = trail.to_str().unwrap();
    let ca = dir.path().join("certs/ca.pem");
    let ca = ca.to_str().unwrap();
    let verified = domicile(&["audit", "verify", trail, "--ca", ca]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(
        stdout(&verified).contains("intact") && stdout(&verified).contains("domicile://v1/node/1/"),
        "{}",
        stdout(&verified)
    );

    let exported = domicile(&["audit", "export", trail, "-o", "json"]);
    assert_eq!(exported.status.code(), Some(0));
    let entries: Vec<serde_json::Value> = stdout(&exported)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    let request = kinds
        .iter()
        .position(|kind| *kind == "admin.request")
        .expect("the request");
    let refusal = kinds
        .iter()
        .position(|kind| *kind == "refused.membership")
        .expect("the fence's refusal");
    let outcome = kinds
        .iter()
        .position(|kind| *kind == "admin.outcome")
        .expect("the outcome");
    assert!(request < refusal && refusal < outcome, "{kinds:?}");
    let operator = &entries[request]["event"]["OperatorRequest"];
    assert_eq!(operator["operator"], "tests");
    assert!(
        operator["remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{operator}"
    );
    assert_eq!(entries[refusal]["event"]["Refused"]["node"], 9);
    assert_eq!(entries[refusal]["event"]["Refused"]["country"], "US");
    assert_eq!(entries[outcome]["event"]["OperatorOutcome"]["ok"], false);
    // A monitor resuming where it left off gets the rest of the chain, linked.
    let resumed = domicile(&[
        "audit",
        "export",
        trail,
        "--from",
        &refusal.to_string(),
        "-o",
        "json",
    ]);
    let first: serde_json::Value = serde_json::from_str(stdout(&resumed).lines().next().unwrap()).unwrap();
    assert_eq!(first["previous"], entries[refusal - 1]["hash"]);
    let later = domicile(&["audit", "export", trail, "--since", "2100-01-01T00:00:00Z"]);
    assert_eq!(stdout(&later), "", "nothing recorded after 2100");

    // Ask for 1,000 entries where there are fewer: the end is reported missing.
    let expecting = domicile(&["audit", "verify", trail, "--ca", ca, "--expect-entries", "1000"]);
    assert_eq!(expecting.status.code(), Some(1), "{}", stdout(&expecting));

    // A flipped byte in the refusal's entry: broken at that entry's position.
    let segment = std::fs::read_dir(trail)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let message = entries[refusal]["event"]["Refused"]["message"].as_str().unwrap();
    let at = bytes
        .windows(message.len())
        .position(|window| window == message.as_bytes())
        .expect("the refusal's message is in the segment");
    bytes[at] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let broken = domicile(&["audit", "verify", trail, "--ca", ca]);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    assert!(
        stdout(&broken).contains(&format!("BROKEN at entry {refusal}: altered")),
        "{}",
        stdout(&broken)
    );

    let nowhere = dir.path().join("no-such-trail");
    let missing = domicile(&["audit", "verify", nowhere.to_str().unwrap(), "--ca", ca]);
    assert_eq!(missing.status.code(), Some(2));
}
