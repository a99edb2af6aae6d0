//! `domicile record get|put|delete|scan`: a user's records through the client library, as a service sees
//! them — under a client certificate, within its grants, pseudonymised if it reads from outside.
//!
//! For operators and developers trying a cluster (the README's tour), like `etcdctl get` and `put`. The
//! endpoints, certificate directory (the global `--certs`) and client name come from flags or from the
//! same environment variables as the client example (`DOMICILE_ENDPOINTS`, `DOMICILE_CERTS`,
//! `DOMICILE_CLIENT`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use client::{Client, ClientError, ClientTls, Record};
use serde::Serialize;

use crate::operator_cli::Output;

#[derive(Args)]
pub struct Connection {
    /// Nodes to start from, `n1@127.0.0.1:7101,n2@...` (the client follows leaders from there).
    #[arg(long, env = "DOMICILE_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// The client service whose certificate to use.
    #[arg(long, env = "DOMICILE_CLIENT")]
    client: String,
    /// The jurisdiction the user's records are fenced to.
    #[arg(long, default_value = "EEA")]
    jurisdiction: String,
    /// The deadline of the call, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Subcommand)]
pub enum RecordCommand {
    /// Print one record's value (linearizable unless --stale).
    Get {
        user: String,
        record: String,
        /// Any replica may answer, possibly behind the leader.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write one record; prints its new revision.
    Put {
        user: String,
        record: String,
        value: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete one record.
    Delete {
        user: String,
        record: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print every record of one user.
    Scan {
        user: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Serialize)]
struct Shown {
    record: String,
    revision: u64,
    value: String,
}

fn shown(name: &str, record: &Record) -> Shown {
    Shown {
        record: name.to_string(),
        revision: record.revision,
        value: String::from_utf8_lossy(&record.value).into_owned(),
    }
}

/// `certs`: the directory holding ca.pem and client-NAME.pem/.key (the global `--certs`, or
/// `DOMICILE_CERTS`; `certs` if neither).
pub async fn run(command: RecordCommand, certs: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    let certs = certs.unwrap_or_else(|| "certs".into());
    let connection = match &command {
        RecordCommand::Get { connection, .. }
        | RecordCommand::Put { connection, .. }
        | RecordCommand::Delete { connection, .. }
        | RecordCommand::Scan { connection, .. } => connection,
    };
    let client = Client::builder()
        .endpoints(&connection.endpoints)
        .tls(ClientTls::from_dir(&certs, &connection.client)?)
        .default_jurisdiction(&connection.jurisdiction)
        .timeout(Duration::from_millis(connection.timeout_ms))
        .build()
        .await?;
    let json = matches!(connection.output, Output::Json);
    let outcome = match &command {
        RecordCommand::Get {
            user, record, stale, ..
        } => {
            let get = client.get(user, record);
            let found = if *stale { get.stale().await } else { get.await };
            found.map(|found| match found {
                Some(value) if json => outln!(
                    "{}",
                    serde_json::to_string(&shown(record, &value)).expect("serialisable")
                ),
                Some(value) => outln!("{}", String::from_utf8_lossy(&value.value)),
                None => eprintln!("no record `{record}` for user `{user}`"),
            })
        }
        RecordCommand::Put {
            user, record, value, ..
        } => client
            .put(user, record, value.clone().into_bytes())
            .await
            .map(|revision| {
                if json {
                    outln!("{}", serde_json::json!({ "revision": revision }));
                } else {
                    outln!("revision {revision}");
                }
            }),
        RecordCommand::Delete { user, record, .. } => {
            client.delete(user, record).await.map(|previous| match previous {
                Some(revision) => outln!("deleted revision {revision}"),
                None => outln!("no record `{record}` for user `{user}`"),
            })
        }
        RecordCommand::Scan { user, .. } => client.scan_user(user).await.map(|records| {
            for (name, record) in &records {
                if json {
                    outln!(
                        "{}",
                        serde_json::to_string(&shown(name, record)).expect("serialisable")
                    );
                } else {
                    outln!(
                        "{name}\t{}\t{}",
                        record.revision,
                        String::from_utf8_lossy(&record.value)
                    );
                }
            }
        }),
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The answer is "no": not granted, or no lawful place for the data.
        Err(error @ (ClientError::Forbidden { .. } | ClientError::Residency { .. })) => {
            eprintln!("refused: {error}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}
