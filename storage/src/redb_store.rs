//! The redb backend: the only module that imports redb.
//!
//! One redb file (`state.redb`) holds the three tables; the current snapshot is a separate file
//! (`current.snap`) replaced atomically (write, fsync, rename, fsync the directory). Snapshots are
//! built and received into spool files beside it (`spool-N.tmp`, see [`crate::snapshot`]): a built
//! or installed one is renamed into place, an abandoned one deleted (and any left by a crash are
//! deleted at the next open). A snapshot is installed into a fresh file beside the store, which is
//! renamed over it once filled and synced ([`fresh_install`]).
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
use std::sync::Mutex;
use std::thread::JoinHandle;

mod fresh_install;
mod gathered_writes;
mod open_stores;
mod reported_io;

use fresh_install::Finished;
use fresh_install::FreshInstall;
use open_stores::OpenStores;
pub use open_stores::StoresClosed;
use redb::Builder;
use redb::Database;
use redb::Durability;
use redb::ReadOnlyTable;
use redb::ReadableDatabase;
use redb::ReadableTableMetadata;
use redb::TableDefinition;
use redb::backends::FileBackend;
use reported_io::IoFailures;
use reported_io::ReportedIo;

use crate::backend::Backend;
use crate::backend::BackendView;
use crate::backend::SyncJob;
use crate::backend::Table;
use crate::backend::Visit;
use crate::backend::VisitWhile;
use crate::backend::WriteBatch;
use crate::error::StateMachineError;
use crate::paced_removal;
use crate::page_cache;
use crate::priority;
use crate::priority::SNAPSHOT_THREAD_NICE;
use crate::snapshot::SnapshotData;
use crate::snapshot::SnapshotSpool;
use crate::snapshot_feed::FeedStopped;
use crate::snapshot_feed::SpoolFeed;
use crate::writeback;

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
    database: Arc<Store>,
    /// Counts this directory's stores still open, the replaced ones included ([`open_stores`]).
    open_stores: Arc<OpenStores>,
    dir: PathBuf,
    /// Names the next spool file.
    spools: std::sync::atomic::AtomicU64,
    /// The install following a snapshot being received, if one runs, into a file of its own
    /// ([`fresh_install`]): writers to the store go on beside it.
    install_ahead: Arc<Mutex<Option<InstallAhead>>>,
    /// Installs committed from an install ahead (the rest were filled from the file at the end).
    installed_ahead: u64,
    /// The nice value the last committed install ahead ran at.
    install_ahead_nice: Option<i32>,
    /// A handle on the snapshot kept at `current.snap` (saved, or loaded at open), so the one that
    /// replaces it can retire it ([`SnapshotData::retire_as`]).
    current_snapshot: Mutex<Option<SnapshotData>>,
}

/// An install transaction fed from a receiving spool as it fills ([`crate::snapshot_feed`]).
struct InstallAhead {
    feed: Arc<SpoolFeed>,
    /// Ends with the filled, durable install and the thread's nice value, once told to take it.
    thread: JoinHandle<Result<(Finished, Option<i32>), FeedStopped>>,
}

type InstallAheadSlot = Mutex<Option<InstallAhead>>;

/// Cancels the install ahead, if one runs, and waits until it has deleted its file: a new transfer
/// replaces it, and a store that closes ends it.
fn stop_install_ahead(slot: &InstallAheadSlot) {
    let ahead = slot.lock().expect("install ahead lock").take();
    if let Some(ahead) = ahead {
        ahead.feed.cancel();
        if ahead.thread.join().is_err() {
            tracing::error!("the snapshot install-ahead thread panicked");
        }
    }
}

/// The install-ahead thread: a fresh store filled from the spool as it is written
/// ([`fresh_install`]), made durable, then kept for the state machine's decision; taken only if it
/// installs this snapshot, deleted otherwise.
fn run_install_ahead(dir: &Path, feed: &SpoolFeed, file: &fs::File) -> Result<Finished, FeedStopped> {
    let mut install = FreshInstall::create(dir)?;
    let path = install.path().to_path_buf();
    let filled = (|| -> Result<Finished, FeedStopped> {
        let error = |e: &dyn std::fmt::Display| FeedStopped::from(backend_error(&path, e));
        // Written back along the way (see `SpoolFeed::feed`), so the install's last commit and the
        // spool's sync before it becomes the current snapshot find little left to write, and both
        // files' pages dropped from the page cache once written (`crate::page_cache`). Written
        // back, not synced: a sync commits the filesystem's journal, which makes every other fsync
        // on the disk (the logs' of every group) wait for this data too (`crate::writeback`). The
        // waits run on a thread of their own, so the inserts go on while the disk writes (on this
        // thread they were two thirds of a receive's wall time, `cargo bench -p storage --bench
        // snapshot_copy`); a request while one is queued is folded into it.
        let store_file = fs::File::open(&path).map_err(|e| error(&e))?;
        let install_file = store_file.try_clone().map_err(|e| error(&e))?;
        let spool_file = file.try_clone().map_err(|e| error(&e))?;
        let (requests, pending) = std::sync::mpsc::sync_channel::<u64>(1);
        let sync_path = path.clone();
        let syncer = std::thread::Builder::new()
            .name("domicile-install-sync".into())
            .spawn(move || -> Result<(), StateMachineError> {
                priority::lower_this_thread_or_warn(SNAPSHOT_THREAD_NICE, "snapshot install sync");
                let written =
                    |file: &fs::File| writeback::wait_written(file).map_err(|e| backend_error(&sync_path, e));
                while let Ok(read) = pending.recv() {
                    written(&spool_file)?;
                    // Read by the install and now on the disk: its pages are dropped (`crate::page_cache`).
                    page_cache::drop_cached(&spool_file, read);
                    written(&store_file)?;
                    // The store's pages too, once on the disk: the install writes a gigabyte of them
                    // and reads few back (redb's cache and the gathered writes serve it), and pages
                    // dropped here are the ones the rest of the copy reuses (`crate::page_cache`).
                    page_cache::drop_all_cached(&store_file);
                }
                Ok(())
            })
            .map_err(|e| error(&e))?;
        let mut flush = |read: u64| -> Result<(), StateMachineError> {
            match requests.try_send(read) {
                Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)) => Ok(()),
                // The thread ended: a sync failed (its error is returned when it is joined).
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    Err(backend_error(&path, "the install's sync thread stopped"))
                }
            }
        };
        let fed = feed.feed(
            file,
            &mut |table, key, value| install.insert(table, key, value),
            &mut flush,
        );
        drop(requests);
        let synced = match syncer.join() {
            Ok(result) => result,
            Err(_) => Err(backend_error(&path, "the install's sync thread panicked")),
        };
        fed?;
        synced?;
        // Durable before the decision: nobody reads this file until it is taken, and the commit is
        // then off the path from the last chunk to the install.
        let finished = install.finish()?;
        // Synced, so every page is clean: the last ones written go too.
        page_cache::drop_all_cached(&install_file);
        Ok(finished)
    })();
    let finished = match filled {
        Ok(finished) => finished,
        Err(stopped) => {
            if let Err(error) = fresh_install::remove_if_present(&path) {
                tracing::warn!(%error, "could not delete an install ahead that stopped");
            }
            return Err(stopped);
        }
    };
    // Logged so a copy's time can be split: the transfer, this install's lag behind it, the decision.
    tracing::info!(
        store = %path.display(),
        items = finished.items,
        page_writes = finished.writes.taken,
        file_writes = finished.writes.written,
        "snapshot install ahead: every item written and synced; waiting for the install");
    match feed.await_decision() {
        Ok(true) => Ok(finished),
        Ok(false) => {
            finished.discard();
            Err(FeedStopped::Cancelled)
        }
        Err(stopped) => {
            finished.discard();
            Err(stopped)
        }
    }
}

/// An open redb file, shared by the backend, its views and its queued sync jobs: the last of them
/// to let it go closes it.
struct Store {
    /// `Some` until dropped.
    database: Option<Database>,
    /// Where the file is linked aside once an install replaced it ([`RedbBackend::take_install`]):
    /// removed, paced, once nothing reads it.
    retired_as: Mutex<Option<PathBuf>>,
    /// The file's I/O failures, each logged where it happened; the first kept to name what redb
    /// later reports only as `PreviousIo`.
    io_failures: Arc<IoFailures>,
    /// Counted open until dropped.
    open_stores: Arc<OpenStores>,
}

impl Store {
    fn new(database: Database, io_failures: Arc<IoFailures>, open_stores: &Arc<OpenStores>) -> Arc<Store> {
        open_stores.opened_one();
        Arc::new(Store {
            database: Some(database),
            retired_as: Mutex::default(),
            io_failures,
            open_stores: open_stores.clone(),
        })
    }
}

/// The store's file, opened as redb's `Builder::create` opens it (a backend of ours needs the file).
fn open_store_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl std::ops::Deref for Store {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.database
            .as_ref()
            .expect("a store's database is open until the store is dropped")
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closed first: nothing of redb's may touch the file once its removal begins.
        drop(self.database.take());
        if let Some(aside) = self.retired_as.get_mut().expect("retired store lock").take() {
            paced_removal::remove_file_behind(aside);
        }
        self.open_stores.closed_one();
    }
}

impl RedbBackend {
    /// Makes a filled install the store: later views and writes are its; views already taken keep
    /// reading the store they were taken from. The replaced store is linked aside first
    /// (`removing-N-state.redb`), so the rename frees nothing: a store at volume is gigabytes, and freed at
    /// once they stall every fsync on the disk (`crate::paced_removal`). The aside file is removed,
    /// paced, when the replaced store's last view or sync job is done with it.
    fn take_install(&mut self, finished: Finished) -> Result<(), StateMachineError> {
        let target = self.dir.join(DATABASE_FILE);
        // Dropped unkept if the rename fails: then the aside name is a second name of the store, and
        // unlinking it frees nothing.
        let aside = paced_removal::link_aside(&target);
        let (database, io_failures) = finished.take_as(&target)?;
        if let Some(aside) = aside {
            *self.database.retired_as.lock().expect("retired store lock") = Some(aside.keep());
        }
        self.database = Store::new(database, io_failures, &self.open_stores);
        Ok(())
    }

    /// Opens or creates the store in `dir`, refusing a file that fails redb's integrity check.
    pub fn open(dir: impl AsRef<Path>) -> Result<RedbBackend, StateMachineError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| backend_error(&dir, e))?;
        let path = dir.join(DATABASE_FILE);
        // redb reports damage as errors, but a damaged file must never take the node down with a
        // panic: any panic while opening is a refusal to start, naming the file.
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<_, StateMachineError> {
            let file = open_store_file(&path).map_err(|e| backend_error(&path, e))?;
            let file = FileBackend::new(file).map_err(|e| backend_error(&path, e))?;
            let (backend, io_failures) = ReportedIo::new(file, path.clone());
            let mut database = Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(backend)
                .map_err(|e| corrupt_or_backend(&path, e))?;
            let intact = database
                .check_integrity()
                .map_err(|e| corrupt_or_backend(&path, e))?;
            if !intact {
                tracing::warn!(file = %path.display(), "redb repaired the state machine file; unsynced applies are re-applied from the log");
            }
            Ok((database, io_failures))
        }));
        let (database, io_failures) = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(StateMachineError::Corrupt {
                    location: path.display().to_string(),
                    reason: "the store panicked while opening the file".into(),
                });
            }
        };
        let open_stores = Arc::default();
        let backend = RedbBackend {
            database: Store::new(database, io_failures, &open_stores),
            open_stores,
            dir,
            spools: std::sync::atomic::AtomicU64::new(0),
            install_ahead: Arc::default(),
            installed_ahead: 0,
            install_ahead_nice: None,
            current_snapshot: Mutex::default(),
        };
        backend.create_tables()?;
        backend.remove_stale_spools()?;
        Ok(backend)
    }

    /// Waits, once this backend is dropped, until its files are closed: whoever deletes the directory
    /// waits on it first ([`open_stores`]).
    pub fn stores_closed(&self) -> StoresClosed {
        StoresClosed(self.open_stores.clone())
    }

    /// Snapshot installs that were filled while their snapshot arrived, not after.
    pub fn installed_ahead(&self) -> u64 {
        self.installed_ahead
    }

    /// The nice value the last install ahead ran at ([`crate::priority`]).
    pub fn install_ahead_nice(&self) -> Option<i32> {
        self.install_ahead_nice
    }

    /// Spool files a crash left behind (an unfinished build or transfer), an install that was not
    /// taken, and replaced snapshots not yet removed: useless now. Removed paced
    /// ([`paced_removal`]): each can be a gigabyte.
    fn remove_stale_spools(&self) -> Result<(), StateMachineError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| backend_error(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| backend_error(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = (name.starts_with(SPOOL_PREFIX) && name.ends_with(SPOOL_SUFFIX))
                || name == SNAPSHOT_TEMP_FILE
                || name == fresh_install::INSTALL_FILE
                || name.starts_with(paced_removal::ASIDE_PREFIX);
            if stale {
                paced_removal::remove_file(&entry.path()).map_err(|e| backend_error(&entry.path(), e))?;
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
    /// The store read: kept open (and, once an install replaced it, on disk) while this view lives.
    _store: Arc<Store>,
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

    fn len(&self, table: Table) -> Result<u64, StateMachineError> {
        // redb keeps each table's length in its header: no page is read.
        self.table(table)
            .len()
            .map_err(|e| corrupt_or_backend(Path::new(table.name()), e))
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
        Ok(RedbView {
            tables,
            _store: self.database.clone(),
        })
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

    /// A spool whose install follows it on a thread of its own ([`crate::snapshot_feed`]),
    /// replacing any earlier transfer's.
    fn snapshot_receive_spool(&self) -> Result<SnapshotSpool, StateMachineError> {
        stop_install_ahead(&self.install_ahead);
        let number = self.spools.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{SPOOL_PREFIX}{number}{SPOOL_SUFFIX}"));
        let feed = Arc::new(SpoolFeed::default());
        let spool = SnapshotSpool::create_fed_file(&path, SNAPSHOT_FILE_BYTES_MAX, feed.clone())?;
        let Some(file) = spool.file_handle()? else {
            return Ok(spool);
        };
        let dir = self.dir.clone();
        let thread_feed = feed.clone();
        let started = std::thread::Builder::new()
            .name("domicile-install-ahead".into())
            .spawn(move || {
                // Behind the foreground (`crate::priority`): a node's applies and appends, and the
                // other nodes' on the machine, are on a write's path; this install is not.
                priority::lower_this_thread_or_warn(SNAPSHOT_THREAD_NICE, "snapshot install");
                let nice = priority::this_thread_nice().ok();
                run_install_ahead(&dir, &thread_feed, &file).map(|finished| (finished, nice))
            });
        match started {
            Ok(thread) => {
                *self.install_ahead.lock().expect("install ahead lock") = Some(InstallAhead { feed, thread })
            }
            // Without the thread the snapshot is installed from the file once complete, as before.
            Err(error) => tracing::warn!(%error, "could not start a snapshot install-ahead thread"),
        }
        Ok(spool)
    }

    /// The snapshot's items written into a fresh store ([`fresh_install`]), which then replaces this
    /// one: a rename, after which the directory is synced. Until the rename, nothing changes here,
    /// and an error leaves the store as it was.
    ///
    /// A snapshot received through a feed usually has its fresh store filled already, as it arrived
    /// ([`crate::snapshot_feed`]): then it is only renamed. Any other install, or one whose install
    /// ahead stopped, fills one from the file now.
    fn install_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        let ahead = self.install_ahead.lock().expect("install ahead lock").take();
        if let Some(ahead) = ahead {
            let ours = snapshot.feed().is_some_and(|feed| Arc::ptr_eq(feed, &ahead.feed));
            if ours {
                ahead.feed.decide(true);
            } else {
                ahead.feed.cancel();
            }
            match ahead.thread.join() {
                Ok(Ok((finished, nice))) if ours => {
                    self.take_install(finished)?;
                    self.installed_ahead += 1;
                    self.install_ahead_nice = nice;
                    return Ok(());
                }
                Ok(Ok((finished, _))) => finished.discard(),
                Ok(Err(stopped)) => {
                    tracing::warn!(%stopped, "the snapshot's install ahead stopped; installing from the file")
                }
                Err(_) => {
                    tracing::error!("the snapshot install-ahead thread panicked; installing from the file")
                }
            }
        }
        let mut install = FreshInstall::create(&self.dir)?;
        let path = install.path().to_path_buf();
        let filled = snapshot
            .for_each_item(&mut |table, key, value| install.insert(table, key, value))
            .and_then(|()| install.finish());
        match filled {
            Ok(finished) => self.take_install(finished),
            Err(error) => {
                if let Err(removing) = fresh_install::remove_if_present(&path) {
                    tracing::warn!(error = %removing, "could not delete an install that failed");
                }
                Err(error)
            }
        }
    }

    /// Makes `snapshot` the kept one. The snapshot it replaces is first linked aside (`removing-N-current.snap`),
    /// so the rename frees nothing: freed at once, a gigabyte stalls every fsync on the disk
    /// (`crate::paced_removal`), and the rename and directory sync here run under the state machine's
    /// lock. The aside file is removed, paced, when the replaced snapshot's last handle is dropped
    /// (a transfer may still be reading it); one that a crash left is removed at the next open.
    fn save_snapshot(&mut self, snapshot: &SnapshotData) -> Result<(), StateMachineError> {
        let target = self.dir.join(SNAPSHOT_FILE);
        let current = self.current_snapshot.get_mut().expect("current snapshot lock");
        if snapshot.kept_path().as_deref() == Some(target.as_path()) {
            *current = Some(snapshot.clone());
            return Ok(());
        }
        let replaced = current
            .take()
            .filter(|old| old.kept_path().as_deref() == Some(target.as_path()));
        let aside = replaced.as_ref().and_then(|_| paced_removal::link_aside(&target));
        let persisted = snapshot.persist_as(&target, &self.dir.join(SNAPSHOT_TEMP_FILE));
        match (&persisted, replaced, aside) {
            (Ok(()), Some(old), Some(aside)) => old.retire_as(&aside.keep()),
            (Ok(()), _, _) => {}
            // Not replaced: the old snapshot stays current (the aside name, dropped, is unlinked).
            (Err(_), old, _) => *current = old,
        }
        persisted?;
        *current = Some(snapshot.clone());
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<SnapshotData>, StateMachineError> {
        let path = self.dir.join(SNAPSHOT_FILE);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend_error(&path, e)),
        }
        let snapshot = SnapshotData::open_file(&path, SNAPSHOT_FILE_BYTES_MAX)?;
        *self.current_snapshot.lock().expect("current snapshot lock") = Some(snapshot.clone());
        Ok(Some(snapshot))
    }
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        stop_install_ahead(&self.install_ahead);
        // Make non-durable applies durable on a clean shutdown, so a restart replays less.
        let result = self.commit(WriteBatch {
            durable: true,
            ..WriteBatch::default()
        });
        if let Err(error) = result {
            // After an I/O failure redb says only `PreviousIo`: the failure it means is named too.
            let first_io_failure = self.database.io_failures.first();
            tracing::warn!(
                %error,
                first_io_failure = first_io_failure.as_deref().unwrap_or("none"),
                "could not make the state machine durable at shutdown"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;
    use crate::codec;
    use crate::snapshot;
    use crate::snapshot::SnapshotHeader;

    fn source(records: usize) -> SnapshotData {
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::default();
        for i in 0..records {
            let key = format!("key-{i:06}").into_bytes();
            let value = codec::seal(&key, &vec![i as u8; 2000]).unwrap();
            batch.changes.insert((Table::Records, key), Some(value));
        }
        backend.commit(batch).unwrap();
        let header = SnapshotHeader {
            last_log_id: vec![1],
            membership: vec![2],
            policy_version: 3,
        };
        snapshot::build(&backend.view().unwrap(), header).unwrap()
    }

    /// A store in `dir` holding one record, `old`, whose value is `value`.
    fn holding_one_old_record(dir: &Path, value: &[u8]) -> RedbBackend {
        let mut backend = RedbBackend::open(dir).unwrap();
        let mut batch = WriteBatch::default();
        batch.changes.insert(
            (Table::Records, b"old".to_vec()),
            Some(codec::seal(b"old", value).unwrap()),
        );
        backend.commit(batch).unwrap();
        backend
    }

    /// The records the backend holds, counted by a scan, and checked against the count redb keeps.
    fn records(backend: &RedbBackend) -> usize {
        let mut count = 0;
        let view = backend.view().unwrap();
        view.scan_prefix(Table::Records, &[], &mut |_, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(view.len(Table::Records).unwrap(), count as u64);
        count
    }

    fn receive(backend: &RedbBackend, data: &SnapshotData, chunks: usize) -> SnapshotSpool {
        let mut spool = backend.snapshot_receive_spool().unwrap();
        for chunk in data.chunks().take(chunks) {
            spool.push(&chunk.unwrap()).unwrap();
        }
        spool
    }

    fn aside_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(paced_removal::ASIDE_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// A replaced snapshot is not freed by the rename (which runs under the state machine's lock): it
    /// keeps a second name, whole for a transfer still reading it, until its last handle is dropped.
    #[test]
    fn a_replaced_snapshot_stays_whole_for_its_readers_and_is_removed_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = RedbBackend::open(dir.path()).unwrap();
        let (first, second) = (source(300), source(200));
        backend.save_snapshot(&first).unwrap();
        // As at a restart: the kept file, opened; a transfer takes a handle on it.
        let kept = backend.load_snapshot().unwrap().unwrap();
        let reading = kept.clone();
        backend.save_snapshot(&second).unwrap();
        assert_eq!(aside_files(dir.path()).len(), 1);
        assert_eq!(
            reading.to_bytes().unwrap(),
            first.to_bytes().unwrap(),
            "the reader's snapshot is whole"
        );
        assert_eq!(
            backend.load_snapshot().unwrap().unwrap().to_bytes().unwrap(),
            second.to_bytes().unwrap(),
            "the new one is kept"
        );
        drop(kept);
        assert_eq!(aside_files(dir.path()).len(), 1, "a reader still holds it");
        drop(reading);
        assert!(aside_files(dir.path()).is_empty(), "removed with its last handle");
        // One a crash left is removed at the next open, and the kept snapshot with it is untouched.
        let current = dir.path().join(SNAPSHOT_FILE);
        fs::hard_link(&current, dir.path().join("removing-9-current.snap")).unwrap();
        drop(backend);
        let backend = RedbBackend::open(dir.path()).unwrap();
        assert!(aside_files(dir.path()).is_empty());
        assert_eq!(
            backend.load_snapshot().unwrap().unwrap().to_bytes().unwrap(),
            second.to_bytes().unwrap()
        );
    }

    #[test]
    fn a_received_snapshot_is_installed_as_it_arrives_and_committed_only_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = RedbBackend::open(dir.path()).unwrap();
        let data = source(2000);
        let received = receive(&backend, &data, data.chunk_count()).finish().unwrap();
        assert_eq!(records(&backend), 0, "nothing is committed before the install");
        backend.install_snapshot(&received).unwrap();
        assert_eq!(backend.installed_ahead(), 1, "the install followed the transfer");
        assert_eq!(
            backend.install_ahead_nice(),
            Some(SNAPSHOT_THREAD_NICE.max(priority::this_thread_nice().unwrap())),
            "the install ran behind the foreground"
        );
        assert_eq!(records(&backend), 2000);
    }

    /// The install drops the store's pages once they are written back, as it goes, and the last ones
    /// once it is durable: kept, each of a copy's gigabyte of them was a new page-cache page
    /// (`crate::page_cache`).
    #[test]
    fn an_install_ahead_leaves_little_of_the_store_it_wrote_in_the_page_cache() {
        // Beside the sources, not in a temporary directory that may be tmpfs (never written back).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut backend = RedbBackend::open(dir.path()).unwrap();
        let data = source(20_000);
        let received = receive(&backend, &data, data.chunk_count()).finish().unwrap();
        backend.install_snapshot(&received).unwrap();
        assert_eq!(backend.installed_ahead(), 1, "the install followed the transfer");
        let file = fs::File::open(dir.path().join(DATABASE_FILE)).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let (resident, pages) = (page_cache::resident_pages(&file, len), len / 4096);
        assert!(
            resident * 10 < pages,
            "{resident} of the store's {pages} pages are still cached"
        );
        assert_eq!(records(&backend), 20_000, "read back from the disk, whole");
    }

    #[test]
    fn a_writer_goes_on_beside_the_install_ahead_and_the_install_replaces_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = RedbBackend::open(dir.path()).unwrap();
        let data = source(2000);
        let mut spool = receive(&backend, &data, 3);
        // A commit while the transfer is under way (a follower's apply) neither waits for it nor stops it.
        let mut batch = WriteBatch::default();
        let key = b"written-meanwhile".to_vec();
        batch.changes.insert(
            (Table::Dedup, key.clone()),
            Some(codec::seal(&key, b"x").unwrap()),
        );
        backend.commit(batch).unwrap();
        assert!(backend.view().unwrap().get(Table::Dedup, &key).unwrap().is_some());
        for chunk in data.chunks().skip(3) {
            spool.push(&chunk.unwrap()).unwrap();
        }
        let received = spool.finish().unwrap();
        let before_install = backend.view().unwrap();
        backend.install_snapshot(&received).unwrap();
        assert_eq!(backend.installed_ahead(), 1, "the install ahead went on");
        assert_eq!(records(&backend), 2000);
        assert_eq!(
            backend.view().unwrap().get(Table::Dedup, &key).unwrap(),
            None,
            "the install replaced it"
        );
        assert!(
            before_install.get(Table::Dedup, &key).unwrap().is_some(),
            "a view taken before the install still reads the store it was taken from"
        );
        assert!(
            !dir.path().join(fresh_install::INSTALL_FILE).exists(),
            "renamed into place"
        );
        // The replaced store was not freed by the rename: linked aside while the view reads it, then
        // removed (paced, on a thread of its own) once the view is gone.
        assert_eq!(
            aside_files(dir.path()).len(),
            1,
            "the replaced store, linked aside"
        );
        drop(before_install);
        assert!(
            crate::eventually(|| aside_files(dir.path()).is_empty()),
            "removed once nothing reads it"
        );
    }

    #[test]
    fn an_install_survives_a_reopen_and_one_left_unfinished_is_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = source(3000);
        {
            let mut backend = RedbBackend::open(dir.path()).unwrap();
            let received = receive(&backend, &data, data.chunk_count()).finish().unwrap();
            backend.install_snapshot(&received).unwrap();
            // A second transfer, cut off: its install ahead fills a file of its own.
            let unfinished = receive(&backend, &data, 5);
            let install = dir.path().join(fresh_install::INSTALL_FILE);
            assert!(
                crate::eventually(|| install.exists()),
                "the install ahead fills a file beside the store"
            );
            drop(unfinished);
            drop(backend);
            assert!(!install.exists(), "an install ahead that ends deletes its file");
        }
        // What a crash mid-transfer leaves behind.
        let stale = dir.path().join(fresh_install::INSTALL_FILE);
        std::fs::write(&stale, b"left by a crash").unwrap();
        let reopened = RedbBackend::open(dir.path()).unwrap();
        assert_eq!(records(&reopened), 3000, "the installed snapshot is the store");
        assert!(!stale.exists(), "an install never taken is deleted at open");
    }

    #[test]
    fn a_snapshot_not_received_here_is_installed_from_its_file_in_many_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = holding_one_old_record(dir.path(), b"gone after the install");
        // 20,000 values of 2,000 bytes: about 40 MB, several of the install's transactions.
        let data = source(20_000);
        backend.install_snapshot(&data).unwrap();
        assert_eq!(backend.installed_ahead(), 0, "no transfer, no install ahead");
        assert_eq!(records(&backend), 20_000);
        assert_eq!(backend.view().unwrap().get(Table::Records, b"old").unwrap(), None);
        let view = backend.view().unwrap();
        let mut checked = 0;
        data.for_each_item(&mut |table, key, value| {
            assert_eq!(
                view.get(table, key).unwrap().as_deref(),
                Some(value),
                "item {checked}"
            );
            checked += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(checked, 20_000);
    }

    /// A view that visits its records in the order given, sorted or not: what a damaged or foreign
    /// snapshot would hold.
    struct InOrderGiven(Vec<(Vec<u8>, Vec<u8>)>);

    impl BackendView for InOrderGiven {
        fn get(&self, _: Table, _: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
            Ok(None)
        }

        fn scan_prefix(
            &self,
            table: Table,
            _: &[u8],
            visit: &mut Visit<'_>,
        ) -> Result<(), StateMachineError> {
            if table == Table::Records {
                for (key, value) in &self.0 {
                    visit(key, value)?;
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_snapshot_whose_keys_are_out_of_order_is_refused_by_name_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = holding_one_old_record(dir.path(), b"still here after the refusal");
        // In order for 9,000 items (past the first transaction), then one key that goes back.
        let mut items: Vec<(Vec<u8>, Vec<u8>)> = (0..9_000)
            .map(|i| {
                let key = format!("key-{i:06}").into_bytes();
                let value = codec::seal(&key, &vec![7u8; 1000]).unwrap();
                (key, value)
            })
            .collect();
        let back = b"key-000100".to_vec();
        items.push((back.clone(), codec::seal(&back, b"again").unwrap()));
        let header = SnapshotHeader {
            last_log_id: vec![1],
            membership: vec![2],
            policy_version: 3,
        };
        let data = snapshot::build(&InOrderGiven(items), header).unwrap();
        let error = backend.install_snapshot(&data).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, StateMachineError::Corrupt { .. })
                && message.contains("records table")
                && message.contains(&hex_of(&back)),
            "{message}"
        );
        assert_eq!(records(&backend), 1, "the store is as it was");
        assert!(
            backend
                .view()
                .unwrap()
                .get(Table::Records, b"old")
                .unwrap()
                .is_some()
        );
        assert!(
            !dir.path().join(fresh_install::INSTALL_FILE).exists(),
            "the refused install's file is deleted"
        );
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A purge deletes a store's files only once every store of the backend is closed: the backend,
    /// and a view that outlives it (a build's, a sync job's), each keep them open.
    #[test]
    fn the_stores_count_as_closed_only_once_the_backend_and_its_last_view_are_gone() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let backend = holding_one_old_record(dir.path(), b"value");
        let closed = backend.stores_closed();
        let short = std::time::Duration::from_millis(20);
        assert!(!closed.wait(short), "the backend is open");
        let view = backend.view().unwrap();
        drop(backend);
        assert!(!closed.wait(short), "a view still reads the store");
        let waiter = {
            let closed = closed.clone();
            std::thread::spawn(move || closed.wait(std::time::Duration::from_secs(60)))
        };
        drop(view);
        assert!(waiter.join().unwrap(), "the last view gone, the wait ends");
        assert!(closed.wait(short));
    }

    #[test]
    fn a_cancelled_install_ahead_deletes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(dir.path()).unwrap();
        let data = source(2000);
        let received = receive(&backend, &data, data.chunk_count()).finish().unwrap();
        drop(backend);
        assert!(
            !dir.path().join(fresh_install::INSTALL_FILE).exists(),
            "closing the store ended it"
        );
        drop(received);
    }

    #[test]
    fn an_abandoned_or_replaced_transfer_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = RedbBackend::open(dir.path()).unwrap();
        let data = source(2000);
        drop(receive(&backend, &data, 4));
        let unused = receive(&backend, &data, data.chunk_count()).finish().unwrap();
        // A second transfer replaces the first before it is installed.
        let received = receive(&backend, &data, data.chunk_count()).finish().unwrap();
        assert_eq!(records(&backend), 0);
        drop(unused);
        backend.install_snapshot(&received).unwrap();
        assert_eq!(backend.installed_ahead(), 1);
        assert_eq!(records(&backend), 2000);
    }
}
