//! A whole cluster in one process, on real QUIC sockets over loopback and real disks: for tests, examples
//! and benchmarks of the layers above (client library, operator tools). Each node is a [`Host`] behind a
//! [`NodeService`], exactly as in `domicile node`, with a switchable fault layer on its transport, and
//! optionally its own signed audit trail on disk ([`LocalCluster::start_audited`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use placement::{NodeId, TopologyFile};

use crate::bootstrap::open_initial_groups;
use crate::client_access::ClientAccess;
use crate::config::TokioConfig;
use crate::directory::Directory;
use crate::host::{Host, HostError};
use crate::identity::{
    CertifiedKey, ClientIdentity, ClusterCa, IdentityError, NodeIdentity, TlsError, Validity, tls_configs,
};
use crate::pseudonym::{KEY_BYTES, PseudonymKey, PseudonymKeys};
use crate::quic::{Dialer, LateHandler, QuicConfig, QuicNode};
use crate::routing::Router;
use crate::service::NodeService;
use crate::stores::DiskStores;
use crate::transport::Faulty;

pub type LocalHost = Host<TokioConfig, Faulty<QuicNode>, DiskStores>;
pub type LocalService = NodeService<TokioConfig, Faulty<QuicNode>, DiskStores>;

pub struct LocalNode {
    pub id: NodeId,
    pub host: Arc<LocalHost>,
    pub quic: Arc<QuicNode>,
    pub faults: Arc<Faulty<QuicNode>>,
    /// The node's front door, with its directory of shard maps.
    pub service: Arc<LocalService>,
    /// The node's audit trail, in `<dir>/n<id>/audit`, when started with one.
    pub audit: Option<Arc<::audit::AuditLog>>,
}

pub struct LocalCluster {
    pub file: TopologyFile,
    pub ca: ClusterCa,
    pub nodes: BTreeMap<NodeId, LocalNode>,
    validity: Validity,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("topology: {0}")]
    Topology(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Start(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("audit trail: {0}")]
    Audit(String),
}

impl LocalCluster {
    /// Starts every node of `topology`, each with its own directory under `dir`. Call inside a tokio
    /// runtime. `validity` is the certificates' window (the caller reads the clock, not this crate).
    pub fn start(
        topology: &str,
        dir: &Path,
        validity: Validity,
        raft_config: Arc<openraft::Config>,
    ) -> Result<LocalCluster, LocalClusterError> {
        LocalCluster::start_with(topology, dir, validity, raft_config, None)
    }

    /// As [`LocalCluster::start`], each node also keeping its audit trail in `<dir>/n<id>/audit`, signed
    /// with its certificate's key and stamped by `clock` (the caller's: this crate reads none).
    pub fn start_audited(
        topology: &str,
        dir: &Path,
        validity: Validity,
        raft_config: Arc<openraft::Config>,
        clock: ::audit::Clock,
    ) -> Result<LocalCluster, LocalClusterError> {
        LocalCluster::start_with(topology, dir, validity, raft_config, Some(clock))
    }

    fn start_with(
        topology: &str,
        dir: &Path,
        validity: Validity,
        raft_config: Arc<openraft::Config>,
        audit_clock: Option<::audit::Clock>,
    ) -> Result<LocalCluster, LocalClusterError> {
        let file =
            TopologyFile::parse(topology).map_err(|error| LocalClusterError::Topology(error.to_string()))?;
        let shared_topology = Arc::new(file.topology.clone());
        let ca = ClusterCa::generate("local", validity)?;
        let router = Router::new(file.policies.values())
            .map_err(|error| LocalClusterError::Topology(error.to_string()))?;
        // One pseudonym key per jurisdiction that declares personal fields, drawn here, given to the nodes
        // inside it only — as an operator distributes `domicile certs pseudonym-key` files.
        let mut secrets = BTreeMap::new();
        for policy in file.policies.values() {
            let name = policy.jurisdiction.name();
            if file.access.personal_fields(name).is_some() && !secrets.contains_key(name) {
                let mut secret = [0; KEY_BYTES];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| LocalClusterError::Start("no randomness for a pseudonym key".into()))?;
                secrets.insert(name.to_string(), (policy.jurisdiction.clone(), secret));
            }
        }
        let mut nodes = BTreeMap::new();
        for site in file.topology.sites() {
            for &id in &site.nodes {
                let identity = NodeIdentity {
                    node: id,
                    site: site.name.clone(),
                    country: site.country,
                };
                let certified = ca.issue(&identity, validity)?;
                let tls = tls_configs(&ca.certified_key().cert_pem, &certified)?;
                let handler = Arc::new(LateHandler::<LocalService>::default());
                let loopback = "127.0.0.1:0".parse().expect("a literal address");
                let quic = QuicNode::bind(
                    identity.clone(),
                    loopback,
                    &tls,
                    shared_topology.clone(),
                    BTreeMap::new(),
                    QuicConfig::loopback(),
                    handler.clone(),
                )
                .map_err(|error| LocalClusterError::Start(error.to_string()))?;
                let faults = Arc::new(Faulty::new(quic.clone()));
                let stores = DiskStores::open(&dir.join(format!("n{}", id.0)), identity.node)
                    .map_err(|error| LocalClusterError::Start(error.to_string()))?;
                let groups = file
                    .policies
                    .values()
                    .map(|policy| (policy.clone(), file.legacy_members(&policy.group)));
                let mut host = Host::new(
                    identity,
                    shared_topology.clone(),
                    groups,
                    faults.clone(),
                    stores,
                    raft_config.clone(),
                );
                let audit = match &audit_clock {
                    Some(clock) => {
                        let log = open_audit(&dir.join(format!("n{}", id.0)), &certified, clock.clone())?;
                        host = host.with_audit(log.clone());
                        Some(log)
                    }
                    None => None,
                };
                let host = Arc::new(host);
                let directory = Directory::new(id, &file.topology, router.clone());
                let mut keys = PseudonymKeys::default();
                for (name, (jurisdiction, secret)) in &secrets {
                    if jurisdiction.contains(site.country) {
                        keys.insert(PseudonymKey::new(name, 1, secret))
                            .map_err(LocalClusterError::Start)?;
                    }
                }
                let access = ClientAccess::new(file.access.clone(), file.policies.values(), keys);
                let service = Arc::new(NodeService::new(host.clone(), directory, access));
                handler.install(service.clone());
                nodes.insert(
                    id,
                    LocalNode {
                        id,
                        host,
                        quic,
                        faults,
                        service,
                        audit,
                    },
                );
            }
        }
        for node in nodes.values() {
            for peer in nodes.values() {
                let addr = peer
                    .quic
                    .local_addr()
                    .map_err(|error| LocalClusterError::Start(error.to_string()))?;
                node.quic.learn_address(peer.id, addr);
            }
        }
        Ok(LocalCluster {
            file,
            ca,
            nodes,
            validity,
        })
    }

    /// Opens and bootstraps every group's initial placement, as `domicile node` does at start-up.
    pub async fn create_groups(&self) -> Result<(), LocalClusterError> {
        for node in self.nodes.values() {
            open_initial_groups(&node.host, &self.file).await?;
        }
        Ok(())
    }

    /// `n1@127.0.0.1:PORT` for every node still listening.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter_map(|node| {
                node.quic
                    .local_addr()
                    .ok()
                    .map(|addr| format!("n{}@{addr}", node.id.0))
            })
            .collect()
    }

    /// The CA certificate and a client certificate for `name`, as PEM.
    pub fn client_certificate(&self, name: &str) -> Result<(String, CertifiedKey), LocalClusterError> {
        self.client_certificate_for(&ClientIdentity::named(name))
    }

    /// The CA certificate and a client certificate for `identity` (a service, maybe with its country).
    pub fn client_certificate_for(
        &self,
        identity: &ClientIdentity,
    ) -> Result<(String, CertifiedKey), LocalClusterError> {
        let client = self.ca.issue_client(identity, self.validity)?;
        Ok((self.ca.certified_key().cert_pem.clone(), client))
    }

    /// A certificate for node `id` as the cluster CA issues it to that node (to test what a node's
    /// certificate may not do, e.g. make client calls).
    pub fn node_certificate(&self, id: NodeId) -> Result<CertifiedKey, LocalClusterError> {
        let site = self
            .file
            .topology
            .site_of(id)
            .ok_or_else(|| LocalClusterError::Topology(format!("{id} is in no site")))?;
        let identity = NodeIdentity {
            node: id,
            site: site.name.clone(),
            country: site.country,
        };
        Ok(self.ca.issue(&identity, self.validity)?)
    }

    /// A client-only QUIC endpoint presenting `certificate` to every node of the cluster: the client
    /// library's transport, for tests that speak the wire protocol directly.
    pub fn dialer(&self, certificate: &CertifiedKey) -> Result<Dialer, LocalClusterError> {
        let tls = tls_configs(&self.ca.certified_key().cert_pem, certificate)?;
        let mut addresses = BTreeMap::new();
        for node in self.nodes.values() {
            let addr = node
                .quic
                .local_addr()
                .map_err(|error| LocalClusterError::Start(error.to_string()))?;
            addresses.insert(node.id.0, addr);
        }
        Dialer::client(&tls, addresses, QuicConfig::loopback())
            .map_err(|error| LocalClusterError::Start(error.to_string()))
    }

    /// Stops one node as a crash would look to its peers: its groups stop and its endpoint closes.
    pub async fn stop_node(&self, id: NodeId) {
        if let Some(node) = self.nodes.get(&id) {
            node.host.shutdown().await;
            node.quic.close();
        }
    }

    pub async fn stop(&self) {
        for &id in self.nodes.keys() {
            self.stop_node(id).await;
        }
    }
}

fn open_audit(
    node_dir: &Path,
    certified: &CertifiedKey,
    clock: ::audit::Clock,
) -> Result<Arc<::audit::AuditLog>, LocalClusterError> {
    let signer = ::audit::Signer::from_pem(&certified.cert_pem, &certified.key_pem)
        .map_err(|error| LocalClusterError::Audit(error.to_string()))?;
    let config = ::audit::AuditConfig::new(node_dir.join("audit"));
    ::audit::AuditLog::open(config, signer, clock)
        .map(Arc::new)
        .map_err(|error| LocalClusterError::Audit(error.to_string()))
}
