//! The seam between the apply logic and the store that keeps its tables.
//!
//! A backend is an ordered map of byte keys to byte values in a few tables, with atomic batch
//! commits and consistent read views. Production uses redb ([`crate::redb_store`]); tests and the
//! simulator use [`MemBackend`]. Values reach the backend already sealed by [`crate::codec`], so
//! every backend stores the same bytes and the apply logic detects corruption the same way.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

use crate::error::StateMachineError;
use crate::snapshot::MEMORY_SNAPSHOT_BYTES_MAX;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotSpool;

/// The tables of the state machine. The order is part of the snapshot format (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    /// User records by encoded (jurisdiction, user id, record name).
    Records,
    /// Per client: the last applied sequence and its response.
    Dedup,
    /// Applied log id, membership, policy version.
    Meta,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Records, Table::Dedup, Table::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Table::Records => "records",
            Table::Dedup => "dedup",
            Table::Meta => "meta",
        }
    }
}

/// Changes committed atomically: one batch per applied group of entries.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Empty every table before applying `changes` (snapshot install).
    pub clear_first: bool,
    /// `None` deletes the key.
    pub changes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// Make this commit (and every earlier one) durable before returning.
    pub durable: bool,
}

/// Waits for the disk until every commit made before the job was created is durable. It borrows
/// nothing from the backend, so the caller can run it without holding the backend's lock.
pub type SyncJob = Box<dyn FnOnce() -> Result<(), StateMachineError> + Send>;

/// Called with each (key, value) a scan finds.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StateMachineError> + 'a;

/// Called with each (key, value) a bounded scan finds; answers whether to go on.
pub type VisitWhile<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StateMachineError> + 'a;

/// A consistent, read-only view of the tables.
pub trait BackendView: Send + 'static {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError>;

    /// How many keys `table` holds, without reading them where the backend keeps the count (redb does).
    fn len(&self, table: Table) -> Result<u64, StateMachineError> {
        let mut count = 0;
        self.scan_prefix(table, &[], &mut |_, _| {
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }

    /// Visits every key starting with `prefix` in key order (an empty prefix visits the table).
    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), StateMachineError>;

    /// Visits the keys starting with `prefix` and greater than `after` in key order, until `visit`
    /// answers false: the bounded batches of a range copy. The default walks the prefix from its start;
    /// a backend that can seek overrides it.
    fn scan_after(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut VisitWhile<'_>,
    ) -> Result<(), StateMachineError> {
        let mut going = true;
        self.scan_prefix(table, prefix, &mut |key, value| {
            if going && after.is_none_or(|after| key > after) {
                going = visit(key, value)?;
            }
            Ok(())
        })
    }
}

/// An ordered store with atomic batches, plus a place for the current snapshot.
pub trait Backend: Send + 'static {
    type View: BackendView;

    /// A view of the last commit that stays consistent while later batches commit.
    fn view(&self) -> Result<Self::View, StateMachineError>;

    /// Commits `batch` atomically; durable only if `batch.durable`.
    fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError>;

    /// The job that makes every commit so far durable, to run later: what needs the backend
    /// happens now, the wait for the disk in the job.
    fn sync_job(&mut self) -> Result<SyncJob, StateMachineError>;

    /// A new, empty place to build or receive a snapshot in (a file beside the store, or memory).
    fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError>;

    /// A new place to receive a snapshot in. A store may follow it with its install as it fills
    /// ([`crate::snapshot_feed`]); by default it is a plain spool, installed once complete.
    fn snapshot_receive_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        self.snapshot_spool()
    }

    /// Replaces every table with the snapshot's items in one durable commit, reading the snapshot
    /// one chunk at a time; a damaged item aborts it with nothing changed.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError>;

    /// Durably makes `snapshot` the current snapshot.
    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError>;

    /// The current snapshot, verified, if one was saved.
    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError>;
}

type Tables = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// An in-memory backend: an ordered map behind an `Arc`, copied on write while a view holds it.
#[derive(Clone, Default)]
pub struct MemBackend {
    tables: Arc<Tables>,
    snapshot: Option<SnapshotData>,
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }
}

/// A view of a [`MemBackend`].
pub struct MemView {
    tables: Arc<Tables>,
}

impl BackendView for MemView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self.tables.get(&(table, key.to_vec())).cloned())
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), StateMachineError> {
        for ((found_table, key), value) in self.tables.range((table, prefix.to_vec())..) {
            if *found_table != table || !key.starts_with(prefix) {
                break;
            }
            visit(key, value)?;
        }
        Ok(())
    }

    fn scan_after(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut VisitWhile<'_>,
    ) -> Result<(), StateMachineError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded((table, after.to_vec())),
            _ => Bound::Included((table, prefix.to_vec())),
        };
        for ((found_table, key), value) in self.tables.range((start, Bound::Unbounded)) {
            if *found_table != table || !key.starts_with(prefix) || !visit(key, value)? {
                break;
            }
        }
        Ok(())
    }
}

impl Backend for MemBackend {
    type View = MemView;

    fn view(&self) -> Result<MemView, StateMachineError> {
        Ok(MemView {
            tables: self.tables.clone(),
        })
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
        let tables = Arc::make_mut(&mut self.tables);
        if batch.clear_first {
            tables.clear();
        }
        for (key, value) in batch.changes {
            match value {
                Some(value) => tables.insert(key, value),
                None => tables.remove(&key),
            };
        }
        Ok(())
    }

    /// Memory is never durable: nothing to wait for.
    fn sync_job(&mut self) -> Result<SyncJob, StateMachineError> {
        Ok(Box::new(|| Ok(())))
    }

    fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        Ok(SnapshotSpool::in_memory(MEMORY_SNAPSHOT_BYTES_MAX))
    }

    /// Builds the new tables aside and swaps them in, so a damaged item changes nothing.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        let mut tables = Tables::new();
        snapshot.for_each_item(&mut |table, key, value| {
            tables.insert((table, key.to_vec()), value.to_vec());
            Ok(())
        })?;
        self.tables = Arc::new(tables);
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
        Ok(self.snapshot.clone())
    }
}
