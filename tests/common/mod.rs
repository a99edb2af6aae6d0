//! Running the real `domicile` binary from tests: its CLI, and clusters of node processes on loopback whose
//! files (topology, CA, certificates, configurations) a test writes into its own temporary directory.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn domicile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domicile"))
        .args(args)
        .output()
        .expect("the domicile binary runs")
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

/// Writes, in `dir`, `topology.toml`, a CA with a certificate for each of `nodes` (id, site) and one for
/// a client named `tests` under `certs/`, and `node-ID.toml` for each node (its data in `data-ID/`), on
/// free loopback ports. The CLI writes the certificates, as an operator would.
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
