//! The redb backend: the only module that imports redb.
//!
//! One redb file (`state.redb`) holds the three tables; the current snapshot is a separate file
//! (`current.snap`) replaced atomically (write, fsync, rename, fsync the directory).
//!
//! Durability: batches marked durable commit with `Durability::Immediate`; the others with
//! `Durability::None`, which redb rolls back on a crash to the last durable commit — a
//! consistent earlier state from which openraft re-applies the committed log.
//!
//! Opening runs redb's integrity check (every page checksum) so a damaged file is refused with
//! its path rather than served. redb is synchronous; the state machine calls it from its own
//! worker thread, never from an async task.

use std::fs;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

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
use crate::backend::WriteBatch;
use crate::error::StateMachineError;

const DATABASE_FILE: &str = "state.redb";
const SNAPSHOT_FILE: &str = "current.snap";
const SNAPSHOT_TEMP_FILE: &str = "current.snap.tmp";

/// Bound on the snapshot file we are willing to read back.
const SNAPSHOT_FILE_BYTES_MAX: u64 = 8 << 30;

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A state machine store in one directory.
pub struct RedbBackend {
    /// Shared with the sync jobs, which commit (empty, durably) without borrowing the backend.
    database: Arc<Database>,
    dir: PathBuf,
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
            let mut database = Database::create(&path).map_err(|e| corrupt_or_backend(&path, e))?;
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
        };
        backend.create_tables()?;
        Ok(backend)
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

    fn save_snapshot(&mut self, bytes: &[u8]) -> Result<(), StateMachineError> {
        let temp = self.dir.join(SNAPSHOT_TEMP_FILE);
        let error = |e: std::io::Error| backend_error(&temp, e);
        let mut file = fs::File::create(&temp).map_err(error)?;
        file.write_all(bytes).map_err(error)?;
        file.sync_all().map_err(error)?;
        fs::rename(&temp, self.dir.join(SNAPSHOT_FILE)).map_err(error)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(error)
    }

    fn load_snapshot(&self) -> Result<Option<Vec<u8>>, StateMachineError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let len = match fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend_error(&path, e)),
        };
        if len > SNAPSHOT_FILE_BYTES_MAX {
            return Err(StateMachineError::Corrupt {
                location: path.display().to_string(),
                reason: format!("{len} bytes exceeds the bound"),
            });
        }
        fs::read(&path).map(Some).map_err(|e| backend_error(&path, e))
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
