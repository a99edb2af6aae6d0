//! Peer frames' payloads: what a node decodes from another node — the `PeerRequest` envelope and the
//! openraft message in its body, by kind (`raft::host`), and the answers a node decodes (`PeerResponse`,
//! the Raft responses `raft::network` reads, the committed membership `raft::purge` asks for, a
//! leadership offer's answer, the sealed shard map `raft::directory` reads). The production type config
//! (`raft::config::TokioConfig`).
//! A value that decodes must encode back to bytes that decode to the same value.
#![no_main]

use domicile_fuzz::{assert_round_trip, assert_stable_encoding, repair_seal, split_mode};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, VoteRequest,
    VoteResponse,
};
use raft::config::TokioConfig as C;
use raft::directory::ShardMap;
use raft::message::SnapshotChunk;
use raft::purge::CommittedMembership;
use wire::codec::decode;
use wire::peer::{PeerRequest, PeerResponse, RequestKind};

/// Decodes `bytes` as `T` and, if it decodes, checks its encoding is stable.
fn stable<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> bool {
    match decode::<T>(bytes) {
        Ok(value) => {
            assert_stable_encoding(&value);
            true
        }
        Err(_) => false,
    }
}

/// A request's body, as the host decodes it for its kind.
fn body(kind: RequestKind, bytes: &[u8]) {
    match kind {
        RequestKind::AppendEntries => {
            stable::<AppendEntriesRequest<C>>(bytes);
        }
        RequestKind::Vote | RequestKind::PreVote => {
            stable::<VoteRequest<C>>(bytes);
        }
        RequestKind::TransferLeader => {
            stable::<TransferLeaderRequest<C>>(bytes);
        }
        RequestKind::SnapshotChunk => {
            stable::<SnapshotChunk<C>>(bytes);
        }
        RequestKind::DirectoryRead => {
            stable::<String>(bytes);
        }
        // Empty bodies: nothing is decoded from them.
        RequestKind::CommittedMembership | RequestKind::LeadershipOffer => {}
    }
}

/// An answer's bytes, as each caller would decode them.
fn answer(choice: u8, bytes: &[u8]) {
    match choice % 6 {
        0 => {
            stable::<AppendEntriesResponse<C>>(bytes);
        }
        1 => {
            stable::<VoteResponse<C>>(bytes);
        }
        2 => {
            stable::<Option<SnapshotResponse<C>>>(bytes);
        }
        3 => {
            if let Ok(membership) = decode::<CommittedMembership>(bytes) {
                assert_round_trip(&membership);
            }
        }
        4 => {
            if let Ok(Some(stored)) = decode::<Option<Vec<u8>>>(bytes) {
                shard_map("EU", &stored);
            }
        }
        _ => {
            stable::<()>(bytes);
            // A leadership offer's answer.
            stable::<bool>(bytes);
        }
    }
}

/// A stored shard map: decoded only if it is the one asked for and well formed; what decodes encodes
/// back to the same map.
fn shard_map(jurisdiction: &str, sealed: &[u8]) {
    if let Ok(map) = ShardMap::decode(jurisdiction, sealed) {
        let encoded = map.encode().expect("a decoded shard map encodes");
        assert_eq!(ShardMap::decode(jurisdiction, &encoded).expect("re-decodes"), map);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    match mode.choice % 5 {
        0 => {
            if let Ok(request) = decode::<PeerRequest>(bytes) {
                assert_stable_encoding(&request);
                let _ = request.kind.name();
                body(request.kind, &request.body);
            }
        }
        1 => {
            if let Ok(response) = decode::<PeerResponse>(bytes) {
                assert_stable_encoding(&response);
                if let PeerResponse::Ok(bytes) = &response {
                    answer(mode.choice / 5, bytes);
                }
            }
        }
        // Straight to a body or an answer, without the envelope's bytes in the way.
        2 => {
            let kinds = [
                RequestKind::AppendEntries,
                RequestKind::Vote,
                RequestKind::SnapshotChunk,
                RequestKind::TransferLeader,
                RequestKind::DirectoryRead,
            ];
            body(kinds[usize::from(mode.choice / 5) % kinds.len()], bytes);
        }
        3 => answer(mode.choice / 5, bytes),
        // A ranged map's seal (even choices) or one published before ranges (odd).
        _ => {
            let mut sealed = bytes.to_vec();
            if mode.repair {
                let key: &[u8] = if (mode.choice / 5) % 2 == 0 {
                    b"domicile/shard-map/ranges/EU"
                } else {
                    b"domicile/shard-map/EU"
                };
                repair_seal(key, &mut sealed);
            }
            shard_map("EU", &sealed);
        }
    }
});
