//! Running the real `domicile` binary from tests: its CLI, and clusters of node processes on loopback whose
//! files (topology, CA, certificates, configurations) a test writes into its own temporary directory.
#![allow(dead_code)]

pub mod failover;
pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn domicile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .output()
        .expect("the domicile binary runs")
}

/// The operator's environment for the CLI, as an SRE sets it once per shell: the certificates of the
/// cluster in `dir` (`dir/certs`) and the operator `tests` that [`cluster_files`] certifies.
pub fn operator_env(dir: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("DOMICILE_CERTS", dir.join("certs")),
        ("DOMICILE_OPERATOR", PathBuf::from("tests")),
    ]
}

/// The CLI as the operator `tests` of the cluster in `dir`.
pub fn domicile_as_operator(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .envs(operator_env(dir))
        .output()
        .expect("the domicile binary runs")
}

/// A plain HTTP client, for reads from loopback (reqwest's TLS has no crypto provider of its own: ring).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Waits until `node` answers its readiness probe (it serves its groups), for up to 30 s.
pub async fn wait_ready(node: &NodeFiles) {
    let url = format!("http://{}/ready", node.admin);
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = http().get(&url).send().await;
        if answer.is_ok_and(|answer| answer.status().is_success()) {
            return;
        }
        assert!(tokio::time::Instant::now() < give_up, "n{} is not ready", node.id);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An HTTPS client for one node's admin endpoint, trusting the cluster CA in `dir/certs` and presenting
/// `dir/certs/{cert}.pem` (e.g. `operator-tests`, `client-tests`, `node-2`) if given. The node's
/// certificate names `node-ID.domicile.internal`, so that is the host of [`AdminHttps::url`], resolved
/// to the node's admin address: the standard webpki check, host name included.
pub struct AdminHttps {
    pub client: reqwest::Client,
    host: String,
    port: u16,
}

impl AdminHttps {
    pub fn new(dir: &Path, node: &NodeFiles, cert: Option<&str>) -> AdminHttps {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let certs = dir.join("certs");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(certs.join("ca.pem")).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            Some(name) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(certs.join(format!("{name}.pem"))).unwrap()],
                    PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let host = format!("node-{}.domicile.internal", node.id);
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .resolve(&host, node.admin)
            .tls_backend_preconfigured(config)
            .build()
            .unwrap();
        AdminHttps {
            client,
            host,
            port: node.admin.port(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.port)
    }
}

/// Has `node` stop exchanging Raft traffic with every peer for `duration_ms` (`POST /faults/isolate`, as
/// the operator `operator-tests` of the cluster in `dir`); it heals by itself at the deadline.
pub async fn isolate_from_all(dir: &Path, node: &NodeFiles, duration_ms: u64) {
    let operator = AdminHttps::new(dir, node, Some("operator-tests"));
    let response = operator
        .client
        .post(operator.url("/faults/isolate"))
        .json(&serde_json::json!({"peers": "all", "duration_ms": duration_ms}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// One node's files and addresses.
pub struct NodeFiles {
    pub id: u64,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

impl NodeFiles {
    /// The client library's endpoint form, `nID@addr`.
    pub fn endpoint(&self) -> String {
        format!("n{}@{}", self.id, self.listen)
    }

    /// Starts the node's process; it is killed (by pid) when the handle drops.
    pub fn start(&self) -> KillOnDrop {
        let child = Command::new(env!("CARGO_BIN_EXE_domicile"))
            .args(["node", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    }
}

/// `topology` with a read-write grant for the `tests` client service on every jurisdiction a group is
/// fenced to (unless the topology grants `tests` something itself): the services a test starts need a
/// grant like any other, and tests of grants write their own.
pub fn with_test_grants(topology: &str) -> String {
    if topology.contains("service = \"tests\"") {
        return topology.to_string();
    }
    let file = placement::TopologyFile::parse(topology).expect("the test's topology parses");
    let jurisdictions: std::collections::BTreeSet<&str> = file
        .policies
        .values()
        .map(|policy| policy.jurisdiction.name())
        .collect();
    let mut text = topology.to_string();
    for jurisdiction in jurisdictions {
        text.push_str(&format!(
            "\n[[grant]]\nservice = \"tests\"\njurisdiction = \"{jurisdiction}\"\naccess = \"read-write\"\n"
        ));
    }
    text
}

/// Three EU sites of one node each (Dublin, Frankfurt, Paris): the smallest cluster a group of three EU
/// voters fits, with a site to spare for none.
pub const THREE_EU_SITES: &str = "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1]\n\n\
[[site]]\nname = \"frankfurt\"\ncountry = \"DE\"\nnodes = [2]\n\n\
[[site]]\nname = \"paris\"\ncountry = \"FR\"\nnodes = [3]\n";

/// The nodes of [`three_eu_sites`], by id and site.
pub const THREE_EU_NODES: [(u64, &str); 3] = [(1, "dublin"), (2, "frankfurt"), (3, "paris")];

/// [`cluster_files`] for the three EU sites of [`THREE_EU_NODES`], with `groups` (`[[group]]` tables) on them.
pub fn three_eu_sites(dir: &Path, cluster: &str, groups: &str) -> Vec<NodeFiles> {
    cluster_files(
        dir,
        cluster,
        &format!("{THREE_EU_SITES}\n{groups}"),
        &THREE_EU_NODES,
    )
}

/// Writes, in `dir`, `topology.toml`, a CA with a certificate for each of `nodes` (id, site), one for
/// a client named `tests` and one for an operator named `tests` under `certs/`, and `node-ID.toml` for
/// each node (its data in `data-ID/`), on free loopback ports. The CLI writes the certificates, as an operator would.
pub fn cluster_files(dir: &Path, cluster: &str, topology: &str, nodes: &[(u64, &str)]) -> Vec<NodeFiles> {
    std::fs::write(dir.join("topology.toml"), with_test_grants(topology)).unwrap();
    let certs = dir.join("certs");
    let certs = certs.to_str().unwrap();
    let topology_path = dir.join("topology.toml");
    let topology_path = topology_path.to_str().unwrap();
    assert_eq!(
        domicile(&["certs", "init", "--dir", certs]).status.code(),
        Some(0)
    );
    assert_eq!(
        domicile(&["certs", "client", "--name", "tests", "--dir", certs])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        domicile(&["certs", "operator", "--name", "tests", "--dir", certs])
            .status
            .code(),
        Some(0)
    );
    let addresses: Vec<(SocketAddr, SocketAddr)> = nodes
        .iter()
        .map(|_| {
            let listen = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let admin = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            (listen, admin)
        })
        .collect();
    let mut files = Vec::new();
    for (&(id, site), &(listen, admin)) in nodes.iter().zip(&addresses) {
        let id_text = id.to_string();
        let args = [
            "certs",
            "node",
            "--id",
            &id_text,
            "--site",
            site,
            "--topology",
            topology_path,
            "--dir",
            certs,
        ];
        assert_eq!(domicile(&args).status.code(), Some(0), "{args:?}");
        let config = dir.join(format!("node-{id}.toml"));
        let peers: String = nodes
            .iter()
            .zip(&addresses)
            .filter(|((peer, _), _)| *peer != id)
            .map(|((peer, _), (listen, admin))| {
                format!("\n[[peer]]\nid = {peer}\naddr = \"{listen}\"\nadmin = \"{admin}\"\n")
            })
            .collect();
        std::fs::write(
            &config,
            format!(
                "cluster = \"{cluster}\"\nnode_id = {id}\nsite = \"{site}\"\ndata_dir = \"data-{id}\"\nlisten = \"{listen}\"\nadmin = \"{admin}\"\ntopology = \"topology.toml\"\n[tls]\nca = \"certs/ca.pem\"\ncert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n{peers}"
            ),
        )
        .unwrap();
        files.push(NodeFiles {
            id,
            listen,
            admin,
            config,
        });
    }
    files
}

/// A node process a test started, stopped by pid when the handle drops, also when an assertion fails.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// SIGKILL: the process gets no chance to flush or hand anything over.
    pub fn sigkill(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
