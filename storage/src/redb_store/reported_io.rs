//! Every I/O failure of a redb file, named where it happens: the file, the call, the offset and
//! length, the operating system's error.
//!
//! **Why.** redb latches its first I/O failure and answers every later call on that database with
//! `PreviousIo` ("Previous I/O error occurred"), which names nothing: not the call, not the errno.
//! When the first failure's own error is swallowed on the way up (a read inside a view that is
//! dropped, a write-back in a commit whose caller only logs the outcome), the operator is left with
//! a store that fails every transaction and no cause. Here each failure is logged as an error the
//! moment the backend returns it, and the first is kept, so whoever meets `PreviousIo` later can
//! say what it was ([`IoFailures::first`]).

use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use redb::BackendError;
use redb::StorageBackend;

/// A redb file's backend, its failures reported.
#[derive(Debug)]
pub(super) struct ReportedIo<B> {
    inner: B,
    failures: Arc<IoFailures>,
}

/// The failures of one file's backend, shared with whoever holds the database.
#[derive(Debug)]
pub(super) struct IoFailures {
    /// The file's name now (an install's file is renamed to the store's).
    path: Mutex<PathBuf>,
    first: Mutex<Option<String>>,
}

impl IoFailures {
    /// The first failure, described (call, offset, length, error), if there was one.
    pub(super) fn first(&self) -> Option<String> {
        self.first.lock().expect("I/O failures lock").clone()
    }

    /// The file now goes by `path`.
    pub(super) fn renamed(&self, path: PathBuf) {
        *self.path.lock().expect("I/O failures lock") = path;
    }

    fn report(&self, call: fmt::Arguments<'_>, error: &dyn fmt::Display) {
        let described = format!("{call} failed: {error}");
        let path = self.path.lock().expect("I/O failures lock").clone();
        tracing::error!(
            file = %path.display(),
            failure = %described,
            "the state machine file's I/O failed; redb fails every later transaction on this file until it is reopened"
        );
        let mut first = self.first.lock().expect("I/O failures lock");
        if first.is_none() {
            *first = Some(described);
        }
    }
}

impl<B: StorageBackend> ReportedIo<B> {
    pub(super) fn new(inner: B, path: PathBuf) -> (ReportedIo<B>, Arc<IoFailures>) {
        let failures = Arc::new(IoFailures {
            path: Mutex::new(path),
            first: Mutex::default(),
        });
        let backend = ReportedIo {
            inner,
            failures: failures.clone(),
        };
        (backend, failures)
    }

    fn io<T>(&self, result: io::Result<T>, call: fmt::Arguments<'_>) -> io::Result<T> {
        if let Err(error) = &result {
            self.failures.report(call, error);
        }
        result
    }

    /// A lock call's outcome; `Unsupported` is an answer redb expects, not a failure.
    fn lock<T>(&self, result: Result<T, BackendError>, call: fmt::Arguments<'_>) -> Result<T, BackendError> {
        if let Err(error) = &result
            && !matches!(error, BackendError::Unsupported)
        {
            self.failures.report(call, error);
        }
        result
    }
}

impl<B: StorageBackend> StorageBackend for ReportedIo<B> {
    fn len(&self) -> io::Result<u64> {
        self.io(self.inner.len(), format_args!("len"))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let bytes = out.len();
        self.io(
            self.inner.read(offset, out),
            format_args!("read of {bytes} bytes at {offset}"),
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.io(self.inner.set_len(len), format_args!("set_len to {len}"))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.io(self.inner.sync_data(), format_args!("sync_data"))
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let bytes = data.len();
        self.io(
            self.inner.write(offset, data),
            format_args!("write of {bytes} bytes at {offset}"),
        )
    }

    fn close(&self) -> io::Result<()> {
        self.io(self.inner.close(), format_args!("close"))
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.lock(
            self.inner.try_lock_range(start, end),
            format_args!("try_lock_range {start:?}..{end:?}"),
        )
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.lock(
            self.inner.try_lock_shared_range(start, end),
            format_args!("try_lock_shared_range {start:?}..{end:?}"),
        )
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.lock(
            self.inner.lock_range(start, end),
            format_args!("lock_range {start:?}..{end:?}"),
        )
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.lock(
            self.inner.lock_shared_range(start, end),
            format_args!("lock_shared_range {start:?}..{end:?}"),
        )
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.lock(
            self.inner.unlock_range(start, end),
            format_args!("unlock_range {start:?}..{end:?}"),
        )
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.lock(
            self.inner.query_lock_range(start, end),
            format_args!("query_lock_range {start:?}..{end:?}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use redb::Database;
    use redb::TableDefinition;
    use redb::backends::InMemoryBackend;

    use super::*;

    const TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("t");

    /// An in-memory file whose writes fail once `failing` is set, as a full or broken disk's would.
    #[derive(Debug)]
    struct FailingWrites {
        inner: InMemoryBackend,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl StorageBackend for FailingWrites {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }

        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            self.inner.read(offset, out)
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }

        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }

        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(28));
            }
            self.inner.write(offset, data)
        }
    }

    fn commit(database: &Database, key: &[u8]) -> Result<(), redb::Error> {
        let txn = database.begin_write()?;
        txn.open_table(TABLE)?.insert(key, [7u8; 3000].as_slice())?;
        txn.commit()?;
        Ok(())
    }

    #[test]
    fn the_first_failure_is_kept_and_named_when_redb_says_only_previous_io() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = FailingWrites {
            inner: InMemoryBackend::new(),
            failing: failing.clone(),
        };
        let (backend, failures) = ReportedIo::new(backend, PathBuf::from("state.redb"));
        let database = Database::builder().create_with_backend(backend).unwrap();
        commit(&database, b"a").unwrap();
        assert_eq!(failures.first(), None, "no failure yet");

        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(commit(&database, b"b").is_err(), "the write fails the commit");
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let later = commit(&database, b"c").unwrap_err();
        assert!(
            later.to_string().contains("Previous I/O"),
            "redb latched the failure: {later}"
        );
        let first = failures.first().expect("the failure was kept");
        assert!(first.starts_with("write of "), "names the call: {first}");
        assert!(
            first.contains("No space left on device"),
            "names the error: {first}"
        );
    }
}
