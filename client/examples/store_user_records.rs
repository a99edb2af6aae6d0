//! Store and read user records through the client library.
//!
//! `cargo run --example store_user_records` starts a three-site cluster in this process (two Dublin sites
//! and Hamar, real QUIC, TLS and disks in a temporary directory) and talks to it. To use a running cluster
//! instead, set `DOMICILE_ENDPOINTS=n1@127.0.0.1:7101,...` and `DOMICILE_CERTS=dir` (holding `ca.pem` and
//! `client-NAME.pem/.key` from `domicile certs client --name NAME`; `DOMICILE_CLIENT=NAME`, default `demo`).

// A tokio program against real sockets: it waits on tokio's clock and spawns tokio tasks directly.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientError, ClientTls};
use raft::identity::Validity;
use raft::local_cluster::LocalCluster;

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
[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
[[grant]]
service = "example"
jurisdiction = "EEA"
access = "read-write"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let (client, local) = match std::env::var("DOMICILE_ENDPOINTS") {
        Ok(endpoints) => {
            let certs = std::env::var("DOMICILE_CERTS").unwrap_or_else(|_| "certs".into());
            let name = std::env::var("DOMICILE_CLIENT").unwrap_or_else(|_| "demo".into());
            let client = Client::builder()
                .endpoints(endpoints.split(','))
                .tls(ClientTls::from_dir(certs, &name)?)
                .default_jurisdiction("EEA")
                .timeout(Duration::from_secs(3))
                .build()
                .await?;
            (client, None)
        }
        Err(_) => {
            let now = time::OffsetDateTime::now_utc();
            let validity = Validity {
                not_before: now - time::Duration::minutes(5),
                not_after: now + time::Duration::hours(1),
            };
            let config = Arc::new(raft::config::group_raft_config("example", 100, 500, 1000)?);
            let cluster = LocalCluster::start(TOPOLOGY, scratch.path(), validity, config)?;
            cluster.create_groups().await?;
            let (ca, certificate) = cluster.client_certificate("example")?;
            println!("started a local cluster: {}", cluster.endpoints().join(", "));
            let client = Client::builder()
                .endpoints(cluster.endpoints())
                .tls(ClientTls {
                    ca_cert_pem: ca,
                    cert_pem: certificate.cert_pem,
                    key_pem: certificate.key_pem,
                })
                .default_jurisdiction("EEA") // European users' data stays in the EEA by default
                .timeout(Duration::from_secs(3))
                .build()
                .await?;
            (client, Some(cluster))
        }
    };

    // Writes return the record's new revision.
    let revision = client
        .put("user-42", "profile", br#"{"name":"Ada"}"#.to_vec())
        .await?;
    client
        .put("user-42", "phone", b"+353 1 555 0142".to_vec())
        .await?;
    println!("stored user-42/profile at revision {revision}");

    // Reads are linearizable unless `.stale()` is asked for.
    let profile = client.get("user-42", "profile").await?.expect("just written");
    println!("read back: {}", String::from_utf8_lossy(&profile.value));

    // Compare-and-set on the revision: the second writer with the same expectation loses.
    let updated = client
        .compare_and_set(
            "user-42",
            "profile",
            Some(profile.revision),
            br#"{"name":"Ada L."}"#.to_vec(),
        )
        .await?;
    match client
        .compare_and_set("user-42", "profile", Some(profile.revision), b"stale".to_vec())
        .await
    {
        Err(ClientError::Conflict(reason)) => println!("second compare-and-set refused: {reason}"),
        other => println!("unexpected: {other:?}"),
    }
    println!("profile now at revision {updated}");

    // One user's records, by name.
    for (name, record) in client.scan_user("user-42").await? {
        println!(
            "  user-42/{name} (revision {}): {}",
            record.revision,
            String::from_utf8_lossy(&record.value)
        );
    }

    // A jurisdiction with no group fenced to it: the data is refused, not stored somewhere else.
    match client
        .in_jurisdiction("US")
        .put("user-7", "profile", b"{}".to_vec())
        .await
    {
        Err(error @ ClientError::Residency(_)) => println!("refused as it should be: {error}"),
        other => println!("unexpected: {other:?}"),
    }

    client.delete("user-42", "phone").await?;
    if let Some(cluster) = local {
        cluster.stop().await;
    }
    Ok(())
}
