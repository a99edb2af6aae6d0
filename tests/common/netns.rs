//! The multi-host machinery shared by the multi-host suite (`tests/multihost.rs`) and the WAN benchmark
//! (`benches/wan.rs`): hosts in network namespaces of their own (`scripts/netns.sh`), each with a TUN
//! device as its `eth0`, and a router in this process ([`Wan`]) that carries every IPv4 packet from host to
//! host after the one-way delay of its sites' pair (Dublin A–B 1–2 ms, Dublin–Frankfurt 20 ms,
//! Dublin–Hamar 30 ms, Europe–Ashburn 80 ms each way, with jitter, never reordering a pair's packets), and
//! a [`Cluster`] of real `domicile node` processes on those hosts.
//!
//! Needs root, iproute2, iptables and /dev/net/tun ([`enabled`] says why not). Everything a [`Cluster`]
//! made (node processes by pid, namespaces, the router's threads) goes when it is dropped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/netns.sh");
pub const BINARY: &str = env!("CARGO_BIN_EXE_domicile");

/// The node binary the hosts run: this build's, or DOMICILE_BIN's (another build, for a before/after
/// comparison in one sitting).
pub fn node_binary() -> String {
    std::env::var("DOMICILE_BIN").unwrap_or_else(|_| BINARY.to_string())
}

/// One suite at a time: five nodes, a router and a workload are all two shared cores should carry.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether the suite can run here, or why not (printed, and the test passes without running).
pub fn enabled() -> bool {
    let why_not = if std::env::var_os("DOMICILE_MULTIHOST").is_none() {
        Some("set DOMICILE_MULTIHOST=1 to run it (.ci/run does)".to_string())
    } else if unsafe { libc::geteuid() } != 0 {
        Some("it needs root (network namespaces, iptables, /dev/net/tun)".to_string())
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing".to_string())
    } else {
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(format!(
                "`ip netns` fails: {}",
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(error) => Some(format!("no `ip` (iproute2): {error}")),
        }
    };
    if let Some(why) = &why_not {
        eprintln!("multihost: skipped: {why}");
    }
    why_not.is_none()
}

/// Where a host stands, for its links' delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    DublinA,
    DublinB,
    Hamar,
    Frankfurt,
    Ashburn,
}

impl Place {
    pub fn in_dublin(self) -> bool {
        matches!(self, Place::DublinA | Place::DublinB)
    }
}

/// The one-way delay and its jitter (uniform, ±), in microseconds, from `a` to `b`.
pub fn one_way_us(a: Place, b: Place) -> (u64, u64) {
    use Place::*;
    if a == b {
        return (100, 50);
    }
    match (a, b) {
        (Ashburn, _) | (_, Ashburn) => (80_000, 4_000),
        (x, y) if x.in_dublin() && y.in_dublin() => (1_500, 500),
        (Hamar, Frankfurt) | (Frankfurt, Hamar) => (15_000, 1_500),
        (Hamar, _) | (_, Hamar) => (30_000, 3_000),
        _ => (20_000, 2_000),
    }
}

pub const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
pub const IFF_TUN: libc::c_short = 0x0001;
pub const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
pub struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TUN device named `eth0` inside network namespace `ns` (from a thread that enters it and ends:
/// the device stays in `ns`, its descriptor with this process).
pub fn open_tun_in(ns: &str) -> OwnedFd {
    let path = format!("/run/netns/{ns}");
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let target = File::open(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        // SAFETY: setns(2) on a namespace file we hold open; it moves this short-lived thread only.
        let entered = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            entered,
            0,
            "setns into {path}: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: open(2) of a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just opened and is owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut request = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        request.name[..4].copy_from_slice(b"eth0");
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out (name, then the flags).
        let set = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut request) };
        assert_eq!(set, 0, "TUNSETIFF in {ns}: {}", std::io::Error::last_os_error());
        fd
    })
    .join()
    .expect("the thread opening a TUN device")
}

/// A packet on its way: when it is delivered, a sequence number (ties keep their order), its port.
pub type InFlight = Reverse<(Instant, u64, usize, Vec<u8>)>;

/// The WAN: a router in this process between the hosts' TUN devices.
pub struct Wan {
    stop: Arc<AtomicBool>,
    /// The transatlantic links' delay, in percent of the shape above: a link that turns slower.
    atlantic_percent: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    queue: Arc<(Mutex<BinaryHeap<InFlight>>, Condvar)>,
}

pub struct Port {
    fd: OwnedFd,
    address: [u8; 4],
    place: Place,
}

impl Wan {
    pub fn start(ports: Vec<Port>, seed: u64) -> Wan {
        let ports = Arc::new(ports);
        let stop = Arc::new(AtomicBool::new(false));
        let queue: Arc<(Mutex<BinaryHeap<InFlight>>, Condvar)> = Arc::default();
        let sequence = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let atlantic_percent = Arc::new(std::sync::atomic::AtomicU64::new(100));
        let mut threads = Vec::new();
        for from in 0..ports.len() {
            let (ports, stop, queue, sequence) =
                (ports.clone(), stop.clone(), queue.clone(), sequence.clone());
            let atlantic_percent = atlantic_percent.clone();
            threads.push(std::thread::spawn(move || {
                let mut random = fastrand::Rng::with_seed(seed ^ from as u64);
                let mut last: BTreeMap<usize, Instant> = BTreeMap::new();
                let mut buffer = vec![0u8; 65_536];
                let fd = ports[from].fd.as_raw_fd();
                while !stop.load(Ordering::Relaxed) {
                    let mut poll = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd, valid for the call.
                    if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
                        continue;
                    }
                    // SAFETY: read(2) into a buffer of the length given.
                    let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
                    if read < 20 || buffer[0] >> 4 != 4 {
                        continue; // not IPv4 (the kernel's IPv6 chatter): dropped
                    }
                    let destination = [buffer[16], buffer[17], buffer[18], buffer[19]];
                    let Some(to) = ports.iter().position(|port| port.address == destination) else {
                        continue;
                    };
                    let (mut delay, mut jitter) = one_way_us(ports[from].place, ports[to].place);
                    if ports[from].place == Place::Ashburn || ports[to].place == Place::Ashburn {
                        let percent = atlantic_percent.load(Ordering::Relaxed);
                        delay = delay * percent / 100;
                        jitter = jitter * percent / 100;
                    }
                    let held = delay - jitter + random.u64(0..=2 * jitter);
                    let mut at = Instant::now() + Duration::from_micros(held);
                    // A link delays; it does not reorder a pair's packets.
                    if let Some(&previous) = last.get(&to) {
                        at = at.max(previous);
                    }
                    last.insert(to, at);
                    let packet = buffer[..read as usize].to_vec();
                    let number = sequence.fetch_add(1, Ordering::Relaxed);
                    let (heap, ready) = &*queue;
                    heap.lock().unwrap().push(Reverse((at, number, to, packet)));
                    ready.notify_one();
                }
            }));
        }
        let (ports_out, stop_out, queue_out) = (ports.clone(), stop.clone(), queue.clone());
        threads.push(std::thread::spawn(move || {
            let (heap, ready) = &*queue_out;
            let mut waiting = heap.lock().unwrap();
            while !stop_out.load(Ordering::Relaxed) {
                let now = Instant::now();
                match waiting.peek() {
                    Some(Reverse((at, ..))) if *at <= now => {
                        let Reverse((_, _, to, packet)) = waiting.pop().unwrap();
                        let fd = ports_out[to].fd.as_raw_fd();
                        // SAFETY: write(2) of a whole packet to a TUN device; a failure drops it.
                        let _ = unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
                    }
                    Some(Reverse((at, ..))) => {
                        let wait = *at - now;
                        waiting = ready.wait_timeout(waiting, wait).unwrap().0;
                    }
                    None => waiting = ready.wait_timeout(waiting, Duration::from_millis(100)).unwrap().0,
                }
            }
        }));
        Wan {
            stop,
            atlantic_percent,
            threads,
            queue,
        }
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.1.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A node of a cluster: its id, site name, place and address.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: u64,
    pub site: &'static str,
    pub place: Place,
}

impl Host {
    pub fn at(id: u64, site: &'static str, place: Place) -> Host {
        Host { id, site, place }
    }

    pub fn address(&self) -> String {
        format!("10.77.0.{}", self.id)
    }
}

/// The fence's refusal counters, which [`Cluster::fence_counters`] reads from every node.
pub const FENCE_COUNTERS: [&str; 3] = ["membership_refused", "egress_blocked", "ingress_refused"];

pub const CLIENT_ADDRESS: &str = "10.77.0.100";

/// A cluster on hosts of its own: the namespaces, the WAN, the node processes and their files. Dropping
/// it kills every node (by the pid it recorded), stops the router and deletes the namespaces.
pub struct Cluster {
    dir: tempfile::TempDir,
    prefix: String,
    hosts: Vec<Host>,
    wan: Option<Wan>,
}

impl Cluster {
    pub fn start(name: &str, topology: &str, hosts: &[Host], raft: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("mh{}{name}", std::process::id() % 100_000);
        let mut cluster = Cluster {
            dir,
            prefix,
            hosts: hosts.to_vec(),
            wan: None,
        };
        let mut names: Vec<String> = hosts.iter().map(|host| format!("n{}", host.id)).collect();
        names.push("c".into());
        let mut up = vec!["up".to_string(), cluster.prefix.clone()];
        up.extend(names.iter().cloned());
        run_checked(Command::new(SCRIPT).args(&up));
        let mut ports = Vec::new();
        let mut hosts_file = String::new();
        for host in hosts {
            let ns = cluster.ns(&format!("n{}", host.id));
            ports.push(Port {
                fd: open_tun_in(&ns),
                address: address_bytes(&host.address()),
                place: host.place,
            });
            hosts_file.push_str(&format!("n{} {}\n", host.id, host.address()));
        }
        ports.push(Port {
            fd: open_tun_in(&cluster.ns("c")),
            address: address_bytes(CLIENT_ADDRESS),
            place: Place::DublinA,
        });
        hosts_file.push_str(&format!("c {CLIENT_ADDRESS}\n"));
        for host in hosts {
            run_checked(Command::new(SCRIPT).args([
                "addr",
                &cluster.prefix,
                &format!("n{}", host.id),
                &host.address(),
            ]));
        }
        run_checked(Command::new(SCRIPT).args(["addr", &cluster.prefix, "c", CLIENT_ADDRESS]));
        cluster.wan = Some(Wan::start(ports, 16));
        let path = cluster.dir.path().to_path_buf();
        std::fs::write(path.join("hosts"), hosts_file).unwrap();
        cluster.write_files(name, topology, raft);
        for host in hosts {
            run_checked(Command::new("sh").arg(path.join(format!("start-{}.sh", host.id))));
        }
        cluster
    }

    /// Every link to or from Ashburn delays `percent` of its shape from now on (100: as shaped).
    pub fn slow_atlantic(&self, percent: u64) {
        let wan = self.wan.as_ref().expect("the cluster's WAN");
        wan.atlantic_percent.store(percent, Ordering::Relaxed);
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The topology (with the `tests` service's grants), certificates, node configurations and a start
    /// script per node (the node runs in its namespace; its pid is kept in `pid-ID`).
    pub fn write_files(&self, name: &str, topology: &str, raft: &str) {
        let dir = self.path();
        std::fs::write(dir.join("topology.toml"), super::with_test_grants(topology)).unwrap();
        let certs = dir.join("certs");
        let certs = certs.to_str().unwrap();
        for args in [
            vec!["certs", "init", "--dir", certs],
            vec!["certs", "client", "--name", "tests", "--dir", certs],
            vec!["certs", "operator", "--name", "tests", "--dir", certs],
        ] {
            let output = super::domicile(&args);
            assert_eq!(output.status.code(), Some(0), "{args:?}: {}", stderr(&output));
        }
        let topology_path = dir.join("topology.toml");
        for host in &self.hosts {
            let id = host.id.to_string();
            let output = super::domicile(&[
                "certs",
                "node",
                "--id",
                &id,
                "--site",
                host.site,
                "--topology",
                topology_path.to_str().unwrap(),
                "--dir",
                certs,
            ]);
            assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
            let peers: String = self
                .hosts
                .iter()
                .filter(|peer| peer.id != host.id)
                .map(|peer| {
                    format!(
                        "\n[[peer]]\nid = {}\naddr = \"{}:7100\"\nadmin = \"{}:7200\"\n",
                        peer.id,
                        peer.address(),
                        peer.address()
                    )
                })
                .collect();
            let address = host.address();
            std::fs::write(
                dir.join(format!("node-{id}.toml")),
                format!(
                    "cluster = \"{name}\"\nnode_id = {id}\nsite = \"{}\"\ndata_dir = \"data-{id}\"\nlisten = \"{address}:7100\"\n\
                     admin = \"{address}:7200\"\ntopology = \"topology.toml\"\n[tls]\nca = \"certs/ca.pem\"\n\
                     cert = \"certs/node-{id}.pem\"\nkey = \"certs/node-{id}.key\"\n{peers}\n[raft]\n{raft}\n",
                    host.site
                ),
            )
            .unwrap();
            std::fs::write(
                dir.join(format!("start-{id}.sh")),
                format!(
                    "cd '{dir}'\nip netns exec '{ns}' '{binary}' node --config node-{id}.toml >>node-{id}.log 2>&1 &\necho $! >pid-{id}\n",
                    binary = node_binary(),
                    dir = dir.display(),
                    ns = self.ns(&format!("n{id}")),
                ),
            )
            .unwrap();
        }
    }

    /// The environment of every command run for the suite: the operator's certificates (the CLI speaks
    /// HTTPS to admin endpoints with them) and the run's namespaces and directory for `netns.sh`.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let mut env: Vec<(&'static str, PathBuf)> = super::operator_env(self.path()).into();
        env.push(("MH_PREFIX", PathBuf::from(&self.prefix)));
        env.push(("MH_DIR", self.path().to_path_buf()));
        env
    }

    /// `domicile ARGS` from the client's host, bounded by `limit`.
    pub fn domicile_from_client(&self, args: &[&str], limit: Duration) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", &limit.as_secs().to_string()])
            .args(["ip", "netns", "exec", &self.ns("c"), BINARY])
            .args(args)
            .envs(self.env())
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    pub fn first_admin(&self) -> String {
        format!("{}:7200", self.hosts[0].address())
    }

    /// `domicile status -o json` from the client's host, or null if it did not answer.
    pub fn status(&self) -> Value {
        self.status_or_why().unwrap_or(Value::Null)
    }

    /// `domicile status -o json` from the client's host, or why it gave nothing to parse: its exit and
    /// what it wrote (a failure's message must say what the CLI said, not only that it said nothing).
    pub fn status_or_why(&self) -> Result<Value, String> {
        self.status_via(&self.first_admin())
    }

    /// `domicile status -o json` asked of the admin endpoint `admin` (which then asks its peers').
    pub fn status_via(&self, admin: &str) -> Result<Value, String> {
        let output = self.domicile_from_client(
            &["status", "--admin", admin, "-o", "json"],
            Duration::from_secs(30),
        );
        serde_json::from_slice(&output.stdout).map_err(|_| {
            format!(
                "status exited {:?} (None: ended by a signal, as at its 30 s bound), stdout {:?}, stderr {:?}",
                output.status.code(),
                String::from_utf8_lossy(&output.stdout),
                stderr(&output).trim()
            )
        })
    }

    /// Until every node answers and each of `groups` has a leader (at most 90 s).
    pub fn wait_until_led(&self, groups: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (status, why) = match self.status_or_why() {
                Ok(status) => (status, String::new()),
                Err(why) => (Value::Null, why),
            };
            let answered = status["nodes"].as_array().map_or(0, Vec::len);
            let led = groups
                .iter()
                .all(|group| status["groups"][group]["leader"].is_u64());
            if answered == self.hosts.len() && led {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never settled: {status} {why}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The fence's counters of every node, as `n1.ingress_refused` → count.
    pub fn fence_counters(&self) -> BTreeMap<String, u64> {
        let status = self.status();
        let mut counters = BTreeMap::new();
        for node in status["nodes"].as_array().into_iter().flatten() {
            let id = node["node"].as_u64().unwrap_or_default();
            for counter in FENCE_COUNTERS {
                counters.insert(
                    format!("n{id}.{counter}"),
                    node["incidents"][counter].as_u64().unwrap_or_default(),
                );
            }
        }
        counters
    }

    /// `domicile drill VERB...` from the client's host, the fault made by `fault` and ended by `heal`
    /// (`netns.sh` commands, run with the drill's DOMICILE_DRILL_NODES), bounded at 5 minutes.
    pub fn drill(&self, verb: &[&str], fault: &str, heal: &str) -> (Output, Value) {
        let certs = self.path().join("certs");
        let admin = self.first_admin();
        let mut args: Vec<&str> = vec!["drill"];
        args.extend_from_slice(verb);
        let fault = format!("{SCRIPT} {fault}");
        let heal = format!("{SCRIPT} {heal}");
        args.extend([
            "--admin",
            &admin,
            "--client-certs",
            certs.to_str().unwrap(),
            "--client",
            "tests",
            "--before",
            "2s",
            "--duration",
            "6s",
            "--after",
            "3s",
            "--workers",
            "2",
            "--rate",
            "40",
            "--seed",
            "16",
            "--op-timeout",
            "3s",
            "--output",
            "json",
            "--fault-command",
            &fault,
            "--heal-command",
            &heal,
        ]);
        let output = self.domicile_from_client(&args, Duration::from_secs(300));
        let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output, report)
    }

    /// The last lines of every node's log, for a failure's message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for host in &self.hosts {
            let log = std::fs::read_to_string(self.path().join(format!("node-{}.log", host.id)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            text.push_str(&format!("--- n{} ---\n{tail}\n", host.id));
        }
        text
    }

    /// Node `id`'s pid, if that process is still the node's (0 if not): a pid is reused once its process
    /// ends — as a thread's id too — so no number is signalled without checking whose it is.
    pub fn pid(&self, id: u64) -> libc::pid_t {
        let pid: libc::pid_t = std::fs::read_to_string(self.path().join(format!("pid-{id}")))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = String::from_utf8_lossy(&command).replace('\0', " ");
        if pid > 0 && command.contains(&format!("node --config node-{id}.toml")) {
            pid
        } else {
            0
        }
    }

    pub fn signal(&self, id: u64, signal: libc::c_int) {
        let pid = self.pid(id);
        assert!(pid > 0, "no pid for n{id}");
        // SAFETY: kill(2) of a node process this test started.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &self.hosts {
            let pid = self.pid(host.id);
            if pid > 0 {
                // SAFETY: kill(2) of a node process this test started (a stopped one too).
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = Command::new(SCRIPT).args(["down", &self.prefix]).output();
        self.wan.take();
        // MULTIHOST_LOGS=DIR keeps every node's log there (DIR/PREFIX-node-ID.log), to read after a run.
        if let Some(keep) = std::env::var_os("MULTIHOST_LOGS") {
            for host in &self.hosts {
                let name = format!("node-{}.log", host.id);
                let kept = std::path::Path::new(&keep).join(format!("{}-{name}", self.prefix));
                let _ = std::fs::copy(self.path().join(&name), kept);
            }
        }
    }
}

pub fn address_bytes(address: &str) -> [u8; 4] {
    let address: std::net::Ipv4Addr = address.parse().unwrap();
    address.octets()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn run_checked(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", stderr(&output));
}

/// Leaders replace silent members only after a minute, so no fault here changes a membership; the
/// election timeout is the default's (0.5–1 s), above Europe's longest round trip (60 ms) by far.
pub const RAFT: &str = "heartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nrepair_down_after_ms = 60000";
