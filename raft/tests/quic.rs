//! The QUIC transport over real UDP sockets on loopback: mutual TLS, identities attested by certificates
//! and checked against the topology, framed and bounded messages, many requests on one connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use placement::{Country, NodeId, SiteName, Topology, TopologyFile};
use raft::identity::{ClusterCa, NodeIdentity, Peer, TlsConfigs, Validity, tls_configs};
use raft::quic::{Handler, QuicConfig, QuicError, QuicNode};
use time::{Duration, OffsetDateTime};

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "hamar"
country = "NO"
nodes = [7]

[[site]]
name = "ashburn"
country = "US"
nodes = [9]
"#;

/// Answers with what it was told and who, by certificate, told it.
struct Echo;

impl Handler<String, String> for Echo {
    fn handle(&self, peer: Peer, request: String) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move { format!("{request} from {peer}") })
    }
}

/// Answers every request with its own name: which of two servers answered.
struct Named(&'static str);

impl Handler<String, String> for Named {
    fn handle(&self, _peer: Peer, _request: String) -> Pin<Box<dyn Future<Output = String> + Send + '_>> {
        Box::pin(async move { self.0.to_string() })
    }
}

fn validity() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now - Duration::hours(1),
        not_after: now + Duration::days(1),
    }
}

fn identity(node: u64, site: &str, country: &str) -> NodeIdentity {
    NodeIdentity {
        node: NodeId(node),
        site: SiteName(site.into()),
        country: Country::parse(country).unwrap(),
    }
}

fn topology() -> Arc<Topology> {
    Arc::new(TopologyFile::parse(TOPOLOGY).unwrap().topology)
}

fn tls(ca: &ClusterCa, who: &NodeIdentity) -> TlsConfigs {
    tls_configs(&ca.certified_key().cert_pem, &ca.issue(who, validity()).unwrap()).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node(
    who: NodeIdentity,
    tls: &TlsConfigs,
    peers: BTreeMap<NodeId, SocketAddr>,
    config: QuicConfig,
) -> Arc<QuicNode> {
    QuicNode::bind(who, loopback(), tls, topology(), peers, config, Arc::new(Echo)).unwrap()
}

/// Hamar (node 7) serving and Dublin (node 1) dialling it, both under one CA: `(server, client)`.
fn dublin_and_hamar() -> (Arc<QuicNode>, Arc<QuicNode>) {
    let ca = ClusterCa::generate("test", validity()).unwrap();
    let (dublin, hamar) = (identity(1, "dublin-a", "IE"), identity(7, "hamar", "NO"));
    let server = node(
        hamar.clone(),
        &tls(&ca, &hamar),
        BTreeMap::new(),
        QuicConfig::loopback(),
    );
    let peers = BTreeMap::from([(NodeId(7), server.local_addr().unwrap())]);
    let client = node(dublin.clone(), &tls(&ca, &dublin), peers, QuicConfig::loopback());
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_senders_attested_identity_and_share_one_connection() {
    let (server, client) = dublin_and_hamar();

    let reply: String = client.request(NodeId(7), "hello").await.unwrap();
    assert_eq!(reply, "hello from n1 at dublin-a (IE)");

    let mut requests = tokio::task::JoinSet::new();
    for index in 0..64 {
        let client = client.clone();
        requests.spawn(async move {
            (
                index,
                client
                    .request::<_, String>(NodeId(7), &format!("request {index}"))
                    .await,
            )
        });
    }
    let mut answered = 0;
    while let Some(joined) = requests.join_next().await {
        let (index, reply) = joined.unwrap();
        assert_eq!(
            reply.unwrap(),
            format!("request {index} from n1 at dublin-a (IE)")
        );
        answered += 1;
    }
    assert_eq!(answered, 64);
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_from_another_ca_or_disagreeing_with_the_topology_are_refused() {
    let ca = ClusterCa::generate("prod", validity()).unwrap();
    let hamar = identity(7, "hamar", "NO");
    let server = node(
        hamar.clone(),
        &tls(&ca, &hamar),
        BTreeMap::new(),
        QuicConfig::loopback(),
    );
    let peers = BTreeMap::from([(NodeId(7), server.local_addr().unwrap())]);

    // A certificate from another CA that trusts ours: the server refuses it at the handshake.
    let rogue = ClusterCa::generate("rogue", validity()).unwrap();
    let dublin = identity(1, "dublin-a", "IE");
    let forged = tls_configs(
        &ca.certified_key().cert_pem,
        &rogue.issue(&dublin, validity()).unwrap(),
    )
    .unwrap();
    let intruder = node(dublin.clone(), &forged, peers.clone(), QuicConfig::loopback());
    assert!(
        intruder
            .request::<_, String>(NodeId(7), "let me in")
            .await
            .is_err()
    );

    // A node of this CA whose certificate puts it at a site the topology doesn't (node 9 is in Ashburn):
    // it can't even start, and if it did, its peers would refuse it.
    let misplaced = identity(9, "dublin-a", "IE");
    let misplaced_tls = tls(&ca, &misplaced);
    let started = QuicNode::bind(
        misplaced.clone(),
        loopback(),
        &misplaced_tls,
        topology(),
        peers.clone(),
        QuicConfig::loopback(),
        Arc::new(Echo),
    );
    assert!(matches!(started, Err(QuicError::Identity(_))));

    // Dialling node 7 at an address where node 1 answers: the certificate names the wrong node.
    let impostor = node(
        dublin.clone(),
        &tls(&ca, &dublin),
        BTreeMap::new(),
        QuicConfig::loopback(),
    );
    let confused_peers = BTreeMap::from([(NodeId(7), impostor.local_addr().unwrap())]);
    let us = identity(9, "ashburn", "US");
    let dialler = node(us.clone(), &tls(&ca, &us), confused_peers, QuicConfig::loopback());
    let error = dialler.request::<_, String>(NodeId(7), "hi").await.unwrap_err();
    assert!(matches!(error, QuicError::Connect { .. }), "{error}");
    for node in [server, intruder, impostor, dialler] {
        node.close();
    }
}

/// One frame per stream, read through the stream's end on both sides: a stream dropped before its end
/// is read makes quinn send a STOP_SENDING, an extra packet per request each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_costs_no_stop_sending_either_way() {
    let (server, client) = dublin_and_hamar();
    for index in 0..50 {
        let reply: String = client.request(NodeId(7), &format!("r{index}")).await.unwrap();
        assert_eq!(reply, format!("r{index} from n1 at dublin-a (IE)"));
    }
    let stats = client.dialer().connection_stats(7).expect("a live connection");
    assert_eq!(
        stats.frame_tx.stop_sending, 0,
        "the client stopped a response stream"
    );
    assert_eq!(
        stats.frame_rx.stop_sending, 0,
        "the server stopped a request stream"
    );
    assert!(
        stats.frame_tx.stream >= 50,
        "the requests were sent: {:?}",
        stats.frame_tx
    );
    for node in [server, client] {
        node.close();
    }
}

/// On loopback, MTU discovery takes a connection's packets past anything Ethernet carries (quinn's default
/// bound is 1,452 bytes; its endpoints accept 1,472 unless told more): each packet costs its own encryption and bookkeeping, so a snapshot sent in
/// Ethernet-sized packets paid that 45 times more often than the path needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // the QUIC transport runs on tokio; so does this test's pause
async fn loopback_packets_grow_past_ethernet_size() {
    const ETHERNET_FRAME: u16 = 1_500;
    let (server, client) = dublin_and_hamar();
    let large = "x".repeat(256 << 10);
    let mut mtu = 0;
    for _ in 0..100 {
        let reply: String = client.request(NodeId(7), &large).await.unwrap();
        assert_eq!(reply.len(), large.len() + " from n1 at dublin-a (IE)".len());
        mtu = client
            .dialer()
            .connection_stats(7)
            .expect("a live connection")
            .path
            .current_mtu;
        if mtu > ETHERNET_FRAME {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(mtu > ETHERNET_FRAME, "the client's packets stayed at {mtu} bytes");
    let cross_site = QuicConfig::cross_site();
    assert_eq!(
        cross_site.udp_payload_bytes_max,
        link::UDP_PAYLOAD_BYTES_ETHERNET,
        "between sites, quinn's Ethernet-sized bound stays"
    );
    for node in [server, client] {
        node.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_allocation() {
    let ca = ClusterCa::generate("test", validity()).unwrap();
    let (dublin, hamar) = (identity(1, "dublin-a", "IE"), identity(7, "hamar", "NO"));
    let small = QuicConfig {
        message_bytes_max: 64 << 10,
        ..QuicConfig::loopback()
    };
    let server = node(hamar.clone(), &tls(&ca, &hamar), BTreeMap::new(), small);
    let peers = BTreeMap::from([(NodeId(7), server.local_addr().unwrap())]);
    let client = node(dublin.clone(), &tls(&ca, &dublin), peers, QuicConfig::loopback());

    let big = "x".repeat(256 << 10);
    let error = client.request::<_, String>(NodeId(7), &big).await.unwrap_err();
    match error {
        QuicError::Remote { reason, .. } => assert!(reason.contains("exceeds"), "{reason}"),
        other => panic!("expected the server to refuse the frame, got {other}"),
    }
    // The connection survives a refused request.
    let reply: String = client.request(NodeId(7), "small").await.unwrap();
    assert!(reply.starts_with("small from n1"));

    // And a sender won't build a frame beyond its own bound either.
    let tiny = QuicConfig {
        message_bytes_max: 1 << 10,
        ..QuicConfig::loopback()
    };
    let peers = BTreeMap::from([(NodeId(7), server.local_addr().unwrap())]);
    let careful = node(
        identity(9, "ashburn", "US"),
        &tls(&ca, &identity(9, "ashburn", "US")),
        peers,
        tiny,
    );
    let error = careful
        .request::<_, String>(NodeId(7), &"y".repeat(4 << 10))
        .await
        .unwrap_err();
    assert!(matches!(error, QuicError::Codec(_)), "{error}");
    for node in [server, client, careful] {
        node.close();
    }
}

/// A peer that moved (a pod restarted at a new address) is dialled at its new address from the next
/// request on, even while the old address still answers: the connection to where it was is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_moved_is_dialled_at_its_new_address() {
    let ca = ClusterCa::generate("test", validity()).unwrap();
    let (dublin, hamar) = (identity(1, "dublin-a", "IE"), identity(7, "hamar", "NO"));
    let serve = |name: &'static str| {
        QuicNode::bind(
            hamar.clone(),
            loopback(),
            &tls(&ca, &hamar),
            topology(),
            BTreeMap::new(),
            QuicConfig::loopback(),
            Arc::new(Named(name)),
        )
        .unwrap()
    };
    let (before, after) = (serve("where it was"), serve("where it is now"));
    let peers = BTreeMap::from([(NodeId(7), before.local_addr().unwrap())]);
    let client = node(dublin.clone(), &tls(&ca, &dublin), peers, QuicConfig::loopback());
    let reply: String = client.request(NodeId(7), "hello").await.unwrap();
    assert_eq!(reply, "where it was");

    client.learn_address(NodeId(7), after.local_addr().unwrap());
    for _ in 0..3 {
        let reply: String = client.request(NodeId(7), "hello").await.unwrap();
        assert_eq!(reply, "where it is now");
    }
    // Learning the same address again keeps the connection.
    client.learn_address(NodeId(7), after.local_addr().unwrap());
    let reply: String = client.request(NodeId(7), "hello").await.unwrap();
    assert_eq!(reply, "where it is now");
    client.close();
    before.close();
    after.close();
}

/// A UDP relay on loopback standing where a node listens, for one client: the client's datagrams go to
/// the current target, and the target's (only the current one's) back to the client. Pointing it at
/// another server is a node killed and restarted at the same address: the new process knows nothing of
/// the old one's connections, and the old one is heard from no more.
struct Relay {
    addr: SocketAddr,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    #[allow(clippy::disallowed_methods)]
    async fn start(target: SocketAddr) -> Relay {
        let front = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let back = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let addr = front.local_addr().unwrap();
        let target = Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        let task = tokio::spawn(async move {
            let (mut to_server, mut to_client) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((length, from)) = front.recv_from(&mut to_server) => {
                        client = Some(from);
                        let target = *current.lock().unwrap();
                        let _ = back.send_to(&to_server[..length], target).await;
                    }
                    Ok((length, from)) = back.recv_from(&mut to_client) => {
                        if let Some(client) = client.filter(|_| from == *current.lock().unwrap()) {
                            let _ = front.send_to(&to_client[..length], client).await;
                        }
                    }
                }
            }
        });
        Relay { addr, target, task }
    }

    fn point_at(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }
}

/// Dublin dialling Hamar behind a [`Relay`], answered once by "the killed process"; then another Hamar
/// process ("the restarted process") at the relay's address, under the same certificate (so the same
/// endpoint keys) or a new one. Both keep the old connection open for a minute. `(client, killed,
/// restarted, relay)`.
async fn a_restarted_peer(
    same_certificate: bool,
    request_timeout: std::time::Duration,
) -> (Arc<QuicNode>, Arc<QuicNode>, Arc<QuicNode>, Relay) {
    let ca = ClusterCa::generate("test", validity()).unwrap();
    let (dublin, hamar) = (identity(1, "dublin-a", "IE"), identity(7, "hamar", "NO"));
    let patient = QuicConfig {
        idle_timeout: std::time::Duration::from_secs(60),
        keep_alive: std::time::Duration::from_secs(20),
        request_timeout,
        ..QuicConfig::loopback()
    };
    let first_tls = tls(&ca, &hamar);
    let serve = |name: &'static str, tls: &TlsConfigs| {
        QuicNode::bind(
            hamar.clone(),
            loopback(),
            tls,
            topology(),
            BTreeMap::new(),
            patient.clone(),
            Arc::new(Named(name)),
        )
        .unwrap()
    };
    let killed = serve("the killed process", &first_tls);
    let relay = Relay::start(killed.local_addr().unwrap()).await;
    let peers = BTreeMap::from([(NodeId(7), relay.addr)]);
    let client = node(dublin.clone(), &tls(&ca, &dublin), peers, patient.clone());
    let reply: String = client.request(NodeId(7), "hello").await.unwrap();
    assert_eq!(reply, "the killed process");

    let restarted = if same_certificate {
        serve("the restarted process", &first_tls)
    } else {
        serve("the restarted process", &tls(&ca, &hamar))
    };
    relay.point_at(restarted.local_addr().unwrap());
    (client, killed, restarted, relay)
}

/// A peer killed and restarted at the same address, under the same certificate (so the same endpoint
/// keys), answers the dialler's first request: its stateless reset ends the old connection at once and
/// the request is sent again on a new one. Before, that request went into the old connection and was lost
/// (a pre-vote, in a failover: an election round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_at_the_same_address_resets_the_old_connection_and_answers_the_next_request() {
    let (client, killed, restarted, relay) = a_restarted_peer(true, std::time::Duration::from_secs(5)).await;
    let old = client.dialer().connection_stats(7).expect("a connection");
    let reply = client.request::<_, String>(NodeId(7), "hello").await;
    assert_eq!(
        reply.expect("the first request after the restart was lost"),
        "the restarted process"
    );
    let new = client.dialer().connection_stats(7).expect("a connection");
    assert!(
        new.frame_tx.stream <= old.frame_tx.stream,
        "the answer came on the old connection, which had sent one request before it: {new:?}"
    );
    relay.task.abort();
    for node in [client, killed, restarted] {
        node.close();
    }
}

/// A peer killed and restarted at the same address is reached again at the next request after one goes
/// unanswered, not only once the old connection's idle timeout (here a minute) has passed: a request
/// dropped while the peer sent nothing at all on the connection drops the connection (here the restarted
/// process has a new certificate, so its endpoint keys differ and its resets are not believed). Before, every
/// request went into the dead connection: between sites, a group whose other survivor had restarted
/// elected no one for 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_at_the_same_address_is_dialled_afresh_after_an_unanswered_request() {
    let (client, killed, restarted, relay) = a_restarted_peer(false, std::time::Duration::from_secs(2)).await;
    // Five requests of 2 s each, well inside the old connection's idle timeout of a minute.
    let mut replies = Vec::new();
    for _ in 0..5 {
        match client.request::<_, String>(NodeId(7), "hello").await {
            Ok(reply) => {
                replies.push(reply);
                break;
            }
            Err(error) => assert!(matches!(error, QuicError::Timeout(_)), "{error}"),
        }
    }
    assert_eq!(
        replies,
        ["the restarted process"],
        "the restarted peer was never dialled: every request went into the dead connection"
    );
    relay.task.abort();
    for node in [client, killed, restarted] {
        node.close();
    }
}

/// Polls `done` every 20 ms for up to 10 s; whether it became true.
#[allow(clippy::disallowed_methods)]
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    done()
}

/// A node opens a connection to each peer it knows before it has anything to send (a follower's first
/// pre-vote then pays no handshake), and opens another when that one ends: here, because the peer moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_a_connection_open_to_each_peer_ahead_of_need() {
    let ca = ClusterCa::generate("test", validity()).unwrap();
    let (dublin, hamar) = (identity(1, "dublin-a", "IE"), identity(7, "hamar", "NO"));
    let serve = || {
        node(
            hamar.clone(),
            &tls(&ca, &hamar),
            BTreeMap::new(),
            QuicConfig::loopback(),
        )
    };
    let (before, after) = (serve(), serve());
    let peers = BTreeMap::from([(NodeId(7), before.local_addr().unwrap())]);
    let client = node(dublin.clone(), &tls(&ca, &dublin), peers, QuicConfig::loopback());
    assert!(
        eventually(|| client.dialer().is_connected(7)).await,
        "no connection to n7 opened ahead of need"
    );
    assert!(!client.dialer().is_connected(1), "a node does not dial itself");
    // The peer stops and is found at a new address: the connection to where it was is dropped, and one
    // to where it is now is opened without a request.
    before.close();
    client.learn_address(NodeId(7), after.local_addr().unwrap());
    assert!(
        eventually(|| client.dialer().is_connected(7)).await,
        "no connection to n7's new address opened ahead of need"
    );
    let reply: String = client.request(NodeId(7), "hello").await.unwrap();
    assert_eq!(reply, "hello from n1 at dublin-a (IE)");
    client.close();
    after.close();
}
