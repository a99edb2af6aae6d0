//! The node's configuration file (TOML). See `deploy/node.example.toml` for a commented example.
//!
//! Relative paths are resolved against the directory of the configuration file, so a directory holding a
//! config, its certificates and the topology can be moved as a whole.
//!
//! A peer's address is an IP address and port, or a host name and port: the node resolves names when it
//! starts and again every few seconds (`node::follow_peer_names`), because an orchestrator keeps a pod's
//! name across restarts, not its address. Names only say where to dial: who answers is still checked
//! against the certificate, so a wrong DNS answer costs availability, never residency.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use placement::NodeId;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    node_id: u64,
    site: String,
    data_dir: PathBuf,
    /// Where the audit trail is kept; `<data_dir>/audit` if not given.
    audit_dir: Option<PathBuf>,
    listen: SocketAddr,
    #[serde(default = "default_admin")]
    admin: SocketAddr,
    /// HTTPS on the admin endpoint (`crate::admin_tls`); plain HTTP only, on loopback only, if false.
    #[serde(default = "default_admin_tls")]
    admin_tls: bool,
    topology: PathBuf,
    tls: RawTls,
    #[serde(default)]
    peer: Vec<RawPeer>,
    #[serde(default)]
    raft: RaftTuning,
    worker_threads: Option<usize>,
    /// Where incidents are pushed (`crate::incident_sink`); none if absent.
    incidents: Option<crate::incident_sink::RawIncidentSink>,
    /// Pseudonym key files (`domicile certs pseudonym-key`), one per jurisdiction this node is inside.
    #[serde(default)]
    pseudonym_keys: Vec<PathBuf>,
}

fn default_admin() -> SocketAddr {
    "127.0.0.1:7200".parse().expect("a literal address")
}

/// On: the node always has its certificate, and plain HTTP still answers reads from loopback.
fn default_admin_tls() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: u64,
    addr: PeerAddress,
    admin: Option<PeerAddress>,
}

/// Where a peer listens: `203.0.113.7:7100`, `[2001:db8::7]:7100`, or `domicile-hamar-0.domicile:7100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl FromStr for PeerAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<PeerAddress, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(PeerAddress::Ip(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not host:port or ip:port"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{text}`: the port is not a number from 0 to 65535"))?;
        if host.contains(':') || host.starts_with('[') {
            return Err(format!(
                "`{text}` is not an IP address and port (an IPv6 address goes in brackets)"
            ));
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!("`{text}`: `{host}` is not a valid host name"));
        }
        Ok(PeerAddress::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddress::Ip(addr) => write!(f, "{addr}"),
            PeerAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PeerAddress, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Raft timing, in milliseconds: the base each group's timing is stretched from to cover its sites' worst
/// round trip (`raft::config::covering_round_trip`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A member whose heartbeats go unacknowledged this long is replaced, inside the jurisdiction, by the
    /// group's leader (0: never; replacements are then only made on an operator's request).
    pub repair_down_after_ms: u64,
    /// How often this node asks whether replicas it holds were removed while it was away (those that know
    /// no leader or have not heard from one for this long), and purges those the group's leader shows a
    /// committed membership leaves out (0: never; see `raft::purge`).
    pub purge_check_ms: u64,
    /// The period of the session clock the groups led here tick (`raft::session_clock`): client sessions
    /// idle for `storage::apply::SESSION_IDLE_TICKS_MAX` ticks are forgotten (0: never tick; the dedup
    /// tables then only grow).
    pub session_tick_ms: u64,
    /// Whether a follower whose leader fell silent campaigns once the leader's lease has run out, in an
    /// order the voters share, rather than after a random election timeout more (`raft::prompt_election`).
    pub prompt_elections: bool,
    /// A snapshot is built every this many applied entries (`raft::config::SNAPSHOT_EVERY_ENTRIES`).
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the last snapshot, for replicas catching up after one
    /// (`raft::config::LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES`).
    pub log_kept_behind_snapshot_entries: u64,
    /// The megabytes a second (10^6 bytes) this node's snapshot builds may write, all groups together
    /// (`storage::build_pace`; 0: no limit). Installs, which someone waits for, are not limited.
    pub snapshot_build_mb_per_s: u64,
}

/// The default pace of a node's snapshot builds, in MB/s (`[raft] snapshot_build_mb_per_s`): where a
/// bulk writer beside a log's fsyncs begins to cost them (docs/storage.md, "Snapshots"), and TiKV's
/// default for its snapshots' I/O. A gigabyte's build takes at least 10 s.
pub const SNAPSHOT_BUILD_MB_PER_S: u64 = 100;

impl RaftTuning {
    /// `snapshot_build_mb_per_s` in bytes a second (`None`: no limit).
    pub fn snapshot_build_bytes_per_s(&self) -> Option<u64> {
        Some(self.snapshot_build_mb_per_s.saturating_mul(1_000_000)).filter(|&rate| rate > 0)
    }
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            repair_down_after_ms: 5000,
            purge_check_ms: 10_000,
            session_tick_ms: raft::session_clock::SESSION_TICK_EVERY.as_millis() as u64,
            prompt_elections: true,
            snapshot_every_entries: raft::config::SNAPSHOT_EVERY_ENTRIES,
            log_kept_behind_snapshot_entries: raft::config::LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES,
            snapshot_build_mb_per_s: SNAPSHOT_BUILD_MB_PER_S,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: PeerAddress,
    pub admin: Option<PeerAddress>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub cluster: String,
    pub node: NodeId,
    pub site: String,
    pub data_dir: PathBuf,
    /// The node's signed audit trail (`audit::AuditLog`): `<data_dir>/audit` by default.
    pub audit_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// HTTPS on the admin endpoint; if false, plain HTTP on a loopback address (checked here).
    pub admin_tls: bool,
    pub topology: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub peers: BTreeMap<NodeId, Peer>,
    pub raft: RaftTuning,
    /// The runtime's worker threads; `None`: one per core. Every hand-off of a task between two workers
    /// is a cross-thread wake-up (a context switch), so a node sharing its cores with other nodes or
    /// processes answers a lone client sooner with fewer workers than cores.
    pub worker_threads: Option<usize>,
    /// The incident webhook (`[incidents]`), if any.
    pub incidents: Option<crate::incident_sink::IncidentSinkConfig>,
    /// Pseudonym key files for the jurisdictions this node is inside (outside reads of personal fields).
    pub pseudonym_keys: Vec<PathBuf>,
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("can't read the node config {}", path.display()))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|error| {
            let line = error
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1)
                .unwrap_or(0);
            anyhow!("{}:{line}: {}", path.display(), error.message())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |relative: &Path| {
            if relative.is_absolute() {
                relative.to_path_buf()
            } else {
                base.join(relative)
            }
        };
        let mut peers = BTreeMap::new();
        for peer in &raw.peer {
            if peer.id == raw.node_id {
                bail!("{}: node {} lists itself as a peer", path.display(), raw.node_id);
            }
            if peers
                .insert(
                    NodeId(peer.id),
                    Peer {
                        addr: peer.addr.clone(),
                        admin: peer.admin.clone(),
                    },
                )
                .is_some()
            {
                bail!("{}: peer {} is listed twice", path.display(), peer.id);
            }
        }
        if !raw.admin_tls && !raw.admin.ip().to_canonical().is_loopback() {
            bail!(
                "{}: admin = \"{}\" is beyond loopback, and admin_tls = false: the admin endpoint would serve \
                 the cluster's state unencrypted to the network and could authenticate no operator. Set \
                 admin_tls = true (HTTPS with the node's certificate), or bind admin to 127.0.0.1 or [::1]",
                path.display(),
                raw.admin
            );
        }
        if raw.worker_threads == Some(0) {
            bail!("{}: worker_threads must be at least 1", path.display());
        }
        let tuning = raw.raft;
        if tuning.heartbeat_interval_ms == 0
            || tuning.election_timeout_min_ms <= tuning.heartbeat_interval_ms
            || tuning.election_timeout_max_ms <= tuning.election_timeout_min_ms
        {
            bail!(
                "{}: [raft] needs 0 < heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms",
                path.display()
            );
        }
        if tuning.snapshot_every_entries == 0 {
            bail!(
                "{}: [raft] snapshot_every_entries must be at least 1",
                path.display()
            );
        }
        let incidents = raw
            .incidents
            .as_ref()
            .map(|incidents| crate::incident_sink::IncidentSinkConfig::from_raw(incidents, base))
            .transpose()
            .map_err(|reason| anyhow!("{}: [incidents] {reason}", path.display()))?;
        let data_dir = resolve(&raw.data_dir);
        let audit_dir = raw
            .audit_dir
            .as_deref()
            .map_or_else(|| data_dir.join("audit"), resolve);
        Ok(NodeConfig {
            cluster: raw.cluster,
            node: NodeId(raw.node_id),
            site: raw.site,
            audit_dir,
            data_dir,
            listen: raw.listen,
            admin: raw.admin,
            admin_tls: raw.admin_tls,
            topology: resolve(&raw.topology),
            ca: resolve(&raw.tls.ca),
            cert: resolve(&raw.tls.cert),
            key: resolve(&raw.tls.key),
            peers,
            raft: tuning,
            worker_threads: raw.worker_threads,
            incidents,
            pseudonym_keys: raw.pseudonym_keys.iter().map(|path| resolve(path)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<NodeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        NodeConfig::load(&path)
    }

    const GOOD: &str = r#"
cluster = "test"
node_id = 1
site = "dublin-a"
data_dir = "data"
listen = "127.0.0.1:7101"
topology = "topology.toml"
[tls]
ca = "certs/ca.pem"
cert = "certs/node-1.pem"
key = "certs/node-1.key"
[[peer]]
id = 2
addr = "127.0.0.1:7102"
"#;

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let config = load(GOOD).unwrap();
        assert!(config.data_dir.ends_with("data") && config.data_dir.is_absolute());
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.admin.port(), 7200);
    }

    #[test]
    fn bad_configs_say_what_and_where() {
        let error = load(&GOOD.replace("node_id = 1", "node_id = \"one\""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("node.toml:3"), "{error}");
        let error = load(&GOOD.replace("id = 2", "id = 1")).unwrap_err().to_string();
        assert!(error.contains("itself"), "{error}");
        let error = load(&format!("{GOOD}\nbogus = 1\n")).unwrap_err().to_string();
        assert!(error.contains("bogus"), "{error}");
        let error = load(&format!("{GOOD}\n[raft]\nheartbeat_interval_ms = 900\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("heartbeat"), "{error}");
        let error = load(&GOOD.replace("topology =", "worker_threads = 0\ntopology ="))
            .unwrap_err()
            .to_string();
        assert!(error.contains("worker_threads"), "{error}");
    }

    #[test]
    fn peers_may_be_named_by_host_name() {
        let config = load(&GOOD.replace(
            "addr = \"127.0.0.1:7102\"",
            "addr = \"domicile-dublin-b-0.domicile:7100\"\nadmin = \"domicile-dublin-b-0.domicile:7200\"",
        ))
        .unwrap();
        let peer = &config.peers[&NodeId(2)];
        assert_eq!(
            peer.addr,
            PeerAddress::Name {
                host: "domicile-dublin-b-0.domicile".into(),
                port: 7100
            }
        );
        assert_eq!(
            peer.admin.as_ref().map(ToString::to_string).as_deref(),
            Some("domicile-dublin-b-0.domicile:7200")
        );
        let ip: PeerAddress = "[2001:db8::7]:7100".parse().unwrap();
        assert_eq!(ip, PeerAddress::Ip("[2001:db8::7]:7100".parse().unwrap()));
        assert_eq!(ip.to_string(), "[2001:db8::7]:7100");
    }

    #[test]
    fn a_bad_peer_address_says_what_and_where() {
        for (bad, expected) in [
            ("dublin-b", "not host:port"),
            ("dublin-b:http", "port"),
            ("dublin-b:70000", "port"),
            ("2001:db8::7:7100", "brackets"),
            ("-dublin:7100", "host name"),
            ("dublin_b:7100", "host name"),
            (":7100", "host name"),
        ] {
            let text = GOOD.replace("127.0.0.1:7102", bad);
            let error = load(&text).unwrap_err().to_string();
            assert!(
                error.contains("node.toml:14") && error.contains(expected),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_audit_trail_defaults_to_the_data_directory() {
        let config = load(GOOD).unwrap();
        assert_eq!(config.audit_dir, config.data_dir.join("audit"));
        let config = load(&GOOD.replace("topology =", "audit_dir = \"/var/audit/n1\"\ntopology =")).unwrap();
        assert_eq!(config.audit_dir, PathBuf::from("/var/audit/n1"));
    }

    #[test]
    fn worker_threads_default_to_one_per_core() {
        assert_eq!(load(GOOD).unwrap().worker_threads, None);
        let config = load(&GOOD.replace("topology =", "worker_threads = 1\ntopology =")).unwrap();
        assert_eq!(config.worker_threads, Some(1));
    }

    #[test]
    fn snapshot_builds_are_paced_unless_told_not_to_be() {
        let default = load(GOOD).unwrap().raft.snapshot_build_bytes_per_s();
        assert_eq!(default, Some(SNAPSHOT_BUILD_MB_PER_S * 1_000_000));
        for (setting, expected) in [("0", None), ("40", Some(40_000_000))] {
            let text = format!("{GOOD}[raft]\nsnapshot_build_mb_per_s = {setting}\n");
            let config = load(&text).unwrap();
            assert_eq!(config.raft.snapshot_build_bytes_per_s(), expected, "{setting}");
        }
    }
}
