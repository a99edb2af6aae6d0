//! The two systems behind one interface: `K` connections, each shared by the clients mapped to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use client::{Client, ClientTls};
#[cfg(feature = "etcd")]
use etcd_client::{Certificate, ConnectOptions, Identity, KvClient, TlsOptions};

/// The record name under which Domicile stores the benchmark's keys (the key is the user id).
const RECORD: &str = "v";

pub enum Target {
    Domicile(Vec<Arc<Client>>),
    #[cfg(feature = "etcd")]
    Etcd(Vec<KvClient>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Get,
}

impl Target {
    /// `connections` Domicile clients, each with its own QUIC endpoint (one connection per node).
    pub async fn domicile(
        endpoints: &[String],
        certs: &std::path::Path,
        name: &str,
        connections: usize,
    ) -> anyhow::Result<Target> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let tls = ClientTls::from_dir(certs, name)?;
            let client = Client::builder()
                .endpoints(endpoints)
                .tls(tls)
                .default_jurisdiction("EEA")
                .timeout(Duration::from_secs(10))
                .build()
                .await
                .context("connecting to Domicile")?;
            clients.push(Arc::new(client));
        }
        Ok(Target::Domicile(clients))
    }

    #[cfg(feature = "etcd")]
    /// `connections` etcd clients (each one HTTP/2 connection), all to `endpoints` — the benchmark
    /// passes the leader's alone, etcd's best case: no follower forwards a request.
    pub async fn etcd(
        endpoints: &[String],
        certs: &std::path::Path,
        connections: usize,
    ) -> anyhow::Result<Target> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let client = etcd_client::Client::connect(endpoints, Some(etcd_options(certs)?))
                .await
                .context("connecting to etcd")?;
            clients.push(client.kv_client());
        }
        Ok(Target::Etcd(clients))
    }

    pub fn connections(&self) -> usize {
        match self {
            Target::Domicile(clients) => clients.len(),
            #[cfg(feature = "etcd")]
            Target::Etcd(clients) => clients.len(),
        }
    }

    /// One operation on connection `connection`. A get of a key that was never written is an error: the
    /// benchmark reads only keys it wrote, so a miss means a lost write.
    pub async fn op(&self, connection: usize, op: Op, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match (self, op) {
            (Target::Domicile(clients), Op::Put) => {
                let client = &clients[connection % clients.len()];
                client.put(key, RECORD, value.to_vec()).await?;
            }
            (Target::Domicile(clients), Op::Get) => {
                let client = &clients[connection % clients.len()];
                if client.get(key, RECORD).await?.is_none() {
                    bail!("key {key} missing");
                }
            }
            #[cfg(feature = "etcd")]
            (Target::Etcd(clients), Op::Put) => {
                let mut kv = clients[connection % clients.len()].clone();
                kv.put(key, value, None).await?;
            }
            #[cfg(feature = "etcd")]
            (Target::Etcd(clients), Op::Get) => {
                let mut kv = clients[connection % clients.len()].clone();
                // Linearizable is etcd's default (serializable: false): a ReadIndex round on the leader.
                if kv.get(key, None).await?.kvs().is_empty() {
                    bail!("key {key} missing");
                }
            }
        }
        Ok(())
    }
}

#[cfg(feature = "etcd")]
fn etcd_options(certs: &std::path::Path) -> anyhow::Result<ConnectOptions> {
    let read =
        |name: &str| std::fs::read_to_string(certs.join(name)).with_context(|| format!("reading {name}"));
    let tls = TlsOptions::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("client.pem")?, read("client.key")?));
    Ok(ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(Duration::from_secs(10))
        .with_connect_timeout(Duration::from_secs(5)))
}

/// Which of `endpoints` is etcd's leader now.
#[cfg(feature = "etcd")]
pub async fn etcd_leader(endpoints: &[String], certs: &std::path::Path) -> anyhow::Result<String> {
    for _ in 0..50 {
        for endpoint in endpoints {
            let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(etcd_options(certs)?)).await
            else {
                continue;
            };
            if let Ok(status) = client.status().await
                && let Some(header) = status.header()
                && status.leader() != 0
                && status.leader() == header.member_id()
            {
                return Ok(endpoint.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no etcd leader among {endpoints:?} after 10 s")
}
