//! `domicile certs init|node|client|operator`: a development CA, node certificates that attest each node's
//! site, client certificates (a service and optionally its country) and operator certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use placement::{Country, NodeId, SiteName};
use raft::identity::{CertifiedKey, ClientIdentity, ClusterCa, NodeIdentity, OperatorIdentity, Validity};
use time::{Duration, OffsetDateTime};

use crate::placement_cli::load;

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "dev")]
        cluster: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue node-N.pem / node-N.key, binding node id, site and the site's country from the topology.
    Node {
        #[arg(long)]
        id: NodeId,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "deploy/topology.example.toml")]
        topology: PathBuf,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
    /// Issue client-NAME.pem / client-NAME.key for a service that calls the client API (never Raft).
    Client {
        #[arg(long)]
        name: String,
        /// The country the service runs in (ISO 3166-1 alpha-2). A service outside a jurisdiction, or with
        /// no country, reads the fields the topology marks personal pseudonymised.
        #[arg(long)]
        country: Option<String>,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
    /// Issue operator-NAME.pem / operator-NAME.key: the admin endpoints' changes (learners, leadership,
    /// drains, drills, apply steps) require one.
    Operator {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Write pseudonym-JURISDICTION.key: the key outside readers' pseudonyms of personal fields are made
    /// with. Give the same file to every node inside the jurisdiction, and to no node outside it.
    PseudonymKey {
        #[arg(long)]
        jurisdiction: String,
        /// The key's number, in every pseudonym it makes: raise it when rotating.
        #[arg(long, default_value_t = 1)]
        id: u32,
        #[arg(long, default_value = "deploy/topology.example.toml")]
        topology: PathBuf,
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init { dir, cluster, days } => {
            let ca = ClusterCa::generate(&cluster, validity(days)?)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("can't create {}", dir.display()))?;
            write_pair(&dir, "ca", ca.certified_key())?;
            println!(
                "cluster CA `{cluster}` written to {}/ca.pem and ca.key (valid {days} days)",
                dir.display()
            );
        }
        CertsCommand::Node {
            id,
            site,
            topology,
            dir,
            days,
        } => {
            let (file, _, _) = load(&topology, None)?;
            let site = SiteName(site);
            let placed = file
                .topology
                .site(&site)
                .ok_or_else(|| anyhow!("{}: no site `{site}`", topology.display()))?;
            if !placed.nodes.contains(&id) {
                bail!(
                    "{}: node {id} is not at site `{site}` (its nodes: {:?})",
                    topology.display(),
                    placed.nodes
                );
            }
            let ca = load_ca(&dir)?;
            let identity = NodeIdentity {
                node: id,
                site,
                country: placed.country,
            };
            let node = ca.issue(&identity, validity(days)?)?;
            write_pair(&dir, &format!("node-{}", id.0), &node)?;
            println!(
                "{} written to {}/node-{}.pem and .key",
                identity.uri(),
                dir.display(),
                id.0
            );
        }
        CertsCommand::Client {
            name,
            country,
            dir,
            days,
        } => {
            let country = country
                .map(|code| Country::parse(&code).map_err(|error| anyhow!("--country {code}: {error}")))
                .transpose()?;
            let ca = load_ca(&dir)?;
            let identity = ClientIdentity {
                name: name.clone(),
                country,
            };
            let client = ca.issue_client(&identity, validity(days)?)?;
            write_pair(&dir, &format!("client-{name}"), &client)?;
            println!(
                "{} written to {}/client-{name}.pem and .key",
                identity.uri(),
                dir.display()
            );
        }
        CertsCommand::Operator { name, dir, days } => {
            let ca = load_ca(&dir)?;
            let identity = OperatorIdentity { name: name.clone() };
            let operator = ca.issue_operator(&identity, validity(days)?)?;
            write_pair(&dir, &format!("operator-{name}"), &operator)?;
            println!(
                "{} written to {}/operator-{name}.pem and .key",
                identity.uri(),
                dir.display()
            );
        }
        CertsCommand::PseudonymKey {
            jurisdiction,
            id,
            topology,
            dir,
        } => {
            let (file, _, _) = load(&topology, None)?;
            if !file
                .policies
                .values()
                .any(|policy| policy.jurisdiction.name() == jurisdiction)
            {
                bail!(
                    "{}: no group is fenced to jurisdiction `{jurisdiction}`",
                    topology.display()
                );
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("can't create {}", dir.display()))?;
            let path = dir.join(format!("pseudonym-{jurisdiction}.key"));
            if path.exists() {
                bail!(
                    "{} exists: a new key changes every pseudonym; move the old one away first if you mean to rotate",
                    path.display()
                );
            }
            crate::pseudonym_keys::generate(&path, &jurisdiction, id)?;
            println!(
                "pseudonym key {id} for `{jurisdiction}` written to {} (for nodes inside `{jurisdiction}` only)",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path)
            .with_context(|| format!("can't read {} (run `domicile certs init` first)", path.display()))
    };
    Ok(ClusterCa::from_pem(&read("ca.pem")?, &read("ca.key")?)?)
}

fn validity(days: i64) -> anyhow::Result<Validity> {
    if !(1..=3650).contains(&days) {
        bail!("--days must be between 1 and 3650");
    }
    // The one place the wall clock is read: the binary, never the libraries the simulator runs.
    let now = OffsetDateTime::now_utc();
    Ok(Validity {
        not_before: now - Duration::minutes(5),
        not_after: now + Duration::days(days),
    })
}

fn write_pair(dir: &Path, stem: &str, pair: &CertifiedKey) -> anyhow::Result<()> {
    let cert = dir.join(format!("{stem}.pem"));
    std::fs::write(&cert, &pair.cert_pem).with_context(|| format!("can't write {}", cert.display()))?;
    let key = dir.join(format!("{stem}.key"));
    write_private(&key, &pair.key_pem).with_context(|| format!("can't write {}", key.display()))
}

/// Private keys are created readable by their owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
