//! The automatic split trigger on real node processes (`domicile shard auto-split`, issue 19): a group
//! holding more records than the threshold is split into the jurisdiction's spare group, every record
//! still readable through the client afterwards; run again, the group still over has no spare left and
//! is named, not split; under the threshold nothing happens; bad input changes nothing.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{NodeFiles, domicile_as_operator, three_eu_sites, wait_ready};
use serde_json::Value;

/// On [`common::three_eu_sites`]: one group, and a spare one for splits.
const GROUPS: &str = r#"
[[group]]
name = "users-eu-1"
jurisdiction = "EU"
voters = 3

[[group]]
name = "users-eu-2"
jurisdiction = "EU"
voters = 3
shard = "reserve"
"#;

/// Runs `domicile shard auto-split` with `args` (JSON lines out) off the async runtime.
async fn auto_split(dir: &std::path::Path, admin: &str, args: &[&str]) -> (Option<i32>, Vec<Value>, String) {
    let mut all = vec![
        "shard",
        "auto-split",
        "--jurisdiction",
        "EU",
        "--admin",
        admin,
        "--once",
        "--yes",
        "--window-s",
        "1",
        "-o",
        "json",
    ];
    all.extend_from_slice(args);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    let dir = dir.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        domicile_as_operator(&dir, &args)
    })
    .await
    .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (
        output.status.code(),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn end_of(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|line| line["event"] == "end")
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_its_record_threshold_is_split_into_the_spare_group() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_eu_sites(dir.path(), "autosplit", GROUPS);
    let _processes: Vec<_> = files.iter().map(NodeFiles::start).collect();
    for node in &files {
        wait_ready(node).await;
    }
    let admin = files[0].admin.to_string();
    let endpoints: Vec<String> = files.iter().map(NodeFiles::endpoint).collect();
    let tls = client::ClientTls::from_dir(dir.path().join("certs").to_str().unwrap(), "tests").unwrap();
    let client = client::Client::builder()
        .endpoints(endpoints)
        .tls(tls)
        .default_jurisdiction("EU")
        .timeout(Duration::from_secs(15))
        .build()
        .await
        .unwrap();
    let users: Vec<String> = (0..300).map(|n| format!("user-{n}")).collect();
    for user in &users {
        client
            .put(user, "profile", user.as_bytes().to_vec())
            .await
            .unwrap();
    }

    // Bad input: no threshold, an unknown jurisdiction. Exit 2, nothing changed.
    let (code, _, stderr) = auto_split(dir.path(), &admin, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no threshold"), "{stderr}");

    // Under the threshold: nothing to do.
    let (code, lines, stderr) = auto_split(dir.path(), &admin, &["--max-records", "1000"]).await;
    assert_eq!(code, Some(0), "{lines:?} {stderr}");
    assert!(
        end_of(&lines)["message"]
            .as_str()
            .unwrap()
            .contains("nothing to split"),
        "{lines:?}"
    );

    // Over it: users-eu-1 (300 records and the map) is split into users-eu-2.
    let (code, lines, stderr) = auto_split(dir.path(), &admin, &["--max-records", "100"]).await;
    assert_eq!(code, Some(0), "{lines:?} {stderr}");
    assert!(
        lines.iter().any(|line| line["event"] == "note"
            && line["message"].as_str().is_some_and(
                |message| message.starts_with("splitting `users-eu-1`") && message.contains("users-eu-2")
            )),
        "{lines:?}"
    );
    let plan = lines.iter().find(|line| line["event"] == "plan").unwrap();
    assert_eq!(
        (&plan["loser"], &plan["gainer"], &plan["to_epoch"]),
        (
            &Value::from("users-eu-1"),
            &Value::from("users-eu-2"),
            &Value::from(2)
        )
    );
    let verified = lines.iter().find(|line| line["event"] == "verified").unwrap();
    let moved = verified["records"].as_u64().unwrap();
    assert!((50..=250).contains(&moved), "about half of 300 moved: {moved}");

    // Every record reads back, wherever it lives now.
    for user in &users {
        let record = client.get(user, "profile").await.unwrap();
        assert_eq!(
            record.map(|record| record.value),
            Some(user.as_bytes().to_vec()),
            "{user}"
        );
    }

    // Still over, but no spare group is left: named, not split.
    let (code, lines, stderr) = auto_split(dir.path(), &admin, &["--max-records", "10"]).await;
    assert_eq!(code, Some(1), "{lines:?} {stderr}");
    let message = end_of(&lines)["message"].as_str().unwrap().to_string();
    assert!(message.contains("no spare group"), "{message}");
}
