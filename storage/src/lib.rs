//! What a Domicile node keeps on disk for every replica group it hosts.
//!
//! Two stores, two kinds of guarantee:
//!
//! * **The Raft log** ([`log`], [`raft_log`]) is one append-only, segmented write-ahead log per
//!   node, shared by all groups, with an in-memory index per group (etcd's WAL, TiKV's
//!   raft-engine). An append is acknowledged through openraft's flush callback only after an
//!   fdatasync covering it; concurrent appends of any groups share one sync ([`group_commit`]).
//!   Votes and commit indexes live in the same log and are reloaded on start. Recovery truncates a
//!   torn tail and refuses, with a named error, anything else that is damaged.
//! * **The state machine** ([`state_machine`]) applies committed entries deterministically
//!   ([`apply`]) into an ordered key-value store behind a small trait ([`backend`]); production
//!   uses redb ([`redb_store`], the only module that imports redb). It neither fsyncs nor commits
//!   each apply ([`write_behind`] gathers them in memory, read through, for one transaction):
//!   after a crash it resumes from its last durable point and openraft re-applies the committed
//!   entries still in the log. Snapshots ([`snapshot`]) are built from one consistent read,
//!   framed in bounded checksummed chunks, and carry the group's membership and policy version.
//!
//! Everything written to disk or sent on the wire is encoded by [`codec`] (`wire`'s: postcard,
//! versioned, checksummed). The log's logic runs over the [`disk::Disk`] trait and uses no thread,
//! clock or OS randomness, so the simulator can run it on a simulated disk and drive group commit
//! from a task on its deterministic runtime.
//!
//! *Architecture invariant:* this crate imports no postcard (only `wire::codec` does) and only
//! `redb_store` imports redb.

pub mod apply;
pub mod backend;
mod blocking;
pub mod build_pace;
pub mod disk;
mod entry_index;
pub mod error;
pub mod group_commit;
pub mod log;
pub mod paced_removal;
pub mod page_cache;
pub mod priority;
pub mod raft_log;
pub mod record;
pub mod redb_store;
pub mod segment;
pub mod snapshot;
pub mod snapshot_feed;
pub mod state_machine;
pub mod write_behind;
pub mod writeback;

/// Polls `done` every 5 ms for up to 10 s; whether it became true. For unit tests that wait, on a plain
/// thread, for one of the store's own threads (a removal behind, an install ahead).
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a plain thread's sleep, in tests only
pub(crate) fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done()
}

/// The byte format of everything this crate writes: `wire`'s, the one module that imports postcard.
pub use wire::codec;

use openraft::RaftTypeConfig;
use openraft::alias::CommittedLeaderIdOf;
use openraft::alias::EntryPayloadOf;

pub use crate::record::Command;
pub use crate::record::CommandError;
pub use crate::record::Record;
pub use crate::record::RecordKey;
pub use crate::record::Response;
pub use crate::record::WriteId;

/// The openraft type configs this crate's stores work with.
///
/// The `raft` crate defines the concrete config (and with it the runtime: tokio in production,
/// openraft-rt-sim in the simulator); any config whose application data is [`Command`], whose
/// responses are [`Response`], whose node ids are `u64` and whose entries are openraft's
/// [`openraft::Entry`] qualifies, whatever its runtime, node type or leader-id mode.
pub trait StorageTypeConfig:
    RaftTypeConfig<
        D = Command,
        R = Response,
        NodeId = u64,
        Entry = openraft::Entry<CommittedLeaderIdOf<Self>, EntryPayloadOf<Self>>,
    >
{
}

impl<C> StorageTypeConfig for C where
    C: RaftTypeConfig<
            D = Command,
            R = Response,
            NodeId = u64,
            Entry = openraft::Entry<CommittedLeaderIdOf<C>, EntryPayloadOf<C>>,
        >
{
}
