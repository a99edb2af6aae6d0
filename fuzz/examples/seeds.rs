//! Writes the fuzz targets' seed corpora, `corpus/<target>/`, from the real encoders: client and peer
//! frames as `link` frames them, a Raft log written by `storage::log::Wal`, snapshots built by
//! `storage::snapshot`, a state machine's values as `storage::apply` sealed them, an audit trail written
//! and signed by `audit::AuditLog` under a fresh cluster CA (whose certificate it writes to
//! `fixtures/ca.pem`, for `audit_segment` to verify against), certificates issued by
//! `raft::identity::ClusterCa`, and the reference topology.
//!
//! Run from the repository: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`. Keys and
//! signatures are fresh each run, so the seeds differ byte for byte between runs; they are committed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit::event::{Change, Enforcement, Members, Observation, PurgeProof, Refusal};
use audit::{AuditConfig, AuditLog, Event, Signer};
use domicile_fuzz::{join_pieces, mode_byte};
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, VoteRequest,
    VoteResponse,
};
use openraft::{Membership, StoredMembership};
use placement::{Country, NodeId, SiteName};
use raft::config::TokioConfig as C;
use raft::directory::ShardMap;
use raft::identity::{ClientIdentity, ClusterCa, NodeIdentity, OperatorIdentity, Validity};
use raft::message::SnapshotChunk;
use raft::purge::CommittedMembership;
use serde::Serialize;
use storage::apply::Applier;
use storage::backend::{Backend, BackendView, MemBackend, Table};
use storage::disk::{Disk, MemDisk};
use storage::log::{EntryBatch, LogConfig, Wal};
use storage::snapshot::{self, SnapshotHeader};
use storage::{Command, Record, RecordKey, WriteId};
use wire::client::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency, Envelope, EnvelopeResponse,
};
use wire::codec;
use wire::peer::{PeerRequest, PeerResponse, RequestKind};
use wire::record::CommandError;

/// One target's seeds, written as `corpus/<target>/<name>`.
struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Corpus {
        let dir = root.join("corpus").join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("the old corpus removed");
        }
        std::fs::create_dir_all(&dir).expect("a corpus directory");
        Corpus { dir, written: 0 }
    }

    /// Writes one seed: the mode byte, then `bytes`.
    fn seed(&mut self, name: &str, repair: bool, choice: u8, bytes: &[u8]) {
        let mut seed = vec![mode_byte(repair, choice)];
        seed.extend_from_slice(bytes);
        std::fs::write(self.dir.join(name), seed).expect("a seed written");
        self.written += 1;
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("a real value encodes")
}

/// A stream's content as `link::frame::write_frame` writes it.
fn framed<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    codec::encode_frame(value, None::<&()>, 64 << 20, &mut frame).expect("a real frame");
    frame
}

fn write(client_id: u64, sequence: u64) -> WriteId {
    WriteId { client_id, sequence }
}

fn log_id(term: u64, index: u64) -> LogIdOf<C> {
    LogIdOf::<C>::new_term_index(term, index)
}

fn vote(term: u64, node: u64) -> VoteOf<C> {
    VoteOf::<C>::new_committed(term, node)
}

fn membership() -> Membership<u64, ()> {
    Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], [4])
}

fn key(user: &str, record: &str) -> RecordKey {
    RecordKey::new("EU", user, record)
}

fn commands() -> Vec<Command> {
    vec![
        Command::Put {
            write: write(7, 1),
            key: key("user-1", "profile"),
            value: br#"{"name":"Ada","phone":"+353 1 555 0100"}"#.to_vec(),
        },
        Command::Put {
            write: write(7, 2),
            key: key("user-1", "settings"),
            value: b"dark".to_vec(),
        },
        Command::CompareAndSet {
            write: write(8, 1),
            key: key("user-1", "profile"),
            expected_revision: Some(1),
            value: b"{}".to_vec(),
        },
        Command::Delete {
            write: write(8, 2),
            key: key("user-2", "profile"),
        },
        Command::Get {
            key: key("user-1", "profile"),
        },
        Command::Scan {
            jurisdiction: "EU".into(),
            user_id: "user-1".into(),
        },
        Command::SetPolicyVersion {
            write: write(9, 1),
            policy_version: 3,
        },
        // Ranges refusing user-1 and user-2 (the first half), then a put refused by them.
        Command::SetOwnership(storage::record::Ownership {
            jurisdiction: "EU".into(),
            epoch: 2,
            ranges: vec![(0, 5), (1 << 63, u64::MAX)],
        }),
        Command::Put {
            write: write(10, 1),
            key: key("user-3", "profile"),
            value: b"v".to_vec(),
        },
        // A tick of the session clock: its sweep reads the dedup entries the writes above left.
        Command::SessionTick,
    ]
}

fn entries() -> Vec<EntryOf<C>> {
    let mut entries = vec![
        EntryOf::<C>::new_blank(log_id(1, 1)),
        EntryOf::<C>::new_membership(log_id(1, 2), membership()),
    ];
    for (offset, command) in commands().into_iter().enumerate() {
        entries.push(EntryOf::<C>::new_normal(log_id(2, offset as u64 + 3), command));
    }
    entries
}

fn client_requests() -> Vec<ClientRequest> {
    let call = |op| ClientRequest::Call {
        jurisdiction: "EU".into(),
        user_id: "user-1".into(),
        op,
    };
    vec![
        ClientRequest::ShardMap {
            jurisdiction: "EEA".into(),
        },
        call(ClientOp::Put {
            record: "profile".into(),
            value: b"{\"phone\":\"+47 555 01 00\"}".to_vec(),
            write: write(3, 4),
        }),
        call(ClientOp::Get {
            record: "profile".into(),
            consistency: Consistency::Linearizable,
        }),
        call(ClientOp::Get {
            record: "profile".into(),
            consistency: Consistency::Stale,
        }),
        call(ClientOp::Delete {
            record: "profile".into(),
            write: write(3, 5),
        }),
        call(ClientOp::CompareAndSet {
            record: "profile".into(),
            expected_revision: Some(12),
            value: b"v2".to_vec(),
            write: write(3, 6),
        }),
        call(ClientOp::Scan),
        ClientRequest::Map {
            jurisdiction: "EU".into(),
        },
        ClientRequest::RoutedCall {
            jurisdiction: "EU".into(),
            user_id: "user-1".into(),
            epoch: 2,
            op: ClientOp::Put {
                record: "profile".into(),
                value: b"v3".to_vec(),
                write: write(3, 7),
            },
        },
    ]
}

fn client_responses() -> Vec<ClientResponse> {
    let record = Record {
        value: b"{\"phone\":\"+47 555 01 00\"}".to_vec(),
        revision: 12,
    };
    let done = |result| ClientResponse::Done {
        group: "eu-1".into(),
        result,
    };
    vec![
        ClientResponse::ShardMap {
            jurisdiction: "EU".into(),
            epoch: 2,
            groups: vec!["eu-1".into(), "eu-2".into()],
        },
        done(ClientResult::Written { revision: 12 }),
        done(ClientResult::Deleted {
            previous_revision: Some(12),
        }),
        done(ClientResult::Value {
            record: Some(record.clone()),
            stale: false,
        }),
        done(ClientResult::Records(vec![("profile".into(), record)])),
        done(ClientResult::Rejected(CommandError::RevisionMismatch {
            expected: Some(1),
            actual: Some(12),
        })),
        ClientResponse::NotLeader {
            group: "eu-1".into(),
            leader: Some(2),
        },
        ClientResponse::NotHosted { group: "eu-2".into() },
        ClientResponse::Residency {
            reason: "no group is fenced to US".into(),
        },
        ClientResponse::Unavailable {
            group: "eu-1".into(),
            reason: "no quorum".into(),
        },
        ClientResponse::Invalid {
            reason: "record name too long".into(),
        },
        ClientResponse::Forbidden {
            caller: "node 9 at ashburn (US)".into(),
            jurisdiction: "EU".into(),
            reason: "a node's certificate".into(),
        },
        ClientResponse::Map(ranged_map().to_wire()),
        ClientResponse::Moved {
            asked_epoch: 1,
            map: ranged_map().to_wire(),
        },
    ]
}

/// EU's map at epoch 2: eu-1's range split, its upper half given to eu-2.
fn ranged_map() -> ShardMap {
    let first = placement::shard_map::ShardMap::single("EU", placement::GroupId("eu-1".into()));
    ShardMap::Ranged(
        first
            .split(1 << 63, placement::GroupId("eu-2".into()))
            .expect("a split of one range"),
    )
}

/// Real peer requests, one per kind, with the bodies `raft::network` encodes.
fn peer_requests() -> Vec<PeerRequest> {
    let request = |kind, carries_data, body| PeerRequest {
        group: 11,
        kind,
        carries_data,
        body,
    };
    let append = AppendEntriesRequest::<C> {
        vote: vote(2, 1),
        prev_log_id: Some(log_id(1, 2)),
        entries: entries()[2..].to_vec(),
        leader_commit: Some(log_id(1, 2)),
    };
    let heartbeat = AppendEntriesRequest::<C> {
        vote: vote(2, 1),
        prev_log_id: Some(log_id(2, 9)),
        entries: Vec::new(),
        leader_commit: Some(log_id(2, 9)),
    };
    vec![
        request(RequestKind::AppendEntries, true, encode(&append)),
        request(RequestKind::AppendEntries, false, encode(&heartbeat)),
        request(
            RequestKind::Vote,
            false,
            encode(&VoteRequest::<C>::new(vote(3, 2), Some(log_id(2, 9)))),
        ),
        request(
            RequestKind::PreVote,
            false,
            encode(&VoteRequest::<C>::new(vote(3, 2), Some(log_id(2, 9)))),
        ),
        request(
            RequestKind::TransferLeader,
            false,
            encode(&TransferLeaderRequest::<C>::new(
                vote(2, 1),
                3,
                Some(log_id(2, 9)),
            )),
        ),
        request(RequestKind::SnapshotChunk, true, encode(&snapshot_chunk())),
        request(RequestKind::DirectoryRead, false, encode("EU")),
        request(RequestKind::CommittedMembership, false, Vec::new()),
        request(RequestKind::LeadershipOffer, false, Vec::new()),
    ]
}

fn snapshot_chunk() -> SnapshotChunk<C> {
    let data = built_snapshot();
    let chunks: Vec<Vec<u8>> = data
        .chunks()
        .collect::<Result<_, _>>()
        .expect("a snapshot in memory");
    SnapshotChunk {
        vote: vote(2, 1),
        meta: SnapshotMetaOf::<C> {
            last_log_id: Some(log_id(2, 9)),
            last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
        },
        sequence: 0,
        count: chunks.len() as u64,
        bytes: chunks[0].to_vec(),
    }
}

/// Every answer a node decodes from a peer, each as `PeerResponse::Ok` bytes and the `answer` choice
/// of `peer_frames` that decodes it.
fn peer_answers() -> Vec<(u8, Vec<u8>)> {
    let shard_map = ranged_map();
    vec![
        (0, encode(&AppendEntriesResponse::<C>::Success)),
        (
            0,
            encode(&AppendEntriesResponse::<C>::PartialSuccess(Some(log_id(2, 5)))),
        ),
        (0, encode(&AppendEntriesResponse::<C>::Conflict)),
        (0, encode(&AppendEntriesResponse::<C>::HigherVote(vote(4, 3)))),
        (
            1,
            encode(&VoteResponse::<C>::new(vote(3, 2), Some(log_id(2, 9)), true)),
        ),
        (2, encode(&Some(SnapshotResponse::<C>::new(vote(2, 1))))),
        (
            3,
            encode(&CommittedMembership {
                group: 11,
                leader: 1,
                term: 2,
                log_index: 2,
                voters: vec![1, 2, 3],
                learners: vec![4],
            }),
        ),
        (4, encode(&Some(shard_map.encode().expect("a shard map seals")))),
        (5, encode(&())),
    ]
}

fn shard_map_sealed() -> Vec<u8> {
    ranged_map().encode().expect("a shard map seals")
}

/// A map published before ranges: `hash mod 2` over eu-1 and eu-2.
fn modulo_map_sealed() -> Vec<u8> {
    let groups = [
        placement::GroupId("eu-1".into()),
        placement::GroupId("eu-2".into()),
    ];
    raft::directory::encode_modulo_map("EU", 1, &groups).expect("a modulo map seals")
}

/// A state machine after `commands()` were applied at indexes 1, 2, ...
fn applied_backend() -> MemBackend {
    let mut backend = MemBackend::new();
    let view = backend.view().expect("a view");
    let mut applier = Applier::new(&view);
    for (index, command) in commands().iter().enumerate() {
        applier.apply(index as u64 + 1, command).expect("applies");
    }
    applier
        .set_meta(storage::apply::META_APPLIED, &encode(&log_id(2, 9)))
        .expect("meta");
    applier
        .set_meta(
            storage::apply::META_MEMBERSHIP,
            &encode(&StoredMembership::<_, _, ()>::new(
                Some(log_id(1, 2)),
                membership(),
            )),
        )
        .expect("meta");
    let batch = applier.finish();
    drop(view);
    backend.commit(batch).expect("memory commits");
    backend
}

fn built_snapshot() -> snapshot::SnapshotData {
    let backend = applied_backend();
    let view = backend.view().expect("a view");
    let header = snapshot::header_from_view(&view).expect("a header");
    snapshot::build(&view, header).expect("a snapshot")
}

fn wire_seeds(root: &Path) {
    let mut link_frame = Corpus::new(root, "link_frame");
    let mut client = Corpus::new(root, "client_frames");
    let mut peer = Corpus::new(root, "peer_frames");
    for (n, request) in client_requests().into_iter().enumerate() {
        let envelope = Envelope::Client(request.clone());
        link_frame.seed(&format!("client-request-{n}"), n % 2 == 0, 0, &framed(&envelope));
        client.seed(&format!("envelope-client-{n}"), false, 0, &encode(&envelope));
        client.seed(&format!("request-{n}"), false, 1, &encode(&request));
    }
    for (n, response) in client_responses().into_iter().enumerate() {
        let reply: Result<EnvelopeResponse, String> = Ok(EnvelopeResponse::Client(response.clone()));
        link_frame.seed(&format!("client-response-{n}"), n % 2 == 0, 1, &framed(&reply));
        client.seed(&format!("reply-{n}"), false, 2, &encode(&reply));
        client.seed(&format!("response-{n}"), false, 3, &encode(&response));
        if let ClientResponse::Done { result, .. } = response {
            client.seed(&format!("result-{n}"), false, 4, &encode(&result));
        }
    }
    let refused: Result<EnvelopeResponse, String> = Err("frame of 70000000 bytes exceeds the bound".into());
    link_frame.seed("refused-frame", false, 1, &framed(&refused));
    for (n, request) in peer_requests().into_iter().enumerate() {
        let envelope = Envelope::Peer(request.clone());
        link_frame.seed(&format!("peer-request-{n}"), n % 2 == 0, 2, &framed(&envelope));
        peer.seed(
            &format!("request-{}", request.kind.name()),
            false,
            0,
            &encode(&request),
        );
        let kind_choice = match request.kind {
            RequestKind::AppendEntries => Some(0),
            RequestKind::Vote | RequestKind::PreVote => Some(1),
            RequestKind::SnapshotChunk => Some(2),
            RequestKind::TransferLeader => Some(3),
            RequestKind::DirectoryRead => Some(4),
            RequestKind::CommittedMembership | RequestKind::LeadershipOffer => None,
        };
        if let Some(kind) = kind_choice {
            peer.seed(
                &format!("body-{}-{n}", request.kind.name()),
                false,
                2 + 5 * kind,
                &request.body,
            );
        }
    }
    for (n, (choice, bytes)) in peer_answers().into_iter().enumerate() {
        let response = PeerResponse::Ok(bytes.clone());
        peer.seed(
            &format!("response-{n}"),
            false,
            1 + 5 * choice,
            &encode(&response),
        );
        peer.seed(&format!("answer-{n}"), false, 3 + 5 * choice, &bytes);
        let reply: Result<EnvelopeResponse, String> = Ok(EnvelopeResponse::Peer(response));
        link_frame.seed(&format!("peer-response-{n}"), false, 3, &framed(&reply));
    }
    for response in [
        PeerResponse::Refused {
            group: 11,
            reason: "ingress: node 9 at ashburn (US) is outside EU".into(),
        },
        PeerResponse::Failed {
            group: 11,
            reason: "raft stopped".into(),
        },
    ] {
        let name = if matches!(response, PeerResponse::Refused { .. }) {
            "refused"
        } else {
            "failed"
        };
        peer.seed(&format!("response-{name}"), false, 1, &encode(&response));
    }
    peer.seed("shard-map-sealed", true, 4, &shard_map_sealed());
    peer.seed("shard-map-modulo-sealed", true, 9, &modulo_map_sealed());
    println!(
        "link_frame: {}, client_frames: {}, peer_frames: {}",
        link_frame.written, client.written, peer.written
    );
}

fn wal_seeds(root: &Path) {
    let mut corpus = Corpus::new(root, "wal_segment");
    // One log, written as the node writes it, in small segments so it rotates.
    let disk = MemDisk::new();
    let config = LogConfig {
        segment_bytes_max: 4096,
    };
    let mut wal = Wal::open(disk.clone(), config).expect("a log");
    for group in [11u64, 12] {
        wal.save_vote(group, encode(&vote(2, 1))).expect("vote");
        let mut batch = EntryBatch::new(group);
        for entry in entries() {
            batch.push(entry.log_id.index, &entry).expect("an entry");
        }
        wal.append(&batch).expect("append");
        wal.save_committed(group, 5, encode(&log_id(2, 5)))
            .expect("commit");
    }
    wal.truncate(12, 8).expect("truncate");
    wal.purge(11, 3, encode(&log_id(2, 3))).expect("purge");
    wal.retire(13).expect("retire");
    wal.revive(13).expect("revive");
    // Enough entries of one group to rotate into further segments.
    for round in 0..3u64 {
        let mut batch = EntryBatch::new(14);
        for index in round * 6 + 1..=round * 6 + 6 {
            let command = Command::Put {
                write: write(1, index),
                key: key("user-3", "note"),
                value: vec![b'x'; 300],
            };
            batch
                .push(index, &EntryOf::<C>::new_normal(log_id(1, index), command))
                .expect("entry");
        }
        wal.append(&batch).expect("append");
    }
    wal.write_buffered().expect("written");
    drop(wal);
    let mut names: Vec<String> = disk.list().expect("files");
    names.sort();
    let segments: Vec<Vec<u8>> = names
        .iter()
        .map(|name| disk.bytes(name).expect("a segment"))
        .collect();
    for (n, segment) in segments.iter().enumerate() {
        corpus.seed(&format!("segment-{n}"), true, 0, segment);
        corpus.seed(&format!("segment-{n}-raw"), false, 0, segment);
    }
    let pieces: Vec<&[u8]> = segments.iter().take(4).map(Vec::as_slice).collect();
    corpus.seed("segments", true, 1, &join_pieces(pieces));
    println!("wal_segment: {} ({} segments)", corpus.written, segments.len());
}

fn snapshot_seeds(root: &Path) {
    let mut corpus = Corpus::new(root, "snapshot");
    let data = built_snapshot();
    let chunks: Vec<Vec<u8>> = data
        .chunks()
        .collect::<Result<_, _>>()
        .expect("a snapshot in memory");
    corpus.seed("chunks", true, 0, &join_pieces(chunks.iter().map(Vec::as_slice)));
    corpus.seed(
        "chunks-raw",
        false,
        0,
        &join_pieces(chunks.iter().map(Vec::as_slice)),
    );
    let bytes = data.to_bytes().expect("a snapshot in memory");
    corpus.seed("bytes", true, 1, &join_pieces([bytes.as_slice()]));
    let empty = snapshot::build(
        &MemBackend::new().view().expect("a view"),
        SnapshotHeader {
            last_log_id: Vec::new(),
            membership: Vec::new(),
            policy_version: 0,
        },
    )
    .expect("an empty snapshot");
    let empty: Vec<Vec<u8>> = empty
        .chunks()
        .collect::<Result<_, _>>()
        .expect("a snapshot in memory");
    corpus.seed("empty", true, 0, &join_pieces(empty.iter().map(Vec::as_slice)));

    let mut machine = Corpus::new(root, "state_machine");
    let backend = applied_backend();
    let view = backend.view().expect("a view");
    let mut items: Vec<Vec<u8>> = Vec::new();
    for (table_number, table) in Table::ALL.into_iter().enumerate() {
        view.scan_prefix(table, &[], &mut |key, value| {
            let mut tagged = vec![table_number as u8];
            tagged.extend_from_slice(key);
            items.push(tagged);
            items.push(value.to_vec());
            Ok(())
        })
        .expect("a scan");
    }
    let commands: Vec<Vec<u8>> = commands().iter().map(encode).collect();
    machine.seed(
        "commands",
        true,
        0,
        &join_pieces(commands.iter().map(Vec::as_slice)),
    );
    for stored in [2u8, 4, 7] {
        let stored_pieces = items.iter().take(usize::from(stored) * 2).map(Vec::as_slice);
        let all = stored_pieces.chain(commands.iter().map(Vec::as_slice));
        machine.seed(&format!("store-{stored}"), true, stored | 8, &join_pieces(all));
    }
    println!("snapshot: {}, state_machine: {}", corpus.written, machine.written);
}

fn validity() -> Validity {
    let year = time::Duration::days(365);
    Validity {
        not_before: time::OffsetDateTime::UNIX_EPOCH + year * 50,
        not_after: time::OffsetDateTime::UNIX_EPOCH + year * 150,
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pem::PemObject;
    rustls_pem::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

/// `rustls`'s PEM reading, as `raft::identity` uses it.
mod rustls_pem {
    pub use rustls_pki_types::CertificateDer;
    pub use rustls_pki_types::pem::PemObject;
}

fn audit_and_identity_seeds(root: &Path) {
    let ca = ClusterCa::generate("fuzz", validity()).expect("a CA");
    std::fs::write(root.join("fixtures/ca.pem"), &ca.certified_key().cert_pem).expect("the CA fixture");
    let node = NodeIdentity {
        node: NodeId(2),
        site: SiteName("hamar".into()),
        country: Country::parse("NO").expect("a country"),
    };
    let node_cert = ca.issue(&node, validity()).expect("a node certificate");
    let client = ClientIdentity {
        name: "billing".into(),
        country: Some(Country::parse("US").expect("a country")),
    };
    let client_cert = ca
        .issue_client(&client, validity())
        .expect("a client certificate");
    let operator = OperatorIdentity {
        name: "sre-ana".into(),
    };
    let operator_cert = ca
        .issue_operator(&operator, validity())
        .expect("an operator certificate");

    let mut identity = Corpus::new(root, "identity");
    identity.seed("node-uri", false, 0, node.uri().as_bytes());
    identity.seed("client-uri", false, 0, client.uri().as_bytes());
    identity.seed(
        "client-uri-anywhere",
        false,
        0,
        ClientIdentity::named("ledger").uri().as_bytes(),
    );
    identity.seed("operator-uri", false, 0, operator.uri().as_bytes());
    identity.seed("node-der", false, 1, &der(&node_cert.cert_pem));
    identity.seed("client-der", false, 1, &der(&client_cert.cert_pem));
    identity.seed("operator-der", false, 1, &der(&operator_cert.cert_pem));
    identity.seed("ca-der", false, 1, &der(&ca.certified_key().cert_pem));

    // An audit trail written by the node, as it writes it, in small segments so it rotates.
    let dir = tempfile::tempdir().expect("a directory");
    let signer = Signer::from_pem(&node_cert.cert_pem, &node_cert.key_pem).expect("a signer");
    let clock_ms = Arc::new(std::sync::atomic::AtomicU64::new(1_790_000_000_000));
    let clock: audit::Clock =
        Arc::new(move || clock_ms.fetch_add(1000, std::sync::atomic::Ordering::Relaxed));
    let config = AuditConfig {
        dir: dir.path().to_path_buf(),
        segment_bytes_max: 1024,
    };
    let log = AuditLog::open(config, signer, clock).expect("an audit log");
    for event in audit_events() {
        log.append(event).expect("an audit entry");
    }
    log.close();
    let mut corpus = Corpus::new(root, "audit_segment");
    let mut segments: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .expect("the trail")
        .map(|entry| {
            let entry = entry.expect("an entry");
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).expect("a segment"),
            )
        })
        .collect();
    segments.sort();
    for (n, (_, bytes)) in segments.iter().enumerate() {
        corpus.seed(&format!("segment-{n}"), true, 0, bytes);
        corpus.seed(&format!("segment-{n}-raw"), false, 0, bytes);
    }
    let first_two: Vec<&[u8]> = segments
        .iter()
        .take(2)
        .map(|(_, bytes)| bytes.as_slice())
        .collect();
    corpus.seed("trail", true, 1, &join_pieces(first_two));
    println!(
        "identity: {}, audit_segment: {} ({} segments)",
        identity.written,
        corpus.written,
        segments.len()
    );
}

fn audit_events() -> Vec<Event> {
    let refusal = |enforcement| Refusal {
        enforcement,
        group: "eu-1".into(),
        node: Some(9),
        site: Some("ashburn".into()),
        country: Some("US".into()),
        jurisdiction: "EU".into(),
        reason: "egress_outside_jurisdiction".into(),
        message: "refused to send eu-1's entries to node 9 at ashburn (US)".into(),
    };
    let members = |voters: &[u64], learners: &[u64]| Members {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
    };
    vec![
        Event::Refused(refusal(Enforcement::Egress)),
        Event::Refused(refusal(Enforcement::Ingress)),
        Event::Refused(refusal(Enforcement::Membership)),
        Event::ChangeAdmitted(Change {
            group: "eu-1".into(),
            step: "add learner n4".into(),
            from: members(&[1, 2, 3], &[]),
            to: members(&[1, 2, 3], &[4]),
        }),
        Event::GroupObserved(Observation {
            group: "eu-1".into(),
            jurisdiction: "EU".into(),
            term: 2,
            leader: Some(1),
            members: members(&[1, 2, 3], &[4]),
            admitted: true,
            outside: Vec::new(),
        }),
        Event::Purge(PurgeProof {
            group: "eu-2".into(),
            leader: 1,
            term: 3,
            log_index: 40,
            members: members(&[1, 2, 3], &[]),
        }),
        Event::PurgeFailed {
            group: "eu-2".into(),
            reason: "disk full".into(),
        },
    ]
}

fn topology_seeds(root: &Path) {
    let mut corpus = Corpus::new(root, "topology_toml");
    let example = std::fs::read(root.join("../deploy/topology.example.toml")).expect("the example topology");
    corpus.seed("example", false, 0, &join_pieces([example.as_slice()]));
    let current = b"[[group]]\nname = \"users-eu\"\nvoters = [1, 3, 7]\nleader = 3\n\n[health]\ndown_sites = [\"dublin-a\"]\ndown_nodes = [7]\n";
    corpus.seed(
        "example-current",
        false,
        0,
        &join_pieces([example.as_slice(), current]),
    );
    println!("topology_toml: {}", corpus.written);
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(root.join("fixtures")).expect("fixtures");
    wire_seeds(root);
    wal_seeds(root);
    snapshot_seeds(root);
    audit_and_identity_seeds(root);
    topology_seeds(root);
}
