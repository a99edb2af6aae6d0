//! Micro-benchmarks of the per-request hot paths the cluster benchmark goes through: the wire codec (every
//! client request and Raft message is one checksummed frame), the residency fence (egress on every append
//! carrying entries, ingress on every message served) and routing (every client call, on the client and on
//! the node).
//!
//! `cargo bench -p cluster-bench --bench hot_paths`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use placement::{Fence, GroupId, Membership, NodeId, TopologyFile};
use raft::client_protocol::{ClientOp, ClientRequest, Envelope};
use raft::residency::{GroupFence, Incidents};
use raft::routing::{Router, stable_hash};
use raft::transport::{PeerRequest, RequestKind};
use storage::WriteId;
use storage::codec::{self, FRAME_HEADER_BYTES, FrameHeader};

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
[[site]]
name = "ashburn"
country = "US"
nodes = [4]
"#;

fn topology_with_groups(groups: usize) -> TopologyFile {
    let mut text = TOPOLOGY.to_string();
    for group in 0..groups {
        text.push_str(&format!(
            "[[group]]\nname = \"bench-{group}\"\njurisdiction = \"EEA\"\nvoters = 3\n"
        ));
    }
    TopologyFile::parse(&text).expect("the benchmark topology parses")
}

fn put_envelope(user: u64) -> Envelope {
    Envelope::Client(ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: format!("{user:08x}"),
        op: ClientOp::Put {
            record: "v".into(),
            value: vec![0x5a; 256],
            write: WriteId {
                client_id: 0x1234_5678_9abc_def0,
                sequence: user,
            },
        },
    })
}

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let bytes_max = 16 << 20;

    let put = put_envelope(42);
    group.bench_function("client put frame: encode (256 B value)", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            codec::encode_frame(black_box(&put), None::<&()>, bytes_max, &mut out).unwrap();
            black_box(out.len())
        })
    });
    let mut frame = Vec::new();
    codec::encode_frame(&put, None::<&()>, bytes_max, &mut frame).unwrap();
    group.bench_function("client put frame: check + decode", |b| {
        b.iter(|| {
            let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
            black_box(FrameHeader::parse(&header));
            let payload = codec::open_frame(black_box(&frame)).unwrap();
            black_box(codec::decode::<Envelope>(payload).unwrap())
        })
    });

    // A Raft append carrying 64 entries of ~300 bytes, already encoded by the network layer into the body.
    for entries in [1usize, 64] {
        let body = vec![0xa5u8; entries * 300];
        let request = Envelope::Peer(PeerRequest {
            group: 7,
            kind: RequestKind::AppendEntries,
            carries_data: true,
            body,
        });
        group.throughput(Throughput::Bytes((entries * 300) as u64));
        group.bench_function(format!("peer append frame, {entries} entries: encode"), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                codec::encode_frame(black_box(&request), None::<&()>, bytes_max, &mut out).unwrap();
                black_box(out.len())
            })
        });
        let mut frame = Vec::new();
        codec::encode_frame(&request, None::<&()>, bytes_max, &mut frame).unwrap();
        group.bench_function(
            format!("peer append frame, {entries} entries: check + decode"),
            |b| {
                b.iter(|| {
                    let payload = codec::open_frame(black_box(&frame)).unwrap();
                    black_box(codec::decode::<Envelope>(payload).unwrap())
                })
            },
        );
    }
    group.finish();
}

fn fence_benches(c: &mut Criterion) {
    let file = topology_with_groups(1);
    let topology = Arc::new(file.topology.clone());
    let policy = file.policies[&GroupId("bench-0".into())].clone();
    let fence = GroupFence::new(
        1,
        policy.clone(),
        topology.clone(),
        BTreeSet::new(),
        Arc::new(Incidents::default()),
    );
    let members = Membership::new([NodeId(1), NodeId(2), NodeId(3)], []);
    let mut group = c.benchmark_group("fence");
    group.bench_function("egress check, inside target (every append)", |b| {
        b.iter(|| {
            fence
                .check_egress(black_box(NodeId(2)), black_box(&members))
                .is_ok()
        })
    });
    group.bench_function("egress check, refused target (US)", |b| {
        b.iter(|| {
            fence
                .check_egress(black_box(NodeId(4)), black_box(&members))
                .is_err()
        })
    });
    group.bench_function("ingress check (every message served)", |b| {
        b.iter(|| fence.check_ingress(black_box(NodeId(3))).is_ok())
    });
    group.bench_function("membership admit (3 voters, unchanged)", |b| {
        b.iter(|| Fence::admit(&topology, &policy, black_box(&members), black_box(&members)).is_ok())
    });
    group.bench_function("membership as openraft reports it (per append)", |b| {
        b.iter_batched(
            || (vec![1u64, 2, 3], Vec::<u64>::new()),
            |(voters, learners)| {
                black_box(Membership::new(
                    voters.into_iter().map(NodeId),
                    learners.into_iter().map(NodeId),
                ))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn routing_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    group.bench_function("stable hash, 8-byte user id", |b| {
        b.iter(|| stable_hash(black_box(b"0000beef")))
    });
    for groups in [1usize, 16] {
        let file = topology_with_groups(groups);
        let router = Router::new(file.policies.values()).unwrap();
        group.bench_function(format!("route a user, {groups} groups"), |b| {
            b.iter(|| router.route(black_box("EEA"), black_box("0000beef")).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, codec_benches, fence_benches, routing_benches);
criterion_main!(benches);
