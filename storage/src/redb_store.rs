//! The redb backend: the only module that imports redb.
//!
//! One redb file (`state.redb`) holds the three tables; the current snapshot is a separate file
//! (`current.snap`) replaced atomically (write, fsync, rename, fsync the directory). Snapshots are
//! built and received into spool files beside it (`spool-N.tmp`, see [`crate::snapshot`]): a built
//! or installed one is renamed into place, an abandoned one deleted (and any left by a crash are
//! deleted at the next open). A snapshot is installed in one durable write transaction, streamed
//! into it item by item.
//!
//! Memory: redb caches pages (reads, and a write transaction's dirty pages, flushed to the file
//! past half the cache) up to a bound per database, 1 GiB unless told; a node holds a database per
//! group, so the bound here is [`CACHE_BYTES`]. The operating system's page cache is behind it.
//!
//! Durability: batches marked durable commit with `Durability::Immediate`; the others with
//! `Durability::None`, which redb rolls back on a crash to the last durable commit — a
//! consistent earlier state from which openraft re-applies the committed log.
//!
//! Opening runs redb's integrity check (every page checksum) so a damaged file is refused with
//! its path rather than served. redb is synchronous; the state machine calls it from its own
//! worker thread, never from an async task.

use std::fs;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use redb::Builder;
use redb::Database;
use redb::Durability;
use redb::ReadOnlyTable;
use redb::ReadableDatabase;
use redb::TableDefinition;

use crate::backend::Backend;
use crate::backend::BackendView;
use crate::backend::SyncJob;
use crate::backend::Table;
use crate::backend::Visit;
use crate::backend::VisitWhile;
use crate::backend::WriteBatch;
use crate::error::StateMachineError;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotSpool;

const DATABASE_FILE: &str = "state.redb";
const SNAPSHOT_FILE: &str = "current.snap";
const SNAPSHOT_TEMP_FILE: &str = "current.snap.tmp";
const SPOOL_PREFIX: &str = "spool-";
const SPOOL_SUFFIX: &str = ".tmp";

/// Bound on a snapshot file, written or read back.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 64 << 30;

/// redb's page cache per database (its default is 1 GiB): one per group on a node.
pub const CACHE_BYTES: usize = 64 << 20;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A state machine store in one directory.
pub struct RedbBackend {
    /// Shared with the sync jobs, which commit (empty, durably) without borrowing the backend.
    database: Arc<Database>,
    dir: PathBuf,
    /// Names the next spool file.
    spools: std::sync::atomic::AtomicU64,
}

impl RedbBackend {
    /// Opens or creates the store in `dir`, refusing a file that fails redb's integrity check.
    pub fn open(dir: impl AsRef<Path>) -> Result<RedbBackend, StateMachineError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| backend_error(&dir, e))?;
        let path = dir.join(DATABASE_FILE);
        // redb reports damage as errors, but a damaged file must never take the node down with a
        // panic: any panic while opening is a refusal to start, naming the file.
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<Database, StateMachineError> {
            let mut database = Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
                .map_err(|e| corrupt_or_backend(&path, e))?;
            let intact = database
                .check_integrity()
                .map_err(|e| corrupt_or_backend(&path, e))?;
            if !intact {
                tracing::warn!(file = %path.display(), "redb repaired the state machine file; unsynced applies are re-applied from the log");
            }
            Ok(database)
        }));
        let database = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(StateMachineError::Corrupt {
                    location: path.display().to_string(),
                    reason: "the store panicked while opening the file".into(),
                });
            }
        };
        let backend = RedbBackend {
            database: Arc::new(database),
            dir,
            spools: std::sync::atomic::AtomicU64::new(0),
        };
        backend.create_tables()?;
        backend.remove_stale_spools()?;
        Ok(backend)
    }

    /// Spool files a crash left behind: an unfinished build or transfer, useless now.
    fn remove_stale_spools(&self) -> Result<(), StateMachineError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| backend_error(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| backend_error(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = (name.starts_with(SPOOL_PREFIX) && name.ends_with(SPOOL_SUFFIX))
                || name == SNAPSHOT_TEMP_FILE;
            if stale {
                fs::remove_file(entry.path()).map_err(|e| backend_error(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    fn create_tables(&self) -> Result<(), StateMachineError> {
        let path = self.dir.join(DATABASE_FILE);
        let txn = self.database.begin_write().map_err(|e| backend_error(&path, e))?;
        for table in Table::ALL {
            txn.open_table(definition(table))
                .map_err(|e| corrupt_or_backend(&path, e))?;
        }
        txn.commit().map_err(|e| backend_error(&path, e))
    }
}

fn backend_error(path: &Path, error: impl std::fmt::Display) -> StateMachineError {
    StateMachineError::Backend(format!("{}: {error}", path.display()))
}

/// redb reports damage as a `Corrupted` variant; its Display says so.
fn corrupt_or_backend(path: &Path, error: impl std::fmt::Display) -> StateMachineError {
    let message = error.to_string();
    if message.to_lowercase().contains("corrupt") {
        StateMachineError::Corrupt {
            location: path.display().to_string(),
            reason: message,
        }
    } else {
        backend_error(path, message)
    }
}

type BytesTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A consistent read view: one redb read transaction's tables.
pub struct RedbView {
    tables: Vec<(Table, BytesTable)>,
}

impl RedbView {
    fn table(&self, table: Table) -> &BytesTable {
        &self
            .tables
            .iter()
            .find(|(t, _)| *t == table)
            .expect("every table is opened")
            .1
    }
}

impl BackendView for RedbView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        let value = self
            .table(table)
            .get(key)
            .map_err(|e| corrupt_or_backend(Path::new(table.name()), e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), StateMachineError> {
        let range = self
            .table(table)
            .range(prefix..)
            .map_err(|e| corrupt_or_backend(Path::new(table.name()), e))?;
        for item in range {
            let (key, value) = item.map_err(|e| corrupt_or_backend(Path::new(table.name()), e))?;
            if !key.value().starts_with(prefix) {
                break;
            }
            visit(key.value(), value.value())?;
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
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let range = self
            .table(table)
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(|e| corrupt_or_backend(Path::new(table.name()), e))?;
        for item in range {
            let (key, value) = item.map_err(|e| corrupt_or_backend(Path::new(table.name()), e))?;
            if !key.value().starts_with(prefix) || !visit(key.value(), value.value())? {
                break;
            }
        }
        Ok(())
    }
}

impl Backend for RedbBackend {
    type View = RedbView;

    fn view(&self) -> Result<RedbView, StateMachineError> {
        let path = self.dir.join(DATABASE_FILE);
        let txn = self.database.begin_read().map_err(|e| backend_error(&path, e))?;
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            tables.push((
                table,
                txn.open_table(definition(table))
                    .map_err(|e| corrupt_or_backend(&path, e))?,
            ));
        }
        Ok(RedbView { tables })
    }

    fn commit(&mut self, batch: WriteBatch) -> Result<(), StateMachineError> {
        let path = self.dir.join(DATABASE_FILE);
        let error = |e: &dyn std::fmt::Display| corrupt_or_backend(&path, e);
        let mut txn = self.database.begin_write().map_err(|e| error(&e))?;
        let durability = if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| error(&e))?;
        if batch.clear_first {
            for table in Table::ALL {
                txn.delete_table(definition(table)).map_err(|e| error(&e))?;
                txn.open_table(definition(table)).map_err(|e| error(&e))?;
            }
        }
        {
            let mut open = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                open.push((table, txn.open_table(definition(table)).map_err(|e| error(&e))?));
            }
            for ((table, key), value) in &batch.changes {
                let (_, handle) = open
                    .iter_mut()
                    .find(|(t, _)| t == table)
                    .expect("every table is opened");
                match value {
                    Some(value) => handle.insert(key.as_slice(), value.as_slice()).map(|_| ()),
                    None => handle.remove(key.as_slice()).map(|_| ()),
                }
                .map_err(|e| error(&e))?;
            }
        }
        txn.commit().map_err(|e| error(&e))
    }

    /// An empty durable commit: redb makes every earlier non-durable commit durable with it.
    fn sync_job(&mut self) -> Result<SyncJob, StateMachineError> {
        let database = self.database.clone();
        let path = self.dir.join(DATABASE_FILE);
        Ok(Box::new(move || {
            let error = |e: &dyn std::fmt::Display| corrupt_or_backend(&path, e);
            let mut txn = database.begin_write().map_err(|e| error(&e))?;
            txn.set_durability(Durability::Immediate).map_err(|e| error(&e))?;
            txn.commit().map_err(|e| error(&e))
        }))
    }

    fn snapshot_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        let number = self.spools.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{SPOOL_PREFIX}{number}{SPOOL_SUFFIX}"));
        Ok(SnapshotSpool::create_file(&path, SNAPSHOT_FILE_BYTES_MAX)?)
    }

    /// One durable write transaction: the tables emptied, then every item of the snapshot
    /// inserted as it is read. redb keeps at most half its cache of dirty pages in memory (the
    /// rest goes to the file, uncommitted), and an error drops the transaction: nothing changes.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        let path = self.dir.join(DATABASE_FILE);
        let error = |e: &dyn std::fmt::Display| corrupt_or_backend(&path, e);
        let mut txn = self.database.begin_write().map_err(|e| error(&e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| error(&e))?;
        for table in Table::ALL {
            txn.delete_table(definition(table)).map_err(|e| error(&e))?;
        }
        {
            let mut open = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                open.push((table, txn.open_table(definition(table)).map_err(|e| error(&e))?));
            }
            snapshot.for_each_item(&mut |table, key, value| {
                let (_, handle) = open
                    .iter_mut()
                    .find(|(t, _)| *t == table)
                    .expect("every table is opened");
                handle.insert(key, value).map(|_| ()).map_err(|e| error(&e))
            })?;
        }
        txn.commit().map_err(|e| error(&e))
    }

    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        Ok(snapshot.persist_as(&self.dir.join(SNAPSHOT_FILE), &self.dir.join(SNAPSHOT_TEMP_FILE))?)
    }

    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend_error(&path, e)),
        }
        Ok(Some(SnapshotData::open_file(&path, SNAPSHOT_FILE_BYTES_MAX)?))
    }
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        // Make non-durable applies durable on a clean shutdown, so a restart replays less.
        let result = self.commit(WriteBatch {
            durable: true,
            ..WriteBatch::default()
        });
        if let Err(error) = result {
            tracing::warn!(%error, "could not make the state machine durable at shutdown");
        }
    }
}
